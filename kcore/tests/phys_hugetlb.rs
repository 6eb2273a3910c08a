//! HugeTLB folios and the pool: head/tail invariants of 2 MiB and 1 GiB folios under random
//! pool operations mixed with buddy fragmentation, conservation after every step, boot
//! preallocation from the command line, and fake heads (as HVO creates them).

use kcore::addr::{Pfn, PhysAddr};
use kcore::buddy::{check_conservation, Buddy};
use kcore::cmdline;
use kcore::hugetlb::{
    check_folio, DissolveError, Folio, FolioError, HugePageSize, HugetlbPool, NoHooks, VmemmapHooks,
};
use kcore::memblock::MemRegion;
use kcore::page::{self, PageFlags, PageState};
use kcore::vmemmap::{HostVmemmap, Vmemmap};
use proptest::prelude::*;

const GIB: u64 = 1 << 30;

fn setup(ram: &[MemRegion]) -> (HostVmemmap, Buddy) {
    kcore::buddy::host_setup(ram)
}

#[derive(Clone, Debug)]
enum Op {
    /// New folio from the buddy allocator, kept by the test.
    Grow(bool),
    /// Folio from the pool's free list.
    Take(bool),
    /// Give the n-th held folio to the pool's free list.
    Put(usize),
    /// Dissolve the n-th held folio.
    Dissolve(usize),
    /// Dissolve up to n free folios.
    Shrink(bool, u64),
    /// Fragment: a small buddy allocation.
    Frag(u8),
    /// Free the n-th small allocation.
    Unfrag(usize),
}

fn size(big: bool) -> HugePageSize {
    if big {
        HugePageSize::Size1G
    } else {
        HugePageSize::Size2M
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::bool::weighted(0.25).prop_map(Op::Grow),
        2 => any::<bool>().prop_map(Op::Take),
        2 => any::<usize>().prop_map(Op::Put),
        2 => any::<usize>().prop_map(Op::Dissolve),
        1 => (any::<bool>(), 0u64..4).prop_map(|(b, n)| Op::Shrink(b, n)),
        2 => (0u8..12).prop_map(Op::Frag),
        1 => any::<usize>().prop_map(Op::Unfrag),
    ]
}

