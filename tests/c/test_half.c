/* test_half.c - bfloat16 and float16 (src/half.h, bn_convert): widening is exact for all 65536
 * values of each type; narrowing gives the nearest value, ties to even, checked against an
 * oracle that knows nothing of the bit tricks (the two neighbouring values of the type, their
 * distances compared in double), on every interval's ends, midpoints and the floats next to
 * them, on random floats and doubles, and at the edges (subnormals, overflow, NaN). */
#include "bnorm.h"
#include "check.h"
#include "half.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { BF16, F16 };

/* The value of bits h of type t by its definition: sign, exponent, fraction. */
static double defined_value(int t, uint16_t h) {
    const int ebits = t == BF16 ? 8 : 5, fbits = t == BF16 ? 7 : 10;
    const int bias = (1 << (ebits - 1)) - 1, emax = (1 << ebits) - 1;
    const int e = (h >> fbits) & emax, f = h & ((1 << fbits) - 1);
    const double sign = h & 0x8000 ? -1.0 : 1.0;
    if (e == emax) return f ? NAN : sign * INFINITY;
    if (e == 0) return sign * ldexp(f, 1 - bias - fbits);
    return sign * ldexp(f + (1 << fbits), e - bias - fbits);
}

static float widen(int t, uint16_t h) { return t == BF16 ? bn_bf16_to_float(h) : bn_f16_to_float(h); }

/* The nearest value of type t to v (not NaN), ties to even, overflow to infinity, by search:
 * among the non-negative finite bit patterns, which increase with their value, the largest
 * lo with value <= |v|, then lo or lo + 1 by distance (lo + 1 past the largest finite value
 * standing for the power of two that an unbounded exponent would give). */
static uint16_t nearest(int t, double v) {
    const uint16_t top = t == BF16 ? 0x7f7f : 0x7bff; /* the largest finite value */
    const uint16_t sign = signbit(v) ? 0x8000 : 0;
    const double a = fabs(v);
    if (isinf(a)) return sign | (uint16_t)(top + 1);
    uint32_t lo = 0, hi = top;
    if (a >= defined_value(t, top)) lo = top;
    else
        while (lo < hi) { /* largest lo with value(lo) <= a */
            const uint32_t mid = (lo + hi + 1) / 2;
            if (defined_value(t, (uint16_t)mid) <= a) lo = mid;
            else hi = mid - 1;
        }
    const double below = defined_value(t, (uint16_t)lo);
    const double above = lo == top ? ldexp(1.0, t == BF16 ? 128 : 16) : defined_value(t, (uint16_t)(lo + 1));
    const double down = a - below, up = above - a; /* exact: a is within one step of both */
    uint32_t r = down < up ? lo : up < down ? lo + 1 : (lo & 1 ? lo + 1 : lo);
    return sign | (uint16_t)r;
}

static uint16_t narrow(int t, float f) { return t == BF16 ? bn_float_to_bf16(f) : bn_float_to_f16(f); }
static uint16_t narrow_d(int t, double d) { return t == BF16 ? bn_double_to_bf16(d) : bn_double_to_f16(d); }
static uint16_t nan_of(int t, int negative) { return t == BF16 ? 0x7fc0 : (negative ? 0xfe00 : 0x7e00); }

