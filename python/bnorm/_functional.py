"""bnorm.torch.batch_norm: torch.nn.functional.batch_norm computed by bnorm.

Where a call goes (_route; bnorm/torch.py's doc has the rules for users):
  - the C library on the tensors' own memory (data_ptr(), no copy): float32 and float64 CPU
    tensors with storage, at least one element. The native module (_torch_native.cpp, where
    it was built: NATIVE) takes these calls first, from C++; what it declines, and every call
    where it is missing, goes through ctypes and _BatchNormFunction;
  - the formula in torch operations of _composite.py, for float32 and float64 tensors the C
    library cannot take as they are (no storage: functorch's wrappers; odd eps or momentum;
    running statistics that are not contiguous) and for an empty input;
  - under torch.jit tracing, the operator bnorm::batch_norm (_ops.py), so that the trace records
    and replays bnorm's operator;
  - torch's own F.batch_norm, captured at import (so that torch.nn.functional.batch_norm may be
    replaced by this function): only for what bnorm does not compute (other dtypes such as
    bfloat16, other devices, mixed dtypes, subclasses that intercept every operation with
    __torch_dispatch__, such as FakeTensor) and for the arguments torch refuses, so that its
    errors are torch's own.

_BatchNormFunction's backward runs the C library (bn_backward_train with the float64 statistics
the forward pass saved, or bn_backward_eval with copies of the running statistics), computing
only the gradients autograd asks for. When autograd records the backward pass (create_graph)
or the gradient has no storage (vmap), it runs _composite's formula instead, which autograd can
differentiate again. Forward-mode AD has its jvp. _layout and _verify_batch_size are shared with
SyncBatchNorm (_sync.py).
"""

import ctypes
import importlib.util
import math
import numbers
import os
import warnings
from typing import List

import torch as _torch
import torch.nn.functional as _F
from torch.autograd import forward_ad as _forward_ad

from . import _composite, _lib

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


def _readable_address(t):
    """t's data pointer when the C library can read its memory, else 0: vmap's and functorch's
    wrappers have no storage, FakeTensor and wrapper subclasses a NULL data pointer."""
    try:
        return t.data_ptr()
    except RuntimeError:
        return 0


_STRIDED = _torch.strided
_TENSOR = _torch.Tensor
_PLAIN = (_torch.Tensor, _torch.nn.Parameter)
_NO_DISPATCH = _torch.Tensor.__torch_dispatch__


def _intercepts_dispatch(t):
    """Whether t is a subclass that sees every aten operation (__torch_dispatch__: FakeTensor,
    wrapper subclasses): those are torch's to run, bnorm has no memory to read."""
    return type(t) not in _PLAIN and type(t).__torch_dispatch__ is not _NO_DISPATCH
_ELEMENT_TYPES = {_torch.float32: _lib.BN_FLOAT32, _torch.float64: _lib.BN_FLOAT64,
                  _torch.bfloat16: _lib.BN_BFLOAT16, _torch.float16: _lib.BN_FLOAT16}
_HALVES = (_torch.bfloat16, _torch.float16)


def _param_dtype(running_mean, running_var, weight, bias):
    """The dtype of the per-channel tensors given (None when none is)."""
    for t in (running_mean, running_var, weight, bias):
        if t is not None:
            return t.dtype
    return None


