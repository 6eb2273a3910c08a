//! The buddy allocator (Linux's `mm/page_alloc.c`, one zone, no per-cpu lists), and the
//! page-conservation census.
//!
//! Free memory is kept as naturally aligned blocks of `2^order` frames, `order` in
//! `0..=MAX_ORDER`. Each order has a doubly linked free list threaded through the blocks' first
//! descriptors (`next`/`prev` hold pfns). A free block's first descriptor has `PageBuddy`
//! ([`PageFlags::BUDDY`]) and the block's order; every frame of a free block is in state
//! [`PageState::Free`]. Freeing merges a block with its buddy (`pfn ^ (1 << order)`) while the
//! buddy is a free block of the same order (Linux's `page_is_buddy` / `__free_one_page`);
//! allocating splits larger blocks (`expand`).
//!
//! `MAX_ORDER` is 18, so the largest block is 1 GiB: the 1 GiB HugeTLB pool comes from here
//! (Linux's default largest order is 10, 4 MiB, and gigantic pages come from memblock or CMA).
//!
//! An allocated block has every frame in state [`PageState::Allocated`]; its first frame holds
//! the order and a reference count of 1, the others hold [`ORDER_NONE`]. That is what lets
//! [`Buddy::free`] reject double frees, frees of a frame that is not the start of a block, frees
//! with the wrong order, misaligned or unmanaged pfns, and frames that some other owner has
//! claimed (page tables, HugeTLB, ...: their owner must hand them back as `Allocated`): every
//! check happens before any list is touched.
//!
//! The allocator never holds a reference to the memmap; every call takes the [`Vmemmap`].

use crate::addr::{Pfn, PAGE_SHIFT};
use crate::memblock::{ListFull, MemRegion, Memblock, RegionList, ReservedKind};
use crate::page::{PageFlags, PageState, ORDER_NONE};
use crate::vmemmap::Vmemmap;

/// The largest block order: `2^18` frames, 1 GiB.
pub const MAX_ORDER: u8 = 18;
/// Number of orders (`0..=MAX_ORDER`).
pub const NR_ORDERS: usize = MAX_ORDER as usize + 1;
/// Maximum number of disjoint managed ranges.
pub const MAX_MANAGED_RANGES: usize = 16;

const NONE: u64 = u64::MAX;

/// Errors from the buddy allocator. None of them leaves the free lists changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BuddyError {
    /// No free block of this order or larger.
    OutOfMemory {
        /// The requested order.
        order: u8,
    },
    /// `order > MAX_ORDER`.
    BadOrder {
        /// The order.
        order: u8,
    },
    /// The pfn is not a multiple of `2^order`.
    Misaligned {
        /// The pfn.
        pfn: Pfn,
        /// The order.
        order: u8,
    },
    /// The block is not entirely inside RAM given to the allocator.
    OutsideManaged {
        /// The pfn.
        pfn: Pfn,
        /// The order.
        order: u8,
    },
    /// The frame is already free.
    DoubleFree {
        /// The frame found free.
        pfn: Pfn,
    },
    /// The frame belongs to another owner (page table, HugeTLB, ...), not the allocator's
    /// caller.
    NotAllocated {
        /// The frame.
        pfn: Pfn,
        /// Its state.
        state: PageState,
    },
    /// The pfn is inside an allocated block but not its first frame.
    NotHead {
        /// The pfn.
        pfn: Pfn,
    },
    /// The block was allocated with a different order (or the range spans other blocks).
    OrderMismatch {
        /// The frame.
        pfn: Pfn,
        /// The order passed to `free`.
        expected: u8,
        /// The order recorded in the descriptor.
        found: u8,
    },
    /// `alloc_at`: the block is not entirely free.
    Busy {
        /// The pfn.
        pfn: Pfn,
        /// The order.
        order: u8,
    },
    /// `free_range`: empty or inverted range.
    EmptyRange {
        /// Start.
        start: Pfn,
        /// End.
        end: Pfn,
    },
    /// `free_range`: overlaps memory already given to the allocator.
    AlreadyManaged {
        /// The overlapping range.
        range: MemRegion,
    },
    /// `free_range`: a frame that is not in state `Reserved`.
    NotReserved {
        /// The frame.
        pfn: Pfn,
        /// Its state.
        state: PageState,
    },
    /// A frame without a mapped descriptor.
    NoDescriptor {
        /// The frame.
        pfn: Pfn,
    },
    /// Too many disjoint managed ranges.
    TooManyRanges,
    /// `check`: the free lists are inconsistent.
    Corrupt {
        /// The block where the inconsistency was found.
        pfn: Pfn,
        /// Its list.
        order: u8,
    },
}

