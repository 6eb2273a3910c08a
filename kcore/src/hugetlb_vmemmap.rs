//! HugeTLB Vmemmap Optimization (HVO): Linux's `mm/hugetlb_vmemmap.c` on ARMv8, with
//! break-before-make.
//!
//! # What is saved
//!
//! A HugeTLB folio of order `o` has `2^o` descriptors of 64 bytes: 32 KiB (8 vmemmap pages) for a
//! 2 MiB folio, 16 MiB (4096 vmemmap pages, over 8 vmemmap 2 MiB blocks) for a 1 GiB folio.
//! Every descriptor but the head is a tail, and the tails are byte-for-byte identical
//! ([`crate::hugetlb::prep_compound`] writes the same state, order, links and
//! `compound_head = &head | 1` into each; [`HvoOptions::verify_tails`] checks it before
//! optimizing). So vmemmap pages 1..N of the folio can all be the *same* frame: HVO keeps page 0
//! (the head and 63 tails), remaps pages 1..N read-only onto page 0's frame and frees their
//! frames: 7 frames per 2 MiB folio, 4095 per 1 GiB folio.
//!
//! # One walker, callbacks only
//!
//! Every pass over a folio's vmemmap is the same [`walk_page_range_novma`] over `init_mm`,
//! holding `mmap_lock` for **read** (enough for kernel page tables, see [`crate::mm`]), with the
//! same [`PageWalkOps`] implementation (`HvoWalk`). Its callbacks are:
//! - `pmd_entry`: a 2 MiB vmemmap *block* covering the folio's descriptors is split into a table
//!   of 512 page entries mapping the same frames with the same attributes (break-before-make on
//!   the live entry), then the callback returns [`WalkAction::Subtree`] so that the walker, which
//!   re-reads the entry, visits the new PTEs in the same walk. The **self-hosted check** sits
//!   here: if the frames backing the block carry [`PageFlags::VMEMMAP_SELF_HOSTED`]
//!   (memmap-on-memory, [`crate::vmemmap::SelfHosted`]), HVO is refused with
//!   [`HvoError::SelfHostedVmemmap`]: never split, never freed.
//! - `pte_entry`: the work on each vmemmap page, chosen by a strategy: *split-only* (nothing),
//!   *optimize* (remap tails read-only onto page 0, collect the old frames for freeing) or
//!   *restore* (copy page 0 into a fresh frame, turn its copied head back into a tail, remap the
//!   entry read-write onto it).
//! - `pte_hole`: finds the entries a batched pass left pending (below).
//!
//! Each operation walks its folios in phases, all with that one walker: a *check* pass (dry run:
//! every entry mapped, nothing self-hosted, the folio's state as the tables say, and a count of
//! the table pages and frames needed), then — after every allocation has succeeded, so that a
//! failure changes nothing — the *apply* pass. Linux too allocates the restore frames before it
//! touches an entry; here the split tables are allocated up front as well.
//!
//! # Break-before-make, and batching
//!
//! Replacing a valid entry by one with another output address or size needs break-before-make
//! (ARM ARM D8.16.1, "Using break-before-make when updating translation table entries"): write
//! an invalid entry; DSB so the table walkers see it; TLBI of every TLB entry holding the old
//! translation; DSB ISH so the TLBI has completed; only then the new entry; then DSB ISHST so
//! the walkers see it and ISB for the local instruction stream.
//!
//! - The single-folio calls ([`Hvo::optimize_folio`], [`Hvo::restore_folio`]) do that sequence
//!   for each entry (`TLBI VAAE1IS` of the page), with one DSB ISHST + ISB at the end.
//! - The batched calls ([`Hvo::optimize_folios`], [`Hvo::restore_folios`]) first split every
//!   block of every folio, then write the invalid entries of the whole batch, then **one**
//!   `DSB ISHST`, the TLBIs (one `TLBI VAAE1IS` per entry, or a single `TLBI VMALLE1IS` when the
//!   batch has more than [`HvoOptions::flush_all_threshold`] entries, like Linux's
//!   `flush_tlb_kernel_range()` falling back to `flush_tlb_all()` beyond `MAX_DVM_OPS`), **one**
//!   `DSB ISH`, then all the new entries and one `DSB ISHST` + `ISB`. The invalid entry written
//!   in the first step keeps the new descriptor in its ignored bits, tagged with a software bit
//!   ([`PENDING_BIT`]); the TLBI and completion passes find these entries through `pte_hole`.
//!   Frames to be freed are linked through their descriptors' `next` field (Linux: `page->lru`)
//!   and only handed to the allocator after the TLBIs completed.
//!
//! [`HvoStats`] accumulates what the code did: splits, entries remapped and restored, frames
//! handed to the allocator and taken from it, and the TLBIs, DSBs, ISBs and entry writes the
//! [`MmuOps`] backend counted while HVO ran. Nothing in it is computed from a formula.
//!
//! # Fake heads
//!
//! After remapping, the first descriptor of every remapped vmemmap page *is* the head (same
//! frame), so it reads `PG_head`. [`crate::page::Page::compound_head`] resolves those fake heads
//! once [`set_fake_head_fixup`] is on (Linux's `page_fixed_fake_head()`); HVO turns it on before
//! its first remap and leaves it on. [`page_is_head`], [`page_is_tail`] and
//! [`page_compound_head_pfn`] give the true answer for every pfn.
//!
//! # Tail designs
//!
//! [`crate::hvo_tails`] selects the design at boot (`hvo_tails=seed|shared`). Everything above is
//! the seed design. In the **shared** design the tails are mask-encoded (byte-identical across
//! folios of an order), page 0 stays mapped where it is (no copy, no remap, no TLBI), and pages
//! 1..N are remapped read-only onto the one shared tail page of the folio's order
//! ([`crate::hvo_tails::TailPages`] in the [`Vmemmap`], allocated on first use and counted in
//! [`HvoStats::shared_tail_pages`]); restore copies the shared page into fresh frames. No fake
//! head ever appears, so the fake-head fix-up is never turned on.
//!
//! # Controls
//!
//! `hugetlb_free_vmemmap=on|off` sets the initial value ([`apply_boot_param`]) of the runtime
//! switch (Linux's `vm.hugetlb_optimize_vmemmap`, [`hvo_enabled`] / [`set_hvo_enabled`]), which
//! [`Hvo::maybe_optimize`] consults: it only affects folios allocated afterwards.
//!
//! # Measuring
//!
//! [`vmemmap_usage`] walks the vmemmap range of `init_mm` and adds up the distinct frames behind
//! it. [`free_vmemmap_pages_per_folio`] is the configuration statement Linux prints at boot
//! ("HugeTLB: %d KiB vmemmap can be freed for a %s page"), computed from the sizes in effect.
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

use crate::addr::{Pfn, PhysAddr, VirtAddr, PAGE_SIZE, PMD_SIZE, PUD_SIZE};
pub use crate::bbm_sync::{BbmSync, NoSync};
use crate::buddy::{Buddy, BuddyError};
use crate::hugetlb::{check_folio, Folio, FolioError};
use crate::hvo_phase::{self as phase, HvoPhase};
use crate::hvo_tails::{self, TailDesign, TailsError};
use crate::layout::{VMEMMAP_SIZE, VMEMMAP_START};
use crate::mapper::FrameAlloc;
use crate::mm::{Kernel, Mm, MmapReadGuard, SpinGuard};
use crate::page::{set_fake_head_fixup, Page, PageFlags, PageState, PAGE_DESC_SIZE};
use crate::pagewalk::{
    walk_page_range_novma, Entry, Interests, PageWalkOps, WalkAction, WalkError,
};
use crate::pgtable::{bits, Attrs, DescKind, Descriptor, Level, ENTRIES_PER_TABLE};
use crate::phys::PhysMem;
use crate::tlb::{read_entry, MmuOps, MmuStats};
use crate::vmemmap::Vmemmap;
use core::ops::ControlFlow;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

// ---------------------------------------------------------------------------------------------
// Controls
// ---------------------------------------------------------------------------------------------

/// `vm.hugetlb_optimize_vmemmap`, initialised from `hugetlb_free_vmemmap=` (default on).
static HVO_ENABLED: AtomicBool = AtomicBool::new(true);
/// Folios whose vmemmap is currently optimized (all `Hvo` instances).
static NR_OPTIMIZED: AtomicU64 = AtomicU64::new(0);

/// Is HVO enabled for folios allocated from now on?
pub fn hvo_enabled() -> bool {
    HVO_ENABLED.load(Relaxed)
}

/// The runtime switch (Linux's `vm.hugetlb_optimize_vmemmap`). Only affects folios allocated
/// afterwards: optimized folios stay optimized until they are dissolved.
pub fn set_hvo_enabled(on: bool) {
    HVO_ENABLED.store(on, Relaxed);
}

/// Applies the boot parameter `hugetlb_free_vmemmap=on|off` (`None`: not given, keep the
/// default, on).
pub fn apply_boot_param(hugetlb_free_vmemmap: Option<bool>) {
    if let Some(on) = hugetlb_free_vmemmap {
        set_hvo_enabled(on);
    }
}

/// Number of folios whose vmemmap is optimized right now.
pub fn nr_optimized_folios() -> u64 {
    NR_OPTIMIZED.load(Relaxed)
}

// ---------------------------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------------------------

/// Bytes of descriptors of a folio of `order` (Linux's `hugetlb_vmemmap_size()`).
pub const fn hugetlb_vmemmap_size(order: u8) -> u64 {
    (1u64 << order) * PAGE_DESC_SIZE
}

/// Vmemmap pages HVO can free for a folio of `order` whatever the switch says: all but the
/// first, if the descriptors fill whole pages and more than one (Linux's
/// `hugetlb_vmemmap_optimizable_size() / PAGE_SIZE`).
pub const fn optimizable_vmemmap_pages(order: u8) -> u64 {
    let size = hugetlb_vmemmap_size(order);
    if !size.is_multiple_of(PAGE_SIZE) || size < 2 * PAGE_SIZE {
        0
    } else {
        size / PAGE_SIZE - 1
    }
}

/// Vmemmap pages the current settings free per folio of `order`: 0 when HVO is disabled.
/// A statement of configuration (Linux prints it at boot as "HugeTLB: %d KiB vmemmap can be
/// freed for a %s page"), not a measurement: see [`HvoStats`] and [`vmemmap_usage`] for those.
pub fn free_vmemmap_pages_per_folio(order: u8) -> u64 {
    if hvo_enabled() {
        optimizable_vmemmap_pages(order)
    } else {
        0
    }
}

/// The kernel VA of pfn's descriptor in `init_mm` (the vmemmap at [`VMEMMAP_START`]).
///
/// The page tables are always walked at these addresses; the [`Vmemmap`] handed to [`Hvo`] is
/// only how the CPU reaches descriptors (on the target it is [`Vmemmap::kernel`], at the same
/// addresses).
pub const fn vmemmap_va(pfn: Pfn) -> VirtAddr {
    VirtAddr(VMEMMAP_START + pfn.0 * PAGE_DESC_SIZE)
}

/// The range of `init_mm` VAs holding the descriptors of `folio`.
pub fn folio_vmemmap_range(folio: &Folio) -> (VirtAddr, VirtAddr) {
    let start = vmemmap_va(folio.head_pfn());
    (start, start + hugetlb_vmemmap_size(folio.order()))
}

// ---------------------------------------------------------------------------------------------
// Errors, options, statistics
// ---------------------------------------------------------------------------------------------

/// Why an HVO operation failed. Unless noted, nothing was changed: no table entry written, no
/// frame kept, the folio in the state it was.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HvoError {
    /// The frames backing the folio's vmemmap host their own memmap (memmap-on-memory): HVO
    /// must neither split nor free them.
    SelfHostedVmemmap {
        /// Head of the folio.
        folio: Pfn,
        /// The vmemmap address whose backing frame is self-hosted.
        vmemmap_va: VirtAddr,
        /// The backing frame.
        backing: Pfn,
    },
    /// Restore: the allocator gave `got` of the `needed` frames (they were given back).
    NoMemory {
        /// Frames needed.
        needed: u64,
        /// Frames obtained before the allocator failed.
        got: u64,
    },
    /// Split: the table allocator gave `got` of the `needed` table pages (given back).
    NoPageTables {
        /// Table pages needed.
        needed: u64,
        /// Table pages obtained before the allocator failed.
        got: u64,
    },
    /// Part of the folio's vmemmap is not mapped.
    NotMapped {
        /// First unmapped address.
        va: VirtAddr,
        /// Level of the invalid entry.
        level: Level,
    },
    /// The vmemmap is mapped in a way HVO does not handle (a 1 GiB block).
    UnexpectedMapping {
        /// Address of the entry.
        va: VirtAddr,
        /// Its level.
        level: Level,
        /// What it is.
        kind: DescKind,
    },
    /// The tables disagree with the folio's optimized flag (e.g. a restore finds a tail page
    /// not mapped onto page 0).
    Inconsistent {
        /// Head of the folio.
        folio: Pfn,
        /// The vmemmap address where the disagreement was found.
        va: VirtAddr,
    },
    /// A tail descriptor differs from the first tail (or, shared tail design, the first tail
    /// differs from the shared page's tails, index 1): remapping would lose it.
    TailMismatch {
        /// Head of the folio.
        folio: Pfn,
        /// Index of the descriptor in the folio.
        index: u64,
    },
    /// The folio's descriptors are broken.
    Folio(FolioError),
    /// The folio's vmemmap is not whole pages, or a single page (nothing to free).
    UnsupportedOrder {
        /// The order.
        order: u8,
    },
    /// The walker rejected the range (a bug).
    BadRange {
        /// Start.
        start: VirtAddr,
        /// End.
        end: VirtAddr,
    },
    /// A descriptor could not be encoded (a bug).
    Encode {
        /// The address.
        pa: PhysAddr,
    },
    /// The folio's head reference count is not 0: HVO only works on frozen folios (Linux's
    /// `VM_WARN_ON_ONCE_FOLIO(folio_ref_count(folio), folio)`), so that a speculative
    /// `folio_try_get()` on another CPU never writes a descriptor HVO copies or makes read-only.
    NotFrozen {
        /// Head of the folio.
        folio: Pfn,
        /// Its reference count.
        refcount: u32,
    },
    /// The operation was done (the folios are optimized and flagged), but the frame allocator
    /// refused `count` of the freed vmemmap frames: they are lost to the allocator, keep their
    /// `Vmemmap` state, and [`vmemmap_census`] counts them as frames nothing maps.
    FramesNotFreed {
        /// Frames refused.
        count: u64,
    },
}

