//! HVO on a simulated machine: frames freed (measured three ways), fake heads for every pfn,
//! restore byte-identical, the vmemmap measured by walking init_mm.

mod hvo_common;

use hvo_common::*;
use kcore::addr::{Pfn, PAGE_SIZE, PMD_SIZE};
use kcore::buddy::check_conservation;
use kcore::hugetlb::{check_folio, Folio, HugePageSize, NoHooks};
use kcore::hugetlb_vmemmap::{
    folio_is_optimized, page_compound_head_pfn, page_is_head, page_is_tail, HvoOptions, HvoStats,
};
use kcore::page::PageState;
use kcore::pgtable::Level;

/// Every pfn of `folio` answers head/tail/compound_head correctly.
fn check_heads(w: &World, folio: &Folio) {
    let head = folio.head_pfn();
    for pfn in head.0..head.0 + folio.nr_pages() {
        let pfn = Pfn(pfn);
        assert_eq!(page_is_head(&w.vm, pfn), pfn == head, "{pfn}");
        assert_eq!(page_is_tail(&w.vm, pfn), pfn != head, "{pfn}");
        assert_eq!(page_compound_head_pfn(&w.vm, pfn), head, "{pfn}");
    }
}

/// The attributes and frame behind vmemmap page `i` of `folio`.
fn vmemmap_page(w: &World, folio: &Folio, i: u64) -> (u64, bool, Level) {
    let (start, _) = w.folio_va(folio);
    let (pa, attrs, level) = w.translate(start + i * PAGE_SIZE).unwrap();
    (pa.0, attrs.is_writable(), level)
}

/// Optimizes then restores `folio`, checking everything on the way; returns the two stats.
fn round_trip(w: &mut World, folio: &Folio, opts: HvoOptions) -> (HvoStats, HvoStats) {
    let n = folio.nr_pages() / 64; // vmemmap pages
    let descs = w.folio_descs(folio);
    let free0 = w.buddy.free_pages();
    let (usage0, _) = w.hvo(opts, None, |h| h.usage());
    assert_eq!(usage0.bytes(), w.vmemmap_frames_by_translation() * PAGE_SIZE);
    let page0_before = vmemmap_page(w, folio, 0).0;

    let ((r, opt), calls) = w.hvo(opts, None, |h| (h.optimize_folio(folio), h.stats()));
    assert_eq!(r, Ok(true));
    assert!(folio_is_optimized(&w.vm, folio));
    // Frames freed, three ways: the code's count of remapped entries, the allocator wrapper's
    // count of accepted frees minus allocations, and the buddy allocator's free count.
    assert_eq!(opt.ptes_remapped, n - 1);
    assert_eq!(opt.net_frames_freed(), (n - 1) as i64);
    assert_eq!(calls.freed as i64 - calls.allocated as i64, (n - 1) as i64);
    assert_eq!(w.buddy.free_pages() - free0, n - 1);
    assert_eq!(opt.free_failures, 0);
    assert_eq!(opt.head_pages_replaced, page0_remaps(opts));
    assert_eq!(opt.folios, 1);
    w.buddy.check(&w.vm).unwrap();
    check_conservation(&w.vm, &w.ram, &w.buddy).unwrap();

    // The vmemmap as mapped now: page 0 read-write, tails read-only onto it (shared design:
    // onto the order's shared tail page).
    let (p0, rw0, l0) = vmemmap_page(w, folio, 0);
    assert!(rw0 && l0 == Level::L3);
    assert_eq!(p0 == page0_before, page0_remaps(opts) == 0);
    let target = tail_target(w, folio, kcore::addr::PhysAddr(p0)).0;
    for i in 1..n {
        assert_eq!(vmemmap_page(w, folio, i), (target, false, Level::L3), "vmemmap page {i}");
    }
    // Measured by walking init_mm, and independently by translating every page. (Shared
    // design: the shared page, held already, is now mapped too, so the walk sees it.)
    let (usage1, _) = w.hvo(opts, None, |h| h.usage());
    assert_eq!(usage1.bytes(), w.vmemmap_frames_by_translation() * PAGE_SIZE);
    let sh = u64::from(shared());
    assert_eq!(usage0.bytes() - usage1.bytes(), (n - 1 - sh) * PAGE_SIZE);
    assert_eq!(usage1.pte_tables, usage0.pte_tables + opt.splits);

    // Fake heads really exist (the window aliases page 0) and are resolved; none in the
    // shared design (page 1 starts with a tail).
    let fake = Pfn(folio.head_pfn().0 + 64);
    assert_eq!(w.vm.page(fake).is_head(), !shared(), "raw PG_head on the first desc of page 1");
    assert_eq!(w.desc_via_window(fake) == w.desc_via_window(folio.head_pfn()), !shared());
    check_heads(w, folio);
    check_folio(folio, &w.vm).unwrap();

    let ((r, res), calls) = w.hvo(opts, None, |h| (h.restore_folio(folio), h.stats()));
    assert_eq!(r, Ok(true));
    assert!(!folio_is_optimized(&w.vm, folio));
    assert_eq!(res.ptes_restored, n - 1);
    assert_eq!((res.frames_allocated, calls.allocated), (n - 1, n - 1));
    assert_eq!(res.frames_freed, 0);
    assert_eq!(w.buddy.free_pages(), free0);
    for i in 1..n {
        let (pa, rw, level) = vmemmap_page(w, folio, i);
        assert!(rw && level == Level::L3 && pa != p0);
    }
    // Byte for byte what it was, through the translation and through the window.
    assert_eq!(w.folio_descs(folio), descs);
    for i in [0, 1, 63, 64, 65, folio.nr_pages() - 1] {
        let pfn = Pfn(folio.head_pfn().0 + i);
        assert_eq!(w.desc_via_window(pfn), w.desc_via_tables(pfn));
    }
    check_heads(w, folio);
    check_folio(folio, &w.vm).unwrap();
    let (usage2, _) = w.hvo(opts, None, |h| h.usage());
    assert_eq!(usage2.bytes(), usage0.bytes());
    check_conservation(&w.vm, &w.ram, &w.buddy).unwrap();
    (opt, res)
}

