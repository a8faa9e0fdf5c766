/* test_errors.c - every way a call can fail: its status, and that nothing was written. */
#include "check.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

enum { N = 4, C = 3, S = 5, M = N * C * S };

/* Every buffer a call could write, filled with a sentinel so that any write shows. */
typedef struct {
    float y[M], dx[M], dweight[C], dbias[C], running_mean[C], running_var[C];
    double save_mean[C], save_invstd[C];
    int64_t nbt;
} outputs;

static void fill(outputs *o) {
    memset(o, 0x5A, sizeof *o);
}

static int untouched(const outputs *o) {
    outputs ref;
    fill(&ref);
    return memcmp(o, &ref, sizeof ref) == 0;
}

static float x[M], dy[M], weight[C], bias[C], rm[C] = {0, 0, 0}, rv[C] = {1, 1, 1};
static double sm[C] = {0, 0, 0}, si[C] = {1, 1, 1};

/* Calls the training forward with every output pointing at o; returns its status. */
static bn_status train(outputs *o, const bn_desc *d, const bn_options *opt, int with_x,
                       int with_nbt) {
    return bn_forward_train(o->y, o->save_mean, o->save_invstd, o->running_mean, o->running_var,
                            with_nbt ? &o->nbt : NULL, with_x ? x : NULL, weight, bias, d, opt);
}

