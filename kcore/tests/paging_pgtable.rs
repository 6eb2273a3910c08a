//! Property tests: descriptor encode/decode round trips.

use kcore::addr::PhysAddr;
use kcore::pgtable::{
    bits, AccessPerm, Attrs, DescKind, Descriptor, Level, MemType, Shareability, VaHalf,
};
use proptest::prelude::*;

fn level() -> impl Strategy<Value = Level> {
    prop_oneof![Just(Level::L1), Just(Level::L2), Just(Level::L3)]
}

fn attrs() -> impl Strategy<Value = Attrs> {
    let mem = prop_oneof![
        Just(MemType::Normal),
        Just(MemType::Device),
        (2u8..8).prop_map(MemType::Other)
    ];
    let ap = prop_oneof![
        Just(AccessPerm::RwEl1),
        Just(AccessPerm::RwEl0El1),
        Just(AccessPerm::RoEl1),
        Just(AccessPerm::RoEl0El1)
    ];
    let sh = prop_oneof![
        Just(Shareability::NonShareable),
        Just(Shareability::OuterShareable),
        Just(Shareability::InnerShareable),
        Just(Shareability::Reserved)
    ];
    (mem, ap, sh, any::<[bool; 4]>()).prop_map(|(mem, ap, sh, [af, ng, pxn, uxn])| Attrs {
        mem,
        ap,
        sh,
        af,
        ng,
        pxn,
        uxn,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn leaf_round_trip(level in level(), frame in 0u64..(1 << 36), a in attrs()) {
        let oa = PhysAddr((frame << 12) & !(level.size() - 1));
        let d = Descriptor::leaf(level, oa, a).unwrap();
        prop_assert!(d.is_valid());
        prop_assert_eq!(d.kind(level), if level == Level::L3 { DescKind::Page } else { DescKind::Block });
        prop_assert_eq!(d.output_address(level), oa);
        prop_assert_eq!(d.attrs(), a);
        prop_assert_eq!(d.decode_leaf(level), Some((oa, a)));
        prop_assert!(!d.is_contiguous());
        prop_assert_eq!(d.bits() & !(bits::ATTR_MASK | bits::ADDR_MASK | 0b11), 0);
        // Re-encoding the decoded fields gives the same bits.
        prop_assert_eq!(Descriptor::leaf(level, d.output_address(level), d.attrs()), Ok(d));
        // Changing attributes keeps the address, and vice versa.
        let b = Attrs::kernel_rodata();
        prop_assert_eq!(d.with_attrs(b).output_address(level), oa);
        prop_assert_eq!(d.with_attrs(b).attrs(), b);
        prop_assert_eq!(d.with_output_address(level, PhysAddr(0)).unwrap().attrs(), a);
    }

    #[test]
    fn table_round_trip(level in prop_oneof![Just(Level::L0), Just(Level::L1), Just(Level::L2)],
                        frame in 0u64..(1 << 36)) {
        let pa = PhysAddr(frame << 12);
        let d = Descriptor::table(level, pa).unwrap();
        prop_assert_eq!(d.kind(level), DescKind::Table);
        prop_assert_eq!(d.table_address(), pa);
    }

    #[test]
    fn misaligned_output_is_rejected(level in level(), frame in 1u64..(1 << 36), a in attrs()) {
        let oa = PhysAddr(frame << 12);
        let r = Descriptor::leaf(level, oa, a);
        prop_assert_eq!(r.is_ok(), oa.is_aligned(level.size()));
    }

    #[test]
    fn attrs_bits_round_trip(a in attrs()) {
        prop_assert_eq!(Attrs::from_bits(a.to_bits()), a);
        prop_assert_eq!(a.to_bits() & !bits::ATTR_MASK, 0);
    }

    #[test]
    fn indexes_reassemble_the_va(off in 0u64..(1 << 36), upper in any::<bool>()) {
        let half = if upper { VaHalf::Upper } else { VaHalf::Lower };
        let va = half.va(off << 12);
        let mut rebuilt = 0u64;
        for l in Level::ALL {
            rebuilt |= (l.index(va) as u64) << l.shift();
        }
        prop_assert_eq!(half.va(rebuilt), va);
        prop_assert_eq!(VaHalf::of(va), Some(half));
    }
}
