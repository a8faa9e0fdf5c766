/* test_conventions.c - the conventions of other frameworks (bn_options' presets and flags),
 * frozen batch norm's independent choices, batch renormalization and ghost batches, each
 * against the framework's own formulas written out here as their sources write them (the
 * oracle below, in long double over float64 data). */
#include "check.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef long double real;

enum framework { PYTORCH, ONNX, KERAS, TENSORFLOW, CAFFE, MXNET, FLAX, FRAMEWORKS };
static const char *fw_name[FRAMEWORKS] = {"pytorch", "onnx", "keras", "tensorflow",
                                          "caffe", "mxnet", "flax"};

static bn_options preset(enum framework fw) {
    const bn_options all[FRAMEWORKS] = {BN_OPTIONS_PYTORCH, BN_OPTIONS_ONNX, BN_OPTIONS_KERAS,
                                        BN_OPTIONS_TENSORFLOW, BN_OPTIONS_CAFFE,
                                        BN_OPTIONS_MXNET, BN_OPTIONS_FLAX};
    return all[fw];
}

/* Mean and biased variance of channel c over the samples i with i % ghosts == g. */
static void stats_of(const double *x, const bn_desc *d, int64_t c, int64_t g, int64_t ghosts,
                     real *mean, real *var) {
    real sum = 0, dev = 0;
    int64_t m = 0;
    for (int64_t i = g; i < d->n; i += ghosts)
        for (int64_t j = 0; j < d->s; j++) sum += x[bn_ref_index(d, i, c, j)], m++;
    *mean = sum / m;
    for (int64_t i = g; i < d->n; i += ghosts)
        for (int64_t j = 0; j < d->s; j++) {
            const real e = x[bn_ref_index(d, i, c, j)] - *mean;
            dev += e * e;
        }
    *var = dev / m;
}

/* The running update of one value as each framework writes it (m values in the batch). */
static real running(enum framework fw, real old, real batch, real momentum) {
    switch (fw) {
    case PYTORCH: case TENSORFLOW: return (1 - momentum) * old + momentum * batch;
    case ONNX: case MXNET: return old * momentum + batch * (1 - momentum);
    case KERAS: case FLAX: return old - (old - batch) * (1 - momentum); /* assign_moving_average */
    case CAFFE: return momentum * old + batch;                            /* caffe_cpu_axpby */
    default: return NAN;
    }
}

/* What the running variance takes from a batch of m values with biased variance var. */
static real running_var_value(enum framework fw, real var, int64_t m) {
    switch (fw) {
    case PYTORCH: return var * m / (m - 1);
    case TENSORFLOW: case CAFFE: return m > 1 ? var * m / (m - 1) : var; /* n / max(n - 1, 1) */
    default: return var;
    }
}

/* One training step of framework fw on x (float64), as its sources write it. */
static void oracle_step(enum framework fw, double *y, double *rm, double *rv, const double *x,
                        const double *w, const double *b, const bn_desc *d, double eps,
                        double momentum) {
    for (int64_t c = 0; c < d->c; c++) {
        real mean, var;
        stats_of(x, d, c, 0, 1, &mean, &var);
        const real gamma = fw == MXNET || !w ? 1 : w[c], beta = b ? b[c] : 0;
        for (int64_t i = 0; i < d->n; i++)
            for (int64_t j = 0; j < d->s; j++) {
                const int64_t at = bn_ref_index(d, i, c, j);
                y[at] = (double)((x[at] - mean) / sqrtl(var + eps) * gamma + beta);
            }
        rm[c] = (double)running(fw, rm[c], mean, momentum);
        rv[c] = (double)running(fw, rv[c], running_var_value(fw, var, d->n * d->s), momentum);
    }
}

static double rel_err(const double *a, const double *b, int64_t n) { return tu_max_rel_diff(a, b, n); }

static double *copy_of(const double *v, int64_t n) {
    double *out = malloc(sizeof(double) * (size_t)(n ? n : 1));
    memcpy(out, v, sizeof(double) * (size_t)n);
    return out;
}

