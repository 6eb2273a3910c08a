//! ARMv8-A VMSAv8-64 translation table descriptors: 4 KiB granule, 48-bit virtual addresses,
//! four levels of lookup (0..=3).
//!
//! Every bit position the code needs is a named constant in this file, and every field is read
//! or written through a method here: no other module shifts descriptor bits by hand.
//!
//! Stage-1 descriptor formats (ARM ARM DDI 0487, "VMSAv8-64 translation table format
//! descriptors"), as used here:
//!
//! | bits   | table (L0..L2)      | block (L1, L2) / page (L3)                       |
//! |--------|---------------------|--------------------------------------------------|
//! | 0      | valid = 1           | valid = 1                                        |
//! | 1      | 1 = table           | 0 = block (L1/L2), 1 = page (L3)                 |
//! | 4:2    |                     | AttrIndx: index into `MAIR_EL1`                  |
//! | 7:6    |                     | `AP[2:1]`: data access permissions               |
//! | 9:8    |                     | SH: shareability                                 |
//! | 10     |                     | AF: access flag                                  |
//! | 11     |                     | nG: not global (tagged with the ASID)            |
//! | 47:12  | next-level table PA | output address (47:30 at L1, 47:21 at L2)        |
//! | 52     |                     | Contiguous hint (always 0 here)                  |
//! | 53     |                     | PXN                                              |
//! | 54     |                     | UXN                                              |
//!
//! Bits `[1:0] = 0b01` are a block at levels 1 and 2 only; at level 0 (4 KiB granule, no
//! FEAT_LPA2) and level 3 that encoding is reserved and faults like an invalid entry, so
//! [`Descriptor::kind`] reports it as [`DescKind::Invalid`].

use crate::addr::{PhysAddr, VirtAddr, PAGE_SHIFT, PAGE_SIZE, PGD_SHIFT, PMD_SHIFT, PUD_SHIFT};
use core::fmt;

/// Entries in one translation table (4 KiB / 8 bytes).
pub const ENTRIES_PER_TABLE: usize = 512;
/// Bits of virtual address resolved per level.
pub const BITS_PER_LEVEL: u32 = 9;
/// Width of a virtual address (T0SZ = T1SZ = 16).
pub const VA_BITS: u32 = 48;
/// Mask of the bits of a VA that index the tables (`[47:0]`).
pub const VA_MASK: u64 = (1 << VA_BITS) - 1;
/// Width of an output (physical) address.
pub const PA_BITS: u32 = 48;

/// `MAIR_EL1` attribute index of Normal memory, inner and outer write-back, read- and
/// write-allocate, non-transient.
pub const MAIR_IDX_NORMAL: u8 = 0;
/// `MAIR_EL1` attribute index of Device-nGnRE memory.
pub const MAIR_IDX_DEVICE: u8 = 1;
/// `MAIR_EL1` encoding of Normal WB RA WA inner and outer (`0xff`).
pub const MAIR_ATTR_NORMAL_WB: u64 = 0xff;
/// `MAIR_EL1` encoding of Device-nGnRE (`0x04`).
pub const MAIR_ATTR_DEVICE_NGNRE: u64 = 0x04;
/// The value the firmware writes to `MAIR_EL1`: Attr0 = Normal WB, Attr1 = Device-nGnRE.
pub const MAIR_VALUE: u64 = (MAIR_ATTR_NORMAL_WB << (8 * MAIR_IDX_NORMAL as u64))
    | (MAIR_ATTR_DEVICE_NGNRE << (8 * MAIR_IDX_DEVICE as u64));

