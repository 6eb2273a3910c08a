//! `cargo xtask test`: host tests, on-target runs under QEMU and the SD-card check.
//!
//! The on-target protocol (in the decoded log text): one line per test containing
//! `ktest: PASS <name>` or `ktest: FAIL <name>: <reason>`, then a line containing
//! `ktest: summary passed=<N> failed=<M>`; the firmware exits with status 0 if all passed.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::decode::{DefmtInfo, LogLine};
use crate::firmware::{self, BuildOptions};
use crate::qemu::{self, Outcome, QemuConfig};
use crate::{sdcard, Board};

/// One boot of the ktest firmware under QEMU.
#[derive(Clone, Copy, Debug)]
pub struct TargetRun {
    /// Name of the run (prefix of its test names, and the name of its extra failure).
    pub name: &'static str,
    /// Boot arguments (QEMU `-append`).
    pub bootargs: &'static str,
    /// A `-dtb`, relative to the project root; `None` boots with ATAGs.
    pub dtb: Option<&'static str>,
    /// Kill QEMU after this many seconds.
    pub timeout_secs: u64,
    /// Text the decoded log must contain; each is counted as one test (`<run>/log: <text>`).
    /// A run whose boot arguments lack `ktest` is a demonstration boot: it is judged by these
    /// and its exit status only.
    pub expect: &'static [&'static str],
    /// The exit status a demonstration boot must end with (ktest runs: 0 when all pass).
    pub status: i32,
}

impl TargetRun {
    /// Does this run execute the on-target test cases?
    pub fn is_ktest(&self) -> bool {
        self.bootargs.split_whitespace().any(|a| a == "ktest" || a.starts_with("ktest="))
    }
}

/// Boot arguments of the real-device-tree runs: the tests that depend on the memory map and the
/// console (a 1 GiB folio does not fit in the 960 MiB QEMU writes into a device tree, so
/// `mem_gigantic_1g_folio` is left out), with the tree's banks trusted.
const DT_KTEST_ARGS: &str = "ktest=mem_pfn,mem_conservation,mem_whole_2m,mem_bad,mem_hotplug,\
                             kmap_ memhp_reserve=256M dt_memory";

