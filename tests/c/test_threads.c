/* test_threads.c - bit-for-bit the same outputs, statistics and gradients for 1, 2, 3 and 4
 * threads, in both layouts and dtypes, including partial channel groups; and proof that those
 * threads ran (the team size of each pass's parallel loop, bn_parallel_last_team). */
#include "check.h"
#include "testutil.h"

#include "kernels.h"
#include "machine.h"
#include "plan.h"
#include "threads.h"

#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    void *y, *dx, *dweight, *dbias, *rm, *rv, *ye, *dxe;
    double *sm, *si;
    int64_t nbt;
    int team[4]; /* the team size each pass's last parallel loop ran on */
} results;

static void run_all(results *o, const bn_desc *d, const void *x, const void *dy, const void *w,
                    const void *b, size_t es) {
    int64_t count = tu_numel(d);
    o->y = calloc((size_t)count, es), o->dx = calloc((size_t)count, es);
    o->ye = calloc((size_t)count, es), o->dxe = calloc((size_t)count, es);
    o->dweight = calloc((size_t)d->c, es), o->dbias = calloc((size_t)d->c, es);
    o->rm = calloc((size_t)d->c, es), o->rv = calloc((size_t)d->c, es);
    o->sm = calloc((size_t)d->c, sizeof(double)), o->si = calloc((size_t)d->c, sizeof(double));
    o->nbt = 0;
    bn_options opt = BN_OPTIONS_DEFAULT;
    CHECK_STATUS(bn_forward_train(o->y, o->sm, o->si, o->rm, o->rv, &o->nbt, x, w, b, d, &opt), BN_OK);
    o->team[0] = bn_parallel_last_team();
    CHECK_STATUS(bn_backward_train(o->dx, o->dweight, o->dbias, dy, x, o->sm, o->si, w, d), BN_OK);
    o->team[1] = bn_parallel_last_team();
    CHECK_STATUS(bn_forward_eval(o->ye, x, o->rm, o->rv, w, b, d, 1e-5), BN_OK);
    o->team[2] = bn_parallel_last_team();
    CHECK_STATUS(bn_backward_eval(o->dxe, NULL, NULL, dy, x, o->rm, o->rv, w, d, 1e-5), BN_OK);
    o->team[3] = bn_parallel_last_team();
}

/* The largest team OpenMP gives a parallel region that asks for `requested` threads: all of
 * them, unless OMP_THREAD_LIMIT says fewer (OMP_DYNAMIC, which would let it give fewer at will,
 * fails suite_threads_team). 1 without OpenMP. */
static int team_for(int requested) {
#ifdef _OPENMP
    const int limit = omp_get_thread_limit();
    return requested < limit ? requested : limit;
#else
    (void)requested;
    return 1;
#endif
}

