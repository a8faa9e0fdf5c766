"""bnorm.torch's autograd at every order, against torch's own batch norm.

  - first order: the C library's backward (gradcheck, including vmap's batched gradients);
  - double backward (create_graph=True): gradgradcheck, a WGAN-GP gradient penalty through a
    conv-BN model, Hessians, all equal to torch's to float64 rounding;
  - vmap over the backward: jacobian(vectorize=True) and gradcheck(check_batched_grad=True);
  - forward-mode AD: the jvp of dual tensors, gradcheck(check_forward_ad=True);
  - functorch: vmap and grad of a function calling bnorm, equal to the same with torch's;
  - never silently wrong: what is not supported raises.
Every case runs float64 through bnorm and through torch.nn.functional.batch_norm.
"""

import functorch
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import forward_ad
from torch.autograd.functional import hessian, jacobian

import bnorm.torch as bt
from c_path import computed_by_c, use_ctypes_path

SHAPES = [((5, 3), False), ((3, 2, 4), False), ((2, 3, 3, 2), True), ((2, 2, 2, 3, 2), True)]


def close(a, b, tol=1e-10):
    """|a - b| <= tol * max(1, |b|) elementwise (None matches None)."""
    if b is None:
        return a is None
    return bool(((a - b).abs() <= tol * b.abs().clamp(min=1)).all())


def case(shape, cl, seed=3):
    """(x, weight, bias, running_mean, running_var) in float64, x with offsets per channel."""
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    view = (1, c) + (1,) * (len(shape) - 2)
    x = torch.randn(shape, dtype=torch.float64, generator=gen) * 1.5
    x = x + torch.linspace(-2, 2, c, dtype=torch.float64).view(view)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last if len(shape) == 4
                         else torch.channels_last_3d)
    w = torch.empty(c, dtype=torch.float64).uniform_(0.5, 1.5, generator=gen)
    b = torch.empty(c, dtype=torch.float64).uniform_(-1, 1, generator=gen)
    rm = torch.empty(c, dtype=torch.float64).uniform_(-1, 1, generator=gen)
    rv = torch.empty(c, dtype=torch.float64).uniform_(0.5, 2, generator=gen)
    return x, w, b, rm, rv


def functions(training, rm, rv):
    """(bnorm's, torch's) f(x, w, b); training without running statistics, so that repeated
    calls see one function."""
    def make(bn):
        if training:
            return lambda x, w, b: bn(x, None, None, w, b, True, 0.1, 1e-5)
        return lambda x, w, b: bn(x, rm, rv, w, b, False, 0.1, 1e-5)
    return make(bt.batch_norm), make(F.batch_norm)


# ------------------------------------------------------------------------------------------------
# Double backward

