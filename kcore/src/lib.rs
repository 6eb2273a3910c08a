//! `kcore`: the architecture-neutral core of pi4-hvo.
//!
//! Everything here is `no_std`, builds for `aarch64-unknown-none` inside the firmware, and is
//! tested on the host with `cargo test -p kcore`. Instructions that only exist on AArch64
//! (barriers, TLB maintenance) sit behind `cfg(target_arch = "aarch64")` in [`tlb`], with a
//! recording backend for the host.
//!
//! One concept per file:
//! - [`addr`], [`layout`], [`phys`]: address types, the kernel address-space layout, and how
//!   physical memory is reached.
//! - [`esr`], [`cmdline`], [`bootinfo`]: exception syndrome decoding, the kernel command line,
//!   ATAGs and device trees.
//! - [`pgtable`], [`tlb`], [`bbm_check`], [`mapper`], [`pagewalk`], [`mm`], [`ptdump`]: ARMv8
//!   translation tables, barriers and TLB maintenance backends, the break-before-make checker
//!   and online auditor, building maps, the one page walker, address spaces and their
//!   `mmap_lock` and `page_table_lock`, and the page-table dump.
//! - [`bbm_sync`]: the hooks by which HVO coordinates its break windows with other CPUs.
//! - [`memblock`], [`page`], [`vmemmap`], [`buddy`], [`hugetlb`], [`hugetlb_vmemmap`]: early
//!   frame allocation, the 64-byte page descriptor, the virtually mapped memmap, the buddy
//!   allocator, HugeTLB folios and the HugeTLB vmemmap optimization.
//! - [`lineedit`], [`shell`]: the serial console's line editing and its command parser.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod addr;
pub mod bbm_check;
pub mod bbm_sync;
pub mod bootinfo;
pub mod buddy;
pub mod cmdline;
pub mod dt_console;
pub mod esr;
pub mod hugetlb;
pub mod hugetlb_vmemmap;
pub mod hvo_phase;
pub mod hvo_tails;
pub mod layout;
pub mod lineedit;
pub mod mapper;
pub mod memblock;
pub mod mm;
pub mod pa_range;
pub mod page;
pub mod pagewalk;
pub mod pgtable;
pub mod phys;
pub mod ptdump;
pub mod shell;
pub mod tlb;
pub mod vmemmap;
