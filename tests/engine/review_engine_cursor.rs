//! Review of `engine-merge` (`Cursor::next_slow` rewrite, `Pass::next_with`
//! split with the inline answer after a completion): only woken children
//! are polled (polls ≤ wakes + 1 per child, never an unwoken poll), never
//! twice in one parent poll, and no woken child is left behind once the
//! parent stops being woken (a lost wake-up / skipped bit would leave one).
//!
//! Trees of 1–4 levels (N = 1 … 262 145) built by `as_completed`, and chunks
//! grown by `push` (with slot reuse after completions), random waves of
//! wakes issued *between* parent polls that stopped early (STALL_LIMIT:
//! woken children that stay `Pending`), so wakes land in the leftover part
//! of a snapshot, in the visited part, and in words not taken yet.

use crate::common;

use awaitkit::AsCompleted;
use common::Rng;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

static EARLY: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Cell {
    waker: Mutex<Option<Waker>>,
    wakes: AtomicUsize,
    polls: AtomicUsize,
    /// `wakes` as read at the start of the last poll.
    seen: AtomicUsize,
    /// Parent poll generation of the last poll (single-threaded checks).
    generation: AtomicUsize,
    finish: AtomicBool,
    done: AtomicBool,
}

struct Shared {
    cells: Vec<Cell>,
    generation: AtomicUsize,
    /// Single-threaded: every poll must follow a wake since the last poll.
    strict: bool,
    /// Siblings each poll wakes (wakes during the pass, landing in the
    /// visited part, the leftover and words not taken yet).
    chain: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn new(n: usize, strict: bool) -> Arc<Self> {
        Arc::new(Shared {
            cells: (0..n).map(|_| Cell::default()).collect(),
            generation: AtomicUsize::new(0),
            strict,
            chain: AtomicUsize::new(0),
            errors: Mutex::new(Vec::new()),
        })
    }
    fn err(&self, e: String) {
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 20 {
            errors.push(e);
        }
    }
    fn wake(&self, id: usize) -> bool {
        let c = &self.cells[id];
        let w = c.waker.lock().unwrap().clone();
        match w {
            Some(w) => {
                c.wakes.fetch_add(1, Ordering::SeqCst);
                w.wake();
                true
            }
            None => false,
        }
    }
}

struct Child {
    id: usize,
    sh: Arc<Shared>,
}

impl std::future::Future for Child {
    type Output = usize;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        let c = &self.sh.cells[self.id];
        let wakes = c.wakes.load(Ordering::SeqCst);
        let polls = c.polls.fetch_add(1, Ordering::SeqCst) + 1;
        let prev_seen = c.seen.swap(wakes, Ordering::SeqCst);
        if polls > wakes + 1 {
            self.sh.err(format!(
                "child {}: poll {polls} with only {wakes} wakes (unwoken poll)",
                self.id
            ));
        }
        if self.sh.strict {
            // (A poll that saw no new wake is allowed: a wake landing after
            // the snapshot took the word but before the child was visited is
            // seen by that visit and polls the child once more later; the
            // count `polls <= wakes + 1` above is what SPEC §1.3 asks.)
            let _ = prev_seen;
            let g = self.sh.generation.load(Ordering::SeqCst);
            if c.generation.swap(g, Ordering::SeqCst) == g && polls > 1 {
                self.sh.err(format!(
                    "child {}: polled twice in parent poll {g}",
                    self.id
                ));
            }
        }
        let chain = self.sh.chain.load(Ordering::SeqCst);
        if chain > 0 {
            let mut x = (self.id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ polls as u64;
            for _ in 0..chain {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let other = (x % self.sh.cells.len() as u64) as usize;
                if !self.sh.cells[other].done.load(Ordering::SeqCst) {
                    self.sh.wake(other);
                }
            }
        }
        if c.finish.load(Ordering::SeqCst) {
            *c.waker.lock().unwrap() = None;
            c.done.store(true, Ordering::SeqCst);
            return Poll::Ready(self.id);
        }
        *c.waker.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[derive(Default)]
struct ParentFlag {
    woken: AtomicBool,
    thread: Mutex<Option<std::thread::Thread>>,
}
impl Wake for ParentFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if let Some(t) = &*self.thread.lock().unwrap() {
            t.unpark();
        }
    }
}

