/* finish.c - the finish stage (finish.h). */
#include "finish.h"

#include <math.h>

void bn_finish_train(const bn_moments *mom, double count, double eps, const double *w,
                     const double *b, int64_t c0, int64_t c1, double *invstd, double *scale,
                     double *shift) {
    for (int64_t c = c0; c < c1; c++) {
        const double v = mom[c].m2 / count + eps, inv = v == 0 ? 0.0 : 1.0 / sqrt(v);
        invstd[c] = inv;
        scale[c] = w ? inv * w[c] : inv;
        shift[c] = b ? b[c] : 0.0;
    }
}

void bn_finish_train_outputs(const bn_kernels *k, const bn_moments *mom, const double *invstd,
                             int64_t C, double count, double factor, double *save_mean,
                             double *save_invstd, void *rm, void *rv, double *tmp) {
    if (save_mean)
        for (int64_t c = 0; c < C; c++) save_mean[c] = mom[c].mean;
    if (save_invstd)
        for (int64_t c = 0; c < C; c++) save_invstd[c] = invstd[c];
    if (rm) {
        for (int64_t c = 0; c < C; c++) tmp[c] = mom[c].mean;
        k->blend(rm, tmp, factor, C);
    }
    if (rv) {
        for (int64_t c = 0; c < C; c++) tmp[c] = mom[c].m2 / (count - 1);
        k->blend(rv, tmp, factor, C);
    }
}

void bn_finish_eval(const double *rv, const double *w, const double *b, double eps, int64_t C,
                    double *scale, double *shift) {
    for (int64_t c = 0; c < C; c++) scale[c] = 1.0 / sqrt(rv[c] + eps);
    if (w)
        for (int64_t c = 0; c < C; c++) scale[c] *= w[c];
    for (int64_t c = 0; c < C; c++) shift[c] = b ? b[c] : 0.0;
}

bn_grad_finish bn_finish_grad(double sum_dy, int e_dy, double sum_dy_xhat, int e_xhat,
                              double invstd, double w, double count, int train) {
    bn_grad_finish g = {.dbias = ldexp(sum_dy, e_dy), .dweight = ldexp(sum_dy_xhat, e_xhat),
                        .scale = invstd * w};
    g.mean_dy = train ? ldexp(sum_dy / count, e_dy) : 0.0;
    g.k = train ? ldexp(sum_dy_xhat / count, e_xhat) * invstd : 0.0;
    return g;
}
