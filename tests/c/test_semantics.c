/* test_semantics.c - every rule of DESIGN.md's semantics table against the scalar reference
 * (src/reference). */
#include "check.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *layout_name(bn_layout l) { return l == BN_CHANNELS_LAST ? "last" : "first"; }
static double tol_of(bn_dtype dt) { return dt == BN_FLOAT32 ? 2e-6 : 1e-12; }

/* Forward (train and eval) and backward (train and eval) of one shape against the reference. */
static void check_shape(int64_t n, int64_t c, int64_t s, bn_dtype dt, bn_layout lay, int affine,
                        uint64_t seed) {
    bn_desc d = tu_desc(n, c, s, dt, lay);
    int64_t count = tu_numel(&d);
    tu_rng r = tu_rng_new(seed);
    double *xd = tu_randn(&r, count, 0.5, 2.0), *dyd = tu_randn(&r, count, 0, 1);
    double *wd = tu_randn(&r, c, 1, 0.5), *bd = tu_randn(&r, c, 0, 0.5);
    void *x = tu_to_dtype(xd, count, dt), *dy = tu_to_dtype(dyd, count, dt);
    void *w = affine ? tu_to_dtype(wd, c, dt) : NULL, *b = affine ? tu_to_dtype(bd, c, dt) : NULL;
    double *xr = tu_to_double(x, count, dt), *dyr = tu_to_double(dy, count, dt);
    double *wr = affine ? tu_to_double(w, c, dt) : NULL, *br = affine ? tu_to_double(b, c, dt) : NULL;
    void *y = tu_to_dtype(xd, count, dt), *dx = tu_to_dtype(xd, count, dt);
    void *dw = tu_to_dtype(wd, c, dt), *db = tu_to_dtype(wd, c, dt);
    double *save_mean = malloc(sizeof(double) * (size_t)c), *save_invstd = malloc(sizeof(double) * (size_t)c);
    double *ref_mean = malloc(sizeof(double) * (size_t)c), *ref_invstd = malloc(sizeof(double) * (size_t)c);
    double *yref = malloc(sizeof(double) * (size_t)count), *dxref = malloc(sizeof(double) * (size_t)count);
    double *dwref = malloc(sizeof(double) * (size_t)c), *dbref = malloc(sizeof(double) * (size_t)c);
    double *rm = tu_randn(&r, c, 0, 1), *rv = tu_randn(&r, c, 2, 0.1);
    void *rm_t = tu_to_dtype(rm, c, dt), *rv_t = tu_to_dtype(rv, c, dt);
    double *rmr = tu_to_double(rm_t, c, dt), *rvr = tu_to_double(rv_t, c, dt);
    const char *what = dt == BN_FLOAT32 ? "f32" : "f64";
    bn_options opt = BN_OPTIONS_DEFAULT;
    double tol = tol_of(dt);

    /* training forward and its saved statistics */
    CHECK_STATUS(bn_forward_train(y, save_mean, save_invstd, NULL, NULL, NULL, x, w, b, &d, &opt),
                 BN_OK);
    bn_ref_forward_train(yref, ref_mean, ref_invstd, NULL, NULL, NULL, xr, wr, br, &d, &opt);
    double *yd = tu_to_double(y, count, dt);
    CHECK_MSG(tu_max_rel_diff(yd, yref, count) <= tol, "train y %s %s (%lld,%lld,%lld) diff %g",
              what, layout_name(lay), (long long)n, (long long)c, (long long)s,
              tu_max_rel_diff(yd, yref, count));
    double worst_stat = 0;
    for (int64_t k = 0; k < c; k++) {
        worst_stat = tu_worst(worst_stat, fabs(save_mean[k] - ref_mean[k]) / fmax(1, fabs(ref_mean[k])));
        worst_stat = tu_worst(worst_stat, fabs(save_invstd[k] - ref_invstd[k]) / fmax(1, ref_invstd[k]));
    }
    /* float32 statistics are formed in float about a pivot, to the bound of pivot.h */
    CHECK_MSG(worst_stat <= (dt == BN_FLOAT32 ? 1e-6 : 1e-13), "saved mean/invstd %s %s diff %g",
              what, layout_name(lay), worst_stat);

    /* training backward */
    CHECK_STATUS(bn_backward_train(dx, dw, db, dy, x, save_mean, save_invstd, w, &d), BN_OK);
    bn_ref_backward_train(dxref, dwref, dbref, dyr, xr, ref_mean, ref_invstd, wr, &d);
    double *dxd = tu_to_double(dx, count, dt), *dwd = tu_to_double(dw, c, dt), *dbd = tu_to_double(db, c, dt);
    CHECK_MSG(tu_max_rel_diff(dxd, dxref, count) <= tol * 10, "train dx %s %s diff %g", what,
              layout_name(lay), tu_max_rel_diff(dxd, dxref, count));
    CHECK_MSG(tu_max_rel_diff(dwd, dwref, c) <= tol * 10 && tu_max_rel_diff(dbd, dbref, c) <= tol * 10,
              "train dweight/dbias %s %s", what, layout_name(lay));
    free(yd), free(dxd), free(dwd), free(dbd);

    /* eval forward and backward with stored statistics */
    CHECK_STATUS(bn_forward_eval(y, x, rm_t, rv_t, w, b, &d, opt.eps), BN_OK);
    bn_ref_forward_eval(yref, xr, rmr, rvr, wr, br, &d, opt.eps);
    yd = tu_to_double(y, count, dt);
    CHECK_MSG(tu_max_rel_diff(yd, yref, count) <= tol, "eval y %s %s diff %g", what,
              layout_name(lay), tu_max_rel_diff(yd, yref, count));
    CHECK_STATUS(bn_backward_eval(dx, dw, db, dy, x, rm_t, rv_t, w, &d, opt.eps), BN_OK);
    bn_ref_backward_eval(dxref, dwref, dbref, dyr, xr, rmr, rvr, wr, &d, opt.eps);
    dxd = tu_to_double(dx, count, dt), dwd = tu_to_double(dw, c, dt), dbd = tu_to_double(db, c, dt);
    CHECK_MSG(tu_max_rel_diff(dxd, dxref, count) <= tol * 10 &&
                  tu_max_rel_diff(dwd, dwref, c) <= tol * 10 &&
                  tu_max_rel_diff(dbd, dbref, c) <= tol * 10,
              "eval backward %s %s", what, layout_name(lay));
    free(yd), free(dxd), free(dwd), free(dbd);

    free(xd), free(dyd), free(wd), free(bd), free(x), free(dy), free(w), free(b), free(xr), free(dyr);
    free(wr), free(br), free(y), free(dx), free(dw), free(db), free(save_mean), free(save_invstd);
    free(ref_mean), free(ref_invstd);
    free(yref), free(dxref), free(dwref), free(dbref), free(rm), free(rv), free(rm_t), free(rv_t);
    free(rmr), free(rvr);
}

