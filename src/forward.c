/* forward.c - the training and eval forward passes: validate everything, then statistics,
 * saved and running statistics, and the normalized output.
 *   channels-first: channel by channel (in parallel), each normalized while still in cache, or
 *   while the next one's statistics are read (train_run);
 *   channels-last: statistics of tiles of the (N*S, C) rows (in parallel), merged per channel
 *   in the order of the rows, then the tiles normalized (in parallel); when a chunk of channels
 *   fits in cache with all its rows, chunk by chunk instead, each normalized while in cache.
 * The same drivers run the stages of a split batch: statistics only (bn_compute_moments), and
 * the normalization with statistics given (bn_forward_train_stats). */
#include "kernels.h"
#include "scratch.h"
#include "threads.h"
#include "validate.h"

#include <math.h>

typedef struct {
    bn_desc d; /* the effective descriptor (bn_kernel_desc) */
    void *y, *running_mean, *running_var;
    double *save_mean, *save_invstd;
    const void *x, *weight, *bias;
    double eps, factor; /* factor: weight of the batch in the running statistics */
    int64_t count;            /* m: values per channel in the whole batch */
    const bn_moments *given;  /* (C) the batch's moments (bn_forward_train_stats), or NULL */
    bn_moments *moments_out;  /* (C) non-NULL: only compute the statistics (bn_compute_moments) */
    /* channels-last only: scratch */
    bn_tiles tiles;           /* of the statistics */
    bn_tiles pieces;          /* of the normalization (bn_tiles_elementwise) */
    int64_t chunk;            /* channels per item when a chunk's rows stay in cache, else 0 */
    bn_moments *part_moments; /* (parts, C) */
    double *mean, *m2, *scale, *shift; /* (C) */
    void *coef;                   /* (BN_COEF_COUNT, C) in the tensor's dtype */
    int64_t run; /* channels-first only: channels per item of train_run */
} train_args;

/* Channels [c0, c1): saved and running statistics, and the coefficients of
 * y = (x - mean) * scale + shift, from their moments (mean, m2 point at channel c0's). */
static void finish(const train_args *a, int64_t c0, int64_t c1, const double *mean,
                   const double *m2, double *scale, double *shift) {
    bn_kernel_train_finish(&a->d, c0, c1, (double)a->count, mean, m2, scale, shift,
                           a->save_mean, a->save_invstd, a->running_mean, a->running_var,
                           a->weight, a->bias, a->eps, a->factor);
}

static void train_channel(const void *args, int64_t c) {
    const train_args *a = args;
    const bn_moments mom = a->given ? a->given[c] : bn_kernel_cf_moments(&a->d, a->x, c);
    if (a->moments_out) {
        a->moments_out[c] = mom;
        return;
    }
    double scale, shift;
    finish(a, c, c + 1, &mom.mean, &mom.m2, &scale, &shift);
    bn_kernel_cf_normalize(&a->d, a->y, a->x, c, 0, a->d.n, mom.mean, scale, shift);
}

/* Channels-first training, channels [k * run, (k + 1) * run): each channel is normalized while
 * the next one's statistics are read, so that the reads overlap the writes (where
 * bn_cache_overlap says it pays). The statistics are the same bits as train_channel's. */
static void train_run(const void *args, int64_t k) {
    const train_args *a = args;
    const int64_t c0 = k * a->run, c1 = c0 + a->run < a->d.c ? c0 + a->run : a->d.c;
    bn_moments mom = bn_kernel_cf_moments(&a->d, a->x, c0);
    for (int64_t c = c0; c < c1; c++) {
        double scale, shift;
        finish(a, c, c + 1, &mom.mean, &mom.m2, &scale, &shift);
        if (c + 1 < c1)
            mom = bn_kernel_cf_normalize_next(&a->d, a->y, a->x, c, mom.mean, scale, shift);
        else
            bn_kernel_cf_normalize(&a->d, a->y, a->x, c, 0, a->d.n, mom.mean, scale, shift);
    }
}

static void tile_moments(const void *args, int64_t k) {
    const train_args *a = args;
    const bn_tile t = bn_tile_at(&a->tiles, k);
    bn_moments *acc = a->part_moments + t.part * a->d.c;
    for (int64_t c = t.c0; c < t.c1; c++) acc[c] = bn_moments_empty();
    bn_kernel_cl_moments(&a->d, acc, a->x, t.r0, t.r1, t.c0, t.c1);
}

