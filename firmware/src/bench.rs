//! Benchmark mode (boot argument `bench`): HVO's cost measured on the live kernel map, printed
//! as `bench:` lines that `cargo xtask bench` turns into a table, JSON and a chart.
//!
//! Under QEMU with `-icount shift=0` the system counter advances one nanosecond per guest
//! instruction, so every figure here is an instruction count (divided by the counter's
//! nanoseconds per tick) that repeats exactly from run to run. On the board the same lines are
//! counter ticks.
//!
//! What is measured, for 2 MiB folios (a batch of [`crate::hvo::BATCH`]) and one 1 GiB folio:
//! - allocate: a folio taken from the buddy allocator, prepared and put on the pool's free list
//!   (refcount 0), then optimized (HVO on) — batched (one `optimize_folios` for the batch) and
//!   one at a time (one `optimize_folio` per folio);
//! - free: restored (HVO on), taken off the free list and given back to the buddy allocator;
//! - HVO's own counts (entry writes, TLBIs, DSBs, ISBs, splits), the frames the buddy
//!   allocator gained across the optimize, and the vmemmap bytes behind the folios' descriptors
//!   before and after (a walk of `init_mm`);
//! - lower bounds: the blocks that must be split (a walk before optimizing), and the primitive
//!   costs (a 4 KiB copy, an entry store, a TLBI, a DSB, an ISB, a frame allocated and freed, a
//!   table page) measured here by executing them, from which the host computes the instructions
//!   the unavoidable work takes.
//!
//! Line format (one measurement per line, `key=value` pairs, ticks of the system counter):
//! `bench: boot ticks=T hz=F`, `bench: prim name=N reps=R ticks=T`,
//! `bench: run size=S hvo=on|off mode=batched|single|cold ...`, `bench: done ok=0|1`.

use crate::drivers::timer;
use crate::hvo::{with_hvo, BATCH};
use crate::memory::{init_mm, BUDDY, HUGETLB, LINEAR, VMEMMAP};
use core::convert::Infallible;
use heapless::Vec;
use kcore::addr::{Pfn, PhysAddr, VirtAddr, PAGE_SIZE};
use kcore::hugetlb::{Folio, HugePageSize, NoHooks};
use kcore::hugetlb_vmemmap::{
    self as hv, alloc_vmemmap_frame, folio_vmemmap_range, free_vmemmap_frame, HvoError, HvoStats,
};
use kcore::hvo_phase::{self, HvoPhase, NR_PHASES};
use kcore::layout::VMEMMAP_START;
use kcore::page::PageState;
use kcore::pagewalk::{walk_page_range_novma, Entry, Interests, PageWalkOps, WalkAction};
use kcore::pgtable::{DescKind, Level};
use kcore::phys::PhysMem;
use kcore::tlb::{HwMmu, MmuOps};

type Folios = Vec<Folio, BATCH>;

/// Why a benchmark step failed.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub enum BenchError {
    /// The buddy allocator had no folio of this size.
    NoFolio(HugePageSize),
    /// HVO refused.
    Hvo(HvoError),
    /// Giving a folio back failed.
    Dissolve,
    /// No frame for a primitive's measurement.
    NoFrame,
}

impl From<HvoError> for BenchError {
    fn from(e: HvoError) -> Self {
        BenchError::Hvo(e)
    }
}

/// Counter ticks, with the ISB the timer read carries.
fn now() -> u64 {
    timer::ticks()
}

// ---------------------------------------------------------------------------------------------
// The vmemmap behind a set of folios
// ---------------------------------------------------------------------------------------------

/// Bytes of distinct frames backing one folio's descriptors: blocks count the part of them
/// in the range; a page counts unless it maps the frame of the folio's page 0 (a remapped tail).
struct Backing {
    bytes: u64,
    page0: Option<PhysAddr>,
}

impl PageWalkOps for Backing {
    type Output = Infallible;
    type Error = Infallible;
    const INTERESTS: Interests = Interests::PMD.union(Interests::PTE);

    fn pmd_entry(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
        if e.kind() == DescKind::Block {
            self.bytes += e.next().0 - e.addr().0;
        }
        Ok(WalkAction::Subtree)
    }
    fn pte_entry(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
        let pa = e.desc().output_address(Level::L3);
        match self.page0 {
            None => {
                self.page0 = Some(pa);
                self.bytes += PAGE_SIZE;
            }
            Some(p0) if p0 != pa => self.bytes += PAGE_SIZE,
            Some(_) => {}
        }
        Ok(WalkAction::Continue)
    }
}

