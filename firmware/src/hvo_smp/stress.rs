//! The four-core HVO stress test: readers of both kinds on cores 1-3 while core 0 loops
//! optimize, verify every pfn, restore, under one break-before-make strategy; and the
//! concurrent-split run (two cores doing HVO at once on folios whose descriptors share one
//! vmemmap block).
//!
//! Every figure comes from the code doing the work: reader operations counted by the readers,
//! faults by the fault hook, held ticks by the rendezvous, TLBIs by the MMU backend, frames by
//! the buddy allocator's free count. The result line:
//! `result: smp strategy=S cycles=N reads=R gets=G faults_waited=F wrong=W unexpected_faults=U
//! leaked=L held_ticks=H ticks_per_cycle=T`.

use super::strategy::SmpSync;
use super::{fault_wait, grace, pause, readers, CounterValues, HvoBbm, COUNTERS};
use crate::drivers::timer;
use crate::hvo::{
    self, freeze, unfreeze, verify_heads, with_hvo, with_hvo_in, Batch, HvoSetup, OWNER_REFS,
};
use crate::memory::{init_mm, BUDDY, LINEAR, VMEMMAP};
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use heapless::Vec;
use kcore::addr::{Pfn, VirtAddr, PMD_SIZE};
use kcore::hugetlb::{Folio, HugePageSize};
use kcore::hugetlb_vmemmap::{self as hv, HvoError, HvoOptions, HvoStats};
use kcore::layout::MAX_CPUS;
use kcore::pgtable::Level;

/// What a stress run does.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub struct StressConfig {
    /// The strategy.
    pub strategy: HvoBbm,
    /// Optimize / verify / restore cycles.
    pub cycles: u64,
    /// Freeze each folio's reference count at 0 around HVO (Linux). `false` only for the
    /// negative control showing what the freeze prevents.
    pub freeze: bool,
    /// Test delays: ticks before each break, ticks inside each (see `hvo::BreakDelay`).
    pub delay: (u64, u64),
    /// 2 MiB folios taken from the pool (at most).
    pub max_2m: usize,
    /// 1 GiB folios taken from the pool (at most).
    pub max_1g: usize,
    /// Readers do only speculative gets (the freeze control).
    pub gets_only: bool,
    /// Every reader holds [`readers::READER_LOCK`] during its operations (otherwise only the
    /// highest reader core does), so that every fault-wait wait is taken with a lock held.
    pub all_hold_lock: bool,
    /// Top the pool's 2 MiB folios up to `max_2m` with fresh ones from the buddy allocator
    /// (on-target tests, which also run without a boot pool).
    pub top_up: bool,
    /// Readers hold each speculative reference for a while, and HVO waits before each break
    /// until a reader holds one taken after the wait began (the freeze control's handshake:
    /// the reference straddles the break for certain rather than by the host's scheduling).
    pub hold_refs: bool,
}

impl StressConfig {
    /// `cycles` under `strategy` with Linux's behaviour and the whole pool.
    pub fn new(strategy: HvoBbm, cycles: u64) -> Self {
        StressConfig {
            strategy,
            cycles,
            freeze: true,
            delay: (0, 0),
            max_2m: hvo::BATCH,
            max_1g: 1,
            gets_only: false,
            all_hold_lock: false,
            top_up: false,
            hold_refs: false,
        }
    }
}

/// Why a stress run could not run (its figures are in [`StressResult`] otherwise).
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub enum StressError {
    /// The pool has no folio (boot with `hugepagesz=2M hugepages=N`).
    NoFolios,
    /// No other core is online to read.
    NoReaders,
    /// An HVO operation failed.
    Hvo(HvoError),
    /// The concurrent-split run found no unsplit vmemmap block with two free 2 MiB folios.
    NoUnsplitBlock,
}

