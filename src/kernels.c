/* kernels.c - instantiates the per-dtype kernels and the channel walks. */
#include "kernels.h"

bn_walk bn_walk_of(const bn_desc *desc) {
    bn_walk w = {desc->n, desc->s, desc->c * desc->s, 1};
    if (desc->layout == BN_CHANNELS_LAST) w.stride_s = desc->c;
    return w;
}

int64_t bn_channel_offset(const bn_desc *desc, int64_t c) {
    return desc->layout == BN_CHANNELS_LAST ? c : c * desc->s;
}

#define T float
#define SUF f32
#include "kernels.inc"
#undef T
#undef SUF

#define T double
#define SUF f64
#include "kernels.inc"
#undef T
#undef SUF

bn_moments bn_channel_moments(const bn_desc *desc, const void *x, int64_t c) {
    bn_walk w = bn_walk_of(desc);
    int64_t at = bn_channel_offset(desc, c);
    if (desc->dtype == BN_FLOAT32) return bn_moments_f32((const float *)x + at, &w);
    return bn_moments_f64((const double *)x + at, &w);
}

void bn_channel_normalize(const bn_desc *desc, void *y, const void *x, int64_t c, double mean,
                          double scale, double shift) {
    bn_walk w = bn_walk_of(desc);
    int64_t at = bn_channel_offset(desc, c);
    if (desc->dtype == BN_FLOAT32)
        bn_normalize_f32((float *)y + at, (const float *)x + at, &w, mean, scale, shift);
    else
        bn_normalize_f64((double *)y + at, (const double *)x + at, &w, mean, scale, shift);
}

void bn_channel_grad_sums(const bn_desc *desc, double *sum_dy, double *sum_dy_xc, const void *dy,
                          const void *x, int64_t c, double mean) {
    bn_walk w = bn_walk_of(desc);
    int64_t at = bn_channel_offset(desc, c);
    if (desc->dtype == BN_FLOAT32)
        bn_grad_sums_f32(sum_dy, sum_dy_xc, (const float *)dy + at, (const float *)x + at, &w,
                         mean);
    else
        bn_grad_sums_f64(sum_dy, sum_dy_xc, (const double *)dy + at, (const double *)x + at, &w,
                         mean);
}

void bn_channel_grad_input(const bn_desc *desc, void *dx, const void *dy, const void *x,
                           int64_t c, double mean, double mean_dy, double k, double scale) {
    bn_walk w = bn_walk_of(desc);
    int64_t at = bn_channel_offset(desc, c);
    if (desc->dtype == BN_FLOAT32)
        bn_grad_input_f32((float *)dx + at, (const float *)dy + at, (const float *)x + at, &w,
                          mean, mean_dy, k, scale);
    else
        bn_grad_input_f64((double *)dx + at, (const double *)dy + at, (const double *)x + at, &w,
                          mean, mean_dy, k, scale);
}
