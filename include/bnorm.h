/*
 * bnorm.h - batch normalization in C, with PyTorch's semantics to the last detail.
 *
 * WHAT IT COMPUTES
 *
 *   A tensor x has N samples, C channels and S spatial positions per sample (S is the product of
 *   the sizes after C: 1 for (N, C), L for (N, C, L), H*W for (N, C, H, W), D*H*W for
 *   (N, C, D, H, W)). Every channel is normalized over its m = N*S values:
 *
 *     mean    = 1/m * sum_i x_i
 *     var     = 1/m * sum_i (x_i - mean)^2          biased: divide by m
 *     invstd  = 1 / sqrt(var + eps)                 eps inside the square root
 *     y_i     = (x_i - mean) * invstd * weight + bias
 *
 *   In training the batch statistics are used, and the running statistics are blended in:
 *
 *     running_mean = (1 - f) * running_mean + f * mean
 *     running_var  = (1 - f) * running_var  + f * var * m / (m - 1)     unbiased
 *
 *   with f = momentum, or f = 1 / num_batches_tracked after it is incremented when the cumulative
 *   average is asked for (PyTorch's momentum=None). In eval, running_mean and running_var take the
 *   place of the batch statistics. Backward, with xhat = (x - mean) * invstd:
 *
 *     dx      = (dy - mean(dy) - xhat * mean(dy * xhat)) * invstd * weight    (batch statistics)
 *     dx      = dy * invstd * weight                                            (stored statistics)
 *     dweight = sum(dy * xhat),  dbias = sum(dy)
 *
 * CONVENTIONS (bn_options.flags, and a preset per framework)
 *
 *   Other frameworks' batch norms are this engine with other options (docs/conventions.md has
 *   the table with each framework's source):
 *
 *     preset                  eps   momentum  running update (b: the batch's value)    var
 *     BN_OPTIONS_PYTORCH     1e-5   0.1       (1 - momentum) * old + momentum * b       unbiased
 *     BN_OPTIONS_ONNX        1e-5   0.9       momentum * old + (1 - momentum) * b       biased
 *     BN_OPTIONS_KERAS       1e-3   0.99      as ONNX (tf-keras, Keras 3)               biased
 *     BN_OPTIONS_TENSORFLOW  1e-3   1.0       as PyTorch (FusedBatchNormV3's factor)     unbiased
 *     BN_OPTIONS_CAFFE       1e-5   0.999     momentum * old + b (sums, see below)       unbiased
 *     BN_OPTIONS_MXNET       1e-3   0.9       as ONNX; BN_FIX_GAMMA (weight 1)          biased
 *     BN_OPTIONS_FLAX        1e-5   0.99      as ONNX                                   biased
 *
 *   "biased" is M2 / m, the variance the batch is normalized with; "unbiased" M2 / (m - 1).
 *   Only PyTorch refuses a batch of one value per channel (BN_ERR_COUNT); the others normalize
 *   it to bias, and an unbiased running variance then takes M2 / 1 = 0 (Caffe's and
 *   TensorFlow's rule). Caffe keeps sums: its running arrays hold sum momentum^k * b, and its
 *   scale factor s (the caller's: s = momentum * s + 1 at every training step, 0 at first)
 *   divides them: for inference, pass running_mean / s and running_var / s (Caffe rounds them
 *   to its dtype too) to bn_forward_eval.
 *
 *   Frozen batch norm's three choices are independent: normalize with the batch statistics or
 *   with the stored ones (BN_STORED_STATS: running_mean and running_var as given, before this
 *   call updates them); update the running statistics and the counter or not
 *   (BN_FREEZE_RUNNING); affine gradients or not (dweight, dbias NULL in bn_backward). dx is
 *   always there; bn_backward with the same options gives the matching backward.
 *
 *   Ghost batches (virtual_batch = V, tf-keras's virtual_batch_size): the batch is read as
 *   (V, N/V, ...), so ghost batch g holds samples g, g + N/V, g + 2N/V, ... and is normalized
 *   with its own statistics; the running statistics take the mean over the ghost batches of
 *   their means and of their variances; save_mean and save_invstd are (N/V, C), ghost g's at
 *   g*C. Batch renormalization: bn_forward_train_renorm and bn_backward_renorm.
 *
 * ACCURACY
 *
 *   Statistics are mean-centred, never E[x^2] - E[x]^2. float64 ones are accumulated in double,
 *   block by block, merged in a fixed order (Chan et al.). float32 ones are formed in float about
 *   a pivot near the mean (the mean of a sample of the channel), in trees of 8 values whose sums
 *   are added in double, and kept only where a bound formed from those sums shows the output
 *   stays within the promise below; otherwise the channel is summed again about the mean found,
 *   and failing that in double as float64 is. So a float32 saved mean is within 11 * 2^-24 of the
 *   channel's standard deviation and invstd within 11 * 2^-24 of itself (not to double
 *   precision). The normalization subtracts the mean before scaling, so float32 results are
 *   within 1e-6 * max(1, |y|) of a float64 computation at any offset and scale, and a constant
 *   channel normalizes to exactly 0 (before bias).
 *   bfloat16 and float16 tensors are widened to float (exactly), their statistics formed as
 *   float32's, and each output computed in float and rounded once to the tensor's type (to
 *   nearest, ties to even, subnormals kept, past the largest finite value to infinity): within
 *   one rounding of a float64 computation on the same values. Per-channel results of 16-bit
 *   parameters (running statistics, dweight, dbias) are rounded once from double.
 *   The saved mean and invstd are double for every dtype, so the backward pass sees the same
 *   statistics the forward pass used.
 *
 * SHAPES AND LAYOUTS
 *
 *   bn_desc names the sizes (n, c, s), the element type and the memory layout:
 *     BN_CHANNELS_FIRST   x[(i*C + c)*S + j]   (N, C, S): NCL, NCHW, NCDHW, contiguous
 *     BN_CHANNELS_LAST    x[(i*S + j)*C + c]   (N, S, C): NLC, NHWC, NDHWC (channels_last)
 *   For (N, C) both layouts are the same. bn_desc_from_dims() builds a bn_desc from the dims of an
 *   (N, C, ...) tensor and checks the size arithmetic for overflow. Per-channel arrays (weight,
 *   bias, running_mean, running_var, ...) have C elements of the parameters' type (bn_desc's
 *   params: the tensor's dtype, or float32 beside a 16-bit tensor); save_mean and
 *   save_invstd have C doubles. A zero size (n = 0, or a spatial size of 0) is a valid, empty
 *   batch. Tensor pointers may be NULL when the tensor is empty (torch gives empty tensors none).
 *
 * SPLIT BATCHES
 *
 *   A batch split between processes, or read from a file piece by piece, goes through the stages
 *   that make up each pass (see "STAGES OF A TRAINING STEP" below): per-channel moments of every
 *   piece (bn_moments: count, mean, M2), merged in a fixed order, then each piece normalized
 *   with the merged statistics. bnorm_mpi.h does this across the ranks of an MPI communicator.
 *
 * ERRORS
 *
 *   Every function returns a bn_status: BN_OK (0) or a negative error; bn_status_string() tells
 *   what it means. Every argument is checked, and scratch memory allocated, before anything is
 *   written: when a call fails, no output, saved statistic, running statistic or counter has
 *   been touched. The library never aborts or exits on caller input. docs/errors.md lists every
 *   failure with its status and the test that provokes it.
 *
 *   NaN and infinity in the input are not errors: as in PyTorch they make their channel's
 *   statistics and outputs NaN and leave the other channels alone. bn_check_finite() finds the
 *   first one (channel and offset) for callers that would rather refuse them.
 *
 *   Finite float64 values near the top of the range overflow no intermediate whose result is
 *   finite. A channel whose M2 = sum (x - mean)^2 passes DBL_MAX has, as in PyTorch, an
 *   infinite variance: save_invstd 0, running_var inf, y = bias, dx 0 (its mean stays finite).
 *
 * LIMITS
 *
 *   The largest tensor accepted has N*C*S elements whose byte count is at most PTRDIFF_MAX
 *   (2^63 - 1 bytes: 2^61 - 1 float32 or 2^60 - 1 float64 values); larger sizes, and sizes whose
 *   product overflows int64_t, give BN_ERR_TOO_LARGE before any pointer is looked at.
 *
 * MEMORY
 *
 *   A call may need a scratch buffer of per-channel values: at most about 2 KiB per channel
 *   (partial statistics of up to 64 parts of the rows, and per-channel coefficients), never
 *   anything proportional to N or S. Small ones (up to 2 KiB) live on the stack; larger ones
 *   are allocated and freed before the call returns, and BN_ERR_NO_MEMORY reports a failed
 *   allocation (before anything is written). Channels-first training and backward calls need
 *   none; eval needs 6*C values of the tensor's dtype; channels-last (and (N, C)) training
 *   24*P*C + 24*C + 6*C*sizeof(dtype) bytes and backward 16*P*C + 40*C + 6*C*sizeof(dtype),
 *   with P <= 64 parts of the rows.
 *
 * THREADS AND THREAD SAFETY
 *
 *   Large calls spread their work over OpenMP threads: bn_set_num_threads() sets how many (by
 *   default, OpenMP's default). Statistics and sums are cut into pieces fixed by the shape alone
 *   and merged in a fixed order, and how whole channels or rows are grouped per thread changes
 *   nothing computed, so every result is bit-for-bit the same for any number of threads, and
 *   with or without AVX-512 (make isa-check compares the two builds). On first use the library
 *   reads the L2 cache's size from Linux's /sys/devices/system/cpu/cpu0/cache: with the
 *   output's size it decides how much work a thread takes at a time and whether large outputs
 *   bypass the cache (the L3 is not used: a virtual machine may report its host's), never a bit
 *   of a result. The thread count is the library's only setting. A call needs up to 80 KiB of
 *   the calling thread's stack (the kernels of rows shorter than 64 values keep their sums
 *   there), and as much on each OpenMP thread. Calls on different buffers may run
 *   concurrently from any number of threads; calls that write the same buffer (for example the
 *   same running statistics) must be serialized by the caller.
 *
 * EXAMPLE (as it stands: cc example.c -lbnorm, or cc example.c libbnorm.a -fopenmp -lm)
 *
 *   #include <bnorm.h>
 *   #include <stdio.h>
 *
 *   int main(void) {
 *       enum { N = 4, C = 2, H = 3, W = 3, M = N * C * H * W };
 *       float x[M], y[M], dy[M], dx[M];
 *       float weight[C] = {1, 1}, bias[C] = {0, 0}, dweight[C], dbias[C];
 *       float running_mean[C] = {0, 0}, running_var[C] = {1, 1};
 *       int64_t num_batches_tracked = 0;
 *       double save_mean[C], save_invstd[C];
 *       for (int i = 0; i < M; i++) { x[i] = (float)(i % 7); dy[i] = (float)(i % 3) - 1; }
 *
 *       int64_t dims[4] = {N, C, H, W};
 *       bn_desc desc;
 *       bn_status st = bn_desc_from_dims(&desc, 4, dims, BN_FLOAT32, BN_CHANNELS_FIRST);
 *       bn_options opt = BN_OPTIONS_DEFAULT;            // eps 1e-5, momentum 0.1
 *
 *       // training step: normalize with batch statistics, update the running ones
 *       if (st == BN_OK)
 *           st = bn_forward_train(y, save_mean, save_invstd, running_mean, running_var,
 *                                 &num_batches_tracked, x, weight, bias, &desc, &opt);
 *       if (st == BN_OK)
 *           st = bn_backward_train(dx, dweight, dbias, dy, x, save_mean, save_invstd, weight,
 *                                  &desc);
 *       // inference: normalize with the running statistics
 *       if (st == BN_OK)
 *           st = bn_forward_eval(y, x, running_mean, running_var, weight, bias, &desc, opt.eps);
 *       if (st != BN_OK) { fprintf(stderr, "bnorm: %s\n", bn_status_string(st)); return 1; }
 *       printf("y[0] = %g, dweight[0] = %g\n", y[0], dweight[0]);
 *       return 0;
 *   }
 */
