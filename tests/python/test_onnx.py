"""bnorm.onnx.batch_normalization against ONNX's own reference and against ONNX Runtime.

- ONNX's reference: the numpy functions of python3-onnx's backend test cases
  (onnx.backend.test.case.node.batchnorm), evaluated in long double on the very inputs (float16,
  float32 and float64 values are exact there), so that its own rounding does not count; and the
  backend's exported test cases (test_batchnorm_*, the cases behind onnx's test data files), with
  the node's attributes as the model states them.
- ONNX Runtime: onnxruntime-node's CPU build (tests/peers, installed by tests/prerequisites.sh),
  run by tests/python/peers/onnx_run.js on BatchNormalization-15 models built here, all cases in
  one node process; inference and training mode, float16 to float64.

Tolerances follow where the rounding happens. Y is formed from two terms, the normalized input
and B, and is rounded in its own dtype, so its error is a few ulp of 1 + |Y - B| + |B|. In
training the batch mean itself is rounded to double, an error of up to an ulp of |mean| that Y
carries multiplied by |scale| / sqrt(var + epsilon): for mean 1e3 and std 1e-2 that is 1e5 ulp
of float64 for any double computation (the reference in long double is that much closer), and
well below an ulp of float32. ONNX Runtime's kernel computes X * a + b in X's dtype, whose error
at a large mean is that of the mean rounded to X's dtype; its tolerance says so.
Errors are checked elementwise in a way that fails on NaN.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest

try:
    import onnx
    import onnx.backend.test.case.node as onnx_node_cases
    import onnx.backend.test.case.node.batchnorm as onnx_batchnorm
    from onnx import helper, numpy_helper
except ImportError as err:  # a failure, not a skip: make test installs it
    pytest.fail("python3-onnx is missing (%s): apt-get install python3-onnx" % err,
                pytrace=False)

import bnorm
import bnorm.onnx

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "peers", "onnx_run.js")

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
EPS = {dt: float(np.finfo(dt).eps) for dt in (F16, F32, F64)}
COMPUTE = {F16: F32, F32: F32, F64: F64}  # bnorm.onnx computes float16 through float32
ONNX_TYPE = {F16: onnx.TensorProto.FLOAT16, F32: onnx.TensorProto.FLOAT,
             F64: onnx.TensorProto.DOUBLE}
NAMES = ("X", "scale", "B", "input_mean", "input_var")


def f32(v):
    """v as the float32 an ONNX attribute holds (epsilon and momentum are FLOAT attributes), so
    that bnorm, the reference and ONNX Runtime all use the same value."""
    return float(np.float32(v))


@dataclasses.dataclass
class Case:
    name: str
    inputs: tuple  # X, scale, B, input_mean, input_var
    epsilon: float = f32(1e-5)
    momentum: float = f32(0.9)
    training: bool = False

    def call(self):
        return bnorm.onnx.batch_normalization(*self.inputs, epsilon=self.epsilon,
                                              momentum=self.momentum,
                                              training_mode=self.training)


def make_case(name, shape, dtype=F32, offset=0.0, std=1.0, epsilon=1e-5, momentum=0.9,
              training=False, t1=None, t2=None, seed=0):
    """X of the shape with per-channel means near offset and spreads near std; input_mean and
    input_var of the same scale; scale and B of the order of 1. t1 and t2 are the dtypes of
    (scale, B) and (input_mean, input_var), X's by default."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    centre = offset + std * rng.standard_normal(c)
    spread = std * rng.uniform(0.5, 2.0, c)
    x = centre.reshape((1, c) + (1,) * (len(shape) - 2)) + \
        spread.reshape((1, c) + (1,) * (len(shape) - 2)) * rng.standard_normal(shape)
    t1, t2 = t1 or dtype, t2 or dtype
    inputs = (x.astype(dtype),
              rng.standard_normal(c).astype(t1), (3 * rng.standard_normal(c)).astype(t1),
              (offset + std * rng.standard_normal(c)).astype(t2),
              (std ** 2 * rng.uniform(0.5, 2.0, c)).astype(t2))
    return Case(name, inputs, f32(epsilon), f32(momentum), training)


