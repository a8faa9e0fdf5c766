"""bnorm's numpy API (bnorm.batch_norm and the low-level functions) against live PyTorch.

Every case runs the same data through torch.nn.functional.batch_norm; float64 results must agree
within 1e-10, float32 within 2e-5, relative to max(1, |torch|). torch computes in float64 on the
very same values (float32 inputs converted exactly): its float32 CPU kernel rounds more than the
tolerance allows on inputs bnorm handles exactly (see test_torch_modules.py).
Run: BNORM_LIBRARY=$PWD/build/libbnorm.so PYTHONPATH=python python3 -m pytest tests/python
"""

import itertools
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnorm
from bnorm import _lib

TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-10}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def assert_close(actual, ref, what=""):
    """|actual - ref| <= tol * max(1, |ref|) elementwise, tol by actual's dtype."""
    actual, ref = np.asarray(actual), np.asarray(ref)
    assert actual.shape == ref.shape, (what, actual.shape, ref.shape)
    if ref.size == 0:
        return
    tol = TOL[np.dtype(actual.dtype)]
    err = np.abs(actual.astype(np.float64) - ref.astype(np.float64))
    bound = tol * np.maximum(1.0, np.abs(ref.astype(np.float64)))
    worst = np.argmax(err - bound)
    assert np.all(err <= bound), "%s: max error %g at %d (actual %r, reference %r)" % (
        what, err.flat[worst], worst, actual.flat[worst], ref.flat[worst])


def channels_last(a):
    """a (N, C, ...) with channels-last memory: a view of a C-contiguous (N, ..., C) array."""
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1, 1)


def is_channels_last(a):
    return np.moveaxis(a, 1, -1).flags.c_contiguous


def make_input(rng, shape, dtype):
    """Random data with a different offset and scale per channel."""
    c = shape[1]
    offset = rng.uniform(-3, 3, size=c).reshape((1, c) + (1,) * (len(shape) - 2))
    scale = rng.uniform(0.5, 2, size=c).reshape((1, c) + (1,) * (len(shape) - 2))
    return (rng.standard_normal(shape) * scale + offset).astype(dtype)


def t64(a):
    """A float64 tensor copy of a (exact for float32), keeping a's memory layout."""
    return None if a is None else torch.from_numpy(np.array(a, np.float64))


def torch_reference(x, running_mean, running_var, weight, bias, training, momentum, eps):
    """F.batch_norm in float64 on copies; returns (y, running_mean, running_var) as numpy."""
    t = t64
    rm, rv = t(running_mean), t(running_var)
    y = F.batch_norm(t(x), rm, rv, t(weight), t(bias), training, momentum, eps)
    return y.numpy(), (None if rm is None else rm.numpy()), (None if rv is None else rv.numpy())


# ------------------------------------------------------------------------------------------------
# The randomized grid

SHAPES = [
    (5, 3), (2, 1), (13, 4), (0, 3), (1, 2),            # (N, C); (1, C) is fine in eval only
    (3, 2, 7), (2, 5, 1), (0, 2, 3), (1, 3, 2), (1, 1, 1),
    (4, 3, 5, 6), (1, 2, 3, 1), (3, 1, 2, 2), (0, 2, 3, 3), (2, 3, 7, 11), (1, 4, 1, 1),
    (2, 3, 2, 3, 5), (1, 2, 1, 1, 2), (3, 1, 2, 5, 1),
]
DTYPES = [np.float32, np.float64]
LAYOUTS = ["first", "last", "strided"]
MODES = ["train", "train-untracked", "eval"]
AFFINE = ["both", "none", "weight"]
MOMENTA = [0.1, 0.3, 0.0, 1.0]


def grid():
    for shape, dtype, layout, mode, affine in itertools.product(SHAPES, DTYPES, LAYOUTS, MODES,
                                                                AFFINE):
        if layout == "last" and len(shape) < 3:
            continue
        count = shape[0] * int(np.prod(shape[2:], dtype=np.int64))
        if mode != "eval" and count == 1:
            continue  # an error, tested below
        yield shape, dtype, layout, mode, affine


