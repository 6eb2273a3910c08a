//! The page walker against a straightforward recursive reference, plus the block-split pattern
//! HVO uses, early exits, errors and range checks.

use core::ops::ControlFlow;
use kcore::addr::{PhysAddr, VirtAddr, PAGE_SIZE};
use kcore::bbm_check::{check_break_before_make, check_published};
use kcore::mapper::{BlockPolicy, FrameAlloc, VecFrameAlloc};
use kcore::mm::{Kernel, Mm, User};
use kcore::pagewalk::{
    walk_page_range_novma, walk_page_range_novma_unguarded, Entry, Interests, PageWalkOps,
    WalkAction, WalkError,
};
use kcore::pgtable::{Attrs, DescKind, Descriptor, Level, VaHalf};
use kcore::phys::{Arena, PhysMem};
use kcore::tlb::{MmuOps, RecordingMmu, TlbScope};
use proptest::prelude::*;

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
const ARENA_BASE: PhysAddr = PhysAddr(0x8000_0000);
/// A 6 GiB window straddling the boundary between two level-0 entries.
const WBASE: u64 = 0xFFFF_0080_0000_0000 - 2 * GIB;
const WSIZE: u64 = 6 * GIB;

struct Fixture {
    arena: Arena,
    alloc: VecFrameAlloc,
    mmu: RecordingMmu,
}