static void tile_normalize(const void *args, int64_t k) {
    const train_args *a = args;
    const bn_tile t = bn_tile_at(&a->pieces, k);
    bn_kernel_cl_normalize(&a->d, a->y, a->x, t.r0, t.r1, t.c0, t.c1, a->coef);
}

/* Channels [c0, c1): the parts' moments merged in the order of the rows (or the moments given),
 * then finished, or stored when only they are asked for. */
static void merge_parts(const train_args *a, int64_t c0, int64_t c1) {
    const int64_t C = a->d.c;
    for (int64_t c = c0; c < c1; c++) {
        bn_moments mom = bn_moments_empty();
        if (a->given)
            mom = a->given[c];
        else
            for (int64_t k = 0; k < a->tiles.parts; k++)
                bn_moments_merge(&mom, a->part_moments[k * C + c]);
        if (a->moments_out) a->moments_out[c] = mom;
        a->mean[c] = mom.mean;
        a->m2[c] = mom.m2;
    }
    if (!a->moments_out) finish(a, c0, c1, a->mean + c0, a->m2 + c0, a->scale + c0, a->shift + c0);
}

/* Item k: a chunk of channels whose rows fit in cache: the parts' moments, their merge, and the
 * normalization, while the chunk is still in cache. The same operations in the same order as
 * the tile by tile passes, so the same bits. */
static void chunk_train(const void *args, int64_t k) {
    const train_args *a = args; /* chunks write disjoint channels */
    const int64_t C = a->d.c, rows = a->tiles.rows;
    const int64_t c0 = k * a->chunk, c1 = c0 + a->chunk < C ? c0 + a->chunk : C;
    for (int64_t p = 0; p < a->tiles.parts && !a->given; p++) {
        bn_moments *acc = a->part_moments + p * C;
        const int64_t r0 = p * a->tiles.per, r1 = r0 + a->tiles.per < rows ? r0 + a->tiles.per : rows;
        for (int64_t c = c0; c < c1; c++) acc[c] = bn_moments_empty();
        bn_kernel_cl_moments(&a->d, acc, a->x, r0, r1, c0, c1);
    }
    merge_parts(a, c0, c1);
    if (a->moments_out) return;
    bn_kernel_cl_coefs(&a->d, a->coef, c0, c1, a->mean, a->scale, a->shift, NULL, NULL);
    bn_kernel_cl_normalize(&a->d, a->y, a->x, 0, rows, c0, c1, a->coef);
}

static bn_status train_channels_last(train_args *a) {
    const int64_t C = a->d.c, elements = a->d.n * a->d.c * a->d.s;
    a->tiles = bn_tiles_of(a->d.n * a->d.s, C);
    const int64_t parts = a->tiles.parts, tiles = parts * a->tiles.chunks;
    bn_scratch scratch;
    void *arrays[3];
    const size_t bytes[3] = {bn_bytes(parts * C, sizeof(bn_moments)),
                             bn_bytes(4 * C, sizeof(double)),
                             bn_bytes(BN_COEF_COUNT * C, bn_dtype_size(a->d.dtype))};
    if (!bn_scratch_take(&scratch, 3, bytes, arrays)) return BN_ERR_NO_MEMORY;
    a->part_moments = arrays[0];
    a->mean = arrays[1];
    a->m2 = a->mean + C;
    a->scale = a->mean + 2 * C;
    a->shift = a->mean + 3 * C;
    a->coef = arrays[2];
    a->chunk = bn_cache_chunk(a->tiles.rows, C, 2, bn_dtype_size(a->d.dtype));
    if (a->chunk) {
        bn_parallel_for((C + a->chunk - 1) / a->chunk, elements, chunk_train, a);
    } else {
        if (!a->given) bn_parallel_for(tiles, elements, tile_moments, a);
        merge_parts(a, 0, C);
        if (!a->moments_out) {
            bn_kernel_cl_coefs(&a->d, a->coef, 0, C, a->mean, a->scale, a->shift, NULL, NULL);
            a->pieces = bn_tiles_elementwise(a->tiles.rows, C);
            bn_parallel_for(a->pieces.parts * a->pieces.chunks, elements, tile_normalize, a);
        }
    }
    bn_scratch_release(&scratch);
    return BN_OK;
}

