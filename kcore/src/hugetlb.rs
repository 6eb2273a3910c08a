//! The HugeTLB pool (Linux's `mm/hugetlb.c`, one node, no reservations or surplus pages).
//!
//! Two huge page sizes, as arm64 with 4 KiB pages offers at the PMD and PUD levels: 2 MiB
//! (order 9) and 1 GiB (order 18). Both come from the buddy allocator (whose `MAX_ORDER` is 18
//! for this reason).
//!
//! A [`Folio`] is a handle on one huge page: its head pfn and order. It is obtained only from
//! the pool ([`HugetlbPool::alloc_pool_folio`], [`HugetlbPool::dequeue`]) and is not `Clone`, so
//! there is one owner per folio. The descriptors carry the compound-page layout Linux uses
//! (`prep_compound_gigantic_folio`): the head has `PG_head`, `PG_hugetlb`, the order and state
//! `HugeTlb`; every tail has `compound_head = &head | 1` and state `HugeTlb`.
//! [`check_folio`] verifies exactly that, tolerating the fake heads HVO creates.
//!
//! Pool life cycle, per size:
//!
//! - [`HugetlbPool::alloc_pool_folio`]: buddy → prepared folio, counted in `nr_hugepages`
//!   (Linux: `alloc_pool_huge_folio` + `prep_new_hugetlb_folio`). The HVO hook
//!   [`VmemmapHooks::after_prep`] runs here (Linux optimizes the vmemmap at this point).
//! - [`HugetlbPool::enqueue`] / [`HugetlbPool::dequeue`]: the pool's free list (`free_hugepages`),
//!   linked through the heads' `next`/`prev`.
//! - [`HugetlbPool::free_pool_folio`]: folio → buddy (Linux: `update_and_free_hugetlb_folio`,
//!   "dissolve"). [`VmemmapHooks::before_dissolve`] runs *first*: after HVO the tail descriptors
//!   are remapped read-only, so the vmemmap must be restored before the tails are rewritten. If
//!   the hook fails, the folio goes back on the pool's free list, as in Linux.

use crate::addr::{Pfn, PhysAddr, PAGE_SHIFT};
use crate::buddy::{Buddy, BuddyError};
use crate::memblock::MemRegion;
use crate::page::{Page, PageFlags, PageState, ORDER_NONE};
use crate::vmemmap::Vmemmap;
use core::fmt;

/// A supported huge page size.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HugePageSize {
    /// 2 MiB, a level-2 block (order 9).
    Size2M,
    /// 1 GiB, a level-1 block (order 18).
    Size1G,
}

impl HugePageSize {
    /// Both sizes, smallest first.
    pub const ALL: [HugePageSize; 2] = [HugePageSize::Size2M, HugePageSize::Size1G];

    /// Buddy order.
    pub const fn order(self) -> u8 {
        match self {
            HugePageSize::Size2M => 9,
            HugePageSize::Size1G => 18,
        }
    }
    /// Size in bytes.
    pub const fn bytes(self) -> u64 {
        1 << (self.order() as u32 + PAGE_SHIFT)
    }
    /// Frames per huge page.
    pub const fn nr_pages(self) -> u64 {
        1 << self.order()
    }
    /// The size of `bytes`, if supported.
    pub const fn from_bytes(bytes: u64) -> Option<Self> {
        match bytes {
            0x20_0000 => Some(HugePageSize::Size2M),
            0x4000_0000 => Some(HugePageSize::Size1G),
            _ => None,
        }
    }
    /// The size of a folio of `order`, if supported.
    pub const fn from_order(order: u8) -> Option<Self> {
        match order {
            9 => Some(HugePageSize::Size2M),
            18 => Some(HugePageSize::Size1G),
            _ => None,
        }
    }
    /// Index into per-size arrays (0 for 2 MiB, 1 for 1 GiB).
    pub const fn index(self) -> usize {
        match self {
            HugePageSize::Size2M => 0,
            HugePageSize::Size1G => 1,
        }
    }
    /// The size a folio of this size demotes to (Linux's `demote_size`): 1 GiB to 2 MiB; none
    /// below 2 MiB.
    pub const fn demote_size(self) -> Option<HugePageSize> {
        match self {
            HugePageSize::Size1G => Some(HugePageSize::Size2M),
            HugePageSize::Size2M => None,
        }
    }
    /// Linux's name: `"2M"` / `"1G"`.
    pub const fn name(self) -> &'static str {
        match self {
            HugePageSize::Size2M => "2M",
            HugePageSize::Size1G => "1G",
        }
    }
}

