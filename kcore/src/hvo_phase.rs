//! Where HVO's time goes: a phase clock the benchmark turns on.
//!
//! Linux counterpart: none (Linux measures HVO from outside, with the allocation time of a whole
//! pool). Here the HVO core marks the phase it enters (check, split, remap, copy, TLB
//! maintenance, allocation, freeing to the allocator, grace period); when a clock is installed
//! ([`set_clock`], the firmware's benchmark installs the system counter), the time since the last
//! mark is added to the phase that was running. With no clock installed, a mark is one relaxed
//! load and a branch, and nothing is recorded.
//!
//! The accumulators are global: one HVO operation is timed at a time (the benchmark runs on one
//! core); concurrent operations would mix their figures, never corrupt memory.

use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};

/// A phase of an HVO operation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum HvoPhase {
    /// Checking the folios and walking their tables before anything changes.
    Check = 0,
    /// Splitting vmemmap blocks into page tables.
    Split,
    /// Walking and rewriting the vmemmap entries.
    Remap,
    /// Copying page 0 (optimize: into the new head frame; restore: into each tail frame).
    Copy,
    /// Barriers and TLB invalidation, and completing pending entries.
    Tlb,
    /// Taking frames and table pages from the allocators.
    Alloc,
    /// Giving frames and unused table pages back.
    Free,
    /// Waiting for the other CPUs' quiescent states.
    Grace,
}

/// Number of phases.
pub const NR_PHASES: usize = 8;

impl HvoPhase {
    /// Every phase, in index order.
    pub const ALL: [HvoPhase; NR_PHASES] = [
        HvoPhase::Check,
        HvoPhase::Split,
        HvoPhase::Remap,
        HvoPhase::Copy,
        HvoPhase::Tlb,
        HvoPhase::Alloc,
        HvoPhase::Free,
        HvoPhase::Grace,
    ];

    /// Short name.
    pub const fn name(self) -> &'static str {
        match self {
            HvoPhase::Check => "check",
            HvoPhase::Split => "split",
            HvoPhase::Remap => "remap",
            HvoPhase::Copy => "copy",
            HvoPhase::Tlb => "tlb",
            HvoPhase::Alloc => "alloc",
            HvoPhase::Free => "free",
            HvoPhase::Grace => "grace",
        }
    }
}

/// No phase running.
const IDLE: u8 = u8::MAX;

/// The clock, as a `fn() -> u64` pointer; 0 when none is installed.
static CLOCK: AtomicUsize = AtomicUsize::new(0);
static CURRENT: AtomicU8 = AtomicU8::new(IDLE);
static SINCE: AtomicU64 = AtomicU64::new(0);
static TICKS: [AtomicU64; NR_PHASES] = [const { AtomicU64::new(0) }; NR_PHASES];

/// Installs (or with `None` removes) the clock the phases are timed with.
pub fn set_clock(clock: Option<fn() -> u64>) {
    CURRENT.store(IDLE, Relaxed);
    CLOCK.store(clock.map_or(0, |f| f as usize), Relaxed);
}

#[inline]
fn clock() -> Option<fn() -> u64> {
    match CLOCK.load(Relaxed) {
        0 => None,
        // SAFETY: a non-zero value was stored by `set_clock` from a valid `fn() -> u64`, and
        // function pointers and `usize` have the same size on every target Rust supports.
        v => Some(unsafe { core::mem::transmute::<usize, fn() -> u64>(v) }),
    }
}

/// Marks the start of `phase` (ending the phase running, if any). Returns the phase that was
/// running, to go back to with [`resume`].
#[inline]
pub fn enter(phase: HvoPhase) -> Option<HvoPhase> {
    let clock = clock()?;
    let now = clock();
    let prev = CURRENT.swap(phase as u8, Relaxed);
    let since = SINCE.swap(now, Relaxed);
    let p = HvoPhase::ALL.get(prev as usize).copied();
    if let Some(p) = p {
        TICKS[p as usize].fetch_add(now.wrapping_sub(since), Relaxed);
    }
    p
}

/// Goes back to `prev` (from [`enter`]); `None` ends the timing as [`leave`] does.
#[inline]
pub fn resume(prev: Option<HvoPhase>) {
    match prev {
        Some(p) => {
            enter(p);
        }
        None => leave(),
    }
}

/// Ends the phase running (the operation is over).
#[inline]
pub fn leave() {
    if let Some(clock) = clock() {
        let now = clock();
        let prev = CURRENT.swap(IDLE, Relaxed);
        let since = SINCE.swap(now, Relaxed);
        if let Some(p) = HvoPhase::ALL.get(prev as usize) {
            TICKS[*p as usize].fetch_add(now.wrapping_sub(since), Relaxed);
        }
    }
}

/// The time accumulated per phase since the last call, in the clock's units (reset to 0).
pub fn take() -> [u64; NR_PHASES] {
    core::array::from_fn(|i| TICKS[i].swap(0, Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicU64;

    static T: AtomicU64 = AtomicU64::new(0);
    fn fake() -> u64 {
        T.fetch_add(10, Relaxed)
    }

    #[test]
    fn phases_accumulate_only_with_a_clock() {
        set_clock(None);
        assert_eq!(enter(HvoPhase::Check), None);
        leave();
        assert_eq!(take(), [0; NR_PHASES]);
        set_clock(Some(fake));
        enter(HvoPhase::Check); // t=0
        let prev = enter(HvoPhase::Copy); // t=10: check 10
        assert_eq!(prev, Some(HvoPhase::Check));
        resume(prev); // t=20: copy 10
        leave(); // t=30: check 20
        let t = take();
        assert_eq!(t[HvoPhase::Check as usize], 20);
        assert_eq!(t[HvoPhase::Copy as usize], 10);
        assert_eq!(take(), [0; NR_PHASES]);
        set_clock(None);
    }
}
