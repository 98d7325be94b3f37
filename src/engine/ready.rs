//! The shared, thread-safe half of the engine: per-child wakers and the ready
//! set they write into.
//!
//! # Layout
//!
//! Children live in *chunks*. Each chunk is one heap allocation:
//!
//! ```text
//! [ Header | AtomicU64 × words | AtomicU32 × cap (only if it counts clones)
//!          | (Entry, owner's part) × cap ]
//! ```
//!
//! * An [`Entry`] (8 bytes) is what a child's waker points at: its distance
//!   back to the header and the child's index in the chunk. Each entry sits
//!   right before the owner's part for the same child (its slot; the owner
//!   chooses the element layout), so a wake and the poll that follows touch
//!   the same cache line.
//! * The words form a 64-ary bit tree over the chunk's children: level 0 has
//!   one bit per child ("woken since it was last polled"), level `k + 1` has
//!   one bit per word of level `k` ("that word may be non-zero"), and the top
//!   level is a single word.
//! * The owner's parts hold the children themselves: one allocation per chunk for children and wakers
//!   alike. This module never touches them; the owner drops their contents
//!   before releasing its reference, and the memory is freed with the chunk.
//! * The first chunk is the *root*. Its header also holds the parent task's
//!   waker and one more word, `chunks`, with one bit per *other* chunk whose
//!   top word may be non-zero (the root chunk's own top word is a root word
//!   in itself, so a set of one chunk has no extra level).
//!
//! # The wake protocol
//!
//! A wake sets the child's bit with `fetch_or`. Only the waker that turns a
//! word from zero to non-zero goes on to set the bit one level up, and only
//! the waker that turns a root word (the root chunk's top word, or `chunks`)
//! from zero to non-zero wakes the parent.
//! The owner consumes bits top-down with `swap(0)`: it swaps the root word
//! (after registering its waker), and then each word below whose bit it took.
//! Every bit set by a waker is therefore either already covered by a bit
//! somebody still has to propagate (and then wake for), or taken by the
//! owner's next swap of that word. A wake is one `fetch_or`, plus one per
//! level (at most ⌈log₆₄ cap⌉) when the word above was empty.
//!
//! A *one-word* set (one chunk of one level, fewer than 64 children: bit 63
//! is free) has two cheaper kinds of pass ([`ReadySet::open`]):
//!
//! * while no child's waker escaped its poll (`refs == 1`: no clone
//!   exists), nobody but the owner can touch the word between its polls, so
//!   the parent's waker is not registered at all, and the pass takes the
//!   word with a load and a store of [`POLLING`]: a child that wakes itself
//!   (or a sibling, or lends its borrowed waker to a thread joined before
//!   its poll returns) finds the word non-zero and only sets its bit. The
//!   pass ends with [`ReadySet::close`], which clears `POLLING` (a load and
//!   a store; or, if a clone was taken during the pass, after registering
//!   the parent's waker, with a `fetch_and` that sees every wake made until
//!   then) and tells the owner to wake its own task if a bit was set;
//! * once a waker escaped, the pass is the general one: register, then take
//!   the word.
//!
//! The owner of a set whose wakers never escape (children that complete or
//! wake themselves) thus clones no waker and touches the parent waker's
//! state never; each wake is its one `fetch_or`.
//!
//! # Lifetimes
//!
//! A chunk's `refs` counts the owner, (for the root) every other chunk, and
//! the cloned wakers: each clone, in a chunk that does not count clones per
//! child (a fixed batch that never reuses slots); otherwise each child whose
//! clone counter is non-zero. The waker the owner hands to a child while
//! polling it is *borrowed*: it owns nothing. In a counting chunk, cloning
//! it moves the child's counter from zero to one and takes a chunk
//! reference; the last clone dropped gives it back. A child whose counter is
//! zero has no waker anywhere outside a poll, which is what lets the owner
//! reuse its slot without a stale waker ever reaching the next child.

use super::parent::ParentWaker;
use crate::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::fmt;
use std::marker::PhantomData;
use std::mem::{ManuallyDrop, align_of, size_of};
use std::ptr::{self, NonNull};
use std::task::{RawWaker, RawWakerVTable, Waker};

const BITS: usize = 64;
/// 64⁶ children per chunk is far beyond `u32::MAX`.
const MAX_LEVELS: usize = 6;
/// A chunk is addressed by its bit in the root's `chunks` word.
pub(crate) const MAX_CHUNKS: usize = 64;
/// Clone counts beyond this abort, like `Arc` does on overflow.
const MAX_CLONES: u32 = u32::MAX / 2;
/// The owner is polling the children of a one-word set (bit 63 of its word,
/// never a child's: see [`ReadySet::open`]).
const POLLING: u64 = 1 << 63;

