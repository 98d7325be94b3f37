//! Randomized engine torture from an adversarial review (run under ASan too).
//! Children that move wakers to other threads, complete, panic in poll or
//! drop; parent wakers that panic at their k-th clone or wake; sets dropped
//! while wakers live on. Checks: every child dropped exactly once, never
//! moved, never freed undropped; no hang (watchdog); no UB (ASan).

use futures::StreamExt;
use std::collections::HashSet;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

#[derive(Default)]
struct Registry {
    live: Mutex<HashSet<usize>>,
    made: AtomicUsize,
    dropped: AtomicUsize,
    pool: Mutex<Vec<Waker>>,
}

struct Kid {
    reg: Arc<Registry>,
    at: Option<usize>,
    steps: u32,
    panic_on_drop: bool,
    panic_in_poll: bool,
    self_wake: bool,
    out: u64,
}

impl Kid {
    fn new(reg: &Arc<Registry>, rng: &mut Rng) -> Kid {
        reg.made.fetch_add(1, Ordering::SeqCst);
        Kid {
            reg: reg.clone(),
            at: None,
            steps: rng.below(4) as u32,
            panic_on_drop: rng.chance(10) && std::env::var_os("REVIEW_NO_KID_PANIC").is_none(),
            panic_in_poll: rng.chance(5) && std::env::var_os("REVIEW_NO_KID_PANIC").is_none(),
            self_wake: rng.chance(30),
            out: rng.next(),
        }
    }
}

impl Future for Kid {
    type Output = u64;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        // SAFETY: only the address is recorded; nothing moves.
        let this = unsafe { self.get_unchecked_mut() };
        let addr = this as *const Kid as usize;
        match this.at {
            None => {
                this.at = Some(addr);
                assert!(
                    this.reg.live.lock().unwrap().insert(addr),
                    "address reused while live"
                );
            }
            Some(a) => assert_eq!(a, addr, "a pinned child moved"),
        }
        if this.steps == 0 {
            if this.panic_in_poll {
                this.panic_in_poll = false;
                this.steps = 1;
                // Leave a way back so AsCompleted does not wait forever.
                this.reg.pool.lock().unwrap().push(cx.waker().clone());
                panic!("boom: child poll");
            }
            return Poll::Ready(this.out);
        }
        this.steps -= 1;
        if this.self_wake {
            cx.waker().wake_by_ref();
        } else {
            this.reg.pool.lock().unwrap().push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Some(a) = self.at {
            assert!(self.reg.live.lock().unwrap().remove(&a), "dropped twice");
        }
        self.reg.dropped.fetch_add(1, Ordering::SeqCst);
        if self.panic_on_drop && !std::thread::panicking() {
            panic!("boom: child drop");
        }
    }
}

/// A parent waker (RawWaker) that panics at its k-th clone / wake.
struct Hostile {
    refs: AtomicUsize,
    clones: AtomicUsize,
    wakes: AtomicUsize,
    clone_panic_every: usize,
    wake_panic_every: usize,
    woken: AtomicBool,
}

static HOSTILE: RawWakerVTable = RawWakerVTable::new(h_clone, h_wake, h_wake_by_ref, h_drop);

unsafe fn h(data: *const ()) -> &'static Hostile {
    // SAFETY: every waker of this vtable points at a leaked `Hostile`.
    unsafe { &*(data as *const Hostile) }
}
unsafe fn h_clone(data: *const ()) -> RawWaker {
    // SAFETY: see `h`.
    let s = unsafe { h(data) };
    let n = s.clones.fetch_add(1, Ordering::SeqCst) + 1;
    if s.clone_panic_every != 0 && n % s.clone_panic_every == 0 {
        panic!("boom: parent clone");
    }
    s.refs.fetch_add(1, Ordering::SeqCst);
    RawWaker::new(data, &HOSTILE)
}
unsafe fn h_wake(data: *const ()) {
    // SAFETY: forwarded waker contract.
    unsafe {
        h_wake_by_ref(data);
        h_drop(data);
    }
}
unsafe fn h_wake_by_ref(data: *const ()) {
    // SAFETY: see `h`.
    let s = unsafe { h(data) };
    let n = s.wakes.fetch_add(1, Ordering::SeqCst) + 1;
    // Set first: a wake that panics was still attempted (its caller saw
    // the panic); the strict driver treats it as a wake.
    s.woken.store(true, Ordering::SeqCst);
    if s.wake_panic_every != 0 && n % s.wake_panic_every == 0 {
        panic!("boom: parent wake");
    }
}
unsafe fn h_drop(data: *const ()) {
    // SAFETY: see `h`.
    let s = unsafe { h(data) };
    s.refs.fetch_sub(1, Ordering::SeqCst);
}

