//! Building and editing translation tables: map a range, unmap a range, translate an address.
//!
//! The mapper uses the largest mapping the range allows: 1 GiB blocks at level 1 and 2 MiB
//! blocks at level 2 where the VA, the PA and the remaining size are aligned (and the
//! [`BlockPolicy`] allows them), 4 KiB pages elsewhere.
//!
//! Both operations are all-or-nothing. [`map_range`] first walks the whole range to check for
//! overlaps and to count the table pages it will need, allocates all of them, and only then
//! writes; [`unmap_range`] first checks that no block is only partly covered. A failed call
//! leaves the tables exactly as they were.
//!
//! All stores to entries go through [`MmuOps`], with the barriers each step needs:
//! - a new table is zeroed and filled while unreachable, then published with `DSB ISHST`
//!   before the table descriptor that links it is written (so a speculative walk through the
//!   new descriptor never sees stale contents);
//! - map: `DSB ISHST` + `ISB` at the end (invalid entries are never cached in a TLB, so no TLBI);
//! - unmap: per table, invalid writes, `DSB ISHST`, one TLBI per cleared entry (a leaf, or a
//!   table entry whose now-empty table is being freed: that drops its walk-cache entries),
//!   `DSB ISH`, and only then are the freed tables returned to the [`FrameAlloc`]; `ISB` at
//!   the end.
//!
//! Splitting a live block (changing its size) is not done here: it needs break-before-make
//! ([`crate::tlb::break_before_make`]) and belongs to the HVO code.

use crate::addr::{is_aligned, PhysAddr, VirtAddr, PAGE_SIZE};
use crate::pgtable::{
    Attrs, DescKind, Descriptor, Level, VaHalf, ENTRIES_PER_TABLE, PA_BITS, TABLE_SIZE,
};
use crate::phys::PhysMem;
use crate::tlb::{read_entry, MmuOps, TlbScope};

/// Where translation table pages come from.
pub trait FrameAlloc {
    /// One 4 KiB page for a table, or `None` when out of memory. The mapper zeroes it.
    fn alloc_table(&mut self) -> Option<PhysAddr>;
    /// Gives back a table page that is no longer reachable (and no longer in any TLB).
    fn free_table(&mut self, pa: PhysAddr);
}

/// Which block sizes the mapper may use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BlockPolicy {
    /// Blocks at levels `max..=2`: `max = L1` allows 1 GiB and 2 MiB blocks, `max = L2` only
    /// 2 MiB blocks.
    AllowBlocks {
        /// The lowest-numbered (largest) block level allowed.
        max: Level,
    },
    /// 4 KiB pages only.
    PagesOnly,
}

impl BlockPolicy {
    /// 1 GiB and 2 MiB blocks.
    pub const ALL_BLOCKS: BlockPolicy = BlockPolicy::AllowBlocks { max: Level::L1 };

    /// May a block be used at `level`?
    pub const fn allows(self, level: Level) -> bool {
        match self {
            BlockPolicy::PagesOnly => false,
            BlockPolicy::AllowBlocks { max } => level.allows_block() && level as u8 >= max as u8,
        }
    }
}

/// The range an operation was asked to (un)map.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MapRequest {
    /// First virtual address.
    pub va: VirtAddr,
    /// First physical address (`None` for an unmap).
    pub pa: Option<PhysAddr>,
    /// Size in bytes.
    pub size: u64,
}

/// Why a map or unmap failed. Nothing was changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MapError {
    /// VA, PA or size is not a multiple of 4 KiB.
    Unaligned(MapRequest),
    /// The size is zero.
    ZeroSize(MapRequest),
    /// The VA range is not canonical, wraps, or crosses from TTBR0's half to TTBR1's; or the
    /// PA range does not fit in 48 bits.
    OutOfRange(MapRequest),
    /// The VA range is in the wrong half for the address space (user vs kernel).
    WrongHalf {
        /// The request.
        req: MapRequest,
        /// The half the address space covers.
        expected: VaHalf,
    },
    /// Part of the range is already mapped.
    Overlap {
        /// The request.
        req: MapRequest,
        /// The first already-mapped address in the range.
        existing: VirtAddr,
    },
    /// The frame allocator ran out of table pages.
    OutOfTables {
        /// The request.
        req: MapRequest,
        /// Table pages the request needed.
        needed: u64,
    },
    /// An unmap covers only part of a block (blocks are not split here).
    PartialBlock {
        /// The request.
        req: MapRequest,
        /// First VA of the block.
        block: VirtAddr,
        /// Level of the block.
        level: Level,
    },
}

