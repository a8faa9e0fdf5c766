/* test_kernel_layer.c - the kernel layer takes new dtypes and epilogues as instantiations, not
 * copies: kernels.inc instantiated here, for the tests only, with a storage type other than its
 * compute type (float stored, double computed) and an epilogue that reads a second input
 * (y = max(bn(x) + z, 0)), then composed as the library composes its own kernels (moments,
 * finish, coefficients, normalize) and checked against the reference (src/reference), in both
 * layouts; and a bfloat16 instantiation. */
#include "check.h"
#include "testutil.h"

#include "finish.h"
#include "half.h"
#include "kernel_types.h"
#include "reference/reference.h"

#include <stdlib.h>
#include <string.h>

#define SUF f32d_add_relu
#define S float
#define COMPUTE 64
#define STORE_KIND BN_STORE_PLAIN
#define EPILOGUE BN_EPILOGUE_ADD_RELU
#define PRIMARY 1 /* every kernel: this instantiation has no twin */
#define LOADW(p) __builtin_convertvector(*(const bn_v8f_u *)(p), bn_v8d)
#define STORE_PLAIN(p, v) (*(bn_v8f_u *)(p) = __builtin_convertvector((v), bn_v8f))
#define LD1(v) ((double)(v))
#define ST1(v) ((float)(v))
#include "kernels.inc"

/* bfloat16 storage computed in float, as kernels_isa.c instantiates it (HALF: half_vec.h's
 * conversions), here once more in the tests' own build. */
#define SUF bf16
#define S uint16_t
#define HALF bf16
#define COMPUTE 32
#define STORE_KIND BN_STORE_PLAIN
#define EPILOGUE BN_EPILOGUE_NONE
#include "kernels.inc"

/* The reference (src/reference): the training forward pass of the float values, in long double,
 * then y = max(y + z, 0), each value rounded to float as the instantiation stores it. */
static void reference(const bn_desc *d, const float *x, const float *z, const float *w,
                      const float *b, double eps, double *y) {
    const int64_t count = tu_numel(d);
    double *xd = tu_to_double(x, count, BN_FLOAT32), *zd = tu_to_double(z, count, BN_FLOAT32);
    double *wd = tu_to_double(w, d->c, BN_FLOAT32), *bd = tu_to_double(b, d->c, BN_FLOAT32);
    const bn_options opt = tu_options(eps, 0.1, 0);
    bn_ref_forward_train(y, NULL, NULL, NULL, NULL, NULL, xd, wd, bd, d, &opt);
    bn_ref_add_relu(y, zd, count);
    for (int64_t i = 0; i < count; i++) y[i] = (double)(float)y[i];
    free(xd), free(zd), free(wd), free(bd);
}

/* The composition of forward.c, written out for this table: moments, finish, normalize. */
static void run(const bn_kernels *k, const bn_desc *d, const float *x, const float *z,
                const float *w, const float *b, double eps, float *y) {
    const int64_t C = d->c, rows = d->n * d->s;
    bn_moments *mom = calloc((size_t)C, sizeof *mom);
    double *ws = calloc(7 * (size_t)C, sizeof(double));
    k->load(ws, w, C, 1.0);
    k->load(ws + C, b, C, 0.0);
    const bn_train_finish fin = {.k = k, .count = (double)rows, .eps = eps, .w = ws,
                                 .b = ws + C, .tmp = ws + 2 * C, .invstd = ws + 3 * C,
                                 .scale = ws + 4 * C, .shift = ws + 5 * C, .mean = ws + 6 * C};
    double *scale = fin.scale, *shift = fin.shift, *mean = ws + 6 * C;
    double *coef = calloc(BN_COEF_COUNT * (size_t)C, sizeof(double));
    if (d->layout == BN_CHANNELS_LAST) {
        /* asking for rows ahead or not changes no bit */
        bn_moments *again = calloc((size_t)C, sizeof *again);
        k->cl_moments(mom, x, rows, C, C, 1);
        k->cl_moments(again, x, rows, C, C, 0);
        CHECK(memcmp(mom, again, (size_t)C * sizeof *again) == 0);
        free(again);
    } else {
        for (int64_t c = 0; c < C; c++) mom[c] = k->cf_moments(x + c * d->s, d->n, d->s, C * d->s);
    }
    bn_finish_train(&fin, mom, 0, C);
    if (d->layout == BN_CHANNELS_LAST) {
        k->coefs(coef, C, 0, C, mean, scale, shift, NULL, NULL);
        k->cl_normalize(y, x, z, rows, C, C, coef);
    } else {
        /* every channel-first output kernel in turn: whole channels, one riding along the
         * next one's statistics, and rows of a sample from coefficients */
        for (int64_t c = 0; c < C; c++) {
            const int64_t at = c * d->s;
            if (c % 3 == 0) {
                k->cf_normalize(y + at, x + at, z + at, d->n, d->s, C * d->s, mean[c], scale[c],
                                shift[c]);
            } else if (c % 3 == 1 && c + 1 < C) {
                const bn_moments next = k->cf_normalize_next(y + at, x + at, z + at,
                                                             x + at + d->s, d->n, d->s, C * d->s,
                                                             mean[c], scale[c], shift[c]);
                CHECK(next.count == mom[c + 1].count && next.mean == mom[c + 1].mean &&
                      next.m2 == mom[c + 1].m2);
            } else {
                k->coefs(coef, C, c, c + 1, mean, scale, shift, NULL, NULL);
                for (int64_t i = 0; i < d->n; i++) {
                    const int64_t row = (i * C + c) * d->s;
                    k->cf_normalize_rows(y + row, x + row, z + row, 1, d->s, coef + c, C);
                }
            }
        }
    }
    free(mom), free(ws), free(coef);
}

