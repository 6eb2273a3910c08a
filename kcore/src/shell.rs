//! The serial console's commands: one typed line parsed into a [`Command`], or a [`ShellError`]
//! that says what is wrong with it. Linux's names where Linux has them: `nr_hugepages` (the
//! sysfs file `/sys/kernel/mm/hugepages/hugepages-*/nr_hugepages`), `demote` (the sysfs file of
//! the same name), `hugetlb_optimize_vmemmap` (the sysctl `vm.hugetlb_optimize_vmemmap`),
//! `meminfo` (`/proc/meminfo`), `ptdump` (`/sys/kernel/debug/kernel_page_tables`).
//!
//! Parsing only: the firmware carries the commands out. Nothing here panics on any input
//! (`kcore/tests/console_fuzz.rs` checks that, with the line editor in front).

use crate::addr::VirtAddr;
use crate::cmdline::{parse_bool, parse_size, parse_u64, NumberError};
use crate::hugetlb::HugePageSize;
use crate::layout::{self, Region};

/// What `ptdump` dumps.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PtdumpRange {
    /// The whole kernel half.
    All,
    /// One region of the layout (`linear`, `image`, `mmio`, `stacks`, `vmemmap`).
    Region(Region),
    /// `START..END`, `START-END` or `START+SIZE` (kernel virtual addresses, 4 KiB aligned
    /// outwards; END exclusive, `0` meaning the top of the address space).
    Span {
        /// First address.
        start: VirtAddr,
        /// End (exclusive; 0 wraps to 2^64).
        end: VirtAddr,
    },
}

/// First address of the kernel half (TTBR1).
pub const KERNEL_START: VirtAddr = VirtAddr(layout::PAGE_OFFSET);

impl PtdumpRange {
    /// `[start, end)` to walk; an end of 0 means 2^64.
    pub fn bounds(self) -> (VirtAddr, VirtAddr) {
        let span = |base: u64, size: u64| (VirtAddr(base), VirtAddr(base.wrapping_add(size)));
        match self {
            PtdumpRange::All => (KERNEL_START, VirtAddr(0)),
            PtdumpRange::Region(r) => match r {
                Region::LinearMap => span(layout::PAGE_OFFSET, layout::LINEAR_MAP_SIZE),
                Region::KernelImage => span(layout::KIMAGE_VOFFSET, layout::KIMAGE_WINDOW),
                Region::Mmio => span(layout::MMIO_VBASE, layout::MMIO_SIZE),
                Region::Stacks => {
                    span(layout::STACKS_VBASE, layout::MAX_CPUS as u64 * layout::STACK_SLOT)
                }
                Region::Vmemmap => span(layout::VMEMMAP_START, layout::VMEMMAP_SIZE),
                Region::User | Region::Unused => (KERNEL_START, VirtAddr(0)),
            },
            PtdumpRange::Span { start, end } => (start, end),
        }
    }
}

/// One console command.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Command {
    /// `help`.
    Help,
    /// `nr_hugepages`: show both sizes; `nr_hugepages SIZE`: show one; `nr_hugepages SIZE N`:
    /// grow or shrink that pool to N folios.
    NrHugepages {
        /// The size, or both.
        size: Option<HugePageSize>,
        /// The new pool size, or show only.
        count: Option<u64>,
    },
    /// `demote SIZE N`: split N free folios of SIZE into folios of the next smaller size.
    Demote {
        /// The size demoted from.
        size: HugePageSize,
        /// How many.
        count: u64,
    },
    /// `hugetlb_optimize_vmemmap [on|off]`: set (or show) the HVO switch for new folios.
    HugetlbOptimizeVmemmap(Option<bool>),
    /// `meminfo`.
    Meminfo,
    /// `ptdump [RANGE]`.
    Ptdump(PtdumpRange),
    /// `hvo report`.
    HvoReport,
    /// `stress N`: N rounds of the four-core HVO stress test.
    Stress(u64),
    /// `exit` or `quit`: end the run with status 0.
    Exit,
}

