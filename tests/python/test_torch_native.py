"""bnorm._torch_native, the ordinary call of bnorm.torch in C++ (python/bnorm/_torch_native.cpp).

  - it is built and loaded (make test installs libtorch-dev: never skipped);
  - it takes the ordinary calls (modules and batch_norm, training and eval, both layouts, both
    dtypes) and only calls _functional._route sends to the C library: whatever it takes, the
    ctypes route would have taken too;
  - its results are the ctypes route's bit for bit (forward, running statistics, gradients),
    so the two are one library seen twice;
  - its backward hands create_graph, vmap's batched gradients and negative views to the formula;
    eval's saved running statistics keep autograd's in-place check.
"""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnorm.torch as bt
from bnorm import _functional
from c_path import NATIVE_NODE, use_ctypes_path

NATIVE = _functional.NATIVE


def test_the_native_module_is_built_and_loaded():
    assert NATIVE is not None, (
        "bnorm._torch_native is missing: `make` builds build/_torch_native.so where libtorch-dev "
        "(torch's C++ headers) is installed")
    assert _functional._native_batch_norm is NATIVE.batch_norm


def make_args(shape, dtype=torch.float32, fmt=None, affine=True, stats=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) * 2 + 0.5
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    c = shape[1]
    w = torch.rand(c, generator=gen, dtype=torch.float64).to(dtype) + 0.5 if affine else None
    b = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype) if affine else None
    rm = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype) if stats else None
    rv = torch.rand(c, generator=gen, dtype=torch.float64).to(dtype) + 0.5 if stats else None
    return x, rm, rv, w, b


ORDINARY = [((4, 3), None), ((4, 3, 5), None), ((2, 3, 4, 5), None),
            ((2, 3, 4, 5), torch.channels_last), ((2, 3, 2, 4, 3), torch.channels_last_3d)]


@pytest.mark.parametrize("shape,fmt", ORDINARY)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
def test_ordinary_calls_are_native_and_equal_the_ctypes_route(shape, fmt, dtype, training,
                                                             monkeypatch):
    results = []
    for path in ("native", "ctypes"):
        if path == "ctypes":
            use_ctypes_path(monkeypatch)
        x, rm, rv, w, b = make_args(shape, dtype, fmt)
        for t in (x, w, b):
            t.requires_grad_()
        y = bt.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)
        if path == "native":
            assert y.grad_fn.name() == NATIVE_NODE
        assert y.stride() == x.stride()
        dy = torch.randn(shape, generator=torch.Generator().manual_seed(7),
                         dtype=torch.float64).to(dtype)
        y.backward(dy)
        results.append([y.detach(), rm, rv, x.grad, w.grad, b.grad])
    for ours, ref in zip(*results):
        assert torch.equal(ours, ref)
    # and torch agrees, to the rounding of the dtype
    x, rm, rv, w, b = make_args(shape, dtype, fmt)
    ref = F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(results[0][0], ref, rtol=tol, atol=tol)
    assert torch.allclose(results[0][1], rm, rtol=tol, atol=tol)


@pytest.mark.parametrize("training", [True, False])
def test_modules_take_the_native_route(training):
    m = bt.BatchNorm2d(3).train(training)
    y = m(torch.randn(4, 3, 2, 2, requires_grad=True))
    assert y.grad_fn.name() == NATIVE_NODE
    with torch.no_grad():  # no node at all, the native module still computes
        assert NATIVE.accepts(torch.randn(4, 3, 2, 2), m.running_mean, m.running_var,
                              m.weight, m.bias, training, 0.1, 1e-5)


def variants():
    """Argument sets around an ordinary call, one thing changed at a time (the tensors a
    function of a seed: some are built fresh each time)."""
    base = dict(shape=(4, 3, 5), dtype=torch.float32, fmt=None, affine=True, stats=True,
                training=True, momentum=0.1, eps=1e-5)
    changes = [
        {}, {"dtype": torch.float64}, {"dtype": torch.float16}, {"dtype": torch.bfloat16},
        {"shape": (4, 3)}, {"shape": (3,)}, {"shape": (0, 3)}, {"shape": (4, 0, 5)},
        {"shape": (2, 3, 4, 5), "fmt": torch.channels_last},
        {"shape": (2, 3, 2, 4, 3), "fmt": torch.channels_last_3d},
        {"affine": False}, {"stats": False}, {"stats": False, "training": False},
        {"training": False}, {"training": 1}, {"training": np.bool_(True)},
        {"momentum": 0.0}, {"momentum": 1.0}, {"momentum": 1}, {"momentum": 2.0},
        {"momentum": -0.5}, {"momentum": float("nan")}, {"momentum": np.float32(0.1)},
        {"momentum": 2.0, "training": False}, {"momentum": 2.0, "stats": False},
        {"eps": 0.0}, {"eps": -1.0}, {"eps": float("inf")}, {"eps": float("nan")},
        {"eps": 0}, {"eps": torch.tensor(1e-5)}, {"eps": 10 ** 400},
    ]
    for change in changes:
        yield dict(base, **change)


