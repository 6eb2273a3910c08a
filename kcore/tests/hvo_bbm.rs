//! The recorded sequences of HVO pass the break-before-make checker; the same sequences with a
//! step dropped fail it; batching measurably saves barriers and TLB flushes.

mod hvo_common;

use hvo_common::*;
use kcore::addr::{Pfn, PMD_SIZE};
use kcore::bbm_check::{check_break_before_make, check_published, BbmMissing};
use kcore::hugetlb::{Folio, HugePageSize};
use kcore::hugetlb_vmemmap::{folio_is_optimized, HvoOptions, HvoStats};
use kcore::pgtable::{DescKind, Level};
use kcore::tlb::{MmuEvent, TlbiKind};

fn checked(events: &[MmuEvent]) {
    check_break_before_make(events).unwrap();
    check_published(events).unwrap();
}

/// Needs a world of 3 sections (the last holds the boot vmemmap).
fn four_2m(w: &mut World) -> [Folio; 4] {
    // Two in section 0's vmemmap block, two in section 1's.
    let p = |off: u64| Some(Pfn((BASE + off) >> 12));
    [
        w.folio(HugePageSize::Size2M, p(0)),
        w.folio(HugePageSize::Size2M, p(PMD_SIZE)),
        w.folio(HugePageSize::Size2M, p(128 << 20)),
        w.folio(HugePageSize::Size2M, p((128 << 20) + 4 * PMD_SIZE)),
    ]
}

#[test]
fn split_is_break_before_make() {
    let mut w = World::new(2, 0);
    let f = w.folio(HugePageSize::Size2M, None);
    let ((r, s), _) = w.hvo(HvoOptions::default(), None, |h| (h.split_folio(&f), h.stats()));
    assert_eq!(r, Ok(1));
    let ev = w.mmu.take_events();
    checked(&ev);
    let (start, _) = w.folio_va(&f);
    let block = start.align_down(PMD_SIZE);
    // Exactly: invalid, DSB, one TLBI by VA of the block, DSB ISH, table, DSB ISHST, ISB.
    assert_eq!(ev.len(), 7, "{ev:#?}");
    assert!(matches!(ev[0], MmuEvent::Write { level: Level::L2, new, .. } if !new.is_valid()));
    assert_eq!(ev[1], MmuEvent::DsbIshst);
    assert_eq!(ev[2], MmuEvent::Tlbi { kind: TlbiKind::VaAllAsids, va: block });
    assert_eq!(ev[3], MmuEvent::DsbIsh);
    assert!(matches!(ev[4], MmuEvent::Write { level: Level::L2, new, .. }
        if new.kind(Level::L2) == DescKind::Table));
    assert_eq!(&ev[5..], &[MmuEvent::DsbIshst, MmuEvent::Isb]);
    assert_eq!((s.splits, s.tlbi, s.dsb, s.isb, s.entry_writes), (1, 1, 3, 1, 2));
    // Splitting again is a no-op.
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.split_folio(&f));
    assert_eq!(r, Ok(0));
    assert!(w.mmu.take_events().is_empty());
}

#[test]
fn single_folio_sequences_pass_the_checker() {
    for (sections, size) in [(2, HugePageSize::Size2M), (9, HugePageSize::Size1G)] {
        let mut w = World::new(sections, 0);
        let f = w.folio(size, Some(Pfn(BASE >> 12)));
        for replace_head_page in [true, false] {
            let opts = HvoOptions { replace_head_page, ..HvoOptions::default() };
            let ((r, s), _) = w.hvo(opts, None, |h| (h.optimize_folio(&f), h.stats()));
            assert_eq!(r, Ok(true));
            let ev = w.mmu.take_events();
            checked(&ev);
            let n = f.nr_pages() / 64;
            let remaps = n - 1 + page0_remaps(opts);
            // Per entry (one break window each): invalid + new, DSB ISHST + DSB ISH, one
            // TLBI, then DSB ISHST + ISB publishing it; per split 2 writes, 3 DSBs, 1 TLBI,
            // 1 ISB.
            assert_eq!(s.tlbi, remaps + s.splits);
            assert_eq!(s.dsb, 3 * remaps + 3 * s.splits);
            assert_eq!(s.entry_writes, 2 * remaps + 2 * s.splits);
            assert_eq!(s.isb, remaps + s.splits);
            assert_eq!(s.tlbi_flush_all, 0);
            let ((r, s), _) = w.hvo(opts, None, |h| (h.restore_folio(&f), h.stats()));
            assert_eq!(r, Ok(true));
            let ev = w.mmu.take_events();
            checked(&ev);
            assert_eq!((s.tlbi, s.dsb, s.entry_writes), (n - 1, 3 * (n - 1), 2 * (n - 1)));
        }
    }
}

