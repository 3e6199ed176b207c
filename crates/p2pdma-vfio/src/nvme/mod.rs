//! NVMe from userspace: registers, queue entries, rings and PRPs (pure), used by the
//! driver in [`crate::driver`].

pub mod cmd;
pub mod prp;
pub mod queue;
pub mod regs;
