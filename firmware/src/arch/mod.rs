//! Architecture code (`_arch` in the rust-raspberrypi-OS-tutorials sense): only AArch64 here.

pub mod aarch64;

pub use aarch64::{cpu, exception, mmu, probe, semihosting};
