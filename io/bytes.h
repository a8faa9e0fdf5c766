/* bytes.h - byte order, for the file formats of io/ (internal to io/). */
#ifndef BN_IO_BYTES_H
#define BN_IO_BYTES_H

#include <stddef.h>
#include <stdint.h>

/* Reverses the bytes of each of the count values of `size` bytes at data, in place. */
static inline void bn_io_swap_bytes(void *data, int64_t count, size_t size) {
    unsigned char *p = data;
    for (int64_t i = 0; i < count; i++, p += size)
        for (size_t a = 0, b = size - 1; a < b; a++, b--) {
            unsigned char t = p[a];
            p[a] = p[b];
            p[b] = t;
        }
}

#endif
