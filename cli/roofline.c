/* roofline.c - the memory roofline of `bnorm bench`: streaming kernels that read and write the
 * same bytes as a case, once, on the same threads (forward: read x, write y = x * 1.5 + 0.25;
 * backward: read dy and x, write dx = dy * 1.5 + x * 0.25).
 *
 * Variants, and the fastest on a case is its roofline: ordinary stores (which also read every
 * output line into the cache first, so they win while the tensors fit in the caches) and
 * non-temporal stores of 16 bytes (SSE2) and of 64 bytes (AVX-512, when the CPU has it), which
 * skip that read and win on tensors that stream from memory. The work is split statically over
 * the threads at 64-byte boundaries. */
#include "bench.h"

#if defined(__x86_64__) || defined(__SSE2__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__SSE2__)
#define HAVE_NT128 1
#else
#define HAVE_NT128 0
#endif
#if defined(__x86_64__) && defined(__GNUC__) /* gcc and clang: AVX-512 by function attribute */
#define HAVE_NT512 1
#define TARGET_AVX512 __attribute__((target("avx512f")))
#else
#define HAVE_NT512 0
#endif

#ifdef _OPENMP
#define SIMD_LOOP _Pragma("omp simd")
#else
#define SIMD_LOOP
#endif

int bench_roofline_available(int kind) {
    if (kind == ROOF_NT128) return HAVE_NT128;
    if (kind == ROOF_NT512) {
#if HAVE_NT512
        return __builtin_cpu_supports("avx512f");
#else
        return 0;
#endif
    }
    return 1;
}

/* The non-temporal loops: from i (its output 64-byte aligned) while whole vectors fit before b;
 * each returns where it stopped. y = x * 1.5 + 0.25 forward, o = g * 1.5 + x * 0.25 backward. */
