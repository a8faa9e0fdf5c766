/* kernels.h - the hot loops, one set per dtype. Everything else in the library is a driver.
 *
 * A kernel works on one channel. bn_walk says where that channel's N*S values are, relative to
 * the channel's first element: value (i, j) of sample i and position j is at i*stride_n +
 * j*stride_s. Channels-first: stride_n = C*S, stride_s = 1. Channels-last: stride_n = S*C,
 * stride_s = C. Each sample's S values are cut into blocks of at most BN_BLOCK values; blocks are
 * fixed by the shape alone and merged in order, so results do not depend on anything else. */
#ifndef BN_KERNELS_H
#define BN_KERNELS_H

#include "bnorm.h"
#include "moments.h"

#define BN_BLOCK 1024

typedef struct bn_walk {
    int64_t n, s;               /* samples, positions per sample */
    int64_t stride_n, stride_s; /* in elements */
} bn_walk;

/* The walk of any channel of desc, and the offset in elements of channel c's first value. */
bn_walk bn_walk_of(const bn_desc *desc);
int64_t bn_channel_offset(const bn_desc *desc, int64_t c);

#define BN_DECLARE_KERNELS(T, SUF)                                                              \
    /* x: channel walk w. Returns count, mean, M2, mean-centred per block, merged in order. */   \
    bn_moments bn_moments_##SUF(const T *x, const bn_walk *w);                                  \
    /* y, x: channel walk w (y may be x). y = (x - mean) * scale + shift, in double. */         \
    void bn_normalize_##SUF(T *y, const T *x, const bn_walk *w, double mean, double scale,      \
                            double shift);                                                      \
    /* dy, x: channel walk w. *sum_dy = sum dy; *sum_dy_xc = sum dy * (x - mean). */            \
    void bn_grad_sums_##SUF(double *sum_dy, double *sum_dy_xc, const T *dy, const T *x,        \
                            const bn_walk *w, double mean);                                     \
    /* dx, dy, x: channel walk w (dx may be dy). dx = (dy - mean_dy - (x - mean) * k) * scale. */ \
    void bn_grad_input_##SUF(T *dx, const T *dy, const T *x, const bn_walk *w, double mean,     \
                             double mean_dy, double k, double scale);

BN_DECLARE_KERNELS(float, f32)
BN_DECLARE_KERNELS(double, f64)

/* The same kernels for channel c of a tensor described by desc, dispatched on its dtype: the one
 * place where dtype decides which loop runs. Tensor pointers point at element 0 of the tensor. */
bn_moments bn_channel_moments(const bn_desc *desc, const void *x, int64_t c);
void bn_channel_normalize(const bn_desc *desc, void *y, const void *x, int64_t c, double mean,
                          double scale, double shift);
void bn_channel_grad_sums(const bn_desc *desc, double *sum_dy, double *sum_dy_xc, const void *dy,
                          const void *x, int64_t c, double mean);
void bn_channel_grad_input(const bn_desc *desc, void *dx, const void *dy, const void *x,
                           int64_t c, double mean, double mean_dy, double k, double scale);

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