/// Allocator statistics.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BuddyStats {
    /// Frames given to the allocator.
    pub managed_pages: u64,
    /// Frames currently free.
    pub free_pages: u64,
    /// Free blocks per order.
    pub nr_free: [u64; NR_ORDERS],
    /// Successful allocations (`alloc` and `alloc_at`).
    pub allocs: u64,
    /// Failed allocations.
    pub failed_allocs: u64,
    /// Successful frees.
    pub frees: u64,
}

/// The buddy allocator.
#[derive(Clone, Debug)]
pub struct Buddy {
    free_head: [u64; NR_ORDERS],
    nr_free: [u64; NR_ORDERS],
    managed: RegionList<MAX_MANAGED_RANGES>,
    managed_pages: u64,
    free_pages: u64,
    allocs: u64,
    failed_allocs: u64,
    frees: u64,
}

impl Default for Buddy {
    fn default() -> Self {
        Self::new()
    }
}

#[inline]
const fn pages(order: u8) -> u64 {
    1 << order
}

fn block_region(pfn: Pfn, nr: u64) -> MemRegion {
    MemRegion::new(pfn.0 << PAGE_SHIFT, nr << PAGE_SHIFT)
}

impl Buddy {
    /// An allocator with no memory.
    pub const fn new() -> Self {
        Buddy {
            free_head: [NONE; NR_ORDERS],
            nr_free: [0; NR_ORDERS],
            managed: RegionList::new(),
            managed_pages: 0,
            free_pages: 0,
            allocs: 0,
            failed_allocs: 0,
            frees: 0,
        }
    }

    /// Frames currently free.
    pub fn free_pages(&self) -> u64 {
        self.free_pages
    }

    /// Frames given to the allocator.
    pub fn managed_pages(&self) -> u64 {
        self.managed_pages
    }

    /// Free blocks of `order`.
    pub fn nr_free(&self, order: u8) -> u64 {
        self.nr_free.get(order as usize).copied().unwrap_or(0)
    }

    /// The ranges given to the allocator (sorted, adjacent ones merged).
    pub fn managed(&self) -> &[MemRegion] {
        self.managed.as_slice()
    }

    /// The largest order with a free block.
    pub fn largest_free_order(&self) -> Option<u8> {
        (0..=MAX_ORDER).rev().find(|&o| self.nr_free[o as usize] > 0)
    }

    /// A copy of the counters.
    pub fn stats(&self) -> BuddyStats {
        BuddyStats {
            managed_pages: self.managed_pages,
            free_pages: self.free_pages,
            nr_free: self.nr_free,
            allocs: self.allocs,
            failed_allocs: self.failed_allocs,
            frees: self.frees,
        }
    }

    /// Is `[pfn, pfn + nr)` inside one managed range?
    pub fn is_managed(&self, pfn: Pfn, nr: u64) -> bool {
        let b = block_region(pfn, nr);
        self.managed.iter().any(|m| m.covers(&b))
    }

    fn add_managed(&mut self, new: MemRegion) -> Result<(), BuddyError> {
        if let Some(m) = self.managed.iter().find(|m| m.overlaps(&new)) {
            return Err(BuddyError::AlreadyManaged { range: *m });
        }
        let mut merged = new;
        let mut list = RegionList::<MAX_MANAGED_RANGES>::new();
        for m in self.managed.iter() {
            if m.end() == merged.base.0 {
                merged = MemRegion::from_range(m.base.0, merged.end());
            } else if merged.end() == m.base.0 {
                merged = MemRegion::from_range(merged.base.0, m.end());
            } else {
                list.push(*m).map_err(|ListFull| BuddyError::TooManyRanges)?;
            }
        }
        list.push(merged).map_err(|ListFull| BuddyError::TooManyRanges)?;
        list.sort();
        self.managed = list;
        Ok(())
    }

