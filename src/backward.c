/* backward.c - the gradients of the training and eval forward passes, and the backward stages
 * of a split batch: validate everything, make the plan, then compose the stages:
 *   the sums of dy and dy * (x - mean) per channel (the kernels) -> added in a fixed order ->
 *   finish (finish.c: dweight, dbias and the coefficients of dx) -> dx; the skeleton of the
 *   layout (channels_first.c, channels_last.c) decides whether these run one after the other or
 *   fused in cache. Then, once, dweight and dbias are stored.
 * bn_backward_sums runs the first pass alone, bn_backward_train_sums all but it. */
#include "finish.h"
#include "pass.h"
#include "scratch.h"
#include "train.h"
#include "validate.h"

#include <math.h>

typedef struct {
    bn_pass pass; /* first: the skeletons see this */
    void *dx;
    const void *dy, *x;
    int train;           /* batch statistics (else stored ones: dx = dy * invstd * weight) */
    int given;           /* the sums are given as sum dy and sum dy * xhat */
    int sums_only;       /* bn_backward_sums: no finish */
    double count;        /* values per channel in the whole batch */
    const double *mean, *invstd; /* (C) the statistics of the forward pass */
    const double *w;     /* (C) the weight as doubles, or NULL */
    double *sums;        /* (2, C): sum dy, then sum dy * (x - mean) (or * xhat, given) */
    double *part_sums;   /* (parts, 2, C) channels-last: the sums of each part of the rows */
    double *dbias, *dweight, *mean_dy, *k, *scale; /* (C) what the finish gives */
    void *coef;          /* (BN_COEF_COUNT, C) channels-last: the coefficients, compute type */
} backward;

static inline const void *at_c(const bn_plan *p, const void *base, int64_t at) {
    return (const char *)base + at * (int64_t)p->es;
}
static inline void *at_v(const bn_plan *p, void *base, int64_t at) {
    return (char *)base + at * (int64_t)p->es;
}

/* Channel c's sums where one came out NaN or infinite from finite dy and x (in float64 an
 * intermediate can overflow although the result is finite): formed again scaled, value by value
 * in the order of the batch, either layout (the same bits for any split of the work); each that
 * the scaling keeps finite replaces its plain one, with the power of two it stands for in *e_dy
 * or *e_xc (a NaN or an infinity in dy or x leaves the plain sums as they are). */
static void rescue_sums(const backward *b, int64_t c, double *sum_dy, int *e_dy,
                        double *sum_dy_xc, int *e_xc) {
    const bn_plan *p = b->pass.plan;
    const bn_desc *d = &p->d;
    const int cl = d->layout == BN_CHANNELS_LAST;
    const int64_t at = cl ? c : c * d->s, n = cl ? d->n * d->s : d->n;
    const int64_t s = cl ? 1 : d->s, stride = cl ? d->c : d->c * d->s;
    double scaled_dy, scaled_dy_xc;
    p->k->grad_sums_rescaled(&scaled_dy, &scaled_dy_xc, at_c(p, b->dy, at), at_c(p, b->x, at), n,
                             s, stride, b->mean[c]);
    if (!isfinite(*sum_dy) && isfinite(scaled_dy)) *sum_dy = scaled_dy, *e_dy = BN_GRAD_RESCALE;
    if (!isfinite(*sum_dy_xc) && isfinite(scaled_dy_xc))
        *sum_dy_xc = scaled_dy_xc, *e_xc = 2 * BN_GRAD_RESCALE;
}

/* Channels [c0, c1) from their sums: dweight, dbias, and the coefficients of dx.
 * sum dy * xhat = invstd * sum dy * (x - mean) overflows only where it is larger than DBL_MAX.
 * The sums themselves can overflow in float64 where the results do not (a sum that cancels,
 * dy * (x - mean) beyond DBL_MAX while invstd brings it back, sum dy beyond DBL_MAX while
 * mean_dy is finite): those are formed again scaled (rescue_sums, the rare path, per channel),
 * and the results scaled back up by ldexp, exact. Sums given are taken as they are. */
