//! `watch` / `WatchExt::watch` / `watch::Report`: a child that blocks the
//! executor is found under every executor and every combinator, the numbers
//! add up, thresholds mean what they say, and the wrapper changes nothing
//! else (output, wakes, cancellation). The process-wide hook is global state:
//! its test lives in `tests/watch_hook.rs`.
//!
//! Timing rules are checked only one way: a poll that slept `BLOCK` is
//! reported as at least `BLOCK`; fast children do nothing that takes a
//! millisecond, so with a 20 ms threshold they must never be reported.

#[macro_use]
mod common;

use awaitkit::watch::{
    self, ChildReport, DEFAULT_THRESHOLD, Outcome, Report, SlowPoll, Watch, WatchStats,
};
use awaitkit::{ReturnWhen, WatchExt, as_completed, gather, process_batch, task_group, wait};
use common::*;
use futures::future::{BoxFuture, FusedFuture};
use futures::{FutureExt, StreamExt};
use std::collections::BTreeSet;
use std::future::{Future, Ready, ready};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// How long the blocking child holds the thread.
const BLOCK: Duration = Duration::from_millis(30);
/// The threshold of the combinator tests: far above anything a fast child
/// does, below `BLOCK`.
const THRESHOLD: Duration = Duration::from_millis(20);
/// Children per combinator test, and which one blocks.
const N: usize = 8;
const BLOCKER: usize = 5;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// What a slow-poll hook saw (a `SlowPoll` borrows its name).
#[derive(Clone, Debug)]
struct Seen {
    name: Option<String>,
    index: Option<usize>,
    duration: Duration,
    threshold: Duration,
    poll: u64,
    text: String,
}

/// The slow polls a hook saw, in order.
#[derive(Clone, Debug, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn hook(&self) -> impl Fn(&SlowPoll<'_>) + Send + Sync + 'static {
        let log = self.clone();
        move |slow| {
            log.0.lock().unwrap().push(Seen {
                name: slow.name.map(str::to_owned),
                index: slow.index,
                duration: slow.duration,
                threshold: slow.threshold,
                poll: slow.poll,
                text: slow.to_string(),
            });
        }
    }
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// The invariants of any stats: longest poll ≤ busy ≤ wall.
#[track_caller]
fn consistent(s: &WatchStats) {
    assert!(s.longest_poll <= s.busy, "longest poll > busy: {s:?}");
    assert!(s.busy <= s.wall, "busy > wall: {s:?}");
    assert!(s.slow_polls <= s.polls, "more slow polls than polls: {s:?}");
}

/// Child `i`: yields `i % 3` times (each poll counted by `polls`); the
/// blocker then blocks the thread for `BLOCK` in its last poll (poll 3).
/// Resolves to `i`.
async fn child(i: usize, polls: Counter) -> usize {
    YieldN::new(i % 3, (), &polls).await;
    if i == BLOCKER {
        std::thread::sleep(BLOCK);
    }
    i
}

/// A report with `THRESHOLD` whose slow polls go to the returned log, and
/// one poll counter per child.
fn setup() -> (Report, Log, Vec<Counter>) {
    let log = Log::default();
    let report = Report::new().threshold(THRESHOLD).on_slow_poll(log.hook());
    (report, log, (0..N).map(|_| Counter::new()).collect())
}

fn name(i: usize) -> String {
    format!("child {i}")
}

/// The rules every combinator keeps: only the blocker is reported (by the
/// hook and by `blocking()`), with its label, index, poll number and at
/// least `BLOCK`; every child completed, with as many polls as its own
/// counter saw; fast children have no slow poll.
#[track_caller]
fn check_one_blocker(report: &Report, log: &Log, counters: &[Counter], named: bool) {
    let label = if named {
        name(BLOCKER)
    } else {
        format!("#{BLOCKER}")
    };
    let seen = log.take();
    assert_eq!(seen.len(), 1, "only the blocker is reported: {seen:?}");
    let s = &seen[0];
    assert_eq!(s.index, Some(BLOCKER), "{s:?}");
    assert_eq!(s.poll, 3, "it blocked in its third poll: {s:?}");
    assert!(s.duration >= BLOCK, "{s:?}");
    assert_eq!(s.threshold, THRESHOLD);
    if named {
        assert_eq!(s.name.as_deref(), Some(label.as_str()));
        assert!(s.text.contains(&format!("`{label}`")), "{}", s.text);
    } else {
        assert_eq!(s.name, None);
        assert!(s.text.contains(&format!("child #{BLOCKER}")), "{}", s.text);
    }

    let blocking = report.blocking();
    assert_eq!(blocking.len(), 1, "{blocking:?}");
    assert_eq!(blocking[0].index, BLOCKER);
    assert_eq!(blocking[0].label(), label);
    assert_eq!(blocking[0].stats.slow_polls, 1);
    assert!(blocking[0].stats.longest_poll >= BLOCK, "{:?}", blocking[0]);

    let children = report.children();
    assert_eq!(children.len(), N);
    for (i, c) in children.iter().enumerate() {
        assert_eq!(c.index, i);
        assert_eq!(c.outcome, Outcome::Completed, "{c}");
        assert!(c.stats.completed, "{c}");
        assert_eq!(
            c.stats.polls,
            counters[i].get() as u64,
            "{c}: polls != own counter"
        );
        assert_eq!(c.stats.polls, (i % 3 + 1) as u64, "{c}");
        consistent(&c.stats);
        if i == BLOCKER {
            assert!(c.stats.busy >= BLOCK && c.stats.wall >= BLOCK, "{c}");
        } else {
            assert_eq!(c.stats.slow_polls, 0, "fast child reported slow: {c}");
        }
    }
    let text = report.to_string();
    assert!(text.contains("blocked the executor"), "{text}");
    assert!(text.contains(&label), "{text}");
}

