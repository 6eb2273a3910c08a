//! `cargo xtask run`: build the firmware and boot it on QEMU's raspi4b, decoding its log live.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use crate::decode::{DefmtInfo, LogDecoder};
use crate::firmware::{self, BuildOptions};
use crate::qemu::{self, Outcome, QemuConfig};
use crate::Board;

/// Arguments of `cargo xtask run`.
#[derive(clap::Args)]
pub struct Args {
    /// The board: qemu-raspi4b, or rpi4 (the Pi 4 image, which has no semihosting: the run ends
    /// at its final line, `end of run: status N`).
    #[arg(long, value_enum, default_value_t)]
    board: Board,
    /// Build with the release profile.
    #[arg(long)]
    release: bool,
    /// Kill QEMU after this many seconds (default 120; none with the `console` boot argument).
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Pass a device tree to QEMU (`-dtb`); without it the firmware gets ATAGs. QEMU reports
    /// 960 MiB in it; the qemu-raspi4b board's table wins unless the boot arguments say
    /// `dt_memory`.
    #[arg(long, value_name = "FILE")]
    dtb: Option<PathBuf>,
    /// Build with plain-text logging and pass the UART bytes through undecoded.
    #[arg(long)]
    plain: bool,
    /// Do not install missing system packages; print the commands instead.
    #[arg(long)]
    no_install: bool,
    /// Boot arguments (QEMU `-append`), e.g. `-- ktest hugepagesz=2M hugepages=64`.
    #[arg(last = true, value_name = "BOOTARGS")]
    bootargs: Vec<String>,
}

/// Run the command.
pub fn main(args: Args) -> Result<ExitCode> {
    crate::setup::ensure(crate::setup::FOR_RUN, args.no_install)?;
    let fw = firmware::build(&BuildOptions {
        board: args.board,
        release: args.release,
        ktest: false,
        plain: args.plain,
    })?;
    let cfg =
        QemuConfig { image: fw.image.clone(), dtb: args.dtb, bootargs: args.bootargs, gdb: false };
    // `console`: an interactive session, xtask's stdin goes to the UART, no default time limit.
    let console = cfg.bootargs.iter().any(|a| a == "console");
    let timeout = args.timeout.or((!console).then_some(DEFAULT_TIMEOUT_SECS));
    let outcome = if console {
        eprintln!("xtask: console: type commands (Enter sends a line), `exit` ends the run");
        run_console(&cfg, &fw.elf, args.plain, timeout)?
    } else {
        run_logged(&cfg, &fw.elf, args.plain, timeout)?
    };
    Ok(match outcome.outcome {
        Outcome::Exited(code) => {
            eprintln!("xtask: firmware exited with status {code}");
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Outcome::Signalled => {
            eprintln!("xtask: QEMU was killed by a signal");
            ExitCode::FAILURE
        }
        Outcome::TimedOut => {
            let secs = timeout.unwrap_or_default();
            eprintln!("{}", timeout_message(secs, outcome.last_line.as_deref()));
            ExitCode::FAILURE
        }
    })
}

/// `--timeout`'s default, except for console sessions.
pub const DEFAULT_TIMEOUT_SECS: u64 = 120;

/// The message for a run that did not finish in time.
pub fn timeout_message(secs: u64, last_line: Option<&str>) -> String {
    format!(
        "firmware did not finish within {secs} s; last log line: {}",
        last_line.unwrap_or("(none)")
    )
}

/// The status in the final line a board without semihosting prints before it parks:
/// `end of run: status N; ...` (firmware/src/init.rs `exit`).
pub fn final_status(message: &str) -> Option<i32> {
    let rest = message.strip_prefix("end of run: status ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// How a logged run ended.
pub struct LoggedRun {
    /// QEMU's end.
    pub outcome: Outcome,
    /// The last log line seen, for timeout messages.
    pub last_line: Option<String>,
}

/// Boot `cfg` and print every log line as it arrives.
pub fn run_logged(
    cfg: &QemuConfig,
    elf: &std::path::Path,
    plain: bool,
    timeout_secs: Option<u64>,
) -> Result<LoggedRun> {
    eprintln!("xtask: {}", cfg.display());
    let info = if plain { None } else { Some(DefmtInfo::load(elf)?) };
    let mut decoder = match &info {
        Some(info) => info.decoder(),
        None => LogDecoder::plain(),
    };
    let mut last_line = None;
    let finished = std::cell::Cell::new(None);
    let mut print = |line: crate::decode::LogLine| {
        println!("{}", line.rendered);
        finished.set(finished.get().or(final_status(&line.message)));
        last_line = Some(line.rendered);
    };
    let outcome = qemu::run_until(cfg, timeout_secs.map(Duration::from_secs), &mut |bytes| {
        decoder.feed(bytes, &mut print);
        finished.get()
    })?;
    decoder.finish(&mut print);
    Ok(LoggedRun { outcome, last_line })
}

/// What the firmware logs when its console takes input.
pub const CONSOLE_READY: &str = "console: ready";

/// Boot `cfg` with xtask's stdin forwarded to the UART (the `console` boot argument), printing
/// every log line as it arrives.
pub fn run_console(
    cfg: &QemuConfig,
    elf: &std::path::Path,
    plain: bool,
    timeout_secs: Option<u64>,
) -> Result<LoggedRun> {
    eprintln!("xtask: {}", cfg.display());
    let info = if plain { None } else { Some(DefmtInfo::load(elf)?) };
    let mut decoder = match &info {
        Some(info) => info.decoder(),
        None => LogDecoder::plain(),
    };
    let mut last_line = None;
    // Input is held back until the firmware says `console: ready` (see `qemu::Input::Forward`).
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let set_ready = || ready.store(true, std::sync::atomic::Ordering::Release);
    let finished = std::cell::Cell::new(None);
    let mut print = |line: crate::decode::LogLine| {
        if line.message.contains(CONSOLE_READY) {
            set_ready();
        }
        finished.set(finished.get().or(final_status(&line.message)));
        println!("{}", line.rendered);
        last_line = Some(line.rendered);
    };
    let mut recent: Vec<u8> = Vec::new();
    let outcome = qemu::run_with_input(
        cfg,
        timeout_secs.map(Duration::from_secs),
        qemu::Input::Forward { ready: ready.clone() },
        &mut |bytes, _| {
            if plain {
                // Pass text through as it comes: the prompt and echo have no line end.
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(bytes);
                let _ = out.flush();
                recent.extend_from_slice(bytes);
                if recent.windows(CONSOLE_READY.len()).any(|w| w == CONSOLE_READY.as_bytes()) {
                    set_ready();
                }
                let keep = recent.len().saturating_sub(CONSOLE_READY.len());
                recent.drain(..keep);
            } else {
                decoder.feed(bytes, &mut print);
            }
            finished.get()
        },
    )?;
    decoder.finish(&mut print);
    Ok(LoggedRun { outcome, last_line })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_line() {
        assert_eq!(
            final_status("end of run: status 0; no semihosting here, core 0 waits in WFE"),
            Some(0)
        );
        assert_eq!(final_status("end of run: status 101; x"), Some(101));
        assert_eq!(final_status("end of run: status x"), None);
        assert_eq!(final_status("ktest: summary passed=1 failed=0"), None);
    }
}
