// A translation walks the tables: for a user mm, the read guard does not keep them alive
// (munmap() downgrades to read before freeing them), so translate needs the write guard.
use kcore::addr::{PhysAddr, VirtAddr};
use kcore::mm::{Mm, User};
use kcore::phys::OffsetWindow;

fn main() {
    // SAFETY: never translated (this does not compile).
    let user: Mm<User> = unsafe { Mm::new_user(PhysAddr(0x1000), 1) };
    let r = user.mmap_read();
    let _ = r.translate(&OffsetWindow { offset: 0 }, VirtAddr(0));
}
