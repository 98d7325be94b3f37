#!/usr/bin/env python3
"""Generate docs/benchmarks.md from the output of `cargo bench --bench combinators`.

Reads criterion's `<criterion dir>/<group>/<function>/<N>/new/estimates.json`
(median point estimate, ns per iteration) and the `polls.csv` written by the
bench, and prints Markdown to stdout.

Usage:
    python3 scripts/bench_table.py [--target-dir DIR] [--include-stale] > docs/benchmarks.md

The criterion directory is, in order: $CRITERION_HOME, <--target-dir>/criterion,
$CARGO_TARGET_DIR/criterion, ./target/criterion. Results older than the last
run's marker (`awaitkit-bench-run.txt`, written when the bench starts) are
left out unless --include-stale is given, so a quick run that skips some sizes
does not mix with an older full run.
"""

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

# Columns shared by the two groups of each family (same peers, same children).
GATHER_COLUMNS = [
    ("awaitkit", "awaitkit `gather`"),
    ("futures_join_all", "futures `join_all`"),
    ("futures_FuturesOrdered", "futures `FuturesOrdered`+collect"),
    ("fc_Vec_join", "futures-concurrency `Vec::join`"),
    ("fb_join_all", "futures-buffered `join_all`"),
    ("fb_FuturesOrdered", "futures-buffered `FuturesOrdered`+collect"),
]
AS_COMPLETED_COLUMNS = [
    ("awaitkit", "awaitkit `as_completed`"),
    ("futures_FuturesUnordered", "futures `FuturesUnordered`"),
    ("fc_FutureGroup", "futures-concurrency `FutureGroup`"),
    ("fb_FuturesUnordered", "futures-buffered `FuturesUnordered`"),
    ("fb_FuturesUnorderedBounded", "futures-buffered `FuturesUnorderedBounded`"),
]

# (group, title, bar description, [(criterion function id, column label)], bar kind)
GROUPS = [
    (
        "gather_yield",
        "children wake themselves once, outputs in input order",
        GATHER_COLUMNS,
    ),
    (
        "gather_shuffled",
        "children park their waker, fired one at a time in a shuffled order, outputs in input order",
        GATHER_COLUMNS,
    ),
    (
        "as_completed_yield",
        "children wake themselves once, consumed as a stream in completion order",
        AS_COMPLETED_COLUMNS,
    ),
    (
        "as_completed_shuffled",
        "children fired one at a time in a shuffled order, consumed as a stream",
        AS_COMPLETED_COLUMNS,
    ),
    (
        "wait_any",
        "N pending children, the last one fires; winner + rest, rest dropped",
        [
    ("awaitkit", "awaitkit `wait_any`"),
    ("futures_select_all", "futures `select_all`"),
    ("futures_FuturesUnordered_next", "futures `FuturesUnordered::next`"),
    ("fc_race", "futures-concurrency `race`"),
    ("fb_FuturesUnordered_next", "futures-buffered `FuturesUnordered::next`"),
    ("fb_FuturesUnorderedBounded_next", "futures-buffered `FuturesUnorderedBounded::next`"),
        ],
    ),
]

BAR = 1.05


def criterion_dir(args):
    if os.environ.get("CRITERION_HOME"):
        return Path(os.environ["CRITERION_HOME"])
    if args.target_dir:
        return Path(args.target_dir) / "criterion"
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"]) / "criterion"
    return Path("target") / "criterion"


def load_medians(cdir, group, functions, not_before):
    """{function: {n: ns per iteration}}"""
    out = {}
    gdir = cdir / group
    for fid, _ in functions:
        fdir = gdir / fid
        if not fdir.is_dir():
            continue
        for ndir in fdir.iterdir():
            if not ndir.name.isdigit():
                continue
            est = ndir / "new" / "estimates.json"
            if not est.is_file():
                continue
            if not_before is not None and est.stat().st_mtime < not_before:
                continue
            with open(est) as f:
                median = json.load(f)["median"]["point_estimate"]
            out.setdefault(fid, {})[int(ndir.name)] = median
    return out


def load_polls(cdir):
    polls = {}
    path = cdir / "polls.csv"
    if path.is_file():
        with open(path) as f:
            for row in csv.DictReader(f):
                polls[(row["group"], row["function"], int(row["n"]))] = float(row["polls_per_n"])
    return polls


def fmt_ns(v):
    if v is None:
        return "—"
    if v >= 10_000:
        return f"{v / 1000:.1f} µs"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}"


def fmt_n(n):
    return f"{n:,}".replace(",", " ")


def mark(ok):
    return "✅" if ok else "❌"


