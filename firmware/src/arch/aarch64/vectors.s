// EL1 exception vectors and the trap-frame save/restore path.
//
// Each of the 16 vectors stores x0/x1, puts its index in x0 and branches to the common path,
// which saves the rest of the trap frame (layout: arch::aarch64::exception::TrapFrame), calls
// `handle_exception(frame, kind)` and returns with whatever the handler left in the frame.
//
// Above the trap frame the path also saves the FP/SIMD registers (q0-q31, FPSR, FPCR): Rust code
// at EL1 uses them (the target enables NEON), and an interrupt or a fault that is retried
// (fault-wait) resumes code that may have live values in any of them.

.equ TF_SIZE, 288
.equ FP_SIZE, 528                   // 32 x 16 bytes + FPSR + FPCR
.equ FRAME_SIZE, (TF_SIZE + FP_SIZE)

.macro VENTRY kind
    .balign 0x80
    sub     sp, sp, #FRAME_SIZE
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       trap_common
.endm

.section .text.vectors, "ax"
.balign 2048
.global exception_vectors
exception_vectors:
    VENTRY 0        // current EL, SP_EL0: synchronous
    VENTRY 1        //                     IRQ
    VENTRY 2        //                     FIQ
    VENTRY 3        //                     SError
    VENTRY 4        // current EL, SP_ELx: synchronous
    VENTRY 5        //                     IRQ
    VENTRY 6        //                     FIQ
    VENTRY 7        //                     SError
    VENTRY 8        // lower EL, AArch64:  synchronous
    VENTRY 9        //                     IRQ
    VENTRY 10       //                     FIQ
    VENTRY 11       //                     SError
    VENTRY 12       // lower EL, AArch32:  synchronous
    VENTRY 13       //                     IRQ
    VENTRY 14       //                     FIQ
    VENTRY 15       //                     SError

trap_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x1, sp_el0
    stp     x30, x1, [sp, #240]
    mrs     x1, elr_el1
    mrs     x2, spsr_el1
    stp     x1, x2, [sp, #256]
    mrs     x1, esr_el1
    mrs     x2, far_el1
    stp     x1, x2, [sp, #272]
    add     x1, sp, #TF_SIZE
    stp     q0, q1, [x1, #0]
    stp     q2, q3, [x1, #32]
    stp     q4, q5, [x1, #64]
    stp     q6, q7, [x1, #96]
    stp     q8, q9, [x1, #128]
    stp     q10, q11, [x1, #160]
    stp     q12, q13, [x1, #192]
    stp     q14, q15, [x1, #224]
    stp     q16, q17, [x1, #256]
    stp     q18, q19, [x1, #288]
    stp     q20, q21, [x1, #320]
    stp     q22, q23, [x1, #352]
    stp     q24, q25, [x1, #384]
    stp     q26, q27, [x1, #416]
    stp     q28, q29, [x1, #448]
    stp     q30, q31, [x1, #480]
    mrs     x2, fpsr
    mrs     x3, fpcr
    add     x1, x1, #512        // FPSR, FPCR after the 32 Q registers (beyond STP's reach)
    stp     x2, x3, [x1]
    mov     x1, x0                  // kind
    mov     x0, sp                  // &mut TrapFrame
    bl      handle_exception
    add     x1, sp, #TF_SIZE
    ldp     q0, q1, [x1, #0]
    ldp     q2, q3, [x1, #32]
    ldp     q4, q5, [x1, #64]
    ldp     q6, q7, [x1, #96]
    ldp     q8, q9, [x1, #128]
    ldp     q10, q11, [x1, #160]
    ldp     q12, q13, [x1, #192]
    ldp     q14, q15, [x1, #224]
    ldp     q16, q17, [x1, #256]
    ldp     q18, q19, [x1, #288]
    ldp     q20, q21, [x1, #320]
    ldp     q22, q23, [x1, #352]
    ldp     q24, q25, [x1, #384]
    ldp     q26, q27, [x1, #416]
    ldp     q28, q29, [x1, #448]
    ldp     q30, q31, [x1, #480]
    add     x1, x1, #512
    ldp     x2, x3, [x1]
    msr     fpsr, x2
    msr     fpcr, x3
    ldp     x1, x2, [sp, #256]
    msr     elr_el1, x1
    msr     spsr_el1, x2
    ldp     x30, x1, [sp, #240]
    msr     sp_el0, x1
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    add     sp, sp, #FRAME_SIZE
    eret

// Fault probes. Each faulting instruction has an entry in .extable; the exception handler
// sends a fault there to the fixup, with x0 = 1. On success x0 = 0 and x1 = the value.

// probe_read_u64(addr) -> (faulted, value)
.section .text.probe, "ax"
.global probe_read_u64
probe_read_u64:
    mov     x2, x0
    mov     x0, #0
.Lprobe_read_insn:
    ldr     x1, [x2]
    ret
// probe_write_u64(addr, value) -> (faulted, _)
.global probe_write_u64
probe_write_u64:
    mov     x2, x0
    mov     x0, #0
.Lprobe_write_insn:
    str     x1, [x2]
    ret
// probe_udf() -> (faulted, _): an undefined instruction.
.global probe_udf
probe_udf:
    mov     x0, #0
.Lprobe_udf_insn:
    udf     #0x4856
    ret
// probe_exec(addr) -> (faulted, _): branch to addr; an instruction abort there comes back to
// the instruction after the branch (the handler uses the saved x30) with x0 = 1.
.global probe_exec
probe_exec:
    stp     x29, x30, [sp, #-16]!
    mov     x2, x0
    mov     x0, #0
    blr     x2
    ldp     x29, x30, [sp], #16
    ret
probe_fixup:
    mov     x0, #1
    ret

.section .extable, "a"
    .quad   .Lprobe_read_insn, probe_fixup
    .quad   .Lprobe_write_insn, probe_fixup
    .quad   .Lprobe_udf_insn, probe_fixup
