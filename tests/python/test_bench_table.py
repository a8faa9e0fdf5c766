"""bench/run.py's table, from made-up aggregates: the ratio to the best peer, the floor (two
reads for training and backward of a channels-last tensor of more than 32 MiB), and the verdict
(at most 0.5x the best peer or at most 1.15x the floor), fixed whatever the machine or the
environment says. Needs no peer and measures nothing."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
bench_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_run)

MACHINE = {"torch": "1.13", "onednn": "2.6", "cpu": "test CPU", "nproc": 2,
           "date": "2026-11-25", "bnorm": "bnorm 0.1.0", "git": "abc", "torch_malloc": "-",
           "caches": []}


def table_rows(ours, roofline, torch_ns, onednn_ns, shape="4x8x16x16", layout="nchw",
               mode="train", tensor_bytes=4 << 20):
    a = {("bnorm", shape, layout, mode, 1): {"median_ns": ours, "roofline_ns": roofline,
                                              "tensor_bytes": tensor_bytes},
         ("torch", shape, "nchw", mode, 1): {"median_ns": torch_ns},
         ("onednn", shape, "nchw", mode, 1): {"median_ns": onednn_ns}}
    rows = bench_run.case_rows(a, [(shape, layout, mode, 1)])
    text = bench_run.make_table(rows, MACHINE, 1)
    line = [l for l in text.splitlines() if l.startswith(f"| {shape} {layout} {mode} ")][0]
    return rows[0], line, text


def cells(line):
    return [c.strip() for c in line.strip("|").split("|")]


def test_met_within_the_floor():
    # 1.10x the floor: met, although only 0.90x the best peer
    row, line, text = table_rows(ours=880, roofline=800, torch_ns=3000, onednn_ns=1000)
    c = cells(line)
    assert c[5] == "0.88x (oneDNN)" and c[6] == "800 ns" and c[7] == "1.10x" and c[8] == "met"
    assert row["target_met"] and row["floor_ns"] == 800
    assert "1 of 1 cases met." in text


def test_met_at_half_the_best_peer():
    # far above the floor (thread start-up on a tiny tensor) but half the best peer
    row, line, _ = table_rows(ours=500, roofline=100, torch_ns=1000, onednn_ns=4000)
    assert cells(line)[7] == "5.00x" and cells(line)[8] == "met"


def test_missed_between_the_two():
    row, line, text = table_rows(ours=700, roofline=100, torch_ns=1000, onednn_ns=5000)
    c = cells(line)
    assert c[5] == "0.70x (PyTorch)" and c[8] == "**no**" and not row["target_met"]
    assert "0 of 1 cases met." in text


@pytest.mark.parametrize("layout, shape, mode, mib, scale", [
    ("nhwc", "32x64x64x64", "train", 33, 12 / 8),
    ("nhwc", "32x64x64x64", "backward", 33, 20 / 12),
    ("nhwc", "32x64x64x64", "eval", 33, 1),       # eval reads once
    ("nhwc", "32x64x64x64", "train", 32, 1),      # not more than 32 MiB
    ("nchw", "32x64x64x64", "train", 64, 1),      # channels-first reads once
    ("nchw", "8192x1024", "backward", 40, 20 / 12),  # a 2-d tensor is channels-last
])
def test_the_floor_counts_two_reads_only_where_the_data_must_be_read_twice(layout, shape, mode,
                                                                            mib, scale):
    row, line, _ = table_rows(ours=1000, roofline=800, torch_ns=1500, onednn_ns=1500,
                              shape=shape, layout=layout, mode=mode, tensor_bytes=mib << 20)
    assert row["floor_ns"] == pytest.approx(800 * scale)
    assert ("(two reads)" in cells(line)[6]) == (scale != 1)
    assert row["target_met"] == (1000 <= 1.15 * 800 * scale)


def test_the_yardstick_ignores_the_environment(monkeypatch):
    monkeypatch.setenv("BNORM_BENCH_LLC", "1M")
    row, _, _ = table_rows(ours=1000, roofline=800, torch_ns=1500, onednn_ns=1500,
                           layout="nhwc", tensor_bytes=16 << 20)
    assert row["floor_ns"] == 800 and not row["target_met"]


def test_redraw_applies_the_current_yardstick(tmp_path, monkeypatch, capsys):
    """--redraw judges saved rows again. The chart (matplotlib, which only make bench needs) is
    replaced by a recorder: what is tested is that it is drawn from the saved rows."""
    row, _, _ = table_rows(ours=880, roofline=800, torch_ns=3000, onednn_ns=1000)
    row["target_met"] = False  # as an older yardstick judged it
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"cases": [row], "machine": MACHINE, "rounds": 1}))
    charts = []
    monkeypatch.setattr(bench_run, "make_chart", lambda *a: charts.append(a))
    out = tmp_path / "new"  # --redraw makes it
    monkeypatch.setattr(sys, "argv", ["run.py", "--redraw", str(results), "--out", str(out)])
    bench_run.main()
    table = (out / "table.md").read_text()
    assert "| 1.10x | met |" in table and "1 of 1 cases met." in table
    assert capsys.readouterr().out == table + "\n"
    [(rows, path, machine, rounds)] = charts
    assert rows[0]["bnorm_ns"] == 880 and path == out / "chart.png" and rounds == 1


def test_redraw_refuses_what_is_not_a_results_file(tmp_path):
    """--redraw of a missing, malformed or foreign file: exit 1, one line naming it, no table."""
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"cases": []}')
    for path in (tmp_path / "missing.json", bad_json, foreign):
        r = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--redraw", str(path),
                            "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, r.stderr
        assert r.stderr.startswith(f"bench: --redraw {path}: not a results.json"), r.stderr
        assert r.stderr.count("\n") == 1 and r.stdout == ""
        assert not (tmp_path / "table.md").exists()


def half_row(ours, roofline, torch_ns, onednn_ns, f32_ns, mode="eval"):
    shape, layout = "8x256x128x128", "nchw"
    a = {("bnorm", shape, layout, mode, 1): {"median_ns": ours, "roofline_ns": roofline,
                                              "tensor_bytes": 64 << 20},
         ("torch", shape, "nchw", mode, 1): {"median_ns": torch_ns},
         ("onednn", shape, "nchw", mode, 1): {"median_ns": onednn_ns}}
    rows = bench_run.case_rows(a, [(shape, layout, mode, 1)])
    f32_rows = [dict(rows[0], bnorm_ns=f32_ns)]
    text = bench_run.make_half_table(rows, f32_rows)
    line = [l for l in text.splitlines() if l.startswith(f"| {shape} {layout} {mode} ")][0]
    return cells(line), text


def test_half_table_needs_the_speedup_and_the_yardstick():
    # 1.8x faster than float32 and within 1.15x of the floor: met
    c, text = half_row(1000, 900, 5000, 5000, 1800)
    assert c[-2] == "1.80x" and c[-1] == "met" and "1 of 1 bfloat16 cases met" in text
    # within the floor but only 1.5x faster than float32: not met
    c, _ = half_row(1000, 900, 5000, 5000, 1500)
    assert c[-1] == "**no**"
    # 2x faster than float32, at half the best peer's time (the floor far below): met
    c, _ = half_row(1000, 500, 2000, 3000, 2000)
    assert c[5].startswith("0.50x") and c[-1] == "met"
    # 2x faster than float32 but neither yardstick: not met
    c, _ = half_row(1000, 500, 1500, 3000, 2000)
    assert c[-1] == "**no**"


def fuse_row(fuse, mode, ours, plain_ns, torch_ns=5000, onednn_ns=None):
    shape, layout = "32x64x56x56", "nchw"
    a = {("bnorm", shape, layout, mode, 1): {"median_ns": ours, "roofline_ns": 100,
                                              "tensor_bytes": 48 << 20},
         ("torch", shape, "nchw", mode, 1): {"median_ns": torch_ns}}
    if onednn_ns:
        a[("onednn", shape, "nchw", mode, 1)] = {"median_ns": onednn_ns}
    rows = bench_run.case_rows(a, [(shape, layout, mode, 1)])
    plain_rows = [dict(rows[0], bnorm_ns=plain_ns)]
    text = bench_run.make_fuse_table({fuse: rows}, {fuse: plain_rows})
    line = [l for l in text.splitlines() if l.startswith(f"| {shape} {layout} {mode} ")][0]
    return cells(line), text


def test_fused_table_scales_the_plain_time_by_the_bytes_moved():
    # ReLU: the plain pass's bytes, so 1.05x its time at most, in every pass
    c, text = fuse_row("relu", "backward", 1050, 1000, onednn_ns=2100)
    assert c[2] == "relu" and c[3] == "1.05 us" and c[6] == "0.50x (oneDNN)"
    assert c[-4:] == ["1 us", "1.05x", "1.05x", "met"] and "1 of 1 fused cases met" in text
    c, _ = fuse_row("relu", "eval", 1060, 1000)
    assert c[-1] == "**no**"
    # add + ReLU moves 12 bytes per element instead of 8 forward, 16 instead of 12 backward
    c, _ = fuse_row("add-relu", "train", 1570, 1000)
    assert c[-3:] == ["1.57x", "1.58x", "met"]  # 1.05 x 1.5 = 1.575
    c, _ = fuse_row("add-relu", "backward", 1410, 1000)
    assert c[-3:] == ["1.41x", "1.40x", "**no**"]
    # a peer that cannot fuse the add leaves its cell empty
    c, _ = fuse_row("add-relu", "eval", 1200, 1000, torch_ns=2400)
    assert c[5] == "-" and c[6] == "0.50x (PyTorch)"