#[test]
fn batched_sequences_pass_the_checker() {
    let mut w = World::new(3, 0);
    let fs = four_2m(&mut w);
    let ((r, s), _) = w.hvo(HvoOptions::default(), None, |h| (h.optimize_folios(&fs), h.stats()));
    assert_eq!(r, Ok(4));
    assert!(fs.iter().all(|f| folio_is_optimized(&w.vm, f)));
    let ev = w.mmu.take_events();
    checked(&ev);
    // 2 blocks split (two folios per block); 4 x 8 entries (page 0 replaced; shared design:
    // 4 x 7, page 0 stays) in one break.
    let e = (4 * (7 + page0_remaps(HvoOptions::default()))) as usize;
    assert_eq!(s.splits, 2);
    assert_eq!(s.tlbi, 2 + e as u64);
    assert_eq!(s.dsb, 3 * 2 + 3);
    assert_eq!(s.isb, 2 + 1);
    assert_eq!(s.ptes_remapped, 28);
    assert_eq!(s.net_frames_freed(), 28);
    // After the splits: every invalid write, then one DSB ISHST, the TLBIs, one DSB ISH, every
    // new entry, DSB ISHST, ISB.
    let tail = &ev[ev.len() - (e + 1 + e + 1 + e + 2)..];
    assert!(tail[..e].iter().all(|e| matches!(e, MmuEvent::Write { new, .. } if !new.is_valid())));
    assert_eq!(tail[e], MmuEvent::DsbIshst);
    assert!(tail[e + 1..2 * e + 1]
        .iter()
        .all(|e| matches!(e, MmuEvent::Tlbi { kind: TlbiKind::VaAllAsids, .. })));
    assert_eq!(tail[2 * e + 1], MmuEvent::DsbIsh);
    assert!(tail[2 * e + 2..3 * e + 2]
        .iter()
        .all(|e| matches!(e, MmuEvent::Write { new, .. } if new.is_valid())));
    assert_eq!(&tail[3 * e + 2..], &[MmuEvent::DsbIshst, MmuEvent::Isb]);

    let ((r, s), _) = w.hvo(HvoOptions::default(), None, |h| (h.restore_folios(&fs), h.stats()));
    assert_eq!(r, Ok(4));
    checked(&w.mmu.take_events());
    assert_eq!((s.tlbi, s.dsb, s.isb, s.entry_writes), (28, 3, 1, 56));
    assert!(fs.iter().all(|f| !folio_is_optimized(&w.vm, f)));
}

/// Makes the MMU backend skip a step.
type Breaker = fn(&mut World);

#[test]
fn dropped_steps_are_rejected() {
    let cases: [(&str, Breaker, BbmMissing); 2] = [
        ("no TLBI", |w| w.mmu.drop_tlbi = true, BbmMissing::Tlbi),
        ("no DSB ISH", |w| w.mmu.drop_dsb_ish = true, BbmMissing::DsbIshAfterTlbi),
    ];
    for (name, breakit, missing) in cases {
        // Split, single-folio optimize, batched optimize, single and batched restore.
        let mut w = World::new(3, 0);
        let fs = four_2m(&mut w);
        breakit(&mut w);
        // Each sequence judged by the recorded checker and by the online auditor: both catch it.
        let judge = |w: &mut World, level: Option<Level>, what: &str| {
            let (ev, audit) = w.mmu.take_events_audited();
            let v = check_break_before_make(&ev).unwrap_err();
            assert_eq!(v.missing, missing, "{name}: {what}");
            let a = audit.unwrap_err();
            assert_eq!(a.missing, missing, "{name}: {what} (auditor)");
            if let Some(l) = level {
                assert_eq!((v.level, a.level), (l, l), "{name}: {what}");
            }
        };
        let _ = w.hvo(HvoOptions::default(), None, |h| h.split_folio(&fs[0]));
        judge(&mut w, Some(Level::L2), "split");
        let _ = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&fs[0]));
        judge(&mut w, Some(Level::L3), "optimize");
        let _ = w.hvo(HvoOptions::default(), None, |h| h.optimize_folios(&fs[1..]));
        judge(&mut w, None, "batched optimize");
        let _ = w.hvo(HvoOptions::default(), None, |h| h.restore_folio(&fs[0]));
        judge(&mut w, Some(Level::L3), "restore");
        let _ = w.hvo(HvoOptions::default(), None, |h| h.restore_folios(&fs[1..]));
        judge(&mut w, None, "batched restore");
    }
}

