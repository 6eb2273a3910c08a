//! Physical memory tests: the vmemmap, the buddy allocator, the HugeTLB pools, conservation.

use super::{conserved, Failure, TestResult};
use crate::memory::{check_conservation, BUDDY, HUGETLB, VMEMMAP};
use crate::{ensure, ensure_eq};
use kcore::addr::Pfn;
use kcore::buddy::BuddyError;
use kcore::hugetlb::{check_folio, HugePageSize, NoHooks};

pub fn pfn_to_page_round_trip() -> TestResult {
    let mut n = 0u64;
    for r in crate::bootstate::ram_regions().iter() {
        for pfn in r.pfns() {
            let page = VMEMMAP.pfn_to_page(Pfn(pfn));
            // SAFETY: every RAM pfn's section is present (populated at boot).
            let back = VMEMMAP.page_to_pfn(unsafe { &*page });
            if back != Pfn(pfn) {
                crate::error!("pfn {:#x} -> page {:#x} -> pfn {:#x}", pfn, page as u64, back.0);
                return Err(Failure { file: file!(), line: line!(), what: "round trip" });
            }
            n += 1;
        }
    }
    ensure_eq!(n, kcore::buddy::ram_pages(crate::bootstate::ram_regions().as_slice()));
    conserved()
}

pub fn conservation_at_boot() -> TestResult {
    let c = check_conservation().map_err(|_| Failure {
        file: file!(),
        line: line!(),
        what: "conservation",
    })?;
    ensure!(c.vmemmap > 0 && c.kernel_image > 0 && c.page_table > 0 && c.free > 0);
    ensure_eq!(c.uninit, 0);
    ensure_eq!(c.no_descriptor, 0);
    Ok(())
}

pub fn whole_2m_pool_alloc_free_exact() -> TestResult {
    let free0 = BUDDY.lock().free_pages();
    let mut heads = [Pfn(0); 1024];
    let mut n = 0;
    loop {
        let r = {
            let mut b = BUDDY.lock();
            HUGETLB.lock().alloc_pool_folio(HugePageSize::Size2M, &mut b, &VMEMMAP, &mut NoHooks)
        };
        match r {
            Ok(folio) => {
                check_folio(&folio, &VMEMMAP).map_err(|_| Failure {
                    file: file!(),
                    line: line!(),
                    what: "folio invariants",
                })?;
                let (pfn, _) = folio.into_raw();
                ensure!(n < heads.len(), "pool fits the test's table");
                heads[n] = pfn;
                n += 1;
            }
            Err(_) => break,
        }
    }
    let (free_mid, largest) = {
        let b = BUDDY.lock();
        (b.free_pages(), b.largest_free_order())
    };
    crate::info!(
        "2M pool: {} folios allocated ({} MiB); {} pages left free, largest free order {:?}",
        n,
        n * 2,
        free_mid,
        largest
    );
    let pool_conserved = check_conservation().is_ok();
    // Give everything back before judging, so a failure here does not starve later tests.
    let mut freed_ok = true;
    for &pfn in &heads[..n] {
        // SAFETY: each pfn came from `into_raw` of an order-9 pool folio above.
        let folio = unsafe { kcore::hugetlb::Folio::from_raw(pfn, 9) };
        let mut b = BUDDY.lock();
        freed_ok &= HUGETLB.lock().free_pool_folio(folio, &mut b, &VMEMMAP, &mut NoHooks).is_ok();
    }
    ensure!(n > 0, "at least one 2M folio");
    ensure!(largest.is_none_or(|o| o < 9), "the pool took every free 2M-capable block");
    ensure!(pool_conserved, "conservation held with the pool allocated");
    ensure!(freed_ok, "every folio freed");
    ensure_eq!(BUDDY.lock().free_pages(), free0);
    conserved()
}

