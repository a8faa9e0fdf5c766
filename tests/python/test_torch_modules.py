"""bnorm.torch against live torch.nn: modules, functional form, autograd, state_dict, errors.

Each case runs the same data through torch.nn.BatchNormXd and bnorm.torch.BatchNormXd side by
side: outputs, running statistics, num_batches_tracked, input/weight/bias gradients (from a
random upstream gradient) and output strides must agree; float32 within 2e-5 and float64 within
1e-10 of torch, relative to max(1, |torch|).

The torch side always computes in float64, on the very same values (float32 data, parameters and
gradients converted exactly). torch's own float32 CPU kernel is not a usable reference: with few
values per channel its backward loses every digit (dx = (dy - mean(dy) - xhat*mean(dy*xhat))
cancels; for m = 2 the exact result is proportional to eps / (var + eps)), and there it is off by
up to 100% while bnorm stays within 1e-7 of the float64 result.
Run: BNORM_LIBRARY=$PWD/build/libbnorm.so PYTHONPATH=python python3 -m pytest tests/python
"""

import itertools
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import bnorm.torch as bt
from c_path import computed_by_c, use_ctypes_path

TOL = {torch.float32: 2e-5, torch.float64: 1e-10}


def assert_close(actual, ref, what=""):
    """|actual - ref| <= tol * max(1, |ref|) elementwise; None matches None.

    tol is by actual's dtype (ref may be the float64 twin of a float32 computation).
    """
    if ref is None:
        assert actual is None, what
        return
    assert actual is not None, what
    assert actual.shape == ref.shape, (what, actual.shape, ref.shape)
    if ref.numel() == 0:
        return
    a, r = actual.detach().double(), ref.detach().double()
    err = (a - r).abs()
    bound = TOL[actual.dtype] * r.abs().clamp(min=1.0)
    worst = int((err - bound).flatten().argmax())
    assert bool((err <= bound).all()), "%s: max error %g (actual %r, reference %r)" % (
        what, err.flatten()[worst].item(), a.flatten()[worst].item(), r.flatten()[worst].item())


def random_input(gen, shape, dtype, channels_last):
    """Data with a different offset and scale per channel, in the asked memory format."""
    c = shape[1]
    view = (1, c) + (1,) * (len(shape) - 2)
    offset = torch.empty(c, dtype=torch.float64).uniform_(-3, 3, generator=gen).view(view)
    scale = torch.empty(c, dtype=torch.float64).uniform_(0.5, 2, generator=gen).view(view)
    x = (torch.randn(shape, dtype=torch.float64, generator=gen) * scale + offset).to(dtype)
    if channels_last:
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        x = x.contiguous(memory_format=fmt)
    return x


def module_pair(dim, c, dtype, affine, track, momentum, gen):
    """(torch.nn module in float64, bnorm module in dtype): same arguments, same random affine
    parameters."""
    kwargs = dict(momentum=momentum, affine=affine, track_running_stats=track)
    ours = getattr(bt, "BatchNorm%dd" % dim)(c, dtype=dtype, **kwargs)
    ref = getattr(nn, "BatchNorm%dd" % dim)(c, dtype=torch.float64, **kwargs)
    if affine:
        with torch.no_grad():
            ours.weight.copy_(torch.empty(c).uniform_(0.5, 1.5, generator=gen))
            ours.bias.copy_(torch.empty(c).uniform_(-1, 1, generator=gen))
    ref.load_state_dict(ours.state_dict())  # exact: float32 -> float64
    return ref, ours


# ------------------------------------------------------------------------------------------------
# The randomized grid

SHAPES = {
    1: [(5, 3), (2, 1), (0, 4), (3, 2, 7), (1, 3, 5), (4, 1, 1), (13, 5)],
    2: [(4, 3, 5, 6), (1, 2, 3, 1), (3, 1, 2, 2), (0, 2, 3, 3), (2, 5, 7, 3), (2, 3, 1, 1)],
    3: [(2, 3, 2, 3, 5), (1, 2, 1, 1, 2), (3, 1, 2, 5, 1), (0, 2, 2, 2, 2)],
}


