/* testutil.h - what the C tests share: a seeded normal generator, tensors converted between
 * dtypes, and worst errors that a NaN cannot hide in. The expected values come from the scalar
 * reference of every pass, src/reference/reference.h (bn_ref_*, bn_ref_index for layouts). */
#ifndef BN_TESTUTIL_H
#define BN_TESTUTIL_H

#include "bnorm.h"
#include "reference/reference.h"

#include <stdint.h>

/* splitmix64 stream and standard normal deviates (Box-Muller in double). */
typedef struct { uint64_t state; } tu_rng;
tu_rng tu_rng_new(uint64_t seed);
double tu_normal(tu_rng *r);
double tu_uniform(tu_rng *r); /* in [0, 1) */

/* BN_OPTIONS_DEFAULT with eps, momentum and cumulative set. */
bn_options tu_options(double eps, double momentum, int cumulative);

int64_t tu_numel(const bn_desc *d);
bn_desc tu_desc(int64_t n, int64_t c, int64_t s, bn_dtype dtype, bn_layout layout);

/* A double array of the tensor's size filled with offset + scale * N(0, 1). Caller frees. */
double *tu_randn(tu_rng *r, int64_t count, double offset, double scale);
/* The same values converted to dtype (any of the four: each rounded once). Caller frees. */
void *tu_to_dtype(const double *v, int64_t count, bn_dtype dtype);
/* A double copy of count values of the given dtype. Caller frees. */
double *tu_to_double(const void *p, int64_t count, bn_dtype dtype);

/* The worst of two errors for a check written `worst <= tol`: their maximum, and NaN when
 * either is NaN, so that a NaN met anywhere fails the check (fmax(worst, err) drops a NaN, and
 * `if (err > worst) worst = err` never takes one). */
double tu_worst(double worst, double err);
/* Largest |a[i] - b[i]| / max(1, |b[i]|) over n doubles, by tu_worst: NaN where only one side is
 * NaN or the difference is (infinities of opposite signs); equal infinities and two NaNs agree. */
double tu_max_rel_diff(const double *a, const double *b, int64_t n);

#endif
