/* forward.c - the training and eval forward passes: validate, statistics, running update,
 * normalize, channel by channel. */
#include "kernels.h"
#include "validate.h"

#include <math.h>

/* 1/sqrt(var + eps) of batch statistics, and 0 where var + eps is 0 (a constant channel with
 * eps = 0), as torch's training kernels do; stored statistics get the plain 1/sqrt (eval). */
static double inverse_std(double var, double eps) {
    double v = var + eps;
    return v == 0 ? 0.0 : 1.0 / sqrt(v);
}

bn_status bn_forward_train(void *y, double *save_mean, double *save_invstd, void *running_mean,
                           void *running_var, int64_t *num_batches_tracked, const void *x,
                           const void *weight, const void *bias, const bn_desc *desc,
                           const bn_options *opt) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF_ERROR(bn_check_options(opt));
    BN_RETURN_IF(bn_tensor_missing(x, desc) || bn_tensor_missing(y, desc), BN_ERR_NULL_POINTER);
    const int64_t m = bn_count(desc);
    BN_RETURN_IF(m == 1, BN_ERR_COUNT);
    const int tracking = running_mean || running_var;
    BN_RETURN_IF(tracking && opt->cumulative && !num_batches_tracked, BN_ERR_NULL_POINTER);
    BN_RETURN_IF(tracking && num_batches_tracked && *num_batches_tracked == INT64_MAX,
                 BN_ERR_TOO_LARGE);

    /* Weight of this batch in the running statistics; the counter counts empty batches too. */
    int64_t batches = tracking && num_batches_tracked ? *num_batches_tracked + 1 : 0;
    double factor = opt->cumulative ? 1.0 / (double)batches : opt->momentum;

    const bn_dtype dt = desc->dtype;
    for (int64_t c = 0; c < desc->c; c++) {
        if (m == 0) { /* no values: no statistics, nothing to normalize or track */
            if (save_mean) save_mean[c] = NAN;
            if (save_invstd) save_invstd[c] = NAN;
            continue;
        }
        bn_moments mom = bn_channel_moments(desc, x, c);
        double var = bn_moments_var(mom);
        double invstd = inverse_std(var, opt->eps);
        double scale = invstd * bn_load(weight, dt, c, 1.0);
        bn_channel_normalize(desc, y, x, c, mom.mean, scale, bn_load(bias, dt, c, 0.0));
        if (save_mean) save_mean[c] = mom.mean;
        if (save_invstd) save_invstd[c] = invstd;
        if (running_mean)
            bn_store(running_mean, dt, c,
                     factor * mom.mean + (1 - factor) * bn_load(running_mean, dt, c, 0));
        if (running_var) {
            double unbiased = mom.m2 / (double)(m - 1);
            bn_store(running_var, dt, c,
                     factor * unbiased + (1 - factor) * bn_load(running_var, dt, c, 0));
        }
    }
    if (tracking && num_batches_tracked) *num_batches_tracked = batches;
    return BN_OK;
}

bn_status bn_forward_eval(void *y, const void *x, const void *running_mean,
                          const void *running_var, const void *weight, const void *bias,
                          const bn_desc *desc, double eps) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF(bn_tensor_missing(x, desc) || bn_tensor_missing(y, desc) || !running_mean ||
                     !running_var,
                 BN_ERR_NULL_POINTER);
    BN_RETURN_IF_ERROR(bn_check_eps(eps));
    if (bn_count(desc) == 0) return BN_OK;

    const bn_dtype dt = desc->dtype;
    for (int64_t c = 0; c < desc->c; c++) {
        double mean = bn_load(running_mean, dt, c, 0);
        double invstd = 1.0 / sqrt(bn_load(running_var, dt, c, 0) + eps);
        double scale = invstd * bn_load(weight, dt, c, 1.0);
        bn_channel_normalize(desc, y, x, c, mean, scale, bn_load(bias, dt, c, 0.0));
    }
    return BN_OK;
}