BN_SUITE(suite_conventions_presets) {
    const bn_layout lays[2] = {BN_CHANNELS_FIRST, BN_CHANNELS_LAST};
    for (int fw = 0; fw < FRAMEWORKS; fw++)
        for (int l = 0; l < 2; l++) {
            const bn_desc d = tu_desc(6, 3, 5, BN_FLOAT64, lays[l]);
            const int64_t count = tu_numel(&d), C = d.c;
            tu_rng r = tu_rng_new(100 + (uint64_t)fw);
            double *x = tu_randn(&r, count, 3, 2), *w = tu_randn(&r, C, 1, 0.3);
            double *b = tu_randn(&r, C, 0, 0.5), *rm = tu_randn(&r, C, 0, 1);
            double *rv = tu_randn(&r, C, 2, 0.2);
            double *y = malloc(sizeof(double) * (size_t)count), *yo = copy_of(x, count);
            double *rmo = copy_of(rm, C), *rvo = copy_of(rv, C);
            const int affine = fw != CAFFE; /* Caffe's BatchNorm has none */
            const bn_options opt = preset((enum framework)fw);
            int64_t nbt = 4;
            /* three steps, each against the oracle's */
            for (int step = 0; step < 3; step++) {
                for (int64_t k = 0; k < count; k++) x[k] += 0.25 * step;
                CHECK_STATUS(bn_forward_train(y, NULL, NULL, rm, rv, &nbt, x, affine ? w : NULL,
                                              affine ? b : NULL, &d, &opt), BN_OK);
                oracle_step((enum framework)fw, yo, rmo, rvo, x, affine ? w : NULL,
                            affine ? b : NULL, &d, opt.eps, opt.momentum);
            }
            CHECK_MSG(rel_err(y, yo, count) <= 1e-13, "%s %d: y off by %g", fw_name[fw], l,
                      rel_err(y, yo, count));
            CHECK_MSG(rel_err(rm, rmo, C) <= 1e-13 && rel_err(rv, rvo, C) <= 1e-13,
                      "%s %d: running statistics off by %g, %g", fw_name[fw], l,
                      rel_err(rm, rmo, C), rel_err(rv, rvo, C));
            CHECK(nbt == 7);
            free(x), free(w), free(b), free(rm), free(rv), free(y), free(yo), free(rmo), free(rvo);
        }
}

/* The flags one at a time, where the presets do not show them apart. */
BN_SUITE(suite_conventions_flags) {
    const bn_desc d = tu_desc(4, 2, 3, BN_FLOAT64, BN_CHANNELS_FIRST);
    const int64_t count = tu_numel(&d);
    tu_rng r = tu_rng_new(7);
    double *x = tu_randn(&r, count, 1, 2), y[24], y_plain[24];
    const double w[2] = {1.5, -0.5}, b[2] = {0.25, 1};
    {   /* BN_FIX_GAMMA: the weight is 1, whatever is passed */
        bn_options fix = BN_OPTIONS_DEFAULT, plain = BN_OPTIONS_DEFAULT;
        fix.flags = BN_FIX_GAMMA;
        CHECK_STATUS(bn_forward_train(y, NULL, NULL, NULL, NULL, NULL, x, w, b, &d, &fix), BN_OK);
        CHECK_STATUS(bn_forward_train(y_plain, NULL, NULL, NULL, NULL, NULL, x, NULL, b, &d,
                                      &plain), BN_OK);
        CHECK(memcmp(y, y_plain, sizeof y) == 0);
    }
    {   /* the cumulative average with BN_MOMENTUM_OF_OLD: still 1/num_batches_tracked */
        bn_options cum = BN_OPTIONS_DEFAULT, cum_old = BN_OPTIONS_DEFAULT;
        cum.cumulative = cum_old.cumulative = 1;
        cum_old.flags = BN_MOMENTUM_OF_OLD;
        double rm1[2] = {0, 0}, rv1[2] = {1, 1}, rm2[2] = {0, 0}, rv2[2] = {1, 1};
        int64_t n1 = 2, n2 = 2;
        CHECK_STATUS(bn_forward_train(y, NULL, NULL, rm1, rv1, &n1, x, w, b, &d, &cum), BN_OK);
        CHECK_STATUS(bn_forward_train(y, NULL, NULL, rm2, rv2, &n2, x, w, b, &d, &cum_old), BN_OK);
        CHECK(memcmp(rm1, rm2, sizeof rm1) == 0 && memcmp(rv1, rv2, sizeof rv1) == 0);
    }
    {   /* one value per channel: refused by PyTorch's convention, normalized to bias by others */
        const bn_desc one = tu_desc(1, 2, 1, BN_FLOAT64, BN_CHANNELS_FIRST);
        double x1[2] = {3, -4}, y1[2] = {9, 9}, rm[2] = {1, 1}, rv[2] = {1, 1};
        const bn_options torch = BN_OPTIONS_PYTORCH, onnx = BN_OPTIONS_ONNX,
                         caffe = BN_OPTIONS_CAFFE;
        CHECK_STATUS(bn_forward_train(y1, NULL, NULL, rm, rv, NULL, x1, w, b, &one, &torch),
                     BN_ERR_COUNT);
        CHECK(y1[0] == 9 && rm[0] == 1 && rv[0] == 1);
        CHECK_STATUS(bn_forward_train(y1, NULL, NULL, rm, rv, NULL, x1, w, b, &one, &onnx), BN_OK);
        CHECK(y1[0] == b[0] && y1[1] == b[1]);
        CHECK_CLOSE(rm[0], 0.9 + 0.1 * 3, 1e-15);
        CHECK_CLOSE(rv[1], 0.9, 1e-15); /* the batch variance is 0 */
        double crm[2] = {0, 0}, crv[2] = {0, 0};
        CHECK_STATUS(bn_forward_train(y1, NULL, NULL, crm, crv, NULL, x1, NULL, NULL, &one,
                                      &caffe), BN_OK);
        CHECK(crm[0] == 3 && crm[1] == -4 && crv[0] == 0 && y1[0] == 0);
    }
    free(x);
}

