//! Panic injection (issue 14): make the k-th call into user code panic, for
//! every k, and check what the library promises afterwards (SPEC §1.13–1.15).
//!
//! * [`Plan`]: a shared counter of calls into user-supplied code. The run
//!   with fault `k` panics (payload [`Injected`], through `panic_any`) at the
//!   k-th call; the run with `k = 0` only counts.
//! * User code, instrumented: [`Tracked`] (any future's `poll` and `Drop`;
//!   [`Ctx::parked`] and friends build children from it), [`Probe`] (a waker
//!   whose `clone`, `wake`, `wake_by_ref` and `drop` count, built on a
//!   `RawWaker` vtable and optionally forwarding to an inner waker),
//!   [`Substitute`] (a future that polls its child with a probe's waker in
//!   place of its own), [`Ctx::hit`] for callbacks, hooks, predicates and
//!   managers, and (feature `test-util`) `FaultTimer`, a [`Timer`] over a
//!   `ManualClock` whose `now`, `sleep_until`, `reset` and sleeps panic.
//! * [`Book`]: per child, how often it was dropped, where it was first
//!   polled, and a registry of live pinned addresses (inserted at the first
//!   poll, removed in `Drop`): after a run every child is dropped exactly
//!   once, never moved while pinned, never polled after `Ready`, and the
//!   registry is empty.
//! * [`explore`]: runs a scenario once without a fault to count the calls,
//!   then once per k, each run on its own thread under a watchdog; collects
//!   every broken invariant with the scenario, k and the call that panicked.
//! * [`Run`]: drives a combinator by hand (a tiny script: poll, fire a child,
//!   advance the clock, drop), checking for lost wake-ups, that a future a
//!   panic unwound through refuses further polls with a clear message, or
//!   that it keeps working when it is documented to. [`Waiter`] does the
//!   same for one waiter of a primitive (an acquire, a pool get).
//! * The panic hook ([`QuietHook`]): while an exploration runs, the
//!   process-wide hook swallows only panics whose payload is [`Injected`]
//!   and panics raised inside a harness step on the thread running that step
//!   (the step captures and reports them itself, with their location);
//!   everything else — other tests' panics, on their own threads — goes to
//!   the hook it replaced, which is put back when the last exploration ends.
//!
//! Environment: `AWAITKIT_PI_RUN_SECS` (the per-run watchdog, 5 s by
//! default), `AWAITKIT_PI_TRACE` (print the fault-free run's calls, to map
//! each k to its call), `AWAITKIT_PI_K` (run only that k after the
//! fault-free run: to debug one failure, or bisect a leak report).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomPinned;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::time::Duration;

#[cfg(feature = "test-util")]
pub(crate) use timer::FaultTimer;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// The fault plan
// ---------------------------------------------------------------------------

/// The payload of an injected panic: which call (k) and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Injected {
    pub(crate) k: usize,
    pub(crate) site: String,
}

/// A shared counter of calls into user code; the `fail_at`-th panics.
#[derive(Clone, Debug)]
pub(crate) struct Plan(Arc<PlanInner>);

#[derive(Debug)]
struct PlanInner {
    fail_at: usize,
    calls: AtomicUsize,
    fired: Mutex<Option<Injected>>,
    /// The site of every call, in order (names the k-th call in reports).
    trace: Mutex<Vec<String>>,
    /// Why the fault was not injected, if its call came while unwinding.
    skipped: Mutex<Option<String>>,
}

impl Plan {
    /// `fail_at == 0`: count only.
    pub(crate) fn new(fail_at: usize) -> Self {
        Plan(Arc::new(PlanInner {
            fail_at,
            calls: AtomicUsize::new(0),
            fired: Mutex::new(None),
            trace: Mutex::new(Vec::new()),
            skipped: Mutex::new(None),
        }))
    }

    /// One call into user code at `site`; panics with [`Injected`] if it is
    /// the planned one (unless this thread is already unwinding: a second
    /// panic would abort the whole test binary).
    pub(crate) fn hit(&self, site: impl FnOnce() -> String) {
        let k = self.0.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let site = site();
        lock(&self.0.trace).push(site.clone());
        if k != self.0.fail_at {
            return;
        }
        if std::thread::panicking() {
            *lock(&self.0.skipped) = Some(format!("call {k} ({site}) came while unwinding"));
            return;
        }
        let injected = Injected { k, site };
        *lock(&self.0.fired) = Some(injected.clone());
        std::panic::panic_any(injected);
    }

    pub(crate) fn calls(&self) -> usize {
        self.0.calls.load(Ordering::SeqCst)
    }

    pub(crate) fn fired(&self) -> Option<Injected> {
        lock(&self.0.fired).clone()
    }

    fn trace(&self) -> Vec<String> {
        lock(&self.0.trace).clone()
    }

    fn skipped(&self) -> Option<String> {
        lock(&self.0.skipped).clone()
    }
}

// ---------------------------------------------------------------------------
// The panic hook and catching
// ---------------------------------------------------------------------------

thread_local! {
    /// > 0 while a harness step runs on this thread.
    static QUIET: Cell<usize> = const { Cell::new(0) };
    /// Message and location of the last non-injected panic on this thread.
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

type Hook = Arc<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync>;

/// How many [`QuietHook`]s are alive, and the hook they replaced.
static HOOK: Mutex<(usize, Option<Hook>)> = Mutex::new((0, None));

/// While any guard is alive, the process-wide panic hook is the harness's:
/// it swallows panics whose payload is [`Injected`] and panics raised
/// inside a harness step on the thread running it (the step reports them
/// itself, with their location), and hands every other panic — another
/// test's, on another thread — to the hook it replaced. The last guard
/// dropped puts that hook back. Install and restore are serialized by a
/// lock, and only this harness sets the hook in this test binary.
pub(crate) struct QuietHook(());

impl QuietHook {
    pub(crate) fn install() -> QuietHook {
        let mut state = lock(&HOOK);
        if state.0 == 0 {
            let previous: Hook = Arc::from(std::panic::take_hook());
            state.1 = Some(previous.clone());
            std::panic::set_hook(Box::new(move |info| {
                if info.payload().is::<Injected>() {
                    return;
                }
                let quiet = QUIET.try_with(Cell::get).unwrap_or(0) > 0;
                if quiet {
                    let message = message_of(info.payload());
                    let at = info
                        .location()
                        .map_or_else(String::new, |l| format!(" (at {}:{})", l.file(), l.line()));
                    let _ =
                        LAST.try_with(|last| *last.borrow_mut() = Some(format!("{message}{at}")));
                    return;
                }
                previous(info);
            }));
        }
        state.0 += 1;
        QuietHook(())
    }
}

impl Drop for QuietHook {
    fn drop(&mut self) {
        let mut state = lock(&HOOK);
        state.0 -= 1;
        // (`take_hook` cannot be called while unwinding: the harness's hook
        // then stays, still forwarding everything it does not swallow.)
        if state.0 == 0 && !std::thread::panicking() {
            if let Some(previous) = state.1.take() {
                drop(std::panic::take_hook());
                std::panic::set_hook(Box::new(move |info| previous(info)));
            }
        }
    }
}

/// What a step's panic was.
#[derive(Debug)]
pub(crate) enum Caught {
    Injected(Injected),
    /// Any other panic: its message and where it was raised.
    Other(String),
}

fn classify(payload: Box<dyn Any + Send>) -> Caught {
    match payload.downcast::<Injected>() {
        Ok(injected) => Caught::Injected(*injected),
        Err(payload) => {
            let located = LAST.with(|last| last.borrow_mut().take());
            Caught::Other(located.unwrap_or_else(|| message_of(&*payload)))
        }
    }
}

pub(crate) fn message_of(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(i) = payload.downcast_ref::<Injected>() {
        format!("<injected panic #{} in {}>", i.k, i.site)
    } else {
        "<non-string payload>".to_owned()
    }
}

/// Runs `f`, catching any panic (quietly: it is reported by the caller).
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, Caught> {
    struct Quiet;
    impl Drop for Quiet {
        fn drop(&mut self) {
            QUIET.with(|q| q.set(q.get() - 1));
        }
    }
    QUIET.with(|q| q.set(q.get() + 1));
    let _quiet = Quiet;
    LAST.with(|last| *last.borrow_mut() = None);
    catch_unwind(AssertUnwindSafe(f)).map_err(classify)
}

/// Whether a panic refuses a poll ("polled after …", "resumed after …").
pub(crate) fn is_refusal(message: &str) -> bool {
    message.contains("polled after") || message.contains("resumed after")
}

/// Whether a refusal after a panic says what happened: the crate's "polled
/// after a panic in one of its futures", an `async` block's "resumed after
/// panicking" — not "polled after completion" for a future that never
/// completed.
pub(crate) fn is_clear_refusal(message: &str) -> bool {
    message.contains("panic")
}

// ---------------------------------------------------------------------------
// Wakers: probes
// ---------------------------------------------------------------------------

/// What happened to a probe waker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WakerEvent {
    Clone,
    Wake,
    WakeByRef,
    Drop,
}

