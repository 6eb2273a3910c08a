//! `cargo xtask monitor`: decode the firmware log arriving on a serial port.

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
    let mut port = serialport::new(&args.port, args.baud)
        .timeout(Duration::from_millis(200))
        .open()
        .with_context(|| {
            format!(
                "opening {} at {} baud (is the adapter plugged in, and may you use it? \
                 try: sudo usermod -aG dialout $USER)",
                args.port, args.baud
            )
        })?;
    eprintln!("xtask: listening on {} at {} 8N1; Ctrl-C to stop", args.port, args.baud);
    // Typed lines go to the board (the `console` boot argument); the terminal echoes them.
    match port.try_clone() {
        Ok(mut tx) => {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut tx);
            });
        }
        Err(e) => eprintln!("xtask: typed input not sent: cannot share {}: {e}", args.port),
    }
    let mut decoder = match &info {
        Some(info) => info.decoder(),
        None => LogDecoder::plain(),
    };
    let stdout = std::io::stdout();
    let mut print = |line: LogLine| {
        let mut out = stdout.lock();
        let _ = writeln!(out, "{}", line.rendered);
        let _ = out.flush();
    };
    let mut buf = [0u8; 1024];
    loop {
        match port.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => decoder.feed(&buf[..n], &mut print),
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => {
                decoder.finish(&mut print);
                return Err(e).with_context(|| format!("reading {}", args.port));
            }
        }
    }
}
