//! `p2pdma topo` and `p2pdma snapshot`: the PCI tree, P2P verdicts, and snapshots.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use p2pdma::host::KernelP2pdma;
use p2pdma::pci::{PciFunction, PciTree};
use p2pdma::resolve::{resolve, Target};
use p2pdma::snapshot::SnapshotOptions;
use p2pdma::sysfs::SysfsRoot;
use p2pdma::topology::{Cell, MapType, Reason, Topology, Verdict};
use p2pdma::Bdf;
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

fn load(globals: &Globals) -> anyhow::Result<(SysfsRoot, PciTree)> {
    let root = SysfsRoot::new(&globals.sysfs);
    let tree = globals
        .read_tree(&root)
        .with_context(|| format!("reading the PCI tree from {}", root.path().display()))?;
    Ok((root, tree))
}

/// Resolves a user-given name to a PCI function, or says why it is none.
fn resolve_pci(root: &SysfsRoot, tree: &PciTree, name: &str) -> anyhow::Result<(Target, Bdf)> {
    let target = resolve(root, name).with_context(|| format!("resolving '{name}'"))?;
    let Some(bdf) = target.bdf else {
        bail!(
            "'{name}' is not a PCI device (the kernel refuses P2P for it: \"not a PCI device\"); name an NVMe namespace or a PCI address"
        );
    };
    if tree.function(bdf).is_none() {
        bail!("'{name}' resolves to {bdf}, which is not in the PCI tree");
    }
    Ok((target, bdf))
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    Ok(output::print_json(value, true)?)
}

