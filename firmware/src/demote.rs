//! Demote on the live pool (Linux's `/sys/kernel/mm/hugepages/hugepages-1048576kB/demote`):
//! a free folio off the pool's free list, frozen, split by `kcore::hugetlb_demote` over the
//! live `init_mm` (the HVO instance of [`crate::hvo::with_hvo`]: real barriers and TLBIs, the
//! buddy allocator), its parts onto the smaller size's free list. Everything printed about it
//! is measured here: the buddy allocator's free count across the call, the counter ticks, every
//! pfn's head/tail answer afterwards.

use crate::drivers::timer;
use crate::hvo;
use crate::memory::{BUDDY, HUGETLB, VMEMMAP};
use kcore::hugetlb::HugePageSize;
use kcore::hugetlb_demote::{demote_folio, DemoteError, DemoteMode, DemoteStats};

/// Why a demote on the pool did not happen.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub enum DemoteFail {
    /// The size has no smaller huge page size.
    NoSmallerSize {
        /// The size asked for.
        size: HugePageSize,
    },
    /// No free folio of the size in the pool.
    NoFreeFolio {
        /// The size asked for.
        size: HugePageSize,
        /// Folios of that size in the pool (all in use).
        nr: u64,
    },
    /// kcore refused (the folio is back on the free list, unchanged).
    Demote(DemoteError),
}

/// One demote, measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct DemoteRun {
    /// kcore's counts.
    pub stats: DemoteStats,
    /// Buddy free-count change across the call (negative: frames taken).
    pub buddy_delta: i64,
    /// Counter ticks of the call.
    pub ticks: u64,
    /// pfns of the parts whose head/tail answer was wrong afterwards.
    pub wrong: u64,
    /// Size of the parts.
    pub to: Option<HugePageSize>,
}

/// Demotes one free folio of `size` from the pool (see the module documentation). Not inlined:
/// kcore's demote keeps a batch of 64 part handles on the stack.
#[inline(never)]
pub fn demote_one(size: HugePageSize, mode: DemoteMode) -> Result<DemoteRun, DemoteFail> {
    let Some(to) = size.demote_size() else {
        return Err(DemoteFail::NoSmallerSize { size });
    };
    let mut batch = hvo::take_from_pool(size, 1);
    let Some(folio) = batch.pop() else {
        let nr = HUGETLB.lock().counts(size).nr_hugepages;
        return Err(DemoteFail::NoFreeFolio { size, nr });
    };
    let free0 = BUDDY.lock().free_pages();
    let t0 = timer::ticks();
    let r = hvo::with_hvo(|_| {}, |h| demote_folio(h, folio, mode));
    let ticks = timer::ticks() - t0;
    let buddy_delta = BUDDY.lock().free_pages() as i64 - free0 as i64;
    match r {
        Ok((d, stats)) => {
            let wrong = d.parts().map(|f| hvo::verify_heads(&f)).sum();
            HUGETLB.lock().accept_demoted(d, &VMEMMAP);
            Ok(DemoteRun { stats, buddy_delta, ticks, wrong, to: Some(to) })
        }
        Err((folio, e)) => {
            let mut back = hvo::Batch::new();
            // Capacity 64: one folio always fits.
            let _ = back.push(folio);
            hvo::return_to_pool(back);
            Err(DemoteFail::Demote(e))
        }
    }
}
