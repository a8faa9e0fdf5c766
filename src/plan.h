/* plan.h - the one place where (shape, layout, dtype, threads, machine) becomes the decisions of
 * a call: which kernels, how the work is cut into items, whether passes overlap or run chunk by
 * chunk in cache, whether stores stream. Only speed depends on these choices: work that is
 * summed or merged is cut by the shape alone (tiles, blocks), so every result is the same bits
 * whatever the plan says. bn_plan_describe prints it, so `bnorm bench` can say what it chose. */
#ifndef BN_PLAN_H
#define BN_PLAN_H

#include "kernels.h"
#include "machine.h"

#include <stddef.h>
#include <stdint.h>

/* Channels-last work cuts the rows into at most this many parts. */
#define BN_MAX_PARTS 64
/* The gradient sums' parts are multiples of this many rows, where the statistics' are of
 * BN_ROWS: a part of the plain double sums costs nothing to merge, and with parts of 128 rows
 * two threads each sum the rows whose dx they form, so each reads its rows from its own L2. The
 * statistics' parts keep BN_ROWS: each part samples its own pivots. Measured on the Intel Xeon
 * (2 MiB L2), separate processes: (256, 1024) backward on 2 threads 76.5-80.7 -> 54.5-55.9 us;
 * training with parts of 128 rows 32 -> 40-42 us, so not there. Fixed, as the parts must be, by the shape
 * alone. */
#define BN_GRAD_ROWS 128
/* Channels in a channels-last tile: at least BN_TILE_CHANNELS (or all of them), at most
 * BN_TILE_CHANNELS_MAX, and as many as leave a tile for each thread (bn_tiles_of). A tile
 * reads a piece of each row; the longer the piece, the better the hardware streams it (the
 * (256, 1024) training on one thread: 0.97x the time with pieces of 4 KiB rather than 1 KiB,
 * paired, 5 rounds). How channels are cut changes no bit: each channel's sums are its own. */
#define BN_TILE_CHANNELS 256
#define BN_TILE_CHANNELS_MAX 1024

/* A channels-last tensor's (N*S, C) rows cut into tiles: `parts` ranges of `per` rows (a
 * multiple of the statistics block, the last shorter) times `chunks` ranges of channels.
 * Tile k is part k / chunks, chunk k % chunks. */
typedef struct {
    int64_t rows, per, parts;
    int64_t channels, chunks, width; /* width: channels per chunk */
} bn_tiles;

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

typedef struct {
    bn_desc d;             /* the descriptor the kernels see (bn_kernel_desc) */
    const bn_kernels *k;   /* the kernels: the dtype's, streaming or plain */
    const bn_kernels *kp;  /* the per-channel arrays' (load, store, blend, eval_coefs): the
                            * parameters' dtype's, whose compute type is k's */
    int epilogue;          /* of k's forward output kernels (BN_EPILOGUE_NONE unless set) */
    size_t es;             /* bytes per stored value */
    int64_t count;         /* n * s: values per channel of this tensor */
    int64_t elements;      /* n * c * s */
    int threads;           /* what bn_get_num_threads said */
    int stream;            /* outputs are written with streaming stores */
    /* channels-first */
    int reads;             /* arrays the first pass reads (bn_plan_for), 0 without one */
    int overlap;           /* a group's second pass rides along the next one's first */
    int64_t run;           /* channels per item when passes overlap (else 0), a multiple of group */
    int64_t group;         /* channels per group: BN_GROUP for rows shorter than BN_SHORT, else 1 */
    /* channels-last */
    bn_tiles tiles;        /* of the first pass (statistics or sums): fixed by the shape */
    bn_tiles pieces;       /* of element-wise passes (bn_tiles_elementwise), unless chunked */
    int64_t chunk;         /* channels per item when a chunk's rows stay in cache, else 0 */
    int prefetch;          /* the statistics or gradient sums ask for rows ahead: what they
                            * read is more than BN_PREFETCH_L2S L2s */
    /* what the plan was made of */
    bn_machine machine;    /* the caches it was given, and the store verdict of an open case */
    int64_t budget;        /* cache bytes a thread may keep between two passes: half the L2 */
    int64_t stream_threshold; /* output bytes from which stores stream */
    int stream_open;          /* below it, where bn_share_exceeds_l2: the size rules leave the
                               * store kind to machine.streaming_pays, or to the case's trial
                               * (store_trial.h, bn_plan_try_stores) */
    int trial;                /* this call is timed for its case's trial: its slot, else 0 */
    const char *stream_rule;  /* where that threshold comes from, in words */
} bn_plan;

/* Output bytes from which stores stream, for eval and channels-last training: a size no L2
 * holds, and half the 32 MiB L3 of the AMD EPYC measured, but not read from /sys (whose L3 may
 * be a host's). */
#define BN_STREAM_THRESHOLD (INT64_C(16) << 20)
/* Backward, and channels-first training, stream from this many L2s of output: the second pass
 * reads the data back from cache, which plain stores of the output crowd. Measured on the AMD
 * EPYC (1 MiB L2), streaming from 4 MiB against from 16 MiB (docs/performance.md): 6.4-12.8 MB
 * tensors took 0.58-0.97x the time in channels-first training and 0.70-1.01x in backward, where
 * eval took up to 1.96x on two threads and channels-last training up to 1.37x. */
