//! HugeTLB Vmemmap Optimization in the running firmware: the glue between `kcore`'s HVO and
//! the live allocators, and the boot demonstration with its measurements.
//!
//! The algorithm (split with break-before-make, remap, free, restore, batching, fake heads) is
//! `kcore::hugetlb_vmemmap`. Here it runs on the real translation tables (`init_mm`, through
//! the linear map), with the real barrier and TLB instructions (`HwMmu`, which counts what it
//! executes) and the buddy allocator. Every figure printed is measured by the code doing the
//! work: frames freed as the buddy allocator's free-count delta and as the entries HVO remapped
//! (they must agree), vmemmap bytes from a walk of the live tables, TLBIs and DSBs from the
//! backend, time from the generic timer.

use crate::drivers::timer;
use crate::memory::{init_mm, BUDDY, HUGETLB, LINEAR, VMEMMAP};
use heapless::Vec;
use kcore::addr::{Pfn, PhysAddr, VirtAddr, PAGE_SIZE};
use kcore::cmdline::Cmdline;
use kcore::hugetlb::{Folio, HugePageSize};
use kcore::hugetlb_vmemmap::{
    self as hv, alloc_vmemmap_frame, free_vmemmap_frame, BbmSync, Hvo, HvoError, HvoOptions,
    HvoStats, VmemmapFrames,
};
use kcore::mapper::FrameAlloc;
use kcore::pgtable::{Descriptor, Level};
use kcore::phys::OffsetWindow;
#[cfg(not(feature = "ktest"))]
use kcore::tlb::HwMmu;
use kcore::tlb::{MmuOps, MmuStats};

/// Folios handled in one batch.
pub const BATCH: usize = 64;

/// A batch of folios.
pub type Batch = Vec<Folio, BATCH>;

/// The buddy allocator as HVO's two allocators see it: frames for the vmemmap and pages for
/// split tables. The lock is taken per allocation and per free, never for a whole operation,
/// so two cores can run HVO at once (and kcore's HVO allocates before its break windows and
/// frees after them, so no allocation happens inside one).
pub struct SharedBuddy {
    /// Fail the allocation with this index (0-based, counting frame allocations): failure
    /// injection for tests.
    fail_frame_at: Option<u64>,
    frame_allocs: core::cell::Cell<u64>,
}

impl SharedBuddy {
    /// The firmware's buddy allocator.
    pub fn new() -> Self {
        SharedBuddy { fail_frame_at: None, frame_allocs: 0.into() }
    }

    /// Makes the `n`-th frame allocation (0-based) from now fail.
    pub fn fail_frame_allocation(&mut self, n: u64) {
        self.fail_frame_at = Some(self.frame_allocs.get() + n);
    }

    /// Free pages in the allocator now.
    pub fn free_pages(&self) -> u64 {
        BUDDY.lock().free_pages()
    }
}

impl Default for SharedBuddy {
    fn default() -> Self {
        Self::new()
    }
}

/// Vmemmap frames from a [`SharedBuddy`].
pub struct Frames<'s>(pub &'s SharedBuddy);

// SAFETY: frames come from the buddy allocator, which hands each free frame out once; they go
// back only through `free_vmemmap_frame` once HVO no longer maps them.
unsafe impl VmemmapFrames for Frames<'_> {
    fn alloc(&mut self) -> Option<PhysAddr> {
        let n = self.0.frame_allocs.get();
        self.0.frame_allocs.set(n + 1);
        if self.0.fail_frame_at == Some(n) {
            crate::info!("hvo: injected allocation failure at frame allocation {}", n);
            return None;
        }
        alloc_vmemmap_frame(&mut BUDDY.lock(), &VMEMMAP).ok()
    }
    fn free(&mut self, pa: PhysAddr) -> bool {
        free_vmemmap_frame(&mut BUDDY.lock(), &VMEMMAP, pa).is_ok()
    }
    fn free_run(&mut self, pa: PhysAddr, n: u64) -> u64 {
        hv::free_vmemmap_frames(&mut BUDDY.lock(), &VMEMMAP, pa, n)
    }
    fn alloc_run(&mut self, max: u64) -> Option<(PhysAddr, u64)> {
        if self.0.fail_frame_at.is_some() {
            // Failure injection counts single allocations.
            return self.alloc().map(|pa| (pa, 1));
        }
        let r = hv::alloc_vmemmap_frames(&mut BUDDY.lock(), &VMEMMAP, max).ok()?;
        self.0.frame_allocs.set(self.0.frame_allocs.get() + r.1);
        Some(r)
    }
}

