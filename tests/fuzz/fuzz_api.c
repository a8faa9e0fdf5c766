/* fuzz_api.c - libFuzzer target for the public C API: shapes, flags, pointers and values all
 * come from the fuzzer. Invariants checked on every call:
 *   - the status is OK exactly when no argument is wrong, and otherwise names one of the
 *     wrong arguments (an independent oracle computes which, with 128-bit size arithmetic);
 *   - on failure nothing is written: every output buffer, running statistic and counter keeps
 *     its sentinel; inputs are never written;
 *   - with finite inputs of moderate size and eps > 0, the whole chain (train forward, backward,
 *     eval forward, backward) succeeds with finite outputs, and in-place calls give the same bits,
 *     and so do the stages of a split batch on one piece (moments, then forward with them; sums,
 *     then backward with them);
 *   - the conventions' chain (presets, ghost batches, frozen choices, renorm) succeeds exactly
 *     when the arguments allow, with finite outputs and repeatable bits;
 *   - bn_check_finite finds the first NaN or infinity where a plain scan does.
 * ASan and UBSan watch every read and write. */
#include "bnorm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_ELEMS = 4096, MAX_C = 64 };

/* The fuzzer's bytes, consumed from the front; zeros once they run out. */
typedef struct { const uint8_t *p; size_t n; } bytes;

static uint64_t take(bytes *b, int k) {
    uint64_t v = 0;
    for (int i = 0; i < k; i++) {
        v = v << 8 | (b->n ? *b->p : 0);
        if (b->n) b->p++, b->n--;
    }
    return v;
}

/* A size: mostly small, sometimes negative, huge or any 64 bits. */
static int64_t take_size(bytes *b, int64_t small) {
    uint8_t kind = (uint8_t)take(b, 1);
    switch (kind % 8) {
    case 0: return -(int64_t)take(b, 1);
    case 1: return INT64_C(1) << (take(b, 1) % 63);
    case 2: return INT64_MAX - (int64_t)(take(b, 1) % 4);
    case 3: return (int64_t)take(b, 8);
    default: return (int64_t)(take(b, 1) % (uint64_t)(small + 1));
    }
}

static double take_scalar(bytes *b, double usual) {
    uint8_t kind = (uint8_t)take(b, 1);
    switch (kind % 8) {
    case 0: return -usual;
    case 1: return NAN;
    case 2: return kind & 8 ? INFINITY : -INFINITY;
    case 3: return 0.0;
    case 4: return 1.0 + (kind >> 4) / 16.0;
    case 5: {
        uint64_t bits = take(b, 8);
        double d;
        memcpy(&d, &bits, 8);
        return d;
    }
    case 6: return ldexp(1.0, -(int)(take(b, 1) % 1100)); /* down to subnormals and 0 */
    default: return usual;
    }
}

static void die(const char *what) {
    fprintf(stderr, "fuzz_api: invariant broken: %s\n", what);
    abort();
}

__extension__ typedef __int128 i128;

static size_t esize(bn_dtype dt) { return dt == BN_FLOAT64 ? 8 : dt == BN_FLOAT32 ? 4 : 2; }

/* The four element types, and a fifth value none of them. */
static int known_dtype(bn_dtype dt) { return (unsigned)dt <= BN_FLOAT16; }

/* Element k of p (of dt) as a double, and a double stored there (rounded once). */
static double load_value(const void *p, int64_t k, bn_dtype dt) {
    double v;
    bn_convert(&v, BN_FLOAT64, (const char *)p + k * (int64_t)esize(dt), dt, 1);
    return v;
}
static void store_value(void *p, int64_t k, bn_dtype dt, double v) {
    bn_convert((char *)p + k * (int64_t)esize(dt), dt, &v, BN_FLOAT64, 1);
}

/* The status a descriptor deserves, computed independently with 128-bit arithmetic. */
static bn_status desc_oracle(int64_t n, int64_t c, int64_t s, bn_dtype dt, bn_layout lay) {
    if (!known_dtype(dt) || (lay != BN_CHANNELS_FIRST && lay != BN_CHANNELS_LAST))
        return BN_ERR_UNSUPPORTED;
    if (n < 0 || c < 1 || s < 0) return BN_ERR_SHAPE;
    i128 elems = (i128)n * c;
    if (elems > INT64_MAX || elems * s > INT64_MAX) return BN_ERR_TOO_LARGE;
    if (elems * s * (i128)esize(dt) > PTRDIFF_MAX) return BN_ERR_TOO_LARGE;
    return BN_OK;
}

