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

/// The physical address `va` translates to now for a read (`write`: a write) at EL1, by the
/// stage-1 translation instructions (AT S1E1R / S1E1W), `None` while it does not translate.
pub fn translate_el1(va: u64, write: bool) -> Option<u64> {
    let par: u64;
    // SAFETY: address translation instructions only write PAR_EL1, read back here; no memory is
    // accessed. ISB: PAR_EL1 is updated before it is read (ARM ARM C5.5, "AT" instructions).
    unsafe {
        if write {
            core::arch::asm!("at s1e1w, {0}", "isb", "mrs {1}, par_el1", in(reg) va, out(reg) par, options(nostack));
        } else {
            core::arch::asm!("at s1e1r, {0}", "isb", "mrs {1}, par_el1", in(reg) va, out(reg) par, options(nostack));
        }
    }
    // PAR_EL1.F (bit 0) clear: PA in bits 47:12.
    (par & 1 == 0).then_some(par & 0x0000_FFFF_FFFF_F000)
}
