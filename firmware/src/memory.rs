//! The firmware's memory-management state: `init_mm`, the vmemmap, the buddy allocator and the
//! HugeTLB pool. The algorithms are in `kcore`; this module owns the single live instances and
//! the order in which boot brings them up:
//! 1. before the kernel map is live, memblock hands out frames (tables, stacks, vmemmap blocks);
//! 2. after the switch, [`init`] initialises every descriptor, gives the free RAM to the buddy
//!    allocator (Linux's `memblock_free_all`) and pre-allocates the HugeTLB pools.

use crate::sync::{InitOnce, SpinMutex};
use kcore::addr::{PhysAddr, PAGE_SIZE};
use kcore::buddy::{self, Buddy, BuddyError, Census, ConservationError};
use kcore::cmdline::Cmdline;
use kcore::hugetlb::{HugePageSize, HugepageRequest, HugetlbPool, NoHooks};
use kcore::mapper::FrameAlloc;
use kcore::memblock::Memblock;
use kcore::mm::{Kernel, Mm};
use kcore::page::PageState;
use kcore::phys::{OffsetWindow, PhysMem};
use kcore::vmemmap::Vmemmap;

pub use crate::kernel_map::LINEAR;

static INIT_MM: InitOnce<Mm<Kernel>> = InitOnce::new();

/// The kernel's memmap at `VMEMMAP_START`.
// SAFETY: sections are marked present only by `Vmemmap::populate`, called from
// `kernel_map::build` with a closure that maps each 2 MiB block read-write in the kernel map,
// which stays live for the rest of the run.
pub static VMEMMAP: Vmemmap = unsafe { Vmemmap::kernel() };

/// The page allocator.
pub static BUDDY: SpinMutex<Buddy> = SpinMutex::new(Buddy::new());

/// The HugeTLB pools.
pub static HUGETLB: SpinMutex<HugetlbPool> = SpinMutex::new(HugetlbPool::new());

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

/// Takes a page for a translation table from `buddy`: zeroed, its descriptor marked as a page
/// table.
pub fn alloc_table_page(buddy: &mut Buddy) -> Option<PhysAddr> {
    let pfn = buddy.alloc(&VMEMMAP, 0).ok()?;
    VMEMMAP.page(pfn).set_state(PageState::PageTable);
    let pa = pfn.addr();
    // SAFETY: a frame we just allocated, reached through the linear map.
    unsafe { core::ptr::write_bytes(LINEAR.ptr(pa), 0, PAGE_SIZE as usize) };
    Some(pa)
}

/// Gives a translation-table page back to `buddy`.
pub fn free_table_page(buddy: &mut Buddy, pa: PhysAddr) {
    let pfn = kcore::addr::Pfn::containing(pa);
    VMEMMAP.page(pfn).set_state(PageState::Allocated);
    if let Err(e) = buddy.free(&VMEMMAP, pfn, 0) {
        crate::error!("freeing table page {:#x}: {:?}", pa.0, e);
    }
}

/// Table pages from the buddy allocator, locking it for each page.
pub struct BuddyTables;

impl FrameAlloc for BuddyTables {
    fn alloc_table(&mut self) -> Option<PhysAddr> {
        alloc_table_page(&mut BUDDY.lock())
    }
    fn free_table(&mut self, pa: PhysAddr) {
        free_table_page(&mut BUDDY.lock(), pa)
    }
}

/// Counts every RAM frame by state and checks the sum against RAM and the buddy's free count.
pub fn check_conservation() -> Result<Census, ConservationError> {
    let buddy = BUDDY.lock();
    buddy::check_conservation(&VMEMMAP, crate::bootstate::ram_regions().as_slice(), &buddy)
}

/// Brings up the descriptors, the buddy allocator and the HugeTLB pools.
pub fn init(mb: &Memblock, cmd: &Cmdline<'_>) -> Result<(), BuddyError> {
    let ram = crate::bootstate::ram_regions();
    let t0 = crate::drivers::timer::ticks();
    let n = VMEMMAP.init_descriptors(ram.as_slice());
    let freed = BUDDY.lock().free_memblock(&VMEMMAP, mb)?;
    let us = crate::drivers::timer::ticks_to_ns(crate::drivers::timer::ticks() - t0) / 1000;
    crate::info!(
        "memmap: {} descriptors of {} bytes in {} present section(s), initialised in {} us",
        n,
        kcore::page::PAGE_DESC_SIZE,
        VMEMMAP.nr_present_sections(),
        us
    );
    crate::info!("buddy: {} pages free of {} managed", freed, BUDDY.lock().managed_pages());

    // Gigantic (1 GiB) pages first, as Linux allocates them early at boot before smaller
    // pages can fragment the memory they need.
    let mut requests = [HugepageRequest { size: HugePageSize::Size2M, count: 0 }; 2];
    let n = cmd.hugepage_requests().len().min(2);
    requests[..n].copy_from_slice(&cmd.hugepage_requests()[..n]);
    requests[..n].sort_unstable_by_key(|r| core::cmp::Reverse(r.size.bytes()));
    let report = {
        let mut buddy = BUDDY.lock();
        HUGETLB.lock().preallocate(&requests[..n], &mut buddy, &VMEMMAP, &mut NoHooks)
    };
    for s in report.sizes {
        if s.requested == 0 {
            continue;
        }
        if s.allocated < s.requested {
            crate::warn!(
                "HugeTLB: allocating {} of {} hugepages of size {} failed: memory allows only {}",
                s.requested - s.allocated,
                s.requested,
                s.size.name(),
                s.allocated
            );
        } else {
            crate::info!(
                "HugeTLB: {} hugepages of size {} pre-allocated",
                s.allocated,
                s.size.name()
            );
        }
    }
    Ok(())
}

