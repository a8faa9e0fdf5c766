/* pass.h - a two-pass computation over a tensor, as the skeletons of channels_first.c and
 * channels_last.c run it: a first pass that reads (statistics, or gradient sums) into
 * per-channel partials, their merge in a fixed order and finish into per-channel coefficients,
 * and a second, element-wise pass (normalize, or dx). forward.c and backward.c fill it in.
 * Either pass may be absent: no first pass when the partials are given (the stage API), no
 * second when only they are asked for. The skeletons choose, from the plan, whether to run the
 * passes one after the other over the whole tensor or fused (a channel's second pass while the
 * next one's first reads; a chunk of channels at a time in cache): the same operations in the
 * same order either way, so the same bits. */
#ifndef BN_PASS_H
#define BN_PASS_H

#include "plan.h"

typedef struct bn_pass bn_pass;
struct bn_pass {
    const bn_plan *plan;
    /* channels-first, channels [c0, c1) (one channel, or a group of plan->group): their first
     * pass; their finish; their second pass; and their second pass made while the first of
     * channels [c1, c2) reads (NULL: the passes never overlap) */
    void (*cf_first)(const bn_pass *p, int64_t c0, int64_t c1);
    void (*cf_finish)(const bn_pass *p, int64_t c0, int64_t c1);
    void (*cf_second)(const bn_pass *p, int64_t c0, int64_t c1);
    void (*cf_second_next)(const bn_pass *p, int64_t c0, int64_t c1, int64_t c2);
    /* channels-last: the first pass of tile t into the partials of part t.part; the parts'
     * merge and finish of channels [c0, c1); the second pass of tile t */
    void (*cl_first)(const bn_pass *p, const bn_tile *t);
    void (*cl_finish)(const bn_pass *p, int64_t c0, int64_t c1);
    void (*cl_second)(const bn_pass *p, const bn_tile *t);
    int first, second; /* which passes run */
};

/* The pass over a channels-first tensor: channel by channel (in parallel), or in runs of
 * channels, each channel's second pass riding along the next one's first (plan->overlap). */
void bn_run_channels_first(const bn_pass *p);

/* The pass over a channels-last tensor: first-pass tiles (in parallel), the merge and finish
 * of every channel, second-pass pieces (in parallel); or, when a chunk of channels fits in cache
 * with all its rows (plan->chunk), chunk by chunk (in parallel), all three stages each. */
void bn_run_channels_last(const bn_pass *p);

static inline void bn_run_pass(const bn_pass *p) {
    if (p->plan->d.layout == BN_CHANNELS_LAST)
        bn_run_channels_last(p);
    else
        bn_run_channels_first(p);
}

#endif