/* Frozen batch norm's three choices in every combination: normalize with batch or stored
 * statistics; update the running statistics or not; affine gradients or not. dx is always
 * there. Each against its formula. */
BN_SUITE(suite_conventions_frozen_choices) {
    const bn_layout lays[2] = {BN_CHANNELS_FIRST, BN_CHANNELS_LAST};
    for (int l = 0; l < 2; l++)
        for (int choice = 0; choice < 8; choice++) {
            const int stored = choice & 1, freeze = choice & 2, affine_grads = choice & 4;
            const bn_desc d = tu_desc(5, 3, 4, BN_FLOAT64, lays[l]);
            const int64_t count = tu_numel(&d), C = d.c;
            tu_rng r = tu_rng_new(40 + (uint64_t)choice);
            double *x = tu_randn(&r, count, -1, 3), *dy = tu_randn(&r, count, 0, 1);
            double *w = tu_randn(&r, C, 1, 0.3), *b = tu_randn(&r, C, 0, 0.5);
            double *rm = tu_randn(&r, C, 0, 1), *rv = tu_randn(&r, C, 3, 0.3);
            double *rm0 = copy_of(rm, C), *rv0 = copy_of(rv, C);
            double *y = malloc(sizeof(double) * (size_t)count), *dx = malloc(sizeof(double) * (size_t)count);
            double *yo = malloc(sizeof(double) * (size_t)count), *dxo = malloc(sizeof(double) * (size_t)count);
            double sm[3], si[3], dw[3] = {7, 7, 7}, db[3] = {7, 7, 7}, dwo[3], dbo[3];
            bn_options opt = BN_OPTIONS_DEFAULT;
            opt.flags = (stored ? BN_STORED_STATS : 0) | (freeze ? BN_FREEZE_RUNNING : 0);
            int64_t nbt = 10;
            CHECK_STATUS(bn_forward_train(y, sm, si, rm, rv, &nbt, x, w, b, &d, &opt), BN_OK);
            CHECK_STATUS(bn_backward(dx, affine_grads ? dw : NULL, affine_grads ? db : NULL, dy, x,
                                     sm, si, w, &d, &opt), BN_OK);
            /* the formulas: the statistics used, the running update, the two backwards */
            for (int64_t c = 0; c < C; c++) {
                real mean, var;
                stats_of(x, &d, c, 0, 1, &mean, &var);
                const real um = stored ? rm0[c] : mean;
                const real ui = stored ? 1 / sqrtl(rv0[c] + opt.eps) : 1 / sqrtl(var + opt.eps);
                CHECK_CLOSE(sm[c], um, 1e-14 * (1 + fabsl(um)));
                CHECK_CLOSE(si[c], ui, 1e-14 * ui);
                const int64_t m = d.n * d.s;
                const real new_rm = freeze ? rm0[c] : 0.9L * rm0[c] + 0.1L * mean;
                const real new_rv = freeze ? rv0[c] : 0.9L * rv0[c] + 0.1L * var * m / (m - 1);
                CHECK_CLOSE(rm[c], new_rm, 1e-14 * (1 + fabsl(new_rm)));
                CHECK_CLOSE(rv[c], new_rv, 1e-14 * new_rv);
                real sdy = 0, sdyx = 0;
                for (int64_t i = 0; i < d.n; i++)
                    for (int64_t j = 0; j < d.s; j++) {
                        const int64_t at = bn_ref_index(&d, i, c, j);
                        yo[at] = (double)((x[at] - um) * ui * w[c] + b[c]);
                        sdy += dy[at], sdyx += dy[at] * (x[at] - um) * ui;
                    }
                for (int64_t i = 0; i < d.n; i++)
                    for (int64_t j = 0; j < d.s; j++) {
                        const int64_t at = bn_ref_index(&d, i, c, j);
                        real g = dy[at];
                        if (!stored) g -= sdy / m + (x[at] - um) * ui * sdyx / m;
                        dxo[at] = (double)(g * ui * w[c]);
                    }
                dwo[c] = affine_grads ? (double)sdyx : 7, dbo[c] = affine_grads ? (double)sdy : 7;
            }
            CHECK_MSG(rel_err(y, yo, count) <= 1e-13 && rel_err(dx, dxo, count) <= 1e-12,
                      "choice %d layout %d: y %g dx %g", choice, l, rel_err(y, yo, count),
                      rel_err(dx, dxo, count));
            CHECK_MSG(rel_err(dw, dwo, C) <= 1e-12 && rel_err(db, dbo, C) <= 1e-12,
                      "choice %d: affine gradients", choice);
            CHECK(nbt == (freeze ? 10 : 11));
            free(x), free(dy), free(w), free(b), free(rm), free(rv), free(rm0), free(rv0);
            free(y), free(dx), free(yo), free(dxo);
        }
    {   /* BN_FIX_GAMMA in the backward: dx with weight 1, dweight 0 */
        const bn_desc d = tu_desc(4, 2, 3, BN_FLOAT64, BN_CHANNELS_FIRST);
        tu_rng r = tu_rng_new(3);
        double *x = tu_randn(&r, 24, 0, 1), *dy = tu_randn(&r, 24, 0, 1);
        double y[24], dx[24], dx1[24], sm[2], si[2], dw[2] = {5, 5}, db[2], db1[2];
        const double w[2] = {3, 4};
        bn_options fix = BN_OPTIONS_DEFAULT;
        fix.flags = BN_FIX_GAMMA;
        CHECK_STATUS(bn_forward_train(y, sm, si, NULL, NULL, NULL, x, w, NULL, &d, &fix), BN_OK);
        CHECK_STATUS(bn_backward(dx, dw, db, dy, x, sm, si, w, &d, &fix), BN_OK);
        CHECK_STATUS(bn_backward_train(dx1, NULL, db1, dy, x, sm, si, NULL, &d), BN_OK);
        CHECK(dw[0] == 0 && dw[1] == 0 && memcmp(dx, dx1, sizeof dx) == 0);
        CHECK(memcmp(db, db1, sizeof db) == 0);
        free(x), free(dy);
    }
}

