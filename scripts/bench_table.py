#!/usr/bin/env python3
"""Generate docs/benchmarks.md from the output of the benches of the
`awaitkit-benches` crate (`benches/`): `cargo bench -p awaitkit-benches
--bench combinators`, `--bench time`, `--bench semaphore`, `--bench
rate_limiter` and `--bench pool`.

Reads criterion's `<criterion dir>/<group>/<function>/<N>/new/estimates.json`
(median point estimate, ns per iteration) and the `polls.csv` written by the
combinators bench; for the timer groups (no N) `<group>/<function>/new/
estimates.json` and the `time_rss.csv` written by the time bench; for the
semaphore groups (no N) the same estimates and the `semaphore_checks.csv`
written by the semaphore bench; for the rate limiter, the `rate_limiter_check`
estimates, the `rate_limiter_checks.csv` and the `rate_limiter_accuracy.csv`
(one row per run, not criterion) written by the rate limiter bench; for the
pool groups (no N) the estimates and the `pool_checks.csv` written by the pool
bench. Prints Markdown to stdout.

Usage:
    python3 scripts/bench_table.py [--target-dir DIR] [--include-stale] > docs/benchmarks.md

The criterion directory is, in order: $CRITERION_HOME, <--target-dir>/criterion,
$CARGO_TARGET_DIR/criterion, ./target/criterion. Each bench writes its own run
marker when it starts (`awaitkit-bench-run.txt` for combinators,
`awaitkit-bench-run-time.txt` for time, `awaitkit-bench-run-semaphore.txt` for
semaphore, `awaitkit-bench-run-rate-limiter.txt` for rate_limiter,
`awaitkit-bench-run-pool.txt` for pool); results
older than their bench's marker (for the accuracy CSV: rows whose unix_time is
older) are left out unless --include-stale is given, so a quick run that skips
some sizes does not mix with an older full run, and running one bench does not
hide the other's results. The timer, semaphore, rate limiter and pool sections
are left out when their bench has not been run.

The batch section (`cargo bench -p awaitkit-benches --bench batch`: the `batch`
estimates and the `batch_checks.csv` it writes; marker `awaitkit-bench-run-batch.txt`) likewise.
"""

import argparse
import csv
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import textwrap
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
    (
        "first_ok",
        "The `wait_any` children and fire order, each mapped to `Ok(index)`; the first `Ok` wins, "
        "the rest are dropped. No bar (not a BENCH.md group); for reference, with `wait_any` on "
        "the same children in the same run",
        [
            ("awaitkit", "awaitkit `first_ok`"),
            ("futures_select_ok", "futures `select_ok`"),
            ("awaitkit_wait_any", "awaitkit `wait_any`"),
        ],
    ),
]

BAR = 1.05
# The gather groups' bar (BENCH.md): ≤ BAR × the fastest peer that polls only
# woken children at every N, and at N ≤ JOIN_ALL_SMALL also ≤ 2.5 × futures'
# `join_all`, which below 31 children polls every child on every wake.
GATHER_GROUPS = ("gather_yield", "gather_shuffled")
JOIN_ALL_SMALL = 30

# gather_tuple (`gather!` over a few children in a tuple): the bar and the goal
# compare awaitkit against the fastest of the three macros at each N.
GATHER_TUPLE_COLUMNS = [
    ("awaitkit", "awaitkit `gather!`"),
    ("futures_join", "futures `join!`"),
    ("tokio_join", "tokio `join!`"),
    ("fc_tuple_join", "futures-concurrency tuple `join`"),
    ("futures_join_boxed", "futures `join!` in a `Box::pin` (reference)"),
]
# Not a peer: the one allocation that makes `join!` `Unpin` (SPEC §1.10).
GATHER_TUPLE_REFERENCE = "futures_join_boxed"
GATHER_TUPLE_GROUPS = [
    ("gather_tuple_yield", "yield: children wake themselves once"),
    ("gather_tuple_shuffled", "shuffled: children park their waker, fired one at a time in a shuffled order"),
]
GATHER_TUPLE_BAR = 1.5
GATHER_TUPLE_GOAL = 1.0

COMBINATORS_MARKER = "awaitkit-bench-run.txt"

# Timer groups (benches/time.rs): one function per crate, no N.
TIME_MARKER = "awaitkit-bench-run-time.txt"
TIMEOUT_READY_COLUMNS = [
    ("awaitkit", "awaitkit `timeout` (default timer)"),
    ("awaitkit_tokio", "awaitkit `timeout(..).with_timer(TokioTimer)`"),
    ("awaitkit_async_io", "awaitkit `timeout(..).with_timer(AsyncIoTimer)`"),
    ("tokio", "tokio `time::timeout`"),
    ("futures_timer", "futures-timer `Delay` + `select`"),
    ("async_io", "async-io `Timer` + `select`"),
    ("bare", "bare inner future"),
]
TIMEOUT_READY_PEERS = ["tokio", "futures_timer", "async_io"]
TIMEOUT_READY_BAR = 0.5  # × the fastest peer
TIMEOUT_READY_GOAL = 1.2  # × bare
# (backend, awaitkit function, native function)
REGISTER_PAIRS = [
    ("futures-timer (`FuturesTimer`)", "awaitkit_futures_timer", "futures_timer"),
    ("tokio, the default timer inside a tokio runtime (plain `timeout`)", "awaitkit", "tokio"),
    ("tokio (`TokioTimer`)", "awaitkit_tokio", "tokio"),
    ("async-io (`AsyncIoTimer`)", "awaitkit_async_io", "async_io"),
]
REGISTER_LABELS = {
    "awaitkit_futures_timer": "awaitkit `timeout(..).with_timer(FuturesTimer)`",
    "awaitkit": "awaitkit `timeout` (default timer: tokio's inside the runtime)",
    "awaitkit_tokio": "awaitkit `timeout(..).with_timer(TokioTimer)`",
    "awaitkit_async_io": "awaitkit `timeout(..).with_timer(AsyncIoTimer)`",
    "tokio": "tokio `time::timeout`",
    "futures_timer": "futures-timer `Delay` + `select`",
    "async_io": "async-io `Timer` + `select`",
}
REGISTER_BAR = 1.1  # × the backend's native timer

# Semaphore groups (benches/semaphore.rs): one function per crate, no N.
SEMAPHORE_MARKER = "awaitkit-bench-run-semaphore.txt"
SEMAPHORE_COLUMNS = [
    ("awaitkit", "awaitkit `Semaphore` (FIFO)"),
    ("tokio", "tokio `sync::Semaphore` (FIFO)"),
    ("async_lock", "async-lock `Semaphore` (unfair)"),
    ("futures_intrusive_fair", "futures-intrusive `Semaphore`, fair"),
    ("futures_intrusive_unfair", "futures-intrusive `Semaphore`, unfair (extra)"),
]
# The peers BENCH.md names; the unfair futures-intrusive is an extra column,
# shown but not part of "fastest peer".
SEMAPHORE_PEERS = ["tokio", "async_lock", "futures_intrusive_fair"]
# The FIFO peers: the reference of `semaphore_contended_local`, where an unfair
# semaphore (async-lock) lets a releasing task re-take its permit and skip the
# wake/poll cycle every FIFO acquisition pays (shown for reference only).
SEMAPHORE_FIFO_PEERS = ["tokio", "futures_intrusive_fair"]
# (group, description, acquisitions per criterion iteration, reference, bar, goal);
# reference = the functions whose fastest is the reference (None: SEMAPHORE_PEERS).
SEMAPHORE_GROUPS = [
    (
        "semaphore_uncontended",
        "One task, permits = 1, acquire + release in a loop (no acquire ever waits); driven by a "
        "minimal single-threaded driver (wake = one relaxed store). One criterion iteration is one "
        "acquire + release (`iter_custom`: the task runs as many as criterion asks for; the "
        "untimed check runs 10⁶)",
        1,
        None,
        1.0,
        0.6,
    ),
    (
        "semaphore_contended_local",
        "`futures::executor::LocalPool`, permits = 10, 1 000 tasks, each 100 × (acquire, yield "
        "once holding the permit, release): 10⁵ acquisitions per iteration, pool run and spawning "
        "timed",
        100_000,
        SEMAPHORE_FIFO_PEERS,
        1.0,
        0.8,
    ),
    (
        "semaphore_multithread",
        "tokio multi-thread runtime, 2 workers, permits = 8, 64 tasks sharing an `Arc` of the "
        "semaphore, each 3 125 × (acquire, yield once holding the permit, release): 200 000 "
        "acquisitions per iteration, spawning and joining timed",
        200_000,
        # BENCH.md: the bar compares with the fastest peer that wakes every
        # granted waiter (tokio); the goal with futures-intrusive's fair one.
        ["tokio"],
        1.0,
        (1.0, ["futures_intrusive_fair"]),
    ),
]

# Rate limiter groups (benches/rate_limiter.rs): one function per limiter, no N.
RATE_LIMITER_MARKER = "awaitkit-bench-run-rate-limiter.txt"
RATE_CHECK_COLUMNS = [
    ("awaitkit_strict", "awaitkit strict window (`RateLimiter::new`)"),
    ("awaitkit_gcra", "awaitkit GCRA (`RateLimiter::gcra`)"),
    ("awaitkit_strict_quanta", "awaitkit strict window on `QuantaTimer` (governor's clock)"),
    ("awaitkit_gcra_quanta", "awaitkit GCRA on `QuantaTimer` (governor's clock)"),
    ("governor", "governor `check()`"),
    ("governor_std", "governor `check()` on `MonotonicClock` (`Instant::now()`, the default timer's clock)"),
    ("leaky_bucket_fair", "leaky-bucket `try_acquire(1)`, fair"),
    ("leaky_bucket_unfair", "leaky-bucket `try_acquire(1)`, unfair"),
]
# (awaitkit function, reference function, bar, what)
RATE_CHECK_BARS = [
    ("awaitkit_strict", "governor", 1.5, "bar"),
    ("awaitkit_gcra", "governor", 1.0, "bar"),
    ("awaitkit_strict_quanta", "governor", 1.5, "bar, same clock"),
    ("awaitkit_gcra_quanta", "governor", 1.0, "bar, same clock"),
    ("awaitkit_strict", "governor_std", 1.5, "bar, same clock"),
    ("awaitkit_gcra", "governor_std", 1.0, "bar, same clock"),
    ("awaitkit_strict", "leaky_bucket_unfair", 1.0, "goal"),
    ("awaitkit_gcra", "leaky_bucket_unfair", 1.0, "goal"),
]
RATE_ACCURACY_COLUMNS = [
    ("awaitkit_strict", "awaitkit strict window (`RateLimiter::new(1000, 1 s)`)"),
    ("awaitkit_gcra", "awaitkit GCRA (`RateLimiter::gcra(1000, 1 s, 1000)`)"),
    ("awaitkit_strict_tokio", "awaitkit strict window on `TokioTimer` (extra)"),
    ("awaitkit_gcra_tokio", "awaitkit GCRA on `TokioTimer` (extra)"),
    ("governor", "governor `until_ready()` (`per_second(1000)`)"),
    ("leaky_bucket", "leaky-bucket `acquire_one()` (fair, 1 per 1 ms, max 1000)"),
]
# Functions held to the strict "at most N in any window" bar.
RATE_STRICT = {"awaitkit_strict", "awaitkit_strict_tokio"}
RATE_AWAITKIT = {"awaitkit_strict", "awaitkit_gcra", "awaitkit_strict_tokio", "awaitkit_gcra_tokio"}
RATE_WALL_BAR = 0.03  # |wall / ideal - 1|
RATE_WALL_GOAL = 0.01
# The strict window's log: about 1 024 entries of 16 B in a VecDeque (32 KiB at most).
RATE_HEAP_LIMIT = 64 * 1024


# Pool groups (benches/pool.rs): one function per crate, no N.
POOL_MARKER = "awaitkit-bench-run-pool.txt"
POOL_COLUMNS = [
    ("awaitkit", "awaitkit `Pool` (trivial manager, default recycle step)"),
    ("awaitkit_no_recycle", "awaitkit `Pool` (`Manager::RECYCLE = false`: no recycle step)"),
    ("deadpool_managed", "deadpool `managed::Pool` (trivial manager)"),
    ("deadpool_unmanaged", "deadpool `unmanaged::Pool` (16 objects up front)"),
]
POOL_PEERS = ["deadpool_managed", "deadpool_unmanaged"]
# Like for like: (awaitkit function, deadpool function, what they share)
POOL_PAIRS = [
    ("awaitkit", "deadpool_managed", "both recycle every object"),
    ("awaitkit_no_recycle", "deadpool_unmanaged", "neither recycles"),
]
POOL_GETS = 64 * 10_000  # gets per criterion iteration
POOL_SIZE = 16
POOL_BAR = 1.0  # × the faster deadpool variant
POOL_GOAL = 0.7
# (group, description, counts in the verdict)
POOL_GROUPS = [
    (
        "pool_get_return",
        "tokio current-thread runtime; a pool of 16 shared by 64 tasks (`tokio::spawn`), each "
        "10 000 × (get, touch the object, yield once holding it, drop the guard): 640 000 gets "
        "per iteration; building the pool, spawning, joining and dropping it are timed",
        True,
    ),
    (
        "pool_get_return_multithread",
        "**extra** (not a BENCH.md group): the same workload on a tokio multi-thread runtime "
        "with 2 workers (3 threads on 2 cores: noisy)",
        False,
    ),
]


