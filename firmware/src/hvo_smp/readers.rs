//! The descriptor readers run on cores 1-3 while core 0 (or two cores) does HVO: the two kinds
//! Linux has, checked against the truth (the folio layout of the pool under test).
//!
//! - PFN walker (compaction's `isolate_migratepages_block()`, `page_idle`, `/proc/kpageflags`):
//!   scans a run of pfns and asks of each descriptor `PageHead()`, `PageTail()` and
//!   `compound_head()`, with ordinary loads.
//! - Speculative reference taker (`folio_try_get()` on a pfn found by a scan, GUP-fast,
//!   `page_cache_get_speculative()`): looks the pfn's folio up, takes a reference on its head
//!   unless the count is zero (`page_ref_add_unless(page, 1, 0)`), checks that the pfn still
//!   belongs to that folio, and puts the reference. A folio under HVO has its count frozen at
//!   zero, so the speculative get fails without writing.
//!
//! Each operation is a read-side section (interrupts masked, [`super::grace::read_lock`]); the
//! quiescent point comes between operations. A reader launched with [`HOLD_LOCK`] also holds a
//! spinlock during each operation, so that fault-wait is exercised with a lock held.

use super::grace;
use crate::arch::cpu;
use crate::memory::VMEMMAP;
use crate::sync::SpinMutex;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use kcore::addr::Pfn;
use kcore::hugetlb::Folio;
use kcore::hugetlb_vmemmap as hv;
use kcore::layout::MAX_CPUS;

/// Folios the readers know (the pool under test).
pub const MAX_FOLIOS: usize = 80;
/// Pfns a walker examines per operation.
pub const WALK_RUN: u64 = 16;
/// Job argument bit: hold [`READER_LOCK`] during each operation.
pub const HOLD_LOCK: u64 = 1;
/// Job argument bit: only speculative gets (no walks), for the freeze test.
pub const GETS_ONLY: u64 = 2;
/// Job argument bit: hold each speculative reference until the head's vmemmap page moves (at
/// most [`HOLD_US`]) before putting it, and publish it (see [`wait_fresh_holder`]), for the
/// freeze test.
pub const HOLD_REF: u64 = 4;
/// How long a [`HOLD_REF`] reader holds each reference at most (it lets go as soon as the
/// head's vmemmap page has moved).
pub const HOLD_US: u64 = 5_000;
/// Give up waiting for a fresh holder after this long (the readers may be gone).
const FRESH_HOLDER_LIMIT_US: u64 = 100_000;

#[allow(clippy::declare_interior_mutable_const)]
const Z64: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const Z8: AtomicU8 = AtomicU8::new(0);
static HEADS: [AtomicU64; MAX_FOLIOS] = [Z64; MAX_FOLIOS];
static ORDERS: [AtomicU8; MAX_FOLIOS] = [Z8; MAX_FOLIOS];
static NR: AtomicUsize = AtomicUsize::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
/// Readers running now.
static RUNNING: AtomicU32 = AtomicU32::new(0);

/// A lock some readers hold while they read.
pub static READER_LOCK: SpinMutex<u64> = SpinMutex::new(0);

