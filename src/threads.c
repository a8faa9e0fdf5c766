/* threads.c - how many threads a call may use. The count changes only who computes which piece
 * of work, never the pieces or the order they are merged in. */
#include "bnorm.h"
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

int bn_threads_for(int64_t elements, int64_t pieces) {
    if (elements < BN_PARALLEL_MIN_ELEMENTS || pieces < 2) return 1;
    int n = bn_get_num_threads();
    return pieces < n ? (int)pieces : n;
}
