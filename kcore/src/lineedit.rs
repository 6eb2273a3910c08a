//! A line editor for a serial console: bytes in, an edited line out (the part of Linux's tty
//! line discipline, `n_tty` in canonical mode, that a console needs: erase, kill, interrupt).
//!
//! It is fed one received byte at a time and returns what happened. What should be echoed is
//! handed to a sink, so the firmware decides whether to echo at all (a defmt log stream must not
//! carry raw echo bytes; a plain-text terminal wants them).
//!
//! | input | effect | echo |
//! |---|---|---|
//! | printable ASCII `0x20..=0x7e` | appended | the byte |
//! | `BS` (0x08) or `DEL` (0x7f) | last byte removed | `BS SP BS` |
//! | `Ctrl-U` (0x15) | whole line removed (Linux's KILL) | `BS SP BS` per byte |
//! | `Ctrl-C` (0x03) | line dropped, [`LineEvent::Cancelled`] (Linux's INTR) | `^C CR LF` |
//! | `CR` or `LF` (`CR LF` counts once) | the line ends, [`LineEvent::Line`] | `CR LF` |
//! | `ESC [ ...`, `ESC O x` (arrow and function keys) | ignored as a whole (a control byte inside ends it and acts) | nothing |
//! | any other byte | not stored; the line is refused at its end ([`LineError::BadBytes`]) | nothing |
//! | more than [`MAX_LINE`] bytes | not stored; refused at the end ([`LineError::TooLong`]) | nothing |
//!
//! A refused line is reported, never silently cut or run in part.

/// Longest line kept, in bytes.
pub const MAX_LINE: usize = 128;

/// Why a finished line was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LineError {
    /// The line was longer than [`MAX_LINE`]; `len` bytes were typed.
    TooLong {
        /// Bytes typed (printable ones, before editing).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The line held bytes that are neither printable ASCII nor an editing key.
    BadBytes {
        /// How many.
        count: usize,
        /// The first of them.
        first: u8,
    },
}

impl core::fmt::Display for LineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LineError::TooLong { len, max } => {
                write!(f, "line too long ({len} bytes, at most {max}); ignored")
            }
            LineError::BadBytes { count, first } => write!(
                f,
                "line has {count} byte(s) that are not printable ASCII (first {first:#04x}); ignored"
            ),
        }
    }
}