# (name, offset, std, epsilon, momentum): the statistics' scales and the attributes
SCENARIOS = [
    ("unit", 0.0, 1.0, 1e-5, 0.9),
    ("mean1e3-std1e-2", 1e3, 1e-2, 1e-5, 0.9),
    ("var-below-eps", -5.0, 1e-3, 1e-3, 0.5),
    ("mean1e4-momentum0", 1e4, 30.0, 1e-2, 0.0),
    ("eps0-momentum1", 2.0, 3.0, 0.0, 1.0),
]
SHAPES = [(6, 3), (5, 2, 9), (3, 4, 5, 6), (2, 3, 4, 3, 5)]


def grid_cases():
    cases = []
    for training in (False, True):
        for dtype in (F32, F64):
            for k, (label, offset, std, eps, momentum) in enumerate(SCENARIOS):
                for rank, shape in enumerate(SHAPES, 2):
                    name = "%s-%s-rank%d-%s" % ("train" if training else "eval", dtype, rank,
                                                label)
                    cases.append(make_case(name, shape, dtype, offset, std, eps, momentum,
                                           training, seed=100 * k + rank))
    return cases


def special_cases():
    cases = []
    for training in (False, True):
        mode = "train" if training else "eval"
        cases += [
            make_case(mode + "-C1", (16, 1, 8, 8), F32, 1.0, 2.0, training=training),
            make_case(mode + "-C4096", (3, 4096, 2), F32, -2.0, 0.5, training=training),
            make_case(mode + "-C4096-float64", (3, 4096, 2), F64, -2.0, 0.5, training=training),
            make_case(mode + "-one-value-per-channel", (1, 5), F32, 3.0, 1.0, training=training),
            make_case(mode + "-one-value-rank4", (1, 3, 1, 1), F64, 3.0, 1.0, training=training),
            make_case(mode + "-float16", (4, 3, 5, 5), F16, 1.0, 2.0, training=training),
            make_case(mode + "-float16-T1-T2-float32", (4, 3, 5), F16, 1.0, 2.0,
                      training=training, t1=F32, t2=F32),
            make_case(mode + "-float32-T1-T2-float16", (4, 3, 5), F32, 1.0, 2.0,
                      training=training, t1=F16, t2=F16),
            make_case(mode + "-float32-T1-T2-float64", (4, 3, 5), F32, 1.0, 2.0,
                      training=training, t1=F64, t2=F64),
            make_case(mode + "-float64-T1-T2-float32", (4, 3, 5), F64, 1.0, 2.0,
                      training=training, t1=F32, t2=F32),
            make_case(mode + "-float32-T1-float16-T2-float64", (4, 3, 5), F32, 1.0, 2.0,
                      training=training, t1=F16, t2=F64),
        ]
    return cases


CASES = {case.name: case for case in grid_cases() + special_cases()}


# ------------------------------------------------------------------------------------------------
# The reference and the error model

def reference(case):
    """ONNX's reference on the case in long double: (Y,) in inference; in training (Y,
    running_mean, running_var, batch_mean, batch_var). The training function rounds Y to
    float32 whatever its input; its Y before that rounding is its test-mode function on the
    batch statistics, which it returns as the running ones when momentum is 0."""
    x, s, b, m, v = (a.astype(np.longdouble) for a in case.inputs)
    eps = np.longdouble(case.epsilon)
    if not case.training:
        return (onnx_batchnorm._batchnorm_test_mode(x, s, b, m, v, epsilon=eps),)
    _, batch_mean, batch_var = onnx_batchnorm._batchnorm_training_mode(
        x, s, b, m, v, momentum=np.longdouble(0), epsilon=eps)
    y = onnx_batchnorm._batchnorm_test_mode(x, s, b, batch_mean, batch_var, epsilon=eps)
    _, running_mean, running_var = onnx_batchnorm._batchnorm_training_mode(
        x, s, b, m, v, momentum=np.longdouble(case.momentum), epsilon=eps)
    return y, running_mean, running_var, batch_mean, batch_var


