#!/usr/bin/python3
"""The PyTorch side of `make bench`: torch's CPU batch normalization timed the way `bnorm bench`
times bnorm, one JSON line per case with the same keys (peer "torch").

    /usr/bin/python3 bench/torch_peer.py [--shape 32x64x56x56] [--layout nchw|nhwc]
        [--mode train|eval|backward] [--threads T] [--dtype f32|f64|bf16]
        [--fuse relu|add-relu] [--repeat R]
    /usr/bin/python3 bench/torch_peer.py --serve     (what bench/run.py uses)

train: torch.nn.functional.batch_norm(training=True) with running statistics; eval: the same
with training=False; backward: the backward kernel alone,
torch.ops.aten.native_batch_norm_backward, with the mean and invstd saved by
torch.ops.aten.native_batch_norm. nhwc is a channels_last tensor (channels_last_3d for 5-d;
3-d shapes have no channels-last format in torch and are skipped). torch.set_num_threads(T).
Without --shape, the default grid of `bnorm bench`.

--fuse relu | add-relu: the batch norm followed by a ReLU, or by the add of a second input z of
x's shape and a ReLU, as a model writes them (torchvision's residual block: out += identity,
then an in-place relu): the forward passes are batch_norm, then add_ and relu_ on its output;
the backward is the ReLU's, threshold_backward(dy, y, 0) (which is also z's gradient), then the
batch norm's backward of it, the two kernels autograd runs.

torch allocates its outputs on every call. With glibc's default malloc, tensors above its mmap
threshold (at most 32 MiB) come from fresh mmap()s, so every call pays for page faults on the
whole output, and smaller ones do or do not depending on the allocator's history: the same case
has measured 3x apart between processes. bnorm and oneDNN write into buffers touched before
timing, so this peer gets the same: it re-executes itself with MALLOC_MMAP_MAX_=0 and a huge
MALLOC_TRIM_THRESHOLD_, so freed outputs stay mapped and are reused (--system-malloc: don't).

--serve reads one JSON request per line on stdin ({"shape": "32x64x56x56", "layout": "nhwc",
"mode": "train", "threads": 2, "dtype": "f32", "fuse": null, "repeat": null}) and answers each with one JSON
line, so that one torch process serves a whole interleaved run. Its first line tells versions.
Exit status: 0, 1 on a runtime error, 2 on a usage error.
"""
import argparse
import json
import os
import sys
import time

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
if "--system-malloc" not in sys.argv and any(os.environ.get(k) != v
                                             for k, v in MALLOC_ENV.items()):
    os.environ.update(MALLOC_ENV)
    os.execv(sys.executable, [sys.executable] + sys.argv)
MALLOC = "system" if "--system-malloc" in sys.argv else "no-mmap"

try:
    import torch
except ImportError:
    sys.exit("torch_peer: PyTorch is missing: apt-get install python3-torch")

DEFAULT_GRID = [((20, 2), "nchw"), ((256, 1024), "nchw"), ((32, 64, 56, 56), "nchw"),
                ((32, 64, 56, 56), "nhwc"), ((32, 512, 7, 7), "nchw"),
                ((8, 256, 128, 128), "nchw")]
MODES = ("train", "eval", "backward")
CASE_TARGET_NS = 3e8    # automatic repeat: about 0.3 s per case
SAMPLE_TARGET_NS = 1e5  # calls shorter than 100 us are timed in batches
EPS, MOMENTUM = 1e-5, 0.1


def parse_shape(text):
    parts = text.split("x")
    if not 2 <= len(parts) <= 5 or not all(p.isdigit() and p.isascii() for p in parts):
        raise ValueError(f"'{text}' is not 2 to 5 sizes >= 1 joined by 'x'")
    dims = tuple(int(p) for p in parts)
    if min(dims) < 1:
        raise ValueError(f"'{text}' has a size < 1")
    return dims


def uniform(shape, lo, hi, dtype, gen):
    return torch.rand(shape, dtype=dtype, generator=gen) * (hi - lo) + lo


DTYPES = {"f32": torch.float32, "f64": torch.float64, "bf16": torch.bfloat16}
SIZES = {"f32": 4, "f64": 8, "bf16": 2}


def make_case(dims, layout, mode, dtype, fuse=None):
    """The tensors and the call to time, or None when torch has no such layout. bfloat16 data
    has float32 weight, bias and running statistics (as torch.autocast leaves them). fuse: None,
    "relu" or "add-relu" (the module docstring)."""
    gen = torch.Generator().manual_seed(1)
    c = dims[1]
    x = uniform(dims, -2.0, 3.0, dtype, gen)
    data_dtype, dtype = dtype, torch.float32 if dtype is torch.bfloat16 else dtype
    if layout == "nhwc" and len(dims) > 2:
        if len(dims) == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        elif len(dims) == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        else:
            return None
    weight = uniform((c,), 0.5, 1.5, dtype, gen)
    bias = uniform((c,), -0.5, 0.5, dtype, gen)
    rmean = uniform((c,), -0.5, 0.5, dtype, gen)
    rvar = uniform((c,), 0.5, 2.0, dtype, gen)
    F = torch.nn.functional

    def like_x(t):
        if layout == "nhwc" and len(dims) > 2:
            fmt = torch.channels_last if len(dims) == 4 else torch.channels_last_3d
            return t.contiguous(memory_format=fmt)
        return t

    z = like_x(uniform(dims, -1.0, 1.0, data_dtype, gen)) if fuse == "add-relu" else None

    def epilogue(y):
        if z is not None:
            y.add_(z)
        return y.relu_() if fuse else y

    if mode in ("train", "eval"):
        training = mode == "train"
        return lambda: epilogue(F.batch_norm(x, rmean, rvar, weight, bias, training, MOMENTUM,
                                             EPS))
    dy = like_x(uniform(dims, -1.0, 1.0, data_dtype, gen))
    y, save_mean, save_invstd = torch.ops.aten.native_batch_norm(
        x, weight, bias, rmean, rvar, True, MOMENTUM, EPS)
    y = epilogue(y)
    bwd = torch.ops.aten.native_batch_norm_backward
    mask = [True, True, True]
    if fuse:
        relu_bwd = torch.ops.aten.threshold_backward
        return lambda: bwd(relu_bwd(dy, y, 0), x, weight, rmean, rvar, save_mean, save_invstd,
                           True, EPS, mask)
    return lambda: bwd(dy, x, weight, rmean, rvar, save_mean, save_invstd, True, EPS, mask)


