#!/usr/bin/env python3
"""How cheap can a torch.autograd.Function over libbnorm be? BatchNorm2d on (8, 3, 4, 4)
float32, 1 thread, training forward + backward, 15 interleaved rounds of 2000 calls, medians:
torch.nn's module, bnorm.torch's, bnorm.torch's autograd Function called directly (no routing,
no wrappers), and the leanest module that can do the job (no argument checks, no routing, the descriptor built once; forward: output, one statistics tensor, the ctypes
call; backward: three allocations and the ctypes call). Then an empty Python Function (it saves
its input and allocates its output) against the same in C++ (cpp_function_floor.cpp, built as
that file says), interleaved, when the built library is given.

    BNORM_LIBRARY=$PWD/build/libbnorm.so PYTHONPATH=python /usr/bin/python3 \\
        bench/experiments/python_function_floor.py [/tmp/cpp_function_floor.so]
"""

import statistics
import sys
import timeit

import torch

import bnorm.torch as bt
from bnorm import _functional, _lib

SHAPE, C = (8, 3, 4, 4), 3
torch.set_num_threads(1)
LIB = _lib.lib
DESC = _functional._desc(torch.empty(SHAPE), _lib.BN_CHANNELS_FIRST)
OPTIONS = _functional._options(1e-5, 0.1)


class Lean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, rm, rv):
        y = torch.empty_like(x)
        stats = torch.empty((2, C), dtype=torch.float64)
        at = stats.data_ptr()
        LIB.bn_forward_train(y.data_ptr(), at, at + 8 * C, rm.data_ptr(), rv.data_ptr(), None,
                             x.data_ptr(), w.data_ptr(), b.data_ptr(), DESC, OPTIONS)
        ctx.save_for_backward(x, w, stats)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, stats = ctx.saved_tensors
        dx, dw, db = torch.empty_like(x), w.new_empty(C), w.new_empty(C)
        at = stats.data_ptr()
        LIB.bn_backward_train(dx.data_ptr(), dw.data_ptr(), db.data_ptr(), dy.data_ptr(),
                              x.data_ptr(), at, at + 8 * C, w.data_ptr(), DESC)
        return dx, dw, db, None, None


class LeanBatchNorm2d(torch.nn.BatchNorm2d):
    def forward(self, x):
        self.num_batches_tracked.add_(1)
        return Lean.apply(x, self.weight, self.bias, self.running_mean, self.running_var)


class DirectBatchNorm2d(torch.nn.BatchNorm2d):
    """bnorm.torch's Function called directly: no routing, no F.batch_norm wrapper, none of
    torch's module logic."""

    def forward(self, x):
        self.num_batches_tracked.add_(1)
        return _functional._BatchNormFunction.apply(x, self.weight, self.bias, self.running_mean,
                                                    self.running_var, True, 0.1, 1e-5)


class Empty(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, dy):
        return dy


def medians(calls, rounds, number):
    """{name: median microseconds per call} of calls timed in turns."""
    runs = {k: [] for k in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            runs[name].append(timeit.timeit(call, number=number) / number * 1e6)
    return {k: statistics.median(v) for k, v in runs.items()}


def main():
    x = torch.randn(SHAPE, requires_grad=True)
    dy = torch.randn(SHAPE)
    modules = {"torch.nn": torch.nn.BatchNorm2d(C), "bnorm.torch": bt.BatchNorm2d(C),
               "its Function": DirectBatchNorm2d(C), "lean Function": LeanBatchNorm2d(C)}
    med = medians({k: (lambda m=m: m(x).backward(dy)) for k, m in modules.items()}, 15, 2000)
    for name, us in med.items():
        print("%-14s %7.1f us  %.2fx torch.nn" % (name, us, us / med["torch.nn"]))
    empties = {"Python": Empty.apply}
    if len(sys.argv) > 1:
        torch.ops.load_library(sys.argv[1])
        empties["C++"] = torch.ops.bnorm_floor.empty
    calls = {}
    for name, f in empties.items():
        calls[name + " forward"] = lambda f=f: f(x)
        calls[name + " forward + backward"] = lambda f=f: f(x).backward(dy)
    for name, us in medians(calls, 11, 5000).items():
        print("empty %s Function: %s %.1f us" % (name.split()[0], name.split(" ", 1)[1], us))


if __name__ == "__main__":
    main()
