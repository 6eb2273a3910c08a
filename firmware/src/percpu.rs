//! Per-core data (Linux's `this_cpu_*` / `per_cpu()`): one [`PerCpu`] per core, indexed by the
//! core number from MPIDR_EL1.Aff0, in a static array so it exists from the first instruction
//! of every core (no allocation, no set-up order to respect).
//!
//! Every field is an atomic: a core mostly touches its own entry, but other cores read the
//! counters (boot report, tests, the HVO strategies) while it runs.

use crate::arch::cpu;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use kcore::layout::MAX_CPUS;

/// One core's data.
pub struct PerCpu {
    /// The core number (MPIDR_EL1.Aff0).
    pub id: usize,
    /// Spin locks this core holds now (`SpinMutex` lock/unlock keep it; fault-wait reads it).
    pub locks_held: AtomicU32,
    /// IRQ nesting depth: non-zero while this core runs an interrupt handler.
    pub in_irq: AtomicU32,
    /// The core has arrived and runs the kernel (set once by the core itself).
    pub online: AtomicBool,
    /// Interrupts taken (every acknowledged INTID, spurious ones excluded).
    pub irqs: AtomicU64,
    /// Software-generated interrupts (IPIs) received.
    pub sgis: AtomicU64,
    /// EL1 physical timer interrupts taken.
    pub timer_irqs: AtomicU64,
    /// Interrupts with no handler (acknowledged and ended, otherwise ignored).
    pub unhandled_irqs: AtomicU64,
    /// Jobs run through `smp::launch`.
    pub jobs_run: AtomicU64,
    /// Counter ticks from release to arrival (secondaries; 0 on the boot core).
    pub boot_ticks: AtomicU64,
    /// The last fault a probe on this core caught: ESR, FAR, ELR.
    pub(crate) probe_fault: [AtomicU64; 3],
}

impl PerCpu {
    const fn new(id: usize) -> Self {
        PerCpu {
            id,
            locks_held: AtomicU32::new(0),
            in_irq: AtomicU32::new(0),
            online: AtomicBool::new(false),
            irqs: AtomicU64::new(0),
            sgis: AtomicU64::new(0),
            timer_irqs: AtomicU64::new(0),
            unhandled_irqs: AtomicU64::new(0),
            jobs_run: AtomicU64::new(0),
            boot_ticks: AtomicU64::new(0),
            probe_fault: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Is this core inside an interrupt handler?
    pub fn in_irq(&self) -> bool {
        self.in_irq.load(Ordering::Relaxed) != 0
    }

    /// Spin locks held now.
    pub fn locks_held(&self) -> u32 {
        self.locks_held.load(Ordering::Relaxed)
    }
}

static CPUS: [PerCpu; MAX_CPUS] = [PerCpu::new(0), PerCpu::new(1), PerCpu::new(2), PerCpu::new(3)];

/// The running core's data.
#[inline]
pub fn this_cpu() -> &'static PerCpu {
    // MPIDR Aff0 is 0..=3 on the BCM2711; anything else is folded onto the last entry rather
    // than indexing out of bounds (such a core is never released by `smp`).
    &CPUS[cpu::core_id().min(MAX_CPUS - 1)]
}

/// Core `n`'s data.
///
/// # Panics
/// If `n >= MAX_CPUS`.
pub fn cpu(n: usize) -> &'static PerCpu {
    &CPUS[n]
}

/// Every core's data, in core order.
pub fn all() -> &'static [PerCpu; MAX_CPUS] {
    &CPUS
}
