/* kernels.h - the hot loops, as one table of functions per (storage type, store kind). Everything
 * else in the library composes them.
 *
 * Two shapes of work, one per memory layout:
 *   channels-first: one channel at a time, its N rows of S contiguous values, row i at
 *     x + i*stride (stride = C*S). Each row is cut into blocks of at most BN_BLOCK values.
 *   channels-last: R = N*S rows of C values, row r at x + r*C, vectorized across channels.
 *     Rows are cut into blocks of BN_ROWS rows, each block's channels into groups of one
 *     vector (16 float32 or 8 float64 channels, one cache line per row).
 * Statistics are centred per block (deviations from one of the block's values, in one pass),
 * accumulated in double and merged block after block in order (Chan et al.), so the result
 * depends on the shape alone: not on the thread count, not on which SIMD unit the machine has.
 * Element-wise outputs are computed in the compute type (float for float32, double for float64;
 * half-precision storage will compute in float), the mean carried as a pair hi + lo so that the
 * compute type does not round it away. Vectors are 64 bytes; the code runs as AVX-512, AVX2 or
 * SSE2, chosen at run time.
 *
 * Pointers are void: every kernel casts them to its storage type. They point at the first value
 * the kernel touches (a channel's first row, a tile's first row and channel). z is the second
 * input of an epilogue that reads one (NULL otherwise), laid out as y. */
#ifndef BN_KERNELS_H
#define BN_KERNELS_H

#include "bnorm.h"
#include "moments.h"

#define BN_BLOCK 1024 /* channels-first: values per statistics block */
#define BN_ROWS 256   /* channels-last: rows per statistics block */
/* Channels-first rows of fewer than BN_SHORT values are read BN_GROUP adjacent channels at a
 * time (a sample's rows of them are contiguous), the kernels cf_group_*. */
#define BN_SHORT 64
#define BN_GROUP 16

/* Channels-last element-wise passes take per-channel coefficients in the compute type, as
 * BN_COEF_COUNT arrays of ld values one after the other (bn_kernels.coefs makes them). */
enum { BN_COEF_HI, BN_COEF_LO, BN_COEF_SCALE, BN_COEF_SHIFT, BN_COEF_MEAN_DY, BN_COEF_K,
       BN_COEF_COUNT };

/* Epilogues: what a forward output kernel does to each value before it stores it (the kernels
 * take z, NULL where the epilogue reads none). */
#define BN_EPILOGUE_NONE 0
#define BN_EPILOGUE_RELU 1     /* y = max(y, 0), a NaN kept */
#define BN_EPILOGUE_ADD_RELU 2 /* y = max(y + z, 0), z a second input of y's shape */

/* The gradient sums of a channel formed again scaled, where they overflowed (float64): sum dy *
 * 2^-BN_GRAD_RESCALE and sum dy * (x - mean) * 2^-2 BN_GRAD_RESCALE. */
#define BN_GRAD_RESCALE 548

