//! The engine behind every multi-future combinator: a set of pinned children,
//! a waker per child, and a ready set that the wakers write into.
//!
//! `gather`, `try_gather`, `as_completed`, `wait_any` and `wait` are thin
//! layers over [`Engine`]; `gather!`/`try_gather!` use a one-word ready set
//! over a boxed tuple ([`tuple`]), and so does `gather` for an input of
//! exact size 1 to 63 ([`tuple::SmallSet`]: the same block with an array of
//! slots of one type).
//!
//! The rules it enforces (SPEC §1.3–§1.4):
//!
//! * a child is polled only after its own waker fired (or for its first
//!   poll), so total child polls = wakes + N;
//! * one pass (one poll of the combinator) polls each child at most once:
//!   a child that wakes itself during the pass is polled in the next pass,
//!   and its wake has already woken the parent, so a sibling task runs in
//!   between;
//! * a pass that stops making progress (a run of [`STALL_LIMIT`] children
//!   returning `Pending` with no completion: out of a runtime's cooperative
//!   budget) returns early after waking the parent, and the next pass goes
//!   on with the rest of the same snapshot;
//! * children never move once pushed: each chunk is one fixed allocation
//!   holding the children and their wake entries side by side ([`ready`]);
//! * a slot is reused only when no cloned waker of its previous occupant is
//!   alive ([`ReadySet::is_idle`]), so a stale waker never polls a newcomer.

#[cfg(all(test, awaitkit_loom))]
pub(crate) mod loom_models;
mod parent;
mod ready;
pub(crate) mod tuple;

pub(crate) use parent::{ParentOwner, ParentWaker};
pub(crate) use ready::ReadySet;

use crate::unwind::Panics;

use std::alloc::Layout;
use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::ptr;
use std::task::{Context, Poll};

const BITS: usize = 64;
/// First chunk of a set that starts empty and grows by `push` (tiny under
/// loom, so small models span several chunks).
const FIRST_GROWTH: usize = if cfg!(awaitkit_loom) { 2 } else { 32 };
/// How many children in a row may return `Pending` without progress, with
/// none completing in between, before a pass stops early (see
/// [`Pass::next_with`]).
///
/// A child that returns `Pending` although it was woken is usually out of a
/// runtime's cooperative budget: tokio's leaves spend one unit of a 128-unit
/// per-task budget per completion, then return `Pending` and defer their
/// wake to the end of the task poll (a plain `wake_by_ref` outside tokio's
/// scheduler). Once the budget is spent every further tokio leaf in that
/// task poll does the same, so polling the rest of the snapshot is wasted:
/// each of those children is polled again after the deferred wake — and a
/// pass that started from the first woken child each time re-polled each
/// child some N/256 times (issue 17: 27–40 polls per child at N = 10 000).
///
/// What counts as a stall: any `Pending` child once the set is *armed*,
/// that is once a child has completed (children fired before their first
/// poll that meet an empty budget on it) or the first snapshot is done
/// (every later snapshot holds children woken after a poll: one still
/// `Pending` was woken and still cannot go on; tokio's deferred wake sets no
/// bit during the poll). The first snapshot of a set whose children all wait
/// (no completion yet) is never split: those `Pending`s are first polls. A
/// snapshot that polled nobody (a set that starts empty, as a task group's
/// before its first spawn) does not arm the set: the first round over the
/// children pushed into it is not split either.
/// Nothing is kept per child: one flag per set, and the count of stalls
/// since the last completion lives in a register for one call of
/// [`Pass::next_with`] (a completion returns from it). Children pushed after
/// the first snapshot count from their first poll (a stop costs a parent
/// poll, never a child poll: the next poll goes on with the same snapshot).
///
/// 32: it bounds the waste to 32 polls per parent poll (at most 0.25 extra
/// polls per completion against tokio's 128), while a set whose children
/// yield on purpose still polls 32 of them per parent poll, enough to
/// amortise the parent's own poll and reschedule. (`FuturesUnordered` yields
/// after 2 self-wakes; futures-buffered after 61 polls without a completion.)
/// Tiny under loom, so the models reach the early stop.
const STALL_LIMIT: usize = if cfg!(awaitkit_loom) { 1 } else { 32 };

/// Where a child lives: chunk and index within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotId {
    chunk: u32,
    index: u32,
}

const NO_SLOT: SlotId = SlotId {
    chunk: u32::MAX,
    index: u32::MAX,
};

pub(crate) enum Slot<F: Future> {
    /// A child still running. Its key (input index) is its index in the
    /// initial batch's chunk, and stored beside the slot in chunks that
    /// `push` fills.
    Running(F),
    /// A finished child's output, kept in place (gather).
    Done(F::Output),
    /// Free; linked into the free or the cooling list.
    Vacant(SlotId),
}

/// A child that finished during a pass.
pub(crate) struct Completed<T> {
    pub(crate) slot: SlotId,
    pub(crate) key: usize,
    pub(crate) output: T,
}

/// Owner-side position in the ready set: snapshots of the words taken but
/// not yet fully visited.
#[derive(Debug, Default)]
struct Cursor {
    /// Chunks of the root word not yet visited.
    chunks: u64,
    /// Chunk being walked (meaningful while `nonempty != 0`).
    current: usize,
    /// Bit `l` set iff `stack[l]` still has bits.
    nonempty: u32,
    /// Per level of the current chunk: (word index, bits not yet visited).
    stack: [(usize, u64); 6],
    /// Whether a `Pending` child counts as a stall (see [`STALL_LIMIT`]):
    /// set by a completion, and once the first snapshot is done. Never
    /// cleared (but by [`Engine::clear`]).
    armed: bool,
    /// A one-word set's pass is open ([`ReadySet::open`]): the word holds
    /// `POLLING` until [`Pass::close`] clears it.
    open: bool,
}

impl Cursor {
    /// Whether bits taken by an earlier pass are still to be visited.
    fn has_leftover(&self) -> bool {
        self.chunks != 0 || self.nonempty != 0
    }

    /// Pops the lowest bit of level `level`; returns the index it stands for
    /// one level down (the child's index at level 0).
    #[inline]
    fn pop(&mut self, level: usize) -> usize {
        let (word, bits) = &mut self.stack[level];
        let bit = bits.trailing_zeros() as usize;
        *bits &= *bits - 1;
        if *bits == 0 {
            self.nonempty &= !(1 << level);
        }
        *word * BITS + bit
    }

    /// The next child of the level-0 word being walked, if it has one left
    /// (in the chunk [`Cursor::next`] returned last).
    #[inline]
    fn next_in_word(&mut self) -> Option<usize> {
        (self.nonempty & 1 != 0).then(|| self.pop(0))
    }

    /// Next child (chunk, index) whose bit was taken, descending the tree and
    /// taking words as it goes.
    #[inline]
    fn next(&mut self, ready: &ReadySet) -> Option<(usize, usize)> {
        if self.nonempty & 1 != 0 {
            return Some((self.current, self.pop(0)));
        }
        if self.nonempty == 0 && self.chunks == 0 {
            return None;
        }
        self.next_slow(ready)
    }

