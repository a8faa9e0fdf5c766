"""bnorm: batch normalization with PyTorch's semantics, on numpy arrays (ctypes over libbnorm).

    import numpy as np, bnorm
    x = np.random.randn(8, 3, 5, 5).astype(np.float32)
    running_mean, running_var = np.zeros(3, np.float32), np.ones(3, np.float32)
    y = bnorm.batch_norm(x, running_mean, running_var, training=True)   # stats updated in place

batch_norm() has the arguments and meaning of torch.nn.functional.batch_norm. The lower-level
forward_train / forward_eval / backward_train / backward_eval map one to one onto the C functions
and also give the saved statistics and the gradients. bnorm.torch (imported separately, it needs
torch) has drop-in BatchNorm1d/2d/3d modules. fold_conv_bn and fold_linear_bn (_fold.py) fold an
eval-mode batch norm into the convolution or linear layer before it.

Arrays: float32 or float64, shape (N, C, ...) with ndim >= 2; per-channel arrays have C elements of
the input's dtype. Memory layout is taken as it is, without a copy, when the array is C-contiguous
(channels-first, NCHW) or when its memory is channels-last (C varies fastest, then the spatial
dims in order, then N: e.g. np.moveaxis(nhwc, -1, 1)); any other strides are copied to a
C-contiguous array first. Results come back in the input's layout.

Differences from torch.nn.functional.batch_norm, all on arguments torch accepts but should not:
eps < 0 and momentum outside [0, 1] raise BnormError (torch computes with them), sizes are checked
even for an empty input, and other dtypes raise TypeError instead of RuntimeError.
"""

import ctypes

import numpy as np

from ._lib import BnormError, ptr as _ptr, version_string
from . import _lib
from ._fold import fold_conv_bn, fold_linear_bn
from ._options import (Options, PRESETS, MOMENTUM_OF_OLD, BIASED_RUNNING_VAR, RUNNING_SUMS,
                       FIX_GAMMA, ONE_VALUE_OK, STORED_STATS, FREEZE_RUNNING)

__all__ = [
    "batch_norm", "forward_train", "forward_eval", "backward_train", "backward_eval",
    "forward_train_renorm", "backward", "backward_renorm", "Options", "PRESETS",
    "MOMENTUM_OF_OLD", "BIASED_RUNNING_VAR", "RUNNING_SUMS", "FIX_GAMMA", "ONE_VALUE_OK",
    "STORED_STATS", "FREEZE_RUNNING",
    "check_finite", "fold_conv_bn", "fold_linear_bn", "BnormError", "__version__",
]

__version__ = version_string()


# ------------------------------------------------------------------------------------------------
# Arrays to C pointers (_ptr: _lib.ptr)

def _tensor(name, a):
    """A float32/float64 (N, C, ...) ndarray and its C layout, copied only if its memory is
    neither channels-first nor channels-last (or is misaligned)."""
    a = np.asarray(a)
    if _lib.bn_dtype(a.dtype) is None:
        raise TypeError("bnorm: %s must be float32 or float64, got %s" % (name, a.dtype))
    if a.ndim < 2:
        raise ValueError("bnorm: %s must have at least 2 dimensions (N, C, ...), got shape %s"
                         % (name, a.shape))
    if a.flags.aligned:
        if a.flags.c_contiguous:
            return a, _lib.BN_CHANNELS_FIRST
        # channels-last: moving C to the end gives a C-contiguous (N, ..., C) array
        if a.ndim >= 3 and np.moveaxis(a, 1, -1).flags.c_contiguous:
            return a, _lib.BN_CHANNELS_LAST
    return np.array(a, order="C"), _lib.BN_CHANNELS_FIRST


def _like(a, layout, dtype=None):
    """A new array of a's shape in the given layout."""
    dtype = a.dtype if dtype is None else dtype
    if layout == _lib.BN_CHANNELS_FIRST:
        return np.empty(a.shape, dtype)
    nsc = np.empty(np.moveaxis(a, 1, -1).shape, dtype)  # (N, ..., C) memory
    return np.moveaxis(nsc, -1, 1)


