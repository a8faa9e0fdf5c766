"""bench/torch_peer.py, the PyTorch side of make bench: what its fused cases compute (the batch
norm, then the add and the ReLU; backward, the ReLU's gradient then the batch norm's) and the bytes
it counts for them, as `bnorm bench` counts its own. (The oneDNN peer needs libdnnl, which only
make bench installs.)"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("torch_peer", REPO / "bench" / "torch_peer.py")
peer = importlib.util.module_from_spec(spec)
sys.argv, argv = ["torch_peer.py", "--system-malloc"], sys.argv  # no re-exec on import
try:
    spec.loader.exec_module(peer)
finally:
    sys.argv = argv

DIMS = (4, 3, 5, 5)
F = torch.nn.functional


def tensors():
    """The case's tensors, drawn as make_case draws them (one generator, in its order)."""
    gen = torch.Generator().manual_seed(1)
    x = peer.uniform(DIMS, -2.0, 3.0, torch.float32, gen)
    w, b, rm, rv = (peer.uniform((3,), lo, hi, torch.float32, gen)
                    for lo, hi in ((0.5, 1.5), (-0.5, 0.5), (-0.5, 0.5), (0.5, 2.0)))
    return gen, x, w, b, rm, rv


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("fuse", [None, "relu", "add-relu"])
def test_fused_forward_is_the_batch_norm_then_the_epilogue(mode, fuse):
    gen, x, w, b, rm, rv = tensors()
    z = peer.uniform(DIMS, -1.0, 1.0, torch.float32, gen) if fuse == "add-relu" else 0
    want = F.batch_norm(x, rm, rv, w, b, mode == "train", peer.MOMENTUM, peer.EPS) + z
    if fuse:
        want = want.relu()
    got = peer.make_case(DIMS, "nchw", mode, torch.float32, fuse)()
    assert torch.equal(got, want)


@pytest.mark.parametrize("fuse", ["relu", "add-relu"])
def test_fused_backward_is_autograds(fuse):
    gen, x, w, b, rm, rv = tensors()
    z = peer.uniform(DIMS, -1.0, 1.0, torch.float32, gen) if fuse == "add-relu" else None
    dy = peer.uniform(DIMS, -1.0, 1.0, torch.float32, gen)
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    y = F.batch_norm(xg, rm.clone(), rv.clone(), wg, bg, True, peer.MOMENTUM, peer.EPS)
    F.relu(y + z if z is not None else y).backward(dy)
    dx, dw, db = peer.make_case(DIMS, "nchw", "backward", torch.float32, fuse)()
    for got, want in ((dx, xg.grad), (dw, wg.grad), (db, bg.grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fuse,extra", [("relu", {"train": 0, "eval": 0, "backward": 1}),
                                        ("add-relu", {"train": 1, "eval": 1, "backward": 2})])
def test_fused_cases_count_bytes_as_bnorm_bench(fuse, extra):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "torch_peer.py"), "--shape",
                        "4x16x8x8", "--layout", "nchw", "--threads", "1", "--repeat", "1",
                        "--fuse", fuse], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    cases = [json.loads(line) for line in r.stdout.splitlines()]
    assert [c["mode"] for c in cases] == ["train", "eval", "backward"]
    for c in cases:
        plain = 3 if c["mode"] == "backward" else 2
        assert c["fuse"] == fuse and c["median_ns"] > 0
        assert c["bytes"] == (plain + extra[c["mode"]]) * 4 * (4 * 16 * 8 * 8)


def test_an_unknown_epilogue_is_a_usage_error():
    r = subprocess.run([sys.executable, str(REPO / "bench" / "torch_peer.py"), "--shape", "4x3",
                        "--fuse", "gelu"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert "--fuse" in r.stderr and "gelu" in r.stderr
