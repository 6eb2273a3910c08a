//! Memory maps of 4 GB and 8 GB Pi 4 boards, as the VideoCore firmware writes them into the
//! device tree, driving everything that depends on the memory map: the boot-info parser and
//! memory-map choice, memblock, the vmemmap sections, the buddy allocator, the HugeTLB pools
//! (1 GiB folios above 4 GiB) and the physical address size from `ID_AA64MMFR0_EL1`.
//!
//! The trees are made in the test from the shared fixture (`bcm2711-rpi-4-b.dtb` from Debian's
//! kernel package, whose `/memory@0` says `reg = <0 0 0>`) by rewriting that `reg` to the banks a
//! real board's firmware reports (`#address-cells = 2`, `#size-cells = 1`, so a bank is at most
//! 4 GiB - 1 and the 4 GiB above 4 GiB of an 8 GB board come as two entries):
//!
//! | board | banks |
//! |-------|-------|
//! | 4 GB | `0..0x3b40_0000` (the VideoCore keeps the rest below 1 GiB), `0x4000_0000..0xfc00_0000` (up to the MMIO window) |
//! | 8 GB | the same plus `0x1_0000_0000..0x1_8000_0000`, `0x1_8000_0000..0x2_0000_0000` |

use kcore::addr::{Pfn, PhysAddr, PAGE_SIZE};
use kcore::bootinfo::{self, BootInfo, MemorySource};
use kcore::buddy::check_conservation;
use kcore::hugetlb::{check_folio, HugePageSize, HugetlbPool, NoHooks};
use kcore::memblock::{MemRegion, Memblock, ReservedKind};
use kcore::pa_range;
use kcore::vmemmap::{pfn_to_section, SECTION_SIZE};

const FIXTURE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/bcm2711-rpi-4-b.dtb");
const GIB: u64 = 1 << 30;
/// The rpi4 board's last-resort table (boards/rpi4): the part of the first bank every model has.
const RPI4_TABLE: [MemRegion; 1] = [MemRegion::new(0, 0x3b40_0000)];
/// The Cortex-A72's ID_AA64MMFR0_EL1 (TRM: 0x0000_0000_0000_1124): PARange 0b0100 is 44 bits.
const A72_MMFR0: u64 = 0x1124;

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}

/// Replaces the `reg` property of the node `node` (a child of the root) in a flattened device
/// tree, growing or shrinking the structure block and fixing the header's offsets and sizes.
fn set_reg(dtb: &[u8], node: &str, value: &[u8]) -> Vec<u8> {
    let off_struct = be32(dtb, 8) as usize;
    let off_strings = be32(dtb, 12) as usize;
    let size_struct = be32(dtb, 36) as usize;
    let name_at = |nameoff: usize| {
        let s = &dtb[off_strings + nameoff..];
        std::str::from_utf8(&s[..s.iter().position(|&c| c == 0).unwrap()]).unwrap()
    };
    let align = |n: usize| (n + 3) & !3;
    let (mut pos, mut depth, mut in_node) = (off_struct, 0, false);
    loop {
        match be32(dtb, pos) {
            1 => {
                let name_end = pos + 4 + dtb[pos + 4..].iter().position(|&c| c == 0).unwrap();
                let name = std::str::from_utf8(&dtb[pos + 4..name_end]).unwrap();
                depth += 1;
                in_node = depth == 2 && name == node;
                pos = align(name_end + 1);
            }
            2 => {
                depth -= 1;
                in_node = false;
                pos += 4;
            }
            3 => {
                let len = be32(dtb, pos + 4) as usize;
                if in_node && name_at(be32(dtb, pos + 8) as usize) == "reg" {
                    let old_end = pos + 12 + align(len);
                    let mut out = dtb[..pos + 4].to_vec();
                    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                    out.extend_from_slice(&dtb[pos + 8..pos + 12]);
                    out.extend_from_slice(value);
                    out.resize(align(out.len()), 0);
                    let delta = out.len() as isize - old_end as isize;
                    out.extend_from_slice(&dtb[old_end..]);
                    let fix = |out: &mut Vec<u8>, field: usize, moved: bool| {
                        let v = be32(out, field) as isize;
                        if moved {
                            out[field..field + 4]
                                .copy_from_slice(&((v + delta) as u32).to_be_bytes());
                        }
                    };
                    fix(&mut out, 4, true); // totalsize
                    fix(&mut out, 12, off_strings > off_struct); // off_dt_strings
                    fix(&mut out, 36, true); // size_dt_struct
                    assert_eq!(be32(&out, 36) as isize, size_struct as isize + delta);
                    return out;
                }
                pos = align(pos + 12 + len);
            }
            4 => pos += 4,
            9 => panic!("no {node}/reg in the tree"),
            t => panic!("bad token {t:#x} at {pos:#x}"),
        }
    }
}

