//! HVO on four cores: readers on cores 1-3, the break-before-make strategies, the grace period
//! and the stress test (issue 9).
//!
//! - [`readers`]: the two kinds of descriptor readers Linux has, run on cores 1-3: PFN walkers
//!   (head / tail / compound head of any pfn, like compaction's scanners) and speculative
//!   reference takers (`folio_try_get()` on a looked-up folio, re-check, put), both with
//!   ordinary loads, a quiescent point between operations, answers checked against the pool's
//!   folio layout.
//! - [`strategy`]: `hvo_bbm=none|stop-machine|pause-window|fault-wait`, each a complete
//!   `BbmSync` for kcore's HVO; [`pause`] is the IPI rendezvous, [`fault_wait`] the windows and
//!   the fault hook; [`grace`] the quiescent-state grace period before freed frames are reused.
//! - [`stress`]: core 0 loops optimize / verify every pfn / restore while the readers run, per
//!   strategy, and prints `result: smp ...`; plus two cores doing HVO at once on folios whose
//!   descriptors share one vmemmap block.
//!
//! [`Counters`] is what the strategies cost, counted where it happens.

pub mod fault_wait;
pub mod grace;
pub mod pause;
pub mod readers;
pub mod strategy;
pub mod stress;

use core::sync::atomic::{AtomicU64, Ordering};
pub use kcore::cmdline::HvoBbm;

/// What the strategies did, counted where it happens (all cores).
pub struct Counters {
    /// SGIs sent to hold other cores.
    pub ipis: AtomicU64,
    /// Rendezvous requested.
    pub pauses: AtomicU64,
    /// Rendezvous where a core did not arrive in time.
    pub pause_timeouts: AtomicU64,
    /// Timer ticks cores spent held in the rendezvous (summed over cores).
    pub held_ticks: AtomicU64,
    /// Break windows opened (all strategies).
    pub windows: AtomicU64,
    /// vmemmap faults that waited for a window and retried.
    pub faults_waited: AtomicU64,
    /// The longest of those waits, in timer ticks.
    pub longest_wait: AtomicU64,
    /// Waits taken with interrupts masked.
    pub waited_irqs_masked: AtomicU64,
    /// Waits taken with a spinlock held.
    pub waited_lock_held: AtomicU64,
    /// vmemmap faults no window explains.
    pub unexpected_faults: AtomicU64,
    /// Faults on the faulting core's own window, refused.
    pub refused_faults: AtomicU64,
}

/// The counters.
pub static COUNTERS: Counters = Counters {
    ipis: AtomicU64::new(0),
    pauses: AtomicU64::new(0),
    pause_timeouts: AtomicU64::new(0),
    held_ticks: AtomicU64::new(0),
    windows: AtomicU64::new(0),
    faults_waited: AtomicU64::new(0),
    longest_wait: AtomicU64::new(0),
    waited_irqs_masked: AtomicU64::new(0),
    waited_lock_held: AtomicU64::new(0),
    unexpected_faults: AtomicU64::new(0),
    refused_faults: AtomicU64::new(0),
};

/// A copy of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub struct CounterValues {
    /// See [`Counters::ipis`].
    pub ipis: u64,
    /// See [`Counters::pauses`].
    pub pauses: u64,
    /// See [`Counters::pause_timeouts`].
    pub pause_timeouts: u64,
    /// See [`Counters::held_ticks`].
    pub held_ticks: u64,
    /// See [`Counters::windows`].
    pub windows: u64,
    /// See [`Counters::faults_waited`].
    pub faults_waited: u64,
    /// See [`Counters::longest_wait`].
    pub longest_wait: u64,
    /// See [`Counters::waited_irqs_masked`].
    pub waited_irqs_masked: u64,
    /// See [`Counters::waited_lock_held`].
    pub waited_lock_held: u64,
    /// See [`Counters::unexpected_faults`].
    pub unexpected_faults: u64,
    /// See [`Counters::refused_faults`].
    pub refused_faults: u64,
}

impl Counters {
    fn all(&self) -> [&AtomicU64; 11] {
        [
            &self.ipis,
            &self.pauses,
            &self.pause_timeouts,
            &self.held_ticks,
            &self.windows,
            &self.faults_waited,
            &self.longest_wait,
            &self.waited_irqs_masked,
            &self.waited_lock_held,
            &self.unexpected_faults,
            &self.refused_faults,
        ]
    }

    /// Zeroes every counter.
    pub fn reset(&self) {
        for c in self.all() {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Reads every counter.
    pub fn read(&self) -> CounterValues {
        let v = self.all().map(|c| c.load(Ordering::Acquire));
        CounterValues {
            ipis: v[0],
            pauses: v[1],
            pause_timeouts: v[2],
            held_ticks: v[3],
            windows: v[4],
            faults_waited: v[5],
            longest_wait: v[6],
            waited_irqs_masked: v[7],
            waited_lock_held: v[8],
            unexpected_faults: v[9],
            refused_faults: v[10],
        }
    }
}
