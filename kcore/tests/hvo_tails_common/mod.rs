//! The tail-design tests, run by `hvo_tails_seed` and `hvo_tails_shared` (one design per test
//! binary: the design is a process-wide setting, as on the target).
#![allow(dead_code)]

use crate::hvo_common::*;
use kcore::addr::{Pfn, PAGE_SIZE};
use kcore::bbm_check::check_break_before_make;
use kcore::buddy::check_conservation;
use kcore::hugetlb::{check_folio, Folio, HugePageSize};
use kcore::hugetlb_vmemmap::{
    folio_is_optimized, page_compound_head_pfn, page_is_head, page_is_tail, set_tail_design,
    HvoError, HvoOptions, HvoStats,
};
use kcore::hvo_tails::{tail_design, tail_mask_word, TailDesign};
use kcore::pgtable::Level;

/// Selects `d` for this test binary (every test asks for the same one).
pub fn select(d: TailDesign) {
    set_tail_design(d).unwrap();
    assert_eq!(tail_design(), d);
}

/// Counts the pfns of `folio` whose head/tail/compound-head answer is wrong (no panic, so that
/// the negative control can see the count).
pub fn wrong_answers(w: &World, folio: &Folio) -> u64 {
    let head = folio.head_pfn();
    (head.0..head.0 + folio.nr_pages())
        .map(Pfn)
        .filter(|&pfn| {
            page_is_head(&w.vm, pfn) != (pfn == head)
                || page_is_tail(&w.vm, pfn) != (pfn != head)
                || page_compound_head_pfn(&w.vm, pfn) != head
        })
        .count() as u64
}

/// (frame, writable, level) behind vmemmap page `i` of `folio`.
fn vpage(w: &World, folio: &Folio, i: u64) -> (u64, bool, Level) {
    let (start, _) = w.folio_va(folio);
    let (pa, attrs, level) = w.translate(start + i * PAGE_SIZE).unwrap();
    (pa.0, attrs.is_writable(), level)
}

/// What one optimize or restore of one folio did, measured.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub stats: HvoStats,
    /// Buddy free-count gained (optimize) or lost (restore, negative).
    pub buddy_delta: i64,
    /// Frames the vmemmap holds before minus after (the census: mapped frames by a walk of
    /// init_mm, plus shared tail pages no folio maps at the moment; checked against the frames
    /// in state `Vmemmap` by `conserved`).
    pub vmemmap_frames_delta: i64,
}

fn optimize_one(w: &mut World, f: &Folio) -> Measured {
    let free0 = w.buddy.free_pages() as i64;
    let frames0 = w.vmemmap_census().mapped as i64;
    let ((r, stats), _) = w.hvo(HvoOptions::default(), None, |h| (h.optimize_folio(f), h.stats()));
    assert_eq!(r, Ok(true));
    check_break_before_make(&w.mmu.take_events()).unwrap();
    Measured {
        stats,
        buddy_delta: w.buddy.free_pages() as i64 - free0,
        vmemmap_frames_delta: frames0 - w.vmemmap_census().mapped as i64,
    }
}

fn restore_one(w: &mut World, f: &Folio) -> Measured {
    let free0 = w.buddy.free_pages() as i64;
    let frames0 = w.vmemmap_census().mapped as i64;
    let ((r, stats), _) = w.hvo(HvoOptions::default(), None, |h| (h.restore_folio(f), h.stats()));
    assert_eq!(r, Ok(true));
    check_break_before_make(&w.mmu.take_events()).unwrap();
    Measured {
        stats,
        buddy_delta: w.buddy.free_pages() as i64 - free0,
        vmemmap_frames_delta: frames0 - w.vmemmap_census().mapped as i64,
    }
}

fn conserved(w: &World) {
    w.buddy.check(&w.vm).unwrap();
    check_conservation(&w.vm, &w.ram, &w.buddy).unwrap();
    w.vmemmap_census().check().unwrap();
}

