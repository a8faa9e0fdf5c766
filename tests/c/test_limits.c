/* test_limits.c - the limits bnorm.h states: the largest tensor accepted (byte count up to
 * PTRDIFF_MAX; beyond, BN_ERR_TOO_LARGE before anything is touched) and the memory a call uses
 * (per-channel scratch only: calls on a 96 MiB tensor run inside 4 MiB of address space, and
 * when the scratch cannot be had the call fails with BN_ERR_NO_MEMORY, writing nothing). The
 * memory limits are set with RLIMIT_AS in a child process. Sizes are well over 64 MiB because
 * glibc may serve smaller blocks from an arena's address space reserved earlier. */
#define _XOPEN_SOURCE 700

#include "check.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

/* Limits the address space to what the process uses now plus extra bytes. */
static int limit_address_space(size_t extra) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    if (!f) return 0;
    int ok = fscanf(f, "%lu", &pages) == 1;
    fclose(f);
    struct rlimit rl;
    rl.rlim_cur = rl.rlim_max = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + extra;
    return ok && setrlimit(RLIMIT_AS, &rl) == 0;
}

/* Runs fn in a child process; returns its exit status (0: every expectation held), or -1. */
static int in_child(int (*fn)(void)) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) _exit(fn());
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* 24 M float32 values (96 MiB) in x and y (dy = x, dx = y): the calls may add 4 MiB at most. */
static int big_tensor_small_memory(void) {
    const int64_t n = 96, c = 8, s = 32768, count = n * c * s;
    float *x = malloc(4 * (size_t)count), *y = malloc(4 * (size_t)count), *dy = x, *dx = y;
    if (!x || !y) return 10;
    for (int64_t k = 0; k < count; k++) x[k] = (float)(k % 13);
    float rm[8] = {0}, rv[8] = {1, 1, 1, 1, 1, 1, 1, 1}, dw[8], db[8];
    double sm[8], si[8];
    int64_t nbt = 0;
    bn_options opt = BN_OPTIONS_DEFAULT;
    bn_set_num_threads(1); /* new threads would need stacks */
    if (!limit_address_space((size_t)4 << 20)) return 11;
    for (int lay = 0; lay < 2; lay++) {
        bn_desc d = tu_desc(n, c, s, BN_FLOAT32, (bn_layout)lay);
        if (bn_forward_train(y, sm, si, rm, rv, &nbt, x, NULL, NULL, &d, &opt) != BN_OK) return 20 + lay;
        if (bn_backward_train(dx, dw, db, dy, x, sm, si, NULL, &d) != BN_OK) return 22 + lay;
        if (bn_forward_eval(y, x, rm, rv, NULL, NULL, &d, 1e-5) != BN_OK) return 24 + lay;
        if (bn_backward_eval(dx, dw, db, dy, x, rm, rv, NULL, &d, 1e-5) != BN_OK) return 26 + lay;
        /* the stages of a split batch, and the finiteness check */
        bn_moments mom[8];
        double sum_dy[8], sum_dy_xhat[8];
        if (bn_compute_moments(mom, x, &d) != BN_OK) return 40 + lay;
        if (bn_forward_train_stats(y, sm, si, rm, rv, &nbt, x, NULL, NULL, mom, &d, &opt) != BN_OK)
            return 42 + lay;
        if (bn_backward_sums(sum_dy, sum_dy_xhat, dy, x, sm, si, &d) != BN_OK) return 44 + lay;
        if (bn_backward_train_sums(dx, dy, x, sm, si, NULL, sum_dy, sum_dy_xhat, count / c, &d) != BN_OK)
            return 46 + lay;
        if (bn_check_finite(NULL, NULL, x, &d) != BN_OK) return 48 + lay;
    }
    return nbt == 4 ? 0 : 30;
}

/* 2^22 channels need 96 to 288 MiB of channels-last scratch: with 4 MiB to spare every pass
 * must fail with BN_ERR_NO_MEMORY and write nothing. */
