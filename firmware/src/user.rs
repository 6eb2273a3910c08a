//! User tasks at EL0: entering them, their system calls, and their faults.
//!
//! A task runs until it calls `exit` or faults; either way control comes back to the kernel
//! code that started it, as the return value of [`run`]. A user fault is reported (decoded ESR
//! and FAR) and ends only the task; the firmware carries on.

use crate::arch::exception::{report, TrapFrame, VectorKind};
use core::sync::atomic::{AtomicU64, Ordering};
use kcore::esr::{self, ExceptionClass, Syndrome};

/// System call numbers (x8).
pub mod sys {
    /// exit(code) -> !
    pub const EXIT: u64 = 0;
    /// write(buf, len) -> bytes written: logs the bytes.
    pub const WRITE: u64 = 1;
    /// getpid() -> task id.
    pub const GETPID: u64 = 2;
}

/// Kernel state saved by `enter_user` (layout shared with `user.s`).
#[repr(C)]
#[derive(Default)]
struct KernelContext {
    callee_saved: [u64; 12],
    sp: u64,
}

/// How a task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub enum UserExit {
    /// It called exit(code).
    Exited(u64),
    /// It faulted: the decoded syndrome and fault address.
    Faulted {
        /// The syndrome.
        syndrome: Syndrome,
        /// FAR_EL1.
        far: u64,
        /// The faulting user PC.
        elr: u64,
    },
}

extern "C" {
    fn enter_user(entry: u64, user_sp: u64, arg: u64, ctx: *mut KernelContext) -> u64;
    fn leave_user(ctx: *mut KernelContext, value: u64) -> !;
    static user_program_start: u8;
    static user_program_end: u8;
}

/// Virtual range of the user program inside the kernel image: `[start, end)`.
pub fn program_image() -> (u64, u64) {
    (core::ptr::addr_of!(user_program_start) as u64, core::ptr::addr_of!(user_program_end) as u64)
}

static CONTEXT: AtomicU64 = AtomicU64::new(0);
static TASK_ID: AtomicU64 = AtomicU64::new(0);
static LAST_EXIT: AtomicU64 = AtomicU64::new(0);
static LAST_FAULT: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
/// Bytes the last task wrote with `write`, for tests (up to 64).
static WRITTEN: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
static WRITTEN_LEN: AtomicU64 = AtomicU64::new(0);

const EXIT_TAG_EXITED: u64 = 0;
const EXIT_TAG_FAULTED: u64 = 1;

/// Runs the user code at `entry` with `sp` and `x0 = arg` in whatever address space TTBR0 holds,
/// until it exits or faults.
///
/// # Safety
/// TTBR0 must hold a user address space mapping `entry` executable at EL0 and `sp` writable.
pub unsafe fn run(task_id: u64, entry: u64, sp: u64, arg: u64) -> UserExit {
    let mut ctx = KernelContext::default();
    CONTEXT.store(&mut ctx as *mut KernelContext as u64, Ordering::Release);
    TASK_ID.store(task_id, Ordering::Release);
    WRITTEN_LEN.store(0, Ordering::Release);
    // SAFETY: the caller set up the user address space; `ctx` lives on this frame until
    // `leave_user` returns here through it.
    let tag = unsafe { enter_user(entry, sp, arg, &mut ctx) };
    CONTEXT.store(0, Ordering::Release);
    match tag {
        EXIT_TAG_EXITED => UserExit::Exited(LAST_EXIT.load(Ordering::Acquire)),
        _ => UserExit::Faulted {
            syndrome: esr::decode(LAST_FAULT[0].load(Ordering::Acquire)),
            far: LAST_FAULT[1].load(Ordering::Acquire),
            elr: LAST_FAULT[2].load(Ordering::Acquire),
        },
    }
}

