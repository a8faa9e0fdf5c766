/* launcher.c - whether an MPI launcher (mpirun, mpiexec, srun) started this process, told by the
 * environment variables it gives every rank. This is the one list of them; python/bnorm/_env.py
 * holds the same for SyncBatchNorm, and tests/python/test_cli.py checks that the two agree:
 *   OMPI_COMM_WORLD_SIZE  Open MPI's mpirun / mpiexec
 *   PMIX_RANK             PMIx launchers: Open MPI 5's prterun, srun --mpi=pmix
 *   PMI_RANK, PMI_SIZE    MPICH's and Intel MPI's Hydra mpiexec, srun --mpi=pmi2 */
#include "comm.h"

#include <stdlib.h>

static const char *const launcher_vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK",
                                            "PMI_SIZE"};

int cli_launched_by_mpi(void) {
    for (size_t k = 0; k < sizeof launcher_vars / sizeof launcher_vars[0]; k++)
        if (getenv(launcher_vars[k])) return 1;
    return 0;
}