static void finish(const backward *b, int64_t c0, int64_t c1) {
    const int64_t C = b->pass.plan->d.c;
    for (int64_t c = c0; c < c1; c++) {
        double sum_dy = b->sums[c], sum_dy_xhat = b->sums[C + c];
        int e_dy = 0, e_xhat = 0; /* the sums are sum_dy * 2^e_dy and sum_dy_xhat * 2^e_xhat */
        if (!b->given) {
            double sum_dy_xc = sum_dy_xhat;
            if (!isfinite(sum_dy) || !isfinite(sum_dy_xc))
                rescue_sums(b, c, &sum_dy, &e_dy, &sum_dy_xc, &e_xhat);
            sum_dy_xhat = sum_dy_xc * b->invstd[c];
        }
        const bn_grad_finish g = bn_finish_grad(sum_dy, e_dy, sum_dy_xhat, e_xhat, b->invstd[c],
                                                b->w ? b->w[c] : 1.0, b->count, b->train);
        b->dbias[c] = g.dbias;
        b->dweight[c] = g.dweight;
        b->mean_dy[c] = g.mean_dy;
        b->k[c] = g.k;
        b->scale[c] = g.scale;
    }
}

/* ---- channels-first: channel c's rows start at c * S, C * S apart ---- */

/* Channels [c0, c1): one channel, or a group of short rows (the cf_group_ kernels). */
static void cf_sums(const bn_pass *p, int64_t c0, int64_t c1) {
    const backward *b = (const backward *)p;
    const bn_desc *d = &p->plan->d;
    if (p->plan->group > 1) {
        const int64_t at = c0 * d->s;
        p->plan->k->cf_group_grad_sums(&b->sums[c0], &b->sums[d->c + c0], at_c(p->plan, b->dy, at),
                                       at_c(p->plan, b->x, at), c1 - c0, d->n, d->s,
                                       d->c * d->s, b->mean + c0);
        return;
    }
    for (int64_t c = c0; c < c1; c++) {
        const int64_t at = c * d->s;
        p->plan->k->cf_grad_sums(&b->sums[c], &b->sums[d->c + c], at_c(p->plan, b->dy, at),
                                 at_c(p->plan, b->x, at), d->n, d->s, d->c * d->s, b->mean[c]);
    }
}

static void cf_finish(const bn_pass *p, int64_t c0, int64_t c1) {
    const backward *b = (const backward *)p;
    if (!b->sums_only) finish(b, c0, c1);
}

static void cf_dx(const bn_pass *p, int64_t c0, int64_t c1) {
    const backward *b = (const backward *)p;
    const bn_desc *d = &p->plan->d;
    if (b->train && p->plan->group > 1) {
        const int64_t at = c0 * d->s;
        p->plan->k->cf_group_grad_input_next(
            at_v(p->plan, b->dx, at), at_c(p->plan, b->dy, at), at_c(p->plan, b->x, at), c1 - c0,
            0, d->n, d->s, d->c * d->s, b->mean + c0, b->mean_dy + c0, b->k + c0, b->scale + c0,
            NULL, NULL, NULL);
        return;
    }
    for (int64_t c = c0; c < c1; c++) {
        const int64_t at = c * d->s;
        void *dx = at_v(p->plan, b->dx, at);
        const void *dy = at_c(p->plan, b->dy, at);
        if (b->train)
            p->plan->k->cf_grad_input(dx, dy, at_c(p->plan, b->x, at), d->n, d->s, d->c * d->s,
                                      b->mean[c], b->mean_dy[c], b->k[c], b->scale[c]);
        else /* stored statistics are constants: dx = dy * invstd * weight */
            p->plan->k->cf_normalize(dx, dy, NULL, d->n, d->s, d->c * d->s, 0.0, b->scale[c],
                                     0.0);
    }
}