/// Polls `fut` once with a no-op waker.
fn poll_noop<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

/// A real timer of `d`, started at its first poll (a `Delay` made earlier
/// would tick before the `Watch` starts measuring), counting its polls.
fn timer(d: Duration, polls: &Counter) -> impl Future<Output = ()> + Unpin + use<> {
    let polls = polls.clone();
    let mut delay = None;
    futures::future::poll_fn(move |cx| {
        polls.inc();
        Pin::new(delay.get_or_insert_with(|| futures_timer::Delay::new(d))).poll(cx)
    })
}

// ---------------------------------------------------------------------------
// 1. The blocking child is found under every combinator and executor
// ---------------------------------------------------------------------------

matrix! {
    async fn gather_finds_the_blocking_child() {
        let (report, log, counters) = setup();
        let children = (0..N).map(|i| report.watch(name(i), child(i, counters[i].clone())));
        let out = gather(children).await;
        assert_eq!(out, (0..N).collect::<Vec<_>>());
        check_one_blocker(&report, &log, &counters, true);
    }

    async fn as_completed_finds_the_blocking_child() {
        let (report, log, counters) = setup();
        let children = (0..N).map(|i| report.watch(name(i), child(i, counters[i].clone())));
        let mut out: Vec<usize> = as_completed(children).collect().await;
        out.sort_unstable();
        assert_eq!(out, (0..N).collect::<Vec<_>>());
        check_one_blocker(&report, &log, &counters, true);
    }

    /// `watch_each`: unnamed children, labelled by index.
    async fn wait_finds_the_blocking_child() {
        let (report, log, counters) = setup();
        let children = report.watch_each((0..N).map(|i| child(i, counters[i].clone())));
        let mut outcome = wait(children, ReturnWhen::AllCompleted).await;
        assert!(outcome.pending.is_empty());
        assert!(!outcome.timed_out);
        outcome.done.sort_unstable();
        assert_eq!(outcome.done, (0..N).map(|i| (i, i)).collect::<Vec<_>>());
        check_one_blocker(&report, &log, &counters, false);
    }

    async fn process_batch_finds_the_blocking_child() {
        let (report, log, counters) = setup();
        let out = process_batch(0..N, 3, |i| report.watch(name(i), child(i, counters[i].clone()))).await;
        assert_eq!(out, (0..N).collect::<Vec<_>>());
        check_one_blocker(&report, &log, &counters, true);
    }

    async fn task_group_finds_the_blocking_task() {
        let (report, log, counters) = setup();
        let (r, c) = (&report, &counters);
        let out = task_group(|tg| async move {
            let handles: Vec<_> = (0..N)
                .map(|i| tg.spawn(r.watch(name(i), child(i, c[i].clone()).map(Ok::<_, ()>))))
                .collect();
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.unwrap()?);
            }
            Ok(out)
        })
        .await;
        assert_eq!(out, Ok((0..N).collect::<Vec<_>>()));
        check_one_blocker(&report, &log, &counters, true);
    }
}

// ---------------------------------------------------------------------------
// 2. The numbers add up
// ---------------------------------------------------------------------------

