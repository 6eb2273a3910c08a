//! Boot report of what a device tree says about the console: the UART this firmware logs on
//! (`serial0`, the PL011) against the board's wiring, and where `stdout-path` points (on a Pi 4,
//! the mini UART). Nothing here changes what the firmware does; it makes a mismatch visible in the
//! first lines of the log.

use crate::board::Board;
use kcore::dt_console;

/// Logs the device tree's console UARTs (nothing for ATAGs).
///
/// # Safety
/// `[blob, blob + len)` must be readable (the boot blob under the identity map).
pub unsafe fn report_console(blob: u64, len: usize, board: &Board) {
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { core::slice::from_raw_parts(blob as *const u8, len) };
    if bytes.get(..4) != Some(&kcore::bootinfo::FDT_MAGIC.to_be_bytes()[..]) {
        return; // ATAGs name no UART
    }
    match dt_console::alias_uart(bytes, "serial0") {
        Ok(u) => crate::info!(
            "device tree: serial0 = {} ({}) at {:#x}: {}",
            u.path,
            u.compatible,
            u.phys.unwrap_or(u.bus_addr),
            if u.phys == Some(board.uart.base) {
                "the UART this firmware logs on"
            } else {
                "NOT the UART this firmware logs on"
            }
        ),
        Err(e) => crate::warn!("device tree: no serial0 UART: {:?}", e),
    }
    match dt_console::stdout_uart(bytes) {
        Ok((name, u)) => crate::info!(
            "device tree: stdout-path {} = {} ({}) at {:#x}",
            name,
            u.path,
            u.compatible,
            u.phys.unwrap_or(u.bus_addr)
        ),
        Err(e) => crate::info!("device tree: no stdout-path UART: {:?}", e),
    }
}
