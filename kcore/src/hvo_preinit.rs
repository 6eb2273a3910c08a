//! A gigantic folio's vmemmap populated already optimized at boot (Linux 6.15's
//! `ARCH_WANT_HUGETLB_VMEMMAP_PREINIT`, x86_64 only there: `hugetlb_vmemmap_init_early()` and
//! `vmemmap_populate_hvo()` in `mm/hugetlb_vmemmap.c` / `mm/sparse-vmemmap.c`).
//!
//! A 1 GiB folio reserved at boot covers 8 whole sections, so its 16 MiB of descriptors are the
//! whole memmap of those sections: 8 vmemmap 2 MiB blocks in the ordinary populate
//! ([`crate::vmemmap::Vmemmap::populate`]), which HVO would later split (break-before-make on
//! live blocks) and free 4095 frames of. Here, before those sections' vmemmap is live, it is
//! mapped with 4 KiB pages: page 0 onto one frame, read-write, pages 1..4095 read-only onto the
//! same frame, and page 0's 64 descriptors (the head and 63 tails) written. No 2 MiB block ever
//! exists for the range, the full 16 MiB is never allocated (one frame is), and nothing is
//! broken: the entries are new, so no break-before-make is needed. The head carries
//! [`PageFlags::VMEMMAP_OPTIMIZED`], so HVO finds the folio optimized and leaves it alone.
//!
//! The boot uses it with `hugetlb_vmemmap_preinit=on` (`firmware/src/memory.rs`): the 1 GiB
//! ranges are reserved in memblock before the kernel map is built, their sections left out of
//! [`Vmemmap::populate_skipping`], and populated here through the live `init_mm` once the buddy
//! allocator is up. Seed tail design only ([`PreinitError::SharedTails`] otherwise).
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

use crate::addr::{Pfn, PhysAddr, VirtAddr, PAGE_SIZE};
use crate::hugetlb_vmemmap::{hugetlb_vmemmap_size, vmemmap_va};
use crate::page::{PageFlags, PageState, DESCS_PER_PAGE, ORDER_NONE};
use crate::vmemmap::{Vmemmap, PAGES_PER_SECTION};

/// Why a preinit populate was refused or failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PreinitError<E> {
    /// The folio does not cover whole sections (its head is not aligned to its size, or it is
    /// smaller than a section): its vmemmap shares blocks with other memory.
    NotWholeSections {
        /// Head asked for.
        head: Pfn,
        /// Order asked for.
        order: u8,
    },
    /// The tail design is [`TailDesign::Shared`](crate::hvo_tails::TailDesign::Shared): this
    /// layout (pages 1.. aliasing page 0, address-encoded tails) is the seed design's.
    SharedTails,
    /// One of the folio's sections already has a vmemmap.
    AlreadyPresent {
        /// The section.
        section: usize,
    },
    /// Mapping a vmemmap page failed; the pages mapped before it stay mapped, the sections are
    /// not marked present (the caller gives the frame back or falls back to blocks).
    Map {
        /// The vmemmap page.
        va: VirtAddr,
        /// The mapper's error.
        error: E,
    },
}

/// What a preinit populate did, counted as it did it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PreinitStats {
    /// 4 KiB vmemmap pages mapped (read-write + read-only).
    pub pages_mapped: u64,
    /// Of those, read-only aliases of page 0.
    pub read_only: u64,
    /// Bytes of frames backing the folio's vmemmap (one frame).
    pub backing_bytes: u64,
    /// Sections marked present.
    pub sections: u64,
    /// Descriptors written (page 0's).
    pub descriptors: u64,
}

/// Populates the vmemmap of the folio of `order` at `head` already optimized, onto `frame`
/// (see the module documentation): `map_page(va, frame, writable)` maps one vmemmap page, page 0
/// writable, then the sections are marked present and page 0's descriptors written through
/// `vm` (head: state `HugeTlb`, `PG_head | PG_hugetlb | VMEMMAP_OPTIMIZED`, the order,
/// reference count 0; tails: `compound_head = &head | 1`, as
/// [`crate::hugetlb::prep_compound`] lays them out).
///
/// # Safety
/// When `map_page(va, pa, writable)` returns `Ok`, the 4 KiB at `va` (in the vmemmap `vm`
/// reads) must map `pa` (on the target), writable iff asked, for as long as `vm` is used; `frame`
/// is a zeroed 4 KiB frame owned by the caller.
pub unsafe fn populate_folio_optimized<E>(
    vm: &Vmemmap,
    head: Pfn,
    order: u8,
    frame: PhysAddr,
    mut map_page: impl FnMut(VirtAddr, PhysAddr, bool) -> Result<(), E>,
) -> Result<PreinitStats, PreinitError<E>> {
    let nr = 1u64 << order;
    if !head.0.is_multiple_of(nr) || !nr.is_multiple_of(PAGES_PER_SECTION) {
        return Err(PreinitError::NotWholeSections { head, order });
    }
    if crate::hvo_tails::tail_design() == crate::hvo_tails::TailDesign::Shared {
        return Err(PreinitError::SharedTails);
    }
    let first = (head.0 / PAGES_PER_SECTION) as usize;
    let sections = first..first + (nr / PAGES_PER_SECTION) as usize;
    if let Some(section) = sections.clone().find(|&s| vm.is_section_present(s)) {
        return Err(PreinitError::AlreadyPresent { section });
    }
    // Linux's `hugetlb_optimize_vmemmap_key`: vmemmap pages 1.. show page 0's head at their
    // start (fake heads), so the compound-head lookup must resolve them from now on, before the
    // aliases are mapped (as the HVO optimize path turns it on before it remaps).
    crate::page::set_fake_head_fixup(true);
    let mut st = PreinitStats { backing_bytes: PAGE_SIZE, ..Default::default() };
    let start = vmemmap_va(head);
    for i in 0..hugetlb_vmemmap_size(order) / PAGE_SIZE {
        let va = start + i * PAGE_SIZE;
        map_page(va, frame, i == 0).map_err(|error| PreinitError::Map { va, error })?;
        st.pages_mapped += 1;
        st.read_only += u64::from(i != 0);
    }
    for s in sections {
        // SAFETY: every vmemmap page of the section is mapped (above; the folio's descriptors
        // are the section's whole memmap), by our caller's promise about `map_page`.
        unsafe { vm.mark_section_present(s) };
        st.sections += 1;
    }
    // Page 0's descriptors, through the writable mapping of page 0 (the tails of pages 1.. are
    // these same bytes, read-only).
    let h = vm.page(head);
    for j in 1..DESCS_PER_PAGE {
        let t = vm.page(Pfn(head.0 + j));
        t.init(PageState::HugeTlb);
        t.set_order(ORDER_NONE);
        t.set_compound_head(h);
    }
    h.init(PageState::HugeTlb);
    h.set_flags(PageFlags::HEAD | PageFlags::HUGETLB | PageFlags::VMEMMAP_OPTIMIZED);
    h.set_order(order);
    st.descriptors = DESCS_PER_PAGE;
    crate::hugetlb_vmemmap::note_optimized_folios(1);
    Ok(st)
}
