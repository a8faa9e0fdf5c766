/* kernels.c - the instantiations of kernels.inc, one per (storage type, store kind), and the one
 * dispatch on dtype. Adding a dtype is one instantiation below and one case in bn_kernels_for. */
#include "kernel_types.h"

#include <stdatomic.h>

/* Tests: how often the float statistics were summed again about a better pivot, and how often
 * they fell back to the exact path (rare paths only: nothing is counted on the common one). */
static atomic_llong pivot_again, pivot_exact;
void bn_note_pivot_again(void) { atomic_fetch_add(&pivot_again, 1); }
void bn_note_pivot_exact(void) { atomic_fetch_add(&pivot_exact, 1); }
void bn_pivot_counts(int64_t *again, int64_t *exact) {
    *again = (int64_t)atomic_load(&pivot_again);
    *exact = (int64_t)atomic_load(&pivot_exact);
}

/* float32: stored and computed in float */
#define SUF f32
#define S float
#define COMPUTE 32
#define STORE_KIND BN_STORE_PLAIN
#define EPILOGUE BN_EPILOGUE_NONE
#include "kernels.inc"

/* float64: stored and computed in double */
#define SUF f64
#define S double
#define COMPUTE 64
#define STORE_KIND BN_STORE_PLAIN
#define EPILOGUE BN_EPILOGUE_NONE
#include "kernels.inc"

/* Large outputs are written with non-temporal (streaming) stores on AVX-512 machines: they skip
 * reading each destination line into the cache first and do not evict the inputs, which saves a
 * third of the memory traffic of a pass that reads x and writes y. The output kernels again,
 * compiled for AVX-512 only with such stores; the values stored are the same bits. */
#ifdef BN_HAVE_STREAM
#include <immintrin.h>

#define SUF f32_stream
#define S float
#define COMPUTE 32
#define STORE_KIND BN_STORE_STREAM
#define STATS_SUF f32
#define EPILOGUE BN_EPILOGUE_NONE
#include "kernels.inc"

#define SUF f64_stream
#define S double
#define COMPUTE 64
#define STORE_KIND BN_STORE_STREAM
#define STATS_SUF f64
#define EPILOGUE BN_EPILOGUE_NONE
#include "kernels.inc"
#endif

static atomic_int plain_stores_only; /* tests compare both kinds of store */
static atomic_llong stream_tables;   /* tests: how many times a streaming table was handed out */

void bn_kernel_force_plain_stores(int on) { atomic_store(&plain_stores_only, on != 0); }

int64_t bn_kernel_stream_count(void) { return (int64_t)atomic_load(&stream_tables); }

int bn_kernels_can_stream(void) {
#ifdef BN_HAVE_STREAM
    return __builtin_cpu_supports("avx512f") && !atomic_load(&plain_stores_only);
#else
    return 0;
#endif
}

const bn_kernels *bn_kernels_for(bn_dtype dtype, int stream) {
    stream = stream && bn_kernels_can_stream();
#ifdef BN_HAVE_STREAM
    if (stream) atomic_fetch_add(&stream_tables, 1);
#endif
    switch (dtype) {
#ifdef BN_HAVE_STREAM
    case BN_FLOAT32: return stream ? &bn_kernels_f32_stream : &bn_kernels_f32;
    case BN_FLOAT64: return stream ? &bn_kernels_f64_stream : &bn_kernels_f64;
#else
    case BN_FLOAT32: return &bn_kernels_f32;
    case BN_FLOAT64: return &bn_kernels_f64;
#endif
    default: return NULL;
    }
}
