"""bnorm.torch.update_bn: the running statistics of every BN layer are the mean and unbiased
variance of all the values that reached it in one pass (PreciseBN), where
torch.optim.swa_utils.update_bn averages the batches' statistics; the rest of the call is torch's
(the same pass, the same inputs reaching every layer, momenta and modes restored). Across 2 and
3 processes of torch.distributed (gloo) and 2 MPI ranks every rank stores the same bits.

The references are numpy float64 statistics of the layers' inputs, taken by hooks while torch's
own update_bn runs on a copy of the model (update_bn_worker.population). Tolerances: float64
buffers within 1e-9 of them, relative to max(|value|, standard deviation) for the mean (a mean
near 0 has no relative accuracy to speak of) and to the value for the variance; float32 buffers
within their own rounding of them (half an ulp, 2^-24 relative) plus that.

Multi-process cases need torch.distributed's gloo backend, mpirun and mpi4py: a missing one fails.
"""

import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

import bnorm._lib
import bnorm._update_bn
import bnorm.torch as bt
import update_bn_worker as w
from deadline import run_or_kill

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def errors(model, stats):
    """{(layer, buffer): worst error / tolerance} of model's running statistics against stats
    (from w.population); a value <= 1 passes, NaN fails."""
    out = {}
    for name, (mean, var) in stats.items():
        m = model.get_submodule(name)
        for what, got, ref, scale in (("running_mean", m.running_mean, mean,
                                       np.maximum(np.abs(mean), np.sqrt(var))),
                                      ("running_var", m.running_var, var, np.abs(var))):
            tol = 1e-9 * scale
            if got.dtype == torch.float32:
                tol = tol + 2.0 ** -24 * np.abs(ref)
            err = np.abs(got.detach().double().numpy() - ref)
            out[(name, what)] = float(np.max(err / tol))
    return out


def assert_exact(model, stats):
    errs = errors(model, stats)
    bad = {k: v for k, v in errs.items() if not v <= 1.0}
    assert not bad, bad


