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
//! | `hugetlb_vmemmap_preinit=on\|off` | ours (Linux 6.15's `HUGETLB_VMEMMAP_PREINIT` is a build option): 1 GiB boot folios get their vmemmap populated already optimized ([`crate::hvo_preinit`]); off by default |
//! | `ptdump` | dump the kernel page tables at boot |
//! | `console` | ours: enter the serial console after the boot report instead of exiting (`console=DEV` is Linux's and changes nothing) |
//! | `ktest` / `ktest=FILTER` | run the in-kernel tests (all, or those matching `FILTER`) |
//! | `loglevel=N` | console log level, 0..=8 |
//! | `memhp_reserve=SIZE` | ours: see below |
//! | `bench` | ours: run the HVO benchmark (`cargo xtask bench`) after boot, print its figures and exit |
//! | `crash=panic\|fault\|udf` | ours: end the boot with a panic, an unexpected data abort or an undefined instruction, to show the reporting path |
//! | `dt_memory` | ours: take the RAM banks from the device tree even on a board whose own table normally wins (QEMU rewrites a `-dtb` to 960 MiB of its 2 GiB) |
//! | `stress=N` | ours: after boot, run N cycles of the four-core HVO stress (readers on cores 1-3) |
//! | `hvo_bbm=none\|stop-machine\|pause-window\|fault-wait` | ours: how HVO's break-before-make windows are made safe for the other cores |
//!
//! The `hugepages` rules are `mm/hugetlb.c`'s state machine, transcribed (`HugetlbSetup` below;
//! `kcore/tests/cmdline_linux_hugetlb.rs` checks it against a table of Linux's results):
//! `hugepages=` right after an unsupported `hugepagesz=` is ignored ("does not follow a valid
//! hugepagesz"); `hugepagesz=` twice for one size (except to re-name the default size before its
//! count), `default_hugepagesz=` twice, or two `hugepages=` writing the same count without a
//! `hugepagesz=` between them are ignored; a `hugepages=` before any `hugepagesz=` counts for the
//! default size, even if `default_hugepagesz=` comes later, and then overrides a count given for
//! that size (Linux warns "Using hugepages=N for number of default huge pages"). A count of 0 is
//! "not given" where Linux tests it (`hugepages=0` overrides nothing), but still counts as the
//! last `hugepages=`. `default_hugepagesz=X` for a size that already has an hstate leaves the
//! following `hugepages=` on the previous size, as in Linux.
//!
//! Where the values are read, this parser is stricter than Linux and says so: a count with
//! trailing junk (`hugepages=5x`, which Linux's `sscanf` reads as 5), a per-node count
//! (`hugepages=0:5`; there is one node), a count above [`MAX_HUGEPAGES`], or a size with junk
//! after its suffix (`hugepagesz=2Mx`, which `memparse` reads as 2M) is ignored with a warning,
//! with the same effect on the state as Linux's invalid value. Sizes other than 2M and 1G are
//! unsupported (arm64 Linux also has 64K and 32M).
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

/// How HVO makes its break-before-make windows safe for the other cores (`hvo_bbm=`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HvoBbm {
    /// `none`: no coordination (the negative control: readers fault).
    None,
    /// `stop-machine`: the other cores are held for the whole operation.
    StopMachine,
    /// `pause-window`: the other cores are held around each break window only.
    PauseWindow,
    /// `fault-wait`: a fault on a vmemmap address in a window waits for it and retries.
    FaultWait,
}

impl HvoBbm {
    /// Every strategy, in the order the stress test runs them.
    pub const ALL: [HvoBbm; 4] =
        [HvoBbm::StopMachine, HvoBbm::PauseWindow, HvoBbm::FaultWait, HvoBbm::None];

