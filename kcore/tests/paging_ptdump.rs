//! ptdump and the W^X audit on a small kernel map.

use kcore::addr::{PhysAddr, VirtAddr, PAGE_SIZE};
use kcore::layout::{mmio_virt, Region, KIMAGE_VOFFSET, PAGE_OFFSET, VMEMMAP_START};
use kcore::mapper::{BlockPolicy, FrameAlloc, VecFrameAlloc};
use kcore::mm::{Kernel, Mm, User};
use kcore::pgtable::{Attrs, Level, MemType};
use kcore::phys::Arena;
use kcore::ptdump::{ptdump, wx_audit, PtdumpCounts, PtdumpLine, WX_MAX_REPORTED};
use kcore::tlb::RecordingMmu;

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
const KERNEL_START: VirtAddr = VirtAddr(0xFFFF_0000_0000_0000);
/// End of the walk: the top of the kernel half (wraps to 0).
const KERNEL_END: VirtAddr = VirtAddr(0);

struct Kmap {
    arena: Arena,
    alloc: VecFrameAlloc,
    mmu: RecordingMmu,
    mm: Mm<Kernel>,
}

impl Kmap {
    fn new() -> Kmap {
        let arena = Arena::new(PhysAddr(0x8000_0000), 1 << 20);
        let mut alloc = VecFrameAlloc::new(arena.base(), 256);
        let root = alloc.alloc_table().unwrap();
        Kmap {
            arena,
            alloc,
            mmu: RecordingMmu::new(),
            // SAFETY: a fresh table page in the arena, owned by this mm.
            mm: unsafe { Mm::new_kernel(root) },
        }
    }

    fn map(&mut self, va: u64, pa: u64, size: u64, attrs: Attrs, policy: BlockPolicy) {
        self.mm
            .mmap_write()
            .map_range(
                &self.arena,
                &mut self.alloc,
                &mut self.mmu,
                VirtAddr(va),
                PhysAddr(pa),
                size,
                attrs,
                policy,
            )
            .unwrap();
    }

    fn dump(&self) -> (Vec<PtdumpLine>, PtdumpCounts) {
        let mut lines = Vec::new();
        let g = self.mm.mmap_read();
        let counts = ptdump(&g, &self.arena, KERNEL_START, KERNEL_END, |l| lines.push(*l)).unwrap();
        (lines, counts)
    }
}

fn sample_kernel_map() -> Kmap {
    let mut k = Kmap::new();
    let img = KIMAGE_VOFFSET + 0x8_0000;
    let pages = BlockPolicy::PagesOnly;
    // Linear map: a 1 GiB block then two 2 MiB blocks.
    k.map(PAGE_OFFSET, 0, GIB + 2 * MIB2, Attrs::kernel_data(), BlockPolicy::ALL_BLOCKS);
    // Kernel image, W^X: text in two calls (they merge), rodata, data.
    k.map(img, 0x8_0000, 2 * PAGE_SIZE, Attrs::kernel_text(), pages);
    k.map(img + 0x2000, 0x8_2000, PAGE_SIZE, Attrs::kernel_text(), pages);
    k.map(img + 0x3000, 0x8_3000, 2 * PAGE_SIZE, Attrs::kernel_rodata(), pages);
    k.map(img + 0x5000, 0x8_5000, 4 * PAGE_SIZE, Attrs::kernel_data(), pages);
    // MMIO.
    let mmio = mmio_virt(0xFE20_0000).unwrap().0;
    k.map(mmio, 0xFE20_0000, 2 * PAGE_SIZE, Attrs::device(), pages);
    // vmemmap: one 2 MiB block, and pages after a hole.
    k.map(VMEMMAP_START, 0x4000_0000, MIB2, Attrs::kernel_data(), BlockPolicy::ALL_BLOCKS);
    k.map(VMEMMAP_START + MIB2 + PAGE_SIZE, 0x4020_1000, PAGE_SIZE, Attrs::kernel_data(), pages);
    k
}

