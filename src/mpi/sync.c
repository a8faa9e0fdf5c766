/* sync.c - batch normalization of a batch split between the ranks of an MPI communicator
 * (bnorm_mpi.h): each rank's statistics gathered on every rank and combined in rank order, with
 * every error decided by all ranks together before anything is written. */
#include "bnorm_mpi.h"
#include "validate.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* What every rank must give alike, and the status of a call where they do not. */
enum { SAME_C, SAME_DTYPE, SAME_EPS, SAME_MOMENTUM, SAME_CUMULATIVE, SAME_FLAGS, SAME_COUNT };
static const bn_status different[SAME_COUNT] = {BN_ERR_SHAPE, BN_ERR_UNSUPPORTED, BN_ERR_ARGUMENT,
                                                BN_ERR_ARGUMENT, BN_ERR_ARGUMENT, BN_ERR_ARGUMENT};

/* The bits of a double as an int64_t, -0.0 as 0.0 (equal values compare equal). */
static int64_t bits_of(double v) {
    int64_t b;
    v += 0.0;
    memcpy(&b, &v, sizeof b);
    return b;
}

/* same[SAME_COUNT]: this rank's values of what must agree (0 where a call has none). */
static void same_of(int64_t *same, int64_t c, int types, const bn_options *opt) {
    same[SAME_C] = c;
    same[SAME_DTYPE] = types; /* the tensor's dtype and the parameters' */
    same[SAME_EPS] = opt ? bits_of(opt->eps) : 0;
    /* the momentum is not used by a cumulative average */
    same[SAME_MOMENTUM] = opt && !opt->cumulative ? bits_of(opt->momentum) : 0;
    same[SAME_CUMULATIVE] = opt ? opt->cumulative : 0;
    same[SAME_FLAGS] = opt ? opt->flags : 0;
}

/* The statuses of all ranks decided together: the first failing rank's status (in rank order),
 * else, when the ranks disagree on one of same (see SAME_C ...), that one's status (the first
 * in that order), else BN_OK. One all-reduce before any data moves, so that the exchanges that
 * follow have the same sizes on every rank. Collective; allocates nothing, so a rank that
 * failed to allocate still takes part; a failed rank's same does not matter. */
static bn_status agree(bn_status local, const int64_t *same, MPI_Comm comm) {
    int rank;
    if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS) return BN_ERR_IO;
    /* key: rank * 1024 + |status| for a failed rank, so the minimum is the first failing one;
     * then the minimum of each value and of its complement ~v (the maximum, in reverse): the
     * value is the same on every rank when min == ~min(~v) */
    int64_t mine[1 + 2 * SAME_COUNT], all[1 + 2 * SAME_COUNT];
    mine[0] = local == BN_OK ? INT64_MAX : (int64_t)rank * 1024 - (int64_t)local;
    for (int k = 0; k < SAME_COUNT; k++) {
        mine[1 + k] = same[k];
        mine[1 + SAME_COUNT + k] = ~same[k]; /* reverses the order, never overflows */
    }
    if (MPI_Allreduce(mine, all, 1 + 2 * SAME_COUNT, MPI_INT64_T, MPI_MIN, comm) != MPI_SUCCESS)
        return BN_ERR_IO;
    if (all[0] != INT64_MAX) return (bn_status)(-(all[0] % 1024));
    for (int k = 0; k < SAME_COUNT; k++)
        if (all[1 + k] != ~all[1 + SAME_COUNT + k]) return different[k]; /* min != max */
    return BN_OK;
}

/* Whether count values of size bytes fit an MPI count (int). */
static int fits_mpi(int64_t count, size_t size) {
    return count >= 0 && (uint64_t)count <= (uint64_t)INT_MAX / size;
}

/* local: this rank's status so far, local_moments (c) its moments when BN_OK, same what must
 * agree (same_of). On BN_OK, stats (c) holds the merged moments of all ranks. gathered: scratch
 * of size * c moments, or NULL. */
