//! Turning the firmware's UART byte stream into log lines, live.
//!
//! By default the firmware writes defmt frames (rzCOBS, the defmt 1.x default encoding); they are
//! decoded with `defmt-decoder` against the ELF's `.defmt` table and DWARF line information. A
//! firmware built with `plain-log` writes text, which is split into lines as it is.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use defmt_decoder::{DecodeError, Locations, StreamDecoder, Table};

/// One log line from the firmware.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// The line as shown to the user: `0.001234 INFO  message  (firmware/src/foo.rs:12)`.
    pub rendered: String,
    /// The message alone (for the test protocol); for plain logs, the whole line.
    pub message: String,
}

/// The defmt symbols of one firmware ELF.
pub struct DefmtInfo {
    table: Table,
    locations: Option<Locations>,
    root: PathBuf,
}

impl DefmtInfo {
    /// Read the `.defmt` table and the log-statement locations from `elf`.
    pub fn load(elf: &Path) -> Result<Self> {
        let data =
            fs::read(elf).with_context(|| format!("reading the firmware ELF {}", elf.display()))?;
        let table = Table::parse(&data)
            .map_err(|e| anyhow::anyhow!("reading the defmt table of {}: {e:#}", elf.display()))?
            .with_context(|| {
                format!(
                    "{} has no .defmt section: it was built with plain-log; pass --plain",
                    elf.display()
                )
            })?;
        // Locations are a nicety: without DWARF the lines just lack the `(file:line)` suffix.
        let locations = match table.get_locations(&data) {
            Ok(locs) if !locs.is_empty() => Some(locs),
            _ => None,
        };
        Ok(Self { table, locations, root: crate::firmware::project_root() })
    }

    /// A live decoder borrowing this table.
    pub fn decoder(&self) -> LogDecoder<'_> {
        LogDecoder::Defmt { info: self, stream: self.table.new_stream_decoder() }
    }
}

/// Splits a byte stream into [`LogLine`]s as bytes arrive.
pub enum LogDecoder<'a> {
    /// defmt frames.
    Defmt {
        /// Table and locations.
        info: &'a DefmtInfo,
        /// The frame decoder holding partial frames between calls.
        stream: Box<dyn StreamDecoder + Send + Sync + 'a>,
    },
    /// Text, split at `\n`.
    Plain {
        /// The incomplete last line.
        partial: Vec<u8>,
    },
}

impl LogDecoder<'_> {
    /// A decoder for plain-text logs.
    pub fn plain() -> Self {
        LogDecoder::Plain { partial: Vec::new() }
    }

    /// Feed received bytes; `out` is called for every complete line.
    pub fn feed(&mut self, bytes: &[u8], out: &mut dyn FnMut(LogLine)) {
        match self {
            LogDecoder::Defmt { info, stream } => {
                stream.received(bytes);
                loop {
                    match stream.decode() {
                        Ok(frame) => out(render_frame(info, &frame)),
                        Err(DecodeError::UnexpectedEof) => break,
                        Err(DecodeError::Malformed) => {
                            let msg = "(xtask: malformed defmt frame skipped; is the ELF the one \
                                       that is running, and was it built without plain-log?)";
                            out(LogLine { rendered: msg.to_string(), message: msg.to_string() });
                        }
                    }
                }
            }
            LogDecoder::Plain { partial } => {
                partial.extend_from_slice(bytes);
                while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=nl).collect();
                    out(plain_line(&line[..nl]));
                }
            }
        }
    }

    /// The stream ended: emit what is left of an incomplete plain-text line.
    pub fn finish(&mut self, out: &mut dyn FnMut(LogLine)) {
        if let LogDecoder::Plain { partial } = self {
            if !partial.is_empty() {
                let line = std::mem::take(partial);
                out(plain_line(&line));
            }
        }
    }
}

fn plain_line(bytes: &[u8]) -> LogLine {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches('\r').to_string();
    LogLine { rendered: text.clone(), message: text }
}

fn render_frame(info: &DefmtInfo, frame: &defmt_decoder::Frame<'_>) -> LogLine {
    let message = frame.display_message().to_string();
    let mut rendered = String::new();
    if let Some(ts) = frame.display_timestamp() {
        let _ = write!(rendered, "{ts} ");
    }
    if let Some(level) = frame.level() {
        let _ = write!(rendered, "{:<5} ", level.as_str().to_uppercase());
    }
    rendered.push_str(&message);
    if let Some(loc) = info.locations.as_ref().and_then(|l| l.get(&frame.index())) {
        let file = loc.file.strip_prefix(&info.root).unwrap_or(&loc.file);
        let _ = write!(rendered, "  ({}:{})", file.display(), loc.line);
    }
    LogLine { rendered, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_split_across_chunks() {
        let mut d = LogDecoder::plain();
        let mut lines = Vec::new();
        let mut out = |l: LogLine| lines.push(l.rendered);
        d.feed(b"hello\r\nwor", &mut out);
        d.feed(b"ld\nlast", &mut out);
        d.finish(&mut out);
        assert_eq!(lines, ["hello", "world", "last"]);
    }

    #[test]
    fn plain_lines_tolerate_invalid_utf8() {
        let mut d = LogDecoder::plain();
        let mut lines = Vec::new();
        d.feed(b"a\xffb\n", &mut |l| lines.push(l.message));
        assert_eq!(lines, ["a\u{fffd}b"]);
    }
}
