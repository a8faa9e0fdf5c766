/* backward.c - gradients of the training and eval forward passes: the sums of dy and
 * dy * (x - mean) per channel first, then dweight, dbias and dx.
 *   channels-first: channel by channel (in parallel), each channel's dx formed while the next
 *   one's sums are read where that pays (backward_run);
 *   channels-last: sums over tiles of the (N*S, C) rows (in parallel), added per channel in the
 *   order of the rows, then dx tile by tile (in parallel); when a chunk of channels fits in
 *   cache with all its rows, chunk by chunk instead, dx computed while the chunk is in cache.
 * The same drivers run the stages of a split batch: the sums only (bn_backward_sums), and dx
 * from sums given (bn_backward_train_sums). */
#include "kernels.h"
#include "scratch.h"
#include "threads.h"
#include "validate.h"

#include <math.h>

typedef struct {
    bn_desc d; /* the effective descriptor (bn_kernel_desc) */
    void *dx, *dweight, *dbias;
    const void *dy, *x, *weight;
    const double *save_mean, *save_invstd;  /* training: batch statistics */
    const void *running_mean, *running_var; /* eval: stored statistics */
    double eps;
    int64_t count;            /* m: values per channel in the whole batch */
    const double *given_sums; /* (2, C): the batch's sum dy, sum dy * xhat; or NULL */
    double *sums_out;         /* (2, C) non-NULL: only compute the sums (bn_backward_sums) */
    /* channels-last only: scratch */
    bn_tiles tiles;    /* of the sums */
    bn_tiles pieces;   /* of dx (bn_tiles_elementwise) */
    int64_t chunk;     /* channels per item when a chunk's rows stay in cache, else 0 */
    double *part_sums; /* (parts, 2, C): sum dy, sum dy * (x - mean) */
    double *mean;      /* (C) */
    void *coef;        /* (BN_COEF_COUNT, C) in the tensor's dtype */
    int64_t run;       /* channels-first only: channels per item of backward_run */
} backward_args;

static int batch_stats(const backward_args *a) { return a->save_mean != NULL; }

static void channel_stats(const backward_args *a, int64_t c, double *mean, double *invstd) {
    const bn_dtype dt = a->d.dtype;
    *mean = batch_stats(a) ? a->save_mean[c] : bn_load(a->running_mean, dt, c, 0);
    *invstd = batch_stats(a) ? a->save_invstd[c]
                             : 1.0 / sqrt(bn_load(a->running_var, dt, c, 0) + a->eps);
}

/* Channel c's sums where one came out NaN or infinite: formed again scaled
 * (bn_kernel_grad_sums_rescaled), and each that the scaling keeps finite replaces its plain
 * one, with the power of two it stands for in *e_dy or *e_xc (a NaN or an infinity in dy or x
 * leaves the plain sums as they are). */
static void rescue_sums(const backward_args *a, int64_t c, double mean, double *sum_dy,
                        int *e_dy, double *sum_dy_xc, int *e_xc) {
    double scaled_dy, scaled_dy_xc;
    bn_kernel_grad_sums_rescaled(&a->d, &scaled_dy, &scaled_dy_xc, a->dy, a->x, c, mean);
    if (!isfinite(*sum_dy) && isfinite(scaled_dy)) *sum_dy = scaled_dy, *e_dy = BN_GRAD_RESCALE;
    if (!isfinite(*sum_dy_xc) && isfinite(scaled_dy_xc))
        *sum_dy_xc = scaled_dy_xc, *e_xc = 2 * BN_GRAD_RESCALE;
}

