"""The environment variables the package reads, in one place.

  BNORM_LIBRARY      the libbnorm.so to load, and only that one (_lib.py)
  BNORM_MPI_LIBRARY  the libbnorm_mpi.so to load, and only that one (_mpi.py)
  MPI_LAUNCHER_VARS  set by an MPI launcher in every rank's environment: SyncBatchNorm takes
                     MPI.COMM_WORLD when one is set. The same set as the command's, which
                     cli/launcher.c lists with the launchers that set each;
                     tests/python/test_cli.py checks that the two agree.
"""

import os

LIBRARY_VAR = "BNORM_LIBRARY"
MPI_LIBRARY_VAR = "BNORM_MPI_LIBRARY"
MPI_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE")


def launched_by_mpi():
    """Whether an MPI launcher (mpirun, mpiexec, srun) started this process."""
    return any(v in os.environ for v in MPI_LAUNCHER_VARS)
