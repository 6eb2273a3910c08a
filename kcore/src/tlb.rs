//! Barriers, TLB maintenance and writes to live translation table entries.
//!
//! Every store to a translation table entry that a table walker may be using, every barrier and
//! every TLB invalidation in `kcore` goes through the [`MmuOps`] trait. On the target the
//! implementation is [`HwMmu`], which executes the instructions; on the host, tests use
//! `RecordingMmu`, which performs the store and records the sequence so that
//! `check_break_before_make` can verify it.
//!
//! Both implementations count what they execute ([`MmuStats`]); the firmware reports these
//! counts as measurements.
//!
//! # The rules, by their ARM ARM (DDI 0487) section titles
//!
//! - "Using break-before-make when updating translation table entries": replacing a valid entry
//!   by one with a different output address, a different size (block <-> table, a block of
//!   another size), or a different memory type or shareability, requires: write an invalid
//!   entry; DSB so the walkers see it; TLBI of every TLB entry that may hold the old
//!   translation; DSB ISH to wait for the TLBI to complete; only then write the new entry.
//!   [`break_before_make`] performs that sequence.
//! - "Ordering of translation table walks" / "Ordering and completion of TLB maintenance
//!   instructions": a store to a table is only guaranteed to be seen by the walkers after a DSB,
//!   and a TLBI has only completed after a DSB ISH; an ISB then makes the current CPU's later
//!   instructions use the new translations.
//! - Invalid entries are never held in a TLB ("Translation table entries that generate a
//!   Translation fault are not cached"), so invalid -> valid needs a DSB (+ ISB) but no TLBI.

use crate::addr::VirtAddr;
use crate::pgtable::{DescKind, Descriptor, Level};

/// Counts of what an [`MmuOps`] implementation has executed.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MmuStats {
    /// TLB invalidation instructions.
    pub tlbi: u64,
    /// DSBs (ISHST and ISH).
    pub dsb: u64,
    /// ISBs.
    pub isb: u64,
    /// Stores to translation table entries through [`MmuOps::write_entry`].
    pub entry_writes: u64,
}

impl MmuStats {
    /// `self - earlier`, field by field: what happened in between.
    pub fn since(self, earlier: MmuStats) -> MmuStats {
        MmuStats {
            tlbi: self.tlbi - earlier.tlbi,
            dsb: self.dsb - earlier.dsb,
            isb: self.isb - earlier.isb,
            entry_writes: self.entry_writes - earlier.entry_writes,
        }
    }
}

/// Which TLB entries a by-VA invalidation targets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TlbScope {
    /// Every ASID (`TLBI VAAE1IS`): for global kernel mappings, and always correct.
    AllAsids,
    /// One ASID (`TLBI VAE1IS`): for the non-global mappings of one user address space. Global
    /// entries for the VA are invalidated too.
    Asid(u16),
}

/// The translation-table and TLB maintenance backend.
///
/// Every method issues exactly one instruction (or one store) and counts it; callers compose
/// the sequences and carry the comment naming the rule each step satisfies.
pub trait MmuOps {
    /// Stores `new` into the translation table entry at `slot`.
    ///
    /// `va_covered` is the first VA the entry translates and `level` its level; they are not
    /// needed for the store but let a recorder check break-before-make.
    ///
    /// # Safety
    /// `slot` must be the address, as the CPU sees it, of an 8-byte aligned entry in a
    /// translation table the caller may edit (it holds the lock protecting it), and the change
    /// must not remove or alter a mapping that live references still rely on.
    unsafe fn write_entry(
        &mut self,
        slot: *mut u64,
        va_covered: VirtAddr,
        level: Level,
        new: Descriptor,
    );
    /// `DSB ISHST`: wait for earlier stores (to the inner shareable domain) to complete.
    fn dsb_ishst(&mut self);
    /// `DSB ISH`: wait for earlier memory accesses and TLB maintenance to complete.
    fn dsb_ish(&mut self);
    /// `ISB`: later instructions are fetched and translated after this point.
    fn isb(&mut self);
    /// `TLBI VAAE1IS`: invalidate the entries translating `va`, any ASID, inner shareable.
    fn tlbi_vaae1is(&mut self, va: VirtAddr);
    /// `TLBI VAE1IS`: invalidate the entries translating `va` for `asid` (and global ones).
    fn tlbi_vae1is(&mut self, va: VirtAddr, asid: u16);
    /// `TLBI ASIDE1IS`: invalidate every non-global entry of `asid`.
    fn tlbi_aside1is(&mut self, asid: u16);
    /// `TLBI VMALLE1IS`: invalidate every stage-1 EL1&0 entry.
    fn tlbi_vmalle1is(&mut self);
    /// What has been executed so far.
    fn stats(&self) -> MmuStats;

