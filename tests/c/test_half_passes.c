/* test_half_passes.c - the passes on bfloat16 and float16 tensors, with parameters of the
 * tensor's type or float32:
 *   - every output is within one rounding of the float64 reference on the same (rounded)
 *     values: the value rounded once to nearest even, or its neighbour where the reference is
 *     within float's error of the midpoint between the two (the computation is in float);
 *   - the kernels' vector conversions give half.h's bits for every 16-bit value widened and
 *     every deciding float narrowed (eval with identity coefficients, and with weight 0 and the
 *     probes as bias), in every instruction set the CPU has;
 *   - the bits do not depend on the thread count or on the kind of store.
 * The reference is src/reference, in double; the rounding is bn_convert's (half.h). */
#include "check.h"
#include "testutil.h"

#include "half.h"
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const bn_dtype halves[2] = {BN_BFLOAT16, BN_FLOAT16};

static double widen(uint16_t h, bn_dtype dt) {
    return dt == BN_BFLOAT16 ? (double)bn_bf16_to_float(h) : (double)bn_f16_to_float(h);
}

static uint16_t round16(double v, bn_dtype dt) {
    return dt == BN_BFLOAT16 ? bn_double_to_bf16(v) : bn_double_to_f16(v);
}

/* The 16-bit values in order: adjacent values differ by 1 (both zeros are 0). */
static int ordinal(uint16_t h) { return h & 0x8000 ? -(int)(h & 0x7fff) : (int)(h & 0x7fff); }

/* Whether h is v rounded once to dt, or v's other neighbour where v is within tol of the
 * midpoint between the two. NaN only for NaN. */
static int one_rounding(uint16_t h, double v, bn_dtype dt, double tol) {
    const uint16_t r = round16(v, dt);
    if (isnan(v)) return isnan(widen(h, dt));
    if (h == r || (widen(h, dt) == 0 && widen(r, dt) == 0 && v == 0)) return 1;
    if (abs(ordinal(h) - ordinal(r)) != 1 || isinf(widen(h, dt)) || isinf(widen(r, dt))) return 0;
    return fabs(v - (widen(h, dt) + widen(r, dt)) / 2) <= tol;
}

/* count values of type dt at p against the reference ref: one rounding, within tol[k] of a
 * midpoint (float32 values: within tol[k] of ref). Returns the number that are not. */
static int64_t not_one_rounding(const void *p, bn_dtype dt, const double *ref, const double *tol,
                                int64_t count) {
    int64_t bad = 0;
    for (int64_t k = 0; k < count; k++) {
        if (dt == BN_FLOAT32) {
            const double v = ((const float *)p)[k];
            bad += !(fabs(v - ref[k]) <= tol[k] + 0x1p-24 * fabs(ref[k]));
        } else {
            bad += !one_rounding(((const uint16_t *)p)[k], ref[k], dt, tol[k]);
        }
    }
    return bad;
}

/* tol[k] = rel * max(1, |ref[k]|), or rel times the largest |ref| of k's channel (per = 1). */
static double *tolerances(const double *ref, const bn_desc *d, double rel, int per_channel) {
    const int64_t count = tu_numel(d);
    double *tol = malloc(sizeof(double) * (size_t)(count ? count : 1));
    for (int64_t k = 0; k < count; k++) tol[k] = rel * fmax(1, fabs(ref[k]));
    if (per_channel)
        for (int64_t c = 0; c < d->c; c++) {
            double big = 1;
            for (int64_t i = 0; i < d->n; i++)
                for (int64_t j = 0; j < d->s; j++) big = fmax(big, fabs(ref[bn_ref_index(d, i, c, j)]));
            for (int64_t i = 0; i < d->n; i++)
                for (int64_t j = 0; j < d->s; j++) tol[bn_ref_index(d, i, c, j)] = rel * big;
        }
    return tol;
}

static const int64_t shapes[][3] = {{64, 40, 1}, {6, 20, 7}, {5, 3, 1100}, {3, 36, 64}, {2, 17, 5}};

