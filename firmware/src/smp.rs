//! The other cores: releasing cores 1-3 from the spin table, their arrival, and running jobs on
//! them.
//!
//! Bring-up (Linux's `smp_spin_table.c` + `__cpu_up`): for each core, the boot core writes the
//! core's stack and the kernel map's root into `secondary_boot_data` and cleans it to the point of
//! coherency (the new core reads it with its MMU and caches off), writes the physical address of
//! `secondary_entry` (`boot.s`) into the core's release address, cleans that too, and sends an
//! event (SEV). The core drops from EL2 to EL1, turns its MMU on through the boot identity map
//! with TTBR1 on the live kernel map, moves to its guarded stack in the higher half and calls
//! [`secondary_main`]: its vectors, TTBR0 walks off, its GIC CPU interface, its timer, then it
//! marks itself online and idles waiting for a job. A core that does not arrive within
//! [`ARRIVAL_TIMEOUT_MS`] is reported and left out; if it arrives later it parks for good.
//!
//! Jobs: [`launch`] hands a core `job(arg)`; the core runs it with IRQs unmasked and goes back to
//! idle; [`wait_idle`] waits for that. The idle loop itself runs with IRQs unmasked too, so IPIs
//! reach idle cores.

use crate::arch::cpu;
use crate::bootstate::{self, KernelMap};
use crate::drivers::gic::GIC;
use crate::drivers::timer;
use crate::percpu::{self, this_cpu};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use kcore::layout::{KIMAGE_VOFFSET, MAX_CPUS, PAGE_OFFSET};

/// How long the boot core waits for each core to arrive. A Cortex-A72 arrives in microseconds;
/// the margin is for QEMU, whose vCPU threads a loaded host may leave unscheduled for a while
/// (a core given up on is lost for the whole boot, so waiting longer is the cheaper mistake).
pub const ARRIVAL_TIMEOUT_MS: u64 = 5000;

/// What a new core reads with its MMU off (layout shared with `boot.s`).
#[repr(C)]
pub struct SecondaryBootData {
    /// TTBR1: the kernel map's root.
    ttbr1: AtomicU64,
    /// Each core's stack top (0: not released).
    stack_tops: [AtomicU64; MAX_CPUS],
}

#[export_name = "secondary_boot_data"]
static SECONDARY_BOOT_DATA: SecondaryBootData = SecondaryBootData {
    ttbr1: AtomicU64::new(0),
    stack_tops: [const { AtomicU64::new(0) }; MAX_CPUS],
};

/// Cores online (bit n = core n).
static ONLINE: AtomicU8 = AtomicU8::new(0);
/// Arrival handshake per core: the core moves RELEASED to ARRIVED, the boot core moves it to
/// GAVE_UP on timeout; whoever loses the compare-and-swap knows what the other decided.
static ARRIVAL: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(NOT_RELEASED) }; MAX_CPUS];
const NOT_RELEASED: u8 = 0;
const RELEASED: u8 = 1;
const ARRIVED: u8 = 2;
const GAVE_UP: u8 = 3;
/// The TTBR0 root a secondary installs when it stops TTBR0 walks (the kernel map's empty root).
static EMPTY_ROOT: AtomicU64 = AtomicU64::new(0);

const IDLE: u32 = 0;
const PENDING: u32 = 1;
const RUNNING: u32 = 2;

/// One core's job slot.
struct JobSlot {
    state: AtomicU32,
    job: AtomicU64,
    arg: AtomicU64,
}

static JOBS: [JobSlot; MAX_CPUS] = [const {
    JobSlot { state: AtomicU32::new(IDLE), job: AtomicU64::new(0), arg: AtomicU64::new(0) }
}; MAX_CPUS];

/// Why a job could not be launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub enum SmpError {
    /// No such core.
    NoSuchCore(usize),
    /// The core is the caller itself (or the boot core, which runs no job loop).
    NotASecondary(usize),
    /// The core is not online.
    Offline(usize),
    /// The core still runs (or has not yet taken) an earlier job.
    Busy(usize),
}

/// Cores online, bit n = core n (the boot core included once it is set up).
pub fn online_mask() -> u8 {
    ONLINE.load(Ordering::Acquire)
}

/// Number of cores online.
pub fn cores_online() -> usize {
    online_mask().count_ones() as usize
}