    /// Hands `[start, end)` to the allocator (Linux's `__free_pages_core` over a memblock free
    /// range): every frame must have a descriptor in state [`PageState::Reserved`], and the
    /// range must not overlap memory already managed. The range is cut into maximal aligned
    /// blocks, each freed (and merged with free neighbours). Returns the number of frames.
    pub fn free_range(&mut self, vm: &Vmemmap, start: Pfn, end: Pfn) -> Result<u64, BuddyError> {
        if start.0 >= end.0 {
            return Err(BuddyError::EmptyRange { start, end });
        }
        let region = block_region(start, end.0 - start.0);
        // Inside the span already (a bank registered by `free_memblock`, like a zone's span in
        // Linux): the per-frame state check below is what stops a frame being given twice.
        let inside = self.is_managed(start, end.0 - start.0);
        if !inside {
            if let Some(m) = self.managed.iter().find(|m| m.overlaps(&region)) {
                return Err(BuddyError::AlreadyManaged { range: *m });
            }
        }
        for pfn in start.0..end.0 {
            let p = vm.get(Pfn(pfn)).ok_or(BuddyError::NoDescriptor { pfn: Pfn(pfn) })?;
            if p.state() != PageState::Reserved {
                return Err(BuddyError::NotReserved { pfn: Pfn(pfn), state: p.state() });
            }
        }
        if !inside {
            self.add_managed(region)?;
        }
        self.managed_pages += end.0 - start.0;
        let mut cur = start.0;
        while cur < end.0 {
            let align_order = if cur == 0 { 63 } else { cur.trailing_zeros() };
            let fit_order = 63 - (end.0 - cur).leading_zeros();
            let order = align_order.min(fit_order).min(MAX_ORDER as u32) as u8;
            self.mark_free(vm, Pfn(cur), order);
            self.free_pages += pages(order);
            self.insert_merging(vm, Pfn(cur), order);
            cur += pages(order);
        }
        Ok(end.0 - start.0)
    }

    /// Linux's `memblock_free_all`: gives every free memblock range to the allocator, and turns
    /// each reservation's kind into the page state of its RAM frames (kernel image →
    /// `KernelImage`, early tables → `PageTable`, vmemmap → `Vmemmap`, anything else stays
    /// `Reserved`). Descriptors must have been initialised (`Vmemmap::init_descriptors`).
    /// Returns the number of frames freed.
    pub fn free_memblock(&mut self, vm: &Vmemmap, mb: &Memblock) -> Result<u64, BuddyError> {
        for r in mb.reserved() {
            let (state, flags) = match r.kind {
                ReservedKind::KernelImage => (PageState::KernelImage, PageFlags::RESERVED),
                ReservedKind::EarlyTables => (PageState::PageTable, PageFlags::TABLE),
                ReservedKind::Vmemmap => (PageState::Vmemmap, PageFlags::RESERVED),
                _ => (PageState::Reserved, PageFlags::RESERVED),
            };
            for m in mb.memory() {
                for pfn in r.region.intersect(m).pfns() {
                    if let Some(p) = vm.get(Pfn(pfn)) {
                        p.set_state(state);
                        p.set_flags(flags);
                    }
                }
            }
        }
        // The span: whole RAM banks, so frames reserved now (the boot vmemmap, early tables) can
        // be handed over later one by one (HVO frees boot vmemmap frames) without each adding a
        // managed range.
        for m in mb.memory() {
            let p = m.pfns();
            if !p.is_empty() && !self.is_managed(Pfn(p.start), p.end - p.start) {
                self.add_managed(block_region(Pfn(p.start), p.end - p.start))?;
            }
        }
        let mut n = 0;
        for f in mb.free_ranges() {
            let r = f.pfns();
            if r.is_empty() {
                continue;
            }
            n += self.free_range(vm, Pfn(r.start), Pfn(r.end))?;
        }
        Ok(n)
    }

    /// Allocates a block of `2^order` frames (Linux's `__rmqueue_smallest`): the smallest free
    /// block that fits is taken and split; the unused halves go back to the free lists.
    pub fn alloc(&mut self, vm: &Vmemmap, order: u8) -> Result<Pfn, BuddyError> {
        if order > MAX_ORDER {
            return Err(BuddyError::BadOrder { order });
        }
        let Some(mut cur) = (order..=MAX_ORDER).find(|&o| self.free_head[o as usize] != NONE)
        else {
            self.failed_allocs += 1;
            return Err(BuddyError::OutOfMemory { order });
        };
        let pfn = Pfn(self.free_head[cur as usize]);
        self.list_remove(vm, cur, pfn);
        while cur > order {
            cur -= 1;
            self.list_push(vm, cur, Pfn(pfn.0 + pages(cur)));
        }
        self.mark_allocated(vm, pfn, order);
        self.free_pages -= pages(order);
        self.allocs += 1;
        Ok(pfn)
    }

