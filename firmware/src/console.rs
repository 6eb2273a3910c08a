//! The serial console: drives the HugeTLB pool at run time over the UART, as Linux's sysfs and
//! sysctl files do (`nr_hugepages`, `hugetlb_optimize_vmemmap`), and shows the state
//! (`meminfo`, `ptdump`, `hvo report`). Entered after the boot report with the boot argument
//! `console`; `exit` ends the run with status 0.
//!
//! Line editing and parsing are `kcore::lineedit` and `kcore::shell` (host-tested); this module
//! polls the PL011 for bytes and carries the commands out.
//!
//! The UART carries the log too. With defmt logging (the default) every byte on it belongs to a
//! rzCOBS frame between 0x00 delimiters, so raw echo bytes would reach the host decoder as
//! damaged frames: the firmware does not echo typed bytes. The host shows them instead (`cargo
//! xtask run` reads whole lines from the terminal, which echoes them), and every accepted line is
//! logged back as `console> LINE` before its replies. With `plain-log` the firmware echoes each
//! byte and the editing (`BS SP BS`), for a plain serial terminal, and prints a `hvo> ` prompt.
//! Replies are log lines in both modes.
//!
//! Receive is polled (the PL011 receive FIFO, by the boot core): QEMU holds input back while the
//! FIFO is full, so a pasted script is not lost while a long command runs.

use crate::drivers::timer;
use crate::hvo::{self, Batch, BATCH};
use crate::log::{Disp, CONSOLE};
use crate::memory::{self, BUDDY, HUGETLB, LINEAR, VMEMMAP};
use core::sync::atomic::{AtomicU32, Ordering};
use kcore::hugetlb::{HugePageSize, NoHooks};
use kcore::hugetlb_vmemmap::{self as hv, HvoError, HvoStats};
use kcore::lineedit::{LineEditor, LineEvent};
use kcore::shell::{self, Command, PtdumpRange};

/// Measurements that disagreed (frame counts, conservation, head/tail answers): `exit` then
/// ends the run with status 1 instead of 0, so a scripted session fails on them.
static CHECKS_FAILED: AtomicU32 = AtomicU32::new(0);

/// Records a check's outcome and returns the word for the reply.
fn verdict(ok: bool) -> &'static str {
    if ok {
        "agree"
    } else {
        CHECKS_FAILED.fetch_add(1, Ordering::Relaxed);
        "DISAGREE"
    }
}

/// The firmware echoes typed bytes only when the log is plain text (see the module comment).
const ECHO: bool = cfg!(any(feature = "plain-log", not(feature = "defmt-log")));

fn echo(bytes: &[u8]) {
    if ECHO {
        crate::log::with_console(|u| bytes.iter().for_each(|&b| u.put(b)));
    }
}

fn prompt() {
    echo(b"hvo> ");
}

/// Runs the console until `exit`. `boot_failures` is what the boot would have exited with.
pub fn run(boot_failures: usize) -> ! {
    if boot_failures != 0 {
        crate::warn!("console: the boot reported {} failure(s) (see above)", boot_failures);
    }
    crate::info!(
        "console: ready; type `help` for the commands, `exit` to end the run (echo: {})",
        if ECHO { "by the firmware" } else { "by the host terminal; lines logged as `console> `" }
    );
    // Bytes typed during the boot are kept: they are the first commands.
    let mut ed = LineEditor::new();
    prompt();
    loop {
        let Some(b) = CONSOLE.try_get() else {
            core::hint::spin_loop();
            continue;
        };
        match ed.feed(b, &mut echo) {
            LineEvent::Pending => continue,
            LineEvent::Cancelled => crate::info!("console: ^C: line dropped"),
            LineEvent::Line(Err(e)) => crate::warn!("console: {}", Disp(&e)),
            LineEvent::Line(Ok(line)) => {
                if !ECHO && !line.trim().is_empty() {
                    crate::info!("console> {}", line);
                }
                match shell::parse(line) {
                    Ok(None) => {}
                    Ok(Some(Command::Exit)) => {
                        let failed = CHECKS_FAILED.load(Ordering::Relaxed);
                        if failed == 0 {
                            crate::info!("console: exit: ending the run with status 0");
                            crate::bootstate::exit(0)
                        }
                        crate::error!(
                            "console: exit: {} check(s) disagreed during the session; status 1",
                            failed
                        );
                        crate::bootstate::exit(1)
                    }
                    Ok(Some(cmd)) => execute(cmd),
                    Err(e) => crate::warn!("console: {}", Disp(&e)),
                }
            }
        }
        prompt();
    }
}

