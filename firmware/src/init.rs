//! Boot flow after the assembly entry: console, boot report, memory discovery, the kernel map,
//! then the on-target tests or the demonstration, and exit.

use crate::arch::{cpu, exception, mmu, semihosting};
use crate::board::Board;
use crate::drivers::mailbox;
use crate::drivers::{gpio, timer};
use crate::kernel_map::{self, KernelMap};
use crate::sync::{InitOnce, SpinMutex};
use aarch64_cpu::registers::Readable;
use core::sync::atomic::AtomicU64;
use core::sync::atomic::{AtomicPtr, Ordering};
use kcore::bootinfo::{self, BootInfo, MapWarning};
use kcore::cmdline::{self, Cmdline, Crash};
use kcore::layout::{KIMAGE_VOFFSET, PAGE_OFFSET};
use kcore::memblock::{MemRegion, Memblock, RegionList, ReservedKind, MAX_MEMORY_REGIONS};

static BOARD: AtomicPtr<Board> = AtomicPtr::new(core::ptr::null_mut());
/// Physical address of the boot blob (DTB or ATAGs), 0 if unusable.
static BOOT_BLOB: AtomicU64 = AtomicU64::new(0);
/// The most bytes of boot blob read (a DTB is far smaller).
const BOOT_BLOB_MAX: u64 = 1 << 20;
/// The kernel command line, parsed.
static CMDLINE: InitOnce<Cmdline<'static>> = InitOnce::new();

/// The kernel command line (empty until parsed at boot).
pub fn cmdline() -> Cmdline<'static> {
    CMDLINE.get().copied().unwrap_or_default()
}

/// `crash=`: ends the boot the way a bug would, to show the reports (decoded fault, panic
/// location and message) and the failing exit status.
fn crash_now(crash: Crash) -> ! {
    crate::warn!("crash={:?} requested: failing on purpose", crash);
    match crash {
        Crash::Panic => panic!("crash=panic on the command line"),
        Crash::Fault => {
            // SAFETY: deliberately reads an unmapped kernel address; the fault handler reports it
            // and stops the firmware (there is no fixup for this access).
            let v = unsafe { core::ptr::read_volatile(0xFFFF_EE00_0000_0040 as *const u64) };
            panic!("read of an unmapped address returned {:#x}", v)
        }
        Crash::Udf => {
            // SAFETY: an undefined instruction outside any probe: the handler reports it and stops.
            unsafe { core::arch::asm!("udf #0x4242") };
            panic!("UDF returned")
        }
    }
}

/// Reserves `r` unless an existing reservation already covers it (the firmware's own table and
/// the boot blob's list often name the same first page).
fn reserve_unless_covered(mb: &mut Memblock, r: MemRegion, kind: ReservedKind, what: &str) {
    if mb.reserved().iter().any(|x| x.region.covers(&r)) {
        return;
    }
    if let Err(e) = mb.reserve(r.base, r.size, kind) {
        crate::warn!("{} {:?} not reserved: {:?}", what, r, e);
    }
}

/// A DTB from QEMU or the Pi firmware has NOP tokens where nodes were deleted; squeeze them out
/// (the blob is ours) so the parser accepts it.
fn compact_dtb(x0: u64, max: usize) {
    if x0 == 0 || !x0.is_multiple_of(8) || max < 8 {
        return;
    }
    // SAFETY: x0 is below the identity-map limit and `max` bytes from it are RAM under the
    // identity map (checked by the caller); only the header is read here.
    let head = unsafe { core::slice::from_raw_parts(x0 as *const u8, 8) };
    if head[..4] != bootinfo::FDT_MAGIC.to_be_bytes() {
        return;
    }
    let total = (u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize).min(max);
    // SAFETY: as above; nothing else references the blob yet.
    let blob = unsafe { core::slice::from_raw_parts_mut(x0 as *mut u8, total) };
    match bootinfo::compact_fdt_nops(blob) {
        Ok(0) => {}
        Ok(n) => crate::info!("device tree: {} NOP token(s) compacted away", n),
        Err(e) => crate::warn!("device tree: not compacted: {:?}", e),
    }
}