    /// Allocates the specific block `[pfn, pfn + 2^order)` if it is entirely free (the free
    /// block containing it is taken off its list and split around it, as Linux's
    /// `take_page_off_buddy`). Useful for a 1 GiB HugeTLB page at a known address.
    pub fn alloc_at(&mut self, vm: &Vmemmap, pfn: Pfn, order: u8) -> Result<Pfn, BuddyError> {
        self.check_block(pfn, order)?;
        let mut found = None;
        for o in order..=MAX_ORDER {
            let head = Pfn(pfn.0 & !(pages(o) - 1));
            if !self.is_managed(head, pages(o)) {
                break;
            }
            if self.is_free_head(vm, head, o) {
                found = Some((head, o));
                break;
            }
        }
        let Some((mut head, mut o)) = found else {
            self.failed_allocs += 1;
            return Err(BuddyError::Busy { pfn, order });
        };
        self.list_remove(vm, o, head);
        while o > order {
            o -= 1;
            let upper = Pfn(head.0 + pages(o));
            if pfn.0 >= upper.0 {
                self.list_push(vm, o, head);
                head = upper;
            } else {
                self.list_push(vm, o, upper);
            }
        }
        debug_assert_eq!(head, pfn);
        self.mark_allocated(vm, pfn, order);
        self.free_pages -= pages(order);
        self.allocs += 1;
        Ok(pfn)
    }

    /// Frees the block `[pfn, pfn + 2^order)` that [`alloc`](Self::alloc) or
    /// [`alloc_at`](Self::alloc_at) returned, merging it with free buddies. Every frame must be
    /// in state [`PageState::Allocated`] with the block's layout; otherwise an error is returned
    /// and nothing changes.
    pub fn free(&mut self, vm: &Vmemmap, pfn: Pfn, order: u8) -> Result<(), BuddyError> {
        self.check_block(pfn, order)?;
        let head = vm.get(pfn).ok_or(BuddyError::NoDescriptor { pfn })?;
        match head.state() {
            PageState::Allocated => {}
            PageState::Free => return Err(BuddyError::DoubleFree { pfn }),
            state => return Err(BuddyError::NotAllocated { pfn, state }),
        }
        match head.order() {
            ORDER_NONE => return Err(BuddyError::NotHead { pfn }),
            o if o != order => {
                return Err(BuddyError::OrderMismatch { pfn, expected: order, found: o })
            }
            _ => {}
        }
        for t in pfn.0 + 1..pfn.0 + pages(order) {
            let p = vm.get(Pfn(t)).ok_or(BuddyError::NoDescriptor { pfn: Pfn(t) })?;
            match p.state() {
                PageState::Allocated => {}
                PageState::Free => return Err(BuddyError::DoubleFree { pfn: Pfn(t) }),
                state => return Err(BuddyError::NotAllocated { pfn: Pfn(t), state }),
            }
            if p.order() != ORDER_NONE {
                return Err(BuddyError::OrderMismatch {
                    pfn: Pfn(t),
                    expected: ORDER_NONE,
                    found: p.order(),
                });
            }
        }
        self.mark_free(vm, pfn, order);
        self.free_pages += pages(order);
        self.frees += 1;
        self.insert_merging(vm, pfn, order);
        Ok(())
    }

