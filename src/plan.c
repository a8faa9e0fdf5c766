/* plan.c - the decisions of a call (plan.h), from the shape, the thread count and the machine. */
#include "plan.h"

#include "calibrate.h"
#include "machine.h"
#include "validate.h"

#include <stdio.h>

bn_tiles bn_tiles_of(int64_t rows, int64_t channels, int threads) {
    int64_t per = (rows + BN_MAX_PARTS - 1) / BN_MAX_PARTS;
    per = (per + BN_ROWS - 1) / BN_ROWS * BN_ROWS;
    if (per < BN_ROWS) per = BN_ROWS;
    const int64_t parts = (rows + per - 1) / per;
    /* the chunks of channels that give each thread a tile, in multiples of 16 channels */
    const int64_t chunks = threads > parts && parts > 0 ? (threads + parts - 1) / parts : 1;
    int64_t width = ((channels + chunks - 1) / chunks + 15) / 16 * 16;
    if (width < BN_TILE_CHANNELS) width = BN_TILE_CHANNELS;
    if (width > BN_TILE_CHANNELS_MAX) width = BN_TILE_CHANNELS_MAX;
    bn_tiles t = {rows, per, parts, channels, (channels + width - 1) / width, width};
    return t;
}

bn_tiles bn_tiles_elementwise(int64_t rows, int64_t channels, int threads) {
    if (rows < BN_MAX_PARTS) return bn_tiles_of(rows, channels, threads);
    const int64_t per = (rows + BN_MAX_PARTS - 1) / BN_MAX_PARTS;
    bn_tiles t = {rows, per, (rows + per - 1) / per, channels, 1, channels};
    return t;
}

int64_t bn_run_length(int64_t items, int threads) {
    const int64_t runs = threads < items ? threads : items;
    return runs > 0 ? (items + runs - 1) / runs : 1;
}

int64_t bn_cache_chunk(int64_t rows, int64_t channels, int streams, size_t elem_size,
                       int64_t budget, int threads) {
    if (rows <= 0 || channels <= 0 || threads <= 0) return 0;
    const int64_t share = (channels + threads - 1) / threads;
    const int64_t chunk = (share + 15) / 16 * 16; /* one chunk a thread */
    const int64_t width = chunk < channels ? chunk : channels;
    /* a chunk's rows of every array in half the budget, a quarter of the L2: chunks of half
     * the L2 ran slower than the tiles on the Intel Xeon (2 MiB L2, paired, 1 / 2 threads):
     * (256, 1024) training 1.07 / 1.47x, backward 1.10 / 1.83x the time; (128, 1024) training
     * on 2 threads 1.09x. Where they fit in a quarter, they ran faster: (64, 1024) on 2 threads
     * 0.86x (training) and 0.82x (backward), (64, 256) and (1024, 64) 0.91-0.96x */
    if (width > budget / 2 / rows / streams / (int64_t)elem_size) return 0;
    /* a chunk narrower than the rows reads a piece of each; below 1 KiB per row, reading them
     * costs more than the second pass the chunks save (measured: 2048x512 training,
     * 128-byte pieces 395 us, tiles 177 us) */
    if (width < channels && width * (int64_t)elem_size < 1024) return 0;
    return chunk;
}

int bn_inputs_fit_l2_alone(int64_t bytes, int reads, int threads, int64_t l2) {
    const int64_t share = bytes / (threads > 1 ? threads : 1);
    const int64_t inputs = (reads > 1 ? reads : 1) * share;
    return inputs <= l2 && inputs + share > l2;
}

int bn_cache_overlap(int64_t bytes, int64_t budget) {
    return bytes <= budget || bytes >= 2 * budget;
}

