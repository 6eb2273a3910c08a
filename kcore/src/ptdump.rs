//! Page-table dump and W^X audit, built only from [`crate::pagewalk`] callbacks.
//!
//! [`ptdump`] is this firmware's `/sys/kernel/debug/kernel_page_tables`: it walks `[start, end)`
//! of an address space, merges consecutive leaf entries with the same level, attributes and
//! region into one [`PtdumpLine`], and hands each line to a sink (the firmware logs it; on the
//! host the line's `Display` gives Linux-like text). [`wx_audit`] reports every mapping that is
//! writable and executable; [`alias_audit`] every writable mapping of a frame that another
//! mapping makes executable or (in the kernel image) read-only.

use crate::addr::{is_aligned, VirtAddr};
use crate::layout::Region;
use crate::mm::WalkLock;
use crate::pagewalk::{
    walk_page_range_novma, Entry, Interests, PageWalkOps, WalkAction, WalkError,
};
use crate::pgtable::{AccessPerm, Attrs, DescKind, Descriptor, Level, MemType};
use crate::phys::PhysMem;
use core::convert::Infallible;
use core::fmt;

/// One line of the dump: a run of leaf entries of the same level and attributes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PtdumpLine {
    /// First VA.
    pub start: VirtAddr,
    /// End VA (exclusive).
    pub end: VirtAddr,
    /// `end - start`.
    pub size: u64,
    /// Level of the entries: 1 = 1 GiB blocks, 2 = 2 MiB blocks, 3 = 4 KiB pages.
    pub level: Level,
    /// Writable (`AP[2]` clear).
    pub writable: bool,
    /// Accessible from EL0.
    pub el0: bool,
    /// Executable at EL1.
    pub x_el1: bool,
    /// Executable at EL0.
    pub x_el0: bool,
    /// Global (nG clear).
    pub global: bool,
    /// Memory type.
    pub mem: MemType,
    /// Region of the kernel layout `start` lies in.
    pub region: Region,
    /// The full attributes.
    pub attrs: Attrs,
}

impl PtdumpLine {
    fn new(e: &Entry, attrs: Attrs) -> PtdumpLine {
        PtdumpLine {
            start: e.addr(),
            end: e.next(),
            size: e.next().0.wrapping_sub(e.addr().0),
            level: e.level(),
            writable: attrs.is_writable(),
            el0: attrs.ap.el0_access(),
            x_el1: attrs.is_executable_el1(),
            x_el0: attrs.is_executable_el0(),
            global: !attrs.ng,
            mem: attrs.mem,
            region: Region::of(e.addr()),
            attrs,
        }
    }
}

/// Writes `size` as Linux's ptdump does: the largest of G/M/K that divides it.
struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let (v, u) = if s != 0 && is_aligned(s, 1 << 30) {
            (s >> 30, "G")
        } else if s != 0 && is_aligned(s, 1 << 20) {
            (s >> 20, "M")
        } else {
            (s >> 10, "K")
        };
        let mut buf = [0u8; 24];
        let mut n = 0;
        let mut x = v;
        loop {
            buf[n] = b'0' + (x % 10) as u8;
            n += 1;
            x /= 10;
            if x == 0 {
                break;
            }
        }
        buf[..n].reverse();
        buf[n] = u.as_bytes()[0];
        let text = core::str::from_utf8(&buf[..=n]).map_err(|_| fmt::Error)?;
        f.pad(text)
    }
}

impl fmt::Display for PtdumpLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mem = match self.mem {
            MemType::Normal => "Normal",
            MemType::Device => "Device",
            MemType::Other(_) => "Other",
        };
        write!(
            f,
            "{:#018x}-{:#018x} {:>7} {:<6} {} {} {} {} {} {:<6} [{}]",
            self.start.0,
            self.end.0,
            Size(self.size),
            self.level.leaf_name(),
            if self.writable { "RW" } else { "ro" },
            if self.el0 { "USR" } else { "   " },
            if self.x_el1 { "x  " } else { "PXN" },
            if self.x_el0 { "x  " } else { "UXN" },
            if self.global { "  " } else { "NG" },
            mem,
            self.region.name(),
        )
    }
}

