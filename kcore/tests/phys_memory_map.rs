//! Memory maps that later code would trust without checking (issue 10 item 5): a bank smaller
//! than a page, banks above the physical address size or the linear map (where
//! `PAGE_OFFSET + base` overflows), banks over the MMIO window, and a map without the kernel's
//! load address. Each gets a warning and a safe outcome: the bad part is dropped or trimmed, and
//! a source left empty or without the kernel is passed over for the next one.

use kcore::addr::PAGE_SIZE;
use kcore::bootinfo::{
    memory_map, validate_banks, BankDefect, BootInfo, BootSource, MapLimits, MapWarning,
    MemorySource, Notes,
};
use kcore::layout::{LINEAR_MAP_SIZE, PAGE_OFFSET};
use kcore::memblock::{MemRegion, RegionList};
use proptest::prelude::*;

/// 44-bit PA (PARange 0b0100, Cortex-A72), the kernel image at 0x80000..0x100000.
const LIM: MapLimits = MapLimits::bcm2711(4, MemRegion::new(0x8_0000, 0x8_0000));
const QEMU_BOARD: [MemRegion; 2] =
    [MemRegion::new(0, 0x3c00_0000), MemRegion::new(0x4000_0000, 0x4000_0000)];

/// Boot information from ATAGs with these banks (as the parser would leave it).
fn atags_with(banks: &[MemRegion]) -> BootInfo<'static> {
    BootInfo {
        source: BootSource::Atags,
        blob_len: 64,
        memory: validate_banks(banks),
        reserved: RegionList::new(),
        reserved_overflow: false,
        reservation_notes: Notes::new(),
        cmdline: "",
        cmdline_truncated: None,
        model: None,
    }
}

fn bank_defects(m: &kcore::bootinfo::MemoryMap) -> Vec<(MemRegion, BankDefect, MemRegion)> {
    m.warnings()
        .filter_map(|w| match w {
            MapWarning::Bank { bank, defect, kept, .. } => Some((bank, defect, kept)),
            _ => None,
        })
        .collect()
}

/// What every map handed to the firmware satisfies.
fn assert_safe(m: &kcore::bootinfo::MemoryMap, lim: &MapLimits) {
    for r in m.regions.iter() {
        assert!(r.size >= PAGE_SIZE && r.base.0 % PAGE_SIZE == 0 && r.size % PAGE_SIZE == 0);
        assert!(r.end() <= lim.ram_limit(), "{r:?} above {:#x}", lim.ram_limit());
        assert!(PAGE_OFFSET.checked_add(r.end()).is_some());
        assert!(!r.overlaps(&lim.mmio), "{r:?} overlaps MMIO");
    }
}

#[test]
fn a_bank_smaller_than_a_page_falls_back_with_a_warning() {
    let tiny = MemRegion::new(0x1000, 0x800);
    let info = atags_with(&[tiny]);
    assert!(info.memory.is_ok(), "the parser accepts it; the map must not");
    // With the mailbox: it is used.
    let mbox = [MemRegion::new(0, 0x3b40_0000)];
    let m = memory_map(&QEMU_BOARD, Ok(&info), Some(&mbox), false, &LIM);
    assert_eq!(m.source, MemorySource::Mailbox);
    assert_eq!(m.regions.as_slice(), &mbox);
    assert_eq!(
        bank_defects(&m),
        vec![(tiny, BankDefect::SmallerThanPage, MemRegion::new(0x1000, 0))]
    );
    assert!(m.warnings().any(|w| w == MapWarning::SourceEmpty(MemorySource::Atags)));
    // Without: the board table.
    let m = memory_map(&QEMU_BOARD, Ok(&info), None, false, &LIM);
    assert_eq!(m.source, MemorySource::BoardTable);
    assert_eq!(m.regions.as_slice(), &QEMU_BOARD);
    assert_safe(&m, &LIM);
}

#[test]
fn banks_above_the_physical_address_size_are_dropped_or_clipped() {
    let low = MemRegion::new(0, 0x3c00_0000);
    let high = MemRegion::new((1 << 44) + (1 << 30), 0x4000_0000); // past 44 bits
    let straddle = MemRegion::new((1 << 44) - 0x10_0000, 0x20_0000);
    let info = atags_with(&[low, straddle, high]);
    let m = memory_map(&QEMU_BOARD, Ok(&info), None, false, &LIM);
    assert_eq!(m.source, MemorySource::Atags);
    assert_eq!(m.regions.as_slice(), &[low, MemRegion::new((1 << 44) - 0x10_0000, 0x10_0000)]);
    let limit = 1 << 44;
    assert_eq!(
        bank_defects(&m),
        vec![
            (
                straddle,
                BankDefect::AboveAddressLimit { limit },
                MemRegion::new(straddle.base.0, 0x10_0000)
            ),
            (high, BankDefect::AboveAddressLimit { limit }, MemRegion::new(high.base.0, 0)),
        ]
    );
    assert_safe(&m, &LIM);
    // With 32-bit PA (PARange 0), even 4 GiB and up goes.
    let lim32 = MapLimits::bcm2711(0, LIM.kernel);
    let m = memory_map(
        &QEMU_BOARD,
        Ok(&atags_with(&[low, MemRegion::new(1 << 32, 1 << 30)])),
        None,
        false,
        &lim32,
    );
    assert_eq!(m.regions.as_slice(), &[low]);
    assert_safe(&m, &lim32);
}

