/* test_golden.c - PyTorch parity without Python: replays the golden data that real PyTorch
 * recorded (tests/golden/torch_golden.txt, written by tests/golden/make_golden.py) through the C
 * API and compares every recorded array, step by step.
 *
 * The file is found through the environment variable BNORM_GOLDEN or, by default, at
 * "tests/golden/torch_golden.txt" relative to the working directory (make test runs from the repo
 * root). A missing or malformed file is a failed check, never a skip.
 *
 * FILE FORMAT (version 1; make_golden.py is the full description)
 *
 *   Whitespace-separated tokens, '#' comments to the end of the line. Integers are decimal, reals
 *   are C99 hex floats (exact through strtod). An array is "KEY COUNT v0 ... v(COUNT-1)".
 *
 *     bnorm-golden 1
 *     case NAME / dtype f32|f64|bf16 / [params f32|bf16 (bf16 only)] / layout first|last /
 *     channels C / affine 0|1 / track 0|1 / momentum none|HEX / eps HEX /
 *     [weight C ... / bias C ...]                                      (in this order)
 *     step train|eval
 *       dims NDIM d0 d1 ...                                             (first in a step)
 *       any order: running_mean_before, running_var_before, nbt_before, x, dy, y, dx, dweight,
 *                  dbias, save_mean, save_invstd, running_mean_after, running_var_after, nbt_after,
 *                  and in bf16 cases exact_KEY beside each result KEY (float64's value)
 *     endstep
 *     ... more steps ... endcase
 *     ... more cases ... end
 *
 *   x, dy, y and dx are in the layout's memory order. For float32 cases the inputs are float32
 *   values and the results are torch's float64 computation on them (the exact answer to round to).
 *   bf16 cases record torch's own bfloat16 kernel, with float64's value beside each result.
 *
 * HOW A CASE IS REPLAYED
 *
 *   The C running statistics start from the first step's *_before values and are carried from
 *   step to step; every *_after value is compared. A train step (and an eval step without
 *   tracked statistics, which uses batch statistics as torch does) runs bn_forward_train and
 *   bn_backward_train; an eval step with tracked statistics runs bn_forward_eval and
 *   bn_backward_eval. Each compared array is one check, within 2e-5 (float32) or 1e-10 (float64)
 *   of max(1, |reference|). The scalar reference of src/reference, the other tests' oracle,
 *   replays every step too and is held to the same checks. bf16 cases (parameters in float32 or
 *   bfloat16, desc.params) are two checks per array, parity with torch's bfloat16 and one
 *   rounding of float64's value (compare), and start each step from torch's running statistics.
 */
#include "check.h"
#include "testutil.h"

#include "bnorm.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define GOLDEN_DEFAULT_PATH "tests/golden/torch_golden.txt"
#define GOLDEN_MAX_NDIM 8

/* ---------------------------------------------------------------------------------------------
 * Reading tokens. The whole file is in memory, NUL-terminated; the reader walks it once and keeps
 * the line number and the first error for the messages. */

typedef struct reader {
    const char *p;   /* next character */
    const char *end; /* the terminating NUL */
    int line;        /* line of p, from 1 */
    int failed;      /* an error has been recorded in msg */
    char msg[256];
} reader;

static int reader_fail(reader *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Records the first error (with its line) and returns 0, so callers can `return reader_fail(...)`. */
static int reader_fail(reader *r, const char *fmt, ...) {
    if (r->failed) return 0;
    r->failed = 1;
    int k = snprintf(r->msg, sizeof r->msg, "line %d: ", r->line);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg + k, sizeof r->msg - (size_t)k, fmt, ap);
    va_end(ap);
    return 0;
}

static int is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n'; }

/* Moves past white space and comments. */
static void skip_space(reader *r) {
    for (;;) {
        if (*r->p == '\n') r->line++;
        if (is_space(*r->p)) {
            r->p++;
        } else if (*r->p == '#') {
            while (*r->p && *r->p != '\n') r->p++;
        } else {
            return;
        }
    }
}

