//! The clock a [`Watch`](super::Watch) reads twice per poll: the crate's
//! shared time-stamp counter ([`crate::time::clock`], which the
//! [`DefaultTimer`](crate::time::DefaultTimer) reads too), in raw ticks,
//! converted to time only when somebody looks.

pub(crate) use crate::time::clock::{Scale, is_tsc, lower_bound, scale, to_duration};

/// The counter now, in ticks (see [`crate::time::clock::ticks`]).
#[inline]
pub(crate) fn now() -> u64 {
    crate::time::clock::ticks()
}
