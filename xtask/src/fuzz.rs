//! `cargo xtask fuzz [--secs N]`: the parser fuzz targets of `kcore/tests/fuzz_parsers.rs`, and
//! any other kcore test named `*fuzz*` or reading `KCORE_FUZZ_CASES` (the random operation
//! sequences of the buddy allocator, the pool and HVO, when they land), for a time budget instead
//! of the bounded batch that `cargo test` runs.
//!
//! Each batch runs in a child process (the test binary, one test, its own seed), so a crash, a
//! stack overflow or a hang ends that child only. The child traces the case it is on
//! (`KCORE_FUZZ_TRACE=1`), so the parent narrows a failure to its input: it regenerates that
//! case (`KCORE_FUZZ_DUMP`), prints it as hex, saves it under `target/fuzz/`, and prints the
//! command that replays it. A batch that outlives `--batch-timeout` counts as a hang.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::firmware;

/// Arguments of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct Args {
    /// Total time budget in seconds, shared round-robin by the targets.
    #[arg(long, value_name = "N", default_value_t = 60)]
    secs: u64,
    /// Parser inputs per batch (one child process).
    #[arg(long, value_name = "N", default_value_t = 4000)]
    cases: u64,
    /// Operation sequences per batch for the operation-sequence targets (one sequence of
    /// buddy/pool/HVO operations costs what hundreds of parser inputs do).
    #[arg(long, value_name = "N", default_value_t = 200)]
    op_cases: u64,
    /// First seed (default: from the clock); batch k uses seed + k.
    #[arg(long, value_name = "SEED")]
    seed: Option<u64>,
    /// Only targets whose name contains STR (dtb, atags, cmdline, or a test file name).
    #[arg(long, value_name = "STR")]
    only: Option<String>,
    /// A batch running longer than this many seconds is a hang.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    batch_timeout: u64,
}

/// One thing to fuzz: a test in a test binary.
struct Target {
    name: String,
    /// The kcore test file (`--test NAME`).
    test_file: String,
    /// The test function (`--exact`), or all tests of the file.
    test_fn: Option<&'static str>,
    /// Whether the test follows the `fuzz_parsers` protocol (trace, dump).
    narrows: bool,
}

/// How a batch ended.
enum End {
    Passed,
    Failed(String),
    Hung,
}