#if HAVE_NT128
static ptrdiff_t nt128_fwd_f32(float *restrict y, const float *restrict x, ptrdiff_t i,
                               ptrdiff_t b) {
    const __m128 c1 = _mm_set1_ps(1.5f), c0 = _mm_set1_ps(0.25f);
    for (; i + 4 <= b; i += 4)
        _mm_stream_ps(y + i, _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(x + i), c1), c0));
    _mm_sfence();
    return i;
}
static ptrdiff_t nt128_fwd_f64(double *restrict y, const double *restrict x, ptrdiff_t i,
                               ptrdiff_t b) {
    const __m128d c1 = _mm_set1_pd(1.5), c0 = _mm_set1_pd(0.25);
    for (; i + 2 <= b; i += 2)
        _mm_stream_pd(y + i, _mm_add_pd(_mm_mul_pd(_mm_loadu_pd(x + i), c1), c0));
    _mm_sfence();
    return i;
}
static ptrdiff_t nt128_bwd_f32(float *restrict o, const float *restrict g,
                               const float *restrict x, ptrdiff_t i, ptrdiff_t b) {
    const __m128 c1 = _mm_set1_ps(1.5f), c0 = _mm_set1_ps(0.25f);
    for (; i + 4 <= b; i += 4)
        _mm_stream_ps(o + i, _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(g + i), c1),
                                        _mm_mul_ps(_mm_loadu_ps(x + i), c0)));
    _mm_sfence();
    return i;
}
static ptrdiff_t nt128_bwd_f64(double *restrict o, const double *restrict g,
                               const double *restrict x, ptrdiff_t i, ptrdiff_t b) {
    const __m128d c1 = _mm_set1_pd(1.5), c0 = _mm_set1_pd(0.25);
    for (; i + 2 <= b; i += 2)
        _mm_stream_pd(o + i, _mm_add_pd(_mm_mul_pd(_mm_loadu_pd(g + i), c1),
                                        _mm_mul_pd(_mm_loadu_pd(x + i), c0)));
    _mm_sfence();
    return i;
}
#endif
#if HAVE_NT512
TARGET_AVX512 static ptrdiff_t nt512_fwd_f32(float *restrict y, const float *restrict x,
                                             ptrdiff_t i, ptrdiff_t b) {
    const __m512 c1 = _mm512_set1_ps(1.5f), c0 = _mm512_set1_ps(0.25f);
    for (; i + 16 <= b; i += 16)
        _mm512_stream_ps(y + i, _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), c1), c0));
    _mm_sfence();
    return i;
}
TARGET_AVX512 static ptrdiff_t nt512_fwd_f64(double *restrict y, const double *restrict x,
                                             ptrdiff_t i, ptrdiff_t b) {
    const __m512d c1 = _mm512_set1_pd(1.5), c0 = _mm512_set1_pd(0.25);
    for (; i + 8 <= b; i += 8)
        _mm512_stream_pd(y + i, _mm512_add_pd(_mm512_mul_pd(_mm512_loadu_pd(x + i), c1), c0));
    _mm_sfence();
    return i;
}
TARGET_AVX512 static ptrdiff_t nt512_bwd_f32(float *restrict o, const float *restrict g,
                                             const float *restrict x, ptrdiff_t i, ptrdiff_t b) {
    const __m512 c1 = _mm512_set1_ps(1.5f), c0 = _mm512_set1_ps(0.25f);
    for (; i + 16 <= b; i += 16)
        _mm512_stream_ps(o + i, _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(g + i), c1),
                                              _mm512_mul_ps(_mm512_loadu_ps(x + i), c0)));
    _mm_sfence();
    return i;
}
TARGET_AVX512 static ptrdiff_t nt512_bwd_f64(double *restrict o, const double *restrict g,
                                             const double *restrict x, ptrdiff_t i,
                                             ptrdiff_t b) {
    const __m512d c1 = _mm512_set1_pd(1.5), c0 = _mm512_set1_pd(0.25);
    for (; i + 8 <= b; i += 8)
        _mm512_stream_pd(o + i, _mm512_add_pd(_mm512_mul_pd(_mm512_loadu_pd(g + i), c1),
                                              _mm512_mul_pd(_mm512_loadu_pd(x + i), c0)));
    _mm_sfence();
    return i;
}
#endif

/* The first index from a whose element of p (of esize bytes) is 64-byte aligned, at most b. */
static ptrdiff_t aligned_from(const void *p, size_t esize, ptrdiff_t a, ptrdiff_t b) {
    while (a < b && ((uintptr_t)p + (size_t)a * esize) % 64 != 0) a++;
    return a;
}

/* Forward on [a, b): reads x, writes y. */
static void stream_forward(void *y, const void *x, ptrdiff_t a, ptrdiff_t b, bn_dtype dtype,
                           int kind) {
    if (dtype == BN_FLOAT32) {
        float *restrict yf = y;
        const float *restrict xf = x;
        if (kind != ROOF_STORE) {
            ptrdiff_t i = aligned_from(yf, sizeof *yf, a, b);
            for (ptrdiff_t k = a; k < i; k++) yf[k] = xf[k] * 1.5f + 0.25f;
#if HAVE_NT128
            if (kind == ROOF_NT128) i = nt128_fwd_f32(yf, xf, i, b);
#endif
#if HAVE_NT512
            if (kind == ROOF_NT512) i = nt512_fwd_f32(yf, xf, i, b);
#endif
            a = i;
        }
        SIMD_LOOP
        for (ptrdiff_t k = a; k < b; k++) yf[k] = xf[k] * 1.5f + 0.25f;
    } else {
        double *restrict yd = y;
        const double *restrict xd = x;
        if (kind != ROOF_STORE) {
            ptrdiff_t i = aligned_from(yd, sizeof *yd, a, b);
            for (ptrdiff_t k = a; k < i; k++) yd[k] = xd[k] * 1.5 + 0.25;
#if HAVE_NT128
            if (kind == ROOF_NT128) i = nt128_fwd_f64(yd, xd, i, b);
#endif
#if HAVE_NT512
            if (kind == ROOF_NT512) i = nt512_fwd_f64(yd, xd, i, b);
#endif
            a = i;
        }
        SIMD_LOOP
        for (ptrdiff_t k = a; k < b; k++) yd[k] = xd[k] * 1.5 + 0.25;
    }
}