/// Chunks allocated and not yet freed; lets the loom models check that the
/// last waker or owner frees everything (run them with one test thread).
#[cfg(all(test, awaitkit_loom))]
pub(crate) static LIVE_CHUNKS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// What a child's waker points at; the first field of every element.
#[repr(C, align(8))]
pub(crate) struct Entry {
    /// Distance from the chunk header to this entry, in units of 8 bytes:
    /// lets a waker find its header without reading anything else.
    back: u32,
    /// The child's index within its chunk.
    index: u32,
}

#[repr(C)]
struct Header {
    refs: AtomicUsize,
    /// The root chunk; points at itself in the root.
    root: NonNull<Header>,
    /// This chunk's bit in `root.chunks`.
    chunk: u32,
    cap: u32,
    levels: u32,
    /// Whether the chunk counts clones per child (only sets that reuse slots
    /// need it), in `clones`; otherwise a clone holds a chunk reference
    /// directly.
    count_clones: bool,
    /// Per child: the number of cloned (owned) wakers pointing at it (`cap`
    /// counters if `count_clones`, none otherwise).
    clones: NonNull<AtomicU32>,
    /// Offset (in words) of each level's first word.
    level_start: [u32; MAX_LEVELS],
    words: NonNull<AtomicU64>,
    /// The first element; elements are `stride` bytes apart.
    elements: NonNull<u8>,
    stride: usize,
    layout: Layout,
    /// Root only: the parent task's waker.
    parent: ParentWaker,
    /// Root only: one bit per chunk whose top word may be non-zero.
    chunks: AtomicU64,
    /// Loom models only: every waker reads it and the free writes it, so a
    /// waker access not ordered before the free is a causality violation
    /// loom reports (it stands for the header fields a waker reads).
    #[cfg(awaitkit_loom)]
    canary: crate::sync::cell::UnsafeCell<()>,
}

impl Header {
    fn clones(&self, index: usize) -> &AtomicU32 {
        assert!(self.count_clones && index < self.cap as usize);
        // SAFETY: a counting chunk has `cap` counters initialised by
        // `Chunk::alloc`.
        unsafe { self.clones.add(index).as_ref() }
    }

    fn word(&self, level: usize, word: usize) -> &AtomicU64 {
        debug_assert!(level < self.levels as usize);
        // SAFETY: `level_start[level] + word` is within the words array
        // initialised by `Chunk::alloc` (callers derive `word` from an index
        // below `cap`, shifted once per level).
        unsafe {
            &*self
                .words
                .as_ptr()
                .add(self.level_start[level] as usize + word)
        }
    }

    fn root(&self) -> &Header {
        // SAFETY: every chunk holds a reference on the root (the root on
        // itself through the owner), so the root outlives `self`.
        unsafe { self.root.as_ref() }
    }

    /// Marks child `index` as woken; wakes the parent if `wake_parent` and
    /// this call made the root word non-zero.
    ///
    /// While no waker of the chunk escaped (`refs == 1`: the owner's
    /// reference only), the bit is set with a load and a store instead of a
    /// `fetch_or`. Then the caller is the borrowed waker of the child being
    /// polled (or the owner marking a pushed child), on the owner's thread
    /// or on one the child lent it to and joins before its poll returns; the
    /// owner touches no word during a poll. The only other writers of the
    /// word meanwhile are other wakes of that same child (through the
    /// borrowed waker, or a clone taken from it during this poll): they set
    /// the same bit, so a store of `prev | bit` loses nothing. Every other
    /// bit was set before (a clone of another child can only have been taken
    /// in an earlier poll, and reading `refs == 1` with acquire after its
    /// last drop's release orders its wakes before the load). A wake that
    /// sees `prev == 0` goes on to propagate as usual (two that both do only
    /// set the same bits twice).
    ///
    /// Not in a chunk that counts clones: there the first clone of a child
    /// moves its counter from 0 to 1 and only then takes the chunk
    /// reference, so a second clone taken at the same moment (on a thread
    /// the child lent its borrowed waker to) can escape while `refs` still
    /// reads 1, and a wake through it would take the plain path at any later
    /// time, its store landing after the owner's `close` (bringing `POLLING`
    /// back: a lost wake; loom model
    /// `review_counting_chunk_two_cloners_one_escapes`).
    #[inline]
    fn set_ready(&self, index: usize, wake_parent: bool) {
        let word = self.word(0, index / BITS);
        let bit = 1 << (index % BITS);
        let prev = if !self.count_clones && self.refs.load(Ordering::Acquire) == 1 {
            let prev = word.load(Ordering::Relaxed);
            word.store(prev | bit, Ordering::Relaxed);
            prev
        } else {
            word.fetch_or(bit, Ordering::AcqRel)
        };
        if prev == 0 {
            self.propagate(index / BITS, wake_parent);
        }
    }

