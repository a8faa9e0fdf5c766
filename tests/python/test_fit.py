"""`bnorm fit` and `bnorm apply`: population statistics of .npy files read in batches (bounded
memory), under 1 and 3 MPI ranks, against float64 numpy statistics and torch's update_bn; the
safetensors files parsed here with json + numpy (the format's specification) and loaded into a
torch BatchNorm; `apply` against torch's eval-mode BatchNorm; errors name the file, exit 1 and
leave no output.
"""
import json
import os
import pty
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from deadline import run_or_kill

REPO = Path(__file__).resolve().parents[2]
BNORM = Path(os.environ.get("BNORM_BUILD", str(REPO / "build"))) / "bnorm"

if not os.access(BNORM, os.X_OK):
    pytest.fail(f"{BNORM} is not built: run make (or set BNORM_BUILD)", pytrace=False)


def run(*args, ranks=None, **kwargs):
    cmd = [str(BNORM), *map(str, args)]
    if ranks is not None:
        mpirun = shutil.which("mpirun")
        assert mpirun, "mpirun is missing: apt-get install openmpi-bin libopenmpi-dev"
        root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
        cmd = [mpirun, *root, "--oversubscribe", "-np", str(ranks)] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)


def read_safetensors(path):
    """{name: ndarray} and the metadata, by the specification: u64 LE header length, JSON
    header, little-endian data; every byte of the data belongs to exactly one tensor."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    meta = header.pop("__metadata__", None)
    kinds = {"F32": "<f4", "F64": "<f8", "I64": "<i8"}
    out, spans = {}, []
    for name, e in header.items():
        b, end = e["data_offsets"]
        a = np.frombuffer(data[b:end], dtype=kinds[e["dtype"]]).reshape(e["shape"])
        out[name] = a
        spans.append((b, end))
    spans.sort()
    pos = 0
    for b, end in spans:
        assert b == pos, "hole or overlap in the data"
        pos = end
    assert pos == len(data)
    assert (8 + n) % 8 == 0
    return out, meta


def write_safetensors(path, tensors):
    """A safetensors file made here, independently of bnorm."""
    header, blobs, pos = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        code = {"<f4": "F32", "<f8": "F64", "<i8": "I64"}[a.dtype.newbyteorder("<").str]
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [pos, pos + len(b)]}
        blobs.append(b)
        pos += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def dataset(tmp_path, shapes, dtypes, seed=0, offset=1e3, scale=2.0):
    rng = np.random.default_rng(seed)
    files, arrays = [], []
    for k, (shape, dt) in enumerate(zip(shapes, dtypes)):
        a = (rng.standard_normal(shape) * scale + offset).astype(dt)
        p = tmp_path / f"part{k}.npy"
        np.save(p, a)
        files.append(p)
        arrays.append(a.astype(np.float64))
    return files, np.concatenate(arrays)


def population(x):
    axes = (0,) + tuple(range(2, x.ndim))
    return x.mean(axis=axes), x.var(axis=axes, ddof=1)


def check_population(stats, x, prefix=""):
    mean, var = population(x)
    got_mean, got_var = stats[prefix + "running_mean"], stats[prefix + "running_var"]
    scale = np.maximum(np.abs(mean), np.sqrt(var))
    assert np.max(np.abs(got_mean - mean) / scale) <= 1e-6
    assert np.max(np.abs(got_var / var - 1)) <= 1e-5


@pytest.mark.parametrize("ranks", [None, 1, 3])
def test_population_matches_float64(tmp_path, ranks):
    # three files, float32 and float64 of either byte order, batches across the file boundaries
    files, x = dataset(tmp_path, [(37, 3, 4, 5), (20, 3, 4, 5), (1, 3, 4, 5)],
                       [np.float32, ">f8", np.float64])
    out = tmp_path / "stats.safetensors"
    r = run("fit", *files, "--out", out, "--batch", 8, "--prefix", "layer.bn", ranks=ranks)
    assert r.returncode == 0, r.stderr + r.stdout
    assert r.stderr == "" and r.stdout == ""
    stats, meta = read_safetensors(out)
    assert set(stats) == {"layer.bn.running_mean", "layer.bn.running_var",
                          "layer.bn.num_batches_tracked"}
    assert meta == {"format": "pt"}
    assert stats["layer.bn.running_mean"].dtype == np.float32  # not every input is float64
    assert stats["layer.bn.num_batches_tracked"].shape == () and \
        int(stats["layer.bn.num_batches_tracked"]) == 8  # ceil(58 / 8)
    check_population(stats, x, "layer.bn.")


def test_one_and_three_ranks_agree_in_float64(tmp_path):
    files, x = dataset(tmp_path, [(50, 4, 7), (31, 4, 7)], [np.float64, np.float64], seed=5,
                       offset=-3e4, scale=0.5)
    outs = []
    for ranks in (1, 3):
        out = tmp_path / f"s{ranks}.safetensors"
        r = run("fit", *files, "--out", out, "--batch", 10, ranks=ranks)
        assert r.returncode == 0, r.stderr
        outs.append(read_safetensors(out)[0])
    for key in ("running_mean", "running_var"):
        assert outs[0][key].dtype == np.float64
        np.testing.assert_allclose(outs[1][key], outs[0][key], rtol=1e-12)
    mean, var = population(x)
    np.testing.assert_allclose(outs[1]["running_mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(outs[1]["running_var"], var, rtol=1e-9)


def run_per_rank(contexts, timeout=60):
    """mpirun with one app context per rank (MPMD): contexts[r] = (directory, args) runs `bnorm
    ARGS` in that directory as rank r, so that the same file name can be a different file on
    each rank. A run that does not end within timeout fails the test, its processes killed."""
    mpirun = shutil.which("mpirun")
    assert mpirun, "mpirun is missing: apt-get install openmpi-bin libopenmpi-dev"
    cmd = [mpirun, *(["--allow-run-as-root"] if os.geteuid() == 0 else []), "--oversubscribe"]
    for r, (wdir, args) in enumerate(contexts):
        cmd += ([":"] if r else []) + ["-np", "1", "-wdir", str(wdir), str(BNORM),
                                       *map(str, args)]
    return run_or_kill(cmd, timeout, "mpirun: a rank waits for the others")


A_SHARD = np.random.default_rng(11).standard_normal((20, 3, 4)).astype(np.float32)
B_SHARD = np.random.default_rng(12).standard_normal((7, 3, 4)).astype(np.float32)

# rank: (how its a.npy and b.npy differ from the others', what the one message says)
DIFFERENT_FILES = {
    "N=0 on rank 1 (it used to leave rank 0 waiting)": (
        2, 1, {"a.npy": A_SHARD[:0], "b.npy": B_SHARD[:0]},
        ["bnorm: a.npy: rank 1 sees shape (0, 3, 4) float32, rank 0 sees (20, 3, 4) float32"]),
    "one file with N=0": (
        2, 1, {"a.npy": A_SHARD[:0]},
        ["bnorm: a.npy: rank 1 sees shape (0, 3, 4) float32, rank 0 sees (20, 3, 4) float32"]),
    "another N (it used to give exit 0 and wrong statistics)": (
        3, 2, {"a.npy": np.concatenate([A_SHARD, A_SHARD[:10]])},
        ["bnorm: a.npy: rank 2 sees shape (30, 3, 4) float32, rank 0 sees (20, 3, 4) float32"]),
    "another dtype": (
        3, 1, {"b.npy": B_SHARD.astype(np.float64)},
        ["bnorm: b.npy: rank 1 sees shape (7, 3, 4) float64, rank 0 sees (7, 3, 4) float32"]),
    "rank 0 differs": (
        2, 0, {"b.npy": B_SHARD[:5]},
        ["bnorm: b.npy: rank 1 sees shape (7, 3, 4) float32, rank 0 sees (5, 3, 4) float32"]),
    "another C on one rank": (
        3, 1, {"b.npy": np.zeros((7, 3, 5), np.float32)},
        ["bnorm: b.npy: shape (7, 3, 5) does not match a.npy's (20, 3, 4)"]),
    "missing on one rank": (3, 2, {"b.npy": None}, ["bnorm: b.npy: ", "No such file"]),
    "empty on one rank": (2, 1, {"a.npy": b""}, ["bnorm: a.npy: ", "empty"]),
}


def rank_dirs(tmp_path, ranks, rank=None, files=None):
    """One directory per rank holding its a.npy and b.npy (rank's changed as files says:
    an array, bytes, or None for no file)."""
    made = []
    for r in range(ranks):
        d = tmp_path / f"rank{r}"
        d.mkdir()
        for name, x in {"a.npy": A_SHARD, "b.npy": B_SHARD,
                        **(files if r == rank else {})}.items():
            if isinstance(x, bytes):
                (d / name).write_bytes(x)
            elif x is not None:
                np.save(d / name, x)
        made.append(d)
    return made


def fit_args(out, batch=8, extra=()):
    return ["fit", "a.npy", "b.npy", *extra, "--out", out, "--batch", batch]


def test_ranks_that_see_the_same_files(tmp_path):
    out = tmp_path / "s.safetensors"
    r = run_per_rank([(d, fit_args(out)) for d in rank_dirs(tmp_path, 3)])
    assert r.returncode == 0 and r.stderr == "", r.stderr
    stats, _ = read_safetensors(out)
    check_population(stats, np.concatenate([A_SHARD, B_SHARD]).astype(np.float64))


@pytest.mark.parametrize("case", DIFFERENT_FILES)
def test_ranks_that_see_different_files_fail_together(tmp_path, case):
    """Under mpirun every rank opens the files itself; where one rank's file has another N, C or
    dtype, or cannot be opened, every rank exits 1 before any work, one of them naming the file
    and what differs, and nothing is written."""
    ranks, rank, files, message = DIFFERENT_FILES[case]
    out = tmp_path / "s.safetensors"
    r = run_per_rank([(d, fit_args(out)) for d in rank_dirs(tmp_path, ranks, rank, files)])
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.count("bnorm: ") == 1 and all(m in r.stderr for m in message), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"rank{r}" for r in range(ranks)]


@pytest.mark.parametrize("batch, extra, message", [
    (5, [], "rank 2 and rank 0 differ in --batch (5 against 8)"),
    (8, ["--estimator", "batch-mean"], "rank 2 and rank 0 differ in --estimator"),
    (8, ["--channels-last"], "rank 2 and rank 0 differ in --channels-last"),
    (8, ["--check-finite"], "rank 2 and rank 0 differ in --check-finite"),
    (8, ["a.npy"], "rank 2 and rank 0 differ in the number of input files (3 against 2)")])
def test_ranks_started_with_other_options_fail_together(tmp_path, batch, extra, message):
    out = tmp_path / "s.safetensors"
    d = rank_dirs(tmp_path, 3)
    r = run_per_rank([(d[0], fit_args(out)), (d[1], fit_args(out)),
                      (d[2], fit_args(out, batch, extra))])
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.count("bnorm: ") == 1 and "bnorm: fit: " + message in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0", "rank1", "rank2"]

def test_loads_into_torch_batchnorm(tmp_path):
    files, x = dataset(tmp_path, [(16, 6, 3, 3)], [np.float32], seed=2)
    out = tmp_path / "s.safetensors"
    assert run("fit", *files, "--out", out, "--prefix", "1").returncode == 0
    stats, _ = read_safetensors(out)
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.BatchNorm2d(6))
    state = model.state_dict()
    for k, v in stats.items():
        assert state[k].shape == v.shape and state[k].dtype == torch.from_numpy(v.copy()).dtype
        state[k] = torch.from_numpy(v.copy())
    model.load_state_dict(state, strict=True)
    model.eval()
    t = torch.from_numpy(np.load(files[0]))
    mean, var = population(x)
    want = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(model(t).detach().numpy(), want, atol=1e-4)


def test_batch_mean_matches_update_bn(tmp_path):
    files, x = dataset(tmp_path, [(23, 3, 2, 2), (18, 3, 2, 2)], [np.float32, np.float32], seed=3,
                       offset=4.0, scale=3.0)
    for ranks in (None, 3):
        out = tmp_path / "bm.safetensors"
        r = run("fit", *files, "--out", out, "--batch", 6, "--estimator", "batch-mean",
                ranks=ranks)
        assert r.returncode == 0, r.stderr
        stats, _ = read_safetensors(out)
        model = torch.nn.BatchNorm2d(3).double()
        data = torch.from_numpy(x)
        loader = torch.utils.data.DataLoader(data, batch_size=6, shuffle=False)
        torch.optim.swa_utils.update_bn(loader, model)
        np.testing.assert_allclose(stats["running_mean"], model.running_mean.numpy(), rtol=1e-6)
        np.testing.assert_allclose(stats["running_var"], model.running_var.numpy(), rtol=1e-5)
        assert int(stats["num_batches_tracked"]) == int(model.num_batches_tracked) == 7
    # the estimators differ: batch-mean is not the population variance
    mean, var = population(x)
    assert np.max(np.abs(stats["running_var"] / var - 1)) > 1e-4


@pytest.mark.parametrize("ranks", [None, 3])
def test_memory_does_not_grow_with_the_file(tmp_path, ranks):
    """max RSS of fit on a 128 MiB file with batches of 64 samples stays far below its size
    (under mpirun: the largest of mpirun and the ranks, which it waits for)."""
    rng = np.random.default_rng(9)
    big = tmp_path / "big.npy"
    arr = np.lib.format.open_memmap(big, mode="w+", dtype=np.float32, shape=(8192, 16, 16, 16))
    for i in range(0, 8192, 1024):
        arr[i:i + 1024] = rng.standard_normal((1024, 16, 16, 16), dtype=np.float32) + 7
    arr.flush()
    mean, var = arr.astype(np.float64).mean(axis=(0, 2, 3)), None
    del arr
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]);"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    out = tmp_path / "big.safetensors"
    launcher = []
    if ranks:
        launcher = [shutil.which("mpirun"), "--oversubscribe", "-np", str(ranks)]
        if os.geteuid() == 0:
            launcher.insert(1, "--allow-run-as-root")
    r = subprocess.run([sys.executable, "-c", probe, *launcher, str(BNORM), "fit", str(big),
                        "--out", str(out), "--batch", "64"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    max_rss_kib = int(r.stdout.split()[-1])
    assert max_rss_kib < 48 * 1024, f"fit used {max_rss_kib} KiB for a 128 MiB file"
    stats, _ = read_safetensors(out)
    np.testing.assert_allclose(stats["running_mean"], mean, rtol=1e-6)


def sparse_npy(path, shape, dtype="<f4"):
    """A .npy file of zeros that takes no disk: the header, then the file extended to its
    full size (a hole reads as zeros)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False,
                                                 "shape": shape})
        data_at = f.tell()
    os.truncate(path, data_at + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return data_at


def under_300_mb(*args):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (300 << 20, 300 << 20))
    return subprocess.run([str(BNORM), *map(str, args)], capture_output=True, text=True,
                          timeout=600, preexec_fn=limit)


