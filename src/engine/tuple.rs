//! Heterogeneous children for `gather!` and `try_gather!`: a boxed tuple of
//! slots in one allocation with a one-word ready set (the engine's
//! [`ReadySet`](super::ReadySet) protocol for one chunk of one level), one
//! waker per tuple element.

use super::ParentWaker;
use crate::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
use crate::unwind::Panics;
use futures_core::FusedFuture;
use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::mem::{ManuallyDrop, align_of, size_of};
use std::pin::Pin;
use std::ptr::{self, NonNull};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

/// One element of a gathered tuple.
#[doc(hidden)]
#[derive(Debug)]
pub enum TupleSlot<F: Future> {
    /// Still running.
    Running(F),
    /// Finished; output kept until every element is done.
    Done(F::Output),
    /// Output taken (or the error handed out).
    Gone,
}

impl<F: Future> TupleSlot<F> {
    /// Polls the element if it is running; `Ready` exactly once, when it
    /// finishes (its output kept in the slot).
    ///
    /// # Safety
    ///
    /// `self` is never moved after the first call (it lives in a box owned
    /// by the gathering future).
    unsafe fn poll_slot(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: forwarded caller contract.
        let output = std::task::ready!(unsafe { self.poll_running(cx) });
        let output = self.retire(output);
        *self = TupleSlot::Done(output);
        Poll::Ready(())
    }

    /// Polls the element if it is running (`Pending` if not: a stale bit of
    /// a finished one); its output when it finishes, the child still in the
    /// slot (see [`TupleSlot::retire`]).
    ///
    /// # Safety
    ///
    /// As [`TupleSlot::poll_slot`].
    #[inline]
    unsafe fn poll_running(&mut self, cx: &mut Context<'_>) -> Poll<F::Output> {
        let TupleSlot::Running(fut) = self else {
            return Poll::Pending;
        };
        // SAFETY: caller contract: the slot does not move; the child is only
        // dropped in place, by `retire` or the box's drop.
        unsafe { Pin::new_unchecked(fut) }.poll(cx)
    }

    /// Drops the finished child in place (the slot left `Gone`) and hands
    /// its output back. If the child's destructor panics, the slot is still
    /// left `Gone` (an assignment writes even when the old value's drop
    /// unwinds), the output is dropped outside that unwind and the panic
    /// propagates — or, while this thread already unwinds, the panic is
    /// discarded and the output handed back (a second panic would abort).
    #[inline]
    fn retire(&mut self, output: F::Output) -> F::Output {
        let mut panics = Panics::default();
        panics.catch(|| *self = TupleSlot::Gone);
        crate::unwind::hand_back(panics, output)
    }

    fn take(&mut self) -> F::Output {
        match std::mem::replace(self, TupleSlot::Gone) {
            TupleSlot::Done(output) => output,
            _ => unreachable!("awaitkit: tuple element taken before it finished"),
        }
    }
}

impl<T, E, F: Future<Output = Result<T, E>>> TupleSlot<F> {
    fn take_err(&mut self) -> Result<(), E> {
        if let TupleSlot::Done(Err(_)) = self {
            if let TupleSlot::Done(Err(e)) = std::mem::replace(self, TupleSlot::Gone) {
                return Err(e);
            }
        }
        Ok(())
    }

    fn take_ok(&mut self) -> T {
        match self.take() {
            Ok(v) => v,
            Err(_) => unreachable!("awaitkit: error left in a tuple slot"),
        }
    }
}

/// Keeps [`TupleFutures`] implemented only here: `gather!` relies on its
/// `LEN` fitting one bit-tree word, and on `drop_slots` dropping each slot.
mod sealed {
    pub trait Sealed {}
}

