/* test_accuracy.c - the accuracy promise: float32 results within 1e-6 * max(1, |y|) of a higher
 * precision computation on the same float32 input, at large offsets and at any scale. */
#include "check.h"
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

typedef struct { double offset, std, eps; } regime;

static const regime regimes[] = {
    {1e6, 1e-2, 1e-5},    {1e6, 1e-2, 0},     {-3e5, 1e-1, 1e-5}, {0, 1e-30, 1e-5},
    {0, 1e-30, 0},        {5e-30, 1e-30, 0},  {1e-20, 1e-22, 0},  {0, 1, 1e-5},
    {1e5, 1e3, 1e-5},     {0, 1e10, 1e-5},    {3e15, 1e15, 1e-5}, {1e15, 1e13, 0},
};

/* Forward, train and eval, and the training backward of one regime against the reference. */
static void check_regime(const regime *g, bn_layout lay, uint64_t seed) {
    bn_desc d = tu_desc(6, 3, 700, BN_FLOAT32, lay);
    int64_t count = tu_numel(&d);
    tu_rng r = tu_rng_new(seed);
    double *v = tu_randn(&r, count, g->offset, g->std), *dyv = tu_randn(&r, count, 0, 1);
    float *x = tu_to_dtype(v, count, BN_FLOAT32), *y = tu_to_dtype(v, count, BN_FLOAT32);
    float *dy = tu_to_dtype(dyv, count, BN_FLOAT32), *dx = tu_to_dtype(v, count, BN_FLOAT32);
    double *xr = tu_to_double(x, count, BN_FLOAT32), *dyr = tu_to_double(dy, count, BN_FLOAT32);
    double *yref = malloc(sizeof(double) * (size_t)count), sm[3], si[3], ref_sm[3], ref_si[3];
    double *dxref = malloc(sizeof(double) * (size_t)count);
    bn_options opt = tu_options(g->eps, 0.1, 0);

    CHECK_STATUS(bn_forward_train(y, sm, si, NULL, NULL, NULL, x, NULL, NULL, &d, &opt), BN_OK);
    bn_ref_forward_train(yref, ref_sm, ref_si, NULL, NULL, NULL, xr, NULL, NULL, &d, &opt);
    double *yd = tu_to_double(y, count, BN_FLOAT32);
    double diff = tu_max_rel_diff(yd, yref, count);
    CHECK_MSG(diff <= 1e-6, "train offset %g std %g eps %g layout %d: error %g", g->offset, g->std,
              g->eps, lay, diff);

    /* the training backward at the same regime: dx relative to its own scale */
    CHECK_STATUS(bn_backward_train(dx, NULL, NULL, dy, x, sm, si, NULL, &d), BN_OK);
    bn_ref_backward_train(dxref, NULL, NULL, dyr, xr, ref_sm, ref_si, NULL, &d);
    double worst = 0, biggest = 0;
    for (int64_t k = 0; k < count; k++) {
        worst = tu_worst(worst, fabs(dx[k] - dxref[k]));
        biggest = tu_worst(biggest, fabs(dxref[k]));
    }
    CHECK_MSG(worst <= 1e-6 * fmax(1, biggest), "backward offset %g std %g: error %g of %g",
              g->offset, g->std, worst, biggest);

    /* eval with statistics at the same offset */
    float rm[3], rv[3];
    double mean[3], var[3];
    bn_moments mo[3];
    bn_ref_moments(mo, xr, &d);
    for (int c = 0; c < 3; c++) {
        rm[c] = (float)mo[c].mean, rv[c] = (float)(mo[c].m2 / (double)mo[c].count);
        mean[c] = rm[c], var[c] = rv[c];
    }
    CHECK_STATUS(bn_forward_eval(y, x, rm, rv, NULL, NULL, &d, g->eps), BN_OK);
    bn_ref_forward_eval(yref, xr, mean, var, NULL, NULL, &d, g->eps);
    free(yd);
    yd = tu_to_double(y, count, BN_FLOAT32);
    diff = tu_max_rel_diff(yd, yref, count);
    CHECK_MSG(diff <= 1e-6, "eval offset %g std %g layout %d: error %g", g->offset, g->std, lay, diff);
    free(v), free(dyv), free(x), free(y), free(dy), free(dx), free(xr), free(dyr), free(yref), free(yd);
    free(dxref);
}

