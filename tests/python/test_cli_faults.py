"""Hostile input and faults for `bnorm normalize`: NaN and infinity (propagated as torch does, or
refused by --check-finite), lying and absurd headers, unreadable input, unwritable output,
memory that runs out. Every failure exits 1, names the file, and leaves no file behind and the
existing output as it was (expect_failure checks all three)."""
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from test_cli import BNORM, SENTINEL, expect_failure, good_file, reference, run, sample


def raw_npy(header, data=b""):
    """A version 1.0 .npy file with this header text (unpadded) and these data bytes."""
    head = header.encode("latin-1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head + data


# --- NaN and infinity -----------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_propagates_like_torch(tmp_path, bad):
    x = sample((6, 3, 4), np.float64)
    x[2, 1, 3] = bad
    np.save(tmp_path / "x.npy", x)
    r = run("normalize", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert r.returncode == 0 and r.stderr == ""
    y = np.load(tmp_path / "y.npy")
    want = torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, training=True).numpy()
    assert np.isnan(y[:, 1]).all() and np.isnan(want[:, 1]).all()  # the channel is lost
    for c in (0, 2):  # the other channels are untouched by it
        np.testing.assert_allclose(y[:, c], want[:, c], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_finite_refuses_input(tmp_path, dtype):
    x = sample((4, 3, 5), dtype)
    x[3, 2, 1] = np.inf
    x[1, 2, 4] = np.nan  # the first in memory order
    np.save(tmp_path / "x.npy", x)
    expect_failure(tmp_path, tmp_path / "x.npy",
                   "nan at index (1, 2, 4) (channel 2), refused by --check-finite",
                   "--check-finite")
    # channels-last: the channel is the last index
    expect_failure(tmp_path, tmp_path / "x.npy",
                   "nan at index (1, 2, 4) (channel 4), refused by --check-finite",
                   "--check-finite", "--channels-last")
    x[1, 2, 4] = -np.inf
    np.save(tmp_path / "x.npy", x)
    expect_failure(tmp_path, tmp_path / "x.npy", "-inf at index (1, 2, 4) (channel 2)",
                   "--check-finite")


def test_check_finite_refuses_weight_and_bias(tmp_path):
    src = good_file(tmp_path)
    np.save(tmp_path / "w.npy", np.array([1, np.inf, 1], np.float32))
    expect_failure(tmp_path, src, "inf at index (1,) (channel 1), refused by --check-finite",
                   "--check-finite", "--weight", tmp_path / "w.npy", blame=tmp_path / "w.npy")
    np.save(tmp_path / "b.npy", np.array([0, 0, np.nan]))
    expect_failure(tmp_path, src, "nan at index (2,) (channel 2)", "--check-finite",
                   "--bias", tmp_path / "b.npy", blame=tmp_path / "b.npy")


def test_check_finite_passes_finite_input(tmp_path):
    x = sample((5, 3, 2), np.float32, offset=1e3)
    np.save(tmp_path / "x.npy", x)
    r = run("normalize", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--check-finite")
    assert r.returncode == 0 and r.stderr == ""
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), reference(x), rtol=1e-6, atol=1e-6)


# --- malformed headers ----------------------------------------------------------------------

@pytest.mark.parametrize("header, data, message", [
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 3), }", b"\0" * 48,
     "header says 12000000000 bytes of data (shape (1000000000, 3) of float32), file has 48"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 3), }", b"\0" * 40,
     "header says 48 bytes of data"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (4, -3), }", b"\0" * 48,
     "negative size in dimension 1"),
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", b"",
     "more elements than 64 bits"),
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999, 1), }", b"",
     "does not fit in 64 bits"),
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (1152921504606846976, 2), }", b"",
     "too large to address"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 3), 'x': 1}", b"\0" * 48,
     "unexpected key 'x'"),
    ("{'descr': '<U3', 'fortran_order': False, 'shape': (4, 3), }", b"\0" * 144,
     "(unicode string) is not supported"),
])
def test_lying_and_absurd_headers(tmp_path, header, data, message):
    (tmp_path / "bad.npy").write_bytes(raw_npy(header, data))
    expect_failure(tmp_path, tmp_path / "bad.npy", message)


