/* onednn_peer.c - the oneDNN side of `make bench`: oneDNN's batch normalization (C API) timed
 * the way `bnorm bench` times bnorm, printed as JSON lines with the same keys (peer "onednn").
 *
 *   build/onednn_peer [--json] [--shape NxC[xHxW...]] [--layout nchw|nhwc|nchw16c]
 *                     [--mode train|eval|backward] [--threads T] [--dtype f32|f64|bf16]
 *                     [--fuse relu|add-relu] [--repeat R]
 *
 * Modes: train = forward training with scale and shift (batch statistics computed and written
 * to mean/variance; oneDNN keeps no running statistics), eval = forward inference with global
 * statistics, backward = prop_kind backward (diff_src, diff_scale, diff_shift) with the mean and
 * variance of one training pass. Layouts: plain nchw, nhwc (channels last) and the blocked
 * nChw16c (aBcd16b; 3-d to 5-d shapes only). --fuse relu: the batch normalization with
 * dnnl_fuse_norm_relu, forward and backward (training keeps the ReLU's mask in oneDNN's
 * workspace, which its backward reads). oneDNN has no f64 batch normalization, and 2.6 fuses no
 * add (--fuse add-relu): such a case prints a line with "unsupported", as does a case oneDNN has
 * no implementation of on this CPU (dnnl_unimplemented: 2.6's bf16 needs AVX-512). Threads: oneDNN runs on OpenMP; --threads T calls
 * omp_set_num_threads(T) before any oneDNN call (the runner also sets OMP_NUM_THREADS).
 * Without --shape, the default grid of `bnorm bench` (4-d shapes in all three layouts).
 * Build: cc -O2 -fopenmp bench/onednn_peer.c -o build/onednn_peer -ldnnl
 * Exit: 0, 1 on a runtime error, 2 on a usage error. */
#define _POSIX_C_SOURCE 200809L

#include <oneapi/dnnl/dnnl.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static const char usage[] =
    "usage: onednn_peer [--json] [--shape NxC[xHxW...]] [--layout nchw|nhwc|nchw16c]\n"
    "                   [--mode train|eval|backward] [--threads T] [--dtype f32|f64|bf16]\n"
    "                   [--fuse relu|add-relu] [--repeat R]\n";

enum { MODE_TRAIN, MODE_EVAL, MODE_BACKWARD, MODE_COUNT };
static const char *const mode_names[MODE_COUNT] = {"train", "eval", "backward"};
enum { LAYOUT_NCHW, LAYOUT_NHWC, LAYOUT_BLOCKED, LAYOUT_COUNT };
static const char *const layout_names[LAYOUT_COUNT] = {"nchw", "nhwc", "nchw16c"};
enum { MAX_DIMS = 5 };

typedef struct shape {
    int ndim;
    int64_t dims[MAX_DIMS];
} shape;

static const shape default_grid[] = {
    {2, {20, 2, 0, 0, 0}},       {2, {256, 1024, 0, 0, 0}}, {4, {32, 64, 56, 56, 0}},
    {4, {32, 512, 7, 7, 0}},     {4, {8, 256, 128, 128, 0}},
};

#define CASE_TARGET_NS 3e8   /* automatic repeat: about 0.3 s per case */
#define SAMPLE_TARGET_NS 1e5 /* calls shorter than 100 us are timed in batches */

