"""bnorm.torch.SyncBatchNorm: across 1-4 MPI ranks (mpi_sync_worker.py under mpirun, equal,
unequal and empty shards) it equals torch.nn.BatchNormXd on the whole batch; as one process it
is a BatchNorm; it is a torch.nn.SyncBatchNorm to the rest of torch.

MPI (openmpi-bin, python3-mpi4py) is required: a missing mpirun or mpi4py fails these tests.
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


def mpirun(np_, script, *args, env=None, timeout=900):
    """Run script under mpirun with np_ ranks; a run that outlives timeout seconds (a rank left
    waiting) is killed with all its ranks and fails the test."""
    mpirun_path = shutil.which("mpirun")
    assert mpirun_path, "mpirun is missing: apt-get install openmpi-bin libopenmpi-dev"
    cmd = [mpirun_path, "--oversubscribe", "-np", str(np_)]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.path.join(ROOT, "python") + os.pathsep + env.get("PYTHONPATH", "")
    p = run_or_kill(cmd + [sys.executable, script] + list(args),
                    timeout, "%d ranks (a rank left waiting?)" % np_, env=env,
                    stderr=subprocess.STDOUT)
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout)


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_matches_whole_batch_batchnorm_across_ranks(ranks):
    r = mpirun(ranks, os.path.join(HERE, "mpi_sync_worker.py"))
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    assert r.returncode == 0, r.stdout[-4000:]
    assert last.startswith("%d ranks: " % ranks) and last.endswith(" 0 failed"), r.stdout[-4000:]
    assert int(last.split()[2]) > 250 * ranks  # every rank ran every case


@pytest.mark.parametrize("ranks", [1, 3])
def test_errors_are_decided_by_all_ranks(ranks):
    """Each bad argument (on every rank, or on one): every rank raises the same error, with
    torch's type and message and naming the failing rank, and nothing is written on any rank
    (running statistics and the canaries around them compared); no rank is left waiting."""
    r = mpirun(ranks, os.path.join(HERE, "mpi_sync_worker.py"), "errors", timeout=120)
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    assert r.returncode == 0, r.stdout[-4000:]
    assert last.startswith("%d ranks: " % ranks) and last.endswith(" 0 failed"), r.stdout[-4000:]
    assert int(last.split()[2]) >= 60 * ranks, last  # every rank ran every case


def no_mpi_env():
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}


def test_one_process_is_batchnorm(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("OMPI_COMM_WORLD", "PMIX_RANK", "PMI_")):
            monkeypatch.delenv(k)
    torch.manual_seed(3)
    ours, ref = bt.SyncBatchNorm(4, momentum=None), torch.nn.BatchNorm2d(4, momentum=None)
    ours.load_state_dict(ref.state_dict())
    for _ in range(2):
        x = torch.randn(6, 4, 3, 3, dtype=torch.float64)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ours.double()(xa).sum().backward()
        ref.double()(xb).sum().backward()
        assert torch.allclose(xa.grad, xb.grad, atol=1e-10)
    assert torch.allclose(ours.running_var, ref.running_var, atol=1e-12)
    assert int(ours.num_batches_tracked) == 2
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        ours(torch.randn(1, 4, 1, 1, dtype=torch.float64))


def test_is_a_torch_syncbatchnorm():
    ours, ref = bt.SyncBatchNorm(5, eps=1e-3, momentum=0.2), torch.nn.SyncBatchNorm(5, 1e-3, 0.2)
    assert isinstance(ours, torch.nn.SyncBatchNorm)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert repr(ours) == repr(ref)
    with pytest.raises(ValueError):
        ours(torch.randn(4))  # torch's own input-dimension error


COMM_SELF_SCRIPT = r"""
import sys, torch
from mpi4py import MPI
import bnorm.torch as bt
m = bt.SyncBatchNorm(3, process_group=MPI.COMM_SELF)
ref = torch.nn.BatchNorm1d(3)
x = torch.randn(5, 3, 4)
xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
ya, yb = m(xa), ref(xb)
g = torch.randn_like(ya)
ya.backward(g); yb.backward(g)
assert ya.grad_fn is not None and "Sync" in type(ya.grad_fn).__name__, type(ya.grad_fn)
assert torch.allclose(ya, yb, atol=1e-5) and torch.allclose(xa.grad, xb.grad, atol=1e-4)
assert torch.allclose(m.running_var, ref.running_var, atol=1e-6)
print("comm-self ok")
"""


def test_communicator_passed_in(tmp_path):
    """A communicator given as process_group is used (here MPI.COMM_SELF, no mpirun)."""
    script = tmp_path / "comm_self.py"
    script.write_text(COMM_SELF_SCRIPT)
    env = no_mpi_env()
    env["PYTHONPATH"] = os.path.join(ROOT, "python")
    r = subprocess.run([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=300)
    assert r.returncode == 0 and "comm-self ok" in r.stdout, r.stdout


def test_convert_sync_batchnorm_shares_parameters():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4),
                                torch.nn.Sequential(torch.nn.BatchNorm1d(4, affine=False)))
    model[1].eval()
    weight, running_var = model[1].weight, model[1].running_var
    out = bt.SyncBatchNorm.convert_sync_batchnorm(model)
    assert type(out[1]) is bt.SyncBatchNorm and type(out[2][0]) is bt.SyncBatchNorm
    assert type(out[0]) is torch.nn.Conv2d
    assert out[1].weight is weight and out[1].running_var is running_var
    assert not out[1].training and out[2][0].weight is None
    assert list(out.state_dict()) == list(model.state_dict())
    single = bt.SyncBatchNorm.convert_sync_batchnorm(torch.nn.BatchNorm3d(2, momentum=None))
    assert type(single) is bt.SyncBatchNorm and single.momentum is None


def test_mpi_header_example(tmp_path):
    """bnorm_mpi.h's example compiles with mpicc and runs under mpirun with 3 ranks (one empty
    shard), every rank printing the same running mean."""
    import re
    text = open(os.path.join(ROOT, "include", "bnorm_mpi.h")).read()
    block = text.split(" * EXAMPLE", 1)[1].split(" */", 1)[0]
    code = "\n".join(re.sub(r"^ \*( {3})?", "", line) for line in block.splitlines()[1:])
    assert "int main(int argc, char **argv)" in code
    src, exe = tmp_path / "example.c", tmp_path / "example"
    src.write_text(code)
    build = os.environ.get("BNORM_BUILD", os.path.join(ROOT, "build"))
    mpicc = shutil.which("mpicc")
    assert mpicc, "mpicc is missing: apt-get install libopenmpi-dev"
    subprocess.run([mpicc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-I",
                    os.path.join(ROOT, "include"), str(src), "-o", str(exe),
                    os.path.join(build, "libbnorm_mpi.a"), os.path.join(build, "libbnorm.a"),
                    "-fopenmp", "-lm"], check=True)
    cmd = [shutil.which("mpirun"), "--oversubscribe", "-np", "3", str(exe)]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    values = re.findall(r"rank \d: running_mean\[0\] = (\S+)", r.stdout)
    assert len(values) == 3 and len(set(values)) == 1, r.stdout
    # the batch: rank 1's sample (values 1 + i % 5) and rank 2's two (2 + i % 5); channel 0
    x = [1 + i % 5 for i in range(4)] + [2 + i % 5 for i in range(4)] + \
        [2 + i % 5 for i in range(8, 12)]
    assert abs(float(values[0]) - 0.1 * sum(x) / len(x)) < 1e-6
