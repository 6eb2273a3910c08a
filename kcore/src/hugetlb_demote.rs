//! HugeTLB demote: a free folio split into the folios of the next smaller size, 1 GiB into 512
//! of 2 MiB (Linux's `demote` file in `/sys/kernel/mm/hugepages/hugepages-*/`:
//! `demote_store()` → `demote_pool_huge_page()` → `demote_free_hugetlb_folios()` in
//! `mm/hugetlb.c`).
//!
//! # Keeping the vmemmap optimized
//!
//! A 1 GiB folio optimized by HVO has 4096 vmemmap pages (16 MiB of descriptors): page 0 is a
//! real frame (the head and 63 tails), pages 1..4095 map page 0's frame read-only. Its 512
//! parts, each optimized for 2 MiB, need per part `k` one real page `8k` (head `k` and 63 of
//! its tails) and pages `8k+1..8k+7` mapped read-only onto it. Part 0 already has that: its
//! page 0 is the folio's page 0, and its pages 1..7 already map it. So the *direct* demote:
//!
//! 1. checks the layout (every page entry mapped, page 0 writable, all others read-only onto
//!    page 0, the tables already split: HVO left them so);
//! 2. takes 511 frames from the allocator (all of them before any entry is touched: a failure
//!    gives back what it got and changes nothing, [`DemoteError::NoMemory`]);
//! 3. writes each frame, not yet mapped: head `k`, then 63 tails whose compound head is head
//!    `k` (as [`crate::hugetlb::prep_compound`] lays them out);
//! 4. in *one* break window (one `BbmSync::break_begin`/`break_end`, `init_mm`'s
//!    `page_table_lock` held): each of the 4088 entries `8..4095` becomes invalid (keeping its
//!    new descriptor as a pending entry, [`PENDING_BIT`]), one `DSB ISHST`, the TLBIs (one
//!    `TLBI VMALLE1IS` beyond [`crate::hugetlb_vmemmap::HvoOptions::flush_all_threshold`], as
//!    HVO's batches), one `DSB ISH`, then every entry gets its new descriptor (entry `8k`
//!    read-write onto frame `k`, `8k+1..8k+7` read-only onto it), one `DSB ISHST` + `ISB`:
//!    break-before-make for every output-address change (ARM ARM D8.16.1);
//! 5. turns the old head into the head of part 0 (its order).
//!
//! Nothing is restored: the whole 16 MiB is never allocated. 511 frames are allocated, none
//! freed. Linux instead restores the whole folio's vmemmap (`hugetlb_vmemmap_restore_folios()`,
//! 4095 frames), rewrites the descriptors, and optimizes the parts again
//! (`prep_and_add_allocated_folios()` → `hugetlb_vmemmap_optimize_folios()`, 3584 frames freed):
//! that is [`DemoteMode::RestoreThenSplit`] here, kept for comparison.
//!
//! # Shared tail design
//!
//! Under [`TailDesign::Shared`] ([`crate::hvo_tails`]) an optimized 1 GiB folio's pages
//! 1..4095 map the shared read-only tail page of order 18, and page 0 stays in place. The
//! direct demote then checks that layout, takes the shared tail page of order 9 (made on first
//! use, kept, as HVO's), fills each part's new page 0 with head `k` and 63 mask-encoded tails,
//! and in the one break window remaps entries `1..4095`: `8k` read-write onto part `k`'s frame
//! (`k >= 1`), `8k+1..8k+7` read-only onto the order-9 tail page (part 0's too: they leave the
//! order-18 page). Part 0's 63 tails in page 0 are rewritten in place with the order-9 mask
//! word (both masks name the same head for them). 511 frames, 4095 entries.
//!
//! # Other cases
//!
//! - A folio that is not optimized: its descriptors are rewritten (each part laid out as a
//!   compound page of the smaller order); if HVO is on ([`hvo_enabled`]), the parts are then
//!   optimized in batches of [`PART_BATCH`] (`Hvo::optimize_folios`), as Linux's
//!   `prep_and_add_allocated_folios()` does.
//! - An optimized folio while HVO is off: restored, then rewritten (not optimized again).
//! - Errors (data-carrying [`DemoteError`]; the folio handle comes back with the error, whole
//!   and as it was): no smaller size, a folio in use (reference count not 0: only free, frozen
//!   folios are demoted), broken descriptors, a vmemmap not laid out as HVO leaves it, no
//!   memory, and an entry changed under the lock (the window is then closed with every entry
//!   put back as it was and the frames given back).
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

