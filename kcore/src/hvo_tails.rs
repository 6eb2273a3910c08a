//! Tail-descriptor designs for HVO: the 2023 seed design (fake heads) and shared tail pages
//! (Kiryl Shutsemau's "mm: Eliminate fake head pages from vmemmap optimization", v7, 2026).
//!
//! - **Seed** ([`TailDesign::Seed`], Linux up to 2025): a tail's `compound_head` is the address
//!   of its head descriptor with bit 0 set. HVO remaps vmemmap pages 1..N of a folio onto (a
//!   copy of) page 0; the first descriptor of each remapped page then reads as the head (a *fake
//!   head*), which [`crate::page::Page::compound_head`] resolves.
//! - **Shared** ([`TailDesign::Shared`], Linux's new design): a tail's `compound_head` word
//!   holds a *mask* instead of an address: `head = own address & !((64 << order) - 1)`. This is
//!   right because a descriptor is 64 bytes (a power of two), a folio of `order` is naturally
//!   aligned in pfns, and the memmap's base is aligned to `64 << order` (checked:
//!   [`VMEMMAP_START`] statically, any other base per folio in [`set_tail_link`]). So every tail
//!   of a given order is byte-identical across all folios, and one read-only page of such tails
//!   per order ([`TailPages`]) can back vmemmap pages 1..N of every optimized folio of that
//!   order, while page 0 (the head and tails 1..63) stays in place, writable. No descriptor ever
//!   aliases a head, so there are no fake heads.
//!
//! The encoding is self-describing: bit 0 = tail, bit 1 = [`TAIL_MASK_ENCODED`] (the word is a
//! mask, not an address; a head address is 64-byte aligned so its bit 1 is always 0). So the
//! lookup never needs to know the design; only [`crate::hugetlb::prep_compound`] (through
//! [`set_tail_link`]) and HVO's remap step consult [`tail_design`].
//!
//! The design is chosen once at boot (`hvo_tails=seed|shared`) and then fixed: changing the
//! encoding of live folios would need every folio restored and re-prepared.

use crate::addr::{PhysAddr, PAGE_SIZE};
use crate::layout::VMEMMAP_START;
use crate::page::{Page, PageState, ORDER_NONE, PAGE_DESC_SIZE};
use core::sync::atomic::{
    AtomicBool, AtomicU64, AtomicU8,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};

/// Bit 1 of a tail's `compound_head` word: the word is a mask applied to the descriptor's own
/// address (shared design), not the head's address (seed design).
pub const TAIL_MASK_ENCODED: u64 = 1 << 1;

/// The largest folio order whose tails can be mask-encoded (a 1 GiB folio of 4 KiB pages).
pub const MAX_TAIL_ORDER: u8 = 18;

// The kernel's memmap base is aligned for every order up to 1 GiB folios: 64 << 18 = 16 MiB.
const _: () = assert!(VMEMMAP_START.is_multiple_of(PAGE_DESC_SIZE << MAX_TAIL_ORDER));

/// How tail descriptors link to their head, and what HVO maps tail vmemmap pages onto.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum TailDesign {
    /// The 2023 seed design: address-encoded tails, pages 1..N remapped onto a copy of page 0,
    /// fake heads resolved by the lookup.
    Seed = 0,
    /// Shared tail pages: mask-encoded tails, pages 1..N remapped onto one shared read-only page
    /// of tails per order, page 0 left in place, no fake heads.
    Shared = 1,
}

impl TailDesign {
    /// Both designs.
    pub const ALL: [TailDesign; 2] = [TailDesign::Seed, TailDesign::Shared];

    /// The boot-argument name (`hvo_tails=`).
    pub const fn name(self) -> &'static str {
        match self {
            TailDesign::Seed => "seed",
            TailDesign::Shared => "shared",
        }
    }

    /// Parses a boot-argument value.
    pub fn from_name(s: &str) -> Option<TailDesign> {
        TailDesign::ALL.into_iter().find(|d| d.name() == s)
    }
}