def _in_layout(a, like, layout):
    """a (same shape as like) with its memory in the given layout; a itself if it already is."""
    a = np.asarray(a)
    if a.shape != like.shape:
        raise ValueError("bnorm: gradient shape %s does not match input shape %s"
                         % (a.shape, like.shape))
    if a.dtype != like.dtype:
        raise TypeError("bnorm: gradient dtype %s does not match input dtype %s"
                        % (a.dtype, like.dtype))
    if a.flags.aligned:
        if layout == _lib.BN_CHANNELS_FIRST and a.flags.c_contiguous:
            return a
        if layout == _lib.BN_CHANNELS_LAST and np.moveaxis(a, 1, -1).flags.c_contiguous:
            return a
    out = _like(like, layout)
    out[...] = a
    return out


def _channel(name, a, c, dtype):
    """A read-only per-channel argument: None, or a contiguous 1-d array of c elements."""
    if a is None:
        return None
    a = np.asarray(a)
    if a.dtype != dtype:
        raise TypeError("bnorm: %s has dtype %s but the input has %s" % (name, a.dtype, dtype))
    if a.size != c:
        raise RuntimeError("%s should contain %d elements not %d" % (name, c, a.size))
    return np.ascontiguousarray(a.reshape(-1))


class _InOut:
    """A per-channel array the C library updates in place.

    buf is what C writes (the array itself when it is contiguous and aligned, else a copy);
    finish() copies the copy back after the call succeeded.
    """

    def __init__(self, name, a, n, dtype):
        self.target = a
        self.buf = None
        if a is None:
            return
        if not isinstance(a, np.ndarray):
            raise TypeError("bnorm: %s must be a numpy array (it is updated in place)" % name)
        if a.dtype != dtype:
            raise TypeError("bnorm: %s has dtype %s but must be %s" % (name, a.dtype, dtype))
        if a.size != n:
            raise RuntimeError("%s should contain %d elements not %d" % (name, n, a.size))
        if not a.flags.writeable:
            raise ValueError("bnorm: %s is read-only but is updated in place" % name)
        if a.flags.c_contiguous and a.flags.aligned:
            self.buf = a
        else:
            self.buf = np.array(a, order="C")

    def finish(self):
        if self.buf is not None and self.buf is not self.target:
            np.copyto(self.target, self.buf.reshape(self.target.shape))


# ------------------------------------------------------------------------------------------------
# The C functions, one to one

def _ghosts(x, options):
    """How many ghost batches the options make of x's batch (1: none)."""
    v = options.virtual_batch if options is not None else 0
    return x.shape[0] // v if v and x.shape[0] % v == 0 and x.shape[0] > v else 1


def forward_train(x, weight=None, bias=None, running_mean=None, running_var=None, momentum=0.1,
                  eps=1e-5, num_batches_tracked=None, cumulative=False, options=None):
    """bn_forward_train: normalize x with its batch statistics.

    running_mean / running_var (C elements, x's dtype) are blended with the batch statistics in
    place when given; num_batches_tracked, a one-element int64 array, is incremented in place when
    given and a running statistic is given; cumulative=True uses the factor 1/num_batches_tracked
    (torch's momentum=None) and then needs num_batches_tracked. options (an Options, e.g.
    PRESETS["onnx"]) replaces momentum, eps and cumulative with a whole convention.
    Returns (y, save_mean, save_invstd); the saved statistics are float64 arrays of C elements
    ((N / virtual_batch) * C with ghost batches: ghost g's channel c at g * C + c).
    """
    if options is None:
        options = Options(eps, momentum, cumulative, renorm_momentum=0.1 if cumulative else momentum)
    return _train(x, weight, bias, running_mean, running_var, num_batches_tracked, options)