use crate::addr::{Pfn, PhysAddr, VirtAddr, PAGE_SIZE, PMD_SIZE};
use crate::bbm_sync::{BbmSync, NoSync};
use crate::hugetlb::{check_folio, prep_compound, Demoted, Folio, FolioError, HugePageSize};
use crate::hugetlb_vmemmap::{
    folio_is_optimized, folio_vmemmap_range, hugetlb_vmemmap_size, hvo_enabled,
    note_optimized_folios, optimizable_vmemmap_pages, Hvo, HvoError, HvoParts, HvoStats,
    VmemmapFrames, PENDING_BIT,
};
use crate::hvo_tails::{fill_tail_page, init_shared_tail, tail_design, tail_mask_word, TailDesign};
use crate::mapper::FrameAlloc;
use crate::page::{Page, PageFlags, PageState, DESCS_PER_PAGE, ORDER_NONE, PAGE_DESC_SIZE};
use crate::pagewalk::{
    walk_page_range_novma, Entry, Interests, PageWalkOps, WalkAction, WalkError,
};
use crate::pgtable::{bits, Attrs, DescKind, Descriptor, Level, ENTRIES_PER_TABLE};
use crate::phys::PhysMem;
use crate::tlb::{read_entry, MmuOps};
use core::ops::ControlFlow;

/// Why a demote failed. In every case the folio is handed back whole, its descriptors,
/// vmemmap entries and frames as they were.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DemoteError {
    /// The folio's size has no smaller HugeTLB size (2 MiB).
    NoSmallerSize {
        /// The size asked for.
        size: HugePageSize,
    },
    /// The folio is in use: its head reference count is not 0 (only free folios, taken off the
    /// pool's free list and frozen, are demoted).
    InUse {
        /// Head of the folio.
        folio: Pfn,
        /// Its reference count.
        refcount: u32,
    },
    /// The folio's descriptors are broken.
    Folio(FolioError),
    /// The optimized folio's vmemmap is not as HVO leaves it (page 0 writable, every other page
    /// read-only onto it, mapped by pages): the direct demote does not apply.
    Layout {
        /// Head of the folio.
        folio: Pfn,
        /// The vmemmap address where the layout differs.
        va: VirtAddr,
    },
    /// The frame allocator gave `got` of the `needed` frames (they were given back).
    NoMemory {
        /// Frames needed.
        needed: u64,
        /// Frames obtained before the allocator failed.
        got: u64,
    },
    /// A vmemmap entry changed under `init_mm`'s `page_table_lock` between the check and the
    /// write (another CPU edited the table): every entry was put back, the frames given back.
    Changed {
        /// Head of the folio.
        folio: Pfn,
        /// The entry's address.
        va: VirtAddr,
    },
    /// The HVO restore (or a descriptor encoding) failed; nothing changed.
    Hvo(HvoError),
}

/// How an optimized folio is demoted.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DemoteMode {
    /// The parts' vmemmap is made directly from the optimized folio's, in one batch (the
    /// default).
    #[default]
    Direct,
    /// Linux's way: restore the whole vmemmap, rewrite the descriptors, optimize the parts
    /// (for comparison).
    RestoreThenSplit,
}

/// What a demote did, counted by the code doing it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DemoteStats {
    /// Parts made.
    pub parts: u64,
    /// The direct path ran (no restore).
    pub direct: bool,
    /// Parts whose vmemmap is optimized afterwards.
    pub parts_optimized: u64,
    /// Descriptors written (new pages' descriptors, or rewritten in place).
    pub descriptors_written: u64,
    /// Break windows the direct path opened (HVO's own calls are in `hvo`).
    pub windows: u64,
    /// The HVO counts over the whole demote (restore and optimize included): frames allocated
    /// and freed, entries remapped, TLBIs, DSBs, ISBs, entry writes.
    pub hvo: HvoStats,
    /// Optimizing the parts failed after the demote itself succeeded (the parts are consistent;
    /// those counted in `parts_optimized` are optimized).
    pub optimize_error: Option<HvoError>,
}