/// "Allocate `count` huge pages of `size` at boot" (from `hugepagesz=`/`hugepages=`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct HugepageRequest {
    /// Huge page size.
    pub size: HugePageSize,
    /// Number of huge pages.
    pub count: u64,
}

/// A HugeTLB folio: head pfn and order. One owner; obtained only from the pool.
#[derive(PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Folio {
    head: Pfn,
    order: u8,
}

impl fmt::Debug for Folio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Folio({}, order {})", self.head, self.order)
    }
}

impl Folio {
    /// The head frame.
    pub fn head_pfn(&self) -> Pfn {
        self.head
    }
    /// The order (9 or 18).
    pub fn order(&self) -> u8 {
        self.order
    }
    /// The size.
    pub fn size(&self) -> HugePageSize {
        match HugePageSize::from_order(self.order) {
            Some(s) => s,
            None => unreachable!("folios are only made with supported orders"),
        }
    }
    /// Frames in the folio.
    pub fn nr_pages(&self) -> u64 {
        1 << self.order
    }
    /// `head..head + nr_pages`.
    pub fn pfn_range(&self) -> core::ops::Range<Pfn> {
        self.head..Pfn(self.head.0 + self.nr_pages())
    }
    /// Physical address of the first byte.
    pub fn phys_addr(&self) -> PhysAddr {
        self.head.addr()
    }
    /// The physical range.
    pub fn region(&self) -> MemRegion {
        MemRegion::new(self.head.addr().0, self.nr_pages() << PAGE_SHIFT)
    }
    /// Does the folio contain `pfn`?
    pub fn contains(&self, pfn: Pfn) -> bool {
        pfn.0 >= self.head.0 && pfn.0 < self.head.0 + self.nr_pages()
    }
    /// The head descriptor.
    pub fn head<'v>(&self, vm: &'v Vmemmap) -> &'v Page {
        vm.page(self.head)
    }
    /// Descriptor `n` (`0` is the head).
    ///
    /// # Panics
    ///
    /// If `n >= nr_pages()`.
    pub fn page<'v>(&self, vm: &'v Vmemmap, n: u64) -> &'v Page {
        assert!(n < self.nr_pages(), "page {n} outside {self:?}");
        vm.page(Pfn(self.head.0 + n))
    }
    /// Gives up the handle, e.g. to store it in a page table; see [`from_raw`](Self::from_raw).
    pub fn into_raw(self) -> (Pfn, u8) {
        (self.head, self.order)
    }
    /// Rebuilds a handle given up with [`into_raw`](Self::into_raw).
    ///
    /// # Safety
    ///
    /// `(head, order)` must come from `into_raw`, and at most one handle may be rebuilt per
    /// handle given up. (Nothing memory-unsafe follows from a duplicate; the pool's accounting
    /// and the descriptors would be corrupted.)
    pub unsafe fn from_raw(head: Pfn, order: u8) -> Self {
        Folio { head, order }
    }
}

/// A folio demoted into `2^(from - to)` folios of order `to` (see `crate::hugetlb_demote`):
/// the handle of the whole is gone, the parts' handles are made by [`Demoted::parts`] and go to
/// the pool with [`HugetlbPool::accept_demoted`].
#[derive(PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Demoted {
    head: Pfn,
    from: u8,
    to: u8,
}

impl Demoted {
    /// The demoted `folio`'s parts of order `to` (their descriptors already laid out).
    pub(crate) fn new(folio: Folio, to: u8) -> Self {
        Demoted { head: folio.head, from: folio.order, to }
    }
    /// Head of the first part (the old folio's head).
    pub fn head_pfn(&self) -> Pfn {
        self.head
    }
    /// Number of parts.
    pub fn count(&self) -> u64 {
        1 << (self.from - self.to)
    }
    /// The size of the parts.
    pub fn part_size(&self) -> Option<HugePageSize> {
        HugePageSize::from_order(self.to)
    }
    /// The size of the folio demoted.
    pub fn from_size(&self) -> Option<HugePageSize> {
        HugePageSize::from_order(self.from)
    }
    /// A handle on part `k` (`k < count()`).
    pub(crate) fn part(&self, k: u64) -> Folio {
        Folio { head: Pfn(self.head.0 + (k << self.to)), order: self.to }
    }
    /// Handles on the parts, in address order.
    pub fn parts(&self) -> impl Iterator<Item = Folio> + '_ {
        (0..self.count()).map(|k| Folio { head: Pfn(self.head.0 + (k << self.to)), order: self.to })
    }
}

