//! The early frame allocator: Linux's `memblock`, with fixed-capacity region lists.
//!
//! Before the buddy allocator exists (it needs the vmemmap, which needs frames, which need an
//! allocator) the firmware describes memory in two lists, as Linux does:
//!
//! - `memory`: the RAM banks (from the device tree, ATAGs or the board's table);
//! - `reserved`: ranges that are in use, each tagged with a [`ReservedKind`] (kernel image,
//!   early page tables, vmemmap backing, firmware areas, ...).
//!
//! [`Memblock::alloc`] finds a free range (in `memory`, outside `reserved`) and reserves it.
//! Allocation is top-down by default (Linux's default on arm64 too), below an optional current
//! limit (Linux's `memblock_set_current_limit`): early on, the firmware can only reach the
//! memory its boot window maps. When the buddy allocator starts, everything still free is handed
//! over (see `buddy::Buddy::free_memblock`), and the reserved kinds become page states.
//!
//! Both lists are kept sorted by base; adjacent regions are merged (reserved ones only when
//! they have the same kind). Nothing here allocates from the heap.

use crate::addr::{align_down, align_up, Pfn, PhysAddr, PAGE_SIZE};
use core::fmt;

/// A physical range `[base, base + size)`.
#[derive(Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MemRegion {
    /// First byte.
    pub base: PhysAddr,
    /// Length in bytes.
    pub size: u64,
}

impl fmt::Debug for MemRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}..{:#x})", self.base.0, self.base.0.wrapping_add(self.size))
    }
}

impl MemRegion {
    /// `[base, base + size)`.
    pub const fn new(base: u64, size: u64) -> Self {
        MemRegion { base: PhysAddr(base), size }
    }
    /// `[start, end)`; an empty region when `end <= start`.
    pub const fn from_range(start: u64, end: u64) -> Self {
        MemRegion { base: PhysAddr(start), size: end.saturating_sub(start) }
    }
    /// One past the last byte (saturating at `u64::MAX`).
    pub const fn end(&self) -> u64 {
        self.base.0.saturating_add(self.size)
    }
    /// Is the region empty?
    pub const fn is_empty(&self) -> bool {
        self.size == 0
    }
    /// Does the region contain `pa`?
    pub const fn contains(&self, pa: PhysAddr) -> bool {
        pa.0 >= self.base.0 && pa.0 < self.end()
    }
    /// Does the region contain all of `other`?
    pub const fn covers(&self, other: &MemRegion) -> bool {
        other.base.0 >= self.base.0 && other.end() <= self.end()
    }
    /// Do the two regions share a byte?
    pub const fn overlaps(&self, other: &MemRegion) -> bool {
        self.base.0 < other.end() && other.base.0 < self.end() && self.size > 0 && other.size > 0
    }
    /// The common part of two regions (empty if they do not overlap).
    pub fn intersect(&self, other: &MemRegion) -> MemRegion {
        let start = self.base.0.max(other.base.0);
        let end = self.end().min(other.end());
        MemRegion::from_range(start, end.max(start))
    }
    /// The largest page-aligned region inside this one (possibly empty).
    pub const fn page_trimmed(&self) -> MemRegion {
        let start = align_up(self.base.0, PAGE_SIZE);
        let end = align_down(self.end(), PAGE_SIZE);
        MemRegion::from_range(start, end)
    }
    /// The smallest page-aligned region covering this one.
    pub const fn page_rounded(&self) -> MemRegion {
        if self.size == 0 {
            return MemRegion::new(align_down(self.base.0, PAGE_SIZE), 0);
        }
        let start = align_down(self.base.0, PAGE_SIZE);
        let end = align_up(self.end(), PAGE_SIZE);
        MemRegion::from_range(start, end)
    }
    /// The frames wholly inside the region: `start..end` (empty if none).
    pub const fn pfns(&self) -> core::ops::Range<u64> {
        let t = self.page_trimmed();
        (t.base.0 / PAGE_SIZE)..(t.end() / PAGE_SIZE)
    }
    /// The first frame wholly inside the region.
    pub const fn start_pfn(&self) -> Pfn {
        Pfn(self.pfns().start)
    }
    /// Number of whole frames in the region.
    pub const fn nr_pages(&self) -> u64 {
        let r = self.pfns();
        r.end - r.start
    }
}

