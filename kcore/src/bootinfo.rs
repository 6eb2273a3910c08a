//! What the firmware was handed in `x0`: a flattened device tree or an ATAG list.
//!
//! [`BootInfo::parse`] tells the two apart by their first bytes (the FDT magic `0xd00dfeed`,
//! big-endian; or an `ATAG_CORE` tag, little-endian) and extracts the memory banks, the command
//! line, reserved ranges and (DTB only) the model string. [`memory_map`] then decides which
//! memory map the firmware uses: the boot blob's, the VideoCore mailbox's, or the board's table.
//!
//! ## Device trees
//!
//! Parsing uses the `fdt` crate (0.1), which assumes a well-formed blob: it panics on several
//! malformations (unterminated names, property offsets outside the strings block, unbalanced
//! nodes, ...). So the blob is first checked here, structurally, and handed to `fdt` only if it
//! passes; a bad blob is an error, never a panic. Memory comes from the root's children whose
//! `device_type` is `"memory"` (any number of them, each `reg` with any number of banks, cell
//! sizes from the root), skipping `status = "disabled"` nodes, as Linux's
//! `early_init_dt_scan_memory`. Reserved ranges are the `/memreserve/` block plus the `reg` of
//! each enabled `/reserved-memory` child (dynamically placed ones, with only a `size`, are
//! skipped).
//!
//! `/chosen` and `/reserved-memory` are looked up by path from the root, never through
//! `/aliases` (a path starting with `/` is never an alias, as in Linux): the `fdt` crate's own
//! lookup resolves aliases recursively with no limit, so a crafted `/aliases` node could overflow
//! the stack or redirect `/chosen` to another node.
//!
//! The Raspberry Pi 4 device tree as shipped has `/memory@0 { reg = <0 0 0>; }`: the Pi
//! firmware fills it in. Left unfilled, that is a zero-size bank: [`BootInfo::memory`] holds
//! `Err(ZeroSizeBank)` while the rest (command line, model, reservations) stays usable.
//!
//! ## ATAGs
//!
//! A list of `{ u32 size_in_words, u32 tag, data }` starting with `ATAG_CORE`, ending with
//! `ATAG_NONE`: `ATAG_MEM` gives `(size, start)` (32-bit), `ATAG_CMDLINE` a NUL-terminated
//! string; other tags are skipped.

use crate::addr::PhysAddr;
use crate::memblock::{MemRegion, RegionList};

/// The FDT header magic.
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// `ATAG_NONE`: ends the list.
pub const ATAG_NONE: u32 = 0;
/// `ATAG_CORE`: starts the list.
pub const ATAG_CORE: u32 = 0x5441_0001;
/// `ATAG_MEM`: a memory bank.
pub const ATAG_MEM: u32 = 0x5441_0002;
/// `ATAG_CMDLINE`: the command line.
pub const ATAG_CMDLINE: u32 = 0x5441_0009;

/// Maximum number of memory banks.
pub const MAX_BANKS: usize = 8;
/// Maximum number of reserved ranges kept.
pub const MAX_RESERVED: usize = 16;
/// Deepest node nesting accepted (the `fdt` crate handles at most 63).
pub const MAX_DTB_DEPTH: usize = 32;

/// Memory banks.
pub type Banks = RegionList<MAX_BANKS>;

const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
const FDT_HEADER_LEN: usize = 40;

/// Where the boot information came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BootSource {
    /// A flattened device tree.
    Dtb,
    /// An ATAG list.
    Atags,
}

/// The `fdt` crate's own error.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FdtErrorKind {
    /// Bad magic.
    BadMagic,
    /// Null pointer.
    BadPtr,
    /// The buffer is smaller than the header's total size.
    BufferTooSmall,
}

impl From<fdt::FdtError> for FdtErrorKind {
    fn from(e: fdt::FdtError) -> Self {
        match e {
            fdt::FdtError::BadMagic => FdtErrorKind::BadMagic,
            fdt::FdtError::BadPtr => FdtErrorKind::BadPtr,
            fdt::FdtError::BufferTooSmall => FdtErrorKind::BufferTooSmall,
        }
    }
}

/// What is wrong with a device tree blob.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DtbDefect {
    /// `totalsize` smaller than the header.
    BadTotalSize,
    /// Version below 17 or `last_comp_version` above 17.
    BadVersion {
        /// `version`.
        version: u32,
        /// `last_comp_version`.
        last_comp: u32,
    },
    /// A block (structure, strings, memory reservations) outside `totalsize`.
    BlockOutOfBounds,
    /// The memory reservation block has no terminating entry.
    UnterminatedMemReserve,
    /// An unknown or misplaced token.
    BadToken {
        /// The token.
        token: u32,
    },
    /// A node name that is unterminated or not UTF-8 (or a root with a name).
    BadNodeName,
    /// A property whose name offset or value lies outside its block, or whose name is not
    /// UTF-8.
    BadProperty,
    /// A property after a subnode, or a NOP token where the `fdt` crate cannot skip it.
    Misplaced,
    /// `#address-cells` / `#size-cells` not one cell, or a `reg` with more than 2 cells per
    /// number or a length that is not a whole number of entries.
    BadCells,
    /// Unbalanced `BEGIN_NODE` / `END_NODE`, or no root node.
    Unbalanced,
    /// Nodes nested deeper than [`MAX_DTB_DEPTH`].
    TooDeep,
    /// The structure block ends without `FDT_END`.
    MissingEnd,
}

/// What is wrong with an ATAG list.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AtagDefect {
    /// A tag whose size is too small for its kind.
    BadTagSize {
        /// The tag.
        tag: u32,
        /// Its size in 32-bit words.
        size: u32,
    },
}

/// The command line the boot blob holds was cut short: [`BootInfo::cmdline`] keeps only the
/// whole options before the damage.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CmdlineTruncated {
    /// Bytes the tag had room for (its declared size minus the header).
    pub declared: usize,
    /// Byte offset (in the text) of the first byte that is not command-line text: a NUL before
    /// the tag's last word, a control character, or invalid UTF-8. On QEMU's `raspi4b` this is
    /// where its boot code at 0x300 overwrote the ATAG text.
    pub damaged_at: usize,
    /// Bytes kept (up to the last whitespace before the damage, so no option is half-kept).
    pub kept: usize,
}