def grid():
    for dim, shapes in SHAPES.items():
        for shape, dtype, cl, affine, track, momentum in itertools.product(
                shapes, [torch.float32, torch.float64], [False, True], [True, False],
                [True, False], [0.1, 0.3, None]):
            if cl and len(shape) < 4:
                continue
            yield dim, shape, dtype, cl, affine, track, momentum


CASES = list(grid())


def step_shapes(shape):
    """Training steps: the case's shape three times; an N = 0 case runs between two real
    batches (so the empty one lands between stats updates)."""
    if shape[0] == 0:
        return [(3,) + shape[1:], shape, (2,) + shape[1:]]
    return [shape] * 3


def run_step(ref, ours, shape, dtype, cl, gen, what):
    x = random_input(gen, shape, dtype, cl).requires_grad_()
    xr = x.detach().double().requires_grad_()  # .double() keeps the memory format
    y, yr = ours(x), ref(xr)
    assert y.dtype == dtype
    assert_close(y, yr, what + " output")
    if yr.numel() > 0:
        assert y.stride() == yr.stride(), (what, y.stride(), yr.stride())
        assert computed_by_c(y), "the C library was not used"
    g = torch.randn(yr.shape, dtype=torch.float64, generator=gen).to(dtype)
    y.backward(g)
    yr.backward(g.double())
    assert x.grad.dtype == dtype
    assert_close(x.grad, xr.grad, what + " grad input")
    for name in ("weight", "bias"):
        p, pr = getattr(ours, name), getattr(ref, name)
        if pr is not None:
            assert_close(p.grad, pr.grad, what + " grad " + name)
            p.grad = pr.grad = None
    for name in ("running_mean", "running_var"):
        assert_close(getattr(ours, name), getattr(ref, name), what + " " + name)
    if ref.num_batches_tracked is None:
        assert ours.num_batches_tracked is None
    else:
        assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item()
        assert ours.num_batches_tracked.dtype == torch.long


@pytest.mark.parametrize("path", ["native", "ctypes"])
@pytest.mark.parametrize("dim,shape,dtype,cl,affine,track,momentum", CASES)
def test_module_matches_torch(dim, shape, dtype, cl, affine, track, momentum, path, monkeypatch):
    if path == "ctypes":
        use_ctypes_path(monkeypatch)
    index = CASES.index((dim, shape, dtype, cl, affine, track, momentum))
    gen = torch.Generator().manual_seed(index)
    ref, ours = module_pair(dim, shape[1], dtype, affine, track, momentum, gen)
    for step, s in enumerate(step_shapes(shape)):
        if s[0] * torch.Size(s[2:]).numel() == 1:
            continue  # one value per channel: an error in training, tested below
        run_step(ref, ours, s, dtype, cl, gen, "train step %d" % step)
    ref.eval()
    ours.eval()
    run_step(ref, ours, shape, dtype, cl, gen, "eval")


# ------------------------------------------------------------------------------------------------
# Modules: state, errors, formats

@pytest.mark.parametrize("affine,track", itertools.product([True, False], [True, False]))
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_state_dict_interop(dim, affine, track):
    gen = torch.Generator().manual_seed(dim)
    shape = {1: (6, 3, 4), 2: (4, 3, 3, 2), 3: (2, 3, 2, 2, 3)}[dim]
    mk = lambda mod: getattr(mod, "BatchNorm%dd" % dim)(3, affine=affine,
                                                         track_running_stats=track,
                                                         dtype=torch.float64)
    for trained_cls, other_cls in [(nn, bt), (bt, nn)]:
        trained, other = mk(trained_cls), mk(other_cls)
        assert list(trained.state_dict().keys()) == list(other.state_dict().keys())
        assert [n for n, _ in trained.named_parameters()] == [
            n for n, _ in other.named_parameters()]
        assert [n for n, _ in trained.named_buffers()] == [n for n, _ in other.named_buffers()]
        for _ in range(3):
            trained(random_input(gen, shape, torch.float64, False))
        if affine:
            with torch.no_grad():
                trained.weight.mul_(1.5)
                trained.bias.add_(0.25)
        other.load_state_dict(trained.state_dict())
        trained.eval()
        other.eval()
        x = random_input(gen, shape, torch.float64, False)
        assert_close(other(x), trained(x), "eval after load_state_dict")
        if track:
            assert other.num_batches_tracked.item() == 3


