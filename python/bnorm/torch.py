"""bnorm.torch: drop-in replacements for torch.nn.BatchNorm1d/2d/3d, LazyBatchNorm1d/2d/3d,
SyncBatchNorm (over torch.distributed or MPI, on the CPU: see _sync.py), F.batch_norm and
torchvision.ops.FrozenBatchNorm2d (_frozen.py).

    import bnorm.torch
    model = nn.Sequential(nn.Conv2d(3, 8, 3), bnorm.torch.BatchNorm2d(8), nn.ReLU())
    bnorm.torch.convert(other_model)     # swaps its torch.nn.BatchNormXd in place
    torch.nn.functional.batch_norm = bnorm.torch.batch_norm   # also works

The modules subclass torch.nn.BatchNorm1d/2d/3d (and the Lazy ones) and only replace forward(),
so constructor arguments, parameters, buffers, state_dict keys, train()/eval(),
reset_parameters(), repr, isinstance checks and the input-dimension errors are torch's own.
forward() follows torch's _BatchNorm.forward line for line (num_batches_tracked is incremented
in Python before the call, as torch does, also for N = 0 and also when the call then fails;
momentum=None passes the factor 1/num_batches_tracked), and calls batch_norm() (_functional.py)
instead of F.batch_norm.

batch_norm() has F.batch_norm's signature. For float32 and float64 CPU tensors bnorm computes:
  - the C library, on the tensors' own memory (data_ptr(), no copy), for ordinary calls: at
    least one element; weight, bias and running statistics None or 1-d tensors of C elements of
    the input's dtype, the running statistics contiguous; 0 <= eps < inf, 0 <= momentum <= 1.
    Where `make` found libtorch's headers it built bnorm._torch_native, which makes these calls
    from C++ with an autograd node of its own (bnorm::BatchNormBackward), so that a small
    layer costs no more than torch.nn's; without it the same calls go through ctypes and a
    Python autograd Function;
  - a formula in torch operations (_composite.py; never torch's batch norm) for the rest: an
    empty input (torch's result: a copy, linked to weight and bias), odd eps or momentum,
    running statistics that are not contiguous, and tensors without storage (functorch's).
What is left to torch.nn.functional.batch_norm itself (torch's, captured at import, so patching
F.batch_norm with this function does not recurse): other dtypes (bfloat16, float16), other
devices, mixed dtypes, and the arguments torch refuses (wrong sizes, eval without running
statistics, running statistics that require grad), whose errors are then exactly torch's.
__torch_function__ overrides are dispatched as torch does, with this function as the one
overridden.

Autograd at every order. The backward pass is the C library's (bn_backward_train from the
float64 save_mean/save_invstd of the forward pass, bn_backward_eval with copies of the running
statistics taken at forward time), computing only the gradients autograd asks for. When autograd
records the backward (create_graph=True: double backward, gradient penalties, Hessians) or the
gradient is vmap's batched one (gradcheck's check_batched_grad, jacobian(vectorize=True)), the
backward is _composite's formula instead, which autograd differentiates again. Forward-mode AD
(jvp) is supported for input, weight and bias; a tangent on a running statistic raises.
functorch.vmap and functorch.grad work through the formula path; vmap of a training call that
updates shared running statistics raises, as it does with torch.

PyTorch's tools:
  - torch.jit.trace records the operator bnorm::batch_norm (_ops.py), and torch.jit.script
    compiles forward() to it: the compiled model runs bnorm, and torch.jit.save'd models load
    where bnorm.torch is imported;
  - torch.fx.symbolic_trace keeps the modules as call_module nodes, as it keeps torch.nn's;
  - torch.ao.quantization.fuse_modules fuses them as torch's (_fusion.py), and
    torch.nn.utils.fuse_conv_bn_eval takes them.

Layouts: a contiguous input is used as channels-first; a 4-d channels_last or 5-d
channels_last_3d input as channels-last, without a copy, and the output keeps that memory
format (as torch's does). Any other strides are made contiguous first.
"""

