//! Imports go one way (docs/architecture.md): `core` (config, plan, stage kinds, models) imports
//! nothing outside `core`; `tuning` imports nothing but `core`; `io` (sources, sinks) imports
//! neither the runner nor the command line; only `main` calls the runner and only the runner
//! calls the sink; telemetry calls nothing of the crate but the allocator's figure. And no two
//! modules import each other, directly or around a loop. A text check of `src/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The module a path names, at the granularity the rules speak of: `core::stages`,
/// `io::source`, `tuning::alloc`, `runner`, `lib` (the crate root's own items).
fn module_of(parts: &[&str]) -> String {
    match parts {
        [] => "lib".into(),
        [layer @ ("core" | "io" | "tuning"), next, ..] => format!("{layer}::{next}"),
        [first, ..] if first.chars().next().is_some_and(|c| c.is_ascii_lowercase()) && *first != "lib" => {
            (*first).to_string()
        }
        _ => "lib".into(),
    }
}

/// Each file's module and the modules it refers to (`crate::a::b…` paths outside comments).
fn graph(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(root, &mut files);
    assert!(files.len() > 30, "{} files", files.len());
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(root).unwrap().with_extension("");
        let parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().to_string()).collect();
        let parts: Vec<&str> = parts
            .iter()
            .map(String::as_str)
            .filter(|p| !matches!(*p, "mod" | "lib" | "main"))
            .collect();
        let name = if relative == Path::new("main") {
            "main".to_string()
        } else {
            module_of(&parts)
        };
        let text = std::fs::read_to_string(file).unwrap();
        let targets = edges.entry(name.clone()).or_default();
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let path = &line[at + "crate::".len()..];
                let words: Vec<&str> = path
                    .split("::")
                    .map(|w| {
                        w.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                            .next()
                            .unwrap_or("")
                    })
                    .take(2)
                    .collect();
                let target = module_of(&words);
                if target != name {
                    targets.insert(target);
                }
            }
        }
    }
    edges
}

#[test]
fn imports_go_one_way() {
    let edges = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let mut problems = Vec::new();
    for (module, targets) in &edges {
        for target in targets {
            let allowed = if module.starts_with("core::") {
                target.starts_with("core::")
            } else if module.starts_with("tuning::") {
                target.starts_with("core::")
            } else if module.starts_with("io::") {
                !matches!(target.as_str(), "runner" | "cli" | "main" | "generate")
            } else if module == "telemetry" {
                target == "tuning::alloc"
            } else {
                true
            };
            let runner_only = target == "runner" && !matches!(module.as_str(), "main");
            let sink_only = target == "io::sink" && !matches!(module.as_str(), "runner");
            if !allowed || runner_only || sink_only {
                problems.push(format!("{module} imports {target}"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(edges["core::stages"].contains("core::prepare"), "{edges:#?}");
}

#[test]
fn no_module_imports_itself_around_a_loop() {
    let edges = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    // Depth-first search; a module met again on the current path closes a loop.
    fn visit<'a>(
        module: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        loops: &mut Vec<String>,
    ) {
        if let Some(start) = path.iter().position(|m| *m == module) {
            loops.push(format!("{} → {module}", path[start..].join(" → ")));
            return;
        }
        if !done.insert(module) {
            return;
        }
        path.push(module);
        for target in edges.get(module).into_iter().flatten() {
            visit(target, edges, path, done, loops);
        }
        path.pop();
    }
    let mut loops = Vec::new();
    let mut done = BTreeSet::new();
    for module in edges.keys() {
        visit(module, &edges, &mut Vec::new(), &mut done, &mut loops);
    }
    assert!(loops.is_empty(), "{loops:#?}");
    assert!(edges.len() > 20, "{edges:#?}");
}
