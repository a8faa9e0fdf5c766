"""PyTorch 1.13's own BatchNorm tests, run on torch's batch norm or, swapped in, on bnorm's.

    /usr/bin/python3 tests/python/pytorch_suite.py torch|bnorm [PART ...]

With `bnorm`, torch.nn.BatchNorm1d/2d/3d (also as torch.nn.modules.* and
torch.nn.modules.batchnorm.*) become bnorm.torch's classes, the lazy modules turn into them, and
torch.nn.functional.batch_norm calls bnorm.torch.batch_norm; all of this before
torch.testing._internal is imported, since its test tables capture the classes and the function
when they are built. Then the tests of each PART (all three by default) are built from those
tables and run, and one JSON object per test is printed on stdout:
{"part", "name", "passed", "outcome", "error"} (error: the exception, null when it passed),
after a first line {"captured": {place: module}} naming the module of what the tables hold
(bnorm.* once swapped, torch.* otherwise).

  nn       common_nn's module_tests + new_module_tests configurations of a BatchNorm, as
           test/test_nn.py turns them into TestNN methods (NewModuleTest, and its eval twin where
           the configuration asks for check_eval), on the CPU.
  modules  the ModuleInfo entries of module_db for BatchNorm1d/2d/3d (1.13 has 2d and 3d),
           through the CPU tests of test/test_modules.py, float32 and float64, train and eval.
  ops      the OpInfo entries of op_db for nn.functional.batch_norm that have CPU dtypes (with
           bnorm, float16 added to them: BNORM_EXTRA_CPU_DTYPES), through
           test/test_ops_gradients.py (gradcheck, gradgradcheck, forward AD, forward over
           reverse) and the CPU tests of test/test_ops.py that apply to an op with no out=, no
           method or in-place variant and no reference.

The test bodies of `modules` and `ops` are written here after pytorch 1.13.1's test files (they
are not installed); the tables, the gradcheck wrappers and the parametrizing decorators (whose
ModuleInfo / OpInfo skips and tolerances apply as in pytorch) are torch.testing._internal's own.
Tests those files would only skip here (CUDA ones, in-place variants the op lacks, the
'without_cudnn' variant that has no CPU dtypes) are not built. An outcome is "passed",
"failed", "error", "skipped", "expected failure" (passed) or "unexpected success".

torch.testing._internal imports expecttest, which Debian 12 does not package: when it is
missing a stand-in with its two names the BatchNorm tests touch (ACCEPT, TestCase) is used.
"""

import contextlib
import functools
import itertools
import json
import sys
import tempfile
import threading
import traceback
import types
import unittest
import warnings
from collections.abc import Sequence
from copy import deepcopy
from inspect import isgenerator, signature
from operator import methodcaller
from unittest.mock import patch

PARTS = ("nn", "modules", "ops")
BN_NAMES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
SWAPPED = []  # [True] once swap_in_bnorm has run


# ---- the swap ------------------------------------------------------------------------------

def swap_in_bnorm():
    """Make torch.nn's BatchNorm1d/2d/3d and F.batch_norm bnorm's, in this process."""
    import torch
    import torch.nn.functional as F
    import torch.nn.modules
    import torch.nn.modules.batchnorm
    import bnorm.torch as bt

    torch_batch_norm = F.batch_norm
    inside = threading.local()

    # bnorm hands the calls it does not compute to torch.nn.functional.batch_norm, looked up
    # when called: once swapped that is this function, so a call made from inside bnorm goes to
    # torch's own.
    @functools.wraps(bt.batch_norm)
    def batch_norm(*args, **kwargs):
        if getattr(inside, "active", False):
            return torch_batch_norm(*args, **kwargs)
        inside.active = True
        try:
            return bt.batch_norm(*args, **kwargs)
        finally:
            inside.active = False

    for name in BN_NAMES:
        for namespace in (torch.nn, torch.nn.modules, torch.nn.modules.batchnorm):
            setattr(namespace, name, getattr(bt, name))
        getattr(torch.nn, "Lazy" + name).cls_to_become = getattr(bt, name)
    F.batch_norm = batch_norm
    SWAPPED.append(True)


# What bnorm computes beyond torch 1.13's CPU kernel: float16, forward and backward (torch
# refuses it on the CPU). With bnorm swapped in, the OpInfo of nn.functional.batch_norm lists it
# too, so that test_dtypes checks bnorm's claim as it checks torch's (and fails should float16
# stop working, or should another dtype start).
BNORM_EXTRA_CPU_DTYPES = ("float16",)


def claim_bnorm_dtypes(op):
    import torch
    extra = {getattr(torch, name) for name in BNORM_EXTRA_CPU_DTYPES}
    op.dtypes = set(op.dtypes) | extra
    op.backward_dtypes = set(op.backward_dtypes) | extra


def provide_expecttest():
    try:
        import expecttest  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("expecttest")
        stand_in.ACCEPT = False
        stand_in.TestCase = unittest.TestCase
        sys.modules["expecttest"] = stand_in


# ---- running and reporting -----------------------------------------------------------------

def describe(exc):
    """The exception as `Type: message`, then the exceptions it was raised from or while
    handling (composite_compliance's "failed with the above error" names no cause itself)."""
    lines = []
    seen = set()
    while exc is not None and id(exc) not in seen and len(seen) < 4:
        seen.add(id(exc))
        if lines:
            lines.append("-- raised while handling, or from:")
        lines.append("".join(traceback.format_exception_only(type(exc), exc)).strip())
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return "\n".join(lines)


