//! CPU time of this process (every thread, io_uring workers included): `getrusage(2)`.
#![allow(unsafe_code)]

use std::io;
use std::time::Duration;

/// User and system CPU time consumed so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    /// Time in user mode.
    pub user: Duration,
    /// Time in the kernel.
    pub system: Duration,
}

impl CpuTimes {
    /// The times of the whole process (`RUSAGE_SELF`: all threads, including the io_uring
    /// io-wq workers, which are threads of this process).
    pub fn now() -> io::Result<CpuTimes> {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes one `struct rusage` to the pointer, which points to
        // writable memory of exactly that type; RUSAGE_SELF is a valid `who`.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: getrusage returned 0, so it filled the struct (and it was zeroed anyway).
        let usage = unsafe { usage.assume_init() };
        let time = |tv: libc::timeval| {
            Duration::from_secs(tv.tv_sec.max(0) as u64)
                + Duration::from_micros(tv.tv_usec.max(0) as u64)
        };
        Ok(CpuTimes {
            user: time(usage.ru_utime),
            system: time(usage.ru_stime),
        })
    }

    /// The time spent since `earlier`.
    pub fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spinning_costs_user_time() {
        let before = CpuTimes::now().unwrap();
        let start = std::time::Instant::now();
        let mut x = 1u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let spent = CpuTimes::now().unwrap().since(before);
        assert!(spent.user + spent.system > Duration::ZERO, "{spent:?}");
    }
}