    /// The rest of [`Cursor::next`]: descends from the lowest level with
    /// bits left (or from the next chunk's top word, taken here) to level 0,
    /// taking one word per level. The bits being descended stay in registers;
    /// only a level's leftover bits go back to the stack.
    #[inline(never)]
    fn next_slow(&mut self, ready: &ReadySet) -> Option<(usize, usize)> {
        loop {
            let mut nonempty = self.nonempty;
            let (tree, mut level, mut word, mut bits);
            if nonempty != 0 {
                level = nonempty.trailing_zeros() as usize;
                (word, bits) = self.stack[level];
                nonempty &= !(1 << level);
                tree = ready.tree(self.current);
            } else {
                if self.chunks == 0 {
                    return None;
                }
                let chunk = self.chunks.trailing_zeros() as usize;
                self.chunks &= self.chunks - 1;
                tree = ready.tree(chunk);
                level = tree.levels - 1;
                bits = tree.take(level, 0);
                if bits == 0 {
                    continue;
                }
                word = 0;
                self.current = chunk;
            }
            // `bits` (non-zero) are the unvisited bits of word `word` of
            // `level`: visit the lowest, keep the rest for later.
            loop {
                let rest = bits & (bits - 1);
                if rest != 0 {
                    self.stack[level] = (word, rest);
                    nonempty |= 1 << level;
                }
                let below = word * BITS + bits.trailing_zeros() as usize;
                if level == 0 {
                    self.nonempty = nonempty;
                    return Some((self.current, below));
                }
                level -= 1;
                word = below;
                bits = tree.take(level, word);
                if bits == 0 {
                    // A stale summary bit: its word was empty.
                    break;
                }
            }
            self.nonempty = nonempty;
        }
    }

    /// Forgets a not-yet-visited bit of the current level-0 word (used when a
    /// slot is reused: the next occupant gets a fresh bit of its own).
    fn forget(&mut self, chunk: usize, index: usize) {
        if self.nonempty & 1 != 0 && self.current == chunk && self.stack[0].0 == index / BITS {
            self.stack[0].1 &= !(1 << (index % BITS));
            if self.stack[0].1 == 0 {
                self.nonempty &= !1;
            }
        }
    }
}

/// The running children of an [`Engine`] and their keys ([`Engine::iter`]).
pub(crate) struct Children<'a, F: Future> {
    ready: &'a ReadySet,
    chunk: usize,
    index: usize,
    /// Running children not visited yet: the walk stops at the last one.
    left: usize,
    _children: PhantomData<&'a Slot<F>>,
}

impl<F: Future> Children<'_, F> {
    /// The next running child's slot and key.
    fn next_slot(&mut self) -> Option<(usize, *mut Slot<F>)> {
        while self.left > 0 && self.chunk < self.ready.chunk_count() {
            let elements = self.ready.elements(self.chunk);
            while self.index < elements.cap() {
                let index = self.index;
                self.index += 1;
                let slot = Engine::<F>::slot_of(elements.get(index));
                // SAFETY: initialised (see `add_chunk`); the engine is
                // borrowed for the iterator's life, so nothing writes it.
                if let Slot::Running(_) = unsafe { &*slot } {
                    self.left -= 1;
                    return Some((Engine::<F>::key_of(elements, index), slot));
                }
            }
            self.chunk += 1;
            self.index = 0;
        }
        None
    }
}