impl Fixture {
    fn new() -> (Fixture, PhysAddr) {
        let size = 8 << 20;
        let arena = Arena::new(ARENA_BASE, size);
        let mut alloc = VecFrameAlloc::new(ARENA_BASE, size / PAGE_SIZE);
        let root = alloc.alloc_table().unwrap();
        (Fixture { arena, alloc, mmu: RecordingMmu::new() }, root)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Visit {
    Entry { level: Level, addr: u64, next: u64, kind: DescKind },
    Hole { depth: Level, start: u64, end: u64 },
}

/// Which action each visit gets: a pure function of the visit, shared by the walker's ops and
/// the reference.
#[derive(Clone, Copy, Debug)]
struct Policy {
    seed: u64,
    /// Stop (Break) at this visit number.
    break_at: Option<usize>,
}

impl Policy {
    fn action(&self, n: usize, level: Level, addr: u64) -> WalkAction<usize> {
        if self.break_at == Some(n) {
            return WalkAction::Break(n);
        }
        let h =
            (addr >> 12).wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(self.seed ^ level as u64);
        if (h >> 59) == 0 {
            WalkAction::Continue
        } else {
            WalkAction::Subtree
        }
    }
    fn hole(&self, n: usize) -> ControlFlow<usize> {
        if self.break_at == Some(n) {
            ControlFlow::Break(n)
        } else {
            ControlFlow::Continue(())
        }
    }
}

struct Recorder<const I: u8> {
    policy: Policy,
    visits: Vec<Visit>,
}

impl<const I: u8> Recorder<I> {
    fn entry(&mut self, e: &Entry) -> Result<WalkAction<usize>, ()> {
        assert_eq!(e.desc(), e.reread());
        assert!(e.span_start() <= e.addr() && e.addr() < e.next());
        self.visits.push(Visit::Entry {
            level: e.level(),
            addr: e.addr().0,
            next: e.next().0,
            kind: e.kind(),
        });
        Ok(self.policy.action(self.visits.len(), e.level(), e.addr().0))
    }
}

impl<const I: u8> PageWalkOps for Recorder<I> {
    type Output = usize;
    type Error = ();
    const INTERESTS: Interests = Interests::from_bits(I);

    fn pgd_entry(&mut self, e: &Entry) -> Result<WalkAction<usize>, ()> {
        self.entry(e)
    }
    fn pud_entry(&mut self, e: &Entry) -> Result<WalkAction<usize>, ()> {
        self.entry(e)
    }
    fn pmd_entry(&mut self, e: &Entry) -> Result<WalkAction<usize>, ()> {
        self.entry(e)
    }
    fn pte_entry(&mut self, e: &Entry) -> Result<WalkAction<usize>, ()> {
        self.entry(e)
    }
    fn pte_hole(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        depth: Level,
    ) -> Result<ControlFlow<usize>, ()> {
        self.visits.push(Visit::Hole { depth, start: start.0, end: end.0 });
        Ok(self.policy.hole(self.visits.len()))
    }
}

/// The reference walk: for each of the 512 entries of a table, in order, skip it if it is
/// outside `[s, e)`; otherwise report it and recurse. Offsets are 48-bit table offsets.
#[allow(clippy::too_many_arguments)]
fn reference(
    mem: &Arena,
    table: PhysAddr,
    level: Level,
    table_base: u64,
    s: u64,
    e: u64,
    interests: u8,
    policy: &Policy,
    out: &mut Vec<Visit>,
) -> Option<usize> {
    let size = level.size();
    let va = |off: u64| VaHalf::Upper.va(off).0;
    for idx in 0..512u64 {
        let es = table_base + idx * size;
        let ee = es + size;
        let (a, n) = (s.max(es), e.min(ee));
        if a >= n {
            continue;
        }
        // SAFETY: `table` is a table page in the arena.
        let d = Descriptor(unsafe { core::ptr::read(mem.ptr(table + idx * 8) as *const u64) });
        let kind = d.kind(level);
        if kind == DescKind::Invalid {
            if interests & Interests::HOLE.bits() != 0 {
                out.push(Visit::Hole { depth: level, start: va(a), end: va(n) });
                if let ControlFlow::Break(b) = policy.hole(out.len()) {
                    return Some(b);
                }
            }
            continue;
        }
        let action = if interests & (1 << level as u8) != 0 {
            out.push(Visit::Entry { level, addr: va(a), next: va(n), kind });
            policy.action(out.len(), level, va(a))
        } else {
            WalkAction::Subtree
        };
        match action {
            WalkAction::Break(b) => return Some(b),
            WalkAction::Continue | WalkAction::Again => continue,
            WalkAction::Subtree => {
                // Descend if some deeper callback or pte_hole is wanted.
                if kind == DescKind::Table && interests >> (level as u8 + 1) != 0 {
                    let sub = Level::from_u8(level as u8 + 1).unwrap();
                    let r =
                        reference(mem, d.table_address(), sub, es, a, n, interests, policy, out);
                    if r.is_some() {
                        return r;
                    }
                }
            }
        }
    }
    None
}

fn offset(gib: u64) -> impl Strategy<Value = u64> {
    (0..gib, 0..512u64, 0..512u64, 0..3u8).prop_map(|(g, m, p, class)| match class {
        0 => g * GIB,
        1 => g * GIB + m * MIB2,
        _ => g * GIB + m * MIB2 + p * PAGE_SIZE,
    })
}

fn map_op() -> impl Strategy<Value = (u64, u64, BlockPolicy)> {
    let size = (0..3u8, 1..3u64, 0..4u64, 1..20u64).prop_map(|(c, g, m, p)| match c {
        0 => p * PAGE_SIZE,
        1 => (m + 1) * MIB2 + (p % 4) * PAGE_SIZE,
        _ => g * GIB + m * MIB2,
    });
    let policy = prop_oneof![
        3 => Just(BlockPolicy::ALL_BLOCKS),
        1 => Just(BlockPolicy::PagesOnly),
    ];
    (offset(WSIZE / GIB), size, policy).prop_map(|(off, size, policy)| {
        let size = size.min(WSIZE - off);
        let policy = if size > 4 * MIB2 { BlockPolicy::ALL_BLOCKS } else { policy };
        (off, size, policy)
    })
}

/// Walk ranges: mid-table boundaries, whole window, or wider than the window.
fn range() -> impl Strategy<Value = (u64, u64)> {
    fn edge() -> impl Strategy<Value = u64> {
        (0..3u8, offset(8)).prop_map(|(c, o)| {
            // Relative to WBASE - 1 GiB, so ranges can begin or end outside the window.
            let o = o.min(WSIZE + 2 * GIB);
            WBASE - GIB + if c == 0 { o & !(MIB2 - 1) } else { o }
        })
    }
    prop_oneof![
        8 => (edge(), edge()).prop_map(|(a, b)| (a.min(b), a.max(b))),
        1 => Just((WBASE, WBASE + WSIZE)),
        1 => Just((0xFFFF_0000_0000_0000, 0)),
    ]
}

macro_rules! run_with_interests {
    ($bits:expr, $f:ident, $($arg:expr),*) => {
        match $bits {
            0 => $f::<{ Interests::ALL.bits() }>($($arg),*),
            1 => $f::<{ Interests::PMD.bits() | Interests::PTE.bits() }>($($arg),*),
            2 => $f::<{ Interests::PUD.bits() | Interests::HOLE.bits() }>($($arg),*),
            3 => $f::<{ Interests::PTE.bits() }>($($arg),*),
            4 => $f::<{ Interests::PMD.bits() }>($($arg),*),
            5 => $f::<{ Interests::HOLE.bits() }>($($arg),*),
            6 => $f::<{ Interests::PGD.bits() | Interests::PUD.bits() | Interests::PMD.bits() }>($($arg),*),
            _ => $f::<{ Interests::PGD.bits() | Interests::PTE.bits() | Interests::HOLE.bits() }>($($arg),*),
        }
    };
}

fn compare<const I: u8>(
    f: &Fixture,
    mm: &Mm<Kernel>,
    (start, end): (u64, u64),
    policy: Policy,
) -> Result<(), TestCaseError> {
    let mut rec = Recorder::<I> { policy, visits: Vec::new() };
    let guard = mm.mmap_read();
    let got =
        walk_page_range_novma(&guard, &f.arena, VirtAddr(start), VirtAddr(end), &mut rec).unwrap();
    let mut want = Vec::new();
    let (s, e) = (start & ((1 << 48) - 1), if end == 0 { 1 << 48 } else { end & ((1 << 48) - 1) });
    let want_r = reference(&f.arena, mm.root(), Level::L0, 0, s, e, I, &policy, &mut want);
    prop_assert_eq!(&rec.visits, &want);
    prop_assert_eq!(got, want_r);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn walker_matches_reference(
        maps in prop::collection::vec(map_op(), 1..10),
        ranges in prop::collection::vec(range(), 1..5),
        interests in 0..8u8,
        seed in any::<u64>(),
        break_at in prop::option::weighted(0.3, 1..40usize),
    ) {
        let (mut f, root) = Fixture::new();
        // SAFETY: `root` is a zeroed table page in the arena, owned by this mm.
        let mm = unsafe { Mm::new_kernel(root) };
        {
            let mut w = mm.mmap_write();
            for (i, (off, size, policy)) in maps.iter().enumerate() {
                let pa = 0x40_0000_0000 + (i as u64) * 4 * GIB + off % GIB;
                let _ = w.map_range(&f.arena, &mut f.alloc, &mut f.mmu, VirtAddr(WBASE + off),
                                    PhysAddr(pa), *size, Attrs::kernel_data(), *policy);
            }
        }
        let policy = Policy { seed, break_at };
        for r in ranges {
            run_with_interests!(interests, compare, &f, &mm, r, policy)?;
        }
    }
}

/// HVO's pattern: a `pmd_entry` callback replaces a live 2 MiB block by a table of 512 PTEs
/// mapping the same memory (break-before-make), and returns `again` or `Subtree`; the walker
/// then visits the new PTEs.
struct Splitter<'a> {
    mem: &'a Arena,
    alloc: &'a mut VecFrameAlloc,
    mmu: &'a mut RecordingMmu,
    again: bool,
    splits: usize,
    pmd_calls: usize,
    ptes: Vec<u64>,
}

impl PageWalkOps for Splitter<'_> {
    type Output = ();
    type Error = &'static str;
    const INTERESTS: Interests = Interests::PMD.union(Interests::PTE);

