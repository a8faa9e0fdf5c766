/* testutil.h - what the C tests share: a seeded normal generator, layout indexing, and an
 * independent reference batch norm in long double, written as plainly as the formulas. */
#ifndef BN_TESTUTIL_H
#define BN_TESTUTIL_H

#include "bnorm.h"

#include <stdint.h>

/* splitmix64 stream and standard normal deviates (Box-Muller in double). */
typedef struct { uint64_t state; } tu_rng;
tu_rng tu_rng_new(uint64_t seed);
double tu_normal(tu_rng *r);
double tu_uniform(tu_rng *r); /* in [0, 1) */

/* BN_OPTIONS_DEFAULT with eps, momentum and cumulative set. */
bn_options tu_options(double eps, double momentum, int cumulative);

/* Offset in elements of value (i, c, j) in desc's layout. */
int64_t tu_index(const bn_desc *d, int64_t i, int64_t c, int64_t j);
int64_t tu_numel(const bn_desc *d);
bn_desc tu_desc(int64_t n, int64_t c, int64_t s, bn_dtype dtype, bn_layout layout);

/* A double array of the tensor's size filled with offset + scale * N(0, 1). Caller frees. */
double *tu_randn(tu_rng *r, int64_t count, double offset, double scale);
/* The same values converted to desc's dtype (float32 rounds). Caller frees. */
void *tu_to_dtype(const double *v, int64_t count, bn_dtype dtype);
/* A double copy of count values of the given dtype. Caller frees. */
double *tu_to_double(const void *p, int64_t count, bn_dtype dtype);

/* Reference statistics of channel c over the doubles x laid out as d: mean, biased variance. */
void tu_ref_stats(const bn_desc *d, const double *x, int64_t c, long double *mean,
                  long double *var);
/* Reference training/eval forward in long double, y returned as doubles in d's layout.
 * weight, bias: (C) or NULL; mean, var: (C) statistics to use, NULL for batch statistics. */
void tu_ref_forward(const bn_desc *d, double *y, const double *x, const double *weight,
                    const double *bias, const double *mean, const double *var, double eps);

#endif
