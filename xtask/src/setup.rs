//! The system packages `run`, `test` and `sdcard` need, checked before anything is built, and
//! installed with apt when the user may: the one place in the project that knows how.
//!
//! | need | Debian package | Debian 12 (bookworm) | Debian 13 (trixie) and later |
//! |------|----------------|----------------------|------------------------------|
//! | QEMU >= 9 with `raspi4b` | `qemu-system-arm` | from `bookworm-backports` (bookworm has 7.2) | plain apt |
//! | `mdir`, `mtype` | `mtools` | plain apt | plain apt |
//! | `start4.elf`, `fixup4.dat` | `raspi-firmware` | the `non-free-firmware` component | the same |
//!
//! The decision ([`decide`]) is a pure function of the system (`/etc/os-release`), what is
//! missing, the apt sources already configured and whether we may install (root and `apt-get`),
//! so it is tested with made-up systems; [`ensure`] applies it to this machine, printing each
//! step before running it. `--no-install` turns installing into printing the commands.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{qemu, sdcard};

/// A tool a command needs from the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// `qemu-system-aarch64` >= 9 with the `raspi4b` machine.
    Qemu,
    /// mtools (`mdir`, `mtype`): reading the SD image back.
    Mtools,
    /// The VideoCore firmware (`start4.elf`, `fixup4.dat`) for the SD image.
    PiFirmware,
}

impl Tool {
    /// The Debian package that provides it.
    pub fn package(self) -> &'static str {
        match self {
            Tool::Qemu => "qemu-system-arm",
            Tool::Mtools => "mtools",
            Tool::PiFirmware => "raspi-firmware",
        }
    }

    /// What it is, for messages.
    pub fn describe(self) -> String {
        match self {
            Tool::Qemu => format!("QEMU >= {} with the raspi4b machine", qemu::MIN_MAJOR),
            Tool::Mtools => "mtools (mdir, mtype)".to_string(),
            Tool::PiFirmware => {
                format!("the Pi 4 firmware (start4.elf, fixup4.dat in {})", FIRMWARE_DIR)
            }
        }
    }
}

/// What `cargo xtask run` needs.
pub const FOR_RUN: &[Tool] = &[Tool::Qemu];
/// What `cargo xtask test` needs.
pub const FOR_TEST: &[Tool] = &[Tool::Qemu, Tool::Mtools, Tool::PiFirmware];
/// Where Debian's `raspi-firmware` puts the files.
pub const FIRMWARE_DIR: &str = sdcard::DEFAULT_FIRMWARE_DIR;

/// The operating system, from `/etc/os-release`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum System {
    /// Debian 12.
    Bookworm,
    /// Debian 13 or later (or testing/unstable, which have no version number).
    DebianNewer {
        /// `VERSION_CODENAME`, for the `non-free-firmware` source.
        codename: String,
    },
    /// Debian 11 or older: no QEMU with `raspi4b`, even in backports.
    DebianOlder {
        /// `PRETTY_NAME`.
        name: String,
    },
    /// Anything else.
    Other {
        /// `PRETTY_NAME`, or "an unknown system".
        name: String,
    },
}

impl System {
    /// Reads `/etc/os-release` (the `os-release(5)` format).
    pub fn parse(os_release: &str) -> System {
        let field = |key: &str| {
            os_release.lines().find_map(|l| {
                let v = l.trim().strip_prefix(key)?.strip_prefix('=')?;
                Some(v.trim_matches('"').trim_matches('\'').to_string())
            })
        };
        let name = field("PRETTY_NAME").unwrap_or_else(|| "an unknown system".to_string());
        if field("ID").as_deref() != Some("debian") {
            return System::Other { name };
        }
        let codename = field("VERSION_CODENAME").unwrap_or_default();
        match field("VERSION_ID").and_then(|v| v.split('.').next()?.parse::<u32>().ok()) {
            Some(12) => System::Bookworm,
            Some(v) if v < 12 => System::DebianOlder { name },
            Some(_) => System::DebianNewer { codename },
            // testing/sid: no VERSION_ID; `bookworm` only if someone says so.
            None if codename == "bookworm" => System::Bookworm,
            None if codename.is_empty() => System::DebianNewer { codename: "sid".to_string() },
            None => System::DebianNewer { codename },
        }
    }

