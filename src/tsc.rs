//! The CPU's time-stamp counter: the only `unsafe` of the crate's clocks
//! (two CPU intrinsics), shared by [`watch`](crate::watch)'s poll timings and
//! the default timers' cheap counter ([`Timer::counter_nanos`]).
//!
//! [`Timer::counter_nanos`]: crate::time::Timer::counter_nanos

use std::time::Instant;

/// The counter now (0 where there is none: check [`invariant`] first).
#[cfg(all(target_arch = "x86_64", not(target_env = "sgx")))]
#[inline(always)]
pub(crate) fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` exists on every x86-64 CPU, reads a register and has
    // no other effect. (The intrinsic is safe from Rust 1.87; our MSRV
    // still needs the block.)
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

/// The counter now (0 where there is none: check [`invariant`] first).
#[cfg(not(all(target_arch = "x86_64", not(target_env = "sgx"))))]
#[inline(always)]
pub(crate) fn rdtsc() -> u64 {
    0
}

/// Whether the CPU says its counter is invariant (constant rate, running in
/// every power state); virtual machines pass the bit through when their
/// hypervisor keeps the counter so.
#[cfg(all(target_arch = "x86_64", not(target_env = "sgx")))]
pub(crate) fn invariant() -> bool {
    use core::arch::x86_64::__cpuid;
    // SAFETY: `cpuid` exists on every x86-64 CPU (outside SGX enclaves,
    // excluded above) and only reads identification registers.
    #[allow(unused_unsafe)]
    let max_extended = unsafe { __cpuid(0x8000_0000) }.eax;
    if max_extended < 0x8000_0007 {
        return false;
    }
    // SAFETY: as above; leaf 0x8000_0007 exists (checked just before).
    #[allow(unused_unsafe)]
    let power = unsafe { __cpuid(0x8000_0007) };
    // EDX bit 8: "invariant TSC".
    power.edx & (1 << 8) != 0
}

/// Whether the CPU says its counter is invariant (never, here).
#[cfg(not(all(target_arch = "x86_64", not(target_env = "sgx"))))]
pub(crate) fn invariant() -> bool {
    false
}

/// A counter reading and an `Instant` taken together: the `Instant` is
/// bracketed by two counter reads and paired with their midpoint. A pair
/// whose reads are more than 2 000 ticks apart (under a microsecond at any
/// plausible rate; the thread was preempted between them) is taken again,
/// a few times.
pub(crate) fn paired_reading() -> (u64, Instant) {
    let mut best = None;
    for _ in 0..8 {
        let before = rdtsc();
        let at = Instant::now();
        let after = rdtsc();
        let gap = after.saturating_sub(before);
        let pair = (before + gap / 2, at);
        if gap <= 2_000 {
            return pair;
        }
        if best.is_none_or(|(g, _)| gap < g) {
            best = Some((gap, pair));
        }
    }
    best.map_or_else(|| (rdtsc(), Instant::now()), |(_, pair)| pair)
}