/// Split-table pages from a [`SharedBuddy`], zeroed, their descriptors marked as page tables.
pub struct Tables<'s>(pub &'s SharedBuddy);

impl FrameAlloc for Tables<'_> {
    fn alloc_table(&mut self) -> Option<PhysAddr> {
        crate::memory::alloc_table_page(&mut BUDDY.lock())
    }
    fn free_table(&mut self, pa: PhysAddr) {
        crate::memory::free_table_page(&mut BUDDY.lock(), pa)
    }
}

/// Test device: widens break-before-make windows with a delay, to make a race that needs a
/// window reliable in a bounded run. `before_break` spins before each live entry is made
/// invalid (after page 0 was copied: the gap the reference freeze protects); `in_break` spins
/// after each DSB ISH (after the TLBIs completed, before the new entry: the break itself).
#[derive(Debug, Default)]
pub struct BreakDelay<O: MmuOps> {
    inner: O,
    /// Ticks before each valid -> invalid write.
    pub before_break: u64,
    /// Ticks after each DSB ISH.
    pub in_break: u64,
    /// Called before each valid -> invalid write (a test's handshake with the other cores,
    /// e.g. "a reader holds a reference now"; see `hvo_smp::readers::wait_fresh_holder`).
    pub gate: Option<fn(VirtAddr)>,
}

impl<O: MmuOps> BreakDelay<O> {
    /// `inner` with no delay.
    pub fn new(inner: O) -> Self {
        BreakDelay { inner, before_break: 0, in_break: 0, gate: None }
    }
}

fn spin_ticks(t: u64) {
    if t != 0 {
        let t0 = timer::ticks();
        while timer::ticks() - t0 < t {
            core::hint::spin_loop();
        }
    }
}

impl<O: MmuOps> MmuOps for BreakDelay<O> {
    unsafe fn write_entry(&mut self, slot: *mut u64, va: VirtAddr, level: Level, new: Descriptor) {
        if (self.before_break != 0 || self.gate.is_some()) && !new.is_valid() {
            // SAFETY: the caller's guarantee covers reading the entry it is about to write.
            if unsafe { kcore::tlb::read_entry(slot) }.is_valid() {
                spin_ticks(self.before_break);
                if let Some(gate) = self.gate {
                    gate(va);
                }
            }
        }
        // SAFETY: forwarded with the caller's guarantee.
        unsafe { self.inner.write_entry(slot, va, level, new) }
    }
    fn dsb_ishst(&mut self) {
        self.inner.dsb_ishst()
    }
    fn dsb_ish(&mut self) {
        self.inner.dsb_ish();
        spin_ticks(self.in_break);
    }
    fn isb(&mut self) {
        self.inner.isb()
    }
    fn tlbi_vaae1is(&mut self, va: VirtAddr) {
        self.inner.tlbi_vaae1is(va)
    }
    fn tlbi_vae1is(&mut self, va: VirtAddr, asid: u16) {
        self.inner.tlbi_vae1is(va, asid)
    }
    fn tlbi_aside1is(&mut self, asid: u16) {
        self.inner.tlbi_aside1is(asid)
    }
    fn tlbi_vmalle1is(&mut self) {
        self.inner.tlbi_vmalle1is()
    }
    fn stats(&self) -> MmuStats {
        self.inner.stats()
    }
}

/// The live break-before-make auditor (test builds): every entry HVO writes on the live
/// tables goes through kcore's [`kcore::bbm_check::AuditMmu`] around [`HwMmu`], one per core,
/// and a violation fails the run. (Compiled in every build, used only with the `ktest` feature.)
pub mod audit {
    use crate::sync::{SpinGuard, SpinMutex};
    use core::sync::atomic::{AtomicU64, Ordering};
    use kcore::addr::VirtAddr;
    use kcore::bbm_check::AuditMmu;
    use kcore::layout::MAX_CPUS;
    use kcore::pgtable::{Descriptor, Level};
    use kcore::tlb::{HwMmu, MmuOps, MmuStats};

