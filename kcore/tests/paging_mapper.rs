//! The mapper against a naive model, and each of its errors.

use kcore::addr::{PhysAddr, VirtAddr, PAGE_SIZE};
use kcore::bbm_check::{check_break_before_make, check_published};
use kcore::mapper::{
    map_range, translate, unmap_range, BlockPolicy, MapError, MapRequest, MapStats, UnmapStats,
    VecFrameAlloc,
};
use kcore::pgtable::{Attrs, Level, VaHalf};
use kcore::phys::Arena;
use kcore::tlb::{MmuEvent, MmuOps, RecordingMmu, TlbScope};
use proptest::prelude::*;
use std::collections::BTreeMap;

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
const ARENA_BASE: PhysAddr = PhysAddr(0x8000_0000);

/// Fake physical memory for tables, a frame allocator over it, and a root table.
struct Fixture {
    arena: Arena,
    alloc: VecFrameAlloc,
    mmu: RecordingMmu,
    root: PhysAddr,
}

impl Fixture {
    fn new(arena_size: u64) -> Fixture {
        let arena = Arena::new(ARENA_BASE, arena_size);
        let mut alloc = VecFrameAlloc::new(ARENA_BASE, arena_size / PAGE_SIZE);
        let root = kcore::mapper::FrameAlloc::alloc_table(&mut alloc).unwrap();
        Fixture { arena, alloc, mmu: RecordingMmu::new(), root }
    }

    fn map(
        &mut self,
        va: u64,
        pa: u64,
        size: u64,
        attrs: Attrs,
        policy: BlockPolicy,
    ) -> Result<MapStats, MapError> {
        // SAFETY: the root and all tables live in the arena, edited only by this fixture.
        unsafe {
            map_range(
                self.root,
                &self.arena,
                &mut self.alloc,
                &mut self.mmu,
                VirtAddr(va),
                PhysAddr(pa),
                size,
                attrs,
                policy,
            )
        }
    }

    fn unmap(&mut self, va: u64, size: u64) -> Result<UnmapStats, MapError> {
        // SAFETY: as in `map`; nothing uses the (fake) mapped memory.
        unsafe {
            unmap_range(
                self.root,
                &self.arena,
                &mut self.alloc,
                &mut self.mmu,
                VirtAddr(va),
                size,
                TlbScope::AllAsids,
            )
        }
    }

