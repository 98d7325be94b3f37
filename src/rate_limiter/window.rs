//! The two rate algorithms, as plain data: the strict sliding window's log of
//! recent grants, and GCRA's one-number state. No locks, no clocks — times
//! are nanoseconds since the limiter's epoch, passed in by the caller.

use std::collections::VecDeque;

/// Up to this many entries the log keeps every grant time exactly. A quota
/// of more calls than this per period stamps grants closer together than
/// `period / EXACT_ENTRIES` with the latest of their times (later, so the
/// window stays strict), which bounds the log at about this many entries.
pub(super) const EXACT_ENTRIES: u64 = 1024;

/// The strict sliding window: every grant of the last period, oldest first,
/// with equal (or merged) times sharing one entry.
///
/// The newest entry (the one grants merge into) is kept apart from the
/// older ones, so the steady state of a busy limiter — a grant merged into
/// it, nothing old enough to leave — touches no queue index arithmetic.
///
/// Aligned to eight bytes on every target, so a keyed limiter's key can
/// keep a tag beside a boxed log's address
/// ([`WinCell`](super::compact::WinCell)).
#[derive(Clone, Debug, Default)]
#[repr(align(8))]
pub(super) struct Log {
    /// The entries before `tail`, oldest first (never any without a `tail`).
    closed: VecDeque<Entry>,
    /// The newest entry.
    tail: Option<Entry>,
    /// The absolute index of the oldest entry (entries dropped so far).
    base: u64,
    /// The sum of the entries' counts.
    total: u64,
    /// The earliest grant merged into `tail`.
    tail_first: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    at: u64,
    count: u64,
}

impl Log {
    /// Forgets the grants that no window containing `now` can see: those
    /// at or before `now - period`.
    #[inline]
    pub(super) fn expire(&mut self, now: u64, period: u64) {
        let oldest = match self.closed.front() {
            Some(front) => front.at,
            None => match self.tail {
                Some(tail) => tail.at,
                None => return,
            },
        };
        if oldest.saturating_add(period) <= now {
            self.expire_from_front(now, period);
        }
    }

    /// [`expire`](Log::expire), once the oldest entry is known to go.
    #[inline(never)]
    fn expire_from_front(&mut self, now: u64, period: u64) {
        while let Some(front) = self.closed.front() {
            if front.at.saturating_add(period) > now {
                return;
            }
            self.total -= front.count;
            self.closed.pop_front();
            self.base += 1;
        }
        if let Some(tail) = self.tail {
            if tail.at.saturating_add(period) <= now {
                self.total -= tail.count;
                self.tail = None;
                self.base += 1;
            }
        }
    }

    /// The earliest time, not before `now`, at which `n` more grants keep
    /// every window of `period` at or under `max_calls` (call
    /// [`expire`](Log::expire) with `now` first). `u64::MAX` when `n` alone
    /// exceeds `max_calls`.
    #[inline]
    pub(super) fn earliest(&self, now: u64, n: u64, max_calls: u64, period: u64) -> u64 {
        match self.total.checked_add(n) {
            Some(calls) if calls <= max_calls => now,
            _ => self.earliest_over(now, n, max_calls, period),
        }
    }

    /// [`earliest`](Log::earliest) when the window has no room now.
    #[inline(never)]
    fn earliest_over(&self, now: u64, n: u64, max_calls: u64, period: u64) -> u64 {
        let over = (u128::from(self.total) + u128::from(n)).saturating_sub(u128::from(max_calls));
        if over == 0 {
            return now;
        }
        if over > u128::from(self.total) {
            return u64::MAX;
        }
        let over = over as u64;
        // The grant that must leave the window first: the `over`-th oldest.
        let mut seen = 0;
        for entry in self.closed.iter().chain(&self.tail) {
            seen += entry.count;
            if seen >= over {
                return entry.at.saturating_add(period).max(now);
            }
        }
        u64::MAX
    }

