//! `Report`: per-child timings for any combinator.

use super::{DEFAULT_THRESHOLD, Hook, Meta, SlowPoll, Ticks, Watch, WatchStats, counter};
use std::borrow::Cow;
use std::fmt;
use std::future::IntoFuture;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Per-child timings for a combinator: wrap each child with
/// [`watch`](Report::watch) or [`watch_each`](Report::watch_each), run the
/// combinator, then read the report — which child was slow (wall time) and
/// which one blocked the executor (a poll at or over the threshold).
///
/// It works with every combinator, because it wraps the children, not the
/// combinator: [`gather`](crate::gather()), [`as_completed`](crate::as_completed),
/// [`wait`](crate::wait), [`process_batch`](crate::process_batch),
/// [task groups](crate::task_group), and other crates' too. A `Report` is
/// a cheap handle (`Clone` shares it), `Send` and `Sync`.
///
/// A report is meant for one operation (a batch, a fan-out, a request's
/// children): it keeps an entry per child watched, for as long as it
/// lives. For a process-wide watch, use the slow-poll hook
/// ([`set_slow_poll_hook`](super::set_slow_poll_hook)) instead.
///
/// Each child's entry is written when it is first polled, when it
/// completes, when it is dropped unfinished ([`Outcome::Cancelled`]: its
/// wall time runs to the drop, so a request cut off by a timeout shows the
/// whole timeout), when it panics
/// ([`Outcome::Panicked`]), and at each slow poll. A child still running
/// shows its wall time so far, and its polls and busy time as of its first
/// or last slow poll: fast polls after the first take no lock.
///
/// # Examples
///
/// Which of 100 requests blocked the executor, under
/// [`as_completed`](crate::as_completed):
///
/// ```
/// use awaitkit::watch::Report;
/// use futures::StreamExt;
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let report = Report::new().threshold(Duration::from_millis(20));
/// let requests = (0..100).map(|id| {
///     report.watch(format!("request {id}"), async move {
///         if id == 42 {
///             std::thread::sleep(Duration::from_millis(30)); // blocking I/O
///         }
///         id
///     })
/// });
/// let done: Vec<u32> = awaitkit::as_completed(requests).collect().await;
/// assert_eq!(done.len(), 100);
///
/// let culprits = report.blocking();
/// assert_eq!(culprits.len(), 1);
/// assert_eq!(culprits[0].label(), "request 42");
/// assert_eq!(report.len(), 100);
/// # });
/// ```
#[derive(Clone)]
pub struct Report {
    shared: Arc<Mutex<Inner>>,
}

struct Inner {
    threshold: Duration,
    /// `counter::lower_bound(threshold)`, computed once for all children.
    cutoff: u64,
    on_slow: Option<Hook>,
    children: Vec<Entry>,
}

struct Entry {
    name: Option<Cow<'static, str>>,
    /// Raw ticks: converted when read, so a child costs no clock read.
    ticks: Ticks,
    outcome: Outcome,
}

/// How a child watched by a [`Report`] ended.
///
/// # Examples
///
/// ```
/// use awaitkit::watch::{Outcome, Report};
/// let report = Report::new();
/// drop(report.watch("never polled", async {}));
/// assert_eq!(report.children()[0].outcome, Outcome::Cancelled);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Not finished, not dropped: still running (or not polled yet).
    Running,
    /// Completed.
    Completed,
    /// Dropped before completing (cancelled, like Python's
    /// `CancelledError`).
    Cancelled,
    /// A poll panicked.
    Panicked,
}

/// One child's line in a [`Report`].
///
/// # Examples
///
/// ```
/// use awaitkit::watch::{Outcome, Report};
/// # futures::executor::block_on(async {
/// let report = Report::new();
/// report.watch("ping", async { "pong" }).await;
/// let child = &report.children()[0];
/// assert_eq!((child.index, child.label().as_ref()), (0, "ping"));
/// assert_eq!(child.outcome, Outcome::Completed);
/// assert_eq!(child.stats.polls, 1);
/// # });
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChildReport {
    /// The order in which the child was watched by this report: for
    /// [`watch_each`](Report::watch_each) over one input on a fresh report
    /// (and nothing else watched meanwhile), its input index.
    pub index: usize,
    /// The name given to [`Report::watch`]; `None` from
    /// [`watch_each`](Report::watch_each).
    pub name: Option<Cow<'static, str>>,
    /// What was measured.
    pub stats: WatchStats,
    /// How the child ended.
    pub outcome: Outcome,
}