BN_SUITE(suite_kernel_layer_instantiation) {
    const bn_kernels *k = &bn_kernels_f32d_add_relu;
    CHECK(k->elem_size == sizeof(float) && k->coef_size == sizeof(double));
    static const int64_t shapes[][3] = {{20, 2, 1}, {16, 37, 301}, {3, 19, 2048}, {300, 70, 1}};
    for (size_t q = 0; q < sizeof shapes / sizeof shapes[0]; q++)
        for (int lay = 0; lay < 2; lay++) {
            const bn_desc d = tu_desc(shapes[q][0], shapes[q][1], shapes[q][2], BN_FLOAT32,
                                      (bn_layout)lay);
            const int64_t count = tu_numel(&d), C = d.c;
            tu_rng r = tu_rng_new(77 + q);
            double *xv = tu_randn(&r, count, 1e3, 2), *zv = tu_randn(&r, count, 0, 1);
            double *wv = tu_randn(&r, C, 1, 0.3), *bv = tu_randn(&r, C, 0, 0.5);
            float *x = tu_to_dtype(xv, count, BN_FLOAT32), *z = tu_to_dtype(zv, count, BN_FLOAT32);
            float *w = tu_to_dtype(wv, C, BN_FLOAT32), *b = tu_to_dtype(bv, C, BN_FLOAT32);
            float *y = malloc(sizeof(float) * (size_t)count);
            double *want = malloc(sizeof(double) * (size_t)count);
            run(k, &d, x, z, w, b, 1e-5, y);
            reference(&d, x, z, w, b, 1e-5, want);
            int64_t zeros = 0, bad = 0;
            for (int64_t i = 0; i < count; i++) {
                const double err = fabs((double)y[i] - want[i]) / fmax(1, fabs(want[i]));
                if (!(err <= 1e-6)) bad++; /* a NaN fails */
                zeros += y[i] == 0;
            }
            CHECK_MSG(bad == 0, "%lldx%lldx%lld layout %d: %lld values off the reference",
                      (long long)d.n, (long long)C, (long long)d.s, lay, (long long)bad);
            /* the ReLU cut about half the values: the epilogue ran */
            CHECK_MSG(zeros > count / 4 && zeros < 3 * count / 4, "%lld zeros of %lld",
                      (long long)zeros, (long long)count);
            free(xv), free(zv), free(wv), free(bv), free(x), free(z), free(w), free(b), free(y);
            free(want);
        }
}

/* The one dtype switch: every dtype the API knows has kernels, anything else has none (the
 * callers' BN_ERR_UNSUPPORTED), and the kernels store the dtype they are for. */
BN_SUITE(suite_kernel_layer_dispatch) {
    CHECK(bn_kernels_for(BN_FLOAT32, 0)->elem_size == 4);
    CHECK(bn_kernels_for(BN_FLOAT64, 0)->elem_size == 8);
    CHECK(bn_kernels_for(BN_FLOAT32, 1)->elem_size == 4);
    CHECK(bn_kernels_for((bn_dtype)7, 0) == NULL);
    CHECK(bn_kernels_for((bn_dtype)-1, 1) == NULL);
}