/// A fixed-capacity list of [`MemRegion`]s (no heap).
#[derive(Clone, Copy)]
pub struct RegionList<const N: usize> {
    regions: [MemRegion; N],
    len: usize,
}

/// The list is full.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ListFull;

impl<const N: usize> RegionList<N> {
    /// An empty list.
    pub const fn new() -> Self {
        RegionList { regions: [MemRegion::new(0, 0); N], len: 0 }
    }
    /// A list holding copies of `regions`, or `ListFull` if there are more than `N`.
    pub fn from_slice(regions: &[MemRegion]) -> Result<Self, ListFull> {
        let mut l = Self::new();
        for r in regions {
            l.push(*r)?;
        }
        Ok(l)
    }
    /// Appends `r`.
    pub fn push(&mut self, r: MemRegion) -> Result<(), ListFull> {
        if self.len == N {
            return Err(ListFull);
        }
        self.regions[self.len] = r;
        self.len += 1;
        Ok(())
    }
    /// The regions, in insertion (or sorted) order.
    pub fn as_slice(&self) -> &[MemRegion] {
        &self.regions[..self.len]
    }
    /// Number of regions.
    pub const fn len(&self) -> usize {
        self.len
    }
    /// No regions?
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Maximum number of regions.
    pub const fn capacity(&self) -> usize {
        N
    }
    /// Iterates over the regions.
    pub fn iter(&self) -> core::slice::Iter<'_, MemRegion> {
        self.as_slice().iter()
    }
    /// Sorts by base address (insertion sort: the lists are tiny).
    pub fn sort(&mut self) {
        let s = &mut self.regions[..self.len];
        for i in 1..s.len() {
            let mut j = i;
            while j > 0 && s[j - 1].base > s[j].base {
                s.swap(j - 1, j);
                j -= 1;
            }
        }
    }
    /// Sum of the sizes.
    pub fn total_bytes(&self) -> u64 {
        self.iter().map(|r| r.size).sum()
    }
}

impl<const N: usize> Default for RegionList<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> PartialEq for RegionList<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}
impl<const N: usize> Eq for RegionList<N> {}

impl<const N: usize> fmt::Debug for RegionList<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

#[cfg(feature = "defmt")]
impl<const N: usize> defmt::Format for RegionList<N> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=[?]}", self.as_slice())
    }
}

impl<'a, const N: usize> IntoIterator for &'a RegionList<N> {
    type Item = &'a MemRegion;
    type IntoIter = core::slice::Iter<'a, MemRegion>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Why a range is reserved. Becomes the frames' page state when the buddy allocator starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ReservedKind {
    /// The firmware image (text, data, bss).
    KernelImage,
    /// Translation tables built before the buddy allocator exists.
    EarlyTables,
    /// Frames backing the vmemmap.
    Vmemmap,
    /// Owned by the VideoCore or boot firmware (spin tables, `/memreserve/`,
    /// `/reserved-memory`).
    Firmware,
    /// The flattened device tree (or ATAG list) handed over in `x0`.
    DeviceTree,
    /// Kernel stacks.
    Stacks,
    /// RAM kept away from the buddy allocator at boot, to be hot-added later
    /// (`memhp_reserve=`).
    HotplugHeldBack,
    /// 1 GiB HugeTLB pages reserved before the kernel map and the vmemmap take frames, for
    /// `hugetlb_vmemmap_preinit=on` (their vmemmap is populated already optimized; without it
    /// the pool comes from the buddy allocator).
    HugetlbBoot,
    /// Anything else.
    Other,
}

/// A reserved range and why.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReservedRegion {
    /// The range (page-aligned: reservations are rounded out to whole frames).
    pub region: MemRegion,
    /// Why it is reserved.
    pub kind: ReservedKind,
}