    /// The rest of `set_ready`, for the waker that made a level-0 word
    /// non-zero.
    #[cold]
    fn propagate(&self, mut word: usize, wake_parent: bool) {
        let mut bit = word % BITS;
        word /= BITS;
        for level in 1..self.levels as usize {
            let prev = self.word(level, word).fetch_or(1 << bit, Ordering::AcqRel);
            if prev != 0 {
                // Somebody else turned this word non-zero and propagates it.
                return;
            }
            bit = word % BITS;
            word /= BITS;
        }
        // The root chunk's top word is itself a root word; the other chunks
        // flag themselves in `chunks`.
        let root = self.root();
        let prev = if self.chunk == 0 {
            0
        } else {
            root.chunks.fetch_or(1 << self.chunk, Ordering::AcqRel)
        };
        if prev == 0 && wake_parent {
            root.parent.wake();
        }
    }
}

/// Drops one reference on a chunk, freeing it (and its root reference) when
/// it was the last.
///
/// # Safety
///
/// The caller owns one reference on `header`.
#[inline]
unsafe fn release(header: NonNull<Header>) {
    // SAFETY: the caller's reference keeps the header alive until the
    // `fetch_sub` below.
    let h = unsafe { header.as_ref() };
    if h.refs.fetch_sub(1, Ordering::Release) != 1 {
        return;
    }
    fence(Ordering::Acquire);
    let root = h.root;
    let is_root = root == header;
    // SAFETY: that was the last reference: nobody else can reach the chunk.
    unsafe { Chunk::destroy(header) };
    if !is_root {
        // SAFETY: this chunk owned one reference on its root.
        unsafe { release(root) };
    }
}

/// The entry behind a waker's data pointer, and its chunk header.
///
/// # Safety
///
/// `data` came from [`ReadySet::waker`] or a clone of such a waker, and the
/// waker keeps the chunk alive.
unsafe fn resolve<'a>(data: *const ()) -> (NonNull<Header>, &'a Header, &'a Entry) {
    let entry = data.cast::<Entry>();
    // SAFETY: `data` points at a live entry (caller contract), `8 × back`
    // bytes after its chunk's header in the same allocation.
    let header = unsafe { entry.byte_sub((*entry).back as usize * 8).cast::<Header>() };
    // SAFETY: see above; both are alive for as long as the waker is. The raw
    // header pointer keeps the provenance of the whole chunk (it is derived
    // from the waker's data pointer), for freeing it.
    let resolved = unsafe { (NonNull::new_unchecked(header.cast_mut()), &*header, &*entry) };
    #[cfg(awaitkit_loom)]
    resolved.1.canary.with(|_| ());
    resolved
}

static VTABLE: RawWakerVTable =
    RawWakerVTable::new(waker_clone, waker_wake, waker_wake_by_ref, waker_drop);

unsafe fn waker_clone(data: *const ()) -> RawWaker {
    // SAFETY: the waker being cloned keeps the chunk alive.
    let (_, header, entry) = unsafe { resolve(data) };
    if !header.count_clones {
        if header.refs.fetch_add(1, Ordering::Relaxed) > isize::MAX as usize {
            std::process::abort();
        }
        return RawWaker::new(data, &VTABLE);
    }
    let prev = header
        .clones(entry.index as usize)
        .fetch_add(1, Ordering::Relaxed);
    if prev == 0 {
        // The first owned waker of this entry takes a chunk reference. The
        // waker being cloned is either owned (then `prev > 0`) or the
        // borrowed one of a running poll, whose owner holds a reference, so
        // the count cannot be zero here.
        header.refs.fetch_add(1, Ordering::Relaxed);
    } else if prev > MAX_CLONES {
        std::process::abort();
    }
    RawWaker::new(data, &VTABLE)
}

unsafe fn waker_wake(data: *const ()) {
    /// Gives the owned waker's reference back even if the wake unwinds (a
    /// parent waker that panics), so the chunk is not leaked.
    struct Owned(*const ());
    impl Drop for Owned {
        fn drop(&mut self) {
            // SAFETY: the waker being consumed owned this reference.
            unsafe { waker_drop(self.0) }
        }
    }
    let owned = Owned(data);
    // SAFETY: forwarded caller contract; `owned` keeps the chunk alive.
    unsafe { waker_wake_by_ref(owned.0) };
}

/// Drops a waker taken out of a parent slot once nothing is held; during an
/// unwind already under way its panic is discarded instead of aborting.
#[inline]
fn drop_user_waker(waker: Option<Waker>) {
    if let Some(waker) = waker {
        crate::unwind::drop_user(waker);
    }
}

unsafe fn waker_wake_by_ref(data: *const ()) {
    // SAFETY: the waker keeps the chunk alive.
    let (_, header, entry) = unsafe { resolve(data) };
    header.set_ready(entry.index as usize, true);
}

