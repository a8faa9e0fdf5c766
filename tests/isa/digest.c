/* digest.c - prints a hash of every output, statistic and gradient bnorm gives on a fixed grid
 * of cases, one line per case: the fused calls, eval, backward and the stage API of a batch split
 * in two pieces, batch norm with add + ReLU and with ReLU, and the conventions (renorm with ghost
 * batches, stored statistics), for float32, float64, and bfloat16 and float16 with parameters of
 * their own type and float32 ones. `make isa-check` runs it with each kernel set the CPU has
 * (AVX-512, AVX2, the x86-64 baseline) and builds it again for the baseline only
 * (-DBN_NO_CLONES), and the listings must be identical: the same bits on every machine, not only
 * for every thread count. */
#include "bnorm.h"
#include "kernels.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* FNV-1a, 64 bits, over n bytes, continuing from h. */
static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * UINT64_C(1099511628211);
    return h;
}

static size_t size_of(bn_dtype t) { return t == BN_FLOAT64 ? 8 : t == BN_FLOAT32 ? 4 : 2; }

static bn_dtype param_dtype(const bn_desc *d) {
    return d->params == BN_PARAMS_FLOAT32 ? BN_FLOAT32 : d->dtype;
}

/* "f32", "f64", "bf16", "f16", and " params f32" after a 16-bit type with float32 parameters. */
static const char *type_name(const bn_desc *d) {
    static const char *const names[2][4] = {{"f32", "f64", "bf16", "f16"},
                                            {"f32", "f64", "bf16 params f32", "f16 params f32"}};
    return names[d->params == BN_PARAMS_FLOAT32][d->dtype];
}

