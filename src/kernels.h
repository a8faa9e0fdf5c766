/* kernels.h - the hot loops, one set per dtype. Everything else in the library is a driver.
 *
 * Two shapes of work, one per memory layout:
 *   channels-first: one channel at a time, its N rows of S contiguous values, row i at
 *     x + i*stride (stride = C*S). Each row is cut into blocks of at most BN_BLOCK values.
 *     A channel's statistics and its normalization follow each other while it is in cache,
 *     or the normalization rides along the next channel's statistics (the *_next kernels).
 *   channels-last: R = N*S rows of C values, row r at x + r*C, vectorized across channels.
 *     Rows are cut into blocks of BN_ROWS rows, each block's channels into groups of one
 *     vector (16 float32 or 8 float64 channels, one cache line per row).
 * Statistics are centred per block (deviations from one of the block's values, in one pass),
 * accumulated in double and merged block after block in order (Chan et al.), so the result
 * depends on the shape alone: not on the thread count, not on which SIMD unit the machine has.
 * Vectors are 64 bytes; the code runs as AVX-512, AVX2 or SSE2, chosen at run time. */
#ifndef BN_KERNELS_H
#define BN_KERNELS_H

#include "bnorm.h"
#include "moments.h"

#define BN_BLOCK 1024 /* channels-first: values per statistics block */
#define BN_ROWS 256   /* channels-last: rows per statistics block */
/* Outputs of at least half the last-level cache, and at most this many bytes, are written with
 * streaming stores (on AVX-512): past what the caches hold, reading each destination line before
 * writing it costs most. (Measured: 48 MiB on a Xeon whose reported L3 is 480 MiB; 16 MiB on an
 * EPYC with 32 MiB of L3, where it takes 12% off a 26 MB training pass.) */
#define BN_STREAM_MIN_BYTES (INT64_C(48) << 20)

/* Channels-last element-wise passes take per-channel coefficients in the tensor's dtype, as
 * BN_COEF_COUNT arrays of C values one after the other (bn_kernel_cl_coefs makes them). */
enum { BN_COEF_HI, BN_COEF_LO, BN_COEF_SCALE, BN_COEF_SHIFT, BN_COEF_MEAN_DY, BN_COEF_K,
       BN_COEF_COUNT };