/// Errors about the boot information.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BootInfoError {
    /// `x0` was 0.
    NullPointer,
    /// Neither the FDT magic nor `ATAG_CORE`.
    BadMagic {
        /// The first 32-bit word, big-endian.
        found: u32,
    },
    /// The `fdt` crate rejected the blob.
    Fdt(FdtErrorKind),
    /// The blob is shorter than it says (or than a tag needs).
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// A malformed device tree.
    MalformedDtb {
        /// Byte offset of the problem in the blob.
        offset: usize,
        /// The problem.
        defect: DtbDefect,
    },
    /// A malformed ATAG list.
    MalformedAtags {
        /// Byte offset of the tag.
        offset: usize,
        /// The problem.
        defect: AtagDefect,
    },
    /// No memory node (DTB) or `ATAG_MEM` tag.
    NoMemoryNode,
    /// A memory bank of size 0 (the Pi 4 DTB before the firmware fills it in).
    ZeroSizeBank {
        /// Its base.
        base: PhysAddr,
    },
    /// A bank whose end overflows.
    BankWraps {
        /// Its base.
        base: PhysAddr,
        /// Its size.
        size: u64,
    },
    /// Two banks overlap.
    OverlappingBanks {
        /// The lower one.
        a: MemRegion,
        /// The other one.
        b: MemRegion,
    },
    /// More than [`MAX_BANKS`] banks.
    TooManyBanks {
        /// The limit.
        max: usize,
    },
}

/// A fixed-capacity list of findings (no heap) that counts what did not fit. `Debug` and
/// `defmt::Format` show only the entries present, and the number dropped if any.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Notes<T: Copy, const N: usize> {
    items: [Option<T>; N],
    len: usize,
    dropped: usize,
}

impl<T: Copy, const N: usize> Notes<T, N> {
    /// An empty list.
    pub const fn new() -> Self {
        Notes { items: [None; N], len: 0, dropped: 0 }
    }
    /// Appends `t`, or counts it as dropped when full.
    pub fn push(&mut self, t: T) {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(t);
                self.len += 1;
            }
            None => self.dropped += 1,
        }
    }
    /// The entries, in order.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.items[..self.len].iter().flatten().copied()
    }
    /// Number of entries kept.
    pub const fn len(&self) -> usize {
        self.len
    }
    /// No entries (and none dropped)?
    pub const fn is_empty(&self) -> bool {
        self.len == 0 && self.dropped == 0
    }
    /// Entries that did not fit.
    pub const fn dropped(&self) -> usize {
        self.dropped
    }
}

impl<T: Copy, const N: usize> Default for Notes<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + core::fmt::Debug, const N: usize> core::fmt::Debug for Notes<T, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut l = f.debug_list();
        l.entries(self.iter());
        if self.dropped > 0 {
            l.entry(&format_args!("... and {} more", self.dropped));
        }
        l.finish()
    }
}

#[cfg(feature = "defmt")]
impl<T: Copy + defmt::Format, const N: usize> defmt::Format for Notes<T, N> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=[?]}", &self.items[..self.len]);
        if self.dropped > 0 {
            defmt::write!(f, " (+{} more)", self.dropped);
        }
    }
}

/// What was wrong with a reservation in the boot blob.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ReservationDefect {
    /// Size 0: nothing to reserve; dropped.
    ZeroSize,
    /// `base + size` wraps past the top of the address space: clipped to end there.
    Wraps,
    /// A `/reserved-memory` child whose `reg` does not fit its parent's cell sizes: skipped.
    MalformedReg,
}

/// A reservation the parser dropped or changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReservationNote {
    /// The reservation as given (for `MalformedReg`, empty).
    pub region: MemRegion,
    /// What was wrong.
    pub defect: ReservationDefect,
}

/// Capacity of [`BootInfo::reservation_notes`].
pub const MAX_RESERVATION_NOTES: usize = 4;

/// The parsed boot information.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BootInfo<'a> {
    /// DTB or ATAGs.
    pub source: BootSource,
    /// Bytes of the blob (DTB `totalsize`, or up to and including `ATAG_NONE`): reserve them.
    pub blob_len: usize,
    /// The memory banks (sorted), or why there are none usable.
    pub memory: Result<Banks, BootInfoError>,
    /// Reserved ranges (`/memreserve/`, `/reserved-memory`).
    pub reserved: RegionList<MAX_RESERVED>,
    /// More reserved ranges than [`MAX_RESERVED`] were found; the rest were dropped.
    pub reserved_overflow: bool,
    /// Reservations dropped or clipped because they were malformed.
    pub reservation_notes: Notes<ReservationNote, MAX_RESERVATION_NOTES>,
    /// The command line (`/chosen/bootargs` or `ATAG_CMDLINE`), `""` if none.
    pub cmdline: &'a str,
    /// The command line was damaged in the blob; `cmdline` is what could be kept.
    pub cmdline_truncated: Option<CmdlineTruncated>,
    /// The DTB's `model` string.
    pub model: Option<&'a str>,
}

#[cfg(feature = "defmt")]
impl defmt::Format for BootInfo<'_> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "BootInfo {{ source: {}, blob_len: {}, memory: {}, reserved: {}, cmdline: {=str}, cmdline_truncated: {}, model: {} }}",
            self.source,
            self.blob_len,
            self.memory,
            self.reserved,
            self.cmdline,
            self.cmdline_truncated,
            self.model
        )
    }
}

fn be32(d: &[u8], off: usize) -> Option<u32> {
    let b = d.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn be64(d: &[u8], off: usize) -> Option<u64> {
    Some(((be32(d, off)? as u64) << 32) | be32(d, off + 4)? as u64)
}

fn le32(d: &[u8], off: usize) -> Option<u32> {
    let b = d.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

const fn align4(x: usize) -> usize {
    (x + 3) & !3
}

/// Which format `bytes` start with, if any.
pub fn detect(bytes: &[u8]) -> Option<BootSource> {
    if be32(bytes, 0) == Some(FDT_MAGIC) {
        Some(BootSource::Dtb)
    } else if le32(bytes, 4) == Some(ATAG_CORE) {
        Some(BootSource::Atags)
    } else {
        None
    }
}

/// Validates `banks`: no zero sizes, no wrap-around, at most [`MAX_BANKS`], no overlaps.
/// Returns them sorted.
pub fn validate_banks(banks: &[MemRegion]) -> Result<Banks, BootInfoError> {
    let mut out = Banks::new();
    for b in banks {
        if b.size == 0 {
            return Err(BootInfoError::ZeroSizeBank { base: b.base });
        }
        if b.base.0.checked_add(b.size).is_none() {
            return Err(BootInfoError::BankWraps { base: b.base, size: b.size });
        }
        out.push(*b).map_err(|_| BootInfoError::TooManyBanks { max: MAX_BANKS })?;
    }
    if out.is_empty() {
        return Err(BootInfoError::NoMemoryNode);
    }
    out.sort();
    for w in out.as_slice().windows(2) {
        if w[0].overlaps(&w[1]) {
            return Err(BootInfoError::OverlappingBanks { a: w[0], b: w[1] });
        }
    }
    Ok(out)
}

impl<'a> BootInfo<'a> {
    /// Parses a DTB or ATAG list at the start of `bytes` (which may extend past its end).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BootInfoError> {
        match detect(bytes) {
            Some(BootSource::Dtb) => parse_dtb(bytes),
            Some(BootSource::Atags) => parse_atags(bytes),
            None => Err(match be32(bytes, 0) {
                Some(found) => BootInfoError::BadMagic { found },
                None => BootInfoError::Truncated { needed: 8, have: bytes.len() },
            }),
        }
    }

    /// The memory banks, if usable.
    pub fn banks(&self) -> Result<&[MemRegion], BootInfoError> {
        match &self.memory {
            Ok(b) => Ok(b.as_slice()),
            Err(e) => Err(*e),
        }
    }
}

/// Parses the blob whose address the boot loader left in `x0`.
///
/// # Safety
///
/// Unless `x0` is 0, `[x0, x0 + max_len)` must be readable and unchanging for the rest of the
/// program (the firmware keeps the blob reserved). `max_len` only bounds the parse: the blob's
/// own length is taken from its header (DTB) or its terminating tag (ATAGs).
pub unsafe fn from_x0(x0: usize, max_len: usize) -> Result<BootInfo<'static>, BootInfoError> {
    if x0 == 0 {
        return Err(BootInfoError::NullPointer);
    }
    // SAFETY: the caller guarantees the range is readable and unchanging forever.
    let bytes = unsafe { core::slice::from_raw_parts(x0 as *const u8, max_len) };
    BootInfo::parse(bytes)
}