    /// The by-VA invalidation for `scope`: `TLBI VAAE1IS` or `TLBI VAE1IS`.
    fn tlbi_va(&mut self, va: VirtAddr, scope: TlbScope) {
        match scope {
            TlbScope::AllAsids => self.tlbi_vaae1is(va),
            TlbScope::Asid(asid) => self.tlbi_vae1is(va, asid),
        }
    }
}

/// Reads the entry at `slot` (volatile: the hardware or another CPU may change it).
///
/// # Safety
/// `slot` must point to a readable, 8-byte aligned translation table entry.
#[inline]
pub unsafe fn read_entry(slot: *const u64) -> Descriptor {
    // SAFETY: the caller guarantees `slot` is a readable, aligned entry.
    Descriptor(unsafe { core::ptr::read_volatile(slot) })
}

/// Replaces the valid entry at `slot` with `new` following break-before-make.
///
/// The sequence, for an entry at `level` translating `va`:
/// 1. write an invalid entry,
/// 2. `DSB ISHST`,
/// 3. one `TLBI` by VA (`scope`) if the old entry was a block or page; if it was a table, one
///    per 4 KiB page of the span would be needed for leaf entries cached beneath it, so a
///    table is flushed with `TLBI VMALLE1IS` instead (or `TLBI ASIDE1IS` for a user ASID),
/// 4. `DSB ISH`,
/// 5. write `new`,
/// 6. `DSB ISHST` and `ISB` so the new entry is visible to the walkers and to this CPU.
///
/// # Safety
/// As for [`MmuOps::write_entry`]; besides, nothing may access `[va, va + level.size())`
/// between steps 1 and 5 (it faults), which on this firmware means the caller owns that range.
pub unsafe fn break_before_make(
    mmu: &mut impl MmuOps,
    slot: *mut u64,
    va: VirtAddr,
    level: Level,
    new: Descriptor,
    scope: TlbScope,
) {
    let va = va.align_down(level.size());
    // SAFETY: the caller guarantees `slot` is a readable entry of a table it may edit.
    let old = unsafe { read_entry(slot) };
    // SAFETY: forwarded from the caller.
    unsafe { mmu.write_entry(slot, va, level, Descriptor::INVALID) };
    // DSB ISHST: make the invalid entry visible to the table walkers before the TLBI
    // (ARM ARM "Using break-before-make when updating translation table entries").
    mmu.dsb_ishst();
    // TLBI: remove every cached copy of the old translation (break-before-make step 2). Leaf
    // entries cached from under an old table could be for any page of its span, so a table is
    // flushed whole; a block's TLB entry is hit by any VA inside it, so one TLBI by VA removes it.
    match (old.kind(level), scope) {
        (DescKind::Table, TlbScope::AllAsids) => mmu.tlbi_vmalle1is(),
        (DescKind::Table, TlbScope::Asid(asid)) => mmu.tlbi_aside1is(asid),
        _ => mmu.tlbi_va(va, scope),
    }
    // DSB ISH: wait for the TLBI to complete on every CPU of the inner shareable domain before
    // the new entry can be observed (ARM ARM "Ordering and completion of TLB maintenance
    // instructions", break-before-make step 3).
    mmu.dsb_ish();
    // SAFETY: forwarded from the caller.
    unsafe { mmu.write_entry(slot, va, level, new) };
    // DSB ISHST: the new entry is visible to the walkers; ISB: this CPU's later instructions
    // translate with it (ARM ARM "Ordering of translation table walks").
    mmu.dsb_ishst();
    mmu.isb();
}

/// The hardware backend: volatile stores and real barriers / TLB maintenance instructions.
///
/// Only meaningful on AArch64 at EL1 with the MMU set up; on any other architecture every
/// method panics (host tests use `RecordingMmu`).
#[derive(Default, Debug)]
pub struct HwMmu {
    stats: MmuStats,
}