/// What a run measured.
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub struct StressResult {
    /// Cycles run.
    pub cycles: u64,
    /// Reader cores.
    pub readers: u32,
    /// 2 MiB and 1 GiB folios under test.
    pub folios: (u32, u32),
    /// Descriptors read by the walkers.
    pub reads: u64,
    /// Speculative references taken.
    pub gets: u64,
    /// Speculative gets refused (count frozen at zero).
    pub gets_refused: u64,
    /// Reader operations.
    pub ops: u64,
    /// Wrong answers: readers' and core 0's every-pfn verification.
    pub wrong: u64,
    /// Of `wrong`, from core 0's verification.
    pub wrong_verify: u64,
    /// Frames lost: buddy free-count change not explained by page tables HVO kept, plus frees
    /// the allocator refused.
    pub leaked: i64,
    /// Folios whose head reference count was not the owner's at the end (lost or extra
    /// references).
    pub bad_refcounts: u32,
    /// Timer ticks core 0 spent per cycle.
    pub ticks_per_cycle: u64,
    /// Of those, ticks in the HVO operations (optimize + restore, strategy included), without
    /// the every-pfn verification.
    pub hvo_ticks_per_cycle: u64,
    /// HVO's counts (TLBIs, entry writes, ...).
    pub hvo: HvoStats,
    /// The strategies' counts.
    pub counters: CounterValues,
    /// Grace periods waited, and their ticks.
    pub grace: (u64, u64),
}

impl StressResult {
    /// Did the run show no failure (what every safe strategy must do)?
    pub fn clean(&self) -> bool {
        self.wrong == 0
            && self.leaked == 0
            && self.bad_refcounts == 0
            && self.counters.unexpected_faults == 0
            && self.counters.refused_faults == 0
            && self.counters.pause_timeouts == 0
    }
}

/// Optimizes (`optimize = true`) or restores `folios` under `sync`, frozen as configured.
fn hvo_op(
    folios: &[Folio],
    optimize: bool,
    strategy: HvoBbm,
    cfg_freeze: bool,
    delay: (u64, u64),
    gate: Option<fn(VirtAddr)>,
) -> Result<HvoStats, HvoError> {
    hvo_op_hooked(folios, optimize, strategy, cfg_freeze, delay, gate, None)
}

/// [`hvo_op`] with a split race hook (see [`HvoSetup::race_hook`]).
fn hvo_op_hooked(
    folios: &[Folio],
    optimize: bool,
    strategy: HvoBbm,
    cfg_freeze: bool,
    delay: (u64, u64),
    gate: Option<fn(VirtAddr)>,
    race_hook: Option<&mut dyn FnMut(VirtAddr)>,
) -> Result<HvoStats, HvoError> {
    if cfg_freeze {
        freeze(folios);
    }
    let mut sync = SmpSync::new(strategy);
    let options = HvoOptions { require_frozen: cfg_freeze, ..HvoOptions::default() };
    let r = with_hvo_in(
        HvoSetup {
            sync: Some(&mut sync),
            options: Some(options),
            delay,
            gate,
            // A shorter-lived trait object (object lifetimes may shrink behind `&mut`).
            race_hook: race_hook.map(|h| h as &mut dyn FnMut(VirtAddr)),
        },
        |_| {},
        |h| {
            if optimize { h.optimize_folios(folios) } else { h.restore_folios(folios) }
                .map(|_| h.stats())
        },
    );
    if cfg_freeze {
        unfreeze(folios);
    }
    r
}

/// The reader cores: every online core but this one and those in `busy`.
fn reader_cores(busy: u8) -> u8 {
    crate::smp::online_mask() & !(1 << crate::percpu::this_cpu().id) & !busy
}

/// Starts the readers on `mask` and waits until they run. Returns how many.
fn start_readers(mask: u8, arg_for: impl Fn(usize) -> u64) -> u32 {
    let mut n = 0;
    for core in 0..MAX_CPUS {
        if mask & (1 << core) != 0 {
            match crate::smp::launch(core, readers::job, arg_for(core)) {
                Ok(()) => n += 1,
                Err(e) => crate::error!("stress: core {} cannot run a reader: {:?}", core, e),
            }
        }
    }
    let t0 = timer::ticks();
    while readers::running() < n && timer::ticks() - t0 < timer::frequency() {
        core::hint::spin_loop();
    }
    n
}

