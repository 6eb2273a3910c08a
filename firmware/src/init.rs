//! Boot flow after the assembly entry: console, boot report, memory discovery, the kernel map,
//! then the on-target tests or the demonstration, and exit.

use crate::arch::{cpu, exception, mmu, semihosting};
use crate::board::Board;
use crate::drivers::{gpio, timer};
use crate::kernel_map::{self, KernelMap};
use crate::sync::{InitOnce, SpinMutex};
use core::sync::atomic::{AtomicPtr, Ordering};
use kcore::addr::PhysAddr;
use kcore::memblock::{Memblock, RegionList, ReservedKind, MAX_MEMORY_REGIONS};

static BOARD: AtomicPtr<Board> = AtomicPtr::new(core::ptr::null_mut());

/// The kernel map built at boot.
pub static KERNEL_MAP: InitOnce<KernelMap> = InitOnce::new();
/// RAM as discovered at boot.
static RAM: InitOnce<RegionList<MAX_MEMORY_REGIONS>> = InitOnce::new();

/// RAM as discovered at boot (before any is held back for hot-plug).
pub fn ram_regions() -> &'static RegionList<MAX_MEMORY_REGIONS> {
    RAM.get().expect("RAM discovered at boot")
}

/// The early frame allocator (until the buddy allocator takes over).
pub static MEMBLOCK: SpinMutex<Option<Memblock>> = SpinMutex::new(None);

/// The board this image was built for.
pub fn board() -> &'static Board {
    // SAFETY: set from a `&'static Board` first thing in `kernel_main`, before anything calls
    // this.
    unsafe { BOARD.load(Ordering::Acquire).as_ref() }.expect("board set at boot")
}

/// Ends the run: under an emulator, exit with `code`; on hardware, park the core.
pub fn exit(code: u32) -> ! {
    crate::log::CONSOLE.flush();
    // SAFETY: as in `board()`; null only if we fail before it is set.
    match unsafe { BOARD.load(Ordering::Acquire).as_ref() } {
        Some(b) if b.semihosting => semihosting::exit(code),
        _ => cpu::park(),
    }
}

/// Stops the boot with a message.
pub fn fatal(what: &str) -> ! {
    crate::error!("fatal: {}", what);
    exit(2)
}

/// The first Rust code: runs on core 0 at EL1 with the boot tables live.
pub fn kernel_main(board: &'static Board, boot_info: u64, entry_el: u64) -> ! {
    BOARD.store(board as *const Board as *mut Board, Ordering::Release);
    exception::install();
    timer::set_fallback_frequency(board.cntfrq_hz);
    if board.uart.pinmux_gpio14_15 {
        // SAFETY: the boot identity map covers the peripherals as device memory; only core 0
        // runs now.
        unsafe {
            gpio::configure(board.gpio_base as usize, 14, gpio::Function::Alt0);
            gpio::configure(board.gpio_base as usize, 15, gpio::Function::Alt0);
        }
    }
    // SAFETY: the identity map covers the UART as device memory until the kernel map replaces it.
    unsafe {
        crate::log::CONSOLE.init(board.uart.base as usize, board.uart.clock_hz, board.uart.baud)
    };

    crate::info!("pi4-hvo {} on board {}", env!("CARGO_PKG_VERSION"), board.name);
    crate::info!("entered at EL{}, running at EL1, core {}", entry_el, cpu::core_id());
    crate::info!("CNTFRQ {} Hz, boot info at {:#x}", timer::frequency(), boot_info);

    let mut mb = Memblock::default();
    for bank in board.ram {
        if let Err(e) = mb.add_memory(PhysAddr(bank.base), bank.size) {
            crate::warn!("board RAM bank {:#x}+{:#x} refused: {:?}", bank.base, bank.size, e);
        }
    }
    for r in board.firmware_reserved {
        if let Err(e) = mb.reserve(PhysAddr(r.base), r.size, ReservedKind::Firmware) {
            crate::warn!("firmware range {:#x}+{:#x} not reserved: {:?}", r.base, r.size, e);
        }
    }
    match RegionList::from_slice(mb.memory()) {
        Ok(l) => {
            RAM.set(l);
        }
        Err(_) => fatal("too many RAM regions"),
    }
    let (img_start, img_end) = kernel_map::image_phys();
    if let Err(e) = mb.reserve(img_start, img_end - img_start, ReservedKind::KernelImage) {
        crate::error!("kernel image {:#x}..{:#x} not reserved: {:?}", img_start.0, img_end.0, e);
        fatal("cannot reserve the kernel image");
    }

    let km = match kernel_map::build(&mut mb, |_, _| Ok(())) {
        Ok(km) => km,
        Err(e) => {
            crate::error!("kernel map: {:?}", e);
            fatal("cannot build the kernel map")
        }
    };
    crate::info!(
        "kernel map: linear map {} x 2M blocks + {} x 4K pages, image {} x 4K pages, {} table pages",
        km.linear.blocks_l2,
        km.linear.pages,
        km.image.pages,
        km.linear.tables_allocated + km.image.tables_allocated
    );
    // SAFETY: `km` is a complete kernel map from `kernel_map::build`.
    unsafe { kernel_map::switch(&km, board.uart.base) };
    crate::info!("MMU: running on the kernel map (TTBR1 root {:#x})", km.root.0);
    *MEMBLOCK.lock() = Some(mb);
    let km = KERNEL_MAP.set(km);
    // SAFETY: core 0's stack was mapped by the kernel map; nothing else uses it.
    unsafe { mmu::run_on_stack(km.stack_tops[0], kernel_main_on_stack, 0) }
}

extern "C" fn kernel_main_on_stack(_: u64) -> ! {
    let km = KERNEL_MAP.get().expect("kernel map set");
    mmu::disable_ttbr0(km.empty_root);
    crate::memory::set_init_mm(km.root);
    crate::info!("identity map dropped; on core 0's stack below {:#x}", km.stack_tops[0]);

    let failed = if cfg!(feature = "ktest") { crate::ktest::run(None) } else { 0 };
    exit(if failed == 0 { 0 } else { 1 })
}
