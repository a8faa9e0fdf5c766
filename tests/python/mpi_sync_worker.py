"""One rank of the SyncBatchNorm test, run by test_sync_batchnorm.py under mpirun -np 1..4
(`mpi_sync_worker.py errors`: only the error cases, run_errors below).

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

import bnorm._sync
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


# ------------------------------------------------------------------------------------------------
# Errors: decided by all ranks together, raised by every rank alike, nothing written anywhere

def error_of(f):
    try:
        f()
    except Exception as e:  # noqa: BLE001 - compared with what is expected
        return e
    return None


def on_rank(failing, problem):
    """What rank failing's problem reads as on every rank: the message, naming the rank when
    there are several."""
    return problem if size == 1 else "%s (rank %d of %d)" % (problem, failing, size)


def on_all_ranks(problem):
    """The same when every rank has it: rank 0's, and how many others."""
    if size == 1:
        return problem
    return "%s (rank 0 of %d, and %d other ranks)" % (problem, size, size - 1)


def guarded_module(num_features, dtype=torch.float32):
    """SyncBatchNorm(num_features) whose running statistics are views into one storage with
    canary values around and between them; returns (module, storage, copy of the storage)."""
    m = bt.SyncBatchNorm(num_features).to(dtype)
    store = torch.full((2 * num_features + 64,), 7.0, dtype=dtype)
    m.running_mean = store[8:8 + num_features].fill_(0.25)
    m.running_var = store[16 + num_features:16 + 2 * num_features].fill_(2.0)
    return m, store, store.clone()


def expect_error(what, f, exc_type, message, stores=(), nbt=None, module=None):
    """f() raises exc_type(message) exactly; every storage in stores is as it was (running
    statistics and canaries); module's num_batches_tracked is nbt."""
    e = error_of(f)
    check(type(e) is exc_type and str(e) == message,
          "%s: raised %s(%r), want %s(%r)" % (what, type(e).__name__, str(e), exc_type.__name__,
                                             message))
    for store, before in stores:
        check(torch.equal(store, before), "%s: running statistics or canary changed" % what)
    if module is not None:
        check(int(module.num_batches_tracked) == nbt, "%s: num_batches_tracked %d, want %d" % (
            what, int(module.num_batches_tracked), nbt))


def torch_error(f):
    """(type, message) of what live torch raises for f()."""
    e = error_of(f)
    check(e is not None, "torch raises nothing")
    return type(e), str(e)


def still_in_step(what, m):
    """After an error every rank goes on: a training step on every rank, the same running
    statistics everywhere."""
    c = m.num_features
    x = torch.randn(3 + rank, c, 2, dtype=m.running_mean.dtype, requires_grad=True)
    m(x).sum().backward()
    stats = m.running_mean.numpy().tobytes() + m.running_var.numpy().tobytes()
    check(all(s == stats for s in comm.allgather(stats)), what + ": statistics differ after")