/* From channel c's sums (sum dy and sum dy * (x - mean) with its statistics mean and invstd; or
 * the sums given: sum dy, sum dy * xhat): dweight, dbias, and the coefficients of
 * dx = (dy - mean_dy - (x - mean) * k) * scale (mean_dy = k = 0 with stored statistics). Returns
 * 0 when only the sums are asked for (they are stored).
 * Ranges: sum dy * xhat = invstd * sum dy * (x - mean) overflows only where it is larger than
 * DBL_MAX, and so do mean_dy = sum dy / m and k = (sum dy * xhat / m) * invstd (divided
 * first: mean(dy * xhat) is at most the sum). The sums themselves can overflow in float64
 * where the results do not (a sum that cancels, dy * (x - mean) beyond DBL_MAX while
 * invstd brings it back, sum dy beyond DBL_MAX while mean_dy is finite): those are formed
 * again scaled (rescue_sums, the rare path, per channel), and the results scaled back up by
 * ldexp, exact. Sums given are taken as they are. */
static int finish_channel(const backward_args *a, int64_t c, double sum_dy, double sum_dy_xc,
                          double mean, double invstd, double *mean_dy, double *k, double *scale) {
    const bn_dtype dt = a->d.dtype;
    double sum_dy_xhat;
    int e_dy = 0, e_xhat = 0; /* the sums are sum_dy * 2^e_dy and sum_dy_xhat * 2^e_xhat */
    if (a->given_sums) {
        sum_dy = a->given_sums[c];
        sum_dy_xhat = a->given_sums[a->d.c + c];
    } else {
        if (!isfinite(sum_dy) || !isfinite(sum_dy_xc))
            rescue_sums(a, c, mean, &sum_dy, &e_dy, &sum_dy_xc, &e_xhat);
        sum_dy_xhat = sum_dy_xc * invstd;
    }
    const double dbias = ldexp(sum_dy, e_dy), dweight = ldexp(sum_dy_xhat, e_xhat);
    if (a->sums_out) {
        a->sums_out[c] = dbias;
        a->sums_out[a->d.c + c] = dweight;
        return 0;
    }
    const double m = (double)a->count;
    if (a->dweight) bn_store(a->dweight, dt, c, dweight);
    if (a->dbias) bn_store(a->dbias, dt, c, dbias);
    *scale = invstd * bn_load(a->weight, dt, c, 1.0);
    *mean_dy = batch_stats(a) ? ldexp(sum_dy / m, e_dy) : 0.0;
    *k = batch_stats(a) ? ldexp(sum_dy_xhat / m, e_xhat) * invstd : 0.0; /* mean(dy xhat) invstd */
    return 1;
}

static void backward_channel(const void *args, int64_t c) {
    const backward_args *a = args;
    double mean, invstd, sum_dy = 0, sum_dy_xc = 0, mean_dy, k, scale;
    channel_stats(a, c, &mean, &invstd);
    if (!a->given_sums) bn_kernel_cf_grad_sums(&a->d, &sum_dy, &sum_dy_xc, a->dy, a->x, c, mean);
    if (!finish_channel(a, c, sum_dy, sum_dy_xc, mean, invstd, &mean_dy, &k, &scale)) return;
    if (!a->dx) return;
    if (batch_stats(a))
        bn_kernel_cf_grad_input(&a->d, a->dx, a->dy, a->x, c, mean, mean_dy, k, scale);
    else /* stored statistics are constants: dx = dy * invstd * weight */
        bn_kernel_cf_normalize(&a->d, a->dx, a->dy, c, 0, a->d.n, 0.0, scale, 0.0);
}

/* Channels-first training gradients, channels [k * run, (k + 1) * run): each channel's dx is
 * formed while the next one's sums are read, so that the reads overlap the writes (where
 * bn_cache_overlap says it pays). The same bits as backward_channel. */