unsafe fn waker_drop(data: *const ()) {
    // SAFETY: this owned waker keeps the chunk alive until it is released.
    let (chunk, header, entry) = unsafe { resolve(data) };
    if !header.count_clones {
        // SAFETY: this clone holds a chunk reference.
        unsafe { release(chunk) };
    } else if header
        .clones(entry.index as usize)
        .fetch_sub(1, Ordering::AcqRel)
        == 1
    {
        // The last owned waker of this entry gives back its chunk reference.
        // SAFETY: that reference was taken when the count left zero. The
        // `AcqRel` above (as `Arc` orders its last decrement) makes every
        // earlier clone's accesses happen before this release, so whoever
        // frees the chunk after the reference count's own acquire fence
        // frees it after those accesses too; with `Release` alone a
        // next-to-last clone's reads would be unordered with the free.
        unsafe { release(chunk) };
    }
}

/// Owner-side operations on one chunk.
struct Chunk;

impl Chunk {
    /// Allocates a chunk for `cap` children, one `element` each (an [`Entry`]
    /// first, then whatever the owner keeps per child). `root` is `None` for
    /// the root chunk itself. No child is marked ready.
    fn alloc(
        cap: usize,
        chunk: u32,
        root: Option<NonNull<Header>>,
        count_clones: bool,
        element: Layout,
    ) -> NonNull<Header> {
        assert!(
            cap > 0 && cap <= u32::MAX as usize,
            "awaitkit: too many futures in one set"
        );
        // Words per level, bottom-up, until one word covers the level below.
        let mut level_start = [0u32; MAX_LEVELS];
        let mut levels = 0;
        let mut total = 0usize;
        let mut n = cap.div_ceil(BITS);
        loop {
            level_start[levels] = total as u32;
            total += n;
            levels += 1;
            if n == 1 {
                break;
            }
            n = n.div_ceil(BITS);
        }
        let overflow = "awaitkit: capacity overflow";
        assert!(element.size() >= size_of::<Entry>() && element.align() >= align_of::<Entry>());
        let element = element.pad_to_align();
        let stride = element.size();
        let elements =
            Layout::from_size_align(stride.checked_mul(cap).expect(overflow), element.align())
                .expect(overflow);
        let (layout, words_at) = Layout::new::<Header>()
            .extend(Layout::array::<AtomicU64>(total).expect(overflow))
            .expect(overflow);
        let counters =
            Layout::array::<AtomicU32>(if count_clones { cap } else { 0 }).expect(overflow);
        let (layout, clones_at) = layout.extend(counters).expect(overflow);
        let (layout, elements_at) = layout.extend(elements).expect(overflow);
        let layout = layout.pad_to_align();
        // Entries find their header through a `u32` count of 8-byte units.
        assert!(
            layout.size() / 8 <= u32::MAX as usize,
            "awaitkit: too many futures in one set"
        );
        // SAFETY: the layout has a non-zero size (it contains a header).
        let base = unsafe { alloc(layout) };
        let Some(base) = NonNull::new(base) else {
            handle_alloc_error(layout)
        };
        let header = base.cast::<Header>();
        #[cfg(all(test, awaitkit_loom))]
        LIVE_CHUNKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: all writes below initialise parts of the fresh allocation at
        // the offsets (and with the alignment) the layout computed.
        unsafe {
            let words = base.add(words_at).cast::<AtomicU64>();
            header.write(Header {
                refs: AtomicUsize::new(1),
                root: root.unwrap_or(header),
                chunk,
                cap: cap as u32,
                count_clones,
                clones: base.add(clones_at).cast::<AtomicU32>(),
                levels: levels as u32,
                level_start,
                words,
                elements: base.add(elements_at),
                stride,
                layout,
                parent: ParentWaker::new(),
                chunks: AtomicU64::new(0),
                #[cfg(awaitkit_loom)]
                canary: crate::sync::cell::UnsafeCell::new(()),
            });
            // Entries walked with a running pointer and `back` (the stride
            // is a multiple of 8: elements are aligned like an `Entry`).
            debug_assert_eq!(stride % 8, 0);
            let mut entry = base.add(elements_at).cast::<Entry>();
            let mut back = (elements_at / 8) as u32;
            for index in 0..cap as u32 {
                entry.write(Entry { back, index });
                entry = entry.byte_add(stride);
                back += (stride / 8) as u32;
            }
            if count_clones {
                let clones = base.add(clones_at).cast::<AtomicU32>();
                for index in 0..cap {
                    clones.add(index).write(AtomicU32::new(0));
                }
            }
            for w in 0..total {
                words.add(w).write(AtomicU64::new(0));
            }
        }
        header
    }