/// Bit positions and masks of the descriptor fields. Public so that assembly-level boot code and
/// tests can name them; Rust code uses the [`Descriptor`] and [`Attrs`] methods.
pub mod bits {
    /// Valid.
    pub const VALID: u64 = 1 << 0;
    /// Table (levels 0..=2) or page (level 3).
    pub const TABLE_OR_PAGE: u64 = 1 << 1;
    /// Shift of `AttrIndx[2:0]`.
    pub const ATTR_INDX_SHIFT: u32 = 2;
    /// Mask of `AttrIndx[2:0]`.
    pub const ATTR_INDX_MASK: u64 = 0b111 << ATTR_INDX_SHIFT;
    /// `AP[1]`: EL0 access.
    pub const AP_EL0: u64 = 1 << 6;
    /// `AP[2]`: read-only.
    pub const AP_RO: u64 = 1 << 7;
    /// Shift of `SH[1:0]`.
    pub const SH_SHIFT: u32 = 8;
    /// Mask of `SH[1:0]`.
    pub const SH_MASK: u64 = 0b11 << SH_SHIFT;
    /// Access flag.
    pub const AF: u64 = 1 << 10;
    /// Not global.
    pub const NG: u64 = 1 << 11;
    /// Output address / next-level table address, bits `[47:12]`.
    pub const ADDR_MASK: u64 = ((1 << 48) - 1) & !((1 << 12) - 1);
    /// Contiguous hint.
    pub const CONTIGUOUS: u64 = 1 << 52;
    /// Privileged execute-never.
    pub const PXN: u64 = 1 << 53;
    /// Unprivileged execute-never.
    pub const UXN: u64 = 1 << 54;
    /// Every bit [`super::Attrs`] describes.
    pub const ATTR_MASK: u64 = ATTR_INDX_MASK | AP_EL0 | AP_RO | SH_MASK | AF | NG | PXN | UXN;
    /// Software bit 58, in the range `[58:55]` reserved for software in valid block and page
    /// descriptors; every bit but bit 0 is ignored by the hardware in an invalid descriptor (ARM
    /// ARM "Translation table descriptor formats"). HVO's batched passes mark their pending
    /// (broken, not yet remade) entries with it.
    pub const SW_PENDING: u64 = 1 << 58;
}

/// A lookup level, 0 (512 GiB per entry) to 3 (4 KiB pages).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Level {
    /// Level 0 (Linux: pgd). Table entries only.
    L0 = 0,
    /// Level 1 (Linux: pud). Tables or 1 GiB blocks.
    L1 = 1,
    /// Level 2 (Linux: pmd). Tables or 2 MiB blocks.
    L2 = 2,
    /// Level 3 (Linux: pte). 4 KiB pages only.
    L3 = 3,
}

impl Level {
    /// All levels, root first.
    pub const ALL: [Level; 4] = [Level::L0, Level::L1, Level::L2, Level::L3];

    /// The level with number `n`, if `n <= 3`.
    pub const fn from_u8(n: u8) -> Option<Level> {
        match n {
            0 => Some(Level::L0),
            1 => Some(Level::L1),
            2 => Some(Level::L2),
            3 => Some(Level::L3),
            _ => None,
        }
    }

    /// The level number.
    #[inline]
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// log2 of the VA span of one entry at this level.
    #[inline]
    pub const fn shift(self) -> u32 {
        match self {
            Level::L0 => PGD_SHIFT,
            Level::L1 => PUD_SHIFT,
            Level::L2 => PMD_SHIFT,
            Level::L3 => PAGE_SHIFT,
        }
    }

    /// VA span of one entry at this level.
    #[inline]
    pub const fn size(self) -> u64 {
        1 << self.shift()
    }

    /// Index of `va`'s entry in a table at this level.
    #[inline]
    pub const fn index(self, va: VirtAddr) -> usize {
        ((va.0 >> self.shift()) as usize) & (ENTRIES_PER_TABLE - 1)
    }

    /// The next level down, `None` at level 3.
    #[inline]
    pub const fn next(self) -> Option<Level> {
        match self {
            Level::L0 => Some(Level::L1),
            Level::L1 => Some(Level::L2),
            Level::L2 => Some(Level::L3),
            Level::L3 => None,
        }
    }

