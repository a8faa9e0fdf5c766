"""The ranks of the torch.distributed SyncBatchNorm tests (test_sync_distributed.py).

    python3 dist_sync_worker.py MODE S    spawns S processes (torch.multiprocessing) that join a
                                          gloo group on 127.0.0.1 (a free port) and run MODE
    mpirun -np S python3 dist_sync_worker.py mpi   every rank joins MPI.COMM_WORLD and a gloo
                                          group of the same ranks, and runs run_mpi

MODES: cases (run_case: whole-batch equality), errors (run_errors), create_graph
(run_create_graph), group (run_group: an explicit process group of some of the ranks).
Every rank builds the same whole batch; rank r feeds its shard (equal, unequal and empty shards)
to bnorm.torch.SyncBatchNorm, and torch.nn.BatchNormXd in float64 gets the whole batch.
Failures are recorded, not raised, so every rank keeps making the same collective calls; rank
0's last line is "S ranks: N passed, N failed", and the run exits 1 on any failure.
"""

import datetime
import os
import socket
import sys
import traceback
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bnorm._dist
import bnorm._sync
import bnorm.torch as bt

TOL = {torch.float32: 2e-5, torch.float64: 1e-10}
warnings.filterwarnings("ignore", "Using backward\\(\\) with create_graph=True")
rank, size = 0, 1
counts = {"passed": 0, "failed": 0}


def check(cond, what):
    if cond:
        counts["passed"] += 1
    else:
        counts["failed"] += 1
        print("FAIL rank %d of %d: %s" % (rank, size, what), file=sys.stderr, flush=True)


def close(actual, ref, tol, what):
    """|actual - ref| <= tol * max(1, |ref|) everywhere (false on NaN)."""
    actual, ref = actual.detach().double(), ref.detach().double()
    if actual.shape != ref.shape:
        return check(False, "%s: shape %s, want %s" % (what, tuple(actual.shape),
                                                      tuple(ref.shape)))
    err = ((actual - ref).abs() / ref.abs().clamp(min=1)).max().item() if ref.numel() else 0.0
    check(err <= tol, "%s: relative error %g" % (what, err))


def everyone(obj, group=None):
    """obj of every rank of group, in rank order."""
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def same_bits_everywhere(tensors, what, group=None):
    mine = b"".join(t.detach().numpy().tobytes() for t in tensors)
    check(all(b == mine for b in everyone(mine, group)), what + ": differ between ranks")


