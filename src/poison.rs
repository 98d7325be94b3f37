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