/// A tuple of futures that `gather!` can run (sealed: implemented for tuples
/// of 1 to 16 futures and `()` only).
///
/// ```compile_fail,E0277
/// struct Mine;
/// impl awaitkit::__private::TupleFutures for Mine {
///     type Slots = ();
///     type Output = ();
///     const LEN: usize = 65;
///     fn into_slots(self) {}
///     unsafe fn poll_child(_: &mut (), _: usize, _: &mut std::task::Context<'_>) -> std::task::Poll<()> {
///         std::task::Poll::Pending
///     }
///     fn take_outputs(_: &mut ()) {}
///     unsafe fn drop_slots(_: *mut ()) {}
/// }
/// ```
#[doc(hidden)]
pub trait TupleFutures: sealed::Sealed {
    /// The boxed state: a tuple of [`TupleSlot`]s.
    type Slots;
    /// A tuple of the outputs.
    type Output;
    /// Number of elements.
    const LEN: usize;
    /// Wraps each future in a slot.
    fn into_slots(self) -> Self::Slots;
    /// Polls element `i`; `Ready` once, when it finishes.
    ///
    /// # Safety
    ///
    /// `slots` never moves after the first call.
    unsafe fn poll_child(slots: &mut Self::Slots, i: usize, cx: &mut Context<'_>) -> Poll<()>;
    /// Takes every output; all must be finished.
    fn take_outputs(slots: &mut Self::Slots) -> Self::Output;
    /// Drops every slot in place; if destructors panic, the others are
    /// still dropped and the first panic propagates afterwards.
    ///
    /// # Safety
    ///
    /// `slots` points at live slots, dropped here once and never used again.
    unsafe fn drop_slots(slots: *mut Self::Slots);
    /// The slots of the empty tuple; panics for any other.
    fn empty() -> Self::Slots {
        unreachable!("awaitkit: only the empty tuple has no chunk")
    }
}

/// A tuple of fallible futures sharing one error type, for `try_gather!`.
#[doc(hidden)]
pub trait TryTupleFutures: TupleFutures {
    /// The common error type.
    type Error;
    /// The tuple of success values.
    type Ok;
    /// Takes the error out of element `i` if it finished with one.
    fn take_err(slots: &mut Self::Slots, i: usize) -> Result<(), Self::Error>;
    /// Takes every success value; all must be finished with `Ok`.
    fn take_oks(slots: &mut Self::Slots) -> Self::Ok;
}

impl sealed::Sealed for () {}

impl TupleFutures for () {
    type Slots = ();
    type Output = ();
    const LEN: usize = 0;
    fn into_slots(self) {}
    unsafe fn poll_child(_: &mut (), _: usize, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
    fn take_outputs(_: &mut ()) {}
    unsafe fn drop_slots(_: *mut ()) {}
    fn empty() {}
}

impl TryTupleFutures for () {
    type Error = std::convert::Infallible;
    type Ok = ();
    fn take_err(_: &mut (), _: usize) -> Result<(), Self::Error> {
        Ok(())
    }
    fn take_oks(_: &mut ()) {}
}

macro_rules! impl_tuple {
    ($len:expr; $($F:ident $T:ident $idx:tt),+) => {
        impl<$($F: Future),+> sealed::Sealed for ($($F,)+) {}

        impl<$($F: Future),+> TupleFutures for ($($F,)+) {
            type Slots = ($(TupleSlot<$F>,)+);
            type Output = ($($F::Output,)+);
            const LEN: usize = $len;
            fn into_slots(self) -> Self::Slots {
                ($(TupleSlot::Running(self.$idx),)+)
            }
            unsafe fn poll_child(slots: &mut Self::Slots, i: usize, cx: &mut Context<'_>) -> Poll<()> {
                match i {
                    // SAFETY: forwarded caller contract (a field of a pinned
                    // tuple is pinned too).
                    $($idx => unsafe { slots.$idx.poll_slot(cx) },)+
                    _ => Poll::Pending,
                }
            }
            fn take_outputs(slots: &mut Self::Slots) -> Self::Output {
                ($(slots.$idx.take(),)+)
            }
            unsafe fn drop_slots(slots: *mut Self::Slots) {
                let mut panics = Panics::default();
                // SAFETY: caller contract; each field is dropped once.
                $(panics.catch(|| unsafe { ptr::drop_in_place(&raw mut (*slots).$idx) });)+
                panics.resume();
            }
        }

        impl<Err, $($T, $F: Future<Output = Result<$T, Err>>),+> TryTupleFutures for ($($F,)+) {
            type Error = Err;
            type Ok = ($($T,)+);
            fn take_err(slots: &mut Self::Slots, i: usize) -> Result<(), Err> {
                match i {
                    $($idx => slots.$idx.take_err(),)+
                    _ => Ok(()),
                }
            }
            fn take_oks(slots: &mut Self::Slots) -> Self::Ok {
                ($(slots.$idx.take_ok(),)+)
            }
        }
    };
}

impl_tuple!(1; A0 T0 0);
impl_tuple!(2; A0 T0 0, A1 T1 1);
impl_tuple!(3; A0 T0 0, A1 T1 1, A2 T2 2);
impl_tuple!(4; A0 T0 0, A1 T1 1, A2 T2 2, A3 T3 3);
impl_tuple!(5; A0 T0 0, A1 T1 1, A2 T2 2, A3 T3 3, A4 T4 4);
impl_tuple!(6; A0 T0 0, A1 T1 1, A2 T2 2, A3 T3 3, A4 T4 4, A5 T5 5);
impl_tuple!(7; A0 T0 0, A1 T1 1, A2 T2 2, A3 T3 3, A4 T4 4, A5 T5 5, A6 T6 6);
impl_tuple!(8; A0 T0 0, A1 T1 1, A2 T2 2, A3 T3 3, A4 T4 4, A5 T5 5, A6 T6 6, A7 T7 7);
impl_tuple!(9; A0 T0 0, A1 T1 1, A2 T2 2, A3 T3 3, A4 T4 4, A5 T5 5, A6 T6 6, A7 T7 7, A8 T8 8);
impl_tuple!(10; A0 T0 0, A1 T1 1, A2 T2 2, A3 T3 3, A4 T4 4, A5 T5 5, A6 T6 6, A7 T7 7, A8 T8 8,
    A9 T9 9);
impl_tuple!(11; A0 T0 0, A1 T1 1, A2 T2 2, A3 T3 3, A4 T4 4, A5 T5 5, A6 T6 6, A7 T7 7, A8 T8 8,
    A9 T9 9, A10 T10 10);
impl_tuple!(12; A0 T0 0, A1 T1 1, A2 T2 2, A3 T3 3, A4 T4 4, A5 T5 5, A6 T6 6, A7 T7 7, A8 T8 8,
    A9 T9 9, A10 T10 10, A11 T11 11);
impl_tuple!(13; A0 T0 0, A1 T1 1, A2 T2 2, A3 T3 3, A4 T4 4, A5 T5 5, A6 T6 6, A7 T7 7, A8 T8 8,
    A9 T9 9, A10 T10 10, A11 T11 11, A12 T12 12);
impl_tuple!(14; A0 T0 0, A1 T1 1, A2 T2 2, A3 T3 3, A4 T4 4, A5 T5 5, A6 T6 6, A7 T7 7, A8 T8 8,
    A9 T9 9, A10 T10 10, A11 T11 11, A12 T12 12, A13 T13 13);
impl_tuple!(15; A0 T0 0, A1 T1 1, A2 T2 2, A3 T3 3, A4 T4 4, A5 T5 5, A6 T6 6, A7 T7 7, A8 T8 8,
    A9 T9 9, A10 T10 10, A11 T11 11, A12 T12 12, A13 T13 13, A14 T14 14);
impl_tuple!(16; A0 T0 0, A1 T1 1, A2 T2 2, A3 T3 3, A4 T4 4, A5 T5 5, A6 T6 6, A7 T7 7, A8 T8 8,
    A9 T9 9, A10 T10 10, A11 T11 11, A12 T12 12, A13 T13 13, A14 T14 14, A15 T15 15);

/// The low bits of a child waker's data pointer hold its element's index, so
/// a block is aligned to hold every index of the largest tuple (16).
const INDEX_MASK: usize = 0b1111;

/// The index mask of a *wide* block: a [`SmallSet`] of 17 to 63 children,
/// whose block is aligned to 64 bytes. Its wakers have their own vtable
/// ([`WIDE_VTABLE`]), which knows the mask.
const WIDE_MASK: usize = 0b11_1111;

/// The tuple is finished (done or failed fast): set in the ready word for
/// good, so a stale clone's wake never finds it zero (see [`Head`]).
const CLOSED: u64 = 1 << 63;

/// The non-generic head of a tuple's one allocation: the ready set of a
/// single word, the parent task's waker and what freeing needs. It follows
/// the protocol of a one-chunk, one-level [`ReadySet`](super::ReadySet)
/// (`ready.rs`): a wake is one `fetch_or`, and the waker that turns the word
/// from zero to non-zero wakes the parent. Clones hold a reference each; the
/// borrowed waker a child is polled with owns nothing.
///
/// The owner takes the word's bits at the start of a pass (one swap, or a
/// load and a store while nothing escaped, see below) and leaves it alone
/// until the next pass: a wake from another thread during the pass finds
/// it zero and wakes the parent as any other wake would, and the owner
/// reads the word once more after the children (a load) and wakes its own
/// task if a bit is there (it may have been set while no parent waker was
/// registered yet). So a pass costs the owner one read-modify-write at
/// most, and a wake at most one `fetch_or` plus the parent waker's
/// protocol. Once the tuple is finished the owner stores [`CLOSED`]: a
/// stale clone never wakes the task again.
///
/// The parent's waker is registered lazily: only a waker that escaped a
/// child's poll (a clone, counted in `refs`) can wake a child between the
/// owner's polls, so the owner registers only when one exists
/// ([`Head::escaped`]), and reads the word after registering: at the start
/// of a pass (before it takes the bits) and at its end. Once a waker was
/// registered, every later pass registers its own task's waker first
/// ([`Head::registered`]), even with no clone alive: a wake during the pass
/// from a thread a child lent its borrowed waker to finds the word zero and
/// wakes the parent, which must be this poll's task, not one the future has
/// left (the same waker again is a comparison, no write). A wake that found
/// the word zero before that registration may have gone to an older waker,
/// or to none, but its bit is seen by that read: the wake's `fetch_or`
/// comes before its read-modify-writes on the parent waker's state, the
/// registration's read-modify-writes on that state before the owner's read,
/// so either the wake finds the new waker or the owner finds the bit.
/// (A registration that finds the waker unchanged writes nothing: the
/// registered waker is then already this task's, which every wake reaches.)
/// Children that only wake themselves, or wake the borrowed waker from
/// another thread during their own poll, never make the owner clone the
/// parent's waker.
///
/// Two ways around read-modify-writes when nothing escaped:
///
/// * a wake on the owner's own thread during a pass (a child waking itself,
///   or a sibling from its poll) sets its bit in [`Head::local`] with a
///   plain load and store: only the owner's thread touches that word, which
///   [`Head::owner`] tells a wake (the owner writes its thread's marker
///   there for the pass and zero after it);
/// * while no waker escaped (`refs == 1`, read with acquire after the last
///   clone's release), only the owner can touch the ready word: the pass
///   starts with a load and a store instead of a swap (a thread a child
///   lends its borrowed waker to is joined before that poll returns, and a
///   clone can only be taken from a waker).
#[repr(C, align(16))]
struct Head {
    refs: AtomicUsize,
    /// Bit `i`: element `i` was woken since the owner last took the bits;
    /// [`CLOSED`]: the tuple is finished.
    ready: AtomicU64,
    /// Bits of elements woken on the owner's own thread during a pass (a
    /// self-wake, or a sibling woken from a child's poll): only that thread
    /// touches it, with a plain load and store; taken at the next pass.
    /// (A std atomic even under loom: one thread only, nothing to model.)
    local: std::sync::atomic::AtomicU64,
    /// The polling thread's [`thread_marker`] during a pass, zero between
    /// passes: a wake compares it with its own thread's. Only the owner
    /// writes it, so a thread that is not polling never reads its own
    /// marker there (its own earlier stores of it, as a previous owner, are
    /// followed in its program order by its store of zero). A std atomic
    /// even under loom: what a wake needs from it holds per thread.
    owner: std::sync::atomic::AtomicUsize,
    parent: ParentWaker,
    /// Whether a parent waker was ever registered (owner-only, like
    /// `owner`): from then on every pass registers its task's waker first,
    /// so a wake never reaches a task the future has left.
    registered: std::sync::atomic::AtomicBool,
    /// The layout of the whole allocation (`Block<T::Slots>`, or a small
    /// set's head and slots, with room to align a wide one's head).
    layout: Layout,
    /// Bytes from the allocation's start to the head: 0 but in a wide
    /// [`SmallSet`], whose head is moved up to a multiple of 64.
    offset: usize,
}

impl Head {
    /// Whether a child's waker lives outside the owner's polls (a clone
    /// holds a reference). Without one, only the borrowed wakers of a pass
    /// can wake a child, and the owner sees those wakes itself (it reads
    /// the word after the children), so the parent's waker need not be
    /// registered at all.
    ///
    /// Read by the owner between polls: a clone taken during a child's poll
    /// (on any thread: a borrowed waker does not outlive the poll) happens
    /// before the poll returns; later clones come from live clones, so the
    /// count cannot read 1 while one lives.
    #[inline]
    fn escaped(&self) -> bool {
        self.refs.load(Ordering::Acquire) > 1
    }