matrix! {
    async fn polls_equal_the_inner_futures_polls() {
        let polls = Counter::new();
        let mut fut = watch::watch(YieldN::new(5, 'x', &polls));
        assert_eq!(fut.stats(), WatchStats::default(), "nothing measured before the first poll");
        assert_eq!((&mut fut).await, 'x');
        let s = fut.stats();
        assert_eq!(polls.get(), 6);
        assert_eq!(s.polls, 6);
        assert!(s.completed);
        consistent(&s);

        // The same through a report, for several children at once.
        let report = Report::new();
        let counters: Vec<Counter> = (0..6).map(|_| Counter::new()).collect();
        let out = gather(report.watch_each((0..6).map(|k| YieldN::new(k, k, &counters[k])))).await;
        assert_eq!(out, [0, 1, 2, 3, 4, 5]);
        for (k, c) in report.children().iter().enumerate() {
            assert_eq!(c.stats.polls, counters[k].get() as u64, "{c}");
            assert_eq!(c.stats.polls, k as u64 + 1, "{c}");
            consistent(&c.stats);
        }
    }

    /// A child waiting on a real timer is slow (wall ≥ its sleep) but
    /// harmless (busy: a few short polls).
    async fn a_timer_child_is_slow_but_not_busy() {
        const SLEEP: Duration = Duration::from_millis(40);
        let polls = Counter::new();
        let mut fut = pin!(
            timer(SLEEP, &polls)
                .watch("timer")
                .threshold(THRESHOLD)
        );
        (&mut fut).await;
        let s = fut.stats();
        assert_eq!(s.polls, polls.get() as u64);
        assert!(s.polls >= 2, "a pending poll, then the ready one: {s:?}");
        assert!(s.wall >= SLEEP, "{s:?}");
        assert!(s.busy < s.wall / 2, "waiting is not busy: {s:?}");
        assert_eq!(s.slow_polls, 0, "{s:?}");
        consistent(&s);
    }

    /// Wall time runs over every poll, the blocking one included.
    async fn wall_and_busy_cover_a_blocking_poll() {
        let polls = Counter::new();
        let p = polls.clone();
        let mut fut = pin!(watch::watch(async move {
            YieldN::new(1, (), &p).await;
            std::thread::sleep(BLOCK);
            YieldN::new(1, (), &p).await;
        })
        .threshold(THRESHOLD));
        (&mut fut).await;
        let s = fut.stats();
        assert_eq!(s.polls, 3);
        assert_eq!(polls.get(), 4, "two YieldN(1)s: two polls each");
        assert_eq!(s.slow_polls, 1);
        assert!(s.longest_poll >= BLOCK, "{s:?}");
        assert!(s.busy >= BLOCK && s.wall >= BLOCK, "{s:?}");
        consistent(&s);
    }

    /// Slow but harmless children are ranked by wall time; none blocked.
    /// (The 60 ms child is usually first; a machine that stalls the test
    /// for more than 55 ms between the children's first polls and their
    /// ends lets another one end later, and rank first: the ranking must
    /// follow the walls measured, whatever they are.)
    async fn slowest_ranks_by_wall_time() {
        let report = Report::new().threshold(THRESHOLD);
        let children = [1, 60, 5].map(|ms| {
            report.watch(format!("{ms} ms"), timer(Duration::from_millis(ms), &Counter::new()))
        });
        gather(children).await;
        let slowest = report.slowest(10);
        assert_eq!(slowest.len(), 3);
        let sixty = slowest.iter().find(|e| e.label() == "60 ms").expect("the 60 ms child");
        assert!(sixty.stats.wall >= Duration::from_millis(60), "{sixty}");
        assert!(slowest[0].stats.wall >= sixty.stats.wall, "{slowest:?}");
        assert!(slowest.windows(2).all(|w| w[0].stats.wall >= w[1].stats.wall), "{slowest:?}");
        assert_eq!(report.slowest(1).len(), 1);
        assert!(report.blocking().is_empty(), "waiting is not blocking");
        assert!(report.to_string().contains("no poll reached"), "{report}");
    }
}

// ---------------------------------------------------------------------------
// 3. The wrapper changes nothing else
// ---------------------------------------------------------------------------

matrix! {
    async fn output_is_the_inner_futures() {
        let bare = async { String::from("out") }.await;
        assert_eq!(watch::watch(async { String::from("out") }).await, bare);
        assert_eq!(async { Err::<u8, &str>("no") }.watch("err").await, Err("no"));
        assert_eq!(watch::watch(YieldN::new(3, vec![1, 2], &Counter::new())).await, vec![1, 2]);
        let report = Report::new();
        let boxed: Box<dyn Send + Sync> = report.watch("boxed", async { Box::new(7u8) as Box<_> }).await;
        drop(boxed);
        // An `IntoFuture` is turned into its future.
        let (a, b) = awaitkit::gather!(report.watch("a", ready(1)), report.watch("b", async { 2 })).await;
        assert_eq!((a, b), (1, 2));
        assert_eq!(report.len(), 3);
    }

    /// `wait(FirstCompleted)` hands back the pending children; dropping them
    /// is their cancellation, and the report says so.
    async fn report_records_running_and_cancelled_children() {
        let tracker = Tracker::new();
        let counters: Vec<Counter> = (0..3).map(|_| Counter::new()).collect();
        let (handles, children): (Vec<_>, Vec<_>) =
            (0..3).map(|i| parked(i, &counters[i], &tracker)).unzip();
        assert!(!handles[0].complete(), "not polled yet: no waker");
        let report = Report::new();
        let outcome = wait(report.watch_each(children), ReturnWhen::FirstCompleted).await;
        assert_eq!(outcome.done, [(0, 0)]);
        assert_eq!(outcome.pending.len(), 2);
        let outcomes = |r: &Report| r.children().iter().map(|c| c.outcome).collect::<Vec<_>>();
        assert_eq!(outcomes(&report), [Outcome::Completed, Outcome::Running, Outcome::Running]);
        assert_eq!(tracker.live(), 2);
        drop(outcome);
        assert_eq!(tracker.live(), 0);
        assert_eq!(outcomes(&report), [Outcome::Completed, Outcome::Cancelled, Outcome::Cancelled]);
        for (i, c) in report.children().iter().enumerate() {
            assert_eq!(c.stats.polls, counters[i].get() as u64, "{c}");
            assert_eq!(c.stats.completed, i == 0, "{c}");
        }
        let text = report.to_string();
        assert!(text.contains("1 completed, 0 running, 2 cancelled, 0 panicked"), "{text}");
    }

    /// A child panics inside `gather`: the panic propagates unchanged, and
    /// once the gather is gone the report shows who panicked, who finished
    /// and who was cancelled.
    async fn report_records_a_panicked_child() {
        let tracker = Tracker::new();
        let children: Vec<BoxFuture<'static, usize>> = vec![
            Box::pin(async { 0 }),
            Box::pin(panic_after(1, "child 1 panicked", tracker.token())),
            Box::pin(YieldN::tracked(usize::MAX, 2, &Counter::new(), &tracker)),
        ];
        let report = Report::new();
        let err = AssertUnwindSafe(gather(report.watch_each(children)))
            .catch_unwind()
            .await
            .expect_err("the child's panic propagates");
        assert_eq!(panic_message(&*err), "child 1 panicked");
        assert_eq!(tracker.live(), 0);
        let children = report.children();
        let outcomes: Vec<_> = children.iter().map(|c| c.outcome).collect();
        assert_eq!(outcomes, [Outcome::Completed, Outcome::Panicked, Outcome::Cancelled]);
        assert_eq!(children[1].stats.polls, 1, "the panicking poll is not counted");
        assert!(!children[1].stats.completed);
        assert!(report.to_string().contains("1 panicked"), "{report}");
    }
}

