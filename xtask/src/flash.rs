//! `cargo xtask flash --probe [PROBE]`: load the firmware into a Raspberry Pi 4 over JTAG with
//! probe-rs (its `BCM2711` target, variant `RaspberryPi4B`) and start it.
//!
//! The flow, since a Pi 4 has no reset line on its JTAG pins (TRST only):
//! 1. `cargo xtask sdcard --jtag` makes a card whose `config.txt` sets `enable_jtag_gpio=1`
//!    (JTAG on GPIO22-27) and whose `kernel8.img` is a parking stub: an arm64 Image header and
//!    `wfe; b .-4`. The VideoCore firmware enters it at EL2 with the MMU off and x0 = the DTB.
//! 2. `flash` halts core 0 in that loop, writes the firmware's `kernel8.img` at its load address
//!    (physical, the MMU being off), sets the PC there and resumes: the boot goes on exactly as
//!    from the card, x0 still holding the DTB.
//! 3. The log: this firmware writes defmt frames to the PL011, not to an RTT buffer, so JTAG
//!    carries no log. With `--port DEV` the UART is decoded right after the start, as `monitor`
//!    does.
//!
//! probe-rs is a large dependency, behind the xtask feature `probe` (`cargo xtask-probe ...`, an
//! alias for `cargo run -p xtask --features probe --`). Without it `flash` says how to get it.

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::decode::DefmtInfo;
use crate::firmware::{self, BuildOptions};
use crate::Board;

/// probe-rs's name for the Pi 4 (target `BCM2711`, variant `RaspberryPi4B`).
pub const CHIP: &str = "RaspberryPi4B";

/// Arguments of `cargo xtask flash`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Load over JTAG with this debug probe (VID:PID[:SERIAL], hex, as `probe-rs list` shows
    /// it); without a value, the only probe attached.
    #[arg(long, value_name = "PROBE", num_args = 0..=1, default_missing_value = "")]
    pub probe: Option<String>,
    /// probe-rs target name.
    #[arg(long, default_value = CHIP)]
    pub chip: String,
    /// Load the dev-profile build instead of the release one.
    #[arg(long)]
    pub debug: bool,
    /// After starting it, decode the log from this serial port (GPIO14/15).
    #[arg(long, value_name = "DEV")]
    pub port: Option<String>,
    /// Baud rate of `--port`.
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
}

/// A debug probe as the lister reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeInfo {
    /// Human-readable name.
    pub name: String,
    /// USB vendor id.
    pub vid: u16,
    /// USB product id.
    pub pid: u16,
    /// USB serial number.
    pub serial: Option<String>,
}

/// `VID:PID[:SERIAL]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    /// USB vendor id.
    pub vid: u16,
    /// USB product id.
    pub pid: u16,
    /// USB serial number.
    pub serial: Option<String>,
}

/// Parse `--probe`'s value: empty means "the only one".
pub fn parse_selector(s: &str) -> Result<Option<Selector>> {
    if s.is_empty() {
        return Ok(None);
    }
    let mut parts = s.splitn(3, ':');
    let hex = |p: Option<&str>, what: &str| -> Result<u16> {
        let p = p.unwrap_or("");
        u16::from_str_radix(p, 16).map_err(|_| {
            anyhow::anyhow!(
                "--probe {s:?}: {what} {p:?} is not a 16-bit hex number (VID:PID[:SERIAL])"
            )
        })
    };
    let vid = hex(parts.next(), "vendor id")?;
    let pid = hex(parts.next(), "product id")?;
    let serial = parts.next().filter(|s| !s.is_empty()).map(String::from);
    Ok(Some(Selector { vid, pid, serial }))
}

