/* kernels_isa.c - the instantiations of kernels.inc for one instruction set, one per (storage
 * type, store kind). The Makefile compiles this file once per set, with that set's compiler flag
 * and BN_ISA naming it (avx512, avx2, base: the x86-64 baseline, or the machine's own elsewhere),
 * and kernels.c picks one set at run time. Each set is tuned for its registers (how many
 * channels a kernel keeps in flight: kernels.inc), which only groups channels differently: every
 * sum is formed in the same order, so all sets give the same bits (make isa-check). Adding a
 * dtype is one instantiation below and one case in bn_kernels_for. */
#include "kernel_types.h"

#ifndef BN_ISA
#define BN_ISA base
#endif
#define BN_ISA_CAT2(a, b) a##b
#define BN_ISA_CAT(a, b) BN_ISA_CAT2(a, b)
#define BN_ISA_NAME(kind) BN_ISA_CAT(kind, BN_ISA) /* f32_ -> f32_avx2 */

/* float32: stored and computed in float */
#define SUF BN_ISA_NAME(f32_)
#define S float
#define COMPUTE 32
#define STORE_KIND BN_STORE_PLAIN
#define EPILOGUE BN_EPILOGUE_NONE
#include "kernels.inc"

/* float64: stored and computed in double */
#define SUF BN_ISA_NAME(f64_)
#define S double
#define COMPUTE 64
#define STORE_KIND BN_STORE_PLAIN
#define EPILOGUE BN_EPILOGUE_NONE
#include "kernels.inc"

/* bfloat16 and float16: stored in 16 bits, computed in float (half_vec.h converts) */
#define SUF BN_ISA_NAME(bf16_)
#define S uint16_t
#define HALF bf16
#define COMPUTE 32
#define STORE_KIND BN_STORE_PLAIN
#define EPILOGUE BN_EPILOGUE_NONE
#include "kernels.inc"

#define SUF BN_ISA_NAME(f16_)
#define S uint16_t
#define HALF f16
#define COMPUTE 32
#define STORE_KIND BN_STORE_PLAIN
#define EPILOGUE BN_EPILOGUE_NONE
#include "kernels.inc"

/* Large outputs are written with non-temporal (streaming) stores: they skip reading each
 * destination line into the cache first and do not evict the inputs, which saves a third of the
 * memory traffic of a pass that reads x and writes y. The output kernels again, with such stores;
 * the values stored are the same bits. */
#ifdef BN_HAVE_STREAM
#define SUF BN_ISA_NAME(f32_stream_)
#define S float
#define COMPUTE 32
#define STORE_KIND BN_STORE_STREAM
#define STATS_SUF BN_ISA_NAME(f32_)
#define EPILOGUE BN_EPILOGUE_NONE
#include "kernels.inc"

#define SUF BN_ISA_NAME(f64_stream_)
#define S double
#define COMPUTE 64
#define STORE_KIND BN_STORE_STREAM
#define STATS_SUF BN_ISA_NAME(f64_)
#define EPILOGUE BN_EPILOGUE_NONE
#include "kernels.inc"

#define SUF BN_ISA_NAME(bf16_stream_)
#define S uint16_t
#define HALF bf16
#define COMPUTE 32
#define STORE_KIND BN_STORE_STREAM
#define STATS_SUF BN_ISA_NAME(bf16_)
#define EPILOGUE BN_EPILOGUE_NONE
#include "kernels.inc"

#define SUF BN_ISA_NAME(f16_stream_)
#define S uint16_t
#define HALF f16
#define COMPUTE 32
#define STORE_KIND BN_STORE_STREAM
#define STATS_SUF BN_ISA_NAME(f16_)
#define EPILOGUE BN_EPILOGUE_NONE
#include "kernels.inc"
#endif