/// What one byte did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LineEvent<'a> {
    /// Nothing to act on yet (the byte was stored, edited or ignored).
    Pending,
    /// A line ended: its text (printable ASCII, trimmed of nothing), or why it was refused.
    Line(Result<&'a str, LineError>),
    /// Ctrl-C: the line was dropped.
    Cancelled,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Esc {
    None,
    /// After ESC.
    Start,
    /// After `ESC [`: parameters until a final byte `0x40..=0x7e`.
    Csi,
    /// After `ESC O` (keypad/function keys): one more byte.
    Ss3,
}

/// The editor's state: the line being typed.
#[derive(Clone, Debug)]
pub struct LineEditor {
    buf: [u8; MAX_LINE],
    len: usize,
    /// Printable bytes dropped because the line was full.
    overflow: usize,
    bad: usize,
    first_bad: u8,
    esc: Esc,
    last_cr: bool,
    done: [u8; MAX_LINE],
}

impl Default for LineEditor {
    fn default() -> Self {
        Self::new()
    }
}

impl LineEditor {
    /// An empty line.
    pub const fn new() -> Self {
        LineEditor {
            buf: [0; MAX_LINE],
            len: 0,
            overflow: 0,
            bad: 0,
            first_bad: 0,
            esc: Esc::None,
            last_cr: false,
            done: [0; MAX_LINE],
        }
    }

    /// The text typed so far.
    pub fn current(&self) -> &str {
        // Only printable ASCII is ever stored.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    fn reset(&mut self) {
        self.len = 0;
        self.overflow = 0;
        self.bad = 0;
        self.first_bad = 0;
    }

    /// Feeds one received byte; `echo` gets the bytes to send back to the terminal.
    pub fn feed(&mut self, b: u8, echo: &mut dyn FnMut(&[u8])) -> LineEvent<'_> {
        let after_cr = core::mem::replace(&mut self.last_cr, false);
        // A control byte (Enter, Ctrl-C, ...) always ends an escape sequence and acts as itself.
        match self.esc {
            Esc::Start if b == b'[' => {
                self.esc = Esc::Csi;
                return LineEvent::Pending;
            }
            Esc::Start if b == b'O' => {
                self.esc = Esc::Ss3;
                return LineEvent::Pending;
            }
            Esc::Csi | Esc::Ss3 if b >= 0x20 => {
                if self.esc == Esc::Ss3 || (0x40..=0x7e).contains(&b) {
                    self.esc = Esc::None;
                }
                return LineEvent::Pending;
            }
            _ => self.esc = Esc::None,
        }
        match b {
            b'\n' if after_cr => LineEvent::Pending,
            b'\r' | b'\n' => {
                self.last_cr = b == b'\r';
                echo(b"\r\n");
                let result = if self.overflow > 0 {
                    Err(LineError::TooLong { len: self.len + self.overflow, max: MAX_LINE })
                } else if self.bad > 0 {
                    Err(LineError::BadBytes { count: self.bad, first: self.first_bad })
                } else {
                    Ok(())
                };
                let n = self.len;
                self.done[..n].copy_from_slice(&self.buf[..n]);
                self.reset();
                LineEvent::Line(
                    result.map(|()| core::str::from_utf8(&self.done[..n]).unwrap_or("")),
                )
            }
            0x08 | 0x7f => {
                if self.overflow > 0 {
                    self.overflow -= 1;
                } else if self.len > 0 {
                    self.len -= 1;
                    echo(b"\x08 \x08");
                }
                LineEvent::Pending
            }
            0x15 => {
                for _ in 0..self.len {
                    echo(b"\x08 \x08");
                }
                self.reset();
                LineEvent::Pending
            }
            0x03 => {
                echo(b"^C\r\n");
                self.reset();
                LineEvent::Cancelled
            }
            0x1b => {
                self.esc = Esc::Start;
                LineEvent::Pending
            }
            0x20..=0x7e => {
                if self.len < MAX_LINE && self.overflow == 0 {
                    self.buf[self.len] = b;
                    self.len += 1;
                    echo(&[b]);
                } else {
                    self.overflow += 1;
                }
                LineEvent::Pending
            }
            other => {
                if self.bad == 0 {
                    self.first_bad = other;
                }
                self.bad += 1;
                LineEvent::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input`, returns the lines (or errors / "^C") and the echo.
    fn run(input: &[u8]) -> (std::vec::Vec<std::string::String>, std::vec::Vec<u8>) {
        let mut ed = LineEditor::new();
        let mut echo = std::vec::Vec::new();
        let mut out = std::vec::Vec::new();
        for &b in input {
            match ed.feed(b, &mut |e| echo.extend_from_slice(e)) {
                LineEvent::Pending => {}
                LineEvent::Line(Ok(l)) => out.push(l.into()),
                LineEvent::Line(Err(e)) => out.push(std::format!("error: {e}")),
                LineEvent::Cancelled => out.push("^C".into()),
            }
        }
        (out, echo)
    }

    #[test]
    fn plain_lines_crlf_once() {
        let (l, echo) = run(b"help\r\nmeminfo\nexit\r");
        assert_eq!(l, ["help", "meminfo", "exit"]);
        assert_eq!(echo, b"help\r\nmeminfo\r\nexit\r\n");
        // An empty line is a line (the console ignores it); CR LF is one end, CR CR two.
        assert_eq!(run(b"\r\n\r\r").0, ["", "", ""]);
    }

    #[test]
    fn backspace_del_and_kill() {
        assert_eq!(run(b"helq\x08p\r").0, ["help"]);
        assert_eq!(run(b"helq\x7fp\r").0, ["help"]);
        // Backspace on an empty line does nothing (no echo either).
        let (l, echo) = run(b"\x7f\x7fx\r");
        assert_eq!(l, ["x"]);
        assert_eq!(echo, b"x\r\n");
        let (l, echo) = run(b"garbage\x15help\r");
        assert_eq!(l, ["help"]);
        assert!(echo.starts_with(b"garbage\x08 \x08"));
    }

    #[test]
    fn ctrl_c_drops_the_line() {
        assert_eq!(run(b"nr_hugepages 2M 100\x03exit\r").0, ["^C", "exit"]);
    }

    #[test]
    fn escape_sequences_ignored_whole() {
        // Up arrow, Right arrow, then text: nothing of the sequences is stored.
        assert_eq!(run(b"\x1b[A\x1b[Cmeminfo\x1b[1;5D\x1bOP\r").0, ["meminfo"]);
        // A lone ESC or a cut-off sequence does not swallow Enter or Ctrl-C.
        assert_eq!(run(b"help\x1b\r").0, ["help"]);
        assert_eq!(run(b"help\x1b[1\r").0, ["help"]);
        assert_eq!(run(b"help\x1b[\x03").0, ["^C"]);
    }

    #[test]
    fn bad_bytes_refuse_the_line() {
        let (l, _) = run(b"mem\x01info\r");
        assert_eq!(
            l,
            ["error: line has 1 byte(s) that are not printable ASCII (first 0x01); ignored"]
        );
        assert_eq!(run(b"h\xc3\xa9\rhelp\r").0[1], "help");
    }

    #[test]
    fn too_long_lines_refused_and_deletable() {
        let mut long = std::vec![b'a'; MAX_LINE + 5];
        long.push(b'\r');
        let (l, _) = run(&long);
        assert_eq!(
            l,
            [std::format!(
                "error: line too long ({} bytes, at most {MAX_LINE}); ignored",
                MAX_LINE + 5
            )]
        );
        // Deleting the excess makes it acceptable again.
        let mut ok = std::vec![b'a'; MAX_LINE + 2];
        ok.extend_from_slice(b"\x7f\x7f\r");
        assert_eq!(run(&ok).0[0].len(), MAX_LINE);
    }
}
