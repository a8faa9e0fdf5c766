"""bnorm.torch.SyncBatchNorm: batch normalization of a batch split between processes, which
talk over torch.distributed (any backend; gloo on the CPU) or MPI.

    # torchrun --nproc_per_node 4 train.py, with dist.init_process_group("gloo") in train.py;
    # or mpirun -np 4 python3 train.py
    model = nn.Sequential(nn.Conv2d(3, 8, 3), bnorm.torch.SyncBatchNorm(8), nn.ReLU())

A subclass of torch.nn.SyncBatchNorm (same constructor, parameters, buffers, state_dict keys,
repr) whose forward() works on the CPU. In training, when a communicator is in use, the batch is
the union of every rank's input (any sizes along N, empty ones included), and the passes are
libbnorm_mpi's stages (bnorm.h), in its order:
  forward:  each rank's per-channel moments (bn_compute_moments) are gathered on every rank and
            merged in rank order (bn_merge_moments), then each rank normalizes its shard with
            them and updates its running statistics (bn_forward_train_stats);
  backward: each rank's sums of dy and dy * xhat (bn_backward_sums) are gathered and added in
            rank order, then each rank computes its shard's dx (bn_backward_train_sums).
Nothing is combined by a reduction of unspecified order, so the running statistics are the same
bits on every rank, and over either communicator the results are the bits bn_mpi_forward_train
and bn_mpi_backward_train give for the same shards. The output, the input gradient and the
running statistics are those of torch.nn.BatchNormXd applied to the whole batch. weight.grad
and bias.grad are each rank's share: their sum over the ranks (what a data-parallel all-reduce
of the gradients forms) is the whole batch's gradient, as with torch's SyncBatchNorm.

The communicator, the first of:
  - process_group, when it is given: a torch.distributed ProcessGroup (dist.new_group(...))
    means torch.distributed (_dist.py); anything else is an mpi4py communicator (anything with
    py2f(); _mpi_comm.py);
  - torch.distributed's default group, when torch.distributed is initialized;
  - mpi4py's MPI.COMM_WORLD, when the process was started by mpirun / mpiexec (one of the
    launcher variables of _env.py is set);
  - none: then the module is an ordinary bnorm BatchNorm.
In eval, and in training without batch statistics, nothing is synchronized (as in torch).

The forward and backward calls are collective: every rank must run the module, and backward
through it, the same number of times (as with torch's). Errors are decided by all ranks
together, so that none is left waiting: each rank checks its own arguments as torch's
F.batch_norm would (its input's dimensions and C against every per-channel tensor's size,
running statistics that require grad, dtypes, devices, memory layout; with one rank, one value
per channel), allocates what it writes and computes its own moments or sums, and then one small
allgather tells every rank what all found, before any data moves. If any rank failed, every rank
raises the first failing rank's error: torch's exception type and message, followed by
"(rank R of S)" when there are several ranks. The ranks must also give inputs of the same C and
dtype, and the same eps and momentum factor (else a RuntimeError on every rank). A batch of one
value per channel in all is torch's ValueError on every rank. Nothing is written on any rank,
except that num_batches_tracked counts the batch when torch would have counted it before raising
(all but the dimension errors). With one rank the errors are exactly torch's F.batch_norm's.

Backward with create_graph=True is refused: RuntimeError on every rank (decided together, after
the argument errors), since the gradient this backward computes cannot be differentiated again.
"""

import torch as _torch

from . import _dist, _lib, _mpi_comm
from ._env import launched_by_mpi
from ._functional import _layout, _verify_batch_size, batch_norm
from ._lib import ptr as _ptr

__all__ = ["SyncBatchNorm"]


def _raise(status, function, size):
    if status == -5:  # BN_ERR_COUNT, decided by all ranks together: torch's message
        raise ValueError("Expected more than 1 value per channel when training, got input size {}"
                         .format(size))
    _lib.check(status, function)


# ------------------------------------------------------------------------------------------------
# Errors decided by all ranks: each rank checks its own arguments without raising, then one
# small allgather tells every rank what every other found, before any data moves; every rank
# raises the first failing rank's error, so none is left waiting in a collective call.

