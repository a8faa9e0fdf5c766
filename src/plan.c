/* plan.c - the decisions of a call (plan.h), from the shape, the thread count and the machine. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "plan.h"

#include "machine.h"
#include "store_trial.h"
#include "validate.h"

#include <stdio.h>
#include <time.h>

bn_tiles bn_tiles_of(int64_t rows, int64_t channels, int threads, int64_t part_rows) {
    int64_t per = (rows + BN_MAX_PARTS - 1) / BN_MAX_PARTS;
    per = (per + part_rows - 1) / part_rows * part_rows;
    if (per < part_rows) per = part_rows;
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
    if (rows < BN_MAX_PARTS) return bn_tiles_of(rows, channels, threads, BN_ROWS);
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

int bn_share_exceeds_l2(int64_t bytes, int reads, int threads, int64_t l2) {
    const int64_t share = bytes / (threads > 1 ? threads : 1);
    const int64_t inputs = (reads > 1 ? reads : 1) * share;
    return inputs + share > l2;
}

int bn_cache_overlap(int64_t bytes, int64_t budget) {
    return bytes <= budget || bytes >= 2 * budget;
}

/* The trial case of a plan whose passes are `passes` (store_trial.h). */
static bn_trial_case trial_case(const bn_plan *p, int passes) {
    const bn_trial_case k = {p->d.n, p->d.c, p->d.s, (int)p->d.layout, (int)p->d.dtype,
                             p->reads, p->threads, passes};
    return k;
}

/* The passes of a whole call of this plan (store_trial.h's bits): a first one unless there is
 * none, and the second. */
static int plan_passes(const bn_plan *p) { return p->reads > 0 ? 3 : 2; }

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
    p->stream = bytes >= p->stream_threshold && bn_kernels_can_stream();
    p->stream_open = !p->stream && bn_kernels_can_stream() &&
                     bn_share_exceeds_l2(bytes, reads, threads, l2);
    p->trial = 0;
    if (p->stream_open && p->machine.streaming_pays < 0) { /* what the trial has decided */
        int64_t plain_ns, streaming_ns;
        const bn_trial_case k = trial_case(p, plan_passes(p));
        p->stream = bn_store_trial_verdict(&k, &plain_ns, &streaming_ns) > 0;
    } else if (p->stream_open) {
        p->stream = p->machine.streaming_pays > 0;
    }
    p->k = bn_kernels_for(d.dtype, p->stream);
    p->kp = bn_kernels_for(bn_param_dtype(&d), 0);
    p->epilogue = BN_EPILOGUE_NONE;
    if (!p->k || !p->kp) return BN_ERR_UNSUPPORTED; /* a dtype without kernels */
    if (d.layout == BN_CHANNELS_LAST) {
        const int64_t rows = d.n * d.s;
        if (reads > 0) {
            p->prefetch = reads * p->elements * (int64_t)p->es > BN_PREFETCH_L2S * l2;
            p->tiles = bn_tiles_of(rows, d.c, threads, reads == 2 ? BN_GRAD_ROWS : BN_ROWS);
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

void bn_plan_set_epilogue(bn_plan *p, int epilogue) {
    p->epilogue = epilogue;
    p->k = bn_kernels_for_epilogue(p->d.dtype, p->stream, epilogue);
}

void bn_plan_try_stores(bn_plan *p, int passes) {
    if (!p->stream_open || p->machine.streaming_pays >= 0) return;
    const bn_trial_case k = trial_case(p, passes);
    const int stream = bn_store_trial_kind(&k, &p->trial);
    if (stream == p->stream) return; /* bn_plan_for already took these kernels */
    p->stream = stream;
    p->k = bn_kernels_for_epilogue(p->d.dtype, stream, p->epilogue);
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

int64_t bn_plan_trial_start(const bn_plan *p) { return p->trial ? now_ns() : 0; }

void bn_plan_trial_end(const bn_plan *p, int64_t start) {
    if (p->trial) bn_store_trial_report(p->trial, p->stream, now_ns() - start);
}

/* Why channels-first passes overlap or not (bn_cache_overlap), in words. */
static const char *overlap_reason(const bn_plan *p) {
    const int64_t bytes = p->reads * p->count * (int64_t)p->es * p->group;
    if (p->reads == 0) return "no first pass";
    if (bytes <= p->budget) return "two groups of channels fit in the L2";
    if (bytes >= 2 * p->budget) return "one group of channels does not fit in the L2";
    return "one group fits in the L2 but two do not: its second pass reads it from there";
}

/* Why an open case's stores stream or not (bn_plan_try_stores), in words, into buf. */
static void open_reason(const bn_plan *p, char *buf, size_t size) {
    buf[0] = '\0';
    if (!p->stream_open) return;
    const char *where = "; below that, where a thread's share of the inputs and the output is "
                        "more than its L2, as here, ";
    if (p->machine.streaming_pays >= 0) {
        snprintf(buf, size, "%sthe machine given says %s", where,
                 p->machine.streaming_pays ? "streaming pays" : "plain stores");
        return;
    }
    int64_t plain_ns, streaming_ns;
    const bn_trial_case k = trial_case(p, plan_passes(p));
    const int verdict = bn_store_trial_verdict(&k, &plain_ns, &streaming_ns);
    if (verdict < 0)
        snprintf(buf, size, "%sthe case's first %d calls time both kinds of store (not decided "
                 "yet: plain meanwhile)", where, BN_TRIAL_CALLS);
    else
        snprintf(buf, size, "%sthe case's first %d calls timed both: streaming %.1f us, plain "
                 "%.1f us, so stores %s", where, BN_TRIAL_CALLS, (double)streaming_ns / 1e3,
                 (double)plain_ns / 1e3, verdict ? "stream" : "do not stream");
}

void bn_plan_describe(const bn_plan *p, char *buf, size_t size) {
    char open[400];
    open_reason(p, open, sizeof open);
    static const char *const names[] = {"f32", "f64", "bf16", "f16"};
    const char *dtype = (unsigned)p->d.dtype < 4 ? names[p->d.dtype] : "?";
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
                 open,
                 bn_kernels_can_stream() ? "" : "; this CPU or build has no streaming stores",
                 (long long)p->budget, (long long)p->machine.l2, (long long)p->machine.l3,
                 bn_kernels_isa());
}