    /// Checks the free lists: links consistent, every listed block a free head of the right
    /// order inside managed memory, counts and free-page total exact.
    pub fn check(&self, vm: &Vmemmap) -> Result<(), BuddyError> {
        let mut total = 0;
        for o in 0..=MAX_ORDER {
            let mut n = 0;
            let mut prev = NONE;
            let mut cur = self.free_head[o as usize];
            while cur != NONE {
                let pfn = Pfn(cur);
                let bad = BuddyError::Corrupt { pfn, order: o };
                if !self.is_managed(pfn, pages(o)) || !cur.is_multiple_of(pages(o)) {
                    return Err(bad);
                }
                let p = vm.get(pfn).ok_or(bad)?;
                let prev_ok = p.prev().map_or(NONE, |p| p.0) == prev;
                if !prev_ok || !self.is_free_head(vm, pfn, o) {
                    return Err(bad);
                }
                n += 1;
                if n > self.nr_free[o as usize] {
                    return Err(bad);
                }
                prev = cur;
                cur = p.next().map_or(NONE, |p| p.0);
            }
            if n != self.nr_free[o as usize] {
                return Err(BuddyError::Corrupt { pfn: Pfn(NONE), order: o });
            }
            total += n * pages(o);
        }
        if total != self.free_pages {
            return Err(BuddyError::Corrupt { pfn: Pfn(NONE), order: MAX_ORDER });
        }
        Ok(())
    }

    // ---- internals ----

    fn check_block(&self, pfn: Pfn, order: u8) -> Result<(), BuddyError> {
        if order > MAX_ORDER {
            return Err(BuddyError::BadOrder { order });
        }
        if !pfn.0.is_multiple_of(pages(order)) {
            return Err(BuddyError::Misaligned { pfn, order });
        }
        if !self.is_managed(pfn, pages(order)) {
            return Err(BuddyError::OutsideManaged { pfn, order });
        }
        Ok(())
    }

    /// Linux's `page_is_buddy`: is `pfn` the first frame of a free block of exactly `order`?
    fn is_free_head(&self, vm: &Vmemmap, pfn: Pfn, order: u8) -> bool {
        match vm.get(pfn) {
            Some(p) => {
                p.test(PageFlags::BUDDY) && p.order() == order && p.state() == PageState::Free
            }
            None => false,
        }
    }

    fn insert_merging(&mut self, vm: &Vmemmap, mut pfn: Pfn, mut order: u8) {
        while order < MAX_ORDER {
            let buddy = Pfn(pfn.0 ^ pages(order));
            if !self.is_managed(buddy, pages(order)) || !self.is_free_head(vm, buddy, order) {
                break;
            }
            self.list_remove(vm, order, buddy);
            // The higher of the two is now inside the merged block.
            let upper = Pfn(pfn.0.max(buddy.0));
            vm.page(upper).set_order(ORDER_NONE);
            pfn = Pfn(pfn.0.min(buddy.0));
            order += 1;
        }
        self.list_push(vm, order, pfn);
    }

    fn list_push(&mut self, vm: &Vmemmap, order: u8, pfn: Pfn) {
        let o = order as usize;
        let p = vm.page(pfn);
        let old = self.free_head[o];
        p.set_next((old != NONE).then_some(Pfn(old)));
        p.set_prev(None);
        if old != NONE {
            vm.page(Pfn(old)).set_prev(Some(pfn));
        }
        self.free_head[o] = pfn.0;
        self.nr_free[o] += 1;
        p.set_order(order);
        p.set_flags(PageFlags::BUDDY);
    }

    fn list_remove(&mut self, vm: &Vmemmap, order: u8, pfn: Pfn) {
        let o = order as usize;
        let p = vm.page(pfn);
        let (next, prev) = (p.next(), p.prev());
        match prev {
            Some(pr) => vm.page(pr).set_next(next),
            None => self.free_head[o] = next.map_or(NONE, |n| n.0),
        }
        if let Some(n) = next {
            vm.page(n).set_prev(prev);
        }
        p.set_next(None);
        p.set_prev(None);
        p.clear_flags(PageFlags::BUDDY);
        p.set_order(ORDER_NONE);
        self.nr_free[o] -= 1;
    }

    fn mark_free(&self, vm: &Vmemmap, pfn: Pfn, order: u8) {
        for f in pfn.0..pfn.0 + pages(order) {
            let p = vm.page(Pfn(f));
            p.init(PageState::Free);
            p.set_order(ORDER_NONE);
        }
    }

    fn mark_allocated(&self, vm: &Vmemmap, pfn: Pfn, order: u8) {
        for f in pfn.0..pfn.0 + pages(order) {
            let p = vm.page(Pfn(f));
            p.init(PageState::Allocated);
            p.set_order(ORDER_NONE);
        }
        let head = vm.page(pfn);
        head.set_order(order);
        head.set_refcount(1);
    }
}