    /// Records `n` grants at `at` (not before any earlier record) and
    /// returns the index to [`unrecord`](Log::unrecord) them with. With a
    /// non-zero `quantum`, a grant within `quantum` of the last entry's first
    /// grant joins it, moving its time to `at`.
    #[inline]
    pub(super) fn record(&mut self, at: u64, n: u64, quantum: u64) -> u64 {
        self.total += n;
        if let Some(tail) = &mut self.tail {
            if at == tail.at || at < self.tail_first.saturating_add(quantum) {
                tail.at = tail.at.max(at);
                tail.count += n;
                return self.base + self.closed.len() as u64;
            }
        }
        self.open(at, n)
    }

    /// Starts a new last entry (the old one joins the closed ones) and
    /// returns its index.
    #[inline(never)]
    fn open(&mut self, at: u64, n: u64) -> u64 {
        if let Some(tail) = self.tail.replace(Entry { at, count: n }) {
            self.closed.push_back(tail);
        }
        self.tail_first = at;
        self.base + self.closed.len() as u64
    }

    /// Takes back `n` grants recorded at `index`, if they are still in the
    /// log. Removing grants never breaks the window's promise.
    pub(super) fn unrecord(&mut self, index: u64, n: u64) {
        let Some(offset) = index.checked_sub(self.base) else {
            return;
        };
        let closed = self.closed.len() as u64;
        let entry = match offset {
            o if o < closed => self.closed.get_mut(o as usize),
            o if o == closed => self.tail.as_mut(),
            _ => None,
        };
        if let Some(entry) = entry {
            let n = n.min(entry.count);
            entry.count -= n;
            self.total -= n;
        }
    }

    /// Grants still in the window (after the last `expire`).
    pub(super) fn total(&self) -> u64 {
        self.total
    }

    /// Entries held (for the memory bound).
    pub(super) fn entries(&self) -> usize {
        self.closed.len() + usize::from(self.tail.is_some())
    }

    /// The newest entry's time (the last grant), if any.
    pub(super) fn newest(&self) -> Option<u64> {
        self.tail.map(|tail| tail.at)
    }

    /// The entries' times and counts, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.closed
            .iter()
            .chain(&self.tail)
            .map(|entry| (entry.at, entry.count))
    }

    /// The one entry's time and count, when the log holds exactly one (a
    /// keyed limiter keeps such a log in its compact form).
    pub(super) fn only(&self) -> Option<(u64, u64)> {
        match (&self.tail, self.closed.is_empty()) {
            (Some(tail), true) => Some((tail.at, tail.count)),
            _ => None,
        }
    }
}

/// The quantum [`Log::record`] merges with: zero (exact) for quotas of at
/// most [`EXACT_ENTRIES`] calls.
pub(super) fn quantum(max_calls: u64, period: u64) -> u64 {
    if max_calls <= EXACT_ENTRIES {
        0
    } else {
        period / EXACT_ENTRIES
    }
}

/// GCRA (the generic cell rate algorithm, a virtual-scheduling token
/// bucket): `burst` calls at once after an idle spell, then one per
/// `interval`. `tolerance` is `burst * interval`, or `u64::MAX` when that
/// overflows (then the arithmetic is done in 128 bits).
#[derive(Clone, Copy, Debug)]
pub(super) struct Gcra {
    pub(super) interval: u64,
    pub(super) burst: u64,
    pub(super) tolerance: u64,
}