impl<'a, F: Future> Iterator for Children<'a, F> {
    type Item = (usize, &'a F);

    fn next(&mut self) -> Option<(usize, &'a F)> {
        let (key, slot) = self.next_slot()?;
        // SAFETY: a running slot (checked by `next_slot`) of an engine
        // borrowed shared for `'a`: no one writes it meanwhile (wakers touch
        // only the wake entry beside it).
        match unsafe { &*slot } {
            Slot::Running(f) => Some((key, f)),
            _ => unreachable!("`next_slot` returns running slots"),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<F: Future> ExactSizeIterator for Children<'_, F> {}
impl<F: Future> std::iter::FusedIterator for Children<'_, F> {}

/// The running children of an [`Engine`], pinned ([`Engine::iter_mut`]).
pub(crate) struct ChildrenMut<'a, F: Future> {
    all: Children<'a, F>,
    _unique: PhantomData<&'a mut Slot<F>>,
}

impl<'a, F: Future> Iterator for ChildrenMut<'a, F> {
    type Item = (usize, Pin<&'a mut F>);

    fn next(&mut self) -> Option<(usize, Pin<&'a mut F>)> {
        let (key, slot) = self.all.next_slot()?;
        // SAFETY: the engine is borrowed uniquely for `'a` and each slot is
        // visited once, so the references handed out never alias (wakers
        // touch only the wake entry beside a slot). Children never move
        // until dropped in place (a chunk is never moved or reallocated), so
        // pinning them is sound; the caller cannot move out of a `Pin`.
        match unsafe { &mut *slot } {
            // SAFETY: see above: the child stays where it is until it is
            // dropped in place.
            Slot::Running(f) => Some((key, unsafe { Pin::new_unchecked(f) })),
            _ => unreachable!("`next_slot` returns running slots"),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.all.size_hint()
    }
}

impl<F: Future> ExactSizeIterator for ChildrenMut<'_, F> {}
impl<F: Future> std::iter::FusedIterator for ChildrenMut<'_, F> {}

/// A set of pinned children with per-child wakers.
///
/// The children live in the chunks' owner regions (see [`ready`]): one
/// allocation per chunk holds children and wakers alike, and a chunk never
/// moves or grows, so children never move.
pub(crate) struct Engine<F: Future> {
    ready: ReadySet,
    cursor: Cursor,
    /// Vacant slots whose wakers are all gone.
    free: SlotId,
    /// Vacant slots that still had a cloned waker alive when they emptied.
    cooling: SlotId,
    /// Slots never used yet, at the end of the last chunk.
    fresh: usize,
    running: usize,
    /// Outputs kept in their slots (`Slot::Done`), not yet taken.
    kept: usize,
    /// Capacity of the next chunk `push` adds (doubles each time).
    growth: usize,
    _children: PhantomData<Slot<F>>,
}

// The children live in heap chunks that the engine only points to: moving
// the engine never moves them. (`PhantomData<Slot<F>>` is there for
// `Send`/`Sync` and drop-check, not for `Unpin`.)
impl<F: Future> Unpin for Engine<F> {}

impl<F: Future> fmt::Debug for Engine<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Default for Engine<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Future> Drop for Engine<F> {
    fn drop(&mut self) {
        // Take the chunks out first, so nothing can reach a child twice;
        // they are freed when `ready` goes, after every slot was dropped
        // (also when a destructor panicked: `drop_slots` keeps going).
        let ready = std::mem::replace(&mut self.ready, ReadySet::new());
        if std::mem::needs_drop::<Slot<F>>() && (self.running > 0 || self.kept > 0) {
            drop_slots::<F>(&ready);
        }
        // Otherwise every slot is vacant (a gather whose outputs were
        // taken, a stream run to its end): nothing to drop, no walk.
    }
}

/// Drops every slot of every chunk in place. A destructor that panics does
/// not stop the others (pinned children must be dropped before their memory
/// is freed, SPEC §1.13): every slot is dropped, then the first panic
/// propagates — or is discarded while another one unwinds, where it would
/// abort the process.
fn drop_slots<F: Future>(ready: &ReadySet) {
    if !std::mem::needs_drop::<Slot<F>>() {
        return;
    }
    let mut rest = Rest::<F> {
        ready,
        chunk: 0,
        index: 0,
        _slots: PhantomData,
    };
    let mut panics = Panics::default();
    // One `catch_unwind` around the loop, not one per child. After a panic
    // the loop starts again past the slot that panicked, so the children
    // after it are dropped outside any unwind too (a sibling's guard that
    // checks `thread::panicking()`, a `Pooled` or a mutex guard, behaves as
    // if nothing had panicked).
    while let Err(payload) = catch_unwind(AssertUnwindSafe(|| {
        rest.each(|slot| {
            // SAFETY: see `Rest::each`.
            unsafe { ptr::drop_in_place(slot) }
        })
    })) {
        panics.keep(Some(payload));
    }
    panics.resume();
}

/// The slots of a ready set from `chunk`/`index` on, each visited once.
struct Rest<'a, F: Future> {
    ready: &'a ReadySet,
    chunk: usize,
    index: usize,
    _slots: PhantomData<Slot<F>>,
}

impl<F: Future> Rest<'_, F> {
    /// Calls `f` on each slot left, moving past a slot before `f` sees it,
    /// so no slot is visited twice (even if `f` unwinds).
    ///
    /// Every slot of a chunk is initialised when the chunk is added and stays
    /// so, and the caller took the ready set out of its engine, so nothing
    /// else reaches it: each slot may be dropped in place once, and is never
    /// read again (its chunk is freed after `drop_slots`).
    #[inline]
    fn each(&mut self, mut f: impl FnMut(*mut Slot<F>)) {
        while self.chunk < self.ready.chunk_count() {
            let elements = self.ready.elements(self.chunk);
            while self.index < elements.cap() {
                let slot = Engine::<F>::slot_of(elements.get(self.index));
                self.index += 1;
                f(slot);
            }
            self.chunk += 1;
            self.index = 0;
        }
    }
}

impl<F: Future> Engine<F> {
    /// Offset of a child's slot in its element (after its wake entry).
    const SLOT_AT: usize = size_of::<ready::Entry>().next_multiple_of(align_of::<Slot<F>>());
    /// Offset of a child's key in the elements of chunks that `push` fills.
    const KEY_AT: usize =
        (Self::SLOT_AT + size_of::<Slot<F>>()).next_multiple_of(align_of::<usize>());
    /// An element of the initial batch's chunk: entry, slot.
    const FIXED: Layout = Self::element_layout(Self::SLOT_AT + size_of::<Slot<F>>());
    /// An element of a chunk that `push` fills: entry, slot, key.
    const GROWN: Layout = Self::element_layout(Self::KEY_AT + size_of::<usize>());

    const fn element_layout(size: usize) -> Layout {
        let mut align = align_of::<ready::Entry>();
        if align_of::<Slot<F>>() > align {
            align = align_of::<Slot<F>>();
        }
        if align_of::<usize>() > align {
            align = align_of::<usize>();
        }
        match Layout::from_size_align(size, align) {
            Ok(layout) => layout,
            Err(_) => panic!("awaitkit: future too large"),
        }
    }

    /// An empty set; the first `push` allocates.
    pub(crate) const fn new() -> Self {
        Self {
            ready: ReadySet::new(),
            cursor: Cursor {
                chunks: 0,
                current: 0,
                nonempty: 0,
                stack: [(0, 0); 6],
                armed: false,
                open: false,
            },
            free: NO_SLOT,
            cooling: NO_SLOT,
            fresh: 0,
            running: 0,
            kept: 0,
            growth: FIRST_GROWTH,
            _children: PhantomData,
        }
    }

    /// A set holding `futures`, keyed by their position, every child ready
    /// for its first poll. With an exact size hint the set is one chunk of
    /// exactly that size, written in place (one allocation).
    ///
    /// That first chunk never reuses its slots, so its wakers skip the
    /// per-child clone counting that reuse needs: its memory (the size of the
    /// initial batch) is held until the set is dropped. Chunks added later
    /// by `push` reuse their slots.
    pub(crate) fn from_iter<I>(futures: I) -> Self
    where
        I: IntoIterator,
        I::Item: IntoFuture<IntoFuture = F>,
    {
        let mut engine = Self::new();
        let mut futures = futures.into_iter().map(IntoFuture::into_future);
        let n = match futures.size_hint() {
            (lower, Some(upper)) if lower == upper => lower,
            _ => {
                let all: Vec<F> = futures.collect();
                engine.fill(all.len(), all.into_iter());
                return engine;
            }
        };
        engine.fill(n, &mut futures);
        // An iterator that lied about its size: the rest go in by `push`.
        for f in futures {
            let key = engine.running;
            engine.push(f, key);
        }
        engine
    }

    /// Adds the first chunk with room for `n` and moves up to `n` futures in.
    fn fill(&mut self, n: usize, futures: impl Iterator<Item = F>) {
        if n == 0 {
            return;
        }
        let chunk = self.ready.add_chunk(n, false, Self::FIXED);
        let elements = self.ready.elements(chunk);
        /// Writes `Vacant` into the slots not filled (all of them if the
        /// iterator panics), so every slot is initialised either way, and
        /// counts the children in (so that the engine's drop, which skips
        /// its walk when nothing runs, sees them if the iterator panics).
        struct Rest<'a, F: Future> {
            elements: ready::Elements<'a>,
            next: usize,
            running: &'a mut usize,
            _slots: PhantomData<Slot<F>>,
        }
        impl<F: Future> Drop for Rest<'_, F> {
            fn drop(&mut self) {
                *self.running = self.next;
                for index in self.next..self.elements.cap() {
                    let slot = Engine::<F>::slot_of(self.elements.get(index));
                    // SAFETY: an uninitialised slot of a fresh chunk.
                    unsafe { slot.write(Slot::Vacant(NO_SLOT)) };
                }
            }
        }
        let mut rest = Rest::<F> {
            elements,
            next: 0,
            running: &mut self.running,
            _slots: PhantomData,
        };
        for f in futures.take(n) {
            let slot = Self::slot_of(elements.get(rest.next));
            // SAFETY: an uninitialised slot of the fresh chunk (`next < n`).
            unsafe { slot.write(Slot::Running(f)) };
            rest.next += 1;
        }
        let count = rest.next;
        drop(rest);
        // The initial batch's chunk takes no pushes (its keys are its
        // indices), even if the iterator fell short of its size hint.
        self.fresh = 0;
        self.ready.mark_first(chunk, count);
    }

    /// Allocates a chunk with `cap` vacant slots; `reuse`: whether its slots
    /// are reused (and so its wakers count clones per child).
    fn add_chunk(&mut self, cap: usize, reuse: bool) -> usize {
        let element = if reuse { Self::GROWN } else { Self::FIXED };
        let chunk = self.ready.add_chunk(cap, reuse, element);
        for index in 0..cap {
            // SAFETY: the element has room for a slot at `SLOT_AT`, aligned.
            unsafe { self.slot_ptr(chunk, index).write(Slot::Vacant(NO_SLOT)) };
        }
        chunk
    }

    /// Where a child's slot lives: in its element, after its wake entry.
    #[inline]
    fn slot_ptr(&self, chunk: usize, index: usize) -> *mut Slot<F> {
        Self::slot_of(self.ready.elements(chunk).get(index))
    }

    #[inline]
    fn slot_of(element: ready::Element<'_>) -> *mut Slot<F> {
        element.part(Self::SLOT_AT).cast::<Slot<F>>().as_ptr()
    }

    /// A child's key: its index in the initial batch's chunk, stored beside
    /// its slot in chunks that `push` fills.
    #[inline]
    fn key_of(elements: ready::Elements<'_>, index: usize) -> usize {
        if !elements.reuse() {
            return index;
        }
        let key = elements.get(index).part(Self::KEY_AT).cast::<usize>();
        // SAFETY: elements of reusing chunks have a key at `KEY_AT`, written
        // by `push` before the slot is `Running` (the only time it is read).
        unsafe { key.read() }
    }

    #[inline]
    fn slot(&mut self, chunk: usize, index: usize) -> &mut Slot<F> {
        // SAFETY: in bounds (checked by `slot_ptr`), initialised (see
        // `add_chunk`), and borrowed through `&mut self`, so not aliased.
        unsafe { &mut *self.slot_ptr(chunk, index) }
    }

    /// Number of chunks (for the loom models).
    #[cfg(all(test, awaitkit_loom))]
    pub(crate) fn ready_chunks(&self) -> usize {
        self.ready.chunk_count()
    }

    /// Number of children still running.
    pub(crate) fn running(&self) -> usize {
        self.running
    }

    /// Adds a child with `key`; it is polled in the next pass.
    pub(crate) fn push(&mut self, future: F, key: usize) -> SlotId {
        let id = self.vacant_slot();
        let (chunk, index) = (id.chunk as usize, id.index as usize);
        let element = self.ready.elements(chunk).get(index);
        // SAFETY: `push` only fills chunks of reusing kind (the initial
        // batch's chunk has no fresh or free slots), whose elements have a key
        // at `KEY_AT`.
        unsafe { element.part(Self::KEY_AT).cast::<usize>().write(key) };
        *self.slot(chunk, index) = Slot::Running(future);
        self.running += 1;
        // A stale bit of the previous occupant merges with this first-poll
        // bit; a stale bit already taken into the cursor is dropped.
        self.cursor.forget(chunk, index);
        self.ready.mark_ready(chunk, index);
        id
    }

    fn vacant_slot(&mut self) -> SlotId {
        if self.free == NO_SLOT && self.fresh == 0 {
            let (visited, freed) = self.recheck_cooling();
            // Each walk of the cooling list either frees at least half of it
            // or is followed by a growth at least half its size (chunks
            // double): either way the walk is paid for by as many pushes.
            if freed * 2 < visited || freed == 0 {
                self.grow();
            }
        }
        if self.free != NO_SLOT {
            let id = self.free;
            let Slot::Vacant(next) = *self.slot(id.chunk as usize, id.index as usize) else {
                unreachable!("free list points at an occupied slot")
            };
            self.free = next;
            return id;
        }
        let chunk = self.ready.chunk_count() - 1;
        let index = self.ready.capacity(chunk) - self.fresh;
        self.fresh -= 1;
        SlotId {
            chunk: chunk as u32,
            index: index as u32,
        }
    }

    /// Adds a chunk of fresh slots, each twice the size of the last.
    fn grow(&mut self) {
        let cap = self.growth;
        self.growth = cap.saturating_mul(2);
        self.add_chunk(cap, true);
        self.fresh = cap;
    }

    /// Moves cooling slots whose wakers are gone to the free list; returns
    /// how many it visited and how many it freed.
    fn recheck_cooling(&mut self) -> (usize, usize) {
        let mut id = std::mem::replace(&mut self.cooling, NO_SLOT);
        let (mut visited, mut freed) = (0, 0);
        while id != NO_SLOT {
            let Slot::Vacant(next) = *self.slot(id.chunk as usize, id.index as usize) else {
                unreachable!("cooling list points at an occupied slot")
            };
            self.release_slot(id);
            visited += 1;
            freed += usize::from(self.free == id);
            id = next;
        }
        (visited, freed)
    }

    /// Returns a vacant slot to the free list, or to the cooling list while a
    /// cloned waker of its last occupant is alive. Sets that do not reuse
    /// slots leave it vacant.
    #[inline]
    pub(crate) fn release_slot(&mut self, id: SlotId) {
        let (chunk, index) = (id.chunk as usize, id.index as usize);
        if !self.ready.reuses(chunk) {
            return;
        }
        // A stale bit left by the last occupant merges with the next
        // occupant's first-poll bit (see `push`).
        // Read once: the last clone may be dropped on another thread at any
        // moment, and both lists must agree on which one the slot joined.
        let idle = self.ready.is_idle(chunk, index);
        let list = if idle {
            &mut self.free
        } else {
            &mut self.cooling
        };
        let next = std::mem::replace(list, id);
        *self.slot(chunk, index) = Slot::Vacant(next);
    }

    /// Stores a finished child's output in its slot (gather keeps outputs in
    /// place until all are done).
    pub(crate) fn store(&mut self, id: SlotId, output: F::Output) {
        *self.slot(id.chunk as usize, id.index as usize) = Slot::Done(output);
        // Counted only where dropping a slot does something (the count
        // lets the engine's drop skip its walk).
        if std::mem::needs_drop::<Slot<F>>() {
            self.kept += 1;
        }
    }

    /// Takes every stored output in slot order (input order for sets built by
    /// [`Engine::from_iter`]).
    pub(crate) fn take_outputs(&mut self) -> Vec<F::Output> {
        self.kept = 0;
        let chunks = self.ready.chunk_count();
        let total = (0..chunks).map(|c| self.ready.capacity(c)).sum();
        let mut out = Vec::with_capacity(total);
        // Written into the spare capacity (no capacity check per output):
        // there is room for one output per slot. Only moves happen in the
        // loop, no user code, so nothing unwinds between a write and the
        // `set_len` that owns it.
        let spare = out.spare_capacity_mut();
        let mut len = 0;
        for chunk in 0..chunks {
            let elements = self.ready.elements(chunk);
            for index in 0..elements.cap() {
                // SAFETY: initialised (see `add_chunk`), and `&mut self` makes
                // the access unique.
                let slot = unsafe { &mut *Self::slot_of(elements.get(index)) };
                if let Slot::Done(_) = slot {
                    if let Slot::Done(output) = std::mem::replace(slot, Slot::Vacant(NO_SLOT)) {
                        spare[len].write(output);
                        len += 1;
                    }
                }
            }
        }
        // SAFETY: the first `len` elements were written just above.
        unsafe { out.set_len(len) };
        out
    }

    /// Drops every child and output now (fail-fast, cancellation), and frees
    /// the chunks unless a waker clone is alive. The engine stays usable, empty.
    pub(crate) fn clear(&mut self) {
        let ready = std::mem::replace(&mut self.ready, ReadySet::new());
        *self = Self::new();
        drop_slots::<F>(&ready);
    }

    /// Takes the running children out, in slot order, with their keys.
    /// Moving them is fine: they are `Unpin`.
    pub(crate) fn drain_running(&mut self) -> Vec<(usize, F)>
    where
        F: Unpin,
    {
        let mut out = Vec::with_capacity(self.running);
        for chunk in 0..self.ready.chunk_count() {
            for index in 0..self.ready.capacity(chunk) {
                let slot = self.slot(chunk, index);
                if let Slot::Running(..) = slot {
                    if let Slot::Running(f) = std::mem::replace(slot, Slot::Vacant(NO_SLOT)) {
                        // Read only for a running child: its key was written.
                        out.push((Self::key_of(self.ready.elements(chunk), index), f));
                    }
                }
            }
        }
        self.clear();
        out
    }

    /// The running children with their keys, in slot order.
    pub(crate) fn iter(&self) -> Children<'_, F> {
        Children {
            ready: &self.ready,
            chunk: 0,
            index: 0,
            left: self.running,
            _children: PhantomData,
        }
    }

