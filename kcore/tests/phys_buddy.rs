//! The buddy allocator against a model: random allocations and frees of every order (up to
//! 1 GiB blocks) over ~1.7 GiB of pfn space in two banks; no frame handed out twice, errors
//! leave everything unchanged, statistics and page conservation exact after every operation,
//! and freeing everything restores the initial maximal blocks.

use kcore::addr::Pfn;
use kcore::buddy::{check_conservation, Buddy, BuddyError, MAX_ORDER};
use kcore::memblock::MemRegion;
use kcore::page::PageState;
use kcore::vmemmap::HostVmemmap;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Two banks: one with an unaligned start, one 1 GiB-aligned with an unaligned end.
fn ram() -> [MemRegion; 2] {
    [
        MemRegion::from_range(0x1000_3000, 0x2000_0000),
        MemRegion::from_range(0x4000_0000, 0x4000_0000 + (1 << 30) + (384 << 20) + 0x3000),
    ]
}

fn setup(ram: &[MemRegion]) -> (HostVmemmap, Buddy) {
    kcore::buddy::host_setup(ram)
}

#[derive(Clone, Debug)]
enum Op {
    Alloc(u8),
    AllocAt(u64, u8),
    /// Free the n-th live block (modulo), then, if the flag is set, free it again.
    Free(usize, bool),
    /// A wrong free of the n-th live block: 0 = inside it, 1 = order + 1, 2 = order - 1,
    /// 3 = claimed by another owner.
    BadFree(usize, u8),
}

fn order() -> impl Strategy<Value = u8> {
    prop_oneof![6 => 0u8..=3, 3 => 4u8..=10, 1 => 11u8..=MAX_ORDER]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => order().prop_map(Op::Alloc),
        2 => (any::<u64>(), order()).prop_map(|(p, o)| Op::AllocAt(p, o)),
        4 => (any::<usize>(), prop::bool::weighted(0.2)).prop_map(|(i, d)| Op::Free(i, d)),
        1 => (any::<usize>(), 0u8..4).prop_map(|(i, k)| Op::BadFree(i, k)),
    ]
}

struct Model {
    live: BTreeMap<u64, u8>,
    managed: u64,
}

impl Model {
    fn allocated(&self) -> u64 {
        self.live.values().map(|&o| 1u64 << o).sum()
    }
    fn nth(&self, i: usize) -> Option<(u64, u8)> {
        if self.live.is_empty() {
            return None;
        }
        self.live.iter().nth(i % self.live.len()).map(|(&p, &o)| (p, o))
    }
    fn insert(&mut self, ram: &[MemRegion], pfn: u64, order: u8) -> Result<(), String> {
        let end = pfn + (1 << order);
        if !pfn.is_multiple_of(1 << order) {
            return Err(format!("misaligned {pfn:#x} order {order}"));
        }
        if !ram.iter().any(|r| r.pfns().start <= pfn && end <= r.pfns().end) {
            return Err(format!("{pfn:#x}+{order} outside RAM"));
        }
        if let Some((&p, &o)) = self.live.range(..end).next_back() {
            if p + (1 << o) > pfn {
                return Err(format!("{pfn:#x}+{order} overlaps {p:#x}+{o}"));
            }
        }
        self.live.insert(pfn, order);
        Ok(())
    }
}