/// A broken folio invariant.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FolioError {
    /// A frame without a mapped descriptor.
    NoDescriptor {
        /// The frame.
        pfn: Pfn,
    },
    /// The head descriptor lacks `PG_head` or `PG_hugetlb`, or is a tail.
    BadHead {
        /// The head frame.
        pfn: Pfn,
        /// Its flags.
        flags: PageFlags,
    },
    /// The head records another order.
    BadOrder {
        /// The folio's order.
        expected: u8,
        /// The descriptor's.
        found: u8,
    },
    /// A frame that is not in state `HugeTlb`.
    BadState {
        /// Index in the folio (0 = head).
        index: u64,
        /// Its state.
        state: PageState,
    },
    /// A tail whose `compound_head` does not point at the head (raw value given).
    BadTail {
        /// Index in the folio.
        index: u64,
        /// Raw `compound_head`.
        compound_head: u64,
    },
    /// A tail that reads as a head and does not resolve to the real head as a fake head.
    BadFakeHead {
        /// Index in the folio.
        index: u64,
    },
}

/// Errors from the pool.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HugetlbError {
    /// The buddy allocator refused.
    Buddy(BuddyError),
    /// A folio's descriptors are inconsistent.
    Folio(FolioError),
    /// The pool's free list disagrees with its counters.
    FreeListCorrupt {
        /// The size.
        size: HugePageSize,
    },
    /// `alloc_pool_folio_at` with a pfn not aligned to the size.
    Misaligned {
        /// The pfn.
        pfn: Pfn,
        /// The size.
        size: HugePageSize,
    },
}

/// Errors from [`HugetlbPool::free_pool_folio`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DissolveError<E> {
    /// [`VmemmapHooks::before_dissolve`] failed; the folio is back on the pool's free list.
    Restore(E),
    /// The folio's descriptors were inconsistent; the folio is back on the pool's free list.
    Folio(FolioError),
    /// The buddy allocator refused the frames (a bug: they are leaked as `Allocated`).
    Buddy(BuddyError),
    /// The folio's vmemmap is still optimized after [`VmemmapHooks::before_dissolve`] (no hook
    /// restored it): its tail descriptors are read-only aliases, so they cannot be rewritten.
    /// The folio is back on the pool's free list.
    StillOptimized {
        /// Head of the folio.
        folio: Pfn,
    },
}

/// What the HVO code does around a folio's life. Both methods default to doing nothing.
pub trait VmemmapHooks {
    /// Error of [`before_dissolve`](Self::before_dissolve).
    type Error;
    /// Called after a folio is prepared (Linux optimizes its vmemmap here). Best effort:
    /// failures are the hook's business.
    fn after_prep(&mut self, folio: &Folio, vm: &Vmemmap) {
        let _ = (folio, vm);
    }
    /// Called before a folio's descriptors are rewritten to give it back to the buddy
    /// allocator: restore its vmemmap here.
    fn before_dissolve(&mut self, folio: &Folio, vm: &Vmemmap) -> Result<(), Self::Error> {
        let _ = (folio, vm);
        Ok(())
    }
}

/// No HVO: hooks that do nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl VmemmapHooks for NoHooks {
    type Error = core::convert::Infallible;
}

/// Per-size counters (Linux's `/sys/kernel/mm/hugepages/hugepages-*/`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct HstateCounts {
    /// Folios in the pool (free or in use).
    pub nr_hugepages: u64,
    /// Folios on the pool's free list.
    pub free_hugepages: u64,
}

/// Boot preallocation outcome for one size.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SizeReport {
    /// The size.
    pub size: HugePageSize,
    /// Asked for on the command line.
    pub requested: u64,
    /// Actually allocated.
    pub allocated: u64,
}

/// Boot preallocation outcome (see [`HugetlbPool::preallocate`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PreallocReport {
    /// Per size, indexed by [`HugePageSize::index`].
    pub sizes: [SizeReport; 2],
}

impl PreallocReport {
    /// The report for `size`.
    pub fn get(&self, size: HugePageSize) -> SizeReport {
        self.sizes[size.index()]
    }
    /// Did every request succeed in full?
    pub fn is_complete(&self) -> bool {
        self.sizes.iter().all(|s| s.allocated == s.requested)
    }
}

