//! One module per subcommand: argument types and the code that runs them.

pub mod bench;
pub mod copy;
pub mod lab;
pub mod mem;
pub mod operator;
pub mod probe;
pub mod topo;
pub mod vfio;

/// Parses a SIZE argument: a byte count with an optional k, M, G or T suffix (binary:
/// 1M = 1048576), as every option that takes a size accepts.
pub fn size(text: &str) -> Result<u64, String> {
    p2pdma::copy::parse_size(text).map_err(|e| e.to_string())
}

/// [`size`] for a size held in memory (a buffer length).
pub fn size_usize(text: &str) -> Result<usize, String> {
    let n = size(text)?;
    usize::try_from(n).map_err(|_| format!("'{text}' is too large for this machine"))
}

/// Notes on stderr about the tree's kernel release and functions (stable fixes it lacks,
/// possible pool-less providers), one `p2pdma: note:` line each; nothing when there is
/// nothing to say.
pub fn print_host_notes(tree: &p2pdma::pci::PciTree) {
    use p2pdma::report::host::{host_notes, host_notes_text};
    let text = host_notes_text(&host_notes(tree), tree.host.kernel_release.as_deref());
    for line in text.lines() {
        eprintln!("p2pdma: note: {line}");
    }
}