    fn pmd_entry(&mut self, e: &Entry) -> Result<WalkAction<()>, &'static str> {
        self.pmd_calls += 1;
        if e.kind() != DescKind::Block {
            return Ok(WalkAction::Subtree);
        }
        let pa = e.desc().output_address(Level::L2);
        let attrs = e.desc().attrs();
        let table = self.alloc.alloc_table().ok_or("no table page")?;
        for i in 0..512u64 {
            let slot = self.mem.ptr(table + i * 8) as *mut u64;
            let pte = Descriptor::leaf(Level::L3, pa + i * PAGE_SIZE, attrs).unwrap();
            // SAFETY: `table` is a fresh page from the allocator, not yet reachable.
            unsafe { self.mmu.write_entry(slot, e.span_start() + i * PAGE_SIZE, Level::L3, pte) };
        }
        // DSB ISHST: the new PTEs are visible to the walkers before the table is linked.
        self.mmu.dsb_ishst();
        let td = Descriptor::table(Level::L2, table).unwrap();
        // SAFETY: nothing uses this (test) vmemmap range while the entry is invalid.
        unsafe { e.replace_bbm(self.mmu, td, TlbScope::AllAsids) };
        self.splits += 1;
        Ok(if self.again { WalkAction::Again } else { WalkAction::Subtree })
    }

    fn pte_entry(&mut self, e: &Entry) -> Result<WalkAction<()>, &'static str> {
        self.ptes.push(e.addr().0);
        Ok(WalkAction::Subtree)
    }
}

