/* test_fused.c - batch norm with a ReLU, and with a residual add before it, in one pass:
 *   - float32 and float64: the fused forward passes give the bits of the plain pass followed by
 *     max(y + z, 0) in the same type, in every kernel set, with plain and streaming stores;
 *   - bfloat16 and float16: within one rounding of the float64 reference relu(bn(x) + z);
 *   - the backward passes give dz = dy where y > 0 (else 0) and the plain backward's bits of it;
 *   - errors: ghost batches, no place for the masked gradient, missing tensors; nothing written.
 * The reference is src/reference (bn_ref_relu, bn_ref_add_relu, bn_ref_relu_backward). */
#include "check.h"
#include "testutil.h"

#include "half.h"
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static size_t size_of(bn_dtype t) { return t == BN_FLOAT64 ? 8 : t == BN_FLOAT32 ? 4 : 2; }

/* max(y + z, 0) (z NULL: max(y, 0)) in place, in y's own type (float32, float64). */
static void relu_after(void *y, const void *z, int64_t count, bn_dtype dt) {
    for (int64_t k = 0; k < count; k++) {
        if (dt == BN_FLOAT32) {
            float *v = y;
            const float t = z ? v[k] + ((const float *)z)[k] : v[k];
            v[k] = t <= 0 ? 0.0f : t;
        } else {
            double *v = y;
            const double t = z ? v[k] + ((const double *)z)[k] : v[k];
            v[k] = t <= 0 ? 0.0 : t;
        }
    }
}

static const int64_t shapes[][3] = {{64, 40, 1}, {6, 20, 7}, {5, 3, 1100}, {4, 33, 64}, {3, 17, 5}};

/* float32 and float64: fused == plain, then the epilogue, bit for bit; train and eval. */
BN_SUITE(suite_fused_forward_is_plain_then_relu) {
    static const char *const sets[] = {"avx512f", "avx2", "x86-64", "portable"};
    for (size_t set = 0; set < sizeof sets / sizeof sets[0]; set++) {
        if (!bn_kernel_force_isa(sets[set])) continue;
        for (int dt = 0; dt < 2; dt++)
            for (int lay = 0; lay < 2; lay++)
                for (size_t q = 0; q < sizeof shapes / sizeof shapes[0]; q++)
                    for (int add = 0; add < 2; add++) {
                        const bn_desc d = tu_desc(shapes[q][0], shapes[q][1], shapes[q][2],
                                                  (bn_dtype)dt, (bn_layout)lay);
                        const int64_t count = tu_numel(&d), C = d.c;
                        const size_t es = size_of(d.dtype), big = es * (size_t)count;
                        tu_rng r = tu_rng_new(300 + q);
                        double *xv = tu_randn(&r, count, 0.5, 2), *zv = tu_randn(&r, count, 0, 1);
                        double *pv = tu_randn(&r, 4 * C, 0.5, 0.5);
                        void *x = tu_to_dtype(xv, count, d.dtype), *z = tu_to_dtype(zv, count, d.dtype);
                        void *p = tu_to_dtype(pv, 4 * C, d.dtype);
                        const char *w = p, *b = w + es * C;
                        char *rm1 = malloc(2 * es * C), *rm2 = malloc(2 * es * C);
                        for (int64_t c = 0; c < C; c++) { /* rm, rv: 0.5 +- and a positive var */
                            memcpy(rm1 + es * c, (char *)p + es * (2 * C + c), es);
                        }
                        memcpy(rm1 + es * C, (char *)p + es * 3 * C, es * C);
                        for (int64_t c = 0; c < C; c++) {
                            if (d.dtype == BN_FLOAT32) ((float *)(rm1 + es * C))[c] = fabsf(((float *)(rm1 + es * C))[c]) + 0.1f;
                            else ((double *)(rm1 + es * C))[c] = fabs(((double *)(rm1 + es * C))[c]) + 0.1;
                        }
                        memcpy(rm2, rm1, 2 * es * C);
                        void *y1 = malloc(big), *y2 = malloc(big);
                        double sm1[64], si1[64], sm2[64], si2[64];
                        const bn_options opt = BN_OPTIONS_DEFAULT;
                        const void *zz = add ? z : NULL;
                        CHECK_STATUS(bn_forward_train(y1, sm1, si1, rm1, rm1 + es * C, NULL, x, w, b, &d, &opt), BN_OK);
                        relu_after(y1, zz, count, d.dtype);
                        CHECK_STATUS(bn_forward_train_relu(y2, sm2, si2, rm2, rm2 + es * C, NULL, x, zz, w, b, &d, &opt), BN_OK);
                        CHECK_MSG(!memcmp(y1, y2, big) && !memcmp(sm1, sm2, 8 * (size_t)C) &&
                                      !memcmp(si1, si2, 8 * (size_t)C) && !memcmp(rm1, rm2, 2 * es * C),
                                  "set %s dtype %d layout %d shape %zu add %d: training differs", sets[set], dt, lay, q, add);
                        CHECK_STATUS(bn_forward_eval(y1, x, rm1, rm1 + es * C, w, b, &d, 1e-5), BN_OK);
                        relu_after(y1, zz, count, d.dtype);
                        CHECK_STATUS(bn_forward_eval_relu(y2, x, zz, rm2, rm2 + es * C, w, b, &d, 1e-5), BN_OK);
                        CHECK_MSG(!memcmp(y1, y2, big), "set %s dtype %d layout %d shape %zu add %d: eval differs",
                                  sets[set], dt, lay, q, add);
                        /* in place: y over z (the residual's buffer) */
                        if (add) {
                            memcpy(y2, z, big);
                            CHECK_STATUS(bn_forward_eval_relu(y2, x, y2, rm2, rm2 + es * C, w, b, &d, 1e-5), BN_OK);
                            CHECK(!memcmp(y1, y2, big));
                        }
                        free(xv), free(zv), free(pv), free(x), free(z), free(p), free(rm1), free(rm2);
                        free(y1), free(y2);
                    }
    }
    bn_kernel_force_isa(NULL);
}