/* The thread tests mean something only where a call can get two threads: say loudly when not. */
BN_SUITE(suite_threads_team) {
#ifdef _OPENMP
    CHECK_MSG(!omp_get_dynamic(), "OMP_DYNAMIC is on: OpenMP may give fewer threads than asked, "
                                  "and the thread tests cannot tell; unset it");
    CHECK_MSG(omp_get_thread_limit() >= 2, "OMP_THREAD_LIMIT=%d: the thread tests need 2 threads",
              omp_get_thread_limit());
#else
    CHECK_MSG(0, "built without OpenMP: the thread tests cannot run anything on 2 threads");
#endif
    bn_desc d = tu_desc(16, 8, 1024, BN_FLOAT32, BN_CHANNELS_FIRST); /* 4 times the threshold */
    CHECK(tu_numel(&d) >= 4 * BN_PARALLEL_MIN_ELEMENTS);
    float *x = calloc((size_t)tu_numel(&d), sizeof(float)), *y = calloc((size_t)tu_numel(&d), 4);
    for (int64_t k = 0; k < tu_numel(&d); k++) x[k] = (float)(k % 13);
    bn_options opt = BN_OPTIONS_DEFAULT;
    for (int t = 1; t <= 4; t++) {
        bn_set_num_threads(t);
        CHECK_STATUS(bn_forward_train(y, NULL, NULL, NULL, NULL, NULL, x, NULL, NULL, &d, &opt), BN_OK);
        CHECK_MSG(bn_parallel_last_team() == team_for(t), "%d threads asked: a team of %d, want %d",
                  t, bn_parallel_last_team(), team_for(t));
    }
    /* the default: OpenMP's own (OMP_NUM_THREADS, or one per core) */
    bn_set_num_threads(0);
    CHECK_STATUS(bn_forward_train(y, NULL, NULL, NULL, NULL, NULL, x, NULL, NULL, &d, &opt), BN_OK);
    CHECK_MSG(bn_parallel_last_team() == team_for(bn_get_num_threads()),
              "default (%d threads): a team of %d", bn_get_num_threads(), bn_parallel_last_team());
    /* a small call stays on the calling thread */
    bn_set_num_threads(4);
    bn_desc small = tu_desc(2, 8, 16, BN_FLOAT32, BN_CHANNELS_FIRST);
    CHECK_STATUS(bn_forward_train(y, NULL, NULL, NULL, NULL, NULL, x, NULL, NULL, &small, &opt), BN_OK);
    CHECK(bn_parallel_last_team() == 1);
    bn_set_num_threads(0);
    free(x), free(y);
}

static int same(const results *a, const results *b, const bn_desc *d, size_t es) {
    size_t big = (size_t)tu_numel(d) * es, small = (size_t)d->c * es, st = (size_t)d->c * sizeof(double);
    return !memcmp(a->y, b->y, big) && !memcmp(a->dx, b->dx, big) && !memcmp(a->ye, b->ye, big) &&
           !memcmp(a->dxe, b->dxe, big) && !memcmp(a->dweight, b->dweight, small) &&
           !memcmp(a->dbias, b->dbias, small) && !memcmp(a->rm, b->rm, small) &&
           !memcmp(a->rv, b->rv, small) && !memcmp(a->sm, b->sm, st) && !memcmp(a->si, b->si, st);
}

/* Random inputs of a case, in d's dtype: x ~ N(mean, std), dy ~ N(0, 1), weight, bias. */
typedef struct {
    void *x, *dy, *w, *b;
} inputs;

static inputs make_inputs(const bn_desc *d, uint64_t seed, double mean, double std) {
    const int64_t count = tu_numel(d);
    tu_rng r = tu_rng_new(seed);
    double *xv = tu_randn(&r, count, mean, std), *gv = tu_randn(&r, count, 0, 1);
    double *wv = tu_randn(&r, d->c, 1, 0.2), *bv = tu_randn(&r, d->c, 0, 1);
    inputs in = {tu_to_dtype(xv, count, d->dtype), tu_to_dtype(gv, count, d->dtype),
                 tu_to_dtype(wv, d->c, d->dtype), tu_to_dtype(bv, d->c, d->dtype)};
    free(xv), free(gv), free(wv), free(bv);
    return in;
}

static void free_inputs(inputs *in) { free(in->x), free(in->dy), free(in->w), free(in->b); }

static void release(results *o) {
    free(o->y), free(o->dx), free(o->ye), free(o->dxe), free(o->dweight), free(o->dbias);
    free(o->rm), free(o->rv), free(o->sm), free(o->si);
}

