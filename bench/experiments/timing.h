/* timing.h - what the experiments in this directory share: the clock, and the order qsort
 * needs to take a median. Each experiment includes it with its own _POSIX_C_SOURCE first. */
#ifndef BN_EXPERIMENT_TIMING_H
#define BN_EXPERIMENT_TIMING_H

#include <time.h>

/* CLOCK_MONOTONIC, in ns. */
static inline double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

/* qsort's comparison of two doubles, ascending. */
static inline int by_value(const void *a, const void *b) {
    const double u = *(const double *)a, v = *(const double *)b;
    return u < v ? -1 : u > v;
}

#endif
