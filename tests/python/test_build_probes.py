"""The Makefile's probes: have_header answers no for a header the compiler cannot find and yes for
one it can (`make probes` prints its answers), what the probes found is part of the build (a
command built where cJSON is absent says what to install), and `make test` installs its
prerequisites before anything is built or probed again."""
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("BNORM_BUILD", REPO / "build"))
CC = os.environ.get("CC", "cc")


def make(*args, **env):
    """make -s -C REPO ARGS, in the environment of a make started by hand (none of the MAKEFLAGS
    of a `make test` that runs this file)."""
    base = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "-s", "--no-print-directory", "-C", str(REPO), *args],
                          env=dict(base, **env), capture_output=True, text=True, timeout=600)


def probe(header, **env):
    """have_header's answer for header, as `make probes HEADER=header` prints it."""
    r = make("probes", "HEADER=" + header, **env)
    assert r.returncode == 0, r.stderr
    answers = dict(line.split(": ") for line in r.stdout.splitlines())
    return answers[header], answers["cjson/cJSON.h"]


def test_absent_header_reads_as_absent():
    assert probe("bnorm_no_such_header_9f3a.h")[0] == "no"
    assert probe("no_such_dir_9f3a/x.h")[0] == "no"
    # without the system's include directories, cJSON is absent even where it is installed
    assert probe("stdio.h", CC=CC + " -nostdinc") == ("no", "no")


def test_present_header_reads_as_present(tmp_path):
    assert probe("stdio.h")[0] == "yes"
    (tmp_path / "cjson").mkdir()
    (tmp_path / "cjson" / "cJSON.h").write_text("/* a stand-in */\n")
    (tmp_path / "bnorm_probe_9f3a.h").write_text("/* a stand-in */\n")
    # CPATH adds a directory to the compiler's include path, as -I does
    assert probe("bnorm_probe_9f3a.h", CPATH=str(tmp_path)) == ("yes", "yes")
    assert probe("bnorm_probe_9f3a.h", CPATH=str(tmp_path), CC=CC + " -nostdinc") == ("yes", "yes")


def test_command_built_without_cjson_says_what_to_install(tmp_path):
    """A build whose cJSON probe answers no (HAVE_CJSON= stands for a machine without cJSON):
    the objects that depend on it are rebuilt, and nothing else; the demo runs; fit and apply
    name the package to install and write nothing."""
    build = tmp_path / "build"
    shutil.copytree(BUILD, build, symlinks=True)
    lib_time = (build / "libbnorm.a").stat().st_mtime_ns
    r = make("BUILD=" + str(build), "HAVE_CJSON=", str(build / "bnorm"))
    assert r.returncode == 0, r.stderr
    assert (build / "config").read_text().startswith("cjson=no ")
    assert (build / "libbnorm.a").stat().st_mtime_ns == lib_time  # not rebuilt
    bnorm = str(build / "bnorm")
    demo = subprocess.run([bnorm, "demo"], capture_output=True, text=True, timeout=60)
    assert demo.returncode == 0 and "largest |y - float64 reference|" in demo.stdout, demo.stderr
    x = tmp_path / "x.npy"
    np.save(x, np.arange(12, dtype=np.float32).reshape(6, 2))
    stats = tmp_path / "stats.safetensors"
    message = ("bnorm was built without cJSON, which safetensors files need: "
               "apt-get install libcjson-dev, then rebuild\n")
    for args, name in ((["fit", x, "--out", stats], stats),
                       (["apply", "--stats", stats, x, "-o", tmp_path / "y.npy"], stats)):
        r = subprocess.run([bnorm, *map(str, args)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and r.stderr == f"bnorm: {name}: {message}", r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "x.npy"]


def test_make_test_installs_before_it_builds():
    """`make -n test`: the prerequisites come first, then a make of its own (which probes again)
    builds and runs the suites."""
    r = make("-n", "test")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "sh tests/prerequisites.sh" in lines[0], lines[:3]
    assert "test-suites" in lines[1], lines[:3]
    assert any("tests/run_all.sh" in line for line in lines[2:]), lines


def test_plain_make_builds_everything(tmp_path):
    """`make` with no target is `make all` (the first rule of the file must not win)."""
    r = make("-n", "BUILD=" + str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    assert "libbnorm.so" in r.stdout and "test_bnorm" in r.stdout, r.stdout[-2000:]
