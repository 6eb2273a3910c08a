//! ARM PrimeCell PL011 UART (the BCM2711's UART0).
//!
//! Polled transmit and receive, 8N1, FIFOs on. The register block is reached through a base
//! address that changes once: the physical address under the boot identity map, then the MMIO
//! window of the kernel map ([`Pl011::rebase`]).

use core::sync::atomic::{AtomicUsize, Ordering};
use tock_registers::interfaces::{ReadWriteable, Readable, Writeable};
use tock_registers::register_bitfields;
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};

register_bitfields! {
    u32,
    /// Flag register.
    FR [
        /// Transmit FIFO full.
        TXFF OFFSET(5) NUMBITS(1) [],
        /// Receive FIFO empty.
        RXFE OFFSET(4) NUMBITS(1) [],
        /// UART busy transmitting.
        BUSY OFFSET(3) NUMBITS(1) []
    ],
    /// Integer baud rate divisor.
    IBRD [ BAUD_DIVINT OFFSET(0) NUMBITS(16) [] ],
    /// Fractional baud rate divisor.
    FBRD [ BAUD_DIVFRAC OFFSET(0) NUMBITS(6) [] ],
    /// Line control.
    LCR_H [
        /// Word length.
        WLEN OFFSET(5) NUMBITS(2) [ FiveBit = 0, SixBit = 1, SevenBit = 2, EightBit = 3 ],
        /// FIFO enable.
        FEN OFFSET(4) NUMBITS(1) []
    ],
    /// Control register.
    CR [
        /// Receive enable.
        RXE OFFSET(9) NUMBITS(1) [],
        /// Transmit enable.
        TXE OFFSET(8) NUMBITS(1) [],
        /// Loopback enable: TX is fed back into RX internally.
        LBE OFFSET(7) NUMBITS(1) [],
        /// UART enable.
        UARTEN OFFSET(0) NUMBITS(1) []
    ],
    /// Interrupt clear.
    ICR [ ALL OFFSET(0) NUMBITS(11) [] ]
}

register_structs! {
    #[allow(non_snake_case)]
    Registers {
        (0x00 => DR: ReadWrite<u32>),
        (0x04 => _reserved0),
        (0x18 => FR: ReadOnly<u32, FR::Register>),
        (0x1c => _reserved1),
        (0x24 => IBRD: WriteOnly<u32, IBRD::Register>),
        (0x28 => FBRD: WriteOnly<u32, FBRD::Register>),
        (0x2c => LCR_H: WriteOnly<u32, LCR_H::Register>),
        (0x30 => CR: ReadWrite<u32, CR::Register>),
        (0x34 => _reserved2),
        (0x44 => ICR: WriteOnly<u32, ICR::Register>),
        (0x48 => @END),
    }
}

/// The integer and fractional baud-rate divisors for a UART clock and baud rate:
/// divisor = clock / (16 * baud), fraction in 1/64ths, rounded (PL011 TRM 3.3.6).
pub const fn divisors(clock_hz: u32, baud: u32) -> (u32, u32) {
    let scaled = (clock_hz as u64 * 4 + baud as u64 / 2) / baud as u64; // divisor * 64
    ((scaled >> 6) as u32, (scaled & 0x3f) as u32)
}

/// A PL011 at a (re-basable) address.
pub struct Pl011 {
    base: AtomicUsize,
}

impl Pl011 {
    /// A UART not yet pointed at its registers.
    pub const fn new() -> Self {
        Pl011 { base: AtomicUsize::new(0) }
    }

    fn regs(&self) -> Option<&Registers> {
        let base = self.base.load(Ordering::Acquire);
        if base == 0 {
            return None;
        }
        // SAFETY: `base` was set by `init`/`rebase`, whose callers guarantee it maps the PL011
        // register block as device memory for the rest of the run.
        Some(unsafe { &*(base as *const Registers) })
    }

    /// Points the driver at `base` and programs 8N1 at `baud` from a `clock_hz` UART clock.
    ///
    /// # Safety
    /// `base` must map the PL011 registers (device memory) for as long as the driver is used.
    pub unsafe fn init(&self, base: usize, clock_hz: u32, baud: u32) {
        self.base.store(base, Ordering::Release);
        let Some(r) = self.regs() else { return };
        r.CR.set(0);
        while r.FR.is_set(FR::BUSY) {}
        r.ICR.write(ICR::ALL::SET);
        let (int, frac) = divisors(clock_hz, baud);
        r.IBRD.write(IBRD::BAUD_DIVINT.val(int));
        r.FBRD.write(FBRD::BAUD_DIVFRAC.val(frac));
        r.LCR_H.write(LCR_H::WLEN::EightBit + LCR_H::FEN::SET);
        r.CR.write(CR::UARTEN::SET + CR::TXE::SET + CR::RXE::SET);
    }

    /// Moves the driver to a new virtual address of the same registers (after the kernel map
    /// takes over from the boot identity map).
    ///
    /// # Safety
    /// As for [`Pl011::init`].
    pub unsafe fn rebase(&self, base: usize) {
        self.base.store(base, Ordering::Release);
    }

    /// The register base in use.
    pub fn base(&self) -> usize {
        self.base.load(Ordering::Acquire)
    }

    /// Sends one byte, waiting for FIFO space.
    pub fn put(&self, b: u8) {
        if let Some(r) = self.regs() {
            while r.FR.is_set(FR::TXFF) {}
            r.DR.set(u32::from(b));
        }
    }

    /// Receives a byte if one is waiting.
    pub fn try_get(&self) -> Option<u8> {
        let r = self.regs()?;
        if r.FR.is_set(FR::RXFE) {
            None
        } else {
            Some((r.DR.get() & 0xff) as u8)
        }
    }

    /// Waits until everything written has left the transmitter.
    pub fn flush(&self) {
        if let Some(r) = self.regs() {
            while r.FR.is_set(FR::BUSY) {}
        }
    }

    /// Turns internal loopback on or off (TX fed to RX; nothing leaves the pins).
    pub fn set_loopback(&self, on: bool) {
        if let Some(r) = self.regs() {
            self.flush();
            r.CR.modify(if on { CR::LBE::SET } else { CR::LBE::CLEAR });
        }
    }

    /// Discards any received bytes.
    pub fn drain_rx(&self) {
        while self.try_get().is_some() {}
    }
}

impl Default for Pl011 {
    fn default() -> Self {
        Self::new()
    }
}

/// An `embedded_io::Write` handle on a UART.
pub struct Writer<'a>(pub &'a Pl011);

impl embedded_io::ErrorType for Writer<'_> {
    type Error = core::convert::Infallible;
}

impl embedded_io::Write for Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        for &b in buf {
            self.0.put(b);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        self.0.flush();
        Ok(())
    }
}
