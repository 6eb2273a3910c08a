//! Device trees whose `/aliases` node would make a path lookup recurse: an alias named like the
//! absolute path looked up (`"/chosen" = "/chosen"` with no `/chosen` node), a pair pointing at
//! each other, and an alias that would redirect `/chosen` to another node. Node paths that start
//! with `/` are never aliases (Linux's `of_find_node_opts_by_path`, libfdt's `fdt_path_offset`),
//! so each parses in bounded stack and reads only the real node.
//!
//! Before the fix the lookup recursed inside the `fdt` crate until the stack overflowed, which
//! aborts the whole process; so each blob is parsed in a child process (this test binary
//! re-run on one test), on a thread with a small stack, and the parent checks how it ended.

use kcore::bootinfo::{BootInfo, FDT_MAGIC};
use std::process::Command;

/// The 116-byte blob from issue 10: `/ { aliases { "/chosen" = "/chosen"; }; }`.
const ISSUE_BLOB: &str = "d00dfeed00000074000000380000006c00000028000000110000001000000000000000080000003400000000000000000000000000000000000000010000000000000001616c6961736573000000000300000008000000002f63686f73656e000000000200000002000000092f63686f73656e00";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// A tree `/ { aliases { name = value; ... }; <extra nodes> }` (FDT v17), with one memory node.
fn tree(aliases: &[(&str, &str)], chosen: Option<&str>, evil: Option<&str>) -> Vec<u8> {
    let mut st: Vec<u8> = Vec::new();
    let mut strings: Vec<u8> = Vec::new();
    let w = |st: &mut Vec<u8>, v: u32| st.extend_from_slice(&v.to_be_bytes());
    let pad = |st: &mut Vec<u8>| {
        while !st.len().is_multiple_of(4) {
            st.push(0)
        }
    };
    let begin = |st: &mut Vec<u8>, name: &str| {
        w(st, 1);
        st.extend_from_slice(name.as_bytes());
        st.push(0);
        pad(st);
    };
    let mut prop = |st: &mut Vec<u8>, name: &str, val: &[u8]| {
        let off = strings.len() as u32;
        strings.extend_from_slice(name.as_bytes());
        strings.push(0);
        w(st, 3);
        w(st, val.len() as u32);
        w(st, off);
        st.extend_from_slice(val);
        pad(st);
    };
    let cstr = |s: &str| {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    };
    begin(&mut st, "");
    begin(&mut st, "aliases");
    for (k, v) in aliases {
        prop(&mut st, k, &cstr(v));
    }
    w(&mut st, 2);
    if let Some(args) = chosen {
        begin(&mut st, "chosen");
        prop(&mut st, "bootargs", &cstr(args));
        w(&mut st, 2);
    }
    if let Some(args) = evil {
        begin(&mut st, "evil");
        prop(&mut st, "bootargs", &cstr(args));
        w(&mut st, 2);
    }
    begin(&mut st, "memory@0");
    prop(&mut st, "device_type", &cstr("memory"));
    prop(&mut st, "reg", &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]);
    w(&mut st, 2);
    w(&mut st, 2);
    w(&mut st, 9);
    let off_struct = 40 + 16;
    let off_strings = off_struct + st.len();
    let total = off_strings + strings.len();
    let mut out = Vec::new();
    for v in [
        FDT_MAGIC,
        total as u32,
        off_struct as u32,
        off_strings as u32,
        40,
        17,
        16,
        0,
        strings.len() as u32,
        st.len() as u32,
    ] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&st);
    out.extend_from_slice(&strings);
    out
}

/// The blobs, by name (the child process looks its blob up by this name).
fn blobs() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("issue_116_bytes", unhex(ISSUE_BLOB)),
        ("chosen_self_alias", tree(&[("/chosen", "/chosen")], None, None)),
        (
            "reserved_memory_self_alias",
            tree(&[("/reserved-memory", "/reserved-memory")], Some("ok"), None),
        ),
        (
            "alias_pair",
            tree(&[("/chosen", "/reserved-memory"), ("/reserved-memory", "/chosen")], None, None),
        ),
        ("relative_pair", tree(&[("a", "b"), ("b", "a"), ("/chosen", "a")], None, None)),
        ("chosen_to_evil", tree(&[("/chosen", "/evil")], None, Some("hugepages=9999 crash=panic"))),
        // The blob the on-target run `dtb-alias-loop` boots (cargo xtask test).
        (
            "on_target_file",
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/dtb/alias-loop-bad-memreserve.dtb"
            ))
            .unwrap(),
        ),
        (
            "chosen_to_evil_with_chosen",
            tree(&[("/chosen", "/evil")], Some("ptdump"), Some("crash=panic")),
        ),
    ]
}

const CHILD_ENV: &str = "KCORE_FDT_ALIAS_CHILD";

/// In the child: parse the named blob on a 256 KiB stack and print what was read.
#[test]
fn child_parse() {
    let Ok(name) = std::env::var(CHILD_ENV) else {
        return;
    };
    let blob = blobs().into_iter().find(|(n, _)| *n == name).expect("known blob").1;
    let out = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || match BootInfo::parse(&blob) {
            Ok(i) => format!("OK cmdline={:?} reserved={}", i.cmdline, i.reserved.len()),
            Err(e) => format!("ERR {e:?}"),
        })
        .unwrap()
        .join()
        .unwrap();
    println!("RESULT {out}");
}

/// Runs `child_parse` for `name` in a child process; returns its `RESULT` line, or panics with
/// how the child ended.
fn parse_in_child(name: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_parse", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name}: the parse did not return ({}): {}",
        out.status,
        stderr.lines().find(|l| l.contains("overflow")).unwrap_or(&stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("{name}: no result in {stdout}"))
        .to_string()
}

#[test]
fn the_issue_blob_is_116_bytes_and_parses() {
    assert_eq!(unhex(ISSUE_BLOB).len(), 116);
    // No memory node: parsed, memory unusable, no command line.
    assert_eq!(parse_in_child("issue_116_bytes"), "OK cmdline=\"\" reserved=0");
}

#[test]
fn self_aliases_do_not_recurse() {
    assert_eq!(parse_in_child("chosen_self_alias"), "OK cmdline=\"\" reserved=0");
    assert_eq!(parse_in_child("reserved_memory_self_alias"), "OK cmdline=\"ok\" reserved=0");
}

#[test]
fn alias_pairs_do_not_recurse() {
    assert_eq!(parse_in_child("alias_pair"), "OK cmdline=\"\" reserved=0");
    assert_eq!(parse_in_child("relative_pair"), "OK cmdline=\"\" reserved=0");
}

#[test]
fn an_alias_never_redirects_an_absolute_path() {
    // No /chosen: no command line, not /evil's.
    assert_eq!(parse_in_child("chosen_to_evil"), "OK cmdline=\"\" reserved=0");
    // The real /chosen wins.
    assert_eq!(parse_in_child("chosen_to_evil_with_chosen"), "OK cmdline=\"ptdump\" reserved=0");
}

#[test]
fn the_on_target_blob_parses() {
    // /reserved-memory aliased to itself (no such node), /chosen aliased to /evil, a and b
    // aliased to each other; /memreserve/ with a zero-size, a wrapping and a top-byte entry:
    // only the wrapping one is kept, clipped.
    assert_eq!(parse_in_child("on_target_file"), "OK cmdline=\"\" reserved=1");
}
