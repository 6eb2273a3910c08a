//! The break-before-make checker: is a sequence of entry writes, barriers and TLBIs safe?
//!
//! Linux counterpart: `pgattr_change_is_safe()` and `__check_safe_pte_update()` in
//! `arch/arm64/mm/mmu.c` / `arch/arm64/include/asm/pgtable.h`, which warn when a live entry
//! changes in a way that needs break-before-make; the rule itself is ARM ARM (DDI 0487) D8.16.1
//! "Using break-before-make when updating translation table entries" and "TLB maintenance
//! requirements on changing translation table entries".
//!
//! Two forms:
//! - `check_break_before_make` and [`check_published`] judge a whole recorded sequence
//!   (`RecordingMmu`, host tests);
//! - [`AuditMmu`] is a `no_std` wrapper around any [`MmuOps`] backend (the firmware wraps
//!   `HwMmu` in test builds): it forwards every operation and checks each live-entry write
//!   online, with fixed-size state, recording a count and the first [`BbmViolation`] instead
//!   of panicking. QEMU never raises a TLB conflict abort, so without it a broken sequence
//!   passes silently on the target.

use crate::addr::VirtAddr;
use crate::pgtable::{DescKind, Descriptor, Level};
use crate::tlb::{MmuEvent, MmuOps, MmuStats, TlbiKind};

/// The step of break-before-make a sequence lacks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BbmMissing {
    /// The valid entry was overwritten directly, without an invalid entry in between.
    InvalidWrite,
    /// No DSB between the invalid write and the TLBI (or the new write).
    DsbAfterInvalid,
    /// No TLBI covering the old entry after that DSB.
    Tlbi,
    /// No DSB ISH after the TLBI, before the new write.
    DsbIshAfterTlbi,
    /// A valid entry was written and no DSB followed before the end of the sequence.
    DsbAfterWrite,
    /// A valid entry was changed in place (permissions, nG→... that need no break) and no DSB,
    /// TLBI covering it and DSB ISH followed: the old permissions stay in the TLBs.
    TlbiAfterChange,
    /// The auditor could not track this break (its fixed-size table was full): unchecked.
    Untracked,
}

/// A break-before-make violation found by `check_break_before_make`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BbmViolation {
    /// Index of the offending write in the event list.
    pub event: usize,
    /// The entry's address.
    pub slot: usize,
    /// First VA the entry translates.
    pub va: VirtAddr,
    /// The entry's level.
    pub level: Level,
    /// The valid descriptor being replaced.
    pub old: Descriptor,
    /// The valid descriptor written.
    pub new: Descriptor,
    /// What was missing.
    pub missing: BbmMissing,
}

/// Software bits of a descriptor (`[58:55]`): ignored by the hardware, so changing them needs
/// no TLB maintenance.
pub const SW_BITS: u64 = 0xf << 55;

/// Does replacing valid `old` by valid `new` at `level` require break-before-make?
///
/// Per the ARM ARM ("Using break-before-make when updating translation table entries") it does
/// when the output address (or next-level table address) changes, when the kind changes
/// (block <-> table: the size of the translation changes), when the memory type or the
/// shareability changes, and when a non-global entry becomes global (nG 1 → 0: the old
/// non-global TLB entries and the new global one could both match; Linux's
/// `pgattr_change_is_safe()` refuses it too). Changes of permissions (AP, PXN, UXN), of the
/// access flag and G → nG with the same output address are allowed in place, but need a TLBI
/// afterwards ([`needs_tlbi`]).
pub fn requires_bbm(old: Descriptor, new: Descriptor, level: Level) -> bool {
    let (ko, kn) = (old.kind(level), new.kind(level));
    if ko == DescKind::Invalid || kn == DescKind::Invalid {
        return false;
    }
    if ko != kn {
        return true;
    }
    match ko {
        DescKind::Table => old.table_address() != new.table_address(),
        _ => {
            let (ao, an) = (old.attrs(), new.attrs());
            old.output_address(level) != new.output_address(level)
                || ao.mem != an.mem
                || ao.sh != an.sh
                || (ao.ng && !an.ng)
        }
    }
}

/// Does the in-place change of valid `old` to valid `new` (one [`requires_bbm`] allows) need a
/// TLBI before it is in effect? Yes unless only software bits differ: TLBs may hold the old
/// permissions (ARM ARM "TLB maintenance requirements on changing translation table entries").
pub fn needs_tlbi(old: Descriptor, new: Descriptor, level: Level) -> bool {
    old.kind(level) != DescKind::Invalid
        && new.kind(level) != DescKind::Invalid
        && !requires_bbm(old, new, level)
        && (old.bits() ^ new.bits()) & !SW_BITS != 0
}

#[cfg(any(test, feature = "std"))]
#[derive(Clone, Copy)]
struct Break {
    va: VirtAddr,
    level: Level,
    old: Descriptor,
    /// Every page entry under an old level-2 table entry was seen written invalid (and not
    /// valid again), its own break complete, when the table entry was broken.
    leaves_clear: bool,
    dsb: bool,
    /// A TLBI was seen before the DSB (too early to count).
    early_tlbi: bool,
    tlbi: bool,
}

#[cfg(any(test, feature = "std"))]
impl Break {
    fn in_span(&self, va: VirtAddr) -> bool {
        va.0.wrapping_sub(self.va.0) < self.level.size()
    }
}

