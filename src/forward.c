/* forward.c - the training and eval forward passes, and the forward stages of a split batch:
 * validate everything, make the plan, then compose the stages:
 *   training: per-block moments (the kernels) -> merge in a fixed order -> finish (finish.c) ->
 *   normalize; the skeleton of the layout (channels_first.c, channels_last.c) decides whether
 *   these run one after the other or fused in cache. Then, once, the statistics a training call
 *   returns and keeps (save_mean, save_invstd, the running statistics).
 *   eval: finish from the stored statistics -> normalize.
 * bn_compute_moments runs the first pass alone, bn_forward_train_stats all but it. */
#include "finish.h"
#include "train.h"
#include "pass.h"
#include "scratch.h"
#include "threads.h"
#include "validate.h"

#include <math.h>

typedef struct {
    bn_pass pass; /* first: the skeletons see this */
    void *y;
    const void *x;
    const void *z;     /* the epilogue's second input, or NULL */
    bn_moments *mom;   /* (C) each channel's moments: merged, or given */
    bn_moments *parts; /* (parts, C) channels-last: the moments of each part of the rows */
    bn_train_finish fin; /* the finish: its inputs, outputs and (C) arrays */
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
/* The same of an optional tensor (the epilogue's z): NULL stays NULL. */
static inline const void *at_z(const bn_plan *p, const void *base, int64_t at) {
    return base ? at_c(p, base, at) : NULL;
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
}

static void cf_normalize(const bn_pass *p, int64_t c0, int64_t c1) {
    const forward *f = (const forward *)p;
    const bn_desc *d = &p->plan->d;
    if (p->plan->group > 1) {
        p->plan->k->cf_group_normalize_next(NULL, at_v(p->plan, f->y, c0 * d->s),
                                            at_c(p->plan, f->x, c0 * d->s),
                                            at_z(p->plan, f->z, c0 * d->s), NULL, c1 - c0,
                                            0, d->n, d->s, d->c * d->s, f->fin.mean + c0,
                                            f->fin.scale + c0, f->fin.shift + c0);
        return;
    }
    for (int64_t c = c0; c < c1; c++)
        p->plan->k->cf_normalize(at_v(p->plan, f->y, c * d->s), at_c(p->plan, f->x, c * d->s),
                                 at_z(p->plan, f->z, c * d->s), d->n, d->s, d->c * d->s,
                                 f->fin.mean[c], f->fin.scale[c],
                                 f->fin.shift[c]);
}

/* Channels [c0, c1) normalized while the moments of [c1, c2) are formed. */
static void cf_normalize_next(const bn_pass *p, int64_t c0, int64_t c1, int64_t c2) {
    const forward *f = (const forward *)p;
    const bn_desc *d = &p->plan->d;
    if (p->plan->group > 1) {
        p->plan->k->cf_group_normalize_next(
            f->mom + c1, at_v(p->plan, f->y, c0 * d->s), at_c(p->plan, f->x, c0 * d->s),
            at_z(p->plan, f->z, c0 * d->s), at_c(p->plan, f->x, c1 * d->s), c1 - c0, c2 - c1, d->n, d->s, d->c * d->s,
            f->fin.mean + c0, f->fin.scale + c0, f->fin.shift + c0);
        return;
    }
    /* single channels: c1 = c0 + 1, c2 = c1 + 1 */
    f->mom[c1] = p->plan->k->cf_normalize_next(
        at_v(p->plan, f->y, c0 * d->s), at_c(p->plan, f->x, c0 * d->s),
        at_z(p->plan, f->z, c0 * d->s), at_c(p->plan, f->x, c1 * d->s), d->n, d->s, d->c * d->s,
        f->fin.mean[c0],
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
                           t->c1 - t->c0, p->plan->prefetch);
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
    p->plan->k->coefs(f->coef, C, c0, c1, f->fin.mean, f->fin.scale, f->fin.shift, NULL, NULL);
}

static void cl_normalize(const bn_pass *p, const bn_tile *t) {
    const forward *f = (const forward *)p;
    const int64_t C = p->plan->d.c, at = t->r0 * C + t->c0;
    p->plan->k->cl_normalize(at_v(p->plan, f->y, at), at_c(p->plan, f->x, at),
                             at_z(p->plan, f->z, at), t->r1 - t->r0,
                             C, t->c1 - t->c0, (const char *)f->coef + t->c0 * (int64_t)p->plan->k->coef_size);
}

bn_status bn_run_train(const bn_plan *plan, const bn_train_call *call) {
    const int64_t C = plan->d.c;
    const int cl = plan->d.layout == BN_CHANNELS_LAST, stored = call->stored_mean != NULL;
    const int64_t parts = cl && !call->given ? plan->tiles.parts : 0;
    bn_scratch scratch;
    void *arrays[4];
    const size_t bytes[4] = {bn_bytes(C, sizeof(bn_moments)), bn_bytes(9 * C, sizeof(double)),
                             bn_bytes(parts * C, sizeof(bn_moments)),
                             bn_bytes(cl ? BN_COEF_COUNT * C : 0, plan->k->coef_size)};
    if (!bn_scratch_take(&scratch, 4, bytes, arrays)) return BN_ERR_NO_MEMORY;
    double *doubles = arrays[1];
    const int has_w = call->weight || call->w, has_b = call->bias || call->b;
    forward f = {
        .pass = {.plan = plan, .cf_first = cf_moments, .cf_finish = cf_finish,
                 .cf_second = cf_normalize, .cf_second_next = cf_normalize_next,
                 .cl_first = cl_moments, .cl_finish = cl_finish, .cl_second = cl_normalize,
                 .first = call->given == NULL, .second = call->y != NULL && plan->count > 0},
        .y = call->y, .x = call->x, .z = call->z, .mom = arrays[0], .parts = arrays[2],
        .fin = {.k = plan->kp, .count = call->count, .eps = call->eps, .w_new = call->w_new,
                .w_old = call->w_old, .var_divisor = call->var_divisor,
                .w = has_w ? doubles : NULL, .b = has_b ? doubles + C : NULL,
                .stored_mean = stored ? doubles + 7 * C : NULL,
                .stored_invstd = stored ? doubles + 8 * C : NULL, .renorm = call->renorm,
                .save_mean = call->save_mean, .save_invstd = call->save_invstd,
                .running_mean = call->running_mean, .running_var = call->running_var,
                .tmp = doubles + 2 * C, .invstd = doubles + 3 * C, .scale = doubles + 4 * C,
                .shift = doubles + 5 * C, .mean = doubles + 6 * C},
        .coef = arrays[3], .moments_only = call->mom_out != NULL};
    if (call->given)
        for (int64_t c = 0; c < C; c++) f.mom[c] = call->given[c];
    if (call->w)
        for (int64_t c = 0; c < C; c++) doubles[c] = call->w[c];
    else if (call->weight)
        plan->kp->load(doubles, call->weight, C, 1.0);
    if (call->b)
        for (int64_t c = 0; c < C; c++) doubles[C + c] = call->b[c];
    else if (call->bias)
        plan->kp->load(doubles + C, call->bias, C, 0.0);
    if (stored) { /* loaded before the pass blends them */
        plan->kp->load(doubles + 7 * C, call->stored_mean, C, 0.0);
        plan->kp->load(doubles + 8 * C, call->stored_var, C, 0.0);
        for (int64_t c = 0; c < C; c++)
            doubles[8 * C + c] = bn_stored_invstd(doubles[8 * C + c], call->eps);
    }
    const int64_t start = bn_plan_trial_start(plan);
    bn_run_pass(&f.pass);
    bn_plan_trial_end(plan, start);
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
    return BN_OK;
}

void bn_running_weights(const bn_options *opt, int64_t batches, double momentum, double *w_new,
                        double *w_old) {
    if (opt->cumulative) {
        *w_new = 1.0 / (double)batches;
        *w_old = 1 - *w_new;
    } else if (opt->flags & BN_RUNNING_SUMS) {
        *w_new = 1, *w_old = momentum;
    } else if (opt->flags & BN_MOMENTUM_OF_OLD) {
        *w_new = 1 - momentum, *w_old = momentum;
    } else {
        *w_new = momentum, *w_old = 1 - momentum;
    }
}

double bn_var_divisor(const bn_options *opt, int64_t m) {
    if (opt->flags & BN_BIASED_RUNNING_VAR) return (double)m;
    return m > 1 ? (double)(m - 1) : 1.0;
}

bn_status bn_check_train(const bn_train_args *a, const bn_desc *desc, const bn_options *opt,
                         bn_train_plan *t) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF_ERROR(bn_check_options(opt));
    BN_RETURN_IF(bn_tensor_missing(a->x, desc) || bn_tensor_missing(a->y, desc),
                 BN_ERR_NULL_POINTER);
    const int flags = opt->flags, stored = flags & BN_STORED_STATS;
    const int64_t ghost = opt->virtual_batch;
    BN_RETURN_IF(ghost && (a->given || stored || a->epilogue), BN_ERR_ARGUMENT);
    BN_RETURN_IF(ghost && desc->n % ghost != 0, BN_ERR_SHAPE);
    BN_RETURN_IF(stored && (a->renorm || a->given), BN_ERR_ARGUMENT);
    BN_RETURN_IF(stored && (!a->running_mean || !a->running_var), BN_ERR_NULL_POINTER);
    t->ghosts = ghost && desc->n > ghost ? desc->n / ghost : 1; /* n = 0: one, empty */
    if (a->given) {
        BN_RETURN_IF_ERROR(check_stats(a->stats, desc, &t->m));
    } else {
        t->m = bn_count(desc) / t->ghosts; /* values per channel of a batch (a ghost batch) */
    }
    const int batch_used = !(stored && (flags & BN_FREEZE_RUNNING));
    BN_RETURN_IF(t->m == 1 && batch_used && !(flags & BN_ONE_VALUE_OK), BN_ERR_COUNT);
    if (a->renorm) BN_RETURN_IF(!a->renorm_mean || !a->renorm_stddev, BN_ERR_NULL_POINTER);
    if (a->renorm && a->running_var && !(flags & BN_FREEZE_RUNNING))
        BN_RETURN_IF(!a->moving_stddev, BN_ERR_NULL_POINTER);
    t->m_total = t->m * t->ghosts;
    if (a->given && t->m == 0) { t->tracking = 0; return BN_OK; }
    t->tracking = (a->running_mean || a->running_var) && !(flags & BN_FREEZE_RUNNING);
    BN_RETURN_IF(t->tracking && opt->cumulative && !a->num_batches_tracked, BN_ERR_NULL_POINTER);
    BN_RETURN_IF(t->tracking && a->num_batches_tracked && *a->num_batches_tracked == INT64_MAX,
                 BN_ERR_TOO_LARGE);
    t->batches = t->tracking && a->num_batches_tracked ? *a->num_batches_tracked + 1 : 0;
    bn_running_weights(opt, t->batches, opt->momentum, &t->w_new, &t->w_old);
    bn_running_weights(opt, t->batches, opt->renorm_momentum, &t->rw_new, &t->rw_old);
    return BN_OK;
}

