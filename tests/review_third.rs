//! Adversarial review of 6a72725 (a runtime once paused stays on its
//! timeline; per-thread `Seen` cache of 4 entries; real-time check with a
//! second counter reading).
//!
//! Run: `cargo test --all-features --test review_third -- --nocapture`
//!
//! Failed on 6a72725 (marked `// Failed on 6a72725:`): a runtime once
//! paused, resumed onto real time (or read by a preempted thread), read as
//! the bare counter on a thread without its offset cached (another thread,
//! or its own after four other runtimes went through its cache), tens of
//! microseconds off its own timeline. Since: a thread that does not know a
//! runtime's offset asks the table before taking the clock for real time
//! (once per runtime, again only after another runtime was paused).
//! Also found (older than these changes): `DefaultTimer::now()` from a
//! thread-local destructor aborted once tokio's context was gone (tokio's
//! clock panics there); since, `now()` catches that and reads `Instant`.
#![cfg(feature = "tokio")]

use awaitkit::time::{DefaultTimer, FuturesTimer, Timer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[path = "common/paused_clock.rs"]
mod paused_clock;
use paused_clock::{calibrated, counter_off, current_thread, grow_lag, hogs, serial};

/// tokio's clock less `Instant::now()`, in ns (read back to back).
fn clock_minus_real() -> i64 {
    let t = tokio::time::Instant::now().into_std();
    let r = Instant::now();
    if t >= r {
        t.duration_since(r).as_nanos() as i64
    } else {
        -(r.duration_since(t).as_nanos() as i64)
    }
}

/// Inside a current-thread runtime's body whose clock is paused: advances
/// it past real time, waits (paused) for real time to catch up, resumes, so
/// that the resumed clock is within ~1 us of real time. Retries.
async fn resume_onto_real_time() -> i64 {
    for _ in 0..10_000 {
        let behind = -clock_minus_real();
        if behind > -200_000 {
            // Put the frozen clock ~200 us ahead of real time.
            tokio::time::advance(Duration::from_nanos((behind + 200_000) as u64)).await;
        }
        let frozen = tokio::time::Instant::now().into_std();
        while Instant::now() < frozen {
            std::hint::spin_loop();
        }
        tokio::time::resume();
        let d = clock_minus_real();
        if d.abs() <= 1_500 {
            return d;
        }
        tokio::time::pause();
    }
    panic!("could not resume onto real time");
}

/// `DefaultTimer.counter_nanos()` less tokio's clock (read right after, on
/// this thread, in ns since a fixed instant): the same on every thread that
/// reads a runtime on one timeline (its offset is fixed), whatever the
/// counter's lag does meanwhile; the counter itself differs from it by the
/// lag's growth since the runtime's offset was taken. The largest of a few
/// samples (the least time between the two readings).
fn default_minus_tokio() -> i64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| Instant::now() - Duration::from_secs(1));
    (0..20)
        .map(|_| {
            let d = DefaultTimer.counter_nanos().unwrap();
            let t = tokio::time::Instant::now().into_std();
            d as i64 - t.duration_since(base).as_nanos() as i64
        })
        .max()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Finding 1: a runtime once paused (offset o, lag grown by G since), then
// advanced so that its resumed clock is back within 4 us of real time, is
// read as the counter itself by every thread whose cache holds no offset
// for it (`None` or `Some(None)`): `on_real_time` is checked before the
// shared table is. The runtime's own thread reads value(at) - o = counter
// + G. Two timelines, G apart, for the same runtime at the same moment.
// ---------------------------------------------------------------------------

// Failed on 6a72725: another thread (Handle::enter, no cache entry) reads the
// counter itself while the runtime's thread reads the runtime's timeline, G
// (>= 30 us, forced) ahead of it; the claim is one timeline on every thread.
// Fails every run.
#[test]
fn resumed_onto_real_time_other_thread_reads_another_timeline() {
    let _s = serial();
    if counter_off() {
        return;
    }
    calibrated();
    let rt = current_thread(false);
    let handle = rt.handle().clone();
    let (g, own) = rt.block_on(async {
        tokio::time::pause();
        let _ = DefaultTimer.counter_nanos(); // offset o fixed here
        let g = grow_lag(30_000, Duration::from_secs(10));
        let d = resume_onto_real_time().await;
        let own = default_minus_tokio();
        eprintln!("lag growth {g} ns, clock - real {d} ns, own thread: default - tokio {own} ns");
        (g, own)
    });
    let other = std::thread::spawn(move || {
        let _in = handle.enter();
        default_minus_tokio()
    })
    .join()
    .unwrap();
    eprintln!("other thread: default - tokio {other} ns");
    assert!(
        g >= 20_000,
        "lag did not grow enough to see anything ({g} ns)"
    );
    assert!(
        (own - other).abs() < 10_000,
        "one runtime, two timelines: its own thread reads {own} ns from tokio's clock, another {other} ns (lag growth {g} ns)"
    );
}