/* The narrowing of f against the oracle: 1 when it agrees. */
static int narrows_right(int t, float f) {
    const uint16_t got = narrow(t, f);
    if (isnan(f)) return got == nan_of(t, signbit(f) != 0);
    return got == nearest(t, f);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t next_random(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12, rng_state ^= rng_state << 25, rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1du;
}

BN_SUITE(suite_half_widening_is_exact) {
    for (int t = BF16; t <= F16; t++) {
        long bad = 0, first = -1;
        for (uint32_t h = 0; h < 0x10000; h++) {
            const float got = widen(t, (uint16_t)h);
            const double want = defined_value(t, (uint16_t)h);
            const int ok = isnan(want) ? isnan(got) : (double)got == want && !signbit(got) == !signbit(want);
            if (!ok && bad++ == 0) first = (long)h;
        }
        CHECK_MSG(bad == 0, "type %d: %ld values widened wrong, the first 0x%04lx", t, bad, first);
    }
    /* bfloat16 is the top half of a float32, NaN payloads and all */
    CHECK(bn_float_bits(bn_bf16_to_float(0x7f81)) == 0x7f810000u);
    /* float16 NaN payloads land in the top of the float32 fraction, the NaN made quiet */
    CHECK(bn_float_bits(bn_f16_to_float(0x7d01)) == 0x7fe02000u);
    CHECK(bn_float_bits(bn_f16_to_float(0xfe00)) == 0xffc00000u);
    CHECK(bn_float_bits(bn_f16_to_float(0x0001)) == bn_float_bits(0x1p-24f));
    CHECK(bn_float_bits(bn_f16_to_float(0x8000)) == 0x80000000u);
}

BN_SUITE(suite_half_narrowing_every_interval) {
    /* bfloat16: each of the 65536 top halves with the bottom halves that decide the rounding */
    static const uint32_t bottoms[] = {0, 1, 0x7fff, 0x8000, 0x8001, 0xfffe, 0xffff};
    long bad = 0;
    uint32_t first = 0;
    for (uint32_t h = 0; h < 0x10000; h++)
        for (size_t k = 0; k < sizeof bottoms / sizeof bottoms[0] + 2; k++) {
            const uint32_t low = k < sizeof bottoms / sizeof bottoms[0] ? bottoms[k]
                                                                         : (uint32_t)next_random() & 0xffff;
            const uint32_t bits = h << 16 | low;
            if (!narrows_right(BF16, bn_bits_float(bits)) && bad++ == 0) first = bits;
        }
    CHECK_MSG(bad == 0, "bfloat16: %ld floats rounded wrong, the first 0x%08x", bad, first);

    /* float16: each finite value v, the next one w (65536 past the largest), and between them
     * the midpoint and the floats next to it and to v, of either sign */
    bad = 0;
    float first_f = 0;
    for (uint32_t h = 0; h <= 0x7bff; h++) {
        const float v = bn_f16_to_float((uint16_t)h);
        const float w = h == 0x7bff ? 65536.0f : bn_f16_to_float((uint16_t)(h + 1));
        const float mid = (v + w) / 2; /* exact: at most 12 significant bits */
        const float probes[] = {v, nextafterf(v, INFINITY), mid, nextafterf(mid, 0), nextafterf(mid, INFINITY),
                                nextafterf(w, 0), v + (w - v) * (float)(next_random() % 1000) / 1000.0f};
        for (size_t k = 0; k < sizeof probes / sizeof probes[0]; k++)
            for (int s = 0; s < 2; s++) {
                const float f = s ? -probes[k] : probes[k];
                if (!narrows_right(F16, f) && bad++ == 0) first_f = f;
            }
    }
    CHECK_MSG(bad == 0, "float16: %ld floats rounded wrong, the first %a", bad, (double)first_f);
}

BN_SUITE(suite_half_narrowing_random_floats_and_doubles) {
    for (int t = BF16; t <= F16; t++) {
        long bad = 0, bad_d = 0;
        uint32_t first = 0;
        double first_d = 0;
        for (int i = 0; i < 400000; i++) {
            const uint64_t r = next_random();
            const uint32_t bits = (uint32_t)(r >> 32);
            if (!narrows_right(t, bn_bits_float(bits)) && bad++ == 0) first = bits;
            /* doubles near the type's range (exponents -40 .. 20 and 120 .. 130), and anywhere */
            double d;
            if (i % 3 == 2) {
                uint64_t u = next_random();
                memcpy(&d, &u, sizeof d);
                if (isnan(d)) continue;
            } else {
                const int e = i % 3 ? 120 + (int)(r % 11) : -40 + (int)(r % 61);
                d = ldexp(1.0 + (double)(next_random() >> 11) * 0x1p-53, e) * (r & 1 ? -1 : 1);
            }
            if (narrow_d(t, d) != nearest(t, d) && bad_d++ == 0) first_d = d;
        }
        CHECK_MSG(bad == 0, "type %d: %ld random floats rounded wrong, the first 0x%08x", t, bad, first);
        CHECK_MSG(bad_d == 0, "type %d: %ld random doubles rounded wrong, the first %a", t, bad_d,
                  first_d);
    }
}

BN_SUITE(suite_half_edges) {
    /* overflow: to the largest finite value below half its last place past it, else infinity */
    CHECK(bn_float_to_f16(65504.0f) == 0x7bff);
    CHECK(bn_float_to_f16(nextafterf(65520.0f, 0)) == 0x7bff);
    CHECK(bn_float_to_f16(65520.0f) == 0x7c00); /* a tie, to even: infinity */
    CHECK(bn_float_to_f16(-FLT_MAX) == 0xfc00);
    CHECK(bn_float_to_bf16(FLT_MAX) == 0x7f80);
    CHECK(bn_float_to_bf16(bn_bits_float(0x7f7f7fffu)) == 0x7f7f);
    CHECK(bn_float_to_bf16(bn_bits_float(0x7f7f8000u)) == 0x7f80); /* tie, odd: up, infinity */
    CHECK(bn_double_to_bf16(1e300) == 0x7f80 && bn_double_to_f16(-1e300) == 0xfc00);
    /* subnormals kept, not flushed */
    CHECK(bn_float_to_f16(0x1p-24f) == 0x0001);
    CHECK(bn_float_to_f16(0x1p-25f) == 0x0000);            /* a tie, to even: zero */
    CHECK(bn_float_to_f16(nextafterf(0x1p-25f, 1)) == 0x0001);
    CHECK(bn_float_to_f16(-0x1.8p-24f) == 0x8002);         /* 1.5 ulp: a tie, to even 2 */
    CHECK(bn_float_to_f16(nextafterf(0x1p-14f, 0)) == 0x0400); /* rounds up to the smallest normal */
    CHECK(bn_float_to_bf16(bn_bits_float(0x00000001u)) == 0x0000);
    CHECK(bn_float_to_bf16(bn_bits_float(0x00018000u)) == 0x0002); /* a subnormal tie, odd: up */
    CHECK(bn_float_to_bf16(-0.0f) == 0x8000 && bn_float_to_f16(-0.0f) == 0x8000);
    CHECK(bn_double_to_f16(-0x1p-1000) == 0x8000 && bn_double_to_bf16(0x1p-1000) == 0x0000);
    /* from double, one rounding: a double just above a float16 tie rounds up, where the float
     * nearest to it is the tie itself and would round to even (down) */
    CHECK(bn_double_to_f16(1.0 + 0x1p-11 + 0x1p-40) == 0x3c01);
    CHECK(bn_float_to_f16((float)(1.0 + 0x1p-11 + 0x1p-40)) == 0x3c00);
    CHECK(bn_double_to_bf16(1.0 + 0x1p-8 + 0x1p-40) == 0x3f81);
    /* NaN: PyTorch's of each type; infinity stays infinite */
    CHECK(bn_float_to_bf16(NAN) == 0x7fc0 && bn_float_to_bf16(-NAN) == 0x7fc0);
    CHECK(bn_float_to_bf16(bn_bits_float(0x7f800001u)) == 0x7fc0); /* would truncate to infinity */
    CHECK(bn_float_to_f16(NAN) == 0x7e00 && bn_float_to_f16(-NAN) == 0xfe00);
    CHECK(bn_float_to_f16(INFINITY) == 0x7c00 && bn_float_to_bf16(-INFINITY) == 0xff80);
    CHECK(bn_double_to_bf16(NAN) == 0x7fc0 && bn_double_to_f16(-NAN) == 0xfe00);
    /* every finite value narrows back to itself */
    long bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if (!isnan(bn_bf16_to_float((uint16_t)h)) && bn_float_to_bf16(bn_bf16_to_float((uint16_t)h)) != h) bad++;
        if (!isnan(bn_f16_to_float((uint16_t)h)) && bn_float_to_f16(bn_f16_to_float((uint16_t)h)) != h) bad++;
    }
    CHECK_MSG(bad == 0, "%ld values do not come back from float", bad);
}