fn stop_readers(mask: u8) {
    readers::stop();
    for core in 0..MAX_CPUS {
        if mask & (1 << core) != 0 {
            crate::smp::wait_idle(core);
        }
    }
}

fn arm(strategy: HvoBbm, reader_mask: u8) {
    COUNTERS.reset();
    grace::reset_counters();
    pause::install();
    pause::set_targets(reader_mask);
    fault_wait::set_mode(strategy == HvoBbm::FaultWait, true);
}

fn disarm() {
    fault_wait::clear_mode();
    pause::set_targets(0);
}

/// Takes up to `max` 2 MiB folios: the pool's first, then fresh ones from the buddy allocator
/// (outside memory hosting its own memmap, which HVO refuses). Returns (pool's, fresh).
fn gather_2m(max: usize, top_up: bool) -> (Batch, Batch) {
    let pool = hvo::take_from_pool(HugePageSize::Size2M, max);
    let max = if top_up { max } else { pool.len() };
    let self_hosted = crate::memory::SELF_HOSTED.lock().map(|sh| sh.range);
    let mut fresh = Batch::new();
    let mut aside = Batch::new();
    while pool.len() + fresh.len() < max {
        let f = {
            let mut b = BUDDY.lock();
            crate::memory::HUGETLB.lock().alloc_pool_folio(
                HugePageSize::Size2M,
                &mut b,
                &VMEMMAP,
                &mut kcore::hugetlb::NoHooks,
            )
        };
        let Ok(f) = f else { break };
        let target = if self_hosted.is_some_and(|r| r.contains(f.phys_addr())) {
            &mut aside
        } else {
            &mut fresh
        };
        if let Err(f) = target.push(f) {
            release_folio(f);
            break;
        }
    }
    for f in aside {
        release_folio(f);
    }
    (pool, fresh)
}

/// Runs the stress test on the pool's folios (2 MiB ones topped up with fresh folios from the
/// buddy allocator up to `max_2m`; 1 GiB ones from the pool only). The pool's folios go back as
/// they were (optimized if HVO is on), the fresh ones back to the allocator.
pub fn run(cfg: &StressConfig) -> Result<StressResult, StressError> {
    let (pool2, fresh2) = gather_2m(cfg.max_2m, cfg.top_up);
    let b1 = hvo::take_from_pool(HugePageSize::Size1G, cfg.max_1g);
    // Pool folios come off the free list frozen; the owner holds its reference while the
    // readers run, and freezes it around each HVO operation.
    unfreeze(&pool2);
    unfreeze(&b1);
    let n_pool = pool2.len();
    let mut b2 = pool2;
    for f in fresh2 {
        // Fresh folios belong to us like dequeued ones.
        VMEMMAP.page(f.head_pfn()).set_refcount(OWNER_REFS);
        let _ = b2.push(f);
    }
    let r = run_on(cfg, &b2, &b1);
    let mut pool2 = Batch::new();
    for (i, f) in b2.into_iter().enumerate() {
        if i < n_pool {
            let _ = pool2.push(f);
        } else {
            release_folio(f);
        }
    }
    // Back as the pool keeps them (frozen, optimized if HVO is on).
    for b in [&pool2, &b1] {
        freeze(b);
        if !b.is_empty() && hv::hvo_enabled() {
            let _ = with_hvo(|_| {}, |h| h.optimize_folios(b));
        }
    }
    hvo::return_to_pool(pool2);
    hvo::return_to_pool(b1);
    r
}

