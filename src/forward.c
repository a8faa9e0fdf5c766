/* forward.c - the training and eval forward passes, and the forward stages of a split batch:
 * validate everything, make the plan, then compose the stages:
 *   training: per-block moments (the kernels) -> merge in a fixed order -> finish (finish.c) ->
 *   normalize; the skeleton of the layout (channels_first.c, channels_last.c) decides whether
 *   these run one after the other or fused in cache. Then, once, the statistics a training call
 *   returns and keeps (save_mean, save_invstd, the running statistics).
 *   eval: finish from the stored statistics -> normalize.
 * bn_compute_moments runs the first pass alone, bn_forward_train_stats all but it. */
#include "finish.h"
#include "pass.h"
#include "scratch.h"
#include "threads.h"
#include "validate.h"

#include <math.h>

typedef struct {
    bn_pass pass; /* first: the skeletons see this */
    void *y;
    const void *x;
    bn_moments *mom;   /* (C) each channel's moments: merged, or given */
    bn_moments *parts; /* (parts, C) channels-last: the moments of each part of the rows */
    bn_train_finish fin; /* the finish: its inputs, outputs and (C) arrays */
    double *mean;      /* (C) channels-last: the moments' means */
    void *coef;        /* (BN_COEF_COUNT, C) channels-last: the coefficients, compute type */
    int moments_only;  /* bn_compute_moments: no finish */
} forward;

/* The address of element `at` of a tensor of the plan's dtype. */
static inline const void *at_c(const bn_plan *p, const void *base, int64_t at) {
    return (const char *)base + at * (int64_t)p->es;
}
static inline void *at_v(const bn_plan *p, void *base, int64_t at) {
    return (char *)base + at * (int64_t)p->es;
}

/* ---- channels-first: channel c's rows start at c * S, C * S apart; channels [c0, c1) are one
 * channel, or a group of short rows (the cf_group_ kernels) ---- */

static void cf_moments(const bn_pass *p, int64_t c0, int64_t c1) {
    const forward *f = (const forward *)p;
    const bn_desc *d = &p->plan->d;
    if (p->plan->group > 1) {
        p->plan->k->cf_group_moments(f->mom + c0, at_c(p->plan, f->x, c0 * d->s), c1 - c0, d->n,
                                     d->s, d->c * d->s);
        return;
    }
    for (int64_t c = c0; c < c1; c++)
        f->mom[c] = p->plan->k->cf_moments(at_c(p->plan, f->x, c * d->s), d->n, d->s, d->c * d->s);
}

static void cf_finish(const bn_pass *p, int64_t c0, int64_t c1) {
    const forward *f = (const forward *)p;
    if (f->moments_only) return;
    bn_finish_train(&f->fin, f->mom, c0, c1);
    for (int64_t c = c0; c < c1; c++) f->mean[c] = f->mom[c].mean;
}

static void cf_normalize(const bn_pass *p, int64_t c0, int64_t c1) {
    const forward *f = (const forward *)p;
    const bn_desc *d = &p->plan->d;
    if (p->plan->group > 1) {
        p->plan->k->cf_group_normalize_next(NULL, at_v(p->plan, f->y, c0 * d->s),
                                            at_c(p->plan, f->x, c0 * d->s), NULL, NULL, c1 - c0,
                                            0, d->n, d->s, d->c * d->s, f->mean + c0,
                                            f->fin.scale + c0, f->fin.shift + c0);
        return;
    }
    for (int64_t c = c0; c < c1; c++)
        p->plan->k->cf_normalize(at_v(p->plan, f->y, c * d->s), at_c(p->plan, f->x, c * d->s),
                                 NULL, d->n, d->s, d->c * d->s, f->mean[c], f->fin.scale[c],
                                 f->fin.shift[c]);
}

/* Channels [c0, c1) normalized while the moments of [c1, c2) are formed. */
static void cf_normalize_next(const bn_pass *p, int64_t c0, int64_t c1, int64_t c2) {
    const forward *f = (const forward *)p;
    const bn_desc *d = &p->plan->d;
    if (p->plan->group > 1) {
        p->plan->k->cf_group_normalize_next(
            f->mom + c1, at_v(p->plan, f->y, c0 * d->s), at_c(p->plan, f->x, c0 * d->s), NULL,
            at_c(p->plan, f->x, c1 * d->s), c1 - c0, c2 - c1, d->n, d->s, d->c * d->s,
            f->mean + c0, f->fin.scale + c0, f->fin.shift + c0);
        return;
    }
    /* single channels: c1 = c0 + 1, c2 = c1 + 1 */
    f->mom[c1] = p->plan->k->cf_normalize_next(
        at_v(p->plan, f->y, c0 * d->s), at_c(p->plan, f->x, c0 * d->s), NULL,
        at_c(p->plan, f->x, c1 * d->s), d->n, d->s, d->c * d->s, f->mean[c0],
        f->fin.scale[c0], f->fin.shift[c0]);
    (void)c2;
}