pub fn gigantic_1g_folio() -> TestResult {
    let free0 = BUDDY.lock().free_pages();
    let pooled = HUGETLB.lock().dequeue(HugePageSize::Size1G, &VMEMMAP);
    let (folio, from_pool) = match pooled {
        Some(f) => (f, true),
        None => {
            let mut b = BUDDY.lock();
            let f = HUGETLB
                .lock()
                .alloc_pool_folio(HugePageSize::Size1G, &mut b, &VMEMMAP, &mut NoHooks)
                .map_err(|_| Failure {
                    file: file!(),
                    line: line!(),
                    what: "1G folio allocated",
                })?;
            (f, false)
        }
    };
    crate::info!("1G folio at {:#x} (from the boot pool: {})", folio.phys_addr().0, from_pool);
    ensure_eq!(folio.phys_addr().0, 0x4000_0000);
    ensure_eq!(folio.nr_pages(), 262_144);
    check_folio(&folio, &VMEMMAP).map_err(|_| Failure {
        file: file!(),
        line: line!(),
        what: "1G folio invariants",
    })?;
    conserved()?;
    if from_pool {
        HUGETLB.lock().enqueue(folio, &VMEMMAP);
    } else {
        let mut b = BUDDY.lock();
        if HUGETLB.lock().free_pool_folio(folio, &mut b, &VMEMMAP, &mut NoHooks).is_err() {
            return Err(Failure { file: file!(), line: line!(), what: "1G folio freed" });
        }
        drop(b);
        ensure_eq!(BUDDY.lock().free_pages(), free0);
    }
    conserved()
}

pub fn bad_frees_detected() -> TestResult {
    let mut b = BUDDY.lock();
    let free0 = b.free_pages();
    let pfn = b.alloc(&VMEMMAP, 0).map_err(|_| Failure {
        file: file!(),
        line: line!(),
        what: "alloc",
    })?;
    ensure!(b.free(&VMEMMAP, pfn, 0).is_ok());
    let twice = b.free(&VMEMMAP, pfn, 0);
    crate::info!("second free of pfn {:#x}: {:?}", pfn.0, twice);
    ensure!(matches!(
        twice,
        Err(BuddyError::DoubleFree { .. }) | Err(BuddyError::NotAllocated { .. })
    ));
    let block = b.alloc(&VMEMMAP, 2).map_err(|_| Failure {
        file: file!(),
        line: line!(),
        what: "alloc",
    })?;
    let tail = b.free(&VMEMMAP, block + 1, 0);
    crate::info!("free of a tail pfn {:#x}: {:?}", block.0 + 1, tail);
    ensure!(tail.is_err());
    let wrong_order = b.free(&VMEMMAP, block, 3);
    ensure!(wrong_order.is_err());
    ensure!(b.free(&VMEMMAP, block, 2).is_ok());
    ensure_eq!(b.free_pages(), free0);
    ensure!(b.check(&VMEMMAP).is_ok(), "free lists intact");
    drop(b);
    conserved()
}

pub fn hotplug_self_hosted_memmap() -> TestResult {
    use kcore::addr::VirtAddr;
    use kcore::page::{PageFlags, PageState};
    let sh = crate::memory::SELF_HOSTED.lock().ok_or(Failure {
        file: file!(),
        line: line!(),
        what: "boot with memhp_reserve= hot-adds a range",
    })?;
    let mut sections = 0;
    for s in sh.sections() {
        let first = kcore::vmemmap::section_to_pfn(s);
        // The section's descriptors are backed by the section's own first 2 MiB.
        let va = VMEMMAP.pfn_to_va(first);
        let mm = crate::memory::init_mm();
        let g = mm.mmap_read();
        let (pa, _, level) = g.translate(crate::memory::phys(), VirtAddr(va.0)).ok_or(Failure {
            file: file!(),
            line: line!(),
            what: "self-hosted vmemmap mapped",
        })?;
        ensure_eq!(pa, first.addr());
        ensure_eq!(level, kcore::pgtable::Level::L2);
        let p = VMEMMAP.page(first);
        ensure_eq!(p.state(), PageState::Vmemmap);
        ensure!(p.test(PageFlags::VMEMMAP_SELF_HOSTED), "backing frame flagged self-hosted");
        sections += 1;
    }
    ensure!(sections > 0);
    // The hot-added range counts in RAM and conservation holds over it.
    ensure!(crate::bootstate::ram_regions().iter().any(|r| r.covers(&sh.range)));
    conserved()
}