impl ChildReport {
    /// The name, or `#index` for an unnamed child.
    ///
    /// # Examples
    ///
    /// ```
    /// let report = awaitkit::watch::Report::new();
    /// let _children: Vec<_> = report.watch_each([futures::future::ready(()), futures::future::ready(())]).collect();
    /// assert_eq!(report.children()[1].label(), "#1");
    /// ```
    pub fn label(&self) -> Cow<'_, str> {
        match &self.name {
            Some(name) => Cow::Borrowed(name.as_ref()),
            None => Cow::Owned(format!("#{}", self.index)),
        }
    }
}

impl fmt::Display for ChildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "{}: wall {:.1?}, busy {:.1?} in {} poll{}, longest poll {:.1?}",
            self.label(),
            s.wall,
            s.busy,
            s.polls,
            if s.polls == 1 { "" } else { "s" },
            s.longest_poll,
        )?;
        if s.slow_polls > 0 {
            write!(f, " ({} slow)", s.slow_polls)?;
        }
        match self.outcome {
            Outcome::Completed => Ok(()),
            Outcome::Running => f.write_str(", running"),
            Outcome::Cancelled => f.write_str(", cancelled"),
            Outcome::Panicked => f.write_str(", panicked"),
        }
    }
}

impl Report {
    /// An empty report; children's polls of 10 ms
    /// ([`DEFAULT_THRESHOLD`]) or more count as blocking.
    ///
    /// # Examples
    ///
    /// ```
    /// let report = awaitkit::watch::Report::new();
    /// assert!(report.is_empty());
    /// ```
    pub fn new() -> Self {
        Report {
            shared: Arc::new(Mutex::new(Inner {
                threshold: DEFAULT_THRESHOLD,
                cutoff: counter::lower_bound(DEFAULT_THRESHOLD),
                on_slow: None,
                children: Vec::new(),
            })),
        }
    }

    /// Sets the slow-poll threshold (default [`DEFAULT_THRESHOLD`], 10 ms)
    /// for children watched from now on. It is a setting of the shared
    /// report (every clone sees it): set it before watching children. A
    /// child's own [`Watch::threshold`] overrides it for that child.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::watch::Report;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let report = Report::new().threshold(Duration::from_millis(1));
    /// report.watch("2 ms", async { std::thread::sleep(Duration::from_millis(2)) }).await;
    /// assert_eq!(report.blocking().len(), 1); // 2 ms is over this report's 1 ms
    /// # });
    /// ```
    pub fn threshold(self, threshold: Duration) -> Self {
        let cutoff = counter::lower_bound(threshold);
        let mut inner = self.lock();
        inner.threshold = threshold;
        inner.cutoff = cutoff;
        drop(inner);
        self
    }

    /// The slow-poll threshold children get when they are watched.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::watch::{DEFAULT_THRESHOLD, Report};
    /// use std::time::Duration;
    /// assert_eq!(Report::new().get_threshold(), DEFAULT_THRESHOLD);
    /// let report = Report::new().threshold(Duration::from_millis(50));
    /// assert_eq!(report.get_threshold(), Duration::from_millis(50));
    /// ```
    pub fn get_threshold(&self) -> Duration {
        self.lock().threshold
    }