#[test]
fn optimize_2m_frees_7_frames_and_restore_is_identical() {
    let mut w = World::new(2, 0);
    let f = w.folio(HugePageSize::Size2M, None);
    let (opt, _) = round_trip(&mut w, &f, HvoOptions::default());
    // Seed: 8 freed, 1 taken for page 0's copy; shared: the 7 tail pages, nothing taken.
    let p0 = page0_remaps(HvoOptions::default());
    assert_eq!((opt.splits, opt.frames_freed, opt.frames_allocated), (1, 7 + p0, p0));
    // Again, on the kept split table: no split this time.
    let (opt, _) = round_trip(&mut w, &f, HvoOptions::default());
    assert_eq!(opt.splits, 0);
    // Back to the buddy allocator, through the pool (rewrites every descriptor).
    w.pool.free_pool_folio(f, &mut w.buddy, &w.vm, &mut NoHooks).unwrap();
    w.buddy.check(&w.vm).unwrap();
    check_conservation(&w.vm, &w.ram, &w.buddy).unwrap();
}

#[test]
fn optimize_2m_without_replacing_page_0() {
    let mut w = World::new(2, 0);
    let f = w.folio(HugePageSize::Size2M, None);
    let opts = HvoOptions { replace_head_page: false, ..HvoOptions::default() };
    let (opt, _) = round_trip(&mut w, &f, opts);
    assert_eq!((opt.frames_freed, opt.frames_allocated, opt.head_pages_replaced), (7, 0, 0));
}

#[test]
fn optimize_1g_frees_4095_frames_and_restore_is_identical() {
    let mut w = World::new(9, 0);
    let f = w.folio(HugePageSize::Size1G, Some(Pfn(BASE >> 12)));
    let (opt, res) = round_trip(&mut w, &f, HvoOptions::default());
    assert_eq!(opt.splits, 8);
    let p0 = page0_remaps(HvoOptions::default());
    assert_eq!((opt.frames_freed, opt.frames_allocated), (4095 + p0, p0));
    assert_eq!(res.ptes_restored, 4095);
}

