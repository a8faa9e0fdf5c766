"""bnorm.torch.SyncBatchNorm over torch.distributed: 1-4 processes spawned by
torch.multiprocessing join a gloo group on 127.0.0.1 (dist_sync_worker.py) and it equals
torch.nn.BatchNormXd on the whole batch (equal, unequal and empty shards, 1d/2d/3d,
channels_last), the running statistics the same bits on every rank; an explicit process group
synchronizes only its members; errors and a backward with create_graph=True are raised by every
rank alike, never a hang; under mpirun the MPI and torch.distributed paths give the bits of
libbnorm_mpi. Without torch.distributed or mpirun it is a plain BatchNorm.

Every run has a deadline: a rank left waiting fails the test and is killed with all the others.
MPI (openmpi-bin, python3-mpi4py) is required for test_same_bits_as_mpi: missing, it fails.
"""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from deadline import run_or_kill

import bnorm.torch as bt

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
WORKER = os.path.join(HERE, "dist_sync_worker.py")
MPI_VARS = ("OMPI_", "PMIX_", "PMI_")


def environment():
    """This environment without an MPI launcher's variables, the package on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(MPI_VARS)}
    env["PYTHONPATH"] = os.path.join(ROOT, "python") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def summary(cmd, ranks, timeout):
    """Run cmd (the worker, or mpirun of it) within timeout seconds; the number of checks that
    passed, once the run has succeeded and its last line says no check failed."""
    p = run_or_kill(cmd, timeout, "%d ranks (a rank left waiting?)" % ranks,
                    env=environment(), stderr=subprocess.STDOUT)
    lines = p.stdout.strip().splitlines()
    last = lines[-1] if lines else ""
    assert p.returncode == 0, p.stdout[-4000:]
    assert last.startswith("%d ranks: " % ranks) and last.endswith(" 0 failed"), p.stdout[-4000:]
    return int(last.split()[2])


def spawn(mode, ranks, timeout=120):
    return summary([sys.executable, WORKER, mode, str(ranks)], ranks, timeout)


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_matches_whole_batch_batchnorm(ranks):
    """Output, input gradient, running statistics and num_batches_tracked of every shard equal
    float64 torch on the whole batch, two steps and eval; the weight and bias gradients summed
    over the ranks are the batch's; the running statistics are the same bits on every rank."""
    assert spawn("cases", ranks) > 250 * ranks  # every rank ran every case


@pytest.mark.parametrize("ranks", [1, 3])
def test_errors_are_decided_by_all_ranks(ranks):
    """A bad input on the last rank (C, dtype), on every rank (dimensions), ranks that disagree
    (C and dtype, eps), one value per channel in all, a bad grad_output: every rank raises the
    same exception, the MPI path's type and message, nothing is written, and all go on."""
    assert spawn("errors", ranks) >= 16 * ranks


@pytest.mark.parametrize("ranks", [1, 2])
def test_create_graph_backward_raises(ranks):
    """backward(create_graph=True) on every rank or on one, autograd.grad(create_graph=True):
    RuntimeError on every rank, no gradient written."""
    assert spawn("create_graph", ranks) >= 6 * ranks


def test_explicit_process_group():
    """dist.new_group([0, 2]) of 3 processes: ranks 0 and 2 make one batch, rank 1 (with a
    group of its own) another; rank 1 handed the group it is not in raises alone."""
    assert spawn("group", 3) > 250


def test_same_bits_as_mpi():
    """Under mpirun with torch.distributed initialized too: process_group=None takes
    torch.distributed; the same shards over MPI.COMM_WORLD, over torch.distributed and through
    bn_mpi_forward_train / bn_mpi_backward_train give the same bits; create_graph=True over MPI
    raises on every rank."""
    mpirun = shutil.which("mpirun")
    assert mpirun, "mpirun is missing: apt-get install openmpi-bin libopenmpi-dev"
    cmd = [mpirun, "--oversubscribe", "-np", "3"]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    assert summary(cmd + [sys.executable, WORKER, "mpi"], 3, 120) > 200 * 3


def test_without_torch_distributed_is_batchnorm(monkeypatch):
    """No torch.distributed group and no MPI launcher: no communicator, torch's BatchNorm."""
    for k in list(os.environ):
        if k.startswith(MPI_VARS):
            monkeypatch.delenv(k)
    assert not torch.distributed.is_initialized()
    ours, ref = bt.SyncBatchNorm(3, momentum=None), torch.nn.BatchNorm2d(3, momentum=None)
    assert ours._communicator() is None
    ours.double()
    ref.double()
    for _ in range(2):
        x = torch.randn(5, 3, 2, 4, dtype=torch.float64).contiguous(
            memory_format=torch.channels_last)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        g = torch.randn_like(x)
        ya, yb = ours(xa), ref(xb)
        ya.backward(g)
        yb.backward(g)
        assert torch.allclose(ya, yb, atol=1e-10) and torch.allclose(xa.grad, xb.grad,
                                                                     atol=1e-10)
        assert torch.allclose(ours.weight.grad, ref.weight.grad, atol=1e-10)
    assert torch.allclose(ours.running_mean, ref.running_mean, atol=1e-12)
    assert torch.allclose(ours.running_var, ref.running_var, atol=1e-12)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 2
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        ours(torch.randn(1, 3, 1, 1, dtype=torch.float64))