    /// Drops the chunk's contents and frees it.
    ///
    /// # Safety
    ///
    /// No reference to the chunk remains.
    #[inline(never)]
    unsafe fn destroy(header: NonNull<Header>) {
        // SAFETY: caller contract: we are the only ones left; every field,
        // entry and word was initialised by `alloc`.
        unsafe {
            let h = header.as_ref();
            #[cfg(awaitkit_loom)]
            h.canary.with_mut(|_| ());
            let layout = h.layout;
            let cap = h.cap as usize;
            let total = h.level_start[h.levels as usize - 1] as usize + 1;
            if h.count_clones {
                ptr::drop_in_place(ptr::slice_from_raw_parts_mut(h.clones.as_ptr(), cap));
            }
            ptr::drop_in_place(ptr::slice_from_raw_parts_mut(h.words.as_ptr(), total));
            // The parent's waker is user code: take it out, free the chunk,
            // then drop it, so a panicking drop cannot leak the chunk.
            let parent = (*header.as_ptr()).parent.take_exclusive();
            ptr::drop_in_place(header.as_ptr());
            dealloc(header.as_ptr().cast(), layout);
            #[cfg(all(test, awaitkit_loom))]
            LIVE_CHUNKS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            drop_user_waker(parent);
        }
    }
}

/// The owner's handle on the ready set: the chunks, the parent waker, and the
/// bit tree. Not `Clone`; dropping it releases the owner's references (the
/// owner drops what it put in the chunks' regions first).
pub(crate) struct ReadySet {
    /// The root chunk, kept inline so a single-chunk set allocates once.
    root: Option<NonNull<Header>>,
    /// Chunks 1.. of a set that grew.
    more: Vec<NonNull<Header>>,
    /// Whether the set is one word: a root chunk of one level and fewer
    /// than 64 children, and no other chunk (see [`ReadySet::open`]).
    one_word: bool,
}

// SAFETY: the chunks are shared with wakers on any thread through atomics
// and the parent waker's protocol; the handle itself can move freely.
unsafe impl Send for ReadySet {}
// SAFETY: `&ReadySet` methods only read immutable header fields or touch
// atomics; the parent waker's owner-only operations (`register`, `take`)
// need `&mut ReadySet`.
unsafe impl Sync for ReadySet {}

impl fmt::Debug for ReadySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadySet")
            .field("chunks", &self.chunk_count())
            .finish()
    }
}

impl ReadySet {
    /// A ready set with no chunks yet.
    pub(crate) const fn new() -> Self {
        Self {
            root: None,
            more: Vec::new(),
            one_word: false,
        }
    }

    /// Adds a chunk of `cap` children, none of them ready, one `element` per
    /// child (an [`Entry`] first: see [`ReadySet::element`]). Returns its
    /// id. Only chunks that count clones can answer [`ReadySet::is_idle`].
    pub(crate) fn add_chunk(&mut self, cap: usize, count_clones: bool, element: Layout) -> usize {
        let Some(root) = self.root else {
            self.root = Some(Chunk::alloc(cap, 0, None, count_clones, element));
            // One level (`cap <= 64`) with bit 63 free for `POLLING`.
            self.one_word = cap < BITS;
            return 0;
        };
        self.one_word = false;
        let id = self.chunk_count();
        assert!(id < MAX_CHUNKS, "awaitkit: too many futures in one set");
        let chunk = Chunk::alloc(cap, id as u32, Some(root), count_clones, element);
        // The new chunk's reference on the root, taken once it exists.
        // SAFETY: the owner holds a reference on the root.
        unsafe { root.as_ref() }
            .refs
            .fetch_add(1, Ordering::Relaxed);
        self.more.push(chunk);
        id
    }

    #[inline]
    fn header(&self, chunk: usize) -> &Header {
        let ptr = if chunk == 0 {
            self.root.expect("no chunk yet")
        } else {
            self.more[chunk - 1]
        };
        // SAFETY: the owner holds a reference on each of its chunks.
        unsafe { ptr.as_ref() }
    }

    /// Number of chunks.
    pub(crate) fn chunk_count(&self) -> usize {
        self.root.map_or(0, |_| 1 + self.more.len())
    }

    /// Capacity of a chunk.
    #[inline]
    pub(crate) fn capacity(&self, chunk: usize) -> usize {
        self.header(chunk).cap as usize
    }

