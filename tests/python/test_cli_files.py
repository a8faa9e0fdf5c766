"""How every command opens its inputs and writes its outputs, one rule for `normalize -o`,
`apply -o` and `fit --out` alike: a device or FIFO is written in place (a FIFO that nobody reads
is an error at once, not a wait); a symbolic link is followed and the file it leads to replaced
atomically, the link left a link; a replaced file keeps its mode and owner; any legal name
works; a temporary file that a killed run left behind is mentioned, not removed. Inputs that must
be regular files (fit's, apply's --stats) are refused without waiting on a FIFO, /proc files are
not taken for empty files, and an empty file name is a usage error.

mknod, chown and the unprivileged user need root: CI runs these tests as root.
"""
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from test_cli import BNORM, SENTINEL, sample

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


def need_root():
    assert os.geteuid() == 0, "mknod and chown need root: run these tests as root, as CI does"


def temporaries(*dirs):
    return [p for d in dirs for p in Path(d).iterdir() if ".bnorm-tmp." in p.name
            or p.name.startswith(".")]


# --- devices and FIFOs: written in place, never replaced ------------------------------------

@pytest.mark.parametrize("name", COMMANDS)
def test_device_output_is_written_in_place(tmp_path, files, name):
    """A private /dev/full (mknod c 1 7) fails with ENOSPC and stays a device; a private
    /dev/null (c 1 3) takes the bytes and stays a device."""
    need_root()
    src, stats, _ = files
    full, null = tmp_path / "full", tmp_path / "null"
    os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    r = run(*command(name, src, stats, full))
    assert r.returncode == 1, r.stderr
    assert r.stderr.decode() == f"bnorm: {full}: write failed: No space left on device\n"
    r = run(*command(name, src, stats, null))
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert stat.S_ISCHR(full.lstat().st_mode) and stat.S_ISCHR(null.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "inputs", "null"]


@pytest.mark.parametrize("name", COMMANDS)
def test_fifo_output_without_a_reader_fails_at_once(tmp_path, files, name):
    src, stats, _ = files
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    r = run(*command(name, src, stats, fifo))
    assert time.monotonic() - t0 < 5
    assert r.returncode == 1, r.stderr
    assert r.stderr.decode() == (f"bnorm: {fifo}: cannot open for writing: No such device or "
                                 f"address (a FIFO that no process is reading)\n")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "inputs"]


@pytest.mark.parametrize("name", COMMANDS)
def test_fifo_output_with_a_reader_gets_the_bytes(tmp_path, files, name):
    src, stats, want = files
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # there before the command starts
    try:
        p = subprocess.Popen([str(BNORM), *map(str, command(name, src, stats, fifo))],
                             stderr=subprocess.PIPE)
        chunks, deadline = [], time.monotonic() + QUICK
        while time.monotonic() < deadline:
            try:
                chunk = os.read(reader, 1 << 16)  # b"": no writer (not yet, or gone)
            except BlockingIOError:
                chunk = None  # a writer, no data yet
            if chunk:
                chunks.append(chunk)
            elif chunk == b"" and p.poll() is not None:
                break
            else:
                time.sleep(0.001)
        err = p.communicate(timeout=QUICK)[1]
        got = b"".join(chunks)
    finally:
        os.close(reader)
    assert p.returncode == 0, err
    assert got == want[name]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "inputs"]


@pytest.mark.parametrize("name", COMMANDS)
def test_output_through_proc_self_fd_is_written_in_place(tmp_path, files, name):
    """/dev/stdout leads to /proc/self/fd/1, a link that names an open file rather than a path:
    the bytes go through it (to a file the shell opened, here), and the link stays a link."""
    src, stats, want = files
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    dest = tmp_path / "dest"
    dest.write_bytes(SENTINEL * 100)
    with open(dest, "r+b") as f:
        r = subprocess.run([str(BNORM), *map(str, command(name, src, stats, link))], stdout=f,
                           stderr=subprocess.PIPE, timeout=QUICK)
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == want[name]  # truncated, then written
    assert link.is_symlink() and os.readlink(link) == "/proc/self/fd/1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "inputs", "stdout"]
    r = run(*command(name, src, stats, "/dev/stdout"))  # a pipe
    assert r.returncode == 0 and r.stdout == want[name], r.stderr


