//! Host benchmark: kcore's mapper and page walker against the `aarch64-paging` crate, the same
//! work on the same table layout, in one run, with the ratio printed.
//!
//! The layout: four-level tables (4 KiB granule, 48-bit VA), 1 GiB at VA = PA = 1 GiB, its
//! first half as 256 2 MiB blocks, its second half as 131,072 4 KiB pages (no contiguous hint):
//! one level-0, one level-1, one level-2 and 256 level-3 tables on both sides.
//!
//! The four operations:
//! - `build`: map the whole GiB from empty tables (the tables are freed outside the timing);
//! - `walk`: visit every leaf, summing output addresses so nothing is optimised away;
//! - `protect`: make 64 MiB read-only, 32 MiB on each side of the block/page boundary (16
//!   blocks and 8,192 pages), with the TLB maintenance a live table needs counted on kcore's
//!   side (the host backend only counts) and nothing on aarch64-paging's (its tables are not
//!   active, so it issues none);
//! - `translate`: 100,000 translations of random addresses in the GiB (a fixed seed, the same
//!   addresses on both sides). `aarch64-paging` has no translate call; its closest public
//!   operation is `walk_range` over the one page, used here.
//!
//! Run with `cargo bench -p kcore --bench paging` or `cargo xtask bench --host`. After criterion's
//! own report, the table compares the medians criterion measured (read back from its
//! `estimates.json`): `ratio` = aarch64-paging's time / kcore's, so above 1 means kcore is faster.
//! `KCORE_BENCH_QUICK=1` shortens the measurement (the figures are then rougher).

use aarch64_paging::descriptor::El1Attributes;
use aarch64_paging::idmap::IdMap;
use aarch64_paging::paging::{Constraints, El1And0, MemoryRegion};
use criterion::{black_box, BatchSize, Criterion};
use kcore::addr::{PhysAddr, VirtAddr, PAGE_SIZE};
use kcore::mapper::{map_range, translate, BlockPolicy, FrameAlloc, VecFrameAlloc};
use kcore::mm::{Mm, User};
use kcore::pagewalk::{walk_page_range_novma, Entry, Interests, PageWalkOps, WalkAction};
use kcore::pgtable::{Attrs, Descriptor, Level};
use kcore::phys::Arena;
use kcore::tlb::{MmuOps, MmuStats};
use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Duration;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// First VA (= PA) of the mapped GiB.
const BASE: u64 = GIB;
/// Blocks below, pages above.
const BOUNDARY: u64 = BASE + 512 * MIB;
const END: u64 = BASE + GIB;
const BLOCKS: u64 = 256;
const PAGES: u64 = 131_072;
/// The read-only range: 64 MiB across the boundary.
const RO_START: u64 = BOUNDARY - 32 * MIB;
const RO_END: u64 = BOUNDARY + 32 * MIB;
const TRANSLATIONS: usize = 100_000;

/// Where kcore's table pages live on the host (the arena's physical base).
const ARENA_BASE: PhysAddr = PhysAddr(0x1_0000_0000);
const ARENA_SIZE: u64 = 4 * MIB;

/// An `MmuOps` for the host that stores entries and counts barriers and TLBIs (no recording:
/// `RecordingMmu` would measure its own `Vec`).
#[derive(Default)]
struct CountingMmu {
    stats: MmuStats,
}

impl MmuOps for CountingMmu {
    unsafe fn write_entry(
        &mut self,
        slot: *mut u64,
        _va: VirtAddr,
        _level: Level,
        new: Descriptor,
    ) {
        // SAFETY: the caller's contract (`MmuOps::write_entry`): `slot` is an entry of a table
        // it may edit; here, a table page of the benchmark's arena.
        unsafe { core::ptr::write_volatile(slot, new.0) };
        self.stats.entry_writes += 1;
    }
    fn dsb_ishst(&mut self) {
        self.stats.dsb += 1;
    }
    fn dsb_ish(&mut self) {
        self.stats.dsb += 1;
    }
    fn isb(&mut self) {
        self.stats.isb += 1;
    }
    fn tlbi_vaae1is(&mut self, _va: VirtAddr) {
        self.stats.tlbi += 1;
    }
    fn tlbi_vae1is(&mut self, _va: VirtAddr, _asid: u16) {
        self.stats.tlbi += 1;
    }
    fn tlbi_aside1is(&mut self, _asid: u16) {
        self.stats.tlbi += 1;
    }
    fn tlbi_vmalle1is(&mut self) {
        self.stats.tlbi += 1;
    }
    fn stats(&self) -> MmuStats {
        self.stats
    }
}

