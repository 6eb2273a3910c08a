// Entering EL0 and coming back.
//
// enter_user(entry, user_sp, arg, ctx) saves the kernel's callee-saved registers and stack pointer
// in *ctx and ERETs to `entry` at EL0t with x0 = arg. Exceptions from EL0 arrive on SP_EL1 below
// that point; the handler either ERETs back to EL0 (a system call) or calls
// leave_user(ctx, value), which unwinds to the caller of enter_user as if it returned `value`.

.section .text.user_entry, "ax"
.global enter_user
enter_user:
    stp     x19, x20, [x3, #0]
    stp     x21, x22, [x3, #16]
    stp     x23, x24, [x3, #32]
    stp     x25, x26, [x3, #48]
    stp     x27, x28, [x3, #64]
    stp     x29, x30, [x3, #80]
    mov     x4, sp
    str     x4, [x3, #96]
    msr     sp_el0, x1
    msr     elr_el1, x0
    mov     x4, #0x3c0              // SPSR: EL0t, D A I F masked (no interrupts in this firmware)
    msr     spsr_el1, x4
    mov     x0, x2
    // Scrub the other registers so no kernel value leaks to EL0.
    mov     x1, xzr
    mov     x2, xzr
    mov     x3, xzr
    mov     x4, xzr
    mov     x5, xzr
    mov     x6, xzr
    mov     x7, xzr
    mov     x8, xzr
    mov     x9, xzr
    mov     x10, xzr
    mov     x11, xzr
    mov     x12, xzr
    mov     x13, xzr
    mov     x14, xzr
    mov     x15, xzr
    mov     x16, xzr
    mov     x17, xzr
    mov     x18, xzr
    mov     x19, xzr
    mov     x20, xzr
    mov     x21, xzr
    mov     x22, xzr
    mov     x23, xzr
    mov     x24, xzr
    mov     x25, xzr
    mov     x26, xzr
    mov     x27, xzr
    mov     x28, xzr
    mov     x29, xzr
    mov     x30, xzr
    eret

.global leave_user
leave_user:
    ldr     x2, [x0, #96]
    mov     sp, x2
    ldp     x19, x20, [x0, #0]
    ldp     x21, x22, [x0, #16]
    ldp     x23, x24, [x0, #32]
    ldp     x25, x26, [x0, #48]
    ldp     x27, x28, [x0, #64]
    ldp     x29, x30, [x0, #80]
    mov     x0, x1
    ret

// The user program: one page of position-independent EL0 code, mapped into user address spaces.
//   x0 at entry: 0 = say hello and exit(getpid() + 40); otherwise an address to read (a probe of
//   what EL0 may see): load from it, then exit(0) — or die of the fault.
// System calls: x8 = number (0 exit, 1 write(buf, len), 2 getpid), svc #0, result in x0.
.section .text.user_program, "ax"
.balign 4096
.global user_program_start
user_program_start:
    cbnz    x0, 1f
    adr     x0, user_hello
    mov     x1, #(user_hello_end - user_hello)
    mov     x8, #1
    svc     #0
    mov     x8, #2
    svc     #0
    add     x0, x0, #40
    mov     x8, #0
    svc     #0
    b       .
1:  ldr     x1, [x0]
    mov     x0, #0
    mov     x8, #0
    svc     #0
    b       .
user_hello:
    .ascii  "hello from EL0"
user_hello_end:
.balign 4096
.global user_program_end
user_program_end:
