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

/// "No entry": the end of a link chain. Links are `u32` (half the size of
/// `Option<usize>`, so a slot fits one cache line's worth of bytes), which
/// caps the line at `u32::MAX` entries at once.
const NIL: u32 = u32::MAX;

#[derive(Debug)]
pub(crate) struct WaitQueue<T> {
    slots: Vec<Slot<T>>,
    /// The first freed slot; freed slots are chained through `next`.
    free: u32,
    head: u32,
    tail: u32,
    len: usize,
    next_ticket: u64,
}

#[derive(Debug)]
struct Slot<T> {
    ticket: u64,
    prev: u32,
    next: u32,
    value: T,
}

/// `NIL` as `None`.
#[inline]
fn link(i: u32) -> Option<usize> {
    (i != NIL).then_some(i as usize)
}

impl<T> WaitQueue<T> {
    pub(crate) const fn new() -> Self {
        WaitQueue {
            slots: Vec::new(),
            free: NIL,
            head: NIL,
            tail: NIL,
            len: 0,
            next_ticket: 0,
        }
    }

    /// Joins the end of the line; returns the entry's index and ticket.
    /// Reuses the most recently freed slot (still warm in the cache).
    ///
    /// # Panics
    ///
    /// With `u32::MAX` slots in use (waiting, or unlinked and not freed).
    #[inline]
    pub(crate) fn push(&mut self, value: T) -> (usize, u64) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let tail = self.tail;
        let i = self.free;
        let i = if i != NIL {
            let slot = &mut self.slots[i as usize];
            self.free = slot.next;
            slot.ticket = ticket;
            slot.prev = tail;
            slot.next = NIL;
            slot.value = value;
            i
        } else {
            self.grow(ticket, value)
        };
        if tail != NIL {
            self.slots[tail as usize].next = i;
        } else {
            self.head = i;
        }
        self.tail = i;
        self.len += 1;
        (i as usize, ticket)
    }

    /// A new slot at the end of the slab (no freed slot to reuse).
    #[inline(never)]
    fn grow(&mut self, ticket: u64, value: T) -> u32 {
        // Indices stay below `u32::MAX - 1`: below `NIL`, and below the
        // semaphore's `DONE` / `UNQUEUED` sentinels where `usize` is 32 bits.
        const MAX_SLOTS: usize = (NIL - 1) as usize;
        assert!(
            self.slots.len() < MAX_SLOTS,
            "awaitkit: more than {MAX_SLOTS} queue slots (waiters) at once"
        );
        self.slots.push(Slot {
            ticket,
            prev: self.tail,
            next: NIL,
            value,
        });
        (self.slots.len() - 1) as u32
    }

    /// Takes an entry out of the line (its slot stays until freed).
    #[inline]
    pub(crate) fn unlink(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let (prev, next) = (slot.prev, slot.next);
        slot.prev = NIL;
        slot.next = NIL;
        if prev != NIL {
            self.slots[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.slots[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
        self.len -= 1;
    }

    /// Takes the first entry out of the line (its slot stays until freed):
    /// [`unlink`](WaitQueue::unlink) of the head, with less to check.
    #[inline]
    pub(crate) fn unlink_head(&mut self) -> Option<usize> {
        let i = link(self.head)?;
        let slot = &mut self.slots[i];
        let next = slot.next;
        slot.next = NIL;
        self.head = next;
        if next != NIL {
            self.slots[next as usize].prev = NIL;
        } else {
            self.tail = NIL;
        }
        self.len -= 1;
        Some(i)
    }

    /// The ticket of the first entry in line, or the next ticket when the
    /// line is empty: every entry with a smaller ticket has left the line.
    #[inline]
    pub(crate) fn first_ticket(&self) -> u64 {
        match link(self.head) {
            Some(h) => self.slots[h].ticket,
            None => self.next_ticket,
        }
    }

    /// Lets a later waiter reuse an unlinked entry's slot.
    #[inline]
    pub(crate) fn free(&mut self, i: usize) {
        debug_assert!(
            self.head != i as u32 && self.slots[i].prev == NIL && self.slots[i].next == NIL,
            "freeing a slot still in line"
        );
        self.slots[i].next = self.free;
        self.free = i as u32;
    }

    /// The first waiter in line.
    #[inline]
    pub(crate) fn head(&self) -> Option<usize> {
        link(self.head)
    }

    /// The ticket of the entry in slot `i`.
    #[inline]
    pub(crate) fn ticket(&self, i: usize) -> u64 {
        self.slots[i].ticket
    }

    /// The ticket the next waiter will get.
    #[cfg(test)]
    pub(crate) fn next_ticket(&self) -> u64 {
        self.next_ticket
    }

    /// Waiters in line.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.head == NIL
    }

    /// The indices of the waiters in line, head first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let mut cursor = self.head;
        std::iter::from_fn(move || {
            let i = link(cursor)?;
            cursor = self.slots[i].next;
            Some(i)
        })
    }
}

impl<T> Index<usize> for WaitQueue<T> {
    type Output = T;
    #[inline]
    fn index(&self, i: usize) -> &T {
        &self.slots[i].value
    }
}

impl<T> IndexMut<usize> for WaitQueue<T> {
    #[inline]
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
        assert_eq!(q.first_ticket(), ta);
        assert_eq!(q.unlink_head(), Some(a));
        assert_eq!(q.first_ticket(), q.ticket(c));
        q.unlink(d);
        assert_eq!(q.iter().collect::<Vec<_>>(), [c]);
        assert_eq!(q.unlink_head(), Some(c));
        assert_eq!(q.unlink_head(), None);
        assert_eq!(q.first_ticket(), q.next_ticket());
        assert!(q.is_empty() && q.head().is_none());
        assert_eq!(q.len(), 0);
        assert_eq!(q.next_ticket(), 4);
    }

    #[test]
    fn freed_slots_are_reused_last_freed_first() {
        let mut q = WaitQueue::new();
        let idx: Vec<usize> = (0..4).map(|k| q.push(k).0).collect();
        // Free the middle two (out of line first), then the head.
        q.unlink(idx[1]);
        q.unlink(idx[2]);
        q.free(idx[1]);
        q.free(idx[2]);
        assert_eq!(q.unlink_head(), Some(idx[0]));
        q.free(idx[0]);
        assert_eq!(q.iter().map(|i| q[i]).collect::<Vec<_>>(), [3]);
        // Reused last freed first; the line keeps its order.
        let reused: Vec<usize> = (4..7).map(|k| q.push(k).0).collect();
        assert_eq!(reused, [idx[0], idx[2], idx[1]]);
        assert_eq!(q.iter().map(|i| q[i]).collect::<Vec<_>>(), [3, 4, 5, 6]);
        // No freed slot left: the slab grows.
        let (fresh, _) = q.push(7);
        assert_eq!(fresh, 4);
        assert_eq!(q.len(), 5);
        let tickets: Vec<u64> = q.iter().map(|i| q.ticket(i)).collect();
        assert_eq!(tickets, [3, 4, 5, 6, 7]);
    }
}
