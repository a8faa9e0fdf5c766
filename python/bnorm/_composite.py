"""Batch normalization as a formula in torch operations: the path for what the C library cannot
see, because autograd must see through it.

  - the backward pass when autograd records it (create_graph=True: double backward, gradient
    penalties), so that the gradients of dx, dweight and dbias are right;
  - tensors without storage: the batched gradients of vmap (gradcheck's check_batched_grad,
    jacobian(vectorize=True)) and functorch's wrapped tensors;
  - the tangent of forward-mode AD (jvp);
  - an empty input, as torch's own batch norm treats it.

Every function reduces over all dimensions but the channel one (dim 1) of an (N, C, ...) tensor
and keeps the input's memory format (element-wise operations follow their input's strides).
None of them calls torch's batch norm. The plain forward and backward passes stay in the C
library; the results here agree with it to the rounding of the input's dtype. bfloat16 and
float16 tensors are computed in float32, as the C library computes them, and the results rounded
to their dtypes (differentiably: autograd sees the casts).
"""

import torch as _torch

__all__ = ["forward", "forward_empty", "backward_train", "backward_eval", "jvp_train", "jvp_eval"]


def _dims(x):
    """The dimensions a channel's statistics reduce over: all but dim 1."""
    return [0] + list(range(2, x.dim()))


def _per_channel(t, x):
    """A (C,) tensor shaped (1, C, 1, ...) to broadcast against x."""
    return t.reshape([1, -1] + [1] * (x.dim() - 2))


def _mean(t, x):
    return _per_channel(t.mean(_dims(x)), x)


_HALVES = (_torch.bfloat16, _torch.float16)


def _float(t):
    """t in float32 where it is 16-bit (differentiably), else t."""
    return t.float() if t is not None and t.dtype in _HALVES else t


def _rounded(t, like):
    """t in the dtype of like (None: t as it is)."""
    return t if like is None or t.dtype == like.dtype else t.to(like.dtype)


def forward(x, running_mean, running_var, weight, bias, training, momentum, eps):
    """F.batch_norm's forward, differentiable by autograd. In training the running statistics
    (when given) are blended in place with the batch mean and unbiased variance, outside the
    graph; in eval they normalize."""
    if x.dtype in _HALVES:
        y = _forward(x.float(), running_mean, running_var, _float(weight), _float(bias),
                     training, momentum, eps)
        return y.to(x.dtype)
    return _forward(x, running_mean, running_var, weight, bias, training, momentum, eps)


def _forward(x, running_mean, running_var, weight, bias, training, momentum, eps):
    if training:
        dims = _dims(x)
        mean = x.mean(dims)
        var = (x - _per_channel(mean, x)).square().mean(dims)
        count = x.numel() // x.shape[1]
        # outside both graphs (no_grad leaves forward AD on: detach() drops the tangents too),
        # and both blends before either is written
        with _torch.no_grad():
            blends = []
            if running_mean is not None:
                blends.append((running_mean, _float(running_mean) * (1 - momentum)
                               + mean.detach() * momentum))
            if running_var is not None:
                unbiased = var.detach() * (count / (count - 1))
                blends.append((running_var, _float(running_var) * (1 - momentum)
                               + unbiased * momentum))
            for stat, value in blends:
                stat.copy_(value)
    else:
        mean, var = _float(running_mean), _float(running_var)
    y = (x - _per_channel(mean, x)) * _per_channel(_torch.rsqrt(var + eps), x)
    if weight is not None:
        y = y * _per_channel(weight, x)
    if bias is not None:
        y = y + _per_channel(bias, x)
    return y


def forward_empty(x, weight, bias):
    """An input with no element: torch returns a copy (never a view), connected to weight and
    bias in the graph, and leaves the running statistics alone."""
    y = x.clone()
    if weight is not None:
        y = y * weight[0]
    if bias is not None:
        y = y + bias[0]
    return y


def _with_value(t, value):
    """t's value replaced by value (same shape) while gradients flow as through t: the saved
    statistics of the C forward pass, differentiated as the functions of x they are."""
    return t + (value.to(t.dtype) - t).detach()