// Failed on 6a72725: same, for a thread that saw the runtime on real time
// before it was paused (`Some(None)` in its cache): it keeps reading the
// counter after the pause + advance + resume. Fails every run.
#[test]
fn thread_that_saw_real_time_misses_the_timeline_after_resume() {
    let _s = serial();
    if counter_off() {
        return;
    }
    calibrated();
    let rt = current_thread(false);
    let handle = rt.handle().clone();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (res_tx, res_rx) = std::sync::mpsc::channel::<(i64, i64)>();
    let other = std::thread::spawn(move || {
        let _in = handle.enter();
        let before = default_minus_tokio(); // seen on real time
        go_rx.recv().unwrap();
        res_tx.send((before, default_minus_tokio())).unwrap();
    });
    std::thread::sleep(Duration::from_millis(20));
    let (g, own) = rt.block_on(async {
        tokio::time::pause();
        let _ = DefaultTimer.counter_nanos();
        let g = grow_lag(30_000, Duration::from_secs(10));
        resume_onto_real_time().await;
        (g, default_minus_tokio())
    });
    go_tx.send(()).unwrap();
    let (before, after) = res_rx.recv().unwrap();
    other.join().unwrap();
    eprintln!("lag growth {g}; other before {before}, after {after}; own {own}");
    assert!(g >= 20_000, "lag did not grow enough ({g} ns)");
    assert!(
        (own - after).abs() < 10_000,
        "own thread {own} ns from tokio's clock, the thread that saw real time {after} ns"
    );
}

// Failed on 6a72725: on the runtime's own thread, a live `Some(Some(o))` is
// evicted from the 4-entry cache by reading 4 other runtimes (real time,
// `Some(None)` each); the next reading of the resumed-onto-real-time runtime
// is the counter, G behind the reading just before it: the runtime's clock
// goes back on one thread by the lag growth. Fails every run.
#[test]
fn cache_eviction_sends_the_clock_back_on_one_thread() {
    let _s = serial();
    if counter_off() {
        return;
    }
    calibrated();
    let others: Vec<_> = (0..4).map(|_| current_thread(false)).collect();
    let rt = current_thread(false);
    let (g, first, second) = rt.block_on(async {
        tokio::time::pause();
        let _ = DefaultTimer.counter_nanos();
        let g = grow_lag(30_000, Duration::from_secs(10));
        resume_onto_real_time().await;
        let first = DefaultTimer.counter_nanos().unwrap();
        for o in &others {
            let _in = o.enter();
            let _ = DefaultTimer.counter_nanos();
        }
        let second = DefaultTimer.counter_nanos().unwrap();
        (g, first, second)
    });
    eprintln!(
        "lag growth {g}; first {first}, second {second}: {} ns",
        second as i64 - first as i64
    );
    assert!(g >= 20_000, "lag did not grow enough ({g} ns)");
    assert!(
        second >= first,
        "the runtime's clock went back on one thread by {} ns",
        first - second
    );
}

// ---------------------------------------------------------------------------
// Finding 2: `on_real_time`'s widened window. A thread preempted between
// reading tokio's clock (`at`) and re-reading the counter (`after`) accepts
// any clock up to the preemption's length ahead of real time as real time.
// A runtime once paused and resumed ahead of real time by D (here 300 us),
// read by a thread with no offset cached (fresh, or evicted), then reads the
// counter itself: D + G below the runtime's timeline, and below this
// thread's own previous reading of it.
// ---------------------------------------------------------------------------

// Failed on 6a72725 (rate-dependent: needs a preemption inside a ~1 us
// window; with 4 spinning threads on a 2-CPU box it hit within seconds):
// a reading of a resumed runtime 300 us ahead of real time comes back as the
// bare counter, and the runtime's clock goes back on this thread.
#[test]
fn preempted_reader_takes_a_resumed_clock_for_real_time() {
    let _s = serial();
    if counter_off() {
        return;
    }
    calibrated();
    const D: u64 = 300_000;
    let rt = current_thread(false);
    let handle = rt.handle().clone();
    rt.block_on(async {
        tokio::time::pause();
        let _ = DefaultTimer.counter_nanos();
        let behind = -clock_minus_real();
        tokio::time::advance(Duration::from_nanos((behind.max(0) as u64) + D)).await;
        tokio::time::resume();
        eprintln!("resumed {} ns ahead of real time", clock_minus_real());
    });
    let others: Vec<_> = (0..4).map(|_| current_thread(false)).collect();
    let hogs = hogs(4);
    let reader = std::thread::spawn(move || {
        let start = Instant::now();
        let (mut hits, mut reads, mut worst) = (0u64, 0u64, 0i64);
        let mut prev = {
            let _in = handle.enter();
            DefaultTimer.counter_nanos().unwrap()
        };
        while start.elapsed() < Duration::from_secs(8) && hits == 0 {
            for o in &others {
                let _in = o.enter();
                let _ = DefaultTimer.counter_nanos();
            }
            let before = FuturesTimer.counter_nanos().unwrap();
            let x = {
                let _in = handle.enter();
                DefaultTimer.counter_nanos().unwrap()
            };
            reads += 1;
            if x < before + D / 2 {
                hits += 1;
                worst = worst.min(x as i64 - prev as i64);
            }
            prev = prev.max(x);
        }
        (hits, reads, worst)
    });
    let (hits, reads, worst) = reader.join().unwrap();
    drop(hogs);
    eprintln!(
        "{hits} of {reads} readings were the bare counter; worst step vs previous {worst} ns"
    );
    assert_eq!(
        hits, 0,
        "a resumed clock {D} ns ahead was read as real time ({hits}/{reads}), going back {} ns",
        -worst
    );
}

