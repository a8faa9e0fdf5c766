/* threads.h - how a call spreads over threads. Work is cut into items fixed by the shape
 * (channels, or parts of the rows); the thread count only decides who does which item. */
#ifndef BN_THREADS_H
#define BN_THREADS_H

#include "bnorm.h"

#include <stdint.h>

/* Below this many elements a call stays on the calling thread: starting threads costs more. */
#define BN_PARALLEL_MIN_ELEMENTS (INT64_C(1) << 15)
/* Channels-last work cuts the rows into at most this many parts. */
#define BN_MAX_PARTS 64

typedef void (*bn_item_fn)(const void *args, int64_t item);

/* Calls fn(args, item) for item in [0, items), spread over the library's threads when the call
 * touches at least BN_PARALLEL_MIN_ELEMENTS elements. Items must be independent. */
void bn_parallel_for(int64_t items, int64_t elements, bn_item_fn fn, const void *args);

/* Rows [0, rows) cut into parts of `per` rows (a multiple of the statistics block), the last
 * shorter: fixed by the number of rows alone. */
typedef struct {
    int64_t rows, per, count;
} bn_parts;

bn_parts bn_parts_of(int64_t rows);

static inline int64_t bn_part_begin(const bn_parts *p, int64_t k) { return k * p->per; }
static inline int64_t bn_part_end(const bn_parts *p, int64_t k) {
    return (k + 1) * p->per < p->rows ? (k + 1) * p->per : p->rows;
}

#endif