/// Per-folio DSBs and TLBI operations, unbatched vs batched, on already split folios (so only
/// the remapping is compared).
#[test]
fn batching_saves_barriers_and_flushes() {
    let mut w = World::new(3, 0);
    let fs = four_2m(&mut w);
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| {
        fs.iter().map(|f| h.split_folio(f)).sum::<Result<u64, _>>()
    });
    assert_eq!(r, Ok(2));
    let (single, _) = w.hvo(HvoOptions::default(), None, |h| {
        for f in &fs {
            assert_eq!(h.optimize_folio(f), Ok(true));
        }
        for f in &fs {
            assert_eq!(h.restore_folio(f), Ok(true));
        }
        h.stats()
    });
    let (batch, _) = w.hvo(HvoOptions::default(), None, |h| {
        assert_eq!(h.optimize_folios(&fs), Ok(4));
        assert_eq!(h.restore_folios(&fs), Ok(4));
        h.stats()
    });
    checked(&w.mmu.take_events());
    let per = |s: HvoStats| (s.dsb / 4, s.isb as f64 / 4.0);
    assert_eq!((single.ptes_remapped, batch.ptes_remapped), (28, 28));
    // Unbatched: 3 DSBs per entry (each its own published window). Batched: 3 per batch.
    let p0 = page0_remaps(HvoOptions::default());
    assert_eq!(single.dsb, 4 * (3 * (7 + p0)) + 4 * (3 * 7));
    assert_eq!(batch.dsb, 3 + 3);
    assert!(per(batch).0 < per(single).0);
    assert!(per(batch).1 < per(single).1);
    // Same number of by-VA TLBIs below the threshold...
    assert_eq!((single.tlbi, batch.tlbi), (4 * (7 + p0) + 4 * 7, 4 * (7 + p0) + 4 * 7));
    // ... and a single TLBI VMALLE1IS above it.
    let opts = HvoOptions { flush_all_threshold: 16, ..HvoOptions::default() };
    let (flush, _) = w.hvo(opts, None, |h| {
        assert_eq!(h.optimize_folios(&fs), Ok(4));
        assert_eq!(h.restore_folios(&fs), Ok(4));
        h.stats()
    });
    let ev = w.mmu.take_events();
    checked(&ev);
    assert_eq!((flush.tlbi, flush.tlbi_flush_all, flush.dsb), (2, 2, 6));
    assert_eq!(
        ev.iter().filter(|e| matches!(e, MmuEvent::Tlbi { kind: TlbiKind::All, .. })).count(),
        2
    );
}

#[test]
fn batched_1g_uses_one_flush() {
    let mut w = World::new(9, 0);
    let f = [w.folio(HugePageSize::Size1G, Some(Pfn(BASE >> 12)))];
    let before = w.folio_descs(&f[0]);
    let ((r, s), _) = w.hvo(HvoOptions::default(), None, |h| (h.optimize_folios(&f), h.stats()));
    assert_eq!(r, Ok(1));
    checked(&w.mmu.take_events());
    // 8 splits (one TLBI each) + one TLBI VMALLE1IS for 4096 entries.
    assert_eq!((s.splits, s.tlbi, s.tlbi_flush_all), (8, 9, 1));
    assert_eq!((s.ptes_remapped, s.net_frames_freed()), (4095, 4095));
    let ((r, s), _) = w.hvo(HvoOptions::default(), None, |h| (h.restore_folios(&f), h.stats()));
    assert_eq!(r, Ok(1));
    checked(&w.mmu.take_events());
    assert_eq!((s.tlbi, s.tlbi_flush_all, s.dsb, s.ptes_restored), (1, 1, 3, 4095));
    assert_eq!(w.folio_descs(&f[0]), before);
}

