/* threads.h - how a call spreads over threads: channel groups, fixed by the shape. */
#ifndef BN_THREADS_H
#define BN_THREADS_H

#include "bnorm.h"

#include <stdint.h>

/* Below this many elements a call stays on the calling thread: starting threads costs more. */
#define BN_PARALLEL_MIN_ELEMENTS (INT64_C(1) << 15)

/* Work on channels [c0, c0 + g). */
typedef void (*bn_group_fn)(const void *args, int64_t c0, int g);

/* Calls fn once per channel group of desc (bn_group_width channels; the last may be narrower),
 * spread over the library's threads. Groups are independent and fixed by the shape, so the
 * results do not depend on the number of threads. */
void bn_for_each_group(const bn_desc *desc, bn_group_fn fn, const void *args);

#endif