fn execute(cmd: Command) {
    match cmd {
        Command::Help => {
            for (usage, what) in shell::HELP {
                crate::info!("console: {} - {}", usage, what);
            }
        }
        Command::NrHugepages { size: None, .. } => {
            for size in HugePageSize::ALL {
                show_pool(size);
            }
        }
        Command::NrHugepages { size: Some(size), count: None } => show_pool(size),
        Command::NrHugepages { size: Some(size), count: Some(n) } => set_pool(size, n),
        Command::Demote { size, count } => demote(size, count),
        Command::HugetlbOptimizeVmemmap(None) => {
            crate::info!("console: vm.hugetlb_optimize_vmemmap = {}", u8::from(hv::hvo_enabled()))
        }
        Command::HugetlbOptimizeVmemmap(Some(on)) => {
            hv::set_hvo_enabled(on);
            crate::info!(
                "console: vm.hugetlb_optimize_vmemmap = {}: folios allocated from now on are {}; the {} optimized folio(s) stay so until dissolved",
                u8::from(on),
                if on { "optimized" } else { "not optimized" },
                hv::nr_optimized_folios()
            );
        }
        Command::Meminfo => {
            memory::meminfo();
            crate::info!(
                "meminfo: HVO:           {} (vm.hugetlb_optimize_vmemmap), {} folio(s) optimized, vmemmap in use {} kB",
                if hv::hvo_enabled() { "on" } else { "off" },
                hv::nr_optimized_folios(),
                vmemmap_bytes() / 1024
            );
        }
        Command::Ptdump(range) => {
            let (start, end) = range.bounds();
            if let PtdumpRange::Region(r) = range {
                crate::info!("console: ptdump {}", r.name());
            }
            crate::ptdump::dump_range(start, end);
        }
        Command::HvoReport => hvo_report(),
        Command::Stress(n) => {
            // The boot's `stress=N` run on the pool as it is now, under `hvo_bbm=` (default
            // fault-wait); an unclean run counts as a failed check.
            let strategy = crate::bootstate::cmdline().hvo_bbm;
            if !crate::hvo_smp::stress::boot(n, strategy) {
                CHECKS_FAILED.fetch_add(1, Ordering::Relaxed);
                crate::error!("console: stress {}: the run was not clean", n);
            }
        }
        Command::Exit => {}
    }
}

fn vmemmap_bytes() -> u64 {
    let mm = memory::init_mm();
    let g = mm.mmap_read();
    hv::vmemmap_bytes_in_use(&g, &LINEAR)
}

/// Free pool folios of `size` and how many of them are optimized (walks the free list).
fn pool_optimized(size: HugePageSize) -> (u64, u64) {
    let all = hvo::take_all(size);
    let mut n = 0;
    let mut opt = 0;
    for b in all.iter() {
        for f in b {
            n += 1;
            opt += u64::from(hv::folio_is_optimized(&VMEMMAP, f));
        }
    }
    hvo::return_all(all);
    (n, opt)
}

fn show_pool(size: HugePageSize) {
    let c = HUGETLB.lock().counts(size);
    let (_, opt) = pool_optimized(size);
    crate::info!(
        "console: nr_hugepages {} = {} (free {}, vmemmap optimized {})",
        size.name(),
        c.nr_hugepages,
        c.free_hugepages,
        opt
    );
}

fn check_conservation() {
    match memory::check_conservation() {
        Ok(c) => crate::info!(
            "console: conservation: every RAM frame accounted for (free {}, hugetlb {}, vmemmap {}, page tables {})",
            c.free,
            c.hugetlb,
            c.vmemmap,
            c.page_table
        ),
        Err(e) => {
            verdict(false);
            crate::error!("console: conservation BROKEN: {:?}", e)
        }
    }
}

/// `nr_hugepages SIZE N`: grows or shrinks the pool to `n` folios.
fn set_pool(size: HugePageSize, n: u64) {
    let nr = HUGETLB.lock().counts(size).nr_hugepages;
    let t0 = timer::ticks();
    if n > nr {
        grow(size, nr, n);
    } else if n < nr {
        shrink(size, nr, n);
    } else {
        crate::info!("console: nr_hugepages {} = {}: unchanged", size.name(), n);
        return;
    }
    let us = timer::ticks_to_ns(timer::ticks() - t0) / 1000;
    let now = HUGETLB.lock().counts(size).nr_hugepages;
    crate::info!("console: nr_hugepages {} = {} (was {}; {} us)", size.name(), now, nr, us);
    check_conservation();
}

