//! Benchmark mode, four cores: the cost of an optimize/restore cycle under each break-before-make
//! strategy with the reader cores running, and what the readers lost (issue 12).
//!
//! Each strategy runs the four-core stress test (`hvo_smp::stress::run`: readers of both kinds
//! on cores 1-3, core 0 optimizes, verifies every pfn, restores) on [`FOLIOS`] fresh 2 MiB
//! folios for [`CYCLES`] cycles; then the same readers run on the same number of folios for as
//! long with core 0 only polling the counter (no HVO): the readers' baseline. Lines:
//! `bench: smp strategy=S readers=N folios=F cycles=C run_ticks=T hvo_ticks_per_cycle=H ops=O
//! ipis=I held_ticks=K faults_waited=W unexpected_faults=U wrong=X leaked=L` and
//! `bench: smp strategy=baseline readers=N folios=F run_ticks=T ops=O wrong=X`.
//!
//! Booted with `bench hvo_bbm=S` (any S), without `-icount`: under `-icount` QEMU runs the
//! four vCPUs round-robin in one host thread, each for a slice of up to 100 ms of virtual time
//! (QEMU's round-robin kick period), so a core waiting for another (a grace period, a
//! rendezvous, a reader's fault-wait) waits whole slices of the others' spinning, and a run
//! takes minutes of host time per cycle while saying nothing about interleaved cores. Without
//! `-icount` the vCPUs are host threads and the counter follows host time: these figures are
//! ticks of the 62.5 MHz counter, not instructions, and move from run to run with the host's
//! load.

use crate::drivers::timer;
use crate::hvo::{BATCH, OWNER_REFS};
use crate::hvo_smp::stress::{self, StressConfig};
use crate::hvo_smp::{readers, HvoBbm, COUNTERS};
use crate::memory::{BUDDY, HUGETLB, VMEMMAP};
use heapless::Vec;
use kcore::hugetlb::{Folio, HugePageSize, NoHooks};
use kcore::layout::MAX_CPUS;

/// 2 MiB folios per strategy (as the on-target stress tests).
pub const FOLIOS: usize = 16;
/// Optimize / verify / restore cycles per strategy.
pub const CYCLES: u64 = 2;

/// One strategy's figures, printed as a `bench: smp` line.
fn report(s: &str, r: &stress::StressResult) {
    let c = &r.counters;
    crate::info!(
        "bench: smp strategy={} readers={} folios={} cycles={} run_ticks={} hvo_ticks_per_cycle={} ops={} ipis={} held_ticks={} faults_waited={} unexpected_faults={} wrong={} leaked={}",
        s,
        r.readers,
        r.folios.0,
        r.cycles,
        r.ticks_per_cycle * r.cycles,
        r.hvo_ticks_per_cycle,
        r.ops,
        c.ipis,
        c.held_ticks,
        c.faults_waited,
        c.unexpected_faults,
        r.wrong,
        r.leaked
    );
}

/// The readers alone on `n` fresh 2 MiB folios for `ticks` counter ticks, launched as the
/// stress test launches them (the highest reader core holding the reader lock). Returns
/// (readers, ops, wrong, ticks run), or `None` if no folio or no reader core could be had.
fn baseline(n: usize, ticks: u64) -> Option<(u32, u64, u64, u64)> {
    let mut folios: Vec<Folio, BATCH> = Vec::new();
    while folios.len() < n {
        let f = {
            let mut buddy = BUDDY.lock();
            HUGETLB.lock().alloc_pool_folio(
                HugePageSize::Size2M,
                &mut buddy,
                &VMEMMAP,
                &mut NoHooks,
            )
        };
        let Ok(f) = f else { break };
        // The owner's reference, as the stress test holds it, so speculative gets succeed.
        VMEMMAP.page(f.head_pfn()).set_refcount(OWNER_REFS);
        if let Err(f) = folios.push(f) {
            release(f);
            break;
        }
    }
    let mask = crate::smp::online_mask() & !(1 << crate::percpu::this_cpu().id);
    let mut out = None;
    if !folios.is_empty() && mask != 0 {
        readers::publish(folios.iter());
        let top = 7 - mask.leading_zeros() as usize;
        let mut launched = 0;
        for core in 0..MAX_CPUS {
            if mask & (1 << core) != 0 {
                let arg = if core == top && mask.count_ones() > 1 { readers::HOLD_LOCK } else { 0 };
                if crate::smp::launch(core, readers::job, arg).is_ok() {
                    launched += 1;
                }
            }
        }
        let t0 = timer::ticks();
        while readers::running() < launched && timer::ticks() - t0 < timer::frequency() {
            core::hint::spin_loop();
        }
        // Counted from here, as the stress run counts from its first operation.
        readers::publish(folios.iter());
        let t0 = timer::ticks();
        while timer::ticks() - t0 < ticks {
            core::hint::spin_loop();
        }
        let (_, _, _, wrong, ops) = readers::totals();
        let ran = timer::ticks() - t0;
        readers::stop();
        for core in 0..MAX_CPUS {
            if mask & (1 << core) != 0 {
                crate::smp::wait_idle(core);
            }
        }
        out = Some((launched, ops, wrong, ran));
    }
    for f in folios {
        release(f);
    }
    out
}

/// Gives a fresh folio (owner's reference held, never optimized) back to the buddy allocator.
fn release(f: Folio) {
    let head = f.head(&VMEMMAP);
    if !head.ref_freeze(OWNER_REFS) {
        crate::error!("bench: smp: folio {:#x} has extra references", f.head_pfn().0);
        return;
    }
    let mut buddy = BUDDY.lock();
    if HUGETLB.lock().free_pool_folio(f, &mut buddy, &VMEMMAP, &mut NoHooks).is_err() {
        crate::error!("bench: smp: a folio could not be given back");
    }
}

/// Runs every strategy and the baseline; `true` if each ran, and every safe strategy was clean
/// (`none` may show unexpected faults: it is the negative control).
pub fn run() -> bool {
    let mut ok = true;
    let mut longest = 0;
    let mut folios = 0;
    for strategy in [HvoBbm::None, HvoBbm::StopMachine, HvoBbm::PauseWindow, HvoBbm::FaultWait] {
        let cfg = StressConfig {
            max_2m: FOLIOS,
            max_1g: 0,
            top_up: true,
            ..StressConfig::new(strategy, CYCLES)
        };
        match stress::run(&cfg) {
            Ok(r) => {
                report(strategy.name(), &r);
                longest = longest.max(r.ticks_per_cycle * r.cycles);
                folios = folios.max(r.folios.0 as usize);
                let clean = strategy == HvoBbm::None || r.clean();
                if !clean {
                    crate::error!("bench: smp strategy={}: the run was not clean", strategy.name());
                    ok = false;
                }
            }
            Err(e) => {
                crate::error!("bench: smp strategy={}: {:?}", strategy.name(), e);
                ok = false;
            }
        }
    }
    COUNTERS.reset();
    match baseline(folios, longest) {
        Some((n, ops, wrong, ticks)) => {
            crate::info!(
                "bench: smp strategy=baseline readers={} folios={} run_ticks={} ops={} wrong={}",
                n,
                folios,
                ticks,
                ops,
                wrong
            );
            ok &= wrong == 0;
        }
        None => {
            crate::error!("bench: smp baseline: no folio or no reader core");
            ok = false;
        }
    }
    ok
}
