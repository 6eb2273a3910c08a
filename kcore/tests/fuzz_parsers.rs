//! Fuzzing the boot-input parsers: the command line, the device tree (mutations of the real Pi 4
//! DTB fixture) and ATAG lists. Every input must give `Ok` or a typed error: no panic, no hang,
//! no unbounded recursion, and whatever is returned must be safe for the code that trusts it.
//!
//! Each target runs a batch of cases generated from a seed: case `i` of seed `s` is always the
//! same input, so a failure is reproduced from `(target, seed, i)` alone. The batch runs on a
//! thread with a 256 KiB stack, so recursion that grows with the input aborts instead of
//! passing on the host's large stacks. In `cargo test` (and so `cargo xtask test`) each target
//! runs a bounded batch; `cargo xtask fuzz` runs this binary in child processes, batch after
//! batch, with these environment variables:
//!
//! - `KCORE_FUZZ_CASES`: cases per batch (default: [`DEFAULT_CASES`]);
//! - `KCORE_FUZZ_SEED`: the batch's seed (default: a fixed one);
//! - `KCORE_FUZZ_TRACE=1`: print `FUZZ-CASE <target> <seed> <i>` to stderr before each case, so
//!   the parent knows which input a crashed or hung child was on;
//! - `KCORE_FUZZ_DUMP=<i>`: print case `i`'s input as `FUZZ-INPUT <hex>` and run nothing.
//!
//! A panic inside a case is caught and reported with the input in hex. Files in
//! `tests/fuzz_corpus/` (`<target>-<name>.hex`) are replayed first by each target.

use kcore::bootinfo::{
    compact_fdt_nops, memory_map, BootInfo, BootInfoError, MapLimits, ATAG_CMDLINE, ATAG_CORE,
    ATAG_MEM, FDT_MAGIC,
};
use kcore::cmdline::{self, MAX_HUGEPAGES, MAX_WARNINGS, MEMHP_GRANULE};
use kcore::layout::PAGE_OFFSET;
use kcore::memblock::MemRegion;
use std::cell::Cell;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    /// Parses that returned Ok in this batch (the rest gave typed errors): shows how deep the
    /// mutations reach.
    static PARSED: Cell<u64> = const { Cell::new(0) };
}

/// Cases per target in a plain `cargo test` run (a few seconds each at the dev profile).
const DEFAULT_CASES: u64 = 1500;
const DEFAULT_SEED: u64 = 0x5eed_0001;
/// Stack of the thread a batch runs on.
const FUZZ_STACK: usize = 256 << 10;

const FIXTURE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/bcm2711-rpi-4-b.dtb");
const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz_corpus");

/// 44-bit PA, the kernel at 0x80000, the QEMU board table.
const LIM: MapLimits = MapLimits::bcm2711(4, MemRegion::new(0x8_0000, 0x8_0000));
const BOARD: [MemRegion; 2] =
    [MemRegion::new(0, 0x3c00_0000), MemRegion::new(0x4000_0000, 0x4000_0000)];

/// SplitMix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn for_case(seed: u64, i: u64) -> Self {
        let mut r = Rng(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    /// An interesting 32-bit value.
    fn edge32(&mut self, near: &[u32]) -> u32 {
        match self.below(6) {
            0 => 0,
            1 => u32::MAX,
            2 => 1 << self.below(32),
            3 => near[self.below(near.len())].wrapping_add(self.below(9) as u32).wrapping_sub(4),
            4 => 0xFC00_0000,
            _ => self.next() as u32,
        }
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

// ---------------------------------------------------------------------------------------------
// Device trees

/// The big-endian word at `o`, 0 past the end (the mutated blob may be shorter).
fn be32(d: &[u8], o: usize) -> u32 {
    d.get(o..o + 4).map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()))
}

fn set_be32(d: &mut [u8], o: usize, v: u32) {
    if o + 4 <= d.len() {
        d[o..o + 4].copy_from_slice(&v.to_be_bytes());
    }
}

/// A token of the fixture's structure block: its offset and length in bytes.
#[derive(Clone, Copy)]
struct Token {
    off: usize,
    len: usize,
    kind: u32,
}

