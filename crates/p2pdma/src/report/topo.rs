//! The `topo` views as text, pictures and JSON structs: the PCI tree, the verdict
//! matrix, one verdict explained, the provider choice, the (provider, namespace) pairs,
//! Graphviz DOT and SVG.
//!
//! Every renderer is a pure function of parsed structs ([`PciTree`], [`Verdict`],
//! [`Target`]) returning a `String`; printing is the caller's.

use std::fmt::Write as _;

use serde::Serialize;

use crate::display::HumanBytes;
use crate::host::KernelP2pdma;
use crate::pci::{PciFunction, PciTree};
use crate::resolve::{resolve_with, Target, TargetKind};
use crate::sysfs::SysfsRoot;
use crate::topology::{Cell, MapType, ProviderChoice, Reason, Topology, Verdict};
use crate::Bdf;

use super::ReportError;

/// `p2pdma topo --explain --json`: both ends as resolved, the verdict, and whether P2P
/// works (the verdict and, for a block device or file, its queue; see [`Explain::new`]).
#[derive(Debug, Serialize)]
pub struct Explain<'a> {
    /// The provider as the user named it.
    pub provider: &'a Target,
    /// The client as the user named it.
    pub client: &'a Target,
    /// The kernel's verdict by topology.
    pub verdict: &'a Verdict,
    /// Whether P2P works end to end.
    pub p2p: bool,
}

impl<'a> Explain<'a> {
    /// The explanation of `verdict` between two resolved names: P2P works when the
    /// verdict allows it and the client is a PCI function or has a queue that can target
    /// p2pmem.
    pub fn new(provider: &'a Target, client: &'a Target, verdict: &'a Verdict) -> Self {
        let p2p = verdict.is_p2p() && (client.kind == TargetKind::PciFunction || client.p2p_queue);
        Explain {
            provider,
            client,
            verdict,
            p2p,
        }
    }
}

/// `p2pdma topo --matrix --json`.
#[derive(Debug, Serialize)]
pub struct Matrix<'a> {
    /// The devices, in row and column order.
    pub devices: &'a [Bdf],
    /// Those of them that have p2pmem.
    pub providers: Vec<Bdf>,
    /// `cells[provider][client]`
    pub cells: &'a [Vec<Option<Cell>>],
}

impl<'a> Matrix<'a> {
    /// The matrix of `devices` with its provider list taken from `tree`.
    pub fn new(tree: &PciTree, devices: &'a [Bdf], cells: &'a [Vec<Option<Cell>>]) -> Self {
        let providers = devices
            .iter()
            .copied()
            .filter(|b| tree.function(*b).is_some_and(|f| f.p2pmem.is_some()))
            .collect();
        Matrix {
            devices,
            providers,
            cells,
        }
    }
}

/// The devices `--matrix` shows when none is named: NVMe functions (the clients) and
/// every provider, NVMe or not (a GPU BAR or the lab's RAM device is a provider but
/// never a client).
pub fn default_matrix_devices(tree: &PciTree) -> Vec<Bdf> {
    tree.iter()
        .filter(|f| f.is_nvme() || f.p2pmem.is_some())
        .map(|f| f.bdf)
        .collect()
}

/// `p2pdma topo --choose` as text: the provider, why, and every candidate.
pub fn choice_text(tree: &PciTree, choice: &ProviderChoice) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "provider: {} {}",
        choice.provider,
        tree.function(choice.provider)
            .map(|f| f.describe())
            .unwrap_or_default()
    );
    let _ = writeln!(out, "why: {}", choice.explanation);
    for c in &choice.candidates {
        let state = match (c.published, c.distance, c.refused_by) {
            (false, _, _) => "not published (the kernel skips it)".to_owned(),
            (true, Some(d), _) => format!("total distance {d}"),
            (true, None, Some(client)) => format!("refused for {client}"),
            (true, None, None) => "refused".to_owned(),
        };
        let _ = writeln!(out, "  candidate {}: {state}", c.provider);
    }
    out
}

/// `p2pdma topo --pairs` as text, one pair a line:
/// `PROVIDER DISK CLIENT p2p|refused "MAP_TYPE"`.
pub fn pairs_text(pairs: &[Pair]) -> String {
    let mut out = String::new();
    for p in pairs {
        let _ = writeln!(
            out,
            "{} {} {} {} {}",
            p.provider,
            p.client_disk,
            p.client,
            if p.p2p { "p2p" } else { "refused" },
            serde_json::to_string(&p.map_type).unwrap_or_default()
        );
    }
    out
}

