//! MMU control that needs system registers: switching TTBR1 to the kernel map, turning the
//! TTBR0 walk off and on, and moving to another stack.

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{ReadWriteable, Readable, Writeable, TCR_EL1, TTBR0_EL1};
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