static void backward_run(const void *args, int64_t k) {
    const backward_args *a = args;
    const int64_t c0 = k * a->run, c1 = c0 + a->run < a->d.c ? c0 + a->run : a->d.c;
    double mean, invstd, sum_dy = 0, sum_dy_xc = 0, mean_dy, kk, scale;
    channel_stats(a, c0, &mean, &invstd);
    bn_kernel_cf_grad_sums(&a->d, &sum_dy, &sum_dy_xc, a->dy, a->x, c0, mean);
    for (int64_t c = c0; c < c1; c++) {
        finish_channel(a, c, sum_dy, sum_dy_xc, mean, invstd, &mean_dy, &kk, &scale);
        if (c + 1 < c1) {
            const double this_mean = mean;
            channel_stats(a, c + 1, &mean, &invstd);
            bn_kernel_cf_grad_input_next(&a->d, a->dx, a->dy, a->x, c, this_mean, mean_dy, kk,
                                         scale, mean, &sum_dy, &sum_dy_xc);
        } else {
            bn_kernel_cf_grad_input(&a->d, a->dx, a->dy, a->x, c, mean, mean_dy, kk, scale);
        }
    }
}

static void tile_sums(const void *args, int64_t k) {
    const backward_args *a = args;
    const bn_tile t = bn_tile_at(&a->tiles, k);
    double *sum_dy = a->part_sums + 2 * t.part * a->d.c, *sum_dy_xc = sum_dy + a->d.c;
    for (int64_t c = t.c0; c < t.c1; c++) sum_dy[c] = sum_dy_xc[c] = 0;
    bn_kernel_cl_grad_sums(&a->d, sum_dy, sum_dy_xc, a->dy, a->x, t.r0, t.r1, t.c0, t.c1, a->mean);
}

static void tile_grad_input(const void *args, int64_t k) {
    const backward_args *a = args;
    const bn_tile t = bn_tile_at(&a->pieces, k);
    if (batch_stats(a))
        bn_kernel_cl_grad_input(&a->d, a->dx, a->dy, a->x, t.r0, t.r1, t.c0, t.c1, a->coef);
    else
        bn_kernel_cl_normalize(&a->d, a->dx, a->dy, t.r0, t.r1, t.c0, t.c1, a->coef);
}

/* Channels [c0, c1): the parts' sums added in the order of the rows, then dweight, dbias and
 * the coefficients of dx. */
static void add_parts(const backward_args *a, int64_t c0, int64_t c1) {
    const int64_t C = a->d.c;
    double *invstd = a->mean + C, *mean_dy = a->mean + 2 * C, *k = a->mean + 3 * C;
    double *scale = a->mean + 4 * C;
    int dx_wanted = a->dx != NULL;
    for (int64_t c = c0; c < c1; c++) {
        double sum_dy = 0, sum_dy_xc = 0;
        for (int64_t p = 0; p < a->tiles.parts && !a->given_sums; p++) {
            sum_dy += a->part_sums[2 * p * C + c];
            sum_dy_xc += a->part_sums[(2 * p + 1) * C + c];
        }
        dx_wanted &= finish_channel(a, c, sum_dy, sum_dy_xc, a->mean[c], invstd[c], &mean_dy[c],
                                    &k[c], &scale[c]);
    }
    if (!dx_wanted) return;
    if (batch_stats(a)) {
        bn_kernel_cl_coefs(&a->d, a->coef, c0, c1, a->mean, scale, NULL, mean_dy, k);
    } else { /* dx = (dy - 0) * scale + 0 */
        for (int64_t c = c0; c < c1; c++) mean_dy[c] = 0;
        bn_kernel_cl_coefs(&a->d, a->coef, c0, c1, mean_dy, scale, NULL, NULL, NULL);
    }
}

/* Item k: a chunk of channels whose rows fit in cache: the parts' sums, then dx while the chunk
 * is still in cache; the same operations in the same order as tile by tile, so the same bits. */