    /// Calls `hook` for each slow poll of a child watched from now on
    /// (instead of the process-wide [`set_slow_poll_hook`](super::set_slow_poll_hook)).
    /// [`SlowPoll::index`] is the child's index in this report.
    ///
    /// It is a setting of the shared report (every clone sees it). The hook
    /// runs inside the executor's poll; a panic in it propagates out of the
    /// child's poll (the child is then [`Outcome::Panicked`]).
    ///
    /// The hook may read the report, but a hook that owns a clone of it
    /// keeps the report alive for as long as the report holds the hook (a
    /// reference cycle): send what it needs to a channel instead.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::watch::Report;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let report = Report::new()
    ///     .threshold(Duration::from_millis(20))
    ///     .on_slow_poll(|slow| assert_eq!(slow.index, Some(1)));
    /// let children = [Duration::ZERO, Duration::from_millis(30)].map(|d| async move {
    ///     std::thread::sleep(d);
    /// });
    /// awaitkit::gather(report.watch_each(children)).await;
    /// # });
    /// ```
    pub fn on_slow_poll(self, hook: impl Fn(&SlowPoll<'_>) + Send + Sync + 'static) -> Self {
        let old = self.lock().on_slow.replace(Arc::new(hook));
        // After the lock: its captures' destructors may do anything; if they
        // panic, this handle is dropped before that panic propagates.
        crate::unwind::after_dropping(self, move |panics| panics.catch(move || drop(old)))
    }

    /// Wraps `future` as a child of this report, named `name`.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::watch::Report;
    /// # futures::executor::block_on(async {
    /// let report = Report::new();
    /// let (a, b) = awaitkit::gather!(
    ///     report.watch("a", async { 1 }),
    ///     report.watch("b", async { 2 }),
    /// )
    /// .await;
    /// assert_eq!((a, b), (1, 2));
    /// assert_eq!(report.len(), 2);
    /// # });
    /// ```
    pub fn watch<F: IntoFuture>(
        &self,
        name: impl Into<Cow<'static, str>>,
        future: F,
    ) -> Watch<F::IntoFuture> {
        self.register(Some(name.into()), future)
    }

    /// Wraps every future of `futures` as an unnamed child, in order: the
    /// first one's index is the number of children already watched (0 for
    /// a fresh report), so indices are input positions.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::watch::Report;
    /// # futures::executor::block_on(async {
    /// let report = Report::new();
    /// let out = awaitkit::gather(report.watch_each((0..3).map(|i| async move { i * 10 }))).await;
    /// assert_eq!(out, [0, 10, 20]);
    /// assert_eq!(report.children()[2].label(), "#2");
    /// # });
    /// ```
    pub fn watch_each<I>(&self, futures: I) -> WatchEach<I::IntoIter>
    where
        I: IntoIterator<Item: IntoFuture>,
    {
        WatchEach {
            report: Some(self.clone()),
            futures: Some(futures.into_iter()),
        }
    }

    fn register<F: IntoFuture>(
        &self,
        name: Option<Cow<'static, str>>,
        future: F,
    ) -> Watch<F::IntoFuture> {
        // User code, first: a conversion that panics registers nothing.
        let future = future.into_future();
        // Until the clock's calibration is frozen, this moves it along (then
        // it is one atomic load).
        let _ = counter::scale();
        let (threshold, cutoff, on_slow, index) = {
            let mut inner = self.lock();
            inner.children.push(Entry {
                name: name.clone(),
                ticks: Ticks::default(),
                outcome: Outcome::Running,
            });
            let index = inner.children.len() - 1;
            (inner.threshold, inner.cutoff, inner.on_slow.clone(), index)
        };
        let meta = Meta::with_cutoff(name, threshold, cutoff, on_slow);
        Watch::new(future, meta).attach(Slot {
            report: self.shared.clone(),
            index,
        })
    }

    /// Every child, in the order watched.
    ///
    /// # Examples
    ///
    /// ```
    /// let report = awaitkit::watch::Report::new();
    /// let _fut = report.watch("a", async {});
    /// assert_eq!(report.children()[0].outcome, awaitkit::watch::Outcome::Running);
    /// ```
    pub fn children(&self) -> Vec<ChildReport> {
        let inner = self.lock();
        let scale = counter::scale();
        let now = counter::now();
        inner
            .children
            .iter()
            .enumerate()
            .map(|(index, e)| {
                let mut ticks = e.ticks;
                if e.outcome == Outcome::Running && ticks.polls > 0 {
                    // Still running: wall time so far.
                    ticks.last = ticks.last.max(now);
                }
                ChildReport {
                    index,
                    name: e.name.clone(),
                    stats: ticks.to_stats_with(scale),
                    outcome: e.outcome,
                }
            })
            .collect()
    }

    /// The children that blocked the executor: at least one poll at or
    /// over the threshold. Longest poll first.
    ///
    /// # Examples
    ///
    /// See [`Report`].
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let report = awaitkit::watch::Report::new();
    /// report.watch("fast", async {}).await;
    /// assert!(report.blocking().is_empty());
    /// # });
    /// ```
    pub fn blocking(&self) -> Vec<ChildReport> {
        blocking_of(self.children())
    }

    /// The `n` children with the longest wall time, longest first.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let report = awaitkit::watch::Report::new();
    /// let children = [1, 20, 5].map(|ms| {
    ///     report.watch(format!("{ms} ms"), futures_timer::Delay::new(Duration::from_millis(ms)))
    /// });
    /// awaitkit::gather(children).await;
    /// assert_eq!(report.slowest(1)[0].label(), "20 ms");
    /// # });
    /// ```
    pub fn slowest(&self, n: usize) -> Vec<ChildReport> {
        slowest_of(self.children(), n)
    }

    /// How many children have been watched.
    ///
    /// # Examples
    ///
    /// ```
    /// let report = awaitkit::watch::Report::new();
    /// let _a = report.watch("a", async {});
    /// assert_eq!(report.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.lock().children.len()
    }

    /// Whether no child has been watched.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(awaitkit::watch::Report::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.lock().children.is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.shared)
    }
}

/// The children with a slow poll, longest poll first.
fn blocking_of(children: Vec<ChildReport>) -> Vec<ChildReport> {
    let mut children: Vec<_> = children
        .into_iter()
        .filter(|c| c.stats.slow_polls > 0)
        .collect();
    children.sort_by_key(|c| std::cmp::Reverse(c.stats.longest_poll));
    children
}

