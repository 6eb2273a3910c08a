//! Address newtypes: physical addresses, virtual addresses and page frame numbers.
//!
//! Mixing a physical and a virtual address is the most common bug in page-table code; keeping
//! them in distinct types makes the compiler catch it. All three are plain `u64`s underneath.

use core::fmt;

/// log2 of the translation granule (4 KiB).
pub const PAGE_SHIFT: u32 = 12;
/// The translation granule: 4 KiB.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// log2 of a level-2 block (2 MiB).
pub const PMD_SHIFT: u32 = 21;
/// A level-2 block: 2 MiB.
pub const PMD_SIZE: u64 = 1 << PMD_SHIFT;
/// log2 of a level-1 block (1 GiB).
pub const PUD_SHIFT: u32 = 30;
/// A level-1 block: 1 GiB.
pub const PUD_SIZE: u64 = 1 << PUD_SHIFT;
/// log2 of the span of one level-0 entry (512 GiB).
pub const PGD_SHIFT: u32 = 39;
/// The span of one level-0 entry: 512 GiB.
pub const PGD_SIZE: u64 = 1 << PGD_SHIFT;

/// Is `x` a multiple of `align` (a power of two)?
#[inline]
pub const fn is_aligned(x: u64, align: u64) -> bool {
    x & (align - 1) == 0
}

/// Rounds `x` down to a multiple of `align` (a power of two).
#[inline]
pub const fn align_down(x: u64, align: u64) -> u64 {
    x & !(align - 1)
}

/// Rounds `x` up to a multiple of `align` (a power of two). Saturates at the top of the space.
#[inline]
pub const fn align_up(x: u64, align: u64) -> u64 {
    match x.checked_add(align - 1) {
        Some(v) => v & !(align - 1),
        None => !(align - 1),
    }
}

macro_rules! addr_type {
    ($(#[$m:meta])* $name:ident, $prefix:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw value.
            #[inline]
            pub const fn as_u64(self) -> u64 {
                self.0
            }
            /// Is this address a multiple of `align` (a power of two)?
            #[inline]
            pub const fn is_aligned(self, align: u64) -> bool {
                is_aligned(self.0, align)
            }
            /// Rounded down to a multiple of `align`.
            #[inline]
            pub const fn align_down(self, align: u64) -> Self {
                Self(align_down(self.0, align))
            }
            /// Rounded up to a multiple of `align`.
            #[inline]
            pub const fn align_up(self, align: u64) -> Self {
                Self(align_up(self.0, align))
            }
            /// `self + off`, or `None` on overflow.
            #[inline]
            pub const fn checked_add(self, off: u64) -> Option<Self> {
                match self.0.checked_add(off) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
        }

        impl core::ops::Add<u64> for $name {
            type Output = Self;
            #[inline]
            fn add(self, rhs: u64) -> Self {
                Self(self.0 + rhs)
            }
        }

        impl core::ops::Sub<$name> for $name {
            type Output = u64;
            #[inline]
            fn sub(self, rhs: $name) -> u64 {
                self.0 - rhs.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        #[cfg(feature = "defmt")]
        impl defmt::Format for $name {
            fn format(&self, f: defmt::Formatter<'_>) {
                defmt::write!(f, "{=u64:#x}", self.0)
            }
        }
    };
}

addr_type!(
    /// A physical (output) address.
    PhysAddr,
    "PA"
);
addr_type!(
    /// A virtual (input) address.
    VirtAddr,
    "VA"
);

/// A page frame number: a physical address divided by [`PAGE_SIZE`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
#[repr(transparent)]
pub struct Pfn(pub u64);

impl Pfn {
    /// The frame containing `pa`.
    #[inline]
    pub const fn containing(pa: PhysAddr) -> Self {
        Pfn(pa.0 >> PAGE_SHIFT)
    }
    /// The first byte of the frame.
    #[inline]
    pub const fn addr(self) -> PhysAddr {
        PhysAddr(self.0 << PAGE_SHIFT)
    }
    /// The raw frame number.
    #[inline]
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl core::ops::Add<u64> for Pfn {
    type Output = Self;
    #[inline]
    fn add(self, rhs: u64) -> Self {
        Pfn(self.0 + rhs)
    }
}

impl fmt::Display for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfn {:#x}", self.0)
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Pfn {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "pfn {=u64:#x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_helpers() {
        assert_eq!(align_up(0x1001, PAGE_SIZE), 0x2000);
        assert_eq!(align_up(0x1000, PAGE_SIZE), 0x1000);
        assert_eq!(align_down(0x1fff, PAGE_SIZE), 0x1000);
        assert!(is_aligned(0x20_0000, PMD_SIZE));
        assert!(!is_aligned(0x20_1000, PMD_SIZE));
        assert_eq!(align_up(u64::MAX - 5, PAGE_SIZE), !(PAGE_SIZE - 1));
    }

    #[test]
    fn pfn_round_trip() {
        let pa = PhysAddr(0x4000_3123);
        assert_eq!(Pfn::containing(pa).addr(), PhysAddr(0x4000_3000));
        assert_eq!(VirtAddr(0x10) + 0x20, VirtAddr(0x30));
        assert_eq!(PhysAddr(0x3000) - PhysAddr(0x1000), 0x2000);
    }
}