#[derive(Clone, Copy, Debug)]
struct Hstate {
    nr: u64,
    free: u64,
    free_head: Option<Pfn>,
}

/// The HugeTLB pool: one hstate per size.
#[derive(Clone, Debug)]
pub struct HugetlbPool {
    hstates: [Hstate; 2],
}

impl Default for HugetlbPool {
    fn default() -> Self {
        Self::new()
    }
}

/// Lays out a compound page over `[head, head + 2^order)` (Linux's
/// `prep_compound_gigantic_folio` + `folio_set_hugetlb`): head gets `PG_head | PG_hugetlb`, the
/// order, refcount 1; each tail gets `compound_head = &head | 1`, refcount 0; all are `HugeTlb`.
pub fn prep_compound(vm: &Vmemmap, head: Pfn, order: u8) {
    let h = vm.page(head);
    for i in 1..(1u64 << order) {
        let t = vm.page(Pfn(head.0 + i));
        t.init(PageState::HugeTlb);
        t.set_order(ORDER_NONE);
        crate::hvo_tails::set_tail_link(t, h, order);
    }
    h.init(PageState::HugeTlb);
    h.set_flags(PageFlags::HEAD | PageFlags::HUGETLB);
    h.set_order(order);
    h.set_refcount(1);
}

/// Checks the folio invariants: the head is a real head with `PG_hugetlb`, the folio's order
/// and state `HugeTlb`; every tail is `HugeTlb` and leads back to the head through
/// `compound_head`. A tail that reads as a head (at a 4 KiB boundary of the vmemmap, after HVO)
/// is accepted if it resolves to the real head as a fake head.
pub fn check_folio(folio: &Folio, vm: &Vmemmap) -> Result<(), FolioError> {
    let head = vm.get(folio.head).ok_or(FolioError::NoDescriptor { pfn: folio.head })?;
    let flags = head.flags();
    if !flags.contains(PageFlags::HEAD | PageFlags::HUGETLB) || head.is_tail() {
        return Err(FolioError::BadHead { pfn: folio.head, flags });
    }
    if head.order() != folio.order {
        return Err(FolioError::BadOrder { expected: folio.order, found: head.order() });
    }
    if head.state() != PageState::HugeTlb {
        return Err(FolioError::BadState { index: 0, state: head.state() });
    }
    for i in 1..folio.nr_pages() {
        let pfn = Pfn(folio.head.0 + i);
        let t = vm.get(pfn).ok_or(FolioError::NoDescriptor { pfn })?;
        if t.is_head() {
            if !core::ptr::eq(t.resolve_fake_head(), head) {
                return Err(FolioError::BadFakeHead { index: i });
            }
        } else if !t.is_tail() || !core::ptr::eq(t.compound_head(), head) {
            return Err(FolioError::BadTail { index: i, compound_head: t.compound_head_raw() });
        }
        if t.state() != PageState::HugeTlb {
            return Err(FolioError::BadState { index: i, state: t.state() });
        }
    }
    Ok(())
}

impl HugetlbPool {
    /// An empty pool.
    pub const fn new() -> Self {
        const EMPTY: Hstate = Hstate { nr: 0, free: 0, free_head: None };
        HugetlbPool { hstates: [EMPTY; 2] }
    }

    /// Counters for `size`.
    pub fn counts(&self, size: HugePageSize) -> HstateCounts {
        let h = &self.hstates[size.index()];
        HstateCounts { nr_hugepages: h.nr, free_hugepages: h.free }
    }

    /// Frames held by the pool (all sizes).
    pub fn total_pages(&self) -> u64 {
        HugePageSize::ALL.iter().map(|s| self.hstates[s.index()].nr * s.nr_pages()).sum()
    }

    /// Takes a folio of `size` from the buddy allocator and prepares it; it counts in
    /// `nr_hugepages` and belongs to the caller (give it to [`enqueue`](Self::enqueue) to make
    /// it a free pool page).
    pub fn alloc_pool_folio<H: VmemmapHooks>(
        &mut self,
        size: HugePageSize,
        buddy: &mut Buddy,
        vm: &Vmemmap,
        hooks: &mut H,
    ) -> Result<Folio, HugetlbError> {
        let pfn = buddy.alloc(vm, size.order()).map_err(HugetlbError::Buddy)?;
        Ok(self.adopt(pfn, size, vm, hooks))
    }

