"""SyncBatchNorm's communicator over torch.distributed: the ranks of a process group (any
backend) exchange the small decisions as Python objects and the data as tensors.

    dist.init_process_group("gloo", ...)      # then SyncBatchNorm(C) uses the default group,
    group = dist.new_group([0, 2])            # or SyncBatchNorm(C, process_group=group)

A communicator offers what _sync.py needs, as _mpi_comm.Communicator does for MPI:
  rank, size           this process's rank in the group and the group's size;
  allgather(obj)       every rank's obj, in rank order (all_gather_object);
  allgather_tensor(t)  every rank's t stacked in rank order: (size, *t.shape), the same bits
                       (all_gather of tensors, never a reduction); t has the same shape and
                       dtype on every rank.
Each is a collective call of the group: every rank makes it, in the same order.
"""

import torch as _torch
import torch.distributed as _dist

__all__ = ["Communicator", "initialized", "is_group"]


def initialized():
    """Whether torch.distributed has a default process group."""
    return _dist.is_available() and _dist.is_initialized()


def is_group(group):
    """Whether group is a torch.distributed group: a ProcessGroup, or what dist.new_group gives
    the processes it leaves out."""
    return _dist.is_available() and (isinstance(group, _dist.ProcessGroup)
                                     or group is _dist.GroupMember.NON_GROUP_MEMBER)


class Communicator:
    """The ranks of group (a ProcessGroup, or None for the default group)."""

    def __init__(self, group):
        if group is _dist.GroupMember.NON_GROUP_MEMBER:
            raise RuntimeError("bnorm SyncBatchNorm: this process is not a member of its "
                               "process_group")
        self.group = group
        self.rank = _dist.get_rank(group)
        self.size = _dist.get_world_size(group)
        # tensors travel where the backend takes them: NCCL's on the current GPU
        self.device = (_torch.device("cuda", _torch.cuda.current_device())
                       if _dist.get_backend(group) == "nccl" else _torch.device("cpu"))

    def allgather(self, obj):
        everyone = [None] * self.size
        _dist.all_gather_object(everyone, obj, group=self.group)
        return everyone

    def allgather_tensor(self, t):
        t = t.to(self.device).contiguous()
        out = _torch.empty((self.size,) + tuple(t.shape), dtype=t.dtype, device=self.device)
        _dist.all_gather(list(out.unbind(0)), t, group=self.group)
        return out.cpu()
