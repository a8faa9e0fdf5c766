/* test_finite.c - NaN and infinity: by default they propagate as in PyTorch (their channel's
 * statistics and outputs become NaN, other channels are untouched); bn_check_finite finds the
 * first one, with its channel and offset, so a caller can refuse them instead. */
#include "check.h"
#include "testutil.h"

#include <math.h>
#include <string.h>

BN_SUITE(suite_finite_propagation) {
    enum { N = 4, C = 3, S = 5, M = N * C * S };
    const double bad[3] = {NAN, INFINITY, -INFINITY};
    for (int b = 0; b < 3; b++)
        for (int lay = 0; lay < 2; lay++) {
            bn_desc d = tu_desc(N, C, S, BN_FLOAT64, (bn_layout)lay);
            double x[M], y[M], clean_y[M], sm[C], si[C], rm[C] = {0, 0, 0}, rv[C] = {1, 1, 1};
            tu_rng r = tu_rng_new(3);
            for (int k = 0; k < M; k++) x[k] = tu_normal(&r);
            bn_options opt = BN_OPTIONS_DEFAULT;
            CHECK_STATUS(bn_forward_train(clean_y, NULL, NULL, NULL, NULL, NULL, x, NULL, NULL, &d, &opt), BN_OK);
            x[bn_ref_index(&d, 2, 1, 3)] = bad[b];
            CHECK_STATUS(bn_forward_train(y, sm, si, rm, rv, NULL, x, NULL, NULL, &d, &opt), BN_OK);
            CHECK(isnan(sm[1]) || isinf(sm[1]));
            CHECK(isnan(rm[1]) || isinf(rm[1]));
            for (int64_t i = 0; i < N; i++)
                for (int64_t j = 0; j < S; j++) {
                    CHECK(isnan(y[bn_ref_index(&d, i, 1, j)])); /* the whole channel */
                    for (int64_t c = 0; c < C; c += 2) /* the others: as without it */
                        CHECK(y[bn_ref_index(&d, i, c, j)] == clean_y[bn_ref_index(&d, i, c, j)]);
                }
            CHECK(isfinite(sm[0]) && isfinite(sm[2]) && isfinite(rv[0]) && isfinite(rv[2]));
        }
}

BN_SUITE(suite_finite_check) {
    enum { N = 3, C = 4, S = 6, M = N * C * S };
    float xf[M];
    double xd[M];
    for (int k = 0; k < M; k++) xf[k] = (float)k - 20, xd[k] = k * 1e300;
    for (int lay = 0; lay < 2; lay++) {
        bn_desc df = tu_desc(N, C, S, BN_FLOAT32, (bn_layout)lay);
        bn_desc dd = tu_desc(N, C, S, BN_FLOAT64, (bn_layout)lay);
        int64_t channel = -1, index = -1;
        CHECK_STATUS(bn_check_finite(&channel, &index, xf, &df), BN_OK);
        CHECK(channel == -1 && index == -1); /* untouched */
        CHECK_STATUS(bn_check_finite(&channel, &index, xd, &dd), BN_OK);
        /* two bad values: the first in memory order is reported, with its channel */
        const int64_t late = bn_ref_index(&df, 2, 3, 5), early = bn_ref_index(&df, 1, 2, 4);
        xf[late] = NAN, xf[early] = -INFINITY;
        CHECK_STATUS(bn_check_finite(&channel, &index, xf, &df), BN_ERR_NOT_FINITE);
        const int64_t first = early < late ? early : late;
        CHECK(index == first);
        CHECK(channel == (first == early ? 2 : 3));
        CHECK_STATUS(bn_check_finite(NULL, NULL, xf, &df), BN_ERR_NOT_FINITE);
        xf[late] = 0, xf[early] = 0;
        xd[M - 1] = INFINITY; /* the very last value */
        CHECK_STATUS(bn_check_finite(&channel, &index, xd, &dd), BN_ERR_NOT_FINITE);
        CHECK(index == M - 1 && channel == C - 1);
        xd[M - 1] = 0;
        /* doubles too large for float are still finite */
        CHECK(xd[M - 2] > 3.5e38);
    }
    /* a per-channel array, described as (1, C, 1) */
    float w[5] = {1, 2, 3, NAN, INFINITY};
    bn_desc dw = tu_desc(1, 5, 1, BN_FLOAT32, BN_CHANNELS_FIRST);
    int64_t channel = -1, index = -1;
    CHECK_STATUS(bn_check_finite(&channel, &index, w, &dw), BN_ERR_NOT_FINITE);
    CHECK(channel == 3 && index == 3);
    /* errors: what any call refuses; nothing written */
    bn_desc empty = tu_desc(0, 5, 7, BN_FLOAT32, BN_CHANNELS_LAST), bad = dw;
    CHECK_STATUS(bn_check_finite(&channel, &index, NULL, &empty), BN_OK);
    CHECK_STATUS(bn_check_finite(&channel, &index, NULL, &dw), BN_ERR_NULL_POINTER);
    CHECK_STATUS(bn_check_finite(&channel, &index, w, NULL), BN_ERR_NULL_POINTER);
    bad.c = 0;
    CHECK_STATUS(bn_check_finite(&channel, &index, w, &bad), BN_ERR_SHAPE);
    bad = dw, bad.dtype = (bn_dtype)5;
    CHECK_STATUS(bn_check_finite(&channel, &index, w, &bad), BN_ERR_UNSUPPORTED);
    bad = dw, bad.n = INT64_MAX;
    CHECK_STATUS(bn_check_finite(&channel, &index, w, &bad), BN_ERR_TOO_LARGE);
    CHECK(channel == 3 && index == 3);
}
