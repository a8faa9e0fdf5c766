/* calibrate.h - the one fact about a machine that the plan measures rather than reads: whether
 * streaming stores pay where a thread's inputs fit its L2 but do not fit there beside its output.
 * Plain stores then push the inputs out of the L2 (and read each output line before writing it);
 * streaming ones leave the inputs there, but send the output past every cache, to memory. Which
 * costs less depends on what lies beyond the L2, which /sys cannot be trusted to report (a
 * virtual machine may show its host's L3): on an Intel Xeon with a 2 MiB L2, 32x512x7x7 eval on
 * two threads took 91 us with streaming stores and 100-118 us with plain ones; on an AMD EPYC
 * whose L3 kept them, streaming 6.4-12.8 MB tensors took up to 1.96x the time on two threads. */
#ifndef BN_CALIBRATE_H
#define BN_CALIBRATE_H

#include <stdint.h>

/* 1 when streaming stores were measured faster than plain ones on this machine, in the case
 * above for a core with an L2 of l2 bytes, else 0. Measured once per process, on first need:
 * two rounds of the float32 channels-last normalize over 0.7 L2 of input and as much output,
 * each kind of store timed right after an untimed call of the same kind (`bnorm bench` prints
 * how long it took: 2.1-2.8 ms on the Xeon with its 2 MiB L2, about half of it the first touch
 * of the buffers' pages). 0 without measuring where this CPU or build has no streaming stores,
 * and 0 for a thread that needs it while another measures. Never changes a bit of a result:
 * both kinds of store write the same values. */
int bn_streaming_measured_faster(int64_t l2);

/* What the measurement found: the best time of one call with plain stores and with streaming
 * ones, and how long the whole measurement took (buffers included), in ns; all 0 until it has
 * run. */
void bn_streaming_measurement(int64_t *plain_ns, int64_t *streaming_ns, int64_t *took_ns);

#endif