static void chunk_backward(const void *args, int64_t k) {
    const backward_args *a = args; /* chunks write disjoint channels */
    const int64_t C = a->d.c, rows = a->tiles.rows;
    const int64_t c0 = k * a->chunk, c1 = c0 + a->chunk < C ? c0 + a->chunk : C;
    for (int64_t p = 0; p < a->tiles.parts && !a->given_sums; p++) {
        double *sum_dy = a->part_sums + 2 * p * C, *sum_dy_xc = sum_dy + C;
        const int64_t r0 = p * a->tiles.per, r1 = r0 + a->tiles.per < rows ? r0 + a->tiles.per : rows;
        for (int64_t c = c0; c < c1; c++) sum_dy[c] = sum_dy_xc[c] = 0;
        bn_kernel_cl_grad_sums(&a->d, sum_dy, sum_dy_xc, a->dy, a->x, r0, r1, c0, c1, a->mean);
    }
    add_parts(a, c0, c1);
    if (!a->dx) return;
    if (batch_stats(a))
        bn_kernel_cl_grad_input(&a->d, a->dx, a->dy, a->x, 0, rows, c0, c1, a->coef);
    else
        bn_kernel_cl_normalize(&a->d, a->dx, a->dy, 0, rows, c0, c1, a->coef);
}

static bn_status backward_channels_last(backward_args *a) {
    const int64_t C = a->d.c, elements = a->d.n * a->d.c * a->d.s;
    a->tiles = bn_tiles_of(a->d.n * a->d.s, C);
    const int64_t parts = a->tiles.parts, tiles = parts * a->tiles.chunks;
    bn_scratch scratch;
    void *arrays[3];
    const size_t bytes[3] = {bn_bytes(2 * parts * C, sizeof(double)),
                             bn_bytes(5 * C, sizeof(double)),
                             bn_bytes(BN_COEF_COUNT * C, bn_dtype_size(a->d.dtype))};
    if (!bn_scratch_take(&scratch, 3, bytes, arrays)) return BN_ERR_NO_MEMORY;
    a->part_sums = arrays[0];
    a->mean = arrays[1];
    a->coef = arrays[2];
    double *invstd = a->mean + C;
    for (int64_t c = 0; c < C; c++) channel_stats(a, c, &a->mean[c], &invstd[c]);
    a->chunk = bn_cache_chunk(a->tiles.rows, C, 3, bn_dtype_size(a->d.dtype));
    if (a->chunk) {
        bn_parallel_for((C + a->chunk - 1) / a->chunk, elements, chunk_backward, a);
    } else {
        if (!a->given_sums) bn_parallel_for(tiles, elements, tile_sums, a);
        add_parts(a, 0, C);
        a->pieces = bn_tiles_elementwise(a->tiles.rows, C);
        if (a->dx)
            bn_parallel_for(a->pieces.parts * a->pieces.chunks, elements, tile_grad_input, a);
    }
    bn_scratch_release(&scratch);
    return BN_OK;
}

/* Both passes: with no values, dweight and dbias are 0 and there is no dx. */
static bn_status run_backward(backward_args *a, const bn_desc *desc) {
    if (bn_count(desc) == 0) {
        for (int64_t c = 0; c < desc->c; c++) {
            if (a->dweight) bn_store(a->dweight, desc->dtype, c, 0);
            if (a->dbias) bn_store(a->dbias, desc->dtype, c, 0);
            if (a->sums_out) a->sums_out[c] = a->sums_out[desc->c + c] = 0;
        }
        return BN_OK;
    }
    a->d = bn_kernel_desc(desc);
    if (!a->given_sums) a->count = bn_count(desc);
    if (a->d.layout == BN_CHANNELS_LAST) return backward_channels_last(a);
    const int64_t elements = bn_count(desc) * desc->c;
    const int64_t channel_bytes = 2 * bn_count(desc) * (int64_t)bn_dtype_size(desc->dtype);
    if (a->given_sums || a->sums_out || !a->dx || !batch_stats(a) ||
        !bn_cache_overlap(channel_bytes)) {
        bn_parallel_for(a->d.c, elements, backward_channel, a);
        return BN_OK;
    }
    a->run = bn_run_length(a->d.c);
    bn_parallel_for((a->d.c + a->run - 1) / a->run, elements, backward_run, a);
    return BN_OK;
}

