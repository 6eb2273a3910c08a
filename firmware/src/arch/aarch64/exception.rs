//! Exception handling at EL1: installing the vectors, decoding and reporting synchronous
//! exceptions, fixups for fault probes, and the hand-off of exceptions from EL0 to the user-task
//! code.

use aarch64_cpu::registers::{Writeable, VBAR_EL1};
use core::sync::atomic::{AtomicU64, Ordering};
use kcore::esr::{self, ExceptionClass, Syndrome};

/// The registers saved by the vectors (layout shared with `vectors.s`).
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    /// x0..x30.
    pub x: [u64; 31],
    /// SP_EL0 (the user stack pointer).
    pub sp_el0: u64,
    /// Where the exception was taken (the return address).
    pub elr: u64,
    /// Saved PSTATE.
    pub spsr: u64,
    /// Exception syndrome.
    pub esr: u64,
    /// Fault address.
    pub far: u64,
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 288);

/// Which of the 16 vectors was taken.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub enum VectorKind {
    /// Synchronous, from EL1 (or EL1 using SP_EL0).
    SyncCurrent,
    /// IRQ/FIQ at EL1.
    IrqCurrent,
    /// SError at EL1.
    SErrorCurrent,
    /// Synchronous from EL0 (AArch64).
    SyncLower,
    /// IRQ/FIQ from EL0.
    IrqLower,
    /// SError from EL0.
    SErrorLower,
    /// Anything from AArch32 EL0 (never used).
    Aarch32,
}

impl VectorKind {
    fn from_index(i: u64) -> Self {
        match i {
            0 | 4 => Self::SyncCurrent,
            1 | 2 | 5 | 6 => Self::IrqCurrent,
            3 | 7 => Self::SErrorCurrent,
            8 => Self::SyncLower,
            9 | 10 => Self::IrqLower,
            11 => Self::SErrorLower,
            _ => Self::Aarch32,
        }
    }
}

/// A fault caught by a probe or reported by the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub struct FaultInfo {
    /// The decoded syndrome.
    pub syndrome: Syndrome,
    /// FAR_EL1 (only meaningful for aborts with a valid FAR).
    pub far: u64,
    /// ELR_EL1: the faulting instruction.
    pub elr: u64,
}

/// Last fault taken by a probe (ESR, FAR, ELR), read back by [`take_probe_fault`].
static PROBE_ESR: AtomicU64 = AtomicU64::new(0);
static PROBE_FAR: AtomicU64 = AtomicU64::new(0);
static PROBE_ELR: AtomicU64 = AtomicU64::new(0);
/// Set while `probe_exec` runs: an instruction abort then returns to the probe.
pub(crate) static EXEC_PROBE_ARMED: AtomicU64 = AtomicU64::new(0);

/// Number of synchronous exceptions fixed up by probes (for tests).
pub static PROBE_FIXUPS: AtomicU64 = AtomicU64::new(0);

/// The fault recorded by the last probe fixup.
pub fn take_probe_fault() -> FaultInfo {
    FaultInfo {
        syndrome: esr::decode(PROBE_ESR.load(Ordering::Acquire)),
        far: PROBE_FAR.load(Ordering::Acquire),
        elr: PROBE_ELR.load(Ordering::Acquire),
    }
}

/// Points VBAR_EL1 at the vectors.
pub fn install() {
    extern "C" {
        static exception_vectors: u8;
    }
    let base = core::ptr::addr_of!(exception_vectors) as u64;
    VBAR_EL1.set(base);
    // Context synchronisation: later exceptions use the new VBAR (ARM ARM D1.11 / ISB rule for
    // system register writes).
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}

/// Finds the fixup for a faulting instruction in the exception table.
fn extable_fixup(elr: u64) -> Option<u64> {
    extern "C" {
        static __extable_start: [u64; 2];
        static __extable_end: [u64; 2];
    }
    // SAFETY: the linker script places `.extable` (pairs of u64 addresses) between these two
    // symbols; the slice covers exactly that range and is never written.
    let table = unsafe {
        let start = core::ptr::addr_of!(__extable_start);
        let end = core::ptr::addr_of!(__extable_end);
        let n = (end as usize - start as usize) / core::mem::size_of::<[u64; 2]>();
        core::slice::from_raw_parts(start, n)
    };
    table.iter().find(|e| e[0] == elr).map(|e| e[1])
}

fn record_probe_fault(frame: &TrapFrame) {
    PROBE_ESR.store(frame.esr, Ordering::Release);
    PROBE_FAR.store(frame.far, Ordering::Release);
    PROBE_ELR.store(frame.elr, Ordering::Release);
    PROBE_FIXUPS.fetch_add(1, Ordering::AcqRel);
}

/// Logs a decoded synchronous exception.
pub fn report(kind: VectorKind, frame: &TrapFrame) {
    let s = esr::decode(frame.esr);
    crate::error!(
        "exception: {:?} class={} ({:#x}) ESR={:#x} ELR={:#x} SPSR={:#x}",
        kind,
        s.class.name(),
        (frame.esr >> 26) & 0x3f,
        frame.esr,
        frame.elr,
        frame.spsr
    );
    if let Some(fault) = s.fault {
        crate::error!(
            "  {} level={:?} {} FAR={:#x}{} region={}",
            fault.name(),
            fault.level(),
            if s.write { "write" } else { "read" },
            frame.far,
            if s.far_not_valid { " (FAR not valid)" } else { "" },
            kcore::layout::Region::of(kcore::addr::VirtAddr(frame.far)).name()
        );
    }
}

/// Called by `vectors.s` for every exception.
#[no_mangle]
extern "C" fn handle_exception(frame: &mut TrapFrame, kind: u64) {
    let kind = VectorKind::from_index(kind);
    match kind {
        VectorKind::SyncCurrent => {
            let s = esr::decode(frame.esr);
            if let Some(fixup) = extable_fixup(frame.elr) {
                record_probe_fault(frame);
                frame.elr = fixup;
                return;
            }
            if s.class == ExceptionClass::InstrAbortSame
                && EXEC_PROBE_ARMED.swap(0, Ordering::AcqRel) != 0
            {
                // `probe_exec` branched here with BLR: resume after the branch with x0 = 1.
                record_probe_fault(frame);
                frame.x[0] = 1;
                frame.elr = frame.x[30];
                return;
            }
            report(kind, frame);
            panic!("unexpected synchronous exception at EL1");
        }
        VectorKind::SyncLower | VectorKind::IrqLower | VectorKind::SErrorLower => {
            crate::user::handle_lower_el(kind, frame)
        }
        _ => {
            report(kind, frame);
            panic!("unexpected exception");
        }
    }
}
