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
