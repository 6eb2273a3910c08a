//! The 64-byte page descriptor: Linux's `struct page`.
//!
//! One [`Page`] describes one 4 KiB frame; descriptor `n` lives at `VMEMMAP_START + 64 * n`
//! (see [`crate::vmemmap`]). Every field is an atomic: other cores may read descriptors while
//! one core changes them (later, for HVO's remapping of the vmemmap), so there are no `&mut Page`
//! anywhere. Loads and stores are `Relaxed` (Linux's `READ_ONCE`/`WRITE_ONCE`); ordering between
//! cores is the business of the locks around the allocator structures.
//!
//! Beyond Linux's flag bits, each descriptor carries a [`PageState`] in the top bits of `flags`:
//! which owner the frame belongs to (free in the buddy allocator, allocated, page table,
//! vmemmap, HugeTLB, kernel image, reserved). Summing the states over all RAM frames gives the
//! page-conservation census (`buddy::conservation`).
//!
//! ## Compound pages and fake heads
//!
//! A compound page (a HugeTLB folio) has a head descriptor with [`PageFlags::HEAD`] and tail
//! descriptors whose `compound_head` is the address of the head descriptor with bit 0 set, as in
//! Linux. [`Page::compound_head`] follows that link.
//!
//! After HVO remaps the tail vmemmap pages of a folio onto its head vmemmap page, the descriptor
//! at the start of each remapped 4 KiB vmemmap page *is* (aliases) the head descriptor, so it
//! reads `PG_head` although it is a tail: a *fake head*. Linux's `compound_head()` therefore
//! calls `page_fixed_fake_head()`, which, when the descriptor is 4 KiB-aligned and reads as a
//! head, looks at the next descriptor: if that one is a tail, the real head is its
//! `compound_head`. [`Page::compound_head`] does exactly that through
//! [`Page::fixed_fake_head`], behind a global switch playing the part of Linux's
//! `hugetlb_optimize_vmemmap_key` static key: the HVO code calls
//! [`set_fake_head_fixup`]`(true)` before it optimizes its first folio. While the switch is off
//! (no folio has been optimized, so no fake heads exist), `compound_head` never reads the next
//! descriptor. [`Page::is_head`] and [`Page::is_tail`] read the raw bits; [`Page::page_head`]
//! and [`Page::page_tail`] are Linux's fake-head-aware `PageHead()`/`PageTail()`.

use crate::addr::{Pfn, PAGE_SIZE};
use core::fmt;
use core::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicU8,
    Ordering::{Acquire, Relaxed, Release},
};

/// Page flag bits (the low bits of [`Page`]'s `flags` word). Names follow Linux.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PageFlags(pub u64);

impl PageFlags {
    /// No flags.
    pub const EMPTY: PageFlags = PageFlags(0);
    /// `PG_head`: the first descriptor of a compound page.
    pub const HEAD: PageFlags = PageFlags(1 << 0);
    /// `PG_reserved`: not managed by the buddy allocator.
    pub const RESERVED: PageFlags = PageFlags(1 << 1);
    /// `PageBuddy`: the first frame of a free block in the buddy allocator (with the block's
    /// order in `order`).
    pub const BUDDY: PageFlags = PageFlags(1 << 2);
    /// `PageHuge`/`PG_hugetlb`: the head of a HugeTLB folio.
    pub const HUGETLB: PageFlags = PageFlags(1 << 3);
    /// `PageTable`: holds translation-table entries.
    pub const TABLE: PageFlags = PageFlags(1 << 4);
    /// `PG_vmemmap_self_hosted`: backs the vmemmap of the memory range it belongs to
    /// (memmap-on-memory for hot-added memory).
    pub const VMEMMAP_SELF_HOSTED: PageFlags = PageFlags(1 << 5);
    /// `HPG_vmemmap_optimized`: the head of a HugeTLB folio whose vmemmap is optimized (HVO).
    pub const VMEMMAP_OPTIMIZED: PageFlags = PageFlags(1 << 6);
    /// Bits that are flags (the rest of the word holds the state).
    pub const MASK: u64 = (1 << STATE_SHIFT) - 1;

