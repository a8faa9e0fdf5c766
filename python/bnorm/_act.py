"""Batch norm with a ReLU, and a residual add before it, in one pass: relu(bn(x) + residual).

batch_norm_relu(input, running_mean, running_var, weight, bias, training, momentum, eps,
residual=None) is F.batch_norm's call followed by `+ residual` (when given) and torch.relu. The
calls the C library takes (_functional._route's, with a residual of the input's dtype, shape
and device) run bn_forward_train_relu / bn_forward_eval_relu, and their backward
bn_backward_*_relu from the output's mask; every other call (and every call while torch.jit
traces, which records bnorm::batch_norm, the add and the relu) is that composition, through
bnorm.torch.batch_norm. For float32 and float64 the two give the same bits; for bfloat16 and
float16 the fused call rounds once where the composition rounds twice.

Autograd: the C backward where autograd does not record it; where it does (create_graph), the
gradient through the ReLU, grad * (y > 0), and _composite's backward of it, which autograd
differentiates again (the mask's own derivative is zero, as torch's relu has it).
"""

import torch as _torch

from . import _functional
from . import _lib

__all__ = ["batch_norm_relu"]


def _fused_route(input, running_mean, running_var, weight, bias, training, momentum, eps,
                 residual):
    """Whether the C library's fused call computes this (else the composition does)."""
    if _torch.jit.is_tracing() or _torch.autograd.forward_ad._current_level >= 0:
        return False
    if _functional._route(input, running_mean, running_var, weight, bias, training, momentum,
                          eps) != _functional._C:
        return False
    if residual is None:
        return True
    return (type(residual) in _functional._PLAIN and residual.dtype is input.dtype
            and residual.shape == input.shape and residual.is_cpu
            and residual.layout is _torch.strided and not residual.is_neg()
            and _functional._readable_address(residual) != 0)


def _like(t, x):
    """t with x's strides (a copy only where they differ)."""
    return t if t.stride() == x.stride() else _torch.empty_like(x).copy_(t)


def _forward(input, weight, bias, running_mean, running_var, training, momentum, eps, residual):
    """The fused forward pass: (y, x, residual as read, desc, stat_a, stat_b) as _functional's."""
    if input.is_contiguous():
        x, layout = input, _lib.BN_CHANNELS_FIRST
    else:
        x, layout = _functional._layout(input)
    f32_params = x.dtype in _functional._HALVES and _functional._param_dtype(
        running_mean, running_var, weight, bias) is _torch.float32
    desc = _functional._desc(x, layout, f32_params)
    z = None if residual is None else _like(residual, x)
    y = _torch.empty_like(x)
    z_at = None if z is None else z.data_ptr()
    w_at = None if weight is None else weight.data_ptr()
    b_at = None if bias is None else bias.data_ptr()
    if training:
        c = x.shape[1]
        stats = _torch.empty((2, c), dtype=_torch.float64)
        at = stats.data_ptr()
        _lib.check(_lib.lib.bn_forward_train_relu(
            y.data_ptr(), at, at + 8 * c,
            None if running_mean is None else running_mean.data_ptr(),
            None if running_var is None else running_var.data_ptr(), None, x.data_ptr(), z_at,
            w_at, b_at, desc, _functional._options(eps, momentum)), "bn_forward_train_relu")
        return y, x, desc, stats, None
    _lib.check(_lib.lib.bn_forward_eval_relu(
        y.data_ptr(), x.data_ptr(), z_at, running_mean.data_ptr(), running_var.data_ptr(), w_at,
        b_at, desc, eps), "bn_forward_eval_relu")
    return y, x, desc, running_mean, running_var


class _BatchNormReluFunction(_torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, residual, running_mean, running_var, training,
                momentum, eps):
        y, x, desc, stat_a, stat_b = _forward(input, weight, bias, running_mean, running_var,
                                              training, momentum, eps, residual)
        ctx.save_for_backward(input, weight, y, stat_a, stat_b)
        ctx.desc, ctx.training, ctx.eps = desc, training, eps
        ctx.copied = x is not input
        ctx.dtypes = (None if weight is None else weight.dtype,
                      None if bias is None else bias.dtype)
        return y

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, y, stat_a, stat_b = ctx.saved_tensors
        need_x, need_w, need_b, need_z = ctx.needs_input_grad[:4]
        none = (None,) * 5
        if grad_output is None or not (need_x or need_w or need_b or need_z):
            return (None, None, None, None) + none
        dy_at = 0 if _torch.is_grad_enabled() else _functional._readable_address(grad_output)
        if not dy_at or grad_output.is_neg():
            # recorded (create_graph), or without memory: a backward autograd sees through
            g = _torch.where(y > 0, grad_output, _torch.zeros_like(grad_output))
            dx, dw, db = _functional.composite_backward(ctx.training, g, input, weight, stat_a,
                                                        stat_b, ctx.eps)
            return ((dx if need_x else None), (dw if need_w else None),
                    (db if need_b else None), (g if need_z else None)) + none
        x = _functional._layout(input)[0] if ctx.copied else input
        dy = _like(grad_output, x)
        c = x.shape[1]
        dx = _torch.empty_like(x) if need_x else None
        dz = _torch.empty_like(x) if need_z else None
        dw = _torch.empty(c, dtype=ctx.dtypes[0]) if need_w else None
        db = _torch.empty(c, dtype=ctx.dtypes[1]) if need_b else None
        if not need_x and not need_z:  # the mask needs a place: dx
            dx = _torch.empty_like(x)
        ptr = _lib.ptr
        if ctx.training:
            at = stat_a.data_ptr()
            _lib.check(_lib.lib.bn_backward_train_relu(
                ptr(dx), ptr(dz), ptr(dw), ptr(db), dy.data_ptr(), y.data_ptr(), x.data_ptr(),
                at, at + 8 * c, ptr(weight), ctx.desc), "bn_backward_train_relu")
        else:
            _lib.check(_lib.lib.bn_backward_eval_relu(
                ptr(dx), ptr(dz), ptr(dw), ptr(db), dy.data_ptr(), y.data_ptr(), x.data_ptr(),
                stat_a.data_ptr(), stat_b.data_ptr(), ptr(weight), ctx.desc, ctx.eps),
                "bn_backward_eval_relu")
        return ((dx if need_x else None), dw, db, dz) + none


def batch_norm_relu(input, running_mean, running_var, weight=None, bias=None, training=False,
                    momentum=0.1, eps=1e-5, residual=None):
    """relu(F.batch_norm(input, ...) + residual) (residual None: relu(F.batch_norm(...))), in
    one pass where the C library takes the call."""
    if _fused_route(input, running_mean, running_var, weight, bias, training, momentum, eps,
                    residual):
        if training:
            _functional._verify_batch_size(input.size())
        training, momentum, eps = bool(training), float(momentum), float(eps)
        records = _torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (input, weight, bias, residual))
        if records:
            return _BatchNormReluFunction.apply(input, weight, bias, residual, running_mean,
                                                running_var, training, momentum, eps)
        return _forward(input, weight, bias, running_mean, running_var, training, momentum, eps,
                        residual)[0]
    y = _functional.batch_norm(input, running_mean, running_var, weight, bias, training,
                               momentum, eps)
    if residual is not None:
        y = y + residual
    return _torch.relu(y)