static void fuzz_desc_from_dims(bytes *b) {
    int ndim = (int)(take(b, 1) % 9) - 2; /* -2 .. 6 */
    int64_t dims[6] = {0};
    for (int k = 0; k < 6; k++) dims[k] = take_size(b, 9);
    bn_dtype dt = (bn_dtype)(take(b, 1) % 5);
    bn_layout lay = (bn_layout)(take(b, 1) % 3);
    bn_status want;
    int negative = 0, zero = 0, over = 0;
    for (int k = 0; k < ndim; k++) negative |= dims[k] < 0;
    for (int k = 2; k < ndim; k++) zero |= dims[k] == 0;
    i128 s = 1; /* the element count is 0 when any size is 0, however large the others */
    for (int k = 2; k < ndim && !negative && !zero && !over; k++)
        if ((s *= dims[k]) > INT64_MAX) over = 1;
    if (zero) s = 0;
    if (!known_dtype(dt) || (lay != BN_CHANNELS_FIRST && lay != BN_CHANNELS_LAST))
        want = BN_ERR_UNSUPPORTED;
    else if (ndim < 2 || negative || dims[1] < 1) want = BN_ERR_SHAPE;
    else if (over) want = BN_ERR_TOO_LARGE;
    else want = desc_oracle(dims[0], dims[1], (int64_t)s, dt, lay);
    bn_desc d, sentinel;
    memset(&d, 0x5A, sizeof d);
    sentinel = d;
    bn_status st = bn_desc_from_dims(&d, ndim, dims, dt, lay);
    if (st != want) {
        fprintf(stderr, "ndim %d dims %lld %lld %lld %lld %lld %lld: status %d, want %d\n", ndim,
                (long long)dims[0], (long long)dims[1], (long long)dims[2], (long long)dims[3],
                (long long)dims[4], (long long)dims[5], st, want);
        die("bn_desc_from_dims status");
    }
    if (st != BN_OK && memcmp(&d, &sentinel, sizeof d) != 0) die("bn_desc_from_dims wrote on failure");
    if (st == BN_OK && (d.n != dims[0] || d.c != dims[1] || d.s != (int64_t)s || d.dtype != dt ||
                        d.layout != lay))
        die("bn_desc_from_dims result");
}

/* ------------------------------------------------------------------------------------------ */

/* Every buffer of a call. Outputs start as a sentinel; inputs are filled from the fuzzer. */
typedef struct {
    bn_desc d;
    int64_t count; /* n*c*s when the descriptor is valid and small, else 0 */
    unsigned char *x, *dy, *y, *dx, *w, *b, *rm, *rv, *dw, *db;
    double *sm, *si;
    int64_t nbt;
} tensors;

static void fill_values(bytes *b, unsigned char *p, int64_t count, bn_dtype dt, int finite) {
    uint8_t mode = (uint8_t)take(b, 1);
    double base = take_scalar(b, 1.0);
    if (finite && !(fabs(base) <= 1e3)) base = 1.0;
    for (int64_t k = 0; k < count; k++) {
        double v;
        switch (mode % 4) {
        case 0: v = base; break;                                        /* constant */
        case 1: v = base + (double)(int8_t)take(b, 1) / 16.0; break;    /* small spread */
        case 2: v = base * 1e3 + (double)(int16_t)take(b, 2); break;    /* large offset */
        default: {                                                      /* raw bits */
            uint64_t bits = take(b, (int)esize(dt));
            if (dt == BN_FLOAT32) {
                uint32_t u = (uint32_t)bits;
                float f;
                memcpy(&f, &u, 4);
                v = f;
            } else if (dt == BN_FLOAT64) {
                memcpy(&v, &bits, 8);
            } else {
                const uint16_t h = (uint16_t)bits;
                v = load_value(&h, 0, dt);
            }
            if (finite && !(fabs(v) <= 1e6)) v = fmod(isfinite(v) ? v : 1.0, 1e6);
        }
        }
        /* float16's largest finite value is 65504: a large offset would round to infinity */
        if (finite && dt == BN_FLOAT16 && !(fabs(v) < 65504)) v = fmod(v, 65504);
        store_value(p, k, dt, v);
    }
}

static unsigned char *buffer(size_t nbytes) {
    unsigned char *p = malloc(nbytes ? nbytes : 1);
    memset(p, 0x5A, nbytes ? nbytes : 1);
    return p;
}