    /// Raw bits.
    pub const fn bits(self) -> u64 {
        self.0
    }
    /// All bits of `other` set?
    pub const fn contains(self, other: PageFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// Union.
    pub const fn union(self, other: PageFlags) -> PageFlags {
        PageFlags(self.0 | other.0)
    }
}

impl core::ops::BitOr for PageFlags {
    type Output = PageFlags;
    fn bitor(self, rhs: PageFlags) -> PageFlags {
        PageFlags(self.0 | rhs.0)
    }
}

impl fmt::Debug for PageFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(PageFlags, &str); 7] = [
            (PageFlags::HEAD, "head"),
            (PageFlags::RESERVED, "reserved"),
            (PageFlags::BUDDY, "buddy"),
            (PageFlags::HUGETLB, "hugetlb"),
            (PageFlags::TABLE, "table"),
            (PageFlags::VMEMMAP_SELF_HOSTED, "vmemmap_self_hosted"),
            (PageFlags::VMEMMAP_OPTIMIZED, "vmemmap_optimized"),
        ];
        write!(f, "PageFlags(")?;
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    write!(f, "|")?;
                }
                write!(f, "{name}")?;
                first = false;
            }
        }
        let unknown = self.0 & !NAMES.iter().fold(0, |a, (fl, _)| a | fl.0);
        if unknown != 0 {
            write!(f, "{}{unknown:#x}", if first { "" } else { "|" })?;
        }
        write!(f, ")")
    }
}

const STATE_SHIFT: u32 = 56;
const STATE_MASK: u64 = 0xf << STATE_SHIFT;

/// Who owns a frame. Stored in the top bits of the flags word; used for page conservation.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum PageState {
    /// Never initialised (a zeroed descriptor). No RAM frame should stay in this state.
    Uninit = 0,
    /// Not RAM we manage: firmware areas, holes, held-back memory, device tree, stacks.
    Reserved = 1,
    /// In a buddy free list.
    Free = 2,
    /// Handed out by the buddy allocator.
    Allocated = 3,
    /// A translation table.
    PageTable = 4,
    /// Backs the vmemmap.
    Vmemmap = 5,
    /// Part of a HugeTLB folio.
    HugeTlb = 6,
    /// The firmware image.
    KernelImage = 7,
}

impl PageState {
    /// All states, in discriminant order.
    pub const ALL: [PageState; 8] = [
        PageState::Uninit,
        PageState::Reserved,
        PageState::Free,
        PageState::Allocated,
        PageState::PageTable,
        PageState::Vmemmap,
        PageState::HugeTlb,
        PageState::KernelImage,
    ];

    /// Decodes the 4-bit state field; unknown values read as `Uninit`.
    pub const fn from_bits(b: u8) -> PageState {
        match b {
            1 => PageState::Reserved,
            2 => PageState::Free,
            3 => PageState::Allocated,
            4 => PageState::PageTable,
            5 => PageState::Vmemmap,
            6 => PageState::HugeTlb,
            7 => PageState::KernelImage,
            _ => PageState::Uninit,
        }
    }
}

/// `order` value of a frame that is not the first frame of a buddy block (free or allocated).
pub const ORDER_NONE: u8 = u8::MAX;

/// "No pfn" in the free-list links.
pub const PFN_NONE: u64 = u64::MAX;

/// Bit 1 of `compound_head`: a mask-encoded tail (see [`crate::hvo_tails`]).
const TAIL_MASK_BIT: u64 = 1 << 1;
/// The low bits of a mask-encoded word that are flags, not mask (a descriptor is 64-byte
/// aligned).
const MASK_LOW: u64 = PAGE_DESC_SIZE - 1;

/// Linux's `hugetlb_optimize_vmemmap_key`: may fake heads exist?
static FAKE_HEAD_FIXUP: AtomicBool = AtomicBool::new(false);

/// Turns the fake-head fix-up in [`Page::compound_head`] on or off. The HVO code turns it on
/// before it remaps the vmemmap of its first folio, and may turn it off once no optimized folio
/// remains.
///
/// While it is on, every 4 KiB-aligned descriptor that has [`PageFlags::HEAD`] must be followed
/// by another descriptor (true for every descriptor inside a vmemmap).
pub fn set_fake_head_fixup(enabled: bool) {
    FAKE_HEAD_FIXUP.store(enabled, Relaxed);
}

/// Is the fake-head fix-up on?
pub fn fake_head_fixup_enabled() -> bool {
    FAKE_HEAD_FIXUP.load(Relaxed)
}

