/* validate.c - descriptor and scalar checks, with overflow-checked size arithmetic. */
#include "validate.h"

#include <math.h>
#include <stdint.h>

size_t bn_dtype_size(bn_dtype dtype) {
    switch (dtype) {
    case BN_FLOAT32: return 4;
    case BN_FLOAT64: return 8;
    case BN_BFLOAT16:
    case BN_FLOAT16: return 2;
    default: return 0;
    }
}

/* *out = a * b for a, b >= 0; returns 0 on overflow past INT64_MAX. */
static int mul_nonneg(int64_t a, int64_t b, int64_t *out) {
    if (a != 0 && b > INT64_MAX / a) return 0;
    *out = a * b;
    return 1;
}

static bn_status check_total(int64_t n, int64_t c, int64_t s, bn_dtype dtype) {
    int64_t elems, total, bytes;
    BN_RETURN_IF(!mul_nonneg(n, c, &elems) || !mul_nonneg(elems, s, &total), BN_ERR_TOO_LARGE);
    BN_RETURN_IF(!mul_nonneg(total, (int64_t)bn_dtype_size(dtype), &bytes), BN_ERR_TOO_LARGE);
    BN_RETURN_IF((uint64_t)bytes > (uint64_t)PTRDIFF_MAX, BN_ERR_TOO_LARGE);
    return BN_OK;
}

static bn_status check_kind(bn_dtype dtype, bn_layout layout) {
    BN_RETURN_IF(bn_dtype_size(dtype) == 0, BN_ERR_UNSUPPORTED);
    BN_RETURN_IF(layout != BN_CHANNELS_FIRST && layout != BN_CHANNELS_LAST, BN_ERR_UNSUPPORTED);
    return BN_OK;
}

bn_dtype bn_param_dtype(const bn_desc *desc) {
    return desc->params == BN_PARAMS_FLOAT32 ? BN_FLOAT32 : desc->dtype;
}

bn_status bn_check_desc(const bn_desc *desc) {
    BN_RETURN_IF(!desc, BN_ERR_NULL_POINTER);
    BN_RETURN_IF_ERROR(check_kind(desc->dtype, desc->layout));
    BN_RETURN_IF(desc->params != BN_PARAMS_AS_TENSOR && desc->params != BN_PARAMS_FLOAT32,
                 BN_ERR_UNSUPPORTED);
    BN_RETURN_IF(desc->params == BN_PARAMS_FLOAT32 && desc->dtype == BN_FLOAT64,
                 BN_ERR_UNSUPPORTED);
    BN_RETURN_IF(desc->n < 0 || desc->c < 1 || desc->s < 0, BN_ERR_SHAPE);
    return check_total(desc->n, desc->c, desc->s, desc->dtype);
}

bn_status bn_check_eps(double eps) {
    BN_RETURN_IF(!isfinite(eps) || eps < 0, BN_ERR_ARGUMENT);
    return BN_OK;
}

static int in_unit(double v) { return v >= 0 && v <= 1; }

bn_status bn_check_options(const bn_options *opt) {
    enum { KNOWN = BN_MOMENTUM_OF_OLD | BN_BIASED_RUNNING_VAR | BN_RUNNING_SUMS | BN_FIX_GAMMA |
                   BN_ONE_VALUE_OK | BN_STORED_STATS | BN_FREEZE_RUNNING };
    BN_RETURN_IF(!opt, BN_ERR_NULL_POINTER);
    BN_RETURN_IF_ERROR(bn_check_eps(opt->eps));
    BN_RETURN_IF(!opt->cumulative && !in_unit(opt->momentum), BN_ERR_ARGUMENT);
    BN_RETURN_IF(opt->flags & ~KNOWN, BN_ERR_ARGUMENT);
    BN_RETURN_IF(opt->cumulative && (opt->flags & BN_RUNNING_SUMS), BN_ERR_ARGUMENT);
    BN_RETURN_IF(opt->virtual_batch < 0, BN_ERR_ARGUMENT);
    BN_RETURN_IF(!in_unit(opt->renorm_momentum), BN_ERR_ARGUMENT);
    BN_RETURN_IF(!(opt->rmin >= 0 && opt->rmax >= opt->rmin && opt->dmax >= 0), BN_ERR_ARGUMENT);
    BN_RETURN_IF(opt->reserved != 0, BN_ERR_ARGUMENT);
    return BN_OK;
}

bn_status bn_desc_from_dims(bn_desc *desc, int ndim, const int64_t *dims, bn_dtype dtype,
                            bn_layout layout) {
    BN_RETURN_IF(!desc || !dims, BN_ERR_NULL_POINTER);
    BN_RETURN_IF_ERROR(check_kind(dtype, layout));
    BN_RETURN_IF(ndim < 2, BN_ERR_SHAPE);
    for (int k = 0; k < ndim; k++) BN_RETURN_IF(dims[k] < 0, BN_ERR_SHAPE);
    BN_RETURN_IF(dims[1] < 1, BN_ERR_SHAPE);
    /* s = the product of dims[2..]: 0 when any of them is 0, however large the others */
    int64_t s = 1;
    for (int k = 2; k < ndim; k++)
        if (dims[k] == 0) s = 0;
    for (int k = 2; k < ndim && s != 0; k++)
        BN_RETURN_IF(!mul_nonneg(s, dims[k], &s), BN_ERR_TOO_LARGE);
    BN_RETURN_IF_ERROR(check_total(dims[0], dims[1], s, dtype));
    desc->n = dims[0];
    desc->c = dims[1];
    desc->s = s;
    desc->dtype = dtype;
    desc->layout = layout;
    desc->params = BN_PARAMS_AS_TENSOR;
    return BN_OK;
}