def tensor_variants(x, rm, rv, w, b):
    """The same call with one tensor made odd (name, the five tensors)."""
    yield "as built", (x, rm, rv, w, b)
    yield "transposed input", (x.transpose(0, 1).contiguous().transpose(0, 1), rm, rv, w, b)
    yield "negative view input", (torch._neg_view(x), rm, rv, w, b)
    yield "negative view weight", (x, rm, rv, torch._neg_view(w), b)
    yield "strided running mean", (x, torch.stack([rm, rm], 1)[:, 0], rv, w, b)
    yield "weight of another dtype", (x, rm, rv, w.double() if w.dtype != torch.float64
                                      else w.float(), b)
    yield "bias too long", (x, rm, rv, w, torch.cat([b, b]))
    yield "running var requiring grad", (x, rm, rv.clone().requires_grad_(), w, b)
    yield "parameters", (x, rm, rv, torch.nn.Parameter(w), torch.nn.Parameter(b))
    yield "meta input", (x.to("meta"), rm, rv, w, b)
    yield "a list as weight", (x, rm, rv, w.tolist(), b)


def test_what_native_takes_the_ctypes_route_takes_too():
    taken = declined = 0
    for args in variants():
        shape = args["shape"]
        if len(shape) < 2 or shape[1] == 0:
            x = torch.randn(shape).to(args["dtype"])
            calls = [("plain", (x, None, None, None, None))]
        else:
            calls = list(tensor_variants(*make_args(shape, args["dtype"], args["fmt"])))
            if not args["affine"]:
                calls = [(n, (x, rm, rv, None, None)) for n, (x, rm, rv, _, _) in calls]
            if not args["stats"]:
                calls = [(n, (x, None, None, w, b)) for n, (x, _, _, w, b) in calls]
        for grad in (True, False):
            with torch.set_grad_enabled(grad):
                for name, tensors in calls:
                    call = tensors + (args["training"], args["momentum"], args["eps"])
                    if not NATIVE.accepts(*call):
                        declined += 1
                        continue
                    taken += 1
                    what = (args, name, grad)
                    assert _functional._route(*call) == _functional._C, what
                    x = tensors[0]
                    assert x.is_contiguous() or x.is_contiguous(
                        memory_format=torch.channels_last) or x.is_contiguous(
                        memory_format=torch.channels_last_3d), what
    assert taken > 50 and declined > 100, (taken, declined)


def test_native_declines_what_only_torch_or_the_formula_computes():
    x, rm, rv, w, b = make_args((4, 3, 5))
    assert not NATIVE.accepts(x, None, None, w, b, False, 0.1, 1e-5)  # eval without statistics
    assert NATIVE.accepts(x.bfloat16(), None, None, None, None, True, 0.1, 1e-5)  # bnorm's
    assert not NATIVE.accepts(x.bfloat16(), rm.double(), rv.double(), None, None, True, 0.1,
                              1e-5)  # mixed, but not float32 beside 16-bit: torch's error
    assert not NATIVE.accepts(x.half(), rm, rv.half(), None, None, True, 0.1, 1e-5)
    assert not NATIVE.accepts(torch._neg_view(x), rm, rv, w, b, True, 0.1, 1e-5)
    assert not NATIVE.accepts(x, rm, rv, w, b, True, 0.1, -1.0)
    assert not NATIVE.accepts(x[:, :, ::2], rm, rv, w, b, True, 0.1, 1e-5)  # copied in Python
    assert not NATIVE.accepts(x[:0], rm, rv, w, b, True, 0.1, 1e-5)
    # and those calls still give torch's results
    for call in [(x.bfloat16()[:, :, ::2], None, None, None, None, True, 0.1, 1e-5),
                 (x[:, :, ::2], rm.clone(), rv.clone(), w, b, True, 0.1, 1e-5)]:
        assert torch.allclose(bt.batch_norm(*call).float(), F.batch_norm(*call).float(),
                              atol=1e-2, rtol=2 ** -7)  # (a bfloat16 unit in the last place)


def test_forward_mode_ad_does_not_reach_the_native_module(monkeypatch):
    calls = []
    real = _functional._native_batch_norm
    monkeypatch.setattr(_functional, "_native_batch_norm",
                        lambda *a: calls.append(1) or real(*a))
    x, rm, rv, w, b = make_args((4, 3, 5), torch.float64)
    bt.batch_norm(x, rm, rv, w, b, True)
    assert calls == [1]
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, torch.ones_like(x))
        y = bt.batch_norm(dual, None, None, w, b, True)
        assert torch.autograd.forward_ad.unpack_dual(y).tangent is not None
    assert calls == [1]


