//! Address spaces (`mm`) and their `mmap_lock`.
//!
//! An [`Mm`] is a translation table root, an ASID and a reader-writer lock, the `mmap_lock`.
//! Two kinds exist, as type parameters:
//! - [`Kernel`]: `init_mm`, installed in `TTBR1_EL1`, upper-half VAs, global mappings;
//! - [`User`]: a user address space, installed in `TTBR0_EL1` with its ASID, lower-half VAs,
//!   non-global mappings.
//!
//! # Which lock a page-table walk needs
//!
//! The rule, from the Linux patch this project demonstrates (`walk_page_range_novma()` and its
//! lockdep assertion): kernel page tables (`init_mm`) may be walked holding `mmap_lock` for
//! read; a user address space walked without VMAs needs it for write, because `munmap()`
//! detaches the VMAs and then *downgrades* to read before it frees page tables, so holding the
//! lock for read does not keep the tables alive. The sealed trait [`WalkLock`] encodes this: it
//! is implemented only for `MmapReadGuard<'_, Kernel>`, `MmapWriteGuard<'_, Kernel>` and
//! `MmapWriteGuard<'_, User>`, so walking a user mm under a read guard does not compile. Paths
//! the types cannot see use [`Mm::assert_walk_locked`].

use crate::addr::{PhysAddr, VirtAddr};
use crate::mapper::{self, BlockPolicy, FrameAlloc, MapError, MapRequest, MapStats, UnmapStats};
use crate::pgtable::{Attrs, VaHalf};
use crate::phys::PhysMem;
use crate::tlb::{MmuOps, TlbScope};
use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::Deref;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// A writer-preferring reader-writer spinlock for `no_std`.
///
/// State word: bit 31 = held for write, bit 30 = a writer is waiting (new readers back off),
/// bits 0..30 = number of readers.
pub struct RwSpinLock<T: ?Sized> {
    state: AtomicU32,
    data: UnsafeCell<T>,
}

const WRITER: u32 = 1 << 31;
const WRITER_WAITING: u32 = 1 << 30;
const READERS: u32 = WRITER_WAITING - 1;

// SAFETY: the lock hands out `&T` to several threads (needs `T: Sync`) and `&mut T` to one at a
// time (needs `T: Send`), like `std::sync::RwLock`.
unsafe impl<T: ?Sized + Send + Sync> Sync for RwSpinLock<T> {}
// SAFETY: moving the lock moves the `T`.
unsafe impl<T: ?Sized + Send> Send for RwSpinLock<T> {}

impl<T> RwSpinLock<T> {
    /// An unlocked lock around `data`.
    pub const fn new(data: T) -> Self {
        RwSpinLock { state: AtomicU32::new(0), data: UnsafeCell::new(data) }
    }
}

impl<T: ?Sized> RwSpinLock<T> {
    /// Takes the lock for read, spinning while it is held or wanted for write.
    pub fn read(&self) -> RwReadGuard<'_, T> {
        loop {
            if let Some(g) = self.try_read() {
                return g;
            }
            core::hint::spin_loop();
        }
    }

    /// Takes the lock for read if no writer holds or waits for it.
    pub fn try_read(&self) -> Option<RwReadGuard<'_, T>> {
        let s = self.state.load(Ordering::Relaxed);
        if s & (WRITER | WRITER_WAITING) != 0 || s & READERS == READERS {
            return None;
        }
        self.state
            .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| RwReadGuard { lock: self })
    }

    /// Takes the lock for write, spinning; announces itself so that new readers wait.
    pub fn write(&self) -> RwWriteGuard<'_, T> {
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & (WRITER | READERS) == 0 {
                // Clears WRITER_WAITING too; other waiting writers set it again.
                if self
                    .state
                    .compare_exchange_weak(s, WRITER, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return RwWriteGuard { lock: self };
                }
            } else if s & WRITER_WAITING == 0 {
                self.state.fetch_or(WRITER_WAITING, Ordering::Relaxed);
            }
            core::hint::spin_loop();
        }
    }

    /// Takes the lock for write if it is free.
    pub fn try_write(&self) -> Option<RwWriteGuard<'_, T>> {
        let s = self.state.load(Ordering::Relaxed);
        if s & (WRITER | READERS) != 0 {
            return None;
        }
        self.state
            .compare_exchange(s, WRITER, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| RwWriteGuard { lock: self })
    }

    /// Is the lock held for write (by anyone)?
    pub fn is_write_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) & WRITER != 0
    }

    /// Number of readers holding the lock.
    pub fn reader_count(&self) -> u32 {
        self.state.load(Ordering::Relaxed) & READERS
    }

    /// Is the lock held at all?
    pub fn is_locked(&self) -> bool {
        self.is_write_locked() || self.reader_count() != 0
    }
}

