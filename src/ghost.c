/* ghost.c - ghost batches (tf-keras's virtual_batch_size V): in training the batch is read as
 * (V, N/V, ...), so ghost batch g holds samples g, g + N/V, g + 2N/V, ... and is normalized
 * with its own statistics; the running statistics take the mean over the ghost batches of their
 * means and variances (and renorm's corrections come from those means). The backward pass is
 * each ghost batch's own, its dweight and dbias summed over them in the order of g.
 *
 * The same memory, seen as (V, G*C, S) with G = N/V, has channel g*C + c holding ghost g's
 * values of channel c: in channels-first layout, and whenever S = 1, ghost batches are a plain
 * pass over that view with the per-channel values repeated G times. A channels-last tensor with
 * S > 1 is worked sample by sample ((1, S, C) pieces, each contiguous), its moments and sums
 * merged per ghost batch in the order of the samples. Either way the statistics are cut by the
 * shape alone, so the bits do not depend on the threads. Scratch: (G, C) moments and doubles. */
#include "moments.h"
#include "scratch.h"
#include "train.h"
#include "validate.h"

/* The view in which ghost batches are channels, when there is one. */
static int ghost_view(const bn_desc *desc, int64_t ghosts, bn_desc *view) {
    *view = *desc;
    view->n = desc->n / ghosts;
    view->c = desc->c * ghosts;
    return desc->layout == BN_CHANNELS_FIRST || desc->s == 1;
}

/* One sample of a channels-last tensor, as a tensor of its own. */
static bn_desc sample_desc(const bn_desc *desc) {
    bn_desc one = *desc;
    one.n = 1;
    return one;
}

static const void *sample_c(const void *base, const bn_desc *desc, int64_t i, size_t es) {
    return (const char *)base + i * desc->c * desc->s * (int64_t)es;
}
static void *sample_v(void *base, const bn_desc *desc, int64_t i, size_t es) {
    return base ? (char *)base + i * desc->c * desc->s * (int64_t)es : NULL;
}

/* mom: out (G, C), each ghost batch's moments. */
static bn_status ghost_moments(bn_moments *mom, const void *x, const bn_desc *desc,
                               int64_t ghosts, bn_moments *piece) {
    bn_desc view;
    bn_plan plan;
    const int64_t C = desc->c;
    if (ghost_view(desc, ghosts, &view)) {
        BN_RETURN_IF_ERROR(bn_plan_make(&plan, &view, 1));
        const bn_train_call call = {.x = x, .mom_out = mom, .count = (double)bn_count(&view)};
        return bn_run_train(&plan, &call);
    }
    const bn_desc one = sample_desc(desc);
    BN_RETURN_IF_ERROR(bn_plan_make(&plan, &one, 1));
    for (int64_t k = 0; k < ghosts * C; k++) mom[k] = bn_moments_empty();
    for (int64_t i = 0; i < desc->n; i++) {
        const bn_train_call call = {.x = sample_c(x, desc, i, plan.es), .mom_out = piece,
                                    .count = (double)desc->s};
        BN_RETURN_IF_ERROR(bn_run_train(&plan, &call));
        for (int64_t c = 0; c < C; c++) bn_moments_merge(&mom[i % ghosts * C + c], piece[c]);
    }
    return BN_OK;
}

