"""Loading the bnorm shared library and declaring its C functions for ctypes.

The library is looked for, in this order:

  1. the file named by the environment variable BNORM_LIBRARY (see _env.py), if it is set (and
     only there: a wrong path is an error, not a reason to pick up some other copy);
  2. for a package installed by `make install`: the libbnorm.so installed with it, in the
     LIBDIR its _installed.py names (so no environment variable or ldconfig is needed);
     otherwise build/libbnorm.so of the source tree this package sits in
     (python/bnorm/../../build), which is what `make` produces;
  3. whatever ctypes.util.find_library("bnorm") finds (an installed libbnorm.so).

Every function of include/bnorm.h is declared with its argument and result types. Data pointers
are declared as c_void_p, so callers pass plain integers (ptr(): numpy's ctypes.data, torch's
data_ptr()) or None for NULL; bn_dtype() gives the element type of a numpy or torch dtype.
"""

import ctypes
import ctypes.util
import math
import os

from ._env import LIBRARY_VAR

__all__ = [
    "lib", "path", "BnormError", "check", "make_desc", "make_options", "status_string",
    "version_string", "bn_dtype", "ptr", "BnDesc", "BnOptions", "BnMoments",
    "BN_FLOAT32", "BN_FLOAT64", "BN_BFLOAT16", "BN_FLOAT16", "BN_CHANNELS_FIRST",
    "BN_CHANNELS_LAST", "BN_PARAMS_AS_TENSOR", "BN_PARAMS_FLOAT32", "STATUS_NAMES",
]

# Values pinned by include/bnorm.h.
BN_FLOAT32, BN_FLOAT64, BN_BFLOAT16, BN_FLOAT16 = 0, 1, 2, 3
BN_CHANNELS_FIRST, BN_CHANNELS_LAST = 0, 1
STATUS_NAMES = {
    0: "BN_OK",
    -1: "BN_ERR_NULL_POINTER",
    -2: "BN_ERR_SHAPE",
    -3: "BN_ERR_TOO_LARGE",
    -4: "BN_ERR_ARGUMENT",
    -5: "BN_ERR_COUNT",
    -6: "BN_ERR_UNSUPPORTED",
    -7: "BN_ERR_IO",
    -8: "BN_ERR_FORMAT",
    -9: "BN_ERR_NO_MEMORY",
    -10: "BN_ERR_NOT_FINITE",
}


# The element types the library takes, by name: a numpy dtype (np.dtype(np.float32)) and a
# torch dtype (torch.float32) both end their str() in "float32".
_DTYPES = {"float32": BN_FLOAT32, "float64": BN_FLOAT64}


def bn_dtype(dtype):
    """The library's element type (BN_FLOAT32, BN_FLOAT64) of a numpy or torch dtype; None for
    any other (float16, integers, non-native byte order...)."""
    return _DTYPES.get(str(dtype).rpartition(".")[2])


def ptr(a):
    """The address of the first element of a numpy array or a torch tensor; None (NULL) for
    None."""
    if a is None:
        return None
    data_ptr = getattr(a, "data_ptr", None)  # torch
    return data_ptr() if data_ptr is not None else a.ctypes.data


BN_PARAMS_AS_TENSOR, BN_PARAMS_FLOAT32 = 0, 1  # enum bn_params


class BnDesc(ctypes.Structure):
    """struct bn_desc: sizes (n, c, s), element type, memory layout and the parameters' type."""
    _fields_ = [
        ("n", ctypes.c_int64),
        ("c", ctypes.c_int64),
        ("s", ctypes.c_int64),
        ("dtype", ctypes.c_int),   # enum bn_dtype
        ("layout", ctypes.c_int),  # enum bn_layout
        ("params", ctypes.c_int),  # enum bn_params: 0 the tensor's dtype, 1 float32
    ]


class BnOptions(ctypes.Structure):
    """struct bn_options, field for field as in the header (make_options gives its defaults)."""
    _fields_ = [
        ("eps", ctypes.c_double),
        ("momentum", ctypes.c_double),
        ("cumulative", ctypes.c_int),
        ("flags", ctypes.c_int),                 # BN_MOMENTUM_OF_OLD | ...
        ("virtual_batch", ctypes.c_int64),       # ghost batch size, 0: none
        ("renorm_momentum", ctypes.c_double),
        ("rmin", ctypes.c_double),
        ("rmax", ctypes.c_double),
        ("dmax", ctypes.c_double),
        ("reserved", ctypes.c_int64),            # must be 0
    ]


