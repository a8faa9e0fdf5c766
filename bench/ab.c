/* ab.c - two builds of libbnorm.so timed against each other in one process, on the same
 * buffers: bench/compare.py's timer.
 *
 *   build/bench_ab BASE.so NEW.so --shape NxC[xHxW...] [--layout nchw|nhwc]
 *                  [--mode train|eval|backward] [--threads T] [--dtype f32|f64|bf16|f16] [--repeat R]
 *
 * Both libraries are opened with RTLD_LOCAL, so each one's calls stay inside it. The case's
 * buffers are made once, as `bnorm bench` makes them; the two builds then take turns on them:
 * repetition r times a batch of calls of one build, then a batch of the other, the one that goes
 * first alternating from repetition to repetition, and each timed batch right after one untimed
 * call of the same build (its data back where that build leaves it). The machine's noise and the
 * pages the tensors landed on are shared by both, which separate processes cannot give. Where
 * the two builds write with different kinds of store, the pairing misleads: each build's calls
 * find the cache the other left (32x512x7x7 training on one thread: a plain build took 349 us
 * beside a streaming one and 246 us alone). Each library decides an open case's store kind by
 * its own trial (src/store_trial.h), so two builds may differ there; compare them in separate
 * processes (`bnorm bench`) when they do.
 * Prints one JSON line: each build's median and minimum ns per call, and the median over the
 * repetitions of the ratio new/base of the two batches timed side by side.
 * Exit: 0, 1 when a library cannot be opened or a call fails, 2 on a usage error. */
#define _POSIX_C_SOURCE 200809L

#include "bnorm.h"
#include "cli.h" /* the command's clock, median and random numbers (cli/timing.c, cli/random.c) */

#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: bench_ab BASE.so NEW.so --shape NxC[xHxW...] [--layout nchw|nhwc]\n"
    "                [--mode train|eval|backward] [--threads T] [--dtype f32|f64|bf16|f16] [--repeat R]\n";

enum { MODE_TRAIN, MODE_EVAL, MODE_BACKWARD };

/* The calls of one build. */
typedef struct build {
    void *handle;
    void (*set_num_threads)(int);
    bn_status (*desc_from_dims)(bn_desc *, int, const int64_t *, bn_dtype, bn_layout);
    bn_status (*forward_train)(void *, double *, double *, void *, void *, int64_t *,
                               const void *, const void *, const void *, const bn_desc *,
                               const bn_options *);
    bn_status (*forward_eval)(void *, const void *, const void *, const void *, const void *,
                              const void *, const bn_desc *, double);
    bn_status (*backward_train)(void *, void *, void *, const void *, const void *,
                                const double *, const double *, const void *, const bn_desc *);
    bn_status (*convert)(void *, bn_dtype, const void *, bn_dtype, int64_t);
} build;

/* The buffers of the case, shared by both builds. */
typedef struct bench_case {
    int mode;
    bn_desc desc;
    bn_options opt;
    void *x, *out, *dy, *weight, *bias, *rmean, *rvar, *dweight, *dbias;
    double *save_mean, *save_invstd;
    int64_t tracked;
} bench_case;

static int open_build(build *b, const char *path) {
    b->handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!b->handle) {
        fprintf(stderr, "bench_ab: %s\n", dlerror());
        return 0;
    }
    /* POSIX: a data pointer from dlsym may be converted to a function pointer */
#define FIND(field, name)                                                                     \
    do {                                                                                      \
        void *sym = dlsym(b->handle, name);                                                  \
        if (!sym) {                                                                           \
            fprintf(stderr, "bench_ab: %s has no %s\n", path, name);                          \
            return 0;                                                                         \
        }                                                                                     \
        memcpy(&b->field, &sym, sizeof sym);                                                  \
    } while (0)
    FIND(set_num_threads, "bn_set_num_threads");
    FIND(desc_from_dims, "bn_desc_from_dims");
    FIND(forward_train, "bn_forward_train");
    FIND(forward_eval, "bn_forward_eval");
    FIND(backward_train, "bn_backward_train");
    FIND(convert, "bn_convert");
#undef FIND
    return 1;
}