    /// Like [`alloc_pool_folio`](Self::alloc_pool_folio), at a given (size-aligned) pfn.
    pub fn alloc_pool_folio_at<H: VmemmapHooks>(
        &mut self,
        size: HugePageSize,
        pfn: Pfn,
        buddy: &mut Buddy,
        vm: &Vmemmap,
        hooks: &mut H,
    ) -> Result<Folio, HugetlbError> {
        if !pfn.0.is_multiple_of(size.nr_pages()) {
            return Err(HugetlbError::Misaligned { pfn, size });
        }
        let pfn = buddy.alloc_at(vm, pfn, size.order()).map_err(HugetlbError::Buddy)?;
        Ok(self.adopt(pfn, size, vm, hooks))
    }

    fn adopt<H: VmemmapHooks>(
        &mut self,
        pfn: Pfn,
        size: HugePageSize,
        vm: &Vmemmap,
        hooks: &mut H,
    ) -> Folio {
        prep_compound(vm, pfn, size.order());
        self.hstates[size.index()].nr += 1;
        let folio = Folio { head: pfn, order: size.order() };
        // The hook (HVO) runs on the folio frozen, as Linux's prep_new_hugetlb_folio() does:
        // nobody else can hold a reference to a folio just taken from the buddy allocator.
        let head = vm.page(pfn);
        let frozen = head.ref_freeze(1);
        hooks.after_prep(&folio, vm);
        if frozen {
            head.ref_unfreeze(1);
        }
        folio
    }

    /// Takes in a folio whose descriptors were laid out outside the pool: a 1 GiB boot folio
    /// whose vmemmap [`crate::hvo_preinit`] populated already optimized (Linux 6.15's
    /// `gather_bootmem_prealloc()` for `HUGE_BOOTMEM_HVO` folios, which skips the compound
    /// prep). No [`prep_compound`] (its writes to the read-only tail aliases would fault):
    /// [`check_folio`] verifies the layout, then the folio counts in `nr_hugepages` and goes on
    /// the free list.
    pub fn add_prepared(
        &mut self,
        head: Pfn,
        size: HugePageSize,
        vm: &Vmemmap,
    ) -> Result<(), HugetlbError> {
        if !head.0.is_multiple_of(size.nr_pages()) {
            return Err(HugetlbError::Misaligned { pfn: head, size });
        }
        let folio = Folio { head, order: size.order() };
        check_folio(&folio, vm).map_err(HugetlbError::Folio)?;
        self.hstates[size.index()].nr += 1;
        self.enqueue(folio, vm);
        Ok(())
    }

    /// Puts a folio on the pool's free list (Linux's `enqueue_hugetlb_folio`): refcount 0.
    pub fn enqueue(&mut self, folio: Folio, vm: &Vmemmap) {
        let h = &mut self.hstates[folio.size().index()];
        let head = vm.page(folio.head);
        head.set_prev(None);
        head.set_next(h.free_head);
        if let Some(old) = h.free_head {
            vm.page(old).set_prev(Some(folio.head));
        }
        head.set_refcount(0);
        h.free_head = Some(folio.head);
        h.free += 1;
    }

    /// Takes a folio off the pool's free list (Linux's `dequeue_hugetlb_folio`): refcount 1.
    pub fn dequeue(&mut self, size: HugePageSize, vm: &Vmemmap) -> Option<Folio> {
        let h = &mut self.hstates[size.index()];
        let pfn = h.free_head?;
        let head = vm.page(pfn);
        h.free_head = head.next();
        if let Some(n) = h.free_head {
            vm.page(n).set_prev(None);
        }
        head.set_next(None);
        head.set_prev(None);
        head.set_refcount(1);
        h.free -= 1;
        Some(Folio { head: pfn, order: size.order() })
    }