@pytest.mark.parametrize("shape, layout", [((4, 1, 2 ** 26), []),
                                           ((4, 2 ** 26, 1), ["--channels-last"])])
def test_memory_does_not_depend_on_the_sample_size(tmp_path, shape, layout):
    """1 GiB files of 4 samples of 256 MiB, fitted inside 300 MB of address space: pieces of a
    sample are read (each sample used to be one piece, widened to 8 bytes a value: "out of
    memory for a batch of 1 samples"). All zeros first, then real values in windows that
    straddle the pieces' boundaries, against float64 statistics made from the windows."""
    big, out = tmp_path / "big.npy", tmp_path / "s.safetensors"
    data_at = sparse_npy(big, shape)
    for extra in ([], ["--estimator", "batch-mean", "--batch", 2]):
        r = under_300_mb("fit", big, "--out", out, *layout, *extra)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        stats, _ = read_safetensors(out)
        assert stats["running_mean"].tolist() == [0.0] and stats["running_var"].tolist() == [0.0]
    # values at [start, start + len) of the flat array (C = 1: one channel either way)
    rng = np.random.default_rng(21)
    windows = [(2 ** 18 - 1000, 2000), (2 ** 26 + 5 * 2 ** 18 - 3, 7),
               (2 * 2 ** 26 - 500, 1000), (4 * 2 ** 26 - 4000, 4000)]
    values = []
    with open(big, "r+b") as f:
        for start, length in windows:
            w = (rng.standard_normal(length) * 3 + 100).astype("<f4")
            f.seek(data_at + 4 * start)
            f.write(w.tobytes())
            values.append(w.astype(np.float64))
    v = np.concatenate(values)
    n = 4 * 2 ** 26
    mean = v.sum() / n
    var = (((v - mean) ** 2).sum() + (n - v.size) * mean ** 2) / (n - 1)
    r = under_300_mb("fit", big, "--out", out, *layout)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    stats, _ = read_safetensors(out)
    assert abs(stats["running_mean"][0] / mean - 1) <= 1e-6, (stats, mean)
    assert abs(stats["running_var"][0] / var - 1) <= 1e-6, (stats, var)