fn tokens(d: &[u8]) -> Vec<Token> {
    let (off_struct, size_struct) = (be32(d, 8) as usize, be32(d, 36) as usize);
    let mut out = Vec::new();
    let mut pos = off_struct;
    while pos + 4 <= off_struct + size_struct {
        let kind = be32(d, pos);
        let len = match kind {
            1 => {
                let nul = d[pos + 4..].iter().position(|&b| b == 0).unwrap();
                4 + ((nul + 1 + 3) & !3)
            }
            3 => 12 + ((be32(d, pos + 4) as usize + 3) & !3),
            _ => 4,
        };
        out.push(Token { off: pos, len, kind });
        if kind == 9 {
            break;
        }
        pos += len;
    }
    out
}

/// Offset of the value of `/memory@0/reg` in the fixture.
fn memory_reg(d: &[u8], toks: &[Token]) -> usize {
    let off_strings = be32(d, 12) as usize;
    let mut depth = 0;
    let mut in_memory = false;
    for t in toks {
        match t.kind {
            1 => {
                depth += 1;
                let name = &d[t.off + 4..t.off + 4 + 8];
                in_memory = depth == 2 && name == b"memory@0";
            }
            2 => depth -= 1,
            3 if in_memory => {
                let n = off_strings + be32(d, t.off + 8) as usize;
                if d[n..].starts_with(b"reg\0") {
                    return t.off + 12;
                }
            }
            _ => {}
        }
    }
    panic!("fixture has no /memory@0/reg");
}

/// Inserts `bytes` at `at` inside the structure block and, usually, fixes the header sizes
/// and offsets so the blob stays self-consistent (otherwise the header lies).
fn splice(d: &mut Vec<u8>, at: usize, remove: usize, bytes: &[u8], fix: bool) {
    let delta = bytes.len() as i64 - remove as i64;
    d.splice(at..at + remove, bytes.iter().copied());
    if fix {
        let adj = |v: u32| (v as i64 + delta).max(0) as u32;
        let (total, strings, size_struct) = (be32(d, 4), be32(d, 12), be32(d, 36));
        set_be32(d, 4, adj(total));
        if strings as usize >= at {
            set_be32(d, 12, adj(strings));
        }
        set_be32(d, 36, adj(size_struct));
    }
}

