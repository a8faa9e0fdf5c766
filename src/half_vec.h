/* half_vec.h - half.h's conversions a vector at a time, for the kernels of the 16-bit storage
 * types: the same bits as the scalar ones (the specification) for every value, NaNs included,
 * in plain integer and float arithmetic that every x86-64 set (and any GCC target) has. No
 * hardware conversion is used: VCVTNEPS2BF16 flushes subnormals, and F16C's VCVTPS2PH keeps a
 * NaN's payload where half.h gives sign | 0x7E00; in these forms a pass moving half the bytes is
 * still limited by memory, not by the conversion (docs/performance.md).
 *
 * Macros, as the other vector helpers (kernel_types.h): clang refuses functions that pass
 * 64-byte vectors in a build without AVX-512. The widening forms take the 16-bit values already
 * widened to 32-bit lanes (u, of unsigned vector type UT) and give a float vector of type FT of
 * as many lanes; the narrowing forms take 16 floats (a bn_v16f) and give 16 stored values. */
#ifndef BN_HALF_VEC_H
#define BN_HALF_VEC_H

#include "half.h"

#include <stdint.h>

typedef uint16_t bn_v16h __attribute__((vector_size(32)));
typedef uint16_t bn_v16h_u __attribute__((vector_size(32), aligned(2), may_alias));
typedef uint16_t bn_v8h_u __attribute__((vector_size(16), aligned(2), may_alias));
typedef uint16_t bn_v4h_u __attribute__((vector_size(8), aligned(2), may_alias));
typedef uint32_t bn_v16u __attribute__((vector_size(64)));
typedef uint32_t bn_v8u __attribute__((vector_size(32)));
typedef uint32_t bn_v4u __attribute__((vector_size(16)));

/* ---- bfloat16: the top half of a float ---- */

#define BN_WIDEN_bf16(u, UT, FT) ((FT)((UT)(u) << 16))

/* bn_float_to_bf16 of each lane: 0x7fff, and 1 more where the kept half is odd, carries into
 * the kept half exactly when the dropped half rounds it up; NaN lanes take 0x7FC0. */
#define BN_NARROW16_bf16(v)                                                            \
    __extension__({                                                                    \
        const bn_v16u u_ = (bn_v16u)(v);                                               \
        const bn_v16u nan_ = (bn_v16u)((u_ & 0x7fffffffu) > 0x7f800000u);              \
        const bn_v16u r_ = (u_ + 0x7fffu + ((u_ >> 16) & 1u)) >> 16;                   \
        __builtin_convertvector((r_ & ~nan_) | (nan_ & 0x7fc0u), bn_v16h);             \
    })

/* ---- float16 (IEEE binary16) ---- */

/* bn_f16_to_float of each lane. The exponent and fraction move to their float places, o; a
 * normal value's exponent is rebiased by 112 (adding 112 << 23), infinity's and NaN's by 224 (to
 * 255), a NaN made quiet; zero and subnormals are rebiased as if their exponent were 1 (the value
 * (1 + m/1024) 2^-14) and 2^-14 taken away in float, which is exact: m 2^-24. Then the sign. */
#define BN_WIDEN_f16(u, UT, FT)                                                        \
    __extension__({                                                                    \
        const UT u_ = (UT)(u);                                                         \
        const UT o_ = (u_ & 0x7fffu) << 13;                                            \
        const UT e_ = o_ & 0x0f800000u;                                                \
        const UT top_ = (UT)(e_ == 0x0f800000u), low_ = (UT)(e_ == 0);                 \
        const UT quiet_ = top_ & (UT)((o_ & 0x007fe000u) != 0) & 0x00400000u;          \
        const UT bits_ = (o_ + 0x38000000u + (top_ & 0x38000000u) + (low_ & 0x00800000u)) | \
                         quiet_;                                                       \
        (FT)((UT)((FT)bits_ - (FT)(low_ & 0x38800000u)) | ((u_ & 0x8000u) << 16));     \
    })

/* bn_float_to_f16 of each lane, by magnitude a:
 *   at or above 65520 (and infinity): 0x7C00, a NaN 0x7E00;
 *   below 2^-14, the subnormals and zero: a + 0.5 in float rounds a to a multiple of 2^-24, to
 *     nearest even (the float's ulp there), and its low bits are that multiple (1024 for a
 *     value that rounds up to 2^-14, which is that normal's bits);
 *   otherwise: rebiased by -112, and 0xfff, and 1 more where the kept fraction is odd, carry
 *     into the kept bits exactly when the 13 dropped ones round them up (into the exponent
 *     too, and past 65504 to infinity).
 * Then the sign. */
#define BN_NARROW16_f16(v)                                                             \
    __extension__({                                                                    \
        const bn_v16u u_ = (bn_v16u)(v);                                               \
        const bn_v16u a_ = u_ & 0x7fffffffu;                                           \
        const bn_v16u nan_ = (bn_v16u)(a_ > 0x7f800000u);                              \
        const bn_v16u big_ = (bn_v16u)(a_ >= 0x477ff000u);                             \
        const bn_v16u small_ = (bn_v16u)(a_ < 0x38800000u);                            \
        const bn_v16u sub_ = (bn_v16u)((bn_v16f)a_ + 0.5f) - 0x3f000000u;              \
        const bn_v16u nrm_ = (a_ + 0xc8000fffu + ((a_ >> 13) & 1u)) >> 13;             \
        const bn_v16u r_ = (big_ & (0x7c00u | (nan_ & 0x0200u))) |                     \
                           (~big_ & ((small_ & sub_) | (~small_ & nrm_)));             \
        __builtin_convertvector(r_ | ((u_ >> 16) & 0x8000u), bn_v16h);                 \
    })

/* One value, and a double rounded once (half.h). */
#define BN_LD1_bf16(h) bn_bf16_to_float(h)
#define BN_ST1_bf16(f) bn_float_to_bf16(f)
#define BN_STD1_bf16(d) bn_double_to_bf16(d)
#define BN_LD1_f16(h) bn_f16_to_float(h)
#define BN_ST1_f16(f) bn_float_to_f16(f)
#define BN_STD1_f16(d) bn_double_to_f16(d)

#endif