    /// Marks the tuple finished (owner only, once no child will be polled
    /// again): every later wake finds the word non-zero and leaves the
    /// parent alone. A plain store: a wake ordered before it may still wake
    /// the parent (as it could have just before the tuple finished), one
    /// ordered after it reads [`CLOSED`]; the bits it overwrites are of
    /// children that are done or dropped.
    #[inline]
    fn close(&self) {
        self.ready.store(CLOSED, Ordering::Relaxed);
    }
}

/// The whole allocation: the head, then the tuple of slots.
#[repr(C)]
struct Block<S> {
    head: Head,
    slots: S,
}

/// The wakers of a tuple's block and of a [`SmallSet`] of up to 16.
static TUPLE_VTABLE: RawWakerVTable = vtable::<INDEX_MASK>();
/// The wakers of a wide [`SmallSet`] (17 to 63 children).
static WIDE_VTABLE: RawWakerVTable = vtable::<WIDE_MASK>();

/// The vtable of the wakers whose data pointer holds an index under `MASK`.
const fn vtable<const MASK: usize>() -> RawWakerVTable {
    RawWakerVTable::new(
        tuple_waker_clone::<MASK>,
        tuple_waker_wake::<MASK>,
        tuple_waker_wake_by_ref::<MASK>,
        tuple_waker_drop::<MASK>,
    )
}

/// The vtable of the wakers whose indices are under `mask`.
#[inline]
fn vtable_of(mask: usize) -> &'static RawWakerVTable {
    match mask {
        INDEX_MASK => &TUPLE_VTABLE,
        WIDE_MASK => &WIDE_VTABLE,
        _ => unreachable!("awaitkit: no vtable for index mask {mask}"),
    }
}

/// A token unique to the calling thread among live threads: the address of
/// a thread-local (no destructor, so always accessible).
#[cfg(not(awaitkit_loom))]
#[inline]
fn thread_marker() -> usize {
    thread_local! {
        static MARKER: u8 = const { 0 };
    }
    MARKER.with(|m| ptr::from_ref(m).addr())
}

/// Loom runs its threads on one OS thread: its own thread ids then.
#[cfg(awaitkit_loom)]
fn thread_marker() -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    loom::thread::current().id().hash(&mut h);
    (h.finish() as usize) | 1
}