BN_SUITE(suite_threads_bitwise) {
    int full_teams[5] = {0}; /* passes that ran on all the threads asked, by thread count */
    /* partial channel groups, wide tensors cut into channel tiles (as wide as the threads make
     * them: 1000 channels in 1 to 4 tiles), many row parts */
    static const int64_t shapes[][3] = {{16, 37, 301}, {4096, 37, 1}, {3, 19, 2048},
                                        {200, 300, 1}, {4, 300, 30}, {64, 1000, 1}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
        for (int dt = 0; dt < 2; dt++)
            for (int lay = 0; lay < 2; lay++) {
                bn_desc d = tu_desc(shapes[k][0], shapes[k][1], shapes[k][2], (bn_dtype)dt, (bn_layout)lay);
                size_t es = dt ? 8 : 4;
                inputs in = make_inputs(&d, 1000 + k, 3, 2);
                results one;
                bn_set_num_threads(1);
                CHECK(bn_get_num_threads() == 1);
                run_all(&one, &d, in.x, in.dy, in.w, in.b, es);
                for (int p = 0; p < 4; p++) CHECK(one.team[p] == 1);
                for (int t = 2; t <= 4; t++) {
                    results many;
                    bn_set_num_threads(t);
                    run_all(&many, &d, in.x, in.dy, in.w, in.b, es);
                    CHECK_MSG(same(&one, &many, &d, es), "shape %zu dtype %d layout %d: %d threads differ",
                              k, dt, lay, t);
                    /* every pass of these shapes has work for 2 threads at least; a pass may
                     * have fewer pieces than 3 or 4 threads (3 samples to cut: 3 threads) */
                    for (int p = 0; p < 4; p++) {
                        const int team = many.team[p];
                        CHECK_MSG(t == 2 ? team == team_for(2) : team >= 2 && team <= team_for(t),
                                  "shape %zu dtype %d layout %d pass %d: %d threads asked, a team of %d",
                                  k, dt, lay, p, t, team);
                        if (team == team_for(t)) full_teams[t]++;
                    }
                    release(&many);
                }
                bn_set_num_threads(0);
                release(&one);
                free_inputs(&in);
            }
    for (int t = 3; t <= 4; t++)
        CHECK_MSG(full_teams[t] > 0, "no pass ran on the %d threads asked", t);
    CHECK(bn_get_num_threads() >= 1);
}

/* A channel gives the same bits whether it sits in a full vector group or in the narrow tail
 * of a channels-last tensor: the narrow path repeats each lane's operations in order. */
BN_SUITE(suite_threads_lanes) {
    for (int dt = 0; dt < 2; dt++) {
        const int64_t rows = 700, wide = 32, narrow = 17;
        bn_desc dw = tu_desc(rows, wide, 1, (bn_dtype)dt, BN_CHANNELS_LAST);
        bn_desc dn = tu_desc(rows, narrow, 1, (bn_dtype)dt, BN_CHANNELS_LAST);
        tu_rng r = tu_rng_new(55);
        double *v = tu_randn(&r, rows * wide, 5, 3), *vn = malloc(sizeof(double) * (size_t)(rows * narrow));
        for (int64_t i = 0; i < rows; i++)
            for (int64_t c = 0; c < narrow; c++) vn[i * narrow + c] = v[i * wide + c];
        void *xw = tu_to_dtype(v, rows * wide, dw.dtype), *xn = tu_to_dtype(vn, rows * narrow, dn.dtype);
        void *yw = tu_to_dtype(v, rows * wide, dw.dtype), *yn = tu_to_dtype(vn, rows * narrow, dn.dtype);
        double smw[32], siw[32], smn[17], sin_[17], gw[32], gn[17];
        bn_options opt = BN_OPTIONS_DEFAULT;
        CHECK_STATUS(bn_forward_train(yw, smw, siw, NULL, NULL, NULL, xw, NULL, NULL, &dw, &opt), BN_OK);
        CHECK_STATUS(bn_forward_train(yn, smn, sin_, NULL, NULL, NULL, xn, NULL, NULL, &dn, &opt), BN_OK);
        CHECK_MSG(!memcmp(smw, smn, sizeof smn) && !memcmp(siw, sin_, sizeof sin_),
                  "dtype %d: statistics of the narrow tail differ from a full group", dt);
        /* the gradient sums too: dbias in float64 is the plain sum of dy */
        if (dt) {
            CHECK_STATUS(bn_backward_train(NULL, NULL, gw, xw, xw, smw, siw, NULL, &dw), BN_OK);
            CHECK_STATUS(bn_backward_train(NULL, NULL, gn, xn, xn, smn, sin_, NULL, &dn), BN_OK);
            CHECK(!memcmp(gw, gn, sizeof gn));
        }
        free(v), free(vn), free(xw), free(xn), free(yw), free(yn);
    }
}

/* Whether output kernels can stream here: built with the streaming twins (x86-64, run-time
 * kernel sets: every set has them). */
static int streaming_available(void) { return bn_kernels_can_stream(); }

/* Outputs past BN_STREAM_THRESHOLD are written with streaming stores on x86-64 machines: they
 * must hold the same bits as plain stores, in every pass and both layouts. The count of kernel
 * calls that streamed shows which path each run took: streaming ones where the machine has
 * them, none with plain stores forced, and none at all on a machine without them. */
BN_SUITE(suite_threads_streaming_stores) {
    const int64_t n = 2, c = 20, s = 330000; /* 13.2 M float32 values: 52.8 MB */
    const int available = streaming_available();
    if (!available)
        printf("streaming stores are not available here (a build without run-time kernel sets): plain stores only\n");
    for (int lay = 0; lay < 2; lay++) {
        bn_desc d = tu_desc(n, c, s, BN_FLOAT32, (bn_layout)lay);
        const int64_t count = tu_numel(&d);
        CHECK(count * 4 >= BN_STREAM_THRESHOLD);
        float *x = malloc(sizeof(float) * (size_t)count), *dy = malloc(sizeof(float) * (size_t)count);
        tu_rng r = tu_rng_new(9);
        for (int64_t k = 0; k < count; k++) x[k] = (float)(1 + tu_normal(&r)), dy[k] = (float)tu_uniform(&r);
        float *out[2][3];
        double sm[20], si[20];
        float rm[20] = {0}, rv[20];
        for (int k = 0; k < 20; k++) rv[k] = 1.5f;
        bn_options opt = BN_OPTIONS_DEFAULT;
        for (int plain = 0; plain < 2; plain++) {
            bn_kernel_force_plain_stores(plain);
            for (int m = 0; m < 3; m++) out[plain][m] = malloc(sizeof(float) * (size_t)count);
            static const char *const pass[3] = {"train", "eval", "backward"};
            for (int m = 0; m < 3; m++) {
                const int64_t before = bn_kernel_stream_count();
                float *o = out[plain][m];
                bn_status st = m == 0 ? bn_forward_train(o, sm, si, NULL, NULL, NULL, x, NULL, NULL, &d, &opt)
                             : m == 1 ? bn_forward_eval(o, x, rm, rv, NULL, NULL, &d, 1e-5)
                                      : bn_backward_train(o, NULL, NULL, dy, x, sm, si, NULL, &d);
                CHECK_STATUS(st, BN_OK);
                const int64_t streamed = bn_kernel_stream_count() - before;
                CHECK_MSG(available && !plain ? streamed > 0 : streamed == 0,
                          "layout %d %s, plain stores %s: %lld kernel calls streamed", lay,
                          pass[m], plain ? "forced" : "allowed", (long long)streamed);
            }
        }
        bn_kernel_force_plain_stores(0);
        for (int m = 0; m < 3; m++) {
            CHECK_MSG(!memcmp(out[0][m], out[1][m], sizeof(float) * (size_t)count),
                      "layout %d pass %d: streaming stores changed the output", lay, m);
            free(out[0][m]), free(out[1][m]);
        }
        free(x), free(dy);
    }
    /* small outputs never stream */
    bn_desc small = tu_desc(4, 8, 100, BN_FLOAT32, BN_CHANNELS_FIRST);
    float xs[3200], ys[3200];
    for (int k = 0; k < 3200; k++) xs[k] = (float)(k % 11);
    bn_options opt = BN_OPTIONS_DEFAULT;
    const int64_t before = bn_kernel_stream_count();
    CHECK_STATUS(bn_forward_train(ys, NULL, NULL, NULL, NULL, NULL, xs, NULL, NULL, &small, &opt), BN_OK);
    CHECK(bn_kernel_stream_count() == before);
}

/* Channels-last passes work chunk by chunk when a chunk's rows fit in cache, tile by tile
 * otherwise; channels-first passes overlap one channel with the next, or not: the same bits
 * either way, whatever the chunk width. (Budgets of 1 and 2^40 bytes both overlap, so the
 * budgets below one channel make the channels-first passes take the other path.) */
BN_SUITE(suite_threads_cache_chunks) {
    static const int64_t shapes[][3] = {{16, 37, 301}, {200, 300, 1}, {7, 70, 9}, {8, 1000, 1}};
    for (size_t k = 0; k < 2 * sizeof shapes / sizeof shapes[0]; k++)
        for (int dt = 0; dt < 2; dt++) {
            const int64_t *shape = shapes[k / 2];
            bn_desc d = tu_desc(shape[0], shape[1], shape[2], (bn_dtype)dt, (bn_layout)(k % 2));
            size_t es = dt ? 8 : 4;
            /* never, always, chunks of about 300 channels for (8, 1000, 1) training; just below
             * one channel (channels-first training does not overlap) and just below the two
             * arrays of one (channels-first backward does not); channels-first short rows
             * overlap group by group, so there "one channel" is a group of them */
            const int64_t group = d.layout == BN_CHANNELS_FIRST && d.s < BN_SHORT ? BN_GROUP : 1;
            const int64_t chan = d.n * d.s * (int64_t)es * group;
            const int64_t budgets[] = {1, INT64_C(1) << 40, 20000, chan - 1, 2 * chan - 1};
            /* what each pass (training, backward) chose, by its plan: overlap for channels-first,
             * chunks for channels-last (which (N, C, 1) tensors are, whatever their layout);
             * both choices must be seen, or the comparison would be of a path with itself */
            int seen[2][2] = {{0, 0}, {0, 0}};
            inputs in = make_inputs(&d, 77 + k, -2, 3);
            results base, other;
            bn_cache_budget_override(budgets[0]);
            run_all(&base, &d, in.x, in.dy, in.w, in.b, es);
            for (size_t q = 0; q < sizeof budgets / sizeof budgets[0]; q++) {
                bn_cache_budget_override(budgets[q]);
                for (int threads = 1; threads <= 3; threads += 2) {
                    bn_set_num_threads(threads);
                    for (int pass = 0; pass < 2; pass++) { /* the plan the pass makes */
                        bn_plan plan;
                        CHECK(bn_plan_make(&plan, &d, pass + 1) == BN_OK);
                        seen[pass][plan.d.layout == BN_CHANNELS_FIRST ? plan.overlap
                                                                      : plan.chunk > 0] = 1;
                    }
                    if (q == 0) continue; /* the base itself */
                    run_all(&other, &d, in.x, in.dy, in.w, in.b, es);
                    CHECK_MSG(same(&base, &other, &d, es), "shape %zu dtype %d budget %zu threads %d: chunks changed bits",
                              k, dt, q, threads);
                    /* the small shapes stay on one thread; the large ones ran on threads */
                    const int big = tu_numel(&d) >= BN_PARALLEL_MIN_ELEMENTS;
                    for (int p = 0; p < 4; p++)
                        CHECK_MSG(big && threads > 1 ? other.team[p] >= 2 && other.team[p] <= team_for(threads)
                                                     : other.team[p] == 1,
                                  "shape %zu dtype %d budget %zu pass %d: %d threads asked, a team of %d",
                                  k, dt, q, p, threads, other.team[p]);
                    release(&other);
                }
            }
            for (int pass = 0; pass < 2; pass++)
                CHECK_MSG(seen[pass][0] && seen[pass][1],
                          "shape %zu dtype %d %s: the budgets gave one path only", k, dt,
                          pass ? "backward" : "training");
            bn_set_num_threads(0);
            bn_cache_budget_override(0);
            release(&base);
            free_inputs(&in);
        }
}

/* Cache sizes come from Linux's /sys tables: a plausible size or 0, never garbage. */
BN_SUITE(suite_threads_cache_sizes) {
    for (int level = 2; level <= 3; level++) {
        const int64_t size = bn_cache_size(level);
        CHECK_MSG(size == 0 || (size >= (INT64_C(16) << 10) && size <= (INT64_C(4) << 30)),
                  "L%d cache: %lld bytes", level, (long long)size);
    }
    CHECK(bn_cache_size(9) == 0);
}

/* Items of bn_parallel_for and bn_parallel_for_reverse: which thread took each, and in which
 * place of that thread's walk. */
typedef struct {
    int thread[64], place[64], taken[64];
    int walked[8]; /* items each thread has taken so far */
} walk;

static void note_item(const void *args, int64_t k) {
    walk *w = (walk *)args; /* each item is written by the one thread that takes it */
#ifdef _OPENMP
    const int t = omp_get_thread_num();
#else
    const int t = 0;
#endif
    w->thread[k] = t;
    w->place[k] = w->walked[t]++;
    w->taken[k]++;
}

/* Each item once; each thread takes the same share of the items both ways, in order one way and
 * from its last item the other. Then a channels-last pass that walks its second pass backwards
 * (its first pass reads beyond the core's caches: plan.prefetch) gives the same bits on 1, 2
 * and 3 threads. */
BN_SUITE(suite_threads_reverse) {
    for (int t = 1; t <= 4; t++)
        for (int64_t items = 1; items <= 64; items += 9) {
            walk fwd, rev;
            memset(&fwd, 0, sizeof fwd), memset(&rev, 0, sizeof rev);
            bn_set_num_threads(t);
            const int64_t elements = 4 * BN_PARALLEL_MIN_ELEMENTS;
            bn_parallel_for(items, elements, note_item, &fwd);
            bn_parallel_for_reverse(items, elements, note_item, &rev);
            for (int64_t k = 0; k < items; k++) {
                CHECK_MSG(fwd.taken[k] == 1 && rev.taken[k] == 1,
                          "%d threads, %lld items: item %lld taken %d and %d times", t,
                          (long long)items, (long long)k, fwd.taken[k], rev.taken[k]);
                CHECK(fwd.thread[k] == rev.thread[k]);
                if (k > 0 && fwd.thread[k] == fwd.thread[k - 1])
                    CHECK_MSG(fwd.place[k] == fwd.place[k - 1] + 1 &&
                                  rev.place[k] == rev.place[k - 1] - 1,
                              "%d threads, %lld items: items %lld and %lld not walked in order",
                              t, (long long)items, (long long)k - 1, (long long)k);
            }
        }
    bn_set_num_threads(0);

    const int64_t l2 = bn_machine_this().l2 > 0 ? bn_machine_this().l2 : INT64_C(1) << 20;
    const int64_t c = 24, rows = BN_PREFETCH_L2S * l2 / (4 * c) * 5 / 4; /* 1.25x the reads */
    bn_desc d = tu_desc(rows, c, 1, BN_FLOAT32, BN_CHANNELS_LAST);
    bn_plan plan;
    CHECK_STATUS(bn_plan_make(&plan, &d, 1), BN_OK);
    CHECK_MSG(plan.prefetch, "%lld rows of %lld channels: the first pass should read beyond %d L2s",
              (long long)rows, (long long)c, BN_PREFETCH_L2S);
    inputs in = make_inputs(&d, 77, 100, 3);
    results one;
    bn_set_num_threads(1);
    run_all(&one, &d, in.x, in.dy, in.w, in.b, 4);
    for (int t = 2; t <= 3; t++) {
        results many;
        bn_set_num_threads(t);
        run_all(&many, &d, in.x, in.dy, in.w, in.b, 4);
        CHECK_MSG(same(&one, &many, &d, 4), "%lld x %lld channels-last: %d threads differ",
                  (long long)rows, (long long)c, t);
        release(&many);
    }
    bn_set_num_threads(0);
    release(&one);
    free_inputs(&in);
}

/* bn_parallel_phases: each phase's items once each, shared among the threads as bn_parallel_for
 * (or _reverse) shares them, and no item of a phase before every item of the one before it is
 * done (the barrier): phase 2 reads what phase 1 wrote, phase 3 what phase 2 wrote. */
typedef struct {
    int64_t n[3];
    int done[3][64]; /* the times each item of each phase ran */
    int saw[3][64];  /* the items of the phase before that had run when this one did */
    walk order[3];
} staged;

static void stage(staged *s, int q, int64_t k) {
    int before = 0;
    for (int64_t j = 0; q > 0 && j < s->n[q - 1]; j++) before += s->done[q - 1][j];
    s->saw[q][k] = before;
    s->done[q][k]++;
    note_item(&s->order[q], k);
}
static void stage_one(const void *args, int64_t k) { stage((staged *)args, 0, k); }
static void stage_two(const void *args, int64_t k) { stage((staged *)args, 1, k); }
static void stage_three(const void *args, int64_t k) { stage((staged *)args, 2, k); }

BN_SUITE(suite_threads_phases) {
    const int64_t elements = 4 * BN_PARALLEL_MIN_ELEMENTS;
    for (int t = 1; t <= 4; t++)
        for (int64_t n1 = 1; n1 <= 64; n1 += 21)
            for (int64_t n2 = 1; n2 <= 64; n2 += 31) {
                staged *s = calloc(1, sizeof *s);
                s->n[0] = n1, s->n[1] = n2, s->n[2] = 40;
                bn_set_num_threads(t);
                const bn_phase phases[3] = {{n1, stage_one, 0}, {n2, stage_two, 0},
                                            {s->n[2], stage_three, 1}};
                bn_parallel_phases(3, phases, elements, s);
                const int64_t most = n1 > n2 ? (n1 > 40 ? n1 : 40) : (n2 > 40 ? n2 : 40);
                CHECK(bn_parallel_last_team() == (t < most ? t : (int)most));
                for (int64_t k = 0; k < n1; k++) CHECK(s->done[0][k] == 1);
                for (int q = 1; q < 3; q++)
                    for (int64_t k = 0; k < s->n[q]; k++)
                        CHECK_MSG(s->done[q][k] == 1 && s->saw[q][k] == s->n[q - 1],
                                  "%d threads: phase %d item %lld saw %d of %lld items before", t,
                                  q + 1, (long long)k, s->saw[q][k], (long long)s->n[q - 1]);
                /* the shares of bn_parallel_for, the third walked from each share's end */
                walk fwd;
                memset(&fwd, 0, sizeof fwd);
                bn_parallel_for(s->n[2], elements, note_item, &fwd);
                for (int64_t k = 0; k < s->n[2]; k++) {
                    CHECK(s->order[2].thread[k] == fwd.thread[k]);
                    if (k > 0 && fwd.thread[k] == fwd.thread[k - 1])
                        CHECK(s->order[2].place[k] == s->order[2].place[k - 1] - 1);
                }
                free(s);
            }
    bn_set_num_threads(0);
    /* a small call stays on the calling thread, the phases in order */
    staged *s = calloc(1, sizeof *s);
    s->n[0] = 5, s->n[1] = 7, s->n[2] = 3;
    bn_set_num_threads(2);
    const bn_phase phases[3] = {{5, stage_one, 0}, {7, stage_two, 0}, {3, stage_three, 0}};
    bn_parallel_phases(3, phases, 100, s);
    CHECK(bn_parallel_last_team() == 1 && s->saw[1][6] == 5 && s->saw[2][2] == 7);
    bn_set_num_threads(0);
    free(s);
}
