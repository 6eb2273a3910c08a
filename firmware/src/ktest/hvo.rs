//! HVO on the live kernel map: the checks of Linux's selftests/mm/hugepage-vmemmap.c and more.
//! Page conservation is checked after every step.

use super::{conserved, Failure, TestResult};
use crate::arch::probe;
use crate::hvo::{dissolve, verify_heads, with_hvo, Batch};
use crate::memory::{check_conservation, BUDDY, HUGETLB, VMEMMAP};
use crate::{ensure, ensure_eq};
use kcore::addr::{Pfn, VirtAddr, PAGE_SIZE};
use kcore::esr::{ExceptionClass, FaultKind};
use kcore::hugetlb::{Folio, HugePageSize, NoHooks};
use kcore::hugetlb_vmemmap::{self as hv, HvoError};

fn fail(what: &'static str) -> Failure {
    Failure { file: file!(), line: line!(), what }
}

/// New folios straight from the buddy allocator (not optimized), outside memory that hosts its
/// own memmap (HVO refuses those; `self_hosted_refused` tests that).
fn alloc_folios(size: HugePageSize, n: usize) -> Result<Batch, Failure> {
    let self_hosted = crate::memory::SELF_HOSTED.lock().map(|sh| sh.range);
    let mut out = Batch::new();
    let mut aside = Batch::new();
    while out.len() < n {
        let f = {
            let mut b = BUDDY.lock();
            HUGETLB.lock().alloc_pool_folio(size, &mut b, &VMEMMAP, &mut NoHooks)
        };
        let f = match f {
            Ok(f) => f,
            Err(_) => break,
        };
        // Frozen (refcount 0), as HVO requires.
        f.head(&VMEMMAP).ref_freeze(1);
        let target = if self_hosted.is_some_and(|r| r.contains(f.phys_addr())) {
            &mut aside
        } else {
            &mut out
        };
        if let Err(f) = target.push(f) {
            let mut one = Batch::new();
            let _ = one.push(f);
            release(one);
            break;
        }
    }
    release(aside);
    if out.len() < n {
        release(out);
        return Err(fail("folios allocated outside self-hosted memory"));
    }
    Ok(out)
}

/// Restores (if needed) and frees every folio of `batch`.
fn release(batch: Batch) {
    for f in batch {
        let _ = dissolve(f);
    }
}

fn optimize_all(batch: &Batch) -> Result<u64, HvoError> {
    with_hvo(|_| {}, |hvo| hvo.optimize_folios(batch))
}

fn every_pfn(size: HugePageSize, n: usize) -> TestResult {
    let batch = alloc_folios(size, n)?;
    let free0 = BUDDY.lock().free_pages();
    let r = optimize_all(&batch);
    let freed = BUDDY.lock().free_pages() as i64 - free0 as i64;
    let wrong: u64 = batch.iter().map(verify_heads).sum();
    let optimized = batch.iter().all(|f| hv::folio_is_optimized(&VMEMMAP, f));
    let ok = conserved();
    crate::info!(
        "hvo {}: {} folios: {:?}, buddy gained {} pages, {} wrong answers",
        size.name(),
        n,
        r,
        freed,
        wrong
    );
    release(batch);
    ensure_eq!(r.ok(), Some(n as u64));
    ensure!(optimized);
    ensure_eq!(wrong, 0);
    // Gains at least the tail pages minus the split tables (both measured elsewhere exactly).
    ensure!(freed > 0, "HVO returned frames to the buddy allocator");
    ok?;
    conserved()
}

pub fn every_pfn_2m() -> TestResult {
    every_pfn(HugePageSize::Size2M, 8)
}

pub fn every_pfn_1g() -> TestResult {
    // Bind first: a lock guard in an `if let` scrutinee would live through the body.
    let pooled = HUGETLB.lock().dequeue(HugePageSize::Size1G, &VMEMMAP);
    if let Some(f) = pooled {
        // The boot pool's folio (optimized at boot when HVO is on): check it as it is.
        let wrong = verify_heads(&f);
        let opt = hv::folio_is_optimized(&VMEMMAP, &f);
        HUGETLB.lock().enqueue(f, &VMEMMAP);
        ensure_eq!(wrong, 0);
        ensure_eq!(opt, hv::hvo_enabled());
        return conserved();
    }
    every_pfn(HugePageSize::Size1G, 1)
}