/* tf-keras's renorm step on float64 x, from its formulas (renorm_momentum rmom, clipping). */
typedef struct {
    double *rm, *rv, *ms, *ren_m, *ren_s; /* moving_mean, moving_variance, moving_stddev,
                                            * renorm_mean, renorm_stddev */
} renorm_state;

static void oracle_renorm(double *y, double *r_out, double *d_out, renorm_state *st,
                          const double *x, const double *w, const double *b, const bn_desc *d,
                          int64_t ghosts, const bn_options *o) {
    for (int64_t c = 0; c < d->c; c++) {
        real mean = 0, var = 0;
        for (int64_t g = 0; g < ghosts; g++) {
            real gm, gv;
            stats_of(x, d, c, g, ghosts, &gm, &gv);
            mean += gm / ghosts, var += gv / ghosts;
        }
        const real stddev = sqrtl(var + o->eps);
        const real s = fmaxl(st->ren_s[c], sqrtl(o->eps));
        real r = stddev / s, dd = (mean - st->ren_m[c]) / s;
        r = fminl(fmaxl(r, o->rmin), o->rmax);
        dd = fminl(fmaxl(dd, -o->dmax), o->dmax);
        r_out[c] = (double)r, d_out[c] = (double)dd;
        for (int64_t g = 0; g < ghosts; g++) {
            real gm, gv;
            stats_of(x, d, c, g, ghosts, &gm, &gv);
            for (int64_t i = g; i < d->n; i += ghosts)
                for (int64_t j = 0; j < d->s; j++) {
                    const int64_t at = bn_ref_index(d, i, c, j);
                    y[at] = (double)(((x[at] - gm) / sqrtl(gv + o->eps) * r + dd) * w[c] + b[c]);
                }
        }
        const real dec = 1 - (real)o->momentum, rdec = 1 - (real)o->renorm_momentum;
        st->ren_m[c] = (double)(st->ren_m[c] - (st->ren_m[c] - mean) * rdec);
        st->ren_s[c] = (double)(st->ren_s[c] - (st->ren_s[c] - stddev) * rdec);
        st->rm[c] = (double)(st->rm[c] - (st->rm[c] - mean) * dec);
        st->ms[c] = (double)(st->ms[c] - (st->ms[c] - stddev) * dec);
        st->rv[c] = (double)fmaxl((real)st->ms[c] * st->ms[c] - o->eps, 0);
    }
}

static renorm_state renorm_state_new(int64_t C) {
    renorm_state s;
    double **all[5] = {&s.rm, &s.rv, &s.ms, &s.ren_m, &s.ren_s};
    const double init[5] = {0, 1, 1, 0, 1}; /* Keras's initial values */
    for (int k = 0; k < 5; k++) {
        *all[k] = malloc(sizeof(double) * (size_t)C);
        for (int64_t c = 0; c < C; c++) (*all[k])[c] = init[k];
    }
    return s;
}

static void renorm_state_free(renorm_state *s) {
    free(s->rm), free(s->rv), free(s->ms), free(s->ren_m), free(s->ren_s);
}

static double state_err(const renorm_state *a, const renorm_state *b, int64_t C) {
    double e = 0;
    e = tu_worst(e, rel_err(a->rm, b->rm, C));
    e = tu_worst(e, rel_err(a->rv, b->rv, C));
    e = tu_worst(e, rel_err(a->ms, b->ms, C));
    e = tu_worst(e, rel_err(a->ren_m, b->ren_m, C));
    return tu_worst(e, rel_err(a->ren_s, b->ren_s, C));
}

/* Forward renorm (with and without ghost batches, every clipping) against the oracle over five
 * steps, and its backward against finite differences of the loss sum(dy * y) with r and d held
 * constant. */