@pytest.mark.parametrize("channels", [2 ** 26, 2 ** 22])
def test_out_of_memory_names_the_channels(tmp_path, channels):
    """What fit holds beyond a piece is per channel (the statistics it writes): 2^26 or 2^22
    channels do not fit in 300 MB, and the message says so (it used to speak of a batch of
    samples)."""
    big, out = tmp_path / "big.npy", tmp_path / "s.safetensors"
    sparse_npy(big, (2, 2, channels))
    r = under_300_mb("fit", big, "--out", out, "--channels-last")
    assert r.returncode == 1 and r.stderr == \
        f"bnorm: {big}: out of memory for the statistics of {channels} channels\n", r.stderr
    assert not out.exists()


# shapes of samples larger than a piece (2^18 values): a channel's row cut in pieces, pieces of
# several channels, pieces of rows of C, and a row of C cut in pieces
LARGE_SAMPLES = {
    "channels-first, rows cut": ([(3, 2, 300000), (2, 2, 300000)], []),
    "channels-first, several channels": ([(3, 5, 70000), (2, 5, 70000)], []),
    "channels-last, rows of C": ([(3, 150000, 2), (2, 150000, 2)], ["--channels-last"]),
    "channels-last, a row of C cut": ([(3, 2, 270000), (2, 2, 270000)], ["--channels-last"]),
}