def run_errors():
    last = size - 1
    mine = lambda bad, good: bad if rank == last else good  # noqa: E731

    # C of the input against num_features: bigger (into what follows the statistics), far
    # bigger, smaller; on every rank
    for nf, c in ((2, 8), (2, 4096), (8, 2)):
        m, store, before = guarded_module(nf)
        x = torch.randn(3, c)
        ref = torch.nn.BatchNorm1d(nf)
        kind, problem = torch_error(lambda: ref(x))
        expect_error("C = %d into SyncBatchNorm(%d)" % (c, nf), lambda: m(x), kind,
                     on_all_ranks(problem), [(store, before)], int(ref.num_batches_tracked), m)
        still_in_step("C = %d" % c, m)

    # one rank's C differs from num_features: every rank raises that rank's error
    m, store, before = guarded_module(2)
    x = torch.randn(4, mine(3, 2), 5)
    kind, problem = torch_error(lambda: torch.nn.BatchNorm1d(2)(torch.randn(4, 3, 5)))
    expect_error("C = 3 on the last rank", lambda: m(x), kind, on_rank(last, problem),
                 [(store, before)], 1, m)
    still_in_step("C = 3 on the last rank", m)

    # one rank's input of another dtype than bnorm computes
    m, store, before = guarded_module(2)
    x = torch.randn(4, 2, 3).to(mine(torch.float16, torch.float32))
    expect_error("float16 on the last rank", lambda: m(x), ValueError, on_rank(
        last, "bnorm SyncBatchNorm: input must be a float32 or float64 CPU tensor, got "
        "torch.float16 on cpu"), [(store, before)], 1, m)
    still_in_step("float16", m)

    # one rank's input of too few dimensions or no channels: torch's errors, raised before the
    # batch is counted
    for shape, check_of in (((4,), "_check_input_dim"),
                            ((4, 0, 3), "_check_non_zero_input_channels")):
        m, store, before = guarded_module(2)
        x = torch.randn(mine(shape, (4, 2, 3)))
        kind, problem = torch_error(
            lambda: getattr(torch.nn.SyncBatchNorm(2), check_of)(torch.randn(shape)))
        expect_error("shape %s on the last rank" % (shape,), lambda: m(x), kind,
                     on_rank(last, problem), [(store, before)], 0, m)
        still_in_step("shape %s" % (shape,), m)

    # running statistics that require grad: torch's RuntimeError; under no_grad they are fine
    for name in ("running_mean", "running_var"):
        m, store, before = guarded_module(2)
        x = torch.randn(4, 2, 3)
        ref = torch.nn.BatchNorm1d(2)
        setattr(ref, name, torch.nn.Parameter(getattr(ref, name).clone()))
        kind, problem = torch_error(lambda: ref(x))
        if rank == last:
            setattr(m, name, torch.nn.Parameter(getattr(m, name)))
        expect_error(name + " requiring grad on the last rank", lambda: m(x), kind,
                     on_rank(last, problem), [(store, before)], int(ref.num_batches_tracked), m)
        with torch.no_grad():
            m(x)
        check(int(m.num_batches_tracked) == 2, name + " requiring grad, under no_grad")
        check(not torch.equal(store, before), name + " requiring grad, under no_grad: updated")

    # parameters of another dtype than the input on one rank
    m, store, before = guarded_module(2)
    x = torch.randn(4, 2, 3).to(mine(torch.float64, torch.float32))
    kind, _ = torch_error(lambda: torch.nn.BatchNorm1d(2)(x.double()))
    expect_error("float64 input into a float32 module on the last rank", lambda: m(x), kind,
                 on_rank(last, "bnorm SyncBatchNorm: running_mean has dtype torch.float32 but "
                         "the input has torch.float64"), [(store, before)], 1, m)

    # a running statistic on another device than the input, on one rank
    m, store, before = guarded_module(2)
    if rank == last:
        m.running_mean = torch.zeros(2, device="meta")
    kind, _ = torch_error(lambda: torch.nn.functional.batch_norm(
        torch.randn(4, 2), torch.zeros(2, device="meta"), torch.ones(2), training=True))
    expect_error("running_mean on meta on the last rank", lambda: m(torch.randn(4, 2)), kind,
                 on_rank(last, "bnorm SyncBatchNorm: running_mean is on meta but the input is "
                         "on cpu"), [(store, before)], 1, m)

    # a running statistic bnorm cannot update in place (strided) on one rank
    m, store, before = guarded_module(2)
    if rank == last:
        m.running_var = store[40:44:2]
    expect_error("strided running_var on the last rank", lambda: m(torch.randn(4, 2)),
                 ValueError, on_rank(last, "bnorm SyncBatchNorm: running_var must be a "
                                     "contiguous 1-d tensor, got shape (2,) and strides (2,)"),
                 [(store, before)], 1, m)

    if size > 1:
        # ranks that are each consistent but differ from one another: in C, or in dtype
        for c, dtype in ((3, torch.float32), (2, torch.float64)):
            m, store, before = guarded_module(mine(c, 2), mine(dtype, torch.float32))
            x = torch.randn(4, mine(c, 2), 3, dtype=mine(dtype, torch.float32))
            expect_error("%d channels of %s on the last rank" % (c, dtype), lambda: m(x),
                         RuntimeError, "bnorm SyncBatchNorm: every rank must give the same "
                         "channels and dtype: rank 0 has 2 channels of torch.float32, rank %d "
                         "has %d channels of %s" % (last, c, dtype), [(store, before)], 1, m)

    # backward: one rank failing to allocate the gradient; every rank raises its error
    m, store, before = guarded_module(2)
    x = torch.randn(5, 2, 3, requires_grad=True)
    y = m(x)
    real = torch.empty_like

    def failing_empty_like(*args, **kwargs):
        raise RuntimeError("cannot allocate the gradient (a test)")

    if rank == last:
        torch.empty_like = failing_empty_like
    try:
        expect_error("backward failing on the last rank", lambda: y.sum().backward(),
                     RuntimeError, on_rank(last, "cannot allocate the gradient (a test)"))
    finally:
        torch.empty_like = real
    check(x.grad is None, "backward failing on the last rank: a gradient was written")
    # grad_output of the wrong shape handed to the backward pass on one rank
    y = m(x)
    g = torch.ones(mine((5, 2, 4), (5, 2, 3)))
    expect_error("grad_output of another shape on the last rank",
                 lambda: bnorm._sync._SyncFunction.backward(y.grad_fn, g), RuntimeError,
                 on_rank(last, "bnorm SyncBatchNorm: grad_output has shape (5, 2, 4) but the "
                         "input has shape (5, 2, 3)"))
    still_in_step("backward errors", m)


def main():
    if sys.argv[1:] == ["errors"]:
        run_errors()
        return finish()
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
    return finish()


def finish():
    total = comm.allreduce(np.array([counts["passed"], counts["failed"]]), op=MPI.SUM)
    if rank == 0:
        print("%d ranks: %d passed, %d failed" % (size, total[0], total[1]), flush=True)
    return 1 if total[1] or not total[0] else 0


if __name__ == "__main__":
    sys.exit(main())
