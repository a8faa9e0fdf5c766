"""bnorm.torch.BatchNormAct2d and batch_norm_relu: relu(bn(x) + residual) in one pass.

  - float32 and float64: the bits of bnorm's BatchNorm2d followed by `+ residual` and torch.relu,
    forward and backward (x, weight, bias and the residual's gradients), train and eval, both
    memory formats; and within float64's rounding of torch.nn's own BatchNorm2d composition;
  - bfloat16: within one rounding of the float64 composition on the same values;
  - gradcheck and gradgradcheck (the backward of the backward through the formula path);
  - torch.jit.trace / script (saved and loaded), torch.fx, and convert(fuse=True) on a
    conv-BN-ReLU Sequential, whose state_dict keys do not change; torch's batch norm raising;
  - errors: an activation other than relu, a residual of another shape (torch's error).
Run: BNORM_LIBRARY=$PWD/build/libbnorm.so PYTHONPATH=python /usr/bin/python3 -m pytest tests/python
"""

import io

import pytest
import torch
import torch.nn as nn

import bnorm.torch as bt
from test_torch_tools import TorchBatchNormRan, torch_kernels_raise  # noqa: F401 (a fixture)


def pair(c, dtype):
    ours, plain = bt.BatchNormAct2d(c).to(dtype), bt.BatchNorm2d(c).to(dtype)
    gen = torch.Generator().manual_seed(c)
    with torch.no_grad():
        ours.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        ours.bias.copy_(torch.randn(c, generator=gen))
    plain.load_state_dict(ours.state_dict())
    return ours, plain


def inputs(shape, dtype, fmt, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=gen, dtype=torch.float64) + 0.3).to(dtype)
    z = torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)
    return x.contiguous(memory_format=fmt), z.contiguous(memory_format=fmt)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("shape", [(4, 5, 6, 6), (8, 20, 3, 3), (2, 3, 40, 31)])
def test_the_bits_of_batch_norm_then_relu(dtype, fmt, residual, shape):
    ours, plain = pair(shape[1], dtype)
    x, z = inputs(shape, dtype, fmt, 1)
    g = torch.randn(shape, dtype=dtype)
    for training in (True, False):
        ours.train(training), plain.train(training)
        xo, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
        zo, zp = z.clone().requires_grad_(), z.clone().requires_grad_()
        yo = ours(xo, zo if residual else None)
        yp = torch.relu(plain(xp) + zp) if residual else torch.relu(plain(xp))
        assert type(yo.grad_fn).__name__ == "_BatchNormReluFunctionBackward"
        assert torch.equal(yo, yp) and yo.stride() == yp.stride()
        assert torch.equal(ours.running_mean, plain.running_mean)
        assert torch.equal(ours.running_var, plain.running_var)
        assert torch.equal(ours.num_batches_tracked, plain.num_batches_tracked)
        yo.backward(g), yp.backward(g)
        assert torch.equal(xo.grad, xp.grad)
        assert torch.equal(ours.weight.grad, plain.weight.grad)
        assert torch.equal(ours.bias.grad, plain.bias.grad)
        if residual:
            assert torch.equal(zo.grad, zp.grad)
        ours.zero_grad(), plain.zero_grad()


@pytest.mark.parametrize("residual", [False, True])
def test_matches_torch_nn_in_float64(residual):
    ours = bt.BatchNormAct2d(6).double()
    ref = nn.BatchNorm2d(6).double()
    ref.load_state_dict(ours.state_dict())
    x, z = inputs((5, 6, 7, 7), torch.float64, torch.contiguous_format, 2)
    for training in (True, False):
        ours.train(training), ref.train(training)
        yo = ours(x, z if residual else None)
        yr = torch.relu(ref(x) + z) if residual else torch.relu(ref(x))
        assert torch.allclose(yo, yr, rtol=1e-12, atol=1e-12)
        assert torch.allclose(ours.running_var, ref.running_var, rtol=1e-12)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_bfloat16_within_one_rounding(residual, fmt):
    ours = bt.BatchNormAct2d(6).to(torch.bfloat16)
    exact = nn.BatchNorm2d(6).double()
    exact.load_state_dict({k: v.double() if v.is_floating_point() else v
                           for k, v in ours.state_dict().items()})
    x, z = inputs((5, 6, 7, 7), torch.bfloat16, fmt, 3)
    for training in (True, False):
        ours.train(training), exact.train(training)
        yo = ours(x, z if residual else None)
        ye = exact(x.double())
        ye = torch.relu(ye + z.double()) if residual else torch.relu(ye)
        e = torch.frexp(ye.abs().clamp(min=1))[1]
        half_ulp = torch.ldexp(torch.ones_like(ye), e - 9)
        assert ((yo.double() - ye).abs() <= half_ulp + 4e-6 * ye.abs().clamp(min=1)).all()
        # eval goes on from the running statistics as ours rounded them
        exact.load_state_dict({k: v.double() if v.is_floating_point() else v
                               for k, v in ours.state_dict().items()})


