/* channels_last.c - the skeleton of a pass over a channels-last tensor (pass.h): R = N*S rows of
 * C values, cut into tiles (plan.h) fixed by the shape. The first pass of a tile writes the
 * partials of its part; the merge takes the parts in the order of the rows. */
#include "pass.h"
#include "threads.h"

static void first_tile(const void *args, int64_t k) {
    const bn_pass *p = args;
    const bn_tile t = bn_tile_at(&p->plan->tiles, k);
    p->cl_first(p, &t);
}

static void second_piece(const void *args, int64_t k) {
    const bn_pass *p = args;
    const bn_tile t = bn_tile_at(&p->plan->pieces, k);
    p->cl_second(p, &t);
}

/* Item k: the merge and finish of channels [k * FINISH_CHANNELS, (k + 1) * FINISH_CHANNELS). */
enum { FINISH_CHANNELS = 64 };

static void finish_range(const void *args, int64_t k) {
    const bn_pass *p = args;
    const int64_t C = p->plan->d.c, c0 = k * FINISH_CHANNELS;
    p->cl_finish(p, c0, C - c0 < FINISH_CHANNELS ? C : c0 + FINISH_CHANNELS);
}

/* Item k: a chunk of channels whose rows fit in cache: the parts' first passes, their merge and
 * finish, and the second pass, while the chunk is still in cache. The same operations in the
 * same order as tile by tile, so the same bits. */
static void chunk(const void *args, int64_t k) {
    const bn_pass *p = args;
    const bn_tiles *tiles = &p->plan->tiles;
    const int64_t C = p->plan->d.c, width = p->plan->chunk;
    const int64_t c0 = k * width, c1 = c0 + width < C ? c0 + width : C;
    for (int64_t part = 0; part < tiles->parts && p->first; part++) {
        const int64_t r0 = part * tiles->per;
        const bn_tile t = {r0, r0 + tiles->per < tiles->rows ? r0 + tiles->per : tiles->rows, c0,
                           c1, part};
        p->cl_first(p, &t);
    }
    p->cl_finish(p, c0, c1);
    const bn_tile whole = {0, tiles->rows, c0, c1, 0};
    if (p->second) p->cl_second(p, &whole);
}

void bn_run_channels_last(const bn_pass *p) {
    const bn_plan *plan = p->plan;
    const int64_t C = plan->d.c;
    if (plan->chunk) {
        bn_parallel_for((C + plan->chunk - 1) / plan->chunk, plan->elements, chunk, p);
        return;
    }
    /* the three stages on one team, the finish split by channels (on the Intel Xeon, 2 threads,
     * (256, 1024) training spent a fifth of its time in the finish on one thread, with the other
     * waiting); the second pass, after a first pass that read beyond the core's caches
     * (plan.prefetch), from the end: the rows it read last are the ones still in some cache.
     * Measured on the AMD EPYC, paired, 5 rounds, NHWC 32x64x56x56: training 0.88x the time on 1
     * thread, 0.98x on 2; backward 0.95x and 0.90x. (256, 1024), in cache, took 1.01x (its
     * pieces of 16 KiB, walked backwards, each start a new stream), so not there */
    bn_phase phases[3];
    int count = 0;
    if (p->first)
        phases[count++] = (bn_phase){plan->tiles.parts * plan->tiles.chunks, first_tile, 0};
    phases[count++] = (bn_phase){(C + FINISH_CHANNELS - 1) / FINISH_CHANNELS, finish_range, 0};
    if (p->second)
        phases[count++] = (bn_phase){plan->pieces.parts * plan->pieces.chunks, second_piece,
                                     p->first && plan->prefetch};
    bn_parallel_phases(count, phases, plan->elements, p);
}