/// Removes the `FDT_NOP` tokens from a device tree's structure block, in place.
///
/// Boot loaders delete nodes by overwriting them with NOPs (QEMU does for the devices it does not
/// model, libfdt's `fdt_nop_node`), and the `fdt` crate cannot skip a NOP between two sibling
/// nodes, so [`BootInfo::parse`] refuses such a blob as [`DtbDefect::Misplaced`]. Compacting the
/// structure block first (the blob is the firmware's own copy, reserved for it) makes it
/// parseable without changing its meaning. The header's `size_dt_struct` is updated and the freed
/// tail of the block zeroed.
///
/// The whole structure block is checked before anything is moved: on error the blob is left
/// untouched. Returns the number of NOP tokens removed.
pub fn compact_fdt_nops(blob: &mut [u8]) -> Result<usize, BootInfoError> {
    if be32(blob, 0) != Some(FDT_MAGIC) {
        return Err(BootInfoError::BadMagic { found: be32(blob, 0).unwrap_or(0) });
    }
    if blob.len() < FDT_HEADER_LEN {
        return Err(BootInfoError::Truncated { needed: FDT_HEADER_LEN, have: blob.len() });
    }
    let word = |d: &[u8], i: usize| be32(d, i * 4).unwrap_or(0) as usize;
    let (totalsize, off_struct, size_struct) = (word(blob, 1), word(blob, 2), word(blob, 9));
    if totalsize > blob.len() {
        return Err(BootInfoError::Truncated { needed: totalsize, have: blob.len() });
    }
    let end = off_struct
        .checked_add(size_struct)
        .filter(|&e| e <= totalsize)
        .ok_or(malformed(off_struct, DtbDefect::BlockOutOfBounds))?;
    // One token at `pos` (relative to the block): its length in bytes, or a defect.
    let token_len = |d: &[u8], pos: usize| -> Result<(u32, usize), BootInfoError> {
        let at = off_struct + pos;
        let tok =
            be32(d, at).filter(|_| at + 4 <= end).ok_or(malformed(at, DtbDefect::MissingEnd))?;
        let len = match tok {
            FDT_BEGIN_NODE => {
                let name = &d[(at + 4).min(end)..end];
                let nul = name
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(malformed(at, DtbDefect::BadNodeName))?;
                4 + align4(nul + 1)
            }
            FDT_PROP => {
                let len = be32(d, at + 4)
                    .filter(|_| at + 12 <= end)
                    .ok_or(malformed(at, DtbDefect::BadProperty))?;
                12 + align4(len as usize)
            }
            FDT_END_NODE | FDT_NOP | FDT_END => 4,
            token => return Err(malformed(at, DtbDefect::BadToken { token })),
        };
        if pos + len > size_struct {
            return Err(malformed(at, DtbDefect::MissingEnd));
        }
        Ok((tok, len))
    };
    // Pass 1: check every token fits, find FDT_END.
    let mut pos = 0;
    loop {
        let (tok, len) = token_len(blob, pos)?;
        pos += len;
        if tok == FDT_END {
            break;
        }
    }
    // Pass 2: slide every token but NOPs down.
    let (mut rd, mut wr, mut removed) = (0, 0, 0);
    loop {
        let (tok, len) = token_len(blob, rd)?;
        if tok == FDT_NOP {
            removed += 1;
        } else {
            blob.copy_within(off_struct + rd..off_struct + rd + len, off_struct + wr);
            wr += len;
        }
        rd += len;
        if tok == FDT_END {
            break;
        }
    }
    blob[off_struct + wr..off_struct + rd].fill(0);
    blob[36..40].copy_from_slice(&(wr as u32).to_be_bytes());
    Ok(removed)
}

fn malformed(offset: usize, defect: DtbDefect) -> BootInfoError {
    BootInfoError::MalformedDtb { offset, defect }
}

struct Header {
    totalsize: usize,
    off_struct: usize,
    off_strings: usize,
    off_rsvmap: usize,
    size_strings: usize,
    size_struct: usize,
}

/// Checks everything the `fdt` crate would otherwise panic on.
fn validate_dtb(d: &[u8]) -> Result<Header, BootInfoError> {
    if d.len() < FDT_HEADER_LEN {
        return Err(BootInfoError::Truncated { needed: FDT_HEADER_LEN, have: d.len() });
    }
    let word = |i: usize| be32(d, i * 4).unwrap_or(0) as usize;
    let h = Header {
        totalsize: word(1),
        off_struct: word(2),
        off_strings: word(3),
        off_rsvmap: word(4),
        size_strings: word(8),
        size_struct: word(9),
    };
    let (version, last_comp) = (word(5) as u32, word(6) as u32);
    if h.totalsize > d.len() {
        return Err(BootInfoError::Truncated { needed: h.totalsize, have: d.len() });
    }
    if h.totalsize < FDT_HEADER_LEN {
        return Err(malformed(4, DtbDefect::BadTotalSize));
    }
    if version < 17 || last_comp > 17 {
        return Err(malformed(20, DtbDefect::BadVersion { version, last_comp }));
    }
    let within = |off: usize, len: usize| off.checked_add(len).is_some_and(|e| e <= h.totalsize);
    if !within(h.off_struct, h.size_struct)
        || !within(h.off_strings, h.size_strings)
        || h.off_rsvmap >= h.totalsize
    {
        return Err(malformed(8, DtbDefect::BlockOutOfBounds));
    }
    // Memory reservation block: (u64 address, u64 size) pairs ending with (0, 0).
    let mut off = h.off_rsvmap;
    loop {
        if !within(off, 16) {
            return Err(malformed(off, DtbDefect::UnterminatedMemReserve));
        }
        if be64(d, off) == Some(0) && be64(d, off + 8) == Some(0) {
            break;
        }
        off += 16;
    }
    validate_structure(d, &h)?;
    Ok(h)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Props,
    Children,
    Closing,
}

