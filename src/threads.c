/* threads.c - the thread count, and the one parallel loop of the library. The count changes only
 * who computes which channel group, never the groups or how each is computed. */
#include "threads.h"

#include "kernels.h"

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

void bn_for_each_group(const bn_desc *desc, bn_group_fn fn, const void *args) {
    const int width = bn_group_width(desc);
    const int64_t groups = (desc->c + width - 1) / width;
    int threads = 1;
    if (desc->n * desc->c * desc->s >= BN_PARALLEL_MIN_ELEMENTS && groups > 1) {
        threads = bn_get_num_threads();
        if (groups < threads) threads = (int)groups;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (int64_t k = 0; k < groups; k++) {
        int64_t c0 = k * width;
        fn(args, c0, desc->c - c0 < width ? (int)(desc->c - c0) : width);
    }
}