#ifndef BNORM_H
#define BNORM_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BN_VERSION_MAJOR 0
#define BN_VERSION_MINOR 3
#define BN_VERSION_PATCH 0
#define BN_VERSION_NUMBER (BN_VERSION_MAJOR * 10000 + BN_VERSION_MINOR * 100 + BN_VERSION_PATCH)

/* Marks the functions the shared libraries export; the library is built with
 * -fvisibility=hidden, so nothing else leaves it. */
#if defined(__GNUC__) || defined(__clang__)
#define BN_API __attribute__((visibility("default")))
#else
#define BN_API
#endif

/* Status codes. Values are pinned and only ever appended to. */
typedef enum bn_status {
    BN_OK = 0,
    BN_ERR_NULL_POINTER = -1, /* a required pointer is NULL */
    BN_ERR_SHAPE = -2,        /* a size is negative or zero where it must be positive, or ndim < 2 */
    BN_ERR_TOO_LARGE = -3,    /* the size arithmetic overflows 64 bits or the address space */
    BN_ERR_ARGUMENT = -4,     /* an option out of its range (eps < 0 or not finite, ...) */
    BN_ERR_COUNT = -5,        /* training needs more than one value per channel */
    BN_ERR_UNSUPPORTED = -6,  /* unknown dtype or layout */
    BN_ERR_IO = -7,           /* a file could not be read or written (file helpers, command) */
    BN_ERR_FORMAT = -8,       /* a file is malformed or of an unsupported kind */
    BN_ERR_NO_MEMORY = -9,    /* a scratch buffer could not be allocated */
    BN_ERR_NOT_FINITE = -10   /* bn_check_finite found a NaN or an infinity */
} bn_status;