/// The head and element index behind a child waker's data pointer.
///
/// # Safety
///
/// `data` came from [`Shared::waker_data`] (or a clone of such a waker) and
/// the waker keeps the block alive.
unsafe fn tuple_resolve<'a, const MASK: usize>(
    data: *const (),
) -> (NonNull<Head>, &'a Head, usize) {
    let index = data.addr() & MASK;
    // SAFETY: `data` is the head's address plus `index` (caller contract),
    // in the same allocation; the head lives as long as the waker.
    unsafe {
        let head = data.cast::<u8>().sub(index).cast::<Head>();
        (NonNull::new_unchecked(head.cast_mut()), &*head, index)
    }
}

unsafe fn tuple_waker_clone<const MASK: usize>(data: *const ()) -> RawWaker {
    // SAFETY: the waker being cloned keeps the block alive.
    let (_, head, _) = unsafe { tuple_resolve::<MASK>(data) };
    if head.refs.fetch_add(1, Ordering::Relaxed) > isize::MAX as usize {
        std::process::abort();
    }
    RawWaker::new(data, vtable_of(MASK))
}

unsafe fn tuple_waker_wake<const MASK: usize>(data: *const ()) {
    /// Gives the owned waker's reference back even if the wake unwinds (a
    /// parent waker that panics), so the block is not leaked.
    struct Owned(NonNull<Head>);
    impl Drop for Owned {
        fn drop(&mut self) {
            // SAFETY: the waker being consumed owned this reference.
            unsafe { tuple_release(self.0) }
        }
    }
    // SAFETY: the waker keeps the block alive.
    let owned = Owned(unsafe { tuple_resolve::<MASK>(data) }.0);
    // SAFETY: forwarded caller contract; `owned` keeps the block alive.
    unsafe { tuple_waker_wake_by_ref::<MASK>(data) };
    drop(owned);
}

unsafe fn tuple_waker_wake_by_ref<const MASK: usize>(data: *const ()) {
    // SAFETY: the waker keeps the block alive.
    let (_, head, index) = unsafe { tuple_resolve::<MASK>(data) };
    if head.owner.load(Ordering::Relaxed) == thread_marker() {
        // On the owner's thread, during its pass (a self-wake, or a sibling
        // woken from a child's poll): only this thread touches `local`.
        let bits = head.local.load(Ordering::Relaxed);
        head.local.store(bits | 1 << index, Ordering::Relaxed);
    } else if head.ready.fetch_or(1 << index, Ordering::AcqRel) == 0 {
        head.parent.wake();
    }
}

unsafe fn tuple_waker_drop<const MASK: usize>(data: *const ()) {
    // SAFETY: this owned waker holds a reference on the block.
    unsafe { tuple_release(tuple_resolve::<MASK>(data).0) };
}

/// Drops one reference on a block, freeing it when it was the last (the
/// owner has dropped the slots by then).
///
/// # Safety
///
/// The caller owns one reference on `head`.
#[inline]
unsafe fn tuple_release(head: NonNull<Head>) {
    // SAFETY: the caller's reference keeps the head alive until the
    // `fetch_sub` below.
    if unsafe { head.as_ref() }
        .refs
        .fetch_sub(1, Ordering::Release)
        != 1
    {
        return;
    }
    fence(Ordering::Acquire);
    // SAFETY: that was the last reference.
    unsafe { tuple_free(head) };
}

/// Frees a block.
///
/// # Safety
///
/// The caller gives up the last reference: nobody else can reach the block;
/// the slots were dropped by the owner.
#[inline]
unsafe fn tuple_free(head: NonNull<Head>) {
    // SAFETY: caller contract; the head is dropped here once.
    unsafe {
        let (layout, offset) = (head.as_ref().layout, head.as_ref().offset);
        // The parent's waker is user code: take it out, free the block,
        // then drop it, so a panicking drop cannot leak the block.
        let parent = (*head.as_ptr()).parent.take_exclusive();
        ptr::drop_in_place(head.as_ptr());
        dealloc(head.as_ptr().cast::<u8>().sub(offset), layout);
        #[cfg(all(test, awaitkit_loom))]
        super::ready::LIVE_CHUNKS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(waker) = parent {
            crate::unwind::drop_user(waker);
        }
    }
}

/// The owner's reference on a block (none for the empty tuple).
struct Shared(Option<NonNull<Head>>);

// SAFETY: the block is shared with wakers on any thread through atomics and
// the parent waker's protocol (as `ReadySet`); the slots' own `Send`/`Sync`
// is carried by `TupleCore`'s `PhantomData`.
unsafe impl Send for Shared {}
// SAFETY: as above; the owner-only operations take `&mut`.
unsafe impl Sync for Shared {}

impl Shared {
    #[inline]
    fn head(&self) -> &Head {
        // SAFETY: the owner holds a reference on its block.
        unsafe { self.0.expect("awaitkit: no block").as_ref() }
    }

    /// The data pointer of element `index`'s waker (`index` is below the
    /// block's length: at most `INDEX_MASK`, checked at compile time for a
    /// tuple, or `WIDE_MASK` in a 64-byte aligned block).
    #[inline]
    fn waker_data(head: NonNull<Head>, index: usize) -> *const () {
        debug_assert!(index <= WIDE_MASK);
        head.as_ptr()
            .cast::<u8>()
            .wrapping_add(index)
            .cast_const()
            .cast()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let Some(head) = self.0 else { return };
        if self.head().refs.load(Ordering::Acquire) == 1 {
            // The only reference (the usual end of a gather whose wakers
            // never escaped, or were all dropped): nobody else can reach the
            // block or make a new reference (that takes one), so it is freed
            // without a read-modify-write; the acquire load orders the last
            // waker's release before the free.
            // SAFETY: the owner's reference is the last.
            unsafe { tuple_free(head) };
            return;
        }
        // The parent task's waker is not needed once the owner is gone, even
        // if a child's waker clone lives on somewhere.
        let parent = if self.head().refs.load(Ordering::Relaxed) > 1 {
            // SAFETY: the owner is dropping its handle (`&mut self`): no
            // registration can run concurrently.
            unsafe { self.head().parent.take() }
        } else {
            None
        };
        // SAFETY: the owner holds one reference.
        unsafe { tuple_release(head) };
        // Dropped last: user code, which may panic, runs once the reference
        // is released.
        if let Some(waker) = parent {
            crate::unwind::drop_user(waker);
        }
    }
}

