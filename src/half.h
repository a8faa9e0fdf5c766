/* half.h - the two 16-bit storage types, bfloat16 and IEEE binary16 (float16), and their
 * portable conversions: the specification every faster conversion must match bit for bit.
 *
 *   bfloat16: 1 sign, 8 exponent, 7 fraction bits: the top half of a float32.
 *   float16:  1 sign, 5 exponent (bias 15), 10 fraction bits; largest finite 65504, smallest
 *             normal 2^-14, smallest subnormal 2^-24.
 *
 * Widening (to float, and so to double) is exact: a bfloat16 keeps every bit, NaNs too; a
 * float16 NaN keeps its sign and payload and comes out quiet (as F16C's VCVTPH2PS and PyTorch
 * give it). Narrowing rounds once, to nearest with ties to even, subnormals kept (nothing
 * flushed), overflow to infinity; a NaN becomes 0x7FC0 in bfloat16 (c10::BFloat16's scalar
 * NaN; PyTorch's vectorized conversion gives 0xFFFF) and sign | 0x7E00 in float16 (c10::Half's). From double the rounding is also single:
 * the double is first rounded to odd in float (24 bits, 16 and 13 more than the targets keep,
 * so no tie can be made or broken there), then to nearest even. */
#ifndef BN_HALF_H
#define BN_HALF_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t bn_float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float bn_bits_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float bn_bf16_to_float(uint16_t h) { return bn_bits_float((uint32_t)h << 16); }

static inline uint16_t bn_float_to_bf16(float f) {
    const uint32_t u = bn_float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0; /* NaN */
    /* adding 0x7fff, and 1 more when the kept half is odd, carries into it exactly when the
     * dropped half is above one half, or one half with the kept half odd; a carry out of the
     * fraction raises the exponent, and out of the largest finite value gives infinity */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float bn_f16_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) /* infinity; a NaN keeps its payload and comes out quiet, as F16C gives it */
        return bn_bits_float(sign | 0x7f800000u | m << 13 | (m ? 0x400000u : 0));
    if (e != 0) return bn_bits_float(sign | (e + 112) << 23 | m << 13);
    /* zero or subnormal: m * 2^-24, exact in float */
    return bn_bits_float(sign | bn_float_bits((float)m * 0x1p-24f));
}

static inline uint16_t bn_float_to_f16(float f) {
    const uint32_t u = bn_float_bits(f), a = u & 0x7fffffffu;
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    if (a > 0x7f800000u) return sign | 0x7e00; /* NaN */
    if (a >= 0x477ff000u) return sign | 0x7c00; /* 65520 and above (and infinity): infinity */
    if (a >= 0x38800000u) { /* a normal float16: 2^-14 <= |f| < 65520 */
        uint32_t h = ((a >> 23) - 112) << 10 | (a >> 13 & 0x3ffu);
        const uint32_t rest = a & 0x1fffu; /* the 13 dropped bits */
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++; /* may carry into exponent */
        return sign | (uint16_t)h;
    }
    if (a <= 0x33000000u) return sign; /* at most 2^-25, half the smallest subnormal: zero */
    /* a subnormal float16 (or the smallest normal, by rounding up): |f| / 2^-24 rounded, from
     * the float's significand m * 2^(e - 150), e from 103 to 112 */
    const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u, shift = 126 - e; /* 14..23 */
    uint32_t q = m >> shift;
    const uint32_t rest = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (q & 1u))) q++;
    return sign | (uint16_t)q;
}

/* d rounded to float toward zero, with the last bit set where that was not exact: "round to
 * odd", after which a second rounding to fewer than 23 bits is the same as one from d. */
static inline float bn_double_to_float_odd(double d) {
    if (d != d) return (float)d;
    float f = (float)d; /* to nearest */
    uint32_t u = bn_float_bits(f);
    if (fabs((double)f) > fabs(d)) u--; /* rounded away from zero: one step back */
    if ((double)bn_bits_float(u) != d) u |= 1u;
    return bn_bits_float(u);
}

static inline uint16_t bn_double_to_bf16(double d) {
    return bn_float_to_bf16(bn_double_to_float_odd(d));
}

static inline uint16_t bn_double_to_f16(double d) {
    return bn_float_to_f16(bn_double_to_float_odd(d));
}

#endif