def criterion_dir(args):
    if os.environ.get("CRITERION_HOME"):
        return Path(os.environ["CRITERION_HOME"])
    if args.target_dir:
        return Path(args.target_dir) / "criterion"
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"]) / "criterion"
    return Path("target") / "criterion"


def read_median(est, not_before):
    """The median point estimate (ns per iteration) of criterion's `estimates.json`
    `est`, or None when it is missing or older than `not_before`."""
    if not est.is_file():
        return None
    if not_before is not None and est.stat().st_mtime < not_before:
        return None
    with open(est) as f:
        return json.load(f)["median"]["point_estimate"]


def load_medians(cdir, group, fids, not_before):
    """{function: {n: ns per iteration}}"""
    out = {}
    gdir = cdir / group
    for fid in fids:
        fdir = gdir / fid
        if not fdir.is_dir():
            continue
        for ndir in fdir.iterdir():
            if not ndir.name.isdigit():
                continue
            median = read_median(ndir / "new" / "estimates.json", not_before)
            if median is not None:
                out.setdefault(fid, {})[int(ndir.name)] = median
    return out


def csv_rows(cdir, name):
    """The rows (dicts) of the CSV `name` in the criterion directory; none if it is missing."""
    path = cdir / name
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def load_checks(cdir, name, group=None):
    """{(group, function): row} of a CSV a bench writes (`group,function,…`);
    with `group`, {function: row} of that group's rows only."""
    if group is None:
        return {(row["group"], row["function"]): row for row in csv_rows(cdir, name)}
    return {row["function"]: row for row in csv_rows(cdir, name) if row["group"] == group}


def read_marker(cdir, name, include_stale):
    """(mode, run time, not_before) of a bench's run marker `name`, or None when
    that bench has not run. Results older than `not_before` are stale (None:
    keep everything)."""
    marker = cdir / name
    if not marker.is_file():
        return None
    run_time = marker.stat().st_mtime
    return marker.read_text().strip(), run_time, None if include_stale else run_time - 1


def load_polls(cdir):
    return {
        (row["group"], row["function"], int(row["n"])): float(row["polls_per_n"])
        for row in csv_rows(cdir, "polls.csv")
    }


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


def load_flat_medians(cdir, group, fids, not_before):
    """{function: ns per iteration} for a group without a parameter."""
    out = {}
    for fid in fids:
        median = read_median(cdir / group / fid / "new" / "estimates.json", not_before)
        if median is not None:
            out[fid] = median
    return out


def load_per_unit(cdir, groups, fids, not_before):
    """{group: {function: ns per unit}} for groups without a parameter;
    `groups` is [(group, units per criterion iteration)]. Groups without
    results are left out."""
    out = {}
    for group, units in groups:
        medians = load_flat_medians(cdir, group, fids, not_before)
        if medians:
            out[group] = {f: v / units for f, v in medians.items()}
    return out


def kib_delta(row, a, b):
    try:
        return int(row[b]) - int(row[a])
    except (KeyError, TypeError, ValueError):
        return None


def fmt_kib(v):
    if v is None:
        return "?"
    return f"{v:+,} KiB".replace(",", " ")


def fmt_ns_fine(v):
    """fmt_ns with two decimals below 10 ns (a ready timeout costs about 1 ns)."""
    if v is not None and v < 10:
        return f"{v:.2f}"
    return fmt_ns(v)


def ratio_cell(r, limit, bold=True):
    if r is None:
        return "—"
    v = f"**{r:.2f}**" if bold else f"{r:.2f}"
    return f"{v} {mark(r <= limit)}"


def ratio(a, b):
    """a / b, or None when either is missing (or zero)."""
    return a / b if a and b else None


def bold_ratio(r):
    return f"**{r:.2f}**" if r is not None else "—"


def holds(r, limit):
    """Whether ratio `r` is within `limit` (— when it was not measured)."""
    return mark(r <= limit) if r is not None else "—"


def fastest_of(values, fids):
    """The function of `fids` with the smallest value, or None if none was measured."""
    present = {f: values[f] for f in fids if f in values}
    return min(present, key=present.get) if present else None


def md_row(cells):
    return "| " + " | ".join(cells) + " |"


def table(w, header, rows=()):
    """A Markdown table: `header`, its rule, then `rows` (lists of cells)."""
    w(md_row(header))
    w("|" + "---|" * len(header))
    for row in rows:
        w(md_row(row))


VERDICT_HEADER = ["bar", "measured", "value", "limit", "holds"]


def verdict_section(w, rows, header=VERDICT_HEADER, intro=()):
    """The `## Verdict` table of a section (`intro`: lines before it)."""
    w("## Verdict")
    w("")
    if intro:
        for line in intro:
            w(line)
        w("")
    table(w, header, rows)
    w("")


def crate_table(w, values, columns, unit, check_header, check_cells):
    """A group's table, one row per measured crate: its label, ns per `unit`,
    / awaitkit, then `check_cells(fid)` (the untimed check's columns)."""
    ak = values.get("awaitkit")
    rows = [
        [name, fmt_ns(values[fid]), f"{values[fid] / ak:.2f}" if ak else "—"] + check_cells(fid)
        for fid, name in columns if values.get(fid) is not None
    ]
    table(w, ["crate", f"ns per {unit}", "/ awaitkit"] + check_header, rows)
    w("")


def section_header(w, title, intro, bench, run, extra=()):
    """A bench section's title, `intro` lines, regenerate command (`cargo bench
    -p awaitkit-benches --bench <bench>`), `extra` lines and the run line (`run`: read_marker's)."""
    mode, run_time, _ = run
    w("")
    w(f"# {title}")
    w("")
    for line in intro:
        w(line)
    w("")
    w("```sh")
    w(f"AWAITKIT_BENCH_QUICK=1 cargo bench -p awaitkit-benches --bench {bench} && python3 scripts/bench_table.py > docs/benchmarks.md")
    w("```")
    w("")
    if extra:
        for line in extra:
            w(line)
        w("")
    w(f"- run: {datetime.datetime.fromtimestamp(run_time):%Y-%m-%d %H:%M}, mode {mode}")


def group_heading(w, group, desc):
    w(f"## `{group}`")
    w("")
    w(desc + ".")
    w("")


def gather_tuple_section(cdir, not_before, polls):
    """Markdown lines for the `gather_tuple` groups (ns per gather, not per
    child: N is 2 to 8); empty if they have not run."""
    lines = []
    w = lines.append
    fids = [fid for fid, _ in GATHER_TUPLE_COLUMNS]
    peers = [fid for fid in fids if fid not in ("awaitkit", GATHER_TUPLE_REFERENCE)]
    label = dict(GATHER_TUPLE_COLUMNS)
    for group, desc in GATHER_TUPLE_GROUPS:
        medians = load_medians(cdir, group, fids, not_before)
        sizes = sorted({n for per in medians.values() for n in per})
        if not sizes:
            continue
        if not lines:
            group_heading(w, "gather_tuple", (
                "`gather!` over N = 2, 3, 5, 8 children of one type in a tuple, outputs in input "
                "order, against `futures::join!`, `tokio::join!` and futures-concurrency's tuple "
                "`join` (`(a, b).join()`); one fixed-arity function per N, every crate awaited "
                "inside an `async` block. Bar: awaitkit ≤ "
                f"{GATHER_TUPLE_BAR} × the fastest of the three macros at every N; goal ≤ "
                f"{GATHER_TUPLE_GOAL}. Times are ns per gather (not per child)"))
        w(f"`{group}` ({desc}):")
        w("")
        header = ["N"] + [label[fid] for fid in fids] + [
            f"awaitkit / fastest macro (bar ≤ {GATHER_TUPLE_BAR}, goal ≤ {GATHER_TUPLE_GOAL})",
            "fastest macro", "awaitkit / boxed `join!` (reference)", "awaitkit polls/N"]
        rows = []
        for n in sizes:
            per = {fid: medians[fid][n] for fid in fids if n in medians.get(fid, {})}
            fastest = fastest_of(per, peers)
            r = ratio(per.get("awaitkit"), per.get(fastest)) if fastest else None
            cell = "—"
            if r is not None:
                cell = f"**{r:.2f}** {mark(r <= GATHER_TUPLE_BAR)}"
                cell += " (goal ✅)" if r <= GATHER_TUPLE_GOAL else " (goal ❌)"
            p = polls.get((group, "awaitkit", n))
            rb = ratio(per.get("awaitkit"), per.get(GATHER_TUPLE_REFERENCE))
            rows.append([fmt_n(n)] + [fmt_ns(per.get(fid)) for fid in fids] + [
                cell, label[fastest] if fastest else "—",
                f"{rb:.2f}" if rb is not None else "—",
                f"{p:.2f}" if p is not None else "?"])
        table(w, header, rows)
        w("")
        w("<details><summary>child polls / N, every crate</summary>")
        w("")
        rows = []
        for n in sizes:
            cells = [fmt_n(n)]
            for fid in fids:
                p = polls.get((group, fid, n))
                cells.append(f"{p:.2f}" if p is not None and n in medians.get(fid, {}) else "—")
            rows.append(cells)
        table(w, ["N"] + [label[fid] for fid in fids], rows)
        w("")
        w("</details>")
        w("")
    if lines:
        w("- `futures::join!` and `tokio::join!` poll every unfinished child on each wake (no")
        w("  per-child wakers); `gather!` and futures-concurrency's tuple `join` poll only the woken")
        w("  ones (2.00 polls / N in both variants).")
        w("- The boxed `join!` is a reference, not a peer: SPEC §1.10 makes every awaitkit")
        w("  combinator `Unpin`, so `gather!` keeps its children (which are `!Unpin` when they are")
        w("  `async` blocks or `async fn` calls) in one heap block; a caller who needs `join!` to be")
        w("  `Unpin` pays the same allocation with one `Box::pin`.")
        w("")
    return lines


