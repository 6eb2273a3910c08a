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
            "      2G BLK 2M RW     PXN UXN    Normal [Linear Mapping]",
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

/// The DTB put on the SD image by the `sdcard` check, relative to the project root.
pub const DTB_FIXTURE: &str = "../shared/fixtures/bcm2711-rpi-4-b.dtb";

/// Arguments of `cargo xtask test`.
#[derive(clap::Args)]
pub struct Args {
    /// Only host tests whose name contains STR (cargo test's filter), only on-target runs and
    /// checks (`atags`, `dtb`, `hugetlb`, `sdcard`) whose name contains STR.
    #[arg(long, value_name = "STR")]
    filter: Option<String>,
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
        self.failures.push(name.to_string());
    }
}

/// Run the command.
pub fn main(args: Args) -> Result<ExitCode> {
    let started = Instant::now();
    let selected = |name: &str| args.filter.as_deref().is_none_or(|f| name.contains(f));
    let mut tally = Tally::default();

    section("rustc target");
    firmware::ensure_target()?;

    section("host tests: cargo test --workspace");
    host_tests(args.filter.as_deref(), &mut tally)?;

    let runs: Vec<&TargetRun> = TARGET_RUNS.iter().filter(|r| selected(r.name)).collect();
    if !runs.is_empty() {
        section("on-target tests: qemu-raspi4b, feature ktest");
        target_tests(&runs, args.verbose, &mut tally);
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
        println!("failures: {}", tally.failures.join(", "));
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
    let root = firmware::project_root();
    for run in runs {
        println!(
            "\n--- run {}: bootargs {:?}, {}",
            run.name,
            run.bootargs,
            run.dtb.map_or("ATAGs".to_string(), |d| format!("dtb {d}"))
        );
        let cfg = QemuConfig {
            image: fw.image.clone(),
            dtb: run.dtb.map(|d| root.join(d)),
            bootargs: run.bootargs.split_whitespace().map(String::from).collect(),
            gdb: false,
        };
        let started = Instant::now();
        let mut tail = VecDeque::new();
        let report = boot_once(&cfg, &info, run, verbose, &mut tail);
        let report = match report {
            Ok(report) => report,
            Err(err) => {
                tally.fail(run.name, &format!("{err:#}"));
                continue;
            }
        };
        tally.passed += report.passes.len() as u64;
        for (name, _) in &report.fails {
            tally.failed += 1;
            tally.failures.push(format!("{}/{name}", run.name));
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
    }
}

/// Keep this many log lines to show when a run fails.
const TAIL_LINES: usize = 40;

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
    let mut on_line = |line: LogLine| {
        if verbose {
            println!("  | {}", line.rendered);
        }
        for (text, found) in run.expect.iter().zip(report.found.iter_mut()) {
            *found |= line.message.contains(text);
        }
        match parse_ktest(&line.message) {
            Some(KtestEvent::Pass(name)) => {
                println!("PASS {}/{name}", run.name);
                report.passes.push(name);
            }
            Some(KtestEvent::Fail { name, reason }) => {
                println!("FAIL {}/{name}: {reason}", run.name);
                report.fails.push((name, reason));
            }
            Some(KtestEvent::Summary { passed, failed }) => {
                report.summary = Some((passed, failed));
            }
            None => {}
        }
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.rendered.clone());
        report.last_line = Some(line.rendered);
    };
    let outcome = qemu::run(cfg, Some(Duration::from_secs(run.timeout_secs)), &mut |bytes| {
        decoder.feed(bytes, &mut on_line)
    })?;
    decoder.finish(&mut on_line);
    report.outcome = outcome;
    Ok(report)
}

/// Build the real SD image and list it with mtools. `Ok(Some(reason))` means skipped.
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
    sdcard::make(&sdcard::Options {
        out: out.clone(),
        firmware_dir: fw_dir.to_path_buf(),
        dtb: Some(dtb),
        size_mib: sdcard::DEFAULT_SIZE_MIB,
        plain: false,
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
    }
}
