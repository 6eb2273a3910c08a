//! The physical-memory boot sequence end to end, as the firmware runs it on QEMU `raspi4b`:
//! memory map → memblock → vmemmap → descriptors → buddy → HugeTLB preallocation → hot-add of
//! the `memhp_reserve=` range with a self-hosted memmap; page conservation at every stage.

use kcore::addr::{Pfn, PhysAddr, PAGE_SIZE};
use kcore::bootinfo::{memory_map, BootInfo, MapLimits, MemorySource};
use kcore::buddy::{check_conservation, Buddy};
use kcore::cmdline;
use kcore::hugetlb::{HugePageSize, HugetlbPool, NoHooks};
use kcore::memblock::{MemRegion, Memblock, ReservedKind};
use kcore::page::{PageFlags, PageState};
use kcore::vmemmap::{hotplug_holdback, HostVmemmap, PAGES_PER_SECTION, VMEMMAP_BLOCK_SIZE};

/// BCM2711 limits: 44-bit PA (Cortex-A72), the kernel image at 0x80000.
const LIM: MapLimits = MapLimits::bcm2711(4, MemRegion::new(0x8_0000, 0x1000));
const FIXTURE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/bcm2711-rpi-4-b.dtb");

const QEMU_BOARD: [MemRegion; 2] =
    [MemRegion::new(0, 0x3c00_0000), MemRegion::new(0x4000_0000, 0x4000_0000)];