impl MapError {
    /// The request that failed.
    pub const fn request(&self) -> MapRequest {
        match *self {
            MapError::Unaligned(r) | MapError::ZeroSize(r) | MapError::OutOfRange(r) => r,
            MapError::WrongHalf { req, .. }
            | MapError::Overlap { req, .. }
            | MapError::OutOfTables { req, .. }
            | MapError::PartialBlock { req, .. } => req,
        }
    }
}

/// What a [`map_range`] did.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MapStats {
    /// 1 GiB blocks written.
    pub blocks_l1: u64,
    /// 2 MiB blocks written.
    pub blocks_l2: u64,
    /// 4 KiB pages written.
    pub pages: u64,
    /// Table pages allocated.
    pub tables_allocated: u64,
}

/// What an [`unmap_range`] did.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct UnmapStats {
    /// 1 GiB blocks removed.
    pub blocks_l1: u64,
    /// 2 MiB blocks removed.
    pub blocks_l2: u64,
    /// 4 KiB pages removed.
    pub pages: u64,
    /// Table pages freed.
    pub tables_freed: u64,
}

#[inline]
fn slot_ptr(mem: &impl PhysMem, table: PhysAddr, idx: usize) -> *mut u64 {
    mem.ptr(table + (idx as u64) * 8) as *mut u64
}

/// Reads entry `idx` of `table`.
///
/// # Safety
/// `table` must be a translation table page reachable through `mem`.
#[inline]
unsafe fn entry(mem: &impl PhysMem, table: PhysAddr, idx: usize) -> Descriptor {
    // SAFETY: the caller guarantees `table` is a table page in `mem`; `idx < 512`.
    unsafe { read_entry(slot_ptr(mem, table, idx)) }
}

/// The span `[base, base + size)` of the entry at `level` holding table offset `cur`, clipped
/// to `[cur, e)`: returns `(base, next)`.
#[inline]
fn entry_span(level: Level, cur: u64, e: u64) -> (u64, u64) {
    let base = cur & !(level.size() - 1);
    (base, (base + level.size()).min(e))
}

fn leaf_fits(level: Level, policy: BlockPolicy, cur: u64, next: u64, pa: u64) -> bool {
    match level {
        Level::L3 => true,
        Level::L0 => false,
        _ => {
            let size = level.size();
            policy.allows(level)
                && is_aligned(cur, size)
                && next - cur == size
                && is_aligned(pa, size)
        }
    }
}

fn validate(req: MapRequest) -> Result<(VaHalf, u64, u64), MapError> {
    let pa = req.pa.map_or(0, |p| p.0);
    if req.size == 0 {
        return Err(MapError::ZeroSize(req));
    }
    if !is_aligned(req.va.0 | pa | req.size, PAGE_SIZE) {
        return Err(MapError::Unaligned(req));
    }
    if req.pa.is_some() && (pa >= 1 << PA_BITS || req.size > (1 << PA_BITS) - pa) {
        return Err(MapError::OutOfRange(req));
    }
    VaHalf::split_range(req.va, req.size).ok_or(MapError::OutOfRange(req))
}