fn hostile(rng: &mut Rng) -> (&'static Hostile, Waker) {
    let s: &'static Hostile = keep_alive(Box::new(Hostile {
        refs: AtomicUsize::new(1),
        clones: AtomicUsize::new(0),
        wakes: AtomicUsize::new(0),
        clone_panic_every: if std::env::var_os("REVIEW_NO_PARENT_PANIC").is_some() {
            0
        } else {
            [0, 0, 2, 3, 5][rng.below(5) as usize]
        },
        wake_panic_every: if std::env::var_os("REVIEW_NO_PARENT_PANIC").is_some() {
            0
        } else {
            [0, 0, 2, 3, 7][rng.below(5) as usize]
        },
        woken: AtomicBool::new(false),
    }));
    // SAFETY: the vtable upholds the contract over a leaked `Hostile`.
    let w = unsafe { Waker::from_raw(RawWaker::new(s as *const Hostile as *const (), &HOSTILE)) };
    (s, w)
}

fn quiet() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.to_string().contains("boom") {
                return;
            }
            prev(info);
        }));
    });
}

/// Wakes/drops/clones pool wakers at random (on this or a helper thread).
fn churn(reg: &Registry, rng: &mut Rng) {
    let taken: Vec<Waker> = {
        let mut pool = reg.pool.lock().unwrap();
        let k = rng.below(pool.len() as u64 + 1) as usize;
        let mut out = Vec::new();
        for _ in 0..k {
            let i = rng.below(pool.len() as u64) as usize;
            out.push(pool.swap_remove(i));
        }
        out
    };
    for w in taken {
        let _ = catch_unwind(AssertUnwindSafe(|| match rng.below(5) {
            0 => w.wake(),
            1 => {
                w.wake_by_ref();
                drop(w)
            }
            2 => {
                let c = w.clone();
                drop(w);
                c.wake();
            }
            3 => {
                drop(w.clone());
                reg.pool.lock().unwrap().push(w);
            }
            _ => {
                w.wake_by_ref();
                reg.pool.lock().unwrap().push(w);
            }
        }));
    }
}

