"""One rank of the SyncBatchNorm test, run by test_sync_batchnorm.py under mpirun -np 1..4.

Every rank builds the same whole batches; rank r feeds its shard (equal, unequal and empty
shards) to bnorm.torch.SyncBatchNorm, and torch.nn.BatchNormXd (in float64, on the same values)
gets the whole batch. Two training steps and an eval step: outputs and input gradients of the
shard, running statistics and num_batches_tracked on every rank, and weight/bias gradients summed
over the ranks must equal torch's; running statistics must be the same bits on every rank.
Failures are recorded, not raised, so every rank keeps making the same collective calls; the
last line on rank 0 is "N passed, N failed", and every rank exits 1 on a failure.
"""

import sys
import traceback

import numpy as np
import torch
from mpi4py import MPI

import bnorm.torch as bt

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
TOL = {torch.float32: 2e-5, torch.float64: 1e-10}
counts = {"passed": 0, "failed": 0}


def check(cond, what):
    if cond:
        counts["passed"] += 1
    else:
        counts["failed"] += 1
        print("FAIL rank %d of %d: %s" % (rank, size, what), file=sys.stderr, flush=True)


def close(actual, ref, what):
    actual = actual.detach().double()
    ref = ref.detach().double()
    if actual.shape != ref.shape:
        check(False, "%s: shape %s, want %s" % (what, tuple(actual.shape), tuple(ref.shape)))
        return
    if ref.numel() == 0:
        check(True, what)
        return
    err = ((actual - ref).abs() / ref.abs().clamp(min=1)).max().item()
    check(err <= TOL_NOW[0], "%s: relative error %g" % (what, err))


TOL_NOW = [0.0]


def cuts_of(n, kind):
    """Shard boundaries: 0 even, 1 unequal with empty ranks, 2 all on the last rank."""
    if kind == 0:
        return [n * r // size for r in range(size + 1)]
    if kind == 1:
        shares = [0 if r % 2 == 0 else r + 1 for r in range(size)]
    else:
        shares = [0] * size
    shares[-1] = 0
    shares[-1] = n - sum(shares)
    if shares[-1] < 0:
        shares = [n * (r + 1) // size - n * r // size for r in range(size)]
    cuts = [0]
    for s in shares:
        cuts.append(cuts[-1] + s)
    return cuts


def torch_module(dim):
    return {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
            5: torch.nn.BatchNorm3d}[dim]


def run_case(shape, dtype, channels_last, affine, track, momentum, kind, seed):
    TOL_NOW[0] = TOL[dtype]
    name = "shape %s %s cl=%s affine=%s track=%s momentum=%s kind=%d" % (
        shape, dtype, channels_last, affine, track, momentum, kind)
    gen = torch.Generator().manual_seed(seed)
    n, c = shape[0], shape[1]
    ours = bt.SyncBatchNorm(c, momentum=momentum, affine=affine, track_running_stats=track)
    ours = ours.to(dtype)
    ref = torch_module(len(shape))(c, momentum=momentum, affine=affine,
                                   track_running_stats=track).double()
    with torch.no_grad():
        if affine:
            w = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype)
            b = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype)
            ours.weight.copy_(w)
            ours.bias.copy_(b)
            ref.weight.copy_(w.double())
            ref.bias.copy_(b.double())
        if track:
            rm = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype)
            rv = (torch.rand(c, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
            ours.running_mean.copy_(rm)
            ours.running_var.copy_(rv)
            ref.running_mean.copy_(rm.double())
            ref.running_var.copy_(rv.double())
    cuts = cuts_of(n, kind)
    i0, i1 = cuts[rank], cuts[rank + 1]
    for step in range(2):
        x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 5).to(dtype)
        dy = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        mine = x[i0:i1].clone()
        if channels_last:
            mine = mine.contiguous(memory_format=torch.channels_last if len(shape) == 4
                                   else torch.channels_last_3d)
        mine.requires_grad_(True)
        xr = x.double().requires_grad_(True)
        out = ours(mine)
        out_ref = ref(xr)
        out.backward(dy[i0:i1])
        out_ref.backward(dy.double())
        what = "%s step %d" % (name, step)
        close(out, out_ref[i0:i1], what + ": output")
        close(mine.grad, xr.grad[i0:i1], what + ": input gradient")
        if affine:
            gw = comm.allreduce(ours.weight.grad.double().numpy(), op=MPI.SUM)
            gb = comm.allreduce(ours.bias.grad.double().numpy(), op=MPI.SUM)
            close(torch.from_numpy(gw), ref.weight.grad, what + ": weight gradient summed")
            close(torch.from_numpy(gb), ref.bias.grad, what + ": bias gradient summed")
            ours.weight.grad = ours.bias.grad = None
            ref.weight.grad = ref.bias.grad = None
        if track:
            close(ours.running_mean, ref.running_mean, what + ": running_mean")
            close(ours.running_var, ref.running_var, what + ": running_var")
            check(int(ours.num_batches_tracked) == int(ref.num_batches_tracked),
                  what + ": num_batches_tracked")
            stats = ours.running_mean.numpy().tobytes() + ours.running_var.numpy().tobytes()
            check(all(s == stats for s in comm.allgather(stats)),
                  what + ": running statistics differ between ranks")
    # eval: the running statistics, no synchronization
    ours.eval()
    ref.eval()
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    if track:
        close(ours(x[i0:i1]), ref(x.double())[i0:i1], name + ": eval output")
    elif (i1 - i0) * x[0, 0].numel() > 1:  # no running statistics: the shard's own, unsynced
        close(ours(x[i0:i1]), ref(x[i0:i1].double()), name + ": eval output, shard statistics")


def run_count_one():
    """One value per channel in the whole batch: ValueError on every rank, then all goes on."""
    m = bt.SyncBatchNorm(3)
    n = 1 if rank == size - 1 else 0
    try:
        m(torch.randn(n, 3))
        check(False, "global count 1: no error")
    except ValueError as e:
        check("Expected more than 1 value per channel" in str(e), "global count 1: %s" % e)
    n = 2 if rank == 0 else 1
    out = m(torch.ones(n, 3) * (rank + 1))
    check(out.shape == (n, 3), "after the error: a normal call")
    stats = m.running_mean.numpy().tobytes()
    check(all(s == stats for s in comm.allgather(stats)), "after the error: same statistics")


def main():
    seed = 1
    cases = [((7, 3, 4, 5), torch.float32, False, True, True, 0.1),
             ((7, 3, 4, 5), torch.float32, True, True, True, 0.1),
             ((9, 5), torch.float64, False, True, True, None),
             ((6, 4, 3), torch.float64, False, False, True, 0.3),
             ((5, 2, 3, 2, 2), torch.float32, True, True, False, 0.1),
             ((10, 16, 2, 2), torch.float64, True, True, True, 0.1)]
    for shape, dtype, cl, affine, track, momentum in cases:
        for kind in range(3):
            seed += 1
            try:
                run_case(shape, dtype, cl, affine, track, momentum, kind, seed)
            except Exception:  # recorded; the other ranks are in the same place
                traceback.print_exc()
                check(False, "exception in case %s" % (shape,))
    run_count_one()
    total = comm.allreduce(np.array([counts["passed"], counts["failed"]]), op=MPI.SUM)
    if rank == 0:
        print("%d ranks: %d passed, %d failed" % (size, total[0], total[1]), flush=True)
    return 1 if total[1] or not total[0] else 0


if __name__ == "__main__":
    sys.exit(main())
