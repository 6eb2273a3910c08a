//! Logs the kernel map in the spirit of Linux's `/sys/kernel/debug/kernel_page_tables`: one line
//! per run of entries with equal attributes, a marker line where a region of the layout starts.
//! The walking and merging is `kcore::ptdump`, built on the one page walker.

use crate::log::Disp;
use crate::memory;
use kcore::addr::VirtAddr;
use kcore::layout::Region;
use kcore::ptdump::{ptdump, PtdumpCounts};

/// First address of the kernel half.
pub const KERNEL_START: VirtAddr = VirtAddr(0xFFFF_0000_0000_0000);
/// End of the kernel half (2^64 wraps to 0, as the walker expects).
pub const KERNEL_END: VirtAddr = VirtAddr(0);

/// Dumps the whole kernel half of the address space.
pub fn dump_kernel() -> PtdumpCounts {
    dump_range(KERNEL_START, KERNEL_END)
}

/// Dumps the kernel map over `[start, end)` (an `end` of 0 means 2^64): the boot argument
/// `ptdump` and the console's `ptdump [RANGE]`.
pub fn dump_range(start: VirtAddr, end: VirtAddr) -> PtdumpCounts {
    let mm = memory::init_mm();
    let guard = mm.mmap_read();
    let mut last: Option<Region> = None;
    crate::info!("ptdump: kernel page tables (init_mm, TTBR1) {:#x}..{:#x}", start.0, end.0);
    let counts = ptdump(&guard, &memory::LINEAR, start, end, |line| {
        if last != Some(line.region) {
            crate::info!("---[ {} ]---", line.region.name());
            last = Some(line.region);
        }
        crate::info!("{}", Disp(line));
    });
    match counts {
        Ok(c) => {
            crate::info!(
                "ptdump: {} x BLK 1G, {} x BLK 2M, {} x PTE 4K in {} lines",
                c.blocks_l1,
                c.blocks_l2,
                c.pages,
                c.lines
            );
            c
        }
        Err(e) => {
            crate::error!("ptdump: walk failed: {:?}", e);
            PtdumpCounts::default()
        }
    }
}
