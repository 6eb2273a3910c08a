//! The kernel virtual address space, in one place.
//!
//! 48-bit virtual addresses with the 4 KiB granule: TTBR0 covers `0..2^48` (boot identity map,
//! then user address spaces), TTBR1 covers `0xFFFF_0000_0000_0000..` (the kernel map, `init_mm`).
//! The layout follows Linux arm64 in spirit:
//!
//! | region            | start                   | size      | contents                          |
//! |-------------------|-------------------------|-----------|-----------------------------------|
//! | linear map        | `0xFFFF_0000_0000_0000` | 64 TiB    | all RAM at `PA + PAGE_OFFSET`     |
//! | kernel image      | `0xFFFF_8000_0000_0000` | 1 GiB     | image at `PA + KIMAGE_VOFFSET`    |
//! | MMIO              | `0xFFFF_A000_0000_0000` | 64 MiB    | `0xFC00_0000..0x1_0000_0000`      |
//! | per-core stacks   | `0xFFFF_B000_0000_0000` | 4 x 64 KiB| each below an unmapped guard page |
//! | vmemmap           | `0xFFFF_FC00_0000_0000` | 2 TiB     | 64-byte descriptor per frame      |
//!
//! The boot code maps the first GiB of RAM at `KIMAGE_VOFFSET` with a single 1 GiB block so the
//! Rust code (linked at its final address) runs from the first instruction; the final kernel map
//! replaces that block with 4 KiB W^X pages for the image.

use crate::addr::{PhysAddr, VirtAddr, PAGE_SIZE};

/// Start of the linear map: `virt = phys + PAGE_OFFSET`.
pub const PAGE_OFFSET: u64 = 0xFFFF_0000_0000_0000;
/// Size reserved for the linear map (64 TiB).
pub const LINEAR_MAP_SIZE: u64 = 1 << 46;
/// The kernel image is linked at `KIMAGE_VOFFSET + load address`.
pub const KIMAGE_VOFFSET: u64 = 0xFFFF_8000_0000_0000;
/// Size of the kernel image window (the boot code maps it with one 1 GiB block).
pub const KIMAGE_WINDOW: u64 = 1 << 30;
/// Virtual base of the MMIO window.
pub const MMIO_VBASE: u64 = 0xFFFF_A000_0000_0000;
/// Physical base of the MMIO window (BCM2711 "low peripheral" mode: ARM peripherals and GIC).
pub const MMIO_PBASE: u64 = 0xFC00_0000;
/// Size of the MMIO window: up to the 4 GiB boundary.
pub const MMIO_SIZE: u64 = 0x1_0000_0000 - MMIO_PBASE;
/// Base of the per-core kernel stacks.
pub const STACKS_VBASE: u64 = 0xFFFF_B000_0000_0000;
/// Size of one kernel stack.
pub const STACK_SIZE: u64 = 64 * 1024;
/// Distance between the bases of two cores' stack slots: the stack plus an unmapped guard page
/// below it, rounded so each slot starts on its own 2 MiB region.
pub const STACK_SLOT: u64 = 2 << 20;
/// Number of cores on the BCM2711.
pub const MAX_CPUS: usize = 4;
/// Start of the vmemmap: descriptor `n` (64 bytes) describes pfn `n`.
pub const VMEMMAP_START: u64 = 0xFFFF_FC00_0000_0000;
/// Size of the vmemmap region.
pub const VMEMMAP_SIZE: u64 = 1 << 41;
/// First address of the user (TTBR0) range that user tasks may use.
pub const USER_BASE: u64 = 0x0000_0000_0040_0000;
/// End of the TTBR0 range (48-bit).
pub const USER_END: u64 = 1 << 48;

// The regions are in ascending order and do not overlap (checked at compile time).
const _: () = assert!(PAGE_OFFSET + LINEAR_MAP_SIZE <= KIMAGE_VOFFSET);
const _: () = assert!(KIMAGE_VOFFSET + KIMAGE_WINDOW <= MMIO_VBASE);
const _: () = assert!(MMIO_VBASE + MMIO_SIZE <= STACKS_VBASE);
const _: () = assert!(STACKS_VBASE + STACK_SLOT * MAX_CPUS as u64 <= VMEMMAP_START);

/// Linear-map address of a physical address.
#[inline]
pub const fn phys_to_virt(pa: PhysAddr) -> VirtAddr {
    VirtAddr(pa.0 + PAGE_OFFSET)
}