BN_SUITE(suite_conventions_renorm) {
    const bn_layout lays[2] = {BN_CHANNELS_FIRST, BN_CHANNELS_LAST};
    const double clips[3][3] = {{0, HUGE_VAL, HUGE_VAL}, {0.8, 1.25, 0.1}, {1, 1, 0}};
    const int64_t shapes[3][3] = {{8, 3, 5}, {8, 4, 1}, {6, 2, 3}}, ghost_sizes[3] = {0, 2, 3};
    for (int l = 0; l < 2; l++)
        for (int k = 0; k < 3; k++)
            for (int gh = 0; gh < 3; gh++) {
                const int64_t *sh = shapes[k];
                if (ghost_sizes[gh] && sh[0] % ghost_sizes[gh]) continue;
                const bn_desc d = tu_desc(sh[0], sh[1], sh[2], BN_FLOAT64, lays[l]);
                const int64_t count = tu_numel(&d), C = d.c;
                const int64_t ghosts = ghost_sizes[gh] ? d.n / ghost_sizes[gh] : 1;
                bn_options o = BN_OPTIONS_KERAS;
                o.rmin = clips[k][0], o.rmax = clips[k][1], o.dmax = clips[k][2];
                o.virtual_batch = ghost_sizes[gh];
                o.momentum = 0.9, o.renorm_momentum = 0.7;
                tu_rng r = tu_rng_new(200 + (uint64_t)(k * 3 + gh));
                double *w = tu_randn(&r, C, 1, 0.3), *b = tu_randn(&r, C, 0, 0.5);
                double *y = malloc(sizeof(double) * (size_t)count), *yo = malloc(sizeof(double) * (size_t)count);
                double *sm = malloc(sizeof(double) * (size_t)(ghosts * C)), *si = malloc(sizeof(double) * (size_t)(ghosts * C));
                double rr[4], dd[4], ro[4], dov[4];
                renorm_state lib = renorm_state_new(C), ora = renorm_state_new(C);
                double *x = NULL;
                for (int step = 0; step < 5; step++) {
                    free(x);
                    x = tu_randn(&r, count, 2 + step, 1.5 + 0.5 * step);
                    CHECK_STATUS(bn_forward_train_renorm(y, sm, si, rr, dd, lib.rm, lib.rv, lib.ms,
                                                         lib.ren_m, lib.ren_s, NULL, x, w, b, &d,
                                                         &o), BN_OK);
                    oracle_renorm(yo, ro, dov, &ora, x, w, b, &d, ghosts, &o);
                }
                CHECK_MSG(rel_err(y, yo, count) <= 1e-12 && rel_err(rr, ro, C) <= 1e-13 &&
                              rel_err(dd, dov, C) <= 1e-12 && state_err(&lib, &ora, C) <= 1e-13,
                          "renorm layout %d shape %d ghosts %d: y %g r %g d %g state %g", l, k,
                          gh, rel_err(y, yo, count), rel_err(rr, ro, C), rel_err(dd, dov, C),
                          state_err(&lib, &ora, C));
                /* the backward: d/dx, d/dw, d/db of L = sum dy * y(x, w, b; r, d fixed) */
                double *dy = tu_randn(&r, count, 0, 1), *dx = malloc(sizeof(double) * (size_t)count);
                double dw[4], db[4];
                CHECK_STATUS(bn_backward_renorm(dx, dw, db, dy, x, sm, si, rr, dd, w, &d, &o),
                             BN_OK);
                /* y with r, d fixed is a plain (ghost) batch norm with weight r*w, bias d*w + b */
                bn_options plain = BN_OPTIONS_DEFAULT;
                plain.virtual_batch = o.virtual_batch, plain.eps = o.eps;
                double wr[4], bd[4];
                const double h = 1e-6;
                double worst = 0;
                for (int64_t at = 0; at < count; at += 7) {
                    double lp = 0, lm = 0;
                    for (int sign = 0; sign < 2; sign++) {
                        double *xp = copy_of(x, count);
                        xp[at] += sign ? -h : h;
                        for (int64_t c = 0; c < C; c++) wr[c] = rr[c] * w[c], bd[c] = dd[c] * w[c] + b[c];
                        bn_forward_train(y, NULL, NULL, NULL, NULL, NULL, xp, wr, bd, &d, &plain);
                        double loss = 0;
                        for (int64_t q = 0; q < count; q++) loss += dy[q] * y[q];
                        *(sign ? &lm : &lp) = loss;
                        free(xp);
                    }
                    worst = tu_worst(worst, fabs((lp - lm) / (2 * h) - dx[at]));
                }
                CHECK_MSG(worst <= 1e-6, "renorm dx vs finite differences: %g", worst);
                for (int64_t c = 0; c < C; c++) {
                    real sdy = 0, sdyy = 0; /* dL/dw = sum dy * (xhat r + d), dL/db = sum dy */
                    for (int64_t g = 0; g < ghosts; g++) {
                        real gm, gv;
                        stats_of(x, &d, c, g, ghosts, &gm, &gv);
                        for (int64_t i = g; i < d.n; i += ghosts)
                            for (int64_t j = 0; j < d.s; j++) {
                                const int64_t at = bn_ref_index(&d, i, c, j);
                                sdy += dy[at];
                                sdyy += dy[at] * ((x[at] - gm) / sqrtl(gv + o.eps) * rr[c] + dd[c]);
                            }
                    }
                    CHECK_CLOSE(db[c], sdy, 1e-12 * (1 + fabsl(sdy)));
                    CHECK_CLOSE(dw[c], sdyy, 1e-12 * (1 + fabsl(sdyy)));
                }
                free(x), free(w), free(b), free(y), free(yo), free(sm), free(si), free(dy), free(dx);
                renorm_state_free(&lib), renorm_state_free(&ora);
            }
}