/// Allocates folios until the pool has `target`, optimizing each batch if HVO is on (Linux's
/// `alloc_pool_huge_folio` and `hugetlb_vmemmap_optimize_folios`). Stops at the first allocation
/// failure and warns with the numbers, as the boot does.
fn grow(size: HugePageSize, nr: u64, target: u64) {
    let enabled = hv::hvo_enabled();
    let vmemmap_before = vmemmap_bytes();
    let mut added = 0u64;
    let mut optimized = 0u64;
    let mut wrong = 0u64;
    let mut stats = HvoStats::default();
    let mut buddy_delta = 0i64;
    let mut short = false;
    while nr + added < target && !short {
        let mut batch = Batch::new();
        {
            let mut buddy = BUDDY.lock();
            let mut pool = HUGETLB.lock();
            while batch.len() < BATCH && nr + added + (batch.len() as u64) < target {
                match pool.alloc_pool_folio(size, &mut buddy, &VMEMMAP, &mut NoHooks) {
                    Ok(f) => {
                        // HVO works on frozen folios (refcount 0): the new folio's one
                        // reference is ours, nobody else can have taken one yet.
                        f.head(&VMEMMAP).ref_freeze(1);
                        if let Err(f) = batch.push(f) {
                            pool.enqueue(f, &VMEMMAP);
                            added += 1;
                        }
                    }
                    Err(_) => {
                        short = true;
                        break;
                    }
                }
            }
        }
        if enabled && !batch.is_empty() {
            let free0 = BUDDY.lock().free_pages();
            let r = hvo::with_hvo(
                |_| {},
                |h| Ok::<_, HvoError>((h.optimize_folios(&batch)?, h.stats())),
            );
            buddy_delta += BUDDY.lock().free_pages() as i64 - free0 as i64;
            match r {
                Ok((k, s)) => {
                    optimized += k;
                    stats += s;
                }
                Err(e) => crate::warn!(
                    "console: HVO of {} new folio(s) failed: {:?}; they stay in the pool unoptimized",
                    batch.len(),
                    e
                ),
            }
            wrong += batch.iter().map(hvo::verify_heads).sum::<u64>();
            if wrong != 0 {
                verdict(false);
            }
        }
        added += batch.len() as u64;
        hvo::return_to_pool(batch);
    }
    if short {
        crate::warn!(
            "HugeTLB: allocating {} of {} hugepages of size {} failed: memory allows only {}",
            target - nr - added,
            target,
            size.name(),
            nr + added
        );
    }
    crate::info!(
        "console: nr_hugepages {}: {} folio(s) allocated, {} optimized (vm.hugetlb_optimize_vmemmap = {})",
        size.name(),
        added,
        optimized,
        u8::from(enabled)
    );
    if enabled {
        let expected = stats.net_frames_freed() - stats.tables_allocated as i64;
        crate::info!(
            "console:   vmemmap frames freed: {} by the buddy free count, {} tail entries remapped; freed {} - allocated {} - page tables {} = {}: {}",
            buddy_delta,
            stats.ptes_remapped,
            stats.frames_freed,
            stats.frames_allocated,
            stats.tables_allocated,
            expected,
            verdict(expected == buddy_delta)
        );
        crate::info!(
            "console:   vmemmap in use {} KiB before, {} KiB after; splits {}, TLBI {}; every pfn's head/tail answer: {} wrong",
            vmemmap_before / 1024,
            vmemmap_bytes() / 1024,
            stats.splits,
            stats.tlbi,
            wrong
        );
    }
}

