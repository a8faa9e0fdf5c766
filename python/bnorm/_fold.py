"""bnorm.fold_conv_bn, bnorm.fold_linear_bn: an eval-mode batch norm folded into the
convolution or linear layer before it, for inference (bn_fold_conv, bn_fold_conv_transpose).

The arguments and results of torch.nn.utils.fusion.fuse_conv_bn_weights and
fuse_linear_bn_weights, on numpy arrays: (weight, bias) of the folded layer, new arrays of the
weight's dtype. conv_b / linear_b, bn_w and bn_b may be None (0, 1 and 0). Each value is formed
in double and rounded once. For a transposed convolution with groups > 1, give groups: torch
1.13's reshape scales the weight's second axis as if it held every output channel, which is
right only for groups=1.
"""

import numpy as np

from . import _lib
from ._lib import ptr as _ptr

__all__ = ["fold_conv_bn", "fold_linear_bn"]


def _array(name, a, dtype, size):
    """A read-only per-output-channel argument as a contiguous array of size values, or None."""
    if a is None:
        return None
    a = np.asarray(a)
    if a.dtype != dtype:
        raise TypeError("bnorm: %s has dtype %s but the weight has %s" % (name, a.dtype, dtype))
    if a.ndim != 1 or a.size != size:
        raise ValueError("bnorm: %s must hold %d values (one per output channel), got shape %s"
                         % (name, size, a.shape))
    return np.ascontiguousarray(a)


def _fold(weight, bias, bn_rm, bn_rv, bn_eps, bn_w, bn_b, min_ndim, transpose, groups):
    w = np.ascontiguousarray(weight)
    code = _lib.bn_dtype(w.dtype)
    if code is None:
        raise TypeError("bnorm: the weight must be float32 or float64, got %s" % w.dtype)
    if w.ndim < min_ndim:
        raise ValueError("bnorm: the weight must have at least %d dimensions, got shape %s"
                         % (min_ndim, w.shape))
    groups = int(groups)
    if groups < 1 or (transpose and w.shape[0] % groups):
        raise ValueError("bnorm: groups must be at least 1 and divide the weight's first "
                         "dimension %d, got %d" % (w.shape[0], groups))
    if not transpose and groups != 1:
        raise ValueError("bnorm: groups applies to transposed convolutions (a convolution's "
                         "weight has its output channels first whatever its groups)")
    c_out = w.shape[1] * groups if transpose else w.shape[0]
    args = [_array(name, a, w.dtype, c_out) for name, a in (
        ("bias", bias), ("running_mean", bn_rm), ("running_var", bn_rv), ("bn_weight", bn_w),
        ("bn_bias", bn_b))]
    if args[1] is None or args[2] is None:
        raise TypeError("bnorm: running_mean and running_var are required")
    w_out, b_out = np.empty_like(w), np.empty(c_out, w.dtype)
    kernel = int(np.prod(w.shape[2:], dtype=np.int64))
    if transpose:
        status = _lib.lib.bn_fold_conv_transpose(
            _ptr(w_out), _ptr(b_out), _ptr(w), *[_ptr(a) for a in args], w.shape[0], c_out,
            groups, kernel, float(bn_eps), code)
        _lib.check(status, "bn_fold_conv_transpose")
    else:
        status = _lib.lib.bn_fold_conv(
            _ptr(w_out), _ptr(b_out), _ptr(w), *[_ptr(a) for a in args], c_out,
            w.size // c_out, float(bn_eps), code)
        _lib.check(status, "bn_fold_conv")
    return w_out, b_out


def fold_conv_bn(conv_w, conv_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b, transpose=False, groups=1):
    """(weight, bias) of a convolution (weight (C_out, C_in / groups, k...)) or a transposed
    convolution (transpose=True: weight (C_in, C_out / groups, k...), with its groups) with
    the following eval-mode batch norm folded in."""
    return _fold(conv_w, conv_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b, 3 if transpose else 2,
                 transpose, groups)


def fold_linear_bn(linear_w, linear_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b):
    """(weight, bias) of a linear layer (weight (C_out, C_in)) with the following eval-mode
    batch norm folded in."""
    w = np.asarray(linear_w)
    if w.ndim != 2:
        raise ValueError("bnorm: a linear layer's weight is (C_out, C_in), got shape %s"
                         % (w.shape,))
    return _fold(w, linear_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b, 2, False, 1)