/* bfloat16 and float16: within one rounding of relu(bn(x) + z) in float64. */
BN_SUITE(suite_fused_forward_half_one_rounding) {
    static const bn_dtype halves[2] = {BN_BFLOAT16, BN_FLOAT16};
    for (int h = 0; h < 2; h++)
        for (int lay = 0; lay < 2; lay++)
            for (size_t q = 0; q < sizeof shapes / sizeof shapes[0]; q++)
                for (int add = 0; add < 2; add++) {
                    const bn_dtype dt = halves[h];
                    bn_desc d = tu_desc(shapes[q][0], shapes[q][1], shapes[q][2], dt, (bn_layout)lay);
                    d.params = BN_PARAMS_FLOAT32;
                    const int64_t count = tu_numel(&d);
                    tu_rng r = tu_rng_new(400 + q);
                    double *xv = tu_randn(&r, count, 1, 2), *zv = tu_randn(&r, count, 0, 1);
                    void *x = tu_to_dtype(xv, count, dt), *z = tu_to_dtype(zv, count, dt);
                    double *xd = tu_to_double(x, count, dt), *zd = tu_to_double(z, count, dt);
                    uint16_t *y = malloc(2 * (size_t)count);
                    double *ry = malloc(8 * (size_t)count);
                    const bn_options opt = BN_OPTIONS_DEFAULT;
                    CHECK_STATUS(bn_forward_train_relu(y, NULL, NULL, NULL, NULL, NULL, x, add ? z : NULL,
                                                       NULL, NULL, &d, &opt), BN_OK);
                    bn_ref_forward_train(ry, NULL, NULL, NULL, NULL, NULL, xd, NULL, NULL, &d, &opt);
                    if (add) bn_ref_add_relu(ry, zd, count);
                    else bn_ref_relu(ry, count);
                    int64_t bad = 0;
                    for (int64_t k = 0; k < count; k++) {
                        const double v = dt == BN_BFLOAT16 ? bn_bf16_to_float(y[k]) : bn_f16_to_float(y[k]);
                        const double ulp = ldexp(1.0, ilogb(fmax(fabs(ry[k]), 0x1p-14)) - (dt == BN_BFLOAT16 ? 7 : 10));
                        bad += !(fabs(v - ry[k]) <= ulp / 2 + 4e-6 * fmax(1, fabs(ry[k])));
                    }
                    CHECK_MSG(bad == 0, "dtype %d layout %d shape %zu add %d: %lld values off", dt, lay, q, add,
                              (long long)bad);
                    free(xv), free(zv), free(x), free(z), free(xd), free(zd), free(y), free(ry);
                }
}