#[test]
fn dump_merges_runs() {
    let k = sample_kernel_map();
    let (lines, counts) = k.dump();
    for l in &lines {
        println!("{l}");
    }
    assert_eq!(counts, PtdumpCounts { blocks_l1: 1, blocks_l2: 3, pages: 12, lines: 8 });
    let summary: Vec<_> = lines
        .iter()
        .map(|l| (l.start.0, l.size, l.level, l.writable, l.x_el1, l.mem, l.region))
        .collect();
    let img = KIMAGE_VOFFSET + 0x8_0000;
    let mmio = mmio_virt(0xFE20_0000).unwrap().0;
    let n = MemType::Normal;
    use Level::*;
    use Region::*;
    assert_eq!(
        summary,
        vec![
            (PAGE_OFFSET, GIB, L1, true, false, n, LinearMap),
            (PAGE_OFFSET + GIB, 2 * MIB2, L2, true, false, n, LinearMap),
            (img, 3 * PAGE_SIZE, L3, false, true, n, KernelImage),
            (img + 0x3000, 2 * PAGE_SIZE, L3, false, false, n, KernelImage),
            (img + 0x5000, 4 * PAGE_SIZE, L3, true, false, n, KernelImage),
            (mmio, 2 * PAGE_SIZE, L3, true, false, MemType::Device, Mmio),
            (VMEMMAP_START, MIB2, L2, true, false, n, Vmemmap),
            (VMEMMAP_START + MIB2 + PAGE_SIZE, PAGE_SIZE, L3, true, false, n, Vmemmap),
        ]
    );
    assert!(lines.iter().all(|l| l.end.0 - l.start.0 == l.size && l.global && !l.x_el0));
    assert_eq!(
        lines[0].to_string(),
        "0xffff000000000000-0xffff000040000000      1G BLK 1G RW     PXN UXN    Normal [Linear Mapping]"
    );
    assert_eq!(
        lines[2].to_string(),
        "0xffff800000080000-0xffff800000083000     12K PTE 4K ro     x   UXN    Normal [Kernel Image]"
    );
    assert!(lines[5].to_string().contains("Device [MMIO]"));
}

#[test]
fn dump_a_subrange_clips_lines() {
    let k = sample_kernel_map();
    let mut lines = Vec::new();
    let g = k.mm.mmap_read();
    let start = VirtAddr(PAGE_OFFSET + GIB - 2 * MIB2);
    let end = VirtAddr(PAGE_OFFSET + GIB + MIB2);
    let c = ptdump(&g, &k.arena, start, end, |l| lines.push(*l)).unwrap();
    assert_eq!((c.blocks_l1, c.blocks_l2, c.lines), (1, 1, 2));
    assert_eq!((lines[0].start, lines[0].size), (start, 2 * MIB2));
    assert_eq!((lines[1].start, lines[1].end), (VirtAddr(PAGE_OFFSET + GIB), end));
}

#[test]
fn wx_audit_finds_writable_executable() {
    let mut k = sample_kernel_map();
    let g = k.mm.mmap_read();
    let r = wx_audit(&g, &k.arena, KERNEL_START, KERNEL_END).unwrap();
    assert!(r.is_clean(), "{r:?}");
    drop(g);
    // Ten W+X pages, separated by holes.
    let base = KIMAGE_VOFFSET + 0x100_0000;
    let wx = Attrs::kernel_data().with_pxn(false);
    for i in 0..10u64 {
        k.map(
            base + 2 * i * PAGE_SIZE,
            0x10_0000 + i * PAGE_SIZE,
            PAGE_SIZE,
            wx,
            BlockPolicy::PagesOnly,
        );
    }
    let g = k.mm.mmap_read();
    let r = wx_audit(&g, &k.arena, KERNEL_START, KERNEL_END).unwrap();
    assert_eq!(r.count, 10);
    let first: Vec<_> = r.offenders().map(|o| (o.va.0, o.level, o.x_el1, o.x_el0)).collect();
    assert_eq!(first.len(), WX_MAX_REPORTED);
    assert_eq!(first[0], (base, Level::L3, true, false));
    assert_eq!(first[1].0, base + 2 * PAGE_SIZE);
    // A user page writable and executable at EL0.
    let arena = Arena::new(PhysAddr(0x9000_0000), 64 * PAGE_SIZE);
    let mut alloc = VecFrameAlloc::new(arena.base(), 64);
    // SAFETY: fresh table page in `arena`; ASID 9 unused.
    let um: Mm<User> = unsafe { Mm::new_user(alloc.alloc_table().unwrap(), 9) };
    let mut w = um.mmap_write();
    let mut mmu = RecordingMmu::new();
    w.map_range(
        &arena,
        &mut alloc,
        &mut mmu,
        VirtAddr(0x40_0000),
        PhysAddr(0x1000),
        PAGE_SIZE,
        Attrs::user_data().with_uxn(false),
        BlockPolicy::ALL_BLOCKS,
    )
    .unwrap();
    w.map_range(
        &arena,
        &mut alloc,
        &mut mmu,
        VirtAddr(0x50_0000),
        PhysAddr(0x2000),
        PAGE_SIZE,
        Attrs::user_text(),
        BlockPolicy::ALL_BLOCKS,
    )
    .unwrap();
    let r = wx_audit(&w, &arena, VirtAddr(0), VirtAddr(1 << 48)).unwrap();
    assert_eq!(r.count, 1);
    let o = r.offenders().next().unwrap();
    assert_eq!((o.va, o.x_el0), (VirtAddr(0x40_0000), true));
    // The user map's dump marks it User and non-global.
    let mut lines = Vec::new();
    ptdump(&w, &arena, VirtAddr(0), VirtAddr(1 << 48), |l| lines.push(*l)).unwrap();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l.region == Region::User && !l.global && l.el0));
    assert!(lines[1].x_el0 && !lines[1].writable);
}

