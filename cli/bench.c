/* bench.c - `bnorm bench`: times the library's forward (training and eval) and backward passes
 * in-process, next to a streaming kernel that moves the same bytes on the same threads (the
 * memory roofline), and reports each case as a table row or a JSON line. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */

#include "bnorm.h"
#include "cli.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__SSE2__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

static const char usage[] =
    "usage: bnorm bench [--json] [--shape NxC[xHxW...]] [--layout nchw|nhwc]\n"
    "                   [--mode train|eval|backward] [--threads T] [--dtype f32|f64]\n"
    "                   [--repeat R]\n";

static const char help[] =
    "usage: bnorm bench [--json] [--shape NxC[xHxW...]] [--layout nchw|nhwc]\n"
    "                   [--mode train|eval|backward] [--threads T] [--dtype f32|f64]\n"
    "                   [--repeat R]\n"
    "\n"
    "Times bn_forward_train (with running statistics), bn_forward_eval and bn_backward_train\n"
    "in this process, and next to each the memory roofline: a streaming kernel on the same\n"
    "threads that reads and writes the same bytes once (the fastest of plain and non-temporal\n"
    "stores on that case). Forward passes move 8 bytes per element in float32 (read x, write\n"
    "y), backward 12 (read x and dy, write dx); twice that in float64. Buffers are 64-byte\n"
    "aligned, filled with random values and written once before timing; both kernels are\n"
    "warmed up, then timed alternately with CLOCK_MONOTONIC, each timed batch right after one\n"
    "untimed call of the same kernel. Each case reports the median and the minimum time per\n"
    "call, the bytes moved, the achieved GB/s, the roofline's median time and ours as a\n"
    "percentage of it (100% = at the floor).\n"
    "\n"
    "Without --shape the default grid runs: 20x2, 256x1024, 32x64x56x56 in nchw and nhwc,\n"
    "32x512x7x7 and 8x256x128x128 (nchw), in every mode, on 1 and 2 threads, in float32.\n"
    "Each option below narrows the grid to what it names.\n"
    "\n"
    "options:\n"
    "  --json          one JSON object per case and line, instead of a table\n"
    "  --shape S       the logical shape N x C x ..., 2 to 5 sizes >= 1 joined by 'x', such as\n"
    "                  32x64x56x56; written N x C x H x W for nhwc too. N times the spatial\n"
    "                  size must be at least 2\n"
    "  --layout L      nchw (channels first) or nhwc (channels last); with --shape and no\n"
    "                  --layout, both (a 2-d shape has one layout, reported as nchw)\n"
    "  --mode M        train, eval or backward\n"
    "  --threads T     threads for the library and the roofline, 1 to 1024 (default: 1 and 2)\n"
    "  --dtype D       f32 or f64 (default f32)\n"
    "  --repeat R      timed repetitions, 1 to 1000000 (default: enough for about 0.4 s per\n"
    "                  case, at least 5). Calls shorter than 100 us are timed in batches;\n"
    "                  a repetition is one batch, and times are per call\n"
    "  -h, --help      show this help\n";

enum { MODE_TRAIN, MODE_EVAL, MODE_BACKWARD, MODE_COUNT };
static const char *const mode_names[MODE_COUNT] = {"train", "eval", "backward"};

enum { MAX_DIMS = 5 };

/* One shape of the grid, in one layout. */
typedef struct grid_shape {
    int ndim;
    int64_t dims[MAX_DIMS];
    bn_layout layout;
} grid_shape;

static const grid_shape default_grid[] = {
    {2, {20, 2, 0, 0, 0}, BN_CHANNELS_FIRST},
    {2, {256, 1024, 0, 0, 0}, BN_CHANNELS_FIRST},
    {4, {32, 64, 56, 56, 0}, BN_CHANNELS_FIRST},
    {4, {32, 64, 56, 56, 0}, BN_CHANNELS_LAST},
    {4, {32, 512, 7, 7, 0}, BN_CHANNELS_FIRST},
    {4, {8, 256, 128, 128, 0}, BN_CHANNELS_FIRST},
};

