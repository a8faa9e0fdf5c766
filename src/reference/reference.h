/* reference.h - batch normalization written as its formulas: one plain loop nest per pass, in
 * long double, for the tests to compare the library with (the oracle). Not part of libbnorm:
 * the tests link it from libbnorm_ref.a, and it needs nothing of the library but the types of
 * include/bnorm.h.
 *
 * Dimension letters as in bnorm.h: N samples, C channels, S spatial positions; a channel has
 * m = N*S values. Every tensor here is doubles, (N, C, S) in the layout of its bn_desc (whose
 * dtype is ignored: callers convert float32 data to double first); per-channel arrays have C
 * doubles. Every output is overwritten, never accumulated.
 *
 * Semantics are bnorm.h's (PyTorch's):
 *   mean = 1/m sum x,  var = 1/m sum (x - mean)^2 (biased),  invstd = 1 / sqrt(var + eps)
 *   y = (x - mean) * invstd * weight + bias
 *   running = (1 - f) * running + f * batch   (f = momentum, or 1/num_batches_tracked after
 *             its increment for the cumulative average; running_var takes var * m / (m - 1))
 *   backward: xhat = (x - mean) * invstd
 *     dx = (dy - mean(dy) - xhat * mean(dy * xhat)) * invstd * weight   (batch statistics)
 *     dx = dy * invstd * weight                                          (stored statistics)
 *     dweight = sum dy * xhat,  dbias = sum dy
 *
 * Long double is the 80-bit format on x86-64 with gcc and clang; valgrind runs it as double,
 * which still leaves the reference far more accurate than the float32 promise it checks.
 */
#ifndef BN_REFERENCE_H
#define BN_REFERENCE_H

#include "bnorm.h"

#include <stdint.h>

/* Offset in elements of value (i, c, j): sample i, channel c, spatial position j. */
int64_t bn_ref_index(const bn_desc *d, int64_t i, int64_t c, int64_t j);

/* Per-channel moments, two passes (the mean, then the squared deviations from it).
 *   moments: out (C): count m, mean, M2 = sum (x - mean)^2; {0, 0, 0} when m = 0
 *   x:       in (N, C, S) */
void bn_ref_moments(bn_moments *moments, const double *x, const bn_desc *d);

/* Training forward pass (bn_forward_train).
 *   y:            out (N, C, S)
 *   save_mean, save_invstd: out (C): the batch mean and invstd; NULL to skip; NaN when m = 0
 *   running_mean, running_var: in/out (C), blended with the batch statistics; NULL: not tracked
 *   num_batches_tracked: in/out, incremented when running_mean or running_var is given; needed
 *                 then with opt->cumulative
 *   x:            in (N, C, S)
 *   weight, bias: in (C); NULL means 1 and 0
 * With m = 0 nothing is normalized and the running statistics are left as they are (the
 * counter still counts the call). m = 1 is the library's BN_ERR_COUNT: not to be called so. */
void bn_ref_forward_train(double *y, double *save_mean, double *save_invstd,
                          double *running_mean, double *running_var,
                          int64_t *num_batches_tracked, const double *x, const double *weight,
                          const double *bias, const bn_desc *d, const bn_options *opt);

/* Eval forward pass (bn_forward_eval): y out (N, C, S); x in (N, C, S); running_mean,
 * running_var in (C), the statistics to normalize with; weight, bias in (C) or NULL. */
void bn_ref_forward_eval(double *y, const double *x, const double *running_mean,
                         const double *running_var, const double *weight, const double *bias,
                         const bn_desc *d, double eps);

/* Training backward pass (bn_backward_train), with the statistics the forward pass saved.
 *   dx:      out (N, C, S); NULL to skip
 *   dweight, dbias: out (C); NULL to skip; 0 when m = 0
 *   dy, x:   in (N, C, S)
 *   save_mean, save_invstd: in (C)
 *   weight:  in (C); NULL means 1 */
void bn_ref_backward_train(double *dx, double *dweight, double *dbias, const double *dy,
                           const double *x, const double *save_mean, const double *save_invstd,
                           const double *weight, const bn_desc *d);

/* Eval backward pass (bn_backward_eval): the stored statistics are constants, so dx has no
 * mean terms. Arguments as bn_ref_backward_train, with running_mean, running_var in (C) and
 * eps in place of the saved statistics. */
void bn_ref_backward_eval(double *dx, double *dweight, double *dbias, const double *dy,
                          const double *x, const double *running_mean,
                          const double *running_var, const double *weight, const bn_desc *d,
                          double eps);

/* Epilogues, applied to a forward pass's y in place (count = N*C*S values; element-wise, so
 * any layout), and the backward pass that goes with them:
 *   relu:     y = max(y, 0)
 *   add_relu: y = max(y + z, 0), z (N, C, S) a second input in y's layout
 * A NaN stays NaN, as torch.relu keeps it. */
void bn_ref_relu(double *y, int64_t count);
void bn_ref_add_relu(double *y, const double *z, int64_t count);

/* Backward of either epilogue, from its output y: the gradient that reaches the batch norm,
 * dy_bn = dy * (y > 0) (the mask), and for add_relu dz, the same values (NULL to skip).
 * dy_bn may be the same buffer as dy. Then bn_ref_backward_* take dy_bn as their dy. */
void bn_ref_relu_backward(double *dy_bn, double *dz, const double *dy, const double *y,
                          int64_t count);

#endif
