/* test_fold.c - bn_fold_conv and bn_fold_conv_transpose: the folded layer gives what the layer
 * followed by the eval-mode batch norm gives (a linear layer, a grouped convolution, a grouped
 * transposed convolution, computed here directly), with and without the optional arrays, in
 * place, in float32 and float64; each error, with nothing written. torch's
 * fuse_conv_bn_weights is compared in tests/python/test_fold.py. */
#include "check.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { C_IN = 6, C_OUT = 4, GROUPS = 2, K = 3, L = 7 };

typedef struct {
    double rm[C_OUT], rv[C_OUT], bw[C_OUT], bb[C_OUT], b[C_OUT];
} bn_state;

static bn_state random_state(tu_rng *r) {
    bn_state s;
    for (int o = 0; o < C_OUT; o++) {
        s.rm[o] = 3 * tu_normal(r);
        s.rv[o] = 0.1 + 4 * tu_uniform(r);
        s.bw[o] = 0.5 + tu_uniform(r);
        s.bb[o] = tu_normal(r);
        s.b[o] = tu_normal(r);
    }
    return s;
}

/* The batch norm of z[o] (eval mode), with NULL bw/bb as 1 and 0. */
static double bn_eval(double z, const bn_state *s, int o, int affine, double eps) {
    double y = (z - s->rm[o]) / sqrt(s->rv[o] + eps);
    return affine ? y * s->bw[o] + s->bb[o] : y;
}

/* A 1-d grouped convolution, no padding: x (C_IN, L), w (C_OUT, C_IN / GROUPS, K); z at
 * output channel o, position p. */
static double conv(const double *x, const double *w, const double *b, int o, int p) {
    const int in_pg = C_IN / GROUPS, out_pg = C_OUT / GROUPS, g = o / out_pg;
    double z = b ? b[o] : 0;
    for (int i = 0; i < in_pg; i++)
        for (int k = 0; k < K; k++) z += w[(o * in_pg + i) * K + k] * x[(g * in_pg + i) * L + p + k];
    return z;
}

/* A 1-d grouped transposed convolution, stride 1: w (C_IN, C_OUT / GROUPS, K); z at output
 * channel o, position p of L + K - 1. */
static double conv_transpose(const double *x, const double *w, const double *b, int o, int p) {
    const int in_pg = C_IN / GROUPS, out_pg = C_OUT / GROUPS, g = o / out_pg, j = o % out_pg;
    double z = b ? b[o] : 0;
    for (int i = g * in_pg; i < (g + 1) * in_pg; i++)
        for (int k = 0; k < K; k++)
            if (p - k >= 0 && p - k < L) z += w[(i * out_pg + j) * K + k] * x[i * L + p - k];
    return z;
}

BN_SUITE(suite_fold_conv_equals_conv_then_bn) {
    const double eps = 1e-5;
    tu_rng r = tu_rng_new(41);
    for (int transposed = 0; transposed < 2; transposed++)
        for (int with_bias = 0; with_bias < 2; with_bias++)
            for (int affine = 0; affine < 2; affine++) {
                bn_state s = random_state(&r);
                const int64_t nw = C_IN * (C_OUT / GROUPS) * K; /* both weights' size */
                double *w = tu_randn(&r, nw, 0, 1), *x = tu_randn(&r, C_IN * L, 1, 2);
                double w2[C_IN * (C_OUT / GROUPS) * K], b2[C_OUT];
                const double *b = with_bias ? s.b : NULL;
                const double *bw = affine ? s.bw : NULL, *bb = affine ? s.bb : NULL;
                if (transposed)
                    CHECK_STATUS(bn_fold_conv_transpose(w2, b2, w, b, s.rm, s.rv, bw, bb, C_IN,
                                                        C_OUT, GROUPS, K, eps, BN_FLOAT64),
                                 BN_OK);
                else
                    CHECK_STATUS(bn_fold_conv(w2, b2, w, b, s.rm, s.rv, bw, bb, C_OUT,
                                              C_IN / GROUPS * K, eps, BN_FLOAT64),
                                 BN_OK);
                double worst = 0;
                const int positions = transposed ? L + K - 1 : L - K + 1;
                for (int o = 0; o < C_OUT; o++)
                    for (int p = 0; p < positions; p++) {
                        double want = transposed ? conv_transpose(x, w, b, o, p) : conv(x, w, b, o, p);
                        double got = transposed ? conv_transpose(x, w2, b2, o, p) : conv(x, w2, b2, o, p);
                        want = bn_eval(want, &s, o, affine, eps);
                        worst = tu_worst(worst, fabs(got - want) / fmax(1, fabs(want)));
                    }
                CHECK_MSG(worst <= 1e-13, "transposed %d bias %d affine %d: error %g", transposed,
                          with_bias, affine, worst);
                free(w);
                free(x);
            }
}

