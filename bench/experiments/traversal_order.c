/* traversal_order.c - an experiment behind docs/performance.md: the channels-first statistics
 * pass (deviations, squares and sums in double, blocks of at most 1024 values, prefetch 4 KiB
 * ahead) over an (N, C, S) float32 tensor, read channel by channel (as bnorm does) or sample by
 * sample (memory order), the caches flushed before each run. Not part of the library.
 *
 *   cc -O3 -std=c11 -ffp-contract=off -mavx512f bench/experiments/traversal_order.c -o /tmp/order
 *   /tmp/order 32 64 3136; /tmp/order 32 512 49 */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef double v8d __attribute__((vector_size(64)));
typedef double v16d __attribute__((vector_size(128)));
typedef float v16f_u __attribute__((vector_size(64), aligned(4)));
typedef union { v16d whole; v8d half[2]; } halves;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* x: k values. out[0], out[1] += sums of the deviations from x[0] and of their squares. */
__attribute__((noinline)) static void block(double *out, const float *x, int64_t k) {
    const double shift = x[0];
    v8d sq[4] = {0}, sd[4] = {0};
    int64_t j = 0;
    for (; j + 32 <= k; j += 32) {
        __builtin_prefetch((const char *)(x + j) + 4096);
        __builtin_prefetch((const char *)(x + j + 16) + 4096);
        halves a, b;
        a.whole = __builtin_convertvector(*(const v16f_u *)(x + j), v16d);
        b.whole = __builtin_convertvector(*(const v16f_u *)(x + j + 16), v16d);
        v8d d[4] = {a.half[0], a.half[1], b.half[0], b.half[1]};
        for (int h = 0; h < 4; h++) d[h] -= shift, sq[h] += d[h] * d[h], sd[h] += d[h];
    }
    double s1 = 0, s2 = 0;
    for (; j < k; j++) s1 += x[j] - shift, s2 += (x[j] - shift) * (x[j] - shift);
    for (int h = 0; h < 4; h++)
        for (int l = 0; l < 8; l++) s1 += sd[h][l], s2 += sq[h][l];
    out[0] += s1, out[1] += s2;
}

static void row(double *out, const float *p, int64_t s) {
    for (int64_t j = 0; j < s; j += 1024) block(out, p + j, s - j < 1024 ? s - j : 1024);
}

int main(int argc, char **argv) {
    const int64_t N = argc > 3 ? atoll(argv[1]) : 32, C = argc > 3 ? atoll(argv[2]) : 64;
    const int64_t S = argc > 3 ? atoll(argv[3]) : 3136;
    const size_t n = (size_t)(N * C * S), flush_n = (size_t)64 << 20;
    float *x = aligned_alloc(64, n * 4), *flush = aligned_alloc(64, flush_n * 4);
    if (!x || !flush) return 1;
    for (size_t i = 0; i < n; i++) x[i] = (float)(i % 1000) * 0.001f;
    for (size_t i = 0; i < flush_n; i++) flush[i] = 0;
    double best[2] = {1e9, 1e9}, out[2] = {0, 0};
    for (int rep = 0; rep < 10; rep++)
        for (int order = 0; order < 2; order++) {
            for (size_t i = 0; i < flush_n; i += 16) flush[i] += 1;
            const double t0 = now();
            if (order == 0) {
                for (int64_t c = 0; c < C; c++)
                    for (int64_t i = 0; i < N; i++) row(out, x + (i * C + c) * S, S);
            } else {
                for (int64_t i = 0; i < N; i++)
                    for (int64_t c = 0; c < C; c++) row(out, x + (i * C + c) * S, S);
            }
            const double t = now() - t0;
            if (t < best[order]) best[order] = t;
        }
    printf("%lldx%lldx%lld: channel by channel %.3f ms, sample by sample %.3f ms (best of 10; %g)\n",
           (long long)N, (long long)C, (long long)S, best[0] * 1e3, best[1] * 1e3, out[0]);
    return 0;
}
