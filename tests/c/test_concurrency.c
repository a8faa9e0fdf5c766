/* test_concurrency.c - many threads calling the library at once on different tensors (and on one
 * shared input) get the same bits as serial calls, while another thread keeps changing the
 * OpenMP thread count. Run under ThreadSanitizer by `make tsan`. */
#include "check.h"
#include "testutil.h"

#include "threads.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

enum { THREADS = 6, ROUNDS = 3, SHAPES = 4 };

/* Big enough for the parallel paths (>= 2^15 elements) in both layouts, and a small one. */
static const int64_t shapes[SHAPES][3] = {{8, 24, 200}, {4096, 20, 1}, {5, 3, 7}, {64, 300, 2}};

/* One task: a shape, dtype and layout; its inputs; its serial results. */
typedef struct {
    bn_desc d;
    void *x, *dy, *w, *b;
    void *want[6]; /* y, dx, dweight, dbias, running_mean, running_var after the chain */
    double want_sm[300], want_si[300];
} task;

static task tasks[THREADS];
static atomic_int stop_toggling;
/* 0 while the toggler runs; else the thread count every call uses, and each worker checks that
 * its own calls (large enough to be spread) ran on a team of that many threads */
static atomic_int fixed_threads;

static size_t esize(const bn_desc *d) { return d->dtype == BN_FLOAT32 ? 4 : 8; }

/* Train forward, backward, eval forward (into y, after the train output is checked) and eval
 * backward; out: y, dx, dweight, dbias, rm, rv. Returns 1 when every call succeeded. */
static int chain(const task *t, void *out[6], double *sm, double *si) {
    const bn_desc *d = &t->d;
    size_t small = (size_t)d->c * esize(d);
    memset(out[4], 0, small);
    for (int64_t c = 0; c < d->c; c++) /* running_var starts at 1 */
        if (d->dtype == BN_FLOAT32) ((float *)out[5])[c] = 1;
        else ((double *)out[5])[c] = 1;
    int64_t nbt = 0;
    bn_options opt = BN_OPTIONS_DEFAULT;
    int ok = bn_forward_train(out[0], sm, si, out[4], out[5], &nbt, t->x, t->w, t->b, d, &opt) == BN_OK;
    ok &= bn_backward_train(out[1], out[2], out[3], t->dy, t->x, sm, si, t->w, d) == BN_OK;
    ok &= bn_forward_eval(out[0], t->x, out[4], out[5], t->w, t->b, d, 1e-5) == BN_OK;
    ok &= bn_backward_eval(out[1], NULL, NULL, t->dy, t->x, out[4], out[5], t->w, d, 1e-5) == BN_OK;
    return ok && nbt == 1;
}

static void alloc_outputs(const bn_desc *d, void *out[6]) {
    size_t big = (size_t)tu_numel(d) * esize(d), small = (size_t)d->c * esize(d);
    for (int k = 0; k < 6; k++) out[k] = malloc(k < 2 ? big : small);
}

static int same_outputs(const task *t, void *const out[6], const double *sm, const double *si) {
    size_t big = (size_t)tu_numel(&t->d) * esize(&t->d), small = (size_t)t->d.c * esize(&t->d);
    for (int k = 0; k < 6; k++)
        if (memcmp(out[k], t->want[k], k < 2 ? big : small) != 0) return 0;
    return !memcmp(sm, t->want_sm, (size_t)t->d.c * 8) && !memcmp(si, t->want_si, (size_t)t->d.c * 8);
}

/* Each worker runs its own task and, every round, task 0's chain on task 0's shared inputs. A
 * chain fails when its results differ from the serial ones, or, with fixed_threads, when its
 * last call ran on another team than that many threads (large calls) or one (small calls). */
static void *worker(void *arg) {
    const int id = (int)(intptr_t)arg;
    const int fixed = atomic_load(&fixed_threads);
    int failures = 0;
    for (int round = 0; round < ROUNDS; round++)
        for (int which = 0; which < 2; which++) {
            const task *t = &tasks[which ? 0 : id];
            void *out[6];
            double sm[300], si[300];
            alloc_outputs(&t->d, out);
            if (!chain(t, out, sm, si) || !same_outputs(t, out, sm, si)) failures++;
            const int big = tu_numel(&t->d) >= BN_PARALLEL_MIN_ELEMENTS;
            if (fixed && bn_parallel_last_team() != (big ? fixed : 1)) failures++;
            for (int k = 0; k < 6; k++) free(out[k]);
        }
    return (void *)(intptr_t)failures;
}

/* THREADS workers at once; the number of their chains that failed. */
static int run_workers(void) {
    pthread_t workers[THREADS];
    int failed = 0;
    for (int k = 0; k < THREADS; k++)
        CHECK(pthread_create(&workers[k], NULL, worker, (void *)(intptr_t)k) == 0);
    for (int k = 0; k < THREADS; k++) {
        void *failures = NULL;
        CHECK(pthread_join(workers[k], &failures) == 0);
        CHECK_MSG(failures == NULL, "thread %d: %d of %d chains failed", k,
                  (int)(intptr_t)failures, 2 * ROUNDS);
        failed += (int)(intptr_t)failures;
    }
    return failed;
}

/* Changes the thread count as often as it can, yielding the processor after each change: a
 * thread that never blocks can starve the workers where threads take turns on one processor
 * (valgrind runs one thread at a time: without the yield this suite took 6 s to 10 min there). */