    /// The boot-argument spelling.
    pub const fn name(self) -> &'static str {
        match self {
            HvoBbm::None => "none",
            HvoBbm::StopMachine => "stop-machine",
            HvoBbm::PauseWindow => "pause-window",
            HvoBbm::FaultWait => "fault-wait",
        }
    }

    /// Parses the boot-argument spelling.
    pub fn from_name(s: &str) -> Option<HvoBbm> {
        HvoBbm::ALL.into_iter().find(|b| b.name() == s)
    }
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
    /// A well-formed option the boot could not honour (see [`Cmdline::refuse_memhp_reserve`]);
    /// it took no effect.
    Refused {
        /// The whole option text.
        option: &'a str,
        /// Why.
        reason: Refusal,
    },
    /// More warnings than [`MAX_WARNINGS`]; the rest were dropped.
    TooMany,
}

/// Why a well-formed option was not honoured.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Refusal {
    /// `memhp_reserve=`: no range of that size fits in RAM without the kernel, the boot blob or a
    /// firmware reservation.
    NoRoom,
}

/// The parsed command line.
///
/// `Debug` (and `defmt::Format`) show the requests and warnings actually present, not the
/// fixed-capacity buffers behind them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cmdline<'a> {
    requests: [HugepageRequest; 2],
    nr_requests: usize,
    /// `default_hugepagesz=`.
    pub default_hugepagesz: Option<HugePageSize>,
    /// `hugetlb_free_vmemmap=`.
    pub hugetlb_free_vmemmap: Option<bool>,
    /// `ptdump`.
    pub ptdump: bool,
    /// `console`: enter the serial console after the boot report (ours).
    pub console: bool,
    /// `ktest` (`Some("")`) or `ktest=filter`.
    pub ktest: Option<&'a str>,
    /// `loglevel=`.
    pub loglevel: Option<u8>,
    /// `memhp_reserve=` in bytes (non-zero, multiple of 128 MiB); `None` again if the boot
    /// refused it ([`Cmdline::refuse_memhp_reserve`]).
    pub memhp_reserve: Option<u64>,
    /// The option text that set `memhp_reserve`.
    memhp_option: &'a str,
    /// `crash=`: fail deliberately at the end of boot.
    pub crash: Option<Crash>,
    /// `dt_memory`: trust the device tree's memory banks over the board's table.
    pub dt_memory: bool,
    /// `stress=N`: cycles of the four-core HVO stress run after boot.
    pub stress: Option<u64>,
    /// `hvo_bbm=`: the break-before-make strategy for HVO with other cores running.
    pub hvo_bbm: Option<HvoBbm>,
    /// `bench`: run the HVO benchmark after boot.
    pub bench: bool,
    /// `hvo_tails=seed|shared`: HVO's tail design ([`crate::hvo_tails`]), fixed at boot.
    pub hvo_tails: Option<crate::hvo_tails::TailDesign>,
    /// `hugetlb_vmemmap_preinit=on|off`: 1 GiB boot folios populated optimized.
    pub hugetlb_vmemmap_preinit: Option<bool>,
    /// `bench=tails`: measure the booted tail design and exit.
    pub bench_tails: bool,
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
            console: false,
            ktest: None,
            loglevel: None,
            memhp_reserve: None,
            memhp_option: "",
            crash: None,
            dt_memory: false,
            stress: None,
            hvo_bbm: None,
            bench: false,
            hvo_tails: None,
            hugetlb_vmemmap_preinit: None,
            bench_tails: false,
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
            "Cmdline {{ hugepages: {=[?]}, default_hugepagesz: {}, hugetlb_free_vmemmap: {}, ptdump: {}, console: {}, ktest: {}, loglevel: {}, memhp_reserve: {}, crash: {}, dt_memory: {}, stress: {}, hvo_bbm: {}, bench: {}, hvo_tails: {}, hugetlb_vmemmap_preinit: {}, bench_tails: {}, warnings: {=[?]} }}",
            self.hugepage_requests(),
            self.default_hugepagesz,
            self.hugetlb_free_vmemmap,
            self.ptdump,
            self.console,
            self.ktest,
            self.loglevel,
            self.memhp_reserve,
            self.crash,
            self.dt_memory,
            self.stress,
            self.hvo_bbm,
            self.bench,
            self.hvo_tails,
            self.hugetlb_vmemmap_preinit,
            self.bench_tails,
            self.warnings()
        )
    }
}

