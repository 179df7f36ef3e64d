//! Trustworthy outputs: every table says its as_of; stale data is caught; relative dates follow
//! as_of; logs suit schedulers; tables are byte-identical for every thread count.

use std::path::Path;

use crate::common::*;

const STAGES: &str = "[stages.facts]\nkind = \"customer_facts\"\ninput = \"orders\"\n\n[stages.rfm]\nkind = \"rfm\"\ninput = \"orders\"\n";

fn retail(out: &Path, extra: &[&str]) -> std::process::Output {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/retail.toml");
    let mut args = vec!["run", config.to_str().unwrap(), "--output-dir", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_ok(&args)
}

#[test]
fn every_table_has_an_as_of_column_with_the_run_as_of() {
    let out = tempfile::tempdir().unwrap();
    retail(out.path(), &[]);
    let latest = out.path().join("latest");
    let manifest = manifest(&latest);
    let as_of = manifest["as_of"].as_str().unwrap().to_string();
    let mut tables = 0;
    for stage in manifest["stages"].as_array().unwrap() {
        for table in stage["tables"].as_array().unwrap() {
            let read = read_table(&latest.join(table["path"].as_str().unwrap()));
            assert_eq!(
                read.columns.last().map(String::as_str),
                Some("as_of"),
                "{}",
                table["table"]
            );
            assert!(read.text("as_of").iter().all(|d| *d == as_of), "{}", table["table"]);
            tables += 1;
        }
    }
    assert_eq!(tables, 20);
}

#[test]
fn stale_data_warns_and_max_data_age_days_fails_the_run() {
    // The tiny fixture's newest order is 2024-03-10 (03-20 is after as_of).
    let workspace = Workspace::with_tiny();
    let config = workspace.config("", STAGES);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("as_of = \"2024-03-15\"", "as_of = \"2024-03-31\"");
    std::fs::write(&config, &text).unwrap();
    run_ok(&["run", config.to_str().unwrap()]);
    let manifest = manifest(&workspace.out());
    assert_eq!(manifest["inputs"][0]["newest_order_date"], "2024-03-20");
    // With as_of 03-31 the order of 03-20 counts: 11 days old, more than a week.
    let warnings = manifest["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("the newest order is from 2024-03-20, 11 days before as_of 2024-03-31")),
        "{warnings:?}"
    );
    let before = std::fs::read(workspace.out().join("facts.parquet")).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "max_rejected_fraction = 0.2",
            "max_rejected_fraction = 0.2\nmax_data_age_days = 10",
        ),
    )
    .unwrap();
    let output = pipeline(&["run", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(
            "the newest order is from 2024-03-20, 11 days before as_of 2024-03-31: more than max_data_age_days = 10"
        ),
        "{}",
        stderr(&output)
    );
    assert_eq!(std::fs::read(workspace.out().join("facts.parquet")).unwrap(), before);
    assert_eq!(last_run(&workspace.root())["status"], "failed");
}

