/* threads.h - the thread count, and the one parallel loop of the library. Work whose results are
 * summed or merged is cut into items fixed by the shape (plan.c); the thread count only decides
 * who does which item. */
#ifndef BN_THREADS_H
#define BN_THREADS_H

#include "bnorm.h"

#include <stdint.h>

/* Below this many elements a call stays on the calling thread: starting threads costs more. */
#define BN_PARALLEL_MIN_ELEMENTS (INT64_C(1) << 15)

typedef void (*bn_item_fn)(const void *args, int64_t item);

/* Calls fn(args, item) for item in [0, items), spread over the library's threads when the call
 * touches at least BN_PARALLEL_MIN_ELEMENTS elements. Items must be independent. */
void bn_parallel_for(int64_t items, int64_t elements, bn_item_fn fn, const void *args);

/* bn_parallel_for with each thread's share of the items (the same share as there) walked from
 * its last item to its first. A pass after one that read the same data in order starts where
 * that one ended, on what is still in cache. */
void bn_parallel_for_reverse(int64_t items, int64_t elements, bn_item_fn fn, const void *args);

/* Loops one after the other on one team of threads, each as bn_parallel_for (or _reverse) would
 * share its items, with a barrier between two: a pass whose stages depend on each other (the
 * first pass, the finish of every channel, the second pass) starts its threads once. The team is
 * as large as the loop with the most items needs. */
typedef struct {
    int64_t items;
    bn_item_fn fn;
    int reverse;
} bn_phase;
void bn_parallel_phases(int count, const bn_phase *phases, int64_t elements, const void *args);

/* For tests: how many threads the calling thread's last bn_parallel_for ran on (1 without a
 * parallel region). Per calling thread, so concurrent callers each see their own. */
int bn_parallel_last_team(void);
#endif
