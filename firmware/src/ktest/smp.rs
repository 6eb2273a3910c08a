//! Four-core foundation tests: every core up and running jobs, an IPI (SGI) round trip to each
//! core, the timer interrupt on a secondary, spin locks across cores (and what happens without
//! one), the lock's instructions, the per-core lock count, and the data-abort hook.

use super::TestResult;
use crate::arch::exception::{self, FaultAction, FaultInfo, TrapFrame};
use crate::arch::{cpu, probe};
use crate::drivers::{gic, timer};
use crate::percpu::{self, this_cpu};
use crate::smp::{self, SmpError};
use crate::sync::SpinMutex;
use crate::{ensure, ensure_eq, irq};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use kcore::layout::MAX_CPUS;

/// Waits until `cond` holds or one second of counter time passes; true if it held.
/// Waits for `cond` up to [`WAIT_S`] seconds of the guest's timer, which under TCG runs at the
/// host's pace: generous, since a loaded host may leave a vCPU thread unscheduled for a while.
fn wait_for(cond: impl Fn() -> bool) -> bool {
    let t0 = timer::ticks();
    while !cond() {
        if timer::ticks() - t0 > WAIT_S * timer::frequency() {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// See [`wait_for`].
const WAIT_S: u64 = 5;

static RAN_ON: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];

fn record_core(slot: u64) {
    RAN_ON[slot as usize].store(cpu::core_id() as u64, Ordering::Release);
}

static HOLD: AtomicBool = AtomicBool::new(false);

fn hold_until_released(_: u64) {
    while HOLD.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
}

// The core number is the job's target and indexes the result table.
#[allow(clippy::needless_range_loop)]
pub fn every_core_runs_a_job() -> TestResult {
    ensure_eq!(smp::cores_online(), MAX_CPUS);
    ensure_eq!(smp::online_mask(), 0b1111);
    for core in 1..MAX_CPUS {
        ensure!(percpu::cpu(core).online.load(Ordering::Acquire), "per-core data says online");
        let before = percpu::cpu(core).jobs_run.load(Ordering::Acquire);
        RAN_ON[core].store(u64::MAX, Ordering::Release);
        ensure_eq!(smp::launch(core, record_core, core as u64), Ok(()));
        smp::wait_idle(core);
        ensure_eq!(RAN_ON[core].load(Ordering::Acquire), core as u64);
        ensure_eq!(percpu::cpu(core).jobs_run.load(Ordering::Acquire), before + 1);
    }
    // Refusals: the boot core, a core that does not exist, a core still busy.
    ensure_eq!(smp::launch(0, record_core, 0), Err(SmpError::NotASecondary(0)));
    ensure_eq!(smp::launch(MAX_CPUS, record_core, 0), Err(SmpError::NoSuchCore(MAX_CPUS)));
    HOLD.store(true, Ordering::Release);
    ensure_eq!(smp::launch(1, hold_until_released, 0), Ok(()));
    let busy = smp::launch(1, record_core, 1);
    HOLD.store(false, Ordering::Release);
    smp::wait_idle(1);
    ensure_eq!(busy, Err(SmpError::Busy(1)));
    Ok(())
}

const SGI_PING: u8 = 1;
const SGI_PONG: u8 = 2;
static PINGS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static PONGS: AtomicU64 = AtomicU64::new(0);

fn on_ping() {
    PINGS[cpu::core_id()].fetch_add(1, Ordering::AcqRel);
    irq::send_sgi(1 << 0, SGI_PONG);
}

fn on_pong() {
    PONGS.fetch_add(1, Ordering::AcqRel);
}

pub fn sgi_round_trip_each_core() -> TestResult {
    ensure!(irq::set_sgi_handler(SGI_PING, on_ping).is_ok());
    ensure!(irq::set_sgi_handler(SGI_PONG, on_pong).is_ok());
    ensure!(irq::set_sgi_handler(16, on_pong).is_err(), "SGI numbers stop at 15");
    for core in 1..MAX_CPUS {
        let pings: [u64; MAX_CPUS] = core::array::from_fn(|c| PINGS[c].load(Ordering::Acquire));
        let pongs = PONGS.load(Ordering::Acquire);
        let sgis = percpu::cpu(core).sgis.load(Ordering::Acquire);
        let came_back = irq::with_irqs_enabled(|| {
            irq::send_sgi(1 << core, SGI_PING);
            wait_for(|| PONGS.load(Ordering::Acquire) > pongs)
        });
        ensure!(came_back, "the pong came back within WAIT_S seconds");
        ensure_eq!(PINGS[core].load(Ordering::Acquire), pings[core] + 1);
        ensure!(percpu::cpu(core).sgis.load(Ordering::Acquire) > sgis, "counted on the target");
        // Control: only the targeted core saw the ping.
        for other in (0..MAX_CPUS).filter(|&c| c != core) {
            ensure_eq!(PINGS[other].load(Ordering::Acquire), pings[other]);
        }
    }
    // Control: with IRQs masked on core 0 the pong stays pending and is not handled...
    let pongs = PONGS.load(Ordering::Acquire);
    irq::send_sgi(1 << 1, SGI_PING);
    ensure!(wait_for(|| PINGS[1].load(Ordering::Acquire) > 0), "pinged");
    timer::spin_ns(5_000_000);
    ensure_eq!(PONGS.load(Ordering::Acquire), pongs);
    // ...until they are unmasked.
    ensure!(irq::with_irqs_enabled(|| wait_for(|| PONGS.load(Ordering::Acquire) > pongs)));
    Ok(())
}

/// The core whose timer handler ran last, and how often handlers ran.
static TIMER_CORE: AtomicU64 = AtomicU64::new(u64::MAX);
/// Result of the job: 1 = the interrupt came, 2 = it did not.
static TIMER_JOB: AtomicU64 = AtomicU64::new(0);

fn on_timer() {
    timer::oneshot_disarm();
    TIMER_CORE.store(cpu::core_id() as u64, Ordering::Release);
}

fn timer_job(masked: u64) {
    let me = this_cpu();
    let before = me.timer_irqs.load(Ordering::Acquire);
    let f = timer::frequency();
    if masked != 0 {
        timer::oneshot_arm((f / 1000) as u32);
    } else {
        timer::irq_arm((f / 1000) as u32);
    }
    let t0 = timer::ticks();
    let mut got = false;
    // 1 ms armed; wait up to 100 ms for the interrupt (the job runs with IRQs unmasked).
    while timer::ticks() - t0 < f / 10 {
        if me.timer_irqs.load(Ordering::Acquire) > before {
            got = true;
            break;
        }
        core::hint::spin_loop();
    }
    let fired = timer::oneshot_fired();
    timer::oneshot_disarm();
    TIMER_JOB.store(
        match (got, fired) {
            (true, _) => 1,
            (false, true) => 2,
            (false, false) => 3,
        },
        Ordering::Release,
    );
}

pub fn timer_irq_on_secondary() -> TestResult {
    ensure!(gic::GIC.private_enabled(gic::TIMER_EL1_PHYS_INTID), "PPI 30 enabled on core 0");
    ensure!(irq::set_handler(gic::TIMER_EL1_PHYS_INTID, Some(on_timer)).is_ok());
    let core = 2;
    let boot_core_irqs = percpu::cpu(0).timer_irqs.load(Ordering::Acquire);
    let target_irqs = percpu::cpu(core).timer_irqs.load(Ordering::Acquire);
    TIMER_CORE.store(u64::MAX, Ordering::Release);
    TIMER_JOB.store(0, Ordering::Release);
    ensure_eq!(smp::launch(core, timer_job, 0), Ok(()));
    smp::wait_idle(core);
    let interrupted = TIMER_JOB.load(Ordering::Acquire);
    ensure_eq!(interrupted, 1);
    ensure_eq!(TIMER_CORE.load(Ordering::Acquire), core as u64);
    ensure_eq!(percpu::cpu(core).timer_irqs.load(Ordering::Acquire), target_irqs + 1);
    ensure_eq!(percpu::cpu(0).timer_irqs.load(Ordering::Acquire), boot_core_irqs);
    // Control: the same timer with its interrupt masked (CNTP_CTL.IMASK) fires (ISTATUS) but
    // raises nothing.
    TIMER_JOB.store(0, Ordering::Release);
    ensure_eq!(smp::launch(core, timer_job, 1), Ok(()));
    smp::wait_idle(core);
    ensure_eq!(TIMER_JOB.load(Ordering::Acquire), 2);
    ensure_eq!(percpu::cpu(core).timer_irqs.load(Ordering::Acquire), target_irqs + 1);
    ensure!(irq::set_handler(gic::TIMER_EL1_PHYS_INTID, None).is_ok());
    Ok(())
}

const ROUNDS: u64 = 2000;
/// Runs of the unlocked control at most (see `spin_mutex_across_cores`).
const CONTROL_TRIES: u32 = 8;
static COUNTER: SpinMutex<u64> = SpinMutex::new(0);
/// The same counter with no lock: read, wait, write back.
static RACY: AtomicU64 = AtomicU64::new(0);

/// Read-modify-write with a window: the value is read, 2 us pass, the value + 1 is written.
fn increment(locked: u64) {
    for _ in 0..ROUNDS {
        if locked != 0 {
            let mut g = COUNTER.lock();
            let v = *g;
            timer::spin_ns(2_000);
            *g = v + 1;
        } else {
            let v = RACY.load(Ordering::Relaxed);
            timer::spin_ns(2_000);
            RACY.store(v + 1, Ordering::Relaxed);
        }
    }
}

fn run_on_all(job: fn(u64), arg: u64) -> TestResult {
    for core in 1..MAX_CPUS {
        ensure_eq!(smp::launch(core, job, arg), Ok(()));
    }
    job(arg);
    for core in 1..MAX_CPUS {
        smp::wait_idle(core);
    }
    Ok(())
}

pub fn spin_mutex_across_cores() -> TestResult {
    *COUNTER.lock() = 0;
    run_on_all(increment, 1)?;
    let locked = *COUNTER.lock();
    // The control needs the cores to overlap, which the host's scheduling of QEMU's vCPU
    // threads decides: a loaded host may run them one after another. So it runs again (up to
    // CONTROL_TRIES times) until the overlap happens; the locked count above is judged once.
    let mut racy = 0;
    let mut tries = 0;
    while tries < CONTROL_TRIES {
        tries += 1;
        RACY.store(0, Ordering::Relaxed);
        run_on_all(increment, 0)?;
        racy = RACY.load(Ordering::Relaxed);
        if racy < MAX_CPUS as u64 * ROUNDS {
            break;
        }
    }
    crate::info!(
        "  4 cores x {} increments: {} with the lock, {} without ({} lost; control run {} time(s))",
        ROUNDS,
        locked,
        racy,
        MAX_CPUS as u64 * ROUNDS - racy,
        tries
    );
    ensure_eq!(locked, MAX_CPUS as u64 * ROUNDS);
    // Negative control: the same read-modify-write without the lock loses updates.
    ensure!(racy < MAX_CPUS as u64 * ROUNDS, "the unlocked control lost updates");
    Ok(())
}

pub fn locks_held_and_irqsave() -> TestResult {
    static A: SpinMutex<u32> = SpinMutex::new(0);
    static B: SpinMutex<u32> = SpinMutex::new(0);
    let me = this_cpu();
    let base = me.locks_held();
    {
        let _a = A.lock();
        ensure_eq!(me.locks_held(), base + 1);
        ensure!(A.try_lock().is_none(), "a held lock cannot be taken again");
        {
            let _b = B.lock_irqsave();
            ensure_eq!(me.locks_held(), base + 2);
            ensure!(cpu::irqs_masked(), "irqsave masks IRQs");
        }
        ensure_eq!(me.locks_held(), base + 1);
    }
    ensure_eq!(me.locks_held(), base);
    // irqsave restores the previous state: unmasked before -> unmasked after.
    let unmasked_after = irq::with_irqs_enabled(|| {
        drop(B.lock_irqsave());
        !cpu::irqs_masked()
    });
    ensure!(unmasked_after, "irqsave restored the unmasked state");
    ensure!(cpu::irqs_masked(), "core 0 runs the tests with IRQs masked");
    Ok(())
}

/// Decodes the instructions of `sync::raw_try_lock` up to its first RET: the lock must be an
/// exclusive pair with acquire (LDAXRB) and a store-exclusive (STXRB/STLXRB), and no LSE atomic
/// (CASB*, SWPB*, LD<op>B*: FEAT_LSE, absent on the Cortex-A72).
pub fn lock_codegen_exclusives() -> TestResult {
    let f = crate::sync::raw_try_lock as *const () as *const u32;
    let (mut ldaxr, mut stxr, mut lse) = (0, 0, 0);
    for i in 0..64 {
        // SAFETY: reading the kernel text (mapped readable) of a function and its neighbours.
        let insn = unsafe { core::ptr::read_volatile(f.add(i)) };
        if insn == 0xd65f_03c0 {
            break; // RET
        }
        // Load/store exclusive, byte: size=00, 001000, o2=0, L, o1=0, Rs, o0, Rt2, Rn, Rt.
        if insn & 0xffe0_fc00 == 0x0840_fc00 {
            ldaxr += 1; // LDAXRB (L=1, o0=1)
        }
        if insn & 0xffe0_7c00 == 0x0800_7c00 {
            stxr += 1; // STXRB / STLXRB (L=0)
        }
        // LSE: CAS{A}{L}B (0x08a07c00 family) and the atomic memory operations (size 00 111000 A R 1).
        if insn & 0xffa0_7c00 == 0x08a0_7c00 || insn & 0xff20_0c00 == 0x3820_0000 {
            lse += 1;
        }
    }
    crate::info!("  raw_try_lock: LDAXRB {}, STXRB/STLXRB {}, LSE atomics {}", ldaxr, stxr, lse);
    ensure!(ldaxr >= 1, "a load-acquire exclusive");
    ensure!(stxr >= 1, "a store exclusive");
    ensure_eq!(lse, 0);
    Ok(())
}

/// An address no table maps.
const HOLE: u64 = 0xFFFF_EE00_0000_2340;
static HOOK_CALLS: AtomicU64 = AtomicU64::new(0);

fn skip_hole_reads(frame: &mut TrapFrame, f: &FaultInfo) -> FaultAction {
    if f.far != HOLE {
        return FaultAction::Report;
    }
    HOOK_CALLS.fetch_add(1, Ordering::AcqRel);
    // Pretend the load returned a value: x1 is the probe's destination register.
    frame.x[1] = 0x600d;
    FaultAction::Fixup(f.elr + 4)
}

pub fn fault_hook_sees_data_aborts() -> TestResult {
    let calls = HOOK_CALLS.load(Ordering::Acquire);
    exception::set_fault_hook(Some(skip_hole_reads));
    // SAFETY: reads of an unmapped address; the hook (or the probe's fixup) resolves the fault.
    let hooked = unsafe { probe::read_u64(HOLE) };
    // SAFETY: as above; a different hole goes past the hook to the probe's fixup.
    let other = unsafe { probe::read_u64(HOLE + 0x1000) };
    exception::set_fault_hook(None);
    // SAFETY: as above, without a hook.
    let unhooked = unsafe { probe::read_u64(HOLE) };
    ensure_eq!(hooked.ok(), Some(0x600d));
    ensure_eq!(HOOK_CALLS.load(Ordering::Acquire), calls + 1);
    ensure!(other.is_err(), "the hook reports other addresses");
    ensure!(unhooked.is_err(), "without the hook the read faults");
    Ok(())
}

static IRQ_SHARED: SpinMutex<u64> = SpinMutex::new(0);
/// What the handler got: bit 0 = plain lock refused, bit 1 = irqsave lock taken.
static IRQ_LOCK_RESULT: AtomicU64 = AtomicU64::new(0);
const SGI_LOCK: u8 = 3;

fn lock_in_handler() {
    let plain_refused = IRQ_SHARED.lock_checked().is_err();
    let irqsave_ok = {
        let mut g = IRQ_SHARED.lock_irqsave();
        *g += 1;
        true
    };
    IRQ_LOCK_RESULT.store(u64::from(plain_refused) | u64::from(irqsave_ok) << 1, Ordering::Release);
}

pub fn plain_lock_refused_in_irq_handler() -> TestResult {
    ensure!(irq::set_sgi_handler(SGI_LOCK, lock_in_handler).is_ok());
    IRQ_LOCK_RESULT.store(0, Ordering::Release);
    let before = *IRQ_SHARED.lock();
    irq::send_sgi(1 << 3, SGI_LOCK);
    ensure!(wait_for(|| IRQ_LOCK_RESULT.load(Ordering::Acquire) != 0), "the handler ran");
    ensure_eq!(IRQ_LOCK_RESULT.load(Ordering::Acquire), 0b11);
    ensure_eq!(*IRQ_SHARED.lock(), before + 1);
    // Control: outside a handler the same plain lock is granted.
    ensure!(IRQ_SHARED.lock_checked().is_ok(), "granted outside an IRQ handler");
    Ok(())
}
