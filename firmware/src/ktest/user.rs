//! User address space tests: an EL0 task runs and makes system calls; EL0 cannot read kernel
//! memory or the vmemmap (user faults, reported, the firmware carries on); the kernel cannot
//! execute user pages (PXN); walking the user mm needs (and works with) the write lock.

use super::{Failure, TestResult};
use crate::user::{last_written, UserExit, UserSpace, USER_STACK_PAGE};
use crate::{ensure, ensure_eq};
use kcore::addr::VirtAddr;
use kcore::esr::{ExceptionClass, FaultKind};
use kcore::layout::{PAGE_OFFSET, USER_BASE, VMEMMAP_START};
use kcore::pgtable::Level;
use kcore::ptdump::ptdump;

fn space() -> Result<UserSpace, Failure> {
    UserSpace::new(1).map_err(|e| {
        crate::error!("user space: {:?}", e);
        Failure { file: file!(), line: line!(), what: "user space built" }
    })
}

pub fn el0_task_syscalls() -> TestResult {
    let us = space()?;
    let exit = us.run(7, 0);
    ensure_eq!(exit, UserExit::Exited(47));
    let mut buf = [0u8; 64];
    let n = last_written(&mut buf);
    ensure!(&buf[..n] == b"hello from EL0", "write() carried the user's bytes");
    Ok(())
}

fn el0_read_faults(addr: u64) -> TestResult {
    let us = space()?;
    match us.run(8, addr) {
        UserExit::Faulted { syndrome, far, .. } => {
            ensure_eq!(syndrome.class, ExceptionClass::DataAbortLower);
            ensure!(matches!(syndrome.fault, Some(FaultKind::Permission(_))), "permission fault");
            ensure_eq!(far, addr);
        }
        other => {
            crate::error!("EL0 read of {:#x}: {:?}", addr, other);
            return Err(Failure {
                file: file!(),
                line: line!(),
                what: "EL0 read of kernel memory faulted",
            });
        }
    }
    // The firmware carries on: the next task runs normally.
    ensure_eq!(us.run(9, 0), UserExit::Exited(49));
    Ok(())
}

pub fn el0_read_of_kernel_faults() -> TestResult {
    el0_read_faults(PAGE_OFFSET + 0x8_0000)
}

pub fn el0_read_of_vmemmap_faults() -> TestResult {
    el0_read_faults(VMEMMAP_START)
}

pub fn kernel_cannot_execute_user_pages() -> TestResult {
    let us = space()?;
    crate::arch::mmu::set_ttbr0(us.mm.root(), us.mm.asid());
    // SAFETY: the user program's first instructions would return to us (x0 = 0 path calls
    // `svc`, which from EL1 is not taken as a syscall); PXN makes the fetch fault first.
    let r = unsafe { crate::arch::probe::exec(USER_BASE) };
    let km = crate::bootstate::kernel_map().expect("kernel map");
    crate::arch::mmu::disable_ttbr0(km.empty_root);
    let f = r.err().ok_or(Failure {
        file: file!(),
        line: line!(),
        what: "EL1 executed a user page",
    })?;
    ensure_eq!(f.syndrome.class, ExceptionClass::InstrAbortSame);
    ensure!(matches!(f.syndrome.fault, Some(FaultKind::Permission(_))));
    Ok(())
}

pub fn walk_user_mm_with_write_lock() -> TestResult {
    let us = space()?;
    let guard = us.mm.mmap_write();
    let mut lines = 0;
    let mut text_ok = false;
    let mut stack_ok = false;
    let counts = ptdump(&guard, crate::memory::phys(), VirtAddr(0), VirtAddr(1 << 48), |l| {
        lines += 1;
        crate::info!("user mm: {}", crate::log::Disp(l));
        if l.start.0 == USER_BASE {
            text_ok =
                l.el0 && !l.writable && l.x_el0 && !l.x_el1 && !l.global && l.level == Level::L3;
        }
        if l.start.0 == USER_STACK_PAGE {
            stack_ok = l.el0 && l.writable && !l.x_el0 && !l.x_el1 && !l.global;
        }
    })
    .map_err(|_| Failure { file: file!(), line: line!(), what: "walk of the user mm" })?;
    ensure_eq!(lines, 2);
    ensure!(text_ok, "program: EL0 read+exec, not writable, PXN, non-global");
    ensure!(stack_ok, "stack: EL0 read+write, never executable, non-global");
    ensure!(counts.pages >= 2);
    Ok(())
}