/// A demote's outcome: the parts and the counts, or the folio back (unchanged) with the error.
pub type DemoteResult = Result<(Demoted, DemoteStats), (Folio, DemoteError)>;

/// Parts optimized per `Hvo::optimize_folios` call (64 x 7 entries stay under the per-VA TLBI
/// threshold).
pub const PART_BATCH: usize = 64;

/// L3 tables a demoted folio's vmemmap may span (16 MiB for 1 GiB: 8).
const MAX_TABLES: usize = 8;

/// Splits the free, frozen `folio` into folios of the next smaller size (see the module
/// documentation). On success the parts are described by the returned [`Demoted`] (give it to
/// [`crate::hugetlb::HugetlbPool::accept_demoted`]); on failure the folio comes back with the
/// error, unchanged.
pub fn demote_folio<M: PhysMem, O: MmuOps, F: VmemmapFrames, T: FrameAlloc>(
    hvo: &mut Hvo<'_, M, O, F, T>,
    folio: Folio,
    mode: DemoteMode,
) -> DemoteResult {
    let before = hvo.stats();
    let Some(to) = folio.size().demote_size() else {
        let size = folio.size();
        return Err((folio, DemoteError::NoSmallerSize { size }));
    };
    let vm = hvo.parts().vm;
    let head = match vm.get(folio.head_pfn()) {
        Some(h) => h,
        None => {
            let pfn = folio.head_pfn();
            return Err((folio, DemoteError::Folio(FolioError::NoDescriptor { pfn })));
        }
    };
    let refcount = head.refcount();
    if refcount != 0 {
        let pfn = folio.head_pfn();
        return Err((folio, DemoteError::InUse { folio: pfn, refcount }));
    }
    let optimized = folio_is_optimized(vm, &folio);
    let mut st = DemoteStats { parts: 1 << (folio.order() - to.order()), ..Default::default() };
    if optimized && hvo_enabled() && mode == DemoteMode::Direct {
        let mut p = hvo.parts();
        if let Err(e) = demote_direct(&mut p, &folio, to.order(), &mut st) {
            return Err((folio, e));
        }
        st.direct = true;
        st.parts_optimized = st.parts;
    } else {
        if optimized {
            if let Err(e) = hvo.restore_folios(core::slice::from_ref(&folio)) {
                return Err((folio, DemoteError::Hvo(e)));
            }
        }
        if let Err(e) = check_folio(&folio, vm) {
            return Err((folio, DemoteError::Folio(e)));
        }
        for k in 0..st.parts {
            let h = Pfn(folio.head_pfn().0 + (k << to.order()));
            prep_compound(vm, h, to.order());
            // Free and frozen, as the folio was.
            vm.page(h).set_refcount(0);
        }
        st.descriptors_written = folio.nr_pages();
    }
    let d = Demoted::new(folio, to.order());
    if !st.direct && hvo_enabled() && optimizable_vmemmap_pages(to.order()) > 0 {
        let per = (st.parts as usize).min(PART_BATCH);
        for c in 0..(st.parts as usize).div_ceil(per) {
            let fs: [Folio; PART_BATCH] =
                core::array::from_fn(|j| d.part(((c * per + j) as u64).min(st.parts - 1)));
            match hvo.optimize_folios(&fs[..per]) {
                Ok(n) => st.parts_optimized += n,
                Err(e) => {
                    st.optimize_error = Some(e);
                    break;
                }
            }
        }
    }
    st.hvo = hvo.stats().since(before);
    Ok((d, st))
}

/// What the layout check found.
struct Layout {
    page0: PhysAddr,
    rw: Attrs,
    tables: [PhysAddr; MAX_TABLES],
}

/// What the pages after page 0 of an optimized folio map: page 0's frame (seed design) or the
/// shared tail page of the folio's order (shared design, [`crate::hvo_tails`]).
#[derive(Clone, Copy)]
enum Alias {
    Page0,
    Shared(PhysAddr),
}

/// The check pass: every entry of the optimized folio's vmemmap mapped by pages, page 0
/// writable, every other page read-only onto page 0's frame; records the L3 tables.
struct LayoutWalk {
    folio: Pfn,
    start: VirtAddr,
    alias: Alias,
    page0: Option<(PhysAddr, Attrs)>,
    tables: [Option<PhysAddr>; MAX_TABLES],
}

