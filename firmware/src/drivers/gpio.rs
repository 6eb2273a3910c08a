//! BCM2711 GPIO: function select and pull control, enough to route UART0 to GPIO14/15.

use core::ptr::{read_volatile, write_volatile};

/// GPFSEL0: 10 pins per 32-bit register, 3 bits each.
const GPFSEL0: usize = 0x00;
/// GPIO_PUP_PDN_CNTRL_REG0 (BCM2711): 16 pins per register, 2 bits each (0 = no pull).
const GPIO_PUP_PDN_CNTRL_REG0: usize = 0xe4;

/// Pin functions (the GPFSEL encodings).
#[derive(Clone, Copy)]
pub enum Function {
    /// Input.
    Input = 0b000,
    /// Output.
    Output = 0b001,
    /// Alternate function 0 (UART0 TXD/RXD on GPIO14/15).
    Alt0 = 0b100,
    /// Alternate function 3 (UART0 TXD/RXD on GPIO32/33, CTS/RTS on GPIO30/31: Bluetooth on a
    /// Pi 4).
    Alt3 = 0b111,
}

/// Reads `pin`'s function-select field.
///
/// # Safety
/// As [`configure`].
pub unsafe fn function_bits(base: usize, pin: u32) -> u32 {
    let fsel = (base + GPFSEL0 + 4 * (pin / 10) as usize) as *const u32;
    // SAFETY: the register lies in the GPIO block the caller mapped.
    (unsafe { read_volatile(fsel) } >> (3 * (pin % 10))) & 0b111
}

/// Puts the PL011 (UART0) on GPIO14/15 (ALT0), where a Pi 4 has the mini UART by default, and
/// takes it off Bluetooth's GPIO30-33 (ALT3) if they carry it, so that its RXD has one source.
/// This is what `dtoverlay=disable-bt` asks the VideoCore firmware to do, done here because the
/// SD image has no overlays (Debian's raspi-firmware ships none). Returns how many Bluetooth
/// pins were released.
///
/// # Safety
/// As [`configure`].
pub unsafe fn route_uart0_to_gpio14_15(base: usize) -> u32 {
    let mut released = 0;
    // SAFETY: forwarded from the caller.
    unsafe {
        for pin in 30..=33 {
            if function_bits(base, pin) == Function::Alt3 as u32 {
                configure(base, pin, Function::Input);
                released += 1;
            }
        }
        configure(base, 14, Function::Alt0);
        configure(base, 15, Function::Alt0);
    }
    released
}

/// Sets `pin`'s function and disables its pull resistors.
///
/// # Safety
/// `base` must map the GPIO register block as device memory, and nothing else may be
/// reprogramming GPIOs concurrently.
pub unsafe fn configure(base: usize, pin: u32, func: Function) {
    let fsel = (base + GPFSEL0 + 4 * (pin / 10) as usize) as *mut u32;
    let shift = 3 * (pin % 10);
    let pull = (base + GPIO_PUP_PDN_CNTRL_REG0 + 4 * (pin / 16) as usize) as *mut u32;
    let pshift = 2 * (pin % 16);
    // SAFETY: both registers lie in the GPIO block the caller mapped; read-modify-write of our
    // pin's field only.
    unsafe {
        let v = read_volatile(fsel);
        write_volatile(fsel, (v & !(0b111 << shift)) | ((func as u32) << shift));
        let p = read_volatile(pull);
        write_volatile(pull, p & !(0b11 << pshift));
    }
}
