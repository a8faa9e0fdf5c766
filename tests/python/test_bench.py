"""`bnorm bench`, run as `make bench` runs it: JSON lines with the documented keys and sane
numbers, the table without --json, the grid narrowed by the options, and usage errors (exit 2)
for bad values. Small shapes and --repeat 5 keep it to a few seconds.

The command is $BNORM_BUILD/bnorm (default: <repo>/build/bnorm).
"""
import json
import re
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BNORM = Path(os.environ.get("BNORM_BUILD", str(REPO / "build"))) / "bnorm"

if not os.access(BNORM, os.X_OK):
    pytest.fail(f"{BNORM} is not built: run make (or set BNORM_BUILD)", pytrace=False)

KEYS = {"shape", "layout", "mode", "threads", "dtype", "median_ns", "min_ns", "bytes", "gbps",
        "roofline_ns", "roofline_pct"}


def run(*args):
    return subprocess.run([str(BNORM), "bench", *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def bench_json(*args):
    r = run("--json", "--repeat", 5, *args)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines, "no output"
    return [json.loads(line) for line in lines]


def check_case(case, shape, layout, mode, threads, dtype="f32"):
    assert KEYS <= case.keys()
    assert (case["shape"], case["layout"], case["mode"], case["threads"], case["dtype"]) == \
        (shape, layout, mode, threads, dtype)
    dims = [int(d) for d in shape.split("x")]
    count = 1
    for d in dims:
        count *= d
    per_elem = (12 if mode == "backward" else 8) * {"f64": 2, "f32": 1, "bf16": 0.5, "f16": 0.5}[dtype]
    assert case["bytes"] == count * per_elem
    for k in ("median_ns", "min_ns", "roofline_ns", "gbps", "roofline_pct"):
        assert isinstance(case[k], (int, float)) and case[k] > 0, (k, case[k])
    assert case["min_ns"] <= case["median_ns"]
    assert case["gbps"] == pytest.approx(case["bytes"] / case["median_ns"], rel=1e-2)
    assert case["gbps"] < 10000  # 10 TB/s: no CPU memory system moves that
    assert case["roofline_pct"] == pytest.approx(100 * case["roofline_ns"] / case["median_ns"],
                                                 rel=1e-2, abs=0.01)


def test_small_2d_train():
    [case] = bench_json("--shape", "20x2", "--mode", "train", "--threads", 1)
    check_case(case, "20x2", "nchw", "train", 1)
    assert case["repeat"] == 5


def test_4d_nhwc_backward():
    [case] = bench_json("--shape", "4x32x8x8", "--layout", "nhwc", "--mode", "backward",
                        "--threads", 2)
    check_case(case, "4x32x8x8", "nhwc", "backward", 2)


def test_shape_without_layout_runs_both_layouts_and_f64():
    cases = bench_json("--shape", "2x16x4x4", "--mode", "eval", "--threads", 1, "--dtype", "f64")
    assert [c["layout"] for c in cases] == ["nchw", "nhwc"]
    for c in cases:
        check_case(c, "2x16x4x4", c["layout"], "eval", 1, "f64")


@pytest.mark.parametrize("fuse,extra", [("relu", {"train": 0, "eval": 0, "backward": 1}),
                                        ("add-relu", {"train": 1, "eval": 1, "backward": 2})])
def test_fused_cases_count_the_tensors_they_move(fuse, extra):
    cases = bench_json("--shape", "4x16x8x8", "--layout", "nchw", "--threads", 1, "--fuse", fuse)
    assert [c["mode"] for c in cases] == ["train", "eval", "backward"]
    for c in cases:
        assert c["fuse"] == fuse and c["median_ns"] > 0
        plain = 3 if c["mode"] == "backward" else 2
        assert c["bytes"] == (plain + extra[c["mode"]]) * 4 * (4 * 16 * 8 * 8)  # float32


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_16_bit_cases_move_half_the_bytes(dtype):
    cases = bench_json("--shape", "4x16x8x8", "--threads", 1, "--dtype", dtype)
    assert len(cases) == 6
    for c in cases:
        check_case(c, "4x16x8x8", c["layout"], c["mode"], 1, dtype)
        assert f"dtype={dtype} " in c["plan"]


def test_2d_shape_reports_one_layout_for_every_mode_and_thread_count():
    cases = bench_json("--shape", "8x4", "--layout", "nhwc")
    assert [(c["mode"], c["threads"]) for c in cases] == \
        [(m, t) for m in ("train", "eval", "backward") for t in (1, 2)]
    assert {c["layout"] for c in cases} == {"nchw"}


def test_table_output():
    r = run("--shape", "20x2", "--mode", "eval", "--threads", 1, "--repeat", 5)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    header = next(line for line in lines if line.startswith("shape"))
    for word in ("layout", "mode", "median", "GB/s", "roofline"):
        assert word in header
    assert lines[-2].split()[:5] == ["20x2", "nchw", "eval", "1", "f32"]
    # the plan of the case: (20, 2) is channels-last to the kernels, one thread, no streaming
    assert lines[-1].startswith("  plan: layout=channels-last dtype=f32 threads=1 "), lines[-1]
    assert "stream=no" in lines[-1]
    # the machine as the plan sees it, under the title
    machine = next(line for line in lines if line.startswith("machine: "))
    assert "caches as Linux reports them: L2 " in machine and "the plan uses the L2 only" in machine


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "an unknown CPU"


def test_plan_times_nothing_and_says_why():
    r = run("--plan", "--shape", "32x64x56x56", "--layout", "nchw", "--mode", "backward")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("machine: " + cpu_model() + "; caches as Linux reports them")
    # one case per thread count, each with its plan; no time anywhere
    assert [l for l in lines[1:] if not l.startswith("  plan: ")] == \
        ["32x64x56x56 nchw backward threads=1 f32", "32x64x56x56 nchw backward threads=2 f32"]
    for line in lines[2::2]:
        assert "layout=channels-first" in line and "overlap=" in line and "stream=" in line
        assert "output 25690112 bytes" in line and "x L2" in line and "l3=" in line
    # no time at all: --plan times nothing, and the plan measures nothing of its own; where its
    # size rules leave the store kind open, a case's own first calls decide it (store_trial.h)
    assert not re.search(r"\d (ns|us|ms)\b", "\n".join(lines))
    assert re.search(r"where its size rules leave the store kind open, each case's first \d+ "
                     r"calls time both kinds\)", lines[0]), lines[0]


def test_plan_as_json_covers_the_grid():
    r = run("--plan", "--json")
    assert r.returncode == 0, r.stderr
    cases = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(cases) == 6 * 3 * 2  # bench/run.py's grid: every shape, layout, mode, thread count
    for c in cases:
        assert set(c) == {"shape", "layout", "mode", "threads", "dtype", "plan"}
        assert c["plan"].startswith("layout=channel") and "cache-budget=" in c["plan"]
    big = [c for c in cases if c["shape"] == "8x256x128x128"]
    assert big and all("output 134217728 bytes" in c["plan"] for c in big)


def test_help():
    r = run("--help")
    assert r.returncode == 0 and "usage: bnorm bench" in r.stdout
    top = subprocess.run([str(BNORM), "--help"], capture_output=True, text=True, timeout=60)
    assert "bench" in top.stdout


@pytest.mark.parametrize("args, message", [
    (["--shape", "20"], "--shape"),
    (["--shape", "20x"], "--shape"),
    (["--shape", "0x2"], "--shape"),
    (["--shape", "20x-2"], "--shape"),
    (["--shape", "axb"], "--shape"),
    (["--shape", "1x2x3x4x5x6"], "--shape"),
    (["--shape", "1x4"], "one value per channel"),
    (["--shape", "99999999999x99999999999x99999999999"], "--shape"),
    (["--layout", "nchw16c"], "--layout"),
    (["--layout", ""], "--layout"),
    (["--mode", "forward"], "--mode"),
    (["--threads", "0"], "--threads"),
    (["--threads", "-1"], "--threads"),
    (["--threads", "two"], "--threads"),
    (["--threads", "2.5"], "--threads"),
    (["--dtype", "f8"], "--dtype"),
    (["--fuse", "gelu"], "--fuse"),
    (["--repeat", "0"], "--repeat"),
    (["--shape"], "needs a value"),
    (["--shape", "2x2", "--shape", "4x4"], "more than once"),
    (["--fast"], "unknown option"),
    (["extra"], "unexpected argument"),
])
def test_usage_errors(args, message):
    r = run(*args)
    assert r.returncode == 2, (args, r.returncode, r.stderr)
    assert r.stdout == ""
    assert r.stderr.startswith("bnorm: bench: ") and message in r.stderr, r.stderr
    assert "usage: bnorm bench" in r.stderr


def test_python_overhead_bench_runs(tmp_path):
    """bench/python_overhead.py (part of make bench): every case timed for torch and bnorm,
    interleaved, with the CPU model; a run of a few calls (timings are not judged here)."""
    import sys
    r = subprocess.run([sys.executable, str(REPO / "bench" / "python_overhead.py"), "--rounds",
                        "3", "--calls", "5", "--out", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "overhead.json").read_text())
    assert result["cpu"] and result["rounds"] == 3 and result["calls_per_round"] == 5
    assert [c["case"] for c in result["cases"]] == ["train fwd+bwd", "train fwd (no_grad)",
                                                    "eval fwd", "eval fwd (no_grad)"]
    assert result["native"] is True  # make test builds the C++ module
    for c in result["cases"]:
        assert c["torch_ns"] > 0 and c["bnorm_ns"] > 0 and c["ctypes_ns"] > 0
        assert abs(c["ratio"] - c["bnorm_ns"] / c["torch_ns"]) < 1e-9
        assert abs(c["ctypes_ratio"] - c["ctypes_ns"] / c["torch_ns"]) < 1e-9
    assert "| train fwd+bwd |" in r.stdout