def test_header_length_past_the_end(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00\xff\xff{'descr'")
    expect_failure(tmp_path, tmp_path / "bad.npy", "header longer than the file")


# --- unreadable input, unwritable output ----------------------------------------------------

@pytest.fixture
def unprivileged(tmp_path_factory):
    """(run, place): run(*args) runs the command as a user that file permissions apply to (this
    one, or nobody when the tests run as root, as in CI: root reads and writes anything), and
    place is a directory that user can reach, holding a copy of the command."""
    place = Path(tempfile.mkdtemp(prefix="bnorm-perm-"))
    place.chmod(0o755)
    command = place / "bnorm"
    shutil.copy2(BNORM, command)  # the checkout itself may not be reachable for nobody
    command.chmod(0o755)
    prefix = []
    if os.geteuid() == 0:
        prefix = [shutil.which("setpriv") or "/usr/bin/setpriv", "--reuid=65534",
                  "--regid=65534", "--clear-groups"]

    def run_as(*args):
        return subprocess.run(prefix + [str(command), *map(str, args)], capture_output=True,
                              text=True, timeout=60)
    yield run_as, place
    for p in place.rglob("*"):
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(place)


def test_permission_denied_without_privileges(unprivileged):
    """An input the user may not read, an output directory it may not write into: exit 1, the
    file named, nothing created; for normalize, apply and fit alike."""
    run_as, place = unprivileged
    src = place / "in.npy"
    np.save(src, sample((4, 3, 5), np.float32))
    src.chmod(0o644)
    stats = place / "s.safetensors"
    assert run("fit", src, "--out", stats).returncode == 0  # as this user
    stats.chmod(0o644)

    secret = place / "secret.npy"
    shutil.copy2(src, secret)
    secret.chmod(0)
    for args in (["normalize", secret, "-o", place / "y.npy"],
                 ["apply", "--stats", stats, secret, "-o", place / "y.npy"],
                 ["fit", secret, "--out", place / "t.safetensors"]):
        r = run_as(*args)
        assert r.returncode == 1, (args, r.returncode, r.stderr)
        assert r.stderr.startswith(f"bnorm: {secret}: ") and "Permission denied" in r.stderr, \
            r.stderr

    ro = place / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    for args, out in ((["normalize", src, "-o"], ro / "y.npy"),
                      (["apply", "--stats", stats, src, "-o"], ro / "y.npy"),
                      (["fit", src, "--out"], ro / "s.safetensors")):
        r = run_as(*args, out)
        assert r.returncode == 1, (args, r.returncode, r.stderr)
        assert f"bnorm: {out}: " in r.stderr and "Permission denied" in r.stderr, r.stderr
        assert list(ro.iterdir()) == []

def test_unreadable_input(tmp_path):
    expect_failure(tmp_path, tmp_path, "cannot read: Is a directory")
    good_file(tmp_path)
    expect_failure(tmp_path, tmp_path / "in.npy" / "x.npy", "cannot open: Not a directory")
    # a file the kernel refuses to read (even for root): read(2) fails with EIO
    expect_failure(tmp_path, "/proc/self/mem", "read failed: Input/output error")


def test_output_directory_refusing_files(tmp_path):
    """sysfs refuses new files even to root."""
    src = good_file(tmp_path)
    out = Path("/sys/bnorm-test.npy")
    expect_failure(tmp_path, src, "cannot create a temporary file in /sys/: Permission denied",
                   out=out, blame=out)
    assert not out.exists()


def test_output_to_full_disk_keeps_no_temporary_file(tmp_path):
    """/dev/full is written in place (renaming over a device would replace it), the error is
    caught by the write or the flush, and no temporary file appears next to it or here."""
    src = good_file(tmp_path, shape=(64, 4, 1024))  # 1 MiB: past stdio's buffer
    dev = sorted(os.listdir("/dev"))
    expect_failure(tmp_path, src, "write failed: No space left on device", out="/dev/full",
                   blame="/dev/full")
    assert sorted(os.listdir("/dev")) == dev


# --- memory ---------------------------------------------------------------------------------

def test_out_of_memory_for_the_input(tmp_path):
    """A 1 GiB input under a 512 MiB address-space limit: refused cleanly, nothing written.
    The file is sparse, so the test costs no disk."""
    src = tmp_path / "huge.npy"
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (268435456, 1), }"
    head = raw_npy(header.ljust(118) + "\n")
    with open(src, "wb") as f:
        f.write(head)
        f.truncate(len(head) + 4 * 268435456)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))

    out = tmp_path / "out.npy"
    r = expect_failure(tmp_path, src, "out of memory", out=out, limit=limit)
    assert r.stderr == f"bnorm: {src}: out of memory: cannot allocate 1073741824 bytes for the data\n"
    assert out.read_bytes() == SENTINEL


def test_header_over_one_mebibyte(tmp_path):
    """The header length field of version 2.0 allows 4 GiB; more than 1 MiB is refused before
    it is read."""
    n = 2 << 20
    (tmp_path / "big.npy").write_bytes(b"\x93NUMPY\x02\x00" + struct.pack("<I", n) + b" " * n)
    expect_failure(tmp_path, tmp_path / "big.npy",
                   "header of 2097152 bytes is larger than the 1048576 bytes accepted")