#[test]
fn batches_skip_folios_with_nothing_to_do() {
    let mut w = World::new(3, 0);
    let fs = four_2m(&mut w);
    // fs[0] optimized beforehand; fs[2] (another vmemmap block) never touched.
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&fs[0]));
    assert_eq!(r, Ok(true));
    let ((r, s), _) =
        w.hvo(HvoOptions::default(), None, |h| (h.optimize_folios(&fs[..2]), h.stats()));
    assert_eq!(r, Ok(1));
    assert_eq!((s.splits, s.ptes_remapped), (0, 7));
    checked(&w.mmu.take_events());
    let (start, _) = w.folio_va(&fs[2]);
    let ((r, s), _) =
        w.hvo(HvoOptions::default(), None, |h| (h.restore_folios(&fs[1..3]), h.stats()));
    assert_eq!(r, Ok(1));
    assert_eq!(s.ptes_restored, 7);
    checked(&w.mmu.take_events());
    assert_eq!(w.translate(start).unwrap().2, Level::L2, "the skipped folio's block is intact");
    assert!(folio_is_optimized(&w.vm, &fs[0]) && !folio_is_optimized(&w.vm, &fs[1]));
    // Nothing to do at all: no instruction.
    let ((r, s), _) =
        w.hvo(HvoOptions::default(), None, |h| (h.restore_folios(&fs[1..]), h.stats()));
    assert_eq!((r, s), (Ok(0), HvoStats::default()));
}

/// Where HVO calls its [`kcore::bbm_sync::BbmSync`] hooks: one window per split, one per entry
/// in the single-folio path, one for a whole batched pass; every break inside a window, every
/// window mapped again at its end, the grace period before frames are freed.
#[test]
fn sync_hooks_bracket_every_break() {
    use kcore::bbm_sync::SyncEvent::*;
    let mut w = World::new(3, 0);
    let fs = four_2m(&mut w);
    let block = |f: &Folio| w.folio_va(f).0.align_down(PMD_SIZE);
    let (b0, b1) = (block(&fs[0]), block(&fs[2]));
    let mut sync = WindowSync::new(&w);
    // split_folio: one window, the block.
    let (r, _) =
        w.hvo_sync(HvoOptions::default(), None, Some(&mut sync), |h| h.split_folio(&fs[0]));
    assert_eq!(r, Ok(1));
    assert_eq!(sync.events, [OpBegin, BreakBegin(b0, b0 + PMD_SIZE), BreakEnd, OpEnd]);
    // Single folio (already split): one window per replaced entry (8, page 0 replaced).
    sync.events.clear();
    let (r, _) =
        w.hvo_sync(HvoOptions::default(), None, Some(&mut sync), |h| h.optimize_folio(&fs[0]));
    assert_eq!(r, Ok(true));
    let (start, _) = w.folio_va(&fs[0]);
    let mut want = vec![OpBegin];
    for i in 1 - page0_remaps(HvoOptions::default())..8 {
        want.extend([BreakBegin(start + i * 4096, start + (i + 1) * 4096), BreakEnd]);
    }
    want.extend([GracePeriod, OpEnd]);
    assert_eq!(sync.events, want);
    // Batched, over folios in two blocks (one split already): a window for the other split,
    // then one window from the first invalid entry to the published completion.
    sync.events.clear();
    let (r, _) =
        w.hvo_sync(HvoOptions::default(), None, Some(&mut sync), |h| h.optimize_folios(&fs[1..]));
    assert_eq!(r, Ok(3));
    let (lo, hi) = (w.folio_va(&fs[1]).0, w.folio_va(&fs[3]).1);
    assert_eq!(
        sync.events,
        [
            OpBegin,
            BreakBegin(b1, b1 + PMD_SIZE),
            BreakEnd,
            BreakBegin(lo, hi),
            BreakEnd,
            GracePeriod,
            OpEnd
        ]
    );
    // Restores: no frame freed, no grace period.
    sync.events.clear();
    let (r, _) =
        w.hvo_sync(HvoOptions::default(), None, Some(&mut sync), |h| h.restore_folios(&fs));
    assert_eq!(r, Ok(4));
    assert_eq!(sync.events, [OpBegin, BreakBegin(w.folio_va(&fs[0]).0, hi), BreakEnd, OpEnd]);
    assert_eq!((sync.misordered, sync.unmapped_at_end), (0, 0));
    assert_eq!(w.mmu.breaks_outside_window, 0);
    checked(&w.mmu.take_events());
    // Nothing to do: no hook at all.
    sync.events.clear();
    let (r, _) =
        w.hvo_sync(HvoOptions::default(), None, Some(&mut sync), |h| h.restore_folios(&fs));
    assert_eq!((r, sync.events.len()), (Ok(0), 0));
    // Negative control: without a sync, the shadow MMU counts every break as outside a window.
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&fs[0]));
    assert_eq!(r, Ok(true));
    assert_eq!(w.mmu.breaks_outside_window, 7 + page0_remaps(HvoOptions::default()));
}