import torch as _torch

from . import _lib  # noqa: F401 (bnorm.torch._lib: the loaded library, as tests reach it)
from . import _fusion
from ._frozen import FrozenBatchNorm2d
from typing import Optional as _Optional, Tuple as _Tuple

from torch import Tensor as _Tensor

from ._act import batch_norm_relu
from ._functional import batch_norm
from ._ops import batch_norm_scripted
from ._sync import SyncBatchNorm
from ._update_bn import update_bn

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormAct2d", "LazyBatchNorm1d",
           "LazyBatchNorm2d", "LazyBatchNorm3d", "SyncBatchNorm", "FrozenBatchNorm2d",
           "batch_norm", "batch_norm_relu", "convert", "update_bn"]


class _BnormForward:
    """forward() of torch.nn.modules.batchnorm._BatchNorm (torch 1.13), calling bnorm."""

    def forward(self, input):
        if not _torch.jit.is_scripting():  # (a separate test: TorchScript skips this block)
            if isinstance(input, _torch.fx.Proxy):
                return _fx_call_module(self, input)
        self._check_input_dim(input)
        running_mean, running_var, bn_training, factor = self._call_arguments()
        if _torch.jit.is_scripting():  # the same call, as TorchScript can compile it
            return batch_norm_scripted(input, running_mean, running_var, self.weight, self.bias,
                                       bn_training, factor, self.eps)
        return batch_norm(input, running_mean, running_var, self.weight, self.bias, bn_training,
                          factor, self.eps)

    def _call_arguments(self) -> _Tuple[_Optional[_Tensor], _Optional[_Tensor], bool, float]:
        """(running_mean, running_var, training, momentum) of the functional call, as torch's
        forward() forms them (counting the batch first)."""
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
        passed = not self.training or self.track_running_stats
        running_mean = self.running_mean if passed else None
        running_var = self.running_var if passed else None
        return running_mean, running_var, bn_training, exponential_average_factor


def _fx_call_module(module, input, *more):
    """Under torch.fx.symbolic_trace: the module as one call_module node, as torch.nn's batch
    norms are (the tracer takes them as leaves), so that the GraphModule runs this module and
    follows its train() / eval()."""
    tracer = input.tracer
    path = tracer.path_of_module(module)
    if not path:
        raise _torch.fx.proxy.TraceError(
            "bnorm: a batch norm module cannot be the root of torch.fx.symbolic_trace (its "
            "checks of the input's dimensions are control flow); trace a model that holds it")
    return tracer.create_proxy("call_module", path, (input,) + more, {})


class BatchNorm1d(_BnormForward, _torch.nn.BatchNorm1d):
    """torch.nn.BatchNorm1d computed by bnorm: (N, C) or (N, C, L) input."""