def forward_train_renorm(x, renorm_mean, renorm_stddev, weight=None, bias=None, running_mean=None,
                         running_var=None, moving_stddev=None, num_batches_tracked=None,
                         options=PRESETS["keras"]):
    """bn_forward_train_renorm: batch renormalization (tf-keras's renorm=True).

    renorm_mean, renorm_stddev and (with running_var) moving_stddev are C-element arrays of x's
    dtype updated in place, as the running statistics. Returns (y, save_mean, save_invstd, r, d),
    r and d the corrections (float64, C) that backward_renorm takes.
    """
    return _train(x, weight, bias, running_mean, running_var, num_batches_tracked, options,
                  renorm=(renorm_mean, renorm_stddev, moving_stddev))


def _train(x, weight, bias, running_mean, running_var, num_batches_tracked, options,
           renorm=None):
    x, layout = _tensor("input", x)
    c, dtype = x.shape[1], x.dtype
    weight = _channel("weight", weight, c, dtype)
    bias = _channel("bias", bias, c, dtype)
    rm = _InOut("running_mean", running_mean, c, dtype)
    rv = _InOut("running_var", running_var, c, dtype)
    nbt = _InOut("num_batches_tracked", num_batches_tracked, 1, np.dtype(np.int64))
    desc = _lib.make_desc(x.shape, _lib.bn_dtype(dtype), layout)
    y = _like(x, layout)
    saved = c * _ghosts(x, options)
    save_mean = np.empty(saved, np.float64)
    save_invstd = np.empty(saved, np.float64)
    inouts = [rm, rv, nbt]
    if renorm is None:
        status = _lib.lib.bn_forward_train(
            _ptr(y), _ptr(save_mean), _ptr(save_invstd), _ptr(rm.buf), _ptr(rv.buf),
            _ptr(nbt.buf), _ptr(x), _ptr(weight), _ptr(bias), desc, options.c_struct())
        _lib.check(status, "bn_forward_train")
        result = (y, save_mean, save_invstd)
    else:
        ren_m, ren_s, ms = (_InOut(name, a, c, dtype) for name, a in zip(
            ("renorm_mean", "renorm_stddev", "moving_stddev"), renorm))
        r, d = np.empty(c, np.float64), np.empty(c, np.float64)
        status = _lib.lib.bn_forward_train_renorm(
            _ptr(y), _ptr(save_mean), _ptr(save_invstd), _ptr(r), _ptr(d), _ptr(rm.buf),
            _ptr(rv.buf), _ptr(ms.buf), _ptr(ren_m.buf), _ptr(ren_s.buf), _ptr(nbt.buf),
            _ptr(x), _ptr(weight), _ptr(bias), desc, options.c_struct())
        _lib.check(status, "bn_forward_train_renorm")
        inouts += [ren_m, ren_s, ms]
        result = (y, save_mean, save_invstd, r, d)
    for a in inouts:
        a.finish()
    return result


def forward_eval(x, running_mean, running_var, weight=None, bias=None, eps=1e-5):
    """bn_forward_eval: normalize x with the stored statistics. Returns y."""
    x, layout = _tensor("input", x)
    c, dtype = x.shape[1], x.dtype
    running_mean = _channel("running_mean", running_mean, c, dtype)
    running_var = _channel("running_var", running_var, c, dtype)
    weight = _channel("weight", weight, c, dtype)
    bias = _channel("bias", bias, c, dtype)
    desc = _lib.make_desc(x.shape, _lib.bn_dtype(dtype), layout)
    y = _like(x, layout)
    status = _lib.lib.bn_forward_eval(_ptr(y), _ptr(x), _ptr(running_mean), _ptr(running_var),
                                      _ptr(weight), _ptr(bias), desc, float(eps))
    _lib.check(status, "bn_forward_eval")
    return y