pub fn tail_write_faults_and_restore_is_identical() -> TestResult {
    static SNAPSHOT: crate::sync::SpinMutex<[u64; 4096]> = crate::sync::SpinMutex::new([0; 4096]);
    let batch = alloc_folios(HugePageSize::Size2M, 1)?;
    let f = &batch[0];
    let base = hv::vmemmap_va(f.head_pfn()).0;
    let words = (512 * 64 / 8) as usize;
    let mut snap = SNAPSHOT.lock();
    for i in 0..words {
        // SAFETY: the folio's 32 KiB of descriptors, mapped read-write before optimization.
        snap[i] = unsafe { core::ptr::read_volatile((base + 8 * i as u64) as *const u64) };
    }
    let r = optimize_all(&batch);
    // A descriptor in the second vmemmap page: now mapped read-only onto page 0.
    let tail = base + PAGE_SIZE + 64 * 3;
    // SAFETY: a mapped descriptor of a folio we own; reading has no side effect.
    let before = unsafe { probe::read_u64(tail) };
    let w = match before {
        // SAFETY: the write must fault (read-only mapping); if it did not, it would write back
        // the value that is there.
        Ok(v) => unsafe { probe::write_u64(tail, v) },
        Err(e) => Err(e),
    };
    let restored = with_hvo(|_| {}, |hvo| hvo.restore_folio(f));
    // Writable again: write the original value back.
    // SAFETY: the folio's own descriptor, restored read-write; the value is what was there.
    let w2 = unsafe { probe::write_u64(tail, snap[((PAGE_SIZE + 64 * 3) / 8) as usize]) };
    let mut differ = 0;
    for i in 0..words {
        // SAFETY: as above; restored read-write.
        if unsafe { core::ptr::read_volatile((base + 8 * i as u64) as *const u64) } != snap[i] {
            differ += 1;
        }
    }
    drop(snap);
    let wrong = verify_heads(f);
    release(batch);
    ensure_eq!(r.ok(), Some(1));
    let fault = w.err().ok_or(fail("write to a remapped tail page faulted"))?;
    ensure_eq!(fault.syndrome.class, ExceptionClass::DataAbortSame);
    ensure_eq!(fault.syndrome.fault, Some(FaultKind::Permission(3)));
    ensure!(fault.syndrome.write);
    ensure_eq!(fault.far, tail);
    ensure_eq!(restored.ok(), Some(true));
    ensure!(w2.is_ok(), "writable after restore");
    ensure_eq!(differ, 0);
    ensure_eq!(wrong, 0);
    conserved()
}

pub fn restore_alloc_failure_each_step() -> TestResult {
    let batch = alloc_folios(HugePageSize::Size2M, 1)?;
    let f = &batch[0];
    if optimize_all(&batch).ok() != Some(1) {
        release(batch);
        return Err(fail("optimized"));
    }
    let mut failures = 0;
    let mut result = Ok(());
    for k in 0..64u64 {
        let free0 = BUDDY.lock().free_pages();
        let r = with_hvo(|s| s.fail_frame_allocation(k), |hvo| hvo.restore_folio(f));
        match r {
            Err(HvoError::NoMemory { needed, got }) => {
                failures += 1;
                let same = BUDDY.lock().free_pages() == free0
                    && hv::folio_is_optimized(&VMEMMAP, f)
                    && verify_heads(f) == 0
                    && got == k
                    && needed > k;
                if !same || check_conservation().is_err() {
                    crate::error!("restore failing at allocation {}: state changed", k);
                    result = Err(fail("a failed restore changes nothing"));
                    break;
                }
            }
            Ok(true) => break,
            other => {
                crate::error!("restore with failure at {}: {:?}", k, other);
                result = Err(fail("restore fails with NoMemory or succeeds"));
                break;
            }
        }
    }
    let still = hv::folio_is_optimized(&VMEMMAP, f);
    release(batch);
    result?;
    crate::info!("hvo: restore failed cleanly at each of {} allocations, then succeeded", failures);
    ensure!(failures >= 7, "a failure injected at each of the 7 tail-page allocations");
    ensure!(!still, "the last, uninjected restore succeeded");
    conserved()
}

pub fn runtime_switch() -> TestResult {
    let was = hv::hvo_enabled();
    let batch = alloc_folios(HugePageSize::Size2M, 2)?;
    hv::set_hvo_enabled(false);
    let free0 = BUDDY.lock().free_pages();
    let off = with_hvo(|_| {}, |hvo| hvo.maybe_optimize(&batch[0]));
    let free1 = BUDDY.lock().free_pages();
    hv::set_hvo_enabled(true);
    let on = with_hvo(|_| {}, |hvo| hvo.maybe_optimize(&batch[1]));
    let free2 = BUDDY.lock().free_pages();
    hv::set_hvo_enabled(was);
    let (o0, o1) =
        (hv::folio_is_optimized(&VMEMMAP, &batch[0]), hv::folio_is_optimized(&VMEMMAP, &batch[1]));
    release(batch);
    ensure_eq!(off.ok(), Some(false));
    ensure_eq!(free1, free0);
    ensure_eq!(on.ok(), Some(true));
    ensure!(free2 > free1, "the enabled switch optimizes (frees frames)");
    ensure!(!o0 && o1);
    conserved()
}