/* Element types. bfloat16 (the top half of a float32) and float16 (IEEE binary16) are storage
 * types: their tensors are computed in float, their statistics formed exactly as float32's, and
 * every output is rounded once to its type, to nearest with ties to even, subnormals kept. */
typedef enum bn_dtype { BN_FLOAT32 = 0, BN_FLOAT64 = 1, BN_BFLOAT16 = 2, BN_FLOAT16 = 3 } bn_dtype;

typedef enum bn_layout { BN_CHANNELS_FIRST = 0, BN_CHANNELS_LAST = 1 } bn_layout;

/* The type of the per-channel arrays (weight, bias, running statistics, their gradients, the
 * renorm arrays): the tensor's, or float32 beside a bfloat16 or float16 tensor (PyTorch's mixed
 * precision, as autocast gives it: 16-bit activations, float32 parameters). float64 tensors
 * take float64 parameters only (BN_PARAMS_FLOAT32 with them is BN_ERR_UNSUPPORTED). */
typedef enum bn_params { BN_PARAMS_AS_TENSOR = 0, BN_PARAMS_FLOAT32 = 1 } bn_params;

/* A tensor's sizes, element type and memory layout, and its parameters' type. A descriptor
 * zeroed, or filled by bn_desc_from_dims, has parameters of the tensor's dtype. */
typedef struct bn_desc {
    int64_t n;        /* batch size, >= 0 */
    int64_t c;        /* channels, >= 1 */
    int64_t s;        /* spatial positions per sample and channel, >= 0 */
    bn_dtype dtype;
    bn_layout layout;
    bn_params params;
} bn_desc;

/* What bn_options.flags may hold: conventions of other frameworks and the independent choices
 * of frozen batch norm. 0 is PyTorch's training step. See "CONVENTIONS" above. */
enum {
    BN_MOMENTUM_OF_OLD = 1 << 0,   /* momentum weighs the old value: running = momentum * running
                                    * + (1 - momentum) * batch (ONNX, Keras, MXNet, Flax) */
    BN_BIASED_RUNNING_VAR = 1 << 1, /* running_var takes M2 / m, the variance the batch is
                                    * normalized with (ONNX, Keras, MXNet, Flax) */
    BN_RUNNING_SUMS = 1 << 2,      /* Caffe: running = momentum * running + batch, sums that the
                                    * caller's scale factor s = momentum * s + 1 divides */
    BN_FIX_GAMMA = 1 << 3,         /* the weight is taken as 1 and its gradient is 0 (MXNet) */
    BN_ONE_VALUE_OK = 1 << 4,      /* a batch of one value per channel is normalized (to bias), not
                                    * refused; an unbiased running variance takes M2 / 1 (Caffe, TF) */
    BN_STORED_STATS = 1 << 5,      /* normalize with running_mean and running_var as given (the
                                    * backward: they are constants) instead of the batch's */
    BN_FREEZE_RUNNING = 1 << 6     /* leave the running statistics and the counter as they are */
};