CASES = list(grid())


@pytest.mark.parametrize("shape,dtype,layout,mode,affine", CASES)
def test_batch_norm_matches_torch(shape, dtype, layout, mode, affine):
    seed = CASES.index((shape, dtype, layout, mode, affine))
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = make_input(rng, shape, dtype)
    if layout == "last":
        x = channels_last(x)
    elif layout == "strided":
        # every other element of a larger array along the last axis: neither layout, copied
        big = np.repeat(x, 2, axis=-1)
        big[..., 1::2] = 1e30
        x = big[..., ::2]
        assert not x.flags.c_contiguous or x.size == 0 or shape[-1] == 1
    weight = rng.uniform(0.5, 1.5, c).astype(dtype) if affine in ("both", "weight") else None
    bias = rng.uniform(-1, 1, c).astype(dtype) if affine == "both" else None
    running_mean = rng.uniform(-1, 1, c).astype(dtype)
    running_var = rng.uniform(0.5, 2, c).astype(dtype)
    momentum = MOMENTA[seed % len(MOMENTA)]
    eps = [1e-5, 1e-3][seed % 2]
    training = mode != "eval"
    if mode == "train-untracked":
        running_mean = running_var = None

    y_ref, rm_ref, rv_ref = torch_reference(x, running_mean, running_var, weight, bias, training,
                                            momentum, eps)
    x_before = x.copy()
    y = bnorm.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)

    assert y.dtype == x.dtype and y.shape == x.shape
    assert_close(y, y_ref, "output")
    if running_mean is not None:
        assert_close(running_mean, rm_ref, "running_mean")
        assert_close(running_var, rv_ref, "running_var")
    np.testing.assert_array_equal(x, x_before)  # the input is never written
    if layout == "last" and y.size > 0:
        assert is_channels_last(y), "channels-last input gives channels-last output"
    if layout == "first":
        assert y.flags.c_contiguous


@pytest.mark.parametrize("layout", ["first", "last", "strided"])
def test_layout_handed_to_the_library(layout, monkeypatch):
    """Channels-first and channels-last arrays reach C as they are (same address, right
    layout); only other strides are copied."""
    seen = []
    real = _lib.lib.bn_forward_train

    def spy(*args):
        seen.append((args[6], args[9].layout))
        return real(*args)

    monkeypatch.setattr(_lib.lib, "bn_forward_train", spy)
    x = make_input(np.random.default_rng(0), (3, 4, 5, 6), np.float32)
    if layout == "last":
        x = channels_last(x)
    elif layout == "strided":
        x = x[:, :, ::2]
    bnorm.batch_norm(x, None, None, training=True)
    (address, c_layout), = seen
    if layout == "strided":
        assert address != x.ctypes.data and c_layout == _lib.BN_CHANNELS_FIRST
    else:
        assert address == x.ctypes.data
        assert c_layout == (_lib.BN_CHANNELS_LAST if layout == "last" else
                            _lib.BN_CHANNELS_FIRST)


def test_training_steps_then_eval():
    """Several training steps update running statistics like torch, then eval uses them."""
    rng = np.random.default_rng(1)
    for dtype in DTYPES:
        rm, rv = np.zeros(4, dtype), np.ones(4, dtype)
        trm, trv = t64(rm), t64(rv)
        for step in range(5):
            x = make_input(rng, (6, 4, 3, 5), dtype)
            if step % 2:
                x = channels_last(x)
            y = bnorm.batch_norm(x, rm, rv, training=True, momentum=0.3)
            yt = F.batch_norm(t64(x), trm, trv, training=True, momentum=0.3)
            assert_close(y, yt.numpy(), "train step %d" % step)
            assert_close(rm, trm.numpy(), "running_mean")
            assert_close(rv, trv.numpy(), "running_var")
        x = make_input(rng, (3, 4, 2, 2), dtype)
        assert_close(bnorm.batch_norm(x, rm, rv), F.batch_norm(t64(x), trm, trv).numpy(),
                     "eval")


