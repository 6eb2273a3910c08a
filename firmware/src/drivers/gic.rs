//! ARM Generic Interrupt Controller GIC-400 (GICv2), as on the BCM2711: the distributor (shared)
//! and the CPU interface (banked per core).
//!
//! Used for the firmware's own interrupts only: SGIs 0-15 (inter-processor interrupts) and the
//! per-core EL1 physical timer PPI. Interrupts stay in the group the previous boot stage put them
//! in (QEMU and the Pi 4 armstub make them all Non-secure group 1); the firmware runs Non-secure
//! at EL1 and enables, through the Non-secure view of the control registers, what it can see.
//! Registers through tock-registers (GICv2 architecture specification, IHI 0048B, chapter 4).

use core::sync::atomic::{AtomicUsize, Ordering};
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};

register_structs! {
    #[allow(non_snake_case)]
    DistRegs {
        (0x000 => CTLR: ReadWrite<u32>),
        (0x004 => TYPER: ReadOnly<u32>),
        (0x008 => IIDR: ReadOnly<u32>),
        (0x00c => _reserved0),
        (0x080 => IGROUPR: [ReadWrite<u32>; 32]),
        (0x100 => ISENABLER: [ReadWrite<u32>; 32]),
        (0x180 => ICENABLER: [ReadWrite<u32>; 32]),
        (0x200 => ISPENDR: [ReadWrite<u32>; 32]),
        (0x280 => ICPENDR: [ReadWrite<u32>; 32]),
        (0x300 => ISACTIVER: [ReadWrite<u32>; 32]),
        (0x380 => ICACTIVER: [ReadWrite<u32>; 32]),
        (0x400 => IPRIORITYR: [ReadWrite<u32>; 255]),
        (0x7fc => _reserved1),
        (0x800 => ITARGETSR: [ReadWrite<u32>; 255]),
        (0xbfc => _reserved2),
        (0xc00 => ICFGR: [ReadWrite<u32>; 64]),
        (0xd00 => _reserved3),
        (0xf00 => SGIR: WriteOnly<u32>),
        (0xf04 => _reserved4),
        (0x1000 => @END),
    }
}

register_structs! {
    #[allow(non_snake_case)]
    CpuRegs {
        (0x00 => CTLR: ReadWrite<u32>),
        (0x04 => PMR: ReadWrite<u32>),
        (0x08 => BPR: ReadWrite<u32>),
        (0x0c => IAR: ReadOnly<u32>),
        (0x10 => EOIR: WriteOnly<u32>),
        (0x14 => RPR: ReadOnly<u32>),
        (0x18 => HPPIR: ReadOnly<u32>),
        (0x1c => @END),
    }
}

/// INTIDs 1020-1023 are special: nothing to acknowledge (1023: spurious).
pub const SPURIOUS_MIN: u32 = 1020;
/// Number of SGIs.
pub const NR_SGIS: u32 = 16;
/// The EL1 Non-secure physical timer's PPI (PPI 14: INTID 30), as in the BCM2711 device tree.
pub const TIMER_EL1_PHYS_INTID: u32 = 30;
/// Priority given to the interrupts the firmware enables (Non-secure view; lower is higher).
const PRIORITY: u8 = 0xa0;
/// Priority mask: every priority above the lowest passes.
const PRIORITY_MASK: u32 = 0xf0;

/// The GIC's two register blocks, reached through addresses set once at boot (the MMIO window of
/// the kernel map).
pub struct Gic {
    dist: AtomicUsize,
    cpu: AtomicUsize,
}

/// The interrupt controller.
pub static GIC: Gic = Gic::new();

/// An acknowledged interrupt: give it back to [`Gic::end`] unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack(u32);

impl Ack {
    /// The interrupt ID.
    pub fn intid(self) -> u32 {
        self.0 & 0x3ff
    }
    /// For an SGI, the core that sent it.
    pub fn source_cpu(self) -> usize {
        ((self.0 >> 10) & 0x7) as usize
    }
    /// Is this the "no interrupt pending" answer?
    pub fn is_spurious(self) -> bool {
        self.intid() >= SPURIOUS_MIN
    }
}

impl Gic {
    const fn new() -> Self {
        Gic { dist: AtomicUsize::new(0), cpu: AtomicUsize::new(0) }
    }

    fn dist(&self) -> Option<&DistRegs> {
        let b = self.dist.load(Ordering::Acquire);
        // SAFETY: a non-zero base was given to `init_distributor`, whose caller guarantees a
        // device mapping of the distributor that stays for the rest of the run.
        (b != 0).then(|| unsafe { &*(b as *const DistRegs) })
    }