/* bfloat16 storage: the statistics of the stored values in double, the output computed in float
 * and rounded to bfloat16, against a long-double reference rounded the same way (within one
 * bfloat16 step, 2^-8 relative). */
BN_SUITE(suite_kernel_layer_bfloat16) {
    const bn_kernels *k = &bn_kernels_bf16;
    CHECK(k->elem_size == 2 && k->coef_size == sizeof(float));
    static const int64_t shapes[][3] = {{20, 2, 1}, {16, 37, 301}, {300, 70, 1}};
    for (size_t q = 0; q < sizeof shapes / sizeof shapes[0]; q++)
        for (int lay = 0; lay < 2; lay++) {
            const bn_desc d = tu_desc(shapes[q][0], shapes[q][1], shapes[q][2], BN_FLOAT32,
                                      (bn_layout)lay);
            const int64_t count = tu_numel(&d), C = d.c, rows = d.n * d.s;
            tu_rng r = tu_rng_new(500 + q);
            uint16_t *x = malloc(2 * (size_t)count), *y = malloc(2 * (size_t)count);
            float *xf = malloc(sizeof(float) * (size_t)count);
            float *w = malloc(sizeof(float) * (size_t)C), *b = malloc(sizeof(float) * (size_t)C);
            uint16_t *wh = malloc(2 * (size_t)C), *bh = malloc(2 * (size_t)C);
            for (int64_t i = 0; i < count; i++) {
                x[i] = bn_float_to_bf16((float)(3 + 2 * tu_normal(&r)));
                xf[i] = bn_bf16_to_float(x[i]);
            }
            for (int64_t c = 0; c < C; c++) {
                wh[c] = bn_float_to_bf16((float)(1 + 0.3 * tu_normal(&r)));
                bh[c] = bn_float_to_bf16((float)(0.5 * tu_normal(&r)));
                w[c] = bn_bf16_to_float(wh[c]), b[c] = bn_bf16_to_float(bh[c]);
            }
            bn_moments *mom = calloc((size_t)C, sizeof *mom);
            double *ws = calloc(7 * (size_t)C, sizeof(double));
            float *coef = calloc(BN_COEF_COUNT * (size_t)C, sizeof(float));
            k->load(ws + 6 * C, wh, C, 1.0);
            k->load(ws + C, bh, C, 0.0);
            const bn_train_finish fin = {.k = k, .count = (double)rows, .eps = 1e-5,
                                         .w = ws + 6 * C, .b = ws + C,
                                         .tmp = ws + 2 * C, .invstd = ws + 5 * C,
                                         .scale = ws + 3 * C, .shift = ws + 4 * C,
                                         .mean = ws};
            if (lay == BN_CHANNELS_LAST)
                k->cl_moments(mom, x, rows, C, C, rows % 2);
            else
                for (int64_t c = 0; c < C; c++) mom[c] = k->cf_moments(x + c * d.s, d.n, d.s, C * d.s);
            bn_finish_train(&fin, mom, 0, C);
            const double *mean = fin.mean; /* the weights, loaded, are at ws + 6 C */
            if (lay == BN_CHANNELS_LAST) {
                k->coefs(coef, C, 0, C, mean, fin.scale, fin.shift, NULL, NULL);
                k->cl_normalize(y, x, NULL, rows, C, C, coef);
            } else {
                for (int64_t c = 0; c < C; c++)
                    k->cf_normalize(y + c * d.s, x + c * d.s, NULL, d.n, d.s, C * d.s,
                                    mean[c], fin.scale[c], fin.shift[c]);
            }
            /* the reference: the training pass of the stored values, in long double */
            double *xd = tu_to_double(xf, count, BN_FLOAT32), *want = malloc(sizeof(double) * (size_t)count);
            double *wd = tu_to_double(w, C, BN_FLOAT32), *bd = tu_to_double(b, C, BN_FLOAT32);
            bn_moments *ref_mom = calloc((size_t)C, sizeof *ref_mom);
            const bn_options opt = tu_options(1e-5, 0.1, 0);
            bn_ref_moments(ref_mom, xd, &d);
            bn_ref_forward_train(want, NULL, NULL, NULL, NULL, NULL, xd, wd, bd, &d, &opt);
            int64_t bad = 0;
            /* float statistics about a pivot: within the bound of pivot.h, 11u of the deviation
             * for the mean and 22u of M2 */
            for (int64_t c = 0; c < C; c++) {
                const double sd = sqrt(ref_mom[c].m2 / (double)ref_mom[c].count);
                CHECK(fabs(mom[c].mean - ref_mom[c].mean) <= 11 * 0x1p-24 * sd &&
                      fabs(mom[c].m2 - ref_mom[c].m2) <= 22 * 0x1p-24 * ref_mom[c].m2);
            }
            for (int64_t i = 0; i < count; i++)
                if (!(fabs(bn_bf16_to_float(y[i]) - want[i]) <= 0x1p-8 * fmax(1, fabs(want[i])))) bad++;
            free(xd), free(want), free(wd), free(bd), free(ref_mom);
            CHECK_MSG(bad == 0, "bfloat16 %lldx%lldx%lld layout %d: %lld values off",
                      (long long)d.n, (long long)C, (long long)d.s, lay, (long long)bad);
            free(x), free(y), free(xf), free(w), free(b), free(wh), free(bh);
            free(mom), free(ws), free(coef);
        }
}