/* Ghost batches without renorm: each ghost batch normalized with its statistics, the running
 * statistics following the means over them; the backward each ghost batch's own (checked
 * against bn_backward_train on the ghost batch gathered into a tensor of its own). */
BN_SUITE(suite_conventions_ghost_batches) {
    const bn_layout lays[2] = {BN_CHANNELS_FIRST, BN_CHANNELS_LAST};
    const int64_t shapes[3][3] = {{12, 3, 4}, {12, 5, 1}, {6, 2, 7}}, sizes[3] = {3, 4, 2};
    for (int l = 0; l < 2; l++)
        for (int k = 0; k < 3; k++) {
            const int64_t *sh = shapes[k], V = sizes[k], G = sh[0] / V;
            const bn_desc d = tu_desc(sh[0], sh[1], sh[2], BN_FLOAT64, lays[l]);
            const bn_desc gd = tu_desc(V, sh[1], sh[2], BN_FLOAT64, lays[l]);
            const int64_t count = tu_numel(&d), C = d.c, gcount = tu_numel(&gd);
            tu_rng r = tu_rng_new(300 + (uint64_t)k);
            double *x = tu_randn(&r, count, 1, 2), *dy = tu_randn(&r, count, 0, 1);
            double *w = tu_randn(&r, C, 1, 0.3), *b = tu_randn(&r, C, 0, 0.5);
            double *y = malloc(sizeof(double) * (size_t)count), *dx = malloc(sizeof(double) * (size_t)count);
            double *sm = malloc(sizeof(double) * (size_t)(G * C)), *si = malloc(sizeof(double) * (size_t)(G * C));
            double rm[5] = {0}, rv[5] = {1, 1, 1, 1, 1}, dw[5], db[5];
            bn_options o = BN_OPTIONS_KERAS;
            o.virtual_batch = V;
            CHECK_STATUS(bn_forward_train(y, sm, si, rm, rv, NULL, x, w, b, &d, &o), BN_OK);
            CHECK_STATUS(bn_backward(dx, dw, db, dy, x, sm, si, w, &d, &o), BN_OK);
            double *gx = malloc(sizeof(double) * (size_t)gcount), *gdy = malloc(sizeof(double) * (size_t)gcount);
            double *gy = malloc(sizeof(double) * (size_t)gcount), *gdx = malloc(sizeof(double) * (size_t)gcount);
            double gsm[5], gsi[5], gdw[5], gdb[5], sum_dw[5] = {0}, sum_db[5] = {0};
            real mean_avg[5] = {0}, var_avg[5] = {0};
            double worst_y = 0, worst_dx = 0, worst_stats = 0;
            for (int64_t g = 0; g < G; g++) {
                for (int64_t v = 0; v < V; v++) /* ghost g holds samples g, g + G, ... */
                    for (int64_t c = 0; c < C; c++)
                        for (int64_t j = 0; j < d.s; j++) {
                            gx[bn_ref_index(&gd, v, c, j)] = x[bn_ref_index(&d, v * G + g, c, j)];
                            gdy[bn_ref_index(&gd, v, c, j)] = dy[bn_ref_index(&d, v * G + g, c, j)];
                        }
                CHECK_STATUS(bn_forward_train(gy, gsm, gsi, NULL, NULL, NULL, gx, w, b, &gd,
                                              &(bn_options){.eps = o.eps, .rmax = HUGE_VAL,
                                                            .dmax = HUGE_VAL}), BN_OK);
                CHECK_STATUS(bn_backward_train(gdx, gdw, gdb, gdy, gx, gsm, gsi, w, &gd), BN_OK);
                for (int64_t v = 0; v < V; v++)
                    for (int64_t c = 0; c < C; c++)
                        for (int64_t j = 0; j < d.s; j++) {
                            const int64_t at = bn_ref_index(&d, v * G + g, c, j);
                            const int64_t gat = bn_ref_index(&gd, v, c, j);
                            worst_y = tu_worst(worst_y, fabs(y[at] - gy[gat]) / (1 + fabs(gy[gat])));
                            worst_dx = tu_worst(worst_dx, fabs(dx[at] - gdx[gat]) / (1 + fabs(gdx[gat])));
                        }
                for (int64_t c = 0; c < C; c++) {
                    worst_stats = tu_worst(worst_stats, fabs(sm[g * C + c] - gsm[c]) / (1 + fabs(gsm[c])));
                    worst_stats = tu_worst(worst_stats, fabs(si[g * C + c] - gsi[c]) / gsi[c]);
                    sum_dw[c] += gdw[c], sum_db[c] += gdb[c];
                    real gm, gv;
                    stats_of(x, &d, c, g, G, &gm, &gv);
                    mean_avg[c] += gm / G, var_avg[c] += gv / G;
                }
            }
            CHECK_MSG(worst_y <= 1e-13 && worst_dx <= 1e-12 && worst_stats <= 1e-13,
                      "ghosts layout %d shape %d: y %g dx %g stats %g", l, k, worst_y, worst_dx,
                      worst_stats);
            for (int64_t c = 0; c < C; c++) {
                CHECK_CLOSE(dw[c], sum_dw[c], 1e-12 * (1 + fabs(sum_dw[c])));
                CHECK_CLOSE(db[c], sum_db[c], 1e-12 * (1 + fabs(sum_db[c])));
                const real erm = 0 - (0 - mean_avg[c]) * (1 - 0.99L);
                const real erv = 1 - (1 - var_avg[c]) * (1 - 0.99L);
                CHECK_CLOSE(rm[c], erm, 1e-15 * (1 + fabsl(erm)));
                CHECK_CLOSE(rv[c], erv, 1e-15 * (1 + fabsl(erv)));
            }
            /* the same bits on one thread and on two */
            double *y1 = malloc(sizeof(double) * (size_t)count), *dx1 = malloc(sizeof(double) * (size_t)count);
            double rm1[5] = {0}, rv1[5] = {1, 1, 1, 1, 1}, dw1[5], db1[5];
            const int threads = bn_get_num_threads();
            bn_set_num_threads(threads == 1 ? 2 : 1);
            bn_forward_train(y1, sm, si, rm1, rv1, NULL, x, w, b, &d, &o);
            bn_backward(dx1, dw1, db1, dy, x, sm, si, w, &d, &o);
            bn_set_num_threads(threads);
            CHECK(memcmp(y, y1, sizeof(double) * (size_t)count) == 0);
            CHECK(memcmp(dx, dx1, sizeof(double) * (size_t)count) == 0);
            CHECK(memcmp(rm, rm1, sizeof(double) * (size_t)C) == 0 &&
                  memcmp(dw, dw1, sizeof(double) * (size_t)C) == 0);
            free(x), free(dy), free(w), free(b), free(y), free(dx), free(sm), free(si);
            free(gx), free(gdy), free(gy), free(gdx), free(y1), free(dx1);
        }
}