def _problem(e, counted=True):
    """What a rank tells the others of its exception e: the nearest built-in exception type (one
    every rank can rebuild: ValueError, RuntimeError, ...), the message, and whether torch has
    counted the batch (num_batches_tracked) when it raises this one."""
    kind = next(k for k in type(e).__mro__ if k.__module__ == "builtins")
    return kind, str(e), counted


# What a rank asked for a differentiable gradient (backward with create_graph=True) tells.
_DOUBLE_BACKWARD = (RuntimeError, "bnorm SyncBatchNorm: backward with create_graph=True is not "
                    "supported: the input gradient it computes cannot be differentiated again",
                    True)


def _first_problem(problems):
    """The problem every rank raises, of problems (each rank's, in rank order; None where a rank
    has none): the first rank's, naming it when there are several ranks; None when no rank has
    one."""
    failed = [r for r, p in enumerate(problems) if p is not None]
    if not failed:
        return None
    kind, message, counted = problems[failed[0]]
    if len(problems) > 1:
        others = len(failed) - 1
        message += " (rank %d of %d%s)" % (
            failed[0], len(problems),
            ", and %d other rank%s" % (others, "s" * (others > 1)) if others else "")
    return kind, message, counted


def _same(a, b):
    """Whether two signatures agree (floats as the C library compares them: NaN equals NaN)."""
    return len(a) == len(b) and all(u == v or (u != u and v != v) for u, v in zip(a, b))


def _disagreement(everyone):
    """The problem of ranks whose signatures (see _decide) differ, or None when they agree."""
    first = everyone[0]
    for r, sig in enumerate(everyone):
        if not _same(sig[:2], first[:2]):
            return RuntimeError, (
                "bnorm SyncBatchNorm: every rank must give the same channels and dtype: rank 0 "
                "has %d channels of %s, rank %d has %d channels of %s"
                % (first[:2] + (r,) + sig[:2])), True
    for r, sig in enumerate(everyone):
        if not _same(sig, first):
            return RuntimeError, (
                "bnorm SyncBatchNorm: every rank must give the same eps and momentum: rank 0 has "
                "eps %r and momentum factor %r, rank %d has eps %r and momentum factor %r"
                % (first[2:] + (r,) + sig[2:])), True
    return None


def _decide(comm, problem, signature, refusal=None):
    """Collective over comm. problem: this rank's (from _problem) or None; signature: what every
    rank must give alike ((C, dtype) of the input, then eps and the momentum factor in a forward
    pass); refusal: a problem that counts only when no rank has another one (_DOUBLE_BACKWARD),
    or None. Returns None when all is well, else the (type, message, counted) every rank raises:
    the first failing rank's problem, else the ranks' disagreement, else the first refusal."""
    everyone = comm.allgather((problem, signature, refusal))
    failed = _first_problem([p for p, _, _ in everyone])
    if failed is not None:
        return failed
    return (_disagreement([s for _, s, _ in everyone])
            or _first_problem([f for _, _, f in everyone]))


def _check_arguments(input, tensors, one_rank):
    """Raise what torch's F.batch_norm raises in training for these arguments, in its order and
    with its types and messages, then what bnorm cannot take. input: at least 2-d with C > 0;
    tensors: (name, tensor or None) for running_mean, running_var, weight, bias; one_rank: the
    batch is this input alone (else its count is decided with the other ranks)."""
    if one_rank:
        _verify_batch_size(input.size())
    c = input.shape[1]
    for name, t in tensors:  # what the C library trusts first: C values in each
        if t is not None and t.numel() != c:
            raise RuntimeError("%s should contain %d elements not %d" % (name, c, t.numel()))
    if _torch.is_grad_enabled():
        for name, t in tensors[:2]:
            if t is not None and t.requires_grad:
                raise RuntimeError(
                    "The function 'native_batch_norm' is not differentiable with respect to "
                    "argument '%s'. This input cannot have requires_grad True." % name)
    if (input.layout != _torch.strided or input.device.type != "cpu"
            or _lib.bn_dtype(input.dtype) is None):
        raise ValueError("bnorm SyncBatchNorm: input must be a float32 or float64 CPU tensor, "
                         "got %s on %s" % (input.dtype, input.device))
    for name, t in tensors:
        if t is None:
            continue
        if t.device != input.device:
            raise RuntimeError("bnorm SyncBatchNorm: %s is on %s but the input is on %s"
                               % (name, t.device, input.device))
        if t.dtype != input.dtype:
            raise RuntimeError("bnorm SyncBatchNorm: %s has dtype %s but the input has %s"
                               % (name, t.dtype, input.dtype))
        if t.layout != _torch.strided or t.dim() != 1 or not t.is_contiguous():
            got = t.layout if t.layout != _torch.strided else "shape %s and strides %s" % (
                tuple(t.shape), t.stride())
            raise ValueError("bnorm SyncBatchNorm: %s must be a contiguous 1-d tensor, got %s"
                             % (name, got))


