//! `cargo xtask build`: build the firmware ELF and write `kernel8.img` next to it.

use std::process::ExitCode;

use anyhow::Result;

use crate::firmware::{self, BuildOptions};
use crate::Board;

/// Arguments of `cargo xtask build`.
#[derive(clap::Args)]
pub struct Args {
    /// The board to build for.
    #[arg(long, value_enum, default_value_t)]
    board: Board,
    /// Build with the release profile (LTO, opt-level 3).
    #[arg(long)]
    release: bool,
    /// Extra cargo features of the board crate; only `ktest` (the on-target tests) is known.
    #[arg(long, value_parser = ["ktest"])]
    features: Option<String>,
    /// Log as plain text (feature plain-log) instead of defmt frames.
    #[arg(long)]
    plain: bool,
}

/// Run the command.
pub fn main(args: Args) -> Result<ExitCode> {
    let opts = BuildOptions {
        board: args.board,
        release: args.release,
        ktest: args.features.as_deref() == Some("ktest"),
        plain: args.plain,
    };
    let fw = firmware::build(&opts)?;
    println!("elf:   {}", fw.elf.display());
    Ok(ExitCode::SUCCESS)
}