void bn_count_batch(const bn_train_args *a, const bn_train_plan *t) {
    if (t->tracking && a->num_batches_tracked) *a->num_batches_tracked = t->batches;
}

/* A training call (args checked by bn_check_train into t) on a tensor with values and no
 * ghost batches. */
static bn_status train_whole(const bn_train_args *a, const bn_desc *desc, const bn_options *opt,
                             const bn_train_plan *t, const bn_renorm_finish *renorm) {
    bn_plan plan;
    BN_RETURN_IF_ERROR(bn_plan_make(&plan, desc, 1));
    if (a->epilogue) bn_plan_set_epilogue(&plan, a->epilogue);
    bn_plan_try_stores(&plan, (a->stats ? 0 : 1) | 2);
    const int track = t->tracking;
    const bn_train_call call = {
        .y = a->y, .x = a->x, .weight = opt->flags & BN_FIX_GAMMA ? NULL : a->weight,
        .bias = a->bias, .given = a->stats, .save_mean = a->save_mean,
        .save_invstd = a->save_invstd, .running_mean = track ? a->running_mean : NULL,
        .running_var = track ? a->running_var : NULL,
        .stored_mean = opt->flags & BN_STORED_STATS ? a->running_mean : NULL,
        .stored_var = a->running_var, .renorm = renorm, .count = (double)t->m, .eps = opt->eps,
        .w_new = t->w_new, .w_old = t->w_old, .var_divisor = bn_var_divisor(opt, t->m),
        .z = a->z};
    return bn_run_train(&plan, &call);
}

