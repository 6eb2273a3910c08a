//! The on-target test harness.
//!
//! Stable Rust has no custom test frameworks, so test cases are listed in [`CASES`], a plain
//! table. With the `ktest` boot argument (`ktest=FILTER` runs the names containing FILTER) the
//! firmware runs them after boot and reports, one line each, `ktest: PASS name` or
//! `ktest: FAIL name: reason`, then `ktest: summary passed=N failed=M`, and exits with status 0
//! only if none failed. `cargo xtask test` reads those lines.

use core::sync::atomic::{AtomicUsize, Ordering};

mod foundation;
mod hvo;
mod kernel_map;
mod memory;
mod smp;
mod user;

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

/// Fails the test unless page conservation holds (every RAM frame in exactly one state, the sum
/// equal to RAM, the free count equal to the buddy allocator's).
pub fn conserved() -> TestResult {
    crate::memory::check_conservation().map(|_| ()).map_err(|e| {
        crate::error!("conservation: {:?}", e);
        Failure { file: file!(), line: line!(), what: "page conservation holds" }
    })
}

/// Fails the test unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr) => {
        $crate::ensure!($cond, stringify!($cond))
    };
    ($cond:expr, $what:expr) => {
        if !$cond {
            return Err($crate::ktest::Failure { file: file!(), line: line!(), what: $what });
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

const fn case(name: &'static str, run: fn() -> TestResult) -> Case {
    Case { name, run }
}

/// Every on-target test, in the order they run.
pub static CASES: &[Case] = &[
    case("exception_data_abort_decoded", foundation::data_abort_decoded),
    case("exception_undefined_instruction", foundation::undefined_instruction),
    case("timer_advances", foundation::timer_advances),
    case("timer_oneshot_fires", foundation::timer_oneshot),
    case("uart_loopback_round_trip", foundation::uart_round_trip),
    case("smp_every_core_runs_a_job", smp::every_core_runs_a_job),
    case("smp_sgi_round_trip_each_core", smp::sgi_round_trip_each_core),
    case("smp_timer_irq_on_secondary", smp::timer_irq_on_secondary),
    case("sync_spin_mutex_across_cores", smp::spin_mutex_across_cores),
    case("sync_locks_held_and_irqsave", smp::locks_held_and_irqsave),
    case("sync_lock_codegen_exclusives", smp::lock_codegen_exclusives),
    case("sync_plain_lock_refused_in_irq_handler", smp::plain_lock_refused_in_irq_handler),
    case("exception_fault_hook", smp::fault_hook_sees_data_aborts),
    case("kmap_translation_regime", kernel_map::translation_regime),
    case("kmap_rodata_write_faults", kernel_map::rodata_write_faults),
    case("kmap_text_write_faults", kernel_map::text_write_faults),
    case("kmap_data_exec_faults", kernel_map::data_exec_faults),
    case(
        "kmap_linear_alias_of_text_not_executable",
        kernel_map::linear_alias_of_text_not_executable,
    ),
    case(
        "kmap_linear_alias_of_text_and_rodata_read_only",
        kernel_map::linear_alias_of_text_and_rodata_read_only,
    ),
    case("kmap_hole_and_guard_page_fault", kernel_map::hole_and_guard_page_fault),
    case("kmap_wx_audit_clean", kernel_map::wx_audit_clean),
    case("kmap_linear_map_uses_2m_blocks", kernel_map::linear_map_uses_2m_blocks),
    case("kmap_mmio_through_kernel_map", kernel_map::mmio_through_kernel_map),
    case("mem_pfn_to_page_round_trip", memory::pfn_to_page_round_trip),
    case("mem_conservation_at_boot", memory::conservation_at_boot),
    case("mem_whole_2m_pool_alloc_free_exact", memory::whole_2m_pool_alloc_free_exact),
    case("mem_gigantic_1g_folio", memory::gigantic_1g_folio),
    case("mem_bad_frees_detected", memory::bad_frees_detected),
    case("mem_hotplug_self_hosted_memmap", memory::hotplug_self_hosted_memmap),
    case("hvo_boot_param_respected", hvo::boot_param_respected),
    case("hvo_every_pfn_2m", hvo::every_pfn_2m),
    case("hvo_every_pfn_1g", hvo::every_pfn_1g),
    case(
        "hvo_tail_write_faults_and_restore_is_identical",
        hvo::tail_write_faults_and_restore_is_identical,
    ),
    case("hvo_restore_alloc_failure_each_step", hvo::restore_alloc_failure_each_step),
    case("hvo_runtime_switch", hvo::runtime_switch),
    case("hvo_self_hosted_refused", hvo::self_hosted_refused),
    case("hvo_batching_needs_fewer_barriers", hvo::batching_needs_fewer_barriers),
    case("hvo_dissolve_restores_first", hvo::dissolve_restores_first),
    case("user_el0_task_syscalls", user::el0_task_syscalls),
    case("user_el0_read_of_kernel_faults", user::el0_read_of_kernel_faults),
    case("user_el0_read_of_vmemmap_faults", user::el0_read_of_vmemmap_faults),
    case("user_kernel_cannot_execute_user_pages", user::kernel_cannot_execute_user_pages),
    case("user_walk_user_mm_with_write_lock", user::walk_user_mm_with_write_lock),
];

static PASSED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);
/// Index + 1 of the test running now (0: none), for the panic handler.
static CURRENT: AtomicUsize = AtomicUsize::new(0);

/// Runs the cases whose names contain `filter`, or one of its comma-separated parts (all with
/// `None`); returns the number failed.
pub fn run(filter: Option<&str>) -> usize {
    for (i, case) in CASES.iter().enumerate() {
        if let Some(f) = filter {
            if !f.split(',').any(|f| case.name.contains(f)) {
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
                crate::error!("ktest: FAIL {}: {} at {}:{}", case.name, f.what, f.file, f.line);
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
