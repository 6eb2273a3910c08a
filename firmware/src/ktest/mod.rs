//! The on-target test harness.
//!
//! Stable Rust has no custom test frameworks, so test cases are listed in [`CASES`], a plain
//! table. With the `ktest` boot argument (`ktest=FILTER` runs the names containing FILTER) the
//! firmware runs them after boot and reports, one line each, `ktest: PASS name` or
//! `ktest: FAIL name: reason`, then `ktest: summary passed=N failed=M`, and exits with status 0
//! only if none failed. `cargo xtask test` reads those lines.

use core::sync::atomic::{AtomicUsize, Ordering};

mod foundation;

/// Why a test failed: where, and what did not hold.
#[derive(Clone, Copy, Debug)]
pub struct Failure {
    /// Source file of the failed check.
    pub file: &'static str,
    /// Line of the failed check.
    pub line: u32,
    /// The check, as written.
    pub what: &'static str,
}

/// A test's outcome.
pub type TestResult = Result<(), Failure>;

/// A test case.
pub struct Case {
    /// Name printed in the PASS/FAIL line.
    pub name: &'static str,
    /// The test.
    pub run: fn() -> TestResult,
}

/// Fails the test unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr) => {
        $crate::ensure!($cond, stringify!($cond))
    };
    ($cond:expr, $what:expr) => {
        if !$cond {
            return Err($crate::ktest::Failure {
                file: file!(),
                line: line!(),
                what: $what,
            });
        }
    };
}

/// Fails the test unless `a == b`, logging both values.
#[macro_export]
macro_rules! ensure_eq {
    ($a:expr, $b:expr) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            $crate::error!("  left:  {:?}", a);
            $crate::error!("  right: {:?}", b);
            return Err($crate::ktest::Failure {
                file: file!(),
                line: line!(),
                what: concat!(stringify!($a), " == ", stringify!($b)),
            });
        }
    }};
}

/// Every on-target test, in the order they run.
pub static CASES: &[Case] = &[
    Case {
        name: "exception_data_abort_decoded",
        run: foundation::data_abort_decoded,
    },
    Case {
        name: "exception_undefined_instruction",
        run: foundation::undefined_instruction,
    },
    Case {
        name: "timer_advances",
        run: foundation::timer_advances,
    },
    Case {
        name: "timer_oneshot_fires",
        run: foundation::timer_oneshot,
    },
    Case {
        name: "uart_loopback_round_trip",
        run: foundation::uart_round_trip,
    },
];

static PASSED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);
/// Index + 1 of the test running now (0: none), for the panic handler.
static CURRENT: AtomicUsize = AtomicUsize::new(0);

/// Runs the cases whose names contain `filter` (all with `None`); returns the number failed.
pub fn run(filter: Option<&str>) -> usize {
    for (i, case) in CASES.iter().enumerate() {
        if let Some(f) = filter {
            if !case.name.contains(f) {
                continue;
            }
        }
        CURRENT.store(i + 1, Ordering::Release);
        let start = crate::drivers::timer::ticks();
        let outcome = (case.run)();
        let us = crate::drivers::timer::ticks_to_ns(crate::drivers::timer::ticks() - start) / 1000;
        CURRENT.store(0, Ordering::Release);
        match outcome {
            Ok(()) => {
                PASSED.fetch_add(1, Ordering::Relaxed);
                crate::info!("ktest: PASS {} ({} us)", case.name, us);
            }
            Err(f) => {
                FAILED.fetch_add(1, Ordering::Relaxed);
                crate::error!(
                    "ktest: FAIL {}: {} at {}:{}",
                    case.name,
                    f.what,
                    f.file,
                    f.line
                );
            }
        }
    }
    summary();
    FAILED.load(Ordering::Relaxed)
}

fn summary() {
    crate::info!(
        "ktest: summary passed={} failed={}",
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed)
    );
}

/// Called by the panic handler: a panic inside a test fails it and ends the run.
pub fn on_panic() {
    let cur = CURRENT.swap(0, Ordering::AcqRel);
    if cur != 0 {
        FAILED.fetch_add(1, Ordering::Relaxed);
        crate::error!("ktest: FAIL {}: panicked", CASES[cur - 1].name);
        summary();
    }
}
