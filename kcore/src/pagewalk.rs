//! The one page-table walker: the equivalent of Linux's `walk_page_range_novma()`.
//!
//! [`walk_page_range_novma`] visits the translation tables of a locked address space over
//! `[start, end)` and calls back a [`PageWalkOps`] implementation at each level: `pgd_entry`
//! (level 0), `pud_entry` (level 1), `pmd_entry` (level 2), `pte_entry` (level 3) for every
//! valid entry (table, block or page), and `pte_hole` for every invalid one. ptdump, the W^X
//! audit and the HugeTLB vmemmap optimization are all built on it.
//!
//! # Design: a trait with default methods
//!
//! Linux passes a `struct mm_walk_ops` of function pointers, NULL where the user has no
//! interest, and the walker only descends below a level if a deeper callback (or `pte_hole`)
//! is set. Here the callbacks are a trait with default methods, which gives static dispatch
//! (each user's walk is monomorphised and inlined), typed state in `self` instead of a
//! `void *private`, and associated types for the early-exit value ([`PageWalkOps::Output`]) and
//! the error ([`PageWalkOps::Error`]) instead of an `int`. Rust cannot ask whether a default
//! method was overridden, so each implementation declares [`PageWalkOps::INTERESTS`]: the
//! walker calls only the callbacks named there, and descends below a level only if a deeper
//! callback or [`Interests::HOLE`] is named — Linux's "no lower callback, no descent" rule.
//!
//! Each callback gets an [`Entry`]: the entry's address (so it may rewrite it through
//! [`crate::tlb::MmuOps`]), the descriptor read (volatile) just before the call, its level, and
//! the VA range it covers clipped to the walk, `[max(start, entry start), min(end, entry end))`.
//! It returns a [`WalkAction`]:
//! - [`WalkAction::Subtree`]: carry on; if the entry — *re-read after the callback* — is a
//!   table, descend into it. This is how a callback splits a block: it replaces the block by a
//!   table (break-before-make) and returns `Subtree`, and the walker then visits the new PTEs.
//! - [`WalkAction::Continue`]: skip this entry's subtree.
//! - [`WalkAction::Again`]: re-read the entry and handle it again from scratch (hole or
//!   callback); the callback must make progress or the walk loops.
//! - [`WalkAction::Break`]: stop the walk, returning the value.
//!
//! Unlike Linux, where `pte_entry` is also called for `pte_none()` entries, invalid level-3
//! entries go to `pte_hole(.., depth = Level::L3)` like invalid entries at the other levels.
//!
//! # Locking, and who may free kernel page tables
//!
//! The walk needs a [`WalkLock`] guard: `mmap_lock` for read on `init_mm`, for write on a user
//! address space (see [`crate::mm`]). On Linux, `mmap_lock` does *not* protect the kernel's
//! page tables from being freed: memory hot-remove frees intermediate tables of the linear map
//! and vmemmap without it. In this firmware the only code that frees kernel table pages is the
//! hot-remove path (the mapper's `unmap_range` on `init_mm`), which takes `init_mm`'s
//! `mmap_lock` for *write*; so a walker holding it for read cannot see a table freed under it.
//! HVO holds the lock for *read* and frees no table: it adds tables (splitting vmemmap blocks)
//! and remaps vmemmap PTEs, and keeps the split tables after a restore, as Linux does. Entries
//! may therefore change under a reader, which is why every entry is read with a volatile load
//! and re-read after each callback, and why HVO re-checks each entry under `init_mm`'s
//! `page_table_lock` before it replaces it (two HVO callers may walk at once).

use crate::addr::{PhysAddr, VirtAddr, PAGE_SIZE};
use crate::mm::{Mm, MmKind, WalkLock};
use crate::pgtable::{DescKind, Descriptor, Level, VaHalf, VA_BITS, VA_MASK};
use crate::phys::PhysMem;
use crate::tlb::{break_before_make, read_entry, MmuOps, TlbScope};
use core::ops::ControlFlow;

