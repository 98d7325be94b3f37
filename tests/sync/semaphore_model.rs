//! Random operation sequences on a `Semaphore` against a sequential reference
//! model (proptest): acquire n, try, poll, cancel after k polls, release,
//! add, forget, close and resize. After every step the counts must match the
//! model, no more than the capacity may be held (plus what a shrink still
//! owes), waiters are granted strictly in arrival order, and no satisfiable
//! head waiter stays pending.

use crate::common;

use awaitkit::{Acquire, Semaphore, SemaphorePermit};
use common::CountingWaker;
use proptest::prelude::*;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

#[derive(Clone, Debug)]
enum Op {
    /// Start `acquire_many(n)` and poll it once.
    Acquire(usize),
    TryAcquire(usize),
    /// Poll the k-th live waiter again.
    Poll(usize),
    /// Drop the k-th live waiter (cancel after however many polls it had).
    Cancel(usize),
    /// Drop the k-th held permit.
    Release(usize),
    /// `forget` the k-th held permit.
    Forget(usize),
    Add(usize),
    Resize(usize),
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..5).prop_map(Op::Acquire),
        2 => (0usize..4).prop_map(Op::TryAcquire),
        3 => (0usize..8).prop_map(Op::Poll),
        2 => (0usize..8).prop_map(Op::Cancel),
        4 => (0usize..8).prop_map(Op::Release),
        1 => (0usize..8).prop_map(Op::Forget),
        1 => (0usize..3).prop_map(Op::Add),
        1 => (0usize..6).prop_map(Op::Resize),
        1 => Just(Op::Close),
    ]
}

/// What the reference model says a waiter's next poll returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Pending,
    Granted,
    Closed,
    TooLarge,
}

/// The sequential reference model.
#[derive(Debug)]
struct Model {
    capacity: usize,
    free: usize,
    debt: usize,
    closed: bool,
    /// Queued waiters: (id, needed, assigned), FIFO.
    queue: VecDeque<(usize, usize, usize)>,
    /// Waiters that left the queue, with what their next poll returns.
    settled: Vec<(usize, Expect)>,
}

impl Model {
    fn new(capacity: usize) -> Model {
        Model {
            capacity,
            free: capacity,
            debt: 0,
            closed: false,
            queue: VecDeque::new(),
            settled: Vec::new(),
        }
    }

    fn expect(&self, id: usize) -> Expect {
        if self.queue.iter().any(|&(i, ..)| i == id) {
            return Expect::Pending;
        }
        self.settled
            .iter()
            .find(|&&(i, _)| i == id)
            .map(|&(_, e)| e)
            .expect("known waiter")
    }

    fn release(&mut self, mut n: usize) {
        let paid = n.min(self.debt);
        self.debt -= paid;
        n -= paid;
        while n > 0 {
            let Some(head) = self.queue.front_mut() else {
                break;
            };
            let give = n.min(head.1 - head.2);
            head.2 += give;
            n -= give;
            if head.2 == head.1 {
                let (id, ..) = self.queue.pop_front().unwrap();
                self.settled.push((id, Expect::Granted));
            }
        }
        self.free += n;
    }

    fn fail_too_large(&mut self) {
        let mut returned = 0;
        let capacity = self.capacity;
        let mut kept = VecDeque::new();
        for (id, needed, assigned) in self.queue.drain(..) {
            if needed > capacity {
                returned += assigned;
                self.settled.push((id, Expect::TooLarge));
            } else {
                kept.push_back((id, needed, assigned));
            }
        }
        self.queue = kept;
        self.release(returned);
    }

    /// First poll of `acquire_many(n)`: Some(result) if it completes.
    fn acquire(&mut self, id: usize, n: usize) -> Expect {
        // Closed first: a closed semaphore fails 0-permit acquires too
        // (issue 14, item 8).
        if self.closed {
            return Expect::Closed;
        }
        if n == 0 {
            return Expect::Granted;
        }
        if self.queue.is_empty() && self.debt == 0 && self.free >= n {
            self.free -= n;
            return Expect::Granted;
        }
        if n > self.capacity {
            return Expect::TooLarge;
        }
        let assigned = if self.queue.is_empty() { self.free } else { 0 };
        self.free -= assigned;
        self.queue.push_back((id, n, assigned));
        Expect::Pending
    }

    fn try_acquire(&mut self, n: usize) -> bool {
        if self.closed {
            return false;
        }
        if n == 0 {
            return true;
        }
        if !self.queue.is_empty() || self.debt > 0 || self.free < n {
            return false;
        }
        self.free -= n;
        true
    }

    fn cancel(&mut self, id: usize, needed: usize) {
        if let Some(pos) = self.queue.iter().position(|&(i, ..)| i == id) {
            let (_, _, assigned) = self.queue.remove(pos).unwrap();
            self.release(assigned);
        } else if self.expect(id) == Expect::Granted {
            self.release(needed);
        }
        self.settled.retain(|&(i, _)| i != id);
    }

    fn close(&mut self) {
        self.closed = true;
        let mut returned = 0;
        for (id, _, assigned) in self.queue.drain(..) {
            returned += assigned;
            self.settled.push((id, Expect::Closed));
        }
        self.release(returned);
    }

    fn forget(&mut self, n: usize) {
        let paid = n.min(self.debt);
        self.debt -= paid;
        self.capacity -= n - paid;
        self.fail_too_large();
    }

    fn resize(&mut self, capacity: usize) {
        if capacity >= self.capacity {
            let grow = capacity - self.capacity;
            self.capacity = capacity;
            self.release(grow);
        } else {
            let k = self.capacity - capacity;
            self.capacity = capacity;
            let taken = self.free.min(k);
            self.free -= taken;
            self.debt += k - taken;
            self.fail_too_large();
        }
    }
}