def cuts_of(n, kind, ranks):
    """Shard boundaries of n samples over ranks: kind 0 even, 1 unequal (some empty), 2 all on
    rank 0 (the others empty)."""
    if kind == 0:
        shares = [n * (r + 1) // ranks - n * r // ranks for r in range(ranks)]
    elif kind == 1:
        shares = [0 if r % 2 else r // 2 + 1 for r in range(ranks - 1)]
        shares.append(n - sum(shares))
    else:
        shares = [n] + [0] * (ranks - 1)
    cuts = [0]
    for s in shares:
        cuts.append(cuts[-1] + s)
    return cuts


def reference_module(dim, c, **kwargs):
    kind = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
            5: torch.nn.BatchNorm3d}[dim]
    return kind(c, **kwargs).double()


def memory_format(dim):
    return torch.channels_last if dim == 4 else torch.channels_last_3d


def run_case(shape, dtype, channels_last, affine, track, momentum, kind, seed, group=None,
             ranks=None, me=None):
    """Two training steps and an eval step of one case over group (ranks of them, this one
    me): outputs, input gradients, running statistics and num_batches_tracked against torch on
    the whole batch; weight and bias gradients summed over the ranks; the same running
    statistics bits on every rank."""
    ranks = size if ranks is None else ranks
    me = rank if me is None else me
    tol = TOL[dtype]
    name = "%s %s cl=%s affine=%s track=%s momentum=%s kind=%d" % (
        shape, dtype, channels_last, affine, track, momentum, kind)
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    args = dict(momentum=momentum, affine=affine, track_running_stats=track)
    ours = bt.SyncBatchNorm(c, process_group=group, **args).to(dtype)
    ref = reference_module(len(shape), c, **args)
    with torch.no_grad():
        if affine:
            for p, q in ((ours.weight, ref.weight), (ours.bias, ref.bias)):
                p.copy_(torch.randn(c, generator=gen, dtype=torch.float64))
                q.copy_(p)
        if track:
            ours.running_mean.copy_(torch.randn(c, generator=gen, dtype=torch.float64))
            ours.running_var.copy_(torch.rand(c, generator=gen, dtype=torch.float64) + 0.5)
            ref.running_mean.copy_(ours.running_mean)
            ref.running_var.copy_(ours.running_var)
    cuts = cuts_of(shape[0], kind, ranks)
    i0, i1 = cuts[me], cuts[me + 1]
    for step in range(2):
        x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 5).to(dtype)
        dy = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        mine = x[i0:i1].clone()
        if channels_last:
            mine = mine.contiguous(memory_format=memory_format(len(shape)))
        mine.requires_grad_(True)
        xr = x.double().requires_grad_(True)
        out, out_ref = ours(mine), ref(xr)
        out.backward(dy[i0:i1])
        out_ref.backward(dy.double())
        what = "%s step %d" % (name, step)
        close(out, out_ref[i0:i1], tol, what + ": output")
        close(mine.grad, xr.grad[i0:i1], tol, what + ": input gradient")
        if channels_last:
            check(out.is_contiguous(memory_format=memory_format(len(shape))),
                  what + ": output not channels_last")
        if affine:
            for p, q, pname in ((ours.weight, ref.weight, "weight"),
                                (ours.bias, ref.bias, "bias")):
                total = sum(g.double() for g in everyone(p.grad, group))
                close(total, q.grad, tol, what + ": %s gradient summed over ranks" % pname)
                p.grad = q.grad = None
        if track:
            close(ours.running_mean, ref.running_mean, tol, what + ": running_mean")
            close(ours.running_var, ref.running_var, tol, what + ": running_var")
            check(int(ours.num_batches_tracked) == int(ref.num_batches_tracked),
                  what + ": num_batches_tracked")
            same_bits_everywhere((ours.running_mean, ours.running_var), what + ": running "
                                 "statistics", group)
    ours.eval()
    ref.eval()
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    if track:  # the running statistics, nothing synchronized
        close(ours(x[i0:i1]), ref(x.double())[i0:i1], tol, name + ": eval output")


CASES = [  # shape, dtype, channels_last, affine, track_running_stats, momentum
    ((9, 5), torch.float64, False, True, True, None),
    ((7, 3, 6), torch.float32, False, False, True, 0.3),
    ((7, 3, 4, 5), torch.float32, False, True, True, 0.1),
    ((7, 3, 4, 5), torch.float32, True, True, True, 0.1),
    ((6, 4, 3, 2, 2), torch.float64, True, True, True, 0.1),
    ((5, 2, 3, 2, 2), torch.float32, False, True, False, 0.1),
]


def run_cases():
    seed = 1
    for shape, dtype, cl, affine, track, momentum in CASES:
        for kind in range(3):
            seed += 1
            try:
                run_case(shape, dtype, cl, affine, track, momentum, kind, seed)
            except Exception:  # recorded; the other ranks are in the same place
                traceback.print_exc()
                check(False, "exception in case %s kind %d" % (shape, kind))


# ------------------------------------------------------------------------------------------------
# Errors: decided by all ranks together, raised by every rank alike, nothing written anywhere

def error_of(f):
    try:
        f()
    except Exception as e:  # noqa: BLE001 - compared with what is expected
        return e
    return None


def on_rank(failing, problem, failed=1):
    """What rank failing's problem reads as on every rank (failed ranks had one)."""
    if size == 1:
        return problem
    others = failed - 1
    return "%s (rank %d of %d%s)" % (problem, failing, size, ", and %d other rank%s" % (
        others, "s" * (others > 1)) if others else "")


def guarded_module(num_features, dtype=torch.float32, **kwargs):
    """SyncBatchNorm whose running statistics are views into one storage with canaries around
    them; returns (module, storage, a copy of the storage)."""
    m = bt.SyncBatchNorm(num_features, **kwargs).to(dtype)
    store = torch.full((2 * num_features + 32,), 7.0, dtype=dtype)
    m.running_mean = store[8:8 + num_features].fill_(0.25)
    m.running_var = store[16 + num_features:16 + 2 * num_features].fill_(2.0)
    return m, store, store.clone()