static bn_status gather_and_merge(bn_moments *stats, bn_status local,
                                  const bn_moments *local_moments, bn_moments *gathered,
                                  int64_t c, const int64_t *same, MPI_Comm comm) {
    int size;
    if (MPI_Comm_size(comm, &size) != MPI_SUCCESS) return BN_ERR_IO;
    bn_status st = agree(local, same, comm);
    if (st != BN_OK) return st;
    const int bytes = (int)(c * (int64_t)sizeof(bn_moments));
    if (MPI_Allgather(local_moments, bytes, MPI_BYTE, gathered, bytes, MPI_BYTE, comm) !=
        MPI_SUCCESS)
        return BN_ERR_IO;
    /* in rank order: every rank merges the same parts in the same order, so the same bits */
    for (int64_t k = 0; k < c; k++) stats[k] = (bn_moments){0, 0.0, 0.0};
    for (int r = 0; r < size; r++) {
        st = bn_merge_moments(stats, gathered + (int64_t)r * c, c);
        if (st != BN_OK) return st; /* the same parts on every rank: the same status */
    }
    return BN_OK;
}

/* Scratch for size * c moments (and c more), or NULL: the status to report then. */
static bn_status take_moments(bn_moments **out, int64_t c, MPI_Comm comm) {
    int size;
    *out = NULL;
    if (MPI_Comm_size(comm, &size) != MPI_SUCCESS) return BN_ERR_IO;
    if (!fits_mpi(c, sizeof(bn_moments)) || (uint64_t)c > SIZE_MAX / sizeof(bn_moments) / (size + 2))
        return BN_ERR_TOO_LARGE;
    *out = malloc((size_t)(c ? c : 1) * (size_t)(size + 2) * sizeof(bn_moments));
    return *out ? BN_OK : BN_ERR_NO_MEMORY;
}

bn_status bn_mpi_merge_moments(bn_moments *moments, int64_t c, MPI_Comm comm) {
    bn_status st = c < 0 ? BN_ERR_SHAPE : !moments && c > 0 ? BN_ERR_NULL_POINTER : BN_OK;
    for (int64_t k = 0; st == BN_OK && k < c; k++)
        if (moments[k].count < 0) st = BN_ERR_ARGUMENT;
    bn_moments *scratch = NULL;
    if (st == BN_OK) st = take_moments(&scratch, c, comm);
    int64_t agreed_c = st == BN_OK ? c : 0, same[SAME_COUNT];
    same_of(same, agreed_c, 0, NULL); /* moments have no dtype: the same on all */
    bn_moments *merged = scratch, *gathered = scratch ? scratch + c : NULL;
    st = gather_and_merge(merged, st, moments, gathered, agreed_c, same, comm);
    if (st == BN_OK)
        for (int64_t k = 0; k < c; k++) moments[k] = merged[k];
    free(scratch);
    return st;
}

/* bn_forward_train_stats's argument checks, made before the ranks agree. */
static bn_status check_forward(const void *y, void *running_mean, void *running_var,
                               const int64_t *num_batches_tracked, const void *x,
                               const bn_desc *desc, const bn_options *opt) {
    BN_RETURN_IF_ERROR(bn_check_desc(desc));
    BN_RETURN_IF_ERROR(bn_check_options(opt));
    BN_RETURN_IF(bn_tensor_missing(x, desc) || bn_tensor_missing(y, desc), BN_ERR_NULL_POINTER);
    const int tracking = running_mean || running_var;
    BN_RETURN_IF(tracking && opt->cumulative && !num_batches_tracked, BN_ERR_NULL_POINTER);
    BN_RETURN_IF(tracking && num_batches_tracked && *num_batches_tracked == INT64_MAX,
                 BN_ERR_TOO_LARGE);
    return BN_OK;
}

bn_status bn_mpi_forward_train(void *y, double *save_mean, double *save_invstd,
                               void *running_mean, void *running_var,
                               int64_t *num_batches_tracked, const void *x, const void *weight,
                               const void *bias, const bn_desc *desc, const bn_options *opt,
                               MPI_Comm comm) {
    bn_status st = check_forward(y, running_mean, running_var, num_batches_tracked, x, desc, opt);
    const int64_t c = st == BN_OK ? desc->c : 0;
    bn_moments *scratch = NULL;
    if (st == BN_OK) st = take_moments(&scratch, c, comm);
    /* scratch: (C) this rank's moments, (C) the merged ones, (size, C) everyone's */
    bn_moments *mine = scratch, *stats = scratch ? scratch + c : NULL;
    bn_moments *gathered = scratch ? scratch + 2 * c : NULL;
    if (st == BN_OK) st = bn_compute_moments(mine, x, desc);
    int64_t same[SAME_COUNT] = {0};
    if (st == BN_OK) same_of(same, c, desc->dtype * 2 + (int)desc->params, opt);
    st = gather_and_merge(stats, st, mine, gathered, st == BN_OK ? c : 0, same, comm);
    /* the same merged moments on every rank: BN_ERR_COUNT is everyone's or no one's */
    if (st == BN_OK)
        st = bn_forward_train_stats(y, save_mean, save_invstd, running_mean, running_var,
                                    num_batches_tracked, x, weight, bias, stats, desc, opt);
    free(scratch);
    return st;
}

