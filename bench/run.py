#!/usr/bin/python3
"""`make bench`: bnorm, PyTorch and oneDNN on the default grid, case by case, interleaved.

For each round (3 by default) and each case group (shape, mode, threads), the three contenders
run one after the other, in an order that rotates from round to round:
  bnorm   build/bnorm bench --json --shape S --layout L --mode M --threads T  (per layout; it
          also measures the memory roofline: a streaming kernel moving the same bytes)
  torch   bench/torch_peer.py --serve, one long-lived process answering one case per request
  onednn  build/onednn_peer --json --shape S --mode M --threads T, with OMP_NUM_THREADS=T
          (all its layouts: nchw, nhwc and nChw16c for 4-d)
The same run times bfloat16 on the tensors larger than the caches (HALF_GRID): bnorm and
PyTorch with bfloat16 data and float32 parameters, oneDNN with bf16 data; its table puts each
case beside bnorm's float32 time of it. And the fused epilogues on one such tensor (FUSE_GRID),
in float32: bnorm's --fuse relu and add-relu, PyTorch's batch norm followed by relu_ (and add_),
oneDNN's dnnl_fuse_norm_relu (it fuses no add); bnorm's plain pass runs right before each fused
one, in the same group, and the table puts each fused case beside that time.
Every contender reports the median of its repetitions; over the rounds, the median of those
medians is what counts. Writes bench/results.json (every raw line, the aggregates, the
machine), bench/chart.png and bench/table.md, and prints the table.

    /usr/bin/python3 bench/run.py [--build build] [--rounds 3] [--out bench]
    /usr/bin/python3 bench/run.py --redraw bench/results.json   (the table and chart again)
                                  [--shape S ...] [--mode M] [--threads T]
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRID = [("20x2", ["nchw"]), ("256x1024", ["nchw"]), ("32x64x56x56", ["nchw", "nhwc"]),
        ("32x512x7x7", ["nchw"]), ("8x256x128x128", ["nchw"])]
# bfloat16 (bnorm and PyTorch with float32 parameters, as under torch.autocast; oneDNN with bf16
# data and f32 scale and shift), on the tensors larger than the caches, beside float32's
HALF_GRID = [("32x64x56x56", ["nchw", "nhwc"]), ("8x256x128x128", ["nchw"])]
HALF = "bf16"
TARGET_HALF_SPEEDUP = 1.7  # bfloat16 at least 1.7x faster than bnorm's float32
# the fused epilogues, float32, beside the plain passes of the same cases; each fused pass may
# take FUSE_SLACK times the plain one's time scaled by the bytes it moves (ReLU: the same bytes,
# forward and backward, the mask counted as free; add + ReLU: 12 bytes per element instead of 8
# forward, 16 instead of 12 backward)
FUSE_GRID = [("32x64x56x56", ["nchw", "nhwc"])]
FUSES = ["relu", "add-relu"]
FUSE_SLACK = 1.05
FUSE_BYTES = {"relu": {"train": 1.0, "eval": 1.0, "backward": 1.0},
              "add-relu": {"train": 12 / 8, "eval": 12 / 8, "backward": 16 / 12}}
MODES = ["train", "eval", "backward"]
THREADS = [1, 2]
PEER_LAYOUTS = {"torch": ["nchw", "nhwc"], "onednn": ["nchw", "nhwc", "nchw16c"]}
PEER_NAMES = {"bnorm": "bnorm", "torch": "PyTorch", "onednn": "oneDNN"}
TIMEOUT = 600


def fail(message):
    print(f"bench: {message}", file=sys.stderr)
    sys.exit(1)


def fmt_ns(ns):
    if ns is None:
        return "-"
    if ns < 1e3:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.3g} us"
    if ns < 1e9:
        return f"{ns / 1e6:.3g} ms"
    return f"{ns / 1e9:.3g} s"


def json_lines(text):
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


class TorchWorker:
    """One bench/torch_peer.py --serve process for the whole run."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "torch_peer.py"),
                                      "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().strip()
            fail(f"the PyTorch peer did not start: {err or 'no output'}\n"
                 "bench: PyTorch is required for make bench: apt-get install python3-torch")
        self.hello = json.loads(line)

    def run(self, shape, layout, mode, threads, dtype="f32", fuse=None):
        req = {"shape": shape, "layout": layout, "mode": mode, "threads": threads, "dtype": dtype,
               "fuse": fuse}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            fail(f"the PyTorch peer died: {self.proc.stderr.read().strip()}")
        return [json.loads(line)]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def run_ours(bnorm, shape, layout, mode, threads, dtype="f32", fuse=None):
    cmd = [str(bnorm), "bench", "--json", "--shape", shape, "--layout", layout, "--mode", mode,
           "--threads", str(threads), "--dtype", dtype] + (["--fuse", fuse] if fuse else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    if r.returncode != 0:
        return [{"peer": "bnorm", "shape": shape, "layout": layout, "mode": mode,
                 "threads": threads, "dtype": dtype, "fuse": fuse, "median_ns": None,
                 "error": r.stderr.strip() or f"exit status {r.returncode}"}]
    return json_lines(r.stdout)


def run_onednn(peer, shape, mode, threads, dtype="f32", fuse=None):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("DNNL_VERBOSE", None)
    env.pop("ONEDNN_VERBOSE", None)
    cmd = [str(peer), "--json", "--shape", shape, "--mode", mode, "--threads", str(threads),
           "--dtype", dtype] + (["--fuse", fuse] if fuse else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    lines = json_lines(r.stdout)
    if r.returncode != 0 and not lines:
        return [{"peer": "onednn", "shape": shape, "layout": "?", "mode": mode,
                 "threads": threads, "dtype": dtype, "fuse": fuse, "median_ns": None,
                 "error": r.stderr.strip() or f"exit status {r.returncode}"}]
    return lines


def first_line(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 else None
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def cache_info():
    caches = []
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for d in sorted(base.glob("index*")):
        try:
            caches.append({k: (d / k).read_text().strip()
                           for k in ("level", "type", "size", "shared_cpu_list")})
        except OSError:
            pass
    return caches


def machine_info(bnorm, hello):
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy
    import matplotlib
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu, "nproc": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
        "caches": cache_info(), "kernel": platform.release(),
        "bnorm": first_line([str(bnorm), "--version"]),
        "git": first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        "cc": first_line([os.environ.get("CC", "cc"), "--version"]),
        "torch": hello.get("version"), "torch_malloc": hello.get("malloc"),
        "torch_parallel_info": hello.get("parallel_info"),
        "python": platform.python_version(), "numpy": numpy.__version__,
        "matplotlib": matplotlib.__version__,
    }


# The yardstick of the speed issue, fixed: no machine fact or environment variable moves it.
TARGET_PEER_RATIO = 0.5    # met at half the best peer's time or less,
TARGET_FLOOR_RATIO = 1.15  # or within 1.15x the floor
TWO_READS_BYTES = 32 << 20  # a channels-last tensor larger than this is read twice (train, backward)


def floor_ns(row):
    """The case's floor: the streaming kernel's time to read and write the case's bytes once (8 B
    per float32 element forward, 12 backward); for training and backward of a channels-last
    tensor (NHWC, or 2-d) of more than TWO_READS_BYTES, whose statistics must be complete before
    the second pass, that time scaled to two reads of the inputs (12/8 forward, 20/12 backward).
    None without a roofline."""
    f = row.get("roofline_ns")
    if not f:
        return None
    channels_last = row["layout"] == "nhwc" or row["shape"].count("x") == 1
    if channels_last and row["mode"] != "eval" and (row.get("tensor_bytes") or 0) > TWO_READS_BYTES:
        f *= 12 / 8 if row["mode"] == "train" else 20 / 12
    return f


def target_met(row):
    """Met: bnorm's median at most TARGET_PEER_RATIO of the best peer's, or at most
    TARGET_FLOOR_RATIO times the floor."""
    ours, floor = row.get("bnorm_ns"), floor_ns(row)
    if ours is None:
        return False
    by_peer = row.get("ratio") is not None and row["ratio"] <= TARGET_PEER_RATIO
    by_floor = floor is not None and ours <= TARGET_FLOOR_RATIO * floor
    return by_peer or by_floor


def key(rec):
    return (rec["peer"], rec["shape"], rec["layout"], rec["mode"], rec["threads"])


def aggregate(raw):
    runs = {}
    for rec in raw:
        if rec.get("median_ns") is not None:
            runs.setdefault(key(rec), []).append(rec)
    agg = {}
    for k, recs in runs.items():
        a = {"median_ns": statistics.median(r["median_ns"] for r in recs),
             "min_ns": min(r["min_ns"] for r in recs),
             "round_medians_ns": [r["median_ns"] for r in recs], "bytes": recs[0]["bytes"]}
        a["gbps"] = a["bytes"] / a["median_ns"]
        if k[0] == "bnorm":
            a["roofline_ns"] = statistics.median(r["roofline_ns"] for r in recs)
            a["roofline_round_ns"] = [r["roofline_ns"] for r in recs]
            a["roofline_kinds"] = sorted({r.get("roofline_kind", "?") for r in recs})
            a["tensor_bytes"] = recs[0]["tensor_bytes"]
        if k[0] == "onednn":
            a["impl"] = recs[0].get("impl")
        agg[k] = a
    return agg


def best_of(agg, peer, shape, mode, threads, layouts):
    best = None
    for layout in layouts:
        a = agg.get((peer, shape, layout, mode, threads))
        if a and (best is None or a["median_ns"] < best[1]):
            best = (layout, a["median_ns"])
    return best


def case_rows(agg, cases):
    rows = []
    for shape, layout, mode, threads in cases:
        ours = agg.get(("bnorm", shape, layout, mode, threads))
        row = {"shape": shape, "layout": layout, "mode": mode, "threads": threads,
               "bnorm_ns": ours and ours["median_ns"],
               "roofline_ns": ours and ours["roofline_ns"],
               "tensor_bytes": ours and ours["tensor_bytes"]}
        nd2 = shape.count("x") == 1
        for peer in ("torch", "onednn"):
            layouts = ["nchw"] if nd2 else PEER_LAYOUTS[peer]
            row[peer + "_best"] = best_of(agg, peer, shape, mode, threads, layouts)
            row[peer + "_same"] = best_of(agg, peer, shape, mode, threads, [layout])
        peers = [(p, *row[p + "_best"]) for p in ("torch", "onednn") if row[p + "_best"]]
        row["best_peer"] = min(peers, key=lambda t: t[2]) if peers else None
        if ours and row["best_peer"]:
            row["ratio"] = ours["median_ns"] / row["best_peer"][2]
        else:
            row["ratio"] = None
        row["roofline_pct"] = ours and 100.0 * ours["roofline_ns"] / ours["median_ns"]
        row["floor_ns"] = floor_ns(row)
        row["target_met"] = target_met(row)
        rows.append(row)
    return rows


def layout_label(peer, layout):
    if peer == "torch" and layout == "nhwc":
        return "channels_last"
    return layout


def case_cells(r):
    """A row's cells up to the verdict: case, threads, bnorm, each peer's best layout, the ratio
    to the best peer, the floor ("two reads" where it counts them) and bnorm / floor."""
    cells = [f"{r['shape']} {r['layout']} {r['mode']}", str(r["threads"]), fmt_ns(r["bnorm_ns"])]
    for peer in ("torch", "onednn"):
        b = r[peer + "_best"]
        cells.append(f"{fmt_ns(b[1])} ({layout_label(peer, b[0])})" if b else "-")
    bp = r["best_peer"]
    cells.append(f"{r['ratio']:.2f}x ({PEER_NAMES[bp[0]]})" if r["ratio"] is not None else "-")
    floor = floor_ns(r)
    two = floor is not None and r.get("roofline_ns") and floor > r["roofline_ns"]
    cells.append("-" if floor is None else fmt_ns(floor) + (" (two reads)" if two else ""))
    cells.append("-" if floor is None or r["bnorm_ns"] is None else
                 f"{r['bnorm_ns'] / floor:.2f}x")
    return cells


def make_table(rows, machine, rounds):
    """The table of the grid (the verdicts computed again, so that --redraw applies the current
    yardstick to old results), and the count of cases met."""
    out = []
    out.append("| case | threads | bnorm | PyTorch (best layout) | oneDNN (best layout) | "
               "bnorm / best peer | floor | bnorm / floor | target |")
    out.append("|---|--:|--:|--:|--:|--:|--:|--:|:-:|")
    met = 0
    for r in rows:
        cells = case_cells(r)
        ok = target_met(r)
        met += ok
        cells.append("met" if ok else "**no**")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append(f"{met} of {len(rows)} cases met.")

    head = (f"bnorm against PyTorch {machine['torch']} and oneDNN {machine.get('onednn')}, "
            f"float32, on {machine['cpu']} ({machine['nproc']} CPUs), {machine['date'][:10]}; "
            f"{machine['bnorm']} ({machine['git']}). Each time is the median over {rounds} rounds "
            "of each contender's median per run, the contenders interleaved case by case. "
            "Best layout: the peer's fastest of its layouts for that shape (PyTorch: NCHW, "
            "channels_last; oneDNN: NCHW, NHWC, nChw16c, whose reorders are not timed). "
            "PyTorch allocates its outputs per call; its malloc is set to reuse mapped memory "
            f"({machine.get('torch_malloc')}), as bnorm and oneDNN write into buffers touched "
            "before timing. Floor: a streaming kernel on the same threads that reads and writes "
            "the same bytes once (8 bytes per element forward, 12 backward; the fastest of plain "
            "and non-temporal stores); for training and backward of a channels-last tensor of "
            "more than 32 MiB, scaled to two reads of the inputs (\"two reads\"). "
            f"Target: bnorm / best peer <= {TARGET_PEER_RATIO}, or bnorm / floor <= "
            f"{TARGET_FLOOR_RATIO}.")
    return head + "\n\n" + "\n".join(out) + "\n"


def half_met(row, f32_ns):
    """bfloat16's verdict: at least TARGET_HALF_SPEEDUP times faster than bnorm's float32, and
    the float32 yardstick (the best peer's bfloat16, or the floor of its bytes)."""
    ours = row.get("bnorm_ns")
    return (ours is not None and f32_ns is not None and f32_ns / ours >= TARGET_HALF_SPEEDUP
            and target_met(row))


def make_half_table(rows, f32_rows):
    """The bfloat16 table: each case beside bnorm's float32 time of the same case."""
    f32 = {(r["shape"], r["layout"], r["mode"], r["threads"]): r["bnorm_ns"] for r in f32_rows}
    out = ["| case | threads | bnorm bf16 | PyTorch bf16 | oneDNN bf16 | bnorm / best peer | "
           "floor | bnorm / floor | bnorm f32 | f32 / bf16 | target |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|:-:|"]
    met = 0
    for r in rows:
        f = f32.get((r["shape"], r["layout"], r["mode"], r["threads"]))
        cells = case_cells(r)
        cells.append(fmt_ns(f))
        cells.append("-" if f is None or not r["bnorm_ns"] else f"{f / r['bnorm_ns']:.2f}x")
        ok = half_met(r, f)
        met += ok
        cells.append("met" if ok else "**no**")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append(f"{met} of {len(rows)} bfloat16 cases met (at least {TARGET_HALF_SPEEDUP}x "
               f"bnorm's float32, and at most {TARGET_PEER_RATIO}x the best peer's bfloat16 or "
               f"{TARGET_FLOOR_RATIO}x the floor of the bytes moved: 4 per element forward, 6 "
               "backward).")
    return "\n".join(out) + "\n"


def fuse_allowed(fuse, mode):
    """The most a fused pass may take, as a multiple of the plain pass's time."""
    return FUSE_SLACK * FUSE_BYTES[fuse][mode]


def make_fuse_table(rows_by_fuse, plain_by_fuse):
    """The fused epilogues' table: each case beside bnorm's plain time of it (the plain runs of
    the same groups, plain_by_fuse); met where the fused pass takes at most fuse_allowed times
    the plain one."""
    plain = {(f, r["shape"], r["layout"], r["mode"], r["threads"]): r["bnorm_ns"]
             for f, rows in plain_by_fuse.items() for r in rows}
    out = ["| case | threads | epilogue | bnorm fused | PyTorch | oneDNN | bnorm / best peer | "
           "bnorm plain | fused / plain | allowed | target |",
           "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|:-:|"]
    met = total = 0
    for fuse in FUSES:
        for r in rows_by_fuse.get(fuse, []):
            p = plain.get((fuse, r["shape"], r["layout"], r["mode"], r["threads"]))
            ours = r["bnorm_ns"]
            cells = case_cells(r)[:6]  # case, threads, bnorm, each peer, the ratio
            cells.insert(2, fuse)
            allowed = fuse_allowed(fuse, r["mode"])
            ratio = ours / p if ours and p else None
            cells += [fmt_ns(p), "-" if ratio is None else f"{ratio:.2f}x", f"{allowed:.2f}x"]
            ok = ratio is not None and ratio <= allowed
            met += ok
            total += 1
            cells.append("met" if ok else "**no**")
            out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append(f"{met} of {total} fused cases met (float32; at most {FUSE_SLACK}x bnorm's plain "
               "pass, scaled by the bytes moved: ReLU the same bytes, add + ReLU 12 per element "
               "instead of 8 forward and 16 instead of 12 backward). PyTorch: batch_norm, then "
               "add_ and relu_ (backward: threshold_backward, then the batch norm's); oneDNN: "
               "dnnl_fuse_norm_relu (no fused add in 2.6).")
    return "\n".join(out) + "\n"


def make_chart(rows, path, machine, rounds):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(MODES), 1, figsize=(17, 15))
    colors = {"bnorm": "#1f77b4", "torch": "#ff7f0e", "onednn": "#2ca02c"}
    width = 0.26
    for ax, mode in zip(axes, MODES):
        sub = [r for r in rows if r["mode"] == mode]
        labels = []
        for i, r in enumerate(sub):
            labels.append(f"{r['shape']}\n{r['layout']}, {r['threads']} thr")
            bars = [("bnorm", r["bnorm_ns"], None)]
            for peer in ("torch", "onednn"):
                b = r[peer + "_best"]
                bars.append((peer, b and b[1], b and b[0]))
            for j, (peer, ns, layout) in enumerate(bars):
                if ns is None:
                    continue
                x = i + (j - 1) * width
                name = PEER_NAMES[peer] + (" (best layout)" if peer != "bnorm" else "")
                ax.bar(x, ns / 1e3, width, color=colors[peer], label=name if i == 0 else None)
                if layout:
                    short = layout_label(peer, layout).replace("channels_last", "cl")
                    ax.text(x, ns / 1e3 * 1.08, short, ha="center", va="bottom", fontsize=7,
                            rotation=90)
            if r["roofline_ns"]:
                ax.hlines(r["roofline_ns"] / 1e3, i - 1.6 * width, i + 1.6 * width, colors="black",
                          linestyles="--", linewidth=1.6,
                          label="memory roofline" if i == 0 else None)
        ax.set_yscale("log")
        ax.set_xticks(range(len(sub)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("time per call (us, log)")
        ax.set_title(f"{mode}", fontsize=12, loc="left")
        ax.grid(axis="y", which="major", alpha=0.3)
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * 3)
        ax.legend(fontsize=8, loc="upper left", ncol=4)
    fig.suptitle(f"bnorm vs PyTorch {machine['torch']} and oneDNN {machine.get('onednn')} "
                 f"(float32, median of {rounds} rounds; lower is better) - {machine['cpu']}, "
                 f"{machine['nproc']} CPUs", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description="bnorm vs PyTorch vs oneDNN, interleaved")
    p.add_argument("--build", default=os.environ.get("BNORM_BUILD", str(REPO / "build")))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "bench"))
    p.add_argument("--shape", action="append", help="only these shapes of the grid")
    p.add_argument("--mode", choices=MODES, action="append")
    p.add_argument("--threads", type=int, action="append")
    p.add_argument("--redraw", metavar="RESULTS_JSON",
                   help="measure nothing: write table.md and chart.png again from a results.json")
    a = p.parse_args()
    if a.rounds < 1:
        p.error("--rounds must be >= 1")
    if a.redraw:
        try:
            saved = json.loads(Path(a.redraw).read_text())
            cases, machine, rounds = saved["cases"], saved["machine"], saved["rounds"]
            table = make_table(cases, machine, rounds)
            if saved.get("cases_bf16"):
                table += "\n" + make_half_table(saved["cases_bf16"], cases)
            if saved.get("cases_fused_plain"):  # the fused table needs its plain runs
                table += "\n" + make_fuse_table(saved["cases_fused"], saved["cases_fused_plain"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            fail(f"--redraw {a.redraw}: not a results.json that make bench wrote "
                 f"({type(e).__name__}: {e})")
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(table)
        make_chart(cases, out / "chart.png", machine, rounds)
        print(table)
        return

    build = Path(a.build)
    bnorm, peer = build / "bnorm", build / "onednn_peer"
    if not os.access(bnorm, os.X_OK):
        fail(f"{bnorm} is not built: run make")
    if not os.access(peer, os.X_OK):
        fail(f"{peer} is not built; oneDNN is required for make bench: "
             "apt-get install libdnnl-dev, then make bench")
    try:
        import matplotlib  # noqa: F401
        import numpy  # noqa: F401
    except ImportError:
        fail("matplotlib and numpy are required for make bench: "
             "apt-get install python3-matplotlib python3-numpy")

    grid = [(s, l) for s, l in GRID if not a.shape or s in a.shape]
    if not grid:
        fail(f"no shape of the grid matches {a.shape}")
    modes = a.mode or MODES
    threads_list = a.threads or THREADS
    # (shape, layouts, mode, threads, dtype, fuse)
    groups = [(s, layouts, m, t, "f32", None) for s, layouts in grid for m in modes
              for t in threads_list]
    groups += [(s, layouts, m, t, HALF, None) for s, layouts in HALF_GRID
               if not a.shape or s in a.shape for m in modes for t in threads_list]
    groups += [(s, layouts, m, t, "f32", f) for s, layouts in FUSE_GRID
               if not a.shape or s in a.shape for f in FUSES for m in modes for t in threads_list]
    cases = [(s, l, m, t) for s, layouts, m, t, d, f in groups for l in layouts
             if d == "f32" and not f]
    half_cases = [(s, l, m, t) for s, layouts, m, t, d, f in groups for l in layouts if d == HALF]
    fuse_cases = {fuse: [(s, l, m, t) for s, layouts, m, t, d, f in groups for l in layouts
                         if f == fuse] for fuse in FUSES}

    worker = TorchWorker()
    machine = machine_info(bnorm, worker.hello)
    raw = []
    start = time.time()
    order = ["bnorm", "torch", "onednn"]
    for rnd in range(a.rounds):
        contenders = order[rnd % 3:] + order[:rnd % 3]
        for gi, (shape, layouts, mode, threads, dtype, fuse) in enumerate(groups):
            got = []
            for who in contenders:
                if who == "bnorm":
                    for layout in layouts:
                        if fuse:  # the plain pass just before: the fused one's yardstick
                            for rec in run_ours(bnorm, shape, layout, mode, threads, dtype):
                                got.append(dict(rec, beside=fuse))
                        got += run_ours(bnorm, shape, layout, mode, threads, dtype, fuse)
                elif who == "torch":
                    nd2 = shape.count("x") == 1
                    for layout in ["nchw"] if nd2 else PEER_LAYOUTS["torch"]:
                        got += worker.run(shape, layout, mode, threads, dtype, fuse)
                else:
                    got += run_onednn(peer, shape, mode, threads, dtype, fuse)
            for rec in got:
                rec["round"] = rnd
                if rec.get("error"):
                    print(f"bench: {rec['peer']} {shape} {mode} T{threads}: {rec['error']}",
                          file=sys.stderr)
            raw += got
            summary = ", ".join(f"{r['peer']} {r.get('layout', '?')} {fmt_ns(r.get('median_ns'))}"
                                for r in got)
            print(f"[round {rnd + 1}/{a.rounds}, {gi + 1}/{len(groups)}, "
                  f"{time.time() - start:.0f} s] {shape} {dtype}{' ' + fuse if fuse else ''} "
                  f"{mode} T{threads}: {summary}",
                  file=sys.stderr, flush=True)
    worker.close()

    onednn_versions = {r.get("version") for r in raw if r["peer"] == "onednn" and r.get("version")}
    machine["onednn"] = ", ".join(sorted(onednn_versions)) or None
    machine["elapsed_s"] = round(time.time() - start, 1)
    agg = aggregate([r for r in raw if r.get("dtype", "f32") == "f32" and not r.get("fuse")
                     and not r.get("beside")])
    rows = case_rows(agg, cases)
    half_agg = aggregate([r for r in raw if r.get("dtype") == HALF])
    half_rows = case_rows(half_agg, half_cases)
    fuse_agg = {f: aggregate([r for r in raw if r.get("fuse") == f]) for f in FUSES}
    fuse_rows = {f: case_rows(fuse_agg[f], fuse_cases[f]) for f in FUSES if fuse_cases[f]}
    fuse_plain_rows = {f: case_rows(aggregate([r for r in raw if r.get("beside") == f]),
                                    fuse_cases[f]) for f in fuse_rows}
    table = make_table(rows, machine, a.rounds)
    if half_rows:
        table += "\n" + make_half_table(half_rows, rows)
    if fuse_rows:
        table += "\n" + make_fuse_table(fuse_rows, fuse_plain_rows)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": machine, "rounds": a.rounds,
        "method": "per run: warm-up, then the median of repeated timed calls (batched below "
                  "100 us); per contender and case: the median over rounds of those medians",
        "cases": rows, "cases_bf16": half_rows, "cases_fused": fuse_rows,
        "cases_fused_plain": fuse_plain_rows,
        "aggregated": [dict(zip(("peer", "shape", "layout", "mode", "threads"), k), **v)
                       for k, v in sorted(agg.items(), key=lambda kv: str(kv[0]))],
        "aggregated_bf16": [dict(zip(("peer", "shape", "layout", "mode", "threads"), k), **v)
                            for k, v in sorted(half_agg.items(), key=lambda kv: str(kv[0]))],
        "aggregated_fused": {f: [dict(zip(("peer", "shape", "layout", "mode", "threads"), k), **v)
                                 for k, v in sorted(fa.items(), key=lambda kv: str(kv[0]))]
                             for f, fa in fuse_agg.items()},
        "raw": raw,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "table.md").write_text(table)
    make_chart(rows, out / "chart.png", machine, a.rounds)
    print(table)
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'chart.png'} "
          f"in {machine['elapsed_s']:.0f} s", file=sys.stderr)
    errors = [r for r in raw if r.get("error")]
    if errors:
        fail(f"{len(errors)} run(s) failed; see the messages above")
    return 0


if __name__ == "__main__":
    sys.exit(main())