/* The backward passes: dz is the masked dy, and dx, dweight, dbias the plain backward's of it. */
BN_SUITE(suite_fused_backward_is_the_plain_backward_of_the_mask) {
    for (int dt = 0; dt < 4; dt++)
        for (int lay = 0; lay < 2; lay++)
            for (size_t q = 0; q < sizeof shapes / sizeof shapes[0]; q++) {
                const bn_desc d = tu_desc(shapes[q][0], shapes[q][1], shapes[q][2], (bn_dtype)dt, (bn_layout)lay);
                const int64_t count = tu_numel(&d), C = d.c;
                const size_t es = size_of(d.dtype), big = es * (size_t)count;
                tu_rng r = tu_rng_new(500 + q);
                double *xv = tu_randn(&r, count, 0.3, 1), *gv = tu_randn(&r, count, 0, 1);
                double *wv = tu_randn(&r, C, 1, 0.2), *yv = tu_randn(&r, count, 0, 1);
                for (int64_t k = 0; k < count; k += 7) yv[k] = 0;         /* exact zeros: masked */
                for (int64_t k = 3; k < count; k += 11) yv[k] = NAN;      /* NaN: masked */
                for (int64_t k = 0; k < count; k++) if (yv[k] < 0) yv[k] = 0;
                void *x = tu_to_dtype(xv, count, d.dtype), *dy = tu_to_dtype(gv, count, d.dtype);
                void *w = tu_to_dtype(wv, C, d.dtype), *y = tu_to_dtype(yv, count, d.dtype);
                double *yd = tu_to_double(y, count, d.dtype), *gd = tu_to_double(dy, count, d.dtype);
                double *maskd = malloc(8 * (size_t)count);
                bn_ref_relu_backward(maskd, NULL, gd, yd, count);
                void *g = tu_to_dtype(maskd, count, d.dtype); /* exact: dy's values or 0 */
                double sm[64], si[64];
                const bn_options opt = BN_OPTIONS_DEFAULT;
                void *yt = malloc(big);
                CHECK_STATUS(bn_forward_train(yt, sm, si, NULL, NULL, NULL, x, w, NULL, &d, &opt), BN_OK);
                void *dx1 = malloc(big), *dx2 = malloc(big), *dz = malloc(big);
                char dw1[512], db1[512], dw2[512], db2[512];
                CHECK_STATUS(bn_backward_train(dx1, dw1, db1, g, x, sm, si, w, &d), BN_OK);
                CHECK_STATUS(bn_backward_train_relu(dx2, dz, dw2, db2, dy, y, x, sm, si, w, &d), BN_OK);
                CHECK_MSG(!memcmp(dx1, dx2, big) && !memcmp(dz, g, big) && !memcmp(dw1, dw2, es * C) &&
                              !memcmp(db1, db2, es * C),
                          "dtype %d layout %d shape %zu: training backward differs", dt, lay, q);
                /* dx alone (the mask formed in dx), and in place over dy */
                memset(dx2, 0, big);
                CHECK_STATUS(bn_backward_train_relu(dx2, NULL, dw2, NULL, dy, y, x, sm, si, w, &d), BN_OK);
                CHECK(!memcmp(dx1, dx2, big) && !memcmp(dw1, dw2, es * C));
                void *inplace = malloc(big);
                memcpy(inplace, dy, big);
                CHECK_STATUS(bn_backward_train_relu(inplace, NULL, NULL, NULL, inplace, y, x, sm, si, w, &d), BN_OK);
                CHECK(!memcmp(dx1, inplace, big));
                /* dz alone */
                memset(dz, 0xff, big);
                CHECK_STATUS(bn_backward_train_relu(NULL, dz, NULL, NULL, dy, y, x, sm, si, w, &d), BN_OK);
                CHECK(!memcmp(dz, g, big));
                /* eval */
                void *rm = tu_to_dtype(xv, C, d.dtype), *rv = tu_to_dtype(wv, C, d.dtype);
                CHECK_STATUS(bn_backward_eval(dx1, dw1, db1, g, x, rm, rv, w, &d, 1e-5), BN_OK);
                CHECK_STATUS(bn_backward_eval_relu(dx2, dz, dw2, db2, dy, y, x, rm, rv, w, &d, 1e-5), BN_OK);
                CHECK_MSG(!memcmp(dx1, dx2, big) && !memcmp(dz, g, big) && !memcmp(dw1, dw2, es * C) &&
                              !memcmp(db1, db2, es * C),
                          "dtype %d layout %d shape %zu: eval backward differs", dt, lay, q);
                free(xv), free(gv), free(wv), free(yv), free(x), free(dy), free(w), free(y), free(yd);
                free(gd), free(maskd), free(g), free(yt), free(dx1), free(dx2), free(dz), free(inplace);
                free(rm), free(rv);
            }
}

