#!/usr/bin/env python3
"""make_golden.py - golden data for bnorm, recorded from real PyTorch.

Run from anywhere with a Python that has torch (1.13) and numpy:

    /usr/bin/python3 tests/golden/make_golden.py [OUT]

It writes tests/golden/torch_golden.txt (or OUT). The output is deterministic: one fixed seed, one
thread, cases generated in a fixed order. tests/c/test_golden.c replays every case through the C
API and compares; `make test` therefore checks PyTorch parity without Python.

HOW THE NUMBERS ARE MADE

Every step of a case is a call of a torch.nn.BatchNorm1d/2d/3d module (train() or eval()), followed
by a backward pass with a random upstream gradient dy, so what is recorded is the module's
behaviour: num_batches_tracked counting every training call (N = 0 included), momentum=None as the
cumulative average 1/num_batches_tracked, track_running_stats=False using batch statistics in eval
too. Weight and bias are random (not 1 and 0). The batch mean and invstd of each step that uses
batch statistics come from torch.native_batch_norm on the same input (a cross-check of the module's
output and running update, which this script asserts).

float64 cases are torch's float64 results. float32 cases: inputs, weight, bias and running
statistics are float32 values (the running statistics are rounded to float32 after every step, as a
float32 module stores them), but the results are torch's float64 computation on those same values,
not rounded: the exact answer a float32 library rounds to. torch's own float32 kernel computes
y = x * a + b, which is off by up to 2e-3 on inputs with an offset (mean 100, std 0.1) and 4e-5 on a
constant channel: comparing with it would test torch's rounding rather than its semantics. A
float32 twin module runs alongside every float32 case; the script asserts it agrees with the
float64 results to 1e-2 (so both follow the same semantics) and prints how far off it is.

bf16 cases record torch's own bfloat16 kernel (bfloat16 inputs, parameters in float32 as autocast
gives them, or in bfloat16), and beside each of its results float64's value on the same inputs
(the key with "exact_" before it): the C test holds the library to parity with torch (it may
differ from torch's only where torch's is off float64's, by at most a unit in the last place of
bfloat16 more) and to one rounding of float64's value. With bfloat16 parameters torch rounds
the batch mean and invstd it normalizes with to bfloat16, up to 7e-2 off float64's; the library
keeps them exact. Each bf16 step starts from torch's running statistics (running_*_before).

FILE FORMAT (version 1)

Whitespace-separated tokens; '#' starts a comment that runs to the end of the line. Integers are
decimal; every real number is a C99 hexadecimal float (Python's float.hex(), trailing zeros of the
fraction dropped, so "0x1.8p+1" is 3.0), read exactly by strtod. An array is written as

    KEY COUNT v0 v1 ... v(COUNT-1)

The file is:

    bnorm-golden 1
    case NAME                       a name without spaces
    dtype f32|f64|bf16              element type of x, y, dy, dx (and of the parameters below)
    params f32|bf16                 (bf16 only) of weight, bias, running statistics, dweight, dbias
    layout first|last               memory order of x, dy, y, dx: (N, C, S) or (N, S, C)
    channels C
    affine 0|1                      1: weight and bias follow and dweight, dbias are recorded
    track 0|1                       track_running_stats
    momentum none|HEX               none: cumulative average (momentum=None)
    eps HEX
    weight C ...                    (affine only)
    bias C ...                      (affine only)
    step train|eval                 one or more steps, in order
      dims NDIM d0 d1 ...           logical sizes (N, C, ...), whatever the layout
      running_mean_before C ...     (track only) buffers before the step
      running_var_before C ...      (track only)
      nbt_before INT                (track only) num_batches_tracked before the step
      x COUNT ...                   input, in the layout's memory order
      dy COUNT ...                  upstream gradient, same order
      y COUNT ...                   output, same order
      dx COUNT ...                  gradient of x, same order
      dweight C ...                 (affine only)
      dbias C ...                   (affine only)
      save_mean C ...               (steps using batch statistics with N > 0) torch's batch mean
      save_invstd C ...             (same) torch's 1/sqrt(biased var + eps)
      running_mean_after C ...      (track only) buffers after the step
      running_var_after C ...       (track only)
      nbt_after INT                 (track only)
      exact_KEY COUNT ...           (bf16 only) float64's value of each result KEY above
                                    (y, dx, dweight, dbias, save_*, running_*_after)
    endstep
    endcase                         after the last step of a case
    end                             after the last case: a file without it is truncated

Within a step the keys may come in any order after dims; a reader checks that the required ones
are present and that every COUNT matches the dims.
"""