/* Float32 through the conventions: within float32 rounding of the float64 results. */
BN_SUITE(suite_conventions_float32) {
    const bn_desc d64 = tu_desc(8, 3, 6, BN_FLOAT64, BN_CHANNELS_LAST);
    bn_desc d32 = d64;
    d32.dtype = BN_FLOAT32;
    const int64_t count = tu_numel(&d64), C = 3;
    tu_rng r = tu_rng_new(9);
    double *x = tu_randn(&r, count, 5, 3);
    float *x32 = tu_to_dtype(x, count, BN_FLOAT32);
    double *xr = tu_to_double(x32, count, BN_FLOAT32);
    const double w[3] = {1, 2, 0.5}, b[3] = {0, 1, -1};
    const float w32[3] = {1, 2, 0.5f}, b32[3] = {0, 1, -1};
    for (int fw = 0; fw < FRAMEWORKS; fw++) {
        bn_options o = preset((enum framework)fw);
        o.virtual_batch = fw == KERAS ? 4 : 0;
        double y[144], rm[3] = {0, 0, 0}, rv[3] = {1, 1, 1};
        float y32[144], rm32[3] = {0, 0, 0}, rv32[3] = {1, 1, 1};
        double y64[144];
        CHECK_STATUS(bn_forward_train(y, NULL, NULL, rm, rv, NULL, xr, w, b, &d64, &o), BN_OK);
        CHECK_STATUS(bn_forward_train(y32, NULL, NULL, rm32, rv32, NULL, x32, w32, b32, &d32, &o),
                     BN_OK);
        for (int64_t k = 0; k < count; k++) y64[k] = y32[k];
        double rm64[3], rv64[3];
        for (int c = 0; c < C; c++) rm64[c] = rm32[c], rv64[c] = rv32[c];
        CHECK_MSG(rel_err(y64, y, count) <= 1e-6 && rel_err(rm64, rm, C) <= 1e-6 &&
                      rel_err(rv64, rv, C) <= 1e-6, "%s float32", fw_name[fw]);
    }
    free(x), free(x32), free(xr);
}

