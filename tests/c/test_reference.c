/* test_reference.c - the tests' own tools, checked: worst errors keep a NaN, so a NaN fails
 * every check written `worst <= tol`; the scalar reference's epilogues (relu, add_relu) and
 * their backward pass, against central differences of the reference's forward pass. (The
 * reference's batch norm passes are checked against torch in test_golden.c.) */
#include "check.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

BN_SUITE(suite_reference_worst_keeps_nan) {
    /* what the tests did before, and why it let a NaN through */
    CHECK(fmax(0.0, NAN) == 0.0);
    double worst = 0;
    const double errs[] = {1e-9, NAN, 1e-12};
    for (int k = 0; k < 3; k++) worst = tu_worst(worst, errs[k]);
    CHECK_MSG(isnan(worst), "a NaN error was dropped: worst %g", worst);
    CHECK_MSG(!(worst <= 1e-6), "a NaN error passes the check");
    CHECK(isnan(tu_worst(NAN, 0.0)) && isnan(tu_worst(0.0, NAN)));
    CHECK(tu_worst(1.0, 2.0) == 2.0 && tu_worst(2.0, 1.0) == 2.0 && tu_worst(0.0, INFINITY) == INFINITY);

    /* tu_max_rel_diff: one side NaN, opposite infinities, an infinity against a finite value
     * fail, wherever they are; agreeing NaNs and infinities pass */
    const double want[4] = {1, 2, 3, 4};
    const double bad[][4] = {{1, NAN, 3, 4}, {NAN, 2, 3, 4}, {1, 2, 3, NAN}, {1, INFINITY, 3, 4}};
    for (int k = 0; k < 4; k++) {
        const double d = tu_max_rel_diff(bad[k], want, 4);
        CHECK_MSG(!(d <= 1e-6), "case %d: difference %g passes", k, d);
    }
    const double inf_a[2] = {INFINITY, 1}, inf_b[2] = {-INFINITY, 1};
    CHECK(!(tu_max_rel_diff(inf_a, inf_b, 2) <= 1e-6));
    const double nan_want[3] = {NAN, INFINITY, -2}, nan_got[3] = {NAN, INFINITY, -2};
    CHECK(tu_max_rel_diff(nan_got, nan_want, 3) == 0);
    const double near[3] = {1 + 1e-9, 2, 3}, exact[3] = {1, 2, 3};
    CHECK(tu_max_rel_diff(near, exact, 3) > 0 && tu_max_rel_diff(near, exact, 3) <= 1e-8);
}

/* The layout index: both layouts visit every offset once. */
BN_SUITE(suite_reference_index) {
    for (int lay = 0; lay < 2; lay++) {
        bn_desc d = tu_desc(3, 4, 5, BN_FLOAT64, (bn_layout)lay);
        int seen[60] = {0};
        for (int64_t i = 0; i < 3; i++)
            for (int64_t c = 0; c < 4; c++)
                for (int64_t j = 0; j < 5; j++) seen[bn_ref_index(&d, i, c, j)]++;
        int once = 1;
        for (int k = 0; k < 60; k++) once &= seen[k] == 1;
        CHECK_MSG(once, "layout %d: an offset is not visited exactly once", lay);
    }
    bn_desc cl = tu_desc(2, 3, 4, BN_FLOAT64, BN_CHANNELS_LAST);
    bn_desc cf = tu_desc(2, 3, 4, BN_FLOAT64, BN_CHANNELS_FIRST);
    CHECK(bn_ref_index(&cl, 1, 2, 3) == (1 * 4 + 3) * 3 + 2);
    CHECK(bn_ref_index(&cf, 1, 2, 3) == (1 * 3 + 2) * 4 + 3);
}