/* The next token copied into word (cap bytes with the NUL); fails at the end or if too long. */
static int read_word(reader *r, char *word, size_t cap) {
    skip_space(r);
    size_t k = 0;
    while (r->p[k] && !is_space(r->p[k])) k++;
    if (k == 0) return reader_fail(r, "unexpected end of file");
    if (k >= cap) return reader_fail(r, "token of %zu characters is too long", k);
    memcpy(word, r->p, k);
    word[k] = '\0';
    r->p += k;
    return 1;
}

static int expect_word(reader *r, const char *want) {
    char word[64];
    if (!read_word(r, word, sizeof word)) return 0;
    if (strcmp(word, want) != 0) return reader_fail(r, "expected \"%s\", got \"%s\"", want, word);
    return 1;
}

/* A whole token is a number when its parse ends where the token ends. */
static int at_token_end(const char *end) { return *end == '\0' || is_space(*end); }

static int read_int64(reader *r, int64_t *value) {
    skip_space(r);
    char *end;
    errno = 0;
    long long v = strtoll(r->p, &end, 10);
    if (end == r->p || !at_token_end(end) || errno == ERANGE)
        return reader_fail(r, "expected an integer");
    *value = (int64_t)v;
    r->p = end;
    return 1;
}

static int read_real(reader *r, double *value) {
    skip_space(r);
    char *end;
    double v = strtod(r->p, &end);
    if (end == r->p || !at_token_end(end)) return reader_fail(r, "expected a real number");
    *value = v;
    r->p = end;
    return 1;
}

/* "COUNT v0 v1 ..." after its key: count must be want (or any when want < 0). *values is
 * allocated (at least one element) and owned by the caller. */
static int read_values(reader *r, const char *key, int64_t want, double **values, int64_t *count) {
    int64_t n;
    if (!read_int64(r, &n)) return 0;
    /* every value takes at least two characters of the file, which bounds a sane count */
    if (n < 0 || n > (r->end - r->p) / 2)
        return reader_fail(r, "%s: impossible count %lld", key, (long long)n);
    if (want >= 0 && n != want)
        return reader_fail(r, "%s: %lld values, expected %lld", key, (long long)n, (long long)want);
    double *v = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    if (!v) return reader_fail(r, "%s: out of memory", key);
    for (int64_t k = 0; k < n; k++) {
        if (!read_real(r, &v[k])) {
            free(v);
            return 0;
        }
    }
    *values = v;
    *count = n;
    return 1;
}

static int read_flag(reader *r, const char *key, int *flag) {
    int64_t v;
    if (!expect_word(r, key) || !read_int64(r, &v)) return 0;
    if (v != 0 && v != 1) return reader_fail(r, "%s must be 0 or 1", key);
    *flag = (int)v;
    return 1;
}

/* ---------------------------------------------------------------------------------------------
 * A case's header and one step, as read. */

typedef struct golden_case {
    char name[64];
    bn_dtype dtype;
    bn_dtype pdtype; /* the parameters' (weight, bias, running statistics, dweight, dbias) */
    bn_layout layout;
    int64_t c;
    int affine, track, cumulative;
    double momentum, eps;
    double *weight, *bias; /* (C), affine only */
} golden_case;

/* The arrays a step may record; a step's arrays are NULL until read. */
enum {
    RM_BEFORE, RV_BEFORE, X, DY, Y, DX, DWEIGHT, DBIAS, SAVE_MEAN, SAVE_INVSTD, RM_AFTER,
    RV_AFTER, N_ARRAYS
};
static const char *const array_key[N_ARRAYS] = {
    "running_mean_before", "running_var_before", "x", "dy", "y", "dx", "dweight", "dbias",
    "save_mean", "save_invstd", "running_mean_after", "running_var_after"};
/* Per-channel arrays have C values; the others the tensor's N*C*S. */
static int array_per_channel(int a) { return a != X && a != DY && a != Y && a != DX; }

typedef struct golden_step {
    int train;
    int ndim;
    int64_t dims[GOLDEN_MAX_NDIM];
    int64_t numel;
    double *a[N_ARRAYS];
    double *exact[N_ARRAYS]; /* bf16 cases: exact_KEY, float64's value of each recorded result */
    int have_nbt_before, have_nbt_after;
    int64_t nbt_before, nbt_after;
} golden_step;