def time_section(cdir, include_stale):
    """Markdown lines for the timer groups; empty if the time bench has not run."""
    run = read_marker(cdir, TIME_MARKER, include_stale)
    if run is None:
        return []
    not_before = run[2]
    ready = load_flat_medians(cdir, "timeout_ready", [f for f, _ in TIMEOUT_READY_COLUMNS], not_before)
    register = load_flat_medians(cdir, "timer_register_drop", list(REGISTER_LABELS), not_before)
    if not ready and not register:
        return []
    rss = load_checks(cdir, "time_rss.csv")

    lines = []
    w = lines.append
    section_header(w, "Timers", [
        "`timeout` against the runtimes' own timers (`benches/time.rs`; workloads and bars:",
        "`BENCH.md`). Every future is pinned on the stack and polled with a no-op waker; a tokio",
        "current-thread runtime (time enabled, never driven) is entered for the whole run.",
        "Building the timeout, polling it, consuming the output and dropping it (timers",
        "included) are timed. Criterion picks the iteration counts.",
    ], "time", run)
    w("")
    w("Times are criterion medians in ns per timeout.")
    w("")

    if ready:
        w("## `timeout_ready`")
        w("")
        w("An immediately ready future (`std::future::ready`) in a 1 h timeout, polled to completion.")
        w("")
        table(w, [label for _, label in TIMEOUT_READY_COLUMNS],
              [[fmt_ns_fine(ready.get(fid)) for fid, _ in TIMEOUT_READY_COLUMNS]])
        w("")
        fastest = fastest_of(ready, TIMEOUT_READY_PEERS)
        bare = ready.get("bare")
        label = dict(TIMEOUT_READY_COLUMNS)
        header = [
            "awaitkit",
            "ns per timeout",
            f"/ fastest peer (bar ≤ {TIMEOUT_READY_BAR})",
            "fastest peer",
            f"/ bare (goal ≤ {TIMEOUT_READY_GOAL})",
        ]
        rows = []
        for fid in ("awaitkit", "awaitkit_tokio", "awaitkit_async_io"):
            ak = ready.get(fid)
            if ak is None:
                continue
            r_peer = ak / ready[fastest] if fastest else None
            r_bare = ak / bare if bare else None
            main = fid == "awaitkit"
            rows.append([
                label[fid],
                fmt_ns_fine(ak),
                ratio_cell(r_peer, TIMEOUT_READY_BAR, main),
                label[fastest] if fastest else "—",
                ratio_cell(r_bare, TIMEOUT_READY_GOAL, main),
            ])
        table(w, header, rows)
        w("")

    if register:
        w("## `timer_register_drop`")
        w("")
        w("A 1 h timeout around a pending future, polled once (the timer is registered) and dropped.")
        w("")
        fids = list(REGISTER_LABELS)
        table(w, [REGISTER_LABELS[f] for f in fids], [[fmt_ns_fine(register.get(f)) for f in fids]])
        w("")
        header = [
            "backend",
            "awaitkit",
            "native",
            f"awaitkit / native (bar ≤ {REGISTER_BAR})",
            "RSS Δ, 2nd 10⁵ (awaitkit / native)",
        ]
        rows = []
        for backend, ak_fid, native_fid in REGISTER_PAIRS:
            ak, native = register.get(ak_fid), register.get(native_fid)
            if ak is None and native is None:
                continue
            mem = " / ".join(
                fmt_kib(kib_delta(rss[("timer_register_drop", f)], "rss_round1_kib", "rss_round2_kib"))
                if ("timer_register_drop", f) in rss else "?"
                for f in (ak_fid, native_fid)
            )
            rows.append([backend, fmt_ns_fine(ak), fmt_ns_fine(native),
                         ratio_cell(ratio(ak, native), REGISTER_BAR), mem])
        table(w, header, rows)
        w("")
        ak, tok = register.get("awaitkit"), register.get("tokio")
        if ak and tok:
            w(f"Goal: default backend / tokio `time::timeout` = {ratio_cell(ak / tok, 1.0)} (goal ≤ 1.0).")
            w("")
        rows = [(f, rss[("timer_register_drop", f)]) for f in fids if ("timer_register_drop", f) in rss]
        if rows:
            w("<details><summary>memory: process RSS around each function (KiB)</summary>")
            w("")
            w("Before the timed runs, an untimed check registers and drops 10⁵ timers twice;")
            w("dropped registrations must not accumulate (flat RSS in the second round).")
            w("")
            table(w, ["function", "start", "after 1st 10⁵", "after 2nd 10⁵", "after the timed runs",
                      "untimed ns/iter (2nd 10⁵)"], [
                [REGISTER_LABELS[f]] + [row.get(col, "?") for col in (
                    "rss_start_kib", "rss_round1_kib", "rss_round2_kib", "rss_after_bench_kib",
                    "check_ns_per_iter")]
                for f, row in rows
            ])
            w("")
            w("</details>")
            w("")

    w("Timer notes:")
    w("")
    w("- futures-timer registers in `Delay::new` and wakes its global helper thread on every")
    w("  registration and every drop; async-io queues timer operations for its reactor thread")
    w("  and notifies it on insert; tokio inserts into the runtime's wheel under a lock and")
    w("  removes the entry on drop. On this 2-core machine the helper threads compete with the")
    w("  bench thread, so the futures-timer and async-io rows are the noisiest and bimodal from")
    w("  run to run: when the futures-timer helper lags behind (e.g. it shares the bench thread's")
    w("  core), it handles registrations in batches and a `Delay` created and dropped before it")
    w("  looks is never put in its heap, so a faster producer gets a cheaper timer. Rerun before")
    w("  trusting a ratio near the 1.1 bar.")
    w("- A ready inner future never creates a timer in awaitkit; the peers build one first")
    w("  (tokio: a `Sleep`, futures-timer: a registered `Delay`, async-io: a clock read).")
    return lines


def waited_cell(row, total_column):
    """The share of `row`'s `waited` in its `total_column`, as a percentage."""
    try:
        waited, total = int(row["waited"]), int(row[total_column])
    except (KeyError, TypeError, ValueError):
        return "?"
    return f"{100 * waited / total:.1f} %" if total else "?"


def semaphore_section(cdir, include_stale):
    """Markdown lines for the semaphore groups; empty if the semaphore bench has not run."""
    run = read_marker(cdir, SEMAPHORE_MARKER, include_stale)
    if run is None:
        return []
    per_acq = load_per_unit(cdir, [(g[0], g[2]) for g in SEMAPHORE_GROUPS],
                            [f for f, _ in SEMAPHORE_COLUMNS], run[2])
    if not per_acq:
        return []
    checks = load_checks(cdir, "semaphore_checks.csv")
    label = dict(SEMAPHORE_COLUMNS)

    lines = []
    w = lines.append
    section_header(w, "Semaphore", [
        "`Semaphore` against its peers (`benches/semaphore.rs`; workloads and bars: `BENCH.md`).",
        "Every crate is used the same way: its awaited `acquire` future (borrowed permits), released",
        "by dropping the permit; the yield while holding a permit is one self-wake + `Pending`.",
    ], "semaphore", run)
    w("")
    w("Times are criterion medians in ns per acquisition (acquire + release), i.e. ns per")
    w("iteration / acquisitions per iteration. Before the timed runs an untimed check runs each")
    w("function once: at most `permits` holders at any time, every task finished, and for")
    w("awaitkit strict FIFO in `semaphore_contended_local`. *waited* = share of acquires whose")
    w("first poll returned `Pending`; *out of order* = waiters granted while an older waiter was")
    w("still waiting (single-threaded group only). A FIFO semaphore makes a releasing task queue")
    w("behind the waiters; an unfair one lets it take its permit straight back.")
    w("")

    verdicts = []
    for group, desc, _, reference, bar, goal in SEMAPHORE_GROUPS:
        values = per_acq.get(group)
        if not values:
            continue
        group_heading(w, group, desc)
        ak = values.get("awaitkit")

        def check_cells(fid):
            row = checks.get((group, fid), {})
            ooo = row.get("out_of_order", "")
            return [
                waited_cell(row, "acquisitions"),
                ooo if ooo != "" else ("n/a" if row else "?"),
                row.get("max_holders", "?"),
                row.get("check_ns_per_acquisition", "?"),
            ]

        crate_table(w, values, SEMAPHORE_COLUMNS, "acquisition",
                    ["waited", "out of order", "most holders", "untimed check, ns"], check_cells)
        if reference is None:
            ref = fastest_of(values, SEMAPHORE_PEERS)
            ref_cell = f"fastest peer: {label[ref]}" if ref else "fastest peer"
        elif len(reference) == 1:
            ref = reference[0] if reference[0] in values else None
            ref_cell = f"{label[ref]} (the fastest peer that wakes every granted waiter)" if ref else "?"
        else:
            ref = fastest_of(values, reference)
            ref_cell = f"fastest FIFO peer: {label[ref]}" if ref else "fastest FIFO peer"
        r = ratio(ak, values[ref]) if ref else None
        # A goal is a ratio against the same reference, or (limit, functions)
        # against another.
        if isinstance(goal, tuple):
            goal, goal_ref = goal
            g_fid = fastest_of(values, goal_ref)
            r_goal = ratio(ak, values[g_fid]) if g_fid else None
            goal_cell = (f"≤ {goal} × {label[g_fid]}: {r_goal:.2f} {mark(r_goal <= goal)}"
                         if r_goal is not None else f"≤ {goal}")
        else:
            goal_cell = f"≤ {goal} {mark(r <= goal)}" if r is not None else f"≤ {goal}"
        fastest_all = fastest_of(values, [f for f in values if f != "awaitkit"])
        r_all = ratio(ak, values[fastest_all]) if fastest_all else None
        verdicts.append([
            f"`{group}`",
            fmt_ns(ak),
            ref_cell,
            fmt_ns(values.get(ref) if ref else None),
            bold_ratio(r),
            f"≤ {bar} {mark(r <= bar)}" if r is not None else f"≤ {bar}",
            goal_cell,
            f"{r_all:.2f} ({label[fastest_all]})" if r_all is not None else "—",
        ])

    if verdicts:
        verdict_section(w, verdicts, header=[
            "group", "awaitkit, ns", "reference", "reference, ns", "awaitkit / reference", "bar", "goal",
            "awaitkit / fastest of all (incl. the unfair ones; reference only)"])
    w("Semaphore notes:")
    w("")
    w("- The contended_local bar compares FIFO awaitkit with the fastest FIFO peer (futures-intrusive")
    w("  fair, tokio): with a FIFO semaphore every acquisition after the first `permits` waits (a")
    w("  queue entry, a wake-up and a re-poll per acquisition). async-lock is unfair: a releasing")
    w("  task re-acquires its permit at once (about 1 % of acquisitions wait), so it skips that")
    w("  cycle; it is shown for reference only (last column of the verdict).")
    w("- `semaphore_multithread` is the noisiest group (3 threads on 2 cores: the two workers and")
    w("  the thread in `block_on`; every acquisition moves the semaphore's cache lines between the")
    w("  cores). Each sample runs on a fresh runtime; compare ratios within one run.")
    w("- Why futures-intrusive's fair semaphore is faster across threads (measured with counting")
    w("  wakers and `perf`): polls, wakes and locks per acquisition are the same for awaitkit,")
    w("  tokio and futures-intrusive (2.00 polls, 1.00 wake), and on one worker the two cost the")
    w("  same. The difference is placement: futures-intrusive keeps at most one woken waiter in")
    w("  flight and hands the next permit on only when that waiter runs, so runs of about 25")
    w("  acquisitions stay on one worker (consecutive acquisitions switch workers 4 % of the time;")
    w("  awaitkit 93 %, tokio 86–92 %) and the other worker idles. That design leaves a waiter")
    w("  asleep with a permit free when the woken one is not polled (two permits, waiters A and B:")
    w("  A granted and never polled, the second permit released: B is not woken). awaitkit wakes")
    w("  every granted waiter (`tests/semaphore.rs`:")
    w("  `a_granted_waiter_that_is_never_polled_does_not_hold_back_the_next`); a prototype of the")
    w("  one-wake-in-flight scheme reached 1.1× futures-intrusive but fails that test. Among the")
    w("  peers that wake every granted waiter, tokio is the fastest, and awaitkit is faster than it.")
    return lines


def load_rate_accuracy(cdir, not_before):
    """{function: [row of rate_limiter_accuracy.csv, one per run, in run order]}"""
    runs = {}
    for row in csv_rows(cdir, "rate_limiter_accuracy.csv"):
        if row["group"] != "rate_limiter_accuracy":
            continue
        try:
            if not_before is not None and int(row["unix_time"]) < not_before:
                continue
            run = {
                "run": int(row["run"]),
                "wall_ms": float(row["wall_ms"]),
                "ideal_ms": float(row["ideal_ms"]),
                "ratio": float(row["wall_over_ideal"]),
                "max_in_window": int(row["max_in_window"]),
                "n": int(row["n"]),
                "acquisitions": int(row["acquisitions"]),
            }
        except (KeyError, TypeError, ValueError):
            continue
        runs.setdefault(row["function"], []).append(run)
    for rows in runs.values():
        rows.sort(key=lambda r: r["run"])
    return runs


def fmt_bytes(v):
    try:
        v = int(v)
    except (TypeError, ValueError):
        return "?"
    if v >= 1 << 20:
        return f"{v / (1 << 20):.1f} MiB"
    if v >= 1 << 10:
        return f"{v / (1 << 10):.1f} KiB"
    return f"{v} B"


