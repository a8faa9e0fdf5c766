/* test_stages.c - the stages of a split batch (bn_compute_moments, bn_merge_moments,
 * bn_forward_train_stats, bn_backward_sums, bn_backward_train_sums): a batch cut into pieces
 * along N, unequal and empty ones included, gives what the whole batch gives; one piece gives
 * the very bits of bn_forward_train / bn_backward_train; failures write nothing. */
#include "check.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static size_t esize(bn_dtype dt) { return dt == BN_FLOAT32 ? 4 : 8; }

/* The samples [i0, i1) of a tensor: contiguous in both layouts (N is outermost). */
static void *piece(void *t, const bn_desc *d, int64_t i0) {
    return (char *)t + (size_t)(i0 * d->c * d->s) * esize(d->dtype);
}

/* A whole-batch training step against the same step over pieces cut at cuts[0..k]. */
static void check_split(int64_t n, int64_t c, int64_t s, bn_dtype dt, bn_layout lay,
                        const int64_t *cuts, int k, uint64_t seed) {
    bn_desc d = tu_desc(n, c, s, dt, lay);
    const int64_t count = tu_numel(&d);
    tu_rng r = tu_rng_new(seed);
    double *xd = tu_randn(&r, count, 3.0, 2.0), *dyd = tu_randn(&r, count, 0, 1);
    double *wd = tu_randn(&r, c, 1, 0.5), *bd = tu_randn(&r, c, 0, 0.5);
    double *rmd = tu_randn(&r, c, 0, 1), *rvd = tu_randn(&r, c, 2, 0.1);
    void *x = tu_to_dtype(xd, count, dt), *dy = tu_to_dtype(dyd, count, dt);
    void *w = tu_to_dtype(wd, c, dt), *b = tu_to_dtype(bd, c, dt);
    void *y1 = tu_to_dtype(xd, count, dt), *y2 = tu_to_dtype(xd, count, dt);
    void *dx1 = tu_to_dtype(xd, count, dt), *dx2 = tu_to_dtype(xd, count, dt);
    void *rm1 = tu_to_dtype(rmd, c, dt), *rv1 = tu_to_dtype(rvd, c, dt);
    void *rm2 = tu_to_dtype(rmd, c, dt), *rv2 = tu_to_dtype(rvd, c, dt);
    void *dw = tu_to_dtype(wd, c, dt), *db = tu_to_dtype(wd, c, dt);
    double *sm1 = calloc((size_t)c, 8), *si1 = calloc((size_t)c, 8);
    double *sm2 = calloc((size_t)c, 8), *si2 = calloc((size_t)c, 8);
    double *sdy = calloc((size_t)c, 8), *sdx = calloc((size_t)c, 8);
    double *pdy = calloc((size_t)c, 8), *pdx = calloc((size_t)c, 8);
    bn_moments *stats = calloc((size_t)c, sizeof(bn_moments));
    bn_moments *part = calloc((size_t)c, sizeof(bn_moments));
    int64_t nbt1 = 3, nbt2 = 3;
    bn_options opt = BN_OPTIONS_DEFAULT;

    /* the whole batch */
    CHECK_STATUS(bn_forward_train(y1, sm1, si1, rm1, rv1, &nbt1, x, w, b, &d, &opt), BN_OK);
    CHECK_STATUS(bn_backward_train(dx1, dw, db, dy, x, sm1, si1, w, &d), BN_OK);

    /* the pieces: moments merged in order, each piece normalized with them */
    for (int64_t ch = 0; ch < c; ch++) stats[ch] = (bn_moments){0, 0, 0};
    for (int p = 0; p < k; p++) {
        bn_desc dp = tu_desc(cuts[p + 1] - cuts[p], c, s, dt, lay);
        CHECK_STATUS(bn_compute_moments(part, piece(x, &d, cuts[p]), &dp), BN_OK);
        CHECK_STATUS(bn_merge_moments(stats, part, c), BN_OK);
    }
    CHECK(stats[0].count == n * s);
    for (int p = 0; p < k; p++) {
        bn_desc dp = tu_desc(cuts[p + 1] - cuts[p], c, s, dt, lay);
        /* every piece updates its own copy of the running statistics; all must agree */
        void *rm = tu_to_dtype(rmd, c, dt), *rv = tu_to_dtype(rvd, c, dt);
        int64_t nbt = 3;
        CHECK_STATUS(bn_forward_train_stats(piece(y2, &d, cuts[p]), sm2, si2, rm, rv, &nbt,
                                            piece(x, &d, cuts[p]), w, b, stats, &dp, &opt),
                     BN_OK);
        if (p == 0) {
            memcpy(rm2, rm, (size_t)c * esize(dt));
            memcpy(rv2, rv, (size_t)c * esize(dt));
            nbt2 = nbt;
        }
        CHECK_MSG(memcmp(rm, rm2, (size_t)c * esize(dt)) == 0 &&
                      memcmp(rv, rv2, (size_t)c * esize(dt)) == 0 && nbt == nbt2,
                  "piece %d: running statistics differ from piece 0's", p);
        free(rm);
        free(rv);
    }
    /* backward: sums of the pieces added in order, then dx of each piece */
    for (int64_t ch = 0; ch < c; ch++) sdy[ch] = sdx[ch] = 0;
    for (int p = 0; p < k; p++) {
        bn_desc dp = tu_desc(cuts[p + 1] - cuts[p], c, s, dt, lay);
        CHECK_STATUS(bn_backward_sums(pdy, pdx, piece(dy, &d, cuts[p]), piece(x, &d, cuts[p]),
                                      sm2, si2, &dp),
                     BN_OK);
        for (int64_t ch = 0; ch < c; ch++) {
            sdy[ch] += pdy[ch];
            sdx[ch] += pdx[ch];
        }
    }
    for (int p = 0; p < k; p++) {
        bn_desc dp = tu_desc(cuts[p + 1] - cuts[p], c, s, dt, lay);
        CHECK_STATUS(bn_backward_train_sums(piece(dx2, &d, cuts[p]), piece(dy, &d, cuts[p]),
                                            piece(x, &d, cuts[p]), sm2, si2, w, sdy, sdx, n * s,
                                            &dp),
                     BN_OK);
    }

    double *a = tu_to_double(y1, count, dt), *bb = tu_to_double(y2, count, dt);
    double *ga = tu_to_double(dx1, count, dt), *gb = tu_to_double(dx2, count, dt);
    double *ra = tu_to_double(rv1, c, dt), *rb = tu_to_double(rv2, c, dt);
    double *ma = tu_to_double(rm1, c, dt), *mb = tu_to_double(rm2, c, dt);
    double *dwa = tu_to_double(dw, c, dt), *dba = tu_to_double(db, c, dt);
    const double tol = dt == BN_FLOAT32 ? 4e-6 : 1e-11;
    const char *what = dt == BN_FLOAT32 ? "f32" : "f64";
    CHECK_MSG(tu_max_rel_diff(bb, a, count) <= tol, "y %s (%lld,%lld,%lld) %d pieces: %g",
              what, (long long)n, (long long)c, (long long)s, k, tu_max_rel_diff(bb, a, count));
    CHECK_MSG(tu_max_rel_diff(gb, ga, count) <= tol * 10, "dx %s %d pieces: %g", what, k,
              tu_max_rel_diff(gb, ga, count));
    CHECK_MSG(tu_max_rel_diff(rb, ra, c) <= tol && tu_max_rel_diff(mb, ma, c) <= tol,
              "running statistics %s %d pieces", what, k);
    CHECK_MSG(tu_max_rel_diff(sdy, dba, c) <= tol * 10 && tu_max_rel_diff(sdx, dwa, c) <= tol * 10,
              "summed sums %s %d pieces equal dbias, dweight", what, k);
    CHECK(nbt1 == 4 && nbt2 == 4);
    /* float32 pieces' moments: the float path of pivot.h on each piece */
    CHECK(tu_max_rel_diff(sm2, sm1, c) <= (dt == BN_FLOAT32 ? 1e-6 : 1e-12) &&
          tu_max_rel_diff(si2, si1, c) <= (dt == BN_FLOAT32 ? 1e-6 : 1e-9));

    if (k == 1) { /* one piece: the stages are the fused passes, bit for bit */
        CHECK_MSG(memcmp(y1, y2, (size_t)count * esize(dt)) == 0, "one piece: y bits %s", what);
        CHECK_MSG(memcmp(dx1, dx2, (size_t)count * esize(dt)) == 0, "one piece: dx bits %s", what);
        CHECK(memcmp(rm1, rm2, (size_t)c * esize(dt)) == 0);
        CHECK(memcmp(rv1, rv2, (size_t)c * esize(dt)) == 0);
        CHECK(memcmp(sm1, sm2, (size_t)c * 8) == 0 && memcmp(si1, si2, (size_t)c * 8) == 0);
        void *sdx_t = tu_to_dtype(sdx, c, dt), *sdy_t = tu_to_dtype(sdy, c, dt);
        CHECK_MSG(memcmp(sdx_t, dw, (size_t)c * esize(dt)) == 0 &&
                      memcmp(sdy_t, db, (size_t)c * esize(dt)) == 0,
                  "one piece: the sums are dweight and dbias %s", what);
        free(sdx_t);
        free(sdy_t);
    }
    void *all[] = {xd, dyd, wd, bd, rmd, rvd, x, dy, w, b, y1, y2, dx1, dx2, rm1, rv1, rm2, rv2,
                   dw, db, sm1, si1, sm2, si2, sdy, sdx, pdy, pdx, stats, part, a, bb, ga, gb,
                   ra, rb, ma, mb, dwa, dba};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
}

