//! ARM semihosting: how a run under QEMU (`-semihosting`) reports its exit status.
//!
//! Only used when the board says a debugger/emulator is there: on a real board without a debug
//! probe, `HLT #0xF000` is an undefined instruction.

/// SYS_EXIT_EXTENDED: exit with a reason and a status code.
const SYS_EXIT_EXTENDED: u64 = 0x20;
/// ADP_Stopped_ApplicationExit: a normal exit; the subcode is the exit status.
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x20026;

/// Ends the emulation with `code` as QEMU's exit status.
pub fn exit(code: u32) -> ! {
    let block = [ADP_STOPPED_APPLICATION_EXIT, u64::from(code)];
    // SAFETY: the semihosting call reads the two-word parameter block, which lives on this stack
    // frame for the duration of the call; under QEMU it does not return.
    unsafe {
        core::arch::asm!(
            "hlt #0xf000",
            in("x0") SYS_EXIT_EXTENDED,
            in("x1") block.as_ptr(),
            options(nostack)
        );
    }
    super::cpu::park()
}