impl LayoutWalk {
    fn bad(&self, va: VirtAddr) -> DemoteError {
        DemoteError::Layout { folio: self.folio, va }
    }
}

impl PageWalkOps for LayoutWalk {
    type Output = ();
    type Error = DemoteError;
    const INTERESTS: Interests =
        Interests::PUD.union(Interests::PMD).union(Interests::PTE).union(Interests::HOLE);

    fn pud_entry(&mut self, e: &Entry) -> Result<WalkAction<()>, DemoteError> {
        match e.kind() {
            DescKind::Table => Ok(WalkAction::Subtree),
            _ => Err(self.bad(e.addr())),
        }
    }

    fn pmd_entry(&mut self, e: &Entry) -> Result<WalkAction<()>, DemoteError> {
        let i = ((e.addr() - self.start) / PMD_SIZE) as usize;
        match (e.kind(), self.tables.get_mut(i)) {
            (DescKind::Table, Some(t)) => {
                *t = Some(e.desc().table_address());
                Ok(WalkAction::Subtree)
            }
            _ => Err(self.bad(e.addr())),
        }
    }

    fn pte_entry(&mut self, e: &Entry) -> Result<WalkAction<()>, DemoteError> {
        let (pa, attrs) = e.desc().decode_leaf(Level::L3).ok_or(self.bad(e.addr()))?;
        if e.addr() == self.start {
            if !attrs.is_writable() {
                return Err(self.bad(e.addr()));
            }
            self.page0 = Some((pa, attrs));
        } else {
            let target = match (self.alias, self.page0) {
                (Alias::Shared(t), _) => Some(t),
                (Alias::Page0, p0) => p0.map(|(p0, _)| p0),
            };
            if target != Some(pa) || attrs.is_writable() {
                return Err(self.bad(e.addr()));
            }
        }
        Ok(WalkAction::Continue)
    }

    fn pte_hole(
        &mut self,
        start: VirtAddr,
        _end: VirtAddr,
        _depth: Level,
    ) -> Result<ControlFlow<()>, DemoteError> {
        Err(self.bad(start))
    }
}

fn check_layout<M: PhysMem, O: MmuOps, F>(
    p: &HvoParts<'_, '_, M, O, F>,
    folio: &Folio,
    alias: Alias,
) -> Result<Layout, DemoteError> {
    let (start, end) = folio_vmemmap_range(folio);
    let mut w = LayoutWalk {
        folio: folio.head_pfn(),
        start,
        alias,
        page0: None,
        tables: [None; MAX_TABLES],
    };
    if (end - start).div_ceil(PMD_SIZE) as usize > MAX_TABLES {
        return Err(DemoteError::Hvo(HvoError::UnsupportedOrder { order: folio.order() }));
    }
    match walk_page_range_novma(p.guard, p.mem, start, end, &mut w) {
        Ok(_) => {}
        Err(WalkError::Callback(e)) => return Err(e),
        Err(WalkError::InvalidRange { start, end, .. }) => {
            return Err(DemoteError::Hvo(HvoError::BadRange { start, end }))
        }
    }
    let (page0, rw) = w.page0.ok_or(DemoteError::Layout { folio: folio.head_pfn(), va: start })?;
    let mut tables = [PhysAddr(0); MAX_TABLES];
    for (i, t) in w.tables.iter().enumerate() {
        if (i as u64) * PMD_SIZE < end - start {
            tables[i] = t.ok_or(DemoteError::Layout { folio: folio.head_pfn(), va: start })?;
        }
    }
    Ok(Layout { page0, rw, tables })
}

/// The descriptor at byte `off` of the unmapped frame `pa`.
///
/// # Safety
/// `pa` is a frame the caller owns (from the frame allocator, not mapped anywhere yet),
/// reachable through `mem`; `off` is a multiple of 64 below 4096.
unsafe fn frame_desc<M: PhysMem>(mem: &M, pa: PhysAddr, off: u64) -> &Page {
    // SAFETY: the frame is ours and 4 KiB aligned, so `pa + off` is a 64-byte aligned slot of
    // it; `Page` is all atomics (any bit pattern is valid, shared references are fine).
    unsafe { &*mem.ptr(pa + off).cast::<Page>() }
}

