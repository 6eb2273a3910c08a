//! The panic handler: report where and why, fail the current on-target test, stop.

use core::panic::PanicInfo;

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let (file, line) = info.location().map(|l| (l.file(), l.line())).unwrap_or(("?", 0));
    #[cfg(all(feature = "defmt-log", not(feature = "plain-log")))]
    crate::error!("panicked at {}:{}: {}", file, line, defmt::Display2Format(&info.message()));
    #[cfg(any(feature = "plain-log", not(feature = "defmt-log")))]
    crate::error!("panicked at {}:{}: {}", file, line, info.message());
    crate::ktest::on_panic();
    crate::bootstate::exit(101)
}