/// The state shared by the two tuple futures: one allocation holding the
/// ready word, the parent waker and the tuple of slots.
struct TupleCore<T: TupleFutures> {
    shared: Shared,
    /// Whether the block holds live slots (false once the output was
    /// handed out, the error returned, or for the empty tuple).
    live: bool,
    /// Whether the output was handed out.
    finished: bool,
    remaining: usize,
    /// Set while a poll runs: a panic that unwinds out of it leaves it set.
    poisoned: bool,
    _slots: PhantomData<T::Slots>,
}

impl<T: TupleFutures> TupleCore<T> {
    /// Whether the output was handed out (and no panic came after).
    fn is_terminated(&self) -> bool {
        self.finished && !self.poisoned
    }

    #[inline]
    fn new(futures: T) -> Self {
        const { assert!(T::LEN <= INDEX_MASK + 1) };
        let live = T::LEN > 0;
        let shared = if live {
            let slots = futures.into_slots();
            let layout = Layout::new::<Block<T::Slots>>();
            // SAFETY: the layout has a non-zero size (it holds a head).
            let block = unsafe { alloc(layout) }.cast::<Block<T::Slots>>();
            let Some(block) = NonNull::new(block) else {
                handle_alloc_error(layout)
            };
            #[cfg(all(test, awaitkit_loom))]
            super::ready::LIVE_CHUNKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // SAFETY: a fresh allocation laid out for one block; every
            // element starts ready (its first poll), nobody is woken.
            unsafe {
                block.write(Block {
                    head: Head {
                        refs: AtomicUsize::new(1),
                        ready: AtomicU64::new((1u64 << T::LEN) - 1),
                        local: std::sync::atomic::AtomicU64::new(0),
                        owner: std::sync::atomic::AtomicUsize::new(0),
                        parent: ParentWaker::new(),
                        registered: std::sync::atomic::AtomicBool::new(false),
                        layout,
                        offset: 0,
                    },
                    slots,
                })
            };
            Shared(Some(block.cast::<Head>()))
        } else {
            Shared(None)
        };
        Self {
            shared,
            live,
            finished: false,
            poisoned: false,
            remaining: T::LEN,
            _slots: PhantomData,
        }
    }

    #[inline]
    fn slots_ptr(&self) -> *mut T::Slots {
        let head = self.shared.0.expect("awaitkit: no block");
        // SAFETY: the block is a `Block<T::Slots>` (see `new`).
        unsafe { &raw mut (*head.cast::<Block<T::Slots>>().as_ptr()).slots }
    }

    fn slots(&mut self) -> &mut T::Slots {
        assert!(self.live);
        // SAFETY: live slots are initialised; `&mut self` makes the borrow
        // unique.
        unsafe { &mut *self.slots_ptr() }
    }

    /// Drops the slots in place (once).
    fn drop_slots(&mut self) {
        if std::mem::replace(&mut self.live, false) {
            // SAFETY: the slots were live and are dropped exactly once
            // (`live` is cleared first, so a panicking destructor does not
            // lead to a second drop); `drop_slots` drops every slot even if
            // some destructors panic, so the block (freed with `shared`)
            // holds no undropped child.
            unsafe { T::drop_slots(self.slots_ptr()) };
        }
    }

    /// Polls the woken elements once each; calls `done(slots, i)` for each
    /// one that finished; stops early if it returns `Err`. On `Ready(Ok)`,
    /// `finish` produces the output from the slots, which are then dropped.
    #[inline]
    fn poll<E, O>(
        &mut self,
        cx: &mut Context<'_>,
        what: &str,
        done: impl FnMut(&mut T::Slots, usize) -> Result<(), E>,
        finish: impl FnOnce(&mut T::Slots) -> O,
    ) -> Poll<Result<O, E>> {
        // Like `crate::poison::guarded`, around a method call.
        crate::poison::assert_live(self.poisoned, self.finished, what);
        self.poisoned = true;
        let out = self.poll_inner(cx, done, finish);
        self.poisoned = false;
        out
    }

    #[inline]
    fn poll_inner<E, O>(
        &mut self,
        cx: &mut Context<'_>,
        mut done: impl FnMut(&mut T::Slots, usize) -> Result<(), E>,
        finish: impl FnOnce(&mut T::Slots) -> O,
    ) -> Poll<Result<O, E>> {
        if self.remaining > 0 {
            let head = self.shared.0.expect("awaitkit: no block");
            let slots = self.slots_ptr();
            // Both closures: the slots are live (`remaining > 0`) in the
            // block, which never moves; they are only dropped in place, and
            // nothing else borrows them during a poll.
            let poll = |i, child_cx: &mut Context<'_>| {
                // SAFETY: see above.
                unsafe { T::poll_child(&mut *slots, i, child_cx) }
            };
            let finish = |i, ()| {
                // SAFETY: see above.
                done(unsafe { &mut *slots }, i)
            };
            // SAFETY: the owner's block, polled from `&mut self`.
            let pass =
                unsafe { run_pass(head, &TUPLE_VTABLE, &mut self.remaining, cx, poll, finish) };
            match pass {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    // Fail fast: every other element is dropped before the
                    // error is handed out (no wake reaches the task any
                    // more: the word is closed).
                    self.finished = true;
                    self.remaining = 0;
                    let mut panics = crate::unwind::Panics::default();
                    panics.catch(|| self.drop_slots());
                    // The error is dropped outside a sibling's panic.
                    return Poll::Ready(Err(crate::unwind::hand_back(panics, e)));
                }
                Poll::Ready(Ok(())) => {}
            }
        }
        self.finished = true;
        let output = if self.live {
            let output = finish(self.slots());
            // `finish` took every output: each slot is `Gone`, with nothing
            // to drop.
            self.live = false;
            output
        } else {
            finish(&mut empty_slots::<T>())
        };
        Poll::Ready(Ok(output))
    }
}