/* Stored statistics and no update: the eval pass, and the statistics it used saved. */
static bn_status train_frozen(const bn_train_args *a, const bn_desc *desc,
                              const bn_options *opt) {
    const void *weight = opt->flags & BN_FIX_GAMMA ? NULL : a->weight;
    BN_RETURN_IF_ERROR(bn_eval(a->y, a->x, a->z, a->running_mean, a->running_var, weight, a->bias,
                               desc, opt->eps, a->epilogue));
    const bn_kernels *k = bn_kernels_for(bn_param_dtype(desc), 0);
    for (int64_t c = 0; c < desc->c; c++) {
        double mean, var;
        k->load(&mean, (const char *)a->running_mean + c * (int64_t)k->elem_size, 1, 0);
        k->load(&var, (const char *)a->running_var + c * (int64_t)k->elem_size, 1, 0);
        if (a->save_mean) a->save_mean[c] = mean;
        if (a->save_invstd) a->save_invstd[c] = bn_stored_invstd(var, opt->eps);
    }
    return BN_OK;
}

bn_status bn_train(const bn_train_args *a, const bn_desc *desc, const bn_options *opt) {
    bn_train_plan t;
    BN_RETURN_IF_ERROR(bn_check_train(a, desc, opt, &t));
    const int flags = opt->flags;
    if ((flags & BN_STORED_STATS) && (flags & BN_FREEZE_RUNNING))
        return train_frozen(a, desc, opt);
    if (t.m_total == 0 && !(flags & BN_STORED_STATS)) {
        /* no values: no statistics, nothing to normalize or track */
        for (int64_t c = 0; c < desc->c * t.ghosts; c++) {
            if (a->save_mean) a->save_mean[c] = NAN;
            if (a->save_invstd) a->save_invstd[c] = NAN;
        }
    } else if (t.m_total > 0 && t.ghosts > 1) {
        BN_RETURN_IF_ERROR(bn_train_ghosts(a, desc, opt, &t));
    } else if (t.m_total == 0) { /* stored statistics, no values: nothing to normalize */
        BN_RETURN_IF_ERROR(train_frozen(a, desc, opt));
    } else if (!a->renorm) {
        BN_RETURN_IF_ERROR(train_whole(a, desc, opt, &t, NULL));
    } else {
        bn_scratch scratch;
        void *doubles;
        const size_t bytes = bn_bytes(4 * desc->c, sizeof(double));
        if (!bn_scratch_take(&scratch, 1, &bytes, &doubles)) return BN_ERR_NO_MEMORY;
        const bn_renorm_finish rn = bn_renorm_setup(a, desc, opt, &t, doubles);
        const bn_status st = train_whole(a, desc, opt, &t, &rn);
        bn_scratch_release(&scratch);
        BN_RETURN_IF_ERROR(st);
    }
    bn_count_batch(a, &t);
    return BN_OK;
}

