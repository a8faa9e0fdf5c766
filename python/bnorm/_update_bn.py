"""bnorm.torch.update_bn: PreciseBN, the exact running statistics of a model's BN layers over one
pass of a loader.

    bnorm.torch.update_bn(loader, model)           # torch.optim.swa_utils.update_bn's signature
    bnorm.torch.update_bn(loader, model, device, progress=True)

The pass is torch's update_bn's: every BN layer with running statistics gets momentum=None and
its statistics reset (running_mean 0, running_var 1, num_batches_tracked 0, in place), the model
is put in training mode, and model(input) runs on every loader item (a tensor, or the first
element of a list or tuple, moved to device when one is given). Each layer's forward is left as
it is: it normalizes with batch statistics, so the deeper layers see the very values they see
under torch's update_bn. Meanwhile a forward hook on every such layer takes the moments of its
input (bn_compute_moments in double, channels-first or channels-last as the tensor's memory
is) and merges them into the layer's accumulator (bn_merge_moments, in the order of the calls
and, within a call, of the pieces). A float64 CPU input is read in place; float32 and other
dtypes, and other devices, are widened to float64 CPU tensors a slice of samples (at most 2^22
values) at a time, because the library's own float32 moments are only as accurate as a float32
output needs.

Afterwards each layer's running_mean and running_var are the mean and the unbiased variance of
all the values that reached it in training mode, computed from the merged moments and rounded
once to the buffers' dtype, and num_batches_tracked the number of those calls (one per batch,
unless the model calls the layer more than once). torch's update_bn averages the per-batch means
and variances instead, which is not the population's variance (the spread between batches is
lost) and weighs a small last batch like a full one.

Across processes the layers' moments of every rank are merged in rank order, so that every rank
stores the same bits, those of the data of all ranks together; num_batches_tracked is the number
of calls on all ranks. The processes are:
  - the default group of torch.distributed, when it is initialized (_dist.Communicator: the
    moments travel as the bits of int64 tensors through all_gather and are merged here);
  - otherwise MPI.COMM_WORLD (_mpi_comm; merged by libbnorm_mpi's bn_mpi_merge_moments_f), when
    an MPI launcher started the process (_env.launched_by_mpi).
Every rank must call update_bn on the same model; each passes its own part of the data, in any
number of batches (unless the model's own layers synchronize in forward, as SyncBatchNorm
does: then the ranks must run the same number of batches, as in training). Before the moments
move, the ranks tell each other whether their pass failed and how many layers and channels
they have: an exception in one rank's pass is raised there and a RuntimeError naming that rank
on the others, and different models are a ValueError on every rank; none is left waiting.

The model's and each submodule's training flag and each layer's momentum are restored, also when
the loader or the model raises (then the statistics are left as the forward passes made them).

Decisions where torch leaves a choice:
  - layers without running statistics (track_running_stats=False) are left alone;
  - a model without such layers returns at once, without reading the loader (as torch's);
  - an empty loader, or a layer that no batch reached in training mode, leaves the layer reset
    (running_mean 0, running_var 1, num_batches_tracked 0), as torch's update_bn does;
  - a layer that saw one value per channel in all gets a running_var of NaN, the unbiased
    variance of one value (torch's layers refuse such a batch in training, so only a layer of
    another kind can);
  - a lazy layer (LazyBatchNorm) not yet initialized is a ValueError before anything changes.
The buffers are updated in place (torch 1.13's update_bn replaces them with new tensors).
"""

import ctypes
import sys
import time

import numpy as _np
import torch as _torch

from . import _dist, _lib, _mpi, _mpi_comm
from ._env import launched_by_mpi

__all__ = ["update_bn"]

# struct bn_moments, field for field: a numpy record array is an array of them for the C calls.
_MOMENTS = _np.dtype([("count", _np.int64), ("mean", _np.float64), ("m2", _np.float64)])
assert _MOMENTS.itemsize == ctypes.sizeof(_lib.BnMoments)


def _layers(model):
    """The BN layers of model that have running statistics, in model.modules() order."""
    layers = []
    for name, m in model.named_modules():
        if not isinstance(m, _torch.nn.modules.batchnorm._BatchNorm):
            continue
        if m.running_mean is None or m.running_var is None:
            continue
        if _torch.nn.parameter.is_lazy(m.running_mean):
            raise ValueError("bnorm update_bn: the lazy layer %r is not initialized yet: run the "
                             "model on one batch first" % (name or type(m).__name__))
        layers.append(m)
    return layers