/// Vmemmap bytes backing the descriptors of `folios` (a walk of `init_mm`).
fn backing(folios: &[Folio]) -> u64 {
    let mm = init_mm();
    let g = mm.mmap_read();
    let mut bytes = 0;
    for f in folios {
        let (s, e) = folio_vmemmap_range(f);
        let mut one = Backing { bytes: 0, page0: None };
        let _ = walk_page_range_novma(&g, &LINEAR, s, e, &mut one);
        bytes += one.bytes;
    }
    bytes
}

/// Distinct 2 MiB vmemmap blocks still mapped as blocks over `folios`' descriptors: each must be
/// split, so this is the lower bound on splits.
fn blocks_to_split(folios: &[Folio]) -> u64 {
    let mm = init_mm();
    let g = mm.mmap_read();
    let mut seen: Vec<u64, 64> = Vec::new();
    struct Blocks<'a>(&'a mut Vec<u64, 64>);
    impl PageWalkOps for Blocks<'_> {
        type Output = Infallible;
        type Error = Infallible;
        const INTERESTS: Interests = Interests::PMD;
        fn pmd_entry(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
            if e.kind() == DescKind::Block && !self.0.contains(&e.span_start().0) {
                let _ = self.0.push(e.span_start().0);
            }
            Ok(WalkAction::Continue)
        }
    }
    for f in folios {
        let (s, e) = folio_vmemmap_range(f);
        let _ = walk_page_range_novma(&g, &LINEAR, s, e, &mut Blocks(&mut seen));
    }
    seen.len() as u64
}

// ---------------------------------------------------------------------------------------------
// Allocate and free, HVO off and on
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// One optimize/restore call for the whole batch.
    Batched,
    /// One call per folio.
    Single,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Batched => "batched",
            Mode::Single => "single",
        }
    }
}

/// One measured allocate/free round.
#[derive(Default)]
struct Round {
    folios: u64,
    alloc_ticks: u64,
    free_ticks: u64,
    /// Ticks inside the optimize / restore calls alone.
    opt_ticks: u64,
    res_ticks: u64,
    opt: HvoStats,
    restore: HvoStats,
    /// Ticks per phase inside the optimize / restore calls (`kcore::hvo_phase`).
    opt_phases: [u64; NR_PHASES],
    res_phases: [u64; NR_PHASES],
    /// Buddy free-count gained across the optimize calls (frames freed minus frames and table
    /// pages taken).
    buddy_gain: i64,
    /// Buddy free-count lost across the restore calls.
    restore_cost: i64,
    vm_before: u64,
    vm_after: u64,
    lb_splits: u64,
    wrong: u64,
}

/// Takes a folio from the buddy allocator and prepares it (Linux's
/// `alloc_fresh_hugetlb_folio()`), its head's reference count frozen at 0 as HVO expects.
fn alloc_folio(size: HugePageSize) -> Result<Folio, BenchError> {
    let mut buddy = BUDDY.lock();
    let f = HUGETLB
        .lock()
        .alloc_pool_folio(size, &mut buddy, &VMEMMAP, &mut NoHooks)
        .map_err(|_| BenchError::NoFolio(size))?;
    if !f.head(&VMEMMAP).ref_freeze(1) {
        return Err(BenchError::NoFolio(size));
    }
    Ok(f)
}

/// Gives `folio` (restored already, if it was optimized) back to the buddy allocator.
fn free_folio(folio: Folio) -> Result<(), BenchError> {
    let mut buddy = BUDDY.lock();
    HUGETLB
        .lock()
        .free_pool_folio(folio, &mut buddy, &VMEMMAP, &mut NoHooks)
        .map_err(|_| BenchError::Dissolve)
}

fn free_pages() -> i64 {
    BUDDY.lock().free_pages() as i64
}