/* Options of the training passes; start from BN_OPTIONS_DEFAULT (PyTorch) or a framework's
 * preset below. Every field is checked: a value outside its range, or a flag not defined above,
 * is BN_ERR_ARGUMENT. */
typedef struct bn_options {
    double eps;      /* added to the variance inside the square root; finite, >= 0 */
    double momentum; /* in [0, 1]: the weight of the batch in the running update, or of the old
                      * value with BN_MOMENTUM_OF_OLD or BN_RUNNING_SUMS */
    int cumulative;  /* nonzero: cumulative average, weight 1/num_batches_tracked (momentum=None);
                      * not with BN_RUNNING_SUMS */
    int flags;       /* BN_MOMENTUM_OF_OLD | ...; 0: PyTorch */
    int64_t virtual_batch; /* > 0: ghost batches of this many samples (tf-keras's
                      * virtual_batch_size), which must divide n; 0: the batch is one */
    double renorm_momentum; /* bn_forward_train_renorm: as momentum, for renorm_mean and
                      * renorm_stddev; in [0, 1] */
    double rmin, rmax, dmax; /* bn_forward_train_renorm: r is clipped to [rmin, rmax] and d to
                      * [-dmax, dmax]; 0, HUGE_VAL and HUGE_VAL clip nothing (rmin >= 0,
                      * rmax >= rmin, dmax >= 0, none NaN) */
    int64_t reserved; /* must be 0 */
} bn_options;

/* PyTorch (torch.nn.BatchNorm*d): the weight of the batch, unbiased running variance. */
#define BN_OPTIONS_DEFAULT {1e-5, 0.1, 0, 0, 0, 0.1, 0, HUGE_VAL, HUGE_VAL, 0}
#define BN_OPTIONS_PYTORCH BN_OPTIONS_DEFAULT
/* ONNX BatchNormalization-15 (training_mode = 1). */
#define BN_OPTIONS_ONNX \
    {1e-5, 0.9, 0, BN_MOMENTUM_OF_OLD | BN_BIASED_RUNNING_VAR | BN_ONE_VALUE_OK, 0, 0.9, 0, \
     HUGE_VAL, HUGE_VAL, 0}
/* Keras BatchNormalization (Keras 3 and tf-keras's non-fused path; renorm: renorm_momentum). */
#define BN_OPTIONS_KERAS \
    {1e-3, 0.99, 0, BN_MOMENTUM_OF_OLD | BN_BIASED_RUNNING_VAR | BN_ONE_VALUE_OK, 0, 0.99, 0, \
     HUGE_VAL, HUGE_VAL, 0}
/* TensorFlow FusedBatchNormV3 (exponential_avg_factor f = momentum, 1 by default). */
#define BN_OPTIONS_TENSORFLOW {1e-3, 1.0, 0, BN_ONE_VALUE_OK, 0, 1.0, 0, HUGE_VAL, HUGE_VAL, 0}
/* Caffe BatchNorm (moving_average_fraction 0.999; no affine: pass weight and bias NULL). */
#define BN_OPTIONS_CAFFE \
    {1e-5, 0.999, 0, BN_RUNNING_SUMS | BN_ONE_VALUE_OK, 0, 0.999, 0, HUGE_VAL, HUGE_VAL, 0}
/* MXNet BatchNorm (fix_gamma=True, its default; clear BN_FIX_GAMMA for fix_gamma=False). */
#define BN_OPTIONS_MXNET \
    {1e-3, 0.9, 0, BN_MOMENTUM_OF_OLD | BN_BIASED_RUNNING_VAR | BN_FIX_GAMMA | BN_ONE_VALUE_OK, \
     0, 0.9, 0, HUGE_VAL, HUGE_VAL, 0}
/* Flax linen BatchNorm. */
#define BN_OPTIONS_FLAX \
    {1e-5, 0.99, 0, BN_MOMENTUM_OF_OLD | BN_BIASED_RUNNING_VAR | BN_ONE_VALUE_OK, 0, 0.99, 0, \
     HUGE_VAL, HUGE_VAL, 0}

/* Mergeable statistics of one channel over some of its values: how many, their mean, and
 * M2 = sum (x - mean)^2. Moments of disjoint pieces merge exactly (bn_merge_moments). */
typedef struct bn_moments {
    int64_t count; /* >= 0 */
    double mean;   /* 0 when count is 0 */
    double m2;     /* sum of squared deviations from mean; 0 when count is 0 */
} bn_moments;

/* Sets the number of threads later calls use; n <= 0 restores OpenMP's default. Thread-safe. */
BN_API void bn_set_num_threads(int n);

/* The number of threads calls use now (1 when the library was built without OpenMP). */
BN_API int bn_get_num_threads(void);

/* What a status means, as a static sentence. Unknown values give "unknown status". */
BN_API const char *bn_status_string(bn_status status);

/* The library's version, "MAJOR.MINOR.PATCH", as built. */
BN_API const char *bn_version_string(void);