static int usage_error(const char *fmt, const char *arg) {
    fputs("onednn_peer: ", stderr);
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    fputs(usage, stderr);
    return 2;
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static void fill(float *p, size_t n, double lo, double hi, uint64_t seed) {
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(lo + (hi - lo) * (double)(splitmix64(&s) >> 11) * 0x1p-53);
}

/* The data's type: f32, or bf16 (--dtype bf16: src, dst, diff_dst and diff_src in bfloat16,
 * mean, variance, scale and shift in f32, as oneDNN takes them). */
static dnnl_data_type_t data_type = dnnl_f32;

/* --fuse: "relu" (dnnl_fuse_norm_relu in every primitive), or NULL */
static const char *fuse_name;

/* fill() of n bfloat16 values (each float's top half, rounded to nearest even). */
static void fill_bf16(uint16_t *p, size_t n, double lo, double hi, uint64_t seed) {
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) {
        const float f = (float)(lo + (hi - lo) * (double)(splitmix64(&s) >> 11) * 0x1p-53);
        uint32_t u;
        memcpy(&u, &f, sizeof u);
        p[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
}

static int parse_u64(const char *text, uint64_t *out) {
    if (!text || text[0] < '0' || text[0] > '9') return 0;
    uint64_t v = 0;
    for (const char *p = text; *p; p++) {
        if (*p < '0' || *p > '9' || v > (UINT64_MAX - 9) / 10) return 0;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    *out = v;
    return 1;
}

static int parse_shape(shape *s, const char *text) {
    char buf[256];
    if (strlen(text) >= sizeof buf) return 0;
    strcpy(buf, text);
    int nd = 0;
    for (char *p = buf;;) {
        char *sep = strchr(p, 'x');
        if (sep) *sep = '\0';
        uint64_t v;
        if (nd == MAX_DIMS || !parse_u64(p, &v) || v < 1 || v > ((uint64_t)1 << 40)) return 0;
        s->dims[nd++] = (int64_t)v;
        if (!sep) break;
        p = sep + 1;
    }
    s->ndim = nd;
    return nd >= 2;
}

static void shape_string(char *buf, size_t size, const shape *s) {
    size_t len = 0;
    buf[0] = '\0';
    for (int k = 0; k < s->ndim && len < size; k++)
        len += (size_t)snprintf(buf + len, size - len, "%s%lld", k ? "x" : "",
                                (long long)s->dims[k]);
}

static dnnl_format_tag_t layout_tag(int layout, int ndim) {
    static const dnnl_format_tag_t tags[LAYOUT_COUNT][MAX_DIMS + 1] = {
        {dnnl_format_tag_undef, dnnl_format_tag_undef, dnnl_ab, dnnl_abc, dnnl_abcd, dnnl_abcde},
        {dnnl_format_tag_undef, dnnl_format_tag_undef, dnnl_ab, dnnl_acb, dnnl_acdb, dnnl_acdeb},
        {dnnl_format_tag_undef, dnnl_format_tag_undef, dnnl_format_tag_undef, dnnl_aBc16b,
         dnnl_aBcd16b, dnnl_aBcde16b},
    };
    return tags[layout][ndim];
}

/* One oneDNN object set for a case; everything is released by case_free. */
typedef struct onednn_case {
    dnnl_primitive_desc_t fwd_pd, pd;
    dnnl_primitive_t fwd, prim;
    dnnl_memory_t mem[16];
    int nmem;
    dnnl_exec_arg_t args[16], fwd_args[16];
    int nargs, nfwd_args;
    const char *impl;
} onednn_case;

static dnnl_engine_t engine;
static dnnl_stream_t stream;

static void case_free(onednn_case *c) {
    if (c->prim) dnnl_primitive_destroy(c->prim);
    if (c->fwd) dnnl_primitive_destroy(c->fwd);
    if (c->pd) dnnl_primitive_desc_destroy(c->pd);
    if (c->fwd_pd) dnnl_primitive_desc_destroy(c->fwd_pd);
    for (int k = 0; k < c->nmem; k++) dnnl_memory_destroy(c->mem[k]);
}

/* the status of the last call that failed in case_init (dnnl_unimplemented: this oneDNN has no
 * implementation of the case on this CPU, as bf16 without AVX-512) */
static dnnl_status_t failed_status;

#define TRY(call)                                                                               \
    do {                                                                                        \
        dnnl_status_t s_ = (call);                                                              \
        if (s_ != dnnl_success) {                                                               \
            snprintf(err, errsize, "%s failed: status %d", #call, (int)s_);                     \
            failed_status = s_;                                                                 \
            return 0;                                                                           \
        }                                                                                       \
    } while (0)

/* A memory object of md, filled with uniform [lo, hi) (or zeros when lo == hi). */
static int new_memory(onednn_case *c, dnnl_memory_t *out, const dnnl_memory_desc_t *md,
                      double lo, double hi, uint64_t seed, char *err, size_t errsize) {
    dnnl_memory_t m;
    TRY(dnnl_memory_create(&m, md, engine, DNNL_MEMORY_ALLOCATE));
    c->mem[c->nmem++] = m;
    void *p;
    TRY(dnnl_memory_get_data_handle(m, &p));
    const size_t bytes = dnnl_memory_desc_get_size(md);
    if (lo == hi) memset(p, 0, bytes);
    else if (md->data_type == dnnl_bf16) fill_bf16(p, bytes / 2, lo, hi, seed);
    else fill(p, bytes / sizeof(float), lo, hi, seed);
    *out = m;
    return 1;
}

static void arg(dnnl_exec_arg_t *args, int *n, int which, dnnl_memory_t m) {
    args[*n].arg = which;
    args[*n].memory = m;
    (*n)++;
}

/* Builds the primitives and memories of a case. @return 1, or 0 with err set. */
static int case_init(onednn_case *c, const shape *s, int layout, int mode, char *err,
                     size_t errsize) {
    dnnl_memory_desc_t data_md, c_md;
    dnnl_dims_t dims, cdims = {s->dims[1]};
    for (int k = 0; k < s->ndim; k++) dims[k] = s->dims[k];
    TRY(dnnl_memory_desc_init_by_tag(&data_md, s->ndim, dims, data_type,
                                     layout_tag(layout, s->ndim)));
    TRY(dnnl_memory_desc_init_by_tag(&c_md, 1, cdims, dnnl_f32, dnnl_a));
    const float eps = 1e-5f;
    unsigned ss = dnnl_use_scale | dnnl_use_shift | (fuse_name ? dnnl_fuse_norm_relu : 0u);

    /* the forward pass of the mode (training for train and backward) */
    dnnl_batch_normalization_desc_t fd;
    TRY(dnnl_batch_normalization_forward_desc_init(
        &fd, mode == MODE_EVAL ? dnnl_forward_inference : dnnl_forward_training, &data_md, eps,
        mode == MODE_EVAL ? ss | dnnl_use_global_stats : ss));
    TRY(dnnl_primitive_desc_create(&c->fwd_pd, &fd, NULL, engine, NULL));
    TRY(dnnl_primitive_create(&c->fwd, c->fwd_pd));

    dnnl_memory_t src, dst, mean, var, scale, shift, ws = NULL;
    if (!new_memory(c, &src, &data_md, -2.0, 3.0, 1, err, errsize) ||
        !new_memory(c, &dst, &data_md, 0, 0, 0, err, errsize) ||
        !new_memory(c, &mean, &c_md, -0.5, 0.5, 5, err, errsize) ||
        !new_memory(c, &var, &c_md, 0.5, 2.0, 6, err, errsize) ||
        !new_memory(c, &scale, &c_md, 0.5, 1.5, 3, err, errsize) ||
        !new_memory(c, &shift, &c_md, -0.5, 0.5, 4, err, errsize))
        return 0;
    const dnnl_memory_desc_t *ws_md =
        dnnl_primitive_desc_query_md(c->fwd_pd, dnnl_query_workspace_md, 0);
    if (ws_md && dnnl_memory_desc_get_size(ws_md) > 0 &&
        !new_memory(c, &ws, ws_md, 0, 0, 0, err, errsize))
        return 0;
    arg(c->fwd_args, &c->nfwd_args, DNNL_ARG_SRC, src);
    arg(c->fwd_args, &c->nfwd_args, DNNL_ARG_DST, dst);
    arg(c->fwd_args, &c->nfwd_args, DNNL_ARG_MEAN, mean);
    arg(c->fwd_args, &c->nfwd_args, DNNL_ARG_VARIANCE, var);
    arg(c->fwd_args, &c->nfwd_args, DNNL_ARG_SCALE, scale);
    arg(c->fwd_args, &c->nfwd_args, DNNL_ARG_SHIFT, shift);
    if (ws) arg(c->fwd_args, &c->nfwd_args, DNNL_ARG_WORKSPACE, ws);

    if (mode != MODE_BACKWARD) {
        c->pd = c->fwd_pd;
        c->prim = c->fwd;
        c->fwd_pd = NULL;
        c->fwd = NULL;
        memcpy(c->args, c->fwd_args, sizeof c->args);
        c->nargs = c->nfwd_args;
    } else {
        dnnl_batch_normalization_desc_t bd;
        TRY(dnnl_batch_normalization_backward_desc_init(&bd, dnnl_backward, &data_md, &data_md,
                                                        eps, ss));
        TRY(dnnl_primitive_desc_create(&c->pd, &bd, NULL, engine, c->fwd_pd));
        TRY(dnnl_primitive_create(&c->prim, c->pd));
        dnnl_memory_t dy, dx, dscale, dshift;
        if (!new_memory(c, &dy, &data_md, -1.0, 1.0, 2, err, errsize) ||
            !new_memory(c, &dx, &data_md, 0, 0, 0, err, errsize) ||
            !new_memory(c, &dscale, &c_md, 0, 0, 0, err, errsize) ||
            !new_memory(c, &dshift, &c_md, 0, 0, 0, err, errsize))
            return 0;
        /* mean and variance of one training pass */
        TRY(dnnl_primitive_execute(c->fwd, stream, c->nfwd_args, c->fwd_args));
        TRY(dnnl_stream_wait(stream));
        arg(c->args, &c->nargs, DNNL_ARG_SRC, src);
        arg(c->args, &c->nargs, DNNL_ARG_MEAN, mean);
        arg(c->args, &c->nargs, DNNL_ARG_VARIANCE, var);
        arg(c->args, &c->nargs, DNNL_ARG_DIFF_DST, dy);
        arg(c->args, &c->nargs, DNNL_ARG_SCALE, scale);
        arg(c->args, &c->nargs, DNNL_ARG_SHIFT, shift); /* 2.6 asks for it with use_shift */
        arg(c->args, &c->nargs, DNNL_ARG_DIFF_SRC, dx);
        arg(c->args, &c->nargs, DNNL_ARG_DIFF_SCALE, dscale);
        arg(c->args, &c->nargs, DNNL_ARG_DIFF_SHIFT, dshift);
        if (ws) arg(c->args, &c->nargs, DNNL_ARG_WORKSPACE, ws);
    }
    c->impl = "?";
    dnnl_primitive_desc_query(c->pd, dnnl_query_impl_info_str, 0, &c->impl);
    return 1;
}

/* inner executions; @return ns per call, or -1 on failure */
static double time_calls(onednn_case *c, int inner) {
    double t0 = now_ns();
    for (int k = 0; k < inner; k++)
        if (dnnl_primitive_execute(c->prim, stream, c->nargs, c->args) != dnnl_success) return -1;
    if (dnnl_stream_wait(stream) != dnnl_success) return -1;
    return (now_ns() - t0) / inner;
}

static int run_case(const shape *s, int layout, int mode, int threads, int repeat_opt) {
    char sh[96], err[512] = "";
    shape_string(sh, sizeof sh, s);
    printf("{\"peer\": \"onednn\", \"shape\": \"%s\", \"layout\": \"%s\", \"mode\": \"%s\", "
           "\"threads\": %d, \"dtype\": \"%s\", ",
           sh, layout_names[layout], mode_names[mode], threads,
           data_type == dnnl_bf16 ? "bf16" : "f32");
    if (fuse_name) printf("\"fuse\": \"%s\", ", fuse_name);
    onednn_case c;
    memset(&c, 0, sizeof c);
    if (!case_init(&c, s, layout, mode, err, sizeof err)) {
        case_free(&c);
        const int none = failed_status == dnnl_unimplemented; /* not a failure of the run */
        printf("\"median_ns\": null, \"%s\": \"%s%s\"}\n", none ? "unsupported" : "error",
               none ? "oneDNN has no implementation of this case on this CPU: " : "", err);
        fflush(stdout);
        return !none;
    }
    /* warm-up: one call, then calls for 20 ms */
    double t = time_calls(&c, 1), t0 = now_ns(), elapsed = 0;
    long calls = 0;
    while (t >= 0 && calls < 1000000 && (calls == 0 || elapsed < 20e6)) {
        t = time_calls(&c, 1);
        calls++;
        elapsed = now_ns() - t0;
    }
    double per_call = elapsed / (double)(calls ? calls : 1);
    int inner = per_call >= SAMPLE_TARGET_NS
                    ? 1
                    : (int)fmin(1e5, floor(SAMPLE_TARGET_NS / fmax(per_call, 1)));
    int repeat = repeat_opt;
    if (!repeat) repeat = (int)fmin(1e5, fmax(5, ceil(CASE_TARGET_NS / fmax(inner * per_call, 1))));
    double *v = malloc(sizeof(double) * (size_t)repeat);
    for (int r = 0; v && t >= 0 && r < repeat; r++) t = v[r] = time_calls(&c, inner);
    if (!v || t < 0) {
        printf("\"median_ns\": null, \"error\": \"execution failed\"}\n");
        free(v);
        case_free(&c);
        return 1;
    }
    qsort(v, (size_t)repeat, sizeof *v, cmp_double);
    double med = repeat % 2 ? v[repeat / 2] : 0.5 * (v[repeat / 2 - 1] + v[repeat / 2]);
    double count = 1;
    for (int k = 0; k < s->ndim; k++) count *= (double)s->dims[k];
    /* counted as `bnorm bench` counts its own: with a ReLU, the backward reads y too (oneDNN
     * reads its workspace's mask instead) */
    const int arrays = (mode == MODE_BACKWARD ? 3 : 2) + (fuse_name && mode == MODE_BACKWARD);
    double bytes = count * (data_type == dnnl_bf16 ? 2 : 4) * arrays;
    const dnnl_version_t *ver = dnnl_version();
    printf("\"median_ns\": %.1f, \"min_ns\": %.1f, \"bytes\": %.0f, \"gbps\": %.3f, "
           "\"roofline_ns\": null, \"roofline_pct\": null, \"repeat\": %d, \"inner\": %d, "
           "\"impl\": \"%s\", \"version\": \"%d.%d.%d\", \"omp_max_threads\": %d}\n",
           med, v[0], bytes, bytes / med, repeat, inner, c.impl, ver->major, ver->minor,
           ver->patch,
#ifdef _OPENMP
           omp_get_max_threads()
#else
           0
#endif
    );
    fflush(stdout);
    free(v);
    case_free(&c);
    return 0;
}

int main(int argc, char **argv) {
    const char *shape_text = NULL, *layout_text = NULL, *mode_text = NULL, *threads_text = NULL,
               *dtype_text = NULL, *repeat_text = NULL, *fuse_text = NULL;
    for (int i = 1; i < argc; i++) {
        const char **slot = NULL;
        if (strcmp(argv[i], "--json") == 0) continue; /* JSON is the only output */
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        }
        if (strcmp(argv[i], "--shape") == 0) slot = &shape_text;
        else if (strcmp(argv[i], "--layout") == 0) slot = &layout_text;
        else if (strcmp(argv[i], "--mode") == 0) slot = &mode_text;
        else if (strcmp(argv[i], "--threads") == 0) slot = &threads_text;
        else if (strcmp(argv[i], "--dtype") == 0) slot = &dtype_text;
        else if (strcmp(argv[i], "--repeat") == 0) slot = &repeat_text;
        else if (strcmp(argv[i], "--fuse") == 0) slot = &fuse_text;
        else return usage_error("unknown argument '%s'", argv[i]);
        if (i + 1 >= argc) return usage_error("%s needs a value", argv[i]);
        *slot = argv[++i];
    }
    shape one;
    if (shape_text && !parse_shape(&one, shape_text))
        return usage_error("--shape: '%s' is not 2 to 5 sizes >= 1 joined by 'x'", shape_text);
    int layout = -1, mode = -1, threads = 0, repeat = 0;
    for (int k = 0; layout_text && k < LAYOUT_COUNT; k++)
        if (strcmp(layout_text, layout_names[k]) == 0) layout = k;
    if (layout_text && layout < 0)
        return usage_error("--layout: '%s' is not nchw, nhwc or nchw16c", layout_text);
    for (int k = 0; mode_text && k < MODE_COUNT; k++)
        if (strcmp(mode_text, mode_names[k]) == 0) mode = k;
    if (mode_text && mode < 0)
        return usage_error("--mode: '%s' is not train, eval or backward", mode_text);
    uint64_t v;
    if (threads_text) {
        if (!parse_u64(threads_text, &v) || v < 1 || v > 1024)
            return usage_error("--threads: '%s' is not an integer from 1 to 1024", threads_text);
        threads = (int)v;
    }
    if (repeat_text) {
        if (!parse_u64(repeat_text, &v) || v < 1 || v > 1000000)
            return usage_error("--repeat: '%s' is not an integer from 1 to 1000000", repeat_text);
        repeat = (int)v;
    }
    if (dtype_text && strcmp(dtype_text, "f32") != 0 && strcmp(dtype_text, "f64") != 0 &&
        strcmp(dtype_text, "bf16") != 0)
        return usage_error("--dtype: '%s' is not f32, f64 or bf16", dtype_text);
    if (dtype_text && strcmp(dtype_text, "bf16") == 0) data_type = dnnl_bf16;

    const shape *shapes = shape_text ? &one : default_grid;
    size_t nshapes = shape_text ? 1 : sizeof default_grid / sizeof default_grid[0];
    int thread_list[2] = {threads ? threads : 1, 2}, nthreads = threads ? 1 : 2;

    if (fuse_text && strcmp(fuse_text, "relu") != 0 && strcmp(fuse_text, "add-relu") != 0)
        return usage_error("--fuse: '%s' is not relu or add-relu", fuse_text);
    const int f64 = dtype_text && strcmp(dtype_text, "f64") == 0;
    const int add = fuse_text && strcmp(fuse_text, "add-relu") == 0;
    if (fuse_text && !add) fuse_name = "relu";
    if (f64 || add) {
        /* what oneDNN cannot do: say so for every case asked for */
        const char *why = f64 ? "oneDNN has no f64 batch normalization"
                              : "oneDNN 2.6 fuses a ReLU into batch normalization, not an add";
        for (size_t k = 0; k < nshapes; k++) {
            char sh[96];
            shape_string(sh, sizeof sh, &shapes[k]);
            for (int m = 0; m < MODE_COUNT; m++)
                for (int t = 0; t < nthreads; t++)
                    if (mode < 0 || m == mode)
                        printf("{\"peer\": \"onednn\", \"shape\": \"%s\", \"layout\": \"%s\", "
                               "\"mode\": \"%s\", \"threads\": %d, \"dtype\": \"%s\", %s%s%s"
                               "\"median_ns\": null, \"unsupported\": \"%s\"}\n",
                               sh, layout >= 0 ? layout_names[layout] : "nchw", mode_names[m],
                               thread_list[t], dtype_text ? dtype_text : "f32",
                               fuse_text ? "\"fuse\": \"" : "", fuse_text ? fuse_text : "",
                               fuse_text ? "\", " : "", why);
        }
        return 0;
    }

    if (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success ||
        dnnl_stream_create(&stream, engine, dnnl_stream_default_flags) != dnnl_success) {
        fprintf(stderr, "onednn_peer: cannot create a CPU engine and stream\n");
        return 1;
    }
    int failed = 0;
    for (size_t k = 0; k < nshapes; k++) {
        const shape *s = &shapes[k];
        for (int l = 0; l < LAYOUT_COUNT; l++) {
            /* (N, C) has one layout, reported as nchw whatever --layout says */
            if (s->ndim == 2 ? l != LAYOUT_NCHW : layout >= 0 && l != layout) continue;
            for (int m = 0; m < MODE_COUNT; m++) {
                if (mode >= 0 && m != mode) continue;
                for (int t = 0; t < nthreads; t++) {
#ifdef _OPENMP
                    omp_set_num_threads(thread_list[t]);
#endif
                    failed |= run_case(s, l, m, thread_list[t], repeat);
                }
            }
        }
    }
    dnnl_stream_destroy(stream);
    dnnl_engine_destroy(engine);
    return failed;
}
