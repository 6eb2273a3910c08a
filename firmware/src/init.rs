//! Boot flow after the assembly entry: console, boot report, memory, tests or the demo, exit.

use crate::arch::{cpu, exception, semihosting};
use crate::board::Board;
use crate::drivers::{gpio, timer};
use core::sync::atomic::{AtomicPtr, Ordering};

static BOARD: AtomicPtr<Board> = AtomicPtr::new(core::ptr::null_mut());

/// The board this image was built for.
pub fn board() -> Option<&'static Board> {
    // SAFETY: only ever set from a `&'static Board` in `kernel_main`.
    unsafe { BOARD.load(Ordering::Acquire).as_ref() }
}

/// Ends the run: under an emulator, exit with `code`; on hardware, park the core.
pub fn exit(code: u32) -> ! {
    crate::log::CONSOLE.flush();
    match board() {
        Some(b) if b.semihosting => semihosting::exit(code),
        _ => cpu::park(),
    }
}

/// The first Rust code: runs on core 0 at EL1 with the boot tables live.
pub fn kernel_main(board: &'static Board, boot_info: u64, entry_el: u64) -> ! {
    BOARD.store(board as *const Board as *mut Board, Ordering::Release);
    exception::install();
    timer::set_fallback_frequency(board.cntfrq_hz);
    if board.uart.pinmux_gpio14_15 {
        // SAFETY: the boot identity map covers the peripherals as device memory; only core 0
        // runs now.
        unsafe {
            gpio::configure(board.gpio_base as usize, 14, gpio::Function::Alt0);
            gpio::configure(board.gpio_base as usize, 15, gpio::Function::Alt0);
        }
    }
    // SAFETY: the identity map covers the UART as device memory until the kernel map replaces it.
    unsafe {
        crate::log::CONSOLE.init(
            board.uart.base as usize,
            board.uart.clock_hz,
            board.uart.baud,
        )
    };

    crate::info!(
        "pi4-hvo {} on board {}",
        env!("CARGO_PKG_VERSION"),
        board.name
    );
    crate::info!(
        "entered at EL{}, running at EL1, core {}",
        entry_el,
        cpu::core_id()
    );
    crate::info!(
        "CNTFRQ {} Hz, boot info at {:#x}",
        timer::frequency(),
        boot_info
    );

    let failed = if cfg!(feature = "ktest") {
        crate::ktest::run(None)
    } else {
        0
    };
    exit(if failed == 0 { 0 } else { 1 })
}