type Reenter = Arc<dyn Fn(WakerEvent) + Send + Sync>;

/// A waker that is user code: every `clone`, `wake`, `wake_by_ref` and
/// `drop` is a call of the plan (and may run a re-entrant callback first),
/// and each is forwarded to an inner waker if there is one.
#[derive(Clone)]
pub(crate) struct Probe(Arc<ProbeInner>);

struct ProbeInner {
    plan: Plan,
    label: String,
    forward: Option<Waker>,
    reenter: Option<Reenter>,
    /// Calls of `wake`/`wake_by_ref` (counted before the call can panic).
    wakes: AtomicUsize,
    /// Live `Waker` handles built on this probe.
    handles: AtomicIsize,
}

static PROBE_VTABLE: RawWakerVTable =
    RawWakerVTable::new(probe_clone, probe_wake, probe_wake_by_ref, probe_drop);

impl ProbeInner {
    fn event(&self, event: WakerEvent) {
        if let Some(f) = &self.reenter {
            f(event);
        }
        let what = match event {
            WakerEvent::Clone => "clone",
            WakerEvent::Wake => "wake",
            WakerEvent::WakeByRef => "wake_by_ref",
            WakerEvent::Drop => "drop",
        };
        self.plan.hit(|| format!("{} {what}", self.label));
    }
}

unsafe fn probe_clone(data: *const ()) -> RawWaker {
    // SAFETY: `data` is an `Arc<ProbeInner>` pointer kept alive by the waker
    // being cloned.
    let inner = unsafe { &*data.cast::<ProbeInner>() };
    inner.event(WakerEvent::Clone); // may panic: nothing is cloned then
    inner.handles.fetch_add(1, Ordering::SeqCst);
    // SAFETY: as above; the new handle owns the new strong count.
    unsafe { Arc::increment_strong_count(data.cast::<ProbeInner>()) };
    RawWaker::new(data, &PROBE_VTABLE)
}

unsafe fn probe_wake(data: *const ()) {
    // SAFETY: the waker being consumed owns one strong count; it is given
    // back when `inner` drops, also while unwinding.
    let inner = unsafe { Arc::from_raw(data.cast::<ProbeInner>()) };
    inner.handles.fetch_sub(1, Ordering::SeqCst);
    inner.wakes.fetch_add(1, Ordering::SeqCst);
    inner.event(WakerEvent::Wake);
    if let Some(w) = &inner.forward {
        w.wake_by_ref();
    }
}

unsafe fn probe_wake_by_ref(data: *const ()) {
    // SAFETY: the waker keeps its strong count.
    let inner = unsafe { &*data.cast::<ProbeInner>() };
    inner.wakes.fetch_add(1, Ordering::SeqCst);
    inner.event(WakerEvent::WakeByRef);
    if let Some(w) = &inner.forward {
        w.wake_by_ref();
    }
}

unsafe fn probe_drop(data: *const ()) {
    // SAFETY: the dropped waker owns one strong count, released when `inner`
    // drops (also if the event below panics).
    let inner = unsafe { Arc::from_raw(data.cast::<ProbeInner>()) };
    inner.handles.fetch_sub(1, Ordering::SeqCst);
    inner.event(WakerEvent::Drop);
}

impl Probe {
    pub(crate) fn new(plan: &Plan, label: impl Into<String>) -> Self {
        Self::build(plan, label.into(), None, None)
    }

    fn build(plan: &Plan, label: String, forward: Option<Waker>, reenter: Option<Reenter>) -> Self {
        Probe(Arc::new(ProbeInner {
            plan: plan.clone(),
            label,
            forward,
            reenter,
            wakes: AtomicUsize::new(0),
            handles: AtomicIsize::new(0),
        }))
    }

    /// A new handle (not a clone: creating it is not a call of the plan).
    pub(crate) fn waker(&self) -> Waker {
        self.0.handles.fetch_add(1, Ordering::SeqCst);
        let data = Arc::into_raw(self.0.clone()).cast::<()>();
        // SAFETY: the vtable follows the `RawWaker` contract over one strong
        // count of an `Arc<ProbeInner>` per handle.
        unsafe { Waker::from_raw(RawWaker::new(data, &PROBE_VTABLE)) }
    }

    pub(crate) fn wakes(&self) -> usize {
        self.0.wakes.load(Ordering::SeqCst)
    }

    /// Handles not dropped yet (the test's own included).
    pub(crate) fn live(&self) -> isize {
        self.0.handles.load(Ordering::SeqCst)
    }

    pub(crate) fn label(&self) -> &str {
        &self.0.label
    }

    /// Another probe of the same kind (same plan, forwarding and
    /// re-entrant callback) under a new label.
    fn sibling(&self, label: String) -> Probe {
        Probe::build(
            &self.0.plan,
            label,
            self.0.forward.clone(),
            self.0.reenter.clone(),
        )
    }
}

/// Every probe of a run, for the final check.
type Probes = Arc<Mutex<Vec<Probe>>>;