/// Link word of the prepared-frame chain: head `k`'s `private` word (0 once mapped).
const NO_LINK: u64 = u64::MAX;

/// The direct demote of an optimized folio (steps 1-5 of the module documentation).
fn demote_direct<M: PhysMem, O: MmuOps, F: VmemmapFrames>(
    p: &mut HvoParts<'_, '_, M, O, F>,
    folio: &Folio,
    to: u8,
    st: &mut DemoteStats,
) -> Result<(), DemoteError> {
    let shared = tail_design() == TailDesign::Shared;
    let alias = match (shared, p.vm.tail_pages().get(folio.order())) {
        (false, _) => Alias::Page0,
        (true, Some(t)) => Alias::Shared(t),
        // Shared design but no tail page of the folio's order: not laid out by HVO.
        (true, None) => {
            let (start, _) = folio_vmemmap_range(folio);
            return Err(DemoteError::Layout { folio: folio.head_pfn(), va: start });
        }
    };
    let layout = check_layout(p, folio, alias)?;
    let (start, _) = folio_vmemmap_range(folio);
    let pp = hugetlb_vmemmap_size(to) / PAGE_SIZE; // vmemmap pages per part
    let total = hugetlb_vmemmap_size(folio.order()) / PAGE_SIZE;
    let parts = 1u64 << (folio.order() - to);
    if optimizable_vmemmap_pages(to) == 0 {
        return Err(DemoteError::Hvo(HvoError::UnsupportedOrder { order: to }));
    }
    let (mem, vm) = (p.mem, p.vm);
    // Shared design: pages 8k+1..8k+7 of every part (part 0's too) map the shared tail page of
    // the smaller order, made on first use before anything else (it stays, as HVO's does).
    let (first, old_target, tails_to) = match alias {
        Alias::Page0 => (pp, layout.page0, None),
        Alias::Shared(t) => {
            let t9 = ensure_tail_page(p, to).map_err(DemoteError::Hvo)?;
            (1, t, Some(t9))
        }
    };
    let needed = parts - 1;
    // 2. All frames first, chained through their first word (nothing maps them).
    let mut chain: Option<PhysAddr> = None;
    for got in 0..needed {
        match p.frames.alloc() {
            Some(pa) => {
                p.stats.frames_allocated += 1;
                let link = chain.map_or(NO_LINK, |c| c.0);
                // SAFETY: a frame the allocator just gave us, mapped nowhere.
                unsafe { core::ptr::write_volatile(mem.ptr(pa).cast::<u64>(), link) };
                chain = Some(pa);
            }
            None => {
                while let Some(pa) = chain {
                    // SAFETY: a frame of our chain (see above).
                    let link = unsafe { core::ptr::read_volatile(mem.ptr(pa).cast::<u64>()) };
                    chain = (link != NO_LINK).then_some(PhysAddr(link));
                    give_back(&mut *p.frames, p.stats, pa);
                }
                return Err(DemoteError::NoMemory { needed, got });
            }
        }
    }
    // 3. Each frame laid out as part k's page 0, for k = parts-1 down to 1, and chained through
    // head k's `private` word, so that the chain runs from part 1 upwards.
    let mut ready: Option<PhysAddr> = None;
    for k in (1..parts).rev() {
        let Some(pa) = chain else { break };
        // SAFETY: a frame of our chain.
        let link = unsafe { core::ptr::read_volatile(mem.ptr(pa).cast::<u64>()) };
        chain = (link != NO_LINK).then_some(PhysAddr(link));
        let head_pfn = Pfn(folio.head_pfn().0 + (k << to));
        let head_va = vm.page(head_pfn);
        for j in 1..DESCS_PER_PAGE {
            // SAFETY: our frame, not mapped yet; j * 64 < 4096.
            let t = unsafe { frame_desc(mem, pa, j * PAGE_DESC_SIZE) };
            if shared {
                // Mask-encoded: the word depends on the order only, not on the address.
                init_shared_tail(t, to);
            } else {
                t.init(PageState::HugeTlb);
                t.set_order(ORDER_NONE);
                t.set_compound_head(head_va);
            }
        }
        // SAFETY: as above, offset 0.
        let h = unsafe { frame_desc(mem, pa, 0) };
        h.init(PageState::HugeTlb);
        h.set_flags(PageFlags::HEAD | PageFlags::HUGETLB | PageFlags::VMEMMAP_OPTIMIZED);
        h.set_order(to);
        h.set_private(ready.map_or(NO_LINK, |r| r.0));
        ready = Some(pa);
        st.descriptors_written += DESCS_PER_PAGE;
    }
    // 4. One break window for every entry that changes.
    let mut nosync = NoSync;
    let sync: &mut dyn BbmSync = match p.sync.as_deref_mut() {
        Some(s) => s,
        None => &mut nosync,
    };
    let before = p.mmu.stats();
    let entry = |i: u64| -> (*mut u64, VirtAddr) {
        let t = layout.tables[(i / ENTRIES_PER_TABLE as u64) as usize];
        let slot = mem.ptr(t + (i % ENTRIES_PER_TABLE as u64) * 8).cast::<u64>();
        (slot, start + i * PAGE_SIZE)
    };
    sync.op_begin();
    let mm = p.guard.mm();
    let ptl = mm.page_table_lock();
    sync.break_begin(start + first * PAGE_SIZE, start + total * PAGE_SIZE);
    st.windows += 1;
    let (first_slot, _) = entry(first);
    // SAFETY: a live L3 entry of init_mm (the check pass found the table; the walk lock and the
    // page-table lock keep it).
    let old = unsafe { read_entry(first_slot) };
    let mut failed = None;
    let mut cur = ready;
    let mut written = 0u64;
    for i in first..total {
        let (slot, va) = entry(i);
        // SAFETY: as above.
        let now = unsafe { read_entry(slot) };
        let still =
            now == old && now.decode_leaf(Level::L3).is_some_and(|(pa, _)| pa == old_target);
        if !still {
            failed = Some(DemoteError::Changed { folio: folio.head_pfn(), va });
            break;
        }
        if i % pp == 0 && i != pp {
            // Next part's frame: follow head k's link.
            let Some(c) = cur else { break };
            // SAFETY: our prepared frame (not mapped yet).
            let link = unsafe { frame_desc(mem, c, 0) }.private();
            cur = (link != NO_LINK).then_some(PhysAddr(link));
        }
        let Some(own) = cur else { break };
        let (frame, attrs) = match (i % pp == 0, tails_to) {
            (true, _) => (own, layout.rw),
            (false, None) => (own, layout.rw.read_only()),
            (false, Some(t9)) => (t9, layout.rw.read_only()),
        };
        let new = match Descriptor::leaf(Level::L3, frame, attrs) {
            Ok(d) => d,
            Err(_) => {
                failed = Some(DemoteError::Hvo(HvoError::Encode { pa: frame }));
                break;
            }
        };
        // SAFETY: a live L3 vmemmap entry of the folio we own (frozen, off the free list:
        // `Hvo::new`'s contract keeps other CPUs off its descriptors); valid -> invalid needs no
        // break. The invalid entry keeps the new descriptor (pending).
        unsafe { p.mmu.write_entry(slot, va, Level::L3, pending(new)) };
        written += 1;
    }
    // DSB ISHST, once: every invalid entry is visible to the table walkers before any TLBI
    // (ARM ARM D8.16.1, break-before-make).
    p.mmu.dsb_ishst();
    if written > p.opts.flush_all_threshold {
        // TLBI VMALLE1IS: one invalidation of everything instead of more than the threshold of
        // by-VA ones (Linux: flush_tlb_kernel_range() -> flush_tlb_all() beyond MAX_DVM_OPS).
        p.mmu.tlbi_vmalle1is();
        p.stats.tlbi_flush_all += 1;
    } else {
        for i in first..first + written {
            // TLBI VAAE1IS: drop the old translation of this page on every core
            // (break-before-make), completed by the DSB ISH below.
            p.mmu.tlbi_vaae1is(entry(i).1);
        }
    }
    // DSB ISH, once: every TLBI has completed on every core before any new entry is written
    // (ARM ARM "Ordering and completion of TLB maintenance instructions").
    p.mmu.dsb_ish();
    for i in first..first + written {
        let (slot, va) = entry(i);
        // SAFETY: as above.
        let d = unsafe { read_entry(slot) };
        let new = if failed.is_some() { old } else { from_pending(d) };
        // SAFETY: the entry is invalid and its break has completed (TLBIs + DSB ISH above); the
        // new entry maps a frame we own (or, on failure, the frame it mapped before).
        unsafe { p.mmu.write_entry(slot, va, Level::L3, new) };
    }
    // DSB ISHST: the new entries are visible to the table walkers; ISB: this core's later
    // instructions translate with them (ARM ARM "Ordering of translation table walks").
    p.mmu.dsb_ishst();
    p.mmu.isb();
    sync.break_end();
    drop(ptl);
    let m = p.mmu.stats().since(before);
    p.stats.tlbi += m.tlbi;
    p.stats.dsb += m.dsb;
    p.stats.isb += m.isb;
    p.stats.entry_writes += m.entry_writes;
    // The prepared frames: their links cleared (mapped, success) or freed (failure: they were
    // only ever behind invalid entries, so no TLB holds them and no grace period is needed).
    let mut c = ready;
    while let Some(pa) = c {
        // SAFETY: our prepared frame; on success it is now mapped read-write at entry 8k, and
        // this core owns the folio's descriptors.
        let h = unsafe { frame_desc(mem, pa, 0) };
        let link = h.private();
        c = (link != NO_LINK).then_some(PhysAddr(link));
        if failed.is_some() {
            give_back(&mut *p.frames, p.stats, pa);
        } else {
            h.set_private(0);
        }
    }
    sync.op_end();
    if let Some(e) = failed {
        return Err(e);
    }
    p.stats.ptes_remapped += written;
    // 5. The old head is part 0's head. Shared design: its 63 tails in page 0 (writable, in
    // place) get the smaller order's mask word; both masks give the same head for them, so no
    // lookup sees a wrong answer in between.
    if shared {
        for j in 1..DESCS_PER_PAGE {
            let t = vm.page(Pfn(folio.head_pfn().0 + j));
            t.set_compound_word(tail_mask_word(to));
        }
        st.descriptors_written += DESCS_PER_PAGE - 1;
    }
    vm.page(folio.head_pfn()).set_order(to);
    note_optimized_folios(parts - 1);
    Ok(())
}