// ---------------------------------------------------------------------------
// Held on 6a72725: readers on other threads racing pause/advance/resume
// cycles never see the runtime's clock go back (beyond the counter's
// documented cross-thread slack), and the runtime's own thread neither.
// ---------------------------------------------------------------------------

#[test]
fn readers_racing_pause_advance_resume_stay_monotonic() {
    let _s = serial();
    if counter_off() {
        return;
    }
    calibrated();
    let rt = current_thread(false);
    let handle = rt.handle().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (handle, stop) = (handle.clone(), stop.clone());
            std::thread::spawn(move || {
                let _in = handle.enter();
                let (mut prev, mut worst, mut n) = (0u64, 0i64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let x = DefaultTimer.counter_nanos().unwrap();
                    if prev != 0 {
                        worst = worst.min(x as i64 - prev as i64);
                    }
                    prev = prev.max(x);
                    n += 1;
                }
                (worst, n)
            })
        })
        .collect();
    let own_worst = rt.block_on(async {
        let (mut prev, mut worst) = (0u64, 0i64);
        let read = |prev: &mut u64, worst: &mut i64| {
            let x = DefaultTimer.counter_nanos().unwrap();
            if *prev != 0 {
                *worst = (*worst).min(x as i64 - *prev as i64);
            }
            *prev = (*prev).max(x);
        };
        for i in 0..300u64 {
            read(&mut prev, &mut worst);
            tokio::time::pause();
            read(&mut prev, &mut worst);
            tokio::time::advance(Duration::from_micros(i * 7 % 500)).await;
            read(&mut prev, &mut worst);
            tokio::time::resume();
            read(&mut prev, &mut worst);
            let spin = Instant::now();
            while spin.elapsed() < Duration::from_micros(200) {
                read(&mut prev, &mut worst);
            }
        }
        worst
    });
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let (worst, n) = r.join().unwrap();
        eprintln!("reader: {n} readings, worst step back {worst} ns");
        assert!(
            worst > -2_000,
            "a reader saw the runtime's clock go back {} ns",
            -worst
        );
    }
    eprintln!("own thread worst step back {own_worst} ns");
    assert!(own_worst > -2_000, "own thread went back {} ns", -own_worst);
}

// Held on 6a72725: `counter_nanos()` from a thread-local destructor, on a
// thread that read a paused runtime's clock, does not panic.
#[test]
fn counter_during_thread_teardown_does_not_panic() {
    let _s = serial();
    if counter_off() {
        return;
    }
    struct OnExit;
    impl Drop for OnExit {
        fn drop(&mut self) {
            let _ = DefaultTimer.counter_nanos();
        }
    }
    thread_local! { static EXIT: OnExit = const { OnExit }; }
    std::thread::spawn(|| {
        EXIT.with(|_| {});
        current_thread(true).block_on(async {
            let _ = DefaultTimer.counter_nanos();
            tokio::task::spawn_blocking(|| EXIT.with(|_| {}))
                .await
                .unwrap();
            tokio::time::advance(Duration::from_millis(3)).await;
            let _ = DefaultTimer.counter_nanos();
        });
    })
    .join()
    .unwrap();
}

// Failed on 6a72725 (every run; pre-existing, `now()` is unchanged by this
// commit): `DefaultTimer.now()` from a thread-local destructor that runs
// after tokio's context thread-local was destroyed panics inside tokio's
// `Instant::now()` (THREAD_LOCAL_DESTROYED_ERROR) once any runtime in the
// process paused its clock, and a panic in a TLS destructor aborts the
// process. `counter_nanos()` survives the same spot (it uses
// `Handle::try_current().ok()`). Run in a child process (the abort would
// take the test binary down).
#[test]
fn now_during_thread_teardown_does_not_abort() {
    if std::env::var_os("REVIEW_THIRD_CHILD").is_some() {
        struct OnExit;
        impl Drop for OnExit {
            fn drop(&mut self) {
                let _ = DefaultTimer.now();
            }
        }
        thread_local! { static EXIT: OnExit = const { OnExit }; }
        std::thread::spawn(|| {
            EXIT.with(|_| {});
            current_thread(true).block_on(async {
                tokio::task::spawn_blocking(|| EXIT.with(|_| {}))
                    .await
                    .unwrap();
            });
        })
        .join()
        .unwrap();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "now_during_thread_teardown_does_not_abort",
            "--test-threads=1",
        ])
        .env("REVIEW_THIRD_CHILD", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "DefaultTimer.now() in a TLS destructor took the process down: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
