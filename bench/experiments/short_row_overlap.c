/* short_row_overlap.c - an experiment behind docs/performance.md's "what the overlap could give":
 * the training pass of a float32 NCHW 32x512x7x7 tensor as src/kernels.inc's short-row kernels
 * lay it out (groups of 16 channels, each sample's rows of a group 784 contiguous values, the
 * statistics walking a column of 16 positions down the 32 samples, the normalization of the
 * group before riding along with streaming stores), cut to what decides its speed. Each thread
 * takes half the channels. Not part of the library; its sums are not checked, only timed.
 *
 *   cc -O2 -std=c11 -mavx512f -mavx512dq -fopenmp bench/experiments/short_row_overlap.c \
 *      -o /tmp/sro
 *   /tmp/sro THREADS [SPACING [SETUP]]
 *     SPACING  floats between the ride's coefficient arrays (784)
 *     SETUP    per-group work besides the passes: 1, the ride's per-position coefficients made
 *              one value at a time; 2, each channel's pivot sampled from 8 runs of 8 values;
 *              3, both; 0, neither (the default)
 *
 * It prints the median time of each form, the forms interleaved call by call, each timed call
 * right after an untimed one of its form:
 *   ride alone             the normalization only, as eval (the floor's traffic)
 *   light, after           statistics of one add and one FMA a value, then the group's ride
 *   light, mixed           the same with 8 vectors of the ride after every 8 rows read
 *   kernel, after          the kernel's statistics (trees of 8 rows in float, widened into
 *                          double lanes) and its ride (4 operations on per-position
 *                          coefficients), the ride after the statistics, as the kernel has it
 *   kernel, mixed          the same with 8 vectors of the ride after every tree
 * Intel Xeon (family 6 model 167), three runs, 2 threads / 1 thread: ride alone 73.9-77.1 /
 * 214.8-216.3 us; kernel, after 104.5-110.7 / 236.2-238.4 us (the library's 32x512x7x7 training
 * takes 110-118 / 243-257 us); kernel, mixed 94.1-101.2 / 227.8-230.2 us, 0.90-0.91x / 0.96-0.97x
 * of "after". Spacings 1024 (the kernel's) and 1040 gave the same as 784 on 2 threads. SETUP 1
 * added about 16 us to both kernel forms on 2 threads, SETUP 2 about 11 us. */
#define _POSIX_C_SOURCE 199309L
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include "timing.h"

enum { N = 32, C = 512, S = 49, G = 16, W = G * S, V = W / 16 }; /* V: vectors in a group row */
enum { RIDE_ALONE, LIGHT_AFTER, LIGHT_MIXED, KERNEL_AFTER, KERNEL_MIXED, FORMS };
static const char *const names[FORMS] = {"ride alone", "light, after", "light, mixed",
                                         "kernel, after", "kernel, mixed"};
static const long STRIDE = (long)C * S; /* between one sample's rows and the next's */

/* Where the ride of a group is: sample i, vector v of its row. */
typedef struct {
    long i, v;
} cursor;

/* The next `count` vectors of group yg's ride (from xg), in the order of its rows. light: one
 * FMA; else the kernel's ((x - hi) - lo) * sc + sh on per-position coefficients. */
static inline cursor ride(float *yg, const float *xg, cursor c, int count, int light,
                          const float *hi, const float *lo, const float *sc, const float *sh) {
    const __m512 a = _mm512_set1_ps(1.0001f), b = _mm512_set1_ps(0.5f);
    for (int k = 0; k < count && c.i < N; k++) {
        const long o = c.i * STRIDE + c.v * 16, q = c.v * 16;
        const __m512 x = _mm512_load_ps(xg + o);
        __m512 y;
        if (light) {
            y = _mm512_fmadd_ps(x, a, b);
        } else {
            y = _mm512_sub_ps(_mm512_sub_ps(x, _mm512_load_ps(hi + q)), _mm512_load_ps(lo + q));
            y = _mm512_add_ps(_mm512_mul_ps(y, _mm512_load_ps(sc + q)), _mm512_load_ps(sh + q));
        }
        _mm512_stream_ps(yg + o, y);
        if (++c.v == V) c.v = 0, c.i++;
    }
    return c;
}