guarded! {
    /// Dropping a `Watch` drops the inner future right away, whatever the
    /// number of polls before; a report child becomes `Cancelled`.
    fn dropping_a_watch_drops_the_inner_future_at_once() {
        for k in 0..=3 {
            let tracker = Tracker::new();
            let polls = Counter::new();
            let mut bare = watch::watch(YieldN::tracked(5, (), &polls, &tracker));
            let report = Report::new().threshold(Duration::ZERO);
            let mut child = report.watch("child", YieldN::tracked(5, (), &polls, &tracker));
            for _ in 0..k {
                assert!(poll_noop(Pin::new(&mut bare)).is_pending());
                assert!(poll_noop(Pin::new(&mut child)).is_pending());
            }
            assert_eq!(bare.stats().polls, k as u64);
            assert_eq!(tracker.live(), 2);
            let c = &report.children()[0];
            assert_eq!(c.outcome, Outcome::Running, "after {k} polls");
            // With a zero threshold every poll is slow, so the running entry
            // is up to date.
            assert_eq!(c.stats.polls, k as u64, "after {k} polls");
            drop(bare);
            assert_eq!(tracker.live(), 1, "after {k} polls: the inner future outlived its Watch");
            drop(child);
            assert_eq!(tracker.live(), 0, "after {k} polls: the inner future outlived its Watch");
            let c = &report.children()[0];
            assert_eq!(c.outcome, Outcome::Cancelled, "after {k} polls");
            assert_eq!(c.stats.polls, k as u64);
            assert!(!c.stats.completed);
            assert_eq!(polls.get(), 2 * k);
        }
        // Never polled: cancelled, nothing measured.
        let report = Report::new();
        drop(report.watch_each([ready(1)]).next());
        assert_eq!(report.children()[0].outcome, Outcome::Cancelled);
        assert_eq!(report.children()[0].stats, WatchStats::default());
    }

    /// A panic in the inner poll propagates; the `Watch` then records the
    /// child as `Panicked` when it is dropped.
    fn a_panicking_poll_is_recorded_as_panicked() {
        let tracker = Tracker::new();
        let report = Report::new();
        let mut fut = Box::pin(report.watch("boom", panic_after(1, "boom", tracker.token())));
        assert!(poll_noop(fut.as_mut()).is_pending());
        let err = catch_unwind(AssertUnwindSafe(|| poll_noop(fut.as_mut())))
            .expect_err("the inner panic propagates");
        assert_eq!(panic_message(&*err), "boom");
        assert_eq!(fut.stats().polls, 1, "the panicking poll is not counted");
        drop(fut);
        assert_eq!(tracker.live(), 0);
        let c = &report.children()[0];
        assert_eq!((c.label().as_ref(), c.outcome), ("boom", Outcome::Panicked), "{c}");
        assert_eq!(c.stats.polls, 1);
        assert!(c.to_string().ends_with(", panicked"), "{c}");
    }

    /// A slow-poll hook that panics panics out of the child's poll: the
    /// report calls it a panic, not a cancellation.
    fn a_panicking_hook_marks_the_child_panicked() {
        let report = Report::new()
            .threshold(Duration::ZERO)
            .on_slow_poll(|_| panic!("hook"));
        let mut fut = Box::pin(report.watch("child", futures::future::pending::<()>()));
        let err = catch_unwind(AssertUnwindSafe(|| poll_noop(fut.as_mut())))
            .expect_err("the hook's panic propagates");
        assert_eq!(panic_message(&*err), "hook");
        drop(fut);
        assert_eq!(report.children()[0].outcome, Outcome::Panicked);
    }

    /// Once the clock's calibration spans 100 ms it is frozen: a finished
    /// future's stats read the same every time (`WatchStats: Eq` is stable).
    fn stats_of_a_finished_watch_read_the_same_every_time() {
        let mut fut = Box::pin(watch::watch(async { std::thread::sleep(Duration::from_millis(3)) }));
        assert!(poll_noop(fut.as_mut()).is_ready());
        // Well past the 100 ms after the process's first reading (this
        // future's first poll at the latest).
        std::thread::sleep(Duration::from_millis(120));
        let first = fut.stats();
        std::thread::sleep(Duration::from_millis(20));
        let _ = watch::watch(async {}).stats();
        assert_eq!(fut.stats(), first);
        assert!(first.busy >= Duration::from_millis(3), "{first:?}");
    }

    /// The inner future gets the caller's own waker: its wakes reach the
    /// caller, nothing is cloned or wrapped.
    fn the_callers_waker_is_passed_through() {
        let waker = CountingWaker::new();
        let outer = waker.waker().clone();
        let polls = Counter::new();
        let mut inner = YieldN::new(2, 7, &polls);
        let mut fut = watch::watch(futures::future::poll_fn(move |cx| {
            assert!(cx.waker().will_wake(&outer), "the inner future got another waker");
            Pin::new(&mut inner).poll(cx)
        }));
        let clones = waker.clones();
        assert_eq!(poll_once(&mut fut, &waker), Poll::Pending);
        assert_eq!(waker.wakes(), 1, "the inner wake did not reach the caller's waker");
        assert_eq!(poll_once(&mut fut, &waker), Poll::Pending);
        assert_eq!(waker.wakes(), 2);
        assert_eq!(poll_once(&mut fut, &waker), Poll::Ready(7));
        assert_eq!(waker.clones(), clones, "the Watch cloned the waker");
        assert_eq!(fut.stats().polls, 3);
    }

    /// `Watch` of an `Unpin` future is `Unpin` (polled through `Pin::new`);
    /// `FusedFuture` is the inner future's.
    fn unpin_and_fused_follow_the_inner_future() {
        fn unpin<T: Unpin>(t: T) -> T {
            t
        }
        let mut fut = unpin(watch::watch(ready(1).fuse()));
        assert!(!fut.is_terminated());
        assert_eq!(poll_noop(Pin::new(&mut fut)), Poll::Ready(1));
        assert!(fut.is_terminated());
        // Usable where a fused `Unpin` future is required.
        let mut done = unpin(async { 2 }.boxed().fuse().watch("done"));
        let mut never = futures::future::pending::<i32>().fuse().watch("never");
        let out = futures::executor::block_on(async {
            futures::select! {
                a = done => a,
                b = never => b,
            }
        });
        assert_eq!(out, 2);
        assert!(done.is_terminated());
        assert!(!never.is_terminated());
    }

    /// The report's own hook may read the report: the entry is up to date
    /// when the hook runs, and no lock is held.
    fn a_report_hook_may_read_the_report() {
        let cell: Arc<Mutex<Option<Report>>> = Arc::default();
        let seen: Arc<Mutex<Vec<ChildReport>>> = Arc::default();
        let report = {
            let (cell, seen) = (cell.clone(), seen.clone());
            Report::new().threshold(THRESHOLD).on_slow_poll(move |slow| {
                let report = cell.lock().unwrap().clone().expect("report set");
                let entry = report.children()[slow.index.unwrap()].clone();
                seen.lock().unwrap().push(entry);
            })
        };
        *cell.lock().unwrap() = Some(report.clone());
        let children = [false, true].map(|block| async move {
            if block {
                std::thread::sleep(BLOCK);
            }
        });
        futures::executor::block_on(gather(report.watch_each(children)));
        *cell.lock().unwrap() = None;
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].index, 1);
        assert_eq!(seen[0].outcome, Outcome::Running, "the hook runs inside the poll");
        assert_eq!((seen[0].stats.polls, seen[0].stats.slow_polls), (1, 1));
        assert!(seen[0].stats.longest_poll >= BLOCK);
    }
}