    /// Entries followed at once: a 1 GiB folio's 4096 pending entries plus a 2 MiB batch's 512.
    pub const TRACKS: usize = 4608;
    /// The auditor over the hardware backend.
    pub type Audit = AuditMmu<HwMmu, TRACKS>;
    /// One auditor per core (HVO may run on any core, two at once).
    pub static AUDIT: [SpinMutex<Audit>; MAX_CPUS] =
        [const { SpinMutex::new(AuditMmu::new(HwMmu::new())) }; MAX_CPUS];
    /// Operations audited, and violations found (all cores).
    pub static AUDITED: AtomicU64 = AtomicU64::new(0);
    /// Violations found.
    pub static VIOLATIONS: AtomicU64 = AtomicU64::new(0);

    /// This core's auditor, held for one HVO operation.
    pub struct Audited(SpinGuard<'static, Audit>);

    impl Audited {
        /// Takes this core's auditor, cleared.
        pub fn take() -> Self {
            let mut g = AUDIT[crate::percpu::this_cpu().id].lock();
            g.reset();
            Audited(g)
        }

        /// End of the operation: fails the run on a violation.
        pub fn finish(&mut self) {
            AUDITED.fetch_add(1, Ordering::Relaxed);
            if let Err(v) = self.0.check() {
                VIOLATIONS.fetch_add(1, Ordering::Relaxed);
                crate::error!(
                    "live break-before-make auditor: {} violation(s), the first {:?}",
                    self.0.violations(),
                    v
                );
                panic!("break-before-make violated on the live tables");
            }
        }
    }

    impl MmuOps for Audited {
        unsafe fn write_entry(
            &mut self,
            slot: *mut u64,
            va: VirtAddr,
            level: Level,
            new: Descriptor,
        ) {
            // SAFETY: forwarded with the caller's guarantee.
            unsafe { self.0.write_entry(slot, va, level, new) }
        }
        fn dsb_ishst(&mut self) {
            self.0.dsb_ishst()
        }
        fn dsb_ish(&mut self) {
            self.0.dsb_ish()
        }
        fn isb(&mut self) {
            self.0.isb()
        }
        fn tlbi_vaae1is(&mut self, va: VirtAddr) {
            self.0.tlbi_vaae1is(va)
        }
        fn tlbi_vae1is(&mut self, va: VirtAddr, asid: u16) {
            self.0.tlbi_vae1is(va, asid)
        }
        fn tlbi_aside1is(&mut self, asid: u16) {
            self.0.tlbi_aside1is(asid)
        }
        fn tlbi_vmalle1is(&mut self) {
            self.0.tlbi_vmalle1is()
        }
        fn stats(&self) -> MmuStats {
            self.0.stats()
        }
    }
}

/// The backend under [`BreakDelay`]: the hardware, audited in test builds.
#[cfg(feature = "ktest")]
pub type Backend = audit::Audited;
/// The backend under [`BreakDelay`]: the hardware, audited in test builds.
#[cfg(not(feature = "ktest"))]
pub type Backend = HwMmu;

fn backend() -> Backend {
    #[cfg(feature = "ktest")]
    return audit::Audited::take();
    #[cfg(not(feature = "ktest"))]
    return HwMmu::new();
}

/// The MMU backend HVO runs with on the live tables.
pub type LiveMmu = BreakDelay<Backend>;

/// The HVO instance [`with_hvo`] hands out.
pub type LiveHvo<'a, 's> = Hvo<'a, OffsetWindow, LiveMmu, Frames<'s>, Tables<'s>>;

/// How [`with_hvo_in`] sets HVO up beyond the defaults.
#[derive(Default)]
pub struct HvoSetup<'x> {
    /// Coordination with the other cores (default: none, [`kcore::hugetlb_vmemmap::NoSync`]).
    pub sync: Option<&'x mut dyn BbmSync>,
    /// Options (default: Linux's).
    pub options: Option<HvoOptions>,
    /// Test delays (see [`BreakDelay`]): ticks before each break, ticks inside each.
    pub delay: (u64, u64),
    /// Test handshake run before each break (see [`BreakDelay::gate`]).
    pub gate: Option<fn(VirtAddr)>,
    /// Test-only: called in a split between the walker's read of the block and the re-check
    /// under `page_table_lock` ([`kcore::hugetlb_vmemmap::Hvo::set_split_race_hook`]).
    pub race_hook: Option<&'x mut dyn FnMut(VirtAddr)>,
}