/// HVO refuses a folio somebody holds a reference to; the test-only control lets it through.
#[test]
fn unfrozen_folios_are_refused() {
    let mut w = World::new(2, 0);
    let f = w.folio_unfrozen(HugePageSize::Size2M, None);
    let before = w.table_snapshot();
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folio(&f));
    assert_eq!(
        r,
        Err(kcore::hugetlb_vmemmap::HvoError::NotFrozen { folio: f.head_pfn(), refcount: 1 })
    );
    assert_eq!(w.table_snapshot(), before, "nothing written");
    assert!(w.mmu.take_events().is_empty());
    let opts = HvoOptions { require_frozen: false, ..HvoOptions::default() };
    let (r, _) = w.hvo(opts, None, |h| h.optimize_folio(&f));
    assert_eq!(r, Ok(true));
}

/// A speculative reference taker (Linux's `folio_try_get()` from a PFN walker) runs on another
/// CPU just as HVO is about to replace page 0 by its copy: the copy is made, the old page 0 is
/// still mapped. On a frozen folio the get fails and writes nothing; on an unfrozen one (the
/// test-only `require_frozen: false`) it succeeds on the old frame and is lost with it.
struct GetAtPage0 {
    head: *const kcore::page::Page,
    page0: kcore::addr::VirtAddr,
    got: Option<bool>,
}

impl kcore::bbm_sync::BbmSync for GetAtPage0 {
    fn break_begin(&mut self, start: kcore::addr::VirtAddr, _end: kcore::addr::VirtAddr) {
        if start == self.page0 && self.got.is_none() {
            // SAFETY: the head descriptor, mapped (the window has not broken yet).
            self.got = Some(unsafe { &*self.head }.try_get());
        }
    }
}

#[test]
fn freezing_prevents_a_lost_reference() {
    for frozen in [true, false] {
        let mut w = World::new(2, 0);
        let f = if frozen {
            w.folio(HugePageSize::Size2M, None)
        } else {
            w.folio_unfrozen(HugePageSize::Size2M, None)
        };
        let r0 = f.head(&w.vm).refcount();
        let mut sync = GetAtPage0 { head: f.head(&w.vm), page0: w.folio_va(&f).0, got: None };
        let opts = HvoOptions { require_frozen: frozen, ..HvoOptions::default() };
        let (r, _) = w.hvo_sync(opts, None, Some(&mut sync), |h| h.optimize_folio(&f));
        assert_eq!(r, Ok(true));
        let after = f.head(&w.vm).refcount();
        if shared() {
            // The shared design never breaks page 0: the taker never runs inside a break of
            // it, and nothing can be lost with an old page 0.
            assert_eq!((sync.got, after), (None, r0), "page 0 never broken");
        } else if frozen {
            assert_eq!((r0, sync.got, after), (0, Some(false), 0), "nothing taken, nothing lost");
        } else {
            // The get succeeded (the taker holds a reference) but the count it raised went with
            // the old page 0: the folio now reads one reference fewer than are held.
            assert_eq!((r0, sync.got, after), (1, Some(true), 1), "a reference was lost");
        }
    }
}