@pytest.mark.parametrize("shape,cl", SHAPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_gradgradcheck(shape, cl, training, affine):
    x, w, b, rm, rv = case(shape, cl)
    ours, _ = functions(training, rm, rv)
    if affine:
        inputs = tuple(t.requires_grad_() for t in (x, w, b))
        assert torch.autograd.gradgradcheck(ours, inputs, check_batched_grad=True)
    else:
        x.requires_grad_()
        assert torch.autograd.gradgradcheck(lambda x: ours(x, None, None), (x,),
                                            check_batched_grad=True)


@pytest.mark.parametrize("shape,cl", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_second_order_equals_torch(shape, cl, training):
    """The gradient of a function of the first gradients (dx, dweight, dbias) with respect to
    x, weight, bias and the upstream gradient, against torch's native double backward."""
    x, w, b, rm, rv = case(shape, cl)
    gen = torch.Generator().manual_seed(5)
    dy = torch.randn(x.shape, dtype=torch.float64, generator=gen).requires_grad_()
    probe = [torch.randn(t.shape, dtype=torch.float64, generator=gen) for t in (x, w, b)]
    results = []
    for f in functions(training, rm, rv):
        inputs = [t.detach().clone().requires_grad_() for t in (x, w, b)]
        y = f(*inputs)
        firsts = torch.autograd.grad(y, inputs, dy, create_graph=True)
        loss = sum((g * p).sum() for g, p in zip(firsts, probe))
        # bias: none of the first gradients depends on it (None on both sides)
        results.append(torch.autograd.grad(loss, inputs + [dy], allow_unused=True))
    for name, a, r in zip(("x", "weight", "bias", "dy"), *results):
        assert (a is None) == (r is None), name
        assert r is None or close(a, r), (name, (a - r).abs().max().item())


def wgan_gp(bn_cls, dtype):
    """A gradient penalty through conv -> BN -> tanh: the gradients of the parameters."""
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, 3).to(dtype)
    bn = bn_cls(4).to(dtype)
    head = torch.randn(4 * 6 * 6, dtype=dtype)
    x = torch.randn(6, 3, 8, 8, dtype=dtype, requires_grad=True)
    out = (torch.tanh(bn(conv(x))).flatten(1) @ head).sum()
    (g,) = torch.autograd.grad(out, x, create_graph=True)
    penalty = (g.flatten(1).norm(dim=1) - 1).square().mean()
    penalty.backward()
    return conv.weight.grad, conv.bias.grad, bn.weight.grad, bn.bias.grad


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_gradient_penalty_equals_torch(dtype, tol):
    ours, ref = wgan_gp(bt.BatchNorm2d, dtype), wgan_gp(nn.BatchNorm2d, dtype)
    for name, a, r in zip(("conv.weight", "conv.bias", "bn.weight", "bn.bias"), ours, ref):
        assert a is not None, name  # torch's issue: bn.weight.grad was None
        assert close(a, r, tol), (name, (a - r).abs().max().item())


@pytest.mark.parametrize("training", [True, False])
def test_hessian_equals_torch(training):
    x, w, b, rm, rv = case((4, 2, 3), False)
    probe = torch.randn(x.shape, dtype=torch.float64)
    ours, ref = functions(training, rm, rv)
    h_ours = hessian(lambda x: (ours(x, w, b).tanh() * probe).sum(), x)
    h_ref = hessian(lambda x: (ref(x, w, b).tanh() * probe).sum(), x)
    assert close(h_ours, h_ref)


def test_plain_backward_runs_the_c_library(monkeypatch):
    """Without create_graph the backward is the C library's; with it, the formula's (which the
    C library's results agree with). Through ctypes, where the calls can be watched."""
    use_ctypes_path(monkeypatch)
    calls = []
    real = bt._lib.lib.bn_backward_train

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(bt._lib.lib, "bn_backward_train", spy)
    x, w, b, _, _ = case((4, 3, 5), False)
    x.requires_grad_()
    y = bt.batch_norm(x, None, None, w, b, True)
    assert computed_by_c(y)
    dy = torch.randn(x.shape, dtype=torch.float64)
    (plain,) = torch.autograd.grad(y, x, dy, retain_graph=True)
    assert calls == [1]
    (recorded,) = torch.autograd.grad(y, x, dy, create_graph=True)
    assert calls == [1] and recorded.requires_grad
    assert close(recorded, plain, 1e-12)


# ------------------------------------------------------------------------------------------------
# vmap over the backward

@pytest.mark.parametrize("shape,cl", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_batched_and_forward_ad(shape, cl, training):
    x, w, b, rm, rv = case(shape, cl)
    ours, _ = functions(training, rm, rv)
    inputs = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(ours, inputs, check_batched_grad=True,
                                    check_forward_ad=True, check_backward_ad=True)


@pytest.mark.parametrize("training", [True, False])
def test_vectorized_jacobian_equals_torch(training):
    x, w, b, rm, rv = case((3, 2, 2), False)
    ours, ref = functions(training, rm, rv)
    for vectorize in (True, False):
        j_ours = jacobian(ours, (x, w, b), vectorize=vectorize)
        j_ref = jacobian(ref, (x, w, b), vectorize=vectorize)
        for a, r in zip(j_ours, j_ref):
            assert close(a, r)


# ------------------------------------------------------------------------------------------------
# Forward-mode AD

@pytest.mark.parametrize("shape,cl", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_jvp_equals_torch(shape, cl, training):
    x, w, b, rm, rv = case(shape, cl)
    gen = torch.Generator().manual_seed(8)
    tangents = [torch.randn(t.shape, dtype=torch.float64, generator=gen) for t in (x, w, b)]
    outs = []
    for f in functions(training, rm, rv):
        with forward_ad.dual_level():
            duals = [forward_ad.make_dual(t, dt) for t, dt in zip((x, w, b), tangents)]
            y = f(*duals)
            outs.append(forward_ad.unpack_dual(y))
    (y_ours, t_ours), (y_ref, t_ref) = outs
    assert close(y_ours, y_ref) and close(t_ours, t_ref)


def test_jvp_of_x_alone_and_through_the_module():
    x, _, _, _, _ = case((6, 3, 4), False)
    tangent = torch.randn(x.shape, dtype=torch.float64)
    ours, ref = bt.BatchNorm1d(3).double(), nn.BatchNorm1d(3).double()
    outs = []
    for m in (ours, ref):
        with forward_ad.dual_level():
            outs.append(forward_ad.unpack_dual(m(forward_ad.make_dual(x, tangent))).tangent)
    assert close(outs[0], outs[1])
    assert close(ours.running_mean, ref.running_mean)


@pytest.mark.parametrize("dual", [(0,), (1,), (1, 2), (0, 1), (0, 2), (0, 1, 2), (3, 1)])
@pytest.mark.parametrize("momentum", [0.1, -1.2])  # -1.2: bnorm's formula path
def test_jvp_with_tangents_on_running_statistics_like_torch(dual, momentum):
    """torch's error when a running statistic carries a tangent and input or weight does too;
    a tangent on a running statistic alone is ignored, as torch ignores it."""
    gen = torch.Generator().manual_seed(6)
    args = [torch.randn(3, 2, 5, generator=gen, dtype=torch.float64),
            torch.randn(2, generator=gen, dtype=torch.float64),
            torch.rand(2, generator=gen, dtype=torch.float64) + 0.5,
            torch.rand(2, generator=gen, dtype=torch.float64) + 0.5]
    tangents = [torch.rand_like(a) for a in args]
    results = []
    for bn in (bt.batch_norm, F.batch_norm):
        with forward_ad.dual_level():
            duals = [forward_ad.make_dual(a, t) if i in dual else a
                     for i, (a, t) in enumerate(zip(args, tangents))]
            call = lambda: bn(duals[0], duals[1], duals[2], duals[3], None, False,  # noqa
                              momentum, 1e-5)
            if (1 in dual or 2 in dual) and (0 in dual or 3 in dual):
                with pytest.raises(RuntimeError, match="not differentiable wrt running_mean"):
                    call()
                continue
            results.append(forward_ad.unpack_dual(call()))
    if results:
        (y, t), (y_ref, t_ref) = results
        assert close(y, y_ref)
        assert (t is None or not t.any()) if t_ref is None else close(t, t_ref)


# ------------------------------------------------------------------------------------------------
# functorch

@pytest.mark.parametrize("training", [True, False])
def test_functorch_vmap_and_grad_equal_torch(training):
    x, w, b, rm, rv = case((5, 4, 3, 3), False)
    xs = torch.stack([x, 2 * x + 1, x.flip(0)])
    ours, ref = functions(training, rm, rv)
    assert close(functorch.vmap(lambda x: ours(x, w, b))(xs),
                 functorch.vmap(lambda x: ref(x, w, b))(xs))
    loss = lambda f: lambda x, w: (f(x, w, b).tanh() * x).sum()  # noqa: E731
    g_ours = functorch.grad(loss(ours), argnums=(0, 1))(x, w)
    g_ref = functorch.grad(loss(ref), argnums=(0, 1))(x, w)
    for a, r in zip(g_ours, g_ref):
        assert close(a, r)


def test_functorch_vmap_with_running_statistics_raises_like_torch():
    """vmap of a training step that updates shared running statistics in place cannot work; the
    error is torch's (the in-place update of an unbatched tensor), not a wrong result."""
    xs = torch.randn(3, 5, 4, dtype=torch.float64)
    for bn in (bt.batch_norm, F.batch_norm):
        rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
        with pytest.raises(RuntimeError):
            functorch.vmap(lambda x: bn(x, rm, rv, training=True))(xs)


@pytest.mark.parametrize("momentum", [0.1, -1.2])  # -1.2: bnorm's formula path
def test_running_statistics_take_no_tangent(momentum):
    """A training call under forward AD blends the batch statistics' values, not their
    tangents, into the running statistics (as torch does), so the next call still works."""
    x, _, _, _, _ = case((4, 3, 2), False)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(x, torch.ones_like(x))
        for _ in range(2):
            bt.batch_norm(dual, rm, rv, None, None, True, momentum, 1e-5)
            assert forward_ad.unpack_dual(rm).tangent is None
            assert forward_ad.unpack_dual(rv).tangent is None