/// Parses the command line from the boot blob, now through the linear map, and reports it.
fn parse_cmdline() {
    let pa = BOOT_BLOB.load(Ordering::Acquire);
    let line: &'static str = if pa == 0 {
        ""
    } else {
        // SAFETY: the blob is reserved in memblock (never reused) and the linear map covers it.
        match unsafe { bootinfo::from_x0((pa + PAGE_OFFSET) as usize, BOOT_BLOB_MAX as usize) } {
            Ok(BootInfo { cmdline, .. }) => cmdline,
            Err(_) => "",
        }
    };
    crate::info!("command line: \"{}\"", line);
    let c = CMDLINE.set(cmdline::parse(line));
    if let Some(level) = c.loglevel {
        // Linux prints a message when its priority is below the console log level: err is 3,
        // warning 4, info 6, debug 7. defmt frames are filtered at build time (DEFMT_LOG).
        let max = match level {
            0..=4 => crate::log::Level::Error,
            5 => crate::log::Level::Warn,
            6 | 7 => crate::log::Level::Info,
            _ => crate::log::Level::Debug,
        };
        crate::log::PLAIN_MAX_LEVEL.store(max as u64, Ordering::Relaxed);
    }
    for w in c.warnings() {
        crate::warn!("command line: ignored: {:?}", w);
    }
    crate::info!("command line: {:?}", c);
}

/// The kernel map built at boot.
pub static KERNEL_MAP: InitOnce<KernelMap> = InitOnce::new();
/// RAM as discovered at boot, plus what was hot-added since.
static RAM: SpinMutex<Option<RegionList<MAX_MEMORY_REGIONS>>> = SpinMutex::new(None);
/// RAM held back at boot for a later hot-add (`memhp_reserve=`).
pub static HELD_BACK: SpinMutex<Option<MemRegion>> = SpinMutex::new(None);

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
    crate::info!(
        "CPU: MIDR {:#x}, PAN {}",
        aarch64_cpu::registers::MIDR_EL1.get(),
        if cpu::has_pan() {
            "implemented"
        } else {
            "not implemented (ARMv8.0): EL1 reaches user memory only through copy_from_user"
        }
    );

    // The boot blob is read through the identity map now and through the linear map later.
    let blob_max =
        (kernel_map::IDENTITY_LIMIT.saturating_sub(boot_info)).min(BOOT_BLOB_MAX) as usize;
    compact_dtb(boot_info, blob_max);
    // SAFETY: x0 points at RAM below the identity-map limit (or is rejected by the parser); the
    // blob is reserved below before anything could overwrite it.
    let info = unsafe { bootinfo::from_x0(boot_info as usize, blob_max) };
    match &info {
        Ok(i) => {
            crate::info!("boot info: {:?} of {} bytes, model {:?}", i.source, i.blob_len, i.model)
        }
        Err(e) => crate::warn!("boot info at {:#x} unusable: {:?}", boot_info, e),
    }
    let need_mailbox =
        !board.prefer_board_table && info.as_ref().map_or(true, |i| i.memory.is_err());
    let mut mailbox_banks = [MemRegion::default(); 1];
    let mailbox = if need_mailbox {
        // SAFETY: the mailbox registers are device memory under the identity map; the message
        // buffer's physical address is its identity-mapped address minus KIMAGE_VOFFSET.
        match unsafe {
            mailbox::arm_memory(board.mailbox_base as usize, |va| va as u64 - KIMAGE_VOFFSET)
        } {
            Ok((base, size)) => {
                crate::info!("mailbox: ARM memory {:#x}+{:#x}", base, size);
                mailbox_banks[0] = MemRegion::new(base, size);
                Some(&mailbox_banks[..])
            }
            Err(e) => {
                crate::warn!("mailbox: no memory map: {:?}", e);
                None
            }
        }
    } else {
        None
    };
    let map = bootinfo::memory_map(board.ram, info.as_ref(), mailbox, board.prefer_board_table);
    for w in map.warnings() {
        match w {
            // Expected on QEMU: its -dtb/ATAGs report 960 MiB of the 2 GiB it has.
            MapWarning::BoardTableOverrides { boot_bytes, board_bytes } => crate::info!(
                "memory map: board table ({} MiB) overrides the boot blob's ({} MiB)",
                board_bytes >> 20,
                boot_bytes >> 20
            ),
            other => crate::warn!("memory map: {:?}", other),
        }
    }
    crate::info!("memory: {} region(s) from {:?}", map.regions.len(), map.source);
    for r in map.regions.iter() {
        crate::info!("  RAM {:#x}..{:#x} ({} MiB)", r.base.0, r.end(), r.size >> 20);
    }

    let mut mb = Memblock::default();
    for r in map.regions.iter() {
        if let Err(e) = mb.add_memory(r.base, r.size) {
            crate::warn!("RAM bank {:?} refused: {:?}", r, e);
        }
    }
    for r in board.firmware_reserved {
        if let Err(e) = mb.reserve(r.base, r.size, ReservedKind::Firmware) {
            crate::warn!("firmware range {:?} not reserved: {:?}", r, e);
        }
    }
    if let Ok(i) = &info {
        for r in i.reserved.iter() {
            reserve_unless_covered(&mut mb, *r, ReservedKind::Firmware, "boot-info reservation");
        }
        // QEMU's ATAGs sit inside the reserved boot-stub page already; a DTB needs its own.
        let blob = MemRegion::new(boot_info, i.blob_len as u64);
        reserve_unless_covered(&mut mb, blob, ReservedKind::DeviceTree, "boot blob");
        BOOT_BLOB.store(boot_info, Ordering::Release);
    }
    // memhp_reserve=: hold back the top of the first bank for a later hot-add. The command line
    // is read here from the boot blob (still identity-mapped); it is parsed for good later.
    let early = info.as_ref().map(|i| cmdline::parse(i.cmdline)).unwrap_or_default();
    if let (Some(size), Some(first)) = (early.memhp_reserve, map.regions.iter().next()) {
        match kcore::vmemmap::hotplug_holdback(first, size) {
            Some(held) => match mb.remove_memory(held.base, held.size) {
                Ok(()) => {
                    crate::info!(
                        "memory hot-plug: holding back {:#x}..{:#x} ({} MiB) to hot-add later",
                        held.base.0,
                        held.end(),
                        held.size >> 20
                    );
                    *HELD_BACK.lock() = Some(held);
                }
                Err(e) => crate::warn!("memhp_reserve: cannot remove {:?}: {:?}", held, e),
            },
            None => crate::warn!(
                "memhp_reserve={:#x}: does not fit in the first bank {:?}; ignored",
                size,
                first
            ),
        }
    }
    match RegionList::from_slice(mb.memory()) {
        Ok(l) => *RAM.lock() = Some(l),
        Err(_) => fatal("too many RAM regions"),
    }
    let (img_start, img_end) = kernel_map::image_phys();
    if let Err(e) = mb.reserve(img_start, img_end - img_start, ReservedKind::KernelImage) {
        crate::error!("kernel image {:#x}..{:#x} not reserved: {:?}", img_start.0, img_end.0, e);
        fatal("cannot reserve the kernel image");
    }

    let km = match kernel_map::build(&mut mb) {
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
    if let Err(e) = mmu::configure() {
        crate::error!("MMU: {:?}", e);
        fatal("translation regime not as expected");
    }
    // SAFETY: `km` is a complete kernel map from `kernel_map::build`.
    unsafe { kernel_map::switch(&km, board.uart.base) };
    crate::info!("MMU: running on the kernel map (TTBR1 root {:#x})", km.root.0);
    for r in mb.reserved() {
        crate::info!("  reserved {:#x}..{:#x} {:?}", r.region.base.0, r.region.end(), r.kind);
    }
    crate::info!(
        "vmemmap: {} x 2M block(s) mapping {} MiB of descriptors",
        km.vmemmap_blocks,
        km.vmemmap_bytes >> 20
    );
    *MEMBLOCK.lock() = Some(mb);
    let km = KERNEL_MAP.set(km);
    // SAFETY: core 0's stack was mapped by the kernel map; nothing else uses it.
    unsafe { mmu::run_on_stack(km.stack_tops[0], kernel_main_on_stack, 0) }
}