/// Errors from [`Memblock`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MemblockError {
    /// A size of zero.
    ZeroSize,
    /// A memory region that is not page-aligned (base or size).
    Unaligned {
        /// The offending region.
        region: MemRegion,
    },
    /// An alignment that is not a power of two, or below [`PAGE_SIZE`].
    BadAlignment {
        /// The requested alignment.
        align: u64,
    },
    /// `base + size` overflows.
    Wraps {
        /// The base.
        base: PhysAddr,
        /// The size.
        size: u64,
    },
    /// The new memory region overlaps an existing one.
    OverlapsMemory {
        /// The region being added.
        new: MemRegion,
        /// The existing region.
        existing: MemRegion,
    },
    /// The new reservation overlaps an existing one.
    OverlapsReserved {
        /// The range being reserved (rounded to pages).
        new: MemRegion,
        /// The existing reservation.
        existing: ReservedRegion,
    },
    /// No free range of that size and alignment below the limit.
    OutOfMemory {
        /// Requested size (rounded up to pages).
        size: u64,
        /// Requested alignment.
        align: u64,
    },
    /// A fixed-capacity list is full.
    TooManyRegions,
    /// [`Memblock::unreserve`] of a range that is not inside a single reservation.
    NotReserved {
        /// The range.
        region: MemRegion,
    },
}

/// Capacity of the memory list.
pub const MAX_MEMORY_REGIONS: usize = 16;
/// Capacity of the reserved list.
pub const MAX_RESERVED_REGIONS: usize = 64;

/// The early allocator: memory and reserved lists.
#[derive(Clone)]
pub struct Memblock {
    memory: RegionList<MAX_MEMORY_REGIONS>,
    reserved: [ReservedRegion; MAX_RESERVED_REGIONS],
    nr_reserved: usize,
    bottom_up: bool,
    limit: u64,
}

impl Default for Memblock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Memblock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memblock")
            .field("memory", &self.memory)
            .field("reserved", &self.reserved())
            .field("bottom_up", &self.bottom_up)
            .field("limit", &self.limit)
            .finish()
    }
}

const EMPTY_RESERVED: ReservedRegion =
    ReservedRegion { region: MemRegion::new(0, 0), kind: ReservedKind::Other };

fn check_range(base: PhysAddr, size: u64) -> Result<MemRegion, MemblockError> {
    if size == 0 {
        return Err(MemblockError::ZeroSize);
    }
    if base.0.checked_add(size).is_none() {
        return Err(MemblockError::Wraps { base, size });
    }
    Ok(MemRegion { base, size })
}

impl Memblock {
    /// Empty lists, top-down allocation, no limit.
    pub const fn new() -> Self {
        Memblock {
            memory: RegionList::new(),
            reserved: [EMPTY_RESERVED; MAX_RESERVED_REGIONS],
            nr_reserved: 0,
            bottom_up: false,
            limit: u64::MAX,
        }
    }

    /// Allocate from low addresses up (`true`) or from the top down (`false`, the default).
    pub fn set_bottom_up(&mut self, bottom_up: bool) {
        self.bottom_up = bottom_up;
    }

    /// Allocations must end at or below `limit` (Linux's `memblock_set_current_limit`).
    /// `PhysAddr(u64::MAX)` removes the limit.
    pub fn set_current_limit(&mut self, limit: PhysAddr) {
        self.limit = limit.0;
    }

    /// The current allocation limit.
    pub fn current_limit(&self) -> PhysAddr {
        PhysAddr(self.limit)
    }

    /// Adds a RAM bank. Must be page-aligned and must not overlap an existing bank; adjacent
    /// banks are merged.
    pub fn add_memory(&mut self, base: PhysAddr, size: u64) -> Result<(), MemblockError> {
        let new = check_range(base, size)?;
        if !base.is_aligned(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(MemblockError::Unaligned { region: new });
        }
        if let Some(existing) = self.memory.iter().find(|m| m.overlaps(&new)) {
            return Err(MemblockError::OverlapsMemory { new, existing: *existing });
        }
        // Merge with neighbours if adjacent.
        let mut merged = new;
        let mut list = RegionList::<MAX_MEMORY_REGIONS>::new();
        for m in self.memory.iter() {
            if m.end() == merged.base.0 {
                merged = MemRegion::from_range(m.base.0, merged.end());
            } else if merged.end() == m.base.0 {
                merged = MemRegion::from_range(merged.base.0, m.end());
            } else {
                list.push(*m).map_err(|_| MemblockError::TooManyRegions)?;
            }
        }
        list.push(merged).map_err(|_| MemblockError::TooManyRegions)?;
        list.sort();
        self.memory = list;
        Ok(())
    }

