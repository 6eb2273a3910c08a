//! `cargo xtask bench`: the HVO benchmark on QEMU (deterministic instruction counts), the host
//! benchmark of kcore's walker and mapper against `aarch64-paging`, a JSON report and an SVG
//! chart.
//!
//! The firmware's benchmark mode (boot argument `bench`, `firmware/src/bench.rs`) prints
//! `bench:` lines of `key=value` pairs in counter ticks. QEMU runs it with `-icount shift=0`:
//! the guest's virtual clock then advances one nanosecond per instruction, so `ticks * 1e9 / hz`
//! is an instruction count that repeats exactly from run to run. Everything printed here is
//! computed from those lines: lower bounds too, from primitive costs the firmware measured by
//! executing them and from counts it measured (the blocks that had to be split, the vmemmap pages
//! a folio's descriptors occupied).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::decode::DefmtInfo;
use crate::firmware::{self, BuildOptions};
use crate::qemu::{self, QemuConfig};
use crate::Board;

/// Arguments of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Run the host benchmark (kcore vs aarch64-paging, criterion) instead of the firmware's.
    #[arg(long)]
    host: bool,
    /// With --host: shorter measurement (rougher figures).
    #[arg(long)]
    quick: bool,
    /// Also write the figures as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also draw the chart (SVG) to FILE.
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
    /// Kill QEMU after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    timeout: u64,
    /// Use the debug build (figures differ from the release build the README quotes).
    #[arg(long)]
    debug: bool,
}