    /// The running children with their keys, in slot order, pinned.
    pub(crate) fn iter_mut(&mut self) -> ChildrenMut<'_, F> {
        ChildrenMut {
            all: Children {
                ready: &self.ready,
                chunk: 0,
                index: 0,
                left: self.running,
                _children: PhantomData,
            },
            _unique: PhantomData,
        }
    }

    /// Starts a pass: unless a previous pass stopped early, takes a fresh
    /// snapshot of the woken children, making sure that `cx`'s waker is
    /// woken when a child is after the pass: registered first, or for a
    /// one-word set (see [`ReadySet::open`]) only if a child's waker escaped,
    /// when the pass ends ([`Pass::close`]).
    #[inline]
    pub(crate) fn pass<'a, 'b>(&'a mut self, cx: &'a mut Context<'b>) -> Pass<'a, 'b, F> {
        if self.cursor.open {
            // The last pass returned an output before its snapshot was done,
            // and its caller returned it (see [`Pass::next`]). Children
            // woken since stay in the word: taken below, or (with bits left
            // to visit) in the next pass, which this one asks for.
            self.cursor.open = false;
            self.ready.close(Some(cx.waker()));
        }
        let refreshed = if self.cursor.has_leftover() {
            false
        } else if self.running == 0 {
            // Nothing to poll, nothing to wake the task for: a task waker
            // registered for another task is let go (a set that finished,
            // or whose children all did, would keep that task alive).
            self.ready.let_go_stale(cx.waker());
            if !self.ready.is_one_word() {
                self.cursor.chunks = self.ready.take_chunks();
            }
            true
        } else if self.ready.is_one_word() {
            let (bits, open) = self.ready.open(cx.waker());
            if bits != 0 {
                let cursor = &mut self.cursor;
                cursor.open = open;
                cursor.current = 0;
                cursor.stack[0] = (0, bits);
                cursor.nonempty = 1;
            }
            true
        } else {
            self.ready.register(cx.waker());
            self.cursor.chunks = self.ready.take_chunks();
            true
        };
        Pass {
            engine: self,
            cx,
            refreshed,
        }
    }
}

