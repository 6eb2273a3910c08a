//! The virtually mapped memmap: descriptor `n` ([`Page`]) at `VMEMMAP_START + 64 * n`.
//!
//! As in Linux's `CONFIG_SPARSEMEM_VMEMMAP`, `pfn_to_page` and `page_to_pfn` are pure pointer
//! arithmetic over one huge virtual array, and only the parts of the array that describe RAM are
//! backed. Physical memory is cut into *sections* of 128 MiB (arm64's `SECTION_SIZE_BITS = 27`
//! with 4 KiB pages); a section's 32768 descriptors take exactly 2 MiB of vmemmap, so each
//! section's memmap is one level-2 block mapping (Linux's `vmemmap_populate` with PMD mappings,
//! `mm/sparse-vmemmap.c`). A bitmap records which sections are present (mapped): that is
//! [`Vmemmap::pfn_valid`].
//!
//! Boot: [`Vmemmap::populate_plan`] lists the 2 MiB blocks, [`Vmemmap::populate`] takes a
//! 2 MiB-aligned frame per block from memblock (reserved as `Vmemmap`) and has the caller map it,
//! then [`Vmemmap::init_descriptors`] initialises every descriptor in those sections (state
//! `Reserved`). Memory hot-added later can host its own memmap at the start of each of its
//! sections (Linux's memmap-on-memory): [`Vmemmap::populate_self_hosted`].
//!
//! On the host, [`HostVmemmap`] backs the array with heap memory so the same code is tested.

use crate::addr::{Pfn, PhysAddr, VirtAddr, PAGE_SIZE, PMD_SIZE};
use crate::layout::VMEMMAP_START;
use crate::memblock::{MemRegion, Memblock, MemblockError, ReservedKind};
use crate::page::{Page, PageFlags, PageState, PAGE_DESC_SIZE};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// log2 of a memory section (128 MiB).
pub const SECTION_SIZE_BITS: u32 = 27;
/// A memory section: 128 MiB.
pub const SECTION_SIZE: u64 = 1 << SECTION_SIZE_BITS;
/// Frames per section: 32768.
pub const PAGES_PER_SECTION: u64 = SECTION_SIZE / PAGE_SIZE;
/// Bytes of vmemmap per section: 2 MiB, one level-2 block.
pub const VMEMMAP_BLOCK_SIZE: u64 = PAGES_PER_SECTION * PAGE_DESC_SIZE;
/// Highest physical address bit the memmap covers (64 GiB: plenty for a Pi 4 and hotplug).
pub const MAX_PHYSMEM_BITS: u32 = 36;
/// Number of sections the present-bitmap tracks.
pub const NR_SECTIONS: usize = 1 << (MAX_PHYSMEM_BITS - SECTION_SIZE_BITS);

const _: () = assert!(VMEMMAP_BLOCK_SIZE == PMD_SIZE);

/// The section holding `pfn`.
#[inline]
pub const fn pfn_to_section(pfn: Pfn) -> usize {
    (pfn.0 / PAGES_PER_SECTION) as usize
}

/// The first frame of section `s`.
#[inline]
pub const fn section_to_pfn(s: usize) -> Pfn {
    Pfn(s as u64 * PAGES_PER_SECTION)
}

/// The physical range of section `s`.
#[inline]
pub const fn section_region(s: usize) -> MemRegion {
    MemRegion::new(s as u64 * SECTION_SIZE, SECTION_SIZE)
}

/// Sections `[lo, hi)` touched by `r` (empty range for an empty region).
fn sections_of(r: &MemRegion) -> core::ops::Range<usize> {
    let p = r.pfns();
    if p.is_empty() {
        return 0..0;
    }
    pfn_to_section(Pfn(p.start))..pfn_to_section(Pfn(p.end - 1)) + 1
}

fn section_has_ram(s: usize, ram: &[MemRegion]) -> bool {
    let sec = section_region(s);
    ram.iter().any(|r| r.page_trimmed().overlaps(&sec))
}

/// The range `memhp_reserve=size` holds back in `bank`: the highest whole sections of `bank`
/// totalling `size` (a multiple of [`SECTION_SIZE`]), or `None` if they do not fit. Sections,
/// because hot-added memory must bring whole sections for its memmap to be self-hosted.
pub fn hotplug_holdback(bank: &MemRegion, size: u64) -> Option<MemRegion> {
    if size == 0 || !size.is_multiple_of(SECTION_SIZE) {
        return None;
    }
    let end = crate::addr::align_down(bank.end(), SECTION_SIZE);
    let start = end.checked_sub(size)?;
    (start >= bank.base.0).then(|| MemRegion::from_range(start, end))
}