/// One (provider, client namespace) pair for the lab's check.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    /// The provider (a function with p2pmem).
    pub provider: Bdf,
    /// Its first NVMe controller's serial, if it is one.
    pub provider_serial: Option<String>,
    /// The client's PCI function.
    pub client: Bdf,
    /// Its first NVMe controller's serial.
    pub client_serial: Option<String>,
    /// The namespace's kernel name (`nvme1n1`).
    pub client_disk: String,
    /// Whether the kernel would do P2P (topology and the namespace's queue).
    pub p2p: bool,
    /// The kernel's map type for the pair.
    pub map_type: MapType,
    /// The kernel's distance, when P2P is possible by topology.
    pub distance: Option<u32>,
    /// Functions with ACS redirect on the path (the pci=disable_acs_redir= list).
    pub acs_redirect: Vec<Bdf>,
}

/// Every (provider, NVMe namespace) pair of `tree` with its verdict, providers and
/// clients in address order (what `p2pdma topo --pairs` prints and the lab checks).
pub fn pairs(root: &SysfsRoot, tree: &PciTree, topo: &Topology) -> Result<Vec<Pair>, ReportError> {
    let serial = |f: &PciFunction| f.nvme.first().and_then(|c| c.serial.clone());
    let mut out = Vec::new();
    for provider in tree.providers() {
        for client in tree.iter().filter(|f| f.is_nvme()) {
            for ctrl in &client.nvme {
                for ns in &ctrl.namespaces {
                    let target = resolve_with(root, ns, topo.rules()).map_err(|source| {
                        ReportError::Resolve {
                            name: ns.clone(),
                            source,
                        }
                    })?;
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

/// The marks after a function in the tree: p2pmem pool, ACS redirect, link, driver.
fn marks(f: &PciFunction) -> String {
    let mut m = String::new();
    if let Some(p) = f.p2pmem {
        let _ = write!(
            m,
            " [p2pmem {} free of {}{}]",
            HumanBytes(p.available),
            HumanBytes(p.size),
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

/// The host facts above the tree: CPU, kernel release and `CONFIG_PCI_P2PDMA`, then
/// any stable fix the release lacks and possible pool-less providers.
pub fn host_summary(tree: &PciTree) -> String {
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
    let notes = super::host::host_notes(tree);
    format!(
        "CPU: {cpu}{amd}\nkernel {}: CONFIG_PCI_P2PDMA {kernel} ({})\n{}",
        h.kernel_release.as_deref().unwrap_or("?"),
        h.p2pdma_config_source,
        super::host::host_notes_text(&notes, h.kernel_release.as_deref())
    )
}

/// `p2pdma topo --json`: the tree and what can be said about the host beyond the rules.
#[derive(Debug, Serialize)]
pub struct TreeJson<'a> {
    /// The tree (`functions`, `host`).
    #[serde(flatten)]
    pub tree: &'a PciTree,
    /// Stable fixes the release lacks, possible pool-less providers.
    pub host_notes: super::host::HostNotes,
}

impl<'a> TreeJson<'a> {
    /// The document for `tree`.
    pub fn new(tree: &'a PciTree) -> Self {
        TreeJson {
            tree,
            host_notes: super::host::host_notes(tree),
        }
    }
}

/// The PCI tree as text (`p2pdma topo`): each root bus with its host bridge, functions
/// nested under their upstream bridges, p2pmem providers and ACS redirect marked.
pub fn tree_text(tree: &PciTree) -> String {
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

/// The verdict matrix as text (`p2pdma topo --matrix`): rows are providers, columns
/// clients, `cells[row][column]` from [`Topology::matrix`], then the legend.
pub fn matrix_text(tree: &PciTree, devices: &[Bdf], cells: &[Vec<Option<Cell>>]) -> String {
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
        let star = if tree
            .function(devices[i])
            .is_some_and(|f| f.p2pmem.is_some())
        {
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
        let describe = tree.function(*b).map(|f| f.describe()).unwrap_or_default();
        let _ = writeln!(out, "  {l:width$} {b} {describe}");
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
pub fn client_queue_ok(t: &Target) -> bool {
    use crate::resolve::TargetKind;
    matches!(t.kind, TargetKind::PciFunction | TargetKind::NvmeController) || t.p2p_queue
}

/// The explanation of one verdict (`p2pdma topo --explain`): both devices, the rule
/// set, the verdict, the path, the slowest link, and why.
pub fn explain_text(tree: &PciTree, pt: &Target, ct: &Target, v: &Verdict) -> String {
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

/// Graphviz DOT of the tree; the verdict's path, if any, in red (`--dot`).
pub fn dot(tree: &PciTree, v: Option<&Verdict>) -> String {
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
/// the verdict's path in red (`--svg`).
pub fn svg(tree: &PciTree, v: Option<&Verdict>) -> String {
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

#[cfg(test)]
pub(crate) mod tests {
    //! Snapshot tests: each view of two lab fixtures against the text kept in
    //! `report/snapshots/` (`P2PDMA_BLESS=1 cargo test -p p2pdma report::` rewrites them
    //! after a deliberate change; review the diff).
    use super::*;
    use std::path::{Path, PathBuf};

    fn fixture(name: &str) -> SysfsRoot {
        SysfsRoot::new(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(name),
        )
    }

    pub(crate) fn snapshot(name: &str, actual: &str) {
        let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/report/snapshots")
            .join(name);
        if std::env::var_os("P2PDMA_BLESS").is_some() {
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with P2PDMA_BLESS=1)", path.display()));
        assert_eq!(actual, expected, "{} differs", path.display());
    }

    fn explained(root: &SysfsRoot, tree: &PciTree, p: &str, c: &str) -> (Target, Target, Verdict) {
        let pt = crate::resolve::resolve(root, p).unwrap();
        let ct = crate::resolve::resolve(root, c).unwrap();
        let v = Topology::new(tree).verdict(pt.bdf.unwrap(), ct.bdf.unwrap());
        (pt, ct, v)
    }

    /// A fixture's tree and default matrix, their snapshots checked.
    fn tree_and_matrix(name: &str) -> (SysfsRoot, PciTree, Vec<Bdf>, Vec<Vec<Option<Cell>>>) {
        let root = fixture(name);
        let tree = PciTree::read(&root).unwrap();
        snapshot(&format!("{name}.tree.txt"), &tree_text(&tree));
        let devices = default_matrix_devices(&tree);
        let cells = Topology::new(&tree).matrix(&devices, &devices);
        snapshot(
            &format!("{name}.matrix.txt"),
            &matrix_text(&tree, &devices, &cells),
        );
        (root, tree, devices, cells)
    }

    #[test]
    fn the_views_of_the_switch_fixture() {
        let (root, tree, _, _) = tree_and_matrix("switch");
        let (pt, ct, v) = explained(&root, &tree, "/dev/nvme0n1", "/dev/nvme1n1");
        snapshot("switch.explain.txt", &explain_text(&tree, &pt, &ct, &v));
        snapshot("switch.explain.dot", &dot(&tree, Some(&v)));
        snapshot("switch.explain.svg", &svg(&tree, Some(&v)));
        let pairs = pairs(&root, &tree, &Topology::new(&tree)).unwrap();
        snapshot("switch.pairs.txt", &pairs_text(&pairs));
    }

    #[test]
    fn p2p_works_when_the_verdict_allows_it_and_the_clients_queue_can_target_p2pmem() {
        let (root, tree, _, _) = tree_and_matrix("switch");
        let (pt, mut ct, v) = explained(&root, &tree, "/dev/nvme0n1", "/dev/nvme1n1");
        assert!(v.is_p2p() && ct.p2p_queue);
        assert!(Explain::new(&pt, &ct, &v).p2p);
        ct.p2p_queue = false;
        assert!(
            !Explain::new(&pt, &ct, &v).p2p,
            "a queue without P2PDMA refuses"
        );
        ct.kind = TargetKind::PciFunction;
        assert!(
            Explain::new(&pt, &ct, &v).p2p,
            "a PCI function has no queue"
        );
        let (mroot, mtree, _, _) = tree_and_matrix("mixed");
        let (pt, ct, v) = explained(&mroot, &mtree, "/dev/nvme0n1", "/dev/nvme1n1");
        assert!(ct.p2p_queue && !Explain::new(&pt, &ct, &v).p2p);
    }

    #[test]
    fn the_views_of_the_mixed_fixture() {
        let (root, tree, devices, cells) = tree_and_matrix("mixed");
        let json = serde_json::to_value(Matrix::new(&tree, &devices, &cells)).unwrap();
        assert_eq!(
            json.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["cells", "devices", "providers"]
        );
        let (pt, ct, v) = explained(&root, &tree, "/dev/nvme0n1", "/dev/nvme1n1");
        assert!(!v.is_p2p());
        snapshot("mixed.explain.txt", &explain_text(&tree, &pt, &ct, &v));
        snapshot("mixed.tree.dot", &dot(&tree, None));
        snapshot("mixed.tree.svg", &svg(&tree, None));
        let choice = Topology::new(&tree)
            .choose_provider(&[ct.bdf.unwrap()])
            .unwrap();
        snapshot("mixed.choose.txt", &choice_text(&tree, &choice));
    }
}