/*
 * Fills *desc for a tensor with dims (N, C, ...) of ndim >= 2 sizes, in logical order whatever the
 * layout (as torch reports a channels_last tensor's shape): s is the product of dims[2..]
 * (0 when any of them is 0, however large the others).
 * @return BN_OK; BN_ERR_NULL_POINTER, BN_ERR_SHAPE (ndim < 2, a negative size or C = 0),
 *         BN_ERR_TOO_LARGE (the element count overflows int64_t or the byte count PTRDIFF_MAX),
 *         BN_ERR_UNSUPPORTED (dtype or layout). *desc is written only on success.
 */
BN_API bn_status bn_desc_from_dims(bn_desc *desc, int ndim, const int64_t *dims, bn_dtype dtype,
                                   bn_layout layout);

/*
 * Training forward pass: normalizes x with its batch statistics.
 *   y:            out (N, C, S) in desc's layout, overwritten; may be the same buffer as x
 *   save_mean:    out (C) double, overwritten: the batch mean; NULL to skip
 *   save_invstd:  out (C) double, overwritten: 1/sqrt(biased batch var + eps); NULL to skip
 *   running_mean: in/out (C), blended with the batch mean; NULL: not tracked
 *   running_var:  in/out (C), blended with the unbiased batch variance; NULL: not tracked
 *   num_batches_tracked: in/out, incremented by one when running_mean or running_var is given
 *                 (also for n = 0, as torch.nn modules do); NULL is allowed unless
 *                 opt->cumulative is set and running statistics are given
 *   x:            in (N, C, S)
 *   weight, bias: in (C); NULL means 1 and 0
 *   opt:          the convention and choices (see CONVENTIONS): with BN_STORED_STATS x is
 *                 normalized with running_mean and running_var (both required) and those are
 *                 what save_mean and save_invstd hold; BN_FREEZE_RUNNING leaves the running
 *                 statistics and the counter alone; with ghost batches save_mean and
 *                 save_invstd are (N/V, C)
 * With no values (n*s = 0) nothing is normalized, the running statistics are left as they are
 * and save_mean, save_invstd are NaN.
 * @return BN_OK; BN_ERR_COUNT when a batch (a ghost batch) has one value per channel and
 *         BN_ONE_VALUE_OK is not set; BN_ERR_SHAPE when opt->virtual_batch does not divide n;
 *         BN_ERR_ARGUMENT for a bad option, or ghost batches with BN_STORED_STATS;
 *         BN_ERR_NULL_POINTER for BN_STORED_STATS without both running statistics; the
 *         validation errors of the other arguments.
 */
BN_API bn_status bn_forward_train(void *y, double *save_mean, double *save_invstd,
                                  void *running_mean, void *running_var,
                                  int64_t *num_batches_tracked, const void *x, const void *weight,
                                  const void *bias, const bn_desc *desc, const bn_options *opt);

/*
 * Eval forward pass: normalizes x with stored statistics.
 *   y:            out (N, C, S), overwritten; may be the same buffer as x
 *   x:            in (N, C, S)
 *   running_mean, running_var: in (C), required
 *   weight, bias: in (C); NULL means 1 and 0
 *   eps:          finite, >= 0
 * @return BN_OK or a validation error.
 */
BN_API bn_status bn_forward_eval(void *y, const void *x, const void *running_mean,
                                 const void *running_var, const void *weight, const void *bias,
                                 const bn_desc *desc, double eps);

/*
 * Backward pass of bn_forward_train (batch statistics, so the mean terms apply).
 *   dx:           out (N, C, S), overwritten; NULL to skip
 *   dweight:      out (C), overwritten with sum(dy * xhat); NULL to skip
 *   dbias:        out (C), overwritten with sum(dy); NULL to skip
 *   dy, x:        in (N, C, S)
 *   save_mean, save_invstd: in (C) double, as bn_forward_train saved them
 *   weight:       in (C); NULL means 1
 * dx may be the same buffer as dy. With n = 0, dweight and dbias are zero.
 * @return BN_OK or a validation error.
 */
BN_API bn_status bn_backward_train(void *dx, void *dweight, void *dbias, const void *dy,
                                   const void *x, const double *save_mean,
                                   const double *save_invstd, const void *weight,
                                   const bn_desc *desc);

/*
 * Backward pass of bn_forward_eval (stored statistics, which are constants).
 *   dx:           out (N, C, S), overwritten with dy * invstd * weight; NULL to skip
 *   dweight:      out (C), overwritten with sum(dy * xhat); NULL to skip
 *   dbias:        out (C), overwritten with sum(dy); NULL to skip
 *   dy, x:        in (N, C, S)
 *   running_mean, running_var: in (C), required; eps as in the forward pass
 *   weight:       in (C); NULL means 1
 * @return BN_OK or a validation error.
 */
BN_API bn_status bn_backward_eval(void *dx, void *dweight, void *dbias, const void *dy,
                                  const void *x, const void *running_mean, const void *running_var,
                                  const void *weight, const bn_desc *desc, double eps);

/*
 * FUSED ACTIVATION: batch norm, then a ReLU (and a residual add before it), in one pass over
 * memory (conv-BN-ReLU, and the residual block's BN-add-ReLU):
 *   y = max(bn(x) + z, 0)       z NULL: y = max(bn(x), 0)
 * bn(x) is bn_forward_train's or bn_forward_eval's, with the same arguments and options (ghost
 * batches excepted: BN_ERR_ARGUMENT), each value computed as they compute it, z added and the
 * ReLU taken in the compute type before the one rounding to the dtype; a NaN stays NaN.
 *   z: in (N, C, S), desc's dtype and layout, or NULL; y may be the same buffer as x or z.
 * @return as bn_forward_train / bn_forward_eval.
 */
