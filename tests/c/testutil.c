/* testutil.c - shared helpers of the C tests; see testutil.h. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>

tu_rng tu_rng_new(uint64_t seed) {
    tu_rng r = {seed * 0x9E3779B97F4A7C15ull + 1};
    return r;
}

static uint64_t next64(tu_rng *r) {
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double tu_uniform(tu_rng *r) { return (double)(next64(r) >> 11) * 0x1.0p-53; }

double tu_normal(tu_rng *r) {
    double u = 1.0 - tu_uniform(r), v = tu_uniform(r);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

bn_options tu_options(double eps, double momentum, int cumulative) {
    bn_options opt = BN_OPTIONS_DEFAULT;
    opt.eps = eps;
    opt.momentum = momentum;
    opt.cumulative = cumulative;
    return opt;
}

int64_t tu_numel(const bn_desc *d) { return d->n * d->c * d->s; }

bn_desc tu_desc(int64_t n, int64_t c, int64_t s, bn_dtype dtype, bn_layout layout) {
    bn_desc d = {n, c, s, dtype, layout, BN_PARAMS_AS_TENSOR};
    return d;
}

double *tu_randn(tu_rng *r, int64_t count, double offset, double scale) {
    double *v = malloc(sizeof(double) * (size_t)(count > 0 ? count : 1));
    for (int64_t k = 0; k < count; k++) v[k] = offset + scale * tu_normal(r);
    return v;
}

void *tu_to_dtype(const double *v, int64_t count, bn_dtype dtype) {
    const size_t size = dtype == BN_FLOAT64 ? 8 : dtype == BN_FLOAT32 ? 4 : 2;
    void *out = malloc(size * (size_t)(count > 0 ? count : 1));
    bn_convert(out, dtype, v, BN_FLOAT64, count); /* each value rounded once */
    return out;
}

double *tu_to_double(const void *p, int64_t count, bn_dtype dtype) {
    double *v = malloc(sizeof(double) * (size_t)(count > 0 ? count : 1));
    bn_convert(v, BN_FLOAT64, p, dtype, count); /* exact */
    return v;
}

double tu_worst(double worst, double err) {
    if (isnan(worst) || isnan(err)) return NAN;
    return err > worst ? err : worst;
}

double tu_max_rel_diff(const double *a, const double *b, int64_t n) {
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(a[i]) && isnan(b[i])) continue;
        if (a[i] == b[i]) continue; /* equal infinities too */
        worst = tu_worst(worst, fabs(a[i] - b[i]) / fmax(1.0, fabs(b[i])));
    }
    return worst;
}
