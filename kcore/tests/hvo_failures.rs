//! A failure after entries were written (issue 10 item 7): at every step of the apply and
//! invalidate passes, an injected failure (the entry changed under us) must leave exactly the
//! folios whose flag says "optimized" optimized, and every other folio as it was: the folio
//! where the pass failed is rolled back (Linux's `vmemmap_remap_free()` / `vmemmap_restore_pte`),
//! the folios completed before it are flagged (optimize) or unflagged (restore).
//!
//! Control: before the fix, the flags were set only if the whole call succeeded, and the
//! failing folio kept what had been written: after a failure at step k, folios 0..k/8 were
//! remapped but unflagged and the failing one half remapped; `check_consistent` below fails on
//! exactly that (and a later restore skipped them).

mod hvo_common;

use hvo_common::*;
use kcore::addr::{Pfn, PAGE_SIZE, PMD_SIZE};
use kcore::buddy::check_conservation;
use kcore::hugetlb::{Folio, HugePageSize};
use kcore::hugetlb_vmemmap::{folio_is_optimized, HvoError, HvoOptions};

#[derive(PartialEq, Eq, Debug)]
struct State {
    tables: Vec<(u64, usize, u8, u64)>,
    free_pages: u64,
    managed_pages: u64,
    optimized: Vec<bool>,
    descs: Vec<Vec<[u64; 8]>>,
}

/// What the folios hold and the allocator counts (not the tables: a folio optimized and
/// restored keeps its page 0 on the copy made by the optimize).
fn same_content(a: &State, b: &State) -> bool {
    (&a.descs, &a.optimized, a.free_pages, a.managed_pages)
        == (&b.descs, &b.optimized, b.free_pages, b.managed_pages)
}

fn state(w: &World, fs: &[Folio]) -> State {
    w.buddy.check(&w.vm).unwrap();
    check_conservation(&w.vm, &w.ram, &w.buddy).unwrap();
    w.vmemmap_census().check().unwrap();
    State {
        tables: w.table_snapshot(),
        free_pages: w.buddy.free_pages(),
        managed_pages: w.buddy.managed_pages(),
        optimized: fs.iter().map(|f| folio_is_optimized(&w.vm, f)).collect(),
        descs: fs.iter().map(|f| w.folio_descs(f)).collect(),
    }
}

/// Is `f` mapped optimized (every tail page on page 0, read-only) or plainly (every page its
/// own frame, read-write)? Panics on anything in between.
fn mapped_optimized(w: &World, f: &Folio) -> bool {
    let (start, _) = w.folio_va(f);
    let (p0, a0, _) = w.translate(start).unwrap();
    assert!(a0.is_writable());
    let n = f.nr_pages() / 64;
    let tails: Vec<_> = (1..n).map(|i| w.translate(start + i * PAGE_SIZE).unwrap()).collect();
    let target = tail_target(w, f, p0);
    let on_p0 = tails.iter().filter(|(pa, a, _)| *pa == target && !a.is_writable()).count() as u64;
    let own = tails.iter().filter(|(pa, a, _)| *pa != target && a.is_writable()).count() as u64;
    assert!(on_p0 == n - 1 || own == n - 1, "{f:?} half remapped: {on_p0} on page 0, {own} own");
    on_p0 == n - 1
}

fn check_consistent(w: &World, fs: &[Folio]) {
    for f in fs {
        assert_eq!(folio_is_optimized(&w.vm, f), mapped_optimized(w, f), "{f:?}: flag vs map");
    }
}

fn four_2m(w: &mut World) -> Vec<Folio> {
    let p = |off: u64| Some(Pfn((BASE + off) >> 12));
    let fs = vec![
        w.folio(HugePageSize::Size2M, p(0)),
        w.folio(HugePageSize::Size2M, p(PMD_SIZE)),
        w.folio(HugePageSize::Size2M, p(128 << 20)),
        w.folio(HugePageSize::Size2M, p((128 << 20) + 4 * PMD_SIZE)),
    ];
    for f in &fs {
        let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.split_folio(f));
        assert!(r.is_ok());
    }
    w.mmu.take_events();
    fs
}