#[test]
fn pool_operations_on_an_optimized_folio() {
    let mut w = World::new(2, 0);
    let a = w.folio(HugePageSize::Size2M, None);
    let b = w.folio(HugePageSize::Size2M, None);
    let ((ra, rb), _) =
        w.hvo(HvoOptions::default(), None, |h| (h.optimize_folio(&a), h.optimize_folio(&b)));
    assert_eq!((ra, rb), (Ok(true), Ok(true)));
    // Enqueue/dequeue write the heads (in the read-write page 0 of each folio).
    w.pool.enqueue(a, &w.vm);
    w.pool.enqueue(b, &w.vm);
    w.pool.check(&w.vm).unwrap();
    let b = w.pool.dequeue(HugePageSize::Size2M, &w.vm).unwrap();
    let a = w.pool.dequeue(HugePageSize::Size2M, &w.vm).unwrap();
    check_heads(&w, &a);
    check_heads(&w, &b);
    // Dequeued folios hold a reference: HVO refuses them until they are frozen again.
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.restore_folio(&a));
    assert_eq!(
        r,
        Err(kcore::hugetlb_vmemmap::HvoError::NotFrozen { folio: a.head_pfn(), refcount: 1 })
    );
    assert!(folio_is_optimized(&w.vm, &a));
    assert!(a.head(&w.vm).ref_freeze(1) && b.head(&w.vm).ref_freeze(1));
    // A second optimize is a no-op.
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| (h.optimize_folio(&a), h.stats()));
    assert_eq!(r, (Ok(false), HvoStats::default()));
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.restore_folios(&[a, b]));
    // `restore_folios` took the folios by reference; they were moved into the array.
    assert_eq!(r, Ok(2));
}

#[test]
fn usage_counts_distinct_frames_of_many_folios() {
    let mut w = World::new(3, 0);
    // Folios in different sections (different vmemmap blocks), two sharing a block.
    let fs = [
        w.folio(HugePageSize::Size2M, Some(Pfn(BASE >> 12))),
        w.folio(HugePageSize::Size2M, Some(Pfn((BASE + PMD_SIZE) >> 12))),
        w.folio(HugePageSize::Size2M, Some(Pfn((BASE + (128 << 20)) >> 12))),
    ];
    let (u0, _) = w.hvo(HvoOptions::default(), None, |h| h.usage());
    assert_eq!((u0.blocks_2m, u0.ptes), (3, 0));
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| {
        fs.iter().map(|f| h.optimize_folio(f)).collect::<Vec<_>>()
    });
    assert!(r.iter().all(|r| *r == Ok(true)));
    let (u1, _) = w.hvo(HvoOptions::default(), None, |h| h.usage());
    // Shared design: the 2M tail page is mapped now (counted once); the 1G one is held unmapped.
    let sh = u64::from(shared());
    let idle = w.vm.tail_pages().count() - sh;
    assert_eq!((u1.blocks_2m, u1.pte_tables, u1.ptes), (1, 2, 1024));
    assert_eq!(u1.pte_frames, 1024 - 3 * 7 + sh);
    assert_eq!(u1.bytes(), w.vmemmap_frames_by_translation() * PAGE_SIZE);
    assert_eq!(u0.bytes() - u1.bytes(), (3 * 7 - sh) * PAGE_SIZE);
    // The census agrees: vmemmap frames by page state.
    let census = check_conservation(&w.vm, &w.ram, &w.buddy).unwrap();
    assert_eq!(census.count(PageState::Vmemmap), u1.bytes() / PAGE_SIZE + idle);
}

/// After optimize, tail pages are mapped read-only: writing a tail descriptor faults, as it
/// would on the target. Run in a child process (this very test, re-executed) to see the signal.
#[test]
fn writing_an_optimized_tail_faults() {
    const CHILD: &str = "HVO_CHILD_WRITE_TAIL";
    if std::env::var_os(CHILD).is_some() {
        let mut w = World::new(2, 0);
        let f = w.folio(HugePageSize::Size2M, None);
        let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&f));
        assert_eq!(r, Ok(true));
        // Page 0 stays writable (same value: the tails stay identical).
        f.page(&w.vm, 10).set_private(0);
        eprintln!("page 0 written; writing a tail of page 1");
        f.page(&w.vm, 100).set_private(1);
        std::process::exit(0);
    }
    use std::os::unix::process::ExitStatusExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "writing_an_optimized_tail_faults", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("page 0 written"), "{err}");
    assert_eq!(out.status.signal(), Some(11), "{:?} {err}", out.status);
}
