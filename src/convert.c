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

/* The conversions half.h and C do not name as functions of one value: float16 <-> bfloat16
 * through float (rounded once), the 16-bit types to double through float (exact), and C's. */
static inline uint16_t f16_to_bf16(uint16_t h) { return bn_float_to_bf16(bn_f16_to_float(h)); }
static inline uint16_t bf16_to_f16(uint16_t h) { return bn_float_to_f16(bn_bf16_to_float(h)); }
static inline double f16_to_double(uint16_t h) { return bn_f16_to_float(h); }
static inline double bf16_to_double(uint16_t h) { return bn_bf16_to_float(h); }
static inline float double_to_float(double d) { return (float)d; }
static inline double float_to_double(float f) { return f; }

/* dst[i] = f(src[i]) for the count values, the pair of types chosen once, outside the loop. */
#define EACH(D, S, f)                                                                      \
    do {                                                                                   \
        for (int64_t i = 0; i < count; i++) ((D *)dst)[i] = f(((const S *)src)[i]);       \
    } while (0)

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
    /* each conversion rounds at most once: every value but a double is a float exactly */
    switch (src_dtype * 4 + dst_dtype) {
    case BN_FLOAT32 * 4 + BN_FLOAT64: EACH(double, float, float_to_double); break;
    case BN_FLOAT32 * 4 + BN_BFLOAT16: EACH(uint16_t, float, bn_float_to_bf16); break;
    case BN_FLOAT32 * 4 + BN_FLOAT16: EACH(uint16_t, float, bn_float_to_f16); break;
    case BN_FLOAT64 * 4 + BN_FLOAT32: EACH(float, double, double_to_float); break;
    case BN_FLOAT64 * 4 + BN_BFLOAT16: EACH(uint16_t, double, bn_double_to_bf16); break;
    case BN_FLOAT64 * 4 + BN_FLOAT16: EACH(uint16_t, double, bn_double_to_f16); break;
    case BN_BFLOAT16 * 4 + BN_FLOAT32: EACH(float, uint16_t, bn_bf16_to_float); break;
    case BN_BFLOAT16 * 4 + BN_FLOAT64: EACH(double, uint16_t, bf16_to_double); break;
    case BN_BFLOAT16 * 4 + BN_FLOAT16: EACH(uint16_t, uint16_t, bf16_to_f16); break;
    case BN_FLOAT16 * 4 + BN_FLOAT32: EACH(float, uint16_t, bn_f16_to_float); break;
    case BN_FLOAT16 * 4 + BN_FLOAT64: EACH(double, uint16_t, f16_to_double); break;
    default: EACH(uint16_t, uint16_t, f16_to_bf16); break; /* float16 -> bfloat16 */
    }
    return BN_OK;
}