def bn_layers(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("torch_layers", [True, False], ids=["torch_first", "bnorm_first"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cnn_statistics_are_exact(dtype, torch_layers, channels_last):
    model = w.cnn(dtype, torch_layers)
    batches = w.images(dtype, channels_last)
    stats, theirs = w.population(model, batches)
    bt.update_bn(batches, model)
    assert_exact(model, stats)
    for m in bn_layers(model):
        assert m.num_batches_tracked.item() == len(batches)
        assert m.running_mean.dtype == m.running_var.dtype == dtype
    # torch's per-batch averages are not the population's statistics
    assert max(errors(theirs, stats).values()) > 1e3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mlp_statistics_are_exact_from_input_target_tuples(dtype):
    model = w.mlp(dtype)
    batches = w.rows(dtype)
    stats, theirs = w.population(model, batches)
    bt.update_bn([(x, torch.arange(len(x))) for x in batches], model)
    assert_exact(model, stats)
    assert [m.num_batches_tracked.item() for m in bn_layers(model)] == [len(batches)] * 2
    assert max(errors(theirs, stats).values()) > 1e3


def test_layers_see_the_inputs_they_see_under_torch_update_bn():
    """Every layer's input, batch by batch, has the bits it has under torch's update_bn (the
    forward still normalizes with batch statistics); torch's other buffers' values aside."""
    def inputs(model, run):
        seen = []
        hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
                 for m in bn_layers(model)]
        run(model)
        for h in hooks:
            h.remove()
        return seen

    for make_model, batches in ((w.cnn, w.images()), (w.mlp, w.rows())):
        ours = inputs(make_model(), lambda m: bt.update_bn(batches, m))
        theirs = inputs(make_model(), lambda m: torch.optim.swa_utils.update_bn(batches, m))
        assert len(ours) == len(theirs) == 2 * len(batches)
        for a, b in zip(ours, theirs):
            assert a.dtype == b.dtype and torch.equal(a, b)


def test_mode_momenta_and_untracked_layers_are_restored():
    model = nn.Sequential(nn.Linear(7, 6), nn.BatchNorm1d(6, momentum=0.25), nn.ReLU(),
                          bt.BatchNorm1d(6, momentum=None),
                          nn.BatchNorm1d(6, track_running_stats=False, momentum=0.7),
                          nn.Linear(6, 3), nn.BatchNorm1d(3)).double()
    model.eval()
    model[6].train()  # a submodule's own mode is kept too
    untracked = model[4]
    bt.update_bn(w.rows(torch.float64)[:3], model)
    assert [m.training for m in model.modules()] == [False] * 7 + [True]
    assert [m.momentum for m in bn_layers(model)] == [0.25, None, 0.7, 0.1]
    assert untracked.running_mean is None and untracked.num_batches_tracked is None
    assert all(not m._forward_hooks for m in model.modules())
    assert [m.num_batches_tracked.item() for m in (model[1], model[3], model[6])] == [3] * 3


def test_modes_momenta_and_hooks_are_restored_when_the_loader_raises():
    model = w.mlp(torch.float64).eval()

    def loader():
        yield w.rows(torch.float64)[0]
        raise KeyError("the loader broke on purpose")

    with pytest.raises(KeyError, match="on purpose"):
        bt.update_bn(loader(), model)
    assert not any(m.training for m in model.modules())
    assert [m.momentum for m in bn_layers(model)] == [0.3, None]
    assert all(not m._forward_hooks for m in model.modules())


def test_sync_batchnorm_and_other_subclasses():
    """bnorm's SyncBatchNorm (a torch.nn.SyncBatchNorm; one process here) and a user subclass
    of _BatchNorm."""
    class MyNorm(nn.modules.batchnorm._BatchNorm):
        def _check_input_dim(self, input):
            pass

    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(7, 6), bt.SyncBatchNorm(6), nn.ReLU(), nn.Linear(6, 4),
                          MyNorm(4)).double()
    batches = w.rows(torch.float64)
    stats, _ = w.population(model, batches)
    bt.update_bn(batches, model)
    assert_exact(model, stats)
    assert model[4].num_batches_tracked.item() == len(batches)


def test_layouts_are_read_in_place():
    """float64 inputs in channels-first memory and in channels-last memory ((N, L, C) as
    (N, C, L), NHWC, NDHWC) reach bn_compute_moments as they are; any other strides are copied;
    float32 ones are widened to float64 in their layout, a few samples at a time; every result
    is exact."""
    calls = []
    compute = bnorm._lib.lib.bn_compute_moments

    def recording(moments, x, desc):
        calls.append((x, desc.layout, desc.dtype, desc.n))
        return compute(moments, x, desc)

    g = torch.Generator().manual_seed(7)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * 3 + 1e4

    first, last = bnorm._lib.BN_CHANNELS_FIRST, bnorm._lib.BN_CHANNELS_LAST
    cases = [  # (layer, input, the layout the C library reads, in place)
        (nn.BatchNorm1d(5), randn(6, 5), first, True),
        (nn.BatchNorm1d(5), randn(6, 5, 4), first, True),
        (nn.BatchNorm1d(5), randn(6, 4, 5).transpose(1, 2), last, True),
        (nn.BatchNorm2d(5), randn(3, 5, 4, 4), first, True),
        (nn.BatchNorm2d(5), randn(3, 5, 4, 4).contiguous(memory_format=torch.channels_last),
         last, True),
        (nn.BatchNorm3d(5),
         randn(2, 5, 3, 2, 4).contiguous(memory_format=torch.channels_last_3d), last, True),
        (nn.BatchNorm2d(5), randn(3, 5, 4, 8)[..., ::2], first, False),
        (nn.BatchNorm1d(5), randn(5, 6).t(), first, False),
        (nn.BatchNorm2d(5), randn(7, 5, 4, 4).float(), first, False),
        (nn.BatchNorm2d(5),
         randn(7, 5, 4, 4).float().contiguous(memory_format=torch.channels_last), last, False),
    ]
    mp = pytest.MonkeyPatch()
    mp.setattr(bnorm._lib.lib, "bn_compute_moments", recording)
    mp.setattr(bnorm._update_bn, "_WIDEN_VALUES", 2 * 5 * 16)  # float32: 2 samples at a time
    try:
        for layer, x, layout, in_place in cases:
            layer = layer.to(x.dtype)
            batches = [x, x * 2]
            stats, _ = w.population(nn.Sequential(layer), batches)
            del calls[:]
            bt.update_bn(batches, nn.Sequential(layer))
            assert_exact(nn.Sequential(layer), stats)
            where = (tuple(x.shape), x.stride(), x.dtype)
            assert all(c[1:3] == (layout, bnorm._lib.BN_FLOAT64) for c in calls), where
            if in_place:
                assert [c[0] for c in calls] == [b.data_ptr() for b in batches], where
            else:
                assert x.data_ptr() not in [c[0] for c in calls], where
            if x.dtype == torch.float32:
                assert [c[3] for c in calls] == [2, 2, 2, 1] * 2, where
    finally:
        mp.undo()


def test_device_argument_moves_each_input():
    class Batch:
        """A loader item whose .to() returns the tensor the model is to see."""
        moved = []

        def __init__(self, x):
            self.x = x

        def to(self, device):
            Batch.moved.append(device)
            return self.x

    model = w.mlp(torch.float64)
    batches = w.rows(torch.float64)
    stats, _ = w.population(model, batches)
    bt.update_bn([Batch(x) for x in batches], model, device="cuda:7")
    assert Batch.moved == ["cuda:7"] * len(batches)
    assert_exact(model, stats)
    model = w.mlp(torch.float64)
    bt.update_bn([(x, 0) for x in batches], model, torch.device("cpu"))
    assert_exact(model, stats)


def test_progress_bar_on_stderr(capsys):
    batches = w.rows(torch.float64)[:3]
    bt.update_bn(batches, w.mlp(torch.float64))
    assert capsys.readouterr() == ("", "")
    bt.update_bn(batches, w.mlp(torch.float64), progress=True)
    out, err = capsys.readouterr()
    assert out == "" and err.endswith("\n") and err.count("\n") == 1
    assert [line.split("]")[1].split(",")[0] for line in err.strip("\r\n").split("\r")] == [
        " 1/3 batches", " 2/3 batches", " 3/3 batches"]
    assert "[" + "#" * 30 + "]" in err
    bt.update_bn(iter(batches), w.mlp(torch.float64), progress=True)  # no len()
    err = capsys.readouterr().err
    assert "update_bn: 3 batches" in err and err.endswith("\n")


def test_empty_loader_resets_like_torch():
    """No batch: every layer is reset (mean 0, variance 1, no batches), as torch's update_bn
    leaves it; the buffers are the same tensors as before."""
    ours, theirs = w.cnn(), w.cnn()
    bt.update_bn(w.images()[:2], ours)
    torch.optim.swa_utils.update_bn(w.images()[:2], theirs)
    before = [m.running_mean for m in bn_layers(ours)]
    bt.update_bn([], ours)
    torch.optim.swa_utils.update_bn([], theirs)
    for a, b, tensor in zip(bn_layers(ours), bn_layers(theirs), before):
        assert a.running_mean is tensor
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert bn_layers(ours)[0].running_var.eq(1).all()


def test_without_tracked_layers_the_loader_is_not_read():
    def loader():
        raise AssertionError("read")
        yield

    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, track_running_stats=False)).eval()
    bt.update_bn(loader(), model)
    assert not model.training