/// Polls its child with a probe's waker instead of its own; the probe
/// forwards to the real waker (captured at each poll). For driving an
/// instrumented waker through a combinator or an executor.
pub(crate) struct Substitute<F> {
    inner: Pin<Box<F>>,
    plan: Plan,
    sink: Probes,
    label: String,
    probe: Option<(Probe, Waker)>,
    outer: Option<Waker>,
}

impl<F: Future> Substitute<F> {
    /// Its probes are checked at the end of `ctx`'s run like the others.
    pub(crate) fn new(ctx: &Ctx, label: impl Into<String>, inner: F) -> Self {
        Substitute {
            inner: Box::pin(inner),
            plan: ctx.plan.clone(),
            sink: ctx.probes.clone(),
            label: label.into(),
            probe: None,
            outer: None,
        }
    }
}

impl<F: Future> Future for Substitute<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if !this.outer.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // A new outer waker: a new probe forwarding to it.
            let probe = Probe::build(
                &this.plan,
                this.label.clone(),
                Some(cx.waker().clone()),
                None,
            );
            let waker = probe.waker();
            lock(&this.sink).push(probe.clone());
            this.outer = Some(cx.waker().clone());
            this.probe = Some((probe, waker)); // the old one is dropped here
        }
        let (_, waker) = this.probe.as_ref().expect("set above");
        this.inner.as_mut().poll(&mut Context::from_waker(waker))
    }
}

// ---------------------------------------------------------------------------
// Children: the book, tracked futures, gates
// ---------------------------------------------------------------------------

/// What happened to every tracked future.
#[derive(Clone, Default)]
pub(crate) struct Book(Arc<Mutex<BookInner>>);

#[derive(Default)]
struct BookInner {
    records: Vec<Record>,
    /// Pinned addresses of live, polled children → their id.
    live: HashMap<usize, usize>,
    notes: Vec<String>,
}

struct Record {
    label: Arc<str>,
    drops: usize,
    addr: Option<usize>,
    ready: bool,
}

impl Book {
    fn register(&self, label: Arc<str>) -> usize {
        let mut b = lock(&self.0);
        b.records.push(Record {
            label,
            drops: 0,
            addr: None,
            ready: false,
        });
        b.records.len() - 1
    }

    fn polled(&self, id: usize, addr: usize) {
        let mut guard = lock(&self.0);
        let b = &mut *guard;
        let mut notes = Vec::new();
        let rec = &mut b.records[id];
        if rec.ready {
            notes.push(format!("{} was polled after it returned Ready", rec.label));
        }
        if rec.drops > 0 {
            notes.push(format!("{} was polled after it was dropped", rec.label));
        }
        match rec.addr {
            None => {
                rec.addr = Some(addr);
                if let Some(other) = b.live.insert(addr, id) {
                    let other = &b.records[other].label;
                    notes.push(format!(
                        "{other} was freed without being dropped: its pinned address \
                         {addr:#x} now holds {}",
                        b.records[id].label
                    ));
                }
            }
            Some(first) if first != addr => notes.push(format!(
                "{} moved while pinned: first polled at {first:#x}, polled again at {addr:#x}",
                rec.label
            )),
            Some(_) => {}
        }
        b.notes.extend(notes);
    }

    fn finished(&self, id: usize) {
        lock(&self.0).records[id].ready = true;
    }

    fn dropped(&self, id: usize, addr: usize) {
        let mut guard = lock(&self.0);
        let b = &mut *guard;
        let rec = &mut b.records[id];
        rec.drops += 1;
        let mut note = None;
        if rec.drops == 2 {
            note = Some(format!("{} was dropped twice", rec.label));
        }
        if let Some(first) = rec.addr {
            if first != addr {
                note = Some(format!(
                    "{} moved while pinned: first polled at {first:#x}, dropped at {addr:#x}",
                    rec.label
                ));
            }
            if b.live.get(&first) == Some(&id) {
                b.live.remove(&first);
            }
        }
        b.notes.extend(note);
    }

    /// How often the child was dropped.
    pub(crate) fn drops(&self, id: usize) -> usize {
        lock(&self.0).records[id].drops
    }

    /// Every broken invariant, once everything should have been dropped.
    fn verify(&self) -> Vec<String> {
        let b = lock(&self.0);
        let mut out = b.notes.clone();
        for rec in &b.records {
            if rec.drops == 0 {
                out.push(match rec.addr {
                    Some(addr) => format!(
                        "{} was never dropped: its pinned address {addr:#x} is still in the \
                         registry (its memory was freed, or leaked, without running its destructor)",
                        rec.label
                    ),
                    None => format!("{} was never dropped (leaked)", rec.label),
                });
            }
        }
        out
    }
}

/// Any future made user code: its `poll` and `Drop` are calls of the plan,
/// and the book follows it. `!Unpin`, like an `async` block.
pub(crate) struct Tracked<F> {
    id: usize,
    label: Arc<str>,
    book: Book,
    plan: Plan,
    inner: F,
    _pin: PhantomPinned,
}

impl<F> Tracked<F> {
    pub(crate) fn id(&self) -> usize {
        self.id
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned (never moved out; dropped
        // in place with `self`), the other fields are never pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let addr = std::ptr::from_mut(this) as usize;
        this.book.polled(this.id, addr);
        this.plan.hit(|| format!("{} poll", this.label));
        // SAFETY: see above.
        let inner = unsafe { Pin::new_unchecked(&mut this.inner) };
        let out = inner.poll(cx);
        if out.is_ready() {
            this.book.finished(this.id);
        }
        out
    }
}

impl<F> Drop for Tracked<F> {
    fn drop(&mut self) {
        let addr = std::ptr::from_mut(self) as usize;
        self.book.dropped(self.id, addr);
        self.plan.hit(|| format!("{} drop", self.label));
    }
}

/// Where a parked child keeps its waker; the test opens it.
#[derive(Default)]
pub(crate) struct Gate {
    open: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// The test's side of a parked child.
#[derive(Clone)]
pub(crate) struct Trigger(Arc<Gate>);

impl Trigger {
    /// Lets the child finish and wakes it (by value). Returns whether a
    /// waker was parked, i.e. the child was waiting.
    pub(crate) fn fire(&self) -> bool {
        self.0.open.store(true, Ordering::SeqCst);
        let waker = lock(&self.0.waker).take();
        match waker {
            Some(w) => {
                w.wake();
                true
            }
            None => false,
        }
    }

    /// A spurious wake (by reference, without cloning: the only user code
    /// it runs is the wake itself); the child stays pending.
    pub(crate) fn nudge(&self) -> bool {
        let slot = lock(&self.0.waker);
        match slot.as_ref() {
            Some(w) => {
                w.wake_by_ref();
                true
            }
            None => false,
        }
    }