bn_renorm_finish bn_renorm_setup(const bn_train_args *a, const bn_desc *desc,
                                 const bn_options *opt, const bn_train_plan *t, double *doubles) {
    const int64_t C = desc->c;
    const bn_kernels *k = bn_kernels_for(bn_param_dtype(desc), 0);
    const int keep = !(opt->flags & BN_FREEZE_RUNNING);
    k->load(doubles, a->renorm_mean, C, 0);
    k->load(doubles + C, a->renorm_stddev, C, 1);
    bn_renorm_finish rn = {.mean = doubles, .stddev = doubles + C, .rmin = opt->rmin,
                           .rmax = opt->rmax, .dmax = opt->dmax, .w_new = t->rw_new,
                           .w_old = t->rw_old, .mean_out = keep ? a->renorm_mean : NULL,
                           .stddev_out = keep ? a->renorm_stddev : NULL,
                           .moving_stddev = t->tracking && a->running_var ? a->moving_stddev : NULL,
                           .r = a->r ? a->r : doubles + 2 * C, .d = a->d ? a->d : doubles + 3 * C};
    return rn;
}

bn_status bn_forward_train(void *y, double *save_mean, double *save_invstd, void *running_mean,
                           void *running_var, int64_t *num_batches_tracked, const void *x,
                           const void *weight, const void *bias, const bn_desc *desc,
                           const bn_options *opt) {
    const bn_train_args a = {.y = y, .save_mean = save_mean, .save_invstd = save_invstd,
                             .running_mean = running_mean, .running_var = running_var,
                             .num_batches_tracked = num_batches_tracked, .x = x,
                             .weight = weight, .bias = bias};
    return bn_train(&a, desc, opt);
}