/* Training only (the skeleton overlaps only where this is set): dx of [c0, c1) while the sums
 * of [c1, c2) are formed. */
static void cf_dx_next(const bn_pass *p, int64_t c0, int64_t c1, int64_t c2) {
    const backward *b = (const backward *)p;
    const bn_desc *d = &p->plan->d;
    const int64_t at = c0 * d->s, C = d->c;
    if (p->plan->group > 1) {
        p->plan->k->cf_group_grad_input_next(
            at_v(p->plan, b->dx, at), at_c(p->plan, b->dy, at), at_c(p->plan, b->x, at), c1 - c0,
            c2 - c1, d->n, d->s, C * d->s, b->mean + c0, b->mean_dy + c0, b->k + c0,
            b->scale + c0, b->mean + c1, &b->sums[c1], &b->sums[C + c1]);
        return;
    }
    /* single channels: c1 = c0 + 1 */
    p->plan->k->cf_grad_input_next(at_v(p->plan, b->dx, at), at_c(p->plan, b->dy, at),
                                   at_c(p->plan, b->x, at), d->n, d->s, C * d->s, b->mean[c0],
                                   b->mean_dy[c0], b->k[c0], b->scale[c0], b->mean[c1],
                                   &b->sums[c1], &b->sums[C + c1]);
    (void)c2;
}

/* ---- channels-last: tile rows [r0, r1) and channels [c0, c1) start at r0 * C + c0 ---- */

static void cl_sums(const bn_pass *p, const bn_tile *t) {
    const backward *b = (const backward *)p;
    const int64_t C = p->plan->d.c, at = t->r0 * C + t->c0;
    double *sum_dy = b->part_sums + 2 * t->part * C, *sum_dy_xc = sum_dy + C;
    for (int64_t c = t->c0; c < t->c1; c++) sum_dy[c] = sum_dy_xc[c] = 0;
    p->plan->k->cl_grad_sums(sum_dy + t->c0, sum_dy_xc + t->c0, at_c(p->plan, b->dy, at),
                             at_c(p->plan, b->x, at), t->r1 - t->r0, C, t->c1 - t->c0, b->mean + t->c0,
                             p->plan->prefetch);
}

/* Channels [c0, c1): the parts' sums added in the order of the rows (unless given), then
 * finished into the coefficients of dx. */
static void cl_finish(const bn_pass *p, int64_t c0, int64_t c1) {
    const backward *b = (const backward *)p;
    const int64_t C = p->plan->d.c;
    if (p->first)
        for (int64_t c = c0; c < c1; c++) {
            double sum_dy = 0, sum_dy_xc = 0;
            for (int64_t k = 0; k < p->plan->tiles.parts; k++) {
                sum_dy += b->part_sums[2 * k * C + c];
                sum_dy_xc += b->part_sums[(2 * k + 1) * C + c];
            }
            b->sums[c] = sum_dy;
            b->sums[C + c] = sum_dy_xc;
        }
    if (b->sums_only) return;
    finish(b, c0, c1);
    if (b->train)
        p->plan->k->coefs(b->coef, C, c0, c1, b->mean, b->scale, NULL, b->mean_dy, b->k);
    else /* dx = (dy - 0) * scale + 0: mean_dy is 0 here */
        p->plan->k->coefs(b->coef, C, c0, c1, b->mean_dy, b->scale, NULL, NULL, NULL);
}

static void cl_dx(const bn_pass *p, const bn_tile *t) {
    const backward *b = (const backward *)p;
    const int64_t C = p->plan->d.c, at = t->r0 * C + t->c0;
    const void *coef = (const char *)b->coef + t->c0 * (int64_t)p->plan->k->coef_size;
    if (b->train)
        p->plan->k->cl_grad_input(at_v(p->plan, b->dx, at), at_c(p->plan, b->dy, at),
                                  at_c(p->plan, b->x, at), t->r1 - t->r0, C, t->c1 - t->c0, coef);
    else
        p->plan->k->cl_normalize(at_v(p->plan, b->dx, at), at_c(p->plan, b->dy, at), NULL,
                                 t->r1 - t->r0, C, t->c1 - t->c0, coef);
}