fn validate_structure(d: &[u8], h: &Header) -> Result<(), BootInfoError> {
    let s = &d[h.off_struct..h.off_struct + h.size_struct];
    let strings = &d[h.off_strings..h.off_strings + h.size_strings];
    let at = |pos: usize| h.off_struct + pos;
    let mut phase = [Phase::Props; MAX_DTB_DEPTH + 1];
    let mut depth = 0usize;
    let mut seen_root = false;
    let mut pos = 0usize;
    loop {
        let Some(token) = be32(s, pos) else {
            return Err(malformed(at(pos), DtbDefect::MissingEnd));
        };
        let tok_pos = pos;
        pos += 4;
        match token {
            FDT_BEGIN_NODE => {
                if depth == 0 && seen_root {
                    return Err(malformed(at(tok_pos), DtbDefect::BadToken { token }));
                }
                if depth > 0 {
                    if phase[depth] == Phase::Closing {
                        return Err(malformed(at(tok_pos), DtbDefect::Misplaced));
                    }
                    phase[depth] = Phase::Children;
                }
                let name_bytes = &s[pos.min(s.len())..];
                let Some(nul) = name_bytes.iter().position(|&b| b == 0) else {
                    return Err(malformed(at(pos), DtbDefect::BadNodeName));
                };
                if core::str::from_utf8(&name_bytes[..nul]).is_err() || (depth == 0 && nul != 0) {
                    return Err(malformed(at(pos), DtbDefect::BadNodeName));
                }
                pos = align4(pos + nul + 1);
                depth += 1;
                if depth > MAX_DTB_DEPTH {
                    return Err(malformed(at(tok_pos), DtbDefect::TooDeep));
                }
                phase[depth] = Phase::Props;
                seen_root = true;
            }
            FDT_END_NODE => {
                if depth == 0 {
                    return Err(malformed(at(tok_pos), DtbDefect::Unbalanced));
                }
                depth -= 1;
            }
            FDT_PROP => {
                if depth == 0 || phase[depth] != Phase::Props {
                    return Err(malformed(at(tok_pos), DtbDefect::Misplaced));
                }
                let (Some(len), Some(nameoff)) = (be32(s, pos), be32(s, pos + 4)) else {
                    return Err(malformed(at(tok_pos), DtbDefect::BadProperty));
                };
                let (len, nameoff) = (len as usize, nameoff as usize);
                pos += 8;
                if pos.checked_add(len).is_none_or(|e| e > s.len()) {
                    return Err(malformed(at(tok_pos), DtbDefect::BadProperty));
                }
                let Some(name_bytes) = strings.get(nameoff..) else {
                    return Err(malformed(at(tok_pos), DtbDefect::BadProperty));
                };
                let Some(nul) = name_bytes.iter().position(|&b| b == 0) else {
                    return Err(malformed(at(tok_pos), DtbDefect::BadProperty));
                };
                let Ok(name) = core::str::from_utf8(&name_bytes[..nul]) else {
                    return Err(malformed(at(tok_pos), DtbDefect::BadProperty));
                };
                if (name == "#address-cells" || name == "#size-cells") && len != 4 {
                    return Err(malformed(at(tok_pos), DtbDefect::BadCells));
                }
                pos = align4(pos + len);
            }
            FDT_NOP => {
                if depth > 0 {
                    phase[depth] = Phase::Closing;
                }
            }
            FDT_END => {
                if depth != 0 || !seen_root {
                    return Err(malformed(at(tok_pos), DtbDefect::Unbalanced));
                }
                return Ok(());
            }
            _ => return Err(malformed(at(tok_pos), DtbDefect::BadToken { token })),
        }
    }
}

/// Cell sizes of a node's children (`#address-cells`, `#size-cells`; defaults 2 and 1).
fn cells(node: fdt::node::FdtNode<'_, '_>) -> (usize, usize) {
    let get = |name: &str, default: usize| {
        node.property(name).and_then(|p| p.as_usize()).unwrap_or(default)
    };
    (get("#address-cells", 2), get("#size-cells", 1))
}

fn read_cells(v: &[u8], off: usize, n: usize) -> u64 {
    match n {
        1 => be32(v, off).unwrap_or(0) as u64,
        _ => be64(v, off).unwrap_or(0),
    }
}

/// Calls `f(region)` for each `(address, size)` entry of `reg` with the given cell sizes.
fn for_each_reg(
    reg: &[u8],
    (ac, sc): (usize, usize),
    offset: usize,
    mut f: impl FnMut(MemRegion) -> Result<(), BootInfoError>,
) -> Result<(), BootInfoError> {
    let entry = (ac + sc) * 4;
    if !(1..=2).contains(&ac) || !(1..=2).contains(&sc) || !reg.len().is_multiple_of(entry) {
        return Err(malformed(offset, DtbDefect::BadCells));
    }
    for e in reg.chunks_exact(entry) {
        let base = read_cells(e, 0, ac);
        let size = read_cells(e, ac * 4, sc);
        f(MemRegion::new(base, size))?;
    }
    Ok(())
}

fn is_disabled(node: fdt::node::FdtNode<'_, '_>) -> bool {
    node.property("status").and_then(|p| p.as_str()).is_some_and(|s| s != "okay" && s != "ok")
}

/// The banks of the root's enabled `device_type = "memory"` children.
fn dtb_memory(root: fdt::node::FdtNode<'_, '_>, offset: usize) -> Result<Banks, BootInfoError> {
    let root_cells = cells(root);
    let mut raw = RegionList::<MAX_BANKS>::new();
    let mut any_node = false;
    for child in root.children() {
        let is_memory =
            child.property("device_type").and_then(|p| p.as_str()).is_some_and(|t| t == "memory");
        if !is_memory || is_disabled(child) {
            continue;
        }
        let Some(reg) = child.property("reg") else {
            continue;
        };
        any_node = true;
        for_each_reg(reg.value, root_cells, offset, |r| {
            raw.push(r).map_err(|_| BootInfoError::TooManyBanks { max: MAX_BANKS })
        })?;
    }
    if !any_node {
        return Err(BootInfoError::NoMemoryNode);
    }
    validate_banks(raw.as_slice())
}

/// Does the node name `name` match the path component `want`? As libfdt's
/// `fdt_nodename_eq_`: equal, or `want` has no unit address and `name` is `want@...`.
fn name_matches(name: &str, want: &str) -> bool {
    name == want
        || (!want.contains('@')
            && name.len() > want.len()
            && name.starts_with(want)
            && name.as_bytes()[want.len()] == b'@')
}