# --- symbolic links: the target is replaced, the link stays ---------------------------------

@pytest.mark.parametrize("name", COMMANDS)
def test_symlinked_output_replaces_its_target(tmp_path, files, name):
    """A relative link to a link to a file in another directory: the file is replaced
    atomically (a new inode) through a temporary file beside it, and both links stay."""
    src, stats, want = files
    real = tmp_path / "real"
    real.mkdir()
    target = real / "out"
    target.write_bytes(SENTINEL)
    (tmp_path / "hop").symlink_to("real/out")
    link = tmp_path / "link"
    link.symlink_to("hop")
    inode = target.stat().st_ino
    r = run(*command(name, src, stats, link))
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert target.read_bytes() == want[name]
    assert target.stat().st_ino != inode
    assert os.readlink(link) == "hop" and os.readlink(tmp_path / "hop") == "real/out"
    assert temporaries(tmp_path, real) == []


@pytest.mark.parametrize("name", COMMANDS)
def test_dangling_symlink_output_creates_its_target(tmp_path, files, name):
    """A link to a file that does not exist yet: the file is made where the link points (as
    `> link` does in a shell), and the link stays. Where that directory is missing too, the
    error names it."""
    src, stats, want = files
    link = tmp_path / "link"
    link.symlink_to("real/out")
    (tmp_path / "real").mkdir()
    r = run(*command(name, src, stats, link))
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert (tmp_path / "real" / "out").read_bytes() == want[name]
    assert os.readlink(link) == "real/out"
    lost = tmp_path / "lost"
    lost.symlink_to("nowhere/out")
    r = run(*command(name, src, stats, lost))
    assert r.returncode == 1
    assert r.stderr.decode() == (f"bnorm: {lost}: cannot create a temporary file in "
                                 f"{tmp_path}/nowhere/: No such file or directory\n")
    assert os.readlink(lost) == "nowhere/out" and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("name", COMMANDS)
def test_symlink_loop_is_an_error(tmp_path, files, name):
    src, stats, _ = files
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    r = run(*command(name, src, stats, tmp_path / "a"))
    assert r.returncode == 1
    assert r.stderr.decode() == (f"bnorm: {tmp_path / 'a'}: cannot follow the symbolic link: "
                                 f"Too many levels of symbolic links\n")
    assert os.readlink(tmp_path / "a") == "b" and os.readlink(tmp_path / "b") == "a"


def test_symlink_of_another_user_in_a_sticky_directory_is_not_followed(tmp_path, files):
    """Following a link by hand skips the kernel's rule for sticky world-writable directories
    such as /tmp (fs.protected_symlinks): there, only a link this user or the directory's owner
    owns is followed, whatever the sysctl says; another user's link cannot aim root's output
    at a file of its choosing."""
    need_root()
    src, stats, want = files
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    victim = tmp_path / "victim"
    victim.write_bytes(SENTINEL)
    trap = shared / "out"
    trap.symlink_to(victim)
    os.lchown(trap, 65534, 65534)
    for name in COMMANDS:
        r = run(*command(name, src, stats, trap))
        assert r.returncode == 1
        assert r.stderr.decode() == (f"bnorm: {trap}: refusing to follow the symbolic link "
                                     f"{trap}: another user owns it, in a sticky directory "
                                     f"anyone may write to\n")
        assert victim.read_bytes() == SENTINEL and trap.is_symlink()
    os.lchown(trap, 0, 0)  # this user's own link is followed
    r = run(*command("normalize", src, stats, trap))
    assert r.returncode == 0 and victim.read_bytes() == want["normalize"]


# --- what a replaced file keeps ---------------------------------------------------------------

