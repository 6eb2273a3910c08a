//! A simulated machine for the HVO tests.
//!
//! - Physical memory is a `memfd` (sparse, so a 1 GiB folio costs nothing), reached linearly
//!   through one shared mapping ([`PhysView`], the stand-in for the linear map).
//! - `init_mm` is built on it with the real mapper: the vmemmap of every section is one 2 MiB
//!   block whose frames are in that memory (the boot vmemmap, at the start of the last section,
//!   outside the buddy allocator's managed ranges as memblock leaves it).
//! - The [`Vmemmap`] the allocators use is a host *window*: a reserved range of host addresses
//!   whose pages [`ShadowMmu`] keeps `mmap`ed onto the `memfd` exactly as `init_mm` maps the
//!   vmemmap, after every entry write: an invalid entry is `PROT_NONE`, a read-only entry is
//!   `PROT_READ`. So after HVO the window really aliases page 0 (fake heads appear by
//!   themselves), writing a read-only tail faults as on the target, and touching descriptors
//!   during a break faults too.
//! - [`ShadowMmu`] records every step for `check_break_before_make`, and can be told to drop
//!   TLBIs or DSBs to show the checker rejecting a broken sequence.
#![allow(dead_code)]

use kcore::addr::{Pfn, PhysAddr, VirtAddr, PAGE_SIZE, PMD_SIZE};
use kcore::bbm_check::{AuditMmu, BbmViolation};
use kcore::bbm_sync::{BbmSync, SyncEvent};
use kcore::buddy::Buddy;
use kcore::hugetlb::{Folio, HugePageSize, HugetlbPool, NoHooks};
use kcore::hugetlb_vmemmap::{BuddyFrames, Hvo, HvoOptions, VmemmapFrames};
use kcore::hvo_tails::{TailDesign, MAX_TAIL_ORDER};
use kcore::layout::VMEMMAP_START;
use kcore::mapper::{translate, BlockPolicy, FrameAlloc, VecFrameAlloc};
use kcore::memblock::{MemRegion, Memblock, ReservedKind};
use kcore::mm::{Kernel, Mm};
use kcore::page::Page;
use kcore::pgtable::{Attrs, DescKind, Descriptor, Level, ENTRIES_PER_TABLE};
use kcore::phys::PhysMem;
use kcore::tlb::{MmuEvent, MmuOps, MmuStats, RecordingMmu};
use kcore::vmemmap::{SelfHosted, Vmemmap, PAGES_PER_SECTION, SECTION_SIZE, VMEMMAP_BLOCK_SIZE};
use std::cell::Cell;
use std::ffi::{c_char, c_int, c_uint, c_void};
use std::rc::Rc;

mod sys {
    use super::*;
    extern "C" {
        pub fn memfd_create(name: *const c_char, flags: c_uint) -> c_int;
        pub fn ftruncate(fd: c_int, len: i64) -> c_int;
        pub fn mmap(
            addr: *mut c_void,
            len: usize,
            prot: c_int,
            flags: c_int,
            fd: c_int,
            off: i64,
        ) -> *mut c_void;
        pub fn munmap(addr: *mut c_void, len: usize) -> c_int;
        pub fn close(fd: c_int) -> c_int;
    }
    // Linux values (the same on x86_64 and aarch64).
    pub const PROT_NONE: c_int = 0;
    pub const PROT_READ: c_int = 1;
    pub const PROT_WRITE: c_int = 2;
    pub const MAP_SHARED: c_int = 0x01;
    pub const MAP_PRIVATE: c_int = 0x02;
    pub const MAP_FIXED: c_int = 0x10;
    pub const MAP_ANONYMOUS: c_int = 0x20;
    pub const MAP_NORESERVE: c_int = 0x4000;
    pub const MFD_CLOEXEC: c_uint = 1;
}

/// Checked `mmap`.
///
/// # Safety
/// With `MAP_FIXED`, `addr..addr + len` must be a range this process owns (our window).
unsafe fn mmap_checked(
    addr: *mut u8,
    len: u64,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: u64,
) -> *mut u8 {
    // SAFETY: forwarded from the caller.
    let p = unsafe { sys::mmap(addr.cast(), len as usize, prot, flags, fd, off as i64) };
    assert!(p as isize != -1, "mmap({addr:?}, {len:#x}) failed");
    p.cast()
}