/// Like [`hotplug_holdback`], but never a range that overlaps one of `avoid` (the kernel image,
/// the boot blob, firmware ranges: memory the boot still needs): the highest whole sections of
/// `bank` totalling `size` that overlap none of them, or `None` if there is no such range.
pub fn hotplug_holdback_avoiding(
    bank: &MemRegion,
    size: u64,
    avoid: &[MemRegion],
) -> Option<MemRegion> {
    let mut cand = hotplug_holdback(bank, size)?;
    loop {
        // Every candidate ending above the lowest reservation it overlaps overlaps it too (it
        // starts lower): continue with the windows ending at or below that reservation.
        let lowest = avoid.iter().filter(|r| r.overlaps(&cand)).map(|r| r.base.0).min();
        let Some(lowest) = lowest else { return Some(cand) };
        let end = crate::addr::align_down(lowest, SECTION_SIZE);
        let start = end.checked_sub(size)?;
        if start < bank.base.0 {
            return None;
        }
        cand = MemRegion::from_range(start, end);
    }
}

/// Errors from populating the vmemmap.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum VmemmapError<E> {
    /// No 2 MiB frame for a block.
    Memblock(MemblockError),
    /// The caller's `map_block` failed.
    Map {
        /// The vmemmap block.
        va: VirtAddr,
        /// Its backing frame.
        pa: PhysAddr,
        /// The mapper's error.
        error: E,
    },
    /// RAM beyond [`MAX_PHYSMEM_BITS`].
    SectionOutOfRange {
        /// The section.
        section: usize,
    },
    /// A self-hosted range that is not whole sections.
    NotSectionAligned {
        /// The range.
        range: MemRegion,
    },
    /// A self-hosted range touching a section that is already present.
    AlreadyPresent {
        /// The section.
        section: usize,
    },
}

/// What [`Vmemmap::populate`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct VmemmapStats {
    /// Sections mapped by this call.
    pub sections_populated: u64,
    /// Sections with RAM that were already present.
    pub already_present: u64,
    /// Bytes of RAM used as vmemmap backing by this call.
    pub backing_bytes: u64,
    /// Sections with RAM left unpopulated because they lie inside a range to skip (1 GiB boot
    /// folios whose vmemmap [`crate::hvo_preinit`] populates later, already optimized).
    pub skipped: u64,
}

/// One entry of [`Vmemmap::populate_plan`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PlanEntry {
    /// The section.
    pub section: usize,
    /// Start of its 2 MiB vmemmap block.
    pub va: VirtAddr,
    /// `false` if the block is already mapped.
    pub needed: bool,
}

/// Iterator returned by [`Vmemmap::populate_plan`].
pub struct PopulatePlan<'a> {
    vm: &'a Vmemmap,
    ram: &'a [MemRegion],
    next: usize,
    end: usize,
}

impl Iterator for PopulatePlan<'_> {
    type Item = PlanEntry;
    fn next(&mut self) -> Option<PlanEntry> {
        while self.next < self.end {
            let s = self.next;
            self.next += 1;
            if section_has_ram(s, self.ram) {
                return Some(PlanEntry {
                    section: s,
                    va: self.vm.section_va(s),
                    needed: !self.vm.is_section_present(s),
                });
            }
        }
        None
    }
}

/// The result of [`Vmemmap::populate_self_hosted`]: the memmap of each section of `range` lives
/// in the first 2 MiB of that section.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SelfHosted {
    /// The hot-added range (whole sections).
    pub range: MemRegion,
}

impl SelfHosted {
    /// Sections in the range.
    pub fn sections(&self) -> core::ops::Range<usize> {
        sections_of(&self.range)
    }
    /// The frames backing the vmemmap: the first 2 MiB of every section.
    pub fn vmemmap_frames(&self) -> impl Iterator<Item = MemRegion> {
        self.sections().map(|s| MemRegion::new(section_region(s).base.0, VMEMMAP_BLOCK_SIZE))
    }
    /// The rest: what can go to the buddy allocator once the range is online.
    pub fn usable(&self) -> impl Iterator<Item = MemRegion> {
        self.sections().map(|s| {
            let r = section_region(s);
            MemRegion::new(r.base.0 + VMEMMAP_BLOCK_SIZE, SECTION_SIZE - VMEMMAP_BLOCK_SIZE)
        })
    }
    /// Does `pfn` back the vmemmap?
    pub fn is_vmemmap_frame(&self, pfn: Pfn) -> bool {
        self.range.contains(pfn.addr())
            && pfn.0 % PAGES_PER_SECTION < VMEMMAP_BLOCK_SIZE / PAGE_SIZE
    }
}