// ---------------------------------------------------------------------------
// 4. Thresholds and what a slow poll carries
// ---------------------------------------------------------------------------

matrix! {
    async fn a_zero_threshold_reports_every_poll() {
        let log = Log::default();
        let mut fut = pin!(
            watch::watch(YieldN::new(3, (), &Counter::new()))
                .name("z")
                .threshold(Duration::ZERO)
                .on_slow_poll(log.hook())
        );
        (&mut fut).await;
        assert_eq!(fut.stats().slow_polls, 4);
        let seen = log.take();
        assert_eq!(seen.iter().map(|s| s.poll).collect::<Vec<_>>(), [1, 2, 3, 4]);
        for s in &seen {
            assert_eq!((s.name.as_deref(), s.index, s.threshold), (Some("z"), None, Duration::ZERO));
        }

        let report = Report::new().threshold(Duration::ZERO);
        gather(report.watch_each([ready(()), ready(()), ready(())])).await;
        assert_eq!(report.blocking().len(), 3);
        assert!(report.children().iter().all(|c| c.stats.slow_polls == 1));
    }

    async fn a_max_threshold_reports_nothing() {
        let log = Log::default();
        let mut fut = pin!(
            async { std::thread::sleep(BLOCK) }
                .watch("never reported")
                .threshold(Duration::MAX)
                .on_slow_poll(log.hook())
        );
        (&mut fut).await;
        assert!(log.take().is_empty());
        let s = fut.stats();
        assert_eq!(s.slow_polls, 0);
        assert!(s.longest_poll >= BLOCK, "still measured: {s:?}");

        let log = Log::default();
        let report = Report::new().threshold(Duration::MAX).on_slow_poll(log.hook());
        gather(report.watch_each([BLOCK, Duration::ZERO].map(|d| async move { std::thread::sleep(d) }))).await;
        assert!(log.take().is_empty());
        assert!(report.blocking().is_empty());
        assert!(report.children()[0].stats.longest_poll >= BLOCK);
    }

    async fn a_5ms_threshold_reports_a_10ms_block() {
        const SHORT: Duration = Duration::from_millis(10);
        let log = Log::default();
        let mut fut = pin!(
            async { std::thread::sleep(SHORT) }
                .watch("ten")
                .threshold(Duration::from_millis(5))
                .on_slow_poll(log.hook())
        );
        (&mut fut).await;
        assert_eq!(fut.stats().slow_polls, 1);
        let seen = log.take();
        assert_eq!(seen.len(), 1);
        let s = &seen[0];
        assert_eq!((s.name.as_deref(), s.index, s.poll), (Some("ten"), None, 1));
        assert_eq!(s.threshold, Duration::from_millis(5));
        assert!(s.duration >= SHORT, "{s:?}");
        assert!(s.text.starts_with("slow poll: `ten` held the executor for"), "{}", s.text);
        assert!(s.text.contains("threshold 5ms"), "{}", s.text);
    }

    /// 10 ms unless set; an unnamed future is "a future" in the text.
    async fn the_default_threshold_applies() {
        assert_eq!(DEFAULT_THRESHOLD, Duration::from_millis(10));
        let log = Log::default();
        watch::watch(async { std::thread::sleep(BLOCK) }).on_slow_poll(log.hook()).await;
        let seen = log.take();
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].name.as_deref(), seen[0].threshold), (None, DEFAULT_THRESHOLD));
        assert!(seen[0].text.starts_with("slow poll: a future held"), "{}", seen[0].text);
        assert!(seen[0].duration >= BLOCK);
        // The same for a report's children.
        let report = Report::new();
        gather(report.watch_each([async { std::thread::sleep(BLOCK) }])).await;
        assert_eq!(report.blocking().len(), 1);
    }
}