#define EXPECT_FAIL(call, want)                                                 \
    do {                                                                        \
        outputs o_;                                                             \
        fill(&o_);                                                              \
        outputs *o = &o_;                                                       \
        CHECK_STATUS(call, want);                                               \
        CHECK_MSG(untouched(o), "%s wrote something although it failed", #call); \
    } while (0)

BN_SUITE(suite_errors_forward) {
    for (int k = 0; k < M; k++) x[k] = dy[k] = (float)(k % 7);
    for (int k = 0; k < C; k++) weight[k] = 1, bias[k] = 0;
    const bn_desc good = tu_desc(N, C, S, BN_FLOAT32, BN_CHANNELS_FIRST);
    const bn_options opt = BN_OPTIONS_DEFAULT;

    /* null pointers */
    EXPECT_FAIL(train(o, NULL, &opt, 1, 1), BN_ERR_NULL_POINTER);
    EXPECT_FAIL(train(o, &good, NULL, 1, 1), BN_ERR_NULL_POINTER);
    EXPECT_FAIL(train(o, &good, &opt, 0, 1), BN_ERR_NULL_POINTER);
    EXPECT_FAIL(bn_forward_train(NULL, NULL, NULL, NULL, NULL, NULL, x, NULL, NULL, &good, &opt),
                BN_ERR_NULL_POINTER);
    bn_options cum = tu_options(1e-5, 0.1, 1);
    EXPECT_FAIL(train(o, &good, &cum, 1, 0), BN_ERR_NULL_POINTER);

    /* shapes */
    const bn_desc bad_shapes[] = {
        {-1, C, S, BN_FLOAT32, BN_CHANNELS_FIRST, BN_PARAMS_AS_TENSOR}, {N, 0, S, BN_FLOAT32, BN_CHANNELS_FIRST, BN_PARAMS_AS_TENSOR},
        {N, -3, S, BN_FLOAT32, BN_CHANNELS_FIRST, BN_PARAMS_AS_TENSOR}, {N, C, -1, BN_FLOAT32, BN_CHANNELS_LAST, BN_PARAMS_AS_TENSOR},
        {INT64_MIN, C, S, BN_FLOAT64, BN_CHANNELS_FIRST, BN_PARAMS_AS_TENSOR}};
    for (size_t k = 0; k < sizeof bad_shapes / sizeof bad_shapes[0]; k++)
        EXPECT_FAIL(train(o, &bad_shapes[k], &opt, 1, 1), BN_ERR_SHAPE);
    const bn_desc too_large[] = {
        {INT64_C(1) << 22, INT64_C(1) << 22, INT64_C(1) << 22, BN_FLOAT32, BN_CHANNELS_FIRST, BN_PARAMS_AS_TENSOR},
        {INT64_C(1) << 31, INT64_C(1) << 31, 2, BN_FLOAT32, BN_CHANNELS_FIRST, BN_PARAMS_AS_TENSOR}, /* 2^63 elements */
        {INT64_C(1) << 30, INT64_C(1) << 30, 4, BN_FLOAT64, BN_CHANNELS_FIRST, BN_PARAMS_AS_TENSOR}, /* 2^65 bytes */
        {INT64_MAX, 2, 1, BN_FLOAT32, BN_CHANNELS_LAST, BN_PARAMS_AS_TENSOR}};
    for (size_t k = 0; k < sizeof too_large / sizeof too_large[0]; k++)
        EXPECT_FAIL(train(o, &too_large[k], &opt, 1, 1), BN_ERR_TOO_LARGE);

    /* kinds */
    bn_desc bad_dtype = good, bad_layout = good;
    bad_dtype.dtype = (bn_dtype)7;
    bad_layout.layout = (bn_layout)-1;
    EXPECT_FAIL(train(o, &bad_dtype, &opt, 1, 1), BN_ERR_UNSUPPORTED);
    EXPECT_FAIL(train(o, &bad_layout, &opt, 1, 1), BN_ERR_UNSUPPORTED);
    /* the parameters' type: a value not defined, and float32 parameters of a float64 tensor */
    bn_desc bad_params = good, f64_with_f32 = good;
    bad_params.params = (bn_params)2;
    f64_with_f32.dtype = BN_FLOAT64, f64_with_f32.params = BN_PARAMS_FLOAT32;
    EXPECT_FAIL(train(o, &bad_params, &opt, 1, 1), BN_ERR_UNSUPPORTED);
    EXPECT_FAIL(train(o, &f64_with_f32, &opt, 1, 1), BN_ERR_UNSUPPORTED);
    EXPECT_FAIL(bn_forward_eval(o->y, x, rm, rv, NULL, NULL, &f64_with_f32, 1e-5),
                BN_ERR_UNSUPPORTED);

    /* scalars */
    const double bad_eps[] = {-1e-5, NAN, INFINITY, -INFINITY};
    for (size_t k = 0; k < 4; k++) {
        bn_options e = tu_options(bad_eps[k], 0.1, 0);
        EXPECT_FAIL(train(o, &good, &e, 1, 1), BN_ERR_ARGUMENT);
        EXPECT_FAIL(bn_forward_eval(o->y, x, rm, rv, NULL, NULL, &good, bad_eps[k]), BN_ERR_ARGUMENT);
        EXPECT_FAIL(bn_backward_eval(o->dx, o->dweight, o->dbias, dy, x, rm, rv, NULL, &good,
                                     bad_eps[k]),
                    BN_ERR_ARGUMENT);
    }
    const double bad_momentum[] = {-0.1, 1.5, NAN, INFINITY};
    for (size_t k = 0; k < 4; k++) {
        bn_options mo = tu_options(1e-5, bad_momentum[k], 0);
        EXPECT_FAIL(train(o, &good, &mo, 1, 1), BN_ERR_ARGUMENT);
    }
    {   /* an undefined flag, a reserved word not zero, options out of range */
        bn_options bad[9];
        for (int k = 0; k < 9; k++) bad[k] = (bn_options)BN_OPTIONS_DEFAULT;
        bad[0].flags = 1 << 20;
        bad[1].reserved = -1;
        bad[2].virtual_batch = -1;
        bad[3].renorm_momentum = 1.5;
        bad[4].rmin = -1;
        bad[5].rmax = 0.5, bad[5].rmin = 1;
        bad[6].dmax = -0.1;
        bad[7].dmax = NAN;
        bad[8].cumulative = 1, bad[8].flags = BN_RUNNING_SUMS;
        for (int k = 0; k < 9; k++) EXPECT_FAIL(train(o, &good, &bad[k], 1, 1), BN_ERR_ARGUMENT);
    }
    {   /* the cumulative average ignores momentum */
        outputs o;
        fill(&o);
        o.nbt = 0;
        bn_options c2 = tu_options(1e-5, 5.0, 1);
        CHECK_STATUS(train(&o, &good, &c2, 1, 1), BN_OK);
        CHECK(o.nbt == 1);
    }

    /* counts */
    const bn_desc single = {1, C, 1, BN_FLOAT32, BN_CHANNELS_FIRST, BN_PARAMS_AS_TENSOR};
    EXPECT_FAIL(train(o, &single, &opt, 1, 1), BN_ERR_COUNT);
    const bn_desc single_last = {1, C, 1, BN_FLOAT32, BN_CHANNELS_LAST, BN_PARAMS_AS_TENSOR};
    EXPECT_FAIL(train(o, &single_last, &opt, 1, 1), BN_ERR_COUNT);
    {   /* the counter cannot overflow */
        outputs o;
        fill(&o);
        o.nbt = INT64_MAX;
        outputs before = o;
        CHECK_STATUS(train(&o, &good, &opt, 1, 1), BN_ERR_TOO_LARGE);
        CHECK(memcmp(&o, &before, sizeof o) == 0);
    }

    /* eval: stored statistics are required */
    EXPECT_FAIL(bn_forward_eval(o->y, x, NULL, rv, NULL, NULL, &good, 1e-5), BN_ERR_NULL_POINTER);
    EXPECT_FAIL(bn_forward_eval(o->y, x, rm, NULL, NULL, NULL, &good, 1e-5), BN_ERR_NULL_POINTER);
    EXPECT_FAIL(bn_forward_eval(o->y, NULL, rm, rv, NULL, NULL, &good, 1e-5), BN_ERR_NULL_POINTER);
    EXPECT_FAIL(bn_forward_eval(NULL, x, rm, rv, NULL, NULL, &good, 1e-5), BN_ERR_NULL_POINTER);
    EXPECT_FAIL(bn_forward_eval(o->y, x, rm, rv, NULL, NULL, NULL, 1e-5), BN_ERR_NULL_POINTER);
    EXPECT_FAIL(bn_forward_eval(o->y, x, rm, rv, NULL, NULL, &bad_shapes[1], 1e-5), BN_ERR_SHAPE);
}

BN_SUITE(suite_errors_backward) {
    const bn_desc good = tu_desc(N, C, S, BN_FLOAT32, BN_CHANNELS_LAST);
    const bn_desc bad = tu_desc(N, C, -S, BN_FLOAT32, BN_CHANNELS_LAST);
    EXPECT_FAIL(bn_backward_train(o->dx, o->dweight, o->dbias, dy, x, NULL, si, NULL, &good),
                BN_ERR_NULL_POINTER);
    EXPECT_FAIL(bn_backward_train(o->dx, o->dweight, o->dbias, dy, x, sm, NULL, NULL, &good),
                BN_ERR_NULL_POINTER);
    EXPECT_FAIL(bn_backward_train(o->dx, o->dweight, o->dbias, NULL, x, sm, si, NULL, &good),
                BN_ERR_NULL_POINTER);
    EXPECT_FAIL(bn_backward_train(o->dx, o->dweight, o->dbias, dy, NULL, sm, si, NULL, &good),
                BN_ERR_NULL_POINTER);
    EXPECT_FAIL(bn_backward_train(o->dx, o->dweight, o->dbias, dy, x, sm, si, NULL, NULL),
                BN_ERR_NULL_POINTER);
    EXPECT_FAIL(bn_backward_train(o->dx, o->dweight, o->dbias, dy, x, sm, si, NULL, &bad),
                BN_ERR_SHAPE);
    EXPECT_FAIL(bn_backward_eval(o->dx, o->dweight, o->dbias, dy, x, NULL, rv, NULL, &good, 1e-5),
                BN_ERR_NULL_POINTER);
    EXPECT_FAIL(bn_backward_eval(o->dx, o->dweight, o->dbias, dy, x, rm, NULL, NULL, &good, 1e-5),
                BN_ERR_NULL_POINTER);
    EXPECT_FAIL(bn_backward_eval(o->dx, o->dweight, o->dbias, NULL, x, rm, rv, NULL, &good, 1e-5),
                BN_ERR_NULL_POINTER);
    EXPECT_FAIL(bn_backward_eval(o->dx, o->dweight, o->dbias, dy, x, rm, rv, NULL, &bad, 1e-5),
                BN_ERR_SHAPE);
    bn_desc bad_dtype = good;
    bad_dtype.dtype = (bn_dtype)4;
    EXPECT_FAIL(bn_backward_train(o->dx, o->dweight, o->dbias, dy, x, sm, si, NULL, &bad_dtype),
                BN_ERR_UNSUPPORTED);
    /* every output is optional */
    CHECK_STATUS(bn_backward_train(NULL, NULL, NULL, dy, x, sm, si, NULL, &good), BN_OK);
}

BN_SUITE(suite_errors_desc) {
    const bn_desc sentinel = {11, 22, 33, BN_FLOAT64, BN_CHANNELS_LAST, BN_PARAMS_AS_TENSOR};
    struct { int ndim; int64_t dims[5]; bn_dtype dt; bn_layout lay; bn_status want; } cases[] = {
        {1, {4}, BN_FLOAT32, BN_CHANNELS_FIRST, BN_ERR_SHAPE},
        {0, {0}, BN_FLOAT32, BN_CHANNELS_FIRST, BN_ERR_SHAPE},
        {-2, {0}, BN_FLOAT32, BN_CHANNELS_FIRST, BN_ERR_SHAPE},
        {2, {-1, 3}, BN_FLOAT32, BN_CHANNELS_FIRST, BN_ERR_SHAPE},
        {3, {2, 3, -4}, BN_FLOAT32, BN_CHANNELS_FIRST, BN_ERR_SHAPE},
        {2, {2, 0}, BN_FLOAT32, BN_CHANNELS_FIRST, BN_ERR_SHAPE},
        {5, {1, 1, INT64_C(1) << 32, INT64_C(1) << 32, 2}, BN_FLOAT32, BN_CHANNELS_LAST,
         BN_ERR_TOO_LARGE},
        {4, {INT64_C(1) << 20, INT64_C(1) << 20, INT64_C(1) << 20, 1}, BN_FLOAT64, BN_CHANNELS_FIRST,
         BN_ERR_TOO_LARGE},
        {4, {2, 3, 4, 5}, (bn_dtype)9, BN_CHANNELS_FIRST, BN_ERR_UNSUPPORTED},
        {4, {2, 3, 4, 5}, BN_FLOAT32, (bn_layout)2, BN_ERR_UNSUPPORTED},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        bn_desc d = sentinel;
        CHECK_STATUS(bn_desc_from_dims(&d, cases[k].ndim, cases[k].dims, cases[k].dt, cases[k].lay),
                     cases[k].want);
        CHECK_MSG(d.n == sentinel.n && d.c == sentinel.c && d.s == sentinel.s &&
                      d.dtype == sentinel.dtype && d.layout == sentinel.layout &&
                      d.params == sentinel.params, /* field by field: the padding is nobody's */
                  "case %zu wrote the descriptor", k);
    }
    int64_t dims[5] = {2, 3, 4, 5, 6};
    CHECK_STATUS(bn_desc_from_dims(NULL, 5, dims, BN_FLOAT32, BN_CHANNELS_FIRST), BN_ERR_NULL_POINTER);
    bn_desc d = sentinel;
    CHECK_STATUS(bn_desc_from_dims(&d, 5, NULL, BN_FLOAT32, BN_CHANNELS_FIRST), BN_ERR_NULL_POINTER);
    CHECK_STATUS(bn_desc_from_dims(&d, 5, dims, BN_FLOAT32, BN_CHANNELS_LAST), BN_OK);
    CHECK(d.n == 2 && d.c == 3 && d.s == 120 && d.dtype == BN_FLOAT32 && d.layout == BN_CHANNELS_LAST);
    CHECK_STATUS(bn_desc_from_dims(&d, 2, dims, BN_FLOAT64, BN_CHANNELS_FIRST), BN_OK);
    CHECK(d.n == 2 && d.c == 3 && d.s == 1);
    /* fuzz_api finding: a 0 among the spatial sizes makes an empty tensor, whatever the others */
    int64_t empty_big[6] = {9, 8192, 3, 3, INT64_MAX - 3, 0};
    CHECK_STATUS(bn_desc_from_dims(&d, 6, empty_big, BN_FLOAT32, BN_CHANNELS_FIRST), BN_OK);
    CHECK(d.n == 9 && d.c == 8192 && d.s == 0);
    int64_t empty[3] = {0, 3, 7};
    CHECK_STATUS(bn_desc_from_dims(&d, 3, empty, BN_FLOAT64, BN_CHANNELS_FIRST), BN_OK);
    CHECK(d.n == 0 && d.s == 7);
}

BN_SUITE(suite_errors_strings) {
    const bn_status all[] = {BN_OK, BN_ERR_NULL_POINTER, BN_ERR_SHAPE, BN_ERR_TOO_LARGE,
                             BN_ERR_ARGUMENT, BN_ERR_COUNT, BN_ERR_UNSUPPORTED, BN_ERR_IO,
                             BN_ERR_FORMAT, BN_ERR_NO_MEMORY, BN_ERR_NOT_FINITE};
    const int n = (int)(sizeof all / sizeof all[0]);
    for (int a = 0; a < n; a++) {
        CHECK(all[a] == -a); /* pinned values */
        const char *s = bn_status_string(all[a]);
        CHECK_MSG(s && *s && strcmp(s, "unknown status") != 0, "status %d has no message", all[a]);
        for (int b = 0; b < a; b++) CHECK(strcmp(s, bn_status_string(all[b])) != 0);
    }
    CHECK(strcmp(bn_status_string((bn_status)-1000), "unknown status") == 0);
    CHECK(strcmp(bn_status_string((bn_status)1), "unknown status") == 0);
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", BN_VERSION_MAJOR, BN_VERSION_MINOR, BN_VERSION_PATCH);
    CHECK(strcmp(bn_version_string(), want) == 0);
    CHECK(BN_VERSION_NUMBER == BN_VERSION_MAJOR * 10000 + BN_VERSION_MINOR * 100 + BN_VERSION_PATCH);
}