@pytest.mark.parametrize("path", ["native", "ctypes"])
@pytest.mark.parametrize("training", [True, False])
def test_backward_through_the_formula_where_the_c_library_cannot(training, path, monkeypatch):
    """create_graph (double backward), a negative view as the upstream gradient: the backward
    of either path gives torch's gradients."""
    if path == "ctypes":
        use_ctypes_path(monkeypatch)
    for upstream in ("create_graph", "negative view"):
        grads = []
        for f in (bt.batch_norm, F.batch_norm):
            x, rm, rv, w, b = make_args((3, 2, 4), torch.float64)
            for t in (x, w, b):
                t.requires_grad_()
            y = f(x, rm, rv, w, b, training, 0.1, 1e-5)
            dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3),
                             dtype=torch.float64)
            if upstream == "negative view":
                g = torch.autograd.grad(y, (x, w, b), torch._neg_view(dy))
            else:
                g = torch.autograd.grad(y, (x, w, b), dy, create_graph=True)
                assert g[0].requires_grad  # a graph to differentiate again
                g = g + torch.autograd.grad(g[0].square().sum() + g[1].square().sum(), (x, w))
            grads.append(g)
        for ours, ref in zip(*grads):
            assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-10), upstream


def test_eval_backward_sees_running_statistics_changed_in_place():
    x, rm, rv, w, b = make_args((4, 3, 5), torch.float64)
    x.requires_grad_()
    y = bt.batch_norm(x, rm, rv, w, b, False)
    assert y.grad_fn.name() == NATIVE_NODE
    rv.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_only_the_gradients_asked_for_are_formed():
    x, rm, rv, w, b = make_args((4, 3, 5), torch.float64)
    w.requires_grad_()  # not x, not b
    y = bt.batch_norm(x, None, None, w, b, True)
    y.sum().backward()
    assert w.grad is not None and x.grad is None and b.grad is None
    # a bias without a weight: the bias is the node's second input
    b.requires_grad_()
    y = bt.batch_norm(x, None, None, None, b, True)
    (db,) = torch.autograd.grad(y, b, torch.ones_like(y))
    assert torch.allclose(db, torch.full_like(b, 20.0))


def test_gradients_of_every_subset_of_inputs_equal_torch():
    for need in itertools.product([False, True], repeat=3):
        if not any(need):
            continue
        grads = []
        for f in (bt.batch_norm, F.batch_norm):
            x, _, _, w, b = make_args((4, 3, 5), torch.float64, seed=2)
            inputs = [t.requires_grad_() for t, n in zip((x, w, b), need) if n]
            y = f(x, None, None, w, b, True, 0.1, 1e-5)
            grads.append(torch.autograd.grad(y, inputs, torch.cos(y.detach())))
        for ours, ref in zip(*grads):
            assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-10), need


def test_a_native_module_that_does_not_load_is_reported_and_ctypes_serves(tmp_path):
    """A _torch_native.so beside the package that is not a loadable module (as one built
    against another torch would be): import warns, names it, and the calls go through ctypes."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    package = Path(_functional.__file__).parent
    copy = tmp_path / "bnorm"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    (copy / "_torch_native.so").write_bytes(b"not a shared object")
    script = ("import warnings, torch\n"
              "with warnings.catch_warnings(record=True) as w:\n"
              "    warnings.simplefilter('always')\n"
              "    import bnorm.torch as bt\n"
              "from bnorm import _functional\n"
              "print(_functional.NATIVE)\n"
              "print([str(m.message) for m in w if m.category is RuntimeWarning])\n"
              "x = torch.randn(4, 3, requires_grad=True)\n"
              "print(type(bt.BatchNorm1d(3)(x).grad_fn).__name__)\n")
    env = dict(__import__("os").environ, PYTHONPATH=str(tmp_path),
               BNORM_LIBRARY=str(bt._lib.path))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    native, warned, node = r.stdout.splitlines()
    assert native == "None"
    assert "_torch_native.so does not load" in warned and "ctypes" in warned
    assert node == "_BatchNormFunctionBackward"


def test_python_threads_share_the_native_path():
    """The native call lets go of the GIL while the C library runs: Python threads calling
    bnorm.torch at once each get the results of a call made alone, bit for bit."""
    import threading
    shapes = [(8, 3, 6, 6), (16, 5, 4), (32, 7)]
    want, got = {}, {}

    def run(k):
        x, rm, rv, w, b = make_args(shapes[k % 3], torch.float32, seed=k)
        for t in (x, w, b):
            t.requires_grad_()
        out = []
        for _ in range(30):
            y = bt.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)
            (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
            out.append((y.detach(), dx))
        return out

    for k in range(6):
        want[k] = run(k)
    threads = [threading.Thread(target=lambda k=k: got.__setitem__(k, run(k))) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(6):
        for (y, dx), (y0, dx0) in zip(got[k], want[k]):
            assert torch.equal(y, y0) and torch.equal(dx, dx0)