const BITMAP_WORDS: usize = NR_SECTIONS / 64;

/// The memmap: a base pointer and the present-section bitmap.
pub struct Vmemmap {
    base: *mut Page,
    present: [AtomicU64; BITMAP_WORDS],
    /// The shared tail pages HVO maps in this memmap (shared tail design).
    tails: crate::hvo_tails::TailPages,
}

// SAFETY: the base pointer is never changed after construction and descriptors are only accessed
// through shared references to `Page`, whose fields are all atomics; the bitmap is atomic.
unsafe impl Send for Vmemmap {}
// SAFETY: as above: every access through `&Vmemmap` is an atomic access.
unsafe impl Sync for Vmemmap {}

impl core::fmt::Debug for Vmemmap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vmemmap")
            .field("base", &self.base)
            .field("present_sections", &self.nr_present_sections())
            .finish()
    }
}

impl Vmemmap {
    /// A memmap whose descriptor for pfn `n` is at `base + n`, with no section present.
    ///
    /// # Safety
    ///
    /// Whoever later marks a section present (through [`populate`](Self::populate),
    /// [`populate_self_hosted`](Self::populate_self_hosted) or
    /// [`mark_section_present`](Self::mark_section_present)) must have made that section's
    /// 2 MiB of descriptors readable and writable at `base + section_to_pfn(s)`, for as long as
    /// the `Vmemmap` is used.
    pub const unsafe fn new(base: *mut Page) -> Self {
        Vmemmap {
            base,
            present: [const { AtomicU64::new(0) }; BITMAP_WORDS],
            tails: crate::hvo_tails::TailPages::new(),
        }
    }

    /// The shared tail pages of this memmap (HVO's shared tail design, [`crate::hvo_tails`]).
    pub fn tail_pages(&self) -> &crate::hvo_tails::TailPages {
        &self.tails
    }

    /// The kernel's memmap at [`VMEMMAP_START`].
    ///
    /// # Safety
    ///
    /// As for [`new`](Self::new).
    pub const unsafe fn kernel() -> Self {
        // SAFETY: forwarded to the caller.
        unsafe { Self::new(VMEMMAP_START as *mut Page) }
    }

    /// The descriptor address for pfn 0.
    pub fn base(&self) -> *mut Page {
        self.base
    }

    /// Linux's `pfn_to_page`: pure arithmetic, no check.
    #[inline]
    pub fn pfn_to_page(&self, pfn: Pfn) -> *const Page {
        self.base.wrapping_add(pfn.0 as usize)
    }

    /// Linux's `page_to_pfn`: pure arithmetic (the descriptor must belong to this memmap).
    #[inline]
    pub fn page_to_pfn(&self, page: &Page) -> Pfn {
        let off = (page as *const Page as usize).wrapping_sub(self.base as usize);
        Pfn(off as u64 / PAGE_DESC_SIZE)
    }

    /// Virtual address of pfn's descriptor.
    #[inline]
    pub fn pfn_to_va(&self, pfn: Pfn) -> VirtAddr {
        VirtAddr(self.pfn_to_page(pfn) as u64)
    }

    /// Start of the 2 MiB vmemmap block of section `s`.
    #[inline]
    pub fn section_va(&self, s: usize) -> VirtAddr {
        self.pfn_to_va(section_to_pfn(s))
    }

    /// Is section `s` mapped?
    pub fn is_section_present(&self, s: usize) -> bool {
        s < NR_SECTIONS && self.present[s / 64].load(Relaxed) & (1 << (s % 64)) != 0
    }

    /// Records that section `s`'s descriptors are mapped.
    ///
    /// # Safety
    ///
    /// The 2 MiB at [`section_va`](Self::section_va)`(s)` must be mapped read-write for as
    /// long as this `Vmemmap` is used (or until [`clear_section_present`](Self::clear_section_present)).
    pub unsafe fn mark_section_present(&self, s: usize) {
        assert!(s < NR_SECTIONS, "section {s} beyond MAX_PHYSMEM_BITS");
        self.present[s / 64].fetch_or(1 << (s % 64), Relaxed);
    }

    /// Records that section `s` is no longer mapped (memory hot-remove).
    pub fn clear_section_present(&self, s: usize) {
        if s < NR_SECTIONS {
            self.present[s / 64].fetch_and(!(1 << (s % 64)), Relaxed);
        }
    }

    /// Number of present sections.
    pub fn nr_present_sections(&self) -> usize {
        self.present.iter().map(|w| w.load(Relaxed).count_ones() as usize).sum()
    }

