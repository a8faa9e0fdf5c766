"""tests/run_all.sh, the runner of `make test`: its exit status and summary line follow what the
suites did, including a C test program that crashes or exits non-zero after printing a clean
summary. The suites are stand-ins (a shell script for build/test_bnorm, another for the Python),
so this runs in a fraction of a second and does not recurse into the real suites.
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


def run_all(tmp_path, c_program, py_exit=0):
    """Runs tests/run_all.sh with c_program (shell text) as build/test_bnorm."""
    build = tmp_path / "build"
    build.mkdir()
    test_bnorm = build / "test_bnorm"
    test_bnorm.write_text("#!/bin/sh\n" + c_program)
    test_bnorm.chmod(0o755)
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    env = dict(os.environ, PYTHON=str(python), BUILD=str(build), PY_EXIT=str(py_exit))
    return subprocess.run(["sh", str(REPO / "tests" / "run_all.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def summary(r):
    return r.stdout.strip().splitlines()[-1]


def test_all_passing(tmp_path):
    r = run_all(tmp_path, 'echo "3 passed, 0 failed"\nexit 0\n')
    assert r.returncode == 0, r.stdout + r.stderr
    assert summary(r) == "8 passed, 0 failed"


def test_c_failures_are_counted(tmp_path):
    r = run_all(tmp_path, 'echo "3 passed, 2 failed"\nexit 1\n')
    assert r.returncode != 0
    assert summary(r) == "8 passed, 2 failed"


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