/* The training driver: statistics, then (unless only they are asked for) the normalization. */
static bn_status run_train(train_args *a) {
    if (a->d.layout == BN_CHANNELS_LAST) return train_channels_last(a);
    const int64_t elements = bn_count(&a->d) * a->d.c;
    const int64_t channel_bytes = bn_count(&a->d) * (int64_t)bn_dtype_size(a->d.dtype);
    if (a->given || a->moments_out || !bn_cache_overlap(channel_bytes)) {
        bn_parallel_for(a->d.c, elements, train_channel, a);
        return BN_OK;
    }
    a->run = bn_run_length(a->d.c);
    bn_parallel_for((a->d.c + a->run - 1) / a->run, elements, train_run, a);
    return BN_OK;
}

bn_status bn_forward_train(void *y, double *save_mean, double *save_invstd, void *running_mean,
                           void *running_var, int64_t *num_batches_tracked, const void *x,
                           const void *weight, const void *bias, const bn_desc *desc,
                           const bn_options *opt) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF_ERROR(bn_check_options(opt));
    BN_RETURN_IF(bn_tensor_missing(x, desc) || bn_tensor_missing(y, desc), BN_ERR_NULL_POINTER);
    const int64_t m = bn_count(desc);
    BN_RETURN_IF(m == 1, BN_ERR_COUNT);
    const int tracking = running_mean || running_var;
    BN_RETURN_IF(tracking && opt->cumulative && !num_batches_tracked, BN_ERR_NULL_POINTER);
    BN_RETURN_IF(tracking && num_batches_tracked && *num_batches_tracked == INT64_MAX,
                 BN_ERR_TOO_LARGE);

    /* Weight of this batch in the running statistics; the counter counts empty batches too. */
    const int64_t batches = tracking && num_batches_tracked ? *num_batches_tracked + 1 : 0;
    if (m == 0) { /* no values: no statistics, nothing to normalize or track */
        for (int64_t c = 0; c < desc->c; c++) {
            if (save_mean) save_mean[c] = NAN;
            if (save_invstd) save_invstd[c] = NAN;
        }
    } else {
        train_args a = {.d = bn_kernel_desc(desc), .y = y, .running_mean = running_mean,
                        .running_var = running_var, .save_mean = save_mean,
                        .save_invstd = save_invstd, .x = x, .weight = weight, .bias = bias,
                        .eps = opt->eps,
                        .factor = opt->cumulative ? 1.0 / (double)batches : opt->momentum,
                        .count = m};
        BN_RETURN_IF_ERROR(run_train(&a));
    }
    if (tracking && num_batches_tracked) *num_batches_tracked = batches;
    return BN_OK;
}

bn_status bn_compute_moments(bn_moments *moments, const void *x, const bn_desc *desc) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF(!moments || bn_tensor_missing(x, desc), BN_ERR_NULL_POINTER);
    if (bn_count(desc) == 0) {
        for (int64_t c = 0; c < desc->c; c++) moments[c] = bn_moments_empty();
        return BN_OK;
    }
    train_args a = {.d = bn_kernel_desc(desc), .x = x, .count = bn_count(desc),
                    .moments_out = moments};
    return run_train(&a);
}

/* The batch's count m from stats: the same for every channel and at least the piece's. */
static bn_status check_stats(const bn_moments *stats, const bn_desc *desc, int64_t *m) {
    BN_RETURN_IF(!stats, BN_ERR_NULL_POINTER);
    *m = stats[0].count;
    for (int64_t c = 0; c < desc->c; c++) BN_RETURN_IF(stats[c].count != *m, BN_ERR_ARGUMENT);
    BN_RETURN_IF(*m < bn_count(desc), BN_ERR_ARGUMENT);
    BN_RETURN_IF(*m == 1, BN_ERR_COUNT);
    return BN_OK;
}