/// One poll of a block's owner (`remaining > 0` elements not finished):
/// polls each woken element once with `poll(i, cx)` (element `i`, with its
/// own borrowed waker in `cx`), and hands each one that finished to
/// `finish(i, output)`, which keeps the output (`Ok`) or fails fast
/// (`Err`). A finished element is counted out before `finish` runs (it may
/// run a destructor, which may panic).
///
/// Returns `Ready(Ok)` once every element finished, `Ready(Err)` as soon as
/// `finish` fails fast (the pass ends there; the caller drops the slots),
/// and `Pending` otherwise, with a wake-up on its way (from a woken element,
/// or from this task itself when an element was woken during the pass).
/// Either `Ready` closes the word for good ([`Head::close`]): no wake
/// reaches the task afterwards. The protocol is [`Head`]'s.
///
/// # Safety
///
/// The caller owns `head_ptr`'s block (it holds a reference on it) and
/// polls it from `&mut` access: no other pass or registration runs on the
/// block meanwhile.
#[inline]
unsafe fn run_pass<T, E>(
    head_ptr: NonNull<Head>,
    vtable: &'static RawWakerVTable,
    remaining: &mut usize,
    cx: &mut Context<'_>,
    mut poll: impl FnMut(usize, &mut Context<'_>) -> Poll<T>,
    mut finish: impl FnMut(usize, T) -> Result<(), E>,
) -> Poll<Result<(), E>> {
    debug_assert!(*remaining > 0);
    // SAFETY: the owner holds a reference on its block.
    let head = unsafe { head_ptr.as_ref() };
    // Owner-only, like `owner`.
    let local = head.local.load(Ordering::Relaxed);
    let escaped = head.escaped();
    if escaped || head.registered.load(Ordering::Relaxed) {
        // A parent waker is (or must be) registered: make it this poll's
        // before any wake of this pass can reach it, so a wake never goes
        // to the task that polled before (the future may have moved to
        // another task since; the same waker again costs a comparison).
        // SAFETY: the owner's only registration (caller contract).
        unsafe { head.parent.register(cx.waker()) };
        head.registered.store(true, Ordering::Relaxed);
    }
    let word = head.ready.load(Ordering::Acquire);
    if word == 0 && local == 0 {
        // Nothing woken. Only a waker that escaped a poll (a clone) can wake
        // us later, and it reaches the waker just registered; a wake before
        // the registration may have gone to an older waker, or to none, but
        // its bit is in the word, read after the registration.
        return Poll::Pending;
    }
    let mut bits = if word == 0 {
        // Only this thread's wakes (`local`): a wake landing in the word
        // from now on is seen after the children.
        0
    } else if escaped {
        // A clone may wake concurrently: take the bits atomically.
        head.ready.swap(0, Ordering::AcqRel)
    } else {
        // No waker lives outside the owner (and none can appear before a
        // child is polled): nobody else touches the word (`escaped` read
        // after the last clone's release, the word after that).
        head.ready.store(0, Ordering::Relaxed);
        word
    };
    if local != 0 {
        bits |= local;
        head.local.store(0, Ordering::Relaxed);
    }
    head.owner.store(thread_marker(), Ordering::Relaxed);
    /// Ends the pass for wakes on this thread (they go through the word
    /// again) when the children's polls are over, also if one unwinds.
    struct Pass<'a>(&'a Head);
    impl Drop for Pass<'_> {
        #[inline]
        fn drop(&mut self) {
            self.0.owner.store(0, Ordering::Relaxed);
        }
    }
    let pass = Pass(head);
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        // Borrowed: owns no reference (the owner's keeps the block alive
        // during the poll); a clone takes one.
        // SAFETY: the vtable's functions expect exactly this data pointer,
        // whose block is alive.
        let waker = ManuallyDrop::new(unsafe {
            Waker::from_raw(RawWaker::new(Shared::waker_data(head_ptr, i), vtable))
        });
        let mut child_cx = Context::from_waker(&waker);
        if let Poll::Ready(output) = poll(i, &mut child_cx) {
            *remaining -= 1;
            if let Err(e) = finish(i, output) {
                drop(pass);
                head.close();
                return Poll::Ready(Err(e));
            }
        }
    }
    // From here on, wakes on this thread go through the word.
    drop(pass);
    if *remaining > 0 {
        if head.escaped() {
            // A child kept a clone of its waker: its wake must reach this
            // task. A wake of the pass (or of the registration) may have
            // found the word zero and woken an older waker, or none: the
            // word is read again once the waker is in place (the
            // registration's read-modify-writes and the wake's order them),
            // and a bit seen there wakes the task below.
            // SAFETY: the owner's only registration (caller contract).
            unsafe { head.parent.register(cx.waker()) };
            head.registered.store(true, Ordering::Relaxed);
        }
        // Without an escaped clone, every wake of the pass (from this thread
        // or one a child lent its waker to and joined) is already in the
        // word, ordered by `escaped`'s acquire.
        let woken = head.ready.load(Ordering::Acquire) | head.local.load(Ordering::Relaxed);
        if woken != 0 {
            // Woken while we polled (maybe without a parent waker to wake):
            // poll again, after the other tasks (cooperative).
            cx.waker().wake_by_ref();
        }
        return Poll::Pending;
    }
    // Done: a clone that outlives its child never wakes the task again.
    head.close();
    Poll::Ready(Ok(()))
}

/// The slots of the empty tuple (`T::LEN == 0`, so `T::Slots` is `()`).
fn empty_slots<T: TupleFutures>() -> T::Slots {
    assert_eq!(T::LEN, 0);
    T::empty()
}

impl<T: TupleFutures> Drop for TupleCore<T> {
    fn drop(&mut self) {
        self.drop_slots();
    }
}

/// The most children [`SmallSet`] holds: one ready word (bit 63 is
/// [`CLOSED`]); every element's index fits the low bits of its waker's data
/// pointer ([`WIDE_MASK`] in a block aligned to 64 bytes).
pub(crate) const SMALL_MAX: usize = WIDE_MASK;