@pytest.mark.filterwarnings("ignore:Lazy modules are a new feature")
def test_uninitialized_lazy_layer_is_an_error_that_changes_nothing():
    model = nn.Sequential(nn.BatchNorm1d(7, momentum=0.2), nn.LazyBatchNorm1d())
    with pytest.raises(ValueError, match="lazy"):
        bt.update_bn(w.rows(torch.float32), model)
    assert model[0].momentum == 0.2 and model[0].num_batches_tracked.item() == 0
    model(w.rows(torch.float32)[0])  # initialized now
    stats, _ = w.population(model, w.rows(torch.float32))
    bt.update_bn(w.rows(torch.float32), model)
    assert_exact(model, stats)


def test_empty_batches_count_as_batches():
    model = w.mlp(torch.float64)
    batches = w.rows(torch.float64)
    stats, _ = w.population(model, batches)
    bt.update_bn(batches[:2] + [batches[0][:0]] + batches[2:], model)
    assert_exact(model, stats)
    assert model[1].num_batches_tracked.item() == len(batches) + 1


# ------------------------------------------------------------------------------------------------
# Across processes


def check_ranks(world, outdir, cases):
    """Every rank's buffers are the same bits and those of all the batches together."""
    results = [torch.load(os.path.join(outdir, "rank%d.pt" % r)) for r in range(world)]
    for name, (make_model, make_batches, splits) in cases.items():
        for r in range(1, world):
            for key, t in results[0][name].items():
                assert t.numpy().tobytes() == results[r][name][key].numpy().tobytes(), (name, r,
                                                                                      key)
        model = make_model()
        model.load_state_dict(results[0][name], strict=False)
        batches = make_batches()
        stats, _ = w.population(make_model(), batches)
        assert_exact(model, stats)
        for m in bn_layers(model):
            assert m.num_batches_tracked.item() == len(batches)
    last = world - 1
    for r, res in enumerate(results):
        loader_case = res["failures"]["loader"]
        if r == last:
            assert loader_case == ("RuntimeError", "the loader broke on purpose")
        else:
            assert loader_case == ("RuntimeError", "bnorm update_bn: the pass failed on rank "
                                                   "%d of %d" % (last, world))
        assert res["failures"]["models"][0] == "ValueError"
        assert "models differ" in res["failures"]["models"][1]
        model = w.mlp()
        model.load_state_dict(res["after"], strict=False)
        stats, _ = w.population(w.mlp(), w.rows(torch.float32)[:world])
        assert_exact(model, stats)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [2, 3])
