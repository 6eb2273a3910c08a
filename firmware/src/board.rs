//! What a board tells the firmware: its wiring. Boards live under `boards/`; each builds an image
//! by handing a [`Board`] to [`crate::board_entry!`]. Nothing outside `boards/` names a board.

pub use kcore::memblock::MemRegion;

/// The UART wiring.
#[derive(Clone, Copy, Debug)]
pub struct UartWiring {
    /// Physical address of the PL011 registers.
    pub base: u64,
    /// UART reference clock in Hz.
    pub clock_hz: u32,
    /// Baud rate.
    pub baud: u32,
    /// Route UART0 to GPIO14/15 (ALT0) at boot.
    pub pinmux_gpio14_15: bool,
}

/// A board description.
#[derive(Debug)]
pub struct Board {
    /// Short name, as `cargo xtask --board` spells it.
    pub name: &'static str,
    /// RAM when neither a device tree nor the mailbox tells (or when they are known to lie).
    pub ram: &'static [MemRegion],
    /// Trust `ram` over a device tree's `/memory` (QEMU rewrites a `-dtb` to 960 MiB).
    pub prefer_board_table: bool,
    /// The console UART.
    pub uart: UartWiring,
    /// Physical address of the GPIO block.
    pub gpio_base: u64,
    /// Physical address of the VideoCore mailbox.
    pub mailbox_base: u64,
    /// Physical address of the GIC-400 distributor.
    pub gic_dist_base: u64,
    /// Physical address of the GIC-400 CPU interface.
    pub gic_cpu_base: u64,
    /// Generic timer frequency if CNTFRQ_EL0 reads 0.
    pub cntfrq_hz: u64,
    /// Physical ranges the firmware/boot stub keep for themselves (spin table, ATAGs).
    pub firmware_reserved: &'static [MemRegion],
    /// Spin-table release addresses of cores 1..=3.
    pub spin_table: [u64; 3],
    /// An emulator with semihosting: exit reports a status instead of parking.
    pub semihosting: bool,
}

/// Defines the image's entry point for a board: the boot code jumps to `board_main`.
#[macro_export]
macro_rules! board_entry {
    ($board:expr) => {
        #[no_mangle]
        extern "C" fn board_main(boot_info: u64, entry_el: u64) -> ! {
            $crate::init::kernel_main(&$board, boot_info, entry_el)
        }
    };
}