/// The page descriptor. Exactly 64 bytes, 64-byte aligned, so 64 of them fill a 4 KiB page
/// (which is what makes HVO's fake heads appear exactly at 4 KiB boundaries).
#[repr(C, align(64))]
pub struct Page {
    /// Flag bits ([`PageFlags`]) in the low bits, [`PageState`] in bits 56..60.
    flags: AtomicU64,
    /// For tails: address of the head descriptor | 1 (seed design), or a mask of the folio's
    /// descriptor span | 2 | 1 (shared tail design). Otherwise 0.
    compound_head: AtomicU64,
    /// Free-list link (pfn, [`PFN_NONE`] for none).
    next: AtomicU64,
    /// Free-list link (pfn, [`PFN_NONE`] for none).
    prev: AtomicU64,
    /// Owner-private word (Linux's `page->private`).
    private: AtomicU64,
    /// Reference count (Linux's `_refcount`).
    refcount: AtomicU32,
    /// Number of user mappings (Linux's `_mapcount + 1`).
    mapcount: AtomicU32,
    /// Buddy/compound order, or [`ORDER_NONE`].
    order: AtomicU8,
    _pad: [u8; 15],
}

const _: () = assert!(core::mem::size_of::<Page>() == 64);
const _: () = assert!(core::mem::align_of::<Page>() == 64);
const _: () = assert!((PAGE_SIZE as usize).is_multiple_of(core::mem::size_of::<Page>()));

/// Size of a descriptor in bytes.
pub const PAGE_DESC_SIZE: u64 = core::mem::size_of::<Page>() as u64;
/// Descriptors per 4 KiB vmemmap page.
pub const DESCS_PER_PAGE: u64 = PAGE_SIZE / PAGE_DESC_SIZE;

impl Default for Page {
    fn default() -> Self {
        Self::new()
    }
}

impl Page {
    /// A zeroed descriptor (state [`PageState::Uninit`]).
    pub const fn new() -> Self {
        Page {
            flags: AtomicU64::new(0),
            compound_head: AtomicU64::new(0),
            next: AtomicU64::new(PFN_NONE),
            prev: AtomicU64::new(PFN_NONE),
            private: AtomicU64::new(0),
            refcount: AtomicU32::new(0),
            mapcount: AtomicU32::new(0),
            order: AtomicU8::new(0),
            _pad: [0; 15],
        }
    }

    /// Resets every field and sets the state: flags empty (plus [`PageFlags::RESERVED`] for
    /// [`PageState::Reserved`]), no compound head, no links, counts 0, order 0.
    pub fn init(&self, state: PageState) {
        let flags = if state == PageState::Reserved { PageFlags::RESERVED.0 } else { 0 };
        self.flags.store(flags | ((state as u64) << STATE_SHIFT), Relaxed);
        self.compound_head.store(0, Relaxed);
        self.next.store(PFN_NONE, Relaxed);
        self.prev.store(PFN_NONE, Relaxed);
        self.private.store(0, Relaxed);
        self.refcount.store(0, Relaxed);
        self.mapcount.store(0, Relaxed);
        self.order.store(0, Relaxed);
    }

    /// The raw flags word (flags and state).
    pub fn raw_flags(&self) -> u64 {
        self.flags.load(Relaxed)
    }

    /// The flag bits (without the state).
    pub fn flags(&self) -> PageFlags {
        PageFlags(self.flags.load(Relaxed) & PageFlags::MASK)
    }

    /// Are all of `f` set?
    pub fn test(&self, f: PageFlags) -> bool {
        self.flags().contains(f)
    }

    /// Sets `f` (atomically, leaving the other bits alone).
    pub fn set_flags(&self, f: PageFlags) {
        self.flags.fetch_or(f.0 & PageFlags::MASK, Relaxed);
    }

    /// Clears `f` (atomically, leaving the other bits alone).
    pub fn clear_flags(&self, f: PageFlags) {
        self.flags.fetch_and(!(f.0 & PageFlags::MASK), Relaxed);
    }

    /// Replaces all flag bits with `f`, keeping the state.
    pub fn replace_flags(&self, f: PageFlags) {
        let _ = self.flags.fetch_update(Relaxed, Relaxed, |old| {
            Some((old & STATE_MASK) | (f.0 & PageFlags::MASK))
        });
    }

    /// Who owns the frame.
    pub fn state(&self) -> PageState {
        PageState::from_bits(((self.flags.load(Relaxed) & STATE_MASK) >> STATE_SHIFT) as u8)
    }

