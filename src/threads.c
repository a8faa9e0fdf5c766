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

void bn_parallel_for(int64_t items, int64_t elements, bn_item_fn fn, const void *args) {
    int threads = 1;
    if (elements >= BN_PARALLEL_MIN_ELEMENTS && items > 1) {
        threads = bn_get_num_threads();
        if (items < threads) threads = (int)items;
    }
    if (threads == 1) { /* no parallel region at all: small calls pay nothing for threads */
        last_team = 1;
        for (int64_t k = 0; k < items; k++) fn(args, k);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
    {
        if (omp_get_thread_num() == 0) last_team = omp_get_num_threads(); /* the caller's */
#pragma omp for schedule(static) nowait /* the region ends with a barrier */
        for (int64_t k = 0; k < items; k++) fn(args, k);
    }
#else
    for (int64_t k = 0; k < items; k++) fn(args, k);
#endif
}
