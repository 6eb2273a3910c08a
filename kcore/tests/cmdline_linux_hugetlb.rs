//! The `hugepagesz=` / `hugepages=` / `default_hugepagesz=` state machine against Linux's
//! results (mm/hugetlb.c: `hugepages_setup`, `hugepagesz_setup`, `default_hugepagesz_setup`,
//! and the part of `hugetlb_init` that settles the default hstate), on arm64 with 4 KiB pages.
//!
//! Each row's expected counts were worked out by stepping the Linux functions by hand (the notes
//! say which rule decides). Only sizes both sides treat alike are used: 2M and 1G are valid
//! everywhere, 4M and 512M are invalid on arm64 with 4 KiB pages (arm64 also accepts 64K and 32M,
//! contiguous-bit sizes this project does not support; with those Linux creates an extra hstate,
//! which does not change the 2M and 1G counts).

use kcore::cmdline::{self, MalformedReason, Warning};
use kcore::hugetlb::HugePageSize::{self, Size1G, Size2M};

/// (command line, 2M pages, 1G pages, default size, why)
const LINUX: &[(&str, u64, u64, HugePageSize, &str)] = &[
    // The two lines of issue 10: hugepages=0 is "not given" (default_hstate_max_huge_pages == 0).
    ("hugepages=0 hugepagesz=2M hugepages=64", 64, 0, Size2M, "0 does not override"),
    ("hugepages=0 default_hugepagesz=1G hugepagesz=1G hugepages=2", 0, 2, Size1G, "0 not copied"),
    ("hugepages=8", 8, 0, Size2M, "implicit count, default hstate"),
    ("hugepages=2 default_hugepagesz=1G", 0, 2, Size1G, "copied at default_hugepagesz"),
    ("default_hugepagesz=1G hugepages=3", 0, 3, Size1G, "parsed_hstate = new 1G"),
    (
        "default_hugepagesz=1G hugepagesz=1G hugepages=4 hugepagesz=2M hugepages=5",
        5,
        4,
        Size1G,
        "default re-named before its count",
    ),
    (
        "hugepages=7 hugepagesz=2M hugepages=9",
        7,
        0,
        Size2M,
        "implicit overrides explicit in hugetlb_init",
    ),
    ("hugepages=7 hugepagesz=1G hugepages=1", 7, 1, Size2M, "implicit goes to 2M"),
    ("hugepagesz=2M hugepages=64 hugepagesz=1G hugepages=1", 64, 1, Size2M, "pairs"),
    (
        "hugepagesz=4M hugepages=4 hugepagesz=2M hugepages=2",
        2,
        0,
        Size2M,
        "invalid size: next hugepages ignored",
    ),
    (
        "hugepagesz=4M hugepages=4 hugepages=5",
        5,
        0,
        Size2M,
        "ignored hugepages resets parsed_valid; no hstate yet",
    ),
    ("hugepagesz=512M hugepages=1", 0, 0, Size2M, "512M invalid with 4K pages"),
    ("hugepagesz=2M hugepages=1 hugepages=2", 1, 0, Size2M, "twice without hugepagesz"),
    ("hugepages=1 hugepages=2", 1, 0, Size2M, "twice, both default"),
    ("hugepages=0 hugepages=5", 0, 0, Size2M, "a 0 still sets last_mhp"),
    (
        "hugepagesz=2M hugepages=4 hugepagesz=1G hugepages=1 hugepagesz=2M hugepages=8",
        4,
        1,
        Size2M,
        "hugepagesz twice",
    ),
    (
        "default_hugepagesz=2M hugepages=4 hugepagesz=2M hugepages=8",
        4,
        0,
        Size2M,
        "default's count already given",
    ),
    (
        "default_hugepagesz=2M hugepages=0 hugepagesz=2M hugepages=8",
        0,
        0,
        Size2M,
        "same mhp as last: twice",
    ),
    (
        "hugepagesz=1G hugepages=1 hugepagesz=2M default_hugepagesz=1G hugepages=7",
        7,
        1,
        Size1G,
        "existing hstate: parsed_hstate kept",
    ),
    (
        "hugepagesz=1G hugepages=2 default_hugepagesz=1G hugepages=5",
        0,
        2,
        Size1G,
        "parsed_hstate kept: twice",
    ),
    (
        "hugepages=3 hugepagesz=1G hugepages=2 default_hugepagesz=1G",
        0,
        3,
        Size1G,
        "implicit copied over explicit",
    ),
    (
        "default_hugepagesz=1G default_hugepagesz=2M hugepages=4",
        0,
        0,
        Size1G,
        "default twice invalidates",
    ),
    ("default_hugepagesz=4M hugepages=4", 0, 0, Size2M, "invalid default"),
    (
        "hugepages=5 default_hugepagesz=2M hugepagesz=1G hugepages=1",
        5,
        1,
        Size2M,
        "copied, then a new size",
    ),
    ("hugepagesz=1G default_hugepagesz=1G hugepages=2", 0, 2, Size1G, "parsed_hstate is 1G"),
    ("hugepagesz=1G hugepages=0 hugepages=3", 0, 0, Size2M, "twice after 0"),
    ("hugepagesz hugepages=3", 3, 0, Size2M, "no '=': not a hugepagesz= option"),
    ("hugepagesz=2M hugepages=x hugepages=4", 4, 0, Size2M, "invalid count leaves last_mhp"),
    (
        "hugepagesz=1G hugepages=2 hugepagesz=2M hugepages=3 hugepages=9 hugepages=1",
        3,
        2,
        Size2M,
        "twice, twice",
    ),
    (
        "hugepages=4 default_hugepagesz=2M hugepagesz=2M hugepages=6",
        4,
        0,
        Size2M,
        "count copied, so hugepagesz twice",
    ),
    (
        "hugepagesz=2M default_hugepagesz=1G hugepagesz=1G hugepages=3",
        0,
        3,
        Size1G,
        "re-naming the default",
    ),
    (
        "hugepagesz=2M hugepages=0 hugepagesz=1G hugepages=0 hugepages=1",
        0,
        0,
        Size2M,
        "0s are counts",
    ),
    ("hugepagesz=2M hugepagesz=1G hugepages=1", 0, 1, Size2M, "last hugepagesz wins"),
    ("hugepagesz=2M hugepagesz=2M hugepages=1", 0, 0, Size2M, "second hugepagesz invalid"),
    (
        "hugepagesz=1G hugepages=1 hugepages=0 default_hugepagesz=2M hugepages=3",
        3,
        1,
        Size2M,
        "default adds 2M: new parsed_hstate",
    ),
];