    fn translate(&self, va: u64) -> Option<(PhysAddr, Attrs, Level)> {
        // SAFETY: the root and its tables live in the arena.
        unsafe { translate(self.root, &self.arena, VirtAddr(va)) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Leaf {
    size: u64,
    pa: u64,
    attrs: Attrs,
    level: Level,
}

/// The model: leaf mappings by first VA.
#[derive(Default, Debug)]
struct Model {
    leaves: BTreeMap<u64, Leaf>,
}

impl Model {
    /// Leaves intersecting `[va, end)`, by address.
    fn overlapping(&self, va: u64, end: u64) -> Vec<(u64, Leaf)> {
        let first = self
            .leaves
            .range(..va)
            .next_back()
            .filter(|(s, l)| **s + l.size > va)
            .map(|(s, _)| *s)
            .unwrap_or(va);
        self.leaves.range(first..end).map(|(s, l)| (*s, *l)).collect()
    }

    fn lookup(&self, va: u64) -> Option<(PhysAddr, Attrs, Level)> {
        let (s, l) = self.leaves.range(..=va).next_back()?;
        (va - s < l.size).then(|| (PhysAddr(l.pa + (va - s)), l.attrs, l.level))
    }

    /// What `map_range` must do; updates the model on success.
    fn map(
        &mut self,
        va: u64,
        pa: u64,
        size: u64,
        attrs: Attrs,
        policy: BlockPolicy,
    ) -> Result<MapStats, VirtAddr> {
        let end = va + size;
        if let Some((s, _)) = self.overlapping(va, end).first() {
            return Err(VirtAddr((*s).max(va)));
        }
        let mut stats = MapStats::default();
        let mut pos = va;
        while pos < end {
            let p = pa + (pos - va);
            let level = [Level::L1, Level::L2]
                .into_iter()
                .find(|l| {
                    let sz = l.size();
                    policy.allows(*l)
                        && pos.is_multiple_of(sz)
                        && p.is_multiple_of(sz)
                        && end - pos >= sz
                })
                .unwrap_or(Level::L3);
            match level {
                Level::L1 => stats.blocks_l1 += 1,
                Level::L2 => stats.blocks_l2 += 1,
                _ => stats.pages += 1,
            }
            self.leaves.insert(pos, Leaf { size: level.size(), pa: p, attrs, level });
            pos += level.size();
        }
        Ok(stats)
    }

    /// What `unmap_range` must do; updates the model on success.
    fn unmap(&mut self, va: u64, size: u64) -> Result<UnmapStats, (VirtAddr, Level)> {
        let end = va + size;
        let hit = self.overlapping(va, end);
        if let Some((s, l)) = hit.iter().find(|(s, l)| *s < va || *s + l.size > end) {
            return Err((VirtAddr(*s), l.level));
        }
        let mut stats = UnmapStats::default();
        for (s, l) in hit {
            self.leaves.remove(&s);
            match l.level {
                Level::L1 => stats.blocks_l1 += 1,
                Level::L2 => stats.blocks_l2 += 1,
                _ => stats.pages += 1,
            }
        }
        Ok(stats)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Map { off: u64, pa: u64, size: u64, attrs: Attrs, policy: BlockPolicy },
    Unmap { off: u64, size: u64 },
}

/// Offsets aligned to 1 GiB, 2 MiB or 4 KiB, inside `gib` GiB.
fn offset(gib: u64) -> impl Strategy<Value = u64> {
    (0..gib, 0..512u64, 0..512u64, 0..3u8).prop_map(|(g, m, p, class)| match class {
        0 => g * GIB,
        1 => g * GIB + m * MIB2,
        _ => g * GIB + m * MIB2 + p * PAGE_SIZE,
    })
}

/// Sizes that make the mapper choose pages, 2 MiB blocks and 1 GiB blocks.
fn size() -> impl Strategy<Value = u64> {
    (0..4u8, 1..3u64, 0..4u64, 1..40u64).prop_map(|(class, g, m, p)| match class {
        0 => p * PAGE_SIZE,
        1 => (m + 1) * MIB2 + (p % 3) * PAGE_SIZE,
        2 => g * GIB + m * MIB2,
        _ => m * MIB2 + p * PAGE_SIZE,
    })
}

fn attrs() -> impl Strategy<Value = Attrs> {
    prop_oneof![
        Just(Attrs::kernel_data()),
        Just(Attrs::kernel_rodata()),
        Just(Attrs::kernel_text()),
        Just(Attrs::device()),
        Just(Attrs::user_data()),
    ]
}

fn policy() -> impl Strategy<Value = BlockPolicy> {
    prop_oneof![
        3 => Just(BlockPolicy::ALL_BLOCKS),
        1 => Just(BlockPolicy::AllowBlocks { max: Level::L2 }),
        1 => Just(BlockPolicy::PagesOnly),
    ]
}

const WINDOW_GIB: u64 = 8;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (offset(WINDOW_GIB), offset(64), size(), attrs(), policy()).prop_map(
            |(off, pa, size, attrs, policy)| {
                let size = size.min(WINDOW_GIB * GIB - off);
                // Keep pages-only maps small: every page is a model entry.
                let policy = if policy == BlockPolicy::PagesOnly && size > 8 * MIB2 {
                    BlockPolicy::AllowBlocks { max: Level::L2 }
                } else {
                    policy
                };
                // Keep big ranges blocky: PA congruent to VA mod 2 MiB (else every page is a
                // 4 KiB entry, which is correct but slow to model).
                let pa = if size > 8 * MIB2 { pa - pa % MIB2 + off % MIB2 } else { pa };
                Op::Map { off, pa: (1 << 38) + pa, size, attrs, policy }
            }
        ),
        2 => (offset(WINDOW_GIB), size()).prop_map(|(off, size)| Op::Unmap {
            off,
            size: size.min(WINDOW_GIB * GIB - off),
        }),
    ]
}

/// Window bases: the lower half, the upper half, and one straddling a level-0 boundary.
fn base() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(0xFFFF_8000_0000_0000u64),
        Just(0xFFFF_0080_0000_0000u64 - 4 * GIB),
    ]
}