/* ---- channels-last: tile rows [r0, r1) and channels [c0, c1) start at r0 * C + c0 ---- */

static void cl_moments(const bn_pass *p, const bn_tile *t) {
    const forward *f = (const forward *)p;
    const int64_t C = p->plan->d.c;
    bn_moments *acc = f->parts + t->part * C;
    for (int64_t c = t->c0; c < t->c1; c++) acc[c] = bn_moments_empty();
    p->plan->k->cl_moments(acc + t->c0, at_c(p->plan, f->x, t->r0 * C + t->c0), t->r1 - t->r0, C,
                           t->c1 - t->c0);
}

/* Channels [c0, c1): the parts' moments merged in the order of the rows (unless given), then
 * finished into the coefficients. */
static void cl_finish(const bn_pass *p, int64_t c0, int64_t c1) {
    const forward *f = (const forward *)p;
    const int64_t C = p->plan->d.c;
    if (p->first)
        for (int64_t c = c0; c < c1; c++) {
            bn_moments mom = bn_moments_empty();
            for (int64_t k = 0; k < p->plan->tiles.parts; k++) bn_moments_merge(&mom, f->parts[k * C + c]);
            f->mom[c] = mom;
        }
    if (f->moments_only) return;
    bn_finish_train(&f->fin, f->mom, c0, c1);
    for (int64_t c = c0; c < c1; c++) f->mean[c] = f->mom[c].mean;
    p->plan->k->coefs(f->coef, C, c0, c1, f->mean, f->fin.scale, f->fin.shift, NULL, NULL);
}

static void cl_normalize(const bn_pass *p, const bn_tile *t) {
    const forward *f = (const forward *)p;
    const int64_t C = p->plan->d.c, at = t->r0 * C + t->c0;
    p->plan->k->cl_normalize(at_v(p->plan, f->y, at), at_c(p->plan, f->x, at), NULL, t->r1 - t->r0,
                             C, t->c1 - t->c0, (const char *)f->coef + t->c0 * (int64_t)p->plan->k->coef_size);
}

/* The training composition on a planned tensor: with given moments or the first pass; the finish
 * of each channel (its coefficients, its saved and running statistics); the normalization into
 * y; or (y NULL) the moments alone, stored in mom_out. Scratch: (C) moments and the finish's
 * doubles; channels-last, also the parts' moments and the coefficients. */
typedef struct {
    void *y;
    const void *x, *weight, *bias;
    const bn_moments *given; /* (C), or NULL: the first pass runs */
    bn_moments *mom_out;     /* (C), or NULL */
    double *save_mean, *save_invstd;
    void *running_mean, *running_var;
    double count, eps, factor;
} train_call;