/// One core's counts.
#[repr(align(64))]
pub struct ReaderStats {
    /// Descriptors examined by walks (each: head, tail and compound-head asked).
    pub reads: AtomicU64,
    /// Speculative references taken (and put).
    pub gets: AtomicU64,
    /// Speculative gets refused because the count was zero (frozen).
    pub refused: AtomicU64,
    /// Answers that disagree with the truth.
    pub wrong: AtomicU64,
    /// Operations done.
    pub ops: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const RS: ReaderStats = ReaderStats { reads: Z64, gets: Z64, refused: Z64, wrong: Z64, ops: Z64 };
/// Per-core counts.
pub static STATS: [ReaderStats; MAX_CPUS] = [RS; MAX_CPUS];

/// The first wrong answer since [`publish`], for the report: the pfn (0: none), the head the
/// reader found, and what was wrong ([`WRONG_HEAD`], [`WRONG_TAIL`], [`WRONG_COMPOUND`],
/// [`WRONG_GET_LOOKUP`], [`WRONG_GET_RECHECK`] bits).
pub static FIRST_WRONG: [AtomicU64; 3] = [Z64; 3];
/// [`FIRST_WRONG`]: `PageHead()` disagreed.
pub const WRONG_HEAD: u64 = 1;
/// [`FIRST_WRONG`]: `PageTail()` disagreed.
pub const WRONG_TAIL: u64 = 2;
/// [`FIRST_WRONG`]: `compound_head()` disagreed.
pub const WRONG_COMPOUND: u64 = 4;
/// [`FIRST_WRONG`]: a speculative get's lookup found another head.
pub const WRONG_GET_LOOKUP: u64 = 8;
/// [`FIRST_WRONG`]: a speculative get's re-check after the reference failed.
pub const WRONG_GET_RECHECK: u64 = 16;

fn note_wrong(pfn: Pfn, seen: Pfn, what: u64) {
    if FIRST_WRONG[0].compare_exchange(0, pfn.0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
        FIRST_WRONG[1].store(seen.0, Ordering::Relaxed);
        FIRST_WRONG[2].store(what, Ordering::Release);
    }
}

/// Per core, [`HOLD_REF`] readers: references taken so far (counted after each `try_get`).
static ACQUIRED: [AtomicU64; MAX_CPUS] = [Z64; MAX_CPUS];
/// Per core: holding a reference now (set after the count above, cleared before the put).
static HOLDING: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Fresh holders [`wait_fresh_holder`] found, and the times it gave up.
pub static FRESH_HOLDERS: AtomicU64 = AtomicU64::new(0);
/// See [`FRESH_HOLDERS`].
pub static NO_FRESH_HOLDER: AtomicU64 = AtomicU64::new(0);
/// References a [`HOLD_REF`] reader held while the head's vmemmap page moved.
pub static HELD_ACROSS: AtomicU64 = AtomicU64::new(0);

/// The freeze test's handshake, run by the HVO core before each break: waits until some
/// [`HOLD_REF`] reader holds a reference whose `try_get` came after this call began. A reader
/// whose count has moved by two since the call began took its current reference after its
/// previous one was counted, which was after the call began (the count is read first). So the
/// reference was taken after HVO copied the descriptors, and is held across the break that
/// follows (until the page has moved): without the freeze, its put lands on the new copy.
/// Only the break of a folio's first vmemmap page (the one HVO copies) waits; the others, in
/// the same window, would wait for readers stuck on entries already broken.
pub fn wait_fresh_holder(va: kcore::addr::VirtAddr) {
    let n = NR.load(Ordering::Acquire);
    if !HEADS[..n].iter().any(|h| hv::vmemmap_va(Pfn(h.load(Ordering::Relaxed))) == va) {
        return;
    }
    let start: [u64; MAX_CPUS] = core::array::from_fn(|c| ACQUIRED[c].load(Ordering::Acquire));
    let t0 = crate::drivers::timer::ticks();
    let limit = crate::drivers::timer::frequency() / 1_000_000 * FRESH_HOLDER_LIMIT_US;
    loop {
        for c in 0..MAX_CPUS {
            // The count first: a hold seen after it reached `start + 2` is that reference or a later one.
            if ACQUIRED[c].load(Ordering::Acquire) >= start[c] + 2
                && HOLDING[c].load(Ordering::Acquire)
            {
                FRESH_HOLDERS.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if crate::drivers::timer::ticks() - t0 > limit {
            NO_FRESH_HOLDER.fetch_add(1, Ordering::Relaxed);
            return;
        }
        core::hint::spin_loop();
    }
}

/// Sums over the cores: (reads, gets, refused, wrong, ops).
pub fn totals() -> (u64, u64, u64, u64, u64) {
    STATS.iter().fold((0, 0, 0, 0, 0), |t, s| {
        (
            t.0 + s.reads.load(Ordering::Relaxed),
            t.1 + s.gets.load(Ordering::Relaxed),
            t.2 + s.refused.load(Ordering::Relaxed),
            t.3 + s.wrong.load(Ordering::Relaxed),
            t.4 + s.ops.load(Ordering::Relaxed),
        )
    })
}

/// Publishes the truth (the folios readers pick from) and zeroes the counts. Call before
/// launching readers.
pub fn publish<'f>(folios: impl Iterator<Item = &'f Folio>) {
    let mut n = 0;
    for f in folios.take(MAX_FOLIOS) {
        HEADS[n].store(f.head_pfn().0, Ordering::Relaxed);
        ORDERS[n].store(f.order(), Ordering::Relaxed);
        n += 1;
    }
    for s in STATS.iter() {
        for c in [&s.reads, &s.gets, &s.refused, &s.wrong, &s.ops] {
            c.store(0, Ordering::Relaxed);
        }
    }
    FRESH_HOLDERS.store(0, Ordering::Relaxed);
    for w in FIRST_WRONG.iter() {
        w.store(0, Ordering::Relaxed);
    }
    NO_FRESH_HOLDER.store(0, Ordering::Relaxed);
    HELD_ACROSS.store(0, Ordering::Relaxed);
    STOP.store(false, Ordering::Relaxed);
    NR.store(n, Ordering::Release);
}

/// Asks the readers to stop after their current operation.
pub fn stop() {
    STOP.store(true, Ordering::Release);
}

/// Readers running now.
pub fn running() -> u32 {
    RUNNING.load(Ordering::Acquire)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// The reader job (`smp::launch` entry): runs until [`stop`]. `arg`: [`HOLD_LOCK`],
/// [`GETS_ONLY`].
pub fn job(arg: u64) {
    let me = crate::percpu::this_cpu().id;
    RUNNING.fetch_add(1, Ordering::AcqRel);
    let n = NR.load(Ordering::Acquire);
    let mut rng =
        Rng(0x9E37_79B9_7F4A_7C15 ^ ((me as u64 + 1) << 32) ^ crate::drivers::timer::ticks());
    let st = &STATS[me];
    let mut k = 0u64;
    while n != 0 && !STOP.load(Ordering::Acquire) {
        let i = (rng.next() % n as u64) as usize;
        let head = Pfn(HEADS[i].load(Ordering::Relaxed));
        let nr = 1u64 << ORDERS[i].load(Ordering::Relaxed);
        let r = rng.next();
        let daif = cpu::mask_irqs();
        grace::read_lock(me);
        let guard = (arg & HOLD_LOCK != 0).then(|| READER_LOCK.lock());
        if arg & GETS_ONLY != 0 || k % 2 == 1 {
            let hold = (arg & HOLD_REF != 0).then_some(me);
            speculative_get(st, head, Pfn(head.0 + r % nr), hold);
        } else {
            let start = r % (nr - WALK_RUN.min(nr) + 1);
            walk(st, head, head.0 + start, WALK_RUN.min(nr));
        }
        if let Some(mut g) = guard {
            *g += 1;
        }
        grace::read_unlock(me);
        cpu::restore_irqs(daif);
        st.ops.fetch_add(1, Ordering::Relaxed);
        k += 1;
    }
    RUNNING.fetch_sub(1, Ordering::AcqRel);
}

/// PFN walker: `len` pfns from `first`, all in the folio headed by `head`.
fn walk(st: &ReaderStats, head: Pfn, first: u64, len: u64) {
    let mut wrong = 0;
    for p in first..first + len {
        let pfn = Pfn(p);
        let is_head = pfn == head;
        let seen = hv::page_compound_head_pfn(&VMEMMAP, pfn);
        let what = if hv::page_is_head(&VMEMMAP, pfn) != is_head { WRONG_HEAD } else { 0 }
            | if hv::page_is_tail(&VMEMMAP, pfn) == is_head { WRONG_TAIL } else { 0 }
            | if seen != head { WRONG_COMPOUND } else { 0 };
        if what != 0 {
            note_wrong(pfn, seen, what);
            wrong += 1;
        }
    }
    st.reads.fetch_add(len, Ordering::Relaxed);
    if wrong != 0 {
        st.wrong.fetch_add(wrong, Ordering::Relaxed);
    }
}

/// Speculative reference: look `pfn`'s folio up, try_get its head, re-check, put. `hold`: this
/// core holds the reference for [`HOLD_US`] first, published for [`wait_fresh_holder`].
fn speculative_get(st: &ReaderStats, truth: Pfn, pfn: Pfn, hold: Option<usize>) {
    let head = hv::page_compound_head_pfn(&VMEMMAP, pfn);
    if head != truth {
        note_wrong(pfn, head, WRONG_GET_LOOKUP);
        st.wrong.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let page = VMEMMAP.page(head);
    if !page.try_get() {
        st.refused.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // Still the folio we looked up? (Linux: `folio != page_folio(page)` -> put and retry.)
    let again = hv::page_compound_head_pfn(&VMEMMAP, pfn);
    if again != head || !hv::page_is_head(&VMEMMAP, head) {
        note_wrong(pfn, again, WRONG_GET_RECHECK);
        st.wrong.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(me) = hold {
        // Hold until the head's vmemmap page moves (HVO's page-0 remap: the put then lands on
        // the copy) or HOLD_US passes, whichever is first.
        let va = hv::vmemmap_va(head).0;
        let before = cpu::translate_el1(va, false);
        ACQUIRED[me].fetch_add(1, Ordering::AcqRel);
        HOLDING[me].store(true, Ordering::Release);
        let t0 = crate::drivers::timer::ticks();
        let t = crate::drivers::timer::frequency() / 1_000_000 * HOLD_US;
        while crate::drivers::timer::ticks() - t0 < t {
            let now = cpu::translate_el1(va, false);
            if now.is_some() && now != before {
                HELD_ACROSS.fetch_add(1, Ordering::Relaxed);
                break;
            }
            core::hint::spin_loop();
        }
        HOLDING[me].store(false, Ordering::Release);
    }
    page.put();
    st.gets.fetch_add(1, Ordering::Relaxed);
}