/// Is the shared tail design in effect (`KCORE_HVO_TAILS=shared`, or a `hvo_tails_*` test)?
pub fn shared() -> bool {
    kcore::hvo_tails::tail_design() == TailDesign::Shared
}

/// Entries an optimize writes for page 0 of a folio: 1 when the seed design replaces page 0 by
/// its copy, 0 otherwise (the shared design never touches page 0).
pub fn page0_remaps(opts: HvoOptions) -> u64 {
    u64::from(opts.replace_head_page && !shared())
}

/// The frame the tail pages of `f` map once optimized: page 0's frame `p0` (seed design) or
/// the shared tail page of its order (shared design; `p0` if none exists).
pub fn tail_target(w: &World, f: &Folio, p0: PhysAddr) -> PhysAddr {
    if shared() {
        w.vm.tail_pages().get(f.order()).unwrap_or(p0)
    } else {
        p0
    }
}

/// First simulated physical address of [`World::new`] (the first GiB above the VideoCore's part
/// of RAM on every Pi 4); [`World::new_at`] takes another.
pub const BASE: u64 = 0x4000_0000;
pub const MIB: u64 = 1 << 20;

/// `memfd`-backed physical memory `[base, base + size)`: physical address `pa` is at offset
/// `pa - base` of the `memfd`.
pub struct PhysSim {
    fd: c_int,
    base: u64,
    size: u64,
    linear: *mut u8,
}