    /// Changes the owner (atomically, leaving the flag bits alone).
    pub fn set_state(&self, s: PageState) {
        let _ = self.flags.fetch_update(Relaxed, Relaxed, |old| {
            Some((old & !STATE_MASK) | ((s as u64) << STATE_SHIFT))
        });
    }

    /// Buddy or compound order ([`ORDER_NONE`] inside a block).
    pub fn order(&self) -> u8 {
        self.order.load(Relaxed)
    }

    /// Sets the order.
    pub fn set_order(&self, order: u8) {
        self.order.store(order, Relaxed);
    }

    /// Raw `PG_head` (a fake head reads `true` too; see [`page_head`](Self::page_head)).
    pub fn is_head(&self) -> bool {
        self.test(PageFlags::HEAD)
    }

    /// Raw tail bit: `compound_head & 1`.
    pub fn is_tail(&self) -> bool {
        self.compound_head.load(Relaxed) & 1 == 1
    }

    /// Linux's `PageHead()`: a head that is not a fake head.
    pub fn page_head(&self) -> bool {
        self.stable(|| self.is_head() && !self.is_fake_head())
    }

    /// Linux's `PageTail()`: a tail, or a fake head.
    pub fn page_tail(&self) -> bool {
        self.stable(|| self.is_tail() || self.is_fake_head())
    }

    /// Runs a lookup that reads several words of this descriptor (and maybe the next one) so
    /// that all of them come from one mapping of its vmemmap page.
    ///
    /// Only a descriptor that starts a 4 KiB vmemmap page reads differently through the two
    /// mappings HVO switches between: through the read-only alias of page 0 it is the head
    /// (`PG_head`, `compound_head` 0), through its own page a tail (`compound_head` = head | 1).
    /// A lookup whose loads straddle the switch (restore: the word through the alias, the flags
    /// through the new page) mixes the two and answers "neither head nor tail", or "head" for a
    /// tail. The `compound_head` word differs between the two mappings, so reading it before and
    /// after the lookup detects a straddle, and the lookup runs again. Linux's `PageTail()` and
    /// `compound_head()` have the same window; its speculative users re-check after taking a
    /// reference, and the 2026 design (no fake heads) removes it. Other descriptors read the
    /// same through both mappings: one pass.
    fn stable<T>(&self, lookup: impl Fn() -> T) -> T {
        let addr = (self as *const Page).expose_provenance() as u64;
        if !addr.is_multiple_of(PAGE_SIZE) || !fake_head_fixup_enabled() {
            return lookup();
        }
        loop {
            let before = self.compound_head.load(Acquire);
            let r = lookup();
            // Acquire fence: the lookup's loads are done before the word is read again (a
            // load-load order the Relaxed loads inside the lookup do not give by themselves).
            core::sync::atomic::fence(Acquire);
            if self.compound_head.load(Relaxed) == before {
                return r;
            }
        }
    }

    /// The raw `compound_head` word.
    pub fn compound_head_raw(&self) -> u64 {
        self.compound_head.load(Relaxed)
    }

    /// Linux's `compound_head()`: the head descriptor of the compound page this descriptor
    /// belongs to; `self` for a head or a non-compound page. Fake heads (HVO) resolve to the
    /// real head when [`set_fake_head_fixup`] is on.
    ///
    /// A mask-encoded tail (shared tail design, [`crate::hvo_tails`]) resolves by masking its
    /// own address, with no fake-head branch: bit 1 of the word says which encoding it is.
    pub fn compound_head(&self) -> &Page {
        self.stable(|| self.compound_head_once())
    }

    /// One pass of [`compound_head`](Self::compound_head) (see [`stable`](Self::stable)).
    fn compound_head_once(&self) -> &Page {
        let head = self.compound_head.load(Relaxed);
        if head & 1 == 1 {
            if head & TAIL_MASK_BIT != 0 {
                let me = self as *const Page;
                // SAFETY: a mask-encoded word is only stored by `set_compound_word` for a tail
                // of a naturally aligned folio whose head descriptor's address is aligned to the
                // folio's descriptor span (`hvo_tails::set_tail_link` checks it), so masking our
                // own address gives the head, in the same memmap allocation as `self` (same
                // provenance). `Page` is all atomics: any bit pattern is valid.
                return unsafe { &*me.map_addr(|a| a & (head as usize) & !(MASK_LOW as usize)) };
            }
            // SAFETY: bit 0 is only ever set by `set_compound_head`, which stores the address of
            // a live descriptor `head` | 1. Descriptors are never freed while the memmap they
            // belong to exists (which outlives `self`), and `Page` is all atomics, so any bit
            // pattern is a valid `Page` and shared references are fine.
            return unsafe { &*core::ptr::with_exposed_provenance::<Page>((head - 1) as usize) };
        }
        self.fixed_fake_head()
    }

