/* forward.c - the training and eval forward passes: validate everything, then, channel group by
 * channel group (in parallel): statistics, running update, normalize. */
#include "kernels.h"
#include "threads.h"
#include "validate.h"

#include <math.h>

/* 1/sqrt(var + eps) of batch statistics, and 0 where var + eps is 0 (a constant channel with
 * eps = 0), as torch's training kernels do; stored statistics get the plain 1/sqrt (eval). */
static double inverse_std(double var, double eps) {
    double v = var + eps;
    return v == 0 ? 0.0 : 1.0 / sqrt(v);
}

typedef struct {
    bn_desc d; /* the effective descriptor (bn_kernel_desc) */
    void *y, *running_mean, *running_var;
    double *save_mean, *save_invstd;
    const void *x, *weight, *bias;
    double eps, factor; /* factor: weight of the batch in the running statistics */
} train_args;

/* Channels [c0, c0 + g): statistics, saved and running statistics, then the normalized output
 * while the group's data is still in cache. */
static void train_group(const void *args, int64_t c0, int g) {
    const train_args *a = args;
    const bn_dtype dt = a->d.dtype;
    const double f = a->factor;
    bn_moments mom[BN_MAX_LANES];
    double mean[BN_MAX_LANES], scale[BN_MAX_LANES], shift[BN_MAX_LANES];
    bn_kernel_moments(&a->d, mom, a->x, c0, g);
    for (int l = 0; l < g; l++) {
        const int64_t c = c0 + l;
        const double invstd = inverse_std(bn_moments_var(mom[l]), a->eps);
        mean[l] = mom[l].mean;
        scale[l] = invstd * bn_load(a->weight, dt, c, 1.0);
        shift[l] = bn_load(a->bias, dt, c, 0.0);
        if (a->save_mean) a->save_mean[c] = mean[l];
        if (a->save_invstd) a->save_invstd[c] = invstd;
        if (a->running_mean)
            bn_store(a->running_mean, dt, c, f * mean[l] + (1 - f) * bn_load(a->running_mean, dt, c, 0));
        if (a->running_var) {
            const double unbiased = mom[l].m2 / (double)(mom[l].count - 1);
            bn_store(a->running_var, dt, c, f * unbiased + (1 - f) * bn_load(a->running_var, dt, c, 0));
        }
    }
    bn_kernel_normalize(&a->d, a->y, a->x, c0, g, mean, scale, shift);
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
    const int64_t batches = tracking && num_batches_tracked ? *num_batches_tracked + 1 : 0;
    if (m == 0) { /* no values: no statistics, nothing to normalize or track */
        for (int64_t c = 0; c < desc->c; c++) {
            if (save_mean) save_mean[c] = NAN;
            if (save_invstd) save_invstd[c] = NAN;
        }
    } else {
        train_args a = {bn_kernel_desc(desc), y, running_mean, running_var, save_mean, save_invstd,
                        x, weight, bias, opt->eps,
                        opt->cumulative ? 1.0 / (double)batches : opt->momentum};
        bn_for_each_group(&a.d, train_group, &a);
    }
    if (tracking && num_batches_tracked) *num_batches_tracked = batches;
    return BN_OK;
}

typedef struct {
    bn_desc d;
    void *y;
    const void *x, *running_mean, *running_var, *weight, *bias;
    double eps;
} eval_args;

static void eval_group(const void *args, int64_t c0, int g) {
    const eval_args *a = args;
    const bn_dtype dt = a->d.dtype;
    double mean[BN_MAX_LANES], scale[BN_MAX_LANES], shift[BN_MAX_LANES];
    for (int l = 0; l < g; l++) {
        const int64_t c = c0 + l;
        mean[l] = bn_load(a->running_mean, dt, c, 0);
        scale[l] = 1.0 / sqrt(bn_load(a->running_var, dt, c, 0) + a->eps) *
                   bn_load(a->weight, dt, c, 1.0);
        shift[l] = bn_load(a->bias, dt, c, 0.0);
    }
    bn_kernel_normalize(&a->d, a->y, a->x, c0, g, mean, scale, shift);
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
    eval_args a = {bn_kernel_desc(desc), y, x, running_mean, running_var, weight, bias, eps};
    bn_for_each_group(&a.d, eval_group, &a);
    return BN_OK;
}
