"""bnorm.torch on bfloat16 and float16 tensors: computed by the C library, not handed to torch.

  - every output within one rounding of a float64 computation on the same (rounded) values:
    within half a unit in the last place of the float64 result, plus float32's own error (the
    library computes 16-bit tensors in float32 and rounds once), in training and eval, forward
    and backward, both layouts, with parameters of the input's dtype and float32 ones (what
    torch.autocast gives);
  - parity with torch's own bfloat16 kernel (float16 torch 1.13 refuses on the CPU): bnorm's
    results differ from torch's by at most a unit in the last place of bfloat16 more than
    torch's differ from the float64 result (torch rounds to bfloat16 at more steps where the
    parameters are bfloat16);
  - torch.autocast("cpu", torch.bfloat16), torch.jit.trace / script, torch.fx and double
    backward, with torch's batch norm made to raise, so that it is bnorm that ran;
  - dtypes torch refuses beside a 16-bit input (float64 parameters) give torch's error.
Units in the last place are counted at max(1, |value|): below 1 the check is absolute, at the
resolution of values near 1.
Run: BNORM_LIBRARY=$PWD/build/libbnorm.so PYTHONPATH=python /usr/bin/python3 -m pytest tests/python
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import bnorm.torch as bt
from c_path import computed_by_c, use_ctypes_path
from test_torch_tools import TorchBatchNormRan, torch_kernels_raise  # noqa: F401 (a fixture)

HALVES = (torch.bfloat16, torch.float16)
BITS = {torch.bfloat16: 8, torch.float16: 11, torch.float32: 24}  # significand bits
MODULES = {2: bt.BatchNorm1d, 3: bt.BatchNorm1d, 4: bt.BatchNorm2d, 5: bt.BatchNorm3d}
TORCH_MODULES = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
SHAPES = [(64, 12), (8, 6, 33), (4, 5, 7, 7), (6, 3, 40, 30), (2, 4, 3, 5, 6)]
# (shape, channels_last): 4-d and 5-d shapes in both memory formats
LAYOUTS = [(shape, last) for shape in SHAPES for last in (False, True) if not last or len(shape) > 3]


def ulp(ref, dtype):
    """A unit in the last place of dtype at max(1, |ref|) (ref in float64)."""
    e = torch.frexp(ref.abs().clamp(min=1))[1]
    return torch.ldexp(torch.ones_like(ref), e - BITS[dtype])


def assert_one_rounding(actual, ref, rel, what):
    """actual (a 16-bit or float32 tensor) within half a unit in its last place of the float64
    ref, plus rel * max(1, |ref|) (the float32 computation's own error)."""
    assert actual.dtype in BITS, what
    err = (actual.double() - ref).abs()
    bound = ulp(ref, actual.dtype) / 2 + rel * ref.abs().clamp(min=1)
    bad = err > bound
    assert not bad.any(), (what, int(bad.sum()), float((err / bound).max()))


def assert_ulps(actual, ref, k, what):
    """|actual - ref| <= k units in the last place of bfloat16, at max(1, |ref|)."""
    err = (actual.double() - ref.double()).abs()
    bound = k * ulp(ref.double(), torch.bfloat16)
    assert (err <= bound).all(), (what, float((err / bound).max()), k)


def data(shape, dtype, seed, offset=3.0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + offset).to(dtype)


def pair(shape, dtype, params):
    """(ours, torch's float64 twin): the same rounded parameters and running statistics."""
    c = shape[1]
    ours = MODULES[len(shape)](c)
    gen = torch.Generator().manual_seed(c)
    with torch.no_grad():
        ours.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        ours.bias.copy_(torch.randn(c, generator=gen))
        ours.running_mean.copy_(torch.randn(c, generator=gen))
        ours.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    ours.to(params)
    ref = TORCH_MODULES[len(shape)](c).double()
    ref.load_state_dict({k: v.double() if v.is_floating_point() else v
                         for k, v in ours.state_dict().items()})
    return ours, ref


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("params", ["same", "float32"])
@pytest.mark.parametrize("shape,last", LAYOUTS)
def test_within_one_rounding_of_float64(dtype, params, shape, last):
    pdt = dtype if params == "same" else torch.float32
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}[len(shape)] if last else None
    ours, ref = pair(shape, dtype, pdt)
    x = data(shape, dtype, 1)
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    g = data(shape, dtype, 2, 0.0, 1.0)
    for training in (True, False):
        ours.train(training), ref.train(training)
        xo = x.clone().requires_grad_()
        xr = x.double().requires_grad_()
        yo, yr = ours(xo), ref(xr)
        assert computed_by_c(yo) and yo.dtype == dtype, (training, yo.grad_fn)
        if fmt is not None:
            assert yo.is_contiguous(memory_format=fmt)
        what = (dtype, pdt, shape, last, training)
        assert_one_rounding(yo, yr.detach(), 2e-6, ("y",) + what)
        assert_one_rounding(ours.running_mean, ref.running_mean, 1e-6, ("running_mean",) + what)
        assert_one_rounding(ours.running_var, ref.running_var, 1e-6, ("running_var",) + what)
        yo.backward(g)
        yr.backward(g.double())
        # dx cancels: float32's error is relative to the largest term, as in float32
        assert_one_rounding(xo.grad, xr.grad, 1e-5 * float(xr.grad.abs().max().clamp(min=1)),
                            ("dx",) + what)
        assert ours.weight.grad.dtype == pdt and ours.bias.grad.dtype == pdt
        assert_one_rounding(ours.weight.grad, ref.weight.grad, 1e-9 * x.numel(), ("dw",) + what)
        assert_one_rounding(ours.bias.grad, ref.bias.grad, 1e-9 * x.numel(), ("db",) + what)
        ours.zero_grad(), ref.zero_grad()
        # the next pass starts from the rounded running statistics, as ours holds them
        ref.load_state_dict({k: v.double() if v.is_floating_point() else v
                             for k, v in ours.state_dict().items()})