    pub(crate) fn is_waiting(&self) -> bool {
        lock(&self.0.waker).is_some()
    }
}

/// How a child behaves.
pub(crate) enum Mode {
    /// Ready at its first poll.
    Ready,
    /// Wakes itself and returns `Pending` this many times, then `Ready`.
    Yield(usize),
    /// Parks its waker until its [`Trigger`] fires.
    Parked(Arc<Gate>),
    /// Pending forever, waking nobody.
    Never,
}

/// The behaviour inside a child (plain, `Unpin`).
pub(crate) struct Behave<O> {
    mode: Mode,
    out: Option<O>,
}

impl<O> Unpin for Behave<O> {}

impl<O> Future for Behave<O> {
    type Output = O;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<O> {
        let this = &mut *self;
        let ready = match &mut this.mode {
            Mode::Ready => true,
            Mode::Never => false,
            Mode::Yield(0) => true,
            Mode::Yield(n) => {
                *n -= 1;
                cx.waker().wake_by_ref();
                false
            }
            Mode::Parked(gate) => {
                if gate.open.load(Ordering::SeqCst) {
                    true
                } else {
                    let old = lock(&gate.waker).replace(cx.waker().clone());
                    drop(old);
                    if gate.open.load(Ordering::SeqCst) {
                        cx.waker().wake_by_ref();
                    }
                    false
                }
            }
        };
        match this.out.take() {
            Some(out) if ready => Poll::Ready(out),
            // Not yet: keep the output.
            Some(out) => {
                this.out = Some(out);
                Poll::Pending
            }
            // Polled after `Ready`: the book records it; stay pending.
            None => Poll::Pending,
        }
    }
}

impl<O> Drop for Behave<O> {
    fn drop(&mut self) {
        if let Mode::Parked(gate) = &self.mode {
            let waker = lock(&gate.waker).take();
            drop(waker);
        }
    }
}

/// A child: a tracked behaviour.
pub(crate) type Child<O> = Tracked<Behave<O>>;

/// Makes tracked futures (see [`Ctx::tracker`]).
#[derive(Clone)]
pub(crate) struct Tracker {
    pub(crate) plan: Plan,
    book: Book,
}

impl Tracker {
    pub(crate) fn track<F>(&self, label: impl Into<String>, inner: F) -> Tracked<F> {
        let label: Arc<str> = label.into().into();
        Tracked {
            id: self.book.register(label.clone()),
            label,
            book: self.book.clone(),
            plan: self.plan.clone(),
            inner,
            _pin: PhantomPinned,
        }
    }

    pub(crate) fn child<O>(&self, label: impl Into<String>, mode: Mode, out: O) -> Child<O> {
        self.track(
            label,
            Behave {
                mode,
                out: Some(out),
            },
        )
    }
}

// ---------------------------------------------------------------------------
// The context of one run
// ---------------------------------------------------------------------------

/// The result of a harness step.
#[derive(Debug)]
pub(crate) enum Step<T> {
    Done(T),
    /// The injected panic unwound out of the step.
    Injected,
    /// Another panic (already recorded as a violation by [`Ctx::step`]).
    Failed(String),
}

impl<T> Step<T> {
    pub(crate) fn done(self) -> Option<T> {
        match self {
            Step::Done(v) => Some(v),
            _ => None,
        }
    }
}

/// One run of a scenario: the plan, the book, the probes, the violations.
pub(crate) struct Ctx {
    pub(crate) plan: Plan,
    pub(crate) book: Book,
    probes: Probes,
    violations: RefCell<Vec<String>>,
    at: Arc<Mutex<String>>,
    /// Where the injected panic unwound out (the step's name).
    escaped: RefCell<Option<String>>,
    #[cfg(feature = "test-util")]
    timer: std::cell::OnceCell<FaultTimer>,
}

impl Ctx {
    fn new(plan: Plan, at: Arc<Mutex<String>>) -> Self {
        Ctx {
            plan,
            book: Book::default(),
            probes: Probes::default(),
            violations: RefCell::new(Vec::new()),
            at,
            escaped: RefCell::new(None),
            #[cfg(feature = "test-util")]
            timer: std::cell::OnceCell::new(),
        }
    }

    /// Records a broken invariant.
    pub(crate) fn fail(&self, msg: impl Into<String>) {
        self.violations.borrow_mut().push(msg.into());
    }

    pub(crate) fn check(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(msg());
        }
    }

    pub(crate) fn check_eq<T: PartialEq + std::fmt::Debug>(&self, what: &str, got: T, want: T) {
        if got != want {
            self.fail(format!("{what}: got {got:?}, expected {want:?}"));
        }
    }

    /// A call into user code (a callback, hook, predicate, manager method).
    pub(crate) fn hit(&self, site: impl FnOnce() -> String) {
        self.plan.hit(site);
    }

    /// The injected panic, once it happened.
    pub(crate) fn fired(&self) -> Option<Injected> {
        self.plan.fired()
    }

    /// `Some("poll" | "drop" | …)` if the injected panic was in `label`'s code.
    pub(crate) fn fault_in(&self, label: &str) -> Option<String> {
        let fired = self.fired()?;
        let rest = fired.site.strip_prefix(label)?.strip_prefix(' ')?;
        Some(rest.to_owned())
    }

    /// Where the injected panic unwound out, if it did.
    pub(crate) fn escaped(&self) -> Option<String> {
        self.escaped.borrow().clone()
    }

    /// Runs one step of the scenario, catching panics: the injected one is
    /// `Step::Injected`; any other is recorded as a violation.
    pub(crate) fn step<T>(&self, what: &str, f: impl FnOnce() -> T) -> Step<T> {
        match self.step_raw(what, f) {
            Ok(v) => Step::Done(v),
            Err(Caught::Injected(_)) => Step::Injected,
            Err(Caught::Other(msg)) => {
                self.fail(format!("unexpected panic in `{what}`: {msg}"));
                Step::Failed(msg)
            }
        }
    }

    /// [`Ctx::step`] that leaves non-injected panics to the caller.
    pub(crate) fn step_raw<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T, Caught> {
        what.clone_into(&mut lock(&self.at));
        let r = catch(f);
        if let Err(Caught::Injected(_)) = &r {
            let mut escaped = self.escaped.borrow_mut();
            if escaped.is_none() {
                *escaped = Some(what.to_owned());
            }
        }
        r
    }

    /// Drops `value` as a step.
    pub(crate) fn drop_step<T>(&self, what: &str, value: T) -> Step<()> {
        self.step(what, move || drop(value))
    }

    /// A probe waker whose handles are checked at the end of the run.
    pub(crate) fn probe(&self, label: impl Into<String>) -> Probe {
        let probe = Probe::new(&self.plan, label);
        lock(&self.probes).push(probe.clone());
        probe
    }

    /// A probe like `like` (same forwarding and re-entrant callback).
    pub(crate) fn probe_like(&self, like: &Probe, label: impl Into<String>) -> Probe {
        let probe = like.sibling(label.into());
        lock(&self.probes).push(probe.clone());
        probe
    }

    /// A probe that also calls `reenter` on every event (a waker that calls
    /// back into the primitive that holds it).
    pub(crate) fn reentrant_probe(
        &self,
        label: impl Into<String>,
        reenter: impl Fn(WakerEvent) + Send + Sync + 'static,
    ) -> Probe {
        let probe = Probe::build(&self.plan, label.into(), None, Some(Arc::new(reenter)));
        lock(&self.probes).push(probe.clone());
        probe
    }

    /// Any future, made a tracked child.
    pub(crate) fn track<F>(&self, label: impl Into<String>, inner: F) -> Tracked<F> {
        self.tracker().track(label, inner)
    }

