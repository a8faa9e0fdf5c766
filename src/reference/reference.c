/* reference.c - the plain scalar passes of reference.h: the formulas of bnorm.h, one loop nest
 * per pass over (n, c, s), in long double. Written to be read, not to be fast. */
#include "reference.h"

#include <math.h>

typedef long double real;

int64_t bn_ref_index(const bn_desc *d, int64_t i, int64_t c, int64_t j) {
    if (d->layout == BN_CHANNELS_LAST) return (i * d->s + j) * d->c + c; /* (N, S, C) */
    return (i * d->c + c) * d->s + j;                                    /* (N, C, S) */
}

/* Channel c's mean and M2 = sum (x - mean)^2, two passes over its m values (m > 0). */
static void channel_moments(const bn_desc *d, const double *x, int64_t c, real *mean, real *m2) {
    const real m = (real)(d->n * d->s);
    real sum = 0;
    for (int64_t i = 0; i < d->n; i++)
        for (int64_t j = 0; j < d->s; j++) sum += x[bn_ref_index(d, i, c, j)];
    *mean = sum / m;
    real sq = 0;
    for (int64_t i = 0; i < d->n; i++)
        for (int64_t j = 0; j < d->s; j++) {
            const real dev = x[bn_ref_index(d, i, c, j)] - *mean;
            sq += dev * dev;
        }
    *m2 = sq;
}

void bn_ref_moments(bn_moments *moments, const double *x, const bn_desc *d) {
    const int64_t m = d->n * d->s;
    for (int64_t c = 0; c < d->c; c++) {
        bn_moments out = {0, 0.0, 0.0};
        if (m > 0) {
            real mean, m2;
            channel_moments(d, x, c, &mean, &m2);
            out.count = m;
            out.mean = (double)mean;
            out.m2 = (double)m2;
        }
        moments[c] = out;
    }
}

/* y of channel c: (x - mean) * invstd * weight + bias. */
static void normalize_channel(double *y, const double *x, const bn_desc *d, int64_t c, real mean,
                              real invstd, real weight, real bias) {
    for (int64_t i = 0; i < d->n; i++)
        for (int64_t j = 0; j < d->s; j++) {
            const int64_t at = bn_ref_index(d, i, c, j);
            y[at] = (double)((x[at] - mean) * invstd * weight + bias);
        }
}

void bn_ref_forward_train(double *y, double *save_mean, double *save_invstd,
                          double *running_mean, double *running_var,
                          int64_t *num_batches_tracked, const double *x, const double *weight,
                          const double *bias, const bn_desc *d, const bn_options *opt) {
    const int64_t m = d->n * d->s;
    const int tracking = running_mean || running_var;
    if (tracking) *num_batches_tracked += 1;
    /* the weight of the batch in the running update */
    const real f = opt->cumulative && tracking ? 1.0L / (real)*num_batches_tracked
                                               : (real)opt->momentum;
    for (int64_t c = 0; c < d->c; c++) {
        if (m == 0) { /* no values: no statistics, nothing to update */
            if (save_mean) save_mean[c] = NAN;
            if (save_invstd) save_invstd[c] = NAN;
            continue;
        }
        real mean, m2;
        channel_moments(d, x, c, &mean, &m2);
        const real var = m2 / (real)m, unbiased = m2 / (real)(m - 1);
        const real invstd = 1.0L / sqrtl(var + (real)opt->eps);
        if (save_mean) save_mean[c] = (double)mean;
        if (save_invstd) save_invstd[c] = (double)invstd;
        if (running_mean) running_mean[c] = (double)((1 - f) * running_mean[c] + f * mean);
        if (running_var) running_var[c] = (double)((1 - f) * running_var[c] + f * unbiased);
        normalize_channel(y, x, d, c, mean, invstd, weight ? weight[c] : 1.0L,
                          bias ? bias[c] : 0.0L);
    }
}

void bn_ref_forward_eval(double *y, const double *x, const double *running_mean,
                         const double *running_var, const double *weight, const double *bias,
                         const bn_desc *d, double eps) {
    for (int64_t c = 0; c < d->c; c++) {
        const real invstd = 1.0L / sqrtl((real)running_var[c] + (real)eps);
        normalize_channel(y, x, d, c, running_mean[c], invstd, weight ? weight[c] : 1.0L,
                          bias ? bias[c] : 0.0L);
    }
}

/* dx, dweight, dbias of channel c with the statistics mean, invstd; batch: they are the batch's,
 * so the terms of dx through the mean and the variance apply. */
static void backward_channel(double *dx, double *dweight, double *dbias, const double *dy,
                             const double *x, const bn_desc *d, int64_t c, real mean,
                             real invstd, real weight, int batch) {
    const real m = (real)(d->n * d->s);
    real sum_dy = 0, sum_dy_xhat = 0;
    for (int64_t i = 0; i < d->n; i++)
        for (int64_t j = 0; j < d->s; j++) {
            const int64_t at = bn_ref_index(d, i, c, j);
            sum_dy += dy[at];
            sum_dy_xhat += dy[at] * (x[at] - mean) * invstd;
        }
    if (dweight) dweight[c] = (double)sum_dy_xhat;
    if (dbias) dbias[c] = (double)sum_dy;
    if (!dx) return;
    for (int64_t i = 0; i < d->n; i++)
        for (int64_t j = 0; j < d->s; j++) {
            const int64_t at = bn_ref_index(d, i, c, j);
            const real xhat = (x[at] - mean) * invstd;
            real g = dy[at];
            if (batch) g = g - sum_dy / m - xhat * sum_dy_xhat / m;
            dx[at] = (double)(g * invstd * weight);
        }
}

void bn_ref_backward_train(double *dx, double *dweight, double *dbias, const double *dy,
                           const double *x, const double *save_mean, const double *save_invstd,
                           const double *weight, const bn_desc *d) {
    for (int64_t c = 0; c < d->c; c++)
        backward_channel(dx, dweight, dbias, dy, x, d, c, save_mean[c], save_invstd[c],
                         weight ? weight[c] : 1.0L, 1);
}

void bn_ref_backward_eval(double *dx, double *dweight, double *dbias, const double *dy,
                          const double *x, const double *running_mean,
                          const double *running_var, const double *weight, const bn_desc *d,
                          double eps) {
    for (int64_t c = 0; c < d->c; c++) {
        const real invstd = 1.0L / sqrtl((real)running_var[c] + (real)eps);
        backward_channel(dx, dweight, dbias, dy, x, d, c, running_mean[c], invstd,
                         weight ? weight[c] : 1.0L, 0);
    }
}

/* max(v, 0), NaN kept */
static double relu(double v) { return v > 0 || isnan(v) ? v : 0.0; }

void bn_ref_relu(double *y, int64_t count) {
    for (int64_t k = 0; k < count; k++) y[k] = relu(y[k]);
}

void bn_ref_add_relu(double *y, const double *z, int64_t count) {
    for (int64_t k = 0; k < count; k++) y[k] = relu(y[k] + z[k]);
}

void bn_ref_relu_backward(double *dy_bn, double *dz, const double *dy, const double *y,
                          int64_t count) {
    for (int64_t k = 0; k < count; k++) {
        const double g = y[k] > 0 ? dy[k] : 0.0;
        dy_bn[k] = g;
        if (dz) dz[k] = g;
    }
}