BN_SUITE(suite_stages_split) {
    static const int64_t one[] = {0, 12}, three[] = {0, 5, 5, 12}, four[] = {0, 0, 1, 11, 12};
    for (int dt = 0; dt < 2; dt++) {
        for (int lay = 0; lay < 2; lay++) {
            /* rows of every kind of length: one value, short, a whole statistics block and a
             * piece with vector and scalar tails, several blocks */
            const int64_t sizes[][2] = {{3, 7}, {70, 1}, {5, 300}, {3, 1024 + 45}, {2, 2100}};
            for (int q = 0; q < 5; q++) {
                int64_t c = sizes[q][0], s = sizes[q][1];
                check_split(12, c, s, (bn_dtype)dt, (bn_layout)lay, one, 1, 11 + (uint64_t)q);
                check_split(12, c, s, (bn_dtype)dt, (bn_layout)lay, three, 3, 21 + (uint64_t)q);
                check_split(12, c, s, (bn_dtype)dt, (bn_layout)lay, four, 4, 31 + (uint64_t)q);
            }
        }
    }
    /* a large channels-last batch: many tiles per piece (too many rows for the chunk path;
     * (12, 70, 1) above takes it), in one piece too, for the bits */
    static const int64_t two[] = {0, 100, 256}, whole[] = {0, 256};
    check_split(256, 40, 64, BN_FLOAT32, BN_CHANNELS_LAST, two, 2, 99);
    check_split(256, 40, 64, BN_FLOAT32, BN_CHANNELS_LAST, whole, 1, 97);
    check_split(256, 40, 64, BN_FLOAT64, BN_CHANNELS_LAST, whole, 1, 96);
    check_split(256, 40, 64, BN_FLOAT32, BN_CHANNELS_FIRST, two, 2, 98);
}

static int same_moments(bn_moments a, bn_moments b) { return memcmp(&a, &b, sizeof a) == 0; }

BN_SUITE(suite_stages_merge) {
    /* {1, 2, 3} and {4, 5}: mean 3, M2 = 10 */
    bn_moments acc[2] = {{3, 2.0, 2.0}, {0, 0, 0}}, part[2] = {{2, 4.5, 0.5}, {0, 0, 0}};
    CHECK_STATUS(bn_merge_moments(acc, part, 2), BN_OK);
    CHECK(acc[0].count == 5 && acc[0].mean == 3.0 && acc[0].m2 == 10.0);
    CHECK(acc[1].count == 0 && acc[1].mean == 0 && acc[1].m2 == 0);
    /* an empty part leaves the bits; an empty acc becomes the part */
    bn_moments odd = {7, 0.1 + 0.2, 1.0 / 3.0}, empty = {0, 0, 0}, keep = odd;
    CHECK_STATUS(bn_merge_moments(&odd, &empty, 1), BN_OK);
    CHECK(same_moments(odd, keep));
    CHECK_STATUS(bn_merge_moments(&empty, &odd, 1), BN_OK);
    CHECK(same_moments(empty, keep));
    /* unequal counts are exact: one value merged into many */
    bn_moments many = {1000000, 0.0, 1000000.0}, single = {1, 1000001.0, 0.0};
    CHECK_STATUS(bn_merge_moments(&many, &single, 1), BN_OK);
    CHECK_CLOSE(many.mean, 1.0, 1e-15);
    CHECK_CLOSE(many.m2, 1000000.0 + 1000001.0 * 1000001.0 * 1000000.0 / 1000001.0, 1e-3);
    /* failures write nothing */
    bn_moments big[2] = {{5, 1, 1}, {INT64_MAX, 1, 1}}, one[2] = {{5, 2, 2}, {1, 1, 1}};
    bn_moments before[2];
    memcpy(before, big, sizeof big);
    CHECK_STATUS(bn_merge_moments(big, one, 2), BN_ERR_TOO_LARGE);
    CHECK(memcmp(before, big, sizeof big) == 0);
    bn_moments neg = {-1, 0, 0};
    CHECK_STATUS(bn_merge_moments(big, &neg, 1), BN_ERR_ARGUMENT);
    CHECK(memcmp(before, big, sizeof big) == 0);
    CHECK_STATUS(bn_merge_moments(NULL, one, 1), BN_ERR_NULL_POINTER);
    CHECK_STATUS(bn_merge_moments(big, one, -1), BN_ERR_SHAPE);
    CHECK_STATUS(bn_merge_moments(NULL, NULL, 0), BN_OK);
    /* the moments of a tensor are those of the forward pass: compare with the saved mean */
    bn_desc d = tu_desc(4, 2, 3, BN_FLOAT64, BN_CHANNELS_FIRST);
    double x[24], y[24], mean[2], invstd[2];
    for (int i = 0; i < 24; i++) x[i] = i * i * 0.25;
    bn_moments m[2];
    bn_options opt = BN_OPTIONS_DEFAULT;
    opt.eps = 0;
    CHECK_STATUS(bn_compute_moments(m, x, &d), BN_OK);
    CHECK_STATUS(bn_forward_train(y, mean, invstd, NULL, NULL, NULL, x, NULL, NULL, &d, &opt), BN_OK);
    for (int c = 0; c < 2; c++) {
        CHECK(m[c].count == 12 && m[c].mean == mean[c]);
        CHECK(1.0 / sqrt(m[c].m2 / 12) == invstd[c]);
    }
    bn_desc e = tu_desc(0, 2, 3, BN_FLOAT64, BN_CHANNELS_LAST);
    m[0] = m[1] = (bn_moments){9, 9, 9};
    CHECK_STATUS(bn_compute_moments(m, NULL, &e), BN_OK);
    CHECK(m[0].count == 0 && m[0].mean == 0 && m[0].m2 == 0 && m[1].count == 0);
    CHECK_STATUS(bn_compute_moments(NULL, x, &d), BN_ERR_NULL_POINTER);
    CHECK_STATUS(bn_compute_moments(m, NULL, &d), BN_ERR_NULL_POINTER);
}