#define BN_DECLARE_KERNELS(T, SUF)                                                              \
    /* x: (N, S) rows at stride. Count, mean and M2 of the channel. */                          \
    bn_moments bn_cf_moments_##SUF(const T *x, int64_t n, int64_t s, int64_t stride);           \
    /* y, x, next: (N, S) rows at stride (y may be x). Normalizes x into y as bn_cf_normalize_   \
     * and puts the moments of next, as bn_cf_moments_ finds them (the same bits), in           \
     * *next_moments, piece by piece: one channel is read from memory while the other is       \
     * written. */                                                                              \
    void bn_cf_normalize_next_##SUF(bn_moments *next_moments, T *y, const T *x, const T *next, \
                                    int64_t n, int64_t s, int64_t stride, double mean,          \
                                    double scale, double shift);                                \
    /* y, x: (N, S) rows at stride (y may be x). y = (x - mean) * scale + shift. */             \
    void bn_cf_normalize_##SUF(T *y, const T *x, int64_t n, int64_t s, int64_t stride,         \
                               double mean, double scale, double shift);                        \
    /* dy, x: (N, S) rows at stride. *sum_dy = sum dy, *sum_dy_xc = sum dy * (x - mean). */     \
    void bn_cf_grad_sums_##SUF(double *sum_dy, double *sum_dy_xc, const T *dy, const T *x,     \
                               int64_t n, int64_t s, int64_t stride, double mean);              \
    /* dy, x: (n, s) rows at stride. The sums of bn_cf_grad_sums_ scaled, on the rare path      \
     * where those overflowed: *sum_dy = sum dy * 2^-BN_GRAD_RESCALE, *sum_dy_xc =              \
     * sum dy * (x - mean) * 2^-2 BN_GRAD_RESCALE, value by value in order. */                  \
    void bn_grad_sums_rescaled_##SUF(double *sum_dy, double *sum_dy_xc, const T *dy,           \
                                     const T *x, int64_t n, int64_t s, int64_t stride,          \
                                     double mean);                                              \
    /* dx, dy, x: (N, S) rows at stride (dx may be dy).                                         \
     * dx = (dy - mean_dy - (x - mean) * k) * scale. */                                         \
    void bn_cf_grad_input_##SUF(T *dx, const T *dy, const T *x, int64_t n, int64_t s,           \
                                int64_t stride, double mean, double mean_dy, double k,          \
                                double scale);                                                  \
    /* bn_cf_grad_input_ of one channel, while bn_cf_grad_sums_ of the next (dy + s, x + s,    \
     * its mean next_mean) are formed, the same bits, piece by piece as bn_cf_normalize_next_. */\
    void bn_cf_grad_input_next_##SUF(T *dx, const T *dy, const T *x, int64_t n, int64_t s,      \
                                     int64_t stride, double mean, double mean_dy, double k,     \
                                     double scale, double next_mean, double *sum_dy,            \
                                     double *sum_dy_xc);                                        \
    /* x: (rows, width) of rows ld apart. acc: (width), each channel's moments of these rows    \
     * merged into it, block by block in order. */                                              \
    void bn_cl_moments_##SUF(bn_moments *acc, const T *x, int64_t rows, int64_t ld,            \
                             int64_t width);                                                    \
    /* coef: (BN_COEF_COUNT, C) out for channels [c0, c1), from (C) doubles; shift, mean_dy, k  \
     * may be NULL (0). */                                                                      \
    void bn_cl_coefs_##SUF(T *coef, int64_t C, int64_t c0, int64_t c1, const double *mean,     \
                           const double *scale, const double *shift, const double *mean_dy,    \
                           const double *k);                                                   \
    /* n channels of a training pass, from their statistics over count values each: mean, m2:  \
     * (n) in; scale = invstd * w, shift = b: (n) out; save_mean, save_invstd: (n) out or NULL; \
     * rm, rv: (n) blended with the batch's mean and unbiased variance (factor: the batch's    \
     * weight), or NULL; w, b: (n) or NULL (1 and 0). Loops over arrays, so they vectorize.   \
     * invstd = 1/sqrt(m2/count + eps), or 0 where that sum is 0, as torch's training kernels. */\
    void bn_train_finish_##SUF(int64_t n, double count, const double *mean, const double *m2,  \
                               double *scale, double *shift, double *save_mean,                \
                               double *save_invstd, T *rm, T *rv, const T *w, const T *b,      \
                               double eps, double factor);                                     \
    /* coef: (BN_COEF_COUNT, ld) out for channels [c0, c1): eval's mean, scale and shift from   \
     * the stored statistics rm, rv: (C) and weight, bias: (C) or NULL. */                      \
    void bn_eval_coefs_##SUF(T *coef, int64_t ld, int64_t c0, int64_t c1, const T *rm,         \
                             const T *rv, const T *w, const T *b, double eps);                  \
    /* y, x: (channels, s) contiguous rows of one sample (y may be x); coef: (BN_COEF_COUNT,    \
     * ld) offset to the first row's channel. y = (x - mean) * scale + shift. */                \
    void bn_cf_normalize_rows_##SUF(T *y, const T *x, int64_t channels, int64_t s,             \
                                    const T *coef, int64_t ld);                                 \
    /* y, x: (rows, width) of rows ld apart (y may be x); coef: (BN_COEF_COUNT, ld).           \
     * y = (x - mean) * scale + shift. */                                                       \
    void bn_cl_normalize_##SUF(T *y, const T *x, int64_t rows, int64_t ld, int64_t width,      \
                               const T *coef);                                                  \
    /* dy, x: (rows, width) of rows ld apart; mean: (width). sum_dy, sum_dy_xc: (width), these  \
     * rows' sums added to them. */                                                             \
    void bn_cl_grad_sums_##SUF(double *sum_dy, double *sum_dy_xc, const T *dy, const T *x,     \
                               int64_t rows, int64_t ld, int64_t width, const double *mean);    \
    /* dx, dy, x: (rows, width) of rows ld apart (dx may be dy); coef: (BN_COEF_COUNT, ld).    \
     * dx = (dy - mean_dy - (x - mean) * k) * scale. */                                         \
    void bn_cl_grad_input_##SUF(T *dx, const T *dy, const T *x, int64_t rows, int64_t ld,      \
                                int64_t width, const T *coef);

BN_DECLARE_KERNELS(float, f32)
BN_DECLARE_KERNELS(double, f64)

/* The kernels for a tensor described by desc, dispatched on its dtype: the one place where the
 * dtype decides which loop runs. Tensor pointers point at element 0 of the tensor.
 * Channels-first work is per channel c; channels-last work is per tile: rows [r0, r1) and
 * channels [c0, c1) (a row is one position of one sample: N*S rows of C values). */