    /// Can an entry at this level be a block (levels 1 and 2 with the 4 KiB granule)?
    #[inline]
    pub const fn allows_block(self) -> bool {
        matches!(self, Level::L1 | Level::L2)
    }

    /// Can an entry at this level be a page (level 3 only)?
    #[inline]
    pub const fn allows_page(self) -> bool {
        matches!(self, Level::L3)
    }

    /// Can an entry at this level map memory (block or page)?
    #[inline]
    pub const fn allows_leaf(self) -> bool {
        !matches!(self, Level::L0)
    }

    /// Can an entry at this level point to a table?
    #[inline]
    pub const fn allows_table(self) -> bool {
        !matches!(self, Level::L3)
    }

    /// Short name for dumps: "PGD", "BLK 1G", "BLK 2M", "PTE 4K" style leaf names.
    pub const fn leaf_name(self) -> &'static str {
        match self {
            Level::L0 => "PGD",
            Level::L1 => "BLK 1G",
            Level::L2 => "BLK 2M",
            Level::L3 => "PTE 4K",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.as_u8())
    }
}

/// What a descriptor is, which depends on the level it sits at.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DescKind {
    /// Faults on access (bit 0 clear, or a reserved encoding).
    Invalid,
    /// Points to a next-level table (levels 0..=2).
    Table,
    /// Maps a 1 GiB (level 1) or 2 MiB (level 2) block.
    Block,
    /// Maps a 4 KiB page (level 3).
    Page,
}

impl DescKind {
    /// Block or page: maps memory.
    #[inline]
    pub const fn is_leaf(self) -> bool {
        matches!(self, DescKind::Block | DescKind::Page)
    }
}

/// Memory type, as selected by the AttrIndx field.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MemType {
    /// Normal memory, write-back cacheable ([`MAIR_IDX_NORMAL`]).
    Normal,
    /// Device-nGnRE ([`MAIR_IDX_DEVICE`]).
    Device,
    /// Any other `MAIR_EL1` index (2..=7); [`MAIR_VALUE`] leaves those as Device-nGnRnE.
    Other(u8),
}

impl MemType {
    /// The `MAIR_EL1` attribute index.
    pub const fn mair_index(self) -> u8 {
        match self {
            MemType::Normal => MAIR_IDX_NORMAL,
            MemType::Device => MAIR_IDX_DEVICE,
            MemType::Other(i) => i & 0b111,
        }
    }

    /// The memory type selected by attribute index `idx` (0..=7).
    pub const fn from_mair_index(idx: u8) -> MemType {
        match idx & 0b111 {
            MAIR_IDX_NORMAL => MemType::Normal,
            MAIR_IDX_DEVICE => MemType::Device,
            i => MemType::Other(i),
        }
    }
}

/// Data access permissions, `AP[2:1]`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AccessPerm {
    /// `0b00`: read/write at EL1, no access at EL0.
    RwEl1,
    /// `0b01`: read/write at EL1 and EL0.
    RwEl0El1,
    /// `0b10`: read-only at EL1, no access at EL0.
    RoEl1,
    /// `0b11`: read-only at EL1 and EL0.
    RoEl0El1,
}

impl AccessPerm {
    const fn to_bits(self) -> u64 {
        match self {
            AccessPerm::RwEl1 => 0,
            AccessPerm::RwEl0El1 => bits::AP_EL0,
            AccessPerm::RoEl1 => bits::AP_RO,
            AccessPerm::RoEl0El1 => bits::AP_RO | bits::AP_EL0,
        }
    }

    const fn from_bits(d: u64) -> AccessPerm {
        match (d & bits::AP_RO != 0, d & bits::AP_EL0 != 0) {
            (false, false) => AccessPerm::RwEl1,
            (false, true) => AccessPerm::RwEl0El1,
            (true, false) => AccessPerm::RoEl1,
            (true, true) => AccessPerm::RoEl0El1,
        }
    }

