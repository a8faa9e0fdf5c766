/* test_properties.c - what must hold whatever the data: zero mean and unit variance per channel,
 * invariance to shifting and scaling the input and to permuting the batch, repeatability. */
#include "check.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Largest |mean| and |biased var - 1| over the channels of y (doubles in d's layout). */
static void channel_moments(const bn_desc *d, const double *y, double *worst_mean,
                            double *worst_var) {
    *worst_mean = *worst_var = 0;
    bn_moments *mo = malloc(sizeof(bn_moments) * (size_t)d->c);
    bn_ref_moments(mo, y, d);
    for (int64_t c = 0; c < d->c; c++) {
        *worst_mean = tu_worst(*worst_mean, fabs(mo[c].mean));
        *worst_var = tu_worst(*worst_var, fabs(mo[c].m2 / (double)mo[c].count - 1));
    }
    free(mo);
}

BN_SUITE(suite_properties_normalized) {
    for (int dt = 0; dt < 2; dt++)
        for (int lay = 0; lay < 2; lay++) {
            bn_desc d = tu_desc(16, 6, 49, (bn_dtype)dt, (bn_layout)lay);
            int64_t count = tu_numel(&d);
            tu_rng r = tu_rng_new(5 + (uint64_t)(dt * 2 + lay));
            double *v = tu_randn(&r, count, -4, 30);
            void *x = tu_to_dtype(v, count, d.dtype), *y = tu_to_dtype(v, count, d.dtype);
            bn_options opt = tu_options(0.0, 0.1, 0); /* eps = 0 makes the variance exactly 1 */
            CHECK_STATUS(bn_forward_train(y, NULL, NULL, NULL, NULL, NULL, x, NULL, NULL, &d, &opt),
                         BN_OK);
            double *yd = tu_to_double(y, count, d.dtype), wm, wv;
            channel_moments(&d, yd, &wm, &wv);
            double tol = dt == BN_FLOAT32 ? 1e-6 : 1e-14;
            CHECK_MSG(wm < tol && wv < 10 * tol, "dtype %d layout %d: |mean| %g, |var - 1| %g", dt,
                      lay, wm, wv);
            free(v), free(x), free(y), free(yd);
        }
}

/* y(a + b*x) = y(x) for b > 0 when eps = 0; checked in float64. */
BN_SUITE(suite_properties_invariance) {
    bn_desc d = tu_desc(9, 4, 25, BN_FLOAT64, BN_CHANNELS_FIRST);
    int64_t count = tu_numel(&d);
    tu_rng r = tu_rng_new(11);
    double *x = tu_randn(&r, count, 0, 1), *y0 = malloc(sizeof(double) * (size_t)count);
    double *xt = malloc(sizeof(double) * (size_t)count), *yt = malloc(sizeof(double) * (size_t)count);
    bn_options opt = tu_options(0.0, 0.1, 0);
    CHECK_STATUS(bn_forward_train(y0, NULL, NULL, NULL, NULL, NULL, x, NULL, NULL, &d, &opt), BN_OK);
    const double shifts[] = {0, 1e3, -7.5, 1e6}, scales[] = {1, 1e-3, 1e4, 1e-20, 1e20};
    for (size_t a = 0; a < 4; a++)
        for (size_t b = 0; b < 5; b++) {
            for (int64_t k = 0; k < count; k++) xt[k] = shifts[a] * scales[b] + scales[b] * x[k];
            CHECK_STATUS(bn_forward_train(yt, NULL, NULL, NULL, NULL, NULL, xt, NULL, NULL, &d, &opt),
                         BN_OK);
            double diff = tu_max_rel_diff(yt, y0, count);
            /* a shift of 1e6 costs the input itself about 1e6 * 2^-53 of its precision */
            double tol = 1e-13 * fmax(1, fabs(shifts[a]));
            CHECK_MSG(diff <= tol, "shift %g scale %g: diff %g", shifts[a], scales[b], diff);
        }
    free(x), free(y0), free(xt), free(yt);
}