/// Walks `[s, e)` below `table` (`None`: a table that does not exist yet) as [`map_range`]
/// would, without writing: the number of tables it would allocate, or the first offset that
/// is already mapped.
///
/// # Safety
/// Tables reachable from `table` must be table pages in `mem`.
unsafe fn plan(
    mem: &impl PhysMem,
    table: Option<PhysAddr>,
    level: Level,
    s: u64,
    e: u64,
    pa: u64,
    policy: BlockPolicy,
) -> Result<u64, u64> {
    if table.is_none() && level == Level::L3 {
        // A level-3 table still to be made: every entry fits a page, nothing is mapped.
        return Ok(0);
    }
    let mut need = 0;
    let mut cur = s;
    while cur < e {
        let (_, next) = entry_span(level, cur, e);
        let epa = pa + (cur - s);
        let desc = match table {
            // SAFETY: forwarded from the caller.
            Some(t) => unsafe { entry(mem, t, level.index(VirtAddr(cur))) },
            None => Descriptor::INVALID,
        };
        match desc.kind(level) {
            DescKind::Block | DescKind::Page => return Err(cur),
            DescKind::Table => {
                let sub = level.next().expect("no table at level 3");
                // SAFETY: a table descriptor in a valid table points to a table page.
                need +=
                    unsafe { plan(mem, Some(desc.table_address()), sub, cur, next, epa, policy) }?;
            }
            DescKind::Invalid => {
                if !leaf_fits(level, policy, cur, next, epa) {
                    let sub = level.next().expect("level 3 always fits a page");
                    // SAFETY: `None` reads nothing.
                    need += 1 + unsafe { plan(mem, None, sub, cur, next, epa, policy) }?;
                }
            }
        }
        cur = next;
    }
    Ok(need)
}

/// Table pages allocated up front, chained through their first word.
struct Pool {
    head: Option<PhysAddr>,
}

impl Pool {
    /// Allocates `n` pages, or frees what it got and returns `None`.
    fn fill(mem: &impl PhysMem, alloc: &mut impl FrameAlloc, n: u64) -> Option<Pool> {
        let mut pool = Pool { head: None };
        for _ in 0..n {
            let Some(pa) = alloc.alloc_table() else {
                pool.release(mem, alloc);
                return None;
            };
            let link = pool.head.map_or(u64::MAX, |p| p.0);
            // SAFETY: the allocator handed us `pa` for our exclusive use; it is not reachable
            // from any table, so a plain store is fine.
            unsafe { core::ptr::write(mem.ptr(pa) as *mut u64, link) };
            pool.head = Some(pa);
        }
        Some(pool)
    }

    /// A zeroed table page from the pool.
    fn take(&mut self, mem: &impl PhysMem) -> PhysAddr {
        let pa = self.head.expect("table pool sized by plan()");
        let p = mem.ptr(pa);
        // SAFETY: `pa` is a page we own (allocated by `fill`, not yet linked anywhere).
        let link = unsafe { core::ptr::read(p as *const u64) };
        self.head = (link != u64::MAX).then_some(PhysAddr(link));
        // SAFETY: as above; the whole 4 KiB page is ours and contiguous in `mem`.
        unsafe { core::ptr::write_bytes(p, 0, TABLE_SIZE as usize) };
        pa
    }

    fn release(&mut self, mem: &impl PhysMem, alloc: &mut impl FrameAlloc) {
        while self.head.is_some() {
            let pa = self.take(mem);
            alloc.free_table(pa);
        }
    }
}

struct MapCtx<'a, M: PhysMem, O: MmuOps> {
    mem: &'a M,
    mmu: &'a mut O,
    half: VaHalf,
    attrs: Attrs,
    policy: BlockPolicy,
    pool: Pool,
    stats: MapStats,
    /// A level-3 page descriptor with `attrs` and output address 0 (`| pa` makes any page).
    page_template: Descriptor,
}

