/* kernels_isa.c - the instantiations of kernels.inc for one instruction set, one per (storage
 * type, store kind). The Makefile compiles this file once per set, with that set's compiler flag
 * and BN_ISA naming it (avx512, avx2, base: the x86-64 baseline, or the machine's own elsewhere),
 * and kernels.c picks one set at run time; kernels_type.inc instantiates a type's variants (store
 * kinds, epilogues). Each set is tuned for its registers (how many
 * channels a kernel keeps in flight: kernels.inc), which only groups channels differently: every
 * sum is formed in the same order, so all sets give the same bits (make isa-check). Adding a
 * dtype is one block below and one column of kernels.c's tables. */
#include "kernel_types.h"

#ifndef BN_ISA
#define BN_ISA base
#endif
#define BN_ISA_CAT2(a, b) a##b
#define BN_ISA_CAT(a, b) BN_ISA_CAT2(a, b)
#define BN_ISA_NAME(kind) BN_ISA_CAT(kind, BN_ISA) /* f32_ -> f32_avx2 */

/* float32: stored and computed in float */
#define TYPE f32
#define TYPE_S float
#define TYPE_COMPUTE 32
#include "kernels_type.inc"

/* float64: stored and computed in double */
#define TYPE f64
#define TYPE_S double
#define TYPE_COMPUTE 64
#include "kernels_type.inc"

/* bfloat16 and float16: stored in 16 bits, computed in float (half_vec.h converts) */
#define TYPE bf16
#define TYPE_S uint16_t
#define TYPE_COMPUTE 32
#define TYPE_HALF bf16
#include "kernels_type.inc"

#define TYPE f16
#define TYPE_S uint16_t
#define TYPE_COMPUTE 32
#define TYPE_HALF f16
#include "kernels_type.inc"
