//! Invoking QEMU's `raspi4b` machine and supervising a run.
//!
//! QEMU's stdout carries the PL011 bytes (`-serial stdio`); the firmware ends a run with the
//! semihosting call SYS_EXIT_EXTENDED, so QEMU's exit status is the firmware's.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-aarch64";
/// The first QEMU release with the `raspi4b` machine.
pub const MIN_MAJOR: u32 = 9;

/// Parse `QEMU emulator version X.Y.Z ...` into (X, Y).
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let rest = text.split("version ").nth(1)?;
    let mut nums = rest.split(|c: char| !c.is_ascii_digit());
    let major = nums.next()?.parse().ok()?;
    let minor = nums.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// Check that QEMU is installed, new enough and has `raspi4b`; returns its version text.
pub fn check() -> Result<String> {
    let out = Command::new(QEMU).arg("--version").output();
    let out = match out {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{QEMU} is not installed")
        }
        Err(e) => return Err(e).with_context(|| format!("could not run {QEMU} --version")),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("").to_string();
    match parse_version(&first) {
        Some((major, _)) if major >= MIN_MAJOR => {}
        Some(_) => bail!("{first}: too old, the raspi4b machine needs QEMU >= {MIN_MAJOR}"),
        None => bail!("could not read the version from `{QEMU} --version`: {first:?}"),
    }
    let machines = Command::new(QEMU)
        .args(["-M", "help"])
        .output()
        .with_context(|| format!("could not run {QEMU} -M help"))?;
    let list = String::from_utf8_lossy(&machines.stdout);
    if !list.lines().any(|l| l.split_whitespace().next() == Some("raspi4b")) {
        bail!("{first} has no raspi4b machine (`{QEMU} -M help`)");
    }
    Ok(first)
}

/// One QEMU invocation.
#[derive(Clone, Debug, Default)]
pub struct QemuConfig {
    /// The flat image for `-kernel`.
    pub image: PathBuf,
    /// `-dtb FILE`.
    pub dtb: Option<PathBuf>,
    /// Boot arguments, joined with spaces into `-append` (passed only when non-empty).
    pub bootargs: Vec<String>,
    /// `-s -S`: wait for GDB on :1234.
    pub gdb: bool,
}

