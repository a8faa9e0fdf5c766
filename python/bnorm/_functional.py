"""bnorm.torch.batch_norm: torch.nn.functional.batch_norm computed by the C library through a
torch.autograd.Function on the tensors' own memory, when the arguments allow it (_c_can_do; the
rules are in bnorm/torch.py's doc), and by torch itself otherwise. _layout and
_verify_batch_size are shared with SyncBatchNorm (_sync.py).
"""

import math
import numbers

import torch as _torch
import torch.nn.functional as _F
from torch.autograd.function import once_differentiable as _once_differentiable

from . import _lib
from ._lib import ptr as _ptr

__all__ = ["batch_norm"]


def _layout(x):
    """(tensor to hand to C, layout): x itself when its memory is channels-first or
    channels_last / channels_last_3d, else a contiguous copy."""
    if x.is_contiguous():
        return x, _lib.BN_CHANNELS_FIRST
    if x.dim() == 4 and x.is_contiguous(memory_format=_torch.channels_last):
        return x, _lib.BN_CHANNELS_LAST
    if x.dim() == 5 and x.is_contiguous(memory_format=_torch.channels_last_3d):
        return x, _lib.BN_CHANNELS_LAST
    return x.contiguous(), _lib.BN_CHANNELS_FIRST


def _verify_batch_size(size):
    """torch.nn.functional's check: training needs more than one value per channel."""
    size_prods = size[0]
    for i in range(len(size) - 2):
        size_prods *= size[i + 2]
    if size_prods == 1:
        raise ValueError(
            "Expected more than 1 value per channel when training, got input size {}".format(size))


def _c_can_do(input, running_mean, running_var, weight, bias, training, momentum, eps):
    """Whether the C library computes this call exactly as torch would (see the module doc)."""
    if _torch.jit.is_tracing() or _torch.jit.is_scripting():
        return False
    if _torch.overrides.has_torch_function_variadic(input, running_mean, running_var, weight,
                                                    bias):
        return False
    if not isinstance(input, _torch.Tensor) or input.layout != _torch.strided:
        return False
    if input.device.type != "cpu" or _lib.bn_dtype(input.dtype) is None:
        return False
    if input.dim() < 2 or input.numel() == 0:
        return False
    c = input.shape[1]
    for t in (running_mean, running_var, weight, bias):
        if t is None:
            continue
        if not isinstance(t, _torch.Tensor) or t.layout != _torch.strided:
            return False
        if t.device != input.device or t.dtype != input.dtype:
            return False
        if t.dim() != 1 or t.numel() != c or not t.is_contiguous():
            return False
    if not training and (running_mean is None or running_var is None):
        return False
    # running statistics take no gradient: torch refuses them when they require one
    if _torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                        for t in (running_mean, running_var)):
        return False
    if not isinstance(eps, numbers.Real) or not (0 <= eps and math.isfinite(eps)):
        return False
    if not isinstance(momentum, numbers.Real) or not (0 <= momentum <= 1):
        return False
    return True


class _BatchNormFunction(_torch.autograd.Function):
    """Forward and backward through the C library; arguments checked by _c_can_do."""

    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, training, momentum, eps):
        x, layout = _layout(input)
        desc = _lib.make_desc(x.shape, _lib.bn_dtype(x.dtype), layout)
        y = _torch.empty_like(x)  # same strides as x: the output keeps the memory format
        if training:
            c = x.shape[1]
            save_mean = _torch.empty(c, dtype=_torch.float64)
            save_invstd = _torch.empty(c, dtype=_torch.float64)
            # momentum is the factor torch would use; counting batches is the caller's business
            opt = _lib.make_options(eps, momentum, cumulative=False)
            status = _lib.lib.bn_forward_train(
                _ptr(y), _ptr(save_mean), _ptr(save_invstd), _ptr(running_mean),
                _ptr(running_var), None, _ptr(x), _ptr(weight), _ptr(bias), desc, opt)
            _lib.check(status, "bn_forward_train")
            stats = (save_mean, save_invstd)
        else:
            status = _lib.lib.bn_forward_eval(
                _ptr(y), _ptr(x), _ptr(running_mean), _ptr(running_var), _ptr(weight),
                _ptr(bias), desc, float(eps))
            _lib.check(status, "bn_forward_eval")
            # copies: the backward pass uses the statistics this forward pass used
            stats = (running_mean.clone(), running_var.clone())
        ctx.save_for_backward(x, weight, *stats)
        ctx.desc = desc
        ctx.training = training
        ctx.eps = float(eps)
        return y

    @staticmethod
    @_once_differentiable
    def backward(ctx, grad_output):
        x, weight, stat_a, stat_b = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        none = (None,) * 5  # running_mean, running_var, training, momentum, eps
        if not (need_x or need_weight or need_bias):
            return (None, None, None) + none
        # dy must have x's memory layout (a copy only when autograd hands over other strides)
        dy = grad_output
        if dy.dtype != x.dtype or dy.device != x.device or dy.stride() != x.stride():
            dy = _torch.empty_like(x).copy_(grad_output)
        c = x.shape[1]
        dx = _torch.empty_like(x) if need_x else None
        dweight = _torch.empty(c, dtype=x.dtype) if need_weight else None
        dbias = _torch.empty(c, dtype=x.dtype) if need_bias else None
        if ctx.training:
            status = _lib.lib.bn_backward_train(
                _ptr(dx), _ptr(dweight), _ptr(dbias), _ptr(dy), _ptr(x), _ptr(stat_a),
                _ptr(stat_b), _ptr(weight), ctx.desc)
            _lib.check(status, "bn_backward_train")
        else:
            status = _lib.lib.bn_backward_eval(
                _ptr(dx), _ptr(dweight), _ptr(dbias), _ptr(dy), _ptr(x), _ptr(stat_a),
                _ptr(stat_b), _ptr(weight), ctx.desc, ctx.eps)
            _lib.check(status, "bn_backward_eval")
        return (dx, dweight, dbias) + none


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm, computed by bnorm (same arguments, results and errors).

    training=True normalizes with the batch statistics and blends them into running_mean /
    running_var in place when those are given; training=False uses the running statistics.
    """
    if training:
        _verify_batch_size(input.size())
    if not _c_can_do(input, running_mean, running_var, weight, bias, training, momentum, eps):
        return _F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum,
                             eps)
    return _BatchNormFunction.apply(input, weight, bias, running_mean, running_var,
                                    bool(training), float(momentum), float(eps))