impl PhysSim {
    fn new(base: u64, size: u64) -> Self {
        // SAFETY: a plain system call with a valid C string.
        let fd = unsafe { sys::memfd_create(c"hvo-phys".as_ptr(), sys::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create failed");
        // SAFETY: `fd` is ours.
        assert_eq!(unsafe { sys::ftruncate(fd, size as i64) }, 0);
        // SAFETY: no MAP_FIXED: the kernel picks a fresh range.
        let linear = unsafe {
            mmap_checked(
                core::ptr::null_mut(),
                size,
                sys::PROT_READ | sys::PROT_WRITE,
                sys::MAP_SHARED | sys::MAP_NORESERVE,
                fd,
                0,
            )
        };
        PhysSim { fd, base, size, linear }
    }

    fn view(&self) -> PhysView {
        PhysView { base: self.base, size: self.size, linear: self.linear }
    }
}

impl Drop for PhysSim {
    fn drop(&mut self) {
        // SAFETY: our mapping and descriptor, no longer used (the world is being dropped).
        unsafe {
            sys::munmap(self.linear.cast(), self.size as usize);
            sys::close(self.fd);
        }
    }
}

/// The linear map of [`PhysSim`].
#[derive(Clone, Copy, Debug)]
pub struct PhysView {
    base: u64,
    size: u64,
    linear: *mut u8,
}

impl PhysMem for PhysView {
    fn ptr(&self, pa: PhysAddr) -> *mut u8 {
        assert!(pa.0 >= self.base && pa.0 - self.base < self.size, "{pa:?} outside simulated RAM");
        self.linear.wrapping_add((pa.0 - self.base) as usize)
    }
}

impl PhysView {
    /// First simulated physical address (the `memfd`'s offset 0).
    pub fn base(&self) -> u64 {
        self.base
    }
    pub fn read_u64(&self, pa: PhysAddr) -> u64 {
        // SAFETY: inside the mapping (checked by `ptr`), aligned by the callers.
        unsafe { core::ptr::read_volatile(self.ptr(pa).cast::<u64>()) }
    }
    pub fn read_desc(&self, pa: PhysAddr) -> [u64; 8] {
        core::array::from_fn(|i| self.read_u64(pa + i as u64 * 8))
    }
    pub fn read_frame(&self, pa: PhysAddr) -> Vec<u64> {
        (0..512).map(|i| self.read_u64(pa + i * 8)).collect()
    }
}

/// The host window standing for the vmemmap of the simulated sections.
#[derive(Clone, Copy, Debug)]
pub struct WindowMap {
    addr: *mut u8,
    len: u64,
    /// Simulated kernel VA of the window's first byte.
    va0: u64,
    fd: c_int,
}

/// Breaks an [`AuditMmu`] can follow at once in the host world (a 1 GiB batch opens 4096).
pub const AUDIT_SLOTS: usize = 4200;

/// [`RecordingMmu`] behind the online auditor, plus the window mirror. Every HVO sequence of
/// the host tests goes through [`AuditMmu`]; [`ShadowMmu::take_events`] fails the test if it
/// found a violation (unless a step is being dropped on purpose).
pub struct ShadowMmu {
    pub rec: Box<AuditMmu<RecordingMmu, AUDIT_SLOTS>>,
    win: WindowMap,
    mem: PhysView,
    root: PhysAddr,
    /// Drop (do not execute nor record) every TLBI: a broken sequence for the checker.
    pub drop_tlbi: bool,
    /// Drop every DSB ISH.
    pub drop_dsb_ish: bool,
    /// `mmap` calls made to mirror entries.
    pub mirror_calls: u64,
    /// The break window a [`WindowSync`] has open (shared with it), if any.
    pub window: Rc<Cell<Option<(u64, u64)>>>,
    /// Writes of an invalid entry (or of a pending one) at a VA outside the open break window.
    pub breaks_outside_window: u64,
}

impl ShadowMmu {
    /// Re-mirrors `[va, va + size)` of the window from the tables.
    fn sync(&mut self, va: u64, size: u64) {
        let lo = va.max(self.win.va0);
        let hi = va.saturating_add(size).min(self.win.va0 + self.win.len);
        let look = |p: u64| {
            // SAFETY: `root` is the live root of the simulated init_mm, every table of which is
            // in the simulated RAM `mem` reaches.
            unsafe { translate(self.root, &self.mem, VirtAddr(p)) }.map(|(pa, a, _)| {
                let prot = sys::PROT_READ | if a.is_writable() { sys::PROT_WRITE } else { 0 };
                (pa.0, prot)
            })
        };
        let mut p = lo & !(PAGE_SIZE - 1);
        while p < hi {
            let first = look(p);
            let mut n = 1;
            while p + n * PAGE_SIZE < hi {
                let next = look(p + n * PAGE_SIZE);
                let same = match (first, next) {
                    (None, None) => true,
                    (Some((a, pa)), Some((b, pb))) => b == a + n * PAGE_SIZE && pa == pb,
                    _ => false,
                };
                if !same {
                    break;
                }
                n += 1;
            }
            let at = self.win.addr.wrapping_add((p - self.win.va0) as usize);
            // SAFETY: `at..at + n pages` is inside our reserved window.
            unsafe {
                match first {
                    Some((pa, prot)) => mmap_checked(
                        at,
                        n * PAGE_SIZE,
                        prot,
                        sys::MAP_SHARED | sys::MAP_FIXED,
                        self.win.fd,
                        pa - self.mem.base,
                    ),
                    None => mmap_checked(
                        at,
                        n * PAGE_SIZE,
                        sys::PROT_NONE,
                        sys::MAP_PRIVATE | sys::MAP_ANONYMOUS | sys::MAP_FIXED | sys::MAP_NORESERVE,
                        -1,
                        0,
                    ),
                };
            }
            self.mirror_calls += 1;
            p += n * PAGE_SIZE;
        }
    }

    /// A second backend over the same tables and window (another CPU's), recording apart.
    pub fn another(&self) -> ShadowMmu {
        ShadowMmu {
            rec: Box::new(AuditMmu::new(RecordingMmu::new())),
            win: self.win,
            mem: self.mem,
            root: self.root,
            drop_tlbi: false,
            drop_dsb_ish: false,
            mirror_calls: 0,
            window: Rc::new(Cell::new(None)),
            breaks_outside_window: 0,
        }
    }

    /// The recorded events, and the auditor's verdict on them (which is then reset).
    pub fn take_events_audited(&mut self) -> (Vec<MmuEvent>, Result<(), BbmViolation>) {
        let verdict = self.rec.check();
        self.rec.reset();
        (self.rec.inner_mut().take_events(), verdict)
    }

    /// The recorded events; panics if the online auditor found a violation in them, unless a
    /// step is being dropped on purpose (then see [`ShadowMmu::take_events_audited`]).
    pub fn take_events(&mut self) -> Vec<MmuEvent> {
        let (ev, verdict) = self.take_events_audited();
        if !self.drop_tlbi && !self.drop_dsb_ish {
            assert_eq!(verdict, Ok(()), "the online break-before-make auditor");
        }
        ev
    }
}

impl MmuOps for ShadowMmu {
    unsafe fn write_entry(&mut self, slot: *mut u64, va: VirtAddr, level: Level, new: Descriptor) {
        // SAFETY: the caller's slot is a live entry; reading it has no side effect.
        let old = Descriptor(unsafe { core::ptr::read_volatile(slot) });
        if old.is_valid() && !new.is_valid() {
            let inside = self.window.get().is_some_and(|(lo, hi)| va.0 >= lo && va.0 < hi);
            self.breaks_outside_window += u64::from(!inside);
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.rec.write_entry(slot, va, level, new) };
        self.sync(va.0, level.size());
    }
    fn dsb_ishst(&mut self) {
        self.rec.dsb_ishst();
    }
    fn dsb_ish(&mut self) {
        if !self.drop_dsb_ish {
            self.rec.dsb_ish();
        }
    }
    fn isb(&mut self) {
        self.rec.isb();
    }
    fn tlbi_vaae1is(&mut self, va: VirtAddr) {
        if !self.drop_tlbi {
            self.rec.tlbi_vaae1is(va);
        }
    }
    fn tlbi_vae1is(&mut self, va: VirtAddr, asid: u16) {
        if !self.drop_tlbi {
            self.rec.tlbi_vae1is(va, asid);
        }
    }
    fn tlbi_aside1is(&mut self, asid: u16) {
        if !self.drop_tlbi {
            self.rec.tlbi_aside1is(asid);
        }
    }
    fn tlbi_vmalle1is(&mut self) {
        if !self.drop_tlbi {
            self.rec.tlbi_vmalle1is();
        }
    }
    fn stats(&self) -> MmuStats {
        self.rec.stats()
    }
}

/// A frame allocator with no frames (for HVO calls that need none, e.g. `split_folio`).
pub struct NoFrames;

// SAFETY: hands out nothing.
unsafe impl VmemmapFrames for NoFrames {
    fn alloc(&mut self) -> Option<PhysAddr> {
        None
    }
    fn free(&mut self, _: PhysAddr) -> bool {
        false
    }
}

/// A frame allocator over the buddy allocator that fails from its `fail_at`-th call on
/// (0-based), counting calls.
pub struct TestFrames<'a> {
    pub inner: BuddyFrames<'a>,
    pub fail_at: Option<u64>,
    /// Refuse every free (the frame is not given to the buddy allocator).
    pub fail_free: bool,
    pub calls: u64,
    pub allocated: u64,
    pub freed: u64,
}

// SAFETY: forwards to `BuddyFrames` (which upholds the contract) or returns `None`.
unsafe impl VmemmapFrames for TestFrames<'_> {
    fn alloc(&mut self) -> Option<PhysAddr> {
        let n = self.calls;
        self.calls += 1;
        if self.fail_at.is_some_and(|k| n >= k) {
            return None;
        }
        let r = self.inner.alloc();
        self.allocated += u64::from(r.is_some());
        r
    }
    fn free(&mut self, pa: PhysAddr) -> bool {
        if self.fail_free {
            return false;
        }
        let ok = self.inner.free(pa);
        self.freed += u64::from(ok);
        ok
    }
    fn free_run(&mut self, pa: PhysAddr, n: u64) -> u64 {
        if self.fail_free {
            return 0;
        }
        let ok = self.inner.free_run(pa, n);
        self.freed += ok;
        ok
    }
}