/// What the last task passed to `write`.
pub fn last_written(buf: &mut [u8; 64]) -> usize {
    let n = WRITTEN_LEN.load(Ordering::Acquire) as usize;
    for (i, w) in WRITTEN.iter().enumerate() {
        buf[i * 8..i * 8 + 8].copy_from_slice(&w.load(Ordering::Acquire).to_le_bytes());
    }
    n
}

fn back_to_kernel(tag: u64) -> ! {
    let ctx = CONTEXT.load(Ordering::Acquire) as *mut KernelContext;
    assert!(!ctx.is_null(), "exception from EL0 with no user task running");
    // SAFETY: `ctx` is the live frame of `run`, which is waiting in `enter_user`.
    unsafe { leave_user(ctx, tag) }
}

/// Copies `len` bytes from user address `ptr`, refusing anything outside the user half.
fn copy_from_user(ptr: u64, len: u64, out: &mut [u8; 64]) -> Option<usize> {
    let len = len.min(64);
    let end = ptr.checked_add(len)?;
    if end > kcore::layout::USER_END {
        return None;
    }
    for i in 0..len {
        let a = ptr + i;
        // SAFETY: a user address; the probe catches a fault if it is unmapped. EL1 may read
        // EL0-accessible memory (no PAN on the Cortex-A72).
        let word = unsafe { crate::arch::probe::read_u64(a & !7) }.ok()?;
        out[i as usize] = (word >> ((a & 7) * 8)) as u8;
    }
    Some(len as usize)
}

fn syscall(frame: &mut TrapFrame) {
    let nr = frame.x[8];
    match nr {
        sys::EXIT => {
            LAST_EXIT.store(frame.x[0], Ordering::Release);
            back_to_kernel(EXIT_TAG_EXITED)
        }
        sys::WRITE => {
            let mut buf = [0u8; 64];
            match copy_from_user(frame.x[0], frame.x[1], &mut buf) {
                Some(n) => {
                    for (i, w) in WRITTEN.iter().enumerate() {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&buf[i * 8..i * 8 + 8]);
                        w.store(u64::from_le_bytes(b), Ordering::Release);
                    }
                    WRITTEN_LEN.store(n as u64, Ordering::Release);
                    let s = core::str::from_utf8(&buf[..n]).unwrap_or("<not utf-8>");
                    crate::info!("user task {}: write: {}", TASK_ID.load(Ordering::Relaxed), s);
                    frame.x[0] = n as u64;
                }
                None => frame.x[0] = u64::MAX, // -EFAULT
            }
        }
        sys::GETPID => frame.x[0] = TASK_ID.load(Ordering::Relaxed),
        _ => frame.x[0] = u64::MAX - 37, // -ENOSYS
    }
}

/// Called by the exception handler for anything taken from EL0.
pub fn handle_lower_el(kind: VectorKind, frame: &mut TrapFrame) {
    let s = esr::decode(frame.esr);
    if kind == VectorKind::SyncLower && s.class == ExceptionClass::Svc64 {
        syscall(frame);
        return;
    }
    crate::warn!("user fault in task {}: killing the task", TASK_ID.load(Ordering::Relaxed));
    report(kind, frame);
    LAST_FAULT[0].store(frame.esr, Ordering::Release);
    LAST_FAULT[1].store(frame.far, Ordering::Release);
    LAST_FAULT[2].store(frame.elr, Ordering::Release);
    back_to_kernel(EXIT_TAG_FAULTED)
}

/// A user address space with the user program mapped at `USER_BASE` and one stack page.
pub struct UserSpace {
    /// The address space (TTBR0 + ASID).
    pub mm: kcore::mm::Mm<kcore::mm::User>,
    /// First user VA of the program.
    pub entry: u64,
    /// Initial user stack pointer.
    pub sp: u64,
    stack: kcore::addr::Pfn,
}

/// Where the user stack page goes.
pub const USER_STACK_PAGE: u64 = 0x0000_7fff_ffff_0000;

/// Why a user address space could not be made.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub enum UserSpaceError {
    /// No frame for the root table or the stack.
    NoMemory,
    /// Mapping failed.
    Map(kcore::mapper::MapError),
}