bn_status bn_run_backward(const bn_desc *desc, const bn_backward_call *call) {
    bn_plan plan;
    BN_RETURN_IF_ERROR(bn_plan_make(&plan, desc, 2));
    const int64_t C = plan.d.c;
    const int cl = plan.d.layout == BN_CHANNELS_LAST, given = call->given_sum_dy != NULL;
    if (call->dx) bn_plan_try_stores(&plan, (given ? 0 : 1) | 2);
    const int64_t parts = cl && !given ? plan.tiles.parts : 0;
    bn_scratch scratch;
    void *arrays[3];
    const size_t bytes[3] = {bn_bytes(11 * C, sizeof(double)),
                             bn_bytes(2 * parts * C, sizeof(double)),
                             bn_bytes(cl ? BN_COEF_COUNT * C : 0, plan.k->coef_size)};
    if (!bn_scratch_take(&scratch, 3, bytes, arrays)) return BN_ERR_NO_MEMORY;
    double *doubles = arrays[0];
    double *mean = doubles, *invstd = doubles + C, *w = doubles + 2 * C;
    const int train = call->train;
    const void *dy = call->dy;
    if (call->relu_y) { /* nothing can fail from here on: the mask is the first write */
        bn_relu_mask(call->relu_g, dy, call->relu_y, plan.elements, plan.d.dtype);
        dy = call->relu_g;
    }
    backward b = {
        .pass = {.plan = &plan, .cf_first = cf_sums, .cf_finish = cf_finish, .cf_second = cf_dx,
                 .cf_second_next = train ? cf_dx_next : NULL, .cl_first = cl_sums,
                 .cl_finish = cl_finish, .cl_second = cl_dx, .first = !given,
                 .second = call->dx != NULL},
        .dx = call->dx, .dy = dy, .x = call->x, .train = train, .given = given,
        .sums_only = call->sum_dy_out != NULL, .count = (double)call->count, .mean = mean,
        .invstd = invstd, .w = call->weight || call->w ? w : NULL, .sums = doubles + 3 * C,
        .part_sums = arrays[1], .dbias = doubles + 5 * C, .dweight = doubles + 6 * C,
        .mean_dy = doubles + 7 * C, .k = doubles + 8 * C, .scale = doubles + 9 * C,
        .coef = arrays[2]};
    if (call->save_mean) {
        for (int64_t c = 0; c < C; c++) mean[c] = call->save_mean[c], invstd[c] = call->save_invstd[c];
    } else {
        plan.kp->load(mean, call->running_mean, C, 0);
        plan.kp->load(invstd, call->running_var, C, 0);
        for (int64_t c = 0; c < C; c++) invstd[c] = bn_stored_invstd(invstd[c], call->eps);
    }
    if (call->w)
        for (int64_t c = 0; c < C; c++) w[c] = call->w[c];
    else if (call->weight)
        plan.kp->load(w, call->weight, C, 1.0);
    if (given)
        for (int64_t c = 0; c < C; c++)
            b.sums[c] = call->given_sum_dy[c], b.sums[C + c] = call->given_sum_dy_xhat[c];
    const int64_t start = bn_plan_trial_start(&plan);
    bn_run_pass(&b.pass);
    bn_plan_trial_end(&plan, start);
    if (b.sums_only) {
        for (int64_t c = 0; c < C; c++) {
            double sum_dy = b.sums[c], sum_dy_xc = b.sums[C + c];
            int e_dy = 0, e_xc = 0;
            if (!isfinite(sum_dy) || !isfinite(sum_dy_xc))
                rescue_sums(&b, c, &sum_dy, &e_dy, &sum_dy_xc, &e_xc);
            call->sum_dy_out[c] = ldexp(sum_dy, e_dy);
            call->sum_dy_xhat_out[c] = ldexp(sum_dy_xc * invstd[c], e_xc);
        }
    } else {
        if (call->dweight) plan.kp->store(call->dweight, b.dweight, C);
        if (call->dbias) plan.kp->store(call->dbias, b.dbias, C);
        for (int64_t c = 0; c < C && call->dweight_d; c++) call->dweight_d[c] = b.dweight[c];
        for (int64_t c = 0; c < C && call->dbias_d; c++) call->dbias_d[c] = b.dbias[c];
    }
    bn_scratch_release(&scratch);
    return BN_OK;
}

