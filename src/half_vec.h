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
#if defined(__x86_64__)
#include <immintrin.h>
#endif

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

/* ---- what the kernels call: loads of 16, 8 or 4 stored values as floats, and 16 floats
 * narrowed. Where the instruction set has a faster form of the same bits, it is used:
 *   AVX-512F: VPMOVZXWD and VPMOVDW move between 16- and 32-bit lanes (GCC 12 emulates a
 *     generic conversion with packs and permutes); F16C's VCVTPH2PS widens float16 exactly as
 *     half.h does (a NaN made quiet, its payload kept), and VCVTPS2PH narrows to nearest even
 *     with subnormals kept, once each NaN lane is replaced by the quiet NaN of its sign
 *     (VCVTPS2PH would keep a NaN's payload; half.h gives sign | 0x7E00);
 *   AVX2 with F16C (the AVX2 set is built with -mf16c and runs where the CPU has both): the
 *     same float16 conversions, 8 lanes at a time; bfloat16's in AVX2's integer instructions;
 *   SSE2 (the baseline): bfloat16's narrowing in its integer instructions;
 *   otherwise the generic forms above. ---- */
#define BN_LOAD16_GENERIC(kind, p) \
    BN_WIDEN_##kind(__builtin_convertvector(*(const bn_v16h_u *)(p), bn_v16u), bn_v16u, bn_v16f)
#define BN_LOAD8_GENERIC(kind, p) \
    BN_WIDEN_##kind(__builtin_convertvector(*(const bn_v8h_u *)(p), bn_v8u), bn_v8u, bn_v8f)
#define BN_LOAD4_GENERIC(kind, p) \
    BN_WIDEN_##kind(__builtin_convertvector(*(const bn_v4h_u *)(p), bn_v4u), bn_v4u, bn_v4f)

#if defined(__AVX512F__)
#define BN_LOAD16_bf16(p) \
    ((bn_v16f)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
/* the NaN lanes take 0x7FC0 in the narrowing itself: VPMOVDW under the mask of the others */
#define BN_NARROW_bf16(v)                                                               \
    __extension__({                                                                    \
        const bn_v16u u_ = (bn_v16u)(v);                                               \
        const __mmask16 num_ = _mm512_cmp_ps_mask((__m512)(v), (__m512)(v), _CMP_ORD_Q);   \
        const bn_v16u r_ = (u_ + 0x7fffu + ((u_ >> 16) & 1u)) >> 16;                   \
        (bn_v16h)_mm512_mask_cvtepi32_epi16(_mm256_set1_epi16(0x7fc0), num_, (__m512i)r_); \
    })
#elif defined(__AVX2__)
/* GCC 12 compares 64-byte vectors one lane at a time, with a branch each, and converts them
 * through the stack where the set has no 64-byte vectors (AMD EPYC, AVX2: 32x64x56x56 eval in
 * bfloat16 took 8.1 ms, against 2.7 ms in float32): halves of 8 lanes, in AVX2's own
 * instructions. NARROW8: the rounded bits of 8 floats in the low halves of 32-bit lanes. */
#define BN_AVX2_BF16_NARROW8(h)                                                        \
    __extension__({                                                                    \
        const __m256i u_ = _mm256_castps_si256(h);                                     \
        const __m256i nan_ = _mm256_castps_si256(_mm256_cmp_ps((h), (h), _CMP_UNORD_Q)); \
        const __m256i odd_ = _mm256_and_si256(_mm256_srli_epi32(u_, 16), _mm256_set1_epi32(1)); \
        const __m256i r_ = _mm256_srli_epi32(                                          \
            _mm256_add_epi32(_mm256_add_epi32(u_, _mm256_set1_epi32(0x7fff)), odd_), 16); \
        _mm256_blendv_epi8(r_, _mm256_set1_epi32(0x7fc0), nan_);                      \
    })
/* each half widened straight from memory (VPMOVZXWD's memory operand, no lane extract), the
 * two joined by a shuffle (a union of them went through the stack) */
#define BN_LOAD16_bf16(p)                                                              \
    __extension__({                                                                    \
        const __m128i *q_ = (const __m128i *)(p);                                      \
        const bn_v8f lo_ = (bn_v8f)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(q_)), 16); \
        const bn_v8f hi_ =                                                             \
            (bn_v8f)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(q_ + 1)), 16); \
        (bn_v16f) __builtin_shufflevector(lo_, hi_, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, \
                                          14, 15);                                     \
    })
