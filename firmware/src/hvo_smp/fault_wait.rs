//! The `fault-wait` strategy's windows, and the fault hook that classifies every data abort on
//! a vmemmap address while the four-core HVO runs (Nanyong Sun's 2024 arm64 proposal: a fault
//! on the vmemmap during an update waits for it and retries).
//!
//! Each HVO core publishes its open break window in its own slot ([`open`] before the first
//! entry of the window becomes invalid, [`close`] after the new entries are published). The
//! hook ([`on_fault`]), run by the exception vector for a data abort at EL1 before the fault is
//! reported:
//! - a translation or permission fault on a vmemmap address inside another core's open window
//!   waits until that window closes (the slot's sequence number changes) and retries the
//!   instruction (`faults_waited`, the longest wait);
//! - the same fault just after the window closed (the entry is valid again when the hook looks,
//!   and the address was in that core's last window or one of the [`HISTORY`] before it)
//!   retries at once, counted as waited;
//! - anything else on the vmemmap is an *unexpected* fault: counted and, while a stress run is
//!   going, retried once the address translates again (so that the run finishes and reports
//!   the failure); outside a run it is reported as before. Faults elsewhere are not ours.
//!
//! # Faults with interrupts masked or a spinlock held: handled, not refused
//!
//! Upstream asked whether the fault can come from IRQ context or with locks held. Here the wait
//! is safe in both cases, because what it waits for depends on nothing the waiter can hold:
//! - between `break_begin` and `break_end` the HVO core takes no lock, waits for no IPI and
//!   needs no interrupt (kcore's [`kcore::hugetlb_vmemmap::BbmSync`] contract, which the HVO
//!   core keeps: its allocations happen before the window, its frees after);
//! - so the window closes in bounded time whatever the waiter holds (a spinlock the HVO core
//!   wants later, e.g. the buddy allocator's, is only wanted after the window);
//! - the wait polls the slot's sequence number in kernel image data (never a descriptor) and
//!   needs no interrupt: masked interrupts (synchronous exceptions are taken regardless of
//!   PSTATE.I, and the handler runs masked anyway) do not delay it.
//!
//! The one case that cannot be handled is a fault on the faulting core's *own* open window:
//! the HVO core would wait for itself. That is refused: reported (`refused_faults`) with the
//! address and the window, and the fault then goes to the normal report (a panic). The stress
//! test counts how many waits happened with interrupts masked and with a lock held, and
//! `smp_fault_wait_refuses_own_window` checks the refusal.

use super::COUNTERS;
use crate::arch::exception::{FaultAction, FaultInfo, TrapFrame};
use crate::drivers::timer;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use kcore::esr::FaultKind;
use kcore::layout::{Region, MAX_CPUS};

/// The address of the first unexpected fault since [`set_mode`] (0: none), for the report.
pub static FIRST_UNEXPECTED: AtomicU64 = AtomicU64::new(0);

/// Give up waiting (and report the fault) after this long: a window never takes this long.
pub const WAIT_LIMIT_MS: u64 = 5000;

/// Closed windows each slot remembers: a fault taken in a window that has closed, and been
/// followed by another window of the same core (a block split, then the batch), before the
/// faulting core looked, is still recognised. 64, not the handful one batch opens: under TCG
/// a reader's vCPU thread can be descheduled by the host between its fault and its look, for as
/// many windows as the HVO core opens meanwhile (the one-folio-at-a-time path opens one per
/// entry). The memory is 1 KiB per core.
const HISTORY: usize = 64;

