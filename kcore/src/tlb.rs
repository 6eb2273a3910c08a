//! Barriers, TLB maintenance and writes to live translation table entries: the backends.
//!
//! Linux counterpart: `arch/arm64/include/asm/tlbflush.h` (`__tlbi`, `flush_tlb_kernel_range`,
//! `flush_tlb_all`), `arch/arm64/include/asm/barrier.h` (`dsb`, `isb`) and `set_pte()`/
//! `set_pmd()` (`arch/arm64/include/asm/pgtable.h`); ARM ARM (DDI 0487) D8.16 "Translation
//! Lookaside Buffers" and C5.5 "A64 system instructions for TLB maintenance".
//!
//! Every store to a translation table entry that a table walker may be using, every barrier and
//! every TLB invalidation in `kcore` goes through the [`MmuOps`] trait. On the target the
//! implementation is [`HwMmu`], which executes the instructions; on the host, tests use
//! `RecordingMmu`, which performs the store and records the sequence so that the
//! break-before-make checker ([`crate::bbm_check`]) can verify it.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlbi_operand_encoding() {
        assert_eq!(tlbi_va_operand(VirtAddr(0xFFFF_FC00_0020_3000), 5), 0x0005_0FFF_C000_0203);
    }
}