fn watchdog(limit: Duration) -> Arc<AtomicBool> {
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        while !d.load(Ordering::SeqCst) {
            if start.elapsed() > limit {
                eprintln!("watchdog: hang");
                std::process::abort();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    done
}

fn as_completed_round(seed: u64, helper: bool) {
    let mut rng = Rng(seed | 1);
    let reg = Arc::new(Registry::default());
    let stop = Arc::new(AtomicBool::new(false));
    let helper = helper.then(|| {
        let (reg, stop) = (reg.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(seed.wrapping_mul(31) | 1);
            while !stop.load(Ordering::SeqCst) {
                churn(&reg, &mut rng);
                std::thread::yield_now();
            }
        })
    });
    let n0 = rng.below(80) as usize;
    let kids: Vec<Kid> = (0..n0).map(|_| Kid::new(&reg, &mut rng)).collect();
    let mut set = if rng.chance(50) {
        awaitkit::as_completed(kids)
    } else {
        let mut s = awaitkit::AsCompleted::new();
        s.extend(kids);
        s
    };
    let (hs, waker) = hostile(&mut rng);
    let mut cx = Context::from_waker(&waker);
    hs.woken.store(true, Ordering::SeqCst);
    let mut yielded = 0usize;
    let mut sets_dropped = 0;
    let steps: usize = std::env::var("REVIEW_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let trace = std::env::var_os("REVIEW_TRACE").is_some();
    for _step in 0..steps {
        if trace {
            eprintln!(
                "step {_step}: len {} woken {} pool {}",
                set.len(),
                hs.woken.load(Ordering::SeqCst),
                reg.pool.lock().unwrap().len()
            );
        }
        let op = rng.below(10);
        if trace {
            eprintln!("  op {op}");
        }
        match op {
            0 | 1 => {
                for _ in 0..rng.below(40) {
                    set.push(Kid::new(&reg, &mut rng));
                }
                // The set's owner knows it pushed: it polls next.
                hs.woken.store(true, Ordering::SeqCst);
            }
            2 => churn(&reg, &mut rng),
            3 if rng.chance(10) => {
                // Drop the set mid-way; wakers in the pool outlive it.
                let old = std::mem::take(&mut set);
                let _ = catch_unwind(AssertUnwindSafe(|| drop(old)));
                sets_dropped += 1;
                hs.woken.store(true, Ordering::SeqCst);
            }
            _ if !hs.woken.swap(false, Ordering::SeqCst) => {}
            _ => {
                match catch_unwind(AssertUnwindSafe(|| set.poll_next_unpin(&mut cx))) {
                    Ok(Poll::Ready(Some(_))) => {
                        yielded += 1;
                        hs.woken.store(true, Ordering::SeqCst); // a stream is polled again
                    }
                    Ok(Poll::Ready(None)) => assert!(set.is_empty()),
                    Ok(Poll::Pending) => {}
                    Err(_) => hs.woken.store(true, Ordering::SeqCst), // the owner saw it
                }
            }
        }
    }
    // Drain: wake everything until the set is empty (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !set.is_empty() {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: set never drained ({} left)",
            set.len()
        );
        for w in std::mem::take(&mut *reg.pool.lock().unwrap()) {
            let _ = catch_unwind(AssertUnwindSafe(|| w.wake()));
        }
        // Strict: poll only when the task was woken (the helper thread may
        // still hold wakers it took: give it time).
        let waited = Instant::now();
        while !hs.woken.swap(false, Ordering::SeqCst) {
            if !reg.pool.lock().unwrap().is_empty() {
                break;
            }
            if waited.elapsed() > Duration::from_secs(3) {
                let left = set.len();
                let r = catch_unwind(AssertUnwindSafe(|| set.poll_next_unpin(&mut cx)));
                let what = match &r {
                    Ok(Poll::Ready(Some(_))) => "Ready(Some)",
                    Ok(Poll::Ready(None)) => "Ready(None)",
                    Ok(Poll::Pending) => "Pending",
                    Err(_) => "panic",
                };
                panic!(
                    "seed {seed}: {left} children left and the task was never woken: lost wake-up \
                     (a poll anyway gives {what}; parent clones {} wakes {} clone_panic_every {} wake_panic_every {})",
                    hs.clones.load(Ordering::SeqCst),
                    hs.wakes.load(Ordering::SeqCst),
                    hs.clone_panic_every,
                    hs.wake_panic_every
                );
            }
            std::thread::yield_now();
        }
        match catch_unwind(AssertUnwindSafe(|| set.poll_next_unpin(&mut cx))) {
            Ok(Poll::Ready(_)) | Err(_) => hs.woken.store(true, Ordering::SeqCst),
            Ok(Poll::Pending) => {}
        }
    }
    let _ = catch_unwind(AssertUnwindSafe(|| drop(set)));
    stop.store(true, Ordering::SeqCst);
    if let Some(h) = helper {
        h.join().unwrap();
    }
    drop(std::mem::take(&mut *reg.pool.lock().unwrap()));
    let _ = (yielded, sets_dropped);
    assert_eq!(
        reg.made.load(Ordering::SeqCst),
        reg.dropped.load(Ordering::SeqCst),
        "seed {seed}: every child dropped once"
    );
    assert!(
        reg.live.lock().unwrap().is_empty(),
        "seed {seed}: child freed undropped"
    );
}

