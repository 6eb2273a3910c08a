//! Vmemmap frames taken from the buddy allocator in runs (`alloc_vmemmap_frames`, used by
//! restore through `VmemmapFrames::alloc_run`): each frame of a run is laid out as a single
//! frame from `alloc_vmemmap_frame`, goes back one by one or as a run, and the allocator ends as
//! it began.

use kcore::addr::{Pfn, PAGE_SIZE};
use kcore::buddy::host_setup;
use kcore::hugetlb_vmemmap::{
    alloc_vmemmap_frame, alloc_vmemmap_frames, free_vmemmap_frame, free_vmemmap_frames,
};
use kcore::memblock::MemRegion;
use kcore::page::PageState;

#[test]
fn runs_are_single_frames_and_go_back() {
    let ram = [MemRegion::new(0x4000_0000, 64 << 20)];
    let (vm, mut buddy) = host_setup(&ram);
    let free0 = buddy.free_pages();
    let single = alloc_vmemmap_frame(&mut buddy, &vm).unwrap();
    let s = vm.page(Pfn::containing(single));
    let layout = (s.state(), s.refcount(), s.order());
    assert_eq!(layout.0, PageState::Vmemmap);
    for max in [1u64, 2, 7, 64, 4095] {
        let (first, n) = alloc_vmemmap_frames(&mut buddy, &vm, max).unwrap();
        assert!((1..=max).contains(&n), "{n} frames for at most {max}");
        assert!(n.is_power_of_two() && n * 2 > max, "the largest block that fits: {n} for {max}");
        for i in 0..n {
            let p = vm.page(Pfn::containing(first + i * PAGE_SIZE));
            assert_eq!((p.state(), p.refcount(), p.order()), layout);
        }
        buddy.check(&vm).unwrap();
        // Half one by one, half as a run.
        let half = n / 2;
        for i in 0..half {
            free_vmemmap_frame(&mut buddy, &vm, first + i * PAGE_SIZE).unwrap();
        }
        assert_eq!(
            free_vmemmap_frames(&mut buddy, &vm, first + half * PAGE_SIZE, n - half),
            n - half
        );
        buddy.check(&vm).unwrap();
    }
    free_vmemmap_frame(&mut buddy, &vm, single).unwrap();
    assert_eq!(buddy.free_pages(), free0);
    buddy.check(&vm).unwrap();
}

#[test]
fn a_run_shrinks_when_memory_is_short() {
    // 64 KiB of RAM: at most 16 frames, whatever is asked.
    let ram = [MemRegion::new(0x4000_0000, 64 << 10)];
    let (vm, mut buddy) = host_setup(&ram);
    let (first, n) = alloc_vmemmap_frames(&mut buddy, &vm, 1000).unwrap();
    assert_eq!(n, 16);
    assert!(alloc_vmemmap_frames(&mut buddy, &vm, 1).is_err(), "out of memory is an error");
    assert_eq!(free_vmemmap_frames(&mut buddy, &vm, first, n), n);
    assert_eq!(buddy.free_pages(), 16);
}