/// Frames per state over all RAM frames (see [`conservation`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Census {
    /// [`PageState::Free`].
    pub free: u64,
    /// [`PageState::Allocated`].
    pub allocated: u64,
    /// [`PageState::PageTable`].
    pub page_table: u64,
    /// [`PageState::Vmemmap`].
    pub vmemmap: u64,
    /// [`PageState::HugeTlb`].
    pub hugetlb: u64,
    /// [`PageState::KernelImage`].
    pub kernel_image: u64,
    /// [`PageState::Reserved`].
    pub reserved: u64,
    /// [`PageState::Uninit`] (should be 0).
    pub uninit: u64,
    /// RAM frames without a mapped descriptor (should be 0).
    pub no_descriptor: u64,
    /// Sum of the state counts (frames with a descriptor).
    pub total: u64,
}

impl Census {
    /// The count for one state.
    pub fn count(&self, s: PageState) -> u64 {
        match s {
            PageState::Uninit => self.uninit,
            PageState::Reserved => self.reserved,
            PageState::Free => self.free,
            PageState::Allocated => self.allocated,
            PageState::PageTable => self.page_table,
            PageState::Vmemmap => self.vmemmap,
            PageState::HugeTlb => self.hugetlb,
            PageState::KernelImage => self.kernel_image,
        }
    }

    /// Checks conservation: every RAM frame has a descriptor in a known state, the states sum
    /// to the RAM frame count, and the free frames are exactly the buddy allocator's.
    pub fn check(&self, ram_pages: u64, buddy_free: u64) -> Result<(), ConservationError> {
        if self.no_descriptor != 0 {
            return Err(ConservationError::MissingDescriptors { count: self.no_descriptor });
        }
        if self.uninit != 0 {
            return Err(ConservationError::Uninitialised { count: self.uninit });
        }
        if self.total != ram_pages {
            return Err(ConservationError::TotalMismatch { total: self.total, ram_pages });
        }
        if self.free != buddy_free {
            return Err(ConservationError::FreeMismatch { census_free: self.free, buddy_free });
        }
        Ok(())
    }
}

/// A failed conservation check.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ConservationError {
    /// RAM frames without a descriptor.
    MissingDescriptors {
        /// How many.
        count: u64,
    },
    /// RAM frames never initialised.
    Uninitialised {
        /// How many.
        count: u64,
    },
    /// The states do not add up to the RAM frame count.
    TotalMismatch {
        /// Sum of states.
        total: u64,
        /// RAM frames.
        ram_pages: u64,
    },
    /// Frames in state `Free` differ from the buddy allocator's free count.
    FreeMismatch {
        /// Frames in state `Free`.
        census_free: u64,
        /// The allocator's count.
        buddy_free: u64,
    },
}

/// Counts the states of all RAM frames (whole frames of each region of `ram`, which must not
/// overlap).
pub fn conservation(vm: &Vmemmap, ram: &[MemRegion]) -> Census {
    let mut c = Census::default();
    for r in ram {
        for pfn in r.pfns() {
            let Some(p) = vm.get(Pfn(pfn)) else {
                c.no_descriptor += 1;
                continue;
            };
            let slot = match p.state() {
                PageState::Uninit => &mut c.uninit,
                PageState::Reserved => &mut c.reserved,
                PageState::Free => &mut c.free,
                PageState::Allocated => &mut c.allocated,
                PageState::PageTable => &mut c.page_table,
                PageState::Vmemmap => &mut c.vmemmap,
                PageState::HugeTlb => &mut c.hugetlb,
                PageState::KernelImage => &mut c.kernel_image,
            };
            *slot += 1;
            c.total += 1;
        }
    }
    c
}

/// Number of whole frames in `ram`.
pub fn ram_pages(ram: &[MemRegion]) -> u64 {
    ram.iter().map(|r| r.nr_pages()).sum()
}

/// [`conservation`] plus [`Census::check`] against `buddy`.
pub fn check_conservation(
    vm: &Vmemmap,
    ram: &[MemRegion],
    buddy: &Buddy,
) -> Result<Census, ConservationError> {
    let c = conservation(vm, ram);
    c.check(ram_pages(ram), buddy.free_pages())?;
    Ok(c)
}

