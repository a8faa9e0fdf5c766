/* store_trial.h - the one fact the plan measures rather than reads: whether streaming stores
 * pay for a call whose size rules leave it open, where a thread's share of the inputs and the
 * output is more than its L2 but the output is below the streaming threshold (plan.h). Plain
 * stores then read each output line into the cache and push the inputs out; streaming ones keep
 * the inputs but send the output past every cache, to memory. Which costs less depends on what
 * lies beyond the L2, which /sys cannot be trusted to report (a virtual machine may show its
 * host's L3), and on the thread count: on an Intel Xeon with a 2 MiB L2, 32x512x7x7 eval on two
 * threads took 91 us with streaming stores and 100-118 us with plain ones, and its backward on
 * two threads 194-201 us against 236-241 us, but on one thread its training and backward took
 * 1.04x the time with streaming stores; on an AMD EPYC whose L3 kept them, streaming
 * 6.4-12.8 MB tensors took up to 1.96x the time on two threads.
 *
 * So each such case (shape, layout, dtype, threads, passes) is decided by its own first calls:
 * BN_TRIAL_CALLS of them, in runs of BN_TRIAL_RUN plain, BN_TRIAL_RUN streaming, plain again,
 * ..., the second half of each run timed (calls after calls of their own kind, as a call
 * repeated on the same tensors finds its data: a plain call right after streaming ones took
 * 1.4x its time). Streaming is kept where the median of its times is at least 5% below plain's;
 * every later call of the case takes the verdict. No buffers of its own, no time but the calls':
 * the user's calls are the measurement. Never changes a bit of a result: both kinds of store
 * write the same values. */
#ifndef BN_STORE_TRIAL_H
#define BN_STORE_TRIAL_H

#include <stdint.h>

#define BN_TRIAL_RUN 4   /* calls of one kind in a row, the second half of them timed */
#define BN_TRIAL_TIMED 8 /* timed calls of each kind in a trial */
#define BN_TRIAL_CALLS (4 * BN_TRIAL_TIMED) /* calls of a case that take part in its trial */
#define BN_TRIAL_CASES 256 /* cases a process keeps; past them, plain stores without a trial */

/* A case: what a call's time depends on, besides the store kind. passes: 1 with a first pass
 * (statistics, sums), 2 with a second (normalize, dx), 3 with both. */
typedef struct {
    int64_t n, c, s;
    int layout, dtype, reads, threads, passes;
} bn_trial_case;

/* The store kind of one call of case k: 1 streaming, 0 plain. *slot is set to a positive
 * number when this call is timed for the trial (then bn_store_trial_report gets its time),
 * else 0. A decided case gets its verdict; a case past the first BN_TRIAL_CASES, plain. */
int bn_store_trial_kind(const bn_trial_case *k, int *slot);

/* The time in ns of a call bn_store_trial_kind asked to be timed (slot > 0), made with the store
 * kind it was given (stream). The case is decided when both kinds have two times. */
void bn_store_trial_report(int slot, int stream, int64_t ns);

/* What the trial of case k has found: 1 streaming, 0 plain, -1 not decided (or not seen); and
 * the best time of each kind so far (0 before one), in ns. Changes nothing. */
int bn_store_trial_verdict(const bn_trial_case *k, int64_t *plain_ns, int64_t *streaming_ns);

/* For tests: forget every case, as a new process would. */
void bn_store_trial_reset(void);

#endif