/// Checks the mapping of an optimized folio in design `d`; returns the frame pages 1..N map.
fn check_optimized_mapping(w: &World, f: &Folio, d: TailDesign, page0_before: u64) -> u64 {
    let n = f.nr_pages() / 64;
    let (p0, rw0, _) = vpage(w, f, 0);
    assert!(rw0, "page 0 stays writable");
    let (t, rw, level) = vpage(w, f, 1);
    assert!(!rw && level == Level::L3, "tails read-only, page-mapped");
    for i in 1..n {
        assert_eq!(vpage(w, f, i), (t, false, Level::L3), "vmemmap page {i}");
    }
    match d {
        TailDesign::Shared => {
            assert_eq!(p0, page0_before, "shared design: page 0 is not moved");
            assert_eq!(Some(t), w.vm.tail_pages().get(f.order()).map(|p| p.0), "the shared page");
            assert_ne!(t, p0);
            // No fake head: the first descriptor of page 1 is a tail, not an alias of the head.
            assert!(!w.vm.page(Pfn(f.head_pfn().0 + 64)).is_head());
        }
        TailDesign::Seed => {
            assert_eq!(t, p0, "seed design: the tails alias page 0");
            assert!(w.vm.page(Pfn(f.head_pfn().0 + 64)).is_head(), "a fake head");
        }
    }
    t
}

/// 2 MiB folios in `d`: two optimize/restore cycles of 16 folios (8 one by one, 8 batched),
/// every pfn checked after each step, descriptors restored byte for byte, frames measured per
/// folio. Returns the per-folio measurements of the steady-state single optimizes and restores.
pub fn cycles_2m(d: TailDesign) -> (Vec<Measured>, Vec<Measured>) {
    select(d);
    let mut w = World::new(3, 0);
    let folios: Vec<Folio> = (0..16).map(|_| w.folio(HugePageSize::Size2M, None)).collect();
    let before: Vec<_> = folios.iter().map(|f| w.folio_descs(f)).collect();
    let page0: Vec<u64> = folios.iter().map(|f| vpage(&w, f, 0).0).collect();
    // Tails are byte-identical across folios in the shared design, not in the seed's.
    let t_a = w.desc_via_window(Pfn(folios[0].head_pfn().0 + 100));
    let t_b = w.desc_via_window(Pfn(folios[1].head_pfn().0 + 100));
    assert_eq!(t_a == t_b, d == TailDesign::Shared, "tails identical across folios");
    if d == TailDesign::Shared {
        for i in 1..512 {
            assert_eq!(w.desc_via_window(Pfn(folios[0].head_pfn().0 + i)), t_a);
        }
    }
    let n = 8u64; // vmemmap pages per 2 MiB folio
    let (mut opts, mut ress) = (Vec::new(), Vec::new());
    for cycle in 0..2 {
        // One by one: per-folio figures.
        let mut shared_at = None;
        for (k, f) in folios[..8].iter().enumerate() {
            let m = optimize_one(&mut w, f);
            // (Table pages come from the world's own table allocator, not the buddy.)
            assert_eq!(m.buddy_delta, m.stats.net_frames_freed());
            let t = check_optimized_mapping(&w, f, d, page0[k]);
            if d == TailDesign::Shared {
                // One shared page for all: the same frame for every folio.
                assert_eq!(*shared_at.get_or_insert(t), t);
            }
            assert_eq!(wrong_answers(&w, f), 0);
            check_folio(f, &w.vm).unwrap();
            let first_ever = cycle == 0 && k == 0;
            if !first_ever {
                opts.push(m);
            }
            // The tables and frames measured agree with the code's counts.
            assert_eq!(m.stats.ptes_remapped, n - 1);
            assert_eq!(m.stats.net_frames_freed(), m.vmemmap_frames_delta, "{m:?}");
        }
        // Batched.
        let ((r, _), _) =
            w.hvo(HvoOptions::default(), None, |h| (h.optimize_folios(&folios[8..]), h.stats()));
        assert_eq!(r, Ok(8));
        check_break_before_make(&w.mmu.take_events()).unwrap();
        for (k, f) in folios.iter().enumerate() {
            assert!(folio_is_optimized(&w.vm, f));
            check_optimized_mapping(&w, f, d, page0[k]);
            assert_eq!(wrong_answers(&w, f), 0, "folio {k}");
        }
        conserved(&w);
        assert_eq!(w.vm.tail_pages().count(), u64::from(d == TailDesign::Shared));
        // Restore: half one by one, half batched.
        for f in &folios[..8] {
            let m = restore_one(&mut w, f);
            assert_eq!(m.stats.ptes_restored, n - 1);
            for i in 1..n {
                let (pa, rw, _) = vpage(&w, f, i);
                assert!(rw);
                assert!(!w.vm.tail_pages().contains(kcore::addr::PhysAddr(pa)));
            }
            assert_eq!(wrong_answers(&w, f), 0);
            ress.push(m);
        }
        let ((r, _), _) =
            w.hvo(HvoOptions::default(), None, |h| (h.restore_folios(&folios[8..]), h.stats()));
        assert_eq!(r, Ok(8));
        check_break_before_make(&w.mmu.take_events()).unwrap();
        for (k, f) in folios.iter().enumerate() {
            assert!(!folio_is_optimized(&w.vm, f));
            assert_eq!(w.folio_descs(f), before[k], "folio {k} restored byte for byte");
            assert_eq!(wrong_answers(&w, f), 0);
            check_folio(f, &w.vm).unwrap();
        }
        // The shared page stays (allocated once, never freed): still counted as vmemmap.
        conserved(&w);
    }
    (opts, ress)
}