static void release(tensors *t) {
    free(t->x), free(t->dy), free(t->y), free(t->dx), free(t->w), free(t->b);
    free(t->rm), free(t->rv), free(t->dw), free(t->db), free(t->sm), free(t->si);
}

/* Allocates every buffer for d (a valid, small descriptor) and fills the inputs. */
static void make_tensors(tensors *t, bytes *b, const bn_desc *d, int finite) {
    t->d = *d;
    t->count = d->n * d->c * d->s;
    size_t big = (size_t)t->count * esize(d->dtype), small = (size_t)d->c * esize(d->dtype);
    t->x = buffer(big), t->dy = buffer(big), t->y = buffer(big), t->dx = buffer(big);
    t->w = buffer(small), t->b = buffer(small), t->rm = buffer(small), t->rv = buffer(small);
    t->dw = buffer(small), t->db = buffer(small);
    t->sm = (double *)buffer((size_t)d->c * 8), t->si = (double *)buffer((size_t)d->c * 8);
    t->nbt = 0x5A5A5A5A5A5A5A5A;
    fill_values(b, t->x, t->count, d->dtype, finite);
    fill_values(b, t->dy, t->count, d->dtype, finite);
    fill_values(b, t->w, d->c, d->dtype, finite);
    fill_values(b, t->b, d->c, d->dtype, finite);
    fill_values(b, t->rm, d->c, d->dtype, finite);
    fill_values(b, t->rv, d->c, d->dtype, finite);
    if (finite) /* a variance is >= 0 */
        for (int64_t c = 0; c < d->c; c++) {
            store_value(t->rv, c, d->dtype, fabs(load_value(t->rv, c, d->dtype)));
        }
}

static int all_finite(const void *p, int64_t count, bn_dtype dt) {
    for (int64_t k = 0; k < count; k++)
        if (!isfinite(load_value(p, k, dt)))
            return 0;
    return 1;
}

/* Whether a call's outputs are finite, as they must be for finite inputs: in every type but
 * float16, whose range ends at 65504 (its sums and gradients may round to infinity). */
static int finite_outputs(const void *p, int64_t count, bn_dtype dt) {
    return dt == BN_FLOAT16 || all_finite(p, count, dt);
}

/* A copy of every buffer, to see what a call wrote. */
typedef struct { unsigned char *p[12]; size_t len[12]; int64_t nbt; } snapshot;

static void snap(snapshot *s, const tensors *t) {
    size_t big = (size_t)t->count * esize(t->d.dtype), small = (size_t)t->d.c * esize(t->d.dtype);
    unsigned char *bufs[12] = {t->x, t->dy, t->y, t->dx, t->w, t->b, t->rm, t->rv, t->dw, t->db,
                               (unsigned char *)t->sm, (unsigned char *)t->si};
    size_t lens[12] = {big, big, big, big, small, small, small, small, small, small,
                       (size_t)t->d.c * 8, (size_t)t->d.c * 8};
    for (int k = 0; k < 12; k++) {
        s->len[k] = lens[k];
        s->p[k] = malloc(lens[k] ? lens[k] : 1);
        if (lens[k]) memcpy(s->p[k], bufs[k], lens[k]);
    }
    s->nbt = t->nbt;
}

/* Buffers that differ from the snapshot, as a bit mask in snap's order (bit 12: the counter). */
static unsigned changed(const snapshot *s, const tensors *t) {
    unsigned char *bufs[12] = {t->x, t->dy, t->y, t->dx, t->w, t->b, t->rm, t->rv, t->dw, t->db,
                               (unsigned char *)t->sm, (unsigned char *)t->si};
    unsigned mask = 0;
    for (int k = 0; k < 12; k++)
        if (s->len[k] && memcmp(s->p[k], bufs[k], s->len[k]) != 0) mask |= 1u << k;
    if (s->nbt != t->nbt) mask |= 1u << 12;
    return mask;
}

static void unsnap(snapshot *s) {
    for (int k = 0; k < 12; k++) free(s->p[k]);
}

enum { X, DY, Y, DX, W, B, RM, RV, DW, DB, SM, SI, NBT };
#define BIT(k) (1u << (k))