/// Run the command.
pub fn main(args: Args) -> Result<ExitCode> {
    let root = firmware::project_root();
    let mut targets: Vec<Target> =
        [("dtb", "fuzz_dtb"), ("atags", "fuzz_atags"), ("cmdline", "fuzz_cmdline")]
            .into_iter()
            .map(|(name, f)| Target {
                name: name.into(),
                test_file: "fuzz_parsers".into(),
                test_fn: Some(f),
                narrows: true,
            })
            .collect();
    // Other kcore tests that take a case count (kcore-hvo's operation-sequence fuzz).
    for file in env_driven_tests(&root.join("kcore/tests"))? {
        targets.push(Target { name: file.clone(), test_file: file, test_fn: None, narrows: false });
    }
    if let Some(only) = &args.only {
        targets.retain(|t| t.name.contains(only.as_str()));
    }
    if targets.is_empty() {
        bail!("no fuzz target matches");
    }
    let mut exes = BTreeMap::new();
    for t in &targets {
        if !exes.contains_key(&t.test_file) {
            exes.insert(t.test_file.clone(), build_test(&root, &t.test_file)?);
        }
    }
    let seed0 = args
        .seed
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_secs()));
    let out_dir = root.join("target/fuzz");
    std::fs::create_dir_all(&out_dir).context("creating target/fuzz")?;
    println!(
        "xtask fuzz: {} target(s) for {} s, {} parser inputs or {} operation sequences per batch, seeds from {seed0:#x}",
        targets.len(),
        args.secs,
        args.cases,
        args.op_cases
    );

    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let mut stats: BTreeMap<String, (u64, u64)> = BTreeMap::new(); // batches, cases
    let mut failures = Vec::new();
    let mut batch = 0u64;
    'outer: loop {
        for t in &targets {
            if Instant::now() >= deadline && batch > 0 {
                break 'outer;
            }
            let seed = seed0.wrapping_add(batch);
            batch += 1;
            let exe = &exes[&t.test_file];
            let cases = if t.narrows { args.cases } else { args.op_cases };
            let (end, stderr) = run_batch(exe, t, seed, cases, args.batch_timeout)?;
            let s = stats.entry(t.name.clone()).or_default();
            s.0 += 1;
            s.1 += cases;
            let how = match end {
                End::Passed => continue,
                End::Hung => format!("hung (over {} s)", args.batch_timeout),
                End::Failed(h) => h,
            };
            failures.push(report_failure(exe, t, seed, &how, &stderr, &out_dir)?);
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    println!("\nxtask fuzz: summary");
    for (name, (batches, cases)) in &stats {
        println!("  {name:<16} {batches} batch(es), {cases} cases");
    }
    if failures.is_empty() {
        println!("xtask fuzz: no failure");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("xtask fuzz: {} failing batch(es):", failures.len());
        for f in &failures {
            println!("  {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// kcore test files other than `fuzz_parsers` named `*fuzz*` or reading `KCORE_FUZZ_CASES`
/// (they get it, `KCORE_FUZZ_SEED`, `PROPTEST_CASES` and `PROPTEST_RNG_SEED`).
fn env_driven_tests(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).context("reading kcore/tests")? {
        let p = e?.path();
        let Some(stem) = p.file_stem().and_then(|s| s.to_str()) else { continue };
        if p.extension().is_some_and(|x| x == "rs")
            && stem != "fuzz_parsers"
            && (stem.contains("fuzz")
                || std::fs::read_to_string(&p).is_ok_and(|s| s.contains("KCORE_FUZZ_CASES")))
        {
            out.push(stem.to_string());
        }
    }
    out.sort();
    Ok(out)
}

/// Builds a kcore test binary and returns its path.
fn build_test(root: &Path, test: &str) -> Result<PathBuf> {
    println!("xtask fuzz: building kcore test {test}");
    let out = Command::new(firmware::cargo())
        .args(["test", "-p", "kcore", "--test", test, "--no-run", "--message-format=json"])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building kcore test {test} failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        if !line.contains("\"compiler-artifact\"")
            || !line.contains(&format!("\"name\":\"{test}\""))
        {
            continue;
        }
        if let Some(rest) = line.split("\"executable\":\"").nth(1) {
            if let Some(path) = rest.split('"').next() {
                return Ok(PathBuf::from(path));
            }
        }
    }
    bail!("no executable for kcore test {test} in cargo's output")
}

fn command(exe: &Path, t: &Target, seed: u64, cases: u64) -> Command {
    let mut c = Command::new(exe);
    match t.test_fn {
        Some(f) => c.args(["--exact", f]),
        None => c.args(["--test-threads", "1"]),
    };
    c.arg("--nocapture")
        .env("KCORE_FUZZ_SEED", seed.to_string())
        .env("KCORE_FUZZ_CASES", cases.to_string())
        .env("PROPTEST_CASES", cases.to_string())
        .env("PROPTEST_RNG_SEED", seed.to_string());
    c
}

/// Runs one batch in a child process; returns how it ended and its stderr.
fn run_batch(exe: &Path, t: &Target, seed: u64, cases: u64, timeout: u64) -> Result<(End, String)> {
    let mut cmd = command(exe, t, seed, cases);
    cmd.env("KCORE_FUZZ_TRACE", "1").stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {}", exe.display()))?;
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if start.elapsed() > Duration::from_secs(timeout) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    let all = format!("{stdout}\n{stderr}");
    Ok(match status {
        None => (End::Hung, all),
        Some(st) if st.success() => {
            if let Some(line) = stderr.lines().rev().find(|l| l.starts_with("fuzz ")) {
                println!("  batch seed {seed:#x}: {line}");
            } else {
                println!("  batch seed {seed:#x}: {} passed", t.name);
            }
            (End::Passed, all)
        }
        Some(st) => (End::Failed(format!("{st}")), all),
    })
}

/// Narrows a failed batch to its input, saves and prints it; returns a one-line summary.
fn report_failure(
    exe: &Path,
    t: &Target,
    seed: u64,
    how: &str,
    output: &str,
    out_dir: &Path,
) -> Result<String> {
    println!("\n!!! {} batch with seed {seed:#x}: {how}", t.name);
    for l in output.lines().filter(|l| {
        l.contains("panicked")
            || l.contains("overflow")
            || l.contains("fails:")
            || l.starts_with("thread ")
    }) {
        println!("    {l}");
    }
    if !t.narrows {
        let log = out_dir.join(format!("{}-{seed:x}.log", t.name));
        std::fs::write(&log, output)?;
        return Ok(format!(
            "{} seed {seed:#x}: {how}; output in {}; replay: KCORE_FUZZ_SEED={seed} cargo test -p kcore --test {}",
            t.name,
            log.display(),
            t.test_file
        ));
    }
    // The last case the child started is the one that failed.
    let case = output
        .lines()
        .filter_map(|l| l.strip_prefix("FUZZ-CASE "))
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .next_back();
    let Some(case) = case else {
        return Ok(format!("{} seed {seed:#x}: {how} before its first case", t.name));
    };
    let hex = match output.lines().find_map(|l| l.split_once("FUZZ-INPUT ").map(|(_, h)| h.trim()))
    {
        Some(h) => h.to_string(),
        None => {
            // It died without unwinding (abort, stack overflow, hang): regenerate the input.
            let out = command(exe, t, seed, case + 1)
                .env("KCORE_FUZZ_DUMP", case.to_string())
                .output()
                .context("dumping the failing input")?;
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| l.split_once("FUZZ-INPUT ").map(|(_, h)| h.trim().to_string()))
                .unwrap_or_default()
        }
    };
    let file = out_dir.join(format!("{}-{seed:x}-{case}.hex", t.name));
    std::fs::write(&file, format!("{hex}\n"))?;
    println!("    failing input: case {case} of seed {seed:#x} ({} bytes):", hex.len() / 2);
    // The whole input is in the file; a DTB is 54 K hex digits, so the terminal gets its head.
    const SHOWN: usize = 8192;
    if hex.len() > SHOWN {
        println!("    {}... ({} more hex digits: see the file)", &hex[..SHOWN], hex.len() - SHOWN);
    } else {
        println!("    {hex}");
    }
    println!("    saved to {}", file.display());
    println!(
        "    replay: KCORE_FUZZ_SEED={seed} KCORE_FUZZ_CASES={} cargo test -p kcore --test fuzz_parsers {} -- --exact\n    \
         or copy it to kcore/tests/fuzz_corpus/{}-<name>.hex to replay it in every run",
        case + 1,
        t.test_fn.unwrap_or(""),
        t.name
    );
    Ok(format!("{} seed {seed:#x} case {case}: {how}; input in {}", t.name, file.display()))
}
