#!/usr/bin/python3
"""Two builds of bnorm timed against each other on the bench grid: is the new one as fast?

    /usr/bin/python3 bench/compare.py --base /path/to/old/libbnorm.so --new build/libbnorm.so
                                      [--rounds 5] [--json out.json]
                                      [--shape S ...] [--mode M ...] [--threads T ...]

Every case of bench/run.py's grid (GRID x MODES x THREADS, each shape in each of its layouts;
--shape, --mode and --threads narrow it as they do there) runs in build/bench_ab (bench/ab.c),
which opens both libraries in one process and times them in turns on the same buffers, so that
the machine's noise and the pages the tensors landed on are the same for both. Each round is one
such process per case, the two libraries passed in the order that alternates from round to round
and from case to case. Each process reports each build's median of its timed batches; over the
rounds, the median of those medians is what is compared. Prints per case both medians, the ratio
new/base and the median of the per-batch ratios, and flags every case whose ratio is above
1 + --tolerance (5% by default). --json writes every process's line and the per-case results.

Exit status: 0 when no case is flagged, 1 when some case is, 2 when a run failed or on a usage
error.
"""
import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench_run  # noqa: E402 (bench/run.py: the grid, and how bnorm is run)

BUILDS = ("base", "new")
AB = Path(__file__).resolve().parents[1] / "build" / "bench_ab"


