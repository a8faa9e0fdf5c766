/* kernels.c - instantiates the per-dtype kernels of kernels.inc and dispatches to them. */
#include "kernels.h"
#include "threads.h"
#include "validate.h"

#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

/* One build runs everywhere and uses the widest vectors the CPU has: each exported kernel is
 * compiled for AVX-512, AVX2 and the x86-64 baseline, and the loader picks one at start-up.
 * Results are the same bits on all three: vectors of a fixed width fix the order of every sum,
 * and -ffp-contract=off keeps multiply-adds from being fused on one machine but not another. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(BN_NO_CLONES)
#define BN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BN_CLONES
#endif
/* Vector helpers are macros: clang refuses functions that pass 64-byte vectors in a clone
 * without AVX-512, and GCC would lower a conversion in a helper for the baseline ISA. */
typedef double bn_v8d __attribute__((vector_size(64)));
/* Unaligned, alias-safe views for loads and stores. */
typedef double bn_v8d_u __attribute__((vector_size(64), aligned(8), may_alias));

#define BN_V8D_ZERO ((bn_v8d){0, 0, 0, 0, 0, 0, 0, 0})
/* The lanes' sum in a fixed order (v must be a plain variable). */
#define BN_V8D_SUM(v) ((((v)[0] + (v)[1]) + ((v)[2] + (v)[3])) + (((v)[4] + (v)[5]) + ((v)[6] + (v)[7])))

#pragma GCC diagnostic ignored "-Wpsabi"
#define BN_ALWAYS_INLINE __attribute__((always_inline))
#define BN_COLD __attribute__((noinline, cold))
/* A statistics block whose sums overflowed (float64 only) is summed again with its values scaled
 * by 2^-BN_RESCALE, and its moments scaled back up: exact, powers of two (block_rescaled_). */
#define BN_RESCALE 528
_Static_assert(BN_BLOCK <= 1024 && BN_ROWS <= 1024, "block_rescaled_ sums at most 2^10 values");

/* The centre an element-wise pass subtracts from x before it multiplies by factor (as rounded to
 * the tensor's dtype): the mean, or 0 where the factor is 0 and the mean finite (an infinite
 * variance gives invstd 0). Either gives the same output for finite x, except where x - mean
 * overflows (values of opposite signs near the dtype's largest) into inf * 0 = NaN: x * 0 = 0,
 * as torch's x * alpha + beta with alpha = 0. A NaN or infinite x or mean still gives NaN. */
static inline double bn_centre(double mean, double factor) {
    return factor == 0 && isfinite(mean) ? 0.0 : mean;
}

typedef float bn_v16f __attribute__((vector_size(64)));
typedef float bn_v16f_u __attribute__((vector_size(64), aligned(4), may_alias));
/* A float vector widened whole: GCC 12 converts a 16-float vector to 16 doubles with two
 * full-width instructions, but splits a conversion of 8 floats into pieces. */
typedef double bn_v16d __attribute__((vector_size(128)));
typedef union { bn_v16d whole; bn_v8d half[2]; } bn_v16d_halves;

#define T float
#define SUF f32
#define W bn_v16f
#define WL 16
#define NH 2
#define LOADW(p) (*(const bn_v16f_u *)(p))
#define STOREW(p, v) (*(bn_v16f_u *)(p) = (v))
#define WIDEN(vec, out)                                              \
    do {                                                             \
        bn_v16d_halves h_;                                           \
        h_.whole = __builtin_convertvector((vec), bn_v16d);          \
        (out)[0] = h_.half[0];                                       \
        (out)[1] = h_.half[1];                                       \
    } while (0)
#define HEAD(p, s) 0
#define STORE_HELPER
#include "kernels.inc"
#undef HEAD
#undef STORE_HELPER
#undef T
#undef SUF
#undef W
#undef WL
#undef NH
#undef LOADW
#undef STOREW
#undef WIDEN

