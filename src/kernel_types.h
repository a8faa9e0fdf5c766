/* kernel_types.h - what every instantiation of kernels.inc shares: 64-byte vectors of float and
 * double, their unaligned views, a fixed-order lane sum, the clone attribute that compiles each
 * kernel for AVX-512, AVX2 and the x86-64 baseline, and bn_centre. Included by kernels.c and by
 * test-only instantiations; nothing here is a function of the library. */
#ifndef BN_KERNEL_TYPES_H
#define BN_KERNEL_TYPES_H

#include "finish.h" /* the per-channel arithmetic eval_coefs applies */
#include "half_vec.h" /* the 16-bit storage types' conversions, a vector at a time */
#include "pivot.h"  /* float statistics about a pivot, and their bound */
#include "kernels.h"

#include <float.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <math.h>
#include <stdint.h>
#include <string.h>

/* One build runs everywhere and uses the widest vectors the CPU has: the kernels are compiled
 * for AVX-512, AVX2 and the x86-64 baseline (kernels_isa.c, once per set), and kernels.c picks a
 * set at run time; the few per-channel loops outside them (finish.c) are cloned for the three by
 * BN_CLONES. Results are the same bits on all three: vectors of a fixed width fix the order of
 * every sum, and -ffp-contract=off keeps multiply-adds from being fused on one machine but not
 * another. BN_NO_CLONES builds the baseline alone. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(BN_NO_CLONES)
#define BN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define BN_HAVE_STREAM 1 /* the three sets, each with streaming twins of its output kernels */
#else
#define BN_CLONES
#endif

/* Vector helpers are macros: clang refuses functions that pass 64-byte vectors in a clone
 * without AVX-512, and GCC would lower a conversion in a helper for the baseline ISA. In the AVX2
 * and SSE2 sets, GCC 12 splits 64-byte arithmetic and loads into native vectors well, but
 * compares two 64-byte vectors one lane at a time with a branch each, and moves a union of
 * narrower halves read as one wider vector through the stack: there, comparisons and
 * conversions are written a native vector at a time, and halves are joined by
 * __builtin_shufflevector or an insert, never a union (kernels.inc's RELUW, half_vec.h). */
typedef double bn_v8d __attribute__((vector_size(64)));
typedef float bn_v8f __attribute__((vector_size(32)));
typedef float bn_v16f __attribute__((vector_size(64)));
typedef double bn_v4d __attribute__((vector_size(32))); /* AVX2's width, for its own loops */
typedef float bn_v4f __attribute__((vector_size(16)));
/* Unaligned, alias-safe views for loads and stores. */
typedef double bn_v8d_u __attribute__((vector_size(64), aligned(8), may_alias));
typedef float bn_v8f_u __attribute__((vector_size(32), aligned(4), may_alias));
typedef float bn_v16f_u __attribute__((vector_size(64), aligned(4), may_alias));
typedef double bn_v4d_u __attribute__((vector_size(32), aligned(8), may_alias));
typedef float bn_v4f_u __attribute__((vector_size(16), aligned(4), may_alias));
/* A float vector widened whole: GCC 12 converts a 16-float vector to 16 doubles with two
 * full-width instructions, but splits a conversion of 8 floats into pieces. */
typedef double bn_v16d __attribute__((vector_size(128)));
typedef union {
    bn_v16d whole;
    bn_v8d half[2];
} bn_v16d_halves;

#define BN_V8D_ZERO ((bn_v8d){0, 0, 0, 0, 0, 0, 0, 0})
/* The lanes' sum in a fixed order (v must be a plain variable). */
#define BN_V8D_SUM(v) ((((v)[0] + (v)[1]) + ((v)[2] + (v)[3])) + (((v)[4] + (v)[5]) + ((v)[6] + (v)[7])))

#pragma GCC diagnostic ignored "-Wpsabi"
#define BN_ALWAYS_INLINE __attribute__((always_inline))
#define BN_COLD __attribute__((noinline, cold))

/* A statistics block whose sums overflowed (float64 only) is summed again with its values scaled
 * by 2^-BN_RESCALE, and its moments scaled back up: exact, powers of two (block_rescaled_). */
#define BN_RESCALE 528
_Static_assert(BN_BLOCK <= 1024 && BN_ROWS <= 1024, "block_rescaled_ sums at most 2^10 values");

/* The centre an element-wise pass subtracts from x before it multiplies by factor (as rounded to
 * the compute type): the mean, or 0 where the factor is 0 and the mean finite (an infinite
 * variance gives invstd 0). Either gives the same output for finite x, except where x - mean
 * overflows (values of opposite signs near the dtype's largest) into inf * 0 = NaN: x * 0 = 0,
 * as torch's x * alpha + beta with alpha = 0. A NaN or infinite x or mean still gives NaN. */
static inline double bn_centre(double mean, double factor) {
    return factor == 0 && isfinite(mean) ? 0.0 : mean;
}

/* The rare paths of the float statistics (pivot.h), counted for the tests (bn_pivot_counts). */
void bn_note_pivot_again(void);
void bn_note_pivot_exact(void);

/* Store kinds. */
#define BN_STORE_PLAIN 0
#define BN_STORE_STREAM 1 /* non-temporal, fenced at the end of each kernel */

#endif