impl UserSpace {
    /// Builds an address space with ASID `asid`: the program's pages user-executable and
    /// read-only (PXN: never executable by the kernel), a user stack page RW and XN.
    pub fn new(asid: u16) -> Result<UserSpace, UserSpaceError> {
        use crate::memory::{BuddyTables, LINEAR, VMEMMAP};
        use kcore::addr::{PhysAddr, VirtAddr, PAGE_SIZE};
        use kcore::mapper::{BlockPolicy, FrameAlloc};
        use kcore::pgtable::Attrs;
        use kcore::tlb::HwMmu;

        let root = BuddyTables.alloc_table().ok_or(UserSpaceError::NoMemory)?;
        // SAFETY: a fresh zeroed table page, reached through the linear map; ASIDs are handed
        // out by the caller, one live space each.
        let mm = unsafe { kcore::mm::Mm::new_user(root, asid) };
        let stack =
            crate::memory::BUDDY.lock().alloc(&VMEMMAP, 0).map_err(|_| UserSpaceError::NoMemory)?;
        // SAFETY: a frame just allocated to us; zeroed so no kernel data reaches EL0.
        unsafe {
            core::ptr::write_bytes(
                kcore::phys::PhysMem::ptr(&LINEAR, stack.addr()),
                0,
                PAGE_SIZE as usize,
            )
        };
        let (start, end) = program_image();
        {
            let mut g = mm.mmap_write();
            let mut mmu = HwMmu::new();
            g.map_range(
                &LINEAR,
                &mut BuddyTables,
                &mut mmu,
                VirtAddr(kcore::layout::USER_BASE),
                PhysAddr(start - kcore::layout::KIMAGE_VOFFSET),
                end - start,
                Attrs::user_text(),
                BlockPolicy::PagesOnly,
            )
            .map_err(UserSpaceError::Map)?;
            g.map_range(
                &LINEAR,
                &mut BuddyTables,
                &mut mmu,
                VirtAddr(USER_STACK_PAGE),
                stack.addr(),
                PAGE_SIZE,
                Attrs::user_data(),
                BlockPolicy::PagesOnly,
            )
            .map_err(UserSpaceError::Map)?;
        }
        Ok(UserSpace {
            mm,
            entry: kcore::layout::USER_BASE,
            sp: USER_STACK_PAGE + PAGE_SIZE,
            stack,
        })
    }

    /// Runs the user program in this address space with `x0 = arg`.
    pub fn run(&self, task_id: u64, arg: u64) -> UserExit {
        crate::arch::mmu::set_ttbr0(self.mm.root(), self.mm.asid());
        // SAFETY: TTBR0 now holds this space, which maps the program and the stack.
        let r = unsafe { run(task_id, self.entry, self.sp, arg) };
        let km = crate::bootstate::kernel_map().expect("kernel map");
        crate::arch::mmu::disable_ttbr0(km.empty_root);
        r
    }
}

impl Drop for UserSpace {
    fn drop(&mut self) {
        use crate::memory::{BuddyTables, LINEAR, VMEMMAP};
        use kcore::addr::VirtAddr;
        use kcore::tlb::HwMmu;
        let mut mmu = HwMmu::new();
        // SAFETY: this space is not installed (run() restores the empty TTBR0) and owns its
        // tables; unmapping issues the TLB invalidation for its ASID.
        let r = unsafe {
            kcore::mapper::unmap_range(
                self.mm.root(),
                &LINEAR,
                &mut BuddyTables,
                &mut mmu,
                VirtAddr(0),
                kcore::layout::USER_END,
                self.mm.tlb_scope(),
            )
        };
        if let Err(e) = r {
            crate::error!("user space teardown: {:?}", e);
        }
        kcore::mapper::FrameAlloc::free_table(&mut BuddyTables, self.mm.root());
        let _ = crate::memory::BUDDY.lock().free(&VMEMMAP, self.stack, 0);
    }
}
