/* comm.h - how a command shares its work between the ranks of an MPI job: comm_mpi.c when the
 * command is built with mpicc (and then MPI is started only when the process was launched by
 * mpirun / mpiexec), comm_single.c otherwise (one rank). */
#ifndef BN_CLI_COMM_H
#define BN_CLI_COMM_H

#include "bnorm.h"

#include <stdint.h>

typedef struct cli_comm {
    int rank, size;
} cli_comm;

/* Whether an MPI launcher started this process (launcher.c lists the variables it looks at). */
int cli_launched_by_mpi(void);

/* Starts MPI when the process was launched by an MPI launcher; else rank 0 of 1. */
cli_comm cli_comm_start(void);

/* Finalizes MPI if cli_comm_start started it. */
void cli_comm_end(void);

/* Collective: the number of ranks whose `failed` is nonzero (so all ranks stop together). */
int cli_comm_failures(int failed);

/* Collective: v (n; n the same on every rank) of rank 0 copied to every rank. */
void cli_comm_broadcast(int64_t *v, int n);

/* Collective: the smallest of the ranks' v. */
int64_t cli_comm_min(int64_t v);

/* Collective: moments (c) of this rank in, the moments of all ranks merged in rank order out. */
bn_status cli_comm_merge_moments(bn_moments *moments, int64_t c);

/* Collective: v (n) of this rank in, the sum over the ranks (added in rank order) out. */
bn_status cli_comm_sum(double *v, int64_t n);

#endif
