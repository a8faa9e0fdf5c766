/* moments.h - mergeable per-channel statistics: count, mean and M2 = sum (x - mean)^2.
 *
 * Partial moments of disjoint pieces of a channel merge exactly (Chan, Golub and LeVeque), for
 * any counts including zero. Merging the same pieces in the same order gives the same bits, which
 * is what makes the results independent of how work is split between threads or processes. */
#ifndef BN_MOMENTS_H
#define BN_MOMENTS_H

#include "bnorm.h" /* bn_moments is public: bn_compute_moments, bn_merge_moments */

#include <math.h>
#include <stdint.h>

static inline bn_moments bn_moments_empty(void) {
    bn_moments m = {0, 0.0, 0.0};
    return m;
}

/* acc += part. An empty part leaves acc's bits unchanged; merging into an empty acc copies part.
 * Ranges (finite means and M2s, na, nb >= 1): w = na * nb / n is in [1/2, n/4]; delta * (nb / n)
 * is at most |delta|, so the new mean lies between the two and cannot overflow. The M2 term is
 * formed as (delta * w) * delta: where |delta| <= 1 the first product is at most w, and where
 * |delta| > 1 it is at most the term, so it overflows only where the term does (delta * delta
 * first would overflow from |delta| > 2^512 on, though w may be 1/2). delta itself overflows
 * only for means of opposite signs more than DBL_MAX apart: the M2 term is then infinite indeed
 * (at least delta^2 / 2), and the mean is formed as the weighted sum of the two, which cannot
 * overflow. A NaN or infinite mean or M2 is never replaced: it propagates. */
static inline void bn_moments_merge(bn_moments *acc, bn_moments part) {
    if (part.count == 0) return;
    if (acc->count == 0) {
        *acc = part;
        return;
    }
    double na = (double)acc->count, nb = (double)part.count, n = na + nb;
    double delta = part.mean - acc->mean;
    if (isinf(delta) && isfinite(acc->mean) && isfinite(part.mean))
        acc->mean = acc->mean * (na / n) + part.mean * (nb / n);
    else
        acc->mean += delta * (nb / n);
    acc->m2 += part.m2 + delta * (na * nb / n) * delta;
    acc->count += part.count;
}

/* Biased variance M2 / count (0 for an empty set). */
static inline double bn_moments_var(bn_moments m) {
    return m.count > 0 ? m.m2 / (double)m.count : 0.0;
}

#endif
