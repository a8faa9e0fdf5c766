/* plane_reread.c - an experiment behind docs/performance.md's "what two reads cost": the
 * training and backward passes of a large float32 channels-first tensor (8x256x128x128 by
 * default) as the library lays them out when a channel's planes fit in the L2 (plan.h's
 * overlap: each channel's second pass riding along the first pass of the next, so that one
 * channel is read from memory while the one before it is read again from the L2), cut to what
 * decides their speed, beside the floor that reads every byte once. Each thread takes a
 * contiguous half of the channels. Not part of the library; its sums are not checked, only
 * timed.
 *
 *   cc -O2 -std=c11 -mavx512f -mavx512dq -fopenmp bench/experiments/plane_reread.c -o /tmp/pr
 *   /tmp/pr MODE THREADS [N C S]      MODE train or backward; THREADS 1 or 2
 *
 * Forms, interleaved call by call, each timed call right after an untimed one of its form:
 *   floor          one pass, every byte once: y = a x + b (train; 8 bytes a value) or
 *                  dx = a dy + b x + c (backward; 12 bytes), streaming stores
 *   after          per channel: its first pass (train: sums of d and d * d in float; backward:
 *                  sums of dy and dy * (x - m) widened to double, as the kernels form them),
 *                  then its second pass, the channel read again from the L2
 *   ride           the same passes, the second of channel c and the first of c + 1 in one loop,
 *                  a vector of each in turn (the library's overlap)
 *   ride, no sums  the ride with the first pass's arithmetic replaced by an OR of its loads
 *                  (what the memory alone allows for two reads)
 * It prints each form's median over the rounds and its ratio to the floor.
 * Intel Xeon (family 6 model 167), two runs each, ratios to the floor, 1 / 2 threads (the
 * library's: its median over the roofline's in one `bnorm bench` run):
 *   8x256x128x128 train     ride 1.13-1.14 / 1.17, no sums 1.13-1.15 / 1.16-1.17; library 1.11 / 1.11
 *   8x256x128x128 backward  ride 1.53-1.56 / 1.62-1.64, no sums 1.32-1.37 / 1.42; library 1.42 / 1.39
 *   32x64x56x56 train       ride 1.03-1.04 / 1.05, no sums 1.03-1.04 / 1.04-1.05; library 1.08 / 1.10
 *   32x64x56x56 backward    ride 1.24 / 1.22-1.23, no sums 1.22 / 1.20-1.21; library 1.31 / 1.33
 * So two reads of a channel cost backward at least 1.2x the floor here, with no arithmetic. */
#define _POSIX_C_SOURCE 199309L
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "timing.h"

enum { FLOOR, AFTER, RIDE, RIDE_BARE, FORMS };
static const char *const names[FORMS] = {"floor", "after", "ride", "ride, no sums"};
static long N = 8, C = 256, S = 16384; /* a channel: N rows of S values, C * S apart */
static int backward;

/* The first pass's arithmetic on one vector of x (and dy): float sums for training, double
 * sums for backward (both halves widened, as the kernels do). */
static inline void first(__m512 *f1, __m512 *f2, __m512d *d, const float *x, const float *dy,
                         int bare) {
    const __m512 xv = _mm512_load_ps(x);
    if (bare) {
        __m512 v = xv;
        if (backward) v = _mm512_or_ps(v, _mm512_load_ps(dy));
        *f1 = _mm512_or_ps(*f1, v);
        return;
    }
    if (!backward) {
        const __m512 dv = _mm512_sub_ps(xv, _mm512_set1_ps(0.5f));
        *f1 = _mm512_add_ps(*f1, dv);
        *f2 = _mm512_add_ps(*f2, _mm512_mul_ps(dv, dv));
        return;
    }
    const __m512 gv = _mm512_load_ps(dy);
    const __m512d m = _mm512_set1_pd(0.5);
    const __m512d g0 = _mm512_cvtps_pd(_mm512_castps512_ps256(gv));
    const __m512d g1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(
        _mm512_castps_pd(gv), 1)));
    const __m512d x0 = _mm512_cvtps_pd(_mm512_castps512_ps256(xv));
    const __m512d x1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(
        _mm512_castps_pd(xv), 1)));
    d[0] = _mm512_add_pd(d[0], g0), d[1] = _mm512_add_pd(d[1], g1);
    d[2] = _mm512_add_pd(d[2], _mm512_mul_pd(g0, _mm512_sub_pd(x0, m)));
    d[3] = _mm512_add_pd(d[3], _mm512_mul_pd(g1, _mm512_sub_pd(x1, m)));
}