/// Runs `f` with an HVO instance over the live `init_mm` (mmap_lock held for read), the real
/// MMU backend and the buddy allocator (locked per allocation). `setup` may arrange failure
/// injection before HVO starts.
pub fn with_hvo<R>(
    setup: impl FnOnce(&mut SharedBuddy),
    f: impl FnOnce(&mut LiveHvo<'_, '_>) -> R,
) -> R {
    with_hvo_in(HvoSetup::default(), setup, f)
}

/// [`with_hvo`] with a strategy, options and test delays.
pub fn with_hvo_in<R>(
    cfg: HvoSetup<'_>,
    setup: impl FnOnce(&mut SharedBuddy),
    f: impl FnOnce(&mut LiveHvo<'_, '_>) -> R,
) -> R {
    let mm = init_mm();
    let guard = mm.mmap_read();
    let mut shared = SharedBuddy::new();
    setup(&mut shared);
    let mut mmu = BreakDelay::new(backend());
    (mmu.before_break, mmu.in_break) = cfg.delay;
    mmu.gate = cfg.gate;
    let mut frames = Frames(&shared);
    let mut tables = Tables(&shared);
    let r = {
        // SAFETY: LINEAR reaches every RAM frame; VMEMMAP is the memmap init_mm maps at
        // VMEMMAP_START; the other cores either touch no descriptor of these folios or are
        // coordinated by `cfg.sync` (the strategies of `hvo_smp`; without one, only this core reads
        // descriptors, or the run is the `none` negative control that counts the faults); the
        // folios passed in by callers are owned by them (taken off the pool's free list or
        // allocated, their reference count frozen), and their tails are not written while
        // optimized.
        let mut hvo =
            unsafe { Hvo::new(&guard, &LINEAR, &mut mmu, &VMEMMAP, &mut frames, &mut tables) };
        if let Some(o) = cfg.options {
            hvo.set_options(o);
        }
        if let Some(s) = cfg.sync {
            hvo.set_sync(s);
        }
        #[cfg(feature = "ktest")]
        if let Some(h) = cfg.race_hook {
            hvo.set_split_race_hook(h);
        }
        #[cfg(not(feature = "ktest"))]
        if cfg.race_hook.is_some() {
            crate::warn!("hvo: a split race hook is a test hook: ignored outside ktest builds");
        }
        f(&mut hvo)
    };
    #[cfg(feature = "ktest")]
    mmu.inner.finish();
    r
}

/// References the owner of a folio taken off the pool holds (Linux's `dequeue_hugetlb_folio`
/// leaves 1).
pub const OWNER_REFS: u32 = 1;

/// Freezes each folio's head reference count from the owner's [`OWNER_REFS`] to 0 (Linux's
/// `folio_ref_freeze()`), waiting out transient references of speculative readers on other
/// cores. HVO runs on frozen folios only: a speculative `try_get` then fails without writing
/// the descriptor HVO copies.
pub fn freeze(folios: &[Folio]) {
    for f in folios {
        let head = VMEMMAP.page(f.head_pfn());
        while !head.ref_freeze(OWNER_REFS) {
            core::hint::spin_loop();
        }
    }
}

/// Gives the owner its references back (`folio_ref_unfreeze()`).
pub fn unfreeze(folios: &[Folio]) {
    for f in folios {
        VMEMMAP.page(f.head_pfn()).ref_unfreeze(OWNER_REFS);
    }
}

/// Runs `f` on `folios` frozen (see [`freeze`]).
pub fn frozen<R>(folios: &[Folio], f: impl FnOnce() -> R) -> R {
    freeze(folios);
    let r = f();
    unfreeze(folios);
    r
}

/// How a folio size is named in Linux's boot line.
pub fn linux_size_name(size: HugePageSize) -> &'static str {
    match size {
        HugePageSize::Size2M => "2.00 MiB",
        HugePageSize::Size1G => "1.00 GiB",
    }
}

