"""bnorm.torch.batch_norm: torch.nn.functional.batch_norm computed by bnorm.

Where a call goes (_route; bnorm/torch.py's doc has the rules for users):
  - the C library, through _BatchNormFunction, on the tensors' own memory (data_ptr(), no copy):
    float32 and float64 CPU tensors with storage, at least one element;
  - the formula in torch operations of _composite.py, for float32 and float64 tensors the C
    library cannot take as they are (no storage: functorch's wrappers; odd eps or momentum;
    running statistics that are not contiguous) and for an empty input;
  - under torch.jit tracing, the operator bnorm::batch_norm (_ops.py), so that the trace records
    and replays bnorm's operator;
  - torch's own F.batch_norm, captured at import (so that torch.nn.functional.batch_norm may be
    replaced by this function): only for what bnorm does not compute (other dtypes such as
    bfloat16, other devices, mixed dtypes) and for the arguments torch refuses, so that its
    errors are torch's own.

_BatchNormFunction's backward runs the C library (bn_backward_train with the float64 statistics
the forward pass saved, or bn_backward_eval with copies of the running statistics), computing
only the gradients autograd asks for. When autograd records the backward pass (create_graph)
or the gradient has no storage (vmap), it runs _composite's formula instead, which autograd can
differentiate again. Forward-mode AD has its jvp. _layout and _verify_batch_size are shared with
SyncBatchNorm (_sync.py).
"""

import math
import numbers
from typing import List

import torch as _torch
import torch.nn.functional as _F

from . import _composite, _lib
from ._lib import ptr as _ptr

__all__ = ["batch_norm"]

# torch's own, before anyone replaces it with ours (torch.nn.functional.batch_norm = ...)
TORCH_BATCH_NORM = _F.batch_norm

_C, _COMPOSITE, _EMPTY, _TORCH = "c", "composite", "empty", "torch"


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


def _verify_batch_size(size: List[int]) -> None:
    """torch.nn.functional's check: training needs more than one value per channel."""
    size_prods = size[0]
    for i in range(len(size) - 2):
        size_prods *= size[i + 2]
    if size_prods == 1:
        raise ValueError(
            "Expected more than 1 value per channel when training, got input size {}".format(size))


def _has_storage(t):
    """Whether t is a tensor with memory of its own (vmap's and functorch's are not)."""
    try:
        t.data_ptr()
        return True
    except RuntimeError:
        return False


def _route(input, running_mean, running_var, weight, bias, training, momentum, eps):
    """Which of _C, _COMPOSITE, _EMPTY, _TORCH computes this call (see the module doc)."""
    if not isinstance(input, _torch.Tensor) or input.layout != _torch.strided:
        return _TORCH
    if input.device.type != "cpu" or _lib.bn_dtype(input.dtype) is None or input.dim() < 2:
        return _TORCH
    c = input.shape[1]
    channels = [t for t in (running_mean, running_var, weight, bias) if t is not None]
    for t in channels:
        if not isinstance(t, _torch.Tensor) or t.layout != _torch.strided:
            return _TORCH
        if t.device != input.device or t.dtype != input.dtype or t.dim() != 1 or t.numel() != c:
            return _TORCH
    if not training and (running_mean is None or running_var is None):
        return _TORCH  # torch's error
    # running statistics take no gradient: torch refuses them when they require one
    if _torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                        for t in (running_mean, running_var)):
        return _TORCH
    if not isinstance(eps, numbers.Real) or not isinstance(momentum, numbers.Real):
        return _TORCH
    if input.numel() == 0:
        return _EMPTY
    if not _has_storage(input) or not all(_has_storage(t) for t in channels):
        return _COMPOSITE
    if not all(t.is_contiguous() for t in channels):
        return _COMPOSITE
    if not (0 <= eps and math.isfinite(eps)) or not (0 <= momentum <= 1):
        return _COMPOSITE
    return _C


class _BatchNormFunction(_torch.autograd.Function):
    """Forward and backward through the C library; arguments checked by _route."""

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
        # the input itself, not a copy: a recorded backward pass must reach it
        ctx.save_for_backward(input, weight, *stats)
        ctx.save_for_forward(input, weight, *stats)
        ctx.set_materialize_grads(False)  # jvp: None, not zeros, for inputs without tangents
        ctx.desc = desc
        ctx.training = training
        ctx.eps = float(eps)
        return y

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, stat_a, stat_b = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        none = (None,) * 5  # running_mean, running_var, training, momentum, eps
        if grad_output is None or not (need_x or need_weight or need_bias):
            return (None, None, None) + none
        if _torch.is_grad_enabled() or not _has_storage(grad_output):
            # create_graph, or vmap's batched gradient: a backward autograd can see through
            if ctx.training:
                grads = _composite.backward_train(grad_output, input, weight, stat_a, stat_b,
                                                  ctx.eps)
            else:
                grads = _composite.backward_eval(grad_output, input, weight, stat_a, stat_b,
                                                 ctx.eps)
            dx, dweight, dbias = (g if need else None
                                  for g, need in zip(grads, (need_x, need_weight, need_bias)))
            return (dx, dweight, dbias) + none
        x, _ = _layout(input)
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

    @staticmethod
    def jvp(ctx, input_t, weight_t, bias_t, running_mean_t, running_var_t, *_):
        if running_mean_t is not None or running_var_t is not None:
            raise RuntimeError("bnorm: forward-mode AD through running_mean or running_var is "
                               "not supported (they take no gradient)")
        input, weight, stat_a, stat_b = ctx.saved_tensors
        if ctx.training:
            return _composite.jvp_train(input, weight, stat_a, stat_b, input_t, weight_t,
                                        bias_t)
        return _composite.jvp_eval(input, weight, stat_a, stat_b, ctx.eps, input_t, weight_t,
                                   bias_t)


def compute(input, running_mean, running_var, weight, bias, training, momentum, eps):
    """batch_norm's work once its arguments are checked for torch's function protocol and the
    batch size; also the kernel of the operator bnorm::batch_norm (_ops.py)."""
    route = _route(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if route == _C:
        return _BatchNormFunction.apply(input, weight, bias, running_mean, running_var,
                                        bool(training), float(momentum), float(eps))
    if route == _COMPOSITE:
        return _composite.forward(input, running_mean, running_var, weight, bias,
                                  bool(training), float(momentum), float(eps))
    if route == _EMPTY:
        return _composite.forward_empty(input, weight, bias)
    return TORCH_BATCH_NORM(input, running_mean, running_var, weight, bias, training, momentum,
                            eps)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm, computed by bnorm (same arguments, results and errors).

    training=True normalizes with the batch statistics and blends them into running_mean /
    running_var in place when those are given; training=False uses the running statistics.
    """
    if _torch.overrides.has_torch_function_variadic(input, running_mean, running_var, weight,
                                                    bias):
        return _torch.overrides.handle_torch_function(
            batch_norm, (input, running_mean, running_var, weight, bias), input, running_mean,
            running_var, weight=weight, bias=bias, training=training, momentum=momentum, eps=eps)
    if training:
        _verify_batch_size(input.size())
    if _torch.jit.is_tracing():
        # recorded as bnorm's operator, whose kernel is compute()
        return _torch.ops.bnorm.batch_norm(input, running_mean, running_var, weight, bias,
                                           bool(training), float(momentum), float(eps))
    return compute(input, running_mean, running_var, weight, bias, training, momentum, eps)
