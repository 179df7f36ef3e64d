//! The bad-input matrix: every case runs after a good run, must exit with the expected code and
//! a message naming the file, column or key, must leave the previous tables byte for byte, and a
//! data failure must be recorded in the manifest. The table in docs/reliability.md is checked
//! against these results (set UPDATE_RELIABILITY=1 to regenerate it).

use std::path::Path;

use polars::prelude::*;

use crate::common::*;

const STAGES: &str = "[stages.facts]\nkind = \"customer_facts\"\ninput = \"orders\"\n\n[stages.rfm]\nkind = \"rfm\"\ninput = \"orders\"\n";

struct Case {
    name: &'static str,
    exit: i32,
    /// Text the error must contain (after replacing the workspace path with `<dir>`).
    message: &'static str,
    setup: fn(&Workspace),
}

fn rewrite(workspace: &Workspace, change: impl FnOnce(DataFrame) -> DataFrame) {
    write_parquet(&mut change(lines_frame(TINY)), &workspace.path("lines.parquet"));
}

fn edit_config(workspace: &Workspace, from: &str, to: &str) {
    let path = workspace.path("pipeline.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "config has no {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

fn null_in(workspace: &Workspace, column: &str, rows: usize) {
    rewrite(workspace, |frame| {
        let height = frame.height();
        let mask: Vec<bool> = (0..height).map(|i| i < rows).collect();
        frame
            .lazy()
            .with_column(
                when(lit(Series::new("mask".into(), mask)))
                    .then(lit(NULL).cast(frame_dtype(column)))
                    .otherwise(col(column))
                    .alias(column),
            )
            .collect()
            .unwrap()
    })
}

fn frame_dtype(column: &str) -> DataType {
    lines_frame(TINY).column(column).unwrap().dtype().clone()
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "input path does not exist",
            exit: 1,
            message: "input path `<dir>/lines.parquet` does not exist",
            setup: |w| std::fs::remove_file(w.path("lines.parquet")).unwrap(),
        },
        Case {
            name: "glob matches nothing",
            exit: 1,
            message: "glob `<dir>/none/*.parquet` matches no file",
            setup: |w| edit_config(w, "path = \"lines.parquet\"", "path = \"none/*.parquet\""),
        },
        Case {
            name: "file is not Parquet",
            exit: 1,
            message: "`<dir>/lines.parquet` cannot be read; re-export it, or remove it from the input: the file is not Parquet",
            setup: |w| std::fs::write(w.path("lines.parquet"), b"order_id,customer_id\n1,2\n").unwrap(),
        },
        Case {
            name: "truncated Parquet file among good ones",
            exit: 1,
            message: "`<dir>/parts/b.parquet` cannot be read; re-export it, or remove it from the input: the Parquet file is truncated",
            setup: |w| {
                std::fs::create_dir_all(w.path("parts")).unwrap();
                let bytes = std::fs::read(w.path("lines.parquet")).unwrap();
                std::fs::write(w.path("parts/a.parquet"), &bytes).unwrap();
                std::fs::write(w.path("parts/b.parquet"), &bytes[..bytes.len() / 2]).unwrap();
                edit_config(w, "path = \"lines.parquet\"", "path = \"parts/*.parquet\"");
            },
        },
        Case {
            name: "files with conflicting schemas",
            exit: 1,
            message: "source `orders`",
            setup: |w| {
                let frame = lines_frame(TINY);
                write_parquet(&mut frame.clone(), &w.path("parts/a.parquet"));
                let mut other = frame
                    .lazy()
                    .with_column(col("line_amount").cast(DataType::String))
                    .collect()
                    .unwrap();
                write_parquet(&mut other, &w.path("parts/b.parquet"));
                edit_config(w, "path = \"lines.parquet\"", "path = \"parts/*.parquet\"");
            },
        },
        Case {
            name: "mapped column missing",
            exit: 1,
            message: "column `line_amount` (mapped as `amount`) is not in the input",
            setup: |w| rewrite(w, |f| f.drop("line_amount").unwrap()),
        },
        Case {
            name: "amount stored as text",
            exit: 1,
            message: "column `line_amount` (mapped as `amount`) has type str: expected a number",
            setup: |w| {
                rewrite(w, |f| {
                    f.lazy()
                        .with_column(col("line_amount").cast(DataType::String))
                        .collect()
                        .unwrap()
                })
            },
        },
        Case {
            name: "ordered_at stored as integer",
            exit: 1,
            message: "column `created_at` (mapped as `ordered_at`) has type i64: expected a date, or a timestamp in s, ms, us or ns",
            setup: |w| {
                rewrite(w, |f| {
                    f.lazy()
                        .with_column(col("created_at").cast(DataType::Int64))
                        .collect()
                        .unwrap()
                })
            },
        },
        Case {
            name: "ordered_at stored as text",
            exit: 1,
            message: "column `created_at` (mapped as `ordered_at`) has type str: expected a date, or a timestamp in s, ms, us or ns",
            setup: |w| {
                rewrite(w, |f| {
                    f.lazy()
                        .with_column(col("created_at").cast(DataType::String))
                        .collect()
                        .unwrap()
                })
            },
        },
        Case {
            name: "customer_id stored as float",
            exit: 1,
            message: "column `customer_id` (mapped as `customer_id`) has type f64: expected an integer of any width, or text",
            setup: |w| {
                rewrite(w, |f| {
                    f.lazy()
                        .with_column(col("customer_id").cast(DataType::Float64))
                        .collect()
                        .unwrap()
                })
            },
        },
        Case {
            name: "null customer_id above max_rejected_fraction",
            exit: 1,
            message: "null_customer_id 4",
            setup: |w| null_in(w, "customer_id", 4),
        },
        Case {
            name: "null order_id above max_rejected_fraction",
            exit: 1,
            message: "null_order_id 4",
            setup: |w| null_in(w, "order_id", 4),
        },
        Case {
            name: "null ordered_at above max_rejected_fraction",
            exit: 1,
            message: "null_ordered_at 4",
            setup: |w| null_in(w, "created_at", 4),
        },
        Case {
            name: "null amount above max_rejected_fraction",
            exit: 1,
            message: "null_amount 5",
            setup: |w| null_in(w, "line_amount", 4),
        },
        Case {
            name: "NaN and infinite amounts above max_rejected_fraction",
            exit: 1,
            message: "invalid_amount 4",
            setup: |w| {
                rewrite(w, |frame| {
                    let height = frame.height();
                    let bad: Vec<bool> = (0..height).map(|i| i < 4).collect();
                    let values: Vec<f64> = (0..height)
                        .map(|i| if i % 2 == 0 { f64::NAN } else { f64::INFINITY })
                        .collect();
                    frame
                        .lazy()
                        .with_column(
                            when(lit(Series::new("bad".into(), bad)))
                                .then(lit(Series::new("values".into(), values)))
                                .otherwise(col("line_amount"))
                                .alias("line_amount"),
                        )
                        .collect()
                        .unwrap()
                })
            },
        },
        Case {
            name: "a filter that matches nothing",
            exit: 1,
            message: "no orders left: 18 rows read, 18 excluded by include/exclude, 0 rows rejected, 0 after as_of; the filters match no line (most frequent values of `status` (in `include`): \"completed\" (16 lines), \"cancelled\" (1 line), \"shipped\" (1 line))",
            setup: |w| edit_config(w, "status = [\"completed\", \"shipped\"]", "status = [\"gift\"]"),
        },
        Case {
            name: "a zero-byte file in a directory",
            exit: 1,
            message: "`<dir>/parts/part-00001.parquet` cannot be read; re-export it, or remove it from the input: the file is empty (0 bytes)",
            setup: |w| {
                std::fs::create_dir_all(w.path("parts")).unwrap();
                std::fs::copy(w.path("lines.parquet"), w.path("parts/part-00000.parquet")).unwrap();
                std::fs::write(w.path("parts/part-00001.parquet"), b"").unwrap();
                edit_config(w, "path = \"lines.parquet\"", "path = \"parts\"");
            },
        },
        Case {
            name: "a truncated file inside a Spark directory",
            exit: 1,
            message: "`<dir>/spark/part-00001-c000.snappy.parquet` cannot be read; re-export it, or remove it from the input: the Parquet file is truncated or still being written",
            setup: |w| {
                let bytes = std::fs::read(w.path("lines.parquet")).unwrap();
                std::fs::create_dir_all(w.path("spark")).unwrap();
                std::fs::write(w.path("spark/_SUCCESS"), b"").unwrap();
                std::fs::write(w.path("spark/.part-00000-c000.snappy.parquet.crc"), b"crc").unwrap();
                std::fs::write(w.path("spark/part-00000-c000.snappy.parquet"), &bytes).unwrap();
                std::fs::write(w.path("spark/part-00001-c000.snappy.parquet"), &bytes[..bytes.len() - 9]).unwrap();
                edit_config(w, "path = \"lines.parquet\"", "path = \"spark\"");
            },
        },
        Case {
            name: "two currencies",
            exit: 1,
            message: "the lines left after the filters hold 2 currencies in column `currency`: EUR (7 lines), USD (8 lines); a run sums one currency: pick one with `include = { currency = [\"USD\"] }` on `[sources.orders]`",
            setup: |w| {
                rewrite(w, |frame| {
                    frame
                        .lazy()
                        .with_column(
                            when(col("order_id").lt(lit(300)))
                                .then(lit("EUR"))
                                .otherwise(lit("USD"))
                                .alias("currency"),
                        )
                        .collect()
                        .unwrap()
                });
                edit_config(w, "channel = \"channel\"", "channel = \"channel\"\ncurrency = \"currency\"");
            },
        },
        Case {
            name: "an unsupported column type",
            exit: 1,
            message: "column `line_amount` (mapped as `amount`) has type bool: expected a number: an integer of any width, float32/64, or a decimal of any precision and scale",
            setup: |w| {
                rewrite(w, |f| {
                    f.lazy()
                        .with_column(col("line_amount").gt(lit(0.0)))
                        .collect()
                        .unwrap()
                })
            },
        },
        Case {
            name: "a CSV with a malformed row",
            exit: 1,
            message: "reading the first values of `created_at` from `<dir>/lines.csv` (check `delimiter`, `quote` and `header` under `[sources.orders.csv]`): found more fields than defined in 'Schema'",
            setup: |w| {
                let csv = "order_id,line,customer_id,created_at,line_amount,status,channel\n\
                           101,1,1,2024-01-05 10:00:00,30.00,completed,web\n\
                           102,1,1,2024-01-20 12:00:00,40.00,shipped,web,extra,fields\n";
                std::fs::write(w.path("lines.csv"), csv).unwrap();
                edit_config(w, "path = \"lines.parquet\"", "path = \"lines.csv\"");
            },
        },
        Case {
            name: "data older than max_data_age_days",
            exit: 1,
            message: "source `orders`: the newest order is from 2024-03-10, 5 days before as_of 2024-03-15: more than max_data_age_days = 2",
            setup: |w| edit_config(w, "max_rejected_fraction = 0.2", "max_rejected_fraction = 0.2\nmax_data_age_days = 2"),
        },
        Case {
            name: "a degenerate CLV model",
            exit: 1,
            message: "stage `clv` (clv): the model is degenerate and was not published: BG/NBD: ",
            setup: |w| {
                edit_config(
                    w,
                    "[stages.rfm]",
                    "[stages.clv]\nkind = \"clv\"\ninput = \"orders\"\npenalizer = 1000000.0\n\n[stages.rfm]",
                )
            },
        },
        Case {
            name: "calibration_end not before as_of",
            exit: 2,
            message: "stage `clv`: `calibration_end` 2024-03-15 is not before as_of 2024-03-15",
            setup: |w| {
                edit_config(
                    w,
                    "[stages.rfm]",
                    "[stages.clv]\nkind = \"clv\"\ninput = \"orders\"\ncalibration_end = \"2024-03-15\"\n\n[stages.rfm]",
                )
            },
        },
        Case {
            name: "a summary by a column no input has",
            exit: 2,
            message: "stage `by_stage`: column `stage` is in no per-customer table of its inputs",
            setup: |w| {
                edit_config(
                    w,
                    "[stages.rfm]",
                    "[stages.by_stage]\nkind = \"segment_summary\"\ninput = [\"rfm\"]\nby = [\"stage\"]\n\n[stages.rfm]",
                )
            },
        },
        Case {
            name: "unknown key",
            exit: 2,
            message: "stage `rfm` has no key `binz`",
            setup: |w| edit_config(w, "kind = \"rfm\"", "kind = \"rfm\"\nbinz = 4"),
        },
        Case {
            name: "wrong value type",
            exit: 2,
            message: "key `bins` of stage `rfm` is invalid: invalid type: string \"five\"",
            setup: |w| edit_config(w, "kind = \"rfm\"", "kind = \"rfm\"\nbins = \"five\""),
        },
        Case {
            name: "zero bins",
            exit: 2,
            message: "`bins` must be between 2 and 9, got 0",
            setup: |w| edit_config(w, "kind = \"rfm\"", "kind = \"rfm\"\nbins = 0"),
        },
        Case {
            name: "negative bins",
            exit: 2,
            message: "key `bins` of stage `rfm` is invalid",
            setup: |w| edit_config(w, "kind = \"rfm\"", "kind = \"rfm\"\nbins = -3"),
        },
        Case {
            name: "as_of not a date",
            exit: 2,
            message: "`2024-02-30` is not a date",
            setup: |w| edit_config(w, "as_of = \"2024-03-15\"", "as_of = \"2024-02-30\""),
        },
        Case {
            name: "unknown time zone",
            exit: 2,
            message: "unknown time zone `Mars/Olympus`",
            setup: |w| {
                edit_config(
                    w,
                    "as_of = \"2024-03-15\"",
                    "as_of = \"2024-03-15\"\ntimezone = \"Mars/Olympus\"",
                )
            },
        },
        Case {
            name: "two stages write the same table",
            exit: 2,
            message: "stages `facts` and `rfm2` both write table `facts`",
            setup: |w| {
                edit_config(
                    w,
                    "[stages.rfm]",
                    "[stages.rfm2]\nkind = \"customer_facts\"\ninput = \"orders\"\noutput = \"facts\"\n\n[stages.rfm]",
                )
            },
        },
        Case {
            name: "unknown stage kind",
            exit: 2,
            message: "stage `rfm` has unknown kind `rfmm`",
            setup: |w| edit_config(w, "kind = \"rfm\"", "kind = \"rfmm\""),
        },
        Case {
            name: "missing environment variable",
            exit: 2,
            message: "environment variable `PIPELINE_MATRIX_UNSET` is not set",
            setup: |w| edit_config(w, "output_dir = \"out\"", "output_dir = \"${PIPELINE_MATRIX_UNSET}\""),
        },
        Case {
            name: "output directory cannot be created",
            exit: 1,
            message: "cannot create output directory `<dir>/lines.parquet/out`",
            setup: |w| edit_config(w, "output_dir = \"out\"", "output_dir = \"lines.parquet/out\""),
        },
        Case {
            name: "`latest` is a plain folder",
            exit: 1,
            message: "`<dir>/out/latest` is a directory, not the symlink this tool keeps there: move it away",
            setup: |w| {
                let tables: Vec<(String, Vec<u8>)> = ["facts", "rfm_customers", "_manifest"]
                    .iter()
                    .map(|t| {
                        let name = if t.starts_with('_') { format!("{t}.json") } else { format!("{t}.parquet") };
                        let bytes = std::fs::read(w.out().join(&name)).unwrap();
                        (name, bytes)
                    })
                    .collect();
                std::fs::remove_file(w.out()).unwrap();
                std::fs::create_dir(w.out()).unwrap();
                for (name, bytes) in tables {
                    std::fs::write(w.out().join(name), bytes).unwrap();
                }
            },
        },
    ]
}

fn first_error_line(stderr: &str, dir: &Path) -> String {
    let text = stderr.replace(dir.to_str().unwrap(), "<dir>");
    let mut lines = text.lines().skip_while(|l| !l.starts_with("error:"));
    let mut message = lines.next().unwrap_or("").trim_start_matches("error: ").to_string();
    // A list of problems continues on indented lines.
    for detail in lines.take_while(|l| l.starts_with("  - ")) {
        message.push(' ');
        message.push_str(detail.trim());
    }
    message.chars().take(200).collect()
}

#[test]
fn every_bad_input_fails_cleanly_and_the_reliability_table_is_current() {
    std::env::remove_var("PIPELINE_MATRIX_UNSET");
    let mut rows = Vec::new();
    for case in cases() {
        let workspace = Workspace::with_tiny();
        let config = workspace.config("", STAGES);
        run_ok(&["run", config.to_str().unwrap()]);
        let before: Vec<Vec<u8>> = ["facts", "rfm_customers"]
            .iter()
            .map(|t| std::fs::read(workspace.out().join(format!("{t}.parquet"))).unwrap())
            .collect();
        (case.setup)(&workspace);
        let output = pipeline(&["run", config.to_str().unwrap()]);
        let text = stderr(&output).replace(workspace.dir.path().to_str().unwrap(), "<dir>");
        assert_eq!(output.status.code(), Some(case.exit), "{}: {text}", case.name);
        assert!(
            text.contains(case.message),
            "{}: expected {:?} in\n{text}",
            case.name,
            case.message
        );
        for (table, bytes) in ["facts", "rfm_customers"].iter().zip(&before) {
            let path = workspace.out().join(format!("{table}.parquet"));
            if path.is_file() {
                assert_eq!(
                    &std::fs::read(&path).unwrap(),
                    bytes,
                    "{}: table {table} changed",
                    case.name
                );
            }
        }
        // Config errors touch nothing; a run that cannot create its output directory cannot
        // write a manifest there either (the previous one, elsewhere, stays as it was).
        let unreachable_output = case.message.starts_with("cannot create output directory");
        let manifest_written = case.exit == 1 && !unreachable_output;
        let status = last_run(&workspace.root())["status"].as_str().unwrap().to_string();
        let expected_status = if manifest_written { "failed" } else { "succeeded" };
        assert_eq!(status, expected_status, "{}: _last_run.json", case.name);
        // The snapshot readers see is the good run's, whatever failed.
        assert_eq!(
            manifest(&workspace.out())["status"],
            "succeeded",
            "{}: latest",
            case.name
        );
        let left = temporary_files(&workspace.root());
        assert!(left.is_empty(), "{}: left {left:?}", case.name);
        rows.push(format!(
            "| {} | {} | {} | {} |",
            case.name,
            case.exit,
            first_error_line(&stderr(&output), workspace.dir.path()).replace('|', "\\\\|"),
            match (case.exit, manifest_written) {
                (2, _) => "untouched (config errors touch nothing)",
                (_, false) => "cannot be written (no output directory)",
                _ => "`_last_run.json` `failed`, with the error; `latest` unchanged",
            }
        ));
    }
    let table = format!(
        "| case | exit | message (first line) | manifest |\n|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/reliability.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap_or_default();
    let (head, rest) = doc.split_once("<!-- matrix -->").unwrap_or((&doc, ""));
    let tail = rest.split_once("<!-- /matrix -->").map(|(_, t)| t).unwrap_or("");
    let expected = format!("{head}<!-- matrix -->\n{table}<!-- /matrix -->{tail}");
    if std::env::var_os("UPDATE_RELIABILITY").is_some() {
        std::fs::write(&doc_path, &expected).unwrap();
    } else {
        assert_eq!(
            doc, expected,
            "docs/reliability.md is stale: rerun with UPDATE_RELIABILITY=1"
        );
    }
}

#[test]
fn nulls_below_the_limit_are_rejected_counted_and_the_run_succeeds() {
    for (column, reason) in [
        ("customer_id", "null_customer_id"),
        ("order_id", "null_order_id"),
        ("created_at", "null_ordered_at"),
        ("line_amount", "null_amount"),
    ] {
        let workspace = Workspace::with_tiny();
        null_in(&workspace, column, 1);
        let config = workspace.config("", STAGES);
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("max_rejected_fraction = 0.2", "max_rejected_fraction = 0.25");
        std::fs::write(&config, text).unwrap();
        run_ok(&["run", config.to_str().unwrap()]);
        let manifest = manifest(&workspace.out());
        // The first line (order 101, customer 1) is rejected, plus the fixture's own null amount.
        let expected = if reason == "null_amount" { 2 } else { 1 };
        assert_eq!(manifest["inputs"][0]["rows_rejected"][reason], expected, "{column}");
        let facts = read_table(&workspace.out().join("facts.parquet"));
        let first = facts.find(&[("customer_id", "1")]);
        // Customer 1 lost the 30.00 line of order 101.
        assert_close(facts.float("revenue")[first], 120.0, column);
    }
}

#[test]
fn extreme_dates_and_unicode_ids_are_kept() {
    let workspace = Workspace::new();
    let mut lines = vec![
        Line {
            order_id: 1,
            line: 1,
            customer_id: 1,
            at: "1965-06-01 10:00",
            amount: Some(10.0),
            status: "completed",
            channel: "web",
        },
        Line {
            order_id: 2,
            line: 1,
            customer_id: 1,
            at: "2024-03-01 10:00",
            amount: Some(20.0),
            status: "completed",
            channel: "web",
        },
        Line {
            order_id: 3,
            line: 1,
            customer_id: 2,
            at: "2999-12-31 10:00",
            amount: Some(30.0),
            status: "completed",
            channel: "web",
        },
    ];
    lines.push(Line {
        order_id: 4,
        line: 1,
        customer_id: 3,
        at: "2024-03-02 10:00",
        amount: Some(5.0),
        status: "completed",
        channel: "web",
    });
    let mut frame = lines_frame(&lines);
    let long_id = "ü".repeat(300);
    let ids = Series::new(
        "customer_id".into(),
        vec!["Ωmega-客户", long_id.as_str(), "🙂", "Ωmega-客户"],
    );
    frame.with_column(ids.into_column()).unwrap();
    write_parquet(&mut frame, &workspace.path("lines.parquet"));
    let config = workspace.config("", STAGES);
    run_ok(&["run", config.to_str().unwrap()]);
    let facts = read_table(&workspace.out().join("facts.parquet"));
    // The far-future order is after as_of (ignored, counted); 1965 counts.
    assert_eq!(facts.rows, 2);
    let omega = facts.find(&[("customer_id", "Ωmega-客户")]);
    assert_eq!(facts.text("first_purchase_date")[omega], "1965-06-01");
    assert_eq!(facts.int("orders")[omega], 2);
    assert!(facts.text("customer_id").contains(&long_id));
    assert_eq!(manifest(&workspace.out())["inputs"][0]["rows_ignored_after_as_of"], 1);
}
