//! `watch::set_slow_poll_hook` / `clear_slow_poll_hook`: the process-wide
//! hook is global state, so this binary holds a single test that walks
//! through every rule in order.

#[macro_use]
mod common;

use awaitkit::WatchExt;
use awaitkit::watch::{self, Report, SlowPoll};
use futures::executor::block_on;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a blocking future holds the thread, and the threshold that
/// catches it (fast futures never come near it).
const BLOCK: Duration = Duration::from_millis(30);
const THRESHOLD: Duration = Duration::from_millis(20);

/// What a hook saw: `(name, index, duration, poll)`.
type Seen = (Option<String>, Option<usize>, Duration, u64);

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn hook(&self) -> impl Fn(&SlowPoll<'_>) + Send + Sync + 'static {
        let log = self.clone();
        move |slow| {
            log.0.lock().unwrap().push((
                slow.name.map(str::to_owned),
                slow.index,
                slow.duration,
                slow.poll,
            ));
        }
    }
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Blocks the thread for `BLOCK` in its only poll.
async fn blocking() {
    std::thread::sleep(BLOCK);
}

#[test]
fn the_process_wide_hook() {
    common::watchdog("the_process_wide_hook", || {
        let global = Log::default();
        watch::set_slow_poll_hook(global.hook());

        // A watch without a hook of its own reports to the global hook.
        block_on(blocking().watch("no own hook").threshold(THRESHOLD));
        let seen = global.take();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0.as_deref(), Some("no own hook"));
        assert_eq!((seen[0].1, seen[0].3), (None, 1));
        assert!(seen[0].2 >= BLOCK, "{seen:?}");

        // A fast one does not.
        block_on(async {}.watch("fast").threshold(THRESHOLD));
        assert!(global.take().is_empty());

        // A watch with its own hook calls only that one.
        let own = Log::default();
        block_on(
            blocking()
                .watch("own hook")
                .threshold(THRESHOLD)
                .on_slow_poll(own.hook()),
        );
        assert_eq!(own.take().len(), 1);
        assert!(global.take().is_empty(), "the global hook ran too");

        // A report without a hook: its children report to the global hook,
        // with their index; a report with one keeps them to itself.
        let report = Report::new().threshold(THRESHOLD);
        block_on(awaitkit::gather(report.watch_each([false, true].map(
            |b| async move {
                if b {
                    blocking().await;
                }
            },
        ))));
        let seen = global.take();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!((seen[0].0.as_deref(), seen[0].1), (None, Some(1)));
        let report = Report::new().threshold(THRESHOLD).on_slow_poll(own.hook());
        block_on(report.watch("report child", blocking()));
        assert_eq!(own.take().len(), 1);
        assert!(
            global.take().is_empty(),
            "the global hook ran for a report with a hook"
        );

        // Setting the hook again replaces it.
        let second = Log::default();
        watch::set_slow_poll_hook(second.hook());
        block_on(blocking().watch("replaced").threshold(THRESHOLD));
        assert!(global.take().is_empty(), "the replaced hook still ran");
        assert_eq!(second.take().len(), 1);

        // A hook may change the hook (it does not run under the hook's
        // lock): this one clears it after its first call.
        let calls = Arc::new(AtomicUsize::new(0));
        {
            let calls = calls.clone();
            watch::set_slow_poll_hook(move |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                watch::clear_slow_poll_hook();
            });
        }
        block_on(blocking().watch("clears").threshold(THRESHOLD));
        block_on(blocking().watch("after clearing").threshold(THRESHOLD));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Cleared: nothing is called, but the slow poll is still counted.
        watch::set_slow_poll_hook(global.hook());
        watch::clear_slow_poll_hook();
        let mut fut = std::pin::pin!(blocking().watch("cleared").threshold(THRESHOLD));
        block_on(fut.as_mut());
        assert_eq!(fut.stats().slow_polls, 1);
        assert!(global.take().is_empty(), "a cleared hook ran");
        assert!(second.take().is_empty());
        let report = Report::new().threshold(THRESHOLD);
        block_on(report.watch("cleared child", blocking()));
        assert_eq!(report.blocking().len(), 1);
        assert!(global.take().is_empty());
    });
}