/// kcore's side: tables in an arena, a user address space over them.
struct KTables {
    arena: Arena,
    mm: Mm<User>,
    _alloc: VecFrameAlloc,
}

fn k_attrs() -> Attrs {
    Attrs::user_data()
}

impl KTables {
    fn empty() -> (Arena, VecFrameAlloc, PhysAddr) {
        let arena = Arena::new(ARENA_BASE, ARENA_SIZE);
        let mut alloc = VecFrameAlloc::new(ARENA_BASE, ARENA_SIZE / PAGE_SIZE);
        let root = alloc.alloc_table().expect("arena has room for the root");
        (arena, alloc, root)
    }

    /// The two `map_range` calls the benchmark times.
    fn map(arena: &Arena, alloc: &mut VecFrameAlloc, root: PhysAddr) {
        let mut mmu = CountingMmu::default();
        for (start, end, policy) in
            [(BASE, BOUNDARY, BlockPolicy::ALL_BLOCKS), (BOUNDARY, END, BlockPolicy::PagesOnly)]
        {
            // SAFETY: `root` and every table come from `alloc` over `arena`, edited only here;
            // the mapped addresses are never dereferenced.
            unsafe {
                map_range(
                    root,
                    arena,
                    alloc,
                    &mut mmu,
                    VirtAddr(start),
                    PhysAddr(start),
                    end - start,
                    k_attrs(),
                    policy,
                )
            }
            .expect("kcore map");
        }
    }

    fn build() -> KTables {
        let (arena, mut alloc, root) = Self::empty();
        Self::map(&arena, &mut alloc, root);
        // SAFETY: `root` is a table page in `arena` owned by this address space alone.
        let mm = unsafe { Mm::new_user(root, 1) };
        KTables { arena, mm, _alloc: alloc }
    }
}

/// Sums the output addresses of every leaf.
struct LeafSum {
    leaves: u64,
    sum: u64,
}

impl PageWalkOps for LeafSum {
    type Output = Infallible;
    type Error = Infallible;
    const INTERESTS: Interests = Interests::PMD.union(Interests::PTE);

    fn pmd_entry(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
        if let Some((pa, _)) = e.desc().decode_leaf(Level::L2) {
            self.leaves += 1;
            self.sum = self.sum.wrapping_add(pa.0);
        }
        Ok(WalkAction::Subtree)
    }
    fn pte_entry(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
        self.leaves += 1;
        self.sum = self.sum.wrapping_add(e.desc().output_address(Level::L3).0);
        Ok(WalkAction::Continue)
    }
}

/// Rewrites every leaf read-only, then does the TLB maintenance a live table would need
/// (a permission change on a live leaf: store, `DSB ISHST`, `TLBI` by VA, `DSB ISH`, `ISB`).
struct MakeReadOnly<'a> {
    mmu: &'a mut CountingMmu,
    changed: u64,
}

impl MakeReadOnly<'_> {
    fn leaf(&mut self, e: &Entry) {
        let d = e.desc();
        let ro = d.with_attrs(d.attrs().read_only());
        // SAFETY: the benchmark's own tables, edited under the mm's write lock; RW -> RO on a
        // leaf keeps the output address and size, so no break-before-make is needed.
        unsafe { e.set(self.mmu, ro) };
        self.changed += 1;
    }
}

impl PageWalkOps for MakeReadOnly<'_> {
    type Output = Infallible;
    type Error = Infallible;
    const INTERESTS: Interests = Interests::PMD.union(Interests::PTE);

    fn pmd_entry(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
        if e.kind() == kcore::pgtable::DescKind::Block {
            assert!(e.covers_whole_entry(), "the range is block aligned");
            self.leaf(e);
        }
        Ok(WalkAction::Subtree)
    }
    fn pte_entry(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
        self.leaf(e);
        Ok(WalkAction::Continue)
    }
}

fn k_walk(t: &KTables) -> (u64, u64) {
    let g = t.mm.mmap_write();
    let mut ops = LeafSum { leaves: 0, sum: 0 };
    walk_page_range_novma(&g, &t.arena, VirtAddr(BASE), VirtAddr(END), &mut ops).expect("walk");
    (ops.leaves, ops.sum)
}

