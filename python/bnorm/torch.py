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
1/num_batches_tracked), and calls batch_norm() (_functional.py) instead of F.batch_norm.

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

import torch as _torch

from . import _lib  # noqa: F401 (bnorm.torch._lib: the loaded library, as tests reach it)
from ._functional import batch_norm
from ._sync import SyncBatchNorm

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "batch_norm", "convert"]


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