/// The on-target runs, in order.
pub const TARGET_RUNS: &[TargetRun] = &[
    TargetRun {
        name: "atags",
        bootargs: "ktest memhp_reserve=256M",
        dtb: None,
        timeout_secs: 300,
        expect: &[],
        status: 0,
    },
    TargetRun {
        name: "dtb",
        bootargs: "ktest memhp_reserve=256M",
        dtb: Some("../shared/fixtures/bcm2711-rpi-4-b.dtb"),
        timeout_secs: 300,
        expect: &["boot info: Dtb of", "device tree: "],
        status: 0,
    },
    // Real Pi 4 family device trees (Debian's arm64 kernel package), their memory map trusted
    // (`dt_memory`): QEMU writes one 960 MiB bank into each.
    TargetRun {
        name: "dt-rpi-4-b",
        bootargs: DT_KTEST_ARGS,
        dtb: Some(DTB_FIXTURE),
        timeout_secs: 300,
        expect: &[
            "model Some(\"Raspberry Pi 4 Model B\")",
            "memory: 1 region(s) from Dtb",
            "  RAM 0x0..0x3c000000 (960 MiB)",
            " memhp_reserve=256M dt_memory\"",
            "device tree: serial0 = /soc/serial@7e201000 (arm,pl011) at 0xfe201000: the UART",
        ],
        status: 0,
    },
    TargetRun {
        name: "dt-rpi-400",
        bootargs: DT_KTEST_ARGS,
        dtb: Some("boards/rpi4/dtbs/bcm2711-rpi-400.dtb"),
        timeout_secs: 300,
        expect: &[
            "model Some(\"Raspberry Pi 400\")",
            "memory: 1 region(s) from Dtb",
            "  RAM 0x0..0x3c000000 (960 MiB)",
            " memhp_reserve=256M dt_memory\"",
            "device tree: serial0 = /soc/serial@7e201000 (arm,pl011) at 0xfe201000: the UART",
        ],
        status: 0,
    },
    TargetRun {
        name: "dt-rpi-cm4-io",
        bootargs: DT_KTEST_ARGS,
        dtb: Some("boards/rpi4/dtbs/bcm2711-rpi-cm4-io.dtb"),
        timeout_secs: 300,
        expect: &[
            "model Some(\"Raspberry Pi Compute Module 4 IO Board\")",
            "memory: 1 region(s) from Dtb",
            "  RAM 0x0..0x3c000000 (960 MiB)",
            " memhp_reserve=256M dt_memory\"",
            "device tree: serial0 = /soc/serial@7e201000 (arm,pl011) at 0xfe201000: the UART",
        ],
        status: 0,
    },
    TargetRun {
        name: "hugetlb",
        bootargs: "ktest memhp_reserve=256M hugepagesz=2M hugepages=64 hugepagesz=1G hugepages=1",
        dtb: None,
        timeout_secs: 300,
        expect: &[],
        status: 0,
    },
    TargetRun {
        name: "hvo-off",
        bootargs: "ktest=hvo memhp_reserve=256M hugetlb_free_vmemmap=off hugepagesz=2M hugepages=8",
        dtb: None,
        timeout_secs: 300,
        expect: &["hvo: boot param false, 1 pool folio(s) checked"],
        status: 0,
    },
    // Four cores (issue 9): the stress test per strategy (`none` must fail, checked by its
    // test case), the concurrent split, the freeze control, the fault-wait refusal, the auditor.
    TargetRun {
        name: "bbm",
        bootargs: "ktest=bbm_ hugepagesz=2M hugepages=16 hugepagesz=1G hugepages=1",
        dtb: None,
        timeout_secs: 600,
        expect: &[
            "result: smp strategy=stop-machine cycles=2 ",
            "result: smp strategy=pause-window cycles=2 ",
            "result: smp strategy=fault-wait cycles=2 ",
            "result: smp strategy=none cycles=2 ",
            "result: smp-split strategy=fault-wait ",
        ],
        status: 0,
    },
    // Demonstration boots: what `cargo xtask run -- ARGS` prints, checked.
    TargetRun {
        name: "bootargs",
        bootargs: "hugepages=8 bogus==",
        dtb: None,
        timeout_secs: 300,
        expect: &[
            "command line: \"hugepages=8 bogus==\"",
            "command line: ignored: Unknown { option: \"bogus==\" }",
            "HugeTLB: 8 hugepages of size 2M pre-allocated",
            "SMP: 4 of 4 cores online (mask 0xf)",
        ],
        status: 0,
    },
    // memhp_reserve= never holds back memory the boot needs (issue 10 item 1): the first GiB
    // holds the kernel, so 1G comes from the second bank; with the Pi 4 DTB at 0x8000000, 896M
    // cannot fit above it in the first bank either.
    TargetRun {
        name: "memhp-1g",
        bootargs: "memhp_reserve=1G",
        dtb: None,
        timeout_secs: 300,
        expect: &[
            "memory hot-plug: 0x0..0x40000000 holds 0x80000..",
            "memory hot-plug: holding back 0x40000000..0x80000000 (1024 MiB) to hot-add later",
            "memory hot-plug: added 0x40000000..0x80000000",
        ],
        status: 0,
    },
    TargetRun {
        name: "memhp-dtb-896m",
        bootargs: "memhp_reserve=896M",
        dtb: Some("../shared/fixtures/bcm2711-rpi-4-b.dtb"),
        timeout_secs: 300,
        expect: &[
            "memory hot-plug: 0x8000000..0x40000000 holds 0x8000000..",
            "memory hot-plug: holding back 0x48000000..0x80000000 (896 MiB) to hot-add later",
            "memory hot-plug: added 0x48000000..0x80000000",
        ],
        status: 0,
    },
    TargetRun {
        name: "hugepages-bad",
        bootargs:
            "hugepagesz=1G hugepages=3 hugepagesz=64K hugepages=2 hugepagesz=2M hugepages=5000",
        dtb: None,
        timeout_secs: 300,
        expect: &[
            "ignored: Malformed { option: \"hugepagesz=64K\", reason: UnsupportedHugePageSize }",
            "ignored: Malformed { option: \"hugepages=2\", reason: NoValidHugepagesz }",
            "HugeTLB: allocating 2 of 3 hugepages of size 1G failed: memory allows only 1",
            "hugepages of size 2M failed: memory allows only",
        ],
        status: 0,
    },
    TargetRun {
        name: "ptdump",
        bootargs: "ptdump",
        dtb: None,
        timeout_secs: 300,
        expect: &[
            "---[ Linear Mapping ]---",
            "2046M BLK 2M RW     PXN UXN    Normal [Linear Mapping]",
            "K PTE 4K ro     PXN UXN    Normal [Linear Mapping]",
            "PTE 4K ro     x   UXN    Normal [Kernel Image]",
            "PTE 4K RW     PXN UXN    Normal [Kernel Image]",
            "BLK 2M RW     PXN UXN    Device [MMIO]",
        ],
        status: 0,
    },
    TargetRun {
        name: "hvo-2m",
        bootargs: "hugepagesz=2M hugepages=64",
        dtb: None,
        timeout_secs: 300,
        expect: &[
            "HugeTLB: 28 KiB vmemmap can be freed for a 2.00 MiB page",
            "result: hvo size=2M folios=64 freed_pages=448 ",
            " restore_ok=64",
        ],
        status: 0,
    },
    TargetRun {
        name: "hvo-1g",
        bootargs: "hugepagesz=1G hugepages=1",
        dtb: None,
        timeout_secs: 300,
        expect: &[
            "HugeTLB: 16380 KiB vmemmap can be freed for a 1.00 GiB page",
            "result: hvo size=1G folios=1 freed_pages=4095 ",
            " restore_ok=1",
            // The control for `preinit`: blocks populated, 8 live splits.
            "result: preinit off folios=1 vmemmap_peak_kib=32768 ",
            " splits=8 optimized_now=1",
        ],
        status: 0,
    },
    // A 1 GiB folio optimized from boot (issue 13 item 2, Linux 6.15's HUGETLB_VMEMMAP_PREINIT):
    // its 16 MiB of vmemmap never allocated, and HVO finds nothing to split.
    TargetRun {
        name: "preinit",
        bootargs: "hugepagesz=1G hugepages=1 hugetlb_vmemmap_preinit=on",
        dtb: None,
        timeout_secs: 300,
        expect: &[
            "reserved 0x40000000..0x80000000 HugetlbBoot",
            "vmemmap: 8 x 2M block(s) mapping 16 MiB of descriptors",
            "hugetlb_vmemmap_preinit: 1G folio at 0x40000000: 4096 vmemmap pages (4095 read-only) onto one frame",
            "result: hvo size=1G folios=1 freed_pages=0 tlbi=0 splits=0 restore_ok=0 restore_skipped=1",
            "result: preinit on folios=1 vmemmap_peak_kib=16388 ",
            " splits=0 optimized_now=0",
        ],
        status: 0,
    },
    TargetRun {
        name: "hvo-disabled",
        bootargs: "hugetlb_free_vmemmap=off hugepagesz=2M hugepages=64",
        dtb: None,
        timeout_secs: 300,
        expect: &[
            "HugeTLB: 0 KiB vmemmap can be freed for a 2.00 MiB page",
            "result: hvo size=2M folios=64 freed_pages=0 ",
        ],
        status: 0,
    },
    // The serial console (issue 13 item 4): driven through QEMU's serial input with the script
    // in CONSOLE_INPUT, written once `console: ready` is logged.
    TargetRun {
        name: "console",
        bootargs: "console hugepagesz=2M hugepages=4",
        dtb: None,
        timeout_secs: 300,
        expect: &[
            "console: ready",
            "console: nr_hugepages [SIZE [N]] - show, or grow/shrink",
            "console> nr_hugepages 2M 16",
            "console: nr_hugepages 2M: 12 folio(s) allocated, 12 optimized (vm.hugetlb_optimize_vmemmap = 1)",
            "by the buddy free count, 84 tail entries remapped;",
            "every pfn's head/tail answer: 0 wrong",
            "console: nr_hugepages 2M = 16 (was 4;",
            "meminfo: HugePages 2M: total 16 free 16 (32768 kB)",
            "console: hvo 2M: 16 folio(s) in the pool, 16 optimized, 448 KiB of vmemmap freed",
            "console: nr_hugepages 2M: 12 folio(s) dissolved, 12 of them restored first",
            "console:   buddy free count +6060 pages = 12 x 512 folio pages - 12 x 7 vmemmap frames taken back by restore (6060): agree",
            "console: conservation: every RAM frame accounted for",
            "meminfo: HugePages 2M: total 4 free 4 (8192 kB)",
            "console: vm.hugetlb_optimize_vmemmap = 0: folios allocated from now on are not optimized",
            "console: nr_hugepages 2M: 4 folio(s) allocated, 0 optimized (vm.hugetlb_optimize_vmemmap = 0)",
            "console: hvo 2M: 8 folio(s) in the pool, 4 optimized",
            "optimized folio(s) found in the pools, HVO's counter says 4: agree",
            "HugeTLB: allocating ",
            " of 100000 hugepages of size 2M failed: memory allows only ",
            "console: nr_hugepages 2M = 0 (was ",
            "console: nr_hugepages 1G: 1 folio(s) allocated, 1 optimized",
            "4095 by the buddy free count, 4095 tail entries remapped;",
            "console: nr_hugepages 1G: 1 folio(s) dissolved, 1 of them restored first",
            "= 1 x 262144 folio pages - 1 x 4095 vmemmap frames taken back by restore (258049): agree",
            "unknown command `frobnicate` (type `help` for the list)",
            "unsupported huge page size `3M` (3145728 bytes): this machine has 2M and 1G",
            "bad number of pages `lots`: give a decimal or 0x-hex number",
            "hugetlb_optimize_vmemmap: unexpected argument `maybe`",
            "console: demote 1G: 1 folio demoted into 512 2M folio(s), 512 optimized (direct, no restore)",
            "console:   vmemmap frames: buddy free count -511, allocated 511 freed 0 page tables 0 (-511): agree; entries remapped 4088 restored 0, TLBI 1 (1 full), DSB 3, break windows 1",
            "console:   every pfn's head/tail answer: 0 wrong: agree",
            "console: nr_hugepages 2M = 512 (free 512, vmemmap optimized 512)",
            "console: demote 1G: NoFreeFolio",
            "console: demote 2M: NoSmallerSize",
            "stress: 1 cycle(s) with hvo_bbm=fault-wait",
            "result: smp strategy=fault-wait cycles=1 ",
            "ptdump: kernel page tables (init_mm, TTBR1) 0xfffffc0000000000..0xfffffe0000000000",
            "---[ vmemmap ]---",
            "console> nr_hugepages 1G",
            "console: nr_hugepages 1G = 0 (free 0, vmemmap optimized 0)",
            "console: ^C: line dropped",
            "line has 1 byte(s) that are not printable ASCII (first 0x01); ignored",
            "console: exit: ending the run with status 0",
        ],
        status: 0,
    },
    // Bad boot input (issue 10): the boot goes on, with a warning, and nothing crashes.
    TargetRun {
        name: "dtb-alias-loop",
        bootargs: "hugepages=4",
        // /aliases that recursed the fdt crate's lookup forever, /chosen aliased to a node whose
        // bootargs say crash=panic, and zero-size/wrapping /memreserve/ entries.
        dtb: Some("kcore/tests/dtb/alias-loop-bad-memreserve.dtb"),
        timeout_secs: 300,
        expect: &["boot info: Dtb of", "HugeTLB: 4 hugepages of size 2M pre-allocated"],
        status: 0,
    },
    TargetRun {
        name: "atag-long-cmdline",
        // 585 characters: QEMU's boot code at 0x300 overwrites the ATAG text past ~466.
        bootargs: concat!(
            "hugepagesz=2M hugepages=4 ",
            "o01.x=1 o02.x=1 o03.x=1 o04.x=1 o05.x=1 o06.x=1 o07.x=1 o08.x=1 o09.x=1 o10.x=1 ",
            "o11.x=1 o12.x=1 o13.x=1 o14.x=1 o15.x=1 o16.x=1 o17.x=1 o18.x=1 o19.x=1 o20.x=1 ",
            "o21.x=1 o22.x=1 o23.x=1 o24.x=1 o25.x=1 o26.x=1 o27.x=1 o28.x=1 o29.x=1 o30.x=1 ",
            "o31.x=1 o32.x=1 o33.x=1 o34.x=1 o35.x=1 o36.x=1 o37.x=1 o38.x=1 o39.x=1 o40.x=1 ",
            "o41.x=1 o42.x=1 o43.x=1 o44.x=1 o45.x=1 o46.x=1 o47.x=1 o48.x=1 o49.x=1 o50.x=1 ",
            "o51.x=1 o52.x=1 o53.x=1 o54.x=1 o55.x=1 o56.x=1 o57.x=1 o58.x=1 o59.x=1 o60.x=1 ",
            "o61.x=1 o62.x=1 o63.x=1 o64.x=1 o65.x=1 o66.x=1 o67.x=1 o68.x=1 o69.x=1 o70.x=1"
        ),
        dtb: None,
        timeout_secs: 300,
        expect: &["command line TRUNCATED", "HugeTLB: 4 hugepages of size 2M pre-allocated"],
        status: 0,
    },
    TargetRun {
        name: "stress",
        bootargs: "stress=2 hvo_bbm=fault-wait hugepagesz=2M hugepages=16",
        dtb: None,
        timeout_secs: 300,
        expect: &[
            "stress: 2 cycle(s) with hvo_bbm=fault-wait",
            "result: smp strategy=fault-wait cycles=2 ",
            " wrong=0 unexpected_faults=0 leaked=0 ",
        ],
        status: 0,
    },
    // The shared tail design (issue 13 item 1): HVO's on-target tests and the four-core stress
    // run with `hvo_tails=shared`.
    TargetRun {
        name: "tails-shared",
        bootargs: "ktest=hvo_ hvo_tails=shared memhp_reserve=256M stress=1 hvo_bbm=fault-wait hugepagesz=2M hugepages=64 hugepagesz=1G hugepages=1",
        dtb: None,
        timeout_secs: 300,
        expect: &[
            "HVO tail design: shared",
            "result: smp strategy=fault-wait cycles=1 ",
            " wrong=0 unexpected_faults=0 leaked=0 ",
        ],
        status: 0,
    },
    // One short run of `cargo xtask bench`'s firmware mode, so it cannot rot; its figures are
    // not judged here (debug build, no -icount).
    TargetRun {
        name: "bench",
        bootargs: "bench",
        dtb: None,
        timeout_secs: 300,
        expect: &[
            "bench: run size=2M hvo=on mode=batched",
            "bench: run size=1G hvo=on mode=single",
            "bench: done ok=1",
        ],
        status: 0,
    },
    // The four-core part of the benchmark (`bench hvo_bbm=S`: every strategy and the readers'
    // baseline on 16 x 2 MiB folios); figures not judged.
    TargetRun {
        name: "bench-smp",
        bootargs: "bench hvo_bbm=fault-wait",
        dtb: None,
        timeout_secs: 300,
        expect: &[
            "bench: smp strategy=stop-machine ",
            "bench: smp strategy=fault-wait ",
            "bench: smp strategy=baseline ",
            "bench: done ok=1",
        ],
        status: 0,
    },
    TargetRun {
        name: "crash-fault",
        bootargs: "crash=fault",
        dtb: None,
        timeout_secs: 300,
        expect: &[
            "exception: SyncCurrent class=data abort at current EL (0x25) ESR=0x96000004",
            "translation fault level=Some(0) read FAR=0xffffee0000000040",
            "panicked at firmware/src/arch/aarch64/exception.rs",
        ],
        status: 101,
    },
    TargetRun {
        name: "crash-udf",
        bootargs: "crash=udf",
        dtb: None,
        timeout_secs: 300,
        expect: &["class=unknown/undefined instruction (0x0) ESR=0x2000000"],
        status: 101,
    },
    TargetRun {
        name: "crash-panic",
        bootargs: "crash=panic",
        dtb: None,
        timeout_secs: 300,
        expect: &["panicked at firmware/src/init.rs:", "crash=panic on the command line"],
        status: 101,
    },
];

