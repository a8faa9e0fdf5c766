/* finish.h - the finish stage: from merged per-channel statistics (or sums) to what a call
 * returns per channel and to the coefficients of its element-wise pass. Plain loops over (C)
 * arrays of doubles, the per-channel parameters loaded into doubles first (bn_kernels.load):
 * the one place where the conventions of other frameworks will plug in. */
#ifndef BN_FINISH_H
#define BN_FINISH_H

#include "kernels.h"

#include <math.h>

/* Forward training: what the finish of channels [c0, c1) reads and writes. Per-channel arrays
 * are (C), indexed by channel; stored ones are in the tensor's dtype (k's), NULL where absent. */
typedef struct {
    const bn_kernels *k;
    double count, eps, factor; /* values per channel in the batch; the batch's running weight */
    const double *w, *b;       /* (C) weight and bias loaded into doubles (bn_kernels.load) before
                                * the pass, once for every channel; NULL: 1 and 0 */
    double *save_mean, *save_invstd; /* out, or NULL */
    void *running_mean, *running_var; /* stored, blended, or NULL */
    double *tmp;               /* (C) doubles: a temporary */
    double *invstd, *scale, *shift; /* doubles out: the coefficients of the normalization */
} bn_train_finish;

/* Forward training, channels [c0, c1), from their merged moments mom over f->count values each:
 * invstd = 1/sqrt(m2/count + eps), or 0 where that sum is 0 (as torch's training kernels),
 * scale = invstd * w and shift = b; save_mean = mean and save_invstd = invstd; the running
 * statistics blended with the batch's mean and unbiased variance M2 / (count - 1). Each channel
 * is finished once, by whichever thread holds it.
 * Ranges (count >= 2): var = m2 / count is at most m2, so finite wherever M2 is; var + eps
 * overflows only for an eps near DBL_MAX. An infinite M2 (torch's var_sum overflows with it)
 * gives invstd = 0, scale 0 (y = shift: bn_centre) and a running_var of inf, as torch. invstd *
 * w overflows only for a w beyond DBL_MAX * sqrt(var + eps), as torch's alpha = invstd * w does.
 * The blends factor * new + (1 - factor) * old are convex: they overflow only within rounding
 * of DBL_MAX. NaN propagates. */
void bn_finish_train(const bn_train_finish *f, const bn_moments *mom, int64_t c0, int64_t c1);

/* Eval and the backward with stored statistics: invstd from a stored variance,
 * 1/sqrt(rv + eps) (an infinite rv gives 0). Eval's coefficients (bn_kernels.eval_coefs) are
 * scale = invstd * w and shift = b, and the mean is rm itself. */
static inline double bn_stored_invstd(double rv, double eps) {
    return 1.0 / sqrt(rv + eps);
}

/* Backward, one channel, from its sums: sum dy * 2^e_dy and sum dy * xhat * 2^e_xhat (exponents
 * other than 0 where they were formed scaled, having overflowed), its invstd and weight w, over
 * count values; train: batch statistics (else stored ones, constants of the input). Gives
 * dbias = sum dy, dweight = sum dy * xhat, and the coefficients of
 * dx = (dy - mean_dy - (x - mean) * k) * scale: scale = invstd * w, and with batch statistics
 * mean_dy = sum dy / count and k = (sum dy * xhat / count) * invstd (divided first: the mean of
 * dy * xhat is at most its sum), 0 with stored ones. Each overflows only where it is larger
 * than DBL_MAX. */
typedef struct {
    double dbias, dweight, mean_dy, k, scale;
} bn_grad_finish;

bn_grad_finish bn_finish_grad(double sum_dy, int e_dy, double sum_dy_xhat, int e_xhat,
                              double invstd, double w, double count, int train);

#endif
