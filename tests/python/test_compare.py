"""bench/compare.py, the check that a new build is as fast as the one it started from: one round
of one small case with the same library as base and new (its table and its JSON), bench_ab's own
line and its errors, the grid it takes from bench/run.py, the order of the builds, the flag at the
tolerance, and usage errors. A few seconds in all.

The library is $BNORM_BUILD/libbnorm.so and the timer $BNORM_BUILD/bench_ab (default:
<repo>/build).
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("BNORM_BUILD", str(REPO / "build")))
LIB = BUILD / "libbnorm.so"
AB = BUILD / "bench_ab"
SCRIPT = REPO / "bench" / "compare.py"

for built in (LIB, AB):
    if not built.is_file():
        pytest.fail(f"{built} is not built: run make (or set BNORM_BUILD)", pytrace=False)


def load_compare():
    spec = importlib.util.spec_from_file_location("bnorm_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare = load_compare()


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), "--ab", str(AB), *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def run_ab(*args):
    return subprocess.run([str(AB), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_bench_ab_times_both_libraries_in_one_line():
    r = run_ab(LIB, LIB, "--shape", "20x2", "--mode", "backward", "--threads", 2,
               "--repeat", 7)
    assert r.returncode == 0, r.stderr
    line = json.loads(r.stdout)
    assert set(line) == {"base_median_ns", "base_min_ns", "new_median_ns", "new_min_ns",
                         "paired_ratio", "repeat", "inner"}
    assert line["repeat"] == 7 and line["inner"] >= 1
    for build in ("base", "new"):
        assert 0 < line[build + "_min_ns"] <= line[build + "_median_ns"]
    assert line["paired_ratio"] > 0


@pytest.mark.parametrize("dtype", ["f32", "f64", "bf16", "f16"])
@pytest.mark.parametrize("mode", ["train", "eval", "backward"])
def test_bench_ab_times_every_dtype(dtype, mode):
    r = run_ab(LIB, LIB, "--shape", "8x3x5x5", "--mode", mode, "--dtype", dtype,
               "--repeat", 3)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["paired_ratio"] > 0


@pytest.mark.parametrize("args, message", [
    (["--shape", "0x2"], "bad --shape 0x2"),
    (["--shape", "20x2", "--dtype", "f8"], "bad --dtype"),
    (["--shape", "20x2", "--layout", "ncwh"], "bad --layout"),
    (["--shape", "20x2", "--threads"], "--threads needs a value"),
    ([], "--shape is required"),
])
def test_bench_ab_usage_errors(args, message):
    r = run_ab(LIB, LIB, *args)
    assert r.returncode == 2 and message in r.stderr and r.stdout == "", r.stderr


def test_bench_ab_refuses_a_file_that_is_not_the_library(tmp_path):
    fake = tmp_path / "libfake.so"
    fake.write_text("not a library")
    r = run_ab(fake, LIB, "--shape", "20x2")
    assert r.returncode == 1 and "libfake.so" in r.stderr and r.stdout == ""


def test_one_round_of_one_case_with_the_same_build(tmp_path):
    out = tmp_path / "out.json"
    r = run("--base", LIB, "--new", LIB, "--rounds", 1, "--shape", "20x2", "--mode", "eval",
            "--threads", 1, "--json", out)
    assert r.returncode in (0, 1), r.stderr  # 1: noise made the same build look 5% slower
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["shape", "layout", "mode", "thr", "base", "median", "new",
                                "median", "new/base", "paired"]
    assert len(lines) == 3
    row = re.fullmatch(r"20x2 +nchw +eval +1 +([\d.]+ [nmu]?s) +([\d.]+ [nmu]?s) +([\d.]+)"
                       r" +([\d.]+)(  SLOWER \(> 5%\))?", lines[1])
    assert row, lines[1]
    slower = row.group(5) is not None
    assert (r.returncode == 1) == slower
    assert lines[2] == "1 case, %d more than 5%% slower" % slower
    assert "1 round on " in r.stderr

    saved = json.loads(out.read_text())
    assert saved["rounds"] == 1 and saved["base"] == saved["new"] == str(LIB)
    [case] = saved["cases"]
    assert (case["shape"], case["layout"], case["mode"], case["threads"]) == \
        ("20x2", "nchw", "eval", 1)
    assert case["base_median_ns"] > 0 and case["new_median_ns"] > 0
    assert case["ratio"] == pytest.approx(case["new_median_ns"] / case["base_median_ns"])
    assert float(row.group(3)) == pytest.approx(case["ratio"], abs=5e-4)
    assert float(row.group(4)) == pytest.approx(case["paired_ratio"], abs=5e-4)
    assert case["slower"] == slower == (case["ratio"] > 1.05)
    # one bench_ab process, base first in round 0 on case 0
    [rec] = saved["raw"]
    assert (rec["round"], rec["first"], rec["error"]) == (0, "base", None)
    assert (rec["base_median_ns"], rec["new_median_ns"], rec["paired_ratio"]) == \
        (case["base_median_ns"], case["new_median_ns"], case["paired_ratio"])


def test_grid_is_bench_runs_and_the_first_build_alternates():
    cases = compare.grid_cases()
    run_py = compare.bench_run
    expected = [(s, l, m, t) for s, layouts in run_py.GRID for m in run_py.MODES
                for t in run_py.THREADS for l in layouts]
    assert cases == expected and len(cases) == 6 * 3 * 2
    assert compare.grid_cases(["32x64x56x56"], ["train"], [2]) == \
        [("32x64x56x56", "nchw", "train", 2), ("32x64x56x56", "nhwc", "train", 2)]
    firsts = [[compare.first_build(rnd, ci) for ci in range(3)] for rnd in range(2)]
    assert firsts == [["base", "new", "base"], ["new", "base", "new"]]


def test_a_case_is_flagged_only_above_the_tolerance():
    cases = [("a", "nchw", "eval", 1), ("b", "nchw", "eval", 1), ("c", "nhwc", "train", 2)]
    medians = {(cases[0], "base"): [100, 300, 200], (cases[0], "new"): [209, 211, 500],
               (cases[1], "base"): [100], (cases[1], "new"): [104.9],
               (cases[2], "base"): [100, 100], (cases[2], "new"): [float("nan"), float("nan")]}
    paired = {cases[0]: [0.9, 1.2, 1.1], cases[1]: [1.0], cases[2]: [1.0, 1.0]}
    rows = compare.summarize(cases, medians, 0.05, paired)
    assert [r["ratio"] for r in rows[:2]] == [pytest.approx(211 / 200), pytest.approx(1.049)]
    assert [r["paired_ratio"] for r in rows] == [1.1, 1.0, 1.0]
    assert [r["slower"] for r in rows[:2]] == [True, False]
    assert rows[2]["slower"] is True  # a NaN median passes no check
    text = compare.format_rows(rows[:2], 0.05).splitlines()
    assert text[1].endswith("1.055   1.100  SLOWER (> 5%)") and text[2].endswith("1.049   1.000")
    assert text[3] == "2 cases, 1 more than 5% slower"


@pytest.mark.parametrize("args, message", [
    (["--rounds", 0], "--rounds"),
    (["--tolerance", -1], "--tolerance"),
    (["--shape", "7x7"], "no case of the grid"),
    (["--mode", "forward"], "--mode"),
])
def test_usage_errors(args, message):
    r = run("--base", LIB, "--new", LIB, *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert r.stdout == ""


def test_a_missing_build_is_a_usage_error(tmp_path):
    r = run("--base", tmp_path / "nothing", "--new", LIB, "--rounds", 1)
    assert r.returncode == 2 and "--base" in r.stderr and "is not a file" in r.stderr


def test_a_failing_run_is_exit_status_2(tmp_path):
    fake = tmp_path / "libfake.so"
    fake.write_text("not a library")
    r = run("--base", fake, "--new", LIB, "--rounds", 1, "--shape", "20x2", "--mode", "eval",
            "--threads", 1)
    assert r.returncode == 2 and "libfake.so" in r.stderr and r.stdout == ""