fn dtb_case(fixture: &[u8], toks: &[Token], reg: usize, rng: &mut Rng) -> Vec<u8> {
    let mut d = fixture.to_vec();
    // Usually give the memory node a size first, so the memory path is reached.
    if rng.chance(70) {
        set_be32(&mut d, reg + 8, 0x3c00_0000);
    }
    let fields = [4usize, 8, 12, 16, 20, 24, 28, 32, 36];
    for _ in 0..1 + rng.below(4) {
        let len = d.len();
        match rng.below(11) {
            // Bit flip.
            0 if len > 0 => {
                let p = rng.below(len);
                d[p] ^= 1 << rng.below(8);
            }
            // Random byte.
            1 if len > 0 => {
                let p = rng.below(len);
                d[p] = rng.next() as u8;
            }
            // A header field.
            2 => {
                let f = *rng.pick(&fields);
                let near = [len as u32, be32(&d, f)];
                let v = rng.edge32(&near);
                set_be32(&mut d, f, v);
            }
            // NOPs at a token boundary (where the fdt crate cannot skip them, too).
            3 => {
                let t = rng.pick(toks);
                let n = 1 + rng.below(3);
                let nops: Vec<u8> = (0..n).flat_map(|_| 4u32.to_be_bytes()).collect();
                let fix = rng.chance(80);
                let at = t.off.min(d.len());
                splice(&mut d, at, 0, &nops, fix);
            }
            // Delete a token.
            4 => {
                let t = *rng.pick(toks);
                if t.off + t.len <= d.len() {
                    let fix = rng.chance(80);
                    splice(&mut d, t.off, t.len, &[], fix);
                }
            }
            // Duplicate a token.
            5 => {
                let t = *rng.pick(toks);
                if t.off + t.len <= d.len() {
                    let copy = d[t.off..t.off + t.len].to_vec();
                    let fix = rng.chance(80);
                    splice(&mut d, t.off, 0, &copy, fix);
                }
            }
            // A property's length.
            6 => {
                let props: Vec<&Token> = toks.iter().filter(|t| t.kind == 3).collect();
                let t = props[rng.below(props.len())];
                let near = [be32(&d, t.off + 4), 4, 8, 12, 16];
                let v = rng.edge32(&near);
                set_be32(&mut d, t.off + 4, v);
            }
            // A property's name offset.
            7 => {
                let props: Vec<&Token> = toks.iter().filter(|t| t.kind == 3).collect();
                let t = props[rng.below(props.len())];
                let near = [be32(&d, 32), be32(&d, t.off + 8)];
                let v = rng.edge32(&near);
                set_be32(&mut d, t.off + 8, v);
            }
            // Memory reg values: base and size cells.
            8 => {
                let cell = rng.below(3);
                let near = [0x3c00_0000, 0x1000, 0xFFF, 0x4000_0000, 0xFC00_0000];
                let v = rng.edge32(&near);
                set_be32(&mut d, reg + 4 * cell, v);
            }
            // /memreserve/ entry.
            9 => {
                let rsv = be32(&d, 16) as usize;
                let w = rng.below(4);
                let near = [0, 0x1000, u32::MAX];
                let v = rng.edge32(&near);
                set_be32(&mut d, rsv + 4 * w, v);
            }
            // Truncate (and what an empty blob falls to).
            _ => {
                let n = rng.below(len + 1);
                d.truncate(n);
            }
        }
    }
    d
}

/// Everything a successful parse promises to its users.
fn check_boot_info(d: &[u8], info: &BootInfo<'_>) {
    PARSED.with(|p| p.set(p.get() + 1));
    assert!(info.blob_len <= d.len(), "blob_len {} > {}", info.blob_len, d.len());
    if let Ok(banks) = info.banks() {
        assert!(banks.iter().all(|b| b.size > 0 && b.base.0.checked_add(b.size).is_some()));
        for w in banks.windows(2) {
            assert!(w[0].end() <= w[1].base.0, "banks overlap or unsorted: {banks:?}");
        }
    }
    for r in info.reserved.iter() {
        assert!(r.size > 0, "zero-size reservation kept: {r:?}");
        assert!(r.base.0.checked_add(r.size).is_some(), "wrapping reservation kept: {r:?}");
    }
    // The command line borrows from the blob and is whole text.
    let range = d.as_ptr_range();
    let c = info.cmdline.as_bytes().as_ptr_range();
    assert!(info.cmdline.is_empty() || (c.start >= range.start && c.end <= range.end));
    assert!(!info.cmdline.chars().any(|c| c.is_control() && !c.is_ascii_whitespace()));
    if let Some(t) = info.cmdline_truncated {
        assert!(t.kept <= t.damaged_at && t.damaged_at <= t.declared);
        assert_eq!(t.kept, info.cmdline.len());
    }
    check_cmdline(info.cmdline);
    // The memory map built from it is safe, whatever the blob said.
    for mailbox in [None, Some(&BOARD[..1])] {
        let m = memory_map(&BOARD, Ok(info), mailbox, false, &LIM);
        check_map(&m);
    }
}

fn check_map(m: &kcore::bootinfo::MemoryMap) {
    assert!(!m.regions.is_empty(), "empty memory map: {m:?}");
    assert!(m.regions.iter().any(|r| r.covers(&LIM.kernel)), "no kernel in {m:?}");
    for r in m.regions.iter() {
        assert!(r.size > 0 && r.base.0 % 4096 == 0 && r.size % 4096 == 0, "{r:?}");
        assert!(r.end() <= LIM.ram_limit() && PAGE_OFFSET.checked_add(r.end()).is_some());
        assert!(!r.overlaps(&LIM.mmio), "{r:?} overlaps MMIO");
    }
}