fn run_on(cfg: &StressConfig, b2: &Batch, b1: &Batch) -> Result<StressResult, StressError> {
    if b2.is_empty() && b1.is_empty() {
        return Err(StressError::NoFolios);
    }
    let groups: Vec<&[Folio], 2> =
        [&b2[..], &b1[..]].into_iter().filter(|g| !g.is_empty()).collect();
    // Start restored, with no reader running yet.
    for g in &groups {
        freeze(g);
        let r = with_hvo(|_| {}, |h| h.restore_folios(g));
        unfreeze(g);
        r.map_err(StressError::Hvo)?;
    }
    let all = || b2.iter().chain(b1.iter());
    readers::publish(all());
    let mask = reader_cores(0);
    if mask == 0 {
        return Err(StressError::NoReaders);
    }
    arm(cfg.strategy, mask);
    // The highest reader core also holds a spinlock while it reads.
    let top = 7 - mask.leading_zeros() as usize;
    let gets_only = if cfg.gets_only { readers::GETS_ONLY } else { 0 };
    let hold = if cfg.hold_refs { readers::HOLD_REF } else { 0 };
    let gate = cfg.hold_refs.then_some(readers::wait_fresh_holder as fn(_));
    let n_readers = start_readers(mask, |c| {
        let lock = cfg.all_hold_lock || (c == top && mask.count_ones() > 1);
        gets_only | hold | if lock { readers::HOLD_LOCK } else { 0 }
    });

    let mut res = StressResult {
        readers: n_readers,
        folios: (b2.len() as u32, b1.len() as u32),
        ..Default::default()
    };
    let free0 = BUDDY.lock().free_pages();
    let t0 = timer::ticks();
    let mut hvo_ticks = 0;
    let mut err = None;
    'cycles: for _ in 0..cfg.cycles {
        for optimize in [true, false] {
            for g in &groups {
                let t = timer::ticks();
                let r = hvo_op(g, optimize, cfg.strategy, cfg.freeze, cfg.delay, gate);
                hvo_ticks += timer::ticks() - t;
                match r {
                    Ok(s) => res.hvo += s,
                    Err(e) => {
                        err = Some(e);
                        break 'cycles;
                    }
                }
            }
            for f in all() {
                res.wrong_verify += verify_heads(f);
            }
        }
        res.cycles += 1;
    }
    let ticks = timer::ticks() - t0;
    stop_readers(mask);
    disarm();
    let free1 = BUDDY.lock().free_pages();

    let (reads, gets, refused, wrong, ops) = readers::totals();
    res.reads = reads;
    res.gets = gets;
    res.gets_refused = refused;
    res.ops = ops;
    res.wrong = wrong + res.wrong_verify;
    res.leaked = free0 as i64 - free1 as i64 - res.hvo.tables_allocated as i64
        + res.hvo.free_failures as i64;
    res.bad_refcounts =
        all().filter(|f| VMEMMAP.page(f.head_pfn()).refcount() != OWNER_REFS).count() as u32;
    res.ticks_per_cycle = ticks.checked_div(res.cycles).unwrap_or(0);
    res.hvo_ticks_per_cycle = hvo_ticks.checked_div(res.cycles).unwrap_or(0);
    res.counters = COUNTERS.read();
    res.grace =
        (grace::GRACE_PERIODS.load(Ordering::Relaxed), grace::GRACE_TICKS.load(Ordering::Relaxed));
    if res.bad_refcounts != 0 {
        for f in all() {
            let n = VMEMMAP.page(f.head_pfn()).refcount();
            if n != OWNER_REFS {
                crate::warn!(
                    "stress: folio {:#x} head refcount {} (owner holds {})",
                    f.head_pfn().0,
                    n,
                    OWNER_REFS
                );
            }
            // Put the owner's count back so the folio can go back to the pool.
            VMEMMAP.page(f.head_pfn()).set_refcount(OWNER_REFS);
        }
    }
    match err {
        Some(e) => Err(StressError::Hvo(e)),
        None => Ok(res),
    }
}