impl Gcra {
    /// With theoretical arrival time `tat`, are `n` more calls allowed at
    /// `now`? `Ok(the new tat)`, or `Err(the earliest time they would be)`.
    /// The caller checks `n <= burst` first (more never fits). A `tat` of
    /// `u64::MAX` means "never again" (past 584 years).
    #[inline]
    pub(super) fn check(&self, tat: u64, now: u64, n: u64) -> Result<u64, u64> {
        if self.tolerance == u64::MAX || tat == u64::MAX {
            return check_wide(self.interval, self.burst, tat, now, n);
        }
        // n <= burst, so the cost fits where the tolerance does.
        let cost = n * self.interval;
        let start = tat.max(now);
        let new = start.saturating_add(cost);
        let slack = self.tolerance - cost;
        if start - now <= slack {
            Ok(new)
        } else {
            // `start + cost - tolerance`, which is later than `now`, without
            // the sum (it may pass `u64::MAX`: `new` saturated would make
            // the time too early, even "now" for a refusal, and a driver
            // would find its head due again and again).
            Err(start - slack)
        }
    }
}

/// [`Gcra::check`] in 128 bits, out of line (it takes its operands by
/// value, so the inlined check keeps the parameters in registers).
#[cold]
#[inline(never)]
fn check_wide(interval: u64, burst: u64, tat: u64, now: u64, n: u64) -> Result<u64, u64> {
    if tat == u64::MAX {
        return Err(u64::MAX);
    }
    let (interval, now) = (u128::from(interval), u128::from(now));
    let new = u128::from(tat).max(now) + u128::from(n) * interval;
    let allowed_at = new.saturating_sub(u128::from(burst) * interval);
    if allowed_at <= now {
        Ok(u64::try_from(new).unwrap_or(u64::MAX))
    } else {
        Err(u64::try_from(allowed_at).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_admits_max_calls_then_waits_for_the_oldest() {
        let mut log = Log::default();
        for t in [0, 10, 20] {
            log.expire(t, 100);
            assert_eq!(log.earliest(t, 1, 3, 100), t);
            log.record(t, 1, 0);
        }
        assert_eq!(log.earliest(30, 1, 3, 100), 100);
        assert_eq!(log.earliest(30, 2, 3, 100), 110);
        assert_eq!(log.earliest(30, 4, 3, 100), u64::MAX);
        assert_eq!(log.earliest(30, u64::MAX, u64::MAX, 100), 120); // no overflow
        log.expire(100, 100);
        assert_eq!(log.total(), 2);
        assert_eq!(log.earliest(100, 1, 3, 100), 100);
    }

    #[test]
    fn equal_times_share_an_entry_and_unrecord_frees_them() {
        let mut log = Log::default();
        let a = log.record(5, 2, 0);
        let b = log.record(5, 1, 0);
        assert_eq!(a, b);
        assert_eq!(log.entries(), 1);
        log.unrecord(a, 1);
        assert_eq!(log.total(), 2);
        log.expire(105, 100);
        log.unrecord(a, 5); // expired: nothing to take back
        assert_eq!(log.total(), 0);
    }

    #[test]
    fn quantum_bounds_the_log_and_stamps_late() {
        let period = 1_000_000;
        let q = quantum(1 << 20, period);
        assert_eq!(q, period / EXACT_ENTRIES);
        let mut log = Log::default();
        for t in 0..period {
            log.record(t, 1, q);
        }
        assert!(
            log.entries() <= EXACT_ENTRIES as usize + 1,
            "{}",
            log.entries()
        );
        // The first entry was stamped at the latest of its grants.
        log.expire(period + q - 2, period);
        assert_eq!(log.total(), period);
    }

    #[test]
    fn gcra_allows_a_burst_then_one_per_interval() {
        let gcra = |interval: u64, burst: u64| Gcra {
            interval,
            burst,
            tolerance: interval.saturating_mul(burst),
        };
        let g = gcra(10, 3);
        let mut tat = 0;
        for _ in 0..3 {
            tat = g.check(tat, 100, 1).unwrap();
        }
        assert_eq!(g.check(tat, 100, 1), Err(110));
        tat = g.check(tat, 110, 1).unwrap();
        assert_eq!(g.check(tat, 110, 1), Err(120));
        // A full burst at once after an idle spell.
        assert_eq!(g.check(0, 500, 3), Ok(530));
        // Huge intervals: a burst, then never.
        let g = gcra(u64::MAX, 2);
        let tat = g.check(0, 0, 2).unwrap();
        assert_eq!(tat, u64::MAX);
        assert_eq!(g.check(tat, u64::MAX - 1, 1), Err(u64::MAX));
        // An arrival time that reaches 584 years is "never", even where the
        // exact arithmetic would still allow the rest of a burst.
        let tat = g.check(0, 0, 1).unwrap();
        assert_eq!(g.check(tat, 0, 1), Err(u64::MAX));
        // Saturating near the end of time: never again.
        let g = gcra(1 << 62, 3);
        assert_eq!(g.check(u64::MAX - 5, u64::MAX - 5, 1), Ok(u64::MAX));
    }

    /// The log as it was before the newest entry was kept apart: every
    /// entry in one queue. The reference for the randomized test below.
    #[derive(Default)]
    struct Flat {
        entries: VecDeque<Entry>,
        base: u64,
        total: u64,
        tail_first: u64,
    }

    impl Flat {
        fn expire(&mut self, now: u64, period: u64) {
            while let Some(front) = self.entries.front() {
                if front.at.saturating_add(period) > now {
                    break;
                }
                self.total -= front.count;
                self.entries.pop_front();
                self.base += 1;
            }
        }

        fn earliest(&self, now: u64, n: u64, max_calls: u64, period: u64) -> u64 {
            let over =
                (u128::from(self.total) + u128::from(n)).saturating_sub(u128::from(max_calls));
            if over == 0 {
                return now;
            }
            if over > u128::from(self.total) {
                return u64::MAX;
            }
            let mut seen = 0;
            for entry in &self.entries {
                seen += entry.count;
                if u128::from(seen) >= over {
                    return entry.at.saturating_add(period).max(now);
                }
            }
            u64::MAX
        }

        fn record(&mut self, at: u64, n: u64, quantum: u64) -> u64 {
            self.total += n;
            if let Some(tail) = self.entries.back_mut() {
                if at == tail.at || at < self.tail_first.saturating_add(quantum) {
                    tail.at = tail.at.max(at);
                    tail.count += n;
                    return self.base + self.entries.len() as u64 - 1;
                }
            }
            self.entries.push_back(Entry { at, count: n });
            self.tail_first = at;
            self.base + self.entries.len() as u64 - 1
        }

        fn unrecord(&mut self, index: u64, n: u64) {
            let Some(offset) = index.checked_sub(self.base) else {
                return;
            };
            if let Some(entry) = self.entries.get_mut(offset as usize) {
                let n = n.min(entry.count);
                entry.count -= n;
                self.total -= n;
            }
        }
    }

    #[test]
    fn log_matches_the_flat_log_on_random_operations() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for round in 0..200 {
            let period = 1 + next(50);
            let max_calls = 1 + next(12);
            let quantum = if round % 2 == 0 { 0 } else { next(8) };
            let (mut log, mut flat) = (Log::default(), Flat::default());
            let mut now = 0;
            let mut indices = Vec::new();
            for _ in 0..300 {
                now += next(6);
                log.expire(now, period);
                flat.expire(now, period);
                assert_eq!(log.total(), flat.total);
                let n = 1 + next(3);
                let at = log.earliest(now, n, max_calls, period);
                assert_eq!(at, flat.earliest(now, n, max_calls, period));
                match next(4) {
                    0 if !indices.is_empty() => {
                        let index = indices[next(indices.len() as u64) as usize];
                        let m = 1 + next(3);
                        log.unrecord(index, m);
                        flat.unrecord(index, m);
                    }
                    _ if at == now => {
                        let index = log.record(now, n, quantum);
                        assert_eq!(index, flat.record(now, n, quantum));
                        indices.push(index);
                    }
                    _ => {}
                }
                assert_eq!(log.total(), flat.total);
                assert_eq!(log.entries(), flat.entries.len());
            }
        }
    }
}
