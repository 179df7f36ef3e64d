//! Faults: kill -9 at many moments of a run, two runs on one output directory, stale locks,
//! an unwritable output. Outputs are always either the complete previous tables or complete new
//! ones, and a manifest never says `succeeded` for a run that did not finish.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const TABLES: &[&str] = &[
    "customer_facts",
    "cohorts",
    "rfm_customers",
    "rfm_segments",
    "lifecycle_snapshots",
];

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pipeline"))
}

/// A workspace with a few hundred thousand generated lines and a config over them.
fn sizeable(lines: u64) -> (Workspace, PathBuf) {
    let workspace = Workspace::new();
    let data = workspace.path("lines.parquet");
    run_ok(&[
        "generate-sample",
        "--lines",
        &lines.to_string(),
        "--out",
        data.to_str().unwrap(),
        "--seed",
        "3",
    ]);
    let config = workspace.write(
        "pipeline.toml",
        r#"[pipeline]
output_dir = "out"
[sources.orders]
path = "lines.parquet"
include = { status = ["completed", "shipped"] }
[sources.orders.columns]
ordered_at = "created_at"
amount = "line_amount"
status = "status"
channel = "channel"
[stages.customer_facts]
kind = "customer_facts"
[stages.cohorts]
kind = "cohort_retention"
granularity = "week"
dimensions = ["acquisition_channel"]
[stages.rfm]
kind = "rfm"
[stages.lifecycle]
kind = "lifecycle"
"#,
    );
    (workspace, config)
}

fn spawn_run(config: &Path) -> Child {
    spawn_run_with(config, &[])
}