/// Prints the run's lines; the first is the one the test table checks.
pub fn report(strategy: HvoBbm, r: &StressResult) {
    let c = &r.counters;
    crate::info!(
        "result: smp strategy={} cycles={} reads={} gets={} faults_waited={} wrong={} unexpected_faults={} leaked={} held_ticks={} ticks_per_cycle={}",
        strategy.name(),
        r.cycles,
        r.reads,
        r.gets,
        c.faults_waited,
        r.wrong,
        c.unexpected_faults,
        r.leaked,
        c.held_ticks,
        r.ticks_per_cycle
    );
    crate::info!(
        "smp {}:   {} reader core(s), {} x 2M + {} x 1G folios; reader ops {}, gets refused (frozen) {}, wrong in core 0's verification {}",
        strategy.name(),
        r.readers,
        r.folios.0,
        r.folios.1,
        r.ops,
        r.gets_refused,
        r.wrong_verify
    );
    crate::info!(
        "smp {}:   optimize + restore {} ticks per cycle (of {}; the rest is the every-pfn check)",
        strategy.name(),
        r.hvo_ticks_per_cycle,
        r.ticks_per_cycle
    );
    crate::info!(
        "smp {}:   IPIs {} (rendezvous {}, timeouts {}), windows {}, TLBI {} ({} full flushes), entry writes {}",
        strategy.name(),
        c.ipis,
        c.pauses,
        c.pause_timeouts,
        c.windows,
        r.hvo.tlbi,
        r.hvo.tlbi_flush_all,
        r.hvo.entry_writes
    );
    crate::info!(
        "smp {}:   faults waited {} (longest {} ticks; {} with IRQs masked, {} with a lock held), refused {}",
        strategy.name(),
        c.faults_waited,
        c.longest_wait,
        c.waited_irqs_masked,
        c.waited_lock_held,
        c.refused_faults
    );
    crate::info!(
        "smp {}:   grace periods {} taking {} ticks ({} per grace period); folios optimized {}, restored {}; bad refcounts {}",
        strategy.name(),
        r.grace.0,
        r.grace.1,
        r.grace.1.checked_div(r.grace.0).unwrap_or(0),
        r.hvo.folios,
        r.hvo.folios_restored,
        r.bad_refcounts
    );
}