/// Shared access to the data of a [`RwSpinLock`].
pub struct RwReadGuard<'a, T: ?Sized> {
    lock: &'a RwSpinLock<T>,
}

impl<T: ?Sized> Deref for RwReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: readers only get `&T`, and no writer exists while a read guard lives.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for RwReadGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.state.fetch_sub(1, Ordering::Release);
    }
}

/// Exclusive access to the data of a [`RwSpinLock`].
pub struct RwWriteGuard<'a, T: ?Sized> {
    lock: &'a RwSpinLock<T>,
}

impl<'a, T: ?Sized> RwWriteGuard<'a, T> {
    /// Turns the write lock into a read lock without letting another writer in between.
    pub fn downgrade(self) -> RwReadGuard<'a, T> {
        let lock = self.lock;
        core::mem::forget(self);
        // WRITER -> one reader, keeping WRITER_WAITING.
        lock.state.fetch_add(1u32.wrapping_sub(WRITER), Ordering::Release);
        RwReadGuard { lock }
    }
}

impl<T: ?Sized> Deref for RwWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the write guard is the only guard.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> core::ops::DerefMut for RwWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the write guard is the only guard, and `&mut self` makes this borrow unique.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for RwWriteGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.state.fetch_and(!WRITER, Ordering::Release);
    }
}

/// A plain spin lock with no data: Linux's `spinlock_t` as `init_mm.page_table_lock` uses it.
///
/// On ARMv8.0 (no LSE) the compare-and-swap below compiles to a load-acquire-exclusive /
/// store-exclusive loop; the unlock is a store-release. Acquire on lock and release on unlock
/// order the table reads and writes made under the lock with those of the previous holder.
#[derive(Debug, Default)]
pub struct SpinLock {
    locked: AtomicBool,
}

impl SpinLock {
    /// An unlocked lock.
    pub const fn new() -> Self {
        SpinLock { locked: AtomicBool::new(false) }
    }

    /// Takes the lock, spinning while it is held.
    pub fn lock(&self) -> SpinGuard<'_> {
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> Option<SpinGuard<'_>> {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SpinGuard { lock: self })
    }

    /// Is the lock held (by anyone)?
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }
}

/// A held [`SpinLock`]; released when dropped.
#[derive(Debug)]
pub struct SpinGuard<'a> {
    lock: &'a SpinLock,
}

impl Drop for SpinGuard<'_> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

mod sealed {
    /// Seals [`super::MmKind`].
    pub trait Kind {}
    /// Seals [`super::WalkLock`]: only the guards this module names may walk.
    pub trait Lock {}
}

/// The kind of an address space: [`Kernel`] or [`User`]. Sealed.
pub trait MmKind: sealed::Kind + 'static {
    /// The VA half the address space lives in.
    const HALF: VaHalf;
    /// Are its mappings global (not tagged with an ASID)?
    const GLOBAL: bool;
    /// Name for logs.
    const NAME: &'static str;
}

/// `init_mm`: the kernel map, `TTBR1_EL1`, global mappings.
#[derive(Debug)]
pub enum Kernel {}
/// A user address space: `TTBR0_EL1` + ASID, non-global mappings.
#[derive(Debug)]
pub enum User {}

impl sealed::Kind for Kernel {}
impl sealed::Kind for User {}
impl MmKind for Kernel {
    const HALF: VaHalf = VaHalf::Upper;
    const GLOBAL: bool = true;
    const NAME: &'static str = "init_mm";
}
impl MmKind for User {
    const HALF: VaHalf = VaHalf::Lower;
    const GLOBAL: bool = false;
    const NAME: &'static str = "user mm";
}

