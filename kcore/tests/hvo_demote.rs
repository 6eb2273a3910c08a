//! Demote (`kcore::hugetlb_demote`) on the simulated machine: a 1 GiB folio split into 512 of
//! 2 MiB, directly while optimized (511 frames allocated, none restored), the restore-then-split
//! way for comparison, and with HVO off; every pfn's head/tail answer after each; frames counted
//! by the allocator; an allocation failure at any point changes nothing; the break-before-make
//! auditor clean (and, as its negative control, not clean when the TLBIs are dropped).

mod hvo_common;

use hvo_common::*;
use kcore::addr::{Pfn, PAGE_SIZE};
use kcore::buddy::check_conservation;
use kcore::hugetlb::{check_folio, Demoted, Folio, HugePageSize};
use kcore::hugetlb_demote::{demote_folio, DemoteError, DemoteMode, DemoteResult};
use kcore::hugetlb_vmemmap::{
    folio_is_optimized, page_compound_head_pfn, page_is_head, page_is_tail, set_hvo_enabled,
    HvoOptions,
};
use kcore::page::PageFlags;
use kcore::tlb::{MmuEvent, TlbiKind};
use std::sync::Mutex;

/// The HVO switch is global: the tests of this file run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn g1(w: &mut World) -> Folio {
    w.folio(HugePageSize::Size1G, Some(Pfn(BASE >> 12)))
}

/// Every pfn of every part answers head/tail/compound head right; returns the parts checked.
fn check_parts(w: &World, d: &Demoted) -> u64 {
    let mut n = 0;
    for f in d.parts() {
        let head = f.head_pfn();
        for pfn in head.0..head.0 + f.nr_pages() {
            let pfn = Pfn(pfn);
            assert_eq!(page_is_head(&w.vm, pfn), pfn == head, "{pfn}");
            assert_eq!(page_is_tail(&w.vm, pfn), pfn != head, "{pfn}");
            assert_eq!(page_compound_head_pfn(&w.vm, pfn), head, "{pfn}");
        }
        check_folio(&f, &w.vm).unwrap();
        assert_eq!(f.head(&w.vm).refcount(), 0, "free and frozen");
        n += 1;
    }
    n
}

fn demote(
    w: &mut World,
    f: Folio,
    mode: DemoteMode,
    fail_at: Option<u64>,
) -> (DemoteResult, FrameCalls) {
    w.hvo(HvoOptions::default(), fail_at, |h| demote_folio(h, f, mode))
}

#[test]
fn direct_demote_of_an_optimized_1g_folio() {
    let _s = serial();
    set_hvo_enabled(true);
    let mut w = World::new(9, 0);
    let f = g1(&mut w);
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&f));
    assert_eq!(r, Ok(true));
    w.mmu.take_events();
    let free0 = w.buddy.free_pages();
    let frames0 = w.vmemmap_frames_by_translation();
    // Counted from here (the optimize above ran without a window sync).
    w.mmu.breaks_outside_window = 0;

    let mut sync = WindowSync::new(&w);
    let (r, calls) = w.hvo_sync(HvoOptions::default(), None, Some(&mut sync), |h| {
        demote_folio(h, f, DemoteMode::Direct)
    });
    let (d, st) = r.expect("demote");
    // Frames: 511 taken, none given back, by the allocator's own count and by the code's.
    assert_eq!((calls.allocated, calls.freed), (511, 0));
    assert_eq!(free0 - w.buddy.free_pages(), 511);
    assert_eq!((st.hvo.frames_allocated, st.hvo.frames_freed), (511, 0));
    assert_eq!(w.vmemmap_frames_by_translation(), frames0 + 511);
    assert!(st.direct);
    assert_eq!((st.parts, st.parts_optimized, st.windows), (512, 512, 1));
    // Seed design: entries 8..4095 (pages 1..7 already map page 0); shared design: 1..4095
    // (part 0's pages 1..7 move from the 1 GiB shared tail page to the 2 MiB one).
    assert_eq!(st.hvo.ptes_remapped, if shared() { 4095 } else { 4096 - 8 });
    assert_eq!(st.hvo.tlbi_flush_all, 1);
    assert_eq!(st.hvo.splits, 0, "the 2 MiB blocks were split by the optimize already");
    // One break window, closed with everything mapped; the auditor clean.
    assert_eq!(sync.misordered, 0);
    assert_eq!(sync.unmapped_at_end, 0);
    assert_eq!(w.mmu.breaks_outside_window, 0);
    let ev = w.mmu.take_events();
    assert_eq!(
        ev.iter().filter(|e| matches!(e, MmuEvent::Tlbi { kind: TlbiKind::All, .. })).count(),
        1,
        "{:?}",
        &ev[..4]
    );

    // Each part optimized for 2 MiB: page 8k real and writable, 8k+1..8k+7 read-only onto it
    // (seed) or onto the shared 2 MiB tail page (shared).
    for (k, p) in d.parts().enumerate() {
        assert!(folio_is_optimized(&w.vm, &p), "part {k}");
        let (start, _) = w.folio_va(&p);
        let (p0, a0, _) = w.translate(start).unwrap();
        assert!(a0.is_writable());
        for i in 1..8 {
            let (pa, a, _) = w.translate(start + i * PAGE_SIZE).unwrap();
            assert_eq!(pa, tail_target(&w, &p, p0), "part {k} page {i}");
            assert!(!a.is_writable());
        }
    }
    assert_eq!(check_parts(&w, &d), 512);
    w.buddy.check(&w.vm).unwrap();
    check_conservation(&w.vm, &w.ram, &w.buddy).unwrap();

    // Into the pool: 0 of 1G, 512 free of 2M, every free folio's invariants.
    w.pool.accept_demoted(d, &w.vm);
    assert_eq!(w.pool.counts(HugePageSize::Size1G).nr_hugepages, 0);
    assert_eq!(w.pool.counts(HugePageSize::Size2M).free_hugepages, 512);
    w.pool.check(&w.vm).unwrap();

    // The parts restore like any optimized 2 MiB folio: 7 frames each.
    let mut parts = Vec::new();
    while let Some(p) = w.pool.dequeue(HugePageSize::Size2M, &w.vm) {
        assert!(p.head(&w.vm).ref_freeze(1));
        parts.push(p);
    }
    let free1 = w.buddy.free_pages();
    for c in parts.chunks(64) {
        let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.restore_folios(c));
        assert_eq!(r, Ok(c.len() as u64));
    }
    assert_eq!(free1 - w.buddy.free_pages(), 512 * 7);
    for p in &parts {
        check_folio(p, &w.vm).unwrap();
        assert!(!p.head(&w.vm).test(PageFlags::VMEMMAP_OPTIMIZED));
    }
    check_conservation(&w.vm, &w.ram, &w.buddy).unwrap();
}