/* A training step and its backward, then eval and its backward, against the reference. */
BN_SUITE(suite_half_passes_against_reference) {
    for (int h = 0; h < 2; h++)
        for (int pf = 0; pf < 2; pf++)
            for (int lay = 0; lay < 2; lay++)
                for (size_t q = 0; q < sizeof shapes / sizeof shapes[0]; q++) {
                    const bn_dtype dt = halves[h], pt = pf ? BN_FLOAT32 : dt;
                    bn_desc d = tu_desc(shapes[q][0], shapes[q][1], shapes[q][2], dt,
                                        (bn_layout)lay);
                    d.params = pf ? BN_PARAMS_FLOAT32 : BN_PARAMS_AS_TENSOR;
                    const int64_t count = tu_numel(&d), C = d.c;
                    tu_rng r = tu_rng_new(7000 + 100 * h + 10 * pf + q);
                    const double offset = q % 2 ? 30 : -2, scale = q % 2 ? 4 : 0.5;
                    double *xv = tu_randn(&r, count, offset, scale), *gv = tu_randn(&r, count, 0.2, 1);
                    double *pv = tu_randn(&r, 4 * C, 0, 1); /* weight, bias, rm, rv */
                    for (int64_t c = 0; c < C; c++)
                        pv[c] = 1 + 0.3 * pv[c], pv[3 * C + c] = 0.5 + fabs(pv[3 * C + c]);
                    void *x = tu_to_dtype(xv, count, dt), *dy = tu_to_dtype(gv, count, dt);
                    void *par = tu_to_dtype(pv, 4 * C, pt);
                    double *xd = tu_to_double(x, count, dt), *gd = tu_to_double(dy, count, dt);
                    double *pd = tu_to_double(par, 4 * C, pt);
                    const size_t ps = pt == BN_FLOAT32 ? 4 : 2;
                    char *w = par, *b = w + ps * C, *rm = b + ps * C, *rv = rm + ps * C;
                    uint16_t *y = malloc(2 * (size_t)count), *dx = malloc(2 * (size_t)count);
                    void *dw = malloc(ps * (size_t)C), *db = malloc(ps * (size_t)C);
                    double *sm = malloc(8 * (size_t)C), *si = malloc(8 * (size_t)C);
                    double *ry = malloc(8 * (size_t)count), *rdx = malloc(8 * (size_t)count);
                    double *rsm = malloc(8 * (size_t)C), *rsi = malloc(8 * (size_t)C);
                    double *rdw = malloc(8 * (size_t)C), *rdb = malloc(8 * (size_t)C);
                    double *rrm = malloc(8 * (size_t)C), *rrv = malloc(8 * (size_t)C);
                    memcpy(rrm, pd + 2 * C, 8 * (size_t)C), memcpy(rrv, pd + 3 * C, 8 * (size_t)C);
                    const bn_options opt = BN_OPTIONS_DEFAULT;
                    int64_t nbt = 0, rnbt = 0;

                    CHECK_STATUS(bn_forward_train(y, sm, si, rm, rv, &nbt, x, w, b, &d, &opt), BN_OK);
                    bn_ref_forward_train(ry, rsm, rsi, rrm, rrv, &rnbt, xd, pd, pd + C, &d, &opt);
                    double *tol = tolerances(ry, &d, 2e-6, 0);
                    int64_t bad = not_one_rounding(y, dt, ry, tol, count);
                    CHECK_MSG(bad == 0, "dtype %d params %d layout %d shape %zu: %lld of y not one rounding",
                              dt, pf, lay, q, (long long)bad);
                    double worst_mean = 0, worst_invstd = 0;
                    for (int64_t c = 0; c < C; c++) {
                        worst_mean = tu_worst(worst_mean, fabs(sm[c] - rsm[c]) * rsi[c]);
                        worst_invstd = tu_worst(worst_invstd, fabs(si[c] - rsi[c]) / rsi[c]);
                    }
                    CHECK_MSG(worst_mean <= 11 * 0x1p-24 && worst_invstd <= 11 * 0x1p-24,
                              "dtype %d shape %zu: saved mean off by %g sd, invstd by %g", dt, q,
                              worst_mean, worst_invstd);
                    double ptol[2 * 256];
                    for (int64_t c = 0; c < C; c++)
                        ptol[c] = 1e-5 / rsi[c], ptol[C + c] = 1e-5 * rrv[c];
                    bad = not_one_rounding(rm, pt, rrm, ptol, C) + not_one_rounding(rv, pt, rrv, ptol + C, C);
                    CHECK_MSG(bad == 0 && nbt == 1, "dtype %d params %d shape %zu: %lld running statistics not one rounding",
                              dt, pf, q, (long long)bad);

                    /* backward, from the saved statistics */
                    CHECK_STATUS(bn_backward_train(dx, dw, db, dy, x, sm, si, w, &d), BN_OK);
                    bn_ref_backward_train(rdx, rdw, rdb, gd, xd, sm, si, pd, &d);
                    free(tol);
                    tol = tolerances(rdx, &d, 4e-6, 1);
                    bad = not_one_rounding(dx, dt, rdx, tol, count);
                    CHECK_MSG(bad == 0, "dtype %d params %d layout %d shape %zu: %lld of dx not one rounding",
                              dt, pf, lay, q, (long long)bad);
                    for (int64_t c = 0; c < C; c++) ptol[c] = 1e-9 * (double)count, ptol[C + c] = 1e-9 * (double)count;
                    bad = not_one_rounding(dw, pt, rdw, ptol, C) + not_one_rounding(db, pt, rdb, ptol + C, C);
                    CHECK_MSG(bad == 0, "dtype %d params %d shape %zu: %lld of dweight, dbias not one rounding",
                              dt, pf, q, (long long)bad);

                    /* eval and its backward, with the running statistics the step left */
                    double *rmd = tu_to_double(rm, C, pt), *rvd = tu_to_double(rv, C, pt);
                    CHECK_STATUS(bn_forward_eval(y, x, rm, rv, w, b, &d, 1e-5), BN_OK);
                    bn_ref_forward_eval(ry, xd, rmd, rvd, pd, pd + C, &d, 1e-5);
                    free(tol);
                    tol = tolerances(ry, &d, 2e-6, 0);
                    bad = not_one_rounding(y, dt, ry, tol, count);
                    CHECK_MSG(bad == 0, "dtype %d params %d layout %d shape %zu: %lld of eval y not one rounding",
                              dt, pf, lay, q, (long long)bad);
                    CHECK_STATUS(bn_backward_eval(dx, dw, db, dy, x, rm, rv, w, &d, 1e-5), BN_OK);
                    bn_ref_backward_eval(rdx, rdw, rdb, gd, xd, rmd, rvd, pd, &d, 1e-5);
                    free(tol);
                    tol = tolerances(rdx, &d, 2e-6, 0);
                    bad = not_one_rounding(dx, dt, rdx, tol, count) + not_one_rounding(dw, pt, rdw, ptol, C);
                    CHECK_MSG(bad == 0, "dtype %d params %d layout %d shape %zu: %lld of the eval backward not one rounding",
                              dt, pf, lay, q, (long long)bad);

                    free(tol), free(rmd), free(rvd);
                    free(xv), free(gv), free(pv), free(x), free(dy), free(par), free(xd), free(gd), free(pd);
                    free(y), free(dx), free(dw), free(db), free(sm), free(si), free(ry), free(rdx);
                    free(rsm), free(rsi), free(rdw), free(rdb), free(rrm), free(rrv);
                }
}