bn_status bn_forward_train_relu(void *y, double *save_mean, double *save_invstd,
                                void *running_mean, void *running_var,
                                int64_t *num_batches_tracked, const void *x, const void *z,
                                const void *weight, const void *bias, const bn_desc *desc,
                                const bn_options *opt) {
    const bn_train_args a = {.y = y, .save_mean = save_mean, .save_invstd = save_invstd,
                             .running_mean = running_mean, .running_var = running_var,
                             .num_batches_tracked = num_batches_tracked, .x = x,
                             .weight = weight, .bias = bias, .z = z,
                             .epilogue = z ? BN_EPILOGUE_ADD_RELU : BN_EPILOGUE_RELU};
    return bn_train(&a, desc, opt);
}

bn_status bn_forward_train_renorm(void *y, double *save_mean, double *save_invstd, double *r,
                                  double *d, void *running_mean, void *running_var,
                                  void *moving_stddev, void *renorm_mean, void *renorm_stddev,
                                  int64_t *num_batches_tracked, const void *x, const void *weight,
                                  const void *bias, const bn_desc *desc, const bn_options *opt) {
    const bn_train_args a = {.y = y, .save_mean = save_mean, .save_invstd = save_invstd,
                             .r = r, .d = d, .running_mean = running_mean,
                             .running_var = running_var, .moving_stddev = moving_stddev,
                             .renorm = 1, .renorm_mean = renorm_mean,
                             .renorm_stddev = renorm_stddev,
                             .num_batches_tracked = num_batches_tracked, .x = x,
                             .weight = weight, .bias = bias};
    return bn_train(&a, desc, opt);
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
    const bn_train_call call = {.x = x, .mom_out = moments, .count = (double)bn_count(desc)};
    return bn_run_train(&plan, &call);
}