def float64_reference(x, running_mean, running_var, bias, momentum, eps):
    """Training batch norm computed in float64 with numpy, two-pass (no weight)."""
    x64 = np.asarray(x, np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x64.mean(axis=axes)
    var = ((x64 - mean.reshape(shape)) ** 2).mean(axis=axes)
    m = x.size // x.shape[1]
    y = (x64 - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) + bias.reshape(shape)
    rm = (1 - momentum) * running_mean + momentum * mean
    rv = (1 - momentum) * running_var + momentum * var * m / (m - 1)
    return y, rm, rv


@pytest.mark.parametrize("offset,scale", [(1e4, 1e-2), (1e6, 1.0), (0.0, 1e-30), (0.0, 1e15),
                                          (-3e4, 7.0)])
@pytest.mark.parametrize("layout", ["first", "last"])
def test_offset_and_scale(offset, scale, layout):
    """The header's promise: float32 results within 1e-6 * max(1, |y|) of a float64 computation
    on the same float32 input at any offset and scale, and a constant channel normalizes to
    exactly 0 (then the bias). (torch is not the reference here: at 1e15 even its float64
    kernel gives -24 instead of 0 for a constant channel.)"""
    rng = np.random.default_rng(11)
    x = (offset + scale * rng.standard_normal((6, 3, 5, 7))).astype(np.float32)
    x[:, 2] = np.float32(offset + scale)  # constant channel
    if layout == "last":
        x = channels_last(x)
    bias = np.array([0, 0, 0.5], np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    y_ref, rm_ref, rv_ref = float64_reference(x, rm, rv, bias, 0.1, 1e-5)
    y = bnorm.batch_norm(x, rm, rv, None, bias, True, 0.1, 1e-5)
    for what, a, r in [("output", y, y_ref), ("running_mean", rm, rm_ref),
                       ("running_var", rv, rv_ref)]:
        err = np.abs(a - r) / np.maximum(1, np.abs(r))
        assert err.max() <= 1e-6, (what, err.max())
    np.testing.assert_array_equal(y[:, 2], 0.5)
    # and the same call gives the same bits
    np.testing.assert_array_equal(bnorm.batch_norm(x, None, None, None, bias, True), y)


# ------------------------------------------------------------------------------------------------
# float64 values near the top of the range

def test_large_float64_values_issue_example():
    """Values spread over 1e152: a block's S1 * S1 overflowed and the clamp of M2 hid the -inf
    (running_var 1.2e299 and 4.3e301, outputs of std 26 and 1.4). Torch is right here."""
    x = np.random.default_rng(0).uniform(0, 1e152, (8, 2, 256))
    rm, rv = np.zeros(2), np.ones(2)
    y = bnorm.batch_norm(x, rm, rv, training=True)
    trm, trv = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    ty = F.batch_norm(torch.from_numpy(x), trm, trv, training=True).numpy()
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-12)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(y.std(axis=(0, 2)), 1, rtol=1e-12)
    np.testing.assert_allclose(y, ty, rtol=0, atol=1e-11)


def _all_results(x, dy, weight, bias, run_torch):
    """Training forward (y, save_mean, save_invstd, running stats), eval with the updated running
    stats, training backward (dx, dweight, dbias): bnorm's, or torch's in float64."""
    c = x.shape[1]
    if run_torch:
        xt = torch.from_numpy(np.array(x)).requires_grad_()
        wt = torch.from_numpy(weight.copy()).requires_grad_()
        bt = torch.from_numpy(bias.copy()).requires_grad_()
        rm, rv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
        y = F.batch_norm(xt, rm, rv, wt, bt, True)
        y.backward(torch.from_numpy(np.array(dy)))
        _, sm, si = torch.native_batch_norm(xt.detach(), None, None, None, None, True, 0.1, 1e-5)
        ye = F.batch_norm(xt.detach(), rm, rv, wt.detach(), bt.detach(), False)
        out = dict(y=y.detach(), save_mean=sm, save_invstd=si, running_mean=rm, running_var=rv,
                   eval_y=ye, dx=xt.grad, dweight=wt.grad, dbias=bt.grad)
        return {k: v.numpy() for k, v in out.items()}
    rm, rv = np.zeros(c), np.ones(c)
    y = bnorm.batch_norm(x, rm, rv, weight, bias, training=True)
    _, sm, si = bnorm.forward_train(x, weight, bias)
    dx, dweight, dbias = bnorm.backward_train(dy, x, sm, si, weight)
    ye = bnorm.forward_eval(x, rm, rv, weight, bias)
    return dict(y=y, save_mean=sm, save_invstd=si, running_mean=rm, running_var=rv, eval_y=ye,
                dx=dx, dweight=dweight, dbias=dbias)


@pytest.mark.parametrize("low,high", [(0, 1e152), (-1e154, 1e154), (-1e300, 1e300),
                                      (0, 3e153), (3e151, 1e153)])
@pytest.mark.parametrize("shape", [(8, 2, 16, 16), (64, 2, 64, 64)])
@pytest.mark.parametrize("layout", ["first", "last"])
def test_overflowing_variance_like_torch(low, high, shape, layout):
    """Large finite values of both sizes of batch (one block, many): where the batch's M2
    overflows (torch's var_sum does too), torch gives invstd 0, y = bias, running_var inf, dx 0
    and dweight 0, with a finite mean; bnorm gives the same infinities and zeros, in the same
    places, and agrees with torch's finite values."""
    rng = np.random.default_rng(int(high) % 1000 + shape[0])
    x = rng.uniform(low, high, shape)
    dy = rng.standard_normal(shape)
    if layout == "last":
        x, dy = channels_last(x), channels_last(dy)
    weight, bias = np.array([0.5, 1.5]), np.array([-0.25, 0.5])
    ours, theirs = (_all_results(x, dy, weight, bias, t) for t in (False, True))
    for name, t in theirs.items():
        a = np.asarray(ours[name])
        assert np.array_equal(np.isnan(a), np.isnan(t)), name
        assert np.array_equal(np.isinf(a), np.isinf(t)) and np.array_equal(a[np.isinf(a)],
                                                                            t[np.isinf(t)]), name
        assert np.array_equal(a == 0, t == 0) or name in ("y", "eval_y"), name
        # finite values: means on the scale of the data, sums on the scale of their terms
        if name in ("save_mean", "running_mean"):
            scale = np.abs(t) + (high - low)
        elif name == "dweight":
            scale = np.abs(dy).sum(axis=(0, 2, 3))
        elif name == "dx":
            scale = np.full(t.shape, max(np.abs(t).max(), np.finfo(np.float64).tiny))
        else:
            scale = np.maximum(1, np.abs(t))
        fin = np.isfinite(t)
        err = np.abs(a[fin] - t[fin]) / scale[fin]
        assert err.size == 0 or err.max() <= 1e-11, (name, err.max())
    inf = ~np.isfinite(theirs["running_var"])
    assert inf.any() or high <= 1e153  # the large cases do overflow
    for c in np.flatnonzero(inf):
        assert np.all(ours["y"][:, c] == bias[c]) and np.all(ours["eval_y"][:, c] == bias[c])
        assert ours["save_invstd"][c] == 0 and np.all(ours["dx"][:, c] == 0)
        assert ours["dweight"][c] == 0 and np.isfinite(ours["save_mean"][c])


def test_mean_near_dbl_max_stays_finite():
    """Values near +-DBL_MAX: torch's own sum overflows (its mean is inf, its outputs NaN);
    bnorm's mean is the finite one (numpy's on values scaled by 2^-600), the variance overflows,
    y is the bias and dx 0, even where x - mean itself passes DBL_MAX."""
    rng = np.random.default_rng(12)
    x = rng.uniform(0.9, 1, (8, 2, 256)) * 1.7e308
    x[:, 1] *= -1
    x[0, 1, :8] *= -1  # a few values of the other sign: x - mean overflows there
    for layout in ("first", "last"):
        xi = channels_last(x) if layout == "last" else x
        bias = np.array([0.5, -0.5])
        rm, rv = np.zeros(2), np.ones(2)
        y, sm, si = bnorm.forward_train(xi, None, bias, rm, rv)
        want = (x * 2.0 ** -600).mean(axis=(0, 2)) * 2.0 ** 600
        np.testing.assert_allclose(sm, want, rtol=1e-14)
        assert np.all(si == 0) and np.all(np.isposinf(rv))
        assert np.all(y == bias[None, :, None])
        dx, dweight, dbias = bnorm.backward_train(np.ones_like(xi), xi, sm, si)
        assert np.all(dx == 0) and np.all(dweight == 0) and np.all(dbias == x[:, 0].size)
    _, tmean, _ = torch.native_batch_norm(torch.from_numpy(x), None, None, None, None, True,
                                          0.1, 1e-5)
    assert np.isinf(tmean[0].item())  # torch: the sum of the values overflows


def test_noncontiguous_running_stats_updated_in_place():
    rng = np.random.default_rng(2)
    x = make_input(rng, (5, 3, 4), np.float64)
    store = np.zeros((3, 2))
    store[:, 1] = 1.0
    rm, rv = store[:, 0], store[:, 1]  # strided views into one array
    y = bnorm.batch_norm(x, rm, rv, training=True)
    y_ref, rm_ref, rv_ref = torch_reference(x, np.zeros(3), np.ones(3), None, None, True, 0.1,
                                            1e-5)
    assert_close(y, y_ref)
    assert_close(store[:, 0], rm_ref)
    assert_close(store[:, 1], rv_ref)


# ------------------------------------------------------------------------------------------------
# The low-level functions

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["first", "last"])
def test_forward_train_saved_statistics(dtype, layout):
    rng = np.random.default_rng(3)
    x = make_input(rng, (4, 3, 5, 2), dtype)
    if layout == "last":
        x = channels_last(x)
    y, save_mean, save_invstd = bnorm.forward_train(x, eps=1e-3)
    assert save_mean.dtype == np.float64 and save_invstd.dtype == np.float64
    x64 = np.asarray(x, np.float64)
    mean = x64.mean(axis=(0, 2, 3))
    var = x64.var(axis=(0, 2, 3))
    if dtype == np.float32:
        # float32 statistics are formed in float about a pivot (src/pivot.h): the mean within
        # 11 * 2^-24 of the deviation, invstd within 11 * 2^-24 of itself
        bound = 11 * 2.0**-24
        assert np.all(np.abs(save_mean - mean) <= bound * np.sqrt(var))
        np.testing.assert_allclose(save_invstd, 1 / np.sqrt(var + 1e-3), rtol=bound)
    else:
        np.testing.assert_allclose(save_mean, mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(save_invstd, 1 / np.sqrt(var + 1e-3), rtol=1e-12)
    # torch's own saved statistics (in float64: float32 ones are to the bound above)
    _, tmean, tinvstd = torch.native_batch_norm(t64(x), None, None, None, None, True, 0.1, 1e-3)
    if dtype == np.float32:
        assert np.all(np.abs(save_mean - tmean.numpy()) <= bound * np.sqrt(var))
        np.testing.assert_allclose(save_invstd, tinvstd.numpy(), rtol=bound)
    else:
        assert_close(save_mean, tmean.numpy(), "save_mean")
        assert_close(save_invstd, tinvstd.numpy(), "save_invstd")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["first", "last"])