def backward_train(dy, x, save_mean, save_invstd, weight=None):
    """bn_backward_train: gradients of forward_train, from the statistics it saved.

    Returns (dx, dweight, dbias): dx in x's layout, dweight = sum(dy * xhat), dbias = sum(dy).
    """
    x, layout = _tensor("input", x)
    c, dtype = x.shape[1], x.dtype
    dy = _in_layout(dy, x, layout)
    save_mean = _channel("save_mean", save_mean, c, np.dtype(np.float64))
    save_invstd = _channel("save_invstd", save_invstd, c, np.dtype(np.float64))
    weight = _channel("weight", weight, c, dtype)
    desc = _lib.make_desc(x.shape, _lib.bn_dtype(dtype), layout)
    dx = _like(x, layout)
    dweight, dbias = np.empty(c, dtype), np.empty(c, dtype)
    status = _lib.lib.bn_backward_train(_ptr(dx), _ptr(dweight), _ptr(dbias), _ptr(dy), _ptr(x),
                                        _ptr(save_mean), _ptr(save_invstd), _ptr(weight), desc)
    _lib.check(status, "bn_backward_train")
    return dx, dweight, dbias


def backward_eval(dy, x, running_mean, running_var, weight=None, eps=1e-5):
    """bn_backward_eval: gradients of forward_eval (the stored statistics are constants).

    Returns (dx, dweight, dbias): dx = dy * invstd * weight, dweight = sum(dy * xhat),
    dbias = sum(dy), with invstd = 1 / sqrt(running_var + eps).
    """
    x, layout = _tensor("input", x)
    c, dtype = x.shape[1], x.dtype
    dy = _in_layout(dy, x, layout)
    running_mean = _channel("running_mean", running_mean, c, dtype)
    running_var = _channel("running_var", running_var, c, dtype)
    weight = _channel("weight", weight, c, dtype)
    desc = _lib.make_desc(x.shape, _lib.bn_dtype(dtype), layout)
    dx = _like(x, layout)
    dweight, dbias = np.empty(c, dtype), np.empty(c, dtype)
    status = _lib.lib.bn_backward_eval(_ptr(dx), _ptr(dweight), _ptr(dbias), _ptr(dy), _ptr(x),
                                       _ptr(running_mean), _ptr(running_var), _ptr(weight), desc,
                                       float(eps))
    _lib.check(status, "bn_backward_eval")
    return dx, dweight, dbias


def backward(dy, x, save_mean, save_invstd, weight=None, options=PRESETS["pytorch"], r=None,
             d=None, affine_grads=True):
    """bn_backward (bn_backward_renorm when r and d are given): the gradients of forward_train
    (forward_train_renorm) with the same options, from the statistics it saved: batch or
    stored statistics (STORED_STATS), ghost batches, FIX_GAMMA. Returns (dx, dweight, dbias);
    affine_grads=False skips dweight and dbias (None), as frozen batch norm does.
    """
    x, layout = _tensor("input", x)
    c, dtype = x.shape[1], x.dtype
    dy = _in_layout(dy, x, layout)
    saved = c * _ghosts(x, options)
    save_mean = _channel("save_mean", save_mean, saved, np.dtype(np.float64))
    save_invstd = _channel("save_invstd", save_invstd, saved, np.dtype(np.float64))
    weight = _channel("weight", weight, c, dtype)
    desc = _lib.make_desc(x.shape, _lib.bn_dtype(dtype), layout)
    dx = _like(x, layout)
    dweight, dbias = (np.empty(c, dtype), np.empty(c, dtype)) if affine_grads else (None, None)
    if r is None and d is None:
        status = _lib.lib.bn_backward(_ptr(dx), _ptr(dweight), _ptr(dbias), _ptr(dy), _ptr(x),
                                      _ptr(save_mean), _ptr(save_invstd), _ptr(weight), desc,
                                      options.c_struct())
        _lib.check(status, "bn_backward")
    else:
        r = _channel("r", r, c, np.dtype(np.float64))
        d = _channel("d", d, c, np.dtype(np.float64))
        status = _lib.lib.bn_backward_renorm(
            _ptr(dx), _ptr(dweight), _ptr(dbias), _ptr(dy), _ptr(x), _ptr(save_mean),
            _ptr(save_invstd), _ptr(r), _ptr(d), _ptr(weight), desc, options.c_struct())
        _lib.check(status, "bn_backward_renorm")
    return dx, dweight, dbias


