//! Exception syndrome decoding: what ESR_ELx says about a synchronous exception.
//!
//! The exception vectors hand the raw ESR and FAR to [`decode`]; fault reports, the expected-
//! fault machinery of the on-target tests and the user-fault path all read the typed result.
//! Field positions follow the ARM ARM (D17.2.37 ESR_EL1): EC in bits 31:26, IL in bit 25, ISS in
//! bits 24:0; for aborts, the fault status code in ISS bits 5:0 and WnR in bit 6.

/// Exception class (ESR bits 31:26), the ones this firmware meets or reports by name.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ExceptionClass {
    /// 0x00: unknown reason, which includes undefined instructions.
    Unknown,
    /// 0x01: trapped WFI/WFE.
    WfiWfe,
    /// 0x07: access to SIMD/FP registers trapped.
    FpAccess,
    /// 0x0E: illegal execution state.
    IllegalState,
    /// 0x15: SVC from AArch64 (a system call).
    Svc64,
    /// 0x18: trapped MSR/MRS/system instruction.
    SysReg,
    /// 0x20: instruction abort from a lower exception level.
    InstrAbortLower,
    /// 0x21: instruction abort at the same exception level.
    InstrAbortSame,
    /// 0x22: PC alignment fault.
    PcAlignment,
    /// 0x24: data abort from a lower exception level.
    DataAbortLower,
    /// 0x25: data abort at the same exception level.
    DataAbortSame,
    /// 0x26: SP alignment fault.
    SpAlignment,
    /// 0x2C: trapped floating-point exception.
    FpException,
    /// 0x2F: SError interrupt.
    SError,
    /// 0x30/0x31: breakpoint.
    Breakpoint,
    /// 0x32/0x33: software step.
    SoftwareStep,
    /// 0x34/0x35: watchpoint.
    Watchpoint,
    /// 0x3C: BRK instruction.
    Brk,
    /// Any other class, with its raw value.
    Other(u8),
}

impl ExceptionClass {
    /// Decodes the 6-bit EC field.
    pub const fn from_bits(ec: u8) -> Self {
        match ec {
            0x00 => Self::Unknown,
            0x01 => Self::WfiWfe,
            0x07 => Self::FpAccess,
            0x0E => Self::IllegalState,
            0x15 => Self::Svc64,
            0x18 => Self::SysReg,
            0x20 => Self::InstrAbortLower,
            0x21 => Self::InstrAbortSame,
            0x22 => Self::PcAlignment,
            0x24 => Self::DataAbortLower,
            0x25 => Self::DataAbortSame,
            0x26 => Self::SpAlignment,
            0x2C => Self::FpException,
            0x2F => Self::SError,
            0x30 | 0x31 => Self::Breakpoint,
            0x32 | 0x33 => Self::SoftwareStep,
            0x34 | 0x35 => Self::Watchpoint,
            0x3C => Self::Brk,
            other => Self::Other(other),
        }
    }

    /// A human-readable name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown/undefined instruction",
            Self::WfiWfe => "trapped WFI/WFE",
            Self::FpAccess => "trapped FP/SIMD access",
            Self::IllegalState => "illegal execution state",
            Self::Svc64 => "SVC (AArch64)",
            Self::SysReg => "trapped system register access",
            Self::InstrAbortLower => "instruction abort from lower EL",
            Self::InstrAbortSame => "instruction abort at current EL",
            Self::PcAlignment => "PC alignment fault",
            Self::DataAbortLower => "data abort from lower EL",
            Self::DataAbortSame => "data abort at current EL",
            Self::SpAlignment => "SP alignment fault",
            Self::FpException => "floating-point exception",
            Self::SError => "SError",
            Self::Breakpoint => "breakpoint",
            Self::SoftwareStep => "software step",
            Self::Watchpoint => "watchpoint",
            Self::Brk => "BRK instruction",
            Self::Other(_) => "other",
        }
    }

    /// Is this an instruction or data abort (so the ISS holds a fault status code)?
    pub const fn is_abort(self) -> bool {
        matches!(
            self,
            Self::InstrAbortLower
                | Self::InstrAbortSame
                | Self::DataAbortLower
                | Self::DataAbortSame
        )
    }
}

/// What kind of fault an abort's status code (DFSC/IFSC, ISS bits 5:0) reports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FaultKind {
    /// Address size fault at the given level.
    AddressSize(u8),
    /// Translation fault (no valid entry) at the given level.
    Translation(u8),
    /// Access flag fault at the given level.
    AccessFlag(u8),
    /// Permission fault at the given level.
    Permission(u8),
    /// Synchronous external abort.
    ExternalAbort,
    /// Alignment fault.
    Alignment,
    /// TLB conflict abort: two TLB entries matched (a break-before-make violation).
    TlbConflict,
    /// Any other status code, raw.
    Other(u8),
}