static void step_free(golden_step *s) {
    for (int k = 0; k < N_ARRAYS; k++) free(s->a[k]), free(s->exact[k]);
    memset(s, 0, sizeof *s);
}

static void case_free(golden_case *gc) {
    free(gc->weight);
    free(gc->bias);
    memset(gc, 0, sizeof *gc);
}

/* The header after "case": name, dtype, layout, channels, flags, momentum, eps, weight, bias. */
static int read_case_header(reader *r, golden_case *gc) {
    char word[64];
    if (!read_word(r, gc->name, sizeof gc->name)) return 0;

    if (!expect_word(r, "dtype") || !read_word(r, word, sizeof word)) return 0;
    if (strcmp(word, "f32") == 0) gc->dtype = BN_FLOAT32;
    else if (strcmp(word, "f64") == 0) gc->dtype = BN_FLOAT64;
    else if (strcmp(word, "bf16") == 0) gc->dtype = BN_BFLOAT16;
    else return reader_fail(r, "unknown dtype \"%s\"", word);
    gc->pdtype = gc->dtype;
    if (gc->dtype == BN_BFLOAT16) { /* the parameters' dtype follows */
        if (!expect_word(r, "params") || !read_word(r, word, sizeof word)) return 0;
        if (strcmp(word, "f32") == 0) gc->pdtype = BN_FLOAT32;
        else if (strcmp(word, "bf16") != 0) return reader_fail(r, "unknown params \"%s\"", word);
    }

    if (!expect_word(r, "layout") || !read_word(r, word, sizeof word)) return 0;
    if (strcmp(word, "first") == 0) gc->layout = BN_CHANNELS_FIRST;
    else if (strcmp(word, "last") == 0) gc->layout = BN_CHANNELS_LAST;
    else return reader_fail(r, "unknown layout \"%s\"", word);

    if (!expect_word(r, "channels") || !read_int64(r, &gc->c)) return 0;
    if (gc->c < 1 || gc->c > 1000000) return reader_fail(r, "bad channel count");
    if (!read_flag(r, "affine", &gc->affine) || !read_flag(r, "track", &gc->track)) return 0;

    if (!expect_word(r, "momentum")) return 0;
    skip_space(r);
    if (strncmp(r->p, "none", 4) == 0 && at_token_end(r->p + 4)) {
        r->p += 4;
        gc->cumulative = 1;
        gc->momentum = 0.1; /* unused with the cumulative average, but a valid value */
    } else if (!read_real(r, &gc->momentum)) {
        return 0;
    }
    if (!expect_word(r, "eps") || !read_real(r, &gc->eps)) return 0;

    if (gc->affine) {
        int64_t n;
        if (!expect_word(r, "weight") || !read_values(r, "weight", gc->c, &gc->weight, &n))
            return 0;
        if (!expect_word(r, "bias") || !read_values(r, "bias", gc->c, &gc->bias, &n)) return 0;
    }
    return 1;
}

/* The body of a step after "step": mode, dims, then keyed arrays up to "endstep", checked for
 * presence and sizes against the case. */