/// How a settled pass turns a finished child's destructor panic (its
/// payload) into that child's output.
pub(crate) type SettleDrop<T> = fn(T, Box<dyn Any + Send>) -> T;

/// Closes a one-word set's open pass if a child's poll or destructor unwinds
/// out of it (see [`Pass::visit`]), and wakes the parent if children of the
/// snapshot are left to poll; forgotten on every normal exit.
struct CloseOnUnwind<'a, F: Future> {
    engine: &'a mut Engine<F>,
    waker: &'a std::task::Waker,
}

impl<F: Future> Drop for CloseOnUnwind<'_, F> {
    fn drop(&mut self) {
        // Children of the snapshot not polled yet stay in the cursor for the
        // next poll: nothing else would wake the parent for them (a caller
        // that catches the panic and returns `Pending` would never be
        // polled again).
        let mut wake = self.engine.cursor.has_leftover();
        let open = std::mem::replace(&mut self.engine.cursor.open, false);
        let (ready, waker) = (&mut self.engine.ready, self.waker);
        // User code (the waker's clone, drop and wake) while unwinding: a
        // second panic would abort, so it is contained.
        crate::unwind::contain(|| {
            if open && ready.close(Some(waker)) {
                wake = true;
            }
            if wake {
                waker.wake_by_ref();
            }
        });
    }
}

/// Releases a finished child's slot if dropping the child unwinds.
struct ReleaseOnUnwind<'a, F: Future> {
    engine: &'a mut Engine<F>,
    id: SlotId,
}

impl<F: Future> Drop for ReleaseOnUnwind<'_, F> {
    fn drop(&mut self) {
        self.engine.release_slot(self.id);
    }
}

/// One poll's worth of work: yields children that complete, polling each
/// woken child at most once.
pub(crate) struct Pass<'a, 'b, F: Future> {
    engine: &'a mut Engine<F>,
    cx: &'a mut Context<'b>,
    refreshed: bool,
}