    /// Stores a raw `compound_head` word: a mask-encoded tail (`mask | 2 | 1`, see
    /// [`crate::hvo_tails::tail_mask_word`]). The caller guarantees the mask gives the head.
    pub fn set_compound_word(&self, word: u64) {
        self.compound_head.store(word, Relaxed);
    }

    /// Makes this descriptor a tail of `head`.
    pub fn set_compound_head(&self, head: &Page) {
        let addr = (head as *const Page).expose_provenance() as u64;
        self.compound_head.store(addr | 1, Relaxed);
    }

    /// Makes this descriptor not a tail.
    pub fn clear_compound_head(&self) {
        self.compound_head.store(0, Relaxed);
    }

    /// Linux's `page_fixed_fake_head()`: the real head if this descriptor is a fake head and the
    /// fix-up is on ([`set_fake_head_fixup`]), else `self`.
    pub fn fixed_fake_head(&self) -> &Page {
        if !fake_head_fixup_enabled() {
            return self;
        }
        self.resolve_fake_head()
    }

    /// The fake-head check without looking at the global switch. Only call this on descriptors
    /// inside a vmemmap (it may read the next descriptor).
    pub fn resolve_fake_head(&self) -> &Page {
        let addr = (self as *const Page).expose_provenance();
        if (addr as u64).is_multiple_of(PAGE_SIZE) && self.is_head() {
            // SAFETY: `self` starts a 4 KiB page of descriptors and reads as a compound head.
            // Descriptors are mapped in whole 4 KiB pages (the vmemmap, or a host arena made of
            // whole pages), so `self + 1` is in the same mapped page; all-atomic `Page` has no
            // invalid bit patterns. (Linux: "we can safely access the field of the @page[1]
            // with PG_head because the @page is a compound page composed with at least two
            // contiguous pages".)
            let next =
                unsafe { &*core::ptr::with_exposed_provenance::<Page>(addr + size_of::<Page>()) };
            let head = next.compound_head.load(Relaxed);
            if head & 1 == 1 {
                // SAFETY: as in `compound_head`: bit 0 marks an address stored by
                // `set_compound_head` from a live descriptor.
                return unsafe {
                    &*core::ptr::with_exposed_provenance::<Page>((head - 1) as usize)
                };
            }
        }
        self
    }

    /// Linux's `page_is_fake_head()`.
    pub fn is_fake_head(&self) -> bool {
        !core::ptr::eq(self.fixed_fake_head(), self)
    }

    /// The reference count.
    pub fn refcount(&self) -> u32 {
        self.refcount.load(Relaxed)
    }

    /// Sets the reference count.
    pub fn set_refcount(&self, n: u32) {
        self.refcount.store(n, Relaxed);
    }

    /// Increments the reference count; returns the new value.
    pub fn get_ref(&self) -> u32 {
        self.refcount.fetch_add(1, Relaxed).wrapping_add(1)
    }