#define T double
#define SUF f64
#define W bn_v8d
#define WL 8
#define NH 1
#define LOADW(p) (*(const bn_v8d_u *)(p))
#define STOREW(p, v) (*(bn_v8d_u *)(p) = (v))
#define WIDEN(vec, out) ((out)[0] = (vec))
#define HEAD(p, s) 0
#define STORE_HELPER
#include "kernels.inc"
#undef HEAD
#undef STORE_HELPER
#undef T
#undef SUF
#undef W
#undef WL
#undef NH
#undef LOADW
#undef STOREW
#undef WIDEN

/* Large outputs are written with non-temporal (streaming) stores on AVX-512 machines: they
 * skip reading each destination line into the cache first and do not evict the inputs, which
 * saves a third of the memory traffic of a pass that reads x and writes y. The same kernels
 * again, compiled for AVX-512 only with such stores (plain ones where a vector is not 64-byte
 * aligned); the values stored are the same bits. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(BN_NO_CLONES)
#define BN_HAVE_STREAM 1
#include <immintrin.h>
#undef BN_CLONES
#define BN_CLONES __attribute__((target("avx512f")))
BN_DECLARE_KERNELS(float, f32_stream)
BN_DECLARE_KERNELS(double, f64_stream)

#define T float
#define SUF f32_stream
#define W bn_v16f
#define WL 16
#define NH 2
#define LOADW(p) (*(const bn_v16f_u *)(p))
#define STOREW(p, v)                                                                     \
    do {                                                                                 \
        if (((uintptr_t)(p)&63) == 0) _mm512_stream_ps((float *)(p), (__m512)(v));       \
        else *(bn_v16f_u *)(p) = (v);                                                    \
    } while (0)
#define WIDEN(vec, out)                                                  \
    do {                                                                 \
        bn_v16d_halves h_;                                           \
        h_.whole = __builtin_convertvector((vec), bn_v16d);          \
        (out)[0] = h_.half[0];                                       \
        (out)[1] = h_.half[1];                                       \
    } while (0)
#define HEAD(p, s) BN_FN(head_)(p, s)
#define STORE_HELPER __attribute__((target("avx512f")))
#include "kernels.inc"
#undef HEAD
#undef STORE_HELPER
#undef T
#undef SUF
#undef W
#undef WL
#undef NH
#undef LOADW
#undef STOREW
#undef WIDEN

#define T double
#define SUF f64_stream
#define W bn_v8d
#define WL 8
#define NH 1
#define LOADW(p) (*(const bn_v8d_u *)(p))
#define STOREW(p, v)                                                                     \
    do {                                                                                 \
        if (((uintptr_t)(p)&63) == 0) _mm512_stream_pd((double *)(p), (__m512d)(v));     \
        else *(bn_v8d_u *)(p) = (v);                                                     \
    } while (0)
#define WIDEN(vec, out) ((out)[0] = (vec))
#define HEAD(p, s) BN_FN(head_)(p, s)
#define STORE_HELPER __attribute__((target("avx512f")))
#include "kernels.inc"
#undef HEAD
#undef STORE_HELPER
#undef T
#undef SUF
#undef W
#undef WL
#undef NH
#undef LOADW
#undef STOREW
#undef WIDEN

static atomic_int plain_stores_only; /* tests compare both kinds of store */

void bn_kernel_force_plain_stores(int on) { atomic_store(&plain_stores_only, on != 0); }

/* Output bytes from which stores stream: half the last-level cache, at most BN_STREAM_MIN_BYTES. */
static int64_t stream_threshold(void) {
    static atomic_llong threshold; /* 0 until first asked */
    long long t = atomic_load(&threshold);
    if (t == 0) {
        const int64_t llc = bn_cache_size(3);
        t = llc > 0 && llc / 2 < BN_STREAM_MIN_BYTES ? llc / 2 : BN_STREAM_MIN_BYTES;
        atomic_store(&threshold, t);
    }
    return (int64_t)t;
}

static atomic_llong stream_count; /* tests: kernel calls that streamed */

int64_t bn_kernel_stream_count(void) { return (int64_t)atomic_load(&stream_count); }

