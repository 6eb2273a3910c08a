// Translation-table base switches that cannot run from the mappings they change.

.equ KIMAGE_VOFFSET, 0xFFFF800000000000

// switch_ttbr1(new_ttbr1: u64, empty_root: u64)
//
// Replaces the kernel's TTBR1 tables while the kernel runs from them. The new tables map the
// image at the same virtual addresses but with different block sizes (4 KiB pages instead of
// the boot 1 GiB block), so old and new translations must never both be live in the TLB:
// break-before-make applied to the whole table base (ARM ARM D8.16.1). The sequence runs from
// the identity map (TTBR0), touching no TTBR1 address, like Linux's idmap_cpu_replace_ttbr1:
//   TTBR1 = empty table, ISB -> no new walks of the old tables,
//   TLBI VMALLE1IS, DSB ISH, ISB -> every old TTBR1 translation is gone,
//   TTBR1 = new tables, ISB -> new walks only.
.section .text.mmu, "ax"
.global switch_ttbr1
switch_ttbr1:
    // The new tables were written through cacheable mappings; make the writes visible to the
    // table walker before it can use them (ARM ARM D8.2.6: DSB after table updates).
    dsb     ishst
    adr     x2, 1f
    ldr     x3, =KIMAGE_VOFFSET
    sub     x2, x2, x3
    br      x2                      // continue at the physical (identity-mapped) address
1:  msr     ttbr1_el1, x1           // break: an empty table
    isb
    tlbi    vmalle1is               // invalidate every cached TTBR1 translation, all cores
    dsb     ish                     // ...and wait for the invalidation to complete
    isb
    msr     ttbr1_el1, x0           // make: the new tables
    isb                             // later instructions translate through the new tables
    ret                             // back to the caller's kernel virtual address

// call_on_stack(stack_top: u64, f: extern "C" fn(u64) -> !, arg: u64) -> !
.global call_on_stack
call_on_stack:
    mov     sp, x0
    mov     x0, x2
    mov     x29, #0                 // terminate frame-pointer chains at the new stack
    mov     x30, #0
    br      x1
