//! The one-pass folio check of optimize (head and tail 1 field by field, the other tails word by
//! word) refuses what `check_folio` and the tail comparison refuse, with the same errors, at
//! every place a tail can differ: in page 0, at a vmemmap page boundary, in the last page, and
//! in tail 1 itself.

mod hvo_common;

use hvo_common::*;
use kcore::addr::Pfn;
use kcore::hugetlb::{FolioError, HugePageSize};
use kcore::hugetlb_vmemmap::{folio_is_optimized, HvoError, HvoOptions};

#[test]
fn a_differing_tail_anywhere_is_refused_with_its_index() {
    for size in [HugePageSize::Size2M, HugePageSize::Size1G] {
        let last = size.nr_pages() - 1;
        for index in [2, 5, 63, 64, 65, 511, last] {
            let big = size == HugePageSize::Size1G;
            let mut w = World::new(if big { 9 } else { 2 }, 0);
            let f = w.folio(size, big.then_some(Pfn(BASE >> 12)));
            f.page(&w.vm, index).set_private(7);
            let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&f));
            assert_eq!(r, Err(HvoError::TailMismatch { folio: f.head_pfn(), index }), "{size:?}");
            assert!(!folio_is_optimized(&w.vm, &f));
            // Negative control: the same folio, the tail made equal again, is optimized.
            f.page(&w.vm, index).set_private(0);
            let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&f));
            assert_eq!(r, Ok(true));
        }
    }
}

#[test]
fn a_bad_first_tail_is_reported_as_check_folio_does() {
    let mut w = World::new(2, 0);
    let f = w.folio(HugePageSize::Size2M, None);
    // Every tail alike, but none points at the head: the word comparison alone would pass.
    for i in 1..f.nr_pages() {
        f.page(&w.vm, i).set_compound_head(f.page(&w.vm, 0));
        f.page(&w.vm, i).set_private(0);
    }
    let other = w.folio(HugePageSize::Size2M, None);
    for i in 1..f.nr_pages() {
        f.page(&w.vm, i).set_compound_head(other.head(&w.vm));
    }
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&f));
    assert!(matches!(r, Err(HvoError::Folio(FolioError::BadTail { index: 1, .. }))), "{r:?}");
}