/// Why a hot-add failed.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub enum HotplugError {
    /// Mapping the linear map or a vmemmap block failed.
    Map(kcore::mapper::MapError),
    /// The self-hosted vmemmap could not be set up.
    Vmemmap,
    /// The buddy allocator refused the new frames.
    Buddy(BuddyError),
    /// The RAM list is full.
    TooManyRegions,
}

/// The hot-added ranges whose memmap lives inside themselves (memmap-on-memory).
pub static SELF_HOSTED: SpinMutex<Option<kcore::vmemmap::SelfHosted>> = SpinMutex::new(None);

/// Hot-adds `range` (whole sections) with memmap-on-memory: extends the linear map, backs the
/// range's vmemmap with the first 2 MiB of each of its own sections (mapped as 2 MiB blocks into
/// the live kernel map: new entries only, so no break-before-make is needed, just the DSB/ISB
/// that publish them), initialises the descriptors and gives the rest to the buddy allocator.
pub fn hot_add(range: kcore::memblock::MemRegion) -> Result<(), HotplugError> {
    use kcore::addr::{PhysAddr, VirtAddr, PMD_SIZE};
    use kcore::mapper::BlockPolicy;
    use kcore::pgtable::{Attrs, Level};
    use kcore::tlb::HwMmu;

    let mut mmu = HwMmu::new();
    let mut guard = init_mm().mmap_write();
    guard
        .map_range(
            &LINEAR,
            &mut BuddyTables,
            &mut mmu,
            VirtAddr(kcore::layout::PAGE_OFFSET + range.base.0),
            range.base,
            range.size,
            Attrs::kernel_data(),
            BlockPolicy::AllowBlocks { max: Level::L2 },
        )
        .map_err(HotplugError::Map)?;
    let mut map_err = None;
    // SAFETY: each block is mapped read-write (a new level-2 entry in the live kernel map) before
    // `populate_self_hosted` marks its section present; the map stays for the rest of the run.
    let sh = unsafe {
        VMEMMAP.populate_self_hosted(range, |va: VirtAddr, pa: PhysAddr| {
            guard
                .map_range(
                    &LINEAR,
                    &mut BuddyTables,
                    &mut mmu,
                    va,
                    pa,
                    PMD_SIZE,
                    Attrs::kernel_data(),
                    BlockPolicy::AllowBlocks { max: Level::L2 },
                )
                .map(|_| ())
                .map_err(|e| {
                    map_err = Some(e);
                })
        })
    };
    drop(guard);
    let sh = match (sh, map_err) {
        (Ok(sh), _) => sh,
        (Err(_), Some(e)) => return Err(HotplugError::Map(e)),
        (Err(_), None) => return Err(HotplugError::Vmemmap),
    };
    VMEMMAP.init_self_hosted(&sh);
    crate::bootstate::add_ram(range).map_err(|_| HotplugError::TooManyRegions)?;
    let mut freed = 0;
    {
        let mut buddy = BUDDY.lock();
        for u in sh.usable() {
            let p = u.pfns();
            freed += buddy
                .free_range(&VMEMMAP, kcore::addr::Pfn(p.start), kcore::addr::Pfn(p.end))
                .map_err(HotplugError::Buddy)?;
        }
    }
    crate::info!(
        "memory hot-plug: added {:#x}..{:#x}: memmap on the memory itself ({} x 2M blocks), {} pages to the buddy allocator",
        range.base.0,
        range.end(),
        sh.sections().len(),
        freed
    );
    *SELF_HOSTED.lock() = Some(sh);
    Ok(())
}

/// Logs a `/proc/meminfo`-like summary.
pub fn meminfo() {
    let free = BUDDY.lock().free_pages();
    let ram = buddy::ram_pages(crate::bootstate::ram_regions().as_slice());
    let census = kcore::buddy::conservation(&VMEMMAP, crate::bootstate::ram_regions().as_slice());
    crate::info!("meminfo: MemTotal:      {} kB", ram * 4);
    crate::info!("meminfo: MemFree:       {} kB", free * 4);
    crate::info!(
        "meminfo: Memmap:        {} kB ({} pages of vmemmap)",
        census.vmemmap * 4,
        census.vmemmap
    );
    crate::info!("meminfo: PageTables:    {} kB", census.page_table * 4);
    crate::info!("meminfo: KernelImage:   {} kB", census.kernel_image * 4);
    crate::info!("meminfo: Reserved:      {} kB", census.reserved * 4);
    let pool = HUGETLB.lock();
    for size in HugePageSize::ALL {
        let c = pool.counts(size);
        crate::info!(
            "meminfo: HugePages {}: total {} free {} ({} kB)",
            size.name(),
            c.nr_hugepages,
            c.free_hugepages,
            c.nr_hugepages * size.bytes() / 1024
        );
    }
    crate::info!("meminfo: Hugetlb:       {} kB", census.hugetlb * 4);
}
