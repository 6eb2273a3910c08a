//! pi4-hvo firmware: boot, exceptions, drivers, the kernel address space and on-target tests.
//!
//! A board crate under `boards/` links this library into an image and supplies the wiring
//! ([`board::Board`]) through [`board_entry!`]. The architecture-neutral memory-management code
//! lives in the `kcore` crate, shared with the host tests.
#![cfg_attr(target_arch = "aarch64", no_std)]
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]
// The firmware only exists for AArch64; on the host the crate is empty so workspace-wide host
// commands (clippy, doc) pass over it.
#![cfg(target_arch = "aarch64")]

#[macro_use]
pub mod log;
#[cfg(all(feature = "defmt-log", not(feature = "plain-log")))]
pub use defmt::{debug, error, info, warn};
pub mod arch;
pub mod bench;
pub mod bench_demote;
pub mod bench_smp;
pub mod bench_tails;
pub mod board;
pub mod bootstate;
pub mod console;
pub mod demote;
pub mod devicetree;
pub mod drivers;
pub mod hvo;
pub mod hvo_smp;
pub mod init;
pub mod irq;
pub mod kernel_map;
pub mod ktest;
pub mod memory;
mod panic;
pub mod percpu;
pub mod ptdump;
pub mod smp;
pub mod sync;
pub mod user;
