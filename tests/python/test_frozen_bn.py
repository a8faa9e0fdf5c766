"""bnorm.torch.FrozenBatchNorm2d against torchvision.ops.FrozenBatchNorm2d: the same buffers,
state_dict keys and repr, BatchNorm2d checkpoints loading into it, outputs and input gradients
equal to torchvision's to float32 rounding (float64: 1e-12), no parameters and no gradients for
the buffers, bnorm's kernels underneath (also under torch.jit.script and torch.fx), and
bnorm.torch.convert swapping torchvision's for it."""

import pytest
import torch
import torchvision

import bnorm.torch as bt
from c_path import computed_by_c

TOL = {torch.float32: 2e-6, torch.float64: 1e-12}


def close(a, b, tol):
    return bool(((a - b).abs() <= tol * b.abs().clamp(min=1)).all())


def pair(c=5, eps=1e-5, dtype=torch.float32, seed=0):
    """(bnorm's, torchvision's) with the same random statistics and affine values."""
    gen = torch.Generator().manual_seed(seed)
    ours, ref = bt.FrozenBatchNorm2d(c, eps), torchvision.ops.FrozenBatchNorm2d(c, eps)
    state = {"weight": torch.rand(c, generator=gen) + 0.5,
             "bias": torch.randn(c, generator=gen),
             "running_mean": torch.randn(c, generator=gen) * 3,
             "running_var": torch.rand(c, generator=gen) * 4 + 0.1}
    for m in (ours, ref):
        m.load_state_dict(state)
        m.to(dtype)
    return ours, ref


def test_buffers_state_dict_and_repr_are_torchvisions():
    ours, ref = bt.FrozenBatchNorm2d(7, eps=1e-3), torchvision.ops.FrozenBatchNorm2d(7, eps=1e-3)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in ref.named_buffers()]
    assert list(ours.parameters()) == [] and repr(ours) == repr(ref)
    for a, b in zip(ours.buffers(), ref.buffers()):
        assert torch.equal(a, b)


def test_a_batchnorm_checkpoint_loads():
    bn = torch.nn.BatchNorm2d(4)
    bn(torch.randn(8, 4, 3, 3))
    frozen = bt.FrozenBatchNorm2d(4)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked dropped, as torchvision does
    assert torch.equal(frozen.running_mean, bn.running_mean)
    x = torch.randn(2, 4, 3, 3)
    assert close(frozen(x), bn.eval()(x), 2e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_and_input_gradient_equal_torchvision(dtype, channels_last):
    ours, ref = pair(dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(3, 5, 4, 6, generator=gen, dtype=dtype) * 2 + 1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn(x.shape, generator=gen, dtype=dtype)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    ys = [m(t) for m, t in zip((ours, ref), xs)]
    assert computed_by_c(ys[0])
    assert close(ys[0], ys[1], TOL[dtype])
    for y in ys:
        y.backward(dy)
    assert close(xs[0].grad, xs[1].grad, TOL[dtype])
    assert all(b.grad is None for b in ours.buffers())


def test_under_jit_script_and_fx():
    ours, ref = pair()
    x = torch.randn(2, 5, 3, 3)
    scripted = torch.jit.script(ours)
    assert "bnorm::batch_norm" in [n.kind() for n in scripted.inlined_graph.nodes()]
    assert close(scripted(x), ref(x), 2e-6)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 1), ours)
    traced = torch.fx.symbolic_trace(model)
    xx = torch.randn(2, 3, 4, 4)
    assert torch.equal(traced(xx), model(xx))


def test_convert_swaps_torchvisions():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 1), torchvision.ops.FrozenBatchNorm2d(5))
    x = torch.randn(2, 3, 4, 4)
    expected = model(x)
    buffers = list(model[1].buffers())
    bt.convert(model)
    assert type(model[1]) is bt.FrozenBatchNorm2d
    assert all(a is b for a, b in zip(model[1].buffers(), buffers))
    assert close(model(x), expected, 2e-6)


def test_wrong_channels_is_torchs_error():
    with pytest.raises(RuntimeError, match="running_mean should contain 5 elements not 4"):
        bt.FrozenBatchNorm2d(4)(torch.randn(2, 5, 3, 3))