impl<M: PhysMem, O: MmuOps> MapCtx<'_, M, O> {
    /// Maps `[s, e)` -> `pa` below `table`, which `plan` has checked.
    ///
    /// # Safety
    /// Tables reachable from `table` are table pages in `mem` that the caller may edit.
    unsafe fn map(&mut self, table: PhysAddr, level: Level, s: u64, e: u64, pa: u64) {
        if level == Level::L3 {
            // Every entry of the range becomes a page (`plan` checked that none is mapped):
            // the descriptor is encoded once and the table page reached once.
            let base = slot_ptr(self.mem, table, 0);
            let (mut cur, mut epa) = (s, pa);
            while cur < e {
                // SAFETY: `level.index` is below 512, inside the table page (caller's
                // guarantee that `table` is a table page in `mem`).
                let slot = unsafe { base.add(level.index(VirtAddr(cur))) };
                let leaf = Descriptor(self.page_template.0 | epa);
                // SAFETY: an invalid entry of a table we may edit (plan() rejected overlaps);
                // invalid -> valid needs no break-before-make.
                unsafe { self.mmu.write_entry(slot, self.half.va(cur), level, leaf) };
                self.stats.pages += 1;
                cur += PAGE_SIZE;
                epa += PAGE_SIZE;
            }
            return;
        }
        let mut cur = s;
        while cur < e {
            let (base, next) = entry_span(level, cur, e);
            let epa = pa + (cur - s);
            let slot = slot_ptr(self.mem, table, level.index(VirtAddr(cur)));
            // SAFETY: `slot` is an entry of a table page (caller's guarantee).
            let desc = unsafe { read_entry(slot) };
            let va = self.half.va(base);
            match desc.kind(level) {
                DescKind::Table => {
                    let sub = level.next().expect("no table at level 3");
                    // SAFETY: a table descriptor points to a table page.
                    unsafe { self.map(desc.table_address(), sub, cur, next, epa) };
                }
                DescKind::Invalid if leaf_fits(level, self.policy, cur, next, epa) => {
                    let leaf = Descriptor::leaf(level, PhysAddr(epa), self.attrs)
                        .expect("alignment checked by leaf_fits");
                    // SAFETY: `slot` is an invalid entry of a table we may edit; invalid ->
                    // valid needs no break-before-make.
                    unsafe { self.mmu.write_entry(slot, va, level, leaf) };
                    match level {
                        Level::L1 => self.stats.blocks_l1 += 1,
                        Level::L2 => self.stats.blocks_l2 += 1,
                        _ => self.stats.pages += 1,
                    }
                }
                DescKind::Invalid => {
                    let sub = level.next().expect("level 3 always fits a page");
                    let new = self.pool.take(self.mem);
                    self.stats.tables_allocated += 1;
                    // SAFETY: `new` is a zeroed table page we own, not yet reachable.
                    unsafe { self.map(new, sub, cur, next, epa) };
                    // DSB ISHST: the zeroed and filled table must be visible to the table
                    // walkers before the descriptor linking it is (ARM ARM "Ordering of
                    // translation table walks"; Linux: the barrier in __pte_alloc/pmd_populate).
                    self.mmu.dsb_ishst();
                    let td = Descriptor::table(level, new).expect("table page is page aligned");
                    // SAFETY: `slot` is an invalid entry of a table we may edit.
                    unsafe { self.mmu.write_entry(slot, va, level, td) };
                }
                DescKind::Block | DescKind::Page => {
                    unreachable!("plan() rejected overlapping ranges")
                }
            }
            cur = next;
        }
    }
}

