//! Scenarios that may abort the process (a second panic during an unwind)
//! run in a child process: the test re-executes its own binary with
//! `--exact <name>` and [`CHILD`] set, and fails with the child's assertion
//! or, if the child was killed, with its status and the tail of its stderr.
//!
//! ```ignore
//! #[test]
//! fn scenario() {
//!     if !is_child() {
//!         return run_in_child("scenario");
//!     }
//!     // ... the scenario itself
//! }
//! ```

/// Set in the child process.
pub(crate) const CHILD: &str = "AWAITKIT_TEST_CHILD";

/// Whether this process is a scenario's child.
pub(crate) fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Runs test `name` of this binary in a child process; fails with the
/// child's assertion, or with its exit status if it was killed (an abort).
pub(crate) fn run_in_child(name: &str) {
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        // (`--include-ignored`: an ignored scenario, run on purpose, runs
        // in its child too.)
        .args([
            name,
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the child process");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    if out.status.code() == Some(101) {
        let msg: Vec<&str> = stderr
            .lines()
            .chain(stdout.lines())
            .filter(|l| {
                l.contains("panicked at")
                    || l.starts_with("REVIEW")
                    || l.contains("left:")
                    || l.contains("right:")
                    || l.contains('`')
            })
            .collect();
        panic!(
            "scenario `{name}` failed in its child process:\n{}",
            msg.join("\n")
        );
    }
    assert!(
        out.status.success(),
        "scenario `{name}` killed its process (status: {:?}): a second panic during an unwind \
         aborts. lib.rs `Panic safety`: \"every other child is still dropped ... and then the \
         first panic propagates. The others are not dropped during that panic's unwind\".\n\
         child stderr (tail):\n{}",
        out.status,
        tail(&stderr)
    );
}

/// The text of a panic's payload.
pub(crate) fn payload_text(payload: &Box<dyn std::any::Any + Send>) -> String {
    super::panic_message(&**payload)
}

/// Runs `f`; returns the message of the panic it must raise.
pub(crate) fn expect_panic(f: impl FnOnce()) -> String {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(()) => panic!("a user destructor panicked: the panic must propagate"),
        Err(p) => payload_text(&p),
    }
}

/// A child: ready at once with `out` (if `Some`), else pending forever.
/// Its destructor panics when `panic_on_drop` ("child destructor").
pub(crate) struct Kid<O> {
    pub(crate) out: Option<O>,
    pub(crate) panic_on_drop: bool,
}

impl<O> Unpin for Kid<O> {}

impl<O> std::future::Future for Kid<O> {
    type Output = O;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<O> {
        match self.out.take() {
            Some(o) => std::task::Poll::Ready(o),
            None => std::task::Poll::Pending,
        }
    }
}

impl<O> Drop for Kid<O> {
    fn drop(&mut self) {
        if self.panic_on_drop {
            panic!("child destructor");
        }
    }
}

/// A child pending forever whose destructor panics.
pub(crate) fn pending_bomb<O>() -> Kid<O> {
    Kid {
        out: None,
        panic_on_drop: true,
    }
}

/// A child ready at once with `out`.
pub(crate) fn ready_kid<O>(out: O) -> Kid<O> {
    Kid {
        out: Some(out),
        panic_on_drop: false,
    }
}

/// `scenario!(name, { body })`: a `#[test]` whose body runs only in a child
/// process of the test binary ([`run_in_child`]): an abort fails the test
/// instead of killing the run.
macro_rules! scenario {
    ($name:ident, $body:block) => {
        #[test]
        fn $name() {
            if !crate::common::child::is_child() {
                return crate::common::child::run_in_child(stringify!($name));
            }
            $body
        }
    };
}

/// A waker whose `wake` and `wake_by_ref` panic ("waker wake").
pub(crate) fn panicking_waker() -> std::task::Waker {
    use std::task::{RawWaker, RawWakerVTable, Waker};
    const VTABLE: RawWakerVTable = RawWakerVTable::new(
        |_| RawWaker::new(std::ptr::null(), &VTABLE),
        |_| panic!("waker wake"),
        |_| panic!("waker wake"),
        |_| {},
    );
    // SAFETY: the vtable's functions ignore the data pointer.
    unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) }
}