/// The `n` children with the longest wall time, longest first.
fn slowest_of(mut children: Vec<ChildReport>, n: usize) -> Vec<ChildReport> {
    children.sort_by_key(|c| std::cmp::Reverse(c.stats.wall));
    children.truncate(n);
    children
}

fn lock(shared: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A hook never runs under this lock, and nothing under it panics; but
    // a report is diagnostics: never turn a poisoned lock into a panic.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for Report {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("Report")
            .field("threshold", &inner.threshold)
            .field("children", &inner.children.len())
            .finish_non_exhaustive()
    }
}

/// A summary: the counts, the children that blocked the executor, and the
/// five slowest.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let children = self.children();
        let threshold = self.lock().threshold;
        let count = |o| children.iter().filter(|c| c.outcome == o).count();
        let busy: Duration = children.iter().map(|c| c.stats.busy).sum();
        write!(
            f,
            "{} children: {} completed, {} running, {} cancelled, {} panicked; busy {:.1?} in total",
            children.len(),
            count(Outcome::Completed),
            count(Outcome::Running),
            count(Outcome::Cancelled),
            count(Outcome::Panicked),
            busy,
        )?;
        // One snapshot for the whole summary, so its parts agree.
        let blocking = blocking_of(children.clone());
        if blocking.is_empty() {
            write!(f, "\nno poll reached {threshold:?}")?;
        } else {
            write!(
                f,
                "\nblocked the executor (a poll over the threshold: {threshold:?} unless set per child):"
            )?;
            for child in &blocking {
                write!(f, "\n  {child}")?;
            }
        }
        if !children.is_empty() {
            f.write_str("\nslowest:")?;
            for child in slowest_of(children, 5) {
                write!(f, "\n  {child}")?;
            }
        }
        Ok(())
    }
}

/// Iterator for [`Report::watch_each`]: each future wrapped in a
/// [`Watch`] registered with the report as it is produced.
///
/// Dropped, it drops the iterator of futures not taken yet, then its handle
/// to the report, each on its own. The iterator's own drop is its type's: a
/// `Vec`'s iterator drops its remaining futures as the `Vec` would, so two
/// of them panicking in their destructors abort the process there too.
///
/// # Examples
///
/// ```
/// let report = awaitkit::watch::Report::new();
/// let mut each = report.watch_each([async { 1 }]);
/// assert!(each.next().is_some());
/// assert!(each.next().is_none());
/// ```
#[must_use = "iterators are lazy and do nothing unless consumed"]
pub struct WatchEach<I> {
    // Both `Some` until the drop, which drops each on its own (the last
    // report handle drops the report's hook: user code).
    report: Option<Report>,
    futures: Option<I>,
}

impl<I> Drop for WatchEach<I> {
    fn drop(&mut self) {
        let mut panics = crate::unwind::Panics::default();
        panics.drop_all(self.futures.take());
        panics.drop_all(self.report.take());
        panics.resume();
    }
}

impl<I> Iterator for WatchEach<I>
where
    I: Iterator<Item: IntoFuture>,
{
    type Item = Watch<<I::Item as IntoFuture>::IntoFuture>;

    fn next(&mut self) -> Option<Self::Item> {
        let future = self.futures.as_mut()?.next()?;
        Some(self.report.as_ref()?.register(None, future))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.futures
            .as_ref()
            .map_or((0, Some(0)), Iterator::size_hint)
    }
}

impl<I: ExactSizeIterator<Item: IntoFuture>> ExactSizeIterator for WatchEach<I> {}

impl<I: fmt::Debug> fmt::Debug for WatchEach<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("WatchEach");
        if let Some(futures) = &self.futures {
            d.field("futures", futures);
        }
        d.finish_non_exhaustive()
    }
}

/// A watched child's place in its report.
pub(crate) struct Slot {
    report: Arc<Mutex<Inner>>,
    pub(crate) index: usize,
}

impl Slot {
    /// Records what a running child has measured so far.
    pub(super) fn update(&self, ticks: Ticks) {
        lock(&self.report).children[self.index].ticks = ticks;
    }

    /// Renames the child.
    pub(super) fn rename(&self, name: Cow<'static, str>) {
        lock(&self.report).children[self.index].name = Some(name);
    }

    /// Records how the child ended.
    pub(super) fn deliver(self, ticks: Ticks, outcome: Outcome) {
        let mut inner = lock(&self.report);
        let entry = &mut inner.children[self.index];
        entry.ticks = ticks;
        entry.outcome = outcome;
    }
}