/// Maps `[va, va + size)` to `[pa, pa + size)` with `attrs` in the tables rooted at `root`.
///
/// Uses 1 GiB / 2 MiB blocks where `policy`, alignment and size allow. All-or-nothing: on error
/// nothing is written and no table page stays allocated.
///
/// # Safety
/// `root` and every table reachable from it must be translation table pages reachable through
/// `mem`, which the caller may edit (it holds the address space's lock for write), and the new
/// mapping must not create an alias the rest of the program relies on not existing.
#[allow(clippy::too_many_arguments)]
pub unsafe fn map_range(
    root: PhysAddr,
    mem: &impl PhysMem,
    alloc: &mut impl FrameAlloc,
    mmu: &mut impl MmuOps,
    va: VirtAddr,
    pa: PhysAddr,
    size: u64,
    attrs: Attrs,
    policy: BlockPolicy,
) -> Result<MapStats, MapError> {
    let req = MapRequest { va, pa: Some(pa), size };
    let (half, s, e) = validate(req)?;
    // SAFETY: forwarded from the caller.
    let needed = match unsafe { plan(mem, Some(root), Level::L0, s, e, pa.0, policy) } {
        Ok(n) => n,
        Err(off) => return Err(MapError::Overlap { req, existing: half.va(off) }),
    };
    let pool = Pool::fill(mem, alloc, needed).ok_or(MapError::OutOfTables { req, needed })?;
    let page_template =
        Descriptor::leaf(Level::L3, PhysAddr(0), attrs).expect("0 is a valid page address");
    let mut ctx =
        MapCtx { mem, mmu, half, attrs, policy, pool, stats: MapStats::default(), page_template };
    // SAFETY: forwarded from the caller; `plan` checked the whole range.
    unsafe { ctx.map(root, Level::L0, s, e, pa.0) };
    debug_assert!(ctx.pool.head.is_none(), "plan() and map() disagree");
    // DSB ISHST: the new entries are visible to the table walkers; ISB: this CPU's later
    // instructions may use them (ARM ARM "Ordering of translation table walks"; invalid
    // entries are not cached in TLBs, so no TLBI is needed).
    ctx.mmu.dsb_ishst();
    ctx.mmu.isb();
    Ok(ctx.stats)
}

/// Is some block in `[s, e)` below `table` only partly covered? Returns its offset and level.
///
/// # Safety
/// Tables reachable from `table` must be table pages in `mem`.
unsafe fn find_partial_block(
    mem: &impl PhysMem,
    table: PhysAddr,
    level: Level,
    s: u64,
    e: u64,
) -> Option<(u64, Level)> {
    let mut cur = s;
    while cur < e {
        let (base, next) = entry_span(level, cur, e);
        // SAFETY: forwarded from the caller.
        let desc = unsafe { entry(mem, table, level.index(VirtAddr(cur))) };
        match desc.kind(level) {
            DescKind::Block if cur != base || next - base != level.size() => {
                return Some((base, level))
            }
            DescKind::Table => {
                let sub = level.next().expect("no table at level 3");
                // SAFETY: a table descriptor points to a table page.
                let r = unsafe { find_partial_block(mem, desc.table_address(), sub, cur, next) };
                if r.is_some() {
                    return r;
                }
            }
            _ => {}
        }
        cur = next;
    }
    None
}

/// Child tables detached but not yet freed, and entries cleared but not yet invalidated, of one
/// table. Flushed (barriers, TLBIs, frees) when full and when the table is done.
struct Pending {
    cleared: [u64; ENTRIES_PER_TABLE / 64],
    any: bool,
    children: [PhysAddr; Pending::MAX_CHILDREN],
    n_children: usize,
}

impl Pending {
    const MAX_CHILDREN: usize = 16;

    fn new() -> Pending {
        Pending {
            cleared: [0; ENTRIES_PER_TABLE / 64],
            any: false,
            children: [PhysAddr(0); Pending::MAX_CHILDREN],
            n_children: 0,
        }
    }

    fn mark(&mut self, idx: usize) {
        self.cleared[idx / 64] |= 1 << (idx % 64);
        self.any = true;
    }
}

struct UnmapCtx<'a, M: PhysMem, O: MmuOps, A: FrameAlloc> {
    mem: &'a M,
    mmu: &'a mut O,
    alloc: &'a mut A,
    half: VaHalf,
    scope: TlbScope,
    stats: UnmapStats,
}