/// Tunables. [`Default`] gives Linux's behaviour.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct HvoOptions {
    /// Optimize: copy page 0 to a freshly allocated frame and map the folio's vmemmap onto the
    /// copy, freeing the old page 0 too (Linux does this when the allocation succeeds, so the
    /// kept page comes from the allocator rather than from the boot-time vmemmap). The number
    /// of frames saved is the same. If the allocation fails, page 0 is kept.
    pub replace_head_page: bool,
    /// Optimize: check that every tail descriptor equals the first tail before remapping.
    pub verify_tails: bool,
    /// Batched calls: above this many entries, one `TLBI VMALLE1IS` replaces the per-page
    /// `TLBI VAAE1IS`s (Linux: `MAX_DVM_OPS` = `PTRS_PER_PTE` = 512).
    pub flush_all_threshold: u64,
    /// Refuse ([`HvoError::NotFrozen`]) a folio whose head reference count is not 0. `false`
    /// only as a test's negative control (showing what the freeze prevents).
    pub require_frozen: bool,
    /// Re-read every live entry under `init_mm`'s `page_table_lock` before replacing it, and
    /// only replace what the walker saw (Linux's `vmemmap_split_pmd()` re-check). `false` only
    /// as a test's negative control (showing the double split it prevents).
    pub recheck_entries: bool,
}

/// Linux's `MAX_DVM_OPS` on arm64 (`PTRS_PER_PTE`).
pub const MAX_DVM_OPS: u64 = ENTRIES_PER_TABLE as u64;

impl Default for HvoOptions {
    fn default() -> Self {
        HvoOptions {
            replace_head_page: true,
            verify_tails: true,
            flush_all_threshold: MAX_DVM_OPS,
            require_frozen: true,
            recheck_entries: true,
        }
    }
}

/// What HVO did, counted by the code doing it. `tlbi`, `dsb`, `isb` and `entry_writes` are the
/// [`MmuOps`] backend's counts of the instructions and stores executed during HVO calls.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct HvoStats {
    /// Folios optimized.
    pub folios: u64,
    /// Folios restored.
    pub folios_restored: u64,
    /// 2 MiB vmemmap blocks split into page tables.
    pub splits: u64,
    /// Splits skipped because the block had been split by someone else since the walker read
    /// it (found under `page_table_lock`; the table prepared for it went back unused).
    pub splits_skipped: u64,
    /// Walks that met a vmemmap block in another CPU's split (its level-2 entry invalid, between
    /// break and make), waited for that split under `page_table_lock` and went on from there.
    pub split_waits: u64,
    /// Table pages taken from the table allocator.
    pub tables_allocated: u64,
    /// Tail vmemmap entries remapped read-only onto page 0.
    pub ptes_remapped: u64,
    /// Page 0 entries moved onto a fresh copy ([`HvoOptions::replace_head_page`]).
    pub head_pages_replaced: u64,
    /// Tail vmemmap entries remapped read-write onto a fresh frame (restore).
    pub ptes_restored: u64,
    /// Frames handed to the frame allocator's `free` and accepted.
    pub frames_freed: u64,
    /// Frames the frame allocator refused to take back (leaked).
    pub free_failures: u64,
    /// Frames taken from the frame allocator.
    pub frames_allocated: u64,
    /// TLB invalidations executed (all kinds).
    pub tlbi: u64,
    /// Of those, `TLBI VMALLE1IS` chosen instead of per-page TLBIs for a large batch.
    pub tlbi_flush_all: u64,
    /// DSBs executed.
    pub dsb: u64,
    /// ISBs executed.
    pub isb: u64,
    /// Stores to live translation table entries.
    pub entry_writes: u64,
    /// Shared tail pages allocated (shared tail design: once per order, on first use; also in
    /// `frames_allocated`).
    pub shared_tail_pages: u64,
}

impl HvoStats {
    /// Frames given back to the allocator minus frames taken from it: what the allocator's free
    /// count has gained from HVO (frame allocator only; table pages are in `tables_allocated`).
    pub fn net_frames_freed(&self) -> i64 {
        self.frames_freed as i64 - self.frames_allocated as i64
    }

    /// `self - earlier`, field by field.
    pub fn since(self, e: HvoStats) -> HvoStats {
        self.zip_with(e, |a, b| a - b)
    }

    /// Combines two sets of counts field by field (the one list of fields `since` and `+=` use).
    fn zip_with(self, o: HvoStats, f: impl Fn(u64, u64) -> u64) -> HvoStats {
        HvoStats {
            folios: f(self.folios, o.folios),
            folios_restored: f(self.folios_restored, o.folios_restored),
            splits: f(self.splits, o.splits),
            splits_skipped: f(self.splits_skipped, o.splits_skipped),
            split_waits: f(self.split_waits, o.split_waits),
            tables_allocated: f(self.tables_allocated, o.tables_allocated),
            ptes_remapped: f(self.ptes_remapped, o.ptes_remapped),
            head_pages_replaced: f(self.head_pages_replaced, o.head_pages_replaced),
            ptes_restored: f(self.ptes_restored, o.ptes_restored),
            frames_freed: f(self.frames_freed, o.frames_freed),
            free_failures: f(self.free_failures, o.free_failures),
            frames_allocated: f(self.frames_allocated, o.frames_allocated),
            tlbi: f(self.tlbi, o.tlbi),
            tlbi_flush_all: f(self.tlbi_flush_all, o.tlbi_flush_all),
            dsb: f(self.dsb, o.dsb),
            isb: f(self.isb, o.isb),
            entry_writes: f(self.entry_writes, o.entry_writes),
            shared_tail_pages: f(self.shared_tail_pages, o.shared_tail_pages),
        }
    }

    fn add_mmu(&mut self, m: MmuStats) {
        self.tlbi += m.tlbi;
        self.dsb += m.dsb;
        self.isb += m.isb;
        self.entry_writes += m.entry_writes;
    }
}

/// Adds up the counts of several HVO instances (one per batch, say).
impl core::ops::AddAssign for HvoStats {
    fn add_assign(&mut self, o: HvoStats) {
        *self = self.zip_with(o, |a, b| a + b);
    }
}

// ---------------------------------------------------------------------------------------------
// Frame allocation
// ---------------------------------------------------------------------------------------------

/// Where HVO gets the frames a restore (and the page-0 copy) needs, and where it gives the
/// freed vmemmap frames.
///
/// # Safety
/// `alloc` must return a 4 KiB-aligned frame that nothing else uses until it is passed to
/// `free` (HVO writes it through the [`PhysMem`] it was given, then maps it in the vmemmap).
pub unsafe trait VmemmapFrames {
    /// One frame, or `None` when out of memory.
    fn alloc(&mut self) -> Option<PhysAddr>;
    /// Takes back a frame that no longer backs anything (unmapped, and its TLB entries gone).
    /// Returns `false` if the allocator refused it (it is then leaked).
    fn free(&mut self, pa: PhysAddr) -> bool;
    /// Takes back the `n` contiguous frames from `pa`, as `n` calls of [`free`](Self::free)
    /// would (the default does exactly that); returns how many were accepted. An allocator
    /// may do it with less work per frame (see [`free_vmemmap_frames`]).
    fn free_run(&mut self, pa: PhysAddr, n: u64) -> u64 {
        (0..n).map(|i| u64::from(self.free(pa + i * PAGE_SIZE))).sum()
    }
    /// Up to `max` (at least 1) contiguous frames from one allocation: `(first, count)` with
    /// `1 <= count <= max`, each frame then owned and given back as [`alloc`](Self::alloc)'s
    /// are; `None` when out of memory. The default is one [`alloc`](Self::alloc); an allocator
    /// may hand out a run with less work per frame (see [`alloc_vmemmap_frames`]).
    fn alloc_run(&mut self, max: u64) -> Option<(PhysAddr, u64)> {
        let _ = max;
        self.alloc().map(|pa| (pa, 1))
    }
}

/// Takes one frame from the buddy allocator for the vmemmap: its descriptor becomes
/// [`PageState::Vmemmap`].
pub fn alloc_vmemmap_frame(buddy: &mut Buddy, vm: &Vmemmap) -> Result<PhysAddr, BuddyError> {
    let pfn = buddy.alloc(vm, 0)?;
    let p = vm.page(pfn);
    p.set_state(PageState::Vmemmap);
    Ok(pfn.addr())
}

/// Takes up to `max` (at least 1) contiguous frames for the vmemmap from the buddy allocator in
/// one allocation: the largest block of at most `max` frames the allocator has (down to one
/// frame). Each frame's descriptor is then laid out as [`alloc_vmemmap_frame`] leaves it (an
/// order-0 block, refcount 1, [`PageState::Vmemmap`]), so each goes back on its own through
/// [`free_vmemmap_frame`] or in runs through [`free_vmemmap_frames`]. Returns `(first, count)`.
pub fn alloc_vmemmap_frames(
    buddy: &mut Buddy,
    vm: &Vmemmap,
    max: u64,
) -> Result<(PhysAddr, u64), BuddyError> {
    let top = (63 - max.max(1).leading_zeros()).min(u32::from(crate::buddy::MAX_ORDER)) as u8;
    let mut err = BuddyError::OutOfMemory { order: 0 };
    for order in (0..=top).rev() {
        match buddy.alloc(vm, order) {
            Ok(first) => {
                for p in first.0..first.0 + (1u64 << order) {
                    let d = vm.page(Pfn(p));
                    d.init(PageState::Vmemmap);
                    d.set_refcount(1);
                }
                return Ok((first.addr(), 1u64 << order));
            }
            Err(e) => err = e,
        }
    }
    Err(err)
}

/// Gives a frame that backed the vmemmap to the buddy allocator.
///
/// A frame that came from the allocator ([`alloc_vmemmap_frame`]) is freed as an allocated
/// order-0 block. A frame of the boot-time vmemmap came from memblock ([`PageFlags::RESERVED`],
/// set by `Buddy::free_memblock`) and was never counted as managed: it is handed over with
/// [`Buddy::free_range`] (Linux's `free_bootmem_page()` → `free_reserved_page()`), which grows
/// the managed page count; inside a RAM bank's span, as on the target, it needs no new
/// managed range. On failure the frame keeps its `Vmemmap` state (and flags): the caller must
/// report it, and the vmemmap census ([`vmemmap_census`]) counts it as a frame nothing maps.
pub fn free_vmemmap_frame(buddy: &mut Buddy, vm: &Vmemmap, pa: PhysAddr) -> Result<(), BuddyError> {
    let pfn = Pfn::containing(pa);
    let p = vm.get(pfn).ok_or(BuddyError::NoDescriptor { pfn })?;
    let boot = p.test(PageFlags::RESERVED);
    let r = if boot {
        p.init(PageState::Reserved);
        buddy.free_range(vm, pfn, pfn + 1).map(|_| ())
    } else {
        // The layout `Buddy::free` expects of an allocated order-0 block.
        p.init(PageState::Allocated);
        p.set_refcount(1);
        buddy.free(vm, pfn, 0)
    };
    if r.is_err() {
        // Not freed: it stays a vmemmap frame (now one nothing maps).
        p.init(PageState::Vmemmap);
        if boot {
            p.set_flags(PageFlags::RESERVED);
        }
    }
    r
}

/// Gives `n` contiguous frames from `pa` that backed the vmemmap to the buddy allocator, as
/// `n` calls of [`free_vmemmap_frame`] would, with less work per frame: a run of boot-time
/// vmemmap frames ([`PageFlags::RESERVED`]) goes to [`Buddy::free_range`] once (which checks
/// every frame, grows the managed count and frees maximal aligned blocks); a run of frames that
/// came from the allocator is cut into the largest naturally aligned blocks, each laid out as an
/// allocated block of its order and freed with one [`Buddy::free`]. A mixed run, or anything
/// the allocator refuses, goes one frame at a time through [`free_vmemmap_frame`] (which leaves
/// a refused frame as a `Vmemmap` frame, as before). Returns the number of frames accepted.
pub fn free_vmemmap_frames(buddy: &mut Buddy, vm: &Vmemmap, pa: PhysAddr, n: u64) -> u64 {
    let start = Pfn::containing(pa);
    let end = start.0 + n;
    let one_by_one = |buddy: &mut Buddy, from: u64, to: u64| -> u64 {
        (from..to).map(|p| u64::from(free_vmemmap_frame(buddy, vm, Pfn(p).addr()).is_ok())).sum()
    };
    if n < 2 || (start.0..end).any(|p| vm.get(Pfn(p)).is_none()) {
        return one_by_one(buddy, start.0, end);
    }
    let boot = |p: u64| vm.page(Pfn(p)).test(PageFlags::RESERVED);
    if (start.0..end).all(boot) {
        for p in start.0..end {
            vm.page(Pfn(p)).init(PageState::Reserved);
        }
        if buddy.free_range(vm, start, Pfn(end)).is_ok() {
            return n;
        }
        // Nothing changed in the allocator: back to boot vmemmap frames, then one by one.
        for p in start.0..end {
            let d = vm.page(Pfn(p));
            d.init(PageState::Vmemmap);
            d.set_flags(PageFlags::RESERVED);
        }
        return one_by_one(buddy, start.0, end);
    }
    if (start.0..end).any(boot) {
        return one_by_one(buddy, start.0, end);
    }
    let (mut cur, mut accepted) = (start.0, 0);
    while cur < end {
        let align = if cur == 0 { 63 } else { cur.trailing_zeros() };
        let fit = 63 - (end - cur).leading_zeros();
        let order = align.min(fit).min(u32::from(crate::buddy::MAX_ORDER)) as u8;
        let len = 1u64 << order;
        // The layout `Buddy::free` expects of an allocated block of `order`.
        for p in cur..cur + len {
            let d = vm.page(Pfn(p));
            d.init(PageState::Allocated);
            d.set_order(crate::page::ORDER_NONE);
        }
        let head = vm.page(Pfn(cur));
        head.set_order(order);
        head.set_refcount(1);
        if buddy.free(vm, Pfn(cur), order).is_ok() {
            accepted += len;
        } else {
            // Nothing changed in the allocator: each frame on its own, as before.
            for p in cur..cur + len {
                vm.page(Pfn(p)).init(PageState::Vmemmap);
            }
            accepted += one_by_one(buddy, cur, cur + len);
        }
        cur += len;
    }
    accepted
}