def test_torch_distributed_ranks_share_one_result(world, tmp_path, monkeypatch):
    assert torch.distributed.is_available() and torch.distributed.is_gloo_available()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ctx = torch.multiprocessing.spawn(w.gloo_main, args=(world, free_port(), str(tmp_path)),
                                      nprocs=world, join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("%d gloo ranks still running after 120 s (a rank left waiting?)" % world)
    check_ranks(world, str(tmp_path), w.CASES)


def test_mpi_ranks_share_one_result(tmp_path):
    mpirun = shutil.which("mpirun")
    assert mpirun, "mpirun is missing: apt-get install openmpi-bin libopenmpi-dev"
    cmd = [mpirun, "--oversubscribe", "-np", "2"]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.path.join(ROOT, "python") + os.pathsep + env.get("PYTHONPATH", "")
    r = run_or_kill(cmd + [sys.executable, os.path.join(HERE, "update_bn_worker.py"),
                           str(tmp_path)], 120, "2 MPI ranks (a rank left waiting?)", env=env,
                    stderr=subprocess.STDOUT)
    assert r.returncode == 0, r.stdout[-4000:]
    check_ranks(2, str(tmp_path), w.CASES)


def test_parameters_are_unchanged():
    model = w.mlp(torch.float64)
    params = [p.clone() for p in model.parameters()]
    bt.update_bn(w.rows(torch.float64), model)
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