    /// Writable (at every level that has access)?
    pub const fn is_writable(self) -> bool {
        matches!(self, AccessPerm::RwEl1 | AccessPerm::RwEl0El1)
    }

    /// Accessible from EL0?
    pub const fn el0_access(self) -> bool {
        matches!(self, AccessPerm::RwEl0El1 | AccessPerm::RoEl0El1)
    }
}

/// Shareability, `SH[1:0]`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Shareability {
    /// `0b00`.
    NonShareable,
    /// `0b10`.
    OuterShareable,
    /// `0b11`: what SMP kernels use for Normal memory.
    InnerShareable,
    /// `0b01`: reserved (CONSTRAINED UNPREDICTABLE); kept so decoding is total.
    Reserved,
}

impl Shareability {
    const fn to_bits(self) -> u64 {
        let v = match self {
            Shareability::NonShareable => 0b00,
            Shareability::Reserved => 0b01,
            Shareability::OuterShareable => 0b10,
            Shareability::InnerShareable => 0b11,
        };
        v << bits::SH_SHIFT
    }

    const fn from_bits(d: u64) -> Shareability {
        match (d & bits::SH_MASK) >> bits::SH_SHIFT {
            0b00 => Shareability::NonShareable,
            0b01 => Shareability::Reserved,
            0b10 => Shareability::OuterShareable,
            _ => Shareability::InnerShareable,
        }
    }
}

/// The attributes of a block or page mapping, in typed form.
///
/// Build one from a preset ([`Attrs::kernel_data`] and friends) and adjust it with the `with_*`
/// builder methods. The contiguous hint is never set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Attrs {
    /// Memory type (AttrIndx).
    pub mem: MemType,
    /// Data access permissions.
    pub ap: AccessPerm,
    /// Shareability.
    pub sh: Shareability,
    /// Access flag: set, or the first access faults (there is no hardware AF management here).
    pub af: bool,
    /// Not global: the TLB entry is tagged with the current ASID (user mappings).
    pub ng: bool,
    /// Privileged (EL1) execute-never.
    pub pxn: bool,
    /// Unprivileged (EL0) execute-never.
    pub uxn: bool,
}

impl Attrs {
    const fn normal(ap: AccessPerm, pxn: bool, uxn: bool, ng: bool) -> Attrs {
        Attrs { mem: MemType::Normal, ap, sh: Shareability::InnerShareable, af: true, ng, pxn, uxn }
    }

    /// Kernel code: read-only, executable at EL1 only.
    pub const fn kernel_text() -> Attrs {
        Attrs::normal(AccessPerm::RoEl1, false, true, false)
    }
    /// Kernel read-only data: read-only, never executable.
    pub const fn kernel_rodata() -> Attrs {
        Attrs::normal(AccessPerm::RoEl1, true, true, false)
    }
    /// Kernel data, stacks, linear map: read/write at EL1, never executable.
    pub const fn kernel_data() -> Attrs {
        Attrs::normal(AccessPerm::RwEl1, true, true, false)
    }
    /// MMIO: Device-nGnRE, read/write at EL1, never executable.
    pub const fn device() -> Attrs {
        Attrs { mem: MemType::Device, ..Attrs::normal(AccessPerm::RwEl1, true, true, false) }
    }
    /// User code: read-only at EL0 and EL1, executable at EL0 only, non-global.
    pub const fn user_text() -> Attrs {
        Attrs::normal(AccessPerm::RoEl0El1, true, false, true)
    }
    /// User read-only data: read-only at EL0 and EL1, never executable, non-global.
    pub const fn user_rodata() -> Attrs {
        Attrs::normal(AccessPerm::RoEl0El1, true, true, true)
    }
    /// User data: read/write at EL0 and EL1, never executable, non-global.
    pub const fn user_data() -> Attrs {
        Attrs::normal(AccessPerm::RwEl0El1, true, true, true)
    }