static bn_status run_train(const bn_plan *plan, const train_call *call) {
    const int64_t C = plan->d.c;
    const int cl = plan->d.layout == BN_CHANNELS_LAST;
    const int64_t parts = cl && !call->given ? plan->tiles.parts : 0;
    bn_scratch scratch;
    void *arrays[4];
    const size_t bytes[4] = {bn_bytes(C, sizeof(bn_moments)), bn_bytes(7 * C, sizeof(double)),
                             bn_bytes(parts * C, sizeof(bn_moments)),
                             bn_bytes(cl ? BN_COEF_COUNT * C : 0, plan->k->coef_size)};
    if (!bn_scratch_take(&scratch, 4, bytes, arrays)) return BN_ERR_NO_MEMORY;
    double *doubles = arrays[1];
    forward f = {
        .pass = {.plan = plan, .cf_first = cf_moments, .cf_finish = cf_finish,
                 .cf_second = cf_normalize, .cf_second_next = cf_normalize_next,
                 .cl_first = cl_moments, .cl_finish = cl_finish, .cl_second = cl_normalize,
                 .first = call->given == NULL, .second = call->y != NULL && plan->count > 0},
        .y = call->y, .x = call->x, .mom = arrays[0], .parts = arrays[2],
        .fin = {.k = plan->k, .count = call->count, .eps = call->eps, .factor = call->factor,
                .w = call->weight ? doubles : NULL, .b = call->bias ? doubles + C : NULL,
                .save_mean = call->save_mean, .save_invstd = call->save_invstd,
                .running_mean = call->running_mean, .running_var = call->running_var,
                .tmp = doubles + 2 * C, .invstd = doubles + 3 * C, .scale = doubles + 4 * C,
                .shift = doubles + 5 * C},
        .mean = doubles + 6 * C, .coef = arrays[3], .moments_only = call->mom_out != NULL};
    if (call->given)
        for (int64_t c = 0; c < C; c++) f.mom[c] = call->given[c];
    if (call->weight) plan->k->load(doubles, call->weight, C, 1.0);
    if (call->bias) plan->k->load(doubles + C, call->bias, C, 0.0);
    bn_run_pass(&f.pass);
    if (call->mom_out)
        for (int64_t c = 0; c < C; c++) call->mom_out[c] = f.mom[c];
    bn_scratch_release(&scratch);
    return BN_OK;
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

/* The checks every training call makes of its arguments, in this order: the tensors; the batch's
 * moments when they are given (stats, which must not be NULL; else *m is this tensor's count);
 * the running statistics. Gives this batch's weight in the running statistics (*factor) and the
 * counter after it (*batches; the counter counts empty batches too). With stats of an empty
 * batch (*m = 0) it stops before the running statistics: the caller does what bn_forward_train
 * does. */
static bn_status check_train(const void *y, const void *x, const void *running_mean,
                             const void *running_var, const int64_t *num_batches_tracked,
                             int given, const bn_moments *stats, const bn_desc *desc,
                             const bn_options *opt, int64_t *m, double *factor,
                             int64_t *batches) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF_ERROR(bn_check_options(opt));
    BN_RETURN_IF(bn_tensor_missing(x, desc) || bn_tensor_missing(y, desc), BN_ERR_NULL_POINTER);
    if (given) {
        BN_RETURN_IF_ERROR(check_stats(stats, desc, m));
        if (*m == 0) return BN_OK;
    } else {
        *m = bn_count(desc);
        BN_RETURN_IF(*m == 1, BN_ERR_COUNT);
    }
    const int tracking = running_mean || running_var;
    BN_RETURN_IF(tracking && opt->cumulative && !num_batches_tracked, BN_ERR_NULL_POINTER);
    BN_RETURN_IF(tracking && num_batches_tracked && *num_batches_tracked == INT64_MAX,
                 BN_ERR_TOO_LARGE);
    *batches = tracking && num_batches_tracked ? *num_batches_tracked + 1 : 0;
    *factor = opt->cumulative ? 1.0 / (double)*batches : opt->momentum;
    return BN_OK;
}

static void count_batch(const void *running_mean, const void *running_var,
                        int64_t *num_batches_tracked, int64_t batches) {
    if ((running_mean || running_var) && num_batches_tracked) *num_batches_tracked = batches;
}

bn_status bn_forward_train(void *y, double *save_mean, double *save_invstd, void *running_mean,
                           void *running_var, int64_t *num_batches_tracked, const void *x,
                           const void *weight, const void *bias, const bn_desc *desc,
                           const bn_options *opt) {
    double factor;
    int64_t m, batches;
    BN_RETURN_IF_ERROR(check_train(y, x, running_mean, running_var, num_batches_tracked, 0, NULL,
                                   desc, opt, &m, &factor, &batches));
    if (m == 0) { /* no values: no statistics, nothing to normalize or track */
        for (int64_t c = 0; c < desc->c; c++) {
            if (save_mean) save_mean[c] = NAN;
            if (save_invstd) save_invstd[c] = NAN;
        }
    } else {
        bn_plan plan;
        BN_RETURN_IF_ERROR(bn_plan_make(&plan, desc, 1));
        const train_call call = {.y = y, .x = x, .weight = weight, .bias = bias,
                                 .save_mean = save_mean, .save_invstd = save_invstd,
                                 .running_mean = running_mean, .running_var = running_var,
                                 .count = (double)m, .eps = opt->eps, .factor = factor};
        BN_RETURN_IF_ERROR(run_train(&plan, &call));
    }
    count_batch(running_mean, running_var, num_batches_tracked, batches);
    return BN_OK;
}

bn_status bn_compute_moments(bn_moments *moments, const void *x, const bn_desc *desc) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF(!moments || bn_tensor_missing(x, desc), BN_ERR_NULL_POINTER);
    if (bn_count(desc) == 0) {
        for (int64_t c = 0; c < desc->c; c++) moments[c] = bn_moments_empty();
        return BN_OK;
    }
    bn_plan plan;
    BN_RETURN_IF_ERROR(bn_plan_make(&plan, desc, 1));
    const train_call call = {.x = x, .mom_out = moments, .count = (double)bn_count(desc)};
    return run_train(&plan, &call);
}