fn inconsistent(r: Result<u64, HvoError>) -> bool {
    matches!(r, Err(HvoError::Inconsistent { .. }))
}

#[test]
fn optimize_fails_at_each_step() {
    let mut w = World::new(3, 0);
    let fs = four_2m(&mut w);
    let initial = state(&w, &fs);
    // Single folio: 8 replacements (page 0 onto its copy, 7 tails; shared design: 7 tails).
    let per = 7 + page0_remaps(HvoOptions::default());
    for k in 0..per {
        let (r, _) = w.hvo(HvoOptions::default(), None, |h| {
            h.inject_replace_failure(Some(k));
            h.optimize_folio(&fs[0]).map(u64::from)
        });
        assert!(inconsistent(r), "step {k}: {r:?}");
        w.mmu.take_events();
        check_consistent(&w, &fs);
        assert!(state(&w, &fs) == initial, "single, step {k}: state changed");
    }
    // Batched: 32 replacements (28 shared); the folios before the failing one are done and
    // flagged.
    for k in 0..4 * per {
        let (r, _) = w.hvo(HvoOptions::default(), None, |h| {
            h.inject_replace_failure(Some(k));
            h.optimize_folios(&fs)
        });
        assert!(inconsistent(r), "step {k}: {r:?}");
        w.mmu.take_events();
        check_consistent(&w, &fs);
        let flagged: Vec<_> = fs.iter().map(|f| folio_is_optimized(&w.vm, f)).collect();
        assert_eq!(flagged, (0..4).map(|i| i < k / per).collect::<Vec<_>>(), "step {k}");
        let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.restore_folios(&fs));
        assert_eq!(r, Ok(k / per));
        w.mmu.take_events();
        // (The counts moved: boot vmemmap frames went to the allocator, the restore took
        // fresh ones; conservation and the vmemmap census are checked by `state`.)
        let s = state(&w, &fs);
        assert!((&s.descs, &s.optimized) == (&initial.descs, &initial.optimized), "step {k}");
    }
}

#[test]
fn restore_fails_at_each_step() {
    let mut w = World::new(3, 0);
    let fs = four_2m(&mut w);
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folios(&fs));
    assert_eq!(r, Ok(4));
    w.mmu.take_events();
    let optimized = state(&w, &fs);
    // Single folio: 7 tails.
    for k in 0..7 {
        let (r, _) = w.hvo(HvoOptions::default(), None, |h| {
            h.inject_replace_failure(Some(k));
            h.restore_folio(&fs[0]).map(u64::from)
        });
        assert!(inconsistent(r), "step {k}: {r:?}");
        w.mmu.take_events();
        check_consistent(&w, &fs);
        assert!(state(&w, &fs) == optimized, "single, step {k}: state changed");
    }
    // Batched: 28; the folios before the failing one are restored and unflagged.
    for k in 0..28 {
        let (r, _) = w.hvo(HvoOptions::default(), None, |h| {
            h.inject_replace_failure(Some(k));
            h.restore_folios(&fs)
        });
        assert!(inconsistent(r), "step {k}: {r:?}");
        w.mmu.take_events();
        check_consistent(&w, &fs);
        let flagged: Vec<_> = fs.iter().map(|f| folio_is_optimized(&w.vm, f)).collect();
        assert_eq!(flagged, (0..4).map(|i| i >= k / 7).collect::<Vec<_>>(), "step {k}");
        let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.optimize_folios(&fs));
        assert_eq!(r, Ok(k / 7));
        w.mmu.take_events();
        assert!(same_content(&state(&w, &fs), &optimized), "batched, step {k}: state changed");
    }
}
