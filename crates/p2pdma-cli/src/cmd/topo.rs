//! `p2pdma topo` and `p2pdma snapshot`: the PCI tree, P2P verdicts, and snapshots.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use p2pdma::pci::PciTree;
use p2pdma::report::topo as report;
use p2pdma::resolve::resolve_pci;
use p2pdma::snapshot::SnapshotOptions;
use p2pdma::sysfs::SysfsRoot;
use p2pdma::topology::Topology;
use serde::Serialize;

use crate::exit::Kind;
use crate::output;
use crate::Globals;

/// Arguments of `p2pdma topo`.
///
/// Without a view option, prints the PCI tree with p2pmem providers and ACS redirect
/// marked. Devices can be named by PCI address, /dev/nvmeX, /dev/nvmeXnY, a partition,
/// or a file on an NVMe filesystem.
#[derive(Debug, clap::Args)]
pub struct TopoArgs {
    /// Matrix of verdicts between devices (rows: provider, columns: client), in the
    /// spirit of `nvidia-smi topo -m`; all NVMe functions and p2pmem providers when no
    /// device is named.
    #[arg(long, num_args = 0.., value_name = "DEV")]
    matrix: Option<Vec<String>>,

    /// Explain what the kernel does when CLIENT does DMA into PROVIDER's p2pmem.
    /// Exit status 0 if P2P works, 3 if the kernel refuses.
    #[arg(long, num_args = 2, value_names = ["PROVIDER", "CLIENT"])]
    explain: Option<Vec<String>>,

    /// Pick the provider the kernel's pci_p2pmem_find_many() would pick for these
    /// clients (ties broken by lowest address).
    #[arg(long, num_args = 1.., value_name = "CLIENT")]
    choose: Option<Vec<String>>,

    /// Every (provider, NVMe namespace) pair with its predicted verdict, one per line:
    /// `PROVIDER DISK CLIENT p2p|refused MAP_TYPE` (with --json: one JSON array of
    /// objects, on one line, like every other --json output: one document).
    /// The lab's ground-truth check runs `p2pdma probe` on each.
    #[arg(long)]
    pairs: bool,

    /// Machine-readable JSON instead of text (any view).
    #[arg(long)]
    json: bool,

    /// Graphviz DOT of the tree (with --explain: the P2P path drawn in red).
    #[arg(long, conflicts_with_all = ["svg", "json", "matrix", "choose", "pairs"])]
    dot: bool,

    /// SVG picture of the tree (with --explain: the P2P path drawn in red).
    #[arg(long, conflicts_with_all = ["json", "matrix", "choose", "pairs"])]
    svg: bool,
}

/// Arguments of `p2pdma snapshot`.
#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// New directory to write (it then works as `p2pdma --sysfs OUT ...`).
    out: PathBuf,

    /// Leave NVMe serial numbers out.
    #[arg(long)]
    no_serials: bool,
}

fn load(globals: &Globals) -> anyhow::Result<(&SysfsRoot, PciTree)> {
    let root = &globals.sysfs;
    let tree = globals
        .read_tree(root)
        .with_context(|| format!("reading the PCI tree from {}", root.path().display()))?;
    Ok((root, tree))
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    Ok(output::print_json(value, true)?)
}

/// Runs `p2pdma topo`.
pub fn run(args: TopoArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    let (root, tree) = load(globals)?;
    let topo = Topology::new(&tree);
    if let Some(names) = &args.explain {
        let (pt, provider) = resolve_pci(root, &tree, &names[0])?;
        let (ct, client) = resolve_pci(root, &tree, &names[1])?;
        let verdict = topo.verdict(provider, client);
        let explained = report::Explain::new(&pt, &ct, &verdict);
        let ok = explained.p2p;
        let printed = (|| -> anyhow::Result<()> {
            if args.dot || args.svg {
                let picture = if args.dot {
                    report::dot(&tree, Some(&verdict))
                } else {
                    report::svg(&tree, Some(&verdict))
                };
                output::stdout().write_all(picture.as_bytes())?;
            } else if args.json {
                print_json(&explained)?;
            } else {
                write!(
                    output::stdout(),
                    "{}",
                    report::explain_text(&tree, &pt, &ct, &verdict)
                )?;
            }
            Ok(())
        })();
        // A closed stdout does not turn "refused" into success.
        output::unless_broken_pipe(printed)?;
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            Kind::P2pRefused.exit()
        });
    }
    if let Some(names) = &args.choose {
        let mut clients = Vec::new();
        for name in names {
            clients.push(resolve_pci(root, &tree, name)?.1);
        }
        let choice = topo.choose_provider(&clients)?;
        if args.json {
            print_json(&choice)?;
        } else {
            write!(output::stdout(), "{}", report::choice_text(&tree, &choice))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(names) = &args.matrix {
        let devices = if names.is_empty() {
            report::default_matrix_devices(&tree)
        } else {
            let mut v = Vec::new();
            for name in names {
                v.push(resolve_pci(root, &tree, name)?.1);
            }
            v
        };
        if devices.is_empty() {
            bail!(
                "no NVMe functions or p2pmem providers in {}: name devices after --matrix",
                root.path().display()
            );
        }
        let cells = topo.matrix(&devices, &devices);
        if args.json {
            print_json(&report::Matrix::new(&tree, &devices, &cells))?;
        } else {
            write!(
                output::stdout(),
                "{}",
                report::matrix_text(&tree, &devices, &cells)
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.pairs {
        let pairs = report::pairs(root, &tree, &topo)?;
        if args.json {
            // One document on one line, so guest scripts can mix it with other output.
            output::print_json(&pairs, false)?;
        } else {
            write!(output::stdout(), "{}", report::pairs_text(&pairs))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.dot {
        std::io::stdout()
            .lock()
            .write_all(report::dot(&tree, None).as_bytes())?;
    } else if args.svg {
        std::io::stdout()
            .lock()
            .write_all(report::svg(&tree, None).as_bytes())?;
    } else if args.json {
        print_json(&report::TreeJson::new(&tree))?;
    } else {
        write!(output::stdout(), "{}", report::tree_text(&tree))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `p2pdma snapshot`.
pub fn snapshot(args: SnapshotArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    let root = &globals.sysfs;
    let summary = p2pdma::snapshot::take(
        root,
        &args.out,
        SnapshotOptions {
            no_serials: args.no_serials,
        },
    )
    .with_context(|| {
        format!(
            "snapshot of {} into {}",
            root.path().display(),
            args.out.display()
        )
    })?;
    if !globals.quiet {
        eprintln!(
        "p2pdma: wrote {} ({} PCI functions, {} files, {} links{}); use it with: p2pdma --sysfs {} topo",
        args.out.display(),
        summary.functions,
        summary.files,
        summary.links,
        if args.no_serials { ", serial numbers left out" } else { "" },
        args.out.display()
    );
    }
    // A snapshot taken without root has 64-byte config files: say so now, not in the bug report.
    let taken = PciTree::read(&SysfsRoot::new(&args.out))
        .with_context(|| format!("reading back {}", args.out.display()))?;
    if !globals.quiet {
        crate::cmd::print_host_notes(&taken);
    }
    if let Some(warning) = p2pdma::snapshot::acs_unknown_warning(&taken) {
        eprintln!("p2pdma: warning: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}
