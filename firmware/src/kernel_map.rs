//! The kernel address space (`init_mm`): building it, switching to it, and its regions.
//!
//! The layout is documented in one place, `kcore::layout`. This module maps, from frames the
//! early allocator (memblock) hands out:
//! - the linear map of all RAM at `PAGE_OFFSET`, 2 MiB blocks where aligned, 4 KiB at the edges
//!   and over the image, whose text and rodata frames are read-only through this alias too;
//! - the kernel image at its link address with 4 KiB pages and W^X: text RX, rodata R, data and
//!   BSS RW + XN;
//! - the MMIO window (BCM2711 peripherals and GIC) as Device-nGnRE, XN;
//! - the per-core stacks, each above an unmapped guard page;
//! - the vmemmap, 2 MiB blocks for each section that holds RAM (see `memory`).
//!
//! Then TTBR1 moves onto it through the identity map ([`crate::arch::mmu::replace_ttbr1`]), the
//! console moves to the MMIO window, core 0 moves to its guarded stack, and TTBR0 walks stop.

use crate::arch::mmu;
use kcore::addr::{align_down, align_up, PhysAddr, VirtAddr, PAGE_SIZE, PMD_SIZE};
use kcore::layout::{
    self, KIMAGE_VOFFSET, MMIO_PBASE, MMIO_SIZE, MMIO_VBASE, PAGE_OFFSET, STACK_SIZE,
};
use kcore::mapper::{self, BlockPolicy, FrameAlloc, MapError, MapStats};
use kcore::memblock::{Memblock, MemblockError, ReservedKind};
use kcore::pgtable::{Attrs, Level};
use kcore::phys::OffsetWindow;
use kcore::tlb::HwMmu;
use kcore::vmemmap::VmemmapError;

/// Sections (128 MiB of RAM each) whose vmemmap the boot can map: 8 GiB, the largest Pi 4.
const MAX_VMEMMAP_BLOCKS: usize = 64;

/// More RAM sections than [`MAX_VMEMMAP_BLOCKS`].
#[derive(Debug)]
struct TooManySections;

/// Physical memory as the code sees it before the switch: the boot identity map (0..3 GiB RAM).
pub const IDENTITY: OffsetWindow = OffsetWindow { offset: 0 };
/// Physical memory through the linear map, after the switch.
pub const LINEAR: OffsetWindow = OffsetWindow { offset: PAGE_OFFSET };
/// The highest physical address the boot identity map reaches as normal memory.
pub const IDENTITY_LIMIT: u64 = 0xC000_0000;

/// Why the kernel map could not be built.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub enum KernelMapError {
    /// Mapping a region failed.
    Map {
        /// Which region.
        region: &'static str,
        /// The mapper's error (it names the range).
        error: MapError,
    },
    /// No frame for a table, stack or the empty root.
    NoMemory(MemblockError),
    /// The vmemmap could not be populated (no frame, or more sections than the firmware
    /// supports) after `sections` blocks.
    Vmemmap {
        /// Blocks placed before the failure.
        sections: usize,
    },
}

/// Table pages from memblock, reserved as early tables.
pub struct MemblockTables<'a>(pub &'a mut Memblock);

impl FrameAlloc for MemblockTables<'_> {
    fn alloc_table(&mut self) -> Option<PhysAddr> {
        self.0.alloc(PAGE_SIZE, PAGE_SIZE, ReservedKind::EarlyTables).ok()
    }
    fn free_table(&mut self, pa: PhysAddr) {
        let _ = self.0.unreserve(pa, PAGE_SIZE);
    }
}

extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __image_end: u8;
}