def _route(input, running_mean, running_var, weight, bias, training, momentum, eps):
    """Which of _C, _COMPOSITE, _EMPTY, _TORCH computes this call (see the module doc).
    Called on every call: the cheap tests first, each attribute read once."""
    if input.__class__ not in _PLAIN:
        if not isinstance(input, _TENSOR) or _intercepts_dispatch(input):
            return _TORCH
    dtype, shape = input.dtype, input.shape
    if (dtype not in _ELEMENT_TYPES or len(shape) < 2 or input.layout is not _STRIDED
            or not input.is_cpu):
        return _TORCH
    per_channel = (shape[1],)
    route = _C
    # the per-channel tensors share one dtype: the input's, or float32 beside a 16-bit input
    params = dtype
    if dtype in _HALVES:
        given = _param_dtype(running_mean, running_var, weight, bias)
        if given is _torch.float32:
            params = given
    for t in (running_mean, running_var, weight, bias):
        if t is None:
            continue
        if t.__class__ not in _PLAIN:
            if not isinstance(t, _TENSOR) or _intercepts_dispatch(t):
                return _TORCH
        if (t.dtype is not params or t.shape != per_channel or t.layout is not _STRIDED
                or not t.is_cpu):
            return _TORCH
        if not t.is_contiguous() or t.is_neg() or not _readable_address(t):
            route = _COMPOSITE
    if not training and (running_mean is None or running_var is None):
        return _TORCH  # torch's error
    # running statistics take no gradient: torch refuses them when they require one
    if ((running_mean is not None and running_mean.requires_grad)
            or (running_var is not None and running_var.requires_grad)):
        if _torch.is_grad_enabled():
            return _TORCH
    if type(eps) is not float or type(momentum) is not float:
        if not isinstance(eps, numbers.Real) or not isinstance(momentum, numbers.Real):
            return _TORCH
    if input.numel() == 0:
        return _EMPTY
    # a negative view's memory holds the values' negations: torch operations read it right
    if input.is_neg() or not _readable_address(input) or not (0 <= eps and math.isfinite(eps)):
        return _COMPOSITE
    # momentum matters only where running statistics are blended
    if not (0 <= momentum <= 1) and training and (running_mean is not None
                                                  or running_var is not None):
        return _COMPOSITE
    return route


_DESCS = {}  # (shape, dtype, layout, float32 parameters) -> BnDesc: built once per shape
_OPTIONS = {}  # (eps, momentum) -> BnOptions


def _desc(x, layout, f32_params):
    key = (x.shape, x.dtype, layout, f32_params)
    desc = _DESCS.get(key)
    if desc is None:
        if len(_DESCS) >= 4096:  # a process that sees every shape: start over
            _DESCS.clear()
        desc = _lib.make_desc(x.shape, _ELEMENT_TYPES[x.dtype], layout)
        desc.params = _lib.BN_PARAMS_FLOAT32 if f32_params else _lib.BN_PARAMS_AS_TENSOR
        _DESCS[key] = desc
    return desc


def _options(eps, momentum):
    key = (eps, momentum)
    opt = _OPTIONS.get(key)
    if opt is None:
        if len(_OPTIONS) >= 4096:
            _OPTIONS.clear()
        # momentum is the factor torch would use; counting batches is the caller's business
        opt = _OPTIONS[key] = _lib.make_options(eps, momentum, cumulative=False)
    return opt


def _forward(input, weight, bias, running_mean, running_var, training, momentum, eps):
    """The C library's forward pass: (y, the tensor it read, its desc, and the two
    tensors the backward pass needs: in training one (2, C) float64 tensor, save_mean then
    save_invstd (one allocation), and None; in eval the running statistics themselves, as torch
    saves them, so that changing them in place before the backward pass is autograd's error, as
    with torch). Every per-call step is spelled out here: this is the cost of a small layer."""
    if input.is_contiguous():
        x, layout = input, _lib.BN_CHANNELS_FIRST
    else:
        x, layout = _layout(input)
    shape = x.shape
    f32_params = x.dtype in _HALVES and _param_dtype(
        running_mean, running_var, weight, bias) is _torch.float32
    key = (shape, x.dtype, layout, f32_params)
    desc = _DESCS.get(key) or _desc(x, layout, f32_params)
    y = _torch.empty_like(x)  # same strides as x: the output keeps the memory format
    w_at = None if weight is None else weight.data_ptr()
    b_at = None if bias is None else bias.data_ptr()
    if training:
        c = shape[1]
        stats = _torch.empty((2, c), dtype=_torch.float64)
        mean_at = stats.data_ptr()
        status = _lib.lib.bn_forward_train(
            y.data_ptr(), mean_at, mean_at + 8 * c,
            None if running_mean is None else running_mean.data_ptr(),
            None if running_var is None else running_var.data_ptr(), None, x.data_ptr(), w_at,
            b_at, desc, _OPTIONS.get((eps, momentum)) or _options(eps, momentum))
        if status:
            _lib.check(status, "bn_forward_train")
        return y, x, desc, stats, None
    status = _lib.lib.bn_forward_eval(
        y.data_ptr(), x.data_ptr(), running_mean.data_ptr(), running_var.data_ptr(), w_at,
        b_at, desc, eps)
    if status:
        _lib.check(status, "bn_forward_eval")
    return y, x, desc, running_mean, running_var


