/* test_pivot.c - float32 statistics about a pivot (src/pivot.h): the bound keeps sums only where
 * they are provably accurate, and every way out of the common path (summed again about the mean
 * found, the exact path in double) still keeps the accuracy promise, in both layouts and for the
 * channels past the last whole vector. */
#include "check.h"
#include "kernels.h"
#include "pivot.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>

/* The float sums the kernels form of v[0..n) about p, one lane, trees of BN_TREE in order. */
static void float_sums(const float *v, int64_t n, float p, double *s1, double *s2) {
    double a1 = 0, a2 = 0;
    for (int64_t r = 0; r < n; r += BN_TREE) {
        float d[BN_TREE], e[BN_TREE];
        for (int t = 0; t < BN_TREE; t++) {
            d[t] = r + t < n ? v[r + t] - p : 0.0f;
            e[t] = d[t] * d[t];
        }
        a1 += (double)(((d[0] + d[1]) + (d[2] + d[3])) + ((d[4] + d[5]) + (d[6] + d[7])));
        a2 += (double)(((e[0] + e[1]) + (e[2] + e[3])) + ((e[4] + e[5]) + (e[6] + e[7])));
    }
    *s1 = a1, *s2 = a2;
}

/* Whether the bound keeps the sums of n values offset + scale * N(0, 1) about the pivot
 * mean + shift * scale; where it does, the moments must be as accurate as it says. */
static int kept(double offset, double scale, double shift, int64_t n, uint64_t seed) {
    tu_rng r = tu_rng_new(seed);
    float *v = malloc(sizeof(float) * (size_t)n);
    double *vd = malloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++) v[i] = (float)(offset + scale * tu_normal(&r)), vd[i] = v[i];
    bn_moments want;
    const bn_desc d = tu_desc(n, 1, 1, BN_FLOAT64, BN_CHANNELS_FIRST);
    bn_ref_moments(&want, vd, &d);
    const float p = (float)(want.mean + shift * scale);
    double s1, s2;
    float_sums(v, n, p, &s1, &s2);
    bn_moments m = {-1, 0, 0};
    const int keep = bn_pivot_moments(&m, p, n, s1, s2);
    if (keep) {
        const double sd = sqrt(want.m2 / (double)n);
        CHECK_MSG(m.count == n && fabs(m.mean - want.mean) <= BN_PIVOT_BUDGET * sd &&
                      fabs(m.m2 - want.m2) <= 2 * BN_PIVOT_BUDGET * want.m2,
                  "kept moments off: mean %g of %g, m2 %g of %g", m.mean, want.mean, m.m2, want.m2);
    } else {
        CHECK_MSG(m.count == -1, "a sum not kept wrote its moments");
    }
    free(v), free(vd);
    return keep;
}

BN_SUITE(suite_pivot_bound) {
    /* a pivot near the mean: kept, at any offset the float mean can hold and any sane scale */
    CHECK(kept(0, 1, 0, 4096, 1));
    CHECK(kept(3, 0.5, 0.2, 4096, 2));
    CHECK(kept(-40, 1e-3, -0.3, 1000, 3));
    CHECK(kept(0, 1e15, 0.1, 777, 4));
    /* a pivot far from the mean: the cancellation in M2 costs more than the budget */
    CHECK(!kept(0, 1, 3, 4096, 5));
    CHECK(!kept(10, 1, -1.5, 4096, 6));
    /* squares below float's normal range lose their bits: never kept */
    CHECK(!kept(0, 1e-22, 0, 4096, 8));
    /* squares past float's range overflow: never kept */
    CHECK(!kept(0, 1e20, 0, 4096, 9));
    /* a constant channel, NaN and infinite sums, too many values for the bound */
    bn_moments m = {-1, 0, 0};
    CHECK(!bn_pivot_moments(&m, 2.5, 100, 0, 0));
    CHECK(!bn_pivot_moments(&m, 0, 100, NAN, 1));
    CHECK(!bn_pivot_moments(&m, 0, 100, 1, NAN));
    CHECK(!bn_pivot_moments(&m, 0, 100, 1, INFINITY));
    CHECK(!bn_pivot_moments(&m, 0, INT64_C(1) << 53, 1, 1e6));
    CHECK(m.count == -1);
}

/* bn_forward_train of x (the dtype float32) against the reference: within the promise. */
static void check_train(const float *x, const bn_desc *d, const char *what) {
    const int64_t count = tu_numel(d);
    float *y = malloc(sizeof(float) * (size_t)count);
    double *xd = tu_to_double(x, count, BN_FLOAT32), *want = malloc(sizeof(double) * (size_t)count);
    const bn_options opt = tu_options(1e-5, 0.1, 0);
    CHECK_STATUS(bn_forward_train(y, NULL, NULL, NULL, NULL, NULL, x, NULL, NULL, d, &opt), BN_OK);
    bn_ref_forward_train(want, NULL, NULL, NULL, NULL, NULL, xd, NULL, NULL, d, &opt);
    double *yd = tu_to_double(y, count, BN_FLOAT32);
    const double diff = tu_max_rel_diff(yd, want, count);
    CHECK_MSG(diff <= 1e-6, "%s: error %g", what, diff);
    free(y), free(xd), free(want), free(yd);
}