BN_SUITE(suite_semantics_reference) {
    static const int64_t shapes[][3] = {{20, 2, 1}, {7, 1, 1}, {2, 3, 5}, {3, 5, 7},
                                        {1, 4, 9}, {5, 3, 1}, {2, 2, 2500}, {13, 17, 11}};
    uint64_t seed = 1;
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
        for (int dt = 0; dt < 2; dt++)
            for (int lay = 0; lay < 2; lay++)
                for (int affine = 0; affine < 2; affine++)
                    check_shape(shapes[k][0], shapes[k][1], shapes[k][2], (bn_dtype)dt,
                                (bn_layout)lay, affine, seed++);
}

/* Running statistics: momentum blend with the unbiased variance; the counter counts batches. */
BN_SUITE(suite_semantics_running) {
    bn_desc d = tu_desc(4, 3, 5, BN_FLOAT64, BN_CHANNELS_FIRST);
    int64_t count = tu_numel(&d), m = d.n * d.s;
    tu_rng r = tu_rng_new(42);
    double *x = tu_randn(&r, count, 3, 2), y[60];
    const double momenta[] = {0.1, 0.3, 0.0, 1.0};
    for (size_t k = 0; k < 4; k++) {
        double rm[3] = {0.5, -1, 2}, rv[3] = {1, 2, 3}, rm0[3], rv0[3], yr[60];
        memcpy(rm0, rm, sizeof rm), memcpy(rv0, rv, sizeof rv);
        double ref_rm[3], ref_rv[3];
        memcpy(ref_rm, rm, sizeof rm), memcpy(ref_rv, rv, sizeof rv);
        int64_t nbt = 7, ref_nbt = 7;
        bn_options opt = tu_options(1e-5, momenta[k], 0);
        CHECK_STATUS(bn_forward_train(y, NULL, NULL, rm, rv, &nbt, x, NULL, NULL, &d, &opt), BN_OK);
        bn_ref_forward_train(yr, NULL, NULL, ref_rm, ref_rv, &ref_nbt, x, NULL, NULL, &d, &opt);
        CHECK(nbt == 8 && ref_nbt == 8);
        for (int64_t c = 0; c < 3; c++) {
            CHECK_CLOSE(rm[c], ref_rm[c], 1e-14);
            CHECK_CLOSE(rv[c], ref_rv[c], 1e-14);
        }
        if (momenta[k] == 0.0) CHECK(memcmp(rm, rm0, sizeof rm) == 0 && memcmp(rv, rv0, sizeof rv) == 0);
    }

    /* cumulative average: after k batches the running values are the plain averages */
    double rm[3] = {9, 9, 9}, rv[3] = {9, 9, 9}, mean_sum[3] = {0}, var_sum[3] = {0};
    int64_t nbt = 0;
    bn_options cum = tu_options(1e-5, 0.1, 1);
    for (int batch = 0; batch < 4; batch++) {
        double *xb = tu_randn(&r, count, batch, 1 + batch);
        CHECK_STATUS(bn_forward_train(y, NULL, NULL, rm, rv, &nbt, xb, NULL, NULL, &d, &cum), BN_OK);
        bn_moments mo[3];
        bn_ref_moments(mo, xb, &d);
        for (int64_t c = 0; c < 3; c++) {
            mean_sum[c] += mo[c].mean;
            var_sum[c] += mo[c].m2 / (double)(m - 1);
            CHECK_CLOSE(rm[c], mean_sum[c] / (batch + 1), 1e-13);
            CHECK_CLOSE(rv[c], var_sum[c] / (batch + 1), 1e-13);
        }
        free(xb);
    }
    CHECK(nbt == 4);

    /* not tracking: the counter is left alone */
    nbt = 5;
    bn_options opt = BN_OPTIONS_DEFAULT;
    CHECK_STATUS(bn_forward_train(y, NULL, NULL, NULL, NULL, &nbt, x, NULL, NULL, &d, &opt), BN_OK);
    CHECK(nbt == 5);
    /* the cumulative average needs the counter */
    CHECK_STATUS(bn_forward_train(y, NULL, NULL, rm, rv, NULL, x, NULL, NULL, &d, &cum),
                 BN_ERR_NULL_POINTER);
    /* running_mean alone is tracked alone */
    double rm1[3] = {0, 0, 0};
    nbt = 0;
    CHECK_STATUS(bn_forward_train(y, NULL, NULL, rm1, NULL, &nbt, x, NULL, NULL, &d, &opt), BN_OK);
    CHECK(nbt == 1 && rm1[0] != 0);
    free(x);
}