    pub(crate) fn child<O>(&self, label: impl Into<String>, mode: Mode, out: O) -> Child<O> {
        self.tracker().child(label, mode, out)
    }

    /// The plan and the book, to make tracked children later (`Send`,
    /// `'static`: for managers and operations that create futures).
    pub(crate) fn tracker(&self) -> Tracker {
        Tracker {
            plan: self.plan.clone(),
            book: self.book.clone(),
        }
    }

    /// A child that parks until its trigger fires.
    pub(crate) fn parked<O>(&self, label: impl Into<String>, out: O) -> (Child<O>, Trigger) {
        let gate = Arc::new(Gate::default());
        (
            self.child(label, Mode::Parked(gate.clone()), out),
            Trigger(gate),
        )
    }

    /// `n` parked children `child 0` … with outputs `out(i)`.
    pub(crate) fn parked_n<O>(
        &self,
        n: usize,
        out: impl Fn(usize) -> O,
    ) -> (Vec<Child<O>>, Vec<Trigger>) {
        (0..n)
            .map(|i| self.parked(format!("child {i}"), out(i)))
            .unzip()
    }

    /// The run's fault-injecting timer (one per run, over a fresh clock).
    #[cfg(feature = "test-util")]
    pub(crate) fn timer(&self) -> FaultTimer {
        self.timer
            .get_or_init(|| FaultTimer::new(&self.plan, awaitkit::time::ManualClock::new()))
            .clone()
    }

    /// Advances the run's clock as a step (the sleepers' wakers run in it).
    #[cfg(feature = "test-util")]
    pub(crate) fn advance(&self, by: Duration) -> Step<()> {
        let clock = self.timer().clock.clone();
        self.step(&format!("advance the clock by {by:?}"), move || {
            clock.advance(by)
        })
    }

