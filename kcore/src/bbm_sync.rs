//! How HVO coordinates with the other CPUs around its break-before-make windows.
//!
//! Linux counterpart: none that is merged. arm64 disabled HVO (commit 060a2c92d1b6) because
//! break-before-make on a live vmemmap entry leaves it invalid while other CPUs may read
//! descriptors through it; the proposals that followed differ exactly in what they do at the
//! hooks of [`BbmSync`]: `stop_machine()` around the operation, pausing the other CPUs with
//! (pseudo-NMI) IPIs around each break (Yu Zhao, 2024), or letting a fault on the vmemmap wait
//! for the update and retry (Nanyong Sun, 2024). The quiescent-state wait before freed frames
//! are reused is Linux's `synchronize_rcu()` in `mm/hugetlb_vmemmap.c` since v6.10 ("fix race
//! with speculative PFN walkers").
//!
//! The HVO core ([`crate::hugetlb_vmemmap::Hvo`]) calls the hooks; the firmware's strategies
//! implement them. Between `break_begin` and `break_end` the HVO core takes no lock and waits
//! for no IPI (a fault-wait strategy relies on it: a reader faulting on the window must never
//! wait for something the HVO core waits for).

use crate::addr::VirtAddr;

/// How HVO coordinates with the other CPUs around break-before-make windows (the hooks the
/// firmware's strategies implement: none / stop-machine / pause-window / fault-wait).
///
/// Window granularity: a block split is one window; the single-folio path is one window per
/// replaced entry; a batched pass is one window from its first invalid entry to its published
/// completion.
pub trait BbmSync {
    /// Before an HVO operation (optimize or restore of one folio or a batch, or split_folio)
    /// writes any live entry. stop-machine pauses the other cores here.
    fn op_begin(&mut self) {}
    /// Before the first live entry of one break window becomes invalid. `start..end` covers
    /// every vmemmap VA that may be invalid until `break_end` (a superset is fine).
    /// pause-window pauses the other cores here; fault-wait publishes the window here.
    fn break_begin(&mut self, start: VirtAddr, end: VirtAddr) {
        let _ = (start, end);
    }
    /// After the new entries of that window are written and published (DSB ISHST + ISB done).
    fn break_end(&mut self) {}
    /// Before frames that backed the vmemmap go back to the allocator: wait until every
    /// other CPU has passed a quiescent state (Linux's synchronize_rcu() in HVO, v6.10).
    fn grace_period(&mut self) {}
    /// After the operation (all entries valid, frames freed).
    fn op_end(&mut self) {}
}

/// No coordination (single core, host tests, and the `none` negative control).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSync;

impl BbmSync for NoSync {}

/// One event of a `RecordingSync`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SyncEvent {
    /// [`BbmSync::op_begin`].
    OpBegin,
    /// [`BbmSync::break_begin`] with its range.
    BreakBegin(VirtAddr, VirtAddr),
    /// [`BbmSync::break_end`].
    BreakEnd,
    /// [`BbmSync::grace_period`].
    GracePeriod,
    /// [`BbmSync::op_end`].
    OpEnd,
}

/// Records the hooks it is called with (host tests check where HVO calls them).
#[cfg(any(test, feature = "std"))]
#[derive(Clone, Debug, Default)]
pub struct RecordingSync {
    /// The calls, in order.
    pub events: std::vec::Vec<SyncEvent>,
}

#[cfg(any(test, feature = "std"))]
impl BbmSync for RecordingSync {
    fn op_begin(&mut self) {
        self.events.push(SyncEvent::OpBegin);
    }
    fn break_begin(&mut self, start: VirtAddr, end: VirtAddr) {
        self.events.push(SyncEvent::BreakBegin(start, end));
    }
    fn break_end(&mut self) {
        self.events.push(SyncEvent::BreakEnd);
    }
    fn grace_period(&mut self) {
        self.events.push(SyncEvent::GracePeriod);
    }
    fn op_end(&mut self) {
        self.events.push(SyncEvent::OpEnd);
    }
}