/* The command line. */
typedef struct bench_args {
    const char *shape_text, *layout_text, *mode_text, *threads_text, *dtype_text, *repeat_text;
    int json;
    grid_shape shape;     /* valid when shape_text */
    int layout;           /* -1: any */
    int mode;             /* -1: all */
    int threads;          /* 0: 1 and 2 */
    bn_dtype dtype;
    int repeat;           /* 0: automatic */
} bench_args;

/* One timed case. */
typedef struct bench_case {
    grid_shape shape;
    int mode;
    int threads;
    bn_dtype dtype;
} bench_case;

/* What one case measured. */
typedef struct bench_result {
    double median_ns, min_ns, roofline_ns, roofline_min_ns;
    double bytes, tensor_bytes;
    int repeat, inner, roofline_inner;
    const char *roofline_kind;
} bench_result;

/* ---- command line ---- */

static int parse_shape(grid_shape *g, const char *text) {
    char buf[256];
    if (strlen(text) >= sizeof buf) return 0;
    strcpy(buf, text);
    int nd = 0;
    char *p = buf;
    for (;;) {
        char *sep = strchr(p, 'x');
        if (sep) *sep = '\0';
        uint64_t v;
        if (nd == MAX_DIMS || !cli_parse_u64(p, &v) || v < 1 || v > (uint64_t)INT64_MAX) return 0;
        g->dims[nd++] = (int64_t)v;
        if (!sep) break;
        p = sep + 1;
    }
    if (nd < 2) return 0;
    g->ndim = nd;
    g->layout = BN_CHANNELS_FIRST;
    return 1;
}

/* @return CLI_OK, CLI_USAGE_ERROR, or -1 after printing the help (exit 0). */
static int parse_args(bench_args *a, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            fputs(help, stdout);
            return -1;
        }
        if (strcmp(arg, "--json") == 0) {
            a->json = 1;
            continue;
        }
        if (arg[0] != '-') return cli_usage_error("bench", usage, "unexpected argument '%s'", arg);
        int r = cli_take_value(argc, argv, &i, NULL, "--shape", &a->shape_text, "bench", usage);
        if (r == 0)
            r = cli_take_value(argc, argv, &i, NULL, "--layout", &a->layout_text, "bench", usage);
        if (r == 0)
            r = cli_take_value(argc, argv, &i, NULL, "--mode", &a->mode_text, "bench", usage);
        if (r == 0)
            r = cli_take_value(argc, argv, &i, NULL, "--threads", &a->threads_text, "bench",
                               usage);
        if (r == 0)
            r = cli_take_value(argc, argv, &i, NULL, "--dtype", &a->dtype_text, "bench", usage);
        if (r == 0)
            r = cli_take_value(argc, argv, &i, NULL, "--repeat", &a->repeat_text, "bench", usage);
        if (r < 0) return CLI_USAGE_ERROR;
        if (r == 0) return cli_usage_error("bench", usage, "unknown option '%s'", arg);
    }

    a->layout = -1;
    if (a->layout_text) {
        if (strcmp(a->layout_text, "nchw") == 0) a->layout = BN_CHANNELS_FIRST;
        else if (strcmp(a->layout_text, "nhwc") == 0) a->layout = BN_CHANNELS_LAST;
        else
            return cli_usage_error("bench", usage, "--layout: '%s' is not nchw or nhwc",
                                   a->layout_text);
    }
    a->mode = -1;
    if (a->mode_text) {
        for (int m = 0; m < MODE_COUNT; m++)
            if (strcmp(a->mode_text, mode_names[m]) == 0) a->mode = m;
        if (a->mode < 0)
            return cli_usage_error("bench", usage, "--mode: '%s' is not train, eval or backward",
                                   a->mode_text);
    }
    a->threads = 0;
    if (a->threads_text) {
        uint64_t v;
        if (!cli_parse_u64(a->threads_text, &v) || v < 1 || v > 1024)
            return cli_usage_error("bench", usage,
                                   "--threads: '%s' is not an integer from 1 to 1024",
                                   a->threads_text);
        a->threads = (int)v;
    }
    a->dtype = BN_FLOAT32;
    if (a->dtype_text) {
        if (strcmp(a->dtype_text, "f32") == 0) a->dtype = BN_FLOAT32;
        else if (strcmp(a->dtype_text, "f64") == 0) a->dtype = BN_FLOAT64;
        else
            return cli_usage_error("bench", usage, "--dtype: '%s' is not f32 or f64",
                                   a->dtype_text);
    }
    a->repeat = 0;
    if (a->repeat_text) {
        uint64_t v;
        if (!cli_parse_u64(a->repeat_text, &v) || v < 1 || v > 1000000)
            return cli_usage_error("bench", usage,
                                   "--repeat: '%s' is not an integer from 1 to 1000000",
                                   a->repeat_text);
        a->repeat = (int)v;
    }
    if (a->shape_text) {
        if (!parse_shape(&a->shape, a->shape_text))
            return cli_usage_error("bench", usage,
                                   "--shape: '%s' is not 2 to 5 sizes >= 1 joined by 'x', such as "
                                   "32x64x56x56",
                                   a->shape_text);
        bn_desc d;
        bn_status st = bn_desc_from_dims(&d, a->shape.ndim, a->shape.dims, a->dtype,
                                         BN_CHANNELS_FIRST);
        if (st != BN_OK)
            return cli_usage_error("bench", usage, "--shape: %s: %s", a->shape_text,
                                   bn_status_string(st));
        if (d.n * d.s < 2)
            return cli_usage_error("bench", usage,
                                   "--shape: %s has one value per channel; training needs more",
                                   a->shape_text);
    }
    return CLI_OK;
}

