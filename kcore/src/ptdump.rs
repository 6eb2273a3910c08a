//! Page-table dump and W^X audit, built only from [`crate::pagewalk`] callbacks.
//!
//! [`ptdump`] is this firmware's `/sys/kernel/debug/kernel_page_tables`: it walks `[start, end)`
//! of an address space, merges consecutive leaf entries with the same level, attributes and
//! region into one [`PtdumpLine`], and hands each line to a sink (the firmware logs it; on the
//! host the line's `Display` gives Linux-like text). [`wx_audit`] reports every mapping that is
//! writable and executable.

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