bn_status bn_forward_train_stats(void *y, double *save_mean, double *save_invstd,
                                 void *running_mean, void *running_var,
                                 int64_t *num_batches_tracked, const void *x, const void *weight,
                                 const void *bias, const bn_moments *stats, const bn_desc *desc,
                                 const bn_options *opt) {
    const bn_train_args a = {.y = y, .save_mean = save_mean, .save_invstd = save_invstd,
                             .running_mean = running_mean, .running_var = running_var,
                             .num_batches_tracked = num_batches_tracked, .x = x,
                             .weight = weight, .bias = bias, .given = 1, .stats = stats};
    bn_train_plan t;
    BN_RETURN_IF_ERROR(bn_check_train(&a, desc, opt, &t));
    if (t.m == 0) { /* an empty batch: what bn_forward_train does with one */
        bn_train_args whole = a;
        whole.given = 0, whole.stats = NULL;
        return bn_train(&whole, desc, opt);
    }
    /* an empty piece has nothing to normalize; its statistics are still saved and kept */
    BN_RETURN_IF_ERROR(train_whole(&a, desc, opt, &t, NULL));
    bn_count_batch(&a, &t);
    return BN_OK;
}

/* ---- eval: coefficients from the stored statistics, then one element-wise pass ---- */

typedef struct {
    const bn_plan *plan;
    void *y;
    const void *x;
    const void *z; /* the epilogue's second input, or NULL */
    void *coef; /* (BN_COEF_COUNT, C) in the compute type */
    const void *rm, *rv, *w, *b;
    double eps;
} eval_pass;

/* Item k: the coefficients of channels [k * EVAL_COEF_CHANNELS, (k + 1) * EVAL_COEF_CHANNELS):
 * on the pass's team, so that no thread waits while one makes them all (Intel Xeon, paired,
 * (256, 1024) eval on 2 threads: 0.89x the time). */
enum { EVAL_COEF_CHANNELS = 64 };

static void eval_coef_range(const void *args, int64_t k) {
    const eval_pass *e = args;
    const bn_plan *p = e->plan;
    const int64_t C = p->d.c, c0 = k * EVAL_COEF_CHANNELS;
    const int64_t n = C - c0 < EVAL_COEF_CHANNELS ? C - c0 : EVAL_COEF_CHANNELS;
    const int64_t es = (int64_t)p->kp->elem_size;
    p->kp->eval_coefs((char *)e->coef + c0 * (int64_t)p->k->coef_size, C, n,
                     (const char *)e->rm + c0 * es, (const char *)e->rv + c0 * es,
                     e->w ? (const char *)e->w + c0 * es : NULL,
                     e->b ? (const char *)e->b + c0 * es : NULL, e->eps);
}

/* Channels-first: item k is sample k / chunks, its channel chunk k % chunks. Eval has no
 * statistics to gather, so it streams through memory in order, as a copy would. */
static void eval_sample_chunk(const void *args, int64_t k) {
    const eval_pass *e = args;
    const bn_plan *p = e->plan;
    const int64_t C = p->d.c, chunks = (C + BN_TILE_CHANNELS - 1) / BN_TILE_CHANNELS;
    const int64_t i = k / chunks, c0 = k % chunks * BN_TILE_CHANNELS;
    const int64_t c1 = c0 + BN_TILE_CHANNELS < C ? c0 + BN_TILE_CHANNELS : C;
    const int64_t at = (i * C + c0) * p->d.s;
    p->k->cf_normalize_rows(at_v(p, e->y, at), at_c(p, e->x, at), at_z(p, e->z, at), c1 - c0,
                            p->d.s,
                            (const char *)e->coef + c0 * (int64_t)p->k->coef_size, C);
}

/* Channels-first rows shorter than BN_SHORT: groups of BN_GROUP channels, whose rows in a
 * sample are g * s contiguous values (whole vectors for 16 channels: 7x7 rows of 16 channels
 * are 49 of them), normalized with coefficients per position; each group's samples cut into
 * blocks of at least EVAL_GROUP_SAMPLES, only as many as make EVAL_GROUP_ITEMS items, so that
 * there are items for every thread. Measured (Intel Xeon, `bnorm bench`, 32x512x7x7): 219 us on
 * one thread against 230 us row by row, and on two threads, with streaming stores, 85-89 us
 * against 127-138 us. Each item spreads its group's coefficients per position again: at 64
 * items 32x512x7x7 cut each group in two, and whole groups (32 items) took 0.94x the time on
 * two threads, 0.98x on one (paired; 8x512x7x7, 128x512x7x7, 32x128x7x7 and 32x2048x4x4
 * 1.00x). */