/* One case: x ~ N(5 * xscale, 3 * xscale), dy ~ N(0, dyscale); returns the calls' statuses. */
static int digest_case(const bn_desc *dp, uint64_t seed, double xscale, double dyscale) {
    const bn_desc d = *dp;
    const int64_t count = tu_numel(&d), C = d.c;
    const bn_dtype pt = param_dtype(&d);
    const size_t big = (size_t)count * size_of(d.dtype), small = (size_t)C * size_of(pt);
    const size_t es = size_of(d.dtype); /* bytes per tensor value */
    tu_rng r = tu_rng_new(seed);
    double *xv = tu_randn(&r, count, 5 * xscale, 3 * xscale), *gv = tu_randn(&r, count, 0, dyscale);
    double *wv = tu_randn(&r, C, 1, 0.2), *bv = tu_randn(&r, C, 0, 1);
    double *ones = tu_randn(&r, C, 1, 0);
    void *x = tu_to_dtype(xv, count, d.dtype), *dy = tu_to_dtype(gv, count, d.dtype);
    void *w = tu_to_dtype(wv, C, pt), *b = tu_to_dtype(bv, C, pt);
    void *rm = calloc((size_t)C, size_of(pt)), *rv = tu_to_dtype(ones, C, pt);
    void *y = malloc(big), *dx = malloc(big), *dw = malloc(small), *db = malloc(small);
    double *sm = malloc(sizeof(double) * (size_t)C), *si = malloc(sizeof(double) * (size_t)C);
    int64_t nbt = 0;
    bn_options opt = BN_OPTIONS_DEFAULT;
    uint64_t h = UINT64_C(14695981039346656037);
    int st = bn_forward_train(y, sm, si, rm, rv, &nbt, x, w, b, &d, &opt);
    h = fnv(fnv(fnv(fnv(fnv(h, y, big), sm, (size_t)C * 8), si, (size_t)C * 8), rm, small), rv, small);
    st |= bn_backward_train(dx, dw, db, dy, x, sm, si, w, &d);
    h = fnv(fnv(fnv(h, dx, big), dw, small), db, small);
    st |= bn_forward_eval(y, x, rm, rv, w, b, &d, 1e-5);
    h = fnv(h, y, big);
    st |= bn_backward_eval(dx, dw, db, dy, x, rm, rv, w, &d, 1e-5);
    h = fnv(fnv(fnv(h, dx, big), dw, small), db, small);
    /* the stage API of a split batch: the batch as two pieces along N (the second may be empty) */
    bn_moments *mom = malloc(sizeof(bn_moments) * (size_t)C), *part = malloc(sizeof(bn_moments) * (size_t)C);
    double *sdy = malloc(sizeof(double) * (size_t)C), *sxh = malloc(sizeof(double) * (size_t)C);
    double *pdy = malloc(sizeof(double) * (size_t)C), *pxh = malloc(sizeof(double) * (size_t)C);
    bn_desc first = d, second = d;
    first.n = d.n / 2 + 1;
    second.n = d.n - first.n;
    const size_t first_bytes = (size_t)tu_numel(&first) * es;
    const char *x2 = (const char *)x + first_bytes, *dy2 = (const char *)dy + first_bytes;
    st |= bn_compute_moments(mom, x, &first);
    h = fnv(h, mom, sizeof(bn_moments) * (size_t)C);
    st |= bn_compute_moments(part, x2, &second);
    st |= bn_merge_moments(mom, part, C);
    h = fnv(h, mom, sizeof(bn_moments) * (size_t)C);
    int64_t nbt2 = 3;
    opt.cumulative = 1;
    st |= bn_forward_train_stats(y, sm, si, rm, rv, &nbt2, x, w, b, mom, &first, &opt);
    st |= bn_forward_train_stats((char *)y + first_bytes, sm, si, NULL, NULL, NULL, x2, w, b, mom,
                                 &second, &opt);
    h = fnv(fnv(fnv(fnv(fnv(h, y, big), sm, (size_t)C * 8), si, (size_t)C * 8), rm, small), rv, small);
    st |= bn_backward_sums(sdy, sxh, dy, x, sm, si, &first);
    h = fnv(fnv(h, sdy, (size_t)C * 8), sxh, (size_t)C * 8);
    st |= bn_backward_sums(pdy, pxh, dy2, x2, sm, si, &second);
    for (int64_t c = 0; c < C; c++) sdy[c] += pdy[c], sxh[c] += pxh[c];
    st |= bn_backward_train_sums(dx, dy, x, sm, si, w, sdy, sxh, tu_numel(&d) / C, &first);
    st |= bn_backward_train_sums((char *)dx + first_bytes, dy2, x2, sm, si, w, sdy, sxh,
                                 tu_numel(&d) / C, &second);
    h = fnv(h, dx, big);
    /* fused with add + ReLU (z: dy's values), and the backward through its mask */
    st |= bn_forward_train_relu(y, sm, si, NULL, NULL, NULL, x, dy, w, b, &d, &opt);
    h = fnv(h, y, big);
    st |= bn_backward_train_relu(dx, NULL, dw, db, dy, y, x, sm, si, w, &d);
    h = fnv(fnv(fnv(h, dx, big), dw, small), db, small);
    st |= bn_forward_eval_relu(y, x, NULL, rm, rv, w, b, &d, 1e-5);
    h = fnv(h, y, big);
    free(mom), free(part), free(sdy), free(sxh), free(pdy), free(pxh);
    printf("%lldx%lldx%lld %s %s", (long long)d.n, (long long)C, (long long)d.s, type_name(&d),
           d.layout == BN_CHANNELS_LAST ? "channels-last" : "channels-first");
    if (xscale != 1 || dyscale != 1) printf(" x*%g dy*%g", xscale, dyscale);
    printf(" status %d digest %016llx\n", st, (unsigned long long)h);
    free(xv), free(gv), free(wv), free(bv), free(ones), free(x), free(dy), free(w), free(b);
    free(rm), free(rv), free(y), free(dx), free(dw), free(db), free(sm), free(si);
    return st;
}

/* The conventions on one case: Keras's renorm with ghost batches (half the batch, when n is
 * even), forward and backward; then stored statistics with an ONNX update, and its backward. */