typedef struct bn_kernels {
    size_t elem_size;  /* bytes per stored value */
    size_t coef_size;  /* bytes per coefficient (the compute type) */
    /* ---- channels-first: x, y, dy, dx: (n, s) rows at stride ---- */
    /* Count, mean and M2 of the channel. */
    bn_moments (*cf_moments)(const void *x, int64_t n, int64_t s, int64_t stride);
    /* y = epilogue((x - mean) * scale + shift) (y may be x). */
    void (*cf_normalize)(void *y, const void *x, const void *z, int64_t n, int64_t s,
                         int64_t stride, double mean, double scale, double shift);
    /* cf_normalize of x into y while the moments of next (the next channel) are formed, the same
     * bits as cf_moments(next): one channel read from memory while the other is written. */
    bn_moments (*cf_normalize_next)(void *y, const void *x, const void *z, const void *next,
                                    int64_t n, int64_t s, int64_t stride, double mean,
                                    double scale, double shift);
    /* *sum_dy = sum dy, *sum_dy_xc = sum dy * (x - mean). */
    void (*cf_grad_sums)(double *sum_dy, double *sum_dy_xc, const void *dy, const void *x,
                         int64_t n, int64_t s, int64_t stride, double mean);
    /* The rare path where those overflowed: the sums scaled by 2^-BN_GRAD_RESCALE and
     * 2^-2 BN_GRAD_RESCALE, value by value in order (channels-last: n = N*S rows of s = 1 value
     * at stride C). */
    void (*grad_sums_rescaled)(double *sum_dy, double *sum_dy_xc, const void *dy, const void *x,
                               int64_t n, int64_t s, int64_t stride, double mean);
    /* dx = (dy - mean_dy - (x - mean) * k) * scale (dx may be dy). */
    void (*cf_grad_input)(void *dx, const void *dy, const void *x, int64_t n, int64_t s,
                          int64_t stride, double mean, double mean_dy, double k, double scale);
    /* cf_grad_input of one channel while cf_grad_sums of the next (dy + s, x + s, its mean
     * next_mean) are formed: the same bits as the two. */
    void (*cf_grad_input_next)(void *dx, const void *dy, const void *x, int64_t n, int64_t s,
                               int64_t stride, double mean, double mean_dy, double k,
                               double scale, double next_mean, double *sum_dy,
                               double *sum_dy_xc);
    /* y, x: (channels, s) contiguous rows of one sample; coef: (BN_COEF_COUNT, ld) at the
     * first row's channel. y = epilogue((x - mean) * scale + shift). */
    void (*cf_normalize_rows)(void *y, const void *x, const void *z, int64_t channels, int64_t s,
                              const void *coef, int64_t ld);
    /* ---- channels-first short rows (s < BN_SHORT): g <= BN_GROUP adjacent channels, rows of
     * g * s contiguous values at stride; per-channel arrays (g) at the group's first. A
     * channel's bits are those of the one-channel kernels above, whatever its group. ---- */
    /* out: (g) the channels' moments, overwritten (cf_moments of each). */
    void (*cf_group_moments)(bn_moments *out, const void *x, int64_t g, int64_t n, int64_t s,
                             int64_t stride);
    /* y = epilogue((x - mean) * scale + shift) of g channels at x, while the moments of the g_next
     * channels at next are formed into next_out (overwritten; g_next = 0: none). */
    void (*cf_group_normalize_next)(bn_moments *next_out, void *y, const void *x, const void *z,
                                    const void *next, int64_t g, int64_t g_next, int64_t n,
                                    int64_t s, int64_t stride, const double *mean,
                                    const double *scale, const double *shift);
    /* cf_normalize_rows of g channels over their n rows (eval), the coefficients (BN_COEF_COUNT,
     * ld) at the group's first channel spread per position: whole vectors where g * s is. */
    void (*cf_group_normalize)(void *y, const void *x, const void *z, int64_t g, int64_t n,
                               int64_t s, int64_t stride, const void *coef, int64_t ld);
    /* sum_dy, sum_dy_xc: (g) overwritten, cf_grad_sums of each channel. */
    void (*cf_group_grad_sums)(double *sum_dy, double *sum_dy_xc, const void *dy, const void *x,
                               int64_t g, int64_t n, int64_t s, int64_t stride,
                               const double *mean);
    /* cf_grad_input of g channels while the sums of the g_next channels after them (dy + g*s,
     * x + g*s, their means next_mean) are formed (g_next = 0: none). */
    void (*cf_group_grad_input_next)(void *dx, const void *dy, const void *x, int64_t g,
                                     int64_t g_next, int64_t n, int64_t s, int64_t stride,
                                     const double *mean, const double *mean_dy, const double *k,
                                     const double *scale, const double *next_mean,
                                     double *sum_dy, double *sum_dy_xc);
    /* ---- channels-last: x, y, dy, dx: (rows, width) of rows ld apart ---- */
    /* acc: (width), each channel's moments of these rows merged into it, block by block;
     * prefetch: ask for rows ahead (the plan's choice: bn_plan.prefetch; no bit depends on it). */
    void (*cl_moments)(bn_moments *acc, const void *x, int64_t rows, int64_t ld, int64_t width,
                       int prefetch);
    /* coef: (BN_COEF_COUNT, ld) at the tile's channel. y = epilogue((x - mean) * scale + shift). */
    void (*cl_normalize)(void *y, const void *x, const void *z, int64_t rows, int64_t ld,
                         int64_t width, const void *coef);
    /* mean: (width). sum_dy, sum_dy_xc: (width), these rows' sums added to them; prefetch as
     * in cl_moments. */
    void (*cl_grad_sums)(double *sum_dy, double *sum_dy_xc, const void *dy, const void *x,
                         int64_t rows, int64_t ld, int64_t width, const double *mean,
                         int prefetch);
    /* coef: (BN_COEF_COUNT, ld). dx = (dy - mean_dy - (x - mean) * k) * scale. */
    void (*cl_grad_input)(void *dx, const void *dy, const void *x, int64_t rows, int64_t ld,
                          int64_t width, const void *coef);
    /* ---- per channel ---- */
    /* coef: (BN_COEF_COUNT, ld) out for channels [c0, c1), from (C) doubles; shift may be NULL
     * (0); mean_dy and k NULL leave theirs unwritten (for passes other than cl_grad_input). The
     * centre is bn_centre(mean, k or scale as the compute type rounds it). */
    void (*coefs)(void *coef, int64_t ld, int64_t c0, int64_t c1, const double *mean,
                  const double *scale, const double *shift, const double *mean_dy,
                  const double *k);
    /* coef: (BN_COEF_COUNT, ld) out for channels [0, n), eval's, from the stored (n) running
     * statistics rm, rv and the weight and bias w, b (NULL: 1 and 0): what load, bn_finish_eval
     * and coefs give, in one pass. */
    void (*eval_coefs)(void *coef, int64_t ld, int64_t n, const void *rm, const void *rv,
                       const void *w, const void *b, double eps);
    /* out: (n) doubles from n stored values at p; p NULL gives fallback. */
    void (*load)(double *out, const void *p, int64_t n, double fallback);
    /* p: (n) stored values, each in[c] rounded to the storage type. */
    void (*store)(void *p, const double *in, int64_t n);
    /* p: (n) stored values, each p[c] = w_new * in[c] + w_old * p[c], in double. */
    void (*blend)(void *p, const double *in, double w_new, double w_old, int64_t n);
} bn_kernels;