/// Shared design: the tail page of `order` (as HVO's own `ensure_tail_page`): allocated and
/// filled on first use, published once; another CPU's page wins a race and ours goes back.
fn ensure_tail_page<M: PhysMem, O: MmuOps, F: VmemmapFrames>(
    p: &mut HvoParts<'_, '_, M, O, F>,
    order: u8,
) -> Result<PhysAddr, HvoError> {
    if let Some(pa) = p.vm.tail_pages().get(order) {
        return Ok(pa);
    }
    let pa = p.frames.alloc().ok_or(HvoError::NoMemory { needed: 1, got: 0 })?;
    p.stats.frames_allocated += 1;
    // SAFETY: a frame the allocator just gave us, mapped nowhere yet, reachable through
    // `p.mem` (`Hvo::new`'s contract).
    unsafe { fill_tail_page(p.mem.ptr(pa), order) };
    let (cur, ours) = p.vm.tail_pages().publish(order, pa);
    if ours {
        p.stats.shared_tail_pages += 1;
    } else {
        give_back(&mut *p.frames, p.stats, pa);
    }
    Ok(cur)
}

/// Gives an unused frame back to the frame allocator, counting it.
fn give_back(frames: &mut impl VmemmapFrames, stats: &mut HvoStats, pa: PhysAddr) {
    if frames.free(pa) {
        stats.frames_freed += 1;
    } else {
        stats.free_failures += 1;
    }
}

/// The invalid entry standing for `new` until the batch's TLBIs have completed (as HVO's
/// batched passes: [`PENDING_BIT`] in an invalid entry, which the walker ignores).
const fn pending(new: Descriptor) -> Descriptor {
    Descriptor((new.bits() & !bits::VALID) | PENDING_BIT)
}

/// The descriptor a [`pending`] entry stands for.
const fn from_pending(d: Descriptor) -> Descriptor {
    Descriptor((d.bits() & !PENDING_BIT) | bits::VALID)
}