/* The errors of the new options and functions; nothing is written when a call fails. */
BN_SUITE(suite_conventions_errors) {
    const bn_desc d = tu_desc(6, 2, 2, BN_FLOAT64, BN_CHANNELS_FIRST);
    double x[24] = {0}, y[24], dy[24] = {0}, sm[6] = {0}, si[6] = {1, 1, 1, 1, 1, 1};
    for (int k = 0; k < 24; k++) x[k] = k % 5, y[k] = -7;
    double rm[2] = {1, 2}, rv[2] = {3, 4}, ms[2] = {1, 1}, ren_m[2] = {0, 0}, ren_s[2] = {1, 1};
    double r[2] = {1, 1}, dd[2] = {0, 0};
    bn_options o = BN_OPTIONS_KERAS;
    o.virtual_batch = 4; /* does not divide 6 */
    CHECK_STATUS(bn_forward_train(y, sm, si, rm, rv, NULL, x, NULL, NULL, &d, &o), BN_ERR_SHAPE);
    CHECK_STATUS(bn_backward(y, NULL, NULL, dy, x, sm, si, NULL, &d, &o), BN_ERR_SHAPE);
    o.virtual_batch = 3, o.flags |= BN_STORED_STATS; /* ghost batches use batch statistics */
    CHECK_STATUS(bn_forward_train(y, sm, si, rm, rv, NULL, x, NULL, NULL, &d, &o), BN_ERR_ARGUMENT);
    CHECK_STATUS(bn_backward(y, NULL, NULL, dy, x, sm, si, NULL, &d, &o), BN_ERR_ARGUMENT);
    o.virtual_batch = 0; /* stored statistics need both running statistics */
    CHECK_STATUS(bn_forward_train(y, sm, si, rm, NULL, NULL, x, NULL, NULL, &d, &o),
                 BN_ERR_NULL_POINTER);
    CHECK_STATUS(bn_forward_train_renorm(y, sm, si, r, dd, rm, rv, ms, ren_m, ren_s, NULL, x,
                                         NULL, NULL, &d, &o), BN_ERR_ARGUMENT);
    o.flags &= ~BN_STORED_STATS;
    CHECK_STATUS(bn_forward_train_renorm(y, sm, si, r, dd, rm, rv, ms, NULL, ren_s, NULL, x,
                                         NULL, NULL, &d, &o), BN_ERR_NULL_POINTER);
    CHECK_STATUS(bn_forward_train_renorm(y, sm, si, r, dd, rm, rv, NULL, ren_m, ren_s, NULL, x,
                                         NULL, NULL, &d, &o), BN_ERR_NULL_POINTER);
    CHECK_STATUS(bn_backward_renorm(y, NULL, NULL, dy, x, sm, si, NULL, dd, NULL, &d, &o),
                 BN_ERR_NULL_POINTER);
    o.rmax = NAN;
    CHECK_STATUS(bn_forward_train_renorm(y, sm, si, r, dd, rm, rv, ms, ren_m, ren_s, NULL, x,
                                         NULL, NULL, &d, &o), BN_ERR_ARGUMENT);
    CHECK_STATUS(bn_backward(y, NULL, NULL, dy, x, sm, si, NULL, &d, &o), BN_ERR_ARGUMENT);
    CHECK_STATUS(bn_backward(y, NULL, NULL, dy, x, sm, si, NULL, &d, NULL), BN_ERR_NULL_POINTER);
    int untouched = rm[0] == 1 && rm[1] == 2 && rv[0] == 3 && rv[1] == 4 && ms[0] == 1 &&
                    ren_m[0] == 0 && ren_s[0] == 1 && r[0] == 1 && dd[0] == 0 && sm[0] == 0;
    for (int k = 0; k < 24; k++) untouched &= y[k] == -7;
    CHECK(untouched);
    /* BN_FREEZE_RUNNING with renorm: none of the five arrays moves, nor the counter */
    bn_options f = BN_OPTIONS_KERAS;
    f.flags |= BN_FREEZE_RUNNING;
    int64_t nbt = 3;
    CHECK_STATUS(bn_forward_train_renorm(y, sm, si, r, dd, rm, rv, ms, ren_m, ren_s, &nbt, x,
                                         NULL, NULL, &d, &f), BN_OK);
    CHECK(rm[0] == 1 && rv[1] == 4 && ms[1] == 1 && ren_m[1] == 0 && ren_s[0] == 1 && nbt == 3);
    /* an empty batch with ghost batches: nothing normalized, nothing tracked, no gradients */
    const bn_desc empty = tu_desc(0, 2, 3, BN_FLOAT64, BN_CHANNELS_LAST);
    bn_options g = BN_OPTIONS_KERAS;
    g.virtual_batch = 2;
    double esm[2] = {1, 1}, esi[2] = {1, 1}, erm[2] = {5, 6}, erv[2] = {7, 8}, edw[2] = {3, 3};
    CHECK_STATUS(bn_forward_train(NULL, esm, esi, erm, erv, NULL, NULL, NULL, NULL, &empty, &g),
                 BN_OK);
    CHECK(isnan(esm[0]) && isnan(esi[1]) && erm[0] == 5 && erv[1] == 8);
    CHECK_STATUS(bn_backward(NULL, edw, NULL, NULL, NULL, esm, esi, NULL, &empty, &g), BN_OK);
    CHECK(edw[0] == 0 && edw[1] == 0);
}
