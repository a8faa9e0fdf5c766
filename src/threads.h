/* threads.h - the thread count of one call. */
#ifndef BN_THREADS_H
#define BN_THREADS_H

#include <stdint.h>

/* Below this many elements a call stays on the calling thread: starting threads costs more. */
#define BN_PARALLEL_MIN_ELEMENTS (INT64_C(1) << 16)

/* Threads for a call over `elements` values split into `pieces` independent pieces. */
int bn_threads_for(int64_t elements, int64_t pieces);

#endif
