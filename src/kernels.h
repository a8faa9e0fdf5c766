/* kernels.h - the hot loops, one set per dtype. Everything else in the library is a driver.
 *
 * Two shapes of work, one per memory layout:
 *   channels-first: one channel at a time, its N rows of S contiguous values, row i at
 *     x + i*stride (stride = C*S). Each row is cut into blocks of at most BN_BLOCK values.
 *   channels-last: a group of g <= BN_LANES(T) adjacent channels (one cache line of each row),
 *     R = N*S rows of C values, row r at x + r*C. Rows are cut into blocks of BN_ROWS rows.
 * Statistics are mean-centred per block (two passes over a block that sits in L1), accumulated
 * in double and merged block after block in order (Chan et al.), so the result depends on the
 * shape alone: not on the thread count, not on which SIMD unit the machine has.
 * Vector code uses 8 doubles per vector; it runs as AVX-512, AVX2 or SSE2, chosen at run time. */
#ifndef BN_KERNELS_H
#define BN_KERNELS_H

#include "bnorm.h"
#include "moments.h"

#define BN_BLOCK 1024   /* channels-first: values per statistics block */
#define BN_ROWS 256     /* channels-last: rows per statistics block */
#define BN_MAX_LANES 16 /* channels in a channels-last group: 64 bytes of float32, 8 of float64 */

#define BN_DECLARE_KERNELS(T, SUF)                                                              \
    /* x: (N, S) rows at stride. Count, mean and M2 of the channel. */                          \
    bn_moments bn_cf_moments_##SUF(const T *x, int64_t n, int64_t s, int64_t stride);           \
    /* y, x: (N, S) rows at stride (y may be x). y = (x - mean) * scale + shift, in double. */  \
    void bn_cf_normalize_##SUF(T *y, const T *x, int64_t n, int64_t s, int64_t stride,         \
                               double mean, double scale, double shift);                        \
    /* dy, x: (N, S) rows at stride. *sum_dy = sum dy, *sum_dy_xc = sum dy * (x - mean). */     \
    void bn_cf_grad_sums_##SUF(double *sum_dy, double *sum_dy_xc, const T *dy, const T *x,     \
                               int64_t n, int64_t s, int64_t stride, double mean);              \
    /* dx, dy, x: (N, S) rows at stride (dx may be dy).                                         \
     * dx = (dy - mean_dy - (x - mean) * k) * scale. */                                         \
    void bn_cf_grad_input_##SUF(T *dx, const T *dy, const T *x, int64_t n, int64_t s,           \
                                int64_t stride, double mean, double mean_dy, double k,          \
                                double scale);                                                  \
    /* x: (R, g) columns of rows of length ld. out: (g) moments. */                             \
    void bn_cl_moments_##SUF(bn_moments *out, const T *x, int64_t rows, int64_t ld, int g);    \
    /* y, x: (R, g) of rows of length ld (y may be x); mean, scale, shift: (g). */             \
    void bn_cl_normalize_##SUF(T *y, const T *x, int64_t rows, int64_t ld, int g,              \
                               const double *mean, const double *scale, const double *shift);  \
    /* dy, x: (R, g); sum_dy, sum_dy_xc: (g) out; mean: (g). */                                 \
    void bn_cl_grad_sums_##SUF(double *sum_dy, double *sum_dy_xc, const T *dy, const T *x,     \
                               int64_t rows, int64_t ld, int g, const double *mean);            \
    /* dx, dy, x: (R, g) (dx may be dy); mean, mean_dy, k, scale: (g). */                       \
    void bn_cl_grad_input_##SUF(T *dx, const T *dy, const T *x, int64_t rows, int64_t ld,      \
                                int g, const double *mean, const double *mean_dy,               \
                                const double *k, const double *scale);

BN_DECLARE_KERNELS(float, f32)
BN_DECLARE_KERNELS(double, f64)

/* The kernels for channels [c0, c0 + g) of a tensor described by desc, dispatched on dtype and
 * layout: the one place where they decide which loop runs. Tensor pointers point at element 0;
 * per-channel arrays (mean, scale, ...) have g entries. For channels-first, g channels are done
 * one after the other; for channels-last, g <= bn_group_width(desc). */
int bn_group_width(const bn_desc *desc);
void bn_kernel_moments(const bn_desc *desc, bn_moments *out, const void *x, int64_t c0, int g);
void bn_kernel_normalize(const bn_desc *desc, void *y, const void *x, int64_t c0, int g,
                         const double *mean, const double *scale, const double *shift);
void bn_kernel_grad_sums(const bn_desc *desc, double *sum_dy, double *sum_dy_xc, const void *dy,
                         const void *x, int64_t c0, int g, const double *mean);
void bn_kernel_grad_input(const bn_desc *desc, void *dx, const void *dy, const void *x,
                          int64_t c0, int g, const double *mean, const double *mean_dy,
                          const double *k, const double *scale);

/* Element c of a per-channel array of the given dtype, as double; NULL gives fallback. */
static inline double bn_load(const void *p, bn_dtype dtype, int64_t c, double fallback) {
    if (!p) return fallback;
    return dtype == BN_FLOAT32 ? (double)((const float *)p)[c] : ((const double *)p)[c];
}

/* Stores v, rounded to the array's dtype, as element c. */
static inline void bn_store(void *p, bn_dtype dtype, int64_t c, double v) {
    if (dtype == BN_FLOAT32)
        ((float *)p)[c] = (float)v;
    else
        ((double *)p)[c] = v;
}

#endif