/// Checks that every valid -> valid replacement in `events` that [`requires_bbm`] follows
/// break-before-make: invalid write, DSB (ISH or ISHST), a TLBI covering the old entry, DSB ISH,
/// then the new write.
///
/// A TLBI covers an old block or page entry if it is by VA inside the entry's span (a block's
/// TLB entry matches any VA inside it), `VMALLE1IS`, or `ASIDE1IS` for a non-global entry
/// (`ASIDE1IS` leaves global entries alone). An old *table* entry may have leaf entries cached
/// for any page beneath it: it is covered by `VMALLE1IS`, by by-VA TLBIs of every 4 KiB page of
/// its span, or — for a level-2 table — by one by-VA TLBI inside its span if the recording
/// knows every one of its 512 page entries is invalid (breaks complete) when the table entry is
/// broken: the walk-cache entry is then all that is left. A page entry is known invalid if the
/// recording saw it written invalid, or if the recording saw its table linked (invalid →
/// table) and no valid write to it since — a table linked into an entry the recording saw
/// holding a block is a split, pre-filled with the block's pages, and is not assumed empty.
/// Leaves mapped before the recording started are unknown, hence never assumed clear. By-VA TLBIs are not matched
/// against the entry's ASID (the recorder does not know it).
///
/// Valid → valid changes that [`needs_tlbi`] (permissions, G → nG) must be followed by a DSB, a
/// TLBI covering the entry and a DSB ISH before the end of the sequence.
#[cfg(any(test, feature = "std"))]
pub fn check_break_before_make(events: &[MmuEvent]) -> Result<(), BbmViolation> {
    extern crate std;
    use std::collections::{BTreeMap, BTreeSet};

    // Entries (level, VA >> level shift) known invalid: written invalid, or under a table
    // linked empty.
    let mut invalidated: BTreeSet<(u8, u64)> = BTreeSet::new();
    // The entries of level `child` under the table entry at `level` for `va`: (first, count).
    let children = |va: VirtAddr, level: Level, child: Level| {
        let sh = child.size().trailing_zeros();
        (va.0 >> sh, level.size() >> sh)
    };
    // Level-2 slots the recording saw holding a block (a table linked there is a split).
    let mut held_block: BTreeSet<usize> = BTreeSet::new();
    // In-place changes waiting for their TLBI: slot -> (event, write, dsb seen, tlbi seen).
    let mut changes: BTreeMap<usize, (usize, MmuEvent, bool, bool)> = BTreeMap::new();
    // Breaks not yet complete (invalid written, TLBI + DSB ISH still to come).
    let mut open: BTreeMap<usize, Break> = BTreeMap::new();
    // The open breaks by (level, first VA, slot), to find those a by-VA TLBI hits.
    let mut by_span: BTreeSet<(u8, u64, usize)> = BTreeSet::new();
    // Per open table break, the distinct pages by-VA TLBIs have covered so far.
    let mut pages: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        match *e {
            MmuEvent::Write { slot, va, level, old, new } => {
                let va = va.align_down(level.size());
                let old_valid = old.kind(level) != DescKind::Invalid;
                let new_valid = new.kind(level) != DescKind::Invalid;
                match (old_valid, new_valid) {
                    (true, true) => {
                        if needs_tlbi(old, new, level) {
                            changes.insert(slot, (i, *e, false, false));
                        }
                        if requires_bbm(old, new, level) {
                            return Err(BbmViolation {
                                event: i,
                                slot,
                                va,
                                level,
                                old,
                                new,
                                missing: BbmMissing::InvalidWrite,
                            });
                        }
                    }
                    (true, false) => {
                        let mut b = Break {
                            va,
                            level,
                            old,
                            leaves_clear: false,
                            dsb: false,
                            early_tlbi: false,
                            tlbi: false,
                        };
                        if let (DescKind::Table, Some(child)) = (old.kind(level), level.next()) {
                            let (first, n) = children(va, level, child);
                            let known = (child as u8, first)..(child as u8, first + n);
                            b.leaves_clear = invalidated.range(known).count() as u64 == n
                                && open.values().all(|x| !(x.level > level && b.in_span(x.va)));
                        }
                        if let Some(prev) = open.insert(slot, b) {
                            by_span.remove(&(prev.level as u8, prev.va.0, slot));
                        }
                        by_span.insert((level as u8, va.0, slot));
                        pages.remove(&slot);
                    }
                    (false, true) => {
                        if let Some(b) = open.remove(&slot) {
                            by_span.remove(&(b.level as u8, b.va.0, slot));
                            pages.remove(&slot);
                            if requires_bbm(b.old, new, level) {
                                let missing = if !b.dsb || (!b.tlbi && b.early_tlbi) {
                                    BbmMissing::DsbAfterInvalid
                                } else if !b.tlbi {
                                    BbmMissing::Tlbi
                                } else {
                                    BbmMissing::DsbIshAfterTlbi
                                };
                                return Err(BbmViolation {
                                    event: i,
                                    slot,
                                    va,
                                    level,
                                    old: b.old,
                                    new,
                                    missing,
                                });
                            }
                        }
                    }
                    (false, false) => {}
                }
                match (old.kind(level), new.kind(level)) {
                    (DescKind::Block, _) | (_, DescKind::Block) => {
                        held_block.insert(slot);
                    }
                    (DescKind::Invalid, DescKind::Table) if !held_block.contains(&slot) => {
                        if let Some(child) = level.next() {
                            let (first, n) = children(va, level, child);
                            invalidated.extend((first..first + n).map(|k| (child as u8, k)));
                        }
                    }
                    _ => {}
                }
                let key = (level as u8, va.0 >> level.size().trailing_zeros());
                if new_valid {
                    invalidated.remove(&key);
                } else {
                    invalidated.insert(key);
                }
            }
            MmuEvent::DsbIshst => {
                for b in open.values_mut() {
                    b.dsb = true;
                }
                for c in changes.values_mut() {
                    c.2 = true;
                }
            }
            MmuEvent::DsbIsh => {
                changes.retain(|_, c| !c.3);
                for c in changes.values_mut() {
                    c.2 = true;
                }
                // Breaks whose TLBI is done are complete: forget them.
                open.retain(|&slot, b| {
                    if b.tlbi {
                        by_span.remove(&(b.level as u8, b.va.0, slot));
                    }
                    !b.tlbi
                });
                for b in open.values_mut() {
                    b.dsb = true;
                }
                pages.retain(|s, _| open.contains_key(s));
            }
            MmuEvent::Isb => {}
            MmuEvent::Tlbi { kind, va: tva } => {
                for c in changes.values_mut() {
                    if let MmuEvent::Write { va, level, old, .. } = c.1 {
                        let va = va.align_down(level.size());
                        let hit = match kind {
                            TlbiKind::VaAllAsids | TlbiKind::Va { .. } => {
                                tva.0.wrapping_sub(va.0) < level.size()
                            }
                            _ => kind.covers(tva, va, old.attrs().ng),
                        };
                        c.3 |= c.2 && hit;
                    }
                }
                let mut note = |slot: usize, b: &mut Break| {
                    if !b.dsb {
                        b.early_tlbi = true;
                        return;
                    }
                    if b.tlbi {
                        return;
                    }
                    let by_va_hit = matches!(kind, TlbiKind::VaAllAsids | TlbiKind::Va { .. })
                        && b.in_span(tva);
                    if b.old.kind(b.level) == DescKind::Table {
                        if kind == TlbiKind::All || (by_va_hit && b.leaves_clear) {
                            b.tlbi = true;
                        } else if by_va_hit {
                            let set = pages.entry(slot).or_default();
                            set.insert(tva.0 >> 12);
                            if set.len() as u64 == b.level.size() >> 12 {
                                b.tlbi = true;
                            }
                        }
                    } else if by_va_hit || kind.covers(tva, b.va, b.old.attrs().ng) {
                        b.tlbi = true;
                    }
                };
                match kind {
                    TlbiKind::VaAllAsids | TlbiKind::Va { .. } => {
                        // Only the open breaks whose span holds `tva`: one candidate start
                        // per level.
                        for l in Level::ALL {
                            let base = tva.0 & !(l.size() - 1);
                            let hits: std::vec::Vec<usize> = by_span
                                .range((l as u8, base, 0)..=(l as u8, base, usize::MAX))
                                .map(|&(_, _, slot)| slot)
                                .collect();
                            for slot in hits {
                                if let Some(b) = open.get_mut(&slot) {
                                    note(slot, b);
                                }
                            }
                        }
                    }
                    _ => {
                        for (&slot, b) in open.iter_mut() {
                            note(slot, b);
                        }
                    }
                }
            }
        }
    }
    match changes.values().min_by_key(|c| c.0) {
        Some(&(i, MmuEvent::Write { slot, va, level, old, new }, _, _)) => Err(BbmViolation {
            event: i,
            slot,
            va: va.align_down(level.size()),
            level,
            old,
            new,
            missing: BbmMissing::TlbiAfterChange,
        }),
        _ => Ok(()),
    }
}