class JsonResult(unittest.TestResult):
    """Prints one JSON line per test as soon as it ends (a crash keeps what was printed); the
    name of the test under way goes to stderr first, to tell which one a crash stopped."""

    def __init__(self, part, out):
        super().__init__()
        self.part = part
        self.out = out

    def _emit(self, test, outcome, err=None, reason=None):
        error = describe(err[1]) if err is not None else reason
        record = {"part": self.part, "name": type(test).__name__ + "." + test._testMethodName,
                  "passed": outcome in ("passed", "expected failure"),
                  "outcome": outcome, "error": error}
        print(json.dumps(record), file=self.out, flush=True)

    def startTest(self, test):
        super().startTest(test)
        print("running %s.%s" % (type(test).__name__, test._testMethodName), file=sys.stderr,
              flush=True)

    def addSuccess(self, test):
        self._emit(test, "passed")

    def addFailure(self, test, err):
        self._emit(test, "failed", err)

    def addError(self, test, err):
        self._emit(test, "error", err)

    def addSkip(self, test, reason):
        self._emit(test, "skipped", reason="skipped: " + str(reason))

    def addExpectedFailure(self, test, err):
        self._emit(test, "expected failure", err)

    def addUnexpectedSuccess(self, test):
        self._emit(test, "unexpected success", reason="passed, but marked as an expected failure")


def run_classes(part, classes, out):
    suite = unittest.TestSuite()
    loader = unittest.TestLoader()
    for cls in classes:
        suite.addTests(loader.loadTestsFromTestCase(cls))
    suite.run(JsonResult(part, out))


def for_cpu(cls):
    """The CPU class instantiate_device_type_tests makes of cls (TestModule -> TestModuleCPU)."""
    from torch.testing._internal.common_device_type import instantiate_device_type_tests
    scope = {cls.__name__: cls}
    instantiate_device_type_tests(cls, scope, only_for="cpu")
    return list(scope.values())


# ---- nn: common_nn's configurations, as test_nn.py adds them -------------------------------

def nn_classes():
    import torch
    from torch.testing._internal import common_nn
    from torch.testing._internal.common_utils import freeze_rng_state

    class TestNN(common_nn.NNTestCase):
        """What NewModuleTest asks of test_nn.py's TestNN, which also makes float64 the default
        dtype (for the module and the inputs the test creates)."""

        def setUp(self):
            super().setUp()
            self._default_dtype = torch.get_default_dtype()
            torch.set_default_dtype(torch.double)

        def tearDown(self):
            torch.set_default_dtype(self._default_dtype)
            super().tearDown()

        def _forward(self, module, input):
            with freeze_rng_state():
                return module(*input) if isinstance(input, tuple) else module(input)

        def _backward(self, module, input, output, grad_output, create_graph=False):
            output.backward(grad_output, retain_graph=True, create_graph=create_graph)
            inputs = input if isinstance(input, tuple) else (input,)
            grads = tuple(None if i.grad is None else i.grad.data for i in inputs)
            return grads if isinstance(input, tuple) else grads[0]

        def _zero_grad_parameters(self, module):
            for p in module.parameters():
                if p.grad is not None:
                    with torch.no_grad():
                        p.grad.zero_()
                    p.grad.detach_()

        def _get_parameters(self, module):
            params = list(module.parameters())
            return params, [p.grad for p in params]

    def add(test, decorator):
        name = test.get_name()
        if hasattr(TestNN, name):
            raise RuntimeError("two tests named " + name)
        if not getattr(test, "test_cpu", True):
            return

        def method(self, test=test):
            test(self)
        setattr(TestNN, name, decorator(method) if decorator is not None else method)

    def evaluating(constructor):
        def make(*args, **kwargs):
            module = constructor(*args, **kwargs)
            module.training = False
            return module
        make.__name__ = constructor.__name__
        return make

    for config in common_nn.module_tests + common_nn.new_module_tests:
        label = config.get("module_name") or config.get("fullname") or \
            getattr(config.get("constructor"), "__name__", "")
        if "batchnorm" not in label.lower():
            continue
        params = dict(config)
        if "constructor" not in params:
            params["constructor"] = getattr(torch.nn, params.pop("module_name"))
        decorator = params.pop("decorator", None)
        add(common_nn.NewModuleTest(**params), decorator)
        if "check_eval" in params:
            desc = params.get("desc")
            params["desc"] = "eval" if desc is None else desc + "_eval"
            params["constructor"] = evaluating(params["constructor"])
            add(common_nn.NewModuleTest(**params), decorator)
        # test_nn.py also makes a long-tensor twin; no BatchNorm configuration asks for one
        assert "check_with_long_tensor" not in params, label
    return [TestNN]


# ---- modules: module_db's ModuleInfos, through test_modules.py's CPU tests -----------------