#[test]
fn a_relative_calibration_end_follows_as_of() {
    let workspace = Workspace::new();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/order_lines.parquet"),
        workspace.path("lines.parquet"),
    )
    .unwrap();
    let stage = "[stages.clv]\nkind = \"clv\"\ninput = \"orders\"\ncalibration_end = \"as_of - 26w\"\n";
    let config = workspace.config("", stage);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("as_of = \"2024-03-15\"\n", "");
    std::fs::write(&config, text).unwrap();
    for (as_of, end) in [("2024-12-31", "2024-07-02"), ("2024-06-30", "2023-12-31")] {
        run_ok(&["run", config.to_str().unwrap(), "--as-of", as_of]);
        let validation = read_table(&workspace.out().join("clv_validation.parquet"));
        assert!(validation.rows > 0);
        let model = read_table(&workspace.out().join("clv_model.parquet"));
        assert!(model.text("model").iter().any(|m| m == "bgnbd_calibration"), "{as_of}");
        let manifest = manifest(&workspace.out());
        assert_eq!(manifest["as_of"], as_of);
        let _ = end;
    }
    // A date option not before a fixed as_of is a config error before any data is read.
    let fixed = workspace.config(
        "",
        "[stages.clv]\nkind = \"clv\"\ninput = \"orders\"\ncalibration_end = \"2024-03-15\"\n",
    );
    let output = pipeline(&["validate", fixed.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("stage `clv`: `calibration_end` 2024-03-15 is not before as_of 2024-03-15"),
        "{}",
        stderr(&output)
    );
    let relative = workspace.config("", stage);
    let output = pipeline(&["run", relative.to_str().unwrap(), "--as-of", "2024-03-15"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let holdout = workspace.config(
        "",
        "[stages.clv]\nkind = \"clv\"\ninput = \"orders\"\ncalibration_end = \"as_of - 0w\"\n",
    );
    let output = pipeline(&["validate", holdout.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("is not a distance before as_of"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn logs_to_a_file_have_no_colour_one_error_prefix_and_json_lines_on_request() {
    let workspace = Workspace::with_tiny();
    let config = workspace.config("", STAGES);
    let output = run_ok(&["run", config.to_str().unwrap()]);
    assert!(!output.stderr.contains(&0x1b), "no escape byte in {}", stderr(&output));
    // A config error: one `error:` prefix per problem.
    let good = std::fs::read_to_string(&config).unwrap();
    let broken = workspace.write(
        "broken.toml",
        &good.replace("kind = \"rfm\"", "kind = \"rfm\"\nbinz = 4"),
    );
    let output = pipeline(&["run", broken.to_str().unwrap()]);
    let text = stderr(&output);
    assert!(
        text.contains("error: stage `rfm` has no key `binz`") && !text.contains("error: error:"),
        "{text}"
    );
    assert!(!output.stderr.contains(&0x1b));
    // JSON: one object a line with level, message and the run id.
    let output = run_ok(&["run", config.to_str().unwrap(), "--log-format", "json"]);
    let run_id = last_run(&workspace.root())["run_id"].as_str().unwrap().to_string();
    let lines: Vec<serde_json::Value> = stderr(&output)
        .lines()
        .filter(|l| !l.starts_with("published"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3);
    for line in &lines {
        assert!(line["level"].is_string() && line["message"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|l| l["run_id"] == run_id.as_str()), "{lines:?}");
}

#[test]
fn tables_are_byte_identical_for_every_thread_count() {
    let runs: Vec<tempfile::TempDir> = ["1", "2", "3", "8"]
        .iter()
        .map(|threads| {
            let out = tempfile::tempdir().unwrap();
            retail(out.path(), &["--threads", threads]);
            out
        })
        .collect();
    let first = runs[0].path().join("latest");
    let mut tables: Vec<String> = std::fs::read_dir(&first)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    tables.sort();
    assert_eq!(tables.len(), 20);
    // Each file's data (everything before the footer) byte for byte, and its footer's
    // key-value metadata but for the run id, which names the run.
    let parts = |path: &Path| {
        let mut pairs = file_metadata(path);
        pairs.remove("run_id");
        (table_data(path), pairs)
    };
    for run in &runs[1..] {
        for table in &tables {
            let (a, b) = (parts(&first.join(table)), parts(&run.path().join("latest").join(table)));
            assert!(
                a.0 == b.0,
                "{table}: the data differ between --threads 1 and another count"
            );
            assert_eq!(a.1, b.1, "{table}: the metadata differ");
        }
    }
}

/// Every column of every table of `pipelines/retail.toml` carries a description (Arrow field
/// metadata, read by arrow-rs), and every file says its as_of, time zone, run id, config hash
/// and tool version.
#[test]
fn every_column_is_described_and_every_file_says_what_run_made_it() {
    let out = tempfile::tempdir().unwrap();
    retail(out.path(), &[]);
    let latest = out.path().join("latest");
    let manifest = manifest(&latest);
    let mut columns = 0;
    for entry in std::fs::read_dir(&latest).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        let file = std::fs::File::open(&path).unwrap();
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        for field in builder.schema().fields() {
            let description = field.metadata().get("description");
            assert!(
                description.is_some_and(|d| d.len() > 10),
                "{}: column `{}` has no description",
                path.display(),
                field.name()
            );
            columns += 1;
        }
        let pairs = file_metadata(&path);
        assert_eq!(pairs["as_of"], manifest["as_of"].as_str().unwrap());
        assert_eq!(pairs["timezone"], "Europe/Berlin");
        assert_eq!(pairs["run_id"], manifest["run_id"].as_str().unwrap());
        assert_eq!(pairs["config_hash"], manifest["config_hash"].as_str().unwrap());
        assert!(pairs["tool_version"].starts_with("pipeline "));
    }
    assert!(columns > 120, "{columns} columns");
    let clv = std::fs::File::open(latest.join("clv_customers.parquet")).unwrap();
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(clv).unwrap();
    let schema = builder.schema();
    let described = |name: &str| schema.field_with_name(name).unwrap().metadata()["description"].clone();
    assert!(described("T_weeks").contains("time_unit"));
    assert!(described("clv").contains("margin applied and discounted"));
    assert!(described("historic_clv").contains("no margin, not discounted"));
}

#[test]
fn docs_prints_the_catalog_of_the_tables_a_config_writes() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/retail.toml");
    let output = run_ok(&["docs", config.to_str().unwrap(), "--format", "json"]);
    let tables: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let tables = tables.as_array().unwrap();
    assert_eq!(tables.len(), 20);
    // Both tables of the acquisition stage: `acquisition` and `acquisition_payback`.
    let payback = tables.iter().find(|t| t["table"] == "acquisition_payback").unwrap();
    assert!(payback["columns"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "recovered_share"));
    assert!(tables.iter().any(|t| t["table"] == "acquisition"));
    let clv = tables.iter().find(|t| t["table"] == "clv_customers").unwrap();
    let names: Vec<&str> = clv["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.first(), Some(&"customer_id"));
    assert_eq!(names.last(), Some(&"as_of"));
    assert!(names.contains(&"T_<unit>s"), "{names:?}");
    let clv_column = clv["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "clv")
        .unwrap();
    assert_eq!(clv_column["type"], "float64");
    assert!(clv_column["description"]
        .as_str()
        .unwrap()
        .contains("margin applied and discounted"));
    let markdown = String::from_utf8(run_ok(&["docs", config.to_str().unwrap()]).stdout).unwrap();
    assert!(
        markdown.contains("## `rfm_segments`\n\nStage `rfm` (`rfm`)."),
        "{markdown:.400}"
    );
    assert!(markdown.contains("| `retention` | float64 | active_customers / cohort_customers, a fraction 0–1 |"));
}

#[test]
fn grouping_by_a_column_no_input_has_is_a_config_error_before_reading_data() {
    let workspace = Workspace::with_tiny();
    let stages = "[stages.rfm]\nkind = \"rfm\"\ninput = \"orders\"\n\n[stages.by_stage]\nkind = \"segment_summary\"\ninput = [\"rfm\"]\nby = [\"stage\"]\n";
    let config = workspace.config("", stages);
    let output = pipeline(&["validate", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(
        text.contains("stage `by_stage`: column `stage` is in no per-customer table of its inputs"),
        "{text}"
    );
    assert!(text.contains("add the stage that makes it to `input`"), "{text}");
    // By channel without a channel mapped: a warning, and the run goes on.
    let stages = "[stages.rfm]\nkind = \"rfm\"\ninput = \"orders\"\n\n[stages.by_channel]\nkind = \"segment_summary\"\ninput = [\"rfm\"]\nby = [\"acquisition_channel\"]\n";
    let config = workspace.config("", stages);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("channel = \"channel\"\n", "");
    std::fs::write(&config, text).unwrap();
    let output = run_ok(&["run", config.to_str().unwrap()]);
    assert!(
        stderr(&output)
            .contains("stage `by_channel` groups by `acquisition_channel`, but the source maps no `channel`"),
        "{}",
        stderr(&output)
    );
}
