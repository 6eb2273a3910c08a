//! Holding the other cores: the rendezvous behind the `stop-machine` and `pause-window`
//! strategies (Linux: `stop_machine()`; Yu Zhao's 2024 arm64 HVO series paused the other CPUs
//! with pseudo-NMI IPIs around each update).
//!
//! [`pause_others`] sends one SGI to every reader core but the caller and waits until all of
//! them are in [`on_pause_ipi`]: a loop with interrupts masked (the IRQ handler runs masked)
//! that reads only the two generation counters below, in the kernel image's data, never a
//! descriptor. [`release`] lets them go and waits until they have left, so that the next pause
//! starts from zero. The cores are held only between read-side sections (readers mask
//! interrupts inside them), so the rendezvous is a quiescent point for the grace period.
//!
//! A core that does not arrive within [`ACK_TIMEOUT_MS`] is reported and counted
//! ([`super::Counters::pause_timeouts`]); the operation goes on without it (the run then
//! fails its checks instead of hanging).

use super::COUNTERS;
use crate::drivers::timer;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// The SGI that asks a core to rendezvous.
pub const SGI_HVO_PAUSE: u8 = 8;
/// How long to wait for a core's arrival before reporting it.
pub const ACK_TIMEOUT_MS: u64 = 2000;

/// Pause requests made (the generation each handler compares against).
static PAUSE_GEN: AtomicU64 = AtomicU64::new(0);
/// The generation released.
static RELEASE_GEN: AtomicU64 = AtomicU64::new(0);
/// Cores in the rendezvous now.
static PAUSED: AtomicU32 = AtomicU32::new(0);
/// One pauser at a time.
static PAUSER: AtomicBool = AtomicBool::new(false);
/// Cores that run readers and must be held (bit n: core n).
static TARGETS: AtomicU8 = AtomicU8::new(0);

/// Registers the SGI handler (idempotent).
pub fn install() {
    if let Err(e) = crate::irq::set_sgi_handler(SGI_HVO_PAUSE, on_pause_ipi) {
        crate::error!("hvo_bbm: cannot route SGI {}: {:?}", SGI_HVO_PAUSE, e);
    }
}

/// Sets the cores a pause holds.
pub fn set_targets(mask: u8) {
    TARGETS.store(mask, Ordering::Release);
}

/// A pause in force; [`release`] ends it.
#[must_use]
pub struct Paused {
    held: bool,
}

/// Holds every target core but the caller (`me`) in the rendezvous. Called outside any break
/// window (at `op_begin` or `break_begin`), with interrupts enabled: a second pauser spinning
/// here can still be held by the first.
pub fn pause_others(me: usize) -> Paused {
    let mask = TARGETS.load(Ordering::Acquire) & crate::smp::online_mask() & !(1u8 << me);
    if mask == 0 {
        return Paused { held: false };
    }
    while PAUSER.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        core::hint::spin_loop();
    }
    let gen = PAUSE_GEN.fetch_add(1, Ordering::AcqRel) + 1;
    let n = mask.count_ones();
    crate::irq::send_sgi(mask, SGI_HVO_PAUSE);
    COUNTERS.ipis.fetch_add(u64::from(n), Ordering::Relaxed);
    COUNTERS.pauses.fetch_add(1, Ordering::Relaxed);
    let t0 = timer::ticks();
    let limit = timer::frequency() / 1000 * ACK_TIMEOUT_MS;
    while PAUSED.load(Ordering::Acquire) < n {
        if timer::ticks() - t0 > limit {
            COUNTERS.pause_timeouts.fetch_add(1, Ordering::Relaxed);
            crate::error!(
                "hvo_bbm: {} of {} cores arrived at the rendezvous (generation {}) in {} ms",
                PAUSED.load(Ordering::Acquire),
                n,
                gen,
                ACK_TIMEOUT_MS
            );
            break;
        }
        core::hint::spin_loop();
    }
    Paused { held: true }
}

/// Ends a pause: lets the held cores go and waits until they have left the rendezvous.
pub fn release(p: Paused) {
    if !p.held {
        return;
    }
    RELEASE_GEN.store(PAUSE_GEN.load(Ordering::Acquire), Ordering::Release);
    while PAUSED.load(Ordering::Acquire) != 0 {
        core::hint::spin_loop();
    }
    PAUSER.store(false, Ordering::Release);
}

/// The SGI handler: the rendezvous. Runs with interrupts masked and touches no descriptor.
fn on_pause_ipi() {
    let gen = PAUSE_GEN.load(Ordering::Acquire);
    if RELEASE_GEN.load(Ordering::Acquire) >= gen {
        return; // a late SGI of a pause already over
    }
    let me = crate::percpu::this_cpu().id;
    let t0 = timer::ticks();
    PAUSED.fetch_add(1, Ordering::AcqRel);
    // Interrupts are masked inside read-side sections, so this core is between two.
    super::grace::quiescent(me);
    while RELEASE_GEN.load(Ordering::Acquire) < gen {
        core::hint::spin_loop();
    }
    COUNTERS.held_ticks.fetch_add(timer::ticks() - t0, Ordering::Relaxed);
    PAUSED.fetch_sub(1, Ordering::AcqRel);
}