/* Every 16-bit value through the kernels: eval with mean 0, variance 1, eps 0, weight 1 and
 * bias 0 computes ((x - 0) - 0) * 1 + 0 in float, whose rounding back is half.h's of that float
 * (a NaN comes out as half.h makes it; -0 + 0 is +0). Both layouts, every set the CPU has. */
static void check_widen_all(bn_dtype dt, bn_layout lay) {
    enum { COUNT = 65536, C = 16 };
    const bn_desc d = tu_desc(lay ? COUNT / C : 1, lay ? C : 1, lay ? 1 : COUNT, dt, lay);
    bn_desc dp = d;
    dp.params = BN_PARAMS_FLOAT32;
    uint16_t *x = malloc(2 * COUNT), *y = malloc(2 * COUNT);
    for (int k = 0; k < COUNT; k++) x[k] = (uint16_t)k;
    float rm[C], rv[C], w[C], b[C];
    for (int c = 0; c < C; c++) rm[c] = 0, rv[c] = 1, w[c] = 1, b[c] = 0;
    CHECK_STATUS(bn_forward_eval(y, x, rm, rv, w, b, &dp, 0), BN_OK);
    int64_t bad = 0;
    for (int k = 0; k < COUNT; k++) {
        const float f = dt == BN_BFLOAT16 ? bn_bf16_to_float(x[k]) : bn_f16_to_float(x[k]);
        const float v = ((f - 0.0f) - 0.0f) * 1.0f + 0.0f;
        const uint16_t want = dt == BN_BFLOAT16 ? bn_float_to_bf16(v) : bn_float_to_f16(v);
        bad += y[k] != want;
    }
    CHECK_MSG(bad == 0, "set %s dtype %d layout %d: %lld of 65536 values not half.h's", bn_kernels_isa(),
              dt, lay, (long long)bad);
    free(x), free(y);
}