    /// Gives a folio back to the buddy allocator (Linux's `update_and_free_hugetlb_folio`):
    /// `hooks.before_dissolve` (restore the vmemmap), check the invariants, rewrite every
    /// descriptor as a plain `Allocated` block, and free it. On a hook or invariant failure the
    /// folio is put back on the pool's free list.
    ///
    /// The pool knows whether a folio's vmemmap is optimized (the head's
    /// [`PageFlags::VMEMMAP_OPTIMIZED`], Linux's `HPG_vmemmap_optimized`): if it still is after
    /// the hook, the descriptors are not rewritten (their tails are read-only aliases of page
    /// 0, and writing them faults) and [`DissolveError::StillOptimized`] is returned, as
    /// Linux's `__update_and_free_hugetlb_folio()` keeps a folio it cannot restore.
    pub fn free_pool_folio<H: VmemmapHooks>(
        &mut self,
        folio: Folio,
        buddy: &mut Buddy,
        vm: &Vmemmap,
        hooks: &mut H,
    ) -> Result<(), DissolveError<H::Error>> {
        if let Err(e) = hooks.before_dissolve(&folio, vm) {
            self.enqueue(folio, vm);
            return Err(DissolveError::Restore(e));
        }
        if vm.page(folio.head).test(PageFlags::VMEMMAP_OPTIMIZED) {
            let head = folio.head;
            self.enqueue(folio, vm);
            return Err(DissolveError::StillOptimized { folio: head });
        }
        if let Err(e) = check_folio(&folio, vm) {
            self.enqueue(folio, vm);
            return Err(DissolveError::Folio(e));
        }
        for i in 0..folio.nr_pages() {
            let p = vm.page(Pfn(folio.head.0 + i));
            p.init(PageState::Allocated);
            p.set_order(ORDER_NONE);
        }
        let head = vm.page(folio.head);
        head.set_order(folio.order);
        head.set_refcount(1);
        self.hstates[folio.size().index()].nr -= 1;
        buddy.free(vm, folio.head, folio.order).map_err(DissolveError::Buddy)
    }

    /// Dissolves up to `n` free folios of `size` back into the buddy allocator. Returns how many.
    pub fn shrink<H: VmemmapHooks>(
        &mut self,
        size: HugePageSize,
        n: u64,
        buddy: &mut Buddy,
        vm: &Vmemmap,
        hooks: &mut H,
    ) -> Result<u64, DissolveError<H::Error>> {
        let mut done = 0;
        while done < n {
            let Some(f) = self.dequeue(size, vm) else {
                break;
            };
            self.free_pool_folio(f, buddy, vm, hooks)?;
            done += 1;
        }
        Ok(done)
    }

    /// Boot preallocation from `hugepages=` requests: allocates as many free pool folios as fit,
    /// 1 GiB first (before 2 MiB allocations fragment the 1 GiB blocks; Linux likewise
    /// allocates gigantic pages first, from memblock). Returns requested and allocated
    /// numbers, for a warning when short.
    pub fn preallocate<H: VmemmapHooks>(
        &mut self,
        requests: &[HugepageRequest],
        buddy: &mut Buddy,
        vm: &Vmemmap,
        hooks: &mut H,
    ) -> PreallocReport {
        let mut report = PreallocReport {
            sizes: [
                SizeReport { size: HugePageSize::Size2M, requested: 0, allocated: 0 },
                SizeReport { size: HugePageSize::Size1G, requested: 0, allocated: 0 },
            ],
        };
        for r in requests {
            let s = &mut report.sizes[r.size.index()];
            s.requested = s.requested.saturating_add(r.count);
        }
        for size in [HugePageSize::Size1G, HugePageSize::Size2M] {
            let s = &mut report.sizes[size.index()];
            while s.allocated < s.requested {
                match self.alloc_pool_folio(size, buddy, vm, hooks) {
                    Ok(f) => {
                        self.enqueue(f, vm);
                        s.allocated += 1;
                    }
                    Err(_) => break,
                }
            }
        }
        report
    }

    /// Takes in the parts of a folio of this pool that was demoted (Linux's
    /// `demote_free_hugetlb_folios()` accounting): the folio leaves `nr_hugepages` of its size,
    /// each part joins the smaller size's `nr_hugepages` and free list.
    pub fn accept_demoted(&mut self, d: Demoted, vm: &Vmemmap) {
        let (Some(from), Some(_)) = (d.from_size(), d.part_size()) else {
            return;
        };
        let h = &mut self.hstates[from.index()];
        h.nr = h.nr.saturating_sub(1);
        for f in d.parts() {
            self.hstates[f.size().index()].nr += 1;
            self.enqueue(f, vm);
        }
    }

