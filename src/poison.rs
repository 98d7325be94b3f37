//! Futures that a panic unwound through refuse to be polled again, the way an
//! `async fn` does: after a child's panic (or a panicking destructor) their
//! state may be incomplete, and they must never make up a result from it.

#![forbid(unsafe_code)]

/// Runs one poll, with `poisoned` set while it runs: if a panic unwinds out
/// of `poll`, the flag stays set and the next call panics with a clear
/// message instead of polling.
#[inline]
pub(crate) fn guarded<T>(poisoned: &mut bool, what: &str, poll: impl FnOnce() -> T) -> T {
    assert!(
        !*poisoned,
        "`{what}` polled after a panic in one of its futures"
    );
    *poisoned = true;
    let out = poll();
    *poisoned = false;
    out
}

/// Refuses a poll of a future that completed — or, first, of one that a
/// panic unwound through: such a panic may have come after completion was
/// recorded (a destructor run on the way out), so "after a panic" is the
/// true story then.
#[inline]
#[track_caller]
pub(crate) fn assert_live(poisoned: bool, finished: bool, what: &str) {
    assert!(
        !poisoned,
        "`{what}` polled after a panic in one of its futures"
    );
    assert!(!finished, "`{what}` polled after completion");
}
