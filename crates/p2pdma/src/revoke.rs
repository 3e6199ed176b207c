//! Turning SIGBUS on a revoked p2pmem mapping into an error instead of a dead process.
//!
//! When a p2pmem provider is unbound or hot-removed, the kernel removes its `allocate`
//! file and zaps every user mapping of it (`unmap_mapping_range`). The virtual range
//! stays reserved in the process, but the next CPU load or store to it faults and the
//! kernel delivers SIGBUS (kernfs refuses to fault pages back in for a removed file).
//! A process that merely held a buffer would die.
//!
//! This module keeps that from happening:
//! - [`register`] records a mapping's address range in a fixed-size, lock-free table
//!   ([`CAPACITY`] slots) and installs, once per process, a SIGBUS handler.
//! - On SIGBUS the handler looks the faulting address up in the table. If it lies in a
//!   registered range, the handler maps anonymous memory over the *whole* range with
//!   `mmap(MAP_FIXED | MAP_ANONYMOUS | MAP_PRIVATE)`, sets the range's revoked flag and
//!   returns. The faulting instruction is re-executed against ordinary zero-filled memory
//!   and completes harmlessly; the copy helper that made the access checks the flag
//!   afterwards ([`Registration::is_revoked`]) and reports `Revoked`.
//! - A fault outside every registered range is passed to the handler that was installed
//!   before (Rust's runtime installs one to report stack overflows), or, if that was the
//!   default action, the default action is restored and the fault re-raised, so the
//!   process dies with SIGBUS exactly as it would have without this module.
//!
//! # Async-signal safety
//! The handler may interrupt any code on the faulting thread, including a `malloc` or a
//! lock holder, so it only does things that are safe there:
//! - it reads the table through atomics only (no locks, no allocation). Each slot is a
//!   seqlock: a writer makes the sequence number odd, updates the range, and makes it even
//!   again; the handler skips a slot whose number is odd or changed while it read it.
//!   Skipping is always correct, because the slot of the *faulting* range cannot be
//!   changing: the range belongs to a buffer that the faulting thread is using, and a
//!   buffer is only unregistered when it is dropped, which needs exclusive ownership.
//! - it makes `mmap` / `sigaction` system calls (both on the POSIX list of
//!   async-signal-safe functions), and saves and restores `errno` around its work;
//! - it calls the previous handler, which the previous owner of SIGBUS promised to be
//!   callable from a signal handler;
//! - the saved previous action lives in a `OnceLock` that is filled *before* the handler
//!   is installed, so the handler only ever observes it initialised (an atomic load).
//!
//! Only a fault the kernel raised for an access (`si_code` `BUS_ADRALN`, `BUS_ADRERR`,
//! `BUS_OBJERR`, `BUS_MCEERR_AR`) carries a fault address. A SIGBUS sent by a process
//! (`kill`, `tgkill`, `sigqueue`: `si_code` <= 0) holds the sender's pid and uid where
//! the address would be, so it is never matched against the table: it goes to the
//! previous handler, is ignored if SIGBUS was ignored, and otherwise kills the process as
//! the default action would.
//!
//! The replacement memory is readable and writable so that the interrupted access can
//! finish; the owner of the buffer must make it inaccessible again (`mprotect(PROT_NONE)`)
//! once it notices the revocation, so that no later I/O silently moves host RAM instead of
//! device memory. The p2pmem buffer type does so.
//!
//! `O_DIRECT` I/O into a zapped mapping does not fault in user mode: the kernel fails the
//! page pinning with EFAULT. Only CPU access goes through this handler.
//!
//! # References
//! - sigaction(2), signal-safety(7), mmap(2)
//! - Linux `drivers/pci/p2pdma.c` (`p2pmem_alloc_mmap`), `fs/kernfs/file.c` (`kernfs_vma_fault`)
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

use rustix::mm::{MapFlags, ProtFlags};

/// How many mappings can be registered at the same time.
pub const CAPACITY: usize = 1024;

