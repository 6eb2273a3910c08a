//! Benchmark of the booted HVO tail design (boot argument `bench=tails`): the seed design (fake
//! heads, page 0 copied) against the shared tail pages (no fake heads, page 0 left in place).
//! The design is fixed at boot, so a comparison takes two boots, one per `hvo_tails=` value:
//! `cargo xtask run -- bench=tails hvo_tails=seed` and `... hvo_tails=shared` (under `cargo
//! xtask bench`, with `-icount shift=0`, the figures are instruction counts).
//!
//! Printed, one `bench: tails design=D ...` line per measurement:
//! - `lookup`: compound-head lookups (`page_compound_head_pfn`) over every pfn of an optimized
//!   2 MiB batch, repeated: ticks for all of them, the lookups, and instructions x100 per lookup
//!   (ticks x nanoseconds per tick x 100 / lookups; under `-icount shift=0` one instruction is
//!   one nanosecond);
//! - `optimize` / `restore` of a 2 MiB batch ([`crate::hvo::BATCH`] folios, batched calls) and of
//!   one 1 GiB folio: ticks per folio, entries remapped / restored, TLBIs and entry writes per
//!   folio (HVO's own counts), frames the buddy allocator gained (optimize) or lost (restore),
//!   vmemmap frames kept per folio (the folio's vmemmap pages minus the buddy's gain, per
//!   folio, x100), and shared tail pages allocated by the call.

use crate::drivers::timer;
use crate::hvo::{with_hvo, BATCH};
use crate::memory::{BUDDY, HUGETLB, VMEMMAP};
use heapless::Vec;
use kcore::hugetlb::{Folio, HugePageSize, NoHooks};
use kcore::hugetlb_vmemmap::{self as hv, page_compound_head_pfn, HvoError, HvoStats};
use kcore::hvo_tails::tail_design;

/// Why a step failed.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
enum TailsBenchError {
    NoFolio(HugePageSize),
    Hvo(HvoError),
    Dissolve,
    WrongHead { pfn: u64 },
}

impl From<HvoError> for TailsBenchError {
    fn from(e: HvoError) -> Self {
        TailsBenchError::Hvo(e)
    }
}

fn alloc_folio(size: HugePageSize) -> Result<Folio, TailsBenchError> {
    let mut buddy = BUDDY.lock();
    let f = HUGETLB
        .lock()
        .alloc_pool_folio(size, &mut buddy, &VMEMMAP, &mut NoHooks)
        .map_err(|_| TailsBenchError::NoFolio(size))?;
    if !f.head(&VMEMMAP).ref_freeze(1) {
        return Err(TailsBenchError::NoFolio(size));
    }
    Ok(f)
}

fn free_folio(folio: Folio) -> Result<(), TailsBenchError> {
    let mut buddy = BUDDY.lock();
    HUGETLB
        .lock()
        .free_pool_folio(folio, &mut buddy, &VMEMMAP, &mut NoHooks)
        .map_err(|_| TailsBenchError::Dissolve)
}

fn free_pages() -> i64 {
    BUDDY.lock().free_pages() as i64
}

/// Nanoseconds per counter tick x 100 (1600 at QEMU's 62.5 MHz).
fn ns_per_tick_x100() -> u64 {
    100_000_000_000 / timer::frequency().max(1)
}

/// Lookups over every `stride`-th pfn of `folios` (1: all; 64: the first descriptor of each
/// vmemmap page, the head and in the seed design the fake heads), `reps` times; checks every
/// answer first.
fn lookups(folios: &[Folio], reps: u64, stride: u64) -> Result<(u64, u64), TailsBenchError> {
    for f in folios {
        let head = f.head_pfn();
        for i in 0..f.nr_pages() {
            let pfn = kcore::addr::Pfn(head.0 + i);
            if page_compound_head_pfn(&VMEMMAP, pfn) != head {
                return Err(TailsBenchError::WrongHead { pfn: pfn.0 });
            }
        }
    }
    let mut n = 0u64;
    let mut acc = 0u64;
    let t0 = timer::ticks();
    for _ in 0..reps {
        for f in folios {
            let head = f.head_pfn().0;
            for i in (0..f.nr_pages()).step_by(stride as usize) {
                let pfn = kcore::addr::Pfn(core::hint::black_box(head + i));
                acc = acc.wrapping_add(page_compound_head_pfn(&VMEMMAP, pfn).0);
                n += 1;
            }
        }
    }
    let ticks = timer::ticks() - t0;
    core::hint::black_box(acc);
    Ok((ticks, n))
}

