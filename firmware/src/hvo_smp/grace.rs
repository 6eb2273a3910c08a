//! Quiescent states, and the grace period HVO waits for before vmemmap frames it unmapped go
//! back to the allocator: a minimal RCU (Linux: `synchronize_rcu()` in
//! `mm/hugetlb_vmemmap.c` since v6.10, "fix race with speculative PFN walkers").
//!
//! A reader marks each operation on descriptors as a read-side section ([`read_lock`] /
//! [`read_unlock`]): inside it, it computes descriptor addresses and reads (or speculatively
//! writes) through them. Leaving the section is a quiescent point: the core holds no address
//! computed before. [`synchronize`] returns once every other core that was inside a section
//! when it was called has left it. Sections run with interrupts masked (like Linux's
//! `rcu_read_lock()` with preemption off), so a core held in a stop-machine or pause-window
//! rendezvous is always between sections: quiescent.
//!
//! Ordering is the store-buffering pattern with a full barrier on each side: the reader stores
//! `in_section = true` then `DMB ISH` then reads descriptors; the updater has completed its
//! unmap (DSB ISH after the TLBIs) and runs `DMB ISH` before loading `in_section`. Either the
//! updater sees the reader inside, and waits for its next quiescent point, or the reader's
//! loads come after the unmap and cannot reach the old frames.

use crate::drivers::timer;
use core::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use kcore::layout::MAX_CPUS;

#[repr(align(64))]
struct Slot {
    /// Quiescent points passed.
    qs: AtomicU64,
    /// Inside a read-side section.
    in_section: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const SLOT: Slot = Slot { qs: AtomicU64::new(0), in_section: AtomicBool::new(false) };
static SLOTS: [Slot; MAX_CPUS] = [SLOT; MAX_CPUS];

/// Grace periods waited for, and the timer ticks they took (all cores).
pub static GRACE_PERIODS: AtomicU64 = AtomicU64::new(0);
/// Timer ticks spent in [`synchronize`].
pub static GRACE_TICKS: AtomicU64 = AtomicU64::new(0);

/// Enters a read-side section on `cpu` (the caller's own core).
#[inline]
pub fn read_lock(cpu: usize) {
    SLOTS[cpu].in_section.store(true, Ordering::Relaxed);
    // DMB ISH: the flag is visible before any descriptor load of the section (pairs with the
    // fence in `synchronize`).
    fence(Ordering::SeqCst);
}

/// Leaves the section: a quiescent point.
#[inline]
pub fn read_unlock(cpu: usize) {
    let s = &SLOTS[cpu];
    // Release: every load of the section is complete before the updater can see it left.
    s.in_section.store(false, Ordering::Release);
    s.qs.fetch_add(1, Ordering::Release);
}

/// A quiescent point outside any section (a rendezvous loop, an idle loop).
#[inline]
pub fn quiescent(cpu: usize) {
    SLOTS[cpu].qs.fetch_add(1, Ordering::Release);
}

/// Waits until every other core that is inside a read-side section now has passed a quiescent
/// point. Returns the timer ticks it took. Never called inside a section; takes no lock.
pub fn synchronize(me: usize) -> u64 {
    let t0 = timer::ticks();
    // DMB ISH: the caller's unmap (completed by its DSB ISH) is ordered before the loads below.
    fence(Ordering::SeqCst);
    let mut snap = [None; MAX_CPUS];
    for (cpu, s) in SLOTS.iter().enumerate() {
        if cpu != me && s.in_section.load(Ordering::Acquire) {
            snap[cpu] = Some(s.qs.load(Ordering::Acquire));
        }
    }
    for (cpu, q) in snap.iter().enumerate() {
        if let Some(q) = *q {
            while SLOTS[cpu].qs.load(Ordering::Acquire) == q {
                core::hint::spin_loop();
            }
        }
    }
    fence(Ordering::SeqCst);
    let dt = timer::ticks() - t0;
    GRACE_PERIODS.fetch_add(1, Ordering::Relaxed);
    GRACE_TICKS.fetch_add(dt, Ordering::Relaxed);
    dt
}

/// Zeroes the grace-period counters (start of a measured run).
pub fn reset_counters() {
    GRACE_PERIODS.store(0, Ordering::Relaxed);
    GRACE_TICKS.store(0, Ordering::Relaxed);
}