struct Live<'a> {
    id: usize,
    needed: usize,
    acquire: Acquire<'a>,
}

fn poll_acquire<'a>(
    a: &mut Acquire<'a>,
    w: &CountingWaker,
) -> Poll<Result<SemaphorePermit<'a>, awaitkit::AcquireError>> {
    Pin::new(a).poll(&mut w.context())
}

fn classify<T>(p: &Poll<Result<T, awaitkit::AcquireError>>) -> Expect {
    match p {
        Poll::Pending => Expect::Pending,
        Poll::Ready(Ok(_)) => Expect::Granted,
        Poll::Ready(Err(e)) if e.is_closed() => Expect::Closed,
        Poll::Ready(Err(_)) => Expect::TooLarge,
    }
}

fn run(initial: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let sem = Semaphore::new(initial);
    let mut model = Model::new(initial);
    let waker = CountingWaker::new();
    let mut held: Vec<SemaphorePermit<'_>> = Vec::new();
    let mut live: Vec<Live<'_>> = Vec::new();
    let mut next_id = 0;
    // Ids granted so far, in grant order, and arrival order of queued ids.
    let mut arrivals: Vec<usize> = Vec::new();

    for op in ops {
        match op {
            Op::Acquire(n) => {
                let id = next_id;
                next_id += 1;
                let mut acquire = sem.acquire_many(n);
                let got = poll_acquire(&mut acquire, &waker);
                let expected = model.acquire(id, n);
                prop_assert_eq!(
                    classify(&got),
                    expected,
                    "first poll of acquire_many({})",
                    n
                );
                match got {
                    Poll::Ready(Ok(p)) => held.push(p),
                    Poll::Ready(Err(_)) => {}
                    Poll::Pending => {
                        arrivals.push(id);
                        live.push(Live {
                            id,
                            needed: n,
                            acquire,
                        });
                    }
                }
            }
            Op::TryAcquire(n) => {
                let got = sem.try_acquire_many(n);
                prop_assert_eq!(got.is_ok(), model.try_acquire(n), "try_acquire_many({})", n);
                if let Ok(p) = got {
                    held.push(p);
                }
            }
            Op::Poll(k) if !live.is_empty() => {
                let k = k % live.len();
                let expected = model.expect(live[k].id);
                let got = poll_acquire(&mut live[k].acquire, &waker);
                prop_assert_eq!(classify(&got), expected);
                if let Poll::Ready(out) = got {
                    let w = live.remove(k);
                    if expected == Expect::Granted {
                        // FIFO: every waiter that arrived earlier and is still
                        // queued would have been served first.
                        let pos = arrivals.iter().position(|&i| i == w.id).unwrap();
                        for earlier in &arrivals[..pos] {
                            prop_assert!(
                                !model.queue.iter().any(|&(i, ..)| i == *earlier),
                                "waiter {} granted before earlier waiter {}",
                                w.id,
                                earlier
                            );
                        }
                    }
                    model.settled.retain(|&(i, _)| i != w.id);
                    if let Ok(p) = out {
                        held.push(p);
                    }
                }
            }
            Op::Cancel(k) if !live.is_empty() => {
                let w = live.remove(k % live.len());
                model.cancel(w.id, w.needed);
                drop(w.acquire);
            }
            Op::Release(k) if !held.is_empty() => {
                let p = held.remove(k % held.len());
                model.release(p.num_permits());
                drop(p);
            }
            Op::Forget(k) if !held.is_empty() => {
                let p = held.remove(k % held.len());
                model.forget(p.num_permits());
                p.forget();
            }
            Op::Add(n) => {
                sem.add_permits(n);
                model.capacity += n;
                model.release(n);
            }
            Op::Resize(c) => {
                sem.set_capacity(c);
                model.resize(c);
            }
            Op::Close => {
                sem.close();
                model.close();
            }
            Op::Poll(_) | Op::Cancel(_) | Op::Release(_) | Op::Forget(_) => {}
        }

        // The counts match the model.
        let stats = sem.stats();
        prop_assert_eq!(stats.capacity, model.capacity);
        prop_assert_eq!(stats.available, model.free);
        prop_assert_eq!(stats.waiters, model.queue.len());
        // Never more held than the capacity (plus what a shrink still owes).
        let holding: usize = held.iter().map(SemaphorePermit::num_permits).sum();
        prop_assert!(holding <= model.capacity + model.debt);
        if model.debt == 0 {
            prop_assert!(holding <= model.capacity);
        }
        // Conservation: held + assigned + free + granted-not-taken = capacity + debt.
        let assigned: usize = model.queue.iter().map(|&(_, _, a)| a).sum();
        let granted_untaken: usize = live
            .iter()
            .filter(|w| model.expect(w.id) == Expect::Granted)
            .map(|w| w.needed)
            .sum();
        prop_assert_eq!(
            holding + assigned + model.free + granted_untaken,
            model.capacity + model.debt
        );
        // No satisfiable head waiter stays pending: with a queue, nothing is
        // free (it would have gone to the head).
        if !model.queue.is_empty() {
            prop_assert_eq!(stats.available, 0);
        }
        // A waiter the model settled was woken.
        for w in &live {
            if model.expect(w.id) != Expect::Pending {
                prop_assert!(waker.wakes() > 0);
            }
        }
    }

    // At rest: drop everything; every permit comes back.
    drop(live);
    drop(held);
    let stats = sem.stats();
    prop_assert_eq!(stats.waiters, 0);
    prop_assert_eq!(stats.available, stats.capacity);
    prop_assert_eq!(stats.in_use, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2_000,
        // Shrunk failures are kept next to this file and replayed first.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operations_match_the_reference_model(
        initial in 0usize..5,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run(initial, ops)?;
    }
}