/* Every float that decides a rounding, through the kernels' narrowing: eval with weight 0 and
 * the probes as bias gives (x * 0) + bias, bias itself (x = 1), rounded. The probes: every 16-bit
 * value's float, its midpoint with the next one and the floats beside that midpoint, both
 * signs; the subnormals' and the largest values' neighbourhoods; infinities and NaNs. */
static void check_narrow_all(bn_dtype dt, bn_layout lay) {
    enum { ROWS = 2 };
    int64_t P = 0;
    float *probe = malloc(sizeof(float) * 65536 * 4 + 64);
    for (uint32_t k = 0; k < 65536; k++) {
        const float a = dt == BN_BFLOAT16 ? bn_bf16_to_float((uint16_t)k) : bn_f16_to_float((uint16_t)k);
        const float next = dt == BN_BFLOAT16 ? bn_bf16_to_float((uint16_t)(k + 1)) : bn_f16_to_float((uint16_t)(k + 1));
        probe[P++] = a;
        if (isnan(a) || isnan(next) || isinf(a) || (k & 0x7fff) == 0x7fff) continue;
        const float mid = (float)(((double)a + (double)next) / 2);
        probe[P++] = mid;
        probe[P++] = nextafterf(mid, 0);
        probe[P++] = nextafterf(mid, 2 * mid);
    }
    const float extra[] = {65504, 65519.996f, 65520, 65536, 3.4028235e38f, 0x1p-149f, -0x1p-149f,
                           0x1p-25f, 0x1.000002p-25f, 0x1p-24f, 0x1.8p-24f, 0x1.ffep-15f, 0x1p-14f,
                           1.17549435e-38f, -0.0f, INFINITY, -INFINITY, NAN, -NAN};
    for (size_t k = 0; k < sizeof extra / sizeof extra[0]; k++) probe[P++] = extra[k];
    const bn_desc d0 = tu_desc(lay ? ROWS : 1, P, lay ? 1 : ROWS, dt, lay);
    bn_desc d = d0;
    d.params = BN_PARAMS_FLOAT32;
    const int64_t count = tu_numel(&d);
    uint16_t *x = malloc(2 * (size_t)count), *y = malloc(2 * (size_t)count);
    const uint16_t one = dt == BN_BFLOAT16 ? 0x3f80 : 0x3c00;
    for (int64_t k = 0; k < count; k++) x[k] = one;
    float *rm = calloc((size_t)P, 4), *rv = malloc(4 * (size_t)P), *w = calloc((size_t)P, 4);
    for (int64_t c = 0; c < P; c++) rv[c] = 1;
    CHECK_STATUS(bn_forward_eval(y, x, rm, rv, w, probe, &d, 1e-5), BN_OK);
    int64_t bad = 0;
    for (int64_t i = 0; i < d.n; i++)
        for (int64_t c = 0; c < P; c++)
            for (int64_t j = 0; j < d.s; j++) {
                const float v = 1.0f * 0.0f + probe[c];
                const uint16_t want = dt == BN_BFLOAT16 ? bn_float_to_bf16(v) : bn_float_to_f16(v);
                bad += y[bn_ref_index(&d, i, c, j)] != want;
            }
    CHECK_MSG(bad == 0, "set %s dtype %d layout %d: %lld of %lld probes not rounded as half.h",
              bn_kernels_isa(), dt, lay, (long long)bad, (long long)(ROWS * P));
    free(probe), free(x), free(y), free(rm), free(rv), free(w);
}