fn check_dtb(input: &[u8]) {
    let parsed = BootInfo::parse(input);
    match &parsed {
        Ok(info) => check_boot_info(input, info),
        Err(e) => check_error(e),
    }
    // Compaction is a parser too: all or nothing, and it never changes a parseable blob's meaning.
    let mut copy = input.to_vec();
    match compact_fdt_nops(&mut copy) {
        Ok(_) => {
            if let Ok(before) = &parsed {
                let after = BootInfo::parse(&copy).expect("compaction broke a parseable blob");
                assert_eq!(after.banks(), before.banks());
                assert_eq!(after.cmdline, before.cmdline);
                assert_eq!(after.reserved, before.reserved);
            } else if let Ok(info) = BootInfo::parse(&copy) {
                check_boot_info(&copy, &info);
            }
        }
        Err(e) => {
            check_error(&e);
            assert_eq!(copy, input, "a failed compaction changed the blob");
        }
    }
}

/// A typed error carries sane data (and an unusable blob still gives a safe map).
fn check_error(e: &BootInfoError) {
    let _ = format!("{e:?}");
    let m = memory_map(&BOARD, Err(e), None, false, &LIM);
    check_map(&m);
}

// ---------------------------------------------------------------------------------------------
// ATAGs

fn atag_case(rng: &mut Rng) -> Vec<u8> {
    let mut words: Vec<u32> = vec![5, ATAG_CORE, 0, 4096, 0];
    let mut cmd_bytes: Option<usize> = None;
    for _ in 0..rng.below(6) {
        match rng.below(4) {
            0 | 1 => {
                let near = [0x3c00_0000, 0x1000, 0x4000_0000];
                let size = rng.edge32(&near);
                let start = rng.edge32(&near);
                words.extend([4, ATAG_MEM, size, start]);
            }
            2 => {
                let text = cmdline_text(rng);
                let mut b = text.into_bytes();
                b.push(0);
                while !b.len().is_multiple_of(4) {
                    b.push(0);
                }
                words.extend([2 + b.len() as u32 / 4, ATAG_CMDLINE]);
                cmd_bytes = Some(words.len() * 4);
                words.extend(b.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())));
            }
            _ => {
                let n = rng.below(4) as u32;
                words.extend([2 + n, 0x5441_0000 + rng.below(12) as u32]);
                words.extend((0..n).map(|_| rng.next() as u32));
            }
        }
    }
    words.extend([0, 0]);
    let mut d: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    // Damage: QEMU's code over the text, bit flips, bad sizes, truncation.
    if let (Some(at), true) = (cmd_bytes, rng.chance(30)) {
        let p = at + rng.below(64);
        for i in 0..8 {
            if p + i < d.len() {
                d[p + i] = rng.next() as u8;
            }
        }
    }
    for _ in 0..rng.below(3) {
        let len = d.len();
        match rng.below(3) {
            0 if len > 0 => {
                let p = rng.below(len);
                d[p] ^= 1 << rng.below(8);
            }
            1 if len >= 4 => {
                let w = 4 * rng.below(len / 4);
                let v = rng.edge32(&[1, 2, 4, 0x100]);
                d[w..w + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ => d.truncate(rng.below(len + 1)),
        }
    }
    d
}

fn check_atags(input: &[u8]) {
    match BootInfo::parse(input) {
        Ok(info) => check_boot_info(input, &info),
        Err(e) => check_error(&e),
    }
}

// ---------------------------------------------------------------------------------------------
// Command lines

const OPTIONS: &[&str] = &[
    "hugepagesz=2M",
    "hugepagesz=1G",
    "hugepagesz=4M",
    "hugepagesz=64K",
    "hugepagesz=",
    "hugepagesz",
    "hugepagesz=0x200000",
    "hugepagesz=2Q",
    "default_hugepagesz=2M",
    "default_hugepagesz=1G",
    "default_hugepagesz=zz",
    "hugepages=0",
    "hugepages=1",
    "hugepages=64",
    "hugepages=65536",
    "hugepages=65537",
    "hugepages=18446744073709551616",
    "hugepages=0x10",
    "hugepages=5x",
    "hugepages=0:5",
    "hugepages",
    "hugetlb_free_vmemmap=on",
    "hugetlb_free_vmemmap=maybe",
    "ptdump",
    "ptdump=off",
    "ktest",
    "ktest=buddy",
    "ktest=\"a b\"",
    "loglevel=7",
    "loglevel=9",
    "memhp_reserve=256M",
    "memhp_reserve=5G",
    "memhp_reserve=100M",
    "memhp_reserve=16777216T",
    "crash=maybe",
    "console=ttyAMA0,115200",
    "8250.nr_uarts=1",
    "root=/dev/mmcblk0p2",
    "--",
    "\"",
    "=",
    "==",
    "é=ü",
    "\t",
    "a.b",
    ".x",
];

fn cmdline_text(rng: &mut Rng) -> String {
    let mut s = String::new();
    for _ in 0..rng.below(24) {
        let opt = *rng.pick(OPTIONS);
        // Never crash= with a valid value: the parser is fine, but keep the lines harmless.
        s.push_str(opt);
        match rng.below(10) {
            0 => s.push('\t'),
            1 => s.push_str("  "),
            2 => {
                // A random character or byte-ish junk.
                let c = char::from_u32(rng.next() as u32 % 0x3000).unwrap_or('?');
                s.push(c);
                s.push(' ');
            }
            _ => s.push(' '),
        }
    }
    s
}

fn cmdline_case(rng: &mut Rng) -> Vec<u8> {
    let mut b = cmdline_text(rng).into_bytes();
    // Sometimes raw bytes (made UTF-8 by the check, lossily).
    for _ in 0..rng.below(3) {
        if !b.is_empty() && rng.chance(30) {
            let p = rng.below(b.len());
            b[p] = rng.next() as u8;
        }
    }
    b
}

fn check_cmdline(s: &str) {
    let c = cmdline::parse(s);
    assert!(c.warnings().len() <= MAX_WARNINGS);
    let reqs = c.hugepage_requests();
    assert!(reqs.len() <= 2);
    assert!(reqs.iter().all(|r| r.count > 0 && r.count <= MAX_HUGEPAGES), "{reqs:?}");
    if reqs.len() == 2 {
        assert_ne!(reqs[0].size, reqs[1].size);
    }
    if let Some(m) = c.memhp_reserve {
        assert!(m > 0 && m % MEMHP_GRANULE == 0);
    }
    assert!(c.loglevel.is_none_or(|l| l <= 8));
    // Whitespace between options does not matter.
    let spaced: String = s.split_ascii_whitespace().collect::<Vec<_>>().join("  ");
    if !s.contains('"') && !s.contains('\0') {
        assert_eq!(cmdline::parse(&spaced).hugepage_requests(), reqs, "{s:?}");
    }
    let _ = format!("{c:?}");
}

fn check_cmdline_bytes(input: &[u8]) {
    PARSED.with(|p| p.set(p.get() + 1));
    check_cmdline(&String::from_utf8_lossy(input));
}

// ---------------------------------------------------------------------------------------------
// The driver

struct Target {
    name: &'static str,
    generate: fn(&mut Rng, &Ctx) -> Vec<u8>,
    check: fn(&[u8]),
}

struct Ctx {
    fixture: Vec<u8>,
    toks: Vec<Token>,
    reg: usize,
}

fn gen_dtb(rng: &mut Rng, cx: &Ctx) -> Vec<u8> {
    dtb_case(&cx.fixture, &cx.toks, cx.reg, rng)
}
fn gen_atags(rng: &mut Rng, _: &Ctx) -> Vec<u8> {
    atag_case(rng)
}
fn gen_cmdline(rng: &mut Rng, _: &Ctx) -> Vec<u8> {
    cmdline_case(rng)
}

const DTB: Target = Target { name: "dtb", generate: gen_dtb, check: check_dtb };
const ATAGS: Target = Target { name: "atags", generate: gen_atags, check: check_atags };
const CMDLINE: Target =
    Target { name: "cmdline", generate: gen_cmdline, check: check_cmdline_bytes };

fn ctx() -> Ctx {
    let fixture = std::fs::read(FIXTURE).expect("read the Pi 4 DTB fixture");
    assert_eq!(be32(&fixture, 0), FDT_MAGIC);
    let toks = tokens(&fixture);
    let reg = memory_reg(&fixture, &toks);
    Ctx { fixture, toks, reg }
}

/// Runs one batch of `t` (after its corpus) on a small stack; panics naming the failing input.
fn run(t: &'static Target) {
    let seed = env_u64("KCORE_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let cases = env_u64("KCORE_FUZZ_CASES").unwrap_or(DEFAULT_CASES);
    let trace = std::env::var("KCORE_FUZZ_TRACE").is_ok_and(|v| v == "1");
    let dump = env_u64("KCORE_FUZZ_DUMP");
    let h = std::thread::Builder::new()
        .name(format!("fuzz-{}", t.name))
        .stack_size(FUZZ_STACK)
        .spawn(move || {
            let cx = ctx();
            if let Some(i) = dump {
                let input = (t.generate)(&mut Rng::for_case(seed, i), &cx);
                println!("FUZZ-INPUT {}", hex(&input));
                return (0, 0);
            }
            let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
            if let Ok(dir) = std::fs::read_dir(CORPUS) {
                let mut files: Vec<_> = dir.flatten().map(|e| e.path()).collect();
                files.sort();
                for f in files {
                    let name = f.file_name().unwrap().to_string_lossy().to_string();
                    if name.starts_with(&format!("{}-", t.name)) && name.ends_with(".hex") {
                        inputs.push((name, unhex(&std::fs::read_to_string(&f).unwrap())));
                    }
                }
            }
            let corpus = inputs.len();
            for (name, input) in inputs {
                if let Err(e) = catch_unwind(AssertUnwindSafe(|| (t.check)(&input))) {
                    panic!("{}: corpus file {name} fails: {}", t.name, panic_text(&e));
                }
            }
            for i in 0..cases {
                let input = (t.generate)(&mut Rng::for_case(seed, i), &cx);
                if trace {
                    eprintln!("FUZZ-CASE {} {:#x} {}", t.name, seed, i);
                    let _ = std::io::stderr().flush();
                }
                if let Err(e) = catch_unwind(AssertUnwindSafe(|| (t.check)(&input))) {
                    panic!(
                        "{} case {i} of seed {seed:#x} fails: {}\nFUZZ-INPUT {}",
                        t.name,
                        panic_text(&e),
                        hex(&input)
                    );
                }
            }
            (corpus as u64 + cases, PARSED.with(Cell::get))
        })
        .unwrap();
    let (n, ok) = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    eprintln!(
        "fuzz {}: {n} inputs (seed {seed:#x}), all Ok or typed errors; {} parse(s) returned Ok",
        t.name, ok
    );
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn fuzz_dtb() {
    run(&DTB);
}

#[test]
fn fuzz_atags() {
    run(&ATAGS);
}

#[test]
fn fuzz_cmdline() {
    run(&CMDLINE);
}

/// The checks can fail: a blob whose memory map would lack the kernel, a zero-size
/// reservation, and a malformed command-line count all trip them when fed past the fixes.
#[test]
fn the_checks_catch_what_they_claim() {
    // A board table without the kernel is the last resort, used as it is: check_map objects.
    let elsewhere = [MemRegion::new(0x4000_0000, 0x4000_0000)];
    let bad_map = memory_map(&elsewhere, Err(&BootInfoError::NullPointer), None, false, &LIM);
    assert!(catch_unwind(|| check_map(&bad_map)).is_err(), "a map without the kernel passes");
    let d = std::fs::read(FIXTURE).unwrap();
    let info = BootInfo {
        reserved: kcore::memblock::RegionList::from_slice(&[MemRegion::new(0x5000, 0)]).unwrap(),
        ..BootInfo::parse(&d).unwrap()
    };
    assert!(catch_unwind(AssertUnwindSafe(|| check_boot_info(&d, &info))).is_err());
}