/* packus takes 128-bit lanes in turn: the permute puts the 64-bit quarters back in order */
#define BN_NARROW_bf16(v)                                                              \
    __extension__({                                                                    \
        const union { bn_v16f w; __m256 h[2]; } n_ = {(v)};                            \
        (bn_v16h)_mm256_permute4x64_epi64(                                             \
            _mm256_packus_epi32(BN_AVX2_BF16_NARROW8(n_.h[0]), BN_AVX2_BF16_NARROW8(n_.h[1])), \
            0xd8);                                                                     \
    })
#elif defined(__SSE2__)
/* the same, 4 lanes at a time; SSE2 packs with signed saturation, so each 16-bit result is
 * sign-extended first (shifted up and back) and comes out of the pack unchanged */
#define BN_SSE2_BF16_NARROW4(q)                                                        \
    __extension__({                                                                    \
        const __m128i u_ = _mm_castps_si128(q);                                        \
        const __m128i nan_ = _mm_castps_si128(_mm_cmpunord_ps((q), (q)));              \
        const __m128i odd_ = _mm_and_si128(_mm_srli_epi32(u_, 16), _mm_set1_epi32(1)); \
        const __m128i r_ =                                                             \
            _mm_srli_epi32(_mm_add_epi32(_mm_add_epi32(u_, _mm_set1_epi32(0x7fff)), odd_), 16); \
        const __m128i b_ = _mm_or_si128(_mm_andnot_si128(nan_, r_),                    \
                                        _mm_and_si128(nan_, _mm_set1_epi32(0x7fc0)));  \
        _mm_srai_epi32(_mm_slli_epi32(b_, 16), 16);                                    \
    })
#define BN_LOAD16_bf16(p)                                                              \
    __extension__({                                                                    \
        const __m128i a_ = _mm_loadu_si128((const __m128i *)(p));                      \
        const __m128i b_ = _mm_loadu_si128((const __m128i *)(p) + 1);                  \
        const __m128i z_ = _mm_setzero_si128();                                        \
        const union { __m128i q[4]; bn_v16f w; } l_ = {                                \
            {_mm_unpacklo_epi16(z_, a_), _mm_unpackhi_epi16(z_, a_),                    \
             _mm_unpacklo_epi16(z_, b_), _mm_unpackhi_epi16(z_, b_)}};                  \
        l_.w;                                                                          \
    })
#define BN_NARROW_bf16(v)                                                              \
    __extension__({                                                                    \
        const union { bn_v16f w; __m128 q[4]; } n_ = {(v)};                            \
        const union { __m128i q[2]; bn_v16h w; } o_ = {                                \
            {_mm_packs_epi32(BN_SSE2_BF16_NARROW4(n_.q[0]), BN_SSE2_BF16_NARROW4(n_.q[1])), \
             _mm_packs_epi32(BN_SSE2_BF16_NARROW4(n_.q[2]), BN_SSE2_BF16_NARROW4(n_.q[3]))}}; \
        o_.w;                                                                          \
    })
#else
#define BN_LOAD16_bf16(p) BN_LOAD16_GENERIC(bf16, p)
#define BN_NARROW_bf16(v) BN_NARROW16_bf16(v)
#endif
#if defined(__AVX2__)
/* bfloat16's bits are a float's top half (the generic forms are lowered to more moves: AMD
 * EPYC, AVX2, 32x64x56x56 bf16 backward, 1 thread: 9.1 ms, float32's 6.3 ms). In AVX2, 8 lanes
 * widened and shifted; in SSE2, interleaved below zeros, each 16-bit value lands in the top half
 * of its 32-bit lane. (A union of two 16-byte halves as one 32-byte vector goes through the
 * stack in AVX2 code.) */
