//! Guards the shape of the code: the modules under `src/` import one another without cycles, and
//! layers point one way (transport → service → core), as ARCHITECTURE.md says.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules of the library and the top-level modules each refers to with `crate::`.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap();
        let module = first
            .as_os_str()
            .to_str()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if ["lib", "main", "cli"].contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let uses = graph.entry(module.clone()).or_default();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
            // `use crate::{a, b}` groups.
            if let Some(group) = line.trim().strip_prefix("use crate::{") {
                for name in group.split([',', '}', ' ']) {
                    let name = name.split("::").next().unwrap_or("");
                    if !name.is_empty() && name != module {
                        uses.insert(name.to_string());
                    }
                }
            }
        }
    }
    graph
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// A path `from` → ... → `to` through the graph, if there is one.
fn path_between(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap();
        for next in graph.get(last).into_iter().flatten() {
            let mut longer = path.clone();
            longer.push(next.clone());
            if next == to {
                return Some(longer);
            }
            if seen.insert(next.clone()) {
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn modules_import_one_another_without_cycles() {
    let graph = module_graph();
    assert!(graph.contains_key("service") && graph.contains_key("decision"));
    let mut cycles = Vec::new();
    for module in graph.keys() {
        if let Some(cycle) = path_between(&graph, module, module) {
            cycles.push(cycle.join(" → "));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn layers_point_one_way() {
    let graph = module_graph();
    // Nothing below the transport knows it; the pure decision knows no I/O edge.
    let rules: [(&str, &[&str]); 2] = [
        ("service", &["http", "daemon", "front"]),
        (
            "decision",
            &["http", "service", "daemon", "door", "audit", "snapshots"],
        ),
    ];
    for (module, forbidden) in &rules {
        for target in *forbidden {
            assert!(
                path_between(&graph, module, target).is_none(),
                "`{module}` reaches `{target}`: {:?}",
                path_between(&graph, module, target)
            );
        }
    }
    for core in [
        "record",
        "frame",
        "vision",
        "gallery",
        "recognition",
        "body",
        "codes",
        "confirmation",
        "config",
    ] {
        for edge in ["http", "service", "daemon", "front"] {
            assert!(
                path_between(&graph, core, edge).is_none(),
                "`{core}` reaches `{edge}`: {:?}",
                path_between(&graph, core, edge)
            );
        }
    }
}
