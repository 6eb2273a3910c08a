//! Boot flow after the assembly entry: console, boot report, memory discovery, the kernel map,
//! the other cores, then the on-target tests or the demonstration, and exit.
//!
//! This module only runs the boot; what it discovers is stored in `bootstate` (set once) and read
//! from there by the rest of the firmware. Only the board entry (`board_entry!`) calls in here.

use crate::arch::{cpu, exception, mmu};
use crate::board::Board;
use crate::bootstate::{self, cmdline, exit, fatal, BOOT_BLOB_MAX, HELD_BACK, MEMBLOCK};
use crate::drivers::mailbox;
use crate::drivers::{gpio, timer};
use crate::kernel_map;
use aarch64_cpu::registers::Readable;
use core::sync::atomic::Ordering;
use kcore::bootinfo::{self, BootInfo, MapWarning};
use kcore::cmdline::{self, Crash};
use kcore::layout::{KIMAGE_VOFFSET, PAGE_OFFSET};
use kcore::memblock::{MemRegion, Memblock, RegionList, ReservedKind};

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

/// `memhp_reserve=size`: removes from `mb` the range to hot-add at the end of boot and records it,
/// or warns and holds nothing back. The range never contains a reservation made so far (firmware,
/// boot-information ranges, the boot blob) nor the kernel image (`img`).
fn hold_back_for_hotplug(
    mb: &mut Memblock,
    banks: &[MemRegion],
    size: u64,
    img_start: kcore::addr::PhysAddr,
    img_end: kcore::addr::PhysAddr,
) {
    let mut avoid: heapless::Vec<MemRegion, { kcore::memblock::MAX_RESERVED_REGIONS + 1 }> =
        heapless::Vec::new();
    let image = MemRegion::from_range(img_start.0, img_end.0);
    for r in core::iter::once(image).chain(mb.reserved().iter().map(|r| r.region)) {
        if avoid.push(r).is_err() {
            crate::warn!("memhp_reserve: too many reservations to check; nothing held back");
            return;
        }
    }
    let Some(first) = banks.first() else { return };
    let naive = kcore::vmemmap::hotplug_holdback(first, size);
    let Some(held) =
        banks.iter().find_map(|b| kcore::vmemmap::hotplug_holdback_avoiding(b, size, &avoid))
    else {
        crate::warn!(
            "memhp_reserve={:#x}: no {} MiB of whole sections in RAM free of the kernel, the boot blob and firmware ranges; nothing held back",
            size,
            size >> 20
        );
        return;
    };
    if let Some(n) = naive.filter(|n| *n != held) {
        let clash = avoid.iter().find(|r| r.overlaps(&n)).copied().unwrap_or_default();
        crate::info!(
            "memory hot-plug: {:#x}..{:#x} holds {:#x}..{:#x}, which the boot needs; choosing another range",
            n.base.0,
            n.end(),
            clash.base.0,
            clash.end()
        );
    }
    match mb.remove_memory(held.base, held.size) {
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
    let pa = bootstate::boot_blob();
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
    let mut c = cmdline::parse(line);
    if c.memhp_reserve.is_some() && HELD_BACK.lock().is_none() {
        // Refused at boot (warned there): the parsed line must not still claim it.
        c.refuse_memhp_reserve(cmdline::Refusal::NoRoom);
    }
    let c = bootstate::set_cmdline(c);
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
    // The tail design, before any folio is prepared; fixed from here on (changing the encoding
    // of live folios would need every one restored and prepared again).
    if let Some(d) = c.hvo_tails {
        if let Err(e) = kcore::hugetlb_vmemmap::set_tail_design(d) {
            crate::warn!("hvo_tails={}: refused: {:?}", d.name(), e);
        }
    }
    kcore::hvo_tails::fix_tail_design();
    crate::info!("HVO tail design: {}", kcore::hvo_tails::tail_design().name());
}

/// The GIC (distributor and this core's interface), then cores 1-3.
fn start_interrupts_and_cores(km: &'static crate::kernel_map::KernelMap) {
    use crate::drivers::gic::GIC;
    let board = bootstate::board();
    match (
        kcore::layout::mmio_virt(board.gic_dist_base),
        kcore::layout::mmio_virt(board.gic_cpu_base),
    ) {
        (Some(d), Some(c)) => {
            // SAFETY: both lie in the MMIO window, mapped as device memory by the live kernel
            // map for the rest of the run.
            let lines = unsafe { GIC.init_distributor(d.0 as usize, c.0 as usize) };
            GIC.init_this_cpu();
            crate::info!(
                "GIC-400: distributor {:#x}, CPU interface {:#x}, {} interrupt lines",
                board.gic_dist_base,
                board.gic_cpu_base,
                lines
            );
        }
        _ => crate::warn!(
            "GIC-400 at {:#x}/{:#x} outside the MMIO window: no interrupts",
            board.gic_dist_base,
            board.gic_cpu_base
        ),
    }
    crate::smp::boot_secondaries(km);
}

/// The first Rust code: runs on core 0 at EL1 with the boot tables live.
pub fn kernel_main(board: &'static Board, boot_info: u64, entry_el: u64) -> ! {
    bootstate::set_board(board);
    exception::install();
    timer::set_fallback_frequency(board.cntfrq_hz);
    if board.uart.pinmux_gpio14_15 {
        // SAFETY: the boot identity map covers the peripherals as device memory; only core 0
        // runs now.
        unsafe { gpio::route_uart0_to_gpio14_15(board.gpio_base as usize) };
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
            crate::info!("boot info: {:?} of {} bytes, model {:?}", i.source, i.blob_len, i.model);
            if let Some(t) = i.cmdline_truncated {
                crate::warn!(
                    "command line TRUNCATED: damaged at byte {} of {}; kept the {} bytes of whole options before it, the rest is lost",
                    t.damaged_at,
                    t.declared,
                    t.kept
                );
            }
            // SAFETY: the parser just read these bytes of the blob.
            unsafe { crate::devicetree::report_console(boot_info, i.blob_len, board) };
        }
        Err(e) => crate::warn!("boot info at {:#x} unusable: {:?}", boot_info, e),
    }
    // `dt_memory`: the boot blob's banks even where the board's table normally wins (QEMU).
    let prefer_table = board.prefer_board_table
        && !info.as_ref().is_ok_and(|i| cmdline::parse(i.cmdline).dt_memory);
    let need_mailbox = !prefer_table && info.as_ref().map_or(true, |i| i.memory.is_err());
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
    let (img_start, img_end) = kernel_map::image_phys();
    let limits = bootinfo::MapLimits::bcm2711(
        aarch64_cpu::registers::ID_AA64MMFR0_EL1
            .read(aarch64_cpu::registers::ID_AA64MMFR0_EL1::PARange),
        MemRegion::from_range(img_start.0, img_end.0),
    );
    let map = bootinfo::memory_map(board.ram, info.as_ref(), mailbox, prefer_table, &limits);
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
        bootstate::set_boot_blob(boot_info);
    }
    // memhp_reserve=: hold back the highest whole sections of the first bank that has room
    // for them without any memory the boot still needs (kernel image, boot blob, firmware
    // ranges). The command line is read here from the boot blob (still identity-mapped); it is
    // parsed for good later.
    let early = info.as_ref().map(|i| cmdline::parse(i.cmdline)).unwrap_or_default();
    let (img_start, img_end) = kernel_map::image_phys();
    if let Some(size) = early.memhp_reserve {
        hold_back_for_hotplug(&mut mb, map.regions.as_slice(), size, img_start, img_end);
    }
    match RegionList::from_slice(mb.memory()) {
        Ok(l) => bootstate::set_ram(l),
        Err(_) => fatal("too many RAM regions"),
    }
    if let Err(e) = mb.reserve(img_start, img_end - img_start, ReservedKind::KernelImage) {
        crate::error!("kernel image {:#x}..{:#x} not reserved: {:?}", img_start.0, img_end.0, e);
        fatal("cannot reserve the kernel image");
    }

    // hugetlb_vmemmap_preinit=on: the 1 GiB boot folios are taken from memblock now, before
    // the kernel map and the vmemmap take frames, so their sections can be left unpopulated.
    if early.hugetlb_vmemmap_preinit == Some(true) {
        let n: u64 = early
            .hugepage_requests()
            .iter()
            .filter(|r| r.size == kcore::hugetlb::HugePageSize::Size1G)
            .map(|r| r.count)
            .sum();
        if early.hugetlb_free_vmemmap == Some(false) {
            // Linux's hugetlb_vmemmap_init_early() likewise does nothing without HVO.
            crate::warn!("hugetlb_vmemmap_preinit=on: refused with hugetlb_free_vmemmap=off");
        } else if early.hvo_tails == Some(kcore::hvo_tails::TailDesign::Shared) {
            crate::warn!(
                "hugetlb_vmemmap_preinit=on: refused with hvo_tails=shared (seed tails only)"
            );
        } else if n == 0 {
            crate::warn!("hugetlb_vmemmap_preinit=on: no hugepagesz=1G hugepages=N to reserve");
        } else {
            let got = crate::memory::reserve_preinit(&mut mb, n);
            crate::info!(
                "hugetlb_vmemmap_preinit: {} of {} 1G folio(s) reserved in memblock",
                got,
                n
            );
        }
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
    let km = bootstate::set_kernel_map(km);
    // SAFETY: core 0's stack was mapped by the kernel map; nothing else uses it.
    unsafe { mmu::run_on_stack(km.stack_tops[0], kernel_main_on_stack, 0) }
}