enum { EVAL_GROUP_SAMPLES = 8, EVAL_GROUP_ITEMS = 32 };

static int64_t eval_group_samples(const bn_plan *p) {
    const int64_t groups = (p->d.c + BN_GROUP - 1) / BN_GROUP;
    const int64_t per = (p->d.n * groups + EVAL_GROUP_ITEMS - 1) / EVAL_GROUP_ITEMS;
    return per > EVAL_GROUP_SAMPLES ? per : EVAL_GROUP_SAMPLES;
}

/* Item k: group k / blocks, its samples in block k % blocks. */
static void eval_group(const void *args, int64_t k) {
    const eval_pass *e = args;
    const bn_plan *p = e->plan;
    const int64_t C = p->d.c, s = p->d.s, per = eval_group_samples(p);
    const int64_t blocks = (p->d.n + per - 1) / per;
    const int64_t c0 = k / blocks * BN_GROUP, i0 = k % blocks * per;
    const int64_t g = C - c0 < BN_GROUP ? C - c0 : BN_GROUP;
    const int64_t rows = p->d.n - i0 < per ? p->d.n - i0 : per;
    const int64_t at = (i0 * C + c0) * s;
    p->k->cf_group_normalize(at_v(p, e->y, at), at_c(p, e->x, at), at_z(p, e->z, at), g, rows, s,
                             C * s,
                             (const char *)e->coef + c0 * (int64_t)p->k->coef_size, C);
}

static void eval_piece(const void *args, int64_t k) {
    const eval_pass *e = args;
    const bn_plan *p = e->plan;
    const bn_tile t = bn_tile_at(&p->pieces, k);
    const int64_t C = p->d.c, at = t.r0 * C + t.c0;
    p->k->cl_normalize(at_v(p, e->y, at), at_c(p, e->x, at), at_z(p, e->z, at), t.r1 - t.r0, C,
                       t.c1 - t.c0,
                       (const char *)e->coef + t.c0 * (int64_t)p->k->coef_size);
}

/* With at most this many channels, each thread of the team makes all the coefficients
 * itself, in a slot of its own, then normalizes its share of the pass's items, with no barrier
 * between (a thread that made half of them waited at one for the other half). Measured
 * (Intel Xeon, 2 threads, mean time of a call): (256, 1024) 17.2 -> 15.4 us, (64, 4096) 32.1 ->
 * 29.1 us, (128, 2048) 23.2 -> 20.7 us; from (64, 8192) making them twice costs more than the
 * barrier (73.1 -> 77.1 us), and those keep the team's split. */
enum { EVAL_OWN_COEF_CHANNELS = 4096 };

typedef struct {
    const eval_pass *e;
    bn_phase pass; /* share t of plan.threads: items [items * t / threads, items * (t + 1) / ...) */
    size_t slot;   /* bytes of one share's coefficients; e->coef holds plan.threads of them */
} eval_shares;

/* Item t: share t's coefficients, then its items of the pass. The coefficients are a function
 * of each channel's stored values alone, so every slot holds the same bits. */
static void eval_share(const void *args, int64_t t) {
    const eval_shares *sh = args;
    eval_pass e = *sh->e;
    const bn_plan *p = e.plan;
    const int64_t items = sh->pass.items, shares = p->threads;
    e.coef = (char *)e.coef + t * (int64_t)sh->slot;
    p->kp->eval_coefs(e.coef, p->d.c, p->d.c, e.rm, e.rv, e.w, e.b, e.eps);
    for (int64_t k = items * t / shares; k < items * (t + 1) / shares; k++) sh->pass.fn(&e, k);
}