/// Physical address behind a linear-map address.
#[inline]
pub const fn virt_to_phys(va: VirtAddr) -> PhysAddr {
    PhysAddr(va.0 - PAGE_OFFSET)
}

/// Is `va` inside the linear map?
#[inline]
pub const fn is_linear(va: VirtAddr) -> bool {
    va.0 >= PAGE_OFFSET && va.0 < PAGE_OFFSET + LINEAR_MAP_SIZE
}

/// Virtual address of a physical MMIO address, or `None` outside the MMIO window.
#[inline]
pub const fn mmio_virt(pa: u64) -> Option<VirtAddr> {
    if pa >= MMIO_PBASE && pa < MMIO_PBASE + MMIO_SIZE {
        Some(VirtAddr(MMIO_VBASE + (pa - MMIO_PBASE)))
    } else {
        None
    }
}

/// The usable stack range `[bottom, top)` of core `cpu`; the page below `bottom` is the guard.
#[inline]
pub const fn stack_range(cpu: usize) -> (VirtAddr, VirtAddr) {
    let slot = STACKS_VBASE + cpu as u64 * STACK_SLOT;
    let bottom = slot + PAGE_SIZE;
    (VirtAddr(bottom), VirtAddr(bottom + STACK_SIZE))
}

/// Which region of the kernel map an address falls in (for ptdump markers and fault reports).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Region {
    /// The linear map of RAM.
    LinearMap,
    /// The kernel image.
    KernelImage,
    /// Device memory.
    Mmio,
    /// Kernel stacks and their guard pages.
    Stacks,
    /// The vmemmap.
    Vmemmap,
    /// A user (TTBR0) address.
    User,
    /// Nothing is meant to be here.
    Unused,
}

impl Region {
    /// The region holding `va`.
    pub const fn of(va: VirtAddr) -> Region {
        let v = va.0;
        if v < USER_END {
            Region::User
        } else if v >= PAGE_OFFSET && v < PAGE_OFFSET + LINEAR_MAP_SIZE {
            Region::LinearMap
        } else if v >= KIMAGE_VOFFSET && v < KIMAGE_VOFFSET + KIMAGE_WINDOW {
            Region::KernelImage
        } else if v >= MMIO_VBASE && v < MMIO_VBASE + MMIO_SIZE {
            Region::Mmio
        } else if v >= STACKS_VBASE && v < STACKS_VBASE + STACK_SLOT * MAX_CPUS as u64 {
            Region::Stacks
        } else if v >= VMEMMAP_START && v < VMEMMAP_START + VMEMMAP_SIZE {
            Region::Vmemmap
        } else {
            Region::Unused
        }
    }

    /// A short marker, as ptdump prints it.
    pub const fn name(self) -> &'static str {
        match self {
            Region::LinearMap => "Linear Mapping",
            Region::KernelImage => "Kernel Image",
            Region::Mmio => "MMIO",
            Region::Stacks => "Kernel Stacks",
            Region::Vmemmap => "vmemmap",
            Region::User => "User",
            Region::Unused => "unused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_do_not_overlap_and_classify() {
        assert_eq!(Region::of(VirtAddr(PAGE_OFFSET)), Region::LinearMap);
        assert_eq!(Region::of(VirtAddr(KIMAGE_VOFFSET + 0x80000)), Region::KernelImage);
        assert_eq!(Region::of(mmio_virt(0xFE20_1000).unwrap()), Region::Mmio);
        assert_eq!(Region::of(stack_range(3).0), Region::Stacks);
        assert_eq!(Region::of(VirtAddr(VMEMMAP_START + 64)), Region::Vmemmap);
        assert_eq!(Region::of(VirtAddr(USER_BASE)), Region::User);
        assert_eq!(mmio_virt(0x1000), None);
        assert_eq!(virt_to_phys(phys_to_virt(PhysAddr(0x1234))), PhysAddr(0x1234));
    }

    #[test]
    fn stacks_have_guard_pages() {
        for cpu in 0..MAX_CPUS {
            let (bottom, top) = stack_range(cpu);
            assert_eq!(top - bottom, STACK_SIZE);
            assert_eq!(bottom.0 - PAGE_SIZE, STACKS_VBASE + cpu as u64 * STACK_SLOT);
        }
    }
}