    /// Linux's `pfn_valid`: does pfn have a mapped descriptor?
    #[inline]
    pub fn pfn_valid(&self, pfn: Pfn) -> bool {
        self.is_section_present(pfn_to_section(pfn))
    }

    /// Are all of `[start, end)`'s descriptors mapped?
    pub fn range_valid(&self, start: Pfn, end: Pfn) -> bool {
        if start.0 >= end.0 {
            return true;
        }
        (pfn_to_section(start)..=pfn_to_section(Pfn(end.0 - 1))).all(|s| self.is_section_present(s))
    }

    /// The descriptor of `pfn`, if its section is present.
    #[inline]
    pub fn get(&self, pfn: Pfn) -> Option<&Page> {
        if !self.pfn_valid(pfn) {
            return None;
        }
        // SAFETY: the section is present, so (by the contract of `new`/`mark_section_present`)
        // its descriptors are mapped for the lifetime of `self`. `Page` is all atomics, so
        // shared references and any bit pattern are fine.
        Some(unsafe { &*self.pfn_to_page(pfn) })
    }

    /// The descriptor of `pfn`.
    ///
    /// # Panics
    ///
    /// If its section is not present; use [`get`](Self::get) when unsure.
    #[inline]
    #[track_caller]
    pub fn page(&self, pfn: Pfn) -> &Page {
        match self.get(pfn) {
            Some(p) => p,
            None => panic!("no descriptor for {pfn}"),
        }
    }

    /// The 2 MiB vmemmap blocks whose descriptors describe `ram`: one per section that contains
    /// RAM, ascending, with `needed == false` for blocks already mapped.
    pub fn populate_plan<'a>(&'a self, ram: &'a [MemRegion]) -> PopulatePlan<'a> {
        let lo = ram
            .iter()
            .filter(|r| r.nr_pages() > 0)
            .map(|r| sections_of(r).start)
            .min()
            .unwrap_or(0);
        let hi = ram.iter().map(|r| sections_of(r).end).max().unwrap_or(0);
        PopulatePlan { vm: self, ram, next: lo, end: hi }
    }

    /// Maps the memmap for `ram` (Linux's `vmemmap_populate` with PMD blocks): for each block
    /// of [`populate_plan`](Self::populate_plan) that is needed, takes a 2 MiB-aligned 2 MiB
    /// frame from `memblock` (reserved as [`ReservedKind::Vmemmap`]) and calls
    /// `map_block(vmemmap VA, frame)`, then marks the section present. Descriptors are not
    /// initialised: call [`init_descriptors`](Self::init_descriptors) next.
    ///
    /// # Safety
    ///
    /// When `map_block(va, pa)` returns `Ok`, the 2 MiB at `va` must be mapped read-write (to
    /// `pa` on the target) for as long as this `Vmemmap` is used.
    pub unsafe fn populate<E>(
        &self,
        ram: &[MemRegion],
        memblock: &mut Memblock,
        map_block: impl FnMut(VirtAddr, PhysAddr) -> Result<(), E>,
    ) -> Result<VmemmapStats, VmemmapError<E>> {
        // SAFETY: our caller's promise, passed on.
        unsafe { self.populate_skipping(ram, memblock, &[], map_block) }
    }

    /// [`populate`](Self::populate), leaving out every section that lies wholly inside one of
    /// `skip` (Linux 6.15's `hugetlb_vmemmap_init_early()` marks such sections so that
    /// `sparse_init` does not populate them): their vmemmap is mapped later, already optimized,
    /// by [`crate::hvo_preinit::populate_folio_optimized`]. Until then they are not present, so
    /// nothing reads or writes their descriptors.
    ///
    /// # Safety
    ///
    /// As for [`populate`](Self::populate).
    pub unsafe fn populate_skipping<E>(
        &self,
        ram: &[MemRegion],
        memblock: &mut Memblock,
        skip: &[MemRegion],
        mut map_block: impl FnMut(VirtAddr, PhysAddr) -> Result<(), E>,
    ) -> Result<VmemmapStats, VmemmapError<E>> {
        let mut stats = VmemmapStats::default();
        for e in self.populate_plan(ram) {
            if e.section >= NR_SECTIONS {
                return Err(VmemmapError::SectionOutOfRange { section: e.section });
            }
            let sr = section_region(e.section);
            if e.needed && skip.iter().any(|k| k.covers(&sr)) {
                stats.skipped += 1;
                continue;
            }
            if !e.needed {
                stats.already_present += 1;
                continue;
            }
            let pa = memblock
                .alloc(VMEMMAP_BLOCK_SIZE, VMEMMAP_BLOCK_SIZE, ReservedKind::Vmemmap)
                .map_err(VmemmapError::Memblock)?;
            if let Err(error) = map_block(e.va, pa) {
                // Give the frame back; the reservation was just made, so this cannot fail.
                let _ = memblock.unreserve(pa, VMEMMAP_BLOCK_SIZE);
                return Err(VmemmapError::Map { va: e.va, pa, error });
            }
            // SAFETY: `map_block` returned `Ok`, so by our caller's promise the block is mapped.
            unsafe { self.mark_section_present(e.section) };
            stats.sections_populated += 1;
            stats.backing_bytes += VMEMMAP_BLOCK_SIZE;
        }
        Ok(stats)
    }

