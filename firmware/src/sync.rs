//! Minimal synchronisation for the firmware: a spin mutex and a set-once cell.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// A spin lock guarding a `T`.
pub struct SpinMutex<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `locked`.
unsafe impl<T: Send> Sync for SpinMutex<T> {}
// SAFETY: moving the mutex moves the value; `T: Send` makes that fine.
unsafe impl<T: Send> Send for SpinMutex<T> {}

impl<T> SpinMutex<T> {
    /// A mutex holding `value`.
    pub const fn new(value: T) -> Self {
        SpinMutex { locked: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    /// Spins until the lock is free, then holds it.
    pub fn lock(&self) -> SpinGuard<'_, T> {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        SpinGuard { m: self }
    }
}

/// Holds a [`SpinMutex`].
pub struct SpinGuard<'a, T> {
    m: &'a SpinMutex<T>,
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
        self.m.locked.store(false, Ordering::Release);
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