/// Checks that every store of a valid entry in `events` is followed by a DSB before the end of
/// the sequence (so the table walkers are guaranteed to see it).
pub fn check_published(events: &[MmuEvent]) -> Result<(), BbmViolation> {
    let mut pending: Option<(usize, MmuEvent)> = None;
    for (i, e) in events.iter().enumerate() {
        match *e {
            MmuEvent::Write { new, level, .. }
                if new.kind(level) != DescKind::Invalid && pending.is_none() =>
            {
                pending = Some((i, *e));
            }
            MmuEvent::DsbIsh | MmuEvent::DsbIshst => pending = None,
            _ => {}
        }
    }
    match pending {
        Some((i, MmuEvent::Write { slot, va, level, old, new })) => Err(BbmViolation {
            event: i,
            slot,
            va,
            level,
            old,
            new,
            missing: BbmMissing::DsbAfterWrite,
        }),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// The online auditor
// ---------------------------------------------------------------------------------------------

/// One live-entry change [`AuditMmu`] is following: a break (valid → invalid, waiting for its
/// DSB, TLBI and DSB ISH) or an in-place change waiting for its TLBI.
#[derive(Clone, Copy, Debug)]
struct Track {
    slot: usize,
    va: VirtAddr,
    level: Level,
    old: Descriptor,
    new: Descriptor,
    event: usize,
    used: bool,
    /// An in-place change ([`needs_tlbi`]) rather than a break.
    change: bool,
    dsb: bool,
    /// A covering TLBI came before the DSB (too early to count).
    early: bool,
    tlbi: bool,
}

impl Track {
    const EMPTY: Track = Track {
        slot: 0,
        va: VirtAddr(0),
        level: Level::L3,
        old: Descriptor::INVALID,
        new: Descriptor::INVALID,
        event: 0,
        used: false,
        change: false,
        dsb: false,
        early: false,
        tlbi: false,
    };

    /// Does a TLBI of `kind` (by-VA operand `tva`) remove the TLB entries of the old mapping?
    /// A block or page entry: by VA inside its span, `VMALLE1IS`, or `ASIDE1IS` if it was
    /// non-global. A table entry: only `VMALLE1IS` (leaves cached beneath it may be for any of
    /// its pages, and the auditor does not know which were ever valid).
    fn covered_by(&self, kind: TlbiKind, tva: VirtAddr) -> bool {
        if self.old.kind(self.level) == DescKind::Table {
            return kind == TlbiKind::All;
        }
        match kind {
            TlbiKind::VaAllAsids | TlbiKind::Va { .. } => {
                tva.0.wrapping_sub(self.va.0) < self.level.size()
            }
            _ => kind.covers(tva, self.va, self.old.attrs().ng),
        }
    }

    fn violation(&self, event: usize, new: Descriptor, missing: BbmMissing) -> BbmViolation {
        BbmViolation {
            event,
            slot: self.slot,
            va: self.va,
            level: self.level,
            old: self.old,
            new,
            missing,
        }
    }
}

/// A `no_std` [`MmuOps`] wrapper that forwards every operation to `O` and checks each write
/// to a live entry as it happens, with fixed-size state (`N` changes followed at once).
///
/// What it requires (ARM ARM D8.16.1; the same rules as `check_break_before_make`):
/// - a valid → valid write that [`requires_bbm`] (new output address, block size, memory type,
///   shareability, or nG → G) is a violation ([`BbmMissing::InvalidWrite`]);
/// - after a valid → invalid write, the next valid write to that entry, if it
///   [`requires_bbm`] against the old one, must come after a DSB, a TLBI covering the old
///   entry and a DSB ISH, in that order (an old table entry needs `TLBI VMALLE1IS`);
/// - a valid → valid change that [`needs_tlbi`] (permissions, G → nG) must be followed by a
///   DSB, a covering TLBI and a DSB ISH before [`check`](Self::check) is called;
/// - every valid write must be followed by a DSB before [`check`](Self::check).
///
/// Violations are counted and the first is kept; nothing panics. A change that does not fit
/// in the table is counted as a violation ([`BbmMissing::Untracked`]): unchecked is not safe.
#[derive(Debug)]
pub struct AuditMmu<O: MmuOps, const N: usize = 64> {
    inner: O,
    tracks: [Track; N],
    events: usize,
    violations: u64,
    first: Option<BbmViolation>,
    /// The first valid write not yet followed by a DSB.
    unpublished: Option<(usize, usize, VirtAddr, Level, Descriptor, Descriptor)>,
}

impl<O: MmuOps, const N: usize> AuditMmu<O, N> {
    /// Audits `inner`.
    pub const fn new(inner: O) -> Self {
        AuditMmu {
            inner,
            tracks: [Track::EMPTY; N],
            events: 0,
            violations: 0,
            first: None,
            unpublished: None,
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &O {
        &self.inner
    }

    /// The wrapped backend, mutably.
    pub fn inner_mut(&mut self) -> &mut O {
        &mut self.inner
    }

    /// Violations found so far.
    pub fn violations(&self) -> u64 {
        self.violations
    }

    /// The first violation found.
    pub fn first_violation(&self) -> Option<BbmViolation> {
        self.first
    }

    /// Operations seen (the `event` index of a [`BbmViolation`] counts these).
    pub fn operations(&self) -> usize {
        self.events
    }

    /// Changes being followed now (breaks not complete, changes without their TLBI).
    pub fn open(&self) -> usize {
        self.tracks.iter().filter(|t| t.used).count()
    }

    /// End of a sequence: counts the in-place changes still without their TLBI and a valid
    /// write not followed by a DSB as violations (once each), then returns the first violation
    /// found so far, if any. Breaks still open (entries left invalid) are fine.
    pub fn check(&mut self) -> Result<(), BbmViolation> {
        for i in 0..N {
            let t = self.tracks[i];
            if t.used && t.change {
                self.tracks[i].used = false;
                self.record(t.violation(t.event, t.new, BbmMissing::TlbiAfterChange));
            }
        }
        if let Some((event, slot, va, level, old, new)) = self.unpublished.take() {
            let missing = BbmMissing::DsbAfterWrite;
            self.record(BbmViolation { event, slot, va, level, old, new, missing });
        }
        match self.first {
            Some(v) => Err(v),
            None => Ok(()),
        }
    }

    /// Forgets what has been found (counters and open changes), keeping the backend.
    pub fn reset(&mut self) {
        self.tracks = [Track::EMPTY; N];
        self.violations = 0;
        self.first = None;
        self.unpublished = None;
    }

    fn record(&mut self, v: BbmViolation) {
        self.violations += 1;
        if self.first.is_none() {
            self.first = Some(v);
        }
    }

    fn find(&self, slot: usize) -> Option<usize> {
        self.tracks.iter().position(|t| t.used && t.slot == slot)
    }

    fn track(&mut self, t: Track) {
        let at = self.find(t.slot).or_else(|| self.tracks.iter().position(|t| !t.used));
        match at {
            Some(i) => self.tracks[i] = t,
            None => self.record(t.violation(t.event, t.new, BbmMissing::Untracked)),
        }
    }

    fn next_event(&mut self) -> usize {
        let e = self.events;
        self.events += 1;
        e
    }

    fn on_dsb(&mut self, ish: bool) {
        self.next_event();
        for t in self.tracks.iter_mut().filter(|t| t.used) {
            if ish && t.tlbi {
                // Break or change complete: the TLBI has finished everywhere.
                t.used = false;
            } else {
                t.dsb = true;
            }
        }
        self.unpublished = None;
    }

    fn on_tlbi(&mut self, kind: TlbiKind, va: VirtAddr) {
        self.next_event();
        for t in self.tracks.iter_mut().filter(|t| t.used) {
            if t.dsb {
                t.tlbi |= t.covered_by(kind, va);
            } else {
                t.early |= t.covered_by(kind, va);
            }
        }
    }
}

impl<O: MmuOps, const N: usize> MmuOps for AuditMmu<O, N> {
    unsafe fn write_entry(&mut self, slot: *mut u64, va: VirtAddr, level: Level, new: Descriptor) {
        let event = self.next_event();
        // SAFETY: the caller guarantees `slot` is a readable, aligned entry (write_entry's
        // contract).
        let old = unsafe { crate::tlb::read_entry(slot) };
        let (s, va) = (slot as usize, va.align_down(level.size()));
        let t = Track { slot: s, va, level, old, new, event, used: true, ..Track::EMPTY };
        let (old_valid, new_valid) =
            (old.kind(level) != DescKind::Invalid, new.kind(level) != DescKind::Invalid);
        match (old_valid, new_valid) {
            (true, true) if requires_bbm(old, new, level) => {
                self.record(t.violation(event, new, BbmMissing::InvalidWrite));
            }
            (true, true) if needs_tlbi(old, new, level) => self.track(Track { change: true, ..t }),
            (true, false) => self.track(t),
            (false, true) => {
                if let Some(i) = self.find(s) {
                    let b = self.tracks[i];
                    self.tracks[i].used = false;
                    if !b.change && requires_bbm(b.old, new, level) {
                        let missing = if !b.dsb || (!b.tlbi && b.early) {
                            BbmMissing::DsbAfterInvalid
                        } else if !b.tlbi {
                            BbmMissing::Tlbi
                        } else {
                            BbmMissing::DsbIshAfterTlbi
                        };
                        self.record(b.violation(event, new, missing));
                    }
                }
            }
            _ => {}
        }
        if new_valid && self.unpublished.is_none() {
            self.unpublished = Some((event, s, va, level, old, new));
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.inner.write_entry(slot, va, level, new) };
    }
    fn dsb_ishst(&mut self) {
        self.on_dsb(false);
        self.inner.dsb_ishst();
    }
    fn dsb_ish(&mut self) {
        self.on_dsb(true);
        self.inner.dsb_ish();
    }
    fn isb(&mut self) {
        self.next_event();
        self.inner.isb();
    }
    fn tlbi_vaae1is(&mut self, va: VirtAddr) {
        self.on_tlbi(TlbiKind::VaAllAsids, va);
        self.inner.tlbi_vaae1is(va);
    }
    fn tlbi_vae1is(&mut self, va: VirtAddr, asid: u16) {
        self.on_tlbi(TlbiKind::Va { asid }, va);
        self.inner.tlbi_vae1is(va, asid);
    }
    fn tlbi_aside1is(&mut self, asid: u16) {
        self.on_tlbi(TlbiKind::Asid { asid }, VirtAddr(0));
        self.inner.tlbi_aside1is(asid);
    }
    fn tlbi_vmalle1is(&mut self) {
        self.on_tlbi(TlbiKind::All, VirtAddr(0));
        self.inner.tlbi_vmalle1is();
    }
    fn stats(&self) -> MmuStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PhysAddr;
    use crate::pgtable::Attrs;
    use crate::tlb::{break_before_make, MmuStats, RecordingMmu, TlbScope};

    const VA: VirtAddr = VirtAddr(0xFFFF_FC00_0020_0000);

    fn block(pa: u64) -> Descriptor {
        Descriptor::leaf(Level::L2, PhysAddr(pa), Attrs::kernel_data()).unwrap()
    }
    fn table(pa: u64) -> Descriptor {
        Descriptor::table(Level::L2, PhysAddr(pa)).unwrap()
    }
    fn w(old: Descriptor, new: Descriptor) -> MmuEvent {
        MmuEvent::Write { slot: 0x1000, va: VA, level: Level::L2, old, new }
    }
    fn tlbi(va: VirtAddr) -> MmuEvent {
        MmuEvent::Tlbi { kind: TlbiKind::VaAllAsids, va }
    }

    fn good_split() -> std::vec::Vec<MmuEvent> {
        std::vec![
            w(block(0x4000_0000), Descriptor::INVALID),
            MmuEvent::DsbIshst,
            tlbi(VA + 0x3000),
            MmuEvent::DsbIsh,
            w(Descriptor::INVALID, table(0x8000)),
            MmuEvent::DsbIshst,
            MmuEvent::Isb,
        ]
    }

    #[test]
    fn accepts_break_before_make() {
        assert_eq!(check_break_before_make(&good_split()), Ok(()));
        assert_eq!(check_published(&good_split()), Ok(()));
    }

    #[test]
    fn rejects_missing_steps() {
        let mut no_tlbi = good_split();
        no_tlbi.remove(2);
        assert_eq!(check_break_before_make(&no_tlbi).unwrap_err().missing, BbmMissing::Tlbi);
        let mut no_dsb = good_split();
        no_dsb.remove(1);
        assert_eq!(
            check_break_before_make(&no_dsb).unwrap_err().missing,
            BbmMissing::DsbAfterInvalid
        );
        let mut no_dsb_ish = good_split();
        no_dsb_ish.remove(3);
        assert_eq!(
            check_break_before_make(&no_dsb_ish).unwrap_err().missing,
            BbmMissing::DsbIshAfterTlbi
        );
        let direct = [w(block(0x4000_0000), table(0x8000))];
        let v = check_break_before_make(&direct).unwrap_err();
        assert_eq!(v.missing, BbmMissing::InvalidWrite);
        assert_eq!(v.old, block(0x4000_0000));
        // A TLBI of a VA outside the block does not count.
        let mut wrong_va = good_split();
        wrong_va[2] = tlbi(VA + (2 << 20));
        assert_eq!(check_break_before_make(&wrong_va).unwrap_err().missing, BbmMissing::Tlbi);
        // TLBI before the DSB does not count.
        let early = [
            w(block(0x4000_0000), Descriptor::INVALID),
            tlbi(VA),
            MmuEvent::DsbIshst,
            MmuEvent::DsbIsh,
            w(Descriptor::INVALID, table(0x8000)),
        ];
        assert_eq!(
            check_break_before_make(&early).unwrap_err().missing,
            BbmMissing::DsbAfterInvalid
        );
        // ASIDE1IS leaves global entries in the TLB.
        let mut asid = good_split();
        asid[2] = MmuEvent::Tlbi { kind: TlbiKind::Asid { asid: 3 }, va: VirtAddr(0) };
        assert!(check_break_before_make(&asid).is_err());
    }

    #[test]
    fn permission_changes_need_no_break_but_a_tlbi() {
        let ro = block(0x4000_0000).with_attrs(Attrs::kernel_rodata());
        // Gap closed: a permission change with no TLBI leaves the old permissions in the TLBs.
        assert_eq!(
            check_break_before_make(&[w(block(0x4000_0000), ro)]).unwrap_err().missing,
            BbmMissing::TlbiAfterChange
        );
        let with_tlbi =
            [w(block(0x4000_0000), ro), MmuEvent::DsbIshst, tlbi(VA + 0x1000), MmuEvent::DsbIsh];
        assert_eq!(check_break_before_make(&with_tlbi), Ok(()));
        // The TLBI must come after a DSB (the walkers must see the new entry first).
        let early = [w(block(0x4000_0000), ro), tlbi(VA), MmuEvent::DsbIsh];
        assert!(check_break_before_make(&early).is_err());
        // Software bits alone need nothing.
        let sw = Descriptor(block(0x4000_0000).bits() | (1 << 56));
        assert_eq!(check_break_before_make(&[w(block(0x4000_0000), sw)]), Ok(()));
        // Re-mapping the same descriptor after an incomplete break is harmless.
        let again = [
            w(block(0x4000_0000), Descriptor::INVALID),
            w(Descriptor::INVALID, block(0x4000_0000)),
            MmuEvent::DsbIshst,
        ];
        assert_eq!(check_break_before_make(&again), Ok(()));
        let other = [
            w(block(0x4000_0000), Descriptor::INVALID),
            w(Descriptor::INVALID, block(0x4020_0000)),
        ];
        assert!(check_break_before_make(&other).is_err());
    }

    #[test]
    fn non_global_to_global_needs_a_break() {
        let ng = block(0x4000_0000).with_attrs(Attrs::kernel_data().with_ng(true));
        let g = block(0x4000_0000);
        // Gap closed: nG -> G in place is refused (as Linux's pgattr_change_is_safe() does).
        assert!(requires_bbm(ng, g, Level::L2));
        assert_eq!(
            check_break_before_make(&[w(ng, g)]).unwrap_err().missing,
            BbmMissing::InvalidWrite
        );
        // G -> nG is an in-place change that needs its TLBI.
        assert!(!requires_bbm(g, ng, Level::L2) && needs_tlbi(g, ng, Level::L2));
        let mut seq = good_split();
        seq[0] = w(ng, Descriptor::INVALID);
        seq[4] = w(Descriptor::INVALID, g);
        assert_eq!(check_break_before_make(&seq), Ok(()));
    }

    fn pte(pa: u64) -> Descriptor {
        Descriptor::leaf(Level::L3, PhysAddr(pa), Attrs::kernel_data()).unwrap()
    }
    fn pte_write(old: Descriptor, new: Descriptor) -> MmuEvent {
        MmuEvent::Write { slot: 0x8000, va: VA + 0x7000, level: Level::L3, old, new }
    }

    #[test]
    fn table_to_block_needs_whole_span() {
        // A valid page under the table may be cached: one TLBI for the table is not enough.
        let seq = [
            pte_write(Descriptor::INVALID, pte(0x4000_7000)),
            w(table(0x8000), Descriptor::INVALID),
            MmuEvent::DsbIshst,
            tlbi(VA),
            MmuEvent::DsbIsh,
            w(Descriptor::INVALID, block(0x4000_0000)),
        ];
        assert_eq!(check_break_before_make(&seq).unwrap_err().missing, BbmMissing::Tlbi);
        let mut all = std::vec![
            pte_write(Descriptor::INVALID, pte(0x4000_7000)),
            w(table(0x8000), Descriptor::INVALID),
            MmuEvent::DsbIshst,
        ];
        for p in 0..512 {
            all.push(tlbi(VA + p * 4096));
        }
        all.push(MmuEvent::DsbIsh);
        all.push(w(Descriptor::INVALID, block(0x4000_0000)));
        assert_eq!(check_break_before_make(&all), Ok(()));
        let vmall = [
            pte_write(Descriptor::INVALID, pte(0x4000_7000)),
            w(table(0x8000), Descriptor::INVALID),
            MmuEvent::DsbIshst,
            MmuEvent::Tlbi { kind: TlbiKind::All, va: VirtAddr(0) },
            MmuEvent::DsbIsh,
            w(Descriptor::INVALID, block(0x4000_0000)),
        ];
        assert_eq!(check_break_before_make(&vmall), Ok(()));
        // Gap closed: one leaf seen unmapped says nothing of the 511 others, which may have been
        // mapped before the recording started: one TLBI by VA is not enough.
        let partly = [
            pte_write(Descriptor::INVALID, pte(0x4000_7000)),
            pte_write(pte(0x4000_7000), Descriptor::INVALID),
            MmuEvent::DsbIshst,
            tlbi(VA + 0x7000),
            MmuEvent::DsbIsh,
            w(table(0x8000), Descriptor::INVALID),
            MmuEvent::DsbIshst,
            tlbi(VA),
            MmuEvent::DsbIsh,
            w(Descriptor::INVALID, block(0x4000_0000)),
        ];
        assert_eq!(check_break_before_make(&partly).unwrap_err().missing, BbmMissing::Tlbi);
        // Every leaf seen unmapped (with its TLBI) first: one TLBI for the walk cache suffices.
        let mut emptied = std::vec::Vec::new();
        for p in 0..512u64 {
            let at = VA + p * 4096;
            let leaf =
                Descriptor::leaf(Level::L3, PhysAddr(0x4000_0000 + p * 4096), Attrs::kernel_data())
                    .unwrap();
            emptied.push(MmuEvent::Write {
                slot: 0x8000 + p as usize * 8,
                va: at,
                level: Level::L3,
                old: leaf,
                new: Descriptor::INVALID,
            });
        }
        emptied.push(MmuEvent::DsbIshst);
        emptied.push(MmuEvent::Tlbi { kind: TlbiKind::All, va: VirtAddr(0) });
        emptied.push(MmuEvent::DsbIsh);
        let tail = [
            w(table(0x8000), Descriptor::INVALID),
            MmuEvent::DsbIshst,
            tlbi(VA),
            MmuEvent::DsbIsh,
            w(Descriptor::INVALID, block(0x4000_0000)),
        ];
        emptied.extend(tail);
        assert_eq!(check_break_before_make(&emptied), Ok(()));
        // ... but not if a leaf's own break is incomplete (no TLBI for it).
        let n = emptied.len();
        emptied[n - 8] = MmuEvent::Isb;
        assert!(check_break_before_make(&emptied).is_err());
    }

    #[test]
    fn unpublished_write_is_reported() {
        let seq = [w(Descriptor::INVALID, block(0x4000_0000))];
        assert_eq!(check_published(&seq).unwrap_err().missing, BbmMissing::DsbAfterWrite);
    }

    #[test]
    fn helper_follows_the_rule_and_counts() {
        let mut slot: u64 = block(0x4000_0000).0;
        let mut mmu = RecordingMmu::new();
        // SAFETY: `slot` is a local aligned u64 standing in for a table entry.
        unsafe {
            break_before_make(
                &mut mmu,
                &mut slot,
                VA + 0x5000,
                Level::L2,
                table(0x8000),
                TlbScope::AllAsids,
            )
        };
        assert_eq!(slot, table(0x8000).0);
        assert_eq!(check_break_before_make(mmu.events()), Ok(()));
        assert_eq!(check_published(mmu.events()), Ok(()));
        assert_eq!(mmu.stats(), MmuStats { tlbi: 1, dsb: 3, isb: 1, entry_writes: 2 });
    }

    /// Feeds `events` to an [`AuditMmu`] over a recorder (writes go to a local array of slots)
    /// and returns its verdict.
    fn audit(events: &[MmuEvent]) -> (u64, Result<(), BbmViolation>) {
        let mut slots = [0u64; 1024];
        let mut a: AuditMmu<RecordingMmu, 16> = AuditMmu::new(RecordingMmu::new());
        for e in events {
            match *e {
                MmuEvent::Write { slot, va, level, old, new } => {
                    let i = (slot / 8) % slots.len();
                    slots[i] = old.bits();
                    // SAFETY: a local array element stands in for the entry.
                    unsafe { a.write_entry(&mut slots[i], va, level, new) };
                }
                MmuEvent::DsbIshst => a.dsb_ishst(),
                MmuEvent::DsbIsh => a.dsb_ish(),
                MmuEvent::Isb => a.isb(),
                MmuEvent::Tlbi { kind: TlbiKind::VaAllAsids, va } => a.tlbi_vaae1is(va),
                MmuEvent::Tlbi { kind: TlbiKind::Va { asid }, va } => a.tlbi_vae1is(va, asid),
                MmuEvent::Tlbi { kind: TlbiKind::Asid { asid }, .. } => a.tlbi_aside1is(asid),
                MmuEvent::Tlbi { kind: TlbiKind::All, .. } => a.tlbi_vmalle1is(),
            }
        }
        let r = a.check();
        (a.violations(), r)
    }

    #[test]
    fn auditor_passes_correct_sequences() {
        assert_eq!(audit(&good_split()), (0, Ok(())));
        let ro = block(0x4000_0000).with_attrs(Attrs::kernel_rodata());
        let perm =
            [w(block(0x4000_0000), ro), MmuEvent::DsbIshst, tlbi(VA + 0x1000), MmuEvent::DsbIsh];
        assert_eq!(audit(&perm), (0, Ok(())));
        let mut slot: u64 = block(0x4000_0000).0;
        let mut a: AuditMmu<RecordingMmu> = AuditMmu::new(RecordingMmu::new());
        // SAFETY: `slot` is a local aligned u64 standing in for a table entry.
        unsafe {
            break_before_make(&mut a, &mut slot, VA, Level::L2, table(0x8000), TlbScope::AllAsids)
        };
        assert_eq!((a.check(), a.open()), (Ok(()), 0));
        assert_eq!(a.stats(), MmuStats { tlbi: 1, dsb: 3, isb: 1, entry_writes: 2 });
        assert_eq!(a.inner().events().len(), 7, "every operation forwarded");
    }

    #[test]
    fn auditor_catches_each_broken_sequence() {
        let missing = |seq: &[MmuEvent]| {
            let (n, r) = audit(seq);
            assert!(n >= 1);
            r.unwrap_err().missing
        };
        let drop = |i: usize| {
            let mut s = good_split();
            s.remove(i);
            s
        };
        assert_eq!(missing(&drop(2)), BbmMissing::Tlbi);
        assert_eq!(missing(&drop(1)), BbmMissing::DsbAfterInvalid);
        assert_eq!(missing(&drop(3)), BbmMissing::DsbIshAfterTlbi);
        assert_eq!(missing(&[w(block(0x4000_0000), table(0x8000))]), BbmMissing::InvalidWrite);
        let mut wrong_va = good_split();
        wrong_va[2] = tlbi(VA + (2 << 20));
        assert_eq!(missing(&wrong_va), BbmMissing::Tlbi);
        // nG -> G in place.
        let ng = block(0x4000_0000).with_attrs(Attrs::kernel_data().with_ng(true));
        assert_eq!(
            missing(&[w(ng, block(0x4000_0000)), MmuEvent::DsbIsh]),
            BbmMissing::InvalidWrite
        );
        // A permission change with no TLBI.
        let ro = block(0x4000_0000).with_attrs(Attrs::kernel_rodata());
        assert_eq!(
            missing(&[w(block(0x4000_0000), ro), MmuEvent::DsbIsh]),
            BbmMissing::TlbiAfterChange
        );
        // A table broken with one by-VA TLBI: leaves mapped before may still be cached.
        let tbl = [
            w(table(0x8000), Descriptor::INVALID),
            MmuEvent::DsbIshst,
            tlbi(VA),
            MmuEvent::DsbIsh,
            w(Descriptor::INVALID, block(0x4000_0000)),
            MmuEvent::DsbIshst,
        ];
        assert_eq!(missing(&tbl), BbmMissing::Tlbi);
        // A valid write never published.
        assert_eq!(
            missing(&[w(Descriptor::INVALID, block(0x4000_0000))]),
            BbmMissing::DsbAfterWrite
        );
        // ASIDE1IS does not remove a global entry.
        let mut asid = good_split();
        asid[2] = MmuEvent::Tlbi { kind: TlbiKind::Asid { asid: 3 }, va: VirtAddr(0) };
        assert_eq!(missing(&asid), BbmMissing::Tlbi);
    }

    #[test]
    fn auditor_reports_what_it_cannot_track() {
        // 17 breaks open at once in a 16-entry auditor: the 17th is a violation, not a pass.
        let mut seq = std::vec::Vec::new();
        for i in 0..17u64 {
            let leaf =
                Descriptor::leaf(Level::L3, PhysAddr(0x4000_0000 + i * 4096), Attrs::kernel_data())
                    .unwrap();
            seq.push(MmuEvent::Write {
                slot: 0x8000 + i as usize * 8,
                va: VA + i * 4096,
                level: Level::L3,
                old: leaf,
                new: Descriptor::INVALID,
            });
        }
        let (n, r) = audit(&seq);
        assert_eq!((n, r.unwrap_err().missing), (1, BbmMissing::Untracked));
    }
}
