"""The conventions of bnorm.Options through the numpy API, against torch where torch has the
same rule: PyTorch's preset is torch.nn.functional.batch_norm, and frozen batch norm's three
independent choices (batch or stored statistics, update the running ones or not, affine
gradients or not) in every combination against the torch computation that makes each choice.
The other frameworks' formulas are tests/c/test_conventions.c's; ONNX and Keras are compared
with their runtimes in test_onnx.py and test_keras.py."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnorm


def _data(shape, seed, dtype=np.float64):
    g = np.random.default_rng(seed)
    c = shape[1]
    return (g.normal(3, 2, shape).astype(dtype), g.normal(0, 1, shape).astype(dtype),
            g.normal(1, 0.3, c).astype(dtype), g.normal(0, 0.5, c).astype(dtype),
            g.normal(0, 1, c).astype(dtype), g.uniform(0.5, 2, c).astype(dtype))


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (3, 2, 4, 4)])
def test_pytorch_preset_is_torch(shape):
    x, _, w, b, rm, rv = _data(shape, 1)
    rm_t, rv_t = torch.tensor(rm), torch.tensor(rv)
    want = F.batch_norm(torch.tensor(x), rm_t, rv_t, torch.tensor(w), torch.tensor(b), True,
                        0.1, 1e-5)
    y, _, _ = bnorm.forward_train(x, w, b, rm, rv, options=bnorm.PRESETS["pytorch"])
    np.testing.assert_allclose(y, want.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rm, rm_t.numpy(), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(rv, rv_t.numpy(), rtol=1e-14)


def _torch_choice(x, dy, w, b, rm, rv, stored, freeze, momentum=0.1, eps=1e-5):
    """What torch computes for this choice: y, dx, dweight, dbias, and the running statistics
    after the step."""
    xt = torch.tensor(x, requires_grad=True)
    wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    rm_t, rv_t = torch.tensor(rm), torch.tensor(rv)
    if stored:  # the stored statistics, as they were before the update
        y = F.batch_norm(xt, rm_t.clone(), rv_t.clone(), wt, bt, False, momentum, eps)
    else:
        y = F.batch_norm(xt, None, None, wt, bt, True, momentum, eps)
    if not freeze:  # torch's training update of the running statistics with this batch
        F.batch_norm(torch.tensor(x), rm_t, rv_t, None, None, True, momentum, eps)
    y.backward(torch.tensor(dy))
    return (y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy(),
            rm_t.numpy(), rv_t.numpy())


@pytest.mark.parametrize("stored,freeze,affine_grads", itertools.product([0, 1], repeat=3))
@pytest.mark.parametrize("shape,channels_last", [((5, 3, 4), False), ((4, 3, 3, 3), True),
                                                 ((7, 4), False)])
def test_frozen_choices_every_combination(stored, freeze, affine_grads, shape, channels_last):
    x, dy, w, b, rm, rv = _data(shape, 2 + stored + 2 * freeze)
    if channels_last:
        x = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
    want = _torch_choice(x, dy, w, b, rm, rv, stored, freeze)
    flags = (bnorm.STORED_STATS if stored else 0) | (bnorm.FREEZE_RUNNING if freeze else 0)
    opt = bnorm.Options(flags=flags)
    nbt = np.array([5], np.int64)
    y, sm, si = bnorm.forward_train(x, w, b, rm, rv, num_batches_tracked=nbt, options=opt)
    dx, dw, db = bnorm.backward(dy, x, sm, si, w, options=opt, affine_grads=bool(affine_grads))
    np.testing.assert_allclose(y, want[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, want[1], rtol=1e-10, atol=1e-11)
    if affine_grads:
        np.testing.assert_allclose(dw, want[2], rtol=1e-10, atol=1e-11)
        np.testing.assert_allclose(db, want[3], rtol=1e-12, atol=1e-12)
    else:
        assert dw is None and db is None
    np.testing.assert_allclose(rm, want[4], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(rv, want[5], rtol=1e-14)
    assert nbt[0] == (5 if freeze else 6)


def test_fix_gamma_ignores_the_weight_and_gives_it_no_gradient():
    x, dy, w, b, _, _ = _data((6, 3, 2), 3)
    opt = bnorm.PRESETS["mxnet"]
    y, sm, si = bnorm.forward_train(x, w, b, options=opt)
    y1, _, _ = bnorm.forward_train(x, None, b, options=opt)
    assert np.array_equal(y, y1)
    dx, dw, db = bnorm.backward(dy, x, sm, si, w, options=opt)
    assert np.all(dw == 0)
    dx1, _, db1 = bnorm.backward(dy, x, sm, si, None, options=opt)
    assert np.array_equal(dx, dx1) and np.array_equal(db, db1)


def test_presets_match_the_header():
    """bnorm.PRESETS mirror include/bnorm.h's BN_OPTIONS_* macros, field for field."""
    import re
    from pathlib import Path
    header = (Path(__file__).resolve().parents[2] / "include" / "bnorm.h").read_text()
    flags = {"BN_MOMENTUM_OF_OLD": bnorm.MOMENTUM_OF_OLD,
             "BN_BIASED_RUNNING_VAR": bnorm.BIASED_RUNNING_VAR,
             "BN_RUNNING_SUMS": bnorm.RUNNING_SUMS, "BN_FIX_GAMMA": bnorm.FIX_GAMMA,
             "BN_ONE_VALUE_OK": bnorm.ONE_VALUE_OK, "BN_STORED_STATS": bnorm.STORED_STATS,
             "BN_FREEZE_RUNNING": bnorm.FREEZE_RUNNING}
    for name, bit in flags.items():
        m = re.search(r"%s = 1 << (\d+)" % name, header)
        assert m and 1 << int(m.group(1)) == bit, name
    for fw in ["ONNX", "KERAS", "TENSORFLOW", "CAFFE", "MXNET", "FLAX"]:
        m = re.search(r"#define BN_OPTIONS_%s \\?\s*\{(.*?)\}" % fw, header, re.S)
        fields = [f.strip() for f in m.group(1).replace("\\", " ").split(",")]
        want = bnorm.PRESETS[fw.lower()]
        flag_value = 0
        for word in fields[3].split("|"):
            flag_value |= flags[word.strip()] if word.strip() != "0" else 0
        got = (float(fields[0]), float(fields[1]), int(fields[2]), flag_value, int(fields[4]),
               float(fields[5]))
        assert got == (want.eps, want.momentum, int(want.cumulative), want.flags,
                       want.virtual_batch, want.renorm_momentum), fw
        assert fields[6:9] == ["0", "HUGE_VAL", "HUGE_VAL"]


def test_errors_are_bnorm_errors_and_change_nothing():
    x, dy, w, b, rm, rv = _data((6, 2, 3), 4)
    rm0, rv0 = rm.copy(), rv.copy()
    with pytest.raises(bnorm.BnormError) as e:
        bnorm.forward_train(x, w, b, rm, rv, options=bnorm.PRESETS["keras"].replace(
            virtual_batch=4))
    assert e.value.name == "BN_ERR_SHAPE"
    with pytest.raises(bnorm.BnormError) as e:
        bnorm.forward_train(x, w, b, rm, rv, options=bnorm.Options(flags=1 << 12))
    assert e.value.name == "BN_ERR_ARGUMENT"
    with pytest.raises(bnorm.BnormError) as e:
        bnorm.forward_train(x, w, b, rm, None, options=bnorm.Options(flags=bnorm.STORED_STATS))
    assert e.value.name == "BN_ERR_NULL_POINTER"
    assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)
