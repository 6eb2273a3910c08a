//! The ARM generic timer: the system counter (CNTPCT_EL0 at CNTFRQ_EL0 Hz) and the EL1 physical
//! timer. Provides time stamps for the logs, busy-wait delays (`embedded_hal::delay::DelayNs`) and
//! a polled one-shot timer.

use aarch64_cpu::registers::{
    Readable, Writeable, CNTFRQ_EL0, CNTPCT_EL0, CNTP_CTL_EL0, CNTP_TVAL_EL0,
};
use core::sync::atomic::{AtomicU64, Ordering};

/// Used when CNTFRQ_EL0 reads 0 (firmware did not program it): the board's known frequency.
static FALLBACK_HZ: AtomicU64 = AtomicU64::new(0);

/// Tells the timer the board's counter frequency, used only if CNTFRQ_EL0 is 0.
pub fn set_fallback_frequency(hz: u64) {
    FALLBACK_HZ.store(hz, Ordering::Relaxed);
}

/// Counter frequency in Hz.
pub fn frequency() -> u64 {
    let f = CNTFRQ_EL0.get();
    if f != 0 {
        f
    } else {
        FALLBACK_HZ.load(Ordering::Relaxed).max(1)
    }
}

/// The system counter. The ISB keeps the read from being hoisted above earlier instructions
/// (the counter read is not ordered by itself; ARM ARM D11.2.2).
#[inline]
pub fn ticks() -> u64 {
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
    CNTPCT_EL0.get()
}

/// Converts counter ticks to nanoseconds.
pub fn ticks_to_ns(t: u64) -> u64 {
    (u128::from(t) * 1_000_000_000 / u128::from(frequency())) as u64
}

/// Time since the counter started, in microseconds.
pub fn uptime_us() -> u64 {
    (u128::from(ticks()) * 1_000_000 / u128::from(frequency())) as u64
}

/// Busy-waits `ns` nanoseconds.
pub fn spin_ns(ns: u64) {
    let start = ticks();
    let wait = (u128::from(ns) * u128::from(frequency())).div_ceil(1_000_000_000) as u64;
    while ticks().wrapping_sub(start) < wait {
        core::hint::spin_loop();
    }
}

/// `embedded_hal` delay over the system counter.
#[derive(Clone, Copy, Default)]
pub struct Delay;

impl embedded_hal::delay::DelayNs for Delay {
    fn delay_ns(&mut self, ns: u32) {
        spin_ns(u64::from(ns));
    }
}

/// Arms the EL1 physical timer to fire in `ticks` counter ticks, interrupt masked (polled use).
pub fn oneshot_arm(ticks: u32) {
    CNTP_TVAL_EL0.set(u64::from(ticks));
    // ENABLE=1, IMASK=1: the condition is visible in ISTATUS without raising an interrupt.
    CNTP_CTL_EL0.set(0b011);
}

/// Has the armed one-shot expired (CNTP_CTL_EL0.ISTATUS)?
pub fn oneshot_fired() -> bool {
    CNTP_CTL_EL0.get() & 0b100 != 0
}

/// Disarms the EL1 physical timer.
pub fn oneshot_disarm() {
    CNTP_CTL_EL0.set(0);
}

/// Arms the EL1 physical timer to raise its interrupt (PPI 14, INTID 30 through the GIC) in
/// `ticks` counter ticks. The interrupt handler must disarm it ([`oneshot_disarm`]): the timer's
/// output is level-sensitive and stays asserted until then.
pub fn irq_arm(ticks: u32) {
    CNTP_TVAL_EL0.set(u64::from(ticks));
    // ENABLE=1, IMASK=0.
    CNTP_CTL_EL0.set(0b001);
}