    /// Maps the memmap of a hot-added `range` (whole sections, none present) onto the range
    /// itself (memmap-on-memory): section `s`'s 2 MiB of descriptors are backed by the first
    /// 2 MiB of section `s`, so each section gives up 512 of its 32768 frames (1.6 %) and the
    /// rest of RAM is not touched. Calls `map_block(vmemmap VA, frame)` per section. Initialise
    /// the descriptors with [`init_self_hosted`](Self::init_self_hosted) next.
    ///
    /// # Safety
    ///
    /// As for [`populate`](Self::populate).
    pub unsafe fn populate_self_hosted<E>(
        &self,
        range: MemRegion,
        mut map_block: impl FnMut(VirtAddr, PhysAddr) -> Result<(), E>,
    ) -> Result<SelfHosted, VmemmapError<E>> {
        if range.size == 0
            || !range.base.0.is_multiple_of(SECTION_SIZE)
            || !range.size.is_multiple_of(SECTION_SIZE)
            || range.base.0.checked_add(range.size).is_none()
        {
            return Err(VmemmapError::NotSectionAligned { range });
        }
        let sh = SelfHosted { range };
        for s in sh.sections() {
            if s >= NR_SECTIONS {
                return Err(VmemmapError::SectionOutOfRange { section: s });
            }
            if self.is_section_present(s) {
                return Err(VmemmapError::AlreadyPresent { section: s });
            }
        }
        for s in sh.sections() {
            let va = self.section_va(s);
            let pa = section_region(s).base;
            map_block(va, pa).map_err(|error| VmemmapError::Map { va, pa, error })?;
            // SAFETY: `map_block` returned `Ok`; our caller promises that means mapped.
            unsafe { self.mark_section_present(s) };
        }
        Ok(sh)
    }

    /// Initialises every descriptor of section `s` (RAM or hole) as [`PageState::Reserved`].
    /// Returns `false` if the section is not present.
    pub fn init_section(&self, s: usize) -> bool {
        if !self.is_section_present(s) {
            return false;
        }
        let start = section_to_pfn(s).0;
        for pfn in start..start + PAGES_PER_SECTION {
            self.page(Pfn(pfn)).init(PageState::Reserved);
        }
        true
    }

    /// Boot-time initialisation (Linux's `memmap_init`): every descriptor in every present
    /// section that contains RAM becomes [`PageState::Reserved`] with `PG_reserved` (holes
    /// inside those sections too, as Linux's `init_unavailable_range`). The buddy allocator
    /// later takes the free RAM frames. Returns the number of descriptors initialised.
    pub fn init_descriptors(&self, ram: &[MemRegion]) -> u64 {
        let mut n = 0;
        for e in self.populate_plan(ram) {
            if self.init_section(e.section) {
                n += PAGES_PER_SECTION;
            }
        }
        n
    }

    /// Initialises the descriptors of a self-hosted range: the vmemmap frames become
    /// [`PageState::Vmemmap`] with [`PageFlags::VMEMMAP_SELF_HOSTED`], the rest
    /// [`PageState::Reserved`] until the range is onlined (given to the buddy allocator).
    pub fn init_self_hosted(&self, sh: &SelfHosted) {
        for s in sh.sections() {
            self.init_section(s);
        }
        for f in sh.vmemmap_frames() {
            for pfn in f.pfns() {
                let p = self.page(Pfn(pfn));
                p.init(PageState::Vmemmap);
                p.set_flags(PageFlags::VMEMMAP_SELF_HOSTED);
            }
        }
    }
}

#[cfg(any(test, feature = "std"))]
pub use host::HostVmemmap;

#[cfg(any(test, feature = "std"))]
mod host {
    extern crate std;
    use super::*;
    use std::alloc::{alloc_zeroed, dealloc, Layout};

    /// A host memmap: heap memory for the descriptors of a span of sections. Sections start
    /// absent: populate them (the `map_block` from [`HostVmemmap::host_map_block`] checks the
    /// VA lies in the arena) or use [`HostVmemmap::populated`].
    pub struct HostVmemmap {
        vm: Vmemmap,
        mem: *mut u8,
        layout: Layout,
        sections: core::ops::Range<usize>,
    }

    impl HostVmemmap {
        /// Descriptor memory for every section touched by `ram` (and those between), none
        /// present yet.
        pub fn new(ram: &[MemRegion]) -> Self {
            let lo = ram.iter().map(|r| sections_of(r).start).min().unwrap_or(0);
            let hi = ram.iter().map(|r| sections_of(r).end).max().unwrap_or(0);
            Self::for_sections(lo..hi)
        }

        /// Descriptor memory for sections `[lo, hi)`, none present yet.
        pub fn for_sections(sections: core::ops::Range<usize>) -> Self {
            assert!(!sections.is_empty() && sections.end <= NR_SECTIONS);
            let bytes = sections.len() as u64 * VMEMMAP_BLOCK_SIZE;
            let layout =
                Layout::from_size_align(bytes as usize, VMEMMAP_BLOCK_SIZE as usize).unwrap();
            // SAFETY: non-zero size.
            let mem = unsafe { alloc_zeroed(layout) };
            assert!(!mem.is_null(), "host vmemmap allocation failed");
            // Fake-head resolution and compound_head() reach descriptors through exposed
            // addresses.
            let _ = mem.expose_provenance();
            let base = (mem as *mut Page).wrapping_sub(sections.start * PAGES_PER_SECTION as usize);
            // SAFETY: only sections inside `sections` are ever marked present (checked by
            // `host_map_block` and `populated`), and the arena lives as long as `vm`.
            let vm = unsafe { Vmemmap::new(base) };
            HostVmemmap { vm, mem, layout, sections }
        }

        /// A memmap for `ram` with every section holding RAM present and initialised
        /// (`Reserved`), as after boot-time `populate` + `init_descriptors`.
        pub fn populated(ram: &[MemRegion]) -> Self {
            let h = Self::new(ram);
            let secs: std::vec::Vec<usize> = h.vm.populate_plan(ram).map(|e| e.section).collect();
            for s in secs {
                // SAFETY: `s` is inside the arena (the arena spans every section of `ram`).
                unsafe { h.vm.mark_section_present(s) };
            }
            h.vm.init_descriptors(ram);
            h
        }

        /// The sections the arena covers.
        pub fn sections(&self) -> core::ops::Range<usize> {
            self.sections.clone()
        }

        /// A `map_block` for [`Vmemmap::populate`]: accepts blocks inside the arena.
        pub fn host_map_block(&self) -> impl FnMut(VirtAddr, PhysAddr) -> Result<(), VirtAddr> {
            let lo = self.vm.section_va(self.sections.start).0;
            let hi = self.vm.section_va(self.sections.end).0;
            move |va, _pa| {
                if va.0 >= lo
                    && va.0 + VMEMMAP_BLOCK_SIZE <= hi
                    && va.0.is_multiple_of(VMEMMAP_BLOCK_SIZE)
                {
                    Ok(())
                } else {
                    Err(va)
                }
            }
        }
    }

    impl core::ops::Deref for HostVmemmap {
        type Target = Vmemmap;
        fn deref(&self) -> &Vmemmap {
            &self.vm
        }
    }