/// Serial input for runs that take it (by run name): written to QEMU's stdin once the firmware
/// logs `console: ready`.
pub const CONSOLE_INPUT: &[(&str, &str)] = &[(
    "console",
    concat!(
        "help\n",
        "nr_hugepages 2M 16\n",
        "meminfo\n",
        "hvo report\n",
        "nr_hugepages 2M 4\n",
        "meminfo\n",
        "hugetlb_optimize_vmemmap off\n",
        "nr_hugepages 2M 8\n",
        "hvo report\n",
        "hugetlb_optimize_vmemmap on\n",
        "nr_hugepages 2M 100000\n",
        "nr_hugepages 2M 0\n",
        "nr_hugepages 1G 1\n",
        "nr_hugepages 1G 0\n",
        "frobnicate\n",
        "nr_hugepages 3M 1\n",
        "nr_hugepages 2M lots\n",
        "hugetlb_optimize_vmemmap on maybe\n",
        "nr_hugepages 1G 1\n",
        "demote 1G 1\n",
        "demote 1G 1\n",
        "demote 2M 1\n",
        "nr_hugepages 2M 8\n",
        "stress 1\n",
        "nr_hugepages 2M 0\n",
        "ptdump vmemmap\n",
        // Editing: DEL, then Ctrl-U, then Ctrl-C, then a control byte.
        "nr_hugepages 1Q\x7fG\n",
        "garbage\x15",
        "nr_hugepages 2M 999\x03",
        "mem\x01info\n",
        "exit\n",
    ),
)];