fn k_protect(t: &KTables) -> u64 {
    let g = t.mm.mmap_write();
    let mut mmu = CountingMmu::default();
    let mut ops = MakeReadOnly { mmu: &mut mmu, changed: 0 };
    walk_page_range_novma(&g, &t.arena, VirtAddr(RO_START), VirtAddr(RO_END), &mut ops)
        .expect("protect walk");
    let changed = ops.changed;
    // DSB ISHST, then one TLBI per changed leaf, DSB ISH, ISB (ARM ARM: a permission change on a
    // live entry is visible only after the TLB maintenance completes).
    mmu.dsb_ishst();
    let mut va = RO_START;
    while va < RO_END {
        mmu.tlbi_vaae1is(VirtAddr(va));
        va += if va < BOUNDARY { 2 * MIB } else { PAGE_SIZE };
    }
    mmu.dsb_ish();
    mmu.isb();
    changed
}

fn k_translate(t: &KTables, vas: &[u64]) -> u64 {
    let _g = t.mm.mmap_write();
    let mut sum = 0u64;
    for &va in vas {
        // SAFETY: the tables live in the arena and the write lock is held.
        let (pa, _, _) = unsafe { translate(t.mm.root(), &t.arena, VirtAddr(va)) }.expect("mapped");
        sum = sum.wrapping_add(pa.0);
    }
    sum
}

// ---- aarch64-paging's side ----

type AMap = IdMap<El1And0>;

fn a_flags() -> El1Attributes {
    El1Attributes::ATTRIBUTE_INDEX_1
        | El1Attributes::INNER_SHAREABLE
        | El1Attributes::NON_GLOBAL
        | El1Attributes::VALID
        | El1Attributes::ACCESSED
        | El1Attributes::UXN
}

fn a_build() -> AMap {
    let mut m = AMap::with_asid(1, 0, El1And0);
    m.map_range_with_constraints(
        &MemoryRegion::new(BASE as usize, BOUNDARY as usize),
        a_flags(),
        Constraints::NO_CONTIGUOUS_HINT,
    )
    .expect("aarch64-paging map blocks");
    m.map_range_with_constraints(
        &MemoryRegion::new(BOUNDARY as usize, END as usize),
        a_flags(),
        Constraints::NO_CONTIGUOUS_HINT | Constraints::NO_BLOCK_MAPPINGS,
    )
    .expect("aarch64-paging map pages");
    m
}

fn a_walk(m: &AMap) -> (u64, u64) {
    let (mut leaves, mut sum) = (0u64, 0u64);
    m.walk_range(&MemoryRegion::new(BASE as usize, END as usize), &mut |_r, d, _level| {
        if d.is_valid() {
            leaves += 1;
            sum = sum.wrapping_add(d.output_address().0 as u64);
        }
        Ok(())
    })
    .expect("aarch64-paging walk");
    (leaves, sum)
}

fn a_protect(m: &mut AMap) {
    m.modify_range(&MemoryRegion::new(RO_START as usize, RO_END as usize), &|_r, d| {
        d.modify_flags(El1Attributes::READ_ONLY, El1Attributes::empty())
    })
    .expect("aarch64-paging modify");
}

fn a_translate(m: &AMap, vas: &[u64]) -> u64 {
    let mut sum = 0u64;
    for &va in vas {
        let page = (va & !(PAGE_SIZE - 1)) as usize;
        m.walk_range(&MemoryRegion::new(page, page + PAGE_SIZE as usize), &mut |_r, d, level| {
            let size = 1u64 << (12 + 9 * (3 - level as u32));
            sum = sum.wrapping_add(d.output_address().0 as u64 + (va & (size - 1)));
            Ok(())
        })
        .expect("aarch64-paging translate");
    }
    sum
}

/// The same random addresses for both sides (xorshift64, fixed seed).
fn random_vas() -> Vec<u64> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..TRANSLATIONS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            BASE + (x % GIB)
        })
        .collect()
}

