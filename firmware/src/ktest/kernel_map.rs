//! Kernel address space tests: W^X enforced by the MMU, holes fault with the right FAR, the
//! linear map is made of 2 MiB blocks, MMIO works through the kernel map.

use super::{Failure, TestResult};
use crate::arch::probe;
use crate::memory;
use crate::ptdump::{KERNEL_END, KERNEL_START};
use crate::{ensure, ensure_eq};
use kcore::addr::{VirtAddr, PMD_SIZE};
use kcore::esr::{ExceptionClass, FaultKind};
use kcore::layout::{self, KIMAGE_VOFFSET, PAGE_OFFSET};
use kcore::ptdump::{ptdump, wx_audit};

/// Read-only data (lands in .rodata).
static RODATA_WORD: u64 = 0x5a5a_5a5a_1234_5678;

/// `MOV X0, #0; RET` placed in .data: executable if W^X were broken.
#[link_section = ".data.exec_probe"]
static DATA_CODE: [u32; 2] = [0xd280_0000, 0xd65f_03c0];

fn expect_fault(
    r: Result<impl Sized, crate::arch::exception::FaultInfo>,
    what: &'static str,
) -> Result<crate::arch::exception::FaultInfo, Failure> {
    r.err().ok_or(Failure { file: file!(), line: line!(), what })
}

pub fn rodata_write_faults() -> TestResult {
    let addr = core::ptr::addr_of!(RODATA_WORD) as u64;
    // SAFETY: the write must fault; if it does not, it rewrites our own constant with itself.
    let f = expect_fault(
        unsafe { probe::write_u64(addr, RODATA_WORD) },
        "write to rodata did not fault",
    )?;
    ensure_eq!(f.syndrome.class, ExceptionClass::DataAbortSame);
    ensure_eq!(f.syndrome.fault, Some(FaultKind::Permission(3)));
    ensure!(f.syndrome.write, "reported as a write (WnR)");
    ensure_eq!(f.far, addr);
    ensure_eq!(core::hint::black_box(RODATA_WORD), 0x5a5a_5a5a_1234_5678);
    Ok(())
}

pub fn text_write_faults() -> TestResult {
    let addr = rodata_write_faults as *const () as u64 & !7;
    // SAFETY: must fault; if not, it writes back the word that is there.
    let word = unsafe { probe::read_u64(addr) }.map_err(|_| Failure {
        file: file!(),
        line: line!(),
        what: "text readable",
    })?;
    // SAFETY: as above.
    let f = expect_fault(unsafe { probe::write_u64(addr, word) }, "write to text did not fault")?;
    ensure_eq!(f.syndrome.fault, Some(FaultKind::Permission(3)));
    Ok(())
}

pub fn data_exec_faults() -> TestResult {
    let addr = DATA_CODE.as_ptr() as u64;
    // SAFETY: the code at `addr` is `mov x0, #0; ret`, so even if it ran it would return.
    let f = expect_fault(unsafe { probe::exec(addr) }, "executing from .data did not fault")?;
    ensure_eq!(f.syndrome.class, ExceptionClass::InstrAbortSame);
    ensure_eq!(f.syndrome.fault, Some(FaultKind::Permission(3)));
    ensure_eq!(f.far, addr);
    Ok(())
}

pub fn linear_alias_of_text_not_executable() -> TestResult {
    // The linear map also covers the image's frames; it must not make text executable again.
    let text_va = rodata_write_faults as *const () as u64;
    let alias = text_va - KIMAGE_VOFFSET + PAGE_OFFSET;
    // SAFETY: the target is real code (this module's function) so a broken mapping would run
    // it; with XN it faults before the first instruction.
    let f = expect_fault(unsafe { probe::exec(alias) }, "text executed through the linear map")?;
    ensure_eq!(f.syndrome.class, ExceptionClass::InstrAbortSame);
    ensure!(matches!(f.syndrome.fault, Some(FaultKind::Permission(_))));
    Ok(())
}

pub fn hole_and_guard_page_fault() -> TestResult {
    let hole = layout::MMIO_VBASE + layout::MMIO_SIZE + 0x1238;
    // SAFETY: nothing is mapped there; the read faults.
    let f =
        expect_fault(unsafe { probe::read_u64(hole) }, "read of an unmapped hole did not fault")?;
    ensure!(matches!(f.syndrome.fault, Some(FaultKind::Translation(_))));
    ensure_eq!(f.far, hole);
    let (bottom, _) = layout::stack_range(0);
    let guard = bottom.0 - 16;
    // SAFETY: the guard page below core 0's stack is unmapped; the write faults.
    let f = expect_fault(
        unsafe { probe::write_u64(guard, 0) },
        "write to the stack guard page did not fault",
    )?;
    ensure!(matches!(f.syndrome.fault, Some(FaultKind::Translation(3))));
    ensure_eq!(f.far, guard);
    Ok(())
}

pub fn wx_audit_clean() -> TestResult {
    let mm = memory::init_mm();
    let guard = mm.mmap_read();
    let report = wx_audit(&guard, memory::phys(), KERNEL_START, KERNEL_END)
        .map_err(|_| Failure { file: file!(), line: line!(), what: "walk of init_mm failed" })?;
    for o in report.offenders() {
        crate::error!("W+X: va={:#x} level={:?} desc={:#x}", o.va.0, o.level, o.desc.0);
    }
    ensure_eq!(report.count, 0);
    // Aliases: no frame writable through one mapping while executable or read-only (image)
    // through another.
    let image = (VirtAddr(KIMAGE_VOFFSET), VirtAddr(layout::MMIO_VBASE));
    let aliases =
        kcore::ptdump::alias_audit(&guard, memory::phys(), KERNEL_START, KERNEL_END, image)
            .map_err(|_| Failure {
                file: file!(),
                line: line!(),
                what: "alias audit walk failed",
            })?;
    for o in aliases.offenders() {
        crate::error!("W alias: va={:#x} pa={:#x} desc={:#x}", o.va.0, o.pa.0, o.desc.0);
    }
    let (ro_start, ro_end) = crate::kernel_map::image_ro_phys();
    ensure_eq!(aliases.protected_bytes, ro_end.0 - ro_start.0);
    ensure_eq!(aliases.count, 0);
    Ok(())
}