#[test]
fn as_completed_torture_single_thread() {
    quiet();
    let done = watchdog(Duration::from_secs(120));
    let only: Option<u64> = std::env::var("REVIEW_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    for seed in 1..300u64 {
        if only.is_some_and(|o| o != seed) {
            continue;
        }
        as_completed_round(seed, false);
    }
    done.store(true, Ordering::SeqCst);
}

#[test]
fn as_completed_torture_with_helper_thread() {
    quiet();
    let done = watchdog(Duration::from_secs(120));
    for seed in 1..120u64 {
        as_completed_round(seed * 7919, true);
    }
    done.store(true, Ordering::SeqCst);
}

/// gather / try_gather / gather_settled / wait driven to the end with
/// hostile parent wakers and a helper thread waking children concurrently.
#[test]
fn combinators_torture_with_helper_thread() {
    quiet();
    let done = watchdog(Duration::from_secs(120));
    for seed in 1..150u64 {
        let mut rng = Rng((seed * 104729) | 1);
        let reg = Arc::new(Registry::default());
        let stop = Arc::new(AtomicBool::new(false));
        let helper = {
            let (reg, stop) = (reg.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(seed | 1);
                while !stop.load(Ordering::SeqCst) {
                    churn(&reg, &mut rng);
                    std::thread::yield_now();
                }
            })
        };
        let n = rng.below(100) as usize;
        let kids: Vec<Kid> = (0..n).map(|_| Kid::new(&reg, &mut rng)).collect();
        let which = rng.below(4);
        let (_hs, waker) = hostile(&mut rng);
        let mut cx = Context::from_waker(&waker);
        let stop_after = rng.below(30);
        macro_rules! drive {
            ($fut:expr) => {{
                let mut f = $fut;
                let deadline = Instant::now() + Duration::from_secs(20);
                for i in 0.. {
                    if i == stop_after && rng.chance(30) {
                        break; // dropped mid-way
                    }
                    assert!(Instant::now() < deadline, "seed {seed}: hang");
                    for w in std::mem::take(&mut *reg.pool.lock().unwrap()) {
                        let _ = catch_unwind(AssertUnwindSafe(|| w.wake()));
                    }
                    match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut f).poll(&mut cx))) {
                        Ok(Poll::Ready(_)) => break,
                        Ok(Poll::Pending) => {}
                        Err(_) => break, // refuses polls now
                    }
                }
                let _ = catch_unwind(AssertUnwindSafe(|| drop(f)));
            }};
        }
        match which {
            0 => drive!(awaitkit::gather(kids)),
            1 => drive!(awaitkit::gather_settled(kids)),
            2 => drive!(awaitkit::wait(kids, awaitkit::ReturnWhen::AllCompleted)),
            _ => drive!(awaitkit::try_gather(
                kids.into_iter()
                    .map(|k| async move {
                        let v = k.await;
                        if v % 7 == 0 { Err(v) } else { Ok(v) }
                    })
                    .collect::<Vec<_>>()
            )),
        }
        stop.store(true, Ordering::SeqCst);
        helper.join().unwrap();
        drop(std::mem::take(&mut *reg.pool.lock().unwrap()));
        assert_eq!(
            reg.made.load(Ordering::SeqCst),
            reg.dropped.load(Ordering::SeqCst),
            "seed {seed}"
        );
        assert!(reg.live.lock().unwrap().is_empty(), "seed {seed}");
    }
    done.store(true, Ordering::SeqCst);
}

/// Leaks `value` on purpose (it must outlive every waker and thread of the
/// test) but keeps its address in a static, so LeakSanitizer (the ASan run
/// in CI) sees it as reachable rather than as a leak.
fn keep_alive<T>(value: Box<T>) -> &'static mut T {
    static KEPT: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());
    let value = Box::leak(value);
    KEPT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(value as *mut T as usize);
    value
}
