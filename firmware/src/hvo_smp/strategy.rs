//! The four break-before-make strategies, each a complete [`BbmSync`] for kcore's HVO:
//!
//! | strategy | `op_begin` / `op_end` | `break_begin` / `break_end` | `grace_period` |
//! |---|---|---|---|
//! | `none` | - | - | - |
//! | `stop-machine` | hold / release the other cores | - | wait for quiescent states |
//! | `pause-window` | - | hold / release the other cores | wait for quiescent states |
//! | `fault-wait` | - | open / close this core's window | wait for quiescent states |
//!
//! `none` is today's single-core sequence with readers running: the negative control. The
//! grace period is part of the coordination, so `none` skips it too.

use super::{fault_wait, grace, pause, COUNTERS};
use core::sync::atomic::Ordering;
use kcore::addr::VirtAddr;
use kcore::cmdline::HvoBbm;
use kcore::hugetlb_vmemmap::BbmSync;

/// A strategy bound to the core running HVO.
pub struct SmpSync {
    strategy: HvoBbm,
    cpu: usize,
    op: Option<pause::Paused>,
    window: Option<pause::Paused>,
}

impl SmpSync {
    /// `strategy` for HVO running on this core.
    pub fn new(strategy: HvoBbm) -> Self {
        SmpSync { strategy, cpu: crate::percpu::this_cpu().id, op: None, window: None }
    }
}

impl BbmSync for SmpSync {
    fn op_begin(&mut self) {
        if self.strategy == HvoBbm::StopMachine {
            self.op = Some(pause::pause_others(self.cpu));
        }
    }

    fn break_begin(&mut self, start: VirtAddr, end: VirtAddr) {
        COUNTERS.windows.fetch_add(1, Ordering::Relaxed);
        match self.strategy {
            HvoBbm::PauseWindow => self.window = Some(pause::pause_others(self.cpu)),
            HvoBbm::FaultWait => fault_wait::open(self.cpu, start.0, end.0),
            HvoBbm::None | HvoBbm::StopMachine => {}
        }
    }

    fn break_end(&mut self) {
        match self.strategy {
            HvoBbm::PauseWindow => {
                if let Some(p) = self.window.take() {
                    pause::release(p);
                }
            }
            HvoBbm::FaultWait => fault_wait::close(self.cpu),
            HvoBbm::None | HvoBbm::StopMachine => {}
        }
    }

    fn grace_period(&mut self) {
        if self.strategy != HvoBbm::None {
            grace::synchronize(self.cpu);
        }
    }

    fn op_end(&mut self) {
        if let Some(p) = self.op.take() {
            pause::release(p);
        }
    }
}

impl Drop for SmpSync {
    fn drop(&mut self) {
        // An operation that ended early (an error) still releases the cores and its window.
        if let Some(p) = self.window.take() {
            pause::release(p);
        }
        if let Some(p) = self.op.take() {
            pause::release(p);
        }
    }
}