/// Why a range could not be protected.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// Every slot of the table is in use.
    #[error(
        "too many p2pmem buffers mapped at once (at most {capacity}): drop some buffers first"
    )]
    TableFull {
        /// The table's size.
        capacity: usize,
    },
    /// `sigaction` refused to install the SIGBUS handler.
    #[error("cannot install the SIGBUS handler that protects p2pmem mappings")]
    InstallHandler {
        /// The error `sigaction` returned.
        #[source]
        source: std::io::Error,
    },
    /// The range to register is empty or wraps around the address space.
    #[error("cannot register an empty or wrapping range at {start:#x} (+{len})")]
    BadRange {
        /// Start address.
        start: usize,
        /// Length in bytes.
        len: usize,
    },
}

/// One registered range. `seq` is odd while a writer changes the slot.
struct Slot {
    claimed: AtomicBool,
    seq: AtomicUsize,
    live: AtomicBool,
    start: AtomicUsize,
    len: AtomicUsize,
    revoked: AtomicBool,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            claimed: AtomicBool::new(false),
            seq: AtomicUsize::new(0),
            live: AtomicBool::new(false),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            revoked: AtomicBool::new(false),
        }
    }

    /// Changes the slot under its seqlock. Only the slot's owner calls this.
    fn write(&self, live: bool, start: usize, len: usize) {
        self.seq.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.live.store(live, Ordering::Relaxed);
        self.start.store(start, Ordering::Relaxed);
        self.len.store(len, Ordering::Relaxed);
        self.revoked.store(false, Ordering::Relaxed);
        self.seq.fetch_add(1, Ordering::Release);
    }

    /// The live range held by the slot, if it is stable and live. Async-signal-safe.
    fn read(&self) -> Option<(usize, usize)> {
        let before = self.seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            return None;
        }
        let live = self.live.load(Ordering::Relaxed);
        let start = self.start.load(Ordering::Relaxed);
        let len = self.len.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let after = self.seq.load(Ordering::Relaxed);
        (before == after && live).then_some((start, len))
    }
}

static SLOTS: [Slot; CAPACITY] = [const { Slot::new() }; CAPACITY];

/// The SIGBUS action that was in place before ours, restored or called for foreign faults.
static PREVIOUS_ACTION: OnceLock<libc::sigaction> = OnceLock::new();

/// Whether our handler is installed (or why it could not be).
static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();

/// Counts ranges revoked since the process started (diagnostics and tests).
static REVOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// A registered range. While it exists, a SIGBUS inside the range revokes it instead of
/// killing the process. Dropping it unregisters the range; do so *before* unmapping the
/// range, so that a later, unrelated mapping at the same address is never touched.
#[derive(Debug)]
pub struct Registration {
    slot: Option<usize>,
}

impl Registration {
    /// Whether a fault inside the range has revoked it (one atomic load).
    pub fn is_revoked(&self) -> bool {
        self.slot
            .is_some_and(|i| SLOTS[i].revoked.load(Ordering::Acquire))
    }

