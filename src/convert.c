/* convert.c - bn_convert: values from one element type to another, by half.h's conversions
 * (between float32 and float64 by C's, which rounds to nearest even). A 16-bit value goes to
 * float32 exactly (a bfloat16 bit for bit, a float16 NaN made quiet), to float64 through
 * float32. */
#include "bnorm.h"
#include "half.h"
#include "validate.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static size_t type_size(bn_dtype t) {
    switch (t) {
    case BN_FLOAT32: return 4;
    case BN_FLOAT64: return 8;
    case BN_BFLOAT16:
    case BN_FLOAT16: return 2;
    default: return 0;
    }
}

/* Value i of src, of a type other than double, as a float: exact. */
static float load_float(const void *src, bn_dtype t, int64_t i) {
    switch (t) {
    case BN_FLOAT32: return ((const float *)src)[i];
    case BN_BFLOAT16: return bn_bf16_to_float(((const uint16_t *)src)[i]);
    default: return bn_f16_to_float(((const uint16_t *)src)[i]);
    }
}

/* f stored as value i of dst, of a type other than float: rounded once, or widened. */
static void store_float(void *dst, bn_dtype t, int64_t i, float f) {
    switch (t) {
    case BN_FLOAT64: ((double *)dst)[i] = f; break;
    case BN_BFLOAT16: ((uint16_t *)dst)[i] = bn_float_to_bf16(f); break;
    default: ((uint16_t *)dst)[i] = bn_float_to_f16(f); break;
    }
}

/* d stored as value i of dst, of a type other than double: rounded once. */
static void store_double(void *dst, bn_dtype t, int64_t i, double d) {
    switch (t) {
    case BN_FLOAT32: ((float *)dst)[i] = (float)d; break;
    case BN_BFLOAT16: ((uint16_t *)dst)[i] = bn_double_to_bf16(d); break;
    default: ((uint16_t *)dst)[i] = bn_double_to_f16(d); break;
    }
}

bn_status bn_convert(void *dst, bn_dtype dst_dtype, const void *src, bn_dtype src_dtype,
                     int64_t count) {
    const size_t dsize = type_size(dst_dtype), ssize = type_size(src_dtype);
    BN_RETURN_IF(dsize == 0 || ssize == 0, BN_ERR_UNSUPPORTED);
    BN_RETURN_IF(count < 0, BN_ERR_SHAPE);
    if (count == 0) return BN_OK;
    BN_RETURN_IF(!dst || !src, BN_ERR_NULL_POINTER);
    BN_RETURN_IF((uint64_t)count > (uint64_t)PTRDIFF_MAX / (dsize > ssize ? dsize : ssize),
                 BN_ERR_TOO_LARGE);
    const uintptr_t d0 = (uintptr_t)dst, s0 = (uintptr_t)src;
    const uintptr_t d1 = d0 + (uintptr_t)count * dsize, s1 = s0 + (uintptr_t)count * ssize;
    const int same = d0 == s0 && dsize == ssize;
    BN_RETURN_IF(!same && d0 < s1 && s0 < d1, BN_ERR_ARGUMENT);
    if (dst_dtype == src_dtype) {
        if (!same) memcpy(dst, src, (size_t)count * dsize);
        return BN_OK;
    }
    /* every value but a double is a float exactly: it rounds once from there */
    if (src_dtype == BN_FLOAT64)
        for (int64_t i = 0; i < count; i++)
            store_double(dst, dst_dtype, i, ((const double *)src)[i]);
    else if (dst_dtype == BN_FLOAT32)
        for (int64_t i = 0; i < count; i++) ((float *)dst)[i] = load_float(src, src_dtype, i);
    else
        for (int64_t i = 0; i < count; i++)
            store_float(dst, dst_dtype, i, load_float(src, src_dtype, i));
    return BN_OK;
}