/* Stream when the pass writes at least stream_threshold() bytes and the CPU has AVX-512. */
static int use_stream(const bn_desc *desc) {
    const int64_t bytes = desc->n * desc->c * desc->s * (int64_t)bn_dtype_size(desc->dtype);
    const int on = bytes >= stream_threshold() && __builtin_cpu_supports("avx512f") &&
                   !atomic_load(&plain_stores_only);
    if (on) atomic_fetch_add_explicit(&stream_count, 1, memory_order_relaxed);
    return on;
}

/* Streaming stores are weakly ordered: fence them before anyone reads the output. */
#define STREAMED(call) (call, _mm_sfence())
#else
void bn_kernel_force_plain_stores(int on) { (void)on; }

int64_t bn_kernel_stream_count(void) { return 0; }

static int use_stream(const bn_desc *desc) {
    (void)desc;
    return 0;
}
#define STREAMED(call) ((void)0)
#endif

/* The output kernels: f##_f32 or its streaming twin. */
#define OUT_F32(f, ...) \
    (use_stream(desc) ? STREAMED(f##_f32_stream(__VA_ARGS__)) : f##_f32(__VA_ARGS__))
#define OUT_F64(f, ...) \
    (use_stream(desc) ? STREAMED(f##_f64_stream(__VA_ARGS__)) : f##_f64(__VA_ARGS__))

#define CF_ROWS desc->n, desc->s, desc->c * desc->s
/* bn_centre of a factor as the kernels of desc's dtype round it */
#define CENTRE(mean, factor) \
    bn_centre(mean, desc->dtype == BN_FLOAT32 ? (double)(float)(factor) : (factor))

bn_moments bn_kernel_cf_moments(const bn_desc *desc, const void *x, int64_t c) {
    if (desc->dtype == BN_FLOAT32) return bn_cf_moments_f32((const float *)x + c * desc->s, CF_ROWS);
    return bn_cf_moments_f64((const double *)x + c * desc->s, CF_ROWS);
}

void bn_kernel_cf_normalize(const bn_desc *desc, void *y, const void *x, int64_t c, int64_t i0,
                            int64_t i1, double mean, double scale, double shift) {
    mean = CENTRE(mean, scale);
    const int64_t at = i0 * desc->c * desc->s + c * desc->s;
    if (desc->dtype == BN_FLOAT32)
        OUT_F32(bn_cf_normalize, (float *)y + at, (const float *)x + at, i1 - i0, desc->s,
                            desc->c * desc->s, mean, scale, shift);
    else
        OUT_F64(bn_cf_normalize, (double *)y + at, (const double *)x + at, i1 - i0, desc->s,
                            desc->c * desc->s, mean, scale, shift);
}

bn_moments bn_kernel_cf_normalize_next(const bn_desc *desc, void *y, const void *x, int64_t c,
                                       double mean, double scale, double shift) {
    mean = CENTRE(mean, scale);
    const int64_t at = c * desc->s;
    /* the kernel sets it; initialized for clang, which cannot see that in builds without
     * streaming stores (BN_NO_CLONES) */
    bn_moments next = bn_moments_empty();
    if (desc->dtype == BN_FLOAT32)
        OUT_F32(bn_cf_normalize_next, &next, (float *)y + at, (const float *)x + at,
                (const float *)x + at + desc->s, CF_ROWS, mean, scale, shift);
    else
        OUT_F64(bn_cf_normalize_next, &next, (double *)y + at, (const double *)x + at,
                (const double *)x + at + desc->s, CF_ROWS, mean, scale, shift);
    return next;
}

void bn_kernel_cf_grad_sums(const bn_desc *desc, double *sum_dy, double *sum_dy_xc,
                            const void *dy, const void *x, int64_t c, double mean) {
    const int64_t at = c * desc->s;
    if (desc->dtype == BN_FLOAT32)
        bn_cf_grad_sums_f32(sum_dy, sum_dy_xc, (const float *)dy + at, (const float *)x + at,
                            CF_ROWS, mean);
    else
        bn_cf_grad_sums_f64(sum_dy, sum_dy_xc, (const double *)dy + at, (const double *)x + at,
                            CF_ROWS, mean);
}

void bn_kernel_grad_sums_rescaled(const bn_desc *desc, double *sum_dy, double *sum_dy_xc,
                                  const void *dy, const void *x, int64_t c, double mean) {
    const int cl = desc->layout == BN_CHANNELS_LAST;
    const int64_t at = cl ? c : c * desc->s, n = cl ? desc->n * desc->s : desc->n;
    const int64_t s = cl ? 1 : desc->s, stride = cl ? desc->c : desc->c * desc->s;
    if (desc->dtype == BN_FLOAT32)
        bn_grad_sums_rescaled_f32(sum_dy, sum_dy_xc, (const float *)dy + at,
                                  (const float *)x + at, n, s, stride, mean);
    else
        bn_grad_sums_rescaled_f64(sum_dy, sum_dy_xc, (const double *)dy + at,
                                  (const double *)x + at, n, s, stride, mean);
}

void bn_kernel_cf_grad_input(const bn_desc *desc, void *dx, const void *dy, const void *x,
                             int64_t c, double mean, double mean_dy, double k, double scale) {
    mean = CENTRE(mean, k);
    const int64_t at = c * desc->s;
    if (desc->dtype == BN_FLOAT32)
        OUT_F32(bn_cf_grad_input, (float *)dx + at, (const float *)dy + at, (const float *)x + at,
                             CF_ROWS, mean, mean_dy, k, scale);
    else
        OUT_F64(bn_cf_grad_input, (double *)dx + at, (const double *)dy + at, (const double *)x + at,
                             CF_ROWS, mean, mean_dy, k, scale);
}

void bn_kernel_cf_grad_input_next(const bn_desc *desc, void *dx, const void *dy, const void *x,
                                  int64_t c, double mean, double mean_dy, double k, double scale,
                                  double next_mean, double *sum_dy, double *sum_dy_xc) {
    mean = CENTRE(mean, k);
    const int64_t at = c * desc->s;
    if (desc->dtype == BN_FLOAT32)
        OUT_F32(bn_cf_grad_input_next, (float *)dx + at, (const float *)dy + at,
                (const float *)x + at, CF_ROWS, mean, mean_dy, k, scale, next_mean, sum_dy,
                sum_dy_xc);
    else
        OUT_F64(bn_cf_grad_input_next, (double *)dx + at, (const double *)dy + at,
                (const double *)x + at, CF_ROWS, mean, mean_dy, k, scale, next_mean, sum_dy,
                sum_dy_xc);
}

#define AT_C0(p, TYPE) ((p) ? (TYPE *)(p) + c0 : NULL)

void bn_kernel_train_finish(const bn_desc *desc, int64_t c0, int64_t c1, double count,
                            const double *mean, const double *m2, double *scale, double *shift,
                            double *save_mean, double *save_invstd, void *running_mean,
                            void *running_var, const void *weight, const void *bias, double eps,
                            double factor) {
    if (desc->dtype == BN_FLOAT32)
        bn_train_finish_f32(c1 - c0, count, mean, m2, scale, shift, AT_C0(save_mean, double),
                            AT_C0(save_invstd, double), AT_C0(running_mean, float),
                            AT_C0(running_var, float), AT_C0(weight, const float),
                            AT_C0(bias, const float), eps, factor);
    else
        bn_train_finish_f64(c1 - c0, count, mean, m2, scale, shift, AT_C0(save_mean, double),
                            AT_C0(save_invstd, double), AT_C0(running_mean, double),
                            AT_C0(running_var, double), AT_C0(weight, const double),
                            AT_C0(bias, const double), eps, factor);
}

void bn_kernel_eval_coefs(const bn_desc *desc, void *coef, int64_t c0, int64_t c1,
                          const void *running_mean, const void *running_var, const void *weight,
                          const void *bias, double eps) {
    if (desc->dtype == BN_FLOAT32)
        bn_eval_coefs_f32(coef, desc->c, c0, c1, running_mean, running_var, weight, bias, eps);
    else
        bn_eval_coefs_f64(coef, desc->c, c0, c1, running_mean, running_var, weight, bias, eps);
}

void bn_kernel_cf_normalize_rows(const bn_desc *desc, void *y, const void *x, int64_t i,
                                 int64_t c0, int64_t c1, const void *coef) {
    const int64_t at = (i * desc->c + c0) * desc->s;
    if (desc->dtype == BN_FLOAT32)
        OUT_F32(bn_cf_normalize_rows, (float *)y + at, (const float *)x + at, c1 - c0, desc->s,
                                 (const float *)coef + c0, desc->c);
    else
        OUT_F64(bn_cf_normalize_rows, (double *)y + at, (const double *)x + at, c1 - c0, desc->s,
                                 (const double *)coef + c0, desc->c);
}

/* Channels-last: the tile's first element, its rows, their length and the tile's width;
 * acc, sums and coefficients indexed by channel are offset to channel c0. */
#define CL_AT(p, TYPE) ((TYPE *)(p) + r0 * desc->c + c0)
#define CL_TILE r1 - r0, desc->c, c1 - c0
#define COEF(p, TYPE) ((const TYPE *)(p) + c0)

void bn_kernel_cl_moments(const bn_desc *desc, bn_moments *acc, const void *x, int64_t r0,
                          int64_t r1, int64_t c0, int64_t c1) {
    if (desc->dtype == BN_FLOAT32)
        bn_cl_moments_f32(acc + c0, CL_AT(x, const float), CL_TILE);
    else
        bn_cl_moments_f64(acc + c0, CL_AT(x, const double), CL_TILE);
}

void bn_kernel_cl_coefs(const bn_desc *desc, void *coef, int64_t c0, int64_t c1,
                        const double *mean, const double *scale, const double *shift,
                        const double *mean_dy, const double *k) {
    if (desc->dtype == BN_FLOAT32)
        bn_cl_coefs_f32(coef, desc->c, c0, c1, mean, scale, shift, mean_dy, k);
    else
        bn_cl_coefs_f64(coef, desc->c, c0, c1, mean, scale, shift, mean_dy, k);
}

void bn_kernel_cl_normalize(const bn_desc *desc, void *y, const void *x, int64_t r0, int64_t r1,
                            int64_t c0, int64_t c1, const void *coef) {
    if (desc->dtype == BN_FLOAT32)
        OUT_F32(bn_cl_normalize, CL_AT(y, float), CL_AT(x, const float), CL_TILE, COEF(coef, float));
    else
        OUT_F64(bn_cl_normalize, CL_AT(y, double), CL_AT(x, const double), CL_TILE, COEF(coef, double));
}

void bn_kernel_cl_grad_sums(const bn_desc *desc, double *sum_dy, double *sum_dy_xc,
                            const void *dy, const void *x, int64_t r0, int64_t r1, int64_t c0,
                            int64_t c1, const double *mean) {
    if (desc->dtype == BN_FLOAT32)
        bn_cl_grad_sums_f32(sum_dy + c0, sum_dy_xc + c0, CL_AT(dy, const float),
                            CL_AT(x, const float), CL_TILE, mean + c0);
    else
        bn_cl_grad_sums_f64(sum_dy + c0, sum_dy_xc + c0, CL_AT(dy, const double),
                            CL_AT(x, const double), CL_TILE, mean + c0);
}

void bn_kernel_cl_grad_input(const bn_desc *desc, void *dx, const void *dy, const void *x,
                             int64_t r0, int64_t r1, int64_t c0, int64_t c1, const void *coef) {
    if (desc->dtype == BN_FLOAT32)
        OUT_F32(bn_cl_grad_input, CL_AT(dx, float), CL_AT(dy, const float), CL_AT(x, const float),
                             CL_TILE, COEF(coef, float));
    else
        OUT_F64(bn_cl_grad_input, CL_AT(dx, double), CL_AT(dy, const double), CL_AT(x, const double),
                             CL_TILE, COEF(coef, double));
}