def _moments(c):
    """Room for C bn_moments as a tensor that travels between ranks bit for bit: (C, 3) int64,
    each row a count and the bits of a mean and an M2. Zeros are {0, 0.0, 0.0}."""
    return _torch.zeros((c, 3), dtype=_torch.int64)


class _Call:
    """One forward call, checked (_check_arguments), its outputs allocated and this rank's
    moments computed: whatever can fail on one rank alone has failed before the ranks decide."""

    def __init__(self, input, weight, bias, running_mean, running_var, one_rank):
        _check_arguments(input, (("running_mean", running_mean), ("running_var", running_var),
                                 ("weight", weight), ("bias", bias)), one_rank)
        self.x, layout = _layout(input)
        self.desc = _lib.make_desc(self.x.shape, _lib.bn_dtype(self.x.dtype), layout)
        self.y = _torch.empty_like(self.x)
        c = self.x.shape[1]
        self.save_mean = _torch.empty(c, dtype=_torch.float64)
        self.save_invstd = _torch.empty(c, dtype=_torch.float64)
        self.running_mean, self.running_var = running_mean, running_var
        self.moments = _moments(c)
        _lib.check(_lib.lib.bn_compute_moments(_ptr(self.moments), _ptr(self.x), self.desc),
                   "bn_compute_moments")


class _SyncFunction(_torch.autograd.Function):
    """Forward and backward over comm (collective calls), after the ranks have decided. The
    running statistics travel in call (updated in place; they take no gradient)."""

    @staticmethod
    def forward(ctx, input, weight, bias, call, momentum, eps, comm):
        c = call.x.shape[1]
        stats = _moments(c)
        for part in comm.allgather_tensor(call.moments):  # in rank order: the same bits on all
            _lib.check(_lib.lib.bn_merge_moments(_ptr(stats), _ptr(part), c), "bn_merge_moments")
        opt = _lib.make_options(eps, momentum, cumulative=False)
        status = _lib.lib.bn_forward_train_stats(
            _ptr(call.y), _ptr(call.save_mean), _ptr(call.save_invstd), _ptr(call.running_mean),
            _ptr(call.running_var), None, _ptr(call.x), _ptr(weight), _ptr(bias), _ptr(stats),
            call.desc, opt)
        _raise(status, "bn_forward_train_stats", input.size())
        ctx.save_for_backward(call.x, weight, call.save_mean, call.save_invstd)
        ctx.desc = call.desc
        ctx.count = int(stats[0, 0])  # values per channel in the whole batch
        ctx.comm = comm
        return call.y

    @staticmethod
    def backward(ctx, grad_output):
        # collective: every rank makes the exchange, whatever gradients it needs, after the
        # ranks have decided that every one of them can
        problem, signature = None, None
        try:
            x, weight, save_mean, save_invstd = ctx.saved_tensors
            need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
            if tuple(grad_output.shape) != tuple(x.shape):
                raise RuntimeError("bnorm SyncBatchNorm: grad_output has shape %s but the input "
                                   "has shape %s" % (tuple(grad_output.shape), tuple(x.shape)))
            dy = grad_output  # in x's memory layout (a copy only when autograd gives another)
            if (dy.layout != _torch.strided or dy.device != x.device or dy.dtype != x.dtype
                    or dy.stride() != x.stride()):
                dy = _torch.empty_like(x).copy_(grad_output.detach())
            c = x.shape[1]
            signature = (int(c), str(x.dtype))
            dx = _torch.empty_like(x) if need_x else None
            dweight = _torch.empty(c, dtype=x.dtype) if need_weight else None
            dbias = _torch.empty(c, dtype=x.dtype) if need_bias else None
            sums = _torch.empty((2, c), dtype=_torch.float64)  # this rank's sum dy, sum dy*xhat
            _lib.check(_lib.lib.bn_backward_sums(
                _ptr(sums[0]), _ptr(sums[1]), _ptr(dy), _ptr(x), _ptr(save_mean),
                _ptr(save_invstd), ctx.desc), "bn_backward_sums")
        except Exception as e:  # noqa: BLE001 - every rank must hear of it
            problem = _problem(e)
        # grad mode is on in a backward pass only when create_graph=True asked for a gradient
        # that can itself be differentiated, which this one is not
        refusal = _DOUBLE_BACKWARD if _torch.is_grad_enabled() else None
        decided = _decide(ctx.comm, problem, signature, refusal)
        if decided is not None:
            raise decided[0](decided[1])
        batch = _torch.zeros((2, c), dtype=_torch.float64)
        for part in ctx.comm.allgather_tensor(sums):  # in rank order: the same bits on all
            batch += part
        if dx is not None:
            _lib.check(_lib.lib.bn_backward_train_sums(
                _ptr(dx), _ptr(dy), _ptr(x), _ptr(save_mean), _ptr(save_invstd), _ptr(weight),
                _ptr(batch[0]), _ptr(batch[1]), ctx.count, ctx.desc), "bn_backward_train_sums")
        if dweight is not None:  # this rank's share, rounded as bn_backward_train rounds it
            dweight.copy_(sums[1])
        if dbias is not None:
            dbias.copy_(sums[0])
        return (dx, dweight, dbias) + (None,) * 4