    /// A chunk's elements (each an [`Entry`], then, at an offset the owner
    /// chose in its element layout, whatever the owner keeps for that
    /// child), resolved once for repeated access.
    #[inline]
    pub(crate) fn elements(&self, chunk: usize) -> Elements<'_> {
        let h = self.header(chunk);
        Elements {
            base: h.elements,
            stride: h.stride,
            cap: h.cap as usize,
            reuse: h.count_clones,
            _set: PhantomData,
        }
    }

    /// Marks the first `count` children of a chunk nobody else can reach yet
    /// as ready, without waking anybody.
    pub(crate) fn mark_first(&self, chunk: usize, count: usize) {
        let h = self.header(chunk);
        let mut count = count.min(h.cap as usize);
        if count == 0 {
            return;
        }
        if h.levels == 1 {
            // One word (up to 64 children): its low `count` bits.
            h.word(0, 0)
                .store(u64::MAX >> (BITS - count), Ordering::Relaxed);
            if h.chunk != 0 {
                h.root().chunks.fetch_or(1 << h.chunk, Ordering::AcqRel);
            }
            return;
        }
        for level in 0..h.levels as usize {
            let full = count / BITS;
            for w in 0..full {
                h.word(level, w).store(u64::MAX, Ordering::Relaxed);
            }
            if count % BITS != 0 {
                h.word(level, full)
                    .store((1u64 << (count % BITS)) - 1, Ordering::Relaxed);
            }
            count = count.div_ceil(BITS);
        }
        if h.chunk != 0 {
            h.root().chunks.fetch_or(1 << h.chunk, Ordering::AcqRel);
        }
    }

    /// Registers the waker to wake when any child is woken (`&mut`: the
    /// owner only, never concurrently with itself).
    #[inline]
    pub(crate) fn register(&mut self, waker: &Waker) {
        if self.root.is_some() {
            // SAFETY: `&mut self` makes this the only registration or take
            // in progress on this parent waker.
            unsafe { self.header(0).parent.register(waker) };
        }
    }

    /// Takes the root word: the chunks with possibly woken children. Call
    /// it after [`ReadySet::register`].
    ///
    /// A zero read needs no swap: a waker that set a bit before our
    /// registration published it through the parent waker's state (which the
    /// registration and the wake both modify), so the load sees it; a waker
    /// that sets one later wakes the registered waker.
    #[inline]
    pub(crate) fn take_chunks(&self) -> u64 {
        let Some(_) = self.root else { return 0 };
        let root = self.header(0);
        // Chunk 0 has no bit in `chunks`: its top word plays that part.
        let top = root.word(root.levels as usize - 1, 0);
        let first = u64::from(top.load(Ordering::Acquire) != 0);
        let chunks = &root.chunks;
        if chunks.load(Ordering::Acquire) == 0 {
            return first;
        }
        chunks.swap(0, Ordering::AcqRel) | first
    }

    /// Whether the set is one word (one chunk of one level, fewer than 64
    /// children): its passes go through [`ReadySet::open`] and
    /// [`ReadySet::close`] instead of [`ReadySet::register`] and
    /// [`ReadySet::take_chunks`].
    #[inline]
    pub(crate) fn is_one_word(&self) -> bool {
        self.one_word
    }

    /// The root chunk (the caller knows there is one).
    #[inline]
    fn root_header(&self) -> &Header {
        // SAFETY: the owner holds a reference on its root.
        unsafe { self.root.expect("no chunk yet").as_ref() }
    }

    /// Starts a pass over a one-word set: takes the woken children's bits
    /// (zero if none). Returns them, and whether the pass is *open*: then
    /// the word holds [`POLLING`] until [`ReadySet::close`], so that no wake
    /// during the pass finds it zero and wakes the parent.
    ///
    /// The parent's waker is registered lazily, as the tuple's is: only a
    /// waker that escaped a child's poll (a clone, which holds a chunk
    /// reference: `refs > 1`) can wake a child between the owner's polls.
    /// While none did, nobody but the owner touches the word (a thread a
    /// child lends its borrowed waker to is joined before that poll
    /// returns, and a clone is only taken from a waker), so an open pass
    /// starts with a load and a store instead of a swap, and registers
    /// nothing: a child that wakes itself (or a sibling) during the pass
    /// only sets its bit, and the owner wakes its own task at the end
    /// ([`ReadySet::close`] reports it). `refs` is read with acquire, after
    /// the last clone's release (a wake through a clone happens before its
    /// drop).
    ///
    /// Once a waker escaped, the pass is the general one (not open): `waker`
    /// is registered first, then the word taken, and wakes during the pass
    /// that find the word zero wake the parent.
    #[inline]
    pub(crate) fn open(&mut self, waker: &Waker) -> (u64, bool) {
        debug_assert!(self.one_word);
        let root = self.root_header();
        let word = root.word(0, 0);
        if root.refs.load(Ordering::Acquire) > 1 {
            // SAFETY: `&mut self`: the owner's only registration.
            unsafe { root.parent.register(waker) };
            // As `take_chunks`: a zero read needs no swap.
            let bits = match word.load(Ordering::Acquire) {
                0 => 0,
                _ => word.swap(0, Ordering::AcqRel),
            };
            debug_assert_eq!(bits & POLLING, 0, "a pass left open");
            return (bits, false);
        }
        // A waker registered while one escaped, for a task the set has since
        // moved away from: nothing can wake it now, let it go (it would keep
        // that task alive until the set is dropped); see `let_go_stale`.
        // SAFETY: `&mut self`: the owner's only registration.
        if let Some(stale) = unsafe { root.parent.take_stale(waker) } {
            let_go(stale, waker);
        }
        let bits = word.load(Ordering::Acquire);
        debug_assert_eq!(bits & POLLING, 0, "a pass left open");
        if bits == 0 {
            return (0, false);
        }
        word.store(POLLING, Ordering::Relaxed);
        (bits, true)
    }

    /// Lets go of a registered parent waker that would not wake `waker`'s
    /// task (a set with no child running: nothing to wake it for), if no
    /// child's waker lives outside a poll (`refs == 1`: nobody else can
    /// reach the slot, as in [`ReadySet::open`]). Not while one does: a
    /// finished child's waker may be waking, and [`ParentWaker::take`]
    /// would drop its request and overwrite the slot's state, so the
    /// owner's next registration would not be ordered after that wake's
    /// bit in the word (a later wake of a pushed child then finds the word
    /// non-zero and wakes nobody: a loom model found it).
    ///
    /// Its `drop` is user code. If it panics, the panic propagates out of
    /// the poll with `waker` woken first: children woken earlier may still
    /// be in the word with no waker registered to hear of them, and a
    /// caller that catches the panic must poll again to see them.
    #[inline]
    pub(crate) fn let_go_stale(&mut self, waker: &Waker) {
        let Some(root) = self.root else { return };
        // SAFETY: the owner holds a reference on its root.
        let root = unsafe { root.as_ref() };
        if root.refs.load(Ordering::Acquire) > 1 {
            return;
        }
        // SAFETY: `&mut self`: the owner's only registration.
        let stale = unsafe { root.parent.take_stale(waker) };
        if let Some(stale) = stale {
            let_go(stale, waker);
        }
    }

    /// Ends a pass [`ReadySet::open`] started: clears [`POLLING`], after
    /// registering `waker` (if given) when a child's waker escaped during the
    /// pass, while `POLLING` still keeps every wake from finding the word
    /// zero (each wake until the clear is seen by it). Returns whether a
    /// child was woken during the pass (or a chunk added by a push during it
    /// has children to poll): nobody woke the parent for those, the caller
    /// does.
    ///
    /// The registration runs the waker's `clone` (and the old one's `drop`)
    /// with `POLLING` set: that is not a lock (nothing waits on it: a wake
    /// meanwhile only sets its bit), and if that user code panics, `POLLING`
    /// is cleared on the way out.
    #[inline]
    pub(crate) fn close(&mut self, waker: Option<&Waker>) -> bool {
        let root = self.root_header();
        let word = root.word(0, 0);
        let woken = if root.refs.load(Ordering::Acquire) > 1 {
            if let Some(waker) = waker {
                /// Clears `POLLING` if the registration unwinds.
                struct Clear<'a>(&'a AtomicU64);
                impl Drop for Clear<'_> {
                    fn drop(&mut self) {
                        self.0.fetch_and(!POLLING, Ordering::AcqRel);
                    }
                }
                let clear = Clear(word);
                // SAFETY: `&mut self`: the owner's only registration.
                unsafe { root.parent.register(waker) };
                std::mem::forget(clear);
            }
            word.fetch_and(!POLLING, Ordering::AcqRel) & !POLLING
        } else {
            // No waker lives outside the owner: every wake of the pass (on
            // this thread, or on one a child lent its borrowed waker to and
            // joined) is in the word already, and nobody else touches it.
            let woken = word.load(Ordering::Acquire) & !POLLING;
            word.store(woken, Ordering::Relaxed);
            woken
        };
        woken != 0 || (!self.more.is_empty() && root.chunks.load(Ordering::Acquire) != 0)
    }

    /// A chunk's bit tree, resolved once for a walk over it.
    #[inline]
    pub(crate) fn tree(&self, chunk: usize) -> Tree<'_> {
        let h = self.header(chunk);
        let levels = h.levels as usize;
        let total = h.level_start[levels - 1] as usize + 1;
        // SAFETY: `Chunk::alloc` initialised `total` words at `words`; they
        // live as long as the owner's reference on the chunk.
        let words = unsafe { std::slice::from_raw_parts(h.words.as_ptr(), total) };
        Tree {
            words,
            level_start: &h.level_start,
            levels,
        }
    }

    /// Marks a child ready from the owner side, without waking the parent:
    /// the owner is about to poll anyway.
    pub(crate) fn mark_ready(&self, chunk: usize, index: usize) {
        self.header(chunk).set_ready(index, false);
    }

    /// Whether a chunk counts clones per child, so its slots can be reused.
    #[inline]
    pub(crate) fn reuses(&self, chunk: usize) -> bool {
        self.header(chunk).count_clones
    }

    /// Whether no waker of this child exists outside a poll, so its slot can
    /// be reused without a stale wake reaching the next child.
    #[inline]
    pub(crate) fn is_idle(&self, chunk: usize, index: usize) -> bool {
        let h = self.header(chunk);
        assert!(
            h.count_clones,
            "awaitkit: slot reuse in a set that does not count clones"
        );
        h.clones(index).load(Ordering::Acquire) == 0
    }
}