/// Checks that both sides built the same thing and agree on every answer, so the timings
/// compare the same work.
fn check_same_work() {
    let k = KTables::build();
    let mut a = a_build();
    let (kl, ks) = k_walk(&k);
    let (al, asum) = a_walk(&a);
    assert_eq!((kl, al), (BLOCKS + PAGES, BLOCKS + PAGES), "leaf counts");
    assert_eq!(ks, asum, "output addresses of the leaves differ");
    let vas = random_vas();
    assert_eq!(k_translate(&k, &vas), a_translate(&a, &vas), "translations differ");
    assert_eq!(k_protect(&k), 16 + 8192, "kcore changed an unexpected number of leaves");
    a_protect(&mut a);
    let mut ro = 0;
    a.walk_range(&MemoryRegion::new(BASE as usize, END as usize), &mut |_r, d, _l| {
        ro += u64::from(d.flags().contains(El1Attributes::READ_ONLY));
        Ok(())
    })
    .unwrap();
    assert_eq!(ro, 16 + 8192, "aarch64-paging changed an unexpected number of leaves");
}

const OPS: [(&str, &str); 4] = [
    ("build", "build 1 GiB: 256 x 2 MiB blocks + 131,072 x 4 KiB pages"),
    ("walk", "walk every leaf (131,328)"),
    ("protect", "64 MiB read-only across the block/page boundary"),
    ("translate", "100,000 random translations"),
];

fn bench(c: &mut Criterion) {
    let vas = random_vas();
    let mut g = c.benchmark_group("build");
    g.bench_function("kcore", |b| {
        b.iter_batched(
            KTables::empty,
            |(arena, mut alloc, root)| {
                KTables::map(&arena, &mut alloc, root);
                (arena, alloc)
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("aarch64-paging", |b| b.iter_with_large_drop(a_build));
    g.finish();

    let k = KTables::build();
    let mut a = a_build();
    let mut g = c.benchmark_group("walk");
    g.bench_function("kcore", |b| b.iter(|| black_box(k_walk(&k))));
    g.bench_function("aarch64-paging", |b| b.iter(|| black_box(a_walk(&a))));
    g.finish();

    // Setting the same leaves read-only again does the same work each time on both sides.
    let mut g = c.benchmark_group("protect");
    g.bench_function("kcore", |b| b.iter(|| black_box(k_protect(&k))));
    g.bench_function("aarch64-paging", |b| b.iter(|| a_protect(&mut a)));
    g.finish();

    let mut g = c.benchmark_group("translate");
    g.bench_function("kcore", |b| b.iter(|| black_box(k_translate(&k, &vas))));
    g.bench_function("aarch64-paging", |b| b.iter(|| black_box(a_translate(&a, &vas))));
    g.finish();
}

/// Criterion's output directory: `$CARGO_TARGET_DIR/criterion`, else `target/criterion` at the
/// workspace root.
fn criterion_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("criterion")
}

/// The median criterion measured for `group/function`, in nanoseconds.
fn median_ns(dir: &std::path::Path, group: &str, function: &str) -> Option<f64> {
    let p = dir.join(group).join(function).join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn fmt_time(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else {
        format!("{:.1} us", ns / 1e3)
    }
}

fn main() {
    check_same_work();
    let quick = std::env::var_os("KCORE_BENCH_QUICK").is_some();
    let dir = criterion_dir();
    let mut c = Criterion::default()
        .output_directory(&dir)
        .sample_size(if quick { 10 } else { 30 })
        .warm_up_time(Duration::from_millis(if quick { 200 } else { 500 }))
        .measurement_time(Duration::from_millis(if quick { 500 } else { 2000 }))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();

    // `cargo test --benches` runs this in test mode: criterion then runs each routine once and
    // measures nothing, so there is no table to print.
    if std::env::args().any(|a| a == "--test") || std::env::args().any(|a| a == "--list") {
        return;
    }
    println!();
    println!("kcore vs aarch64-paging (median of criterion's samples; ratio = aarch64-paging / kcore, >1: kcore faster)");
    println!("{:<10} {:>12} {:>16} {:>7}  what", "op", "kcore", "aarch64-paging", "ratio");
    let mut missing = false;
    for (op, what) in OPS {
        match (median_ns(&dir, op, "kcore"), median_ns(&dir, op, "aarch64-paging")) {
            (Some(k), Some(a)) => println!(
                "{:<10} {:>12} {:>16} {:>6.2}x  {}",
                op,
                fmt_time(k),
                fmt_time(a),
                a / k,
                what
            ),
            _ => {
                println!("{op:<10} (not measured in this run)");
                missing = true;
            }
        }
    }
    if missing {
        println!("(run without a filter to measure every operation)");
    }
}
