//! The demote benchmark (issue 13 item 3): one optimized 1 GiB folio demoted into 512 optimized
//! 2 MiB folios, directly (`DemoteMode::Direct`: 511 new pages 0, one break window) and the way
//! Linux does it (`DemoteMode::RestoreThenSplit`: restore the 16 MiB of descriptors, rewrite,
//! optimize the parts in batches). Run by `bench` (`cargo xtask bench`, under `-icount shift=0`:
//! one instruction per ns of virtual time), it prints one line per mode:
//!
//! `bench: demote size=1G mode=direct|restore-then-split ticks=T instrs=I parts=512
//! optimized=512 frames_alloc=A frames_freed=F buddy_delta=D remapped=R restored=S tlbi=T
//! flush_all=N dsb=D writes=W windows=1 wrong=0`
//!
//! and `bench: demote_ratio restore_over_direct_x100=N`. Every figure is measured by the code
//! doing the work (ticks from the generic timer around the call, frames from the buddy
//! allocator's free count, counts from kcore's statistics); setting up (allocating and
//! optimizing the 1 GiB folio) and cleaning up (dissolving the parts) are outside the timing.

use crate::demote::demote_one;
use crate::drivers::timer;
use crate::hvo;
use crate::memory::{BUDDY, HUGETLB, VMEMMAP};
use kcore::hugetlb::{HugePageSize, NoHooks};
use kcore::hugetlb_demote::DemoteMode;

/// Puts one optimized 1 GiB folio on the pool's free list. `false` if it cannot.
#[inline(never)]
fn setup() -> bool {
    let f = {
        let mut buddy = BUDDY.lock();
        match HUGETLB.lock().alloc_pool_folio(
            HugePageSize::Size1G,
            &mut buddy,
            &VMEMMAP,
            &mut NoHooks,
        ) {
            Ok(f) => f,
            Err(e) => {
                crate::error!("bench: demote: no 1G folio: {:?}", e);
                return false;
            }
        }
    };
    // HVO works on frozen folios: the new folio's one reference is ours.
    f.head(&VMEMMAP).ref_freeze(1);
    let r = hvo::with_hvo(|_| {}, |h| h.optimize_folios(core::slice::from_ref(&f)));
    HUGETLB.lock().enqueue(f, &VMEMMAP);
    match r {
        Ok(1) => true,
        other => {
            crate::error!("bench: demote: optimizing the 1G folio: {:?}", other);
            false
        }
    }
}

/// Batches [`cleanup`] holds at once: the 512 parts of one demote.
const PART_BATCHES: usize = 8;

/// Dissolves every free 2 MiB folio (the parts): all restored first, while they still occupy
/// the whole GiB (so the restore's frames come from elsewhere), then all freed, so that the
/// GiB merges back into one free block for the next run. Not inlined: its 8 KiB of handles stay
/// out of the caller's frame (the boot stack is 64 KiB).
#[inline(never)]
fn cleanup() -> bool {
    let mut all: heapless::Vec<hvo::Batch, PART_BATCHES> = heapless::Vec::new();
    while !all.is_full() {
        let b = hvo::take_from_pool(HugePageSize::Size2M, hvo::BATCH);
        if b.is_empty() {
            break;
        }
        let _ = all.push(b);
    }
    let mut ok = true;
    for b in all.iter() {
        if let Err(e) = hvo::with_hvo(|_| {}, |h| h.restore_folios(b)) {
            crate::error!("bench: demote: restoring the parts: {:?}", e);
            ok = false;
        }
    }
    for b in all {
        for f in b {
            ok &= hvo::dissolve(f).is_ok();
        }
    }
    ok
}

/// Runs both modes; `true` if both worked and every pfn answered right. Not inlined into
/// `bench::run` (the frames of everything below would add up on the 64 KiB boot stack).
#[inline(never)]
pub fn run() -> bool {
    let mut ok = true;
    let mut ticks = [0u64; 2];
    for (i, (mode, name)) in
        [(DemoteMode::Direct, "direct"), (DemoteMode::RestoreThenSplit, "restore-then-split")]
            .into_iter()
            .enumerate()
    {
        if !setup() {
            return false;
        }
        match demote_one(HugePageSize::Size1G, mode) {
            Ok(r) => {
                let s = r.stats;
                ticks[i] = r.ticks;
                crate::info!(
                    "bench: demote size=1G mode={} ticks={} instrs={} parts={} optimized={} frames_alloc={} frames_freed={} buddy_delta={} remapped={} restored={} tlbi={} flush_all={} dsb={} writes={} windows={} wrong={}",
                    name,
                    r.ticks,
                    timer::ticks_to_ns(r.ticks),
                    s.parts,
                    s.parts_optimized,
                    s.hvo.frames_allocated,
                    s.hvo.frames_freed,
                    r.buddy_delta,
                    s.hvo.ptes_remapped,
                    s.hvo.ptes_restored,
                    s.hvo.tlbi,
                    s.hvo.tlbi_flush_all,
                    s.hvo.dsb,
                    s.hvo.entry_writes,
                    s.windows,
                    r.wrong
                );
                ok &= r.wrong == 0 && s.parts_optimized == s.parts;
            }
            Err(e) => {
                crate::error!("bench: demote {}: {:?}", name, e);
                ok = false;
            }
        }
        ok &= cleanup();
    }
    if let Some(ratio) = (ticks[1] * 100).checked_div(ticks[0]) {
        crate::info!("bench: demote_ratio restore_over_direct_x100={}", ratio);
    }
    ok
}