impl core::fmt::Debug for Cmdline<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cmdline")
            .field("hugepages", &self.hugepage_requests())
            .field("default_hugepagesz", &self.default_hugepagesz)
            .field("hugetlb_free_vmemmap", &self.hugetlb_free_vmemmap)
            .field("ptdump", &self.ptdump)
            .field("console", &self.console)
            .field("ktest", &self.ktest)
            .field("loglevel", &self.loglevel)
            .field("memhp_reserve", &self.memhp_reserve)
            .field("crash", &self.crash)
            .field("dt_memory", &self.dt_memory)
            .field("stress", &self.stress)
            .field("hvo_bbm", &self.hvo_bbm)
            .field("bench", &self.bench)
            .field("hvo_tails", &self.hvo_tails)
            .field("hugetlb_vmemmap_preinit", &self.hugetlb_vmemmap_preinit)
            .field("bench_tails", &self.bench_tails)
            .field("warnings", &self.warnings())
            .finish()
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

    /// The boot could not honour `memhp_reserve=`: it takes no effect, and the command line says
    /// so (a [`Warning::Refused`]) instead of still showing the size. No-op without one.
    pub fn refuse_memhp_reserve(&mut self, reason: Refusal) {
        if self.memhp_reserve.take().is_some() {
            self.warn(Warning::Refused { option: self.memhp_option, reason });
        }
    }

    fn malformed(&mut self, option: &'a str, reason: MalformedReason) {
        self.warn(Warning::Malformed { option, reason });
    }

    fn push_request(&mut self, r: HugepageRequest) {
        // One per hstate, and there are two sizes: this always fits.
        if let Some(slot) = self.requests.get_mut(self.nr_requests) {
            *slot = r;
            self.nr_requests += 1;
        }
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

/// Which count a `hugepages=` writes: Linux's `mhp` pointer in `hugepages_setup`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mhp {
    /// `&default_hstate_max_huge_pages`: no hstate exists yet.
    Default,
    /// `&hstates[i].max_huge_pages`.
    Hstate(usize),
}

/// One `struct hstate` as far as the command line goes.
#[derive(Clone, Copy)]
struct Hstate<'a> {
    size: HugePageSize,
    max_huge_pages: u64,
    /// The `hugepages=` option that set `max_huge_pages` (for the override warning).
    set_by: &'a str,
}

/// The boot-time state of `mm/hugetlb.c`, transcribed: `hstates[]`/`hugetlb_max_hstate`,
/// `parsed_hstate`, `default_hstate_idx`, `parsed_valid_hugepagesz`,
/// `parsed_default_hugepagesz`, `default_hstate_max_huge_pages` and `hugepages_setup`'s static
/// `last_mhp`. Each `*_setup` method is the Linux function of that name, statement for statement
/// (the early gigantic-page allocation aside: the pool allocates later); [`Self::finish`] is the
/// command-line part of `hugetlb_init`.
///
/// A count of 0 in `default_hstate_max_huge_pages` or `max_huge_pages` means "not given", as in
/// Linux: `hugepages=0` before any `hugepagesz=` does not override a later explicit count.
struct HugetlbSetup<'a> {
    /// `hstates[..max_hstate]` exist.
    hstates: [Hstate<'a>; 2],
    max_hstate: usize,
    parsed_hstate: Option<usize>,
    default_hstate_idx: usize,
    parsed_valid_hugepagesz: bool,
    parsed_default_hugepagesz: bool,
    default_hstate_max_huge_pages: u64,
    /// The option that set `default_hstate_max_huge_pages`.
    default_set_by: &'a str,
    last_mhp: Option<Mhp>,
}

impl<'a> HugetlbSetup<'a> {
    fn new() -> Self {
        HugetlbSetup {
            hstates: [Hstate { size: HugePageSize::Size2M, max_huge_pages: 0, set_by: "" }; 2],
            max_hstate: 0,
            parsed_hstate: None,
            default_hstate_idx: 0,
            parsed_valid_hugepagesz: true,
            parsed_default_hugepagesz: false,
            default_hstate_max_huge_pages: 0,
            default_set_by: "",
            last_mhp: None,
        }
    }