def expect_error(what, f, exc_type, message, store=None, before=None, module=None, nbt=None):
    """f() raises exc_type(message) exactly; store is as before; module counted nbt batches."""
    e = error_of(f)
    check(type(e) is exc_type and str(e) == message, "%s: raised %s(%r), want %s(%r)" % (
        what, type(e).__name__, str(e), exc_type.__name__, message))
    if store is not None:
        check(torch.equal(store, before), what + ": running statistics or canaries written")
    if module is not None:
        check(int(module.num_batches_tracked) == nbt, "%s: num_batches_tracked %d, want %d" % (
            what, int(module.num_batches_tracked), nbt))


def still_in_step(what, m):
    """After an error every rank goes on together: a training step, the same statistics."""
    x = torch.randn(3 + rank, m.num_features, 2, dtype=m.running_mean.dtype,
                    requires_grad=True)
    m(x).sum().backward()
    same_bits_everywhere((m.running_mean, m.running_var), what + ": statistics after")


def run_errors():
    last = size - 1
    mine = lambda bad, good: bad if rank == last else good  # noqa: E731

    # the last rank's input has 3 channels for a module of 2: torch's error, on every rank
    m, store, before = guarded_module(2)
    x = torch.randn(4, mine(3, 2), 5)
    problem = str(error_of(lambda: torch.nn.BatchNorm1d(2)(torch.randn(4, 3, 5))))
    expect_error("C = 3 on the last rank", lambda: m(x), RuntimeError, on_rank(last, problem),
                 store, before, m, 1)
    still_in_step("C = 3 on the last rank", m)

    # the last rank's input is float16
    m, store, before = guarded_module(2)
    x = torch.randn(4, 2, 3).to(mine(torch.float16, torch.float32))
    expect_error("float16 on the last rank", lambda: m(x), ValueError, on_rank(
        last, "bnorm SyncBatchNorm: input must be a float32 or float64 CPU tensor, got "
        "torch.float16 on cpu"), store, before, m, 1)
    still_in_step("float16 on the last rank", m)

    # every rank's input has too few dimensions: torch's error, the batch not counted
    m, store, before = guarded_module(2)
    problem = str(error_of(lambda: torch.nn.SyncBatchNorm(2)._check_input_dim(torch.randn(4))))
    expect_error("1-d input on every rank", lambda: m(torch.randn(4)), ValueError,
                 on_rank(0, problem, size), store, before, m, 0)
    still_in_step("1-d input", m)

    # one value per channel in the whole batch: torch's ValueError on every rank
    m = bt.SyncBatchNorm(3)
    x = torch.randn(mine(1, 0), 3)
    expect_error("one value per channel in all", lambda: m(x), ValueError,
                 "Expected more than 1 value per channel when training, got input size %s"
                 % (x.size(),))
    still_in_step("one value per channel", m)

    if size > 1:
        # ranks that are each consistent but differ: C and dtype, then eps
        m, store, before = guarded_module(mine(3, 2), mine(torch.float64, torch.float32))
        x = torch.randn(4, mine(3, 2), 3, dtype=mine(torch.float64, torch.float32))
        expect_error("3 channels of float64 on the last rank", lambda: m(x), RuntimeError,
                     "bnorm SyncBatchNorm: every rank must give the same channels and dtype: "
                     "rank 0 has 2 channels of torch.float32, rank %d has 3 channels of "
                     "torch.float64" % last, store, before, m, 1)
        m, store, before = guarded_module(2, eps=mine(1e-3, 1e-5))
        expect_error("eps 1e-3 on the last rank", lambda: m(torch.randn(4, 2)), RuntimeError,
                     "bnorm SyncBatchNorm: every rank must give the same eps and momentum: "
                     "rank 0 has eps 1e-05 and momentum factor 0.1, rank %d has eps 0.001 and "
                     "momentum factor 0.1" % last, store, before, m, 1)

    # backward handed a grad_output of another shape on the last rank
    m = bt.SyncBatchNorm(2)
    x = torch.randn(5, 2, 3, requires_grad=True)
    y = m(x)
    g = torch.ones(mine((5, 2, 4), (5, 2, 3)))
    # called directly, in grad mode: an argument error is decided before the create_graph
    # refusal that grad mode brings on every rank
    expect_error("grad_output of another shape on the last rank",
                 lambda: bnorm._sync._SyncFunction.backward(y.grad_fn, g), RuntimeError,
                 on_rank(last, "bnorm SyncBatchNorm: grad_output has shape (5, 2, 4) but the "
                         "input has shape (5, 2, 3)"))
    still_in_step("backward errors", m)