#[test]
fn restore_then_split_ends_in_the_same_state_with_more_work() {
    let _s = serial();
    set_hvo_enabled(true);
    let mut figures = Vec::new();
    for mode in [DemoteMode::Direct, DemoteMode::RestoreThenSplit] {
        let mut w = World::new(9, 0);
        let f = g1(&mut w);
        let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&f));
        assert_eq!(r, Ok(true));
        w.mmu.take_events();
        let free0 = w.buddy.free_pages();
        let (r, calls) = demote(&mut w, f, mode, None);
        let (d, st) = r.expect("demote");
        w.mmu.take_events();
        assert_eq!(st.direct, mode == DemoteMode::Direct);
        assert_eq!(st.parts_optimized, 512);
        assert_eq!(free0 - w.buddy.free_pages(), 511, "{mode:?}: the same 511 frames in the end");
        assert_eq!(calls.allocated - calls.freed, 511);
        assert_eq!(check_parts(&w, &d), 512);
        for p in d.parts() {
            assert!(folio_is_optimized(&w.vm, &p));
        }
        check_conservation(&w.vm, &w.ram, &w.buddy).unwrap();
        println!(
            "{mode:?}: frames allocated {} freed {}, entries remapped {} restored {}, TLBI {} (flush-all {}), DSB {}, entry writes {}",
            calls.allocated,
            calls.freed,
            st.hvo.ptes_remapped,
            st.hvo.ptes_restored,
            st.hvo.tlbi,
            st.hvo.tlbi_flush_all,
            st.hvo.dsb,
            st.hvo.entry_writes
        );
        figures.push((calls.allocated, st.hvo.entry_writes));
    }
    // Restore-then-split allocates the whole 16 MiB back (4095 frames) plus the parts' page 0
    // copies; the direct demote only the 511 new pages 0.
    assert_eq!(figures[0].0, 511);
    assert!(figures[1].0 >= 4095, "{figures:?}");
    assert!(figures[1].1 > figures[0].1, "{figures:?}");
}

#[test]
fn hvo_off_demote_rewrites_descriptors_only() {
    let _s = serial();
    set_hvo_enabled(false);
    let mut w = World::new(9, 0);
    let f = g1(&mut w);
    let tables0 = w.table_snapshot();
    let free0 = w.buddy.free_pages();
    let (r, calls) = demote(&mut w, f, DemoteMode::Direct, None);
    set_hvo_enabled(true);
    let (d, st) = r.expect("demote");
    assert!(!st.direct);
    assert_eq!((st.parts_optimized, st.descriptors_written), (0, 1 << 18));
    assert_eq!((calls.calls, calls.freed), (0, 0), "no frame asked for");
    assert_eq!(w.buddy.free_pages(), free0);
    assert_eq!(w.table_snapshot(), tables0, "no entry written");
    assert_eq!(check_parts(&w, &d), 512);
    for p in d.parts() {
        assert!(!folio_is_optimized(&w.vm, &p));
    }
    w.pool.accept_demoted(d, &w.vm);
    w.pool.check(&w.vm).unwrap();
}