#[test]
fn matches_linux() {
    let mut bad = Vec::new();
    for &(line, n2m, n1g, default, why) in LINUX {
        let c = cmdline::parse(line);
        let got = (c.hugepages(Size2M), c.hugepages(Size1G), c.default_hugepage_size());
        if got != (n2m, n1g, default) {
            bad.push(format!("{line:?} ({why}): got {got:?}, Linux {:?}", (n2m, n1g, default)));
        }
        // Only sizes with pages are requested.
        if c.hugepage_requests().iter().any(|r| r.count == 0) {
            bad.push(format!("{line:?}: a request for 0 pages: {:?}", c.hugepage_requests()));
        }
    }
    assert!(bad.is_empty(), "differs from Linux:\n{}", bad.join("\n"));
}

#[test]
fn the_issue_lines_warn_nothing() {
    for line in [
        "hugepages=0 hugepagesz=2M hugepages=64",
        "hugepages=0 default_hugepagesz=1G hugepagesz=1G hugepages=2",
    ] {
        assert_eq!(cmdline::parse(line).warnings(), &[], "{line}");
    }
}

#[test]
fn overrides_are_warned_where_linux_overrides() {
    // hugetlb_init: "Ignoring hugepages=9 associated with 2 MiB page size".
    let c = cmdline::parse("hugepages=7 hugepagesz=2M hugepages=9");
    assert_eq!(
        c.warnings(),
        &[Warning::Malformed {
            option: "hugepages=9",
            reason: MalformedReason::OverriddenByDefault
        }]
    );
    // default_hugepagesz_setup overrides silently in Linux; we say so.
    let c = cmdline::parse("hugepages=3 hugepagesz=1G hugepages=2 default_hugepagesz=1G");
    assert_eq!(
        c.warnings(),
        &[Warning::Malformed {
            option: "hugepages=2",
            reason: MalformedReason::OverriddenByDefault
        }]
    );
}

#[test]
fn every_ignored_option_is_warned() {
    // Each hugetlb option that changes nothing in Linux gets a warning here.
    for (line, n) in [
        ("hugepages=0 hugepages=5", 1),
        ("default_hugepagesz=2M hugepages=0 hugepagesz=2M hugepages=8", 1),
        ("hugepagesz=4M hugepages=4 hugepages=5", 2),
        ("default_hugepagesz=1G default_hugepagesz=2M hugepages=4", 2),
        ("hugepagesz hugepages=3", 1),
    ] {
        assert_eq!(cmdline::parse(line).warnings().len(), n, "{line}");
    }
}