impl<'b, F: Future> Pass<'_, 'b, F> {
    /// Polls woken children until one completes; `None` when every woken
    /// child was polled, or when the pass stopped early (see
    /// [`Pass::next_with`]). After `None` the parent is sure to be woken when
    /// a child is (after an early stop, it has been woken already).
    ///
    /// A caller that stops before `None` must not return `Pending` from that
    /// poll: it hands out what it got (`Ready`), fails fast
    /// ([`Engine::clear`]), or is dropped. The rest of the snapshot waits in
    /// the cursor for the next poll, and a one-word set's pass stays open
    /// (wakes meanwhile only set their bits, as during the pass) until the
    /// next [`Engine::pass`] closes it: nothing wakes the parent for them,
    /// which a consumer that got `Ready` does not need.
    #[inline]
    pub(crate) fn next(&mut self) -> Option<Completed<F::Output>> {
        self.next_with(|fut, cx| fut.poll(cx), None)
    }

    /// [`Pass::next`] with a custom way to poll a child (the settled variant
    /// catches panics here) and, with `catch_drop`, a way to settle a
    /// finished child whose destructor panics: `catch_drop(output, payload)`
    /// becomes its output instead of the panic propagating.
    ///
    /// A pass that makes no progress stops early: once [`STALL_LIMIT`]
    /// children in a row have stalled (returned `Pending` once the set is
    /// armed: typically out of a runtime's cooperative budget), it wakes the
    /// parent and returns `None`, keeping the rest of its snapshot for the
    /// next poll. That poll goes on where this one stopped, so every woken
    /// child is still polled once per snapshot (polls = wakes + N), and no
    /// child is polled twice in one poll (SPEC §1.3–§1.4).
    #[inline]
    pub(crate) fn next_with<T>(
        &mut self,
        poll: impl FnMut(Pin<&mut F>, &mut Context<'_>) -> Poll<T>,
        catch_drop: Option<SettleDrop<T>>,
    ) -> Option<Completed<T>> {
        if self.engine.cursor.has_leftover() {
            return self.visit(poll, |engine, slot, id, output| {
                Some(Self::complete(engine, slot, id, output, catch_drop))
            });
        }
        // Nothing taken, nothing left: the usual answer to the poll that
        // follows a completion, kept inline and short (what `visit` does when
        // it finds the cursor empty, with nobody polled).
        self.snapshot_done();
        None
    }

    /// The end of a snapshot: asks for another poll when this pass only
    /// finished an earlier snapshot (see [`Pass::visit`]), or when children
    /// were woken during a one-word set's pass.
    #[inline]
    fn snapshot_done(&mut self) {
        if self.engine.cursor.open {
            if self.close() && self.engine.running > 0 {
                self.cx.waker().wake_by_ref();
            }
        } else if !self.refreshed && self.engine.running > 0 {
            // This pass only finished an earlier snapshot; the parent waker
            // was not registered against the shared words, so ask to be
            // polled again to take a fresh one.
            self.cx.waker().wake_by_ref();
        }
    }

    /// Ends a one-word set's open pass ([`ReadySet::close`], registering the
    /// parent's waker if a child's escaped); returns whether a child was
    /// woken during it: nobody woke the parent for that, the caller does.
    #[inline]
    fn close(&mut self) -> bool {
        self.engine.cursor.open = false;
        self.engine.ready.close(Some(self.cx.waker()))
    }

    /// Polls every woken child once and keeps each finished child's output
    /// in its slot ([`Slot::Done`], for [`Engine::take_outputs`]): what
    /// `while let Some(done) = pass.next() { store(done.slot, done.output) }`
    /// does, in one loop. Ends like [`Pass::next`] returning `None`.
    #[inline]
    pub(crate) fn store_all(&mut self) {
        if !self.engine.cursor.has_leftover() {
            self.snapshot_done();
            return;
        }
        let done = self.visit(
            |fut, cx| fut.poll(cx),
            |engine, slot, id, output| {
                // As `next` would hand it out (a destructor's panic drops
                // the output, contained, and frees the slot), then kept.
                let output = Self::drop_child(engine, slot, id, output, None);
                *slot = Slot::Done(output);
                // Counted only where dropping a slot does something (see
                // `Engine::store`).
                if std::mem::needs_drop::<Slot<F>>() {
                    engine.kept += 1;
                }
                None::<Completed<F::Output>>
            },
        );
        debug_assert!(done.is_none());
    }

    /// [`Pass::next_with`] once the cursor holds bits to visit: polls woken
    /// children until `finish` (called with a finished child's slot, still
    /// holding the child, its id and its output) returns `Some`.
    #[inline]
    fn visit<T, R>(
        &mut self,
        mut poll: impl FnMut(Pin<&mut F>, &mut Context<'_>) -> Poll<T>,
        mut finish: impl FnMut(&mut Engine<F>, &mut Slot<F>, SlotId, T) -> Option<R>,
    ) -> Option<R> {
        // If a child's poll or destructor unwinds out of a one-word set's
        // open pass, the pass is closed on the way out (normal exits forget
        // the guard): the parent's waker is not registered before that, and
        // a clone that escaped earlier in the pass would otherwise wake
        // nobody — a caller that catches the panic and returns `Pending`
        // (the set is not poisoned) would never be polled again.
        let guard = CloseOnUnwind {
            engine: &mut *self.engine,
            waker: self.cx.waker(),
        };
        let engine = &mut *guard.engine;
        // Stalls since the last completion of this pass: a completion
        // returns, so one count per call, in a register.
        let mut stalls = 0;
        // Whether this call polled a child: a snapshot that polled nobody
        // (a set still empty, as a task group's before its first spawn)
        // does not arm the set, so the first polls of the children pushed
        // into it are not counted as stalls.
        let mut polled = false;
        'words: while let Some((chunk, first)) = engine.cursor.next(&engine.ready) {
            // The rest of this level-0 word is walked here, its chunk's
            // elements resolved once; a completion goes back to the cursor
            // (`finish` may change the engine).
            let elements = engine.ready.elements(chunk);
            let mut index = first;
            let output = loop {
                let element = elements.get(index);
                let waker = element.waker();
                // SAFETY: initialised (see `add_chunk`); the pass holds the
                // engine mutably, so the access is unique.
                let slot = unsafe { &mut *Engine::<F>::slot_of(element) };
                if let Slot::Running(fut) = slot {
                    let mut cx = Context::from_waker(&waker);
                    // SAFETY: the child lives in a chunk that never moves or
                    // grows, and is only ever dropped in place (by assignment
                    // to its slot or by `drop_slots`): it never moves while
                    // `Running`.
                    let fut = unsafe { Pin::new_unchecked(fut) };
                    polled = true;
                    if let Poll::Ready(output) = poll(fut, &mut cx) {
                        break (slot, output);
                    }
                    // Pending: a stall once the set has seen a completion or
                    // a snapshot after the first (see `STALL_LIMIT`).
                    if engine.cursor.armed {
                        stalls += 1;
                        if stalls == STALL_LIMIT {
                            // Keep the rest of the snapshot in the cursor for
                            // the next poll, and ask for that poll: the
                            // runtime gets to run something else (and refill
                            // its budget).
                            if engine.cursor.open {
                                engine.cursor.open = false;
                                engine.ready.close(Some(self.cx.waker()));
                            }
                            std::mem::forget(guard);
                            self.cx.waker().wake_by_ref();
                            return None;
                        }
                    }
                }
                // (Not running: a stale bit of a slot that has finished.)
                match engine.cursor.next_in_word() {
                    Some(next) => index = next,
                    None => continue 'words,
                }
            };
            let (slot, output) = output;
            engine.cursor.armed = true;
            stalls = 0;
            // Count it out first: dropping the child (in place, before
            // anything else) runs its destructor, which may panic.
            engine.running -= 1;
            let id = SlotId {
                chunk: chunk as u32,
                index: index as u32,
            };
            if let Some(done) = finish(engine, slot, id, output) {
                std::mem::forget(guard);
                return Some(done);
            }
        }
        std::mem::forget(guard);
        // The snapshot is done: every later one holds children polled before
        // (but for children pushed since). An unarmed snapshot has no
        // completion, so all of it was polled in this call: `polled` tells
        // whether it polled anyone.
        if polled {
            self.engine.cursor.armed = true;
        }
        self.snapshot_done();
        None
    }

    /// What [`Pass::next_with`] does with a finished child: drops it (its
    /// slot left vacant) and hands out its output with its key.
    #[inline]
    fn complete<T>(
        engine: &mut Engine<F>,
        slot: &mut Slot<F>,
        id: SlotId,
        output: T,
        catch_drop: Option<SettleDrop<T>>,
    ) -> Completed<T> {
        let key = Engine::<F>::key_of(engine.ready.elements(id.chunk as usize), id.index as usize);
        Completed {
            slot: id,
            key,
            output: Self::drop_child(engine, slot, id, output, catch_drop),
        }
    }

    /// Drops a finished child in place (its slot left vacant) and returns
    /// its output, or, with `catch_drop`, settles a destructor's panic into
    /// the output.
    #[inline]
    fn drop_child<T>(
        engine: &mut Engine<F>,
        slot: &mut Slot<F>,
        id: SlotId,
        output: T,
        catch_drop: Option<SettleDrop<T>>,
    ) -> T {
        // If the destructor panics, the slot is still left vacant
        // (an assignment writes even when dropping the old value
        // unwinds), and goes back to a free list here: the caller
        // that would have released it never sees the output.
        let release = ReleaseOnUnwind { engine, id };
        let output = match catch_drop {
            None => {
                // If the child's destructor panics, the output is dropped
                // before that panic propagates, not during its unwind
                // (contained: a panic of its own is discarded).
                let mut panics = crate::unwind::Panics::default();
                panics.catch(|| *slot = Slot::Vacant(NO_SLOT));
                crate::unwind::hand_back(panics, output)
            }
            Some(settle) => {
                match catch_unwind(AssertUnwindSafe(|| *slot = Slot::Vacant(NO_SLOT))) {
                    Ok(()) => output,
                    Err(payload) => settle(output, payload),
                }
            }
        };
        std::mem::forget(release);
        output
    }

    /// The engine, for bookkeeping between completions.
    pub(crate) fn engine(&mut self) -> &mut Engine<F> {
        self.engine
    }

    /// The parent's context, for polling something else of the parent's
    /// between completions (a batch's item stream).
    pub(crate) fn cx(&mut self) -> &mut Context<'b> {
        self.cx
    }
}

