/* bench_case.c - one case of `bnorm bench`: its buffers (64-byte aligned, filled with random
 * values, every output page touched before timing), the library's call for its mode, and the
 * timing: both kernels warmed up, then timed alternately, each timed batch right after
 * UNTIMED_CALLS untimed calls of the same kernel. */
#include "bench.h"
#include "machine.h" /* the library's machine facts and plan: the bench reports them */
#include "plan.h"
#include "store_trial.h"
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fills n values of dtype with lo + (hi - lo) * uniform[0, 1). */
static void fill(void *p, size_t n, bn_dtype dtype, double lo, double hi, uint64_t seed) {
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++)
        cli_store(p, dtype, (int64_t)i, lo + (hi - lo) * cli_uniform(&s));
}

/* 64-byte aligned, of at least nbytes (at least 64); NULL when out of memory. */
static void *alloc64(size_t nbytes) {
    size_t rounded = (nbytes + 63) / 64 * 64;
    if (rounded < nbytes) return NULL;
    return aligned_alloc(64, rounded ? rounded : 64);
}

/* The buffers and arguments of one case. */
typedef struct bench_ctx {
    bench_case bc;
    bn_desc desc;
    bn_options opt;
    ptrdiff_t count;
    ptrdiff_t roof_count;               /* values of roof_dtype that move the case's bytes */
    bn_dtype roof_dtype;                /* the roofline's: the case's, float32 for 16-bit */
    void *x, *out, *dy;                 /* out is y or dx */
    void *z, *y, *dz;                   /* --fuse: add-relu's z and dz, the backward's y */
    void *weight, *bias, *rmean, *rvar, *dweight, *dbias;
    double *save_mean, *save_invstd;
    int64_t tracked;
    int roof_kind;                      /* ROOF_STORE, ROOF_NT128 or ROOF_NT512 */
} bench_ctx;

/* One call of the library for the case's mode. */
static bn_status call_ours(bench_ctx *c) {
    if (c->bc.fuse) {
        switch (c->bc.mode) {
        case BENCH_TRAIN:
            return bn_forward_train_relu(c->out, c->save_mean, c->save_invstd, c->rmean, c->rvar,
                                         &c->tracked, c->x, c->z, c->weight, c->bias, &c->desc,
                                         &c->opt);
        case BENCH_EVAL:
            return bn_forward_eval_relu(c->out, c->x, c->z, c->rmean, c->rvar, c->weight,
                                        c->bias, &c->desc, c->opt.eps);
        default:
            return bn_backward_train_relu(c->out, c->dz, c->dweight, c->dbias, c->dy, c->y, c->x,
                                          c->save_mean, c->save_invstd, c->weight, &c->desc);
        }
    }
    switch (c->bc.mode) {
    case BENCH_TRAIN:
        return bn_forward_train(c->out, c->save_mean, c->save_invstd, c->rmean, c->rvar,
                                &c->tracked, c->x, c->weight, c->bias, &c->desc, &c->opt);
    case BENCH_EVAL:
        return bn_forward_eval(c->out, c->x, c->rmean, c->rvar, c->weight, c->bias, &c->desc,
                               c->opt.eps);
    default:
        return bn_backward_train(c->out, c->dweight, c->dbias, c->dy, c->x, c->save_mean,
                                 c->save_invstd, c->weight, &c->desc);
    }
}

/* One call of the roofline kernel for the case's mode, on its threads. */
static void call_roofline(bench_ctx *c) {
    if (c->bc.mode == BENCH_BACKWARD)
        bench_roofline_backward(c->roof_kind, c->roof_dtype, c->out, c->dy, c->x, c->roof_count,
                                c->bc.threads);
    else
        bench_roofline_forward(c->roof_kind, c->roof_dtype, c->out, c->x, c->roof_count,
                               c->bc.threads);
}

/* Runs `inner` calls of ours (which = 0) or the roofline (which = 1).
 * @return the time per call in ns, or a negative value when the library failed (*st set). */
static double time_calls(bench_ctx *c, int which, int inner, bn_status *st) {
    double t0 = cli_now_ns();
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
    return (cli_now_ns() - t0) / inner;
}

/* Warms up and estimates the time per call: one untimed call, then calls until 20 ms have
 * passed (at least one, at most a million). @return ns per call, negative on a library error. */