/* Streaming stores (a tensor past the thresholds) give the same bits as plain ones. */
BN_SUITE(suite_fused_streaming_stores) {
    const bn_desc d = tu_desc(2, 20, 330000, BN_FLOAT32, BN_CHANNELS_FIRST);
    const int64_t count = tu_numel(&d);
    tu_rng r = tu_rng_new(11);
    double *xv = tu_randn(&r, count, 1, 1), *zv = tu_randn(&r, count, 0, 1);
    float *x = tu_to_dtype(xv, count, BN_FLOAT32), *z = tu_to_dtype(zv, count, BN_FLOAT32);
    float *y[2] = {malloc(4 * (size_t)count), malloc(4 * (size_t)count)};
    float rm[20] = {0}, rv[20];
    for (int c = 0; c < 20; c++) rv[c] = 1.5f;
    const bn_options opt = BN_OPTIONS_DEFAULT;
    for (int m = 0; m < 2; m++) {
        for (int plain = 0; plain < 2; plain++) {
            bn_kernel_force_plain_stores(plain);
            const bn_status st = m ? bn_forward_eval_relu(y[plain], x, z, rm, rv, NULL, NULL, &d, 1e-5)
                                   : bn_forward_train_relu(y[plain], NULL, NULL, NULL, NULL, NULL, x, z, NULL, NULL, &d, &opt);
            CHECK_STATUS(st, BN_OK);
        }
        bn_kernel_force_plain_stores(0);
        CHECK_MSG(!memcmp(y[0], y[1], 4 * (size_t)count), "%s: streaming and plain stores differ", m ? "eval" : "train");
    }
    free(xv), free(zv), free(x), free(z), free(y[0]), free(y[1]);
}

BN_SUITE(suite_fused_errors_write_nothing) {
    const bn_desc d = tu_desc(4, 3, 5, BN_FLOAT32, BN_CHANNELS_FIRST);
    float x[60], z[60], y[60], dy[60], dx[60], dz[60], dw[3], keep[60];
    for (int k = 0; k < 60; k++) x[k] = (float)(k % 7), z[k] = dy[k] = 1, y[k] = dx[k] = dz[k] = 42;
    memcpy(keep, y, sizeof keep);
    double sm[3] = {0, 0, 0}, si[3] = {1, 1, 1};
    bn_options ghost = BN_OPTIONS_DEFAULT;
    ghost.virtual_batch = 2;
    CHECK_STATUS(bn_forward_train_relu(y, NULL, NULL, NULL, NULL, NULL, x, z, NULL, NULL, &d, &ghost), BN_ERR_ARGUMENT);
    CHECK_STATUS(bn_forward_train_relu(y, NULL, NULL, NULL, NULL, NULL, NULL, z, NULL, NULL, &d, &ghost), BN_ERR_NULL_POINTER);
    float rm[3] = {0, 0, 0}, rv[3] = {1, 1, 1};
    CHECK_STATUS(bn_forward_eval_relu(y, x, z, rm, NULL, NULL, NULL, &d, 1e-5), BN_ERR_NULL_POINTER);
    CHECK_STATUS(bn_forward_eval_relu(y, x, z, rm, rv, NULL, NULL, &d, -1), BN_ERR_ARGUMENT);
    CHECK(!memcmp(y, keep, sizeof keep));
    /* the masked gradient has no place: dweight asked for without dx or dz */
    CHECK_STATUS(bn_backward_train_relu(NULL, NULL, dw, NULL, dy, y, x, sm, si, NULL, &d), BN_ERR_NULL_POINTER);
    CHECK_STATUS(bn_backward_train_relu(dx, dz, NULL, NULL, dy, NULL, x, sm, si, NULL, &d), BN_ERR_NULL_POINTER);
    CHECK_STATUS(bn_backward_eval_relu(dx, dz, NULL, NULL, dy, y, x, rm, rv, NULL, &d, NAN), BN_ERR_ARGUMENT);
    CHECK(!memcmp(dx, keep, sizeof keep) && !memcmp(dz, keep, sizeof keep));
}