/// Checks, for every pfn of `folio`, that the head/tail queries see through fake heads: the
/// head is a head, every other pfn a tail whose compound head is the head. Returns the number
/// of pfns with a wrong answer.
pub fn verify_heads(folio: &Folio) -> u64 {
    let head = folio.head_pfn();
    let mut wrong = 0;
    for pfn in (folio.pfn_range().start.0)..(folio.pfn_range().end.0) {
        let pfn = Pfn(pfn);
        let is_head = pfn == head;
        if hv::page_is_head(&VMEMMAP, pfn) != is_head
            || hv::page_is_tail(&VMEMMAP, pfn) == is_head
            || hv::page_compound_head_pfn(&VMEMMAP, pfn) != head
        {
            if wrong < 4 {
                crate::error!("hvo: pfn {:#x} of folio {:#x} answers wrongly", pfn.0, head.0);
            }
            wrong += 1;
        }
    }
    wrong
}

/// Takes up to [`BATCH`] free folios of `size` off the pool's free list, their reference
/// count frozen at 0 (see [`freeze`]).
pub fn take_from_pool(size: HugePageSize, max: usize) -> Batch {
    let mut out = Batch::new();
    let mut pool = HUGETLB.lock();
    while out.len() < max.min(BATCH) {
        match pool.dequeue(size, &VMEMMAP) {
            Some(f) => {
                // HVO works on frozen folios (refcount 0); `dequeue` handed out one reference,
                // which nobody else can have taken yet.
                f.head(&VMEMMAP).ref_freeze(1);
                if let Err(f) = out.push(f) {
                    pool.enqueue(f, &VMEMMAP);
                    break;
                }
            }
            None => break,
        }
    }
    out
}

/// Puts folios back on the pool's free list.
pub fn return_to_pool(batch: Batch) {
    let mut pool = HUGETLB.lock();
    for f in batch {
        pool.enqueue(f, &VMEMMAP);
    }
}

/// One size's measured run.
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub struct SizeRun {
    /// Folios in the pool at the start.
    pub folios: u64,
    /// Folios optimized.
    pub optimized: u64,
    /// Buddy free-count delta across the remapping (phase 2).
    pub buddy_delta: i64,
    /// Buddy pages taken by the splits (phase 1): the page tables.
    pub split_tables_delta: i64,
    /// HVO's counts for the optimization.
    pub stats: HvoStats,
    /// Vmemmap bytes in use (walk of init_mm) before and after.
    pub vmemmap_before: u64,
    /// After.
    pub vmemmap_after: u64,
    /// Counter ticks spent optimizing.
    pub ticks: u64,
    /// pfns whose head/tail answer was wrong after optimizing.
    pub wrong_answers: u64,
    /// Folios restored and verified (descriptors as before, every pfn's answer right).
    pub restore_ok: u64,
    /// Folios whose restore round trip was skipped: optimized from boot
    /// (`hugetlb_vmemmap_preinit=on`), whose full vmemmap is never to be allocated; their
    /// answers are verified optimized, and restoring them is left to dissolve and the tests.
    pub restore_skipped: u64,
    /// Buddy free-count delta across the restore (negative: frames taken back).
    pub restore_delta: i64,
    /// The counter when phase 2 (optimize) ended: the pool is optimized from here.
    pub optimized_at: u64,
}

/// The boot's 1 GiB run (`hugetlb_vmemmap_preinit=` figures).
pub static BOOT_RUN_1G: crate::sync::SpinMutex<Option<SizeRun>> = crate::sync::SpinMutex::new(None);

fn vmemmap_bytes() -> u64 {
    let mm = init_mm();
    let g = mm.mmap_read();
    hv::vmemmap_bytes_in_use(&g, &LINEAR)
}

/// Batches of folios: up to `BATCH * MAX_BATCHES` folios (enough for 2 GiB of 2M pages).
pub type Batches = Vec<Batch, MAX_BATCHES>;
/// Batches held at once.
pub const MAX_BATCHES: usize = 16;

/// Takes every free folio of `size` off the pool, in batches.
pub fn take_all(size: HugePageSize) -> Batches {
    let mut all = Batches::new();
    while !all.is_full() {
        let b = take_from_pool(size, BATCH);
        if b.is_empty() {
            break;
        }
        let _ = all.push(b);
    }
    all
}

/// Puts every folio back on the pool's free list.
pub fn return_all(all: Batches) {
    for b in all {
        return_to_pool(b);
    }
}

