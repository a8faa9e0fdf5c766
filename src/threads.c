/* threads.c - the thread count, and the one parallel loop of the library. */
#include "threads.h"

#include "kernels.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static atomic_int requested_threads; /* 0: OpenMP's default */

void bn_set_num_threads(int n) { atomic_store(&requested_threads, n > 0 ? n : 0); }

int bn_get_num_threads(void) {
#ifdef _OPENMP
    int n = atomic_load(&requested_threads);
    return n > 0 ? n : omp_get_max_threads();
#else
    return 1;
#endif
}

static _Thread_local int last_team = 1; /* tests: the calling thread's last team size */

int bn_parallel_last_team(void) { return last_team; }

void bn_parallel_for(int64_t items, int64_t elements, bn_item_fn fn, const void *args) {
    int threads = 1;
    if (elements >= BN_PARALLEL_MIN_ELEMENTS && items > 1) {
        threads = bn_get_num_threads();
        if (items < threads) threads = (int)items;
    }
    if (threads == 1) { /* no parallel region at all: small calls pay nothing for threads */
        last_team = 1;
        for (int64_t k = 0; k < items; k++) fn(args, k);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
    {
        if (omp_get_thread_num() == 0) last_team = omp_get_num_threads(); /* the caller's */
#pragma omp for schedule(static)
        for (int64_t k = 0; k < items; k++) fn(args, k);
    }
#else
    for (int64_t k = 0; k < items; k++) fn(args, k);
#endif
}

int64_t bn_run_length(int64_t items) {
    const int64_t threads = bn_get_num_threads();
    const int64_t runs = threads < items ? threads : items;
    return runs > 0 ? (items + runs - 1) / runs : 1;
}

bn_tiles bn_tiles_of(int64_t rows, int64_t channels) {
    int64_t per = (rows + BN_MAX_PARTS - 1) / BN_MAX_PARTS;
    per = (per + BN_ROWS - 1) / BN_ROWS * BN_ROWS;
    if (per < BN_ROWS) per = BN_ROWS;
    bn_tiles t = {rows, per, (rows + per - 1) / per, channels,
                  (channels + BN_TILE_CHANNELS - 1) / BN_TILE_CHANNELS, BN_TILE_CHANNELS};
    return t;
}

bn_tiles bn_tiles_elementwise(int64_t rows, int64_t channels) {
    if (rows < BN_MAX_PARTS) return bn_tiles_of(rows, channels);
    const int64_t per = (rows + BN_MAX_PARTS - 1) / BN_MAX_PARTS;
    bn_tiles t = {rows, per, (rows + per - 1) / per, channels, 1, channels};
    return t;
}

static atomic_llong budget_override; /* tests: bytes, or 0 */

void bn_cache_budget_override(int64_t bytes) { atomic_store(&budget_override, bytes > 0 ? bytes : 0); }

/* The first line of a small text file, or "" when it cannot be read. */
static void read_line(const char *path, char *buf, int size) {
    buf[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (!fgets(buf, size, f)) buf[0] = 0;
    fclose(f);
}

int64_t bn_cache_size(int level) {
    for (int index = 0; index < 16; index++) {
        char path[96], text[64];
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", index);
        read_line(path, text, sizeof text);
        if (!text[0]) break;
        if (atoi(text) != level) continue;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/type", index);
        read_line(path, text, sizeof text);
        if (text[0] == 'I') continue; /* an instruction cache */
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", index);
        read_line(path, text, sizeof text);
        char *end;
        long long size = strtoll(text, &end, 10);
        if (size <= 0) return 0;
        if (*end == 'K') size <<= 10;
        if (*end == 'M') size <<= 20;
        return (int64_t)size;
    }
    return 0;
}

/* Bytes a thread may keep in cache between two passes over the same chunk. */
static int64_t cache_budget(void) {
    static atomic_llong budget; /* 0 until first asked */
    const long long forced = atomic_load(&budget_override);
    if (forced) return (int64_t)forced;
    long long b = atomic_load(&budget);
    if (b == 0) {
        const int64_t l2 = bn_cache_size(2);
        b = (l2 > 0 ? l2 : INT64_C(1) << 20) / 2;
        atomic_store(&budget, b);
    }
    return (int64_t)b;
}

int64_t bn_cache_chunk(int64_t rows, int64_t channels, int streams, size_t elem_size) {
    const int64_t budget = cache_budget();
    if (rows <= 0 || rows > budget) return 0;
    const int64_t width = budget / (rows * streams * (int64_t)elem_size) / 16 * 16;
    if (width < 16) return 0;
    const int64_t threads = bn_get_num_threads();
    const int64_t share = (channels + threads - 1) / threads;
    const int64_t even = (share + 15) / 16 * 16; /* one chunk per thread, when chunks can be so wide */
    const int64_t chunk = width < even ? width : even;
    /* a chunk narrower than the rows reads a piece of each; below 1 KiB per row, reading them
     * costs more than the second pass the chunks save (measured: 2048x512 training,
     * 128-byte pieces 395 us, tiles 177 us) */
    if (chunk < channels && chunk * (int64_t)elem_size < 1024) return 0;
    return chunk;
}

int bn_cache_overlap(int64_t bytes) {
    const int64_t budget = cache_budget();
    return bytes <= budget || bytes >= 2 * budget;
}