/// The node at the absolute path `path` (`/a/b`), looked up component by component from the
/// root, **without alias resolution**.
///
/// The `fdt` crate's `find_node` falls back to `/aliases` when a path is not found, looking the
/// whole path up as an alias name and recursing on its value with no depth limit: a tree with
/// `aliases { "/chosen" = "/chosen"; }` and no `/chosen` (or two aliases naming each other)
/// recursed until the stack overflowed, and `"/chosen" = "/evil"` silently read another node.
/// A path starting with `/` is never an alias (Linux's `of_find_node_opts_by_path`, libfdt's
/// `fdt_path_offset`), and this parser looks up nothing else, so no alias is ever resolved here.
/// Stack use is constant: the walk is a loop over the components, each a loop over children.
fn find_path<'b, 'a>(fdt: &'b fdt::Fdt<'a>, path: &str) -> Option<fdt::node::FdtNode<'b, 'a>> {
    let rest = path.strip_prefix('/')?;
    let mut node = root_node(fdt)?;
    for want in rest.split('/').filter(|c| !c.is_empty()) {
        node = node.children().find(|c| name_matches(c.name, want))?;
    }
    Some(node)
}

/// The root node: the first node of the structure block (the validator checked there is one
/// and that it has an empty name). Not `Fdt::find_node("/")`, which would consult `/aliases`
/// if it failed.
fn root_node<'b, 'a>(fdt: &'b fdt::Fdt<'a>) -> Option<fdt::node::FdtNode<'b, 'a>> {
    fdt.all_nodes().next()
}

fn parse_dtb(d: &[u8]) -> Result<BootInfo<'_>, BootInfoError> {
    let h = validate_dtb(d)?;
    let fdt = fdt::Fdt::new(&d[..h.totalsize]).map_err(|e| BootInfoError::Fdt(e.into()))?;
    let Some(root) = root_node(&fdt) else {
        return Err(malformed(h.off_struct, DtbDefect::Unbalanced));
    };
    let model = root.property("model").and_then(|p| p.as_str());
    let (cmdline, cmdline_truncated) = find_path(&fdt, "/chosen")
        .and_then(|c| c.property("bootargs"))
        .map_or(("", None), |p| cmdline_text(p.value));

    let memory = dtb_memory(root, h.off_struct);

    // Reservations. A zero-sized one is dropped, a wrapping one clipped to the top of the
    // address space (reserving more is the safe side), a malformed `reg` skipped: each noted.
    let mut reserved = RegionList::<MAX_RESERVED>::new();
    let mut reserved_overflow = false;
    let mut notes = Notes::new();
    let mut keep = |r: MemRegion, notes: &mut Notes<ReservationNote, MAX_RESERVATION_NOTES>| {
        let r = if r.size == 0 {
            notes.push(ReservationNote { region: r, defect: ReservationDefect::ZeroSize });
            return;
        } else if r.base.0.checked_add(r.size).is_none() {
            notes.push(ReservationNote { region: r, defect: ReservationDefect::Wraps });
            // Starting at the very last byte, nothing is left to reserve.
            let clipped = MemRegion::from_range(r.base.0, u64::MAX);
            if clipped.is_empty() {
                return;
            }
            clipped
        } else {
            r
        };
        if reserved.push(r).is_err() {
            reserved_overflow = true;
        }
    };
    let mut off = h.off_rsvmap;
    while let (Some(base), Some(size)) = (be64(d, off), be64(d, off + 8)) {
        if base == 0 && size == 0 {
            break;
        }
        keep(MemRegion::new(base, size), &mut notes);
        off += 16;
    }
    if let Some(rm) = find_path(&fdt, "/reserved-memory") {
        let rm_cells = cells(rm);
        for child in rm.children() {
            if is_disabled(child) {
                continue;
            }
            let Some(reg) = child.property("reg") else {
                continue;
            };
            let r = for_each_reg(reg.value, rm_cells, h.off_struct, |r| {
                keep(r, &mut notes);
                Ok(())
            });
            if r.is_err() {
                notes.push(ReservationNote {
                    region: MemRegion::default(),
                    defect: ReservationDefect::MalformedReg,
                });
            }
        }
    }

    Ok(BootInfo {
        source: BootSource::Dtb,
        blob_len: h.totalsize,
        memory,
        reserved,
        reserved_overflow,
        reservation_notes: notes,
        cmdline,
        cmdline_truncated,
        model,
    })
}

/// Reads an `ATAG_CMDLINE` payload or a `bootargs` property: the text up to its NUL, which must
/// lie in the last word (the tag or property is sized for the string). Anything else means the text was damaged (on QEMU,
/// overwritten by boot code at 0x300 when it is longer than ~460 bytes): the whole options
/// before the damage are kept and the cut is reported, rather than dropping the line.
fn cmdline_text(data: &[u8]) -> (&str, Option<CmdlineTruncated>) {
    let nul = data.iter().position(|&b| b == 0);
    // Text ends at the NUL; a NUL before the last word, or none at all, is damage.
    let text_end = nul.unwrap_or(data.len());
    let nul_ok = nul.is_some_and(|n| n + 4 >= data.len());
    let valid = match core::str::from_utf8(&data[..text_end]) {
        Ok(s) => s.len(),
        Err(e) => e.valid_up_to(),
    };
    // `valid` is a char boundary; control characters other than whitespace are not text.
    let text = core::str::from_utf8(&data[..valid]).unwrap_or("");
    let damaged_at = text
        .char_indices()
        .find(|&(_, c)| c.is_control() && !c.is_ascii_whitespace())
        .map_or(valid, |(i, _)| i);
    if damaged_at == data.len().min(text_end) && nul_ok {
        return (text, None);
    }
    let head = &text[..damaged_at];
    // Keep whole options only: cut back to the last whitespace (none: nothing kept).
    let kept = head.rfind(|c: char| c.is_ascii_whitespace()).unwrap_or(0);
    let kept_text = head[..kept].trim_end();
    (kept_text, Some(CmdlineTruncated { declared: data.len(), damaged_at, kept: kept_text.len() }))
}

fn parse_atags(d: &[u8]) -> Result<BootInfo<'_>, BootInfoError> {
    let mut raw = RegionList::<MAX_BANKS>::new();
    let mut too_many = false;
    let mut cmdline = "";
    let mut cmdline_truncated = None;
    let mut off = 0usize;
    loop {
        let (Some(size), Some(tag)) = (le32(d, off), le32(d, off + 4)) else {
            return Err(BootInfoError::Truncated { needed: off + 8, have: d.len() });
        };
        if tag == ATAG_NONE {
            off += 8;
            break;
        }
        let bad = BootInfoError::MalformedAtags {
            offset: off,
            defect: AtagDefect::BadTagSize { tag, size },
        };
        if size < 2 {
            return Err(bad);
        }
        let end = off.saturating_add(size as usize * 4);
        if end > d.len() {
            return Err(BootInfoError::Truncated { needed: end, have: d.len() });
        }
        let data = &d[off + 8..end];
        match tag {
            ATAG_MEM => {
                if size < 4 {
                    return Err(bad);
                }
                let msize = le32(data, 0).unwrap_or(0) as u64;
                let start = le32(data, 4).unwrap_or(0) as u64;
                if raw.push(MemRegion::new(start, msize)).is_err() {
                    too_many = true;
                }
            }
            ATAG_CMDLINE => (cmdline, cmdline_truncated) = cmdline_text(data),
            _ => {}
        }
        off = end;
    }
    let memory = if too_many {
        Err(BootInfoError::TooManyBanks { max: MAX_BANKS })
    } else if raw.is_empty() {
        Err(BootInfoError::NoMemoryNode)
    } else {
        validate_banks(raw.as_slice())
    };
    Ok(BootInfo {
        source: BootSource::Atags,
        blob_len: off,
        memory,
        reserved: RegionList::new(),
        reserved_overflow: false,
        reservation_notes: Notes::new(),
        cmdline,
        cmdline_truncated,
        model: None,
    })
}