BN_API bn_status bn_forward_train_relu(void *y, double *save_mean, double *save_invstd,
                                       void *running_mean, void *running_var,
                                       int64_t *num_batches_tracked, const void *x, const void *z,
                                       const void *weight, const void *bias, const bn_desc *desc,
                                       const bn_options *opt);
BN_API bn_status bn_forward_eval_relu(void *y, const void *x, const void *z,
                                      const void *running_mean, const void *running_var,
                                      const void *weight, const void *bias, const bn_desc *desc,
                                      double eps);

/*
 * The backward passes of the fused ones, from their output y: the gradient through the ReLU,
 * g = dy where y > 0 (else 0: also for a NaN y, as torch's), is dz, the gradient of z (NULL to
 * skip), and the batch norm's dy (bn_backward_train's or bn_backward_eval's, whose arguments the
 * others are).
 *   dx, dz, dweight, dbias: out, each NULL to skip; g is formed in dz, else in dx, so one of
 *   them is required where dweight or dbias is asked for (BN_ERR_NULL_POINTER)
 *   y: in (N, C, S), the fused forward pass's output
 * dx and dz may be the same buffer as dy (not as each other).
 */
BN_API bn_status bn_backward_train_relu(void *dx, void *dz, void *dweight, void *dbias,
                                        const void *dy, const void *y, const void *x,
                                        const double *save_mean, const double *save_invstd,
                                        const void *weight, const bn_desc *desc);
BN_API bn_status bn_backward_eval_relu(void *dx, void *dz, void *dweight, void *dbias,
                                       const void *dy, const void *y, const void *x,
                                       const void *running_mean, const void *running_var,
                                       const void *weight, const bn_desc *desc, double eps);

/*
 * Training forward pass with batch renormalization (Ioffe 2017, as tf-keras does it): x is
 * normalized with its batch statistics, then corrected towards the renorm statistics,
 *   stddev = sqrt(var + eps),  s = max(renorm_stddev, sqrt(eps)),
 *   r = clip(stddev / s, opt->rmin, opt->rmax),  d = clip((mean - renorm_mean) / s, +-opt->dmax),
 *   y = ((x - mean) * invstd * r + d) * weight + bias,
 * with r and d from renorm_mean and renorm_stddev before this call. Then renorm_mean and
 * renorm_stddev follow mean and stddev with opt->renorm_momentum, running_mean follows mean and
 * moving_stddev follows stddev with opt->momentum (in the direction the flags say; Keras's is
 * BN_OPTIONS_KERAS's), and running_var = max(moving_stddev^2 - eps, 0). With ghost batches
 * (opt->virtual_batch), mean and var are the means over the ghost batches, each ghost batch being
 * normalized with its own statistics.
 *   r, d:          out (C) double, the corrections used (what bn_backward_renorm needs); NULL
 *                  to skip
 *   running_mean, running_var, moving_stddev: in/out (C) or NULL (moving_stddev is required
 *                  with running_var); renorm_mean, renorm_stddev: in/out (C), required
 *   the other arguments as bn_forward_train's. BN_FREEZE_RUNNING leaves all five arrays as they
 *   are; BN_STORED_STATS is BN_ERR_ARGUMENT.
 * @return as bn_forward_train.
 */
BN_API bn_status bn_forward_train_renorm(void *y, double *save_mean, double *save_invstd,
                                         double *r, double *d, void *running_mean,
                                         void *running_var, void *moving_stddev,
                                         void *renorm_mean, void *renorm_stddev,
                                         int64_t *num_batches_tracked, const void *x,
                                         const void *weight, const void *bias,
                                         const bn_desc *desc, const bn_options *opt);

/*
 * Backward pass of bn_forward_train with the same options: the batch statistics' backward
 * (bn_backward_train's), or with BN_STORED_STATS the stored statistics' (dx = dy * invstd *
 * weight: they are constants); ghost batches each their own batch (save_mean and save_invstd are
 * then (N/V, C), as the forward pass saved them); BN_FIX_GAMMA takes the weight as 1 and gives
 * dweight 0. Flags about the running statistics change nothing here.
 *   dx, dweight, dbias: out, or NULL to skip (NULL dweight and dbias: no affine gradients, the
 *                 choice frozen batch norm makes)
 *   save_mean, save_invstd: in, the statistics the forward pass used (it saved them)
 *   the other arguments as bn_backward_train's.
 * @return BN_OK; BN_ERR_SHAPE when opt->virtual_batch does not divide n; BN_ERR_ARGUMENT for a
 *         bad option, or ghost batches with BN_STORED_STATS; the errors of bn_backward_train.
 */
BN_API bn_status bn_backward(void *dx, void *dweight, void *dbias, const void *dy, const void *x,
                             const double *save_mean, const double *save_invstd,
                             const void *weight, const bn_desc *desc, const bn_options *opt);

/*
 * Backward pass of bn_forward_train_renorm, r and d (C) being the corrections it gave, taken as
 * constants: dx as bn_backward's with weight * r; dweight = r * sum(dy * xhat) + d * sum(dy),
 * dbias = sum(dy). @return as bn_backward; BN_ERR_NULL_POINTER when r or d is NULL.
 */
