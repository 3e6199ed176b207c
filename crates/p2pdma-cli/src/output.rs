//! The output contract every subcommand follows.
//!
//! - Results go to stdout through [`stdout`] / [`print_json`] with `writeln!`, so a
//!   closed pipe (`| head -1`) is an `io::Error` that `main` turns into a quiet success
//!   instead of a `println!` panic.
//! - With `--json`, stdout holds exactly one JSON document, on success and on failure.
//!   On failure it is [`ErrorReport`]: `{"error": {"kind", "message", "exit_code",
//!   ...details}}`; `main` prints it for any error a subcommand returns, so a new
//!   subcommand only needs a `json: bool` field named `json` (see [`wants_json`]).
//! - Errors that mean more than "failure" carry a [`Failure`] with their [`Kind`] and
//!   details; the rest are classified from their causes by [`classify`].

use std::fmt;
use std::io::{self, Write};

use p2pdma::copy::endpoint::EndpointError;
use p2pdma::copy::{PlanError, RouteError};
use p2pdma::p2pmem::P2pmemError;
use serde::Serialize;
use serde_json::{Map, Value};

pub use crate::exit::Kind;
pub use p2pdma::report::error::{one_line, ErrorObject, ErrorReport};

/// An error with a kind and machine-readable details (`written` ranges, digests ...).
/// Its message is the message of the error it wraps, with that error's causes.
#[derive(Debug)]
pub struct Failure {
    /// What kind of failure, hence the exit status.
    pub kind: Kind,
    /// Extra fields of the JSON error object.
    pub details: Map<String, Value>,
    /// The error itself, with its causes.
    pub error: anyhow::Error,
}

impl Failure {
    /// A failure of `kind` without details.
    pub fn new(kind: Kind, error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            kind,
            details: Map::new(),
            error: error.into(),
        }
    }

    /// Adds the fields of `details` (a struct or map serialising to a JSON object).
    pub fn with_details(mut self, details: &impl Serialize) -> Failure {
        if let Ok(Value::Object(map)) = serde_json::to_value(details) {
            self.details.extend(map);
        }
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

// No `source()`: the message already holds the wrapped error's causes.
impl std::error::Error for Failure {}

/// The kind, one-line message and details of an error returned by a subcommand.
pub fn describe(err: &anyhow::Error) -> ErrorObject {
    let (kind, details) = match err.downcast_ref::<Failure>() {
        Some(f) => (f.kind, f.details.clone()),
        None => (classify(err), Map::new()),
    };
    ErrorObject {
        kind,
        message: one_line(&format!("{err:#}")),
        exit_code: kind.code(),
        details,
    }
}

/// The kind of an error that carries no [`Failure`], from the library errors in its chain.
pub fn classify(err: &anyhow::Error) -> Kind {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.kind;
        }
        if cause.downcast_ref::<PlanError>().is_some() {
            return Kind::InvalidInput;
        }
        match cause.downcast_ref::<RouteError>() {
            Some(RouteError::SideNotP2p { .. }) => return Kind::P2pRefused,
            Some(_) => return Kind::InvalidInput,
            None => {}
        }
        match cause.downcast_ref::<P2pmemError>() {
            Some(P2pmemError::PermissionDenied { .. } | P2pmemError::NoReadPermission { .. }) => {
                return Kind::PermissionDenied
            }
            Some(P2pmemError::NoSuchDevice { .. } | P2pmemError::NoP2pmem { .. }) => {
                return Kind::InvalidInput
            }
            _ => {}
        }
        if let Some(EndpointError::MissingSource { .. } | EndpointError::Unsupported { .. }) =
            cause.downcast_ref::<EndpointError>()
        {
            return Kind::InvalidInput;
        }
        if let Some(e) = cause.downcast_ref::<io::Error>() {
            if e.kind() == io::ErrorKind::PermissionDenied {
                return Kind::PermissionDenied;
            }
        }
    }
    Kind::Failure
}

/// Whether the error is a closed stdout (`| head`), which is not a failure.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    let broken = |e: &(dyn std::error::Error + 'static)| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            || e.downcast_ref::<serde_json::Error>()
                .is_some_and(|e| e.io_error_kind() == Some(io::ErrorKind::BrokenPipe))
    };
    err.chain().any(|cause| {
        broken(cause)
            || cause
                .downcast_ref::<Failure>()
                .is_some_and(|f| is_broken_pipe(&f.error))
    })
}