    impl Drop for HostVmemmap {
        fn drop(&mut self) {
            // SAFETY: allocated in `for_sections` with this layout.
            unsafe { dealloc(self.mem, self.layout) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// `populate_skipping` leaves out exactly the sections wholly inside a skip range (a 1 GiB
    /// preinit folio): they take no memblock frame and stay not present. Control: without the
    /// skip range every section gets its block.
    #[test]
    fn populate_skips_whole_sections_of_preinit_ranges() {
        let ram = [MemRegion::new(0, 2 * GIB)];
        let run = |skip: &[MemRegion]| {
            let vm = HostVmemmap::new(&ram);
            let mut mb = Memblock::default();
            mb.add_memory(PhysAddr(0), 2 * GIB).unwrap();
            // SAFETY: `host_map_block` accepts only blocks inside the arena, which lives as
            // long as `vm`.
            let st =
                unsafe { vm.populate_skipping(&ram, &mut mb, skip, vm.host_map_block()) }.unwrap();
            let present: std::vec::Vec<bool> = (0..16).map(|s| vm.is_section_present(s)).collect();
            let reserved = mb.reserved_in_memory();
            (st, present, reserved)
        };
        let (st, present, reserved) = run(&[MemRegion::new(GIB, GIB)]);
        assert_eq!((st.sections_populated, st.skipped), (8, 8));
        assert_eq!(st.backing_bytes, 8 * VMEMMAP_BLOCK_SIZE);
        assert_eq!(reserved, 8 * VMEMMAP_BLOCK_SIZE);
        assert!(present[..8].iter().all(|&p| p) && present[8..].iter().all(|&p| !p));
        // A range that covers section 8 only in part: section 8 is populated.
        let (st, present, _) = run(&[MemRegion::new(GIB + PAGE_SIZE, GIB - PAGE_SIZE)]);
        assert_eq!((st.sections_populated, st.skipped), (9, 7));
        assert!(present[8] && !present[9]);
        // Control: nothing skipped.
        let (st, present, reserved) = run(&[]);
        assert_eq!((st.sections_populated, st.skipped), (16, 0));
        assert_eq!(reserved, 16 * VMEMMAP_BLOCK_SIZE);
        assert!(present.iter().all(|&p| p));
    }

    #[test]
    fn holdback_is_whole_sections_at_the_top() {
        let pi = MemRegion::from_range(0, 0x3b40_0000);
        assert_eq!(
            hotplug_holdback(&pi, 256 << 20),
            Some(MemRegion::from_range(0x2800_0000, 0x3800_0000))
        );
        let qemu = MemRegion::from_range(0, 0x3c00_0000);
        assert_eq!(
            hotplug_holdback(&qemu, 128 << 20),
            Some(MemRegion::from_range(0x3000_0000, 0x3800_0000))
        );
        assert_eq!(hotplug_holdback(&qemu, 100 << 20), None);
        assert_eq!(hotplug_holdback(&qemu, 1 << 30), None);
    }

    #[test]
    fn arithmetic_round_trips() {
        let ram = [MemRegion::new(0x4000_0000, GIB)];
        let vm = HostVmemmap::populated(&ram);
        for pfn in [0x4_0000u64, 0x4_0001, 0x5_ffff, 0x7_ffff] {
            let p = vm.page(Pfn(pfn));
            assert_eq!(vm.page_to_pfn(p), Pfn(pfn));
            assert_eq!(p.state(), PageState::Reserved);
        }
        assert!(vm.get(Pfn(0x3_ffff)).is_none());
        assert!(vm.get(Pfn(0x8_0000)).is_none());
        // SAFETY: arithmetic only; nothing is dereferenced.
        let target = unsafe { Vmemmap::kernel() };
        assert_eq!(target.pfn_to_va(Pfn(0)), VirtAddr(VMEMMAP_START));
        assert_eq!(target.pfn_to_va(Pfn(3)), VirtAddr(VMEMMAP_START + 192));
        assert_eq!(target.section_va(1), VirtAddr(VMEMMAP_START + 2 * 1024 * 1024));
    }

    #[test]
    fn plan_covers_exactly_sections_with_ram() {
        // Pi 4 8 GB style: holes at 0x3b40_0000..0x4000_0000 and 0xfc00_0000..0x1_0000_0000.
        let ram = [
            MemRegion::from_range(0, 0x3b40_0000),
            MemRegion::from_range(0x4000_0000, 0xfc00_0000),
            MemRegion::from_range(0x1_0000_0000, 0x2_0000_0000),
        ];
        // SAFETY: arithmetic only.
        let vm = unsafe { Vmemmap::kernel() };
        let plan: Vec<PlanEntry> = vm.populate_plan(&ram).collect();
        assert_eq!(plan.len(), 64); // 8 GiB / 128 MiB
        assert!(plan.iter().all(|e| e.needed));
        assert_eq!(plan[0].va, VirtAddr(VMEMMAP_START));
        // A hole of whole sections is skipped.
        let ram2 = [
            MemRegion::from_range(0, 0x1000_0000),
            MemRegion::from_range(0x4000_0000, 0x4800_0000),
        ];
        let secs: Vec<usize> = vm.populate_plan(&ram2).map(|e| e.section).collect();
        assert_eq!(secs, vec![0, 1, 8]);
    }

    #[test]
    fn populate_takes_frames_from_memblock() {
        let ram = [
            MemRegion::from_range(0, 0x3c00_0000),
            MemRegion::from_range(0x4000_0000, 0x8000_0000),
        ];
        let vm = HostVmemmap::new(&ram);
        let mut mb = Memblock::new();
        for r in &ram {
            mb.add_memory(r.base, r.size).unwrap();
        }
        let mut mapped = Vec::new();
        let mut check = vm.host_map_block();
        // SAFETY: the host map_block only accepts blocks inside the arena, which is mapped.
        let stats = unsafe {
            vm.populate(&ram, &mut mb, |va, pa| {
                mapped.push((va, pa));
                check(va, pa)
            })
        }
        .unwrap();
        assert_eq!(stats.sections_populated, 16);
        assert_eq!(stats.backing_bytes, 32 << 20);
        assert_eq!(mapped.len(), 16);
        for (va, pa) in &mapped {
            assert!(pa.is_aligned(VMEMMAP_BLOCK_SIZE));
            assert_eq!(mb.reserved_kind(*pa), Some(ReservedKind::Vmemmap));
            assert!(va.0.is_multiple_of(VMEMMAP_BLOCK_SIZE));
        }
        assert_eq!(vm.init_descriptors(&ram), 16 * PAGES_PER_SECTION);
        // Second populate: nothing needed.
        // SAFETY: as above.
        let again = unsafe { vm.populate(&ram, &mut mb, vm.host_map_block()) }.unwrap();
        assert_eq!(again.sections_populated, 0);
        assert_eq!(again.already_present, 16);
        // Merged into one reservation (adjacent, same kind).
        assert_eq!(mb.reserved().len(), 1);
        assert_eq!(mb.reserved()[0].region.size, 32 << 20);
    }

    #[test]
    fn populate_map_failure_returns_frame() {
        let ram = [MemRegion::from_range(0, 0x1000_0000)];
        let vm = HostVmemmap::new(&ram);
        let mut mb = Memblock::new();
        mb.add_memory(PhysAddr(0), 0x1000_0000).unwrap();
        // SAFETY: the closure never reports success.
        let e = unsafe { vm.populate(&ram, &mut mb, |_, _| Err("nope")) }.unwrap_err();
        assert!(matches!(e, VmemmapError::Map { error: "nope", .. }));
        assert!(mb.reserved().is_empty());
        assert_eq!(vm.nr_present_sections(), 0);
        let mut tiny = Memblock::new();
        tiny.add_memory(PhysAddr(0), 0x10_0000).unwrap();
        // SAFETY: as above.
        let e = unsafe { vm.populate(&ram, &mut tiny, vm.host_map_block()) }.unwrap_err();
        assert!(matches!(e, VmemmapError::Memblock(MemblockError::OutOfMemory { .. })));
    }

    #[test]
    fn self_hosted_memmap_lives_in_the_range() {
        let boot = [MemRegion::from_range(0x4000_0000, 0x7000_0000)];
        let all = [MemRegion::from_range(0x4000_0000, 0x8000_0000)];
        let vm = HostVmemmap::new(&all);
        let mut mb = Memblock::new();
        mb.add_memory(PhysAddr(0x4000_0000), 0x3000_0000).unwrap();
        // SAFETY: host arena, checked by host_map_block.
        unsafe { vm.populate(&boot, &mut mb, vm.host_map_block()) }.unwrap();
        let hot = MemRegion::from_range(0x7000_0000, 0x8000_0000);
        let mut frames = Vec::new();
        let mut check = vm.host_map_block();
        // SAFETY: as above.
        let sh = unsafe {
            vm.populate_self_hosted(hot, |va, pa| {
                frames.push(pa);
                check(va, pa)
            })
        }
        .unwrap();
        assert_eq!(frames, vec![PhysAddr(0x7000_0000), PhysAddr(0x7800_0000)]);
        vm.init_self_hosted(&sh);
        let v: Vec<MemRegion> = sh.vmemmap_frames().collect();
        assert_eq!(v[1], MemRegion::new(0x7800_0000, 2 << 20));
        let u: Vec<MemRegion> = sh.usable().collect();
        assert_eq!(u[0], MemRegion::from_range(0x7020_0000, 0x7800_0000));
        let first = vm.page(Pfn::containing(PhysAddr(0x7000_0000)));
        assert_eq!(first.state(), PageState::Vmemmap);
        assert!(first.test(PageFlags::VMEMMAP_SELF_HOSTED));
        assert!(sh.is_vmemmap_frame(Pfn::containing(PhysAddr(0x781f_f000))));
        assert!(!sh.is_vmemmap_frame(Pfn::containing(PhysAddr(0x7820_0000))));
        assert_eq!(vm.page(Pfn::containing(PhysAddr(0x7820_0000))).state(), PageState::Reserved);
        // Again: already present. Misaligned: rejected.
        // SAFETY: as above.
        let e = unsafe { vm.populate_self_hosted(hot, vm.host_map_block()) }.unwrap_err();
        assert_eq!(e, VmemmapError::AlreadyPresent { section: 14 });
        // SAFETY: as above.
        let e = unsafe {
            vm.populate_self_hosted(MemRegion::new(0x7000_0000, 0x100_0000), vm.host_map_block())
        }
        .unwrap_err();
        assert!(matches!(e, VmemmapError::NotSectionAligned { .. }));
    }
}
