// pi4-hvo entry: arm64 Image header, exception-level drop, BSS, boot tables, MMU on.
//
// Entered on core 0 at EL2 (Pi 4 firmware, QEMU raw image) or on every core at EL3 (QEMU ELF),
// or at EL1, with the MMU and caches off and x0 holding the boot-information pointer (DTB or
// ATAGs). Runs at the physical load address with only PC-relative addressing until the MMU is on.

.equ KIMAGE_VOFFSET, 0xFFFF800000000000

// Boot descriptors (see kcore::pgtable for the typed versions used everywhere else):
// block | AF | SH=inner shareable | AttrIndx=0 (Normal WB) | UXN
.equ BOOT_BLOCK_NORMAL, 0x0040000000000701
// block | AF | AttrIndx=1 (Device-nGnRE) | PXN | UXN
.equ BOOT_BLOCK_DEVICE, 0x0060000000000405
.equ DESC_TABLE, 0x3

.section .text.head, "ax"
.global _start
_start:
    b       primary_entry           // code0: the Image header's first word branches past it
    .word   0                       // code1
    .quad   0x80000                 // text_offset: load 0x80000 bytes above the 2 MiB base
    .quad   __image_size            // image_size, including BSS
    .quad   0x2                     // flags: little endian, 4 KiB pages
    .quad   0, 0, 0                 // reserved
    .ascii  "ARM\x64"               // magic
    .word   0                       // reserved (PE header offset)

.section .text.boot, "ax"
primary_entry:
    mov     x19, x0                 // x19: boot information pointer (DTB or ATAGs)
    mrs     x1, mpidr_el1
    and     x1, x1, #0xff
    cbnz    x1, park_secondary      // cores 1-3: wait (only reached when QEMU starts all cores)
    mrs     x20, CurrentEL
    lsr     x20, x20, #2            // x20: exception level at entry
    cmp     x20, #3
    b.eq    from_el3
    cmp     x20, #2
    b.eq    from_el2
    b       at_el1

from_el3:
    // SCR_EL3: NS=1, RES1 bits 4-5, HCE=1, RW=1 (lower levels are AArch64).
    mov     x0, #((1 << 0) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 10))
    msr     scr_el3, x0
    msr     cptr_el3, xzr           // no FP/SIMD traps to EL3
    bl      el2_regs
    mov     x0, #0x3c5              // SPSR: EL1h, D A I F masked
    msr     spsr_el3, x0
    adr     x0, at_el1
    msr     elr_el3, x0
    eret

from_el2:
    bl      el2_regs
    mov     x0, #0x3c5              // SPSR: EL1h, D A I F masked
    msr     spsr_el2, x0
    adr     x0, at_el1
    msr     elr_el2, x0
    eret

// EL2 state EL1 needs: AArch64 at EL1, counter/timer access, no FP traps, real IDs.
el2_regs:
    mov     x0, #(1 << 31)          // HCR_EL2.RW: EL1 is AArch64; no stage 2, no traps
    msr     hcr_el2, x0
    mrs     x0, cnthctl_el2
    orr     x0, x0, #3              // EL1PCTEN | EL1PCEN: EL1 reads CNTPCT, uses the EL1 timer
    msr     cnthctl_el2, x0
    msr     cntvoff_el2, xzr        // virtual count == physical count
    mov     x0, #0x33ff             // CPTR_EL2: RES1 bits only, TFP=0
    msr     cptr_el2, x0
    msr     hstr_el2, xzr
    mrs     x0, midr_el1
    msr     vpidr_el2, x0           // EL1 reads of MIDR/MPIDR see the real values
    mrs     x0, mpidr_el1
    msr     vmpidr_el2, x0
    ret

at_el1:
    mov     x0, #(3 << 20)          // CPACR_EL1.FPEN: Rust code may use FP/SIMD registers
    msr     cpacr_el1, x0
    isb

    // Zero BSS (includes the boot tables and the boot stack) with the MMU and caches off.
    // Cache maintenance follows Linux's head.S (create_idmap / preserve_boot_args):
    //  1. before the non-cacheable writes, invalidate the range to the PoC, so that no dirty
    //     line a previous stage left over it can be evicted later on top of what we write
    //     (ARM ARM D7.4.x: with the cache off, a write goes to memory but an older dirty line for
    //     the same address may still be written back afterwards);
    //  2. after them (step below, once the tables are written), invalidate again, so that no
    //     stale line allocated meanwhile (speculative fills are allowed for cacheable regions of
    //     a previous stage's mappings) hides the new contents from the cacheable accesses and
    //     table walks that start when the MMU and caches go on (ARM ARM D7.5.1, D8.2).
    // QEMU models no caches: these steps cannot fail there and are exercised only on a board.
    adrp    x0, __bss_start
    add     x0, x0, :lo12:__bss_start
    adrp    x1, __bss_end
    add     x1, x1, :lo12:__bss_end
    bl      dcache_inval_poc        // step 1 over BSS, the boot tables and the boot stack
    adrp    x0, __bss_start
    add     x0, x0, :lo12:__bss_start
    adrp    x1, __bss_end
    add     x1, x1, :lo12:__bss_end