/// The children of a `gather` or `try_gather` whose input has an exact size
/// of 1 to [`SMALL_MAX`]: one block, as a tuple's (the same [`Head`], wakers
/// and passes), followed by an array of slots of one type.
///
/// Against the engine's chunk (which any set size and `push` need: a bit
/// tree, an entry per child, slots that are reused) this leaves out what a
/// fixed handful of children never uses, and polls with the tuple's pass:
/// the same rules (only woken children, each at most once per poll, then
/// `Pending` after waking itself), about 60 % of the engine's instructions
/// at N = 10 and 30.
pub(crate) struct SmallSet<F: Future> {
    shared: Shared,
    /// Whether the block was made for more than 16 children: its head at a
    /// multiple of 64 bytes, its wakers' indices under [`WIDE_MASK`]
    /// ([`WIDE_VTABLE`]).
    wide: bool,
    /// Initialised slots, from the first.
    len: usize,
    /// Whether the slots hold anything to drop (false once the outputs
    /// were taken).
    live: bool,
    /// Children not finished yet.
    remaining: usize,
    _slots: PhantomData<TupleSlot<F>>,
}

impl<F: Future> SmallSet<F> {
    /// Where the slots start in the block: after the head.
    const SLOTS_AT: usize = size_of::<Head>().next_multiple_of(align_of::<TupleSlot<F>>());

