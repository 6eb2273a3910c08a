//! MMU control that needs system registers: switching TTBR1 to the kernel map, turning the
//! TTBR0 walk off and on, and moving to another stack.

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{
    ReadWriteable, Readable, Writeable, ID_AA64MMFR0_EL1, MAIR_EL1, SCTLR_EL1, TCR_EL1, TTBR0_EL1,
};
use kcore::addr::PhysAddr;

extern "C" {
    fn switch_ttbr1(new_ttbr1: u64, empty_root: u64);
    fn call_on_stack(stack_top: u64, f: extern "C" fn(u64) -> !, arg: u64) -> !;
}

/// Moves the kernel (TTBR1) onto the tables at `root`.
///
/// # Safety
/// `root` must be a complete kernel map that maps the running image, its stack and data at the
/// same virtual addresses, `empty_root` a zeroed table; the identity map (TTBR0) must still map
/// the image's physical addresses executable.
pub unsafe fn replace_ttbr1(root: PhysAddr, empty_root: PhysAddr) {
    // SAFETY: upheld by the caller as documented; the routine runs from the identity map.
    unsafe { switch_ttbr1(root.as_u64(), empty_root.as_u64()) }
}

/// Stops all TTBR0 walks (EPD0) and drops the identity map's translations.
pub fn disable_ttbr0(empty_root: PhysAddr) {
    TTBR0_EL1.set(empty_root.as_u64());
    TCR_EL1.modify(TCR_EL1::EPD0::DisableTTBR0Walks);
    barrier::isb(barrier::SY);
    // The identity map's translations must not outlive it: TLBI VMALLE1IS removes them on every
    // core, the DSB waits for completion, the ISB resynchronises this core (ARM ARM D8.13.4).
    // SAFETY: TLB invalidation has no memory-safety effect.
    unsafe { core::arch::asm!("tlbi vmalle1is", options(nostack)) };
    barrier::dsb(barrier::ISH);
    barrier::isb(barrier::SY);
}

/// Stops TTBR0 walks on this core only (a core just arrived through the boot identity map):
/// the identity translations are in this core's TLB alone, so a local TLBI VMALLE1 and DSB NSH
/// suffice (ARM ARM D8.13: a non-broadcast TLBI affects only the executing PE).
pub fn disable_ttbr0_local(empty_root: PhysAddr) {
    TTBR0_EL1.set(empty_root.as_u64());
    TCR_EL1.modify(TCR_EL1::EPD0::DisableTTBR0Walks);
    barrier::isb(barrier::SY);
    // SAFETY: TLB invalidation has no memory-safety effect.
    unsafe { core::arch::asm!("tlbi vmalle1", options(nostack)) };
    barrier::dsb(barrier::NSH);
    barrier::isb(barrier::SY);
}

/// Installs a user address space in TTBR0 with its ASID and enables TTBR0 walks.
pub fn set_ttbr0(root: PhysAddr, asid: u16) {
    TTBR0_EL1.set(root.as_u64() | (u64::from(asid) << 48));
    TCR_EL1.modify(TCR_EL1::EPD0::EnableTTBR0Walks);
    // Synchronise the system-register writes before the next EL0 access (ARM ARM D8.2.x:
    // changes to translation registers take effect after a context synchronisation event).
    barrier::isb(barrier::SY);
}

/// Is TTBR0 walking enabled?
pub fn ttbr0_enabled() -> bool {
    !TCR_EL1.matches_all(TCR_EL1::EPD0::DisableTTBR0Walks)
}

/// Continues on a new stack by calling `f(arg)`; never returns.
///
/// # Safety
/// `stack_top` must be the 16-byte-aligned top of a mapped, writable stack nothing else uses.
pub unsafe fn run_on_stack(stack_top: u64, f: extern "C" fn(u64) -> !, arg: u64) -> ! {
    // SAFETY: upheld by the caller.
    unsafe { call_on_stack(stack_top, f, arg) }
}

/// Why the translation regime is not what the kernel map needs.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub enum MmuConfigError {
    /// The MMU, data cache or instruction cache is off.
    NotEnabled {
        /// SCTLR_EL1.
        sctlr: u64,
    },
}

/// Programs the translation regime the kernel map is built for, through typed register fields:
/// MAIR_EL1 from `kcore::pgtable::MAIR_VALUE` (index 0 Normal write-back, index 1
/// Device-nGnRE), TCR_EL1 for 48-bit VAs with 4 KiB granules in both halves, inner-shareable
/// write-back walks and the CPU's physical address size, and checks SCTLR_EL1. The boot code
/// programmed the same values in assembly to turn the MMU on; rewriting identical values changes
/// no translation, and the ISB makes the writes take effect for what follows (ARM ARM D8.2:
/// translation-register changes take effect after a context synchronisation event). TTBR0
/// walks keep their current setting.
pub fn configure() -> Result<(), MmuConfigError> {
    MAIR_EL1.set(kcore::pgtable::MAIR_VALUE);
    let pa_range = ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange);
    let epd0 = TCR_EL1.read(TCR_EL1::EPD0);
    TCR_EL1.write(
        TCR_EL1::T0SZ.val(16)
            + TCR_EL1::T1SZ.val(16)
            + TCR_EL1::TG0::KiB_4
            + TCR_EL1::TG1::KiB_4
            + TCR_EL1::SH0::Inner
            + TCR_EL1::SH1::Inner
            + TCR_EL1::IRGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL1::ORGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL1::IRGN1::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL1::ORGN1::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL1::EPD0.val(epd0)
            + TCR_EL1::EPD1::EnableTTBR1Walks
            + TCR_EL1::A1::TTBR0
            + TCR_EL1::IPS.val(pa_range.min(0b101)),
    );
    barrier::isb(barrier::SY);
    if !SCTLR_EL1
        .matches_all(SCTLR_EL1::M::Enable + SCTLR_EL1::C::Cacheable + SCTLR_EL1::I::Cacheable)
    {
        return Err(MmuConfigError::NotEnabled { sctlr: SCTLR_EL1.get() });
    }
    Ok(())
}