extern "C" fn kernel_main_on_stack(_: u64) -> ! {
    let km = KERNEL_MAP.get().expect("kernel map set");
    mmu::disable_ttbr0(km.empty_root);
    crate::memory::set_init_mm(km.root);
    parse_cmdline();
    let cmd = cmdline();
    {
        let mb = MEMBLOCK.lock();
        if let Err(e) = crate::memory::init(mb.as_ref().expect("memblock"), &cmd) {
            crate::error!("page allocator: {:?}", e);
            fatal("cannot start the page allocator");
        }
    }
    if let Some(held) = HELD_BACK.lock().take() {
        match crate::memory::hot_add(held) {
            Ok(()) => {}
            Err(e) => crate::error!("memory hot-add of {:?} failed: {:?}", held, e),
        }
    }
    let hvo_ok = crate::hvo::boot(&cmd);
    crate::memory::meminfo();
    if cmd.ptdump {
        crate::ptdump::dump_kernel();
    }
    crate::info!("identity map dropped; on core 0's stack below {:#x}", km.stack_tops[0]);

    if cmd.bench {
        exit(u32::from(!crate::bench::run()));
    }
    if let Some(crash) = cmd.crash {
        crash_now(crash);
    }
    let failed = match cmd.ktest {
        Some(filter) if cfg!(feature = "ktest") => {
            crate::ktest::run(if filter.is_empty() { None } else { Some(filter) })
        }
        Some(_) => {
            crate::warn!("ktest: this image was built without the on-target tests (feature ktest)");
            0
        }
        None => usize::from(!hvo_ok),
    };
    exit(if failed == 0 { 0 } else { 1 })
}