/// Leaf entries visited by a dump.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PtdumpCounts {
    /// 1 GiB blocks.
    pub blocks_l1: u64,
    /// 2 MiB blocks.
    pub blocks_l2: u64,
    /// 4 KiB pages.
    pub pages: u64,
    /// Lines emitted.
    pub lines: u64,
}

struct Dumper<F: FnMut(&PtdumpLine)> {
    cur: Option<PtdumpLine>,
    counts: PtdumpCounts,
    sink: F,
}

impl<F: FnMut(&PtdumpLine)> Dumper<F> {
    fn flush(&mut self) {
        if let Some(line) = self.cur.take() {
            (self.sink)(&line);
            self.counts.lines += 1;
        }
    }

    fn leaf(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
        let attrs = e.desc().attrs();
        match e.kind() {
            DescKind::Block if e.level() == Level::L1 => self.counts.blocks_l1 += 1,
            DescKind::Block => self.counts.blocks_l2 += 1,
            DescKind::Page => self.counts.pages += 1,
            _ => return Ok(WalkAction::Subtree),
        }
        let region = Region::of(e.addr());
        match &mut self.cur {
            Some(l)
                if l.end == e.addr()
                    && l.level == e.level()
                    && l.attrs == attrs
                    && l.region == region =>
            {
                l.end = e.next();
                l.size = l.end.0.wrapping_sub(l.start.0);
            }
            _ => {
                self.flush();
                self.cur = Some(PtdumpLine::new(e, attrs));
            }
        }
        Ok(WalkAction::Continue)
    }
}

impl<F: FnMut(&PtdumpLine)> PageWalkOps for Dumper<F> {
    type Output = Infallible;
    type Error = Infallible;
    const INTERESTS: Interests = Interests::PUD.union(Interests::PMD).union(Interests::PTE);

    fn pud_entry(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
        self.leaf(e)
    }
    fn pmd_entry(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
        self.leaf(e)
    }
    fn pte_entry(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
        self.leaf(e)
    }
}

/// Dumps the mappings of `[start, end)` of the address space locked by `guard`: each merged
/// run of entries goes to `sink`; returns the counts.
pub fn ptdump<L: WalkLock, M: PhysMem>(
    guard: &L,
    mem: &M,
    start: VirtAddr,
    end: VirtAddr,
    sink: impl FnMut(&PtdumpLine),
) -> Result<PtdumpCounts, WalkError<Infallible>> {
    let mut d = Dumper { cur: None, counts: PtdumpCounts::default(), sink };
    walk_page_range_novma(guard, mem, start, end, &mut d)?;
    d.flush();
    Ok(d.counts)
}

/// A writable and executable mapping found by [`wx_audit`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct WxOffender {
    /// First VA of the entry (clipped to the audited range).
    pub va: VirtAddr,
    /// Level of the entry.
    pub level: Level,
    /// The descriptor.
    pub desc: Descriptor,
    /// Executable at EL1.
    pub x_el1: bool,
    /// Executable at EL0.
    pub x_el0: bool,
}

/// How many offenders a [`WxReport`] keeps.
pub const WX_MAX_REPORTED: usize = 8;

/// The result of a [`wx_audit`].
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct WxReport {
    /// Number of W+X leaf entries found.
    pub count: u64,
    /// The first [`WX_MAX_REPORTED`] of them.
    pub first: [Option<WxOffender>; WX_MAX_REPORTED],
}

impl WxReport {
    /// The offenders kept, in walk order.
    pub fn offenders(&self) -> impl Iterator<Item = &WxOffender> {
        self.first.iter().flatten()
    }
    /// No W+X mapping found?
    pub fn is_clean(&self) -> bool {
        self.count == 0
    }
}