/// Which callbacks a [`PageWalkOps`] implements (a bit set).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Interests(u8);

impl Interests {
    /// No callback.
    pub const NONE: Interests = Interests(0);
    /// `pgd_entry` (level 0).
    pub const PGD: Interests = Interests(1 << 0);
    /// `pud_entry` (level 1).
    pub const PUD: Interests = Interests(1 << 1);
    /// `pmd_entry` (level 2).
    pub const PMD: Interests = Interests(1 << 2);
    /// `pte_entry` (level 3).
    pub const PTE: Interests = Interests(1 << 3);
    /// `pte_hole` (invalid entries at any level).
    pub const HOLE: Interests = Interests(1 << 4);
    /// Every callback.
    pub const ALL: Interests = Interests(0b1_1111);

    /// The set with bits `b` (bit `n` = level `n`'s entry callback, bit 4 = `pte_hole`);
    /// other bits are ignored.
    pub const fn from_bits(b: u8) -> Interests {
        Interests(b & Interests::ALL.0)
    }
    /// The bits of the set.
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// Both sets.
    pub const fn union(self, other: Interests) -> Interests {
        Interests(self.0 | other.0)
    }
    /// Is every callback of `other` in `self`?
    pub const fn contains(self, other: Interests) -> bool {
        self.0 & other.0 == other.0
    }
    /// The entry callback for `level`.
    pub const fn entry(level: Level) -> Interests {
        Interests(1 << level as u8)
    }
    /// Is there a reason to descend below an entry at `level`: an entry callback deeper than
    /// it, or `pte_hole`?
    pub const fn below(self, level: Level) -> bool {
        let deeper = (Interests::ALL.0 & !Interests::HOLE.0) & !((2 << level as u8) - 1);
        self.0 & (deeper | Interests::HOLE.0) != 0
    }
}

impl core::ops::BitOr for Interests {
    type Output = Interests;
    fn bitor(self, rhs: Interests) -> Interests {
        self.union(rhs)
    }
}

/// What the walker does after an entry callback.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum WalkAction<B> {
    /// Descend if the entry (re-read now) is a table; otherwise go on to the next entry.
    Subtree,
    /// Skip this entry's subtree.
    Continue,
    /// Re-read this entry and handle it again.
    Again,
    /// Stop the walk with this value.
    Break(B),
}

/// One translation table entry, as handed to a callback.
///
/// Only the walker creates these, and only for the duration of a callback, while the walk lock
/// keeps the table alive.
#[derive(Debug)]
pub struct Entry {
    slot: *mut u64,
    desc: Descriptor,
    level: Level,
    addr: VirtAddr,
    next: VirtAddr,
    span_start: VirtAddr,
}

impl Entry {
    /// The entry's level.
    pub fn level(&self) -> Level {
        self.level
    }
    /// The descriptor as read just before the callback.
    pub fn desc(&self) -> Descriptor {
        self.desc
    }
    /// What the descriptor is.
    pub fn kind(&self) -> DescKind {
        self.desc.kind(self.level)
    }
    /// First VA of the part of the entry inside the walk: `max(start, entry start)`.
    pub fn addr(&self) -> VirtAddr {
        self.addr
    }
    /// End of the part of the entry inside the walk: `min(end, entry end)`.
    pub fn next(&self) -> VirtAddr {
        self.next
    }
    /// First VA the whole entry translates (aligned to `level().size()`).
    pub fn span_start(&self) -> VirtAddr {
        self.span_start
    }
    /// Does the walk cover the whole entry?
    pub fn covers_whole_entry(&self) -> bool {
        self.addr == self.span_start && self.next.0.wrapping_sub(self.addr.0) == self.level.size()
    }
    /// The entry's address, as the CPU sees it.
    pub fn slot(&self) -> *mut u64 {
        self.slot
    }
    /// The descriptor now (volatile read).
    pub fn reread(&self) -> Descriptor {
        // SAFETY: an `Entry` only exists during a callback of a walk holding the lock that keeps
        // this table alive, and `slot` is one of its entries.
        unsafe { read_entry(self.slot) }
    }

