//! Imports go one way: the runner drives the sources, stages and sink, and nothing calls back
//! into it; the sink is the runner's alone; telemetry (memory figures, progress) is callable from
//! anywhere and calls nothing of the crate but the allocator's figure. A text check of `src/`.

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

#[test]
fn imports_go_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(files.len() > 20);
    let mut problems = Vec::new();
    for file in &files {
        let name = file.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(file).unwrap();
        let uses =
            |module: &str| text.contains(&format!("crate::{module}::")) || text.contains(&format!("crate::{module}}}"));
        if !["runner.rs", "main.rs", "lib.rs"].contains(&name.as_str()) && uses("runner") {
            problems.push(format!("{name} calls the runner"));
        }
        if !["runner.rs", "sink.rs", "main.rs", "lib.rs"].contains(&name.as_str())
            && (uses("sink") || text.contains("sink::"))
        {
            problems.push(format!("{name} calls the sink"));
        }
        if name == "telemetry.rs" {
            let calls: Vec<&str> = text.match_indices("crate::").map(|(at, _)| &text[at..]).collect();
            if calls.iter().any(|call| !call.starts_with("crate::alloc::")) {
                problems.push("telemetry.rs calls into the crate".to_string());
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
