#!/usr/bin/python3
"""`make bench`: bnorm, PyTorch and oneDNN on the default grid, case by case, interleaved.

For each round (3 by default) and each case group (shape, mode, threads), the three contenders
run one after the other, in an order that rotates from round to round:
  bnorm   build/bnorm bench --json --shape S --layout L --mode M --threads T  (per layout; it
          also measures the memory roofline: a streaming kernel moving the same bytes)
  torch   bench/torch_peer.py --serve, one long-lived process answering one case per request
  onednn  build/onednn_peer --json --shape S --mode M --threads T, with OMP_NUM_THREADS=T
          (all its layouts: nchw, nhwc and nChw16c for 4-d)
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

    def run(self, shape, layout, mode, threads):
        req = {"shape": shape, "layout": layout, "mode": mode, "threads": threads, "dtype": "f32"}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            fail(f"the PyTorch peer died: {self.proc.stderr.read().strip()}")
        return [json.loads(line)]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def run_ours(bnorm, shape, layout, mode, threads):
    cmd = [str(bnorm), "bench", "--json", "--shape", shape, "--layout", layout, "--mode", mode,
           "--threads", str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    if r.returncode != 0:
        return [{"peer": "bnorm", "shape": shape, "layout": layout, "mode": mode,
                 "threads": threads, "dtype": "f32", "median_ns": None,
                 "error": r.stderr.strip() or f"exit status {r.returncode}"}]
    return json_lines(r.stdout)


def run_onednn(peer, shape, mode, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("DNNL_VERBOSE", None)
    env.pop("ONEDNN_VERBOSE", None)
    cmd = [str(peer), "--json", "--shape", shape, "--mode", mode, "--threads", str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    lines = json_lines(r.stdout)
    if r.returncode != 0 and not lines:
        return [{"peer": "onednn", "shape": shape, "layout": "?", "mode": mode,
                 "threads": threads, "dtype": "f32", "median_ns": None,
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


def size_bytes(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text and text[-1] in units else int(text)


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


def llc_threshold(caches):
    """(bytes, description) of the size a tensor must exceed to count as larger than the cache."""
    if os.environ.get("BNORM_BENCH_LLC"):
        n = size_bytes(os.environ["BNORM_BENCH_LLC"])
        return n, f"BNORM_BENCH_LLC = {n / 2**20:.0f} MiB"
    sizes = {}
    for c in caches:
        if c.get("type") in ("Unified", "Data"):
            sizes[int(c["level"])] = size_bytes(c["size"])
    if not sizes:
        return 8 << 20, "8 MiB (no cache sizes found)"
    top = max(sizes)
    return sizes[top], f"the L{top} cache, {sizes[top] / 2**20:.0f} MiB as the OS reports it"


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
        row["target_met"] = (row["ratio"] is not None and
                             (row["ratio"] <= 0.5 or row["roofline_pct"] >= 85.0))
        rows.append(row)
    return rows


def layout_label(peer, layout):
    if peer == "torch" and layout == "nhwc":
        return "channels_last"
    return layout


def verdict(value, good):
    return "" if value is None else (" (met)" if good(value) else " (**no**)")


def make_table(rows, machine, rounds, threshold):
    out = []
    out.append("| case | threads | bnorm | PyTorch (best layout) | oneDNN (best layout) | "
               "bnorm / best peer | 0.5x best peer | roofline | bnorm % of roofline | target |")
    out.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|:-:|")
    for r in rows:
        cells = [f"{r['shape']} {r['layout']} {r['mode']}", str(r["threads"]),
                 fmt_ns(r["bnorm_ns"])]
        for peer in ("torch", "onednn"):
            b = r[peer + "_best"]
            cells.append(f"{fmt_ns(b[1])} ({layout_label(peer, b[0])})" if b else "-")
        bp = r["best_peer"]
        cells.append(f"{r['ratio']:.2f}x ({PEER_NAMES[bp[0]]})" if r["ratio"] is not None else "-")
        # half the best peer's time, and whether even the roofline kernel is slower than that
        half = bp[2] / 2 if bp else None
        below = (half is not None and r["roofline_ns"] and half < r["roofline_ns"] and
                 r["bnorm_ns"] > half)
        cells.append("-" if half is None else
                     fmt_ns(half) + (" (under the roofline)" if below else ""))
        cells.append(fmt_ns(r["roofline_ns"]))
        cells.append(f"{r['roofline_pct']:.0f}%" if r["roofline_pct"] is not None else "-")
        cells.append("met" if r["target_met"] else "**no**")
        out.append("| " + " | ".join(cells) + " |")

    # the targets for tensors larger than the last-level cache
    limit, limit_text = threshold
    big = [r for r in rows if r["tensor_bytes"] and r["tensor_bytes"] > limit]
    note = f"larger than the last-level cache ({limit_text})"
    if not big:
        l2 = sum(size_bytes(c["size"]) for c in machine["caches"] if c.get("level") == "2")
        l2 *= max(1, machine["nproc"] or 1)
        note = (f"larger than the last-level cache: none of the grid's tensors is ({limit_text}); "
                f"shown instead: tensors larger than all the per-core L2 caches together "
                f"({l2 / 2**20:.0f} MiB). Set BNORM_BENCH_LLC=...M to choose the size")
        big = [r for r in rows if r["tensor_bytes"] and r["tensor_bytes"] > l2]
    out.append("")
    out.append(f"Tensors {note}. Targets: eval >= 85% of the roofline, train <= 1.3x our eval "
               "time, backward <= 1.5x the 12-byte roofline.")
    out.append("")
    out.append("| tensor | layout | threads | MB | eval % of roofline | train / eval | "
               "backward / roofline (12 B) |")
    out.append("|---|---|--:|--:|--:|--:|--:|")
    by = {(r["shape"], r["layout"], r["mode"], r["threads"]): r for r in rows}
    seen = set()
    for r in big:
        k = (r["shape"], r["layout"], r["threads"])
        if k in seen:
            continue
        seen.add(k)
        ev, tr, bw = (by.get((r["shape"], r["layout"], m, r["threads"]))
                      for m in ("eval", "train", "backward"))
        e = ev and ev["roofline_pct"]
        t = tr and ev and tr["bnorm_ns"] / ev["bnorm_ns"]
        b = bw and bw["bnorm_ns"] / bw["roofline_ns"]
        out.append(f"| {r['shape']} | {r['layout']} | {r['threads']} | "
                   f"{r['tensor_bytes'] / 1e6:.0f} | "
                   f"{'-' if e is None else f'{e:.0f}%'}{verdict(e, lambda v: v >= 85)} | "
                   f"{'-' if t is None else f'{t:.2f}x'}{verdict(t, lambda v: v <= 1.3)} | "
                   f"{'-' if b is None else f'{b:.2f}x'}{verdict(b, lambda v: v <= 1.5)} |")

    head = (f"bnorm against PyTorch {machine['torch']} and oneDNN {machine.get('onednn')}, "
            f"float32, on {machine['cpu']} ({machine['nproc']} CPUs), {machine['date'][:10]}; "
            f"{machine['bnorm']} ({machine['git']}). Each time is the median over {rounds} rounds "
            "of each contender's median per run, the contenders interleaved case by case. "
            "Best layout: the peer's fastest of its layouts for that shape (PyTorch: NCHW, "
            "channels_last; oneDNN: NCHW, NHWC, nChw16c, whose reorders are not timed). "
            "PyTorch allocates its outputs per call; its malloc is set to reuse mapped memory "
            f"({machine.get('torch_malloc')}), as bnorm and oneDNN write into buffers touched "
            "before timing. Roofline: a streaming kernel on the same threads that reads and "
            "writes the same bytes once (8 bytes per element forward, 12 backward; the fastest "
            "of plain and non-temporal stores); % of roofline = roofline time / bnorm time. "
            "0.5x best peer: the time the speed issue asks for; \"under the roofline\" where "
            "it is less than the roofline kernel takes to move the same bytes, so that no pass "
            "over the data can reach it. "
            "Target: bnorm / best peer <= 0.5, or >= 85% of the roofline.")
    return head + "\n\n" + "\n".join(out) + "\n"


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
            table = make_table(cases, machine, rounds, llc_threshold(machine["caches"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            fail(f"--redraw {a.redraw}: not a results.json that make bench wrote "
                 f"({type(e).__name__}: {e})")
        out = Path(a.out)
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
    groups = [(s, layouts, m, t) for s, layouts in grid for m in modes for t in threads_list]
    cases = [(s, l, m, t) for s, layouts, m, t in groups for l in layouts]

    worker = TorchWorker()
    machine = machine_info(bnorm, worker.hello)
    raw = []
    start = time.time()
    order = ["bnorm", "torch", "onednn"]
    for rnd in range(a.rounds):
        contenders = order[rnd % 3:] + order[:rnd % 3]
        for gi, (shape, layouts, mode, threads) in enumerate(groups):
            got = []
            for who in contenders:
                if who == "bnorm":
                    for layout in layouts:
                        got += run_ours(bnorm, shape, layout, mode, threads)
                elif who == "torch":
                    nd2 = shape.count("x") == 1
                    for layout in ["nchw"] if nd2 else PEER_LAYOUTS["torch"]:
                        got += worker.run(shape, layout, mode, threads)
                else:
                    got += run_onednn(peer, shape, mode, threads)
            for rec in got:
                rec["round"] = rnd
                if rec.get("error"):
                    print(f"bench: {rec['peer']} {shape} {mode} T{threads}: {rec['error']}",
                          file=sys.stderr)
            raw += got
            summary = ", ".join(f"{r['peer']} {r.get('layout', '?')} {fmt_ns(r.get('median_ns'))}"
                                for r in got)
            print(f"[round {rnd + 1}/{a.rounds}, {gi + 1}/{len(groups)}, "
                  f"{time.time() - start:.0f} s] {shape} {mode} T{threads}: {summary}",
                  file=sys.stderr, flush=True)
    worker.close()

    onednn_versions = {r.get("version") for r in raw if r["peer"] == "onednn" and r.get("version")}
    machine["onednn"] = ", ".join(sorted(onednn_versions)) or None
    machine["elapsed_s"] = round(time.time() - start, 1)
    agg = aggregate(raw)
    rows = case_rows(agg, cases)
    threshold = llc_threshold(machine["caches"])
    table = make_table(rows, machine, a.rounds, threshold)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": machine, "rounds": a.rounds,
        "method": "per run: warm-up, then the median of repeated timed calls (batched below "
                  "100 us); per contender and case: the median over rounds of those medians",
        "cases": rows,
        "aggregated": [dict(zip(("peer", "shape", "layout", "mode", "threads"), k), **v)
                       for k, v in sorted(agg.items(), key=lambda kv: str(kv[0]))],
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
