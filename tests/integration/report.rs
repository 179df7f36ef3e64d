//! `pipeline report OUT`: the page's numbers are the tables' (read back here with arrow-rs), it
//! is self-contained and small, and it leaves out what the config did not compute.

use std::path::Path;

use crate::common::*;

/// The data block of a report: tiles and each chart's ECharts option.
fn report_data(page: &str) -> serde_json::Value {
    let start = page
        .find(r#"<script id="report-data" type="application/json">"#)
        .expect("the data block");
    let body = &page[start..];
    let body = &body[body.find('>').unwrap() + 1..];
    let end = body.find("</script>").unwrap();
    serde_json::from_str(&body[..end]).expect("the data block is JSON")
}

fn tile(data: &serde_json::Value, key: &str) -> f64 {
    data["tiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|tile| tile["key"] == key)
        .unwrap_or_else(|| panic!("no tile `{key}`"))["value"]
        .as_f64()
        .unwrap()
}

fn chart<'a>(data: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    &data["charts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|chart| chart["id"] == id)
        .unwrap_or_else(|| panic!("no chart `{id}`"))["option"]
}

/// A chart's options with every `data` array replaced by its length.
fn chart_shape(chart: &serde_json::Value) -> serde_json::Value {
    fn strip(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => serde_json::Value::Object(
                map.iter()
                    .map(|(key, value)| match (key.as_str(), value) {
                        ("data", serde_json::Value::Array(items)) => {
                            (key.clone(), serde_json::json!(format!("{} items", items.len())))
                        }
                        _ => (key.clone(), strip(value)),
                    })
                    .collect(),
            ),
            serde_json::Value::Array(items) => serde_json::Value::Array(items.iter().map(strip).collect()),
            other => other.clone(),
        }
    }
    serde_json::json!({
        "id": chart["id"],
        "title": chart["title"],
        "details": chart["details"],
        "height": chart["height"],
        "option": strip(&chart["option"]),
    })
}

/// The retail pipeline run `times` into a temporary output folder: (the folder's owner, the
/// output folder, the config).
fn retail_runs(times: usize) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/retail.toml");
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    for _ in 0..times {
        run_ok(&[
            "run",
            config.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
            "--log",
            "warn",
        ]);
    }
    (root, out, config)
}

