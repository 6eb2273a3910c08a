//! The physical address size from `ID_AA64MMFR0_EL1.PARange` (ARM ARM D19.2.64, bits [3:0]).
//! Linux counterpart: `id_aa64mmfr0_parange_to_phys_shift()` (arch/arm64/include/asm/cpufeature.h).
//! Portable: the register value is read by the caller (the firmware's MMU code on the target).

/// The physical address size in bits for the `ID_AA64MMFR0_EL1` value `mmfr0`, or `None` for a
/// reserved `PARange` encoding. The Cortex-A72 reports 0b0100: 44 bits.
pub const fn pa_bits(mmfr0: u64) -> Option<u32> {
    match mmfr0 & 0xf {
        0b0000 => Some(32),
        0b0001 => Some(36),
        0b0010 => Some(40),
        0b0011 => Some(42),
        0b0100 => Some(44),
        0b0101 => Some(48),
        0b0110 => Some(52),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        let all: [(u64, Option<u32>); 8] = [
            (0, Some(32)),
            (1, Some(36)),
            (2, Some(40)),
            (3, Some(42)),
            (4, Some(44)),
            (5, Some(48)),
            (6, Some(52)),
            (7, None),
        ];
        for (v, bits) in all {
            assert_eq!(pa_bits(0x1120 | v), bits, "{v}");
        }
    }
}