static double warm_up(bench_ctx *c, int which, bn_status *st) {
    if (time_calls(c, which, 1, st) < 0) return -1;
    double t0 = cli_now_ns(), elapsed = 0;
    long calls = 0;
    while (calls < 1000000 && (calls == 0 || elapsed < 20e6)) {
        if (time_calls(c, which, 1, st) < 0) return -1;
        calls++;
        elapsed = cli_now_ns() - t0;
    }
    return elapsed / (double)calls;
}

enum { SAMPLE_TARGET_NS = 100000 };     /* a batch of short calls lasts about 100 us */
/* Calls of a kernel before each of its timed batches, after the other kernel's. With one, a
 * library call with plain stores sometimes still found the cache the roofline's streaming
 * stores had left: 32x512x7x7 eval on one thread (Intel Xeon, 2 MiB L2) had medians of 264, 265
 * and 218 us in three runs, its minimum 210-217 us; with two, 217-219 us in every run, and the
 * roofline's time did not move (208-214 us). PyTorch's and oneDNN's calls are timed one after
 * another, with no other kernel between them. */
enum { UNTIMED_CALLS = 2 };
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
        if (!bench_roofline_available(kind)) continue;
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
        double per_rep = (inner + UNTIMED_CALLS) * t_ours + (roof_inner + UNTIMED_CALLS) * t_roof;
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
         * batch follows untimed calls of the same kernel: the other kernel splits the work over
         * the threads differently and stores in its own way, and its cache lines would
         * otherwise sit in the wrong core's cache, a state no program calling one kernel
         * repeatedly is in. */
        for (int half = 0; half < 2; half++) {
            int which = (r + half) % 2;
            if (time_calls(c, which, UNTIMED_CALLS, &st) < 0) break;
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
    res->median_ns = cli_median(ours, repeat);
    res->min_ns = ours[0];
    res->roofline_ns = cli_median(roof, repeat);
    res->roofline_min_ns = roof[0];
    res->repeat = repeat;
    res->inner = inner;
    res->roofline_inner = roof_inner;
    res->roofline_kind = bench_roofline_name(best);
    free(ours);
    free(roof);
    return CLI_OK;
}

void bench_plan(const bench_case *bc, char *buf, size_t size) {
    buf[0] = '\0';
    bn_desc desc;
    if (bn_desc_from_dims(&desc, bc->shape.ndim, bc->shape.dims, bc->dtype, bc->shape.layout) !=
        BN_OK)
        return;
    /* the first pass reads x, or dy and x; eval has none */
    const int reads = bc->mode == BENCH_EVAL ? 0 : bc->mode == BENCH_BACKWARD ? 2 : 1;
    bn_plan plan;
    if (bn_plan_for(&plan, &desc, reads, bn_machine_this(), bc->threads) == BN_OK)
        bn_plan_describe(&plan, buf, size);
}

void bench_machine(char *buf, size_t size) {
    char model[128] = "an unknown CPU", line[256];
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof line, f)) {
        const char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) || !colon) continue;
        snprintf(model, sizeof model, "%s", colon + 1 + (colon[1] == ' '));
        model[strcspn(model, "\n")] = '\0';
        break;
    }
    if (f) fclose(f);
    const bn_machine m = bn_machine_this();
    snprintf(buf, size, "%s; caches as Linux reports them: L2 %lld KiB, L3 %lld KiB (the plan uses "
             "the L2 only; where its size rules leave the store kind open, each case's first %d "
             "calls time both kinds)", model, (long long)(m.l2 >> 10), (long long)(m.l3 >> 10),
             BN_TRIAL_CALLS);
}