@pytest.mark.parametrize("training", [True, False])
def test_backward_matches_autograd(dtype, layout, training):
    rng = np.random.default_rng(4)
    shape = (5, 3, 4, 3)
    x = make_input(rng, shape, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    if layout == "last":
        x = channels_last(x)
    weight = rng.uniform(0.5, 1.5, 3).astype(dtype)
    bias = rng.uniform(-1, 1, 3).astype(dtype)
    rm = rng.uniform(-1, 1, 3).astype(dtype)
    rv = rng.uniform(0.5, 2, 3).astype(dtype)

    xt, wt, bt = t64(x).requires_grad_(), t64(weight).requires_grad_(), t64(bias).requires_grad_()
    yt = F.batch_norm(xt, t64(rm), t64(rv), wt, bt, training, 0.1, 1e-5)
    yt.backward(t64(dy))

    if training:
        y, save_mean, save_invstd = bnorm.forward_train(x, weight, bias, eps=1e-5)
        dx, dweight, dbias = bnorm.backward_train(dy, x, save_mean, save_invstd, weight)
    else:
        y = bnorm.forward_eval(x, rm, rv, weight, bias, eps=1e-5)
        dx, dweight, dbias = bnorm.backward_eval(dy, x, rm, rv, weight, eps=1e-5)
    assert_close(y, yt.detach().numpy(), "y")
    assert_close(dx, xt.grad.numpy(), "dx")
    assert_close(dweight, wt.grad.numpy(), "dweight")
    assert_close(dbias, bt.grad.numpy(), "dbias")
    if layout == "last":
        assert is_channels_last(dx)


def test_cumulative_average_counts_batches():
    """cumulative=True with a counter is torch's momentum=None."""
    rng = np.random.default_rng(5)
    module = torch.nn.BatchNorm1d(3, momentum=None).double()
    rm, rv = np.zeros(3), np.ones(3)
    nbt = np.zeros(1, np.int64)
    for step in range(4):
        x = make_input(rng, (7, 3, 2), np.float64)
        y, _, _ = bnorm.forward_train(x, running_mean=rm, running_var=rv,
                                      num_batches_tracked=nbt, cumulative=True)
        yt = module(torch.from_numpy(x))
        assert_close(y, yt.detach().numpy())
        assert_close(rm, module.running_mean.numpy(), "running_mean step %d" % step)
        assert_close(rv, module.running_var.numpy(), "running_var step %d" % step)
        assert nbt[0] == module.num_batches_tracked.item() == step + 1


def test_counter_incremented_only_when_tracking():
    x = make_input(np.random.default_rng(6), (4, 2), np.float64)
    nbt = np.zeros(1, np.int64)
    bnorm.forward_train(x, num_batches_tracked=nbt)
    assert nbt[0] == 0
    bnorm.forward_train(x, running_mean=np.zeros(2), num_batches_tracked=nbt)
    assert nbt[0] == 1
    # the cumulative average needs the counter
    rm = np.zeros(2)
    with pytest.raises(bnorm.BnormError) as info:
        bnorm.forward_train(x, running_mean=rm, cumulative=True)
    assert info.value.name == "BN_ERR_NULL_POINTER"
    np.testing.assert_array_equal(rm, 0)
    # ... but not without running statistics
    bnorm.forward_train(x, cumulative=True)


def test_empty_batch_in_the_library():
    """N = 0 straight through the C functions: nothing normalized, stats kept, counter counts."""
    x = np.zeros((0, 3, 4), np.float32)
    rm = np.array([0.5, -1, 2], np.float32)
    rv = np.array([1, 2, 3], np.float32)
    nbt = np.zeros(1, np.int64)
    y, _, _ = bnorm.forward_train(x, running_mean=rm, running_var=rv, num_batches_tracked=nbt,
                                  momentum=0.5)
    assert y.shape == (0, 3, 4)
    np.testing.assert_array_equal(rm, [0.5, -1, 2])
    np.testing.assert_array_equal(rv, [1, 2, 3])
    assert nbt[0] == 1
    save = np.zeros(3)
    dx, dweight, dbias = bnorm.backward_train(np.zeros_like(x), x, save, save + 1,
                                              np.ones(3, np.float32))
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dweight, 0)
    np.testing.assert_array_equal(dbias, 0)