def run_ab(ab, libraries, first, shape, layout, mode, threads):
    """One bench_ab process on one case, the library of build `first` passed first.
    @return {build: median_ns, "paired_ratio": new/base}, or {"error": text}."""
    order = [first, "new" if first == "base" else "base"]
    cmd = [str(ab), str(libraries[order[0]]), str(libraries[order[1]]), "--shape", shape,
           "--layout", layout, "--mode", mode, "--threads", str(threads)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=bench_run.TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    if r.returncode != 0:
        return {"error": r.stderr.strip() or "exit status %d" % r.returncode}
    line = json.loads(r.stdout)
    ratio = line["paired_ratio"] if order[0] == "base" else 1 / line["paired_ratio"]
    return {order[0]: line["base_median_ns"], order[1]: line["new_median_ns"],
            "paired_ratio": ratio}


def cpu_name():
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def grid_cases(shapes=None, modes=None, threads=None):
    """(shape, layout, mode, threads) of bench/run.py's grid, narrowed by the options."""
    return [(shape, layout, mode, t)
            for shape, layouts in bench_run.GRID if not shapes or shape in shapes
            for mode in (modes or bench_run.MODES)
            for t in (threads or bench_run.THREADS)
            for layout in layouts]


def first_build(round_index, case_index):
    """Which build runs first in this round on this case: alternating in both."""
    return BUILDS[(round_index + case_index) % 2]


def summarize(cases, medians, tolerance, paired=None):
    """Per case: the median over the rounds of each build's medians, the ratio new/base, the
    median over the rounds of the paired ratios (where given), and whether the new build is more
    than `tolerance` (a fraction) slower. medians: {(case, build): [median_ns of each round]};
    paired: {case: [paired ratio of each round]}."""
    rows = []
    for case in cases:
        base = statistics.median(medians[case, "base"])
        new = statistics.median(medians[case, "new"])
        ratio = new / base
        pair = statistics.median(paired[case]) if paired else ratio
        rows.append({"shape": case[0], "layout": case[1], "mode": case[2], "threads": case[3],
                     "base_median_ns": base, "new_median_ns": new, "ratio": ratio,
                     "paired_ratio": pair,
                     "slower": not ratio <= 1 + tolerance})  # NaN is flagged too
    return rows


def format_rows(rows, tolerance):
    """The table: a header, one line per case, and the count of flagged cases."""
    lines = ["%-14s %-6s %-9s %3s %12s %12s %9s %7s" % ("shape", "layout", "mode", "thr",
                                                         "base median", "new median", "new/base",
                                                         "paired")]
    for r in rows:
        flag = "  SLOWER (> %g%%)" % (100 * tolerance) if r["slower"] else ""
        lines.append("%-14s %-6s %-9s %3d %12s %12s %9.3f %7.3f%s" % (
            r["shape"], r["layout"], r["mode"], r["threads"],
            bench_run.fmt_ns(r["base_median_ns"]), bench_run.fmt_ns(r["new_median_ns"]),
            r["ratio"], r["paired_ratio"], flag))
    slower = sum(r["slower"] for r in rows)
    lines.append("%d case%s, %d more than %g%% slower" % (
        len(rows), "" if len(rows) == 1 else "s", slower, 100 * tolerance))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description="two bnorm builds timed alternately on the bench grid")
    p.add_argument("--base", required=True, help="libbnorm.so of the starting build")
    p.add_argument("--new", required=True, help="libbnorm.so of the build to judge")
    p.add_argument("--ab", default=str(AB), help="the timer, bench/ab.c built (build/bench_ab)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tolerance", type=float, default=5.0,
                   help="percent: a case whose new median is slower by more is flagged (5)")
    p.add_argument("--json", metavar="OUT_JSON", help="write every run and the results here")
    p.add_argument("--shape", action="append", help="only these shapes of the grid")
    p.add_argument("--mode", choices=bench_run.MODES, action="append")
    p.add_argument("--threads", type=int, action="append")
    a = p.parse_args()
    if a.rounds < 1:
        p.error("--rounds must be >= 1")
    if not a.tolerance >= 0:
        p.error("--tolerance must be a number >= 0")
    commands = {"base": Path(a.base), "new": Path(a.new)}
    for build, command in commands.items():
        if not command.is_file():
            p.error("--%s: %s is not a file" % (build, command))
    if not Path(a.ab).is_file():
        p.error("--ab: %s is not a file (make build/bench_ab)" % a.ab)
    cases = grid_cases(a.shape, a.mode, a.threads)
    if not cases:
        p.error("no case of the grid matches --shape %s" % a.shape)
    tolerance = a.tolerance / 100

    cpu = cpu_name()
    print("compare: base %s, new %s, %d round%s on %s" % (
        commands["base"], commands["new"], a.rounds, "" if a.rounds == 1 else "s", cpu),
        file=sys.stderr)
    medians = {(case, build): [] for case in cases for build in BUILDS}
    paired = {case: [] for case in cases}
    raw, errors = [], []
    start = time.time()
    for rnd in range(a.rounds):
        for ci, case in enumerate(cases):
            first = first_build(rnd, ci)
            got = run_ab(a.ab, commands, first, *case)
            raw.append({"round": rnd, "shape": case[0], "layout": case[1], "mode": case[2],
                        "threads": case[3], "first": first, "error": got.get("error"),
                        "base_median_ns": got.get("base"), "new_median_ns": got.get("new"),
                        "paired_ratio": got.get("paired_ratio")})
            if "error" in got:
                errors.append("%s: %s" % (" ".join(map(str, case)), got["error"]))
                continue
            for build in BUILDS:
                medians[case, build].append(got[build])
            paired[case].append(got["paired_ratio"])
        print("[round %d/%d, %.0f s]" % (rnd + 1, a.rounds, time.time() - start),
              file=sys.stderr, flush=True)
    if errors:
        for e in errors:
            print("compare: %s" % e, file=sys.stderr)
        return 2
    missing = [k for k, v in medians.items() if not v]
    if missing:
        print("compare: no result for %s" % (missing,), file=sys.stderr)
        return 2
    rows = summarize(cases, medians, tolerance, paired)
    print(format_rows(rows, tolerance))
    if a.json:
        out = {"base": str(commands["base"]), "new": str(commands["new"]), "cpu": cpu,
               "rounds": a.rounds, "tolerance": tolerance,
               "method": "per round and case: one bench_ab process timing both libraries "
                         "in turns on the same buffers, each build's median of its batches; per "
                         "build and case: the median over rounds of those medians; the order "
                         "of the libraries alternates",
               "cases": rows, "raw": raw}
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 1 if any(r["slower"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