/// Dissolves free folios until the pool has `target`, restoring each optimized one's vmemmap
/// first (`hvo::dissolve`, Linux's `update_and_free_hugetlb_folio`).
fn shrink(size: HugePageSize, nr: u64, target: u64) {
    let want = nr - target;
    let free0 = BUDDY.lock().free_pages();
    let mut dissolved = 0u64;
    let mut restored = 0u64;
    let mut failed = false;
    while dissolved < want && !failed {
        let batch = hvo::take_from_pool(size, (want - dissolved).min(BATCH as u64) as usize);
        if batch.is_empty() {
            crate::warn!(
                "console: nr_hugepages {}: no free folio left to dissolve ({} in use)",
                size.name(),
                HUGETLB.lock().counts(size).nr_hugepages
                    - HUGETLB.lock().counts(size).free_hugepages
            );
            break;
        }
        let mut rest = Batch::new();
        for f in batch {
            if failed {
                let _ = rest.push(f);
                continue;
            }
            let was_optimized = hv::folio_is_optimized(&VMEMMAP, &f);
            match hvo::dissolve(f) {
                Ok(()) => {
                    dissolved += 1;
                    restored += u64::from(was_optimized);
                }
                // dissolve() warned and put the folio back.
                Err(_) => failed = true,
            }
        }
        hvo::return_to_pool(rest);
    }
    let delta = BUDDY.lock().free_pages() as i64 - free0 as i64;
    let per = hv::optimizable_vmemmap_pages(size.order());
    let expected = (dissolved * size.nr_pages()) as i64 - (restored * per) as i64;
    crate::info!(
        "console: nr_hugepages {}: {} folio(s) dissolved, {} of them restored first",
        size.name(),
        dissolved,
        restored
    );
    crate::info!(
        "console:   buddy free count +{} pages = {} x {} folio pages - {} x {} vmemmap frames taken back by restore ({}): {}",
        delta,
        dissolved,
        size.nr_pages(),
        restored,
        per,
        expected,
        verdict(expected == delta)
    );
}

/// `demote SIZE N`: splits up to `n` free folios of `size` into folios of the next smaller
/// size (`crate::demote`), optimized directly when HVO is on.
fn demote(size: HugePageSize, n: u64) {
    let mut done = 0u64;
    while done < n {
        match crate::demote::demote_one(size, kcore::hugetlb_demote::DemoteMode::Direct) {
            Ok(r) => {
                done += 1;
                let s = r.stats;
                let to = r.to.map_or("?", |t| t.name());
                crate::info!(
                    "console: demote {}: 1 folio demoted into {} {} folio(s), {} optimized ({}); {} us",
                    size.name(),
                    s.parts,
                    to,
                    s.parts_optimized,
                    if s.direct { "direct, no restore" } else { "descriptors rewritten" },
                    timer::ticks_to_ns(r.ticks) / 1000
                );
                let expected = s.hvo.net_frames_freed() - s.hvo.tables_allocated as i64;
                crate::info!(
                    "console:   vmemmap frames: buddy free count {}, allocated {} freed {} page tables {} ({}): {}; entries remapped {} restored {}, TLBI {} ({} full), DSB {}, break windows {}",
                    r.buddy_delta,
                    s.hvo.frames_allocated,
                    s.hvo.frames_freed,
                    s.hvo.tables_allocated,
                    expected,
                    verdict(expected == r.buddy_delta),
                    s.hvo.ptes_remapped,
                    s.hvo.ptes_restored,
                    s.hvo.tlbi,
                    s.hvo.tlbi_flush_all,
                    s.hvo.dsb,
                    s.windows
                );
                if let Some(e) = s.optimize_error {
                    crate::warn!("console:   optimizing the parts stopped: {:?}", e);
                }
                crate::info!(
                    "console:   every pfn's head/tail answer: {} wrong: {}",
                    r.wrong,
                    verdict(r.wrong == 0)
                );
            }
            Err(e) => {
                crate::warn!("console: demote {}: {:?}; nothing changed", size.name(), e);
                break;
            }
        }
    }
    if done > 0 {
        for s in HugePageSize::ALL {
            show_pool(s);
        }
        check_conservation();
    }
}

fn hvo_report() {
    let mut total_opt = 0;
    crate::info!("console: hvo: vm.hugetlb_optimize_vmemmap = {}", u8::from(hv::hvo_enabled()));
    for size in HugePageSize::ALL {
        let c = HUGETLB.lock().counts(size);
        let (_, opt) = pool_optimized(size);
        total_opt += opt;
        let per = hv::optimizable_vmemmap_pages(size.order());
        crate::info!(
            "console: hvo {}: {} folio(s) in the pool, {} optimized, {} KiB of vmemmap freed ({} pages per folio)",
            size.name(),
            c.nr_hugepages,
            opt,
            opt * per * 4,
            per
        );
    }
    let counter = hv::nr_optimized_folios();
    crate::info!(
        "console: hvo: {} optimized folio(s) found in the pools, HVO's counter says {}: {}; vmemmap in use {} KiB",
        total_opt,
        counter,
        verdict(counter == total_opt),
        vmemmap_bytes() / 1024
    );
}