/// The scripted serial input of the run `name`, if it has one.
pub fn console_input(name: &str) -> Option<&'static str> {
    CONSOLE_INPUT.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// The `rpi4` image (release, as on the SD card) under QEMU with the real Pi 4 device tree: the
/// board has no semihosting, so the run ends at the firmware's final line.
pub const RPI4_RUN: TargetRun = TargetRun {
    name: "rpi4-qemu",
    bootargs: "hugepagesz=2M hugepages=16",
    dtb: Some(DTB_FIXTURE),
    timeout_secs: 300,
    expect: &[
        "pi4-hvo 0.1.0 on board rpi4",
        "model Some(\"Raspberry Pi 4 Model B\")",
        "device tree: serial0 = /soc/serial@7e201000 (arm,pl011) at 0xfe201000: the UART this \
         firmware logs on",
        "device tree: stdout-path serial1 = /soc/serial@7e215040 (brcm,bcm2835-aux-uart)",
        "command line: \"hugepagesz=2M hugepages=16\"",
        "  RAM 0x0..0x3c000000 (960 MiB)",
        "result: hvo size=2M folios=16 freed_pages=112 ",
        "end of run: status 0; no semihosting here, core 0 waits in WFE",
    ],
    status: 0,
};

/// The DTB put on the SD image by the `sdcard` check, relative to the project root.
pub const DTB_FIXTURE: &str = "../shared/fixtures/bcm2711-rpi-4-b.dtb";

/// Arguments of `cargo xtask test`.
#[derive(clap::Args)]
pub struct Args {
    /// Only host tests whose name contains STR (cargo test's filter), only on-target runs and
    /// checks (`atags`, `dtb`, `hugetlb`, `sdcard`) whose name contains STR.
    #[arg(long, value_name = "STR")]
    filter: Option<String>,
    /// Do not install missing system packages; print the commands instead.
    #[arg(long)]
    no_install: bool,
    /// Print every firmware log line, not only the test results.
    #[arg(long, short)]
    verbose: bool,
}