    /// The end of a run: the book and the probes.
    fn finish(&self) {
        for v in self.book.verify() {
            self.fail(v);
        }
        for probe in lock(&self.probes).iter() {
            let live = probe.live();
            if live != 0 {
                self.fail(format!(
                    "{live} handle(s) of `{}` never dropped (a waker leaked, or was \
                     dropped twice if negative)",
                    probe.label()
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The explorer
// ---------------------------------------------------------------------------

struct Report {
    calls: usize,
    trace: Vec<String>,
    fired: Option<Injected>,
    skipped: Option<String>,
    violations: Vec<String>,
}

/// How long one run may take (`AWAITKIT_PI_RUN_SECS` overrides).
fn run_limit() -> Duration {
    let secs = std::env::var("AWAITKIT_PI_RUN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(secs)
}

type Scenario = Arc<dyn Fn(&Ctx) + Send + Sync>;

/// One run on its own thread; `Err(last step)` if it did not finish in time.
fn run_once(name: &str, k: usize, scenario: &Scenario) -> Result<Report, String> {
    let at = Arc::new(Mutex::new(String::from("<start>")));
    let (tx, rx) = mpsc::channel();
    let thread_at = at.clone();
    let scenario = scenario.clone();
    std::thread::Builder::new()
        .name(format!("{name}#{k}"))
        .stack_size(8 << 20)
        .spawn(move || {
            let plan = Plan::new(k);
            let ctx = Ctx::new(plan.clone(), thread_at);
            if let Err(caught) = catch(|| scenario(&ctx)) {
                ctx.fail(match caught {
                    Caught::Injected(i) => format!(
                        "the injected panic ({}) escaped outside any step of the scenario \
                         (a gap in the harness)",
                        i.site
                    ),
                    Caught::Other(msg) => format!("the scenario panicked outside any step: {msg}"),
                });
            }
            ctx.finish();
            let report = Report {
                calls: plan.calls(),
                trace: plan.trace(),
                fired: plan.fired(),
                skipped: plan.skipped(),
                violations: ctx.violations.take(),
            };
            let _ = tx.send(report);
        })
        .expect("spawn a run thread");
    match rx.recv_timeout(run_limit()) {
        Ok(report) => Ok(report),
        Err(_) => Err(lock(&at).clone()),
    }
}

/// Runs `scenario` without a fault, then once with a panic at each call k
/// the fault-free run made, and fails with every broken invariant.
#[track_caller]
pub(crate) fn explore(name: &str, scenario: impl Fn(&Ctx) + Send + Sync + 'static) {
    let quiet = QuietHook::install();
    let scenario: Scenario = Arc::new(scenario);
    let limit = run_limit();
    let mut failures = Vec::new();
    let base = match run_once(name, 0, &scenario) {
        Ok(base) => base,
        Err(at) => {
            drop(quiet);
            panic!(
                "`{name}`, fault-free run: hang (did not finish within {limit:?}; last step: {at})"
            )
        }
    };
    if std::env::var_os("AWAITKIT_PI_TRACE").is_some() {
        eprintln!("`{name}`: the fault-free run's calls into user code:");
        for (k, site) in base.trace.iter().enumerate() {
            eprintln!("  k={}: {site}", k + 1);
        }
    }
    for v in &base.violations {
        failures.push(format!("fault-free run: {v}"));
    }
    assert!(base.calls > 0, "`{name}` makes no call into user code");
    let only: Option<usize> = std::env::var("AWAITKIT_PI_K")
        .ok()
        .and_then(|s| s.parse().ok());
    let mut hangs = 0;
    for k in (1..=base.calls).filter(|k| only.is_none_or(|only| only == *k)) {
        let site = base.trace.get(k - 1).map_or("?", String::as_str);
        match run_once(name, k, &scenario) {
            Err(at) => {
                failures.push(format!(
                    "k={k} (panic in {site}): hang: the run did not finish within {limit:?} \
                     (last step: {at})"
                ));
                hangs += 1;
                if hangs == 2 {
                    failures.push(format!("(stopped after {hangs} hangs)"));
                    break;
                }
            }
            Ok(r) => {
                if r.fired.is_none() {
                    failures.push(format!(
                        "k={k} ({site}): the fault was never injected (the run made {} calls{}): \
                         the scenario is not deterministic",
                        r.calls,
                        r.skipped.map(|s| format!("; {s}")).unwrap_or_default()
                    ));
                }
                for v in r.violations {
                    failures.push(format!("k={k} (panic in {site}): {v}"));
                }
            }
        }
    }
    drop(quiet); // before the report's own panic
    if !failures.is_empty() {
        let total = failures.len();
        let shown: Vec<_> = failures.iter().take(60).cloned().collect();
        panic!(
            "`{name}`: {total} broken invariant(s) over {} runs (calls into user code: {}):\n  {}{}",
            base.calls + 1,
            base.calls,
            shown.join("\n  "),
            if total > shown.len() {
                format!("\n  … and {} more", total - shown.len())
            } else {
                String::new()
            }
        );
    }
}

// ---------------------------------------------------------------------------
// Driving a future by hand
// ---------------------------------------------------------------------------

/// What a future does after a panic unwound out of its poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnPanic {
    /// Documented to refuse further polls (with a clear panic).
    Poisons,
    /// Documented to keep working when polled again.
    Continues,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Live,
    Done,
    Dead,
}

/// A future driven by a script, polled with the `parent waker` probe.
pub(crate) struct Run<'c, F: Future + Unpin> {
    ctx: &'c Ctx,
    name: String,
    fut: Option<F>,
    probe: Probe,
    waker: Option<Waker>,
    policy: OnPanic,
    state: State,
    /// The probe's wake count when the last poll returned `Pending`.
    pending_at: Option<usize>,
    pub(crate) triggers: Vec<Trigger>,
    pub(crate) output: Option<F::Output>,
    /// Stream mode: every `Ready` output, in order (the run stays live).
    pub(crate) items: Vec<F::Output>,
    stream: bool,
    wakers: usize,
    /// The injected panic unwound out of its poll.
    hurt: bool,
    /// A child's own waker panicked instead of passing a wake on.
    wake_lost_by_child: bool,
    pub(crate) polls: usize,
}

impl<'c, F: Future + Unpin> Run<'c, F> {
    pub(crate) fn new(ctx: &'c Ctx, name: impl Into<String>, policy: OnPanic, fut: F) -> Self {
        let probe = ctx.probe("parent waker");
        Run {
            ctx,
            name: name.into(),
            fut: Some(fut),
            waker: Some(probe.waker()),
            probe,
            policy,
            state: State::Live,
            pending_at: None,
            triggers: Vec::new(),
            output: None,
            items: Vec::new(),
            stream: false,
            wakers: 1,
            hurt: false,
            wake_lost_by_child: false,
            polls: 0,
        }
    }

    /// A run over a stream's `next` (see [`NextOf`]): it stays live after
    /// `Ready`, collecting the outputs in `items`; streams stay usable after
    /// a panic (`OnPanic::Continues`).
    pub(crate) fn stream(ctx: &'c Ctx, name: impl Into<String>, fut: F) -> Self {
        let mut run = Self::new(ctx, name, OnPanic::Continues, fut);
        run.stream = true;
        run
    }

    /// Polls with a new parent waker from now on (the combinator must
    /// replace the registered one).
    pub(crate) fn switch_waker(&mut self) {
        self.wakers += 1;
        let probe = self
            .ctx
            .probe_like(&self.probe, format!("parent waker {}", self.wakers));
        let old = self.waker.replace(probe.waker());
        self.probe = probe;
        self.pending_at = None;
        let _ = self.ctx.drop_step("drop the old parent waker", old);
    }

    pub(crate) fn with_triggers(mut self, triggers: Vec<Trigger>) -> Self {
        self.triggers = triggers;
        self
    }

    pub(crate) fn is_live(&self) -> bool {
        self.state == State::Live
    }

    pub(crate) fn is_pending(&self) -> bool {
        self.state == State::Live && self.pending_at.is_some()
    }

    pub(crate) fn fut_mut(&mut self) -> Option<&mut F> {
        self.fut.as_mut()
    }

    /// Polls once (if still live). `Some(true)` if it completed.
    pub(crate) fn poll(&mut self) -> Option<bool> {
        if self.state != State::Live {
            return None;
        }
        self.polls += 1;
        let what = format!("poll `{}` (poll {})", self.name, self.polls);
        let fut = self.fut.as_mut().expect("a live run has its future");
        let waker = self
            .waker
            .as_ref()
            .expect("the waker lives as long as the run");
        // A wake during the poll itself (a self-wake) counts for the next.
        let before = self.probe.wakes();
        let step = match self.ctx.step_raw(&what, || {
            Pin::new(fut).poll(&mut Context::from_waker(waker))
        }) {
            Ok(v) => Step::Done(v),
            Err(Caught::Injected(_)) => Step::Injected,
            // Refusing further polls after the injected panic unwound out
            // of one is fine if the message says why.
            Err(Caught::Other(msg)) if self.hurt && is_refusal(&msg) => {
                if !is_clear_refusal(&msg) {
                    self.ctx.fail(format!(
                        "after the injected panic unwound out of its poll, `{}` refused \
                         further polls with a misleading message (it never completed): {msg}",
                        self.name
                    ));
                }
                self.state = State::Dead;
                return None;
            }
            Err(Caught::Other(msg)) => {
                self.ctx
                    .fail(format!("unexpected panic in `{what}`: {msg}"));
                Step::Failed(msg)
            }
        };
        match step {
            Step::Done(Poll::Ready(out)) => {
                self.pending_at = None;
                if self.stream {
                    self.items.push(out);
                } else {
                    self.output = Some(out);
                    self.state = State::Done;
                }
                Some(true)
            }
            Step::Done(Poll::Pending) => {
                self.pending_at = Some(before);
                Some(false)
            }
            Step::Injected => {
                self.pending_at = None;
                self.hurt = true;
                match self.policy {
                    OnPanic::Poisons => {
                        self.expect_refusal();
                        self.state = State::Dead;
                        None
                    }
                    // It must keep working: poll again at once.
                    OnPanic::Continues => self.poll(),
                }
            }
            Step::Failed(_) => {
                self.state = State::Dead;
                None
            }
        }
    }

    /// After a panic unwound out of its poll: the next poll must panic with
    /// a clear message, never return a made-up result or hang.
    fn expect_refusal(&mut self) {
        let what = format!("poll `{}` again after the panic", self.name);
        let fut = self.fut.as_mut().expect("a live run has its future");
        let waker = self
            .waker
            .as_ref()
            .expect("the waker lives as long as the run");
        match self.ctx.step_raw(&what, || {
            Pin::new(fut).poll(&mut Context::from_waker(waker))
        }) {
            Err(Caught::Other(msg)) if is_clear_refusal(&msg) => {}
            Err(Caught::Other(msg)) if is_refusal(&msg) => self.ctx.fail(format!(
                "after the panic unwound out of its poll, `{}` refused the next poll with a \
                 misleading message (it never delivered a result): {msg}",
                self.name
            )),
            Err(Caught::Other(msg)) => self.ctx.fail(format!(
                "after the panic unwound out of its poll, polling `{}` again panicked with an \
                 unclear message (expected: polled after a panic): {msg}",
                self.name
            )),
            Err(Caught::Injected(_)) => {}
            Ok(Poll::Pending) => self.ctx.fail(format!(
                "after the panic unwound out of its poll, `{}` was polled again and returned \
                 Pending instead of refusing (documented: polling after a panic panics)",
                self.name
            )),
            Ok(Poll::Ready(_)) => self.ctx.fail(format!(
                "after the panic unwound out of its poll, `{}` was polled again and returned \
                 Ready instead of refusing (documented: polling after a panic panics)",
                self.name
            )),
        }
    }

    /// Fires child `i`'s trigger. If the future was waiting for it, its
    /// waker must have been woken by now (else: a lost wake-up).
    pub(crate) fn fire(&mut self, i: usize) {
        let trigger = self.triggers[i].clone();
        let had = self
            .ctx
            .step(&format!("fire child {i}"), move || trigger.fire());
        if self.own_waker_failed(i, &had) {
            return;
        }
        self.check_woken(matches!(had, Step::Done(true) | Step::Injected), || {
            format!("child {i} completed")
        });
    }

    /// The injected panic was the child's own (wrapping) waker failing to
    /// pass the wake on: that wake is lost by the user's code, and the
    /// combinator cannot be expected to complete.
    fn own_waker_failed<T>(&mut self, i: usize, step: &Step<T>) -> bool {
        let own = matches!(step, Step::Injected)
            && self
                .ctx
                .fired()
                .is_some_and(|f| f.site.starts_with(&format!("child {i}'s waker")));
        if own {
            self.wake_lost_by_child = true;
        }
        own
    }

    /// A spurious wake of child `i`.
    pub(crate) fn nudge(&mut self, i: usize) {
        let trigger = self.triggers[i].clone();
        let had = self
            .ctx
            .step(&format!("wake child {i}"), move || trigger.nudge());
        if self.own_waker_failed(i, &had) {
            return;
        }
        self.check_woken(matches!(had, Step::Done(true) | Step::Injected), || {
            format!("child {i} was woken")
        });
    }

    fn check_woken(&self, child_was_waiting: bool, what: impl FnOnce() -> String) {
        if let (true, Some(at)) = (child_was_waiting, self.pending_at) {
            if self.state == State::Live && self.probe.wakes() == at {
                self.ctx.fail(format!(
                    "lost wake-up: {} but `{}`'s waker was not woken (it returned Pending \
                     and would never be polled again)",
                    what(),
                    self.name
                ));
            }
        }
    }

    /// Requires a wake of the parent since the last `Pending` (for events
    /// the scenario causes itself, like advancing the clock).
    pub(crate) fn expect_woken(&self, what: &str) {
        self.check_woken(true, || what.to_owned());
    }

    /// Drops the future now (cancellation).
    pub(crate) fn cancel(&mut self) {
        if let Some(fut) = self.fut.take() {
            self.state = State::Dead;
            let _ = self
                .ctx
                .drop_step(&format!("drop `{}` (cancel)", self.name), fut);
        }
    }

    /// Plays a script: `P` poll, `F<i>` fire child i, `N<i>` nudge child i,
    /// `W` switch to a new parent waker, `X` drop the future, `A<ms>` advance
    /// the clock (feature `test-util`), `E` expect a wake since the last
    /// `Pending` (after advancing the clock past a deadline).
    pub(crate) fn play(&mut self, script: &str) {
        for token in script.split_whitespace() {
            let (op, arg) = token.split_at(1);
            let n = || arg.parse::<usize>().expect("a number in the script");
            match op {
                "P" => {
                    self.poll();
                }
                "F" => self.fire(n()),
                "N" => self.nudge(n()),
                "X" => self.cancel(),
                "W" => self.switch_waker(),
                "E" => self.expect_woken("the clock passed a deadline it waits for"),
                #[cfg(feature = "test-util")]
                "A" => {
                    let _ = self.ctx.advance(Duration::from_millis(n() as u64));
                }
                _ => panic!("bad script token {token:?}"),
            }
        }
    }

    /// Ends the run: checks the output (if it completed), that a future no
    /// panic unwound through did complete (`must_complete`), then drops it.
    pub(crate) fn finish(mut self, must_complete: bool, check: impl FnOnce(&Ctx, F::Output)) {
        if let Some(out) = self.output.take() {
            check(self.ctx, out);
        } else if must_complete && self.state == State::Live && !self.wake_lost_by_child {
            let why = match self.ctx.fired() {
                Some(f) => match self.ctx.escaped() {
                    Some(step) => format!(
                        " and does not refuse further polls (after the injected panic in {}, \
                         which unwound out of `{step}`)",
                        f.site
                    ),
                    None => format!(" (after the injected panic in {}, caught inside)", f.site),
                },
                None => String::new(),
            };
            self.ctx.fail(format!(
                "`{}` did not complete by the end of the script{why}",
                self.name
            ));
        }
        self.cancel();
        let items = std::mem::take(&mut self.items);
        let _ = self.ctx.drop_step("drop the stream's items", items);
        let waker = self.waker.take();
        let _ = self.ctx.drop_step("drop the parent waker", waker);
    }

    /// Takes the stream items collected so far.
    pub(crate) fn take_items(&mut self) -> Vec<F::Output> {
        std::mem::take(&mut self.items)
    }
}

impl<F: Future + Unpin> Drop for Run<'_, F> {
    fn drop(&mut self) {
        // `finish` normally empties these; a scenario that returned early
        // drops them here, still as steps.
        if let Some(fut) = self.fut.take() {
            let _ = self.ctx.drop_step("drop the future", fut);
        }
        let items = std::mem::take(&mut self.items);
        let _ = self.ctx.drop_step("drop the stream's items", items);
        let output = self.output.take();
        let _ = self.ctx.drop_step("drop the output", output);
        if let Some(waker) = self.waker.take() {
            let _ = self.ctx.drop_step("drop the parent waker", waker);
        }
    }
}

/// A stream's next item as a (reusable) future, for [`Run::stream`].
pub(crate) struct NextOf<S>(pub(crate) S);

impl<S: futures::Stream + Unpin> Future for NextOf<S> {
    type Output = Option<S::Item>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll_next(cx)
    }
}

/// A future polled by hand with its own probe waker (a waiter of a
/// primitive): checks the wake contract — a `Pending` that later turns
/// `Ready` must have been woken in between.
pub(crate) struct Waiter<'c, F: Future + Unpin> {
    ctx: &'c Ctx,
    pub(crate) name: String,
    pub(crate) fut: Option<F>,
    probe: Probe,
    waker: Option<Waker>,
    pending_at: Option<usize>,
    pub(crate) output: Option<F::Output>,
    /// It returned `Ready` (its output may have been taken since).
    done: bool,
    /// The injected panic unwound out of this waiter's poll or drop.
    pub(crate) hurt: bool,
}

impl<'c, F: Future + Unpin> Waiter<'c, F> {
    pub(crate) fn new(ctx: &'c Ctx, name: impl Into<String>, fut: F) -> Self {
        let name = name.into();
        let probe = ctx.probe(format!("{name} waker"));
        Waiter {
            ctx,
            waker: Some(probe.waker()),
            probe,
            name,
            fut: Some(fut),
            pending_at: None,
            output: None,
            done: false,
            hurt: false,
        }
    }

    /// [`Waiter::new`] over a future whose creation is user code (it may
    /// call a timer): if making it panics, the waiter is done, empty.
    pub(crate) fn make(ctx: &'c Ctx, name: impl Into<String>, make: impl FnOnce() -> F) -> Self {
        let name = name.into();
        let probe = ctx.probe(format!("{name} waker"));
        Self::make_with_probe(ctx, name, probe, make)
    }

    /// [`Waiter::make`] with a given probe (a re-entrant one).
    pub(crate) fn make_with_probe(
        ctx: &'c Ctx,
        name: impl Into<String>,
        probe: Probe,
        make: impl FnOnce() -> F,
    ) -> Self {
        let name = name.into();
        let fut = ctx.step(&format!("make {name}"), make).done();
        Self::from_parts(ctx, name, probe, fut)
    }

    /// Like [`Waiter::new`] with a given probe (a re-entrant one).
    pub(crate) fn with_probe(ctx: &'c Ctx, name: impl Into<String>, probe: Probe, fut: F) -> Self {
        Self::from_parts(ctx, name.into(), probe, Some(fut))
    }

    fn from_parts(ctx: &'c Ctx, name: String, probe: Probe, fut: Option<F>) -> Self {
        Waiter {
            ctx,
            waker: Some(probe.waker()),
            probe,
            name,
            done: fut.is_none(),
            fut,
            pending_at: None,
            output: None,
            hurt: false,
        }
    }

    pub(crate) fn is_pending(&self) -> bool {
        self.fut.is_some() && !self.done
    }

    pub(crate) fn ctx(&self) -> &'c Ctx {
        self.ctx
    }

    pub(crate) fn was_woken(&self) -> bool {
        self.pending_at.is_some_and(|at| self.probe.wakes() > at)
    }

    /// Polls with its waker; `Some(true)` when it completed now.
    pub(crate) fn poll(&mut self) -> Option<bool> {
        self.poll_accepting(|_| false)
    }

    /// [`Waiter::poll`], where a panic whose message `documented` accepts
    /// is a documented refusal: the waiter is done, without an output.
    pub(crate) fn poll_accepting(&mut self, documented: impl Fn(&str) -> bool) -> Option<bool> {
        if !self.is_pending() {
            return None;
        }
        let fut = self.fut.as_mut().expect("checked");
        let waker = self.waker.as_ref().expect("held until dropped");
        let what = format!("poll {}", self.name);
        // A wake during the poll itself (a self-wake) counts for the next.
        let before = self.probe.wakes();
        let step = match self.ctx.step_raw(&what, || {
            Pin::new(fut).poll(&mut Context::from_waker(waker))
        }) {
            Ok(v) => Step::Done(v),
            Err(Caught::Injected(_)) => Step::Injected,
            Err(Caught::Other(msg)) if documented(&msg) => {
                self.refused();
                return None;
            }
            // Refusing further polls after the injected panic unwound out
            // of one is fine if the message says why.
            Err(Caught::Other(msg)) if self.hurt && is_refusal(&msg) => {
                if !is_clear_refusal(&msg) {
                    self.ctx.fail(format!(
                        "after the injected panic unwound out of its poll, {} refused further \
                         polls with a misleading message (it never completed): {msg}",
                        self.name
                    ));
                }
                self.refused();
                return None;
            }
            Err(Caught::Other(msg)) => {
                self.ctx
                    .fail(format!("unexpected panic in `{what}`: {msg}"));
                Step::Failed(msg)
            }
        };
        match step {
            Step::Done(Poll::Ready(out)) => {
                if let Some(at) = self.pending_at {
                    if self.probe.wakes() == at {
                        self.ctx.fail(format!(
                            "lost wake-up: {} returned Pending, then Ready, and its waker was \
                             never woken in between",
                            self.name
                        ));
                    }
                }
                self.output = Some(out);
                self.done = true;
                self.pending_at = None;
                Some(true)
            }
            Step::Done(Poll::Pending) => {
                self.pending_at = Some(before);
                Some(false)
            }
            Step::Injected => {
                self.hurt = true;
                self.pending_at = None;
                None
            }
            Step::Failed(_) => None,
        }
    }

    /// It refused to be polled: done, and dropped at once (as an executor
    /// drops a task whose poll panicked), so what it holds goes back.
    fn refused(&mut self) {
        self.done = true;
        if let Some(fut) = self.fut.take() {
            let _ = self
                .ctx
                .drop_step(&format!("drop {} (refused)", self.name), fut);
        }
    }

    /// Whether the injected panic unwound out of its poll or drop.
    pub(crate) fn is_hurt(&self) -> bool {
        self.hurt
    }

    /// Polls with a fresh probe waker from now on (the old one is dropped
    /// as a step).
    pub(crate) fn rewaker(&mut self) {
        let probe = self
            .ctx
            .probe_like(&self.probe, format!("{} new waker", self.name));
        let old = self.waker.replace(probe.waker());
        self.probe = probe;
        self.pending_at = None;
        let _ = self
            .ctx
            .drop_step(&format!("drop {}'s old waker", self.name), old);
    }

    /// Takes the output (a permit, a grant) to keep or drop.
    pub(crate) fn take(&mut self) -> Option<F::Output> {
        self.output.take()
    }

    /// Drops the future (cancel if still waiting) and the output.
    pub(crate) fn drop_all(&mut self) {
        if let Some(out) = self.output.take() {
            if let Step::Injected = self
                .ctx
                .drop_step(&format!("drop {}'s output", self.name), out)
            {
                self.hurt = true;
            }
        }
        if let Some(fut) = self.fut.take() {
            if let Step::Injected = self.ctx.drop_step(&format!("drop {}", self.name), fut) {
                self.hurt = true;
            }
        }
        let waker = self.waker.take();
        let _ = self
            .ctx
            .drop_step(&format!("drop {}'s waker", self.name), waker);
    }
}

impl<F: Future + Unpin> Drop for Waiter<'_, F> {
    fn drop(&mut self) {
        self.drop_all();
    }
}

// ---------------------------------------------------------------------------
// A timer that is user code
// ---------------------------------------------------------------------------

#[cfg(feature = "test-util")]
mod timer {
    use super::Plan;
    use awaitkit::time::{ManualClock, ManualSleep, Timer};
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Instant;