def per_channel(a, ndim):
    """A (C) array shaped to broadcast against (N, C, ...)."""
    return np.asarray(a, np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def bounds(case, ref, mean_rounding):
    """Elementwise error bounds of Y (and of the running statistics in training).

    mean_rounding: the relative precision to which the normalizing mean is known (bnorm: double
    in training, exact in inference unless input_mean is converted; ONNX Runtime: X's dtype)."""
    x, s, b, m, v = case.inputs
    out, compute, t2 = x.dtype, COMPUTE[x.dtype], m.dtype
    rounding = EPS[out] + 4 * EPS[compute]
    y = np.asarray(ref[0], np.float64)
    nd = x.ndim
    bias = per_channel(b, nd)
    y_bound = rounding * (1 + np.abs(y - bias) + np.abs(bias))
    mean = per_channel(ref[3] if case.training else m, nd)
    var = per_channel(ref[4] if case.training else v, nd)
    y_bound = y_bound + 2 * mean_rounding * np.abs(per_channel(s, nd)) * np.abs(mean) / \
        np.sqrt(var + case.epsilon)
    if not case.training:
        return (y_bound,)
    mom = case.momentum
    stat = EPS[t2] + 4 * EPS[compute]
    bm, bv = (np.asarray(a, np.float64) for a in ref[3:5])
    m64, v64 = m.astype(np.float64), v.astype(np.float64)
    mean_bound = stat * (np.abs(m64) * mom + np.abs(bm) * (1 - mom)) + \
        4 * EPS[F64] * (np.abs(bm) + np.sqrt(bv))
    var_bound = stat * (v64 * mom + bv * (1 - mom)) + \
        4 * mean_rounding * np.abs(bm) * np.sqrt(bv)
    return y_bound, mean_bound, var_bound


def bnorm_mean_rounding(case):
    x, _, _, m, _ = case.inputs
    rounding = EPS[F64] if case.training else 0.0
    if m.dtype != COMPUTE[x.dtype]:
        rounding += EPS[COMPUTE[x.dtype]]  # input_mean converted to the compute dtype
    return rounding


def assert_within(what, actual, expected, bound):
    actual = np.asarray(actual)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    err = np.abs(actual.astype(np.float64) - expected)
    bound = np.broadcast_to(bound, err.shape)
    ok = err <= bound  # False for NaN
    if not ok.all():
        worst = np.unravel_index(np.argmax(np.where(ok, -np.inf, err - bound)), err.shape)
        pytest.fail("%s: error %g > bound %g at %s (got %r, expected %r)" % (
            what, err[worst], bound[worst], worst, actual[worst], expected[worst]))


def check_outputs(case, got, ref, mean_rounding, who):
    """got: bnorm's or ONNX Runtime's outputs, against the reference ref."""
    x, _, _, m, _ = case.inputs
    outputs = got if case.training else (got,)
    assert len(outputs) == (3 if case.training else 1)
    assert outputs[0].dtype == x.dtype, (who, outputs[0].dtype)
    for name, out, expected, bound in zip(("Y", "running_mean", "running_var"), outputs, ref,
                                          bounds(case, ref, mean_rounding)):
        if name != "Y":
            assert out.dtype == m.dtype, (who, name, out.dtype)
        assert_within("%s %s %s" % (who, case.name, name), out, expected, bound)


# ------------------------------------------------------------------------------------------------
# Against ONNX's reference

@pytest.mark.parametrize("name", list(CASES))
def test_matches_onnx_reference(name):
    case = CASES[name]
    before = [a.copy() for a in case.inputs]
    got = case.call()
    check_outputs(case, got, reference(case), bnorm_mean_rounding(case), "bnorm")
    for a, b in zip(case.inputs, before):  # functional: nothing modified
        assert np.array_equal(a, b)


def exported_cases():
    """The backend test cases python3-onnx's BatchNormalization exporter makes (importing its
    module runs the exporter, which adds them to the node cases' list)."""
    cases = [c for c in onnx_node_cases._NodeTestCases
             if c.model.graph.node[0].op_type == "BatchNormalization"]
    assert len(cases) >= 4, [c.name for c in onnx_node_cases._NodeTestCases]
    return cases


def attributes(node):
    """epsilon, momentum and training_mode as the node states them, with ONNX's defaults."""
    given = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {"epsilon": given.get("epsilon", f32(1e-5)), "momentum": given.get("momentum", f32(0.9)),
            "training_mode": given.get("training_mode", 0)}


def test_exported_backend_cases():
    names = []
    for test_case in exported_cases():
        assert test_case.model.opset_import[0].version == 15
        node = test_case.model.graph.node[0]
        attrs = attributes(node)
        for inputs, outputs in test_case.data_sets:
            # through TensorProto and back, as the test data files hold them
            inputs = [numpy_helper.to_array(numpy_helper.from_array(a, n))
                      for a, n in zip(inputs, node.input)]
            case = Case(test_case.name, tuple(inputs), attrs["epsilon"], attrs["momentum"],
                        bool(attrs["training_mode"]))
            got = case.call()
            got = got if case.training else (got,)
            assert len(got) == len(outputs) == len(node.output)
            for name, a, b in zip(node.output, got, outputs):
                # the exported outputs were computed in float32 by numpy: a few of its ulp
                assert a.dtype == b.dtype and a.shape == b.shape, (test_case.name, name)
                assert_within("%s %s" % (test_case.name, name), a, b,
                              8 * EPS[F32] * np.maximum(1, np.abs(b)))
            # and tightly against the reference evaluated in long double
            check_outputs(case, case.call(), reference(case), bnorm_mean_rounding(case),
                          "bnorm")
        names.append(test_case.name)
    assert {"test_batchnorm_example", "test_batchnorm_epsilon",
            "test_batchnorm_example_training_mode",
            "test_batchnorm_epsilon_training_mode"} <= set(names)


# ------------------------------------------------------------------------------------------------
# Against ONNX Runtime

def make_model(case):
    """A BatchNormalization-15 model of the case's types and shapes, attributes as the case's."""
    x, s, _, m, _ = case.inputs
    inputs = [helper.make_tensor_value_info(n, ONNX_TYPE[a.dtype], list(a.shape))
              for n, a in zip(NAMES, case.inputs)]
    out_names = ["Y", "running_mean", "running_var"] if case.training else ["Y"]
    outputs = [helper.make_tensor_value_info("Y", ONNX_TYPE[x.dtype], list(x.shape))]
    outputs += [helper.make_tensor_value_info(n, ONNX_TYPE[m.dtype], [x.shape[1]])
                for n in out_names[1:]]
    node = helper.make_node("BatchNormalization", list(NAMES), out_names,
                            epsilon=case.epsilon, momentum=case.momentum,
                            training_mode=int(case.training))
    graph = helper.make_graph([node], "batchnorm", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    onnx.checker.check_model(model)
    return model


def run_onnxruntime(models_and_inputs, tmp):
    """Runs each (model, {name: array}) in one onnx_run.js process; returns, per model, a dict
    of its outputs or the error string ONNX Runtime gave."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: make test installs it (tests/prerequisites.sh, "
                    "apt-get install nodejs)", pytrace=False)
    specs = []
    for i, (model, arrays) in enumerate(models_and_inputs):
        onnx.save(model, os.path.join(tmp, "model%d.onnx" % i))
        spec = {}
        for name, a in arrays.items():
            file = "case%d_%s.bin" % (i, name)
            with open(os.path.join(tmp, file), "wb") as f:
                f.write(np.ascontiguousarray(a).tobytes())
            spec[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "file": file}
        specs.append({"model": "model%d.onnx" % i, "inputs": spec})
    with open(os.path.join(tmp, "cases.json"), "w") as f:
        json.dump(specs, f)
    proc = subprocess.run([node, RUNNER, tmp], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail("onnx_run.js failed (status %d): %s" % (proc.returncode, proc.stderr),
                    pytrace=False)
    with open(os.path.join(tmp, "results.json")) as f:
        entries = json.load(f)
    assert len(entries) == len(specs)
    results = []
    for entry in entries:
        if "error" in entry:
            results.append(entry["error"])
            continue
        outs = {}
        for name, spec in entry["outputs"].items():
            data = np.fromfile(os.path.join(tmp, spec["file"]), np.dtype(spec["dtype"]))
            outs[name] = data.reshape(spec["shape"])
        results.append(outs)
    return results


EMPTY = {
    "eval-N0": make_case("eval-N0", (0, 3, 4)),
    "train-N0": make_case("train-N0", (0, 3, 4), training=True),
    "train-spatial0": make_case("train-spatial0", (2, 3, 0), training=True),
}


@pytest.fixture(scope="module")
def onnxruntime(tmp_path_factory):
    """ONNX Runtime's outputs for every case (CASES, EMPTY and the exported backend cases), by
    name: a dict of arrays, or the error string it gave."""
    tmp = str(tmp_path_factory.mktemp("onnxruntime"))
    named = [(name, make_model(case), dict(zip(NAMES, case.inputs)))
             for name, case in list(CASES.items()) + list(EMPTY.items())]
    for test_case in exported_cases():
        inputs = test_case.data_sets[0][0]
        named.append((test_case.name, test_case.model,
                      dict(zip(test_case.model.graph.node[0].input, inputs))))
    results = run_onnxruntime([(m, a) for _, m, a in named], tmp)
    return {name: result for (name, _, _), result in zip(named, results)}


def ort_mean_rounding(case):
    """ONNX Runtime normalizes as X * a + b in X's dtype (float32 for float16): the mean enters
    rounded to it."""
    x = case.inputs[0]
    return EPS[COMPUTE[x.dtype]] + (EPS[F64] if case.training else 0.0)


def ort_implements(case):
    """ONNX Runtime's CPU kernel takes double X, scale, B, mean and var together, or none of them
    double; for the mixed types it has no implementation ("Could not find an implementation" /
    "Failed to find kernel for BatchNormalization(15)"). bnorm computes them; the reference
    checks them above."""
    doubles = {a.dtype == F64 for a in case.inputs}
    return len(doubles) == 1


@pytest.mark.parametrize("name", list(CASES))
def test_matches_onnxruntime(name, onnxruntime):
    case, result = CASES[name], onnxruntime[name]
    if not ort_implements(case):
        assert isinstance(result, str), result
        assert re.search(r"(Could not find an implementation|Failed to find kernel) for "
                         r"BatchNormalization\(15\)", result), result
        return
    assert isinstance(result, dict), "ONNX Runtime refused %s: %s" % (name, result)
    ref = reference(case)
    theirs = tuple(result[n] for n in ("Y", "running_mean", "running_var")[:len(result)])
    # ONNX Runtime's own outputs are within its error model of the reference ...
    check_outputs(case, theirs if case.training else theirs[0], ref, ort_mean_rounding(case),
                  "onnxruntime")
    # ... and ours within the sum of both models of its outputs
    ours = case.call()
    ours = ours if case.training else (ours,)
    both = [a + b for a, b in zip(bounds(case, ref, bnorm_mean_rounding(case)),
                                  bounds(case, ref, ort_mean_rounding(case)))]
    for out_name, a, b, bound in zip(("Y", "running_mean", "running_var"), ours, theirs, both):
        assert a.dtype == b.dtype
        assert_within("bnorm vs onnxruntime %s %s" % (name, out_name), a, b, bound)


def test_exported_backend_cases_match_onnxruntime(onnxruntime):
    for test_case in exported_cases():
        result = onnxruntime[test_case.name]
        assert isinstance(result, dict), (test_case.name, result)
        node = test_case.model.graph.node[0]
        attrs = attributes(node)
        inputs = test_case.data_sets[0][0]
        ours = bnorm.onnx.batch_normalization(*inputs, **attrs)
        ours = ours if attrs["training_mode"] else (ours,)
        for name, a in zip(node.output, ours):
            b = result[name]
            assert_within("%s %s" % (test_case.name, name), a, b,
                          8 * EPS[F32] * np.maximum(1, np.abs(b)))


def test_empty_batch(onnxruntime):
    """N = 0 (or a spatial size 0): an empty Y, as ONNX Runtime and the reference give. In
    training bnorm's running statistics are input_mean and input_var unchanged (new arrays), the
    engine's choice for a batch without statistics; ONNX Runtime and the numpy reference give NaN
    (the mean of no values, blended in), a difference the module's documentation states."""
    for name, case in EMPTY.items():
        x, _, _, m, v = case.inputs
        got = case.call()
        y = got[0] if case.training else got
        assert y.shape == x.shape and y.dtype == x.dtype
        ort = onnxruntime[name]
        assert isinstance(ort, dict), (name, ort)
        assert ort["Y"].shape == x.shape
        if not case.training:
            continue
        assert np.array_equal(got[1], m) and np.array_equal(got[2], v)
        assert got[1] is not m and got[2] is not v
        assert np.isnan(ort["running_mean"]).all() and np.isnan(ort["running_var"]).all(), ort
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            _, ref_mean, ref_var = onnx_batchnorm._batchnorm_training_mode(
                *case.inputs, momentum=case.momentum, epsilon=case.epsilon)
        assert np.isnan(ref_mean).all() and np.isnan(ref_var).all()


# ------------------------------------------------------------------------------------------------
# The function's contract: results are new arrays, types, errors

def test_results_are_new_arrays_and_inputs_unchanged():
    for layout in ("C", "channels-last", "strided"):
        case = make_case("layout", (4, 3, 5, 6), F32, 2.0, 0.5, training=True)
        x = case.inputs[0]
        if layout == "channels-last":
            x = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
        elif layout == "strided":
            x = np.repeat(x, 2, axis=3)[..., ::2]
        others = [np.array(a) for a in case.inputs[1:]]
        before = [a.copy() for a in (x, *others)]
        y, rm, rv = bnorm.onnx.batch_normalization(x, *others, training_mode=1)
        y_eval = bnorm.onnx.batch_normalization(x, *others)
        for a, b in zip((x, *others), before):
            assert np.array_equal(a, b)
        for out in (y, rm, rv, y_eval):
            assert not any(np.shares_memory(out, a) for a in (x, *others))
        laid_out = Case(layout, (x, *others), training=True)
        check_outputs(laid_out, (y, rm, rv), reference(laid_out), bnorm_mean_rounding(case),
                      "bnorm")


def test_read_only_and_big_endian_inputs():
    case = make_case("readonly", (4, 3, 5), F64, training=True)
    inputs = [a.copy() for a in case.inputs]
    for a in inputs:
        a.flags.writeable = False
    want = case.call()
    got = bnorm.onnx.batch_normalization(*inputs, case.epsilon, case.momentum, True)
    for a, b in zip(got, want):
        assert np.array_equal(a, b)
    swapped = [a.astype(a.dtype.newbyteorder(">")) for a in case.inputs]
    got = bnorm.onnx.batch_normalization(*swapped, case.epsilon, case.momentum, True)
    for a, b in zip(got, want):
        assert np.array_equal(a, b) and a.dtype == F64


def test_defaults_are_onnx_attributes():
    case = make_case("defaults", (5, 2, 3), F64)
    x, s, b, m, v = case.inputs
    assert np.array_equal(bnorm.onnx.batch_normalization(x, s, b, m, v),
                          bnorm.onnx.batch_normalization(x, s, b, m, v, 1e-5, 0.9, False))
    y, rm, rv = bnorm.onnx.batch_normalization(x, s, b, m, v, training_mode=True)
    y2, rm2, rv2 = bnorm.onnx.batch_normalization(X=x, scale=s, B=b, input_mean=m, input_var=v,
                                                  epsilon=1e-5, momentum=0.9, training_mode=1)
    assert np.array_equal(y, y2) and np.array_equal(rm, rm2) and np.array_equal(rv, rv2)


def test_goes_through_the_engine_with_the_onnx_preset():
    """Training mode is bnorm.forward_train with PRESETS["onnx"] (its eps and momentum replaced)
    on copies of the running statistics: the same bits."""
    case = make_case("engine", (6, 4, 7), F32, 3.0, 2.0, epsilon=1e-3, momentum=0.8,
                     training=True)
    x, s, b, m, v = case.inputs
    rm, rv = m.copy(), v.copy()
    options = bnorm.PRESETS["onnx"].replace(eps=case.epsilon, momentum=case.momentum)
    y, _, _ = bnorm.forward_train(x, s, b, rm, rv, options=options)
    got = case.call()
    for a, want in zip(got, (y, rm, rv)):
        assert np.array_equal(a, want)
    preset = bnorm.PRESETS["onnx"]
    assert preset.flags == bnorm.MOMENTUM_OF_OLD | bnorm.BIASED_RUNNING_VAR | bnorm.ONE_VALUE_OK
    assert (preset.eps, preset.momentum) == (1e-5, 0.9)
    assert np.array_equal(bnorm.onnx.batch_normalization(x, s, b, m, v, case.epsilon),
                          bnorm.forward_eval(x, m, v, s, b, case.epsilon))


def test_one_value_per_channel_gives_B():
    case = make_case("one", (1, 4), F64, 5.0, 2.0, training=True)
    y, rm, rv = case.call()
    x, _, b, m, v = case.inputs
    assert np.array_equal(y, b.reshape(1, 4))
    mom = case.momentum
    assert np.allclose(rm, m * mom + x[0] * (1 - mom), rtol=1e-15, atol=0)
    assert np.allclose(rv, v * mom, rtol=1e-15, atol=0)  # the batch variance is 0


def test_dtypes_of_the_results():
    for tx, t1, t2 in [(F16, F16, F16), (F16, F64, F32), (F32, F16, F64), (F64, F16, F16)]:
        case = make_case("dtypes", (3, 2, 4), tx, training=True, t1=t1, t2=t2)
        y, rm, rv = case.call()
        assert (y.dtype, rm.dtype, rv.dtype) == (tx, t2, t2)
        y = bnorm.onnx.batch_normalization(*case.inputs)
        assert y.dtype == tx


def test_float16_rounds_once_from_float32():
    case = make_case("half", (8, 3, 6), F16, 1.0, 3.0, training=True)
    y, rm, rv = case.call()
    wide = [a.astype(F32) for a in case.inputs]
    y32, rm32, rv32 = bnorm.onnx.batch_normalization(*wide, case.epsilon, case.momentum, True)
    assert np.array_equal(y, y32.astype(F16))
    assert np.array_equal(rm, rm32.astype(F16)) and np.array_equal(rv, rv32.astype(F16))


def test_type_errors():
    x, s, b, m, v = make_case("types", (3, 2, 4), F32).inputs
    with pytest.raises(TypeError, match="X must be float16, float32 or float64, got int64"):
        bnorm.onnx.batch_normalization(x.astype(np.int64), s, b, m, v)
    with pytest.raises(TypeError, match="scale must be float16, float32 or float64, got int32"):
        bnorm.onnx.batch_normalization(x, s.astype(np.int32), b, m, v)
    with pytest.raises(TypeError, match="input_var must be .* got complex128"):
        bnorm.onnx.batch_normalization(x, s, b, m, v.astype(np.complex128))
    with pytest.raises(TypeError, match="got longdouble|got float128"):
        bnorm.onnx.batch_normalization(x.astype(np.longdouble), s, b, m, v)
    with pytest.raises(TypeError, match=r"scale and B must have the same dtype \(ONNX's T1\)"):
        bnorm.onnx.batch_normalization(x, s, b.astype(F64), m, v)
    with pytest.raises(TypeError,
                       match=r"input_mean and input_var must have the same dtype \(ONNX's T2\)"):
        bnorm.onnx.batch_normalization(x, s, b, m.astype(F16), v, training_mode=True)


def test_shape_errors():
    x, s, b, m, v = make_case("shapes", (3, 2, 4), F32).inputs
    with pytest.raises(ValueError, match=r"X must have rank >= 2, \(N, C, D1, ...\), got shape "
                                         r"\(4,\)"):
        bnorm.onnx.batch_normalization(x[0, 0], s, b, m, v)
    with pytest.raises(ValueError, match="rank >= 2"):
        bnorm.onnx.batch_normalization(np.float32(1), s, b, m, v, training_mode=True)
    with pytest.raises(ValueError, match=r"X has no channels \(C = 0\)"):
        bnorm.onnx.batch_normalization(x[:, :0], s[:0], b[:0], m[:0], v[:0])
    with pytest.raises(ValueError, match=r"B must be 1-d with C = 2 elements .* got shape \(3,\)"):
        bnorm.onnx.batch_normalization(x, s, np.zeros(3, F32), m, v)
    with pytest.raises(ValueError, match=r"input_mean must be 1-d .* got shape \(1, 2\)"):
        bnorm.onnx.batch_normalization(x, s, b, m.reshape(1, 2), v, training_mode=True)
    with pytest.raises(ValueError, match=r"scale must be 1-d .* got shape \(\)"):
        bnorm.onnx.batch_normalization(x, np.float32(1), b, m, v)


@pytest.mark.parametrize("training", [False, True])
def test_attribute_errors(training):
    case = make_case("attributes", (3, 2, 4), F32, training=training)
    before = [a.copy() for a in case.inputs]
    for eps in (-1e-5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="epsilon must be finite and >= 0"):
            bnorm.onnx.batch_normalization(*case.inputs, epsilon=eps, training_mode=training)
    for momentum in (-0.1, 1.5, float("nan")):
        if training:
            with pytest.raises(ValueError,
                               match=r"momentum finite and in \[0, 1\], got epsilon=1e-05, "
                                     r"momentum=%r" % momentum) as info:
                bnorm.onnx.batch_normalization(*case.inputs, momentum=momentum,
                                               training_mode=True)
            # the C library's refusal, kept as the cause
            assert isinstance(info.value.__cause__, bnorm.BnormError)
            assert info.value.__cause__.name == "BN_ERR_ARGUMENT"
        else:  # momentum is not used in inference
            y = bnorm.onnx.batch_normalization(*case.inputs, momentum=momentum)
            assert np.array_equal(y, case.call())
    for a, b in zip(case.inputs, before):
        assert np.array_equal(a, b)


def test_documented():
    assert "BatchNormalization" in bnorm.onnx.__doc__
    assert bnorm.onnx.batch_normalization.__doc__
    readme = open(os.path.join(HERE, "..", "..", "README.md")).read()
    assert "bnorm.onnx.batch_normalization" in readme