/// Run the command.
pub fn main(args: Args) -> Result<ExitCode> {
    if args.host {
        return host(args.quick);
    }
    if let Err(e) = qemu::check() {
        bail!("the firmware benchmark cannot run: it needs QEMU's raspi4b machine.\n{e:#}");
    }
    let opts = |board| BuildOptions { board, release: !args.debug, ktest: false, plain: false };
    // Both boards write the same kernel8.img path: the Pi's first (only its size is needed),
    // then QEMU's, which is the one booted.
    let rpi4 = firmware::build(&opts(Board::Rpi4))?;
    let fw = firmware::build(&opts(Board::QemuRaspi4b))?;
    let timeout = Duration::from_secs(args.timeout);
    let lines = run_bench(&fw.image, &fw.elf, timeout, &["bench"], true)?;
    let smp = BenchData::parse(&run_bench(
        &fw.image,
        &fw.elf,
        timeout,
        &["bench", "hvo_bbm=fault-wait"],
        false,
    )?)?;
    let mut data = BenchData::parse(&lines)?;
    data.ok &= smp.ok;
    data.smp_hz = smp.hz;
    data.other.extend(smp.other.into_iter().filter(|l| l.kind == "smp"));
    // The tail designs are fixed at boot: one boot each (`firmware/src/bench_tails.rs`).
    for design in ["seed", "shared"] {
        let arg = format!("hvo_tails={design}");
        let lines = run_bench(&fw.image, &fw.elf, timeout, &["bench=tails", &arg], true)?;
        for l in lines.iter().map(|l| Line::parse(l)) {
            match l.kv.get("ok") {
                Some(ok) => data.ok &= ok == "1",
                None => data.other.push(l),
            }
        }
    }
    let sizes = [("qemu-raspi4b", fw.size), ("rpi4", rpi4.size)];
    let report = Report::new(&data, &sizes, !args.debug);
    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("xtask: figures written to {}", path.display());
    }
    if let Some(path) = &args.chart {
        chart(&report, path)?;
        eprintln!("xtask: chart written to {}", path.display());
    }
    if !data.ok {
        eprintln!("xtask: the firmware reported a failure (bench: done ok=0)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The host benchmark: `cargo bench -p kcore --bench paging`, which prints its own ratio table.
fn host(quick: bool) -> Result<ExitCode> {
    let mut cmd = Command::new(firmware::cargo());
    cmd.current_dir(firmware::project_root()).args(["bench", "-p", "kcore", "--bench", "paging"]);
    if quick {
        cmd.env("KCORE_BENCH_QUICK", "1");
    }
    let status = cmd.status().context("running cargo bench")?;
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Boots `image` with `bootargs` (under `-icount shift=0` if `icount`) and returns the decoded
/// `bench:` lines. The four-core part (`bench hvo_bbm=fault-wait`, every strategy) boots without
/// `-icount`: see `firmware/src/bench_smp.rs` for why.
fn run_bench(
    image: &Path,
    elf: &Path,
    timeout: Duration,
    bootargs: &[&str],
    icount: bool,
) -> Result<Vec<String>> {
    let bootargs = bootargs.iter().map(|a| a.to_string()).collect();
    let cfg = QemuConfig { image: image.to_path_buf(), bootargs, ..Default::default() };
    let mut args = cfg.args();
    if icount {
        args.extend(["-icount".to_string(), "shift=0".to_string()]);
    }
    eprintln!(
        "xtask: {} {}",
        qemu::QEMU,
        args.iter().map(|a| qemu::shell_quote(a)).collect::<Vec<_>>().join(" ")
    );
    let mut child = Command::new(qemu::QEMU)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("could not start {}", qemu::QEMU))?;
    let mut out = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().context("waiting for QEMU")? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the benchmark did not finish within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let bytes = reader.join().unwrap_or_default();
    let info = DefmtInfo::load(elf)?;
    let mut dec = info.decoder();
    let mut lines = Vec::new();
    let mut all = Vec::new();
    let mut take = |l: crate::decode::LogLine| {
        if let Some(i) = l.message.find("bench: ") {
            lines.push(l.message[i + "bench: ".len()..].trim().to_string());
        }
        all.push(l.rendered);
    };
    dec.feed(&bytes, &mut take);
    dec.finish(&mut take);
    if status.code() != Some(0) || lines.is_empty() {
        for l in all.iter().rev().take(20).rev() {
            eprintln!("{l}");
        }
        bail!("the firmware's benchmark failed (QEMU exit status {:?})", status.code());
    }
    Ok(lines)
}

/// One `bench:` line: its kind and its `key=value` pairs.
#[derive(Clone, Debug, Default)]
struct Line {
    kind: String,
    kv: BTreeMap<String, String>,
}

impl Line {
    fn parse(s: &str) -> Line {
        let mut it = s.split_whitespace();
        let kind = it.next().unwrap_or("").to_string();
        let kv = it
            .filter_map(|t| t.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Line { kind, kv }
    }
    fn get(&self, k: &str) -> f64 {
        self.kv.get(k).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    }
    fn s(&self, k: &str) -> &str {
        self.kv.get(k).map_or("", String::as_str)
    }
}

/// Everything the firmware printed.
#[derive(Debug, Default)]
struct BenchData {
    boot_ticks: f64,
    hz: f64,
    /// Primitive name -> ticks per execution.
    prims: BTreeMap<String, f64>,
    /// (size, hvo, mode) -> line.
    runs: BTreeMap<(String, String, String), Line>,
    /// Other lines (phases, strategies), by kind.
    other: Vec<Line>,
    /// The counter frequency of the four-core boot (its `smp` lines are in its ticks).
    smp_hz: f64,
    ok: bool,
}

impl BenchData {
    fn parse(lines: &[String]) -> Result<BenchData> {
        let mut d = BenchData::default();
        let mut done = false;
        for l in lines.iter().map(|l| Line::parse(l)) {
            match l.kind.as_str() {
                "boot" => {
                    d.boot_ticks = l.get("ticks");
                    d.hz = l.get("hz");
                }
                "prim" => {
                    d.prims.insert(l.s("name").to_string(), l.get("ticks") / l.get("reps"));
                }
                "run" => {
                    let key =
                        (l.s("size").to_string(), l.s("hvo").to_string(), l.s("mode").to_string());
                    d.runs.insert(key, l);
                }
                "done" => {
                    done = true;
                    d.ok = l.s("ok") == "1";
                }
                _ => d.other.push(l),
            }
        }
        if !done || d.hz.is_nan() || d.hz <= 0.0 {
            bail!(
                "the firmware's benchmark output is incomplete (no `bench: done` or no boot line)"
            );
        }
        Ok(d)
    }

    /// Instructions per counter tick (1 ns per instruction under `-icount shift=0`).
    fn ipt(&self) -> f64 {
        1e9 / self.hz
    }

    fn prim(&self, name: &str) -> f64 {
        self.prims.get(name).copied().unwrap_or(f64::NAN) * self.ipt()
    }

    fn run(&self, size: &str, hvo: &str, mode: &str) -> Option<&Line> {
        self.runs.get(&(size.to_string(), hvo.to_string(), mode.to_string()))
    }
}

/// Figures for one folio size.
#[derive(Clone, Debug, Default)]
struct SizeFigures {
    size: String,
    folios: f64,
    /// Vmemmap pages one folio's descriptors occupy (measured: bytes walked / 4 KiB).
    vm_pages: f64,
    /// Per folio, instructions: (mode, off, on).
    alloc: Vec<(String, f64, f64)>,
    free: Vec<(String, f64, f64)>,
    opt: f64,
    opt_single: f64,
    opt_lb: f64,
    res: f64,
    res_lb: f64,
    /// (name, measured per batch, lower bound per batch) for the batched run; and per folio.
    counts: Vec<(String, f64, f64)>,
    cold_splits: f64,
    cold_lb_splits: f64,
    frames_freed: f64,
    frames_freed_hvo: f64,
    frames_ideal: f64,
    bytes_per_gib_before: f64,
    bytes_per_gib_after: f64,
    size_bytes: f64,
    /// Instructions per folio by phase, batched: (operation, [(phase, instructions)]).
    phases: Vec<(String, Vec<(String, f64)>)>,
}

/// The phases `firmware/src/bench.rs` prints, in order.
const PHASES: [&str; 8] = ["check", "split", "remap", "copy", "tlb", "alloc", "free", "grace"];

/// One break-before-make strategy's four-core figures (`bench: smp` lines).
#[derive(Clone, Debug, Default)]
struct SmpFigures {
    strategy: String,
    readers: f64,
    folios: f64,
    /// Microseconds of the HVO core per optimize + restore cycle (host-time counter, no
    /// `-icount`: see the firmware's `bench_smp`).
    hvo_us_per_cycle: f64,
    /// Reader operations per million counter ticks.
    ops_per_mtick: f64,
    /// Fraction of the baseline's rate the readers lost (NaN for the baseline).
    loss: f64,
    ipis: f64,
    held_ticks: f64,
    faults_waited: f64,
    unexpected_faults: f64,
}

struct Report {
    json: Value,
    sizes: Vec<SizeFigures>,
    smp: Vec<SmpFigures>,
    /// `tails` (both designs' boots) and `demote` lines, printed as they came.
    tails: Vec<Line>,
    demote: Vec<Line>,
    boot_instr: f64,
    images: Vec<(String, u64)>,
    release: bool,
}

fn per(x: f64, n: f64) -> f64 {
    if n > 0.0 {
        x / n
    } else {
        f64::NAN
    }
}

impl Report {
    fn new(d: &BenchData, images: &[(&str, u64)], release: bool) -> Report {
        let ipt = d.ipt();
        let mut sizes = Vec::new();
        for size in ["2M", "1G"] {
            let Some(on) = d.run(size, "on", "batched") else { continue };
            let n = on.get("folios");
            let size_bytes = if size == "2M" { 2.0 * 1048576.0 } else { 1073741824.0 };
            let vm_pages = per(on.get("vm_before"), n) / 4096.0;
            let mut f = SizeFigures {
                size: size.into(),
                folios: n,
                vm_pages,
                size_bytes,
                ..Default::default()
            };
            for mode in ["batched", "single"] {
                if let (Some(off), Some(onm)) = (d.run(size, "off", mode), d.run(size, "on", mode))
                {
                    f.alloc.push((
                        mode.into(),
                        per(off.get("alloc_ticks"), n) * ipt,
                        per(onm.get("alloc_ticks"), n) * ipt,
                    ));
                    f.free.push((
                        mode.into(),
                        per(off.get("free_ticks"), n) * ipt,
                        per(onm.get("free_ticks"), n) * ipt,
                    ));
                }
            }
            if let (Some(off), Some(cold)) =
                (d.run(size, "off", "batched"), d.run(size, "on", "cold"))
            {
                f.alloc.push((
                    "first batch (splits)".into(),
                    per(off.get("alloc_ticks"), n) * ipt,
                    per(cold.get("alloc_ticks"), n) * ipt,
                ));
                f.cold_splits = cold.get("splits");
                f.cold_lb_splits = cold.get("lb_splits");
            }
            f.opt = per(on.get("opt_ticks"), n) * ipt;
            f.res = per(on.get("res_ticks"), n) * ipt;
            if let Some(s) = d.run(size, "on", "single") {
                f.opt_single = per(s.get("opt_ticks"), n) * ipt;
            }
            // Lower bounds (see the module doc of firmware/src/bench.rs and the README):
            // optimize: every vmemmap page's entry broken and made (2 stores), page 0 copied
            // into one fresh frame, every old frame freed, one TLBI window per batch plus one per
            // block split (each: DSB after the invalid entries, TLBI, DSB ISH; one DSB ISHST
            // and ISB to publish), a table page per split.
            let lbs = on.get("lb_splits");
            let windows = lbs + 1.0;
            let (store, tlbi, dsb, isb) =
                (d.prim("store"), d.prim("tlbi"), d.prim("dsb"), d.prim("isb"));
            // The cheaper of memcpy and a word loop: a bound, not a particular implementation.
            let (copy, alloc_f, free_f, table) = (
                d.prim("copy4k").min(d.prim("copy4k_words")).min(d.prim("copy4k_simd")),
                d.prim("alloc_frame"),
                // One by one or as a run, whichever the allocator does cheaper.
                d.prim("free_frame").min(d.prim("free_run")),
                d.prim("table_alloc"),
            );
            let sync = windows * tlbi + (2.0 * windows + 1.0) * dsb + isb;
            f.opt_lb = 2.0 * vm_pages * store
                + copy
                + alloc_f
                + vm_pages * free_f
                + per(sync + lbs * (table + 512.0 * store), n);
            // restore: every tail page gets a fresh frame holding a copy of page 0, its entry
            // broken and made; one TLBI window per batch.
            let tails = vm_pages - 1.0;
            f.res_lb = tails * (copy + alloc_f + 2.0 * store) + per(tlbi + 3.0 * dsb + isb, n);
            // Counts per batch, batched run, against their lower bounds.
            let lb_writes = 2.0 * vm_pages * n + 2.0 * lbs;
            f.counts = vec![
                ("entry writes".into(), on.get("opt_writes"), lb_writes),
                ("TLBIs".into(), on.get("opt_tlbi"), windows),
                ("DSBs".into(), on.get("opt_dsb"), 2.0 * windows + 1.0),
                ("splits".into(), on.get("splits"), lbs),
            ];
            if let Some(cold) = d.run(size, "on", "cold") {
                let clbs = cold.get("lb_splits");
                let cw = clbs + 1.0;
                f.counts.push((
                    "entry writes, first batch".into(),
                    cold.get("opt_writes"),
                    2.0 * vm_pages * n + 2.0 * clbs,
                ));
                f.counts.push(("TLBIs, first batch".into(), cold.get("opt_tlbi"), cw));
                f.counts.push(("DSBs, first batch".into(), cold.get("opt_dsb"), 2.0 * cw + 1.0));
                f.counts.push(("splits, first batch".into(), cold.get("splits"), clbs));
            }
            if let Some(s) = d.run(size, "on", "single") {
                // One call per folio: each is its own window.
                let sl = s.get("lb_splits");
                f.counts.push((
                    "entry writes, one at a time".into(),
                    s.get("opt_writes"),
                    2.0 * vm_pages * n + 2.0 * sl,
                ));
                f.counts.push(("TLBIs, one at a time".into(), s.get("opt_tlbi"), n + sl));
                f.counts.push(("DSBs, one at a time".into(), s.get("opt_dsb"), 3.0 * n + 2.0 * sl));
            }
            f.frames_freed = on.get("buddy_gain") + on.get("tables");
            f.frames_freed_hvo = on.get("remapped");
            f.frames_ideal = (vm_pages - 1.0) * n;
            f.bytes_per_gib_before = per(on.get("vm_before"), n) * (1073741824.0 / size_bytes);
            f.bytes_per_gib_after = per(on.get("vm_after"), n) * (1073741824.0 / size_bytes);
            for op in ["optimize", "restore"] {
                let line = d.other.iter().find(|l| {
                    l.kind == "phases"
                        && l.s("size") == size
                        && l.s("mode") == "batched"
                        && l.s("op") == op
                });
                if let Some(l) = line {
                    let v =
                        PHASES.iter().map(|p| (p.to_string(), per(l.get(p), n) * ipt)).collect();
                    f.phases.push((op.to_string(), v));
                }
            }
            sizes.push(f);
        }
        let mut smp: Vec<SmpFigures> = d
            .other
            .iter()
            .filter(|l| l.kind == "smp")
            .map(|l| SmpFigures {
                strategy: l.s("strategy").to_string(),
                readers: l.get("readers"),
                folios: l.get("folios"),
                hvo_us_per_cycle: per(l.get("hvo_ticks_per_cycle") * 1e6, d.smp_hz),
                ops_per_mtick: per(l.get("ops") * 1e6, l.get("run_ticks")),
                loss: f64::NAN,
                ipis: l.get("ipis"),
                held_ticks: l.get("held_ticks"),
                faults_waited: l.get("faults_waited"),
                unexpected_faults: l.get("unexpected_faults"),
            })
            .collect();
        if let Some(base) = smp.iter().find(|s| s.strategy == "baseline").map(|s| s.ops_per_mtick) {
            for s in smp.iter_mut().filter(|s| s.strategy != "baseline") {
                s.loss = 1.0 - per(s.ops_per_mtick, base);
            }
        }
        let boot_instr = d.boot_ticks * ipt;
        let json = json!({
            "units": "guest instructions (QEMU raspi4b, -icount shift=0: 1 ns of virtual time per instruction)",
            "build": if release { "release" } else { "debug" },
            "counter_hz": d.hz,
            "boot_to_first_hvo_report_instructions": boot_instr,
            "kernel8_img_bytes": images.iter().map(|(b, s)| (b.to_string(), json!(s))).collect::<serde_json::Map<_, _>>(),
            "primitives_instructions": d.prims.keys().map(|k| (k.clone(), json!(d.prim(k)))).collect::<serde_json::Map<_, _>>(),
            "sizes": sizes.iter().map(|f| (f.size.clone(), json!({
                "folios_per_batch": f.folios,
                "vmemmap_pages_per_folio": f.vm_pages,
                "allocate_per_folio": f.alloc.iter().map(|(m, off, on)| (m.clone(), json!({"off": off, "on": on, "ratio": on / off}))).collect::<serde_json::Map<_, _>>(),
                "free_per_folio": f.free.iter().map(|(m, off, on)| (m.clone(), json!({"off": off, "on": on, "ratio": on / off}))).collect::<serde_json::Map<_, _>>(),
                "optimize_per_folio": {"batched": f.opt, "single": f.opt_single, "lower_bound": f.opt_lb, "distance": f.opt / f.opt_lb},
                "restore_per_folio": {"batched": f.res, "lower_bound": f.res_lb, "distance": f.res / f.res_lb},
                "counts_per_batch": f.counts.iter().map(|(k, m, lb)| (k.clone(), json!({"measured": m, "per_folio": m / f.folios, "lower_bound": lb, "distance": m / lb}))).collect::<serde_json::Map<_, _>>(),
                "vmemmap_frames_freed": {"buddy_measured": f.frames_freed, "entries_remapped": f.frames_freed_hvo, "at_most": f.frames_ideal},
                "vmemmap_bytes_per_gib": {"before": f.bytes_per_gib_before, "after": f.bytes_per_gib_after},
                "phases_per_folio_batched": f.phases.iter().map(|(op, v)| (op.clone(), Value::Object(v.iter().map(|(p, x)| (p.clone(), json!(x))).collect()))).collect::<serde_json::Map<_, _>>(),
            }))).collect::<serde_json::Map<_, _>>(),
            "smp_strategies": smp.iter().map(|s| (s.strategy.clone(), json!({
                "reader_cores": s.readers,
                "folios_2m": s.folios,
                "hvo_microseconds_per_cycle": s.hvo_us_per_cycle,
                "reader_ops_per_million_ticks": s.ops_per_mtick,
                "reader_loss_vs_baseline": if s.loss.is_finite() { json!(s.loss) } else { Value::Null },
                "ipis": s.ipis,
                "held_ticks": s.held_ticks,
                "faults_waited": s.faults_waited,
                "unexpected_faults": s.unexpected_faults,
            }))).collect::<serde_json::Map<_, _>>(),
            "other": d.other.iter().map(|l| json!({"kind": l.kind, "values": l.kv})).collect::<Vec<_>>(),
            "ok": d.ok,
        });
        // The last line of each (design, op, size, pfns): the steady-state round.
        let mut tails: BTreeMap<(String, String, String, String), Line> = BTreeMap::new();
        for l in d.other.iter().filter(|l| l.kind == "tails" && l.kv.contains_key("op")) {
            let key = (
                l.s("design").to_string(),
                l.s("size").to_string(),
                l.s("op").to_string(),
                l.s("pfns").to_string(),
            );
            tails.insert(key, l.clone());
        }
        Report {
            json,
            sizes,
            smp,
            tails: tails.into_values().collect(),
            demote: d.other.iter().filter(|l| l.kind == "demote").cloned().collect(),
            boot_instr,
            images: images.iter().map(|(b, s)| (b.to_string(), *s)).collect(),
            release,
        }
    }

    fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "pi4-hvo benchmark: QEMU raspi4b, -icount shift=0 ({} build); figures in guest instructions",
            if self.release { "release" } else { "debug" }
        );
        let _ = writeln!(o, "boot to the first HVO report: {}", fmt_n(self.boot_instr));
        for (b, s) in &self.images {
            let _ = writeln!(o, "kernel8.img ({b}): {s} bytes");
        }
        for f in &self.sizes {
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "{} folios ({} per batch), per folio   {:>12} {:>12} {:>7}  goal",
                f.size, f.folios, "HVO off", "HVO on", "ratio"
            );
            for (m, off, on) in &f.alloc {
                let goal = if m == "batched" { goal(on / off, 1.15) } else { String::new() };
                let _ = writeln!(
                    o,
                    "  allocate, {:<28} {:>12} {:>12} {:>6.2}x  {}",
                    m,
                    fmt_n(*off),
                    fmt_n(*on),
                    on / off,
                    goal
                );
            }
            for (m, off, on) in &f.free {
                let goal = if m == "batched" { goal(on / off, 1.3) } else { String::new() };
                let _ = writeln!(
                    o,
                    "  free (restore + free), {:<16} {:>12} {:>12} {:>6.2}x  {}",
                    m,
                    fmt_n(*off),
                    fmt_n(*on),
                    on / off,
                    goal
                );
            }
            let _ = writeln!(
                o,
                "  {:<38} {:>12} {:>12} {:>7}",
                "HVO alone, per folio", "measured", "lower bound", "distance"
            );
            let _ = writeln!(
                o,
                "  {:<38} {:>12} {:>12} {:>6.2}x  {}",
                "optimize, batched",
                fmt_n(f.opt),
                fmt_n(f.opt_lb),
                f.opt / f.opt_lb,
                goal(f.opt / f.opt_lb, 3.0)
            );
            let _ = writeln!(
                o,
                "  {:<38} {:>12} {:>12} {:>6.2}x",
                "optimize, one at a time",
                fmt_n(f.opt_single),
                fmt_n(f.opt_lb),
                f.opt_single / f.opt_lb
            );
            let _ = writeln!(
                o,
                "  {:<38} {:>12} {:>12} {:>6.2}x",
                "restore, batched",
                fmt_n(f.res),
                fmt_n(f.res_lb),
                f.res / f.res_lb
            );
            let _ = writeln!(
                o,
                "  {:<38} {:>10} {:>10} {:>12} {:>8}",
                "counts (optimize)", "per batch", "per folio", "lower bound", "distance"
            );
            for (k, m, lb) in &f.counts {
                let _ = writeln!(
                    o,
                    "  {:<38} {:>10} {:>10.1} {:>12} {:>7.2}x",
                    k,
                    fmt_n(*m),
                    m / f.folios,
                    fmt_n(*lb),
                    if *lb > 0.0 {
                        m / lb
                    } else if *m == 0.0 {
                        1.0
                    } else {
                        f64::INFINITY
                    }
                );
            }
            let _ = writeln!(o, "  vmemmap frames freed: {} (buddy free count, measured), {} entries remapped, at most {}", fmt_n(f.frames_freed), fmt_n(f.frames_freed_hvo), fmt_n(f.frames_ideal));
            let _ = writeln!(
                o,
                "  vmemmap per GiB of huge pages: {} KiB before, {} KiB after",
                fmt_n(f.bytes_per_gib_before / 1024.0),
                fmt_n(f.bytes_per_gib_after / 1024.0)
            );
            for (op, v) in &f.phases {
                let parts: Vec<String> =
                    v.iter().map(|(p, x)| format!("{p} {}", fmt_n(*x))).collect();
                let _ = writeln!(o, "  {op} by phase, per folio (batched): {}", parts.join(", "));
            }
        }
        if !self.tails.is_empty() {
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "tail designs (one boot each, hvo_tails=seed|shared), steady state, per folio"
            );
            let _ = writeln!(
                o,
                "  {:<7} {:<4} {:<9} {:>12} {:>9} {:>6} {:>7} {:>20} {:>12}",
                "design",
                "size",
                "op",
                "instructions",
                "remapped",
                "TLBIs",
                "writes",
                "page-0 copies, batch",
                "buddy delta"
            );
            for l in self.tails.iter().filter(|l| l.s("op") != "lookup") {
                let _ = writeln!(
                    o,
                    "  {:<7} {:<4} {:<9} {:>12} {:>9} {:>6} {:>7} {:>20} {:>12}",
                    l.s("design"),
                    l.s("size"),
                    l.s("op"),
                    fmt_n(l.get("insn_per_folio")),
                    l.s("remapped_per_folio"),
                    l.s("tlbi_per_folio"),
                    l.s("writes_per_folio"),
                    l.s("head_copies"),
                    l.s("buddy_delta")
                );
            }
            for l in self.tails.iter().filter(|l| l.s("op") == "lookup") {
                let _ = writeln!(
                    o,
                    "  {:<7} compound-head lookup ({} pfns of {} folios): {:.2} instructions each",
                    l.s("design"),
                    l.s("pfns"),
                    l.s("size"),
                    l.get("insn_x100_per_lookup") / 100.0
                );
            }
        }
        if !self.demote.is_empty() {
            let _ = writeln!(o);
            let _ = writeln!(o, "demote one optimized 1G folio into 512 x 2M (HVO on)");
            let _ = writeln!(
                o,
                "  {:<20} {:>14} {:>14} {:>12} {:>7} {:>8} {:>8} {:>6}",
                "mode",
                "instructions",
                "frames taken",
                "freed",
                "TLBIs",
                "writes",
                "windows",
                "wrong"
            );
            for l in self.demote.iter().filter(|l| l.kv.contains_key("mode")) {
                let _ = writeln!(
                    o,
                    "  {:<20} {:>14} {:>14} {:>12} {:>7} {:>8} {:>8} {:>6}",
                    l.s("mode"),
                    fmt_n(l.get("instrs")),
                    l.s("frames_alloc"),
                    l.s("frames_freed"),
                    l.s("tlbi"),
                    l.s("writes"),
                    l.s("windows"),
                    l.s("wrong")
                );
            }
        }
        if !self.smp.is_empty() {
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "four cores (separate boot without -icount: host time, 62.5 MHz counter ticks, varies run to run): optimize + restore of {} x 2M folios with {} reader cores",
                fmt_n(self.smp[0].folios),
                fmt_n(self.smp[0].readers)
            );
            let _ = writeln!(
                o,
                "  {:<14} {:>14} {:>16} {:>8} {:>6} {:>14} {:>8} {:>10}",
                "strategy",
                "HVO us/cycle",
                "reader ops/Mtick",
                "lost",
                "IPIs",
                "held ticks",
                "waited",
                "unexpected"
            );
            for s in &self.smp {
                let lost =
                    if s.loss.is_finite() { format!("{:.1}%", s.loss * 100.0) } else { "-".into() };
                let _ = writeln!(
                    o,
                    "  {:<14} {:>14} {:>16} {:>8} {:>6} {:>14} {:>8} {:>10}",
                    s.strategy,
                    fmt_n(s.hvo_us_per_cycle),
                    fmt_n(s.ops_per_mtick),
                    lost,
                    fmt_n(s.ipis),
                    fmt_n(s.held_ticks),
                    fmt_n(s.faults_waited),
                    fmt_n(s.unexpected_faults)
                );
            }
        }
        o
    }
}