extern "C" fn kernel_main_on_stack(_: u64) -> ! {
    let km = bootstate::kernel_map().expect("kernel map set");
    mmu::disable_ttbr0(km.empty_root);
    crate::memory::set_init_mm(km.root);
    parse_cmdline();
    let cmd = cmdline();
    start_interrupts_and_cores(km);
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
    let mut hvo_ok = crate::hvo::boot(&cmd);
    if let Some(run) = *crate::hvo::BOOT_RUN_1G.lock() {
        // The boot's figures with and without hugetlb_vmemmap_preinit=: peak vmemmap frames
        // (counted by the populate code; nothing is freed before HVO runs) and the counter at
        // the moment the 1 GiB pool is optimized (instructions under -icount shift=0).
        crate::info!(
            "result: preinit {} folios={} vmemmap_peak_kib={} boot_ticks={} splits={} optimized_now={}",
            if crate::memory::PREINIT_RANGES.lock().is_empty() { "off" } else { "on" },
            run.folios,
            crate::memory::VMEMMAP_BOOT_BYTES.load(Ordering::Relaxed) / 1024,
            run.optimized_at,
            run.stats.splits,
            run.optimized
        );
    }
    if let Some(n) = cmd.stress {
        hvo_ok &= crate::hvo_smp::stress::boot(n, cmd.hvo_bbm);
    }
    crate::memory::meminfo();
    if cmd.ptdump {
        crate::ptdump::dump_kernel();
    }
    crate::info!("identity map dropped; on core 0's stack below {:#x}", km.stack_tops[0]);

    if cmd.bench {
        exit(u32::from(!crate::bench::run()));
    }
    if cmd.bench_tails {
        exit(u32::from(!crate::bench_tails::run()));
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
    if cmd.console {
        crate::console::run(failed);
    }
    exit(if failed == 0 { 0 } else { 1 })
}