# --- interrupted ----------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_write_leaves_no_temporary_file(tmp_path, sig):
    """The command is killed while its temporary output file exists: the handler removes it,
    the process dies of the signal, and the old output is intact. A run that finishes before the
    signal lands must have written the whole output; at least one run must be caught."""
    src = tmp_path / "in.npy"
    np.save(src, sample((64, 16, 128, 128), np.float32))  # 64 MiB
    out = tmp_path / "out.npy"
    caught = 0
    for attempt in range(5):
        out.write_bytes(SENTINEL)
        before = sorted(os.listdir(tmp_path))
        # the signal's default action in the command, even where this runs as a background
        # job (which ignores SIGINT, and bnorm keeps an ignored signal ignored)
        p = subprocess.Popen([str(BNORM), "normalize", str(src), "-o", str(out)],
                             stderr=subprocess.PIPE,
                             preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while p.poll() is None and time.monotonic() < deadline:
            if any(n.startswith(".out.npy.") for n in os.listdir(tmp_path)):
                p.send_signal(sig)
                break
            time.sleep(0.0005)
        p.wait(timeout=60)
        p.stderr.close()
        assert sorted(os.listdir(tmp_path)) == before  # no temporary file, nothing else new
        if p.returncode == -sig:
            caught += 1
            assert out.read_bytes() == SENTINEL
        else:
            assert p.returncode == 0 and np.load(out).shape == (64, 16, 128, 128)
        if caught >= 2:
            break
    assert caught >= 1


# --- how the output is written --------------------------------------------------------------

def test_output_is_written_to_a_temporary_file_synced_and_renamed(tmp_path):
    """The system calls, as strace sees them: a new temporary file in the output's directory
    (O_EXCL), the data written to it, fsync, close, rename over the output, fsync of the
    directory; nothing is ever opened for writing at the output's own name."""
    if shutil.which("strace") is None:
        pytest.fail("strace is missing: apt-get install strace", pytrace=False)
    src = good_file(tmp_path)
    out = tmp_path / "out.npy"
    out.write_bytes(SENTINEL)
    log = tmp_path / "strace.log"
    r = subprocess.run(["strace", "-f", "-o", str(log), "-e",
                        "trace=openat,open,creat,write,fsync,fdatasync,close,rename,renameat,renameat2",
                        str(BNORM), "normalize", str(src), "-o", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    calls = [line.split(None, 1)[1] for line in log.read_text().splitlines()]
    log.unlink()
    tmp = re.escape(str(tmp_path)) + r"/\.out\.npy\.bnorm-tmp\.\w{6}"
    opened = [i for i, c in enumerate(calls)
              if re.match(rf'openat\(AT_FDCWD, "{tmp}", O_WRONLY\|O_CREAT\|O_EXCL', c)]
    assert len(opened) == 1, calls
    fd = re.search(r"= (\d+)$", calls[opened[0]]).group(1)
    rest = calls[opened[0] + 1:]
    seq = []  # what happens to the temporary file's descriptor, up to the rename
    for c in rest:
        if c.startswith("rename"):
            seq.append("rename")
            break
        seq += [name for name in ("write", "fsync", "close")
                if c.startswith((f"{name}({fd},", f"{name}({fd})"))]
    writes = seq.count("write")
    assert writes >= 1 and seq == ["write"] * writes + ["fsync", "close", "rename"], seq
    rename = next(c for c in rest if c.startswith("rename"))
    assert re.match(rf'rename\("{tmp}", "{re.escape(str(out))}"\) = 0', rename)
    after = rest[rest.index(rename) + 1:]
    assert any(c.startswith(f'openat(AT_FDCWD, "{tmp_path}/", O_RDONLY') for c in after)
    assert any(c.startswith("fsync(") for c in after)  # the directory entry is durable too
    assert not any(f'"{out}"' in c and "O_WRONLY" in c for c in calls)
    assert np.load(out).shape == (4, 3, 5)


# --- safetensors statistics (bnorm apply) ----------------------------------------------------

def safetensors_file(path, header, data=b""):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize("entry", [
    {"dtype": "F16\x1b]0;title\x07", "shape": [3], "data_offsets": [0, 6]},
    {"dtype": "F32", "shape": [3], "data_offsets": [0, 99]},
    "not an object",
])
def test_hostile_names_in_a_statistics_file_stay_on_one_line(tmp_path, entry):
    """fuzz_safetensors finding: names and dtypes from the file went into the message raw, so a
    crafted file could print newlines and terminal escapes. Now they show as '?', cut short."""
    name = "running_mean\n\x1b[2J" + "x" * 200
    safetensors_file(tmp_path / "stats.safetensors", {name: entry}, b"\0" * 12)
    src, out, stats = good_file(tmp_path), tmp_path / "out.npy", tmp_path / "stats.safetensors"
    r = run("apply", "--stats", stats, src, "-o", out)
    assert r.returncode == 1
    assert r.stderr.startswith(f'bnorm: {stats}: '), r.stderr
    assert '"running_mean??[2Jxxx' in r.stderr
    assert r.stderr.count("\n") == 1 and "\x1b" not in r.stderr and "\x07" not in r.stderr
    assert 'xxx..."' in r.stderr and len(r.stderr) < 300
    assert not out.exists()