def rate_limiter_section(cdir, include_stale):
    """Markdown lines for the rate limiter groups; empty if the rate limiter bench has not run."""
    run = read_marker(cdir, RATE_LIMITER_MARKER, include_stale)
    if run is None:
        return []
    not_before = run[2]
    check = load_flat_medians(cdir, "rate_limiter_check", [f for f, _ in RATE_CHECK_COLUMNS], not_before)
    accuracy = load_rate_accuracy(cdir, not_before)
    if not check and not accuracy:
        return []
    checks = load_checks(cdir, "rate_limiter_checks.csv", group="rate_limiter_check")
    check_label = dict(RATE_CHECK_COLUMNS)
    accuracy_label = dict(RATE_ACCURACY_COLUMNS)

    lines = []
    w = lines.append
    section_header(w, "Rate limiter", [
        "`RateLimiter` against governor and leaky-bucket (`benches/rate_limiter.rs`; workloads and",
        "bars: `BENCH.md`): the cost of a non-waiting check, and how closely awaited acquisitions",
        "keep to the quota.",
    ], "rate_limiter", run, extra=[
        "(The awaitkit limiters also run on `TokioTimer` in the accuracy group and on `QuantaTimer`",
        "— the clock governor reads — in the check group: the bench crate enables awaitkit's",
        "`tokio` and `quanta` features.)",
    ])
    w("")

    verdicts = []
    if check:
        w("## `rate_limiter_check`")
        w("")
        w("Non-waiting checks on a limiter whose quota never runs out (awaitkit strict:")
        w("`new(usize::MAX / 2, 1 s)`; awaitkit GCRA: `gcra(usize::MAX / 2, 1 s, usize::MAX / 2)`;")
        w("governor: `Quota::per_second(NonZeroU32::MAX)`; leaky-bucket: initial = max = `usize::MAX`).")
        w("One criterion iteration is one check (`iter_custom`, a tight loop, every result checked);")
        w("the limiter is built once per function and reused by every sample, so the strict")
        w("window's log is in its steady state (about 1 024 merged entries, one expiring per")
        w("~1 ms). Times are criterion medians in ns per check. Before the timed runs an untimed")
        w("check makes exactly 10⁶ checks (all must be granted). *heap growth*: a counting global")
        w("allocator's live bytes after each timed sample, largest minus after the first sample,")
        w("over more than one period of back-to-back checks (the *span* column): a log with one")
        w("entry per check would grow by megabytes; the strict window's merged log settles at")
        w("about 1 024 entries of 16 B (its `VecDeque` at most 32 KiB); the others must show 0.")
        w("")
        gov, unfair = check.get("governor"), check.get("leaky_bucket_unfair")
        rows = []
        for fid, name in RATE_CHECK_COLUMNS:
            v = check.get(fid)
            if v is None:
                continue
            row = checks.get(fid, {})
            rows.append([
                name,
                fmt_ns(v),
                f"{v / gov:.2f}" if gov else "—",
                f"{v / unfair:.2f}" if unfair else "—",
                row.get("check_ns_per_check", "?"),
                fmt_bytes(row.get("heap_growth_bytes")),
                f"{row['timed_span_s']} s" if row.get("timed_span_s") else "?",
            ])
        table(w, ["limiter", "ns per check", "/ governor", "/ leaky-bucket unfair", "untimed check, ns",
                  "heap growth", "span of the timed checks"], rows)
        w("")
        for ak, ref, limit, kind in RATE_CHECK_BARS:
            a, r = check.get(ak), check.get(ref)
            q = ratio(a, r)
            verdicts.append([
                f"`rate_limiter_check`: {check_label[ak]} / {check_label[ref]}",
                f"{fmt_ns(a)} / {fmt_ns(r)} ns",
                bold_ratio(q),
                f"{kind} ≤ {limit}",
                holds(q, limit),
            ])
        row = checks.get("awaitkit_strict", {})
        try:
            growth, span = int(row["heap_growth_bytes"]), float(row["timed_span_s"])
        except (KeyError, TypeError, ValueError):
            growth = span = None
        if growth is not None and "awaitkit_strict" in check:
            verdicts.append((
                f"`rate_limiter_check`: {check_label['awaitkit_strict']}, heap growth over the timed checks",
                f"{fmt_bytes(growth)} over {span:.2f} s",
                f"**{fmt_bytes(growth)}**",
                f"check (not a BENCH.md bar): ≤ {fmt_bytes(RATE_HEAP_LIMIT)} over > 1 period",
                mark(growth <= RATE_HEAP_LIMIT and span > 1.0),
            ))

    if accuracy:
        any_run = next(iter(accuracy.values()))[0]
        n, acq, ideal = any_run["n"], any_run["acquisitions"], any_run["ideal_ms"]
        w("## `rate_limiter_accuracy`")
        w("")
        w(f"{fmt_n(n)} calls per second, {fmt_n(acq)} awaited acquisitions in one task on a tokio")
        w("current-thread runtime (time enabled), a timestamp right after each await; each run on a")
        w("fresh runtime and limiter, runs interleaved across limiters. Not a speed benchmark.")
        w(f"*wall* = last timestamp − first (ideal {ideal:.0f} ms for every limiter: the")
        w(f"{fmt_n(acq)}th grant is due one period after the first, with a window / burst of")
        w(f"{fmt_n(n)}); *most in one period* = the most timestamps in any half-open window")
        w("`[t, t + 1 s)`. GCRA, governor and a token bucket legitimately reach up to 2N − 1 (a")
        w("full burst, then the steady rate); the strict window must never exceed N. Bars")
        w(f"(awaitkit only): wall within {RATE_WALL_BAR * 100:.0f} % of ideal (goal {RATE_WALL_GOAL * 100:.0f} %), strict: at most")
        w("N in any window; the `TokioTimer` rows are extras, not in the verdict.")
        w("")
        rows = []
        for fid, name in RATE_ACCURACY_COLUMNS:
            runs = accuracy.get(fid)
            if not runs:
                continue
            worst = max(runs, key=lambda r: abs(r["ratio"] - 1))
            most = max(r["max_in_window"] for r in runs)
            rn = runs[0]["n"]
            dev = abs(worst["ratio"] - 1)
            if fid in RATE_AWAITKIT:
                ok_wall = dev <= RATE_WALL_BAR
                ok_window = most <= rn if fid in RATE_STRICT else True
                goal = "" if dev <= RATE_WALL_GOAL else " (goal ❌)"
                bar = mark(ok_wall and ok_window) + goal
                main_row = fid in ("awaitkit_strict", "awaitkit_gcra")
                if main_row:
                    verdicts.append((
                        f"`rate_limiter_accuracy`: {accuracy_label[fid]}, wall / ideal",
                        f"{worst['wall_ms']:.1f} / {worst['ideal_ms']:.0f} ms (worst of {len(runs)})",
                        f"**{worst['ratio']:.4f}**",
                        f"bar ± {RATE_WALL_BAR * 100:.0f} %, goal ± {RATE_WALL_GOAL * 100:.0f} %",
                        mark(ok_wall) + goal,
                    ))
                if main_row and fid in RATE_STRICT:
                    verdicts.append((
                        f"`rate_limiter_accuracy`: {accuracy_label[fid]}, most in one period",
                        f"{most} (worst of {len(runs)})",
                        f"**{most}**",
                        f"bar ≤ N = {rn}",
                        mark(ok_window),
                    ))
            else:
                bar = "— (peer)"
            rows.append([
                name,
                ", ".join(f"{r['wall_ms']:.1f}" for r in runs),
                f"{worst['ratio']:.4f}",
                f"{most}",
                f"{rn}",
                bar,
            ])
        table(w, ["limiter", "wall, ms (each run)", "wall / ideal (worst run)", "most in one period (worst run)",
                  "N", "bar"], rows)
        w("")

    if verdicts:
        verdict_section(w, verdicts)

    w("Rate limiter notes:")
    w("")
    w("- Every check reads a clock: awaitkit its timer's (the default timer: `Instant::now()`,")
    w("  `clock_gettime` in the vDSO, about 16 ns here; `QuantaTimer`: quanta's time-stamp counter")
    w("  through `Timer::counter_nanos`), governor quanta's TSC clock (about 10 ns); the `_quanta`")
    w("  rows compare the limiters on the same clock. An unfair leaky-bucket's `try_acquire` is one")
    w("  compare-and-swap on its token balance and reads no clock while tokens are left, a fair")
    w("  one always takes its lock and reads the clock. The awaitkit GCRA check is a clock read")
    w("  and a compare-and-swap; the strict window takes its mutex, expires and appends to its log.")
    w("- leaky-bucket's refill counts whole milliseconds since its deadline and starts the next")
    w("  interval from the wake-up, so the lateness of every wake-up (tokio's timer rounds sleeps")
    w("  up to its 1 ms tick) is lost: at 1 refill per 1 ms its acquisitions run at about half")
    w("  the configured rate. awaitkit (both modes) and governor schedule grants from the quota")
    w("  alone, so a late timer delays one grant without shifting the later ones.")
    w("- The timestamps are taken after the await: a thread preempted between a grant and its")
    w("  timestamp moves that timestamp later, which can only make a window look fuller than it")
    w("  was when granted.")
    return lines


def pool_section(cdir, include_stale):
    """Markdown lines for the pool groups; empty if the pool bench has not run."""
    run = read_marker(cdir, POOL_MARKER, include_stale)
    if run is None:
        return []
    per_get = load_per_unit(cdir, [(g[0], POOL_GETS) for g in POOL_GROUPS], [f for f, _ in POOL_COLUMNS], run[2])
    if not per_get:
        return []
    checks = load_checks(cdir, "pool_checks.csv")
    label = dict(POOL_COLUMNS)

    lines = []
    w = lines.append
    section_header(w, "Pool", [
        "`pool::Pool` against deadpool (`benches/pool.rs`; workloads and bars: `BENCH.md`). Every",
        "crate is used the same way: its awaited `get`, the object touched and held across one",
        "yield (a self-wake + `Pending`: the realistic use holds a connection across an await, and",
        "it is what makes tasks queue — without it no get would ever wait on one thread), then",
        "returned by dropping the guard. Both managers are trivial (`create` returns a small struct,",
        "`recycle` is `Ok(())`); the unmanaged pool is built from 16 ready objects. All three wait",
        "in FIFO order (awaitkit's `Semaphore`, tokio's semaphore inside deadpool).",
    ], "pool", run)
    w("- the pool groups sample flat and measure longer than that (one iteration takes 0.1–0.5 s):")
    w("  2.5 s current-thread / 6 s multithread in quick mode, 8 s / 20 s in full mode")
    w("")
    w("Times are criterion medians in ns per get (get + hold across one yield + return, task")
    w("switches included), i.e. ns per iteration / 640 000. Each sample runs on a fresh runtime.")
    w("Before the timed runs an untimed check runs each function once: every task finished,")
    w(f"640 000 gets, at most {POOL_SIZE} objects held at any time and none handed out twice at")
    w(f"once, at most {POOL_SIZE} objects created. *waited* = share of gets whose first poll")
    w("returned `Pending` (FIFO waiting: on one thread every get past the first 16 waits).")
    w("")

    verdicts = []
    for group, desc, main_group in POOL_GROUPS:
        values = per_get.get(group)
        if not values:
            continue
        group_heading(w, group, desc)

        def check_cells(fid):
            row = checks.get((group, fid), {})
            return [
                waited_cell(row, "gets"),
                row.get("max_held", "?"),
                row.get("created", "?"),
                row.get("check_ns_per_get", "?"),
            ]

        crate_table(w, values, POOL_COLUMNS, "get", ["waited", "most held", "objects created", "untimed check, ns"],
                    check_cells)
        extra = "" if main_group else " (extra)"
        pairs = [(a, d) for a, d, _ in POOL_PAIRS]
        best = fastest_of(values, ["awaitkit", "awaitkit_no_recycle"])
        fastest = fastest_of(values, POOL_PEERS)
        if best and fastest and (best, fastest) not in pairs:
            pairs.append((best, fastest))
        for a, d in pairs:
            va, vd = values.get(a), values.get(d)
            if not va or not vd:
                continue
            r = va / vd
            ok = lambda limit: mark(r <= limit) if main_group else f"({mark(r <= limit)})"
            verdicts.append([
                f"`{group}`{extra}", label[a], fmt_ns(va), label[d], fmt_ns(vd),
                f"**{r:.2f}**", ok(POOL_BAR), ok(POOL_GOAL),
            ])

    # Every measured group is in the verdict (even with no pair measured).
    verdict_section(w, verdicts, header=[
        "group", "awaitkit", "ns", "deadpool", "ns", "ratio", f"bar ≤ {POOL_BAR}", f"goal ≤ {POOL_GOAL}",
    ], intro=[
        f"Bar ≤ {POOL_BAR}, goal ≤ {POOL_GOAL}, each awaitkit configuration against the deadpool",
        "variant that does the same work (with a recycle step: deadpool managed; without one:",
        "deadpool unmanaged), and awaitkit's faster configuration against the faster deadpool",
        "variant of the same run. Only `pool_get_return` is a BENCH.md bar; the multithread rows",
        "are extra, for information.",
    ])
    w("Pool notes:")
    w("")
    w("- Most of each get is the runtime, not the pool: two task switches per get (the yield,")
    w("  and the wake-up of the waiter the return lets through). Differences between the pools")
    w("  are a fraction of the absolute time, so compare ratios within one run and rerun before")
    w("  trusting a ratio near the bar.")
    w("- deadpool managed reads the clock on each recycle (its `Metrics`); the unmanaged pool")
    w("  has no manager at all (no recycle step), the floor for a pool on tokio's semaphore.")
    return lines


