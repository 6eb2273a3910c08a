//! Small CPU helpers: identification, interrupt masking, idling.

use aarch64_cpu::registers::{Readable, Writeable, DAIF, ID_AA64MMFR1_EL1, MPIDR_EL1};

/// This core's number (MPIDR_EL1.Aff0: 0..=3 on the Cortex-A72 cluster of the BCM2711).
#[inline]
pub fn core_id() -> usize {
    (MPIDR_EL1.get() & 0xff) as usize
}

/// Masks IRQ, FIQ, SError and debug exceptions; returns the previous DAIF for [`restore_irqs`].
#[inline]
pub fn mask_irqs() -> u64 {
    let old = DAIF.get();
    DAIF.set(0b1111 << 6);
    old
}

/// Restores a DAIF value saved by [`mask_irqs`].
#[inline]
pub fn restore_irqs(daif: u64) {
    DAIF.set(daif);
}

/// Parks this core for good.
pub fn park() -> ! {
    loop {
        aarch64_cpu::asm::wfe();
    }
}

/// Does the CPU implement Privileged Access Never (ID_AA64MMFR1_EL1.PAN, ARMv8.1)? The
/// Cortex-A72 does not; the firmware then relies on its page tables alone (user pages are PXN,
/// and the kernel touches user memory only in `copy_from_user`).
pub fn has_pan() -> bool {
    (ID_AA64MMFR1_EL1.get() >> 20) & 0xf != 0
}

/// Unmasks IRQs (PSTATE.I) on this core; FIQ, SError and debug stay as they are.
#[inline]
pub fn enable_irqs() {
    // SAFETY: DAIFClr only changes this core's interrupt masks.
    unsafe { core::arch::asm!("msr daifclr, #2", options(nostack)) };
}

/// Are IRQs masked on this core?
#[inline]
pub fn irqs_masked() -> bool {
    DAIF.get() & (1 << 7) != 0
}

/// The smallest data-cache line size in bytes (CTR_EL0.DminLine, log2 of words).
#[inline]
pub fn dcache_line_size() -> u64 {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects (EL1 may always read it).
    unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    4 << ((ctr >> 16) & 0xf)
}