fn spawn_run_with(config: &Path, more: &[&str]) -> Child {
    Command::new(binary())
        .args(["run", config.to_str().unwrap(), "--log", "warn"])
        .args(more)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait until a run holds the output directory's lock (its pid is in the lock file).
fn wait_until_locked(workspace: &Workspace) {
    let lock = workspace.root().join(".pipeline.lock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&lock)
        .map(|pid| pid.trim().is_empty())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "the first run never took the lock");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The tables' data (footers hold the run id, so only the data repeat across runs).
fn snapshot(out: &Path) -> Vec<Vec<u8>> {
    TABLES
        .iter()
        .map(|t| table_data(&out.join(format!("{t}.parquet"))))
        .collect()
}

#[test]
fn kill_at_many_moments_leaves_complete_tables_and_an_honest_manifest() {
    let (workspace, config) = sizeable(150_000);
    let started = Instant::now();
    run_ok(&["run", config.to_str().unwrap()]);
    let full_run = started.elapsed();
    let reference = snapshot(&workspace.out());
    let kills = 16;
    let mut survived = 0;
    for k in 0..kills {
        let mut child = spawn_run(&config);
        // Moments spread over the whole run, from startup to publishing.
        let delay = full_run.mul_f64((k as f64 + 0.5) / kills as f64);
        std::thread::sleep(delay);
        child.kill().ok();
        // A run that exited on its own (also between a check and the kill) was not killed.
        let finished_before_kill = child.wait().unwrap().code().is_some();
        // Every table is complete, readable by an independent reader, and the same as before
        // (runs are deterministic, so the new version equals the previous one byte for byte).
        assert_eq!(snapshot(&workspace.out()), reference, "kill {k} after {delay:?}");
        let files: Vec<PathBuf> = TABLES
            .iter()
            .map(|t| workspace.out().join(format!("{t}.parquet")))
            .collect();
        let rows: Vec<u64> = files.iter().map(|f| read_table(f).rows as u64).collect();
        assert!(rows.iter().all(|r| *r > 0));
        if let Some(duckdb_rows) = duckdb_row_counts(&files) {
            assert_eq!(duckdb_rows, rows, "DuckDB and arrow-rs read the same tables");
        }
        // The published snapshot's manifest is complete. `_last_run.json` of a killed run says
        // `running`, unless the kill came after it had published (between writing `succeeded`
        // and exiting): then the published snapshot must be that run's own.
        let published = manifest(&workspace.out());
        assert_eq!(published["status"], "succeeded", "kill {k}");
        let last = last_run(&workspace.root());
        if last["pid"] == child.id() && !finished_before_kill && last["status"] != "running" {
            assert_eq!(last["status"], "succeeded", "kill {k}");
            assert_eq!(
                last["run_id"], published["run_id"],
                "kill {k}: _last_run.json says succeeded but its run is not the published one"
            );
        }
        survived += 1;
    }
    assert_eq!(survived, kills);
    // Temporary files may be left and the lock file names the killed run; the next run cleans up
    // and succeeds (the OS released the lock with the killed process).
    run_ok(&["run", config.to_str().unwrap()]);
    assert_eq!(manifest(&workspace.out())["status"], "succeeded");
    assert_eq!(last_run(&workspace.root())["status"], "succeeded");
    assert_eq!(snapshot(&workspace.out()), reference);
    let leftovers = temporary_files(&workspace.root());
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(
        std::fs::read_to_string(workspace.root().join(".pipeline.lock")).unwrap(),
        ""
    );
    // Published snapshots: at most `keep_runs` (7), the newest being `latest`.
    let names = snapshot_names(&workspace.root());
    assert!(names.len() <= 7, "{names:?}");
    let latest = std::fs::read_link(workspace.out()).unwrap();
    assert!(latest.ends_with(names.iter().max_by_key(|n| n.split_once('_').unwrap().1).unwrap()));
}

/// What a sharded run killed now has in its spill folder: lines of order shards (the spill
/// and fold passes), or per-customer rows (the sweeps over the customer shards).
fn spill_phase(root: &Path) -> Option<&'static str> {
    let spill = std::fs::read_dir(root.join("runs"))
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(".spill-"))?
        .path();
    let mut names: Vec<String> = Vec::new();
    for entry in walk(&spill) {
        names.push(entry.file_name().unwrap().to_string_lossy().to_string());
    }
    if names.iter().any(|n| n.starts_with("rows-")) {
        Some("sweeps")
    } else if names
        .iter()
        .any(|n| n.starts_with("lines-") || n.starts_with("orders-"))
    {
        Some("spill")
    } else {
        None
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// kill -9 in either pass of a bounded-memory run (spilling the input, sweeping the shards)
/// leaves the previous snapshot; the next run removes the spill folder and publishes.
#[test]
fn kill_during_a_sharded_run_leaves_the_previous_snapshot_and_no_spill_files() {
    let (workspace, config) = sizeable(150_000);
    let config_text = config.to_str().unwrap();
    run_ok(&["run", config_text, "--shards", "4"]);
    let reference = snapshot(&workspace.out());
    let started = Instant::now();
    run_ok(&["run", config_text, "--shards", "4"]);
    let full_run = started.elapsed();
    assert!(temporary_files(&workspace.root()).is_empty());
    let mut phases = std::collections::BTreeSet::new();
    let kills = 12;
    for k in 0..kills {
        let mut child = spawn_run_with(&config, &["--shards", "4"]);
        let delay = full_run.mul_f64((k as f64 + 0.5) / kills as f64);
        std::thread::sleep(delay);
        child.kill().ok();
        child.wait().unwrap();
        phases.extend(spill_phase(&workspace.root()));
        assert_eq!(snapshot(&workspace.out()), reference, "kill {k} after {delay:?}");
        assert_eq!(manifest(&workspace.out())["status"], "succeeded");
    }
    assert_eq!(
        phases.into_iter().collect::<Vec<_>>(),
        ["spill", "sweeps"],
        "kills landed in both passes"
    );
    run_ok(&["run", config_text, "--shards", "4"]);
    assert_eq!(snapshot(&workspace.out()), reference);
    let leftovers = temporary_files(&workspace.root());
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(last_run(&workspace.root())["status"], "succeeded");
}

#[test]
fn a_second_run_on_the_same_output_fails_fast_while_the_first_holds_the_lock() {
    let (workspace, config) = sizeable(20_000);
    run_ok(&["run", config.to_str().unwrap()]);
    let before = snapshot(&workspace.out());
    // The "first run" is this test holding the OS lock the way a run does, for as long as it
    // likes: no race with a real run that might finish before the second one starts.
    let lock_path = workspace.root().join(".pipeline.lock");
    let mut holder = std::fs::OpenOptions::new().write(true).open(&lock_path).unwrap();
    holder.lock().unwrap();
    use std::io::Write;
    writeln!(holder, "424242").unwrap();
    let started = Instant::now();
    let second = pipeline(&["run", config.to_str().unwrap()]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the second run must fail fast"
    );
    let text = stderr(&second);
    assert!(text.contains("is locked by another run (pid 424242)"), "{text}");
    assert!(text.contains(".pipeline.lock"), "{text}");
    assert_eq!(snapshot(&workspace.out()), before, "the locked output is untouched");
    // Released (as when the first run ends), the next run succeeds.
    holder.set_len(0).unwrap();
    drop(holder);
    run_ok(&["run", config.to_str().unwrap()]);
    assert_eq!(manifest(&workspace.out())["status"], "succeeded");
}

#[test]
fn with_lock_wait_seconds_the_second_run_waits_and_then_succeeds() {
    let (workspace, config) = sizeable(100_000);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[pipeline]\n", "[pipeline]\nlock_wait_seconds = 120\n");
    std::fs::write(&config, text).unwrap();
    let mut first = spawn_run(&config);
    wait_until_locked(&workspace);
    let second = run_ok(&["run", config.to_str().unwrap()]);
    assert!(first.wait().unwrap().success());
    let _ = second;
    let manifest = manifest(&workspace.out());
    assert_eq!(manifest["status"], "succeeded");
    assert_ne!(manifest["pid"], first.id(), "the waiting run finished last");
}

#[test]
fn a_lock_left_by_a_dead_process_does_not_block() {
    let workspace = Workspace::with_tiny();
    let config = workspace.config("", "[stages.facts]\nkind = \"customer_facts\"\ninput = \"orders\"\n");
    std::fs::create_dir_all(workspace.root()).unwrap();
    let mut dead = Command::new("true").spawn().unwrap();
    dead.wait().unwrap();
    std::fs::write(workspace.root().join(".pipeline.lock"), format!("{}\n", dead.id())).unwrap();
    let output = run_ok(&["run", config.to_str().unwrap()]);
    let text = stderr(&output);
    assert!(
        text.contains(&format!("the previous run (pid {}) did not finish", dead.id())),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(workspace.root().join(".pipeline.lock")).unwrap(),
        ""
    );
}

#[test]
fn an_unpublishable_output_fails_cleanly_and_keeps_previous_tables() {
    let workspace = Workspace::with_tiny();
    let config = workspace.config("", "[stages.facts]\nkind = \"customer_facts\"\ninput = \"orders\"\n");
    run_ok(&["run", config.to_str().unwrap()]);
    let before = std::fs::read(workspace.out().join("facts.parquet")).unwrap();
    let before_data = table_data(&workspace.out().join("facts.parquet"));
    let snapshots = snapshot_names(&workspace.root());
    // `latest` replaced by a plain folder: the run cannot point it at its snapshot.
    let target = std::fs::read_link(workspace.out()).unwrap();
    std::fs::remove_file(workspace.out()).unwrap();
    std::fs::create_dir(workspace.out()).unwrap();
    std::fs::write(workspace.out().join("facts.parquet"), &before).unwrap();
    let output = pipeline(&["run", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("latest` is a directory, not the symlink this tool keeps there"),
        "{}",
        stderr(&output)
    );
    let left = temporary_files(&workspace.root());
    assert!(left.is_empty(), "half-written files left: {left:?}");
    assert_eq!(snapshot_names(&workspace.root()), snapshots, "no snapshot left behind");
    assert_eq!(last_run(&workspace.root())["status"], "failed");
    std::fs::remove_dir_all(workspace.out()).unwrap();
    std::os::unix::fs::symlink(target, workspace.out()).unwrap();
    run_ok(&["run", config.to_str().unwrap()]);
    assert_eq!(table_data(&workspace.out().join("facts.parquet")), before_data);
}