# Batch group (benches/batch.rs): one function per crate, N = 10 000 items, limit 64.
BATCH_MARKER = "awaitkit-bench-run-batch.txt"
BATCH_GROUP = "batch"
BATCH_N = 10_000
BATCH_LIMIT = 64
# (criterion function id, label, ordered output?)
BATCH_COLUMNS = [
    ("awaitkit", "awaitkit `process_batch(items, 64, f)`", True),
    ("futures_buffered", "futures `buffered(64)` + collect", True),
    ("fb_buffered_ordered", "futures-buffered `buffered_ordered(64)` + collect", True),
    ("futures_buffer_unordered", "futures `buffer_unordered(64)` + collect (unordered, reference)", False),
    ("fb_buffered_unordered", "futures-buffered `buffered_unordered(64)` + collect (unordered, extra reference)", False),
]
# The bar and the goal compare against the fastest of these (ordered peers only).
BATCH_ORDERED_PEERS = ["futures_buffered", "fb_buffered_ordered"]
BATCH_BAR = 1.05
BATCH_GOAL = 0.8


def batch_section(cdir, include_stale):
    """Markdown lines for the batch group; empty if the batch bench has not run."""
    run = read_marker(cdir, BATCH_MARKER, include_stale)
    if run is None:
        return []
    medians = load_medians(cdir, BATCH_GROUP, [f for f, _, _ in BATCH_COLUMNS], run[2])
    per_item = {f: per[BATCH_N] / BATCH_N for f, per in medians.items() if BATCH_N in per}
    if not per_item:
        return []
    checks = load_checks(cdir, "batch_checks.csv", group=BATCH_GROUP)
    label = {f: l for f, l, _ in BATCH_COLUMNS}
    fastest = fastest_of(per_item, BATCH_ORDERED_PEERS)
    ref = per_item.get(fastest)
    ak = per_item.get("awaitkit")

    lines = []
    w = lines.append
    section_header(w, "Batch", [
        "`process_batch` against the stream adaptors that run a function over many items with a",
        "concurrency limit (`benches/batch.rs`; workload and bar: `BENCH.md`). Every crate gets the",
        f"items `0..{fmt_n(BATCH_N)}`, limit {BATCH_LIMIT}, and the same function: `f(i)` is a child that wakes its own",
        "waker and returns `Pending` once, then `Ready(i)`. Same minimal single-threaded driver as the",
        "combinator groups (top-level wake = one relaxed store; the future is re-polled only when that",
        "flag was set). Building the children (as each crate pulls its items), driving the batch and",
        "dropping the output `Vec` are all timed.",
    ], "batch", run)
    w("")
    w(f"Times are criterion medians in ns per item (ns per iteration / {fmt_n(BATCH_N)}). **ratio** = time /")
    w("fastest **ordered** peer (`buffered`, `buffered_ordered`); the unordered adaptors are shown for")
    w("reference only. Before the timed runs an untimed check runs each function once with")
    w("instrumented children: outputs exactly `0..N` in input order (ordered crates) or as a set")
    w(f"(unordered ones), at most {BATCH_LIMIT} children alive at once (a gauge: +1 when a child is built, −1")
    w("when it is dropped; *most alive* is its maximum), every child dropped, and child polls / N.")
    w("")
    w(f"## `{BATCH_GROUP}`")
    w("")
    rows = []
    for fid, name, ordered in BATCH_COLUMNS:
        v = per_item.get(fid)
        if v is None:
            continue
        row = checks.get(fid, {})
        r = v / ref if ref else None
        if fid == "awaitkit":
            cell = ratio_cell(r, BATCH_BAR)
        elif r is None:
            cell = "—"
        else:
            cell = f"{r:.2f}" + (" (fastest ordered peer)" if fid == fastest else "")
        try:
            polls = f"{float(row['polls_per_n']):.2f}"
        except (KeyError, TypeError, ValueError):
            polls = "?"
        order = row.get("order")
        rows.append([
            name,
            fmt_ns(v),
            cell,
            polls,
            row.get("max_alive", "?"),
            {"input": "input order ✅", "set": "set of `0..N` ✅ (unordered)"}.get(order, "?"),
        ])
    table(w, ["crate", "ns per item", f"ratio (bar ≤ {BATCH_BAR})", "polls/N", "most alive", "output check"], rows)
    w("")

    r = ratio(ak, ref)
    against = f"awaitkit / {label[fastest]} ({fmt_ns(ref)} ns)" if fastest else "awaitkit / fastest ordered peer"
    verdicts = [
        ["`batch` bar", against, bold_ratio(r), f"≤ {BATCH_BAR}", holds(r, BATCH_BAR)],
        ["`batch` goal", against, bold_ratio(r), f"≤ {BATCH_GOAL}", holds(r, BATCH_GOAL)],
    ]
    ak_row = checks.get("awaitkit", {})
    try:
        p = float(ak_row["polls_per_n"])
        verdicts.append(["child polls", "awaitkit polls / N", f"{p:.2f}", "= 2.00", mark(round(p, 2) == 2.0)])
    except (KeyError, TypeError, ValueError):
        verdicts.append(["child polls", "awaitkit polls / N", "?", "= 2.00", "—"])
    try:
        m = int(ak_row["max_alive"])
        verdicts.append(["concurrency limit", "awaitkit most children alive", f"{m}", f"≤ {BATCH_LIMIT}",
                         mark(m <= BATCH_LIMIT)])
    except (KeyError, TypeError, ValueError):
        verdicts.append(["concurrency limit", "awaitkit most children alive", "?", f"≤ {BATCH_LIMIT}", "—"])
    verdict_section(w, verdicts)
    w("Batch notes:")
    w("")
    w("- futures' `buffered` / `buffer_unordered` run on `FuturesOrdered` / `FuturesUnordered`: one")
    w("  heap-allocated task (an `Arc`) per child. futures-buffered's adaptors use a bounded slab of")
    w(f"  {BATCH_LIMIT} slots allocated once.")
    w("- futures' `collect` starts from an empty `Vec` and grows it by pushing (it ignores the")
    w("  stream's size hint); awaitkit reserves its output up front from the items' exact size hint.")
    return lines


# Watch groups (benches/watch.rs).
WATCH_MARKER = "awaitkit-bench-run-watch.txt"
WATCH_P = 1_000
WATCH_N = 1_000
WATCH_COLUMNS = [
    ("bare", "the bare future"),
    ("watch", "`awaitkit::watch(fut)`"),
    ("report_child", "`report.watch(\"child\", fut)` on a fresh `Report`"),
    ("naive_instant", "reference: `Instant::now()` around each poll"),
]
WATCH_GATHER_COLUMNS = [
    ("gather_bare", "`gather(children)`"),
    ("gather_report", "`gather(report.watch_each(children))`"),
]
# Overhead per poll (watch − bare), ns.
WATCH_BAR_NS = 30.0


def watch_section(cdir, include_stale):
    """Markdown lines for the watch groups; empty if the watch bench has not run."""
    run = read_marker(cdir, WATCH_MARKER, include_stale)
    if run is None:
        return []
    def per_unit(group, columns, n):
        medians = load_medians(cdir, group, [f for f, _ in columns], run[2])
        return {(group, f): per[n] / n for f, per in medians.items() if n in per}

    per_poll = per_unit("watch_per_poll", WATCH_COLUMNS, WATCH_P)
    per_child = per_unit("watch_gather", WATCH_GATHER_COLUMNS, WATCH_N)
    if not per_poll:
        return []
    checks = load_checks(cdir, "watch_checks.csv")
    lines = []
    w = lines.append
    section_header(w, "Watch", [
        "What `awaitkit::watch` costs per poll, against the bare future in the same run",
        f"(`benches/watch.rs`). `watch_per_poll`: one future that returns `Pending` {fmt_n(WATCH_P - 1)} times",
        f"and then `Ready`, polled {fmt_n(WATCH_P)} times in a loop with a no-op waker; nothing else is timed.",
        f"`watch_gather`: `gather` over {fmt_n(WATCH_N)} children that each wake themselves and return",
        "`Pending` once (two polls each), bare and with every child watched by one `Report`,",
        "on the combinator groups' minimal driver.",
    ], "watch", run)
    w("")
    w(f"Times are criterion medians per poll (ns per iteration / {fmt_n(WATCH_P)}) and per child")
    w(f"(ns per iteration / {fmt_n(WATCH_N)}). **overhead** = time − bare. The untimed check before each")
    w("function runs it once and checks its output and poll count (and, for a report, that every")
    w("child is recorded as completed with the right polls).")
    w("")
    w("## `watch_per_poll`")
    w("")
    bare = per_poll.get(("watch_per_poll", "bare"))
    rows = []
    for fid, label in WATCH_COLUMNS:
        v = per_poll.get(("watch_per_poll", fid))
        if v is None:
            continue
        row = checks.get(("watch_per_poll", fid), {})
        over = f"{v - bare:.1f}" if bare is not None and fid != "bare" else "—"
        rows.append([label, fmt_ns_fine(v), over, row.get("polls", "?"), row.get("slow_polls", "?")])
    table(w, ["wrapper", "ns per poll", "overhead, ns per poll", "polls counted", "slow polls"], rows)
    w("")
    gather_rows = []
    gb = per_child.get(("watch_gather", "gather_bare"))
    for fid, label in WATCH_GATHER_COLUMNS:
        v = per_child.get(("watch_gather", fid))
        if v is None:
            continue
        row = checks.get(("watch_gather", fid), {})
        over = f"{v - gb:.1f}" if gb is not None and fid != "gather_bare" else "—"
        gather_rows.append([label, fmt_ns(v), over, row.get("polls", "?")])
    if gather_rows:
        w("## `watch_gather`")
        w("")
        table(w, ["combinator", "ns per child", "overhead, ns per child", "child polls"], gather_rows)
        w("")
    wv = per_poll.get(("watch_per_poll", "watch"))
    over = wv - bare if wv is not None and bare is not None else None
    verdict_section(w, [[
        "`watch` overhead",
        "`watch(fut)` − bare, ns per poll (default clock)",
        f"**{over:.1f}**" if over is not None else "—",
        f"< {WATCH_BAR_NS:.0f}",
        mark(over < WATCH_BAR_NS) if over is not None else "—",
    ]], intro=["The target is the issue's: under 30 ns per poll with the default clock source."])
    w("Watch notes:")
    w("")
    w("- The default clock is the CPU's invariant time-stamp counter (`rdtsc`, about 7 ns a read")
    w("  here), read twice per poll; ticks become time only when a report or a slow poll is read.")
    w("  Where there is no invariant counter the clock is `Instant`: a little over the")
    w("  `naive_instant` row (`AWAITKIT_WATCH_CLOCK=instant cargo bench -p awaitkit-benches --bench watch` measures it;")
    w("  about 45 ns per poll on this machine).")
    w("- The bare loop is the floor: a poll is a decrement through `black_box` and a compare.")
    w("- A `Report` child also pays a lock to register, one at its first poll (so a running child")
    w("  shows its wall time so far) and one to deliver its outcome: the `watch_gather` overhead,")
    w("  per child, with two polls each.")
    return lines


REALISTIC_MARKER = "awaitkit-bench-run-realistic.txt"

# (realistic group, existing group, per-N?, [(function, label)], reference function);
# the rows measured inside a tokio task have no existing group: "tokio: <where>".
REALISTIC_GROUPS = [
    ("realistic_semaphore_uncontended", "semaphore_uncontended", False, [
        ("awaitkit", "awaitkit"), ("tokio", "tokio"), ("async_lock", "async-lock"),
        ("futures_intrusive_fair", "futures-intrusive fair"),
    ], "futures_intrusive_fair"),
    ("realistic_gather_shuffled", "gather_shuffled", True, [
        ("awaitkit", "awaitkit"), ("fb_join_all", "futures-buffered `join_all`"),
        ("futures_join_all", "futures `join_all`"),
    ], "fb_join_all"),
    ("realistic_as_completed_shuffled", "as_completed_shuffled", True, [
        ("awaitkit", "awaitkit"), ("fb_FuturesUnordered", "futures-buffered `FuturesUnordered`"),
        ("fb_FuturesUnorderedBounded", "futures-buffered `FuturesUnorderedBounded`"),
        ("futures_FuturesUnordered", "futures `FuturesUnordered`"),
    ], "fb_FuturesUnorderedBounded"),
    ("realistic_rate_limiter_check", "rate_limiter_check", False, [
        ("awaitkit_strict", "awaitkit strict"), ("awaitkit_gcra", "awaitkit GCRA"),
        ("awaitkit_strict_futures_timer", "awaitkit strict on `FuturesTimer` (the default without the `tokio` feature)"),
        ("awaitkit_gcra_futures_timer", "awaitkit GCRA on `FuturesTimer` (the default without the `tokio` feature)"),
        ("awaitkit_strict_quanta", "awaitkit strict on `QuantaTimer`"),
        ("awaitkit_gcra_quanta", "awaitkit GCRA on `QuantaTimer`"),
        ("governor", "governor (default clock)"), ("governor_std", "governor on `MonotonicClock`"),
    ], "governor"),
    ("realistic_rate_limiter_check", "tokio: a multi-thread runtime (2 workers)", False, [
        ("tokio_mt_task_awaitkit_strict", "awaitkit strict"),
        ("tokio_mt_task_awaitkit_gcra", "awaitkit GCRA"),
        ("tokio_mt_task_awaitkit_strict_futures_timer", "awaitkit strict on `FuturesTimer`"),
        ("tokio_mt_task_awaitkit_gcra_futures_timer", "awaitkit GCRA on `FuturesTimer`"),
        ("tokio_mt_task_governor", "governor (default clock)"),
    ], "tokio_mt_task_governor"),
    ("realistic_rate_limiter_check", "tokio: a current-thread runtime", False, [
        ("tokio_ct_task_awaitkit_strict", "awaitkit strict"),
        ("tokio_ct_task_awaitkit_gcra", "awaitkit GCRA"),
        ("tokio_ct_task_awaitkit_strict_futures_timer", "awaitkit strict on `FuturesTimer`"),
        ("tokio_ct_task_awaitkit_gcra_futures_timer", "awaitkit GCRA on `FuturesTimer`"),
        ("tokio_ct_task_governor", "governor (default clock)"),
    ], "tokio_ct_task_governor"),
]