# The bits of bn_options.flags, as in the header.
MOMENTUM_OF_OLD = 1 << 0
BIASED_RUNNING_VAR = 1 << 1
RUNNING_SUMS = 1 << 2
FIX_GAMMA = 1 << 3
ONE_VALUE_OK = 1 << 4
STORED_STATS = 1 << 5
FREEZE_RUNNING = 1 << 6


class BnMoments(ctypes.Structure):
    """struct bn_moments: count, mean and M2 = sum (x - mean)^2 of one channel's values."""
    _fields_ = [
        ("count", ctypes.c_int64),
        ("mean", ctypes.c_double),
        ("m2", ctypes.c_double),
    ]


def _candidates():
    """The places to try, in order, as (description, path-or-name)."""
    env = os.environ.get(LIBRARY_VAR)
    if env:
        return [(LIBRARY_VAR, env)]
    try:
        from ._installed import LIBDIR  # written by make install
        found = [("installed with the package", os.path.join(LIBDIR, "libbnorm.so"))]
    except ImportError:
        here = os.path.dirname(os.path.abspath(__file__))
        repo = os.path.dirname(os.path.dirname(here))
        found = [("source tree build", os.path.join(repo, "build", "libbnorm.so"))]
    system = ctypes.util.find_library("bnorm")
    found.append(("ctypes.util.find_library('bnorm')", system))
    return found


def _load():
    tried = []
    for what, where in _candidates():
        if where is None:
            tried.append("%s: nothing found" % what)
            continue
        if what in ("source tree build", "installed with the package") and not os.path.exists(
                where):
            tried.append("%s: %s does not exist" % (what, where))
            continue
        try:
            return ctypes.CDLL(where), where
        except OSError as e:
            tried.append("%s: %s: %s" % (what, where, e))
            if what == LIBRARY_VAR:
                break
    raise ImportError(
        "bnorm: cannot load the bnorm shared library (run `make` in the source tree, or set "
        + LIBRARY_VAR + " to the path of libbnorm.so). Tried:\n  " + "\n  ".join(tried))


lib, path = _load()

_vp = ctypes.c_void_p
_desc_p = ctypes.POINTER(BnDesc)
_opt_p = ctypes.POINTER(BnOptions)

# (name, result type, argument types), in the header's order.
_SIGNATURES = [
    ("bn_status_string", ctypes.c_char_p, [ctypes.c_int]),
    ("bn_version_string", ctypes.c_char_p, []),
    ("bn_desc_from_dims", ctypes.c_int,
     [_desc_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int64), ctypes.c_int, ctypes.c_int]),
    # y, save_mean, save_invstd, running_mean, running_var, num_batches_tracked, x, weight, bias
    ("bn_forward_train", ctypes.c_int, [_vp] * 9 + [_desc_p, _opt_p]),
    # y, x, running_mean, running_var, weight, bias, desc, eps
    ("bn_forward_eval", ctypes.c_int, [_vp] * 6 + [_desc_p, ctypes.c_double]),
    # y, save_mean, save_invstd, r, d, running_mean, running_var, moving_stddev, renorm_mean,
    # renorm_stddev, num_batches_tracked, x, weight, bias, desc, opt
    ("bn_forward_train_renorm", ctypes.c_int, [_vp] * 14 + [_desc_p, _opt_p]),
    # dx, dweight, dbias, dy, x, save_mean, save_invstd, weight, desc
    ("bn_backward_train", ctypes.c_int, [_vp] * 8 + [_desc_p]),
    # dx, dweight, dbias, dy, x, running_mean, running_var, weight, desc, eps
    ("bn_backward_eval", ctypes.c_int, [_vp] * 8 + [_desc_p, ctypes.c_double]),
    # fused with a ReLU: y, save_mean, save_invstd, running_mean, running_var,
    # num_batches_tracked, x, z, weight, bias, desc, opt
    ("bn_forward_train_relu", ctypes.c_int, [_vp] * 10 + [_desc_p, _opt_p]),
    # y, x, z, running_mean, running_var, weight, bias, desc, eps
    ("bn_forward_eval_relu", ctypes.c_int, [_vp] * 7 + [_desc_p, ctypes.c_double]),
    # dx, dz, dweight, dbias, dy, y, x, save_mean, save_invstd, weight, desc
    ("bn_backward_train_relu", ctypes.c_int, [_vp] * 10 + [_desc_p]),
    # dx, dz, dweight, dbias, dy, y, x, running_mean, running_var, weight, desc, eps
    ("bn_backward_eval_relu", ctypes.c_int, [_vp] * 10 + [_desc_p, ctypes.c_double]),
    # dx, dweight, dbias, dy, x, save_mean, save_invstd, weight, desc, opt
    ("bn_backward", ctypes.c_int, [_vp] * 8 + [_desc_p, _opt_p]),
    # dx, dweight, dbias, dy, x, save_mean, save_invstd, r, d, weight, desc, opt
    ("bn_backward_renorm", ctypes.c_int, [_vp] * 10 + [_desc_p, _opt_p]),
    # the stages of a split batch: moments, x, desc
    ("bn_compute_moments", ctypes.c_int, [_vp, _vp, _desc_p]),
    # acc, part, c
    ("bn_merge_moments", ctypes.c_int, [_vp, _vp, ctypes.c_int64]),
    # y, save_mean, save_invstd, running_mean, running_var, num_batches_tracked, x, weight, bias,
    # stats, desc, opt
    ("bn_forward_train_stats", ctypes.c_int, [_vp] * 10 + [_desc_p, _opt_p]),
    # sum_dy, sum_dy_xhat, dy, x, save_mean, save_invstd, desc
    ("bn_backward_sums", ctypes.c_int, [_vp] * 6 + [_desc_p]),
    # dx, dy, x, save_mean, save_invstd, weight, sum_dy, sum_dy_xhat, count, desc
    ("bn_backward_train_sums", ctypes.c_int, [_vp] * 8 + [ctypes.c_int64, _desc_p]),
    # dst, dst_dtype, src, src_dtype, count
    ("bn_convert", ctypes.c_int, [_vp, ctypes.c_int, _vp, ctypes.c_int, ctypes.c_int64]),
    # channel, index, x, desc
    ("bn_check_finite", ctypes.c_int,
     [ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64), _vp, _desc_p]),
    # weight_out, bias_out, weight, bias, running_mean, running_var, bn_weight, bn_bias,
    # c_out, inner, eps, dtype
    ("bn_fold_conv", ctypes.c_int,
     [_vp] * 8 + [ctypes.c_int64, ctypes.c_int64, ctypes.c_double, ctypes.c_int]),
    # the same with c_in, c_out, groups, kernel
    ("bn_fold_conv_transpose", ctypes.c_int,
     [_vp] * 8 + [ctypes.c_int64] * 4 + [ctypes.c_double, ctypes.c_int]),
]