fn goal(x: f64, limit: f64) -> String {
    if x <= limit {
        format!("<= {limit}x: met")
    } else {
        format!("<= {limit}x: MISSED by {:.2}x", x / limit)
    }
}

/// An integer with thousands separators (`-` for a figure that was not measured).
fn fmt_n(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let n = x.round() as i64;
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// The chart: vmemmap memory with and without HVO against the number of huge pages (one panel
/// per size), and the instructions per folio of each operation.
fn chart(r: &Report, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((2, 2));
    // Top row: vmemmap memory against the number of huge pages, one panel per size.
    for (panel, f) in panels[..2].iter().zip(&r.sizes) {
        let max_n: u32 = if f.size == "2M" { 1024 } else { 16 };
        let mib = |bytes_per_folio: f64, n: u32| bytes_per_folio * f64::from(n) / 1048576.0;
        let before = f.bytes_per_gib_before * f.size_bytes / 1073741824.0;
        let after = f.bytes_per_gib_after * f.size_bytes / 1073741824.0;
        let top = mib(before, max_n) * 1.1;
        let mut c = ChartBuilder::on(panel)
            .caption(
                format!("vmemmap for {} huge pages (measured per folio)", f.size),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0u32..max_n, 0f64..top)?;
        c.configure_mesh()
            .x_desc(format!("number of {} huge pages", f.size))
            .y_desc("vmemmap (MiB)")
            .draw()?;
        let steps: Vec<u32> = (0..=16).map(|i| i * max_n / 16).collect();
        c.draw_series(LineSeries::new(
            steps.iter().map(|&n| (n, mib(before, n))),
            RED.stroke_width(2),
        ))?
        .label("HVO off")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], RED));
        c.draw_series(LineSeries::new(
            steps.iter().map(|&n| (n, mib(after, n))),
            BLUE.stroke_width(2),
        ))?
        .label("HVO on")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLUE));
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()?;
    }
    // Bottom row: instructions per folio (batched), optimize and restore stacked by phase.
    let phase_colors = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    for (panel, f) in panels[2..].iter().zip(&r.sizes) {
        // (label, stacked segments (value, colour))
        let mut bars: Vec<(String, Vec<(f64, RGBColor)>)> = Vec::new();
        let grey = RGBColor(170, 170, 170);
        if let Some((_, off, on)) = f.alloc.iter().find(|(m, _, _)| m == "batched") {
            bars.push(("alloc, HVO off".into(), vec![(*off, grey)]));
            bars.push(("alloc, HVO on".into(), vec![(*on, RGBColor(90, 90, 90))]));
        }
        if let Some((_, off, on)) = f.free.iter().find(|(m, _, _)| m == "batched") {
            bars.push(("free, HVO off".into(), vec![(*off, grey)]));
            bars.push(("free, HVO on".into(), vec![(*on, RGBColor(90, 90, 90))]));
        }
        for (op, v) in &f.phases {
            let segs = v.iter().zip(phase_colors).map(|((_, x), c)| (*x, c)).collect();
            bars.push((op.clone(), segs));
        }
        bars.push(("optimize bound".into(), vec![(f.opt_lb, RGBColor(0, 0, 0))]));
        let total =
            |b: &Vec<(f64, RGBColor)>| b.iter().map(|s| s.0).filter(|x| x.is_finite()).sum::<f64>();
        let max = bars.iter().map(|b| total(&b.1)).fold(1.0, f64::max) * 1.15;
        let n = bars.len() as u32;
        let mut c = ChartBuilder::on(panel)
            .caption(
                format!("{} folio: instructions per folio, batched", f.size),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((0u32..n).into_segmented(), 0f64..max)?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(n as usize)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => {
                    bars.get(*i as usize).map(|b| b.0.clone()).unwrap_or_default()
                }
                _ => String::new(),
            })
            .x_label_style(("sans-serif", 11))
            .y_label_formatter(&|y| fmt_n(*y))
            .draw()?;
        for (i, (_, segs)) in bars.iter().enumerate() {
            let i = i as u32;
            let mut base = 0.0;
            for (v, col) in segs {
                if !v.is_finite() || *v <= 0.0 {
                    continue;
                }
                c.draw_series(std::iter::once(Rectangle::new(
                    [(SegmentValue::Exact(i), base), (SegmentValue::Exact(i + 1), base + v)],
                    col.filled(),
                )))?;
                base += v;
            }
        }
        for (name, col) in PHASES.iter().zip(phase_colors) {
            c.draw_series(std::iter::empty::<Rectangle<(SegmentValue<u32>, f64)>>())?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], col.filled()));
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[&str] = &[
        "boot ticks=1000 hz=62500000",
        "prim name=store reps=512 ticks=64",
        "prim name=tlbi reps=512 ticks=64",
        "prim name=dsb reps=512 ticks=64",
        "prim name=isb reps=512 ticks=64",
        "prim name=copy4k reps=64 ticks=640",
        "prim name=alloc_frame reps=64 ticks=640",
        "prim name=free_frame reps=64 ticks=640",
        "prim name=table_alloc reps=16 ticks=160",
        "run size=2M hvo=off mode=batched folios=64 alloc_ticks=6400 free_ticks=6400 vm_before=2097152 vm_after=2097152",
        "phases size=2M mode=batched op=optimize check=10 split=0 remap=10 copy=5 tlb=5 alloc=1 free=8 grace=0",
        "run size=2M hvo=on mode=batched folios=64 alloc_ticks=7040 free_ticks=12800 opt_ticks=640 res_ticks=640 splits=0 lb_splits=0 tables=0 remapped=448 buddy_gain=448 opt_writes=1024 opt_tlbi=512 opt_dsb=3 vm_before=2097152 vm_after=262144",
        "done ok=1",
    ];

    #[test]
    fn parses_and_derives() {
        let lines: Vec<String> = SAMPLE.iter().map(|s| s.to_string()).collect();
        let d = BenchData::parse(&lines).unwrap();
        assert!(d.ok);
        assert_eq!(d.ipt(), 16.0);
        assert_eq!(d.prim("store"), 2.0);
        let r = Report::new(&d, &[("qemu-raspi4b", 1)], true);
        let f = &r.sizes[0];
        assert_eq!(f.vm_pages, 8.0);
        assert_eq!(f.alloc[0], ("batched".to_string(), 1600.0, 1760.0));
        assert_eq!(f.frames_freed, 448.0);
        assert_eq!(f.bytes_per_gib_before, 16.0 * 1048576.0);
        assert_eq!(f.bytes_per_gib_after, 2.0 * 1048576.0);
        // 16 stores + copy + alloc + 8 frees, and one window (TLBI, 3 DSBs, ISB) over 64 folios.
        let lb = 16.0 * 2.0 + 160.0 + 160.0 + 8.0 * 160.0 + (2.0 + 3.0 * 2.0 + 2.0) / 64.0;
        assert!((f.opt_lb - lb).abs() < 1e-9, "{} != {lb}", f.opt_lb);
        let t = r.table();
        assert!(t.contains("allocate, batched"), "{t}");
        assert!(t.contains("1.10x"), "{t}");
    }

    #[test]
    fn incomplete_output_is_an_error() {
        assert!(BenchData::parse(&["boot ticks=1 hz=1".to_string()]).is_err());
        assert_eq!(fmt_n(1234567.4), "1,234,567");
        assert_eq!(fmt_n(f64::NAN), "-");
    }

    #[test]
    fn chart_renders_without_fonts() {
        let lines: Vec<String> = SAMPLE.iter().map(|s| s.to_string()).collect();
        let d = BenchData::parse(&lines).unwrap();
        let r = Report::new(&d, &[], true);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.svg");
        chart(&r, &p).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.contains("<svg") && svg.contains("HVO on"));
    }
}
