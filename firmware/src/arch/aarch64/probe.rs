//! Fault probes: single accesses that may fault, caught through the exception table.
//!
//! Tests use them to prove that a mapping is read-only, non-executable or absent: the access is
//! made for real, the MMU raises the fault, the handler decodes it and resumes at the probe's
//! fixup. An unexpected fault anywhere else still stops the firmware.

use super::exception::{take_probe_fault, FaultInfo, EXEC_PROBE_ARMED};
use core::sync::atomic::Ordering;

#[repr(C)]
struct ProbeResult {
    faulted: u64,
    value: u64,
}

extern "C" {
    fn probe_read_u64(addr: u64) -> ProbeResult;
    fn probe_write_u64(addr: u64, value: u64) -> ProbeResult;
    fn probe_udf() -> ProbeResult;
    fn probe_exec(addr: u64) -> ProbeResult;
}

fn result(r: ProbeResult) -> Result<u64, FaultInfo> {
    if r.faulted != 0 {
        Err(take_probe_fault())
    } else {
        Ok(r.value)
    }
}

/// Reads a u64 at `addr`, returning the fault if the access faults.
///
/// # Safety
/// If `addr` is mapped, reading it must have no side effects the caller does not expect.
pub unsafe fn read_u64(addr: u64) -> Result<u64, FaultInfo> {
    // SAFETY: the probe's load is covered by the exception table; the caller vouches for the
    // side effects of a successful read.
    result(unsafe { probe_read_u64(addr) })
}

/// Writes a u64 at `addr`, returning the fault if the access faults.
///
/// # Safety
/// If `addr` is writable, the write must not break anything (the caller owns that memory).
pub unsafe fn write_u64(addr: u64, value: u64) -> Result<(), FaultInfo> {
    // SAFETY: the probe's store is covered by the exception table; the caller owns the memory.
    result(unsafe { probe_write_u64(addr, value) }).map(|_| ())
}

/// Executes an undefined instruction; always returns the (expected) fault.
pub fn undefined_instruction() -> Result<(), FaultInfo> {
    // SAFETY: the UDF is covered by the exception table and the probe touches no memory.
    result(unsafe { probe_udf() }).map(|_| ())
}

/// Branches to `addr`. If it is executable, the code there runs (it must be a function that
/// returns with x0 = 0, e.g. a lone `RET` after `MOV X0, #0`); if not, the instruction abort is
/// returned.
///
/// # Safety
/// `addr` must either fault on instruction fetch or hold code that returns.
pub unsafe fn exec(addr: u64) -> Result<(), FaultInfo> {
    EXEC_PROBE_ARMED.store(1, Ordering::Release);
    // SAFETY: either the instruction abort is caught (the probe is armed) or the caller
    // guarantees the target returns.
    let r = unsafe { probe_exec(addr) };
    EXEC_PROBE_ARMED.store(0, Ordering::Release);
    result(r).map(|_| ())
}