/// Polls the set until a poll returns `Pending` without the parent having
/// been woken since that poll started (quiescent) — or the set is empty.
/// Returns the completed ids.
fn settle(
    set: &mut AsCompleted<Child>,
    sh: &Shared,
    parent: &Arc<ParentFlag>,
    max_polls: usize,
) -> Vec<usize> {
    let waker = Waker::from(parent.clone());
    let mut cx = Context::from_waker(&waker);
    let mut done = Vec::new();
    for _ in 0..max_polls {
        parent.woken.store(false, Ordering::SeqCst);
        sh.generation.fetch_add(1, Ordering::SeqCst);
        match set.poll_next_indexed(&mut cx) {
            Poll::Ready(Some((_, id))) => done.push(id),
            Poll::Ready(None) => return done,
            Poll::Pending => {
                if !parent.woken.load(Ordering::SeqCst) {
                    return done;
                }
                EARLY.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    panic!("no quiescence after {max_polls} parent polls");
}

/// After quiescence: no child has a wake its last poll did not see.
fn check_no_lost(sh: &Shared, what: &str) {
    let errors = sh.errors.lock().unwrap();
    assert!(errors.is_empty(), "{what}: {errors:#?}");
    for (i, c) in sh.cells.iter().enumerate() {
        if c.done.load(Ordering::SeqCst) || c.polls.load(Ordering::SeqCst) == 0 {
            continue;
        }
        let wakes = c.wakes.load(Ordering::SeqCst);
        let seen = c.seen.load(Ordering::SeqCst);
        assert_eq!(
            seen, wakes,
            "{what}: child {i} woken ({wakes} wakes) but its last poll saw {seen}: lost wake / skipped bit"
        );
    }
}

/// Interleaves single parent polls (each may stop early after STALL_LIMIT
/// stalls) with waves of wakes, strict per-poll checks; then settles.
fn run_interleaved(n: usize, grown: bool, seed: u64) {
    run_interleaved_chain(n, grown, seed, 0);
}

/// An `as_completed` set of `n` children made by `child`: built from an
/// iterator (one chunk), or grown by `push` from an empty set (`grown`).
fn build_set<F: Future>(n: usize, grown: bool, child: impl FnMut(usize) -> F) -> AsCompleted<F> {
    if grown {
        let mut set = AsCompleted::new();
        for c in (0..n).map(child) {
            set.push(c);
        }
        set
    } else {
        awaitkit::as_completed((0..n).map(child))
    }
}

fn run_interleaved_chain(n: usize, grown: bool, seed: u64, chain: usize) {
    let mut rng = Rng(seed | 1);
    let sh = Shared::new(n + n / 2 + 8, true);
    let parent = Arc::new(ParentFlag::default());
    let mut set = build_set(n, grown, |id| Child { id, sh: sh.clone() });
    let mut next_id = n;
    let what = format!("n={n} grown={grown} seed={seed} chain={chain}");
    settle(&mut set, &sh, &parent, 4 * n + 100);
    // Sibling wakes from inside polls from here on (the first round only
    // parks every child).
    sh.chain.store(chain, Ordering::SeqCst);
    check_no_lost(&sh, &what);
    let waker = Waker::from(parent.clone());
    let mut cx = Context::from_waker(&waker);
    let live = |sh: &Shared, limit: usize| -> Vec<usize> {
        (0..limit)
            .filter(|&i| {
                !sh.cells[i].done.load(Ordering::SeqCst)
                    && sh.cells[i].polls.load(Ordering::SeqCst) > 0
            })
            .collect()
    };
    for round in 0..12 {
        // A wave: sparse to dense, some finishing.
        let density = [1usize, 3, 17, 64, 200, 1000][round % 6];
        let alive = live(&sh, next_id);
        if alive.is_empty() {
            break;
        }
        let count = (alive.len() * density / 1000).max(1);
        for _ in 0..count {
            let id = alive[rng.below(alive.len())];
            if rng.below(4) == 0 {
                sh.cells[id].finish.store(true, Ordering::SeqCst);
            }
            sh.wake(id);
        }
        // A few parent polls (early stops leave leftovers), each followed
        // by more wakes aimed anywhere.
        for _ in 0..(1 + rng.below(5)) {
            sh.generation.fetch_add(1, Ordering::SeqCst);
            if let Poll::Ready(Some(_)) = set.poll_next_indexed(&mut cx) {
                if grown && rng.below(2) == 0 && next_id < sh.cells.len() {
                    set.push(Child {
                        id: next_id,
                        sh: sh.clone(),
                    });
                    next_id += 1;
                }
            }
            let alive = live(&sh, next_id);
            for _ in 0..(rng.below(40)) {
                if alive.is_empty() {
                    break;
                }
                let id = alive[rng.below(alive.len())];
                sh.wake(id);
            }
        }
        sh.chain.store(0, Ordering::SeqCst);
        settle(&mut set, &sh, &parent, 8 * n + 1000);
        check_no_lost(&sh, &format!("{what} round {round}"));
        sh.chain.store(chain, Ordering::SeqCst);
    }
}

#[test]
fn interleaved_waves_built_sets() {
    for &n in &[1usize, 2, 3, 63, 64, 65, 127, 4095, 4096, 4097, 8193] {
        for seed in 1..4 {
            run_interleaved(n, false, seed * 7919 + n as u64);
        }
    }
}

#[test]
fn interleaved_waves_grown_sets() {
    for &n in &[1usize, 31, 32, 33, 95, 97, 4097, 20_000] {
        for seed in 1..3 {
            run_interleaved(n, true, seed * 104_729 + n as u64);
        }
    }
}

#[test]
fn interleaved_waves_four_levels() {
    // 64³ + 1 children: a chunk with four levels.
    let before = EARLY.load(Ordering::Relaxed);
    run_interleaved(262_145, false, 12345);
    assert!(
        EARLY.load(Ordering::Relaxed) > before,
        "no early stop exercised"
    );
}

/// Wakes from another thread while the owner polls (early stops, completions
/// answered inline, slots reused by pushes): polls ≤ wakes + 1 always, and
/// after the waking thread stops and the set settles, every wake was seen.
fn run_threaded(n: usize, grown: bool, seed: u64, duration: Duration) {
    let total = n + 200_000;
    let sh = Shared::new(total, false);
    let parent = Arc::new(ParentFlag::default());
    *parent.thread.lock().unwrap() = Some(std::thread::current());
    let mut set = build_set(n, grown, |id| Child { id, sh: sh.clone() });
    let stop = Arc::new(AtomicBool::new(false));
    let next_id = Arc::new(AtomicUsize::new(n));
    let waker_thread = {
        let (sh, stop, next_id) = (sh.clone(), stop.clone(), next_id.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(seed | 1);
            while !stop.load(Ordering::SeqCst) {
                let limit = next_id.load(Ordering::SeqCst);
                let id = rng.below(limit);
                if rng.below(128) == 0 {
                    sh.cells[id].finish.store(true, Ordering::SeqCst);
                }
                sh.wake(id);
                if rng.below(64) == 0 {
                    std::thread::yield_now();
                }
            }
        })
    };
    let waker = Waker::from(parent.clone());
    let mut cx = Context::from_waker(&waker);
    let start = Instant::now();
    let mut rng = Rng(seed.wrapping_mul(31) | 1);
    while start.elapsed() < duration {
        parent.woken.store(false, Ordering::SeqCst);
        match set.poll_next_indexed(&mut cx) {
            Poll::Ready(Some(_)) => {
                if rng.below(8) != 0 {
                    let id = next_id.load(Ordering::SeqCst);
                    if id < total {
                        set.push(Child { id, sh: sh.clone() });
                        next_id.store(id + 1, Ordering::SeqCst);
                    }
                }
            }
            Poll::Ready(None) => break,
            Poll::Pending => {
                // Wait for the parent wake (the other thread keeps waking
                // live children): two seconds of silence is a lost wake-up.
                let deadline = Instant::now() + Duration::from_secs(2);
                while !parent.woken.load(Ordering::SeqCst) {
                    let now = Instant::now();
                    if now >= deadline {
                        let pending: Vec<usize> = (0..next_id.load(Ordering::SeqCst))
                            .filter(|&i| {
                                let c = &sh.cells[i];
                                !c.done.load(Ordering::SeqCst)
                                    && c.wakes.load(Ordering::SeqCst)
                                        != c.seen.load(Ordering::SeqCst)
                            })
                            .take(10)
                            .collect();
                        stop.store(true, Ordering::SeqCst);
                        panic!(
                            "n={n} grown={grown}: parent never woken for 2 s; children woken but not polled: {pending:?}"
                        );
                    }
                    std::thread::park_timeout(deadline - now);
                }
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    waker_thread.join().unwrap();
    *parent.thread.lock().unwrap() = None;
    // Make sure any wake issued is visible as a parent wake or a bit.
    let what = format!("threaded n={n} grown={grown} seed={seed}");
    // The parent was woken (or not) by the last wakes: a settle that starts
    // with a poll takes every bit set.
    settle(&mut set, &sh, &parent, 10_000_000);
    check_no_lost(&sh, &what);
    let polls: usize = sh
        .cells
        .iter()
        .map(|c| c.polls.load(Ordering::Relaxed))
        .sum();
    let wakes: usize = sh
        .cells
        .iter()
        .map(|c| c.wakes.load(Ordering::Relaxed))
        .sum();
    eprintln!(
        "{what}: {} children, {wakes} wakes, {polls} polls, {:?}",
        next_id.load(Ordering::SeqCst),
        start.elapsed()
    );
}

#[test]
fn threaded_wakes_built_sets() {
    for &n in &[1usize, 2, 63, 64, 65, 4096, 4097] {
        run_threaded(n, false, 99 + n as u64, Duration::from_millis(300));
    }
}

#[test]
fn threaded_wakes_grown_sets() {
    for &n in &[1usize, 33, 97, 4097] {
        run_threaded(n, true, 1234 + n as u64, Duration::from_millis(300));
    }
}

/// Children that wake siblings from inside their polls (the pass is under
/// way: wakes land behind the cursor, in its leftovers, and in words not
/// taken yet), through 1–3-level trees and grown chunks.
#[test]
fn interleaved_waves_with_wakes_during_the_pass() {
    for &n in &[2usize, 63, 64, 65, 4095, 4096, 4097, 9000] {
        for chain in [1, 3] {
            run_interleaved_chain(n, false, 31 * n as u64 + chain as u64, chain);
            run_interleaved_chain(n, true, 37 * n as u64 + chain as u64, chain);
        }
    }
}

/// Over-aligned children (64 and 4096 bytes): `Chunk::alloc`'s running
/// pointer and `back` (8-byte units to the header) for strides far above 8;
/// every child parks a clone, the clones are woken (from another thread)
/// after the owner polled: each wake must reach its own child (a wrong
/// `back` would resolve a waker to a wrong header: ASan / wrong polls).
#[test]
fn over_aligned_children_wakes_reach_their_own_child() {
    // The fields only give the children their size and alignment.
    #[allow(dead_code)]
    #[repr(align(64))]
    struct A64(usize, [u8; 3]);
    #[allow(dead_code)]
    #[repr(align(4096))]
    struct A4096(usize);
    type Cells = Arc<Vec<(Mutex<Option<Waker>>, AtomicUsize, AtomicBool)>>;
    struct Aligned<T> {
        id: usize,
        _pad: T,
        cells: Cells,
    }
    impl<T> std::future::Future for Aligned<T> {
        type Output = usize;
        fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            let (w, polls, go) = &self.cells[self.id];
            polls.fetch_add(1, Ordering::SeqCst);
            if go.load(Ordering::SeqCst) {
                return Poll::Ready(self.id);
            }
            *w.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
    fn run<T: Send + 'static>(n: usize, pad: impl Fn(usize) -> T, grown: bool) {
        let cells: Arc<Vec<_>> = Arc::new(
            (0..n)
                .map(|_| {
                    (
                        Mutex::new(None),
                        AtomicUsize::new(0),
                        AtomicBool::new(false),
                    )
                })
                .collect(),
        );
        let mut set = build_set(n, grown, |id| Aligned {
            id,
            _pad: pad(id),
            cells: cells.clone(),
        });
        let parent = Arc::new(ParentFlag::default());
        let waker = Waker::from(parent.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(set.poll_next_indexed(&mut cx).is_pending());
        let c2 = cells.clone();
        std::thread::spawn(move || {
            for (w, _, go) in c2.iter().rev() {
                go.store(true, Ordering::SeqCst);
                w.lock().unwrap().take().expect("parked").wake();
            }
        })
        .join()
        .unwrap();
        let mut got = Vec::new();
        loop {
            match set.poll_next_indexed(&mut cx) {
                Poll::Ready(Some((key, id))) => {
                    assert_eq!(key, id);
                    got.push(id);
                }
                Poll::Ready(None) => break,
                Poll::Pending => assert!(parent.woken.swap(false, Ordering::SeqCst), "stuck"),
            }
        }
        got.sort_unstable();
        assert_eq!(got, (0..n).collect::<Vec<_>>());
        for (i, (_, polls, _)) in cells.iter().enumerate() {
            assert_eq!(polls.load(Ordering::SeqCst), 2, "child {i}");
        }
    }
    for &n in &[1usize, 2, 64, 65, 4097] {
        for grown in [false, true] {
            run(n, |i| A64(i, [0; 3]), grown);
            run(n.min(300), A4096, grown);
        }
    }
}