bn_status bn_plan_for(bn_plan *p, const bn_desc *desc, int reads, bn_machine machine,
                      int threads) {
    const bn_desc d = bn_kernel_desc(desc);
    const int64_t l2 = machine.l2 > 0 ? machine.l2 : INT64_C(1) << 20;
    const int64_t forced = bn_cache_budget_forced();
    /* field by field: a compound literal zeroes the whole struct first, which GCC makes a
     * `rep stos` (without it, (20, 2) training took 0.92x the time, paired) */
    p->d = d;
    p->es = bn_dtype_size(d.dtype);
    p->count = bn_count(&d);
    p->elements = d.n * d.c * d.s;
    p->threads = threads;
    p->reads = reads;
    p->overlap = 0;
    p->run = 0;
    p->group = 1;
    p->tiles = (bn_tiles){0, 0, 0, 0, 0, 0};
    p->pieces = p->tiles;
    p->chunk = 0;
    p->prefetch = 0;
    p->machine = machine;
    p->budget = forced ? forced : l2 / 2;
    if (reads == 2 || (d.layout == BN_CHANNELS_FIRST && reads > 0)) {
        p->stream_threshold = BN_STREAM_L2S * l2;
        p->stream_rule = "4 x L2: backward, or channels-first training";
    } else {
        p->stream_threshold = BN_STREAM_THRESHOLD;
        p->stream_rule = "16 MiB";
    }
    const int64_t bytes = p->elements * (int64_t)p->es;
    p->stream = bytes >= p->stream_threshold;
    p->stream_measured = 0;
    if (!p->stream && bn_kernels_can_stream() &&
        bn_inputs_fit_l2_alone(bytes, reads, threads, l2)) {
        if (p->machine.streaming_pays < 0)
            p->machine.streaming_pays = bn_streaming_measured_faster(l2);
        p->stream = p->machine.streaming_pays > 0;
        p->stream_measured = 1;
    }
    p->stream = p->stream && bn_kernels_can_stream();
    p->k = bn_kernels_for(d.dtype, p->stream);
    if (!p->k) return BN_ERR_UNSUPPORTED; /* a dtype without kernels */
    if (d.layout == BN_CHANNELS_LAST) {
        const int64_t rows = d.n * d.s;
        if (reads > 0) {
            p->prefetch = reads * p->elements * (int64_t)p->es > BN_PREFETCH_L2S * l2;
            p->tiles = bn_tiles_of(rows, d.c, threads);
            p->chunk = bn_cache_chunk(rows, d.c, reads + 1, p->es, p->budget, threads);
        }
        if (!p->chunk) p->pieces = bn_tiles_elementwise(rows, d.c, threads);
    } else {
        p->group = d.s < BN_SHORT ? BN_GROUP : 1;
        if (reads > 0) {
            p->overlap = bn_cache_overlap(reads * p->count * (int64_t)p->es * p->group, p->budget);
            if (p->overlap)
                p->run = (bn_run_length(d.c, threads) + p->group - 1) / p->group * p->group;
        }
    }
    return BN_OK;
}

bn_status bn_plan_make(bn_plan *p, const bn_desc *desc, int reads) {
    return bn_plan_for(p, desc, reads, bn_machine_this(), bn_get_num_threads());
}

/* Why channels-first passes overlap or not (bn_cache_overlap), in words. */
static const char *overlap_reason(const bn_plan *p) {
    const int64_t bytes = p->reads * p->count * (int64_t)p->es * p->group;
    if (p->reads == 0) return "no first pass";
    if (bytes <= p->budget) return "two groups of channels fit in the L2";
    if (bytes >= 2 * p->budget) return "one group of channels does not fit in the L2";
    return "one group fits in the L2 but two do not: its second pass reads it from there";
}

void bn_plan_describe(const bn_plan *p, char *buf, size_t size) {
    const char *dtype = p->d.dtype == BN_FLOAT32 ? "f32" : p->d.dtype == BN_FLOAT64 ? "f64" : "?";
    int used;
    if (p->d.layout == BN_CHANNELS_LAST)
        used = snprintf(buf, size,
                        "layout=channels-last dtype=%s threads=%d tiles=%lldx%lld (%lld rows, %lld "
                        "channels each) pieces=%lldx%lld chunk=%lld (%s) prefetch=%s (%s)",
                        dtype, p->threads, (long long)p->tiles.parts, (long long)p->tiles.chunks,
                        (long long)p->tiles.per, (long long)p->tiles.width,
                        (long long)p->pieces.parts, (long long)p->pieces.chunks,
                        (long long)p->chunk,
                        p->reads == 0  ? "no first pass"
                        : p->chunk > 0 ? "a thread's channels, all their rows of every array, "
                                         "fit in half the budget"
                                       : "a thread's channels with all their rows do not fit in "
                                         "half the budget, or would be less than 1 KiB of a row",
                        p->prefetch ? "yes" : "no",
                        p->reads == 0 ? "no first pass"
                        : p->prefetch ? "its reads are more than 4 L2s; the second pass walks each "
                                        "thread's rows from the end"
                                      : "its reads fit in 4 L2s: in some cache");
    else
        used = snprintf(buf, size,
                        "layout=channels-first dtype=%s threads=%d group=%lld overlap=%s (%s) "
                        "run=%lld",
                        dtype, p->threads, (long long)p->group, p->overlap ? "yes" : "no",
                        overlap_reason(p),
                        (long long)p->run);
    if (used >= 0 && (size_t)used < size)
        snprintf(buf + used, size - (size_t)used,
                 " stream=%s (output %lld bytes, from %lld: %s%s%s) cache-budget=%lld (L2 / 2)"
                 " l2=%lld l3=%lld (as reported; the L3 is not used) kernels=%s",
                 p->stream ? "yes" : "no", (long long)(p->elements * (int64_t)p->es),
                 (long long)p->stream_threshold, p->stream_rule,
                 !p->stream_measured ? ""
                 : p->machine.streaming_pays > 0
                     ? "; below that, where a thread's inputs fit its L2 but not beside its "
                       "output, as here, streaming stores were measured faster on this machine"
                     : "; below that, where a thread's inputs fit its L2 but not beside its "
                       "output, as here, streaming stores were measured no faster on this machine",
                 bn_kernels_can_stream() ? "" : "; this CPU or build has no streaming stores",
                 (long long)p->budget, (long long)p->machine.l2, (long long)p->machine.l3,
                 bn_kernels_isa());
}