fn round(size: HugePageSize, n: usize, hvo: bool, mode: Mode) -> Result<Round, BenchError> {
    let mut r = Round { folios: n as u64, ..Default::default() };
    let mut folios = Folios::new();
    // Allocate.
    let t0 = now();
    match mode {
        Mode::Batched => {
            for _ in 0..n {
                let f = alloc_folio(size)?;
                let _ = folios.push(f);
            }
            if hvo {
                // Measured outside the timing: the lower bound on splits and the bytes before.
                let t = now();
                r.vm_before = backing(&folios);
                r.lb_splits = blocks_to_split(&folios);
                let skip = now() - t;
                let f0 = free_pages();
                let t = now();
                hvo_phase::take();
                let stats = with_hvo(|_| {}, |h| h.optimize_folios(&folios).map(|_| h.stats()))?;
                add(&mut r.opt_phases, hvo_phase::take());
                r.opt_ticks += now() - t;
                r.buddy_gain += free_pages() - f0;
                r.opt += stats;
                r.alloc_ticks = now() - t0 - skip;
            } else {
                r.alloc_ticks = now() - t0;
            }
        }
        Mode::Single => {
            let mut skip = 0;
            for _ in 0..n {
                let f = alloc_folio(size)?;
                if hvo {
                    let t = now();
                    r.vm_before += backing(core::slice::from_ref(&f));
                    r.lb_splits += blocks_to_split(core::slice::from_ref(&f));
                    let f0 = free_pages();
                    skip += now() - t;
                    let t = now();
                    hvo_phase::take();
                    let stats = with_hvo(|_| {}, |h| h.optimize_folio(&f).map(|_| h.stats()))?;
                    add(&mut r.opt_phases, hvo_phase::take());
                    r.opt_ticks += now() - t;
                    let t = now();
                    r.buddy_gain += free_pages() - f0;
                    r.opt += stats;
                    skip += now() - t;
                }
                let _ = folios.push(f);
            }
            r.alloc_ticks = now() - t0 - skip;
        }
    }
    if hvo {
        r.vm_after = backing(&folios);
        r.wrong = folios.iter().map(crate::hvo::verify_heads).sum();
    } else {
        r.vm_before = backing(&folios);
        r.vm_after = r.vm_before;
    }
    // Free.
    let t0 = now();
    match mode {
        Mode::Batched => {
            if hvo {
                let f0 = free_pages();
                let t = now();
                hvo_phase::take();
                let stats = with_hvo(|_| {}, |h| h.restore_folios(&folios).map(|_| h.stats()))?;
                add(&mut r.res_phases, hvo_phase::take());
                r.res_ticks += now() - t;
                r.restore_cost += f0 - free_pages();
                r.restore += stats;
            }
            while let Some(f) = folios.pop() {
                free_folio(f)?;
            }
        }
        Mode::Single => {
            while let Some(f) = folios.pop() {
                if hvo {
                    let t = now();
                    hvo_phase::take();
                    let stats = with_hvo(|_| {}, |h| h.restore_folio(&f).map(|_| h.stats()))?;
                    add(&mut r.res_phases, hvo_phase::take());
                    r.res_ticks += now() - t;
                    r.restore += stats;
                }
                free_folio(f)?;
            }
        }
    }
    r.free_ticks = now() - t0;
    Ok(r)
}

fn add(acc: &mut [u64; NR_PHASES], t: [u64; NR_PHASES]) {
    for (a, t) in acc.iter_mut().zip(t) {
        *a += t;
    }
}

fn report_phases(size: HugePageSize, label: &str, op: &str, p: &[u64; NR_PHASES]) {
    let t = |ph: HvoPhase| p[ph as usize];
    crate::info!(
        "bench: phases size={} mode={} op={} check={} split={} remap={} copy={} tlb={} alloc={} free={} grace={}",
        size.name(),
        label,
        op,
        t(HvoPhase::Check),
        t(HvoPhase::Split),
        t(HvoPhase::Remap),
        t(HvoPhase::Copy),
        t(HvoPhase::Tlb),
        t(HvoPhase::Alloc),
        t(HvoPhase::Free),
        t(HvoPhase::Grace)
    );
}