/* One call of one entry point with fuzzed pointers and scalars; checks status and writes. */
static void fuzz_call(bytes *b, tensors *t, const bn_desc *d, int desc_ok, int op) {
    unsigned nulls = (unsigned)take(b, 2);   /* bit k: pass NULL for buffer k */
    if (take(b, 1) % 4) nulls = 0;           /* mostly all present */
    int in_place = (int)(take(b, 1) % 2);
    bn_options opt = BN_OPTIONS_DEFAULT;
    opt.eps = take_scalar(b, 1e-5);
    opt.momentum = take_scalar(b, 0.1);
    opt.cumulative = (int)(take(b, 1) % 2);
    uint8_t extra = (uint8_t)take(b, 1);
    if (extra == 1) opt.flags = 1 << (7 + take(b, 1) % 24); /* not a flag */
    if (extra == 2) opt.reserved = 1;
    if (extra == 7) opt.flags = (int)(take(b, 1) & 0x7f);   /* any of the flags */
    if (extra == 3) t->nbt = INT64_MAX;
    else if (extra == 4) t->nbt = 0;
    int null_opt = extra == 5, null_desc = extra == 6;
#define P(k, p) (nulls & BIT(k) ? NULL : (p))
    void *x = P(X, t->x), *dy = P(DY, t->dy), *w = P(W, t->w), *bias = P(B, t->b);
    void *rm = P(RM, t->rm), *rv = P(RV, t->rv);
    double *sm = P(SM, t->sm), *si = P(SI, t->si);
    int64_t *nbt = P(NBT, &t->nbt);
    void *y = in_place && op <= 1 ? x : P(Y, t->y);
    void *dx = in_place && op >= 2 ? dy : P(DX, t->dx);
    void *dw = P(DW, t->dw), *db = P(DB, t->db);
#undef P
    const bn_desc *dp = null_desc ? NULL : d;

    /* which statuses the arguments deserve; OK only if none */
    bn_status dst = desc_oracle(d->n, d->c, d->s, d->dtype, d->layout);
    int64_t count = desc_ok ? d->n * d->c * d->s : 0, m = desc_ok ? d->n * d->s : 0;
    int eps_bad = !(isfinite(opt.eps) && opt.eps >= 0);
    unsigned allowed = 0; /* bit -status */
#define ALLOW(st) (allowed |= 1u << -(st))
    if (!dp) ALLOW(BN_ERR_NULL_POINTER);
    if (dst != BN_OK) ALLOW(dst);
    int tensor_null = count && (!x || (op == 0 || op == 1 ? !y : !dy));
    if (tensor_null) ALLOW(BN_ERR_NULL_POINTER);
    int tracking = (rm || rv) && !(op == 0 && (opt.flags & BN_FREEZE_RUNNING));
    switch (op) {
    case 0: /* forward train */
        if (null_opt) ALLOW(BN_ERR_NULL_POINTER);
        if (!null_opt && (eps_bad || (opt.flags & ~0x7f) || opt.reserved ||
                          (opt.cumulative && (opt.flags & BN_RUNNING_SUMS)) ||
                          (!opt.cumulative && !(opt.momentum >= 0 && opt.momentum <= 1))))
            ALLOW(BN_ERR_ARGUMENT);
        if ((opt.flags & BN_STORED_STATS) && (!rm || !rv)) ALLOW(BN_ERR_NULL_POINTER);
        if (desc_ok && m == 1 && !(opt.flags & BN_ONE_VALUE_OK) &&
            (opt.flags & (BN_STORED_STATS | BN_FREEZE_RUNNING)) !=
                (BN_STORED_STATS | BN_FREEZE_RUNNING))
            ALLOW(BN_ERR_COUNT);
        if (tracking && !null_opt && opt.cumulative && !nbt) ALLOW(BN_ERR_NULL_POINTER);
        if (tracking && nbt && t->nbt == INT64_MAX) ALLOW(BN_ERR_TOO_LARGE);
        break;
    case 1: case 3: /* eval forward and backward: stored statistics required */
        if (!rm || !rv) ALLOW(BN_ERR_NULL_POINTER);
        if (eps_bad) ALLOW(BN_ERR_ARGUMENT);
        break;
    case 2: /* backward train */
        if (!sm || !si) ALLOW(BN_ERR_NULL_POINTER);
        break;
    }
#undef ALLOW
    if (!desc_ok && dp && dst == BN_OK) return; /* valid but too large to allocate: skip */

    snapshot before;
    snap(&before, t);
    bn_status st;
    switch (op) {
    case 0: st = bn_forward_train(y, sm, si, rm, rv, nbt, x, w, bias, dp, null_opt ? NULL : &opt); break;
    case 1: st = bn_forward_eval(y, x, rm, rv, w, bias, dp, opt.eps); break;
    case 2: st = bn_backward_train(dx, dw, db, dy, x, sm, si, w, dp); break;
    default: st = bn_backward_eval(dx, dw, db, dy, x, rm, rv, w, dp, opt.eps); break;
    }
    if (st > 0 || st < -31) die("status out of range");
    if (st == BN_OK ? allowed != 0 : !(allowed & 1u << -st)) {
        fprintf(stderr, "op %d desc (%lld, %lld, %lld, %d, %d) nulls %#x: status %d, allowed %#x\n",
                op, (long long)d->n, (long long)d->c, (long long)d->s, d->dtype, d->layout, nulls,
                st, allowed);
        die("status does not match the arguments");
    }
    if (st == BN_OK && op == 0 && nbt && t->nbt != (tracking ? before.nbt + 1 : before.nbt))
        die("num_batches_tracked not incremented by exactly one when tracking");
    unsigned w_mask = changed(&before, t);
    unsigned may = 0;
    if (st == BN_OK) switch (op) {
        case 0: may = BIT(Y) | BIT(SM) | BIT(SI) | BIT(RM) | BIT(RV) | BIT(NBT) | (in_place ? BIT(X) : 0); break;
        case 1: may = BIT(Y) | (in_place ? BIT(X) : 0); break;
        default: may = BIT(DX) | BIT(DW) | BIT(DB) | (in_place ? BIT(DY) : 0); break;
        }
    if (w_mask & ~may) {
        fprintf(stderr, "op %d status %d wrote buffers %#x, may write %#x\n", op, st, w_mask, may);
        die(st == BN_OK ? "a call wrote an input" : "a failed call wrote something");
    }
    unsnap(&before);
}