/// Which memory map [`memory_map`] chose.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MemorySource {
    /// The device tree's memory nodes.
    Dtb,
    /// The ATAG list's `ATAG_MEM` tags.
    Atags,
    /// The VideoCore mailbox ("get ARM memory").
    Mailbox,
    /// The board's built-in table.
    BoardTable,
}

/// What was wrong with one RAM bank of a source.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BankDefect {
    /// It holds no whole 4 KiB page.
    SmallerThanPage,
    /// It lies (partly) at or above [`MapLimits::ram_limit`]: the physical address size
    /// (`ID_AA64MMFR0_EL1.PARange`) or the end of the linear map, whichever is lower. Past it the
    /// CPU cannot address it, or `PAGE_OFFSET + base` leaves the linear map (and overflows for
    /// large bases).
    AboveAddressLimit {
        /// The limit.
        limit: u64,
    },
    /// It overlaps the MMIO window ([`MapLimits::mmio`]), which is never RAM.
    OverlapsMmio,
}

/// Why [`memory_map`] did not use a source, or used only part of it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MapWarning {
    /// The boot blob could not be parsed.
    BootInfoUnusable(BootInfoError),
    /// The boot blob's memory banks are unusable.
    BootMemoryUnusable(BootInfoError),
    /// The mailbox's list is unusable.
    MailboxUnusable(BootInfoError),
    /// `prefer_board_table` overrode a valid boot-blob memory map that differs from the table.
    BoardTableOverrides {
        /// Bytes in the boot blob's map.
        boot_bytes: u64,
        /// Bytes in the board table.
        board_bytes: u64,
    },
    /// The board table itself is invalid (a bug); the map is empty.
    BoardTableInvalid(BootInfoError),
    /// A bank was dropped or trimmed; `kept` is what remains of it (empty if dropped).
    Bank {
        /// The source it came from.
        source: MemorySource,
        /// The bank as given.
        bank: MemRegion,
        /// What was wrong.
        defect: BankDefect,
        /// What was kept (for `OverlapsMmio`, the larger part that is not MMIO).
        kept: MemRegion,
    },
    /// After the checks, nothing usable was left of this source: the next one is tried.
    SourceEmpty(MemorySource),
    /// This source's map does not contain the running kernel image, so it cannot be right:
    /// the next one is tried.
    KernelOutside {
        /// The source passed over.
        source: MemorySource,
        /// The kernel image's physical range.
        kernel: MemRegion,
    },
    /// More banks than fit once split around the MMIO window; the rest were dropped.
    TooManyBanks(MemorySource),
    /// A boot-blob reservation was dropped or clipped.
    Reservation(ReservationNote),
    /// More dropped or clipped reservations than the notes hold: this many more.
    MoreReservationNotes(usize),
    /// More reservations than [`MAX_RESERVED`]; the rest were dropped (not reserved).
    TooManyReservations,
}

/// Capacity of [`MemoryMap`]'s warning list.
pub const MAX_MAP_WARNINGS: usize = 16;

/// What a memory map must respect. The firmware fills it from the CPU and its own image.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MapLimits {
    /// Physical address bits (from `ID_AA64MMFR0_EL1.PARange`, see [`pa_bits_from_parange`]).
    pub pa_bits: u32,
    /// The device window that is never RAM (BCM2711: `0xFC00_0000..0x1_0000_0000`).
    pub mmio: MemRegion,
    /// The running kernel image's physical range: a map without it is wrong.
    pub kernel: MemRegion,
}

/// Physical address bits for an `ID_AA64MMFR0_EL1.PARange` value (ARM ARM D19.2.64). An
/// encoding this table does not know counts as 48 bits, the most the kernel map addresses.
pub const fn pa_bits_from_parange(parange: u64) -> u32 {
    match parange {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        6 => 52,
        _ => 48,
    }
}

impl MapLimits {
    /// The BCM2711 limits: its MMIO window, the CPU's `PARange`, the kernel image at `kernel`.
    pub const fn bcm2711(parange: u64, kernel: MemRegion) -> Self {
        MapLimits {
            pa_bits: pa_bits_from_parange(parange),
            mmio: MemRegion::new(crate::layout::MMIO_PBASE, crate::layout::MMIO_SIZE),
            kernel,
        }
    }
    /// The first physical address RAM may not reach: `2^pa_bits` or the linear map's size,
    /// whichever is lower.
    pub const fn ram_limit(&self) -> u64 {
        let pa = if self.pa_bits >= 64 { u64::MAX } else { 1u64 << self.pa_bits };
        if pa < crate::layout::LINEAR_MAP_SIZE {
            pa
        } else {
            crate::layout::LINEAR_MAP_SIZE
        }
    }
}

/// The memory map the firmware will use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MemoryMap {
    /// The RAM banks, sorted, trimmed to whole pages, below the address limit, outside the MMIO
    /// window, containing the kernel image (unless no source does: see the warnings).
    pub regions: Banks,
    /// Where they came from.
    pub source: MemorySource,
    warnings: Notes<MapWarning, MAX_MAP_WARNINGS>,
}

impl MemoryMap {
    /// Why other sources were not used, and what was dropped or trimmed.
    pub fn warnings(&self) -> impl Iterator<Item = MapWarning> + '_ {
        self.warnings.iter()
    }
    /// Warnings that did not fit in the list.
    pub fn warnings_dropped(&self) -> usize {
        self.warnings.dropped()
    }
    fn warn(&mut self, w: MapWarning) {
        self.warnings.push(w);
    }
}

