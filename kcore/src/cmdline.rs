//! The kernel command line, typed, with Linux's option names.
//!
//! [`parse`] never fails: an option it does not know, or one whose value is malformed, becomes
//! a [`Warning`] and is otherwise ignored; everything else still takes effect. Strings borrow
//! from the input.
//!
//! | option | meaning |
//! |---|---|
//! | `hugepagesz=2M\|1G` | selects the size the next `hugepages=` applies to |
//! | `hugepages=N` | boot-time pool size for the last `hugepagesz=` (or, before any, the default size) |
//! | `default_hugepagesz=2M\|1G` | the default size (2 MiB if absent, as on arm64) |
//! | `hugetlb_free_vmemmap=on\|off` | HVO on or off (also `1/0/y/n`, as `kstrtobool`) |
//! | `ptdump` | dump the kernel page tables at boot |
//! | `ktest` / `ktest=FILTER` | run the in-kernel tests (all, or those matching `FILTER`) |
//! | `loglevel=N` | console log level, 0..=8 |
//! | `memhp_reserve=SIZE` | ours: see below |
//! | `bench` | ours: run the HVO benchmark (`cargo xtask bench`) after boot, print its figures and exit |
//! | `crash=panic\|fault\|udf` | ours: end the boot with a panic, an unexpected data abort or an undefined instruction, to show the reporting path |
//!
//! The `hugepages` rules follow `mm/hugetlb.c`: `hugepages=` right after an unsupported
//! `hugepagesz=` is ignored ("does not follow a valid hugepagesz"); `hugepagesz=` twice for one
//! size, `default_hugepagesz=` twice, or two `hugepages=` without a `hugepagesz=` between them
//! are ignored; a `hugepages=` before any `hugepagesz=` counts for the default size, even if
//! `default_hugepagesz=` comes later, and then overrides a count given for that size with
//! `hugepagesz=` (Linux warns "Using hugepages=N for number of default huge pages"). One
//! simplification: after `default_hugepagesz=X`, a `hugepages=` applies to X (Linux keeps the
//! previous size when X's hstate already existed).
//!
//! `memhp_reserve=SIZE` has no Linux equivalent: hold back SIZE bytes at the top of the first
//! RAM bank at boot (not given to the buddy allocator, no vmemmap) so they can be hot-added
//! later with memmap-on-memory, which in Linux would need real hot-pluggable memory
//! (`memory_hotplug.memmap_on_memory=1` plus an ACPI/virtio-mem device). It must be a multiple of
//! the 128 MiB section size; `0` means none.
//!
//! Options Linux or the Raspberry Pi firmware commonly put on the line and that mean nothing
//! here (`console=`, `root=`, `rootwait`, module parameters such as `8250.nr_uarts=1`, ...) are
//! accepted silently. Parsing stops at `--` (what follows is for init). Values may be quoted:
//! `ktest="a b"`.

use crate::hugetlb::{HugePageSize, HugepageRequest};

/// Largest accepted `hugepages=` count.
pub const MAX_HUGEPAGES: u64 = 1 << 16;
/// Capacity of the warning list (the last slot becomes [`Warning::TooMany`] on overflow).
pub const MAX_WARNINGS: usize = 8;
/// Largest accepted `loglevel=`.
pub const MAX_LOGLEVEL: u8 = 8;
/// `memhp_reserve=` granularity (the memory section, 128 MiB).
pub const MEMHP_GRANULE: u64 = 128 << 20;

/// Why an option's value was rejected.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MalformedReason {
    /// The option needs `=value`.
    MissingValue,
    /// Not a number (or it overflows).
    BadNumber,
    /// A size suffix other than K, M, G, T.
    UnknownSuffix,
    /// Not one of on/off/1/0/y/n.
    BadBool,
    /// A huge page size other than 2M or 1G.
    UnsupportedHugePageSize,
    /// `hugepages=` above [`MAX_HUGEPAGES`].
    CountTooLarge,
    /// `hugepages=` not preceded by a valid `hugepagesz=`.
    NoValidHugepagesz,
    /// Given twice where Linux ignores the second (`hugepagesz=`, `default_hugepagesz=`,
    /// `hugepages=` without an interleaving `hugepagesz=`).
    SpecifiedTwice,
    /// This explicit count was overridden by an earlier `hugepages=` for the default size.
    OverriddenByDefault,
    /// A value out of range (`loglevel`).
    OutOfRange,
    /// Not a multiple of [`MEMHP_GRANULE`] (`memhp_reserve`).
    NotSectionAligned,
    /// The option takes no value.
    UnexpectedValue,
    /// Not one of the values the option accepts.
    UnknownValue,
}

