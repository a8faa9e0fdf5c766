/* short_row_backward.c - an experiment behind docs/performance.md's "What the short-row backward
 * could give": the backward pass of a float32 NCHW 32x512x7x7 tensor as src/kernels.inc's
 * short-row kernels lay it out (groups of 16 channels, each sample's row of a group 784
 * contiguous values, C * S values from the next sample's; the sums of a group read from memory
 * while the dx of the group before is formed from the L2), cut to what decides its speed. Each
 * thread takes half the groups. Not part of the library; its sums are not checked, only timed.
 *
 *   cc -O2 -std=c11 -mavx512f -mavx512dq -fopenmp bench/experiments/short_row_backward.c \
 *      -o /tmp/srb
 *   /tmp/srb THREADS
 *
 * It prints the median time of each form and its ratio to the floor, the forms interleaved call
 * by call, each timed call right after two untimed ones of its form:
 *   floor               dx = dy - x over the whole tensors, streaming stores (12 B a value)
 *   copy, per group     no arithmetic: a group's rows read (one add a vector), then the rows
 *                       of the group before read again and dx = dy - x written (plain stores)
 *   copy, per row       the same, one row of each at a time
 *   exact, tiles of T   the kernel's arithmetic: the sums in double, exact (each value widened,
 *                       sum dy and sum dy * (x - mean) in per-position lanes), T rows at a time
 *                       in registers between loads and stores of the lanes; then those T rows
 *                       of the group before: dx = ((dy - mdy) - ((x - hi) - lo) * kk) * sc on
 *                       five arrays of per-position coefficients. T = 1, 8, 32 (32: the whole
 *                       group, as the library has it, up to its blocks of 20 rows)
 * Intel Xeon (family 6 model 167), 1 thread, two runs: see docs/performance.md. */
#define _POSIX_C_SOURCE 199309L
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "timing.h"

enum { N = 32, C = 512, S = 49, G = 16, W = G * S, GROUPS = C / G };
enum { FLOOR, COPY_GROUP, COPY_ROW, EXACT_1, EXACT_8, EXACT_32, FORMS };
static const char *const names[FORMS] = {"floor",          "copy, per group", "copy, per row",
                                         "exact, tiles of 1", "exact, tiles of 8",
                                         "exact, tiles of 32"};
static const long STRIDE = (long)C * S; /* between one sample's rows and the next's */
static const long ELEMENTS = (long)N * C * S;

static float *x, *dy, *dx;
static volatile double sink;

/* One thread's lanes and coefficients (as the kernel keeps them, on its stack). */
typedef struct {
    double a[W], b[W], centre[W];
    float coef[5][W];
} lanes;

/* Row i of group k read, one add a vector (copy forms). */
static __m512 read_row(long k, long i, __m512 acc) {
    const float *g = dy + i * STRIDE + k * W, *v = x + i * STRIDE + k * W;
    for (long p = 0; p < W; p += 16)
        acc = _mm512_add_ps(acc, _mm512_add_ps(_mm512_loadu_ps(g + p), _mm512_loadu_ps(v + p)));
    return acc;
}

static void copy_row(long k, long i) {
    const long at = i * STRIDE + k * W;
    for (long p = 0; p < W; p += 16)
        _mm512_storeu_ps(dx + at + p,
                         _mm512_sub_ps(_mm512_loadu_ps(dy + at + p), _mm512_loadu_ps(x + at + p)));
}

/* Rows [i0, i1) of group k added to the lanes, 16 positions at a time (the kernel's sums). */
static void exact_rows(lanes *l, long k, long i0, long i1) {
    for (long p = 0; p < W; p += 16) {
        __m512d a0 = _mm512_loadu_pd(l->a + p), a1 = _mm512_loadu_pd(l->a + p + 8);
        __m512d b0 = _mm512_loadu_pd(l->b + p), b1 = _mm512_loadu_pd(l->b + p + 8);
        const __m512d m0 = _mm512_loadu_pd(l->centre + p), m1 = _mm512_loadu_pd(l->centre + p + 8);
        for (long i = i0; i < i1; i++) {
            const long at = i * STRIDE + k * W + p;
            const __m512 gv = _mm512_loadu_ps(dy + at), xv = _mm512_loadu_ps(x + at);
            const __m512d g0 = _mm512_cvtps_pd(_mm512_castps512_ps256(gv));
            const __m512d g1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(gv, 1));
            const __m512d x0 = _mm512_cvtps_pd(_mm512_castps512_ps256(xv));
            const __m512d x1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(xv, 1));
            a0 = _mm512_add_pd(a0, g0), a1 = _mm512_add_pd(a1, g1);
            b0 = _mm512_add_pd(b0, _mm512_mul_pd(g0, _mm512_sub_pd(x0, m0)));
            b1 = _mm512_add_pd(b1, _mm512_mul_pd(g1, _mm512_sub_pd(x1, m1)));
        }
        _mm512_storeu_pd(l->a + p, a0), _mm512_storeu_pd(l->a + p + 8, a1);
        _mm512_storeu_pd(l->b + p, b0), _mm512_storeu_pd(l->b + p + 8, b1);
    }
}