impl HwMmu {
    /// A backend with zeroed counters.
    pub const fn new() -> HwMmu {
        HwMmu { stats: MmuStats { tlbi: 0, dsb: 0, isb: 0, entry_writes: 0 } }
    }
}

/// The operand of `TLBI VA*`: `VA[55:12]` in bits `[43:0]`, ASID in bits `[63:48]`.
#[inline]
pub const fn tlbi_va_operand(va: VirtAddr, asid: u16) -> u64 {
    ((va.0 >> 12) & ((1 << 44) - 1)) | ((asid as u64) << 48)
}

#[cfg(target_arch = "aarch64")]
mod hw {
    use core::arch::asm;

    #[inline(always)]
    pub fn dsb_ishst() {
        // SAFETY: a barrier has no memory-safety preconditions.
        unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) }
    }
    #[inline(always)]
    pub fn dsb_ish() {
        // SAFETY: a barrier has no memory-safety preconditions.
        unsafe { asm!("dsb ish", options(nostack, preserves_flags)) }
    }
    #[inline(always)]
    pub fn isb() {
        // SAFETY: a context synchronisation event has no memory-safety preconditions.
        unsafe { asm!("isb", options(nostack, preserves_flags)) }
    }
    #[inline(always)]
    pub fn tlbi_vaae1is(op: u64) {
        // SAFETY: TLB invalidation only drops cached translations; it cannot break memory safety.
        unsafe { asm!("tlbi vaae1is, {0}", in(reg) op, options(nostack, preserves_flags)) }
    }
    #[inline(always)]
    pub fn tlbi_vae1is(op: u64) {
        // SAFETY: TLB invalidation only drops cached translations.
        unsafe { asm!("tlbi vae1is, {0}", in(reg) op, options(nostack, preserves_flags)) }
    }
    #[inline(always)]
    pub fn tlbi_aside1is(op: u64) {
        // SAFETY: TLB invalidation only drops cached translations.
        unsafe { asm!("tlbi aside1is, {0}", in(reg) op, options(nostack, preserves_flags)) }
    }
    #[inline(always)]
    pub fn tlbi_vmalle1is() {
        // SAFETY: TLB invalidation only drops cached translations.
        unsafe { asm!("tlbi vmalle1is", options(nostack, preserves_flags)) }
    }
}

#[cfg(not(target_arch = "aarch64"))]
mod hw {
    const MSG: &str = "HwMmu only runs on AArch64; host tests use RecordingMmu";
    pub fn dsb_ishst() {
        unimplemented!("{MSG}")
    }
    pub fn dsb_ish() {
        unimplemented!("{MSG}")
    }
    pub fn isb() {
        unimplemented!("{MSG}")
    }
    pub fn tlbi_vaae1is(_op: u64) {
        unimplemented!("{MSG}")
    }
    pub fn tlbi_vae1is(_op: u64) {
        unimplemented!("{MSG}")
    }
    pub fn tlbi_aside1is(_op: u64) {
        unimplemented!("{MSG}")
    }
    pub fn tlbi_vmalle1is() {
        unimplemented!("{MSG}")
    }
}

impl MmuOps for HwMmu {
    unsafe fn write_entry(
        &mut self,
        slot: *mut u64,
        _va: VirtAddr,
        _level: Level,
        new: Descriptor,
    ) {
        // SAFETY: the caller guarantees `slot` is an aligned entry of a table it may edit.
        // Volatile: the table walker is another observer the compiler does not know about.
        unsafe { core::ptr::write_volatile(slot, new.0) };
        self.stats.entry_writes += 1;
    }
    fn dsb_ishst(&mut self) {
        hw::dsb_ishst();
        self.stats.dsb += 1;
    }
    fn dsb_ish(&mut self) {
        hw::dsb_ish();
        self.stats.dsb += 1;
    }
    fn isb(&mut self) {
        hw::isb();
        self.stats.isb += 1;
    }
    fn tlbi_vaae1is(&mut self, va: VirtAddr) {
        hw::tlbi_vaae1is(tlbi_va_operand(va, 0));
        self.stats.tlbi += 1;
    }
    fn tlbi_vae1is(&mut self, va: VirtAddr, asid: u16) {
        hw::tlbi_vae1is(tlbi_va_operand(va, asid));
        self.stats.tlbi += 1;
    }
    fn tlbi_aside1is(&mut self, asid: u16) {
        hw::tlbi_aside1is((asid as u64) << 48);
        self.stats.tlbi += 1;
    }
    fn tlbi_vmalle1is(&mut self) {
        hw::tlbi_vmalle1is();
        self.stats.tlbi += 1;
    }
    fn stats(&self) -> MmuStats {
        self.stats
    }
}