    /// This machine's.
    pub fn this_machine() -> System {
        System::parse(&std::fs::read_to_string("/etc/os-release").unwrap_or_default())
    }

    fn codename(&self) -> &str {
        match self {
            System::Bookworm => "bookworm",
            System::DebianNewer { codename } => codename,
            _ => "",
        }
    }
}

/// One step of an installation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write an apt source file.
    Write {
        /// Where.
        path: PathBuf,
        /// What.
        contents: String,
    },
    /// Run a command.
    Run {
        /// Program and arguments.
        argv: Vec<String>,
        /// A failure is reported but does not stop the installation (whether it worked is
        /// judged by checking the tools again afterwards).
        may_fail: Option<&'static str>,
    },
}

impl Step {
    fn run(argv: &[&str]) -> Step {
        Step::Run { argv: argv.iter().map(|s| s.to_string()).collect(), may_fail: None }
    }

    /// The step as a shell command a user can type.
    pub fn shell(&self) -> String {
        match self {
            Step::Write { path, contents } => {
                format!("cat > {} <<'EOF'\n{}EOF", path.display(), contents)
            }
            Step::Run { argv, .. } => {
                let mut s = String::new();
                if argv.first().is_some_and(|a| a == "apt-get") {
                    s.push_str("DEBIAN_FRONTEND=noninteractive ");
                }
                s.push_str(
                    &argv.iter().map(|a| qemu::shell_quote(a)).collect::<Vec<_>>().join(" "),
                );
                s
            }
        }
    }
}

/// A deb822 apt source for Debian's main mirror.
fn deb822(suite: &str, component: &str) -> String {
    format!(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {suite}\nComponents: {component}\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
}

/// Does the apt configuration `sources` (the text of all source files) enable `needle` (a suite
/// or component name) on a line that is not a comment?
fn sources_mention(sources: &str, needle: &str) -> bool {
    sources
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .any(|l| l.split(|c: char| c.is_whitespace() || c == ':').any(|w| w == needle))
}

/// The steps that install `missing` on Debian `sys`, given the apt sources already there.
/// `None` when `sys` is not a Debian that has what we need.
pub fn install_steps(sys: &System, missing: &[Tool], sources: &str) -> Option<Vec<Step>> {
    if !matches!(sys, System::Bookworm | System::DebianNewer { .. }) {
        return None;
    }
    let mut steps = Vec::new();
    let dir = Path::new("/etc/apt/sources.list.d");
    let bookworm = *sys == System::Bookworm;
    if bookworm && missing.contains(&Tool::Qemu) && !sources_mention(sources, "bookworm-backports")
    {
        steps.push(Step::Write {
            path: dir.join("bookworm-backports.sources"),
            contents: deb822("bookworm-backports", "main"),
        });
    }
    let codename = sys.codename();
    if missing.contains(&Tool::PiFirmware) && !sources_mention(sources, "non-free-firmware") {
        steps.push(Step::Write {
            path: dir.join(format!("{codename}-non-free-firmware.sources")),
            contents: deb822(codename, "non-free-firmware"),
        });
    }
    steps.push(Step::run(&["apt-get", "update"]));
    if missing.contains(&Tool::Qemu) {
        if bookworm {
            steps.push(Step::run(&[
                "apt-get",
                "install",
                "-y",
                "-t",
                "bookworm-backports",
                "qemu-system-arm",
            ]));
        } else {
            steps.push(Step::run(&["apt-get", "install", "-y", "qemu-system-arm"]));
        }
    }
    if missing.contains(&Tool::Mtools) {
        steps.push(Step::run(&["apt-get", "install", "-y", "mtools"]));
    }
    if missing.contains(&Tool::PiFirmware) {
        // Last: its postinst wants a mounted /boot/firmware outside VMs and chroots and fails
        // otherwise, after unpacking the files we need.
        steps.push(Step::Run {
            argv: ["apt-get", "install", "-y", "raspi-firmware"].map(String::from).to_vec(),
            may_fail: Some(
                "raspi-firmware's postinst fails without a mounted /boot/firmware; the files \
                 under /usr/lib/raspi-firmware are unpacked regardless",
            ),
        });
    }
    Some(steps)
}

/// What to do about missing tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is missing.
    Nothing,
    /// Install with these steps.
    Install(Vec<Step>),
    /// Do not install; print these steps (for root) and stop.
    Refuse {
        /// Why not.
        why: String,
        /// What the user should run as root.
        steps: Vec<Step>,
    },
    /// Not a Debian we know: say what to install.
    Manual(String),
}

