/* backward.c - gradients of the training and eval forward passes, channel group by channel
 * group (in parallel): the sums of dy and dy * (x - mean) first, then dx. */
#include "kernels.h"
#include "threads.h"
#include "validate.h"

#include <math.h>

typedef struct {
    bn_desc d; /* the effective descriptor (bn_kernel_desc) */
    void *dx, *dweight, *dbias;
    const void *dy, *x, *weight;
    const double *save_mean, *save_invstd;  /* training: batch statistics */
    const void *running_mean, *running_var; /* eval: stored statistics */
    double eps;
} backward_args;

/* Channels [c0, c0 + g). With batch statistics, dx has the mean terms; with stored ones
 * (constants), dx = dy * invstd * weight. */
static void backward_group(const void *args, int64_t c0, int g) {
    const backward_args *a = args;
    const bn_dtype dt = a->d.dtype;
    const int batch = a->save_mean != NULL;
    const double m = (double)(a->d.n * a->d.s);
    double mean[BN_MAX_LANES] = {0}, invstd[BN_MAX_LANES] = {0};
    double sum_dy[BN_MAX_LANES], sum_dy_xc[BN_MAX_LANES];
    double mean_dy[BN_MAX_LANES], k[BN_MAX_LANES], scale[BN_MAX_LANES], zero[BN_MAX_LANES] = {0};
    for (int l = 0; l < g; l++) {
        const int64_t c = c0 + l;
        mean[l] = batch ? a->save_mean[c] : bn_load(a->running_mean, dt, c, 0);
        invstd[l] = batch ? a->save_invstd[c]
                          : 1.0 / sqrt(bn_load(a->running_var, dt, c, 0) + a->eps);
    }
    bn_kernel_grad_sums(&a->d, sum_dy, sum_dy_xc, a->dy, a->x, c0, g, mean);
    for (int l = 0; l < g; l++) {
        const int64_t c = c0 + l;
        if (a->dweight) bn_store(a->dweight, dt, c, sum_dy_xc[l] * invstd[l]);
        if (a->dbias) bn_store(a->dbias, dt, c, sum_dy[l]);
        scale[l] = invstd[l] * bn_load(a->weight, dt, c, 1.0);
        mean_dy[l] = sum_dy[l] / m;
        k[l] = sum_dy_xc[l] * invstd[l] * invstd[l] / m; /* mean(dy * xhat) * invstd */
    }
    if (!a->dx) return;
    if (batch)
        bn_kernel_grad_input(&a->d, a->dx, a->dy, a->x, c0, g, mean, mean_dy, k, scale);
    else
        bn_kernel_normalize(&a->d, a->dx, a->dy, c0, g, zero, scale, zero);
}

/* Both passes: with no values, dweight and dbias are 0 and there is no dx. */
static bn_status run_backward(backward_args *a, const bn_desc *desc) {
    if (bn_count(desc) == 0) {
        for (int64_t c = 0; c < desc->c; c++) {
            if (a->dweight) bn_store(a->dweight, desc->dtype, c, 0);
            if (a->dbias) bn_store(a->dbias, desc->dtype, c, 0);
        }
        return BN_OK;
    }
    a->d = bn_kernel_desc(desc);
    bn_for_each_group(&a->d, backward_group, a);
    return BN_OK;
}

bn_status bn_backward_train(void *dx, void *dweight, void *dbias, const void *dy, const void *x,
                            const double *save_mean, const double *save_invstd,
                            const void *weight, const bn_desc *desc) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF(bn_tensor_missing(dy, desc) || bn_tensor_missing(x, desc) || !save_mean ||
                     !save_invstd,
                 BN_ERR_NULL_POINTER);
    backward_args a = {{0}, dx, dweight, dbias, dy, x, weight, save_mean, save_invstd,
                       NULL, NULL, 0};
    return run_backward(&a, desc);
}

bn_status bn_backward_eval(void *dx, void *dweight, void *dbias, const void *dy, const void *x,
                           const void *running_mean, const void *running_var, const void *weight,
                           const bn_desc *desc, double eps) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF(bn_tensor_missing(dy, desc) || bn_tensor_missing(x, desc) || !running_mean ||
                     !running_var,
                 BN_ERR_NULL_POINTER);
    BN_RETURN_IF_ERROR(bn_check_eps(eps));
    backward_args a = {{0}, dx, dweight, dbias, dy, x, weight, NULL, NULL,
                       running_mean, running_var, eps};
    return run_backward(&a, desc);
}
