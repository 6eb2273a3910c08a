//! Exception handling at EL1: installing the vectors, decoding and reporting synchronous
//! exceptions, a hook that may resolve data aborts before they are reported (fault-wait), fixups
//! for fault probes, IRQs (to `crate::irq`), and the hand-off of exceptions from EL0 to the
//! user-task code.

use aarch64_cpu::registers::{Writeable, VBAR_EL1};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// Set while `probe_exec` runs: an instruction abort then returns to the probe.
pub(crate) static EXEC_PROBE_ARMED: AtomicU64 = AtomicU64::new(0);

/// Number of synchronous exceptions fixed up by probes (for tests).
pub static PROBE_FIXUPS: AtomicU64 = AtomicU64::new(0);

/// The fault recorded by the last probe fixup on this core.
pub fn take_probe_fault() -> FaultInfo {
    let f = &crate::percpu::this_cpu().probe_fault;
    FaultInfo {
        syndrome: esr::decode(f[0].load(Ordering::Acquire)),
        far: f[1].load(Ordering::Acquire),
        elr: f[2].load(Ordering::Acquire),
    }
}

/// What a fault hook decided about a data abort taken at EL1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub enum FaultAction {
    /// Not the hook's business: go on as without a hook (probe fixup, else report and panic).
    Report,
    /// Return to the faulting instruction and execute it again.
    Retry,
    /// Resume at this address (ELR_EL1) instead.
    Fixup(u64),
}

/// A hook that sees data aborts at EL1 before they are reported.
pub type FaultHook = fn(&mut TrapFrame, &FaultInfo) -> FaultAction;

static FAULT_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Installs (or with `None` removes) the hook called for every data abort taken at EL1, on any
/// core, with IRQs masked, before probe fixups and reports. The hook must not take a plain spin
/// lock a faulting context may hold.
pub fn set_fault_hook(hook: Option<FaultHook>) {
    FAULT_HOOK.store(hook.map_or(0, |h| h as usize), Ordering::Release);
}

fn run_fault_hook(frame: &mut TrapFrame, syndrome: Syndrome) -> FaultAction {
    let h = FAULT_HOOK.load(Ordering::Acquire);
    if h == 0 {
        return FaultAction::Report;
    }
    // SAFETY: the slot only ever holds 0 or a `FaultHook` stored by `set_fault_hook`.
    let hook: FaultHook = unsafe { core::mem::transmute::<usize, FaultHook>(h) };
    let info = FaultInfo { syndrome, far: frame.far, elr: frame.elr };
    hook(frame, &info)
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
    let f = &crate::percpu::this_cpu().probe_fault;
    f[0].store(frame.esr, Ordering::Release);
    f[1].store(frame.far, Ordering::Release);
    f[2].store(frame.elr, Ordering::Release);
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
            if s.class == ExceptionClass::DataAbortSame {
                match run_fault_hook(frame, s) {
                    FaultAction::Report => {}
                    FaultAction::Retry => return,
                    FaultAction::Fixup(pc) => {
                        frame.elr = pc;
                        return;
                    }
                }
            }
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
        VectorKind::IrqCurrent => crate::irq::handle(),
        VectorKind::SyncLower | VectorKind::IrqLower | VectorKind::SErrorLower => {
            crate::user::handle_lower_el(kind, frame)
        }
        _ => {
            report(kind, frame);
            panic!("unexpected exception");
        }
    }
}