BN_SUITE(suite_stages_errors) {
    bn_desc d = tu_desc(1, 2, 1, BN_FLOAT32, BN_CHANNELS_FIRST);
    float x[2] = {1, 2}, y[2] = {7, 7}, rm[2] = {0, 0}, rv[2] = {1, 1};
    double sm[2] = {5, 5}, si[2] = {5, 5};
    int64_t nbt = 0;
    bn_options opt = BN_OPTIONS_DEFAULT;
    /* a global count of 1: BN_ERR_COUNT, nothing written */
    bn_moments one[2] = {{1, 1, 0}, {1, 2, 0}};
    CHECK_STATUS(bn_forward_train_stats(y, sm, si, rm, rv, &nbt, x, NULL, NULL, one, &d, &opt),
                 BN_ERR_COUNT);
    CHECK(y[0] == 7 && sm[0] == 5 && si[0] == 5 && rm[0] == 0 && rv[0] == 1 && nbt == 0);
    /* counts that differ between channels, or fewer than the piece has */
    bn_moments differ[2] = {{4, 1, 0}, {5, 2, 0}}, few[2] = {{0, 0, 0}, {0, 0, 0}};
    CHECK_STATUS(bn_forward_train_stats(y, sm, si, rm, rv, &nbt, x, NULL, NULL, differ, &d, &opt),
                 BN_ERR_ARGUMENT);
    CHECK_STATUS(bn_forward_train_stats(y, sm, si, rm, rv, &nbt, x, NULL, NULL, few, &d, &opt),
                 BN_ERR_ARGUMENT);
    CHECK_STATUS(bn_forward_train_stats(y, sm, si, rm, rv, &nbt, x, NULL, NULL, NULL, &d, &opt),
                 BN_ERR_NULL_POINTER);
    CHECK(y[0] == 7 && sm[0] == 5 && rm[0] == 0 && rv[0] == 1 && nbt == 0);
    /* an empty piece of a batch with values: statistics saved, running statistics updated */
    bn_desc e = tu_desc(0, 2, 1, BN_FLOAT32, BN_CHANNELS_FIRST);
    bn_moments two[2] = {{2, 1, 2}, {2, 3, 8}};
    CHECK_STATUS(bn_forward_train_stats(NULL, sm, si, rm, rv, &nbt, NULL, NULL, NULL, two, &e, &opt),
                 BN_OK);
    CHECK(sm[0] == 1 && sm[1] == 3 && nbt == 1);
    CHECK_CLOSE(si[0], 1 / sqrt(1 + 1e-5), 1e-15);
    CHECK_CLOSE(rm[1], 0.3, 1e-7);
    CHECK_CLOSE(rv[1], 0.9 + 0.1 * 8, 1e-6);
    /* an empty batch: NaN saved, running statistics untouched, the counter counts it */
    bn_moments none[2] = {{0, 0, 0}, {0, 0, 0}};
    CHECK_STATUS(bn_forward_train_stats(NULL, sm, si, rm, rv, &nbt, NULL, NULL, NULL, none, &e, &opt),
                 BN_OK);
    CHECK(isnan(sm[0]) && isnan(si[1]) && nbt == 2);
    CHECK_CLOSE(rm[1], 0.3, 1e-7);
    /* backward: a count below the piece's is refused, nothing written */
    bn_desc d2 = tu_desc(2, 2, 1, BN_FLOAT32, BN_CHANNELS_FIRST);
    float dy[4] = {1, 2, 3, 4}, xx[4] = {1, 2, 3, 4}, dx[4] = {9, 9, 9, 9};
    double sdy[2] = {1, 1}, sdx[2] = {1, 1}, mean[2] = {0, 0}, inv[2] = {1, 1};
    CHECK_STATUS(bn_backward_train_sums(dx, dy, xx, mean, inv, NULL, sdy, sdx, 1, &d2),
                 BN_ERR_ARGUMENT);
    CHECK(dx[0] == 9 && dx[3] == 9);
    CHECK_STATUS(bn_backward_train_sums(dx, dy, xx, mean, inv, NULL, NULL, sdx, 4, &d2),
                 BN_ERR_NULL_POINTER);
    CHECK_STATUS(bn_backward_sums(sdy, NULL, dy, xx, mean, inv, &d2), BN_ERR_NULL_POINTER);
    CHECK(sdy[0] == 1);
    /* an empty piece: zero sums, and no dx to write */
    CHECK_STATUS(bn_backward_sums(sdy, sdx, NULL, NULL, mean, inv, &e), BN_OK);
    CHECK(sdy[0] == 0 && sdx[1] == 0);
    CHECK_STATUS(bn_backward_train_sums(NULL, NULL, NULL, mean, inv, NULL, sdy, sdx, 4, &e), BN_OK);
}