def check_finite(x):
    """bn_check_finite: raise BnormError (name BN_ERR_NOT_FINITE) if x holds a NaN or an infinity.

    The passes take such values like any other and carry them into the statistics and outputs of
    their channel, as torch does; call this first to refuse them instead. The error names the
    first one in x's memory order: its .index (a tuple indexing x) and .channel. A per-channel
    array (weight, bias, running statistics) is checked as x.reshape(1, -1). Returns None when
    every value is finite.
    """
    x, layout = _tensor("x", x)
    desc = _lib.make_desc(x.shape, _lib.bn_dtype(x.dtype), layout)
    channel, offset = ctypes.c_int64(), ctypes.c_int64()
    status = _lib.lib.bn_check_finite(ctypes.byref(channel), ctypes.byref(offset), _ptr(x), desc)
    if status == 0:
        return None
    err = _lib.BnormError(status, "bn_check_finite")
    if err.name == "BN_ERR_NOT_FINITE":
        if layout == _lib.BN_CHANNELS_FIRST:
            index = np.unravel_index(offset.value, x.shape)
        else:  # memory is (N, ..., C)
            m = np.unravel_index(offset.value, np.moveaxis(x, 1, -1).shape)
            index = (m[0], m[-1]) + tuple(m[1:-1])
        err.index = tuple(int(i) for i in index)
        err.channel = int(channel.value)
        value = x[err.index]
        err.args = ("%s: %s at index %s (channel %d)" % (
            err.args[0], "nan" if np.isnan(value) else "inf" if value > 0 else "-inf",
            err.index, err.channel),)
    raise err


# ------------------------------------------------------------------------------------------------
# torch.nn.functional.batch_norm's interface

def _verify_batch_size(shape):
    """torch's check: training needs more than one value per channel."""
    count = shape[0]
    for size in shape[2:]:
        count *= size
    if count == 1:
        raise ValueError("Expected more than 1 value per channel when training, got input size %s"
                         % (tuple(shape),))


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalization of an (N, C, ...) array, as torch.nn.functional.batch_norm.

    training=True normalizes with the batch statistics and, when running_mean / running_var are
    given (numpy arrays of C elements, input's dtype), blends the batch mean and unbiased variance
    into them in place: running = (1 - momentum) * running + momentum * batch.
    training=False normalizes with running_mean and running_var, which are then required.
    weight and bias (C elements) default to 1 and 0. Returns a new array in the input's layout.
    """
    x, layout = _tensor("input", input)
    if training:
        _verify_batch_size(x.shape)
    c = x.shape[1]
    # torch's order of checks: running_mean, running_var, weight, bias
    for name, a in (("running_mean", running_mean), ("running_var", running_var)):
        if a is None and not training:
            raise RuntimeError("%s must be defined in evaluation mode" % name)
        if a is not None and np.size(a) != c:
            raise RuntimeError("%s should contain %d elements not %d" % (name, c, np.size(a)))
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None and np.size(a) != c:
            raise RuntimeError("%s should contain %d elements not %d" % (name, c, np.size(a)))
    if x.size == 0:
        # Nothing to normalize (N = 0 or an empty spatial dim); running statistics stay as they
        # are, as in torch. (forward_train would do the same; this skips the call.)
        return _like(x, layout)
    if training:
        y, _, _ = forward_train(x, weight, bias, running_mean, running_var, momentum, eps)
        return y
    return forward_eval(x, running_mean, running_var, weight, bias, eps)