/// For a report printed before the command's own status is returned: a closed stdout
/// must not turn a failure status (a refused probe, a failed check) into success, so the
/// broken pipe is dropped here and the status stands.
pub fn unless_broken_pipe(result: anyhow::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// Locked stdout: write to it with `writeln!` and `?`, never `println!`.
pub fn stdout() -> io::StdoutLock<'static> {
    io::stdout().lock()
}

/// Prints `value` as one JSON document (pretty when `pretty`), newline-terminated.
pub fn print_json(value: &impl Serialize, pretty: bool) -> io::Result<()> {
    let mut out = stdout();
    if pretty {
        serde_json::to_writer_pretty(&mut out, value)?;
    } else {
        serde_json::to_writer(&mut out, value)?;
    }
    writeln!(out)?;
    out.flush()
}

/// Whether the innermost subcommand that matched has a `--json` flag and it was given.
/// Any subcommand whose arguments have a `json: bool` field qualifies, with no other
/// wiring.
pub fn wants_json(matches: &clap::ArgMatches) -> bool {
    let mut m = matches;
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
    }
    matches!(m.try_get_one::<bool>("json"), Ok(Some(true)))
}

/// For a command line that did not parse: whether `--json` appears among the options
/// (before a `--` that starts a guest command).
pub fn argv_wants_json(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    args.into_iter()
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// Reports an error: on stderr and, with `--json`, the [`ErrorReport`] (its message on
/// one line) on stdout. Returns the exit status.
pub fn report_error(err: &anyhow::Error, json: bool) -> u8 {
    let object = describe(err);
    let code = object.exit_code;
    let mut stderr = io::stderr().lock();
    // The text as the error has it: one line, except where a cause carries an excerpt
    // meant to be read as lines (a lab failure's kernel log tail); JSON gets it joined.
    let _ = writeln!(stderr, "p2pdma: error: {err:#}");
    if json {
        // A closed stdout leaves the stderr line as the report.
        let _ = print_json(&ErrorReport { error: object }, false);
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_its_kind_details_and_whole_message_under_context() {
        let inner = anyhow::anyhow!("EIO").context("writing /dev/nvme1n1");
        let err = anyhow::Error::new(
            Failure::new(Kind::PartialCopy, inner)
                .with_details(&serde_json::json!({"bytes_written": 4096})),
        );
        let object = describe(&err);
        assert_eq!(object.kind, Kind::PartialCopy);
        assert_eq!(object.exit_code, 4);
        assert_eq!(object.message, "writing /dev/nvme1n1: EIO");
        let v = serde_json::to_value(ErrorReport { error: object }).unwrap();
        assert_eq!(v["error"]["kind"], "partial_copy");
        assert_eq!(v["error"]["bytes_written"], 4096);
    }

    #[test]
    fn library_errors_are_classified_from_the_chain() {
        let denied = P2pmemError::PermissionDenied {
            provider: "0000:01:00.0".parse().unwrap(),
            path: "/sys/bus/pci/devices/0000:01:00.0/p2pmem/allocate".into(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        let err = anyhow::Error::new(denied).context("allocating");
        assert_eq!(classify(&err), Kind::PermissionDenied);
        assert_eq!(classify(&anyhow::anyhow!("something")), Kind::Failure);
    }

    #[test]
    fn broken_pipes_are_found_through_serde_json_and_failures() {
        let pipe = || io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(is_broken_pipe(&anyhow::Error::new(pipe())));
        let json = serde_json::Error::io(pipe());
        assert!(is_broken_pipe(
            &anyhow::Error::new(json).context("printing")
        ));
        let wrapped = Failure::new(Kind::Failure, pipe());
        assert!(is_broken_pipe(&anyhow::Error::new(wrapped)));
        assert!(!is_broken_pipe(&anyhow::anyhow!("no pipe here")));
    }

    #[test]
    fn json_is_detected_before_the_guest_command_only() {
        let argv = |s: &str| s.split(' ').map(Into::into).collect::<Vec<_>>();
        assert!(argv_wants_json(argv("p2pdma copy a b --json --length x")));
        assert!(!argv_wants_json(argv(
            "p2pdma lab run -t s -- p2pdma topo --json"
        )));
    }
}