static int read_step(reader *r, const golden_case *gc, golden_step *s) {
    char word[64];
    if (!read_word(r, word, sizeof word)) return 0;
    if (strcmp(word, "train") == 0) s->train = 1;
    else if (strcmp(word, "eval") == 0) s->train = 0;
    else return reader_fail(r, "unknown step mode \"%s\"", word);

    int64_t ndim;
    if (!expect_word(r, "dims") || !read_int64(r, &ndim)) return 0;
    if (ndim < 2 || ndim > GOLDEN_MAX_NDIM) return reader_fail(r, "bad ndim %lld", (long long)ndim);
    s->ndim = (int)ndim;
    s->numel = 1;
    for (int k = 0; k < s->ndim; k++) {
        if (!read_int64(r, &s->dims[k])) return 0;
        if (s->dims[k] < 0 || s->dims[k] > 1000000) return reader_fail(r, "bad size in dims");
        s->numel *= s->dims[k];
        if (s->numel > 100000000) return reader_fail(r, "tensor too large for golden data");
    }
    if (s->dims[1] != gc->c) return reader_fail(r, "dims give %lld channels, case has %lld",
                                                (long long)s->dims[1], (long long)gc->c);

    for (;;) {
        if (!read_word(r, word, sizeof word)) return 0;
        if (strcmp(word, "endstep") == 0) break;
        if (strcmp(word, "nbt_before") == 0) {
            if (!read_int64(r, &s->nbt_before)) return 0;
            s->have_nbt_before = 1;
            continue;
        }
        if (strcmp(word, "nbt_after") == 0) {
            if (!read_int64(r, &s->nbt_after)) return 0;
            s->have_nbt_after = 1;
            continue;
        }
        const int is_exact = gc->dtype == BN_BFLOAT16 && strncmp(word, "exact_", 6) == 0;
        const char *key = is_exact ? word + 6 : word;
        int a = 0;
        while (a < N_ARRAYS && strcmp(key, array_key[a]) != 0) a++;
        if (a == N_ARRAYS) return reader_fail(r, "unknown key \"%s\"", word);
        double **slot = is_exact ? &s->exact[a] : &s->a[a];
        if (*slot) return reader_fail(r, "%s given twice", word);
        int64_t n;
        if (!read_values(r, word, array_per_channel(a) ? gc->c : s->numel, slot, &n)) return 0;
    }

    /* what every step records, and what affine and track add */
    const int needed[] = {X, DY, Y, DX};
    for (size_t k = 0; k < sizeof needed / sizeof needed[0]; k++)
        if (!s->a[needed[k]]) return reader_fail(r, "step without %s", array_key[needed[k]]);
    if (gc->affine && (!s->a[DWEIGHT] || !s->a[DBIAS]))
        return reader_fail(r, "affine step without dweight and dbias");
    if (gc->track && (!s->a[RM_BEFORE] || !s->a[RV_BEFORE] || !s->a[RM_AFTER] ||
                      !s->a[RV_AFTER] || !s->have_nbt_before || !s->have_nbt_after))
        return reader_fail(r, "tracked step without its running statistics");
    if (!s->a[SAVE_MEAN] != !s->a[SAVE_INVSTD])
        return reader_fail(r, "save_mean and save_invstd come together");
    /* a bf16 step records float64's value beside each of torch's results, and nothing else */
    if (gc->dtype == BN_BFLOAT16)
        for (int a = 0; a < N_ARRAYS; a++)
            if (a != X && a != DY && a != RM_BEFORE && a != RV_BEFORE && !s->a[a] != !s->exact[a])
                return reader_fail(r, "%s without exact_%s, or the other way", array_key[a],
                                   array_key[a]);
    return 1;
}

/* ---------------------------------------------------------------------------------------------
 * Replaying a step through the C API. */

/* The C side's running statistics, carried from step to step of a case. */
typedef struct replay_state {
    int started;
    int broken;              /* a call failed: the rest of the case is read but not replayed */
    void *running_mean;      /* (C) in the case's dtype */
    void *running_var;       /* (C) */
    int64_t num_batches_tracked;
    double *ref_running_mean; /* (C): the reference's own, carried the same way */
    double *ref_running_var;  /* (C) */
    int64_t ref_num_batches_tracked;
} replay_state;

static size_t dtype_size(bn_dtype dtype) {
    return dtype == BN_FLOAT64 ? 8 : dtype == BN_FLOAT32 ? 4 : 2;
}

/* A unit in the last place of a type of that many significant bits, at max(1, |v|). */
static double ulp_at(double v, int bits) {
    int e;
    frexp(fmax(1.0, fabs(v)), &e); /* max(1, |v|) in [2^(e-1), 2^e) */
    return ldexp(1.0, e - bits);
}

static int significant_bits(bn_dtype dtype) {
    return dtype == BN_BFLOAT16 ? 8 : dtype == BN_FLOAT16 ? 11 : dtype == BN_FLOAT32 ? 24 : 53;
}