# The realistic variants' bars (issue 17): (group, awaitkit function,
# [reference functions: the fastest of them], per-N?, bar, label).
REALISTIC_BARS = [
    ("realistic_semaphore_uncontended", "awaitkit", ["tokio", "async_lock", "futures_intrusive_fair"],
     False, 1.0, "`semaphore_uncontended` / the fastest peer"),
    ("realistic_gather_shuffled", "awaitkit", ["fb_join_all"], True, 1.05,
     "`gather_shuffled` / futures-buffered `join_all` (the fastest peer that polls only woken children)"),
    ("realistic_as_completed_shuffled", "awaitkit",
     ["fb_FuturesUnordered", "fb_FuturesUnorderedBounded", "futures_FuturesUnordered"], True, 1.05,
     "`as_completed_shuffled` / the fastest peer"),
    ("realistic_rate_limiter_check", "awaitkit_strict", ["governor"], False, 1.5,
     "`rate_limiter_check`, strict window on the default timer / governor's default"),
    ("realistic_rate_limiter_check", "awaitkit_gcra", ["governor"], False, 1.0,
     "`rate_limiter_check`, GCRA on the default timer / governor's default"),
    ("realistic_rate_limiter_check", "awaitkit_strict_futures_timer", ["governor"], False, 1.5,
     "`rate_limiter_check`, strict window on the default timer without the `tokio` feature (`FuturesTimer`) / governor's default"),
    ("realistic_rate_limiter_check", "awaitkit_gcra_futures_timer", ["governor"], False, 1.0,
     "`rate_limiter_check`, GCRA on the default timer without the `tokio` feature (`FuturesTimer`) / governor's default"),
]


def realistic_section(cdir, include_stale):
    """Markdown lines for the realistic variants (`benches/realistic.rs`) beside
    the existing groups' results in the same criterion directory; empty if the
    realistic bench has not run."""
    run = read_marker(cdir, REALISTIC_MARKER, include_stale)
    if run is None:
        return []
    lines = []
    w = lines.append
    section_header(w, "Realistic variants (a user's harness)", [
        "The groups an independent harness disagreed with, as users write them (`benches/realistic.rs`):",
        "every operation awaited in an `async` block under `futures::executor::block_on` (one",
        "`block_on` per criterion batch), leaves that clone the waker on every park and are woken",
        "by value, a firer joined with the combinator (`futures::join!`) that wakes one leaf per",
        "round. Beside each: the existing group's median from the same criterion directory (its",
        "own run; the minimal driver). Per operation (acquire + release, check) or per leaf.",
    ], "realistic", run)
    w("")
    for rgroup, group, per_n, functions, ref in REALISTIC_GROUPS:
        fids = [f for f, _ in functions]
        if per_n:
            real = load_medians(cdir, rgroup, fids, run[2])
            base = load_medians(cdir, group, fids, None)
            sizes = sorted({n for per in real.values() for n in per})
            keys = [(n, lambda m, f, n=n: m.get(f, {}).get(n) / n if m.get(f, {}).get(n) else None) for n in sizes]
        else:
            real = load_flat_medians(cdir, rgroup, fids, run[2])
            base = load_flat_medians(cdir, group, fids, None) if not group.startswith("tokio: ") else {}
            keys = [(None, lambda m, f: m.get(f))] if real else []
        if not keys:
            continue
        if group.startswith("tokio: "):
            w(f"`{rgroup}` inside a task of {group.removeprefix('tokio: ')}, as a tokio service checks:")
        else:
            w(f"## `{rgroup}` (existing: `{group}`)")
        w("")
        header = (["N"] if per_n else []) + ["harness"] + [label for _, label in functions]
        header += [f"awaitkit / {dict(functions)[ref]}"]
        rows = []
        for n, get in keys:
            harnesses = (("realistic", real), ("existing", base)) if not group.startswith("tokio: ") else (("in a tokio task", real),)
            for name, medians in harnesses:
                values = {f: get(medians, f) for f in fids}
                ak = values.get(fids[0])
                r = ratio(ak, values.get(ref))
                rows.append(([fmt_n(n)] if per_n else []) + [name]
                            + [fmt_ns(values[f]) for f in fids]
                            + [f"**{r:.2f}**" if r else "—"])
        table(w, header, rows)
        w("")
        if group == "tokio: a current-thread runtime":
            w("With the `tokio` feature the default timer's clock inside a current-thread runtime is")
            w("tokio's (it may be paused in a test), so a check there reads tokio's clock twice (a")
            w("paused clock reads the same instant twice) before it reads the time-stamp counter on")
            w("real time; in a multi-thread runtime (never paused) it reads the counter only, as a")
            w("limiter on `FuturesTimer` does everywhere.")
            w("")
    verdict = []
    for rgroup, fid, refs, per_n, bar, label in REALISTIC_BARS:
        if per_n:
            medians = load_medians(cdir, rgroup, [fid] + refs, run[2])
            sizes = sorted(medians.get(fid, {}))
            cases = [(n, medians.get(fid, {}).get(n),
                      [medians.get(r, {}).get(n) for r in refs]) for n in sizes]
        else:
            medians = load_flat_medians(cdir, rgroup, [fid] + refs, run[2])
            cases = [(None, medians.get(fid), [medians.get(r) for r in refs])]
        for n, ak, others in cases:
            others = [v for v in others if v is not None]
            if ak is None or not others:
                continue
            r = ak / min(others)
            verdict.append([label + (f", N = {fmt_n(n)}" if n else ""), f"**{r:.2f}**",
                            f"≤ {bar}", mark(r <= bar)])
    if verdict:
        verdict_section(w, verdict, header=["bar (realistic harness)", "value", "limit", "holds"])
    return lines



FANOUT_MARKER = "awaitkit-fanout-run.txt"
FANOUT_COLUMNS = [
    ("awaitkit_gather", "awaitkit `gather`"),
    ("awaitkit_gather_unconstrained", "awaitkit `gather`, `unconstrained` (reference)"),
    ("fb_join_all", "futures-buffered `join_all`"),
    ("futures_join_all", "futures `join_all`"),
    ("tokio_JoinSet", "tokio `JoinSet`"),
    ("spawn_join", "spawn + join"),
]


def fanout_section(cdir, include_stale):
    """Markdown lines for the tokio fan-out macro bench (`benches/fanout.rs`,
    its `fanout.csv`: mean wall and CPU time per run, polls/N); empty if it has
    not run."""
    run = read_marker(cdir, FANOUT_MARKER, include_stale)
    if run is None:
        return []
    rows_by_key = {}
    for row in csv_rows(cdir, "fanout.csv"):
        rows_by_key[(row["group"], row["function"], int(row["n"]))] = row
    if not rows_by_key:
        return []
    lines = []
    w = lines.append
    section_header(w, "Fan-out on tokio (the cooperative budget)", [
        "N children gathered inside one task of a tokio multi-thread runtime with 2 workers",
        "(`benches/fanout.rs`): `io` = each child awaits a tokio oneshot fired from another",
        "thread; `timers` = a `tokio::time::sleep` of 0–1 ms; `cpu`, `cpu10`, `cpu100` = about",
        "1, 10, 100 µs of work, finished on the first poll (where spawning on the 2 workers",
        "pays). The spawning peers (`JoinSet`, spawn + join) run every child as a task of its",
        "own. Mean wall time and process CPU time per run in µs (CPU: user + system of every",
        "thread, 10 ms ticks averaged over the timed runs), child polls / N from one untimed",
        "counting run. Bars (issue 17, `io` and `timers` at N = 1 000 and 10 000): awaitkit ≤ 1.0 ×",
        "futures-buffered's `join_all` and ≤ 1.0 × `JoinSet`, polls/N ≤ 3.",
    ], "fanout", run)
    w("")
    groups = sorted({g for g, _, _ in rows_by_key}, key=lambda g: ["fanout_io", "fanout_timers", "fanout_cpu", "fanout_cpu10", "fanout_cpu100"].index(g) if g in ["fanout_io", "fanout_timers", "fanout_cpu", "fanout_cpu10", "fanout_cpu100"] else 99)
    header = ["variant", "N"] + [label for _, label in FANOUT_COLUMNS]
    header += ["awaitkit / fb `join_all` (bar ≤ 1.0)", "awaitkit / `JoinSet` (bar ≤ 1.0)", "awaitkit polls/N (bar ≤ 3)"]
    rows = []
    for group in groups:
        sizes = sorted({n for g, _, n in rows_by_key if g == group})
        for n in sizes:
            def val(fid, col):
                row = rows_by_key.get((group, fid, n))
                try:
                    return float(row[col]) if row else None
                except ValueError:
                    return None
            cells = []
            for fid, _ in FANOUT_COLUMNS:
                wall, cpu, polls = val(fid, "wall_us"), val(fid, "cpu_us"), val(fid, "polls_per_child")
                if wall is None:
                    cells.append("—")
                    continue
                cell = f"{wall:.0f}"
                if cpu is not None:
                    cell += f" (cpu {cpu:.0f})"
                if polls is not None:
                    cell += f", {polls:.2f}"
                cells.append(cell)
            ak = val("awaitkit_gather", "wall_us")
            barred = group in ("fanout_io", "fanout_timers")
            r1 = ratio(ak, val("fb_join_all", "wall_us"))
            r2 = ratio(ak, val("tokio_JoinSet", "wall_us"))
            p = val("awaitkit_gather", "polls_per_child")
            def cell(r, limit):
                if r is None:
                    return "—"
                return f"**{r:.2f}** {mark(r <= limit)}" if barred else f"{r:.2f}"
            rows.append([group.removeprefix("fanout_"), fmt_n(n)] + cells + [
                cell(r1, 1.0), cell(r2, 1.0),
                (f"{p:.2f} {mark(p <= 3.0)}" if barred else f"{p:.2f}") if p is not None else "—",
            ])
    w("Each cell: wall µs (cpu µs), polls/N.")
    w("")
    table(w, header, rows)
    w("")
    w("- `unconstrained` runs the same `gather` inside `tokio::task::coop::unconstrained` (no")
    w("  budget): the floor the early stop aims at. Timers at N = 1 000 are bounded by the 1 ms")
    w("  sleeps themselves for every peer.")
    w("- CPU-bound children finish on their first poll, so no combinator polls them more than")
    w("  once; spawning runs them on both workers, which pays only for heavier children (compare\n  `cpu10` and `cpu100`).")
    return lines

# Keyed rate limiter (benches/keyed.rs): issue 18's bars against governor's keyed limiter.
KEYED_MARKER = "awaitkit-bench-run-keyed.txt"
KEYED_COLUMNS = [
    ("awaitkit_window", "awaitkit strict window `new(10, 60 s)`"),
    ("awaitkit_gcra", "awaitkit GCRA `gcra(10, 60 s, 10)`"),
    ("governor", "governor keyed `per_minute(10)`"),
]
KEYED_GROUPS = [
    ("keyed_new_key", "a check of a key never seen before (a scan or a botnet)"),
    ("keyed_hot_key", "a check of one of 64 hot keys, quota never exhausted"),
    ("keyed_two_threads", "two threads, each checking its own 64 hot keys (wall time over one thread's checks)"),
]
KEYED_TIME_BAR = 1.2  # × governor, new and hot keys
KEYED_GCRA_MEMORY_BAR = 1.5  # × governor's bytes per key
KEYED_WINDOW_MEMORY_BAR = 2.0  # × governor's bytes per key, + 8 bytes per logged stamp