bn_status bn_mpi_backward_train(void *dx, void *dweight, void *dbias, const void *dy,
                                const void *x, const double *save_mean,
                                const double *save_invstd, const void *weight,
                                const bn_desc *desc, MPI_Comm comm) {
    int size;
    if (MPI_Comm_size(comm, &size) != MPI_SUCCESS) return BN_ERR_IO;
    bn_status st = bn_check_desc(desc);
    if (st == BN_OK && (bn_tensor_missing(dy, desc) || bn_tensor_missing(x, desc) ||
                        !save_mean || !save_invstd))
        st = BN_ERR_NULL_POINTER;
    const int64_t c = st == BN_OK ? desc->c : 0;
    if (st == BN_OK && (!fits_mpi(2 * c, sizeof(double)) ||
                        (uint64_t)c > SIZE_MAX / sizeof(double) / 2 / (size + 2)))
        st = BN_ERR_TOO_LARGE;
    /* sums: (2, C) this rank's, (2, C) the batch's, (size, 2, C) everyone's */
    double *sums = st == BN_OK ? malloc((size_t)(c ? c : 1) * 2 * (size_t)(size + 2) * 8) : NULL;
    if (st == BN_OK && !sums) st = BN_ERR_NO_MEMORY;
    if (st == BN_OK) st = bn_backward_sums(sums, sums + c, dy, x, save_mean, save_invstd, desc);
    const int64_t count = st == BN_OK ? bn_count(desc) : 0;
    int64_t same[SAME_COUNT] = {0};
    if (st == BN_OK) same_of(same, c, desc->dtype * 2 + (int)desc->params, NULL);
    st = agree(st, same, comm);
    int64_t total = 0;
    double *batch = sums ? sums + 2 * c : NULL, *gathered = sums ? sums + 4 * c : NULL;
    if (st == BN_OK &&
        (MPI_Allreduce(&count, &total, 1, MPI_INT64_T, MPI_SUM, comm) != MPI_SUCCESS ||
         MPI_Allgather(sums, (int)(2 * c), MPI_DOUBLE, gathered, (int)(2 * c), MPI_DOUBLE,
                       comm) != MPI_SUCCESS))
        st = BN_ERR_IO;
    if (st == BN_OK) {
        for (int64_t k = 0; k < 2 * c; k++) batch[k] = 0;
        for (int r = 0; r < size; r++) /* in rank order: the same bits on every rank */
            for (int64_t k = 0; k < 2 * c; k++) batch[k] += gathered[(int64_t)r * 2 * c + k];
        if (dx)
            st = bn_backward_train_sums(dx, dy, x, save_mean, save_invstd, weight, batch,
                                        batch + c, total, desc);
    }
    if (st == BN_OK) { /* this rank's share, rounded once as bn_backward_train's */
        const bn_dtype params = bn_param_dtype(desc);
        if (dweight) bn_convert(dweight, params, sums + c, BN_FLOAT64, c);
        if (dbias) bn_convert(dbias, params, sums, BN_FLOAT64, c);
    }
    free(sums);
    return st;
}

bn_status bn_mpi_merge_moments_f(bn_moments *moments, int64_t c, MPI_Fint comm) {
    return bn_mpi_merge_moments(moments, c, MPI_Comm_f2c(comm));
}

bn_status bn_mpi_forward_train_f(void *y, double *save_mean, double *save_invstd,
                                 void *running_mean, void *running_var,
                                 int64_t *num_batches_tracked, const void *x,
                                 const void *weight, const void *bias, const bn_desc *desc,
                                 const bn_options *opt, MPI_Fint comm) {
    return bn_mpi_forward_train(y, save_mean, save_invstd, running_mean, running_var,
                                num_batches_tracked, x, weight, bias, desc, opt,
                                MPI_Comm_f2c(comm));
}

bn_status bn_mpi_backward_train_f(void *dx, void *dweight, void *dbias, const void *dy,
                                  const void *x, const double *save_mean,
                                  const double *save_invstd, const void *weight,
                                  const bn_desc *desc, MPI_Fint comm) {
    return bn_mpi_backward_train(dx, dweight, dbias, dy, x, save_mean, save_invstd, weight,
                                 desc, MPI_Comm_f2c(comm));
}