@pytest.mark.parametrize("case", LARGE_SAMPLES)
@pytest.mark.parametrize("estimator", ["population", "batch-mean"])
@pytest.mark.parametrize("dtypes, rtol", [([np.float32, ">f8"], 2e-7),  # float32 statistics
                                          ([np.float64, ">f8"], 1e-12)])
def test_samples_larger_than_a_piece_match_numpy(tmp_path, case, estimator, dtypes, rtol):
    shapes, layout = LARGE_SAMPLES[case]
    files, x = dataset(tmp_path, shapes, dtypes, seed=8, offset=50.0, scale=3.0)
    if layout:
        x = np.moveaxis(x, -1, 1)
    out = tmp_path / "s.safetensors"
    r = run("fit", *files, "--out", out, "--batch", 2, "--estimator", estimator, *layout)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    stats, _ = read_safetensors(out)
    if estimator == "population":
        mean, var = population(x)
    else:  # batches of 2 samples across the files: the average of their statistics
        batches = [population(x[i:i + 2]) for i in range(0, len(x), 2)]
        mean = np.mean([m for m, _ in batches], axis=0)
        var = np.mean([v for _, v in batches], axis=0)
    assert int(stats["num_batches_tracked"]) == 3
    np.testing.assert_allclose(stats["running_mean"], mean, rtol=rtol, atol=0)
    np.testing.assert_allclose(stats["running_var"], var, rtol=rtol, atol=0)


@pytest.mark.parametrize("shape, layout, at, channel", [
    ((2, 3, 300000), [], (1, 2, 299999), 2),                # a channel's row cut in pieces
    ((2, 5, 70000), [], (1, 4, 3), 4),                      # pieces of several channels
    ((2, 150000, 2), ["--channels-last"], (1, 149999, 1), 1),
    ((2, 2, 270000), ["--channels-last"], (1, 1, 266000), 266000)])  # a row of C cut