def composite_backward(training, grad_output, input, weight, stat_a, stat_b, eps):
    """(dx, dweight, dbias) by _composite's formula, from what the forward pass saved (stat_a,
    stat_b: see _forward): the backward pass autograd can differentiate again."""
    if training:
        mean, invstd = stat_a
        return _composite.backward_train(grad_output, input, weight, mean, invstd, eps)
    return _composite.backward_eval(grad_output, input, weight, stat_a, stat_b, eps)


def _records_graph(input, weight, bias):
    """Whether autograd (backward or forward mode) needs a node for this call."""
    if _forward_ad._current_level >= 0:  # inside a dual_level: inputs may carry tangents
        return True
    return _torch.is_grad_enabled() and (
        input.requires_grad or (weight is not None and weight.requires_grad)
        or (bias is not None and bias.requires_grad))


class _BatchNormFunction(_torch.autograd.Function):
    """Forward (_forward) and backward through the C library; arguments checked by _route.
    Saved: input, weight and _forward's two statistics tensors."""

    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, training, momentum, eps):
        y, x, desc, stat_a, stat_b = _forward(input, weight, bias, running_mean, running_var,
                                              training, momentum, eps)
        # the input itself, not a copy: a recorded backward pass must reach it
        ctx.save_for_backward(input, weight, stat_a, stat_b)
        if _forward_ad._current_level >= 0:  # jvp can be called only inside a dual_level
            ctx.save_for_forward(input, weight, stat_a, stat_b)
            ctx.set_materialize_grads(False)  # None, not zeros, for inputs without tangents
        ctx.desc = desc
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.copied = x is not input
        ctx.training = training
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, stat_a, stat_b = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        if grad_output is None or not (need_x or need_weight or need_bias):  # (see forward)
            return None, None, None, None, None, None, None, None
        # (vmap's batched gradient has no storage)
        dy_at = 0 if _torch.is_grad_enabled() else _readable_address(grad_output)
        if not dy_at or grad_output.is_neg():
            # create_graph, or vmap's batched gradient: a backward autograd can see through
            # (and a negative view, whose memory holds the negations)
            grads = composite_backward(ctx.training, grad_output, input, weight, stat_a, stat_b,
                                       ctx.eps)
            dx, dweight, dbias = (g if need else None
                                  for g, need in zip(grads, (need_x, need_weight, need_bias)))
            return dx, dweight, dbias, None, None, None, None, None
        x = _layout(input)[0] if ctx.copied else input
        # dy must have x's strides (a copy only when autograd hands over others; autograd
        # gives it y's dtype and device); the copy lives until the call is made
        dy = grad_output
        if dy.stride() != x.stride():
            dy = _torch.empty_like(x).copy_(grad_output)
            dy_at = dy.data_ptr()
        c = x.shape[1]
        dx = _torch.empty_like(x) if need_x else None
        # (in the parameters' dtype: a gradient is asked for only of a tensor that is given)
        dweight = weight.new_empty(c) if need_weight else None
        dbias = x.new_empty(c, dtype=ctx.bias_dtype) if need_bias else None
        dx_at = None if dx is None else dx.data_ptr()
        dw_at = None if dweight is None else dweight.data_ptr()
        db_at = None if dbias is None else dbias.data_ptr()
        w_at = None if weight is None else weight.data_ptr()
        if ctx.training:
            stats_at = stat_a.data_ptr()
            status = _lib.lib.bn_backward_train(dx_at, dw_at, db_at, dy_at, x.data_ptr(),
                                                stats_at, stats_at + 8 * c, w_at, ctx.desc)
            if status:
                _lib.check(status, "bn_backward_train")
        else:
            status = _lib.lib.bn_backward_eval(dx_at, dw_at, db_at, dy_at, x.data_ptr(),
                                               stat_a.data_ptr(), stat_b.data_ptr(), w_at,
                                               ctx.desc, ctx.eps)
            if status:
                _lib.check(status, "bn_backward_eval")
        return dx, dweight, dbias, None, None, None, None, None

    @staticmethod
    def jvp(ctx, input_t, weight_t, bias_t, *_):
        # (the running statistics reach here without tangents: see _without_tangents)
        input, weight, stat_a, stat_b = ctx.saved_tensors
        if ctx.training:
            save_mean, save_invstd = stat_a
            return _composite.jvp_train(input, weight, save_mean, save_invstd, input_t,
                                        weight_t, bias_t)
        return _composite.jvp_eval(input, weight, stat_a, stat_b, ctx.eps, input_t, weight_t,
                                   bias_t)