/// The kernel image's VA range in `sample_kernel_map`.
const IMAGE: (VirtAddr, VirtAddr) =
    (VirtAddr(KIMAGE_VOFFSET + 0x8_0000), VirtAddr(KIMAGE_VOFFSET + 0x8_9000));

#[test]
fn alias_audit_finds_the_writable_linear_alias_of_text_and_rodata() {
    // The sample's linear map covers the image's frames read-write: text (3 pages) and rodata
    // (2 pages) are writable through it.
    let k = sample_kernel_map();
    let g = k.mm.mmap_read();
    let r = kcore::ptdump::alias_audit(&g, &k.arena, KERNEL_START, KERNEL_END, IMAGE).unwrap();
    assert_eq!(r.protected_bytes, 5 * PAGE_SIZE);
    assert_eq!(r.count, 1, "the one 1 GiB linear block maps them");
    let o = r.offenders().next().unwrap();
    assert_eq!(o.va, VirtAddr(PAGE_OFFSET));
    assert_eq!(o.pa, PhysAddr(0x8_0000));
    // The plain W^X audit sees nothing: no single entry is W+X.
    assert!(wx_audit(&g, &k.arena, KERNEL_START, KERNEL_END).unwrap().is_clean());
}

#[test]
fn alias_audit_is_clean_when_the_linear_alias_is_read_only() {
    let mut k = Kmap::new();
    let img = KIMAGE_VOFFSET + 0x8_0000;
    let pages = BlockPolicy::PagesOnly;
    // Linear map of 0..4 MiB: the image's text and rodata frames read-only, the rest RW.
    k.map(PAGE_OFFSET, 0, 0x8_0000, Attrs::kernel_data(), pages);
    k.map(PAGE_OFFSET + 0x8_0000, 0x8_0000, 5 * PAGE_SIZE, Attrs::kernel_rodata(), pages);
    k.map(PAGE_OFFSET + 0x8_5000, 0x8_5000, MIB2 - 0x8_5000, Attrs::kernel_data(), pages);
    k.map(PAGE_OFFSET + MIB2, MIB2, MIB2, Attrs::kernel_data(), BlockPolicy::ALL_BLOCKS);
    k.map(img, 0x8_0000, 3 * PAGE_SIZE, Attrs::kernel_text(), pages);
    k.map(img + 0x3000, 0x8_3000, 2 * PAGE_SIZE, Attrs::kernel_rodata(), pages);
    k.map(img + 0x5000, 0x8_5000, 4 * PAGE_SIZE, Attrs::kernel_data(), pages);
    let g = k.mm.mmap_read();
    let r = kcore::ptdump::alias_audit(&g, &k.arena, KERNEL_START, KERNEL_END, IMAGE).unwrap();
    assert_eq!(r.protected_bytes, 5 * PAGE_SIZE);
    assert_eq!(r.count, 0, "{:?}", r);
    drop(g);
    // Negative control: one data page of the linear map written over a text frame is caught.
    k.map(VMEMMAP_START, 0x8_1000, PAGE_SIZE, Attrs::kernel_data(), pages);
    let g = k.mm.mmap_read();
    let r = kcore::ptdump::alias_audit(&g, &k.arena, KERNEL_START, KERNEL_END, IMAGE).unwrap();
    assert_eq!(r.count, 1);
    assert_eq!(r.offenders().next().unwrap().pa, PhysAddr(0x8_1000));
}