#[test]
fn split_block_in_callback_then_descend() {
    for again in [false, true] {
        let (mut f, root) = Fixture::new();
        // SAFETY: fresh root in the arena.
        let mm = unsafe { Mm::new_kernel(root) };
        let va = 0xFFFF_FC00_0020_0000u64;
        let pa = 0x4_0000_0000u64;
        mm.mmap_write()
            .map_range(
                &f.arena,
                &mut f.alloc,
                &mut f.mmu,
                VirtAddr(va),
                PhysAddr(pa),
                MIB2,
                Attrs::kernel_data(),
                BlockPolicy::ALL_BLOCKS,
            )
            .unwrap();
        let before = f.mmu.stats();
        let guard = mm.mmap_read();
        assert_eq!(guard.translate(&f.arena, VirtAddr(va)).unwrap().2, Level::L2);
        let mut s = Splitter {
            mem: &f.arena,
            alloc: &mut f.alloc,
            mmu: &mut f.mmu,
            again,
            splits: 0,
            pmd_calls: 0,
            ptes: Vec::new(),
        };
        // Start mid-block: the PTE visits are clipped to the walk.
        let r = walk_page_range_novma(
            &guard,
            &f.arena,
            VirtAddr(va + 0x1000),
            VirtAddr(va + MIB2),
            &mut s,
        );
        assert_eq!(r, Ok(None));
        assert_eq!(s.splits, 1);
        assert_eq!(s.pmd_calls, if again { 2 } else { 1 });
        assert_eq!(s.ptes.len(), 511);
        assert_eq!(s.ptes[0], va + 0x1000);
        for i in [0u64, 1, 255, 511] {
            let (p, a, l) = guard.translate(&f.arena, VirtAddr(va + i * PAGE_SIZE)).unwrap();
            assert_eq!((p, a, l), (PhysAddr(pa + i * PAGE_SIZE), Attrs::kernel_data(), Level::L3));
        }
        assert_eq!(check_break_before_make(f.mmu.events()), Ok(()));
        assert_eq!(check_published(f.mmu.events()), Ok(()));
        let d = f.mmu.stats().since(before);
        assert_eq!((d.tlbi, d.isb, d.entry_writes), (1, 1, 514));
    }
}

#[test]
fn splitting_without_tlbi_is_caught() {
    let (mut f, root) = Fixture::new();
    // SAFETY: fresh root in the arena.
    let mm = unsafe { Mm::new_kernel(root) };
    let va = 0xFFFF_FC00_0000_0000u64;
    let mut w = mm.mmap_write();
    w.map_range(
        &f.arena,
        &mut f.alloc,
        &mut f.mmu,
        VirtAddr(va),
        PhysAddr(0x4_0000_0000),
        MIB2,
        Attrs::kernel_data(),
        BlockPolicy::ALL_BLOCKS,
    )
    .unwrap();
    struct Sloppy<'a>(&'a mut RecordingMmu, PhysAddr);
    impl PageWalkOps for Sloppy<'_> {
        type Output = ();
        type Error = ();
        const INTERESTS: Interests = Interests::PMD;
        fn pmd_entry(&mut self, e: &Entry) -> Result<WalkAction<()>, ()> {
            if e.kind() == DescKind::Block {
                // SAFETY: test tables only; the point is to record a bad sequence.
                unsafe {
                    e.set(self.0, Descriptor::INVALID);
                    e.set(self.0, Descriptor::table(Level::L2, self.1).unwrap());
                }
            }
            Ok(WalkAction::Continue)
        }
    }
    let t = f.alloc.alloc_table().unwrap();
    let end = VirtAddr(va + MIB2);
    walk_page_range_novma(&w, &f.arena, VirtAddr(va), end, &mut Sloppy(&mut f.mmu, t)).unwrap();
    let v = check_break_before_make(f.mmu.events()).unwrap_err();
    assert_eq!(v.missing, kcore::bbm_check::BbmMissing::DsbAfterInvalid);
    assert_eq!(v.va, VirtAddr(va));
}

struct FailAt(u64);

impl PageWalkOps for FailAt {
    type Output = ();
    type Error = VirtAddr;
    const INTERESTS: Interests = Interests::PTE;
    fn pte_entry(&mut self, e: &Entry) -> Result<WalkAction<()>, VirtAddr> {
        if e.addr().0 == self.0 {
            Err(e.addr())
        } else {
            Ok(WalkAction::Subtree)
        }
    }
}

struct Count(usize);

impl PageWalkOps for Count {
    type Output = ();
    type Error = ();
    const INTERESTS: Interests = Interests::PTE.union(Interests::HOLE);
    fn pte_entry(&mut self, _e: &Entry) -> Result<WalkAction<()>, ()> {
        self.0 += 1;
        Ok(WalkAction::Subtree)
    }
}