impl<M: PhysMem, O: MmuOps, A: FrameAlloc> UnmapCtx<'_, M, O, A> {
    /// Invalidates the TLB entries of every cleared entry of the table whose entries at `level`
    /// start at offset `table_base`, then frees the detached child tables.
    fn flush(&mut self, p: &mut Pending, level: Level, table_base: u64) {
        if !p.any {
            return;
        }
        // DSB ISHST: the invalid entries must be visible to the table walkers before the TLBIs,
        // or a walk could refill the TLB from the old entries (ARM ARM "Using break-before-make
        // when updating translation table entries").
        self.mmu.dsb_ishst();
        for (w, word) in p.cleared.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let idx = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                // TLBI by VA, one per cleared entry, so no TLB keeps the old translation
                // (ARM ARM "Using break-before-make when updating translation table entries"):
                // a block's TLB entry matches any VA inside it, and a non-last-level TLBI also
                // drops the walk-cache entries of a table a cleared table entry pointed to
                // (its own leaves were invalidated before it was detached).
                let va = self.half.va(table_base + idx as u64 * level.size());
                self.mmu.tlbi_va(va, self.scope);
            }
        }
        // DSB ISH: wait for the TLBIs to complete on all CPUs before the freed tables can be
        // reused (ARM ARM "Ordering and completion of TLB maintenance instructions").
        self.mmu.dsb_ish();
        for &child in &p.children[..p.n_children] {
            self.alloc.free_table(child);
            self.stats.tables_freed += 1;
        }
        *p = Pending::new();
    }

    /// Unmaps `[s, e)` below `table`; returns whether `table` is now empty.
    ///
    /// # Safety
    /// Tables reachable from `table` are table pages in `mem` the caller may edit, and
    /// `find_partial_block` found nothing in `[s, e)`.
    unsafe fn unmap(&mut self, table: PhysAddr, level: Level, s: u64, e: u64) -> bool {
        let table_base = s & !(level.size() * ENTRIES_PER_TABLE as u64 - 1);
        let mut p = Pending::new();
        let mut cur = s;
        while cur < e {
            let (base, next) = entry_span(level, cur, e);
            let idx = level.index(VirtAddr(cur));
            let slot = slot_ptr(self.mem, table, idx);
            // SAFETY: an entry of a table page (caller's guarantee).
            let desc = unsafe { read_entry(slot) };
            let va = self.half.va(base);
            match desc.kind(level) {
                DescKind::Block | DescKind::Page => {
                    // SAFETY: an entry of a table we may edit; valid -> invalid is the "break"
                    // half of break-before-make, completed by `flush`.
                    unsafe { self.mmu.write_entry(slot, va, level, Descriptor::INVALID) };
                    p.mark(idx);
                    match level {
                        Level::L1 => self.stats.blocks_l1 += 1,
                        Level::L2 => self.stats.blocks_l2 += 1,
                        _ => self.stats.pages += 1,
                    }
                }
                DescKind::Table => {
                    let sub = level.next().expect("no table at level 3");
                    let child = desc.table_address();
                    // SAFETY: a table descriptor points to a table page.
                    if unsafe { self.unmap(child, sub, cur, next) } {
                        if p.n_children == Pending::MAX_CHILDREN {
                            self.flush(&mut p, level, table_base);
                        }
                        // SAFETY: as above; the child is empty and its own entries' TLBIs
                        // have completed (its `flush` ran before returning).
                        unsafe { self.mmu.write_entry(slot, va, level, Descriptor::INVALID) };
                        p.mark(idx);
                        p.children[p.n_children] = child;
                        p.n_children += 1;
                    }
                }
                DescKind::Invalid => {}
            }
            cur = next;
        }
        self.flush(&mut p, level, table_base);
        (0..ENTRIES_PER_TABLE).all(|i| {
            // SAFETY: an entry of a table page.
            let d = unsafe { entry(self.mem, table, i) };
            d.kind(level) == DescKind::Invalid
        })
    }
}

