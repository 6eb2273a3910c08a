//! Foundation tests: exceptions, timer, UART.

use super::TestResult;
use crate::arch::probe;
use crate::drivers::timer;
use crate::log::with_console;
use crate::{ensure, ensure_eq};
use embedded_hal::delay::DelayNs;
use kcore::esr::{ExceptionClass, FaultKind};

/// An address no translation table maps (a hole in the kernel half).
const UNMAPPED: u64 = 0xFFFF_EE00_0000_1230;

pub fn data_abort_decoded() -> TestResult {
    // SAFETY: the address is unmapped; the read faults and is fixed up.
    let r = unsafe { probe::read_u64(UNMAPPED) };
    let Err(f) = r else {
        return Err(super::Failure {
            file: file!(),
            line: line!(),
            what: "read of a hole did not fault",
        });
    };
    ensure_eq!(f.syndrome.class, ExceptionClass::DataAbortSame);
    ensure!(matches!(f.syndrome.fault, Some(FaultKind::Translation(_))));
    ensure!(!f.syndrome.write);
    ensure_eq!(f.far, UNMAPPED);
    Ok(())
}

pub fn undefined_instruction() -> TestResult {
    let f = match probe::undefined_instruction() {
        Err(f) => f,
        Ok(()) => {
            return Err(super::Failure { file: file!(), line: line!(), what: "UDF did not trap" })
        }
    };
    ensure_eq!(f.syndrome.class, ExceptionClass::Unknown);
    ensure!(f.syndrome.il);
    Ok(())
}

pub fn timer_advances() -> TestResult {
    let f = timer::frequency();
    ensure!(f >= 1_000_000, "CNTFRQ is at least 1 MHz");
    let t0 = timer::ticks();
    timer::Delay.delay_ms(2);
    let t1 = timer::ticks();
    ensure!(t1 > t0, "the counter advances");
    ensure!(t1 - t0 >= 2 * f / 1000, "a 2 ms delay waits at least 2 ms of ticks");
    Ok(())
}

pub fn timer_oneshot() -> TestResult {
    let f = timer::frequency();
    // Read the counter before arming: the timer fires at (counter at arming) + TVAL, so the
    // wait measured from here is at least TVAL ticks.
    let start = timer::ticks();
    timer::oneshot_arm((f / 1000) as u32);
    // Not "has not fired yet": under emulation the host may stall this vCPU for longer than the
    // 1 ms between arming and looking. The deadline the hardware latched is exact instead.
    ensure!(timer::oneshot_deadline() >= start + f / 1000, "deadline at least TVAL ahead");
    while !timer::oneshot_fired() {
        if timer::ticks() - start > f {
            timer::oneshot_disarm();
            return Err(super::Failure {
                file: file!(),
                line: line!(),
                what: "one-shot fired within 1 s",
            });
        }
    }
    timer::oneshot_disarm();
    ensure!(timer::ticks() - start >= f / 1000 - 1, "not before its time");
    Ok(())
}

pub fn uart_round_trip() -> TestResult {
    // QEMU also sends loopback bytes out of the port; the final 0x00 ends them as a (bad) defmt
    // frame of their own so the host decoder resynchronises before the next log frame.
    const MSG: &[u8] = b"\xff\x55\xaa pi4-hvo loopback\n\x00";
    let mut got = [0u8; MSG.len()];
    let mut n = 0;
    with_console(|uart| {
        uart.set_loopback(true);
        uart.drain_rx();
        for &b in MSG {
            uart.put(b);
            // Look for the byte before judging the time: a vCPU the host stalls past the
            // deadline must still find a byte that arrived meanwhile. The deadline (1 s) only
            // ends a wait for a byte that never comes.
            let start = timer::ticks();
            while n < got.len() {
                if let Some(c) = uart.try_get() {
                    got[n] = c;
                    n += 1;
                    break;
                }
                if timer::ticks() - start > timer::frequency() {
                    break;
                }
            }
        }
        uart.set_loopback(false);
        uart.drain_rx();
    });
    ensure_eq!(n, MSG.len());
    ensure!(got == MSG, "bytes come back unchanged");
    Ok(())
}