/// An address space: translation table root, ASID, `mmap_lock`, `page_table_lock`.
pub struct Mm<K: MmKind> {
    root: PhysAddr,
    asid: u16,
    mmap_lock: RwSpinLock<()>,
    page_table_lock: SpinLock,
    _kind: PhantomData<K>,
}

impl Mm<Kernel> {
    /// `init_mm` over the (zeroed or already built) table page `root`.
    ///
    /// # Safety
    /// `root` must be a translation table page owned by this address space, and every
    /// [`PhysMem`] later passed with this mm (to walks, maps, translations) must reach it and
    /// every table linked from it. Only one `Mm` may own a given root.
    pub const unsafe fn new_kernel(root: PhysAddr) -> Self {
        Mm {
            root,
            asid: 0,
            mmap_lock: RwSpinLock::new(()),
            page_table_lock: SpinLock::new(),
            _kind: PhantomData,
        }
    }
}

impl Mm<User> {
    /// A user address space with table root `root` and `asid`.
    ///
    /// # Safety
    /// As for [`Mm::new_kernel`]; besides, no other live address space may use `asid`.
    pub const unsafe fn new_user(root: PhysAddr, asid: u16) -> Self {
        Mm {
            root,
            asid,
            mmap_lock: RwSpinLock::new(()),
            page_table_lock: SpinLock::new(),
            _kind: PhantomData,
        }
    }
}

impl<K: MmKind> Mm<K> {
    /// Translation for the guards' `translate`: they hold the lock, which keeps the tables alive.
    fn translate_locked(
        &self,
        mem: &impl PhysMem,
        va: VirtAddr,
    ) -> Option<(PhysAddr, Attrs, crate::pgtable::Level)> {
        if VaHalf::of(va) != Some(K::HALF) {
            return None;
        }
        // SAFETY: `Mm::new_*`'s contract: the root and its tables are reachable through `mem`;
        // the caller (a guard) holds mmap_lock, which keeps them from being freed.
        unsafe { mapper::translate(self.root, mem, va) }
    }

    /// The root table's physical address (what goes in the TTBR's BADDR field).
    pub const fn root(&self) -> PhysAddr {
        self.root
    }

    /// The ASID (0 for the kernel).
    pub const fn asid(&self) -> u16 {
        self.asid
    }

    /// The VA half this address space covers.
    pub const fn half(&self) -> VaHalf {
        K::HALF
    }

    /// The TLB invalidation scope for this address space's mappings.
    pub const fn tlb_scope(&self) -> TlbScope {
        if K::GLOBAL {
            TlbScope::AllAsids
        } else {
            TlbScope::Asid(self.asid)
        }
    }

    /// The value for `TTBRx_EL1`: root table address and, for a user mm, the ASID in
    /// bits `[63:48]`.
    pub const fn ttbr(&self) -> u64 {
        self.root.0 | ((self.asid as u64) << 48)
    }

    /// Takes `mmap_lock` for read.
    pub fn mmap_read(&self) -> MmapReadGuard<'_, K> {
        MmapReadGuard { mm: self, _g: self.mmap_lock.read() }
    }

    /// Takes `mmap_lock` for write.
    pub fn mmap_write(&self) -> MmapWriteGuard<'_, K> {
        MmapWriteGuard { mm: self, _g: self.mmap_lock.write() }
    }

    /// Is `mmap_lock` held in a way that allows walking this mm's tables: for write for a user
    /// mm, at all for the kernel's? (It cannot tell *who* holds it.)
    pub fn walk_locked(&self) -> bool {
        if K::GLOBAL {
            self.mmap_lock.is_locked()
        } else {
            self.mmap_lock.is_write_locked()
        }
    }

    /// Debug check for paths the type system cannot see: panics (in debug builds) unless
    /// [`Mm::walk_locked`].
    #[track_caller]
    pub fn assert_walk_locked(&self) {
        debug_assert!(self.walk_locked(), "{} walked without the mmap_lock it needs", K::NAME);
    }

    /// The lock itself, for diagnostics.
    pub fn mmap_lock(&self) -> &RwSpinLock<()> {
        &self.mmap_lock
    }

    /// Takes the address space's `page_table_lock` (Linux's `mm->page_table_lock`; for
    /// `init_mm`, what `vmemmap_split_pmd()` holds while it re-checks and replaces a level-2
    /// entry). Walkers holding `mmap_lock` for read may run concurrently with each other; a
    /// check-then-write on a live entry they share is made under this lock: re-read the entry,
    /// write only if it is still what was checked.
    pub fn page_table_lock(&self) -> SpinGuard<'_> {
        self.page_table_lock.lock()
    }

    /// Is `page_table_lock` held (by anyone)? For assertions.
    pub fn page_table_locked(&self) -> bool {
        self.page_table_lock.is_locked()
    }
}