static int scratch_refused(void) {
    const int64_t n = 2, c = INT64_C(1) << 22, count = n * c;
    float *x = malloc(4 * (size_t)count), *y = malloc(4 * (size_t)count);
    float *small = malloc(4 * 4 * (size_t)c); /* rm, rv, dw, db */
    double *stats = malloc(8 * 2 * (size_t)c);
    float *keep_y = malloc(4 * (size_t)count), *keep_small = malloc(4 * 4 * (size_t)c);
    if (!x || !y || !small || !stats || !keep_y || !keep_small) return 10;
    for (int64_t k = 0; k < count; k++) x[k] = (float)(k % 7), y[k] = -1;
    for (int64_t k = 0; k < 4 * c; k++) small[k] = 0.5f;
    for (int64_t k = 0; k < 2 * c; k++) stats[k] = 1;
    memcpy(keep_y, y, 4 * (size_t)count);
    memcpy(keep_small, small, 4 * 4 * (size_t)c);
    float *rm = small, *rv = small + c, *dw = small + 2 * c, *db = small + 3 * c;
    int64_t nbt = 5;
    bn_options opt = BN_OPTIONS_DEFAULT;
    bn_set_num_threads(1);
    if (!limit_address_space((size_t)4 << 20)) return 11;
    bn_desc d = tu_desc(n, c, 1, BN_FLOAT32, BN_CHANNELS_FIRST); /* S = 1: the channels-last engine */
    if (bn_forward_train(y, stats, stats + c, rm, rv, &nbt, x, NULL, NULL, &d, &opt) != BN_ERR_NO_MEMORY)
        return 20;
    if (bn_forward_eval(y, x, rm, rv, NULL, NULL, &d, 1e-5) != BN_ERR_NO_MEMORY) return 21;
    if (bn_backward_train(y, dw, db, x, x, stats, stats + c, NULL, &d) != BN_ERR_NO_MEMORY) return 22;
    if (bn_backward_eval(y, dw, db, x, x, rm, rv, NULL, &d, 1e-5) != BN_ERR_NO_MEMORY) return 23;
    if (memcmp(y, keep_y, 4 * (size_t)count) || memcmp(small, keep_small, 4 * 4 * (size_t)c)) return 30;
    for (int64_t k = 0; k < 2 * c; k++)
        if (stats[k] != 1) return 31;
    return nbt == 5 ? 0 : 32;
}

BN_SUITE(suite_limits) {
    /* the largest tensor: PTRDIFF_MAX bytes; one element more is refused */
    bn_desc d;
    const int64_t max4 = PTRDIFF_MAX / 4, max8 = PTRDIFF_MAX / 8;
    int64_t ok4[2] = {max4, 1}, over4[2] = {max4 + 1, 1}, ok8[3] = {1, max8, 1}, over8[3] = {1, max8 + 1, 1};
    CHECK_STATUS(bn_desc_from_dims(&d, 2, ok4, BN_FLOAT32, BN_CHANNELS_FIRST), BN_OK);
    CHECK_STATUS(bn_desc_from_dims(&d, 2, over4, BN_FLOAT32, BN_CHANNELS_FIRST), BN_ERR_TOO_LARGE);
    CHECK_STATUS(bn_desc_from_dims(&d, 3, ok8, BN_FLOAT64, BN_CHANNELS_LAST), BN_OK);
    CHECK_STATUS(bn_desc_from_dims(&d, 3, over8, BN_FLOAT64, BN_CHANNELS_LAST), BN_ERR_TOO_LARGE);
    /* the refusal comes before any pointer is looked at */
    bn_desc huge = tu_desc(max4 + 1, 1, 1, BN_FLOAT32, BN_CHANNELS_FIRST);
    bn_options opt = BN_OPTIONS_DEFAULT;
    CHECK_STATUS(bn_forward_train(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, &huge, &opt),
                 BN_ERR_TOO_LARGE);

    /* valgrind counts its own memory in RLIMIT_AS: the plain, ASan and TSan runs check these */
    if (RUNNING_ON_VALGRIND) {
        printf("suite_limits: address-space limits are not applied under valgrind\n");
        return;
    }
    int st = in_child(big_tensor_small_memory);
    CHECK_MSG(st == 0, "a call on a 64 MiB tensor needed more than 4 MiB (child status %d)", st);
    st = in_child(scratch_refused);
    CHECK_MSG(st == 0, "scratch refused: child status %d", st);
}