/// Decide what to do about `missing` on `sys`.
pub fn decide(
    sys: &System,
    missing: &[Tool],
    sources: &str,
    can_install: Result<(), String>,
    no_install: bool,
) -> Decision {
    if missing.is_empty() {
        return Decision::Nothing;
    }
    let Some(steps) = install_steps(sys, missing, sources) else {
        let mut text = match sys {
            System::DebianOlder { name } => format!(
                "{name} has no QEMU with the raspi4b machine; Debian 12 (with bookworm-backports) \
                 or 13 does. Otherwise install by hand:\n"
            ),
            System::Other { name } => {
                format!("{name} is not Debian; install these with its package manager:\n")
            }
            _ => unreachable!("install_steps handles every newer Debian"),
        };
        for t in missing {
            let _ = writeln!(text, "  - {} (Debian's package: {})", t.describe(), t.package());
        }
        if missing.contains(&Tool::PiFirmware) {
            let _ = writeln!(
                text,
                "    start4.elf and fixup4.dat are also in the boot/ directory of the \
                 raspberrypi/firmware repository (then pass --firmware-dir to sdcard)"
            );
        }
        return Decision::Manual(text);
    };
    match (no_install, can_install) {
        (true, _) => Decision::Refuse { why: "--no-install was given".to_string(), steps },
        (false, Err(why)) => Decision::Refuse { why, steps },
        (false, Ok(())) => Decision::Install(steps),
    }
}

/// The missing tools, each with what is wrong.
pub type Missing = Vec<(Tool, String)>;

/// Which of `tools` are missing on this machine, with why.
pub fn probe(tools: &[Tool]) -> Missing {
    tools
        .iter()
        .filter_map(|&t| {
            let problem = match t {
                Tool::Qemu => qemu::check().err().map(|e| format!("{e:#}")),
                Tool::Mtools => ["mdir", "mtype"]
                    .iter()
                    .find(|b| !on_path(b))
                    .map(|b| format!("{b} is not installed")),
                Tool::PiFirmware => {
                    let missing = sdcard::missing_firmware(Path::new(FIRMWARE_DIR));
                    (!missing.is_empty())
                        .then(|| format!("{} not in {FIRMWARE_DIR}", missing.join(" and ")))
                }
            };
            problem.map(|p| (t, p))
        })
        .collect()
}

/// Is `bin` an executable file in a `$PATH` directory?
pub fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(bin).is_file()))
        .unwrap_or(false)
}

/// May this process install packages: root, with `apt-get`?
fn can_install_here() -> Result<(), String> {
    let euid = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u32>().ok())
    });
    if euid != Some(0) {
        return Err("not running as root".to_string());
    }
    if !on_path("apt-get") {
        return Err("apt-get is not on PATH".to_string());
    }
    Ok(())
}

/// The text of the configured apt sources.
fn apt_sources() -> String {
    let mut text = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let ext = p.extension().and_then(|e| e.to_str());
            if matches!(ext, Some("list" | "sources")) {
                text.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
                text.push('\n');
            }
        }
    }
    text
}

/// Carries out steps (the real machine, or a recording in tests).
pub trait Executor {
    /// Write a file.
    fn write(&mut self, path: &Path, contents: &str) -> Result<()>;
    /// Run a command; `Ok(false)` if it ran and failed.
    fn run(&mut self, argv: &[String]) -> Result<bool>;
}

/// The real machine.
struct Machine;

impl Executor for Machine {
    fn write(&mut self, path: &Path, contents: &str) -> Result<()> {
        std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
    }

