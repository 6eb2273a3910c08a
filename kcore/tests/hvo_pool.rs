//! The pool and HVO together (issue 10 items 6 and 8): an optimized folio is never dissolved
//! without its restore; a free the allocator refuses is never reported as success and the
//! vmemmap census sees the lost frames; boot vmemmap frames freed by HVO grow the managed page
//! count, inside the bank's span (the host world sets memory up as the firmware does).

mod hvo_common;

use hvo_common::*;
use kcore::addr::{Pfn, PMD_SIZE};
use kcore::buddy::check_conservation;
use kcore::hugetlb::{DissolveError, HugePageSize, NoHooks};
use kcore::hugetlb_vmemmap::{folio_is_optimized, HvoError, HvoOptions};

/// Control: before the fix, `free_pool_folio` with no restore hook ran `init()` on every
/// descriptor of an optimized folio and died on the first read-only tail (SIGSEGV here through
/// the window, a permission fault on the target): this test could not even report a failure.
#[test]
fn dissolving_an_optimized_folio_without_restore_is_refused() {
    let mut w = World::new(2, 0);
    let f = w.folio(HugePageSize::Size2M, None);
    let head = f.head_pfn();
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&f));
    assert_eq!(r, Ok(true));
    let before = w.folio_descs(&f);
    w.pool.enqueue(f, &w.vm);
    let r = w.pool.shrink(HugePageSize::Size2M, 1, &mut w.buddy, &w.vm, &mut NoHooks);
    assert_eq!(r, Err(DissolveError::StillOptimized { folio: head }));
    assert_eq!(w.pool.counts(HugePageSize::Size2M).free_hugepages, 1, "back in the pool");
    w.pool.check(&w.vm).unwrap();
    let f = w.pool.dequeue(HugePageSize::Size2M, &w.vm).unwrap();
    assert!(f.head(&w.vm).ref_freeze(1));
    assert!(folio_is_optimized(&w.vm, &f));
    // Nothing but the head's pool links and count (written through page 0) changed.
    assert_eq!(w.folio_descs(&f)[1..], before[1..]);
    // Restored first, it dissolves.
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.restore_folio(&f));
    assert_eq!(r, Ok(true));
    w.pool.free_pool_folio(f, &mut w.buddy, &w.vm, &mut NoHooks).unwrap();
    check_conservation(&w.vm, &w.ram, &w.buddy).unwrap();
    w.vmemmap_census().check().unwrap();
}

/// Control: before the fix, a boot vmemmap frame inside the managed span went through
/// `Buddy::free` and the managed page count stayed where it was (0 gained here).
#[test]
fn freed_boot_vmemmap_frames_grow_the_managed_count() {
    let mut w = World::new(2, 0);
    let f = w.folio(HugePageSize::Size2M, None);
    let (managed0, ranges0) = (w.buddy.managed_pages(), w.buddy.managed().len());
    let ((r, s), _) = w.hvo(HvoOptions::default(), None, |h| (h.optimize_folio(&f), h.stats()));
    assert_eq!(r, Ok(true));
    // 7 tails + the old page 0, all boot vmemmap; the new page 0 came from the allocator.
    // (Shared design: the 7 tails; page 0 stays.)
    let n = 7 + page0_remaps(HvoOptions::default());
    assert_eq!(s.frames_freed, n);
    assert_eq!(w.buddy.managed_pages(), managed0 + n);
    assert_eq!(w.buddy.managed().len(), ranges0, "inside the bank's span: no new range");
    check_conservation(&w.vm, &w.ram, &w.buddy).unwrap();
    w.vmemmap_census().check().unwrap();
}

/// The scenario: 2 MiB folios at every other 2 MiB. On the old host world (boot
/// vmemmap outside the managed span) each scattered free added a managed range and folios
/// 15-19 each leaked 8 frames while optimize said `Ok(true)`.
#[test]
fn scattered_frees_never_run_out_of_ranges() {
    let mut w = World::new(2, 0);
    let fs: Vec<_> = (0..20)
        .map(|i| w.folio(HugePageSize::Size2M, Some(Pfn((BASE + 2 * i * PMD_SIZE) >> 12))))
        .collect();
    for f in &fs {
        let ((r, s), _) = w.hvo(HvoOptions::default(), None, |h| (h.optimize_folio(f), h.stats()));
        assert_eq!((r, s.free_failures), (Ok(true), 0));
    }
    check_conservation(&w.vm, &w.ram, &w.buddy).unwrap();
    w.vmemmap_census().check().unwrap();
}

/// Control: before the fix, a refused free still gave `Ok(true)`, and conservation passed
/// (the frames kept their `Vmemmap` state): the 8 frames were lost silently.
#[test]
fn refused_frees_are_reported_and_counted() {
    let mut w = World::new(2, 0);
    let f = w.folio(HugePageSize::Size2M, None);
    w.fail_frees = true;
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&f));
    let n = 7 + page0_remaps(HvoOptions::default());
    assert_eq!(r, Err(HvoError::FramesNotFreed { count: n }));
    // The work was done and is flagged, so a restore works.
    assert!(folio_is_optimized(&w.vm, &f));
    let c = w.vmemmap_census();
    assert_eq!(c.unmapped(), n);
    assert!(c.check().is_err());
    // Page conservation alone does not see it (the states still add up).
    check_conservation(&w.vm, &w.ram, &w.buddy).unwrap();
    w.fail_frees = false;
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.restore_folio(&f));
    assert_eq!(r, Ok(true));
    assert_eq!(
        w.vmemmap_census().unmapped(),
        n,
        "the lost frames stay lost: restore takes fresh ones"
    );
}