/* The float32 computation's own error allowed beside the one rounding of array a, relative to
 * max(1, |exact|) (as tests/python/test_torch_half.py allows it): dx cancels, so its error is
 * relative to its largest term; the parameter gradients sum numel products. */
static double compute_error(int a, const golden_step *s, int64_t count) {
    switch (a) {
    case DX: {
        double top = 1;
        for (int64_t k = 0; k < count; k++) top = fmax(top, fabs(s->exact[DX][k]));
        return 1e-5 * top;
    }
    case DWEIGHT: case DBIAS: return 1e-9 * (double)s->numel;
    case Y: return 2e-6;
    default: return 1e-6; /* the running statistics */
    }
}

static void report(const golden_case *gc, int step, const golden_step *s, const char *what,
                   int ok, const char *how, double d) {
    CHECK_MSG(ok, "golden %s step %d (%s): %s %s %.3g", gc->name, step,
              s->train ? "train" : "eval", what, how, d);
}

/* One check of a library result, got (count values of dtype), against array a of the step.
 * float32 and float64 cases: within 2e-5 (float32) or 1e-10 (float64) of max(1, |torch|), torch
 * being its float64 computation. bf16 cases: parity with torch's own bfloat16 kernel, which is
 * recorded with float64's value (exact_KEY): got may differ from torch's only where torch's is
 * off float64's, by at most a unit in the last place of bfloat16 more,
 * |got - torch| <= |torch - exact| + ulp(max(1, |exact|)); and got is one rounding of float64's
 * value to got's dtype, within half a unit in its last place and the float32 computation's error
 * (compute_error), the saved statistics within bnorm.h's bound. */
static void compare(const golden_case *gc, int step, const golden_step *s, const char *what,
                    const void *got, bn_dtype dtype, int a, int64_t count) {
    double *g = tu_to_double(got, count, dtype);
    const double *torch = s->a[a];
    if (gc->dtype == BN_BFLOAT16) {
        const double *exact = s->exact[a];
        const double rel = compute_error(a, s, count);
        const int bits = significant_bits(dtype);
        double parity = 0, rounding = 0; /* the largest |got - torch| and |got - exact| / bound */
        for (int64_t k = 0; k < count; k++) {
            const double bound = fabs(torch[k] - exact[k]) + ulp_at(exact[k], 8);
            parity = tu_worst(parity, fabs(g[k] - torch[k]) / bound);
            /* the saved statistics: bnorm.h's promise (ACCURACY), the mean within 11 * 2^-24 of
             * the channel's standard deviation, invstd of itself */
            const double one =
                a == SAVE_MEAN ? 11 * 0x1p-24 / s->exact[SAVE_INVSTD][k]
                : a == SAVE_INVSTD ? 11 * 0x1p-24 * exact[k]
                : ulp_at(exact[k], bits) / 2 + rel * fmax(1, fabs(exact[k]));
            rounding = tu_worst(rounding, fabs(g[k] - exact[k]) / one);
        }
        report(gc, step, s, what, parity <= 1, "off torch's bfloat16 by (its bound)", parity);
        report(gc, step, s, what, rounding <= 1, "off one rounding of float64's by (its bound)",
               rounding);
    } else {
        double tol = gc->dtype == BN_FLOAT32 ? 2e-5 : 1e-10;
        double d = tu_max_rel_diff(g, torch, count);
        report(gc, step, s, what, d <= tol, "max rel diff", d);
    }
    free(g);
}

/* The scalar reference's result (count doubles) against array a: as compare for float32 and
 * float64 cases; for bf16 ones against float64's value, within 1e-10 of max(1, |exact|). */
static void compare_reference(const golden_case *gc, int step, const golden_step *s,
                              const char *what, const double *got, int a, int64_t count) {
    if (gc->dtype != BN_BFLOAT16) {
        compare(gc, step, s, what, got, BN_FLOAT64, a, count);
        return;
    }
    double d = tu_max_rel_diff(got, s->exact[a], count);
    report(gc, step, s, what, d <= 1e-10, "max rel diff from float64's", d);
}

