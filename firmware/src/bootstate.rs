//! State discovered at boot, set once by the boot flow (`init`) and read by everything above it:
//! the board, the boot blob, the command line, the RAM regions (plus what was hot-added), the RAM
//! held back for a later hot-add, the early allocator and the kernel map.
//!
//! This module sits below its readers (`memory`, `kernel_map`, `user`, `panic`, `smp`, the
//! on-target tests) and imports none of them, so the boot flow can use them all without an import
//! cycle. Linux keeps the same kind of state in plain globals next to the code that fills them
//! (`memblock`, `boot_command_line`, `init_mm`).

use crate::arch::{cpu, semihosting};
use crate::board::Board;
use crate::sync::{InitOnce, SpinMutex};
use core::sync::atomic::{AtomicU64, Ordering};
use kcore::addr::PhysAddr;
use kcore::cmdline::Cmdline;
use kcore::layout;
use kcore::mapper::MapStats;
use kcore::memblock::{MemRegion, Memblock, RegionList, MAX_MEMORY_REGIONS};

/// What `kernel_map::build` made (the type lives here, below its readers).
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub struct KernelMap {
    /// Root table (TTBR1).
    pub root: PhysAddr,
    /// An all-invalid table for the break step of a TTBR switch, and for TTBR0 when no user
    /// address space is installed.
    pub empty_root: PhysAddr,
    /// Linear-map statistics.
    pub linear: MapStats,
    /// Image statistics.
    pub image: MapStats,
    /// Top of each core's stack.
    pub stack_tops: [u64; layout::MAX_CPUS],
    /// 2 MiB block entries mapping the vmemmap.
    pub vmemmap_blocks: u64,
    /// RAM backing the vmemmap.
    pub vmemmap_bytes: u64,
}

static BOARD: InitOnce<&'static Board> = InitOnce::new();
/// Physical address of the boot blob (DTB or ATAGs), 0 if unusable.
static BOOT_BLOB: AtomicU64 = AtomicU64::new(0);
/// The most bytes of boot blob read (a DTB is far smaller).
pub const BOOT_BLOB_MAX: u64 = 1 << 20;
/// The kernel command line, parsed.
static CMDLINE: InitOnce<Cmdline<'static>> = InitOnce::new();
/// The kernel map built at boot.
static KERNEL_MAP: InitOnce<KernelMap> = InitOnce::new();
/// RAM as discovered at boot, plus what was hot-added since.
static RAM: SpinMutex<Option<RegionList<MAX_MEMORY_REGIONS>>> = SpinMutex::new(None);
/// RAM held back at boot for a later hot-add (`memhp_reserve=`).
pub static HELD_BACK: SpinMutex<Option<MemRegion>> = SpinMutex::new(None);
/// The early frame allocator (until the buddy allocator takes over).
pub static MEMBLOCK: SpinMutex<Option<Memblock>> = SpinMutex::new(None);

/// Records the board (once, first thing at boot).
pub fn set_board(board: &'static Board) {
    BOARD.set(board);
}

/// The board this image was built for.
pub fn board() -> &'static Board {
    BOARD.get().copied().expect("board set at boot")
}

/// Records the boot blob's physical address (once it is reserved).
pub fn set_boot_blob(pa: u64) {
    BOOT_BLOB.store(pa, Ordering::Release);
}

/// Physical address of the boot blob, 0 if there is none usable.
pub fn boot_blob() -> u64 {
    BOOT_BLOB.load(Ordering::Acquire)
}

/// Records the parsed command line (once).
pub fn set_cmdline(c: Cmdline<'static>) -> &'static Cmdline<'static> {
    CMDLINE.set(c)
}

/// The kernel command line (empty until parsed at boot).
pub fn cmdline() -> Cmdline<'static> {
    CMDLINE.get().copied().unwrap_or_default()
}

/// Records the kernel map (once, before the switch to it).
pub fn set_kernel_map(km: KernelMap) -> &'static KernelMap {
    KERNEL_MAP.set(km)
}

/// The kernel map, once built.
pub fn kernel_map() -> Option<&'static KernelMap> {
    KERNEL_MAP.get()
}

/// Records the RAM discovered at boot (once).
pub fn set_ram(list: RegionList<MAX_MEMORY_REGIONS>) {
    let mut ram = RAM.lock();
    assert!(ram.is_none(), "RAM regions set twice");
    *ram = Some(list);
}

/// The RAM the kernel manages now.
pub fn ram_regions() -> RegionList<MAX_MEMORY_REGIONS> {
    RAM.lock().expect("RAM discovered at boot")
}

/// Adds hot-added RAM to the list.
pub fn add_ram(r: MemRegion) -> Result<(), kcore::memblock::ListFull> {
    let mut ram = RAM.lock();
    let list = ram.as_mut().expect("RAM discovered at boot");
    list.push(r)?;
    list.sort();
    Ok(())
}

/// Ends the run: under an emulator, exit with `code`; on hardware, park the core.
pub fn exit(code: u32) -> ! {
    crate::log::CONSOLE.flush();
    match BOARD.get() {
        Some(b) if b.semihosting => semihosting::exit(code),
        _ => {
            crate::info!("end of run: status {}; no semihosting here, core 0 waits in WFE", code);
            crate::log::CONSOLE.flush();
            cpu::park()
        }
    }
}

/// Stops the boot with a message.
pub fn fatal(what: &str) -> ! {
    crate::error!("fatal: {}", what);
    exit(2)
}
