"""bnorm's batch norm as an operator of torch's dispatcher: bnorm::batch_norm.

    torch.ops.bnorm.batch_norm(input, running_mean, running_var, weight, bias, training,
                               momentum, eps) -> Tensor

The arguments of F.batch_norm, all given; running_mean and running_var are updated in place in
training. torch.jit.trace records this operator (bnorm.torch.batch_norm calls it while tracing)
and torch.jit.script compiles the modules' forward to it (batch_norm_scripted), so that traced
and scripted models run bnorm, and torch.jit.save'd ones load wherever bnorm.torch is imported.

Both kernels are _functional.kernel (the native module's call, else compute): the Autograd one (it builds the graph itself, through
_BatchNormFunction, so it never redispatches below autograd) and the CPU one (reached directly
only where autograd is off, as under torch.inference_mode).
"""

from typing import Optional

import torch as _torch
from torch import Tensor

from . import _functional

__all__ = ["batch_norm_scripted"]

_LIBRARY = _torch.library.Library("bnorm", "DEF")  # kept alive: the registration is its own
_LIBRARY.define(
    "batch_norm(Tensor input, Tensor(a!)? running_mean, Tensor(b!)? running_var, "
    "Tensor? weight, Tensor? bias, bool training, float momentum, float eps) -> Tensor")
_LIBRARY.impl("batch_norm", _functional.kernel, "Autograd")
_LIBRARY.impl("batch_norm", _functional.kernel, "CPU")


def batch_norm_scripted(input: Tensor, running_mean: Optional[Tensor],
                        running_var: Optional[Tensor], weight: Optional[Tensor],
                        bias: Optional[Tensor], training: bool, momentum: float,
                        eps: float) -> Tensor:
    """bnorm.torch.batch_norm in TorchScript: the batch size check, then the operator."""
    if training:
        _functional._verify_batch_size(input.size())
    return _torch.ops.bnorm.batch_norm(input, running_mean, running_var, weight, bias, training,
                                       momentum, eps)
