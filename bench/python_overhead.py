#!/usr/bin/env python3
"""The per-call cost of bnorm.torch against torch.nn, on a layer small enough that the Python
path is all there is to time: BatchNorm2d on an (8, 3, 4, 4) float32 tensor, 1 thread.

Contenders: torch.nn.BatchNorm2d, bnorm.torch.BatchNorm2d (its ordinary call through the C++
module bnorm._torch_native where make built it) and the same module through ctypes and its
Python autograd Function (the path without the C++ module; the "ctypes" column).

Cases: training forward + backward (y.backward(dy) with a fixed upstream gradient, input and
parameters requiring grad), training forward alone under no_grad, eval forward (parameters
requiring grad, so autograd records it), and eval forward under no_grad (inference). Each round
times CALLS calls of torch's module, then of bnorm's, then torch's again... (interleaved, the
order alternating), and the medians over the rounds are reported with their ratio
bnorm / torch. Writes bench/overhead.json (with the CPU model) and prints a table.

    /usr/bin/python3 bench/python_overhead.py [--rounds 15] [--calls 2000] [--out bench]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "python"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import bnorm.torch as bt  # noqa: E402
from bnorm import _functional  # noqa: E402

SHAPE = (8, 3, 4, 4)


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_case(case, module):
    """A function making one call of the case on module."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(SHAPE, generator=gen)
    dy = torch.randn(SHAPE, generator=gen)
    if case == "train fwd+bwd":
        module.train()
        x.requires_grad_()

        def call():
            module(x).backward(dy)
        return call
    if case == "train fwd (no_grad)":
        module.train()

        def call():
            with torch.no_grad():
                module(x)
        return call
    module.eval()
    if case == "eval fwd (no_grad)":
        def call():
            with torch.no_grad():
                module(x)
        return call

    def call():
        module(x)
    return call


def time_calls(call, calls):
    start = time.perf_counter_ns()
    for _ in range(calls):
        call()
    return (time.perf_counter_ns() - start) / calls


def time_ctypes(call, calls):
    """time_calls with bnorm.torch's native module left out."""
    native = _functional._native_batch_norm
    _functional._native_batch_norm = None
    try:
        return time_calls(call, calls)
    finally:
        _functional._native_batch_norm = native


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--out", default=str(REPO / "bench"))
    args = p.parse_args()
    torch.set_num_threads(1)
    bt._lib.lib.bn_set_num_threads(1)
    cases = ["train fwd+bwd", "train fwd (no_grad)", "eval fwd", "eval fwd (no_grad)"]
    rows = []
    for case in cases:
        calls = {"torch": make_case(case, nn.BatchNorm2d(3)),
                 "bnorm": make_case(case, bt.BatchNorm2d(3)),
                 "ctypes": make_case(case, bt.BatchNorm2d(3))}
        timer = {"torch": time_calls, "bnorm": time_calls, "ctypes": time_ctypes}
        for who, call in calls.items():  # warm up: first-use set-up, allocator, caches
            timer[who](call, max(args.calls // 10, 1))
        times = {who: [] for who in calls}
        for r in range(args.rounds):
            order = list(calls) if r % 2 == 0 else list(reversed(list(calls)))
            for who in order:
                times[who].append(timer[who](calls[who], args.calls))
        med = {who: statistics.median(v) for who, v in times.items()}
        rows.append({"case": case, "torch_ns": med["torch"], "bnorm_ns": med["bnorm"],
                     "ratio": med["bnorm"] / med["torch"], "ctypes_ns": med["ctypes"],
                     "ctypes_ratio": med["ctypes"] / med["torch"]})
    result = {"cpu": cpu_model(), "shape": list(SHAPE), "threads": 1, "rounds": args.rounds,
              "calls_per_round": args.calls, "torch": torch.__version__,
              "native": _functional.NATIVE is not None, "cases": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.json").write_text(json.dumps(result, indent=1) + "\n")
    print("per-call time, BatchNorm2d on %s float32, 1 thread, %s (median of %d rounds of %d "
          "calls)" % ("x".join(map(str, SHAPE)), result["cpu"], args.rounds, args.calls))
    if not result["native"]:
        print("(bnorm._torch_native is not built: both bnorm columns go through ctypes)")
    print("| case | torch.nn | bnorm.torch | bnorm / torch | through ctypes | ctypes / torch |")
    print("|---|--:|--:|--:|--:|--:|")
    for row in rows:
        print("| %s | %.1f us | %.1f us | %.2f | %.1f us | %.2f |" % (
            row["case"], row["torch_ns"] / 1e3, row["bnorm_ns"] / 1e3, row["ratio"],
            row["ctypes_ns"] / 1e3, row["ctypes_ratio"]))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