bn_status bn_forward_eval(void *y, const void *x, const void *running_mean,
                          const void *running_var, const void *weight, const void *bias,
                          const bn_desc *desc, double eps) {
    return bn_eval(y, x, NULL, running_mean, running_var, weight, bias, desc, eps,
                   BN_EPILOGUE_NONE);
}

bn_status bn_forward_eval_relu(void *y, const void *x, const void *z, const void *running_mean,
                               const void *running_var, const void *weight, const void *bias,
                               const bn_desc *desc, double eps) {
    return bn_eval(y, x, z, running_mean, running_var, weight, bias, desc, eps,
                   z ? BN_EPILOGUE_ADD_RELU : BN_EPILOGUE_RELU);
}

bn_status bn_eval(void *y, const void *x, const void *z, const void *running_mean,
                  const void *running_var, const void *weight, const void *bias,
                  const bn_desc *desc, double eps, int epilogue) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF(bn_tensor_missing(x, desc) || bn_tensor_missing(y, desc) || !running_mean ||
                     !running_var || (epilogue == BN_EPILOGUE_ADD_RELU && bn_tensor_missing(z, desc)),
                 BN_ERR_NULL_POINTER);
    BN_RETURN_IF_ERROR(bn_check_eps(eps));
    bn_plan plan;
    BN_RETURN_IF_ERROR(bn_plan_make(&plan, desc, 0));
    if (plan.elements == 0) return BN_OK;
    if (epilogue) bn_plan_set_epilogue(&plan, epilogue);
    bn_plan_try_stores(&plan, 2);
    const int64_t C = plan.d.c;
    const int own = plan.threads > 1 && plan.elements >= BN_PARALLEL_MIN_ELEMENTS &&
                    C <= EVAL_OWN_COEF_CHANNELS;
    bn_scratch scratch;
    void *coef;
    /* one slot, or (own) one a thread, each a whole number of cache lines (C is small there) */
    const size_t slot = bn_bytes(BN_COEF_COUNT * C, plan.k->coef_size);
    const size_t padded = own ? (slot + 63) / 64 * 64 : slot;
    const size_t bytes = own ? bn_bytes(plan.threads, padded) : slot;
    if (!bn_scratch_take(&scratch, 1, &bytes, &coef)) return BN_ERR_NO_MEMORY;
    const eval_pass e = {.plan = &plan, .y = y, .x = x, .z = z, .coef = coef, .rm = running_mean,
                         .rv = running_var, .w = weight, .b = bias, .eps = eps};
    bn_phase pass;
    if (plan.d.layout == BN_CHANNELS_LAST)
        pass = (bn_phase){plan.pieces.parts * plan.pieces.chunks, eval_piece, 0};
    else if (plan.d.s < BN_SHORT) {
        const int64_t per = eval_group_samples(&plan);
        pass = (bn_phase){(C + BN_GROUP - 1) / BN_GROUP * ((plan.d.n + per - 1) / per), eval_group,
                          0};
    }
    else
        pass = (bn_phase){plan.d.n * ((C + BN_TILE_CHANNELS - 1) / BN_TILE_CHANNELS),
                          eval_sample_chunk, 0};
    const int64_t start = bn_plan_trial_start(&plan);
    if (own) {
        const eval_shares sh = {&e, pass, padded};
        bn_parallel_for(plan.threads, plan.elements, eval_share, &sh);
    } else if (plan.elements < BN_PARALLEL_MIN_ELEMENTS) { /* one thread: no phases to pay for */
        plan.kp->eval_coefs(coef, C, C, running_mean, running_var, weight, bias, eps);
        bn_parallel_for(pass.items, plan.elements, pass.fn, &e);
    } else {
        const bn_phase phases[2] = {
            {(C + EVAL_COEF_CHANNELS - 1) / EVAL_COEF_CHANNELS, eval_coef_range, 0}, pass};
        bn_parallel_phases(2, phases, plan.elements, &e);
    }
    bn_plan_trial_end(&plan, start);
    bn_scratch_release(&scratch);
    return BN_OK;
}