/// `mmap_lock` held for read.
pub struct MmapReadGuard<'a, K: MmKind> {
    mm: &'a Mm<K>,
    _g: RwReadGuard<'a, ()>,
}

/// `mmap_lock` held for write.
pub struct MmapWriteGuard<'a, K: MmKind> {
    mm: &'a Mm<K>,
    _g: RwWriteGuard<'a, ()>,
}

impl<'a, K: MmKind> MmapReadGuard<'a, K> {
    /// The address space.
    pub fn mm(&self) -> &'a Mm<K> {
        self.mm
    }
}

impl MmapReadGuard<'_, Kernel> {
    /// Software translation of `va` (see [`mapper::translate`]). Only for `init_mm`: a
    /// translation walks the tables, and a user address space's tables may be freed under a
    /// read hold (`munmap()` downgrades before freeing them), so a user mm translates through
    /// [`MmapWriteGuard::translate`], like every other walk of it.
    pub fn translate(
        &self,
        mem: &impl PhysMem,
        va: VirtAddr,
    ) -> Option<(PhysAddr, Attrs, crate::pgtable::Level)> {
        self.mm.translate_locked(mem, va)
    }
}

impl<'a, K: MmKind> MmapWriteGuard<'a, K> {
    /// The address space.
    pub fn mm(&self) -> &'a Mm<K> {
        self.mm
    }

    /// Downgrades to a read lock with no writer in between (Linux `mmap_write_downgrade`).
    pub fn downgrade(self) -> MmapReadGuard<'a, K> {
        MmapReadGuard { mm: self.mm, _g: self._g.downgrade() }
    }

    /// Software translation of `va` (see [`mapper::translate`]).
    pub fn translate(
        &self,
        mem: &impl PhysMem,
        va: VirtAddr,
    ) -> Option<(PhysAddr, Attrs, crate::pgtable::Level)> {
        self.mm.translate_locked(mem, va)
    }

    fn check_half(&self, req: MapRequest) -> Result<(), MapError> {
        match VaHalf::of(req.va) {
            Some(h) if h == K::HALF => Ok(()),
            _ => Err(MapError::WrongHalf { req, expected: K::HALF }),
        }
    }

    /// Maps `[va, va + size)` to `pa` (see [`mapper::map_range`]). The nG bit is forced to
    /// match the kind: global for the kernel, non-global for a user mm.
    #[allow(clippy::too_many_arguments)]
    pub fn map_range(
        &mut self,
        mem: &impl PhysMem,
        alloc: &mut impl FrameAlloc,
        mmu: &mut impl MmuOps,
        va: VirtAddr,
        pa: PhysAddr,
        size: u64,
        attrs: Attrs,
        policy: BlockPolicy,
    ) -> Result<MapStats, MapError> {
        self.check_half(MapRequest { va, pa: Some(pa), size })?;
        let attrs = attrs.with_ng(!K::GLOBAL);
        // SAFETY: `Mm::new_*`'s contract makes the root and its tables reachable through `mem`;
        // we hold mmap_lock for write. Adding a mapping cannot invalidate existing references.
        unsafe { mapper::map_range(self.mm.root, mem, alloc, mmu, va, pa, size, attrs, policy) }
    }

    /// Unmaps `[va, va + size)` (see [`mapper::unmap_range`]), invalidating with this mm's TLB
    /// scope.
    ///
    /// # Safety
    /// Nothing may still use the memory mapped at `[va, va + size)`.
    pub unsafe fn unmap_range(
        &mut self,
        mem: &impl PhysMem,
        alloc: &mut impl FrameAlloc,
        mmu: &mut impl MmuOps,
        va: VirtAddr,
        size: u64,
    ) -> Result<UnmapStats, MapError> {
        self.check_half(MapRequest { va, pa: None, size })?;
        let scope = self.mm.tlb_scope();
        // SAFETY: as in `map_range`; the caller guarantees the range is no longer in use.
        unsafe { mapper::unmap_range(self.mm.root, mem, alloc, mmu, va, size, scope) }
    }
}