/* Rules at the edges: one value per channel, empty batches, constant channels, absent affine. */
BN_SUITE(suite_semantics_edges) {
    bn_options opt = BN_OPTIONS_DEFAULT;
    float x1[3] = {1, 2, 3}, y1[3];
    bn_desc one = tu_desc(1, 3, 1, BN_FLOAT32, BN_CHANNELS_FIRST);
    CHECK_STATUS(bn_forward_train(y1, NULL, NULL, NULL, NULL, NULL, x1, NULL, NULL, &one, &opt),
                 BN_ERR_COUNT);
    float rm[3] = {0, 0, 0}, rv[3] = {1, 1, 1};
    CHECK_STATUS(bn_forward_eval(y1, x1, rm, rv, NULL, NULL, &one, 1e-5), BN_OK); /* eval is fine */
    bn_desc one_two = tu_desc(1, 3, 2, BN_FLOAT32, BN_CHANNELS_FIRST);
    float x2[6] = {1, 2, 3, 4, 5, 6}, y2[6];
    CHECK_STATUS(bn_forward_train(y2, NULL, NULL, NULL, NULL, NULL, x2, NULL, NULL, &one_two, &opt),
                 BN_OK);

    /* empty batch (n = 0 and a zero spatial size): running statistics kept, counter counts it */
    for (int k = 0; k < 2; k++) {
        bn_desc empty = k == 0 ? tu_desc(0, 3, 4, BN_FLOAT32, BN_CHANNELS_FIRST)
                               : tu_desc(4, 3, 0, BN_FLOAT32, BN_CHANNELS_LAST);
        float erm[3] = {0.25f, 0.5f, 1}, erv[3] = {2, 3, 4}, dw[3] = {7, 7, 7}, db[3] = {7, 7, 7};
        double sm[3], si[3];
        int64_t nbt = 2;
        CHECK_STATUS(bn_forward_train(NULL, sm, si, erm, erv, &nbt, NULL, NULL, NULL, &empty, &opt),
                     BN_OK);
        CHECK(erm[0] == 0.25f && erm[1] == 0.5f && erm[2] == 1 && erv[0] == 2 && erv[2] == 4);
        CHECK(nbt == 3);
        CHECK(isnan(sm[0]) && isnan(si[2]));
        CHECK_STATUS(bn_backward_train(NULL, dw, db, NULL, NULL, sm, si, NULL, &empty), BN_OK);
        CHECK(dw[0] == 0 && dw[2] == 0 && db[1] == 0);
        CHECK_STATUS(bn_forward_eval(NULL, NULL, erm, erv, NULL, NULL, &empty, 1e-5), BN_OK);
    }

    /* a constant channel normalizes to exactly 0, f32 and f64, at any value; eps = 0 gives 0 too */
    const double values[] = {0.1, 1e6 + 0.3, -3.75e-20, 12345.678};
    for (size_t k = 0; k < 4; k++)
        for (int dt = 0; dt < 2; dt++)
            for (int e = 0; e < 2; e++) {
                bn_desc d = tu_desc(7, 2, 131, (bn_dtype)dt, BN_CHANNELS_FIRST);
                int64_t count = tu_numel(&d);
                double *v = malloc(sizeof(double) * (size_t)count);
                for (int64_t i = 0; i < count; i++) v[i] = values[k];
                void *x = tu_to_dtype(v, count, (bn_dtype)dt), *y = tu_to_dtype(v, count, (bn_dtype)dt);
                bn_options o = tu_options(e ? 0.0 : 1e-5, 0.1, 0);
                double sm[2], si[2];
                CHECK_STATUS(bn_forward_train(y, sm, si, NULL, NULL, NULL, x, NULL, NULL, &d, &o), BN_OK);
                double *yd = tu_to_double(y, count, (bn_dtype)dt);
                int zero = 1;
                for (int64_t i = 0; i < count; i++) zero &= yd[i] == 0;
                CHECK_MSG(zero, "constant %g dtype %d eps %g: not exactly 0", values[k], dt, o.eps);
                CHECK(sm[0] == (dt ? values[k] : (double)(float)values[k])); /* the mean is exact too */
                free(v), free(x), free(y), free(yd);
            }

    /* absent weight and bias are exactly 1 and 0; outputs are overwritten, not accumulated */
    bn_desc d = tu_desc(6, 4, 9, BN_FLOAT64, BN_CHANNELS_LAST);
    int64_t count = tu_numel(&d);
    tu_rng r = tu_rng_new(3);
    double *x = tu_randn(&r, count, 1, 3), *dy = tu_randn(&r, count, 0, 1);
    double *ya = malloc(sizeof(double) * (size_t)count), *yb = malloc(sizeof(double) * (size_t)count);
    double ones[4] = {1, 1, 1, 1}, zeros[4] = {0, 0, 0, 0}, sm[4], si[4];
    double dwa[4] = {5, 5, 5, 5}, dba[4] = {5, 5, 5, 5}, dwb[4] = {-9, 1, 2, 3}, dbb[4] = {8, 8, 8, 8};
    CHECK_STATUS(bn_forward_train(ya, sm, si, NULL, NULL, NULL, x, NULL, NULL, &d, &opt), BN_OK);
    CHECK_STATUS(bn_forward_train(yb, sm, si, NULL, NULL, NULL, x, ones, zeros, &d, &opt), BN_OK);
    CHECK(memcmp(ya, yb, sizeof(double) * (size_t)count) == 0);
    CHECK_STATUS(bn_backward_train(ya, dwa, dba, dy, x, sm, si, NULL, &d), BN_OK);
    CHECK_STATUS(bn_backward_train(yb, dwb, dbb, dy, x, sm, si, ones, &d), BN_OK);
    CHECK(memcmp(ya, yb, sizeof(double) * (size_t)count) == 0);
    CHECK(memcmp(dwa, dwb, sizeof dwa) == 0 && memcmp(dba, dbb, sizeof dba) == 0);
    free(x), free(dy), free(ya), free(yb);
}