    /// With access permissions `ap`.
    pub const fn with_ap(self, ap: AccessPerm) -> Attrs {
        Attrs { ap, ..self }
    }
    /// With memory type `mem`.
    pub const fn with_mem(self, mem: MemType) -> Attrs {
        Attrs { mem, ..self }
    }
    /// With shareability `sh`.
    pub const fn with_sh(self, sh: Shareability) -> Attrs {
        Attrs { sh, ..self }
    }
    /// With the access flag set or clear.
    pub const fn with_af(self, af: bool) -> Attrs {
        Attrs { af, ..self }
    }
    /// Global (`false`) or tagged with the ASID (`true`).
    pub const fn with_ng(self, ng: bool) -> Attrs {
        Attrs { ng, ..self }
    }
    /// With PXN set or clear.
    pub const fn with_pxn(self, pxn: bool) -> Attrs {
        Attrs { pxn, ..self }
    }
    /// With UXN set or clear.
    pub const fn with_uxn(self, uxn: bool) -> Attrs {
        Attrs { uxn, ..self }
    }
    /// The same attributes, read-only (`AP[2]` set), keeping EL0 access as it was.
    pub const fn read_only(self) -> Attrs {
        let ap = match self.ap {
            AccessPerm::RwEl1 | AccessPerm::RoEl1 => AccessPerm::RoEl1,
            AccessPerm::RwEl0El1 | AccessPerm::RoEl0El1 => AccessPerm::RoEl0El1,
        };
        Attrs { ap, ..self }
    }

    /// Writable (`AP[2]` clear)?
    pub const fn is_writable(&self) -> bool {
        self.ap.is_writable()
    }

    /// Executable at EL1, from the descriptor's PXN bit alone.
    ///
    /// The architecture also forbids EL1 execution from memory writable at EL0, and
    /// `SCTLR_EL1.WXN` can make writable memory execute-never; neither is modelled, so this
    /// answer (and the W^X audit built on it) errs on the side of "executable".
    pub const fn is_executable_el1(&self) -> bool {
        !self.pxn
    }

    /// Executable at EL0: UXN clear and EL0 has access.
    ///
    /// An EL0 instruction fetch needs read permission at EL0, so an EL1-only mapping is never
    /// executable at EL0 whatever UXN says.
    pub const fn is_executable_el0(&self) -> bool {
        !self.uxn && self.ap.el0_access()
    }

    /// The attribute bits of a block or page descriptor.
    pub const fn to_bits(self) -> u64 {
        let mut d = ((self.mem.mair_index() as u64) << bits::ATTR_INDX_SHIFT)
            | self.ap.to_bits()
            | self.sh.to_bits();
        if self.af {
            d |= bits::AF;
        }
        if self.ng {
            d |= bits::NG;
        }
        if self.pxn {
            d |= bits::PXN;
        }
        if self.uxn {
            d |= bits::UXN;
        }
        d
    }

    /// Decodes the attribute bits of a block or page descriptor; other bits are ignored.
    pub const fn from_bits(d: u64) -> Attrs {
        Attrs {
            mem: MemType::from_mair_index(
                ((d & bits::ATTR_INDX_MASK) >> bits::ATTR_INDX_SHIFT) as u8,
            ),
            ap: AccessPerm::from_bits(d),
            sh: Shareability::from_bits(d),
            af: d & bits::AF != 0,
            ng: d & bits::NG != 0,
            pxn: d & bits::PXN != 0,
            uxn: d & bits::UXN != 0,
        }
    }
}

/// Why a leaf or table descriptor could not be encoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EncodeError {
    /// This level cannot hold a leaf (level 0) or a table (level 3).
    WrongLevel {
        /// The level asked for.
        level: Level,
        /// The kind asked for.
        kind: DescKind,
    },
    /// The address is not aligned to the level's block size, or does not fit in 48 bits.
    BadAddress {
        /// The level asked for.
        level: Level,
        /// The offending address.
        pa: PhysAddr,
    },
}