    /// Removes `[base, base + size)` (page-aligned) from the memory list, splitting banks as
    /// needed (Linux's `memblock_remove`). Reservations are left alone.
    pub fn remove_memory(&mut self, base: PhysAddr, size: u64) -> Result<(), MemblockError> {
        let cut = check_range(base, size)?;
        if !base.is_aligned(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(MemblockError::Unaligned { region: cut });
        }
        let mut list = RegionList::<MAX_MEMORY_REGIONS>::new();
        for m in self.memory.iter() {
            if !m.overlaps(&cut) {
                list.push(*m).map_err(|_| MemblockError::TooManyRegions)?;
                continue;
            }
            let below = MemRegion::from_range(m.base.0, cut.base.0);
            let above = MemRegion::from_range(cut.end(), m.end());
            for part in [below, above] {
                if !part.is_empty() {
                    list.push(part).map_err(|_| MemblockError::TooManyRegions)?;
                }
            }
        }
        self.memory = list;
        Ok(())
    }

    /// Reserves `[base, base + size)`, rounded out to whole frames. It may lie outside the memory
    /// list (firmware areas often do); it must not overlap another reservation. Adjacent
    /// reservations of the same kind are merged.
    pub fn reserve(
        &mut self,
        base: PhysAddr,
        size: u64,
        kind: ReservedKind,
    ) -> Result<(), MemblockError> {
        let r = check_range(base, size)?;
        if r.end() > align_down(u64::MAX, PAGE_SIZE) {
            return Err(MemblockError::Wraps { base, size });
        }
        self.insert_reserved(r.page_rounded(), kind)
    }

    fn insert_reserved(&mut self, new: MemRegion, kind: ReservedKind) -> Result<(), MemblockError> {
        if let Some(existing) = self.reserved().iter().find(|r| r.region.overlaps(&new)) {
            return Err(MemblockError::OverlapsReserved { new, existing: *existing });
        }
        // Position: first reservation above `new`.
        let pos = self
            .reserved()
            .iter()
            .position(|r| r.region.base.0 >= new.end())
            .unwrap_or(self.nr_reserved);
        let merge_prev = pos > 0 && {
            let p = self.reserved[pos - 1];
            p.kind == kind && p.region.end() == new.base.0
        };
        let merge_next = pos < self.nr_reserved && {
            let n = self.reserved[pos];
            n.kind == kind && n.region.base.0 == new.end()
        };
        match (merge_prev, merge_next) {
            (true, true) => {
                let end = self.reserved[pos].region.end();
                let p = &mut self.reserved[pos - 1].region;
                *p = MemRegion::from_range(p.base.0, end);
                self.remove_reserved_at(pos);
            }
            (true, false) => {
                let p = &mut self.reserved[pos - 1].region;
                *p = MemRegion::from_range(p.base.0, new.end());
            }
            (false, true) => {
                let n = &mut self.reserved[pos].region;
                *n = MemRegion::from_range(new.base.0, n.end());
            }
            (false, false) => {
                if self.nr_reserved == MAX_RESERVED_REGIONS {
                    return Err(MemblockError::TooManyRegions);
                }
                self.reserved.copy_within(pos..self.nr_reserved, pos + 1);
                self.reserved[pos] = ReservedRegion { region: new, kind };
                self.nr_reserved += 1;
            }
        }
        Ok(())
    }

    fn remove_reserved_at(&mut self, i: usize) {
        self.reserved.copy_within(i + 1..self.nr_reserved, i);
        self.nr_reserved -= 1;
        self.reserved[self.nr_reserved] = EMPTY_RESERVED;
    }

    /// Drops the reservation of `[base, base + size)` (rounded out to frames), which must lie
    /// inside a single reservation; that reservation is split if needed (Linux's
    /// `memblock_phys_free`). Returns the kind it had.
    pub fn unreserve(&mut self, base: PhysAddr, size: u64) -> Result<ReservedKind, MemblockError> {
        let cut = check_range(base, size)?.page_rounded();
        let Some(i) = self.reserved().iter().position(|r| r.region.covers(&cut)) else {
            return Err(MemblockError::NotReserved { region: cut });
        };
        let old = self.reserved[i];
        let below = MemRegion::from_range(old.region.base.0, cut.base.0);
        let above = MemRegion::from_range(cut.end(), old.region.end());
        if !below.is_empty() && !above.is_empty() && self.nr_reserved == MAX_RESERVED_REGIONS {
            return Err(MemblockError::TooManyRegions);
        }
        self.remove_reserved_at(i);
        for part in [below, above] {
            if !part.is_empty() {
                self.insert_reserved(part, old.kind)?;
            }
        }
        Ok(old.kind)
    }

