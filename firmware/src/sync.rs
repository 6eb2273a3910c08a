//! Synchronisation for the firmware on four ARMv8.0 cores: a spin mutex (plain and IRQ-saving)
//! and a set-once cell.
//!
//! The Cortex-A72 has no LSE atomics (FEAT_LSE is ARMv8.1): with `-C target-cpu=cortex-a72`
//! (`.cargo/config.toml`) Rust's atomics compile to load-acquire / store-release exclusives, so
//! taking the lock is an `LDAXRB`/`STLXRB` loop and releasing it an `STLRB` (the on-target test
//! `sync_lock_codegen_exclusives` reads the instructions of [`SpinMutex::try_lock`] back and
//! checks for exactly that, and for the absence of any LSE `CAS`/`SWP`/`LD<op>`).
//!
//! Rules (Linux's): a plain [`SpinMutex::lock`] must never be taken in an interrupt handler (an
//! IRQ arriving while the same core holds it would spin forever); code that shares a lock with an
//! interrupt handler uses [`SpinMutex::lock_irqsave`] everywhere. `lock` panics when called
//! inside a handler. Each core counts the locks it holds (`percpu::PerCpu::locks_held`): the
//! fault-wait strategy counts the waits taken with a lock held (it handles them; why that is
//! safe is argued in `hvo_smp::fault_wait`).

use crate::arch::cpu;
use crate::percpu::this_cpu;
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Why a lock was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub enum LockError {
    /// A plain (not IRQ-saving) lock requested inside an interrupt handler.
    InIrq,
}

/// A spin lock guarding a `T`.
pub struct SpinMutex<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `locked`.
unsafe impl<T: Send> Sync for SpinMutex<T> {}
// SAFETY: moving the mutex moves the value; `T: Send` makes that fine.
unsafe impl<T: Send> Send for SpinMutex<T> {}

/// One attempt at the lock word: `LDAXRB`, compare, `STLXRB` (acquire on success). Kept out of
/// line so the codegen test can find its instructions.
#[inline(never)]
pub fn raw_try_lock(word: &AtomicBool) -> bool {
    word.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok()
}

impl<T> SpinMutex<T> {
    /// A mutex holding `value`.
    pub const fn new(value: T) -> Self {
        SpinMutex { locked: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    fn acquire(&self) {
        while !raw_try_lock(&self.locked) {
            // Wait with plain loads until the lock looks free (no exclusive traffic while
            // another core holds it), then try again.
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
        this_cpu().locks_held.fetch_add(1, Ordering::Relaxed);
    }

    /// Spins until the lock is free, then holds it.
    ///
    /// # Panics
    /// Inside an interrupt handler (use [`SpinMutex::lock_irqsave`] for locks shared with one).
    pub fn lock(&self) -> SpinGuard<'_, T> {
        match self.lock_checked() {
            Ok(g) => g,
            Err(LockError::InIrq) => {
                panic!("plain spin lock taken in an interrupt handler: use lock_irqsave")
            }
        }
    }

    /// [`SpinMutex::lock`], but refusing with an error inside an interrupt handler instead of
    /// panicking.
    pub fn lock_checked(&self) -> Result<SpinGuard<'_, T>, LockError> {
        if this_cpu().in_irq() {
            return Err(LockError::InIrq);
        }
        self.acquire();
        Ok(SpinGuard { m: self, daif: None })
    }

    /// Masks IRQs on this core, then takes the lock; both are undone when the guard drops (IRQs
    /// back to their state before the call). Usable in and out of interrupt handlers.
    pub fn lock_irqsave(&self) -> SpinGuard<'_, T> {
        let daif = cpu::mask_irqs();
        self.acquire();
        SpinGuard { m: self, daif: Some(daif) }
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        if raw_try_lock(&self.locked) {
            this_cpu().locks_held.fetch_add(1, Ordering::Relaxed);
            Some(SpinGuard { m: self, daif: None })
        } else {
            None
        }
    }

    /// Is the lock held (by anyone) right now?
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }
}

/// Holds a [`SpinMutex`].
pub struct SpinGuard<'a, T> {
    m: &'a SpinMutex<T>,
    /// DAIF to restore after unlocking (`lock_irqsave`).
    daif: Option<u64>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock.
        unsafe { &*self.m.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock exclusively.
        unsafe { &mut *self.m.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        this_cpu().locks_held.fetch_sub(1, Ordering::Relaxed);
        // STLRB: every access made under the lock is ordered before the release.
        self.m.locked.store(false, Ordering::Release);
        if let Some(daif) = self.daif {
            cpu::restore_irqs(daif);
        }
    }
}

/// A value set once at boot and read-only afterwards.
pub struct InitOnce<T> {
    state: AtomicU8,
    value: UnsafeCell<Option<T>>,
}

// SAFETY: the value is written once before `state` becomes READY (release) and only read after
// observing READY (acquire).
unsafe impl<T: Send + Sync> Sync for InitOnce<T> {}

const EMPTY: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;

impl<T> InitOnce<T> {
    /// An empty cell.
    pub const fn new() -> Self {
        InitOnce { state: AtomicU8::new(EMPTY), value: UnsafeCell::new(None) }
    }

    /// Stores `value`; panics if already set.
    pub fn set(&self, value: T) -> &T {
        assert!(
            self.state.compare_exchange(EMPTY, BUSY, Ordering::Acquire, Ordering::Relaxed).is_ok(),
            "InitOnce set twice"
        );
        // SAFETY: BUSY gives this caller exclusive access until READY is published.
        unsafe { *self.value.get() = Some(value) };
        self.state.store(READY, Ordering::Release);
        self.get().expect("just set")
    }

    /// The value, once set.
    pub fn get(&self) -> Option<&T> {
        if self.state.load(Ordering::Acquire) == READY {
            // SAFETY: READY means the value is written and never written again.
            unsafe { (*self.value.get()).as_ref() }
        } else {
            None
        }
    }
}

impl<T> Default for InitOnce<T> {
    fn default() -> Self {
        Self::new()
    }
}