import os
import re
import sys

import torch

SEED = 20240611
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "torch_golden.txt")

MODULES = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
           5: torch.nn.BatchNorm3d}


def case(name, dtype, layout, steps, *, affine=True, track=True, momentum=0.1, eps=1e-5,
         data="normal", init=None, params=None):
    """One case. steps: list of (mode, dims). data: how x is drawn ("normal", "offset": mean 100
    and std 0.1, "const": channel 0 constant, "offset_const": both). init: None (torch's defaults)
    or a number of batches already tracked, with random starting running statistics. params
    (bf16 cases only): "f32" (autocast's mixed precision) or "bf16", the parameters' dtype."""
    assert (params is not None) == (dtype == "bf16")
    return dict(name=name, dtype=dtype, layout=layout, steps=steps, affine=affine, track=track,
                momentum=momentum, eps=eps, data=data, init=init, params=params or dtype)


T3E2 = ["train", "train", "train", "eval", "eval"]   # three training steps, then two eval steps


def same(dims, modes=T3E2):
    return [(m, dims) for m in modes]


CASES = [
    # (N, C)
    case("bn1d_2d_f32", "f32", "first", same((8, 3))),
    case("bn1d_2d_f64", "f64", "first", same((6, 4))),
    case("bn1d_2d_c1_f32", "f32", "first", same((5, 1))),
    case("bn1d_2d_n2_f64", "f64", "first", same((2, 3))),            # smallest valid batch
    # (N, C, L)
    case("bn1d_3d_prime_f32", "f32", "first", same((3, 5, 7)), momentum=0.3, eps=1e-3),
    case("bn1d_3d_prime_f64", "f64", "first", same((3, 5, 7)), momentum=0.3),
    case("bn1d_3d_nlc_f64", "f64", "last", same((3, 5, 7))),         # (N, L, C) memory order
    case("bn1d_3d_s1_f32", "f32", "first", same((4, 2, 1))),
    case("bn1d_3d_varlen_f64", "f64", "first",                       # L changes between steps
         [("train", (2, 3, 4)), ("train", (3, 3, 1)), ("eval", (1, 3, 5))]),
    # (N, C, H, W)
    case("bn2d_nchw_f32", "f32", "first", same((2, 3, 4, 5))),
    case("bn2d_nhwc_f32", "f32", "last", same((2, 3, 4, 5))),
    case("bn2d_nhwc_prime_f64", "f64", "last", same((3, 5, 7, 2)), eps=1e-3),
    case("bn2d_c1_f64", "f64", "first", same((4, 1, 3, 3))),
    case("bn2d_s1_nhwc_f64", "f64", "last", same((5, 3, 1, 1))),
    # (N, C, D, H, W)
    case("bn3d_prime_f32", "f32", "first", [("train", (2, 3, 5, 7, 11)), ("eval", (2, 3, 5, 7, 11))]),
    case("bn3d_ncdhw_f64", "f64", "first", same((2, 3, 2, 3, 4))),
    case("bn3d_ndhwc_f32", "f32", "last", same((2, 3, 2, 3, 5))),
    case("bn3d_ndhwc_f64", "f64", "last", same((3, 2, 1, 3, 2)), momentum=None),
    # N = 0: counted, running statistics untouched, empty output, zero parameter gradients
    case("empty_batch_cumulative_f32", "f32", "first",
         [("train", (4, 3, 2, 2)), ("train", (0, 3, 2, 2)), ("train", (4, 3, 2, 2)),
          ("eval", (2, 3, 2, 2))], momentum=None),
    case("empty_batch_nhwc_f64", "f64", "last",
         [("train", (0, 2, 3, 3)), ("train", (3, 2, 3, 3)), ("eval", (0, 2, 3, 3))]),
    case("empty_batch_2d_f64", "f64", "first", [("train", (0, 4)), ("train", (3, 4))],
         momentum=0.3),
    # affine off, track_running_stats off
    case("no_affine_f64", "f64", "first", same((4, 3, 5)), affine=False),
    case("no_affine_nhwc_f32", "f32", "last", same((2, 4, 3, 3)), affine=False, momentum=None),
    case("no_track_f32", "f32", "first", same((4, 3, 6)), track=False),
    case("no_track_nhwc_f64", "f64", "last", same((2, 3, 2, 3)), track=False, eps=1e-3),
    case("no_track_no_affine_f64", "f64", "first", same((3, 2, 2, 3)), affine=False, track=False),
    # momentum
    case("momentum_0_f32", "f32", "first", same((6, 2, 3)), momentum=0.0),
    case("momentum_1_f64", "f64", "first", same((5, 3)), momentum=1.0),
    case("momentum_none_f32", "f32", "first",
         same((4, 3, 2, 2), ["train"] * 4 + ["eval", "eval"]), momentum=None),
    case("momentum_none_f64", "f64", "first", same((3, 4, 5), ["train"] * 4 + ["eval"]),
         momentum=None),
    case("momentum_none_resumed_f64", "f64", "first",                 # nbt starts at 2
         same((3, 2, 4), ["eval", "train", "train", "eval"]), momentum=None, init=2),
    case("eval_first_f32", "f32", "first", same((3, 4, 5), ["eval", "train", "eval"]), init=0),
    # offset and constant channels
    case("offset_f32", "f32", "first", same((4, 3, 5)), data="offset"),
    case("offset_f64", "f64", "first", same((4, 3, 5)), data="offset", eps=1e-3),
    case("offset_nhwc_f32", "f32", "last", same((2, 3, 3, 4)), data="offset", eps=1e-3),
    case("const_channel_f32", "f32", "first", same((4, 3, 5)), data="const"),
    case("const_channel_f64", "f64", "last", same((3, 3, 2, 2)), data="const", eps=1e-3),
    case("offset_const_f32", "f32", "first", same((5, 2, 3)), data="offset_const",
         momentum=None),
    # bfloat16 tensors, the parameters in float32 (as under autocast) or in bfloat16: what is
    # recorded is torch's own bfloat16 kernel
    case("bn1d_2d_bf16", "bf16", "first", same((8, 3)), params="f32"),
    case("bn1d_3d_prime_bf16", "bf16", "first", same((3, 5, 7)), params="bf16", momentum=0.3),
    case("bn2d_nchw_bf16", "bf16", "first", same((2, 3, 4, 5)), params="f32"),
    case("bn2d_nchw_bf16_params", "bf16", "first", same((3, 4, 3, 5)), params="bf16"),
    case("bn2d_nhwc_bf16", "bf16", "last", same((2, 5, 3, 4)), params="f32", eps=1e-3),
    case("bn2d_nhwc_bf16_params", "bf16", "last", same((3, 3, 2, 5)), params="bf16"),
    case("bn3d_ndhwc_bf16", "bf16", "last", same((2, 3, 2, 3, 4)), params="f32",
         momentum=None),
    case("bf16_empty_batch", "bf16", "first",
         [("train", (0, 3, 2, 2)), ("train", (4, 3, 2, 2)), ("eval", (2, 3, 2, 2))],
         params="f32"),
    case("bf16_no_affine_no_track", "bf16", "first", same((4, 3, 5)), affine=False,
         track=False, params="f32"),
    case("bf16_offset", "bf16", "first", same((4, 3, 6)), data="offset", params="f32"),
    case("bf16_const_channel", "bf16", "last", same((3, 3, 2, 2)), data="const",
         params="bf16", eps=1e-3),
]


