//! AArch64-specific code: the entry and exception vectors (assembly), exception handling, fault
//! probes, CPU helpers and semihosting.

pub mod cpu;
pub mod exception;
pub mod mmu;
pub mod probe;
pub mod semihosting;

core::arch::global_asm!(include_str!("boot.s"));
core::arch::global_asm!(include_str!("vectors.s"));
core::arch::global_asm!(include_str!("mmu.s"));
core::arch::global_asm!(include_str!("user.s"));