    /// Decrements the reference count (saturating at 0); returns the new value.
    pub fn put_ref(&self) -> u32 {
        match self.refcount.fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1))) {
            Ok(old) | Err(old) => old.saturating_sub(1),
        }
    }

    /// Linux's `page_ref_add_unless(page, 1, 0)` (`folio_try_get()`): takes a reference unless
    /// the count is zero (a frozen or free page). Returns whether it took one. A load-exclusive /
    /// store-exclusive loop on ARMv8.0; acquire on success, so that what the caller reads next
    /// (is it still the folio it looked up?) is not read before the reference is held.
    pub fn try_get(&self) -> bool {
        self.refcount
            .fetch_update(Acquire, Relaxed, |n| if n == 0 { None } else { n.checked_add(1) })
            .is_ok()
    }

    /// Linux's `put_page()` on the count: drops one reference (release, so the holder's
    /// accesses happen before it lets go); returns the new value. Dropping a reference that is
    /// not held leaves the count at 0 (it never wraps) and returns 0.
    pub fn put(&self) -> u32 {
        match self.refcount.fetch_update(Release, Relaxed, |n| n.checked_sub(1)) {
            Ok(old) => old - 1,
            Err(_) => 0,
        }
    }

    /// Linux's `page_ref_freeze()`: the count goes from `expected` to 0 in one atomic step, or
    /// not at all (returns `false`). While it is 0, [`try_get`](Self::try_get) fails, so
    /// speculative reference takers never write the page (HVO requires its folios frozen).
    pub fn ref_freeze(&self, expected: u32) -> bool {
        self.refcount.compare_exchange(expected, 0, Acquire, Relaxed).is_ok()
    }

    /// Linux's `page_ref_unfreeze()`: sets the count of a frozen page to `n` (release: what the
    /// freezer wrote is visible to whoever takes a reference next).
    pub fn ref_unfreeze(&self, n: u32) {
        self.refcount.store(n, Release);
    }

    /// Number of user mappings.
    pub fn mapcount(&self) -> u32 {
        self.mapcount.load(Relaxed)
    }

    /// Sets the number of user mappings.
    pub fn set_mapcount(&self, n: u32) {
        self.mapcount.store(n, Relaxed);
    }

    /// Owner-private word.
    pub fn private(&self) -> u64 {
        self.private.load(Relaxed)
    }

    /// Sets the owner-private word.
    pub fn set_private(&self, v: u64) {
        self.private.store(v, Relaxed);
    }

    /// Next free-list link.
    pub fn next(&self) -> Option<Pfn> {
        match self.next.load(Relaxed) {
            PFN_NONE => None,
            p => Some(Pfn(p)),
        }
    }

    /// Previous free-list link.
    pub fn prev(&self) -> Option<Pfn> {
        match self.prev.load(Relaxed) {
            PFN_NONE => None,
            p => Some(Pfn(p)),
        }
    }

    /// Sets the next free-list link.
    pub fn set_next(&self, p: Option<Pfn>) {
        self.next.store(p.map_or(PFN_NONE, |p| p.0), Relaxed);
    }

    /// Sets the previous free-list link.
    pub fn set_prev(&self, p: Option<Pfn>) {
        self.prev.store(p.map_or(PFN_NONE, |p| p.0), Relaxed);
    }

    /// A plain copy of the fields, for logging.
    pub fn snapshot(&self) -> PageSnapshot {
        PageSnapshot {
            flags: self.flags(),
            state: self.state(),
            compound_head: self.compound_head_raw(),
            order: self.order(),
            refcount: self.refcount(),
            mapcount: self.mapcount(),
            private: self.private(),
        }
    }
}

impl fmt::Debug for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.snapshot().fmt(f)
    }
}