def assert_parity(ours, theirs, exact, what):
    """ours differs from torch's only where torch's is off the float64 result: |ours - torch|
    <= |torch - exact| + a unit in the last place of bfloat16 (at max(1, |exact|))."""
    ours, theirs = ours.double(), theirs.double()
    bound = (theirs - exact).abs() + ulp(exact, torch.bfloat16)
    bad = (ours - theirs).abs() > bound
    assert not bad.any(), (what, int(bad.sum()))


@pytest.mark.parametrize("params", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape,last", [((64, 32), False), ((16, 8, 9, 9), False),
                                        ((16, 8, 9, 9), True), ((5, 7, 33), False)])
def test_bfloat16_parity_with_torch(params, shape, last):
    """Against torch's own bfloat16 kernel, and the float64 computation of the same values."""
    ours, exact = pair(shape, torch.bfloat16, params)
    ref = TORCH_MODULES[len(shape)](shape[1]).to(params)
    ref.load_state_dict(ours.state_dict())
    x = data(shape, torch.bfloat16, 3)
    if last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = data(shape, torch.bfloat16, 4, 0.0, 1.0)
    for training in (True, False):
        for m in (ours, ref, exact):
            m.train(training)
        xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        xe = x.double().requires_grad_()
        yo, yr, ye = ours(xo), ref(xr), exact(xe)
        assert computed_by_c(yo)
        assert yr.dtype == yo.dtype == torch.bfloat16
        assert_parity(yo, yr, ye.detach(), ("y", training))
        for name in ("running_mean", "running_var"):
            assert_parity(getattr(ours, name), getattr(ref, name), getattr(exact, name),
                          (name, training))
        yo.backward(g), yr.backward(g), ye.backward(g.double())
        assert_parity(xo.grad, xr.grad, xe.grad, ("dx", training))
        assert ours.weight.grad.dtype == ref.weight.grad.dtype == params
        assert_parity(ours.weight.grad, ref.weight.grad, exact.weight.grad, ("dw", training))
        assert_parity(ours.bias.grad, ref.bias.grad, exact.bias.grad, ("db", training))
        for m in (ours, ref, exact):
            m.zero_grad()
        # all three go on from ours's running statistics
        state = ours.state_dict()
        ref.load_state_dict(state)
        exact.load_state_dict({k: v.double() if v.is_floating_point() else v
                               for k, v in state.items()})


def small_model(cls, dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), cls(8), nn.ReLU(), nn.Conv2d(8, 4, 1), cls(4)).to(dtype)


def test_autocast_runs_bnorm_in_bfloat16(torch_kernels_raise):  # noqa: F811
    """Under autocast the convolutions give bfloat16 and the float32 parameters stay: bnorm
    computes that mixed call itself, forward and backward."""
    ours = small_model(bt.BatchNorm2d)
    x = torch.randn(4, 3, 10, 10, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x)
    assert y.dtype == torch.bfloat16 and computed_by_c(y)
    y.float().square().sum().backward()
    assert ours[1].weight.grad.dtype == torch.float32 and x.grad is not None
    assert ours[1].running_mean.dtype == torch.float32


