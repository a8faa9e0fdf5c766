/* train.h - the training passes inside the library: one call's arguments as forward.c,
 * backward.c and ghost.c pass them between them, and the compositions they share. The public
 * entry points (bnorm.h) fill these in; every mode (conventions, stored statistics, renorm,
 * ghost batches) is a field here, one engine underneath. */
#ifndef BN_TRAIN_H
#define BN_TRAIN_H

#include "finish.h"
#include "plan.h"

/* A training forward call's arguments, as the entry points were given them. */
typedef struct {
    void *y;
    double *save_mean, *save_invstd; /* (C), or (ghosts, C) with ghost batches; NULL to skip */
    double *r, *d;                   /* renorm: (C) out, or NULL */
    void *running_mean, *running_var, *moving_stddev;
    int renorm;                      /* bn_forward_train_renorm */
    void *renorm_mean, *renorm_stddev;
    int64_t *num_batches_tracked;
    const void *x, *weight, *bias;
    int given;                       /* bn_forward_train_stats: the batch's moments are stats */
    const bn_moments *stats;
    int epilogue;                    /* bn_forward_train_relu: BN_EPILOGUE_RELU or _ADD_RELU */
    const void *z;                   /* add + ReLU: the input added before the ReLU */
} bn_train_args;

/* What bn_check_train decided. */
typedef struct {
    int64_t m;        /* values per channel of a batch (of one ghost batch) */
    int64_t m_total;  /* values per channel of the tensor (of the whole batch when given) */
    int64_t ghosts;   /* ghost batches (1: none) */
    int tracking;     /* the running statistics are updated */
    int64_t batches;  /* the counter after this call */
    double w_new, w_old;   /* the running weights of the batch and the old value */
    double rw_new, rw_old; /* the same for renorm_mean and renorm_stddev */
} bn_train_plan;

/* Every check of a training call, in order (nothing written). */
bn_status bn_check_train(const bn_train_args *a, const bn_desc *desc, const bn_options *opt,
                         bn_train_plan *t);

/* bn_forward_train and bn_forward_train_renorm: checks, then the pass. */
bn_status bn_train(const bn_train_args *a, const bn_desc *desc, const bn_options *opt);

/* The counter after a call that tracked. */
void bn_count_batch(const bn_train_args *a, const bn_train_plan *t);

/* The weights of the batch and of the old value in a running update with this momentum. */
void bn_running_weights(const bn_options *opt, int64_t batches, double momentum, double *w_new,
                        double *w_old);

/* The divisor of M2 in the running variance over m values: m (biased), m - 1, or 1 (m = 1). */
double bn_var_divisor(const bn_options *opt, int64_t m);

/* Renorm's finish state from the call's renorm arrays, their values loaded into doubles (4 * C:
 * renorm_mean, renorm_stddev, and r, d where the caller gave none). */
bn_renorm_finish bn_renorm_setup(const bn_train_args *a, const bn_desc *desc,
                                 const bn_options *opt, const bn_train_plan *t, double *doubles);

/* One pass over a planned tensor: with given moments or the first pass; the finish of each
 * channel (its coefficients, its saved and running statistics); the normalization into y; or
 * (mom_out set) the moments alone. */
typedef struct {
    void *y;
    const void *x, *weight, *bias;
    const double *w, *b;     /* (C) doubles in place of weight and bias, or NULL */
    const bn_moments *given; /* (C), or NULL: the first pass runs */
    bn_moments *mom_out;     /* (C), or NULL */
    double *save_mean, *save_invstd;
    void *running_mean, *running_var;       /* blended, or NULL */
    const void *stored_mean, *stored_var;   /* normalize with these, or NULL */
    const bn_renorm_finish *renorm;
    double count, eps, w_new, w_old, var_divisor;
    const void *z;             /* the epilogue's second input (the plan's epilogue), or NULL */
} bn_train_call;

bn_status bn_run_train(const bn_plan *plan, const bn_train_call *call);

/* Ghost batches (ghost.c): the forward pass of bn_train with t->ghosts > 1 and values. */
bn_status bn_train_ghosts(const bn_train_args *a, const bn_desc *desc, const bn_options *opt,
                          const bn_train_plan *t);

/* One backward pass over a tensor with values, the stages composed. */
typedef struct {
    int train; /* batch statistics (no mean terms otherwise: stored ones are constants) */
    void *dx, *dweight, *dbias;
    const void *dy, *x, *weight;
    const double *w;                        /* (C) doubles in place of weight, or NULL */
    const double *save_mean, *save_invstd;  /* the statistics the forward pass used */
    const void *running_mean, *running_var; /* or the stored ones, with eps */
    double eps;
    const double *given_sum_dy, *given_sum_dy_xhat; /* bn_backward_train_sums */
    double *sum_dy_out, *sum_dy_xhat_out;             /* bn_backward_sums */
    double *dweight_d, *dbias_d; /* (C) doubles out in place of dweight, dbias, or NULL */
    int64_t count;
    /* the backward of a ReLU after the batch norm: dy is first masked by relu_y > 0 into
     * relu_g (an output: dz, or dx), which is then the batch norm's dy; NULL: none */
    const void *relu_y;
    void *relu_g;
} bn_backward_call;

/* The eval forward pass with an epilogue (bn_forward_eval's arguments, z its second input). */
bn_status bn_eval(void *y, const void *x, const void *z, const void *running_mean,
                  const void *running_var, const void *weight, const void *bias,
                  const bn_desc *desc, double eps, int epilogue);

/* g = dy where y > 0, else 0 (a NaN y gives 0, as torch's threshold_backward), count values of
 * dtype; g may be dy. Spread over the library's threads. */
void bn_relu_mask(void *g, const void *dy, const void *y, int64_t count, bn_dtype dtype);

bn_status bn_run_backward(const bn_desc *desc, const bn_backward_call *call);

/* Ghost batches (ghost.c): dx, and the per-channel sums dweight_d (sum dy * xhat over every
 * ghost batch) and dbias_d, of a tensor with values, ghosts of the options' size. */
bn_status bn_backward_ghosts(void *dx, double *sum_dy_xhat, double *sum_dy, const void *dy,
                             const void *x, const double *save_mean, const double *save_invstd,
                             const double *w, const bn_desc *desc, int64_t ghosts);

#endif