impl QemuConfig {
    /// The full argument list.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "-M",
            "raspi4b",
            "-kernel",
            &self.image.to_string_lossy(),
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-semihosting-config",
            "enable=on,target=native",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(dtb) = &self.dtb {
            args.push("-dtb".into());
            args.push(dtb.to_string_lossy().into_owned());
        }
        if !self.bootargs.is_empty() {
            args.push("-append".into());
            args.push(self.bootargs.join(" "));
        }
        if self.gdb {
            args.push("-s".into());
            args.push("-S".into());
        }
        args
    }

    /// The command line as a shell would show it.
    pub fn display(&self) -> String {
        std::iter::once(QEMU.to_string())
            .chain(self.args().into_iter().map(|a| shell_quote(&a)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Quote `s` for a POSIX shell when needed.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// QEMU exited with this status (the firmware's semihosting exit code).
    Exited(i32),
    /// QEMU was killed by a signal.
    Signalled,
    /// QEMU ran longer than the timeout and was killed.
    TimedOut,
}

/// Start QEMU and stream its stdout to `on_bytes` until it exits or `timeout` passes.
/// `on_bytes` may end the run: `Some(status)` means the firmware said it has
/// finished with that status (a board without semihosting parks after its final line), so QEMU
/// is stopped and the run counts as exited with `status`.
pub fn run_until(
    cfg: &QemuConfig,
    timeout: Option<Duration>,
    on_bytes: &mut dyn FnMut(&[u8]) -> Option<i32>,
) -> Result<Outcome> {
    run_with_input(cfg, timeout, Input::None, &mut |bytes, _| on_bytes(bytes))
}

/// Where QEMU's serial input (its stdin, with `-serial stdio`) comes from in [`run_with_input`].
#[derive(Clone, Debug)]
pub enum Input {
    /// xtask's own stdin, copied as it arrives (an interactive console), once `ready` is set:
    /// bytes reaching the PL011 before the firmware sets it up can be dropped (QEMU resets its
    /// FIFO when the firmware turns the FIFO on), so the caller sets it when the console says so.
    Forward {
        /// Set by the caller when the firmware is ready for input.
        ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
    },
    /// Whatever the `on_bytes` callback writes (scripted input); nothing else.
    Scripted,
    /// None: QEMU's stdin is closed (`on_bytes` gets a sink).
    None,
}

/// [`run_with_input`]'s callback: the bytes QEMU wrote, a writer on its serial input; returns
/// `Some(status)` at the firmware's final line, as [`run_until`]'s does.
pub type OnBytesWithInput<'a> = dyn FnMut(&[u8], &mut dyn std::io::Write) -> Option<i32> + 'a;

/// Starts QEMU and streams its stdout to `on_bytes`, as [`run_until`] does, with its serial
/// input from `input`: `on_bytes` also gets a writer on it (a sink with [`Input::Forward`], where
/// a thread copies xtask's stdin instead, and with [`Input::None`]). QEMU takes serial input only
/// as fast as the guest's UART FIFO drains, so written bytes wait in the pipe, none is lost.
pub fn run_with_input(
    cfg: &QemuConfig,
    timeout: Option<Duration>,
    input: Input,
    on_bytes: &mut OnBytesWithInput<'_>,
) -> Result<Outcome> {
    if let Some(dtb) = &cfg.dtb {
        if !dtb.is_file() {
            bail!("the DTB {} does not exist", dtb.display());
        }
    }
    let mut child = Command::new(QEMU)
        .args(cfg.args())
        .stdin(if matches!(input, Input::None) { Stdio::null() } else { Stdio::piped() })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("could not start {QEMU}; run `cargo xtask doctor`"))?;
    let mut script: Box<dyn std::io::Write> = match input {
        Input::None => Box::new(std::io::sink()),
        Input::Scripted => Box::new(child.stdin.take().expect("stdin is piped")),
        Input::Forward { ready } => {
            let mut stdin = child.stdin.take().expect("stdin is piped");
            // Not joined: it blocks on the terminal until the next line, and ends with xtask.
            thread::spawn(move || {
                use std::io::Write;
                let mut buf = [0u8; 1024];
                let mut from = std::io::stdin().lock();
                loop {
                    let n = match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    while !ready.load(std::sync::atomic::Ordering::Acquire) {
                        thread::sleep(Duration::from_millis(20));
                    }
                    if stdin.write_all(&buf[..n]).and_then(|()| stdin.flush()).is_err() {
                        break;
                    }
                }
            });
            Box::new(std::io::sink())
        }
    };
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let deadline = timeout.map(|t| Instant::now() + t);
    let outcome = loop {
        let received = match deadline {
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(bytes) => {
                let finished = on_bytes(&bytes, &mut script);
                let _ = script.flush();
                if let Some(status) = finished {
                    kill(&mut child);
                    break Outcome::Exited(status);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                kill(&mut child);
                break Outcome::TimedOut;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break wait(&mut child, deadline)?,
        }
    };
    drop(script);
    let _ = reader.join();
    Ok(outcome)
}

/// QEMU closed its stdout: wait for it to exit (still bounded by the deadline).
fn wait(child: &mut Child, deadline: Option<Instant>) -> Result<Outcome> {
    loop {
        if let Some(status) = child.try_wait().context("waiting for QEMU")? {
            return Ok(match status.code() {
                Some(code) => Outcome::Exited(code),
                None => Outcome::Signalled,
            });
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            kill(child);
            return Ok(Outcome::TimedOut);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parsing() {
        assert_eq!(
            parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"),
            Some((10, 0))
        );
        assert_eq!(parse_version("QEMU emulator version 7.2.15"), Some((7, 2)));
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn append_only_with_bootargs() {
        let mut cfg = QemuConfig { image: "k.img".into(), ..Default::default() };
        let args = cfg.args();
        assert!(!args.contains(&"-append".to_string()));
        assert_eq!(
            cfg.display(),
            "qemu-system-aarch64 -M raspi4b -kernel k.img -display none -monitor none \
             -serial stdio -semihosting-config enable=on,target=native"
        );
        cfg.bootargs = vec!["ktest".into(), "hugepagesz=2M".into()];
        cfg.dtb = Some("x.dtb".into());
        cfg.gdb = true;
        assert!(cfg.display().ends_with("-dtb x.dtb -append 'ktest hugepagesz=2M' -s -S"));
    }
}
