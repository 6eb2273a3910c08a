//! How the code that edits translation tables and page descriptors reaches physical memory.
//!
//! On the target, a physical address is reached through a window of the kernel map: the boot
//! code's 1 GiB block over the image (`KIMAGE_VOFFSET`) early on, the linear map (`PAGE_OFFSET`)
//! afterwards. On the host, tests use an [`Arena`]: a heap buffer standing in for a range of
//! physical memory. Everything above this module takes `&impl PhysMem` and runs unchanged on both.

use crate::addr::PhysAddr;

/// Gives the CPU a pointer to any physical address the caller owns.
pub trait PhysMem {
    /// A pointer through which `pa` can be read and written.
    ///
    /// Returns a pointer only; dereferencing it is the caller's `unsafe` responsibility (it must
    /// own the memory and respect aliasing). Implementations may panic for addresses they do not
    /// cover.
    fn ptr(&self, pa: PhysAddr) -> *mut u8;
}

/// A window in which `virt = phys + offset` (the linear map, or the boot image window).
#[derive(Clone, Copy, Debug)]
pub struct OffsetWindow {
    /// Added to a physical address to get its virtual address.
    pub offset: u64,
}

impl PhysMem for OffsetWindow {
    #[inline]
    fn ptr(&self, pa: PhysAddr) -> *mut u8 {
        pa.0.wrapping_add(self.offset) as *mut u8
    }
}

#[cfg(any(test, feature = "std"))]
pub use arena::Arena;

#[cfg(any(test, feature = "std"))]
mod arena {
    extern crate std;
    use super::PhysMem;
    use crate::addr::{PhysAddr, PAGE_SIZE};
    use std::alloc::{alloc_zeroed, dealloc, Layout};

    /// Host stand-in for physical memory `[base, base + size)`: a zeroed, page-aligned heap
    /// buffer. Addresses outside it panic, which is how tests catch wild table pointers.
    pub struct Arena {
        base: PhysAddr,
        size: u64,
        mem: *mut u8,
        layout: Layout,
    }

    impl Arena {
        /// A zeroed arena standing for physical memory `[base, base + size)`.
        pub fn new(base: PhysAddr, size: u64) -> Self {
            assert!(base.is_aligned(PAGE_SIZE) && size.is_multiple_of(PAGE_SIZE) && size > 0);
            let layout = Layout::from_size_align(size as usize, PAGE_SIZE as usize).unwrap();
            // SAFETY: the layout has a non-zero size.
            let mem = unsafe { alloc_zeroed(layout) };
            assert!(!mem.is_null(), "arena allocation of {size:#x} bytes failed");
            Arena { base, size, mem, layout }
        }
        /// First physical address covered.
        pub fn base(&self) -> PhysAddr {
            self.base
        }
        /// Bytes covered.
        pub fn size(&self) -> u64 {
            self.size
        }
        /// Does the arena cover `pa`?
        pub fn contains(&self, pa: PhysAddr) -> bool {
            pa.0 >= self.base.0 && pa.0 < self.base.0 + self.size
        }
    }

    impl PhysMem for Arena {
        fn ptr(&self, pa: PhysAddr) -> *mut u8 {
            assert!(self.contains(pa), "{pa:?} is outside the arena");
            // SAFETY: the offset is inside the allocation, checked just above.
            unsafe { self.mem.add((pa.0 - self.base.0) as usize) }
        }
    }

    impl Drop for Arena {
        fn drop(&mut self) {
            // SAFETY: `mem` came from `alloc_zeroed` with this very layout.
            unsafe { dealloc(self.mem, self.layout) }
        }
    }
}