fn report(size: HugePageSize, hvo: bool, label: &str, r: &Round) {
    if hvo {
        report_phases(size, label, "optimize", &r.opt_phases);
        report_phases(size, label, "restore", &r.res_phases);
    }
    let (o, s) = (&r.opt, &r.restore);
    crate::info!(
        "bench: run size={} hvo={} mode={} folios={} alloc_ticks={} free_ticks={} opt_ticks={} res_ticks={} splits={} lb_splits={} tables={} remapped={} heads={} frames_alloc={} frames_freed={} buddy_gain={} opt_writes={} opt_tlbi={} opt_flush_all={} opt_dsb={} opt_isb={} res_writes={} res_tlbi={} res_flush_all={} res_dsb={} res_isb={} restored={} res_frames={} restore_cost={} vm_before={} vm_after={} wrong={}",
        size.name(),
        if hvo { "on" } else { "off" },
        label,
        r.folios,
        r.alloc_ticks,
        r.free_ticks,
        r.opt_ticks,
        r.res_ticks,
        o.splits,
        r.lb_splits,
        o.tables_allocated,
        o.ptes_remapped,
        o.head_pages_replaced,
        o.frames_allocated,
        o.frames_freed,
        r.buddy_gain,
        o.entry_writes,
        o.tlbi,
        o.tlbi_flush_all,
        o.dsb,
        o.isb,
        s.entry_writes,
        s.tlbi,
        s.tlbi_flush_all,
        s.dsb,
        s.isb,
        s.ptes_restored,
        s.frames_allocated,
        r.restore_cost,
        r.vm_before,
        r.vm_after,
        r.wrong
    );
}

// ---------------------------------------------------------------------------------------------
// Primitive costs for the lower bounds
// ---------------------------------------------------------------------------------------------

fn prim(name: &str, reps: u64, ticks: u64) {
    crate::info!("bench: prim name={} reps={} ticks={}", name, reps, ticks);
}

