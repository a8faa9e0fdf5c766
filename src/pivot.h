/* pivot.h - float32 statistics about a pivot, and the bound that says whether they keep the
 * accuracy promise.
 *
 * A float32 channel's statistics cost a third as much in float arithmetic (16 lanes a vector,
 * no widening) as in double. The kernels form them so about a pivot p, a float near the mean
 * (the mean of a sample of the channel's values):
 *   d = fl(x - p), summed as trees of BN_TREE values in float, each tree's sums of d and d * d
 *   widened and added in double: s1 = sum d, s2 = sum d * d (to rounding).
 * Rounding (u = 2^-24): a d carries one rounding, a tree three more levels, so each term of s1 is
 * off by at most 4u of itself and each of s2 by 6u (d's rounding twice, the square's, the tree's
 * three); the double additions add count * 2^-53 at most. Squares below 2^-126 lose up to 2^-150
 * each. Hence, with |sum d| <= sqrt(count * sum d^2):
 *   |error of s1| <= e1 = (4u + count 2^-52) sqrt(count s2 / (1 - t2)),
 *   |error of s2| <= e2 = t2 / (1 - t2) s2 + count 2^-148,  t2 = 6u + count 2^-52,
 * and of mean = p + s1 / count and M2 = s2 - s1 (s1 / count): |error of mean| <= e1 / count,
 * |error of M2| <= e2 + 2 |s1 / count| e1 + e1^2 / count. Both are small next to the standard
 * deviation and M2 when p is near the mean (|p - mean| below half the deviation, say).
 *
 * The promise is an output within 1e-6 (16.8u) of max(1, |y|). The element-wise pass costs at
 * most 5u of it (x - hi, - lo, * scale and the rounding of scale, + shift); an error of the mean
 * costs its ratio to the deviation, one of M2 half its relative size. The sums are kept where
 *   (e1 / count) / sqrt(M2 / count) + (error of M2) / (2 M2) <= BN_PIVOT_BUDGET = 11u,
 * checked after the fact from the sums themselves. Where that fails (a pivot far from the mean,
 * a constant channel, values so small that squares underflow, or so large that they overflow, a
 * NaN or an infinity) the kernels sum again about the mean just found, and where that fails too
 * they take the exact path in double. The decision depends on the channel's values alone, so
 * the result is the same bits whatever the thread count. */
#ifndef BN_PIVOT_H
#define BN_PIVOT_H

#include "bnorm.h"

#include <float.h>
#include <math.h>
#include <stdint.h>

#define BN_TREE 8       /* values of a lane summed as one tree in float: three levels */
#define BN_SAMPLE 64    /* channels-first: values (at most) whose mean is the pivot */
#define BN_SAMPLE_ROWS 32 /* channels-last: rows whose mean is each channel's pivot */
#define BN_PIVOT_BUDGET (11 * 0x1p-24)

/* The constants of the bound for sums over `count` values. */
typedef struct {
    double n, t1, t2, inv, budget; /* inv = 1 / (1 - t2); budget -1 where no sum is kept */
    double e1_of_root_s2;          /* e1 = e1_of_root_s2 * sqrt(s2): t1 sqrt(n inv) */
    double e1_sq_of_s2;            /* e1^2 / n = e1_sq_of_s2 * s2: t1^2 inv */
    double root_inv_n;             /* 1 / sqrt(n) */
} bn_pivot_bound;

static inline bn_pivot_bound bn_pivot_bound_for(int64_t count) {
    const double u = 0x1p-24, n = (double)count, acc = n * 0x1p-52;
    bn_pivot_bound b = {n, 4 * u + acc, 6 * u + acc, 0, BN_PIVOT_BUDGET, 0, 0, 0};
    if (!(b.t2 < 0.5)) b.budget = -1; /* too many values for the bound: never kept */
    b.inv = 1 / (1 - b.t2);
    b.e1_of_root_s2 = b.t1 * sqrt(n * b.inv);
    b.e1_sq_of_s2 = b.t1 * b.t1 * b.inv;
    b.root_inv_n = 1 / sqrt(n);
    return b;
}

/* Whether the float sums s1, s2 about the pivot p keep the promise (1) or not (0), and the mean
 * and M2 they give (meaningless where not). Without a branch, so that a loop over lanes
 * vectorizes. The test is the one above multiplied through by M2 (> 0 where it can pass):
 *   e1 sqrt(M2 / n) + (error of M2) / 2 <= budget M2,
 * one division (the mean's) and two square roots a channel; as a sum of quotients it took four
 * divisions and two roots ((256, 1024) training: 3.7 us of its moments' 22 us). */
static inline int bn_pivot_keep(const bn_pivot_bound *b, double p, double s1, double s2,
                                double *mean, double *m2) {
    const double q = s1 / b->n, m = s2 - s1 * q;
    const double e1 = b->e1_of_root_s2 * sqrt(s2);
    const double em2 = b->t2 * b->inv * s2 + b->n * 0x1p-148 + 2 * fabs(q) * e1 +
                       b->e1_sq_of_s2 * s2;
    *mean = p + q;
    *m2 = m;
    return (s2 > 0) & (s2 <= DBL_MAX) & (fabs(s1) <= DBL_MAX) & (m > 0) & (m <= DBL_MAX) &
           (e1 * sqrt(m) * b->root_inv_n + 0.5 * em2 <= b->budget * m);
}

/* The moments of `count` values from their float sums s1, s2 about the pivot p: 1 and *out
 * where the bound keeps the promise, else 0 and *out untouched. */
static inline int bn_pivot_moments(bn_moments *out, double p, int64_t count, double s1,
                                   double s2) {
    const bn_pivot_bound b = bn_pivot_bound_for(count);
    double mean, m2;
    if (!bn_pivot_keep(&b, p, s1, s2, &mean, &m2)) return 0;
    out->count = count;
    out->mean = mean;
    out->m2 = m2;
    return 1;
}

/* The pivot of a second try: the mean the first one found (p + s1 / count), where finite. */
static inline double bn_pivot_again(double p, int64_t count, double s1) {
    return p + s1 / (double)count;
}

#endif