def test_module_attributes_match():
    for dim in (1, 2, 3):
        ref = getattr(nn, "BatchNorm%dd" % dim)(4, eps=1e-3, momentum=None)
        ours = getattr(bt, "BatchNorm%dd" % dim)(4, eps=1e-3, momentum=None)
        assert repr(ours) == repr(ref)
        assert isinstance(ours, type(ref))
        for attr in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
            assert getattr(ours, attr) == getattr(ref, attr)
        ours(torch.randn((3, 4) + (2,) * dim))
        assert ours.num_batches_tracked.item() == 1
        ours.reset_parameters()
        assert ours.num_batches_tracked.item() == 0
        assert torch.equal(ours.running_mean, torch.zeros(4))
        assert torch.equal(ours.running_var, torch.ones(4))
        assert not ours.eval().training and ours.train().training


def error_of(f):
    try:
        f()
    except Exception as e:  # noqa: BLE001 - we compare whatever torch raises
        return e
    return None


def assert_same_error(ours, ref):
    e, er = error_of(ours), error_of(ref)
    assert er is not None, "torch does not raise"
    assert type(e) is type(er) and str(e) == str(er), (e, er)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_wrong_dims_raise_like_torch(dim):
    for ndim in (0, 1, 2, 3, 4, 5, 6):
        ref = getattr(nn, "BatchNorm%dd" % dim)(3)
        ours = getattr(bt, "BatchNorm%dd" % dim)(3)
        x = torch.randn((2, 3, 2, 2, 2, 2)[:ndim]) if ndim else torch.tensor(1.0)
        if ndim in ((2, 3) if dim == 1 else (dim + 2,)):
            assert_close(ours(x), ref(x))
            continue
        assert_same_error(lambda: ours(x), lambda: ref(x))
        assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == 0


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 3, 1, 1), (1, 3, 1, 1, 1)])
def test_one_value_per_channel_like_torch(shape):
    dim = {2: 1, 3: 1, 4: 2, 5: 3}[len(shape)]
    ref = getattr(nn, "BatchNorm%dd" % dim)(3)
    ours = getattr(bt, "BatchNorm%dd" % dim)(3)
    x = torch.randn(shape)
    assert_same_error(lambda: ours(x), lambda: ref(x))
    # torch counts the batch before it finds out; so do we
    assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == 1
    assert torch.equal(ours.running_mean, ref.running_mean)
    assert_same_error(lambda: bt.batch_norm(x, None, None, training=True),
                      lambda: F.batch_norm(x, None, None, training=True))
    ref.eval()
    ours.eval()
    assert_close(ours(x), ref(x))  # eval is fine with one value


SIZE_ERRORS = [
    # (training, running_mean size, running_var size, weight size, bias size)
    (True, 4, 3, 3, 3), (True, 3, 4, 3, 3), (True, 3, 3, 2, 3), (True, 3, 3, 3, 5),
    (False, 4, 3, 3, 3), (False, 3, 3, 3, 1), (True, None, None, 4, None),
    (False, None, 3, None, None), (False, 3, None, 4, None), (False, None, None, None, None),
]


@pytest.mark.parametrize("training,nm,nv,nw,nb", SIZE_ERRORS)
def test_functional_errors_like_torch(training, nm, nv, nw, nb):
    x = torch.randn(4, 3, 2)
    args = [None if n is None else torch.ones(n) for n in (nm, nv, nw, nb)]
    assert_same_error(lambda: bt.batch_norm(x, *args, training=training),
                      lambda: F.batch_norm(x, *args, training=training))