/* With no values, dweight and dbias are 0 and there is no dx. */
static void store_zero_grads(const bn_desc *desc, void *dweight, void *dbias) {
    const bn_kernels *k = bn_kernels_for(bn_param_dtype(desc), 0);
    const double zero = 0;
    for (int64_t c = 0; c < desc->c; c++) {
        if (dweight) k->store((char *)dweight + c * (int64_t)k->elem_size, &zero, 1);
        if (dbias) k->store((char *)dbias + c * (int64_t)k->elem_size, &zero, 1);
    }
}

/* The checks every backward call makes first: the descriptor, then dy, x and the two per-channel
 * statistics it reads (saved, or running) present. */
static bn_status check_backward(const bn_desc *desc, const void *dy, const void *x,
                                const void *stat_a, const void *stat_b) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF(bn_tensor_missing(dy, desc) || bn_tensor_missing(x, desc) || !stat_a || !stat_b,
                 BN_ERR_NULL_POINTER);
    return BN_OK;
}

bn_status bn_backward_train(void *dx, void *dweight, void *dbias, const void *dy, const void *x,
                            const double *save_mean, const double *save_invstd,
                            const void *weight, const bn_desc *desc) {
    BN_RETURN_IF_ERROR(check_backward(desc, dy, x, save_mean, save_invstd));
    if (bn_count(desc) == 0) {
        store_zero_grads(desc, dweight, dbias);
        return BN_OK;
    }
    const bn_backward_call call = {.train = 1, .dx = dx, .dweight = dweight, .dbias = dbias,
                                .dy = dy, .x = x,
                                .weight = weight, .save_mean = save_mean,
                                .save_invstd = save_invstd, .count = bn_count(desc)};
    return bn_run_backward(desc, &call);
}

/* The backward of the fused forward passes: dy masked by y > 0 into dz (when asked for: add +
 * ReLU's gradient of z) or dx, then the batch norm's backward of it. */
static bn_status backward_relu(void *dx, void *dz, const void *y, const bn_desc *desc,
                               bn_backward_call call) {
    BN_RETURN_IF(bn_tensor_missing(y, desc), BN_ERR_NULL_POINTER);
    /* the masked gradient needs a place: dz or dx */
    BN_RETURN_IF(!dx && !dz && (call.dweight || call.dbias) && bn_count(desc) != 0,
                 BN_ERR_NULL_POINTER);
    if (bn_count(desc) == 0) {
        store_zero_grads(desc, call.dweight, call.dbias);
        return BN_OK;
    }
    if (!dx && !dz) return BN_OK; /* nothing asked for */
    if (!dx && !call.dweight && !call.dbias) { /* dz alone: the mask is all */
        bn_relu_mask(dz, call.dy, y, desc->n * desc->c * desc->s, desc->dtype);
        return BN_OK;
    }
    call.relu_y = y;
    call.relu_g = dz ? dz : dx;
    call.dx = dx;
    return bn_run_backward(desc, &call);
}

