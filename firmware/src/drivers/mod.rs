//! Device drivers. Each driver takes its register base from the board description; none of them
//! knows which board it runs on.

pub mod gic;
pub mod gpio;
pub mod mailbox;
pub mod pl011;
pub mod timer;
