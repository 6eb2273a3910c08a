//! A 1 GiB folio's vmemmap populated already optimized (`kcore::hvo_preinit`): 4096 pages onto
//! one frame, no 2 MiB block ever written for the range, every pfn answers right through the
//! real aliasing, and HVO finds the folio optimized (no split, no entry written); it restores
//! like any optimized folio. Negative control: the same folio with the ordinary block-populated
//! vmemmap needs 8 live splits to be optimized.

mod hvo_common;

use hvo_common::*;
use kcore::addr::{Pfn, PhysAddr, PAGE_SIZE};
use kcore::hugetlb::Folio;
use kcore::hugetlb_vmemmap::{
    folio_is_optimized, page_compound_head_pfn, page_is_head, page_is_tail, vmemmap_va, HvoOptions,
};
use kcore::hvo_preinit::{populate_folio_optimized, PreinitError};
use kcore::mapper::{BlockPolicy, FrameAlloc};
use kcore::pgtable::{Attrs, DescKind, Level};
use kcore::tlb::MmuEvent;

const HEAD: Pfn = Pfn(BASE >> 12);

/// A world whose first 8 sections (1 GiB at BASE) have no vmemmap; populates it preinit.
fn preinit_world() -> (World, kcore::hvo_preinit::PreinitStats) {
    let mut w = World::new_preinit(10, 0..8);
    let frame = w.tables.alloc_table().expect("a frame for page 0");
    let World { mm, mem, tables, mmu, vm, .. } = &mut w;
    let mut g = mm.mmap_write();
    // SAFETY: `map_range` maps the page in the simulated init_mm, which the mirror turns into
    // the window `vm` reads, writable iff asked; the frame is a fresh zeroed table-allocator page.
    let st = unsafe {
        populate_folio_optimized(vm, HEAD, 18, frame, |va, pa, rw| {
            let a = if rw { Attrs::kernel_data() } else { Attrs::kernel_data().read_only() };
            g.map_range(&*mem, tables, mmu, va, pa, PAGE_SIZE, a, BlockPolicy::PagesOnly)
                .map(|_| ())
        })
    }
    .expect("preinit populate");
    drop(g);
    (w, st)
}

#[test]
fn populated_optimized_without_a_block() {
    let (mut w, st) = preinit_world();
    assert_eq!((st.pages_mapped, st.read_only, st.sections), (4096, 4095, 8));
    assert_eq!(st.backing_bytes, PAGE_SIZE, "one frame instead of 16 MiB");
    // The mapper's trace: page entries only in the folio's vmemmap, no block.
    let (lo, hi) = (vmemmap_va(HEAD).0, vmemmap_va(Pfn(HEAD.0 + (1 << 18))).0);
    let ev = w.mmu.take_events();
    let writes: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            MmuEvent::Write { va, level, new, .. } if va.0 >= lo && va.0 < hi => {
                Some((*level, *new))
            }
            _ => None,
        })
        .collect();
    assert!(
        !writes.iter().any(|(l, d)| *l == Level::L2 && d.kind(Level::L2) == DescKind::Block),
        "a 2 MiB block was written for the preinit range"
    );
    assert_eq!(writes.iter().filter(|(l, _)| *l == Level::L3).count(), 4096);
    assert_eq!(w.vmemmap_frames_by_translation(), 2 * 512 + 1, "2 boot blocks + the one frame");
    // Every pfn's answer, read through the aliased window.
    for pfn in HEAD.0..HEAD.0 + (1 << 18) {
        let pfn = Pfn(pfn);
        assert_eq!(page_is_head(&w.vm, pfn), pfn == HEAD, "{pfn}");
        assert_eq!(page_is_tail(&w.vm, pfn), pfn != HEAD, "{pfn}");
        assert_eq!(page_compound_head_pfn(&w.vm, pfn), HEAD, "{pfn}");
    }
}