/// One 64-bit translation table entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct Descriptor(pub u64);

impl Descriptor {
    /// The all-zero invalid descriptor.
    pub const INVALID: Descriptor = Descriptor(0);

    /// The raw bits.
    #[inline]
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Bit 0.
    #[inline]
    pub const fn is_valid(self) -> bool {
        self.0 & bits::VALID != 0
    }

    /// What this descriptor is at `level`.
    #[inline]
    pub const fn kind(self, level: Level) -> DescKind {
        if !self.is_valid() {
            return DescKind::Invalid;
        }
        let bit1 = self.0 & bits::TABLE_OR_PAGE != 0;
        match (level, bit1) {
            (Level::L3, true) => DescKind::Page,
            (_, true) => DescKind::Table,
            (Level::L1 | Level::L2, false) => DescKind::Block,
            // `0b01` at levels 0 and 3 is reserved and faults.
            (Level::L0 | Level::L3, false) => DescKind::Invalid,
        }
    }

    /// A descriptor pointing to the next-level table at `table` (levels 0..=2).
    pub const fn table(level: Level, table: PhysAddr) -> Result<Descriptor, EncodeError> {
        if !level.allows_table() {
            return Err(EncodeError::WrongLevel { level, kind: DescKind::Table });
        }
        if table.0 & !bits::ADDR_MASK != 0 {
            return Err(EncodeError::BadAddress { level, pa: table });
        }
        Ok(Descriptor(table.0 | bits::TABLE_OR_PAGE | bits::VALID))
    }

    /// A block (levels 1, 2) or page (level 3) descriptor mapping `oa` with `attrs`.
    pub const fn leaf(level: Level, oa: PhysAddr, attrs: Attrs) -> Result<Descriptor, EncodeError> {
        if !level.allows_leaf() {
            return Err(EncodeError::WrongLevel { level, kind: DescKind::Block });
        }
        if oa.0 & !bits::ADDR_MASK != 0 || !oa.is_aligned(level.size()) {
            return Err(EncodeError::BadAddress { level, pa: oa });
        }
        let ty = if level.allows_page() { bits::TABLE_OR_PAGE } else { 0 };
        Ok(Descriptor(oa.0 | attrs.to_bits() | ty | bits::VALID))
    }

    /// The next-level table address, bits `[47:12]` (meaningful for table descriptors).
    #[inline]
    pub const fn table_address(self) -> PhysAddr {
        PhysAddr(self.0 & bits::ADDR_MASK)
    }

    /// The output address of a block or page at `level`: bits `[47:shift]`.
    #[inline]
    pub const fn output_address(self, level: Level) -> PhysAddr {
        PhysAddr(self.0 & bits::ADDR_MASK & !(level.size() - 1))
    }

    /// The attributes of a block or page descriptor.
    #[inline]
    pub const fn attrs(self) -> Attrs {
        Attrs::from_bits(self.0)
    }

    /// The same descriptor with its attribute bits replaced by `attrs`.
    #[inline]
    pub const fn with_attrs(self, attrs: Attrs) -> Descriptor {
        Descriptor((self.0 & !bits::ATTR_MASK) | attrs.to_bits())
    }

    /// The same descriptor with its output address replaced by `oa` (a leaf at `level`).
    pub const fn with_output_address(
        self,
        level: Level,
        oa: PhysAddr,
    ) -> Result<Descriptor, EncodeError> {
        if oa.0 & !bits::ADDR_MASK != 0 || !oa.is_aligned(level.size()) {
            return Err(EncodeError::BadAddress { level, pa: oa });
        }
        Ok(Descriptor((self.0 & !bits::ADDR_MASK) | oa.0))
    }