/// Why the design could not be changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TailsError {
    /// The design was fixed at boot ([`fix_tail_design`]); changing the tail encoding at run
    /// time would need every folio restored and prepared again.
    FixedAtBoot {
        /// The design in effect.
        current: TailDesign,
        /// The design asked for.
        requested: TailDesign,
    },
    /// Folios are optimized with the current design.
    FoliosOptimized {
        /// The design in effect.
        current: TailDesign,
        /// How many folios are optimized.
        count: u64,
    },
}

/// The default design: the seed's (see README "Tail designs: seed vs shared").
pub const DEFAULT_TAIL_DESIGN: TailDesign = TailDesign::Seed;

static DESIGN: AtomicU8 = AtomicU8::new(DEFAULT_TAIL_DESIGN as u8);
static FIXED: AtomicBool = AtomicBool::new(false);

/// The design in effect.
pub fn tail_design() -> TailDesign {
    if DESIGN.load(Relaxed) == TailDesign::Shared as u8 {
        TailDesign::Shared
    } else {
        TailDesign::Seed
    }
}

/// Sets the design, unless it has been fixed ([`fix_tail_design`]) or `optimized` folios are
/// optimized (the caller passes HVO's count). Asking for the design in effect always succeeds.
pub fn set_tail_design(d: TailDesign, optimized: u64) -> Result<(), TailsError> {
    let current = tail_design();
    if d == current {
        return Ok(());
    }
    if FIXED.load(Acquire) {
        return Err(TailsError::FixedAtBoot { current, requested: d });
    }
    if optimized > 0 {
        return Err(TailsError::FoliosOptimized { current, count: optimized });
    }
    DESIGN.store(d as u8, Relaxed);
    Ok(())
}

/// Fixes the design for the rest of the run (the firmware calls it once the boot arguments are
/// applied).
pub fn fix_tail_design() {
    FIXED.store(true, Release);
}

/// Has the design been fixed?
pub fn tail_design_fixed() -> bool {
    FIXED.load(Acquire)
}

/// The `compound_head` word of a mask-encoded tail of a folio of `order`.
pub const fn tail_mask_word(order: u8) -> u64 {
    !((PAGE_DESC_SIZE << order) - 1) | TAIL_MASK_ENCODED | 1
}

/// Can the tails of a folio of `order` whose head descriptor is at `head_addr` be
/// mask-encoded? (The head's address must be aligned to the folio's descriptor span.)
pub const fn mask_encodable(head_addr: u64, order: u8) -> bool {
    order <= MAX_TAIL_ORDER && head_addr.is_multiple_of(PAGE_DESC_SIZE << order)
}

/// Makes `t` a tail of the folio of `order` whose head is `head`, in the design in effect. In
/// the shared design a head whose address is not aligned to the folio's descriptor span (a
/// memmap base not aligned enough) gets address-encoded tails instead, which stay correct;
/// HVO's shared remap then refuses that folio ([`crate::hugetlb_vmemmap::HvoError`]
/// `TailMismatch`), it never builds a wrong head.
pub fn set_tail_link(t: &Page, head: &Page, order: u8) {
    let head_addr = (head as *const Page).addr() as u64;
    if tail_design() == TailDesign::Shared && mask_encodable(head_addr, order) {
        t.set_compound_word(tail_mask_word(order));
    } else {
        t.set_compound_head(head);
    }
}

/// Initialises `p` as a mask-encoded tail of a folio of `order`: exactly what
/// [`crate::hugetlb::prep_compound`] writes into every tail in the shared design.
pub fn init_shared_tail(p: &Page, order: u8) {
    p.init(PageState::HugeTlb);
    p.set_order(ORDER_NONE);
    p.set_compound_word(tail_mask_word(order));
}

/// The shared read-only tail page of each order: its physical address, or 0 while none has been
/// allocated. Allocated once, on first use (the first folio of that order optimized in the
/// shared design, or [`crate::hugetlb_vmemmap::Hvo::prepare_tail_page`]), never freed, also when
/// the operation that allocated it fails afterwards (the one exception to "a failed HVO
/// operation changes nothing"). Lives in the [`crate::vmemmap::Vmemmap`] it serves.
pub struct TailPages {
    pa: [AtomicU64; MAX_TAIL_ORDER as usize + 1],
}