def test_check_finite_in_samples_larger_than_a_piece(tmp_path, shape, layout, at, channel):
    x = np.ones(shape, np.float32)
    x[at] = np.nan
    src, out = tmp_path / "x.npy", tmp_path / "s.safetensors"
    np.save(src, x)
    r = run("fit", src, "--out", out, "--check-finite", *layout)
    assert r.returncode == 1 and f"x.npy: nan at index {at} (channel {channel}), refused by " \
        "--check-finite" in r.stderr, r.stderr
    assert not out.exists()

def test_progress_bar_only_on_a_terminal(tmp_path):
    files, _ = dataset(tmp_path, [(40, 2, 3)], [np.float32])
    out = tmp_path / "s.safetensors"
    r = run("fit", *files, "--out", out, "--batch", 4)
    assert r.returncode == 0 and r.stderr == ""
    # stderr on a pseudo-terminal: the bar appears
    master, slave = pty.openpty()
    p = subprocess.Popen([str(BNORM), "fit", str(files[0]), "--out", str(out), "--batch", "4"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            b = os.read(master, 4096)
        except OSError:
            break
        if not b:
            break
        chunks.append(b)
    assert p.wait(timeout=60) == 0
    os.close(master)
    text = b"".join(chunks).decode()
    assert "40/40 samples" in text and "samples/s" in text and "left" in text, text


def test_errors_name_the_file_and_leave_no_output(tmp_path):
    files, _ = dataset(tmp_path, [(10, 3, 2)], [np.float32])
    out = tmp_path / "s.safetensors"
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not an npy file at all")
    other = tmp_path / "other.npy"
    np.save(other, np.zeros((4, 2, 2), np.float32))
    fortran = tmp_path / "fortran.npy"
    np.save(fortran, np.asfortranarray(np.ones((4, 3, 2), np.float32)))
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 3, 2), np.float32))
    truncated = tmp_path / "truncated.npy"
    truncated.write_bytes(files[0].read_bytes()[:-8])
    cases = [([files[0], bad], "bad.npy", "not a .npy file"),
             ([files[0], other], "other.npy", "does not match"),
             ([fortran], "fortran.npy", "Fortran"),
             ([empty], "empty.npy", "no samples"),
             ([truncated], "truncated.npy", "header says"),
             ([tmp_path / "missing.npy"], "missing.npy", "No such file")]
    for inputs, name, words in cases:
        for ranks in (None, 3):
            r = run("fit", *inputs, "--out", out, ranks=ranks)
            assert r.returncode != 0, (name, r.stderr)
            if ranks is None:
                assert r.returncode == 1
            assert name in r.stderr and words in r.stderr, r.stderr
            assert not out.exists()
            assert not [p for p in tmp_path.iterdir() if p.name.startswith(".s.safetensors")]
    # an existing output is left as it was
    out.write_bytes(b"previous")
    assert run("fit", bad, "--out", out).returncode == 1
    assert out.read_bytes() == b"previous"
    # batch-mean with a batch of one value per channel
    one = tmp_path / "one.npy"
    np.save(one, np.ones((3, 2), np.float32))
    r = run("fit", one, "--out", tmp_path / "x.safetensors", "--batch", 2,
            "--estimator", "batch-mean")
    assert r.returncode == 1 and "batch 1 has 1 value per channel" in r.stderr
    # usage errors: exit 2
    for args in (["fit", files[0]], ["fit", "--out", out], ["fit", files[0], "--out", out,
                                                               "--batch", "0"],
                 ["fit", files[0], "--out", out, "--estimator", "median"],
                 ["apply", files[0], "-o", out],
                 ["fit", files[0], "--out", out, "--prefix", "p" * 501]):
        r = run(*args)
        assert r.returncode == 2 and "usage" in r.stderr, (args, r.stderr)


@pytest.mark.parametrize("ranks", [None, 3])
def test_fit_check_finite(tmp_path, ranks):
    """--check-finite: the first NaN or infinity in the dataset is named by file, index in that
    file and channel; nothing is written. Without it, fit computes NaN for that channel only."""
    x1 = np.random.default_rng(2).standard_normal((10, 3, 4)).astype(np.float32)
    x2 = np.random.default_rng(3).standard_normal((9, 3, 4)).astype(np.float32)
    x2[7, 1, 2] = np.inf  # in the second file, past the first batches of 4 samples
    x2[8, 0, 0] = np.nan
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, x1)
    np.save(b, x2)
    out = tmp_path / "s.safetensors"
    r = run("fit", a, b, "--out", out, "--batch", 4, "--check-finite", ranks=ranks)
    assert r.returncode != 0 and (ranks or r.returncode == 1)
    assert "b.npy: inf at index (7, 1, 2) (channel 1), refused by --check-finite" in r.stderr, \
        r.stderr
    assert not out.exists()
    # channels-last: the channel is the file's last index
    r = run("fit", a, b, "--out", out, "--check-finite", "--channels-last", ranks=ranks)
    assert "b.npy: inf at index (7, 1, 2) (channel 2)" in r.stderr, r.stderr
    assert not out.exists()
    # finite input passes, and equals the run without the flag
    np.save(b, np.nan_to_num(x2, posinf=0.0, nan=0.0))
    assert run("fit", a, b, "--out", out, "--check-finite", ranks=ranks).returncode == 0
    checked = out.read_bytes()
    assert run("fit", a, b, "--out", out, ranks=ranks).returncode == 0
    assert out.read_bytes() == checked