def hexf(v):
    """C99 hex float of a Python float, trailing zeros of the fraction dropped."""
    s = float(v).hex()
    if "x" not in s:                       # inf, -inf, nan
        return s
    m = re.match(r"(-?0x[01])(?:\.([0-9a-f]*?))?0*p([+-]\d+)$", s)
    frac = m.group(2)
    return m.group(1) + ("." + frac if frac else "") + "p" + m.group(3)


def memory_order(t, layout):
    """t (N, C, ...) flattened in the layout's memory order."""
    t = t.detach()
    if layout == "last" and t.dim() > 2:
        t = t.permute(0, *range(2, t.dim()), 1)
    return t.reshape(-1)


TORCH_DTYPE = {"f32": torch.float32, "f64": torch.float64, "bf16": torch.bfloat16}


def as_storage(t, dtype):
    """t rounded to the element type dtype, kept as float64 for the reference computation."""
    return t.to(TORCH_DTYPE[dtype]).double()


def draw_x(dims, data, gen_dtype):
    n, c = dims[0], dims[1]
    shape = (1, c) + (1,) * (len(dims) - 2)
    scale = 0.5 + torch.rand(shape, dtype=torch.float64) * 2.0
    shift = torch.randn(shape, dtype=torch.float64) * 2.0
    if data in ("offset", "offset_const"):
        scale = torch.full(shape, 0.1, dtype=torch.float64)
        shift = torch.full(shape, 100.0, dtype=torch.float64)
    x = torch.randn(dims, dtype=torch.float64) * scale + shift
    if data in ("const", "offset_const") and n > 0:
        x[:, 0] = 100.25 if data == "offset_const" else 2.5
    return as_storage(x, gen_dtype)