def test_autocast_matches_torch():
    ours, ref = small_model(bt.BatchNorm2d), small_model(nn.BatchNorm2d)
    x = torch.randn(4, 3, 10, 10)
    for training in (True, False):
        ours.train(training), ref.train(training)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yo, yr = ours(x), ref(x)
        assert yo.dtype == yr.dtype == torch.bfloat16
        # the second batch norm sees the first's output through a convolution in bfloat16:
        # a unit of difference there may grow by a few through the convolution
        assert_ulps(yo, yr, 4, training)


@pytest.mark.parametrize("dtype", HALVES)
def test_tools_run_bnorm(dtype, torch_kernels_raise):  # noqa: F811
    """jit.trace, jit.script, fx and a double backward on 16-bit tensors, with torch's batch
    norm raising."""
    m = bt.BatchNorm2d(4).to(dtype)
    x = data((3, 4, 5, 5), dtype, 5)
    eager = m(x)
    traced = torch.jit.trace(m, x, check_trace=False)
    scripted = torch.jit.script(m)
    graph = torch.fx.symbolic_trace(nn.Sequential(m))  # (a module is traced inside a model)
    for run in (traced, scripted, graph):
        m.running_mean.zero_(), m.running_var.fill_(1), m.num_batches_tracked.zero_()
        assert torch.equal(run(x), eager)
    m.eval()
    assert torch.equal(torch.jit.trace(m, x)(x), m(x))
    # double backward: the formula path, in float32, rounded to the input's dtype
    m.train()
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(m(xg).float().tanh().sum(), xg, create_graph=True)
    assert gx.dtype == dtype
    gx.float().square().sum().backward()
    xd = x.double().requires_grad_()
    md = bt.BatchNorm2d(4).double()  # (bnorm's float64, checked against torch elsewhere)
    (gd,) = torch.autograd.grad(md(xd).tanh().sum(), xd, create_graph=True)
    gd.square().sum().backward()
    assert torch.allclose(gx.double(), gd, atol=2e-2, rtol=2e-2)
    assert torch.allclose(xg.grad.double(), xd.grad, atol=5e-2, rtol=5e-2)


def test_functional_paths_run_bnorm(torch_kernels_raise):  # noqa: F811
    x = data((6, 3, 4), torch.bfloat16, 6).requires_grad_()
    w = torch.rand(3, requires_grad=True)
    rm, rv = torch.zeros(3), torch.ones(3)
    # an odd momentum (the formula path, in float32), strided running statistics, eval
    bt.batch_norm(x, rm, rv, w, None, True, 1.5, 1e-5).float().sum().backward()
    store = torch.zeros(6)
    bt.batch_norm(x, store[::2], store[1::2] + 1, w, None, True, 0.1, 1e-5)
    y = bt.batch_norm(x, rm, rv, w, None, False)
    assert y.dtype == torch.bfloat16
    assert torch.equal(bt.batch_norm(x[:, :, ::2], rm, rv, w, None, False),
                       bt.batch_norm(x[:, :, ::2].contiguous(), rm, rv, w, None, False))


def test_mixed_dtypes_torch_refuses_give_its_error():
    x = data((4, 3, 5), torch.bfloat16, 7)
    for params in (torch.float64, torch.float16):
        ours, ref = bt.BatchNorm1d(3).to(params), nn.BatchNorm1d(3).to(params)
        with pytest.raises(RuntimeError) as theirs:
            ref(x)
        with pytest.raises(RuntimeError) as mine:
            ours(x)
        assert str(mine.value) == str(theirs.value)


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("params", ["same", "float32"])
def test_native_and_ctypes_paths_give_the_same_bits(dtype, params, monkeypatch):
    pdt = dtype if params == "same" else torch.float32
    x = data((6, 5, 4, 4), dtype, 8).contiguous(memory_format=torch.channels_last)
    g = data((6, 5, 4, 4), dtype, 9, 0.0, 1.0)
    results = []
    for path in ("native", "ctypes"):
        if path == "ctypes":
            use_ctypes_path(monkeypatch)
        m, _ = pair(x.shape, dtype, pdt)
        xg = x.clone().requires_grad_()
        y = m(xg)
        assert computed_by_c(y)
        y.backward(g)
        results.append((y, xg.grad, m.weight.grad, m.bias.grad, m.running_mean, m.running_var))
    for a, b in zip(*results):
        assert a.dtype == b.dtype and torch.equal(a, b)
