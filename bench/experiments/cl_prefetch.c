/* cl_prefetch.c - an experiment behind plan.prefetch (docs/performance.md): the AVX2 float
 * statistics of a channels-last (rows, ld) float32 tensor, as src/kernels.inc forms them (trees
 * of 8 rows of deviations from a pivot, in float, added to double sums per channel in memory),
 * with and without asking for each row's values one tree of rows ahead. It prints the best time
 * per value of each; both give the same sums (checked). Not part of the library.
 *
 *   cc -O3 -std=c11 -mavx2 -ffp-contract=off bench/experiments/cl_prefetch.c -o /tmp/clp
 *   /tmp/clp 256 1024     # 1 MiB, in cache
 *   /tmp/clp 100352 64    # NHWC 32x64x56x56, 25.7 MB, from memory */
#define _POSIX_C_SOURCE 199309L
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef float v8f_u __attribute__((vector_size(32), aligned(4)));
typedef float v8f __attribute__((vector_size(32)));
typedef double v4d_u __attribute__((vector_size(32), aligned(8)));
typedef double v4d __attribute__((vector_size(32)));

#define TREE 8
#define PANEL 256

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

/* s1, s2: (width) sums of d and d * d, d = x - p, over rows [0, rows) of the width channels at
 * x (rows ld apart), trees of TREE rows; with ahead > 0 each row's values `ahead` rows on are
 * asked for as they are read. */
static void sums(double *s1, double *s2, const float *x, int64_t rows, int64_t ld, const float *p,
                 int64_t width, int64_t ahead) {
    for (int64_t c = 0; c < width; c++) s1[c] = s2[c] = 0;
    for (int64_t r = 0; r + TREE <= rows; r += TREE)
        for (int64_t c = 0; c < width; c += 8) {
            const float *q = x + r * ld + c;
            const v8f pv = *(const v8f_u *)(p + c);
            v8f t1[TREE / 2], t2[TREE / 2];
            for (int t = 0; t < TREE; t += 2) {
                if (ahead) {
                    __builtin_prefetch(q + (t + ahead) * ld);
                    __builtin_prefetch(q + (t + 1 + ahead) * ld);
                }
                const v8f u = *(const v8f_u *)(q + t * ld) - pv;
                const v8f v = *(const v8f_u *)(q + (t + 1) * ld) - pv;
                t1[t / 2] = u + v, t2[t / 2] = u * u + v * v;
            }
            const __m256 a = (__m256)((t1[0] + t1[1]) + (t1[2] + t1[3]));
            const __m256 b = (__m256)((t2[0] + t2[1]) + (t2[2] + t2[3]));
            *(v4d_u *)(s1 + c) += (v4d)_mm256_cvtps_pd(_mm256_castps256_ps128(a));
            *(v4d_u *)(s1 + c + 4) += (v4d)_mm256_cvtps_pd(_mm256_extractf128_ps(a, 1));
            *(v4d_u *)(s2 + c) += (v4d)_mm256_cvtps_pd(_mm256_castps256_ps128(b));
            *(v4d_u *)(s2 + c + 4) += (v4d)_mm256_cvtps_pd(_mm256_extractf128_ps(b, 1));
        }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s rows ld (ld a multiple of 8)\n", argv[0]);
        return 2;
    }
    const int64_t rows = atoll(argv[1]) / TREE * TREE, ld = atoll(argv[2]) / 8 * 8;
    const int64_t width = ld < PANEL ? ld : PANEL;
    if (rows < TREE || ld < 8) return 2;
    float *x = aligned_alloc(64, (size_t)(rows * ld * 4 + 64)), p[PANEL];
    for (int64_t i = 0; i < rows * ld; i++) x[i] = (float)rand() / (float)RAND_MAX;
    for (int c = 0; c < PANEL; c++) p[c] = 0.5f;
    static double s1[2][PANEL], s2[2][PANEL];
    double best[2] = {1e300, 1e300};
    const int reps = rows * ld > (1 << 22) ? 20 : 500;
    for (int rep = 0; rep < reps; rep++)
        for (int k = 0; k < 2; k++) { /* k = 0: no requests; 1: one tree (TREE rows) ahead */
            const double t0 = now();
            for (int64_t c0 = 0; c0 < ld; c0 += PANEL)
                sums(s1[k], s2[k], x + c0, rows, ld, p, width, k ? TREE : 0);
            const double t = now() - t0;
            if (t < best[k]) best[k] = t;
        }
    const int same = !memcmp(s1[0], s1[1], sizeof s1[0]) && !memcmp(s2[0], s2[1], sizeof s2[0]);
    printf("%lld x %lld: without %.3f ns/value, with %.3f ns/value (%s sums)\n", (long long)rows,
           (long long)ld, best[0] / (double)(rows * ld), best[1] / (double)(rows * ld),
           same ? "the same" : "DIFFERENT");
    free(x);
    return same ? 0 : 1;
}
