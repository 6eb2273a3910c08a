//! Failures change nothing: a restore whose allocation fails at any point, an optimize whose
//! split cannot get a page table, a self-hosted vmemmap, a tail that is not like the others.

mod hvo_common;

use hvo_common::*;
use kcore::addr::{Pfn, PMD_SIZE};
use kcore::buddy::check_conservation;
use kcore::hugetlb::{Folio, HugePageSize};
use kcore::hugetlb_vmemmap::{folio_is_optimized, HvoError, HvoOptions};
use kcore::pgtable::Level;
use kcore::tlb::MmuEvent;
use kcore::vmemmap::SECTION_SIZE;

/// Everything a failed call must leave as it was.
#[derive(PartialEq, Eq, Debug)]
struct State {
    tables: Vec<(u64, usize, u8, u64)>,
    free_pages: u64,
    managed_pages: u64,
    table_pages_out: usize,
    optimized: Vec<bool>,
    descs: Vec<Vec<[u64; 8]>>,
}

fn state(w: &World, fs: &[&Folio]) -> State {
    w.buddy.check(&w.vm).unwrap();
    check_conservation(&w.vm, &w.ram, &w.buddy).unwrap();
    State {
        tables: w.table_snapshot(),
        free_pages: w.buddy.free_pages(),
        managed_pages: w.buddy.managed_pages(),
        table_pages_out: w.tables.allocated(),
        optimized: fs.iter().map(|f| folio_is_optimized(&w.vm, f)).collect(),
        descs: fs.iter().map(|f| w.folio_descs(f)).collect(),
    }
}

fn no_writes(w: &mut World) {
    let ev = w.mmu.take_events();
    assert!(!ev.iter().any(|e| matches!(e, MmuEvent::Write { .. })), "{ev:?}");
}

#[test]
fn restore_2m_rolls_back_at_every_allocation() {
    let mut w = World::new(2, 0);
    let f = w.folio(HugePageSize::Size2M, None);
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&f));
    assert_eq!(r, Ok(true));
    w.mmu.take_events();
    let before = state(&w, &[&f]);
    for k in 0..7 {
        let ((r, s), calls) =
            w.hvo(HvoOptions::default(), Some(k), |h| (h.restore_folio(&f), h.stats()));
        assert_eq!(r, Err(HvoError::NoMemory { needed: 7, got: k }));
        assert_eq!((calls.allocated, calls.freed), (k, k));
        assert_eq!((s.frames_allocated, s.frames_freed, s.ptes_restored), (k, k, 0));
        no_writes(&mut w);
        assert_eq!(state(&w, &[&f]), before, "failure at allocation {k}");
    }
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.restore_folio(&f));
    assert_eq!(r, Ok(true));
}

#[test]
fn restore_1g_rolls_back() {
    let mut w = World::new(9, 0);
    let f = w.folio(HugePageSize::Size1G, Some(Pfn(BASE >> 12)));
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&f));
    assert_eq!(r, Ok(true));
    w.mmu.take_events();
    let before = state(&w, &[&f]);
    for k in [0, 1, 2048, 4094] {
        let (r, calls) = w.hvo(HvoOptions::default(), Some(k), |h| h.restore_folio(&f));
        assert_eq!(r, Err(HvoError::NoMemory { needed: 4095, got: k }));
        assert_eq!(calls.allocated, k);
        assert_eq!(calls.freed, k);
        no_writes(&mut w);
        assert_eq!(state(&w, &[&f]), before, "failure at allocation {k}");
    }
}

#[test]
fn batched_restore_rolls_back() {
    let mut w = World::new(3, 0);
    let fs = [
        w.folio(HugePageSize::Size2M, Some(Pfn(BASE >> 12))),
        w.folio(HugePageSize::Size2M, Some(Pfn((BASE + SECTION_SIZE) >> 12))),
        w.folio(HugePageSize::Size2M, Some(Pfn((BASE + SECTION_SIZE + PMD_SIZE) >> 12))),
    ];
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folios(&fs));
    assert_eq!(r, Ok(3));
    w.mmu.take_events();
    let refs: Vec<&Folio> = fs.iter().collect();
    let before = state(&w, &refs);
    for k in [0, 10, 20] {
        let (r, _) = w.hvo(HvoOptions::default(), Some(k), |h| h.restore_folios(&fs));
        assert_eq!(r, Err(HvoError::NoMemory { needed: 21, got: k }));
        no_writes(&mut w);
        assert_eq!(state(&w, &refs), before);
    }
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.restore_folios(&fs));
    assert_eq!(r, Ok(3));
}