def _without_tangents(input, running_mean, running_var, weight, bias):
    """(running_mean, running_var) for a call inside forward_ad.dual_level: torch's error when
    they carry tangents and input, weight or bias does too; else without their tangents (which
    torch ignores)."""
    stats = []
    for t in (running_mean, running_var):
        if t is not None:
            unpacked = _forward_ad.unpack_dual(t)
            if unpacked.tangent is not None:
                if any(a is not None and _forward_ad.unpack_dual(a).tangent is not None
                       for a in (input, weight, bias)):
                    raise RuntimeError(
                        "batch_norm is not differentiable wrt running_mean and running_var, "
                        "they cannot have forward grad defined")
                t = unpacked.primal
        stats.append(t)
    return stats


def _load_native():
    """The module _torch_native.cpp builds (the C library's route without Python in between),
    bound to the library _lib loaded; None where it was not built (make builds it where
    libtorch-dev is installed). Installed beside the package by make install, else built beside
    the libbnorm.so _lib loaded (the build directory). One that is there but does not load
    (built against another torch) is reported with a RuntimeWarning, and the ctypes route
    serves."""
    places = [os.path.dirname(os.path.abspath(__file__))]
    if os.path.isabs(_lib.path):  # (not a bare name that find_library gave)
        places.append(os.path.dirname(_lib.path))
    found = [p for p in (os.path.join(d, "_torch_native.so") for d in places) if os.path.exists(p)]
    if not found:
        return None
    path = found[0]
    try:
        spec = importlib.util.spec_from_file_location(__package__ + "._torch_native", path)
        native = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(native)
    except ImportError as e:
        warnings.warn("bnorm: %s does not load (%s); bnorm.torch goes through ctypes, at a higher "
                      "cost per call (rebuild it with make)" % (path, e), RuntimeWarning)
        return None
    names = ("bn_desc_from_dims", "bn_forward_train", "bn_forward_eval", "bn_backward_train",
             "bn_backward_eval", "bn_status_string")
    native.bind({name: ctypes.cast(getattr(_lib.lib, name), ctypes.c_void_p).value
                 for name in names}, _lib.check, composite_backward)
    return native


NATIVE = _load_native()
_native_batch_norm = None if NATIVE is None else NATIVE.batch_norm


def kernel(input, running_mean, running_var, weight, bias, training, momentum, eps):
    """The kernel of the operator bnorm::batch_norm (_ops.py): the native module's call where
    it takes it, else compute()."""
    if _native_batch_norm is not None and _forward_ad._current_level < 0:
        y = _native_batch_norm(input, running_mean, running_var, weight, bias, training,
                               momentum, eps)
        if y is not None:
            return y
    return compute(input, running_mean, running_var, weight, bias, training, momentum, eps)


def compute(input, running_mean, running_var, weight, bias, training, momentum, eps):
    """batch_norm's work once its arguments are checked for torch's function protocol and the
    batch size, where the native module did not take the call."""
    route = _route(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if route != _TORCH and _forward_ad._current_level >= 0:
        running_mean, running_var = _without_tangents(input, running_mean, running_var, weight,
                                                      bias)
    if route == _C:
        training, momentum, eps = bool(training), float(momentum), float(eps)
        if _records_graph(input, weight, bias):
            return _BatchNormFunction.apply(input, weight, bias, running_mean, running_var,
                                            training, momentum, eps)
        return _forward(input, weight, bias, running_mean, running_var, training, momentum,
                        eps)[0]
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
    # the ordinary call, checked and computed in C++ (it declines overrides of the torch
    # function protocol, one value per channel in training and tracing: they go on below)
    if _native_batch_norm is not None and _forward_ad._current_level < 0:
        y = _native_batch_norm(input, running_mean, running_var, weight, bias, training,
                               momentum, eps)
        if y is not None:
            return y
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