pub type TestHvo<'a, 'b> = Hvo<'a, PhysView, ShadowMmu, TestFrames<'b>, VecFrameAlloc>;

/// What a [`World::hvo`] session leaves behind.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCalls {
    pub calls: u64,
    pub allocated: u64,
    pub freed: u64,
}

pub struct World {
    pub phys: PhysSim,
    pub mem: PhysView,
    window_len: u64,
    pub mm: Mm<Kernel>,
    pub vm: Vmemmap,
    pub buddy: Buddy,
    pub tables: VecFrameAlloc,
    pub mmu: ShadowMmu,
    pub pool: HugetlbPool,
    pub ram: Vec<MemRegion>,
    pub hot: Option<SelfHosted>,
    /// The boot vmemmap blocks' frames and the table region (not managed by the buddy).
    pub backing: MemRegion,
    /// HVO sessions' frame allocator refuses every free.
    pub fail_frees: bool,
}

/// Table pages for init_mm and the splits.
const TABLE_PAGES: u64 = 256;

impl World {
    /// `sections` sections of boot RAM from [`BASE`] (the last one holds the boot vmemmap and
    /// the page tables), then `hot` sections of memory hot-added with a self-hosted memmap.
    pub fn new(sections: u64, hot: u64) -> World {
        World::new_at(BASE, sections, hot)
    }