// ---------------------------------------------------------------------------
// 5. `tracing`
// ---------------------------------------------------------------------------

#[cfg(feature = "tracing")]
mod tracing_warning {
    use super::*;
    use std::fmt;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::subscriber::Subscriber;
    use tracing::{Event, Level, Metadata};

    /// One event, as recorded.
    #[derive(Clone, Debug, Default)]
    struct Recorded {
        level: Option<Level>,
        target: String,
        future: Option<String>,
        index: Option<u64>,
        poll: Option<u64>,
        message: String,
    }

    impl Visit for Recorded {
        fn record_str(&mut self, field: &Field, value: &str) {
            match field.name() {
                "future" => self.future = Some(value.to_owned()),
                "message" => self.message = value.to_owned(),
                _ => {}
            }
        }
        fn record_u64(&mut self, field: &Field, value: u64) {
            match field.name() {
                "index" => self.index = Some(value),
                "poll" => self.poll = Some(value),
                _ => {}
            }
        }
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            if field.name() == "message" {
                self.message = format!("{value:?}");
            }
        }
    }

    /// Records every event.
    #[derive(Default)]
    struct Recorder {
        events: Arc<Mutex<Vec<Recorded>>>,
        spans: AtomicU64,
    }

    impl Subscriber for Recorder {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(self.spans.fetch_add(1, Ordering::Relaxed) + 1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut recorded = Recorded {
                level: Some(*event.metadata().level()),
                target: event.metadata().target().to_owned(),
                ..Recorded::default()
            };
            event.record(&mut recorded);
            self.events.lock().unwrap().push(recorded);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn a_slow_poll_is_a_tracing_warning_with_the_name() {
        // A tracing-core caveat: while a single subscriber exists, a new
        // callsite's interest is computed from the default subscriber of
        // the thread that hits it first. Here that is often another test's
        // thread, with none: the warning would be cached as "never enabled"
        // and this test would see nothing. A second live subscriber makes
        // tracing ask every registered subscriber instead.
        let second = tracing::Dispatch::new(Recorder::default());
        let recorder = Recorder::default();
        let events = recorder.events.clone();
        tracing::subscriber::with_default(recorder, || {
            futures::executor::block_on(async {
                // Its own hook does not silence the warning.
                async { std::thread::sleep(BLOCK) }
                    .watch("load config")
                    .threshold(THRESHOLD)
                    .on_slow_poll(|_| {})
                    .await;
                async {}.watch("fast").threshold(THRESHOLD).await;
                let report = Report::new().threshold(THRESHOLD);
                gather(
                    report.watch_each([Duration::ZERO, BLOCK].map(|d| async move {
                        std::thread::sleep(d);
                    })),
                )
                .await;
            });
        });
        drop(second);
        let events = events.lock().unwrap();
        let warnings: Vec<_> = events
            .iter()
            .filter(|e| e.target == "awaitkit::watch")
            .collect();
        assert_eq!(warnings.len(), 2, "{events:?}");
        for w in &warnings {
            assert_eq!(w.level, Some(Level::WARN), "{w:?}");
            assert_eq!(w.poll, Some(1), "{w:?}");
        }
        assert_eq!(warnings[0].future.as_deref(), Some("load config"));
        assert_eq!(warnings[0].index, None);
        assert!(
            warnings[0].message.contains("load config"),
            "{:?}",
            warnings[0]
        );
        assert_eq!(warnings[1].future.as_deref(), Some("<unnamed>"));
        assert_eq!(warnings[1].index, Some(1));
        assert!(
            warnings[1].message.contains("child #1"),
            "{:?}",
            warnings[1]
        );
    }
}

// ---------------------------------------------------------------------------
// 7. A report shared across threads
// ---------------------------------------------------------------------------

#[test]
fn a_report_is_a_send_sync_clone_handle() {
    fn shared<T: Send + Sync + Clone + 'static>(t: T) -> T {
        t
    }
    let report = shared(Report::new());
    let clone = report.clone();
    drop(clone.watch("via the clone", ready(())));
    assert_eq!(report.len(), 1, "a clone shares the children");
}

