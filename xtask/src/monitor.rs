//! `cargo xtask monitor`: decode the firmware log arriving on a serial port.
//!
//! The port is read with the same [`LogDecoder`] `cargo xtask run` uses on QEMU's stdout, and the
//! monitor stops at the firmware's final line (`end of run: status N`, printed by boards without
//! semihosting before they park) and exits with that status. `cargo xtask test` checks it by
//! replaying a run's UART bytes through a pseudo-terminal ([`replay_through_pty`]).

use std::io::{ErrorKind, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::decode::{DefmtInfo, LogDecoder, LogLine};
use crate::firmware::{self, BuildOptions};
use crate::Board;

/// Arguments of `cargo xtask monitor`.
#[derive(clap::Args)]
pub struct Args {
    /// The serial device (a USB-serial adapter on GPIO14 TXD / GPIO15 RXD).
    #[arg(long, value_name = "DEV", default_value = "/dev/ttyUSB0")]
    port: String,
    /// Baud rate (8N1).
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// The board whose ELF holds the defmt table.
    #[arg(long, value_enum, default_value_t = Board::Rpi4)]
    board: Board,
    /// Decode against the dev-profile ELF instead of the release one `cargo xtask sdcard` flashes.
    #[arg(long)]
    debug: bool,
    /// The firmware logs plain text: print the bytes as they come.
    #[arg(long)]
    plain: bool,
}

/// Run the command.
pub fn main(args: Args) -> Result<ExitCode> {
    // Build first so the defmt table matches the source (and the image on the card, if it was
    // made from the same tree).
    let info = if args.plain {
        None
    } else {
        let fw = firmware::build(&BuildOptions {
            board: args.board,
            release: !args.debug,
            ktest: false,
            plain: false,
        })?;
        Some(DefmtInfo::load(&fw.elf)?)
    };
    let decoder = match &info {
        Some(info) => info.decoder(),
        None => LogDecoder::plain(),
    };
    let stdout = std::io::stdout();
    let mut print = |line: LogLine| {
        let mut out = stdout.lock();
        let _ = writeln!(out, "{}", line.rendered);
        let _ = out.flush();
    };
    let status = listen(&args.port, args.baud, decoder, true, &mut print)?;
    eprintln!("xtask: the firmware finished with status {status}");
    Ok(ExitCode::from(u8::try_from(status).unwrap_or(1)))
}

/// Open `port` and decode what arrives until the final line; returns its status. With
/// `send_stdin`, lines typed in xtask's terminal go to the port (the `console` boot argument;
/// the terminal echoes them).
pub fn listen(
    port: &str,
    baud: u32,
    mut decoder: LogDecoder<'_>,
    send_stdin: bool,
    out: &mut dyn FnMut(LogLine),
) -> Result<i32> {
    let mut serial = serialport::new(port, baud)
        .timeout(Duration::from_millis(200))
        .open()
        .with_context(|| {
            format!(
                "opening {port} at {baud} baud (is the adapter plugged in, and may you use \
                     it? try: sudo usermod -aG dialout $USER)"
            )
        })?;
    eprintln!("xtask: listening on {port} at {baud} 8N1; Ctrl-C to stop");
    if send_stdin {
        match serial.try_clone() {
            Ok(mut tx) => {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut tx);
                });
            }
            Err(e) => eprintln!("xtask: typed input not sent: cannot share {port}: {e}"),
        }
    }
    let mut finished = None;
    let mut buf = [0u8; 1024];
    loop {
        match serial.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => decoder.feed(&buf[..n], &mut |line| {
                finished = finished.or(crate::run::final_status(&line.message));
                out(line)
            }),
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => {
                decoder.finish(out);
                return Err(e).with_context(|| format!("reading {port}"));
            }
        }
        if let Some(status) = finished {
            return Ok(status);
        }
    }
}

/// Write `raw` (a run's UART bytes) into a new pseudo-terminal and decode it with [`listen`] on
/// the other side, as `monitor --port /dev/pts/N` would: returns the rendered lines and the
/// final status.
#[cfg(unix)]
pub fn replay_through_pty(raw: &[u8], info: &DefmtInfo) -> Result<(Vec<String>, Option<i32>)> {
    use serialport::SerialPort;
    // `pair()` opens the master and a slave in raw mode; `listen` opens the slave again by name.
    let (mut master, slave) =
        serialport::TTYPort::pair().context("opening a pseudo-terminal pair")?;
    let name = slave.name().context("the pseudo-terminal has no name")?;
    let data = raw.to_vec();
    // Write from another thread: the pty buffer holds only a few KiB until the reader drains it.
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        for chunk in data.chunks(61) {
            master.write_all(chunk)?;
        }
        master.flush()?;
        // Keep the master open until the reader has had time to finish.
        std::thread::sleep(Duration::from_secs(2));
        Ok(())
    });
    let mut lines = Vec::new();
    // An error here (no final line before the master closed: EIO) leaves the writer to finish
    // on its own.
    let status = listen(&name, 115_200, info.decoder(), false, &mut |l| lines.push(l.rendered))
        .with_context(|| format!("after {} decoded lines", lines.len()))?;
    let written = writer.join().map_err(|_| anyhow::anyhow!("the pty writer panicked"))?;
    written.context("writing into the pseudo-terminal")?;
    drop(slave);
    Ok((lines, Some(status)))
}