/// How `crash=` ends the boot (a demonstration of the fault and panic reports).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Crash {
    /// `crash=panic`: a Rust panic.
    Panic,
    /// `crash=fault`: a read of an unmapped kernel address (an unexpected data abort).
    Fault,
    /// `crash=udf`: an undefined instruction outside any probe.
    Udf,
}

/// A problem with one option; the option was ignored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Warning<'a> {
    /// An option nobody here knows.
    Unknown {
        /// The whole option text.
        option: &'a str,
    },
    /// A known option with a bad value.
    Malformed {
        /// The whole option text.
        option: &'a str,
        /// What is wrong.
        reason: MalformedReason,
    },
    /// More warnings than [`MAX_WARNINGS`]; the rest were dropped.
    TooMany,
}

/// The parsed command line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Cmdline<'a> {
    requests: [HugepageRequest; 2],
    nr_requests: usize,
    /// `default_hugepagesz=`.
    pub default_hugepagesz: Option<HugePageSize>,
    /// `hugetlb_free_vmemmap=`.
    pub hugetlb_free_vmemmap: Option<bool>,
    /// `ptdump`.
    pub ptdump: bool,
    /// `ktest` (`Some("")`) or `ktest=filter`.
    pub ktest: Option<&'a str>,
    /// `loglevel=`.
    pub loglevel: Option<u8>,
    /// `memhp_reserve=` in bytes (non-zero, multiple of 128 MiB).
    pub memhp_reserve: Option<u64>,
    /// `crash=`: fail deliberately at the end of boot.
    pub crash: Option<Crash>,
    /// `bench`: run the HVO benchmark after boot.
    pub bench: bool,
    warnings: [Warning<'a>; MAX_WARNINGS],
    nr_warnings: usize,
}

impl Default for Cmdline<'_> {
    fn default() -> Self {
        Cmdline {
            requests: [HugepageRequest { size: HugePageSize::Size2M, count: 0 }; 2],
            nr_requests: 0,
            default_hugepagesz: None,
            hugetlb_free_vmemmap: None,
            ptdump: false,
            ktest: None,
            loglevel: None,
            memhp_reserve: None,
            crash: None,
            bench: false,
            warnings: [Warning::TooMany; MAX_WARNINGS],
            nr_warnings: 0,
        }
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Cmdline<'_> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "Cmdline {{ hugepages: {=[?]}, default_hugepagesz: {}, hugetlb_free_vmemmap: {}, ptdump: {}, ktest: {}, loglevel: {}, memhp_reserve: {}, crash: {}, warnings: {=[?]} }}",
            self.hugepage_requests(),
            self.default_hugepagesz,
            self.hugetlb_free_vmemmap,
            self.ptdump,
            self.ktest,
            self.loglevel,
            self.memhp_reserve,
            self.crash,
            self.warnings()
        )
    }
}

impl<'a> Cmdline<'a> {
    /// The `hugepages=` requests, in command-line order, at most one per size.
    pub fn hugepage_requests(&self) -> &[HugepageRequest] {
        &self.requests[..self.nr_requests]
    }

    /// The requested count for `size` (0 if none).
    pub fn hugepages(&self, size: HugePageSize) -> u64 {
        self.hugepage_requests().iter().find(|r| r.size == size).map_or(0, |r| r.count)
    }

    /// The default huge page size: `default_hugepagesz=` or 2 MiB.
    pub fn default_hugepage_size(&self) -> HugePageSize {
        self.default_hugepagesz.unwrap_or(HugePageSize::Size2M)
    }

    /// Problems found, in order.
    pub fn warnings(&self) -> &[Warning<'a>] {
        &self.warnings[..self.nr_warnings]
    }

    fn warn(&mut self, w: Warning<'a>) {
        if self.nr_warnings < MAX_WARNINGS - 1 {
            self.warnings[self.nr_warnings] = w;
            self.nr_warnings += 1;
        } else if self.nr_warnings == MAX_WARNINGS - 1 {
            self.warnings[self.nr_warnings] = Warning::TooMany;
            self.nr_warnings += 1;
        }
    }

    fn malformed(&mut self, option: &'a str, reason: MalformedReason) {
        self.warn(Warning::Malformed { option, reason });
    }