    fn run(&mut self, argv: &[String]) -> Result<bool> {
        let status = Command::new(&argv[0])
            .args(&argv[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("could not run {}", argv[0]))?;
        Ok(status.success())
    }
}

/// Carry out `steps`, printing each first.
pub fn execute(steps: &[Step], exec: &mut dyn Executor) -> Result<()> {
    for (i, step) in steps.iter().enumerate() {
        println!("xtask: set-up step {}/{}: {}", i + 1, steps.len(), step.shell());
        match step {
            Step::Write { path, contents } => exec.write(path, contents)?,
            Step::Run { argv, may_fail } => {
                if !exec.run(argv)? {
                    match may_fail {
                        Some(note) => println!("xtask: that step failed; {note}"),
                        None => bail!("set-up step failed: {}", step.shell()),
                    }
                }
            }
        }
    }
    Ok(())
}

/// Make sure `tools` are there: install what is missing when we may and `no_install` is false,
/// otherwise fail with the commands to run. `probe` re-checks after installing.
pub fn ensure_with(
    tools: &[Tool],
    sys: &System,
    sources: &str,
    can_install: Result<(), String>,
    no_install: bool,
    probe: &mut dyn FnMut(&[Tool]) -> Missing,
    exec: &mut dyn Executor,
) -> Result<()> {
    let missing = probe(tools);
    let names: Vec<Tool> = missing.iter().map(|(t, _)| *t).collect();
    let list = |m: &[(Tool, String)]| {
        m.iter()
            .map(|(t, why)| format!("  - {}: {why}", t.describe()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    match decide(sys, &names, sources, can_install, no_install) {
        Decision::Nothing => {
            println!(
                "xtask: tools present: {}",
                tools.iter().map(|t| t.package()).collect::<Vec<_>>().join(", ")
            );
            Ok(())
        }
        Decision::Manual(text) => bail!("missing:\n{}\n{text}", list(&missing)),
        Decision::Refuse { why, steps } => bail!(
            "missing:\n{}\nnot installing them ({why}); as root, run:\n{}",
            list(&missing),
            steps
                .iter()
                .map(|s| format!("  {}", s.shell().replace('\n', "\n  ")))
                .collect::<Vec<_>>()
                .join("\n")
        ),
        Decision::Install(steps) => {
            println!("xtask: missing:\n{}\nxtask: installing with apt:", list(&missing));
            execute(&steps, exec)?;
            let still = probe(tools);
            if !still.is_empty() {
                bail!("still missing after the installation:\n{}", list(&still));
            }
            println!("xtask: set-up done");
            Ok(())
        }
    }
}

/// [`ensure_with`] on this machine.
pub fn ensure(tools: &[Tool], no_install: bool) -> Result<()> {
    ensure_with(
        tools,
        &System::this_machine(),
        &apt_sources(),
        can_install_here(),
        no_install,
        &mut probe,
        &mut Machine,
    )
}

/// The commands that would install `tool` here (for `doctor`).
pub fn hint(tool: Tool) -> String {
    let sys = System::this_machine();
    match install_steps(&sys, &[tool], &apt_sources()) {
        Some(steps) => {
            steps.iter().map(|s| s.shell()).collect::<Vec<_>>().join("\n").replace("\n", "\n  ")
                + "\n(or let `cargo xtask run` / `cargo xtask test` do it, as root)"
        }
        None => match decide(&sys, &[tool], "", Ok(()), false) {
            Decision::Manual(text) => text,
            _ => tool.package().to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOKWORM: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian \
        GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\n\
        ID=debian\n";
    const TRIXIE: &str = "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nVERSION_ID=\"13\"\n\
        VERSION_CODENAME=trixie\nID=debian\n";
    const SID: &str = "PRETTY_NAME=\"Debian GNU/Linux forky/sid\"\nVERSION_CODENAME=forky\n\
        ID=debian\n";
    const BULLSEYE: &str = "PRETTY_NAME=\"Debian GNU/Linux 11 (bullseye)\"\nVERSION_ID=\"11\"\n\
        ID=debian\n";
    const UBUNTU: &str = "PRETTY_NAME=\"Ubuntu 24.04 LTS\"\nID=ubuntu\nID_LIKE=debian\n\
        VERSION_ID=\"24.04\"\n";
    /// A fresh Debian 12 container's sources.
    const FRESH_SOURCES: &str = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: \
        bookworm bookworm-updates\nComponents: main\n";

    #[test]
    fn os_release() {
        assert_eq!(System::parse(BOOKWORM), System::Bookworm);
        assert_eq!(System::parse(TRIXIE), System::DebianNewer { codename: "trixie".into() });
        assert_eq!(System::parse(SID), System::DebianNewer { codename: "forky".into() });
        assert!(matches!(System::parse(BULLSEYE), System::DebianOlder { .. }));
        assert_eq!(System::parse(UBUNTU), System::Other { name: "Ubuntu 24.04 LTS".into() });
        assert_eq!(System::parse(""), System::Other { name: "an unknown system".into() });
    }

    fn shells(steps: &[Step]) -> Vec<String> {
        steps.iter().map(Step::shell).collect()
    }

    #[test]
    fn fresh_bookworm_gets_backports_and_non_free_firmware() {
        let steps = install_steps(&System::Bookworm, FOR_TEST, FRESH_SOURCES).unwrap();
        let s = shells(&steps);
        assert_eq!(s.len(), 6, "{s:#?}");
        assert!(s[0].starts_with("cat > /etc/apt/sources.list.d/bookworm-backports.sources"));
        assert!(s[0].contains("Suites: bookworm-backports\nComponents: main\n"));
        assert!(s[1].starts_with("cat > /etc/apt/sources.list.d/bookworm-non-free-firmware"));
        assert!(s[1].contains("Suites: bookworm\nComponents: non-free-firmware\n"));
        assert_eq!(s[2], "DEBIAN_FRONTEND=noninteractive apt-get update");
        assert_eq!(
            s[3],
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -t bookworm-backports \
             qemu-system-arm"
        );
        assert_eq!(s[4], "DEBIAN_FRONTEND=noninteractive apt-get install -y mtools");
        assert_eq!(s[5], "DEBIAN_FRONTEND=noninteractive apt-get install -y raspi-firmware");
        assert!(matches!(&steps[5], Step::Run { may_fail: Some(_), .. }));
        assert!(matches!(&steps[3], Step::Run { may_fail: None, .. }));
    }

    #[test]
    fn sources_already_there_are_not_written_again() {
        let sources = format!(
            "{FRESH_SOURCES}\n# Suites: bookworm-proposed non-free-firmware\nSuites: \
             bookworm-backports\nComponents: main non-free-firmware\n"
        );
        let s = shells(&install_steps(&System::Bookworm, FOR_TEST, &sources).unwrap());
        assert!(s.iter().all(|c| !c.starts_with("cat >")), "{s:#?}");
        // A comment does not count.
        let commented = format!("{FRESH_SOURCES}# bookworm-backports non-free-firmware\n");
        let s = shells(&install_steps(&System::Bookworm, FOR_TEST, &commented).unwrap());
        assert_eq!(s.iter().filter(|c| c.starts_with("cat >")).count(), 2);
    }

    #[test]
    fn trixie_uses_plain_apt() {
        let sys = System::parse(TRIXIE);
        let s = shells(&install_steps(&sys, &[Tool::Qemu, Tool::Mtools], "").unwrap());
        assert_eq!(
            s,
            [
                "DEBIAN_FRONTEND=noninteractive apt-get update",
                "DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-system-arm",
                "DEBIAN_FRONTEND=noninteractive apt-get install -y mtools",
            ]
        );
        let s = shells(&install_steps(&sys, &[Tool::PiFirmware], "").unwrap());
        assert!(s[0].starts_with("cat > /etc/apt/sources.list.d/trixie-non-free-firmware"));
        assert!(s[0].contains("Suites: trixie\nComponents: non-free-firmware"));
    }

    #[test]
    fn only_what_is_missing() {
        let s = shells(&install_steps(&System::Bookworm, &[Tool::Mtools], FRESH_SOURCES).unwrap());
        assert_eq!(
            s,
            [
                "DEBIAN_FRONTEND=noninteractive apt-get update",
                "DEBIAN_FRONTEND=noninteractive apt-get install -y mtools"
            ]
        );
    }

    #[test]
    fn decisions() {
        let all = FOR_TEST;
        assert_eq!(decide(&System::Bookworm, &[], "", Ok(()), false), Decision::Nothing);
        assert_eq!(decide(&System::Bookworm, &[], "", Err("x".into()), true), Decision::Nothing);
        assert!(matches!(
            decide(&System::Bookworm, all, "", Ok(()), false),
            Decision::Install(s) if s.len() == 6
        ));
        match decide(&System::Bookworm, all, "", Ok(()), true) {
            Decision::Refuse { why, steps } => {
                assert!(why.contains("--no-install"));
                assert_eq!(steps.len(), 6);
            }
            d => panic!("{d:?}"),
        }
        match decide(&System::Bookworm, all, "", Err("not running as root".into()), false) {
            Decision::Refuse { why, .. } => assert_eq!(why, "not running as root"),
            d => panic!("{d:?}"),
        }
        for os in [UBUNTU, BULLSEYE, ""] {
            match decide(&System::parse(os), all, "", Ok(()), false) {
                Decision::Manual(text) => {
                    for t in all {
                        assert!(text.contains(t.package()), "{text}");
                    }
                    assert!(text.contains("raspberrypi/firmware"), "{text}");
                }
                d => panic!("{d:?}"),
            }
        }
    }

    /// Records what it is asked to do; "installs" by clearing the fake machine's missing list.
    struct Fake {
        log: Vec<String>,
        fail_on: Option<&'static str>,
    }

    impl Executor for Fake {
        fn write(&mut self, path: &Path, _: &str) -> Result<()> {
            self.log.push(format!("write {}", path.display()));
            Ok(())
        }
        fn run(&mut self, argv: &[String]) -> Result<bool> {
            let cmd = argv.join(" ");
            let ok = self.fail_on.is_none_or(|f| !cmd.contains(f));
            self.log.push(cmd);
            Ok(ok)
        }
    }

    fn missing_until_installed(installed_after: usize) -> impl FnMut(&[Tool]) -> Missing {
        let mut calls = 0;
        move |tools: &[Tool]| {
            calls += 1;
            if calls > installed_after {
                Vec::new()
            } else {
                tools.iter().map(|&t| (t, "not installed".to_string())).collect()
            }
        }
    }

    #[test]
    fn install_runs_every_step_and_checks_again() {
        let mut fake = Fake { log: Vec::new(), fail_on: None };
        let mut probe = missing_until_installed(1);
        ensure_with(
            FOR_TEST,
            &System::Bookworm,
            FRESH_SOURCES,
            Ok(()),
            false,
            &mut probe,
            &mut fake,
        )
        .unwrap();
        assert_eq!(fake.log.len(), 6, "{:#?}", fake.log);
        assert_eq!(fake.log[2], "apt-get update");
        assert_eq!(fake.log[5], "apt-get install -y raspi-firmware");
    }

    #[test]
    fn install_that_does_not_help_fails() {
        // Negative control: the packages "install" but the tools are still missing.
        let mut fake = Fake { log: Vec::new(), fail_on: None };
        let mut probe = missing_until_installed(usize::MAX);
        let err = ensure_with(
            FOR_RUN,
            &System::Bookworm,
            FRESH_SOURCES,
            Ok(()),
            false,
            &mut probe,
            &mut fake,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("still missing"), "{err}");
    }

    #[test]
    fn failing_apt_stops_but_raspi_firmware_postinst_may_fail() {
        let mut fake = Fake { log: Vec::new(), fail_on: Some("update") };
        let mut probe = missing_until_installed(1);
        let err =
            ensure_with(FOR_TEST, &System::Bookworm, "", Ok(()), false, &mut probe, &mut fake)
                .unwrap_err()
                .to_string();
        assert!(err.contains("set-up step failed"), "{err}");
        assert_eq!(fake.log.last().unwrap(), "apt-get update");

        let mut fake = Fake { log: Vec::new(), fail_on: Some("raspi-firmware") };
        let mut probe = missing_until_installed(1);
        ensure_with(FOR_TEST, &System::Bookworm, "", Ok(()), false, &mut probe, &mut fake).unwrap();
    }

    #[test]
    fn no_install_and_non_root_print_the_commands_and_touch_nothing() {
        for (can, no_install) in [(Ok(()), true), (Err("not running as root".to_string()), false)] {
            let mut fake = Fake { log: Vec::new(), fail_on: None };
            let mut probe = missing_until_installed(usize::MAX);
            let err = ensure_with(
                FOR_TEST,
                &System::Bookworm,
                FRESH_SOURCES,
                can,
                no_install,
                &mut probe,
                &mut fake,
            )
            .unwrap_err()
            .to_string();
            assert!(fake.log.is_empty(), "{:?}", fake.log);
            assert!(err.contains("as root, run:"), "{err}");
            assert!(err.contains("apt-get install -y -t bookworm-backports qemu-system-arm"));
            assert!(err.contains("Components: non-free-firmware"), "{err}");
        }
    }
}