@pytest.mark.parametrize("name", ["running_mean", "running_var"])
@pytest.mark.parametrize("training", [True, False])
def test_running_stats_requiring_grad_raise_like_torch(name, training, monkeypatch):
    """A running statistic that requires grad (bn.running_mean = nn.Parameter(...)) would get
    no gradient: torch's RuntimeError, from BatchNorm1d/2d/3d, SyncBatchNorm (one process) and
    batch_norm, with nothing updated; under no_grad both compute."""
    for k in list(os.environ):
        if k.startswith(("OMPI_COMM_WORLD", "PMIX_RANK", "PMI_")):
            monkeypatch.delenv(k)
    gen = torch.Generator().manual_seed(13)
    pairs = [(getattr(nn, "BatchNorm%dd" % d), getattr(bt, "BatchNorm%dd" % d), d)
             for d in (1, 2, 3)] + [(nn.BatchNorm2d, bt.SyncBatchNorm, 2)]
    for ref_cls, our_cls, dim in pairs:
        ref, ours = ref_cls(3), our_cls(3)
        for m in (ref, ours):
            setattr(m, name, nn.Parameter(getattr(m, name).clone()))
            m.train(training)
        x = random_input(gen, (4, 3) + (2,) * dim, torch.float32, False).requires_grad_()
        assert_same_error(lambda: ours(x), lambda: ref(x))
        assert torch.equal(ours.running_mean, torch.zeros(3))
        assert torch.equal(ours.running_var, torch.ones(3))
        assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item()
        with torch.no_grad():
            assert_close(ours(x), ref(x), "%s under no_grad" % our_cls.__name__)
        assert_close(getattr(ours, name), getattr(ref, name))
    x = random_input(gen, (4, 3, 5), torch.float64, False)
    stats = {"running_mean": torch.zeros(3, dtype=torch.float64),
             "running_var": torch.ones(3, dtype=torch.float64)}
    stats[name] = nn.Parameter(stats[name])
    assert_same_error(
        lambda: bt.batch_norm(x, stats["running_mean"], stats["running_var"], training=training),
        lambda: F.batch_norm(x, stats["running_mean"], stats["running_var"], training=training))
    assert torch.equal(stats[name].detach(), torch.zeros(3) if name == "running_mean"
                       else torch.ones(3))


def test_other_dtypes_and_arguments_behave_like_torch():
    gen = torch.Generator().manual_seed(7)
    x = random_input(gen, (4, 3, 5), torch.float32, False)
    # float64 input into a float32 module: torch's error
    ref, ours = nn.BatchNorm1d(3), bt.BatchNorm1d(3)
    assert_same_error(lambda: ours(x.double()), lambda: ref(x.double()))
    # bfloat16 is bnorm's (test_torch_half.py): within a unit in its last place of torch's
    ref, ours = nn.BatchNorm1d(3).bfloat16(), bt.BatchNorm1d(3).bfloat16()
    y = ours(x.bfloat16())
    assert computed_by_c(y) and y.dtype == torch.bfloat16
    assert ((y.float() - ref(x.bfloat16()).float()).abs() <= 2 ** -7 * y.float().abs().clamp(min=1)).all()
    assert ((ours.running_var.float() - ref.running_var.float()).abs() <= 2 ** -7).all()
    # a bfloat16 input beside float64 parameters is torch's error
    ref, ours = nn.BatchNorm1d(3).double(), bt.BatchNorm1d(3).double()
    assert_same_error(lambda: ours(x.bfloat16()), lambda: ref(x.bfloat16()))
    # momentum outside [0, 1], which torch allows, is computed (by bnorm's formula path)
    ref, ours = nn.BatchNorm1d(3, momentum=1.5), bt.BatchNorm1d(3, momentum=1.5)
    assert_close(ours(x), ref(x))
    assert_close(ours.running_mean, ref.running_mean)
    # momentum=None in the functional form is a TypeError in torch
    assert_same_error(lambda: bt.batch_norm(x, torch.zeros(3), torch.ones(3), training=True,
                                            momentum=None),
                      lambda: F.batch_norm(x, torch.zeros(3), torch.ones(3), training=True,
                                           momentum=None))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_other_strides(dtype):
    """Neither contiguous nor channels_last: copied, and the output is contiguous like torch's."""
    gen = torch.Generator().manual_seed(8)
    cases = [
        random_input(gen, (3, 4, 5, 6), dtype, False).transpose(2, 3),          # permuted
        random_input(gen, (3, 7, 4), dtype, False).transpose(1, 2).contiguous().transpose(1, 2),
        random_input(gen, (3, 4, 6, 6), dtype, False)[:, :, ::2, 1:],          # sliced
        random_input(gen, (2, 4, 3, 3, 2), dtype, False).transpose(0, 1),      # N and C swapped
    ]
    for x in cases:
        for training in (True, False):
            ref, ours = nn.BatchNorm1d(x.shape[1], dtype=dtype), bt.BatchNorm1d(
                x.shape[1], dtype=dtype)
            ref.train(training)
            ours.train(training)
            y = bt.batch_norm(x, ours.running_mean, ours.running_var, training=training)
            yr = F.batch_norm(x, ref.running_mean, ref.running_var, training=training)
            assert_close(y, yr)
            assert y.stride() == yr.stride()
            assert_close(ours.running_mean, ref.running_mean)