/* dx of row i of group k from the five coefficient arrays (the kernel's ride). */
static void exact_dx_row(const lanes *l, long k, long i) {
    const long at = i * STRIDE + k * W;
    for (long p = 0; p < W; p += 16) {
        const __m512 xc = _mm512_sub_ps(_mm512_sub_ps(_mm512_loadu_ps(x + at + p),
                                                      _mm512_loadu_ps(l->coef[0] + p)),
                                        _mm512_loadu_ps(l->coef[1] + p));
        const __m512 d = _mm512_sub_ps(
            _mm512_sub_ps(_mm512_loadu_ps(dy + at + p), _mm512_loadu_ps(l->coef[2] + p)),
            _mm512_mul_ps(xc, _mm512_loadu_ps(l->coef[3] + p)));
        _mm512_storeu_ps(dx + at + p, _mm512_mul_ps(d, _mm512_loadu_ps(l->coef[4] + p)));
    }
}

/* Groups [k0, k1): each group's rows read while the group before it is written. */
static void backward(int form, lanes *l, long k0, long k1) {
    const long tile = form == COPY_ROW || form == EXACT_1 ? 1 : form == EXACT_8 ? 8 : N;
    __m512 acc = _mm512_setzero_ps();
    for (long k = k0; k <= k1; k++) {
        if (form >= EXACT_1) memset(l->a, 0, sizeof l->a), memset(l->b, 0, sizeof l->b);
        for (long i0 = 0; i0 < N; i0 += tile) {
            const long i1 = i0 + tile;
            if (k < k1) {
                if (form >= EXACT_1)
                    exact_rows(l, k, i0, i1);
                else
                    for (long i = i0; i < i1; i++) acc = read_row(k, i, acc);
            }
            if (k > k0)
                for (long i = i0; i < i1; i++)
                    form >= EXACT_1 ? exact_dx_row(l, k - 1, i) : copy_row(k - 1, i);
        }
    }
    sink = _mm512_reduce_add_ps(acc) + l->a[1] + l->b[2];
}

static void run(int form, int threads, lanes *per_thread) {
    if (form == FLOOR) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (long i = 0; i < ELEMENTS; i += 16)
            _mm512_stream_ps(dx + i, _mm512_sub_ps(_mm512_load_ps(dy + i), _mm512_load_ps(x + i)));
        _mm_sfence();
        return;
    }
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num();
        const long per = GROUPS / threads;
        backward(form, &per_thread[t], t * per, t == threads - 1 ? GROUPS : (t + 1) * per);
    }
}

int main(int argc, char **argv) {
    const int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 2) {
        fprintf(stderr, "usage: %s THREADS (1 or 2)\n", argv[0]);
        return 2;
    }
    x = aligned_alloc(64, ELEMENTS * sizeof *x);
    dy = aligned_alloc(64, ELEMENTS * sizeof *dy);
    dx = aligned_alloc(64, ELEMENTS * sizeof *dx);
    lanes *l = aligned_alloc(64, 2 * sizeof *l);
    if (!x || !dy || !dx || !l) return 1;
    for (long i = 0; i < ELEMENTS; i++) x[i] = 3.0f + (float)(i % 7), dy[i] = 0.25f, dx[i] = 0;
    for (int t = 0; t < 2; t++) {
        for (long p = 0; p < W; p++) l[t].centre[p] = 3.5;
        for (int c = 0; c < 5; c++)
            for (long p = 0; p < W; p++) l[t].coef[c][p] = 0.5f;
    }
    enum { REPS = 201 };
    static double times[FORMS][REPS];
    for (int r = 0; r < REPS; r++)
        for (int f = 0; f < FORMS; f++) {
            run(f, threads, l), run(f, threads, l);
            const double t0 = now_ns();
            run(f, threads, l);
            times[f][r] = now_ns() - t0;
        }
    for (int f = 0; f < FORMS; f++) qsort(times[f], REPS, sizeof times[f][0], by_value);
    const double floor_ns = times[FLOOR][REPS / 2];
    for (int f = 0; f < FORMS; f++)
        printf("%-20s %8.1f us  %.3fx the floor\n", names[f], times[f][REPS / 2] / 1e3,
               times[f][REPS / 2] / floor_ns);
    return 0;
}