/* The whole chain on finite inputs: every call succeeds with finite outputs, and the in-place
 * forms give the same bits. */
static void fuzz_chain(tensors *t, bytes *b) {
    const bn_desc *d = &t->d;
    bn_options opt = BN_OPTIONS_DEFAULT;
    opt.eps = 1e-6 + (double)(take(b, 1) % 8) * 0.1;
    opt.momentum = (double)(take(b, 1) % 11) / 10;
    opt.cumulative = (int)(take(b, 1) % 2);
    const int64_t count = t->count, m = d->n * d->s;
    const size_t big = (size_t)count * esize(d->dtype);
    t->nbt = 0;
    const size_t small = (size_t)d->c * esize(d->dtype);
    unsigned char rm0[MAX_C * 8], rv0[MAX_C * 8]; /* the running statistics before the call */
    memcpy(rm0, t->rm, small);
    memcpy(rv0, t->rv, small);
    bn_status st = bn_forward_train(t->y, t->sm, t->si, t->rm, t->rv, &t->nbt, t->x, t->w, t->b, d, &opt);
    if (m == 1) {
        if (st != BN_ERR_COUNT) die("count 1 accepted");
        return;
    }
    if (st != BN_OK) die("train forward failed on good input");
    if (t->nbt != 1) die("num_batches_tracked");
    if (!finite_outputs(t->y, count, d->dtype) || !finite_outputs(t->rm, d->c, d->dtype) ||
        !finite_outputs(t->rv, d->c, d->dtype))
        die("train forward: finite input gave a non-finite output");
    if (m > 0 && (!finite_outputs(t->sm, d->c, BN_FLOAT64) || !finite_outputs(t->si, d->c, BN_FLOAT64)))
        die("train forward: non-finite statistics");
    unsigned char *copy = buffer(big);
    if (big) memcpy(copy, t->x, big);
    double sm2[MAX_C], si2[MAX_C];
    if (bn_forward_train(copy, sm2, si2, NULL, NULL, NULL, copy, t->w, t->b, d, &opt) != BN_OK ||
        (big && memcmp(copy, t->y, big) != 0))
        die("in-place train forward differs");
    if (m > 0 && (memcmp(sm2, t->sm, (size_t)d->c * 8) || memcmp(si2, t->si, (size_t)d->c * 8)))
        die("statistics differ between calls");
    /* the stages on one piece: the same bits */
    bn_moments mom[MAX_C];
    int64_t nbt2 = 0;
    if (bn_compute_moments(mom, t->x, d) != BN_OK) die("bn_compute_moments failed");
    if (bn_forward_train_stats(copy, sm2, si2, rm0, rv0, &nbt2, t->x, t->w, t->b, mom, d, &opt) != BN_OK)
        die("bn_forward_train_stats failed");
    if ((big && memcmp(copy, t->y, big)) || memcmp(rm0, t->rm, small) || memcmp(rv0, t->rv, small) ||
        memcmp(sm2, t->sm, (size_t)d->c * 8) || memcmp(si2, t->si, (size_t)d->c * 8) || nbt2 != 1)
        die("stages of the forward pass differ from bn_forward_train");
    double sum_dy[MAX_C], sum_dy_xhat[MAX_C];
    if (bn_backward_sums(sum_dy, sum_dy_xhat, t->dy, t->x, t->sm, t->si, d) != BN_OK ||
        bn_backward_train_sums(copy, t->dy, t->x, t->sm, t->si, t->w, sum_dy, sum_dy_xhat, m, d) != BN_OK)
        die("backward stages failed");
    if (bn_backward_train(t->dx, t->dw, t->db, t->dy, t->x, t->sm, t->si, t->w, d) != BN_OK)
        die("train backward failed");
    if (big && memcmp(copy, t->dx, big) != 0) die("stages of the backward pass differ from bn_backward_train");
    if (!finite_outputs(t->dx, count, d->dtype) || !finite_outputs(t->dw, d->c, d->dtype) ||
        !finite_outputs(t->db, d->c, d->dtype))
        die("train backward: non-finite gradient");
    if (big) memcpy(copy, t->dy, big);
    if (bn_backward_train(copy, NULL, NULL, copy, t->x, t->sm, t->si, t->w, d) != BN_OK ||
        (big && memcmp(copy, t->dx, big) != 0))
        die("in-place train backward differs");
    if (bn_forward_eval(t->y, t->x, t->rm, t->rv, t->w, t->b, d, opt.eps) != BN_OK ||
        !finite_outputs(t->y, count, d->dtype))
        die("eval forward");
    if (big) memcpy(copy, t->x, big);
    if (bn_forward_eval(copy, copy, t->rm, t->rv, t->w, t->b, d, opt.eps) != BN_OK ||
        (big && memcmp(copy, t->y, big) != 0))
        die("in-place eval forward differs");
    if (bn_backward_eval(t->dx, t->dw, t->db, t->dy, t->x, t->rm, t->rv, t->w, d, opt.eps) != BN_OK ||
        !finite_outputs(t->dx, count, d->dtype) || !finite_outputs(t->dw, d->c, d->dtype) ||
        !finite_outputs(t->db, d->c, d->dtype))
        die("eval backward");
    free(copy);
}

