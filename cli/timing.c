/* timing.c - the clock of `bnorm bench` and of fit's progress bar (CLOCK_MONOTONIC, in ns), and
 * the median of repeated timings. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */

#include "cli.h"

#include <stdlib.h>
#include <time.h>

double cli_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double cli_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