/// Tasks on a 2-worker tokio runtime, some registered on the workers, some
/// here and polled there: every one gets its entry.
#[test]
fn children_watched_from_many_tokio_tasks_all_get_entries() {
    common::run_tokio_multi("children_watched_from_many_tokio_tasks", || async {
        const TASKS: usize = 24;
        let report = Report::new().threshold(THRESHOLD);
        let mut tasks = Vec::new();
        for i in 0..TASKS {
            let polls = Counter::new();
            let work = {
                let polls = polls.clone();
                async move {
                    YieldN::new(i % 4, (), &polls).await;
                    if i == 7 {
                        std::thread::sleep(BLOCK);
                    }
                    i
                }
            };
            let task = if i % 2 == 0 {
                let report = report.clone();
                tokio::spawn(async move { report.watch(format!("task {i}"), work).await }.boxed())
            } else {
                tokio::spawn(report.watch(format!("task {i}"), work).boxed())
            };
            tasks.push((task, polls));
        }
        for (i, (task, polls)) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.unwrap(), i);
            assert_eq!(polls.get(), i % 4 + 1);
        }
        let children = report.children();
        assert_eq!(children.len(), TASKS);
        let labels: BTreeSet<String> = children.iter().map(|c| c.label().into_owned()).collect();
        let expected: BTreeSet<String> = (0..TASKS).map(|i| format!("task {i}")).collect();
        assert_eq!(labels, expected);
        for c in &children {
            let i: usize = c.label()["task ".len()..].parse().unwrap();
            assert_eq!(c.outcome, Outcome::Completed, "{c}");
            assert_eq!(c.stats.polls, (i % 4 + 1) as u64, "{c}");
            consistent(&c.stats);
        }
        let blocking = report.blocking();
        assert_eq!(blocking.len(), 1, "{blocking:?}");
        assert_eq!(blocking[0].label(), "task 7");
    });
}