/* The counts of the rare paths a call took. */
static void counts_of(int64_t *again, int64_t *exact, int64_t again0, int64_t exact0) {
    bn_pivot_counts(again, exact);
    *again -= again0, *exact -= exact0;
}

/* Channel 0 of a tensor whose sampled values are outliers (so the pivot is far from the mean),
 * channel 1 so small that its squares underflow in float, channel 2 constant, the others plain:
 * 0 summed again, 1 again and exact, 2 again and exact (its M2 is 0). */
static float *awkward(const bn_desc *d, uint64_t seed) {
    const int64_t count = tu_numel(d);
    tu_rng r = tu_rng_new(seed);
    double *v = tu_randn(&r, count, 0, 1);
    for (int64_t i = 0; i < d->n; i++)
        for (int64_t j = 0; j < d->s; j++) {
            v[bn_ref_index(d, i, 1, j)] *= 1e-22;
            v[bn_ref_index(d, i, 2, j)] = 3.25;
        }
    /* the pivots' samples: 8 runs of 8 values, run k in row k * n / 8 from column k * (s - 8) /
     * 8 of a channels-first channel; rows k * rows / BN_SAMPLE_ROWS of a channels-last one
     * (rows = n * s) */
    const int64_t per = d->n * d->s;
    if (d->layout == BN_CHANNELS_FIRST)
        for (int64_t k = 0; k < 8; k++)
            for (int64_t j = 0; j < 8; j++)
                v[bn_ref_index(d, k * d->n / 8, 0, k * (d->s - 8) / 8 + j)] = 500;
    else
        for (int64_t k = 0; k < BN_SAMPLE_ROWS; k++) {
            const int64_t row = k * per / BN_SAMPLE_ROWS;
            v[bn_ref_index(d, row / d->s, 0, row % d->s)] = 500;
        }
    float *x = tu_to_dtype(v, count, BN_FLOAT32);
    free(v);
    return x;
}

BN_SUITE(suite_pivot_paths) {
    /* channels-first rows of at least BN_SHORT values; channels-last with whole vectors of
     * channels (C = 16, 32) and with channels past them (C = 5, 21), in one part of rows (at most
     * BN_ROWS of them: a part samples its own rows) */
    static const struct { int64_t n, c, s; int lay; } cases[] = {
        {4, 3, 1000, 0}, {2, 5, 4096, 0}, {250, 16, 1, 1}, {30, 21, 8, 1}, {256, 5, 1, 1},
        {64, 32, 3, 1}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const bn_desc d = tu_desc(cases[k].n, cases[k].c, cases[k].s, BN_FLOAT32,
                                  cases[k].lay ? BN_CHANNELS_LAST : BN_CHANNELS_FIRST);
        int64_t again0, exact0, again, exact;
        /* plain normal values: the common path only */
        tu_rng r = tu_rng_new(50 + k);
        double *v = tu_randn(&r, tu_numel(&d), 2, 3);
        float *x = tu_to_dtype(v, tu_numel(&d), BN_FLOAT32);
        bn_pivot_counts(&again0, &exact0);
        check_train(x, &d, "plain");
        counts_of(&again, &exact, again0, exact0);
        CHECK_MSG(again == 0 && exact == 0, "case %zu plain: %lld again, %lld exact", k,
                  (long long)again, (long long)exact);
        free(v), free(x);
        /* the awkward channels: summed again (0, 1, 2), exact (1, 2) */
        x = awkward(&d, 60 + k);
        bn_pivot_counts(&again0, &exact0);
        check_train(x, &d, "awkward");
        counts_of(&again, &exact, again0, exact0);
        CHECK_MSG(again == 3 && exact == 2, "case %zu awkward: %lld again, %lld exact", k,
                  (long long)again, (long long)exact);
        /* the constant channel normalizes to exactly 0 */
        float *y = malloc(sizeof(float) * (size_t)tu_numel(&d));
        const bn_options opt = tu_options(1e-5, 0.1, 0);
        CHECK_STATUS(bn_forward_train(y, NULL, NULL, NULL, NULL, NULL, x, NULL, NULL, &d, &opt),
                     BN_OK);
        int zero = 1;
        for (int64_t i = 0; i < d.n; i++)
            for (int64_t j = 0; j < d.s; j++) zero &= y[bn_ref_index(&d, i, 2, j)] == 0.0f;
        CHECK_MSG(zero, "case %zu: the constant channel is not exactly 0", k);
        free(x), free(y);
    }
}