/// Measures the operations the lower bound is made of by executing each `reps` times.
fn primitives() -> Result<(), BenchError> {
    const REPS: u64 = 512;
    let (a, b) = {
        let mut buddy = BUDDY.lock();
        let a = alloc_vmemmap_frame(&mut buddy, &VMEMMAP).map_err(|_| BenchError::NoFrame)?;
        let b = alloc_vmemmap_frame(&mut buddy, &VMEMMAP).map_err(|_| BenchError::NoFrame)?;
        (a, b)
    };
    let (pa, pb) = (LINEAR.ptr(a), LINEAR.ptr(b));
    // A 4 KiB copy (memcpy).
    let t = now();
    for _ in 0..64 {
        // SAFETY: two distinct frames we own, reached through the linear map.
        unsafe { core::ptr::copy_nonoverlapping(pa, pb, PAGE_SIZE as usize) };
    }
    prim("copy4k", 64, now() - t);
    // The same copy as 64-bit words; the lower bound takes the cheapest of the three.
    let (s, d) = (pa.cast::<u64>(), pb.cast::<u64>());
    let t = now();
    for _ in 0..64 {
        for i in 0..(PAGE_SIZE / 8) as usize {
            // SAFETY: `i < 512` words of two distinct frames we own.
            unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        }
    }
    prim("copy4k_words", 64, now() - t);
    // The copy HVO uses (`copy_page`: 64 bytes per iteration with SIMD registers).
    let t = now();
    for _ in 0..64 {
        // SAFETY: two distinct frames we own, reached through the linear map (page-aligned).
        unsafe { hv::copy_page(pa.cast::<u8>(), pb.cast::<u8>()) };
    }
    prim("copy4k_simd", 64, now() - t);
    // An entry store (to a scratch frame standing for a table page).
    let words = pb.cast::<u64>();
    let t = now();
    for i in 0..REPS as usize {
        // SAFETY: `i < 512` words of a frame we own.
        unsafe { core::ptr::write_volatile(words.add(i), i as u64) };
    }
    prim("store", REPS, now() - t);
    // TLBI by VA, on an address nothing maps (below the vmemmap: no live translation lost).
    // Through the same backend HVO uses (it counts each one).
    let mut mmu = HwMmu::new();
    let va = VirtAddr(VMEMMAP_START - (1 << 30));
    let t = now();
    for _ in 0..REPS {
        mmu.tlbi_vaae1is(va);
    }
    prim("tlbi", REPS, now() - t);
    mmu.dsb_ish();
    let t = now();
    for _ in 0..REPS {
        mmu.dsb_ish();
    }
    prim("dsb", REPS, now() - t);
    let t = now();
    for _ in 0..REPS {
        mmu.isb();
    }
    prim("isb", REPS, now() - t);
    // Frames from and to the buddy allocator, as HVO takes and gives them.
    let mut held: Vec<PhysAddr, 64> = Vec::new();
    let mut buddy = BUDDY.lock();
    let t = now();
    while !held.is_full() {
        match alloc_vmemmap_frame(&mut buddy, &VMEMMAP) {
            Ok(p) => {
                let _ = held.push(p);
            }
            Err(_) => break,
        }
    }
    prim("alloc_frame", held.len() as u64, now() - t);
    let n = held.len() as u64;
    let t = now();
    for p in held {
        let _ = free_vmemmap_frame(&mut buddy, &VMEMMAP, p);
    }
    prim("free_frame", n, now() - t);
    // 64 contiguous frames given back as one run (what HVO does with a folio's old frames).
    if let Ok(first) = buddy.alloc(&VMEMMAP, 6) {
        for i in 0..64 {
            VMEMMAP.page(Pfn(first.0 + i)).set_state(PageState::Vmemmap);
        }
        let t = now();
        let ok = hv::free_vmemmap_frames(&mut buddy, &VMEMMAP, first.addr(), 64);
        prim("free_run", ok, now() - t);
    }
    // A table page (zeroed) for a split, and its 512 entries.
    let t = now();
    let mut pages: Vec<PhysAddr, 16> = Vec::new();
    while !pages.is_full() {
        match crate::memory::alloc_table_page(&mut buddy) {
            Some(p) => {
                let _ = pages.push(p);
            }
            None => break,
        }
    }
    let n = pages.len() as u64;
    prim("table_alloc", n, now() - t);
    for p in pages {
        crate::memory::free_table_page(&mut buddy, p);
    }
    let _ = free_vmemmap_frame(&mut buddy, &VMEMMAP, a);
    let _ = free_vmemmap_frame(&mut buddy, &VMEMMAP, b);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

fn size_runs(size: HugePageSize, n: usize) -> Result<u64, BenchError> {
    let mut wrong = 0;
    for (hvo, mode, label) in [
        (false, Mode::Batched, "batched"),
        (false, Mode::Single, "single"),
        // The first optimize splits the vmemmap blocks; the split tables stay (as in Linux), so
        // the runs after it are the steady state.
        (true, Mode::Batched, "cold"),
        (true, Mode::Batched, "batched"),
        (true, Mode::Single, "single"),
    ] {
        let r = round(size, n, hvo, mode)?;
        debug_assert_eq!(mode.name(), if label == "cold" { "batched" } else { label });
        report(size, hvo, label, &r);
        wrong += r.wrong;
    }
    Ok(wrong)
}

/// Runs the benchmark; `true` if every step worked and every pfn answered right. With
/// `hvo_bbm=` on the command line (any strategy), only the four-core part runs
/// ([`crate::bench_smp`], every strategy): it needs the vCPUs to interleave finely, which QEMU's
/// `-icount` round-robin does not do, so `cargo xtask bench` boots it separately without
/// `-icount`.
pub fn run() -> bool {
    let boot = now();
    crate::info!("bench: boot ticks={} hz={}", boot, timer::frequency());
    if crate::bootstate::cmdline().hvo_bbm.is_some() {
        let was = hv::hvo_enabled();
        hv::set_hvo_enabled(true);
        let ok = crate::bench_smp::run();
        hv::set_hvo_enabled(was);
        crate::info!("bench: done ok={}", u8::from(ok));
        return ok;
    }
    hvo_phase::set_clock(Some(timer::ticks));
    let was = hv::hvo_enabled();
    hv::set_hvo_enabled(true);
    let mut ok = true;
    if let Err(e) = primitives() {
        crate::error!("bench: primitives: {:?}", e);
        ok = false;
    }
    for (size, n) in [(HugePageSize::Size2M, BATCH), (HugePageSize::Size1G, 1)] {
        match size_runs(size, n) {
            Ok(0) => {}
            Ok(wrong) => {
                crate::error!("bench: {} pfns answered wrongly after optimizing", wrong);
                ok = false;
            }
            Err(e) => {
                crate::error!("bench: size {}: {:?}", size.name(), e);
                ok = false;
            }
        }
    }
    ok &= crate::bench_demote::run();
    hv::set_hvo_enabled(was);
    hvo_phase::set_clock(None);
    crate::info!("bench: done ok={}", u8::from(ok));
    ok
}