/// Why `ptdump`'s range was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RangeReason {
    /// Not a region name nor `A..B`, `A-B`, `A+SIZE`.
    Syntax,
    /// An address is not a number.
    BadAddress,
    /// The size is not a size.
    BadSize,
    /// The start is not below the end (or the range wraps).
    Empty,
    /// The range starts below the kernel half (`0xffff000000000000`).
    NotKernel,
}

/// What is wrong with a line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ShellError<'a> {
    /// No such command.
    UnknownCommand(&'a str),
    /// A required argument is missing.
    MissingArgument {
        /// The command.
        command: &'static str,
        /// What it needs.
        what: &'static str,
    },
    /// More arguments than the command takes.
    TooManyArguments {
        /// The command.
        command: &'static str,
        /// The first extra one.
        extra: &'a str,
    },
    /// Not a size (`2M`, `1G`, `2048kB`, bytes).
    BadSize(&'a str),
    /// A size, but not a huge page size this machine has.
    UnsupportedSize {
        /// As typed.
        text: &'a str,
        /// In bytes.
        bytes: u64,
    },
    /// Not a number.
    BadNumber {
        /// What the number is.
        what: &'static str,
        /// As typed.
        text: &'a str,
    },
    /// Not `on`/`off` (or `1/0/y/n/yes/no/true/false`).
    BadSwitch(&'a str),
    /// `hvo` without `report`, or with something else.
    BadSubcommand {
        /// The command.
        command: &'static str,
        /// As typed (empty if missing).
        text: &'a str,
    },
    /// `ptdump`'s range.
    BadRange {
        /// As typed.
        text: &'a str,
        /// Why.
        reason: RangeReason,
    },
}

impl core::fmt::Display for ShellError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ShellError::UnknownCommand(c) => {
                write!(f, "unknown command `{c}` (type `help` for the list)")
            }
            ShellError::MissingArgument { command, what } => {
                write!(f, "{command}: missing {what} (type `help`)")
            }
            ShellError::TooManyArguments { command, extra } => {
                write!(f, "{command}: unexpected argument `{extra}` (type `help`)")
            }
            ShellError::BadSize(s) => {
                write!(
                    f,
                    "bad size `{s}`: give a huge page size, 2M or 1G (also 2048kB, 1048576kB)"
                )
            }
            ShellError::UnsupportedSize { text, bytes } => write!(
                f,
                "unsupported huge page size `{text}` ({bytes} bytes): this machine has 2M and 1G"
            ),
            ShellError::BadNumber { what, text } => {
                write!(f, "bad {what} `{text}`: give a decimal or 0x-hex number")
            }
            ShellError::BadSwitch(s) => write!(f, "bad value `{s}`: give on or off (1 or 0)"),
            ShellError::BadSubcommand { command, text: "" } => {
                write!(f, "{command}: missing subcommand (`{command} report`)")
            }
            ShellError::BadSubcommand { command, text } => {
                write!(f, "{command}: unknown subcommand `{text}` (`{command} report`)")
            }
            ShellError::BadRange { text, reason } => {
                let why = match reason {
                    RangeReason::Syntax => {
                        "give linear, image, mmio, stacks, vmemmap, START..END, START-END or START+SIZE"
                    }
                    RangeReason::BadAddress => "an address is not a number",
                    RangeReason::BadSize => "the size is not a size (4K, 2M, 0x1000, ...)",
                    RangeReason::Empty => "the start is not below the end",
                    RangeReason::NotKernel => {
                        "it starts below the kernel half (0xffff000000000000)"
                    }
                };
                write!(f, "ptdump: bad range `{text}`: {why}")
            }
        }
    }
}

/// The commands and what they do, for `help`.
pub const HELP: &[(&str, &str)] = &[
    ("nr_hugepages [SIZE [N]]", "show, or grow/shrink the SIZE (2M, 1G) pool to N folios"),
    ("demote SIZE N", "split N free SIZE folios into folios of the next smaller size"),
    ("hugetlb_optimize_vmemmap [on|off]", "HVO for folios allocated from now on"),
    ("meminfo", "memory and pool counters"),
    ("ptdump [RANGE]", "kernel page tables: all, linear|image|mmio|stacks|vmemmap, A..B, A+SIZE"),
    ("hvo report", "optimized folios, vmemmap in use and saved"),
    ("stress N", "N rounds of the four-core HVO stress test"),
    ("help", "this list"),
    ("exit | quit", "end the run (status 0)"),
];

