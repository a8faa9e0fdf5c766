"""How every command opens its inputs and writes its outputs, one rule for `normalize`, `apply`
and `fit` alike: inputs that must be regular files (fit's, apply's --stats) are refused without
waiting on a FIFO, /proc files are not taken for empty files, and an empty file name is a usage
error.
"""
import os
import subprocess
import time

import numpy as np
import pytest

from test_cli import BNORM, sample

QUICK = 20  # seconds: a command that should fail at once, killed (and the test failed) if it waits


def run(*args, timeout=QUICK, **kwargs):
    return subprocess.run([str(BNORM), *map(str, args)], capture_output=True, timeout=timeout,
                          **kwargs)


def command(name, src, stats, out):
    return {"normalize": ["normalize", src, "-o", out],
            "apply": ["apply", "--stats", stats, src, "-o", out],
            "fit": ["fit", src, "--out", out]}[name]


COMMANDS = ["normalize", "apply", "fit"]


@pytest.fixture
def files(tmp_path):
    """(src, stats, want): an input, the statistics fit writes for it, and what each command
    writes for it (the commands are deterministic), made in a directory of their own."""
    home = tmp_path / "inputs"
    home.mkdir()
    src, stats = home / "in.npy", home / "stats.safetensors"
    np.save(src, sample((4, 3, 5), np.float32))
    assert run("fit", src, "--out", stats).returncode == 0
    want = {}
    for name in COMMANDS:
        out = home / f"want-{name}"
        r = run(*command(name, src, stats, out))
        assert r.returncode == 0, r.stderr
        want[name] = out.read_bytes()
        out.unlink()
    return src, stats, want


# --- inputs ---------------------------------------------------------------------------------

def test_fifo_inputs_that_must_be_regular_files_are_refused_at_once(tmp_path, files):
    """fit reads its inputs in pieces and apply reads --stats whole, from regular files: a FIFO
    (with no writer, which would block open) or a device is refused at once, under mpirun too."""
    src, stats, _ = files
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    cases = [(["apply", "--stats", fifo, src, "-o", out], fifo, "a FIFO"),
             (["fit", fifo, "--out", out], fifo, "a FIFO"),
             (["fit", src, fifo, "--out", out], fifo, "a FIFO"),
             (["fit", "/dev/null", "--out", out], "/dev/null", "a character device"),
             (["apply", "--stats", "/dev/null", src, "-o", out], "/dev/null",
              "a character device")]
    for args, blame, kind in cases:
        t0 = time.monotonic()
        r = run(*args)
        assert time.monotonic() - t0 < 5
        assert r.returncode == 1, (args, r.stderr)
        assert r.stderr.decode() == f"bnorm: {blame}: not a regular file ({kind})\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "inputs"]
    mpirun = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "3",
                             str(BNORM), "fit", src, fifo, "--out", out],
                            capture_output=True, text=True, timeout=120)
    assert mpirun.returncode != 0
    assert f"bnorm: {fifo}: not a regular file (a FIFO)\n" in mpirun.stderr
    assert not out.exists()


def test_normalize_fifo_input_waits_for_its_writer(tmp_path, files):
    """normalize reads IN, --weight and --bias as streams (a pipe, /dev/stdin): a FIFO is read
    once a writer comes, as cat reads one; it waits for it, nothing is written meanwhile."""
    src, stats, want = files
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out, weight, ref = tmp_path / "out", tmp_path / "w.npy", tmp_path / "ref"
    np.save(weight, np.full(3, 2, np.float32))
    assert run("normalize", src, "-o", ref, "--weight", weight).returncode == 0
    for args, data, result in ((["normalize", fifo, "-o", out], src, want["normalize"]),
                               (["normalize", src, "-o", out, "--weight", fifo], weight,
                                ref.read_bytes())):
        p = subprocess.Popen([str(BNORM), *map(str, args)], stderr=subprocess.PIPE)
        time.sleep(0.5)
        assert p.poll() is None and not out.exists()  # waiting
        with open(fifo, "wb") as f:
            f.write(data.read_bytes())
        err = p.communicate(timeout=QUICK)[1]
        assert p.returncode == 0, err
        assert out.read_bytes() == result
        out.unlink()


def test_proc_files_are_not_empty_files(tmp_path, files):
    """A /proc file says it has 0 bytes and has some: it is read for what it is, not an empty
    file, by every reader."""
    src, stats, _ = files
    out = tmp_path / "out"
    cpu = "/proc/cpuinfo"
    npy = 'not a .npy file: it does not start with the magic "\\x93NUMPY"'
    cases = [(["normalize", cpu, "-o", out], npy),
             (["normalize", src, "-o", out, "--bias", cpu], npy),
             (["apply", "--stats", stats, cpu, "-o", out], npy),
             (["fit", cpu, "--out", out], npy),
             (["apply", "--stats", cpu, src, "-o", out], "not a safetensors file: ")]
    for args, message in cases:
        r = run(*args)
        assert r.returncode == 1
        assert r.stderr.decode().startswith(f"bnorm: {cpu}: {message}"), (args, r.stderr)
        assert not out.exists()


# --- empty names ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["normalize", "IN.npy", "-o", ""], "--output: the file name is empty"),
    (["normalize", "IN.npy", "--output="], "--output: the file name is empty"),
    (["normalize", "", "-o", "OUT.npy"], "an input file name is empty"),
    (["normalize", "IN.npy", "-o", "OUT.npy", "--weight", ""], "--weight: the file name is empty"),
    (["normalize", "IN.npy", "-o", "OUT.npy", "--bias="], "--bias: the file name is empty"),
    (["apply", "--stats", "S", "IN.npy", "-o", ""], "--output: the file name is empty"),
    (["apply", "--stats", "", "IN.npy", "-o", "OUT.npy"], "--stats: the file name is empty"),
    (["apply", "--stats", "S", "", "-o", "OUT.npy"], "an input file name is empty"),
    (["fit", "IN.npy", "--out", ""], "--out: the file name is empty"),
    (["fit", "IN.npy", "-o", ""], "--out: the file name is empty"),
    (["fit", "IN.npy", "", "--out", "S"], "an input file name is empty"),
])
def test_empty_file_names_are_usage_errors(tmp_path, args, message):
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    err = r.stderr.decode()
    assert err.startswith(f"bnorm: {args[0]}: {message}\nusage: bnorm {args[0]}"), err
    assert os.listdir(tmp_path) == []
