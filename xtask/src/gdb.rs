//! `cargo xtask gdb`: start QEMU halted with a GDB server on :1234.

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::firmware::{self, BuildOptions};
use crate::qemu::{shell_quote, Outcome, QemuConfig};
use crate::run::run_logged;
use crate::Board;

/// Arguments of `cargo xtask gdb`.
#[derive(clap::Args)]
pub struct Args {
    /// The board; only qemu-raspi4b runs under QEMU.
    #[arg(long, value_enum, default_value_t)]
    board: Board,
    /// Build with the release profile.
    #[arg(long)]
    release: bool,
    /// Pass a device tree to QEMU (`-dtb`).
    #[arg(long, value_name = "FILE")]
    dtb: Option<std::path::PathBuf>,
    /// Boot arguments (QEMU `-append`).
    #[arg(last = true, value_name = "BOOTARGS")]
    bootargs: Vec<String>,
}

/// Run the command.
pub fn main(args: Args) -> Result<ExitCode> {
    if args.board != Board::QemuRaspi4b {
        bail!("board {} does not run under QEMU; use --board qemu-raspi4b", args.board.name());
    }
    crate::setup::ensure(crate::setup::FOR_RUN, false)?;
    let fw = firmware::build(&BuildOptions {
        board: args.board,
        release: args.release,
        ..Default::default()
    })?;
    let cfg =
        QemuConfig { image: fw.image.clone(), dtb: args.dtb, bootargs: args.bootargs, gdb: true };
    eprintln!("xtask: QEMU waits for GDB on :1234; in another terminal run:");
    eprintln!(
        "  gdb-multiarch {} -ex 'target remote :1234'",
        shell_quote(&fw.elf.to_string_lossy())
    );
    let run = run_logged(&cfg, &fw.elf, false, None)?;
    Ok(match run.outcome {
        Outcome::Exited(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Outcome::Signalled | Outcome::TimedOut => ExitCode::FAILURE,
    })
}