for _name, _res, _args in _SIGNATURES:
    _f = getattr(lib, _name)
    _f.restype = _res
    _f.argtypes = _args


def status_string(status):
    """bn_status_string(status) as a str."""
    return lib.bn_status_string(int(status)).decode("utf-8", "replace")


def version_string():
    """bn_version_string() as a str, e.g. "0.1.0"."""
    return lib.bn_version_string().decode("ascii", "replace")


class BnormError(RuntimeError):
    """A bnorm C function returned an error status.

    status is the bn_status value (negative), name its enum name (BN_ERR_...), function the C
    function that failed; str() of the error is the library's own sentence for the status.
    """

    def __init__(self, status, function=None):
        self.status = int(status)
        self.name = STATUS_NAMES.get(self.status, "unknown status")
        self.function = function
        self.message = status_string(self.status)
        where = function + ": " if function else ""
        super().__init__("%s%s (%s)" % (where, self.message, self.name))


def check(status, function=None):
    """Raise BnormError unless status is BN_OK."""
    if status != 0:
        raise BnormError(status, function)


def make_desc(dims, dtype, layout):
    """A BnDesc for a tensor of logical dims (N, C, ...) through bn_desc_from_dims.

    dtype is one of BN_FLOAT32, BN_FLOAT64, BN_BFLOAT16, BN_FLOAT16, layout BN_CHANNELS_FIRST
    or BN_CHANNELS_LAST; the parameters are of the tensor's dtype (set desc.params to
    BN_PARAMS_FLOAT32 for float32 ones beside a 16-bit tensor).
    """
    dims = [int(d) for d in dims]
    arr = (ctypes.c_int64 * max(len(dims), 1))(*dims)
    desc = BnDesc()
    check(lib.bn_desc_from_dims(ctypes.byref(desc), len(dims), arr, dtype, layout),
          "bn_desc_from_dims")
    return desc


def make_options(eps=1e-5, momentum=0.1, cumulative=False, flags=0, virtual_batch=0,
                 renorm_momentum=None, rmin=0.0, rmax=math.inf, dmax=math.inf):
    """A BnOptions; the defaults are BN_OPTIONS_DEFAULT (renorm_momentum: momentum's value)."""
    if renorm_momentum is None:
        renorm_momentum = 0.1 if cumulative else momentum
    return BnOptions(float(eps), float(momentum), 1 if cumulative else 0, int(flags),
                     int(virtual_batch), float(renorm_momentum), float(rmin), float(rmax),
                     float(dmax), 0)