pub fn boot_param_respected() -> TestResult {
    let expected = crate::init::cmdline().hugetlb_free_vmemmap.unwrap_or(true);
    ensure_eq!(hv::hvo_enabled(), expected);
    // Boot-pool folios are optimized exactly when HVO was on at boot.
    let mut checked = 0;
    for size in HugePageSize::ALL {
        let pooled = HUGETLB.lock().dequeue(size, &VMEMMAP);
        if let Some(f) = pooled {
            let opt = hv::folio_is_optimized(&VMEMMAP, &f);
            HUGETLB.lock().enqueue(f, &VMEMMAP);
            ensure_eq!(opt, expected);
            checked += 1;
        }
    }
    crate::info!("hvo: boot param {}, {} pool folio(s) checked", expected, checked);
    conserved()
}

pub fn self_hosted_refused() -> TestResult {
    let sh = crate::memory::SELF_HOSTED
        .lock()
        .ok_or(fail("boot with memhp_reserve= hot-adds a range"))?;
    // The first free 2 MiB slot of the hot-added range (small allocations may sit anywhere).
    let mut found = None;
    'outer: for usable in sh.usable() {
        let mut pa = usable.base.0.div_ceil(2 << 20) * (2 << 20);
        while pa + (2 << 20) <= usable.end() {
            let r = {
                let mut b = BUDDY.lock();
                HUGETLB.lock().alloc_pool_folio_at(
                    HugePageSize::Size2M,
                    Pfn(pa / PAGE_SIZE),
                    &mut b,
                    &VMEMMAP,
                    &mut NoHooks,
                )
            };
            if let Ok(f) = r {
                // Frozen, so that HVO gets as far as the self-hosted check.
                f.head(&VMEMMAP).ref_freeze(1);
                found = Some(f);
                break 'outer;
            }
            pa += 2 << 20;
        }
    }
    let folio: Folio = found.ok_or(fail("a 2M folio in the hot-added range"))?;
    let va = hv::vmemmap_va(folio.head_pfn());
    let level_of = |va: VirtAddr| {
        let mm = crate::memory::init_mm();
        let g = mm.mmap_read();
        g.translate(crate::memory::phys(), va).map(|(_, _, l)| l)
    };
    let before = level_of(va);
    let free0 = BUDDY.lock().free_pages();
    let r = with_hvo(|_| {}, |hvo| hvo.optimize_folio(&folio));
    let after = level_of(va);
    let free1 = BUDDY.lock().free_pages();
    crate::info!("hvo: optimize of a folio in self-hosted memory: {:?}", r);
    let mut batch = Batch::new();
    let _ = batch.push(folio);
    release(batch);
    ensure!(matches!(r, Err(HvoError::SelfHostedVmemmap { .. })));
    ensure_eq!(before, Some(kcore::pgtable::Level::L2));
    ensure_eq!(after, before);
    ensure_eq!(free1, free0);
    conserved()
}

pub fn batching_needs_fewer_barriers() -> TestResult {
    let batch = alloc_folios(HugePageSize::Size2M, 8)?;
    // Split first so both runs do the same remapping work.
    let _ = with_hvo(|_| {}, |hvo| batch.iter().try_for_each(|f| hvo.split_folio(f).map(|_| ())));
    let single = with_hvo(
        |_| {},
        |hvo| {
            for f in &batch {
                hvo.optimize_folio(f)?;
            }
            Ok::<_, HvoError>(hvo.stats())
        },
    );
    let _ = with_hvo(|_| {}, |hvo| hvo.restore_folios(&batch));
    let batched = with_hvo(|_| {}, |hvo| hvo.optimize_folios(&batch).map(|_| hvo.stats()));
    release(batch);
    let (single, batched) = match (single, batched) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return Err(fail("both optimizations ran")),
    };
    crate::info!(
        "hvo: 8 folios one by one: {} TLBI, {} DSB, {} ISB; batched: {} TLBI, {} DSB, {} ISB",
        single.tlbi,
        single.dsb,
        single.isb,
        batched.tlbi,
        batched.dsb,
        batched.isb
    );
    ensure_eq!(single.ptes_remapped, batched.ptes_remapped);
    ensure!(batched.dsb < single.dsb, "batching saves DSBs");
    ensure!(batched.isb < single.isb, "batching saves ISBs");
    ensure!(batched.tlbi <= single.tlbi);
    conserved()
}

pub fn dissolve_restores_first() -> TestResult {
    let free0 = BUDDY.lock().free_pages();
    let batch = alloc_folios(HugePageSize::Size2M, 4)?;
    let n = optimize_all(&batch).map_err(|_| fail("optimized"))?;
    ensure_eq!(n, 4);
    release(batch);
    ensure_eq!(BUDDY.lock().free_pages(), free0);
    conserved()
}
