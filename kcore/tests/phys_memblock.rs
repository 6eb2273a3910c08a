//! memblock under random reservations and allocations: allocations lie in memory, are aligned,
//! never overlap a reservation, and free + reserved always add up to the memory total.

use kcore::addr::{PhysAddr, PAGE_SIZE};
use kcore::memblock::{MemRegion, Memblock, MemblockError, ReservedKind};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Reserve(u64, u64),
    Alloc(u64, u32, bool),
    Limit(u64),
    Unreserve(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u64..0x9000_0000, 1u64..0x40_0000).prop_map(|(b, s)| Op::Reserve(b, s)),
        4 => (1u64..0x100_0000, 12u32..22, any::<bool>()).prop_map(|(s, a, up)| Op::Alloc(s, a, up)),
        1 => (0x1000_0000u64..0x9000_0000).prop_map(Op::Limit),
        1 => any::<usize>().prop_map(Op::Unreserve),
    ]
}

fn memory() -> [MemRegion; 2] {
    [MemRegion::new(0, 0x3c00_0000), MemRegion::new(0x4000_0000, 0x4000_0000)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn memblock_invariants(ops in prop::collection::vec(op(), 1..48)) {
        let mut mb = Memblock::new();
        for r in memory() {
            mb.add_memory(r.base, r.size).unwrap();
        }
        for op in ops {
            match op {
                Op::Reserve(b, s) => {
                    let new = MemRegion::new(b, s).page_rounded();
                    let clash = mb.reserved().iter().any(|r| r.region.overlaps(&new));
                    match mb.reserve(PhysAddr(b), s, ReservedKind::Firmware) {
                        Ok(()) => prop_assert!(!clash),
                        Err(MemblockError::OverlapsReserved { .. }) => prop_assert!(clash),
                        Err(MemblockError::TooManyRegions) => {}
                        Err(e) => prop_assert!(false, "{:?}", e),
                    }
                }
                Op::Alloc(size, align_bits, bottom_up) => {
                    mb.set_bottom_up(bottom_up);
                    let align = 1u64 << align_bits;
                    let before: Vec<_> = mb.reserved().to_vec();
                    match mb.alloc(size, align, ReservedKind::EarlyTables) {
                        Ok(pa) => {
                            let got = MemRegion { base: pa, size: size.next_multiple_of(PAGE_SIZE) };
                            prop_assert!(pa.is_aligned(align));
                            prop_assert!(mb.is_memory(&got));
                            prop_assert!(got.end() <= mb.current_limit().0);
                            prop_assert!(before.iter().all(|r| !r.region.overlaps(&got)));
                        }
                        Err(MemblockError::OutOfMemory { .. } | MemblockError::TooManyRegions) => {
                            prop_assert_eq!(mb.reserved(), &before[..]);
                        }
                        Err(e) => prop_assert!(false, "{:?}", e),
                    }
                }
                Op::Limit(l) => mb.set_current_limit(PhysAddr(l)),
                Op::Unreserve(i) => {
                    if !mb.reserved().is_empty() {
                        let r = mb.reserved()[i % mb.reserved().len()].region;
                        mb.unreserve(r.base, r.size).unwrap();
                    }
                }
            }
            // Invariants: sorted, disjoint reservations; free ranges outside them; totals add up.
            for w in mb.reserved().windows(2) {
                prop_assert!(w[0].region.end() <= w[1].region.base.0);
            }
            let mut free_total = 0;
            for f in mb.free_ranges() {
                prop_assert!(f.size > 0);
                prop_assert!(mb.is_memory(&f));
                prop_assert!(mb.reserved().iter().all(|r| !r.region.overlaps(&f)));
                free_total += f.size;
            }
            prop_assert_eq!(free_total + mb.reserved_in_memory(), mb.total_memory());
        }
    }
}