def backward_train(dy, x, weight, save_mean, save_invstd, eps):
    """(dx, dweight, dbias) of training-mode batch norm, differentiable in dy, x and weight.

    The mean and inverse standard deviation take the values the forward pass saved (float64)
    and are differentiated as functions of x: dx's own gradient then has every term.
    """
    if x.dtype in _HALVES:
        dx, dw, db = backward_train(_float(dy), x.float(), _float(weight), save_mean,
                                    save_invstd, eps)
        return dx.to(x.dtype), _rounded(dw, weight), _rounded(db, weight)
    dims = _dims(x)
    mean_x = x.mean(dims)
    invstd_x = _torch.rsqrt((x - _per_channel(mean_x, x)).square().mean(dims) + eps)
    mean = _per_channel(_with_value(mean_x, save_mean), x)
    invstd = _per_channel(_with_value(invstd_x, save_invstd), x)
    xhat = (x - mean) * invstd
    g = dy if weight is None else dy * _per_channel(weight, x)
    dx = invstd * (g - _mean(g, x) - xhat * _mean(g * xhat, x))
    return dx, (dy * xhat).sum(dims), dy.sum(dims)


def backward_eval(dy, x, weight, running_mean, running_var, eps):
    """(dx, dweight, dbias) of eval-mode batch norm (the statistics are constants)."""
    if x.dtype in _HALVES:
        dx, dw, db = backward_eval(_float(dy), x.float(), _float(weight), _float(running_mean),
                                   _float(running_var), eps)
        return dx.to(x.dtype), _rounded(dw, weight), _rounded(db, weight)
    dims = _dims(x)
    invstd = _per_channel(_torch.rsqrt(running_var + eps), x)
    xhat = (x - _per_channel(running_mean, x)) * invstd
    scale = invstd if weight is None else invstd * _per_channel(weight, x)
    return dy * scale, (dy * xhat).sum(dims), dy.sum(dims)


def _affine_tangent(y_t, xhat, x, weight_t, bias_t):
    if weight_t is not None:
        y_t = y_t + xhat * _per_channel(weight_t, x)
    if bias_t is not None:
        y_t = y_t + _per_channel(bias_t, x)
    return y_t


def _double(t):
    return None if t is None else t.double()


def jvp_train(x, weight, save_mean, save_invstd, x_t, weight_t, bias_t):
    """The tangent of training-mode y for tangents of x, weight and bias (None: zero), formed in
    float64 (the sums of x_t and x_t * xhat cancel) and rounded once to x's dtype."""
    dtype = x.dtype
    x, weight, x_t, weight_t, bias_t = map(_double, (x, weight, x_t, weight_t, bias_t))
    invstd = _per_channel(save_invstd, x)
    xhat = (x - _per_channel(save_mean, x)) * invstd
    y_t = _torch.zeros_like(x)
    if x_t is not None:
        y_t = invstd * (x_t - _mean(x_t, x) - xhat * _mean(x_t * xhat, x))
        if weight is not None:
            y_t = y_t * _per_channel(weight, x)
    return _affine_tangent(y_t, xhat, x, weight_t, bias_t).to(dtype)


def jvp_eval(x, weight, running_mean, running_var, eps, x_t, weight_t, bias_t):
    """The tangent of eval-mode y for tangents of x, weight and bias (None: zero), formed in
    float64 and rounded once to x's dtype."""
    dtype = x.dtype
    x, weight, running_mean, running_var, x_t, weight_t, bias_t = map(
        _double, (x, weight, running_mean, running_var, x_t, weight_t, bias_t))
    invstd = _per_channel(_torch.rsqrt(running_var + eps), x)
    xhat = (x - _per_channel(running_mean, x)) * invstd
    y_t = _torch.zeros_like(x)
    if x_t is not None:
        y_t = x_t * (invstd if weight is None else invstd * _per_channel(weight, x))
    return _affine_tangent(y_t, xhat, x, weight_t, bias_t).to(dtype)
