/* test_gradcheck.c - the backward passes against central finite differences in float64.
 * Loss L = sum(g * y) for a fixed random g, so dL/dy = g is the upstream gradient. */
#include "check.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { MAXN = 64 };

typedef struct {
    bn_desc d;
    double x[MAXN], g[MAXN], weight[8], bias[8], rm[8], rv[8];
    int training;
} problem;

static double loss(const problem *p) {
    double y[MAXN];
    bn_options opt = tu_options(1e-3, 0.1, 0);
    bn_status st = p->training
        ? bn_forward_train(y, NULL, NULL, NULL, NULL, NULL, p->x, p->weight, p->bias, &p->d, &opt)
        : bn_forward_eval(y, p->x, p->rm, p->rv, p->weight, p->bias, &p->d, opt.eps);
    if (st != BN_OK) return 0;
    long double sum = 0;
    for (int64_t k = 0; k < tu_numel(&p->d); k++) sum += (long double)p->g[k] * y[k];
    return (double)sum;
}

/* Central difference of the loss in *v. */
static double numeric(problem *p, double *v) {
    const double h = 1e-6, keep = *v;
    *v = keep + h;
    double up = loss(p);
    *v = keep - h;
    double down = loss(p);
    *v = keep;
    return (up - down) / (2 * h);
}

static void gradcheck(int64_t n, int64_t c, int64_t s, bn_layout lay, int training, uint64_t seed) {
    problem p;
    memset(&p, 0, sizeof p);
    p.d = tu_desc(n, c, s, BN_FLOAT64, lay);
    p.training = training;
    tu_rng r = tu_rng_new(seed);
    int64_t count = tu_numel(&p.d);
    for (int64_t k = 0; k < count; k++) p.x[k] = 1 + 2 * tu_normal(&r), p.g[k] = tu_normal(&r);
    for (int64_t k = 0; k < c; k++) {
        p.weight[k] = 1 + 0.5 * tu_normal(&r), p.bias[k] = tu_normal(&r);
        p.rm[k] = tu_normal(&r), p.rv[k] = 1 + tu_uniform(&r);
    }
    double dx[MAXN], dweight[8], dbias[8], sm[8], si[8], y[MAXN];
    bn_options opt = tu_options(1e-3, 0.1, 0);
    if (training) {
        CHECK_STATUS(bn_forward_train(y, sm, si, NULL, NULL, NULL, p.x, p.weight, p.bias, &p.d, &opt),
                     BN_OK);
        CHECK_STATUS(bn_backward_train(dx, dweight, dbias, p.g, p.x, sm, si, p.weight, &p.d), BN_OK);
    } else {
        CHECK_STATUS(bn_backward_eval(dx, dweight, dbias, p.g, p.x, p.rm, p.rv, p.weight, &p.d,
                                      opt.eps),
                     BN_OK);
    }
    double worst = 0;
    for (int64_t k = 0; k < count; k++) {
        double num = numeric(&p, &p.x[k]);
        worst = tu_worst(worst, fabs(dx[k] - num) / (1 + fabs(num)));
    }
    for (int64_t k = 0; k < c; k++) {
        double nw = numeric(&p, &p.weight[k]), nb = numeric(&p, &p.bias[k]);
        worst = tu_worst(worst, fabs(dweight[k] - nw) / (1 + fabs(nw)));
        worst = tu_worst(worst, fabs(dbias[k] - nb) / (1 + fabs(nb)));
    }
    CHECK_MSG(worst < 1e-7, "%s (%lld,%lld,%lld) layout %d: worst gradient error %g",
              training ? "train" : "eval", (long long)n, (long long)c, (long long)s, lay, worst);
}

BN_SUITE(suite_gradcheck) {
    static const int64_t shapes[][3] = {{2, 3, 4}, {5, 2, 1}, {1, 4, 7}, {3, 1, 5}};
    uint64_t seed = 100;
    for (size_t k = 0; k < 4; k++)
        for (int lay = 0; lay < 2; lay++)
            for (int training = 0; training < 2; training++)
                gradcheck(shapes[k][0], shapes[k][1], shapes[k][2], (bn_layout)lay, training, seed++);
}