/// Is a mapping with `attrs` writable and executable (at EL1 or at EL0)?
pub const fn is_wx(attrs: &Attrs) -> bool {
    let w_el1 = attrs.is_writable();
    let w_el0 = matches!(attrs.ap, AccessPerm::RwEl0El1);
    (w_el1 && attrs.is_executable_el1()) || (w_el0 && attrs.is_executable_el0())
}

struct WxAudit {
    report: WxReport,
}

impl WxAudit {
    fn leaf(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
        if !e.kind().is_leaf() {
            return Ok(WalkAction::Subtree);
        }
        let attrs = e.desc().attrs();
        if is_wx(&attrs) {
            let n = self.report.count as usize;
            if n < WX_MAX_REPORTED {
                self.report.first[n] = Some(WxOffender {
                    va: e.addr(),
                    level: e.level(),
                    desc: e.desc(),
                    x_el1: attrs.is_executable_el1(),
                    x_el0: attrs.is_executable_el0(),
                });
            }
            self.report.count += 1;
        }
        Ok(WalkAction::Continue)
    }
}

impl PageWalkOps for WxAudit {
    type Output = Infallible;
    type Error = Infallible;
    const INTERESTS: Interests = Interests::PUD.union(Interests::PMD).union(Interests::PTE);

    fn pud_entry(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
        self.leaf(e)
    }
    fn pmd_entry(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
        self.leaf(e)
    }
    fn pte_entry(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
        self.leaf(e)
    }
}

/// Reports every leaf entry in `[start, end)` that is writable and executable at EL1 or EL0.
pub fn wx_audit<L: WalkLock, M: PhysMem>(
    guard: &L,
    mem: &M,
    start: VirtAddr,
    end: VirtAddr,
) -> Result<WxReport, WalkError<Infallible>> {
    let mut a = WxAudit { report: WxReport::default() };
    walk_page_range_novma(guard, mem, start, end, &mut a)?;
    Ok(a.report)
}

/// Physical ranges an [`alias_audit`] can track as protected (after merging neighbours).
pub const ALIAS_MAX_PROTECTED: usize = 32;

/// A writable mapping of a frame that another mapping makes executable or read-only.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AliasOffender {
    /// VA of the writable leaf entry.
    pub va: VirtAddr,
    /// Its level.
    pub level: Level,
    /// The descriptor.
    pub desc: Descriptor,
    /// The first protected physical address it maps.
    pub pa: crate::addr::PhysAddr,
}

/// The result of an [`alias_audit`].
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AliasReport {
    /// Bytes of physical memory protected (executable somewhere, or read-only in the image).
    pub protected_bytes: u64,
    /// Number of writable leaf entries mapping protected memory.
    pub count: u64,
    /// The first [`WX_MAX_REPORTED`] of them.
    pub first: [Option<AliasOffender>; WX_MAX_REPORTED],
}

impl AliasReport {
    /// The offenders kept, in walk order.
    pub fn offenders(&self) -> impl Iterator<Item = &AliasOffender> {
        self.first.iter().flatten()
    }
}

/// Why an alias audit could not finish.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AliasAuditError {
    /// The walk failed.
    Walk(WalkError<Infallible>),
    /// More than [`ALIAS_MAX_PROTECTED`] separate protected ranges.
    TooManyRanges,
}

/// Pass 1: the physical ranges to protect.
struct Protected {
    image: (VirtAddr, VirtAddr),
    ranges: [(u64, u64); ALIAS_MAX_PROTECTED],
    n: usize,
    overflow: bool,
}

impl Protected {
    fn add(&mut self, start: u64, end: u64) {
        for r in &mut self.ranges[..self.n] {
            if start <= r.1 && r.0 <= end {
                r.0 = r.0.min(start);
                r.1 = r.1.max(end);
                return;
            }
        }
        if self.n == ALIAS_MAX_PROTECTED {
            self.overflow = true;
            return;
        }
        self.ranges[self.n] = (start, end);
        self.n += 1;
    }

