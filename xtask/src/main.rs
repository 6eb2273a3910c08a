//! `cargo xtask <command>`: build, run, test and package pi4-hvo.
//!
//! Every subcommand lives in its own module; the shared pieces are [`firmware`] (building the
//! ELF and turning it into `kernel8.img`), [`qemu`] (the QEMU invocation and its supervision) and
//! [`decode`] (turning the UART byte stream into log lines, defmt or plain text).

mod bench;
mod build;
mod decode;
mod doctor;
mod firmware;
mod flash;
mod fuzz;
mod gdb;
mod monitor;
mod qemu;
mod run;
mod sdcard;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Build, run, test and package the pi4-hvo firmware.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the firmware ELF and its flat `kernel8.img`.
    Build(build::Args),
    /// Build and boot the firmware on QEMU's raspi4b, decoding its log live.
    Run(run::Args),
    /// Run every test: host unit tests, on-target runs under QEMU and the SD-card check.
    Test(test::Args),
    /// Build a bootable FAT32 SD-card image for a Raspberry Pi 4.
    Sdcard(sdcard::Args),
    /// Start QEMU halted with a GDB server on :1234 and print the command to attach.
    Gdb(gdb::Args),
    /// Check the tools the other commands need and print how to install what is missing.
    Doctor,
    /// Decode the firmware log from a serial port (a Pi 4 on GPIO14/15).
    Monitor(monitor::Args),
    /// Fuzz the boot-input parsers (and kcore's operation-sequence fuzz) for a time budget.
    Fuzz(fuzz::Args),
    /// Load the firmware into a Pi 4 over JTAG with probe-rs and start it (feature `probe`).
    Flash(flash::Args),
    /// Benchmark HVO on QEMU (instruction counts), or with --host kcore against aarch64-paging.
    Bench(bench::Args),
}

/// The boards the firmware can be built for: package `board-<name>`, bin `pi4-hvo-<name>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Board {
    /// QEMU's `raspi4b` machine.
    #[default]
    #[value(name = "qemu-raspi4b")]
    QemuRaspi4b,
    /// A real Raspberry Pi 4 Model B.
    #[value(name = "rpi4")]
    Rpi4,
}

impl Board {
    /// The board's name as used in directory, package and binary names.
    pub fn name(self) -> &'static str {
        match self {
            Board::QemuRaspi4b => "qemu-raspi4b",
            Board::Rpi4 => "rpi4",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(args) => build::main(args),
        Command::Run(args) => run::main(args),
        Command::Test(args) => test::main(args),
        Command::Sdcard(args) => sdcard::main(args),
        Command::Gdb(args) => gdb::main(args),
        Command::Doctor => doctor::main(),
        Command::Monitor(args) => monitor::main(args),
        Command::Fuzz(args) => fuzz::main(args),
        Command::Flash(args) => flash::main(args),
        Command::Bench(args) => bench::main(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