    /// Contiguous hint (never set by this crate).
    #[inline]
    pub const fn is_contiguous(self) -> bool {
        self.0 & bits::CONTIGUOUS != 0
    }

    /// Decodes the mapping of a leaf at `level`: output address and attributes, or `None` if
    /// this is not a block or page there.
    pub const fn decode_leaf(self, level: Level) -> Option<(PhysAddr, Attrs)> {
        match self.kind(level) {
            DescKind::Block | DescKind::Page => Some((self.output_address(level), self.attrs())),
            _ => None,
        }
    }
}

impl fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Descriptor({:#018x})", self.0)
    }
}

/// Which translation table base register covers a VA: TTBR0 (`[0, 2^48)`) or TTBR1
/// (`[2^64 - 2^48, 2^64)`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum VaHalf {
    /// User space, the boot identity map.
    Lower,
    /// The kernel map (`init_mm`).
    Upper,
}

impl VaHalf {
    /// The half a canonical `va` belongs to, `None` if its bits `[63:48]` are neither all zeros
    /// nor all ones.
    pub const fn of(va: VirtAddr) -> Option<VaHalf> {
        match va.0 >> VA_BITS {
            0 => Some(VaHalf::Lower),
            0xffff => Some(VaHalf::Upper),
            _ => None,
        }
    }

    /// The address with table offset `off` (`<= 2^48`) in this half. The offset `2^48` (one
    /// past the last byte) is `2^48` in the lower half and wraps to 0 in the upper half.
    #[inline]
    pub const fn va(self, off: u64) -> VirtAddr {
        match self {
            VaHalf::Lower => VirtAddr(off),
            VaHalf::Upper => VirtAddr(off.wrapping_add(!VA_MASK)),
        }
    }

    /// Splits the non-empty range `[va, va + size)` into its half and the table offsets
    /// `[s, e)` (`e <= 2^48`), or `None` if it is not canonical, overflows, or crosses a half.
    pub const fn split_range(va: VirtAddr, size: u64) -> Option<(VaHalf, u64, u64)> {
        let half = match VaHalf::of(va) {
            Some(h) => h,
            None => return None,
        };
        let s = va.0 & VA_MASK;
        if size == 0 || size > (1 << VA_BITS) - s {
            return None;
        }
        Some((half, s, s + size))
    }
}