#[test]
fn unoptimized_folio_with_hvo_on_gets_its_parts_optimized() {
    let _s = serial();
    set_hvo_enabled(true);
    let mut w = World::new(9, 0);
    let f = g1(&mut w);
    let free0 = w.buddy.free_pages();
    let (r, _) = demote(&mut w, f, DemoteMode::Direct, None);
    let (d, st) = r.expect("demote");
    w.mmu.take_events();
    assert!(!st.direct);
    assert_eq!(st.parts_optimized, 512);
    // 8 split tables come from the table allocator, not the frame allocator.
    assert_eq!(w.buddy.free_pages() - free0, 512 * 7);
    assert_eq!(check_parts(&w, &d), 512);
}

/// What a failed demote must leave as it was.
#[derive(PartialEq, Eq, Debug)]
struct State {
    tables: Vec<(u64, usize, u8, u64)>,
    free_pages: u64,
    optimized: bool,
    descs: Vec<[u64; 8]>,
}

fn state(w: &World, f: &Folio) -> State {
    w.buddy.check(&w.vm).unwrap();
    check_conservation(&w.vm, &w.ram, &w.buddy).unwrap();
    State {
        tables: w.table_snapshot(),
        free_pages: w.buddy.free_pages(),
        optimized: folio_is_optimized(&w.vm, f),
        descs: w.folio_descs(f),
    }
}

#[test]
fn allocation_failure_at_any_point_changes_nothing() {
    let _s = serial();
    set_hvo_enabled(true);
    let mut w = World::new(9, 0);
    let mut f = g1(&mut w);
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&f));
    assert_eq!(r, Ok(true));
    w.mmu.take_events();
    let before = state(&w, &f);
    for k in [0, 1, 255, 510] {
        let (r, calls) = demote(&mut w, f, DemoteMode::Direct, Some(k));
        let Err((back, e)) = r else { panic!("failure at {k} not reported") };
        assert_eq!(e, DemoteError::NoMemory { needed: 511, got: k });
        assert_eq!((calls.allocated, calls.freed), (k, k), "all given back");
        let ev = w.mmu.take_events();
        assert!(!ev.iter().any(|e| matches!(e, MmuEvent::Write { .. })), "no entry written");
        assert_eq!(state(&w, &back), before, "failure at allocation {k}");
        f = back;
    }
    // The same folio then demotes.
    let (r, _) = demote(&mut w, f, DemoteMode::Direct, None);
    let (d, _) = r.expect("demote after the failures");
    w.mmu.take_events();
    assert_eq!(check_parts(&w, &d), 512);
}

#[test]
fn refusals() {
    let _s = serial();
    set_hvo_enabled(true);
    let mut w = World::new(9, 0);
    // In use: the pool's reference not frozen.
    let f = w.folio_unfrozen(HugePageSize::Size1G, Some(Pfn(BASE >> 12)));
    let before = state(&w, &f);
    let (r, calls) = demote(&mut w, f, DemoteMode::Direct, None);
    let Err((f, e)) = r else { panic!("an in-use folio demoted") };
    assert_eq!(e, DemoteError::InUse { folio: f.head_pfn(), refcount: 1 });
    assert_eq!(calls.calls, 0);
    assert_eq!(state(&w, &f), before);
    // 2 MiB has no smaller size.
    let g = w.folio(HugePageSize::Size2M, None);
    let (r, _) = demote(&mut w, g, DemoteMode::Direct, None);
    let Err((_, e)) = r else { panic!("a 2M folio demoted") };
    assert_eq!(e, DemoteError::NoSmallerSize { size: HugePageSize::Size2M });
    // Flagged optimized but mapped by blocks (not HVO's layout): refused, nothing written.
    assert!(f.head(&w.vm).ref_freeze(1));
    f.head(&w.vm).set_flags(PageFlags::VMEMMAP_OPTIMIZED);
    let before = state(&w, &f);
    let (r, calls) = demote(&mut w, f, DemoteMode::Direct, None);
    let Err((f, e)) = r else { panic!("a bad layout demoted") };
    assert!(matches!(e, DemoteError::Layout { .. }), "{e:?}");
    assert_eq!(calls.calls, 0);
    assert_eq!(state(&w, &f), before);
}

#[test]
fn auditor_catches_a_demote_without_tlbi() {
    // Negative control of the auditor on this sequence: the same demote with its TLBIs dropped.
    let _s = serial();
    set_hvo_enabled(true);
    let mut w = World::new(9, 0);
    let f = g1(&mut w);
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&f));
    assert_eq!(r, Ok(true));
    w.mmu.take_events();
    w.mmu.drop_tlbi = true;
    let (r, _) = demote(&mut w, f, DemoteMode::Direct, None);
    assert!(r.is_ok());
    let (_, verdict) = w.mmu.take_events_audited();
    assert!(verdict.is_err(), "the auditor must reject output-address changes without TLBI");
}