int bench_run_case(const bench_case *bc, int repeat, bench_result *res) {
    char name[160], shape[96];
    bench_shape_string(shape, sizeof shape, &bc->shape);
    snprintf(name, sizeof name, "%s %s %s", shape,
             bc->shape.layout == BN_CHANNELS_LAST ? "nhwc" : "nchw", bench_mode_names[bc->mode]);

    bench_ctx c;
    memset(&c, 0, sizeof c);
    c.bc = *bc;
    bn_options opt = BN_OPTIONS_DEFAULT;
    c.opt = opt;
    bn_status st = bn_desc_from_dims(&c.desc, bc->shape.ndim, bc->shape.dims, bc->dtype,
                                     bc->shape.layout);
    if (st != BN_OK) return cli_fail("bench", "%s: %s", name, bn_status_string(st));
    /* 16-bit tensors have float32 parameters (mixed precision, as torch.autocast runs them) */
    const int half = bc->dtype == BN_BFLOAT16 || bc->dtype == BN_FLOAT16;
    if (half) c.desc.params = BN_PARAMS_FLOAT32;
    const bn_dtype pdt = half ? BN_FLOAT32 : bc->dtype;
    size_t esize = cli_dtype_size(bc->dtype), psize = cli_dtype_size(pdt);
    size_t count = (size_t)(c.desc.n * c.desc.c * c.desc.s), cc = (size_t)c.desc.c;
    if (count > (size_t)PTRDIFF_MAX / esize) return cli_fail("bench", "%s: too large", name);
    c.count = (ptrdiff_t)count;
    /* the floor moves the same bytes: 16-bit tensors as half as many float32 values */
    c.roof_dtype = pdt;
    c.roof_count = half ? (ptrdiff_t)((count + 1) / 2) : c.count;
    size_t nbytes = count * esize;
    int backward = bc->mode == BENCH_BACKWARD;

    c.x = alloc64(nbytes + 2);
    c.out = alloc64(nbytes + 2);
    c.dy = backward ? alloc64(nbytes + 2) : NULL;
    const int add = bc->fuse == BENCH_FUSE_ADD_RELU;
    c.z = add ? alloc64(nbytes) : NULL;
    c.dz = add && backward ? alloc64(nbytes) : NULL;
    c.y = bc->fuse && backward ? alloc64(nbytes) : NULL;
    c.weight = alloc64(cc * psize);
    c.bias = alloc64(cc * psize);
    c.rmean = alloc64(cc * psize);
    c.rvar = alloc64(cc * psize);
    c.dweight = alloc64(cc * psize);
    c.dbias = alloc64(cc * psize);
    c.save_mean = alloc64(cc * sizeof(double));
    c.save_invstd = alloc64(cc * sizeof(double));
    int status = CLI_OK;
    if (!c.x || !c.out || (backward && !c.dy) || !c.weight || !c.bias || !c.rmean || !c.rvar ||
        !c.dweight || !c.dbias || !c.save_mean || !c.save_invstd || (add && !c.z) ||
        (add && backward && !c.dz) || (bc->fuse && backward && !c.y)) {
        status = cli_fail("bench", "%s: out of memory (%zu bytes per tensor)", name, nbytes);
        goto done;
    }
    fill(c.x, count, bc->dtype, -2.0, 3.0, 1);
    memset((char *)c.x + nbytes, 0, 2); /* the roofline's last float of an odd 16-bit count */
    if (backward) fill(c.dy, count, bc->dtype, -1.0, 1.0, 2), memset((char *)c.dy + nbytes, 0, 2);
    fill(c.weight, cc, pdt, 0.5, 1.5, 3);
    fill(c.bias, cc, pdt, -0.5, 0.5, 4);
    fill(c.rmean, cc, pdt, -0.5, 0.5, 5);
    fill(c.rvar, cc, pdt, 0.5, 2.0, 6);
    if (add) fill(c.z, count, bc->dtype, -1.0, 1.0, 7);
    if (c.dz) memset(c.dz, 0, nbytes);
    memset(c.out, 0, nbytes + 2); /* every output page is touched before timing */
    memset(c.dweight, 0, cc * psize);
    memset(c.dbias, 0, cc * psize);

    bn_set_num_threads(bc->threads);
    if (backward) {
        /* the saved statistics of one training forward pass (out serves as its y) */
        st = bc->fuse ? bn_forward_train_relu(c.y, c.save_mean, c.save_invstd, NULL, NULL, NULL,
                                              c.x, c.z, c.weight, c.bias, &c.desc, &c.opt)
                      : bn_forward_train(c.out, c.save_mean, c.save_invstd, NULL, NULL, NULL,
                                         c.x, c.weight, c.bias, &c.desc, &c.opt);
        if (st != BN_OK) {
            status = cli_fail("bench", "%s: %s", name, bn_status_string(st));
            goto done;
        }
    }
    status = measure(&c, repeat, res, name);
    bench_plan(bc, res->plan, sizeof res->plan); /* after the calls: an open case decided */
    res->tensor_bytes = (double)nbytes;
    /* tensors read and written: x, y (+ z); dy, x, dx (+ y for the mask, + dz) */
    res->bytes = (double)nbytes * ((backward ? 3 : 2) + (bc->fuse && backward) + add);
done:
    free(c.x);
    free(c.out);
    free(c.dy);
    free(c.z);
    free(c.dz);
    free(c.y);
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

