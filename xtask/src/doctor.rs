//! `cargo xtask doctor`: check what the other commands need and say how to fix what is missing.

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::Result;

use crate::firmware::{self, TARGET};
use crate::qemu::{self, QEMU};
use crate::{sdcard, setup};

/// One checked item.
struct Check {
    what: String,
    /// `Ok(detail)` or `Err(fix)`.
    result: Result<String, String>,
    /// Only some commands need it: a miss does not fail `doctor`.
    optional: bool,
}

/// Run the command.
pub fn main() -> Result<ExitCode> {
    let mut checks = vec![rust_target()];
    checks.extend(qemu_checks());
    checks.push(pi_firmware());
    checks.push(tool(
        "mdir",
        "mtools (checks the SD image in `cargo xtask test`)",
        &setup::hint(setup::Tool::Mtools),
        false,
    ));
    checks.push(tool(
        "gdb-multiarch",
        "gdb-multiarch (for `cargo xtask gdb`)",
        "apt-get install gdb-multiarch",
        true,
    ));
    checks.push(dtb_fixture());

    let mut missing = 0;
    for c in &checks {
        match &c.result {
            Ok(detail) => println!("OK       {}: {detail}", c.what),
            Err(fix) => {
                let tag = if c.optional { "OPTIONAL" } else { "MISSING " };
                println!(
                    "{tag} {}\n         fix: {}",
                    c.what,
                    fix.replace('\n', "\n              ")
                );
                if !c.optional {
                    missing += 1;
                }
            }
        }
    }
    if missing == 0 {
        println!("\nall required tools are present");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\n{missing} required item(s) missing; run the fix commands above (as root)");
        Ok(ExitCode::FAILURE)
    }
}

fn rust_target() -> Check {
    let what = format!("rustc target {TARGET}");
    let result = match firmware::target_installed() {
        Some(true) => Ok("installed".to_string()),
        Some(false) => Err(format!("rustup target add {TARGET}")),
        None => Err(format!(
            "rustup not found; install rustup (https://rustup.rs), then rustup target add {TARGET}"
        )),
    };
    Check { what, result, optional: false }
}

fn qemu_checks() -> Vec<Check> {
    let version_what = format!("{QEMU} >= {}", qemu::MIN_MAJOR);
    let out = Command::new(QEMU).arg("--version").output();
    let first = match out {
        Ok(out) => String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_string(),
        Err(_) => {
            return vec![Check {
                what: version_what,
                result: Err(format!("not installed; {}", setup::hint(setup::Tool::Qemu))),
                optional: false,
            }]
        }
    };
    let version = match qemu::parse_version(&first) {
        Some((major, _)) if major >= qemu::MIN_MAJOR => Ok(first.clone()),
        _ => Err(format!("found {first:?}; {}", setup::hint(setup::Tool::Qemu))),
    };
    let machines = Command::new(QEMU)
        .args(["-M", "help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let raspi4b = if machines.lines().any(|l| l.split_whitespace().next() == Some("raspi4b")) {
        Ok("listed by -M help".to_string())
    } else {
        Err(format!("`{QEMU} -M help` lacks raspi4b; {}", setup::hint(setup::Tool::Qemu)))
    };
    vec![
        Check { what: version_what, result: version, optional: false },
        Check { what: "QEMU machine raspi4b".into(), result: raspi4b, optional: false },
    ]
}

fn pi_firmware() -> Check {
    let dir = Path::new(sdcard::DEFAULT_FIRMWARE_DIR);
    let missing = sdcard::missing_firmware(dir);
    Check {
        what: format!("Pi 4 firmware in {} (for `cargo xtask sdcard`)", dir.display()),
        result: if missing.is_empty() {
            Ok(sdcard::FIRMWARE_FILES.join(", "))
        } else {
            Err(format!(
                "{} missing; {}\n(or copy them from the raspberrypi/firmware repository's boot/ \
                 directory and pass --firmware-dir)",
                missing.join(" and "),
                setup::hint(setup::Tool::PiFirmware)
            ))
        },
        optional: false,
    }
}

fn tool(bin: &str, what: &str, fix: &str, optional: bool) -> Check {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(bin).is_file()))
        .unwrap_or(false);
    Check {
        what: what.to_string(),
        result: if found { Ok(format!("{bin} found")) } else { Err(fix.to_string()) },
        optional,
    }
}

fn dtb_fixture() -> Check {
    let path = firmware::project_root().join(crate::test::DTB_FIXTURE);
    Check {
        what: "DTB fixture for the `dtb` on-target run".into(),
        result: if path.is_file() {
            Ok(path.display().to_string())
        } else {
            Err(format!(
                "expected {} (the project's shared/ directory beside the repository)",
                path.display()
            ))
        },
        optional: false,
    }
}