/* The conventions' chain on finite inputs: a framework's preset, maybe ghost batches (a size
 * that divides n, or one that does not), frozen choices, renorm with fuzzed clipping; forward
 * and backward succeed exactly when the arguments allow, give finite outputs, and the same
 * bits when called again. */
static void fuzz_conventions(tensors *t, bytes *b) {
    const bn_desc *d = &t->d;
    const bn_options presets[7] = {BN_OPTIONS_PYTORCH, BN_OPTIONS_ONNX, BN_OPTIONS_KERAS,
                                   BN_OPTIONS_TENSORFLOW, BN_OPTIONS_CAFFE, BN_OPTIONS_MXNET,
                                   BN_OPTIONS_FLAX};
    bn_options opt = presets[take(b, 1) % 7];
    opt.flags |= (int)(take(b, 1) & (BN_STORED_STATS | BN_FREEZE_RUNNING));
    opt.virtual_batch = (int64_t)(take(b, 1) % 5);
    int renorm = take(b, 1) % 2;
    opt.rmin = (double)(take(b, 1) % 4) / 4;
    opt.rmax = take(b, 1) % 2 ? HUGE_VAL : opt.rmin + (double)(take(b, 1) % 4) / 2;
    opt.dmax = take(b, 1) % 2 ? HUGE_VAL : (double)(take(b, 1) % 3);
    const int stored = opt.flags & BN_STORED_STATS;
    const int64_t V = opt.virtual_batch, ghosts = V && d->n > V && d->n % V == 0 ? d->n / V : 1;
    const int64_t m = V && ghosts > 1 ? V * d->s : d->n * d->s, count = t->count;
    unsigned allowed = 0; /* bit -status: each wrong argument's status */
    if (V && d->n % V) allowed |= 1u << -BN_ERR_SHAPE;
    if ((V && stored) || (renorm && stored)) allowed |= 1u << -BN_ERR_ARGUMENT;
    if (m == 1 && !(opt.flags & BN_ONE_VALUE_OK) && !(stored && (opt.flags & BN_FREEZE_RUNNING)))
        allowed |= 1u << -BN_ERR_COUNT;
    const size_t big = (size_t)count * esize(d->dtype), small = (size_t)d->c * esize(d->dtype);
    const size_t saved = (size_t)(ghosts * d->c) * sizeof(double);
    double *sm = malloc(saved + 8), *si = malloc(saved + 8), r[MAX_C], dd[MAX_C];
    unsigned char ms[MAX_C * 8], ren_m[MAX_C * 8], ren_s[MAX_C * 8];
    memcpy(ms, t->rv, small), memcpy(ren_m, t->rm, small), memcpy(ren_s, t->rv, small);
    bn_status st = renorm ? bn_forward_train_renorm(t->y, sm, si, r, dd, t->rm, t->rv, ms, ren_m,
                                                    ren_s, &t->nbt, t->x, t->w, t->b, d, &opt)
                          : bn_forward_train(t->y, sm, si, t->rm, t->rv, &t->nbt, t->x, t->w,
                                             t->b, d, &opt);
    if (st == BN_OK ? allowed != 0 : !(allowed & 1u << -st)) {
        fprintf(stderr, "conventions: flags %#x V %lld renorm %d n %lld s %lld: status %d, allowed %#x\n",
                opt.flags, (long long)V, renorm, (long long)d->n, (long long)d->s, st, allowed);
        die("conventions: status");
    }
    if (st == BN_OK && count > 0) {
        if (!finite_outputs(t->y, count, d->dtype)) die("conventions: non-finite output");
        unsigned char *y2 = buffer(big), *dx2 = buffer(big);
        double *sm2 = malloc(saved + 8), *si2 = malloc(saved + 8);
        bn_options again = opt;
        again.flags |= BN_FREEZE_RUNNING; /* the same statistics, nothing more to update */
        if (!stored) {
            bn_status st2 = renorm ? bn_forward_train_renorm(y2, sm2, si2, NULL, NULL, NULL, NULL,
                                                             NULL, ren_m, ren_s, NULL, t->x, t->w,
                                                             t->b, d, &again)
                                   : bn_forward_train(y2, sm2, si2, NULL, NULL, NULL, t->x, t->w,
                                                      t->b, d, &again);
            if (st2 != BN_OK || (!renorm && memcmp(y2, t->y, big)) || memcmp(sm2, sm, saved))
                die("conventions: a second call differs");
        }
        bn_status sb = renorm ? bn_backward_renorm(t->dx, t->dw, t->db, t->dy, t->x, sm, si, r, dd,
                                                   t->w, d, &opt)
                              : bn_backward(t->dx, t->dw, t->db, t->dy, t->x, sm, si, t->w, d, &opt);
        if (sb != BN_OK) die("conventions: backward failed");
        if (!finite_outputs(t->dx, count, d->dtype) || !finite_outputs(t->dw, d->c, d->dtype))
            die("conventions: non-finite gradient");
        if (!renorm && bn_backward(dx2, NULL, NULL, t->dy, t->x, sm, si, t->w, d, &opt) != BN_OK)
            die("conventions: backward without affine gradients failed");
        if (!renorm && memcmp(dx2, t->dx, big)) die("conventions: dx depends on dweight");
        free(y2), free(dx2), free(sm2), free(si2);
    }
    free(sm), free(si);
}