/// The banks of `source` that are safe to use: whole pages, below the address limit, outside
/// the MMIO window; every change is a warning. An empty result means the source is unusable.
fn checked(map: &mut MemoryMap, source: MemorySource, banks: &Banks, lim: &MapLimits) -> Banks {
    let mut out = Banks::new();
    let limit = lim.ram_limit();
    for &bank in banks.iter() {
        let mut warn = |defect, kept| map.warn(MapWarning::Bank { source, bank, defect, kept });
        let mut r = bank;
        if r.end() > limit {
            let kept = MemRegion::from_range(r.base.0, limit.max(r.base.0));
            warn(BankDefect::AboveAddressLimit { limit }, kept);
            r = kept;
        }
        // The MMIO window: keep the parts below and above it.
        let mut parts = [r, MemRegion::default()];
        if r.overlaps(&lim.mmio) {
            let below = MemRegion::from_range(r.base.0, lim.mmio.base.0);
            let above = MemRegion::from_range(lim.mmio.end().max(r.base.0), r.end());
            parts = [below, above];
            let larger = if below.size >= above.size { below } else { above };
            warn(BankDefect::OverlapsMmio, larger);
        }
        for p in parts {
            if p.is_empty() {
                continue;
            }
            let t = p.page_trimmed();
            if t.is_empty() {
                warn(BankDefect::SmallerThanPage, t);
                continue;
            }
            if out.push(t).is_err() {
                map.warn(MapWarning::TooManyBanks(source));
                return out;
            }
        }
    }
    out
}

/// Uses `banks` from `source` if, once checked, they are not empty and contain the kernel.
fn try_use(map: &mut MemoryMap, source: MemorySource, banks: &Banks, lim: &MapLimits) -> bool {
    let regions = checked(map, source, banks, lim);
    if regions.is_empty() {
        map.warn(MapWarning::SourceEmpty(source));
        return false;
    }
    if !lim.kernel.is_empty() && !regions.iter().any(|r| r.covers(&lim.kernel)) {
        map.warn(MapWarning::KernelOutside { source, kernel: lim.kernel });
        return false;
    }
    map.regions = regions;
    map.source = source;
    true
}

