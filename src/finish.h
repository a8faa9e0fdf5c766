/* finish.h - the finish stage: from merged per-channel statistics (or sums) to what a call
 * returns per channel and to the coefficients of its element-wise pass. Plain loops over (C)
 * arrays of doubles, the per-channel parameters loaded into doubles first (bn_kernels.load):
 * the one place where the conventions of other frameworks will plug in. */
#ifndef BN_FINISH_H
#define BN_FINISH_H

#include "kernels.h"

#include <math.h>

/* Batch renormalization's state for the finish (bn_forward_train_renorm): the corrections
 *   stddev = sqrt(var + eps), s = max(renorm_stddev, sqrt(eps)),
 *   r = clip(stddev / s, rmin, rmax), d = clip((mean - renorm_mean) / s, -dmax, dmax),
 * make scale = invstd * r * w and shift = d * w + b; then renorm_mean and renorm_stddev follow
 * the batch's mean and stddev with their weights, moving_stddev follows stddev with the running
 * weights, and running_var takes max(moving_stddev^2 - eps, 0). */
typedef struct {
    const double *mean, *stddev; /* (C) renorm_mean, renorm_stddev before the call, as doubles */
    double rmin, rmax, dmax;
    double w_new, w_old;         /* renorm_momentum's weights of the batch and the old value */
    void *mean_out, *stddev_out, *moving_stddev; /* (C) stored, blended (or NULL: not kept) */
    double *r, *d;               /* (C) out: the corrections */
} bn_renorm_finish;

/* Forward training: what the finish of channels [c0, c1) reads and writes. Per-channel arrays
 * are (C), indexed by channel; stored ones are in the tensor's dtype (k's), NULL where absent. */
typedef struct {
    const bn_kernels *k;
    double count, eps;         /* values per channel in the batch */
    double w_new, w_old;       /* running = w_new * batch + w_old * running */
    double var_divisor;        /* running_var takes M2 / var_divisor */
    const double *w, *b;       /* (C) weight and bias loaded into doubles (bn_kernels.load) before
                                * the pass, once for every channel; NULL: 1 and 0 */
    const double *stored_mean, *stored_invstd; /* (C) or NULL: normalize with these (stored
                                * statistics, loaded before the pass) instead of the batch's */
    const bn_renorm_finish *renorm; /* or NULL */
    double *save_mean, *save_invstd; /* out, or NULL: the statistics normalized with */
    void *running_mean, *running_var; /* stored, blended, or NULL */
    double *tmp;               /* (C) doubles: a temporary */
    double *mean, *invstd, *scale, *shift; /* doubles out: the coefficients of the normalization */
} bn_train_finish;

/* Forward training, channels [c0, c1), from their merged moments mom over f->count values each:
 * invstd = 1/sqrt(m2/count + eps), or 0 where that sum is 0 (as torch's training kernels),
 * mean = the batch's, scale = invstd * w and shift = b (stored statistics: their mean and
 * invstd instead; renorm: corrected); save_mean and save_invstd the mean and invstd used; the
 * running statistics blended with the batch's mean and variance M2 / var_divisor. Each channel
 * is finished once, by whichever thread holds it.
 * Ranges (count >= 2): var = m2 / count is at most m2, so finite wherever M2 is; var + eps
 * overflows only for an eps near DBL_MAX. An infinite M2 (torch's var_sum overflows with it)
 * gives invstd = 0, scale 0 (y = shift: bn_centre) and a running_var of inf, as torch. invstd *
 * w overflows only for a w beyond DBL_MAX * sqrt(var + eps), as torch's alpha = invstd * w does.
 * The blends w_new * new + w_old * old are convex (but Caffe's sums, which grow to 1/(1 -
 * momentum) times the statistics): they overflow only within rounding of DBL_MAX. NaN
 * propagates. */
void bn_finish_train(const bn_train_finish *f, const bn_moments *mom, int64_t c0, int64_t c1);

/* The renorm corrections r, d of one channel from its batch mean and variance (the rule of
 * bn_renorm_finish), with rn's clipping and its renorm_mean, renorm_stddev at channel c. */
void bn_renorm_correction(const bn_renorm_finish *rn, int64_t c, double mean, double var,
                          double eps, double *r, double *d);

/* Eval and the backward with stored statistics: invstd from a stored variance,
 * 1/sqrt(rv + eps) (an infinite rv gives 0). Eval's coefficients (bn_kernels.eval_coefs) are
 * scale = invstd * w and shift = b, and the mean is rm itself. */
static inline double bn_stored_invstd(double rv, double eps) {
    return 1.0 / sqrt(rv + eps);
}

/* Where a float is what the invstd becomes (eval's scale for float32): 1/sqrt(v) from float's
 * correctly rounded square root and division (16 lanes a vector, and a faster divider than
 * double's 8), refined by one Newton step in double. Float's estimate is within 2^-22 of the
 * exact value, so the step leaves it within 2e-14 of it, and its rounding to float is that of
 * 1/sqrt(v) but where the exact value lies that close to a rounding boundary. Basic operations
 * only: the same bits on every instruction set. For v in [BN_REFINED_MIN, BN_REFINED_MAX],
 * where float holds v to its precision; outside (0, subnormal, inf, NaN, an eps beyond float's
 * range) bn_stored_invstd's value is the one to take. */
#define BN_REFINED_MIN 0x1p-100
#define BN_REFINED_MAX 0x1p100
static inline double bn_refined_invstd(double v) {
    const double r = (double)(1.0f / sqrtf((float)v));
    return r * (1.5 - 0.5 * v * r * r);
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