    fn overlap(&self, start: u64, end: u64) -> Option<u64> {
        self.ranges[..self.n].iter().find(|r| start < r.1 && r.0 < end).map(|r| r.0.max(start))
    }

    fn leaf(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
        if !e.kind().is_leaf() {
            return Ok(WalkAction::Subtree);
        }
        let attrs = e.desc().attrs();
        let in_image = e.addr().0 >= self.image.0 .0 && e.addr().0 < self.image.1 .0;
        let protect = attrs.is_executable_el1()
            || attrs.is_executable_el0()
            || (in_image && !attrs.is_writable());
        if protect {
            let pa = e.desc().output_address(e.level()).0;
            self.add(pa, pa + e.level().size());
        }
        Ok(WalkAction::Continue)
    }
}

/// Pass 2: writable leaves over protected ranges.
struct AliasCheck<'a> {
    protected: &'a Protected,
    report: AliasReport,
}

impl AliasCheck<'_> {
    fn leaf(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
        if !e.kind().is_leaf() {
            return Ok(WalkAction::Subtree);
        }
        let attrs = e.desc().attrs();
        let w_el0 = matches!(attrs.ap, AccessPerm::RwEl0El1);
        if !attrs.is_writable() && !w_el0 {
            return Ok(WalkAction::Continue);
        }
        let pa = e.desc().output_address(e.level()).0;
        if let Some(hit) = self.protected.overlap(pa, pa + e.level().size()) {
            let n = self.report.count as usize;
            if n < WX_MAX_REPORTED {
                self.report.first[n] = Some(AliasOffender {
                    va: e.addr(),
                    level: e.level(),
                    desc: e.desc(),
                    pa: crate::addr::PhysAddr(hit),
                });
            }
            self.report.count += 1;
        }
        Ok(WalkAction::Continue)
    }
}

macro_rules! leaf_ops {
    ($t:ty) => {
        impl PageWalkOps for $t {
            type Output = Infallible;
            type Error = Infallible;
            const INTERESTS: Interests = Interests::PUD.union(Interests::PMD).union(Interests::PTE);
            fn pud_entry(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
                self.leaf(e)
            }
            fn pmd_entry(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
                self.leaf(e)
            }
            fn pte_entry(&mut self, e: &Entry) -> Result<WalkAction<Infallible>, Infallible> {
                self.leaf(e)
            }
        }
    };
}
leaf_ops!(Protected);
leaf_ops!(AliasCheck<'_>);

/// The W^X audit extended to aliases (Linux: `mark_linear_text_alias_ro()` is what keeps it
/// clean): a frame that one leaf entry in `[start, end)` maps executable (at EL1 or EL0), or
/// that `image` (the kernel image's VA range) maps read-only, must not be writable through any
/// other leaf. Reports every writable leaf that maps such a frame.
pub fn alias_audit<L: WalkLock, M: PhysMem>(
    guard: &L,
    mem: &M,
    start: VirtAddr,
    end: VirtAddr,
    image: (VirtAddr, VirtAddr),
) -> Result<AliasReport, AliasAuditError> {
    let mut p = Protected { image, ranges: [(0, 0); ALIAS_MAX_PROTECTED], n: 0, overflow: false };
    walk_page_range_novma(guard, mem, start, end, &mut p).map_err(AliasAuditError::Walk)?;
    if p.overflow {
        return Err(AliasAuditError::TooManyRanges);
    }
    let protected_bytes = p.ranges[..p.n].iter().map(|r| r.1 - r.0).sum();
    let mut c =
        AliasCheck { protected: &p, report: AliasReport { protected_bytes, ..Default::default() } };
    walk_page_range_novma(guard, mem, start, end, &mut c).map_err(AliasAuditError::Walk)?;
    Ok(c.report)
}