    /// Stores `new` in the entry through `mmu` (no barriers).
    ///
    /// # Safety
    /// As for [`MmuOps::write_entry`]: the caller owns the VA range the entry maps (e.g. the
    /// vmemmap of a HugeTLB folio), follows break-before-make where required and issues the
    /// barriers the change needs.
    pub unsafe fn set(&self, mmu: &mut impl MmuOps, new: Descriptor) {
        // SAFETY: `slot` is a live entry (see `reread`); the rest is the caller's contract.
        unsafe { mmu.write_entry(self.slot, self.span_start, self.level, new) }
    }

    /// Replaces the entry by `new` with the full break-before-make sequence
    /// ([`crate::tlb::break_before_make`]).
    ///
    /// # Safety
    /// As for [`crate::tlb::break_before_make`]: nothing may access the entry's VA span
    /// while it is invalid.
    pub unsafe fn replace_bbm(&self, mmu: &mut impl MmuOps, new: Descriptor, scope: TlbScope) {
        // SAFETY: `slot` is a live entry (see `reread`); the rest is the caller's contract.
        unsafe { break_before_make(mmu, self.slot, self.span_start, self.level, new, scope) }
    }
}

/// Callbacks for [`walk_page_range_novma`]. Every method has a no-op default; declare the ones
/// you implement in [`PageWalkOps::INTERESTS`].
pub trait PageWalkOps {
    /// Value returned by [`WalkAction::Break`].
    type Output;
    /// Error that stops the walk.
    type Error;
    /// The callbacks this implementation wants called (and so where the walker descends).
    const INTERESTS: Interests;

    /// A valid level-0 entry (always a table).
    fn pgd_entry(&mut self, _e: &Entry) -> Result<WalkAction<Self::Output>, Self::Error> {
        Ok(WalkAction::Subtree)
    }
    /// A valid level-1 entry: table or 1 GiB block.
    fn pud_entry(&mut self, _e: &Entry) -> Result<WalkAction<Self::Output>, Self::Error> {
        Ok(WalkAction::Subtree)
    }
    /// A valid level-2 entry: table or 2 MiB block.
    fn pmd_entry(&mut self, _e: &Entry) -> Result<WalkAction<Self::Output>, Self::Error> {
        Ok(WalkAction::Subtree)
    }
    /// A valid level-3 entry: a 4 KiB page.
    fn pte_entry(&mut self, _e: &Entry) -> Result<WalkAction<Self::Output>, Self::Error> {
        Ok(WalkAction::Subtree)
    }
    /// `[start, end)` (clipped to the walk) is covered by an invalid entry at level `depth`.
    fn pte_hole(
        &mut self,
        _start: VirtAddr,
        _end: VirtAddr,
        _depth: Level,
    ) -> Result<ControlFlow<Self::Output>, Self::Error> {
        Ok(ControlFlow::Continue(()))
    }
}

/// Why a walk stopped with an error.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum WalkError<E> {
    /// `[start, end)` is not page aligned, is reversed, or is not inside the address space's
    /// half of the VA space.
    InvalidRange {
        /// Start asked for.
        start: VirtAddr,
        /// End asked for.
        end: VirtAddr,
        /// The half the address space covers.
        half: VaHalf,
    },
    /// A callback returned this error.
    Callback(E),
}

impl<E> From<E> for WalkError<E> {
    fn from(e: E) -> Self {
        WalkError::Callback(e)
    }
}