/// Optimizes every pool folio of `size` (batched), measures, verifies every pfn, restores them
/// all (batched) and verifies, then optimizes them again so the pool stays optimized, as
/// Linux keeps pool folios.
pub fn measure_size(size: HugePageSize) -> Result<SizeRun, HvoError> {
    let all = take_all(size);
    let mut run =
        SizeRun { folios: all.iter().map(|b| b.len() as u64).sum(), ..Default::default() };
    let r = measure_batches(&all, &mut run);
    return_all(all);
    r.map(|()| run)
}

fn measure_batches(all: &Batches, run: &mut SizeRun) -> Result<(), HvoError> {
    let enabled = hv::hvo_enabled();
    run.vmemmap_before = vmemmap_bytes();
    // Phase 1, split-only (same walker, split strategy): the 2 MiB vmemmap blocks become page
    // tables. The table pages it takes are measured here, so that phase 2's buddy delta is the
    // frames the remapping freed and nothing else.
    let free_before_split = BUDDY.lock().free_pages();
    // Batches optimized from boot (every folio already optimized before this run).
    let preinit: Vec<bool, MAX_BATCHES> = all
        .iter()
        .map(|b| enabled && !b.is_empty() && b.iter().all(|f| hv::folio_is_optimized(&VMEMMAP, f)))
        .collect();
    let t0 = timer::ticks();
    if enabled {
        for batch in all {
            let stats = with_hvo(
                |_| {},
                |hvo| {
                    for f in batch {
                        hvo.split_folio(f)?;
                    }
                    Ok::<_, HvoError>(hvo.stats())
                },
            )?;
            run.stats += stats;
        }
    }
    run.split_tables_delta = free_before_split as i64 - BUDDY.lock().free_pages() as i64;
    // Phase 2, optimize, batched: one break-before-make for all entries of a batch.
    for batch in all {
        let free0 = BUDDY.lock().free_pages();
        let (n, stats) = with_hvo(
            |_| {},
            |hvo| {
                let n = if enabled { hvo.optimize_folios(batch)? } else { 0 };
                Ok::<_, HvoError>((n, hvo.stats()))
            },
        )?;
        run.buddy_delta += BUDDY.lock().free_pages() as i64 - free0 as i64;
        run.optimized += n;
        run.stats += stats;
    }
    run.optimized_at = timer::ticks();
    run.ticks += run.optimized_at - t0;
    for batch in all {
        run.wrong_answers += batch.iter().map(verify_heads).sum::<u64>();
    }
    run.vmemmap_after = vmemmap_bytes();
    for (i, batch) in all.iter().enumerate() {
        if preinit.get(i).copied().unwrap_or(false) {
            run.restore_skipped += batch.len() as u64;
            continue;
        }
        let free0 = BUDDY.lock().free_pages();
        let restored = with_hvo(|_| {}, |hvo| hvo.restore_folios(batch))?;
        run.restore_delta += BUDDY.lock().free_pages() as i64 - free0 as i64;
        for f in batch {
            let ok = !hv::folio_is_optimized(&VMEMMAP, f)
                && kcore::hugetlb::check_folio(f, &VMEMMAP).is_ok()
                && verify_heads(f) == 0;
            if ok && (enabled || restored == 0) {
                run.restore_ok += 1;
            }
        }
    }
    if enabled {
        for batch in all {
            with_hvo(|_| {}, |hvo| hvo.optimize_folios(batch))?;
        }
    }
    Ok(())
}

/// The boot demonstration: Linux's line for each size, then a measured optimize / verify /
/// restore round trip over the boot pool, a table and a one-line result per size.
pub fn boot(cmd: &Cmdline<'_>) -> bool {
    hv::apply_boot_param(cmd.hugetlb_free_vmemmap);
    for size in HugePageSize::ALL {
        crate::info!(
            "HugeTLB: {} KiB vmemmap can be freed for a {} page",
            hv::free_vmemmap_pages_per_folio(size.order()) * PAGE_SIZE / 1024,
            linux_size_name(size)
        );
    }
    let mut ok = true;
    for size in HugePageSize::ALL {
        if HUGETLB.lock().counts(size).free_hugepages == 0 {
            continue;
        }
        match measure_size(size) {
            Ok(run) => {
                if size == HugePageSize::Size1G {
                    *BOOT_RUN_1G.lock() = Some(run);
                }
                ok &= report(size, &run)
            }
            Err(e) => {
                crate::error!("hvo {}: {:?}", size.name(), e);
                ok = false;
            }
        }
    }
    ok
}