def test_storage_offsets():
    """Tensors that start inside a larger storage: data_ptr() already points at element 0."""
    gen = torch.Generator().manual_seed(12)
    x = random_input(gen, (6, 3, 4, 5), torch.float64, True)[2:]  # channels_last, offset
    assert x.storage_offset() > 0 and x.is_contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    store = torch.zeros(12, dtype=torch.float64)
    store[6:9] = 1
    weight = torch.arange(12, dtype=torch.float64)[3:6] / 4 + 0.5
    rm, rv = store[1:4], store[6:9]  # contiguous views at an offset
    rm_ref, rv_ref = rm.clone(), rv.clone()
    y = bt.batch_norm(x, rm, rv, weight, None, True, 0.1, 1e-5)
    assert computed_by_c(y)
    yr = F.batch_norm(x, rm_ref, rv_ref, weight, None, True, 0.1, 1e-5)
    assert_close(y, yr)
    assert_close(rm, rm_ref)
    assert_close(rv, rv_ref)
    assert store[0] == 0 and store[4:6].eq(0).all() and store[9:].eq(0).all()


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last", "channels_last_3d"])
def test_memory_reaches_the_library_without_copy(fmt, monkeypatch):
    """The C functions get the tensor's own memory and the matching layout, forward and
    backward, and the output and input gradient keep the memory format (through ctypes, where
    the calls can be watched; the native module takes the same tensors, test_native_path)."""
    use_ctypes_path(monkeypatch)
    seen = []
    for name in ("bn_forward_train", "bn_forward_eval", "bn_backward_train",
                 "bn_backward_eval"):
        real = getattr(bt._lib.lib, name)
        x_arg = {"bn_forward_train": 6, "bn_forward_eval": 1}.get(name, 4)

        def spy(*args, real=real, x_arg=x_arg):
            desc = [a for a in args if isinstance(a, bt._lib.BnDesc)][0]
            seen.append((args[x_arg], desc.layout))
            return real(*args)

        monkeypatch.setattr(bt._lib.lib, name, spy)
    shape = (2, 3, 4, 5, 2) if fmt == "channels_last_3d" else (2, 3, 4, 5)
    memory_format = getattr(torch, fmt if fmt != "contiguous" else "contiguous_format")
    layout = bt._lib.BN_CHANNELS_FIRST if fmt == "contiguous" else bt._lib.BN_CHANNELS_LAST
    m = bt.BatchNorm3d(3) if len(shape) == 5 else bt.BatchNorm2d(3)
    for training in (True, False):
        m.train(training)
        x = torch.randn(shape).contiguous(memory_format=memory_format).requires_grad_()
        y = m(x)
        y.backward(torch.randn(shape).contiguous(memory_format=memory_format))
        assert seen == [(x.data_ptr(), layout)] * 2
        assert y.is_contiguous(memory_format=memory_format)
        assert x.grad.is_contiguous(memory_format=memory_format)
        if fmt != "contiguous":
            assert not y.is_contiguous()
        seen.clear()