static int call_ok(const golden_case *gc, int step, const char *what, bn_status st) {
    return CHECK_MSG(st == BN_OK, "golden %s step %d: %s failed: %s (%d)", gc->name, step, what,
                     bn_status_string(st), (int)st);
}

/* The same step by the scalar reference (src/reference/reference.h) on the same values: the
 * oracle of the other tests, itself checked against torch, array by array, with the tolerance
 * of the library's checks. Float32 cases keep the reference's running statistics rounded to
 * float32 between steps, as their storage is. */
static void replay_reference(const golden_case *gc, int step, const golden_step *s,
                             replay_state *rs, const bn_desc *desc, const bn_options *opt) {
    const int64_t c = gc->c;
    const size_t numel = (size_t)(s->numel > 0 ? s->numel : 1);
    double *y = calloc(numel, sizeof(double)), *dx = calloc(numel, sizeof(double));
    double *dweight = calloc((size_t)c, sizeof(double)), *dbias = calloc((size_t)c, sizeof(double));
    double *save_mean = calloc((size_t)c, sizeof(double));
    double *save_invstd = calloc((size_t)c, sizeof(double));
    const double *x = s->a[X], *dy = s->a[DY], *weight = gc->weight, *bias = gc->bias;
    const int batch_stats = s->train || !gc->track;
    if (batch_stats) {
        const int update = s->train && gc->track;
        bn_ref_forward_train(y, save_mean, save_invstd, update ? rs->ref_running_mean : NULL,
                             update ? rs->ref_running_var : NULL,
                             update ? &rs->ref_num_batches_tracked : NULL, x, weight, bias, desc,
                             opt);
        bn_ref_backward_train(dx, dweight, dbias, dy, x, save_mean, save_invstd, weight, desc);
    } else {
        bn_ref_forward_eval(y, x, rs->ref_running_mean, rs->ref_running_var, weight, bias, desc,
                            gc->eps);
        bn_ref_backward_eval(dx, dweight, dbias, dy, x, rs->ref_running_mean,
                             rs->ref_running_var, weight, desc, gc->eps);
    }
    if (gc->track && gc->dtype == BN_FLOAT32)
        for (int64_t k = 0; k < c; k++) {
            rs->ref_running_mean[k] = (float)rs->ref_running_mean[k];
            rs->ref_running_var[k] = (float)rs->ref_running_var[k];
        }
    compare_reference(gc, step, s, "reference y", y, Y, s->numel);
    compare_reference(gc, step, s, "reference dx", dx, DX, s->numel);
    if (gc->affine) {
        compare_reference(gc, step, s, "reference dweight", dweight, DWEIGHT, c);
        compare_reference(gc, step, s, "reference dbias", dbias, DBIAS, c);
    }
    if (batch_stats && s->a[SAVE_MEAN]) {
        compare_reference(gc, step, s, "reference save_mean", save_mean, SAVE_MEAN, c);
        compare_reference(gc, step, s, "reference save_invstd", save_invstd, SAVE_INVSTD, c);
    }
    if (gc->track) {
        compare_reference(gc, step, s, "reference running_mean", rs->ref_running_mean, RM_AFTER,
                          c);
        compare_reference(gc, step, s, "reference running_var", rs->ref_running_var, RV_AFTER, c);
        CHECK_MSG(rs->ref_num_batches_tracked == s->nbt_after,
                  "golden %s step %d: the reference's num_batches_tracked %lld, torch %lld",
                  gc->name, step, (long long)rs->ref_num_batches_tracked,
                  (long long)s->nbt_after);
    }
    free(y), free(dx), free(dweight), free(dbias), free(save_mean), free(save_invstd);
}