    fn cpu(&self) -> Option<&CpuRegs> {
        let b = self.cpu.load(Ordering::Acquire);
        // SAFETY: as for `dist`, set by `init_distributor`.
        (b != 0).then(|| unsafe { &*(b as *const CpuRegs) })
    }

    /// Is the driver set up (distributor initialised)?
    pub fn is_ready(&self) -> bool {
        self.dist.load(Ordering::Acquire) != 0
    }

    /// Sets up the distributor once, on the boot core: disables every shared interrupt (the
    /// firmware uses none), then enables forwarding. Returns the number of interrupt lines.
    ///
    /// # Safety
    /// `dist` and `cpu` must be the virtual addresses of the GIC-400 distributor and CPU
    /// interface, mapped as device memory for the rest of the run.
    pub unsafe fn init_distributor(&self, dist: usize, cpu: usize) -> u32 {
        self.dist.store(dist, Ordering::Release);
        self.cpu.store(cpu, Ordering::Release);
        let d = self.dist().expect("just set");
        d.CTLR.set(0);
        let lines = ((d.TYPER.get() & 0x1f) + 1) * 32;
        // Shared peripheral interrupts (32 and up): disabled, not pending.
        for i in 1..(lines / 32) as usize {
            d.ICENABLER[i].set(u32::MAX);
            d.ICPENDR[i].set(u32::MAX);
        }
        // Enable group 0 and group 1 forwarding (the Non-secure view sees bit 0 as group 1).
        d.CTLR.set(0b11);
        lines
    }

    /// Sets up this core's banked state: SGIs and the timer PPI enabled at [`PRIORITY`], every
    /// other private interrupt disabled, the CPU interface on. Run on each core.
    pub fn init_this_cpu(&self) {
        let (Some(d), Some(c)) = (self.dist(), self.cpu()) else { return };
        d.ICENABLER[0].set(u32::MAX);
        d.ICPENDR[0].set(u32::MAX);
        let prio = u32::from(PRIORITY);
        for i in 0..8 {
            d.IPRIORITYR[i].set(prio | prio << 8 | prio << 16 | prio << 24);
        }
        d.ISENABLER[0].set(((1 << NR_SGIS) - 1) | (1 << TIMER_EL1_PHYS_INTID));
        c.PMR.set(PRIORITY_MASK);
        c.BPR.set(0);
        // EnableGrp0 | EnableGrp1 (the Non-secure view: bit 0 enables group 1).
        c.CTLR.set(0b11);
    }

    /// Enables or disables a private interrupt (SGI/PPI, INTID < 32) on this core.
    pub fn set_private_enabled(&self, intid: u32, on: bool) {
        let Some(d) = self.dist() else { return };
        if intid >= 32 {
            return;
        }
        if on {
            d.ISENABLER[0].set(1 << intid);
        } else {
            d.ICENABLER[0].set(1 << intid);
        }
    }

    /// Is a private interrupt (INTID < 32) enabled on this core?
    pub fn private_enabled(&self, intid: u32) -> bool {
        self.dist().is_some_and(|d| intid < 32 && d.ISENABLER[0].get() & (1 << intid) != 0)
    }

    /// Sends SGI `sgi` (0-15) to the cores in `target_mask` (bit n = core n).
    pub fn send_sgi(&self, target_mask: u8, sgi: u8) {
        let Some(d) = self.dist() else { return };
        // The interrupt's setup and any data the target reads must be visible before the SGI
        // can be taken: DSB ISHST orders the earlier stores before the device write (ARM ARM
        // B2.3: a DSB is needed to order Normal memory accesses before a Device access that
        // another observer reacts to, as Linux's gic_ipi_send_mask does with dmb ishst + the
        // device write ordering).
        aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::ISHST);
        // TargetListFilter = 0 (the list), CPUTargetList, SGIINTID; NSATT = 0.
        d.SGIR.set(u32::from(target_mask) << 16 | u32::from(sgi & 0xf));
    }

    /// Acknowledges the highest-priority pending interrupt on this core.
    pub fn acknowledge(&self) -> Ack {
        match self.cpu() {
            Some(c) => Ack(c.IAR.get()),
            None => Ack(1023),
        }
    }

    /// Ends an acknowledged interrupt (priority drop and deactivation: EOImodeNS = 0).
    pub fn end(&self, ack: Ack) {
        if let Some(c) = self.cpu() {
            c.EOIR.set(ack.0);
        }
    }
}