/// `reg` cells for banks with `#address-cells = 2`, `#size-cells = 1`.
fn reg_2_1(banks: &[(u64, u64)]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(base, size) in banks {
        v.extend_from_slice(&((base >> 32) as u32).to_be_bytes());
        v.extend_from_slice(&(base as u32).to_be_bytes());
        v.extend_from_slice(&u32::try_from(size).unwrap().to_be_bytes());
    }
    v
}

const BANKS_4G: [(u64, u64); 2] = [(0, 0x3b40_0000), (0x4000_0000, 0xbc00_0000)];
const BANKS_8G: [(u64, u64); 4] = [
    (0, 0x3b40_0000),
    (0x4000_0000, 0xbc00_0000),
    (0x1_0000_0000, 0x8000_0000),
    (0x1_8000_0000, 0x8000_0000),
];

fn board_dtb(banks: &[(u64, u64)]) -> Vec<u8> {
    let fixture = std::fs::read(FIXTURE).expect("the shared DTB fixture");
    set_reg(&fixture, "memory@0", &reg_2_1(banks))
}

/// The memory map the firmware would pick on the rpi4 board: the device tree's.
fn rpi4_map(dtb: &[u8]) -> Vec<MemRegion> {
    let info = BootInfo::parse(dtb).expect("the edited tree parses");
    assert_eq!(info.model, Some("Raspberry Pi 4 Model B"));
    // The Cortex-A72's PARange (0b0100: 44 bits) and a kernel image at its load address.
    let limits = bootinfo::MapLimits::bcm2711(0b0100, MemRegion::new(0x8_0000, 0x10_0000));
    let map = bootinfo::memory_map(&RPI4_TABLE, Ok(&info), None, false, &limits);
    assert_eq!(map.source, MemorySource::Dtb, "{:?}", map.warnings().collect::<Vec<_>>());
    map.regions.iter().copied().collect()
}

/// Merge touching regions (the firmware's two halves of the high 4 GiB are one range).
fn merged(regions: &[MemRegion]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for r in regions {
        match out.last_mut() {
            Some(last) if last.1 == r.base.0 => last.1 = r.end(),
            _ => out.push((r.base.0, r.end())),
        }
    }
    out
}

fn total(regions: &[MemRegion]) -> u64 {
    regions.iter().map(|r| r.size).sum()
}

#[test]
fn the_edited_trees_keep_everything_else() {
    let fixture = std::fs::read(FIXTURE).unwrap();
    let dtb = board_dtb(&BANKS_8G);
    assert_eq!(dtb.len(), fixture.len() + 48 - 12);
    let a = BootInfo::parse(&fixture).unwrap();
    let b = BootInfo::parse(&dtb).unwrap();
    assert_eq!((a.model, a.cmdline, a.reserved), (b.model, b.cmdline, b.reserved));
    // The fixture's own `reg = <0 0 0>` is no memory at all: the firmware falls back.
    assert!(a.memory.is_err());
    // Negative control: the editor really changes the banks.
    let one = board_dtb(&[(0, GIB)]);
    assert_eq!(rpi4_map(&one), [MemRegion::new(0, GIB)]);
}

#[test]
fn banks_above_1g_and_4g_are_found() {
    let m4 = rpi4_map(&board_dtb(&BANKS_4G));
    assert_eq!(merged(&m4), [(0, 0x3b40_0000), (0x4000_0000, 0xfc00_0000)]);
    assert_eq!(total(&m4), 0x3b40_0000 + 0xbc00_0000);
    let m8 = rpi4_map(&board_dtb(&BANKS_8G));
    assert_eq!(
        merged(&m8),
        [(0, 0x3b40_0000), (0x4000_0000, 0xfc00_0000), (0x1_0000_0000, 0x2_0000_0000)]
    );
    assert_eq!(total(&m8), total(&m4) + 4 * GIB);
    // Nothing reaches into the MMIO window at 0xfc00_0000..0x1_0000_0000.
    for r in &m8 {
        assert!(r.end() <= 0xfc00_0000 || r.base.0 >= 0x1_0000_0000, "{r:?}");
    }
}

#[test]
fn physical_address_size_covers_8g() {
    let bits = pa_range::pa_bits(A72_MMFR0).unwrap();
    assert_eq!(bits, 44);
    let m8 = rpi4_map(&board_dtb(&BANKS_8G));
    let top = m8.iter().map(MemRegion::end).max().unwrap();
    assert_eq!(top, 0x2_0000_0000);
    assert!(top <= 1 << bits);
    // A map beyond a 32-bit PARange would not fit: the check can fail.
    assert_eq!(pa_range::pa_bits(0x0), Some(32));
    assert!(top > 1 << pa_range::pa_bits(0x0).unwrap());
    assert_eq!(pa_range::pa_bits(0x7), None);
}