/* Layouts and aliasing: channels-last agrees with channels-first on the same values (to rounding:
 * their blocks differ), and in-place calls (y = x, dx = dy) give the same bits as out-of-place. */
BN_SUITE(suite_semantics_layouts) {
    for (int dt = 0; dt < 2; dt++) {
        bn_desc cf = tu_desc(3, 5, 1200, (bn_dtype)dt, BN_CHANNELS_FIRST);
        bn_desc cl = cf;
        cl.layout = BN_CHANNELS_LAST;
        int64_t count = tu_numel(&cf);
        tu_rng r = tu_rng_new(77);
        double *v = tu_randn(&r, count, 2, 5), *g = tu_randn(&r, count, 0, 1);
        double *vl = malloc(sizeof(double) * (size_t)count), *gl = malloc(sizeof(double) * (size_t)count);
        for (int64_t i = 0; i < cf.n; i++)
            for (int64_t c = 0; c < cf.c; c++)
                for (int64_t j = 0; j < cf.s; j++) {
                    vl[bn_ref_index(&cl, i, c, j)] = v[bn_ref_index(&cf, i, c, j)];
                    gl[bn_ref_index(&cl, i, c, j)] = g[bn_ref_index(&cf, i, c, j)];
                }
        void *x_f = tu_to_dtype(v, count, cf.dtype), *x_l = tu_to_dtype(vl, count, cf.dtype);
        void *dy_f = tu_to_dtype(g, count, cf.dtype), *dy_l = tu_to_dtype(gl, count, cf.dtype);
        void *y_f = tu_to_dtype(v, count, cf.dtype), *y_l = tu_to_dtype(v, count, cf.dtype);
        void *dx_f = tu_to_dtype(v, count, cf.dtype);
        double sm_f[5], si_f[5], sm_l[5], si_l[5];
        float rmf[5] = {0}, rvf[5] = {1, 1, 1, 1, 1};
        double rmd[5] = {0}, rvd[5] = {1, 1, 1, 1, 1};
        void *rm = dt ? (void *)rmd : (void *)rmf, *rv = dt ? (void *)rvd : (void *)rvf;
        bn_options opt = BN_OPTIONS_DEFAULT;
        CHECK_STATUS(bn_forward_train(y_f, sm_f, si_f, NULL, NULL, NULL, x_f, NULL, NULL, &cf, &opt), BN_OK);
        CHECK_STATUS(bn_forward_train(y_l, sm_l, si_l, NULL, NULL, NULL, x_l, NULL, NULL, &cl, &opt), BN_OK);
        double stat = 0;
        for (int c = 0; c < 5; c++) {
            stat = tu_worst(stat, fabs(sm_f[c] - sm_l[c]) / fabs(sm_f[c]));
            stat = tu_worst(stat, fabs(si_f[c] - si_l[c]) / si_f[c]);
        }
        /* float32: each layout's float path, to the bound of pivot.h */
        CHECK_MSG(stat <= (dt ? 1e-14 : 1e-6), "dtype %d: layouts' statistics differ by %g", dt,
                  stat);
        double *yf = tu_to_double(y_f, count, cf.dtype), *yl = tu_to_double(y_l, count, cf.dtype);
        double worst = 0;
        for (int64_t i = 0; i < cf.n; i++)
            for (int64_t c = 0; c < cf.c; c++)
                for (int64_t j = 0; j < cf.s; j++)
                    worst = tu_worst(worst, fabs(yf[bn_ref_index(&cf, i, c, j)] -
                                                 yl[bn_ref_index(&cl, i, c, j)]));
        CHECK_MSG(worst <= (dt ? 1e-13 : 5e-7), "dtype %d: layouts' outputs differ by %g", dt, worst);

        /* in place: y = x, and dx = dy */
        CHECK_STATUS(bn_forward_train(x_f, NULL, NULL, NULL, NULL, NULL, x_f, NULL, NULL, &cf, &opt), BN_OK);
        CHECK(memcmp(x_f, y_f, (size_t)count * (dt ? 8 : 4)) == 0);
        free(x_f);
        x_f = tu_to_dtype(v, count, cf.dtype);
        CHECK_STATUS(bn_backward_train(dx_f, NULL, NULL, dy_f, x_f, sm_f, si_f, NULL, &cf), BN_OK);
        CHECK_STATUS(bn_backward_train(dy_f, NULL, NULL, dy_f, x_f, sm_f, si_f, NULL, &cf), BN_OK);
        CHECK(memcmp(dx_f, dy_f, (size_t)count * (dt ? 8 : 4)) == 0);
        CHECK_STATUS(bn_forward_eval(y_f, x_f, rm, rv, NULL, NULL, &cf, 1e-5), BN_OK);
        CHECK_STATUS(bn_forward_eval(x_f, x_f, rm, rv, NULL, NULL, &cf, 1e-5), BN_OK);
        CHECK(memcmp(x_f, y_f, (size_t)count * (dt ? 8 : 4)) == 0);
        free(v), free(g), free(vl), free(gl), free(x_f), free(x_l), free(dy_f), free(dy_l);
        free(y_f), free(y_l), free(dx_f), free(yf), free(yl);
    }
}

