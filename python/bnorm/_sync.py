"""bnorm.torch.SyncBatchNorm: batch normalization of a batch split between MPI processes.

    # mpirun -np 4 python3 train.py
    model = nn.Sequential(nn.Conv2d(3, 8, 3), bnorm.torch.SyncBatchNorm(8), nn.ReLU())

A subclass of torch.nn.SyncBatchNorm (same constructor, parameters, buffers, state_dict keys,
repr) whose forward() works on the CPU. In training, when a communicator is in use, the batch is
the union of every rank's input (any sizes along N, empty ones included): each rank's statistics
are gathered by libbnorm_mpi and merged in rank order, so the output, the input gradient and the
running statistics are those of torch.nn.BatchNormXd applied to the whole batch, and the running
statistics are the same bits on every rank. weight.grad and bias.grad are each rank's share:
their sum over the ranks (what a data-parallel all-reduce of the gradients forms) is the whole
batch's gradient, as with torch's SyncBatchNorm.

The communicator: process_group when it is given (an mpi4py communicator, anything with py2f()),
else mpi4py's MPI.COMM_WORLD when the process was started by mpirun / mpiexec (Open MPI, MPICH
or PMIx environment variables), else none: then the module is an ordinary bnorm BatchNorm.
In eval, and in training without batch statistics, nothing is synchronized (as in torch).

The forward and backward calls are collective: every rank must run the module, and backward
through it, the same number of times (as with torch's). A batch of one value per channel in all
is the same ValueError on every rank, raised by every rank together (no rank is left waiting).
"""

import os

import torch as _torch
from torch.autograd.function import once_differentiable as _once_differentiable

from . import _lib

__all__ = ["SyncBatchNorm"]

_DTYPES = {_torch.float32: _lib.BN_FLOAT32, _torch.float64: _lib.BN_FLOAT64}
_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK")


def _launched_by_mpi():
    return any(v in os.environ for v in _LAUNCHER_VARS)


def _ptr(t):
    return None if t is None else t.data_ptr()


def _raise(status, function, size):
    if status == -5:  # BN_ERR_COUNT, decided by all ranks together: torch's message
        raise ValueError("Expected more than 1 value per channel when training, got input size {}"
                         .format(size))
    _lib.check(status, function)


class _SyncFunction(_torch.autograd.Function):
    """Forward and backward through libbnorm_mpi (collective calls)."""

    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, momentum, eps, comm):
        from . import _mpi
        from .torch import _layout
        lib = _mpi.load()
        x, layout = _layout(input)
        desc = _lib.make_desc(x.shape, _DTYPES[x.dtype], layout)
        y = _torch.empty_like(x)
        c = x.shape[1]
        save_mean = _torch.empty(c, dtype=_torch.float64)
        save_invstd = _torch.empty(c, dtype=_torch.float64)
        opt = _lib.make_options(eps, momentum, cumulative=False)
        status = lib.bn_mpi_forward_train_f(
            _ptr(y), _ptr(save_mean), _ptr(save_invstd), _ptr(running_mean), _ptr(running_var),
            None, _ptr(x), _ptr(weight), _ptr(bias), desc, opt, comm.py2f())
        _raise(status, "bn_mpi_forward_train", input.size())
        ctx.save_for_backward(x, weight, save_mean, save_invstd)
        ctx.desc = desc
        ctx.comm = comm
        return y

    @staticmethod
    @_once_differentiable
    def backward(ctx, grad_output):
        from . import _mpi
        lib = _mpi.load()
        x, weight, save_mean, save_invstd = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        dy = grad_output
        if dy.dtype != x.dtype or dy.stride() != x.stride():
            dy = _torch.empty_like(x).copy_(grad_output)
        c = x.shape[1]
        dx = _torch.empty_like(x) if need_x else None
        dweight = _torch.empty(c, dtype=x.dtype) if need_weight else None
        dbias = _torch.empty(c, dtype=x.dtype) if need_bias else None
        # collective: every rank makes this call, whatever gradients it needs
        status = lib.bn_mpi_backward_train_f(
            _ptr(dx), _ptr(dweight), _ptr(dbias), _ptr(dy), _ptr(x), _ptr(save_mean),
            _ptr(save_invstd), _ptr(weight), ctx.desc, ctx.comm.py2f())
        _lib.check(status, "bn_mpi_backward_train")
        return (dx, dweight, dbias) + (None,) * 5


class SyncBatchNorm(_torch.nn.SyncBatchNorm):
    """torch.nn.SyncBatchNorm on the CPU over MPI (see the module doc). process_group: an mpi4py
    communicator, or None for MPI.COMM_WORLD under mpirun and no synchronization otherwise."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         process_group, device, dtype)

    def _communicator(self):
        if self.process_group is not None:
            return self.process_group
        if not _launched_by_mpi():
            return None
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise ImportError("bnorm SyncBatchNorm: launched by mpirun, but mpi4py is missing "
                              "(apt-get install python3-mpi4py): %s" % e) from e
        return MPI.COMM_WORLD

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """torch.nn.SyncBatchNorm.convert_sync_batchnorm, making bnorm SyncBatchNorms: every
        BatchNorm1d/2d/3d in module (itself included) is replaced by one that shares its
        parameters and buffers. Returns the converted module."""
        out = module
        if isinstance(module, _torch.nn.modules.batchnorm._BatchNorm):
            out = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, process_group)
            if module.affine:
                with _torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return out

    def forward(self, input):
        from .torch import batch_norm
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        tracked = not self.training or self.track_running_stats
        running_mean = self.running_mean if tracked else None
        running_var = self.running_var if tracked else None
        comm = self._communicator() if bn_training and self.training else None
        if comm is None:
            return batch_norm(input, running_mean, running_var, self.weight, self.bias,
                              bn_training, factor, self.eps)
        if input.device.type != "cpu" or input.dtype not in _DTYPES:
            raise ValueError("bnorm SyncBatchNorm: input must be a float32 or float64 CPU tensor, "
                             "got %s on %s" % (input.dtype, input.device))
        for t in (self.weight, self.bias, running_mean, running_var):
            if t is not None and (t.dtype != input.dtype or not t.is_contiguous()):
                raise ValueError("bnorm SyncBatchNorm: parameters and buffers must be contiguous "
                                 "and of the input's dtype %s" % input.dtype)
        return _SyncFunction.apply(input, self.weight, self.bias, running_mean, running_var,
                                   float(factor), float(self.eps), comm)