1:  cmp     x0, x1
    b.hs    2f
    stp     xzr, xzr, [x0], #16
    b       1b
2:
    // Boot tables: x2 = TTBR0 L0, x3 = TTBR0 L1, x4 = TTBR1 L0, x5 = TTBR1 L1.
    adrp    x2, __boot_tables
    add     x3, x2, #0x1000
    add     x4, x2, #0x2000
    add     x5, x2, #0x3000

    // TTBR0: identity map of 0..4 GiB: RAM (0..3 GiB) Normal, 3..4 GiB (peripherals) Device.
    orr     x6, x3, #DESC_TABLE
    str     x6, [x2]                // L0[0] -> L1
    ldr     x6, =BOOT_BLOCK_NORMAL
    str     x6, [x3, #0]            // L1[0]: 0..1 GiB
    mov     x7, #0x40000000
    orr     x7, x6, x7
    str     x7, [x3, #8]            // L1[1]: 1..2 GiB
    mov     x7, #0x80000000
    orr     x7, x6, x7
    str     x7, [x3, #16]           // L1[2]: 2..3 GiB
    ldr     x6, =BOOT_BLOCK_DEVICE
    mov     x7, #0xC0000000
    orr     x7, x6, x7
    str     x7, [x3, #24]           // L1[3]: 3..4 GiB, device

    // TTBR1: the first GiB of RAM at KIMAGE_VOFFSET (L0 index 256, L1 index 0), where the
    // image is linked. Writable and executable only until the kernel map replaces it.
    orr     x6, x5, #DESC_TABLE
    str     x6, [x4, #(256 * 8)]
    ldr     x6, =BOOT_BLOCK_NORMAL  // executable at EL1 (PXN clear), never at EL0 (UXN)
    str     x6, [x5]

    // Step 2: the zeroed BSS and the tables were written with the MMU off (non-cacheable);
    // DMB SY orders those writes before the invalidation (Linux: "dmb sy" before
    // dcache_inval_poc), then discard any line over them so the cacheable table walks and loads
    // see the new contents (ARM ARM D8.2: walks may read from the data caches once
    // TCR_EL1.IRGN/ORGN say write-back). dcache_inval_poc ends with DSB SY: the invalidation
    // completes before the MMU is enabled.
    dmb     sy
    adrp    x0, __bss_start
    add     x0, x0, :lo12:__bss_start
    adrp    x1, __bss_end
    add     x1, x1, :lo12:__bss_end
    bl      dcache_inval_poc
    adrp    x2, __boot_tables       // x2..x5 were clobbered by the call
    add     x3, x2, #0x1000
    add     x4, x2, #0x2000
    add     x5, x2, #0x3000

    bl      set_translation_regime  // MAIR_EL1, TCR_EL1 (shared with the secondaries)
    msr     ttbr0_el1, x2
    msr     ttbr1_el1, x4
    // Invalidate whatever translations the previous stage left (ARM ARM D8.13: TLB contents
    // are UNKNOWN out of reset), then synchronise the system-register writes.
    tlbi    vmalle1
    dsb     nsh
    isb

    // SCTLR_EL1: RES1 bits | M | C | SA | SA0 | I | nTWI | nTWE.
    ldr     x6, =(0x30d00800 | (1 << 0) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 12) | (1 << 16) | (1 << 18))
    msr     sctlr_el1, x6
    isb                             // the MMU is on for every instruction after this one

    // Still executing at the physical address (identity map); move to the linked addresses.
    ldr     x6, =__boot_stack_top
    mov     sp, x6
    mov     x0, x19                 // boot information pointer
    mov     x1, x20                 // exception level at entry
    ldr     x6, =board_main
    br      x6

// Cores 1-3 when they entered this image directly (QEMU's ELF boot starts every core at
// _start): wait on the same spin table QEMU's stub and the Pi 4 armstub use (0xd8 + 8 * core) for
// the boot core to write an entry address, as those stubs do.
park_secondary:
    mov     x5, #0xd8
    mrs     x6, mpidr_el1
    and     x6, x6, #0xff
1:  wfe
    ldr     x4, [x5, x6, lsl #3]
    cbz     x4, 1b
    br      x4

// MAIR_EL1 and TCR_EL1 for the boot and the kernel map. Clobbers x6, x7.
set_translation_regime:
    // MAIR_EL1: attr0 = Normal WB RA/WA (0xff), attr1 = Device-nGnRE (0x04).
    mov     x6, #0x04ff
    msr     mair_el1, x6
    // TCR_EL1: T0SZ=T1SZ=16 (48-bit), 4 KiB granules (TG0=0, TG1=2), inner shareable, WB
    // walks; IPS from ID_AA64MMFR0_EL1.PARange.
    ldr     x6, =((16 << 0) | (1 << 8) | (1 << 10) | (3 << 12) | (0 << 14) | (16 << 16) | (1 << 24) | (1 << 26) | (3 << 28) | (2 << 30))
    mrs     x7, id_aa64mmfr0_el1
    and     x7, x7, #0x7
    orr     x6, x6, x7, lsl #32
    msr     tcr_el1, x6
    ret

// dcache_inval_poc(start x0, end x1): invalidate [start, end) to the point of coherency, as
// Linux's dcache_inval_poc: a partial line at either end is cleaned and invalidated (DC CIVAC)
// so bytes outside the range sharing it are not lost, whole lines are invalidated (DC IVAC).
// Line size from CTR_EL0.DminLine. Ends with DSB SY (ARM ARM D7.5.9: maintenance completes at
// a DSB). Clobbers x0-x3.
dcache_inval_poc:
    mrs     x3, ctr_el0
    ubfx    x3, x3, #16, #4
    mov     x2, #4
    lsl     x2, x2, x3              // x2: line size in bytes
    sub     x3, x2, #1              // x3: line mask
    tst     x1, x3
    bic     x1, x1, x3
    b.eq    1f
    dc      civac, x1               // partial last line
1:  tst     x0, x3
    bic     x0, x0, x3
    b.eq    2f
    dc      civac, x0               // partial first line
    b       3f
2:  dc      ivac, x0
3:  add     x0, x0, x2
    cmp     x0, x1
    b.lo    2b
    dsb     sy
    ret

// Cores 1-3, released from the spin table by smp::boot_secondaries: x0 = 0, at the physical
// address of this label, MMU and caches off, at EL2 (QEMU raw boot, Pi 4 armstub) or EL3/EL1.
// Nothing is written to memory until the MMU and caches are on, so no invalidation is needed
// here (the rules of the primary path are about memory written with caches off); what is read
// (secondary_boot_data) was cleaned to the PoC by the boot core before the release.
.global secondary_entry
secondary_entry:
    mrs     x20, CurrentEL
    lsr     x20, x20, #2
    cmp     x20, #3
    b.eq    2f
    cmp     x20, #2
    b.eq    1f
    b       secondary_el1
1:  bl      el2_regs
    mov     x0, #0x3c5              // SPSR: EL1h, D A I F masked
    msr     spsr_el2, x0
    adr     x0, secondary_el1
    msr     elr_el2, x0
    eret
2:  mov     x0, #((1 << 0) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 10))
    msr     scr_el3, x0
    msr     cptr_el3, xzr
    bl      el2_regs
    mov     x0, #0x3c5
    msr     spsr_el3, x0
    adr     x0, secondary_el1
    msr     elr_el3, x0
    eret

secondary_el1:
    mov     x0, #(3 << 20)          // CPACR_EL1.FPEN
    msr     cpacr_el1, x0
    isb
    mrs     x19, mpidr_el1
    and     x19, x19, #0xff         // x19: core number
    cmp     x19, #4
    b.hs    4f
    adrp    x0, secondary_boot_data // MMU off: PC-relative gives the physical address
    add     x0, x0, :lo12:secondary_boot_data
    ldr     x1, [x0]                // TTBR1: the live kernel map
    add     x2, x0, x19, lsl #3
    ldr     x21, [x2, #8]           // this core's stack top (higher half)
    cbz     x1, 4f
    cbz     x21, 4f
    bl      set_translation_regime
    adrp    x2, __boot_tables       // TTBR0: the boot identity map, to survive the MMU switch
    msr     ttbr0_el1, x2
    msr     ttbr1_el1, x1
    // TLB contents are UNKNOWN out of reset (ARM ARM D8.13): drop them on this core before the
    // MMU goes on, and synchronise the register writes.
    tlbi    vmalle1
    dsb     nsh
    isb
    ldr     x6, =(0x30d00800 | (1 << 0) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 12) | (1 << 16) | (1 << 18))
    msr     sctlr_el1, x6
    isb                             // the MMU is on for every instruction after this one
    mov     sp, x21
    mov     x29, #0
    mov     x30, #0
    mov     x0, x19
    ldr     x6, =secondary_main
    br      x6
4:  wfe                             // not a core this firmware releases: park
    b       4b
