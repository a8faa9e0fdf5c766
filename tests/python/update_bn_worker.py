"""The models, the data and one rank's run of test_update_bn.py.

Every process builds the same models (fixed seeds) and the same batches; rank r of K runs
bnorm.torch.update_bn on its own slice of the batches (SPLITS: unequal, and one empty with 3
ranks) and saves its buffers and what its failure cases raised to OUTDIR/rank<r>.pt, for the
test to compare between ranks and with the statistics of all the batches (population()).

    gloo_main(rank, world, port, outdir)    torch.multiprocessing.spawn target (gloo on 127.0.0.1)
    mpirun -np 2 python3 update_bn_worker.py OUTDIR     the same over MPI (mpi4py)
"""

import copy
import os
import sys

import numpy as np
import torch
from torch import nn

import bnorm.torch as bt

# Batches of unequal sizes; values of mean 1e4 and standard deviation 1.
BATCH_SIZES = (5, 2, 7, 3, 6, 4, 2)
SPLITS = {1: ((0, 7),), 2: ((0, 5), (5, 7)), 3: ((0, 4), (4, 4), (4, 7))}
# The model with a SyncBatchNorm synchronizes in forward: every rank runs as many batches.
SYNCED_SIZES = (3, 5, 2, 6, 4, 3)
SYNCED_SPLITS = {1: ((0, 6),), 2: ((0, 3), (3, 6)), 3: ((0, 2), (2, 4), (4, 6))}


def cnn(dtype=torch.float64, torch_layers=True):
    """conv-BN-ReLU-conv-BN on (N, 3, 8, 8); the first BN torch.nn's (or bnorm's), the second
    bnorm's (or torch.nn's)."""
    torch.manual_seed(11)
    first, second = (nn.BatchNorm2d, bt.BatchNorm2d) if torch_layers else (bt.BatchNorm2d,
                                                                           nn.BatchNorm2d)
    return nn.Sequential(nn.Conv2d(3, 6, 3), first(6), nn.ReLU(), nn.Conv2d(6, 5, 3),
                         second(5, momentum=None)).to(dtype)


def mlp(dtype=torch.float32):
    """Linear-BN1d-ReLU-Linear-BN1d on (N, 7): bnorm's, then torch.nn's with momentum=None."""
    torch.manual_seed(12)
    return nn.Sequential(nn.Linear(7, 12), bt.BatchNorm1d(12, momentum=0.3), nn.ReLU(),
                         nn.Linear(12, 4), nn.BatchNorm1d(4, momentum=None)).to(dtype)


def synced():
    """Linear-SyncBatchNorm (bnorm's: over torch.distributed's default group or MPI, or a
    BatchNorm in one process)."""
    torch.manual_seed(13)
    return nn.Sequential(nn.Linear(5, 6), bt.SyncBatchNorm(6)).double()


def images(dtype=torch.float64, channels_last=False, sizes=BATCH_SIZES, seed=21):
    g = torch.Generator().manual_seed(seed)
    out = [(torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64) + 1e4).to(dtype)
           for n in sizes]
    if channels_last:
        out = [x.contiguous(memory_format=torch.channels_last) for x in out]
    return out


def rows(dtype=torch.float32, width=7, sizes=BATCH_SIZES, seed=22):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, width, generator=g, dtype=torch.float64) + 1e4).to(dtype)
            for n in sizes]


# name: (model, batches, splits by world size)
CASES = {
    "cnn64": (lambda: cnn(torch.float64), lambda: images(torch.float64, channels_last=True),
              SPLITS),
    "mlp32": (lambda: mlp(torch.float32), lambda: rows(torch.float32), SPLITS),
    "synced": (synced, lambda: rows(torch.float64, 5, SYNCED_SIZES), SYNCED_SPLITS),
}


def population(model, batches):
    """(stats, torch's model): stats maps each BN layer's name to the float64 mean and unbiased
    variance (numpy) of every value that reached it when torch.optim.swa_utils.update_bn ran on
    a copy of model over batches; torch's model is that copy, with torch's statistics."""
    model = copy.deepcopy(model)
    seen = {}

    def keep(name):
        def hook(module, args):
            x = args[0].detach().double()
            seen.setdefault(name, []).append(x.movedim(1, -1).reshape(-1, x.shape[1]).numpy())
        return hook

    hooks = [m.register_forward_pre_hook(keep(name)) for name, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    torch.optim.swa_utils.update_bn(batches, model)
    for h in hooks:
        h.remove()
    stats = {}
    for name, parts in seen.items():
        values = np.ascontiguousarray(np.concatenate(parts).T)  # (C, m): pairwise sums by row
        stats[name] = (values.mean(axis=1), values.var(axis=1, ddof=1))
    return stats, model


def buffers(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}


def failures(rank, world):
    """What update_bn raises on this rank (type name, message) when the last rank's loader
    fails in the middle, and when rank 0's model has one more BN layer than the others'."""
    out = {}
    data = rows(torch.float32)[:3]

    def broken():
        for i, x in enumerate(data):
            if rank == world - 1 and i == 1:
                raise RuntimeError("the loader broke on purpose")
            yield x

    cases = {"loader": (mlp(), broken),
             "models": (nn.Sequential(mlp(), nn.BatchNorm1d(4)) if rank == 0 else mlp(),
                        lambda: data)}
    for what, (model, loader) in cases.items():
        try:
            bt.update_bn(loader(), model)
            out[what] = None
        except Exception as e:  # noqa: BLE001 - recorded for the test
            out[what] = (type(e).__name__, str(e))
    return out


def run(rank, world, outdir, cases):
    torch.set_num_threads(1)
    results = {}
    for name, (make_model, make_batches, splits) in cases.items():
        model = make_model()
        lo, hi = splits[world][rank]
        loader = [(x, torch.zeros(len(x))) for x in make_batches()[lo:hi]]  # (input, target)
        bt.update_bn(loader, model)
        results[name] = buffers(model)
    results["failures"] = failures(rank, world)
    # a call after the failures still pairs up with the other ranks' calls
    model = mlp()
    bt.update_bn(rows(torch.float32)[rank:rank + 1], model)
    results["after"] = buffers(model)
    torch.save(results, os.path.join(outdir, "rank%d.pt" % rank))


def gloo_main(rank, world, port, outdir):
    torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port,
                                         rank=rank, world_size=world)
    try:
        run(rank, world, outdir, CASES)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    run(comm.Get_rank(), comm.Get_size(), sys.argv[1], CASES)
