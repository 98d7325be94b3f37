//! The very first watched poll of a process, before the clock has any
//! calibration, is reported correctly: its own binary, so that nothing else
//! has read the clock before.

use awaitkit::WatchExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn the_first_watched_poll_of_a_process_is_measured_right() {
    const BLOCK: Duration = Duration::from_millis(30);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let mut fut = Box::pin(
        async {
            std::thread::sleep(BLOCK);
        }
        .watch("first")
        .on_slow_poll(move |slow| sink.lock().unwrap().push(slow.duration)),
    );
    let before = Instant::now();
    futures::executor::block_on(fut.as_mut());
    let real = before.elapsed();
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.len(),
        1,
        "reported once, at the default threshold: {seen:?}"
    );
    let slack = Duration::from_micros(200);
    assert!(
        seen[0] >= BLOCK && seen[0] <= real + slack,
        "{:?} (real {real:?})",
        seen[0]
    );
    let stats = fut.stats();
    assert_eq!((stats.polls, stats.slow_polls), (1, 1));
    assert!(
        stats.longest_poll >= BLOCK && stats.longest_poll <= real + slack,
        "{stats:?}"
    );
}
