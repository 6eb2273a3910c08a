//! `memhp_reserve=`: the range held back for a later hot-add never contains memory the boot still
//! needs (issue 10 item 1). The cases are the ones that crashed the boot on QEMU `raspi4b`.

use kcore::memblock::MemRegion;
use kcore::vmemmap::{hotplug_holdback, hotplug_holdback_avoiding, SECTION_SIZE};

const MIB: u64 = 1 << 20;
const BANK0: MemRegion = MemRegion::new(0, 0x4000_0000);
/// QEMU: firmware stub and spin table, the kernel image at 0x80000.
const BOOT: [MemRegion; 2] = [MemRegion::new(0, 0x8_0000), MemRegion::new(0x8_0000, 0x10_0000)];

#[test]
fn no_reservation_in_the_way_keeps_the_top_of_the_bank() {
    let held = hotplug_holdback_avoiding(&BANK0, 256 * MIB, &BOOT).unwrap();
    assert_eq!(held, hotplug_holdback(&BANK0, 256 * MIB).unwrap());
    assert_eq!(held, MemRegion::from_range(0x3000_0000, 0x4000_0000));
}

#[test]
fn whole_bank_holding_the_kernel_is_refused() {
    // memhp_reserve=1G on the first GiB: the old choice held back the kernel itself.
    let old = hotplug_holdback(&BANK0, 1024 * MIB).unwrap();
    assert!(old.overlaps(&BOOT[1]), "the negative control: the unchecked choice hits the kernel");
    assert_eq!(hotplug_holdback_avoiding(&BANK0, 1024 * MIB, &BOOT), None);
    // The second bank has room.
    let bank1 = MemRegion::new(0x4000_0000, 0x4000_0000);
    assert_eq!(hotplug_holdback_avoiding(&bank1, 1024 * MIB, &BOOT), Some(bank1));
}

#[test]
fn dtb_in_the_top_sections_moves_the_range_below_it() {
    // A DTB at 0x3100_0000 (QEMU places it after a 656 MiB initrd): 256M goes below it.
    let dtb = MemRegion::new(0x3100_0000, 0x1_0000);
    let avoid = [BOOT[0], BOOT[1], dtb];
    let old = hotplug_holdback(&BANK0, 256 * MIB).unwrap();
    assert!(old.overlaps(&dtb));
    let held = hotplug_holdback_avoiding(&BANK0, 256 * MIB, &avoid).unwrap();
    assert_eq!(held, MemRegion::from_range(0x2000_0000, 0x3000_0000));
    assert!(avoid.iter().all(|r| !r.overlaps(&held)));
    assert_eq!(held.base.0 % SECTION_SIZE, 0);
}

#[test]
fn dtb_at_128m_with_896m_leaves_no_room() {
    // The Pi 4 fixture's DTB sits at 0x800_0000: 896M of the first GiB would have to start at
    // 0x800_0000 and contain it.
    let dtb = MemRegion::new(0x800_0000, 0xc000);
    let avoid = [BOOT[0], BOOT[1], dtb];
    assert!(hotplug_holdback(&BANK0, 896 * MIB).unwrap().overlaps(&dtb));
    assert_eq!(hotplug_holdback_avoiding(&BANK0, 896 * MIB, &avoid), None);
    // 768M fits above the DTB.
    let held = hotplug_holdback_avoiding(&BANK0, 768 * MIB, &avoid).unwrap();
    assert_eq!(held, MemRegion::from_range(0x1000_0000, 0x4000_0000));
}

#[test]
fn reservations_stacked_down_the_bank_are_all_skipped() {
    let avoid = [
        MemRegion::new(0x3f00_0000, 0x1000),
        MemRegion::new(0x3700_0000, 0x1000),
        MemRegion::new(0x2f00_0000, 0x1000),
    ];
    let held = hotplug_holdback_avoiding(&BANK0, 128 * MIB, &avoid).unwrap();
    assert_eq!(held, MemRegion::from_range(0x2000_0000, 0x2800_0000));
    assert!(avoid.iter().all(|r| !r.overlaps(&held)));
    // Bad sizes are refused as before.
    assert_eq!(hotplug_holdback_avoiding(&BANK0, 0, &avoid), None);
    assert_eq!(hotplug_holdback_avoiding(&BANK0, 100 * MIB, &avoid), None);
}
