/* scratch.h - one working buffer per call, carved into arrays: on the stack when it is small
 * (no allocation for small tensors), from the heap otherwise. */
#ifndef BN_SCRATCH_H
#define BN_SCRATCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    _Alignas(64) unsigned char local[2048];
    void *heap;
    size_t used, size;
} bn_scratch;

/* Reserves `count` arrays of the given byte sizes (each 64-byte aligned) in one buffer and
 * stores their addresses in out[]. Returns 0 when the sizes overflow or memory runs out. */
static inline int bn_scratch_take(bn_scratch *s, int count, const size_t *bytes, void **out) {
    size_t total = 0;
    for (int k = 0; k < count; k++) {
        size_t padded = (bytes[k] + 63) / 64 * 64;
        if (padded < bytes[k] || total > SIZE_MAX - padded) return 0;
        total += padded;
    }
    unsigned char *base = s->local;
    s->heap = NULL;
    if (total > sizeof s->local) {
        base = s->heap = aligned_alloc(64, total);
        if (!base) return 0;
    }
    for (int k = 0; k < count; k++) {
        out[k] = base;
        base += (bytes[k] + 63) / 64 * 64;
    }
    return 1;
}

static inline void bn_scratch_release(bn_scratch *s) { free(s->heap); }

/* count * size, or SIZE_MAX when that overflows (which bn_scratch_take then refuses). */
static inline size_t bn_bytes(int64_t count, size_t size) {
    if (count < 0 || (size && (uint64_t)count > SIZE_MAX / size)) return SIZE_MAX;
    return (size_t)count * size;
}

#endif
