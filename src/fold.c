/* fold.c - bn_fold_conv, bn_fold_conv_transpose: an eval-mode batch norm folded into the
 * convolution or linear layer before it, for inference (the formula is in bnorm.h). */
#include "validate.h"

#include <math.h>
#include <stddef.h>

/* Templates per element type T. Shapes: rm, rv, bw, bb, b, b_out: (C_out); bw, bb, b may be
 * NULL (1, 0, 0). Every value is formed in double and rounded once. */
#define BN_FOLD(T)                                                                             \
    /* scale[o] = bn_weight[o] / sqrt(running_var[o] + eps) */                                 \
    static double scale_##T(const T *rv, const T *bw, int64_t o, double eps) {                 \
        return (bw ? (double)bw[o] : 1.0) / sqrt((double)rv[o] + eps);                         \
    }                                                                                          \
    /* b_out[o] = (b[o] - running_mean[o]) * scale[o] + bn_bias[o] */                          \
    static void fold_bias_##T(T *b_out, const T *b, const T *rm, const T *rv, const T *bw,     \
                              const T *bb, int64_t c_out, double eps) {                        \
        for (int64_t o = 0; o < c_out; o++) {                                                  \
            double centred = (b ? (double)b[o] : 0.0) - (double)rm[o];                         \
            b_out[o] = (T)(centred * scale_##T(rv, bw, o, eps) + (bb ? (double)bb[o] : 0.0));  \
        }                                                                                      \
    }                                                                                          \
    /* w, w_out: (C_out, inner); row o scaled by scale[o] */                                   \
    static void fold_rows_##T(T *w_out, const T *w, const T *rv, const T *bw, int64_t c_out,   \
                              int64_t inner, double eps) {                                     \
        for (int64_t o = 0; o < c_out; o++) {                                                  \
            const double s = scale_##T(rv, bw, o, eps);                                        \
            for (int64_t k = o * inner; k < (o + 1) * inner; k++) w_out[k] = (T)(w[k] * s);   \
        }                                                                                      \
    }                                                                                          \
    /* w, w_out: (C_in, C_out / groups, kernel); (i, j, .) scaled by scale[g * C_out/groups + j], \
     * g = i / (C_in / groups) */                                                              \
    static void fold_transposed_##T(T *w_out, const T *w, const T *rv, const T *bw,           \
                                    int64_t c_in, int64_t c_out, int64_t groups,               \
                                    int64_t kernel, double eps) {                              \
        const int64_t in_per_group = c_in / groups, out_per_group = c_out / groups;            \
        for (int64_t i = 0; i < c_in; i++)                                                     \
            for (int64_t j = 0; j < out_per_group; j++) {                                      \
                const double s = scale_##T(rv, bw, i / in_per_group * out_per_group + j, eps); \
                const int64_t row = (i * out_per_group + j) * kernel;                          \
                for (int64_t k = row; k < row + kernel; k++) w_out[k] = (T)(w[k] * s);         \
            }                                                                                  \
    }
BN_FOLD(float)
BN_FOLD(double)

/* What both entry points check before anything is written: pointers, eps, dtype, and that
 * count weight values are addressable. */
static bn_status check_fold(const void *weight_out, const void *bias_out, const void *weight,
                            const void *running_mean, const void *running_var, int64_t rows,
                            int64_t per_row, double eps, bn_dtype dtype) {
    BN_RETURN_IF(!weight_out || !bias_out || !weight || !running_mean || !running_var,
                 BN_ERR_NULL_POINTER);
    BN_RETURN_IF(rows < 1 || per_row < 1, BN_ERR_SHAPE);
    int64_t count, bytes;
    BN_RETURN_IF(__builtin_mul_overflow(rows, per_row, &count) ||
                     __builtin_mul_overflow(count, (int64_t)sizeof(double), &bytes),
                 BN_ERR_TOO_LARGE);
    BN_RETURN_IF_ERROR(bn_check_eps(eps));
    BN_RETURN_IF(dtype != BN_FLOAT32 && dtype != BN_FLOAT64, BN_ERR_UNSUPPORTED); /* no 16-bit */
    return BN_OK;
}

bn_status bn_fold_conv(void *weight_out, void *bias_out, const void *weight, const void *bias,
                       const void *running_mean, const void *running_var, const void *bn_weight,
                       const void *bn_bias, int64_t c_out, int64_t inner, double eps,
                       bn_dtype dtype) {
    BN_RETURN_IF_ERROR(check_fold(weight_out, bias_out, weight, running_mean, running_var, c_out,
                                  inner, eps, dtype));
    switch (dtype) {
    case BN_FLOAT32:
        fold_rows_float(weight_out, weight, running_var, bn_weight, c_out, inner, eps);
        fold_bias_float(bias_out, bias, running_mean, running_var, bn_weight, bn_bias, c_out, eps);
        return BN_OK;
    case BN_FLOAT64:
        fold_rows_double(weight_out, weight, running_var, bn_weight, c_out, inner, eps);
        fold_bias_double(bias_out, bias, running_mean, running_var, bn_weight, bn_bias, c_out,
                         eps);
        return BN_OK;
    default: return BN_ERR_UNSUPPORTED; /* check_fold has refused it already */
    }
}

bn_status bn_fold_conv_transpose(void *weight_out, void *bias_out, const void *weight,
                                 const void *bias, const void *running_mean,
                                 const void *running_var, const void *bn_weight,
                                 const void *bn_bias, int64_t c_in, int64_t c_out,
                                 int64_t groups, int64_t kernel, double eps, bn_dtype dtype) {
    BN_RETURN_IF(groups < 1 || c_in < 1 || c_out < 1 || kernel < 1, BN_ERR_SHAPE);
    BN_RETURN_IF(c_in % groups != 0 || c_out % groups != 0, BN_ERR_SHAPE);
    int64_t per_input;
    BN_RETURN_IF(__builtin_mul_overflow(c_out / groups, kernel, &per_input), BN_ERR_TOO_LARGE);
    BN_RETURN_IF_ERROR(check_fold(weight_out, bias_out, weight, running_mean, running_var, c_in,
                                  per_input, eps, dtype));
    switch (dtype) {
    case BN_FLOAT32:
        fold_transposed_float(weight_out, weight, running_var, bn_weight, c_in, c_out, groups,
                              kernel, eps);
        fold_bias_float(bias_out, bias, running_mean, running_var, bn_weight, bn_bias, c_out, eps);
        return BN_OK;
    case BN_FLOAT64:
        fold_transposed_double(weight_out, weight, running_var, bn_weight, c_in, c_out, groups,
                               kernel, eps);
        fold_bias_double(bias_out, bias, running_mean, running_var, bn_weight, bn_bias, c_out,
                         eps);
        return BN_OK;
    default: return BN_ERR_UNSUPPORTED; /* check_fold has refused it already */
    }
}