def keyed_section(cdir, include_stale):
    """Markdown lines for the keyed limiter groups and its memory CSV; empty if
    the keyed bench has not run."""
    run = read_marker(cdir, KEYED_MARKER, include_stale)
    if run is None:
        return []
    fids = [f for f, _ in KEYED_COLUMNS]
    per_check = load_per_unit(cdir, [(g, 1) for g, _ in KEYED_GROUPS], fids, run[2])
    memory = load_checks(cdir, "keyed_memory.csv", "keyed_memory")
    if not per_check and not memory:
        return []
    label = dict(KEYED_COLUMNS)
    lines = []
    w = lines.append
    section_header(w, "Keyed rate limiter", [
        "`KeyedRateLimiter` against governor's keyed limiter (`governor::RateLimiter::keyed`, a",
        "`DashMap` of GCRA arrival times) with `u64` keys (`benches/keyed.rs`). Criterion times are",
        "medians per check; every check in the timed loops is granted. Memory: in a child process",
        "per limiter, the growth of the resident set after 10⁶ distinct keys checked once each",
        "within one period, and the mean time of those checks (one timed pass, no criterion).",
        f"Bars (issue 18): time per check ≤ {KEYED_TIME_BAR} × governor for new and hot keys (goal ≤ 1.0);",
        f"memory per key ≤ {KEYED_GCRA_MEMORY_BAR} × governor for GCRA and ≤ {KEYED_WINDOW_MEMORY_BAR} × governor + 8 bytes",
        "per logged stamp for the strict window (goal ≤ governor).",
    ], "keyed", run)
    w("")
    verdicts = []
    if per_check:
        rows = []
        for group, desc in KEYED_GROUPS:
            values = per_check.get(group)
            if not values:
                continue
            gov = values.get("governor")
            cells = [f"`{group}`"]
            for fid in fids:
                v = values.get(fid)
                cells.append(fmt_ns(v) + (f" ({v / gov:.2f})" if v and gov and fid != "governor" else ""))
            rows.append(cells)
            if group != "keyed_two_threads":
                for fid in ("awaitkit_window", "awaitkit_gcra"):
                    r = ratio(values.get(fid), gov)
                    verdicts.append([f"`{group}` {label[fid]}", "ns per check / governor",
                                     bold_ratio(r), f"≤ {KEYED_TIME_BAR}", holds(r, KEYED_TIME_BAR)])
        w("ns per check (/ governor):")
        w("")
        table(w, ["group"] + [label[f] for f in fids], rows)
        w("")
        for group, desc in KEYED_GROUPS:
            w(f"- `{group}`: {desc}.")
        w("")
    if memory:
        gov = memory.get("governor")
        gov_bytes = float(gov["bytes_per_key"]) if gov else None
        rows = []
        for fid, row in memory.items():
            b, t = float(row["bytes_per_key"]), float(row["ns_per_new_key"])
            # `awaitkit_window_<n>`: every key checked n times (n stamps).
            stamps = re.search(r"_(\d+)(?:stamps?)?$", fid)
            stamps = int(stamps.group(1)) if stamps else (1 if fid.startswith("awaitkit_window") else 0)
            name = label.get(fid, f"`{fid}`")
            r = ratio(b, gov_bytes)
            rows.append([name, f"{b:.1f}", f"{t:.0f}", f"{r:.2f}" if r and fid != "governor" else "—"])
            if fid == "governor" or not gov_bytes:
                continue
            if fid in ("awaitkit_window", "awaitkit_gcra") and gov:
                # The issue's own scenario: the mean new-key check over 10⁶
                # distinct keys (the table outgrows the caches), beside the
                # criterion group's shorter runs.
                rt = ratio(t, float(gov["ns_per_new_key"]))
                verdicts.append([f"new-key check over 10⁶ distinct keys (one pass), {name}", "ns per check / governor",
                                 bold_ratio(rt), f"≤ {KEYED_TIME_BAR}", holds(rt, KEYED_TIME_BAR)])
            if fid.startswith("awaitkit_gcra"):
                limit = KEYED_GCRA_MEMORY_BAR * gov_bytes
                verdicts.append([name, "bytes per key", f"**{b:.1f}**",
                                 f"≤ {KEYED_GCRA_MEMORY_BAR} × {gov_bytes:.1f} = {limit:.1f}", mark(b <= limit)])
            elif fid.startswith("awaitkit_window"):
                limit = KEYED_WINDOW_MEMORY_BAR * gov_bytes + 8 * stamps
                verdicts.append([f"{name} ({stamps} stamp{'s' if stamps != 1 else ''} per key)", "bytes per key",
                                 f"**{b:.1f}**", f"≤ {KEYED_WINDOW_MEMORY_BAR} × {gov_bytes:.1f} + 8 × {stamps} = {limit:.1f}",
                                 mark(b <= limit)])
        w("Memory for 10⁶ distinct keys:")
        w("")
        table(w, ["limiter", "bytes per key", "ns per new-key check (one pass)", "bytes / governor"], rows)
        w("")
    verdict_section(w, verdicts)
    return lines


REDIS_MARKER = "awaitkit-bench-run-redis.txt"
REDIS_FUNCTIONS = [
    ("ping", "bare `PING` (the floor)"),
    ("evalsha_time", "`EVALSHA` of `return redis.call('TIME')` (the script floor)"),
    ("window_check", "`redis::RateLimiter` window, granted `try_acquire`"),
    ("gcra_check", "`redis::RateLimiter` GCRA, granted `try_acquire`"),
    ("sem_acquire_release", "`redis::Semaphore` uncontended `acquire` + `release` (two script calls)"),
    ("local_window", "local `RateLimiter` window (for scale)"),
    ("local_gcra", "local `RateLimiter` GCRA (for scale)"),
]
# Script calls per operation of what the bar applies to (issue 19: a
# granted check ≤ 1.3 × PING per script call, goal ≤ 1.1 ×).
REDIS_SCRIPT_CALLS = {"window_check": 1, "gcra_check": 1, "sem_acquire_release": 2}
REDIS_BAR = 1.3
REDIS_GOAL = 1.1
# The interleaved measurement's placements (`redis_checks.csv`), in order;
# a CSV without the placement column is one unpinned run.
REDIS_PLACEMENTS = [
    ("same_cpu", "same CPU"),
    ("separate_cpus", "separate CPUs"),
    ("unpinned", "unpinned"),
]


def redis_placement_cpus(row):
    """Where a placement ran, from a row of `redis_checks.csv`."""
    client, server = row.get("client_cpu") or "", row.get("server_cpu") or ""
    if not client or not server:
        return "not pinned"
    if client == server:
        return f"client and server on CPU {server}"
    return f"client on CPU {client}, server on CPU {server}"


def redis_section(cdir, include_stale):
    """Markdown lines for the Redis rate limiter bench (`benches/redis.rs`: the
    criterion medians of `redis_check` and its interleaved `redis_checks.csv`,
    one set of rows per CPU placement, then its process sweep,
    `redis_grants.csv` and `redis_grants_limited.csv`); empty if it has not
    run."""
    run = read_marker(cdir, REDIS_MARKER, include_stale)
    if run is None:
        return []
    _, _, not_before = run
    criterion = {}
    for fid, _ in REDIS_FUNCTIONS:
        m = read_median(cdir / "redis_check" / fid / "new" / "estimates.json", not_before)
        if m is not None:
            criterion[fid] = m
    # {placement: {function: row}}, placements in REDIS_PLACEMENTS order.
    inter = {}
    checks_csv = cdir / "redis_checks.csv"
    if checks_csv.is_file() and (not_before is None or checks_csv.stat().st_mtime >= not_before):
        for row in csv_rows(cdir, "redis_checks.csv"):
            inter.setdefault(row.get("placement") or "unpinned", {})[row["function"]] = row
    order = [p for p, _ in REDIS_PLACEMENTS]
    placements = sorted(inter, key=lambda p: order.index(p) if p in order else len(order))
    label = dict(REDIS_PLACEMENTS)
    median = lambda p, fid: float(inter[p][fid]["median_ns"]) if fid in inter[p] else None
    ping = {p: median(p, "ping") for p in placements}
    lines = []
    w = lines.append
    section_header(w, "Redis rate limiter", [
        "`awaitkit::redis::RateLimiter` against a loopback `redis-server` started by the bench",
        "(`benches/redis.rs`), one awaited operation at a time on a tokio current-thread runtime",
        "and one multiplexed connection, beside its floors: a bare `PING` round trip and an",
        "`EVALSHA` of a script that only reads `TIME`. Bar (issue 19): a granted check ≤ 1.3 ×",
        "`PING` per script call, goal ≤ 1.1 ×. The interleaved columns come from rounds in which",
        "every function runs a batch of operations in turn (median per operation over the",
        "rounds), so load on the machine hits every function alike.",
    ], "redis", run)
    w("")
    evalsha = [f"{median(p, 'evalsha_time') / ping[p]:.2f} × `PING` ({label.get(p, p)})"
               for p in placements if median(p, "evalsha_time") and ping[p]]
    if evalsha:
        for line in textwrap.wrap(
            "An `EVALSHA` that only reads `TIME` costs " + " and ".join(evalsha) + ": no check "
            "that runs a script reading Redis's clock can cost less, and the table shows how far each "
            "check is from that script floor (GCRA: a `GET` and a `SET` more; window: "
            "`ZREMRANGEBYSCORE`, `ZCARD`, `ZRANGE`, `ZADD`, `PEXPIRE` more).", width=92):
            w(line)
        w("")
    if placements:
        any_row = next(iter(inter[placements[0]].values()))
        rounds = any_row.get("rounds")
        sizes = ", ".join(f"{label.get(p, p)}: {int(next(iter(inter[p].values())).get('ops_per_round') or 2000):,}"
                          .replace(",", " ") for p in placements)
        text = ("Where the client and Redis run decides the ratio on a small machine, so the interleaved "
                "measurement runs in each placement the machine allows, pinned with `sched_setaffinity` "
                "on Linux, every round taking each placement in turn"
                + (f" ({rounds} rounds; operations per function and round: {sizes})" if rounds else "")
                + ". ")
        descriptions = {
            "same_cpu": "**Same CPU** (the bench's client thread and every `redis-server` thread on one "
                        "CPU): a round trip is CPU work only, no other CPU wakes up, so a script's own "
                        "cost weighs most against it — the worst case for the ratio.",
            "separate_cpus": "**Separate CPUs** (server on one CPU, client on another): the round trip "
                             "includes waking the other CPU, closer to a network hop.",
            "unpinned": "**Unpinned**: wherever the scheduler put the client and the server (no "
                        "`sched_setaffinity` there, or a CSV from before the bench pinned), so the ratio "
                        "depends on where they landed.",
        }
        text += " ".join(descriptions[p] for p in placements if p in descriptions)
        if placements == ["same_cpu"]:
            text += " This machine let the bench use one CPU only, so the same-CPU placement is all there is."
        text += (" A real deployment's round trip, to Redis on another machine, is longer still, so a "
                 "script's cost (Redis's CPU time, which the network does not lengthen) weighs less there "
                 "than in either placement.")
        over = {p: (median(p, "window_check") - ping[p]) / 1000 for p in ("same_cpu", "separate_cpus")
                if p in inter and median(p, "window_check") and ping[p]}
        if len(over) == 2 and over["separate_cpus"] > 1.2 * over["same_cpu"]:
            text += (f" That cost is not fixed on this machine, though: a window check took "
                     f"{over['same_cpu']:.0f} µs more than `PING` on one CPU and {over['separate_cpus']:.0f} µs "
                     "more on separate CPUs, where the server's CPU idles between requests.")
        text += " The criterion column is not pinned."
        for line in textwrap.wrap(text, width=92):
            w(line)
        w("")
    header = ["function", "criterion median (µs)", "/ PING"]
    for p in placements:
        header += [f"{label.get(p, p)}, interleaved (µs)", f"/ PING (bar ≤ {REDIS_BAR} per script call)"]
    rows = []
    verdicts = []
    ping_c = criterion.get("ping")
    us = lambda v: f"{v / 1000:.2f}" if v is not None else "—"
    for fid, name in REDIS_FUNCTIONS:
        c = criterion.get(fid)
        cells = [name, us(c), f"{c / ping_c:.2f}" if c and ping_c else "—"]
        for p in placements:
            m = median(p, fid)
            r = m / ping[p] if m is not None and ping[p] else None
            calls = REDIS_SCRIPT_CALLS.get(fid)
            if r is None:
                cell = "—"
            elif calls is None:
                cell = f"{r:.2f}"
            else:
                per_call = r / calls
                cell = (f"**{per_call:.2f}** {mark(per_call <= REDIS_BAR)}" if calls == 1
                        else f"{r:.2f} = {calls} × **{per_call:.2f}** {mark(per_call <= REDIS_BAR)}")
                verdicts.append([
                    f"{name}, {label.get(p, p)}",
                    "time / PING" + (f" / {calls} (per script call)" if calls > 1 else ""),
                    f"**{per_call:.2f}** (+{(m / calls - ping[p]) / 1000:.1f} µs per call)",
                    f"≤ {REDIS_BAR} (goal ≤ {REDIS_GOAL})",
                    f"{mark(per_call <= REDIS_BAR)} (goal {mark(per_call <= REDIS_GOAL)})",
                ])
            cells += [us(m), cell]
        rows.append(cells)
    table(w, header, rows)
    w("")
    if placements:
        w("- " + "; ".join(f"{label.get(p, p)}: {redis_placement_cpus(next(iter(inter[p].values())))}"
                           for p in placements) + ".")
        w("")
    if verdicts:
        verdict_section(w, verdicts, intro=[
            "Per placement; \"+µs per call\" is what a script call costs over a bare `PING` there.",
        ])
    lines += redis_grants_lines(cdir, not_before)
    return lines