    /// Allocates `size` bytes (rounded up to whole frames) aligned to `align` (a power of two, at
    /// least [`PAGE_SIZE`]) from free memory below the current limit, and reserves them as
    /// `kind`.
    pub fn alloc(
        &mut self,
        size: u64,
        align: u64,
        kind: ReservedKind,
    ) -> Result<PhysAddr, MemblockError> {
        self.alloc_range(size, align, kind, PhysAddr(0), PhysAddr(self.limit))
    }

    /// Like [`alloc`](Self::alloc), but the block must lie inside `[min, max)` (and below the
    /// current limit).
    pub fn alloc_range(
        &mut self,
        size: u64,
        align: u64,
        kind: ReservedKind,
        min: PhysAddr,
        max: PhysAddr,
    ) -> Result<PhysAddr, MemblockError> {
        if size == 0 {
            return Err(MemblockError::ZeroSize);
        }
        if !align.is_power_of_two() || align < PAGE_SIZE {
            return Err(MemblockError::BadAlignment { align });
        }
        let size = align_up(size, PAGE_SIZE);
        let lo = min.0;
        let hi = max.0.min(self.limit);
        let oom = MemblockError::OutOfMemory { size, align };
        let mut found = None;
        if self.bottom_up {
            for f in self.free_ranges() {
                let start = align_up(f.base.0.max(lo), align);
                let end = f.end().min(hi);
                if start < end && end - start >= size {
                    found = Some(start);
                    break;
                }
            }
        } else {
            // Free ranges come sorted ascending; keep the last fit.
            for f in self.free_ranges() {
                let start = f.base.0.max(lo);
                let end = f.end().min(hi);
                if end <= start || end - start < size {
                    continue;
                }
                let cand = align_down(end - size, align);
                if cand >= start {
                    found = Some(cand);
                }
            }
        }
        let base = found.ok_or(oom)?;
        self.insert_reserved(MemRegion::new(base, size), kind)?;
        Ok(PhysAddr(base))
    }

    /// The memory banks, sorted.
    pub fn memory(&self) -> &[MemRegion] {
        self.memory.as_slice()
    }

    /// The reservations, sorted.
    pub fn reserved(&self) -> &[ReservedRegion] {
        &self.reserved[..self.nr_reserved]
    }

    /// Free ranges (memory minus reservations), ascending. Ranges are page-aligned as long as
    /// the memory banks are (which [`add_memory`](Self::add_memory) enforces).
    pub fn free_ranges(&self) -> FreeRanges<'_> {
        FreeRanges { mb: self, mi: 0, cur: 0 }
    }

    /// Total bytes of memory.
    pub fn total_memory(&self) -> u64 {
        self.memory.total_bytes()
    }

    /// Bytes of memory that are reserved (reservations outside memory do not count).
    pub fn reserved_in_memory(&self) -> u64 {
        let mut n = 0;
        for r in self.reserved() {
            for m in self.memory() {
                n += r.region.intersect(m).size;
            }
        }
        n
    }

    /// Bytes of memory still free.
    pub fn free_bytes(&self) -> u64 {
        self.free_ranges().map(|r| r.size).sum()
    }

    /// Is `[base, base + size)` entirely inside one memory bank?
    pub fn is_memory(&self, region: &MemRegion) -> bool {
        self.memory.iter().any(|m| m.covers(region))
    }

    /// The kind of the reservation containing `pa`, if any.
    pub fn reserved_kind(&self, pa: PhysAddr) -> Option<ReservedKind> {
        self.reserved().iter().find(|r| r.region.contains(pa)).map(|r| r.kind)
    }
}

/// Iterator over the free ranges of a [`Memblock`]; see [`Memblock::free_ranges`].
pub struct FreeRanges<'a> {
    mb: &'a Memblock,
    mi: usize,
    cur: u64,
}