def scaled_stats(x, axes):
    """float64 mean and unbiased variance of x without overflow: of x * 2^-600, scaled back."""
    xs = x * 2.0 ** -600
    return xs.mean(axis=axes) * 2.0 ** 600, xs.var(axis=axes, ddof=1) * 2.0 ** 600 * 2.0 ** 600


@pytest.mark.parametrize("ranks", [None, 3])
def test_fit_large_float64_values(tmp_path, ranks):
    """Values spread over 1e152 (the reported case: 1.07e302 instead of 8e302 before), and
    files where M2 = count * var passes DBL_MAX while the variance is finite (fit goes on
    scaled, on some ranks and not others): population and batch-mean statistics against
    numpy's float64 on scaled values, and the average of batches' variances near DBL_MAX / 8."""
    x = np.random.default_rng(0).uniform(0, 1e152, (8, 2, 256))
    np.save(tmp_path / "issue.npy", x)
    out = tmp_path / "s.safetensors"
    r = run("fit", tmp_path / "issue.npy", "--out", out, ranks=ranks)
    assert r.returncode == 0, r.stderr
    stats, _ = read_safetensors(out)
    mean, var = scaled_stats(x, (0, 2))
    np.testing.assert_allclose(stats["running_mean"], mean, rtol=1e-13)
    np.testing.assert_allclose(stats["running_var"], var, rtol=1e-12)

    rng = np.random.default_rng(1)
    small = rng.standard_normal((24, 2, 256)) * 1e140  # M2 far from overflowing
    large = rng.uniform(0, 1.2e153, (24, 2, 256))     # one batch of 8 has M2 beyond DBL_MAX
    np.save(tmp_path / "small.npy", small)
    np.save(tmp_path / "large.npy", large)
    both = np.concatenate([small, large])
    files = [tmp_path / "small.npy", tmp_path / "large.npy"]
    r = run("fit", *files, "--out", out, "--batch", 8, ranks=ranks)
    assert r.returncode == 0, r.stderr
    stats, _ = read_safetensors(out)
    mean, var = scaled_stats(both, (0, 2))
    assert np.all(np.isfinite(var)) and np.all(var > 1e305)
    np.testing.assert_allclose(stats["running_mean"], mean, rtol=1e-13)
    np.testing.assert_allclose(stats["running_var"], var, rtol=1e-12)

    r = run("fit", *files, "--out", out, "--batch", 8, "--estimator", "batch-mean", ranks=ranks)
    assert r.returncode == 0, r.stderr
    stats, _ = read_safetensors(out)
    batches = [scaled_stats(both[k:k + 8], (0, 2)) for k in range(0, 48, 8)]
    np.testing.assert_allclose(stats["running_mean"], np.mean([m for m, _ in batches], axis=0),
                               rtol=1e-13)
    want = (np.sum([v * 2.0 ** -64 for _, v in batches], axis=0) / 6) * 2.0 ** 64
    np.testing.assert_allclose(stats["running_var"], want, rtol=1e-12)

    # batches whose variances are near DBL_MAX / 2: their sum overflows, their average does not
    near_max = np.random.default_rng(2).uniform(-1, 1, (32, 1, 64)) * 1.3e154
    np.save(tmp_path / "near.npy", near_max)
    r = run("fit", tmp_path / "near.npy", "--out", out, "--batch", 4, "--estimator",
            "batch-mean", ranks=ranks)
    assert r.returncode == 0, r.stderr
    stats, _ = read_safetensors(out)
    batches = [scaled_stats(near_max[k:k + 4], (0, 2)) for k in range(0, 32, 4)]
    want = (np.sum([v * 2.0 ** -64 for _, v in batches], axis=0) / 8) * 2.0 ** 64
    with np.errstate(over="ignore"):
        assert np.sum([v for _, v in batches]) == np.inf and np.all(np.isfinite(want))
    np.testing.assert_allclose(stats["running_var"], want, rtol=1e-12)


def test_apply_check_finite(tmp_path):
    x = np.random.default_rng(6).standard_normal((5, 3, 2)).astype(np.float32)
    src, out = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(src, x)
    stats = tmp_path / "s.safetensors"
    write_safetensors(stats, {"bn.running_mean": np.zeros(3, np.float32),
                              "bn.running_var": np.array([1, 1, np.nan], np.float32),
                              "bn.weight": np.ones(3, np.float32)})
    r = run("apply", "--stats", stats, src, "-o", out, "--prefix", "bn", "--check-finite")
    assert r.returncode == 1 and \
        's.safetensors: "bn.running_var": nan at index (2,) (channel 2), refused by ' \
        '--check-finite' in r.stderr, r.stderr
    assert not out.exists()
    # without the flag the NaN propagates to its channel, as torch's eval does
    assert run("apply", "--stats", stats, src, "-o", out, "--prefix", "bn").returncode == 0
    y = np.load(out)
    assert np.isnan(y[:, 2]).all() and np.isfinite(y[:, :2]).all()
    out.unlink()
    write_safetensors(stats, {"running_mean": np.zeros(3, np.float32),
                              "running_var": np.ones(3, np.float32)})
    x[4, 0, 1] = -np.inf
    np.save(src, x)
    r = run("apply", "--stats", stats, src, "-o", out, "--check-finite")
    assert r.returncode == 1 and "x.npy: -inf at index (4, 0, 1) (channel 0)" in r.stderr
    assert not out.exists()


