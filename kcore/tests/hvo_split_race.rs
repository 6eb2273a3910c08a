//! Two CPUs optimizing folios whose descriptors share one 2 MiB vmemmap block (issue 9 item 3).
//!
//! CPU A's walker reads the block entry; before A splits it, CPU B optimizes another folio of
//! the same block (splitting it and remapping that folio's tails). The interleaving is made
//! deterministic by the test-only split hook, which runs B inside A's split, between A's read
//! and A's re-check. With the re-check (default), A finds B's table under `page_table_lock`,
//! gives its own table back and descends; without it (the negative control), A replaces B's
//! table: B's table leaks and B's remapped entries revert to frames B already freed.

mod hvo_common;

use hvo_common::*;
use kcore::addr::{Pfn, VirtAddr, PMD_SIZE};
use kcore::bbm_check::{check_break_before_make, BbmMissing};
use kcore::buddy::check_conservation;
use kcore::hugetlb::{Folio, HugePageSize};
use kcore::hugetlb_vmemmap::{folio_is_optimized, BuddyFrames, Hvo, HvoOptions, HvoStats};
use kcore::mapper::VecFrameAlloc;
use kcore::page::PageState;
use kcore::pgtable::{DescKind, Level};

struct Outcome {
    a: Result<u64, kcore::hugetlb_vmemmap::HvoError>,
    a_stats: HvoStats,
    b_table: Option<kcore::addr::PhysAddr>,
    a_tables_out: usize,
    /// A's sequence judged by the recorded checker and by the online auditor.
    a_check: Result<(), BbmMissing>,
    a_audit: Result<(), BbmMissing>,
}

fn race(w: &mut World, x: &Folio, y: &Folio, recheck: bool) -> Outcome {
    let mut mmu_b = w.mmu.another();
    // B's table pages: the top of the world's table region (A's come from the bottom).
    let mut tables_b = VecFrameAlloc::new(kcore::addr::PhysAddr(w.backing.end() - 16 * 4096), 16);
    let guard = w.mm.mmap_read();
    let (mem, vm, mm) = (&w.mem, &w.vm, &w.mm);
    let buddy = &mut w.buddy;
    let mut b_ran = false;
    let mut hook = |va: VirtAddr| {
        if b_ran {
            return;
        }
        b_ran = true;
        assert_eq!(va.align_down(PMD_SIZE), w_block(y));
        // CPU B, inside A's window: optimizes y (its own mmap_lock read hold).
        let g2 = mm.mmap_read();
        let mut frames = BuddyFrames::new(buddy, vm);
        // SAFETY: as `World::hvo`: the simulated RAM, the mirror of this init_mm, and y is the
        // test's folio, which A does not touch.
        let mut hb = unsafe { Hvo::new(&g2, mem, &mut mmu_b, vm, &mut frames, &mut tables_b) }
            .with_options(HvoOptions { replace_head_page: false, ..HvoOptions::default() });
        assert_eq!(hb.optimize_folio(y), Ok(true));
        assert_eq!(hb.stats().splits, 1);
    };
    let mut frames_a = NoFrames;
    // SAFETY: as above; x is the test's folio.
    let mut ha = unsafe { Hvo::new(&guard, mem, &mut w.mmu, vm, &mut frames_a, &mut w.tables) }
        .with_options(HvoOptions { recheck_entries: recheck, ..HvoOptions::default() });
    ha.set_split_race_hook(&mut hook);
    let (a, a_stats) = (ha.split_folio(x), ha.stats());
    drop(guard);
    // B's sequence is correct whatever A does afterwards.
    assert!(check_break_before_make(&mmu_b.take_events()).is_ok());
    let (ev_a, audit_a) = w.mmu.take_events_audited();
    let b_table = (tables_b.allocated() == 1).then(|| {
        // The one page B took and kept (VecFrameAlloc hands out the lowest first).
        kcore::addr::PhysAddr(w.backing.end() - 16 * 4096)
    });
    Outcome {
        a,
        a_stats,
        b_table,
        a_tables_out: w.tables.allocated(),
        a_check: check_break_before_make(&ev_a).map_err(|v| v.missing),
        a_audit: audit_a.map_err(|v| v.missing),
    }
}

fn w_block(f: &Folio) -> VirtAddr {
    kcore::hugetlb_vmemmap::folio_vmemmap_range(f).0.align_down(PMD_SIZE)
}

