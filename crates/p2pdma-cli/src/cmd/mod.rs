//! One module per subcommand: argument types and the code that runs them.

pub mod bench;
pub mod copy;
pub mod lab;
pub mod mem;
pub mod probe;
pub mod topo;
