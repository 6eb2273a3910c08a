//! The tail design is chosen at boot and then fixed: a change is refused while folios are
//! optimized, and always once fixed. (One test: the design is process-wide.)

mod hvo_common;

use hvo_common::*;
use kcore::addr::Pfn;
use kcore::hugetlb::HugePageSize;
use kcore::hugetlb_vmemmap::{
    folio_is_optimized, nr_optimized_folios, page_compound_head_pfn, set_tail_design, HvoError,
    HvoOptions,
};
use kcore::hvo_tails::{fix_tail_design, tail_design, tail_design_fixed, TailDesign, TailsError};

#[test]
fn design_is_fixed_at_boot() {
    assert!(!tail_design_fixed());
    set_tail_design(TailDesign::Shared).unwrap();
    let mut w = World::new(2, 0);
    let f = w.folio(HugePageSize::Size2M, None);
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&f));
    assert_eq!(r, Ok(true));
    assert_eq!(nr_optimized_folios(), 1);
    // Folios are optimized with mask-encoded tails: no switch.
    assert_eq!(
        set_tail_design(TailDesign::Seed),
        Err(TailsError::FoliosOptimized { current: TailDesign::Shared, count: 1 })
    );
    assert_eq!(set_tail_design(TailDesign::Shared), Ok(()), "the same design is no change");
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.restore_folio(&f));
    assert_eq!(r, Ok(true));
    // Nothing optimized: allowed (before the boot fixes it). A folio prepared under the seed
    // design (address-encoded tails) is refused by the shared optimize rather than losing its
    // tails; its answers stay right.
    set_tail_design(TailDesign::Seed).unwrap();
    let g = w.folio(HugePageSize::Size2M, None);
    set_tail_design(TailDesign::Shared).unwrap();
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&g));
    assert_eq!(r, Err(HvoError::TailMismatch { folio: g.head_pfn(), index: 1 }));
    assert!(!folio_is_optimized(&w.vm, &g));
    let head = g.head_pfn();
    for i in 0..g.nr_pages() {
        assert_eq!(page_compound_head_pfn(&w.vm, Pfn(head.0 + i)), head);
    }
    fix_tail_design();
    assert!(tail_design_fixed());
    assert_eq!(
        set_tail_design(TailDesign::Seed),
        Err(TailsError::FixedAtBoot { current: TailDesign::Shared, requested: TailDesign::Seed })
    );
    assert_eq!(tail_design(), TailDesign::Shared);
}