/// `stress=N hvo_bbm=S` at boot: runs and reports. Exit status: success if the run was clean.
pub fn boot(cycles: u64, strategy: Option<HvoBbm>) -> bool {
    let strategy = strategy.unwrap_or(HvoBbm::FaultWait);
    crate::info!("stress: {} cycle(s) with hvo_bbm={}", cycles, strategy.name());
    match run(&StressConfig::new(strategy, cycles)) {
        Ok(r) => {
            report(strategy, &r);
            if strategy == HvoBbm::None && r.counters.unexpected_faults > 0 {
                crate::warn!(
                    "stress: hvo_bbm=none: {} unexpected vmemmap fault(s): break-before-make without coordination is unsafe",
                    r.counters.unexpected_faults
                );
            }
            r.clean()
        }
        Err(e) => {
            crate::error!("stress: {:?}", e);
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Two cores doing HVO at once
// ---------------------------------------------------------------------------------------------

/// The second HVO core's folio and its outcome.
static PEER_FOLIO: AtomicU64 = AtomicU64::new(0);
static PEER_GO: AtomicU8 = AtomicU8::new(0);
static PEER_DONE: AtomicU8 = AtomicU8::new(0);
static PEER_SPLITS: AtomicU64 = AtomicU64::new(0);
static PEER_TABLES: AtomicU64 = AtomicU64::new(0);
static PEER_SKIPPED: AtomicU64 = AtomicU64::new(0);
static PEER_WAITS: AtomicU64 = AtomicU64::new(0);
static PEER_ERR: AtomicU8 = AtomicU8::new(0);
/// This round forces the race (see `peer_job`).
static PEER_FORCE: AtomicU8 = AtomicU8::new(0);
/// Core 0 has optimized its folio (a forced round's peer waits for it in its split).
static PEER_CORE0_DONE: AtomicU8 = AtomicU8::new(0);
/// A forced round's peer has read the block and waits in its split (core 0 starts then).
static PEER_IN_SPLIT: AtomicU8 = AtomicU8::new(0);

fn peer_job(strategy: u64) {
    // SAFETY: core 0 stored the head of a 2 MiB folio it allocated for this run and owns until
    // this job has finished (it waits for it).
    let f = unsafe {
        Folio::from_raw(Pfn(PEER_FOLIO.load(Ordering::Acquire)), HugePageSize::Size2M.order())
    };
    let strategy = HvoBbm::ALL[strategy as usize];
    while PEER_GO.load(Ordering::Acquire) == 0 {
        core::hint::spin_loop();
    }
    // A forced round: this core's split, having read the block, waits until core 0 has split
    // it and optimized its folio, so the re-check under page_table_lock finds a table: the race
    // taken on purpose rather than when the host happens to schedule it (1 round in ~15).
    let force = PEER_FORCE.load(Ordering::Acquire) != 0;
    let mut wait_for_core0 = |_: VirtAddr| {
        PEER_IN_SPLIT.store(1, Ordering::Release);
        wait_flag(&PEER_CORE0_DONE);
    };
    let hook = force.then_some(&mut wait_for_core0 as &mut dyn FnMut(VirtAddr));
    match hvo_op_hooked(core::slice::from_ref(&f), true, strategy, true, (0, 0), None, hook) {
        Ok(s) => {
            PEER_SPLITS.store(s.splits, Ordering::Relaxed);
            PEER_TABLES.store(s.tables_allocated, Ordering::Relaxed);
            PEER_SKIPPED.store(s.splits_skipped, Ordering::Relaxed);
            PEER_WAITS.store(s.split_waits, Ordering::Relaxed);
        }
        Err(e) => {
            crate::error!("concurrent split: core {}: {:?}", crate::percpu::this_cpu().id, e);
            PEER_ERR.store(1, Ordering::Relaxed);
        }
    }
    PEER_DONE.store(1, Ordering::Release);
}

/// Spins until `flag` is set or 5 s have passed (a forced round's handshake; the test then
/// sees the race not taken rather than hanging).
fn wait_flag(flag: &AtomicU8) {
    let t0 = timer::ticks();
    while flag.load(Ordering::Acquire) == 0 && timer::ticks() - t0 < 5 * timer::frequency() {
        core::hint::spin_loop();
    }
}

/// What the concurrent-split run measured.
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub struct SplitResult {
    /// Vmemmap blocks raced on.
    pub blocks: u64,
    /// Splits done by both cores (one per block is right).
    pub splits: u64,
    /// Table pages both cores kept (one per block is right; the loser gives its back).
    pub tables: u64,
    /// Splits the re-check under `page_table_lock` skipped because the other core had split
    /// the block since this one's walker read it: the race, observed.
    pub skipped: u64,
    /// Walks that met the other core's split between its break and its make and waited for it
    /// (`HvoStats::split_waits`).
    pub split_waits: u64,
    /// Wrong answers (readers and every-pfn verification).
    pub wrong: u64,
    /// Of `wrong`, the readers' (the rest: core 0's verification after each step).
    pub reader_wrong: u64,
    /// Frames lost (buddy free count against the tables kept).
    pub leaked: i64,
    /// HVO errors.
    pub errors: u64,
    /// Fault-wait's counters over the run.
    pub counters: CounterValues,
    /// Reader ops.
    pub reads: u64,
}

/// Is the vmemmap block holding `pfn`'s descriptor still a 2 MiB block?
fn block_unsplit(pfn: Pfn) -> bool {
    let g = init_mm().mmap_read();
    matches!(g.translate(&LINEAR, hv::vmemmap_va(pfn)), Some((_, _, Level::L2)))
}

/// Two cores (this one and `peer`) optimize, at the same moment, two fresh 2 MiB folios whose
/// descriptors share one still-unsplit vmemmap block, `rounds` times on different blocks, with
/// readers on the remaining cores, under `strategy` (fault-wait or none: no IPIs, since both
/// HVO cores may be in a window at once).
pub fn concurrent_split(
    peer: usize,
    rounds: u64,
    forced: u64,
    strategy: HvoBbm,
) -> Result<SplitResult, StressError> {
    let mut res = SplitResult::default();
    let vmemmap_block_pfns = PMD_SIZE / kcore::page::PAGE_DESC_SIZE;
    let nr = HugePageSize::Size2M.nr_pages();
    let ram = crate::bootstate::ram_regions();
    // Hot-added memory hosting its own memmap is refused by HVO: not a candidate.
    let self_hosted = crate::memory::SELF_HOSTED.lock().map(|sh| sh.range);
    for round in 0..rounds {
        // Two free 2M-aligned ranges in one unsplit block.
        let mut pair: Option<Vec<Folio, 2>> = None;
        'find: for r in ram.as_slice() {
            let (lo, hi) = (r.base.0 >> 12, (r.base.0 + r.size) >> 12);
            let mut block = lo / vmemmap_block_pfns * vmemmap_block_pfns;
            while block < hi {
                let first = block.max(lo).next_multiple_of(nr);
                let hosted = self_hosted.is_some_and(|r| {
                    r.contains(kcore::addr::PhysAddr(first << 12))
                        || r.contains(kcore::addr::PhysAddr((block + vmemmap_block_pfns - 1) << 12))
                });
                if first < hi && !hosted && block_unsplit(Pfn(first)) {
                    let mut got: Vec<Folio, 2> = Vec::new();
                    let mut p = first;
                    while p + nr <= hi.min(block + vmemmap_block_pfns) && !got.is_full() {
                        let mut buddy = BUDDY.lock();
                        let f = crate::memory::HUGETLB.lock().alloc_pool_folio_at(
                            HugePageSize::Size2M,
                            Pfn(p),
                            &mut buddy,
                            &VMEMMAP,
                            &mut kcore::hugetlb::NoHooks,
                        );
                        if let Ok(f) = f {
                            let _ = got.push(f);
                        }
                        p += nr;
                    }
                    if got.len() == 2 {
                        pair = Some(got);
                        break 'find;
                    }
                    for f in got {
                        release_folio(f);
                    }
                }
                block += vmemmap_block_pfns;
            }
        }
        let Some(pair) = pair else {
            if res.blocks == 0 {
                return Err(StressError::NoUnsplitBlock);
            }
            break;
        };
        res.blocks += 1;
        // Folios from alloc_pool_folio_at: the owner holds a reference (see OWNER_REFS).
        for f in pair.iter() {
            VMEMMAP.page(f.head_pfn()).set_refcount(OWNER_REFS);
        }
        let (a, b) = (&pair[0], &pair[1]);
        readers::publish(pair.iter());
        let mask = reader_cores(1 << peer);
        arm(strategy, mask);
        let n = start_readers(mask, |_| 0);
        let free0 = BUDDY.lock().free_pages();
        PEER_FOLIO.store(b.head_pfn().0, Ordering::Release);
        PEER_GO.store(0, Ordering::Release);
        PEER_DONE.store(0, Ordering::Release);
        PEER_ERR.store(0, Ordering::Release);
        PEER_SPLITS.store(0, Ordering::Release);
        PEER_TABLES.store(0, Ordering::Release);
        PEER_SKIPPED.store(0, Ordering::Release);
        PEER_WAITS.store(0, Ordering::Release);
        PEER_FORCE.store(u8::from(round < forced), Ordering::Release);
        PEER_CORE0_DONE.store(0, Ordering::Release);
        PEER_IN_SPLIT.store(0, Ordering::Release);
        let idx = HvoBbm::ALL.iter().position(|s| *s == strategy).unwrap_or(0) as u64;
        if crate::smp::launch(peer, peer_job, idx).is_err() {
            stop_readers(mask);
            disarm();
            return Err(StressError::NoReaders);
        }
        // Both go.
        PEER_GO.store(1, Ordering::Release);
        if round < forced {
            // The peer goes first, as far as its split's re-check.
            wait_flag(&PEER_IN_SPLIT);
        }
        let mine = hvo_op(core::slice::from_ref(a), true, strategy, true, (0, 0), None);
        PEER_CORE0_DONE.store(1, Ordering::Release);
        crate::smp::wait_idle(peer);
        match mine {
            Ok(s) => {
                res.splits += s.splits;
                res.tables += s.tables_allocated;
                res.skipped += s.splits_skipped;
                res.split_waits += s.split_waits;
            }
            Err(e) => {
                crate::error!("concurrent split: core 0: {:?}", e);
                res.errors += 1;
            }
        }
        res.splits += PEER_SPLITS.load(Ordering::Acquire);
        res.tables += PEER_TABLES.load(Ordering::Acquire);
        res.skipped += PEER_SKIPPED.load(Ordering::Acquire);
        res.split_waits += PEER_WAITS.load(Ordering::Acquire);
        res.errors += u64::from(PEER_ERR.load(Ordering::Acquire));
        for f in pair.iter() {
            res.wrong += verify_heads(f);
        }
        // Restore both (one core, readers still running), then verify again.
        if let Err(e) = hvo_op(&pair, false, strategy, true, (0, 0), None) {
            crate::error!("concurrent split: restore: {:?}", e);
            res.errors += 1;
        }
        for f in pair.iter() {
            res.wrong += verify_heads(f);
        }
        stop_readers(mask);
        disarm();
        let c = COUNTERS.read();
        res.counters.faults_waited += c.faults_waited;
        res.counters.unexpected_faults += c.unexpected_faults;
        res.counters.refused_faults += c.refused_faults;
        res.counters.longest_wait = res.counters.longest_wait.max(c.longest_wait);
        res.counters.windows += c.windows;
        let far = fault_wait::FIRST_UNEXPECTED.load(Ordering::Acquire);
        if far != 0 {
            crate::error!(
                "concurrent split: unexpected vmemmap fault at {:#x} (folios {:#x}, {:#x})",
                far,
                a.head_pfn().0,
                b.head_pfn().0
            );
        }
        let (reads, _, _, wrong, _) = readers::totals();
        res.reads += reads;
        res.wrong += wrong;
        res.reader_wrong += wrong;
        let first = readers::FIRST_WRONG[0].load(Ordering::Acquire);
        if first != 0 {
            crate::error!(
                "concurrent split: a reader's first wrong answer: pfn {:#x} found head {:#x} (wrong: {:#x}; folios {:#x}, {:#x}; races seen so far {})",
                first,
                readers::FIRST_WRONG[1].load(Ordering::Relaxed),
                readers::FIRST_WRONG[2].load(Ordering::Acquire),
                a.head_pfn().0,
                b.head_pfn().0,
                res.skipped
            );
        }
        let _ = n;
        let free1 = BUDDY.lock().free_pages();
        // What HVO took and gave back nets out; the one split table stays (as in Linux).
        res.leaked += free0 as i64 - free1 as i64 - 1;
        if block_unsplit(a.head_pfn()) {
            crate::error!("concurrent split: the block of {:#x} is still a block", a.head_pfn().0);
            res.errors += 1;
        }
        // The peer's copy of `b` (made from the raw head) is gone with its job.
        for f in pair {
            release_folio(f);
        }
    }
    Ok(res)
}

/// Gives a fresh folio (its owner's reference held) back to the buddy allocator, restoring its
/// vmemmap first if it is optimized.
fn release_folio(f: Folio) {
    freeze(core::slice::from_ref(&f));
    let head = f.head_pfn();
    if let Err(e) = hvo::dissolve(f) {
        crate::error!("stress: dissolving folio {:#x}: {:?}", head.0, e);
    }
}

/// Prints the concurrent-split result line.
pub fn report_split(strategy: HvoBbm, r: &SplitResult) {
    crate::info!(
        "result: smp-split strategy={} blocks={} splits={} tables_kept={} races_seen={} split_waits={} reads={} faults_waited={} wrong={} unexpected_faults={} leaked={} errors={}",
        strategy.name(),
        r.blocks,
        r.splits,
        r.tables,
        r.skipped,
        r.split_waits,
        r.reads,
        r.counters.faults_waited,
        r.wrong,
        r.counters.unexpected_faults,
        r.leaked,
        r.errors
    );
}