def torch_eval(x, mean, var, weight=None, bias=None, eps=1e-5):
    t = torch.from_numpy(x.astype(np.float64))
    f = lambda a: None if a is None else torch.from_numpy(np.asarray(a, np.float64))
    return torch.nn.functional.batch_norm(t, f(mean), f(var), f(weight), f(bias), False, 0.0,
                                          eps).numpy()


def test_apply_with_fitted_stats(tmp_path):
    files, x = dataset(tmp_path, [(12, 4, 5)], [np.float32], seed=4)
    stats_path = tmp_path / "s.safetensors"
    assert run("fit", *files, "--out", stats_path, "--prefix", "bn").returncode == 0
    stats, _ = read_safetensors(stats_path)
    out = tmp_path / "y.npy"
    r = run("apply", "--stats", stats_path, files[0], "-o", out, "--prefix", "bn")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    y = np.load(out)
    assert y.dtype == np.float32 and y.shape == x.shape
    want = torch_eval(np.load(files[0]), stats["bn.running_mean"], stats["bn.running_var"])
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def test_apply_with_a_state_dict(tmp_path):
    """A torch BatchNorm's whole state_dict (weight and bias too), written as safetensors."""
    bn = torch.nn.BatchNorm1d(3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
        bn.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25, 9.0]))
    stats_path = tmp_path / "sd.safetensors"
    write_safetensors(stats_path, {"m." + k: v.numpy() for k, v in bn.state_dict().items()})
    x = np.random.default_rng(1).standard_normal((7, 3, 4))
    src, out = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(src, x)
    r = run("apply", "--stats", stats_path, src, "-o", out, "--prefix", "m.", "--eps", "1e-3")
    assert r.returncode == 0, r.stderr
    bn.eps = 1e-3
    bn.eval()
    np.testing.assert_allclose(np.load(out), bn(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-12, atol=1e-12)


def test_apply_errors(tmp_path):
    x = np.ones((4, 3, 2), np.float32)
    src, out = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(src, x)
    good = tmp_path / "good.safetensors"
    write_safetensors(good, {"running_mean": np.zeros(3, np.float32),
                             "running_var": np.ones(3, np.float32)})
    wrong_c = tmp_path / "wrong_c.safetensors"
    write_safetensors(wrong_c, {"running_mean": np.zeros(4, np.float32),
                                "running_var": np.ones(4, np.float32)})
    no_var = tmp_path / "no_var.safetensors"
    write_safetensors(no_var, {"running_mean": np.zeros(3, np.float32)})
    raw = good.read_bytes()
    too_long = tmp_path / "too_long.safetensors"
    too_long.write_bytes(struct.pack("<Q", 10 ** 9) + raw[8:])
    not_json = tmp_path / "not_json.safetensors"
    not_json.write_bytes(struct.pack("<Q", 8) + b"{nojson}" + raw[8 + struct.unpack("<Q", raw[:8])[0]:])
    hole = tmp_path / "hole.safetensors"
    hole.write_bytes(raw + b"\0\0\0\0")
    bad_dtype = tmp_path / "bad_dtype.safetensors"
    bad_dtype.write_bytes(raw.replace(b'"F32"', b'"BF16"', 1))
    cases = [(wrong_c, "4 values"), (no_var, 'no tensor "running_var"'),
             (too_long, "not a safetensors file"), (not_json, "not valid JSON"),
             (hole, "holes"), (bad_dtype, "BF16")]
    for stats, words in cases:
        r = run("apply", "--stats", stats, src, "-o", out)
        assert r.returncode == 1 and stats.name in r.stderr and words in r.stderr, r.stderr
        assert not out.exists()
    assert run("apply", "--stats", good, src, "-o", out).returncode == 0
    np.testing.assert_allclose(np.load(out), x / np.sqrt(1 + 1e-5), rtol=1e-6)


def stats_with_header(path, header_text, data):
    """A safetensors file whose header is header_text exactly (padded with spaces to 8)."""
    h = header_text.encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


STATS_HEADER = ('{"running_mean":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},'
                '"running_var":{"dtype":"F32","shape":[3],"data_offsets":[12,24]}}')
STATS_DATA = np.zeros(3, "<f4").tobytes() + np.ones(3, "<f4").tobytes()


@pytest.mark.parametrize("after", ["}garbage", "garbage", "}", "{}", ",", "\0", " \0 ", " x",
                                   "\u00a0", "//"])
def test_statistics_header_with_bytes_after_the_json(tmp_path, after):
    """After the header's JSON object only padding may follow: anything else is refused (it used
    to be read, the rest ignored)."""
    x = np.ones((4, 3, 2), np.float32)
    src, out, stats = tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "s.safetensors"
    np.save(src, x)
    stats_with_header(stats, STATS_HEADER + after, STATS_DATA)
    r = run("apply", "--stats", stats, src, "-o", out)
    assert r.returncode == 1, r.stderr
    assert "bnorm: " + str(stats) + ": the header has bytes after its JSON object that are " \
        "not padding (byte " in r.stderr, r.stderr
    assert not out.exists()


@pytest.mark.parametrize("after", ["", " " * 13, "\n", " \t\r\n "])
def test_statistics_header_padded_with_whitespace(tmp_path, after):
    """Spaces (the format's padding) and the JSON whitespace the reference reader accepts."""
    x = np.ones((4, 3, 2), np.float32)
    src, out, stats = tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "s.safetensors"
    np.save(src, x)
    stats_with_header(stats, STATS_HEADER + after, STATS_DATA)
    r = run("apply", "--stats", stats, src, "-o", out)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    np.testing.assert_allclose(np.load(out), x / np.sqrt(1 + 1e-5), rtol=1e-6)


def test_statistics_header_of_200000_entries(tmp_path):
    """The reader's work per entry does not grow with the number of entries: 200,000 tensors
    are read, or refused for a duplicate name at the end, in seconds (the duplicate check
    compared every pair of names: minutes here)."""
    x = np.ones((4, 3, 2), np.float32)
    src, out, stats = tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "s.safetensors"
    np.save(src, x)
    n = 200000
    entries = [f'"layer{k}.t":{{"dtype":"F32","shape":[1],"data_offsets":[{24 + 4 * k},'
               f'{28 + 4 * k}]}}' for k in range(n)]
    data = STATS_DATA + np.arange(n, dtype="<f4").tobytes()
    for last, code, message in [(None, 0, ""),
                                ("layer7.t", 1, 'tensor "layer7.t" appears twice in the header')]:
        body = entries[:-1] + [entries[-1].replace(f"layer{n - 1}.t", last)] if last else entries
        stats_with_header(stats, STATS_HEADER[:-1] + "," + ",".join(body) + "}", data)
        out.unlink(missing_ok=True)
        r = subprocess.run([str(BNORM), "apply", "--stats", str(stats), str(src), "-o", str(out)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == code and message in r.stderr, r.stderr
        assert out.exists() == (code == 0)

@pytest.mark.parametrize("order, named", [("abab", "a"), ("abba", "b"), ("abbba", "b"),
                                          ("aaab", "a"), ("bcab", "b")])
def test_statistics_header_names_the_first_repeat(tmp_path, order, named):
    """Of several repeated names, the one reported is the first entry whose name an earlier
    entry has, as a reader going through the header in order would find it."""
    x = np.ones((4, 3, 2), np.float32)
    src, out, stats = tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "s.safetensors"
    np.save(src, x)
    entries = [f'"{name}":{{"dtype":"F32","shape":[1],"data_offsets":[{24 + 4 * k},{28 + 4 * k}]}}'
               for k, name in enumerate(order)]
    stats_with_header(stats, STATS_HEADER[:-1] + "," + ",".join(entries) + "}",
                      STATS_DATA + np.zeros(len(order), "<f4").tobytes())
    r = subprocess.run([str(BNORM), "apply", "--stats", str(stats), str(src), "-o", str(out)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and f'tensor "{named}" appears twice in the header' in r.stderr, \
        r.stderr
    assert not out.exists()


def test_bench_script_measures_fit_against_reading(tmp_path):
    out = tmp_path / "fit.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "fit.py"), "--build",
                        str(BNORM.parent), "--size-mib", "4", "--rounds", "1", "--batch", "8",
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["read_mb_s"] > 0 and res["fit_mb_s"] > 0 and res["batch"] == 8
    assert abs(res["fit_over_read"] - res["fit_mb_s"] / res["read_mb_s"]) < 1e-9
    assert "of the read rate" in r.stdout


def test_channels_last(tmp_path):
    """(N, H, W, C) files: the same statistics as their (N, C, H, W) transposes; apply too."""
    files, x = dataset(tmp_path, [(9, 4, 5, 3), (6, 4, 5, 3)], [np.float32, np.float64], seed=6)
    out = tmp_path / "cl.safetensors"
    r = run("fit", *files, "--out", out, "--batch", 4, "--channels-last")
    assert r.returncode == 0, r.stderr
    stats, _ = read_safetensors(out)
    check_population(stats, np.moveaxis(x, -1, 1))
    y_path = tmp_path / "y.npy"
    r = run("apply", "--stats", out, files[0], "-o", y_path, "--channels-last")
    assert r.returncode == 0, r.stderr
    x0 = np.load(files[0])
    want = torch_eval(np.moveaxis(x0, -1, 1), stats["running_mean"], stats["running_var"])
    np.testing.assert_allclose(np.load(y_path), np.moveaxis(want, 1, -1), rtol=1e-6, atol=1e-6)
    # a different C in the last dimension is refused, naming the file
    other = tmp_path / "other.npy"
    np.save(other, np.zeros((2, 4, 5, 2), np.float32))
    r = run("fit", files[0], other, "--out", tmp_path / "z.safetensors", "--channels-last")
    assert r.returncode == 1 and "other.npy" in r.stderr and "does not match" in r.stderr