bn_moments bn_kernel_cf_moments(const bn_desc *desc, const void *x, int64_t c);
/* Rows [i0, i1) of channel c (the samples i0 .. i1-1). */
void bn_kernel_cf_normalize(const bn_desc *desc, void *y, const void *x, int64_t c, int64_t i0,
                            int64_t i1, double mean, double scale, double shift);
/* Channel c normalized (all rows) while the moments of channel c + 1 are computed: returns
 * them, the same bits as bn_kernel_cf_moments(desc, x, c + 1). */
bn_moments bn_kernel_cf_normalize_next(const bn_desc *desc, void *y, const void *x, int64_t c,
                                       double mean, double scale, double shift);
void bn_kernel_cf_grad_sums(const bn_desc *desc, double *sum_dy, double *sum_dy_xc,
                            const void *dy, const void *x, int64_t c, double mean);
/* Where the gradient sums of channel c came out NaN or infinite from finite dy and x (in
 * float64 an intermediate can overflow although the result is finite), the sums again, scaled
 * by powers of two that cannot overflow: sum dy * 2^-BN_GRAD_RESCALE and sum dy * (x - mean) *
 * 2^-2 BN_GRAD_RESCALE, value by value in the order of the batch, either layout (the same bits
 * for any split of the work). NaN or infinite where dy or x holds a NaN or an infinity. */
#define BN_GRAD_RESCALE 548
void bn_kernel_grad_sums_rescaled(const bn_desc *desc, double *sum_dy, double *sum_dy_xc,
                                  const void *dy, const void *x, int64_t c, double mean);
/* bn_kernel_cf_grad_input of channel c while bn_kernel_cf_grad_sums of channel c + 1 (its
 * mean next_mean) are formed: the same bits as the two calls. */
void bn_kernel_cf_grad_input_next(const bn_desc *desc, void *dx, const void *dy, const void *x,
                                  int64_t c, double mean, double mean_dy, double k, double scale,
                                  double next_mean, double *sum_dy, double *sum_dy_xc);
void bn_kernel_cf_grad_input(const bn_desc *desc, void *dx, const void *dy, const void *x,
                             int64_t c, double mean, double mean_dy, double k, double scale);
/* Eval coefficients of channels [c0, c1) (coef: (BN_COEF_COUNT, C)). */
void bn_kernel_eval_coefs(const bn_desc *desc, void *coef, int64_t c0, int64_t c1,
                          const void *running_mean, const void *running_var, const void *weight,
                          const void *bias, double eps);
/* Channels-first, sample i, channels [c0, c1), with coefficients from coef: (BN_COEF_COUNT, C). */
void bn_kernel_cf_normalize_rows(const bn_desc *desc, void *y, const void *x, int64_t i,
                                 int64_t c0, int64_t c1, const void *coef);
void bn_kernel_cl_moments(const bn_desc *desc, bn_moments *acc, const void *x, int64_t r0,
                          int64_t r1, int64_t c0, int64_t c1);
/* Channels [c0, c1) of a training pass (bn_train_finish_*): mean, m2, scale, shift point at
 * channel c0's values; save_mean, save_invstd, running_mean, running_var, weight, bias are the
 * caller's (C) arrays or NULL. */
void bn_kernel_train_finish(const bn_desc *desc, int64_t c0, int64_t c1, double count,
                            const double *mean, const double *m2, double *scale, double *shift,
                            double *save_mean, double *save_invstd, void *running_mean,
                            void *running_var, const void *weight, const void *bias, double eps,
                            double factor);
/* Coefficients of channels [c0, c1) (coef: (BN_COEF_COUNT, C)) from per-channel doubles. */
void bn_kernel_cl_coefs(const bn_desc *desc, void *coef, int64_t c0, int64_t c1,
                        const double *mean, const double *scale, const double *shift,
                        const double *mean_dy, const double *k);
void bn_kernel_cl_normalize(const bn_desc *desc, void *y, const void *x, int64_t r0, int64_t r1,
                            int64_t c0, int64_t c1, const void *coef);
void bn_kernel_cl_grad_sums(const bn_desc *desc, double *sum_dy, double *sum_dy_xc,
                            const void *dy, const void *x, int64_t r0, int64_t r1, int64_t c0,
                            int64_t c1, const double *mean);
void bn_kernel_cl_grad_input(const bn_desc *desc, void *dx, const void *dy, const void *x,
                             int64_t r0, int64_t r1, int64_t c0, int64_t c1, const void *coef);

/* For tests: nonzero makes every output kernel use plain stores (streaming ones store the same
 * bits, which a test checks by comparing the two). */
void bn_kernel_force_plain_stores(int on);

/* For tests: how many output kernel calls used streaming stores since the program started. */
int64_t bn_kernel_stream_count(void);

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