bn_status bn_backward_train_relu(void *dx, void *dz, void *dweight, void *dbias, const void *dy,
                                 const void *y, const void *x, const double *save_mean,
                                 const double *save_invstd, const void *weight,
                                 const bn_desc *desc) {
    BN_RETURN_IF_ERROR(check_backward(desc, dy, x, save_mean, save_invstd));
    const bn_backward_call call = {.train = 1, .dweight = dweight, .dbias = dbias, .dy = dy,
                                   .x = x, .weight = weight, .save_mean = save_mean,
                                   .save_invstd = save_invstd, .count = bn_count(desc)};
    return backward_relu(dx, dz, y, desc, call);
}

bn_status bn_backward_eval_relu(void *dx, void *dz, void *dweight, void *dbias, const void *dy,
                                const void *y, const void *x, const void *running_mean,
                                const void *running_var, const void *weight,
                                const bn_desc *desc, double eps) {
    BN_RETURN_IF_ERROR(check_backward(desc, dy, x, running_mean, running_var));
    BN_RETURN_IF_ERROR(bn_check_eps(eps));
    const bn_backward_call call = {.dweight = dweight, .dbias = dbias, .dy = dy, .x = x,
                                   .weight = weight, .running_mean = running_mean,
                                   .running_var = running_var, .eps = eps,
                                   .count = bn_count(desc)};
    return backward_relu(dx, dz, y, desc, call);
}

bn_status bn_backward_sums(double *sum_dy, double *sum_dy_xhat, const void *dy, const void *x,
                           const double *save_mean, const double *save_invstd,
                           const bn_desc *desc) {
    BN_RETURN_IF_ERROR(check_backward(desc, dy, x, save_mean, save_invstd));
    BN_RETURN_IF(!sum_dy || !sum_dy_xhat, BN_ERR_NULL_POINTER);
    if (bn_count(desc) == 0) {
        for (int64_t c = 0; c < desc->c; c++) sum_dy[c] = sum_dy_xhat[c] = 0;
        return BN_OK;
    }
    const bn_backward_call call = {.train = 1, .dy = dy, .x = x, .save_mean = save_mean,
                                .save_invstd = save_invstd, .sum_dy_out = sum_dy,
                                .sum_dy_xhat_out = sum_dy_xhat, .count = bn_count(desc)};
    return bn_run_backward(desc, &call);
}

bn_status bn_backward_train_sums(void *dx, const void *dy, const void *x,
                                 const double *save_mean, const double *save_invstd,
                                 const void *weight, const double *sum_dy,
                                 const double *sum_dy_xhat, int64_t count, const bn_desc *desc) {
    BN_RETURN_IF_ERROR(check_backward(desc, dy, x, save_mean, save_invstd));
    BN_RETURN_IF(bn_tensor_missing(dx, desc) || !sum_dy || !sum_dy_xhat, BN_ERR_NULL_POINTER);
    BN_RETURN_IF(count < bn_count(desc), BN_ERR_ARGUMENT);
    if (bn_count(desc) == 0) return BN_OK; /* no dx to write */
    const bn_backward_call call = {.train = 1, .dx = dx, .dy = dy, .x = x, .weight = weight,
                                .save_mean = save_mean, .save_invstd = save_invstd,
                                .given_sum_dy = sum_dy, .given_sum_dy_xhat = sum_dy_xhat,
                                .count = count};
    return bn_run_backward(desc, &call);
}

bn_status bn_backward_eval(void *dx, void *dweight, void *dbias, const void *dy, const void *x,
                           const void *running_mean, const void *running_var, const void *weight,
                           const bn_desc *desc, double eps) {
    BN_RETURN_IF_ERROR(check_backward(desc, dy, x, running_mean, running_var));
    BN_RETURN_IF_ERROR(bn_check_eps(eps));
    if (bn_count(desc) == 0) {
        store_zero_grads(desc, dweight, dbias);
        return BN_OK;
    }
    const bn_backward_call call = {.dx = dx, .dweight = dweight, .dbias = dbias, .dy = dy, .x = x,
                                .weight = weight, .running_mean = running_mean,
                                .running_var = running_var, .eps = eps,
                                .count = bn_count(desc)};
    return bn_run_backward(desc, &call);
}