BN_API bn_status bn_backward_renorm(void *dx, void *dweight, void *dbias, const void *dy,
                                    const void *x, const double *save_mean,
                                    const double *save_invstd, const double *r, const double *d,
                                    const void *weight, const bn_desc *desc,
                                    const bn_options *opt);

/*
 * STAGES OF A TRAINING STEP, for a batch split over processes or read in pieces
 *
 * bn_forward_train and bn_backward_train are each the composition of two stages; when the batch
 * is split (between the ranks of an MPI communicator: see bnorm_mpi.h; or between chunks of a
 * file), the statistics of the pieces are combined between the stages:
 *
 *   forward:  bn_compute_moments (each piece) -> bn_merge_moments (in a fixed order)
 *             -> bn_forward_train_stats (each piece, with the merged moments)
 *   backward: bn_backward_sums (each piece) -> add the sums (in a fixed order)
 *             -> bn_backward_train_sums (each piece, with the added sums and the total count)
 *
 * On one piece the stages give exactly the bits of bn_forward_train and bn_backward_train: the
 * same kernels, the same blocks, the same order.
 */

/*
 * Per-channel partial statistics of x (the first stage of bn_forward_train, by the same code).
 *   moments: out (C), overwritten: count = n*s, the mean and M2 of each channel's values
 *   x:       in (N, C, S) in desc's layout
 * An empty tensor (n*s = 0) gives {0, 0, 0} for every channel.
 * @return BN_OK; BN_ERR_NULL_POINTER; the errors of a bad desc (as bn_forward_train);
 *         BN_ERR_NO_MEMORY. Nothing is written on failure.
 */
BN_API bn_status bn_compute_moments(bn_moments *moments, const void *x, const bn_desc *desc);

/*
 * acc[k] = acc[k] merged with part[k] for k < c (Chan, Golub and LeVeque): exact for unequal
 * counts; an empty part leaves acc[k]'s bits as they were, and an empty acc[k] becomes a copy of
 * part[k]. Merging the same parts in the same order gives the same bits on every machine.
 *   acc:  in/out (c)
 *   part: in (c); may not overlap acc
 * @return BN_OK; BN_ERR_NULL_POINTER (acc or part NULL with c > 0); BN_ERR_SHAPE (c < 0);
 *         BN_ERR_ARGUMENT (a negative count); BN_ERR_TOO_LARGE (a merged count overflows 64
 *         bits). Nothing is written on failure.
 */
BN_API bn_status bn_merge_moments(bn_moments *acc, const bn_moments *part, int64_t c);

/*
 * Training forward pass of a piece x of a batch, with the batch's statistics given: as
 * bn_forward_train on the whole batch, restricted to this piece. Every piece given the same
 * stats and the same running statistics updates them to the same bits.
 *   stats: in (C), the merged moments of the whole batch (bn_compute_moments of every piece,
 *          merged by bn_merge_moments); every channel has the same count m >= n*s
 *   the other arguments as bn_forward_train; the running variance takes M2 / (m - 1) (or as
 *          opt's convention says); ghost batches and BN_STORED_STATS are BN_ERR_ARGUMENT here
 * With m = 0 (an empty batch) nothing is normalized, the running statistics are left as they
 * are, num_batches_tracked is still incremented, and save_mean, save_invstd are NaN.
 * @return BN_OK; BN_ERR_COUNT when m == 1 (unless BN_ONE_VALUE_OK); BN_ERR_ARGUMENT when the
 *         counts of stats differ between channels or m < n*s; the validation errors of
 *         bn_forward_train. Nothing is written on failure.
 */
BN_API bn_status bn_forward_train_stats(void *y, double *save_mean, double *save_invstd,
                                        void *running_mean, void *running_var,
                                        int64_t *num_batches_tracked, const void *x,
                                        const void *weight, const void *bias,
                                        const bn_moments *stats, const bn_desc *desc,
                                        const bn_options *opt);

/*
 * The per-channel sums of a piece that the training backward pass needs from the whole batch
 * (the first stage of bn_backward_train, by the same code):
 *   sum_dy:      out (C) double, overwritten: sum dy        (the piece's share of dbias)
 *   sum_dy_xhat: out (C) double, overwritten: sum dy * xhat (the piece's share of dweight)
 *   dy, x:       in (N, C, S)
 *   save_mean, save_invstd: in (C) double, the batch statistics the forward pass saved
 * With n*s = 0 both sums are 0. Sums of the pieces added in a fixed order give the batch's.
 * @return BN_OK; the validation errors of bn_backward_train; BN_ERR_NO_MEMORY. Nothing is
 *         written on failure.
 */
BN_API bn_status bn_backward_sums(double *sum_dy, double *sum_dy_xhat, const void *dy,
                                  const void *x, const double *save_mean, const double *save_invstd,
                                  const bn_desc *desc);

/*
 * dx of a piece of a batch, from the batch's sums (bn_backward_sums of every piece, added):
 *   dx = (dy - sum_dy / m - xhat * sum_dy_xhat / m) * invstd * weight
 *   dx:          out (N, C, S), overwritten; may be the same buffer as dy
 *   dy, x:       in (N, C, S)
 *   save_mean, save_invstd: in (C) double, the batch statistics of the forward pass
 *   weight:      in (C); NULL means 1
 *   sum_dy, sum_dy_xhat: in (C) double, the sums over the whole batch
 *   count:       m, the number of values per channel in the whole batch, >= n*s
 * @return BN_OK; BN_ERR_ARGUMENT (count < n*s, or count < 1 while the piece has values); the
 *         validation errors of bn_backward_train; BN_ERR_NO_MEMORY. Nothing is written on
 *         failure.
 */