/// Pass and fail counts, and the names of the failures.
#[derive(Debug, Default)]
struct Tally {
    passed: u64,
    failed: u64,
    failures: Vec<String>,
}

impl Tally {
    fn pass(&mut self, name: &str) {
        println!("PASS {name}");
        self.passed += 1;
    }

    fn fail(&mut self, name: &str, reason: &str) {
        println!("FAIL {name}: {reason}");
        self.failed += 1;
        self.failures.push(format!("{name} ({reason})"));
    }
}

/// Run the command.
pub fn main(args: Args) -> Result<ExitCode> {
    let started = Instant::now();
    let selected = |name: &str| args.filter.as_deref().is_none_or(|f| name.contains(f));
    let mut tally = Tally::default();

    section("tools: QEMU, mtools, Pi 4 firmware; rustc target");
    crate::setup::ensure(crate::setup::FOR_TEST, args.no_install)?;
    firmware::ensure_target()?;

    section("host tests: cargo test --workspace");
    host_tests(args.filter.as_deref(), &mut tally)?;

    let runs: Vec<&TargetRun> = TARGET_RUNS.iter().filter(|r| selected(r.name)).collect();
    if !runs.is_empty() {
        section("on-target tests: qemu-raspi4b, feature ktest");
        target_tests(&runs, args.verbose, &mut tally);
    }

    if selected(RPI4_RUN.name) || selected("monitor") {
        section("rpi4 image under QEMU: real Pi 4 device tree, ends at its final line");
        match firmware::build(&BuildOptions {
            board: Board::Rpi4,
            release: true,
            ..Default::default()
        })
        .and_then(|fw| Ok((DefmtInfo::load(&fw.elf)?, fw)))
        {
            Ok((info, fw)) => {
                let report = boot_and_judge(&RPI4_RUN, &fw.image, &info, args.verbose, &mut tally);
                {
                    section("monitor: the rpi4 run's UART bytes through a pseudo-terminal");
                    match report.map(|r| monitor_check(&r, &info)) {
                        Some(Ok(n)) => tally.pass(&format!("monitor ({n} lines decoded alike)")),
                        Some(Err(err)) => tally.fail("monitor", &format!("{err:#}")),
                        None => tally.fail("monitor", "not run: the rpi4 run did not boot"),
                    }
                }
            }
            Err(err) => tally.fail(RPI4_RUN.name, &format!("not run: {err:#}")),
        }
    }

    if selected("sdcard") {
        section("sdcard: real image checked with mtools");
        match sdcard_check() {
            Ok(None) => tally.pass("sdcard"),
            Ok(Some(skip)) => println!("SKIP sdcard: {skip}"),
            Err(err) => tally.fail("sdcard", &format!("{err:#}")),
        }
    }

    section("summary");
    if !tally.failures.is_empty() {
        println!("failures:");
        for f in &tally.failures {
            println!("  {f}");
        }
    }
    println!("took {:.0} s", started.elapsed().as_secs_f64());
    println!("{} passed, {} failed", tally.passed, tally.failed);
    Ok(if tally.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn section(title: &str) {
    println!("\n=== {title}");
}

/// Run `cargo test --workspace`, streaming its output and adding up its `test result:` lines.
fn host_tests(filter: Option<&str>, tally: &mut Tally) -> Result<()> {
    let mut cmd = Command::new(firmware::cargo());
    cmd.args(["test", "--workspace"])
        .current_dir(firmware::project_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(f) = filter {
        cmd.args(["--", f]);
    }
    let mut child = cmd.spawn().context("could not start cargo test")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some((p, f)) = parse_test_result(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("--- host tests: {passed} passed, {failed} failed ({status})");
    tally.passed += passed;
    tally.failed += failed;
    if failed > 0 {
        tally.failures.push(format!("host tests ({failed})"));
    }
    if !status.success() && failed == 0 {
        tally.fail(
            "host-tests",
            &format!("cargo test --workspace failed ({status}) without a failing test; see above"),
        );
    }
    Ok(())
}

/// Parse cargo's `test result: ok. N passed; M failed; ...` line.
pub fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let rest = rest.split_once(". ")?.1;
    let mut passed = None;
    let mut failed = None;
    for part in rest.split(';') {
        let mut words = part.split_whitespace();
        let n = words.next().and_then(|n| n.parse().ok());
        match words.next() {
            Some("passed") => passed = n,
            Some("failed") => failed = n,
            _ => {}
        }
    }
    Some((passed?, failed?))
}

/// A `ktest:` line of the firmware's test protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KtestEvent {
    /// `ktest: PASS <name>`.
    Pass(String),
    /// `ktest: FAIL <name>: <reason>`.
    Fail {
        /// The test.
        name: String,
        /// Why it failed.
        reason: String,
    },
    /// `ktest: summary passed=<N> failed=<M>`.
    Summary {
        /// The firmware's count of passed tests.
        passed: u64,
        /// The firmware's count of failed tests.
        failed: u64,
    },
}

/// Parse a log message for the test protocol.
pub fn parse_ktest(message: &str) -> Option<KtestEvent> {
    let rest = &message[message.find("ktest: ")? + "ktest: ".len()..];
    if let Some(rest) = rest.strip_prefix("PASS ") {
        let name = rest.split_whitespace().next()?;
        Some(KtestEvent::Pass(name.to_string()))
    } else if let Some(rest) = rest.strip_prefix("FAIL ") {
        // The name is the first word (test names may contain `::`), minus a trailing `:`.
        let (word, reason) =
            rest.trim_start().split_once(char::is_whitespace).unwrap_or((rest.trim(), ""));
        let name = word.strip_suffix(':').unwrap_or(word);
        if name.is_empty() {
            return None;
        }
        Some(KtestEvent::Fail { name: name.to_string(), reason: reason.trim().to_string() })
    } else if let Some(rest) = rest.strip_prefix("summary ") {
        let mut passed = None;
        let mut failed = None;
        for word in rest.split_whitespace() {
            if let Some(n) = word.strip_prefix("passed=") {
                passed = n.parse().ok();
            } else if let Some(n) = word.strip_prefix("failed=") {
                failed = n.parse().ok();
            }
        }
        Some(KtestEvent::Summary { passed: passed?, failed: failed? })
    } else {
        None
    }
}

/// What one on-target run produced.
#[derive(Debug)]
pub struct RunReport {
    /// Names of passed tests.
    pub passes: Vec<String>,
    /// Failed tests and reasons.
    pub fails: Vec<(String, String)>,
    /// The summary line, if seen.
    pub summary: Option<(u64, u64)>,
    /// How QEMU ended.
    pub outcome: Outcome,
    /// The last log line.
    pub last_line: Option<String>,
    /// For each of the run's `expect` strings: was it in the log?
    pub found: Vec<bool>,
    /// The UART bytes as QEMU delivered them.
    pub raw: Vec<u8>,
    /// Every decoded line, as `run` prints it.
    pub lines: Vec<String>,
}

impl RunReport {
    fn new(outcome: Outcome) -> Self {
        Self {
            passes: Vec::new(),
            fails: Vec::new(),
            summary: None,
            outcome,
            last_line: None,
            found: Vec::new(),
            raw: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// Why the run as a whole failed, beyond its FAIL lines (counted as one extra failure).
    pub fn run_failure(&self, timeout_secs: u64, ktest: bool, status: i32) -> Option<String> {
        let mut reasons = Vec::new();
        match self.outcome {
            Outcome::TimedOut => {
                reasons.push(crate::run::timeout_message(timeout_secs, self.last_line.as_deref()))
            }
            Outcome::Signalled => reasons.push("QEMU was killed by a signal".to_string()),
            Outcome::Exited(code) if !ktest && code != status => {
                reasons.push(format!("firmware exited with status {code}, expected {status}"))
            }
            Outcome::Exited(code) if ktest && code != 0 && self.fails.is_empty() => {
                reasons.push(format!("firmware exited with status {code} without a FAIL line"))
            }
            Outcome::Exited(_) => {}
        }
        if ktest && self.passes.is_empty() && self.fails.is_empty() && self.summary.is_some() {
            reasons.push("no test case ran (check the ktest filter)".to_string());
        }
        match self.summary {
            None if !ktest => {}
            None if self.outcome != Outcome::TimedOut => {
                reasons.push("no `ktest: summary` line".to_string())
            }
            None => {}
            Some((p, f)) if (p, f) != (self.passes.len() as u64, self.fails.len() as u64) => {
                reasons.push(format!(
                    "summary says passed={p} failed={f} but the log has {} PASS and {} FAIL lines",
                    self.passes.len(),
                    self.fails.len()
                ))
            }
            Some(_) => {}
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

/// Build the ktest firmware once and boot it for every run.
fn target_tests(runs: &[&TargetRun], verbose: bool, tally: &mut Tally) {
    let prepared = qemu::check().and_then(|version| {
        println!("{version}");
        firmware::build(&BuildOptions {
            board: Board::QemuRaspi4b,
            ktest: true,
            ..Default::default()
        })
    });
    let fw = match prepared {
        Ok(fw) => fw,
        Err(err) => {
            for run in runs {
                tally.fail(run.name, &format!("not run: {err:#}"));
            }
            return;
        }
    };
    let info = match DefmtInfo::load(&fw.elf) {
        Ok(info) => info,
        Err(err) => {
            for run in runs {
                tally.fail(run.name, &format!("not run: {err:#}"));
            }
            return;
        }
    };
    for run in runs {
        boot_and_judge(run, &fw.image, &info, verbose, tally);
    }
}

/// Boot `image` once for `run` and count its results.
fn boot_and_judge(
    run: &TargetRun,
    image: &Path,
    info: &DefmtInfo,
    verbose: bool,
    tally: &mut Tally,
) -> Option<RunReport> {
    let root = firmware::project_root();
    {
        println!(
            "\n--- run {}: bootargs {:?}, {}",
            run.name,
            run.bootargs,
            run.dtb.map_or("ATAGs".to_string(), |d| format!("dtb {d}"))
        );
        let cfg = QemuConfig {
            image: image.to_path_buf(),
            dtb: run.dtb.map(|d| root.join(d)),
            bootargs: run.bootargs.split_whitespace().map(String::from).collect(),
            gdb: false,
        };
        let started = Instant::now();
        let mut tail = VecDeque::new();
        let report = boot_once(&cfg, info, run, verbose, &mut tail);
        let report = match report {
            Ok(report) => report,
            Err(err) => {
                tally.fail(run.name, &format!("{err:#}"));
                return None;
            }
        };
        tally.passed += report.passes.len() as u64;
        for (name, reason) in &report.fails {
            tally.failed += 1;
            tally.failures.push(format!("{}/{name} ({reason})", run.name));
        }
        for (text, found) in run.expect.iter().zip(&report.found) {
            let name = format!("{}/log: {text}", run.name);
            if *found {
                tally.pass(name.trim_end());
            } else {
                tally.fail(name.trim_end(), "not in the log");
            }
        }
        let extra = report.run_failure(run.timeout_secs, run.is_ktest(), run.status);
        if let Some(reason) = &extra {
            if !verbose && !tail.is_empty() {
                println!("last {} log lines of run {}:", tail.len(), run.name);
                for line in &tail {
                    println!("  | {line}");
                }
            }
            tally.fail(run.name, reason);
        }
        println!(
            "--- run {}: {} passed, {} failed{} ({}, {:.1} s)",
            run.name,
            report.passes.len(),
            report.fails.len() + usize::from(extra.is_some()),
            if extra.is_some() { " incl. the run itself" } else { "" },
            match report.outcome {
                Outcome::Exited(c) => format!("exit status {c}"),
                Outcome::Signalled => "killed by a signal".to_string(),
                Outcome::TimedOut => "timed out".to_string(),
            },
            started.elapsed().as_secs_f64()
        );
        Some(report)
    }
}

/// Keep this many log lines to show when a run fails.
const TAIL_LINES: usize = 40;
/// Show at most this many of a failed on-target test's own log lines.
const FAIL_CONTEXT_LINES: usize = 60;

/// Boot once, printing test results as they arrive.
fn boot_once(
    cfg: &QemuConfig,
    info: &DefmtInfo,
    run: &TargetRun,
    verbose: bool,
    tail: &mut VecDeque<String>,
) -> Result<RunReport> {
    let mut report = RunReport::new(Outcome::Signalled);
    report.found = vec![false; run.expect.len()];
    let mut decoder = info.decoder();
    let finished = std::cell::Cell::new(None);
    let mut raw = Vec::new();
    let ready = std::cell::Cell::new(false);
    let mut since_result = 0;
    let mut on_line = |line: LogLine| {
        finished.set(finished.get().or(crate::run::final_status(&line.message)));
        if line.message.contains(crate::run::CONSOLE_READY) {
            ready.set(true);
        }
        if verbose {
            println!("  | {}", line.rendered);
        }
        for (text, found) in run.expect.iter().zip(report.found.iter_mut()) {
            *found |= line.message.contains(text);
        }
        // A test's result line ends its own log lines (see the FAIL context below).
        let is_result = match parse_ktest(&line.message) {
            Some(KtestEvent::Pass(name)) => {
                println!("PASS {}/{name}", run.name);
                report.passes.push(name);
                true
            }
            Some(KtestEvent::Fail { name, reason }) => {
                println!("FAIL {}/{name}: {reason}", run.name);
                // What the failed test itself logged (its lines since the previous result),
                // so a failure in CI explains itself without a rerun.
                if !verbose {
                    let own = &report.lines[since_result..];
                    let skip = own.len().saturating_sub(FAIL_CONTEXT_LINES);
                    println!("  the test's last {} log lines:", own.len() - skip);
                    for l in &own[skip..] {
                        println!("  | {l}");
                    }
                }
                report.fails.push((name, reason));
                true
            }
            Some(KtestEvent::Summary { passed, failed }) => {
                report.summary = Some((passed, failed));
                false
            }
            None => false,
        };
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.rendered.clone());
        report.lines.push(line.rendered.clone());
        if is_result {
            since_result = report.lines.len();
        }
        report.last_line = Some(line.rendered);
    };
    let timeout = Some(Duration::from_secs(run.timeout_secs));
    let outcome = match console_input(run.name) {
        None => qemu::run_until(cfg, timeout, &mut |bytes| {
            raw.extend_from_slice(bytes);
            decoder.feed(bytes, &mut on_line);
            finished.get()
        })?,
        Some(script) => {
            let mut sent = false;
            qemu::run_with_input(cfg, timeout, qemu::Input::Scripted, &mut |bytes, stdin| {
                raw.extend_from_slice(bytes);
                decoder.feed(bytes, &mut on_line);
                if !sent && ready.get() {
                    sent = true;
                    let _ = stdin.write_all(script.as_bytes());
                }
                finished.get()
            })?
        }
    };
    decoder.finish(&mut on_line);
    report.outcome = outcome;
    report.raw = raw;
    save_log(run.name, &report.lines);
    Ok(report)
}

/// Keeps a run's whole decoded log in `target/xtask-test-logs/RUN.log` (the console shows only
/// results and a failure's context). A log that cannot be written is reported, not fatal.
fn save_log(run: &str, lines: &[String]) {
    let dir = firmware::target_dir().join("xtask-test-logs");
    let path = dir.join(format!("{run}.log"));
    let text: String = lines.iter().flat_map(|l| [l.as_str(), "\n"]).collect();
    if let Err(err) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        println!("xtask: cannot keep the log of run {run} in {}: {err}", path.display());
    }
}

/// Write a run's UART bytes into a pseudo-terminal and decode them with `cargo xtask monitor`'s
/// reader on the other side: the lines must be the ones `run` decoded from QEMU's stdout, and the
/// monitor must stop at the final line with its status. Returns the number of lines compared.
fn monitor_check(report: &RunReport, info: &DefmtInfo) -> Result<usize> {
    ensure!(!report.raw.is_empty(), "the run produced no UART bytes");
    let (lines, status) = crate::monitor::replay_through_pty(&report.raw, info)?;
    ensure!(status == Some(0), "the monitor did not stop at `end of run: status 0` ({status:?})");
    ensure!(
        lines == report.lines,
        "the monitor decoded {} lines, run {}; first difference: {:?}",
        lines.len(),
        report.lines.len(),
        lines.iter().zip(&report.lines).find(|(a, b)| a != b)
    );
    Ok(lines.len())
}

/// The boot arguments the `sdcard` check writes (not the default, so the check sees them pass).
const SDCARD_TEST_BOOTARGS: &str = "hugepagesz=2M hugepages=16 loglevel=7";

/// Build the real SD image, list it with mtools and read config.txt, cmdline.txt and
/// kernel8.img back with mtools: they must agree with each other and with what was written.
/// `Ok(Some(reason))` means skipped.
fn sdcard_check() -> Result<Option<String>> {
    let fw_dir = Path::new(sdcard::DEFAULT_FIRMWARE_DIR);
    if sdcard::missing_firmware(fw_dir).len() == sdcard::FIRMWARE_FILES.len() {
        return Ok(Some(format!(
            "{} has no Pi 4 firmware ({})",
            fw_dir.display(),
            sdcard::FIRMWARE_HINT
        )));
    }
    let root = firmware::project_root();
    let dtb = root.join(DTB_FIXTURE);
    ensure!(dtb.is_file(), "the DTB fixture {} is missing", dtb.display());
    let out: PathBuf = firmware::target_dir().join("xtask-test-sdcard.img");
    let image = sdcard::make(&sdcard::Options {
        out: out.clone(),
        firmware_dir: fw_dir.to_path_buf(),
        dtb: Some(dtb),
        size_mib: sdcard::DEFAULT_SIZE_MIB,
        plain: false,
        bootargs: SDCARD_TEST_BOOTARGS.to_string(),
        jtag: false,
    })?;
    let listing = sdcard::mdir(&out)?;
    let missing: Vec<&str> = sdcard::IMAGE_FILES
        .iter()
        .copied()
        .filter(|name| !sdcard::mdir_lists(&listing, name))
        .collect();
    if !missing.is_empty() {
        bail!("mdir does not list {} in {}:\n{listing}", missing.join(", "), out.display());
    }
    let scratch = firmware::target_dir();
    let mut files = Vec::new();
    for name in ["config.txt", "cmdline.txt", "kernel8.img"] {
        files.push((name.to_string(), sdcard::mtools_read(&out, name, &scratch)?));
    }
    let summary = sdcard::check_card(&files)?;
    println!("read back with mtools: {summary}");
    ensure!(
        summary.bootargs == SDCARD_TEST_BOOTARGS,
        "cmdline.txt reads back as {:?}, written {SDCARD_TEST_BOOTARGS:?}",
        summary.bootargs
    );
    let built = std::fs::read(&image).context("reading the rpi4 image")?;
    ensure!(files[2].1 == built, "kernel8.img on the card differs from {}", image.display());
    let config = std::fs::read(sdcard::config_txt_path()).context("reading config.txt")?;
    ensure!(files[0].1 == config, "config.txt on the card differs from boards/rpi4/config.txt");
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_test_result_lines() {
        assert_eq!(
            parse_test_result(
                "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; \
                 finished in 0.01s"
            ),
            Some((12, 0))
        );
        assert_eq!(
            parse_test_result("test result: FAILED. 3 passed; 2 failed; 0 ignored"),
            Some((3, 2))
        );
        assert_eq!(parse_test_result("running 3 tests"), None);
    }

    #[test]
    fn ktest_lines() {
        assert_eq!(
            parse_ktest("ktest: PASS mm::split_block"),
            Some(KtestEvent::Pass("mm::split_block".into()))
        );
        assert_eq!(
            parse_ktest("[0.123] ktest: FAIL hvo::remap: expected 7 pages, got 8"),
            Some(KtestEvent::Fail {
                name: "hvo::remap".into(),
                reason: "expected 7 pages, got 8".into()
            })
        );
        assert_eq!(
            parse_ktest("ktest: FAIL boot no colon here"),
            Some(KtestEvent::Fail { name: "boot".into(), reason: "no colon here".into() })
        );
        assert_eq!(
            parse_ktest("ktest: summary passed=10 failed=2"),
            Some(KtestEvent::Summary { passed: 10, failed: 2 })
        );
        assert_eq!(parse_ktest("ktest: summary passed=10"), None);
        assert_eq!(parse_ktest("booting pi4-hvo"), None);
        assert_eq!(parse_ktest("ktest: running 12 tests"), None);
    }

    fn report(passes: usize, fails: usize, summary: Option<(u64, u64)>, o: Outcome) -> RunReport {
        RunReport {
            passes: (0..passes).map(|i| format!("p{i}")).collect(),
            fails: (0..fails).map(|i| (format!("f{i}"), "r".into())).collect(),
            summary,
            outcome: o,
            last_line: Some("last".into()),
            found: Vec::new(),
            raw: Vec::new(),
            lines: Vec::new(),
        }
    }

    #[test]
    fn run_verdicts() {
        assert_eq!(report(3, 0, Some((3, 0)), Outcome::Exited(0)).run_failure(9, true, 0), None);
        // FAIL lines and a non-zero exit: the FAIL lines carry it.
        assert_eq!(report(2, 1, Some((2, 1)), Outcome::Exited(1)).run_failure(9, true, 0), None);
        let r = report(2, 0, Some((2, 0)), Outcome::Exited(3)).run_failure(9, true, 0).unwrap();
        assert!(r.contains("status 3"), "{r}");
        let r = report(2, 0, None, Outcome::Exited(0)).run_failure(9, true, 0).unwrap();
        assert!(r.contains("no `ktest: summary`"), "{r}");
        let r = report(2, 0, Some((3, 0)), Outcome::Exited(0)).run_failure(9, true, 0).unwrap();
        assert!(r.contains("passed=3"), "{r}");
        let r = report(1, 0, None, Outcome::TimedOut).run_failure(9, true, 0).unwrap();
        assert_eq!(r, "firmware did not finish within 9 s; last log line: last");
        let r = report(0, 0, Some((0, 0)), Outcome::Exited(0)).run_failure(9, true, 0).unwrap();
        assert!(r.contains("no test case ran"), "{r}");
        // A demonstration boot has no summary line, but must still exit 0.
        assert_eq!(report(0, 0, None, Outcome::Exited(0)).run_failure(9, false, 0), None);
        let r = report(0, 0, None, Outcome::Exited(2)).run_failure(9, false, 0).unwrap();
        assert!(r.contains("status 2"), "{r}");
        assert_eq!(report(0, 0, None, Outcome::Exited(101)).run_failure(9, false, 101), None);
        let r = report(0, 0, None, Outcome::Exited(0)).run_failure(9, false, 101).unwrap();
        assert!(r.contains("expected 101"), "{r}");
    }

    #[test]
    fn run_table_is_sane() {
        let mut names: Vec<_> = TARGET_RUNS.iter().map(|r| r.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TARGET_RUNS.len());
        assert!(TARGET_RUNS.iter().all(|r| r.timeout_secs > 0));
        // Every run checks something: test cases, or lines of its log.
        assert!(TARGET_RUNS.iter().all(|r| r.is_ktest() || !r.expect.is_empty()));
        // Scripted input only for runs that exist and enter the console.
        for (name, _) in CONSOLE_INPUT {
            let run = TARGET_RUNS.iter().find(|r| r.name == *name).expect("a run of that name");
            assert!(run.bootargs.split_whitespace().any(|a| a == "console"), "{name}");
        }
    }
}