impl Iterator for FreeRanges<'_> {
    type Item = MemRegion;

    fn next(&mut self) -> Option<MemRegion> {
        loop {
            let m = *self.mb.memory().get(self.mi)?;
            if self.cur < m.base.0 {
                self.cur = m.base.0;
            }
            if self.cur >= m.end() {
                self.mi += 1;
                continue;
            }
            // The first reservation ending above `cur` (the list is sorted and disjoint).
            let next_res = self.mb.reserved().iter().find(|r| r.region.end() > self.cur);
            match next_res {
                Some(r) if r.region.base.0 <= self.cur => {
                    self.cur = r.region.end();
                }
                Some(r) => {
                    let end = r.region.base.0.min(m.end());
                    let out = MemRegion::from_range(self.cur, end);
                    self.cur = end;
                    return Some(out);
                }
                None => {
                    let out = MemRegion::from_range(self.cur, m.end());
                    self.cur = m.end();
                    return Some(out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn qemu() -> Memblock {
        let mut mb = Memblock::new();
        mb.add_memory(PhysAddr(0), 0x3c00_0000).unwrap();
        mb.add_memory(PhysAddr(0x4000_0000), 0x4000_0000).unwrap();
        mb
    }

    #[test]
    fn add_memory_merges_and_rejects_overlap() {
        let mut mb = Memblock::new();
        mb.add_memory(PhysAddr(0x10_0000), 0x10_0000).unwrap();
        mb.add_memory(PhysAddr(0), 0x10_0000).unwrap();
        assert_eq!(mb.memory(), &[MemRegion::new(0, 0x20_0000)]);
        assert!(matches!(
            mb.add_memory(PhysAddr(0x1f_f000), 0x2000),
            Err(MemblockError::OverlapsMemory { .. })
        ));
        assert!(matches!(
            mb.add_memory(PhysAddr(0x30_0800), 0x1000),
            Err(MemblockError::Unaligned { .. })
        ));
        assert_eq!(mb.add_memory(PhysAddr(0), 0), Err(MemblockError::ZeroSize));
        assert!(matches!(
            mb.add_memory(PhysAddr(u64::MAX - 0xfff), 0x2000),
            Err(MemblockError::Wraps { .. })
        ));
    }

    #[test]
    fn reserve_rounds_out_merges_same_kind_and_rejects_overlap() {
        let mut mb = qemu();
        mb.reserve(PhysAddr(0x8_0100), 0x1234, ReservedKind::KernelImage).unwrap();
        assert_eq!(mb.reserved()[0].region, MemRegion::from_range(0x8_0000, 0x8_2000));
        mb.reserve(PhysAddr(0x8_2000), 0x1000, ReservedKind::KernelImage).unwrap();
        assert_eq!(mb.reserved().len(), 1);
        mb.reserve(PhysAddr(0x8_3000), 0x1000, ReservedKind::Stacks).unwrap();
        assert_eq!(mb.reserved().len(), 2);
        let e = mb.reserve(PhysAddr(0x8_1000), 0x10, ReservedKind::Firmware).unwrap_err();
        assert!(matches!(e, MemblockError::OverlapsReserved { existing, .. }
            if existing.kind == ReservedKind::KernelImage));
        // Outside memory is allowed.
        mb.reserve(PhysAddr(0x3f00_0000), 0x1000, ReservedKind::Firmware).unwrap();
    }

    #[test]
    fn alloc_top_down_and_bottom_up() {
        let mut mb = qemu();
        let a = mb.alloc(PAGE_SIZE, PAGE_SIZE, ReservedKind::EarlyTables).unwrap();
        assert_eq!(a, PhysAddr(0x8000_0000 - PAGE_SIZE));
        let b = mb.alloc(2 * MB, 2 * MB, ReservedKind::Vmemmap).unwrap();
        assert_eq!(b, PhysAddr(0x8000_0000 - 4 * MB));
        mb.set_current_limit(PhysAddr(0x4000_0000));
        let c = mb.alloc(PAGE_SIZE, PAGE_SIZE, ReservedKind::EarlyTables).unwrap();
        assert_eq!(c, PhysAddr(0x3c00_0000 - PAGE_SIZE));
        mb.set_bottom_up(true);
        let d = mb.alloc(3 * PAGE_SIZE, PAGE_SIZE, ReservedKind::Other).unwrap();
        assert_eq!(d, PhysAddr(0));
        let e = mb.alloc(PAGE_SIZE, 64 * 1024, ReservedKind::Other).unwrap();
        assert_eq!(e, PhysAddr(0x1_0000));
        assert_eq!(
            mb.alloc(PAGE_SIZE, 3, ReservedKind::Other),
            Err(MemblockError::BadAlignment { align: 3 })
        );
        assert_eq!(mb.alloc(0, PAGE_SIZE, ReservedKind::Other), Err(MemblockError::ZeroSize));
        assert!(matches!(
            mb.alloc(1 << 40, PAGE_SIZE, ReservedKind::Other),
            Err(MemblockError::OutOfMemory { .. })
        ));
        // Every allocation is in memory and reserved with its kind.
        for pa in [a, b, c, d, e] {
            assert!(mb.is_memory(&MemRegion { base: pa, size: PAGE_SIZE }));
            assert!(mb.reserved_kind(pa).is_some());
        }
        assert_eq!(mb.reserved_kind(b), Some(ReservedKind::Vmemmap));
    }

    #[test]
    fn free_ranges_subtract_reservations() {
        let mut mb = qemu();
        mb.reserve(PhysAddr(0), 0x1000, ReservedKind::Firmware).unwrap();
        mb.reserve(PhysAddr(0x8_0000), 0x10_0000, ReservedKind::KernelImage).unwrap();
        mb.reserve(PhysAddr(0x3b00_0000), 0x200_0000, ReservedKind::Firmware).unwrap(); // straddles the end of bank 0
        mb.reserve(PhysAddr(0x7000_0000), 0x1000_0000, ReservedKind::HotplugHeldBack).unwrap();
        let free: Vec<MemRegion> = mb.free_ranges().collect();
        assert_eq!(
            free,
            vec![
                MemRegion::from_range(0x1000, 0x8_0000),
                MemRegion::from_range(0x18_0000, 0x3b00_0000),
                MemRegion::from_range(0x4000_0000, 0x7000_0000),
            ]
        );
        let total: u64 = free.iter().map(|r| r.size).sum();
        assert_eq!(total, mb.free_bytes());
        assert_eq!(mb.total_memory() - mb.reserved_in_memory(), mb.free_bytes());
    }

    #[test]
    fn unreserve_splits() {
        let mut mb = qemu();
        mb.reserve(PhysAddr(0x10_0000), 0x10_0000, ReservedKind::Other).unwrap();
        assert_eq!(mb.unreserve(PhysAddr(0x14_0000), 0x1000), Ok(ReservedKind::Other));
        assert_eq!(mb.reserved().len(), 2);
        assert!(matches!(
            mb.unreserve(PhysAddr(0x14_0000), 0x1000),
            Err(MemblockError::NotReserved { .. })
        ));
    }

    #[test]
    fn remove_memory_splits_banks() {
        let mut mb = qemu();
        mb.remove_memory(PhysAddr(0x3000_0000), 0x1000_0000).unwrap();
        assert_eq!(
            mb.memory(),
            &[
                MemRegion::from_range(0, 0x3000_0000),
                MemRegion::from_range(0x4000_0000, 0x8000_0000)
            ]
        );
        mb.remove_memory(PhysAddr(0x5000_0000), 0x1000_0000).unwrap();
        assert_eq!(mb.memory().len(), 3);
    }

    #[test]
    fn too_many_reservations() {
        let mut mb = qemu();
        for i in 0..MAX_RESERVED_REGIONS as u64 {
            mb.reserve(PhysAddr(i * 0x2000), 0x1000, ReservedKind::Other).unwrap();
        }
        assert_eq!(
            mb.reserve(PhysAddr(0x100_0000), 0x1000, ReservedKind::Other),
            Err(MemblockError::TooManyRegions)
        );
    }

    #[test]
    fn region_helpers() {
        let r = MemRegion::new(0x1800, 0x3000);
        assert_eq!(r.page_trimmed(), MemRegion::from_range(0x2000, 0x4000));
        assert_eq!(r.page_rounded(), MemRegion::from_range(0x1000, 0x5000));
        assert_eq!(r.pfns(), 2..4);
        assert_eq!(r.nr_pages(), 2);
        assert!(r.overlaps(&MemRegion::new(0x4000, 0x1000)));
        assert!(!r.overlaps(&MemRegion::new(0x4800, 0x1000)));
        let mut l = RegionList::<2>::new();
        l.push(MemRegion::new(5, 1)).unwrap();
        l.push(MemRegion::new(1, 1)).unwrap();
        assert_eq!(l.push(MemRegion::new(9, 1)), Err(ListFull));
        l.sort();
        assert_eq!(l.as_slice()[0].base, PhysAddr(1));
    }
}