/// Size of one translation table page.
pub const TABLE_SIZE: u64 = PAGE_SIZE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_geometry() {
        assert_eq!(Level::L0.size(), 512 << 30);
        assert_eq!(Level::L1.size(), 1 << 30);
        assert_eq!(Level::L2.size(), 2 << 20);
        assert_eq!(Level::L3.size(), 4096);
        let va = VirtAddr(0xFFFF_8012_3456_7000);
        assert_eq!(Level::L0.index(va), 0x100);
        assert_eq!(Level::L1.index(va), 0x48);
        assert_eq!(Level::L2.index(va), 0x1a2);
        assert_eq!(Level::L3.index(va), 0x167);
        assert!(!Level::L0.allows_block() && Level::L1.allows_block() && Level::L2.allows_block());
        assert!(Level::L3.allows_page() && !Level::L3.allows_block());
        assert_eq!(Level::L2.next(), Some(Level::L3));
        assert_eq!(Level::L3.next(), None);
        for (n, l) in Level::ALL.iter().enumerate() {
            assert_eq!(Level::from_u8(n as u8), Some(*l));
        }
        assert_eq!(Level::from_u8(4), None);
    }

    #[test]
    fn mair_value() {
        assert_eq!(MAIR_VALUE, 0x04ff);
    }

    #[test]
    fn kinds_depend_on_level() {
        let t = Descriptor::table(Level::L1, PhysAddr(0x8000)).unwrap();
        assert_eq!(t.kind(Level::L1), DescKind::Table);
        assert_eq!(t.table_address(), PhysAddr(0x8000));
        // The same bit pattern is a page at level 3.
        assert_eq!(t.kind(Level::L3), DescKind::Page);
        let b = Descriptor::leaf(Level::L2, PhysAddr(0x20_0000), Attrs::kernel_data()).unwrap();
        assert_eq!(b.kind(Level::L2), DescKind::Block);
        // `0b01` is reserved at levels 0 and 3.
        assert_eq!(b.kind(Level::L0), DescKind::Invalid);
        assert_eq!(b.kind(Level::L3), DescKind::Invalid);
        assert_eq!(Descriptor::INVALID.kind(Level::L2), DescKind::Invalid);
    }

    #[test]
    fn encode_errors() {
        assert_eq!(
            Descriptor::leaf(Level::L0, PhysAddr(0), Attrs::kernel_data()),
            Err(EncodeError::WrongLevel { level: Level::L0, kind: DescKind::Block })
        );
        assert!(Descriptor::table(Level::L3, PhysAddr(0x1000)).is_err());
        assert_eq!(
            Descriptor::leaf(Level::L2, PhysAddr(0x1000), Attrs::kernel_data()),
            Err(EncodeError::BadAddress { level: Level::L2, pa: PhysAddr(0x1000) })
        );
        assert!(Descriptor::leaf(Level::L3, PhysAddr(1 << 48), Attrs::kernel_data()).is_err());
    }

    #[test]
    fn presets() {
        let t = Attrs::kernel_text();
        assert!(!t.is_writable() && t.is_executable_el1() && !t.is_executable_el0());
        let r = Attrs::kernel_rodata();
        assert!(!r.is_writable() && !r.is_executable_el1() && !r.is_executable_el0());
        let d = Attrs::kernel_data();
        assert!(d.is_writable() && !d.is_executable_el1() && !d.is_executable_el0());
        let dev = Attrs::device();
        assert_eq!(dev.mem, MemType::Device);
        assert!(dev.is_writable() && !dev.is_executable_el1());
        let ut = Attrs::user_text();
        assert!(!ut.is_writable() && !ut.is_executable_el1() && ut.is_executable_el0() && ut.ng);
        let ud = Attrs::user_data();
        assert!(ud.is_writable() && !ud.is_executable_el0() && ud.ng);
        assert_eq!(Attrs::kernel_data().read_only().ap, AccessPerm::RoEl1);
        // Bits as Linux's PROT_NORMAL would set them (plus PXN/UXN), with no contiguous hint.
        let bits = Descriptor::leaf(Level::L3, PhysAddr(0x4000), d).unwrap().bits();
        assert_eq!(bits, 0x0060_0000_0000_4703);
    }

    #[test]
    fn va_halves() {
        assert_eq!(VaHalf::of(VirtAddr(0x1000)), Some(VaHalf::Lower));
        assert_eq!(VaHalf::of(VirtAddr(0xFFFF_0000_0000_0000)), Some(VaHalf::Upper));
        assert_eq!(VaHalf::of(VirtAddr(0x0001_0000_0000_0000)), None);
        assert_eq!(
            VaHalf::split_range(VirtAddr(0xFFFF_FFFF_FFFF_F000), 0x1000),
            Some((VaHalf::Upper, VA_MASK - 0xfff, 1 << 48))
        );
        assert_eq!(VaHalf::split_range(VirtAddr(0xFFFF_FFFF_FFFF_F000), 0x2000), None);
        assert_eq!(VaHalf::split_range(VirtAddr(0xFFFF_F000_0000_0000), 0), None);
        assert_eq!(VaHalf::split_range(VirtAddr((1 << 48) - 0x1000), 0x2000), None);
        assert_eq!(VaHalf::Upper.va(0x1000), VirtAddr(0xFFFF_0000_0000_1000));
        assert_eq!(VaHalf::Upper.va(1 << 48), VirtAddr(0));
        assert_eq!(VaHalf::Lower.va(1 << 48), VirtAddr(1 << 48));
    }
}