#[cfg(all(test, not(awaitkit_loom)))]
mod tests {
    use super::Engine;
    use std::cell::RefCell;
    use std::future::{Future, poll_fn};
    use std::rc::Rc;
    use std::task::{Context, Poll, Waker};

    type Parked = Rc<RefCell<Vec<Waker>>>;

    /// A child that parks a clone of its waker and finishes when `done` is set.
    fn parked(
        store: &Parked,
        done: &Rc<RefCell<bool>>,
        polls: &Rc<RefCell<usize>>,
    ) -> impl Future<Output = ()> + use<> {
        let (store, done, polls) = (store.clone(), done.clone(), polls.clone());
        poll_fn(move |cx| {
            *polls.borrow_mut() += 1;
            store.borrow_mut().push(cx.waker().clone());
            if *done.borrow() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    fn drain<F: Future>(engine: &mut Engine<F>, cx: &mut Context<'_>) -> Vec<usize> {
        let mut keys = Vec::new();
        let mut pass = engine.pass(cx);
        while let Some(done) = pass.next() {
            pass.engine().release_slot(done.slot);
            keys.push(done.key);
        }
        keys
    }

    #[test]
    fn an_iterator_that_panics_mid_fill_leaks_and_double_drops_nothing() {
        struct Counted(Rc<RefCell<usize>>);
        impl Drop for Counted {
            fn drop(&mut self) {
                *self.0.borrow_mut() += 1;
            }
        }
        impl Future for Counted {
            type Output = ();
            fn poll(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
                Poll::Pending
            }
        }
        let dropped = Rc::new(RefCell::new(0));
        let made = (0..10).map(|i| {
            assert!(i < 3, "iterator fails");
            Counted(dropped.clone())
        });
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Engine::from_iter(made)));
        assert!(result.is_err());
        assert_eq!(*dropped.borrow(), 3, "each future moved in is dropped once");
    }

    /// Pending children whose destructors panic, dropped both normally and
    /// while another panic unwinds: each is dropped exactly once, the first
    /// panic propagates in the first case, and nothing aborts in the second.
    #[test]
    fn every_pending_child_is_dropped_once_when_several_destructors_panic() {
        /// Counts its drops, and the drops that ran during an unwind.
        struct PanicOnDrop(Rc<RefCell<(usize, usize)>>);
        impl Future for PanicOnDrop {
            type Output = ();
            fn poll(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
                Poll::Pending
            }
        }
        impl Drop for PanicOnDrop {
            fn drop(&mut self) {
                let mut counts = self.0.borrow_mut();
                counts.0 += 1;
                counts.1 += usize::from(std::thread::panicking());
                drop(counts);
                panic!("destructor");
            }
        }
        let make = |dropped: &Rc<RefCell<(usize, usize)>>| {
            // More than one chunk: the first batch, then pushed children.
            let mut engine = Engine::from_iter((0..3).map(|_| PanicOnDrop(dropped.clone())));
            for key in 3..80 {
                engine.push(PanicOnDrop(dropped.clone()), key);
            }
            engine
        };
        let dropped = Rc::new(RefCell::new((0, 0)));
        let engine = make(&dropped);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(engine)));
        assert!(unwound.is_err(), "the first panic propagates");
        // Children after a panicking sibling are not dropped during its
        // unwind: a `Pooled` or a mutex guard among them acts normally.
        assert_eq!(*dropped.borrow(), (80, 0), "every child dropped once");

