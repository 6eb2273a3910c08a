//! Exceptions from EL0. (User tasks arrive with the user address-space work.)

use crate::arch::exception::{report, TrapFrame, VectorKind};

/// Called by the exception handler for anything taken from EL0.
pub fn handle_lower_el(kind: VectorKind, frame: &mut TrapFrame) {
    report(kind, frame);
    panic!("exception from EL0 with no user task running");
}