static void replay_step(const golden_case *gc, int step, const golden_step *s, replay_state *rs) {
    const bn_dtype dt = gc->dtype, pt = gc->pdtype;
    /* bf16 cases start each step from torch's running statistics: its bfloat16 kernel and the
     * library round them differently, and a unit apart in the mean moves a whole eval output */
    if (gc->track && (!rs->started || dt == BN_BFLOAT16)) {
        free(rs->running_mean), free(rs->running_var);
        free(rs->ref_running_mean), free(rs->ref_running_var);
        rs->running_mean = tu_to_dtype(s->a[RM_BEFORE], gc->c, pt);
        rs->running_var = tu_to_dtype(s->a[RV_BEFORE], gc->c, pt);
        rs->num_batches_tracked = s->nbt_before;
        rs->ref_running_mean = tu_to_double(s->a[RM_BEFORE], gc->c, BN_FLOAT64);
        rs->ref_running_var = tu_to_double(s->a[RV_BEFORE], gc->c, BN_FLOAT64);
        rs->ref_num_batches_tracked = s->nbt_before;
    }
    rs->started = 1;

    bn_desc desc;
    if (!call_ok(gc, step, "bn_desc_from_dims",
                 bn_desc_from_dims(&desc, s->ndim, s->dims, dt, gc->layout))) {
        rs->broken = 1;
        return;
    }
    desc.params = pt == dt ? BN_PARAMS_AS_TENSOR : BN_PARAMS_FLOAT32;
    bn_options opt = BN_OPTIONS_DEFAULT;
    opt.eps = gc->eps;
    opt.momentum = gc->momentum;
    opt.cumulative = gc->cumulative;
    replay_reference(gc, step, s, rs, &desc, &opt);

    void *x = tu_to_dtype(s->a[X], s->numel, dt);
    void *dy = tu_to_dtype(s->a[DY], s->numel, dt);
    void *weight = gc->affine ? tu_to_dtype(gc->weight, gc->c, pt) : NULL;
    void *bias = gc->affine ? tu_to_dtype(gc->bias, gc->c, pt) : NULL;
    const size_t esize = dtype_size(dt), psize = dtype_size(pt);
    size_t numel = (size_t)(s->numel > 0 ? s->numel : 1);
    void *y = calloc(numel, esize);
    void *dx = calloc(numel, esize);
    void *dweight = gc->affine ? calloc((size_t)gc->c, psize) : NULL;
    void *dbias = gc->affine ? calloc((size_t)gc->c, psize) : NULL;
    double *save_mean = calloc((size_t)gc->c, sizeof(double));
    double *save_invstd = calloc((size_t)gc->c, sizeof(double));

    int batch_stats = s->train || !gc->track; /* torch: no running statistics, batch ones */
    int ok;
    if (batch_stats) {
        /* running statistics are only updated by training steps; an eval step without tracked
         * statistics normalizes with the batch's own */
        int update = s->train && gc->track;
        ok = call_ok(gc, step, "bn_forward_train",
                     bn_forward_train(y, save_mean, save_invstd,
                                      update ? rs->running_mean : NULL,
                                      update ? rs->running_var : NULL,
                                      update ? &rs->num_batches_tracked : NULL, x, weight, bias,
                                      &desc, &opt)) &&
             call_ok(gc, step, "bn_backward_train",
                     bn_backward_train(dx, dweight, dbias, dy, x, save_mean, save_invstd, weight,
                                       &desc));
    } else {
        ok = call_ok(gc, step, "bn_forward_eval",
                     bn_forward_eval(y, x, rs->running_mean, rs->running_var, weight, bias, &desc,
                                     gc->eps)) &&
             call_ok(gc, step, "bn_backward_eval",
                     bn_backward_eval(dx, dweight, dbias, dy, x, rs->running_mean,
                                      rs->running_var, weight, &desc, gc->eps));
    }

    if (ok) {
        compare(gc, step, s, "y", y, dt, Y, s->numel);
        compare(gc, step, s, "dx", dx, dt, DX, s->numel);
        if (gc->affine) {
            compare(gc, step, s, "dweight", dweight, pt, DWEIGHT, gc->c);
            compare(gc, step, s, "dbias", dbias, pt, DBIAS, gc->c);
        }
        if (batch_stats && s->a[SAVE_MEAN]) {
            compare(gc, step, s, "save_mean", save_mean, BN_FLOAT64, SAVE_MEAN, gc->c);
            compare(gc, step, s, "save_invstd", save_invstd, BN_FLOAT64, SAVE_INVSTD, gc->c);
        }
        if (gc->track) {
            compare(gc, step, s, "running_mean", rs->running_mean, pt, RM_AFTER, gc->c);
            compare(gc, step, s, "running_var", rs->running_var, pt, RV_AFTER, gc->c);
            CHECK_MSG(rs->num_batches_tracked == s->nbt_after,
                      "golden %s step %d (%s): num_batches_tracked %lld, torch %lld", gc->name,
                      step, s->train ? "train" : "eval", (long long)rs->num_batches_tracked,
                      (long long)s->nbt_after);
        }
    } else {
        rs->broken = 1;
    }

    free(x);
    free(dy);
    free(weight);
    free(bias);
    free(y);
    free(dx);
    free(dweight);
    free(dbias);
    free(save_mean);
    free(save_invstd);
}