    /// Checks every free folio's invariants and the free-list counts.
    pub fn check(&self, vm: &Vmemmap) -> Result<(), HugetlbError> {
        for size in HugePageSize::ALL {
            let h = &self.hstates[size.index()];
            let mut n = 0;
            let mut cur = h.free_head;
            while let Some(pfn) = cur {
                let f = Folio { head: pfn, order: size.order() };
                check_folio(&f, vm).map_err(HugetlbError::Folio)?;
                n += 1;
                if n > h.free {
                    break;
                }
                cur = vm.page(pfn).next();
            }
            if n != h.free || h.free > h.nr {
                return Err(HugetlbError::FreeListCorrupt { size });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buddy::check_conservation;
    use crate::vmemmap::HostVmemmap;

    fn setup(ram: &[MemRegion]) -> (HostVmemmap, Buddy) {
        crate::buddy::host_setup(ram)
    }

    #[test]
    fn sizes() {
        assert_eq!(HugePageSize::Size2M.bytes(), 2 << 20);
        assert_eq!(HugePageSize::Size1G.nr_pages(), 262_144);
        assert_eq!(HugePageSize::from_bytes(1 << 30), Some(HugePageSize::Size1G));
        assert_eq!(HugePageSize::from_bytes(64 << 10), None);
    }

    #[test]
    fn pool_cycle_2m() {
        let ram = [MemRegion::new(0, 64 << 20)];
        let (vm, mut b) = setup(&ram);
        let mut pool = HugetlbPool::new();
        let f = pool.alloc_pool_folio(HugePageSize::Size2M, &mut b, &vm, &mut NoHooks).unwrap();
        check_folio(&f, &vm).unwrap();
        assert_eq!(f.nr_pages(), 512);
        assert!(f.head(&vm).page_head());
        assert!(core::ptr::eq(f.page(&vm, 511).compound_head(), f.head(&vm)));
        let c = check_conservation(&vm, &ram, &b).unwrap();
        assert_eq!(c.hugetlb, 512);
        pool.enqueue(f, &vm);
        assert_eq!(
            pool.counts(HugePageSize::Size2M),
            HstateCounts { nr_hugepages: 1, free_hugepages: 1 }
        );
        pool.check(&vm).unwrap();
        let f = pool.dequeue(HugePageSize::Size2M, &vm).unwrap();
        assert!(pool.dequeue(HugePageSize::Size2M, &vm).is_none());
        pool.free_pool_folio(f, &mut b, &vm, &mut NoHooks).unwrap();
        assert_eq!(pool.counts(HugePageSize::Size2M), HstateCounts::default());
        let c = check_conservation(&vm, &ram, &b).unwrap();
        assert_eq!(c.hugetlb, 0);
        assert_eq!(c.free, 64 << 8);
        b.check(&vm).unwrap();
    }

    #[test]
    fn broken_folio_is_detected_and_kept() {
        let ram = [MemRegion::new(0, 64 << 20)];
        let (vm, mut b) = setup(&ram);
        let mut pool = HugetlbPool::new();
        let f = pool.alloc_pool_folio(HugePageSize::Size2M, &mut b, &vm, &mut NoHooks).unwrap();
        f.page(&vm, 7).clear_compound_head();
        assert!(matches!(check_folio(&f, &vm), Err(FolioError::BadTail { index: 7, .. })));
        let e = pool.free_pool_folio(f, &mut b, &vm, &mut NoHooks).unwrap_err();
        assert!(matches!(e, DissolveError::Folio(FolioError::BadTail { .. })));
        assert_eq!(pool.counts(HugePageSize::Size2M).free_hugepages, 1);
    }

    struct FailingRestore(u32);
    impl VmemmapHooks for FailingRestore {
        type Error = u32;
        fn before_dissolve(&mut self, _: &Folio, _: &Vmemmap) -> Result<(), u32> {
            Err(self.0)
        }
    }

    #[test]
    fn failed_restore_puts_folio_back() {
        let ram = [MemRegion::new(0, 64 << 20)];
        let (vm, mut b) = setup(&ram);
        let mut pool = HugetlbPool::new();
        let f = pool.alloc_pool_folio(HugePageSize::Size2M, &mut b, &vm, &mut NoHooks).unwrap();
        let e = pool.free_pool_folio(f, &mut b, &vm, &mut FailingRestore(12)).unwrap_err();
        assert_eq!(e, DissolveError::Restore(12));
        assert_eq!(
            pool.counts(HugePageSize::Size2M),
            HstateCounts { nr_hugepages: 1, free_hugepages: 1 }
        );
        pool.check(&vm).unwrap();
        check_conservation(&vm, &ram, &b).unwrap();
    }
}