/// Choose the probe: the one matching `sel`, or the only one attached.
pub fn select(probes: &[ProbeInfo], sel: Option<&Selector>) -> Result<ProbeInfo> {
    if probes.is_empty() {
        bail!(
            "no debug probe found. Connect a JTAG probe that probe-rs supports (e.g. a J-Link or \
             an FT2232H/FT232H board) to the Pi's GPIO22-27 (TRST 22, RTCK 23, TDO 24, TCK 25, \
             TDI 26, TMS 27) and GND, boot a card made with `cargo xtask sdcard --jtag` \
             (enable_jtag_gpio=1 and a parking kernel8.img), then run this again"
        );
    }
    let matching: Vec<&ProbeInfo> = probes
        .iter()
        .filter(|p| {
            sel.is_none_or(|s| {
                p.vid == s.vid
                    && p.pid == s.pid
                    && s.serial.as_ref().is_none_or(|w| p.serial.as_ref() == Some(w))
            })
        })
        .collect();
    let list = || {
        probes
            .iter()
            .map(|p| {
                format!(
                    "  {:04x}:{:04x}{} {}",
                    p.vid,
                    p.pid,
                    p.serial.as_ref().map_or(String::new(), |s| format!(":{s}")),
                    p.name
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("no attached probe matches --probe; attached:\n{}", list()),
        _ => bail!(
            "{} probes attached; choose one with --probe VID:PID[:SERIAL]:\n{}",
            matching.len(),
            list()
        ),
    }
}

/// Run the command.
pub fn main(args: Args) -> Result<ExitCode> {
    let Some(probe) = args.probe.as_deref() else {
        bail!(
            "flash loads the firmware over JTAG: give --probe [VID:PID[:SERIAL]]. For an SD card, \
             use `cargo xtask sdcard`"
        );
    };
    let selector = parse_selector(probe)?;
    let chosen = select(&backend::list()?, selector.as_ref())?;
    let fw = firmware::build(&BuildOptions {
        board: Board::Rpi4,
        release: !args.debug,
        ktest: false,
        plain: false,
    })?;
    let image = std::fs::read(&fw.image)?;
    backend::load_and_start(&chosen, &args.chip, &image, firmware::LOAD_ADDR)?;
    println!(
        "xtask: {} bytes loaded at {:#x} over {} and core 0 started",
        image.len(),
        firmware::LOAD_ADDR,
        chosen.name
    );
    match &args.port {
        Some(port) => {
            let info = DefmtInfo::load(&fw.elf)?;
            let status = crate::monitor::listen(port, args.baud, info.decoder(), true, &mut |l| {
                println!("{}", l.rendered)
            })?;
            Ok(ExitCode::from(u8::try_from(status).unwrap_or(1)))
        }
        None => {
            println!(
                "xtask: JTAG carries no log here (defmt goes to the PL011); watch it with \
                 `cargo xtask monitor --port /dev/ttyUSB0`, or pass --port"
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(feature = "probe")]
mod backend {
    //! The probe-rs side.
    use super::ProbeInfo;
    use anyhow::{Context, Result};
    use probe_rs::probe::list::Lister;
    use probe_rs::{MemoryInterface, Permissions};
    use std::time::Duration;

    pub fn list() -> Result<Vec<ProbeInfo>> {
        Ok(Lister::new()
            .list_all()
            .into_iter()
            .map(|p| ProbeInfo {
                name: p.identifier.clone(),
                vid: p.vendor_id,
                pid: p.product_id,
                serial: p.serial_number.clone(),
            })
            .collect())
    }

    pub fn load_and_start(probe: &ProbeInfo, chip: &str, image: &[u8], addr: u64) -> Result<()> {
        let lister = Lister::new();
        let info = lister
            .list_all()
            .into_iter()
            .find(|p| {
                p.vendor_id == probe.vid
                    && p.product_id == probe.pid
                    && p.serial_number == probe.serial
            })
            .context("the probe went away")?;
        let probe = info.open().context("opening the probe")?;
        let mut session = probe
            .attach(chip, Permissions::default())
            .with_context(|| format!("attaching to {chip}"))?;
        let mut core = session.core(0).context("core 0")?;
        core.halt(Duration::from_millis(500)).context("halting core 0")?;
        core.write_8(addr, image).context("writing the image")?;
        let mut back = vec![0u8; image.len().min(4096)];
        core.read_8(addr, &mut back).context("reading the image back")?;
        anyhow::ensure!(back == image[..back.len()], "the image read back differs");
        let pc = core.program_counter().id();
        core.write_core_reg(pc, addr).context("setting the PC")?;
        core.run().context("resuming core 0")?;
        Ok(())
    }
}

#[cfg(not(feature = "probe"))]
mod backend {
    //! Without probe-rs: say how to get it.
    use super::ProbeInfo;
    use anyhow::{bail, Result};

    pub const NOT_BUILT: &str = "this xtask was built without probe-rs (the `probe` feature, \
        kept out of the default build because it is large); run `cargo xtask-probe flash \
        --probe` (= cargo run -p xtask --features probe -- flash --probe)";

    pub fn list() -> Result<Vec<ProbeInfo>> {
        bail!(NOT_BUILT)
    }

    pub fn load_and_start(_: &ProbeInfo, _: &str, _: &[u8], _: u64) -> Result<()> {
        bail!(NOT_BUILT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flash: Args,
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("flash").chain(args.iter().copied())).map(|c| c.flash)
    }

    #[test]
    fn arguments() {
        assert_eq!(parse(&[]).unwrap().probe, None);
        assert_eq!(parse(&["--probe"]).unwrap().probe.as_deref(), Some(""));
        let a = parse(&["--probe", "1366:0101:000123", "--port", "/dev/ttyUSB1"]).unwrap();
        assert_eq!(a.probe.as_deref(), Some("1366:0101:000123"));
        assert_eq!(a.port.as_deref(), Some("/dev/ttyUSB1"));
        assert_eq!(a.chip, "RaspberryPi4B");
        assert!(parse(&["--probe", "a", "b"]).is_err());
        assert_eq!(parse_selector("").unwrap(), None);
        assert_eq!(
            parse_selector("0403:6010").unwrap(),
            Some(Selector { vid: 0x0403, pid: 0x6010, serial: None })
        );
        assert_eq!(
            parse_selector("1366:0101:000123").unwrap(),
            Some(Selector { vid: 0x1366, pid: 0x0101, serial: Some("000123".into()) })
        );
        for bad in ["xyz", "0403", "0403:zz", "12345:1"] {
            assert!(parse_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn without_probe_flag_it_says_what_to_do() {
        let err = main(parse(&[]).unwrap()).unwrap_err().to_string();
        assert!(err.contains("--probe") && err.contains("cargo xtask sdcard"), "{err}");
    }

    fn jlink(serial: &str) -> ProbeInfo {
        ProbeInfo { name: "J-Link".into(), vid: 0x1366, pid: 0x0101, serial: Some(serial.into()) }
    }

    #[test]
    fn no_probe_attached_is_a_clear_error() {
        let err = select(&[], None).unwrap_err().to_string();
        assert!(err.starts_with("no debug probe found"), "{err}");
        assert!(err.contains("GPIO22-27") && err.contains("sdcard --jtag"), "{err}");
        // With probe-rs, ask it (no probe is attached on the machines this runs on).
        #[cfg(feature = "probe")]
        {
            let err = main(parse(&["--probe"]).unwrap()).unwrap_err().to_string();
            assert!(err.starts_with("no debug probe found"), "{err}");
        }
    }

    #[test]
    fn choosing_among_probes() {
        let two = [jlink("1"), jlink("2")];
        assert_eq!(select(&two[..1], None).unwrap(), jlink("1"));
        let err = select(&two, None).unwrap_err().to_string();
        assert!(err.contains("2 probes attached") && err.contains("1366:0101:2"), "{err}");
        let want = parse_selector("1366:0101:2").unwrap();
        assert_eq!(select(&two, want.as_ref()).unwrap(), jlink("2"));
        let other = parse_selector("0403:6010").unwrap();
        assert!(select(&two, other.as_ref()).unwrap_err().to_string().contains("matches"));
    }

    #[cfg(not(feature = "probe"))]
    #[test]
    fn without_the_feature_it_says_how_to_get_it() {
        let err = main(parse(&["--probe"]).unwrap()).unwrap_err().to_string();
        assert!(err.contains("--features probe"), "{err}");
        let err = backend::load_and_start(&jlink("1"), CHIP, &[], 0).unwrap_err().to_string();
        assert!(err.contains("--features probe"), "{err}");
        // A malformed --probe is refused before that.
        let err = main(parse(&["--probe", "zz"]).unwrap()).unwrap_err().to_string();
        assert!(err.contains("not a 16-bit hex number"), "{err}");
    }
}
