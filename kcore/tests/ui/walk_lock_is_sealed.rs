// Code outside kcore cannot make its own type a WalkLock (and so walk without mmap_lock).
use kcore::addr::PhysAddr;
use kcore::mm::WalkLock;
use kcore::pgtable::VaHalf;

struct NoLock;

impl WalkLock for NoLock {
    fn walk_root(&self) -> PhysAddr {
        PhysAddr(0)
    }
    fn walk_half(&self) -> VaHalf {
        VaHalf::Upper
    }
}

fn main() {}
