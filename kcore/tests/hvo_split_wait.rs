//! A walk that meets another CPU's split in progress (issue 9, found by the four-core
//! concurrent-split test: `NotMapped { level: L2 }` once in ~10 runs).
//!
//! CPU B breaks the 2 MiB vmemmap block (its level-2 entry invalid) under `page_table_lock`
//! while CPU A's HVO walk reaches it. The vmemmap is always mapped, so A takes the hole for a
//! split in progress: it waits for the lock, which B holds until the table is published, and
//! walks on from the block. Here B is a thread that invalidates the entry with the lock held,
//! lets A start, and puts the entry back after a while before unlocking. The control: B puts
//! nothing back (a real hole): A reports `NotMapped`, as every walk did before it learnt to
//! wait, after one wait instead of looping.

mod hvo_common;

use hvo_common::*;
use kcore::addr::{Pfn, PhysAddr, VirtAddr, PMD_SIZE};
use kcore::hugetlb::HugePageSize;
use kcore::hugetlb_vmemmap::{BuddyFrames, Hvo, HvoError, HvoOptions};
use kcore::pgtable::{Descriptor, Level};
use kcore::phys::PhysMem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The slot (physical address) of the level-2 entry mapping `va`, and its value.
fn l2_slot(w: &World, va: VirtAddr) -> (PhysAddr, u64) {
    let block = va.align_down(PMD_SIZE);
    let (first, _, _) = w.translate(block).expect("the block is mapped");
    w.table_snapshot()
        .into_iter()
        .find(|(_, _, lvl, d)| {
            *lvl == Level::L2 as u8
                && Descriptor(*d).decode_leaf(Level::L2).is_some_and(|(pa, _)| pa == first)
        })
        .map(|(t, i, _, d)| (PhysAddr(t + i as u64 * 8), d))
        .expect("a level-2 block maps the folio's descriptors")
}

fn run(put_back: bool) -> (Result<bool, HvoError>, u64) {
    let mut w = World::new(2, 0);
    let x = w.folio(HugePageSize::Size2M, Some(Pfn(BASE >> 12)));
    let (slot, block) = l2_slot(&w, w.folio_va(&x).0);
    let ptr = w.mem.ptr(slot).cast::<u64>() as usize;
    let started = AtomicBool::new(false);
    let (r, stats) = std::thread::scope(|s| {
        let mm = &w.mm;
        let started = &started;
        let b = s.spawn(move || {
            let _ptl = mm.page_table_lock();
            // SAFETY: the level-2 entry's slot in the simulated RAM, which lives for the test.
            unsafe { core::ptr::write_volatile(ptr as *mut u64, 0) };
            started.store(true, Ordering::Release);
            std::thread::sleep(Duration::from_millis(50));
            if put_back {
                // SAFETY: as above.
                unsafe { core::ptr::write_volatile(ptr as *mut u64, block) };
            }
        });
        while !started.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        // CPU A: the world's fields borrowed apart (B holds `mm` too).
        let guard = mm.mmap_read();
        let mut frames = BuddyFrames::new(&mut w.buddy, &w.vm);
        // SAFETY: as `World::hvo`: the simulated RAM, the mirror of this init_mm, and x is the
        // test's folio; B only writes the level-2 entry, under the lock A's walk waits for.
        let mut h =
            unsafe { Hvo::new(&guard, &w.mem, &mut w.mmu, &w.vm, &mut frames, &mut w.tables) }
                .with_options(HvoOptions::default());
        let out = (h.optimize_folio(&x), h.stats());
        b.join().unwrap();
        out
    });
    (r, stats.split_waits)
}

#[test]
fn walk_waits_for_a_split_in_progress() {
    let (r, waits) = run(true);
    assert_eq!(r, Ok(true), "optimized once the block was back");
    assert_eq!(waits, 1);
}

#[test]
fn a_real_hole_is_reported_after_one_wait() {
    let (r, waits) = run(false);
    // What the walk answered before it learnt to wait, and still answers for a real hole (a
    // failed operation reports no figures, so the wait is not counted here).
    assert!(matches!(r, Err(HvoError::NotMapped { level: Level::L2, .. })), "{r:?}");
    let _ = waits;
}
