/* cl_sums_in_cache.c - an experiment behind docs/performance.md's "(256, 1024) backward on two
 * threads": one thread's share of a float32 (256, 1024) backward, its 128 rows of x and dy and
 * dx (1.5 MB) in the L2, as src/kernels.inc's channels-last kernels form it, cut to what decides
 * its speed. Not part of the library; its sums are not checked, only timed.
 *
 *   cc -O2 -std=c11 -mavx512f -mavx512dq bench/experiments/cl_sums_in_cache.c -o /tmp/clsums
 *   /tmp/clsums
 *
 * It prints the median time of each form, the forms interleaved call by call, each timed call
 * right after an untimed one of its form:
 *   read               x and dy read, one add a vector: what the L2 gives
 *   sums, panels       the exact sums as the library forms them: each value of x and dy widened
 *                      to double, sum dy and sum dy * (x - mean) per channel, panels of 64
 *                      channels down the 128 rows in registers
 *   sums, rows         the same sums row by row, the lanes in memory, each value widened
 *                      straight from memory (one instruction for 8 values)
 *   dx                 dx = ((dy - mdy) - ((x - hi) - lo) * k) * scale over the share, on five
 *                      arrays of per-channel coefficients, plain stores
 *   sums, then dx      the panels' sums, then dx (the library's order: dx needs every row's sums)
 *   ride, chunks of W  the same work with dx of channels [W(j-1), Wj) formed between the panels
 *                      of the sums of [Wj, W(j+1)), a quarter of its rows after each panel
 *                      (what a channels-last ride would do within one core), W = 256, 512
 * Intel Xeon (family 6 model 167), two runs: see docs/performance.md. */
#define _POSIX_C_SOURCE 199309L
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "timing.h"

enum { R = 128, C = 1024, PANEL = 64 };
enum { READ, SUMS_PANELS, SUMS_ROWS, DX, SUMS_THEN_DX, RIDE_256, RIDE_512, FORMS };
static const char *const names[FORMS] = {"read",  "sums, panels",  "sums, rows",
                                         "dx",    "sums, then dx", "ride, chunks of 256",
                                         "ride, chunks of 512"};

static float *x, *dy, *dx, *coef; /* coef: hi, lo, mdy, k, scale, C each */
static double sum_a[C], sum_b[C], mean[C];
static volatile double sink;

static void widen(__m512 v, __m512d *lo, __m512d *hi) {
    *lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    *hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
}

/* The sums of channels [c0, c0 + 64) over the rows, in registers. */
static void sums_panel(long c0) {
    __m512d a[8], b[8], m[8];
    for (int h = 0; h < 8; h++) {
        m[h] = _mm512_loadu_pd(mean + c0 + 8 * h);
        a[h] = b[h] = _mm512_setzero_pd();
    }
    for (long r = 0; r < R; r++)
        for (int q = 0; q < 4; q++) {
            __m512d g0, g1, x0, x1;
            widen(_mm512_loadu_ps(dy + r * C + c0 + 16 * q), &g0, &g1);
            widen(_mm512_loadu_ps(x + r * C + c0 + 16 * q), &x0, &x1);
            a[2 * q] = _mm512_add_pd(a[2 * q], g0), a[2 * q + 1] = _mm512_add_pd(a[2 * q + 1], g1);
            b[2 * q] = _mm512_add_pd(b[2 * q], _mm512_mul_pd(g0, _mm512_sub_pd(x0, m[2 * q])));
            b[2 * q + 1] =
                _mm512_add_pd(b[2 * q + 1], _mm512_mul_pd(g1, _mm512_sub_pd(x1, m[2 * q + 1])));
        }
    for (int h = 0; h < 8; h++) {
        _mm512_storeu_pd(sum_a + c0 + 8 * h, a[h]);
        _mm512_storeu_pd(sum_b + c0 + 8 * h, b[h]);
    }
}