/// Chooses the memory map.
///
/// Order of preference: the boot blob's banks (DTB or ATAGs) when they are valid; else the
/// VideoCore mailbox's list (`mailbox`, if the firmware asked); else `board_table`. With
/// `prefer_board_table`, the board table wins outright: QEMU's `raspi4b` machine rewrites a
/// `-dtb` to report only `0..0x3c00_0000` (960 MiB of its 2 GiB), so on QEMU the board's table is
/// authoritative; on real hardware the Pi firmware fills the DTB correctly and the flag is off.
///
/// Every source's banks are checked against `limits` before use: parts smaller than a page, at
/// or above the address limit, or inside the MMIO window are dropped; a source left empty, or
/// one whose map does not contain the kernel image, is passed over for the next. The board
/// table is the last resort and is used even then (with the warnings), since it is all there
/// is. Every source passed over, and every bank changed, is reported in
/// [`MemoryMap::warnings`], as are the boot blob's dropped or clipped reservations.
pub fn memory_map(
    board_table: &[MemRegion],
    info: Result<&BootInfo<'_>, &BootInfoError>,
    mailbox: Option<&[MemRegion]>,
    prefer_board_table: bool,
    limits: &MapLimits,
) -> MemoryMap {
    let board = validate_banks(board_table);
    let mut map = MemoryMap {
        regions: Banks::new(),
        source: MemorySource::BoardTable,
        warnings: Notes::new(),
    };
    let boot = match info {
        Ok(i) => {
            for n in i.reservation_notes.iter() {
                map.warn(MapWarning::Reservation(n));
            }
            if i.reservation_notes.dropped() > 0 {
                map.warn(MapWarning::MoreReservationNotes(i.reservation_notes.dropped()));
            }
            if i.reserved_overflow {
                map.warn(MapWarning::TooManyReservations);
            }
            match &i.memory {
                Ok(b) => Some((
                    *b,
                    match i.source {
                        BootSource::Dtb => MemorySource::Dtb,
                        BootSource::Atags => MemorySource::Atags,
                    },
                )),
                Err(e) => {
                    map.warn(MapWarning::BootMemoryUnusable(*e));
                    None
                }
            }
        }
        Err(e) => {
            map.warn(MapWarning::BootInfoUnusable(*e));
            None
        }
    };
    if !prefer_board_table {
        if let Some((banks, source)) = boot {
            if try_use(&mut map, source, &banks, limits) {
                return map;
            }
        }
        if let Some(mb) = mailbox {
            match validate_banks(mb) {
                Ok(banks) => {
                    if try_use(&mut map, MemorySource::Mailbox, &banks, limits) {
                        return map;
                    }
                }
                Err(e) => map.warn(MapWarning::MailboxUnusable(e)),
            }
        }
    }
    match board {
        Ok(banks) => {
            if let Some((b, _)) = boot {
                if prefer_board_table && b != banks {
                    map.warn(MapWarning::BoardTableOverrides {
                        boot_bytes: b.total_bytes(),
                        board_bytes: banks.total_bytes(),
                    });
                }
            }
            if !try_use(&mut map, MemorySource::BoardTable, &banks, limits) {
                // The last resort: its checked banks, even without the kernel.
                map.regions =
                    checked(&mut Clone::clone(&map), MemorySource::BoardTable, &banks, limits);
            }
        }
        Err(e) => map.warn(MapWarning::BoardTableInvalid(e)),
    }
    map.source = MemorySource::BoardTable;
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: MapLimits = MapLimits::bcm2711(4, MemRegion::new(0x8_0000, 0x1000));

    fn atags(tags: &[(u32, &[u32])], cmdline: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut push = |w: u32| out.extend_from_slice(&w.to_le_bytes());
        push(5);
        push(ATAG_CORE);
        push(0);
        push(4096);
        push(0);
        for (tag, data) in tags {
            push(2 + data.len() as u32);
            push(*tag);
            for w in *data {
                push(*w);
            }
        }
        if let Some(c) = cmdline {
            let mut bytes = c.as_bytes().to_vec();
            bytes.push(0);
            while !bytes.len().is_multiple_of(4) {
                bytes.push(0);
            }
            push(2 + bytes.len() as u32 / 4);
            push(ATAG_CMDLINE);
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out
    }

    #[test]
    fn atags_memory_and_cmdline() {
        let b = atags(
            &[(ATAG_MEM, &[0x3b40_0000, 0]), (0x5441_0004, &[1, 2])],
            Some("hugepages=8 ptdump"),
        );
        let i = BootInfo::parse(&b).unwrap();
        assert_eq!(i.source, BootSource::Atags);
        assert_eq!(i.banks().unwrap(), &[MemRegion::new(0, 0x3b40_0000)]);
        assert_eq!(i.cmdline, "hugepages=8 ptdump");
        assert_eq!(i.blob_len, b.len());
        // Extra bytes after ATAG_NONE are fine.
        let mut longer = b.clone();
        longer.extend_from_slice(&[0xff; 64]);
        assert_eq!(BootInfo::parse(&longer).unwrap().blob_len, b.len());
    }

    #[test]
    fn atag_errors() {
        let b = atags(&[], None);
        assert_eq!(BootInfo::parse(&b).unwrap().memory, Err(BootInfoError::NoMemoryNode));
        let b = atags(&[(ATAG_MEM, &[0, 0x1000])], None);
        assert_eq!(
            BootInfo::parse(&b).unwrap().memory,
            Err(BootInfoError::ZeroSizeBank { base: PhysAddr(0x1000) })
        );
        let b = atags(&[(ATAG_MEM, &[0x2000, 0]), (ATAG_MEM, &[0x2000, 0x1000])], None);
        assert!(matches!(
            BootInfo::parse(&b).unwrap().memory,
            Err(BootInfoError::OverlappingBanks { .. })
        ));
        let b = atags(&[(ATAG_MEM, &[0x2000])], None);
        assert!(matches!(
            BootInfo::parse(&b),
            Err(BootInfoError::MalformedAtags { offset: 20, .. })
        ));
        let b = atags(&[(ATAG_MEM, &[0x2000, 0])], None);
        assert!(matches!(BootInfo::parse(&b[..b.len() - 8]), Err(BootInfoError::Truncated { .. })));
        let many: Vec<(u32, &[u32])> = (0..9).map(|_| (ATAG_MEM, &[0x1000u32, 0][..])).collect();
        let b = atags(&many, None);
        assert_eq!(
            BootInfo::parse(&b).unwrap().memory,
            Err(BootInfoError::TooManyBanks { max: MAX_BANKS })
        );
    }

    #[test]
    fn not_a_boot_blob() {
        assert_eq!(
            BootInfo::parse(&[1, 2, 3, 4, 5, 6, 7, 8]),
            Err(BootInfoError::BadMagic { found: 0x0102_0304 })
        );
        assert!(matches!(BootInfo::parse(&[1, 2]), Err(BootInfoError::Truncated { .. })));
        // SAFETY: a null x0 is rejected before any read.
        let r = unsafe { from_x0(0, 4096) };
        assert!(matches!(r, Err(BootInfoError::NullPointer)));
    }

    #[test]
    fn bank_validation() {
        assert_eq!(validate_banks(&[]), Err(BootInfoError::NoMemoryNode));
        let b = validate_banks(&[MemRegion::new(0x4000_0000, 0x1000), MemRegion::new(0, 0x1000)])
            .unwrap();
        assert_eq!(b.as_slice()[0].base, PhysAddr(0));
        assert!(matches!(
            validate_banks(&[MemRegion::new(u64::MAX - 1, 4)]),
            Err(BootInfoError::BankWraps { .. })
        ));
    }

    #[test]
    fn memory_map_policy() {
        let qemu_board = [MemRegion::new(0, 0x3c00_0000), MemRegion::new(0x4000_0000, 0x4000_0000)];
        let a = atags(&[(ATAG_MEM, &[0x3c00_0000, 0])], None);
        let info = BootInfo::parse(&a).unwrap();
        // Boot blob wins by default.
        let m = memory_map(&qemu_board, Ok(&info), None, false, &LIM);
        assert_eq!(m.source, MemorySource::Atags);
        assert_eq!(m.regions.len(), 1);
        assert_eq!(m.warnings().count(), 0);
        // QEMU policy: board table wins, with a note.
        let m = memory_map(&qemu_board, Ok(&info), None, true, &LIM);
        assert_eq!(m.source, MemorySource::BoardTable);
        assert_eq!(m.regions.as_slice(), &qemu_board);
        assert_eq!(
            m.warnings().next(),
            Some(MapWarning::BoardTableOverrides {
                boot_bytes: 0x3c00_0000,
                board_bytes: 0x7c00_0000
            })
        );
        // Unusable blob, mailbox given.
        let err = BootInfoError::BadMagic { found: 0 };
        let mbox = [MemRegion::new(0, 0x3b40_0000)];
        let m = memory_map(&qemu_board, Err(&err), Some(&mbox), false, &LIM);
        assert_eq!(m.source, MemorySource::Mailbox);
        assert_eq!(m.warnings().next(), Some(MapWarning::BootInfoUnusable(err)));
        // Bad mailbox too: board table.
        let bad = [MemRegion::new(0, 0)];
        let m = memory_map(&qemu_board, Err(&err), Some(&bad), false, &LIM);
        assert_eq!(m.source, MemorySource::BoardTable);
        assert_eq!(m.warnings().count(), 2);
        // Unaligned banks are trimmed.
        let m = memory_map(&[MemRegion::new(0x800, 0x10_0000)], Err(&err), None, false, &LIM);
        assert_eq!(m.regions.as_slice(), &[MemRegion::from_range(0x1000, 0x10_0000)]);
    }

    /// An ATAG command line whose text from byte `at` on was overwritten with `junk` (what
    /// QEMU's raspi4b boot code at 0x300 does to a long line).
    fn clobbered(line: &str, at: usize, junk: &[u8]) -> Vec<u8> {
        let mut b = atags(&[(ATAG_MEM, &[0x3c00_0000, 0])], Some(line));
        let text = 20 + 16 + 8;
        for (i, j) in junk.iter().enumerate() {
            if text + at + i < b.len() - 8 {
                b[text + at + i] = *j;
            }
        }
        b
    }

    #[test]
    fn a_damaged_atag_cmdline_keeps_its_whole_options() {
        let line = "hugepagesz=2M hugepages=16 ptdump loglevel=7 console=ttyAMA0";
        // AArch64 code bytes: `ldr x0, #8` etc. (non-UTF-8 and NULs).
        let code = [0x40, 0x00, 0x00, 0x58, 0xe1, 0x03, 0x1f, 0xaa];
        let b1 = clobbered(line, 30, &code);
        let i = BootInfo::parse(&b1).expect("the blob still parses");
        assert_eq!(i.cmdline, "hugepagesz=2M hugepages=16");
        let t = i.cmdline_truncated.expect("the cut is reported");
        assert_eq!((t.damaged_at, t.kept), (31, 26));
        assert!(t.declared > line.len());
        // Memory is still there.
        assert_eq!(i.banks().unwrap().len(), 1);
        // Damage in the first option: nothing kept, still reported, still Ok.
        let b2 = clobbered(line, 3, &[0xff]);
        let i = BootInfo::parse(&b2).unwrap();
        assert_eq!(i.cmdline, "");
        assert_eq!(i.cmdline_truncated.map(|t| t.damaged_at), Some(3));
        // A NUL in the middle (not the tag's last word) is a cut too; here it falls right
        // after a space, so `ptdump` is whole.
        let b3 = clobbered(line, 34, &[0]);
        let i = BootInfo::parse(&b3).unwrap();
        assert_eq!(i.cmdline, "hugepagesz=2M hugepages=16 ptdump");
        assert!(i.cmdline_truncated.is_some());
        // Control characters are not text.
        let b4 = clobbered(line, 40, &[0x01, 0x02]);
        let i = BootInfo::parse(&b4).unwrap();
        assert_eq!(i.cmdline, "hugepagesz=2M hugepages=16 ptdump");
        // An intact line is not flagged, whatever its length.
        let long = "x.y=1 ".repeat(200);
        let b5 = atags(&[], Some(&long));
        let i = BootInfo::parse(&b5).unwrap();
        assert_eq!((i.cmdline, i.cmdline_truncated), (long.as_str(), None));
    }
}
