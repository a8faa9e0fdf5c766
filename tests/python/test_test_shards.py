"""build/test_bnorm --shard K/N, which `make valgrind` runs side by side: the N shards of a filter
run each of its suites exactly once between them, and a bad shard is a usage error (exit 2).

The program is $BNORM_BUILD/test_bnorm (default: <repo>/build/test_bnorm).
Run: /usr/bin/python3 -m pytest tests/python/test_test_shards.py
"""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEST_BNORM = Path(os.environ.get("BNORM_BUILD", str(REPO / "build"))) / "test_bnorm"
FILTER = "suite_plan"  # quick suites, several of them


def suites(*args):
    """The suites a run names, in its order, and its exit status."""
    if not TEST_BNORM.exists():
        pytest.fail(f"{TEST_BNORM} is not built: run make (or set BNORM_BUILD)", pytrace=False)
    r = subprocess.run([str(TEST_BNORM), *args], capture_output=True, text=True, cwd=REPO)
    names = [line.split()[0] for line in r.stdout.splitlines() if line.startswith("suite_")]
    return names, r.returncode, r.stderr


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_shards_run_each_suite_once(n):
    whole, status, _ = suites(FILTER)
    assert status == 0 and len(whole) >= 4, whole
    parts = []
    for k in range(n):
        names, status, err = suites("--shard", f"{k}/{n}", FILTER)
        assert status == (0 if names else 1), (k, n, err)  # a shard with nothing to run fails
        parts.append(names)
    assert sorted(sum(parts, [])) == sorted(whole)
    # the k-th of every n, in name order
    assert parts == [whole[k::n] for k in range(n)]


@pytest.mark.parametrize("bad", ["2/2", "-1/2", "0/0", "1", "x/2", "1/2x"])
def test_a_bad_shard_is_a_usage_error(bad):
    names, status, err = suites("--shard", bad, FILTER)
    assert status == 2 and not names
    assert "--shard K/N" in err and bad in err