#[repr(align(64))]
struct Window {
    /// Odd while open.
    seq: AtomicU64,
    start: AtomicU64,
    end: AtomicU64,
    /// The last [`HISTORY`] closed windows (start, end), written at close.
    closed: [(AtomicU64, AtomicU64); HISTORY],
    /// Windows closed (index into `closed`, modulo [`HISTORY`]).
    nr_closed: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const WINDOW: Window = Window {
    seq: AtomicU64::new(0),
    start: AtomicU64::new(0),
    end: AtomicU64::new(0),
    closed: [const { (AtomicU64::new(0), AtomicU64::new(0)) }; HISTORY],
    nr_closed: AtomicU64::new(0),
};
static WINDOWS: [Window; MAX_CPUS] = [WINDOW; MAX_CPUS];

/// How vmemmap faults are treated now (a [`kcore::cmdline::HvoBbm`] as u8, see [`set_mode`]).
static MODE: AtomicU8 = AtomicU8::new(MODE_OFF);
const MODE_OFF: u8 = 0;
const MODE_WAIT: u8 = 1;
const MODE_COUNT: u8 = 2;
/// A stress run is going: unexpected vmemmap faults are retried (after counting) rather than
/// reported, so the run ends with its figures.
static TOLERATE: AtomicBool = AtomicBool::new(false);

/// Installs the hook: `wait` makes windows waitable (fault-wait); otherwise every vmemmap
/// fault is unexpected. `tolerate`: retry unexpected faults once the address translates.
pub fn set_mode(wait: bool, tolerate: bool) {
    FIRST_UNEXPECTED.store(0, Ordering::Release);
    MODE.store(if wait { MODE_WAIT } else { MODE_COUNT }, Ordering::Release);
    TOLERATE.store(tolerate, Ordering::Release);
    crate::arch::exception::set_fault_hook(Some(on_fault));
}

/// Removes the hook.
pub fn clear_mode() {
    crate::arch::exception::set_fault_hook(None);
    MODE.store(MODE_OFF, Ordering::Release);
    TOLERATE.store(false, Ordering::Release);
}

/// Opens `cpu`'s window over `start..end` (before its first entry becomes invalid).
pub fn open(cpu: usize, start: u64, end: u64) {
    let w = &WINDOWS[cpu];
    w.start.store(start, Ordering::Relaxed);
    w.end.store(end, Ordering::Relaxed);
    w.seq.fetch_add(1, Ordering::Release);
    dsb_ish();
}

/// Closes `cpu`'s window (after its new entries are published).
pub fn close(cpu: usize) {
    let w = &WINDOWS[cpu];
    let n = w.nr_closed.load(Ordering::Relaxed);
    let h = &w.closed[n as usize % HISTORY];
    h.0.store(w.start.load(Ordering::Relaxed), Ordering::Relaxed);
    h.1.store(w.end.load(Ordering::Relaxed), Ordering::Relaxed);
    w.nr_closed.store(n + 1, Ordering::Release);
    w.seq.fetch_add(1, Ordering::Release);
}

/// Was `va` in one of `w`'s recently closed windows?
fn recently_closed(w: &Window, va: u64) -> bool {
    w.closed
        .iter()
        .any(|(s, e)| (s.load(Ordering::Acquire)..e.load(Ordering::Acquire)).contains(&va))
}

fn dsb_ish() {
    // SAFETY: a barrier; no memory is touched.
    // DSB ISH: the window is visible to every core before the HVO core writes the invalid entry
    // that a faulting core will have observed (ARM ARM B2.3, "Ordering requirements": a DSB
    // completes earlier stores before any later one is issued, table walks included).
    unsafe { core::arch::asm!("dsb ish", options(nostack, preserves_flags)) };
}

/// A consistent reading of one window: (open?, start, end, seq).
fn read_window(w: &Window) -> (bool, u64, u64, u64) {
    loop {
        let s = w.seq.load(Ordering::Acquire);
        let (a, b) = (w.start.load(Ordering::Relaxed), w.end.load(Ordering::Relaxed));
        core::sync::atomic::fence(Ordering::Acquire);
        if w.seq.load(Ordering::Relaxed) == s {
            return (s % 2 == 1, a, b, s);
        }
    }
}

/// Does `va` translate now for this kind of access (AT S1E1R / S1E1W, PAR_EL1.F)?
fn translates(va: u64, write: bool) -> bool {
    crate::arch::cpu::translate_el1(va, write).is_some()
}

/// What the hook decided for one fault (pure: the refusal test calls it directly).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub enum Decision {
    /// Not a vmemmap translation/permission fault: not ours.
    NotOurs,
    /// Inside another core's open window: wait for `seq` to change, then retry.
    Wait {
        /// The core whose window it is.
        owner: usize,
        /// Its sequence number now.
        seq: u64,
    },
    /// Inside the faulting core's own open window: refuse.
    OwnWindow,
    /// The window it hit has closed already: retry now.
    Raced,
    /// No window explains it.
    Unexpected,
}