fn check_all(vm: &HostVmemmap, b: &Buddy, m: &Model, ram: &[MemRegion]) -> Result<(), String> {
    b.check(vm).map_err(|e| format!("{e:?}"))?;
    let expect_free = m.managed - m.allocated();
    if b.free_pages() != expect_free {
        return Err(format!("free {} != model {}", b.free_pages(), expect_free));
    }
    let c = check_conservation(vm, ram, b).map_err(|e| format!("{e:?}"))?;
    if c.allocated != m.allocated() {
        return Err(format!("census allocated {} != {}", c.allocated, m.allocated()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn buddy_matches_model(ops in prop::collection::vec(op(), 1..64)) {
        let ram = ram();
        let (vm, mut b) = setup(&ram);
        let initial = b.stats();
        let mut m = Model { live: BTreeMap::new(), managed: b.managed_pages() };
        prop_assert_eq!(m.managed, ram.iter().map(|r| r.nr_pages()).sum::<u64>());
        for op in ops {
            match op {
                Op::Alloc(o) => match b.alloc(&vm, o) {
                    Ok(p) => m.insert(&ram, p.0, o).map_err(TestCaseError::fail)?,
                    Err(BuddyError::OutOfMemory { order }) => {
                        prop_assert_eq!(order, o);
                        prop_assert!(b.largest_free_order().is_none_or(|l| l < o));
                    }
                    Err(e) => prop_assert!(false, "alloc: {:?}", e),
                },
                Op::AllocAt(seed, o) => {
                    let r = &ram[(seed % 2) as usize].pfns();
                    let span = (r.end - r.start) >> o;
                    let pfn = ((r.start >> o) + (seed >> 1) % span.max(1)) << o;
                    let before = b.stats();
                    match b.alloc_at(&vm, Pfn(pfn), o) {
                        Ok(p) => {
                            prop_assert_eq!(p, Pfn(pfn));
                            m.insert(&ram, pfn, o).map_err(TestCaseError::fail)?;
                        }
                        Err(BuddyError::Busy { .. } | BuddyError::OutsideManaged { .. }) => {
                            // Busy only if some frame of the block is taken.
                            let end = pfn + (1 << o);
                            let taken = m.live.range(..end).next_back()
                                .is_some_and(|(&p, &q)| p + (1 << q) > pfn);
                            let inside = ram.iter().any(|r| r.pfns().start <= pfn && end <= r.pfns().end);
                            prop_assert!(taken || !inside, "alloc_at {:#x}+{} refused", pfn, o);
                            prop_assert_eq!(b.stats().free_pages, before.free_pages);
                        }
                        Err(e) => prop_assert!(false, "alloc_at: {:?}", e),
                    }
                }
                Op::Free(i, twice) => {
                    if let Some((p, o)) = m.nth(i) {
                        b.free(&vm, Pfn(p), o).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                        m.live.remove(&p);
                        if twice {
                            let before = b.stats();
                            let again = b.free(&vm, Pfn(p), o);
                            let is_double = matches!(again, Err(BuddyError::DoubleFree { .. }));
                            prop_assert!(is_double, "second free: {:?}", again);
                            prop_assert_eq!(b.stats(), before);
                        }
                    }
                }
                Op::BadFree(i, kind) => {
                    if let Some((p, o)) = m.nth(i) {
                        let before = b.stats();
                        let r = match kind {
                            0 if o > 0 => b.free(&vm, Pfn(p + 1), 0),
                            1 if o < MAX_ORDER => b.free(&vm, Pfn(p), o + 1),
                            2 if o > 0 => b.free(&vm, Pfn(p), o - 1),
                            3 => {
                                vm.page(Pfn(p)).set_state(PageState::PageTable);
                                let r = b.free(&vm, Pfn(p), o);
                                vm.page(Pfn(p)).set_state(PageState::Allocated);
                                r
                            }
                            _ => continue,
                        };
                        prop_assert!(r.is_err(), "bad free accepted: {:?}", kind);
                        prop_assert_eq!(b.stats(), before);
                    }
                }
            }
            check_all(&vm, &b, &m, &ram).map_err(TestCaseError::fail)?;
        }
        // Free everything: the maximal blocks come back.
        let live: Vec<(u64, u8)> = m.live.iter().map(|(&p, &o)| (p, o)).collect();
        for (p, o) in live {
            b.free(&vm, Pfn(p), o).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            m.live.remove(&p);
        }
        check_all(&vm, &b, &m, &ram).map_err(TestCaseError::fail)?;
        prop_assert_eq!(b.stats().nr_free, initial.nr_free);
        prop_assert_eq!(b.free_pages(), b.managed_pages());
    }
}

#[test]
fn exhaust_order0_then_free_in_scrambled_order() {
    let ram = [MemRegion::from_range(0x20_0000, 0x420_0000)]; // 64 MiB
    let (vm, mut b) = setup(&ram);
    let initial = b.stats();
    let mut got = Vec::new();
    while let Ok(p) = b.alloc(&vm, 0) {
        got.push(p);
    }
    assert_eq!(got.len() as u64, b.managed_pages());
    assert_eq!(b.free_pages(), 0);
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), got.len(), "a frame was handed out twice");
    check_conservation(&vm, &ram, &b).unwrap();
    // Free in a scrambled (but deterministic) order.
    let n = got.len();
    for i in 0..n {
        let j = (i * 7919) % n;
        got.swap(i, j);
    }
    for p in got {
        b.free(&vm, p, 0).unwrap();
    }
    b.check(&vm).unwrap();
    assert_eq!(b.stats().nr_free, initial.nr_free);
    // 2 MiB-aligned start: blocks of 2, 4, 8, 16, 32 and 2 MiB.
    assert_eq!(b.nr_free(9), 2);
    assert_eq!(b.nr_free(13), 1);
}

#[test]
fn one_gib_blocks_round_trip() {
    let ram = [MemRegion::from_range(0x4000_0000, 0xc000_0000)];
    let (vm, mut b) = setup(&ram);
    assert_eq!(b.nr_free(MAX_ORDER), 2);
    let a = b.alloc(&vm, MAX_ORDER).unwrap();
    let c = b.alloc(&vm, MAX_ORDER).unwrap();
    assert_eq!(b.alloc(&vm, 0), Err(BuddyError::OutOfMemory { order: 0 }));
    b.free(&vm, a, MAX_ORDER).unwrap();
    let small = b.alloc(&vm, 0).unwrap();
    assert_eq!(b.alloc(&vm, MAX_ORDER), Err(BuddyError::OutOfMemory { order: MAX_ORDER }));
    b.free(&vm, small, 0).unwrap();
    b.free(&vm, c, MAX_ORDER).unwrap();
    assert_eq!(b.nr_free(MAX_ORDER), 2);
    check_conservation(&vm, &ram, &b).unwrap();
}