REDIS_GRANT_COLUMNS = [
    ("window", "`redis::RateLimiter` window"),
    ("gcra", "`redis::RateLimiter` GCRA"),
    ("local_window", "local window (threads)"),
    ("local_gcra", "local GCRA (threads)"),
]
REDIS_LIMITED_QUOTAS = {
    "window": "window, 100 per 100 ms",
    "gcra": "GCRA, 1 000/s, burst 100",
}


def fmt_rate(v):
    """Grants per second, short: 54.2 k, 37.6 M."""
    if v >= 1e6:
        return f"{v / 1e6:.1f} M"
    if v >= 1e3:
        return f"{v / 1e3:.1f} k"
    return f"{v:.0f}"


def redis_grants_lines(cdir, not_before):
    """Markdown lines for the Redis bench's process sweep (`redis_grants.csv`:
    grants per second by processes; `redis_grants_limited.csv`: 16 processes
    on a quota that runs out); empty if neither has rows of this run."""
    fresh = lambda row: not_before is None or int(row["unix_time"]) >= not_before
    sweep = {}
    for row in csv_rows(cdir, "redis_grants.csv"):
        if fresh(row):
            sweep.setdefault(int(row["processes"]), {})[row["function"]] = row
    limited = [row for row in csv_rows(cdir, "redis_grants_limited.csv") if fresh(row)]
    lines = []
    w = lines.append
    if sweep:
        any_row = next(iter(next(iter(sweep.values())).values()))
        w("## Grants per second by processes")
        w("")
        for line in textwrap.wrap(
            "1, 4 and 16 OS processes (the bench binary started again), each with its own multiplexed "
            "connection on a tokio current-thread runtime, check one key of one quota that never runs "
            "out with `try_acquire`, one check at a time per process, from a common start; the local "
            "`RateLimiter` with the same quotas is shared by as many threads of one process instead. "
            f"Every run is repeated in {any_row['rounds']} rounds of {float(any_row['seconds']) * 1000:.0f} ms, "
            "each round taking every run in turn; a cell is the median grants per second of all "
            "processes (threads) together, the range over the rounds in parentheses, and the median "
            "over the rounds of the mean time per check one process (thread) saw. Redis runs one script at a time "
            "on one core, so more processes share its throughput. On this 2-vCPU VM a loopback round "
            "trip between a client and Redis on different, idle vCPUs costs several times one on the "
            "same vCPU, which is what the ranges "
            "of one process show; threads of the local limiter on different vCPUs pay for moving its "
            "state between the cores' caches.", width=92):
            w(line)
        w("")
        rows = []
        for n in sorted(sweep):
            cells = [str(n)]
            for fid, _ in REDIS_GRANT_COLUMNS:
                row = sweep[n].get(fid)
                if row is None:
                    cells.append("—")
                    continue
                us = float(row["us_per_check"])
                us_text = f"{us:.1f} µs" if us >= 1 else f"{us * 1000:.0f} ns"
                cells.append(f"**{fmt_rate(float(row['grants_per_s']))}** "
                             f"({fmt_rate(float(row['min_grants_per_s']))}–{fmt_rate(float(row['max_grants_per_s']))}) · {us_text}")
            rows.append(cells)
        table(w, ["processes (local: threads)"] + [label for _, label in REDIS_GRANT_COLUMNS], rows)
        w("")
    if limited:
        w("## A quota that runs out, shared by processes")
        w("")
        w("The processes loop on `acquire` of one fresh key limited to 1 000/s until the end of the run")
        w("(the acquire still waiting then is dropped). The bench checks every grant's Redis time")
        w("against the quota (window: never more than 100 in any 100 ms; GCRA: grant k no earlier than")
        w("the first plus k − 99 ms) and fails otherwise; \"allowed\" is what the quota admits over the")
        w("span of Redis time the grants cover (a window admits 100 more at the start of every period,")
        w("GCRA its burst of 100 and one per ms).")
        w("")
        rows = []
        for row in limited:
            grants, allowed = int(row["grants"]), int(row["allowed"])
            rows.append([REDIS_LIMITED_QUOTAS.get(row["function"], f"`{row['function']}`"), row["processes"],
                         f"{float(row['seconds']):.1f} s", str(grants), str(allowed),
                         f"{float(row['grants_per_s']):.0f}",
                         f"{row['min_per_process']}–{row['max_per_process']}", mark(grants <= allowed)])
        table(w, ["quota", "processes", "run", "grants", "allowed over their span", "grants/s over the run",
                  "grants per process", "within the quota"], rows)
        w("")
    return lines


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target-dir", help="cargo target dir of the bench run (default: $CARGO_TARGET_DIR or ./target)")
    parser.add_argument("--include-stale", action="store_true", help="keep results older than the last run marker")
    parser.add_argument("--only", choices=["redis"], help="print only this bench's section (to splice into docs/benchmarks.md)")
    parser.add_argument("--source", help="what was measured (default: `git describe --always --dirty` here)")
    args = parser.parse_args()

    cdir = criterion_dir(args)
    if args.only == "redis":
        print("\n".join(redis_section(cdir, args.include_stale)))
        return
    if not cdir.is_dir():
        sys.exit(f"no criterion output in {cdir}: run `cargo bench -p awaitkit-benches --bench combinators` first")
    mode, run_time, not_before = read_marker(cdir, COMBINATORS_MARKER, args.include_stale) or ("unknown", None, None)
    polls = load_polls(cdir)

    date = datetime.datetime.fromtimestamp(run_time) if run_time else datetime.datetime.now()
    lines = []
    w = lines.append
    w("# Benchmarks")
    w("")
    w("<!-- Generated by scripts/bench_table.py from criterion output; do not edit by hand. -->")
    w("")
    w("![awaitkit / reference for every bar (scripts/bench_chart.py)](benchmarks.svg)")
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
    w("AWAITKIT_BENCH_QUICK=1 cargo bench -p awaitkit-benches --bench combinators && python3 scripts/bench_table.py > docs/benchmarks.md")
    w("python3 scripts/bench_chart.py  # docs/benchmarks.svg from docs/benchmarks.md")
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
        if group == "as_completed_yield":
            # After the gather groups, whether or not they ran.
            lines += gather_tuple_section(cdir, not_before, polls)
        medians = load_medians(cdir, group, [fid for fid, _ in functions], not_before)
        sizes = sorted({n for per in medians.values() for n in per})
        if not sizes:
            continue
        group_heading(w, group, desc)
        header = ["N"] + [label for _, label in functions]
        if group == "wait_any":
            header += ["awaitkit / FuturesUnorderedBounded::next (bar ≤ 1.05)", "awaitkit / select_all (bar ≤ 2)", "fastest peer"]
        elif group == "first_ok":
            header += ["awaitkit / select_ok (no bar; for reference)", "first_ok / wait_any (error bookkeeping)"]
        elif group in GATHER_GROUPS:
            header += ["ratio to the fastest peer that polls only woken children (bar ≤ 1.05)",
                       "that peer",
                       f"awaitkit / futures `join_all`, N up to {JOIN_ALL_SMALL} only (it polls every child there; bar ≤ 2.5, goal ≤ 1.5)"]
        else:
            header += ["ratio (bar ≤ 1.05)", "fastest peer"]
        header += ["awaitkit polls/N"]
        label = dict(functions)
        rows = []
        per_child_by_n = {}
        for n in sizes:
            per_child = {fid: medians[fid][n] / n for fid, _ in functions if n in medians.get(fid, {})}
            per_child_by_n[n] = per_child
            row = [fmt_n(n)] + [fmt_ns(per_child.get(fid)) for fid, _ in functions]
            ak = per_child.get("awaitkit")
            fastest = fastest_of(per_child, [fid for fid in per_child if fid != "awaitkit"])
            if group == "wait_any":
                r1 = ratio(ak, per_child.get("fb_FuturesUnorderedBounded_next"))
                r2 = ratio(ak, per_child.get("futures_select_all"))
                row.append(f"{r1:.2f} {mark(r1 <= BAR)}" if r1 else "—")
                row.append(f"{r2:.2f} {mark(r2 <= 2.0)}" if r2 else "—")
            elif group == "first_ok":
                r1 = ratio(ak, per_child.get("futures_select_ok"))
                r2 = ratio(ak, per_child.get("awaitkit_wait_any"))
                row.append(f"{r1:.2f}" if r1 else "—")
                row.append(f"{r2:.2f}" if r2 else "—")
            elif group in GATHER_GROUPS:
                # futures' join_all polls every child on every wake at N <= 30
                # (SPEC §1.3 forbids it): it has its own, looser bar there.
                woken_only = [fid for fid in per_child if fid != "awaitkit"
                              and not (fid == "futures_join_all" and n <= JOIN_ALL_SMALL)]
                fastest = fastest_of(per_child, woken_only)
                r = ak / per_child[fastest] if ak and fastest else None
                row.append(f"**{r:.2f}** {mark(r <= BAR)}" if r else "—")
                row.append(label[fastest] if fastest else "—")
                rj = ratio(ak, per_child.get("futures_join_all")) if n <= JOIN_ALL_SMALL else None
                if rj is None:
                    row.append("—")
                else:
                    row.append(f"**{rj:.2f}** {mark(rj <= 2.5)} (goal {mark(rj <= 1.5)})")
            else:
                r = ak / per_child[fastest] if ak and fastest else None
                row.append(f"**{r:.2f}** {mark(r <= BAR)}" if r else "—")
            if group not in ("first_ok",) and group not in GATHER_GROUPS:
                row.append(label[fastest] if fastest else "—")
            p = polls.get((group, "awaitkit", n))
            row.append(f"{p:.2f}" if p is not None else "?")
            rows.append(row)
        table(w, header, rows)
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
        rows = []
        for n in sizes:
            cells = [fmt_n(n)]
            for fid, _ in functions:
                p = polls.get((group, fid, n))
                cells.append(f"{p:.2f}" if p is not None and n in medians.get(fid, {}) else "—")
            rows.append(cells)
        table(w, ["N"] + [label for _, label in functions], rows)
        w("")
        w("</details>")
        w("")
        if group == "first_ok":
            w("- `first_ok` child polls are those of `wait_any` (N first polls + 1 for the fired child);")
            w("  `select_ok` polls every child again after the wake (2.00 / N). The wake is single here,")
            w("  so `select_ok` stays linear (no cap); with children failing one at a time it would")
            w("  rescan the rest after each.")
            w("")

    w("Notes:")
    w("")
    w("- futures-concurrency's `Vec::join` and `FutureGroup` scan all children on each wake, so")
    w("  they are quadratic when children wake one at a time: the shuffled groups cap them at")
    w("  N = 10 000.")
    w("- `wait_any` child polls are N first polls + 1 for the fired child (1.00–1.10 / N);")
    w("  `select_all` and `race` poll every child again after the wake (2.00 / N).")
    w("- futures-concurrency `race` returns only the winner (its rest is dropped inside).")
    lines += time_section(cdir, args.include_stale)
    lines += semaphore_section(cdir, args.include_stale)
    lines += rate_limiter_section(cdir, args.include_stale)
    lines += pool_section(cdir, args.include_stale)
    lines += batch_section(cdir, args.include_stale)
    lines += watch_section(cdir, args.include_stale)
    lines += realistic_section(cdir, args.include_stale)
    lines += fanout_section(cdir, args.include_stale)
    lines += keyed_section(cdir, args.include_stale)
    lines += redis_section(cdir, args.include_stale)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