/// Classifies a fault at `far` (`write` access, fault `kind`) taken on core `me`.
pub fn decide(me: usize, far: u64, kind: Option<FaultKind>, write: bool) -> Decision {
    if Region::of(kcore::addr::VirtAddr(far)) != Region::Vmemmap {
        return Decision::NotOurs;
    }
    if !matches!(kind, Some(FaultKind::Translation(_) | FaultKind::Permission(_))) {
        return Decision::NotOurs;
    }
    if MODE.load(Ordering::Acquire) != MODE_WAIT {
        return Decision::Unexpected;
    }
    let mut in_last = false;
    for (cpu, w) in WINDOWS.iter().enumerate() {
        let (open, start, end, seq) = read_window(w);
        if !(start..end).contains(&far) {
            in_last |= recently_closed(w, far);
            continue;
        }
        if open {
            return if cpu == me {
                Decision::OwnWindow
            } else {
                Decision::Wait { owner: cpu, seq }
            };
        }
        in_last = true;
    }
    if in_last && translates(far, write) {
        Decision::Raced
    } else {
        Decision::Unexpected
    }
}

/// The fault hook.
pub fn on_fault(frame: &mut TrapFrame, info: &FaultInfo) -> FaultAction {
    let me = crate::percpu::this_cpu().id;
    let write = info.syndrome.write;
    match decide(me, info.far, info.syndrome.fault, write) {
        Decision::NotOurs => FaultAction::Report,
        Decision::Wait { owner, seq } => {
            let t0 = timer::ticks();
            let limit = timer::frequency() / 1000 * WAIT_LIMIT_MS;
            while WINDOWS[owner].seq.load(Ordering::Acquire) == seq {
                if timer::ticks() - t0 > limit {
                    crate::error!(
                        "fault-wait: core {} waited {} ms for core {}'s window at {:#x}",
                        me,
                        WAIT_LIMIT_MS,
                        owner,
                        info.far
                    );
                    return FaultAction::Report;
                }
                core::hint::spin_loop();
            }
            count_wait(frame, timer::ticks() - t0);
            FaultAction::Retry
        }
        Decision::Raced => {
            count_wait(frame, 0);
            FaultAction::Retry
        }
        Decision::OwnWindow => {
            COUNTERS.refused_faults.fetch_add(1, Ordering::Relaxed);
            crate::error!(
                "fault-wait: core {} faulted at {:#x} inside its own break window: it would wait for itself; refused",
                me,
                info.far
            );
            FaultAction::Report
        }
        Decision::Unexpected => {
            COUNTERS.unexpected_faults.fetch_add(1, Ordering::Relaxed);
            let _ =
                FIRST_UNEXPECTED.compare_exchange(0, info.far, Ordering::AcqRel, Ordering::Relaxed);
            if !TOLERATE.load(Ordering::Acquire) {
                return FaultAction::Report;
            }
            // Keep the run going: retry once the entry is valid again (the break is over).
            let t0 = timer::ticks();
            let limit = timer::frequency() / 1000 * WAIT_LIMIT_MS;
            while !translates(info.far, write) {
                if timer::ticks() - t0 > limit {
                    return FaultAction::Report;
                }
                core::hint::spin_loop();
            }
            FaultAction::Retry
        }
    }
}

fn count_wait(frame: &TrapFrame, ticks: u64) {
    COUNTERS.faults_waited.fetch_add(1, Ordering::Relaxed);
    COUNTERS.longest_wait.fetch_max(ticks, Ordering::Relaxed);
    // SPSR_EL1.I (bit 7): interrupts were masked where the fault was taken.
    if frame.spsr & (1 << 7) != 0 {
        COUNTERS.waited_irqs_masked.fetch_add(1, Ordering::Relaxed);
    }
    if crate::percpu::this_cpu().locks_held.load(Ordering::Relaxed) != 0 {
        COUNTERS.waited_lock_held.fetch_add(1, Ordering::Relaxed);
    }
}