#[test]
fn qemu_boot_sequence() {
    // 1. Boot information and memory map (QEMU: the board table is authoritative).
    let dtb = std::fs::read(FIXTURE).unwrap();
    let info = BootInfo::parse(&dtb).unwrap();
    let map = memory_map(&QEMU_BOARD, Ok(&info), None, true, &LIM);
    assert_eq!(map.source, MemorySource::BoardTable);
    let cmd =
        cmdline::parse("hugepagesz=1G hugepages=1 hugepagesz=2M hugepages=32 memhp_reserve=256M");
    assert!(cmd.warnings().is_empty());

    // 2. memblock: RAM minus the hot-plug hold-back; reservations.
    let held = hotplug_holdback(&map.regions.as_slice()[0], cmd.memhp_reserve.unwrap()).unwrap();
    assert_eq!(held, MemRegion::from_range(0x2800_0000, 0x3800_0000));
    let mut mb = Memblock::new();
    for r in map.regions.iter() {
        mb.add_memory(r.base, r.size).unwrap();
    }
    mb.remove_memory(held.base, held.size).unwrap();
    for r in info.reserved.iter() {
        mb.reserve(r.base, r.size, ReservedKind::Firmware).unwrap();
    }
    mb.reserve(PhysAddr(0x8_0000), 0x40_0000, ReservedKind::KernelImage).unwrap();
    mb.reserve(PhysAddr(0x100_0000), dtb.len() as u64, ReservedKind::DeviceTree).unwrap();
    // Early on only the boot window (first GiB) is reachable: allocate below it. This also
    // keeps the 1 GiB bank at 0x4000_0000 whole for a 1 GiB huge page.
    mb.set_current_limit(PhysAddr(0x4000_0000));
    let boot_ram: Vec<MemRegion> = mb.memory().to_vec();
    let mut all_ram = boot_ram.clone();
    all_ram.push(held);
    all_ram.sort();

    // 3. vmemmap for boot RAM, descriptors initialised.
    let vm = HostVmemmap::new(&all_ram);
    // SAFETY: the host map_block only accepts blocks inside the arena.
    let stats = unsafe { vm.populate(&boot_ram, &mut mb, vm.host_map_block()) }.unwrap();
    // Sections 0-4, 7 and 8-15 (5 and 6 are held back).
    assert_eq!(stats.sections_populated, 14);
    vm.init_descriptors(&boot_ram);
    let tables = mb.alloc(4 * PAGE_SIZE, PAGE_SIZE, ReservedKind::EarlyTables).unwrap();
    assert!(tables.0 < 0x4000_0000);

    // 4. The buddy allocator takes the rest.
    let mut buddy = Buddy::new();
    let freed = buddy.free_memblock(&vm, &mb).unwrap();
    assert_eq!(freed * PAGE_SIZE, mb.free_bytes());
    let c = check_conservation(&vm, &boot_ram, &buddy).unwrap();
    assert_eq!(c.kernel_image, 0x400);
    assert_eq!(c.vmemmap, 14 * VMEMMAP_BLOCK_SIZE / PAGE_SIZE);
    assert_eq!(c.page_table, 4);
    assert_eq!(c.reserved, 1 + (dtb.len() as u64).div_ceil(PAGE_SIZE));
    assert_eq!(c.free, buddy.free_pages());

    // 5. HugeTLB from the command line.
    let mut pool = HugetlbPool::new();
    let rep = pool.preallocate(cmd.hugepage_requests(), &mut buddy, &vm, &mut NoHooks);
    assert!(rep.is_complete(), "{rep:?}");
    let one_g = pool.dequeue(HugePageSize::Size1G, &vm).unwrap();
    assert_eq!(one_g.phys_addr(), PhysAddr(0x4000_0000));
    pool.enqueue(one_g, &vm);
    let c = check_conservation(&vm, &boot_ram, &buddy).unwrap();
    assert_eq!(c.hugetlb, (1 << 18) + 32 * 512);

    // 6. Hot-add the held-back range; its memmap lives at the start of each section.
    let mut backing = Vec::new();
    let mut check = vm.host_map_block();
    // SAFETY: as above.
    let sh = unsafe {
        vm.populate_self_hosted(held, |va, pa| {
            backing.push(pa);
            check(va, pa)
        })
    }
    .unwrap();
    assert_eq!(backing, vec![PhysAddr(0x2800_0000), PhysAddr(0x3000_0000)]);
    vm.init_self_hosted(&sh);
    for u in sh.usable() {
        let p = u.pfns();
        buddy.free_range(&vm, Pfn(p.start), Pfn(p.end)).unwrap();
    }
    let first = vm.page(Pfn::containing(PhysAddr(0x2800_0000)));
    assert_eq!(first.state(), PageState::Vmemmap);
    assert!(first.test(PageFlags::VMEMMAP_SELF_HOSTED));
    let c2 = check_conservation(&vm, &all_ram, &buddy).unwrap();
    assert_eq!(c2.vmemmap, c.vmemmap + 2 * 512);
    assert_eq!(c2.free, c.free + 2 * (PAGES_PER_SECTION - 512));
    buddy.check(&vm).unwrap();
    pool.check(&vm).unwrap();
}

#[test]
fn top_down_without_a_limit_would_break_the_1g_page() {
    // The reason for set_current_limit above: memblock allocates top-down, so without a limit
    // the vmemmap blocks land at the top of the 1 GiB bank and no 1 GiB huge page fits.
    let mut mb = Memblock::new();
    for r in &QEMU_BOARD {
        mb.add_memory(r.base, r.size).unwrap();
    }
    let vm = HostVmemmap::new(&QEMU_BOARD);
    // SAFETY: host arena, checked by host_map_block.
    unsafe { vm.populate(&QEMU_BOARD, &mut mb, vm.host_map_block()) }.unwrap();
    vm.init_descriptors(&QEMU_BOARD);
    let mut buddy = Buddy::new();
    buddy.free_memblock(&vm, &mb).unwrap();
    let mut pool = HugetlbPool::new();
    let c = cmdline::parse("hugepagesz=1G hugepages=1");
    let rep = pool.preallocate(c.hugepage_requests(), &mut buddy, &vm, &mut NoHooks);
    assert_eq!(rep.get(HugePageSize::Size1G).allocated, 0);
    check_conservation(&vm, &QEMU_BOARD, &buddy).unwrap();
}