pub fn linear_alias_of_text_and_rodata_read_only() -> TestResult {
    for va in
        [rodata_write_faults as *const () as u64 & !7, core::ptr::addr_of!(RODATA_WORD) as u64]
    {
        let alias = va - KIMAGE_VOFFSET + PAGE_OFFSET;
        // SAFETY: reads the word through its linear alias (mapped) to write it back unchanged.
        let word = unsafe { probe::read_u64(alias) }.map_err(|_| Failure {
            file: file!(),
            line: line!(),
            what: "linear alias readable",
        })?;
        // SAFETY: must fault; if not, it writes back the word that is there.
        let f = expect_fault(
            unsafe { probe::write_u64(alias, word) },
            "write through the linear alias of the image did not fault",
        )?;
        ensure_eq!(f.syndrome.fault, Some(FaultKind::Permission(3)));
        ensure!(f.syndrome.write, "reported as a write");
        ensure_eq!(f.far, alias);
    }
    // Control: the linear alias of the image's data stays writable.
    static mut DATA_WORD: u64 = 0x1234;
    let va = core::ptr::addr_of!(DATA_WORD) as u64;
    // SAFETY: a writable static of ours; the write stores the same value through the alias.
    ensure!(unsafe { probe::write_u64(va - KIMAGE_VOFFSET + PAGE_OFFSET, 0x1234) }.is_ok());
    Ok(())
}

pub fn linear_map_uses_2m_blocks() -> TestResult {
    let mm = memory::init_mm();
    let guard = mm.mmap_read();
    let ram = crate::bootstate::ram_regions();
    let mut expected_blocks = 0;
    let mut expected_bytes = 0;
    for r in ram.iter() {
        let start = r.base.0.div_ceil(PMD_SIZE) * PMD_SIZE;
        let end = r.end() / PMD_SIZE * PMD_SIZE;
        expected_blocks += end.saturating_sub(start) / PMD_SIZE;
        expected_bytes += r.size;
    }
    // Except the block(s) holding the image's text and rodata, split into pages.
    let (ro_start, ro_end) = crate::kernel_map::image_ro_phys();
    let split = (ro_end.0.div_ceil(PMD_SIZE) - ro_start.0 / PMD_SIZE) * PMD_SIZE;
    expected_blocks -= split / PMD_SIZE;
    let mut mapped = 0;
    let counts = ptdump(
        &guard,
        memory::phys(),
        VirtAddr(PAGE_OFFSET),
        VirtAddr(PAGE_OFFSET + layout::LINEAR_MAP_SIZE),
        |l| mapped += l.size,
    )
    .map_err(|_| Failure {
        file: file!(),
        line: line!(),
        what: "walk of the linear map failed",
    })?;
    crate::info!("linear map: {} x 2M blocks, {} x 4K pages", counts.blocks_l2, counts.pages);
    ensure_eq!(counts.blocks_l2, expected_blocks);
    ensure_eq!(counts.pages, split / kcore::addr::PAGE_SIZE);
    ensure_eq!(counts.blocks_l1, 0);
    ensure_eq!(mapped, expected_bytes);
    Ok(())
}

pub fn mmio_through_kernel_map() -> TestResult {
    let uart = crate::log::CONSOLE.base() as u64;
    ensure_eq!(layout::Region::of(VirtAddr(uart)), layout::Region::Mmio);
    // UARTFR: TXFF must be clear after a flush, and the PL011's peripheral ID register
    // (UARTPeriphID0 at 0xFE0) reads 0x11.
    crate::log::CONSOLE.flush();
    // SAFETY: device registers in the MMIO window; reads have no side effects.
    let fr = unsafe { core::ptr::read_volatile((uart + 0x18) as *const u32) };
    // SAFETY: as above.
    let id0 = unsafe { core::ptr::read_volatile((uart + 0xfe0) as *const u32) };
    ensure_eq!(fr & (1 << 5), 0);
    ensure_eq!(id0 & 0xff, 0x11);
    ensure!(!crate::arch::mmu::ttbr0_enabled(), "the identity map is gone");
    Ok(())
}

pub fn translation_regime() -> TestResult {
    use aarch64_cpu::registers::{Readable, MAIR_EL1, SCTLR_EL1, TCR_EL1};
    ensure_eq!(MAIR_EL1.get(), kcore::pgtable::MAIR_VALUE);
    ensure_eq!(TCR_EL1.read(TCR_EL1::T0SZ), 16);
    ensure_eq!(TCR_EL1.read(TCR_EL1::T1SZ), 16);
    ensure!(TCR_EL1.matches_all(TCR_EL1::TG0::KiB_4 + TCR_EL1::TG1::KiB_4));
    ensure!(TCR_EL1.matches_all(TCR_EL1::SH1::Inner + TCR_EL1::EPD1::EnableTTBR1Walks));
    ensure!(SCTLR_EL1.matches_all(SCTLR_EL1::M::Enable + SCTLR_EL1::C::Cacheable));
    Ok(())
}