fn check_head_tail(f: &Folio, vm: &Vmemmap) -> Result<(), TestCaseError> {
    check_folio(f, vm).map_err(|e| TestCaseError::fail(format!("{f:?}: {e:?}")))?;
    let head = f.head(vm);
    prop_assert!(head.page_head() && !head.is_tail());
    prop_assert!(head.test(PageFlags::HUGETLB));
    prop_assert_eq!(head.order(), f.order());
    // Every tail leads back to the head; spot-check the first, last and page-boundary tails.
    for i in [1, 63, 64, 65, f.nr_pages() / 2, f.nr_pages() - 1] {
        let t = f.page(vm, i);
        prop_assert!(t.is_tail() && !t.is_head());
        prop_assert!(std::ptr::eq(t.compound_head(), head));
        prop_assert_eq!(vm.page_to_pfn(t.compound_head()), f.head_pfn());
        prop_assert_eq!(t.state(), PageState::HugeTlb);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn pool_keeps_folio_invariants(ops in prop::collection::vec(op(), 1..24)) {
        // 2.5 GiB at 1 GiB: two 1 GiB blocks and a 512 MiB tail.
        let ram = [MemRegion::new(GIB, 2 * GIB + GIB / 2)];
        let (vm, mut b) = setup(&ram);
        let mut pool = HugetlbPool::new();
        let mut held: Vec<Folio> = Vec::new();
        let mut small: Vec<(Pfn, u8)> = Vec::new();
        let mut free_model = [0u64; 2];
        for op in ops {
            match op {
                Op::Grow(big) => {
                    if let Ok(f) = pool.alloc_pool_folio(size(big), &mut b, &vm, &mut NoHooks) {
                        prop_assert_eq!(f.size(), size(big));
                        prop_assert!(f.head_pfn().0.is_multiple_of(f.nr_pages()));
                        held.push(f);
                    }
                }
                Op::Take(big) => {
                    if let Some(f) = pool.dequeue(size(big), &vm) {
                        free_model[size(big).index()] -= 1;
                        prop_assert_eq!(f.head(&vm).refcount(), 1);
                        held.push(f);
                    } else {
                        prop_assert_eq!(free_model[size(big).index()], 0);
                    }
                }
                Op::Put(i) if !held.is_empty() => {
                    let f = held.swap_remove(i % held.len());
                    free_model[f.size().index()] += 1;
                    pool.enqueue(f, &vm);
                }
                Op::Dissolve(i) if !held.is_empty() => {
                    let f = held.swap_remove(i % held.len());
                    let r = f.pfn_range();
                    pool.free_pool_folio(f, &mut b, &vm, &mut NoHooks).unwrap();
                    for pfn in [r.start.0, r.start.0 + 1, r.end.0 - 1] {
                        let p = vm.page(Pfn(pfn));
                        prop_assert!(!p.is_head() && !p.is_tail());
                        prop_assert_eq!(p.state(), PageState::Free);
                    }
                }
                Op::Shrink(big, n) => {
                    let s = size(big);
                    let done = pool.shrink(s, n, &mut b, &vm, &mut NoHooks).unwrap();
                    prop_assert_eq!(done, n.min(free_model[s.index()]));
                    free_model[s.index()] -= done;
                }
                Op::Frag(o) => {
                    if let Ok(p) = b.alloc(&vm, o) {
                        small.push((p, o));
                    }
                }
                Op::Unfrag(i) if !small.is_empty() => {
                    let (p, o) = small.swap_remove(i % small.len());
                    b.free(&vm, p, o).unwrap();
                }
                _ => {}
            }
            // Invariants.
            for f in &held {
                check_head_tail(f, &vm)?;
            }
            pool.check(&vm).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            for s in HugePageSize::ALL {
                let c = pool.counts(s);
                prop_assert_eq!(c.free_hugepages, free_model[s.index()]);
                let held_s = held.iter().filter(|f| f.size() == s).count() as u64;
                prop_assert_eq!(c.nr_hugepages, held_s + c.free_hugepages);
            }
            let census = check_conservation(&vm, &ram, &b)
                .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(census.hugetlb, pool.total_pages());
            b.check(&vm).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        }
    }
}

#[test]
fn one_gib_folio_layout() {
    let ram = [MemRegion::new(GIB, 2 * GIB)];
    let (vm, mut b) = setup(&ram);
    let mut pool = HugetlbPool::new();
    let at = Pfn::containing(PhysAddr(0x8000_0000));
    let f = pool.alloc_pool_folio_at(HugePageSize::Size1G, at, &mut b, &vm, &mut NoHooks).unwrap();
    assert_eq!(f.phys_addr(), PhysAddr(0x8000_0000));
    assert_eq!(f.nr_pages(), 1 << 18);
    check_folio(&f, &vm).unwrap();
    for i in 1..f.nr_pages() {
        assert!(std::ptr::eq(f.page(&vm, i).compound_head(), f.head(&vm)));
    }
    let c = check_conservation(&vm, &ram, &b).unwrap();
    assert_eq!(c.hugetlb, 1 << 18);
    assert!(pool
        .alloc_pool_folio_at(HugePageSize::Size1G, Pfn(at.0 + 512), &mut b, &vm, &mut NoHooks)
        .is_err());
    pool.free_pool_folio(f, &mut b, &vm, &mut NoHooks).unwrap();
    assert_eq!(b.nr_free(18), 2);
    check_conservation(&vm, &ram, &b).unwrap();
}

#[test]
fn preallocate_from_the_command_line() {
    // QEMU raspi4b style 1 GiB bank at 0x4000_0000 plus a low bank.
    let ram = [MemRegion::from_range(0x100_0000, 0x3c00_0000), MemRegion::new(GIB, GIB)];
    let (vm, mut b) = setup(&ram);
    let c = cmdline::parse("hugepagesz=2M hugepages=64 hugepagesz=1G hugepages=2");
    let mut pool = HugetlbPool::new();
    let r = pool.preallocate(c.hugepage_requests(), &mut b, &vm, &mut NoHooks);
    assert_eq!(r.get(HugePageSize::Size1G).requested, 2);
    assert_eq!(r.get(HugePageSize::Size1G).allocated, 1); // only one 1 GiB block exists
    assert_eq!(r.get(HugePageSize::Size2M).allocated, 64);
    assert!(!r.is_complete());
    assert_eq!(pool.counts(HugePageSize::Size2M).free_hugepages, 64);
    let f = pool.dequeue(HugePageSize::Size1G, &vm).unwrap();
    assert_eq!(f.phys_addr(), PhysAddr(GIB));
    pool.enqueue(f, &vm);
    pool.check(&vm).unwrap();
    let census = check_conservation(&vm, &ram, &b).unwrap();
    assert_eq!(census.hugetlb, (1 << 18) + 64 * 512);
    // Shrink everything back.
    assert_eq!(pool.shrink(HugePageSize::Size2M, 100, &mut b, &vm, &mut NoHooks), Ok(64));
    assert_eq!(pool.shrink(HugePageSize::Size1G, 1, &mut b, &vm, &mut NoHooks), Ok(1));
    assert_eq!(b.free_pages(), b.managed_pages());
}

/// Makes descriptors 64, 128, ... of a folio look as they do after HVO remaps the tail vmemmap
/// pages onto the head's: each is an alias of the head (here: a copy of its flags and state).
fn fake_heads(f: &Folio, vm: &Vmemmap) {
    let head = f.head(vm);
    for i in (64..f.nr_pages()).step_by(64) {
        let p = f.page(vm, i);
        p.clear_compound_head();
        p.replace_flags(head.flags());
        p.set_state(head.state());
        p.set_order(head.order());
    }
}

struct RestoreFakes {
    calls: u32,
}
impl VmemmapHooks for RestoreFakes {
    type Error = ();
    fn before_dissolve(&mut self, f: &Folio, vm: &Vmemmap) -> Result<(), ()> {
        self.calls += 1;
        // Linux's vmemmap restore: the tails become real tails again.
        let head = f.head(vm);
        for i in (64..f.nr_pages()).step_by(64) {
            let p = f.page(vm, i);
            p.replace_flags(PageFlags::EMPTY);
            p.set_compound_head(head);
        }
        Ok(())
    }
}

#[test]
fn fake_heads_resolve_to_the_real_head() {
    let ram = [MemRegion::new(0, 64 << 20)];
    let (vm, mut b) = setup(&ram);
    let mut pool = HugetlbPool::new();
    let f = pool.alloc_pool_folio(HugePageSize::Size2M, &mut b, &vm, &mut NoHooks).unwrap();
    fake_heads(&f, &vm);
    let head = f.head(&vm);
    let fake = f.page(&vm, 64);
    assert!(fake.is_head() && !fake.is_tail());
    // With the fix-up off (no HVO yet), a fake head is taken at face value...
    page::set_fake_head_fixup(false);
    assert!(std::ptr::eq(fake.compound_head(), fake));
    // ...with it on, compound_head() finds the real head, as Linux's page_fixed_fake_head.
    page::set_fake_head_fixup(true);
    assert!(std::ptr::eq(fake.compound_head(), head));
    assert!(fake.is_fake_head() && fake.page_tail() && !fake.page_head());
    assert!(head.page_head() && !head.is_fake_head());
    // The real head (4 KiB-aligned too) resolves to itself: its page[1] points back at it.
    assert!(std::ptr::eq(head.compound_head(), head));
    // check_folio accepts fake heads whatever the switch says.
    page::set_fake_head_fixup(false);
    check_folio(&f, &vm).unwrap();
    // A tail that reads as a head but whose neighbour does not lead back is rejected.
    f.page(&vm, 129).clear_compound_head();
    assert_eq!(check_folio(&f, &vm), Err(FolioError::BadFakeHead { index: 128 }));
    f.page(&vm, 129).set_compound_head(head);
    // Dissolving runs the restore hook first.
    let mut hooks = RestoreFakes { calls: 0 };
    pool.free_pool_folio(f, &mut b, &vm, &mut hooks).unwrap();
    assert_eq!(hooks.calls, 1);
    check_conservation(&vm, &ram, &b).unwrap();
    b.check(&vm).unwrap();
}

struct FailRestore;
impl VmemmapHooks for FailRestore {
    type Error = &'static str;
    fn before_dissolve(&mut self, _: &Folio, _: &Vmemmap) -> Result<(), &'static str> {
        Err("no memory for the vmemmap")
    }
}

#[test]
fn failed_restore_keeps_the_folio_in_the_pool() {
    let ram = [MemRegion::new(0, 64 << 20)];
    let (vm, mut b) = setup(&ram);
    let mut pool = HugetlbPool::new();
    let f = pool.alloc_pool_folio(HugePageSize::Size2M, &mut b, &vm, &mut NoHooks).unwrap();
    assert_eq!(
        pool.free_pool_folio(f, &mut b, &vm, &mut FailRestore),
        Err(DissolveError::Restore("no memory for the vmemmap"))
    );
    let c = pool.counts(HugePageSize::Size2M);
    assert_eq!((c.nr_hugepages, c.free_hugepages), (1, 1));
    pool.check(&vm).unwrap();
    check_conservation(&vm, &ram, &b).unwrap();
}