DOUBLE = ("bnorm SyncBatchNorm: backward with create_graph=True is not supported: the input "
          "gradient it computes cannot be differentiated again")


def run_create_graph():
    """create_graph=True on every rank, then on the last rank only: every rank raises, no
    gradient is written, and the ranks go on together."""
    m = bt.SyncBatchNorm(3).double()
    everywhere = on_rank(0, DOUBLE, size)
    for who, graph, message in (("every rank", True, everywhere),
                                ("the last rank", rank == size - 1, on_rank(size - 1, DOUBLE))):
        x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
        y = m(x)
        expect_error("create_graph on " + who, lambda: y.sum().backward(create_graph=graph),
                     RuntimeError, message)
        check(x.grad is None and m.weight.grad is None,
              "create_graph on %s: a gradient was written" % who)
    y = m(torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True))
    expect_error("autograd.grad(create_graph=True)", lambda: torch.autograd.grad(
        y.sum(), m.weight, create_graph=True), RuntimeError, everywhere)
    still_in_step("create_graph", m)


def run_group():
    """An explicit process group of ranks 0 and 2 of 3 (and a group of rank 1 alone): each
    synchronizes only over its members; rank 1 with the group it is not in raises alone."""
    pair = dist.new_group([0, 2])
    alone = dist.new_group([1])
    seed = 50
    for shape, dtype, cl, affine, track, momentum in CASES[2:4]:
        for kind in range(3):
            seed += 1
            if rank in (0, 2):
                run_case(shape, dtype, cl, affine, track, momentum, kind, seed, pair, 2,
                         rank // 2)
            else:
                run_case(shape, dtype, cl, affine, track, momentum, kind, seed, alone, 1, 0)
    if rank == 1:
        m = bt.SyncBatchNorm(2, process_group=pair)
        expect_error("not a member of process_group", lambda: m(torch.randn(4, 2)),
                     RuntimeError, "bnorm SyncBatchNorm: this process is not a member of its "
                     "process_group")
        check(isinstance(bt.SyncBatchNorm(2)._communicator(), bnorm._dist.Communicator),
              "process_group=None: not the default group")
    dist.barrier()


def finish():
    """Totals of all ranks; rank 0 prints them; 1 when anything failed."""
    totals = everyone((counts["passed"], counts["failed"]))
    passed, failed = sum(p for p, _ in totals), sum(f for _, f in totals)
    if rank == 0:
        print("%d ranks: %d passed, %d failed" % (size, passed, failed), flush=True)
    return 1 if failed or not passed else 0


MODES = {"cases": run_cases, "errors": run_errors, "create_graph": run_create_graph,
         "group": run_group}


def spawned(r, ranks, port, mode):
    global rank, size
    rank, size = r, ranks
    torch.manual_seed(100 + r)
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=r,
                            world_size=ranks, timeout=datetime.timedelta(seconds=60))
    try:
        MODES[mode]()
    except Exception:  # noqa: BLE001 - counted; every rank still reaches finish
        traceback.print_exc()
        check(False, "exception in " + mode)
    failed = finish()
    dist.destroy_process_group()
    if failed:
        raise SystemExit(1)


# ------------------------------------------------------------------------------------------------
# Under mpirun: the same shards over MPI and over torch.distributed give the same bits, and those
# of libbnorm_mpi's own calls

def bits(t):
    return t.detach().numpy().tobytes()


def module_steps(x, dy, affine, momentum, group):
    """A training step (forward, backward) and a second forward of a fresh SyncBatchNorm over
    group: (second output, dx, running_mean, running_var[, weight grad, bias grad])."""
    m = bt.SyncBatchNorm(x.shape[1], momentum=momentum, affine=affine,
                         process_group=group).to(x.dtype)
    xg = x.clone().requires_grad_(True)
    m(xg).backward(dy)
    y = m(x.clone())
    return (y, xg.grad, m.running_mean, m.running_var) + (
        (m.weight.grad, m.bias.grad) if affine else ())


