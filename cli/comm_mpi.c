/* comm_mpi.c - the command's ranks over MPI (see comm.h); statistics merged in rank order by
 * libbnorm_mpi, so every rank gets the same bits. */
#include "bnorm_mpi.h"
#include "comm.h"

#include <limits.h>
#include <stdlib.h>

static int started;

cli_comm cli_comm_start(void) {
    cli_comm c = {0, 1};
    if (!cli_launched_by_mpi()) return c;
    int ready = 0;
    MPI_Initialized(&ready);
    if (!ready && MPI_Init(NULL, NULL) != MPI_SUCCESS) return c;
    started = !ready;
    MPI_Comm_rank(MPI_COMM_WORLD, &c.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c.size);
    return c;
}

void cli_comm_end(void) {
    if (started) MPI_Finalize();
    started = 0;
}

int cli_comm_failures(int failed) {
    if (!started) return failed != 0;
    int mine = failed != 0, all = mine;
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    return all;
}

void cli_comm_broadcast(int64_t *v, int n) {
    if (started) MPI_Bcast(v, n, MPI_INT64_T, 0, MPI_COMM_WORLD);
}

int64_t cli_comm_min(int64_t v) {
    int64_t all = v;
    if (started) MPI_Allreduce(&v, &all, 1, MPI_INT64_T, MPI_MIN, MPI_COMM_WORLD);
    return all;
}

bn_status cli_comm_merge_moments(bn_moments *moments, int64_t c) {
    return started ? bn_mpi_merge_moments(moments, c, MPI_COMM_WORLD) : BN_OK;
}

bn_status cli_comm_sum(double *v, int64_t n) {
    if (!started) return BN_OK;
    int size;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (n < 0 || n > INT_MAX / size) return BN_ERR_TOO_LARGE; /* n is the same on every rank */
    double *all = malloc(sizeof(double) * (size_t)(n ? n : 1) * (size_t)size);
    int ok = all != NULL, all_ok = 0;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (!all_ok) {
        free(all);
        return BN_ERR_NO_MEMORY;
    }
    MPI_Allgather(v, (int)n, MPI_DOUBLE, all, (int)n, MPI_DOUBLE, MPI_COMM_WORLD);
    for (int64_t k = 0; k < n; k++) { /* in rank order: the same bits on every rank */
        double s = 0;
        for (int r = 0; r < size; r++) s += all[(int64_t)r * n + k];
        v[k] = s;
    }
    free(all);
    return BN_OK;
}