class BatchNorm2d(_BnormForward, _torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d computed by bnorm: (N, C, H, W) input, contiguous or channels_last."""


class BatchNorm3d(_BnormForward, _torch.nn.BatchNorm3d):
    """torch.nn.BatchNorm3d computed by bnorm: (N, C, D, H, W), contiguous or channels_last_3d."""


class BatchNormAct2d(_BnormForward, _torch.nn.BatchNorm2d):
    """BatchNorm2d followed by a ReLU, and a residual add before it, in one pass over memory:
    forward(x, residual=None) is relu(bn(x) + residual) (relu(bn(x)) without one), a drop-in for
    conv-BN-ReLU and for the residual block's BN-add-ReLU. Its parameters, buffers and
    state_dict keys are a BatchNorm2d's (it is one); act is "relu", the one activation."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, act="relu"):
        if act != "relu":
            raise ValueError(f"bnorm: BatchNormAct2d's act must be 'relu', not {act!r}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.act = act

    def extra_repr(self):
        return super().extra_repr() + f", act={self.act!r}"

    def forward(self, input, residual: _Optional[_Tensor] = None):
        if not _torch.jit.is_scripting():
            if isinstance(input, _torch.fx.Proxy):
                return _fx_call_module(self, input, *(() if residual is None else (residual,)))
        self._check_input_dim(input)
        running_mean, running_var, bn_training, factor = self._call_arguments()
        if _torch.jit.is_scripting():  # bnorm's operator, then the add and the relu
            y = batch_norm_scripted(input, running_mean, running_var, self.weight, self.bias,
                                    bn_training, factor, self.eps)
            if residual is not None:
                y = y + residual
            return _torch.relu(y)
        return batch_norm_relu(input, running_mean, running_var, self.weight, self.bias,
                               bn_training, factor, self.eps, residual)


class LazyBatchNorm1d(_BnormForward, _torch.nn.LazyBatchNorm1d):
    """torch.nn.LazyBatchNorm1d computed by bnorm: becomes a bnorm BatchNorm1d at its first call."""

    cls_to_become = BatchNorm1d


class LazyBatchNorm2d(_BnormForward, _torch.nn.LazyBatchNorm2d):
    """torch.nn.LazyBatchNorm2d computed by bnorm: becomes a bnorm BatchNorm2d at its first call."""

    cls_to_become = BatchNorm2d


class LazyBatchNorm3d(_BnormForward, _torch.nn.LazyBatchNorm3d):
    """torch.nn.LazyBatchNorm3d computed by bnorm: becomes a bnorm BatchNorm3d at its first call."""

    cls_to_become = BatchNorm3d


_SWAP = {
    _torch.nn.BatchNorm1d: BatchNorm1d,
    _torch.nn.BatchNorm2d: BatchNorm2d,
    _torch.nn.BatchNorm3d: BatchNorm3d,
    _torch.nn.LazyBatchNorm1d: LazyBatchNorm1d,
    _torch.nn.LazyBatchNorm2d: LazyBatchNorm2d,
    _torch.nn.LazyBatchNorm3d: LazyBatchNorm3d,
}

_fusion.register({_torch.nn.BatchNorm1d: BatchNorm1d, _torch.nn.BatchNorm2d: BatchNorm2d,
                  _torch.nn.BatchNorm3d: BatchNorm3d})


def convert(module, fuse=False):
    """Make every torch.nn.BatchNorm1d/2d/3d (and Lazy one) in module (itself included) a bnorm one, in place.

    Only the class changes: parameters, buffers and hooks are the same objects, so optimizers
    built before the call keep working. LazyBatchNorm1d/2d/3d become bnorm's Lazy modules and
    torchvision.ops.FrozenBatchNorm2d bnorm's FrozenBatchNorm2d (the same buffers); other
    subclasses (SyncBatchNorm, user classes) are left alone. With fuse=True, a BatchNorm2d
    followed by an nn.ReLU in an nn.Sequential becomes a BatchNormAct2d (the same parameters and
    buffers: state_dict keys do not change) and the ReLU an nn.Identity. Returns module.
    """
    for m in module.modules():
        cls = _SWAP.get(type(m))
        if cls is None and _is_torchvision_frozen(type(m)):
            cls = FrozenBatchNorm2d
        if cls is not None:
            m.__class__ = cls
    if fuse:
        for seq in [m for m in module.modules() if isinstance(m, _torch.nn.Sequential)]:
            names = list(seq._modules)
            for first, second in zip(names, names[1:]):
                bn, act = seq._modules[first], seq._modules[second]
                if type(bn) is BatchNorm2d and type(act) is _torch.nn.ReLU:
                    bn.__class__ = BatchNormAct2d
                    bn.act = "relu"
                    seq._modules[second] = _torch.nn.Identity()
    return module


def _is_torchvision_frozen(cls):
    """torchvision.ops.FrozenBatchNorm2d, recognized without importing torchvision."""
    return cls.__name__ == "FrozenBatchNorm2d" and cls.__module__.startswith("torchvision.")