/// Host tests: a memmap over `ram` with every section present, and a buddy allocator holding
/// all of it.
#[cfg(any(test, feature = "std"))]
pub fn host_setup(ram: &[MemRegion]) -> (crate::vmemmap::HostVmemmap, Buddy) {
    let vm = crate::vmemmap::HostVmemmap::populated(ram);
    let mut b = Buddy::new();
    for r in ram {
        let p = r.pfns();
        b.free_range(&vm, Pfn(p.start), Pfn(p.end)).expect("fresh RAM frees");
    }
    (vm, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PhysAddr;
    use crate::vmemmap::HostVmemmap;

    const MIB: u64 = 1 << 20;

    fn setup(ram: &[MemRegion]) -> (HostVmemmap, Buddy) {
        host_setup(ram)
    }

    #[test]
    fn free_range_makes_maximal_blocks() {
        let ram = [MemRegion::new(0x4000_0000, 1 << 30)];
        let (vm, b) = setup(&ram);
        assert_eq!(b.nr_free(MAX_ORDER), 1);
        assert_eq!(b.free_pages(), 1 << 18);
        b.check(&vm).unwrap();
        // Unaligned start: 0x3b40_0000 (Pi 4 low bank end) style.
        let ram = [MemRegion::from_range(0x100_0000, 0x3b40_0000)];
        let (vm, b) = setup(&ram);
        b.check(&vm).unwrap();
        assert_eq!(b.free_pages(), ram[0].nr_pages());
        check_conservation(&vm, &ram, &b).unwrap();
    }

    #[test]
    fn alloc_splits_and_free_merges() {
        let ram = [MemRegion::new(0, 64 * MIB)];
        let (vm, mut b) = setup(&ram);
        let before = b.stats();
        let a = b.alloc(&vm, 0).unwrap();
        let c = b.alloc(&vm, 3).unwrap();
        assert_eq!(b.free_pages(), before.free_pages - 9);
        b.check(&vm).unwrap();
        assert_eq!(vm.page(a).state(), PageState::Allocated);
        assert_eq!(vm.page(a).refcount(), 1);
        check_conservation(&vm, &ram, &b).unwrap();
        b.free(&vm, a, 0).unwrap();
        b.free(&vm, c, 3).unwrap();
        b.check(&vm).unwrap();
        assert_eq!(b.stats().nr_free, before.nr_free);
        assert_eq!(b.stats().allocs, 2);
        assert_eq!(b.stats().frees, 2);
    }

    #[test]
    fn free_errors_do_not_corrupt() {
        let ram = [MemRegion::new(0, 16 * MIB)];
        let (vm, mut b) = setup(&ram);
        let a = b.alloc(&vm, 2).unwrap();
        let snap = b.stats();
        assert_eq!(b.free(&vm, Pfn(a.0 + 1), 0), Err(BuddyError::NotHead { pfn: Pfn(a.0 + 1) }));
        assert_eq!(
            b.free(&vm, Pfn(a.0 + 1), 2),
            Err(BuddyError::Misaligned { pfn: Pfn(a.0 + 1), order: 2 })
        );
        assert!(matches!(b.free(&vm, a, 1), Err(BuddyError::OrderMismatch { .. })));
        assert!(matches!(
            b.free(&vm, a, 3),
            Err(BuddyError::OrderMismatch { .. } | BuddyError::DoubleFree { .. })
        ));
        assert_eq!(
            b.free(&vm, Pfn(0x10_0000), 0),
            Err(BuddyError::OutsideManaged { pfn: Pfn(0x10_0000), order: 0 })
        );
        assert_eq!(b.free(&vm, a, 19), Err(BuddyError::BadOrder { order: 19 }));
        vm.page(a).set_state(PageState::PageTable);
        assert_eq!(
            b.free(&vm, a, 2),
            Err(BuddyError::NotAllocated { pfn: a, state: PageState::PageTable })
        );
        vm.page(a).set_state(PageState::Allocated);
        assert_eq!(b.stats(), snap);
        b.free(&vm, a, 2).unwrap();
        assert!(matches!(b.free(&vm, a, 2), Err(BuddyError::DoubleFree { .. })));
        b.check(&vm).unwrap();
        check_conservation(&vm, &ram, &b).unwrap();
    }

    #[test]
    fn alloc_at_takes_a_specific_block() {
        let ram = [MemRegion::new(0x4000_0000, 2 << 30)];
        let (vm, mut b) = setup(&ram);
        let gig = Pfn::containing(PhysAddr(0x8000_0000));
        assert_eq!(b.alloc_at(&vm, gig, 18), Ok(gig));
        assert_eq!(b.alloc_at(&vm, gig, 18), Err(BuddyError::Busy { pfn: gig, order: 18 }));
        let p = Pfn(0x4_0000 + 12345);
        b.alloc_at(&vm, p, 0).unwrap();
        b.check(&vm).unwrap();
        assert_eq!(b.free_pages(), (1 << 18) - 1);
        check_conservation(&vm, &ram, &b).unwrap();
        b.free(&vm, p, 0).unwrap();
        b.free(&vm, gig, 18).unwrap();
        assert_eq!(b.nr_free(18), 2);
        b.check(&vm).unwrap();
    }

    #[test]
    fn out_of_memory_and_range_errors() {
        let ram = [MemRegion::new(0, 2 * MIB)];
        let (vm, mut b) = setup(&ram);
        assert_eq!(b.alloc(&vm, 10), Err(BuddyError::OutOfMemory { order: 10 }));
        assert_eq!(b.stats().failed_allocs, 1);
        let x = b.alloc(&vm, 9).unwrap();
        assert_eq!(b.alloc(&vm, 0), Err(BuddyError::OutOfMemory { order: 0 }));
        b.free(&vm, x, 9).unwrap();
        // Frames already free are refused (they are not Reserved), so nothing is given twice.
        let free = b.free_pages();
        assert!(matches!(b.free_range(&vm, Pfn(0), Pfn(4)), Err(BuddyError::NotReserved { .. })));
        assert_eq!(b.free_pages(), free);
        assert!(matches!(b.free_range(&vm, Pfn(4), Pfn(4)), Err(BuddyError::EmptyRange { .. })));
    }

    #[test]
    fn reserved_frames_freed_one_by_one_stay_in_the_span() {
        // Boot vmemmap frames are reserved in memblock and freed later one at a time (HVO):
        // scattered frees must not each need a managed range.
        let ram = MemRegion::new(0, 64 * MIB);
        let vm = crate::vmemmap::HostVmemmap::populated(&[ram]);
        vm.init_descriptors(&[ram]);
        let mut mb = Memblock::new();
        mb.add_memory(ram.base, ram.size).unwrap();
        mb.reserve(PhysAddr(0), 32 * MIB, ReservedKind::Vmemmap).unwrap();
        let mut b = Buddy::new();
        b.free_memblock(&vm, &mb).unwrap();
        let free0 = b.free_pages();
        // Every third frame of the reserved half, one by one: far more runs than ranges.
        let mut n = 0;
        for pfn in (0..(32 * MIB / 4096)).step_by(3) {
            vm.page(Pfn(pfn)).set_state(PageState::Reserved);
            b.free_range(&vm, Pfn(pfn), Pfn(pfn + 1)).unwrap();
            n += 1;
        }
        assert!(n > MAX_MANAGED_RANGES as u64 * 10);
        assert_eq!(b.free_pages(), free0 + n);
        assert_eq!(b.managed().len(), 1);
        b.check(&vm).unwrap();
    }

    #[test]
    fn free_memblock_sets_states() {
        let ram = [MemRegion::new(0, 256 * MIB)];
        let vm = HostVmemmap::populated(&ram);
        let mut mb = Memblock::new();
        mb.add_memory(PhysAddr(0), 256 * MIB).unwrap();
        mb.reserve(PhysAddr(0x8_0000), 0x20_0000, ReservedKind::KernelImage).unwrap();
        mb.alloc(4096 * 3, 4096, ReservedKind::EarlyTables).unwrap();
        mb.alloc(2 * MIB, 2 * MIB, ReservedKind::Vmemmap).unwrap();
        mb.reserve(PhysAddr(0), 0x1000, ReservedKind::Firmware).unwrap();
        let mut b = Buddy::new();
        let n = b.free_memblock(&vm, &mb).unwrap();
        assert_eq!(n * 4096, mb.free_bytes());
        let c = check_conservation(&vm, &ram, &b).unwrap();
        assert_eq!(c.kernel_image, 0x200);
        assert_eq!(c.page_table, 3);
        assert_eq!(c.vmemmap, 512);
        assert_eq!(c.reserved, 1);
        b.check(&vm).unwrap();
    }
}