/* The kernels of a dtype, with streaming stores or plain ones: NULL for a dtype without kernels
 * (the callers return BN_ERR_UNSUPPORTED), and the plain ones where the machine cannot stream. */
const bn_kernels *bn_kernels_for(bn_dtype dtype, int stream);

/* bn_kernels_for of the tables whose forward output kernels end in an epilogue (kernel_types.h:
 * BN_EPILOGUE_NONE, BN_EPILOGUE_RELU, BN_EPILOGUE_ADD_RELU); their other kernels are the plain
 * table's. NULL for an unknown dtype or epilogue. */
const bn_kernels *bn_kernels_for_epilogue(bn_dtype dtype, int stream, int epilogue);

/* Whether this machine's kernels can stream stores (any x86-64, in a build with run-time sets). */
int bn_kernels_can_stream(void);

/* The instruction set whose kernels run: "avx512f", "avx2" or "x86-64" (the best this CPU has),
 * or "portable" (a build for one set only). */
const char *bn_kernels_isa(void);

/* For tests: run the kernels of the set so named (a set this CPU has; NULL: the best again).
 * Returns 0, changing nothing, for a set it does not have. */
int bn_kernel_force_isa(const char *name);

/* For tests: nonzero makes bn_kernels_for return plain stores only (streaming ones store the
 * same bits, which a test checks by comparing the two). */
void bn_kernel_force_plain_stores(int on);

/* For tests: how many times bn_kernels_for has handed out streaming kernels. */
int64_t bn_kernel_stream_count(void);

/* For tests: how many channels (channels-first) or lanes (channels-last) the float statistics
 * of pivot.h have summed again about the mean they found, and how many then took the exact
 * path, since the process started. */
void bn_pivot_counts(int64_t *again, int64_t *exact);

#endif