#[test]
fn the_report_shows_the_tables_numbers() {
    let (_root, out, _) = retail_runs(2);
    let out_text = out.to_str().unwrap();
    run_ok(&["report", out_text]);
    let latest = out.join("latest");
    let page = std::fs::read_to_string(latest.join("report.html")).unwrap();
    assert!(page.len() < 3 << 20, "{} bytes", page.len());
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "the page fetches nothing"
    );
    assert!(page.contains("as of 2024-12-31"));
    let data = report_data(&page);

    // Tiles.
    let facts = read_table(&latest.join("customer_facts.parquet"));
    assert_eq!(tile(&data, "customers"), facts.rows as f64);
    let snapshots = read_table(&latest.join("lifecycle_snapshots.parquet"));
    let last = snapshots.rows - 1; // as_of 2024-12-31 ends December: complete
    let at = |column: &str| snapshots.float(column)[last];
    assert_eq!(
        tile(&data, "active_customers"),
        at("new") + at("reactivated") + at("active")
    );
    assert_close(tile(&data, "crr"), at("crr"), "crr");
    assert_close(tile(&data, "churn"), at("churn_rate"), "churn");
    let summary = read_table(&latest.join("repeat_summary.parquet"));
    // The overall row (no cohort).
    let overall_row = (0..summary.rows)
        .find(|&r| summary.text("cohort")[r].is_empty())
        .unwrap();
    let repeat = summary.float("repeat_customer_rate")[overall_row];
    assert_close(tile(&data, "repeat_rate"), repeat, "repeat rate");
    let clv: Vec<f64> = read_table(&latest.join("clv_customers.parquet"))
        .float("clv")
        .into_iter()
        .filter(|v| v.is_finite())
        .collect();
    let total: f64 = clv.iter().sum();
    assert_close(tile(&data, "clv_total"), total, "total clv");
    assert_close(tile(&data, "clv_mean"), total / clv.len() as f64, "mean clv");
    let acquisition = read_table(&latest.join("acquisition.parquet"));
    let all: Vec<bool> = acquisition.text("all_channels").iter().map(|v| v == "true").collect();
    let sum = |column: &str| -> f64 {
        acquisition
            .float(column)
            .iter()
            .zip(&all)
            .filter(|(_, a)| **a)
            .map(|(v, _)| v)
            .sum()
    };
    assert_close(tile(&data, "cac"), sum("spend") / sum("new_customers"), "cac");
    let periods = read_table(&out.join("latest/nps_periods.parquet"));
    assert_close(tile(&data, "nps"), *periods.float("nps").last().unwrap(), "nps");
    // Two identical runs: every tile has its previous value, the same.
    for tile in data["tiles"].as_array().unwrap() {
        assert_eq!(tile["previous"], tile["value"], "{tile}");
    }

    // Cohort heatmap: each cell is Σ active / Σ cohort customers over the channels.
    let cohorts = read_table(&latest.join("cohorts.parquet"));
    let heat = chart(&data, "cohort-heatmap");
    let labels: Vec<String> = heat["yAxis"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let cells = heat["series"][0]["data"].as_array().unwrap();
    let (cohort, index) = (cohorts.text("cohort"), cohorts.int("period_index"));
    let (size, active) = (cohorts.float("cohort_customers"), cohorts.float("active_customers"));
    for cell in cells.iter().step_by(97) {
        let (period, row) = (cell[0].as_i64().unwrap(), cell[1].as_u64().unwrap() as usize);
        let rows: Vec<usize> = (0..cohorts.rows)
            .filter(|&r| cohort[r] == labels[row] && index[r] == period)
            .collect();
        let (a, s): (f64, f64) = (
            rows.iter().map(|&r| active[r]).sum(),
            rows.iter().map(|&r| size[r]).sum(),
        );
        assert!(
            (cell[2].as_f64().unwrap() - (1000.0 * a / s).round() / 10.0).abs() < 1e-9,
            "{cell}"
        );
        assert_eq!((cell[3].as_f64().unwrap(), cell[4].as_f64().unwrap()), (a, s));
    }
    assert_eq!(cells.len(), {
        let mut keys: Vec<(String, i64)> = (0..cohorts.rows).map(|r| (cohort[r].clone(), index[r])).collect();
        keys.sort();
        keys.dedup();
        keys.len()
    });

    // Cumulative revenue per customer of the newest cohort with two periods: Σ revenue to date /
    // Σ cohort customers over the channels.
    let revenue_chart = chart(&data, "cohort-revenue");
    let newest = revenue_chart["series"].as_array().unwrap().last().unwrap();
    let label = newest["name"].as_str().unwrap();
    let revenue = cohorts.float("revenue");
    let point = &newest["data"][1];
    let rows: Vec<usize> = (0..cohorts.rows).filter(|&r| cohort[r] == label).collect();
    let to_date: f64 = rows.iter().filter(|&&r| index[r] <= 1).map(|&r| revenue[r]).sum();
    let customers: f64 = rows.iter().filter(|&&r| index[r] == 0).map(|&r| size[r]).sum();
    assert_eq!(point[0], 1);
    assert_close(
        point[1].as_f64().unwrap(),
        ((to_date / customers) * 1e4).round() / 1e4,
        "cumulative revenue",
    );

    // Lifecycle stages: the table's columns as they are.
    let stages = chart(&data, "lifecycle-stages");
    let series = stages["series"].as_array().unwrap();
    let active_series: Vec<f64> = series.iter().find(|s| s["name"] == "active").unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(active_series, snapshots.float("active"));
    for (column, label) in [("crr", "CRR"), ("churn_rate", "churn")] {
        let line = series.iter().find(|s| s["name"] == label).unwrap()["data"]
            .as_array()
            .unwrap();
        for (at, expected) in snapshots.float(column).iter().enumerate() {
            match expected.is_finite() {
                true => assert!(
                    (line[at].as_f64().unwrap() - 100.0 * expected).abs() <= 0.005 + 1e-9,
                    "{label} {at}"
                ),
                false => assert!(line[at].is_null()),
            }
        }
    }

    // Retention curves: the newest cohort with two periods, Σ active / Σ cohort customers in %.
    let curves = chart(&data, "cohort-curves");
    let newest_curve = curves["series"].as_array().unwrap().last().unwrap();
    let curve_cohort = newest_curve["name"].as_str().unwrap();
    for point in newest_curve["data"].as_array().unwrap() {
        let period = point[0].as_i64().unwrap();
        let rows: Vec<usize> = (0..cohorts.rows)
            .filter(|&r| cohort[r] == curve_cohort && index[r] == period)
            .collect();
        let (a, s): (f64, f64) = (
            rows.iter().map(|&r| active[r]).sum(),
            rows.iter().map(|&r| size[r]).sum(),
        );
        assert!((point[1].as_f64().unwrap() - 100.0 * a / s).abs() <= 5e-5, "{point}");
    }

    // RFM: shares in %.
    let segments = read_table(&latest.join("rfm_segments.parquet"));
    let rfm = chart(&data, "rfm-segments");
    let shares: Vec<f64> = rfm["series"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let expected: Vec<f64> = segments
        .float("share")
        .iter()
        .map(|v| (v * 10000.0).round() / 100.0)
        .collect();
    assert_eq!(shares, expected);

    // CLV histogram: every customer with a positive clv in one bin.
    let histogram = chart(&data, "clv-distribution");
    let counts: u64 = histogram["series"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(counts, clv.iter().filter(|v| **v > 0.0).count() as u64);
    let details = data["charts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "clv-distribution")
        .unwrap()["details"]
        .clone();
    assert!(
        details.as_str().unwrap().contains("top 10 % of customers hold"),
        "{details}"
    );
    assert_eq!(histogram["title"]["subtext"], "as of 2024-12-31");
    // Repeat ladder: P(k+1 | k) of all cohorts, in %.
    let transitions = read_table(&latest.join("repeat_transitions.parquet"));
    let overall: Vec<usize> = (0..transitions.rows)
        .filter(|&r| transitions.text("cohort")[r].is_empty())
        .collect();
    let ladder: Vec<f64> = chart(&data, "repeat-ladder")["series"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let expected: Vec<f64> = overall
        .iter()
        .map(|&r| (transitions.float("probability")[r] * 10000.0).round() / 100.0)
        .collect();
    assert_eq!(ladder, expected);

    // Holdout calibration: purchases per customer per bucket, predicted and actual.
    let validation = read_table(&latest.join("clv_validation.parquet"));
    let calibration = chart(&data, "clv-calibration");
    let buckets: Vec<&str> = calibration["xAxis"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(buckets, ["0", "1", "2", "3", "4", "5", "6", "7+"]);
    let actual = calibration["series"][1]["data"][2].as_f64().unwrap();
    let expected = validation.float("actual_purchases")[2] / validation.float("customers")[2];
    assert_close(actual, (expected * 1e4).round() / 1e4, "actual, bucket 2");

    // P(alive): BG/NBD's formula at the fitted parameters; 1 for a customer with no repeat.
    let model = read_table(&latest.join("clv_model.parquet"));
    let parameter = |name: &str| {
        let row = (0..model.rows)
            .find(|&r| model.text("model")[r] == "bgnbd" && model.text("parameter")[r] == name)
            .unwrap();
        model.float("value")[row]
    };
    let (r, alpha, a, b) = (parameter("r"), parameter("alpha"), parameter("a"), parameter("b"));
    let alive = chart(&data, "clv-alive-matrix");
    let tenure = read_table(&latest.join("clv_customers.parquet"))
        .float("T_weeks")
        .iter()
        .cloned()
        .fold(0.0, f64::max)
        .ceil();
    let recency: Vec<f64> = alive["xAxis"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect();
    for cell in alive["series"][0]["data"].as_array().unwrap().iter().step_by(53) {
        let (step, x, p) = (
            cell[0].as_u64().unwrap() as usize,
            cell[1].as_f64().unwrap(),
            cell[2].as_f64().unwrap(),
        );
        let t_x = tenure * step as f64 / (recency.len() - 1) as f64;
        let expected = if x == 0.0 {
            1.0
        } else {
            1.0 / (1.0 + a / (b + x - 1.0) * ((alpha + tenure) / (alpha + t_x)).powf(r + x))
        };
        assert!((p - expected).abs() < 1e-4, "{cell}: {expected}");
    }

    // LTV:CAC by channel, and NPS by segment, from their tables.
    let ratio = chart(&data, "ltv-to-cac");
    let channels: Vec<&str> = ratio["xAxis"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let all_at = channels.iter().position(|c| *c == "all").unwrap();
    // The tile is the bar of all channels.
    assert_close(
        ratio["series"][0]["data"][all_at].as_f64().unwrap(),
        (tile(&data, "ltv_to_cac") * 1000.0).round() / 1000.0,
        "ltv:cac",
    );
    // Every channel's LTV:CAC: Σ ltv × new customers / Σ spend over its cohorts with an LTV.
    let channel_of = acquisition.text("acquisition_channel");
    for (at, channel) in channels.iter().enumerate() {
        let rows: Vec<usize> = (0..acquisition.rows)
            .filter(|&r| {
                if *channel == "all" {
                    all[r]
                } else {
                    !all[r] && channel_of[r] == *channel
                }
            })
            .collect();
        let (ltv, new, spend) = (
            acquisition.float("ltv_per_customer"),
            acquisition.float("new_customers"),
            acquisition.float("spend"),
        );
        let value: f64 = rows
            .iter()
            .filter(|&&r| ltv[r].is_finite())
            .map(|&r| ltv[r] * new[r])
            .sum();
        let spent: f64 = rows
            .iter()
            .filter(|&&r| ltv[r].is_finite() && spend[r].is_finite())
            .map(|&r| spend[r])
            .sum();
        let expected = (value / spent * 1000.0).round() / 1000.0;
        assert_close(
            ratio["series"][0]["data"][at].as_f64().unwrap(),
            expected,
            &format!("ltv:cac of {channel}"),
        );
    }
    let by_segment = read_table(&latest.join("nps_by_segment.parquet"));
    let bars = chart(&data, "nps-by-segment");
    assert_close(
        bars["series"][0]["data"][0].as_f64().unwrap(),
        (by_segment.float("nps")[0] * 100.0).round() / 100.0,
        "nps of the first segment",
    );
    assert!(page.contains("<caption>Segment summary (`rfm_segments`"));
    assert!(page.contains("<caption>Fitted parameters (`clv_model`"));

    // Repeat rate within 30 days by cohort, in % (null where a cohort was not observed 30 days).
    let by_cohort = chart(&data, "repeat-by-cohort");
    assert_eq!(by_cohort["series"][0]["name"], "within 30 days");
    let rates = summary.text("repeat_rate_30d");
    let with_cohort: Vec<usize> = (0..summary.rows)
        .filter(|&r| !summary.text("cohort")[r].is_empty())
        .collect();
    assert_eq!(
        by_cohort["series"][0]["data"].as_array().unwrap().len(),
        with_cohort.len()
    );
    for (at, &row) in with_cohort.iter().enumerate() {
        let shown = &by_cohort["series"][0]["data"][at];
        if rates[row].is_empty() {
            assert!(shown.is_null(), "{shown}");
        } else {
            // Shown to two decimals of a percent.
            let expected = 100.0 * summary.float("repeat_rate_30d")[row];
            assert!(
                (shown.as_f64().unwrap() - expected).abs() <= 0.005 + 1e-9,
                "{shown} vs {expected}"
            );
        }
    }

    // NPS per period as the table has it.
    let nps_line: Vec<f64> = chart(&data, "nps-periods")["series"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let expected: Vec<f64> = periods
        .float("nps")
        .iter()
        .map(|v| (v * 100.0).round() / 100.0)
        .collect();
    assert_eq!(nps_line, expected);

    // Payback of all channels at period 0: Σ contribution × new customers / Σ CAC × new
    // customers over the cohorts with spend.
    let payback = read_table(&latest.join("acquisition_payback.parquet"));
    let new_of = |cohort: &str| -> f64 {
        (0..acquisition.rows)
            .find(|&r| all[r] && acquisition.text("cohort")[r] == cohort)
            .map_or(0.0, |r| acquisition.float("new_customers")[r])
    };
    let (mut recovered, mut cost) = (0.0, 0.0);
    for row in 0..payback.rows {
        let cac = payback.float("cac")[row];
        let contribution = payback.float("cumulative_contribution_per_customer")[row];
        let first_period = payback.int("period_index")[row] == 0;
        if payback.text("all_channels")[row] == "true" && first_period && cac > 0.0 && contribution.is_finite() {
            let new = new_of(&payback.text("cohort")[row]);
            recovered += contribution * new;
            cost += cac * new;
        }
    }
    let curves = chart(&data, "payback-curves");
    let all_curve = curves["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "all")
        .unwrap();
    assert_eq!(all_curve["data"][0][0], 0);
    let expected = (10000.0 * recovered / cost).round() / 100.0;
    assert_close(
        all_curve["data"][0][1].as_f64().unwrap(),
        expected,
        "payback at period 0",
    );

    // Every chart's options without their data: titles, subtitles (as_of, table, units), axes,
    // series and scales, as reviewed.
    let shapes: Vec<serde_json::Value> = data["charts"].as_array().unwrap().iter().map(chart_shape).collect();
    insta::assert_json_snapshot!("report_chart_options", shapes);

    for id in [
        "cohort-curves",
        "cohort-revenue",
        "nps-periods",
        "repeat-by-cohort",
        "payback-curves",
    ] {
        assert!(
            chart(&data, id)["series"].as_array().is_some_and(|s| !s.is_empty()),
            "{id}"
        );
        assert_eq!(chart(&data, id)["aria"]["enabled"], true);
    }
}

/// `[report]` (the retail pipeline has it) publishes `report.html` with the tables: the same page
/// `pipeline report OUT` makes of the snapshot. `enabled = false` leaves it out; a bad value is
/// a config error (exit 2).
#[test]
fn a_run_with_a_report_section_publishes_the_page() {
    let (root, out, config) = retail_runs(2);
    let out_text = out.to_str().unwrap();
    let published = std::fs::read_to_string(out.join("latest/report.html")).unwrap();
    let copy = root.path().join("again.html");
    run_ok(&["report", out_text, "--output", copy.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), published);
    assert_eq!(report_data(&published)["tiles"][0]["previous"], 5821.0);

    // A `--select` run for an earlier date: its own charts say its as_of, the carried-over ones
    // theirs, and the carried tables (known by the kind the manifest records) stay on the page.
    run_ok(&[
        "run",
        config.to_str().unwrap(),
        "--output-dir",
        out_text,
        "--select",
        "rfm",
        "--as-of",
        "2024-10-31",
        "--log",
        "warn",
    ]);
    let manifest = manifest(&out.join("latest"));
    let carried = manifest["carried_over"].as_array().unwrap();
    let cohorts = carried.iter().find(|t| t["table"] == "cohorts").unwrap();
    assert_eq!(
        (cohorts["kind"].as_str(), cohorts["suffix"].as_str()),
        (Some("cohort_retention"), Some(""))
    );
    let page = std::fs::read_to_string(out.join("latest/report.html")).unwrap();
    let data = report_data(&page);
    assert_eq!(chart(&data, "rfm-segments")["title"]["subtext"], "as of 2024-10-31");
    assert_eq!(chart(&data, "cohort-heatmap")["title"]["subtext"], "as of 2024-12-31");
    assert_eq!(chart(&data, "clv-distribution")["title"]["subtext"], "as of 2024-12-31");
    // A carried table's tile says its as_of and has no change against itself.
    let customers = data["tiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == "customers")
        .unwrap();
    assert_eq!(customers["as_of"], "2024-12-31");
    assert!(customers["previous"].is_null(), "{customers}");
    assert!(page.contains("Customers (as of 2024-12-31)"));

    let text = std::fs::read_to_string(&config).unwrap();
    let dir = config.parent().unwrap();
    let off = dir.join(format!("report-off-{}.toml", std::process::id()));
    std::fs::write(&off, text.replace("[report]\n", "[report]\nenabled = false\n")).unwrap();
    let bad = dir.join(format!("report-bad-{}.toml", std::process::id()));
    std::fs::write(
        &bad,
        text.replace("[report]\n", "[report]\nenabled = \"yes\"\ncharts = 3\n"),
    )
    .unwrap();
    let elsewhere = root.path().join("off");
    let result = pipeline(&[
        "run",
        off.to_str().unwrap(),
        "--output-dir",
        elsewhere.to_str().unwrap(),
        "--log",
        "warn",
    ]);
    let broken = pipeline(&[
        "run",
        bad.to_str().unwrap(),
        "--output-dir",
        elsewhere.to_str().unwrap(),
    ]);
    std::fs::remove_file(&off).ok();
    std::fs::remove_file(&bad).ok();
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(!elsewhere.join("latest/report.html").exists());
    assert_eq!(broken.status.code(), Some(2));
    let message = stderr(&broken);
    assert!(message.contains("enabled") && message.contains("charts"), "{message}");
}

/// A config without lifecycle, clv, acquisition or nps stages: their tiles and sections are
/// left out. A folder without a snapshot is an error naming it (exit 1).
#[test]
fn the_report_leaves_out_what_was_not_computed() {
    let workspace = Workspace::with_tiny();
    let config = workspace.config(
        "",
        "[stages.customer_facts]\nkind = \"customer_facts\"\n[stages.rfm]\nkind = \"rfm\"\n",
    );
    run_ok(&["run", config.to_str().unwrap()]);
    let report = workspace.path("report.html");
    run_ok(&[
        "report",
        workspace.root().to_str().unwrap(),
        "--output",
        report.to_str().unwrap(),
    ]);
    let page = std::fs::read_to_string(&report).unwrap();
    let data = report_data(&page);
    let keys: Vec<&str> = data["tiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["customers"]);
    let charts: Vec<&str> = data["charts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(charts, ["rfm-segments"]);
    assert!(!page.contains("id=\"lifecycle\""));

    let empty = tempfile::tempdir().unwrap();
    let output = pipeline(&["report", empty.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("has no published snapshot"),
        "{}",
        stderr(&output)
    );
}

/// Headless Chromium: `PIPELINE_CHROMIUM`, or `chromium` on the PATH (`.ci/run` installs
/// Debian's).
fn chromium() -> Option<std::path::PathBuf> {
    let works = |browser: &Path| {
        std::process::Command::new(browser)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    // Named (as `.ci/run` does), it must work: a broken one fails the test, never skips it.
    if let Some(named) = std::env::var_os("PIPELINE_CHROMIUM").map(std::path::PathBuf::from) {
        assert!(works(&named), "PIPELINE_CHROMIUM=`{}` does not run", named.display());
        return Some(named);
    }
    Some(std::path::PathBuf::from("chromium")).filter(|browser| works(browser))
}

/// The report in an iframe `width` pixels wide (headless Chromium's window is at least 500
/// wide), as Chromium leaves it after its scripts ran: per chart its id, its SVG's width and its
/// marks (`id width marks`), then `page <scroll width>`; and what the page wrote to the console.
/// With `screenshot`, a picture of it instead.
fn render(browser: &Path, page: &Path, width: u32, screenshot: Option<&Path>) -> (Vec<String>, Vec<String>) {
    let harness = page.with_file_name(format!("harness-{width}.html"));
    std::fs::write(
        &harness,
        format!(
            r#"<!doctype html><html><body style="margin:0">
<iframe id="report" src="report.html" style="width:{width}px;height:9000px;border:0"></iframe>
<pre id="found"></pre>
<script>
var frame = document.getElementById("report");
frame.addEventListener("load", function () {{ setTimeout(function () {{
  var doc = frame.contentDocument, rows = [];
  doc.querySelectorAll(".chart").forEach(function (chart) {{
    var svg = chart.querySelector("svg");
    rows.push(chart.id + " " + (svg ? svg.getAttribute("width") : 0) + " " + (svg ? svg.querySelectorAll("path, rect").length : 0));
  }});
  rows.push("page " + doc.documentElement.scrollWidth);
  document.getElementById("found").textContent = rows.join("\n");
}}, 300); }});
</script></body></html>"#
        ),
    )
    .unwrap();
    let mut command = std::process::Command::new(browser);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--allow-file-access-from-files",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=8000",
        &format!("--window-size={},9200", width.max(500)),
    ]);
    match screenshot {
        Some(path) => command.arg(format!("--screenshot={}", path.display())),
        None => command.arg("--dump-dom"),
    };
    let output = command
        .arg(format!("file://{}", harness.display()))
        .output()
        .expect("chromium runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let console = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| line.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    let dom = String::from_utf8_lossy(&output.stdout).to_string();
    let found = dom
        .split("<pre id=\"found\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    (found, console)
}

/// The report of the retail pipeline in a real browser: every chart drew an SVG with marks, at
/// 1280 and at 390 pixels wide (none wider than the page, the page no wider than the window),
/// the console is silent, and screenshots are kept (`target/tmp/report-1280.png`, `-390.png`).
#[test]
fn every_chart_renders_in_a_browser() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: no Chromium (apt-get install chromium, or PIPELINE_CHROMIUM)");
        return;
    };
    let (_root, out, _) = retail_runs(1);
    run_ok(&["report", out.to_str().unwrap()]);
    let page = std::fs::canonicalize(out.join("latest/report.html")).unwrap();
    let data = report_data(&std::fs::read_to_string(&page).unwrap());
    let ids: Vec<String> = data["charts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 14, "{ids:?}");
    for width in [1280u32, 390] {
        let (found, console) = render(&browser, &page, width, None);
        assert!(console.is_empty(), "the console at {width} px: {console:#?}");
        assert_eq!(found.len(), ids.len() + 1, "{found:#?}");
        for (id, row) in ids.iter().zip(&found) {
            let fields: Vec<&str> = row.split(' ').collect();
            assert_eq!(fields[0], id);
            let (svg_width, marks): (f64, usize) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
            assert!(
                svg_width > 100.0 && svg_width <= width as f64,
                "`{id}` is {svg_width} px wide at {width} px"
            );
            assert!(marks > 3, "`{id}` drew {marks} marks at {width} px");
        }
        let page_width: u32 = found.last().unwrap().trim_start_matches("page ").parse().unwrap();
        assert!(page_width <= width, "the page is {page_width} px wide in {width} px");
    }
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for width in [1280u32, 390] {
        let shot = shots.join(format!("report-{width}.png"));
        render(&browser, &page, width, Some(&shot));
        assert!(std::fs::metadata(&shot).unwrap().len() > 50_000, "{}", shot.display());
    }
}

/// A quarterly lifecycle as of mid-November: the last snapshot (Q4 to date) is not a complete
/// period, so the CRR, churn and active tiles are those of Q3.
#[test]
fn the_lifecycle_tiles_are_of_the_last_complete_period() {
    let retail = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/retail.toml")).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let config = dir.join(format!("report-quarter-{}.toml", std::process::id()));
    // clv_simple walks its own monthly churn then (it reads a lifecycle stage's snapshots only
    // when they are monthly).
    let text = retail
        .replace("active_days = 90\n", "active_days = 90\ngranularity = \"quarter\"\n")
        .replace("lifecycle = \"lifecycle\"   #", "#");
    assert_ne!(text, retail);
    std::fs::write(&config, text).unwrap();
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let run = pipeline(&[
        "run",
        config.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--as-of",
        "2024-11-15",
        "--log",
        "warn",
    ]);
    std::fs::remove_file(&config).ok();
    assert!(run.status.success(), "{}", stderr(&run));
    let snapshots = read_table(&out.join("latest/lifecycle_snapshots.parquet"));
    assert_eq!(snapshots.text("snapshot_date").last().unwrap(), "2024-11-15");
    let q3 = snapshots.rows - 2;
    assert_eq!(snapshots.text("snapshot_date")[q3], "2024-09-30");
    let data = report_data(&std::fs::read_to_string(out.join("latest/report.html")).unwrap());
    assert_close(tile(&data, "crr"), snapshots.float("crr")[q3], "crr of Q3");
    assert_close(tile(&data, "churn"), snapshots.float("churn_rate")[q3], "churn of Q3");
    let at = |column: &str| snapshots.float(column)[q3];
    assert_eq!(
        tile(&data, "active_customers"),
        at("new") + at("reactivated") + at("active")
    );
    // Monthly cohorts as of mid-November: November is no complete period, so its cohort and the
    // cells of that month are left out of the heatmap.
    let heat = chart(&data, "cohort-heatmap");
    let labels: Vec<&str> = heat["yAxis"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(labels.last(), Some(&"2024-10-01"));
    let october = labels.len() - 1;
    let cells = heat["series"][0]["data"].as_array().unwrap();
    assert_eq!(
        cells.iter().filter(|c| c[1] == october).count(),
        1,
        "October's cohort has only its first month"
    );
    // NPS of the last complete month, October.
    let periods = read_table(&out.join("latest/nps_periods.parquet"));
    let row = (0..periods.rows)
        .find(|&r| periods.text("period_start")[r] == "2024-10-01")
        .unwrap();
    assert_close(tile(&data, "nps"), periods.float("nps")[row], "nps of October");
}