#define BN_STREAM_L2S 4
/* Channels-last statistics and gradient sums ask for rows ahead in software where they read
 * more than this many L2s: that much comes from beyond the core's own caches, where the hardware
 * alone keeps too few reads in flight. Less is in some cache, and the requests only cost.
 * Measured on the AMD EPYC (512 KiB L2), 1 thread, paired, time without over time with: (256,
 * 1024) training (1 MiB) 0.85x, backward 0.91x; NHWC 8x64x56x56 training (6.4 MB) 1.06-1.10x,
 * backward 0.99-1.01x; NHWC 32x64x56x56 training (25.7 MB) 1.07-1.18x, backward 0.97-1.10x. */
#define BN_PREFETCH_L2S 4

/* The plan of a pass over the tensor desc (checked) whose first pass reads `reads` arrays of it
 * (1: x; 2: dy and x; 0: there is no first pass, only an element-wise one, as in eval) and
 * whose second pass writes one, on `threads` threads of a machine with these caches (an L2 of 0:
 * taken as 1 MiB). Only what the pass will use is decided (no element-wise pieces when it runs
 * chunk by chunk; no run length without overlap). BN_OK, or BN_ERR_UNSUPPORTED when the dtype
 * has no kernels. */
bn_status bn_plan_for(bn_plan *plan, const bn_desc *desc, int reads, bn_machine machine,
                      int threads);

/* bn_plan_for on this machine (bn_machine_this) and the library's thread count. */
bn_status bn_plan_make(bn_plan *plan, const bn_desc *desc, int reads);

/* The plan's kernels with this epilogue on their forward outputs (kernel_types.h). */
void bn_plan_set_epilogue(bn_plan *plan, int epilogue);

/* The plan in one line of text ("layout=channels-last dtype=f32 threads=2 ..."), with the
 * caches it was made for and why stores stream or not, cut to size. */
void bn_plan_describe(const bn_plan *plan, char *buf, size_t size);

/* Tiles of the (rows, channels) rows of a channels-last tensor for passes whose results are
 * summed, for `threads` threads: the parts of the rows (which the merge sees) fixed by the shape
 * alone, each a multiple of part_rows rows (BN_ROWS for the statistics, BN_GRAD_ROWS for the
 * gradient sums), the channels of a tile by the threads too. */
bn_tiles bn_tiles_of(int64_t rows, int64_t channels, int threads, int64_t part_rows);

/* Tiles for passes with no sums (normalize, dx), which may cut the rows anywhere: whole rows,
 * at most BN_MAX_PARTS parts of them, when there are that many rows; bn_tiles_of otherwise.
 * Two threads that write the two halves of the same rows slow each other down (measured:
 * (256, 1024) eval on 2 threads, 31 us with channel chunks against 12.7 us with whole rows). */
bn_tiles bn_tiles_elementwise(int64_t rows, int64_t channels, int threads);

/* Channels-last passes that touch `streams` arrays of `rows` rows can work a chunk of channels
 * at a time while the chunk stays in the per-core cache. A chunk is one thread's share of the
 * channels (a multiple of 16); its width, or 0 when its rows of every array do not fit in half
 * the budget, or when it would be a piece of less than 1 KiB of each row (too narrow to read
 * well). */
int64_t bn_cache_chunk(int64_t rows, int64_t channels, int streams, size_t elem_size,
                       int64_t budget, int threads);

/* Whether a thread's share of the inputs of a pass over `bytes` of tensor (x, or dy and x: reads
 * arrays, at least one) and its share of the output are more than an L2 of l2 bytes holds. Plain
 * stores then bring the output's lines into the L2 and push inputs out; streaming ones do not,
 * but send the output to memory: which pays is measured (store_trial.h). */
int bn_share_exceeds_l2(int64_t bytes, int reads, int threads, int64_t l2);

/* Where the plan's rules leave the store kind open (plan->stream_open) and its machine has no
 * verdict (streaming_pays -1), the kind of this call, which runs `passes` (store_trial.h's bits),
 * from its case's trial: plan->stream, plan->k and plan->trial set. A call that writes an output
 * asks, once, after bn_plan_make; then it times itself with bn_plan_trial_start and
 * bn_plan_trial_end. (bn_plan_for, with a machine whose streaming_pays is -1, takes the trial's
 * verdict where there is one, and plain stores where not.) */
void bn_plan_try_stores(bn_plan *plan, int passes);

/* The clock (ns) at the start of a call whose plan is timed for a trial, else 0; and its time
 * reported at the end (nothing when not timed). */
int64_t bn_plan_trial_start(const bn_plan *plan);
void bn_plan_trial_end(const bn_plan *plan, int64_t start);

/* Whether channel-by-channel passes should overlap: each channel's second pass (normalize, or
 * dx) made while the next channel's first pass (statistics, or sums) reads it, so that one
 * channel is read from memory while the other is written. The first pass leaves a channel of
 * `bytes` in the L2 for the second when it fits there, but not beside the next channel:
 * overlap then costs more than it saves. So: overlap when two channels fit in the L2 (twice
 * the budget), or when one channel does not. */
int bn_cache_overlap(int64_t bytes, int64_t budget);

/* Items per run when `items` independent items are grouped into one run per thread of `threads`
 * (at most one run per item): each thread then works its run in order, one item overlapping the
 * next. */
int64_t bn_run_length(int64_t items, int threads);

#endif
