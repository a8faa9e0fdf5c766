/* channels_first.c - the skeleton of a pass over a channels-first tensor (pass.h): channel c's
 * N rows of S values, row i at x + (i*C + c)*S. Channels are independent, so they go to threads
 * in any grouping without changing a bit. */
#include "pass.h"
#include "threads.h"

/* Channel c: first pass, finish, second pass, one after the other (a channel in cache between
 * the two where it fits). */
static void channel(const void *args, int64_t c) {
    const bn_pass *p = args;
    if (p->first) p->cf_first(p, c);
    p->cf_finish(p, c);
    if (p->second) p->cf_second(p, c);
}

/* Channels [k * run, (k + 1) * run): each channel's second pass rides along the first pass of
 * the next, so that reading one channel from memory overlaps writing the other. */
static void channel_run(const void *args, int64_t k) {
    const bn_pass *p = args;
    const int64_t run = p->plan->run, C = p->plan->d.c;
    const int64_t c0 = k * run, c1 = c0 + run < C ? c0 + run : C;
    p->cf_first(p, c0);
    for (int64_t c = c0; c < c1; c++) {
        p->cf_finish(p, c);
        if (c + 1 < c1)
            p->cf_second_next(p, c); /* also the first pass of c + 1 */
        else
            p->cf_second(p, c);
    }
}

void bn_run_channels_first(const bn_pass *p) {
    const bn_plan *plan = p->plan;
    if (p->first && p->second && p->cf_second_next && plan->overlap) {
        const int64_t run = plan->run;
        bn_parallel_for((plan->d.c + run - 1) / run, plan->elements, channel_run, p);
    } else {
        bn_parallel_for(plan->d.c, plan->elements, channel, p);
    }
}