/// Unmaps `[va, va + size)` from the tables rooted at `root`, frees tables that become empty
/// (never `root`), and invalidates the TLB entries (by VA, `scope`).
///
/// Unmapped holes inside the range are skipped. A block only partly inside the range is an
/// error ([`MapError::PartialBlock`]) and nothing is changed.
///
/// # Safety
/// As for [`map_range`]; besides, nothing may still use the memory mapped at
/// `[va, va + size)`.
pub unsafe fn unmap_range(
    root: PhysAddr,
    mem: &impl PhysMem,
    alloc: &mut impl FrameAlloc,
    mmu: &mut impl MmuOps,
    va: VirtAddr,
    size: u64,
    scope: TlbScope,
) -> Result<UnmapStats, MapError> {
    let req = MapRequest { va, pa: None, size };
    let (half, s, e) = validate(req)?;
    // SAFETY: forwarded from the caller.
    if let Some((block, level)) = unsafe { find_partial_block(mem, root, Level::L0, s, e) } {
        return Err(MapError::PartialBlock { req, block: half.va(block), level });
    }
    let mut ctx = UnmapCtx { mem, mmu, alloc, half, scope, stats: UnmapStats::default() };
    // SAFETY: forwarded from the caller; checked for partial blocks just above.
    unsafe { ctx.unmap(root, Level::L0, s, e) };
    let stats = ctx.stats;
    if stats != UnmapStats::default() {
        // ISB: this CPU's later instructions see the unmapped range as unmapped (the TLBIs
        // completed at the DSB ISH in each flush; ARM ARM "Ordering and completion of TLB
        // maintenance instructions" requires a context synchronization event for the local
        // instruction stream).
        mmu.isb();
    }
    Ok(stats)
}

/// Software translation of `va` through the tables at `root`: the physical address, the
/// attributes of the leaf, and the leaf's level; `None` if unmapped or not canonical.
///
/// # Safety
/// `root` and every table reachable from it must be translation table pages reachable through
/// `mem` (the caller holds the address space's lock so they are not freed meanwhile).
pub unsafe fn translate(
    root: PhysAddr,
    mem: &impl PhysMem,
    va: VirtAddr,
) -> Option<(PhysAddr, Attrs, Level)> {
    VaHalf::of(va)?;
    let mut table = root;
    let mut level = Level::L0;
    loop {
        // SAFETY: forwarded from the caller.
        let desc = unsafe { entry(mem, table, level.index(va)) };
        match desc.kind(level) {
            DescKind::Invalid => return None,
            DescKind::Table => {
                table = desc.table_address();
                level = level.next()?;
            }
            DescKind::Block | DescKind::Page => {
                let off = va.0 & (level.size() - 1);
                return Some((desc.output_address(level) + off, desc.attrs(), level));
            }
        }
    }
}

#[cfg(any(test, feature = "std"))]
pub use host::VecFrameAlloc;

#[cfg(any(test, feature = "std"))]
mod host {
    extern crate std;
    use super::FrameAlloc;
    use crate::addr::{PhysAddr, PAGE_SIZE};
    use std::collections::BTreeSet;
    use std::vec::Vec;

    /// Host frame allocator over `[base, base + n * 4 KiB)` with an optional limit, tracking
    /// which pages are out (for leak checks).
    #[derive(Debug)]
    pub struct VecFrameAlloc {
        free: Vec<PhysAddr>,
        out: BTreeSet<PhysAddr>,
        limit: Option<usize>,
    }

    impl VecFrameAlloc {
        /// `n` pages starting at `base` (lowest addresses handed out first).
        pub fn new(base: PhysAddr, n: u64) -> Self {
            VecFrameAlloc {
                free: (0..n).rev().map(|i| base + i * PAGE_SIZE).collect(),
                out: BTreeSet::new(),
                limit: None,
            }
        }
        /// Refuse to have more than `limit` pages out at once (`None`: no limit).
        pub fn set_limit(&mut self, limit: Option<usize>) {
            self.limit = limit;
        }
        /// Pages currently allocated.
        pub fn allocated(&self) -> usize {
            self.out.len()
        }
        /// Is `pa` currently allocated?
        pub fn is_allocated(&self, pa: PhysAddr) -> bool {
            self.out.contains(&pa)
        }
    }

    impl FrameAlloc for VecFrameAlloc {
        fn alloc_table(&mut self) -> Option<PhysAddr> {
            if self.limit.is_some_and(|l| self.out.len() >= l) {
                return None;
            }
            let pa = self.free.pop()?;
            self.out.insert(pa);
            Some(pa)
        }
        fn free_table(&mut self, pa: PhysAddr) {
            assert!(self.out.remove(&pa), "double free of table page {pa:?}");
            self.free.push(pa);
        }
    }
}