#define BN_LOAD8_bf16(p)                                                               \
    ((bn_v8f)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#elif defined(__SSE2__)
#define BN_LOAD8_bf16(p)                                                               \
    __extension__({                                                                    \
        const __m128i h_ = _mm_loadu_si128((const __m128i *)(p));                      \
        const union { __m128i q[2]; bn_v8f w; } l_ = {                                 \
            {_mm_unpacklo_epi16(_mm_setzero_si128(), h_),                               \
             _mm_unpackhi_epi16(_mm_setzero_si128(), h_)}};                             \
        l_.w;                                                                          \
    })
#else
#define BN_LOAD8_bf16(p) BN_LOAD8_GENERIC(bf16, p)
#endif
#if defined(__SSE2__) /* AVX2 and SSE2 alike */
#define BN_LOAD4_bf16(p) \
    ((bn_v4f)_mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64((const __m128i *)(p))))
#else
#define BN_LOAD4_bf16(p) BN_LOAD4_GENERIC(bf16, p)
#endif

#if defined(__AVX512F__)
#define BN_LOAD16_f16(p) ((bn_v16f)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p))))
#define BN_NARROW_f16(v)                                                                \
    __extension__({                                                                    \
        const __m512 v_ = (__m512)(v);                                                 \
        const __mmask16 nan_ = _mm512_cmp_ps_mask(v_, v_, _CMP_UNORD_Q);               \
        const __m512i q_ = _mm512_mask_ternarylogic_epi32(                             \
            (__m512i)v_, nan_, _mm512_set1_epi32((int)0x80000000u),                    \
            _mm512_set1_epi32(0x7fc00000), 0xea); /* (v & sign) | quiet NaN */         \
        (bn_v16h)_mm512_cvtps_ph((__m512)q_, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); \
    })
#elif defined(__AVX2__) && defined(__F16C__)
#define BN_F16C_LOAD8(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
/* the halves joined by a shuffle and the narrowed ones by an insert, as bfloat16's: unions of
 * them went through the stack in every loop */
#define BN_LOAD16_f16(p)                                                               \
    __extension__({                                                                    \
        const bn_v8f lo_ = (bn_v8f)BN_F16C_LOAD8(p);                                   \
        const bn_v8f hi_ = (bn_v8f)BN_F16C_LOAD8((const uint16_t *)(p) + 8);           \
        (bn_v16f) __builtin_shufflevector(lo_, hi_, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, \
                                          14, 15);                                     \
    })
#define BN_F16C_NARROW8(v)                                                             \
    _mm256_cvtps_ph(_mm256_blendv_ps((v), _mm256_or_ps(_mm256_and_ps((v), _mm256_set1_ps(-0.0f)), \
                                                       _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000))), \
                                     _mm256_cmp_ps((v), (v), _CMP_UNORD_Q)),               \
                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define BN_NARROW_f16(v)                                                                \
    __extension__({                                                                    \
        const union { bn_v16f w; __m256 h[2]; } n_ = {(v)};                            \
        (bn_v16h)_mm256_inserti128_si256(_mm256_castsi128_si256(BN_F16C_NARROW8(n_.h[0])), \
                                         BN_F16C_NARROW8(n_.h[1]), 1);                 \
    })
#else
#define BN_LOAD16_f16(p) BN_LOAD16_GENERIC(f16, p)
#define BN_NARROW_f16(v) BN_NARROW16_f16(v)
#endif
#if defined(__F16C__)
#define BN_LOAD8_f16(p) ((bn_v8f)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p))))
#define BN_LOAD4_f16(p) ((bn_v4f)_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(p))))
#else
#define BN_LOAD8_f16(p) BN_LOAD8_GENERIC(f16, p)
#define BN_LOAD4_f16(p) BN_LOAD4_GENERIC(f16, p)
#endif

/* One value, and a double rounded once (half.h). */
#define BN_LD1_bf16(h) bn_bf16_to_float(h)
#define BN_ST1_bf16(f) bn_float_to_bf16(f)
#define BN_STD1_bf16(d) bn_double_to_bf16(d)
#define BN_LD1_f16(h) bn_f16_to_float(h)
#define BN_ST1_f16(f) bn_float_to_f16(f)
#define BN_STD1_f16(d) bn_double_to_f16(d)

#endif