        struct DropDuringUnwind<F: Future>(Option<Engine<F>>);
        impl<F: Future> Drop for DropDuringUnwind<F> {
            fn drop(&mut self) {
                drop(self.0.take());
            }
        }
        let dropped = Rc::new(RefCell::new((0, 0)));
        let engine = make(&dropped);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = DropDuringUnwind(Some(engine));
            panic!("the panic under way");
        }));
        let payload = unwound.expect_err("the outer panic");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"the panic under way"));
        assert_eq!(*dropped.borrow(), (80, 80), "every child dropped once");
    }

    /// A finished child whose destructor panics still gives its slot back
    /// (it used to leak one slot per occurrence).
    #[test]
    fn a_finished_childs_panicking_destructor_releases_its_slot() {
        struct ReadyThenPanic;
        impl Future for ReadyThenPanic {
            type Output = ();
            fn poll(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
                Poll::Ready(())
            }
        }
        impl Drop for ReadyThenPanic {
            fn drop(&mut self) {
                panic!("destructor");
            }
        }
        let mut engine = Engine::new();
        let first = engine.push(ReadyThenPanic, 0);
        let mut cx = Context::from_waker(Waker::noop());
        let unwound =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drain(&mut engine, &mut cx)));
        assert!(unwound.is_err());
        assert_eq!(engine.running(), 0);
        assert_eq!(engine.free, first, "the slot is on the free list");
        // And it is the next one taken.
        assert_eq!(engine.push(ReadyThenPanic, 1), first);
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(engine)));
        assert!(dropped.is_err(), "the second child's destructor panics too");
    }

    #[test]
    fn growth_keeps_every_child_reachable() {
        let mut engine = Engine::new();
        for key in 0..1000 {
            engine.push(std::future::ready(key), key);
        }
        assert_eq!(
            engine.ready.chunk_count(),
            6,
            "32 + 64 + 128 + 256 + 512 + 1024 slots"
        );
        let mut cx = Context::from_waker(Waker::noop());
        let mut keys = drain(&mut engine, &mut cx);
        keys.sort_unstable();
        assert_eq!(keys, (0..1000).collect::<Vec<_>>());
        assert_eq!(engine.running(), 0);
    }

    #[test]
    fn slots_with_live_clones_cool_down_and_are_reused_later() {
        let store: Parked = Rc::default();
        let polls = Rc::new(RefCell::new(0));
        let done = Rc::new(RefCell::new(true));
        let mut engine = Engine::new();
        let mut cx = Context::from_waker(Waker::noop());
        engine.push(parked(&store, &done, &polls), 0);
        assert_eq!(drain(&mut engine, &mut cx), [0]);
        // The finished child's waker clone is alive: its slot must cool.
        assert_ne!(engine.cooling, super::NO_SLOT);
        let (new_store, new_polls): (Parked, _) = (Rc::default(), Rc::new(RefCell::new(0)));
        let never = Rc::new(RefCell::new(false));
        let first = engine.push(parked(&new_store, &never, &new_polls), 1);
        assert_ne!(first, super::SlotId { chunk: 0, index: 0 });
        assert!(drain(&mut engine, &mut cx).is_empty());
        // The stale waker fires: nothing is polled.
        store.borrow()[0].wake_by_ref();
        assert!(drain(&mut engine, &mut cx).is_empty());
        assert_eq!((*polls.borrow(), *new_polls.borrow()), (1, 1));
        // Once the clone is gone, the cooled slot becomes reusable.
        store.borrow_mut().clear();
        engine.recheck_cooling();
        assert_eq!(engine.cooling, super::NO_SLOT);
    }

    #[test]
    fn wakers_outliving_the_engine_keep_their_chunk_alive() {
        let store: Parked = Rc::default();
        let polls = Rc::new(RefCell::new(0));
        let done = Rc::new(RefCell::new(false));
        let mut engine = Engine::from_iter((0..70).map(|_| parked(&store, &done, &polls)));
        for key in 70..200 {
            engine.push(parked(&store, &done, &polls), key);
        }
        let mut cx = Context::from_waker(Waker::noop());
        assert!(drain(&mut engine, &mut cx).is_empty());
        assert_eq!(*polls.borrow(), 200);
        drop(engine);
        // Every clone still points at a live chunk (ASan checks this).
        for waker in store.borrow().iter() {
            waker.wake_by_ref();
        }
        let clone = store.borrow()[150].clone();
        store.borrow_mut().clear();
        clone.wake();
    }

    #[test]
    fn each_child_is_polled_once_per_pass_even_when_it_rewakes() {
        use std::cell::Cell;
        // Per child: polls during the current parent poll, and in all.
        let polls: Rc<Vec<(Cell<usize>, Cell<usize>)>> =
            Rc::new((0..100).map(|_| Default::default()).collect());
        let mut engine = Engine::from_iter((0..100).map(|i| {
            let mut left = 3;
            let polls = polls.clone();
            poll_fn(move |cx: &mut Context<'_>| {
                let (now, all) = &polls[i];
                now.set(now.get() + 1);
                all.set(all.get() + 1);
                if left == 0 {
                    return Poll::Ready(i);
                }
                left -= 1;
                cx.waker().wake_by_ref();
                Poll::Pending
            })
        }));
        let mut cx = Context::from_waker(Waker::noop());
        let mut done = 0;
        let mut parent_polls = 0;
        while done < 100 {
            done += drain(&mut engine, &mut cx).len();
            parent_polls += 1;
            for (now, _) in polls.iter() {
                assert!(now.get() <= 1, "a child polled twice in one poll");
                now.set(0);
            }
            assert!(parent_polls < 1000, "no progress");
        }
        // Three self-wakes each: polls = wakes + N.
        assert!(polls.iter().all(|(_, all)| all.get() == 4));
        // Stopped every `STALL_LIMIT` self-wakes without a completion.
        assert!(parent_polls >= 300 / super::STALL_LIMIT, "{parent_polls}");
    }

    /// A pass that stops early keeps the rest of its snapshot: the next poll
    /// goes on from there rather than from the first child again. The first
    /// snapshot (no completion yet) is never split.
    #[test]
    fn an_early_stop_resumes_where_it_stopped() {
        use std::cell::Cell;
        let n = 4 * super::STALL_LIMIT;
        let polls: Rc<Vec<Cell<usize>>> = Rc::new((0..n).map(|_| Cell::new(0)).collect());
        // Children that wake themselves forever (a yield loop).
        let mut engine = Engine::from_iter((0..n).map(|i| {
            let polls = polls.clone();
            poll_fn(move |cx: &mut Context<'_>| {
                polls[i].set(polls[i].get() + 1);
                cx.waker().wake_by_ref();
                Poll::<()>::Pending
            })
        }));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(drain(&mut engine, &mut cx).is_empty());
        assert!(
            polls.iter().all(|p| p.get() == 1),
            "the first snapshot split"
        );
        for round in 1..=4 {
            assert!(drain(&mut engine, &mut cx).is_empty());
            let polled = polls.iter().filter(|p| p.get() == 2).count();
            assert_eq!(polled, round * super::STALL_LIMIT, "round {round}");
            // In input order: the first `polled` children.
            assert!(polls[..polled].iter().all(|p| p.get() == 2));
        }
        // The snapshot is done; the next poll takes a fresh one.
        assert!(drain(&mut engine, &mut cx).is_empty());
        assert_eq!(
            polls.iter().filter(|p| p.get() == 3).count(),
            super::STALL_LIMIT
        );
    }

    /// The cursor's descent through a three-level tree (more than 64 × 64
    /// children in one chunk): rounds of wakes scattered over every level,
    /// from sparse (one bit per word at every level: a full descent per
    /// child) to dense (leftover bits at every level, stale summary bits of
    /// children that finished meanwhile): exactly the woken children are
    /// polled, once each, and every completion is reported once.
    #[test]
    fn a_three_level_tree_polls_exactly_the_woken_children() {
        use std::cell::Cell;
        const N: usize = 64 * 64 * 2 + 100;
        struct Child {
            index: usize,
            polls: Rc<Vec<Cell<usize>>>,
            parked: Rc<RefCell<Vec<Option<Waker>>>>,
            finish: Rc<Vec<Cell<bool>>>,
        }
        impl Future for Child {
            type Output = usize;
            fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
                let polls = &self.polls[self.index];
                polls.set(polls.get() + 1);
                if self.finish[self.index].get() {
                    return Poll::Ready(self.index);
                }
                self.parked.borrow_mut()[self.index] = Some(cx.waker().clone());
                Poll::Pending
            }
        }
        let polls: Rc<Vec<Cell<usize>>> = Rc::new((0..N).map(|_| Cell::new(0)).collect());
        let finish: Rc<Vec<Cell<bool>>> = Rc::new((0..N).map(|_| Cell::new(false)).collect());
        let parked = Rc::new(RefCell::new(vec![None; N]));
        let mut engine = Engine::from_iter((0..N).map(|index| Child {
            index,
            polls: polls.clone(),
            parked: parked.clone(),
            finish: finish.clone(),
        }));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(drain(&mut engine, &mut cx).is_empty());
        assert!(polls.iter().all(|p| p.get() == 1));
        let mut done = vec![false; N];
        let mut expected = vec![1; N];
        // Strides from one child per top-level bit to every third child.
        for (round, stride) in [4099, 4096, 677, 64, 63, 7, 3].into_iter().enumerate() {
            let mut woken = Vec::new();
            for index in (round..N).step_by(stride) {
                if done[index] {
                    continue;
                }
                // Every other woken child finishes; the rest park again.
                finish[index].set(woken.len() % 2 == 0);
                woken.push(index);
                let waker = parked.borrow_mut()[index].take().expect("parked");
                waker.wake();
            }
            let mut finished = drain(&mut engine, &mut cx);
            finished.sort_unstable();
            let want: Vec<usize> = woken.iter().copied().filter(|&i| finish[i].get()).collect();
            assert_eq!(finished, want, "round {round}");
            for &index in &woken {
                expected[index] += 1;
                done[index] = finish[index].get();
            }
            for (index, p) in polls.iter().enumerate() {
                assert_eq!(p.get(), expected[index], "child {index}, round {round}");
            }
        }
        assert_eq!(engine.running(), done.iter().filter(|d| !**d).count());
    }
}