def test_empty_batch_gradients_are_zero():
    m = bt.BatchNorm2d(3)
    m.running_mean.fill_(0.5)
    x = torch.randn(0, 3, 2, 2, requires_grad=True)
    y = m(x)
    y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape
    assert torch.equal(m.weight.grad, torch.zeros(3))
    assert torch.equal(m.bias.grad, torch.zeros(3))
    assert torch.equal(m.running_mean, torch.full((3,), 0.5))
    assert m.num_batches_tracked.item() == 1


def test_needs_input_grad_respected():
    """Only the asked-for gradients are computed; frozen affine parameters get none."""
    m = bt.BatchNorm2d(3)
    m.weight.requires_grad_(False)
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    m(x).sum().backward()
    assert m.weight.grad is None and m.bias.grad is not None and x.grad is not None
    x = torch.randn(4, 3, 2, 2)
    m = bt.BatchNorm2d(3)
    m(x).pow(2).sum().backward()
    assert x.grad is None and m.weight.grad is not None


def test_double_backward_is_right():
    """create_graph: the gradient of a gradient is torch's (test_torch_autograd.py has the rest)."""
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    grads = []
    for bn in (bt.batch_norm, F.batch_norm):
        y = bn(x, None, None, training=True)
        (g,) = torch.autograd.grad(y.pow(3).sum(), x, create_graph=True)
        grads.append(torch.autograd.grad(g.square().sum(), x)[0])
    assert_close(grads[0], grads[1])


# ------------------------------------------------------------------------------------------------
# Autograd: gradcheck of the functional form

@pytest.mark.parametrize("shape,cl", [((5, 3), False), ((3, 2, 4), False), ((2, 3, 3, 2), True),
                                      ((2, 2, 2, 3, 2), True)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck(shape, cl, training, affine):
    gen = torch.Generator().manual_seed(9)
    x = random_input(gen, shape, torch.float64, cl).requires_grad_()
    c = shape[1]
    w = torch.empty(c, dtype=torch.float64).uniform_(0.5, 1.5, generator=gen).requires_grad_()
    b = torch.empty(c, dtype=torch.float64).uniform_(-1, 1, generator=gen).requires_grad_()
    rm = torch.empty(c, dtype=torch.float64).uniform_(-1, 1, generator=gen)
    rv = torch.empty(c, dtype=torch.float64).uniform_(0.5, 2, generator=gen)
    if training:  # no running statistics, so repeated calls see the same function
        f = lambda x, w, b: bt.batch_norm(x, None, None, w, b, True, 0.1, 1e-5)
    else:
        f = lambda x, w, b: bt.batch_norm(x, rm, rv, w, b, False, 0.1, 1e-5)
    if affine:
        assert torch.autograd.gradcheck(f, (x, w, b))
    else:
        assert torch.autograd.gradcheck(lambda x: f(x, None, None), (x,))
    assert computed_by_c(f(x, w, b))


# ------------------------------------------------------------------------------------------------
# A small model trained with torch.nn.BatchNorm2d and with bnorm's

def tiny_model(bn):
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), bn(6), nn.ReLU(),
        nn.Conv2d(6, 5, 3, stride=2), bn(5), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4), nn.BatchNorm1d(4))


@pytest.mark.parametrize("dtype,cl", [(torch.float64, False), (torch.float64, True),
                                      (torch.float32, False)])