/* Permuting the samples permutes the outputs and leaves the statistics as they were. */
BN_SUITE(suite_properties_permutation) {
    for (int dt = 0; dt < 2; dt++) {
        bn_desc d = tu_desc(11, 3, 13, (bn_dtype)dt, BN_CHANNELS_LAST);
        int64_t count = tu_numel(&d);
        tu_rng r = tu_rng_new(21);
        double *v = tu_randn(&r, count, 2, 3), *vp = malloc(sizeof(double) * (size_t)count);
        int64_t perm[11];
        for (int64_t i = 0; i < 11; i++) perm[i] = (i * 7 + 3) % 11;
        for (int64_t i = 0; i < d.n; i++)
            for (int64_t c = 0; c < d.c; c++)
                for (int64_t j = 0; j < d.s; j++)
                    vp[bn_ref_index(&d, perm[i], c, j)] = v[bn_ref_index(&d, i, c, j)];
        void *x = tu_to_dtype(v, count, d.dtype), *xp = tu_to_dtype(vp, count, d.dtype);
        void *y = tu_to_dtype(v, count, d.dtype), *yp = tu_to_dtype(v, count, d.dtype);
        double sm[3], si[3], smp[3], sip[3];
        bn_options opt = BN_OPTIONS_DEFAULT;
        CHECK_STATUS(bn_forward_train(y, sm, si, NULL, NULL, NULL, x, NULL, NULL, &d, &opt), BN_OK);
        CHECK_STATUS(bn_forward_train(yp, smp, sip, NULL, NULL, NULL, xp, NULL, NULL, &d, &opt), BN_OK);
        double *yd = tu_to_double(y, count, d.dtype), *ypd = tu_to_double(yp, count, d.dtype);
        double worst = 0, stat = 0;
        for (int64_t i = 0; i < d.n; i++)
            for (int64_t c = 0; c < d.c; c++)
                for (int64_t j = 0; j < d.s; j++)
                    worst = tu_worst(worst, fabs(ypd[bn_ref_index(&d, perm[i], c, j)] -
                                                 yd[bn_ref_index(&d, i, c, j)]));
        for (int c = 0; c < 3; c++) {
            stat = tu_worst(stat, fabs(sm[c] - smp[c]) / fabs(sm[c]));
            stat = tu_worst(stat, fabs(si[c] - sip[c]) / si[c]);
        }
        /* float32 statistics: the float path of pivot.h, whose pivot and trees see the samples
         * in another order */
        double tol = dt == BN_FLOAT32 ? 1e-6 : 1e-13, stat_tol = dt == BN_FLOAT32 ? 1e-6 : 1e-14;
        CHECK_MSG(worst <= tol && stat <= stat_tol, "dtype %d: output %g, statistics %g", dt, worst,
                  stat);
        free(v), free(vp), free(x), free(xp), free(y), free(yp), free(yd), free(ypd);
    }
}

/* The same call on the same data gives the same bits, every time, whatever the output buffers
 * held before (the second call's start filled with NaN: nothing of them may be read). */
BN_SUITE(suite_properties_repeatable) {
    bn_desc d = tu_desc(8, 5, 300, BN_FLOAT32, BN_CHANNELS_FIRST);
    int64_t count = tu_numel(&d);
    tu_rng r = tu_rng_new(8);
    double *v = tu_randn(&r, count, 1, 2);
    float *x = tu_to_dtype(v, count, d.dtype), *y1 = tu_to_dtype(v, count, d.dtype);
    float *y2 = tu_to_dtype(v, count, d.dtype);
    double s1[5], s2[5], i1[5], i2[5];
    for (int64_t k = 0; k < count; k++) y2[k] = NAN;
    for (int c = 0; c < 5; c++) s2[c] = i2[c] = NAN;
    bn_options opt = BN_OPTIONS_DEFAULT;
    CHECK_STATUS(bn_forward_train(y1, s1, i1, NULL, NULL, NULL, x, NULL, NULL, &d, &opt), BN_OK);
    CHECK_STATUS(bn_forward_train(y2, s2, i2, NULL, NULL, NULL, x, NULL, NULL, &d, &opt), BN_OK);
    CHECK(memcmp(y1, y2, sizeof(float) * (size_t)count) == 0);
    CHECK(memcmp(s1, s2, sizeof s1) == 0 && memcmp(i1, i2, sizeof i1) == 0);
    free(v), free(x), free(y1), free(y2);
}