    /// [`World::new`] with the simulated RAM starting at `base` (section-aligned), e.g. a bank
    /// above 4 GiB of an 8 GB board.
    pub fn new_at(base: u64, sections: u64, hot: u64) -> World {
        assert!(sections >= 2);
        assert_eq!(base % SECTION_SIZE, 0, "{base:#x} is not section-aligned");
        let total = (sections + hot) * SECTION_SIZE;
        let phys = PhysSim::new(base, total);
        let mem = phys.view();
        let s0 = (base / SECTION_SIZE) as usize;
        let p0 = s0 as u64 * PAGES_PER_SECTION;
        let window_len = (sections + hot) * VMEMMAP_BLOCK_SIZE;
        // `KCORE_HVO_TAILS=seed|shared` runs every test on a World in that tail design.
        let mut prime = false;
        if let Ok(v) = std::env::var("KCORE_HVO_TAILS") {
            let d = TailDesign::from_name(&v).expect("KCORE_HVO_TAILS=seed|shared");
            kcore::hugetlb_vmemmap::set_tail_design(d).expect("tail design");
            prime = d == TailDesign::Shared;
        }
        // The memmap base (pfn 0's descriptor) is aligned as the target's VMEMMAP_START is for
        // every folio order (shared tail design: the head is the tail's address masked), so
        // the reservation is over-sized and trimmed to an aligned window.
        let align = 64u64 << MAX_TAIL_ORDER;
        // SAFETY: no MAP_FIXED: a fresh reservation.
        let raw = unsafe {
            mmap_checked(
                core::ptr::null_mut(),
                window_len + align,
                sys::PROT_NONE,
                sys::MAP_PRIVATE | sys::MAP_ANONYMOUS | sys::MAP_NORESERVE,
                -1,
                0,
            )
        };
        let want = (p0 * 64) % align;
        let skip = (want + align - (raw as u64 % align)) % align;
        let waddr = raw.wrapping_add(skip as usize);
        // SAFETY: the parts of our own reservation outside the window.
        unsafe {
            if skip > 0 {
                sys::munmap(raw.cast(), skip as usize);
            }
            if align - skip > 0 {
                sys::munmap(waddr.add(window_len as usize).cast(), (align - skip) as usize);
            }
        }
        // compound_head() and the fake-head check rebuild pointers from addresses.
        let _ = waddr.expose_provenance();
        let win =
            WindowMap { addr: waddr, len: window_len, va0: VMEMMAP_START + p0 * 64, fd: phys.fd };

        let resv = base + (sections - 1) * SECTION_SIZE;
        let tbl = resv + sections * VMEMMAP_BLOCK_SIZE;
        let backing = MemRegion::from_range(resv, tbl + TABLE_PAGES * PAGE_SIZE);
        let mut tables = VecFrameAlloc::new(PhysAddr(tbl), TABLE_PAGES);
        let root = tables.alloc_table().unwrap();
        // SAFETY: a fresh zeroed table page of the simulated RAM, owned by this mm only.
        let mm = unsafe { Mm::new_kernel(root) };
        let mut mmu = ShadowMmu {
            rec: Box::new(AuditMmu::new(RecordingMmu::new())),
            win,
            mem,
            root,
            drop_tlbi: false,
            drop_dsb_ish: false,
            mirror_calls: 0,
            window: Rc::new(Cell::new(None)),
            breaks_outside_window: 0,
        };
        {
            let mut g = mm.mmap_write();
            for i in 0..sections {
                g.map_range(
                    &mem,
                    &mut tables,
                    &mut mmu,
                    VirtAddr(win.va0 + i * VMEMMAP_BLOCK_SIZE),
                    PhysAddr(resv + i * VMEMMAP_BLOCK_SIZE),
                    VMEMMAP_BLOCK_SIZE,
                    Attrs::kernel_data(),
                    BlockPolicy::ALL_BLOCKS,
                )
                .unwrap();
            }
        }
        // SAFETY: sections are marked present only once the mirror maps their block (just
        // above for the boot ones, in `populate_self_hosted`'s closure for the hot ones); the
        // window lives as long as the world.
        let vm = unsafe { Vmemmap::new(waddr.cast::<Page>().wrapping_sub(p0 as usize)) };
        for s in s0..s0 + sections as usize {
            // SAFETY: mapped above.
            unsafe { vm.mark_section_present(s) };
            vm.init_section(s);
        }
        // Memory handed over as the firmware does it: memblock with the boot vmemmap and the
        // early tables reserved, then `free_memblock`, which makes each RAM bank one managed
        // span (so the boot vmemmap is inside it, as on the target) and gives the reserved
        // frames their states.
        let end = base + sections * SECTION_SIZE;
        let mut mb = Memblock::new();
        mb.add_memory(PhysAddr(base), sections * SECTION_SIZE).unwrap();
        mb.reserve(PhysAddr(resv), tbl - resv, ReservedKind::Vmemmap).unwrap();
        mb.reserve(PhysAddr(tbl), TABLE_PAGES * PAGE_SIZE, ReservedKind::EarlyTables).unwrap();
        let mut buddy = Buddy::new();
        buddy.free_memblock(&vm, &mb).unwrap();

        let mut hot_sh = None;
        if hot > 0 {
            let range = MemRegion::new(end, hot * SECTION_SIZE);
            let mut g = mm.mmap_write();
            // SAFETY: the closure maps each block read-write in init_mm, which the mirror turns
            // into a mapping of the window.
            let sh = unsafe {
                vm.populate_self_hosted(range, |va, pa| {
                    let kva = win.va0 + (va.0 - waddr as u64);
                    g.map_range(
                        &mem,
                        &mut tables,
                        &mut mmu,
                        VirtAddr(kva),
                        pa,
                        PMD_SIZE,
                        Attrs::kernel_data(),
                        BlockPolicy::ALL_BLOCKS,
                    )
                    .map(|_| ())
                })
            }
            .unwrap();
            vm.init_self_hosted(&sh);
            for r in sh.usable() {
                let p = r.pfns();
                buddy.free_range(&vm, Pfn(p.start), Pfn(p.end)).unwrap();
            }
            hot_sh = Some(sh);
        }
        mmu.take_events();
        let mut w = World {
            phys,
            mem,
            window_len,
            mm,
            vm,
            buddy,
            tables,
            mmu,
            pool: HugetlbPool::new(),
            ram: vec![MemRegion::new(base, total)],
            hot: hot_sh,
            backing,
            fail_frees: false,
        };
        if prime {
            // The existing tests in the shared design run in its steady state: the tail pages of
            // both orders exist (the first-use allocation is tested by `hvo_tails_*`).
            for order in [9, 18] {
                let (r, _) = w.hvo(HvoOptions::default(), None, |h| h.prepare_tail_page(order));
                assert!(matches!(r, Ok(Some(_))));
            }
            w.mmu.take_events();
        }
        w
    }