def test_empty_inputs_in_batch_norm():
    for shape in [(0, 3), (0, 3, 5), (2, 3, 0), (4, 3, 0, 2)]:
        x = np.zeros(shape, np.float32)
        rm, rv = np.full(3, 0.5, np.float32), np.full(3, 2, np.float32)
        y = bnorm.batch_norm(x, rm, rv, training=True)
        assert y.shape == shape
        np.testing.assert_array_equal(rm, 0.5)
        np.testing.assert_array_equal(rv, 2)


# ------------------------------------------------------------------------------------------------
# Errors

def torch_error(f):
    with pytest.raises(Exception) as info:
        f()
    return info.value


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 2, 1, 1), (1, 5, 1, 1, 1)])
def test_one_value_per_channel(shape):
    x = np.ones(shape, np.float32)
    rm, rv = np.zeros(shape[1], np.float32), np.ones(shape[1], np.float32)
    ref = torch_error(lambda: F.batch_norm(torch.from_numpy(x), None, None, training=True))
    with pytest.raises(ValueError) as info:
        bnorm.batch_norm(x, rm, rv, training=True)
    prefix = "Expected more than 1 value per channel when training, got input size "
    assert type(ref) is ValueError and str(ref).startswith(prefix)
    assert str(info.value) == prefix + str(shape)
    np.testing.assert_array_equal(rm, 0)
    # eval is fine with one value, and so is the low level in eval; the low level in training
    # gets the library's BN_ERR_COUNT
    bnorm.batch_norm(x, rm, rv, training=False)
    with pytest.raises(bnorm.BnormError) as info:
        bnorm.forward_train(x, running_mean=rm, running_var=rv)
    assert info.value.name == "BN_ERR_COUNT" and info.value.status == -5
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)