/* The backward of a training call with options (bn_backward, bn_backward_renorm): stored
 * statistics are constants; the weight is w * r (1 * r with BN_FIX_GAMMA, whose dweight is 0);
 * dweight = r * sum dy * xhat + d * sum dy; ghost batches each their own batch. */
static bn_status backward_with(void *dx, void *dweight, void *dbias, const void *dy,
                               const void *x, const double *save_mean, const double *save_invstd,
                               const double *r, const double *d, const void *weight,
                               const bn_desc *desc, const bn_options *opt) {
    BN_RETURN_IF_ERROR(check_backward(desc, dy, x, save_mean, save_invstd));
    BN_RETURN_IF_ERROR(bn_check_options(opt));
    BN_RETURN_IF(!r != !d, BN_ERR_NULL_POINTER);
    const int stored = opt->flags & BN_STORED_STATS, fix = opt->flags & BN_FIX_GAMMA;
    const int64_t V = opt->virtual_batch, ghosts = V && desc->n > V ? desc->n / V : 1;
    BN_RETURN_IF(V && stored, BN_ERR_ARGUMENT);
    BN_RETURN_IF(V && desc->n % V != 0, BN_ERR_SHAPE);
    if (bn_count(desc) == 0) {
        store_zero_grads(desc, dweight, dbias);
        return BN_OK;
    }
    const int64_t C = desc->c;
    bn_scratch scratch;
    void *array;
    const size_t bytes = bn_bytes(3 * C, sizeof(double));
    if (!bn_scratch_take(&scratch, 1, &bytes, &array)) return BN_ERR_NO_MEMORY;
    double *w = array, *sum_dy_xhat = w + C, *sum_dy = w + 2 * C;
    const bn_kernels *k = bn_kernels_for(bn_param_dtype(desc), 0);
    k->load(w, fix ? NULL : weight, C, 1.0);
    for (int64_t c = 0; c < C && r; c++) w[c] *= r[c];
    bn_status st;
    if (ghosts > 1) {
        st = bn_backward_ghosts(dx, sum_dy_xhat, sum_dy, dy, x, save_mean, save_invstd, w, desc,
                                ghosts);
    } else {
        const bn_backward_call call = {.train = !stored, .dx = dx, .dy = dy, .x = x, .w = w,
                                       .save_mean = save_mean, .save_invstd = save_invstd,
                                       .dweight_d = sum_dy_xhat, .dbias_d = sum_dy,
                                       .count = bn_count(desc)};
        st = bn_run_backward(desc, &call);
    }
    if (st == BN_OK) {
        for (int64_t c = 0; c < C; c++)
            w[c] = fix ? 0.0 : r ? r[c] * sum_dy_xhat[c] + d[c] * sum_dy[c] : sum_dy_xhat[c];
        if (dweight) k->store(dweight, w, C);
        if (dbias) k->store(dbias, sum_dy, C);
    }
    bn_scratch_release(&scratch);
    return st;
}

bn_status bn_backward(void *dx, void *dweight, void *dbias, const void *dy, const void *x,
                      const double *save_mean, const double *save_invstd, const void *weight,
                      const bn_desc *desc, const bn_options *opt) {
    return backward_with(dx, dweight, dbias, dy, x, save_mean, save_invstd, NULL, NULL, weight,
                         desc, opt);
}

bn_status bn_backward_renorm(void *dx, void *dweight, void *dbias, const void *dy, const void *x,
                             const double *save_mean, const double *save_invstd, const double *r,
                             const double *d, const void *weight, const bn_desc *desc,
                             const bn_options *opt) {
    BN_RETURN_IF(!r || !d, BN_ERR_NULL_POINTER);
    return backward_with(dx, dweight, dbias, dy, x, save_mean, save_invstd, r, d, weight, desc,
                         opt);
}
