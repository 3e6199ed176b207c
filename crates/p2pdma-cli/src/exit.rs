//! The exit-code table: one status per kind of outcome a script may want to tell apart
//! (the table itself is [`p2pdma::report::error`]'s, so a library user gets the same).
//!
//! Every subcommand returns `Ok(ExitCode)` for an outcome it reports itself (success, a
//! probe the kernel refused) or an error that [`crate::output`] classifies into a
//! [`Kind`]; `main` turns the kind into the status. A new subcommand adopts the table by
//! returning [`Kind::exit`] (or an error built with [`crate::output::Failure`]).

pub use p2pdma::report::error::{
    Kind, FAILURE, LAB_FAILURE, P2P_REFUSED, PARTIAL_COPY, SUCCESS, TABLE, USAGE, VERIFY_MISMATCH,
};
