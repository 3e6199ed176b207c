//! The layer table and the test that holds the crate to it.
//!
//! Every `crate::<module>` path in `src/` (in `use` lines and inline, comments skipped)
//! must point to a module of the same or a lower layer, and the module graph must have
//! no cycle. The same table is in `docs/architecture.md`; a test checks they agree.
//!
//! | layer | modules |
//! |-------|---------|
//! | 0 | sysfs, bdf, display |
//! | 1 | pci, host, sysfs::builder |
//! | 2 | kernel_rules, kernel_fixes, topology, resolve, refusal |
//! | 3 | blockdev, revoke, p2pmem, copy, bench, probe |
//! | 4 | snapshot, report |

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layer of each module (a submodule listed on its own overrides its parent).
pub(crate) const LAYERS: &[(usize, &[&str])] = &[
    (0, &["sysfs", "bdf", "display"]),
    (1, &["pci", "host", "sysfs::builder"]),
    (
        2,
        &[
            "kernel_rules",
            "kernel_fixes",
            "topology",
            "resolve",
            "refusal",
        ],
    ),
    (
        3,
        &["blockdev", "revoke", "p2pmem", "copy", "bench", "probe"],
    ),
    (4, &["snapshot", "report"]),
];

/// Items re-exported at the crate root, and the module that owns them.
const ROOT_REEXPORTS: &[(&str, &str)] = &[("Bdf", "bdf")];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .find(|(_, mods)| mods.contains(&module))
        .map(|(layer, _)| *layer)
}

/// The module a source file belongs to: `src/copy/plan.rs` -> `copy`,
/// `src/sysfs/builder.rs` -> `sysfs::builder` (listed on its own).
fn module_of_file(rel: &Path) -> Option<String> {
    let parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let first = parts.first()?;
    if first == "lib" || first == "layers" {
        return None;
    }
    if parts.len() >= 2 {
        let sub = format!("{first}::{}", parts[1]);
        if layer_of(&sub).is_some() {
            return Some(sub);
        }
    }
    Some(first.clone())
}

/// The module a `crate::a::b` path names (`crate::sysfs::builder::X` -> `sysfs::builder`).
fn module_of_path(path: &[String]) -> Option<String> {
    let first = path.first()?;
    if let Some((_, owner)) = ROOT_REEXPORTS.iter().find(|(item, _)| item == first) {
        return Some((*owner).to_owned());
    }
    if let Some(second) = path.get(1) {
        let sub = format!("{first}::{second}");
        if layer_of(&sub).is_some() {
            return Some(sub);
        }
    }
    Some(first.clone())
}

/// Removes `//` comments (line and doc comments); string contents are kept.
fn strip_comments(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::` path in `source`, expanding `crate::{a, b::{c}}` groups one level.
fn crate_paths(source: &str) -> Vec<Vec<String>> {
    let text = strip_comments(source);
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("crate::") {
        // `$crate::` and `p2pdma_crate::` are not ours.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut end = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = i;
                    break;
                }
            }
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end].chars().chain(std::iter::once(',')) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let path = split_path(&item);
                        if !path.is_empty() {
                            out.push(path);
                        }
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        } else {
            let path = split_path(rest);
            if !path.is_empty() {
                out.push(path);
            }
        }
    }
    out
}

/// `a::b::{c}` / `a::B;` -> `["a", "b"]` (identifiers up to the first non-path char).
fn split_path(text: &str) -> Vec<String> {
    let mut path = Vec::new();
    let mut rest = text.trim_start();
    loop {
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            break;
        }
        rest = &rest[ident.len()..];
        path.push(ident);
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    path
}

/// Checks `files` (module-relative path, source text) against [`LAYERS`]: one line per
/// upward use, unknown module, or cycle.
fn check(files: &[(String, String)]) -> (Vec<String>, BTreeMap<String, BTreeSet<String>>) {
    let mut problems = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, source) in files {
        let Some(user) = module_of_file(Path::new(rel)) else {
            continue;
        };
        let Some(user_layer) = layer_of(&user) else {
            problems.push(format!(
                "module {user} ({rel}) is not in the layer table: add it to LAYERS and docs/architecture.md"
            ));
            continue;
        };
        for path in crate_paths(source) {
            let Some(used) = module_of_path(&path) else {
                continue;
            };
            if used == user || used.starts_with(&format!("{user}::")) {
                continue;
            }
            if user.starts_with(&format!("{used}::")) {
                // A listed submodule using its parent's helpers (sysfs::builder -> sysfs).
                graph.entry(user.clone()).or_default().insert(used.clone());
                continue;
            }
            match layer_of(&used) {
                None => problems.push(format!(
                    "module {user} ({rel}) uses crate::{}, which is not in the layer table",
                    path.join("::")
                )),
                Some(used_layer) if used_layer > user_layer => problems.push(format!(
                    "module {user} (layer {user_layer}) uses {used} (layer {used_layer}) in {rel}"
                )),
                Some(_) => {
                    graph.entry(user.clone()).or_default().insert(used.clone());
                }
            }
        }
    }
    problems.extend(cycles(&graph));
    (problems, graph)
}

/// One line per cycle found among same-layer uses.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<String>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            found.push(format!("cycle: {}", cycle.join(" -> ")));
            return;
        }
        if !done.insert(node.to_owned()) {
            return;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, stack, done, found);
        }
        stack.pop();
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Vec<(String, String)> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let rel = path
                        .strip_prefix(&src)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    files.push((rel, std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
        files.sort();
        files
    }

    #[test]
    fn no_module_uses_one_above_it_and_there_is_no_cycle() {
        let files = sources();
        assert!(files.len() > 20, "read only {} source files", files.len());
        let (problems, graph) = check(&files);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        // The check saw the uses it is meant to judge.
        assert!(graph["pci"].contains("host"), "{graph:?}");
        assert!(graph["topology"].contains("pci"), "{graph:?}");
    }

    #[test]
    fn an_upward_use_and_a_cycle_are_named() {
        let files = vec![
            (
                "pci.rs".to_owned(),
                "use crate::snapshot::Snap;\nuse crate::{host::HostFacts, sysfs::{self, SysfsRoot}, Bdf};"
                    .to_owned(),
            ),
            ("host.rs".to_owned(), "fn f() { crate::pci::x(); }".to_owned()),
            (
                "sysfs/builder.rs".to_owned(),
                "// crate::report is only mentioned\nuse crate::host::HostFacts;".to_owned(),
            ),
        ];
        let (problems, graph) = check(&files);
        assert!(
            problems.contains(&"module pci (layer 1) uses snapshot (layer 4) in pci.rs".to_owned()),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p == "cycle: host -> pci -> host"),
            "{problems:?}"
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(graph["pci"].contains("bdf") && graph["pci"].contains("sysfs"));
        assert!(graph["sysfs::builder"].contains("host"));
    }

    #[test]
    fn docs_architecture_has_the_same_table() {
        let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/architecture.md");
        let text = std::fs::read_to_string(&doc).unwrap();
        let rows: Vec<(usize, Vec<String>)> = text
            .lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let layer = cells.get(1)?.parse().ok()?;
                let mods = cells
                    .get(2)?
                    .split(',')
                    .map(|m| m.trim().trim_matches('`').to_owned())
                    .collect();
                Some((layer, mods))
            })
            .collect();
        let table: Vec<(usize, Vec<String>)> = LAYERS
            .iter()
            .map(|(l, m)| (*l, m.iter().map(|s| (*s).to_owned()).collect()))
            .collect();
        assert_eq!(
            rows, table,
            "docs/architecture.md's layer table differs from LAYERS"
        );
    }
}