SIZE_ERRORS = [
    # (training, running_mean size, running_var size, weight size, bias size)
    (True, 4, 3, 3, 3), (True, 3, 4, 3, 3), (True, 3, 3, 2, 3), (True, 3, 3, 3, 5),
    (False, 4, 3, 3, 3), (False, 3, 3, 3, 1), (True, None, None, 4, None),
    (False, None, 3, None, None), (False, 3, None, 4, None), (False, 4, 5, None, None),
]


@pytest.mark.parametrize("training,nm,nv,nw,nb", SIZE_ERRORS)
def test_size_errors_like_torch(training, nm, nv, nw, nb):
    x = np.ones((4, 3, 2), np.float64)
    arr = lambda n, v: None if n is None else np.full(n, v)
    args = [arr(nm, 0.0), arr(nv, 1.0), arr(nw, 1.0), arr(nb, 0.0)]
    ref = torch_error(lambda: F.batch_norm(torch.from_numpy(x), *[
        None if a is None else torch.from_numpy(a.copy()) for a in args], training=training))
    with pytest.raises(type(ref)) as info:
        bnorm.batch_norm(x, *args, training=training)
    assert str(info.value) == str(ref)
    if args[0] is not None:
        np.testing.assert_array_equal(args[0], 0.0)


def test_argument_errors():
    x = np.ones((4, 3), np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(TypeError):
        bnorm.batch_norm(np.ones((4, 3), np.int64), None, None, training=True)
    with pytest.raises(TypeError):
        bnorm.batch_norm(x.astype(np.float16), None, None, training=True)
    with pytest.raises(TypeError):
        bnorm.batch_norm(x, rm.astype(np.float64), rv, training=True)
    with pytest.raises(ValueError):
        bnorm.batch_norm(np.ones(5, np.float32), None, None, training=True)
    with pytest.raises(TypeError):
        bnorm.batch_norm(x, [0.0, 0.0, 0.0], rv, training=True)  # in place needs an array
    readonly = rm.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError):
        bnorm.batch_norm(x, readonly, rv, training=True)
    # what the library refuses: nothing is written
    x[0, 0] = 5
    for kwargs in [dict(eps=-1.0), dict(eps=float("nan")), dict(momentum=1.5),
                   dict(momentum=-0.1)]:
        with pytest.raises(bnorm.BnormError) as info:
            bnorm.batch_norm(x, rm, rv, training=True, **kwargs)
        assert info.value.name == "BN_ERR_ARGUMENT"
        assert isinstance(info.value, RuntimeError)
        assert info.value.message in str(info.value)
        np.testing.assert_array_equal(rm, 0)
        np.testing.assert_array_equal(rv, 1)
    with pytest.raises(bnorm.BnormError):
        bnorm.batch_norm(x, rm, rv, training=False, eps=-1.0)