/// A copy of a descriptor's fields (see [`Page::snapshot`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PageSnapshot {
    /// Flag bits.
    pub flags: PageFlags,
    /// Owner.
    pub state: PageState,
    /// Raw `compound_head`.
    pub compound_head: u64,
    /// Order.
    pub order: u8,
    /// Reference count.
    pub refcount: u32,
    /// Map count.
    pub mapcount: u32,
    /// Private word.
    pub private: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two 4 KiB pages of descriptors: [0] a head's page 0, [1] the folio's page 1.
    #[repr(C, align(4096))]
    struct TwoPages([Page; 128]);

    /// A lookup whose loads straddle HVO's restore of page 1 (the alias of page 0 replaced by
    /// the page's own frame between two loads) answers wrongly when run once, and rightly
    /// through `stable`. The switch is emulated by rewriting the descriptor the way the two
    /// mappings differ, `compound_head` word first (the word `stable` watches).
    #[test]
    fn torn_lookup_across_a_remap_is_retried() {
        set_fake_head_fixup(true);
        let mem = Box::new(TwoPages(core::array::from_fn(|_| Page::new())));
        let head = &mem.0[0];
        head.set_flags(PageFlags::HEAD);
        for t in &mem.0[1..] {
            t.set_compound_head(head);
        }
        let d = &mem.0[64]; // pfn 64: starts page 1
        let as_alias = || {
            // Through the alias of page 0: it reads as the head (a fake head).
            d.clear_compound_head();
            d.set_flags(PageFlags::HEAD);
        };
        let as_own = || {
            // Through its own restored page: a tail.
            d.set_compound_head(head);
            d.clear_flags(PageFlags::HEAD);
        };
        // Both mappings alone: a tail whose head is `head`.
        as_alias();
        assert!(d.page_tail() && !d.page_head() && core::ptr::eq(d.compound_head(), head));
        // One pass straddling the switch (word through the alias, flags through the new page):
        // neither head nor tail. This is the negative control: what `stable` must catch.
        let torn_once = || {
            let tail_bit = d.is_tail();
            as_own();
            tail_bit || d.is_fake_head()
        };
        as_alias();
        assert!(!torn_once(), "the straddling pass answers wrongly on its own");
        // Through `stable`: the word changed under the lookup, which runs again.
        as_alias();
        let first = core::cell::Cell::new(true);
        let r = d.stable(|| {
            let tail_bit = d.is_tail();
            if first.replace(false) {
                as_own();
            }
            tail_bit || d.is_fake_head()
        });
        assert!(r, "stable retried the straddling pass");
        assert!(!first.get());
    }

    #[test]
    fn layout() {
        assert_eq!(size_of::<Page>(), 64);
        assert_eq!(align_of::<Page>(), 64);
        assert_eq!(DESCS_PER_PAGE, 64);
    }

    #[test]
    fn reference_primitives() {
        let p = Page::new();
        assert!(!p.try_get(), "no reference from zero");
        assert_eq!(p.refcount(), 0);
        p.ref_unfreeze(1);
        assert!(p.try_get());
        assert_eq!(p.refcount(), 2);
        assert!(!p.ref_freeze(1), "freeze needs the exact count");
        assert_eq!(p.put(), 1);
        assert!(p.ref_freeze(1));
        assert!(!p.try_get(), "a frozen page gives no reference");
        assert_eq!(p.put(), 0, "never wraps");
        assert_eq!(p.refcount(), 0);
        p.ref_unfreeze(3);
        assert_eq!(p.refcount(), 3);
    }

    #[test]
    fn flags_and_state_are_independent() {
        let p = Page::new();
        assert_eq!(p.state(), PageState::Uninit);
        p.set_flags(PageFlags::HEAD | PageFlags::HUGETLB);
        p.set_state(PageState::HugeTlb);
        assert!(p.is_head() && p.test(PageFlags::HUGETLB));
        assert_eq!(p.state(), PageState::HugeTlb);
        p.clear_flags(PageFlags::HEAD);
        assert!(!p.is_head());
        assert_eq!(p.state(), PageState::HugeTlb);
        p.replace_flags(PageFlags::TABLE);
        assert_eq!(p.flags(), PageFlags::TABLE);
        assert_eq!(p.state(), PageState::HugeTlb);
        for s in PageState::ALL {
            p.set_state(s);
            assert_eq!(p.state(), s);
            assert_eq!(PageState::from_bits(s as u8), s);
        }
        p.init(PageState::Reserved);
        assert_eq!(p.flags(), PageFlags::RESERVED);
        assert_eq!(p.state(), PageState::Reserved);
        assert_eq!(format!("{:?}", PageFlags::HEAD | PageFlags::BUDDY), "PageFlags(head|buddy)");
    }

    #[test]
    fn compound_head_links() {
        let pages: Vec<Page> = (0..4).map(|_| Page::new()).collect();
        pages[0].set_flags(PageFlags::HEAD);
        for t in &pages[1..] {
            t.set_compound_head(&pages[0]);
        }
        assert!(pages[0].is_head() && !pages[0].is_tail());
        for t in &pages[1..] {
            assert!(t.is_tail() && !t.is_head());
            assert!(core::ptr::eq(t.compound_head(), &pages[0]));
        }
        assert!(core::ptr::eq(pages[0].compound_head(), &pages[0]));
        pages[1].clear_compound_head();
        assert!(core::ptr::eq(pages[1].compound_head(), &pages[1]));
    }

    #[test]
    fn counters_and_links() {
        let p = Page::new();
        assert_eq!(p.get_ref(), 1);
        assert_eq!(p.get_ref(), 2);
        assert_eq!(p.put_ref(), 1);
        assert_eq!(p.put_ref(), 0);
        assert_eq!(p.put_ref(), 0);
        assert_eq!(p.next(), None);
        p.set_next(Some(Pfn(7)));
        p.set_prev(Some(Pfn(3)));
        assert_eq!((p.next(), p.prev()), (Some(Pfn(7)), Some(Pfn(3))));
        p.set_order(9);
        assert_eq!(p.order(), 9);
    }
}