/// Is core `n` online?
pub fn is_online(n: usize) -> bool {
    n < MAX_CPUS && online_mask() & (1 << n) != 0
}

/// Runs `job(arg)` on core `core` (1..=3), which must be online and idle. Returns at once; the
/// job runs with IRQs unmasked. [`wait_idle`] waits for it to finish.
pub fn launch(core: usize, job: fn(u64), arg: u64) -> Result<(), SmpError> {
    if core >= MAX_CPUS {
        return Err(SmpError::NoSuchCore(core));
    }
    if core == 0 || core == cpu::core_id() {
        return Err(SmpError::NotASecondary(core));
    }
    if !is_online(core) {
        return Err(SmpError::Offline(core));
    }
    let slot = &JOBS[core];
    if slot.state.load(Ordering::Acquire) != IDLE {
        return Err(SmpError::Busy(core));
    }
    slot.job.store(job as usize as u64, Ordering::Relaxed);
    slot.arg.store(arg, Ordering::Relaxed);
    // Release: the job and its argument (and whatever the job will read) are visible before the
    // core can see PENDING.
    slot.state.store(PENDING, Ordering::Release);
    // DSB then SEV: the store is visible to the other core before the event wakes it from WFE
    // (ARM ARM D1.6.1: SEV is not ordered by DMB; Linux's spin-table release does dsb + sev).
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::ISH);
    aarch64_cpu::asm::sev();
    Ok(())
}

/// Waits until core `core` has finished its job (returns at once if it has none).
pub fn wait_idle(core: usize) {
    let Some(slot) = JOBS.get(core) else { return };
    while is_online(core) && slot.state.load(Ordering::Acquire) != IDLE {
        core::hint::spin_loop();
    }
}

/// Is core `core` idle (no job pending or running)?
pub fn is_idle(core: usize) -> bool {
    JOBS.get(core).is_none_or(|s| s.state.load(Ordering::Acquire) == IDLE)
}

/// Cleans the cache lines holding `[va, va + len)` to the point of coherency (DC CIVAC), so a
/// core reading with its caches off sees the data; DSB SY waits for completion (ARM ARM D7.5.9:
/// cache maintenance is complete only after a DSB).
fn clean_to_poc(va: u64, len: u64) {
    let line = cpu::dcache_line_size();
    let mut a = va & !(line - 1);
    while a < va + len {
        // SAFETY: cache maintenance of a mapped address changes no memory contents.
        unsafe { core::arch::asm!("dc civac, {}", in(reg) a, options(nostack)) };
        a += line;
    }
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::SY);
}