fn report(size: HugePageSize, r: &SizeRun) -> bool {
    let s = &r.stats;
    let name = size.name();
    // The shared tail design takes its tail page for the order from the buddy on first use.
    let agree = r.buddy_delta == s.ptes_remapped as i64 - s.shared_tail_pages as i64
        && r.split_tables_delta == s.tables_allocated as i64;
    crate::info!("HVO {}: {} folio(s) in the pool, {} optimized", name, r.folios, r.optimized);
    crate::info!(
        "HVO {}:   tail design {} (hvo_tails=), shared tail pages allocated now {}, in all {}",
        name,
        kcore::hvo_tails::tail_design().name(),
        s.shared_tail_pages,
        VMEMMAP.tail_pages().count()
    );
    crate::info!(
        "HVO {}:   frames freed: {} by the buddy free count, {} entries remapped: {}",
        name,
        r.buddy_delta,
        s.ptes_remapped,
        if agree { "agree" } else { "DISAGREE" }
    );
    crate::info!(
        "HVO {}:   vmemmap in use: {} KiB before, {} KiB after ({} KiB saved)",
        name,
        r.vmemmap_before / 1024,
        r.vmemmap_after / 1024,
        (r.vmemmap_before as i64 - r.vmemmap_after as i64) / 1024
    );
    crate::info!(
        "HVO {}:   splits {} taking {} page-table pages from the buddy allocator ({} counted by HVO)",
        name,
        s.splits,
        r.split_tables_delta,
        s.tables_allocated
    );
    crate::info!(
        "HVO {}:   head pages replaced {}, frames allocated {}, freed {}",
        name,
        s.head_pages_replaced,
        s.frames_allocated,
        s.frames_freed
    );
    crate::info!(
        "HVO {}:   TLBI {} ({} full flushes), DSB {}, ISB {}, entry writes {}",
        name,
        s.tlbi,
        s.tlbi_flush_all,
        s.dsb,
        s.isb,
        s.entry_writes
    );
    let per = r.ticks.checked_div(r.optimized).unwrap_or(0);
    crate::info!(
        "HVO {}:   {} timer ticks per folio ({} ns at {} Hz)",
        name,
        per,
        timer::ticks_to_ns(per),
        timer::frequency()
    );
    crate::info!(
        "HVO {}:   every pfn's head/tail answer: {} wrong; restore: {} of {} folios verified, {} frames taken back, {} skipped (optimized from boot: not restored, so their full vmemmap is never allocated)",
        name,
        r.wrong_answers,
        r.restore_ok,
        r.folios,
        -r.restore_delta,
        r.restore_skipped
    );
    crate::info!(
        "result: hvo size={} folios={} freed_pages={} tlbi={} splits={} restore_ok={} restore_skipped={}",
        name,
        r.folios,
        r.buddy_delta,
        s.tlbi,
        s.splits,
        r.restore_ok,
        r.restore_skipped
    );
    if !agree || r.wrong_answers != 0 || r.restore_ok + r.restore_skipped != r.folios {
        crate::error!("HVO {}: measurements inconsistent", name);
        return false;
    }
    true
}

/// Gives a pool folio back to the buddy allocator: its vmemmap is restored first (Linux's
/// `hugetlb_vmemmap_restore_folio()` before `update_and_free_hugetlb_folio()`). If the restore
/// cannot get its frames, the folio stays optimized and in the pool, and the error is returned.
pub fn dissolve(folio: Folio) -> Result<(), HvoError> {
    if let Err(e) = with_hvo(|_| {}, |hvo| hvo.restore_folio(&folio)) {
        crate::warn!(
            "hvo: cannot restore {:?} before dissolving: {:?}; kept in the pool",
            folio,
            e
        );
        HUGETLB.lock().enqueue(folio, &VMEMMAP);
        return Err(e);
    }
    let mut buddy = BUDDY.lock();
    if let Err(e) =
        HUGETLB.lock().free_pool_folio(folio, &mut buddy, &VMEMMAP, &mut kcore::hugetlb::NoHooks)
    {
        crate::error!("hvo: dissolving a restored folio failed: {:?}", e);
    }
    Ok(())
}