def to_layout(t, layout):
    if layout == "last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "last" and t.dim() == 5:
        return t.contiguous(memory_format=torch.channels_last_3d)
    return t.contiguous()          # (N, C) is both; (N, C, L) has no channels-last format in torch


class Writer:
    def __init__(self):
        self.lines = []

    def line(self, *tokens):
        self.lines.append(" ".join(str(t) for t in tokens))

    def array(self, key, values):
        values = [float(v) for v in values]
        self.line(key, len(values), *[hexf(v) for v in values])


def rel_dev(a, b):
    """Largest |a - b| / max(1, |b|), 0 for empty tensors."""
    if a.numel() == 0:
        return 0.0
    a, b = a.detach().double(), b.detach().double()
    return float(((a - b).abs() / b.abs().clamp(min=1.0)).max())


def write_header(w, spec, c, module):
    """The case's header, its weight and bias those of module."""
    momentum = spec["momentum"]
    w.line("case", spec["name"])
    w.line("dtype", spec["dtype"])
    if spec["dtype"] == "bf16":
        w.line("params", spec["params"])
    w.line("layout", spec["layout"])
    w.line("channels", c)
    w.line("affine", int(spec["affine"]))
    w.line("track", int(spec["track"]))
    w.line("momentum", "none" if momentum is None else hexf(momentum))
    w.line("eps", hexf(spec["eps"]))
    if spec["affine"]:
        w.array("weight", module.weight)
        w.array("bias", module.bias)


def native_step(spec, module, x, rm0, rv0):
    """torch.native_batch_norm on x with module's weight and bias and a copy of the running
    statistics it had before the step (rm0, rv0, None without tracking): (output, save_mean,
    save_invstd, running mean, running var), the last two None without tracking."""
    if spec["track"]:
        momentum = spec["momentum"]
        factor = 1.0 / int(module.num_batches_tracked) if momentum is None else momentum
        rm, rv = rm0.clone(), rv0.clone()
    else:
        factor, rm, rv = 0.0, None, None
    wt = module.weight.detach() if spec["affine"] else None
    bs = module.bias.detach() if spec["affine"] else None
    out, save_mean, save_invstd = torch.native_batch_norm(x, wt, bs, rm, rv, True, factor,
                                                          spec["eps"])
    return out, save_mean, save_invstd, rm, rv