    /// Runs `f` with an [`Hvo`] over this world. The frame allocator fails from its
    /// `fail_at`-th call.
    pub fn hvo<R>(
        &mut self,
        opts: HvoOptions,
        fail_at: Option<u64>,
        f: impl FnOnce(&mut TestHvo<'_, '_>) -> R,
    ) -> (R, FrameCalls) {
        self.hvo_sync(opts, fail_at, None, f)
    }

    /// [`World::hvo`] with `sync` as the HVO instance's [`BbmSync`].
    pub fn hvo_sync<R>(
        &mut self,
        opts: HvoOptions,
        fail_at: Option<u64>,
        sync: Option<&mut dyn BbmSync>,
        f: impl FnOnce(&mut TestHvo<'_, '_>) -> R,
    ) -> (R, FrameCalls) {
        let guard = self.mm.mmap_read();
        let mut frames = TestFrames {
            inner: BuddyFrames::new(&mut self.buddy, &self.vm),
            fail_at,
            fail_free: self.fail_frees,
            calls: 0,
            allocated: 0,
            freed: 0,
        };
        // SAFETY: `mem` reaches all simulated RAM; `vm` reads the descriptors through the
        // mirror of this very init_mm; one thread; the folios are the test's.
        let mut h = unsafe {
            Hvo::new(&guard, &self.mem, &mut self.mmu, &self.vm, &mut frames, &mut self.tables)
        }
        .with_options(opts);
        if let Some(s) = sync {
            h.set_sync(s);
        }
        let r = f(&mut h);
        (r, FrameCalls { calls: frames.calls, allocated: frames.allocated, freed: frames.freed })
    }