/// Parses a huge page size: `2M`, `1G`, `2048k`, `2048kB`, `2097152`, ... (Linux's `memparse`
/// suffixes, plus the `kB` of the sysfs directory names).
pub fn parse_hugepage_size(text: &str) -> Result<HugePageSize, ShellError<'_>> {
    let t = text
        .strip_suffix(['B', 'b'])
        .filter(|t| t.ends_with(['k', 'K', 'm', 'M', 'g', 'G']))
        .unwrap_or(text);
    let bytes = parse_size(t).map_err(|_| ShellError::BadSize(text))?;
    HugePageSize::from_bytes(bytes).ok_or(ShellError::UnsupportedSize { text, bytes })
}

fn parse_count<'a>(what: &'static str, text: &'a str) -> Result<u64, ShellError<'a>> {
    parse_u64(text).map_err(|_: NumberError| ShellError::BadNumber { what, text })
}

fn parse_range(text: &str) -> Result<PtdumpRange, ShellError<'_>> {
    let bad = |reason| ShellError::BadRange { text, reason };
    let region = match text {
        "all" => return Ok(PtdumpRange::All),
        "linear" => Some(Region::LinearMap),
        "image" | "kernel" => Some(Region::KernelImage),
        "mmio" => Some(Region::Mmio),
        "stacks" => Some(Region::Stacks),
        "vmemmap" => Some(Region::Vmemmap),
        _ => None,
    };
    if let Some(r) = region {
        return Ok(PtdumpRange::Region(r));
    }
    let addr = |s: &str| parse_u64(s).map_err(|_| bad(RangeReason::BadAddress));
    let (start, end) = if let Some((a, b)) = text.split_once("..") {
        (addr(a)?, addr(b)?)
    } else if let Some((a, s)) = text.split_once('+') {
        let start = addr(a)?;
        let size = parse_size(s).map_err(|_| bad(RangeReason::BadSize))?;
        let end = start.checked_add(size);
        // Exactly to the top of the address space is allowed (end 0 = 2^64).
        match end {
            Some(e) => (start, e),
            None if start.wrapping_add(size) == 0 => (start, 0),
            None => return Err(bad(RangeReason::Empty)),
        }
    } else if let Some((a, b)) = text.split_once('-') {
        (addr(a)?, addr(b)?)
    } else {
        return Err(bad(RangeReason::Syntax));
    };
    if start < layout::PAGE_OFFSET {
        return Err(bad(RangeReason::NotKernel));
    }
    let page = crate::addr::PAGE_SIZE;
    let start = start & !(page - 1);
    // Round the end up to a page; 0 stays 0 (2^64), an end in the last page becomes 0.
    let end = if end == 0 { 0 } else { end.wrapping_add(page - 1) & !(page - 1) };
    if end != 0 && end <= start {
        return Err(bad(RangeReason::Empty));
    }
    Ok(PtdumpRange::Span { start: VirtAddr(start), end: VirtAddr(end) })
}