/* The kernel's tree of 8 rows of one column (x: its first row), added to double lanes. */
static inline void tree(__m512d acc[4], const float *x, __m512 pivot) {
    __m512 d[8], e[8];
    for (int t = 0; t < 8; t++) {
        d[t] = _mm512_sub_ps(_mm512_load_ps(x + t * STRIDE), pivot);
        e[t] = _mm512_mul_ps(d[t], d[t]);
    }
    const __m512 t1 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(d[0], d[1]),
                                                  _mm512_add_ps(d[2], d[3])),
                                    _mm512_add_ps(_mm512_add_ps(d[4], d[5]),
                                                  _mm512_add_ps(d[6], d[7])));
    const __m512 t2 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(e[0], e[1]),
                                                  _mm512_add_ps(e[2], e[3])),
                                    _mm512_add_ps(_mm512_add_ps(e[4], e[5]),
                                                  _mm512_add_ps(e[6], e[7])));
    acc[0] = _mm512_add_pd(acc[0], _mm512_cvtps_pd(_mm512_castps512_ps256(t1)));
    acc[1] = _mm512_add_pd(acc[1], _mm512_cvtps_pd(_mm256_castpd_ps(
                                       _mm512_extractf64x4_pd(_mm512_castps_pd(t1), 1))));
    acc[2] = _mm512_add_pd(acc[2], _mm512_cvtps_pd(_mm512_castps512_ps256(t2)));
    acc[3] = _mm512_add_pd(acc[3], _mm512_cvtps_pd(_mm256_castpd_ps(
                                       _mm512_extractf64x4_pd(_mm512_castps_pd(t2), 1))));
}

/* One thread's channels [c0, c1) in one form: each group's statistics read while the group
 * before it is normalized. Returns a sum so that nothing is optimized away. */