def test_gradcheck_and_gradgradcheck():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=gen).requires_grad_()
    z = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=gen).requires_grad_()
    w = (torch.rand(2, dtype=torch.float64, generator=gen) + 0.5).requires_grad_()
    b = torch.randn(2, dtype=torch.float64, generator=gen).requires_grad_()
    rm, rv = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    for training in (True, False):
        fn = lambda x, w, b, z: bt.batch_norm_relu(x, rm, rv, w, b, training, 0.0, 1e-5, z)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, w, b, z))
        assert torch.autograd.gradgradcheck(fn, (x, w, b, z))


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1),
                         nn.BatchNorm2d(4), nn.ReLU(inplace=True))


def test_convert_fuse_replaces_bn_relu_pairs():
    torch_model = model()
    keys = list(torch_model.state_dict())
    plain, fused = bt.convert(model()), bt.convert(model(), fuse=True)
    assert [type(m) for m in fused] == [nn.Conv2d, bt.BatchNormAct2d, nn.Identity, nn.Conv2d,
                                        bt.BatchNormAct2d, nn.Identity]
    assert list(fused.state_dict()) == keys
    x = torch.randn(2, 3, 9, 9)
    for training in (True, False):
        plain.train(training), fused.train(training)
        assert torch.equal(fused(x), plain(x))
    # a ReLU that follows something else, or a BatchNorm without a ReLU, is left alone
    other = bt.convert(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1), nn.ReLU()), fuse=True)
    assert [type(m) for m in other] == [bt.BatchNorm2d, nn.Conv2d, nn.ReLU]


class Block(nn.Module):
    """A residual block's end: relu(bn(conv(x)) + x)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = bt.BatchNormAct2d(4)

    def forward(self, x):
        return self.bn(self.conv(x), x)


def test_jit_and_fx_run_bnorm(torch_kernels_raise):  # noqa: F811
    torch.manual_seed(1)
    block = Block()
    x = torch.randn(2, 4, 6, 6)
    eager = block(x)
    traced = torch.jit.trace(block, x, check_trace=False)
    scripted = torch.jit.script(block)
    graph = torch.fx.symbolic_trace(block)
    assert any(n.op == "call_module" and n.target == "bn" for n in graph.graph.nodes)
    for run in (traced, scripted, graph):
        block.bn.running_mean.zero_(), block.bn.running_var.fill_(1)
        block.bn.num_batches_tracked.zero_()
        assert torch.equal(run(x), eager)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    block.eval(), loaded.eval()
    assert torch.equal(loaded(x), block(x))
    # the gradients run bnorm too
    xg = x.clone().requires_grad_()
    block.train()
    block(xg).square().sum().backward()
    (gx,) = torch.autograd.grad(block(xg).tanh().sum(), xg, create_graph=True)
    gx.square().sum().backward()


def test_errors_are_torchs():
    with pytest.raises(ValueError, match="act must be 'relu'"):
        bt.BatchNormAct2d(3, act="gelu")
    m, ref = bt.BatchNormAct2d(3), nn.BatchNorm2d(3)
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError) as theirs:
        torch.relu(ref(x) + torch.randn(2, 3, 5, 4))
    with pytest.raises(RuntimeError) as mine:
        m(x, torch.randn(2, 3, 5, 4))
    assert str(mine.value) == str(theirs.value)
    with pytest.raises(ValueError, match="expected 4D input"):
        m(torch.randn(2, 3, 4))
    # a residual that broadcasts is the composition's, as torch computes it
    small = torch.randn(1, 3, 1, 1)
    m.eval(), ref.eval()
    assert torch.allclose(m(x, small), torch.relu(ref(x) + small), atol=1e-6)