def make_case(w, spec, report):
    if spec["dtype"] == "bf16":
        make_case_bf16(w, spec, report)
        return
    dtype, layout = spec["dtype"], spec["layout"]
    ndim = len(spec["steps"][0][1])
    c = spec["steps"][0][1][1]
    momentum, eps = spec["momentum"], spec["eps"]
    kw = dict(eps=eps, momentum=momentum, affine=spec["affine"],
              track_running_stats=spec["track"])
    ref = MODULES[ndim](c, **kw).double()                  # the recorded computation
    twin = MODULES[ndim](c, **kw).float() if dtype == "f32" else None   # torch's float32 kernel

    with torch.no_grad():
        if spec["affine"]:
            ref.weight.copy_(as_storage(1.0 + 0.5 * torch.randn(c, dtype=torch.float64), dtype))
            ref.bias.copy_(as_storage(0.5 * torch.randn(c, dtype=torch.float64), dtype))
        if spec["track"] and spec["init"] is not None:
            ref.running_mean.copy_(as_storage(torch.randn(c, dtype=torch.float64), dtype))
            ref.running_var.copy_(as_storage(0.25 + torch.rand(c, dtype=torch.float64), dtype))
            ref.num_batches_tracked.fill_(spec["init"])
        if twin is not None:
            twin.load_state_dict({k: v.float() if v.is_floating_point() else v
                                  for k, v in ref.state_dict().items()})

    write_header(w, spec, c, ref)

    worst_twin = 0.0
    for mode, dims in spec["steps"]:
        assert dims[1] == c and len(dims) == ndim
        training = mode == "train"
        batch_stats = training or not spec["track"]
        ref.train(training)
        x = to_layout(draw_x(dims, spec["data"], dtype), layout)
        dy = to_layout(as_storage(torch.randn(dims, dtype=torch.float64), dtype), layout)

        w.line("step", mode)
        w.line("dims", ndim, *dims)
        rm0 = rv0 = None
        if spec["track"]:
            rm0, rv0 = ref.running_mean.clone(), ref.running_var.clone()
            nbt0 = int(ref.num_batches_tracked)
            w.array("running_mean_before", rm0)
            w.array("running_var_before", rv0)
            w.line("nbt_before", nbt0)

        xr = x.clone().requires_grad_(True)
        y = ref(xr)
        if spec["affine"]:
            ref.weight.grad = None
            ref.bias.grad = None
        y.backward(dy)

        if spec["track"] and dtype == "f32":               # a float32 module stores float32
            with torch.no_grad():
                ref.running_mean.copy_(ref.running_mean.float().double())
                ref.running_var.copy_(ref.running_var.float().double())

        w.array("x", memory_order(x, layout))
        w.array("dy", memory_order(dy, layout))
        w.array("y", memory_order(y, layout))
        w.array("dx", memory_order(xr.grad, layout))
        if spec["affine"]:
            w.array("dweight", ref.weight.grad)
            w.array("dbias", ref.bias.grad)

        if batch_stats and dims[0] > 0:
            # torch.native_batch_norm on the same input: the batch mean and invstd, and a
            # cross-check of the module's output and running update.
            out, save_mean, save_invstd, rm, rv = native_step(spec, ref, x, rm0, rv0)
            assert rel_dev(out, y) < 1e-12, spec["name"]
            if spec["track"]:
                assert rel_dev(rm, ref.running_mean) < 1e-6, spec["name"]
                assert rel_dev(rv, ref.running_var) < 1e-6, spec["name"]
            w.array("save_mean", save_mean)
            w.array("save_invstd", save_invstd)

        if spec["track"]:
            w.array("running_mean_after", ref.running_mean)
            w.array("running_var_after", ref.running_var)
            w.line("nbt_after", int(ref.num_batches_tracked))
        w.line("endstep")

        if twin is not None:
            twin.train(training)
            xt = x.float().requires_grad_(True)
            yt = twin(xt)
            if spec["affine"]:
                twin.weight.grad = None
                twin.bias.grad = None
            yt.backward(dy.float())
            devs = [rel_dev(yt, y), rel_dev(xt.grad, xr.grad)]
            if spec["affine"]:
                devs += [rel_dev(twin.weight.grad, ref.weight.grad),
                         rel_dev(twin.bias.grad, ref.bias.grad)]
            if spec["track"]:
                devs += [rel_dev(twin.running_mean, ref.running_mean),
                         rel_dev(twin.running_var, ref.running_var)]
                assert int(twin.num_batches_tracked) == int(ref.num_batches_tracked)
            worst_twin = max([worst_twin] + devs)
    w.line("endcase")
    assert worst_twin < 1e-2, (spec["name"], worst_twin)
    if dtype == "f32":
        report.append("%-28s torch float32 kernel off by %.1e" % (spec["name"], worst_twin))