#[test]
fn errors_and_ranges() {
    let (mut f, root) = Fixture::new();
    // SAFETY: fresh root in the arena.
    let mm = unsafe { Mm::new_kernel(root) };
    let va = 0xFFFF_8000_0000_0000u64;
    mm.mmap_write()
        .map_range(
            &f.arena,
            &mut f.alloc,
            &mut f.mmu,
            VirtAddr(va),
            PhysAddr(0x4000_0000),
            16 * PAGE_SIZE,
            Attrs::kernel_text(),
            BlockPolicy::ALL_BLOCKS,
        )
        .unwrap();
    let g = mm.mmap_read();
    let end = VirtAddr(va + 16 * PAGE_SIZE);
    assert_eq!(
        walk_page_range_novma(&g, &f.arena, VirtAddr(va), end, &mut FailAt(va + 0x3000)),
        Err(WalkError::Callback(VirtAddr(va + 0x3000)))
    );
    let bad = |s: u64, e: u64| {
        walk_page_range_novma(&g, &f.arena, VirtAddr(s), VirtAddr(e), &mut Count(0))
    };
    let inv = |s: u64, e: u64| {
        Err(WalkError::InvalidRange { start: VirtAddr(s), end: VirtAddr(e), half: VaHalf::Upper })
    };
    assert_eq!(bad(0x1000, 0x2000), inv(0x1000, 0x2000));
    assert_eq!(bad(va + 1, va + 0x2000), inv(va + 1, va + 0x2000));
    assert_eq!(bad(va + 0x2000, va), inv(va + 0x2000, va));
    assert_eq!(bad(va, va), Ok(None));
    // The whole kernel half, up to the top (end 0 wraps).
    let mut c = Count(0);
    walk_page_range_novma(&g, &f.arena, VirtAddr(0xFFFF_0000_0000_0000), VirtAddr(0), &mut c)
        .unwrap();
    assert_eq!(c.0, 16);
    drop(g);
    // The unguarded entry point, with the lock held.
    let g = mm.mmap_read();
    let mut c = Count(0);
    // SAFETY: `g` holds init_mm's mmap_lock for read for the whole walk.
    unsafe { walk_page_range_novma_unguarded(&mm, &f.arena, VirtAddr(va), end, &mut c) }.unwrap();
    assert_eq!(c.0, 16);
    drop(g);
}

#[test]
fn user_mm_walks_under_the_write_lock() {
    let (mut f, root) = Fixture::new();
    // SAFETY: fresh root in the arena; ASID 5 is unused.
    let mm: Mm<User> = unsafe { Mm::new_user(root, 5) };
    let mut w = mm.mmap_write();
    let s = w
        .map_range(
            &f.arena,
            &mut f.alloc,
            &mut f.mmu,
            VirtAddr(0x40_0000),
            PhysAddr(0x4000_0000),
            3 * PAGE_SIZE,
            Attrs::user_data().with_ng(false),
            BlockPolicy::ALL_BLOCKS,
        )
        .unwrap();
    assert_eq!(s.pages, 3);
    // nG is forced on for a user mm.
    assert!(w.translate(&f.arena, VirtAddr(0x40_0000)).unwrap().1.ng);
    // Kernel addresses are refused.
    assert!(w
        .map_range(
            &f.arena,
            &mut f.alloc,
            &mut f.mmu,
            VirtAddr(0xFFFF_0000_0000_0000),
            PhysAddr(0),
            PAGE_SIZE,
            Attrs::user_data(),
            BlockPolicy::ALL_BLOCKS,
        )
        .is_err());
    let mut c = Count(0);
    walk_page_range_novma(&w, &f.arena, VirtAddr(0), VirtAddr(1 << 48), &mut c).unwrap();
    assert_eq!(c.0, 3);
    // SAFETY: nothing uses the (fake) user memory.
    let u = unsafe {
        w.unmap_range(&f.arena, &mut f.alloc, &mut f.mmu, VirtAddr(0x40_0000), 3 * PAGE_SIZE)
    }
    .unwrap();
    assert_eq!(u.pages, 3);
    // User unmaps invalidate by ASID.
    assert!(f.mmu.events().iter().any(|e| matches!(
        e,
        kcore::tlb::MmuEvent::Tlbi { kind: kcore::tlb::TlbiKind::Va { asid: 5 }, .. }
    )));
    assert_eq!(f.alloc.allocated(), 1);
}