/* ---------------------------------------------------------------------------------------------
 * The file. */

/* The whole file, NUL-terminated, or NULL with errno set. Caller frees. */
static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        len += fread(buf + len, 1, cap - 1 - len, f);
        if (len < cap - 1) break;
        char *bigger = realloc(buf, cap * 2);
        if (!bigger) {
            free(buf);
            buf = NULL;
            errno = ENOMEM;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    if (buf && ferror(f)) {
        free(buf);
        buf = NULL;
        errno = EIO;
    }
    fclose(f);
    if (buf) buf[len] = '\0';
    return buf;
}

/* Reads and replays every case; returns the number of cases, or -1 after a format error (left
 * in r->msg). Each case is replayed as soon as its steps are read, so memory stays small. */
static int replay_file(reader *r) {
    int64_t version;
    if (!expect_word(r, "bnorm-golden") || !read_int64(r, &version)) return -1;
    if (version != 1) {
        reader_fail(r, "format version %lld, expected 1", (long long)version);
        return -1;
    }

    int n_cases = 0;
    char word[64];
    for (;;) {
        if (!read_word(r, word, sizeof word)) return -1;
        if (strcmp(word, "end") == 0) break;
        if (strcmp(word, "case") != 0) {
            reader_fail(r, "expected case or end, got \"%s\"", word);
            return -1;
        }

        golden_case gc;
        memset(&gc, 0, sizeof gc);
        replay_state rs;
        memset(&rs, 0, sizeof rs);
        int ok = read_case_header(r, &gc);
        int n_steps = 0;
        while (ok) {
            if (!read_word(r, word, sizeof word)) {
                ok = 0;
            } else if (strcmp(word, "endcase") == 0) {
                break;
            } else if (strcmp(word, "step") != 0) {
                ok = reader_fail(r, "expected step or endcase, got \"%s\"", word);
            } else {
                golden_step s;
                memset(&s, 0, sizeof s);
                ok = read_step(r, &gc, &s);
                if (ok && !rs.broken) replay_step(&gc, n_steps, &s, &rs);
                n_steps++;
                step_free(&s);
            }
        }
        if (ok && n_steps == 0) ok = reader_fail(r, "case %s has no steps", gc.name);
        free(rs.running_mean);
        free(rs.running_var);
        free(rs.ref_running_mean);
        free(rs.ref_running_var);
        case_free(&gc);
        if (!ok) return -1;
        n_cases++;
    }
    skip_space(r);
    if (*r->p) {
        reader_fail(r, "text after end");
        return -1;
    }
    return n_cases;
}

BN_SUITE(suite_golden) {
    const char *path = getenv("BNORM_GOLDEN");
    if (!path || !*path) path = GOLDEN_DEFAULT_PATH;
    char *text = slurp(path);
    if (!CHECK_MSG(text != NULL,
                   "golden: cannot read %s: %s (run from the repo root, or set BNORM_GOLDEN; "
                   "tests/golden/make_golden.py writes it)",
                   path, strerror(errno)))
        return;
    reader r;
    memset(&r, 0, sizeof r);
    r.p = text;
    r.end = text + strlen(text);
    r.line = 1;
    int n_cases = replay_file(&r);
    CHECK_MSG(n_cases > 0, "golden: %s: %s", path,
              r.failed ? r.msg : "no cases");
    free(text);
}
