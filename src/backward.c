/* backward.c - gradients of the training and eval forward passes, channel by channel: the sums
 * of dy and dy * (x - mean) first, then dx. */
#include "kernels.h"
#include "validate.h"

#include <math.h>

static bn_status check_common(const void *dx, const void *dy, const void *x, const bn_desc *desc) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF(bn_tensor_missing(dy, desc) || bn_tensor_missing(x, desc), BN_ERR_NULL_POINTER);
    (void)dx; /* optional */
    return BN_OK;
}

/* dweight[c], dbias[c] for the statistics (mean, invstd) of channel c. */
static void store_param_grads(void *dweight, void *dbias, bn_dtype dt, int64_t c,
                              double sum_dy, double sum_dy_xc, double invstd) {
    if (dweight) bn_store(dweight, dt, c, sum_dy_xc * invstd);
    if (dbias) bn_store(dbias, dt, c, sum_dy);
}

bn_status bn_backward_train(void *dx, void *dweight, void *dbias, const void *dy, const void *x,
                            const double *save_mean, const double *save_invstd,
                            const void *weight, const bn_desc *desc) {
    BN_RETURN_IF_ERROR(check_common(dx, dy, x, desc));
    BN_RETURN_IF(!save_mean || !save_invstd, BN_ERR_NULL_POINTER);
    const int64_t m = bn_count(desc);
    const bn_dtype dt = desc->dtype;
    for (int64_t c = 0; c < desc->c; c++) {
        if (m == 0) {
            store_param_grads(dweight, dbias, dt, c, 0, 0, 0);
            continue;
        }
        double mean = save_mean[c], invstd = save_invstd[c], sum_dy, sum_dy_xc;
        bn_channel_grad_sums(desc, &sum_dy, &sum_dy_xc, dy, x, c, mean);
        store_param_grads(dweight, dbias, dt, c, sum_dy, sum_dy_xc, invstd);
        if (dx) {
            double mean_dy = sum_dy / (double)m;
            double k = sum_dy_xc * invstd * invstd / (double)m; /* mean(dy * xhat) * invstd */
            double scale = invstd * bn_load(weight, dt, c, 1.0);
            bn_channel_grad_input(desc, dx, dy, x, c, mean, mean_dy, k, scale);
        }
    }
    return BN_OK;
}

bn_status bn_backward_eval(void *dx, void *dweight, void *dbias, const void *dy, const void *x,
                           const void *running_mean, const void *running_var, const void *weight,
                           const bn_desc *desc, double eps) {
    BN_RETURN_IF_ERROR(check_common(dx, dy, x, desc));
    BN_RETURN_IF(!running_mean || !running_var, BN_ERR_NULL_POINTER);
    BN_RETURN_IF_ERROR(bn_check_eps(eps));
    const int64_t m = bn_count(desc);
    const bn_dtype dt = desc->dtype;
    for (int64_t c = 0; c < desc->c; c++) {
        if (m == 0) {
            store_param_grads(dweight, dbias, dt, c, 0, 0, 0);
            continue;
        }
        double mean = bn_load(running_mean, dt, c, 0);
        double invstd = 1.0 / sqrt(bn_load(running_var, dt, c, 0) + eps); /* as the forward */
        double sum_dy, sum_dy_xc;
        bn_channel_grad_sums(desc, &sum_dy, &sum_dy_xc, dy, x, c, mean);
        store_param_grads(dweight, dbias, dt, c, sum_dy, sum_dy_xc, invstd);
        if (dx) /* stored statistics are constants: dx = dy * invstd * weight */
            bn_channel_normalize(desc, dx, dy, c, 0.0, invstd * bn_load(weight, dt, c, 1.0), 0.0);
    }
    return BN_OK;
}