/// Parses one line. `Ok(None)`: an empty (or all-blank) line, nothing to do.
pub fn parse(line: &str) -> Result<Option<Command>, ShellError<'_>> {
    let mut words = line.split_ascii_whitespace();
    let Some(name) = words.next() else { return Ok(None) };
    let mut next = || words.next();
    let cmd = match name {
        "help" | "?" => {
            no_more("help", next())?;
            Command::Help
        }
        "nr_hugepages" => {
            let size = next().map(parse_hugepage_size).transpose()?;
            let count = next().map(|n| parse_count("number of pages", n)).transpose()?;
            no_more("nr_hugepages", next())?;
            Command::NrHugepages { size, count }
        }
        "demote" => {
            let size = next().ok_or(ShellError::MissingArgument {
                command: "demote",
                what: "SIZE (2M or 1G)",
            })?;
            let size = parse_hugepage_size(size)?;
            let count = next().ok_or(ShellError::MissingArgument {
                command: "demote",
                what: "N (number of folios)",
            })?;
            let count = parse_count("number of folios", count)?;
            no_more("demote", next())?;
            Command::Demote { size, count }
        }
        "hugetlb_optimize_vmemmap" => {
            let on = next().map(|v| parse_bool(v).ok_or(ShellError::BadSwitch(v))).transpose()?;
            no_more("hugetlb_optimize_vmemmap", next())?;
            Command::HugetlbOptimizeVmemmap(on)
        }
        "meminfo" => {
            no_more("meminfo", next())?;
            Command::Meminfo
        }
        "ptdump" => {
            let range = next().map(parse_range).transpose()?.unwrap_or(PtdumpRange::All);
            no_more("ptdump", next())?;
            Command::Ptdump(range)
        }
        "hvo" => match next() {
            Some("report") => {
                no_more("hvo", next())?;
                Command::HvoReport
            }
            other => {
                return Err(ShellError::BadSubcommand { command: "hvo", text: other.unwrap_or("") })
            }
        },
        "stress" => {
            let n = next().ok_or(ShellError::MissingArgument {
                command: "stress",
                what: "N (number of rounds)",
            })?;
            let n = parse_count("number of rounds", n)?;
            no_more("stress", next())?;
            Command::Stress(n)
        }
        "exit" | "quit" => {
            no_more(name_static(name), next())?;
            Command::Exit
        }
        other => return Err(ShellError::UnknownCommand(other)),
    };
    Ok(Some(cmd))
}

fn name_static(name: &str) -> &'static str {
    if name == "quit" {
        "quit"
    } else {
        "exit"
    }
}