/* Eval of bfloat16 storage: the coefficients straight from the stored statistics (eval_coefs),
 * then the element-wise pass of either layout, against the reference's eval of the stored
 * values (within one bfloat16 step); with and without weight and bias, and a channel whose
 * weight is 0 (its output is the bias, whatever x is: bn_centre). */
BN_SUITE(suite_kernel_layer_bfloat16_eval) {
    const bn_kernels *k = &bn_kernels_bf16;
    static const int64_t shapes[][3] = {{2, 1024, 1}, {5, 37, 301}, {300, 70, 1}};
    for (size_t q = 0; q < sizeof shapes / sizeof shapes[0]; q++)
        for (int lay = 0; lay < 2; lay++)
            for (int affine = 0; affine < 2; affine++) {
                const bn_desc d = tu_desc(shapes[q][0], shapes[q][1], shapes[q][2], BN_FLOAT32,
                                          (bn_layout)lay);
                const int64_t count = tu_numel(&d), C = d.c, rows = d.n * d.s;
                tu_rng r = tu_rng_new(900 + q);
                uint16_t *x = malloc(2 * (size_t)count), *y = malloc(2 * (size_t)count);
                uint16_t *st = malloc(2 * 4 * (size_t)C); /* rm, rv, w, b */
                double *xd = malloc(sizeof(double) * (size_t)count);
                double *sd = malloc(sizeof(double) * 4 * (size_t)C);
                for (int64_t i = 0; i < count; i++) {
                    x[i] = bn_float_to_bf16((float)(3 + 2 * tu_normal(&r)));
                    xd[i] = bn_bf16_to_float(x[i]);
                }
                for (int64_t c = 0; c < C; c++) {
                    const double v[4] = {3 + 0.5 * tu_normal(&r), 4 * (1 + tu_uniform(&r)),
                                         c == 1 ? 0.0 : 1 + 0.3 * tu_normal(&r),
                                         0.5 * tu_normal(&r)};
                    for (int j = 0; j < 4; j++) {
                        st[j * C + c] = bn_float_to_bf16((float)v[j]);
                        sd[j * C + c] = bn_bf16_to_float(st[j * C + c]);
                    }
                }
                const uint16_t *w = affine ? st + 2 * C : NULL, *b = affine ? st + 3 * C : NULL;
                float *coef = calloc(BN_COEF_COUNT * (size_t)C, sizeof(float));
                k->eval_coefs(coef, C, C, st, st + C, w, b, 1e-5);
                if (lay == BN_CHANNELS_LAST)
                    k->cl_normalize(y, x, NULL, rows, C, C, coef);
                else
                    for (int64_t i = 0; i < d.n; i++)
                        k->cf_normalize_rows(y + i * C * d.s, x + i * C * d.s, NULL, C, d.s, coef,
                                             C);
                double *want = malloc(sizeof(double) * (size_t)count);
                bn_ref_forward_eval(want, xd, sd, sd + C, affine ? sd + 2 * C : NULL,
                                    affine ? sd + 3 * C : NULL, &d, 1e-5);
                int64_t bad = 0;
                for (int64_t i = 0; i < count; i++)
                    if (!(fabs(bn_bf16_to_float(y[i]) - want[i]) <= 0x1p-8 * fmax(1, fabs(want[i]))))
                        bad++;
                CHECK_MSG(bad == 0, "bfloat16 eval %lldx%lldx%lld layout %d affine %d: %lld off",
                          (long long)d.n, (long long)C, (long long)d.s, lay, affine,
                          (long long)bad);
                if (affine) /* channel 1 has weight 0: every output is its bias */
                    for (int64_t i = 0; i < d.n; i++)
                        CHECK(bn_bf16_to_float(y[lay == BN_CHANNELS_LAST ? i * d.s * C + 1
                                                                      : (i * C + 1) * d.s]) ==
                              bn_bf16_to_float(st[3 * C + 1]));
                free(x), free(y), free(st), free(xd), free(sd), free(coef), free(want);
            }
}