/// [`VmemmapFrames`] over the buddy allocator (see [`alloc_vmemmap_frame`],
/// [`free_vmemmap_frame`]).
#[derive(Debug)]
pub struct BuddyFrames<'a> {
    buddy: &'a mut Buddy,
    vm: &'a Vmemmap,
    last_error: Option<BuddyError>,
}

impl<'a> BuddyFrames<'a> {
    /// Frames from `buddy`, whose descriptors are in `vm`.
    pub fn new(buddy: &'a mut Buddy, vm: &'a Vmemmap) -> Self {
        BuddyFrames { buddy, vm, last_error: None }
    }
    /// The last error the allocator returned (allocation or free).
    pub fn last_error(&self) -> Option<BuddyError> {
        self.last_error
    }
    /// The allocator.
    pub fn buddy(&self) -> &Buddy {
        self.buddy
    }
}

// SAFETY: the buddy allocator hands out each free frame once, and `free_vmemmap_frame` only
// takes frames back into it; nothing else owns a frame between `alloc` and `free`.
unsafe impl VmemmapFrames for BuddyFrames<'_> {
    fn alloc(&mut self) -> Option<PhysAddr> {
        alloc_vmemmap_frame(self.buddy, self.vm).map_err(|e| self.last_error = Some(e)).ok()
    }
    fn free(&mut self, pa: PhysAddr) -> bool {
        free_vmemmap_frame(self.buddy, self.vm, pa).map_err(|e| self.last_error = Some(e)).is_ok()
    }
    fn free_run(&mut self, pa: PhysAddr, n: u64) -> u64 {
        free_vmemmap_frames(self.buddy, self.vm, pa, n)
    }
    fn alloc_run(&mut self, max: u64) -> Option<(PhysAddr, u64)> {
        alloc_vmemmap_frames(self.buddy, self.vm, max).map_err(|e| self.last_error = Some(e)).ok()
    }
}

// ---------------------------------------------------------------------------------------------
// Descriptor queries that see through fake heads
// ---------------------------------------------------------------------------------------------

/// Has `folio`'s vmemmap been optimized (Linux's `HPG_vmemmap_optimized`)?
pub fn folio_is_optimized(vm: &Vmemmap, folio: &Folio) -> bool {
    vm.page(folio.head_pfn()).test(PageFlags::VMEMMAP_OPTIMIZED)
}

/// Linux's `PageHead()` for `pfn`: a real head (a fake head left by HVO is not).
pub fn page_is_head(vm: &Vmemmap, pfn: Pfn) -> bool {
    vm.page(pfn).page_head()
}

/// Linux's `PageTail()` for `pfn`: a tail, including one that reads as a fake head.
pub fn page_is_tail(vm: &Vmemmap, pfn: Pfn) -> bool {
    vm.page(pfn).page_tail()
}

/// The pfn of the head of the compound page `pfn` belongs to (`pfn` itself if none), through
/// fake heads (Linux's `compound_head()`).
pub fn page_compound_head_pfn(vm: &Vmemmap, pfn: Pfn) -> Pfn {
    vm.page_to_pfn(vm.page(pfn).compound_head())
}

/// The 64 bytes of a descriptor.
fn desc_words(p: &Page) -> [u64; 8] {
    let base = (p as *const Page).cast::<u64>();
    // SAFETY: `Page` is 64 bytes, 64-byte aligned and has no padding bytes (its explicit `_pad`
    // is initialised), so 8 aligned u64 reads stay inside it. Shared references to an
    // all-atomic type allow reads through a raw pointer; the folio's owner (our caller) keeps
    // other writers away.
    core::array::from_fn(|i| unsafe { core::ptr::read_volatile(base.add(i)) })
}

/// Descriptors per vmemmap page.
const DESCS_PER_PAGE: u64 = PAGE_SIZE / PAGE_DESC_SIZE;

/// [`check_folio`] and [`verify_tails`] in one pass over the descriptors, for a folio that is
/// not optimized: the head and tail 1 are checked field by field as `check_folio` does, and every
/// other tail is compared with tail 1 word by word, a vmemmap page at a time. A tail equal to
/// tail 1 byte for byte passes every check `check_folio` makes of a tail (state, tail bit,
/// compound head), so this accepts exactly what the two separate passes accept; on a mismatch
/// the two are run to report the same error they would.
fn check_folio_and_tails(vm: &Vmemmap, folio: &Folio) -> Result<(), HvoError> {
    let fallback = || {
        check_folio(folio, vm).map_err(HvoError::Folio)?;
        verify_tails(vm, folio)
    };
    let n = folio.nr_pages();
    let head_pfn = folio.head_pfn();
    let (Some(head), Some(t1)) = (vm.get(head_pfn), vm.get(Pfn(head_pfn.0 + 1))) else {
        return fallback();
    };
    let head_ok = head.flags().contains(PageFlags::HEAD | PageFlags::HUGETLB)
        && !head.is_tail()
        && head.order() == folio.order()
        && head.state() == PageState::HugeTlb;
    let t1_ok = !t1.is_head()
        && t1.is_tail()
        && core::ptr::eq(t1.compound_head(), head)
        && t1.state() == PageState::HugeTlb;
    if !head_ok || !t1_ok || n < DESCS_PER_PAGE || !n.is_multiple_of(DESCS_PER_PAGE) {
        return fallback();
    }
    let w = desc_words(t1);
    // Compared 16 bytes at a time (one load-pair instruction on AArch64).
    let template: [u128; 4] =
        core::array::from_fn(|i| u128::from(w[2 * i]) | (u128::from(w[2 * i + 1]) << 64));
    // A vmemmap page's 64 descriptors are contiguous (a section's memmap is virtually
    // contiguous and a section holds whole vmemmap pages); each page is reached through `vm`.
    for first in (0..n).step_by(DESCS_PER_PAGE as usize) {
        let from = if first == 0 { 2 } else { first };
        let Some(p) = vm.get(Pfn(head_pfn.0 + from)) else { return fallback() };
        let descs = (first + DESCS_PER_PAGE - from) as usize;
        // SAFETY: `p` is descriptor `from` of a vmemmap page whose descriptors
        // `from..first + 64` are mapped (above), 64-byte aligned; `descs` stays inside them.
        // Nobody writes them while we read: the folio's owner (our caller) holds it with its
        // head's count frozen, and tails 2.. are not written by speculative readers.
        if unsafe { descs_differ((p as *const Page).cast::<u8>(), descs, &template) } {
            return fallback();
        }
    }
    Ok(())
}

/// Does any of the `n` 64-byte descriptors at `base` differ from `template` (little-endian
/// 16-byte quarters)? The tail check's inner loop: on AArch64 one `LD1` of four 128-bit
/// registers per descriptor, four `EOR` and four `ORR` (Advanced SIMD, always present on ARMv8-A
/// with FP; the exception vectors save the SIMD registers), a fallback elsewhere.
///
/// # Safety
/// `base` is 64-byte aligned and `n` descriptors from it are mapped, readable and not written
/// concurrently.
unsafe fn descs_differ(base: *const u8, n: usize, template: &[u128; 4]) -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        if n == 0 {
            return false;
        }
        let t = template.as_ptr();
        let acc: u64;
        // SAFETY: reads `n` (> 0) descriptors from `base` (caller's guarantee) and the 64 bytes
        // of `template`; writes only the named registers, no memory. Advanced SIMD is part
        // of every AArch64 target here (`neon`). Plain loads: no ordering is needed, nobody
        // writes these descriptors (caller's guarantee).
        unsafe {
            core::arch::asm!(
                "ld1 {{v4.2d, v5.2d, v6.2d, v7.2d}}, [{t}]",
                "movi v16.2d, #0",
                "2:",
                "ld1 {{v0.2d, v1.2d, v2.2d, v3.2d}}, [{p}], #64",
                "eor v0.16b, v0.16b, v4.16b",
                "eor v1.16b, v1.16b, v5.16b",
                "eor v2.16b, v2.16b, v6.16b",
                "eor v3.16b, v3.16b, v7.16b",
                "orr v0.16b, v0.16b, v1.16b",
                "orr v2.16b, v2.16b, v3.16b",
                "orr v16.16b, v16.16b, v0.16b",
                "orr v16.16b, v16.16b, v2.16b",
                "subs {n}, {n}, #1",
                "b.ne 2b",
                "umaxv s16, v16.4s",
                "fmov {acc:w}, s16",
                t = in(reg) t,
                p = inout(reg) base => _,
                n = inout(reg) n => _,
                acc = out(reg) acc,
                out("v0") _, out("v1") _, out("v2") _, out("v3") _,
                out("v4") _, out("v5") _, out("v6") _, out("v7") _, out("v16") _,
                options(nostack, readonly),
            );
        }
        acc != 0
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        let q = base.cast::<u128>();
        let mut diff = 0u128;
        for i in 0..n {
            for (k, t) in template.iter().enumerate() {
                // SAFETY: within the `n` descriptors the caller vouches for.
                diff |= unsafe { core::ptr::read(q.add(4 * i + k)) } ^ t;
            }
        }
        diff != 0
    }
}

