"""SyncBatchNorm's communicator over MPI: the ranks of an mpi4py communicator exchange the small
decisions as Python objects and the data as buffers (the same interface as _dist.Communicator:
rank, size, allgather(obj), allgather_tensor(t); see there).

    # mpirun -np 4 python3 train.py: SyncBatchNorm(C) uses MPI.COMM_WORLD (world()),
    # or SyncBatchNorm(C, process_group=comm) any mpi4py communicator
"""

import torch as _torch

__all__ = ["Communicator", "world"]


def world():
    """The communicator of MPI.COMM_WORLD; ImportError naming the package when mpi4py is
    missing."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("bnorm SyncBatchNorm: launched by mpirun, but mpi4py is missing "
                          "(apt-get install python3-mpi4py): %s" % e) from e
    return Communicator(MPI.COMM_WORLD)


class Communicator:
    """The ranks of comm: an mpi4py communicator, or anything with py2f() (a Fortran handle)."""

    def __init__(self, comm):
        from mpi4py import MPI
        self.comm = comm if isinstance(comm, MPI.Comm) else MPI.Comm.f2py(comm.py2f())
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def allgather_tensor(self, t):
        t = t.contiguous()
        out = _torch.empty((self.size,) + tuple(t.shape), dtype=t.dtype)
        self.comm.Allgather(t.numpy(), out.numpy())
        return out