/* The kernel sets (kernels_isa.c, one per instruction set): the one running is named, a set is
 * chosen by name only where the CPU has it, and every set the CPU has gives the baseline's bits
 * in the passes that differ most between sets (the AVX2 set sweeps its sums lane by lane):
 * long and short channels-first rows, channels-last, training and backward, all four dtypes. */
BN_SUITE(suite_kernel_layer_sets) {
    const char *best = bn_kernels_isa();
    CHECK(!strcmp(best, "avx512f") || !strcmp(best, "avx2") || !strcmp(best, "x86-64") ||
          !strcmp(best, "portable"));
    CHECK(!bn_kernel_force_isa("sse9"));
    CHECK(!strcmp(bn_kernels_isa(), best));
    const char *base = !strcmp(best, "portable") ? "portable" : "x86-64";
    static const int64_t shapes[][4] = {{16, 37, 301, 0}, {32, 40, 49, 0}, {4, 19, 7, 0},
                                        {300, 70, 1, 1},  {4, 300, 30, 1}};
    static const char *const sets[] = {"avx512f", "avx2", "x86-64"};
    for (size_t q = 0; q < sizeof shapes / sizeof shapes[0]; q++)
        for (int dt = 0; dt < 4; dt++) { /* float32, float64, bfloat16, float16 */
            const bn_desc d = tu_desc(shapes[q][0], shapes[q][1], shapes[q][2], (bn_dtype)dt,
                                      (bn_layout)shapes[q][3]);
            const int64_t count = tu_numel(&d), C = d.c;
            const size_t es = dt == BN_FLOAT64 ? 8 : dt == BN_FLOAT32 ? 4 : 2;
            tu_rng r = tu_rng_new(900 + q);
            double *xv = tu_randn(&r, count, 7, 2), *gv = tu_randn(&r, count, 0.1, 1);
            void *x = tu_to_dtype(xv, count, d.dtype), *dy = tu_to_dtype(gv, count, d.dtype);
            void *out[2][2];
            double *stats[2][2];
            for (int k = 0; k < 2; k++) {
                for (int m = 0; m < 2; m++) {
                    out[k][m] = malloc(es * (size_t)count);
                    stats[k][m] = malloc(sizeof(double) * (size_t)C);
                }
            }
            bn_options opt = BN_OPTIONS_DEFAULT;
            for (int k = 0; k < 2; k++) { /* k = 0: the baseline; 1: each other set in turn */
                for (size_t s = 0; s < (k ? sizeof sets / sizeof sets[0] : 1); s++) {
                    if (!bn_kernel_force_isa(k ? sets[s] : base)) continue;
                    CHECK_STATUS(bn_forward_train(out[k][0], stats[k][0], stats[k][1], NULL,
                                                  NULL, NULL, x, NULL, NULL, &d, &opt),
                                 BN_OK);
                    CHECK_STATUS(bn_backward_train(out[k][1], NULL, NULL, dy, x, stats[k][0],
                                                   stats[k][1], NULL, &d),
                                 BN_OK);
                    if (!k) continue;
                    for (int m = 0; m < 2; m++) {
                        CHECK_MSG(!memcmp(out[0][m], out[1][m], es * (size_t)count),
                                  "set %s, shape %zu, dtype %d: %s differs from the baseline",
                                  sets[s], q, dt, m ? "dx" : "y");
                        CHECK_MSG(!memcmp(stats[0][m], stats[1][m], sizeof(double) * (size_t)C),
                                  "set %s, shape %zu, dtype %d: saved statistics differ", sets[s],
                                  q, dt);
                    }
                }
            }
            bn_kernel_force_isa(NULL);
            for (int k = 0; k < 2; k++)
                for (int m = 0; m < 2; m++) free(out[k][m]), free(stats[k][m]);
            free(xv), free(gv), free(x), free(dy);
        }
    CHECK(!strcmp(bn_kernels_isa(), best));
}