/// The kind of a recorded TLB invalidation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TlbiKind {
    /// `TLBI VAAE1IS`: one VA, every ASID.
    VaAllAsids,
    /// `TLBI VAE1IS`: one VA, one ASID (and global entries).
    Va {
        /// The ASID.
        asid: u16,
    },
    /// `TLBI ASIDE1IS`: every non-global entry of one ASID.
    Asid {
        /// The ASID.
        asid: u16,
    },
    /// `TLBI VMALLE1IS`: everything.
    All,
}

impl TlbiKind {
    /// Does this invalidation remove a cached translation of the page at `va` held by an
    /// entry that is global (`ng == false`) or not? By-VA invalidations only cover `va`'s page.
    pub fn covers(self, tlbi_va: VirtAddr, va: VirtAddr, ng: bool) -> bool {
        match self {
            TlbiKind::VaAllAsids | TlbiKind::Va { .. } => tlbi_va.0 >> 12 == va.0 >> 12,
            // ASIDE1IS leaves global entries alone.
            TlbiKind::Asid { .. } => ng,
            TlbiKind::All => true,
        }
    }
}

/// One recorded step of a `RecordingMmu`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MmuEvent {
    /// A store to a translation table entry.
    Write {
        /// The entry's address.
        slot: usize,
        /// First VA the entry translates.
        va: VirtAddr,
        /// The entry's level.
        level: Level,
        /// The value before the store.
        old: Descriptor,
        /// The value stored.
        new: Descriptor,
    },
    /// `DSB ISHST`.
    DsbIshst,
    /// `DSB ISH`.
    DsbIsh,
    /// `ISB`.
    Isb,
    /// A TLB invalidation (`va` is zero for the non-VA kinds).
    Tlbi {
        /// Which instruction.
        kind: TlbiKind,
        /// The VA operand.
        va: VirtAddr,
    },
}

#[cfg(any(test, feature = "std"))]
pub use recording::RecordingMmu;

#[cfg(any(test, feature = "std"))]
mod recording {
    extern crate std;
    use super::{MmuEvent, MmuOps, MmuStats, TlbiKind};
    use crate::addr::VirtAddr;
    use crate::pgtable::{Descriptor, Level};
    use std::vec::Vec;

    /// Host backend: performs each store (volatile) and records every step.
    #[derive(Default, Debug)]
    pub struct RecordingMmu {
        events: Vec<MmuEvent>,
        stats: MmuStats,
    }

    impl RecordingMmu {
        /// An empty recorder.
        pub fn new() -> Self {
            Self::default()
        }
        /// Everything recorded so far.
        pub fn events(&self) -> &[MmuEvent] {
            &self.events
        }
        /// Takes the recorded events, leaving the list empty (counters keep running).
        pub fn take_events(&mut self) -> Vec<MmuEvent> {
            core::mem::take(&mut self.events)
        }
        fn push(&mut self, e: MmuEvent) {
            self.events.push(e);
        }
    }