impl core::fmt::Debug for TailPages {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TailPages").field("allocated", &self.count()).finish()
    }
}

impl Default for TailPages {
    fn default() -> Self {
        Self::new()
    }
}

impl TailPages {
    /// None allocated.
    pub const fn new() -> Self {
        TailPages { pa: [const { AtomicU64::new(0) }; MAX_TAIL_ORDER as usize + 1] }
    }

    /// The shared tail page of `order`, if allocated.
    pub fn get(&self, order: u8) -> Option<PhysAddr> {
        let slot = self.pa.get(order as usize)?;
        match slot.load(Acquire) {
            0 => None,
            pa => Some(PhysAddr(pa)),
        }
    }

    /// Publishes `pa` (already filled with [`init_shared_tail`] descriptors) as the tail page of
    /// `order`, unless another CPU published one first: returns the page in use, and whether it
    /// is `pa` (if not, the caller gives `pa` back).
    pub fn publish(&self, order: u8, pa: PhysAddr) -> (PhysAddr, bool) {
        let Some(slot) = self.pa.get(order as usize) else { return (pa, false) };
        match slot.compare_exchange(0, pa.0, AcqRel, Acquire) {
            Ok(_) => (pa, true),
            Err(cur) => (PhysAddr(cur), false),
        }
    }

    /// Number of shared tail pages allocated (memory the shared design keeps once per order).
    pub fn count(&self) -> u64 {
        self.pa.iter().filter(|p| p.load(Relaxed) != 0).count() as u64
    }

    /// The shared tail pages allocated.
    pub fn pages(&self) -> impl Iterator<Item = PhysAddr> + '_ {
        self.pa.iter().map(|p| p.load(Relaxed)).filter(|&p| p != 0).map(PhysAddr)
    }

    /// Is `pa` one of the shared tail pages?
    pub fn contains(&self, pa: PhysAddr) -> bool {
        pa.0 != 0 && self.pa.iter().any(|p| p.load(Relaxed) == pa.0)
    }
}

/// Fills the 4 KiB frame at `page` with 64 mask-encoded tails of `order`.
///
/// # Safety
/// `page` points to a 4 KiB frame we own exclusively (not yet mapped in the vmemmap).
pub unsafe fn fill_tail_page(page: *mut u8, order: u8) {
    let descs = page.cast::<Page>();
    for i in 0..(PAGE_SIZE / PAGE_DESC_SIZE) as usize {
        // SAFETY: the frame holds 64 descriptors' worth of bytes, 4 KiB aligned (so each is
        // 64-byte aligned); `Page` is all atomics, so any bit pattern is valid and a shared
        // reference to memory we own exclusively is sound.
        let p = unsafe { &*descs.add(i) };
        init_shared_tail(p, order);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_words() {
        // 2 MiB folio: 512 descriptors = 32 KiB of descriptors.
        assert_eq!(tail_mask_word(9), !((32u64 << 10) - 1) | 3);
        assert_eq!(tail_mask_word(18), !((16u64 << 20) - 1) | 3);
        assert!(mask_encodable(VMEMMAP_START + (1 << 18) * 64, 18));
        assert!(!mask_encodable(VMEMMAP_START + 512 * 64, 18));
        assert!(!mask_encodable(0, 19));
        for d in TailDesign::ALL {
            assert_eq!(TailDesign::from_name(d.name()), Some(d));
        }
        assert_eq!(TailDesign::from_name("fake"), None);
    }

    #[test]
    fn tail_pages_publish_once() {
        let t = TailPages::new();
        assert_eq!(t.get(9), None);
        assert_eq!(t.publish(9, PhysAddr(0x1000)), (PhysAddr(0x1000), true));
        assert_eq!(t.publish(9, PhysAddr(0x2000)), (PhysAddr(0x1000), false));
        assert_eq!(t.get(9), Some(PhysAddr(0x1000)));
        assert!(t.contains(PhysAddr(0x1000)) && !t.contains(PhysAddr(0x2000)));
        assert_eq!(t.count(), 1);
        assert_eq!(t.publish(40, PhysAddr(0x3000)), (PhysAddr(0x3000), false));
    }
}