/* bn_merge_moments on fuzzed moments: the status the arguments deserve, nothing written on
 * failure, and on success counts that add up and empty parts that change nothing. */
static void fuzz_merge(bytes *b) {
    enum { K = 8 };
    bn_moments acc[K], part[K], before[K];
    int64_t c = (int64_t)(take(b, 1) % (K + 2)) - 1; /* -1 .. K */
    for (int k = 0; k < K; k++) {
        bn_moments *m[2] = {&acc[k], &part[k]};
        for (int j = 0; j < 2; j++) {
            uint8_t kind = (uint8_t)take(b, 1);
            m[j]->count = kind % 4 == 0 ? 0 : kind % 4 == 1 ? -(int64_t)take(b, 1)
                        : kind % 4 == 2 ? INT64_MAX - (int64_t)take(b, 1) : (int64_t)take(b, 2);
            m[j]->mean = m[j]->count ? take_scalar(b, 1.0) : 0;
            m[j]->m2 = m[j]->count ? fabs(take_scalar(b, 1.0)) : 0;
        }
    }
    int null_acc = take(b, 1) % 8 == 0, null_part = take(b, 1) % 8 == 0;
    memcpy(before, acc, sizeof acc);
    unsigned allowed = 0;
    if (c < 0) allowed |= 1u << -BN_ERR_SHAPE;
    if (c > 0 && (null_acc || null_part)) allowed |= 1u << -BN_ERR_NULL_POINTER;
    for (int64_t k = 0; k < c && k < K; k++) {
        if (acc[k].count < 0 || part[k].count < 0) allowed |= 1u << -BN_ERR_ARGUMENT;
        else if (acc[k].count > INT64_MAX - part[k].count) allowed |= 1u << -BN_ERR_TOO_LARGE;
    }
    bn_status st = bn_merge_moments(null_acc ? NULL : acc, null_part ? NULL : part, c);
    if (st == BN_OK ? allowed != 0 : !(allowed & 1u << -st)) die("bn_merge_moments status");
    if (st != BN_OK) {
        if (memcmp(acc, before, sizeof acc) != 0) die("bn_merge_moments wrote on failure");
        return;
    }
    for (int64_t k = 0; k < c; k++) {
        if (acc[k].count != before[k].count + part[k].count) die("merged counts do not add up");
        if (part[k].count == 0 && memcmp(&acc[k], &before[k], sizeof acc[k]) != 0)
            die("an empty part changed the moments");
        if (before[k].count == 0 && memcmp(&acc[k], &part[k], sizeof acc[k]) != 0)
            die("merging into empty moments is not a copy");
    }
}