/// Plain threads register and run children at the same time: indices are
/// unique and every entry is its own child's.
#[test]
fn children_registered_from_many_threads_keep_their_own_entries() {
    common::watchdog("children_registered_from_many_threads", || {
        const THREADS: usize = 4;
        const EACH: usize = 100;
        let report = Report::new();
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let report = report.clone();
                std::thread::spawn(move || {
                    for k in 0..EACH {
                        let polls = Counter::new();
                        let fut = report.watch(format!("{t}/{k}"), YieldN::new(k % 3, (), &polls));
                        futures::executor::block_on(fut);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let children = report.children();
        assert_eq!(children.len(), THREADS * EACH);
        let mut labels = BTreeSet::new();
        for (i, c) in children.iter().enumerate() {
            assert_eq!(c.index, i);
            assert_eq!(c.outcome, Outcome::Completed, "{c}");
            let k: usize = c.label().split('/').nth(1).unwrap().parse().unwrap();
            assert_eq!(
                c.stats.polls,
                (k % 3 + 1) as u64,
                "{c}: another child's stats"
            );
            assert!(labels.insert(c.label().into_owned()), "{c}: label twice");
        }
    });
}

// ---------------------------------------------------------------------------
// 8. Empty input
// ---------------------------------------------------------------------------

matrix! {
    async fn empty_input_gives_an_empty_report() {
        let report = Report::new();
        let each = report.watch_each(Vec::<Ready<()>>::new());
        assert_eq!(each.len(), 0);
        let out = gather(each).await;
        assert!(out.is_empty());
        assert!(report.is_empty());
        assert!(report.children().is_empty());
        assert!(report.blocking().is_empty());
        assert!(report.slowest(3).is_empty());
        assert!(report.to_string().starts_with("0 children"), "{report}");
    }
}

/// `Watch` keeps the inner future reachable and names it.
#[test]
fn names_and_inner_future_are_reachable() {
    let fut: Watch<Ready<u8>> = ready(3).watch(format!("request {}", 42));
    assert_eq!(fut.get_name(), Some("request 42"));
    assert_eq!(watch::watch(ready(3)).get_name(), None);
    let renamed = watch::watch(ready(3)).name("late");
    assert_eq!(renamed.get_name(), Some("late"));
    assert!(format!("{renamed:?}").contains("late"));
    let _: &Ready<u8> = fut.get_ref();
}

// ---------------------------------------------------------------------------
// 9. Unfinished children: wall time to the drop, or so far
// ---------------------------------------------------------------------------

matrix! {
    /// A request cut off by a timeout shows the whole timeout as wall
    /// time (its clock runs to the drop), so `slowest` ranks it first.
    async fn a_cancelled_childs_wall_time_runs_to_its_drop() {
        const LIMIT: Duration = Duration::from_millis(40);
        let report = Report::new();
        let hung = report.watch("hung", futures::future::pending::<()>());
        let quick = report.watch("quick", timer(Duration::from_millis(1), &Counter::new()));
        let out = awaitkit::timeout(LIMIT, gather!(hung, quick)).await;
        assert!(out.is_err(), "the hung child times the pair out");
        let children = report.children();
        let hung = &children[0];
        assert_eq!(hung.outcome, Outcome::Cancelled, "{hung}");
        assert!(hung.stats.wall >= LIMIT, "{hung}");
        assert_eq!(hung.stats.polls, 1, "{hung}");
        consistent(&hung.stats);
        assert_eq!(report.slowest(1)[0].label(), "hung");
    }
}

/// A running child shows its wall time so far, and its first poll, without
/// any slow poll.
#[test]
fn a_running_child_shows_its_wall_time_so_far() {
    let report = Report::new();
    let mut fut = Box::pin(report.watch("stuck", futures::future::pending::<()>()));
    assert_eq!(
        report.children()[0].stats,
        WatchStats::default(),
        "not polled yet"
    );
    assert!(poll_noop(fut.as_mut()).is_pending());
    std::thread::sleep(Duration::from_millis(20));
    let child = &report.children()[0];
    assert_eq!(child.outcome, Outcome::Running);
    assert_eq!(child.stats.polls, 1, "{child}");
    assert!(child.stats.wall >= Duration::from_millis(20), "{child}");
    assert!(child.stats.busy < Duration::from_millis(20), "{child}");
    assert!(child.to_string().ends_with(", running"), "{child}");
    drop(fut);
    assert_eq!(report.children()[0].outcome, Outcome::Cancelled);
}

/// `Watch::name` on a report's child renames its entry too.
#[test]
fn naming_a_report_child_renames_its_entry() {
    let report = Report::new();
    let children: Vec<_> = report
        .watch_each([ready(1), ready(2)])
        .enumerate()
        .map(|(i, w)| w.name(format!("job {i}")))
        .collect();
    assert_eq!(report.children()[1].label(), "job 1");
    drop(children);
    assert_eq!(report.children()[0].label(), "job 0");
}

/// A watched future stays usable with `catch_unwind` when the inner one is
/// (the wrapper is as unwind-safe as what it wraps).
#[test]
fn a_watched_future_can_still_catch_unwind() {
    let out = futures::executor::block_on(watch::watch(ready(1)).catch_unwind());
    assert_eq!(out.ok(), Some(1));
    let panicked =
        futures::executor::block_on(watch::watch(async { panic!("inner") }).catch_unwind());
    assert!(panicked.is_err());
}

matrix! {
    /// Regression (panic-injection harness, `watch_with_a_slow_poll_hook`
    /// k=11): the hook panicked in the poll that completed the inner future;
    /// the output was lost and the next poll polled the finished inner
    /// future again.
    async fn a_hook_panic_as_the_future_completes_never_polls_it_again() {
        let polls = Counter::new();
        let p = polls.clone();
        let inner = futures::future::poll_fn(move |_| {
            p.inc();
            assert_eq!(p.get(), 1, "the inner future was polled after it completed");
            Poll::Ready(7)
        });
        let mut fut = watch::watch(inner)
            .threshold(Duration::ZERO)
            .on_slow_poll(|_| panic!("hook"));
        let payload = AssertUnwindSafe(&mut fut).catch_unwind().await.unwrap_err();
        assert_eq!(panic_message(&*payload), "hook");
        let again = AssertUnwindSafe(async { futures::poll!(&mut fut) })
            .catch_unwind()
            .await;
        match again {
            Err(payload) => {
                let msg = panic_message(&*payload);
                assert!(msg.contains("polled after a panic in its slow-poll hook"), "{msg}");
            }
            Ok(poll) => panic!("polled after the hook's panic, it returned {poll:?}"),
        }
        assert_eq!(polls.get(), 1);
        let stats = fut.stats();
        assert!(stats.completed);
        assert_eq!((stats.polls, stats.slow_polls), (1, 1));
    }

    /// A hook that panics in a poll that did not complete the future leaves
    /// the `Watch` working: the next poll polls the inner future.
    async fn a_hook_panic_in_a_pending_poll_leaves_the_watch_working() {
        let polls = Counter::new();
        let calls = Counter::new();
        let c = calls.clone();
        let mut fut = watch::watch(YieldN::new(1, 'x', &polls))
            .threshold(Duration::ZERO)
            .on_slow_poll(move |_| {
                c.inc();
                assert!(c.get() > 1, "hook");
            });
        let payload = AssertUnwindSafe(&mut fut).catch_unwind().await.unwrap_err();
        assert_eq!(panic_message(&*payload), "hook");
        assert_eq!((&mut fut).await, 'x');
        assert_eq!((polls.get(), fut.stats().polls, calls.get()), (2, 2, 2));
    }
}
