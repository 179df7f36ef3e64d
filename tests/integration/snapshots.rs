//! Snapshots: every run publishes one folder `OUT/runs/<as_of>_<run id>/` and points `OUT/latest`
//! at it; `--select` carries the other tables over, marked with their own as_of; `keep_runs`
//! prunes the oldest; failures (matrix.rs, faults.rs) leave `latest` as it was.

use crate::common::*;

const STAGES: &str = "[stages.facts]\nkind = \"customer_facts\"\ninput = \"orders\"\n\n[stages.rfm]\nkind = \"rfm\"\ninput = \"orders\"\n";

#[test]
fn select_rebuilds_its_tables_and_carries_the_others_over_with_their_own_as_of() {
    let workspace = Workspace::with_tiny();
    let config = workspace.config("", STAGES);
    run_ok(&["run", config.to_str().unwrap()]);
    let first = manifest(&workspace.out());
    let first_run = first["run_id"].as_str().unwrap().to_string();
    assert_eq!(first["as_of"], "2024-03-15");
    assert_eq!(first["carried_over"].as_array().unwrap().len(), 0);
    let facts_before = std::fs::read(workspace.out().join("facts.parquet")).unwrap();

    run_ok(&[
        "run",
        config.to_str().unwrap(),
        "--select",
        "rfm",
        "--as-of",
        "2024-03-10",
    ]);
    let second = manifest(&workspace.out());
    assert_ne!(second["run_id"], first["run_id"]);
    assert_eq!(second["as_of"], "2024-03-10");
    let rebuilt: Vec<&str> = second["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(rebuilt, ["rfm"]);
    let carried = second["carried_over"].as_array().unwrap();
    assert_eq!(carried.len(), 1, "{carried:?}");
    assert_eq!(carried[0]["table"], "facts");
    assert_eq!(carried[0]["as_of"], "2024-03-15");
    assert_eq!(carried[0]["from_run_id"], first_run.as_str());
    // The carried table is the first run's, byte for byte; every table is in the new snapshot.
    assert_eq!(
        std::fs::read(workspace.out().join("facts.parquet")).unwrap(),
        facts_before
    );
    for table in ["facts", "rfm_customers", "rfm_thresholds", "rfm_segments"] {
        assert!(workspace.out().join(format!("{table}.parquet")).is_file(), "{table}");
    }
    // rfm was rebuilt for the earlier date: customer 1's last purchase (03-02) is 8 days back.
    let rfm = read_table(&workspace.out().join("rfm_customers.parquet"));
    let one = rfm.find(&[("customer_id", "1")]);
    assert_eq!(rfm.int("recency_days")[one], 8);
    // Both snapshots are kept, named by as_of and run id; `latest` names the second.
    let names = snapshot_names(&workspace.root());
    assert_eq!(
        names,
        [
            format!("2024-03-10_{}", second["run_id"].as_str().unwrap()),
            format!("2024-03-15_{first_run}")
        ]
    );
    assert_eq!(
        std::fs::read_link(workspace.out()).unwrap(),
        std::path::Path::new("runs").join(&names[0])
    );
    assert_eq!(
        second["snapshot"],
        workspace.root().join("runs").join(&names[0]).display().to_string()
    );

    // A carried table keeps its origin through a further --select run.
    run_ok(&["run", config.to_str().unwrap(), "--select", "rfm"]);
    let third = manifest(&workspace.out());
    let carried = third["carried_over"].as_array().unwrap();
    assert_eq!(carried[0]["as_of"], "2024-03-15");
    assert_eq!(carried[0]["from_run_id"], first_run.as_str());
}

#[test]
fn keep_runs_keeps_the_newest_snapshots() {
    let workspace = Workspace::with_tiny();
    let config = workspace.config("keep_runs = 2", STAGES);
    let mut runs = Vec::new();
    for _ in 0..4 {
        run_ok(&["run", config.to_str().unwrap()]);
        runs.push(last_run(&workspace.root())["run_id"].as_str().unwrap().to_string());
    }
    let names = snapshot_names(&workspace.root());
    let expected: Vec<String> = runs[2..].iter().map(|id| format!("2024-03-15_{id}")).collect();
    assert_eq!(names, expected);
    assert_eq!(
        last_run(&workspace.root())["snapshot"],
        manifest(&workspace.out())["snapshot"]
    );
}

#[test]
fn a_full_run_carries_nothing_over() {
    let workspace = Workspace::with_tiny();
    run_ok(&["run", workspace.config("", STAGES).to_str().unwrap()]);
    assert!(workspace.out().join("facts.parquet").is_file());
    // The facts stage leaves the config: its table leaves the next snapshot.
    let config = workspace.config("", "[stages.rfm]\nkind = \"rfm\"\ninput = \"orders\"\n");
    run_ok(&["run", config.to_str().unwrap()]);
    assert!(!workspace.out().join("facts.parquet").exists());
    assert!(workspace.out().join("rfm_customers.parquet").is_file());
    assert_eq!(manifest(&workspace.out())["carried_over"].as_array().unwrap().len(), 0);
    // Even with --select, only the tables of configured stages are carried.
    run_ok(&["run", config.to_str().unwrap(), "--select", "rfm"]);
    assert!(!workspace.out().join("facts.parquet").exists());
}
