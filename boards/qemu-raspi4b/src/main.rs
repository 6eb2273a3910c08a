//! Board wiring: QEMU's `raspi4b` machine (QEMU >= 9).
//!
//! 2 GiB of RAM at 0..0x8000_0000, all usable; a `-dtb` is rewritten by QEMU to report only the
//! first 960 MiB, so the table below is trusted over it. CNTFRQ reads 62.5 MHz. A raw image
//! enters at EL2 on core 0 with x0 = 0x100 (ATAGs) unless `-dtb` is given; cores 1-3 wait on the
//! spin table. Semihosting (`-semihosting`) carries the exit status.
#![cfg_attr(target_arch = "aarch64", no_std, no_main)]

#[cfg(target_arch = "aarch64")]
mod wiring {
    use pi4_hvo::board::{Board, MemRegion, UartWiring};

    static BOARD: Board = Board {
        name: "qemu-raspi4b",
        ram: &[MemRegion::new(0, 0x4000_0000), MemRegion::new(0x4000_0000, 0x4000_0000)],
        prefer_board_table: true,
        uart: UartWiring {
            base: 0xFE20_1000,
            clock_hz: 48_000_000,
            baud: 115_200,
            pinmux_gpio14_15: false,
        },
        gpio_base: 0xFE20_0000,
        mailbox_base: 0xFE00_B880,
        gic_dist_base: 0xFF84_1000,
        gic_cpu_base: 0xFF84_2000,
        cntfrq_hz: 62_500_000,
        // QEMU's boot stub, spin table (0xd8..0xf8) and ATAGs (0x100) live in the first page(s).
        firmware_reserved: &[MemRegion::new(0, 0x8_0000)],
        spin_table: [0xe0, 0xe8, 0xf0],
        semihosting: true,
    };

    pi4_hvo::board_entry!(BOARD);
}

#[cfg(not(target_arch = "aarch64"))]
fn main() {}
