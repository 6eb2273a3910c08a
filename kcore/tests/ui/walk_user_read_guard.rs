// A user mm without VMAs must be walked with mmap_lock held for write: munmap() downgrades to
// read before freeing page tables, so a read guard does not keep them alive.
use kcore::addr::{PhysAddr, VirtAddr};
use kcore::mm::{Mm, User};
use kcore::pagewalk::{walk_page_range_novma, Interests, PageWalkOps};
use kcore::phys::OffsetWindow;

struct Nop;

impl PageWalkOps for Nop {
    type Output = ();
    type Error = ();
    const INTERESTS: Interests = Interests::ALL;
}

fn main() {
    // SAFETY: never walked (this does not compile).
    let user: Mm<User> = unsafe { Mm::new_user(PhysAddr(0x1000), 1) };
    let r = user.mmap_read();
    let _ = walk_page_range_novma(
        &r,
        &OffsetWindow { offset: 0 },
        VirtAddr(0),
        VirtAddr(0x1000),
        &mut Nop,
    );
}