#[test]
fn memblock_takes_every_bank_and_allocates_above_4g() {
    for (banks, expect_total) in [
        (&BANKS_4G[..], 0x3b40_0000 + 0xbc00_0000),
        (&BANKS_8G[..], 0x3b40_0000 + 0xbc00_0000 + 4 * GIB),
    ] {
        let map = rpi4_map(&board_dtb(banks));
        let mut mb = Memblock::default();
        for r in &map {
            mb.add_memory(r.base, r.size).unwrap();
        }
        assert_eq!(mb.memory().iter().map(|r| r.size).sum::<u64>(), expect_total);
        mb.reserve(PhysAddr(0), 0x8_0000, ReservedKind::Firmware).unwrap();
        mb.reserve(PhysAddr(0x8_0000), 0x20_0000, ReservedKind::KernelImage).unwrap();
        // Top-down allocation lands in the highest bank.
        let top = map.iter().map(MemRegion::end).max().unwrap();
        let pa = mb.alloc(PAGE_SIZE, PAGE_SIZE, ReservedKind::EarlyTables).unwrap();
        assert_eq!(pa.0, top - PAGE_SIZE, "memblock allocates from the top of RAM");
    }
}

#[test]
fn vmemmap_sections_and_buddy_cover_4g_and_8g() {
    for (banks, sections) in [(&BANKS_4G[..], 32), (&BANKS_8G[..], 64)] {
        let map = rpi4_map(&board_dtb(banks));
        let (vm, buddy) = kcore::buddy::host_setup(&map);
        assert_eq!(vm.nr_present_sections(), sections);
        // Section-granular validity (as Linux's pfn_valid with SPARSEMEM): the hole between
        // the VideoCore's part of the first GiB and 1 GiB is in a present section; the MMIO
        // window above 0xfc00_0000 is in one too (section 31 holds 0xf800_0000..0x1_0000_0000),
        // nothing in the section above the top is.
        let top = map.iter().map(MemRegion::end).max().unwrap();
        assert!(vm.pfn_valid(Pfn(0x3b40_0000 / PAGE_SIZE)));
        assert!(vm.pfn_valid(Pfn((top - PAGE_SIZE) / PAGE_SIZE)));
        assert!(!vm.pfn_valid(Pfn(top.next_multiple_of(SECTION_SIZE) / PAGE_SIZE)));
        assert_eq!(pfn_to_section(Pfn((top - PAGE_SIZE) / PAGE_SIZE)) + 1, sections);
        assert_eq!(top.div_ceil(SECTION_SIZE) as usize, sections);
        assert_eq!(buddy.free_pages(), total(&map) / PAGE_SIZE);
        check_conservation(&vm, &map, &buddy).unwrap();
    }
}

#[test]
fn gigantic_folios_above_4g() {
    for (banks, gigantic, above_4g) in [(&BANKS_4G[..], 2, 0), (&BANKS_8G[..], 6, 4)] {
        let map = rpi4_map(&board_dtb(banks));
        let (vm, mut buddy) = kcore::buddy::host_setup(&map);
        let mut pool = HugetlbPool::new();
        let want = kcore::cmdline::parse("hugepagesz=1G hugepages=8 hugepagesz=2M hugepages=64");
        let r = pool.preallocate(want.hugepage_requests(), &mut buddy, &vm, &mut NoHooks);
        // Only 1 GiB-aligned whole GiBs of RAM make 1 GiB folios: 0x4000_0000 and 0x8000_0000
        // (0xc000_0000.. stops at the MMIO window), plus four above 4 GiB on an 8 GB board.
        assert_eq!(r.get(HugePageSize::Size1G).allocated, gigantic);
        assert_eq!(r.get(HugePageSize::Size2M).allocated, 64);
        let mut folios = Vec::new();
        while let Some(f) = pool.dequeue(HugePageSize::Size1G, &vm) {
            check_folio(&f, &vm).unwrap();
            folios.push(f);
        }
        let high = folios.iter().filter(|f| f.phys_addr().0 >= 4 * GIB).count();
        assert_eq!(high, above_4g);
        for f in folios {
            pool.enqueue(f, &vm);
        }
        pool.check(&vm).unwrap();
        let census = check_conservation(&vm, &map, &buddy).unwrap();
        assert_eq!(census.hugetlb, gigantic * (1 << 18) + 64 * 512);
        assert_eq!(
            pool.shrink(HugePageSize::Size1G, 8, &mut buddy, &vm, &mut NoHooks),
            Ok(gigantic)
        );
        assert_eq!(pool.shrink(HugePageSize::Size2M, 64, &mut buddy, &vm, &mut NoHooks), Ok(64));
        assert_eq!(buddy.free_pages(), total(&map) / PAGE_SIZE);
    }
}