/* Backward on [a, b): reads x and dy, writes dx. */
static void stream_backward(void *dx, const void *dy, const void *x, ptrdiff_t a, ptrdiff_t b,
                            bn_dtype dtype, int kind) {
    if (dtype == BN_FLOAT32) {
        float *restrict o = dx;
        const float *restrict g = dy, *restrict xf = x;
        if (kind != ROOF_STORE) {
            ptrdiff_t i = aligned_from(o, sizeof *o, a, b);
            for (ptrdiff_t k = a; k < i; k++) o[k] = g[k] * 1.5f + xf[k] * 0.25f;
#if HAVE_NT128
            if (kind == ROOF_NT128) i = nt128_bwd_f32(o, g, xf, i, b);
#endif
#if HAVE_NT512
            if (kind == ROOF_NT512) i = nt512_bwd_f32(o, g, xf, i, b);
#endif
            a = i;
        }
        SIMD_LOOP
        for (ptrdiff_t k = a; k < b; k++) o[k] = g[k] * 1.5f + xf[k] * 0.25f;
    } else {
        double *restrict o = dx;
        const double *restrict g = dy, *restrict xd = x;
        if (kind != ROOF_STORE) {
            ptrdiff_t i = aligned_from(o, sizeof *o, a, b);
            for (ptrdiff_t k = a; k < i; k++) o[k] = g[k] * 1.5 + xd[k] * 0.25;
#if HAVE_NT128
            if (kind == ROOF_NT128) i = nt128_bwd_f64(o, g, xd, i, b);
#endif
#if HAVE_NT512
            if (kind == ROOF_NT512) i = nt512_bwd_f64(o, g, xd, i, b);
#endif
            a = i;
        }
        SIMD_LOOP
        for (ptrdiff_t k = a; k < b; k++) o[k] = g[k] * 1.5 + xd[k] * 0.25;
    }
}

const char *bench_roofline_name(int kind) {
    static const char *const names[ROOF_KINDS] = {"store", "ntstore128", "ntstore512"};
    return names[kind];
}

/* One call: the forward kernel when dy is NULL, else the backward one. */
typedef struct roof_job {
    int kind;
    bn_dtype dtype;
    void *out;
    const void *dy, *x;
} roof_job;

static void run_range(const roof_job *j, ptrdiff_t a, ptrdiff_t b) {
    if (j->dy) stream_backward(j->out, j->dy, j->x, a, b, j->dtype, j->kind);
    else stream_forward(j->out, j->x, a, b, j->dtype, j->kind);
}

/* The job on n elements and `threads` threads: a static split at 16-element (64-byte) bounds. */
static void run_split(const roof_job *j, ptrdiff_t n, int threads) {
    if (threads == 1) {
        run_range(j, 0, n);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
    {
        ptrdiff_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        ptrdiff_t blocks = (n + 15) / 16;
        ptrdiff_t a = blocks * t / nt * 16, b = blocks * (t + 1) / nt * 16;
        run_range(j, a < n ? a : n, b < n ? b : n);
    }
#else
    run_range(j, 0, n);
#endif
}

void bench_roofline_forward(int kind, bn_dtype dtype, void *y, const void *x, ptrdiff_t n,
                            int threads) {
    const roof_job j = {kind, dtype, y, NULL, x};
    run_split(&j, n, threads);
}

void bench_roofline_backward(int kind, bn_dtype dtype, void *dx, const void *dy, const void *x,
                             ptrdiff_t n, int threads) {
    const roof_job j = {kind, dtype, dx, dy, x};
    run_split(&j, n, threads);
}
