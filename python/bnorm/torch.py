"""bnorm.torch: drop-in replacements for torch.nn.BatchNorm1d/2d/3d, SyncBatchNorm (over MPI,
on the CPU: see _sync.py) and F.batch_norm.

    import bnorm.torch
    model = nn.Sequential(nn.Conv2d(3, 8, 3), bnorm.torch.BatchNorm2d(8), nn.ReLU())
    bnorm.torch.convert(other_model)     # swaps its torch.nn.BatchNormXd in place

The modules subclass torch.nn.BatchNorm1d/2d/3d and only replace forward(), so constructor
arguments, parameters, buffers, state_dict keys, train()/eval(), reset_parameters(), repr,
isinstance checks and the input-dimension errors are torch's own. forward() follows torch's
_BatchNorm.forward line for line (num_batches_tracked is incremented in Python before the call,
as torch does, also for N = 0 and also when the call then fails; momentum=None passes the factor
1/num_batches_tracked), and calls batch_norm() below instead of F.batch_norm.

batch_norm() has F.batch_norm's signature. It runs the C library through a
torch.autograd.Function on the tensors' own memory (data_ptr(), no copy) when it can:
  - input float32 or float64 on the CPU, ndim >= 2, at least one element;
  - weight, bias, running_mean, running_var: None or contiguous 1-d CPU tensors of C elements
    of the input's dtype; in eval both running statistics given; the running statistics not
    requiring grad (unless grad mode is off);
  - 0 <= eps < inf and 0 <= momentum <= 1;
  - not under torch.jit tracing, no __torch_function__ overrides.
Everything else (other dtypes such as bfloat16, other devices, empty inputs, wrong sizes,
mixed dtypes, odd momentum, running statistics requiring grad) goes to
torch.nn.functional.batch_norm itself, so results and error messages there are exactly torch's.

Layouts: a contiguous input is used as channels-first; a 4-d channels_last or 5-d
channels_last_3d input as channels-last, without a copy, and the output keeps that memory
format (as torch's does). Any other strides are made contiguous first.

Backward uses bn_backward_train (batch statistics, from the float64 save_mean/save_invstd of the
forward pass) or bn_backward_eval (stored statistics); only the gradients autograd asks for are
computed. It is once-differentiable: double backward raises (torch's native one supports it).
In eval the backward pass uses copies of the running statistics taken at forward time.
"""

import math
import numbers

import torch as _torch
import torch.nn.functional as _F
from torch.autograd.function import once_differentiable as _once_differentiable

from . import _lib

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "batch_norm", "convert"]

_DTYPES = {_torch.float32: _lib.BN_FLOAT32, _torch.float64: _lib.BN_FLOAT64}


def _ptr(t):
    """The address of t's first element, or None (NULL) for None."""
    return None if t is None else t.data_ptr()


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
    if input.device.type != "cpu" or input.dtype not in _DTYPES:
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
        desc = _lib.make_desc(x.shape, _DTYPES[x.dtype], layout)
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


class _BnormForward:
    """forward() of torch.nn.modules.batchnorm._BatchNorm (torch 1.13), calling bnorm."""

    def forward(self, input):
        self._check_input_dim(input)

        # torch passes momentum as the factor, 0.0 when it is None and nothing is tracked
        if self.momentum is None:
            exponential_average_factor = 0.0
        else:
            exponential_average_factor = self.momentum

        if self.training and self.track_running_stats:
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
                if self.momentum is None:  # cumulative moving average
                    exponential_average_factor = 1.0 / float(self.num_batches_tracked)
                else:  # exponential moving average
                    exponential_average_factor = self.momentum

        # batch statistics in training, and in eval when there are no running statistics
        if self.training:
            bn_training = True
        else:
            bn_training = (self.running_mean is None) and (self.running_var is None)

        # running statistics are passed when they are updated (training and tracked) or used
        # (eval with buffers)
        return batch_norm(
            input,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight,
            self.bias,
            bn_training,
            exponential_average_factor,
            self.eps,
        )


class BatchNorm1d(_BnormForward, _torch.nn.BatchNorm1d):
    """torch.nn.BatchNorm1d computed by bnorm: (N, C) or (N, C, L) input."""


class BatchNorm2d(_BnormForward, _torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d computed by bnorm: (N, C, H, W) input, contiguous or channels_last."""


class BatchNorm3d(_BnormForward, _torch.nn.BatchNorm3d):
    """torch.nn.BatchNorm3d computed by bnorm: (N, C, D, H, W), contiguous or channels_last_3d."""


_SWAP = {
    _torch.nn.BatchNorm1d: BatchNorm1d,
    _torch.nn.BatchNorm2d: BatchNorm2d,
    _torch.nn.BatchNorm3d: BatchNorm3d,
}


def convert(module):
    """Make every torch.nn.BatchNorm1d/2d/3d in module (itself included) a bnorm one, in place.

    Only the class changes: parameters, buffers and hooks are the same objects, so optimizers
    built before the call keep working. Subclasses of those modules (SyncBatchNorm, lazy
    modules, user classes) are left alone. Returns module.
    """
    for m in module.modules():
        cls = _SWAP.get(type(m))
        if cls is not None:
            m.__class__ = cls
    return module


from ._sync import SyncBatchNorm  # noqa: E402 (it uses batch_norm and _layout above)