/* bn_check_finite against a plain scan. */
static void fuzz_check_finite(tensors *t) {
    const bn_desc *d = &t->d;
    int64_t want = -1;
    for (int64_t k = 0; k < t->count && want < 0; k++)
        if (!all_finite(t->x + (size_t)k * esize(d->dtype), 1, d->dtype)) want = k;
    int64_t channel = -7, index = -7;
    bn_status st = bn_check_finite(&channel, &index, t->x, d);
    if (want < 0) {
        if (st != BN_OK || channel != -7 || index != -7) die("bn_check_finite on finite input");
        return;
    }
    int64_t want_c = d->layout == BN_CHANNELS_LAST ? want % d->c : want / d->s % d->c;
    if (st != BN_ERR_NOT_FINITE || index != want || channel != want_c) die("bn_check_finite position");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    bytes b = {data, size};
    int op = (int)(take(&b, 1) % 8);
    if (op == 6) {
        fuzz_desc_from_dims(&b);
        return 0;
    }
    if (op == 7) {
        fuzz_merge(&b);
        return 0;
    }
    bn_desc d;
    int odd = take(&b, 1) % 4 == 0; /* an arbitrary descriptor, most often invalid */
    d.n = odd ? take_size(&b, 16) : (int64_t)(take(&b, 1) % 17);
    d.c = odd ? take_size(&b, MAX_C) : (int64_t)(take(&b, 1) % MAX_C) + 1;
    d.s = odd ? take_size(&b, 16) : (int64_t)(take(&b, 1) % 17);
    uint8_t kind = (uint8_t)take(&b, 1);
    d.dtype = (bn_dtype)(odd ? kind % 5 : kind % 4);
    d.params = BN_PARAMS_AS_TENSOR;
    d.layout = (bn_layout)(odd ? kind / 4 % 3 : kind / 4 % 2);
    int finite = op == 4 || (op == 5 && take(&b, 1) % 2); /* op 5: finite for the conventions */
    bn_status dst = desc_oracle(d.n, d.c, d.s, d.dtype, d.layout);
    int small = dst == BN_OK && d.c <= MAX_C && d.n <= MAX_ELEMS && d.s <= MAX_ELEMS &&
                d.n * d.c * d.s <= MAX_ELEMS;
    tensors t;
    bn_desc alloc_d = small ? d : (bn_desc){1, 2, 2, BN_FLOAT64, BN_CHANNELS_FIRST, BN_PARAMS_AS_TENSOR};
    make_tensors(&t, &b, &alloc_d, finite);
    if (op < 4) {
        fuzz_call(&b, &t, &d, small, op);
    } else if (small) {
        fuzz_check_finite(&t);
        if (op == 4) fuzz_chain(&t, &b);
        if (op == 5 && finite) fuzz_conventions(&t, &b);
    }
    release(&t);
    return 0;
}