# Values widened to float64 at a time (32 MiB), whole samples: see _pieces.
_WIDEN_VALUES = 1 << 22


def _pieces(x):
    """x as (tensor, layout) pieces along N for bn_compute_moments, channels-first (N, C, S) or
    channels-last (N, S, C) as x's memory is (any other strides: a contiguous copy first).

    A float64 CPU tensor is one piece, x itself. Any other is widened to float64 on the CPU a
    slice of samples at a time, in the same layout: the library's float32 moments are formed in
    float about a pivot (bnorm.h, ACCURACY), as accurate as a float32 output needs but not to
    double precision, and a slice bounds the memory the copy takes."""
    x = x.detach()
    if x.is_contiguous():
        layout = _lib.BN_CHANNELS_FIRST
    elif x.movedim(1, -1).is_contiguous():  # (N, L, C), NHWC, NDHWC memory
        layout = _lib.BN_CHANNELS_LAST
    else:
        x, layout = x.contiguous(), _lib.BN_CHANNELS_FIRST
    if x.dtype == _torch.float64 and x.device.type == "cpu":
        yield x, layout
        return
    per = max(1, _WIDEN_VALUES // max(1, x[0].numel()))
    for i in range(0, x.shape[0], per):
        yield x[i:i + per].to("cpu", _torch.float64), layout  # strides kept (preserve_format)


def _merge(acc, part):
    """acc = acc merged with part (bn_merge_moments); both 1-d _MOMENTS arrays of one length."""
    _lib.check(_lib.lib.bn_merge_moments(acc.ctypes.data, part.ctypes.data, len(acc)),
               "bn_merge_moments")


class _Accumulator:
    """The moments of every layer in one _MOMENTS array, so that the ranks exchange them in one
    call. Layer k owns c_k entries (its channels' moments) and then one more whose count is the
    number of calls: {calls, 0, 0} merges by adding the counts, so the same merge that combines
    the moments of the ranks adds up their calls."""

    def __init__(self, layers):
        self.layers = layers
        self.offsets = []
        total = 0
        for m in layers:
            self.offsets.append(total)
            total += m.running_mean.numel() + 1
        self.moments = _np.zeros(total, _MOMENTS)  # empty moments: count 0, mean 0, M2 0

    def hook(self, k):
        """A forward hook for layer k: merges the moments of its input, in training mode."""
        start = self.offsets[k]
        c = self.layers[k].running_mean.numel()
        acc = self.moments[start:start + c]

        def take(module, args, output):
            if not module.training:
                return
            if args[0].numel() > 0:
                part = _np.empty(c, _MOMENTS)
                for x, layout in _pieces(args[0]):
                    desc = _lib.make_desc(x.shape, _lib.BN_FLOAT64, layout)
                    _lib.check(_lib.lib.bn_compute_moments(part.ctypes.data, _lib.ptr(x), desc),
                               "bn_compute_moments")
                    _merge(acc, part)
            self.moments["count"][start + c] += 1

        return take


def _communicator():
    """The ranks that share the statistics: torch.distributed's default group when it is
    initialized, else MPI.COMM_WORLD when an MPI launcher started the process, else None."""
    if _dist.initialized():
        return _dist.Communicator(None)
    if launched_by_mpi():
        return _mpi_comm.world()
    return None


def _merge_ranks(comm, moments, failure):
    """The moments of all ranks of comm, merged in rank order. First every rank says whether its
    pass failed and how many entries it has, so that a failure or a different model on one rank
    is an exception on every rank, none left waiting; a failed rank raises its own (failure)."""
    said = comm.allgather((failure is not None, len(moments)))
    if failure is not None:
        raise failure
    failed = [r for r, (f, _) in enumerate(said) if f]
    if failed:
        raise RuntimeError("bnorm update_bn: the pass failed on rank %s of %d"
                           % (", ".join(map(str, failed)), comm.size))
    lengths = [n for _, n in said]
    if any(n != lengths[0] for n in lengths):
        raise ValueError("bnorm update_bn: the ranks' models differ: their BN layers have %s "
                         "channels plus layers in all, by rank" % lengths)
    if isinstance(comm, _mpi_comm.Communicator):
        merged = moments.copy()
        _lib.check(_mpi.load().bn_mpi_merge_moments_f(merged.ctypes.data, len(merged),
                                                      comm.comm.py2f()),
                   "bn_mpi_merge_moments")
        return merged
    parts = comm.allgather_tensor(_torch.from_numpy(moments.view(_np.int64)))  # the bits
    merged = _np.zeros(len(moments), _MOMENTS)
    for part in parts:  # in rank order
        _merge(merged, part.numpy().view(_MOMENTS))
    return merged


class _Progress:
    """A one-line progress bar on stderr, redrawn after every batch; silent when not enabled."""

    WIDTH = 30

    def __init__(self, loader, enabled):
        self.enabled = enabled
        self.drawn = False
        self.total = None
        if enabled:
            try:
                self.total = len(loader)
            except TypeError:  # an iterable without a length: count only
                pass
        self.start = time.monotonic()

    def step(self, done):
        if not self.enabled:
            return
        seconds = time.monotonic() - self.start
        if self.total:
            filled = min(self.WIDTH, self.WIDTH * done // self.total)
            line = "update_bn [%s%s] %d/%d batches, %.1f s" % (
                "#" * filled, "." * (self.WIDTH - filled), done, self.total, seconds)
        else:
            line = "update_bn: %d batches, %.1f s" % (done, seconds)
        sys.stderr.write("\r" + line)
        sys.stderr.flush()
        self.drawn = True

    def close(self):
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _store(layers, accumulator, moments):
    """Each layer's statistics from its merged moments (see the module doc for count 0 and 1)."""
    with _torch.no_grad():
        for m, start in zip(layers, accumulator.offsets):
            c = m.running_mean.numel()
            mine = moments[start:start + c]
            if m.num_batches_tracked is not None:
                m.num_batches_tracked.fill_(int(moments["count"][start + c]))
            count = int(mine["count"][0])  # every channel sees the same number of values
            if count == 0:
                continue  # left reset
            var = mine["m2"] / (count - 1) if count > 1 else _np.full(c, _np.nan)
            m.running_mean.copy_(_torch.from_numpy(mine["mean"].copy()))
            m.running_var.copy_(_torch.from_numpy(var))


def update_bn(loader, model, device=None, *, progress=False):
    """Set the running statistics of every BN layer of model to the exact mean and unbiased
    variance of its inputs over one pass of loader in training mode (see the module doc).

    loader: an iterable of tensors, or of lists/tuples whose first element is the input.
    model: a torch.nn.Module; its _BatchNorm layers with running statistics are updated
    (torch.nn's BatchNorm1d/2d/3d, SyncBatchNorm, bnorm.torch's and other subclasses).
    device: when given, each input is moved there before model(input).
    progress: draw a progress bar on stderr (on every rank that asks for one).
    Across ranks (torch.distributed or mpirun), every rank must make the call.
    """
    layers = _layers(model)
    if not layers:
        return
    comm = _communicator()
    with _torch.no_grad():
        for m in layers:
            m.running_mean.zero_()
            m.running_var.fill_(1)
            if m.num_batches_tracked is not None:
                m.num_batches_tracked.zero_()

    accumulator = _Accumulator(layers)
    failure = None
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in layers]
    hooks = [m.register_forward_hook(accumulator.hook(k)) for k, m in enumerate(layers)]
    bar = _Progress(loader, progress)
    try:
        model.train()
        for m in layers:
            m.momentum = None
        for done, batch in enumerate(loader, 1):
            if isinstance(batch, (list, tuple)):
                batch = batch[0]
            if device is not None:
                batch = batch.to(device)
            model(batch)
            bar.step(done)
    except Exception as e:  # noqa: BLE001 - with other ranks, raised after telling them
        if comm is None:
            raise
        failure = e
    finally:
        bar.close()
        for h in hooks:
            h.remove()
        for m, momentum in momenta:
            m.momentum = momentum
        for m, training in modes:
            m.training = training

    moments = accumulator.moments
    if comm is not None:
        moments = _merge_ranks(comm, moments, failure)
    _store(layers, accumulator, moments)
