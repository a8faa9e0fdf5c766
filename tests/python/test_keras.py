"""bnorm.keras.BatchNormalization against Keras's own arithmetic.

1. TensorFlow.js's Keras-style layer (tf.layers.batchNormalization of @tensorflow/tfjs, float32,
   run by tests/python/peers/keras_run.js in one node process for all the cases): the same
   arguments and weights, several training steps and inference, on inputs of rank 2 to 4 (TF.js
   refuses rank 5) with the channel axis anywhere. What TF.js gets wrong is not compared:
   - with a channel axis other than the last, its output is not normalized per channel, in
     training and in inference alike (its CPU kernel takes the channel of a value as its flat
     index modulo C); its moving statistics are right and are compared, and bnorm's output is
     compared with the formula of part 2 instead;
   - in training it reads gamma and beta even with scale=False or center=False (and throws), so
     those layers are compared with TF.js layers that have gamma fixed at 1 or beta at 0; TF.js's
     own scale=False / center=False layers are compared in inference.
2. tf-keras's batch renormalization and ghost batches (not in TF.js) against tf-keras's formulas
   written out below in numpy float64 (reference_step), step by step, every clipping.
3. Errors, and a failed call leaving the layer as it was.

A missing node or TF.js is a failure, not a skip: make test installs them
(tests/prerequisites.sh).
"""

import json
import math
import os
import shutil
import subprocess

import numpy as np
import pytest

import bnorm.keras as bk

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "peers", "keras_run.js")


# ------------------------------------------------------------------------------------------------
# tf-keras's training and inference step, in float64 (from its BatchNormalization.call)

