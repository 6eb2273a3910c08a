//! Compile-time rules of the page walker, checked with trybuild: a user address space cannot be
//! walked (nor translated) under `mmap_lock` held for read, and nothing outside `kcore` can declare a new
//! `WalkLock`.

#[test]
fn walk_lock_rules() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/walk_lock_ok.rs");
    t.compile_fail("tests/ui/walk_user_read_guard.rs");
    t.compile_fail("tests/ui/walk_lock_is_sealed.rs");
    // Issue 10 item 9: before the fix `MmapReadGuard<User>::translate` compiled (a safe walk
    // of a user mm under the read lock); this case then failed as "expected compile error".
    t.compile_fail("tests/ui/translate_user_read_guard.rs");
}
