/* threads.h - how a call spreads over threads. Work whose results are summed or merged is cut
 * into items fixed by the shape (channels, or parts of the rows); the thread count only decides
 * who does which item. Work on independent channels or rows may also be grouped into one run per
 * thread (bn_run_length), which changes no bit either. */
#ifndef BN_THREADS_H
#define BN_THREADS_H

#include "bnorm.h"

#include <stdint.h>

/* Below this many elements a call stays on the calling thread: starting threads costs more. */
#define BN_PARALLEL_MIN_ELEMENTS (INT64_C(1) << 15)
/* Items per run when `items` independent items are grouped into one run per thread (at most
 * one run per item): each thread then works its run in order, one item overlapping the next. */
int64_t bn_run_length(int64_t items);

/* Channels-last work cuts the rows into at most this many parts. */
#define BN_MAX_PARTS 64

typedef void (*bn_item_fn)(const void *args, int64_t item);

/* Calls fn(args, item) for item in [0, items), spread over the library's threads when the call
 * touches at least BN_PARALLEL_MIN_ELEMENTS elements. Items must be independent. */
void bn_parallel_for(int64_t items, int64_t elements, bn_item_fn fn, const void *args);

/* For tests: how many threads the calling thread's last bn_parallel_for ran on (1 without a
 * parallel region). Per calling thread, so concurrent callers each see their own. */
int bn_parallel_last_team(void);

/* Channels in a channels-last tile: a few KiB of each row, so tiles of a wide (N, C) tensor
 * can go to different threads. */
#define BN_TILE_CHANNELS 256

/* A channels-last tensor's (N*S, C) rows cut into tiles: `parts` ranges of `per` rows (a
 * multiple of the statistics block, the last shorter) times `chunks` ranges of channels.
 * Fixed by the shape alone; tile k is part k / chunks, chunk k % chunks. */
typedef struct {
    int64_t rows, per, parts;
    int64_t channels, chunks, width; /* width: channels per chunk */
} bn_tiles;

bn_tiles bn_tiles_of(int64_t rows, int64_t channels);

/* Tiles for passes with no sums (normalize, dx), which may cut the rows anywhere: whole rows,
 * at most BN_MAX_PARTS parts of them, when there are that many rows; bn_tiles_of otherwise.
 * Two threads that write the two halves of the same rows slow each other down (measured:
 * (256, 1024) eval on 2 threads, 31 us with channel chunks against 12.7 us with whole rows). */
bn_tiles bn_tiles_elementwise(int64_t rows, int64_t channels);

/* Channels-last passes that touch `streams` arrays of `rows` rows can work a chunk of channels
 * at a time while the chunk stays in the per-core cache: half of the L2 (taken as 1 MiB when the
 * system reports none). The chunk's width in channels, a multiple of 16, at most what
 * gives every thread a chunk; 0 when even 16 channels do not fit, or when a chunk would be a
 * piece of less than 1 KiB of each row (too narrow to read well). Only speed depends on it:
 * channels are independent, so results are the same bits for any width. */
int64_t bn_cache_chunk(int64_t rows, int64_t channels, int streams, size_t elem_size);

/* Whether channel-by-channel passes should overlap: each channel's second pass (normalize, or
 * dx) made while the next channel's first pass (statistics, or sums) reads it, so that one
 * channel is read from memory while the other is written. The first pass leaves a channel of
 * `bytes` in the L2 for the second when it fits there, but not beside the next channel:
 * overlap then costs more than it saves. So: overlap when two channels fit in the L2 (twice
 * the budget above), or when one channel does not. Only speed depends on it. */
int bn_cache_overlap(int64_t bytes);

/* The size in bytes of the data cache of the given level (2, 3) that CPU 0 reports in Linux's
 * /sys/devices/system/cpu/cpu0/cache, or 0 when it reports none. (glibc's sysconf can be far off
 * in virtual machines: 384 MiB of L3 for a 32 MiB one has been seen.) */
int64_t bn_cache_size(int level);

/* For tests: the cache budget in bytes instead of half the L2 (0: the L2's again). */
void bn_cache_budget_override(int64_t bytes);

typedef struct {
    int64_t r0, r1, c0, c1, part;
} bn_tile;

static inline bn_tile bn_tile_at(const bn_tiles *t, int64_t k) {
    bn_tile tile;
    tile.part = k / t->chunks;
    tile.r0 = tile.part * t->per;
    tile.r1 = tile.r0 + t->per < t->rows ? tile.r0 + t->per : t->rows;
    tile.c0 = k % t->chunks * t->width;
    tile.c1 = tile.c0 + t->width < t->channels ? tile.c0 + t->width : t->channels;
    return tile;
}

#endif
