//! `hugetlb_free_vmemmap=` and the runtime switch. One test: the switch is global.

mod hvo_common;

use hvo_common::*;
use kcore::hugetlb::HugePageSize;
use kcore::hugetlb_vmemmap::{
    apply_boot_param, folio_is_optimized, free_vmemmap_pages_per_folio, hvo_enabled,
    nr_optimized_folios, set_hvo_enabled, HvoOptions, HvoStats,
};

#[test]
fn disabled_frees_nothing_and_the_switch_affects_later_folios() {
    assert!(hvo_enabled(), "on by default");
    let mut w = World::new(2, 0);

    // hugetlb_free_vmemmap=off at boot.
    apply_boot_param(Some(false));
    assert_eq!((free_vmemmap_pages_per_folio(O2M), free_vmemmap_pages_per_folio(O1G)), (0, 0));
    let early = w.folio(HugePageSize::Size2M, None);
    let free0 = w.buddy.free_pages();
    let usage0 = w.hvo(HvoOptions::default(), None, |h| h.usage()).0;
    let ((r, s), calls) =
        w.hvo(HvoOptions::default(), None, |h| (h.maybe_optimize(&early), h.stats()));
    assert_eq!(r, Ok(false));
    assert_eq!(s, HvoStats::default());
    assert_eq!(calls.calls, 0);
    assert_eq!(w.buddy.free_pages(), free0);
    assert_eq!(w.hvo(HvoOptions::default(), None, |h| h.usage()).0, usage0);
    assert!(w.mmu.take_events().is_empty());

    // vm.hugetlb_optimize_vmemmap=1 at run time: folios allocated from now on.
    set_hvo_enabled(true);
    assert_eq!((free_vmemmap_pages_per_folio(O2M), free_vmemmap_pages_per_folio(O1G)), (7, 4095));
    let late = w.folio(HugePageSize::Size2M, None);
    let free0 = w.buddy.free_pages();
    let ((r, s), _) = w.hvo(HvoOptions::default(), None, |h| (h.maybe_optimize(&late), h.stats()));
    assert_eq!(r, Ok(true));
    assert_eq!(s.net_frames_freed(), 7);
    assert_eq!(w.buddy.free_pages() - free0, 7);
    assert!(folio_is_optimized(&w.vm, &late) && !folio_is_optimized(&w.vm, &early));
    assert_eq!(nr_optimized_folios(), 1);

    // Switching off again leaves the optimized folio optimized; restore still works.
    set_hvo_enabled(false);
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.maybe_optimize(&early));
    assert_eq!(r, Ok(false));
    assert!(folio_is_optimized(&w.vm, &late));
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.restore_folio(&late));
    assert_eq!(r, Ok(true));
    assert_eq!(nr_optimized_folios(), 0);
    assert_eq!(w.buddy.free_pages(), free0);
    apply_boot_param(None);
    assert!(!hvo_enabled());
    set_hvo_enabled(true);
}