/// One chunk's element array (see [`ReadySet::elements`]), borrowed from the
/// owner's handle: it cannot outlive the owner's reference on the chunk.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Elements<'a> {
    base: NonNull<u8>,
    stride: usize,
    cap: usize,
    reuse: bool,
    _set: PhantomData<&'a ReadySet>,
}

impl<'a> Elements<'a> {
    /// Number of elements.
    #[inline]
    pub(crate) fn cap(self) -> usize {
        self.cap
    }

    /// Whether the chunk reuses slots (counts clones per child).
    #[inline]
    pub(crate) fn reuse(self) -> bool {
        self.reuse
    }

    /// Element `index`.
    ///
    /// # Panics
    ///
    /// If `index` is out of bounds.
    #[inline]
    pub(crate) fn get(self, index: usize) -> Element<'a> {
        assert!(index < self.cap, "awaitkit: slot index out of bounds");
        // SAFETY: in bounds: `Chunk::alloc` laid out `cap` elements.
        Element(unsafe { self.base.add(index * self.stride) }, PhantomData)
    }
}

/// One child's element: its [`Entry`] at offset 0, then the owner's part;
/// borrowed from the owner's handle like [`Elements`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Element<'a>(NonNull<u8>, PhantomData<&'a ReadySet>);

impl<'a> Element<'a> {
    /// The owner's part of the element, `offset` bytes in (the offset the
    /// owner computed for its element layout).
    #[inline]
    pub(crate) fn part(self, offset: usize) -> NonNull<u8> {
        // SAFETY: the owner's element layout has its part at `offset`.
        unsafe { self.0.add(offset) }
    }