BN_SUITE(suite_reference_epilogues) {
    double y[6] = {-1.5, 0.0, 2.0, NAN, -0.0, 1e-300}, z[6] = {1, 1, -3, 0, 0, 0};
    double r[6], a[6];
    memcpy(r, y, sizeof y), memcpy(a, y, sizeof y);
    bn_ref_relu(r, 6);
    CHECK(r[0] == 0 && r[1] == 0 && r[2] == 2 && isnan(r[3]) && r[4] == 0 && r[5] == 1e-300);
    bn_ref_add_relu(a, z, 6);
    CHECK(a[0] == 0 && a[1] == 1 && a[2] == 0 && isnan(a[3]) && a[4] == 0 && a[5] == 1e-300);
    /* the mask: the gradient passes where the output is positive, nowhere else (NaN: no) */
    const double dy[6] = {1, 2, 3, 4, 5, 6};
    double g[6], dz[6];
    bn_ref_relu_backward(g, dz, dy, a, 6);
    CHECK(g[0] == 0 && g[1] == 2 && g[2] == 0 && g[3] == 0 && g[4] == 0 && g[5] == 6);
    CHECK(!memcmp(g, dz, sizeof g));
    double same[6]; /* in place: dy_bn is dy */
    memcpy(same, dy, sizeof dy);
    bn_ref_relu_backward(same, NULL, same, a, 6);
    CHECK(!memcmp(same, g, sizeof g));
}

/* A problem for central differences of L = sum(g * add_relu(bn(x), z)) through the reference. */
enum { GN = 4, GC = 3, GS = 5, GM = GN * GC * GS };
typedef struct {
    bn_desc d;
    double x[GM], z[GM], g[GM], weight[GC], bias[GC], rm[GC], rv[GC];
    int training;
} problem;

static const double EPS = 1e-3;

static void forward(const problem *p, double *y) {
    bn_options opt = tu_options(EPS, 0.1, 0);
    if (p->training)
        bn_ref_forward_train(y, NULL, NULL, NULL, NULL, NULL, p->x, p->weight, p->bias, &p->d, &opt);
    else
        bn_ref_forward_eval(y, p->x, p->rm, p->rv, p->weight, p->bias, &p->d, EPS);
    bn_ref_add_relu(y, p->z, GM);
}

static double loss(const problem *p) {
    double y[GM];
    forward(p, y);
    long double sum = 0;
    for (int k = 0; k < GM; k++) sum += (long double)p->g[k] * y[k];
    return (double)sum;
}

static double numeric(problem *p, double *v) {
    const double h = 1e-6, keep = *v;
    *v = keep + h;
    const double up = loss(p);
    *v = keep - h;
    const double down = loss(p);
    *v = keep;
    return (up - down) / (2 * h);
}

/* The reference's backward with the add_relu epilogue (mask, dz, then the batch norm's backward)
 * against central differences; pre-activations are kept away from the kink at 0. */
BN_SUITE(suite_reference_gradcheck_add_relu) {
    for (int lay = 0; lay < 2; lay++)
        for (int training = 0; training < 2; training++) {
            problem p;
            memset(&p, 0, sizeof p);
            p.d = tu_desc(GN, GC, GS, BN_FLOAT64, (bn_layout)lay);
            p.training = training;
            tu_rng r = tu_rng_new(300 + (uint64_t)(2 * lay + training));
            for (int k = 0; k < GC; k++) {
                p.weight[k] = 1 + 0.5 * tu_normal(&r), p.bias[k] = 0.3 * tu_normal(&r);
                p.rm[k] = tu_normal(&r), p.rv[k] = 1 + tu_uniform(&r);
            }
            for (int k = 0; k < GM; k++) p.x[k] = 1 + 2 * tu_normal(&r), p.g[k] = tu_normal(&r);
            /* z chosen so that bn(x) + z is at least 0.05 from 0, half above and half below */
            double y[GM];
            bn_options opt = tu_options(EPS, 0.1, 0);
            double bn[GM], sm[GC], si[GC];
            if (training)
                bn_ref_forward_train(bn, sm, si, NULL, NULL, NULL, p.x, p.weight, p.bias, &p.d, &opt);
            else
                bn_ref_forward_eval(bn, p.x, p.rm, p.rv, p.weight, p.bias, &p.d, EPS);
            int active = 0;
            for (int k = 0; k < GM; k++) {
                const double target = k % 2 ? 0.5 + tu_uniform(&r) : -0.5 - tu_uniform(&r);
                p.z[k] = target - bn[k];
                active += k % 2;
            }
            forward(&p, y);
            double dy_bn[GM], dz[GM], dx[GM], dweight[GC], dbias[GC];
            bn_ref_relu_backward(dy_bn, dz, p.g, y, GM);
            if (training)
                bn_ref_backward_train(dx, dweight, dbias, dy_bn, p.x, sm, si, p.weight, &p.d);
            else
                bn_ref_backward_eval(dx, dweight, dbias, dy_bn, p.x, p.rm, p.rv, p.weight, &p.d,
                                     EPS);
            double worst = 0;
            for (int k = 0; k < GM; k++) {
                const double nx = numeric(&p, &p.x[k]), nz = numeric(&p, &p.z[k]);
                worst = tu_worst(worst, fabs(dx[k] - nx) / (1 + fabs(nx)));
                worst = tu_worst(worst, fabs(dz[k] - nz) / (1 + fabs(nz)));
            }
            for (int k = 0; k < GC; k++) {
                const double nw = numeric(&p, &p.weight[k]), nb = numeric(&p, &p.bias[k]);
                worst = tu_worst(worst, fabs(dweight[k] - nw) / (1 + fabs(nw)));
                worst = tu_worst(worst, fabs(dbias[k] - nb) / (1 + fabs(nb)));
            }
            CHECK(active == GM / 2);
            CHECK_MSG(worst < 1e-7, "%s layout %d: worst gradient error %g",
                      training ? "train" : "eval", lay, worst);
        }
}