fn no_more<'a>(command: &'static str, extra: Option<&'a str>) -> Result<(), ShellError<'a>> {
    match extra {
        Some(extra) => Err(ShellError::TooManyArguments { command, extra }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HugePageSize::{Size1G, Size2M};

    fn ok(line: &str) -> Command {
        parse(line).unwrap_or_else(|e| panic!("{line}: {e}")).expect("a command")
    }

    #[test]
    fn commands() {
        assert_eq!(parse("   "), Ok(None));
        assert_eq!(ok("help"), Command::Help);
        assert_eq!(
            ok("nr_hugepages 2M 16"),
            Command::NrHugepages { size: Some(Size2M), count: Some(16) }
        );
        assert_eq!(
            ok("  nr_hugepages   1G\t0x2 "),
            Command::NrHugepages { size: Some(Size1G), count: Some(2) }
        );
        assert_eq!(
            ok("nr_hugepages 2048kB"),
            Command::NrHugepages { size: Some(Size2M), count: None }
        );
        assert_eq!(ok("nr_hugepages"), Command::NrHugepages { size: None, count: None });
        assert_eq!(ok("demote 1G 1"), Command::Demote { size: Size1G, count: 1 });
        assert_eq!(
            ok("hugetlb_optimize_vmemmap off"),
            Command::HugetlbOptimizeVmemmap(Some(false))
        );
        assert_eq!(ok("hugetlb_optimize_vmemmap 1"), Command::HugetlbOptimizeVmemmap(Some(true)));
        assert_eq!(ok("hugetlb_optimize_vmemmap"), Command::HugetlbOptimizeVmemmap(None));
        assert_eq!(ok("meminfo"), Command::Meminfo);
        assert_eq!(ok("hvo report"), Command::HvoReport);
        assert_eq!(ok("stress 3"), Command::Stress(3));
        assert_eq!(ok("exit"), Command::Exit);
        assert_eq!(ok("quit"), Command::Exit);
    }

    #[test]
    fn ptdump_ranges() {
        assert_eq!(ok("ptdump"), Command::Ptdump(PtdumpRange::All));
        assert_eq!(ok("ptdump vmemmap"), Command::Ptdump(PtdumpRange::Region(Region::Vmemmap)));
        let r = PtdumpRange::Region(Region::Vmemmap).bounds();
        assert_eq!(
            r,
            (VirtAddr(layout::VMEMMAP_START), VirtAddr(layout::VMEMMAP_START + (1 << 41)))
        );
        assert_eq!(
            ok("ptdump 0xffff000000000000..0xffff000000200000"),
            Command::Ptdump(PtdumpRange::Span {
                start: VirtAddr(0xffff_0000_0000_0000),
                end: VirtAddr(0xffff_0000_0020_0000)
            })
        );
        // Aligned outwards; A+SIZE; to the very top.
        assert_eq!(
            ok("ptdump 0xfffffc0000000010+2M"),
            Command::Ptdump(PtdumpRange::Span {
                start: VirtAddr(0xffff_fc00_0000_0000),
                end: VirtAddr(0xffff_fc00_0020_1000)
            })
        );
        assert_eq!(
            ok("ptdump 0xfffffffffffff000+4K"),
            Command::Ptdump(PtdumpRange::Span {
                start: VirtAddr(0xffff_ffff_ffff_f000),
                end: VirtAddr(0)
            })
        );
        for (text, reason) in [
            ("nonsense", RangeReason::Syntax),
            ("0xzz..0x1", RangeReason::BadAddress),
            ("0xffff000000000000+2Q", RangeReason::BadSize),
            ("0xffff000000200000..0xffff000000000000", RangeReason::Empty),
            ("0xfffffffffffff000+8K", RangeReason::Empty),
            ("0x1000..0x2000", RangeReason::NotKernel),
        ] {
            assert_eq!(
                parse(&std::format!("ptdump {text}")),
                Err(ShellError::BadRange { text, reason }),
                "{text}"
            );
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = |l: &'static str| parse(l).unwrap_err();
        assert_eq!(e("frobnicate 3"), ShellError::UnknownCommand("frobnicate"));
        assert_eq!(
            e("nr_hugepages 3M 4"),
            ShellError::UnsupportedSize { text: "3M", bytes: 3 << 20 }
        );
        assert_eq!(
            e("nr_hugepages 64K 4"),
            ShellError::UnsupportedSize { text: "64K", bytes: 65536 }
        );
        assert_eq!(e("nr_hugepages huge 4"), ShellError::BadSize("huge"));
        assert_eq!(
            e("nr_hugepages 2M lots"),
            ShellError::BadNumber { what: "number of pages", text: "lots" }
        );
        assert_eq!(
            e("nr_hugepages 2M -1"),
            ShellError::BadNumber { what: "number of pages", text: "-1" }
        );
        assert_eq!(
            e("nr_hugepages 2M 99999999999999999999"),
            ShellError::BadNumber { what: "number of pages", text: "99999999999999999999" }
        );
        assert_eq!(
            e("nr_hugepages 2M 4 5"),
            ShellError::TooManyArguments { command: "nr_hugepages", extra: "5" }
        );
        assert_eq!(
            e("demote 1G"),
            ShellError::MissingArgument { command: "demote", what: "N (number of folios)" }
        );
        assert_eq!(e("hugetlb_optimize_vmemmap maybe"), ShellError::BadSwitch("maybe"));
        assert_eq!(e("hvo"), ShellError::BadSubcommand { command: "hvo", text: "" });
        assert_eq!(e("hvo status"), ShellError::BadSubcommand { command: "hvo", text: "status" });
        assert_eq!(e("exit now"), ShellError::TooManyArguments { command: "exit", extra: "now" });
        assert_eq!(
            std::format!("{}", e("frobnicate")),
            "unknown command `frobnicate` (type `help` for the list)"
        );
        assert!(std::format!("{}", e("nr_hugepages 64K 1")).contains("this machine has 2M and 1G"));
    }

    #[test]
    fn help_names_every_command() {
        for name in [
            "nr_hugepages",
            "demote",
            "hugetlb_optimize_vmemmap",
            "meminfo",
            "ptdump",
            "hvo report",
            "stress",
            "help",
            "exit",
        ] {
            assert!(HELP.iter().any(|(u, _)| u.starts_with(name)), "{name}");
        }
    }
}
