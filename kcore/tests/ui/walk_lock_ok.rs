// Walking init_mm under mmap_lock for read or write, and a user mm under mmap_lock for write,
// compiles (and runs: the tables are one empty static root, reached through an identity window).
use kcore::addr::{PhysAddr, VirtAddr};
use kcore::mm::{Kernel, Mm, User};
use kcore::pagewalk::{walk_page_range_novma, Interests, PageWalkOps};
use kcore::phys::OffsetWindow;

#[repr(C, align(4096))]
struct Table([u64; 512]);

static ROOT: Table = Table([0; 512]);

struct Holes(usize);

impl PageWalkOps for Holes {
    type Output = ();
    type Error = ();
    const INTERESTS: Interests = Interests::HOLE;
    fn pte_hole(
        &mut self,
        _start: VirtAddr,
        _end: VirtAddr,
        _depth: kcore::pgtable::Level,
    ) -> Result<core::ops::ControlFlow<()>, ()> {
        self.0 += 1;
        Ok(core::ops::ControlFlow::Continue(()))
    }
}

fn main() {
    let mem = OffsetWindow { offset: 0 };
    let root = PhysAddr(&ROOT as *const Table as u64);
    // SAFETY: ROOT is an all-invalid table, reachable through the identity window, never written.
    let kernel: Mm<Kernel> = unsafe { Mm::new_kernel(root) };
    // SAFETY: as above (the walk only reads).
    let user: Mm<User> = unsafe { Mm::new_user(root, 1) };

    let mut h = Holes(0);
    let r = kernel.mmap_read();
    walk_page_range_novma(&r, &mem, VirtAddr(0xFFFF_0000_0000_0000), VirtAddr(0), &mut h).unwrap();
    drop(r);
    let w = kernel.mmap_write();
    walk_page_range_novma(&w, &mem, VirtAddr(0xFFFF_0000_0000_0000), VirtAddr(0), &mut h).unwrap();
    drop(w);
    let w = user.mmap_write();
    walk_page_range_novma(&w, &mem, VirtAddr(0), VirtAddr(1 << 48), &mut h).unwrap();
    assert_eq!(h.0, 3 * 512);
}