@pytest.mark.parametrize("name", COMMANDS)
def test_replaced_output_keeps_its_mode_and_owner(tmp_path, files, name):
    need_root()
    src, stats, want = files
    out = tmp_path / "out"
    out.write_bytes(SENTINEL)
    out.chmod(0o600)
    r = run(*command(name, src, stats, out))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.read_bytes() == want[name]
    os.chown(out, 65534, 65534)
    out.chmod(0o640)
    link = tmp_path / "link"
    link.symlink_to("out")
    r = run(*command(name, src, stats, link))
    assert r.returncode == 0, r.stderr
    st = out.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == (65534, 65534)
    assert out.read_bytes() == want[name]
    # a new file gets what the umask gives
    r = run(*command(name, src, stats, tmp_path / "new"), preexec_fn=lambda: os.umask(0o027))
    assert r.returncode == 0 and stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o640


@pytest.mark.parametrize("length", [248, 254, 255])
def test_output_names_up_to_name_max(tmp_path, files, length):
    """Names the file system allows (up to NAME_MAX = 255 bytes) work, multi-byte UTF-8 ones
    too: the temporary name keeps only as much of the name as fits."""
    src, stats, want = files
    for stem in ("o", "é"):  # "é" is 2 bytes: a cut must not split it
        base = (stem * length)[:length // len(stem.encode())]
        base += "x" * (length - len(base.encode()))
        assert len(base.encode()) == length
        for name in COMMANDS:
            out = tmp_path / base
            r = run(*command(name, src, stats, out))
            assert r.returncode == 0, r.stderr
            assert out.read_bytes() == want[name]
            assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["inputs", base])
            out.unlink()


# --- temporary files ----------------------------------------------------------------------

def test_temporary_left_by_a_killed_run_is_mentioned_not_removed(tmp_path):
    """SIGKILL cannot be caught: the temporary file ".out.npy.bnorm-tmp.XXXXXX" stays. The next
    run to the same output says so on stderr and leaves it (another process may be writing it),
    and its own output is whole."""
    src = tmp_path / "in.npy"
    np.save(src, sample((64, 16, 128, 128), np.float32))  # 64 MiB
    out = tmp_path / "out.npy"
    left = []
    for attempt in range(5):
        p = subprocess.Popen([str(BNORM), "normalize", str(src), "-o", str(out)],
                             stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while p.poll() is None and time.monotonic() < deadline and not left:
            left = [n for n in os.listdir(tmp_path) if n.startswith(".out.npy.bnorm-tmp.")]
            time.sleep(0.0005)
        if left:
            p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        p.stderr.close()
        if left and p.returncode == -signal.SIGKILL:
            break
        left = []
    assert left, "no run was caught while writing"
    assert len(left[0]) == len(".out.npy.bnorm-tmp.") + 6
    stale = tmp_path / left[0]
    assert stale.exists()
    r = run("normalize", src, "-o", out, timeout=120)
    assert r.returncode == 0
    assert r.stderr.decode() == (f"bnorm: {out}: note: {stale} looks left over from an "
                                 f"interrupted run (if no other bnorm is writing this output "
                                 f"now, remove it)\n")
    assert stale.exists() and np.load(out).shape == (64, 16, 128, 128)


@pytest.mark.parametrize("name", COMMANDS)
def test_stale_temporary_is_mentioned_by_every_command(tmp_path, files, name):
    src, stats, want = files
    out = tmp_path / ("é" * 127 + "x")  # 255 bytes: the temporary keeps a shortened name
    stem = "é" * 118
    stale = tmp_path / f".{stem}.bnorm-tmp.Ab3dE9"
    assert len(stale.name.encode()) <= 255
    stale.write_bytes(b"half")
    other = [tmp_path / ".elsewhere.bnorm-tmp.Ab3dE9", tmp_path / f".{stem}.bnorm-tmp.short"]
    for p in other:
        p.write_bytes(b"not ours")
    r = run(*command(name, src, stats, out))
    assert r.returncode == 0
    assert r.stderr.decode() == (f"bnorm: {out}: note: {stale} looks left over from an "
                                 f"interrupted run (if no other bnorm is writing this output "
                                 f"now, remove it)\n")
    assert out.read_bytes() == want[name] and stale.read_bytes() == b"half"
    assert all(p.read_bytes() == b"not ours" for p in other)


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