fn report_op(op: &str, size: HugePageSize, n: u64, ticks: u64, s: &HvoStats, buddy: i64) {
    let pages = (1u64 << size.order()) / 64; // vmemmap pages per folio
    let per = |v: u64| v.checked_div(n).unwrap_or(0);
    let kept_x100 = if op == "optimize" {
        (pages as i64 * 100 - buddy * 100 / n.max(1) as i64).max(0) as u64
    } else {
        0
    };
    crate::info!(
        "bench: tails design={} op={} size={} folios={} ticks_per_folio={} insn_per_folio={} remapped_per_folio={} restored_per_folio={} tlbi_per_folio={} writes_per_folio={} head_copies={} buddy_delta={} kept_frames_per_folio_x100={} shared_pages_allocated={}",
        tail_design().name(),
        op,
        size.name(),
        n,
        per(ticks),
        per(ticks) * ns_per_tick_x100() / 100,
        per(s.ptes_remapped),
        per(s.ptes_restored),
        per(s.tlbi),
        per(s.entry_writes),
        s.head_pages_replaced,
        buddy,
        kept_x100,
        s.shared_tail_pages
    );
}

/// Optimize, look up, restore, free: one size.
fn size_run(size: HugePageSize, count: usize) -> Result<(), TailsBenchError> {
    let mut folios: Vec<Folio, BATCH> = Vec::new();
    for _ in 0..count {
        let _ = folios.push(alloc_folio(size)?);
    }
    let f0 = free_pages();
    let t = timer::ticks();
    let opt = with_hvo(|_| {}, |h| h.optimize_folios(&folios).map(|_| h.stats()));
    let ticks = timer::ticks() - t;
    let opt = opt?;
    report_op("optimize", size, count as u64, ticks, &opt, free_pages() - f0);
    if size == HugePageSize::Size2M {
        for (which, stride, reps) in [("all", 1, 4), ("page_starts", 64, 256)] {
            let (ticks, n) = lookups(&folios, reps, stride)?;
            crate::info!(
                "bench: tails design={} op=lookup pfns={} size={} lookups={} ticks={} insn_x100_per_lookup={}",
                tail_design().name(),
                which,
                size.name(),
                n,
                ticks,
                (ticks * ns_per_tick_x100()).checked_div(n).unwrap_or(0)
            );
        }
    } else {
        lookups(&folios, 0, 1)?;
    }
    let f1 = free_pages();
    let t = timer::ticks();
    let res = with_hvo(|_| {}, |h| h.restore_folios(&folios).map(|_| h.stats()));
    let ticks = timer::ticks() - t;
    let res = res?;
    report_op("restore", size, count as u64, ticks, &res, free_pages() - f1);
    for f in folios {
        free_folio(f)?;
    }
    Ok(())
}

/// Runs the tail-design benchmark for the booted design; `true` if every step worked and every
/// pfn answered right.
pub fn run() -> bool {
    crate::info!(
        "bench: tails design={} hz={} ns_per_tick_x100={}",
        tail_design().name(),
        timer::frequency(),
        ns_per_tick_x100()
    );
    let was = hv::hvo_enabled();
    hv::set_hvo_enabled(true);
    let mut ok = true;
    // Warm-up: the first optimize of a size splits its vmemmap blocks (and, shared design,
    // allocates the size's tail page); measured separately from the steady state.
    for (size, n) in [(HugePageSize::Size2M, BATCH), (HugePageSize::Size1G, 1)] {
        for round in ["cold", "steady"] {
            crate::info!(
                "bench: tails design={} round={} size={}",
                tail_design().name(),
                round,
                size.name()
            );
            if let Err(e) = size_run(size, n) {
                crate::error!("bench: tails {}: {:?}", size.name(), e);
                ok = false;
            }
        }
    }
    hv::set_hvo_enabled(was);
    crate::info!("bench: tails design={} done ok={}", tail_design().name(), u8::from(ok));
    ok
}