BN_SUITE(suite_convert_between_all_types) {
    enum { N = 4096 };
    static float f[N], back[N];
    static double d[N], dd[N];
    static uint16_t b[N], h[N], hb[N], bh[N];
    for (int i = 0; i < N; i++) {
        const uint32_t bits = (uint32_t)(next_random() >> 32);
        f[i] = isnan(bn_bits_float(bits)) ? (float)i : bn_bits_float(bits);
        d[i] = ldexp((double)(next_random() >> 11) * 0x1p-53 + 1, -30 + i % 50) * (i & 1 ? -1 : 1);
    }
    CHECK_STATUS(bn_convert(b, BN_BFLOAT16, f, BN_FLOAT32, N), BN_OK);
    CHECK_STATUS(bn_convert(h, BN_FLOAT16, f, BN_FLOAT32, N), BN_OK);
    long bad = 0;
    for (int i = 0; i < N; i++) bad += b[i] != bn_float_to_bf16(f[i]) || h[i] != bn_float_to_f16(f[i]);
    CHECK_MSG(bad == 0, "float32 -> 16 bits: %ld wrong", bad);
    /* 16 bits -> float32 -> 16 bits is the identity; bfloat16 <-> float16 through float32 */
    CHECK_STATUS(bn_convert(back, BN_FLOAT32, b, BN_BFLOAT16, N), BN_OK);
    bad = 0;
    for (int i = 0; i < N; i++) bad += bn_float_bits(back[i]) != (uint32_t)b[i] << 16;
    CHECK_MSG(bad == 0, "bfloat16 -> float32: %ld wrong", bad);
    CHECK_STATUS(bn_convert(hb, BN_FLOAT16, b, BN_BFLOAT16, N), BN_OK);
    CHECK_STATUS(bn_convert(bh, BN_BFLOAT16, h, BN_FLOAT16, N), BN_OK);
    bad = 0;
    for (int i = 0; i < N; i++)
        bad += hb[i] != bn_float_to_f16(bn_bf16_to_float(b[i])) ||
               bh[i] != bn_float_to_bf16(bn_f16_to_float(h[i]));
    CHECK_MSG(bad == 0, "bfloat16 <-> float16: %ld wrong", bad);
    /* float64 rounds once to each type; float16 -> float64 is exact */
    CHECK_STATUS(bn_convert(b, BN_BFLOAT16, d, BN_FLOAT64, N), BN_OK);
    CHECK_STATUS(bn_convert(h, BN_FLOAT16, d, BN_FLOAT64, N), BN_OK);
    CHECK_STATUS(bn_convert(dd, BN_FLOAT64, h, BN_FLOAT16, N), BN_OK);
    bad = 0;
    for (int i = 0; i < N; i++)
        bad += b[i] != nearest(BF16, d[i]) || h[i] != nearest(F16, d[i]) ||
               dd[i] != defined_value(F16, h[i]);
    CHECK_MSG(bad == 0, "float64 <-> 16 bits: %ld wrong", bad);
    /* float32 <-> float64 as C converts; the same type is a copy */
    CHECK_STATUS(bn_convert(dd, BN_FLOAT64, f, BN_FLOAT32, N), BN_OK);
    CHECK_STATUS(bn_convert(back, BN_FLOAT32, dd, BN_FLOAT64, N), BN_OK);
    CHECK(memcmp(back, f, sizeof f) == 0);
    CHECK_STATUS(bn_convert(hb, BN_FLOAT16, h, BN_FLOAT16, N), BN_OK);
    CHECK(memcmp(hb, h, sizeof h) == 0);
}