static bn_status call(const build *b, bench_case *c) {
    switch (c->mode) {
    case MODE_TRAIN:
        return b->forward_train(c->out, c->save_mean, c->save_invstd, c->rmean, c->rvar,
                                &c->tracked, c->x, c->weight, c->bias, &c->desc, &c->opt);
    case MODE_EVAL:
        return b->forward_eval(c->out, c->x, c->rmean, c->rvar, c->weight, c->bias, &c->desc,
                               c->opt.eps);
    default:
        return b->backward_train(c->out, c->dweight, c->dbias, c->dy, c->x, c->save_mean,
                                 c->save_invstd, c->weight, &c->desc);
    }
}

/* ns per call of `inner` calls; negative when a call failed. */
static double time_calls(const build *b, bench_case *c, int inner) {
    double t0 = cli_now_ns();
    for (int k = 0; k < inner; k++)
        if (call(b, c) != BN_OK) return -1;
    return (cli_now_ns() - t0) / inner;
}

/* n values of dtype from lo + (hi - lo) * uniform[0, 1), each rounded once to dtype by the
 * library's own bn_convert. */
static void *alloc_filled(const build *b, size_t n, size_t esize, bn_dtype dtype, double lo,
                          double hi, uint64_t seed) {
    void *p = aligned_alloc(64, (n * esize + 63) / 64 * 64);
    double *v = malloc(sizeof(double) * (n ? n : 1));
    if (p && v) {
        for (size_t i = 0; i < n; i++) v[i] = lo + (hi - lo) * cli_uniform(&seed);
        if (b->convert(p, dtype, v, BN_FLOAT64, (int64_t)n) != BN_OK) free(p), p = NULL;
    } else {
        free(p), p = NULL;
    }
    free(v);
    return p;
}