bn_status bn_backward_train(void *dx, void *dweight, void *dbias, const void *dy, const void *x,
                            const double *save_mean, const double *save_invstd,
                            const void *weight, const bn_desc *desc) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF(bn_tensor_missing(dy, desc) || bn_tensor_missing(x, desc) || !save_mean ||
                     !save_invstd,
                 BN_ERR_NULL_POINTER);
    backward_args a = {.dx = dx, .dweight = dweight, .dbias = dbias, .dy = dy, .x = x,
                       .weight = weight, .save_mean = save_mean, .save_invstd = save_invstd};
    return run_backward(&a, desc);
}

bn_status bn_backward_sums(double *sum_dy, double *sum_dy_xhat, const void *dy, const void *x,
                           const double *save_mean, const double *save_invstd,
                           const bn_desc *desc) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF(bn_tensor_missing(dy, desc) || bn_tensor_missing(x, desc) || !save_mean ||
                     !save_invstd || !sum_dy || !sum_dy_xhat,
                 BN_ERR_NULL_POINTER);
    /* the drivers write (2, C) in one array; copied out so that nothing is written on failure */
    const int64_t C = desc->c;
    bn_scratch scratch;
    double *sums;
    const size_t bytes = bn_bytes(2 * C, sizeof(double));
    if (!bn_scratch_take(&scratch, 1, &bytes, (void **)&sums)) return BN_ERR_NO_MEMORY;
    backward_args a = {.dy = dy, .x = x, .save_mean = save_mean, .save_invstd = save_invstd,
                       .sums_out = sums};
    bn_status st = run_backward(&a, desc);
    if (st == BN_OK) {
        for (int64_t c = 0; c < C; c++) {
            sum_dy[c] = sums[c];
            sum_dy_xhat[c] = sums[C + c];
        }
    }
    bn_scratch_release(&scratch);
    return st;
}

bn_status bn_backward_train_sums(void *dx, const void *dy, const void *x,
                                 const double *save_mean, const double *save_invstd,
                                 const void *weight, const double *sum_dy,
                                 const double *sum_dy_xhat, int64_t count, const bn_desc *desc) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF(bn_tensor_missing(dx, desc) || bn_tensor_missing(dy, desc) ||
                     bn_tensor_missing(x, desc) || !save_mean || !save_invstd || !sum_dy ||
                     !sum_dy_xhat,
                 BN_ERR_NULL_POINTER);
    BN_RETURN_IF(count < bn_count(desc), BN_ERR_ARGUMENT);
    const int64_t C = desc->c;
    if (bn_count(desc) == 0) return BN_OK; /* no dx to write */
    /* the drivers read (2, C) from one array */
    bn_scratch scratch;
    double *sums;
    const size_t bytes = bn_bytes(2 * C, sizeof(double));
    if (!bn_scratch_take(&scratch, 1, &bytes, (void **)&sums)) return BN_ERR_NO_MEMORY;
    for (int64_t c = 0; c < C; c++) {
        sums[c] = sum_dy[c];
        sums[C + c] = sum_dy_xhat[c];
    }
    backward_args a = {.dx = dx, .dy = dy, .x = x, .weight = weight, .save_mean = save_mean,
                       .save_invstd = save_invstd, .count = count, .given_sums = sums};
    bn_status st = run_backward(&a, desc);
    bn_scratch_release(&scratch);
    return st;
}

bn_status bn_backward_eval(void *dx, void *dweight, void *dbias, const void *dy, const void *x,
                           const void *running_mean, const void *running_var, const void *weight,
                           const bn_desc *desc, double eps) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF(bn_tensor_missing(dy, desc) || bn_tensor_missing(x, desc) || !running_mean ||
                     !running_var,
                 BN_ERR_NULL_POINTER);
    BN_RETURN_IF_ERROR(bn_check_eps(eps));
    backward_args a = {.dx = dx, .dweight = dweight, .dbias = dbias, .dy = dy, .x = x,
                       .weight = weight, .running_mean = running_mean,
                       .running_var = running_var, .eps = eps};
    return run_backward(&a, desc);
}