    /// A HugeTLB folio of `size` at `pfn` (or anywhere), from the pool, frozen (head refcount
    /// 0) as HVO requires.
    pub fn folio(&mut self, size: HugePageSize, pfn: Option<Pfn>) -> Folio {
        let f = self.folio_unfrozen(size, pfn);
        assert!(f.head(&self.vm).ref_freeze(1));
        f
    }

    /// A HugeTLB folio as the pool hands it out (head refcount 1).
    pub fn folio_unfrozen(&mut self, size: HugePageSize, pfn: Option<Pfn>) -> Folio {
        match pfn {
            Some(p) => self
                .pool
                .alloc_pool_folio_at(size, p, &mut self.buddy, &self.vm, &mut NoHooks)
                .unwrap(),
            None => {
                self.pool.alloc_pool_folio(size, &mut self.buddy, &self.vm, &mut NoHooks).unwrap()
            }
        }
    }

    /// The vmemmap's frames by state and by mapping.
    pub fn vmemmap_census(&self) -> kcore::hugetlb_vmemmap::VmemmapCensus {
        kcore::hugetlb_vmemmap::vmemmap_census(&self.mm.mmap_read(), &self.mem, &self.vm, &self.ram)
    }

    /// Software translation in the simulated init_mm.
    pub fn translate(&self, va: VirtAddr) -> Option<(PhysAddr, Attrs, Level)> {
        self.mm.mmap_read().translate(&self.mem, va)
    }

    /// The descriptor of `pfn` read through the simulated translation.
    pub fn desc_via_tables(&self, pfn: Pfn) -> [u64; 8] {
        let (pa, _, _) = self.translate(VirtAddr(VMEMMAP_START + pfn.0 * 64)).expect("unmapped");
        self.mem.read_desc(pa)
    }

    /// The descriptor of `pfn` read through the window (what the allocators see).
    pub fn desc_via_window(&self, pfn: Pfn) -> [u64; 8] {
        let p = self.vm.page(pfn) as *const Page as *const u64;
        // SAFETY: a present section's descriptor, mapped readable in the window.
        core::array::from_fn(|i| unsafe { core::ptr::read_volatile(p.add(i)) })
    }

    /// All descriptors of `folio`, through the tables.
    pub fn folio_descs(&self, folio: &Folio) -> Vec<[u64; 8]> {
        let mut out = Vec::with_capacity(folio.nr_pages() as usize);
        // Per vmemmap page: one translation, 64 descriptors.
        for page in 0..(folio.nr_pages() / 64).max(1) {
            let pfn0 = folio.head_pfn().0 + page * 64;
            let (pa, _, _) = self.translate(VirtAddr(VMEMMAP_START + pfn0 * 64)).unwrap();
            for i in 0..64.min(folio.nr_pages()) {
                out.push(self.mem.read_desc(pa + i * 64));
            }
        }
        out
    }

    /// Every valid entry of every table of init_mm: (table, index, level, value).
    pub fn table_snapshot(&self) -> Vec<(u64, usize, u8, u64)> {
        let mut out = Vec::new();
        self.snap(self.mm.root(), Level::L0, &mut out);
        out
    }