    impl MmuOps for RecordingMmu {
        unsafe fn write_entry(
            &mut self,
            slot: *mut u64,
            va: VirtAddr,
            level: Level,
            new: Descriptor,
        ) {
            // SAFETY: the caller guarantees `slot` is an aligned, readable and writable entry.
            let old = Descriptor(unsafe { core::ptr::read_volatile(slot) });
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(slot, new.0) };
            self.stats.entry_writes += 1;
            self.push(MmuEvent::Write { slot: slot as usize, va, level, old, new });
        }
        fn dsb_ishst(&mut self) {
            self.stats.dsb += 1;
            self.push(MmuEvent::DsbIshst);
        }
        fn dsb_ish(&mut self) {
            self.stats.dsb += 1;
            self.push(MmuEvent::DsbIsh);
        }
        fn isb(&mut self) {
            self.stats.isb += 1;
            self.push(MmuEvent::Isb);
        }
        fn tlbi_vaae1is(&mut self, va: VirtAddr) {
            self.stats.tlbi += 1;
            self.push(MmuEvent::Tlbi { kind: TlbiKind::VaAllAsids, va });
        }
        fn tlbi_vae1is(&mut self, va: VirtAddr, asid: u16) {
            self.stats.tlbi += 1;
            self.push(MmuEvent::Tlbi { kind: TlbiKind::Va { asid }, va });
        }
        fn tlbi_aside1is(&mut self, asid: u16) {
            self.stats.tlbi += 1;
            self.push(MmuEvent::Tlbi { kind: TlbiKind::Asid { asid }, va: VirtAddr(0) });
        }
        fn tlbi_vmalle1is(&mut self) {
            self.stats.tlbi += 1;
            self.push(MmuEvent::Tlbi { kind: TlbiKind::All, va: VirtAddr(0) });
        }
        fn stats(&self) -> MmuStats {
            self.stats
        }
    }
}

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

/// Does replacing valid `old` by valid `new` at `level` require break-before-make?
///
/// Per the ARM ARM ("Using break-before-make when updating translation table entries") it does
/// when the output address (or next-level table address) changes, when the kind changes
/// (block <-> table: the size of the translation changes), or when the memory type or the
/// shareability changes. Changes of permissions (AP, PXN, UXN), of the access flag and of nG
/// with the same output address are not checked: the architecture allows them in place (a TLBI
/// is still needed for the new permissions to take effect, but not the invalid step).
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
        }
    }
}

#[cfg(any(test, feature = "std"))]
#[derive(Clone, Copy)]
struct Break {
    va: VirtAddr,
    level: Level,
    old: Descriptor,
    /// Every leaf the recording has seen under an old table entry was already invalid, its own
    /// break complete, when the table entry was broken.
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
/// its span, or by one by-VA TLBI inside its span if every entry beneath it that the recording
/// has seen was already invalid (with its own break complete) when the table entry was broken —
/// the walk-cache entry is then all that is left. By-VA TLBIs are not matched against the
/// entry's ASID (the recorder does not know it).
#[cfg(any(test, feature = "std"))]
pub fn check_break_before_make(events: &[MmuEvent]) -> Result<(), BbmViolation> {
    extern crate std;
    use std::collections::{BTreeMap, BTreeSet};

    // Valid entries, as (level, first VA, slot): to ask "anything valid below this table?".
    let mut valid: BTreeSet<(u8, u64, usize)> = BTreeSet::new();
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
                        if old.kind(level) == DescKind::Table {
                            let end = va.0.saturating_add(level.size() - 1);
                            let below = |l: u8| (l, va.0, 0)..=(l, end, usize::MAX);
                            b.leaves_clear = (level as u8 + 1..=3)
                                .all(|l| valid.range(below(l)).next().is_none())
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
                if old_valid {
                    valid.remove(&(level as u8, va.0, slot));
                }
                if new_valid {
                    valid.insert((level as u8, va.0, slot));
                }
            }
            MmuEvent::DsbIshst => {
                for b in open.values_mut() {
                    b.dsb = true;
                }
            }
            MmuEvent::DsbIsh => {
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
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PhysAddr;
    use crate::pgtable::Attrs;

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
    fn permission_changes_need_no_break() {
        let ro = block(0x4000_0000).with_attrs(Attrs::kernel_rodata());
        assert_eq!(check_break_before_make(&[w(block(0x4000_0000), ro)]), Ok(()));
        // Re-mapping the same descriptor after an incomplete break is harmless too.
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
        // Leaves unmapped (with their own TLBI) first: one TLBI for the walk cache suffices.
        let emptied = [
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
        assert_eq!(check_break_before_make(&emptied), Ok(()));
        // ... but not if the leaf's own TLBI is missing.
        let mut sloppy = emptied;
        sloppy[3] = MmuEvent::Isb;
        assert!(check_break_before_make(&sloppy).is_err());
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

    #[test]
    fn tlbi_operand_encoding() {
        assert_eq!(tlbi_va_operand(VirtAddr(0xFFFF_FC00_0020_3000), 5), 0x0005_0FFF_C000_0203);
    }
}