BN_SUITE(suite_convert_in_place_and_errors) {
    uint16_t v[3] = {0x3f80, 0x7f80, 0x0001}; /* bfloat16 1, infinity, a subnormal */
    CHECK_STATUS(bn_convert(v, BN_FLOAT16, v, BN_BFLOAT16, 3), BN_OK); /* same size: in place */
    CHECK(v[0] == 0x3c00 && v[1] == 0x7c00 && v[2] == 0x0000);
    float f[4] = {1, 2, 3, 4};
    const float keep[4] = {1, 2, 3, 4};
    uint16_t out[4] = {0};
    CHECK_STATUS(bn_convert(out, BN_BFLOAT16, f, BN_FLOAT32, 0), BN_OK);
    CHECK_STATUS(bn_convert(NULL, BN_BFLOAT16, NULL, BN_FLOAT32, 0), BN_OK);
    CHECK_STATUS(bn_convert(out, BN_BFLOAT16, f, BN_FLOAT32, -1), BN_ERR_SHAPE);
    CHECK_STATUS(bn_convert(NULL, BN_BFLOAT16, f, BN_FLOAT32, 4), BN_ERR_NULL_POINTER);
    CHECK_STATUS(bn_convert(out, BN_BFLOAT16, NULL, BN_FLOAT32, 4), BN_ERR_NULL_POINTER);
    CHECK_STATUS(bn_convert(out, (bn_dtype)7, f, BN_FLOAT32, 4), BN_ERR_UNSUPPORTED);
    CHECK_STATUS(bn_convert(out, BN_BFLOAT16, f, (bn_dtype)-1, 4), BN_ERR_UNSUPPORTED);
    CHECK_STATUS(bn_convert(out, BN_BFLOAT16, f, BN_FLOAT32, INT64_MAX / 2), BN_ERR_TOO_LARGE);
    /* overlapping buffers of different sizes: refused, nothing written */
    CHECK_STATUS(bn_convert(f, BN_BFLOAT16, f, BN_FLOAT32, 4), BN_ERR_ARGUMENT);
    CHECK_STATUS(bn_convert((char *)f + 2, BN_BFLOAT16, f, BN_FLOAT32, 2), BN_ERR_ARGUMENT);
    CHECK(memcmp(f, keep, sizeof f) == 0);
    for (int i = 0; i < 4; i++) CHECK(out[i] == 0);
    /* the descriptors take the 16-bit types, with parameters of the tensor's type */
    bn_desc desc;
    memset(&desc, 0xff, sizeof desc);
    const int64_t dims[2] = {4, 2};
    CHECK_STATUS(bn_desc_from_dims(&desc, 2, dims, BN_BFLOAT16, BN_CHANNELS_FIRST), BN_OK);
    CHECK(desc.dtype == BN_BFLOAT16 && desc.params == BN_PARAMS_AS_TENSOR);
    CHECK_STATUS(bn_desc_from_dims(&desc, 2, dims, BN_FLOAT16, BN_CHANNELS_LAST), BN_OK);
    CHECK(desc.dtype == BN_FLOAT16 && desc.params == BN_PARAMS_AS_TENSOR);
}