#[test]
fn banks_beyond_the_linear_map_never_overflow_page_offset() {
    // 52-bit PA: the linear map (64 TiB) is the tighter limit.
    let lim52 = MapLimits::bcm2711(6, LIM.kernel);
    assert_eq!(lim52.ram_limit(), LINEAR_MAP_SIZE);
    let low = MemRegion::new(0, 0x3c00_0000);
    // PAGE_OFFSET + this base overflows u64.
    let huge = MemRegion::new(0xFFFF_FFFF_0000_0000, 0x1000_0000);
    assert!(PAGE_OFFSET.checked_add(huge.base.0).is_none());
    let past_linear = MemRegion::new(LINEAR_MAP_SIZE, 0x1000_0000);
    let m =
        memory_map(&QEMU_BOARD, Ok(&atags_with(&[low, past_linear, huge])), None, false, &lim52);
    assert_eq!(m.regions.as_slice(), &[low]);
    assert_eq!(bank_defects(&m).len(), 2);
    assert_safe(&m, &lim52);
}

#[test]
fn banks_over_the_mmio_window_keep_only_ram() {
    let low = MemRegion::new(0, 0x3c00_0000);
    // 0x4000_0000..0x1_0000_0000 runs into 0xFC00_0000..: trimmed at the window.
    let into = MemRegion::new(0x4000_0000, 0xc000_0000);
    let m = memory_map(&QEMU_BOARD, Ok(&atags_with(&[low, into])), None, false, &LIM);
    assert_eq!(m.regions.as_slice(), &[low, MemRegion::from_range(0x4000_0000, 0xFC00_0000)]);
    assert_eq!(
        bank_defects(&m),
        vec![(into, BankDefect::OverlapsMmio, MemRegion::from_range(0x4000_0000, 0xFC00_0000))]
    );
    // Across the window: both sides kept.
    let across = MemRegion::from_range(0xF000_0000, 0x1_1000_0000);
    let m = memory_map(&QEMU_BOARD, Ok(&atags_with(&[low, across])), None, false, &LIM);
    assert_eq!(
        m.regions.as_slice(),
        &[
            low,
            MemRegion::from_range(0xF000_0000, 0xFC00_0000),
            MemRegion::from_range(0x1_0000_0000, 0x1_1000_0000)
        ]
    );
    assert_safe(&m, &LIM);
    // Wholly inside: dropped, and a map of only that is empty: the board table.
    let inside = MemRegion::new(0xFE00_0000, 0x10_0000);
    let m = memory_map(&QEMU_BOARD, Ok(&atags_with(&[inside])), None, false, &LIM);
    assert_eq!(m.source, MemorySource::BoardTable);
    assert_safe(&m, &LIM);
}

#[test]
fn a_map_without_the_kernel_is_passed_over() {
    // Valid banks, but not where the kernel runs (0x80000).
    let elsewhere = MemRegion::new(0x4000_0000, 0x4000_0000);
    let m = memory_map(&QEMU_BOARD, Ok(&atags_with(&[elsewhere])), None, false, &LIM);
    assert_eq!(m.source, MemorySource::BoardTable);
    assert!(m.warnings().any(
        |w| w == MapWarning::KernelOutside { source: MemorySource::Atags, kernel: LIM.kernel }
    ));
    // Part of the kernel only: passed over too.
    let half = MemRegion::new(0, 0xC_0000);
    let m = memory_map(&QEMU_BOARD, Ok(&atags_with(&[half])), None, false, &LIM);
    assert_eq!(m.source, MemorySource::BoardTable);
    // A mailbox without the kernel is passed over as well.
    let m = memory_map(&QEMU_BOARD, Ok(&atags_with(&[elsewhere])), Some(&[elsewhere]), false, &LIM);
    assert_eq!(m.source, MemorySource::BoardTable);
    assert_eq!(m.warnings().filter(|w| matches!(w, MapWarning::KernelOutside { .. })).count(), 2);
}

#[test]
fn the_warning_list_shows_only_what_is_there() {
    let m = memory_map(&QEMU_BOARD, Ok(&atags_with(&QEMU_BOARD)), None, false, &LIM);
    let d = format!("{m:?}");
    assert!(d.contains("warnings: []"), "{d}");
    assert!(!d.contains("None"), "{d}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever banks a source reports, the map used is safe.
    #[test]
    fn any_banks_give_a_safe_map(
        banks in proptest::collection::vec((any::<u64>(), any::<u64>(), 0u8..4), 1..6),
        parange in 0u64..8,
        mailbox in any::<bool>(),
    ) {
        let lim = MapLimits::bcm2711(parange, LIM.kernel);
        let banks: Vec<MemRegion> = banks
            .into_iter()
            .map(|(b, s, scale)| {
                // Mix small, page-ish, GiB-ish and huge values.
                let shift = [0, 12, 30, 40][scale as usize];
                MemRegion::new(b >> (64 - 48 + (scale as u32)), (s >> (64 - 34)) << shift >> 12)
            })
            .collect();
        let info = atags_with(&banks);
        let mb = [MemRegion::new(0, 0x3b40_0000)];
        let m = memory_map(&QEMU_BOARD, Ok(&info), mailbox.then_some(&mb[..]), false, &lim);
        assert_safe(&m, &lim);
        prop_assert!(!m.regions.is_empty());
        prop_assert!(m.regions.iter().any(|r| r.covers(&lim.kernel)));
        // If the map is not the boot blob's, the warnings say why.
        if m.source != MemorySource::Atags {
            prop_assert!(m.warnings().count() > 0);
        }
    }
}
