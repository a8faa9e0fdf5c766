"""bnorm.torch under PyTorch's tools: torch.jit.trace and torch.jit.script (which record and run
the operator bnorm::batch_norm), torch.jit.save / load, torch.fx.symbolic_trace, eager
quantization fusion (fuse_modules, fuse_conv_bn_eval), the Lazy modules, and
torch.nn.functional.batch_norm replaced by bnorm's. And on every path, for float32 and float64,
it is bnorm that computes: torch's batch norm kernels are made to raise (torch_kernels_raise).
"""

import copy
import gc
import io
import pickle
import warnings

import functorch
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import forward_ad
from torch.autograd.functional import jacobian

import bnorm.torch as bt
from c_path import computed_by_c
from bnorm import _functional

BNORM_OP = "bnorm::batch_norm"


def close(a, b, tol=1e-5):
    return bool(((a - b).abs() <= tol * b.abs().clamp(min=1)).all())


class TorchBatchNormRan(AssertionError):
    pass


def _boom(*args, **kwargs):
    raise TorchBatchNormRan("torch's batch norm ran")


@pytest.fixture
def torch_kernels_raise(monkeypatch):
    """torch's batch norm raises however it is reached: its CPU kernels (forward and backward,
    through the dispatcher, as jit graphs and C++ call them), torch.batch_norm, and the
    F.batch_norm bnorm would hand over to."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
        library = torch.library.Library("aten", "IMPL")
        library.impl("native_batch_norm", _boom, "CPU")
        library.impl("native_batch_norm_backward", _boom, "CPU")
    monkeypatch.setattr(torch, "batch_norm", _boom)
    monkeypatch.setattr(_functional, "TORCH_BATCH_NORM", _boom)
    with pytest.raises(TorchBatchNormRan):  # the guard itself works
        torch.ops.aten.native_batch_norm(torch.randn(2, 3), None, None, None, None, True, 0.1,
                                         1e-5)
    yield
    del library
    gc.collect()


def test_guard_is_lifted_after_the_test():
    assert nn.BatchNorm1d(3)(torch.randn(4, 3)).shape == (4, 3)


def model(dtype=torch.float32, cls=bt.BatchNorm2d):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), cls(4), nn.ReLU(), nn.Conv2d(4, 2, 1),
                         cls(2)).to(dtype)


def ops_of(graph):
    return [n.kind() for n in graph.nodes()]


# ------------------------------------------------------------------------------------------------
# TorchScript

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
def test_jit_trace_records_and_runs_bnorm(dtype, training, torch_kernels_raise):
    m = model(dtype).train(training)
    ref = copy.deepcopy(m)
    x = torch.randn(3, 3, 6, 6, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own TracerWarning of _verify_batch_size
        traced = torch.jit.trace(m, x, check_trace=False)
    ref(x)  # tracing ran the model once
    kinds = ops_of(traced.inlined_graph)
    assert kinds.count(BNORM_OP) == 2 and not any("batch_norm" in k and k != BNORM_OP
                                                  for k in kinds)
    y = traced(x)
    assert close(y, ref(x))
    for a, b in zip(traced.buffers(), ref.buffers()):
        assert torch.equal(a, b) if not a.is_floating_point() else close(a, b)
    y.sum().backward()  # the trace's backward is bnorm's too


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jit_script_compiles_to_bnorm(dtype, torch_kernels_raise):
    m = model(dtype)
    ref = copy.deepcopy(m)
    scripted = torch.jit.script(m)
    assert ops_of(scripted.inlined_graph).count(BNORM_OP) == 2
    x = torch.randn(3, 3, 6, 6, dtype=dtype, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    for training in (True, False):
        scripted.train(training)
        ref.train(training)
        y, yr = scripted(x), ref(xr)
        assert close(y, yr)
        y.square().sum().backward()
        yr.square().sum().backward()
        assert close(x.grad, xr.grad, 1e-4)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        a, b = getattr(scripted[1], name), getattr(ref[1], name)
        assert close(a.double(), b.double()), name


def test_jit_script_checks_like_torch():
    """A scripted module raises torch.jit.Error, as torch's scripted modules do, with torch's
    messages."""
    for cls in (nn.BatchNorm2d, bt.BatchNorm2d):
        scripted = torch.jit.script(cls(3))
        with pytest.raises(torch.jit.Error, match="expected 4D input"):
            scripted(torch.randn(2, 3, 4))
        with pytest.raises(torch.jit.Error, match="Expected more than 1 value per channel"):
            scripted(torch.randn(1, 3, 1, 1))
    scripted_1d = torch.jit.script(bt.BatchNorm1d(3, momentum=None, affine=False))
    scripted_1d(torch.randn(5, 3))
    assert scripted_1d.num_batches_tracked.item() == 1


def test_jit_save_load_runs_bnorm(torch_kernels_raise):
    m = model()
    x = torch.randn(2, 3, 5, 5)
    for compile_ in (torch.jit.script, lambda m: torch.jit.trace(m.eval(), x)):
        buf = io.BytesIO()
        torch.jit.save(compile_(copy.deepcopy(m)), buf)
        buf.seek(0)
        loaded = torch.jit.load(buf)
        assert BNORM_OP in ops_of(loaded.inlined_graph)
        loaded.eval()
        assert close(loaded(x), m.eval()(x))


def test_operator_under_inference_mode_and_no_grad(torch_kernels_raise):
    x = torch.randn(4, 3, 2)
    rm, rv = torch.zeros(3), torch.ones(3)
    expected = bt.batch_norm(x, None, None, training=True)
    with torch.inference_mode():
        y = torch.ops.bnorm.batch_norm(x, rm, rv, None, None, True, 0.1, 1e-5)
    assert close(y, expected) and close(rm, 0.1 * x.mean((0, 2)))
    with torch.no_grad():
        expected = (x - rm[:, None]) / (rv[:, None] + 1e-5).sqrt()
        assert close(torch.ops.bnorm.batch_norm(x, rm, rv, None, None, False, 0.1, 1e-5),
                     expected)


# ------------------------------------------------------------------------------------------------
# torch.fx

def test_fx_symbolic_trace_keeps_the_module(torch_kernels_raise):
    m = model()
    gm = torch.fx.symbolic_trace(m)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert targets == ["0", "1", "2", "3", "4"]
    assert type(gm.get_submodule("1")) is bt.BatchNorm2d
    x = torch.randn(3, 3, 6, 6)
    ref = copy.deepcopy(m)
    assert close(gm(x), ref(x))
    gm.eval()
    ref.eval()  # the GraphModule's batch norms follow eval(), as torch's do
    assert close(gm(x), ref(x))


def test_fx_of_a_batch_norm_alone_is_refused_like_torch():
    for cls in (nn.BatchNorm2d, bt.BatchNorm2d):
        with pytest.raises(torch.fx.proxy.TraceError):
            torch.fx.symbolic_trace(cls(3))


# ------------------------------------------------------------------------------------------------
# Fusion for inference

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fuse_modules_as_for_torch(dtype, torch_kernels_raise):
    torch.manual_seed(2)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), bt.BatchNorm2d(4), nn.ReLU(),
                      nn.Conv2d(4, 4, 1), bt.BatchNorm2d(4),
                      bt.BatchNorm2d(4), nn.ReLU(),
                      nn.ConvTranspose2d(4, 3, 2), bt.BatchNorm2d(3),
                      nn.Flatten(), nn.Linear(3 * 5 * 5, 6), bt.BatchNorm1d(6)).to(dtype)
    x = torch.randn(8, 3, 6, 6, dtype=dtype)
    m(x)  # running statistics that are not the initial ones
    m.eval()
    expected = m(x)
    fused = torch.ao.quantization.fuse_modules(
        m, [["0", "1", "2"], ["3", "4"], ["5", "6"], ["7", "8"], ["10", "11"]])
    kinds = [type(c).__name__ for c in fused.children()]
    assert kinds[:3] == ["ConvReLU2d", "Identity", "Identity"] and kinds[3] == "Conv2d"
    assert kinds[7] == "ConvTranspose2d" and kinds[10] == "Linear" and kinds[11] == "Identity"
    assert close(fused(x), expected, 1e-4 if dtype == torch.float32 else 1e-10)


def test_fuse_conv_bn_eval():
    torch.manual_seed(3)
    conv, bn = nn.Conv3d(2, 3, 2), bt.BatchNorm3d(3)
    x = torch.randn(4, 2, 5, 5, 5)
    bn(conv(x))
    conv.eval()
    bn.eval()
    fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
    assert close(fused(x), bn(conv(x)), 1e-4)


# ------------------------------------------------------------------------------------------------
# Lazy modules, pickling

@pytest.mark.parametrize("dim,shape", [(1, (4, 3)), (1, (4, 3, 5)), (2, (4, 3, 5, 5)),
                                       (3, (4, 3, 2, 3, 2))])
def test_lazy_modules_become_bnorm_modules(dim, shape, torch_kernels_raise):
    ours = getattr(bt, "LazyBatchNorm%dd" % dim)(momentum=0.2)
    assert isinstance(ours, getattr(nn, "LazyBatchNorm%dd" % dim))
    x = torch.randn(shape)
    y = ours(x)
    assert type(ours) is getattr(bt, "BatchNorm%dd" % dim)
    assert ours.num_features == 3 and ours.weight.shape == (3,) and y.shape == shape
    assert ours.num_batches_tracked.item() == 1


def test_lazy_modules_match_torch():
    for dim, shape in ((1, (4, 3)), (2, (4, 3, 5, 5)), (3, (4, 3, 2, 3, 2))):
        x = torch.randn(shape)
        ours = getattr(bt, "LazyBatchNorm%dd" % dim)(momentum=0.2)
        ref = getattr(nn, "LazyBatchNorm%dd" % dim)(momentum=0.2)
        assert close(ours(x), ref(x))
        for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
            assert close(a.double(), b.double()), name
    assert bt.convert(nn.LazyBatchNorm2d()).__class__ is bt.LazyBatchNorm2d


def test_pickled_models_load_as_bnorm():
    m = model()
    m(torch.randn(2, 3, 5, 5))
    clone = pickle.loads(pickle.dumps(m))
    assert type(clone[1]) is bt.BatchNorm2d
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf)
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(loaded.eval()(x), m.eval()(x))


# ------------------------------------------------------------------------------------------------
# torch.nn.functional.batch_norm = bnorm.torch.batch_norm

def test_patched_functional_serves_torch_modules(monkeypatch):
    monkeypatch.setattr(F, "batch_norm", bt.batch_norm)
    x = torch.randn(4, 3, 5, requires_grad=True)
    y = nn.BatchNorm1d(3)(x)  # torch's module, now calling bnorm
    assert computed_by_c(y)
    # the hand-overs reach torch's own function, not the patched name (no recursion)
    bf = nn.BatchNorm1d(3).bfloat16()
    assert bf(x.detach().bfloat16()).dtype == torch.bfloat16
    empty = torch.randn(0, 3, 5, requires_grad=True)
    assert bt.BatchNorm1d(3)(empty).shape == (0, 3, 5)
    with pytest.raises(RuntimeError, match="running_mean should contain 3 elements not 4"):
        F.batch_norm(x, torch.zeros(4), torch.ones(3))


# ------------------------------------------------------------------------------------------------
# It is bnorm that runs: every path above, with torch's batch norm raising

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_path_runs_bnorm(dtype, torch_kernels_raise):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 3, 4, 4, dtype=dtype, generator=gen).requires_grad_()
    for cls in (bt.BatchNorm2d, bt.LazyBatchNorm2d, bt.SyncBatchNorm):
        m = cls(3) if cls is not bt.LazyBatchNorm2d else cls()
        m = m.to(dtype)
        for training in (True, False):
            m.train(training)
            m(x).square().sum().backward()
            m(x.contiguous(memory_format=torch.channels_last)).sum().backward()
    w = torch.rand(3, dtype=dtype, requires_grad=True)
    rm, rv = torch.zeros(3, dtype=dtype), torch.ones(3, dtype=dtype)
    # functional: odd momentum, non-contiguous running statistics, an empty input
    bt.batch_norm(x, rm, rv, w, None, True, 1.5, 1e-5).sum().backward()
    store = torch.zeros(6, dtype=dtype)
    bt.batch_norm(x, store[::2], store[1::2] + 1, w, None, True, 0.1, 1e-5)
    bt.batch_norm(torch.zeros(0, 3, 2, dtype=dtype, requires_grad=True), rm, rv, w,
                  training=True).sum().backward()
    # double backward
    y = bt.batch_norm(x, None, None, w, None, True)
    (g,) = torch.autograd.grad(y.tanh().sum(), x, create_graph=True)
    g.square().sum().backward()
    # vmap over the backward, forward-mode AD, functorch
    small = x.detach()[:2, :, :2, :2].double()
    jacobian(lambda t: bt.batch_norm(t, None, None, training=True), small, vectorize=True)
    with forward_ad.dual_level():
        bt.batch_norm(forward_ad.make_dual(small, torch.ones_like(small)), None, None,
                      training=True)
    functorch.vmap(lambda t: bt.batch_norm(t, None, None, training=True))(small[None])
    functorch.grad(lambda t: bt.batch_norm(t, None, None, training=True).tanh().sum())(small)
    # the patched functional
    bn = nn.BatchNorm2d(3).to(dtype)
    F.batch_norm, saved = bt.batch_norm, F.batch_norm
    try:
        bn(x).sum().backward()
    finally:
        F.batch_norm = saved


def test_hand_over_only_for_what_bnorm_does_not_compute(torch_kernels_raise):
    """bfloat16 and float16 are bnorm's (test_torch_half.py); a dtype bnorm does not compute,
    such as an integer one, reaches the guard (torch's own error would follow)."""
    for dtype in (torch.bfloat16, torch.float16):
        assert bt.BatchNorm1d(3).to(dtype)(torch.randn(4, 3).to(dtype)).dtype == dtype
    with pytest.raises(TorchBatchNormRan):
        bt.batch_norm(torch.ones(4, 3, dtype=torch.int32), None, None, training=True)


def test_negative_views_are_read_as_their_values():
    """A tensor with the neg bit (torch._neg_view) holds the negations in memory: bnorm reads
    its values, for the input and for every per-channel tensor."""
    gen = torch.Generator().manual_seed(5)
    x, w = torch.randn(4, 3, 5, generator=gen), torch.rand(3, generator=gen) + 0.5
    rm, rv = torch.randn(3, generator=gen), torch.rand(3, generator=gen) + 0.5
    for training in (True, False):
        y = bt.batch_norm(torch._neg_view(x), torch._neg_view(rm.clone()), rv.clone(),
                          torch._neg_view(w), None, training)
        assert close(y, F.batch_norm(-x, -rm, rv.clone(), -w, None, training))


def test_fake_tensors_are_left_to_torch():
    """Under FakeTensorMode there is no memory to read: torch's batch norm gives the shapes."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.randn(4, 3, 5)).contiguous()
        y = bt.batch_norm(x, None, None, training=True)
        assert y.shape == (4, 3, 5) and type(y).__name__ == "FakeTensor"