/* Eval is element-wise: the same bits in either layout, whatever the length of the rows
 * (channels-first rows under BN_SHORT values go 16 channels at a time, the last group short
 * where C is not a multiple of 16), with weights, biases and running statistics, and in place. */
BN_SUITE(suite_semantics_eval_layouts_same_bits) {
    static const int64_t shapes[][3] = {{3, 37, 49}, {17, 16, 49}, {2, 5, 7}, {40, 3, 1},
                                        {2, 21, 64}, {1, 33, 63}, {9, 40, 14 * 14}};
    for (int dt = 0; dt < 2; dt++)
        for (size_t q = 0; q < sizeof shapes / sizeof shapes[0]; q++) {
            bn_desc cf = tu_desc(shapes[q][0], shapes[q][1], shapes[q][2], (bn_dtype)dt,
                                 BN_CHANNELS_FIRST);
            bn_desc cl = cf;
            cl.layout = BN_CHANNELS_LAST;
            const int64_t count = tu_numel(&cf), C = cf.c;
            tu_rng r = tu_rng_new(500 + q);
            double *v = tu_randn(&r, count, 3, 4), *vl = malloc(sizeof(double) * (size_t)count);
            for (int64_t i = 0; i < cf.n; i++)
                for (int64_t c = 0; c < C; c++)
                    for (int64_t j = 0; j < cf.s; j++)
                        vl[bn_ref_index(&cl, i, c, j)] = v[bn_ref_index(&cf, i, c, j)];
            double *rm = tu_randn(&r, C, 3, 1), *rv = tu_randn(&r, C, 0, 1);
            double *w = tu_randn(&r, C, 1, 0.5), *b = tu_randn(&r, C, 0, 1);
            for (int64_t c = 0; c < C; c++) rv[c] = 0.1 + rv[c] * rv[c];
            void *x_f = tu_to_dtype(v, count, cf.dtype), *x_l = tu_to_dtype(vl, count, cf.dtype);
            void *y_f = tu_to_dtype(v, count, cf.dtype), *y_l = tu_to_dtype(v, count, cf.dtype);
            void *rm_t = tu_to_dtype(rm, C, cf.dtype), *rv_t = tu_to_dtype(rv, C, cf.dtype);
            void *w_t = tu_to_dtype(w, C, cf.dtype), *b_t = tu_to_dtype(b, C, cf.dtype);
            CHECK_STATUS(bn_forward_eval(y_f, x_f, rm_t, rv_t, w_t, b_t, &cf, 1e-5), BN_OK);
            CHECK_STATUS(bn_forward_eval(y_l, x_l, rm_t, rv_t, w_t, b_t, &cl, 1e-5), BN_OK);
            double *yf = tu_to_double(y_f, count, cf.dtype);
            double *yl = tu_to_double(y_l, count, cf.dtype);
            int64_t differ = 0;
            for (int64_t i = 0; i < cf.n; i++)
                for (int64_t c = 0; c < C; c++)
                    for (int64_t j = 0; j < cf.s; j++)
                        differ += memcmp(&yf[bn_ref_index(&cf, i, c, j)],
                                         &yl[bn_ref_index(&cl, i, c, j)], sizeof(double)) != 0;
            CHECK_MSG(differ == 0, "dtype %d shape %zu: %lld values differ between layouts", dt, q,
                      (long long)differ);
            CHECK_STATUS(bn_forward_eval(x_f, x_f, rm_t, rv_t, w_t, b_t, &cf, 1e-5), BN_OK);
            CHECK(memcmp(x_f, y_f, (size_t)count * (dt ? 8 : 4)) == 0);
            free(v), free(vl), free(rm), free(rv), free(w), free(b), free(x_f), free(x_l);
            free(y_f), free(y_l), free(rm_t), free(rv_t), free(w_t), free(b_t), free(yf), free(yl);
        }
}
