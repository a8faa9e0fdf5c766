/* comm_single.c - the command built without MPI: one rank, nothing to share (see comm.h). */
#include "comm.h"

#include <stdio.h>

cli_comm cli_comm_start(void) {
    if (cli_launched_by_mpi())
        fprintf(stderr, "bnorm: built without MPI: under mpirun every rank does all the work\n");
    cli_comm c = {0, 1};
    return c;
}

void cli_comm_end(void) {}

int cli_comm_failures(int failed) { return failed != 0; }

void cli_comm_broadcast(int64_t *v, int n) {
    (void)v;
    (void)n;
}

int64_t cli_comm_min(int64_t v) { return v; }

bn_status cli_comm_merge_moments(bn_moments *moments, int64_t c) {
    (void)moments;
    (void)c;
    return BN_OK;
}

bn_status cli_comm_sum(double *v, int64_t n) {
    (void)v;
    (void)n;
    return BN_OK;
}