    fn snap(&self, table: PhysAddr, level: Level, out: &mut Vec<(u64, usize, u8, u64)>) {
        for i in 0..ENTRIES_PER_TABLE {
            let d = Descriptor(self.mem.read_u64(table + i as u64 * 8));
            if d.bits() == 0 {
                continue;
            }
            out.push((table.0, i, level as u8, d.bits()));
            if d.kind(level) == DescKind::Table {
                self.snap(d.table_address(), level.next().unwrap(), out);
            }
        }
    }

    /// The vmemmap VA range of `folio` in the simulated init_mm.
    pub fn folio_va(&self, folio: &Folio) -> (VirtAddr, VirtAddr) {
        kcore::hugetlb_vmemmap::folio_vmemmap_range(folio)
    }

    /// Distinct frames behind the vmemmap, computed independently of `vmemmap_usage`: every
    /// present section's descriptors translated page by page into a set.
    pub fn vmemmap_frames_by_translation(&self) -> u64 {
        let mut set = std::collections::BTreeSet::new();
        let s0 = self.mem.base / SECTION_SIZE;
        for p in 0..self.window_len / PAGE_SIZE {
            let va = VMEMMAP_START + s0 * VMEMMAP_BLOCK_SIZE + p * PAGE_SIZE;
            if let Some((pa, _, _)) = self.translate(VirtAddr(va)) {
                set.insert(pa.0 & !(PAGE_SIZE - 1));
            }
        }
        set.len() as u64
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // SAFETY: our reservation; nothing uses the window once the world goes.
        unsafe { sys::munmap(self.mmu.win.addr.cast(), self.window_len as usize) };
    }
}

/// A [`BbmSync`] that records its calls, tells the [`ShadowMmu`] which window is open (so that
/// a break outside it is counted), and checks at each `break_end` that every page of the
/// window is mapped again (through the simulated tables).
pub struct WindowSync {
    pub events: Vec<SyncEvent>,
    window: Rc<Cell<Option<(u64, u64)>>>,
    mem: PhysView,
    root: PhysAddr,
    /// Pages found unmapped at a `break_end`.
    pub unmapped_at_end: u64,
    /// Hooks called out of order (a break inside a break, an op inside an op, a break outside
    /// an op, a grace period inside a break).
    pub misordered: u64,
    in_op: bool,
}

impl WindowSync {
    pub fn new(w: &World) -> Self {
        WindowSync {
            events: Vec::new(),
            window: Rc::clone(&w.mmu.window),
            mem: w.mem,
            root: w.mm.root(),
            unmapped_at_end: 0,
            misordered: 0,
            in_op: false,
        }
    }
}

impl BbmSync for WindowSync {
    fn op_begin(&mut self) {
        self.misordered += u64::from(self.in_op);
        self.in_op = true;
        self.events.push(SyncEvent::OpBegin);
    }
    fn break_begin(&mut self, start: VirtAddr, end: VirtAddr) {
        self.misordered += u64::from(!self.in_op || self.window.get().is_some());
        self.window.set(Some((start.0, end.0)));
        self.events.push(SyncEvent::BreakBegin(start, end));
    }
    fn break_end(&mut self) {
        match self.window.take() {
            None => self.misordered += 1,
            Some((lo, hi)) => {
                for va in (lo & !(PAGE_SIZE - 1)..hi).step_by(PAGE_SIZE as usize) {
                    // SAFETY: the live root of the simulated init_mm, all in simulated RAM.
                    let t = unsafe { translate(self.root, &self.mem, VirtAddr(va)) };
                    self.unmapped_at_end += u64::from(t.is_none());
                }
            }
        }
        self.events.push(SyncEvent::BreakEnd);
    }
    fn grace_period(&mut self) {
        self.misordered += u64::from(!self.in_op || self.window.get().is_some());
        self.events.push(SyncEvent::GracePeriod);
    }
    fn op_end(&mut self) {
        self.misordered += u64::from(!self.in_op || self.window.get().is_some());
        self.in_op = false;
        self.events.push(SyncEvent::OpEnd);
    }
}

/// 2 MiB folio order, 1 GiB folio order.
pub const O2M: u8 = 9;
pub const O1G: u8 = 18;