/* ---- data ---- */

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* Fills n values of dtype with lo + (hi - lo) * uniform[0, 1). */
static void fill(void *p, size_t n, bn_dtype dtype, double lo, double hi, uint64_t seed) {
    uint64_t s = seed;
    double scale = (hi - lo) * 0x1p-53;
    if (dtype == BN_FLOAT32) {
        float *f = p;
        for (size_t i = 0; i < n; i++) f[i] = (float)(lo + (double)(splitmix64(&s) >> 11) * scale);
    } else {
        double *d = p;
        for (size_t i = 0; i < n; i++) d[i] = lo + (double)(splitmix64(&s) >> 11) * scale;
    }
}

/* 64-byte aligned, of at least nbytes (at least 64); NULL when out of memory. */
static void *alloc64(size_t nbytes) {
    size_t rounded = (nbytes + 63) / 64 * 64;
    if (rounded < nbytes) return NULL;
    return aligned_alloc(64, rounded ? rounded : 64);
}

/* ---- the roofline: streaming kernels that move the same bytes as the case ----
 *
 * Variants, and the fastest on this case is the roofline: ordinary stores (which also read
 * every output line into the cache first, so they win while the tensors fit in the caches) and
 * non-temporal stores of 16 bytes (SSE2) and of 64 bytes (AVX-512, when the CPU has it), which
 * skip that read and win on tensors that stream from memory. Always: the same bytes read and
 * written once, the work split statically over the case's threads at 64-byte boundaries. */

enum { ROOF_STORE, ROOF_NT128, ROOF_NT512, ROOF_KINDS };
static const char *const roof_names[ROOF_KINDS] = {"store", "ntstore128", "ntstore512"};

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

