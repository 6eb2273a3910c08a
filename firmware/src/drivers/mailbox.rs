//! VideoCore mailbox property interface (channel 8): asks the GPU firmware for the ARM memory
//! range when no device tree describes it.

use core::ptr::{read_volatile, write_volatile};

const READ: usize = 0x00;
const STATUS: usize = 0x18;
const WRITE: usize = 0x20;
const STATUS_FULL: u32 = 1 << 31;
const STATUS_EMPTY: u32 = 1 << 30;
const CHANNEL_PROPERTY: u32 = 8;
/// Tag: get ARM memory (response: base, size).
const TAG_GET_ARM_MEMORY: u32 = 0x0001_0005;
const RESPONSE_OK: u32 = 0x8000_0000;
/// Polls before giving up on the GPU.
const POLL_LIMIT: u32 = 1_000_000;

/// Why a mailbox request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub enum MailboxError {
    /// The mailbox stayed full or empty past the poll limit.
    Timeout,
    /// The firmware answered with an error code.
    Rejected(u32),
    /// The buffer lies above what the VideoCore can address.
    BufferUnreachable(u64),
}

#[repr(C, align(16))]
struct Message([u32; 8]);

/// Cleans and invalidates the data cache over `[addr, addr+len)` to the point of coherency, so
/// the GPU (not coherent with the ARM caches) sees our writes and we see its answer.
fn dcache_clean_inval(addr: usize, len: usize) {
    let mut line = addr & !63;
    while line < addr + len {
        // SAFETY: DC CIVAC on an address of our own buffer; no memory is modified.
        unsafe { core::arch::asm!("dc civac, {}", in(reg) line, options(nostack)) };
        line += 64;
    }
    // The maintenance completes before the mailbox write that hands the buffer over.
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::SY);
}

/// Asks the firmware for the ARM's memory range (base, size).
///
/// # Safety
/// `base` must map the mailbox registers; `virt_to_phys` must give the physical address of a
/// kernel virtual address.
pub unsafe fn arm_memory(
    base: usize,
    virt_to_phys: impl Fn(usize) -> u64,
) -> Result<(u64, u64), MailboxError> {
    let mut msg = Message([32, 0, TAG_GET_ARM_MEMORY, 8, 0, 0, 0, 0]);
    let va = msg.0.as_mut_ptr() as usize;
    let pa = virt_to_phys(va);
    if pa >= 0x4000_0000 {
        return Err(MailboxError::BufferUnreachable(pa));
    }
    dcache_clean_inval(va, 32);
    // SAFETY: the caller maps the mailbox; the register offsets are the BCM2711's.
    unsafe {
        let mut n = 0;
        while read_volatile((base + STATUS) as *const u32) & STATUS_FULL != 0 {
            n += 1;
            if n > POLL_LIMIT {
                return Err(MailboxError::Timeout);
            }
        }
        write_volatile((base + WRITE) as *mut u32, pa as u32 | CHANNEL_PROPERTY);
        loop {
            let mut n = 0;
            while read_volatile((base + STATUS) as *const u32) & STATUS_EMPTY != 0 {
                n += 1;
                if n > POLL_LIMIT {
                    return Err(MailboxError::Timeout);
                }
            }
            if read_volatile((base + READ) as *const u32) & 0xf == CHANNEL_PROPERTY {
                break;
            }
        }
    }
    dcache_clean_inval(va, 32);
    // SAFETY: the buffer is ours; volatile because the GPU wrote it behind the compiler's back.
    let words = unsafe { read_volatile(&msg.0) };
    if words[1] != RESPONSE_OK {
        return Err(MailboxError::Rejected(words[1]));
    }
    Ok((u64::from(words[5]), u64::from(words[6])))
}