bn_status bn_train_ghosts(const bn_train_args *a, const bn_desc *desc, const bn_options *opt,
                          const bn_train_plan *t) {
    const int64_t C = desc->c, G = t->ghosts;
    const bn_kernels *k = bn_kernels_for(bn_param_dtype(desc), 0); /* the per-channel arrays' */
    bn_scratch scratch;
    void *arrays[3];
    const size_t bytes[3] = {bn_bytes((G + 1) * C, sizeof(bn_moments)),
                             bn_bytes(2 * G * C, sizeof(double)), bn_bytes(11 * C, sizeof(double))};
    if (!bn_scratch_take(&scratch, 3, bytes, arrays)) return BN_ERR_NO_MEMORY;
    bn_moments *mom = arrays[0], *avg = mom + G * C;
    double *wg = arrays[1], *bg = wg + G * C, *doubles = arrays[2];
    double *w = doubles, *b = doubles + C;
    bn_status st = ghost_moments(mom, a->x, desc, G, avg);
    if (st != BN_OK) goto done;
    /* the mean over the ghost batches of their moments: what the running statistics follow */
    for (int64_t c = 0; c < C; c++) {
        double mean = 0, m2 = 0;
        for (int64_t g = 0; g < G; g++) mean += mom[g * C + c].mean, m2 += mom[g * C + c].m2;
        avg[c] = (bn_moments){.count = t->m, .mean = mean / (double)G, .m2 = m2 / (double)G};
    }
    k->load(w, opt->flags & BN_FIX_GAMMA ? NULL : a->weight, C, 1.0);
    k->load(b, a->bias, C, 0.0);
    bn_renorm_finish rn;
    if (a->renorm) rn = bn_renorm_setup(a, desc, opt, t, doubles + 7 * C);
    const bn_train_finish fin = {
        .k = k, .count = (double)t->m, .eps = opt->eps, .w_new = t->w_new, .w_old = t->w_old,
        .var_divisor = bn_var_divisor(opt, t->m), .w = w, .b = b,
        .renorm = a->renorm ? &rn : NULL, .running_mean = t->tracking ? a->running_mean : NULL,
        .running_var = t->tracking ? a->running_var : NULL, .tmp = doubles + 2 * C,
        .invstd = doubles + 3 * C, .scale = doubles + 4 * C, .shift = doubles + 5 * C,
        .mean = doubles + 6 * C};
    bn_finish_train(&fin, avg, 0, C);
    /* each ghost batch normalized with its statistics, renorm's corrections in w and b */
    for (int64_t g = 0; g < G; g++)
        for (int64_t c = 0; c < C; c++) {
            wg[g * C + c] = a->renorm ? w[c] * rn.r[c] : w[c];
            bg[g * C + c] = a->renorm ? b[c] + rn.d[c] * w[c] : b[c];
        }
    bn_desc view;
    bn_plan plan;
    if (ghost_view(desc, G, &view)) {
        st = bn_plan_make(&plan, &view, 1);
        const bn_train_call call = {.y = a->y, .x = a->x, .w = wg, .b = bg, .given = mom,
                                    .save_mean = a->save_mean, .save_invstd = a->save_invstd,
                                    .count = (double)t->m, .eps = opt->eps};
        if (st == BN_OK) st = bn_run_train(&plan, &call);
        goto done;
    }
    const bn_desc one = sample_desc(desc);
    st = bn_plan_make(&plan, &one, 1);
    for (int64_t i = 0; i < desc->n && st == BN_OK; i++) {
        const int64_t g = i % G, first = i < G;
        const bn_train_call call = {
            .y = sample_v(a->y, desc, i, plan.es), .x = sample_c(a->x, desc, i, plan.es),
            .w = wg + g * C, .b = bg + g * C, .given = mom + g * C,
            .save_mean = first && a->save_mean ? a->save_mean + g * C : NULL,
            .save_invstd = first && a->save_invstd ? a->save_invstd + g * C : NULL,
            .count = (double)t->m, .eps = opt->eps};
        st = bn_run_train(&plan, &call);
    }
done:
    bn_scratch_release(&scratch);
    return st;
}

bn_status bn_backward_ghosts(void *dx, double *sum_dy_xhat, double *sum_dy, const void *dy,
                             const void *x, const double *save_mean, const double *save_invstd,
                             const double *w, const bn_desc *desc, int64_t ghosts) {
    const int64_t C = desc->c, G = ghosts, m = bn_count(desc) / G;
    bn_scratch scratch;
    void *array;
    const size_t bytes = bn_bytes(3 * G * C + 2 * C, sizeof(double));
    if (!bn_scratch_take(&scratch, 1, &bytes, &array)) return BN_ERR_NO_MEMORY;
    double *gx = array, *gy = gx + G * C, *wg = gy + G * C, *px = wg + G * C, *py = px + C;
    bn_status st = BN_OK;
    bn_desc view;
    if (ghost_view(desc, G, &view)) {
        for (int64_t k = 0; k < G * C; k++) wg[k] = w[k % C];
        const bn_backward_call call = {.train = 1, .dx = dx, .dy = dy, .x = x, .w = wg,
                                       .save_mean = save_mean, .save_invstd = save_invstd,
                                       .dweight_d = gx, .dbias_d = gy, .count = m};
        st = bn_run_backward(&view, &call);
    } else {
        const bn_desc one = sample_desc(desc);
        const size_t es = bn_dtype_size(desc->dtype);
        for (int64_t k = 0; k < G * C; k++) gx[k] = gy[k] = 0;
        for (int64_t i = 0; i < desc->n && st == BN_OK; i++) {
            const int64_t g = i % G;
            const bn_backward_call call = {
                .train = 1, .dy = sample_c(dy, desc, i, es), .x = sample_c(x, desc, i, es),
                .save_mean = save_mean + g * C, .save_invstd = save_invstd + g * C,
                .sum_dy_out = py, .sum_dy_xhat_out = px, .count = desc->s};
            st = bn_run_backward(&one, &call);
            for (int64_t c = 0; c < C; c++) gx[g * C + c] += px[c], gy[g * C + c] += py[c];
        }
        for (int64_t i = 0; i < desc->n && dx && st == BN_OK; i++) {
            const int64_t g = i % G;
            const bn_backward_call call = {
                .train = 1, .dx = sample_v(dx, desc, i, es), .dy = sample_c(dy, desc, i, es),
                .x = sample_c(x, desc, i, es), .w = w, .save_mean = save_mean + g * C,
                .save_invstd = save_invstd + g * C, .given_sum_dy = gy + g * C,
                .given_sum_dy_xhat = gx + g * C, .count = m};
            st = bn_run_backward(&one, &call);
        }
    }
    for (int64_t c = 0; c < C && st == BN_OK; c++) {
        double sx = 0, sy = 0;
        for (int64_t g = 0; g < G; g++) sx += gx[g * C + c], sy += gy[g * C + c];
        sum_dy_xhat[c] = sx, sum_dy[c] = sy;
    }
    bn_scratch_release(&scratch);
    return st;
}