/// The image's sections: (name, start VA, end VA, attributes).
pub fn image_sections() -> [(&'static str, u64, u64, Attrs); 3] {
    let a = |p: *const u8| p as u64;
    [
        (
            "text",
            a(core::ptr::addr_of!(__image_start)),
            a(core::ptr::addr_of!(__text_end)),
            Attrs::kernel_text(),
        ),
        (
            "rodata",
            a(core::ptr::addr_of!(__rodata_start)),
            a(core::ptr::addr_of!(__rodata_end)),
            Attrs::kernel_rodata(),
        ),
        (
            "data",
            a(core::ptr::addr_of!(__data_start)),
            a(core::ptr::addr_of!(__image_end)),
            Attrs::kernel_data(),
        ),
    ]
}

/// Physical range of the image's text and rodata, `[start, end)`: read-only in every mapping.
pub fn image_ro_phys() -> (PhysAddr, PhysAddr) {
    let s = image_sections();
    (PhysAddr(s[0].1 - KIMAGE_VOFFSET), PhysAddr(s[1].2 - KIMAGE_VOFFSET))
}

/// Physical range of the whole image, `[start, end)`.
pub fn image_phys() -> (PhysAddr, PhysAddr) {
    let s = image_sections();
    (PhysAddr(s[0].1 - KIMAGE_VOFFSET), PhysAddr(s[2].2 - KIMAGE_VOFFSET))
}

pub use crate::bootstate::KernelMap;

/// A mapping to add to the map under construction.
struct Mapping {
    region: &'static str,
    va: u64,
    pa: u64,
    size: u64,
    attrs: Attrs,
    policy: BlockPolicy,
}

fn map(root: PhysAddr, mb: &mut Memblock, m: Mapping) -> Result<MapStats, KernelMapError> {
    let mut mmu = HwMmu::new();
    // SAFETY: `root` and every table below it were allocated from memblock for this map and are
    // reached through the identity window; the tables are not live yet.
    unsafe {
        mapper::map_range(
            root,
            &IDENTITY,
            &mut MemblockTables(mb),
            &mut mmu,
            VirtAddr(m.va),
            PhysAddr(m.pa),
            m.size,
            m.attrs,
            m.policy,
        )
    }
    .map_err(|error| KernelMapError::Map { region: m.region, error })
}

/// Builds the kernel map for the RAM in `mb`.
pub fn build(mb: &mut Memblock) -> Result<KernelMap, KernelMapError> {
    // Table frames must be reachable through the identity map while we build. Early frames
    // come bottom-up, just above the image, as Linux's memblock does: the top of RAM (the
    // 1 GiB bank at 0x4000_0000 on a 2 GiB board) stays whole for gigantic pages.
    mb.set_current_limit(PhysAddr(IDENTITY_LIMIT));
    mb.set_bottom_up(true);
    let alloc_zeroed = |mb: &mut Memblock| -> Result<PhysAddr, KernelMapError> {
        let pa = mb
            .alloc(PAGE_SIZE, PAGE_SIZE, ReservedKind::EarlyTables)
            .map_err(KernelMapError::NoMemory)?;
        // SAFETY: a fresh frame under the identity map, owned by us.
        unsafe { core::ptr::write_bytes(pa.0 as *mut u8, 0, PAGE_SIZE as usize) };
        Ok(pa)
    };
    let root = alloc_zeroed(mb)?;
    let empty_root = alloc_zeroed(mb)?;
    let mut km = KernelMap { root, empty_root, ..Default::default() };

    let mut ram = [(0u64, 0u64); kcore::memblock::MAX_MEMORY_REGIONS];
    let n = mb.memory().len();
    for (slot, r) in ram.iter_mut().zip(mb.memory()) {
        *slot = (r.base.0, r.size);
    }
    // The linear map: 2 MiB blocks, except the block(s) holding the image's text and rodata,
    // which are split into pages so those frames are read-only (and never executable) through
    // their linear alias too (Linux: mark_linear_text_alias_ro()).
    let (ro_start, ro_end) = image_ro_phys();
    let (win_start, win_end) = (align_down(ro_start.0, PMD_SIZE), align_up(ro_end.0, PMD_SIZE));
    let blocks = BlockPolicy::AllowBlocks { max: Level::L2 };
    for &(base, size) in &ram[..n] {
        let end = base + size;
        let pieces = [
            (base, end.min(win_start), Attrs::kernel_data(), blocks),
            (
                base.max(win_start),
                end.min(ro_start.0),
                Attrs::kernel_data(),
                BlockPolicy::PagesOnly,
            ),
            (
                base.max(ro_start.0),
                end.min(ro_end.0),
                Attrs::kernel_rodata(),
                BlockPolicy::PagesOnly,
            ),
            (base.max(ro_end.0), end.min(win_end), Attrs::kernel_data(), BlockPolicy::PagesOnly),
            (base.max(win_end), end, Attrs::kernel_data(), blocks),
        ];
        for (start, stop, attrs, policy) in pieces {
            if start >= stop {
                continue;
            }
            let s = map(
                root,
                mb,
                Mapping {
                    region: "linear map",
                    va: PAGE_OFFSET + start,
                    pa: start,
                    size: stop - start,
                    attrs,
                    policy,
                },
            )?;
            km.linear.blocks_l2 += s.blocks_l2;
            km.linear.pages += s.pages;
            km.linear.tables_allocated += s.tables_allocated;
        }
    }
    for (name, start, end, attrs) in image_sections() {
        let s = map(
            root,
            mb,
            Mapping {
                region: name,
                va: start,
                pa: start - KIMAGE_VOFFSET,
                size: end - start,
                attrs,
                policy: BlockPolicy::PagesOnly,
            },
        )?;
        km.image.pages += s.pages;
        km.image.tables_allocated += s.tables_allocated;
    }
    map(
        root,
        mb,
        Mapping {
            region: "mmio",
            va: MMIO_VBASE,
            pa: MMIO_PBASE,
            size: MMIO_SIZE,
            attrs: Attrs::device(),
            policy: BlockPolicy::AllowBlocks { max: Level::L2 },
        },
    )?;
    for cpu in 0..layout::MAX_CPUS {
        let frames = mb
            .alloc(STACK_SIZE, PAGE_SIZE, ReservedKind::Stacks)
            .map_err(KernelMapError::NoMemory)?;
        let (bottom, top) = layout::stack_range(cpu);
        map(
            root,
            mb,
            Mapping {
                region: "stack",
                va: bottom.0,
                pa: frames.0,
                size: STACK_SIZE,
                attrs: Attrs::kernel_data(),
                policy: BlockPolicy::PagesOnly,
            },
        )?;
        km.stack_tops[cpu] = top.0;
    }
    // The vmemmap: `populate` picks a 2 MiB frame per section holding RAM while it holds the
    // memblock; the blocks are mapped right after, before any descriptor is touched (the kernel
    // map is not live yet, so nothing can look at them in between).
    let mut blocks = [(VirtAddr(0), PhysAddr(0)); MAX_VMEMMAP_BLOCKS];
    let mut n = 0;
    let ram = crate::bootstate::ram_regions();
    // Sections of 1 GiB boot folios reserved for hugetlb_vmemmap_preinit= are left out: their
    // vmemmap is mapped already optimized once the buddy allocator is up.
    let skip = crate::memory::PREINIT_RANGES.lock().clone();
    // SAFETY: every block recorded here is mapped read-write below, before `build` returns and
    // long before the map goes live; a block that cannot be recorded fails `populate`.
    let stats = unsafe {
        crate::memory::VMEMMAP.populate_skipping(ram.as_slice(), mb, skip.as_slice(), |va, pa| {
            let slot = blocks.get_mut(n).ok_or(TooManySections)?;
            *slot = (va, pa);
            n += 1;
            Ok(())
        })
    }
    .map_err(|_: VmemmapError<TooManySections>| KernelMapError::Vmemmap { sections: n })?;
    for &(va, pa) in &blocks[..n] {
        let s = map(
            root,
            mb,
            Mapping {
                region: "vmemmap",
                va: va.0,
                pa: pa.0,
                size: PMD_SIZE,
                attrs: Attrs::kernel_data(),
                policy: BlockPolicy::AllowBlocks { max: Level::L2 },
            },
        )?;
        km.vmemmap_blocks += s.blocks_l2;
    }
    km.vmemmap_bytes = stats.backing_bytes;
    crate::memory::VMEMMAP_BOOT_BYTES
        .fetch_add(stats.backing_bytes, core::sync::atomic::Ordering::Relaxed);
    Ok(km)
}

/// Moves TTBR1 onto the new map and the console onto the MMIO window.
///
/// # Safety
/// `km` must come from [`build`]: a complete map of the image, its stacks and MMIO.
pub unsafe fn switch(km: &KernelMap, uart_phys: u64) {
    // SAFETY: the new map maps the image at its link addresses; the identity map is still live.
    unsafe { mmu::replace_ttbr1(km.root, km.empty_root) };
    let uart = layout::mmio_virt(uart_phys).expect("the UART lies in the MMIO window");
    // SAFETY: the MMIO window maps the UART's registers as device memory from now on.
    unsafe { crate::log::CONSOLE.rebase(uart.0 as usize) };
}
