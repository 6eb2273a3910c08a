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
    // 1 GiB folios reserved at boot for hugetlb_vmemmap_preinit= come first; the buddy
    // allocator supplies the rest of the request.
    let preinit = if PREINIT_RANGES.lock().is_empty() { 0 } else { preinit_folios() };
    for r in requests[..n].iter_mut().filter(|r| r.size == HugePageSize::Size1G) {
        r.count = r.count.saturating_sub(preinit);
    }
    requests[..n].sort_unstable_by_key(|r| core::cmp::Reverse(r.size.bytes()));
    let report = {
        let mut buddy = BUDDY.lock();
        HUGETLB.lock().preallocate(&requests[..n], &mut buddy, &VMEMMAP, &mut NoHooks)
    };
    for mut s in report.sizes {
        if s.size == HugePageSize::Size1G {
            s.requested += preinit;
            s.allocated += preinit;
        }
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

/// Most 1 GiB boot folios whose vmemmap is populated optimized (`hugetlb_vmemmap_preinit=on`).
pub const MAX_PREINIT: usize = 4;

/// The 1 GiB ranges reserved in memblock for `hugetlb_vmemmap_preinit=on` (Linux 6.15's
/// `hugetlb_bootmem_alloc()` before `sparse_init`): their sections are left out of the boot
/// vmemmap populate and mapped already optimized by [`preinit_folios`].
pub static PREINIT_RANGES: SpinMutex<heapless::Vec<kcore::memblock::MemRegion, MAX_PREINIT>> =
    SpinMutex::new(heapless::Vec::new());

/// Bytes of frames allocated for the vmemmap during boot, as counted by the populate code
/// (the boot populate's blocks, then one frame per preinit folio). Nothing is freed before the
/// first HVO run, so this is the boot's peak.
pub static VMEMMAP_BOOT_BYTES: core::sync::atomic::AtomicU64 =
    core::sync::atomic::AtomicU64::new(0);

/// Reserves up to `count` (at most [`MAX_PREINIT`]) 1 GiB-aligned ranges as
/// [`ReservedKind::HugetlbBoot`](kcore::memblock::ReservedKind::HugetlbBoot), before the kernel
/// map takes memblock frames. Returns how many were reserved.
pub fn reserve_preinit(mb: &mut Memblock, count: u64) -> u64 {
    use kcore::memblock::{MemRegion, ReservedKind};
    let size = HugePageSize::Size1G.bytes();
    let mut ranges = PREINIT_RANGES.lock();
    while (ranges.len() as u64) < count && !ranges.is_full() {
        match mb.alloc(size, size, ReservedKind::HugetlbBoot) {
            Ok(pa) => {
                let _ = ranges.push(MemRegion::new(pa.0, size));
            }
            Err(e) => {
                crate::warn!(
                    "hugetlb_vmemmap_preinit: {} of {} 1G folio(s) reserved: {:?}",
                    ranges.len(),
                    count,
                    e
                );
                break;
            }
        }
    }
    if count > MAX_PREINIT as u64 {
        crate::warn!(
            "hugetlb_vmemmap_preinit: at most {} 1G folios; the rest come from the buddy allocator",
            MAX_PREINIT
        );
    }
    ranges.len() as u64
}

/// Why a preinit folio could not be set up.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub enum PreinitBootError {
    /// No frame for the folio's vmemmap page.
    NoFrame,
    /// The kcore step refused or a mapping failed.
    Populate(kcore::hvo_preinit::PreinitError<kcore::mapper::MapError>),
}

/// Maps the vmemmap of every reserved preinit range already optimized, through the live
/// `init_mm` (new entries only: no break-before-make), and puts the folios in the HugeTLB pool
/// as they are (no `prep_compound`: their tail descriptors are read-only aliases of page 0).
/// Returns the folios added.
fn preinit_folios() -> u64 {
    use kcore::addr::{Pfn, VirtAddr};
    use kcore::mapper::BlockPolicy;
    use kcore::pgtable::Attrs;
    use kcore::tlb::HwMmu;

    let ranges = PREINIT_RANGES.lock().clone();
    let order = HugePageSize::Size1G.order();
    let mut added = 0;
    for r in ranges.iter() {
        let head = Pfn::containing(r.base);
        let Some(frame) = alloc_table_page(&mut BUDDY.lock()) else {
            crate::error!("hugetlb_vmemmap_preinit: {:?}", PreinitBootError::NoFrame);
            continue;
        };
        VMEMMAP.page(Pfn::containing(frame)).set_state(PageState::Vmemmap);
        let mut mmu = HwMmu::new();
        let mut guard = init_mm().mmap_write();
        // SAFETY: each call maps one new 4 KiB entry of the live kernel map (the sections are
        // not present, so nothing maps them yet) onto `frame`, writable only for page 0;
        // `map_range` ends with DSB ISHST + ISB (ARM ARM "Ordering of translation table
        // walks": the new entries are visible to the walkers before the descriptors are
        // touched; the entries were invalid and invalid entries are not held in TLBs, so no
        // break-before-make and no TLBI). The map stays for the rest of the run. `frame` is
        // zeroed and ours.
        let res = unsafe {
            kcore::hvo_preinit::populate_folio_optimized(
                &VMEMMAP,
                head,
                order,
                frame,
                |va: VirtAddr, pa, writable| {
                    let attrs =
                        if writable { Attrs::kernel_data() } else { Attrs::kernel_rodata() };
                    guard
                        .map_range(
                            &LINEAR,
                            &mut BuddyTables,
                            &mut mmu,
                            va,
                            pa,
                            PAGE_SIZE,
                            attrs,
                            BlockPolicy::PagesOnly,
                        )
                        .map(|_| ())
                },
            )
        };
        drop(guard);
        match res {
            Ok(st) => {
                VMEMMAP_BOOT_BYTES
                    .fetch_add(st.backing_bytes, core::sync::atomic::Ordering::Relaxed);
                if let Err(e) = HUGETLB.lock().add_prepared(head, HugePageSize::Size1G, &VMEMMAP) {
                    crate::error!("hugetlb_vmemmap_preinit: folio refused by the pool: {:?}", e);
                    continue;
                }
                added += 1;
                crate::info!(
                    "hugetlb_vmemmap_preinit: 1G folio at {:#x}: {} vmemmap pages ({} read-only) onto one frame {:#x}, {} sections",
                    r.base.0,
                    st.pages_mapped,
                    st.read_only,
                    frame.0,
                    st.sections
                );
            }
            Err(e) => {
                crate::error!("hugetlb_vmemmap_preinit: {:?}", PreinitBootError::Populate(e))
            }
        }
    }
    added
}
