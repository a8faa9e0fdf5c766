/* test_overflow.c - float64 values near the top of the range. Statistics, the training forward
 * pass, eval and the backward pass against a quadruple-precision reference (whose exponent does
 * not overflow), where plain formulas overflow in an intermediate although the result is
 * finite; and, where the variance itself overflows (M2 beyond DBL_MAX, as torch's var_sum),
 * torch's results: invstd 0, y = bias, running_var inf, dx 0, dweight 0. Both layouts, shapes of
 * several blocks, and the same bits on 1, 2 and 3 threads. */
#include "check.h"
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The reference arithmetic: IEEE quadruple precision (__float128, computed in software by the
 * compiler's runtime), whose exponent reaches 2^16383, so that sums and squares of values near
 * DBL_MAX stay finite. Not long double: valgrind, which runs these tests (make valgrind),
 * computes the x87 long double as a double, and the reference would overflow. */
__extension__ typedef __float128 ref_t;

static ref_t rabs(ref_t v) { return v < 0 ? -v : v; }
static ref_t rmax(ref_t a, ref_t b) { return a > b ? a : b; }

/* sqrt(v) for v >= 0: v brought within double's range by exact powers of 4, a double's sqrt,
 * then two Newton steps in quadruple precision. */
static ref_t rsqrt(ref_t v) {
    if (!(v > 0) || v != v || v - v != 0) return v; /* 0, NaN, infinity */
    const ref_t four300 = (ref_t)ldexp(1.0, 600), two300 = (ref_t)ldexp(1.0, 300);
    ref_t factor = 1;
    while (v > four300) v /= four300, factor *= two300;
    while (v < 1 / four300) v *= four300, factor /= two300;
    ref_t r = sqrt((double)v);
    r = (r + v / r) / 2;
    r = (r + v / r) / 2;
    return r * factor;
}

/* Channel c holds regime c % REGIMES; value number k of the channel is drawn as below. */
enum { REGIMES = 8, C = 43 }; /* channels-last: a panel of 4 groups of 8, one group, 3 alone */

static double draw(int regime, tu_rng *r, int64_t k) {
    const double u = tu_uniform(r), sign = k % 2 ? 1 : -1;
    switch (regime) {
    case 0: return u * 1e152; /* the reported case: var 8e302, s1 * s1 of a block overflows */
    case 1: return 3e151 + u * (1e153 - 3e151); /* var 8e304: M2 overflows past 2^11 values */
    case 2: return (2 * u - 1) * 1e154;          /* squares overflow; M2 is infinite */
    case 3: return (2 * u - 1) * 1e300;          /* deviations near DBL_MAX; M2 infinite */
    case 4: /* ordinary values with a few large ones: var 1e303 */
        return k % 97 == 5 ? sign * (1 + u) * 5e152 : tu_normal(r);
    case 5: /* near -DBL_MAX, a few near +DBL_MAX: x - mean overflows for those */
        return (k % 61 == 7 ? 1.7e308 : -1.7e308) * (0.9 + 0.1 * u);
    case 6: /* near +-DBL_MAX by turns: every block's s1 and s2 overflow, the mean does not */
        return sign * 1.6e308 * (0.95 + 0.05 * u);
    default: return 5 + 2 * tu_normal(r); /* an ordinary channel, for comparison */
    }
}

static double *make_x(const bn_desc *d, uint64_t seed) {
    double *x = malloc(sizeof(double) * (size_t)tu_numel(d));
    tu_rng r = tu_rng_new(seed);
    for (int64_t c = 0; c < d->c; c++)
        for (int64_t i = 0, k = 0; i < d->n; i++)
            for (int64_t j = 0; j < d->s; j++, k++)
                x[bn_ref_index(d, i, c, j)] = draw((int)(c % REGIMES), &r, k);
    return x;
}

/* Channel c's mean and M2 in ref_t. */
static void ref_moments(const bn_desc *d, const double *x, int64_t c, ref_t *mean,
                        ref_t *m2) {
    ref_t s = 0, q = 0;
    for (int64_t i = 0; i < d->n; i++)
        for (int64_t j = 0; j < d->s; j++) s += x[bn_ref_index(d, i, c, j)];
    *mean = s / (ref_t)(d->n * d->s);
    for (int64_t i = 0; i < d->n; i++)
        for (int64_t j = 0; j < d->s; j++) {
            const ref_t e = x[bn_ref_index(d, i, c, j)] - *mean;
            q += e * e;
        }
    *m2 = q;
}

/* A double against a ref_t reference: within rel * magnitude where the reference is
 * clearly finite as a double, infinite of its sign where it clearly is not; within 1% of
 * DBL_MAX, rounding decides, and the case is not judged (but a NaN fails it). */
static int near_sum(double got, ref_t want, ref_t magnitude, double rel) {
    if (rabs(want) > (ref_t)1.01 * DBL_MAX) return isinf(got) && (got > 0) == (want > 0);
    if (rabs(want) > (ref_t)0.99 * DBL_MAX) return !isnan(got);
    return rabs((ref_t)got - want) <= rel * magnitude;
}

static int near(double got, ref_t want, double rel) {
    return near_sum(got, want, rabs(want), rel);
}

/* Whether a reference is clearly finite (1), clearly beyond DBL_MAX (0), or too close (-1). */
static int finite_ref(ref_t v) {
    return rabs(v) < (ref_t)0.99 * DBL_MAX ? 1 : rabs(v) > (ref_t)1.01 * DBL_MAX ? 0 : -1;
}

static const int64_t shapes[][3] = {{4, C, 300}, {3, C, 2500}, {2000, C, 1}};
enum { SHAPES = sizeof shapes / sizeof shapes[0] };

BN_SUITE(suite_overflow_moments) {
    /* channels-first: rows shorter than a block and longer; channels-last: blocks of rows */
    for (int k = 0; k < SHAPES; k++)
        for (int lay = 0; lay < 2; lay++) {
            bn_desc d = tu_desc(shapes[k][0], C, shapes[k][2], BN_FLOAT64, (bn_layout)lay);
            double *x = make_x(&d, 70 + (uint64_t)k);
            bn_moments m[C];
            CHECK_STATUS(bn_compute_moments(m, x, &d), BN_OK);
            for (int64_t c = 0; c < C; c++) {
                ref_t mean, m2;
                ref_moments(&d, x, c, &mean, &m2);
                const ref_t scale = rmax(rabs(mean), rsqrt(m2 / (ref_t)m[c].count));
                CHECK(m[c].count == d.n * d.s);
                CHECK_MSG(rabs(m[c].mean - mean) <= 1e-13 * scale && near(m[c].m2, m2, 1e-12),
                          "shape %d layout %d channel %lld: mean %.17g M2 %.17g, want %.17Lg "
                          "%.17Lg", k, lay, (long long)c, m[c].mean, m[c].m2, (long double)mean,
                          (long double)m2);
            }
            free(x);
        }
}

BN_SUITE(suite_overflow_merge) {
    /* means of opposite signs more than DBL_MAX apart: their difference overflows, the merged
     * mean does not; the M2 term is infinite indeed */
    bn_moments acc = {1, -1.5e308, 0}, part = {3, 1.5e308, 0};
    CHECK_STATUS(bn_merge_moments(&acc, &part, 1), BN_OK);
    CHECK(acc.count == 4 && acc.mean == 0.75e308 && isinf(acc.m2) && acc.m2 > 0);
    /* delta^2 overflows, delta^2 * na * nb / n = delta^2 / 2 does not */
    bn_moments a = {1, 0, 0}, b = {1, 1.5e154, 0};
    CHECK_STATUS(bn_merge_moments(&a, &b, 1), BN_OK);
    CHECK(a.mean == 0.75e154);
    CHECK_CLOSE(a.m2 / 1.125e308, 1, 1e-15);
    /* NaN and infinity are kept */
    bn_moments n1 = {2, 1, NAN}, n2 = {2, 3, 1}, i1 = {2, 1, 1}, i2 = {2, INFINITY, 0};
    CHECK_STATUS(bn_merge_moments(&n1, &n2, 1), BN_OK);
    CHECK(isnan(n1.m2));
    CHECK_STATUS(bn_merge_moments(&i1, &i2, 1), BN_OK);
    CHECK(isinf(i1.mean) && !(i1.m2 <= DBL_MAX));
}

/* A training step, eval with its running statistics, the backward pass, and the backward pass
 * in split stages (the sums, then dx from them). */
typedef struct {
    double *y, *ye, *dx, *dxs;
    double sm[C], si[C], rm[C], rv[C], dw[C], db[C], sdy[C], sdyx[C];
} step;

static void run_step(step *o, const bn_desc *d, const double *x, const double *dy,
                     const double *w, const double *b) {
    const size_t bytes = sizeof(double) * (size_t)tu_numel(d);
    o->y = malloc(bytes), o->ye = malloc(bytes), o->dx = malloc(bytes), o->dxs = malloc(bytes);
    for (int64_t c = 0; c < C; c++) o->rm[c] = 0, o->rv[c] = 1;
    bn_options opt = BN_OPTIONS_DEFAULT;
    CHECK_STATUS(bn_forward_train(o->y, o->sm, o->si, o->rm, o->rv, NULL, x, w, b, d, &opt),
                 BN_OK);
    CHECK_STATUS(bn_forward_eval(o->ye, x, o->rm, o->rv, w, b, d, 1e-5), BN_OK);
    CHECK_STATUS(bn_backward_train(o->dx, o->dw, o->db, dy, x, o->sm, o->si, w, d), BN_OK);
    CHECK_STATUS(bn_backward_sums(o->sdy, o->sdyx, dy, x, o->sm, o->si, d), BN_OK);
    CHECK_STATUS(bn_backward_train_sums(o->dxs, dy, x, o->sm, o->si, w, o->sdy, o->sdyx,
                                        d->n * d->s, d),
                 BN_OK);
}

static void free_step(step *o) { free(o->y), free(o->ye), free(o->dx), free(o->dxs); }

static int same_step(const step *a, const step *b, const bn_desc *d) {
    const size_t big = sizeof(double) * (size_t)tu_numel(d);
    return !memcmp(a->y, b->y, big) && !memcmp(a->ye, b->ye, big) && !memcmp(a->dx, b->dx, big) &&
           !memcmp(a->dxs, b->dxs, big) && !memcmp(a->sm, b->sm, sizeof a->sm) &&
           !memcmp(a->si, b->si, sizeof a->si) && !memcmp(a->rm, b->rm, sizeof a->rm) &&
           !memcmp(a->rv, b->rv, sizeof a->rv) && !memcmp(a->dw, b->dw, sizeof a->dw) &&
           !memcmp(a->db, b->db, sizeof a->db) && !memcmp(a->sdy, b->sdy, sizeof a->sdy) &&
           !memcmp(a->sdyx, b->sdyx, sizeof a->sdyx);
}

/* Channel c of a step against ref_t; returns 0 where M2 is too close to DBL_MAX to judge. */
static int check_channel(const step *o, const bn_desc *d, const double *x, const double *dy,
                         const double *w, const double *b, int64_t c, int dy_kind) {
    const double eps = 1e-5;
    const ref_t m = (ref_t)(d->n * d->s);
    ref_t mean, m2;
    ref_moments(d, x, c, &mean, &m2);
    const int m2_finite = finite_ref(m2);
    if (m2_finite < 0) return 0;
    const ref_t scale = rmax(rabs(mean), rsqrt(m2 / m));
    const ref_t invstd = m2_finite ? 1.0 / rsqrt(m2 / m + eps) : 0;
    const ref_t rv = 0.9 + 0.1 * m2 / (m - 1);
    CHECK_MSG(rabs(o->sm[c] - mean) <= 1e-13 * scale &&
                  rabs(o->rm[c] - 0.1 * mean) <= 1e-13 * scale,
              "channel %lld: save_mean %.17g running_mean %.17g, want %.17Lg", (long long)c,
              o->sm[c], o->rm[c], (long double)mean);
    /* infinite with M2, as torch's: invstd 0, running_var from M2 / (m - 1) infinite */
    CHECK_MSG(m2_finite ? near(o->si[c], invstd, 1e-13) && near(o->rv[c], rv, 1e-13)
                        : o->si[c] == 0 && isinf(o->rv[c]) && o->rv[c] > 0,
              "channel %lld: save_invstd %.17g running_var %.17g, want %.17Lg %.17Lg",
              (long long)c, o->si[c], o->rv[c], (long double)invstd, (long double)rv);
    const ref_t rinv = isinf(o->rv[c]) ? 0 : 1.0 / rsqrt((ref_t)o->rv[c] + eps);
    ref_t sdy = 0, sdyx = 0, sdy_abs = 0, sdyx_abs = 0;
    int64_t bad_y = 0, bad_ye = 0, first_y = -1;
    for (int64_t i = 0; i < d->n; i++)
        for (int64_t j = 0; j < d->s; j++) {
            const int64_t at = bn_ref_index(d, i, c, j);
            const ref_t y = (x[at] - mean) * invstd * w[c] + b[c];
            const ref_t ye = (x[at] - (ref_t)o->rm[c]) * rinv * w[c] + b[c];
            /* where the variance is infinite, y = bias exactly (torch: x * 0 + bias) */
            if (!(m2_finite ? rabs(o->y[at] - y) <= 1e-12 * rmax(1, rabs(y)) : o->y[at] == b[c]))
                bad_y++, first_y = first_y < 0 ? at : first_y;
            if (!(rinv ? rabs(o->ye[at] - ye) <= 1e-12 * rmax(1, rabs(ye)) : o->ye[at] == b[c]))
                bad_ye++;
            sdy += dy[at], sdy_abs += rabs(dy[at]);
            sdyx += dy[at] * (x[at] - mean) * invstd;
            sdyx_abs += rabs(dy[at] * (x[at] - mean) * invstd);
        }
    CHECK_MSG(bad_y == 0 && bad_ye == 0, "channel %lld: %lld y and %lld eval y wrong, first y "
              "%.17g", (long long)c, (long long)bad_y, (long long)bad_ye,
              first_y < 0 ? 0 : o->y[first_y]);
    /* dbias = sum dy (infinite where it is beyond DBL_MAX), dweight = sum dy * xhat */
    CHECK_MSG(near_sum(o->db[c], sdy, sdy_abs, 1e-13) &&
                  (m2_finite ? near_sum(o->dw[c], sdyx, sdyx_abs, 1e-12) : o->dw[c] == 0),
              "dy kind %d channel %lld: dbias %.17g dweight %.17g, want %.17Lg %.17Lg", dy_kind,
              (long long)c, o->db[c], o->dw[c], (long double)sdy, (long double)sdyx);
    CHECK_MSG(!memcmp(&o->sdy[c], &o->db[c], sizeof(double)) &&
                  !memcmp(&o->sdyx[c], &o->dw[c], sizeof(double)),
              "channel %lld: bn_backward_sums differs from bn_backward_train", (long long)c);
    ref_t worst = 0, biggest = 0;
    int64_t nonzero = 0, split_differs = 0;
    for (int64_t i = 0; i < d->n; i++)
        for (int64_t j = 0; j < d->s; j++) {
            const int64_t at = bn_ref_index(d, i, c, j);
            const ref_t want =
                (dy[at] - sdy / m - (x[at] - mean) * invstd * sdyx / m) * invstd * w[c];
            const ref_t e = rabs((ref_t)o->dx[at] - want);
            if (!(e <= worst) && worst == worst) worst = e; /* a NaN, once met, stays */
            if (rabs(want) > biggest) biggest = rabs(want);
            nonzero += o->dx[at] != 0;
            split_differs += memcmp(&o->dx[at], &o->dxs[at], sizeof(double)) != 0;
        }
    if (!m2_finite)
        CHECK_MSG(nonzero == 0, "channel %lld: %lld dx not 0 where the variance is infinite",
                  (long long)c, (long long)nonzero);
    else if (finite_ref(biggest) == 1)
        CHECK_MSG(worst <= 1e-10 * biggest, "dy kind %d channel %lld: dx error %Lg of %Lg",
                  dy_kind, (long long)c, (long double)worst, (long double)biggest);
    /* dx from the split stages: the same bits wherever the sums they carry are finite */
    if (isfinite(o->sdy[c]) && isfinite(o->sdyx[c]))
        CHECK_MSG(split_differs == 0, "channel %lld: %lld dx from the sums differ", (long long)c,
                  (long long)split_differs);
    return 1;
}

/* One step of shape d; dy as dy_kind says: 0 ordinary, 1 huge of one sign (sum dy passes
 * DBL_MAX, mean dy does not), 2 huge of alternating signs (every plain sum overflows, the
 * results cancel). */
static void check_step(const bn_desc *d, int dy_kind, uint64_t seed) {
    const int64_t count = tu_numel(d);
    double *x = make_x(d, seed), *dy = malloc(sizeof(double) * (size_t)count), w[C], b[C];
    tu_rng r = tu_rng_new(seed + 1);
    for (int64_t k = 0; k < count; k++)
        dy[k] = dy_kind == 0   ? tu_normal(&r)
                : dy_kind == 1 ? 1e306 * (1 + tu_uniform(&r))
                               : (k % 2 ? 1 : -1) * 1e308 * (0.99 + 0.01 * tu_uniform(&r));
    for (int64_t c = 0; c < C; c++) w[c] = 0.5 + 0.01 * (double)c, b[c] = 0.25 - 0.01 * (double)c;
    step o;
    bn_set_num_threads(1);
    CHECK(bn_get_num_threads() == 1);
    run_step(&o, d, x, dy, w, b);
    int judged = 0;
    for (int64_t c = 0; c < C; c++) judged += check_channel(&o, d, x, dy, w, b, c, dy_kind);
    CHECK_MSG(judged >= C - 2, "only %d channels judged", judged);
    for (int t = 2; t <= 3; t++) {
        step more;
        bn_set_num_threads(t);
        CHECK(bn_get_num_threads() == t);
        run_step(&more, d, x, dy, w, b);
        CHECK_MSG(same_step(&o, &more, d), "layout %d dy kind %d: %d threads give other bits",
                  (int)d->layout, dy_kind, t);
        free_step(&more);
    }
    bn_set_num_threads(0);
    free_step(&o);
    free(x), free(dy);
}

BN_SUITE(suite_overflow_train) {
    for (int k = 0; k < SHAPES; k++)
        for (int lay = 0; lay < 2; lay++) {
            bn_desc d = tu_desc(shapes[k][0], C, shapes[k][2], BN_FLOAT64, (bn_layout)lay);
            check_step(&d, 0, 80 + (uint64_t)k);
        }
}

BN_SUITE(suite_overflow_backward_sums) {
    for (int kind = 1; kind <= 2; kind++)
        for (int lay = 0; lay < 2; lay++) {
            bn_desc d = tu_desc(4, C, 300, BN_FLOAT64, (bn_layout)lay);
            check_step(&d, kind, 90 + (uint64_t)kind);
        }
}

/* Every channel: +-v by turns. */
static void fill_alternating(float *x, const bn_desc *d, float v) {
    for (int64_t c = 0; c < d->c; c++)
        for (int64_t i = 0; i < d->n; i++)
            for (int64_t j = 0; j < d->s; j++) x[bn_ref_index(d, i, c, j)] = (i + j) % 2 ? v : -v;
}

/* float32 inputs widened to double cannot overflow a statistic: the largest floats give finite
 * moments and variance (and values of 1e37, whose invstd is a normal float, y = +-1). */
BN_SUITE(suite_overflow_float32_cannot) {
    for (int lay = 0; lay < 2; lay++) {
        bn_desc d = tu_desc(3, 2, 700, BN_FLOAT32, (bn_layout)lay);
        const int64_t count = tu_numel(&d);
        float *x = malloc(sizeof(float) * (size_t)count), *y = malloc(sizeof(float) * (size_t)count);
        fill_alternating(x, &d, FLT_MAX);
        bn_moments m[2];
        double sm[2], si[2];
        CHECK_STATUS(bn_compute_moments(m, x, &d), BN_OK);
        bn_options opt = BN_OPTIONS_DEFAULT;
        CHECK_STATUS(bn_forward_train(y, sm, si, NULL, NULL, NULL, x, NULL, NULL, &d, &opt), BN_OK);
        for (int c = 0; c < 2; c++) {
            CHECK(m[c].mean == 0);
            CHECK_CLOSE(m[c].m2 / ((double)FLT_MAX * FLT_MAX * (double)(count / 2)), 1, 1e-13);
            CHECK_CLOSE(si[c] * FLT_MAX, 1, 1e-13);
        }
        fill_alternating(x, &d, 1e37f);
        CHECK_STATUS(bn_forward_train(y, sm, si, NULL, NULL, NULL, x, NULL, NULL, &d, &opt), BN_OK);
        int64_t bad = 0;
        for (int64_t k = 0; k < count; k++) bad += !(fabsf(fabsf(y[k]) - 1) <= 1e-6f);
        CHECK_MSG(bad == 0, "layout %d: %lld of y not +-1", lay, (long long)bad);
        free(x), free(y);
    }
}