    fn size_to_hstate(&self, size: HugePageSize) -> Option<usize> {
        self.hstates[..self.max_hstate].iter().position(|h| h.size == size)
    }

    fn hstate(&mut self, i: usize) -> &mut Hstate<'a> {
        &mut self.hstates[i]
    }

    /// `hugetlb_add_hstate`: a no-op (not even `parsed_hstate = h`) if the size exists.
    fn add_hstate(&mut self, size: HugePageSize) {
        if self.size_to_hstate(size).is_some() {
            return;
        }
        // Two sizes, at most one hstate each: never full.
        self.hstates[self.max_hstate] = Hstate { size, max_huge_pages: 0, set_by: "" };
        self.parsed_hstate = Some(self.max_hstate);
        self.max_hstate += 1;
    }

    /// `hugepagesz_setup`; `size` is `None` for a value `arch_hugetlb_valid_size` refuses.
    fn hugepagesz_setup(&mut self, size: Option<HugePageSize>) -> Result<(), MalformedReason> {
        self.parsed_valid_hugepagesz = false;
        let size = size.ok_or(MalformedReason::UnsupportedHugePageSize)?;
        if let Some(h) = self.size_to_hstate(size) {
            // Allowed only for the default hstate, and only before its count was given.
            if !self.parsed_default_hugepagesz
                || h != self.default_hstate_idx
                || self.hstate(h).max_huge_pages != 0
            {
                return Err(MalformedReason::SpecifiedTwice);
            }
            self.parsed_hstate = Some(h);
            self.parsed_valid_hugepagesz = true;
            return Ok(());
        }
        self.add_hstate(size);
        self.parsed_valid_hugepagesz = true;
        Ok(())
    }

    /// `default_hugepagesz_setup`. Returns the `hugepages=` option whose count it overrode
    /// silently in Linux (an explicit count for that size replaced by the earlier implicit one).
    fn default_hugepagesz_setup(
        &mut self,
        size: Option<HugePageSize>,
    ) -> Result<Option<&'a str>, MalformedReason> {
        self.parsed_valid_hugepagesz = false;
        if self.parsed_default_hugepagesz {
            return Err(MalformedReason::SpecifiedTwice);
        }
        let size = size.ok_or(MalformedReason::UnsupportedHugePageSize)?;
        self.add_hstate(size);
        self.parsed_valid_hugepagesz = true;
        self.parsed_default_hugepagesz = true;
        // The hstate exists now.
        self.default_hstate_idx = self.size_to_hstate(size).unwrap_or(0);
        let mut overridden = None;
        if self.default_hstate_max_huge_pages != 0 {
            let (n, by) = (self.default_hstate_max_huge_pages, self.default_set_by);
            let h = self.hstate(self.default_hstate_idx);
            if h.max_huge_pages != 0 {
                overridden = Some(h.set_by);
            }
            h.max_huge_pages = n;
            h.set_by = by;
            self.default_hstate_max_huge_pages = 0;
        }
        Ok(overridden)
    }

    /// `hugepages_setup`, up to the value: which count it writes, or why it is ignored.
    fn hugepages_target(&mut self) -> Result<Mhp, MalformedReason> {
        if !self.parsed_valid_hugepagesz {
            self.parsed_valid_hugepagesz = true;
            return Err(MalformedReason::NoValidHugepagesz);
        }
        let mhp = match (self.max_hstate, self.parsed_hstate) {
            (0, _) | (_, None) => Mhp::Default,
            (_, Some(h)) => Mhp::Hstate(h),
        };
        if self.last_mhp == Some(mhp) {
            return Err(MalformedReason::SpecifiedTwice);
        }
        Ok(mhp)
    }

    /// `hugepages_setup` after the value parsed: store it, remember `last_mhp`.
    fn hugepages_store(&mut self, mhp: Mhp, n: u64, tok: &'a str) {
        match mhp {
            Mhp::Default => {
                self.default_hstate_max_huge_pages = n;
                self.default_set_by = tok;
            }
            Mhp::Hstate(i) => {
                let h = self.hstate(i);
                h.max_huge_pages = n;
                h.set_by = tok;
            }
        }
        self.last_mhp = Some(mhp);
    }

    /// The command-line part of `hugetlb_init`: the default hstate (2 MiB, `HPAGE_SIZE` on arm64
    /// with 4 KiB pages) exists; without `default_hugepagesz=`, an implicit count goes to it and
    /// overrides an explicit one (returned, for the warning Linux prints).
    fn finish(&mut self) -> Option<&'a str> {
        self.add_hstate(HugePageSize::Size2M);
        if self.parsed_default_hugepagesz {
            return None;
        }
        self.default_hstate_idx = self.size_to_hstate(HugePageSize::Size2M).unwrap_or(0);
        if self.default_hstate_max_huge_pages == 0 {
            return None;
        }
        let (n, by) = (self.default_hstate_max_huge_pages, self.default_set_by);
        let h = self.hstate(self.default_hstate_idx);
        let overridden = (h.max_huge_pages != 0).then_some(h.set_by);
        h.max_huge_pages = n;
        h.set_by = by;
        overridden
    }
}