def library_steps(lib, comm, x, dy, affine, momentum):
    """The same through bn_mpi_forward_train and bn_mpi_backward_train themselves."""
    from bnorm import _lib
    c, dtype = x.shape[1], x.dtype
    desc = _lib.make_desc(x.shape, _lib.bn_dtype(dtype), _lib.BN_CHANNELS_FIRST
                          if x.is_contiguous() else _lib.BN_CHANNELS_LAST)
    y, dx, dy = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x).copy_(dy)
    rm, rv = torch.zeros(c, dtype=dtype), torch.ones(c, dtype=dtype)
    mean, invstd = torch.empty(c, dtype=torch.float64), torch.empty(c, dtype=torch.float64)
    w, b = (torch.ones(c, dtype=dtype), torch.zeros(c, dtype=dtype)) if affine else (None, None)
    dw, db = torch.empty(c, dtype=dtype), torch.empty(c, dtype=dtype)
    p = _lib.ptr
    for step in (1, 2):
        factor = 1.0 / step if momentum is None else momentum
        _lib.check(lib.bn_mpi_forward_train_f(
            p(y), p(mean), p(invstd), p(rm), p(rv), None, p(x), p(w), p(b), desc,
            _lib.make_options(1e-5, factor), comm.py2f()))
        if step == 1:
            _lib.check(lib.bn_mpi_backward_train_f(
                p(dx), p(dw), p(db), p(dy), p(x), p(mean), p(invstd), p(w), desc, comm.py2f()))
    return (y, dx, rm, rv) + ((dw, db) if affine else ())


def run_mpi():
    global rank, size
    from mpi4py import MPI

    from bnorm import _mpi
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    port = comm.bcast(free_port() if rank == 0 else None)
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank,
                            world_size=size, timeout=datetime.timedelta(seconds=60))
    check(isinstance(bt.SyncBatchNorm(2)._communicator(), bnorm._dist.Communicator),
          "under mpirun with torch.distributed initialized: not torch.distributed")
    lib = _mpi.load()
    names = ("output", "input gradient", "running_mean", "running_var", "weight gradient",
             "bias gradient")
    seed = 70
    for shape, dtype, cl, affine, _, momentum in CASES:
        for kind in range(3):
            seed += 1
            gen = torch.Generator().manual_seed(seed)
            x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 5).to(dtype)
            dy = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
            cuts = cuts_of(shape[0], kind, size)
            x, dy = x[cuts[rank]:cuts[rank + 1]], dy[cuts[rank]:cuts[rank + 1]]
            if cl:
                x = x.contiguous(memory_format=memory_format(len(shape)))
            over_mpi = module_steps(x, dy, affine, momentum, comm)
            over_dist = module_steps(x, dy, affine, momentum, None)
            by_library = library_steps(lib, comm, x, dy, affine, momentum)
            what = "%s %s cl=%s kind %d" % (shape, dtype, cl, kind)
            for name, a, b, c in zip(names, over_mpi, over_dist, by_library):
                check(bits(a) == bits(b), "%s: %s differs between MPI and torch.distributed"
                      % (what, name))
                check(bits(a) == bits(c), "%s: %s differs from libbnorm_mpi's" % (what, name))
    # backward with create_graph=True over MPI: every rank raises
    m = bt.SyncBatchNorm(3, process_group=comm)
    y = m(torch.randn(4, 3, 2, requires_grad=True))
    expect_error("create_graph over MPI", lambda: torch.autograd.grad(
        y.sum(), m.weight, create_graph=True), RuntimeError, on_rank(0, DOUBLE, size))
    still_in_step("create_graph over MPI", m)
    failed = finish()
    dist.destroy_process_group()
    return failed


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    if sys.argv[1:] == ["mpi"]:
        return run_mpi()
    mode, ranks = sys.argv[1], int(sys.argv[2])
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        mp.spawn(spawned, (ranks, free_port(), mode), nprocs=ranks)
    except Exception as e:  # noqa: BLE001 - a rank failed: its traceback is on stderr
        print("a rank failed: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