    fn set_request(&mut self, size: HugePageSize, count: u64, front: bool) {
        if let Some(r) = self.requests[..self.nr_requests].iter_mut().find(|r| r.size == size) {
            r.count = count;
            return;
        }
        // At most one request per size, and there are two sizes: this always fits.
        let new = HugepageRequest { size, count };
        if front && self.nr_requests == 1 {
            self.requests[1] = self.requests[0];
            self.requests[0] = new;
        } else {
            self.requests[self.nr_requests] = new;
        }
        self.nr_requests += 1;
    }
}

/// Errors of [`parse_size`] and [`parse_u64`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum NumberError {
    /// Not a number, or overflow.
    BadNumber,
    /// Unknown size suffix.
    UnknownSuffix,
}

impl From<NumberError> for MalformedReason {
    fn from(e: NumberError) -> Self {
        match e {
            NumberError::BadNumber => MalformedReason::BadNumber,
            NumberError::UnknownSuffix => MalformedReason::UnknownSuffix,
        }
    }
}

/// Parses a decimal or `0x` hexadecimal `u64`.
pub fn parse_u64(s: &str) -> Result<u64, NumberError> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(NumberError::BadNumber);
    }
    u64::from_str_radix(digits, radix).map_err(|_| NumberError::BadNumber)
}

/// Linux's `memparse`: a number with an optional K, M, G or T suffix (either case, binary
/// multiples).
pub fn parse_size(s: &str) -> Result<u64, NumberError> {
    let split = s
        .char_indices()
        .find(|&(i, c)| {
            let hex = s.starts_with("0x") || s.starts_with("0X");
            !(c.is_ascii_digit() || (hex && (i == 1 || c.is_ascii_hexdigit())))
        })
        .map_or(s.len(), |(i, _)| i);
    let (num, suffix) = s.split_at(split);
    // In hex, "...G"/"...M" are not hex digits, but trailing B..F are: `0x1f` has no suffix.
    let n = parse_u64(num)?;
    let shift = match suffix {
        "" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        _ => return Err(NumberError::UnknownSuffix),
    };
    n.checked_mul(1 << shift).ok_or(NumberError::BadNumber)
}

/// Linux's `kstrtobool` (the forms the kernel documents).
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "y" | "Y" | "yes" | "on" | "On" | "ON" | "true" => Some(true),
        "0" | "n" | "N" | "no" | "off" | "Off" | "OFF" | "false" => Some(false),
        _ => None,
    }
}

/// Options accepted and ignored without a warning (Linux and Pi-firmware boilerplate).
const IGNORED: &[&str] = &[
    "console",
    "earlycon",
    "earlyprintk",
    "root",
    "rootfstype",
    "rootwait",
    "rootdelay",
    "rw",
    "ro",
    "init",
    "quiet",
    "debug",
    "splash",
    "nokaslr",
    "panic",
    "coherent_pool",
    "cma",
    "elevator",
    "fsck.repair",
    "plymouth.ignore-serial-consoles",
    "net.ifnames",
];

/// Splits on whitespace outside double quotes.
struct Tokens<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
        if s.is_empty() {
            self.rest = s;
            return None;
        }
        let mut in_quote = false;
        let mut end = s.len();
        for (i, c) in s.char_indices() {
            if c == '"' {
                in_quote = !in_quote;
            } else if !in_quote && (c.is_ascii_whitespace() || c == '\0') {
                end = i;
                break;
            }
        }
        self.rest = &s[end..];
        Some(&s[..end])
    }
}

fn unquote(v: &str) -> &str {
    let v = v.strip_prefix('"').unwrap_or(v);
    v.strip_suffix('"').unwrap_or(v)
}

/// Which hstate a `hugepages=` goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Before any `hugepagesz=`: the default size, resolved at the end.
    Default,
    Size(HugePageSize),
}