    /// A set of the first `n` futures of `futures` (1 to [`SMALL_MAX`]),
    /// each ready for its first poll; fewer if the iterator ends sooner. If
    /// the iterator panics, the futures taken so far are dropped.
    #[inline]
    pub(crate) fn new(n: usize, futures: &mut impl Iterator<Item = F>) -> Self {
        assert!(n > 0 && n <= SMALL_MAX);
        let slots = Layout::array::<TupleSlot<F>>(n).expect("awaitkit: future too large");
        let (layout, slots_at) = Layout::new::<Head>()
            .extend(slots)
            .expect("awaitkit: future too large");
        debug_assert_eq!(slots_at, Self::SLOTS_AT);
        // Up to 16 children the head's own alignment (16) holds every index
        // in a waker's data pointer; more need the head at a multiple of 64.
        // Rather than an aligned allocation (`posix_memalign`: several times
        // a `malloc`), the block gets the few bytes it needs to move its
        // head up to one.
        let wide = n > INDEX_MASK + 1;
        let layout = layout.pad_to_align();
        let room = if wide {
            (WIDE_MASK + 1).saturating_sub(layout.align())
        } else {
            0
        };
        let layout = Layout::from_size_align(
            layout
                .size()
                .checked_add(room)
                .expect("awaitkit: future too large"),
            layout.align(),
        )
        .expect("awaitkit: future too large");
        // SAFETY: the layout has a non-zero size (it holds a head).
        let Some(base) = NonNull::new(unsafe { alloc(layout) }) else {
            handle_alloc_error(layout)
        };
        // `base` is aligned like the block (16 at least), so a multiple of
        // 64 is at most `room` bytes on.
        let offset = if wide {
            base.as_ptr().align_offset(WIDE_MASK + 1)
        } else {
            0
        };
        debug_assert!(offset <= room);
        // SAFETY: `offset <= room`: the head and the slots after it stay in
        // the allocation.
        let head = unsafe { base.add(offset) }.cast::<Head>();
        debug_assert!(!wide || head.as_ptr().addr() % (WIDE_MASK + 1) == 0);
        #[cfg(all(test, awaitkit_loom))]
        super::ready::LIVE_CHUNKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: a fresh allocation laid out for a head and `n` slots (from
        // `offset` on); the head is written first, so the set owns a valid
        // block from here on (with no slot yet: an iterator that panics
        // drops what was taken).
        unsafe {
            head.write(Head {
                refs: AtomicUsize::new(1),
                ready: AtomicU64::new(0),
                local: std::sync::atomic::AtomicU64::new(0),
                owner: std::sync::atomic::AtomicUsize::new(0),
                parent: ParentWaker::new(),
                registered: std::sync::atomic::AtomicBool::new(false),
                layout,
                offset,
            })
        };
        let mut set = Self {
            shared: Shared(Some(head)),
            wide,
            len: 0,
            live: true,
            remaining: 0,
            _slots: PhantomData,
        };
        let slots = set.slots_ptr();
        for future in futures.take(n) {
            // SAFETY: slot `len < n` of the block, not initialised yet.
            unsafe { slots.add(set.len).write(TupleSlot::Running(future)) };
            set.len += 1;
        }
        set.remaining = set.len;
        // Every child starts ready (its first poll); nobody can wake yet.
        set.head()
            .ready
            .store((1u64 << set.len) - 1, Ordering::Relaxed);
        set
    }

    fn head(&self) -> &Head {
        self.shared.head()
    }

    /// The index mask of this block's wakers.
    fn mask(&self) -> usize {
        if self.wide { WIDE_MASK } else { INDEX_MASK }
    }

    #[inline]
    fn slots_ptr(&self) -> *mut TupleSlot<F> {
        let head = self.shared.0.expect("awaitkit: no block");
        // SAFETY: the slots start `SLOTS_AT` bytes into the block (`new`).
        unsafe { head.cast::<u8>().add(Self::SLOTS_AT).cast().as_ptr() }
    }

    /// Children not finished yet.
    pub(crate) fn remaining(&self) -> usize {
        self.remaining
    }

    /// The futures back, in input order, for a set never polled (their
    /// iterator yielded more than it said it would: the engine takes them
    /// all).
    pub(crate) fn into_futures(mut self) -> Vec<F> {
        assert!(self.live && self.remaining == self.len);
        let slots = self.slots_ptr();
        let mut futures = Vec::with_capacity(self.len);
        // Counted out first: nothing is dropped twice if the `Vec` cannot
        // grow (it has the room).
        self.live = false;
        for i in 0..self.len {
            // SAFETY: slot `i` was initialised with a future by `new` and
            // was never polled (no waker exists, nothing is pinned yet); it
            // is read once, and `live` is cleared, so not dropped again.
            match unsafe { slots.add(i).read() } {
                TupleSlot::Running(future) => futures.push(future),
                _ => unreachable!("awaitkit: a set handed back after a poll"),
            }
        }
        futures
    }

    /// Polls the woken children once each; `Ready` with every output in
    /// input order once all finished.
    #[inline]
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Vec<F::Output>> {
        self.poll_split(cx, Ok::<_, Infallible>)
            .map(|outputs| match outputs {
                Ok(outputs) => outputs,
            })
    }

    /// [`SmallSet::poll`] failing fast: `split` takes each finished child's
    /// output (the child already dropped) and gives back what to keep, or
    /// an error. On the first error every other child and every kept output
    /// is dropped, then the error is handed out (the set holds nothing
    /// afterwards; if a destructor panicked, the error is dropped and that
    /// panic propagates instead).
    #[inline]
    pub(crate) fn poll_split<E>(
        &mut self,
        cx: &mut Context<'_>,
        mut split: impl FnMut(F::Output) -> Result<F::Output, E>,
    ) -> Poll<Result<Vec<F::Output>, E>> {
        let slots = self.slots_ptr();
        if self.remaining > 0 {
            let head = self.shared.0.expect("awaitkit: no block");
            let len = self.len;
            // Both closures: bits are only set for initialised slots (`i <
            // len`), live while children remain, in the block, which never
            // moves; only dropped in place, and nothing else borrows them
            // during a poll.
            let poll = |i: usize, child_cx: &mut Context<'_>| {
                debug_assert!(i < len);
                // SAFETY: see above.
                unsafe { (*slots.add(i)).poll_running(child_cx) }
            };
            let finish = |i: usize, output| {
                // SAFETY: see above.
                let slot = unsafe { &mut *slots.add(i) };
                // The child is dropped first, as the engine does.
                match split(slot.retire(output)) {
                    Ok(output) => {
                        *slot = TupleSlot::Done(output);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            };
            let vtable = vtable_of(self.mask());
            // SAFETY: the owner's block, polled from `&mut self`; its wakers
            // index it with the vtable of its mask.
            match unsafe { run_pass(head, vtable, &mut self.remaining, cx, poll, finish) } {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    // Fail fast: everything else is dropped before the error
                    // is handed out (no wake reaches the task any more: the
                    // word is closed).
                    let mut panics = Panics::default();
                    panics.catch(|| self.drop_slots());
                    // The error is dropped outside a sibling's panic.
                    return Poll::Ready(Err(crate::unwind::hand_back(panics, e)));
                }
            }
        }
        assert!(self.live, "awaitkit: outputs taken twice");
        let mut outputs = Vec::with_capacity(self.len);
        for i in 0..self.len {
            // SAFETY: every slot is initialised and finished; only moves
            // happen here (no user code), so nothing unwinds between them.
            outputs.push(unsafe { (*slots.add(i)).take() });
        }
        // Every slot is `Gone`: nothing left to drop.
        self.live = false;
        Poll::Ready(Ok(outputs))
    }

    /// Drops every slot in place, once: when one destructor panics the
    /// others are still dropped, and the first panic propagates afterwards.
    fn drop_slots(&mut self) {
        if std::mem::replace(&mut self.live, false) {
            // Nothing runs any more (`Debug` says so).
            self.remaining = 0;
            let slots = self.slots_ptr();
            let mut panics = Panics::default();
            for i in 0..self.len {
                // SAFETY: initialised, live, and dropped once here (`live`
                // was cleared first).
                panics.catch(|| unsafe { ptr::drop_in_place(slots.add(i)) });
            }
            panics.resume();
        }
    }
}

// The children live in the block; moving the set never moves them.
impl<F: Future> Unpin for SmallSet<F> {}

impl<F: Future> Drop for SmallSet<F> {
    fn drop(&mut self) {
        // Then `shared` releases the block, also if a destructor panicked.
        self.drop_slots();
    }
}

/// Future for the [`gather!`](crate::gather!) macro.
///
/// `Unpin` whatever the children are (they are pinned inside), `Send`/`Sync`
/// when they and their outputs are. Polling it after it completed panics.
///
/// # Examples
///
/// ```
/// # futures::executor::block_on(async {
/// let both: awaitkit::GatherTuple<(_, _)> = awaitkit::gather!(async { 1 }, async { 'x' });
/// assert_eq!(both.await, (1, 'x'));
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct GatherTuple<T: TupleFutures> {
    core: TupleCore<T>,
}

/// Future for the [`try_gather!`](crate::try_gather!) macro.
///
/// `Unpin` whatever the children are, `Send`/`Sync` when they and their
/// outputs are. Polling it after it completed panics.
///
/// # Examples
///
/// ```
/// # futures::executor::block_on(async {
/// let both: awaitkit::TryGatherTuple<(_, _)> =
///     awaitkit::try_gather!(async { Ok::<_, ()>(1) }, async { Ok('x') });
/// assert_eq!(both.await, Ok((1, 'x')));
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct TryGatherTuple<T: TryTupleFutures> {
    core: TupleCore<T>,
}

// The children live in the heap chunk; moving the future never moves them.
impl<T: TupleFutures> Unpin for GatherTuple<T> {}
impl<T: TryTupleFutures> Unpin for TryGatherTuple<T> {}

impl<T: TupleFutures> GatherTuple<T> {
    #[doc(hidden)]
    #[inline]
    pub fn new(futures: T) -> Self {
        Self {
            core: TupleCore::new(futures),
        }
    }
}

impl<T: TryTupleFutures> TryGatherTuple<T> {
    #[doc(hidden)]
    #[inline]
    pub fn new(futures: T) -> Self {
        Self {
            core: TupleCore::new(futures),
        }
    }
}

impl<T: TupleFutures> Future for GatherTuple<T> {
    type Output = T::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T::Output> {
        let core = &mut self.get_mut().core;
        core.poll(
            cx,
            "gather!",
            |_, _| Ok::<(), Infallible>(()),
            T::take_outputs,
        )
        .map(|r| match r {
            Ok(output) => output,
        })
    }
}

impl<T: TryTupleFutures> Future for TryGatherTuple<T> {
    type Output = Result<T::Ok, T::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut()
            .core
            .poll(cx, "try_gather!", T::take_err, T::take_oks)
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<T: TupleFutures> FusedFuture for GatherTuple<T> {
    fn is_terminated(&self) -> bool {
        self.core.is_terminated()
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<T: TryTupleFutures> FusedFuture for TryGatherTuple<T> {
    fn is_terminated(&self) -> bool {
        self.core.is_terminated()
    }
}

impl<T: TupleFutures> fmt::Debug for GatherTuple<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatherTuple")
            .field("remaining", &self.core.remaining)
            .finish_non_exhaustive()
    }
}

impl<T: TryTupleFutures> fmt::Debug for TryGatherTuple<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TryGatherTuple")
            .field("remaining", &self.core.remaining)
            .finish_non_exhaustive()
    }
}