/// One 1 GiB folio in `d`, next to an optimized 2 MiB folio: two cycles, every pfn checked.
pub fn cycles_1g(d: TailDesign) -> (Measured, Measured) {
    select(d);
    let mut w = World::new(10, 0);
    let g = w.folio(HugePageSize::Size1G, Some(Pfn(BASE >> 12)));
    let m2 = w.folio(HugePageSize::Size2M, None);
    let before = w.folio_descs(&g);
    let page0 = vpage(&w, &g, 0).0;
    optimize_one(&mut w, &m2);
    let mut last = None;
    for _ in 0..2 {
        let o = optimize_one(&mut w, &g);
        let t = check_optimized_mapping(&w, &g, d, page0);
        if d == TailDesign::Shared {
            assert_ne!(Some(kcore::addr::PhysAddr(t)), w.vm.tail_pages().get(9), "one per order");
            assert_eq!(w.vm.tail_pages().count(), 2);
        }
        assert_eq!(wrong_answers(&w, &g), 0);
        assert_eq!(wrong_answers(&w, &m2), 0);
        conserved(&w);
        let r = restore_one(&mut w, &g);
        assert_eq!(w.folio_descs(&g), before);
        assert_eq!(wrong_answers(&w, &g), 0);
        conserved(&w);
        last = Some((o, r));
    }
    last.unwrap()
}

/// Negative control: a tail encoded for the wrong order resolves to a wrong head, which the
/// every-pfn check counts, and HVO refuses the folio (the tail differs from tail 1).
pub fn wrong_order_is_noticed(d: TailDesign) {
    select(d);
    let mut w = World::new(2, 0);
    let f = w.folio(HugePageSize::Size2M, None);
    assert_eq!(wrong_answers(&w, &f), 0);
    // Tail 300 says "order 8": its mask keeps bit 14 of the address, so the head it computes
    // is the descriptor of pfn head + 256.
    let bad = Pfn(f.head_pfn().0 + 300);
    let good = w.vm.page(bad).compound_head_raw();
    w.vm.page(bad).set_compound_word(tail_mask_word(8));
    assert_eq!(page_compound_head_pfn(&w.vm, Pfn(f.head_pfn().0 + 300)), Pfn(f.head_pfn().0 + 256));
    assert_eq!(wrong_answers(&w, &f), 1, "the check sees the wrong head");
    let ((r, _), _) = w.hvo(HvoOptions::default(), None, |h| (h.optimize_folio(&f), h.stats()));
    assert!(
        matches!(r, Err(HvoError::TailMismatch { .. }) | Err(HvoError::Folio(_))),
        "refused: {r:?}"
    );
    assert!(!folio_is_optimized(&w.vm, &f));
    w.vm.page(bad).set_compound_word(good);
    assert_eq!(wrong_answers(&w, &f), 0);
}