/// Parses a command line. Never fails; see the module documentation.
pub fn parse(s: &str) -> Cmdline<'_> {
    let mut c = Cmdline::default();
    // mm/hugetlb.c state.
    let mut parsed_valid_hugepagesz = true;
    let mut hstates = [false; 2];
    let mut any_hstate = false;
    let mut current = Target::Default;
    let mut last_target: Option<Target> = None;
    let mut implicit: Option<u64> = None;
    // The option text of each size's explicit request, for the override warning.
    let mut request_tok: [&str; 2] = ["", ""];

    for tok in (Tokens { rest: s }) {
        if tok == "--" {
            break;
        }
        let (key, value) = match tok.split_once('=') {
            Some((k, v)) => (k, Some(unquote(v))),
            None => (tok, None),
        };
        match key {
            "hugepagesz" | "default_hugepagesz" => {
                let is_default = key == "default_hugepagesz";
                parsed_valid_hugepagesz = false;
                if is_default && c.default_hugepagesz.is_some() {
                    c.malformed(tok, MalformedReason::SpecifiedTwice);
                    continue;
                }
                let Some(v) = value else {
                    c.malformed(tok, MalformedReason::MissingValue);
                    continue;
                };
                let size = match parse_size(v) {
                    Ok(b) => match HugePageSize::from_bytes(b) {
                        Some(s) => s,
                        None => {
                            c.malformed(tok, MalformedReason::UnsupportedHugePageSize);
                            continue;
                        }
                    },
                    Err(e) => {
                        c.malformed(tok, e.into());
                        continue;
                    }
                };
                if is_default {
                    c.default_hugepagesz = Some(size);
                } else if hstates[size.index()] {
                    // Allowed only for the default size before its count was given.
                    let ok = c.default_hugepagesz == Some(size)
                        && !c.hugepage_requests().iter().any(|r| r.size == size);
                    if !ok {
                        c.malformed(tok, MalformedReason::SpecifiedTwice);
                        continue;
                    }
                }
                hstates[size.index()] = true;
                any_hstate = true;
                current = Target::Size(size);
                parsed_valid_hugepagesz = true;
                if is_default {
                    if let Some(n) = implicit.take() {
                        c.set_request(size, n, true);
                    }
                }
            }
            "hugepages" => {
                if !parsed_valid_hugepagesz {
                    c.malformed(tok, MalformedReason::NoValidHugepagesz);
                    parsed_valid_hugepagesz = true;
                    continue;
                }
                let target = if any_hstate { current } else { Target::Default };
                if last_target == Some(target) {
                    c.malformed(tok, MalformedReason::SpecifiedTwice);
                    continue;
                }
                let Some(v) = value else {
                    c.malformed(tok, MalformedReason::MissingValue);
                    continue;
                };
                let n = match parse_u64(v) {
                    Ok(n) if n > MAX_HUGEPAGES => {
                        c.malformed(tok, MalformedReason::CountTooLarge);
                        continue;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        c.malformed(tok, e.into());
                        continue;
                    }
                };
                match target {
                    Target::Default => implicit = Some(n),
                    Target::Size(size) => {
                        c.set_request(size, n, false);
                        request_tok[size.index()] = tok;
                    }
                }
                last_target = Some(target);
            }
            "hugetlb_free_vmemmap" => match value.map(parse_bool) {
                Some(Some(b)) => c.hugetlb_free_vmemmap = Some(b),
                Some(None) => c.malformed(tok, MalformedReason::BadBool),
                None => c.malformed(tok, MalformedReason::MissingValue),
            },
            "ptdump" => match value.map(parse_bool) {
                None => c.ptdump = true,
                Some(Some(b)) => c.ptdump = b,
                Some(None) => c.malformed(tok, MalformedReason::BadBool),
            },
            "ktest" => c.ktest = Some(value.unwrap_or("")),
            "bench" if value.is_none() => c.bench = true,
            "crash" => match value {
                Some("panic") => c.crash = Some(Crash::Panic),
                Some("fault") => c.crash = Some(Crash::Fault),
                Some("udf") => c.crash = Some(Crash::Udf),
                Some(_) => c.malformed(tok, MalformedReason::UnknownValue),
                None => c.malformed(tok, MalformedReason::MissingValue),
            },
            "loglevel" => match value.map(parse_u64) {
                Some(Ok(n)) if n <= MAX_LOGLEVEL as u64 => c.loglevel = Some(n as u8),
                Some(Ok(_)) => c.malformed(tok, MalformedReason::OutOfRange),
                Some(Err(e)) => c.malformed(tok, e.into()),
                None => c.malformed(tok, MalformedReason::MissingValue),
            },
            "memhp_reserve" => match value.map(parse_size) {
                Some(Ok(0)) => c.memhp_reserve = None,
                Some(Ok(n)) if n.is_multiple_of(MEMHP_GRANULE) => c.memhp_reserve = Some(n),
                Some(Ok(_)) => c.malformed(tok, MalformedReason::NotSectionAligned),
                Some(Err(e)) => c.malformed(tok, e.into()),
                None => c.malformed(tok, MalformedReason::MissingValue),
            },
            k if IGNORED.contains(&k) => {}
            // Module parameters (`module.param=value`) are for modules we do not have.
            k if k.contains('.') && !k.starts_with('.') && !k.ends_with('.') => {}
            _ => c.warn(Warning::Unknown { option: tok }),
        }
    }

    if let Some(n) = implicit {
        let size = c.default_hugepage_size();
        if c.hugepage_requests().iter().any(|r| r.size == size) {
            // Linux: "Ignoring hugepages=<explicit> associated with <size> page size".
            c.malformed(request_tok[size.index()], MalformedReason::OverriddenByDefault);
        }
        c.set_request(size, n, true);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use HugePageSize::{Size1G, Size2M};

    fn req(size: HugePageSize, count: u64) -> HugepageRequest {
        HugepageRequest { size, count }
    }

    #[test]
    fn bench_flag() {
        assert!(parse("bench hugepages=1").bench);
        assert!(!parse("hugepages=1").bench);
        let c = parse("bench=1");
        assert!(!c.bench);
        assert_eq!(c.warnings().len(), 1);
    }

    #[test]
    fn empty_and_whitespace() {
        let c = parse("");
        assert_eq!(c, Cmdline::default());
        let c = parse("  \t\n \0");
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn hugepages_pairs_in_order() {
        let c = parse("hugepagesz=2M hugepages=64 hugepagesz=1G hugepages=1");
        assert_eq!(c.hugepage_requests(), &[req(Size2M, 64), req(Size1G, 1)]);
        assert!(c.warnings().is_empty());
        let c = parse("hugepagesz=1G hugepages=2 hugepagesz=2M hugepages=3");
        assert_eq!(c.hugepage_requests(), &[req(Size1G, 2), req(Size2M, 3)]);
    }

    #[test]
    fn implicit_default_size() {
        assert_eq!(parse("hugepages=8").hugepage_requests(), &[req(Size2M, 8)]);
        // default_hugepagesz later still decides the size.
        let c = parse("hugepages=2 default_hugepagesz=1G");
        assert_eq!(c.hugepage_requests(), &[req(Size1G, 2)]);
        assert_eq!(c.default_hugepage_size(), Size1G);
        // After default_hugepagesz, hugepages= applies to it.
        let c = parse("default_hugepagesz=1G hugepages=3");
        assert_eq!(c.hugepage_requests(), &[req(Size1G, 3)]);
        // hugepagesz= for the default size before its count: allowed.
        let c = parse("default_hugepagesz=1G hugepagesz=1G hugepages=4 hugepagesz=2M hugepages=5");
        assert_eq!(c.hugepage_requests(), &[req(Size1G, 4), req(Size2M, 5)]);
        assert!(c.warnings().is_empty());
        // Implicit first, then an explicit count for the same size: implicit wins, warned.
        let c = parse("hugepages=7 hugepagesz=2M hugepages=9");
        assert_eq!(c.hugepage_requests(), &[req(Size2M, 7)]);
        assert_eq!(
            c.warnings(),
            &[Warning::Malformed {
                option: "hugepages=9",
                reason: MalformedReason::OverriddenByDefault
            }]
        );
        let c = parse("hugepages=7 hugepagesz=1G hugepages=1");
        assert_eq!(c.hugepage_requests(), &[req(Size2M, 7), req(Size1G, 1)]);
    }

    #[test]
    fn the_briefs_example() {
        let c = parse("hugepages=8 bogus==");
        assert_eq!(c.hugepage_requests(), &[req(Size2M, 8)]);
        assert_eq!(c.warnings(), &[Warning::Unknown { option: "bogus==" }]);
    }

    #[test]
    fn hugepage_errors() {
        let c = parse("hugepagesz=64K hugepages=4 hugepagesz=2M hugepages=2");
        assert_eq!(c.hugepage_requests(), &[req(Size2M, 2)]);
        assert_eq!(
            c.warnings(),
            &[
                Warning::Malformed {
                    option: "hugepagesz=64K",
                    reason: MalformedReason::UnsupportedHugePageSize
                },
                Warning::Malformed {
                    option: "hugepages=4",
                    reason: MalformedReason::NoValidHugepagesz
                },
            ]
        );
        let c = parse("hugepagesz=32M");
        assert_eq!(
            c.warnings(),
            &[Warning::Malformed {
                option: "hugepagesz=32M",
                reason: MalformedReason::UnsupportedHugePageSize
            }]
        );
        let c = parse("hugepagesz=2Q hugepagesz=zz hugepages=x1 hugepages=100000 hugepages");
        let reasons: Vec<MalformedReason> = c
            .warnings()
            .iter()
            .map(|w| match w {
                Warning::Malformed { reason, .. } => *reason,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            reasons,
            vec![
                MalformedReason::UnknownSuffix,
                MalformedReason::BadNumber,
                MalformedReason::NoValidHugepagesz,
                MalformedReason::CountTooLarge,
                MalformedReason::MissingValue,
            ]
        );
        assert!(c.hugepage_requests().is_empty());
        // Twice.
        let c = parse("hugepagesz=2M hugepages=1 hugepages=2 hugepagesz=2M default_hugepagesz=2M default_hugepagesz=1G");
        assert_eq!(c.hugepage_requests(), &[req(Size2M, 1)]);
        assert_eq!(c.default_hugepagesz, Some(Size2M));
        assert_eq!(c.warnings().len(), 3);
        assert!(c.warnings().iter().all(|w| matches!(
            w,
            Warning::Malformed { reason: MalformedReason::SpecifiedTwice, .. }
        )));
    }

    #[test]
    fn other_options() {
        let c = parse(
            "hugetlb_free_vmemmap=on ptdump ktest=buddy loglevel=7 memhp_reserve=256M console=ttyS0,115200 8250.nr_uarts=1 rootwait",
        );
        assert_eq!(c.hugetlb_free_vmemmap, Some(true));
        assert!(c.ptdump);
        assert_eq!(c.ktest, Some("buddy"));
        assert_eq!(c.loglevel, Some(7));
        assert_eq!(c.memhp_reserve, Some(256 << 20));
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        let c = parse("ktest hugetlb_free_vmemmap=0 ptdump=off");
        assert_eq!(c.ktest, Some(""));
        assert_eq!(c.hugetlb_free_vmemmap, Some(false));
        assert!(!c.ptdump);
        for (s, b) in [("y", true), ("n", false), ("1", true), ("off", false)] {
            assert_eq!(parse_bool(s), Some(b));
        }
        let c = parse("ktest=\"a b\" -- hugepages=3 whatever");
        assert_eq!(c.ktest, Some("a b"));
        assert!(c.hugepage_requests().is_empty());
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn bad_values_are_ignored_and_warned() {
        let c = parse(
            "hugetlb_free_vmemmap=maybe loglevel=9 loglevel=x memhp_reserve=100M memhp_reserve=1X ptdump=2 hugetlb_free_vmemmap",
        );
        assert_eq!(c.hugetlb_free_vmemmap, None);
        assert_eq!(c.loglevel, None);
        assert_eq!(c.memhp_reserve, None);
        assert!(!c.ptdump);
        let reasons: Vec<MalformedReason> = c
            .warnings()
            .iter()
            .filter_map(|w| match w {
                Warning::Malformed { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect();
        assert_eq!(
            reasons,
            vec![
                MalformedReason::BadBool,
                MalformedReason::OutOfRange,
                MalformedReason::BadNumber,
                MalformedReason::NotSectionAligned,
                MalformedReason::UnknownSuffix,
                MalformedReason::BadBool,
                MalformedReason::MissingValue,
            ]
        );
        assert_eq!(parse("memhp_reserve=0").memhp_reserve, None);
        assert_eq!(parse("crash=fault").crash, Some(Crash::Fault));
        let c = parse("crash=sometimes crash");
        assert_eq!(c.crash, None);
        assert_eq!(c.warnings().len(), 2);
    }

    #[test]
    fn too_many_warnings() {
        let c = parse("a b c d e f g h i j k");
        assert_eq!(c.warnings().len(), MAX_WARNINGS);
        assert_eq!(c.warnings()[MAX_WARNINGS - 1], Warning::TooMany);
        assert_eq!(c.warnings()[0], Warning::Unknown { option: "a" });
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0x200000"), Ok(2 << 20));
        assert_eq!(parse_size("0x1M"), Ok(1 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("2P"), Err(NumberError::UnknownSuffix));
        assert_eq!(parse_size("M"), Err(NumberError::BadNumber));
        assert_eq!(parse_size(""), Err(NumberError::BadNumber));
        assert_eq!(parse_size("99999999999999999999"), Err(NumberError::BadNumber));
        assert_eq!(parse_size("16777216T"), Err(NumberError::BadNumber));
        assert_eq!(parse_u64("0x"), Err(NumberError::BadNumber));
        assert_eq!(parse_u64("-1"), Err(NumberError::BadNumber));
    }
}