/* The second pass on one vector: y = a x + b, or dx = a dy + b x + c, streamed. */
static inline void second(float *out, const float *x, const float *dy) {
    const __m512 xv = _mm512_load_ps(x);
    __m512 v = _mm512_fmadd_ps(xv, _mm512_set1_ps(1.0001f), _mm512_set1_ps(0.5f));
    if (backward) v = _mm512_fmadd_ps(_mm512_load_ps(dy), _mm512_set1_ps(0.9f), v);
    _mm512_stream_ps(out, v);
}

/* One thread's channels [c0, c1) in one form; returns a sum so that nothing is optimized away. */
static double pass(float *out, const float *x, const float *dy, long c0, long c1, int form) {
    const long stride = C * S;
    __m512 f1 = _mm512_setzero_ps(), f2 = f1;
    __m512d d[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(),
                    _mm512_setzero_pd()};
    if (form == FLOOR) {
        for (long c = c0; c < c1; c++)
            for (long i = 0; i < N; i++)
                for (long j = 0; j < S; j += 16) {
                    const long o = i * stride + c * S + j;
                    second(out + o, x + o, dy + o);
                }
    } else if (form == AFTER) {
        for (long c = c0; c < c1; c++) {
            for (long i = 0; i < N; i++)
                for (long j = 0; j < S; j += 16) {
                    const long o = i * stride + c * S + j;
                    first(&f1, &f2, d, x + o, dy + o, 0);
                }
            for (long i = 0; i < N; i++)
                for (long j = 0; j < S; j += 16) {
                    const long o = i * stride + c * S + j;
                    second(out + o, x + o, dy + o);
                }
        }
    } else { /* the first pass of c0, then each second pass riding along the next first */
        const int bare = form == RIDE_BARE;
        for (long i = 0; i < N; i++)
            for (long j = 0; j < S; j += 16) {
                const long o = i * stride + c0 * S + j;
                first(&f1, &f2, d, x + o, dy + o, bare);
            }
        for (long c = c0; c < c1; c++)
            for (long i = 0; i < N; i++)
                for (long j = 0; j < S; j += 16) {
                    const long o = i * stride + c * S + j;
                    if (c + 1 < c1) first(&f1, &f2, d, x + o + S, dy + o + S, bare);
                    second(out + o, x + o, dy + o);
                }
    }
    _mm_sfence();
    float lanes[16];
    _mm512_storeu_ps(lanes, _mm512_add_ps(f1, f2));
    return lanes[0] + _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(d[0], d[1]),
                                                         _mm512_add_pd(d[2], d[3])));
}

int main(int argc, char **argv) {
    const int threads = argc > 2 ? atoi(argv[2]) : 0;
    if (argc > 5) N = atol(argv[3]), C = atol(argv[4]), S = atol(argv[5]);
    if (argc < 3 || (strcmp(argv[1], "train") && strcmp(argv[1], "backward")) || threads < 1 ||
        threads > 2 || N < 1 || C < 2 || S < 16 || S % 16) {
        fprintf(stderr, "usage: %s train|backward THREADS(1 or 2) [N C S(a multiple of 16)]\n",
                argv[0]);
        return 2;
    }
    backward = !strcmp(argv[1], "backward");
    const long count = N * C * S;
    float *x = aligned_alloc(64, count * sizeof(float));
    float *dy = aligned_alloc(64, count * sizeof(float));
    float *out = aligned_alloc(64, count * sizeof(float));
    for (long k = 0; k < count; k++) x[k] = (float)(k % 7), dy[k] = (float)(k % 5), out[k] = 0;
    const double seconds = 4.0; /* of timed calls, about */
    double t0 = now_ns();
    pass(out, x, dy, 0, C, FLOOR);
    const int rounds = (int)(seconds * 1e9 / (FORMS * 2 * (now_ns() - t0) + 1)) + 5;
    double *ns = malloc(sizeof(double) * FORMS * rounds), keep = 0;
    for (int r = 0; r < rounds; r++)
        for (int form = 0; form < FORMS; form++)
            for (int timed = 0; timed < 2; timed++) {
                t0 = now_ns();
#pragma omp parallel num_threads(threads) reduction(+ : keep)
                {
                    const int t = omp_get_thread_num();
                    keep += pass(out, x, dy, t * C / threads, (t + 1) * C / threads, form);
                }
                if (timed) ns[form * rounds + r] = now_ns() - t0;
            }
    double median[FORMS];
    for (int form = 0; form < FORMS; form++) {
        qsort(ns + form * rounds, rounds, sizeof(double), by_value);
        median[form] = ns[form * rounds + rounds / 2];
    }
    volatile double sink = keep; /* the passes' sums are kept, not shown: the OR form's are bits */
    (void)sink;
    printf("%s %ldx%ldx%ld, %d thread(s), %d rounds\n", argv[1], N, C, S, threads, rounds);
    for (int form = 0; form < FORMS; form++)
        printf("  %-14s %10.3f ms  %.3fx the floor\n", names[form], median[form] / 1e6,
               median[form] / median[FLOOR]);
    return 0;
}