    /// A [`Timer`] over a `ManualClock` whose every method, and every poll
    /// and drop of its sleeps, is a call of the plan.
    #[derive(Clone)]
    pub(crate) struct FaultTimer {
        pub(crate) clock: ManualClock,
        plan: Plan,
    }

    impl std::fmt::Debug for FaultTimer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("FaultTimer").finish_non_exhaustive()
        }
    }

    impl FaultTimer {
        pub(crate) fn new(plan: &Plan, clock: ManualClock) -> Self {
            FaultTimer {
                clock,
                plan: plan.clone(),
            }
        }
    }

    impl Timer for FaultTimer {
        type Sleep = FaultSleep;

        fn now(&self) -> Instant {
            self.plan.hit(|| "timer now".into());
            self.clock.now()
        }

        fn sleep_until(&self, deadline: Instant) -> FaultSleep {
            self.plan.hit(|| "timer sleep_until".into());
            FaultSleep {
                inner: self.clock.sleep_until(deadline),
                plan: self.plan.clone(),
            }
        }

        fn reset(&self, mut sleep: Pin<&mut FaultSleep>, deadline: Instant) {
            self.plan.hit(|| "timer reset".into());
            self.clock.reset(Pin::new(&mut sleep.inner), deadline);
        }
    }

    /// The sleep of a [`FaultTimer`].
    pub(crate) struct FaultSleep {
        inner: ManualSleep,
        plan: Plan,
    }

    impl Future for FaultSleep {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.plan.hit(|| "timer sleep poll".into());
            Pin::new(&mut self.inner).poll(cx)
        }
    }

    impl Drop for FaultSleep {
        fn drop(&mut self) {
            self.plan.hit(|| "timer sleep drop".into());
        }
    }
}