/// Checks that tails 2.. of `folio` equal tail 1 byte for byte.
fn verify_tails(vm: &Vmemmap, folio: &Folio) -> Result<(), HvoError> {
    if folio.nr_pages() < 3 {
        return Ok(());
    }
    let template = desc_words(folio.page(vm, 1));
    for i in 2..folio.nr_pages() {
        if desc_words(folio.page(vm, i)) != template {
            return Err(HvoError::TailMismatch { folio: folio.head_pfn(), index: i });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Frames held during an operation
// ---------------------------------------------------------------------------------------------

/// Frames we own and that nothing maps, chained through their first word (as the mapper's
/// table pool).
struct Chain {
    head: Option<PhysAddr>,
    len: u64,
}

impl Chain {
    const EMPTY: Chain = Chain { head: None, len: 0 };

    fn push(&mut self, mem: &impl PhysMem, pa: PhysAddr) {
        let link = self.head.map_or(u64::MAX, |p| p.0);
        // SAFETY: `pa` is a frame the allocator just handed us for our exclusive use
        // (`VmemmapFrames`'s or `FrameAlloc`'s contract), not reachable from any table.
        unsafe { core::ptr::write_volatile(mem.ptr(pa).cast::<u64>(), link) };
        self.head = Some(pa);
        self.len += 1;
    }

    fn pop(&mut self, mem: &impl PhysMem) -> Option<PhysAddr> {
        let pa = self.head?;
        // SAFETY: a frame pushed by `push`, still ours.
        let link = unsafe { core::ptr::read_volatile(mem.ptr(pa).cast::<u64>()) };
        self.head = (link != u64::MAX).then_some(PhysAddr(link));
        self.len -= 1;
        Some(pa)
    }
}

/// Frames no longer mapped, waiting for their TLB entries to be gone before they are freed:
/// linked through their descriptors' `next` field (Linux's `page->lru` on `vmemmap_pages`).
/// The frames' own contents may still be read through a stale TLB entry, so they are not
/// written.
struct FreeList {
    head: Option<Pfn>,
    /// Frames without a descriptor, which cannot be listed (leaked; never happens for RAM).
    unlisted: u64,
}

impl FreeList {
    fn is_empty(&self) -> bool {
        self.head.is_none() && self.unlisted == 0
    }

    /// Adds a frame; `tag` is the vmemmap VA it backed (kept in its descriptor's `private`
    /// word so that a failed optimize can map it back), or 0.
    fn push(&mut self, vm: &Vmemmap, pa: PhysAddr, tag: u64) {
        let pfn = Pfn::containing(pa);
        match vm.get(pfn) {
            Some(p) => {
                p.set_private(tag);
                p.set_next(self.head);
                self.head = Some(pfn);
            }
            None => self.unlisted += 1,
        }
    }

    /// Takes one frame off the list: (frame, tag).
    fn pop(&mut self, vm: &Vmemmap) -> Option<(PhysAddr, u64)> {
        let pfn = self.head?;
        let p = vm.page(pfn);
        self.head = p.next();
        p.set_next(None);
        let tag = p.private();
        p.set_private(0);
        Some((pfn.addr(), tag))
    }

    fn drain(&mut self, vm: &Vmemmap, frames: &mut impl VmemmapFrames, stats: &mut HvoStats) {
        let prev = phase::enter(HvoPhase::Free);
        // Contiguous frames (a folio's old vmemmap pages usually are) go back as one run.
        let mut run: Option<(Pfn, u64)> = None;
        let mut flush = |run: (Pfn, u64), stats: &mut HvoStats| {
            let ok = frames.free_run(run.0.addr(), run.1);
            stats.frames_freed += ok;
            stats.free_failures += run.1 - ok;
        };
        while let Some(pfn) = self.head {
            let p = vm.page(pfn);
            self.head = p.next();
            p.set_next(None);
            p.set_private(0);
            run = match run {
                Some((s, n)) if pfn.0 + 1 == s.0 => Some((pfn, n + 1)),
                Some((s, n)) if pfn.0 == s.0 + n => Some((s, n + 1)),
                Some(r) => {
                    flush(r, stats);
                    Some((pfn, 1))
                }
                None => Some((pfn, 1)),
            };
        }
        if let Some(r) = run {
            flush(r, stats);
        }
        stats.free_failures += core::mem::take(&mut self.unlisted);
        phase::resume(prev);
    }
}

/// Copies the 4 KiB frame `src` to `dst`.
///
/// # Safety
/// `dst` is a frame we own that nothing maps yet; `src` is a vmemmap frame of a folio whose
/// owner keeps writers away; both are reachable through `mem`.
unsafe fn copy_frame(mem: &impl PhysMem, src: PhysAddr, dst: PhysAddr) {
    let prev = phase::enter(HvoPhase::Copy);
    // SAFETY: both pointers cover a whole 4 KiB frame (caller's guarantee), distinct frames.
    unsafe { copy_page(mem.ptr(src).cast::<u8>(), mem.ptr(dst).cast::<u8>()) };
    phase::resume(prev);
}

/// Copies one 4 KiB page from `src` to `dst`: on AArch64 64 bytes per iteration, one `LD1` and
/// one `ST1` of four 128-bit registers (Advanced SIMD, always present on ARMv8-A with FP; the
/// exception vectors save the SIMD registers); a word loop elsewhere. Public so that the
/// benchmark measures the same copy as a primitive of its lower bound.
///
/// # Safety
/// `src` and `dst` are 16-byte aligned, each covers 4 KiB that is readable (`src`) and
/// writable (`dst`), they do not overlap, and nothing writes `src` meanwhile.
pub unsafe fn copy_page(src: *const u8, dst: *mut u8) {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: reads 4 KiB from `src`, writes 4 KiB to `dst` (caller's guarantee), 64 bytes per
    // iteration; clobbers only the named registers. Advanced SIMD is part of every AArch64
    // target here (`neon`).
    unsafe {
        core::arch::asm!(
            "2:",
            "ld1 {{v0.2d, v1.2d, v2.2d, v3.2d}}, [{s}], #64",
            "st1 {{v0.2d, v1.2d, v2.2d, v3.2d}}, [{d}], #64",
            "subs {n}, {n}, #1",
            "b.ne 2b",
            s = inout(reg) src => _,
            d = inout(reg) dst => _,
            n = inout(reg) PAGE_SIZE / 64 => _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            options(nostack),
        );
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        let (s, d) = (src.cast::<u64>(), dst.cast::<u64>());
        for i in 0..(PAGE_SIZE / 8) as usize {
            // SAFETY: `i < 512` words of the two pages the caller vouches for.
            unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        }
    }
}

/// Descriptors at the start of a copy of page 0 that are not tails: only the head. (Linux's
/// `NR_RESET_STRUCT_PAGE` is 3 because its first two tails carry folio metadata; here
/// [`crate::hugetlb::prep_compound`] writes every tail identically, which
/// [`HvoOptions::verify_tails`] checks.)
pub const RESET_DESCS: u64 = 1;

/// Linux's `reset_struct_pages()`: in a copy of page 0 at `dst`, overwrites descriptors
/// `0..RESET_DESCS` (the head) with descriptor `RESET_DESCS` (a tail), so that every descriptor
/// of the restored page is a correct tail.
///
/// # Safety
/// `dst` is a frame we own that nothing maps yet, reachable through `mem`.
unsafe fn reset_descriptors(mem: &impl PhysMem, dst: PhysAddr) {
    let words = (PAGE_DESC_SIZE / 8) as usize;
    let d = mem.ptr(dst).cast::<u64>();
    for i in 0..RESET_DESCS as usize {
        for w in 0..words {
            // SAFETY: indices stay inside the first `(RESET_DESCS + 1) * 64` bytes of the frame.
            unsafe {
                let v = core::ptr::read_volatile(d.add(RESET_DESCS as usize * words + w));
                core::ptr::write_volatile(d.add(i * words + w), v);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pending entries (batched passes)
// ---------------------------------------------------------------------------------------------

/// Software bit of an invalid vmemmap entry written by a batched pass: the rest of the entry is
/// the new descriptor without its valid bit ([`bits::SW_PENDING`]: the hardware walker ignores
/// everything but bit 0 of an invalid entry).
pub const PENDING_BIT: u64 = bits::SW_PENDING;

/// The invalid entry standing for `new` until the TLBIs have completed.
const fn pending(new: Descriptor) -> Descriptor {
    Descriptor((new.bits() & !bits::VALID) | PENDING_BIT)
}

/// Is `d` an entry written by [`pending`]?
const fn is_pending(d: Descriptor) -> bool {
    !d.is_valid() && d.bits() & PENDING_BIT != 0
}

/// The descriptor a [`pending`] entry stands for.
const fn from_pending(d: Descriptor) -> Descriptor {
    Descriptor((d.bits() & !PENDING_BIT) | bits::VALID)
}

// ---------------------------------------------------------------------------------------------
// The walk
// ---------------------------------------------------------------------------------------------

/// The `pte_entry` work.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Strategy {
    /// Split blocks; nothing per page.
    SplitOnly,
    /// Remap tails read-only onto page 0 (or its copy) and free their frames.
    Optimize,
    /// Remap tails read-write onto fresh copies of page 0.
    Restore,
}

/// Which pass of an operation the walk is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Dry run: everything mapped, nothing self-hosted, tables as the folio's state says;
    /// counts the table pages and frames needed. Writes nothing.
    Check,
    /// Split blocks, and replace each entry with the full break-before-make sequence.
    Apply,
    /// Split blocks, and write each changed entry as [`pending`] (batched).
    Invalidate,
    /// `TLBI VAAE1IS` for each pending entry (batched).
    Flush,
    /// Pending entries become valid (batched).
    Complete,
    /// Undo what the apply/invalidate pass did to the folio where it failed (see
    /// `Hvo::rollback`).
    Rollback,
}

/// The one [`PageWalkOps`] implementation of HVO.
struct HvoWalk<'a, M: PhysMem, O: MmuOps> {
    mem: &'a M,
    vm: &'a Vmemmap,
    mmu: &'a mut O,
    sync: &'a mut dyn BbmSync,
    /// `init_mm`, whose `page_table_lock` guards every check-then-write on a live entry.
    mm: &'a Mm<Kernel>,
    /// The lock, held from the opening of a batched pass's window to its close.
    ptl: Option<SpinGuard<'a>>,
    /// [`HvoOptions::recheck_entries`].
    recheck: bool,
    /// Test-only: called in `split` between the walker's read of the block and the re-check.
    race_hook: Option<&'a mut dyn FnMut(VirtAddr)>,
    /// Test-only: the `replace` (counted from 0) that fails as if the entry had changed.
    fail_replace: Option<u64>,
    replaces: u64,
    /// Rollback of an optimize: the frame the entry being visited maps again.
    undo: Option<PhysAddr>,
    /// The VAs a batched pass may leave invalid (its break window), and whether that window is
    /// open (`break_begin` called, `break_end` not yet).
    batch_window: (VirtAddr, VirtAddr),
    window_open: bool,
    strategy: Strategy,
    phase: Phase,
    // Per folio.
    folio: Pfn,
    start: VirtAddr,
    /// The frame the tails are (to be) mapped onto, and page 0's attributes (read-write).
    reuse: Option<(PhysAddr, Attrs)>,
    /// Optimize: the fresh frame page 0 is to be copied to.
    new_head: Option<PhysAddr>,
    /// Shared tail design in effect (fixed for the walk).
    shared: bool,
    /// Shared design: the tail page of the current folio's order (pages 1..N map it).
    tails: Option<PhysAddr>,
    /// The page table the walker is in (set by `pmd_entry`), for `pte_hole`.
    pte_table: Option<PhysAddr>,
    /// Check: the last block counted, so two folios in one block need one table.
    last_block: Option<VirtAddr>,
    // Resources.
    tables: Chain,
    frames: Chain,
    to_free: FreeList,
    // Counts.
    need_tables: u64,
    need_frames: u64,
    pending: u64,
    splits: u64,
    splits_skipped: u64,
    /// Another CPU's split met (see [`HvoStats::split_waits`]), and where to walk on from.
    split_waits: u64,
    retry_from: Option<VirtAddr>,
    remapped: u64,
    restored: u64,
    heads_replaced: u64,
}

impl<'a, M: PhysMem, O: MmuOps> HvoWalk<'a, M, O> {
    fn new(
        mem: &'a M,
        vm: &'a Vmemmap,
        mmu: &'a mut O,
        sync: &'a mut dyn BbmSync,
        mm: &'a Mm<Kernel>,
        strategy: Strategy,
    ) -> Self {
        HvoWalk {
            mem,
            vm,
            mmu,
            sync,
            mm,
            ptl: None,
            recheck: true,
            race_hook: None,
            fail_replace: None,
            replaces: 0,
            undo: None,
            batch_window: (VirtAddr(0), VirtAddr(0)),
            window_open: false,
            strategy,
            phase: Phase::Check,
            folio: Pfn(0),
            start: VirtAddr(0),
            reuse: None,
            new_head: None,
            shared: hvo_tails::tail_design() == TailDesign::Shared,
            tails: None,
            pte_table: None,
            last_block: None,
            tables: Chain::EMPTY,
            frames: Chain::EMPTY,
            to_free: FreeList { head: None, unlisted: 0 },
            need_tables: 0,
            need_frames: 0,
            pending: 0,
            splits: 0,
            splits_skipped: 0,
            split_waits: 0,
            retry_from: None,
            remapped: 0,
            restored: 0,
            heads_replaced: 0,
        }
    }

    /// What an optimized folio's tail pages map: page 0 (seed design, recorded in `reuse` by
    /// the walk of page 0) or the order's shared tail page (shared design).
    fn tail_source(&self) -> Option<PhysAddr> {
        if self.shared {
            self.tails
        } else {
            self.reuse.map(|(pa, _)| pa)
        }
    }

    fn inconsistent(&self, va: VirtAddr) -> HvoError {
        HvoError::Inconsistent { folio: self.folio, va }
    }

    /// Refuses frames that host their own memmap.
    fn check_backing(&self, pa: PhysAddr, len: u64, va: VirtAddr) -> Result<(), HvoError> {
        for off in (0..len).step_by(PAGE_SIZE as usize) {
            let pfn = Pfn::containing(pa + off);
            if self.vm.get(pfn).is_some_and(|p| p.test(PageFlags::VMEMMAP_SELF_HOSTED)) {
                return Err(HvoError::SelfHostedVmemmap {
                    folio: self.folio,
                    vmemmap_va: va + off,
                    backing: pfn,
                });
            }
        }
        Ok(())
    }

    /// Replaces the 2 MiB block `e` by a table of 512 pages mapping the same frames with the
    /// same attributes. Returns the table.
    ///
    /// Another CPU optimizing a folio whose descriptors share the block may have split it since
    /// the walker read the entry: under `init_mm`'s `page_table_lock` the entry is read again
    /// and only split if it is still that block (Linux's `vmemmap_split_pmd()`). If it has
    /// become a table, the table page prepared for this split stays unused (it goes back at the
    /// end of the operation) and the walk descends into the existing table.
    fn split(&mut self, e: &Entry) -> Result<PhysAddr, HvoError> {
        let prev = phase::enter(HvoPhase::Split);
        let r = self.split_timed(e);
        phase::resume(prev);
        r
    }

    fn split_timed(&mut self, e: &Entry) -> Result<PhysAddr, HvoError> {
        if let Some(hook) = self.race_hook.as_deref_mut() {
            hook(e.addr());
        }
        let mm = self.mm;
        let _ptl = self.ptl.is_none().then(|| mm.page_table_lock());
        if self.recheck {
            let now = e.reread();
            if now != e.desc() {
                return match now.kind(Level::L2) {
                    DescKind::Table => {
                        self.splits_skipped += 1;
                        Ok(now.table_address())
                    }
                    _ => Err(self.inconsistent(e.addr())),
                };
            }
        }
        let (pa, attrs) = e.desc().decode_leaf(Level::L2).ok_or(self.inconsistent(e.addr()))?;
        let table =
            self.tables.pop(self.mem).ok_or(HvoError::NoPageTables { needed: 1, got: 0 })?;
        for i in 0..ENTRIES_PER_TABLE as u64 {
            let page = pa + i * PAGE_SIZE;
            let d = Descriptor::leaf(Level::L3, page, attrs)
                .map_err(|_| HvoError::Encode { pa: page })?;
            // SAFETY: `table` is a page the table allocator gave us, not yet linked anywhere:
            // plain stores (published by the DSB below before the table is linked).
            unsafe { core::ptr::write_volatile(self.mem.ptr(table + i * 8).cast::<u64>(), d.0) };
        }
        let td = Descriptor::table(Level::L2, table).map_err(|_| HvoError::Encode { pa: table })?;
        // One break window: the whole block is invalid until the table entry is published.
        self.sync.break_begin(e.span_start(), e.span_start() + PMD_SIZE);
        // SAFETY: `e` is a live level-2 entry of `init_mm` handed to us by the walker; the block
        // maps vmemmap, and `Hvo::new`'s contract keeps every CPU off the section's descriptors
        // while the entry is invalid (valid -> invalid is the "break").
        unsafe { e.set(self.mmu, Descriptor::INVALID) };
        // DSB ISHST: the invalid entry (and the filled table) must be visible to the table
        // walkers before the TLBI, or a walk could refill the TLB from the old block (ARM ARM
        // D8.16.1 "Using break-before-make when updating translation table entries").
        self.mmu.dsb_ishst();
        // TLBI VAAE1IS: a block's TLB entry matches any VA inside it, so one TLBI by VA removes
        // the old translation on every core (break-before-make).
        self.mmu.tlbi_vaae1is(e.span_start());
        // DSB ISH: wait for the TLBI to complete everywhere before the new entry can be seen
        // (ARM ARM "Ordering and completion of TLB maintenance instructions").
        self.mmu.dsb_ish();
        // SAFETY: as above; the break is complete, and the new table maps the same frames.
        unsafe { e.set(self.mmu, td) };
        // DSB ISHST: the table entry is visible to the walkers; ISB: this core's later
        // instructions translate through it (ARM ARM "Ordering of translation table walks").
        self.mmu.dsb_ishst();
        self.mmu.isb();
        self.sync.break_end();
        self.splits += 1;
        Ok(table)
    }

    /// Replaces the valid page entry `e` by `new`: the full break-before-make sequence in the
    /// apply pass, or a [`pending`] invalid entry in a batched pass.
    ///
    /// The entry is re-read under `init_mm`'s `page_table_lock` and replaced only if it is still
    /// what the walker saw ([`HvoError::Inconsistent`] otherwise, nothing written). The lock is
    /// taken before the window opens and released after it closes: none is taken inside it.
    fn replace(&mut self, e: &Entry, new: Descriptor) -> Result<(), HvoError> {
        let mm = self.mm;
        if self.phase != Phase::Rollback {
            let n = self.replaces;
            self.replaces += 1;
            if self.fail_replace == Some(n) {
                return Err(self.inconsistent(e.addr()));
            }
        }
        if self.phase == Phase::Invalidate {
            if !self.window_open {
                // The batch's one window opens at its first invalid entry; the lock is held
                // until it closes (`complete_and_publish`).
                self.ptl = Some(mm.page_table_lock());
                let (lo, hi) = self.batch_window;
                self.sync.break_begin(lo, hi);
                self.window_open = true;
            }
            if self.recheck && e.reread() != e.desc() {
                return Err(self.inconsistent(e.addr()));
            }
            // SAFETY: `e` is a live level-3 vmemmap entry of the folio we own (no other CPU
            // touches its descriptors, `Hvo::new`'s contract); valid -> invalid needs no break.
            unsafe { e.set(self.mmu, pending(new)) };
            self.pending += 1;
            return Ok(());
        }
        let _ptl = self.ptl.is_none().then(|| mm.page_table_lock());
        if self.recheck && e.reread() != e.desc() {
            return Err(self.inconsistent(e.addr()));
        }
        // One window per entry in the single-folio path.
        self.sync.break_begin(e.addr(), e.addr() + PAGE_SIZE);
        // SAFETY: as above.
        unsafe { e.set(self.mmu, Descriptor::INVALID) };
        // DSB ISHST: the invalid entry is visible to the walkers before the TLBI (ARM ARM
        // D8.16.1, break-before-make).
        self.mmu.dsb_ishst();
        // TLBI VAAE1IS: drop the old translation of this page on every core (break-before-make).
        self.mmu.tlbi_vaae1is(e.span_start());
        // DSB ISH: the TLBI has completed on every core before the new entry is written
        // (ARM ARM "Ordering and completion of TLB maintenance instructions").
        self.mmu.dsb_ish();
        // SAFETY: as above; the break is complete.
        unsafe { e.set(self.mmu, new) };
        // DSB ISHST: the new entry is visible to the table walkers of every core; ISB: this
        // core's later instructions translate with it (ARM ARM "Ordering of translation table
        // walks"). Published, the window closes.
        self.mmu.dsb_ishst();
        self.mmu.isb();
        self.sync.break_end();
        Ok(())
    }

    fn remap(&mut self, e: &Entry, pa: PhysAddr, attrs: Attrs) -> Result<(), HvoError> {
        if e.addr() == self.start && self.shared {
            // Shared design: page 0 stays where it is (no copy, no entry written); the tails
            // go onto the order's shared tail page, with page 0's attributes made read-only.
            let tails = self.tails.ok_or(self.inconsistent(e.addr()))?;
            self.reuse = Some((tails, attrs));
            return Ok(());
        }
        if e.addr() == self.start {
            self.reuse = Some((pa, attrs));
            if let Some(new) = self.new_head.take() {
                // SAFETY: `new` is a fresh frame from the allocator; `pa` is page 0 of a folio
                // we own; both are reachable through `mem` (`Hvo::new`'s contract).
                unsafe { copy_frame(self.mem, pa, new) };
                let d = Descriptor::leaf(Level::L3, new, attrs)
                    .map_err(|_| HvoError::Encode { pa: new })?;
                if let Err(err) = self.replace(e, d) {
                    // Not written: the copy is unused (freed with the rest).
                    self.new_head = Some(new);
                    return Err(err);
                }
                self.to_free.push(self.vm, pa, e.addr().0);
                self.reuse = Some((new, attrs));
                self.heads_replaced += 1;
            }
            return Ok(());
        }
        let (reuse, _) = self.reuse.ok_or(self.inconsistent(e.addr()))?;
        let d = Descriptor::leaf(Level::L3, reuse, attrs.read_only())
            .map_err(|_| HvoError::Encode { pa: reuse })?;
        self.replace(e, d)?;
        self.to_free.push(self.vm, pa, e.addr().0);
        self.remapped += 1;
        Ok(())
    }

    fn restore(&mut self, e: &Entry, pa: PhysAddr, attrs: Attrs) -> Result<(), HvoError> {
        if e.addr() == self.start {
            self.reuse = Some((pa, attrs));
            return Ok(());
        }
        let (_, rw) = self.reuse.ok_or(self.inconsistent(e.addr()))?;
        let new = self.frames.pop(self.mem).ok_or(HvoError::NoMemory { needed: 1, got: 0 })?;
        // SAFETY: `new` is a frame allocated for this restore and not mapped yet; `pa` is the
        // folio's page 0 (seed design) or the order's shared tail page (shared design): what the
        // tail maps; both reachable through `mem`.
        unsafe {
            copy_frame(self.mem, pa, new);
            if !self.shared {
                // Only a copy of page 0 starts with a head; the shared page is all tails.
                reset_descriptors(self.mem, new);
            }
        }
        let d = Descriptor::leaf(Level::L3, new, rw).map_err(|_| HvoError::Encode { pa: new })?;
        if let Err(err) = self.replace(e, d) {
            // Not written: the frame goes back with the unused ones.
            self.frames.push(self.mem, new);
            return Err(err);
        }
        self.restored += 1;
        Ok(())
    }
}

impl<M: PhysMem, O: MmuOps> PageWalkOps for HvoWalk<'_, M, O> {
    type Output = ();
    type Error = HvoError;
    const INTERESTS: Interests =
        Interests::PUD.union(Interests::PMD).union(Interests::PTE).union(Interests::HOLE);

    fn pud_entry(&mut self, e: &Entry) -> Result<WalkAction<()>, HvoError> {
        match e.kind() {
            DescKind::Table => Ok(WalkAction::Subtree),
            kind => Err(HvoError::UnexpectedMapping { va: e.addr(), level: Level::L1, kind }),
        }
    }

    fn pmd_entry(&mut self, e: &Entry) -> Result<WalkAction<()>, HvoError> {
        match (e.kind(), self.phase) {
            // The split pass has nothing to do under a table (its pages need no work): skip
            // the 512 entries instead of visiting each.
            (DescKind::Table, Phase::Apply | Phase::Invalidate)
                if self.strategy == Strategy::SplitOnly =>
            {
                Ok(WalkAction::Continue)
            }
            (DescKind::Table, _) => {
                self.pte_table = Some(e.desc().table_address());
                Ok(WalkAction::Subtree)
            }
            (DescKind::Block, Phase::Check) => {
                if self.strategy == Strategy::Restore {
                    // An optimized folio's vmemmap is mapped by pages.
                    return Err(self.inconsistent(e.addr()));
                }
                let off = e.addr() - e.span_start();
                self.check_backing(
                    e.desc().output_address(Level::L2) + off,
                    e.next() - e.addr(),
                    e.addr(),
                )?;
                if self.last_block != Some(e.span_start()) {
                    self.need_tables += 1;
                    self.last_block = Some(e.span_start());
                }
                Ok(WalkAction::Continue)
            }
            (DescKind::Block, Phase::Apply | Phase::Invalidate)
                if self.strategy != Strategy::Restore =>
            {
                self.pte_table = Some(self.split(e)?);
                // The walker re-reads the entry, finds the table and visits its PTEs.
                Ok(WalkAction::Subtree)
            }
            // Nothing under a block is pending (a folio a batch skipped, never split).
            (DescKind::Block, Phase::Flush | Phase::Complete | Phase::Rollback) => {
                Ok(WalkAction::Continue)
            }
            (kind, _) => Err(HvoError::UnexpectedMapping { va: e.addr(), level: Level::L2, kind }),
        }
    }

    fn pte_entry(&mut self, e: &Entry) -> Result<WalkAction<()>, HvoError> {
        let (pa, attrs) = e.desc().decode_leaf(Level::L3).ok_or(self.inconsistent(e.addr()))?;
        let first = e.addr() == self.start;
        match self.phase {
            Phase::Check => {
                self.check_backing(pa, PAGE_SIZE, e.addr())?;
                match self.strategy {
                    Strategy::SplitOnly => {}
                    Strategy::Optimize if first => self.reuse = Some((pa, attrs)),
                    Strategy::Optimize => {
                        if self.reuse.is_none_or(|(r, _)| r == pa) || self.tails == Some(pa) {
                            return Err(self.inconsistent(e.addr()));
                        }
                    }
                    Strategy::Restore if first => {
                        if !attrs.is_writable() {
                            return Err(self.inconsistent(e.addr()));
                        }
                        self.reuse = Some((pa, attrs));
                    }
                    Strategy::Restore => {
                        if self.tail_source() != Some(pa) || attrs.is_writable() {
                            return Err(self.inconsistent(e.addr()));
                        }
                        self.need_frames += 1;
                    }
                }
            }
            Phase::Apply | Phase::Invalidate => match self.strategy {
                Strategy::SplitOnly => {}
                Strategy::Optimize => self.remap(e, pa, attrs)?,
                Strategy::Restore => self.restore(e, pa, attrs)?,
            },
            // Valid entries are not pending ones.
            Phase::Flush | Phase::Complete => {}
            Phase::Rollback => match self.strategy {
                // Map the entry back onto the frame it had, read-write.
                Strategy::Optimize => {
                    if let (Some(old), Some((_, rw))) = (self.undo.take(), self.reuse) {
                        let d = Descriptor::leaf(Level::L3, old, rw)
                            .map_err(|_| HvoError::Encode { pa: old })?;
                        self.replace(e, d)?;
                        if first {
                            // The copy of page 0 is mapped no more.
                            self.to_free.push(self.vm, pa, 0);
                            self.heads_replaced -= 1;
                        } else {
                            self.remapped -= 1;
                        }
                    }
                }
                // Tails already restored go back onto page 0, read-only; their fresh frames
                // are freed (after the grace period).
                Strategy::Restore if first => self.reuse = Some((pa, attrs)),
                Strategy::Restore => {
                    let (_, rw) = self.reuse.ok_or(self.inconsistent(e.addr()))?;
                    let page0 = self.tail_source().ok_or(self.inconsistent(e.addr()))?;
                    if pa != page0 {
                        let d = Descriptor::leaf(Level::L3, page0, rw.read_only())
                            .map_err(|_| HvoError::Encode { pa: page0 })?;
                        self.replace(e, d)?;
                        self.to_free.push(self.vm, pa, 0);
                        self.restored -= 1;
                    }
                }
                Strategy::SplitOnly => {}
            },
        }
        Ok(WalkAction::Continue)
    }

    fn pte_hole(
        &mut self,
        start: VirtAddr,
        _end: VirtAddr,
        depth: Level,
    ) -> Result<ControlFlow<()>, HvoError> {
        let not_mapped = HvoError::NotMapped { va: start, level: depth };
        if depth == Level::L2 && self.ptl.is_none() && self.retry_from.is_none() {
            // The vmemmap is always mapped, so an invalid level-2 entry is another CPU's split
            // between its break and its make (a 2 MiB block being replaced by a table). That CPU
            // holds `page_table_lock` from before the break until the table is published:
            // taking the lock waits for it, and the walk goes on from here (`walk_span`) and
            // finds the table. (Not while this walk holds the lock itself: then no split can be
            // in progress, and the hole is real.)
            drop(self.mm.page_table_lock());
            self.split_waits += 1;
            self.retry_from = Some(start);
            return Err(not_mapped);
        }
        if depth != Level::L3 || !matches!(self.phase, Phase::Flush | Phase::Complete) {
            return Err(not_mapped);
        }
        let table = self.pte_table.ok_or(not_mapped)?;
        let slot = self.mem.ptr(table + Level::L3.index(start) as u64 * 8).cast::<u64>();
        // SAFETY: `table` is the live page table the walker is visiting (recorded by
        // `pmd_entry` just before it descended), kept alive by the walk lock.
        let d = unsafe { read_entry(slot) };
        if !is_pending(d) {
            return Err(not_mapped);
        }
        if self.phase == Phase::Flush {
            // TLBI VAAE1IS: drop the old translation of this page on every core; issued after
            // the batch's DSB ISHST, completed by its DSB ISH (ARM ARM D8.16.1,
            // break-before-make).
            self.mmu.tlbi_vaae1is(start);
        } else {
            // SAFETY: a live level-3 entry of the folio we own, invalid, whose break has
            // completed (the batch's TLBIs and DSB ISH came before this pass).
            unsafe { self.mmu.write_entry(slot, start, Level::L3, from_pending(d)) };
            self.pending -= 1;
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// Walks `folio`'s vmemmap in `phase`.
fn walk_folio<M: PhysMem, O: MmuOps>(
    guard: &MmapReadGuard<'_, Kernel>,
    mem: &M,
    w: &mut HvoWalk<'_, M, O>,
    folio: &Folio,
    phase: Phase,
) -> Result<(), HvoError> {
    let (start, end) = folio_vmemmap_range(folio);
    w.phase = phase;
    w.folio = folio.head_pfn();
    w.start = start;
    w.reuse = None;
    w.tails = if w.shared { w.vm.tail_pages().get(folio.order()) } else { None };
    walk_span(guard, mem, w, start, end)
}

/// Walks `[start, end)` in the phase and folio already set in `w`.
fn walk_span<M: PhysMem, O: MmuOps>(
    guard: &MmapReadGuard<'_, Kernel>,
    mem: &M,
    w: &mut HvoWalk<'_, M, O>,
    start: VirtAddr,
    end: VirtAddr,
) -> Result<(), HvoError> {
    let mut from = start;
    let mut waited_at = None;
    loop {
        w.pte_table = None;
        w.retry_from = None;
        match walk_page_range_novma(guard, mem, from, end, w) {
            Ok(_) => return Ok(()),
            // Another CPU's split was in progress at `at` and is over (see `pte_hole`): the
            // entries before `at` are done, walk on from there. Once per place: a block still
            // invalid after the wait is a real hole (NotMapped).
            Err(WalkError::Callback(e)) => match w.retry_from.take() {
                Some(at) if at >= from && at < end && waited_at != Some(at) => {
                    waited_at = Some(at);
                    from = at;
                }
                _ => return Err(e),
            },
            Err(WalkError::InvalidRange { start, end, .. }) => {
                return Err(HvoError::BadRange { start, end })
            }
        }
    }
}

/// Undoes the part of an optimize that reached `folio` before failing (Linux's
/// `vmemmap_remap_free()` on error, with `vmemmap_restore_pte`): every entry already remapped
/// goes back onto the frame it had (still on the free list, found by its tag), read-write with
/// page 0's attributes `rw`; page 0 last, whose copy is then freed.
fn rollback_optimize<M: PhysMem, O: MmuOps>(
    guard: &MmapReadGuard<'_, Kernel>,
    mem: &M,
    w: &mut HvoWalk<'_, M, O>,
    folio: &Folio,
    rw: Attrs,
) -> Result<(), HvoError> {
    let vm = w.vm;
    let (start, end) = folio_vmemmap_range(folio);
    let (mut mine, mut rest) =
        (FreeList { head: None, unlisted: 0 }, FreeList { head: None, unlisted: 0 });
    while let Some((pa, tag)) = w.to_free.pop(vm) {
        if (start.0..end.0).contains(&tag) {
            mine.push(vm, pa, tag);
        } else {
            rest.push(vm, pa, tag);
        }
    }
    w.to_free.head = rest.head;
    w.phase = Phase::Rollback;
    w.folio = folio.head_pfn();
    w.start = start;
    let mut head_old = None;
    let mut r = Ok(());
    while let Some((pa, tag)) = mine.pop(vm) {
        if tag == start.0 {
            head_old = Some(pa);
            continue;
        }
        w.undo = Some(pa);
        w.reuse = Some((pa, rw));
        r = r.and(walk_span(guard, mem, w, VirtAddr(tag), VirtAddr(tag) + PAGE_SIZE));
    }
    if let Some(pa) = head_old {
        w.undo = Some(pa);
        w.reuse = Some((pa, rw));
        r = r.and(walk_span(guard, mem, w, start, start + PAGE_SIZE));
    }
    w.undo = None;
    r
}

/// Ends every optimize or restore pass: completes the entries a batched pass left pending (even
/// after an error, so that none stays invalid), then publishes all the new entries.
fn complete_and_publish<M: PhysMem, O: MmuOps>(
    guard: &MmapReadGuard<'_, Kernel>,
    mem: &M,
    w: &mut HvoWalk<'_, M, O>,
    folios: &[Folio],
    threshold: u64,
    stats: &mut HvoStats,
) -> Result<(), HvoError> {
    let prev = phase::enter(HvoPhase::Tlb);
    let done = complete_batch(guard, mem, w, folios, threshold, stats);
    phase::resume(prev);
    if w.window_open {
        // DSB ISHST: the new entries are visible to the table walkers; ISB: this core's later
        // instructions translate with them (ARM ARM "Ordering of translation table walks").
        // (The single-folio path published each entry as it wrote it.)
        w.mmu.dsb_ishst();
        w.mmu.isb();
        w.sync.break_end();
        w.window_open = false;
        w.ptl = None;
    }
    done
}

/// The batched break-before-make: the pending entries of `folios` (written by the invalidate
/// pass) get one DSB, their TLBIs, one DSB ISH, and become valid.
///
/// `folios` may include folios the batch skipped: their entries are all valid, so these passes
/// do nothing to them. (The batch must not be filtered here by reading the folios' heads: a
/// head whose page 0 is pending is unmapped until the end of this function.)
fn complete_batch<M: PhysMem, O: MmuOps>(
    guard: &MmapReadGuard<'_, Kernel>,
    mem: &M,
    w: &mut HvoWalk<'_, M, O>,
    folios: &[Folio],
    threshold: u64,
    stats: &mut HvoStats,
) -> Result<(), HvoError> {
    if w.pending == 0 {
        return Ok(());
    }
    // DSB ISHST, once for the batch: every invalid entry is visible to the table walkers before
    // any TLBI (ARM ARM D8.16.1, break-before-make).
    w.mmu.dsb_ishst();
    let mut r = Ok(());
    if w.pending <= threshold {
        r = folios.iter().try_for_each(|f| walk_folio(guard, mem, w, f, Phase::Flush));
    }
    if w.pending > threshold || r.is_err() {
        // TLBI VMALLE1IS: one invalidation of everything instead of more than `threshold`
        // by-VA ones (Linux: flush_tlb_kernel_range() -> flush_tlb_all() beyond MAX_DVM_OPS);
        // also the fallback if the by-VA pass stopped early, so no break is left without its
        // TLBI.
        w.mmu.tlbi_vmalle1is();
        stats.tlbi_flush_all += 1;
    }
    // DSB ISH, once for the batch: every TLBI has completed on every core before any new entry
    // is written (ARM ARM "Ordering and completion of TLB maintenance instructions").
    w.mmu.dsb_ish();
    // Every folio, even after an error: no pending entry may stay invalid.
    for f in folios {
        let done = walk_folio(guard, mem, w, f, Phase::Complete);
        r = r.and(done);
    }
    r
}

// ---------------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------------

/// HVO over `init_mm`: the lock guard, how physical memory is reached, the MMU backend, the
/// memmap, and the two allocators (frames for the vmemmap, pages for tables).
pub struct Hvo<'a, M: PhysMem, O: MmuOps, F: VmemmapFrames, T: FrameAlloc> {
    guard: &'a MmapReadGuard<'a, Kernel>,
    mem: &'a M,
    mmu: &'a mut O,
    vm: &'a Vmemmap,
    frames: &'a mut F,
    tables: &'a mut T,
    sync: Option<&'a mut dyn BbmSync>,
    race_hook: Option<&'a mut dyn FnMut(VirtAddr)>,
    fail_replace: Option<u64>,
    opts: HvoOptions,
    stats: HvoStats,
}

impl<M: PhysMem, O: MmuOps, F: VmemmapFrames, T: FrameAlloc> core::fmt::Debug
    for Hvo<'_, M, O, F, T>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Hvo").field("opts", &self.opts).field("stats", &self.stats).finish()
    }
}

impl<'a, M: PhysMem, O: MmuOps, F: VmemmapFrames, T: FrameAlloc> Hvo<'a, M, O, F, T> {
    /// HVO over the `init_mm` locked by `guard` (for read).
    ///
    /// # Safety
    /// - `mem` reaches every frame backing the vmemmap and every frame `frames` and `tables`
    ///   hand out (on the target: the linear map);
    /// - `vm` is the memmap `init_mm` maps at [`VMEMMAP_START`] (on the target
    ///   [`Vmemmap::kernel`]): the descriptors HVO remaps are the ones `vm` reads;
    /// - while an HVO call runs, no other CPU accesses the descriptors of the folios it is
    ///   given, nor those of a section whose vmemmap block it splits (they are briefly
    ///   unmapped by break-before-make), and nothing else edits those entries of `init_mm`;
    /// - the caller owns the folios it passes (the HugeTLB pool's lock or a [`Folio`] handle):
    ///   after optimization their tail descriptors are read-only, so nothing may write them
    ///   until they are restored.
    pub unsafe fn new(
        guard: &'a MmapReadGuard<'a, Kernel>,
        mem: &'a M,
        mmu: &'a mut O,
        vm: &'a Vmemmap,
        frames: &'a mut F,
        tables: &'a mut T,
    ) -> Self {
        Hvo {
            guard,
            mem,
            mmu,
            vm,
            frames,
            tables,
            sync: None,
            race_hook: None,
            fail_replace: None,
            opts: HvoOptions::default(),
            stats: HvoStats::default(),
        }
    }

    /// Uses `sync` for the following operations (default: [`NoSync`]).
    pub fn set_sync(&mut self, sync: &'a mut dyn BbmSync) {
        self.sync = Some(sync);
    }

    /// Test-only: `hook(va)` runs inside each split between the walker's read of the level-2
    /// entry at `va` and its re-check under `page_table_lock`, the window in which another CPU
    /// may split the same block. Host tests use it to interleave a second HVO deterministically.
    #[cfg(any(test, feature = "std", feature = "test-hooks"))]
    pub fn set_split_race_hook(&mut self, hook: &'a mut dyn FnMut(VirtAddr)) {
        self.race_hook = Some(hook);
    }

    /// Test-only: in each following operation, the `k`-th entry replacement (counted from 0,
    /// not counting rollbacks) fails as if another CPU had changed the entry
    /// ([`HvoError::Inconsistent`]), to test what a failure after entries were written leaves.
    #[cfg(any(test, feature = "std"))]
    pub fn inject_replace_failure(&mut self, k: Option<u64>) {
        self.fail_replace = k;
    }

    /// With options `opts`.
    pub fn with_options(mut self, opts: HvoOptions) -> Self {
        self.opts = opts;
        self
    }

    /// The options in effect.
    pub fn options(&self) -> HvoOptions {
        self.opts
    }

    /// Changes the options.
    pub fn set_options(&mut self, opts: HvoOptions) {
        self.opts = opts;
    }

    /// What this instance has done so far.
    pub fn stats(&self) -> HvoStats {
        self.stats
    }

    /// The frame allocator.
    pub fn frames(&self) -> &F {
        self.frames
    }

    /// The MMU backend.
    pub fn mmu(&self) -> &O {
        self.mmu
    }

    /// Measures the vmemmap (see [`vmemmap_usage`]).
    pub fn usage(&self) -> VmemmapUsage {
        vmemmap_usage(self.guard, self.mem)
    }

    /// Shared tail design: allocates the tail page of `order` now if it has none (HVO's
    /// "init" time instead of the first optimize). Returns it; `Ok(None)` in the seed design.
    pub fn prepare_tail_page(&mut self, order: u8) -> Result<Option<PhysAddr>, HvoError> {
        if hvo_tails::tail_design() != TailDesign::Shared {
            return Ok(None);
        }
        ensure_tail_page(self.mem, self.vm, &mut *self.frames, order, &mut self.stats).map(Some)
    }

    /// Optimizes `folio` if HVO is enabled now ([`hvo_enabled`]): what the pool calls after
    /// allocating a folio (Linux's `hugetlb_vmemmap_optimize_folio()` from
    /// `prep_new_hugetlb_folio()`). `Ok(false)`: disabled, or nothing to do.
    pub fn maybe_optimize(&mut self, folio: &Folio) -> Result<bool, HvoError> {
        if !hvo_enabled() || optimizable_vmemmap_pages(folio.order()) == 0 {
            return Ok(false);
        }
        self.optimize_folio(folio)
    }

    /// Splits the vmemmap blocks covering `folio`'s descriptors into page tables and does
    /// nothing else (the split-only strategy). Returns the number of blocks split.
    pub fn split_folio(&mut self, folio: &Folio) -> Result<u64, HvoError> {
        check_order(folio)?;
        let before = self.mmu.stats();
        let mm = self.guard.mm();
        let mut nosync = NoSync;
        let sync: &mut dyn BbmSync = match self.sync.as_deref_mut() {
            Some(s) => s,
            None => &mut nosync,
        };
        let mut w = HvoWalk::new(self.mem, self.vm, &mut *self.mmu, sync, mm, Strategy::SplitOnly);
        w.recheck = self.opts.recheck_entries;
        w.fail_replace = self.fail_replace;
        w.race_hook = self.race_hook.as_deref_mut().map(|h| h as &mut dyn FnMut(VirtAddr));
        walk_folio(self.guard, self.mem, &mut w, folio, Phase::Check)?;
        alloc_tables(self.mem, &mut *self.tables, &mut w, &mut self.stats)?;
        let r = if w.need_tables > 0 {
            w.sync.op_begin();
            let r = walk_folio(self.guard, self.mem, &mut w, folio, Phase::Apply);
            w.sync.op_end();
            r
        } else {
            Ok(())
        };
        let splits = w.splits;
        self.stats.splits_skipped += w.splits_skipped;
        self.stats.split_waits += w.split_waits;
        release_tables(self.mem, &mut *self.tables, &mut w, &mut self.stats);
        self.stats.splits += splits;
        drop(w);
        self.stats.add_mmu(self.mmu.stats().since(before));
        r.map(|()| splits)
    }

    /// Optimizes one folio: split, then each tail entry replaced with its own
    /// break-before-make (Linux's `hugetlb_vmemmap_optimize_folio()`). `Ok(false)` if it was
    /// already optimized.
    pub fn optimize_folio(&mut self, folio: &Folio) -> Result<bool, HvoError> {
        self.optimize(core::slice::from_ref(folio), false).map(|n| n == 1)
    }

    /// Optimizes a batch: every block split first, then one break-before-make for all the
    /// entries of all the folios (Linux's `hugetlb_vmemmap_optimize_folios()`). Folios already
    /// optimized are skipped; an error changes nothing. Returns the number optimized.
    pub fn optimize_folios(&mut self, folios: &[Folio]) -> Result<u64, HvoError> {
        self.optimize(folios, true)
    }

    /// Restores one folio's vmemmap: a fresh copy of page 0 per tail page, each entry replaced
    /// with its own break-before-make (Linux's `hugetlb_vmemmap_restore_folio()`). All frames
    /// are allocated first: if that fails nothing changes and the folio stays optimized.
    /// `Ok(false)` if it was not optimized. The split page tables are kept, as in Linux.
    pub fn restore_folio(&mut self, folio: &Folio) -> Result<bool, HvoError> {
        self.restore(core::slice::from_ref(folio), false).map(|n| n == 1)
    }

    /// Restores a batch with one break-before-make for all entries (Linux's
    /// `hugetlb_vmemmap_restore_folios()`). Frames for the whole batch are allocated first; an
    /// error changes nothing. Folios not optimized are skipped. Returns the number restored.
    pub fn restore_folios(&mut self, folios: &[Folio]) -> Result<u64, HvoError> {
        self.restore(folios, true)
    }

    /// Refuses a folio whose head is not frozen (unless the test-only control says not to).
    fn check_frozen(&self, f: &Folio) -> Result<(), HvoError> {
        let refcount = self.vm.page(f.head_pfn()).refcount();
        if self.opts.require_frozen && refcount != 0 {
            return Err(HvoError::NotFrozen { folio: f.head_pfn(), refcount });
        }
        Ok(())
    }

    fn optimize(&mut self, folios: &[Folio], batched: bool) -> Result<u64, HvoError> {
        phase::enter(HvoPhase::Check);
        let r = self.optimize_timed(folios, batched);
        phase::leave();
        r
    }

    fn optimize_timed(&mut self, folios: &[Folio], batched: bool) -> Result<u64, HvoError> {
        let vm = self.vm;
        let shared = hvo_tails::tail_design() == TailDesign::Shared;
        for f in folios {
            check_order(f)?;
            if folio_is_optimized(vm, f) {
                continue;
            }
            self.check_frozen(f)?;
            if self.opts.verify_tails {
                check_folio_and_tails(vm, f)?;
            } else {
                check_folio(f, vm).map_err(HvoError::Folio)?;
            }
            if shared {
                // Pages 1..N are about to be replaced by the shared page: their tails must be
                // exactly its tails (always checked: a folio prepared with address-encoded
                // tails, e.g. under a memmap base not aligned enough, must not lose them).
                check_shared_template(vm, f)?;
            }
        }
        // The optimized flags change only at the very end, so this selects the same folios in
        // every pass. It reads each folio's head: only evaluate it for a folio before its own
        // entries are invalidated (see `complete_batch`).
        let todo = folios.iter().filter(|f| !folio_is_optimized(vm, f));
        if todo.clone().next().is_none() {
            return Ok(0);
        }
        let window = batch_window(todo.clone());
        let n_todo = todo.clone().count();
        let before = self.mmu.stats();
        let mm = self.guard.mm();
        let mut nosync = NoSync;
        let sync: &mut dyn BbmSync = match self.sync.as_deref_mut() {
            Some(s) => s,
            None => &mut nosync,
        };
        let mut w = HvoWalk::new(self.mem, vm, &mut *self.mmu, sync, mm, Strategy::Optimize);
        w.recheck = self.opts.recheck_entries;
        w.fail_replace = self.fail_replace;
        w.race_hook = self.race_hook.as_deref_mut().map(|h| h as &mut dyn FnMut(VirtAddr));
        w.batch_window = window;
        for f in todo.clone() {
            walk_folio(self.guard, self.mem, &mut w, f, Phase::Check)?;
        }
        phase::enter(HvoPhase::Alloc);
        if shared {
            // The shared tail page of each order in the batch, allocated on first use, before
            // any other allocation (a failure changes nothing).
            for f in todo.clone() {
                ensure_tail_page(self.mem, vm, &mut *self.frames, f.order(), &mut self.stats)?;
            }
        }
        alloc_tables(self.mem, &mut *self.tables, &mut w, &mut self.stats)?;
        // The frames for the copies of page 0, taken before any entry is written (so that no
        // allocation happens inside a break window). Short: the last folios keep their page 0.
        let mut heads = Chain::EMPTY;
        if self.opts.replace_head_page && !shared {
            for _ in 0..n_todo {
                match self.frames.alloc() {
                    Some(pa) => {
                        heads.push(self.mem, pa);
                        self.stats.frames_allocated += 1;
                    }
                    None => break,
                }
            }
        }
        // Linux's hugetlb_optimize_vmemmap_key: fake heads may exist from now on (seed design
        // only: the shared design never maps a head where a tail is).
        if !shared {
            set_fake_head_fixup(true);
        }
        w.sync.op_begin();

        let mut r = Ok(());
        if batched {
            phase::enter(HvoPhase::Split);
            w.strategy = Strategy::SplitOnly;
            for f in todo.clone() {
                r = r.and_then(|()| walk_folio(self.guard, self.mem, &mut w, f, Phase::Apply));
            }
            w.strategy = Strategy::Optimize;
        }
        let phase = if batched { Phase::Invalidate } else { Phase::Apply };
        phase::enter(HvoPhase::Remap);
        // The folio (index in `todo`) where the pass failed, with page 0's attributes.
        let mut failed: Option<(usize, Option<Attrs>)> = None;
        for (i, f) in todo.clone().enumerate() {
            if r.is_err() {
                break;
            }
            w.new_head = heads.pop(self.mem);
            r = walk_folio(self.guard, self.mem, &mut w, f, phase);
            if r.is_err() {
                failed = Some((i, w.reuse.map(|(_, a)| a)));
            }
            if let Some(unused) = w.new_head.take() {
                w.to_free.push(vm, unused, 0);
            }
        }
        // Folios completely done: all of them, or those before the one that failed (none if
        // the split pass failed).
        let done = match (&r, failed) {
            (Ok(()), _) => n_todo,
            (Err(_), Some((i, _))) => i,
            (Err(_), None) => 0,
        };
        while let Some(unused) = heads.pop(self.mem) {
            w.to_free.push(vm, unused, 0);
        }
        // Pending entries are completed even after an error (which the check pass makes
        // impossible short of a concurrent edit of the tables), so none stays invalid.
        r = r.and(complete_and_publish(
            self.guard,
            self.mem,
            &mut w,
            folios,
            self.opts.flush_all_threshold,
            &mut self.stats,
        ));
        // A failure after entries of a folio were written: put that folio back as it was, so
        // that exactly the folios flagged below are optimized.
        if let Some((i, Some(rw))) = failed {
            if let Some(f) = todo.clone().nth(i) {
                r = r.and(rollback_optimize(self.guard, self.mem, &mut w, f, rw));
            }
        }
        // The old frames' TLB entries are gone (each break completed with its DSB ISH); once
        // every other CPU has passed a quiescent state, no reader still holds an address it
        // computed through the old mapping: free.
        if !w.to_free.is_empty() {
            let prev = phase::enter(HvoPhase::Grace);
            w.sync.grace_period();
            phase::resume(prev);
        }
        let failures_before = self.stats.free_failures;
        w.to_free.drain(vm, &mut *self.frames, &mut self.stats);
        let not_freed = self.stats.free_failures - failures_before;
        w.sync.op_end();
        phase::enter(HvoPhase::Free);
        release_tables(self.mem, &mut *self.tables, &mut w, &mut self.stats);
        self.stats.splits += w.splits;
        self.stats.splits_skipped += w.splits_skipped;
        self.stats.split_waits += w.split_waits;
        self.stats.ptes_remapped += w.remapped;
        self.stats.head_pages_replaced += w.heads_replaced;
        drop(w);
        self.stats.add_mmu(self.mmu.stats().since(before));
        let mut n = 0;
        for f in todo.take(done) {
            vm.page(f.head_pfn()).set_flags(PageFlags::VMEMMAP_OPTIMIZED);
            NR_OPTIMIZED.fetch_add(1, Relaxed);
            n += 1;
        }
        self.stats.folios += n;
        r?;
        if not_freed > 0 {
            // Never report success for a failed free.
            return Err(HvoError::FramesNotFreed { count: not_freed });
        }
        Ok(n)
    }

    fn restore(&mut self, folios: &[Folio], batched: bool) -> Result<u64, HvoError> {
        phase::enter(HvoPhase::Check);
        let r = self.restore_timed(folios, batched);
        phase::leave();
        r
    }

    fn restore_timed(&mut self, folios: &[Folio], batched: bool) -> Result<u64, HvoError> {
        let vm = self.vm;
        for f in folios {
            check_order(f)?;
            if folio_is_optimized(vm, f) {
                self.check_frozen(f)?;
            }
        }
        let todo = folios.iter().filter(|f| folio_is_optimized(vm, f));
        if todo.clone().next().is_none() {
            return Ok(0);
        }
        let window = batch_window(todo.clone());
        let n_todo = todo.clone().count();
        let before = self.mmu.stats();
        let mm = self.guard.mm();
        let mut nosync = NoSync;
        let sync: &mut dyn BbmSync = match self.sync.as_deref_mut() {
            Some(s) => s,
            None => &mut nosync,
        };
        let mut w = HvoWalk::new(self.mem, vm, &mut *self.mmu, sync, mm, Strategy::Restore);
        w.recheck = self.opts.recheck_entries;
        w.fail_replace = self.fail_replace;
        w.batch_window = window;
        for f in todo.clone() {
            walk_folio(self.guard, self.mem, &mut w, f, Phase::Check)?;
        }
        let needed = w.need_frames;
        phase::enter(HvoPhase::Alloc);
        let mut got = 0;
        while got < needed {
            // In runs of contiguous frames where the allocator has them (one allocation each).
            match self.frames.alloc_run(needed - got) {
                Some((first, n)) => {
                    // Pushed last frame first, so the walk pops them in address order.
                    for i in (0..n).rev() {
                        w.frames.push(self.mem, first + i * PAGE_SIZE);
                    }
                    self.stats.frames_allocated += n;
                    got += n;
                }
                None => {
                    // Give back what we got; no entry has been touched.
                    while let Some(pa) = w.frames.pop(self.mem) {
                        if self.frames.free(pa) {
                            self.stats.frames_freed += 1;
                        } else {
                            self.stats.free_failures += 1;
                        }
                    }
                    return Err(HvoError::NoMemory { needed, got });
                }
            }
        }
        w.sync.op_begin();
        let phase = if batched { Phase::Invalidate } else { Phase::Apply };
        phase::enter(HvoPhase::Remap);
        let mut r = Ok(());
        let mut failed = None;
        for (i, f) in todo.clone().enumerate() {
            r = walk_folio(self.guard, self.mem, &mut w, f, phase);
            if r.is_err() {
                failed = Some(i);
                break;
            }
        }
        let done = failed.unwrap_or(n_todo);
        r = r.and(complete_and_publish(
            self.guard,
            self.mem,
            &mut w,
            folios,
            self.opts.flush_all_threshold,
            &mut self.stats,
        ));
        // A failure after entries of a folio were restored: map them back onto page 0, so
        // that the folio is exactly as optimized as its flag says.
        if let Some(f) = failed.and_then(|i| todo.clone().nth(i)) {
            r = r.and(walk_folio(self.guard, self.mem, &mut w, f, Phase::Rollback));
        }
        while let Some(pa) = w.frames.pop(self.mem) {
            // Only after an error: frames allocated but never mapped (no grace period needed).
            if self.frames.free(pa) {
                self.stats.frames_freed += 1;
            } else {
                self.stats.free_failures += 1;
            }
        }
        if !w.to_free.is_empty() {
            // Frames a rollback unmapped: readers may still hold addresses through them.
            w.sync.grace_period();
            w.to_free.drain(vm, &mut *self.frames, &mut self.stats);
        }
        w.sync.op_end();
        self.stats.ptes_restored += w.restored;
        drop(w);
        self.stats.add_mmu(self.mmu.stats().since(before));
        let mut n = 0;
        for f in todo.take(done) {
            vm.page(f.head_pfn()).clear_flags(PageFlags::VMEMMAP_OPTIMIZED);
            NR_OPTIMIZED.fetch_sub(1, Relaxed);
            n += 1;
        }
        self.stats.folios_restored += n;
        r?;
        Ok(n)
    }
}

/// The vmemmap VAs of `folios` (from the lowest start to the highest end): a superset of what
/// a batched pass over them may leave invalid.
fn batch_window<'f>(folios: impl Iterator<Item = &'f Folio>) -> (VirtAddr, VirtAddr) {
    folios.map(folio_vmemmap_range).fold((VirtAddr(u64::MAX), VirtAddr(0)), |(lo, hi), (s, e)| {
        (if s < lo { s } else { lo }, if e > hi { e } else { hi })
    })
}

/// Shared design: tail 1 of `folio` must be byte-identical to the tails of the order's shared
/// page (all tails are checked against tail 1 by [`check_folio_and_tails`]).
fn check_shared_template(vm: &Vmemmap, folio: &Folio) -> Result<(), HvoError> {
    let template = Page::new();
    hvo_tails::init_shared_tail(&template, folio.order());
    match vm.get(Pfn(folio.head_pfn().0 + 1)) {
        Some(t1) if desc_words(t1) == desc_words(&template) => Ok(()),
        _ => Err(HvoError::TailMismatch { folio: folio.head_pfn(), index: 1 }),
    }
}

/// Shared design: makes sure the tail page of `order` exists in `vm`, allocating and filling
/// it on first use. Another CPU may publish one first: ours then goes back.
fn ensure_tail_page(
    mem: &impl PhysMem,
    vm: &Vmemmap,
    frames: &mut impl VmemmapFrames,
    order: u8,
    stats: &mut HvoStats,
) -> Result<PhysAddr, HvoError> {
    if let Some(pa) = vm.tail_pages().get(order) {
        return Ok(pa);
    }
    let pa = frames.alloc().ok_or(HvoError::NoMemory { needed: 1, got: 0 })?;
    stats.frames_allocated += 1;
    // SAFETY: `pa` is a frame the allocator just gave us, not mapped anywhere yet, reachable
    // through `mem` (`Hvo::new`'s contract).
    unsafe { hvo_tails::fill_tail_page(mem.ptr(pa), order) };
    let (cur, ours) = vm.tail_pages().publish(order, pa);
    if ours {
        stats.shared_tail_pages += 1;
    } else if frames.free(pa) {
        stats.frames_freed += 1;
    } else {
        stats.free_failures += 1;
    }
    Ok(cur)
}

/// Sets the tail design (boot argument `hvo_tails=`), refused once the design is fixed or while
/// folios are optimized (see [`hvo_tails::set_tail_design`]).
pub fn set_tail_design(d: TailDesign) -> Result<(), TailsError> {
    hvo_tails::set_tail_design(d, nr_optimized_folios())
}

fn check_order(folio: &Folio) -> Result<(), HvoError> {
    match optimizable_vmemmap_pages(folio.order()) {
        0 => Err(HvoError::UnsupportedOrder { order: folio.order() }),
        _ => Ok(()),
    }
}

/// Takes the table pages the check pass counted, all or none.
fn alloc_tables<M: PhysMem, O: MmuOps>(
    mem: &M,
    tables: &mut impl FrameAlloc,
    w: &mut HvoWalk<'_, M, O>,
    stats: &mut HvoStats,
) -> Result<(), HvoError> {
    let needed = w.need_tables;
    for got in 0..needed {
        match tables.alloc_table() {
            Some(pa) => w.tables.push(mem, pa),
            None => {
                while let Some(pa) = w.tables.pop(mem) {
                    tables.free_table(pa);
                }
                return Err(HvoError::NoPageTables { needed, got });
            }
        }
    }
    stats.tables_allocated += needed;
    Ok(())
}

/// Gives back table pages the split did not use.
fn release_tables<M: PhysMem, O: MmuOps>(
    mem: &M,
    tables: &mut impl FrameAlloc,
    w: &mut HvoWalk<'_, M, O>,
    stats: &mut HvoStats,
) {
    while let Some(pa) = w.tables.pop(mem) {
        tables.free_table(pa);
        stats.tables_allocated -= 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Measurement
// ---------------------------------------------------------------------------------------------

/// What backs the vmemmap, measured by walking `init_mm`.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct VmemmapUsage {
    /// 1 GiB blocks (not used by this firmware; counted if present).
    pub blocks_1g: u64,
    /// 2 MiB blocks.
    pub blocks_2m: u64,
    /// Page tables under the vmemmap (split blocks); page-table memory, not counted in
    /// [`bytes`](Self::bytes).
    pub pte_tables: u64,
    /// Valid page entries.
    pub ptes: u64,
    /// Distinct frames behind those entries.
    pub pte_frames: u64,
}

impl VmemmapUsage {
    /// Bytes of memory backing the vmemmap: blocks in full, page-mapped frames once each.
    pub fn bytes(&self) -> u64 {
        self.blocks_1g * PUD_SIZE + self.blocks_2m * PMD_SIZE + self.pte_frames * PAGE_SIZE
    }
}

/// Counts the vmemmap's mappings. A page entry counts as a new frame unless one of the last
/// [`UsageWalk::RECENT`] distinct frames seen (in VA order) is the same: every alias the seed
/// design creates maps page 0 of a folio, which precedes its tails, so this finds them all. A
/// read-only frame not seen recently is a shared tail page (shared design, mapped by folios
/// anywhere in the vmemmap): it is remembered in `shared` and counted once.
struct UsageWalk {
    u: VmemmapUsage,
    recent: [u64; UsageWalk::RECENT],
    next: usize,
    shared: [u64; UsageWalk::RECENT],
}

impl UsageWalk {
    const RECENT: usize = 8;
}

impl PageWalkOps for UsageWalk {
    type Output = ();
    type Error = core::convert::Infallible;
    const INTERESTS: Interests = Interests::PUD.union(Interests::PMD).union(Interests::PTE);

    fn pud_entry(&mut self, e: &Entry) -> Result<WalkAction<()>, Self::Error> {
        if e.kind() == DescKind::Block {
            self.u.blocks_1g += 1;
        }
        Ok(WalkAction::Subtree)
    }
    fn pmd_entry(&mut self, e: &Entry) -> Result<WalkAction<()>, Self::Error> {
        match e.kind() {
            DescKind::Block => self.u.blocks_2m += 1,
            DescKind::Table => self.u.pte_tables += 1,
            _ => {}
        }
        Ok(WalkAction::Subtree)
    }
    fn pte_entry(&mut self, e: &Entry) -> Result<WalkAction<()>, Self::Error> {
        self.u.ptes += 1;
        let pa = e.desc().output_address(Level::L3).0 + 1; // +1: never 0, the empty slot
        let read_only = e.desc().decode_leaf(Level::L3).is_some_and(|(_, a)| !a.is_writable());
        if read_only && !self.recent.contains(&pa) {
            if !self.shared.contains(&pa) {
                self.u.pte_frames += 1;
                if let Some(slot) = self.shared.iter_mut().find(|s| **s == 0) {
                    *slot = pa;
                }
            }
        } else if !self.recent.contains(&pa) {
            self.u.pte_frames += 1;
            self.recent[self.next] = pa;
            self.next = (self.next + 1) % Self::RECENT;
        }
        Ok(WalkAction::Continue)
    }
}

/// Measures what backs the vmemmap range of `init_mm`, walking it with the page walker.
pub fn vmemmap_usage(guard: &MmapReadGuard<'_, Kernel>, mem: &impl PhysMem) -> VmemmapUsage {
    usage_walk(guard, mem).u
}

fn usage_walk(guard: &MmapReadGuard<'_, Kernel>, mem: &impl PhysMem) -> UsageWalk {
    let mut w = UsageWalk {
        u: VmemmapUsage::default(),
        recent: [0; UsageWalk::RECENT],
        next: 0,
        shared: [0; UsageWalk::RECENT],
    };
    let (s, e) = (VirtAddr(VMEMMAP_START), VirtAddr(VMEMMAP_START + VMEMMAP_SIZE));
    // The range is page aligned and inside the kernel half: the walk cannot fail.
    let _ = walk_page_range_novma(guard, mem, s, e, &mut w);
    w
}

/// The vmemmap's frames two ways: by page state and by what `init_mm` maps.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct VmemmapCensus {
    /// RAM frames in state [`PageState::Vmemmap`].
    pub state_vmemmap: u64,
    /// Distinct frames the vmemmap maps (blocks in full).
    pub mapped: u64,
}

impl VmemmapCensus {
    /// Frames in state `Vmemmap` that nothing maps: lost (e.g. a free the allocator refused).
    pub fn unmapped(&self) -> u64 {
        self.state_vmemmap.saturating_sub(self.mapped)
    }

    /// Conservation of the vmemmap: every frame in state `Vmemmap` is mapped, and the vmemmap
    /// maps no more frames than that (a mapped frame in another state was freed under it).
    pub fn check(&self) -> Result<(), VmemmapCensus> {
        if self.state_vmemmap == self.mapped {
            Ok(())
        } else {
            Err(*self)
        }
    }
}

/// Counts the vmemmap's frames by state (over `ram`) and by a walk of `init_mm` (see
/// [`vmemmap_usage`]): page conservation extended to "nothing holds a vmemmap frame that
/// nothing maps". The shared tail pages (shared design) are held by the memmap for reuse even
/// while no folio maps them: each counts as mapped once.
pub fn vmemmap_census(
    guard: &MmapReadGuard<'_, Kernel>,
    mem: &impl PhysMem,
    vm: &Vmemmap,
    ram: &[crate::memblock::MemRegion],
) -> VmemmapCensus {
    let w = usage_walk(guard, mem);
    let u = w.u;
    let idle_tail_pages =
        vm.tail_pages().pages().filter(|pa| !w.shared.contains(&(pa.0 + 1))).count() as u64;
    VmemmapCensus {
        state_vmemmap: crate::buddy::conservation(vm, ram).vmemmap,
        mapped: u.blocks_1g * (PUD_SIZE / PAGE_SIZE)
            + u.blocks_2m * (PMD_SIZE / PAGE_SIZE)
            + u.pte_frames
            + idle_tail_pages,
    }
}

/// Bytes of memory backing the vmemmap, measured (see [`vmemmap_usage`]).
pub fn vmemmap_bytes_in_use(guard: &MmapReadGuard<'_, Kernel>, mem: &impl PhysMem) -> u64 {
    vmemmap_usage(guard, mem).bytes()
}

// ---------------------------------------------------------------------------------------------
// For sibling operations (demote, `crate::hugetlb_demote`)
// ---------------------------------------------------------------------------------------------

/// The pieces of an [`Hvo`] that an operation written in a sibling module works with: the same
/// lock guard, memory, MMU backend, memmap, frame allocator, coordination hooks, options and
/// statistics, so that it keeps [`Hvo::new`]'s contract and its counts add up with HVO's.
pub(crate) struct HvoParts<'h, 'a, M, O, F> {
    pub guard: &'a MmapReadGuard<'a, Kernel>,
    pub mem: &'a M,
    pub mmu: &'h mut O,
    pub vm: &'a Vmemmap,
    pub frames: &'h mut F,
    pub sync: Option<&'h mut (dyn BbmSync + 'a)>,
    pub opts: HvoOptions,
    pub stats: &'h mut HvoStats,
}

impl<'a, M: PhysMem, O: MmuOps, F: VmemmapFrames, T: FrameAlloc> Hvo<'a, M, O, F, T> {
    /// This instance's pieces, for `crate::hugetlb_demote`.
    pub(crate) fn parts(&mut self) -> HvoParts<'_, 'a, M, O, F> {
        HvoParts {
            guard: self.guard,
            mem: self.mem,
            mmu: &mut *self.mmu,
            vm: self.vm,
            frames: &mut *self.frames,
            sync: self.sync.as_deref_mut(),
            opts: self.opts,
            stats: &mut self.stats,
        }
    }
}

/// Counts `n` more folios as optimized: a demote turns one optimized folio into several
/// ([`nr_optimized_folios`]).
pub(crate) fn note_optimized_folios(n: u64) {
    NR_OPTIMIZED.fetch_add(n, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(hugetlb_vmemmap_size(9), 32 << 10);
        assert_eq!(hugetlb_vmemmap_size(18), 16 << 20);
        assert_eq!(optimizable_vmemmap_pages(9), 7);
        assert_eq!(optimizable_vmemmap_pages(18), 4095);
        // 64 descriptors: one page, nothing to free. 32: not even a page.
        assert_eq!(optimizable_vmemmap_pages(6), 0);
        assert_eq!(optimizable_vmemmap_pages(5), 0);
        assert_eq!(optimizable_vmemmap_pages(7), 1);
        assert_eq!(vmemmap_va(Pfn(2)), VirtAddr(VMEMMAP_START + 128));
    }

    #[test]
    fn switch_controls_what_would_be_freed() {
        // The only test touching the global switch in this binary.
        assert!(hvo_enabled(), "default on");
        assert_eq!(free_vmemmap_pages_per_folio(9) * 4, 28);
        assert_eq!(free_vmemmap_pages_per_folio(18) * 4, 16380);
        apply_boot_param(Some(false));
        assert_eq!(free_vmemmap_pages_per_folio(9), 0);
        apply_boot_param(None);
        assert!(!hvo_enabled());
        set_hvo_enabled(true);
        assert_eq!(free_vmemmap_pages_per_folio(18), 4095);
    }

    #[test]
    fn pending_entries_round_trip() {
        let d = Descriptor::leaf(Level::L3, PhysAddr(0x4012_3000), Attrs::kernel_data()).unwrap();
        let p = pending(d);
        assert_eq!(p.kind(Level::L3), DescKind::Invalid);
        assert!(is_pending(p));
        assert!(!is_pending(d) && !is_pending(Descriptor::INVALID));
        assert_eq!(from_pending(p), d);
        assert_eq!(d.bits() & PENDING_BIT, 0, "Attrs never sets the software bit");
    }

    #[test]
    fn options_default_like_linux() {
        let o = HvoOptions::default();
        assert!(o.replace_head_page && o.verify_tails);
        assert_eq!(o.flush_all_threshold, 512);
    }

    #[test]
    fn stats_difference() {
        let a = HvoStats { frames_freed: 8, frames_allocated: 1, tlbi: 3, ..Default::default() };
        assert_eq!(a.net_frames_freed(), 7);
        let b = HvoStats { frames_freed: 10, tlbi: 5, ..a };
        assert_eq!(b.since(a), HvoStats { frames_freed: 2, tlbi: 2, ..Default::default() });
    }
}
