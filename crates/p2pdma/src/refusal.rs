//! What an errno from an I/O on device memory means: a P2P refusal or an I/O error.
//!
//! The kernel reports a P2P mapping it refuses differently by release:
//! - up to Linux 6.16 the block layer's `pci_p2pdma_map_sg()` path fails the request with
//!   `EREMOTEIO`, and `EINVAL` means what it always means (a malformed request);
//! - from Linux 6.17 the `blk_rq_dma_map` path returns `EINVAL` for a refused P2P
//!   mapping too.
//!
//! So `EINVAL` is a refusal only when the kernel is new enough to spell it that way *and*
//! the topology verdict says the pair cannot do P2P; anything else is reported as an I/O
//! error that names `EINVAL`, never guessed to be a refusal.
//!
//! # References
//! - drivers/pci/p2pdma.c (`pci_p2pdma_map_type`), block/blk-mq-dma.c (Linux 6.17)

use crate::kernel_rules::{KernelVersion, EINVAL_REFUSAL_SINCE};

/// What an errno from an I/O that used device memory means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meaning {
    /// The kernel refused P2P DMA between the buffer's provider and the device.
    P2pRefused,
    /// Not a refusal: an I/O error (the text says why EINVAL was not read as one).
    IoError {
        /// Why, for the error message (empty for errnos that never mean a refusal).
        why: String,
    },
}

/// Interprets `errno` from an O_DIRECT request whose buffer was device memory.
///
/// `verdict_p2p` is the topology's prediction for the pair (`None`: unknown);
/// `kernel_release` the running kernel's release string (`None`: unknown).
pub fn interpret(errno: i32, verdict_p2p: Option<bool>, kernel_release: Option<&str>) -> Meaning {
    if errno == libc::EREMOTEIO {
        return Meaning::P2pRefused;
    }
    if errno != libc::EINVAL {
        return Meaning::IoError { why: String::new() };
    }
    let version = kernel_release.and_then(KernelVersion::parse);
    let new_kernel = version.is_some_and(|v| v >= EINVAL_REFUSAL_SINCE);
    if new_kernel && verdict_p2p == Some(false) {
        return Meaning::P2pRefused;
    }
    let kernel = match (version, kernel_release) {
        (Some(v), _) => format!("Linux {v}"),
        (None, Some(r)) => format!("kernel release {r:?} (not understood)"),
        (None, None) => "an unknown kernel release".to_owned(),
    };
    let why = if !new_kernel {
        format!(
            "EINVAL is not a P2P refusal on {kernel} (before {}.{} a refusal is EREMOTEIO)",
            EINVAL_REFUSAL_SINCE.major, EINVAL_REFUSAL_SINCE.minor
        )
    } else if verdict_p2p == Some(true) {
        format!("EINVAL on {kernel}, but the topology verdict says P2P works for this pair")
    } else {
        format!("EINVAL on {kernel}, and the topology verdict for this pair is unknown")
    };
    Meaning::IoError { why }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_as_the_kernel_writes_them() {
        let v = |s| KernelVersion::parse(s).map(|v| (v.major, v.minor));
        assert_eq!(v("6.12.117"), Some((6, 12)));
        assert_eq!(v("6.17.0-rc3+"), Some((6, 17)));
        assert_eq!(v("6.18-amd64\n"), Some((6, 18)));
        assert_eq!(v("7.0rc1"), Some((7, 0)));
        assert_eq!(v("garbage"), None);
        assert_eq!(v("6"), None);
    }

    #[test]
    fn eremoteio_is_always_a_refusal() {
        for release in [Some("6.2.0"), Some("6.12.117"), Some("6.18.1"), None] {
            for verdict in [Some(true), Some(false), None] {
                assert_eq!(
                    interpret(libc::EREMOTEIO, verdict, release),
                    Meaning::P2pRefused
                );
            }
        }
    }

    #[test]
    fn einval_is_a_refusal_only_on_6_17_and_later_with_a_refusing_verdict() {
        assert_eq!(
            interpret(libc::EINVAL, Some(false), Some("6.17.0")),
            Meaning::P2pRefused
        );
        assert_eq!(
            interpret(libc::EINVAL, Some(false), Some("6.18.2")),
            Meaning::P2pRefused
        );
        let io = |verdict, release| match interpret(libc::EINVAL, verdict, release) {
            Meaning::IoError { why } => why,
            Meaning::P2pRefused => panic!("{verdict:?} {release:?} read as a refusal"),
        };
        assert!(io(Some(false), Some("6.12.117")).contains("before 6.17 a refusal is EREMOTEIO"));
        assert!(io(Some(true), Some("6.17.0")).contains("verdict says P2P works"));
        assert!(io(None, Some("6.18.0")).contains("unknown"));
        assert!(io(Some(false), None).contains("unknown kernel release"));
        assert!(io(Some(false), Some("weird")).contains("not understood"));
    }

    #[test]
    fn other_errnos_are_never_refusals() {
        assert_eq!(
            interpret(libc::EIO, Some(false), Some("6.18.0")),
            Meaning::IoError { why: String::new() }
        );
    }
}
