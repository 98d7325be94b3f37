//! The FIFO line of waiters shared by the [`Semaphore`](crate::Semaphore)
//! and the [`RateLimiter`](crate::RateLimiter): a slab of entries linked by
//! index (no unsafe), each with a ticket in arrival order.
//!
//! An entry taken out of the line ([`unlink`](WaitQueue::unlink)) keeps its
//! slot until [`free`](WaitQueue::free)d, so its owner can still find it; a
//! freed slot is reused by a later waiter with a newer ticket, so an owner
//! holding `(index, ticket)` never mistakes another waiter for itself.

#![forbid(unsafe_code)]

use std::ops::{Index, IndexMut};

#[derive(Debug)]
pub(crate) struct WaitQueue<T> {
    slots: Vec<Slot<T>>,
    free: Vec<usize>,
    head: Option<usize>,
    tail: Option<usize>,
    len: usize,
    next_ticket: u64,
}

#[derive(Debug)]
struct Slot<T> {
    ticket: u64,
    prev: Option<usize>,
    next: Option<usize>,
    value: T,
}

impl<T> WaitQueue<T> {
    pub(crate) const fn new() -> Self {
        WaitQueue {
            slots: Vec::new(),
            free: Vec::new(),
            head: None,
            tail: None,
            len: 0,
            next_ticket: 0,
        }
    }

    /// Joins the end of the line; returns the entry's index and ticket.
    pub(crate) fn push(&mut self, value: T) -> (usize, u64) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let slot = Slot {
            ticket,
            prev: self.tail,
            next: None,
            value,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        match self.tail {
            Some(t) => self.slots[t].next = Some(i),
            None => self.head = Some(i),
        }
        self.tail = Some(i);
        self.len += 1;
        (i, ticket)
    }

    /// Takes an entry out of the line (its slot stays until freed).
    pub(crate) fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.slots[i].prev, self.slots[i].next);
        match prev {
            Some(p) => self.slots[p].next = next,
            None => self.head = next,
        }
        match next {
            Some(n) => self.slots[n].prev = prev,
            None => self.tail = prev,
        }
        self.slots[i].prev = None;
        self.slots[i].next = None;
        self.len -= 1;
    }

    /// Lets a later waiter reuse an unlinked entry's slot.
    pub(crate) fn free(&mut self, i: usize) {
        self.free.push(i);
    }

    /// The first waiter in line.
    pub(crate) fn head(&self) -> Option<usize> {
        self.head
    }

    /// The ticket of the entry in slot `i`.
    pub(crate) fn ticket(&self, i: usize) -> u64 {
        self.slots[i].ticket
    }

    /// The ticket the next waiter will get.
    pub(crate) fn next_ticket(&self) -> u64 {
        self.next_ticket
    }

    /// Waiters in line.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    /// The indices of the waiters in line, head first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let mut cursor = self.head;
        std::iter::from_fn(move || {
            let i = cursor?;
            cursor = self.slots[i].next;
            Some(i)
        })
    }
}

impl<T> Index<usize> for WaitQueue<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        &self.slots[i].value
    }
}

impl<T> IndexMut<usize> for WaitQueue<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.slots[i].value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_with_removal_from_the_middle_and_slot_reuse() {
        let mut q = WaitQueue::new();
        let (a, ta) = q.push('a');
        let (b, _) = q.push('b');
        let (c, _) = q.push('c');
        q.unlink(b);
        assert_eq!(q.iter().map(|i| q[i]).collect::<String>(), "ac");
        q.free(b);
        let (d, td) = q.push('d');
        assert_eq!(d, b, "the slot is reused");
        assert!(td > ta && q.ticket(d) == td);
        assert_eq!(q.iter().map(|i| q[i]).collect::<String>(), "acd");
        q.unlink(a);
        q.unlink(c);
        q.unlink(d);
        assert!(q.is_empty() && q.head().is_none());
        assert_eq!(q.len(), 0);
        assert_eq!(q.next_ticket(), 4);
    }
}