/// Brings up cores 1..=3 through the spin table and reports each. Called once on the boot core,
/// with the kernel map live and the GIC distributor set up.
// The core number indexes several per-core tables and names the core in the report.
#[allow(clippy::needless_range_loop)]
pub fn boot_secondaries(km: &KernelMap) {
    extern "C" {
        static secondary_entry: u8;
    }
    ONLINE.fetch_or(1 << cpu::core_id(), Ordering::AcqRel);
    percpu::this_cpu().online.store(true, Ordering::Release);
    EMPTY_ROOT.store(km.empty_root.as_u64(), Ordering::Release);
    let board = bootstate::board();
    let entry_pa = core::ptr::addr_of!(secondary_entry) as u64 - KIMAGE_VOFFSET;
    SECONDARY_BOOT_DATA.ttbr1.store(km.root.as_u64(), Ordering::Relaxed);
    let freq = timer::frequency();
    for core in 1..MAX_CPUS {
        let release = board.spin_table[core - 1];
        SECONDARY_BOOT_DATA.stack_tops[core].store(km.stack_tops[core], Ordering::Relaxed);
        clean_to_poc(
            core::ptr::addr_of!(SECONDARY_BOOT_DATA) as u64,
            core::mem::size_of::<SecondaryBootData>() as u64,
        );
        let t0 = timer::ticks();
        percpu::cpu(core).boot_ticks.store(t0, Ordering::Relaxed);
        ARRIVAL[core].store(RELEASED, Ordering::Release);
        // The release address is in the firmware's reserved first page, mapped by the linear
        // map. Write, clean to PoC (the waiting core reads with its caches off), DSB, SEV: the
        // spin-table protocol of Linux's smp_spin_table_cpu_prepare.
        let slot = (PAGE_OFFSET + release) as *mut u64;
        // SAFETY: the spin table lies in RAM reserved for the boot stub, reached through the
        // linear map; only this core writes it, and the waiting core only reads it.
        unsafe { core::ptr::write_volatile(slot, entry_pa) };
        clean_to_poc(slot as u64, 8);
        aarch64_cpu::asm::sev();
        let deadline = freq * ARRIVAL_TIMEOUT_MS / 1000;
        while !is_online(core) && timer::ticks() - t0 < deadline {
            core::hint::spin_loop();
        }
        let gave_up = !is_online(core)
            && ARRIVAL[core]
                .compare_exchange(RELEASED, GAVE_UP, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        if !gave_up {
            // Arrived, possibly just after the deadline: give it as long again to finish its
            // set-up (a few register writes) and come online.
            let t1 = timer::ticks();
            while !is_online(core) && timer::ticks() - t1 < deadline {
                core::hint::spin_loop();
            }
        }
        if !gave_up && !is_online(core) {
            crate::warn!(
                "SMP: core {} arrived but did not come online within {} ms; carrying on without it",
                core,
                ARRIVAL_TIMEOUT_MS
            );
        } else if !gave_up {
            let ticks = percpu::cpu(core).boot_ticks.load(Ordering::Acquire);
            crate::info!(
                "SMP: core {} up at EL1 (released at {:#x}, arrived in {} us)",
                core,
                release,
                timer::ticks_to_ns(ticks) / 1000
            );
        } else {
            crate::warn!(
                "SMP: core {} did not arrive within {} ms (release address {:#x}); carrying on without it",
                core,
                ARRIVAL_TIMEOUT_MS,
                release
            );
        }
    }
    crate::info!(
        "SMP: {} of {} cores online (mask {:#x})",
        cores_online(),
        MAX_CPUS,
        online_mask()
    );
}

/// The first Rust code of cores 1-3: on their own stack, MMU on (TTBR0 still the boot identity
/// map), IRQs masked.
#[no_mangle]
extern "C" fn secondary_main(core: u64) -> ! {
    let core = core as usize;
    crate::arch::exception::install();
    crate::arch::mmu::disable_ttbr0_local(kcore::addr::PhysAddr(
        EMPTY_ROOT.load(Ordering::Acquire),
    ));
    let me = this_cpu();
    if core >= MAX_CPUS
        || me.id != core
        || ARRIVAL[core]
            .compare_exchange(RELEASED, ARRIVED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    {
        // Given up on (too late), or not a core we released: stay out of the way for good.
        cpu::park();
    }
    timer::oneshot_disarm();
    GIC.init_this_cpu();
    let t0 = me.boot_ticks.load(Ordering::Relaxed);
    me.boot_ticks.store(timer::ticks().wrapping_sub(t0), Ordering::Relaxed);
    me.online.store(true, Ordering::Release);
    ONLINE.fetch_or(1 << core, Ordering::AcqRel);
    idle_loop(core)
}

/// Waits for jobs, IRQs unmasked; runs each and goes back to waiting.
fn idle_loop(core: usize) -> ! {
    let slot = &JOBS[core];
    cpu::enable_irqs();
    loop {
        if slot.state.load(Ordering::Acquire) == PENDING {
            slot.state.store(RUNNING, Ordering::Relaxed);
            let job = slot.job.load(Ordering::Relaxed);
            let arg = slot.arg.load(Ordering::Relaxed);
            // SAFETY: `launch` stored a `fn(u64)` here before publishing PENDING.
            let f: fn(u64) = unsafe { core::mem::transmute::<usize, fn(u64)>(job as usize) };
            f(arg);
            // A job must not leave IRQs masked or locks held behind it.
            cpu::enable_irqs();
            this_cpu().jobs_run.fetch_add(1, Ordering::Relaxed);
            slot.state.store(IDLE, Ordering::Release);
        } else {
            // WFE: woken by `launch`'s SEV, or by an interrupt.
            aarch64_cpu::asm::wfe();
        }
    }
}

/// Is the calling core a secondary that has been released (not the boot core)?
pub fn on_secondary() -> bool {
    cpu::core_id() != 0
}
