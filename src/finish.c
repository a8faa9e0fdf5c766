/* finish.c - the finish stage (finish.h). Its loops over channels run as AVX-512, AVX2 or the
 * baseline, as the kernels do (BN_CLONES): a square root and a division per channel, which
 * (256, 1024) eval on 2 threads felt (27.6 -> 33.3 us with SSE2 alone). */
#include "finish.h"

#include "kernel_types.h"

#include <math.h>

/* The arithmetic of bn_finish_train on arrays offset to channel c0: n channels. The moments'
 * m2 are copied out first: loops over the (count, mean, m2) structs do not vectorize, and the
 * square root and division per channel are what this stage costs. */
static BN_CLONES void train_coefs(const bn_moments *mom, int64_t n, double count, double eps,
                                  const double *w, const double *b, double *invstd,
                                  double *scale, double *shift) {
    for (int64_t c = 0; c < n; c++) invstd[c] = mom[c].m2;
    /* 1 / sqrt(v), and 0 where v is 0, without a branch: a division under a condition does not
     * vectorize (GCC may not make it unconditional), and one channel at a time this loop was a
     * tenth of (256, 1024) training */
    for (int64_t c = 0; c < n; c++) {
        const double v = invstd[c] / count + eps, nonzero = v != 0;
        invstd[c] = nonzero * (1.0 / sqrt(v + (1 - nonzero)));
    }
    if (w)
        for (int64_t c = 0; c < n; c++) scale[c] = invstd[c] * w[c];
    else
        for (int64_t c = 0; c < n; c++) scale[c] = invstd[c];
    if (b)
        for (int64_t c = 0; c < n; c++) shift[c] = b[c];
    else
        for (int64_t c = 0; c < n; c++) shift[c] = 0.0;
}

static double clip(double v, double lo, double hi) { return v < lo ? lo : v > hi ? hi : v; }

void bn_renorm_correction(const bn_renorm_finish *rn, int64_t c, double mean, double var,
                          double eps, double *r, double *d) {
    const double stddev = sqrt(var + eps), s = fmax(rn->stddev[c], sqrt(eps));
    *r = clip(stddev / s, rn->rmin, rn->rmax);
    *d = clip((mean - rn->mean[c]) / s, -rn->dmax, rn->dmax);
}

/* Renorm, channels [c0, c1): the corrections folded into scale and shift, then renorm_mean,
 * renorm_stddev and moving_stddev blended (tmp holds the batch's stddev). */
static void renorm_finish(const bn_train_finish *f, const bn_moments *mom, int64_t c0,
                          int64_t c1) {
    const bn_renorm_finish *rn = f->renorm;
    const int64_t n = c1 - c0, at = c0 * (int64_t)f->k->elem_size;
    for (int64_t c = c0; c < c1; c++) {
        const double var = mom[c].m2 / f->count, w = f->w ? f->w[c] : 1.0;
        bn_renorm_correction(rn, c, mom[c].mean, var, f->eps, &rn->r[c], &rn->d[c]);
        f->scale[c] *= rn->r[c];
        f->shift[c] += rn->d[c] * w;
    }
    if (rn->mean_out) {
        for (int64_t c = c0; c < c1; c++) f->tmp[c] = mom[c].mean;
        f->k->blend((char *)rn->mean_out + at, f->tmp + c0, rn->w_new, rn->w_old, n);
    }
    for (int64_t c = c0; c < c1; c++) f->tmp[c] = sqrt(mom[c].m2 / f->count + f->eps);
    if (rn->stddev_out) f->k->blend((char *)rn->stddev_out + at, f->tmp + c0, rn->w_new, rn->w_old, n);
    if (rn->moving_stddev) {
        f->k->blend((char *)rn->moving_stddev + at, f->tmp + c0, f->w_new, f->w_old, n);
        if (f->running_var) {
            f->k->load(f->tmp + c0, (char *)rn->moving_stddev + at, n, 0);
            for (int64_t c = c0; c < c1; c++) f->tmp[c] = fmax(f->tmp[c] * f->tmp[c] - f->eps, 0);
            f->k->store((char *)f->running_var + at, f->tmp + c0, n);
        }
    }
}

void bn_finish_train(const bn_train_finish *f, const bn_moments *mom, int64_t c0, int64_t c1) {
    const int64_t n = c1 - c0;
    const size_t es = f->k->elem_size;
    if (f->stored_mean) {
        for (int64_t c = c0; c < c1; c++) {
            f->mean[c] = f->stored_mean[c];
            f->invstd[c] = f->stored_invstd[c];
            f->scale[c] = f->invstd[c] * (f->w ? f->w[c] : 1.0);
            f->shift[c] = f->b ? f->b[c] : 0.0;
        }
    } else {
        train_coefs(mom + c0, n, f->count, f->eps, f->w ? f->w + c0 : NULL, f->b ? f->b + c0 : NULL,
                    f->invstd + c0, f->scale + c0, f->shift + c0);
        for (int64_t c = c0; c < c1; c++) f->mean[c] = mom[c].mean;
    }
    if (f->save_mean)
        for (int64_t c = c0; c < c1; c++) f->save_mean[c] = f->mean[c];
    if (f->save_invstd)
        for (int64_t c = c0; c < c1; c++) f->save_invstd[c] = f->invstd[c];
    if (f->running_mean) {
        for (int64_t c = c0; c < c1; c++) f->tmp[c] = mom[c].mean;
        f->k->blend((char *)f->running_mean + c0 * (int64_t)es, f->tmp + c0, f->w_new, f->w_old, n);
    }
    if (f->renorm) {
        renorm_finish(f, mom, c0, c1);
    } else if (f->running_var) {
        for (int64_t c = c0; c < c1; c++) f->tmp[c] = mom[c].m2 / f->var_divisor;
        f->k->blend((char *)f->running_var + c0 * (int64_t)es, f->tmp + c0, f->w_new, f->w_old, n);
    }
}

/* v * 2^e; ldexp is a call into libm, and e is 0 but where sums overflowed (a tenth of
 * (256, 1024)'s backward went to ldexp(v, 0)) */
static inline double scaled(double v, int e) { return e ? ldexp(v, e) : v; }

bn_grad_finish bn_finish_grad(double sum_dy, int e_dy, double sum_dy_xhat, int e_xhat,
                              double invstd, double w, double count, int train) {
    bn_grad_finish g = {.dbias = scaled(sum_dy, e_dy), .dweight = scaled(sum_dy_xhat, e_xhat),
                        .scale = invstd * w};
    g.mean_dy = train ? scaled(sum_dy / count, e_dy) : 0.0;
    g.k = train ? scaled(sum_dy_xhat / count, e_xhat) * invstd : 0.0;
    return g;
}