/// Parses a command line. Never fails; see the module documentation.
pub fn parse(s: &str) -> Cmdline<'_> {
    let mut c = Cmdline::default();
    let mut hs = HugetlbSetup::new();

    for tok in (Tokens { rest: s }) {
        if tok == "--" {
            break;
        }
        let (key, value) = match tok.split_once('=') {
            Some((k, v)) => (k, Some(unquote(v))),
            None => (tok, None),
        };
        match key {
            // Without `=`, Linux's `__setup("hugepagesz=")` does not match: no state change.
            "hugepagesz" | "default_hugepagesz" | "hugepages" if value.is_none() => {
                c.malformed(tok, MalformedReason::MissingValue)
            }
            "hugepagesz" | "default_hugepagesz" => {
                // Linux's memparse turns a malformed value into a size arch_hugetlb_valid_size
                // refuses: the same state change as an unsupported size, with a precise reason.
                let (size, reason) = match parse_size(value.unwrap_or("")) {
                    Ok(b) => (HugePageSize::from_bytes(b), None),
                    Err(e) => (None, Some(MalformedReason::from(e))),
                };
                let r = if key == "default_hugepagesz" {
                    hs.default_hugepagesz_setup(size).map(|overridden| {
                        c.default_hugepagesz = size;
                        if let Some(o) = overridden {
                            c.malformed(o, MalformedReason::OverriddenByDefault);
                        }
                    })
                } else {
                    hs.hugepagesz_setup(size)
                };
                if let Err(e) = r {
                    let e = match (e, reason) {
                        (MalformedReason::UnsupportedHugePageSize, Some(r)) => r,
                        _ => e,
                    };
                    c.malformed(tok, e);
                }
            }
            "hugepages" => {
                let mhp = match hs.hugepages_target() {
                    Ok(m) => m,
                    Err(e) => {
                        c.malformed(tok, e);
                        continue;
                    }
                };
                // Linux's "invalid" path: last_mhp unchanged.
                match parse_u64(value.unwrap_or("")) {
                    Ok(n) if n > MAX_HUGEPAGES => c.malformed(tok, MalformedReason::CountTooLarge),
                    Ok(n) => hs.hugepages_store(mhp, n, tok),
                    Err(e) => c.malformed(tok, e.into()),
                }
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
            // Bare `console` is ours; `console=DEV,...` is Linux's console device (the Pi
            // firmware's cmdline.txt has one) and changes nothing here.
            "console" if value.is_none() => c.console = true,
            "ktest" => c.ktest = Some(value.unwrap_or("")),
            "dt_memory" => match value.map(parse_bool) {
                None => c.dt_memory = true,
                Some(Some(b)) => c.dt_memory = b,
                Some(None) => c.malformed(tok, MalformedReason::BadBool),
            },
            "bench" if value.is_none() => c.bench = true,
            "bench" if value == Some("tails") => c.bench_tails = true,
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
                Some(Ok(n)) if n.is_multiple_of(MEMHP_GRANULE) => {
                    c.memhp_reserve = Some(n);
                    c.memhp_option = tok;
                }
                Some(Ok(_)) => c.malformed(tok, MalformedReason::NotSectionAligned),
                Some(Err(e)) => c.malformed(tok, e.into()),
                None => c.malformed(tok, MalformedReason::MissingValue),
            },
            "stress" => match value.map(parse_u64) {
                Some(Ok(n)) => c.stress = Some(n),
                Some(Err(e)) => c.malformed(tok, e.into()),
                None => c.malformed(tok, MalformedReason::MissingValue),
            },
            "hvo_tails" => match value.map(crate::hvo_tails::TailDesign::from_name) {
                Some(Some(d)) => c.hvo_tails = Some(d),
                Some(None) => c.malformed(tok, MalformedReason::UnknownValue),
                None => c.malformed(tok, MalformedReason::MissingValue),
            },
            "hugetlb_vmemmap_preinit" => match value.map(parse_bool) {
                Some(Some(b)) => c.hugetlb_vmemmap_preinit = Some(b),
                Some(None) => c.malformed(tok, MalformedReason::BadBool),
                None => c.malformed(tok, MalformedReason::MissingValue),
            },
            "hvo_bbm" => match value.map(HvoBbm::from_name) {
                Some(Some(b)) => c.hvo_bbm = Some(b),
                Some(None) => c.malformed(tok, MalformedReason::UnknownValue),
                None => c.malformed(tok, MalformedReason::MissingValue),
            },
            k if IGNORED.contains(&k) => {}
            // Module parameters (`module.param=value`) are for modules we do not have.
            k if k.contains('.') && !k.starts_with('.') && !k.ends_with('.') => {}
            _ => c.warn(Warning::Unknown { option: tok }),
        }
    }

    if let Some(o) = hs.finish() {
        // Linux: "Ignoring hugepages=<explicit> associated with <size> page size".
        c.malformed(o, MalformedReason::OverriddenByDefault);
    }
    for h in hs.hstates[..hs.max_hstate].iter().filter(|h| h.max_huge_pages != 0) {
        c.push_request(HugepageRequest { size: h.size, count: h.max_huge_pages });
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
    fn hvo_tails_and_bench_tails() {
        use crate::hvo_tails::TailDesign;
        let c = parse("hvo_tails=shared bench=tails");
        assert_eq!((c.hvo_tails, c.bench_tails, c.bench), (Some(TailDesign::Shared), true, false));
        assert_eq!(parse("hvo_tails=seed").hvo_tails, Some(TailDesign::Seed));
        let c = parse("hvo_tails=fake hvo_tails");
        assert_eq!(c.hvo_tails, None);
        assert_eq!(
            c.warnings(),
            [
                Warning::Malformed {
                    option: "hvo_tails=fake",
                    reason: MalformedReason::UnknownValue
                },
                Warning::Malformed { option: "hvo_tails", reason: MalformedReason::MissingValue },
            ]
        );
    }

    #[test]
    fn hugetlb_vmemmap_preinit() {
        assert_eq!(parse("").hugetlb_vmemmap_preinit, None);
        assert_eq!(parse("hugetlb_vmemmap_preinit=on").hugetlb_vmemmap_preinit, Some(true));
        assert_eq!(parse("hugetlb_vmemmap_preinit=0").hugetlb_vmemmap_preinit, Some(false));
        let c = parse("hugetlb_vmemmap_preinit=maybe hugetlb_vmemmap_preinit");
        assert_eq!(c.hugetlb_vmemmap_preinit, None);
        assert_eq!(
            c.warnings(),
            [
                Warning::Malformed {
                    option: "hugetlb_vmemmap_preinit=maybe",
                    reason: MalformedReason::BadBool
                },
                Warning::Malformed {
                    option: "hugetlb_vmemmap_preinit",
                    reason: MalformedReason::MissingValue
                },
            ]
        );
    }

    #[test]
    fn stress_and_hvo_bbm() {
        let c = parse("stress=5 hvo_bbm=pause-window");
        assert_eq!((c.stress, c.hvo_bbm), (Some(5), Some(HvoBbm::PauseWindow)));
        assert!(c.warnings().is_empty());
        for b in HvoBbm::ALL {
            assert_eq!(HvoBbm::from_name(b.name()), Some(b));
        }
        let c = parse("hvo_bbm=sometimes stress=x hvo_bbm");
        assert_eq!((c.stress, c.hvo_bbm), (None, None));
        assert_eq!(
            c.warnings(),
            &[
                Warning::Malformed {
                    option: "hvo_bbm=sometimes",
                    reason: MalformedReason::UnknownValue
                },
                Warning::Malformed { option: "stress=x", reason: MalformedReason::BadNumber },
                Warning::Malformed { option: "hvo_bbm", reason: MalformedReason::MissingValue },
            ]
        );
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
        // Requests come in hstate order: 1G was created first, 2M at the end (hugetlb_init).
        let c = parse("hugepages=7 hugepagesz=1G hugepages=1");
        assert_eq!(c.hugepage_requests(), &[req(Size1G, 1), req(Size2M, 7)]);
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
        assert!(!c.console, "console=DEV is Linux's device option");
        assert!(parse("hugepages=4 console").console);
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

    #[test]
    fn debug_shows_only_what_is_there() {
        let d = format!("{:?}", parse(""));
        assert!(d.contains("hugepages: []") && d.contains("warnings: []"), "{d}");
        assert!(!d.contains("TooMany") && !d.contains("nr_"), "{d}");
        let d = format!("{:?}", parse("hugepages=3 bogus"));
        assert!(d.contains("hugepages: [HugepageRequest { size: Size2M, count: 3 }]"), "{d}");
        assert!(d.contains("warnings: [Unknown { option: \"bogus\" }]"), "{d}");
    }

    #[test]
    fn a_refused_memhp_reserve_is_gone_and_warned() {
        let mut c = parse("memhp_reserve=5G ptdump");
        assert_eq!(c.memhp_reserve, Some(5 << 30));
        c.refuse_memhp_reserve(Refusal::NoRoom);
        assert_eq!(c.memhp_reserve, None);
        assert_eq!(
            c.warnings(),
            &[Warning::Refused { option: "memhp_reserve=5G", reason: Refusal::NoRoom }]
        );
        let d = format!("{c:?}");
        assert!(d.contains("memhp_reserve: None") && d.contains("Refused"), "{d}");
        // Twice, or without the option: nothing more.
        c.refuse_memhp_reserve(Refusal::NoRoom);
        assert_eq!(c.warnings().len(), 1);
        let mut c = parse("");
        c.refuse_memhp_reserve(Refusal::NoRoom);
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn stricter_than_linux_and_says_so() {
        // Linux's sscanf/memparse would read a prefix; here each is ignored with a reason.
        for (line, reason) in [
            ("hugepages=5x", MalformedReason::BadNumber),
            ("hugepages=0:5", MalformedReason::BadNumber),
            ("hugepages=65537", MalformedReason::CountTooLarge),
            ("hugepagesz=2Mx", MalformedReason::UnknownSuffix),
        ] {
            let c = parse(line);
            assert!(c.hugepage_requests().is_empty(), "{line}");
            assert_eq!(c.warnings(), &[Warning::Malformed { option: line, reason }], "{line}");
        }
        // MAX_HUGEPAGES itself is accepted.
        assert_eq!(parse("hugepages=65536").hugepages(Size2M), MAX_HUGEPAGES);
    }

    #[test]
    fn dt_memory_flag() {
        assert!(!parse("").dt_memory);
        assert!(parse("ktest dt_memory").dt_memory);
        assert!(parse("dt_memory=on").dt_memory);
        assert!(!parse("dt_memory dt_memory=0").dt_memory);
        let c = parse("dt_memory=maybe");
        assert!(!c.dt_memory);
        assert_eq!(
            c.warnings(),
            [Warning::Malformed { option: "dt_memory=maybe", reason: MalformedReason::BadBool }]
        );
    }
}
