//! Interrupt handling at EL1: the IRQ vector's dispatch through the GIC, handlers for the
//! private interrupts (SGIs used as inter-processor interrupts, the timer PPI), and sending IPIs.
//!
//! Like Linux's `gic_handle_irq`, the handler acknowledges (GICC_IAR) until the GIC answers
//! "spurious", calls the INTID's handler with IRQs still masked, then ends it (GICC_EOIR). While
//! a handler runs, `percpu::PerCpu::in_irq` is set: plain spin locks refuse to be taken there
//! (`sync`). Handlers are plain `fn()`s, registered once and called on whichever core took the
//! interrupt (per-core state goes through `percpu::this_cpu`).

use crate::drivers::gic::{self, GIC};
use crate::percpu::this_cpu;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Private interrupts (SGIs and PPIs) the firmware can route to a handler.
const NR_PRIVATE: usize = 32;

static HANDLERS: [AtomicUsize; NR_PRIVATE] = [const { AtomicUsize::new(0) }; NR_PRIVATE];

/// Why a handler could not be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt-log", derive(defmt::Format))]
pub enum IrqError {
    /// Not an SGI (0-15).
    NotAnSgi(u8),
    /// Not a private interrupt (0-31).
    NotPrivate(u32),
}

/// Routes SGI `sgi` (0-15) to `handler` on every core (replacing any earlier one).
pub fn set_sgi_handler(sgi: u8, handler: fn()) -> Result<(), IrqError> {
    if u32::from(sgi) >= gic::NR_SGIS {
        return Err(IrqError::NotAnSgi(sgi));
    }
    set_handler(u32::from(sgi), Some(handler))
}

/// Routes private interrupt `intid` (SGI or PPI, 0-31) to `handler`, or removes its handler.
pub fn set_handler(intid: u32, handler: Option<fn()>) -> Result<(), IrqError> {
    let slot = HANDLERS.get(intid as usize).ok_or(IrqError::NotPrivate(intid))?;
    slot.store(handler.map_or(0, |h| h as usize), Ordering::Release);
    Ok(())
}

/// Sends SGI `sgi` to every core in `target_mask` (bit n = core n).
pub fn send_sgi(target_mask: u8, sgi: u8) {
    GIC.send_sgi(target_mask, sgi);
}

/// Counts the interrupt on this core and calls its handler, if any.
fn dispatch(intid: u32) {
    let cpu = this_cpu();
    if intid < gic::NR_SGIS {
        cpu.sgis.fetch_add(1, Ordering::Relaxed);
    }
    if intid == gic::TIMER_EL1_PHYS_INTID {
        cpu.timer_irqs.fetch_add(1, Ordering::Relaxed);
    }
    let h = HANDLERS.get(intid as usize).map_or(0, |s| s.load(Ordering::Acquire));
    if h == 0 {
        cpu.unhandled_irqs.fetch_add(1, Ordering::Relaxed);
        if intid == gic::TIMER_EL1_PHYS_INTID {
            // A level-sensitive timer nobody handles would fire again at once: mask it.
            crate::drivers::timer::oneshot_disarm();
        }
        return;
    }
    // SAFETY: the slot only ever holds 0 or a `fn()` stored by `set_handler`.
    let f: fn() = unsafe { core::mem::transmute::<usize, fn()>(h) };
    f();
}

/// Called by the exception handler for an IRQ taken at EL1 (IRQs masked by the exception).
pub fn handle() {
    let cpu = this_cpu();
    cpu.in_irq.fetch_add(1, Ordering::Relaxed);
    loop {
        let ack = GIC.acknowledge();
        if ack.is_spurious() {
            break;
        }
        cpu.irqs.fetch_add(1, Ordering::Relaxed);
        dispatch(ack.intid());
        GIC.end(ack);
    }
    cpu.in_irq.fetch_sub(1, Ordering::Relaxed);
}

/// Runs `f` with IRQs unmasked on this core, then masks them again (restoring the previous
/// state). For code on the boot core that waits for interrupts (tests, IPI round trips).
pub fn with_irqs_enabled<R>(f: impl FnOnce() -> R) -> R {
    let old = crate::arch::cpu::mask_irqs();
    crate::arch::cpu::enable_irqs();
    let r = f();
    crate::arch::cpu::restore_irqs(old);
    r
}
