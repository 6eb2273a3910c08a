//! The firmware's memory-management state: `init_mm` and, as they come up, the vmemmap, the
//! buddy allocator and the HugeTLB pools. The algorithms are in `kcore`; this module owns the
//! single live instances and the order in which boot brings them up.

use crate::sync::InitOnce;
use kcore::addr::PhysAddr;
use kcore::mm::{Kernel, Mm};
use kcore::phys::OffsetWindow;

pub use crate::kernel_map::LINEAR;

static INIT_MM: InitOnce<Mm<Kernel>> = InitOnce::new();

/// Records the kernel map's root as `init_mm` (once, after the TTBR1 switch).
pub fn set_init_mm(root: PhysAddr) {
    // SAFETY: `root` is the live TTBR1 root built by `kernel_map::build`; all its tables are in
    // RAM covered by the linear map, and this is the only `Mm` made for it.
    INIT_MM.set(unsafe { Mm::new_kernel(root) });
}

/// The kernel address space.
pub fn init_mm() -> &'static Mm<Kernel> {
    INIT_MM.get().expect("init_mm is set once the kernel map is live")
}

/// How the kernel reaches physical memory once the linear map is live.
pub const fn phys() -> &'static OffsetWindow {
    &LINEAR
}
