//! Boot information: the real Pi 4 device tree, hand-built and patched trees, truncated and
//! mutated blobs (which must give errors, never panics), and the memory-map policy.

use kcore::addr::PhysAddr;
use kcore::bootinfo::{
    memory_map, BootInfo, BootInfoError, BootSource, DtbDefect, MapLimits, MapWarning,
    MemorySource, FDT_MAGIC, MAX_BANKS,
};
use kcore::cmdline;
use kcore::hugetlb::HugePageSize;
use kcore::memblock::MemRegion;
use proptest::prelude::*;

/// BCM2711 limits: 44-bit PA (Cortex-A72), the kernel image at 0x80000.
const LIM: MapLimits = MapLimits::bcm2711(4, MemRegion::new(0x8_0000, 0x1000));
const FIXTURE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/bcm2711-rpi-4-b.dtb");

fn fixture() -> Vec<u8> {
    std::fs::read(FIXTURE).expect("read the Pi 4 DTB fixture")
}

/// A minimal flattened-device-tree writer (version 17).
#[derive(Default)]
struct DtbBuilder {
    structure: Vec<u8>,
    strings: Vec<u8>,
    rsv: Vec<(u64, u64)>,
}

impl DtbBuilder {
    fn u32(&mut self, v: u32) -> &mut Self {
        self.structure.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn pad(&mut self) {
        while !self.structure.len().is_multiple_of(4) {
            self.structure.push(0);
        }
    }
    fn begin(&mut self, name: &str) -> &mut Self {
        self.u32(1);
        self.structure.extend_from_slice(name.as_bytes());
        self.structure.push(0);
        self.pad();
        self
    }
    fn end(&mut self) -> &mut Self {
        self.u32(2)
    }
    fn name_off(&mut self, name: &str) -> u32 {
        let mut off = 0;
        for s in self.strings.split(|&b| b == 0) {
            if s == name.as_bytes() {
                return off as u32;
            }
            off += s.len() + 1;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }
    fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let off = self.name_off(name);
        self.u32(3).u32(value.len() as u32).u32(off);
        self.structure.extend_from_slice(value);
        self.pad();
        self
    }
    fn cells(&mut self, name: &str, v: &[u32]) -> &mut Self {
        let bytes: Vec<u8> = v.iter().flat_map(|w| w.to_be_bytes()).collect();
        self.prop(name, &bytes)
    }
    fn string(&mut self, name: &str, v: &str) -> &mut Self {
        let mut bytes = v.as_bytes().to_vec();
        bytes.push(0);
        self.prop(name, &bytes)
    }
    fn memreserve(&mut self, base: u64, size: u64) -> &mut Self {
        self.rsv.push((base, size));
        self
    }
    fn finish(&mut self) -> Vec<u8> {
        self.u32(9);
        let off_rsv = 40usize;
        let off_struct = off_rsv + (self.rsv.len() + 1) * 16;
        let off_strings = off_struct + self.structure.len();
        let total = off_strings + self.strings.len();
        let mut out = Vec::new();
        for w in [
            FDT_MAGIC,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            off_rsv as u32,
            17,
            16,
            0,
            self.strings.len() as u32,
            self.structure.len() as u32,
        ] {
            out.extend_from_slice(&w.to_be_bytes());
        }
        for (b, s) in self.rsv.iter().chain(std::iter::once(&(0, 0))) {
            out.extend_from_slice(&b.to_be_bytes());
            out.extend_from_slice(&s.to_be_bytes());
        }
        out.extend_from_slice(&self.structure);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// A Pi 4 8 GB style tree: banks split over two memory nodes.
fn pi4_8gb() -> Vec<u8> {
    let mut b = DtbBuilder::default();
    b.memreserve(0, 0x1000);
    b.begin("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[1])
        .string("model", "Raspberry Pi 4 Model B Rev 1.4");
    b.begin("chosen")
        .string("bootargs", "hugepagesz=1G hugepages=2 hugepagesz=2M hugepages=64 ptdump")
        .end();
    b.begin("reserved-memory")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[1])
        .prop("ranges", &[]);
    b.begin("linux,cma").cells("size", &[0x400_0000]).end();
    b.begin("fw@3b400000").cells("reg", &[0, 0x3b40_0000, 0x4c0_0000]).prop("no-map", &[]).end();
    b.begin("off@0").cells("reg", &[0, 0x2000, 0x1000]).string("status", "disabled").end();
    b.end();
    b.begin("memory@0")
        .string("device_type", "memory")
        .cells("reg", &[0, 0, 0x3b40_0000, 0, 0x4000_0000, 0xbc00_0000])
        .end();
    b.begin("memory@100000000")
        .string("device_type", "memory")
        .cells("reg", &[1, 0, 0x8000_0000, 1, 0x8000_0000, 0x8000_0000])
        .end();
    b.begin("memory@800000000")
        .string("device_type", "memory")
        .string("status", "disabled")
        .cells("reg", &[8, 0, 0x1000])
        .end();
    b.begin("soc").cells("#address-cells", &[1]).end();
    b.end();
    b.finish()
}

fn one_memory_node(reg: &[u32], extra_root_cells: Option<(u32, u32)>) -> Vec<u8> {
    let mut b = DtbBuilder::default();
    b.begin("");
    if let Some((ac, sc)) = extra_root_cells {
        b.cells("#address-cells", &[ac]).cells("#size-cells", &[sc]);
    }
    b.begin("memory@0").string("device_type", "memory").cells("reg", reg).end();
    b.end();
    b.finish()
}

#[test]
fn fixture_as_shipped() {
    let d = fixture();
    let info = BootInfo::parse(&d).unwrap();
    assert_eq!(info.source, BootSource::Dtb);
    assert_eq!(info.blob_len, d.len());
    assert_eq!(info.model, Some("Raspberry Pi 4 Model B"));
    assert_eq!(info.cmdline, "");
    // /memory@0 { reg = <0 0 0>; }: the firmware fills it; unfilled, it is a zero-size bank.
    assert_eq!(info.memory, Err(BootInfoError::ZeroSizeBank { base: PhysAddr(0) }));
    // /memreserve/ 0 0x1000 (the spin tables); the reserved-memory children are either
    // dynamic (linux,cma) or disabled (nvram).
    assert_eq!(info.reserved.as_slice(), &[MemRegion::new(0, 0x1000)]);
    // The firmware then falls back to the board's table.
    let board = [MemRegion::new(0, 0x3b40_0000)];
    let m = memory_map(&board, Ok(&info), None, false, &LIM);
    assert_eq!(m.source, MemorySource::BoardTable);
    assert_eq!(m.regions.as_slice(), &board);
    assert_eq!(
        m.warnings().collect::<Vec<_>>(),
        vec![MapWarning::BootMemoryUnusable(BootInfoError::ZeroSizeBank { base: PhysAddr(0) })]
    );
}

/// Offset of the value of property `prop` of node `node` (a direct child of the root).
fn find_prop(d: &[u8], node: &str, prop: &str) -> Option<usize> {
    let w = |o: usize| u32::from_be_bytes(d[o..o + 4].try_into().unwrap()) as usize;
    let (off_struct, off_strings) = (w(8), w(12));
    let mut pos = off_struct;
    let mut path: Vec<String> = Vec::new();
    loop {
        let tok = w(pos);
        pos += 4;
        match tok {
            1 => {
                let end = pos + d[pos..].iter().position(|&b| b == 0).unwrap();
                path.push(String::from_utf8(d[pos..end].to_vec()).unwrap());
                pos = (end + 1 + 3) & !3;
            }
            2 => {
                path.pop();
            }
            3 => {
                let (len, nameoff) = (w(pos), w(pos + 4));
                pos += 8;
                let n0 = off_strings + nameoff;
                let n1 = n0 + d[n0..].iter().position(|&b| b == 0).unwrap();
                if path.len() == 2 && path[1] == node && &d[n0..n1] == prop.as_bytes() {
                    return Some(pos);
                }
                pos = (pos + len + 3) & !3;
            }
            4 => {}
            _ => return None,
        }
    }
}

#[test]
fn fixture_patched_like_the_firmware() {
    let mut d = fixture();
    let reg = find_prop(&d, "memory@0", "reg").unwrap();
    // reg = <0 0 0x3b400000>: the 1 GB-class low bank the firmware reports.
    d[reg + 8..reg + 12].copy_from_slice(&0x3b40_0000u32.to_be_bytes());
    let info = BootInfo::parse(&d).unwrap();
    assert_eq!(info.banks().unwrap(), &[MemRegion::new(0, 0x3b40_0000)]);
    let m = memory_map(&[], Ok(&info), None, false, &LIM);
    assert_eq!(m.source, MemorySource::Dtb);
    assert_eq!(m.regions.as_slice(), &[MemRegion::new(0, 0x3b40_0000)]);
    // QEMU raspi4b rewrites -dtb to 0..0x3c000000 only; the board table is authoritative.
    d[reg + 8..reg + 12].copy_from_slice(&0x3c00_0000u32.to_be_bytes());
    let info = BootInfo::parse(&d).unwrap();
    let qemu = [MemRegion::new(0, 0x3c00_0000), MemRegion::new(0x4000_0000, 0x4000_0000)];
    let m = memory_map(&qemu, Ok(&info), None, true, &LIM);
    assert_eq!(m.source, MemorySource::BoardTable);
    assert_eq!(m.regions.as_slice(), &qemu);
}

#[test]
fn built_tree_with_several_memory_nodes() {
    let d = pi4_8gb();
    let info = BootInfo::parse(&d).unwrap();
    assert_eq!(info.model, Some("Raspberry Pi 4 Model B Rev 1.4"));
    assert_eq!(
        info.banks().unwrap(),
        &[
            MemRegion::new(0, 0x3b40_0000),
            MemRegion::new(0x4000_0000, 0xbc00_0000),
            MemRegion::new(0x1_0000_0000, 0x8000_0000),
            MemRegion::new(0x1_8000_0000, 0x8000_0000),
        ]
    );
    assert_eq!(
        info.reserved.as_slice(),
        &[MemRegion::new(0, 0x1000), MemRegion::new(0x3b40_0000, 0x4c0_0000)]
    );
    let c = cmdline::parse(info.cmdline);
    assert_eq!(c.hugepages(HugePageSize::Size1G), 2);
    assert_eq!(c.hugepages(HugePageSize::Size2M), 64);
    assert!(c.ptdump && c.warnings().is_empty());
}

#[test]
fn bank_errors() {
    let ov = one_memory_node(&[0, 0, 0x2000, 0, 0x1000, 0x2000], None);
    assert_eq!(
        BootInfo::parse(&ov).unwrap().memory,
        Err(BootInfoError::OverlappingBanks {
            a: MemRegion::new(0, 0x2000),
            b: MemRegion::new(0x1000, 0x2000)
        })
    );
    let reg: Vec<u32> =
        (0..MAX_BANKS as u32 + 1).flat_map(|i| [0, i * 0x10_0000, 0x1000]).collect();
    assert_eq!(
        BootInfo::parse(&one_memory_node(&reg, None)).unwrap().memory,
        Err(BootInfoError::TooManyBanks { max: MAX_BANKS })
    );
    // 64-bit sizes (#size-cells = 2) and 32-bit addresses (#address-cells = 1).
    let big = one_memory_node(&[0x4000_0000, 1, 0], Some((1, 2)));
    assert_eq!(
        BootInfo::parse(&big).unwrap().banks().unwrap(),
        &[MemRegion::new(0x4000_0000, 1 << 32)]
    );
    // A reg that is not a whole number of entries.
    let odd = one_memory_node(&[0, 0, 0x1000, 7], None);
    assert!(matches!(
        BootInfo::parse(&odd).unwrap().memory,
        Err(BootInfoError::MalformedDtb { defect: DtbDefect::BadCells, .. })
    ));
    // No memory node at all.
    let mut b = DtbBuilder::default();
    b.begin("").begin("chosen").string("bootargs", "x").end().end();
    let blob = b.finish();
    let info = BootInfo::parse(&blob).unwrap();
    assert_eq!(info.memory, Err(BootInfoError::NoMemoryNode));
    assert_eq!(info.cmdline, "x");
}

#[test]
fn truncated_blobs_are_errors() {
    let d = fixture();
    for len in [0, 3, 8, 39, 40, 41, 1000, d.len() / 2, d.len() - 1] {
        let r = BootInfo::parse(&d[..len]);
        assert!(matches!(r, Err(BootInfoError::Truncated { .. })), "len {len}: {r:?}");
    }
    // Extra bytes after the blob are fine.
    let mut longer = d.clone();
    longer.extend_from_slice(&[0xaa; 100]);
    assert_eq!(BootInfo::parse(&longer).unwrap().blob_len, d.len());
}

#[test]
fn structural_defects_are_errors() {
    let good = pi4_8gb();
    let w = |d: &[u8], o: usize| u32::from_be_bytes(d[o..o + 4].try_into().unwrap()) as usize;
    let off_struct = w(&good, 8);
    let size_struct = w(&good, 36);
    let expect = |d: Vec<u8>, want: DtbDefect| {
        let r = BootInfo::parse(&d);
        assert!(
            matches!(r, Err(BootInfoError::MalformedDtb { defect, .. }) if defect == want),
            "{want:?}: {r:?}"
        );
    };
    // Unknown first token.
    let mut d = good.clone();
    d[off_struct..off_struct + 4].copy_from_slice(&7u32.to_be_bytes());
    expect(d, DtbDefect::BadToken { token: 7 });
    // Missing FDT_END (replace it by NOP).
    let mut d = good.clone();
    let end = off_struct + size_struct - 4;
    d[end..end + 4].copy_from_slice(&4u32.to_be_bytes());
    expect(d, DtbDefect::MissingEnd);
    // A property name offset outside the strings block: the first property of the root.
    let mut d = good.clone();
    let name_off = off_struct + 8 + 8;
    d[name_off..name_off + 4].copy_from_slice(&0xffffu32.to_be_bytes());
    expect(d, DtbDefect::BadProperty);
    // Structure block beyond totalsize.
    let mut d = good.clone();
    d[36..40].copy_from_slice(&0x10_0000u32.to_be_bytes());
    expect(d, DtbDefect::BlockOutOfBounds);
    // Old version.
    let mut d = good.clone();
    d[20..24].copy_from_slice(&16u32.to_be_bytes());
    expect(d, DtbDefect::BadVersion { version: 16, last_comp: 16 });
    // Bad magic is not a DTB at all.
    let mut d = good.clone();
    d[0] = 0;
    assert!(matches!(BootInfo::parse(&d), Err(BootInfoError::BadMagic { .. })));
    // A property after a subnode.
    let mut b = DtbBuilder::default();
    b.begin("").begin("a").end().cells("x", &[1]).end();
    expect(b.finish(), DtbDefect::Misplaced);
    // Unbalanced.
    let mut b = DtbBuilder::default();
    b.begin("").begin("a").end();
    expect(b.finish(), DtbDefect::Unbalanced);
    // #address-cells of the wrong length.
    let mut b = DtbBuilder::default();
    b.begin("").prop("#address-cells", &[0, 1]).end();
    expect(b.finish(), DtbDefect::BadCells);
    // Too deep.
    let mut b = DtbBuilder::default();
    b.begin("");
    for _ in 0..40 {
        b.begin("n");
    }
    for _ in 0..41 {
        b.end();
    }
    expect(b.finish(), DtbDefect::TooDeep);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the bytes, parsing returns; it never panics (the fdt crate would, unguarded).
    #[test]
    fn mutated_fixture_never_panics(
        flips in proptest::collection::vec((0usize..27386, any::<u8>()), 1..8),
        cut in proptest::option::of(0usize..27386),
    ) {
        let mut d = fixture();
        for (pos, byte) in flips {
            let p = pos % d.len();
            d[p] = byte;
        }
        if let Some(c) = cut {
            d.truncate(c);
        }
        let _ = BootInfo::parse(&d);
    }

    #[test]
    fn mutated_built_tree_never_panics(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let mut d = pi4_8gb();
        let n = d.len();
        for (pos, byte) in flips {
            d[pos % n] = byte;
        }
        if let Ok(info) = BootInfo::parse(&d) {
            // Whatever is reported is consistent.
            if let Ok(b) = info.banks() {
                for w in b.windows(2) {
                    prop_assert!(w[0].end() <= w[1].base.0);
                }
                prop_assert!(b.iter().all(|r| r.size > 0));
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(d in proptest::collection::vec(any::<u8>(), 0..512), dtb in any::<bool>()) {
        let mut d = d;
        if dtb && d.len() >= 4 {
            d[..4].copy_from_slice(&FDT_MAGIC.to_be_bytes());
        } else if d.len() >= 8 {
            d[4..8].copy_from_slice(&0x5441_0001u32.to_le_bytes());
        }
        let _ = BootInfo::parse(&d);
    }
}

/// `/memreserve/` entries of size 0 or wrapping past 2^64, and `/reserved-memory` children with
/// a zero size or a malformed `reg`: none kept as given, each noted, the notes in the map's
/// warnings.
#[test]
fn bad_reservations_are_dropped_or_clipped_and_warned() {
    use kcore::bootinfo::{ReservationDefect, ReservationNote};
    let mut b = DtbBuilder::default();
    b.memreserve(0x5000, 0).memreserve(0xFFFF_FFFF_FFFF_0000, 0x2_0000).memreserve(0, 0x1000);
    // Found by the fuzzer: a wrapping entry at the very last byte clips to nothing.
    b.memreserve(u64::MAX, 0x10);
    b.begin("").cells("#address-cells", &[2]).cells("#size-cells", &[1]);
    b.begin("reserved-memory").cells("#address-cells", &[2]).cells("#size-cells", &[1]);
    b.begin("empty@6000").cells("reg", &[0, 0x6000, 0]).end();
    b.begin("odd@7000").cells("reg", &[0, 0x7000]).end();
    b.end();
    b.begin("memory@0").string("device_type", "memory").cells("reg", &[0, 0, 0x3c00_0000]).end();
    b.end();
    let d = b.finish();
    let info = BootInfo::parse(&d).unwrap();
    assert_eq!(
        info.reserved.as_slice(),
        &[MemRegion::from_range(0xFFFF_FFFF_FFFF_0000, u64::MAX), MemRegion::new(0, 0x1000)]
    );
    let notes: Vec<_> = info.reservation_notes.iter().collect();
    assert_eq!(
        notes,
        vec![
            ReservationNote {
                region: MemRegion::new(0x5000, 0),
                defect: ReservationDefect::ZeroSize
            },
            ReservationNote {
                region: MemRegion::new(0xFFFF_FFFF_FFFF_0000, 0x2_0000),
                defect: ReservationDefect::Wraps
            },
            ReservationNote {
                region: MemRegion::new(u64::MAX, 0x10),
                defect: ReservationDefect::Wraps
            },
            ReservationNote {
                region: MemRegion::new(0x6000, 0),
                defect: ReservationDefect::ZeroSize
            },
        ]
    );
    let m = memory_map(&[], Ok(&info), None, false, &LIM);
    assert_eq!(m.source, MemorySource::Dtb);
    // Four fit in the notes; the fifth (odd@7000's malformed reg) is counted.
    assert_eq!(info.reservation_notes.dropped(), 1);
    assert_eq!(m.warnings().filter(|w| matches!(w, MapWarning::Reservation(_))).count(), 4);
    assert!(m.warnings().any(|w| w == MapWarning::MoreReservationNotes(1)));
}