def cmd_output(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target-dir", help="cargo target dir of the bench run (default: $CARGO_TARGET_DIR or ./target)")
    parser.add_argument("--include-stale", action="store_true", help="keep results older than the last run marker")
    parser.add_argument("--source", help="what was measured (default: `git describe --always --dirty` here)")
    args = parser.parse_args()

    cdir = criterion_dir(args)
    if not cdir.is_dir():
        sys.exit(f"no criterion output in {cdir}: run `cargo bench --bench combinators` first")
    marker = cdir / "awaitkit-bench-run.txt"
    mode = marker.read_text().strip() if marker.is_file() else "unknown"
    run_time = marker.stat().st_mtime if marker.is_file() else None
    not_before = None if args.include_stale or run_time is None else run_time - 1
    polls = load_polls(cdir)

    date = datetime.datetime.fromtimestamp(run_time) if run_time else datetime.datetime.now()
    lines = []
    w = lines.append
    w("# Benchmarks")
    w("")
    w("<!-- Generated by scripts/bench_table.py from criterion output; do not edit by hand. -->")
    w("")
    w("Combinator overhead of awaitkit against its peers, measured side by side in one run")
    w("(`benches/combinators.rs`; workloads and bars: `BENCH.md`). Every crate gets the same")
    w("children and the same minimal single-threaded driver (top-level wake = one relaxed")
    w("store; the future is re-polled only when that flag was set). Building the N children")
    w("and the combinator, driving it and dropping the output are all timed.")
    w("")
    w("Regenerate:")
    w("")
    w("```sh")
    w("AWAITKIT_BENCH_QUICK=1 cargo bench --bench combinators && python3 scripts/bench_table.py > docs/benchmarks.md")
    w("```")
    w("")
    w("(with a separate target dir: `CARGO_TARGET_DIR=target-bench cargo bench ...` then")
    w("`python3 scripts/bench_table.py --target-dir target-bench`; drop `AWAITKIT_BENCH_QUICK=1`")
    w("for the full run).")
    w("")
    w(f"- run: {date:%Y-%m-%d %H:%M}, mode {mode}")
    w(f"- machine: {cpu_model()}, nproc = {os.cpu_count()}, {platform.system()} {platform.release()}")
    w(f"- {cmd_output(['rustc', '-V'])}")
    w(f"- awaitkit source: {args.source or cmd_output(['git', 'describe', '--always', '--dirty'])}")
    w("")
    w("Times are criterion medians per child (ns per iteration / N); absolute numbers are")
    w("noisy on this shared 2-core machine, ratios within one run are what counts. **ratio** =")
    w("awaitkit / fastest peer at that N (< 1 means awaitkit is faster); the bar column checks")
    w("the BENCH.md bar for the group. — = not run at that N.")
    w("")

    for group, desc, functions in GROUPS:
        medians = load_medians(cdir, group, functions, not_before)
        sizes = sorted({n for per in medians.values() for n in per})
        if not sizes:
            continue
        w(f"## `{group}`")
        w("")
        w(desc + ".")
        w("")
        header = ["N"] + [label for _, label in functions]
        if group == "wait_any":
            header += ["awaitkit / FuturesUnorderedBounded::next (bar ≤ 1.05)", "awaitkit / select_all (bar ≤ 2)", "fastest peer"]
        else:
            header += ["ratio (bar ≤ 1.05)", "fastest peer"]
        header += ["awaitkit polls/N"]
        w("| " + " | ".join(header) + " |")
        w("|" + "---|" * len(header))
        per_child_by_n = {}
        for n in sizes:
            per_child = {fid: medians[fid][n] / n for fid, _ in functions if n in medians.get(fid, {})}
            per_child_by_n[n] = per_child
            row = [fmt_n(n)] + [fmt_ns(per_child.get(fid)) for fid, _ in functions]
            ak = per_child.get("awaitkit")
            peers = {fid: v for fid, v in per_child.items() if fid != "awaitkit"}
            fastest = min(peers, key=peers.get) if peers else None
            label = dict(functions)
            if group == "wait_any":
                bounded = per_child.get("fb_FuturesUnorderedBounded_next")
                sel = per_child.get("futures_select_all")
                r1 = ak / bounded if ak and bounded else None
                r2 = ak / sel if ak and sel else None
                row.append(f"{r1:.2f} {mark(r1 <= BAR)}" if r1 else "—")
                row.append(f"{r2:.2f} {mark(r2 <= 2.0)}" if r2 else "—")
            else:
                r = ak / peers[fastest] if ak and fastest else None
                row.append(f"**{r:.2f}** {mark(r <= BAR)}" if r else "—")
            row.append(label[fastest] if fastest else "—")
            p = polls.get((group, "awaitkit", n))
            row.append(f"{p:.2f}" if p is not None else "?")
            w("| " + " | ".join(row) + " |")
        w("")
        if group == "gather_shuffled":
            ak = {n: v["awaitkit"] for n, v in per_child_by_n.items() if "awaitkit" in v}
            lo, hi = 1000, max(ak) if ak else 0
            if lo in ak and hi > lo:
                growth = ak[hi] / ak[lo]
                w(f"Flatness (bar: no super-linear growth): awaitkit time per child at N = {fmt_n(hi)} / at")
                w(f"N = {fmt_n(lo)} = **{growth:.2f}** (peers: " + ", ".join(
                    f"{label} {v[hi] / v[lo]:.2f}" for fid, label in functions if fid != "awaitkit"
                    for v in [{n: per_child_by_n[n].get(fid) for n in (lo, hi)}] if v[lo] and v[hi]) + ").")
                w("")
        # polls/N of every crate
        w("<details><summary>child polls / N, every crate</summary>")
        w("")
        ph = ["N"] + [label for _, label in functions]
        w("| " + " | ".join(ph) + " |")
        w("|" + "---|" * len(ph))
        for n in sizes:
            cells = [fmt_n(n)]
            for fid, _ in functions:
                p = polls.get((group, fid, n))
                cells.append(f"{p:.2f}" if p is not None and n in medians.get(fid, {}) else "—")
            w("| " + " | ".join(cells) + " |")
        w("")
        w("</details>")
        w("")

    w("Notes:")
    w("")
    w("- futures-concurrency's `Vec::join` and `FutureGroup` scan all children on each wake, so")
    w("  they are quadratic when children wake one at a time: the shuffled groups cap them at")
    w("  N = 10 000.")
    w("- `wait_any` child polls are N first polls + 1 for the fired child (1.00–1.10 / N);")
    w("  `select_all` and `race` poll every child again after the wake (2.00 / N).")
    w("- futures-concurrency `race` returns only the winner (its rest is dropped inside).")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