bn_status bn_forward_train_stats(void *y, double *save_mean, double *save_invstd,
                                 void *running_mean, void *running_var,
                                 int64_t *num_batches_tracked, const void *x, const void *weight,
                                 const void *bias, const bn_moments *stats, const bn_desc *desc,
                                 const bn_options *opt) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF_ERROR(bn_check_options(opt));
    BN_RETURN_IF(bn_tensor_missing(x, desc) || bn_tensor_missing(y, desc), BN_ERR_NULL_POINTER);
    int64_t m;
    BN_RETURN_IF_ERROR(check_stats(stats, desc, &m));
    if (m == 0) /* an empty batch: what bn_forward_train does with one */
        return bn_forward_train(y, save_mean, save_invstd, running_mean, running_var,
                                num_batches_tracked, x, weight, bias, desc, opt);
    const int tracking = running_mean || running_var;
    BN_RETURN_IF(tracking && opt->cumulative && !num_batches_tracked, BN_ERR_NULL_POINTER);
    BN_RETURN_IF(tracking && num_batches_tracked && *num_batches_tracked == INT64_MAX,
                 BN_ERR_TOO_LARGE);
    const int64_t batches = tracking && num_batches_tracked ? *num_batches_tracked + 1 : 0;
    train_args a = {.d = bn_kernel_desc(desc), .y = y, .running_mean = running_mean,
                    .running_var = running_var, .save_mean = save_mean,
                    .save_invstd = save_invstd, .x = x, .weight = weight, .bias = bias,
                    .eps = opt->eps,
                    .factor = opt->cumulative ? 1.0 / (double)batches : opt->momentum,
                    .count = m, .given = stats};
    if (bn_count(desc) == 0) { /* nothing here to normalize; the statistics are still saved */
        for (int64_t c = 0; c < desc->c; c++) {
            double scale, shift;
            finish(&a, c, c + 1, &stats[c].mean, &stats[c].m2, &scale, &shift);
        }
    } else {
        BN_RETURN_IF_ERROR(run_train(&a));
    }
    if (tracking && num_batches_tracked) *num_batches_tracked = batches;
    return BN_OK;
}

typedef struct {
    bn_desc d;
    void *y;
    const void *x, *running_mean, *running_var, *weight, *bias;
    double eps;
    void *coef;     /* (BN_COEF_COUNT, C) in the tensor's dtype */
    bn_tiles tiles; /* the tiles of the rows (channels-last) or of the samples' channels */
} eval_args;

static void eval_coef_chunk(const void *args, int64_t k) {
    const eval_args *a = args;
    const bn_tile t = bn_tile_at(&a->tiles, k); /* tiles.parts = 1: chunk k */
    bn_kernel_eval_coefs(&a->d, a->coef, t.c0, t.c1, a->running_mean, a->running_var, a->weight,
                         a->bias, a->eps);
}

static void eval_tile(const void *args, int64_t k) {
    const eval_args *a = args;
    const bn_tile t = bn_tile_at(&a->tiles, k);
    bn_kernel_cl_normalize(&a->d, a->y, a->x, t.r0, t.r1, t.c0, t.c1, a->coef);
}

/* Channels-first: tile k is sample k / chunks, its channel chunk k % chunks. Eval has no
 * statistics to gather, so it streams through memory in order, as a copy would. */
static void eval_sample_chunk(const void *args, int64_t k) {
    const eval_args *a = args;
    const int64_t i = k / a->tiles.chunks, c0 = k % a->tiles.chunks * BN_TILE_CHANNELS;
    const int64_t c1 = c0 + BN_TILE_CHANNELS < a->d.c ? c0 + BN_TILE_CHANNELS : a->d.c;
    bn_kernel_cf_normalize_rows(&a->d, a->y, a->x, i, c0, c1, a->coef);
}

bn_status bn_forward_eval(void *y, const void *x, const void *running_mean,
                          const void *running_var, const void *weight, const void *bias,
                          const bn_desc *desc, double eps) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF(bn_tensor_missing(x, desc) || bn_tensor_missing(y, desc) || !running_mean ||
                     !running_var,
                 BN_ERR_NULL_POINTER);
    BN_RETURN_IF_ERROR(bn_check_eps(eps));
    const int64_t elements = bn_count(desc) * desc->c;
    if (elements == 0) return BN_OK;
    eval_args a = {.d = bn_kernel_desc(desc), .y = y, .x = x, .running_mean = running_mean,
                   .running_var = running_var, .weight = weight, .bias = bias, .eps = eps};
    const int64_t C = a.d.c;
    bn_scratch scratch;
    const size_t bytes = bn_bytes(BN_COEF_COUNT * C, bn_dtype_size(a.d.dtype));
    if (!bn_scratch_take(&scratch, 1, &bytes, &a.coef)) return BN_ERR_NO_MEMORY;
    a.tiles = bn_tiles_of(1, C);
    /* a region of threads costs more than the coefficients of fewer than 2^15 channels */
    bn_parallel_for(a.tiles.chunks, C, eval_coef_chunk, &a);
    if (a.d.layout == BN_CHANNELS_LAST) {
        a.tiles = bn_tiles_elementwise(a.d.n * a.d.s, C);
        bn_parallel_for(a.tiles.parts * a.tiles.chunks, elements, eval_tile, &a);
    } else {
        a.tiles = bn_tiles_of(1, C);
        bn_parallel_for(a.d.n * a.tiles.chunks, elements, eval_sample_chunk, &a);
    }
    bn_scratch_release(&scratch);
    return BN_OK;
}