def test_error_text_comes_from_the_library():
    err = bnorm.BnormError(-5, "bn_forward_train")
    assert err.status == -5 and err.name == "BN_ERR_COUNT"
    assert err.message == _lib.status_string(-5) and err.message
    assert str(err).startswith("bn_forward_train: " + err.message)
    assert _lib.status_string(-1000) == "unknown status"


# ------------------------------------------------------------------------------------------------
# Packaging

def test_version_matches_header():
    with open(os.path.join(REPO, "include", "bnorm.h")) as f:
        text = f.read()
    parts = [re.search(r"#define BN_VERSION_%s (\d+)" % k, text).group(1)
             for k in ("MAJOR", "MINOR", "PATCH")]
    assert bnorm.__version__ == ".".join(parts)


def test_missing_library_is_a_clear_import_error(tmp_path):
    missing = str(tmp_path / "nowhere" / "libbnorm.so")
    env = dict(os.environ, BNORM_LIBRARY=missing,
               PYTHONPATH=os.path.join(REPO, "python"))
    proc = subprocess.run([sys.executable, "-c", "import bnorm"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and missing in proc.stderr
    assert "BNORM_LIBRARY" in proc.stderr


def test_library_found_in_build_without_environment():
    built = os.path.join(REPO, "build", "libbnorm.so")
    assert os.path.exists(built), "run make first: build/libbnorm.so is missing"
    env = {k: v for k, v in os.environ.items() if k != "BNORM_LIBRARY"}
    env["PYTHONPATH"] = os.path.join(REPO, "python")
    proc = subprocess.run([sys.executable, "-c", "import bnorm._lib as l; print(l.path)"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert os.path.realpath(proc.stdout.strip()) == os.path.realpath(built)


# ------------------------------------------------------------------------------------------------
# check_finite

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_finite_names_the_first_nonfinite(dtype):
    x = np.random.default_rng(5).standard_normal((3, 4, 5, 6)).astype(dtype)
    assert bnorm.check_finite(x) is None
    bad = x.copy()
    bad[2, 1, 3, 4] = np.inf
    bad[1, 3, 0, 2] = np.nan  # first in memory order
    with pytest.raises(bnorm.BnormError) as e:
        bnorm.check_finite(bad)
    assert e.value.name == "BN_ERR_NOT_FINITE" and e.value.function == "bn_check_finite"
    assert e.value.index == (1, 3, 0, 2) and e.value.channel == 3
    assert "nan at index (1, 3, 0, 2) (channel 3)" in str(e.value)
    assert np.isnan(bad[e.value.index])


def test_check_finite_channels_last_memory():
    # NHWC memory seen as (N, C, H, W): the first non-finite value in memory order is named by
    # its index in the array as the caller sees it
    nhwc = np.ones((2, 3, 4, 5), np.float32)
    nhwc[0, 2, 1, 4] = -np.inf   # n=0, h=2, w=1, c=4: earlier in memory than the next one
    nhwc[1, 0, 0, 0] = np.inf
    x = np.moveaxis(nhwc, -1, 1)
    with pytest.raises(bnorm.BnormError) as e:
        bnorm.check_finite(x)
    assert e.value.index == (0, 4, 2, 1) and e.value.channel == 4
    assert "-inf at index (0, 4, 2, 1)" in str(e.value)
    assert x[e.value.index] == -np.inf


def test_check_finite_per_channel_arrays_and_bad_input():
    w = np.array([1.0, np.inf, 2.0], np.float32)
    with pytest.raises(bnorm.BnormError) as e:
        bnorm.check_finite(w.reshape(1, -1))
    assert e.value.index == (0, 1) and e.value.channel == 1
    with pytest.raises(TypeError):
        bnorm.check_finite(np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError):
        bnorm.check_finite(np.zeros(3, np.float32))
    assert bnorm.check_finite(np.zeros((0, 3), np.float32)) is None