bn_status bn_forward_train_stats(void *y, double *save_mean, double *save_invstd,
                                 void *running_mean, void *running_var,
                                 int64_t *num_batches_tracked, const void *x, const void *weight,
                                 const void *bias, const bn_moments *stats, const bn_desc *desc,
                                 const bn_options *opt) {
    double factor;
    int64_t m, batches;
    BN_RETURN_IF_ERROR(check_train(y, x, running_mean, running_var, num_batches_tracked, 1,
                                   stats, desc, opt, &m, &factor, &batches));
    if (m == 0) /* an empty batch: what bn_forward_train does with one */
        return bn_forward_train(y, save_mean, save_invstd, running_mean, running_var,
                                num_batches_tracked, x, weight, bias, desc, opt);
    bn_plan plan;
    BN_RETURN_IF_ERROR(bn_plan_make(&plan, desc, 1));
    /* an empty piece has nothing to normalize; its statistics are still saved and kept */
    const train_call call = {.y = y, .x = x, .weight = weight, .bias = bias, .given = stats,
                             .save_mean = save_mean, .save_invstd = save_invstd,
                             .running_mean = running_mean, .running_var = running_var,
                             .count = (double)m, .eps = opt->eps, .factor = factor};
    BN_RETURN_IF_ERROR(run_train(&plan, &call));
    count_batch(running_mean, running_var, num_batches_tracked, batches);
    return BN_OK;
}

/* ---- eval: coefficients from the stored statistics, then one element-wise pass ---- */

typedef struct {
    const bn_plan *plan;
    void *y;
    const void *x;
    const void *coef; /* (BN_COEF_COUNT, C) in the compute type */
} eval_pass;

/* Channels-first: item k is sample k / chunks, its channel chunk k % chunks. Eval has no
 * statistics to gather, so it streams through memory in order, as a copy would. */
static void eval_sample_chunk(const void *args, int64_t k) {
    const eval_pass *e = args;
    const bn_plan *p = e->plan;
    const int64_t C = p->d.c, chunks = (C + BN_TILE_CHANNELS - 1) / BN_TILE_CHANNELS;
    const int64_t i = k / chunks, c0 = k % chunks * BN_TILE_CHANNELS;
    const int64_t c1 = c0 + BN_TILE_CHANNELS < C ? c0 + BN_TILE_CHANNELS : C;
    const int64_t at = (i * C + c0) * p->d.s;
    p->k->cf_normalize_rows(at_v(p, e->y, at), at_c(p, e->x, at), NULL, c1 - c0, p->d.s,
                            (const char *)e->coef + c0 * (int64_t)p->k->coef_size, C);
}

static void eval_piece(const void *args, int64_t k) {
    const eval_pass *e = args;
    const bn_plan *p = e->plan;
    const bn_tile t = bn_tile_at(&p->pieces, k);
    const int64_t C = p->d.c, at = t.r0 * C + t.c0;
    p->k->cl_normalize(at_v(p, e->y, at), at_c(p, e->x, at), NULL, t.r1 - t.r0, C, t.c1 - t.c0,
                       (const char *)e->coef + t.c0 * (int64_t)p->k->coef_size);
}

bn_status bn_forward_eval(void *y, const void *x, const void *running_mean,
                          const void *running_var, const void *weight, const void *bias,
                          const bn_desc *desc, double eps) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF(bn_tensor_missing(x, desc) || bn_tensor_missing(y, desc) || !running_mean ||
                     !running_var,
                 BN_ERR_NULL_POINTER);
    BN_RETURN_IF_ERROR(bn_check_eps(eps));
    bn_plan plan;
    BN_RETURN_IF_ERROR(bn_plan_make(&plan, desc, 0));
    if (plan.elements == 0) return BN_OK;
    const int64_t C = plan.d.c;
    bn_scratch scratch;
    void *coef;
    const size_t bytes = bn_bytes(BN_COEF_COUNT * C, plan.k->coef_size);
    if (!bn_scratch_take(&scratch, 1, &bytes, &coef)) return BN_ERR_NO_MEMORY;
    plan.k->eval_coefs(coef, C, C, running_mean, running_var, weight, bias, eps);
    const eval_pass e = {.plan = &plan, .y = y, .x = x, .coef = coef};
    if (plan.d.layout == BN_CHANNELS_LAST)
        bn_parallel_for(plan.pieces.parts * plan.pieces.chunks, plan.elements, eval_piece, &e);
    else
        bn_parallel_for(plan.d.n * ((C + BN_TILE_CHANNELS - 1) / BN_TILE_CHANNELS),
                        plan.elements, eval_sample_chunk, &e);
    bn_scratch_release(&scratch);
    return BN_OK;
}