#[test]
fn hvo_sees_it_optimized() {
    let (mut w, _) = preinit_world();
    w.mmu.take_events();
    // SAFETY: the one handle on the preinit folio (as the pool would own it), made once.
    let f = unsafe { Folio::from_raw(HEAD, 18) };
    assert!(folio_is_optimized(&w.vm, &f));
    let (r, calls) = w.hvo(HvoOptions::default(), None, |h| (h.optimize_folio(&f), h.stats()));
    assert_eq!(r.0, Ok(false), "already optimized");
    assert_eq!((r.1.splits, r.1.entry_writes, r.1.tlbi, calls.calls), (0, 0, 0, 0));
    assert!(w.mmu.take_events().is_empty(), "no entry written, no break");
    // It restores like any optimized folio: 4095 frames.
    let (r, calls) = w.hvo(HvoOptions::default(), None, |h| h.restore_folio(&f));
    assert_eq!(r, Ok(true));
    assert_eq!(calls.allocated, 4095);
    w.mmu.take_events();
    kcore::hugetlb::check_folio(&f, &w.vm).unwrap();
}

#[test]
fn negative_control_blocks_need_splits() {
    let mut w = World::new(9, 0);
    let f = w.folio(kcore::hugetlb::HugePageSize::Size1G, Some(HEAD));
    let (r, _) = w.hvo(HvoOptions::default(), None, |h| (h.optimize_folio(&f), h.stats()));
    assert_eq!(r.0, Ok(true));
    assert_eq!(r.1.splits, 8, "the block-populated vmemmap is split live");
    w.mmu.take_events();
}

#[test]
fn refusals() {
    let mut w = World::new(9, 0);
    let World { vm, .. } = &mut w;
    let mut calls = 0;
    // SAFETY: refused before any call of the closure.
    let r = unsafe {
        populate_folio_optimized(vm, HEAD, 18, PhysAddr(0), |_, _, _| {
            calls += 1;
            Ok::<(), ()>(())
        })
    };
    assert_eq!(r, Err(PreinitError::AlreadyPresent { section: (BASE >> 27) as usize }));
    // SAFETY: as above.
    let r = unsafe {
        populate_folio_optimized(vm, Pfn(HEAD.0 + 512), 9, PhysAddr(0), |_, _, _| Ok::<(), ()>(()))
    };
    assert_eq!(r, Err(PreinitError::NotWholeSections { head: Pfn(HEAD.0 + 512), order: 9 }));
    assert_eq!(calls, 0);
}

/// The pool takes the preinit folio as it is (no `prep_compound`, whose writes would fault on
/// the read-only tails on the target): counted, on the free list, its layout checked. Negative
/// controls: a misaligned head and a range that is not a prepared folio are refused and the
/// pool is unchanged.
#[test]
fn pool_takes_it_without_prep() {
    use kcore::hugetlb::{HugePageSize, HugetlbError};
    let (mut w, _) = preinit_world();
    let before = w.pool.counts(HugePageSize::Size1G);
    let r = w.pool.add_prepared(Pfn(HEAD.0 + 512), HugePageSize::Size1G, &w.vm);
    assert!(matches!(r, Err(HugetlbError::Misaligned { .. })), "{r:?}");
    let not_a_folio = Pfn(HEAD.0 + (1 << 18));
    let r = w.pool.add_prepared(not_a_folio, HugePageSize::Size2M, &w.vm);
    assert!(matches!(r, Err(HugetlbError::Folio(_))), "{r:?}");
    assert_eq!(w.pool.counts(HugePageSize::Size1G), before);
    assert_eq!(w.pool.counts(HugePageSize::Size2M).nr_hugepages, 0);

    w.mmu.take_events();
    w.pool.add_prepared(HEAD, HugePageSize::Size1G, &w.vm).unwrap();
    assert!(w.mmu.take_events().is_empty(), "no entry written");
    let c = w.pool.counts(HugePageSize::Size1G);
    assert_eq!((c.nr_hugepages, c.free_hugepages), (before.nr_hugepages + 1, 1));
    w.pool.check(&w.vm).unwrap();
    let f = w.pool.dequeue(HugePageSize::Size1G, &w.vm).expect("the preinit folio");
    assert_eq!(f.head_pfn(), HEAD);
    assert!(folio_is_optimized(&w.vm, &f));
    w.pool.enqueue(f, &w.vm);
}