def test_swapped_into_a_conv_model(dtype, cl):
    torch.manual_seed(10)
    ref = tiny_model(nn.BatchNorm2d).to(dtype)
    ours = tiny_model(bt.BatchNorm2d).to(dtype)
    ours.load_state_dict(ref.state_dict())
    assert sum(type(m) is bt.BatchNorm2d for m in ours.modules()) == 2
    if cl:
        ref = ref.to(memory_format=torch.channels_last)
        ours = ours.to(memory_format=torch.channels_last)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(11)
    for step in range(4):
        x = torch.randn(6, 3, 9, 9, dtype=torch.float64, generator=gen).to(dtype) * 2 + 1
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        target = torch.randint(0, 4, (6,), generator=gen)
        losses = []
        for model, opt in ((ref, opt_ref), (ours, opt_ours)):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), target)
            loss.backward()
            opt.step()
            losses.append(loss)
        assert_close(losses[1], losses[0], "loss at step %d" % step)
        for (name, p), pr in zip(ours.named_parameters(), ref.parameters()):
            assert_close(p.grad, pr.grad, "grad of %s at step %d" % (name, step))
            assert_close(p, pr, "%s after step %d" % (name, step))
        for (name, b), br in zip(ours.named_buffers(), ref.buffers()):
            if b.is_floating_point():
                assert_close(b, br, "%s after step %d" % (name, step))
            else:
                assert torch.equal(b, br), name
    ref.eval()
    ours.eval()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, generator=gen).to(dtype)
    assert_close(ours(x), ref(x), "eval")


def test_convert_keeps_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.SyncBatchNorm(4))
    weight = model[1].weight
    assert bt.convert(model) is model
    assert type(model[1]) is bt.BatchNorm2d and model[1].weight is weight
    assert type(model[2]) is nn.SyncBatchNorm  # subclasses are left alone
    assert type(bt.convert(nn.BatchNorm1d(2))) is bt.BatchNorm1d


def package_imports():
    """{module: the bnorm modules it imports (at any depth of its code)} for python/bnorm."""
    import ast
    from pathlib import Path
    package = Path(bt.__file__).parent
    names = {p.stem for p in package.glob("*.py")}
    graph = {}
    for path in package.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found |= {a.name for a in node.names if a.name in names}
        graph[path.stem] = found
    return graph


def test_package_has_no_import_cycle():
    graph = package_imports()
    assert "_functional" in graph["torch"] and "_functional" in graph["_sync"]
    assert "torch" not in graph["_sync"]

    def reaches(start, target, seen=()):
        return any(m == target or (m not in seen and reaches(m, target, seen + (m,)))
                   for m in graph.get(start, ()))
    cycles = [m for m in graph if reaches(m, m)]
    assert cycles == [], graph


def test_element_types_and_pointers_from_one_place():
    """_lib.bn_dtype and _lib.ptr serve numpy and torch alike (defined there only)."""
    import numpy as np
    from bnorm import _lib
    for dtype, code in ((np.float32, _lib.BN_FLOAT32), (np.float64, _lib.BN_FLOAT64),
                        (torch.float32, _lib.BN_FLOAT32), (torch.float64, _lib.BN_FLOAT64)):
        assert _lib.bn_dtype(np.dtype(dtype) if isinstance(dtype, type) else dtype) == code
    for other in (np.dtype(">f4" if np.little_endian else "<f4"), np.dtype(np.float16),
                  np.dtype(np.int64), torch.float16, torch.bfloat16, torch.int32):
        assert _lib.bn_dtype(other) is None, other
    a, t = np.zeros(3, np.float32), torch.zeros(3)
    assert _lib.ptr(a) == a.ctypes.data and _lib.ptr(t) == t.data_ptr() and _lib.ptr(None) is None
    import inspect
    import bnorm
    import bnorm._functional
    import bnorm._sync
    for module in (bnorm, bnorm._functional, bnorm._sync, bt):
        text = inspect.getsource(module)
        assert "def _ptr" not in text and "_DTYPES" not in text, module.__name__