static void *toggler(void *arg) {
    (void)arg;
    for (int n = 0; !atomic_load(&stop_toggling); n++) {
        bn_set_num_threads(n % 4);
        sched_yield();
    }
    return NULL;
}

BN_SUITE(suite_concurrency) {
    tu_rng r = tu_rng_new(77);
    for (int k = 0; k < THREADS; k++) {
        task *t = &tasks[k];
        const int64_t *s = shapes[k % SHAPES];
        t->d = tu_desc(s[0], s[1], s[2], (bn_dtype)(k % 2),
                       (bn_layout)(k / 2 % 2));
        int64_t count = tu_numel(&t->d);
        double *xv = tu_randn(&r, count, 2, 3), *gv = tu_randn(&r, count, 0, 1);
        double *wv = tu_randn(&r, t->d.c, 1, 0.1), *bv = tu_randn(&r, t->d.c, 0, 1);
        t->x = tu_to_dtype(xv, count, t->d.dtype), t->dy = tu_to_dtype(gv, count, t->d.dtype);
        t->w = tu_to_dtype(wv, t->d.c, t->d.dtype), t->b = tu_to_dtype(bv, t->d.c, t->d.dtype);
        free(xv), free(gv), free(wv), free(bv);
        alloc_outputs(&t->d, t->want);
        CHECK_MSG(chain(t, t->want, t->want_sm, t->want_si), "task %d: serial chain failed", k);
    }

    /* the thread count changing under the calls */
    pthread_t tog;
    atomic_store(&fixed_threads, 0);
    atomic_store(&stop_toggling, 0);
    CHECK(pthread_create(&tog, NULL, toggler, NULL) == 0);
    run_workers();
    atomic_store(&stop_toggling, 1);
    CHECK(pthread_join(tog, NULL) == 0);

    /* two threads for every call: each caller's large calls ran on a team of two of its own
     * (OpenMP gives each calling thread its own team; suite_threads_team checks that 2 can be
     * had at all) */
    bn_set_num_threads(2);
    atomic_store(&fixed_threads, 2);
    CHECK_MSG(run_workers() == 0, "concurrent callers on 2 threads each: chains failed");
    atomic_store(&fixed_threads, 0);
    bn_set_num_threads(0);

    for (int k = 0; k < THREADS; k++) {
        task *t = &tasks[k];
        free(t->x), free(t->dy), free(t->w), free(t->b);
        for (int j = 0; j < 6; j++) free(t->want[j]);
    }
}

/* The manual's stack promise: every pass runs on a thread with a 96 KiB stack, in float64 (the
 * largest frames: the short-row group kernels keep their lane sums on the stack), in both
 * layouts, with short rows (7x7) and long ones. Overflowing it would crash the suite. */
static void *small_stack_passes(void *arg) {
    int *status = arg;
    static const int64_t shapes[][3] = {{4, 32, 49}, {3, 5, 300}};
    for (int q = 0; q < 2; q++)
        for (int lay = 0; lay < 2; lay++) {
            const bn_desc d = tu_desc(shapes[q][0], shapes[q][1], shapes[q][2], BN_FLOAT64,
                                      (bn_layout)lay);
            const int64_t n = tu_numel(&d), C = d.c;
            double *x = malloc(sizeof(double) * (size_t)n), *y = malloc(sizeof(double) * (size_t)n);
            double *dy = malloc(sizeof(double) * (size_t)n), *dx = malloc(sizeof(double) * (size_t)n);
            double sm[32], si[32], rm[32] = {0}, rv[32], dw[32], db[32];
            for (int64_t c = 0; c < C; c++) rv[c] = 1;
            for (int64_t i = 0; i < n; i++) x[i] = (double)(i % 13), dy[i] = (double)(i % 7) - 3;
            const bn_options opt = BN_OPTIONS_DEFAULT;
            *status |= bn_forward_train(y, sm, si, rm, rv, NULL, x, NULL, NULL, &d, &opt);
            *status |= bn_forward_eval(y, x, rm, rv, NULL, NULL, &d, 1e-5);
            *status |= bn_backward_train(dx, dw, db, dy, x, sm, si, NULL, &d);
            *status |= bn_backward_eval(dx, dw, db, dy, x, rm, rv, NULL, &d, 1e-5);
            free(x), free(y), free(dy), free(dx);
        }
    return NULL;
}

/* Sanitizers pad every frame (redzones, shadow stacks): there the stack is 1 MiB, and only the
 * plain build tests the promise. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PASS_STACK (1024 * 1024)
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define PASS_STACK (1024 * 1024)
#endif
#endif
#ifndef PASS_STACK
#define PASS_STACK (96 * 1024)
#endif

BN_SUITE(suite_concurrency_small_stack) {
    pthread_attr_t attr;
    CHECK(pthread_attr_init(&attr) == 0);
    CHECK(pthread_attr_setstacksize(&attr, PASS_STACK) == 0);
    int status = 0;
    pthread_t t;
    bn_set_num_threads(1); /* the calling thread's stack is the one tested */
    CHECK(pthread_create(&t, &attr, small_stack_passes, &status) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    bn_set_num_threads(0);
    CHECK_MSG(status == BN_OK, "status %d", status);
    pthread_attr_destroy(&attr);
}