def reference_step(x, axis, state, cfg, training):
    """One call of tf-keras's BatchNormalization (non-fused) on x, in float64.

    state holds float64 arrays (gamma and beta when present, moving_mean, moving_variance and
    with renorm moving_stddev, renorm_mean, renorm_stddev); training updates it. cfg holds the
    constructor's arguments. Returns y.
    """
    x = np.asarray(x, np.float64)
    a = axis % x.ndim
    if a == 0:  # a size-1 batch axis in front changes no statistic
        return reference_step(x[np.newaxis], 1, state, cfg, training)[0]
    eps = cfg.get("epsilon", 1e-3)
    momentum = cfg.get("momentum", 0.99)
    c = x.shape[a]
    gamma, beta = state.get("gamma", np.ones(c)), state.get("beta", np.zeros(c))
    if not training:
        shape = [1] * x.ndim
        shape[a] = x.shape[a]
        mean, var = state["moving_mean"].reshape(shape), state["moving_variance"].reshape(shape)
        return ((x - mean) / np.sqrt(var + eps) * np.reshape(gamma, shape)
                + np.reshape(beta, shape))
    # ghost batches: the batch read as (V, N/V, ...), ghost j being [:, j]; none: (N, 1, ...)
    v = cfg.get("virtual_batch_size") or x.shape[0]
    xs = x.reshape((v, x.shape[0] // v) + x.shape[1:])
    reduce = tuple(i for i in range(xs.ndim) if i not in (1, a + 1))
    ghost_mean = xs.mean(reduce, keepdims=True)
    ghost_var = xs.var(reduce, keepdims=True)          # biased
    shape = [1] * xs.ndim
    shape[a + 1] = x.shape[a]
    mean = ghost_mean.mean(1).reshape(-1)               # the means over the ghost batches
    var = ghost_var.mean(1).reshape(-1)
    w_scale, w_offset = gamma, beta
    if cfg.get("renorm"):
        clipping = cfg.get("renorm_clipping") or {}
        stddev = np.sqrt(var + eps)
        s = np.maximum(state["renorm_stddev"], np.sqrt(eps))
        r = stddev / s
        d = (mean - state["renorm_mean"]) / s
        rmin, rmax, dmax = (clipping.get(k) for k in ("rmin", "rmax", "dmax"))
        if rmin is not None:
            r = np.maximum(r, rmin)
        if rmax is not None:
            r = np.minimum(r, rmax)
        if dmax is not None:
            d = np.minimum(np.maximum(d, -dmax), dmax)
        rm = cfg.get("renorm_momentum", 0.99)
        state["renorm_mean"] = state["renorm_mean"] - (state["renorm_mean"] - mean) * (1 - rm)
        state["renorm_stddev"] = (state["renorm_stddev"]
                                  - (state["renorm_stddev"] - stddev) * (1 - rm))
        w_scale, w_offset = r * w_scale, d * w_scale + w_offset
    y = ((xs - ghost_mean) / np.sqrt(ghost_var + eps) * w_scale.reshape(shape)
         + w_offset.reshape(shape))
    state["moving_mean"] = state["moving_mean"] - (state["moving_mean"] - mean) * (1 - momentum)
    if cfg.get("renorm"):
        ms = state["moving_stddev"]
        ms = ms - (ms - np.sqrt(var + eps)) * (1 - momentum)
        state["moving_stddev"] = ms
        state["moving_variance"] = np.maximum(ms * ms - eps, 0)
    else:
        mv = state["moving_variance"]
        state["moving_variance"] = mv - (mv - var) * (1 - momentum)
    return y.reshape(x.shape)


def state_of(layer):
    """The layer's state as float64 copies, by name."""
    return {name: np.array(getattr(layer, name), np.float64) for name in layer._state_names()}


def inputs(rng, shape, axis, dtype, steps, spread=1.0):
    """Batches whose channels differ in mean and scale, drifting from step to step."""
    a = axis % len(shape)
    c = shape[a]
    bshape = [1] * len(shape)
    bshape[a] = c
    out = []
    for k in range(steps):
        loc = (np.linspace(-2, 3, c) + 0.7 * k).reshape(bshape)
        scale = (np.geomspace(0.3, 3, c) * spread ** k).reshape(bshape)
        out.append((loc + scale * rng.standard_normal(shape)).astype(dtype))
    return out


def assert_close(got, want, rtol, atol, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.abs(got - want) - rtol * np.abs(want)
    worst = float(np.max(err)) if err.size else 0.0
    assert worst <= atol, "%s: off by %g beyond rtol %g (max |diff| %g)" % (
        what, worst, rtol, float(np.max(np.abs(got - want))))


# ------------------------------------------------------------------------------------------------
# 1. TensorFlow.js

SHAPES = {2: (5, 3), 3: (4, 3, 5), 4: (3, 4, 5, 2)}
# (momentum, epsilon, center, scale)
CONFIGS = [(0.99, 1e-3, True, True), (0.5, 1e-5, True, True), (0.0, 0.1, True, True),
           (0.9, 1e-3, False, True), (0.9, 1e-3, True, False), (0.9, 1e-3, False, False)]
STEPS = (False, True, True, True, False)  # training, step by step


def _tfjs_cases():
    cases = []
    seed = 0
    for rank, shape in SHAPES.items():
        for axis in (-1, 0, 1, 2, -2):
            if not -rank <= axis < rank:
                continue
            for momentum, eps, center, scale in CONFIGS:
                seed += 1
                cases.append(dict(
                    id="rank%d-axis%d-m%g-eps%g%s%s" % (rank, axis, momentum, eps,
                                                        "" if center else "-nocenter",
                                                        "" if scale else "-noscale"),
                    shape=shape, axis=axis, seed=seed, steps=STEPS,
                    args=dict(axis=axis, momentum=momentum, epsilon=eps, center=center,
                              scale=scale),
                    # TF.js's training needs gamma and beta: 1 and 0 stand for none
                    tfjs_args=dict(axis=axis, momentum=momentum, epsilon=eps)))
    # TF.js's own scale=False / center=False layers, in inference
    for rank, axis in ((2, -1), (3, 2), (4, -1)):
        for center, scale in ((False, True), (True, False), (False, False)):
            seed += 1
            args = dict(axis=axis, momentum=0.9, epsilon=1e-3, center=center, scale=scale)
            cases.append(dict(
                id="inference-rank%d-axis%d%s%s" % (rank, axis, "" if center else "-nocenter",
                                                    "" if scale else "-noscale"),
                shape=SHAPES[rank], axis=axis, seed=seed, steps=(False, False), args=args,
                tfjs_args=args))
    # what TF.js refuses, as the module docstring says
    args = dict(axis=-1, momentum=0.9, epsilon=1e-3)
    for name, shape, tfjs_args, error in (
            ("rank5", (2, 3, 2, 2, 3), args, "not implemented for array of rank 5"),
            ("training-noscale", (4, 3), dict(args, scale=False), "reading 'read'"),
            ("training-nocenter", (4, 3), dict(args, center=False), "reading 'read'")):
        seed += 1
        cases.append(dict(id="tfjs-refuses-" + name, shape=shape, axis=-1, seed=seed,
                          steps=(True,), args=tfjs_args, tfjs_args=tfjs_args, error=error))
    for c in cases:
        rng = np.random.default_rng(c["seed"])
        n = c["shape"][c["axis"] % len(c["shape"])]
        c["init"] = dict(gamma=rng.uniform(0.5, 2, n), beta=rng.standard_normal(n),
                         moving_mean=rng.standard_normal(n),
                         moving_variance=rng.uniform(0.5, 2, n))
        c["init"] = {k: v.astype(np.float32) for k, v in c["init"].items()}
        c["x"] = inputs(rng, c["shape"], c["axis"], np.float32, len(c["steps"]))
    return cases


TFJS_CASES = _tfjs_cases()


def _tfjs_weights(case):
    init, args = case["init"], case["tfjs_args"]
    names = (["gamma"] if args.get("scale", True) else []) + \
        (["beta"] if args.get("center", True) else []) + ["moving_mean", "moving_variance"]
    weights = []
    for name in names:
        w = init[name]
        if name == "gamma" and not case["args"].get("scale", True):
            w = np.ones_like(w)
        if name == "beta" and not case["args"].get("center", True):
            w = np.zeros_like(w)
        weights.append([float(v) for v in w])
    return weights


@pytest.fixture(scope="module")
def tfjs_results():
    """TF.js's outputs and moving statistics for every case, from one node process."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: make test installs nodejs (tests/prerequisites.sh)")
    payload = [dict(args=c["tfjs_args"], shape=list(c["shape"]), weights=_tfjs_weights(c),
                    steps=[dict(x=[float(v) for v in x.ravel()], training=t)
                           for x, t in zip(c["x"], c["steps"])])
               for c in TFJS_CASES]
    run = subprocess.run([node, RUNNER], input=json.dumps(payload), capture_output=True,
                         text=True, timeout=300, check=False)
    if run.returncode != 0:
        pytest.fail("keras_run.js failed (status %d): %s" % (run.returncode, run.stderr))
    results = json.loads(run.stdout)
    assert len(results) == len(TFJS_CASES)
    return {c["id"]: r for c, r in zip(TFJS_CASES, results)}


def _layer_for(case):
    layer = bk.BatchNormalization(**case["args"])
    layer.build(case["shape"], np.float32)
    layer.set_weights([case["init"][name] for name in layer._state_names()])
    return layer


@pytest.mark.parametrize("case", TFJS_CASES, ids=[c["id"] for c in TFJS_CASES])
def test_against_tfjs(case, tfjs_results):
    result = tfjs_results[case["id"]]
    if "error" in case:
        assert case["error"] in result.get("error", ""), result
        return
    assert "error" not in result, result.get("error")
    layer = _layer_for(case)
    ref_state = state_of(layer)
    last_axis = case["axis"] % len(case["shape"]) == len(case["shape"]) - 1
    for k, (x, training, tfjs) in enumerate(zip(case["x"], case["steps"], result["steps"])):
        y = layer(x, training=training)
        want = reference_step(x, case["axis"], ref_state, case["args"], training)
        what = "%s step %d (%s)" % (case["id"], k, "training" if training else "inference")
        assert y.dtype == np.float32 and y.shape == x.shape
        if last_axis:  # TF.js's output is wrong for other axes
            assert_close(y, np.reshape(tfjs["y"], x.shape), 1e-5, 1e-5, what + " y vs TF.js")
        assert_close(y, want, 1e-5, 1e-5, what + " y vs formula")
        for name in ("moving_mean", "moving_variance"):
            assert_close(getattr(layer, name), tfjs[name], 1e-5, 1e-6, what + " " + name)


# ------------------------------------------------------------------------------------------------
# 2. renorm and ghost batches against the formulas

CLIPPINGS = {
    "none": None,
    "rmin-rmax": {"rmin": 0.8, "rmax": 1.5},
    "rmax": {"rmax": 1.2},
    "dmax": {"dmax": 0.5},
    "dmax0": {"dmax": 0.0},
    "all": {"rmin": 0.7, "rmax": 1.3, "dmax": 0.25},
    # tf-keras's max-then-min: rmin above rmax gives r = rmax; a negative rmin clips nothing
    "rmin-above-rmax": {"rmin": 2.0, "rmax": 1.1},
    "rmin-negative": {"rmin": -1.0, "dmax": 1.0},
    "keys-none": {"rmin": None, "rmax": None, "dmax": 0.3},
}
LAYOUTS = {"nhwc": (-1, (6, 4, 5, 3)), "nchw": (1, (6, 3, 4, 5)), "nc": (-1, (6, 3)),
           "ncl": (1, (6, 3, 7))}
DTYPES = {"float32": (np.float32, 2e-5, 2e-6), "float64": (np.float64, 1e-12, 1e-13)}


def _run_against_reference(cfg, axis, shape, dtype, steps=4, seed=0, spread=1.0):
    np_dtype, rtol, atol = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    layer = bk.BatchNormalization(**cfg)
    xs = inputs(rng, shape, axis, np_dtype, steps + 1, spread)
    layer(xs[0])  # builds
    c = shape[axis % len(shape)]
    # a state away from its initial values, so that each array counts
    for name in layer._state_names():
        positive = name in ("gamma", "moving_variance", "moving_stddev", "renorm_stddev")
        getattr(layer, name)[...] = rng.uniform(0.5, 2, c) if positive else rng.standard_normal(c)
    state = state_of(layer)
    for k, x in enumerate(xs):
        training = k < steps
        y = layer(x, training=training)
        want = reference_step(x, axis, state, cfg, training)
        what = "step %d (%s)" % (k, "training" if training else "inference")
        assert y.dtype == np_dtype
        assert_close(y, want, rtol, atol, what + " y")
        for name in layer._state_names():
            assert getattr(layer, name).dtype == np_dtype
            assert_close(getattr(layer, name), state[name], rtol, atol, what + " " + name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("virtual", [None, 2, 3])
@pytest.mark.parametrize("clipping", CLIPPINGS)
def test_renorm(clipping, virtual, layout, dtype):
    axis, shape = LAYOUTS[layout]
    cfg = dict(axis=axis, momentum=0.8, epsilon=1e-3, renorm=True,
               renorm_clipping=CLIPPINGS[clipping], renorm_momentum=0.6,
               virtual_batch_size=virtual)
    _run_against_reference(cfg, axis, shape, dtype, spread=1.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("virtual", [None, 1, 2, 3, 6])
def test_ghost_batches(virtual, layout, dtype):
    axis, shape = LAYOUTS[layout]
    cfg = dict(axis=axis, momentum=0.7, epsilon=1e-3, virtual_batch_size=virtual)
    _run_against_reference(cfg, axis, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False),
                                          (False, False)])
def test_renorm_ghosts_center_scale(center, scale, dtype):
    cfg = dict(axis=-1, momentum=0.5, epsilon=1e-2, center=center, scale=scale, renorm=True,
               renorm_clipping={"rmax": 1.4, "dmax": 0.4}, renorm_momentum=0.3,
               virtual_batch_size=3)
    _run_against_reference(cfg, -1, (6, 5, 4), dtype, spread=0.5)


@pytest.mark.parametrize("renorm", [False, True])
@pytest.mark.parametrize("axis,shape", [
    (0, (4,)), (-1, (4,)), (0, (5, 3)), (0, (4, 3, 2)), (2, (4, 3, 5, 2)), (-2, (4, 3, 5, 2)),
    (1, (2, 3, 2, 2, 4)), (-1, (2, 3, 2, 2, 4)), (3, (2, 3, 2, 2, 4)), (2, (2, 1, 3, 1, 1))])
def test_any_axis_and_rank(axis, shape, renorm):
    """Ranks 1 to 5 (TF.js stops at 4) with the channel axis anywhere, against the formula; rank
    1 and (N, C, 1...) with N = 1 have one value per channel and give beta."""
    cfg = dict(axis=axis, momentum=0.6, epsilon=1e-3, renorm=renorm,
               renorm_clipping={"rmax": 1.5, "dmax": 0.5}, renorm_momentum=0.4)
    _run_against_reference(cfg, axis, shape, "float64", steps=3)


@pytest.mark.parametrize("virtual", [None, 2])
@pytest.mark.parametrize("make", ["fortran", "strided", "transposed", "channels_last_view"])
def test_input_memory(make, virtual):
    """Inputs in memory of any strides give the values of a C-contiguous copy (to rounding: the
    engine sees another layout, so sums in another order)."""
    rng = np.random.default_rng(5)
    base = rng.standard_normal((4, 6, 5, 6))
    x = {"fortran": np.asfortranarray(base),
         "strided": base[:, ::2, :, ::2],
         "transposed": base.transpose(0, 3, 2, 1),
         "channels_last_view": np.moveaxis(np.ascontiguousarray(np.moveaxis(base, 1, -1)),
                                           -1, 1)}[make]
    for axis in (1, 2, -1):
        cfg = dict(axis=axis, momentum=0.5, renorm=True, virtual_batch_size=virtual)
        a, b = bk.BatchNormalization(**cfg), bk.BatchNormalization(**cfg)
        for training in (True, True, False):
            assert_close(a(x, training=training), b(np.ascontiguousarray(x), training=training),
                         1e-14, 1e-14, "%s axis %d y" % (make, axis))
        for name in a._state_names():
            assert_close(getattr(a, name), getattr(b, name), 1e-14, 1e-14, name)


def test_no_copy_for_the_engine(monkeypatch):
    """axis=-1 reaches the engine as its channels-last layout, a C-contiguous input with any
    other channel axis as its channels-first layout: the same memory, not a copy."""
    seen = []
    for name in ("forward_train", "forward_train_renorm", "forward_eval"):
        real = getattr(bk, name)
        monkeypatch.setattr(bk, name, lambda x, *a, _real=real, **k: (seen.append(x),
                                                                        _real(x, *a, **k))[1])
    x = np.random.default_rng(1).standard_normal((4, 3, 5, 6)).astype(np.float32)
    for axis in (-1, 0, 1, 2):
        for renorm in (False, True):
            layer = bk.BatchNormalization(axis=axis, renorm=renorm)
            for training in (True, False):
                seen.clear()
                layer(x, training=training)
                (view,) = seen
                assert np.shares_memory(view, x)
                layout_ok = view.flags.c_contiguous or np.moveaxis(view, 1, -1).flags.c_contiguous
                assert layout_ok, (axis, view.shape, view.strides)
    # ghost batches keep the batch axis: the last or second axis as it is
    for axis in (1, -1):
        seen.clear()
        bk.BatchNormalization(axis=axis, virtual_batch_size=2)(x, training=True)
        assert np.shares_memory(seen[0], x) and seen[0].shape[0] == 4


# ------------------------------------------------------------------------------------------------
# The layer's state and calls

def test_initial_state_and_inference_first():
    """Keras creates the weights at the first call, training or not, with its initial values."""
    layer = bk.BatchNormalization()
    assert not layer.built and layer.gamma is None and layer.moving_mean is None
    assert not hasattr(layer, "moving_stddev")
    x = np.random.default_rng(2).standard_normal((3, 4, 5)).astype(np.float32)
    y = layer(x)
    assert layer.built
    for name, value in (("gamma", 1), ("beta", 0), ("moving_mean", 0), ("moving_variance", 1)):
        a = getattr(layer, name)
        assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (5,)
        np.testing.assert_array_equal(a, value)
    assert_close(y, x / np.sqrt(np.float64(1) + 1e-3), 1e-6, 1e-7, "y")
    assert [w.shape for w in layer.get_weights()] == [(5,)] * 4

    layer = bk.BatchNormalization(axis=1, center=False, scale=False, renorm=True)
    layer(np.zeros((2, 3), np.float64), training=False)
    assert layer.gamma is None and layer.beta is None
    for name, value in (("moving_mean", 0), ("moving_variance", 1), ("moving_stddev", 1),
                        ("renorm_mean", 0), ("renorm_stddev", 1)):
        a = getattr(layer, name)
        assert a.dtype == np.float64 and a.shape == (3,)
        np.testing.assert_array_equal(a, value)
    assert len(layer.weights) == 5


def test_weights_in_keras_order():
    layer = bk.BatchNormalization(renorm=True)
    assert layer.weights == [] and layer.get_weights() == []
    layer.build((None, 2))
    names = ["gamma", "beta", "moving_mean", "moving_variance", "moving_stddev", "renorm_mean",
             "renorm_stddev"]
    values = [np.full(2, k, np.float64) for k in range(7)]
    layer.set_weights(values)
    for name, want, got in zip(names, values, layer.get_weights()):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(getattr(layer, name), want)
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="expecting 7 weights"):
        layer.set_weights(values[:6])
    with pytest.raises(ValueError, match="not compatible"):
        layer.set_weights(values[:6] + [np.zeros(3)])
    np.testing.assert_array_equal(layer.renorm_stddev, 6)
    with pytest.raises(ValueError, match="expecting 0 weights"):
        bk.BatchNormalization().set_weights(values[:4])


def test_dtypes():
    rng = np.random.default_rng(3)
    x64 = rng.standard_normal((6, 3))
    x32 = x64.astype(np.float32)
    # the first call sets the dtype; later inputs are cast to it, as Keras casts to its own
    a, b = bk.BatchNormalization(momentum=0.5), bk.BatchNormalization(momentum=0.5)
    a(x32, training=True)
    b(x32, training=True)
    y = a(x64, training=True)
    assert y.dtype == np.float32 and a.moving_mean.dtype == np.float32
    np.testing.assert_array_equal(y, b(x32, training=True))
    np.testing.assert_array_equal(a.moving_variance, b.moving_variance)
    # float16 builds a float32 layer (Keras's default policy casts it to float32)
    c = bk.BatchNormalization()
    y = c(x64.astype(np.float16), training=True)
    assert y.dtype == np.float32 and c.gamma.dtype == np.float32
    # lists work as arrays; integers are refused
    assert bk.BatchNormalization()([[1.0, 2.0], [3.0, 5.0]]).dtype == np.float64
    with pytest.raises(TypeError, match="floating"):
        bk.BatchNormalization()(np.ones((2, 3), np.int32))
    with pytest.raises(TypeError, match="floating"):
        a(np.ones((2, 3), np.int64))


def test_trainable_false_and_training_none():
    x = np.random.default_rng(4).standard_normal((5, 2))
    layer = bk.BatchNormalization()
    layer(x)
    before = layer.get_weights()
    np.testing.assert_array_equal(layer(x, training=None), layer(x, training=False))
    layer.trainable = False
    np.testing.assert_array_equal(layer(x, training=True), layer(x))
    for a, b in zip(before, layer.get_weights()):
        np.testing.assert_array_equal(a, b)
    layer.trainable = True
    layer(x, training=1)
    assert not np.array_equal(before[2], layer.moving_mean)


def test_empty_batch_leaves_the_state():
    for cfg in ({}, {"renorm": True}, {"virtual_batch_size": 2}, {"renorm": True,
                                                                   "virtual_batch_size": 3}):
        layer = bk.BatchNormalization(**cfg)
        layer(np.ones((6, 2, 3)), training=True)
        before = layer.get_weights()
        for shape in ((0, 2, 3), (6, 0, 3)):
            y = layer(np.ones(shape), training=True)
            assert y.shape == shape and y.dtype == np.float64
        for a, b in zip(before, layer.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_arguments_read_at_each_call():
    """Changing an argument between calls counts, as a Keras layer's attribute does."""
    x = np.random.default_rng(6).standard_normal((4, 3))
    layer = bk.BatchNormalization()
    layer(x, training=True)
    layer.momentum = 0.0
    layer(x, training=True)
    np.testing.assert_allclose(layer.moving_mean, x.mean(0), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(layer.moving_variance, x.var(0), rtol=1e-14, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# 3. Errors, and a failed call changes nothing

def _unchanged(layer, call, error, match):
    """call(layer) raises error and leaves every state array and the built flag as they were."""
    built = layer.built
    before = {name: None if getattr(layer, name) is None else np.array(getattr(layer, name))
              for name in layer._state_names()}
    arrays = {name: getattr(layer, name) for name in layer._state_names()}
    with pytest.raises(error, match=match):
        call(layer)
    assert layer.built == built
    for name, value in before.items():
        assert getattr(layer, name) is arrays[name]
        if value is None:
            assert getattr(layer, name) is None
        else:
            np.testing.assert_array_equal(getattr(layer, name), value)


def _trained(**cfg):
    layer = bk.BatchNormalization(**cfg)
    layer(np.random.default_rng(7).standard_normal((6, 4, 3)), training=True)
    return layer


@pytest.mark.parametrize("training", [True, False])
def test_call_errors(training):
    x = np.random.default_rng(8).standard_normal((6, 4, 3))
    for cfg in ({}, {"renorm": True}, {"virtual_batch_size": 3, "renorm": True}):
        # a later call with another channel count, or another rank
        _unchanged(_trained(**cfg), lambda l: l(x[:, :, :2], training=training), ValueError,
                   "expected axis -1 of input shape to have value 3")
        _unchanged(_trained(**cfg), lambda l: l(x[:, 0], training=training), ValueError,
                   "expected ndim=3, found ndim=2")
        # the axis outside the input, first call or later
        for axis in (3, -4):
            _unchanged(bk.BatchNormalization(axis=axis, **cfg), lambda l: l(x, training=training),
                       ValueError, "Invalid axis")
        _unchanged(bk.BatchNormalization(**cfg), lambda l: l(np.float64(1), training=training),
                   ValueError, "Invalid axis")
        # a state array replaced by one of the wrong dtype or size: the engine refuses it
        layer = _trained(**cfg)
        layer.gamma = np.ones(3, np.float32)
        _unchanged(layer, lambda l: l(x, training=training), TypeError, "dtype")
        layer = _trained(**cfg)
        layer.beta = np.zeros(4)
        _unchanged(layer, lambda l: l(x, training=training), RuntimeError, "should contain 3")
    # ghost batches that do not divide the batch (tf-keras's reshape fails in inference too)
    for layer in (_trained(virtual_batch_size=3), bk.BatchNormalization(virtual_batch_size=4),
                  _trained(virtual_batch_size=2, renorm=True)):
        _unchanged(layer, lambda l: l(x[:5], training=training), ValueError,
                   "does not divide the batch size 5")
    # ghost batches need the batch axis kept
    for axis in (0, -3):
        _unchanged(bk.BatchNormalization(axis=axis, virtual_batch_size=2),
                   lambda l: l(x, training=training), ValueError, "axis cannot include 0")


def test_constructor_errors():
    B = bk.BatchNormalization
    with pytest.raises(TypeError, match="axis"):
        B(axis=1.0)
    with pytest.raises(TypeError, match="axis"):
        B(axis="channels_last")
    with pytest.raises(NotImplementedError, match="several axes"):
        B(axis=[1, 2])
    layer = B(axis=[1])  # one axis in a list is that axis
    y = layer(np.ones((2, 3, 4)) * np.arange(3)[:, None], training=True)
    assert layer.gamma.shape == (3,) and np.all(np.abs(y) < 1e-6)
    assert B(axis=(-1,))(np.ones((2, 4))).shape == (2, 4)
    for kwargs in ({"momentum": 1.5}, {"momentum": -0.1}, {"epsilon": -1e-3},
                   {"epsilon": math.inf}, {"epsilon": math.nan},
                   {"renorm": True, "renorm_momentum": 2.0}):
        with pytest.raises(ValueError):
            B(**kwargs)
    for v in (0, -2):
        with pytest.raises(ValueError, match="positive integer"):
            B(virtual_batch_size=v)
    for v in (2.0, "2", True):
        with pytest.raises(TypeError, match="virtual_batch_size"):
            B(virtual_batch_size=v)
    # renorm_clipping, as tf-keras checks it: only with renorm, known keys
    with pytest.raises(ValueError, match="contains keys not in"):
        B(renorm=True, renorm_clipping={"rmax": 2.0, "r_max": 3.0})
    with pytest.raises(TypeError, match="dict"):
        B(renorm=True, renorm_clipping=[("rmax", 2.0)])
    for clipping in ({"rmax": -1.0}, {"dmax": -0.5}, {"rmin": math.nan}):
        with pytest.raises(ValueError, match="renorm_clipping"):
            B(renorm=True, renorm_clipping=clipping)
    for clipping in ({"rmax": "2"}, {"dmax": True}, {"rmin": np.ones(2)}):
        with pytest.raises(TypeError, match="real number"):
            B(renorm=True, renorm_clipping=clipping)
    B(renorm=False, renorm_clipping={"nonsense": 1})  # ignored without renorm, as tf-keras
    B(renorm=True, renorm_clipping={"rmax": np.float32(2), "dmax": np.array(1)})
    # an argument made invalid after construction fails the call, leaving the state
    layer = _trained(renorm=True)
    layer.renorm_clipping = {"dmax": -1.0}
    _unchanged(layer, lambda l: l(np.ones((6, 4, 3)), training=True), ValueError, "dmax")
    layer = _trained()
    layer.momentum = 7
    _unchanged(layer, lambda l: l(np.ones((6, 4, 3)), training=True), ValueError, "momentum")


def test_repr():
    assert repr(bk.BatchNormalization()) == \
        "BatchNormalization(axis=-1, momentum=0.99, epsilon=0.001)"
    assert "renorm=True" in repr(bk.BatchNormalization(renorm=True, virtual_batch_size=2))
