//! Logging over the PL011.
//!
//! Default (`defmt-log`): defmt frames, decoded on the host by `cargo xtask run/test/monitor`
//! with time stamps from the generic timer. With `plain-log`: formatted text lines, for a plain
//! serial terminal. The macros `error!`, `warn!`, `info!`, `debug!` take format strings valid for
//! both (`{}`, `{:?}`, `{:x}`, `{:#x}`), so the rest of the firmware does not care which.

use crate::arch::cpu;
use crate::drivers::pl011::Pl011;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The console UART.
pub static CONSOLE: Pl011 = Pl011::new();

/// A spin lock around the console, with interrupts masked while held. Re-entry from an exception
/// handler on the same core (a fault while logging) is detected and bypasses the lock instead of
/// deadlocking.
struct ConsoleLock {
    taken: AtomicBool,
    owner: AtomicU64,
    saved_daif: AtomicU64,
}

static LOCK: ConsoleLock = ConsoleLock {
    taken: AtomicBool::new(false),
    owner: AtomicU64::new(u64::MAX),
    saved_daif: AtomicU64::new(0),
};

impl ConsoleLock {
    /// Returns false when this core already holds the lock (nested use).
    fn acquire(&self) -> bool {
        let daif = cpu::mask_irqs();
        let me = cpu::core_id() as u64;
        if self.taken.load(Ordering::Acquire) && self.owner.load(Ordering::Acquire) == me {
            cpu::restore_irqs(daif);
            return false;
        }
        while self
            .taken
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        self.owner.store(me, Ordering::Relaxed);
        self.saved_daif.store(daif, Ordering::Relaxed);
        true
    }

    fn release(&self) {
        let daif = self.saved_daif.load(Ordering::Relaxed);
        self.owner.store(u64::MAX, Ordering::Relaxed);
        self.taken.store(false, Ordering::Release);
        cpu::restore_irqs(daif);
    }
}

/// Runs `f` with exclusive use of the console UART (no log output can interleave).
pub fn with_console<R>(f: impl FnOnce(&Pl011) -> R) -> R {
    let locked = LOCK.acquire();
    let r = f(&CONSOLE);
    if locked {
        LOCK.release();
    }
    r
}

#[cfg(all(feature = "defmt-log", not(feature = "plain-log")))]
mod defmt_backend {
    use super::{CONSOLE, LOCK};
    use core::sync::atomic::{AtomicBool, Ordering};

    static NESTED: AtomicBool = AtomicBool::new(false);
    static mut ENCODER: defmt::Encoder = defmt::Encoder::new();

    fn write_bytes(bytes: &[u8]) {
        for &b in bytes {
            CONSOLE.put(b);
        }
    }

    #[defmt::global_logger]
    struct Logger;

    // SAFETY: `acquire` takes the console lock with interrupts masked, so a frame is written by
    // one core at a time and never interleaved; nested use (a fault inside a log call) is sent
    // through without the encoder state of the interrupted frame being touched twice.
    unsafe impl defmt::Logger for Logger {
        fn acquire() {
            let locked = LOCK.acquire();
            NESTED.store(!locked, Ordering::Relaxed);
            // SAFETY: the lock gives this core exclusive use of the encoder.
            unsafe { (*core::ptr::addr_of_mut!(ENCODER)).start_frame(write_bytes) }
        }

        unsafe fn flush() {
            CONSOLE.flush();
        }

        unsafe fn release() {
            // SAFETY: called after `acquire` by defmt, lock held.
            unsafe { (*core::ptr::addr_of_mut!(ENCODER)).end_frame(write_bytes) }
            if !NESTED.load(Ordering::Relaxed) {
                LOCK.release();
            }
        }

        unsafe fn write(bytes: &[u8]) {
            // SAFETY: called between `acquire` and `release`, lock held.
            unsafe { (*core::ptr::addr_of_mut!(ENCODER)).write(bytes, write_bytes) }
        }
    }

    defmt::timestamp!("{=u64:us}", crate::drivers::timer::uptime_us());
}

/// Log levels (plain-text mode prints them; defmt carries its own).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Errors.
    Error,
    /// Warnings.
    Warn,
    /// Information.
    Info,
    /// Debug detail.
    Debug,
}

/// The most verbose level printed in plain-text mode (`loglevel=` adjusts it).
pub static PLAIN_MAX_LEVEL: AtomicU64 = AtomicU64::new(Level::Info as u64);

/// Plain-text back end: `[   12.345678] INFO  message`.
pub fn plain(level: Level, args: core::fmt::Arguments<'_>) {
    use core::fmt::Write;
    if level as u64 > PLAIN_MAX_LEVEL.load(Ordering::Relaxed) {
        return;
    }
    struct W<'a>(&'a Pl011);
    impl core::fmt::Write for W<'_> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            for b in s.bytes() {
                if b == b'\n' {
                    self.0.put(b'\r');
                }
                self.0.put(b);
            }
            Ok(())
        }
    }
    let us = crate::drivers::timer::uptime_us();
    let name = match level {
        Level::Error => "ERROR",
        Level::Warn => "WARN ",
        Level::Info => "INFO ",
        Level::Debug => "DEBUG",
    };
    with_console(|uart| {
        let mut w = W(uart);
        let _ = write!(w, "[{:5}.{:06}] {} ", us / 1_000_000, us % 1_000_000, name);
        let _ = w.write_fmt(args);
        let _ = w.write_str("\n");
    });
}

// With defmt, the log macros are defmt's own, re-exported at the crate root (lib.rs), so each
// frame carries its caller's file and line. In plain-text mode they are these.

/// Logs at error level.
#[cfg(any(feature = "plain-log", not(feature = "defmt-log")))]
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::plain($crate::log::Level::Error, format_args!($($arg)*)) };
}
/// Logs at warning level.
#[cfg(any(feature = "plain-log", not(feature = "defmt-log")))]
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::plain($crate::log::Level::Warn, format_args!($($arg)*)) };
}
/// Logs at info level.
#[cfg(any(feature = "plain-log", not(feature = "defmt-log")))]
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::plain($crate::log::Level::Info, format_args!($($arg)*)) };
}
/// Logs at debug level.
#[cfg(any(feature = "plain-log", not(feature = "defmt-log")))]
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::plain($crate::log::Level::Debug, format_args!($($arg)*)) };
}

/// Shows a `Display` value in a log line in either mode: `info!("{}", Disp(&x))`. With defmt the
/// text is formatted on the target (for tables such as ptdump, whose layout is the point).
pub struct Disp<'a, T: core::fmt::Display>(pub &'a T);

impl<T: core::fmt::Display> core::fmt::Display for Disp<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(all(feature = "defmt-log", not(feature = "plain-log")))]
impl<T: core::fmt::Display> defmt::Format for Disp<'_, T> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{}", defmt::Display2Format(self.0))
    }
}
