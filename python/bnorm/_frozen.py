"""bnorm.torch.FrozenBatchNorm2d: torchvision.ops.FrozenBatchNorm2d computed by bnorm.

A batch norm whose statistics and affine parameters are fixed: weight, bias, running_mean and
running_var are buffers (no parameters), the state_dict keys are torchvision's (a BatchNorm2d's
state_dict loads, its num_batches_tracked dropped, as torchvision drops it), the repr is
torchvision's. forward() is the eval-mode batch norm of bnorm.torch.batch_norm (bn_forward_eval;
the backward pass gives x its gradient through bn_backward_eval), so TorchScript, torch.fx and
autograd at every order see it as they see bnorm's BatchNorm2d. Results equal torchvision's to
float32 rounding: bnorm subtracts the mean before scaling, where torchvision folds it into a bias
first. Inputs are (N, C, ...) with C = num_features, channels-first or channels_last.
"""

from typing import List

import torch as _torch
from torch import Tensor

from ._functional import batch_norm
from ._ops import batch_norm_scripted

__all__ = ["FrozenBatchNorm2d"]


class FrozenBatchNorm2d(_torch.nn.Module):
    """torchvision.ops.FrozenBatchNorm2d(num_features, eps=1e-5), computed by bnorm."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", _torch.ones(num_features))
        self.register_buffer("bias", _torch.zeros(num_features))
        self.register_buffer("running_mean", _torch.zeros(num_features))
        self.register_buffer("running_var", _torch.ones(num_features))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict,
                              strict: bool, missing_keys: List[str], unexpected_keys: List[str],
                              error_msgs: List[str]):
        state_dict.pop(prefix + "num_batches_tracked", None)  # a BatchNorm's counter
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        if _torch.jit.is_scripting():
            return batch_norm_scripted(x, self.running_mean, self.running_var, self.weight,
                                       self.bias, False, 0.0, self.eps)
        return batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                          False, 0.0, self.eps)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.weight.shape[0]}, eps={self.eps})"