def time_calls(fn, inner):
    t0 = time.perf_counter_ns()
    for _ in range(inner):
        fn()
    return (time.perf_counter_ns() - t0) / inner


def measure(fn, repeat=None):
    """Warm-up (one call, then calls for 20 ms), then `repeat` timed batches; ns per call."""
    fn()
    calls, t0 = 0, time.perf_counter_ns()
    while calls == 0 or time.perf_counter_ns() - t0 < 20e6:
        fn()
        calls += 1
    per_call = (time.perf_counter_ns() - t0) / calls
    inner = max(1, min(100000, int(SAMPLE_TARGET_NS // max(per_call, 1))))
    if not repeat:
        repeat = int(max(5, min(100000, -(-CASE_TARGET_NS // max(inner * per_call, 1)))))
    samples = sorted(time_calls(fn, inner) for _ in range(repeat))
    mid = len(samples) // 2
    median = samples[mid] if len(samples) % 2 else (samples[mid - 1] + samples[mid]) / 2
    return median, samples[0], repeat, inner


def run_case(dims, layout, mode, threads, dtype_name, repeat=None, fuse=None):
    if len(dims) == 2:
        layout = "nchw"  # (N, C) has one layout
    out = {"peer": "torch", "shape": "x".join(map(str, dims)), "layout": layout, "mode": mode,
           "threads": threads, "dtype": dtype_name}
    if fuse:
        out["fuse"] = fuse
    dtype = DTYPES[dtype_name]
    torch.set_num_threads(threads)
    with torch.no_grad():
        fn = make_case(dims, layout, mode, dtype, fuse)
        if fn is None:
            out.update(median_ns=None, unsupported="torch has no channels-last format for 3-d")
            return out
        median, minimum, repeat, inner = measure(fn, repeat)
    count = 1
    for d in dims:
        count *= d
    # the tensors the pass moves, counted as `bnorm bench` counts its own: with a ReLU, the
    # backward reads y too; with add + ReLU, the forward reads z and the backward writes dz
    backward = mode == "backward"
    arrays = (3 if backward else 2) + (fuse is not None and backward) + (fuse == "add-relu")
    nbytes = count * SIZES[dtype_name] * arrays
    out.update(median_ns=round(median, 1), min_ns=round(minimum, 1), bytes=nbytes,
               gbps=round(nbytes / median, 3), roofline_ns=None, roofline_pct=None,
               repeat=repeat, inner=inner, version=torch.__version__,
               torch_threads=torch.get_num_threads(), malloc=MALLOC)
    return out


def serve():
    print(json.dumps({"peer": "torch", "hello": True, "version": torch.__version__,
                      "malloc": MALLOC, "parallel_info": torch.__config__.parallel_info()}),
          flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            res = run_case(parse_shape(req["shape"]), req.get("layout", "nchw"), req["mode"],
                           int(req["threads"]), req.get("dtype", "f32"), req.get("repeat"),
                           req.get("fuse"))
        except Exception as e:  # answer every request, so the runner never hangs
            res = {"peer": "torch", "error": f"{type(e).__name__}: {e}", "request": line.strip()}
        print(json.dumps(res), flush=True)


class UsageParser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"torch_peer: {message}", file=sys.stderr)
        sys.exit(2)


def main():
    p = UsageParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="accepted; the output is always JSON")
    p.add_argument("--serve", action="store_true")
    p.add_argument("--system-malloc", action="store_true",
                   help="keep glibc's default malloc (outputs may be fresh pages every call)")
    p.add_argument("--shape")
    p.add_argument("--layout", choices=("nchw", "nhwc"))
    p.add_argument("--mode", choices=MODES)
    p.add_argument("--threads", type=int)
    p.add_argument("--dtype", choices=("f32", "f64", "bf16"), default="f32")
    p.add_argument("--fuse", choices=("relu", "add-relu"))
    p.add_argument("--repeat", type=int)
    a = p.parse_args()
    if a.serve:
        serve()
        return 0
    if a.threads is not None and not 1 <= a.threads <= 1024:
        p.error("--threads must be from 1 to 1024")
    if a.repeat is not None and not 1 <= a.repeat <= 1000000:
        p.error("--repeat must be from 1 to 1000000")
    if a.shape:
        try:
            dims = parse_shape(a.shape)
        except ValueError as e:
            p.error(f"--shape: {e}")
        layouts = ["nchw"] if len(dims) == 2 else [a.layout] if a.layout else ["nchw", "nhwc"]
        grid = [(dims, layout) for layout in layouts]
    else:
        grid = [(d, l) for d, l in DEFAULT_GRID if a.layout in (None, l)]
    for dims, layout in grid:
        for mode in MODES:
            if a.mode not in (None, mode):
                continue
            for threads in ([a.threads] if a.threads else [1, 2]):
                print(json.dumps(run_case(dims, layout, mode, threads, a.dtype, a.repeat,
                                                  a.fuse)),
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
