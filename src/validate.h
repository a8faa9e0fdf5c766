/* validate.h - argument checks shared by every entry point; nothing is written before they pass. */
#ifndef BN_VALIDATE_H
#define BN_VALIDATE_H

#include "bnorm.h"

#define BN_RETURN_IF(cond, status) \
    do {                           \
        if (cond) return (status); \
    } while (0)

#define BN_RETURN_IF_ERROR(expr)              \
    do {                                      \
        bn_status bn_status_ = (expr);        \
        if (bn_status_ != BN_OK) return bn_status_; \
    } while (0)

/* Bytes per element of a supported dtype, 0 for any other value. */
size_t bn_dtype_size(bn_dtype dtype);

/* The dtype of desc's per-channel arrays (desc checked). */
bn_dtype bn_param_dtype(const bn_desc *desc);

/* Sizes non-negative, C >= 1, n*c*s and its byte count representable; dtype, layout and
 * parameters' type known, and a pair the library has (no float32 parameters of float64). */
bn_status bn_check_desc(const bn_desc *desc);

/* eps finite and >= 0. */
bn_status bn_check_eps(double eps);

/* eps as bn_check_eps, momentum in [0, 1] unless cumulative, reserved words 0. */
bn_status bn_check_options(const bn_options *opt);

/* Number of values per channel, n * s (bn_check_desc has ruled out overflow). */
static inline int64_t bn_count(const bn_desc *desc) { return desc->n * desc->s; }

/* The descriptor the kernels see: a tensor with one position per sample ((N, C), or any S = 1)
 * is the same memory in both layouts, and channels-last serves it with vectors across C. */
static inline bn_desc bn_kernel_desc(const bn_desc *desc) {
    bn_desc d = *desc;
    if (d.s == 1) d.layout = BN_CHANNELS_LAST;
    return d;
}

/* A tensor pointer may be NULL only when the tensor is empty (torch gives empty tensors none). */
static inline int bn_tensor_missing(const void *p, const bn_desc *desc) {
    return !p && desc->n * desc->c * desc->s != 0;
}

#endif