BN_SUITE(suite_fold_rounds_once_and_works_in_place) {
    /* float32: each value is the double formula rounded once; the outputs may be the inputs */
    const double eps = 1e-3;
    tu_rng r = tu_rng_new(42);
    bn_state s = random_state(&r);
    float w[C_OUT * 5], w_copy[C_OUT * 5], b[C_OUT], rm[C_OUT], rv[C_OUT], bw[C_OUT], bb[C_OUT];
    for (int o = 0; o < C_OUT; o++) {
        b[o] = (float)s.b[o], rm[o] = (float)s.rm[o], rv[o] = (float)s.rv[o];
        bw[o] = (float)s.bw[o], bb[o] = (float)s.bb[o];
    }
    for (int k = 0; k < C_OUT * 5; k++) w[k] = w_copy[k] = (float)tu_normal(&r);
    float b_copy[C_OUT];
    memcpy(b_copy, b, sizeof b);
    CHECK_STATUS(bn_fold_conv(w, b, w, b, rm, rv, bw, bb, C_OUT, 5, eps, BN_FLOAT32), BN_OK);
    int exact = 1;
    for (int o = 0; o < C_OUT; o++) {
        double scale = (double)bw[o] / sqrt((double)rv[o] + eps);
        exact &= b[o] == (float)(((double)b_copy[o] - rm[o]) * scale + bb[o]);
        for (int k = 0; k < 5; k++) exact &= w[o * 5 + k] == (float)(w_copy[o * 5 + k] * scale);
    }
    CHECK(exact);
}

BN_SUITE(suite_fold_errors_write_nothing) {
    double w[C_OUT * 3], w2[C_OUT * 3], b2[C_OUT], rm[C_OUT] = {0}, rv[C_OUT] = {1, 1, 1, 1};
    for (int k = 0; k < C_OUT * 3; k++) w[k] = k, w2[k] = -7;
    for (int o = 0; o < C_OUT; o++) b2[o] = -7;
    struct {
        bn_status got, want;
    } cases[] = {
        {bn_fold_conv(NULL, b2, w, NULL, rm, rv, NULL, NULL, C_OUT, 3, 1e-5, BN_FLOAT64), BN_ERR_NULL_POINTER},
        {bn_fold_conv(w2, NULL, w, NULL, rm, rv, NULL, NULL, C_OUT, 3, 1e-5, BN_FLOAT64), BN_ERR_NULL_POINTER},
        {bn_fold_conv(w2, b2, NULL, NULL, rm, rv, NULL, NULL, C_OUT, 3, 1e-5, BN_FLOAT64), BN_ERR_NULL_POINTER},
        {bn_fold_conv(w2, b2, w, NULL, NULL, rv, NULL, NULL, C_OUT, 3, 1e-5, BN_FLOAT64), BN_ERR_NULL_POINTER},
        {bn_fold_conv(w2, b2, w, NULL, rm, NULL, NULL, NULL, C_OUT, 3, 1e-5, BN_FLOAT64), BN_ERR_NULL_POINTER},
        {bn_fold_conv(w2, b2, w, NULL, rm, rv, NULL, NULL, 0, 3, 1e-5, BN_FLOAT64), BN_ERR_SHAPE},
        {bn_fold_conv(w2, b2, w, NULL, rm, rv, NULL, NULL, C_OUT, 0, 1e-5, BN_FLOAT64), BN_ERR_SHAPE},
        {bn_fold_conv(w2, b2, w, NULL, rm, rv, NULL, NULL, INT64_MAX / 2, 3, 1e-5, BN_FLOAT64), BN_ERR_TOO_LARGE},
        {bn_fold_conv(w2, b2, w, NULL, rm, rv, NULL, NULL, C_OUT, 3, -1e-5, BN_FLOAT64), BN_ERR_ARGUMENT},
        {bn_fold_conv(w2, b2, w, NULL, rm, rv, NULL, NULL, C_OUT, 3, NAN, BN_FLOAT64), BN_ERR_ARGUMENT},
        {bn_fold_conv(w2, b2, w, NULL, rm, rv, NULL, NULL, C_OUT, 3, 1e-5, (bn_dtype)7), BN_ERR_UNSUPPORTED},
        {bn_fold_conv(w2, b2, w, NULL, rm, rv, NULL, NULL, C_OUT, 3, 1e-5, BN_BFLOAT16), BN_ERR_UNSUPPORTED},
        {bn_fold_conv_transpose(w2, b2, w, NULL, rm, rv, NULL, NULL, 2, C_OUT, 2, 1, 1e-5, BN_FLOAT16), BN_ERR_UNSUPPORTED},
        {bn_fold_conv_transpose(w2, b2, w, NULL, rm, rv, NULL, NULL, 3, C_OUT, 2, 1, 1e-5, BN_FLOAT64), BN_ERR_SHAPE},
        {bn_fold_conv_transpose(w2, b2, w, NULL, rm, rv, NULL, NULL, 2, C_OUT, 0, 1, 1e-5, BN_FLOAT64), BN_ERR_SHAPE},
        {bn_fold_conv_transpose(w2, b2, w, NULL, rm, rv, NULL, NULL, 2, C_OUT, 2, 0, 1e-5, BN_FLOAT64), BN_ERR_SHAPE},
        {bn_fold_conv_transpose(w2, b2, w, NULL, rm, rv, NULL, NULL, 2, C_OUT, 2, INT64_MAX / 2, 1e-5, BN_FLOAT64), BN_ERR_TOO_LARGE},
        {bn_fold_conv_transpose(w2, b2, w, NULL, rm, rv, NULL, NULL, 2, C_OUT, 2, 1, INFINITY, BN_FLOAT64), BN_ERR_ARGUMENT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK_MSG(cases[i].got == cases[i].want, "case %zu: status %d, want %d", i,
                  (int)cases[i].got, (int)cases[i].want);
    int untouched = 1;
    for (int k = 0; k < C_OUT * 3; k++) untouched &= w2[k] == -7;
    for (int o = 0; o < C_OUT; o++) untouched &= b2[o] == -7;
    CHECK(untouched);
}