BN_SUITE(suite_half_passes_conversions_every_set) {
    static const char *const sets[] = {"avx512f", "avx2", "x86-64", "portable"};
    for (size_t s = 0; s < sizeof sets / sizeof sets[0]; s++) {
        if (!bn_kernel_force_isa(sets[s])) continue;
        for (int h = 0; h < 2; h++)
            for (int lay = 0; lay < 2; lay++) {
                check_widen_all(halves[h], (bn_layout)lay);
                check_narrow_all(halves[h], (bn_layout)lay);
            }
    }
    bn_kernel_force_isa(NULL);
}

/* The same bits on 1 and 2 threads, and with plain and streaming stores, for tensors large
 * enough that the plans split them and stream their outputs. */
BN_SUITE(suite_half_passes_bitwise) {
    static const int64_t big[][3] = {{16, 24, 22000}, {24, 32, 7}, {22000, 24, 1}};
    for (int h = 0; h < 2; h++)
        for (size_t q = 0; q < sizeof big / sizeof big[0]; q++)
            for (int lay = 0; lay < 2; lay++) {
                bn_desc d = tu_desc(big[q][0], big[q][1], big[q][2], halves[h], (bn_layout)lay);
                d.params = BN_PARAMS_FLOAT32;
                const int64_t count = tu_numel(&d), C = d.c;
                tu_rng r = tu_rng_new(77 + q);
                double *xv = tu_randn(&r, count, 3, 2), *gv = tu_randn(&r, count, 0, 1);
                void *x = tu_to_dtype(xv, count, d.dtype), *dy = tu_to_dtype(gv, count, d.dtype);
                uint16_t *out[3][3];
                float rm[3][32], rv[3][32], dw[3][32], db[3][32];
                double sm[3][32], si[3][32];
                const bn_options opt = BN_OPTIONS_DEFAULT;
                for (int v = 0; v < 3; v++) { /* 1 thread; 2 threads; 2 threads, plain stores */
                    bn_set_num_threads(v ? 2 : 1);
                    bn_kernel_force_plain_stores(v == 2);
                    for (int64_t c = 0; c < C; c++) rm[v][c] = 0, rv[v][c] = 1;
                    for (int m = 0; m < 3; m++) out[v][m] = malloc(2 * (size_t)count);
                    CHECK_STATUS(bn_forward_train(out[v][0], sm[v], si[v], rm[v], rv[v], NULL, x,
                                                  NULL, NULL, &d, &opt), BN_OK);
                    CHECK_STATUS(bn_backward_train(out[v][1], dw[v], db[v], dy, x, sm[v], si[v],
                                                   NULL, &d), BN_OK);
                    CHECK_STATUS(bn_forward_eval(out[v][2], x, rm[v], rv[v], NULL, NULL, &d, 1e-5), BN_OK);
                    if (!v) continue;
                    for (int m = 0; m < 3; m++)
                        CHECK_MSG(!memcmp(out[0][m], out[v][m], 2 * (size_t)count),
                                  "dtype %d shape %zu layout %d variant %d: pass %d differs", d.dtype, q,
                                  lay, v, m);
                    CHECK(!memcmp(sm[0], sm[v], 8 * (size_t)C) && !memcmp(si[0], si[v], 8 * (size_t)C));
                    CHECK(!memcmp(rm[0], rm[v], 4 * (size_t)C) && !memcmp(rv[0], rv[v], 4 * (size_t)C));
                    CHECK(!memcmp(dw[0], dw[v], 4 * (size_t)C) && !memcmp(db[0], db[v], 4 * (size_t)C));
                }
                bn_kernel_force_plain_stores(0);
                bn_set_num_threads(0);
                for (int v = 0; v < 3; v++)
                    for (int m = 0; m < 3; m++) free(out[v][m]);
                free(xv), free(gv), free(x), free(dy);
            }
}