static int digest_conventions(const bn_desc *dp, uint64_t seed) {
    const bn_desc d = *dp;
    const int64_t count = tu_numel(&d), C = d.c, G = d.n % 2 == 0 && d.n > 2 ? 2 : 1;
    const bn_dtype pt = param_dtype(&d);
    const size_t big = (size_t)count * size_of(d.dtype), small = (size_t)C * size_of(pt);
    const size_t saved = sizeof(double) * (size_t)(G * C);
    tu_rng r = tu_rng_new(seed);
    double *xv = tu_randn(&r, count, 2, 3), *gv = tu_randn(&r, count, 0, 1);
    double *wv = tu_randn(&r, C, 1, 0.2), *bv = tu_randn(&r, C, 0, 1), *sv = tu_randn(&r, C, 2, 0.3);
    void *x = tu_to_dtype(xv, count, d.dtype), *dy = tu_to_dtype(gv, count, d.dtype);
    void *w = tu_to_dtype(wv, C, pt), *b = tu_to_dtype(bv, C, pt);
    void *rm = tu_to_dtype(bv, C, pt), *rv = tu_to_dtype(sv, C, pt);
    void *ms = tu_to_dtype(sv, C, pt), *ren_m = tu_to_dtype(wv, C, pt);
    void *ren_s = tu_to_dtype(sv, C, pt);
    void *y = malloc(big), *dx = malloc(big), *dw = malloc(small), *db = malloc(small);
    double *sm = malloc(saved), *si = malloc(saved), *rr = malloc(saved), *dd = malloc(saved);
    bn_options opt = BN_OPTIONS_KERAS;
    opt.virtual_batch = G > 1 ? d.n / G : 0;
    opt.rmin = 0.5, opt.rmax = 1.5, opt.dmax = 0.25;
    uint64_t h = UINT64_C(14695981039346656037);
    int st = bn_forward_train_renorm(y, sm, si, rr, dd, rm, rv, ms, ren_m, ren_s, NULL, x, w, b,
                                     &d, &opt);
    h = fnv(fnv(fnv(fnv(fnv(h, y, big), sm, saved), si, saved), rr, (size_t)C * 8), dd, (size_t)C * 8);
    h = fnv(fnv(fnv(fnv(fnv(h, rm, small), rv, small), ms, small), ren_m, small), ren_s, small);
    st |= bn_backward_renorm(dx, dw, db, dy, x, sm, si, rr, dd, w, &d, &opt);
    h = fnv(fnv(fnv(h, dx, big), dw, small), db, small);
    bn_options onnx = BN_OPTIONS_ONNX;
    onnx.flags |= BN_STORED_STATS;
    st |= bn_forward_train(y, sm, si, rm, rv, NULL, x, w, b, &d, &onnx);
    h = fnv(fnv(fnv(fnv(fnv(h, y, big), sm, (size_t)C * 8), si, (size_t)C * 8), rm, small), rv, small);
    st |= bn_backward(dx, dw, db, dy, x, sm, si, w, &d, &onnx);
    h = fnv(fnv(fnv(h, dx, big), dw, small), db, small);
    printf("%lldx%lldx%lld %s %s conventions status %d digest %016llx\n", (long long)d.n,
           (long long)C, (long long)d.s, type_name(&d),
           d.layout == BN_CHANNELS_LAST ? "channels-last" : "channels-first", st,
           (unsigned long long)h);
    free(xv), free(gv), free(wv), free(bv), free(sv), free(x), free(dy), free(w), free(b);
    free(rm), free(rv), free(ms), free(ren_m), free(ren_s), free(y), free(dx), free(dw), free(db);
    free(sm), free(si), free(rr), free(dd);
    return st;
}

/* `digest [SET]`: with the kernels of SET (avx512f, avx2, x86-64) where this CPU has it; exit
 * status 2, printing nothing, where it does not. */
int main(int argc, char **argv) {
    if (argc > 1 && !bn_kernel_force_isa(argv[1])) {
        fprintf(stderr, "digest: this CPU or build has no %s kernels\n", argv[1]);
        return 2;
    }
    /* (N, C, S): narrow and wide channel groups, short and long rows, channel tiles, a
     * 20 MB tensor (streamed stores where the machine has them) */
    static const int64_t shapes[][3] = {{20, 2, 1},   {256, 1024, 1}, {16, 37, 301}, {3, 19, 2048},
                                        {32, 64, 49}, {4, 300, 30},  {2, 5, 524288}};
    int failures = 0;
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
        for (int v = 0; v < 6; v++) /* f32, f64, then bf16 and f16 with their own parameters and
                                     * with float32 ones */
            for (int lay = 0; lay < 2; lay++) {
                static const bn_dtype types[6] = {BN_FLOAT32, BN_FLOAT64, BN_BFLOAT16,
                                                  BN_BFLOAT16, BN_FLOAT16, BN_FLOAT16};
                bn_desc d = tu_desc(shapes[k][0], shapes[k][1], shapes[k][2], types[v], (bn_layout)lay);
                d.params = v == 3 || v == 5 ? BN_PARAMS_FLOAT32 : BN_PARAMS_AS_TENSOR;
                failures += digest_case(&d, 4242 + k, 1, 1) != 0;
                if (shapes[k][2] < 100000) failures += digest_conventions(&d, 5252 + k) != 0;
            }
    /* float64 near the top of the range: block sums that overflow (summed again scaled),
     * variances that overflow, gradient sums that overflow */
    static const double scales[][2] = {{1e151, 1}, {1e154, 1e306}, {1e300, 1e300}};
    for (size_t k = 0; k < sizeof scales / sizeof scales[0]; k++)
        for (int lay = 0; lay < 2; lay++) {
            bn_desc d = tu_desc(16, 37, 301, BN_FLOAT64, (bn_layout)lay);
            failures += digest_case(&d, 4300 + k, scales[k][0], scales[k][1]) != 0;
        }
    return failures != 0;
}