fn check_agrees(f: &Fixture, m: &Model, base: u64, probes: &[u64]) -> Result<(), TestCaseError> {
    for &off in probes {
        if off >= WINDOW_GIB * GIB {
            continue;
        }
        let va = base + off;
        prop_assert_eq!(f.translate(va), m.lookup(va), "at {:#x}", va);
    }
    // Leaf starts and last pages, at most ~256 leaves.
    let step = (m.leaves.len() / 256).max(1);
    for (s, l) in m.leaves.iter().step_by(step) {
        prop_assert_eq!(f.translate(*s), Some((PhysAddr(l.pa), l.attrs, l.level)));
        let last = s + l.size - PAGE_SIZE;
        prop_assert_eq!(f.translate(last), m.lookup(last));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn mapper_matches_model(base in base(), ops in prop::collection::vec(op(), 1..20),
                            samples in prop::collection::vec(0..WINDOW_GIB * GIB, 16)) {
        let mut f = Fixture::new(16 << 20);
        let mut m = Model::default();
        for op in &ops {
            let before_tables = f.alloc.allocated();
            let before_writes = f.mmu.stats().entry_writes;
            let (off, size) = match *op {
                Op::Map { off, pa, size, attrs, policy } => {
                    let va = base + off;
                    let got = f.map(va, pa, size, attrs, policy);
                    let req = MapRequest { va: VirtAddr(va), pa: Some(PhysAddr(pa)), size };
                    match m.map(va, pa, size, attrs, policy) {
                        Ok(stats) => {
                            let got = got.unwrap();
                            prop_assert_eq!(MapStats { tables_allocated: got.tables_allocated, ..stats }, got);
                            prop_assert_eq!(f.alloc.allocated(), before_tables + got.tables_allocated as usize);
                        }
                        Err(existing) => {
                            prop_assert_eq!(got, Err(MapError::Overlap { req, existing }));
                            prop_assert_eq!(f.mmu.stats().entry_writes, before_writes);
                            prop_assert_eq!(f.alloc.allocated(), before_tables);
                        }
                    }
                    (off, size)
                }
                Op::Unmap { off, size } => {
                    let va = base + off;
                    let got = f.unmap(va, size);
                    match m.unmap(va, size) {
                        Ok(stats) => {
                            let got = got.unwrap();
                            prop_assert_eq!(UnmapStats { tables_freed: got.tables_freed, ..stats }, got);
                            prop_assert_eq!(f.alloc.allocated(), before_tables - got.tables_freed as usize);
                        }
                        Err((block, level)) => {
                            let req = MapRequest { va: VirtAddr(va), pa: None, size };
                            prop_assert_eq!(got, Err(MapError::PartialBlock { req, block, level }));
                            prop_assert_eq!(f.mmu.stats().entry_writes, before_writes);
                            prop_assert_eq!(f.alloc.allocated(), before_tables);
                        }
                    }
                    (off, size)
                }
            };
            let mut probes = vec![off, off + size - PAGE_SIZE, off + size];
            if off >= PAGE_SIZE {
                probes.push(off - PAGE_SIZE);
            }
            probes.extend_from_slice(&samples);
            check_agrees(&f, &m, base, &probes)?;
        }
        // The recorded sequence follows break-before-make wherever an entry is reused, and
        // every valid write is published by a DSB.
        prop_assert_eq!(check_break_before_make(f.mmu.events()), Ok(()));
        prop_assert_eq!(check_published(f.mmu.events()), Ok(()));
        // Unmapping the whole window frees every table but the root.
        f.unmap(base, WINDOW_GIB * GIB).unwrap();
        prop_assert_eq!(f.alloc.allocated(), 1);
        for off in samples {
            prop_assert_eq!(f.translate(base + off), None);
        }
    }
}

#[test]
fn failed_operations_write_nothing() {
    let mut f = Fixture::new(1 << 20);
    let va = 0xFFFF_8000_0000_0000;
    f.map(va + MIB2, 0x4000_0000, MIB2, Attrs::kernel_data(), BlockPolicy::ALL_BLOCKS).unwrap();
    let writes = f.mmu.stats().entry_writes;
    let tables = f.alloc.allocated();
    // Overlap at the very end of a long range: nothing of the head may be mapped.
    let r = f.map(va, 0x1000_0000, 3 * MIB2, Attrs::kernel_data(), BlockPolicy::PagesOnly);
    assert_eq!(
        r,
        Err(MapError::Overlap {
            req: MapRequest { va: VirtAddr(va), pa: Some(PhysAddr(0x1000_0000)), size: 3 * MIB2 },
            existing: VirtAddr(va + MIB2)
        })
    );
    assert_eq!(f.translate(va), None);
    assert_eq!(f.mmu.stats().entry_writes, writes);
    assert_eq!(f.alloc.allocated(), tables);
}

#[test]
fn block_choice_and_edges() {
    let mut f = Fixture::new(1 << 20);
    let va = 0xFFFF_0000_0000_0000;
    // 4 KiB + 2 MiB blocks + 1 GiB + 2 MiB + 4 KiB, with VA and PA congruent mod 1 GiB.
    let start = va + GIB - MIB2 - PAGE_SIZE;
    let size = PAGE_SIZE + MIB2 + GIB + MIB2 + PAGE_SIZE;
    let pa = 0x10_0000_0000 + GIB - MIB2 - PAGE_SIZE;
    let s = f.map(start, pa, size, Attrs::kernel_data(), BlockPolicy::ALL_BLOCKS).unwrap();
    assert_eq!((s.blocks_l1, s.blocks_l2, s.pages), (1, 2, 2));
    assert_eq!(f.translate(va + GIB).unwrap().2, Level::L1);
    assert_eq!(f.translate(va + GIB - MIB2).unwrap().2, Level::L2);
    assert_eq!(f.translate(start).unwrap().0, PhysAddr(pa));
    assert_eq!(f.translate(start - PAGE_SIZE), None);
    assert_eq!(f.translate(start + size), None);
    // Misaligned PA (mod 2 MiB): pages only.
    let mut g = Fixture::new(1 << 20);
    let s = g.map(va, 0x1000, 2 * MIB2, Attrs::kernel_data(), BlockPolicy::ALL_BLOCKS).unwrap();
    assert_eq!((s.blocks_l1, s.blocks_l2, s.pages), (0, 0, 1024));
    // The very top of the address space.
    let top = 0xFFFF_FFFF_FFE0_0000;
    let s = g.map(top, 0x4000_0000, MIB2, Attrs::kernel_data(), BlockPolicy::ALL_BLOCKS).unwrap();
    assert_eq!(s.blocks_l2, 1);
    assert_eq!(g.translate(!0xfff).unwrap().0, PhysAddr(0x4000_0000 + MIB2 - PAGE_SIZE));
    g.unmap(top, MIB2).unwrap();
    assert_eq!(g.translate(top), None);
}

#[test]
fn errors_name_the_range() {
    let mut f = Fixture::new(1 << 20);
    let k = Attrs::kernel_data();
    let p = BlockPolicy::ALL_BLOCKS;
    let req =
        |va: u64, pa: u64, size: u64| MapRequest { va: VirtAddr(va), pa: Some(PhysAddr(pa)), size };
    let va = 0xFFFF_8000_0000_0000;
    assert_eq!(
        f.map(va + 1, 0, PAGE_SIZE, k, p),
        Err(MapError::Unaligned(req(va + 1, 0, PAGE_SIZE)))
    );
    assert_eq!(
        f.map(va, 0x800, PAGE_SIZE, k, p),
        Err(MapError::Unaligned(req(va, 0x800, PAGE_SIZE)))
    );
    assert_eq!(f.map(va, 0, 100, k, p), Err(MapError::Unaligned(req(va, 0, 100))));
    assert_eq!(f.map(va, 0, 0, k, p), Err(MapError::ZeroSize(req(va, 0, 0))));
    // Wraps past the top of the space.
    assert_eq!(
        f.map(0xFFFF_FFFF_FFFF_F000, 0, 2 * PAGE_SIZE, k, p),
        Err(MapError::OutOfRange(req(0xFFFF_FFFF_FFFF_F000, 0, 2 * PAGE_SIZE)))
    );
    // Crosses the top of TTBR0's range.
    let low_top = (1u64 << 48) - PAGE_SIZE;
    assert_eq!(
        f.map(low_top, 0, 2 * PAGE_SIZE, k, p),
        Err(MapError::OutOfRange(req(low_top, 0, 2 * PAGE_SIZE)))
    );
    // Not canonical.
    assert_eq!(
        f.map(1 << 50, 0, PAGE_SIZE, k, p),
        Err(MapError::OutOfRange(req(1 << 50, 0, PAGE_SIZE)))
    );
    // PA beyond 48 bits.
    assert_eq!(
        f.map(va, (1 << 48) - PAGE_SIZE, 2 * PAGE_SIZE, k, p),
        Err(MapError::OutOfRange(req(va, (1 << 48) - PAGE_SIZE, 2 * PAGE_SIZE)))
    );
    // Unmap errors.
    assert_eq!(
        f.unmap(va, 0),
        Err(MapError::ZeroSize(MapRequest { va: VirtAddr(va), pa: None, size: 0 }))
    );
    f.map(va, 0x4000_0000, GIB, k, p).unwrap();
    let e = f.unmap(va + MIB2, MIB2).unwrap_err();
    assert_eq!(
        e,
        MapError::PartialBlock {
            req: MapRequest { va: VirtAddr(va + MIB2), pa: None, size: MIB2 },
            block: VirtAddr(va),
            level: Level::L1
        }
    );
    assert_eq!(e.request().va, VirtAddr(va + MIB2));
    assert!(f.translate(va + MIB2).is_some());
    assert_eq!(VaHalf::of(VirtAddr(va)), Some(VaHalf::Upper));
}

#[test]
fn out_of_tables_rolls_back() {
    let mut f = Fixture::new(1 << 20);
    let va = 0xFFFF_8000_0000_0000;
    // Root + L1 + L2 exist after this.
    f.map(va, 0x4000_0000, PAGE_SIZE, Attrs::kernel_data(), BlockPolicy::PagesOnly).unwrap();
    assert_eq!(f.alloc.allocated(), 4);
    f.alloc.set_limit(Some(5));
    let writes = f.mmu.stats().entry_writes;
    // 3 MiB of pages from va + 2 MiB needs two more L3 tables: only one is available.
    let r = f.map(va + MIB2, 0x5000_0000, 3 << 20, Attrs::kernel_data(), BlockPolicy::PagesOnly);
    assert_eq!(
        r,
        Err(MapError::OutOfTables {
            req: MapRequest {
                va: VirtAddr(va + MIB2),
                pa: Some(PhysAddr(0x5000_0000)),
                size: 3 << 20
            },
            needed: 2
        })
    );
    assert_eq!(f.alloc.allocated(), 4);
    assert_eq!(f.mmu.stats().entry_writes, writes);
    assert_eq!(f.translate(va + MIB2), None);
    // With room for exactly what is needed, it succeeds.
    f.alloc.set_limit(Some(6));
    let s = f
        .map(va + MIB2, 0x5000_0000, 3 << 20, Attrs::kernel_data(), BlockPolicy::PagesOnly)
        .unwrap();
    assert_eq!(s.tables_allocated, 2);
}

#[test]
fn unmap_issues_tlbi_per_entry_and_frees_tables() {
    let mut f = Fixture::new(1 << 20);
    let va = 0xFFFF_8000_0000_0000;
    f.map(va, 0x4000_0000, 4 * PAGE_SIZE, Attrs::kernel_data(), BlockPolicy::PagesOnly).unwrap();
    f.map(va + MIB2, 0x4020_0000, MIB2, Attrs::kernel_data(), BlockPolicy::ALL_BLOCKS).unwrap();
    f.mmu.take_events();
    let before = f.mmu.stats();
    let s = f.unmap(va, 2 * MIB2).unwrap();
    assert_eq!((s.pages, s.blocks_l2, s.tables_freed), (4, 1, 3));
    let d = f.mmu.stats().since(before);
    // 4 PTEs + 1 PMD block + the L3 table entry + L2 and L1 table entries.
    assert_eq!(d.entry_writes, 8);
    assert_eq!(d.tlbi, 8);
    // One DSB ISHST + DSB ISH per table touched (L3, L2, L1, L0), one ISB.
    assert_eq!((d.dsb, d.isb), (8, 1));
    let ev = f.mmu.events();
    // Every TLBI comes after a DSB that follows the writes it covers.
    let first_tlbi = ev.iter().position(|e| matches!(e, MmuEvent::Tlbi { .. })).unwrap();
    assert!(matches!(ev[first_tlbi - 1], MmuEvent::DsbIshst));
    assert_eq!(ev.last(), Some(&MmuEvent::Isb));
    assert_eq!(f.alloc.allocated(), 1);
    // Unmapping a hole does nothing.
    let before = f.mmu.stats();
    assert_eq!(f.unmap(va, GIB).unwrap(), UnmapStats::default());
    assert_eq!(f.mmu.stats(), before);
}