#[test]
fn split_table_allocation_failure_keeps_the_blocks() {
    // 2 MiB: the one table page refused.
    let mut w = World::new(2, 0);
    let f = w.folio(HugePageSize::Size2M, None);
    let before = state(&w, &[&f]);
    w.tables.set_limit(Some(w.tables.allocated()));
    let (r, calls) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&f));
    assert_eq!(r, Err(HvoError::NoPageTables { needed: 1, got: 0 }));
    assert_eq!(calls.calls, 0, "no frame asked for before the tables");
    no_writes(&mut w);
    assert_eq!(state(&w, &[&f]), before);
    let (start, _) = w.folio_va(&f);
    assert_eq!(w.translate(start).unwrap().2, Level::L2, "still a block");
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.split_folio(&f));
    assert_eq!(r, Err(HvoError::NoPageTables { needed: 1, got: 0 }));
    w.tables.set_limit(None);
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&f));
    assert_eq!(r, Ok(true));

    // 1 GiB: 8 blocks, the 4th table refused: none of the blocks is split.
    let mut w = World::new(9, 0);
    let f = w.folio(HugePageSize::Size1G, Some(Pfn(BASE >> 12)));
    let before = state(&w, &[&f]);
    w.tables.set_limit(Some(w.tables.allocated() + 3));
    let fs = [f];
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folios(&fs));
    assert_eq!(r, Err(HvoError::NoPageTables { needed: 8, got: 3 }));
    no_writes(&mut w);
    assert_eq!(state(&w, &[&fs[0]]), before);
}

#[test]
fn head_page_allocation_failure_keeps_page_0() {
    let mut w = World::new(2, 0);
    let f = w.folio(HugePageSize::Size2M, None);
    let free0 = w.buddy.free_pages();
    let ((r, s), calls) =
        w.hvo(HvoOptions::default(), Some(0), |h| (h.optimize_folio(&f), h.stats()));
    assert_eq!(r, Ok(true));
    // (Shared design: page 0 is never copied, so no frame is asked for.)
    assert_eq!(calls.calls, page0_remaps(HvoOptions::default()));
    assert_eq!((s.head_pages_replaced, s.frames_allocated, s.frames_freed), (0, 0, 7));
    assert_eq!(w.buddy.free_pages() - free0, 7);
}

#[test]
fn self_hosted_vmemmap_is_refused() {
    let mut w = World::new(2, 1);
    let sh = w.hot.unwrap();
    // A folio in the hot-added section, after the 2 MiB hosting its memmap.
    let hot = w.folio(HugePageSize::Size2M, Some(Pfn((sh.range.base.0 + PMD_SIZE) >> 12)));
    let normal = w.folio(HugePageSize::Size2M, Some(Pfn(BASE >> 12)));
    w.mmu.take_events();
    let before = state(&w, &[&hot, &normal]);
    let (start, _) = w.folio_va(&hot);
    let (r, calls) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&hot));
    let Err(HvoError::SelfHostedVmemmap { folio, vmemmap_va, backing }) = r else {
        panic!("{r:?}");
    };
    assert_eq!((folio, vmemmap_va), (hot.head_pfn(), start));
    assert!(sh.is_vmemmap_frame(backing));
    assert_eq!(calls.calls, 0);
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.split_folio(&hot));
    assert!(matches!(r, Err(HvoError::SelfHostedVmemmap { .. })));
    // A batch with one self-hosted folio changes nothing, not even the other folio's block.
    let fs = [normal, hot];
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folios(&fs));
    assert!(matches!(r, Err(HvoError::SelfHostedVmemmap { .. })));
    no_writes(&mut w);
    assert_eq!(state(&w, &[&fs[1], &fs[0]]), before);
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&fs[0]));
    assert_eq!(r, Ok(true));
}

#[test]
fn differing_tail_is_refused() {
    let mut w = World::new(2, 0);
    let f = w.folio(HugePageSize::Size2M, None);
    f.page(&w.vm, 300).set_private(42);
    let before = state(&w, &[&f]);
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&f));
    assert_eq!(r, Err(HvoError::TailMismatch { folio: f.head_pfn(), index: 300 }));
    no_writes(&mut w);
    assert_eq!(state(&w, &[&f]), before);
}
