"""Loading libbnorm_mpi.so (bnorm_mpi.h) and declaring its functions for ctypes.

libbnorm_mpi.so holds the MPI calls; they use libbnorm.so, the copy bnorm._lib loaded (one
library per process, so bn_set_num_threads reaches them). It is looked for, in this order:
  1. the file named by the environment variable BNORM_MPI_LIBRARY (only there; see _env.py);
  2. libbnorm_mpi.so next to the libbnorm.so this package loaded (build/ after `make`);
  3. ctypes.util.find_library("bnorm_mpi").
The communicator is passed as its Fortran handle (mpi4py: comm.py2f()), which any MPI accepts.
MPI itself is initialized by mpi4py, which must be imported before a call.
"""

import ctypes
import ctypes.util
import os

from . import _lib
from ._env import MPI_LIBRARY_VAR

__all__ = ["load"]

_loaded = None


def _candidates():
    env = os.environ.get(MPI_LIBRARY_VAR)
    if env:
        return [env]
    found = [os.path.join(os.path.dirname(os.path.abspath(_lib.path)), "libbnorm_mpi.so")]
    system = ctypes.util.find_library("bnorm_mpi")
    if system:
        found.append(system)
    return found


def load():
    """The loaded libbnorm_mpi (loaded once), its functions declared; ImportError if missing."""
    global _loaded
    if _loaded is not None:
        return _loaded
    tried = []
    for where in _candidates():
        if os.path.sep not in where or os.path.exists(where):
            try:
                lib = ctypes.CDLL(where)
                break
            except OSError as e:
                tried.append("%s: %s" % (where, e))
        else:
            tried.append("%s does not exist" % where)
    else:
        raise ImportError("bnorm: cannot load libbnorm_mpi.so (build it with `make` where mpicc "
                          "is installed, or set " + MPI_LIBRARY_VAR + "). Tried:\n  "
                          + "\n  ".join(tried))
    vp, desc_p, opt_p = ctypes.c_void_p, ctypes.POINTER(_lib.BnDesc), ctypes.POINTER(_lib.BnOptions)
    fint = ctypes.c_int  # MPI_Fint is a C int in Open MPI and MPICH
    # y, save_mean, save_invstd, running_mean, running_var, num_batches_tracked, x, weight, bias
    lib.bn_mpi_forward_train_f.argtypes = [vp] * 9 + [desc_p, opt_p, fint]
    lib.bn_mpi_forward_train_f.restype = ctypes.c_int
    # dx, dweight, dbias, dy, x, save_mean, save_invstd, weight
    lib.bn_mpi_backward_train_f.argtypes = [vp] * 8 + [desc_p, fint]
    lib.bn_mpi_backward_train_f.restype = ctypes.c_int
    lib.bn_mpi_merge_moments_f.argtypes = [vp, ctypes.c_int64, fint]
    lib.bn_mpi_merge_moments_f.restype = ctypes.c_int
    _loaded = lib
    return lib