def module_classes():
    import torch
    from torch.testing._internal.common_modules import module_db, modules, TrainEvalMode
    from torch.testing._internal.common_utils import (
        TestCase, freeze_rng_state, get_tensors_from, gradcheck, gradgradcheck, mock_wrapper)

    classes = tuple(getattr(torch.nn, name) for name in BN_NAMES)
    infos = [info for info in module_db if info.module_cls in classes]

    def each_input(module_info, device, dtype, training, requires_grad):
        """The module inputs that have a forward input."""
        for module_input in module_info.module_inputs_func(
                module_info, device=device, dtype=dtype, requires_grad=requires_grad,
                training=training):
            if module_input.forward_input is not None:
                yield module_input

    def build(module_info, module_input, device, dtype, training):
        args = module_input.constructor_input.args
        kwargs = module_input.constructor_input.kwargs
        m = module_info.module_cls(*args, **kwargs)
        m.to(device).to(dtype)
        m.train(training)
        return m

    def traverse(obj, fn):
        """fn applied to every tensor of nested tuples, lists, generators and dicts."""
        if isinstance(obj, (tuple, list)):
            return type(obj)(traverse(o, fn) for o in obj)
        if isgenerator(obj):
            return tuple(traverse(o, fn) for o in obj)
        if isinstance(obj, dict):
            return {k: traverse(v, fn) for k, v in obj.items()}
        if isinstance(obj, torch.Tensor):
            return fn(obj)
        return None

    class TestModule(TestCase):
        precision = 1e-5
        rel_tol = 1e-5

        def assert_placed(self, module, device, dtype):
            """Every parameter and buffer on device; the floating ones of dtype."""
            device = torch.device(device)
            for kind, items in (("parameter", module.named_parameters()),
                                ("buffer", module.named_buffers())):
                for name, t in items:
                    self.assertEqual(t.device, device, f"{kind} {name} on {t.device}")
                    if t.dtype.is_floating_point:
                        self.assertEqual(t.dtype, dtype, f"{kind} {name} of {t.dtype}")

        @modules(infos)
        def test_forward(self, device, dtype, module_info, training):
            to_dtype = {torch.float32: methodcaller("float"),
                        torch.float64: methodcaller("double")}
            for module_input in each_input(module_info, device, dtype, training, False):
                with freeze_rng_state():
                    m = build(module_info, module_input, device, dtype, training)
                    fwd = module_input.forward_input
                    args, kwargs = fwd.args, fwd.kwargs
                    out = m(*args, **kwargs)
                    if module_input.reference_fn is not None:
                        self.assertEqual(out, module_input.reference_fn(m, *args, **kwargs))
                    # .float() / .double() keep the module working and of that dtype
                    if dtype in to_dtype:
                        to_dtype[dtype](m)
                        m(*args, **kwargs)
                        self.assert_placed(m, device, dtype)

        @modules(infos)
        def test_factory_kwargs(self, device, dtype, module_info, training):
            for module_input in module_info.module_inputs_func(
                    module_info, device=device, dtype=dtype, requires_grad=False,
                    training=training):
                args = module_input.constructor_input.args
                kwargs = dict(module_input.constructor_input.kwargs)
                # does the constructor make parameters or buffers of its own (from tensors not
                # passed to it)? Watched through Parameter.__new__ and register_buffer.
                new_param = mock_wrapper(torch.nn.Parameter.__new__)
                new_buffer = mock_wrapper(torch.nn.Module.register_buffer)
                with patch.object(torch.nn.Parameter, "__new__", new_param), \
                        patch.object(torch.nn.Module, "register_buffer", new_buffer):
                    module_info.module_cls(*args, **kwargs).train(training)
                given = get_tensors_from(args, kwargs)
                makes_own = any(
                    call_tensors and not given.intersection(call_tensors)
                    for mock in (new_param.mock, new_buffer.mock)
                    for call_tensors in (get_tensors_from(a, k) for a, k in mock.call_args_list))
                if not makes_own:
                    continue
                kwargs.update(device=device, dtype=dtype)
                if issubclass(module_info.module_cls, torch.nn.modules.lazy.LazyModuleMixin):
                    raise NotImplementedError("lazy modules: not among the BatchNorm entries")
                m = module_info.module_cls(*args, **kwargs)
                m.train(training)
                self.assert_placed(m, device, dtype)

        @modules(infos)
        def test_repr(self, device, dtype, module_info, training):
            for module_input in module_info.module_inputs_func(
                    module_info, device=device, dtype=dtype, requires_grad=False,
                    training=training):
                m = build(module_info, module_input, device, dtype, training)
                repr(m)
                str(m)

        @modules(infos)
        def test_pickle(self, device, dtype, module_info, training):
            for module_input in each_input(module_info, device, dtype, training, False):
                with freeze_rng_state():
                    m = build(module_info, module_input, device, dtype, training)
                    fwd = module_input.forward_input
                    args, kwargs = fwd.args, fwd.kwargs
                    out = m(*args, **kwargs)
                    with tempfile.TemporaryFile() as f:
                        torch.save(m, f)
                        f.seek(0)
                        copy = torch.load(f)
                    self.assertEqual(out, copy(*args, **kwargs))

        @modules([info for info in infos
                  if "inplace" in signature(info.module_cls).parameters])
        def test_check_inplace(self, device, dtype, module_info, training):
            raise NotImplementedError("no BatchNorm takes inplace=")

        @modules(infos)
        def test_non_contiguous_tensors(self, device, dtype, module_info, training):
            def non_contiguous(obj):
                def one(t):
                    if t.dim() == 0:
                        return t
                    nc = torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach()
                    nc.requires_grad = t.requires_grad
                    return nc
                return traverse(obj, one)

            def grads(obj):
                return traverse(obj, lambda t: t.grad if t.requires_grad else None)

            def clear(obj):
                def one(t):
                    t.grad = None
                traverse(obj, one)

            def backward(out, grad):
                outs, _ = torch.utils._pytree.tree_flatten(out)
                gs, _ = torch.utils._pytree.tree_flatten(grad)
                for o, g in zip(outs, gs):
                    o.backward(g, retain_graph=True)

            for module_input in each_input(module_info, device, dtype, training, True):
                args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
                m = build(module_info, module_input, device, dtype, training)
                traverse((args, kwargs), lambda t: t.retain_grad() if t.requires_grad else None)

                with freeze_rng_state():
                    expected = m(*args, **kwargs)
                    grad_out = traverse(expected, lambda o: o.clone().detach_().normal_())
                    backward(expected, grad_out)
                expected_args_grad, expected_kwargs_grad = deepcopy(grads((args, kwargs)))
                expected_param_grad = deepcopy([p.grad for p in m.parameters()])

                inputs = [(args, kwargs), non_contiguous((args, kwargs))]
                grad_outs = [grad_out, non_contiguous(grad_out)]
                for (a, k), g in itertools.product(inputs, grad_outs):
                    g = deepcopy(g)
                    clear((a, k))
                    clear(list(m.parameters()))
                    with freeze_rng_state():
                        out = m(*a, **k)
                        backward(out, g)
                    args_grad, kwargs_grad = grads((a, k))
                    self.assertEqual(out, expected)
                    self.assertEqual(args_grad, expected_args_grad, atol=1e-4, rtol=0)
                    self.assertEqual(kwargs_grad, expected_kwargs_grad, atol=1e-4, rtol=0)
                    self.assertEqual([p.grad for p in m.parameters()], expected_param_grad)

        def check_gradients(self, device, dtype, module_info, training, check):
            """check (gradcheck or gradgradcheck) over the forward inputs and the parameters."""
            for module_input in each_input(module_info, device, dtype, training, True):
                m = build(module_info, module_input, device, dtype, training)
                args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
                if issubclass(module_info.module_cls, torch.nn.modules.lazy.LazyModuleMixin):
                    with torch.no_grad():
                        m(*args, **kwargs)
                tensor_kwargs = [(k, v) for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
                other_kwargs = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
                flat, spec = torch.utils._pytree.tree_flatten(
                    tuple(args) + tuple(m.parameters()) + tuple(v for _, v in tensor_kwargs))

                def fn(*flat_inputs):
                    unflat = torch.utils._pytree.tree_unflatten(flat_inputs, spec)
                    new_args = unflat[:len(args)]
                    new_kwargs = {k: v for (k, _), v in
                                  zip(tensor_kwargs, unflat[len(unflat) - len(tensor_kwargs):])}
                    with freeze_rng_state():
                        out = m(*new_args, **new_kwargs, **other_kwargs)
                        return torch.utils._pytree.tree_flatten(out)[0]

                # on the CPU test_modules.py's nondeterminism tolerance is 0
                self.assertTrue(check(fn, flat, nondet_tol=0.0))

        @modules(infos, allowed_dtypes=[torch.double])
        def test_grad(self, device, dtype, module_info, training):
            self.check_gradients(device, dtype, module_info, training, gradcheck)

        @modules([info for info in infos if info.supports_gradgrad],
                 allowed_dtypes=[torch.double])
        def test_gradgrad(self, device, dtype, module_info, training):
            self.check_gradients(device, dtype, module_info, training, gradgradcheck)

        @modules(infos)
        def test_memory_format(self, device, dtype, module_info, training):
            affects_out = module_info.module_memformat_affects_out

            def has_dim(obj, n):
                if isinstance(obj, torch.Tensor):
                    return obj.dim() == n
                if isinstance(obj, (tuple, list)):
                    return any(has_dim(o, n) for o in obj)
                return False

            def to_format(fmt, obj):
                def one(t):
                    if (fmt == torch.channels_last and t.dim() != 4) or \
                            (fmt == torch.channels_last_3d and t.dim() != 5):
                        return t
                    return t.to(memory_format=fmt)
                return traverse(obj, one)

            def check_format(out, input_fmt, module_fmt):
                def one(o):
                    if o.dim() == 4 and (input_fmt == torch.channels_last or
                                         (module_fmt == torch.channels_last and affects_out)):
                        self.assertTrue(o.is_contiguous(memory_format=torch.channels_last))
                    elif o.dim() == 5 and (input_fmt == torch.channels_last_3d or
                                           (module_fmt == torch.channels_last_3d and affects_out)):
                        self.assertTrue(o.is_contiguous(memory_format=torch.channels_last_3d))
                    else:
                        self.assertTrue(o.is_contiguous())
                traverse(out, one)

            for module_input in each_input(module_info, device, dtype, training, False):
                fwd = module_input.forward_input
                if has_dim(fwd.args, 4):
                    special = [torch.channels_last]
                elif has_dim(fwd.args, 5):
                    special = [torch.channels_last_3d]
                else:
                    special = []
                input_formats = [torch.contiguous_format] + special
                module_formats = [torch.preserve_format, torch.contiguous_format] + special
                with freeze_rng_state():
                    m = build(module_info, module_input, device, dtype, training)
                    expected = m(*fwd.args, **fwd.kwargs)
                    for input_fmt in input_formats:
                        fwd.args = to_format(input_fmt, fwd.args)
                        fwd.kwargs = to_format(input_fmt, fwd.kwargs)
                        for module_fmt in module_formats:
                            m.to(memory_format=module_fmt)
                            out = m(*fwd.args, **fwd.kwargs)
                            self.assertEqual(out, expected)
                            check_format(out, input_fmt, module_fmt)

        @modules(infos, train_eval_mode=TrainEvalMode.train_only)
        def test_if_train_and_eval_modes_differ(self, device, dtype, module_info, training):
            # a forward pass that reads self.training must be declared train_and_eval_differ
            for module_input in each_input(module_info, device, dtype, training, False):
                m = build(module_info, module_input, device, dtype, training)
                delattr(m, "training")
                try:
                    m(*module_input.forward_input.args, **module_input.forward_input.kwargs)
                except AttributeError as e:
                    if "'training'" not in str(e):
                        raise
                    self.assertTrue(module_info.train_and_eval_differ,
                                    f"{module_info.name} reads training in forward but its "
                                    "ModuleInfo says train_and_eval_differ=False")

    return for_cpu(TestModule)


# ---- ops: op_db's nn.functional.batch_norm, through test_ops_gradients.py and test_ops.py --

def op_classes():
    from functools import partial

    import torch
    from torch._subclasses.fake_tensor import (
        DataDependentOutputException, DynamicOutputShapeException, FakeTensor, FakeTensorMode,
        UnsupportedFakeTensorException)
    from torch._subclasses.fake_utils import outputs_alias_inputs
    from torch.testing._internal import composite_compliance
    from torch.testing._internal.common_device_type import OpDTypes, onlyCPU, ops
    from torch.testing._internal.common_dtype import (
        all_types_and_complex_and, floating_and_complex_types_and)
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.testing._internal.common_utils import (
        TestCase, clone_input_helper, gradcheck, gradgradcheck, is_iterable_of_tensors,
        is_slow_gradcheck_env, noncontiguous_like, suppress_warnings)
    from torch.utils._pytree import tree_flatten, tree_map
    from torch.utils._python_dispatch import TorchDispatchMode
    import torch._prims as prims

    bn_ops = [op for op in op_db
              if op.name == "nn.functional.batch_norm" and op.supported_dtypes("cpu")]
    if SWAPPED:
        for op in bn_ops:
            claim_bnorm_dtypes(op)
    NO_FORWARD_AD = r"Trying to use forward AD with .* that does not support it"
    gradcheck_ops = partial(ops, dtypes=OpDTypes.supported,
                            allowed_dtypes=[torch.double, torch.cdouble])

    def grad_inputs(sample):
        """The tensors of a sample that require grad, in order, and fn(*those) calling the op's
        variant on the sample with them put back (test_ops_gradients.py's recomposition)."""
        def slots():
            yield sample.input
            yield from sample.args
            yield from sample.kwargs.values()
        if is_iterable_of_tensors(sample.input):
            raise NotImplementedError("tensor-list inputs: batch_norm has none")
        leaves = tuple(t for t in slots() if isinstance(t, torch.Tensor) and t.requires_grad)

        def rebuild(values):
            it = iter(values)

            def put(x):
                return next(it) if isinstance(x, torch.Tensor) and x.requires_grad else x
            first = put(sample.input)
            args = [put(a) for a in sample.args]
            kwargs = {k: put(v) for k, v in sample.kwargs.items()}
            return first, args, kwargs
        return leaves, rebuild

    class TestGradients(TestCase):
        exact_dtype = True

        def check(self, device, dtype, op, variant, check, *, check_forward_ad=False,
                  check_backward_ad=True, check_batched_grad=None,
                  check_batched_forward_grad=False):
            self.assertTrue(op.supports_dtype(dtype, torch.device(device).type))
            samples = op.sample_inputs(device, dtype, requires_grad=True,
                                       include_conjugated_inputs=(op.test_conjugated_samples
                                                                  and dtype.is_complex),
                                       small_inputs_only=is_slow_gradcheck_env())
            for sample in samples:
                leaves, rebuild = grad_inputs(sample)

                def fn(*values, sample=sample, rebuild=rebuild):
                    first, args, kwargs = rebuild(values)
                    out = op.gradcheck_wrapper(variant, first, *args, **kwargs)
                    if sample.output_process_fn_grad is not None:
                        return sample.output_process_fn_grad(out)
                    return out

                if check == "gradcheck":
                    batched = op.check_batched_grad if check_batched_grad is None \
                        else check_batched_grad
                    self.assertTrue(gradcheck(
                        fn, leaves, check_batched_grad=batched, check_grad_dtypes=True,
                        nondet_tol=op.gradcheck_nondet_tol, fast_mode=op.gradcheck_fast_mode,
                        check_forward_ad=check_forward_ad, check_backward_ad=check_backward_ad,
                        check_undefined_grad=True,
                        check_batched_forward_grad=check_batched_forward_grad))
                    continue
                self.assertFalse(check_forward_ad)
                for non_contig_grad_outputs in (False, True):
                    kwargs = dict(gen_non_contig_grad_outputs=non_contig_grad_outputs,
                                  check_batched_grad=op.check_batched_gradgrad,
                                  check_grad_dtypes=True, nondet_tol=op.gradcheck_nondet_tol,
                                  fast_mode=op.gradcheck_fast_mode)
                    if check == "fwgrad_bwgrad":
                        kwargs.update(check_fwd_over_rev=True, check_rev_over_rev=False,
                                      check_batched_grad=False, check_undefined_grad=False)
                    self.assertTrue(gradgradcheck(fn, leaves, **kwargs))

        def require_autograd(self, op, device, dtype):
            self.assertIn(dtype, op.supported_backward_dtypes(torch.device(device).type))
            self.assertTrue(op.supports_autograd or op.supports_forward_ad)

        @gradcheck_ops(bn_ops)
        def test_fn_grad(self, device, dtype, op):
            self.require_autograd(op, device, dtype)
            self.check(device, dtype, op, op.get_op(), "gradcheck")

        @gradcheck_ops(bn_ops)
        def test_fn_gradgrad(self, device, dtype, op):
            self.require_autograd(op, device, dtype)
            self.assertTrue(op.supports_gradgrad)
            self.check(device, dtype, op, op.get_op(), "bwgrad_bwgrad")

        @gradcheck_ops(bn_ops)
        def test_fn_fwgrad_bwgrad(self, device, dtype, op):
            self.require_autograd(op, device, dtype)
            if op.supports_fwgrad_bwgrad:
                self.check(device, dtype, op, op.get_op(), "fwgrad_bwgrad")
            else:
                with self.assertRaisesRegex(NotImplementedError, NO_FORWARD_AD):
                    self.check(device, dtype, op, op.get_op(), "fwgrad_bwgrad")

        @gradcheck_ops(bn_ops)
        def test_forward_mode_AD(self, device, dtype, op):
            self.require_autograd(op, device, dtype)

            def run():
                self.check(device, dtype, op, op.get_op(), "gradcheck", check_forward_ad=True,
                           check_backward_ad=False, check_batched_grad=False,
                           check_batched_forward_grad=op.check_batched_forward_grad)
            if op.supports_forward_ad:
                run()
            else:
                with self.assertRaisesRegex(NotImplementedError, NO_FORWARD_AD):
                    run()

    class TestCommon(TestCase):
        exact_dtype = True

        @suppress_warnings
        @ops(bn_ops, allowed_dtypes=(torch.float32, torch.long, torch.complex64))
        def test_noncontiguous_samples(self, device, dtype, op):
            # the same results, and gradients, from noncontiguous copies of every sample
            test_grad = dtype in op.supported_backward_dtypes(torch.device(device).type)
            for sample in op.sample_inputs(device, dtype, requires_grad=test_grad):
                nc = sample.noncontiguous()
                first = sample.input if isinstance(sample.input, torch.Tensor) else sample.input[0]
                self.assertIsNone(first.grad)
                self.assertIsNone(first.grad_fn)
                expected = op(sample.input, *sample.args, **sample.kwargs)
                actual = op(nc.input, *nc.args, **nc.kwargs)
                self.assertEqual(actual, expected)
                if not test_grad:
                    continue
                expected = sample.output_process_fn_grad(expected)
                actual = sample.output_process_fn_grad(actual)
                if isinstance(expected, torch.Tensor):
                    g_expected = torch.randn_like(expected)
                    g_actual = noncontiguous_like(g_expected)
                elif isinstance(expected, Sequence):
                    expected = [t for t in expected
                                if isinstance(t, torch.Tensor) and t.requires_grad]
                    actual = [t for t in actual if isinstance(t, torch.Tensor) and t.requires_grad]
                    g_expected = [torch.randn_like(t) for t in expected]
                    g_actual = [noncontiguous_like(g) for g in g_expected]
                else:
                    continue

                def needing_grad(s):
                    inputs = (s.input,) if isinstance(s.input, torch.Tensor) else tuple(s.input)
                    return [t for t in inputs + tuple(s.args)
                            if isinstance(t, torch.Tensor) and t.requires_grad]
                t_inputs, n_inputs = needing_grad(sample), needing_grad(nc)
                self.assertEqual(len(t_inputs), len(n_inputs))
                t_grads = torch.autograd.grad(expected, t_inputs, g_expected, allow_unused=True)
                n_grads = torch.autograd.grad(actual, n_inputs, g_actual, allow_unused=True)
                for i, (t, n) in enumerate(zip(t_grads, n_grads)):
                    self.assertEqual(t, n, msg=f"contiguous / noncontiguous gradients differ "
                                               f"for input {i}")

        def check_refuses_out(self, op, samples):
            """An op without out= must raise when given one (the first sample is enough)."""
            self.assertFalse(op.supports_out, "out= is tested here only for ops without it")
            for sample in samples:
                expected = op(sample.input, *sample.args, **sample.kwargs)
                self.assertTrue(isinstance(expected, torch.Tensor) or
                                is_iterable_of_tensors(expected, include_empty=True))
                with self.assertRaises(Exception):
                    assert op(sample.input, *sample.args, **sample.kwargs,
                              out=expected) != NotImplemented
                return

        @ops(bn_ops, dtypes=OpDTypes.none)
        def test_out_warning(self, device, op):
            supported = op.supported_dtypes(self.device_type)
            self.assertTrue(supported)
            dtype = torch.float32 if torch.float32 in supported else list(supported)[0]
            self.check_refuses_out(op, op.sample_inputs(device, dtype))

        @ops(bn_ops, dtypes=OpDTypes.any_one)
        def test_out(self, device, dtype, op):
            self.check_refuses_out(op, op.sample_inputs(device, dtype))

        @ops(bn_ops, dtypes=OpDTypes.supported, allowed_dtypes=(torch.float, torch.cfloat))
        def test_variant_consistency_eager(self, device, dtype, op):
            # the method, in-place, operator and alias variants agree with the function,
            # forward and backward (batch_norm has none of them: the function runs alone)
            inplace_ops = [op.inplace_variant, op.inplace_operator_variant]
            variants = [op.method_variant, op.inplace_variant, op.operator_variant,
                        op.inplace_operator_variant]
            operators = [op.operator_variant, op.inplace_operator_variant]
            for alias in op.aliases:
                variants += [alias.op, alias.method_variant, alias.inplace_variant]
                inplace_ops.append(alias.inplace_variant)
            inplace_ops = [v for v in inplace_ops if v is not None]
            variants = [v for v in variants if v is not None]
            operators = [v for v in operators if v is not None]
            with_grad = dtype in op.supported_backward_dtypes(torch.device(device).type)
            samples = list(op.sample_inputs(
                device, dtype, requires_grad=with_grad,
                include_conjugated_inputs=op.test_conjugated_samples and dtype.is_complex))

            for sample in samples:
                tensor = sample.input if isinstance(sample.input, torch.Tensor) else sample.input[0]
                process = sample.output_process_fn_grad or (lambda x: x)
                tensor.grad = None
                expected = op(sample.input, *sample.args, **sample.kwargs)
                skip_inplace = isinstance(expected, torch.Tensor) and \
                    expected.dtype is not tensor.dtype
                expected_grad = None
                if isinstance(expected, torch.Tensor) and with_grad:
                    process(expected).sum().backward()
                    expected_grad = tensor.grad
                for variant in variants:
                    if variant in inplace_ops and skip_inplace:
                        continue
                    tensor.grad = None
                    given = clone_input_helper(sample.input) if variant in inplace_ops \
                        else sample.input
                    if variant in inplace_ops and sample.broadcasts_input:
                        with self.assertRaises(RuntimeError):
                            variant(given, *sample.args, **sample.kwargs)
                        continue
                    if variant in operators and sample.kwargs:
                        continue
                    out = variant(given, *sample.args, **sample.kwargs)
                    self.assertEqual(expected, out)
                    if expected_grad is not None and \
                            (variant not in inplace_ops or op.supports_inplace_autograd):
                        process(out).sum().backward()
                        self.assertEqual(expected_grad, tensor.grad)

            if inplace_ops:
                raise NotImplementedError("in-place variants: batch_norm has none")

        @ops(bn_ops, dtypes=OpDTypes.none)
        def test_dtypes(self, device, op):
            # the dtypes the OpInfo claims are exactly those that work, forward and backward
            device_type = torch.device(device).type
            complex32 = (torch.complex32,) if op.supports_dtype(torch.complex32, device_type) \
                else ()
            backward_candidates = floating_and_complex_types_and(
                torch.half, torch.bfloat16, *complex32)
            works, fails, works_bw, fails_bw = set(), set(), set(), set()

            def failed(dtype):
                fails.add(dtype)
                if dtype in backward_candidates:
                    fails_bw.add(dtype)

            def wants_grad(x):
                if isinstance(x, dict):
                    return any(wants_grad(v) for v in x.values())
                if isinstance(x, (list, tuple)):
                    return any(wants_grad(v) for v in x)
                return isinstance(x, torch.Tensor) and x.requires_grad

            for dtype in all_types_and_complex_and(torch.half, torch.bfloat16, torch.bool,
                                                   *complex32):
                try:
                    samples = tuple(op.sample_inputs(
                        device, dtype, requires_grad=dtype in backward_candidates))
                except Exception:
                    failed(dtype)
                    continue
                for sample in samples:
                    try:
                        result = op(sample.input, *sample.args, **sample.kwargs)
                        works.add(dtype)
                    except Exception:
                        failed(dtype)
                        continue
                    if not (wants_grad(sample.input) or wants_grad(sample.args) or
                            wants_grad(sample.kwargs)):
                        continue
                    try:
                        result = sample.output_process_fn_grad(result)
                        if isinstance(result, torch.Tensor):
                            target = result
                        elif isinstance(result, Sequence) and isinstance(result[0], torch.Tensor):
                            target = result[0]
                        else:
                            continue
                        target.backward(torch.randn_like(target))
                        works_bw.add(dtype)
                    except Exception:
                        fails_bw.add(dtype)

            claimed = set(op.supported_dtypes(device_type))
            claimed_bw = set(op.supported_backward_dtypes(device_type))
            forward_ok, forward_bad = works - fails, fails - works
            backward_ok, backward_bad = works_bw - fails_bw, fails_bw - works_bw
            problems = []
            if forward_ok - claimed:
                problems.append(f"worked in forward but not listed: {forward_ok - claimed}")
            if backward_ok - claimed_bw:
                problems.append(f"worked in backward but not listed: {backward_ok - claimed_bw}")
            if claimed & forward_bad:
                problems.append(f"listed but failed in forward: {claimed & forward_bad}")
            if claimed_bw & backward_bad:
                problems.append(f"listed but failed in backward: {claimed_bw & backward_bad}")
            if problems:
                self.fail(f"the supported dtypes of {op.name} on {device_type} are wrong: "
                          + "; ".join(problems))

    class TestMathBits(TestCase):
        @ops(bn_ops, allowed_dtypes=(torch.double,))
        def test_neg_view(self, device, dtype, op):
            # an input with the negative bit set (torch._neg_view of -x) gives the results and
            # gradients of x itself
            self.assertTrue(op.test_neg_view)
            if op.inplace_variant is not None:
                raise NotImplementedError("in-place variants: batch_norm has none")

            def as_neg_view(t):
                with torch.no_grad():
                    t2 = torch.neg(t)
                t2 = torch._neg_view(t2)
                assert t2.is_leaf
                return t2.requires_grad_(t.requires_grad)

            for sample in op.sample_inputs(device, dtype, requires_grad=op.supports_autograd):
                if not isinstance(sample.input, torch.Tensor):
                    raise NotImplementedError("tensor-list inputs: batch_norm has none")
                tensor = sample.input
                viewed = as_neg_view(tensor)
                expected = op(tensor, *sample.args, **sample.kwargs)
                got = op(viewed, *sample.args, **sample.kwargs)
                self.assertEqual(expected, got)
                if not (isinstance(expected, torch.Tensor) and expected.requires_grad):
                    continue
                process = sample.output_process_fn_grad or (lambda x: x)
                expected, got = process(expected), process(got)
                expected.sum().backward(retain_graph=True)
                got.sum().backward(retain_graph=True)
                if tensor.grad is None:
                    continue
                self.assertEqual(tensor.grad, viewed.grad)
                tensor.grad, viewed.grad = None, None
                grad = torch.randn_like(expected)
                expected.backward(grad)
                got.backward(torch._neg_view(torch.neg(grad)))
                self.assertEqual(tensor.grad, viewed.grad)

    class TestCompositeCompliance(TestCase):
        # the op works on tensor subclasses and under dispatch modes (composite_compliance.py)
        @ops(bn_ops, allowed_dtypes=(torch.float,))
        def test_operator(self, device, dtype, op):
            for sample in op.sample_inputs(device, dtype, requires_grad=False):
                args = [sample.input] + list(sample.args)
                composite_compliance.check_with_mode(op, args, sample.kwargs, self.assertEqual)
                composite_compliance.check_all_permutations(op, args, sample.kwargs,
                                                            self.assertEqual)

        @ops([op for op in bn_ops if op.supports_autograd], allowed_dtypes=(torch.float,))
        def test_backward(self, device, dtype, op):
            for sample in op.sample_inputs(device, dtype, requires_grad=True):
                args = [sample.input] + list(sample.args)
                composite_compliance.check_backward_formula(
                    op.get_op(), args, sample.kwargs, sample.output_process_fn_grad,
                    op.gradcheck_wrapper, self.assertEqual)

        @ops(bn_ops, allowed_dtypes=(torch.float,))
        def test_forward_ad(self, device, dtype, op):
            self.assertIn(torch.float, op.supported_backward_dtypes(device))
            self.assertTrue(op.supports_forward_ad)
            for sample in op.sample_inputs(device, dtype, requires_grad=True):
                args = [sample.input] + list(sample.args)
                composite_compliance.check_forward_ad_formula(
                    op.get_op(), args, sample.kwargs, op.gradcheck_wrapper, self.assertEqual)

    def check_inplace_view(func, input, result, size, stride):
        """An op that returns its input with other sizes or strides must be tagged
        inplace_view."""
        if func is None or not (isinstance(result, torch.Tensor) and result is input):
            return
        if result.size() != size or result.stride() != stride:
            if isinstance(func, torch._ops.OpOverloadPacket):
                func = func.default
            if func is not torch.ops.aten.resize_.default:
                assert torch.Tag.inplace_view in func.tags

    class TagsMode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            first = args[0] if args else None
            if isinstance(first, torch.Tensor):
                size, stride = first.size(), first.stride()
                result = func(*args, **(kwargs or {}))
                check_inplace_view(func, first, result, size, stride)
                return result
            return func(*args, **(kwargs or {}))

    class TestTags(TestCase):
        @onlyCPU
        @ops(bn_ops, dtypes=OpDTypes.any_one)
        def test_tags(self, device, dtype, op):
            for sample in op.sample_inputs(device, dtype, requires_grad=False):
                input = sample.input
                if not isinstance(input, torch.Tensor):
                    continue
                size, stride = input.size(), input.stride()
                with TagsMode():
                    result = op(input, *sample.args, **sample.kwargs)
                packet = getattr(torch.ops.aten, op.aten_name or op.name, None)
                check_inplace_view(packet, input, result, size, stride)

    class TestFakeTensor(TestCase):
        def check_fake(self, device, dtype, op, context):
            # under FakeTensorMode the op gives tensors of the real results' metadata
            for sample in op.sample_inputs(device, dtype, requires_grad=False):
                try:
                    mode = FakeTensorMode(throw_on_data_dependent_ops=True)

                    def to_fake(e):
                        return mode.from_tensor(e) if isinstance(e, torch.Tensor) else e
                    f_input = tree_map(to_fake, sample.input)
                    f_args = tree_map(to_fake, sample.args)
                    f_kwargs = tree_map(to_fake, sample.kwargs)
                    try:
                        with context():
                            real = op(sample.input, *sample.args, **sample.kwargs)
                    except Exception:
                        continue  # what fails for real need not work on fake tensors
                    with context(), mode:
                        fake = op(f_input, *f_args, **f_kwargs)
                    for f_out, r_out in zip(tree_flatten(fake)[0], tree_flatten(real)[0]):
                        if not isinstance(f_out, torch.Tensor):
                            self.assertNotIsInstance(r_out, torch.Tensor)
                            continue
                        self.assertIsInstance(f_out, FakeTensor)
                        prims.utils.compare_tensor_meta(f_out, r_out, True)
                        self.assertEqual(
                            outputs_alias_inputs((f_input, f_args, f_kwargs), fake),
                            outputs_alias_inputs((sample.input, sample.args, sample.kwargs),
                                                 real))
                except UnsupportedFakeTensorException:
                    pass
                except (DynamicOutputShapeException, DataDependentOutputException) as e:
                    self.fail(f"{op.name} is not listed as data dependent: {type(e).__name__}")

        @ops(bn_ops, dtypes=OpDTypes.any_one)
        def test_fake(self, device, dtype, op):
            self.check_fake(device, dtype, op, contextlib.nullcontext)

        @ops(bn_ops, dtypes=OpDTypes.any_one)
        def test_fake_autocast(self, device, dtype, op):
            context = torch.cuda.amp.autocast if device == "cuda" else torch.cpu.amp.autocast
            self.check_fake(device, dtype, op, context)

    classes = []
    for cls in (TestGradients, TestCommon, TestMathBits, TestCompositeCompliance, TestTags,
                TestFakeTensor):
        classes += for_cpu(cls)
    return classes


def captured():
    """{place: the module of the batch norm found there} for the places the tests take it from."""
    import torch
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.testing._internal.common_modules import module_db
    places = {"torch.nn." + name: getattr(torch.nn, name) for name in BN_NAMES}
    places["torch.nn.functional.batch_norm"] = torch.nn.functional.batch_norm
    for info in module_db:
        if info.module_cls.__name__ in BN_NAMES:
            places["module_db " + info.name] = info.module_cls
    for op in op_db:
        if op.name == "nn.functional.batch_norm":
            places["op_db %s %s" % (op.name, op.variant_test_name)] = op.op
    return {place: obj.__module__ for place, obj in places.items()}


def main(argv):
    if len(argv) < 2 or argv[1] not in ("torch", "bnorm") or \
            any(p not in PARTS for p in argv[2:]):
        print(__doc__, file=sys.stderr)
        return 2
    parts = argv[2:] or PARTS
    # torch.testing._internal.common_utils parses the command line when imported
    sys.argv = sys.argv[:1]
    if argv[1] == "bnorm":
        swap_in_bnorm()
    provide_expecttest()
    warnings.simplefilter("ignore")
    # what the tests print (test_dtypes does) goes to stderr: stdout has the results only
    out, sys.stdout = sys.stdout, sys.stderr
    print(json.dumps({"captured": captured()}), file=out, flush=True)
    builders = {"nn": nn_classes, "modules": module_classes, "ops": op_classes}
    for part in parts:
        run_classes(part, builders[part](), out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
