//! Board wiring: Raspberry Pi 4 Model B (BCM2711). Not yet tried on hardware.
//!
//! The Pi firmware (start4.elf) loads kernel8.img at 0x80000 (`kernel_address` in config.txt),
//! enters at EL2 on core 0 with x0 = the DTB, and parks cores 1-3 on the spin table at
//! 0xe0/0xe8/0xf0. Peripherals are in "low peripheral" mode at 0xFE00_0000. The PL011 runs from
//! the 48 MHz UART clock the firmware sets up and must be routed to GPIO14/15 (ALT0). The
//! generic timer runs at 54 MHz. RAM comes from the DTB's /memory banks (1, 2, 4 or 8 GB boards);
//! the table below is only the last-resort fallback: the part of the first bank every model has.
#![cfg_attr(target_arch = "aarch64", no_std, no_main)]

#[cfg(target_arch = "aarch64")]
mod wiring {
    use pi4_hvo::board::{Board, MemRegion, UartWiring};

    static BOARD: Board = Board {
        name: "rpi4",
        ram: &[MemRegion::new(0, 0x3b40_0000)],
        prefer_board_table: false,
        uart: UartWiring {
            base: 0xFE20_1000,
            clock_hz: 48_000_000,
            baud: 115_200,
            pinmux_gpio14_15: true,
        },
        gpio_base: 0xFE20_0000,
        mailbox_base: 0xFE00_B880,
        gic_dist_base: 0xFF84_1000,
        gic_cpu_base: 0xFF84_2000,
        cntfrq_hz: 54_000_000,
        // The armstub and spin table occupy the first page; keep everything below the image.
        firmware_reserved: &[MemRegion::new(0, 0x8_0000)],
        spin_table: [0xe0, 0xe8, 0xf0],
        semihosting: false,
    };

    pi4_hvo::board_entry!(BOARD);
}

#[cfg(not(target_arch = "aarch64"))]
fn main() {}
