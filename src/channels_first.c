/* channels_first.c - the skeleton of a pass over a channels-first tensor (pass.h): channel c's
 * N rows of S values, row i at x + (i*C + c)*S, taken a channel or a group of plan->group
 * adjacent channels at a time. Channels are independent, so they go to threads, and into
 * groups, in any way without changing a bit. */
#include "pass.h"
#include "threads.h"

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Group k: first pass, finish, second pass, one after the other (the group in cache between the
 * two where it fits). */
static void group(const void *args, int64_t k) {
    const bn_pass *p = args;
    const int64_t g = p->plan->group, c0 = k * g, c1 = min64(c0 + g, p->plan->d.c);
    if (p->first) p->cf_first(p, c0, c1);
    p->cf_finish(p, c0, c1);
    if (p->second) p->cf_second(p, c0, c1);
}

/* Channels [k * run, (k + 1) * run), group by group: each group's second pass rides along the
 * first pass of the next, so that reading one group from memory overlaps writing the other. */
static void group_run(const void *args, int64_t k) {
    const bn_pass *p = args;
    const int64_t run = p->plan->run, C = p->plan->d.c, g = p->plan->group;
    const int64_t c0 = k * run, c1 = min64(c0 + run, C);
    p->cf_first(p, c0, min64(c0 + g, c1));
    for (int64_t a = c0; a < c1; a += g) {
        const int64_t b = min64(a + g, c1);
        p->cf_finish(p, a, b);
        if (b < c1)
            p->cf_second_next(p, a, b, min64(b + g, c1)); /* also the first pass of the next */
        else
            p->cf_second(p, a, b);
    }
}

void bn_run_channels_first(const bn_pass *p) {
    const bn_plan *plan = p->plan;
    if (p->first && p->second && p->cf_second_next && plan->overlap) {
        const int64_t run = plan->run;
        bn_parallel_for((plan->d.c + run - 1) / run, plan->elements, group_run, p);
    } else {
        bn_parallel_for((plan->d.c + plan->group - 1) / plan->group, plan->elements, group, p);
    }
}
