"""tests/run_all.sh, the runner of `make test`: its exit status and summary line follow what the
suites did, including a C test program that crashes or exits non-zero after printing a clean
summary. The suites are stand-ins (a shell script for build/test_bnorm, one for
build/test_bnorm_mpi with an mpirun that runs it once, another for the Python), so this runs in a
fraction of a second and does not recurse into the real suites.
"""
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FAKE_PYTHON = """#!/bin/sh
# stands in for the Python: the import check passes, pytest prints its summary and exits $PY_EXIT
case "$1" in
-c) exit 0 ;;
esac
echo "5 passed in 0.01s"
exit ${PY_EXIT:-0}
"""


FAKE_MPIRUN = """#!/bin/sh
# stands in for mpirun: runs the program (the last argument) once
for last; do :; done
exec "$last"
"""

MPI_PASSING = 'echo "1 ranks: 2 passed, 0 failed"\nexit 0\n'


def run_all(tmp_path, c_program, py_exit=0, mpi_program=MPI_PASSING):
    """Runs tests/run_all.sh with c_program (shell text) as build/test_bnorm and mpi_program as
    build/test_bnorm_mpi (None: not built)."""
    build = tmp_path / "build"
    build.mkdir()
    test_bnorm = build / "test_bnorm"
    test_bnorm.write_text("#!/bin/sh\n" + c_program)
    test_bnorm.chmod(0o755)
    if mpi_program is not None:
        test_mpi = build / "test_bnorm_mpi"
        test_mpi.write_text("#!/bin/sh\n" + mpi_program)
        test_mpi.chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mpirun = bin_dir / "mpirun"
    mpirun.write_text(FAKE_MPIRUN)
    mpirun.chmod(0o755)
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    env = dict(os.environ, PYTHON=str(python), BUILD=str(build), PY_EXIT=str(py_exit),
               PATH=str(bin_dir) + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run(["sh", str(REPO / "tests" / "run_all.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def summary(r):
    return r.stdout.strip().splitlines()[-1]


def test_all_passing(tmp_path):
    r = run_all(tmp_path, 'echo "3 passed, 0 failed"\nexit 0\n')
    assert r.returncode == 0, r.stdout + r.stderr
    assert summary(r) == "16 passed, 0 failed"


def test_c_failures_are_counted(tmp_path):
    r = run_all(tmp_path, 'echo "3 passed, 2 failed"\nexit 1\n')
    assert r.returncode != 0
    assert summary(r) == "16 passed, 2 failed"


@pytest.mark.parametrize("c_program", [
    'echo "suite_a ok"\nkill -SEGV $$\n',           # crashes before its summary
    'echo "3 passed, 0 failed"\nkill -SEGV $$\n',   # crashes after it (say, at exit)
    'echo "3 passed, 0 failed"\nexit 1\n',          # a clean summary but a failing status
    'exit 0\n',                                     # no summary at all
])
def test_c_program_failing_without_a_failed_count_fails_the_run(tmp_path, c_program):
    r = run_all(tmp_path, c_program)
    assert r.returncode != 0, r.stdout + r.stderr
    assert not summary(r).endswith(" 0 failed"), summary(r)


def test_python_exit_status_is_respected(tmp_path):
    r = run_all(tmp_path, 'echo "3 passed, 0 failed"\nexit 0\n', py_exit=1)
    assert r.returncode != 0
    assert not summary(r).endswith(" 0 failed"), summary(r)


@pytest.mark.parametrize("mpi_program", [
    None,                                               # not built: MPI missing
    'echo "1 ranks: 2 passed, 1 failed"\nexit 1\n',      # a failed check
    'echo "1 ranks: 2 passed, 0 failed"\nkill -SEGV $$\n',  # a rank crashes after its summary
    'exit 0\n',                                         # no summary at all
])
def test_mpi_suite_missing_or_failing_fails_the_run(tmp_path, mpi_program):
    r = run_all(tmp_path, 'echo "3 passed, 0 failed"\nexit 0\n', mpi_program=mpi_program)
    assert r.returncode != 0, r.stdout + r.stderr
    assert not summary(r).endswith(" 0 failed"), summary(r)
    if mpi_program is None:
        assert "MPI is missing" in r.stderr and "apt-get install openmpi-bin" in r.stderr