class SyncBatchNorm(_torch.nn.SyncBatchNorm):
    """torch.nn.SyncBatchNorm on the CPU over torch.distributed or MPI (see the module doc).
    process_group: a torch.distributed ProcessGroup or an mpi4py communicator; None for the
    default torch.distributed group when it is initialized, else MPI.COMM_WORLD under mpirun,
    else no synchronization."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         process_group, device, dtype)

    def _communicator(self):
        group = self.process_group
        if group is not None:
            if _dist.is_group(group):
                return _dist.Communicator(group)
            return _mpi_comm.Communicator(group)
        if _dist.initialized():
            return _dist.Communicator(None)
        if launched_by_mpi():
            return _mpi_comm.world()
        return None

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
        comm = self._communicator() if self.training else None
        if comm is None:  # eval, or one process: a BatchNorm (torch's errors, as its own)
            return self._forward_alone(input)
        return self._forward_together(input, comm)

    def _forward_alone(self, input):
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        tracked = not self.training or self.track_running_stats
        return batch_norm(input, self.running_mean if tracked else None,
                          self.running_var if tracked else None, self.weight, self.bias,
                          bn_training, factor, self.eps)

    def _forward_together(self, input, comm):
        """Training with the other ranks of comm: torch's checks on every rank, then one
        decision of all ranks (see _decide), then the collective call."""
        track = self.track_running_stats
        # the weight of this batch in the running statistics, once it is counted
        factor = 0.0 if self.momentum is None else float(self.momentum)
        if track and self.momentum is None:
            factor = 1.0 / (float(self.num_batches_tracked) + 1.0)
        call, problem, local, counted = None, None, None, False
        try:
            self._check_input_dim(input)
            self._check_non_zero_input_channels(input)
            counted = True  # torch counts the batch here, before its other checks
            call = _Call(input, self.weight, self.bias, self.running_mean if track else None,
                         self.running_var if track else None, comm.size == 1)
        except Exception as e:  # noqa: BLE001 - every rank must hear of it
            problem, local = _problem(e, counted), e
        signature = None if call is None else (int(input.shape[1]), str(input.dtype),
                                               float(self.eps), factor)
        decided = _decide(comm, problem, signature)
        if track and (decided is None or decided[2]):
            self.num_batches_tracked.add_(1)
        if decided is not None:
            raise decided[0](decided[1]) from local
        return _SyncFunction.apply(input, self.weight, self.bias, call, factor, float(self.eps),
                                   comm)