def make_case_bf16(w, spec, report):
    """A bfloat16 case: what is recorded is torch's bfloat16 module (parameters in spec's params
    dtype), fed bfloat16 values. A float64 module on the same values runs alongside; the script
    asserts the two agree to 0.1 (the same semantics: with bfloat16 parameters torch rounds the
    batch statistics it normalizes with to bfloat16) and prints how far apart they are."""
    layout, pdt = spec["layout"], TORCH_DTYPE[spec["params"]]
    ndim = len(spec["steps"][0][1])
    c = spec["steps"][0][1][1]
    momentum, eps = spec["momentum"], spec["eps"]
    kw = dict(eps=eps, momentum=momentum, affine=spec["affine"],
              track_running_stats=spec["track"])
    mod = MODULES[ndim](c, **kw).to(pdt)                   # the recorded computation
    exact = MODULES[ndim](c, **kw).double()
    with torch.no_grad():
        if spec["affine"]:
            mod.weight.copy_(1.0 + 0.5 * torch.randn(c, dtype=torch.float64))
            mod.bias.copy_(0.5 * torch.randn(c, dtype=torch.float64))
        if spec["track"] and spec["init"] is not None:
            mod.running_mean.copy_(torch.randn(c, dtype=torch.float64))
            mod.running_var.copy_(0.25 + torch.rand(c, dtype=torch.float64))
            mod.num_batches_tracked.fill_(spec["init"])
        exact.load_state_dict({k: v.double() if v.is_floating_point() else v
                               for k, v in mod.state_dict().items()})
    write_header(w, spec, c, mod)

    worst = 0.0
    for mode, dims in spec["steps"]:
        assert dims[1] == c and len(dims) == ndim
        training = mode == "train"
        batch_stats = training or not spec["track"]
        mod.train(training)
        exact.train(training)
        x = to_layout(draw_x(dims, spec["data"], "bf16"), layout)
        dy = to_layout(as_storage(torch.randn(dims, dtype=torch.float64), "bf16"), layout)
        xb, dyb = x.bfloat16(), dy.bfloat16()

        w.line("step", mode)
        w.line("dims", ndim, *dims)
        rm0 = rv0 = None
        if spec["track"]:
            rm0, rv0 = mod.running_mean.clone(), mod.running_var.clone()
            w.array("running_mean_before", rm0)
            w.array("running_var_before", rv0)
            w.line("nbt_before", int(mod.num_batches_tracked))

        xr = xb.clone().requires_grad_(True)
        y = mod(xr)
        if spec["affine"]:
            mod.weight.grad = None
            mod.bias.grad = None
        y.backward(dyb)
        assert y.dtype == xr.grad.dtype == torch.bfloat16
        xe = x.clone().requires_grad_(True)                # the same step in float64
        ye = exact(xe)
        if spec["affine"]:
            exact.weight.grad = None
            exact.bias.grad = None
        ye.backward(dy)

        recorded = [("y", memory_order(y.double(), layout), memory_order(ye, layout)),
                    ("dx", memory_order(xr.grad.double(), layout), memory_order(xe.grad, layout))]
        if spec["affine"]:
            recorded += [("dweight", mod.weight.grad, exact.weight.grad),
                         ("dbias", mod.bias.grad, exact.bias.grad)]
        if batch_stats and dims[0] > 0:
            # the same kernel called directly, for the batch mean and invstd it saves (in the
            # parameters' dtype), and float64's
            out, save_mean, save_invstd, rm, rv = native_step(spec, mod, xb, rm0, rv0)
            assert torch.equal(out, y), spec["name"]
            if spec["track"]:
                assert torch.equal(rm, mod.running_mean), spec["name"]
                assert torch.equal(rv, mod.running_var), spec["name"]
            _, exact_mean, exact_invstd = torch.native_batch_norm(x, None, None, None, None, True,
                                                                  0.0, eps)
            recorded += [("save_mean", save_mean, exact_mean),
                         ("save_invstd", save_invstd, exact_invstd)]
        if spec["track"]:
            recorded += [("running_mean_after", mod.running_mean, exact.running_mean),
                         ("running_var_after", mod.running_var, exact.running_var)]

        w.array("x", memory_order(x, layout))
        w.array("dy", memory_order(dy, layout))
        for key, theirs, ours64 in recorded:
            w.array(key, theirs.detach().double())
            w.array("exact_" + key, ours64.detach())
        if spec["track"]:
            w.line("nbt_after", int(mod.num_batches_tracked))
        w.line("endstep")

        worst = max([worst] + [rel_dev(t, e) for _, t, e in recorded])
        with torch.no_grad():   # the float64 twin goes on from the module's statistics
            for name in ("running_mean", "running_var") if spec["track"] else ():
                getattr(exact, name).copy_(getattr(mod, name).double())
    w.line("endcase")
    assert worst < 1e-1, (spec["name"], worst)
    report.append("%-28s torch bfloat16 kernel off float64 by %.1e" % (spec["name"], worst))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    names = [c["name"] for c in CASES]
    assert len(set(names)) == len(names)

    w = Writer()
    w.line("# bnorm golden data, written by tests/golden/make_golden.py (do not edit);")
    w.line("# torch", torch.__version__.split("+")[0], "seed", SEED,
           "- the format is described in the script")
    w.line("bnorm-golden", 1)
    report = []
    for spec in CASES:
        make_case(w, spec, report)
    w.line("end")
    text = "\n".join(w.lines) + "\n"
    with open(out, "w") as f:
        f.write(text)
    for r in report:
        print(r, file=sys.stderr)
    print("%s: %d cases, %d bytes" % (out, len(CASES), len(text)), file=sys.stderr)


if __name__ == "__main__":
    main()