BN_API bn_status bn_backward_train_sums(void *dx, const void *dy, const void *x,
                                        const double *save_mean, const double *save_invstd,
                                        const void *weight, const double *sum_dy,
                                        const double *sum_dy_xhat, int64_t count,
                                        const bn_desc *desc);

/*
 * Converts count values of src_dtype at src to dst_dtype at dst, any of the four types to any.
 * Widening is exact (a float16 NaN comes out quiet, its payload kept, as F16C gives it).
 * Narrowing rounds once, to nearest with ties to even: subnormals are kept, values beyond the
 * largest finite one by half its last place or more become infinite, and a NaN becomes 0x7FC0
 * in bfloat16 and sign | 0x7E00 in float16 (PyTorch's scalar conversions' NaNs; float32 and
 * float64 as the C conversion gives). Double to bfloat16 or float16
 * rounds the double itself, not a float rounded from it (PyTorch rounds twice). The bytes are
 * native order; dst and src must not overlap, unless they are the same pointer and the two
 * types the same size (the conversion is then done in place).
 * @return BN_OK (count 0: nothing is read or written, pointers may be NULL); BN_ERR_SHAPE
 *         (count < 0); BN_ERR_NULL_POINTER; BN_ERR_UNSUPPORTED (a dtype); BN_ERR_TOO_LARGE
 *         (the bytes overflow PTRDIFF_MAX); BN_ERR_ARGUMENT (the buffers overlap otherwise).
 *         On failure nothing is written.
 */
BN_API bn_status bn_convert(void *dst, bn_dtype dst_dtype, const void *src, bn_dtype src_dtype,
                            int64_t count);

/*
 * Looks for NaN and infinite values in x, which the passes above take like any other value and
 * propagate as PyTorch does (a NaN in a channel makes its statistics and outputs NaN). Call it
 * first to refuse such input instead.
 *   channel:  out, the channel of the first value (in memory order) that is not finite; NULL to
 *             skip; written only when BN_ERR_NOT_FINITE is returned
 *   index:    out, that value's offset in elements from x, in desc's layout; NULL to skip;
 *             written only when BN_ERR_NOT_FINITE is returned
 *   x:        in (N, C, S)
 * To check a per-channel array (weight, bias, running statistics), describe it as (1, C, 1).
 * @return BN_OK when every value is finite; BN_ERR_NOT_FINITE; or a validation error.
 */
BN_API bn_status bn_check_finite(int64_t *channel, int64_t *index, const void *x,
                                 const bn_desc *desc);

/*
 * Folding an eval-mode batch norm into the layer before it, for inference. A convolution or a
 * linear layer z = W x + b followed by batch norm with stored statistics,
 *   y[o] = (z[o] - running_mean[o]) * scale[o] + bn_bias[o],
 *   scale[o] = bn_weight[o] / sqrt(running_var[o] + eps),
 * is the same layer with
 *   W'[o, ...] = W[o, ...] * scale[o],   b'[o] = (b[o] - running_mean[o]) * scale[o] + bn_bias[o],
 * o being the layer's output channel (the batch norm's channel). Each value is formed in double
 * and rounded once to dtype. Outputs are overwritten and may be the inputs themselves.
 *   weight_out: out, W', weight's shape
 *   bias_out:   out (C_out), b'
 *   weight:     in (C_out, inner), row-major: a convolution's (C_out, C_in / groups, k...)
 *               weight (inner = C_in / groups * k...) or a linear layer's (C_out, C_in)
 *   bias:       in (C_out), or NULL for a layer without bias (taken as 0)
 *   running_mean, running_var: in (C_out)
 *   bn_weight, bn_bias: in (C_out), or NULL for a batch norm without them (1 and 0)
 * All arrays are of dtype (BN_FLOAT32 or BN_FLOAT64).
 * @return BN_OK; BN_ERR_NULL_POINTER (weight_out, bias_out, weight, running_mean or
 *         running_var missing); BN_ERR_SHAPE (c_out or inner < 1); BN_ERR_TOO_LARGE (c_out *
 *         inner overflows); BN_ERR_ARGUMENT (eps negative or not finite); BN_ERR_UNSUPPORTED
 *         (dtype). On failure nothing is written.
 */
BN_API bn_status bn_fold_conv(void *weight_out, void *bias_out, const void *weight,
                              const void *bias, const void *running_mean,
                              const void *running_var, const void *bn_weight,
                              const void *bn_bias, int64_t c_out, int64_t inner, double eps,
                              bn_dtype dtype);

/*
 * bn_fold_conv for a transposed convolution, whose weight is (C_in, C_out / groups, kernel):
 * the value at (i, j, k) feeds output channel (i / (C_in / groups)) * (C_out / groups) + j.
 * Arguments as bn_fold_conv's, with c_in, c_out, groups and kernel (the product of the kernel's
 * sizes) for the weight's shape. @return as bn_fold_conv, and BN_ERR_SHAPE when groups < 1,
 * kernel < 1 or groups does not divide c_in and c_out.
 */
BN_API bn_status bn_fold_conv_transpose(void *weight_out, void *bias_out, const void *weight,
                                        const void *bias, const void *running_mean,
                                        const void *running_var, const void *bn_weight,
                                        const void *bn_bias, int64_t c_in, int64_t c_out,
                                        int64_t groups, int64_t kernel, double eps,
                                        bn_dtype dtype);

#ifdef __cplusplus
}
#endif

#endif /* BNORM_H */