    /// Removes the range from the table (idempotent).
    pub fn unregister(&mut self) {
        if let Some(i) = self.slot.take() {
            SLOTS[i].write(false, 0, 0);
            SLOTS[i].claimed.store(false, Ordering::Release);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// Registers `[start, start + len)` as a p2pmem mapping to protect, installing the SIGBUS
/// handler on first use.
///
/// # Safety
/// `[start, start + len)` must be a whole shared mapping that the caller owns and that no
/// Rust reference covers, and the caller must drop the [`Registration`] before unmapping
/// it: on a SIGBUS anywhere in the range the handler maps fresh anonymous memory over all
/// of it, which would corrupt anything else living there.
pub unsafe fn register(start: *mut u8, len: usize) -> Result<Registration, RevokeError> {
    let start = start as usize;
    if len == 0 || start.checked_add(len).is_none() {
        return Err(RevokeError::BadRange { start, len });
    }
    install()?;
    for (i, slot) in SLOTS.iter().enumerate() {
        if slot
            .claimed
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            slot.write(true, start, len);
            return Ok(Registration { slot: Some(i) });
        }
    }
    Err(RevokeError::TableFull { capacity: CAPACITY })
}

/// How many registered ranges have been revoked in this process so far.
pub fn revocation_count() -> usize {
    REVOCATIONS.load(Ordering::Relaxed)
}

/// Installs the SIGBUS handler once per process. [`register`] calls it; calling it
/// earlier (before spawning threads) is harmless.
pub fn install() -> Result<(), RevokeError> {
    let outcome = INSTALLED.get_or_init(|| {
        // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask, no flags);
        // the kernel overwrites it.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only queries; `previous` is a valid out pointer.
        if unsafe { libc::sigaction(libc::SIGBUS, ptr::null(), &mut previous) } != 0 {
            return Err(last_errno());
        }
        // Filled before our handler can run, so the handler never sees it empty.
        let _ = PREVIOUS_ACTION.set(previous);

        // SAFETY: as above, all-zero is a valid sigaction to fill in.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
        // SA_ONSTACK: a chained stack-overflow report must run on the alternate stack.
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: `action.sa_mask` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: `action` is fully initialised and `on_sigbus` has the SA_SIGINFO
        // signature; the old-action pointer may be null.
        if unsafe { libc::sigaction(libc::SIGBUS, &action, ptr::null_mut()) } != 0 {
            return Err(last_errno());
        }
        Ok(())
    });
    outcome.map_err(|errno| RevokeError::InstallHandler {
        source: std::io::Error::from_raw_os_error(errno),
    })
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL)
}

/// The SIGBUS handler. Async-signal-safe: see the module documentation.
extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // The interrupted code may be between a failing call and its errno check.
    // SAFETY: `__errno_location` returns this thread's errno slot, valid for its lifetime.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved_errno = unsafe { *errno };
    handle_sigbus(signal, info, context);
    // SAFETY: as above.
    unsafe { *errno = saved_errno };
}

/// `si_code` values of a SIGBUS the kernel raises for a faulting access (Linux
/// `include/uapi/asm-generic/siginfo.h`); their `si_addr` is the faulting address.
const BUS_ADRALN: libc::c_int = 1;
const BUS_ADRERR: libc::c_int = 2;
const BUS_OBJERR: libc::c_int = 3;
const BUS_MCEERR_AR: libc::c_int = 4;

/// Whether a SIGBUS with this `si_code` is a fault with an address (not one sent by a
/// process, `si_code` <= 0, nor `SI_KERNEL`).
fn is_access_fault(si_code: libc::c_int) -> bool {
    matches!(
        si_code,
        BUS_ADRALN | BUS_ADRERR | BUS_OBJERR | BUS_MCEERR_AR
    )
}

fn handle_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t.
    let code = unsafe { (*info).si_code };
    if !is_access_fault(code) {
        chain_sent(signal, info, context);
        return;
    }
    // SAFETY: as above; for an access fault `si_addr` is the faulting address.
    let fault = unsafe { (*info).si_addr() } as usize;
    for slot in &SLOTS {
        let Some((start, len)) = slot.read() else {
            continue;
        };
        if fault < start || fault - start >= len {
            continue;
        }
        // SAFETY: `[start, start + len)` is a registered mapping owned by a live buffer
        // that no one else uses while it is registered; replacing its pages with fresh
        // anonymous memory only changes what that buffer's accesses see. MAP_FIXED keeps
        // the address, so the interrupted access completes. A raw syscall, signal-safe.
        let replaced = unsafe {
            rustix::mm::mmap_anonymous(
                start as *mut c_void,
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::FIXED,
            )
        };
        if replaced.is_ok() {
            slot.revoked.store(true, Ordering::Release);
            REVOCATIONS.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Could not replace the pages: returning would fault forever. Die as SIGBUS would.
        break;
    }
    chain(signal, info, context);
}

