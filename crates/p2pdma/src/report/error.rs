//! The error contract every `--json` output follows, and the exit-status table.
//!
//! A failure is one JSON document, [`ErrorReport`]: `{"error": {"kind", "message",
//! "exit_code", ...details}}`; [`Kind`] is what scripts tell apart, and [`Kind::code`] the
//! process's exit status. `probe --json` and a failed `mem test --json` carry the same
//! [`ErrorObject`] inside their report. The `p2pdma` binary classifies errors into kinds
//! and prints; a library user who runs the same operations can build the same documents.

use std::process::ExitCode;

use serde::Serialize;
use serde_json::{Map, Value};

/// What went wrong, as scripts see it: the `kind` of the JSON error object and, through
/// [`Kind::code`], the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Anything not listed below (exit 1).
    Failure,
    /// A well-formed command asked for something impossible: a range past the end, a
    /// misaligned offset, a device that does not exist (exit 1).
    InvalidInput,
    /// The caller lacks a permission on a named file (exit 1).
    PermissionDenied,
    /// The command line did not parse (exit 2, clap's own status).
    Usage,
    /// The kernel's P2PDMA rules refuse (or are predicted to refuse) P2P between the
    /// devices; nothing was written (exit 3).
    P2pRefused,
    /// A copy stopped after writing some destination bytes; the error says which (exit 4).
    PartialCopy,
    /// A copy completed but the destination differs from the source (exit 5).
    VerifyMismatch,
    /// The lab itself failed: no boot, timeout, kernel panic, QEMU error (exit 125).
    Lab,
}

/// Exit status of a success.
pub const SUCCESS: u8 = 0;
/// Exit status of [`Kind::Failure`], [`Kind::InvalidInput`], [`Kind::PermissionDenied`].
pub const FAILURE: u8 = 1;
/// Exit status of a usage error (clap's).
pub const USAGE: u8 = 2;
/// Exit status of [`Kind::P2pRefused`].
pub const P2P_REFUSED: u8 = 3;
/// Exit status of [`Kind::PartialCopy`].
pub const PARTIAL_COPY: u8 = 4;
/// Exit status of [`Kind::VerifyMismatch`].
pub const VERIFY_MISMATCH: u8 = 5;
/// Exit status of [`Kind::Lab`] (`lab run` and `lab demo` pass the guest command's own
/// status through otherwise).
pub const LAB_FAILURE: u8 = 125;

impl Kind {
    /// The exit status this kind of outcome ends the process with.
    pub fn code(self) -> u8 {
        match self {
            Kind::Failure | Kind::InvalidInput | Kind::PermissionDenied => FAILURE,
            Kind::Usage => USAGE,
            Kind::P2pRefused => P2P_REFUSED,
            Kind::PartialCopy => PARTIAL_COPY,
            Kind::VerifyMismatch => VERIFY_MISMATCH,
            Kind::Lab => LAB_FAILURE,
        }
    }

    /// [`Kind::code`] as an [`ExitCode`].
    pub fn exit(self) -> ExitCode {
        ExitCode::from(self.code())
    }
}

/// The table as `--help` prints it (after the options) and README repeats it.
pub const TABLE: &str = "\
Exit status:
  0    success (a probe or --explain that found P2P working)
  1    failure: bad input, missing permission, I/O error (the error line says which)
  2    usage: the command line did not parse
  3    P2P refused by the kernel's rules (probe, topo --explain, copy, bench; nothing written)
  4    partial copy: some destination bytes were written (the error lists them)
  5    verification mismatch: the copy completed but the bytes differ
  125  lab failure: no boot, timeout, kernel panic, QEMU error
With --json, stdout holds exactly one JSON document, also on failure:
{\"error\": {\"kind\": ..., \"message\": ..., \"exit_code\": ..., ...details}}.";

/// The JSON document printed on failure.
#[derive(Debug, Serialize)]
pub struct ErrorReport {
    /// The error object.
    pub error: ErrorObject,
}

/// `{"kind", "message", "exit_code", ...details}`.
#[derive(Debug, Serialize)]
pub struct ErrorObject {
    /// The failure's kind (see the exit-code table).
    pub kind: Kind,
    /// The message `p2pdma: error:` prints on stderr, on one line.
    pub message: String,
    /// The process's exit status.
    pub exit_code: u8,
    /// Command-specific fields.
    #[serde(flatten)]
    pub details: Map<String, Value>,
}

impl ErrorObject {
    /// An error object of `kind` with its exit status and no details.
    pub fn new(kind: Kind, message: String) -> ErrorObject {
        ErrorObject {
            kind,
            message,
            exit_code: kind.code(),
            details: Map::new(),
        }
    }
}

/// A command's own report with, when it failed, the error object beside its fields:
/// `{...report, "error": {...}}` (`probe --json`, a failed `mem test --json`), so a
/// script finds `error` in every failed run's document.
#[derive(Debug, Serialize)]
pub struct WithError<T> {
    /// The report's own fields.
    #[serde(flatten)]
    pub report: T,
    /// The error object, when the command failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorObject>,
}

/// Multi-line causes (a guest's output, a kernel log excerpt) joined so the error stays
/// one line.
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_carries_the_error_object_beside_its_fields_only_on_failure() {
        #[derive(Serialize)]
        struct Found {
            bytes: u64,
        }
        let ok = WithError {
            report: Found { bytes: 4096 },
            error: None,
        };
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"bytes":4096}"#);
        let refused = WithError {
            report: Found { bytes: 0 },
            error: Some(ErrorObject::new(Kind::P2pRefused, "refused".into())),
        };
        assert_eq!(
            serde_json::to_string(&refused).unwrap(),
            r#"{"bytes":0,"error":{"kind":"p2p_refused","message":"refused","exit_code":3}}"#
        );
    }

    #[test]
    fn multi_line_messages_become_one_line() {
        assert_eq!(one_line("a\n\nb  \nc"), "a | b | c");
    }

    #[test]
    fn every_kind_has_a_distinct_documented_status_except_the_generic_failures() {
        let kinds = [
            Kind::Failure,
            Kind::InvalidInput,
            Kind::PermissionDenied,
            Kind::Usage,
            Kind::P2pRefused,
            Kind::PartialCopy,
            Kind::VerifyMismatch,
            Kind::Lab,
        ];
        for k in kinds {
            let code = k.code();
            assert!(
                TABLE
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{code} "))),
                "{k:?} exits {code}, which the table does not list"
            );
        }
        let mut distinct: Vec<u8> = kinds[3..].iter().map(|k| k.code()).collect();
        distinct.push(FAILURE);
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            6,
            "usage, refused, partial, mismatch, lab, failure"
        );
    }
}
