/* finite.c - bn_check_finite: where the first NaN or infinity of a tensor is, if it has one. */
#include "validate.h"

#include <math.h>

/* Offset of the first value of x[0 .. count-1] that is not finite, or count. */
#define BN_FIRST_NONFINITE(T)                                                       \
    static int64_t first_nonfinite_##T(const T *x, int64_t count) {                 \
        for (int64_t k = 0; k < count; k++)                                         \
            if (!isfinite(x[k])) return k;                                          \
        return count;                                                               \
    }
BN_FIRST_NONFINITE(float)
BN_FIRST_NONFINITE(double)

/* The same for 16-bit values, whose exponent bits (mask) are all set exactly for NaN and inf. */
static int64_t first_nonfinite_16(const uint16_t *x, int64_t count, uint16_t mask) {
    for (int64_t k = 0; k < count; k++)
        if ((x[k] & mask) == mask) return k;
    return count;
}

bn_status bn_check_finite(int64_t *channel, int64_t *index, const void *x, const bn_desc *desc) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF(bn_tensor_missing(x, desc), BN_ERR_NULL_POINTER);
    const int64_t count = desc->n * desc->c * desc->s; /* x: (N, C, S) in desc's layout */
    int64_t k;
    switch (desc->dtype) {
    case BN_FLOAT32: k = first_nonfinite_float(x, count); break;
    case BN_FLOAT64: k = first_nonfinite_double(x, count); break;
    case BN_BFLOAT16: k = first_nonfinite_16(x, count, 0x7f80); break;
    case BN_FLOAT16: k = first_nonfinite_16(x, count, 0x7c00); break;
    default: return BN_ERR_UNSUPPORTED; /* bn_check_desc has refused it already */
    }
    if (k == count) return BN_OK;
    if (channel)
        *channel = desc->layout == BN_CHANNELS_LAST ? k % desc->c : k / desc->s % desc->c;
    if (index) *index = k;
    return BN_ERR_NOT_FINITE;
}
