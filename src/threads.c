/* threads.c - the thread count, and the one parallel loop of the library. */
#include "threads.h"

#include <stdatomic.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static atomic_int requested_threads; /* 0: OpenMP's default */

void bn_set_num_threads(int n) { atomic_store(&requested_threads, n > 0 ? n : 0); }

int bn_get_num_threads(void) {
#ifdef _OPENMP
    int n = atomic_load(&requested_threads);
    return n > 0 ? n : omp_get_max_threads();
#else
    return 1;
#endif
}

/* tests: the calling thread's last team size. Initial-exec: with the default model a shared
 * library calls __tls_get_addr on every access, on every call of the library; 4 bytes fit the
 * static TLS that glibc keeps for libraries loaded later (as libgomp's own variables do). */
static _Thread_local int last_team __attribute__((tls_model("initial-exec"))) = 1;

int bn_parallel_last_team(void) { return last_team; }

/* Thread t of n takes items [items * t / n, items * (t + 1) / n): the same share of the items
 * in every call with as many items, whichever order it walks them in. */
static void run_share(int64_t items, int t, int n, bn_item_fn fn, const void *args, int reverse) {
    const int64_t lo = items * t / n, hi = items * (t + 1) / n;
    if (reverse)
        for (int64_t k = hi; k-- > lo;) fn(args, k);
    else
        for (int64_t k = lo; k < hi; k++) fn(args, k);
}

void bn_parallel_phases(int count, const bn_phase *phases, int64_t elements, const void *args) {
    int64_t most = 0;
    for (int k = 0; k < count; k++)
        if (phases[k].items > most) most = phases[k].items;
    int threads = 1;
    if (elements >= BN_PARALLEL_MIN_ELEMENTS && most > 1) {
        threads = bn_get_num_threads();
        if (most < threads) threads = (int)most;
    }
    if (threads == 1) { /* no parallel region at all: small calls pay nothing for threads */
        last_team = 1;
        for (int k = 0; k < count; k++)
            run_share(phases[k].items, 0, 1, phases[k].fn, args, phases[k].reverse);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        if (t == 0) last_team = n; /* the caller's */
        for (int k = 0; k < count; k++) {
            if (k > 0) {
#pragma omp barrier
            }
            run_share(phases[k].items, t, n, phases[k].fn, args, phases[k].reverse);
        }
    }
#endif /* without OpenMP bn_get_num_threads is 1: the loop above ran them all */
}

/* One phase; a call too small for threads goes straight to its items (a few ns of the loop over
 * phases, which calls of (20, 2) feel). */
static inline void parallel_for(int64_t items, int64_t elements, bn_item_fn fn, const void *args,
                                int reverse) {
    if (elements < BN_PARALLEL_MIN_ELEMENTS || items <= 1) {
        last_team = 1;
        run_share(items, 0, 1, fn, args, reverse);
        return;
    }
    const bn_phase one = {items, fn, reverse};
    bn_parallel_phases(1, &one, elements, args);
}

void bn_parallel_for(int64_t items, int64_t elements, bn_item_fn fn, const void *args) {
    parallel_for(items, elements, fn, args, 0);
}

void bn_parallel_for_reverse(int64_t items, int64_t elements, bn_item_fn fn, const void *args) {
    parallel_for(items, elements, fn, args, 1);
}