/// Table offsets `[s, e)` of `[start, end)` in `half`, or `None` if invalid.
///
/// `end` may be one past the half: `2^48` for the lower half, 0 (wrapped) for the upper half.
fn range_offsets(half: VaHalf, start: VirtAddr, end: VirtAddr) -> Option<(u64, u64)> {
    if !start.is_aligned(PAGE_SIZE) || !end.is_aligned(PAGE_SIZE) {
        return None;
    }
    if VaHalf::of(start) != Some(half) {
        return None;
    }
    let s = start.0 & VA_MASK;
    let e = if half.va(1 << VA_BITS) == end {
        1 << VA_BITS
    } else if VaHalf::of(end) == Some(half) {
        end.0 & VA_MASK
    } else {
        return None;
    };
    (s <= e).then_some((s, e))
}

struct Walker<'a, M: PhysMem, O: PageWalkOps> {
    mem: &'a M,
    ops: &'a mut O,
    half: VaHalf,
}

type Flow<O> = Result<ControlFlow<<O as PageWalkOps>::Output>, <O as PageWalkOps>::Error>;

impl<M: PhysMem, O: PageWalkOps> Walker<'_, M, O> {
    fn call(&mut self, e: &Entry) -> Result<WalkAction<O::Output>, O::Error> {
        if !O::INTERESTS.contains(Interests::entry(e.level)) {
            return Ok(WalkAction::Subtree);
        }
        match e.level {
            Level::L0 => self.ops.pgd_entry(e),
            Level::L1 => self.ops.pud_entry(e),
            Level::L2 => self.ops.pmd_entry(e),
            Level::L3 => self.ops.pte_entry(e),
        }
    }

    /// Walks `[s, e)` (table offsets) of the table at `table`, at `level`.
    ///
    /// # Safety
    /// `table` and every table reachable from it are table pages reachable through `mem`,
    /// kept alive by the walk lock.
    unsafe fn walk(&mut self, table: PhysAddr, level: Level, s: u64, e: u64) -> Flow<O> {
        let size = level.size();
        // The table page is reached once; its entries by index.
        let entries = self.mem.ptr(table) as *mut u64;
        let mut cur = s;
        while cur < e {
            let base = cur & !(size - 1);
            let next = (base + size).min(e);
            // SAFETY: `level.index` is below 512: an entry of the table page (caller's guarantee).
            let slot = unsafe { entries.add(level.index(VirtAddr(cur))) };
            loop {
                // SAFETY: `slot` is an entry of a live table page (caller's guarantee).
                let desc = unsafe { read_entry(slot) };
                if desc.kind(level) == DescKind::Invalid {
                    if O::INTERESTS.contains(Interests::HOLE) {
                        let (a, n) = (self.half.va(cur), self.half.va(next));
                        if let ControlFlow::Break(v) = self.ops.pte_hole(a, n, level)? {
                            return Ok(ControlFlow::Break(v));
                        }
                    }
                    break;
                }
                let entry = Entry {
                    slot,
                    desc,
                    level,
                    addr: self.half.va(cur),
                    next: self.half.va(next),
                    span_start: self.half.va(base),
                };
                match self.call(&entry)? {
                    WalkAction::Again => continue,
                    WalkAction::Break(v) => return Ok(ControlFlow::Break(v)),
                    WalkAction::Continue => break,
                    WalkAction::Subtree => {
                        // Re-read: the callback may have turned a block into a table.
                        let now = entry.reread();
                        if now.kind(level) == DescKind::Table && O::INTERESTS.below(level) {
                            let sub = level.next().expect("no table descriptors at level 3");
                            // SAFETY: a table descriptor in a live table points to a live table
                            // page (the walk lock keeps it from being freed).
                            let r = unsafe { self.walk(now.table_address(), sub, cur, next) }?;
                            if r.is_break() {
                                return Ok(r);
                            }
                        }
                        break;
                    }
                }
            }
            cur = next;
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// Walks `[start, end)` of the address space locked by `guard`, calling `ops` (see the module
/// documentation). `start` and `end` are page aligned and in the address space's half of the
/// VA space; `end` may be `2^48` for a user mm, or 0 for the top of the kernel half.
///
/// Returns `Ok(Some(v))` if a callback returned `Break(v)`, `Ok(None)` if the walk completed.
pub fn walk_page_range_novma<L: WalkLock, M: PhysMem, O: PageWalkOps>(
    guard: &L,
    mem: &M,
    start: VirtAddr,
    end: VirtAddr,
    ops: &mut O,
) -> Result<Option<O::Output>, WalkError<O::Error>> {
    // SAFETY: the guard proves the lock the walk needs is held; `Mm::new_*`'s contract makes
    // the root and its tables reachable through `mem`.
    unsafe { walk_root(guard.walk_root(), guard.walk_half(), mem, start, end, ops) }
}

/// As [`walk_page_range_novma`], for paths that hold the lock without a guard in hand (e.g. an
/// exception handler reporting on the current address space). Checks the lock state with
/// [`Mm::assert_walk_locked`] in debug builds.
///
/// # Safety
/// The caller holds `mm`'s `mmap_lock` as [`WalkLock`] requires (read for the kernel, write
/// for a user mm) for the whole walk.
pub unsafe fn walk_page_range_novma_unguarded<K: MmKind, M: PhysMem, O: PageWalkOps>(
    mm: &Mm<K>,
    mem: &M,
    start: VirtAddr,
    end: VirtAddr,
    ops: &mut O,
) -> Result<Option<O::Output>, WalkError<O::Error>> {
    mm.assert_walk_locked();
    // SAFETY: the caller holds the lock; `Mm::new_*`'s contract covers the tables.
    unsafe { walk_root(mm.root(), mm.half(), mem, start, end, ops) }
}

/// # Safety
/// `root` and its tables are live table pages reachable through `mem` for the whole walk.
unsafe fn walk_root<M: PhysMem, O: PageWalkOps>(
    root: PhysAddr,
    half: VaHalf,
    mem: &M,
    start: VirtAddr,
    end: VirtAddr,
    ops: &mut O,
) -> Result<Option<O::Output>, WalkError<O::Error>> {
    let (s, e) =
        range_offsets(half, start, end).ok_or(WalkError::InvalidRange { start, end, half })?;
    let mut w = Walker { mem, ops, half };
    // SAFETY: forwarded from the caller.
    match unsafe { w.walk(root, Level::L0, s, e) } {
        Ok(ControlFlow::Break(v)) => Ok(Some(v)),
        Ok(ControlFlow::Continue(())) => Ok(None),
        Err(err) => Err(WalkError::Callback(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interests_below() {
        assert!(Interests::PTE.below(Level::L2));
        assert!(!Interests::PTE.below(Level::L3));
        assert!(!Interests::PMD.below(Level::L2));
        assert!(Interests::PMD.below(Level::L1));
        assert!(!(Interests::PGD | Interests::PUD).below(Level::L1));
        assert!(Interests::HOLE.below(Level::L2));
        assert!(Interests::ALL.contains(Interests::PMD | Interests::HOLE));
        assert_eq!(Interests::entry(Level::L2), Interests::PMD);
    }

    #[test]
    fn range_checks() {
        let u = VaHalf::Upper;
        assert_eq!(
            range_offsets(u, VirtAddr(0xFFFF_0000_0000_0000), VirtAddr(0)),
            Some((0, 1 << 48))
        );
        assert_eq!(range_offsets(u, VirtAddr(0x1000), VirtAddr(0x2000)), None);
        assert_eq!(
            range_offsets(VaHalf::Lower, VirtAddr(0), VirtAddr(1 << 48)),
            Some((0, 1 << 48))
        );
        assert_eq!(range_offsets(VaHalf::Lower, VirtAddr(0x2000), VirtAddr(0x1000)), None);
        assert_eq!(range_offsets(VaHalf::Lower, VirtAddr(0x1001), VirtAddr(0x2000)), None);
    }
}