static int setup_mode; /* SETUP */
static double pass(float *y, const float *x, int c0, int c1, int form, const float *coef,
                   long spacing) {
    const float *hi = coef, *lo = coef + spacing, *sc = coef + 2 * spacing;
    const float *sh = coef + 3 * spacing;
    const __m512 pivot = _mm512_set1_ps(0.5f);
    const int light = form == LIGHT_AFTER || form == LIGHT_MIXED;
    const int mixed = form == LIGHT_MIXED || form == KERNEL_MIXED;
    __m512d sum = _mm512_setzero_pd();
    for (int g = c0; g < c1; g += G) {
        const float *xg = x + (long)g * S, *next = x + (long)(g + G) * S;
        float *yg = y + (long)g * S;
        cursor c = {0, 0};
        if (setup_mode & 1) { /* the ride's coefficients made per group: 4 stores a position */
            float *h = (float *)hi, *l = (float *)lo, *s_ = (float *)sc, *b_ = (float *)sh;
            for (int q = 0; q < G; q++) {
                const float hv = 1.0f + q * 1e-3f, lv = 1e-8f, sv = 0.9f, bv = 0.1f;
                for (int j = 0; j < S; j++)
                    h[q * S + j] = hv, l[q * S + j] = lv, s_[q * S + j] = sv, b_[q * S + j] = bv;
            }
        }
        __m512 pv = pivot;
        if ((setup_mode & 2) && g + G < c1) { /* each channel's pivot: 8 runs of 8 values */
            float pf = 0;
            for (int q = 0; q < G; q++) {
                double rs[8] = {0};
                for (int k = 0; k < 8; k++) {
                    const float *run = next + k * N / 8 * STRIDE + q * S + k * (S - 8) / 8;
                    for (int j = 0; j < 8; j++) rs[k] += run[j];
                }
                pf += (float)(((rs[0] + rs[1]) + (rs[2] + rs[3])) +
                              ((rs[4] + rs[5]) + (rs[6] + rs[7])));
            }
            pv = _mm512_set1_ps(pf * 1e-9f + 0.5f);
        }
        if (form != RIDE_ALONE && g + G < c1)
            for (int v = 0; v < V; v++) {
                __m512d acc[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(),
                                  _mm512_setzero_pd()};
                for (int r = 0; r < N; r += 8) {
                    if (light) {
                        __m512 t1 = _mm512_setzero_ps(), t2 = t1;
                        for (int t = 0; t < 8; t++) {
                            const __m512 d = _mm512_sub_ps(
                                _mm512_load_ps(next + (r + t) * STRIDE + v * 16), pivot);
                            t1 = _mm512_add_ps(t1, d);
                            t2 = _mm512_fmadd_ps(d, d, t2);
                        }
                        acc[0] = _mm512_add_pd(acc[0], _mm512_cvtps_pd(_mm512_castps512_ps256(
                                                           _mm512_add_ps(t1, t2))));
                    } else {
                        tree(acc, next + r * STRIDE + v * 16, pv);
                    }
                    if (mixed) c = ride(yg, xg, c, 8, light, hi, lo, sc, sh);
                }
                sum = _mm512_add_pd(sum, _mm512_add_pd(_mm512_add_pd(acc[0], acc[1]),
                                                       _mm512_add_pd(acc[2], acc[3])));
            }
        ride(yg, xg, c, N * V, light, hi, lo, sc, sh); /* what is left of the group */
    }
    _mm_sfence();
    return _mm512_reduce_add_pd(sum);
}

int main(int argc, char **argv) {
    const int threads = argc > 1 ? atoi(argv[1]) : 2;
    const long spacing = argc > 2 ? atol(argv[2]) : W;
    setup_mode = argc > 3 ? atoi(argv[3]) : 0;
    if (threads < 1 || threads > 2 || spacing < W || setup_mode < 0 || setup_mode > 3) {
        fprintf(stderr, "usage: %s THREADS(1 or 2) [SPACING >= %d [SETUP 0-3]]\n", argv[0], W);
        return 2;
    }
    const long count = (long)N * C * S;
    float *x = aligned_alloc(64, count * sizeof(float));
    float *y = aligned_alloc(64, count * sizeof(float));
    float *coef[2];
    for (int t = 0; t < 2; t++) {
        coef[t] = aligned_alloc(64, (4 * spacing + 16) * sizeof(float));
        for (long k = 0; k < 4 * spacing; k++) coef[t][k] = k < spacing ? 1.0f : 0.5f;
    }
    for (long k = 0; k < count; k++) x[k] = (float)(k % 7), y[k] = 0;
    enum { ROUNDS = 400 };
    static double ns[FORMS][ROUNDS];
    double keep = 0;
    for (int r = 0; r < ROUNDS; r++)
        for (int form = 0; form < FORMS; form++)
            for (int timed = 0; timed < 2; timed++) {
                const double t0 = now_ns();
#pragma omp parallel num_threads(threads) reduction(+ : keep)
                {
                    const int t = omp_get_thread_num();
                    keep += pass(y, x, t * C / threads, (t + 1) * C / threads, form, coef[t],
                                 spacing);
                }
                if (timed) ns[form][r] = now_ns() - t0;
            }
    for (int form = 0; form < FORMS; form++) {
        qsort(ns[form], ROUNDS, sizeof(double), by_value);
        printf("%-14s %7.1f us\n", names[form], ns[form][ROUNDS / 2] / 1e3);
    }
    if (keep == 1.25) printf("(unlikely)\n");
    free(x), free(y), free(coef[0]), free(coef[1]);
    return 0;
}