/// Hands a fault we do not own to whoever had SIGBUS before us.
fn chain(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    let handler = PREVIOUS_ACTION.get().map(|a| (a.sa_sigaction, a.sa_flags));
    match handler {
        Some((handler, flags)) if handler != libc::SIG_DFL && handler != libc::SIG_IGN => {
            if flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous owner installed this address as an SA_SIGINFO
                // handler, so it has this signature and expects to run in signal context.
                let previous: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void) =
                    unsafe { std::mem::transmute(handler) };
                previous(signal, info, context);
            } else {
                // SAFETY: without SA_SIGINFO the previous handler takes only the signal.
                let previous: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
                previous(signal);
            }
        }
        _ => {
            // Default (or ignored, which the kernel overrides for faults): restore the
            // default and return; the access faults again and the process dies of SIGBUS.
            // SAFETY: all-zero is SIG_DFL with an empty mask; sigaction is signal-safe.
            let default: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: `default` is a valid action; the old-action pointer may be null.
            unsafe { libc::sigaction(libc::SIGBUS, &default, ptr::null_mut()) };
        }
    }
}

/// Hands a SIGBUS that is not an access fault (sent with kill, tgkill, sigqueue) to
/// whoever had SIGBUS before us, or does what its disposition says: ignore it, or die of
/// it (nothing would re-raise it, unlike a fault, so it is raised again here; it is
/// blocked while the handler runs and delivered with the default action on return).
fn chain_sent(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    let handler = PREVIOUS_ACTION.get().map(|a| a.sa_sigaction);
    match handler {
        Some(libc::SIG_IGN) => {}
        Some(h) if h != libc::SIG_DFL => chain(signal, info, context),
        _ => {
            chain(signal, info, context);
            // SAFETY: raise is async-signal-safe; SIGBUS now has its default action.
            unsafe { libc::raise(libc::SIGBUS) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_rejects_empty_ranges_and_frees_its_slot() {
        // SAFETY: an empty range is refused before anything is registered.
        let empty = unsafe { register(0x1000 as *mut u8, 0) };
        assert!(matches!(empty, Err(RevokeError::BadRange { .. })));
        // SAFETY: nothing is mapped at this address in the test process, so no SIGBUS can
        // arise in it while it is registered.
        let mut reg = unsafe { register(0x7000_0000 as *mut u8, 4096) }.unwrap();
        let slot = reg.slot.unwrap();
        assert_eq!(SLOTS[slot].read(), Some((0x7000_0000, 4096)));
        assert!(!reg.is_revoked());
        reg.unregister();
        assert_eq!(SLOTS[slot].read(), None);
        assert!(!SLOTS[slot].claimed.load(Ordering::Relaxed));
    }

    const CHILD_ENV: &str = "P2PDMA_REVOKE_TEST_CHILD";

    /// A SIGBUS outside every registered range, with our handler installed, must still
    /// kill the process with SIGBUS. The test runs itself again as a child process that
    /// faults (told apart by an environment variable) and checks how the child died.
    #[test]
    fn foreign_sigbus_still_kills_the_process() {
        if std::env::var_os(CHILD_ENV).is_some() {
            fault_outside_registered_ranges();
        }
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "revoke::tests::foreign_sigbus_still_kills_the_process",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}");
    }

    fn fault_outside_registered_ranges() -> ! {
        use std::io::Write;
        install().unwrap();
        let page = rustix::param::page_size();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![1u8; page]).unwrap();
        // SAFETY: a fresh kernel-chosen mapping of our own file; nothing aliases it.
        let raw = unsafe {
            rustix::mm::mmap(
                ptr::null_mut(),
                page,
                ProtFlags::READ,
                MapFlags::SHARED,
                &file,
                0,
            )
        }
        .unwrap();
        file.set_len(0).unwrap();
        // SAFETY: the address is mapped (the read faults, which is the point).
        let value = unsafe { raw.cast::<u8>().read_volatile() };
        panic!("survived a SIGBUS outside registered ranges (read {value})");
    }

    #[test]
    fn only_kernel_fault_codes_carry_an_address() {
        assert!(is_access_fault(BUS_ADRERR));
        assert!(is_access_fault(BUS_OBJERR));
        for sent in [
            libc::SI_USER,
            libc::SI_QUEUE,
            libc::SI_TKILL,
            libc::SI_KERNEL,
        ] {
            assert!(!is_access_fault(sent), "{sent}");
        }
    }

    const SENT_CHILD_ENV: &str = "P2PDMA_REVOKE_SENT_SIGBUS_CHILD";

    /// Regression: a SIGBUS sent by a process, whose siginfo claims an address inside a
    /// registered range, must not revoke the buffer; it goes to the previous handler. The
    /// same siginfo with the kernel's BUS_ADRERR does revoke (the test can tell). Runs in
    /// a child process, which owns its signal dispositions.
    #[test]
    fn a_user_sent_sigbus_is_not_read_as_a_fault_address() {
        if std::env::var_os(SENT_CHILD_ENV).is_some() {
            std::process::exit(sent_sigbus_child());
        }
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "revoke::tests::a_user_sent_sigbus_is_not_read_as_a_fault_address",
                "--include-ignored",
                "--test-threads=1",
            ])
            .env(SENT_CHILD_ENV, "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(
            status.code(),
            Some(0),
            "1: the sent SIGBUS revoked the buffer; 2: it did not reach the previous handler; 3: a real fault code did not revoke; {status:?}"
        );
    }

    static PREVIOUS_HANDLER_RAN: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn previous_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut c_void) {
        PREVIOUS_HANDLER_RAN.fetch_add(1, Ordering::Relaxed);
    }

    /// A siginfo as `rt_tgsigqueueinfo` takes it (x86_64/aarch64 layout: the union
    /// starts at offset 16, `si_addr` first in it).
    #[repr(C)]
    struct SentInfo {
        signo: libc::c_int,
        errno: libc::c_int,
        code: libc::c_int,
        _pad: libc::c_int,
        addr: usize,
        _rest: [u8; 128 - 24],
    }

    /// Sends SIGBUS to this thread with the given si_code and si_addr (a process may
    /// send itself any si_code).
    fn send_sigbus(code: libc::c_int, addr: usize) {
        let info = SentInfo {
            signo: libc::SIGBUS,
            errno: 0,
            code,
            _pad: 0,
            addr,
            _rest: [0; 128 - 24],
        };
        // SAFETY: `info` is a 128-byte siginfo the kernel copies in; the target is this
        // very thread, which has a SIGBUS handler installed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rt_tgsigqueueinfo,
                libc::getpid(),
                libc::gettid(),
                libc::SIGBUS,
                &info as *const SentInfo,
            )
        };
        assert_eq!(
            rc,
            0,
            "rt_tgsigqueueinfo: {}",
            std::io::Error::last_os_error()
        );
    }

    fn sent_sigbus_child() -> i32 {
        // SAFETY: all-zero is a valid sigaction to fill in.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = previous_handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `action` is initialised and the handler has the SA_SIGINFO signature.
        let rc = unsafe { libc::sigaction(libc::SIGBUS, &action, ptr::null_mut()) };
        assert_eq!(rc, 0);
        install().unwrap();
        let page = rustix::param::page_size();
        // SAFETY: a fresh private anonymous mapping nothing else refers to.
        let raw = unsafe {
            rustix::mm::mmap_anonymous(
                ptr::null_mut(),
                page,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .unwrap();
        // SAFETY: the range is our own mapping; replacing its pages harms nothing.
        let reg = unsafe { register(raw.cast(), page) }.unwrap();
        send_sigbus(libc::SI_QUEUE, raw as usize + 8);
        send_sigbus(libc::SI_TKILL, raw as usize + 8);
        if reg.is_revoked() {
            return 1;
        }
        if PREVIOUS_HANDLER_RAN.load(Ordering::Relaxed) != 2 {
            return 2;
        }
        send_sigbus(BUS_ADRERR, raw as usize + 8);
        if !reg.is_revoked() {
            return 3;
        }
        0
    }

    #[test]
    fn slot_reads_as_absent_while_a_writer_holds_it() {
        let slot = Slot::new();
        slot.write(true, 0x1000, 0x2000);
        assert_eq!(slot.read(), Some((0x1000, 0x2000)));
        slot.seq.fetch_add(1, Ordering::Relaxed);
        assert_eq!(slot.read(), None);
    }
}