/// Which table the level-2 entry of `f`'s vmemmap block points to (`None`: not a table).
fn block_table(w: &World, f: &Folio) -> Option<u64> {
    let block = w_block(f);
    let (first_page, _, level) = w.translate(block).unwrap();
    assert_eq!(level, Level::L3);
    w.table_snapshot()
        .iter()
        .filter(|(_, _, lvl, d)| {
            *lvl == Level::L2 as u8
                && kcore::pgtable::Descriptor(*d).kind(Level::L2) == DescKind::Table
        })
        .map(|(_, _, _, d)| kcore::pgtable::Descriptor(*d).table_address().0)
        .find(|t| {
            // The table whose first entry maps the block's first page.
            let first = kcore::pgtable::Descriptor(w.mem.read_u64(kcore::addr::PhysAddr(*t)));
            first.output_address(Level::L3) == first_page
        })
}

fn setup() -> (World, Folio, Folio) {
    let mut w = World::new(2, 0);
    // Both folios in section 0: their descriptors share its one 2 MiB vmemmap block.
    let x = w.folio(HugePageSize::Size2M, Some(Pfn(BASE >> 12)));
    let y = w.folio(HugePageSize::Size2M, Some(Pfn((BASE + PMD_SIZE) >> 12)));
    assert_eq!(w_block(&x), w_block(&y));
    (w, x, y)
}

#[test]
fn second_split_is_skipped_under_page_table_lock() {
    let (mut w, x, y) = setup();
    let tables0 = w.tables.allocated();
    let o = race(&mut w, &x, &y, true);
    // A split nothing: the block was B's table by the time A held the lock.
    assert_eq!(o.a, Ok(0));
    assert_eq!((o.a_stats.splits, o.a_stats.splits_skipped), (0, 1));
    assert_eq!(o.a_tables_out, tables0, "A's prepared table went back");
    assert_eq!((o.a_check, o.a_audit), (Ok(()), Ok(())));
    let b_table = o.b_table.expect("B kept its table");
    assert_eq!(block_table(&w, &x), Some(b_table.0), "the block is B's table");
    // y is still optimized: its tails map its page 0 (shared design: the shared tail page),
    // whose frame is not free.
    assert!(folio_is_optimized(&w.vm, &y));
    let (ys, _) = w.folio_va(&y);
    let page0 = tail_target(&w, &y, w.translate(ys).unwrap().0);
    for i in 1..8 {
        let (pa, attrs, _) = w.translate(ys + i * 4096).unwrap();
        assert_eq!(pa, page0);
        assert!(!attrs.is_writable());
    }
    // Every vmemmap frame still mapped is in state Vmemmap (none was handed to the buddy).
    for i in 0..(PMD_SIZE / 4096) {
        let (pa, _, _) = w.translate(w_block(&x) + i * 4096).unwrap();
        assert_eq!(w.vm.page(Pfn(pa.0 >> 12)).state(), PageState::Vmemmap);
    }
    check_conservation(&w.vm, &w.ram, &w.buddy).unwrap();
}

#[test]
fn without_the_recheck_the_second_split_leaks_and_reverts() {
    let (mut w, x, y) = setup();
    let o = race(&mut w, &x, &y, false);
    // A split the block again, over B's table.
    assert_eq!(o.a, Ok(1));
    // A broke B's live table with one TLBI by VA, which leaves B's leaves in the TLBs: both
    // checkers see it.
    assert_eq!((o.a_check, o.a_audit), (Err(BbmMissing::Tlbi), Err(BbmMissing::Tlbi)));
    let b_table = o.b_table.expect("B took a table");
    assert_ne!(block_table(&w, &x), Some(b_table.0), "B's table is no longer linked: leaked");
    assert!(
        !w.table_snapshot().iter().any(|(t, _, _, _)| *t == b_table.0),
        "nothing reaches B's table"
    );
    // y's flag says optimized, but its tails map their old frames again, which B freed.
    assert!(folio_is_optimized(&w.vm, &y));
    let (ys, _) = w.folio_va(&y);
    let mut reverted_to_free = 0;
    for i in 1..8 {
        let (pa, attrs, _) = w.translate(ys + i * 4096).unwrap();
        assert!(attrs.is_writable());
        if w.vm.page(Pfn(pa.0 >> 12)).state() == PageState::Free {
            reverted_to_free += 1;
        }
    }
    assert_eq!(reverted_to_free, 7, "every remapped entry points at a freed frame");
}
