/* test_mpi.c - libbnorm_mpi under mpirun with any number of ranks: a batch split between the
 * ranks (equal, unequal and empty shards) gives on every rank what bn_forward_train and
 * bn_backward_train give on the whole batch, running statistics the same bits on every rank;
 * errors are the same status on every rank and never a hang. Rank 0 prints "N passed, N failed";
 * every rank exits 1 on any failure. */
#include "bnorm_mpi.h"
#include "testutil.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int rank, size, passed, failed;

static void check(int cond, int line, const char *fmt, ...) {
    if (cond) {
        passed++;
        return;
    }
    failed++;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL rank %d of %d, test_mpi.c:%d: ", rank, size, line);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}
#define CHECK(cond) check(!!(cond), __LINE__, "%s", #cond)
#define CHECK_MSG(cond, ...) check(!!(cond), __LINE__, __VA_ARGS__)

static size_t esize(bn_dtype dt) { return dt == BN_FLOAT32 ? 4 : 8; }

/* Whether all ranks hold the same bytes. */
static int same_on_all_ranks(const void *p, size_t bytes) {
    unsigned char *all = malloc(bytes * (size_t)size + 1);
    MPI_Allgather(p, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, MPI_COMM_WORLD);
    int same = 1;
    for (int r = 1; r < size; r++) same &= memcmp(all, all + bytes * (size_t)r, bytes) == 0;
    free(all);
    return same;
}

/* The whole batch (the same on every rank), then this rank's shard [cuts[rank], cuts[rank+1]).
 * x ~ N(-4, 3) * scale. */
static void check_split(int64_t n, int64_t c, int64_t s, bn_dtype dt, bn_layout lay,
                        const int64_t *cuts, uint64_t seed, double scale) {
    bn_desc d = tu_desc(n, c, s, dt, lay);
    const int64_t count = tu_numel(&d), i0 = cuts[rank], i1 = cuts[rank + 1];
    const int64_t at = i0 * c * s, mine = (i1 - i0) * c * s;
    bn_desc dp = tu_desc(i1 - i0, c, s, dt, lay);
    tu_rng r = tu_rng_new(seed);
    double *xd = tu_randn(&r, count, -4.0 * scale, 3.0 * scale), *dyd = tu_randn(&r, count, 0, 1);
    double *wd = tu_randn(&r, c, 1, 0.5), *bd = tu_randn(&r, c, 0, 0.5);
    double *rmd = tu_randn(&r, c, 0, 1), *rvd = tu_randn(&r, c, 2, 0.1);
    void *x = tu_to_dtype(xd, count, dt), *dy = tu_to_dtype(dyd, count, dt);
    void *w = tu_to_dtype(wd, c, dt), *b = tu_to_dtype(bd, c, dt);
    void *y1 = tu_to_dtype(xd, count, dt), *dx1 = tu_to_dtype(xd, count, dt);
    void *y2 = tu_to_dtype(xd, count, dt), *dx2 = tu_to_dtype(xd, count, dt);
    void *rm1 = tu_to_dtype(rmd, c, dt), *rv1 = tu_to_dtype(rvd, c, dt);
    void *rm2 = tu_to_dtype(rmd, c, dt), *rv2 = tu_to_dtype(rvd, c, dt);
    void *dw1 = tu_to_dtype(wd, c, dt), *db1 = tu_to_dtype(wd, c, dt);
    void *dw2 = tu_to_dtype(wd, c, dt), *db2 = tu_to_dtype(wd, c, dt);
    double *sm1 = calloc((size_t)c, 8), *si1 = calloc((size_t)c, 8);
    double *sm2 = calloc((size_t)c, 8), *si2 = calloc((size_t)c, 8);
    int64_t nbt1 = 5, nbt2 = 5;
    bn_options opt = BN_OPTIONS_DEFAULT;
    const size_t es = esize(dt);
    char *X = x, *DY = dy, *Y2 = y2, *DX2 = dx2;

    CHECK(bn_forward_train(y1, sm1, si1, rm1, rv1, &nbt1, x, w, b, &d, &opt) == BN_OK);
    CHECK(bn_backward_train(dx1, dw1, db1, dy, x, sm1, si1, w, &d) == BN_OK);
    CHECK(bn_mpi_forward_train(Y2 + at * (int64_t)es, sm2, si2, rm2, rv2, &nbt2,
                               X + at * (int64_t)es, w, b, &dp, &opt, MPI_COMM_WORLD) == BN_OK);
    CHECK(bn_mpi_backward_train(DX2 + at * (int64_t)es, dw2, db2, DY + at * (int64_t)es,
                                X + at * (int64_t)es, sm2, si2, w, &dp, MPI_COMM_WORLD) == BN_OK);

    /* the shard's values against the whole batch's */
    double *a = tu_to_double((char *)y1 + at * (int64_t)es, mine, dt);
    double *bb = tu_to_double(Y2 + at * (int64_t)es, mine, dt);
    double *ga = tu_to_double((char *)dx1 + at * (int64_t)es, mine, dt);
    double *gb = tu_to_double(DX2 + at * (int64_t)es, mine, dt);
    const double tol = dt == BN_FLOAT32 ? 4e-6 : 1e-11;
    CHECK_MSG(tu_max_rel_diff(bb, a, mine) <= tol, "y (%lld,%lld,%lld) %s: %g", (long long)n,
              (long long)c, (long long)s, dt == BN_FLOAT32 ? "f32" : "f64",
              tu_max_rel_diff(bb, a, mine));
    CHECK_MSG(tu_max_rel_diff(gb, ga, mine) <= 10 * tol, "dx: %g", tu_max_rel_diff(gb, ga, mine));
    double *ra = tu_to_double(rv1, c, dt), *rb = tu_to_double(rv2, c, dt);
    double *ma = tu_to_double(rm1, c, dt), *mb = tu_to_double(rm2, c, dt);
    CHECK(tu_max_rel_diff(rb, ra, c) <= tol && tu_max_rel_diff(mb, ma, c) <= tol && nbt2 == 6);
    /* float32 ranks' moments: the float path of pivot.h on each rank's piece */
    CHECK(tu_max_rel_diff(sm2, sm1, c) <= (dt == BN_FLOAT32 ? 1e-6 : 1e-12) &&
          tu_max_rel_diff(si2, si1, c) <= (dt == BN_FLOAT32 ? 1e-6 : 1e-9));
    /* the same bits on every rank */
    CHECK_MSG(same_on_all_ranks(rm2, (size_t)c * es) && same_on_all_ranks(rv2, (size_t)c * es),
              "running statistics differ between ranks");
    CHECK(same_on_all_ranks(sm2, (size_t)c * 8) && same_on_all_ranks(si2, (size_t)c * 8));
    /* dweight, dbias: each rank's share; their sum is the batch's */
    double *dwd = tu_to_double(dw2, c, dt), *dbd = tu_to_double(db2, c, dt);
    double *dw_sum = calloc((size_t)c, 8), *db_sum = calloc((size_t)c, 8);
    MPI_Allreduce(dwd, dw_sum, (int)c, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(dbd, db_sum, (int)c, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    double *dwa = tu_to_double(dw1, c, dt), *dba = tu_to_double(db1, c, dt);
    CHECK_MSG(tu_max_rel_diff(dw_sum, dwa, c) <= 10 * tol && tu_max_rel_diff(db_sum, dba, c) <= 10 * tol,
              "summed dweight %g, dbias %g", tu_max_rel_diff(dw_sum, dwa, c),
              tu_max_rel_diff(db_sum, dba, c));
    if (size == 1) { /* one rank: exactly bn_forward_train and bn_backward_train */
        CHECK(memcmp(y1, y2, (size_t)count * es) == 0 && memcmp(dx1, dx2, (size_t)count * es) == 0);
        CHECK(memcmp(rv1, rv2, (size_t)c * es) == 0 && memcmp(dw1, dw2, (size_t)c * es) == 0);
    }
    void *all[] = {xd, dyd, wd, bd, rmd, rvd, x, dy, w, b, y1, dx1, y2, dx2, rm1, rv1, rm2, rv2,
                   dw1, db1, dw2, db2, sm1, si1, sm2, si2, a, bb, ga, gb, ra, rb, ma, mb, dwd,
                   dbd, dw_sum, db_sum, dwa, dba};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) free(all[k]);
}

/* Cuts of n samples between the ranks: kind 0 as even as can be, kind 1 unequal with rank 0
 * (and every other odd rank) empty, kind 2 everything on the last rank. */
static void cuts_of(int64_t *cuts, int64_t n, int kind) {
    cuts[0] = 0;
    for (int r = 0; r < size; r++) {
        int64_t share = n * (r + 1) / size - n * r / size;
        if (kind == 1) share = (r % 2 == 0) ? 0 : n * 2 * (r + 1) / (size * (size + 1)) + 1;
        if (kind == 2) share = r == size - 1 ? n : 0;
        cuts[r + 1] = cuts[r] + share;
    }
    if (cuts[size] > n) cuts[size] = n; /* kind 1: the last rank takes the rest */
    for (int r = 0; r < size; r++)
        if (cuts[r + 1] > n) cuts[r + 1] = n;
    cuts[size] = n;
}

static void test_errors(void) {
    bn_options opt = BN_OPTIONS_DEFAULT;
    float x[4] = {1, 2, 3, 4}, y[4] = {7, 7, 7, 7}, rm[2] = {0, 0}, rv[2] = {1, 1};
    double sm[2] = {5, 5}, si[2] = {5, 5};
    int64_t nbt = 0;
    /* one value per channel in the whole batch, held by the last rank: BN_ERR_COUNT everywhere */
    bn_desc one = tu_desc(rank == size - 1 ? 1 : 0, 2, 1, BN_FLOAT32, BN_CHANNELS_FIRST);
    bn_status st = bn_mpi_forward_train(y, sm, si, rm, rv, &nbt, x, NULL, NULL, &one, &opt,
                                        MPI_COMM_WORLD);
    CHECK_MSG(st == BN_ERR_COUNT, "global count 1: status %d", st);
    CHECK(y[0] == 7 && sm[0] == 5 && rm[0] == 0 && rv[0] == 1 && nbt == 0);
    /* one rank's bad argument: its status on every rank, nothing written anywhere */
    bn_desc d = tu_desc(2, 2, 1, BN_FLOAT32, BN_CHANNELS_FIRST);
    st = bn_mpi_forward_train(y, sm, si, rm, rv, &nbt, rank == size - 1 ? NULL : x, NULL, NULL,
                              &d, &opt, MPI_COMM_WORLD);
    CHECK_MSG(st == BN_ERR_NULL_POINTER, "NULL x on the last rank: status %d", st);
    CHECK(y[0] == 7 && sm[0] == 5 && rm[0] == 0 && nbt == 0);
    bn_options bad = opt;
    bad.momentum = rank == 0 ? 2.0 : 0.1;
    st = bn_mpi_forward_train(y, sm, si, rm, rv, &nbt, x, NULL, NULL, &d, &bad, MPI_COMM_WORLD);
    CHECK_MSG(st == BN_ERR_ARGUMENT, "momentum 2 on rank 0: status %d", st);
    /* shards with different channel counts */
    bn_desc odd = tu_desc(1, rank == size - 1 ? 1 : 2, 2, BN_FLOAT32, BN_CHANNELS_FIRST);
    st = bn_mpi_forward_train(y, sm, si, rm, rv, &nbt, x, NULL, NULL, &odd, &opt, MPI_COMM_WORLD);
    CHECK_MSG(st == (size > 1 ? BN_ERR_SHAPE : BN_OK), "different C: status %d", st);
    double dx[4], dsm[2] = {0, 0}, dsi[2] = {1, 1};
    double dd[4] = {1, 2, 3, 4};
    bn_desc dd_desc = tu_desc(2, 2, 1, BN_FLOAT64, BN_CHANNELS_FIRST);
    st = bn_mpi_backward_train(dx, NULL, NULL, rank == 0 ? NULL : dd, dd, dsm, dsi, NULL,
                               &dd_desc, MPI_COMM_WORLD);
    CHECK_MSG(st == BN_ERR_NULL_POINTER, "backward, NULL dy on rank 0: status %d", st);
    /* and the communicator still works: an ordinary call after the errors */
    y[0] = 7;
    nbt = 0;
    st = bn_mpi_forward_train(y, sm, si, rm, rv, &nbt, x, NULL, NULL, &d, &opt, MPI_COMM_WORLD);
    CHECK(st == BN_OK && y[0] != 7 && nbt == 1);
    CHECK(same_on_all_ranks(rm, sizeof rm) && same_on_all_ranks(rv, sizeof rv));
}

/* What the ranks must give alike: C, dtype, eps, momentum (unless cumulative) and cumulative,
 * each differing on the last rank alone: the status on every rank (BN_OK with one rank), and
 * nothing written anywhere. */
static void test_disagreement(void) {
    const int last = rank == size - 1;
    float x[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, y[12], rm[3], rv[3];
    double xd[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, yd[12], rmd[3], rvd[3];
    double sm[3], si[3];
    int64_t nbt;
    const bn_options base = BN_OPTIONS_DEFAULT;
    struct {
        const char *what;
        int64_t c;        /* the last rank's C, dtype and options; the others have 2, f32, base */
        bn_dtype dtype;
        double eps, momentum;
        int cumulative;
        bn_status want;
    } cases[] = {
        {"C", 3, BN_FLOAT32, 1e-5, 0.1, 0, BN_ERR_SHAPE},
        {"dtype", 2, BN_FLOAT64, 1e-5, 0.1, 0, BN_ERR_UNSUPPORTED},
        {"eps", 2, BN_FLOAT32, 1e-3, 0.1, 0, BN_ERR_ARGUMENT},
        {"momentum", 2, BN_FLOAT32, 1e-5, 0.2, 0, BN_ERR_ARGUMENT},
        {"cumulative", 2, BN_FLOAT32, 1e-5, 0.1, 1, BN_ERR_ARGUMENT},
        {"-0.0 against 0.0", 2, BN_FLOAT32, -0.0, 0.1, 0, BN_OK},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        bn_options opt = base;
        int64_t c = 2;
        bn_dtype dt = BN_FLOAT32;
        if (k == 5) opt.eps = 0.0; /* the others have 0.0, the last rank -0.0: equal */
        if (last) {
            c = cases[k].c, dt = cases[k].dtype;
            opt = tu_options(cases[k].eps, cases[k].momentum, cases[k].cumulative);
        }
        for (int i = 0; i < 12; i++) y[i] = 7, yd[i] = 7;
        for (int i = 0; i < 3; i++) rm[i] = 0, rv[i] = 1, rmd[i] = 0, rvd[i] = 1, sm[i] = si[i] = 5;
        nbt = 0;
        bn_desc d = tu_desc(2, c, 2, dt, BN_CHANNELS_FIRST);
        const int f64 = dt == BN_FLOAT64;
        bn_status st = bn_mpi_forward_train(f64 ? (void *)yd : y, sm, si, f64 ? (void *)rmd : rm,
                                            f64 ? (void *)rvd : rv, &nbt,
                                            f64 ? (void *)xd : x, NULL, NULL, &d, &opt,
                                            MPI_COMM_WORLD);
        const bn_status want = size > 1 ? cases[k].want : BN_OK;
        CHECK_MSG(st == want, "forward, %s differs on the last rank: status %d, want %d",
                  cases[k].what, st, want);
        if (want != BN_OK)
            CHECK_MSG(y[0] == 7 && yd[0] == 7 && sm[0] == 5 && rm[0] == 0 && rv[0] == 1 &&
                          rmd[0] == 0 && rvd[0] == 1 && nbt == 0,
                      "forward, %s differs: something was written", cases[k].what);
        if (k > 1) continue; /* backward has no options */
        double dxd[12] = {7}, dwd[3] = {7}, dsm[3] = {0, 0, 0}, dsi[3] = {1, 1, 1};
        float dx[12] = {7}, dw[3] = {7};
        st = bn_mpi_backward_train(f64 ? (void *)dxd : dx, f64 ? (void *)dwd : dw, NULL,
                                   f64 ? (void *)xd : x, f64 ? (void *)xd : x, dsm, dsi, NULL,
                                   &d, MPI_COMM_WORLD);
        CHECK_MSG(st == want, "backward, %s differs on the last rank: status %d", cases[k].what,
                  st);
        if (want != BN_OK)
            CHECK(dx[0] == 7 && dxd[0] == 7 && dw[0] == 7 && dwd[0] == 7);
    }
    /* bn_mpi_merge_moments: c differs */
    bn_moments m[3] = {{1, 1.0, 0.0}, {1, 2.0, 0.0}, {1, 3.0, 0.0}};
    bn_status st = bn_mpi_merge_moments(m, last ? 3 : 2, MPI_COMM_WORLD);
    CHECK_MSG(st == (size > 1 ? BN_ERR_SHAPE : BN_OK), "merge, c differs: status %d", st);
    if (size > 1) CHECK(m[0].count == 1 && m[0].mean == 1.0 && m[2].mean == 3.0);
}

/* The layout need not agree: each rank normalizes its own shard in its own layout with the
 * batch's statistics (moments and sums, which have no layout). Odd ranks hold their shard
 * channels-last, even ranks channels-first; every value equals the whole batch's. */
static void test_mixed_layouts(void) {
    const int64_t n = 3 * size + 1, c = 5, s = 7, per = c * s;
    bn_desc whole = tu_desc(n, c, s, BN_FLOAT64, BN_CHANNELS_FIRST);
    tu_rng r = tu_rng_new(77);
    double *x = tu_randn(&r, n * per, 2.0, 3.0), *dy = tu_randn(&r, n * per, 0.0, 1.0);
    double *y = calloc((size_t)(n * per), 8), *dx = calloc((size_t)(n * per), 8);
    double rm[5] = {0}, rv[5] = {1, 1, 1, 1, 1}, sm[5], si[5];
    bn_options opt = BN_OPTIONS_DEFAULT;
    CHECK(bn_forward_train(y, sm, si, rm, rv, NULL, x, NULL, NULL, &whole, &opt) == BN_OK);
    CHECK(bn_backward_train(dx, NULL, NULL, dy, x, sm, si, NULL, &whole) == BN_OK);
    /* this rank's samples [i0, i0 + k), in its layout */
    const int64_t i0 = n * rank / size, k = n * (rank + 1) / size - i0;
    bn_desc mine = tu_desc(k, c, s, BN_FLOAT64, rank % 2 ? BN_CHANNELS_LAST : BN_CHANNELS_FIRST);
    double *xs = malloc((size_t)(k * per + 1) * 8), *dys = malloc((size_t)(k * per + 1) * 8);
    double *ys = malloc((size_t)(k * per + 1) * 8), *dxs = malloc((size_t)(k * per + 1) * 8);
    for (int64_t i = 0; i < k; i++)
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t j = 0; j < s; j++) {
                xs[bn_ref_index(&mine, i, ch, j)] = x[bn_ref_index(&whole, i0 + i, ch, j)];
                dys[bn_ref_index(&mine, i, ch, j)] = dy[bn_ref_index(&whole, i0 + i, ch, j)];
            }
    double rm2[5] = {0}, rv2[5] = {1, 1, 1, 1, 1}, sm2[5], si2[5];
    CHECK(bn_mpi_forward_train(ys, sm2, si2, rm2, rv2, NULL, xs, NULL, NULL, &mine, &opt,
                               MPI_COMM_WORLD) == BN_OK);
    CHECK(bn_mpi_backward_train(dxs, NULL, NULL, dys, xs, sm2, si2, NULL, &mine,
                                MPI_COMM_WORLD) == BN_OK);
    int64_t off = 0; /* values off by more than 1e-12 (NaN included) */
    for (int64_t i = 0; i < k; i++)
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t j = 0; j < s; j++) {
                const int64_t a = bn_ref_index(&mine, i, ch, j), b = bn_ref_index(&whole, i0 + i, ch, j);
                off += !(fabs(ys[a] - y[b]) <= 1e-12 * fmax(1, fabs(y[b])));
                off += !(fabs(dxs[a] - dx[b]) <= 1e-12 * fmax(1, fabs(dx[b])));
            }
    CHECK_MSG(off == 0, "mixed layouts: %lld values of y or dx off", (long long)off);
    CHECK(tu_max_rel_diff(rv2, rv, c) <= 1e-12 && tu_max_rel_diff(rm2, rm, c) <= 1e-12);
    CHECK(same_on_all_ranks(rv2, sizeof rv2));
    void *all[] = {x, dy, y, dx, xs, dys, ys, dxs};
    for (size_t q = 0; q < sizeof all / sizeof all[0]; q++) free(all[q]);
}

static void test_merge(void) {
    /* rank r holds r + 1 values r, r + 1, ..., 2r per channel (rank 1: none, when there are
     * more than one) */
    bn_moments m[2];
    int64_t cnt = (size > 1 && rank == 1) ? 0 : rank + 1;
    double sum = 0, vals[64];
    for (int64_t k = 0; k < cnt; k++) sum += vals[k] = (double)(rank + k);
    double mean = cnt ? sum / (double)cnt : 0, m2 = 0;
    for (int64_t k = 0; k < cnt; k++) m2 += (vals[k] - mean) * (vals[k] - mean);
    m[0] = (bn_moments){cnt, mean, m2};
    m[1] = (bn_moments){0, 0, 0};
    CHECK(bn_mpi_merge_moments(m, 2, MPI_COMM_WORLD) == BN_OK);
    long double all_sum = 0, all_n = 0, all_m2 = 0;
    for (int r = 0; r < size; r++) {
        int64_t n = (size > 1 && r == 1) ? 0 : r + 1;
        for (int64_t k = 0; k < n; k++) all_sum += r + k, all_n += 1;
    }
    long double mu = all_sum / all_n;
    for (int r = 0; r < size; r++) {
        int64_t n = (size > 1 && r == 1) ? 0 : r + 1;
        for (int64_t k = 0; k < n; k++) all_m2 += (r + k - mu) * (r + k - mu);
    }
    CHECK(m[0].count == (int64_t)all_n && fabs(m[0].mean - (double)mu) <= 1e-14 &&
          fabs(m[0].m2 - (double)all_m2) <= 1e-12 * (double)all_m2);
    CHECK(m[1].count == 0 && m[1].m2 == 0);
    CHECK(same_on_all_ranks(m, sizeof m));
    bn_moments neg = {rank == 0 ? -1 : 1, 0, 0};
    CHECK(bn_mpi_merge_moments(&neg, 1, MPI_COMM_WORLD) == BN_ERR_ARGUMENT);
    CHECK(neg.count == (rank == 0 ? -1 : 1));
    /* the last rank with another c: BN_ERR_SHAPE on every rank, nothing written, no rank left
     * waiting (bnorm fit relies on it) */
    bn_moments two[2] = {{3, 1.0, 2.0}, {3, 1.0, 2.0}};
    bn_status st = bn_mpi_merge_moments(two, rank == size - 1 ? 1 : 2, MPI_COMM_WORLD);
    CHECK_MSG(st == (size > 1 ? BN_ERR_SHAPE : BN_OK), "merge, c differs: status %d", st);
    CHECK(two[0].count == 3 && two[0].mean == 1.0 && two[0].m2 == 2.0 && two[1].count == 3);
}

/* Ranks whose means are of opposite signs near DBL_MAX: their differences overflow, the merged
 * mean does not (the M2 is infinite indeed). */
static void test_merge_far_means(void) {
    bn_moments m = {1, rank % 2 ? 1.5e308 : -1.5e308, 0};
    CHECK(bn_mpi_merge_moments(&m, 1, MPI_COMM_WORLD) == BN_OK);
    long double mean = 0;
    for (int r = 0; r < size; r++) mean += (r % 2 ? 1.5e308L : -1.5e308L) / size;
    CHECK_MSG(m.count == size && fabsl(m.mean - mean) <= 1e-15L * 1.5e308L,
              "merged mean %.17g, want %.17Lg", m.mean, mean);
    CHECK(size == 1 ? m.m2 == 0 : isinf(m.m2) && m.m2 > 0);
    CHECK(same_on_all_ranks(&m, sizeof m));
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int64_t *cuts = malloc(sizeof(int64_t) * (size_t)(size + 1));
    const int64_t shapes[][3] = {{9, 3, 5}, {13, 20, 1}, {6, 5, 300}, {40, 33, 64}};
    for (int q = 0; q < 4; q++) {
        for (int kind = 0; kind < 3; kind++) {
            cuts_of(cuts, shapes[q][0], kind);
            for (int dt = 0; dt < 2; dt++)
                for (int lay = 0; lay < 2; lay++)
                    check_split(shapes[q][0], shapes[q][1], shapes[q][2], (bn_dtype)dt,
                                (bn_layout)lay, cuts, 100 + (uint64_t)q, 1.0);
        }
    }
    /* float64 near the top of the range: block sums that overflow (the merged variance is
     * finite), and a variance that overflows (y = bias, running_var inf on every rank) */
    for (int k = 0; k < 2; k++)
        for (int lay = 0; lay < 2; lay++) {
            cuts_of(cuts, 6, 0);
            check_split(6, 5, 300, BN_FLOAT64, (bn_layout)lay, cuts, 200 + (uint64_t)k,
                        k ? 1e154 : 1e151);
        }
    test_merge_far_means();
    test_errors();
    test_disagreement();
    test_mixed_layouts();
    test_merge();
    free(cuts);
    int counts[2] = {passed, failed}, total[2];
    MPI_Allreduce(counts, total, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) printf("%d ranks: %d passed, %d failed\n", size, total[0], total[1]);
    MPI_Finalize();
    return total[1] || total[0] == 0 ? 1 : 0;
}