static void sums_rows(void) {
    memset(sum_a, 0, sizeof sum_a), memset(sum_b, 0, sizeof sum_b);
    for (long r = 0; r < R; r++)
        for (long c = 0; c < C; c += 8) {
            const __m512d g = _mm512_cvtps_pd(_mm256_loadu_ps(dy + r * C + c));
            const __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(x + r * C + c));
            _mm512_storeu_pd(sum_a + c, _mm512_add_pd(_mm512_loadu_pd(sum_a + c), g));
            _mm512_storeu_pd(sum_b + c,
                             _mm512_add_pd(_mm512_loadu_pd(sum_b + c),
                                           _mm512_mul_pd(g, _mm512_sub_pd(v, _mm512_loadu_pd(mean + c)))));
        }
}

/* dx of rows [r0, r1), channels [c0, c1). */
static void dx_rows(long r0, long r1, long c0, long c1) {
    for (long r = r0; r < r1; r++)
        for (long c = c0; c < c1; c += 16) {
            const long at = r * C + c;
            const __m512 xc = _mm512_sub_ps(
                _mm512_sub_ps(_mm512_loadu_ps(x + at), _mm512_loadu_ps(coef + c)),
                _mm512_loadu_ps(coef + C + c));
            const __m512 d = _mm512_sub_ps(
                _mm512_sub_ps(_mm512_loadu_ps(dy + at), _mm512_loadu_ps(coef + 2 * C + c)),
                _mm512_mul_ps(xc, _mm512_loadu_ps(coef + 3 * C + c)));
            _mm512_storeu_ps(dx + at, _mm512_mul_ps(d, _mm512_loadu_ps(coef + 4 * C + c)));
        }
}

static void ride(long w) {
    const long panels = w / PANEL;
    for (long j = 0; j <= C / w; j++)
        for (long k = 0; k < panels; k++) {
            if (j < C / w) sums_panel(j * w + k * PANEL);
            if (j > 0) dx_rows(k * R / panels, (k + 1) * R / panels, (j - 1) * w, j * w);
        }
}

static void run(int form) {
    switch (form) {
    case READ: {
        __m512 s = _mm512_setzero_ps();
        for (long i = 0; i < R * C; i += 16)
            s = _mm512_add_ps(s, _mm512_add_ps(_mm512_loadu_ps(dy + i), _mm512_loadu_ps(x + i)));
        sink = _mm512_reduce_add_ps(s);
        return;
    }
    case SUMS_PANELS:
        for (long c0 = 0; c0 < C; c0 += PANEL) sums_panel(c0);
        break;
    case SUMS_ROWS: sums_rows(); break;
    case DX: dx_rows(0, R, 0, C); break;
    case SUMS_THEN_DX:
        for (long c0 = 0; c0 < C; c0 += PANEL) sums_panel(c0);
        dx_rows(0, R, 0, C);
        break;
    case RIDE_256: ride(256); break;
    case RIDE_512: ride(512); break;
    }
    sink = sum_a[3] + sum_b[5];
}

int main(void) {
    x = aligned_alloc(64, R * C * sizeof *x);
    dy = aligned_alloc(64, R * C * sizeof *dy);
    dx = aligned_alloc(64, R * C * sizeof *dx);
    coef = aligned_alloc(64, 5 * C * sizeof *coef);
    if (!x || !dy || !dx || !coef) return 1;
    for (long i = 0; i < R * C; i++) x[i] = 3.0f + (float)(i % 5), dy[i] = 0.25f, dx[i] = 0;
    for (long i = 0; i < 5 * C; i++) coef[i] = 0.5f;
    for (long c = 0; c < C; c++) mean[c] = 4.0;
    enum { REPS = 2001 };
    static double times[FORMS][REPS];
    for (int r = 0; r < REPS; r++)
        for (int f = 0; f < FORMS; f++) {
            run(f);
            const double t0 = now_ns();
            run(f);
            times[f][r] = now_ns() - t0;
        }
    for (int f = 0; f < FORMS; f++) {
        qsort(times[f], REPS, sizeof times[f][0], by_value);
        printf("%-20s %7.2f us\n", names[f], times[f][REPS / 2] / 1e3);
    }
    return 0;
}