static int parse_shape(const char *s, int *ndim, int64_t *dims) {
    *ndim = 0;
    while (*ndim < 5) {
        char *end;
        long long v = strtoll(s, &end, 10);
        if (end == s || v < 1) return 0;
        dims[(*ndim)++] = v;
        if (*end == '\0') return *ndim >= 2;
        if (*end != 'x') return 0;
        s = end + 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return fputs(usage, stderr), 2;
    int ndim = 0, mode = MODE_TRAIN, threads = 1, repeat = 0;
    int64_t dims[5];
    bn_layout layout = BN_CHANNELS_FIRST;
    bn_dtype dtype = BN_FLOAT32;
    for (int i = 3; i < argc; i++) {
        const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!val) return fprintf(stderr, "bench_ab: %s needs a value\n%s", opt, usage), 2;
        i++;
        int ok = 1;
        if (!strcmp(opt, "--shape")) ok = parse_shape(val, &ndim, dims);
        else if (!strcmp(opt, "--layout") && !strcmp(val, "nchw")) layout = BN_CHANNELS_FIRST;
        else if (!strcmp(opt, "--layout") && !strcmp(val, "nhwc")) layout = BN_CHANNELS_LAST;
        else if (!strcmp(opt, "--mode") && !strcmp(val, "train")) mode = MODE_TRAIN;
        else if (!strcmp(opt, "--mode") && !strcmp(val, "eval")) mode = MODE_EVAL;
        else if (!strcmp(opt, "--mode") && !strcmp(val, "backward")) mode = MODE_BACKWARD;
        else if (!strcmp(opt, "--dtype") && !strcmp(val, "f32")) dtype = BN_FLOAT32;
        else if (!strcmp(opt, "--dtype") && !strcmp(val, "f64")) dtype = BN_FLOAT64;
        else if (!strcmp(opt, "--dtype") && !strcmp(val, "bf16")) dtype = BN_BFLOAT16;
        else if (!strcmp(opt, "--dtype") && !strcmp(val, "f16")) dtype = BN_FLOAT16;
        else if (!strcmp(opt, "--threads")) ok = (threads = atoi(val)) >= 1 && threads <= 1024;
        else if (!strcmp(opt, "--repeat")) ok = (repeat = atoi(val)) >= 1 && repeat <= 100000;
        else ok = 0;
        if (!ok) return fprintf(stderr, "bench_ab: bad %s %s\n%s", opt, val, usage), 2;
    }
    if (ndim == 0) return fprintf(stderr, "bench_ab: --shape is required\n%s", usage), 2;

    build builds[2];
    if (!open_build(&builds[0], argv[1]) || !open_build(&builds[1], argv[2])) return 1;
    bench_case c = {.mode = mode, .opt = BN_OPTIONS_DEFAULT};
    if (builds[0].desc_from_dims(&c.desc, ndim, dims, dtype, layout) != BN_OK)
        return fprintf(stderr, "bench_ab: the shape is refused\n"), 2;
    size_t es = dtype == BN_FLOAT32 ? 4 : dtype == BN_FLOAT64 ? 8 : 2, cc = (size_t)c.desc.c;
    size_t count = (size_t)(c.desc.n * c.desc.c * c.desc.s);
    c.x = alloc_filled(&builds[0], count, es, dtype, -2, 3, 1);
    c.out = alloc_filled(&builds[0], count, es, dtype, 0, 0, 0); /* every output page touched */
    c.dy = mode == MODE_BACKWARD ? alloc_filled(&builds[0], count, es, dtype, -1, 1, 2) : NULL;
    c.weight = alloc_filled(&builds[0], cc, es, dtype, 0.5, 1.5, 3);
    c.bias = alloc_filled(&builds[0], cc, es, dtype, -0.5, 0.5, 4);
    c.rmean = alloc_filled(&builds[0], cc, es, dtype, -0.5, 0.5, 5);
    c.rvar = alloc_filled(&builds[0], cc, es, dtype, 0.5, 2.0, 6);
    c.dweight = alloc_filled(&builds[0], cc, es, dtype, 0, 0, 0);
    c.dbias = alloc_filled(&builds[0], cc, es, dtype, 0, 0, 0);
    c.save_mean = alloc_filled(&builds[0], cc, 8, BN_FLOAT64, 0, 0, 0);
    c.save_invstd = alloc_filled(&builds[0], cc, 8, BN_FLOAT64, 0, 0, 0);
    if (!c.x || !c.out || (mode == MODE_BACKWARD && !c.dy) || !c.weight || !c.bias || !c.rmean ||
        !c.rvar || !c.dweight || !c.dbias || !c.save_mean || !c.save_invstd)
        return fprintf(stderr, "bench_ab: out of memory\n"), 1;
    for (int b = 0; b < 2; b++) builds[b].set_num_threads(threads);
    if (mode == MODE_BACKWARD &&
        builds[0].forward_train(c.out, c.save_mean, c.save_invstd, NULL, NULL, NULL, c.x,
                                c.weight, c.bias, &c.desc, &c.opt) != BN_OK)
        return fprintf(stderr, "bench_ab: the forward pass failed\n"), 1;

    /* warm-up: 20 ms of each, which also gives the time per call */
    double per_call = 0;
    for (int b = 0; b < 2; b++) {
        double t0 = cli_now_ns(), t;
        long calls = 0;
        do {
            if (time_calls(&builds[b], &c, 1) < 0)
                return fprintf(stderr, "bench_ab: a call failed\n"), 1;
            calls++;
        } while ((t = cli_now_ns() - t0) < 20e6 && calls < 1000000);
        per_call = fmax(per_call, t / (double)calls);
    }
    double k = floor(1e5 / fmax(per_call, 1)); /* batches of about 100 us */
    int inner = k < 1 ? 1 : k > 100000 ? 100000 : (int)k;
    if (repeat == 0) { /* about 0.8 s per case */
        double r = ceil(8e8 / (2 * (inner + 1) * fmax(per_call, 1)));
        repeat = r < 5 ? 5 : r > 100000 ? 100000 : (int)r;
    }
    double *t[2], *ratio = malloc(sizeof(double) * (size_t)repeat);
    t[0] = malloc(sizeof(double) * (size_t)repeat);
    t[1] = malloc(sizeof(double) * (size_t)repeat);
    if (!ratio || !t[0] || !t[1]) return fprintf(stderr, "bench_ab: out of memory\n"), 1;
    for (int r = 0; r < repeat; r++) {
        for (int half = 0; half < 2; half++) {
            int b = (r + half) % 2;
            if (time_calls(&builds[b], &c, 1) < 0 ||
                (t[b][r] = time_calls(&builds[b], &c, inner)) < 0)
                return fprintf(stderr, "bench_ab: a call failed\n"), 1;
        }
        ratio[r] = t[1][r] / t[0][r];
    }
    double ratio_median = cli_median(ratio, repeat);
    double base_median = cli_median(t[0], repeat), new_median = cli_median(t[1], repeat);
    printf("{\"base_median_ns\": %.1f, \"base_min_ns\": %.1f, \"new_median_ns\": %.1f, "
           "\"new_min_ns\": %.1f, \"paired_ratio\": %.4f, \"repeat\": %d, \"inner\": %d}\n",
           base_median, t[0][0], new_median, t[1][0], ratio_median, repeat, inner);
    return 0;
}