/// A lock guard under which an address space's page tables may be walked without VMAs. Sealed:
/// implemented only for `MmapReadGuard<'_, Kernel>`, `MmapWriteGuard<'_, Kernel>` and
/// `MmapWriteGuard<'_, User>` (see the module documentation for why a user mm needs write).
pub trait WalkLock: sealed::Lock {
    /// The root table of the locked address space.
    fn walk_root(&self) -> PhysAddr;
    /// The VA half the address space covers.
    fn walk_half(&self) -> VaHalf;
}

impl sealed::Lock for MmapReadGuard<'_, Kernel> {}
impl sealed::Lock for MmapWriteGuard<'_, Kernel> {}
impl sealed::Lock for MmapWriteGuard<'_, User> {}

impl WalkLock for MmapReadGuard<'_, Kernel> {
    fn walk_root(&self) -> PhysAddr {
        self.mm.root
    }
    fn walk_half(&self) -> VaHalf {
        VaHalf::Upper
    }
}
impl WalkLock for MmapWriteGuard<'_, Kernel> {
    fn walk_root(&self) -> PhysAddr {
        self.mm.root
    }
    fn walk_half(&self) -> VaHalf {
        VaHalf::Upper
    }
}
impl WalkLock for MmapWriteGuard<'_, User> {
    fn walk_root(&self) -> PhysAddr {
        self.mm.root
    }
    fn walk_half(&self) -> VaHalf {
        VaHalf::Lower
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rwlock_states() {
        let l = RwSpinLock::new(5);
        {
            let a = l.read();
            let b = l.try_read().unwrap();
            assert_eq!(*a + *b, 10);
            assert_eq!(l.reader_count(), 2);
            assert!(l.try_write().is_none());
        }
        {
            let mut w = l.write();
            *w = 7;
            assert!(l.is_write_locked());
            assert!(l.try_read().is_none());
            let r = w.downgrade();
            assert!(!l.is_write_locked());
            assert_eq!(*r, 7);
            assert_eq!(l.reader_count(), 1);
            assert!(l.try_write().is_none());
        }
        assert!(!l.is_locked());
    }

    #[test]
    fn writer_waiting_blocks_new_readers() {
        extern crate std;
        use std::sync::Arc;
        let l = Arc::new(RwSpinLock::new(0u32));
        let r = l.read();
        let l2 = Arc::clone(&l);
        let t = std::thread::spawn(move || {
            *l2.write() += 1;
        });
        while l.state.load(Ordering::Relaxed) & WRITER_WAITING == 0 {
            std::thread::yield_now();
        }
        assert!(l.try_read().is_none(), "a waiting writer must hold off new readers");
        drop(r);
        t.join().unwrap();
        assert_eq!(*l.read(), 1);
    }

    #[test]
    fn walk_lock_runtime_check() {
        // SAFETY: the root is never dereferenced in this test.
        let k = unsafe { Mm::new_kernel(PhysAddr(0x1000)) };
        // SAFETY: as above.
        let u = unsafe { Mm::new_user(PhysAddr(0x2000), 7) };
        assert!(!k.walk_locked() && !u.walk_locked());
        let kr = k.mmap_read();
        assert!(k.walk_locked());
        k.assert_walk_locked();
        drop(kr);
        let ur = u.mmap_read();
        assert!(!u.walk_locked(), "a user mm needs mmap_lock for write");
        drop(ur);
        let uw = u.mmap_write();
        u.assert_walk_locked();
        assert_eq!(uw.mm().tlb_scope(), TlbScope::Asid(7));
        assert_eq!(u.ttbr(), 0x0007_0000_0000_2000);
        assert_eq!(k.tlb_scope(), TlbScope::AllAsids);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "without the mmap_lock")]
    fn assert_walk_locked_panics() {
        // SAFETY: the root is never dereferenced in this test.
        let u = unsafe { Mm::new_user(PhysAddr(0x2000), 7) };
        let _r = u.mmap_read();
        u.assert_walk_locked();
    }
}