    /// The waker to poll this child with, borrowed from the owner's
    /// reference on the chunk (the borrow of the owner's handle ties it to
    /// that reference; clones own a reference of their own).
    #[inline]
    pub(crate) fn waker(self) -> BorrowedWaker<'a> {
        // SAFETY: the vtable functions uphold the `RawWaker` contract: `data`
        // points at the element's entry, kept alive by the owner for `'a`
        // (this borrowed waker is never dropped: `BorrowedWaker` only lends
        // it out by reference) or by a clone's own reference.
        let waker = unsafe { Waker::from_raw(RawWaker::new(self.0.as_ptr().cast(), &VTABLE)) };
        BorrowedWaker(ManuallyDrop::new(waker), PhantomData)
    }
}

/// A child's waker that owns no reference: it lends itself out only by
/// reference, for as long as the owner's handle is borrowed, and is never
/// dropped (cloning it through the reference takes a reference properly).
pub(crate) struct BorrowedWaker<'a>(ManuallyDrop<Waker>, PhantomData<&'a ReadySet>);

impl std::ops::Deref for BorrowedWaker<'_> {
    type Target = Waker;

    #[inline]
    fn deref(&self) -> &Waker {
        &self.0
    }
}

/// One chunk's bit tree (see [`ReadySet::tree`]).
pub(crate) struct Tree<'a> {
    words: &'a [AtomicU64],
    level_start: &'a [u32; MAX_LEVELS],
    /// Number of levels; the top one is a single word.
    pub(crate) levels: usize,
}

impl Tree<'_> {
    /// Takes (swaps to zero) one word.
    #[inline]
    pub(crate) fn take(&self, level: usize, word: usize) -> u64 {
        self.words[self.level_start[level] as usize + word].swap(0, Ordering::AcqRel)
    }
}

impl Drop for ReadySet {
    fn drop(&mut self) {
        let Some(root) = self.root else { return };
        // SAFETY: the owner still holds its reference on the root.
        let root_header = unsafe { root.as_ref() };
        if self.more.is_empty() && root_header.refs.load(Ordering::Acquire) == 1 {
            // The only reference (the usual end of a set whose wakers never
            // escaped, or were all dropped): nobody else can reach the chunk
            // or take a new reference (that takes one), so it is freed
            // without a read-modify-write; the acquire load orders the last
            // waker's release before the free.
            // SAFETY: the owner's reference is the last.
            unsafe { Chunk::destroy(root) };
            return;
        }
        // The parent task's waker is not needed once the owner is gone, even
        // if a child's waker clone lives on somewhere (when the owner holds
        // the only reference, the root is freed right below anyway).
        let parent = if root_header.refs.load(Ordering::Relaxed) > 1 {
            // SAFETY: the owner is dropping its handle (`&mut self`): no
            // registration can run concurrently.
            unsafe { root_header.parent.take() }
        } else {
            None
        };
        for &chunk in &self.more {
            // SAFETY: the owner holds one reference on each chunk.
            unsafe { release(chunk) };
        }
        // SAFETY: as above; the root last (the other chunks hold references
        // on it anyway).
        unsafe { release(root) };
        // Dropped last: user code, which may panic, runs once every
        // reference is released.
        drop_user_waker(parent);
    }
}

/// Drops a parent waker the owner let go (user code); if that panics,
/// wakes `current` before the panic goes on (see
/// [`ReadySet::let_go_stale`]).
#[cold]
#[inline(never)]
fn let_go(stale: Waker, current: &Waker) {
    let mut panics = crate::unwind::Panics::default();
    panics.catch(move || drop(stale));
    if panics.caught() {
        panics.catch(|| current.wake_by_ref());
    }
    panics.resume();
}