static int roof_kind_available(int kind) {
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

/* ---- timing ---- */

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* The buffers and arguments of one case. */
typedef struct bench_ctx {
    bench_case bc;
    bn_desc desc;
    bn_options opt;
    ptrdiff_t count;
    void *x, *out, *dy;                 /* out is y or dx */
    void *weight, *bias, *rmean, *rvar, *dweight, *dbias;
    double *save_mean, *save_invstd;
    int64_t tracked;
    int roof_kind;                      /* ROOF_STORE, ROOF_NT128 or ROOF_NT512 */
} bench_ctx;

/* One call of the library for the case's mode. */
static bn_status call_ours(bench_ctx *c) {
    switch (c->bc.mode) {
    case MODE_TRAIN:
        return bn_forward_train(c->out, c->save_mean, c->save_invstd, c->rmean, c->rvar,
                                &c->tracked, c->x, c->weight, c->bias, &c->desc, &c->opt);
    case MODE_EVAL:
        return bn_forward_eval(c->out, c->x, c->rmean, c->rvar, c->weight, c->bias, &c->desc,
                               c->opt.eps);
    default:
        return bn_backward_train(c->out, c->dweight, c->dbias, c->dy, c->x, c->save_mean,
                                 c->save_invstd, c->weight, &c->desc);
    }
}

/* The roofline kernel on elements [a, b). */
static void roofline_range(bench_ctx *c, ptrdiff_t a, ptrdiff_t b) {
    if (c->bc.mode == MODE_BACKWARD)
        stream_backward(c->out, c->dy, c->x, a, b, c->bc.dtype, c->roof_kind);
    else
        stream_forward(c->out, c->x, a, b, c->bc.dtype, c->roof_kind);
}

/* The roofline kernel on the case's threads: a static split at 16-element (64-byte) bounds. */
static void call_roofline(bench_ctx *c) {
    ptrdiff_t n = c->count;
    if (c->bc.threads == 1) {
        roofline_range(c, 0, n);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(c->bc.threads)
    {
        ptrdiff_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        ptrdiff_t blocks = (n + 15) / 16;
        ptrdiff_t a = blocks * t / nt * 16, b = blocks * (t + 1) / nt * 16;
        roofline_range(c, a < n ? a : n, b < n ? b : n);
    }
#else
    roofline_range(c, 0, n);
#endif
}

/* Runs `inner` calls of ours (which = 0) or the roofline (which = 1).
 * @return the time per call in ns, or a negative value when the library failed (*st set). */
static double time_calls(bench_ctx *c, int which, int inner, bn_status *st) {
    double t0 = now_ns();
    for (int k = 0; k < inner; k++) {
        if (which == 0) {
            bn_status s = call_ours(c);
            if (s != BN_OK) {
                *st = s;
                return -1;
            }
        } else {
            call_roofline(c);
        }
    }
    return (now_ns() - t0) / inner;
}

/* Warms up and estimates the time per call: one untimed call, then calls until 20 ms have
 * passed (at least one, at most a million). @return ns per call, negative on a library error. */
static double warm_up(bench_ctx *c, int which, bn_status *st) {
    if (time_calls(c, which, 1, st) < 0) return -1;
    double t0 = now_ns(), elapsed = 0;
    long calls = 0;
    while (calls < 1000000 && (calls == 0 || elapsed < 20e6)) {
        if (time_calls(c, which, 1, st) < 0) return -1;
        calls++;
        elapsed = now_ns() - t0;
    }
    return elapsed / (double)calls;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v and returns its median. */
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

enum { SAMPLE_TARGET_NS = 100000 };     /* a batch of short calls lasts about 100 us */
#define CASE_TARGET_NS 4e8               /* the automatic repeat aims at 0.4 s per case */

static int batch_size(double per_call_ns) {
    double k = floor(SAMPLE_TARGET_NS / (per_call_ns > 1 ? per_call_ns : 1));
    return k < 1 ? 1 : k > 100000 ? 100000 : (int)k;
}

/* Times the prepared case: interleaved repetitions of ours and the roofline. */
static int measure(bench_ctx *c, int repeat, bench_result *res, const char *name) {
    bn_status st = BN_OK;
    double t_ours = warm_up(c, 0, &st);
    if (t_ours < 0) return cli_fail("bench", "%s: %s", name, bn_status_string(st));
    /* the roofline is the fastest of its variants on this case */
    double t_roof = -1;
    int best = ROOF_STORE;
    for (int kind = 0; kind < ROOF_KINDS; kind++) {
        if (!roof_kind_available(kind)) continue;
        c->roof_kind = kind;
        double t = warm_up(c, 1, &st);
        if (t_roof < 0 || t < t_roof) {
            t_roof = t;
            best = kind;
        }
    }
    c->roof_kind = best;
    (void)warm_up(c, 1, &st); /* the chosen one's data back in the caches */
    int inner = batch_size(t_ours), roof_inner = batch_size(t_roof);
    if (repeat == 0) {
        double per_rep = (inner + 1) * t_ours + (roof_inner + 1) * t_roof;
        double r = ceil(CASE_TARGET_NS / (per_rep > 1 ? per_rep : 1));
        repeat = r < 5 ? 5 : r > 100000 ? 100000 : (int)r;
    }
    double *ours = malloc(sizeof(double) * (size_t)repeat);
    double *roof = malloc(sizeof(double) * (size_t)repeat);
    if (!ours || !roof) {
        free(ours);
        free(roof);
        return cli_fail("bench", "%s: out of memory", name);
    }
    for (int r = 0; r < repeat; r++) {
        /* Alternate which goes first, so neither always runs right after the other. Each timed
         * batch follows one untimed call of the same kernel: the other kernel splits the work
         * over the threads differently, and its cache lines would otherwise sit in the wrong
         * core's cache, a state no program calling one kernel repeatedly is in. */
        for (int half = 0; half < 2; half++) {
            int which = (r + half) % 2;
            if (time_calls(c, which, 1, &st) < 0) break;
            double t = time_calls(c, which, which ? roof_inner : inner, &st);
            if (which) roof[r] = t;
            else ours[r] = t;
            if (t < 0) break;
        }
        if (st != BN_OK) {
            free(ours);
            free(roof);
            return cli_fail("bench", "%s: %s", name, bn_status_string(st));
        }
    }
    res->median_ns = median(ours, repeat);
    res->min_ns = ours[0];
    res->roofline_ns = median(roof, repeat);
    res->roofline_min_ns = roof[0];
    res->repeat = repeat;
    res->inner = inner;
    res->roofline_inner = roof_inner;
    res->roofline_kind = roof_names[best];
    free(ours);
    free(roof);
    return CLI_OK;
}

static void shape_string(char *buf, size_t size, const grid_shape *g) {
    size_t len = 0;
    buf[0] = '\0';
    for (int k = 0; k < g->ndim && len < size; k++)
        len += (size_t)snprintf(buf + len, size - len, "%s%lld", k ? "x" : "",
                                (long long)g->dims[k]);
}

/* Allocates and fills the case's buffers, times it, frees them. */
static int run_case(const bench_case *bc, int repeat, bench_result *res) {
    char name[160], shape[96];
    shape_string(shape, sizeof shape, &bc->shape);
    snprintf(name, sizeof name, "%s %s %s", shape,
             bc->shape.layout == BN_CHANNELS_LAST ? "nhwc" : "nchw", mode_names[bc->mode]);

    bench_ctx c;
    memset(&c, 0, sizeof c);
    c.bc = *bc;
    bn_options opt = BN_OPTIONS_DEFAULT;
    c.opt = opt;
    bn_status st = bn_desc_from_dims(&c.desc, bc->shape.ndim, bc->shape.dims, bc->dtype,
                                     bc->shape.layout);
    if (st != BN_OK) return cli_fail("bench", "%s: %s", name, bn_status_string(st));
    size_t esize = bc->dtype == BN_FLOAT32 ? sizeof(float) : sizeof(double);
    size_t count = (size_t)(c.desc.n * c.desc.c * c.desc.s), cc = (size_t)c.desc.c;
    if (count > (size_t)PTRDIFF_MAX / esize) return cli_fail("bench", "%s: too large", name);
    c.count = (ptrdiff_t)count;
    size_t nbytes = count * esize;
    int backward = bc->mode == MODE_BACKWARD;

    c.x = alloc64(nbytes);
    c.out = alloc64(nbytes);
    c.dy = backward ? alloc64(nbytes) : NULL;
    c.weight = alloc64(cc * esize);
    c.bias = alloc64(cc * esize);
    c.rmean = alloc64(cc * esize);
    c.rvar = alloc64(cc * esize);
    c.dweight = alloc64(cc * esize);
    c.dbias = alloc64(cc * esize);
    c.save_mean = alloc64(cc * sizeof(double));
    c.save_invstd = alloc64(cc * sizeof(double));
    int status = CLI_OK;
    if (!c.x || !c.out || (backward && !c.dy) || !c.weight || !c.bias || !c.rmean || !c.rvar ||
        !c.dweight || !c.dbias || !c.save_mean || !c.save_invstd) {
        status = cli_fail("bench", "%s: out of memory (%zu bytes per tensor)", name, nbytes);
        goto done;
    }
    fill(c.x, count, bc->dtype, -2.0, 3.0, 1);
    if (backward) fill(c.dy, count, bc->dtype, -1.0, 1.0, 2);
    fill(c.weight, cc, bc->dtype, 0.5, 1.5, 3);
    fill(c.bias, cc, bc->dtype, -0.5, 0.5, 4);
    fill(c.rmean, cc, bc->dtype, -0.5, 0.5, 5);
    fill(c.rvar, cc, bc->dtype, 0.5, 2.0, 6);
    memset(c.out, 0, nbytes); /* every output page is touched before timing */
    memset(c.dweight, 0, cc * esize);
    memset(c.dbias, 0, cc * esize);

    bn_set_num_threads(bc->threads);
    if (backward) {
        /* the saved statistics of one training forward pass (out serves as its y) */
        st = bn_forward_train(c.out, c.save_mean, c.save_invstd, NULL, NULL, NULL, c.x, c.weight,
                              c.bias, &c.desc, &c.opt);
        if (st != BN_OK) {
            status = cli_fail("bench", "%s: %s", name, bn_status_string(st));
            goto done;
        }
    }
    status = measure(&c, repeat, res, name);
    res->tensor_bytes = (double)nbytes;
    res->bytes = (double)nbytes * (backward ? 3 : 2);
done:
    free(c.x);
    free(c.out);
    free(c.dy);
    free(c.weight);
    free(c.bias);
    free(c.rmean);
    free(c.rvar);
    free(c.dweight);
    free(c.dbias);
    free(c.save_mean);
    free(c.save_invstd);
    return status;
}

/* ---- output ---- */

/* "123 ns", "45.6 us", "7.89 ms", "1.23 s" */
static const char *fmt_time(char *buf, size_t size, double ns) {
    if (ns < 1e3) snprintf(buf, size, "%.0f ns", ns);
    else if (ns < 1e6) snprintf(buf, size, "%.2f us", ns / 1e3);
    else if (ns < 1e9) snprintf(buf, size, "%.3f ms", ns / 1e6);
    else snprintf(buf, size, "%.3f s", ns / 1e9);
    return buf;
}

static void print_header(void) {
    printf("bnorm %s bench: median (and min) time per call; roofline = a streaming kernel moving\n"
           "the same bytes on the same threads; %% of roofline = roofline time / our time\n\n",
           bn_version_string());
    printf("%-16s %-6s %-9s %3s %-5s %11s %11s %10s %8s %11s %7s\n", "shape", "layout", "mode",
           "thr", "dtype", "median", "min", "MB moved", "GB/s", "roofline", "% roof");
}

static void print_result(const bench_case *bc, const bench_result *r, int json) {
    char shape[96], t1[32], t2[32], t3[32];
    shape_string(shape, sizeof shape, &bc->shape);
    const char *layout = bc->shape.layout == BN_CHANNELS_LAST ? "nhwc" : "nchw";
    const char *dtype = bc->dtype == BN_FLOAT32 ? "f32" : "f64";
    double gbps = r->bytes / r->median_ns, roof_gbps = r->bytes / r->roofline_ns;
    double pct = 100.0 * r->roofline_ns / r->median_ns;
    if (json) {
        printf("{\"peer\": \"bnorm\", \"shape\": \"%s\", \"layout\": \"%s\", \"mode\": \"%s\", "
               "\"threads\": %d, \"dtype\": \"%s\", \"median_ns\": %.3f, \"min_ns\": %.3f, "
               "\"bytes\": %.0f, \"gbps\": %.4f, \"roofline_ns\": %.3f, "
               "\"roofline_min_ns\": %.3f, \"roofline_gbps\": %.4f, \"roofline_pct\": %.3f, "
               "\"roofline_kind\": \"%s\", "
               "\"repeat\": %d, \"inner\": %d, \"roofline_inner\": %d, \"tensor_bytes\": %.0f, "
               "\"lib_threads\": %d, \"version\": \"%s\"}\n",
               shape, layout, mode_names[bc->mode], bc->threads, dtype, r->median_ns, r->min_ns,
               r->bytes, gbps, r->roofline_ns, r->roofline_min_ns, roof_gbps, pct, r->roofline_kind,
               r->repeat,
               r->inner, r->roofline_inner, r->tensor_bytes, bn_get_num_threads(),
               bn_version_string());
    } else {
        printf("%-16s %-6s %-9s %3d %-5s %11s %11s %10.2f %8.2f %11s %6.1f%%\n", shape, layout,
               mode_names[bc->mode], bc->threads, dtype,
               fmt_time(t1, sizeof t1, r->median_ns), fmt_time(t2, sizeof t2, r->min_ns),
               r->bytes / 1e6, gbps, fmt_time(t3, sizeof t3, r->roofline_ns), pct);
    }
    fflush(stdout);
}

/* ---- the grid ---- */

static int run_shape(const bench_args *a, const grid_shape *g, int *header_done) {
    static const int default_threads[] = {1, 2};
    for (int m = 0; m < MODE_COUNT; m++) {
        if (a->mode >= 0 && m != a->mode) continue;
        for (int t = 0; t < 2; t++) {
            int threads = a->threads ? a->threads : default_threads[t];
            if (a->threads && t > 0) break;
            bench_case bc = {*g, m, threads, a->dtype};
            bench_result r;
            memset(&r, 0, sizeof r);
            if (!a->json && !*header_done) {
                print_header();
                *header_done = 1;
            }
            int status = run_case(&bc, a->repeat, &r);
            if (status != CLI_OK) return status;
            print_result(&bc, &r, a->json);
        }
    }
    return CLI_OK;
}

int cli_bench(int argc, char **argv) {
    bench_args a;
    memset(&a, 0, sizeof a);
    int status = parse_args(&a, argc, argv);
    if (status != CLI_OK) return status < 0 ? CLI_OK : status;

    int header_done = 0;
    if (a.shape_text) {
        grid_shape g = a.shape;
        if (g.ndim == 2) {
            /* (N, C) is the same in both layouts */
            g.layout = BN_CHANNELS_FIRST;
            return run_shape(&a, &g, &header_done);
        }
        for (int layout = BN_CHANNELS_FIRST; layout <= BN_CHANNELS_LAST; layout++) {
            if (a.layout >= 0 && layout != a.layout) continue;
            g.layout = (bn_layout)layout;
            status = run_shape(&a, &g, &header_done);
            if (status != CLI_OK) return status;
        }
        return CLI_OK;
    }
    for (size_t k = 0; k < sizeof default_grid / sizeof default_grid[0]; k++) {
        if (a.layout >= 0 && (int)default_grid[k].layout != a.layout) continue;
        status = run_shape(&a, &default_grid[k], &header_done);
        if (status != CLI_OK) return status;
    }
    return CLI_OK;
}
