"""Throughput of `bnorm fit` against the rate at which the same file can be read.

    python3 bench/fit.py [--build build] [--size-mib 1024] [--batch 256] [--rounds 5] [--json F]

Writes a float32 (N, 64, 32, 32) .npy file of about --size-mib MiB in a temporary directory,
then, interleaved round by round: reads it from start to end in pieces of one batch (Python's
readinto into one buffer: the cost of the bytes alone) and runs `bnorm fit --batch B` on it. Both
see the file in the page cache after the first round. Prints the medians in MB/s and their ratio;
fit at the read rate means the statistics cost nothing beyond reading.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np


def read_rate(path, piece):
    buf = bytearray(piece)
    view = memoryview(buf)
    t0 = time.perf_counter()
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            total += n
    return total / (time.perf_counter() - t0)


def fit_rate(bnorm, path, batch, out):
    t0 = time.perf_counter()
    subprocess.run([bnorm, "fit", path, "--out", out, "--batch", str(batch)], check=True)
    return os.path.getsize(path) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()
    bnorm = os.path.join(a.build, "bnorm")
    sample = 64 * 32 * 32 * 4
    n = max(1, a.size_mib * 2 ** 20 // sample)
    with tempfile.TemporaryDirectory() as tmp:
        path, out = os.path.join(tmp, "data.npy"), os.path.join(tmp, "stats.safetensors")
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, 64, 32, 32))
        rng = np.random.default_rng(0)
        for i in range(0, n, 256):
            arr[i:i + 256] = rng.standard_normal(arr[i:i + 256].shape, dtype=np.float32)
        arr.flush()
        del arr
        reads, fits = [], []
        for _ in range(a.rounds):
            reads.append(read_rate(path, a.batch * sample))
            fits.append(fit_rate(bnorm, path, a.batch, out))
    res = {"file_mib": n * sample / 2 ** 20, "batch": a.batch, "rounds": a.rounds,
           "read_mb_s": statistics.median(reads) / 1e6, "fit_mb_s": statistics.median(fits) / 1e6}
    res["fit_over_read"] = res["fit_mb_s"] / res["read_mb_s"]
    print("bnorm fit on a %.0f MiB float32 file, batches of %d samples, median of %d rounds"
          % (res["file_mib"], a.batch, a.rounds))
    print("  read the file   %9.0f MB/s" % res["read_mb_s"])
    print("  bnorm fit       %9.0f MB/s   (%.2f of the read rate)"
          % (res["fit_mb_s"], res["fit_over_read"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