BN_SUITE(suite_accuracy) {
    uint64_t seed = 900;
    for (size_t k = 0; k < sizeof regimes / sizeof regimes[0]; k++)
        for (int lay = 0; lay < 2; lay++) check_regime(&regimes[k], (bn_layout)lay, seed++);
}

/* The test has teeth: the folded form x * a + b in float32, which PyTorch's CPU kernel uses,
 * misses the promise by orders of magnitude at offset 1e6, std 1e-2. */
BN_SUITE(suite_accuracy_folded_form_fails) {
    bn_desc d = tu_desc(64, 1, 64, BN_FLOAT32, BN_CHANNELS_FIRST);
    int64_t count = tu_numel(&d);
    tu_rng r = tu_rng_new(4);
    double *v = tu_randn(&r, count, 1e6, 1e-2);
    float *x = tu_to_dtype(v, count, BN_FLOAT32);
    double *xr = tu_to_double(x, count, BN_FLOAT32), *yref = malloc(sizeof(double) * (size_t)count);
    bn_options opt = tu_options(1e-5, 0.1, 0);
    bn_ref_forward_train(yref, NULL, NULL, NULL, NULL, NULL, xr, NULL, NULL, &d, &opt);
    bn_moments mo;
    bn_ref_moments(&mo, xr, &d);
    long double mu = mo.mean, var = (long double)mo.m2 / mo.count;
    float a = (float)(1.0L / sqrtl(var + 1e-5L)), b = (float)(-mu * a);
    double worst = 0;
    for (int64_t k = 0; k < count; k++) worst = tu_worst(worst, fabsf(x[k] * a + b - (float)yref[k]));
    CHECK_MSG(worst > 1e-3, "folded form error %g", worst);
    free(v), free(x), free(xr), free(yref);
}

/* Float32 eval's scale is 1/sqrt(rv + eps) rounded once to float: with x = 1, mean 0, weight 1
 * and bias 0, y is the scale itself, for variances across float's whole range (subnormals
 * too), eps 0, 1e-5 and beyond float's range, and the special values (0 + 0: inf, inf: 0, NaN,
 * a negative variance: NaN). The kernel takes float's square root and division and a Newton
 * step in double where the sum is in range, double's otherwise; either must give this float. */
BN_SUITE(suite_accuracy_eval_scale) {
    enum { C = 4096 };
    const double epses[] = {0, 1e-5, 1e-300, 1e60};
    bn_desc d = tu_desc(2, C, 1, BN_FLOAT32, BN_CHANNELS_FIRST);
    float *x = malloc(sizeof(float) * 2 * C), *y = malloc(sizeof(float) * 2 * C);
    float *rm = calloc(C, sizeof(float)), *rv = malloc(sizeof(float) * C);
    tu_rng r = tu_rng_new(77);
    for (int64_t k = 0; k < 2 * C; k++) x[k] = 1;
    for (size_t e = 0; e < sizeof epses / sizeof epses[0]; e++) {
        for (int64_t c = 0; c < C; c++) /* log-uniform over [2^-149, 2^128) */
            rv[c] = (float)ldexp(1 + tu_uniform(&r), (int)(tu_uniform(&r) * 277) - 150);
        rv[0] = 0, rv[1] = INFINITY, rv[2] = NAN, rv[3] = -1, rv[4] = FLT_MAX, rv[5] = 0x1p-149f;
        rv[6] = 0x1p-100f, rv[7] = 0x1.fffffep99f, rv[8] = 0x1p100f, rv[9] = 1;
        CHECK_STATUS(bn_forward_eval(y, x, rm, rv, NULL, NULL, &d, epses[e]), BN_OK);
        int64_t wrong = 0, first = -1;
        for (int64_t c = 0; c < C; c++) {
            const float want = (float)(1.0 / sqrt((double)rv[c] + epses[e]));
            const int same = (isnan(want) && isnan(y[c])) || want == y[c];
            const int same2 = (isnan(want) && isnan(y[C + c])) || want == y[C + c];
            if (!same || !same2) wrong++, first = first < 0 ? c : first;
        }
        CHECK_MSG(wrong == 0, "eps %g: %lld scales not 1/sqrt(rv + eps) rounded, first channel "
                  "%lld (rv %a: %a, want %a)", epses[e], (long long)wrong, (long long)first,
                  first < 0 ? 0.0 : (double)rv[first], first < 0 ? 0.0 : (double)y[first],
                  first < 0 ? 0.0 : 1.0 / sqrt((double)rv[first] + epses[e]));
    }
    free(x), free(y), free(rm), free(rv);
}