/* The reference's moments, forward and running update on a case small enough to write out:
 * x = 1, 2, 3, 4 in one channel: mean 2.5, M2 5, biased var 1.25, unbiased 5/3. */
BN_SUITE(suite_reference_by_hand) {
    bn_desc d = tu_desc(2, 1, 2, BN_FLOAT64, BN_CHANNELS_FIRST);
    const double x[4] = {1, 2, 3, 4};
    bn_moments mo;
    bn_ref_moments(&mo, x, &d);
    CHECK(mo.count == 4 && mo.mean == 2.5 && mo.m2 == 5);
    double y[4], sm, si, rm = 1, rv = 2;
    int64_t nbt = 0;
    bn_options opt = tu_options(0.0, 0.25, 0);
    bn_ref_forward_train(y, &sm, &si, &rm, &rv, &nbt, x, NULL, NULL, &d, &opt);
    CHECK(nbt == 1 && sm == 2.5);
    CHECK_CLOSE(si, 1 / sqrt(1.25), 1e-16);
    CHECK_CLOSE(y[0], -1.5 / sqrt(1.25), 1e-15);
    CHECK_CLOSE(rm, 0.75 * 1 + 0.25 * 2.5, 1e-16);
    CHECK_CLOSE(rv, 0.75 * 2 + 0.25 * 5.0 / 3.0, 1e-15);
    /* the cumulative average: after this second batch, the plain average of the two */
    bn_options cum = tu_options(0.0, 0.25, 1);
    double rm2 = 7, rv2 = 7;
    int64_t nbt2 = 0;
    const double x2[4] = {3, 3, 5, 5}; /* mean 4, unbiased var 4/3 */
    bn_ref_forward_train(y, NULL, NULL, &rm2, &rv2, &nbt2, x, NULL, NULL, &d, &cum);
    CHECK(rm2 == 2.5 && nbt2 == 1);
    bn_ref_forward_train(y, NULL, NULL, &rm2, &rv2, &nbt2, x2, NULL, NULL, &d, &cum);
    CHECK(nbt2 == 2);
    CHECK_CLOSE(rm2, (2.5 + 4) / 2, 1e-15);
    CHECK_CLOSE(rv2, (5.0 / 3.0 + 4.0 / 3.0) / 2, 1e-15);
    /* an empty batch: NaN statistics, running ones kept, the call counted */
    bn_desc empty = tu_desc(0, 1, 2, BN_FLOAT64, BN_CHANNELS_FIRST);
    bn_ref_forward_train(NULL, &sm, &si, &rm, &rv, &nbt, NULL, NULL, NULL, &empty, &opt);
    CHECK(isnan(sm) && isnan(si) && nbt == 2 && rm == 0.75 * 1 + 0.25 * 2.5);
    bn_ref_moments(&mo, NULL, &empty);
    CHECK(mo.count == 0 && mo.mean == 0 && mo.m2 == 0);
    double dw = 7, db = 7;
    bn_ref_backward_train(NULL, &dw, &db, NULL, NULL, &sm, &si, NULL, &empty);
    CHECK(dw == 0 && db == 0);
}