/// Runs `p2pdma topo`.
pub fn run(args: TopoArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    let (root, tree) = load(globals)?;
    let topo = Topology::new(&tree);
    if let Some(names) = &args.explain {
        let (pt, provider) = resolve_pci(&root, &tree, &names[0])?;
        let (ct, client) = resolve_pci(&root, &tree, &names[1])?;
        let verdict = topo.verdict(provider, client);
        let ok = verdict.is_p2p()
            && (ct.kind == p2pdma::resolve::TargetKind::PciFunction || ct.p2p_queue);
        let printed = (|| -> anyhow::Result<()> {
            if args.dot || args.svg {
                let picture = if args.dot {
                    dot(&tree, Some(&verdict))
                } else {
                    svg(&tree, Some(&verdict))
                };
                output::stdout().write_all(picture.as_bytes())?;
            } else if args.json {
                #[derive(Serialize)]
                struct Explain<'a> {
                    provider: &'a Target,
                    client: &'a Target,
                    verdict: &'a Verdict,
                    p2p: bool,
                }
                print_json(&Explain {
                    provider: &pt,
                    client: &ct,
                    verdict: &verdict,
                    p2p: ok,
                })?;
            } else {
                write!(
                    output::stdout(),
                    "{}",
                    explain_text(&tree, &pt, &ct, &verdict)
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
            clients.push(resolve_pci(&root, &tree, name)?.1);
        }
        let choice = topo.choose_provider(&clients)?;
        if args.json {
            print_json(&choice)?;
        } else {
            writeln!(
                output::stdout(),
                "provider: {} {}",
                choice.provider,
                tree.functions[&choice.provider].describe()
            )?;
            writeln!(output::stdout(), "why: {}", choice.explanation)?;
            for c in &choice.candidates {
                let state = match (c.published, c.distance, c.refused_by) {
                    (false, _, _) => "not published (the kernel skips it)".to_owned(),
                    (true, Some(d), _) => format!("total distance {d}"),
                    (true, None, Some(client)) => format!("refused for {client}"),
                    (true, None, None) => "refused".to_owned(),
                };
                writeln!(output::stdout(), "  candidate {}: {state}", c.provider)?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(names) = &args.matrix {
        let devices = if names.is_empty() {
            // NVMe functions (the clients) and every provider, NVMe or not (a row of its
            // own: a GPU BAR or the lab's RAM device is a provider but never a client).
            tree.iter()
                .filter(|f| f.is_nvme() || f.p2pmem.is_some())
                .map(|f| f.bdf)
                .collect::<Vec<_>>()
        } else {
            let mut v = Vec::new();
            for name in names {
                v.push(resolve_pci(&root, &tree, name)?.1);
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
            #[derive(Serialize)]
            struct Matrix<'a> {
                devices: &'a [Bdf],
                providers: Vec<Bdf>,
                /// cells[provider][client]
                cells: &'a [Vec<Option<Cell>>],
            }
            let providers = devices
                .iter()
                .copied()
                .filter(|b| tree.functions[b].p2pmem.is_some())
                .collect();
            print_json(&Matrix {
                devices: &devices,
                providers,
                cells: &cells,
            })?;
        } else {
            write!(output::stdout(), "{}", matrix_text(&tree, &devices, &cells))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.pairs {
        let pairs = pairs(&root, &tree, &topo)?;
        if args.json {
            // One document on one line, so guest scripts can mix it with other output.
            output::print_json(&pairs, false)?;
        } else {
            let mut out = output::stdout();
            for p in &pairs {
                writeln!(
                    out,
                    "{} {} {} {} {}",
                    p.provider,
                    p.client_disk,
                    p.client,
                    if p.p2p { "p2p" } else { "refused" },
                    serde_json::to_string(&p.map_type)?
                )?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.dot {
        std::io::stdout()
            .lock()
            .write_all(dot(&tree, None).as_bytes())?;
    } else if args.svg {
        std::io::stdout()
            .lock()
            .write_all(svg(&tree, None).as_bytes())?;
    } else if args.json {
        print_json(&tree)?;
    } else {
        write!(output::stdout(), "{}", tree_text(&tree))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One (provider, client namespace) pair for the lab's check.
#[derive(Debug, Serialize)]
struct Pair {
    provider: Bdf,
    provider_serial: Option<String>,
    client: Bdf,
    client_serial: Option<String>,
    client_disk: String,
    p2p: bool,
    map_type: MapType,
    distance: Option<u32>,
    /// Functions with ACS redirect on the path (the pci=disable_acs_redir= list).
    acs_redirect: Vec<Bdf>,
}

fn pairs(root: &SysfsRoot, tree: &PciTree, topo: &Topology) -> anyhow::Result<Vec<Pair>> {
    let serial = |f: &PciFunction| f.nvme.first().and_then(|c| c.serial.clone());
    let mut out = Vec::new();
    for provider in tree.providers() {
        for client in tree.iter().filter(|f| f.is_nvme()) {
            for ctrl in &client.nvme {
                for ns in &ctrl.namespaces {
                    let target = resolve(root, ns).with_context(|| format!("resolving {ns}"))?;
                    let v = topo.verdict(provider.bdf, client.bdf);
                    out.push(Pair {
                        provider: provider.bdf,
                        provider_serial: serial(provider),
                        client: client.bdf,
                        client_serial: serial(client),
                        client_disk: ns.clone(),
                        p2p: v.is_p2p() && target.p2p_queue,
                        map_type: v.map_type,
                        distance: v.distance,
                        acs_redirect: v
                            .reasons
                            .iter()
                            .find_map(|r| match r {
                                Reason::AcsRedirect { functions } => Some(functions.clone()),
                                _ => None,
                            })
                            .unwrap_or_default(),
                    });
                }
            }
        }
    }
    Ok(out)
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn marks(f: &PciFunction) -> String {
    let mut m = String::new();
    if let Some(p) = f.p2pmem {
        let _ = write!(
            m,
            " [p2pmem {} free of {}{}]",
            human_bytes(p.available),
            human_bytes(p.size),
            if p.published { "" } else { ", unpublished" }
        );
    }
    match f.acs.redirects() {
        Some(true) => {
            let _ = write!(m, " [ACS redirect {}]", f.acs.redirect_bits().join("+"));
        }
        None if f.is_bridge() => m.push_str(" [ACS unknown]"),
        _ => {}
    }
    if let Some(link) = f.link.current() {
        let _ = write!(m, " {}GT/s x{}", link.speed_gts, link.width);
        let max = (f.link.max_speed, f.link.max_width);
        if max != (Some(link.speed_gts), Some(link.width)) {
            if let (Some(speed), Some(width)) = max {
                let _ = write!(m, " (capable of {speed}GT/s x{width})");
            }
        }
    }
    if let Some(driver) = &f.driver {
        let _ = write!(m, " ({driver})");
    }
    m
}

fn host_summary(tree: &PciTree) -> String {
    let h = &tree.host;
    let cpu = match (&h.cpu_vendor, h.cpu_family) {
        (Some(v), Some(f)) => format!("{v} family {f:#x}"),
        _ => "unknown".to_owned(),
    };
    let amd = match h.cpu_supports_p2pdma() {
        Some(true) => " (routes P2P between root ports)",
        Some(false) => {
            " (does not route P2P between root ports unless the host bridge is whitelisted)"
        }
        None => "",
    };
    let kernel = match h.p2pdma_config {
        KernelP2pdma::Yes => "yes",
        KernelP2pdma::No => "NO",
        KernelP2pdma::Unknown => "unknown",
    };
    format!(
        "CPU: {cpu}{amd}\nkernel {}: CONFIG_PCI_P2PDMA {kernel} ({})\n",
        h.kernel_release.as_deref().unwrap_or("?"),
        h.p2pdma_config_source
    )
}

fn tree_text(tree: &PciTree) -> String {
    let mut out = host_summary(tree);
    let mut buses: Vec<&str> = tree.iter().map(|f| f.root_bus.as_str()).collect();
    buses.sort();
    buses.dedup();
    for bus in buses {
        let hb = match tree.host_bridge_device(bus) {
            Some(d) => format!("host bridge {} {:04x}:{:04x}", d.bdf, d.vendor, d.device),
            None => "no host bridge device".to_owned(),
        };
        let _ = writeln!(out, "{bus} ({hb})");
        let tops: Vec<&PciFunction> = tree
            .iter()
            .filter(|f| f.root_bus == bus && f.upstream.is_none())
            .collect();
        for (i, f) in tops.iter().enumerate() {
            tree_node(tree, f, "", i + 1 == tops.len(), &mut out);
        }
    }
    out.push_str("legend: [p2pmem ...] P2P memory provider; [ACS redirect RR+CR+EC] sends peer traffic up to the root complex\n");
    out
}

fn tree_node(tree: &PciTree, f: &PciFunction, prefix: &str, last: bool, out: &mut String) {
    let _ = writeln!(
        out,
        "{prefix}{}{} {}{}",
        if last { "└─ " } else { "├─ " },
        f.bdf,
        f.describe(),
        marks(f)
    );
    let child_prefix = format!("{prefix}{}", if last { "   " } else { "│  " });
    let children: Vec<&PciFunction> = tree.children(f.bdf).collect();
    for (i, c) in children.iter().enumerate() {
        tree_node(tree, c, &child_prefix, i + 1 == children.len(), out);
    }
}

fn label(tree: &PciTree, bdf: Bdf) -> String {
    tree.function(bdf)
        .and_then(|f| f.nvme.first())
        .map(|c| c.name.clone())
        .unwrap_or_else(|| bdf.to_string())
}

fn matrix_text(tree: &PciTree, devices: &[Bdf], cells: &[Vec<Option<Cell>>]) -> String {
    let labels: Vec<String> = devices.iter().map(|b| label(tree, *b)).collect();
    let width = labels.iter().map(String::len).max().unwrap_or(4).max(6) + 2;
    let first = width + 1;
    let mut out = String::new();
    let _ = write!(out, "{:first$}", "");
    for l in &labels {
        let _ = write!(out, "{l:>width$}");
    }
    out.push('\n');
    for (i, row) in cells.iter().enumerate() {
        let star = if tree.functions[&devices[i]].p2pmem.is_some() {
            "*"
        } else {
            ""
        };
        let _ = write!(out, "{:first$}", format!("{}{star}", labels[i]));
        for cell in row {
            let text = cell.map(|c| c.label()).unwrap_or_else(|| "?".to_owned());
            let _ = write!(out, "{text:>width$}");
        }
        out.push('\n');
    }
    out.push('\n');
    for (l, b) in labels.iter().zip(devices) {
        let _ = writeln!(out, "  {l:width$} {b} {}", tree.functions[b].describe());
    }
    out.push_str(
        "\nLegend (cell = what the kernel does when the column device DMAs into the row device's p2pmem):\n\
         \x20 X     same function (distance 0)\n\
         \x20 BUSn  direct through the common switch or root port, distance n (PCI_P2PDMA_MAP_BUS_ADDR)\n\
         \x20 HBn   through the root complex, allowed (AMD Zen CPU or whitelisted host bridge), distance n\n\
         \x20 ACSn  through the root complex because ACS redirect is set on the path, allowed\n\
         \x20 NOn   refused by the kernel (no common upstream bridge or ACS redirect, host bridge not whitelisted)\n\
         \x20 *     the row device has p2pmem; rows without it cannot be providers at all\n\
         Explain a cell with: p2pdma topo --explain ROW COLUMN\n",
    );
    out
}

/// A named PCI function or controller is judged by topology alone; a block device or
/// file also needs a queue that supports P2PDMA.
fn client_queue_ok(t: &Target) -> bool {
    use p2pdma::resolve::TargetKind;
    matches!(t.kind, TargetKind::PciFunction | TargetKind::NvmeController) || t.p2p_queue
}

fn explain_text(tree: &PciTree, pt: &Target, ct: &Target, v: &Verdict) -> String {
    let mut out = String::new();
    let describe = |t: &Target, b: Bdf| {
        format!(
            "{} = {b} {}",
            t.name,
            tree.function(b).map(|f| f.describe()).unwrap_or_default()
        )
    };
    let _ = writeln!(out, "provider: {}", describe(pt, v.provider));
    let _ = writeln!(out, "client:   {}", describe(ct, v.client));
    let _ = writeln!(out, "rules:    {}", v.rules);
    let client_ok = client_queue_ok(ct);
    let verdict = if v.is_p2p() && client_ok {
        "P2P works"
    } else {
        "P2P REFUSED"
    };
    let _ = writeln!(
        out,
        "verdict:  {verdict}; by topology: {} ({}), distance {}",
        v.topology_map_type,
        v.topology_map_type.kernel_name(),
        v.distance
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into())
    );
    let path: Vec<String> = v
        .path
        .iter()
        .map(|b| {
            if v.provider == v.client {
                format!("{b} (same function)")
            } else if Some(*b) == v.common_upstream {
                format!("{b} (common upstream bridge)")
            } else {
                b.to_string()
            }
        })
        .collect();
    let sep = if v.common_upstream.is_none() && v.path.len() > 1 {
        " -> [root complex] -> "
    } else {
        " -> "
    };
    let path_text = if v.common_upstream.is_none() && v.path.len() > 1 {
        // Split at the top of the provider's chain.
        let top = v
            .path
            .iter()
            .position(|b| tree.function(*b).is_some_and(|f| f.upstream.is_none()))
            .unwrap_or(0);
        format!(
            "{}{sep}{}",
            path[..=top].join(" -> "),
            path[top + 1..].join(" -> ")
        )
    } else {
        path.join(sep)
    };
    let _ = writeln!(out, "path:     {path_text}");
    if let Some(b) = v.bottleneck {
        let _ = writeln!(
            out,
            "slowest link: {} GT/s x{} above {} = {:.2} GB/s per direction",
            b.link.speed_gts, b.link.width, b.below, b.bandwidth_gbps
        );
    }
    if !client_queue_ok(ct) {
        if let Some(why) = &ct.not_p2p_because {
            let _ = writeln!(out, "client queue: {} is {why}", ct.name);
        }
    }
    if !v.reasons.is_empty() {
        out.push_str("why:\n");
        for r in &v.reasons {
            let _ = writeln!(out, "  - {r}");
        }
    }
    out
}

fn dot_id(b: Bdf) -> String {
    format!("\"{b}\"")
}

fn on_path(v: Option<&Verdict>, a: Bdf, b: Bdf) -> bool {
    v.is_some_and(|v| {
        v.path
            .windows(2)
            .any(|w| (w[0] == a && w[1] == b) || (w[0] == b && w[1] == a))
    })
}

/// Graphviz DOT of the tree; the verdict's path, if any, in red.
fn dot(tree: &PciTree, v: Option<&Verdict>) -> String {
    let mut out =
        String::from("digraph pci {\n  rankdir=TB;\n  node [shape=box, fontname=monospace];\n");
    let mut buses: Vec<&str> = tree.iter().map(|f| f.root_bus.as_str()).collect();
    buses.sort();
    buses.dedup();
    for bus in &buses {
        let _ = writeln!(
            out,
            "  \"{bus}\" [shape=ellipse, label=\"{bus}\\nroot complex\"];"
        );
    }
    for f in tree.iter() {
        let mut attrs = vec![format!(
            "label=\"{}\\n{}{}\"",
            f.bdf,
            f.describe().replace('"', "'"),
            if f.p2pmem.is_some() {
                "\\n[p2pmem]"
            } else {
                ""
            }
        )];
        if f.p2pmem.is_some() {
            attrs.push("style=filled, fillcolor=\"#cfe8ff\"".into());
        }
        if f.acs.redirects() == Some(true) {
            attrs.push("color=orange, penwidth=2".into());
        }
        if v.is_some_and(|v| v.path.contains(&f.bdf)) {
            attrs.push("color=red, penwidth=3".into());
        }
        let _ = writeln!(out, "  {} [{}];", dot_id(f.bdf), attrs.join(", "));
        let (parent, red) = match f.upstream {
            Some(up) => (dot_id(up), on_path(v, up, f.bdf)),
            None => (
                format!("\"{}\"", f.root_bus),
                v.is_some_and(|v| {
                    v.common_upstream.is_none() && v.path.contains(&f.bdf) && v.path.len() > 1
                }),
            ),
        };
        let style = if red { " [color=red, penwidth=3]" } else { "" };
        let _ = writeln!(out, "  {parent} -> {}{style};", dot_id(f.bdf));
    }
    if let Some(v) = v {
        let _ = writeln!(
            out,
            "  label=\"{} -> {}: {} distance {}\";",
            v.provider,
            v.client,
            v.map_type,
            v.distance.map(|d| d.to_string()).unwrap_or_default()
        );
    }
    out.push_str("}\n");
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained SVG of the tree (leaves spread left to right, depth downward),
/// the verdict's path in red.
fn svg(tree: &PciTree, v: Option<&Verdict>) -> String {
    const W: f64 = 190.0;
    const H: f64 = 46.0;
    const DX: f64 = 205.0;
    const DY: f64 = 80.0;
    // Nodes: root buses and functions, laid out by a depth-first walk.
    let mut pos: std::collections::HashMap<String, (f64, f64)> = Default::default();
    let mut next_x = 0.0;
    fn place(
        tree: &PciTree,
        f: &PciFunction,
        depth: usize,
        next_x: &mut f64,
        pos: &mut std::collections::HashMap<String, (f64, f64)>,
    ) -> f64 {
        let children: Vec<&PciFunction> = tree.children(f.bdf).collect();
        let x = if children.is_empty() {
            let x = *next_x;
            *next_x += 1.0;
            x
        } else {
            let xs: Vec<f64> = children
                .iter()
                .map(|c| place(tree, c, depth + 1, next_x, pos))
                .collect();
            (xs[0] + xs[xs.len() - 1]) / 2.0
        };
        pos.insert(f.bdf.to_string(), (x, depth as f64));
        x
    }
    let mut buses: Vec<&str> = tree.iter().map(|f| f.root_bus.as_str()).collect();
    buses.sort();
    buses.dedup();
    for bus in &buses {
        let tops: Vec<&PciFunction> = tree
            .iter()
            .filter(|f| f.root_bus == *bus && f.upstream.is_none())
            .collect();
        let xs: Vec<f64> = tops
            .iter()
            .map(|f| place(tree, f, 1, &mut next_x, &mut pos))
            .collect();
        let x = if xs.is_empty() {
            next_x
        } else {
            (xs[0] + xs[xs.len() - 1]) / 2.0
        };
        pos.insert(bus.to_string(), (x, 0.0));
        next_x += 0.3;
    }
    let max_depth = pos.values().map(|p| p.1).fold(0.0, f64::max);
    let width = next_x.max(1.0) * DX + 20.0;
    let height = (max_depth + 1.0) * DY + 60.0;
    let at = |key: &str| {
        let (x, y) = pos[key];
        (10.0 + x * DX, 10.0 + y * DY)
    };
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" font-family=\"monospace\" font-size=\"10\">\n"
    );
    for f in tree.iter() {
        let parent = f
            .upstream
            .map(|u| u.to_string())
            .unwrap_or_else(|| f.root_bus.clone());
        let red = match f.upstream {
            Some(up) => on_path(v, up, f.bdf),
            None => v.is_some_and(|v| {
                v.common_upstream.is_none() && v.path.contains(&f.bdf) && v.path.len() > 1
            }),
        };
        let (px, py) = at(&parent);
        let (cx, cy) = at(&f.bdf.to_string());
        let _ = writeln!(
            out,
            "<line x1=\"{:.0}\" y1=\"{:.0}\" x2=\"{:.0}\" y2=\"{:.0}\" stroke=\"{}\" stroke-width=\"{}\"/>",
            px + W / 2.0, py + H, cx + W / 2.0, cy,
            if red { "red" } else { "#888" },
            if red { 4 } else { 1 }
        );
    }
    for bus in &buses {
        let (x, y) = at(bus);
        let _ = writeln!(out, "<rect x=\"{x:.0}\" y=\"{y:.0}\" width=\"{W}\" height=\"{H}\" rx=\"20\" fill=\"#eee\" stroke=\"#444\"/><text x=\"{:.0}\" y=\"{:.0}\">{} root complex</text>", x + 8.0, y + 26.0, xml_escape(bus));
    }
    for f in tree.iter() {
        let (x, y) = at(&f.bdf.to_string());
        let in_path = v.is_some_and(|v| v.path.contains(&f.bdf));
        let fill = if f.p2pmem.is_some() {
            "#cfe8ff"
        } else {
            "#fff"
        };
        let stroke = if in_path {
            "red"
        } else if f.acs.redirects() == Some(true) {
            "orange"
        } else {
            "#444"
        };
        let _ = writeln!(
            out,
            "<rect x=\"{x:.0}\" y=\"{y:.0}\" width=\"{W}\" height=\"{H}\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"{}\"/>",
            if in_path { 3 } else { 1 }
        );
        let mut line2 = f.kind().to_owned();
        if let Some(c) = f.nvme.first() {
            line2 = format!("{line2} {}", c.name);
        }
        let mut line3 = String::new();
        if f.p2pmem.is_some() {
            line3.push_str("p2pmem ");
        }
        if f.acs.redirects() == Some(true) {
            line3.push_str("ACS-redirect");
        }
        let _ = writeln!(
            out,
            "<text x=\"{:.0}\" y=\"{:.0}\">{}</text><text x=\"{:.0}\" y=\"{:.0}\">{}</text><text x=\"{:.0}\" y=\"{:.0}\">{}</text>",
            x + 6.0, y + 13.0, f.bdf,
            x + 6.0, y + 26.0, xml_escape(&line2),
            x + 6.0, y + 39.0, xml_escape(&line3)
        );
    }
    if let Some(v) = v {
        let _ = writeln!(
            out,
            "<text x=\"10\" y=\"{:.0}\" font-size=\"12\">{} -&gt; {}: {} (distance {})</text>",
            height - 15.0,
            v.provider,
            v.client,
            xml_escape(&v.map_type.to_string()),
            v.distance.map(|d| d.to_string()).unwrap_or_default()
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Runs `p2pdma snapshot`.
pub fn snapshot(args: SnapshotArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    let root = SysfsRoot::new(&globals.sysfs);
    let summary = p2pdma::snapshot::take(
        &root,
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
    let unknown: Vec<String> = taken
        .iter()
        .filter(|f| f.acs.redirects().is_none())
        .map(|f| f.bdf.to_string())
        .collect();
    if !unknown.is_empty() {
        eprintln!(
            "p2pdma: warning: the ACS state of {} function(s) ({}{}) could not be read (config space beyond 64 bytes needs root): take the snapshot as root for certain verdicts",
            unknown.len(),
            unknown.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
            if unknown.len() > 3 { ", ..." } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}