impl FaultKind {
    /// Decodes a 6-bit fault status code.
    pub const fn from_fsc(fsc: u8) -> Self {
        let level = fsc & 0b11;
        match fsc & 0b11_1100 {
            0b00_0000 => Self::AddressSize(level),
            0b00_0100 => Self::Translation(level),
            0b00_1000 => Self::AccessFlag(level),
            0b00_1100 => Self::Permission(level),
            _ => match fsc {
                0b01_0000 => Self::ExternalAbort,
                0b10_0001 => Self::Alignment,
                0b11_0000 => Self::TlbConflict,
                other => Self::Other(other),
            },
        }
    }

    /// A human-readable name (without the level).
    pub const fn name(self) -> &'static str {
        match self {
            Self::AddressSize(_) => "address size fault",
            Self::Translation(_) => "translation fault",
            Self::AccessFlag(_) => "access flag fault",
            Self::Permission(_) => "permission fault",
            Self::ExternalAbort => "synchronous external abort",
            Self::Alignment => "alignment fault",
            Self::TlbConflict => "TLB conflict abort",
            Self::Other(_) => "other fault",
        }
    }

    /// The translation level the fault was taken at, where the code has one.
    pub const fn level(self) -> Option<u8> {
        match self {
            Self::AddressSize(l)
            | Self::Translation(l)
            | Self::AccessFlag(l)
            | Self::Permission(l) => Some(l),
            _ => None,
        }
    }
}

/// A decoded syndrome.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Syndrome {
    /// The raw ESR value.
    pub esr: u64,
    /// Exception class.
    pub class: ExceptionClass,
    /// Instruction length bit: the trapped instruction was 32-bit.
    pub il: bool,
    /// For aborts: the fault status.
    pub fault: Option<FaultKind>,
    /// For data aborts: the access was a write (WnR).
    pub write: bool,
    /// For aborts: FAR is not valid (FnV).
    pub far_not_valid: bool,
    /// For SVC: the immediate.
    pub svc_imm: Option<u16>,
}

/// Decodes an ESR_ELx value.
pub const fn decode(esr: u64) -> Syndrome {
    let ec = ((esr >> 26) & 0x3f) as u8;
    let class = ExceptionClass::from_bits(ec);
    let iss = esr & 0x1ff_ffff;
    let is_abort = class.is_abort();
    let is_data = matches!(class, ExceptionClass::DataAbortLower | ExceptionClass::DataAbortSame);
    Syndrome {
        esr,
        class,
        il: esr & (1 << 25) != 0,
        fault: if is_abort { Some(FaultKind::from_fsc((iss & 0x3f) as u8)) } else { None },
        write: is_data && iss & (1 << 6) != 0,
        far_not_valid: is_abort && iss & (1 << 10) != 0,
        svc_imm: if matches!(class, ExceptionClass::Svc64) {
            Some((iss & 0xffff) as u16)
        } else {
            None
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_abort_permission_write() {
        // EC=0x25, IL, WnR, DFSC=0b001111 (permission fault, level 3).
        let s = decode((0x25 << 26) | (1 << 25) | (1 << 6) | 0b00_1111);
        assert_eq!(s.class, ExceptionClass::DataAbortSame);
        assert_eq!(s.fault, Some(FaultKind::Permission(3)));
        assert!(s.write && s.il && !s.far_not_valid);
    }

    #[test]
    fn instruction_abort_translation_and_svc() {
        let s = decode((0x20 << 26) | (1 << 25) | 0b00_0101);
        assert_eq!(s.class, ExceptionClass::InstrAbortLower);
        assert_eq!(s.fault, Some(FaultKind::Translation(1)));
        assert!(!s.write, "WnR means nothing for instruction aborts");
        let s = decode((0x15 << 26) | (1 << 25) | 0x42);
        assert_eq!(s.class, ExceptionClass::Svc64);
        assert_eq!(s.svc_imm, Some(0x42));
        assert_eq!(s.fault, None);
    }

    #[test]
    fn unknown_and_other_codes() {
        assert_eq!(decode(1 << 25).class, ExceptionClass::Unknown);
        assert_eq!(ExceptionClass::from_bits(0x3f), ExceptionClass::Other(0x3f));
        assert_eq!(FaultKind::from_fsc(0b11_0000), FaultKind::TlbConflict);
        assert_eq!(FaultKind::from_fsc(0b10_0001), FaultKind::Alignment);
        assert_eq!(FaultKind::from_fsc(0b01_0000), FaultKind::ExternalAbort);
        assert_eq!(FaultKind::from_fsc(0b11_1111), FaultKind::Other(0x3f));
        assert_eq!(FaultKind::Permission(2).level(), Some(2));
    }
}
