//! What the page shows, computed from a snapshot's tables: the headline tiles and each
//! section's charts as ECharts options (plain JSON the page hands to `echarts.init`). A section
//! whose stage kind wrote no table is left out.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;
use serde_json::{json, Value};

use super::tables::{floats, texts, Snapshot};

/// A headline figure.
#[derive(Debug, Clone, Serialize)]
pub struct Tile {
    pub key: &'static str,
    pub label: &'static str,
    pub value: f64,
    /// `count`, `share`, `money` or `score`.
    pub unit: &'static str,
    /// What it is, and from which table.
    pub note: String,
    /// The same figure in the previous snapshot, when one is kept.
    pub previous: Option<f64>,
    /// The as_of of the table it comes from (an earlier one for a table carried over by a
    /// `--select` run).
    pub as_of: String,
}

/// One chart: its element id, accessible title, height in pixels and ECharts option.
#[derive(Debug, Clone, Serialize)]
pub struct Chart {
    pub id: String,
    pub title: String,
    pub description: String,
    /// The table, units and notes, under the chart (they wrap there; the chart keeps its as_of).
    pub details: String,
    pub height: u32,
    pub option: Value,
}

/// A table shown as it is (a segment summary, fitted parameters).
#[derive(Debug, Clone, Serialize)]
pub struct Grid {
    pub caption: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// A part of the page, for one stage kind.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub id: &'static str,
    pub title: &'static str,
    pub charts: Vec<Chart>,
    pub grids: Vec<Grid>,
}

/// The headline tiles of `snapshot`, each where its table exists.
pub fn tiles(snapshot: &Snapshot) -> Result<Vec<Tile>> {
    let mut tiles = Vec::new();
    // The as_of of the table the next tiles come from.
    let source_as_of = std::cell::RefCell::new(snapshot.as_of());
    let from = |frame: &polars::prelude::DataFrame| *source_as_of.borrow_mut() = table_as_of(frame, &snapshot.as_of());
    let mut tile = |key, label, value: f64, unit, note: String| {
        if value.is_finite() {
            tiles.push(Tile {
                key,
                label,
                value,
                unit,
                note,
                previous: None,
                as_of: source_as_of.borrow().clone(),
            });
        }
    };
    if let Some((name, facts)) = snapshot.table_with("customer_facts", "", &|column| {
        matches!(column, "customer_id" | "as_of")
    })? {
        from(&facts);
        tile(
            "customers",
            "Customers",
            facts.height() as f64,
            "count",
            format!("rows of `{name}`"),
        );
    }
    if let Some((name, snapshots)) = snapshot.table("lifecycle", "snapshots")? {
        from(&snapshots);
        let starts = texts(&snapshots, "period_start")?;
        if let Some(row) = last_complete_snapshot(&starts, &texts(&snapshots, "snapshot_date")?) {
            let at = |column: &str| floats(&snapshots, column).map(|values| values[row]);
            let date = texts(&snapshots, "snapshot_date")?[row].clone().unwrap_or_default();
            tile(
                "active_customers",
                "Active customers",
                at("new")? + at("reactivated")? + at("active")?,
                "count",
                format!("new + reactivated + active at {date} (`{name}`, the last complete period)"),
            );
            tile(
                "crr",
                "Retention (CRR)",
                at("crr")?,
                "share",
                format!("crr of the period ending {date} (`{name}`)"),
            );
            tile(
                "churn",
                "Churn",
                at("churn_rate")?,
                "share",
                format!("churn_rate of the period ending {date} (`{name}`)"),
            );
        }
    }
    if let Some((name, summary)) = snapshot.table("repeat", "summary")? {
        from(&summary);
        // The overall row (no cohort) when there is one, else the cohorts added up.
        let cohorts = texts(&summary, "cohort")?;
        let overall = cohorts.iter().position(Option::is_none);
        let pick = |column: &str| -> Result<f64> {
            let values = floats(&summary, column)?;
            Ok(match overall {
                Some(row) => values[row],
                None => values.iter().sum(),
            })
        };
        let (customers, repeat) = (pick("customers")?, pick("repeat_customers")?);
        tile(
            "repeat_rate",
            "Repeat rate",
            repeat / customers,
            "share",
            format!("customers with a second purchase / customers, all cohorts (`{name}`)"),
        );
    }
    if let Some((name, clv)) = snapshot.table_with("clv", "customers", &|column| matches!(column, "clv" | "as_of"))? {
        from(&clv);
        let values: Vec<f64> = floats(&clv, "clv")?.into_iter().filter(|v| v.is_finite()).collect();
        let total: f64 = values.iter().sum();
        // No tile from no value (every clv null).
        if !values.is_empty() {
            tile(
                "clv_mean",
                "Mean CLV",
                total / values.len() as f64,
                "money",
                format!("mean of clv (`{name}`)"),
            );
            tile(
                "clv_total",
                "Total CLV",
                total,
                "money",
                format!("sum of clv (`{name}`)"),
            );
        }
    }
    if let Some((name, acquisition)) = snapshot.table("acquisition", "")? {
        from(&acquisition);
        let all = texts(&acquisition, "all_channels")?;
        let pick = |column: &str| -> Result<Vec<f64>> {
            Ok(floats(&acquisition, column)?
                .into_iter()
                .zip(&all)
                .filter(|(_, all)| all.as_deref() == Some("true"))
                .map(|(value, _)| value)
                .collect())
        };
        let (spend, new) = (pick("spend")?, pick("new_customers")?);
        let customers: f64 = new.iter().sum();
        let cac = spend.iter().sum::<f64>() / customers;
        tile(
            "cac",
            "CAC",
            cac,
            "money",
            format!("spend / new customers, all cohorts and channels (`{name}`)"),
        );
        // The chart's bar of all channels.
        let ratio = ltv_to_cac(&acquisition)?.get("all").copied().unwrap_or(f64::NAN);
        tile(
            "ltv_to_cac",
            "LTV:CAC",
            ratio,
            "ratio",
            format!("Σ ltv_per_customer × new customers / Σ spend, cohorts with an LTV, all channels (`{name}`)"),
        );
    }
    if let Some((name, periods)) = snapshot.table("nps", "periods")? {
        from(&periods);
        let (nps, responses) = (floats(&periods, "nps")?, floats(&periods, "responses")?);
        // The last complete period with answers (as for CRR: as_of may cut the last one short).
        let starts = texts(&periods, "period_start")?;
        let cut = last_period_cut(&starts, &table_as_of(&periods, &snapshot.as_of()));
        let rows = nps.len() - usize::from(cut && !nps.is_empty());
        if let Some(row) = (0..rows).rev().find(|&row| responses[row] > 0.0) {
            let start = texts(&periods, "period_start")?[row].clone().unwrap_or_default();
            tile(
                "nps",
                "NPS",
                nps[row],
                "score",
                format!("nps of the period from {start} (`{name}`)"),
            );
        }
    }
    Ok(tiles)
}

/// The start of the period after the one starting at `start`, the period's length known from
/// the gap since `previous_start` (a day, a week, a month, a quarter or a year; `None` for
/// another gap).
fn next_period_start(start: chrono::NaiveDate, previous_start: chrono::NaiveDate) -> Option<chrono::NaiveDate> {
    use chrono::{Datelike, Months};
    match (start - previous_start).num_days() {
        1 => start.succ_opt(),
        7 => Some(start + chrono::Duration::days(7)),
        28..=31 => Some(start.with_day(1)? + Months::new(1)),
        89..=92 => Some(start.with_day(1)? + Months::new(3)),
        365 | 366 => Some(start.with_day(1)?.with_month(1)? + Months::new(12)),
        _ => None,
    }
}

fn date_at(list: &[Option<String>], row: usize) -> Option<chrono::NaiveDate> {
    list.get(row)?.as_deref()?.parse().ok()
}

/// The last lifecycle snapshot of a whole period: the last one when its date ends its period,
/// else the one before (the last snapshot is as_of, which may fall inside its period). With
/// one snapshot none is known complete; with a gap of another length, the one before.
fn last_complete_snapshot(starts: &[Option<String>], dates: &[Option<String>]) -> Option<usize> {
    let last = dates.len().checked_sub(1)?;
    let before = last.checked_sub(1)?;
    let (start, previous_start, date) = (date_at(starts, last)?, date_at(starts, before)?, date_at(dates, last)?);
    let Some(next_start) = next_period_start(start, previous_start) else {
        return Some(before);
    };
    Some(if next_start.pred_opt()? == date { last } else { before })
}

/// Whether `as_of` cuts the last of the periods starting at `starts` short (it ends after
/// as_of). A period of unknown length counts as cut.
fn last_period_cut(starts: &[Option<String>], as_of: &str) -> bool {
    let (Some(last), Ok(as_of)) = (starts.len().checked_sub(1), as_of.parse::<chrono::NaiveDate>()) else {
        return false;
    };
    let ends = last
        .checked_sub(1)
        .and_then(|before| next_period_start(date_at(starts, last)?, date_at(starts, before)?))
        .and_then(|next| next.pred_opt());
    ends.is_none_or(|end| end > as_of)
}

/// A table's as_of (its `as_of` column), or `fallback`.
fn table_as_of(frame: &polars::prelude::DataFrame, fallback: &str) -> String {
    texts(frame, "as_of")
        .ok()
        .and_then(|dates| dates.into_iter().next().flatten())
        .unwrap_or_else(|| fallback.to_string())
}

/// Every section the snapshot has tables for.
pub fn sections(snapshot: &Snapshot) -> Result<Vec<Section>> {
    let run_as_of = snapshot.as_of();
    // A table carried over from an earlier run says its own as_of.
    let as_of = |frame: &polars::prelude::DataFrame| table_as_of(frame, &run_as_of);
    let money = snapshot.currency().unwrap_or_else(|| "currency units".into());
    let mut sections = Vec::new();
    if let Some((name, cohorts)) = snapshot.table("cohort_retention", "")? {
        sections.push(cohort_section(&name, &cohorts, &as_of(&cohorts), &money)?);
    }
    if let Some((name, snapshots)) = snapshot.table("lifecycle", "snapshots")? {
        sections.push(lifecycle_section(&name, &snapshots, &as_of(&snapshots))?);
    }
    if let Some((name, segments)) = snapshot.table("rfm", "segments")? {
        sections.push(rfm_section(&name, &segments, &as_of(&segments))?);
    }
    if let Some((name, summary)) = snapshot.table("repeat", "summary")? {
        let transitions = snapshot.table("repeat", "transitions")?;
        sections.push(repeat_section(&name, &summary, transitions.as_ref(), &as_of(&summary))?);
    }
    if let Some((name, clv)) = snapshot.table_with("clv", "customers", &|column| {
        matches!(column, "clv" | "frequency" | "as_of") || column.starts_with("T_")
    })? {
        let clv_as_of = as_of(&clv);
        let mut section = clv_section(&name, &clv, &clv_as_of, &money)?;
        if let Some((model_name, model)) = snapshot.table("clv", "model")? {
            section
                .charts
                .extend(alive_matrix(&model_name, &model, &clv, &clv_as_of)?);
            section.grids.push(grid(
                format!("Fitted parameters (`{model_name}`, as of {clv_as_of})"),
                &model,
                &["model", "parameter", "value", "std_error", "customers", "converged"],
            )?);
        }
        if let Some((validation_name, validation)) = snapshot.table("clv", "validation")? {
            section
                .charts
                .push(calibration(&validation_name, &validation, &clv_as_of)?);
        }
        sections.push(section);
    }
    if let Some((name, acquisition)) = snapshot.table("acquisition", "")? {
        let payback = snapshot.table("acquisition", "payback")?;
        let acquisition_as_of = as_of(&acquisition);
        sections.push(acquisition_section(
            &name,
            &acquisition,
            payback.as_ref(),
            &acquisition_as_of,
            &money,
        )?);
    }
    if let Some((name, periods)) = snapshot.table("nps", "periods")? {
        let mut section = nps_section(&name, &periods, &as_of(&periods))?;
        if let Some((summary_name, summary)) = snapshot
            .tables("segment_summary")?
            .into_iter()
            .find(|(_, t)| t.column("nps").is_ok() && t.column("segment").is_ok())
        {
            section
                .charts
                .push(nps_by_segment(&summary_name, &summary, &as_of(&summary))?);
        }
        sections.push(section);
    }
    Ok(sections)
}

/// A chart's option with what every chart has: a title with its subtitle, accessibility on.
fn option(title: &str, subtitle: String, rest: Value) -> Value {
    let mut option = json!({
        "title": { "text": title, "subtext": subtitle, "left": "center" },
        "aria": { "enabled": true },
        "tooltip": { "trigger": "item" },
        "animation": false,
    });
    if let (Some(option), Value::Object(rest)) = (option.as_object_mut(), rest) {
        option.extend(rest);
    }
    option
}

/// A chart; its accessible description (ECharts' `aria` label, read by screen readers) is its
/// title and description.
fn chart(id: &str, title: &str, description: String, mut option: Value) -> Chart {
    option["aria"] = json!({ "enabled": true, "label": { "description": format!("{title}: {description}") } });
    // The subtitle's first part (the as_of) stays on the chart, the rest goes under it.
    let subtitle = option["title"]["subtext"].as_str().unwrap_or_default().to_string();
    let (as_of, details) = subtitle.split_once(" · ").unwrap_or((subtitle.as_str(), ""));
    option["title"]["subtext"] = json!(as_of);
    Chart {
        id: id.to_string(),
        title: title.to_string(),
        description,
        details: details.replace('`', ""),
        height: 420,
        option,
    }
}

/// Per (cohort, period index), summed over any dimension: cohort customers, active customers
/// and revenue, in cohort order.
type CohortCells = BTreeMap<String, BTreeMap<i64, (f64, f64, f64)>>;

fn cohort_cells(cohorts: &polars::prelude::DataFrame) -> Result<CohortCells> {
    let (cohort, index) = (texts(cohorts, "cohort")?, floats(cohorts, "period_index")?);
    // A period still running at as_of would look like a drop: only complete ones are drawn.
    let complete = match cohorts.column("period_complete") {
        Ok(_) => texts(cohorts, "period_complete")?,
        Err(_) => vec![Some("true".to_string()); cohort.len()],
    };
    let (size, active, revenue) = (
        floats(cohorts, "cohort_customers")?,
        floats(cohorts, "active_customers")?,
        floats(cohorts, "revenue")?,
    );
    let mut cells: CohortCells = BTreeMap::new();
    for row in (0..cohort.len()).filter(|&row| complete[row].as_deref() == Some("true")) {
        let cell = cells
            .entry(cohort[row].clone().unwrap_or_default())
            .or_default()
            .entry(index[row] as i64)
            .or_default();
        cell.0 += size[row];
        cell.1 += active[row];
        cell.2 += revenue[row];
    }
    Ok(cells)
}

fn cohort_section(name: &str, cohorts: &polars::prelude::DataFrame, as_of: &str, money: &str) -> Result<Section> {
    let cells = cohort_cells(cohorts)?;
    let labels: Vec<&String> = cells.keys().collect();
    let periods = cells.values().flat_map(|row| row.keys()).max().copied().unwrap_or(0);
    // Heatmap cells: [period index, cohort row, retention %, active, cohort customers].
    let mut heat = Vec::new();
    for (row, by_period) in cells.values().enumerate() {
        for (&index, &(size, active, _)) in by_period {
            if size > 0.0 {
                heat.push(json!([index, row, round(100.0 * active / size, 1), active, size]));
            }
        }
    }
    // The scale runs to the highest retention after the first period (which is always 100 %).
    let highest = heat
        .iter()
        .filter(|cell| cell[0].as_i64() > Some(0))
        .filter_map(|cell| cell[2].as_f64())
        .fold(0.0, f64::max);
    let scale_max = ((highest / 5.0).ceil() * 5.0).clamp(5.0, 100.0);
    let subtitle = format!(
        "as of {as_of} · `{name}` · % of the cohort's customers active in each complete period; the colours run to {scale_max:.0} %"
    );
    let heatmap = option(
        "Cohort retention",
        subtitle,
        json!({
            "grid": { "top": 70, "left": 80, "right": 20, "bottom": 95 },
            "xAxis": { "type": "category", "name": "period index", "nameLocation": "center", "nameGap": 28,
                       "data": (0..=periods).collect::<Vec<_>>() },
            "yAxis": { "type": "category", "data": labels, "inverse": true },
            "visualMap": { "min": 0, "max": scale_max, "dimension": 2, "calculable": true, "orient": "horizontal", "left": "center",
                           "bottom": 0, "itemHeight": 120, "text": [format!("{scale_max:.0} %"), "0 %"] },
            "series": [{ "type": "heatmap", "name": "retention %", "data": heat,
                         "dimensions": ["period index", "cohort", "retention %", "active customers", "cohort customers"],
                         "encode": { "x": 0, "y": 1, "value": 2, "tooltip": [2, 3, 4] } }],
        }),
    );
    // Curves and cumulative revenue for the six newest cohorts with more than one period.
    let recent: Vec<(&String, &BTreeMap<i64, (f64, f64, f64)>)> =
        cells.iter().filter(|(_, row)| row.len() > 1).rev().take(6).collect();
    let curve = |value: &dyn Fn(&BTreeMap<i64, (f64, f64, f64)>, i64) -> f64| -> Vec<Value> {
        recent
            .iter()
            .rev()
            .map(|(label, row)| {
                let points: Vec<Value> = row
                    .keys()
                    .map(|&index| json!([index, round(value(row, index), 4)]))
                    .collect();
                json!({ "type": "line", "name": label, "data": points, "showSymbol": false })
            })
            .collect()
    };
    let retention = |row: &BTreeMap<i64, (f64, f64, f64)>, index: i64| {
        let (size, active, _) = row[&index];
        100.0 * active / size
    };
    let cumulative = |row: &BTreeMap<i64, (f64, f64, f64)>, index: i64| {
        let size = row.values().next().map_or(0.0, |cell| cell.0);
        row.range(..=index).map(|(_, cell)| cell.2).sum::<f64>() / size
    };
    let axes = |unit: &str| {
        json!({
            "grid": { "top": 70, "left": 60, "right": 20, "bottom": 70 },
            "legend": { "bottom": 0, "type": "scroll" },
            "tooltip": { "trigger": "axis" },
            "xAxis": { "type": "value", "name": "period index", "nameLocation": "center", "nameGap": 28, "minInterval": 1 },
            "yAxis": { "type": "value", "name": unit },
        })
    };
    let mut curves = axes("% active");
    curves["series"] = Value::Array(curve(&retention));
    let mut revenue = axes(money);
    revenue["series"] = Value::Array(curve(&cumulative));
    let mut heatmap = chart(
        "cohort-heatmap",
        "Cohort retention",
        format!(
            "Share of each cohort's customers active per period since acquisition ({} cohorts)",
            labels.len()
        ),
        heatmap,
    );
    // A row per cohort that can be read: 14 px each.
    heatmap.height = heatmap.height.max(150 + 14 * labels.len() as u32);
    let mut charts = vec![heatmap];
    // Curves need a cohort seen for two periods or more.
    if !recent.is_empty() {
        charts.extend([
            chart(
                "cohort-curves",
                "Retention curves of recent cohorts",
                "Percent of the cohort active in each period, the six newest cohorts".into(),
                option(
                    "Retention curves",
                    format!("as of {as_of} · `{name}` · six newest cohorts"),
                    curves,
                ),
            ),
            chart(
                "cohort-revenue",
                "Cumulative revenue per customer",
                format!("Net revenue to date per acquired customer, in {money}, the six newest cohorts"),
                option(
                    "Cumulative revenue per customer",
                    format!("as of {as_of} · `{name}` · {money} per acquired customer"),
                    revenue,
                ),
            ),
        ]);
    }
    Ok(Section {
        id: "cohorts",
        title: "Cohort retention",
        grids: Vec::new(),
        charts,
    })
}

fn lifecycle_section(name: &str, snapshots: &polars::prelude::DataFrame, as_of: &str) -> Result<Section> {
    let dates: Vec<String> = texts(snapshots, "snapshot_date")?
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    let stages = ["new", "reactivated", "active", "at_risk", "churned"];
    let mut series: Vec<Value> = stages
        .iter()
        .map(|stage| -> Result<Value> {
            Ok(json!({ "type": "bar", "stack": "stages", "name": stage, "data": floats(snapshots, stage)? }))
        })
        .collect::<Result<_>>()?;
    for (column, label) in [("crr", "CRR"), ("churn_rate", "churn")] {
        let values: Vec<Value> = floats(snapshots, column)?
            .into_iter()
            .map(|v| {
                if v.is_finite() {
                    json!(round(100.0 * v, 2))
                } else {
                    Value::Null
                }
            })
            .collect();
        series.push(json!({ "type": "line", "name": label, "yAxisIndex": 1, "data": values, "showSymbol": false }));
    }
    let stacked = option(
        "Lifecycle stages",
        format!("as of {as_of} · `{name}` · customers per stage at each period's end; CRR and churn in %"),
        json!({
            "grid": { "top": 70, "left": 60, "right": 50, "bottom": 70 },
            "legend": { "bottom": 0, "type": "scroll" },
            "tooltip": { "trigger": "axis" },
            "xAxis": { "type": "category", "data": dates },
            "yAxis": [{ "type": "value", "name": "customers" }, { "type": "value", "name": "%", "max": 100 }],
            "series": series,
        }),
    );
    Ok(Section {
        id: "lifecycle",
        title: "Lifecycle",
        grids: Vec::new(),
        charts: vec![chart(
            "lifecycle-stages",
            "Lifecycle stages",
            "Customers per lifecycle stage at each period's end, with customer retention and churn rates".into(),
            stacked,
        )],
    })
}

fn rfm_section(name: &str, segments: &polars::prelude::DataFrame, as_of: &str) -> Result<Section> {
    let labels: Vec<String> = texts(segments, "segment")?
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    let percent = |column: &str| -> Result<Vec<f64>> {
        Ok(floats(segments, column)?
            .into_iter()
            .map(|v| round(100.0 * v, 2))
            .collect())
    };
    let bars = option(
        "RFM segments",
        format!("as of {as_of} · `{name}` · share of customers and of revenue, %"),
        json!({
            "grid": { "top": 70, "left": 130, "right": 20, "bottom": 50 },
            "legend": { "bottom": 0 },
            "tooltip": { "trigger": "axis" },
            "yAxis": { "type": "category", "data": labels, "inverse": true },
            "xAxis": { "type": "value", "name": "%" },
            "series": [
                { "type": "bar", "name": "customers", "data": percent("share")? },
                { "type": "bar", "name": "revenue", "data": percent("revenue_share")? },
            ],
        }),
    );
    Ok(Section {
        id: "rfm",
        title: "RFM segments",
        charts: vec![chart(
            "rfm-segments",
            "RFM segments",
            "Each RFM segment's share of the customers and of the revenue".into(),
            bars,
        )],
        grids: vec![grid(
            format!("Segment summary (`{name}`, as of {as_of})"),
            segments,
            &[
                "segment",
                "customers",
                "share",
                "revenue",
                "revenue_share",
                "mean_recency_days",
                "mean_frequency",
                "mean_monetary",
            ],
        )?],
    })
}

/// Histogram bins of CLV on a log scale: below 1 in one bin, then powers of ten split in five.
/// The labels, the counts, and the customers at or below 0 (not shown on a log scale).
fn clv_bins(values: &[f64]) -> (Vec<String>, Vec<u64>, u64) {
    let steps = 5.0;
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let not_positive = finite.iter().filter(|v| **v <= 0.0).count() as u64;
    let below_one = finite.iter().filter(|v| **v > 0.0 && **v < 1.0).count() as u64;
    let bin_of = |value: f64| (value.log10() * steps).floor() as i64;
    let high = finite.iter().filter(|v| **v >= 1.0).map(|v| bin_of(*v)).max();
    let mut labels = Vec::new();
    let mut counts = Vec::new();
    if below_one > 0 {
        labels.push("< 1".to_string());
        counts.push(below_one);
    }
    if let Some(high) = high {
        let start = counts.len();
        counts.extend(std::iter::repeat_n(0, (high + 1) as usize));
        for value in finite.iter().filter(|v| **v >= 1.0) {
            counts[start + bin_of(*value) as usize] += 1;
        }
        labels.extend((0..=high).map(|bin| {
            format!(
                "{}–{}",
                short(10f64.powf(bin as f64 / steps)),
                short(10f64.powf((bin + 1) as f64 / steps))
            )
        }));
    }
    (labels, counts, not_positive)
}

fn clv_section(name: &str, clv: &polars::prelude::DataFrame, as_of: &str, money: &str) -> Result<Section> {
    let values = floats(clv, "clv")?;
    let (labels, counts, not_positive) = clv_bins(&values);
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let total: f64 = sorted.iter().sum();
    let top = sorted.iter().take(sorted.len().div_ceil(10)).sum::<f64>() / total;
    let top = if total > 0.0 {
        format!(" · top 10 % of customers hold {:.1} % of the value", 100.0 * top)
    } else {
        String::new()
    };
    let histogram = option(
        "CLV distribution",
        format!(
            "as of {as_of} · `{name}` · customers per CLV range in {money} (log scale){top}{}",
            if not_positive > 0 {
                format!(" · {not_positive} at or below 0 not shown")
            } else {
                String::new()
            }
        ),
        json!({
            "grid": { "top": 80, "left": 60, "right": 20, "bottom": 80 },
            "tooltip": { "trigger": "axis" },
            "xAxis": { "type": "category", "data": labels, "name": money, "nameLocation": "center", "nameGap": 55,
                       "axisLabel": { "rotate": 45 } },
            "yAxis": { "type": "value", "name": "customers" },
            "series": [{ "type": "bar", "name": "customers", "data": counts, "barCategoryGap": "5%" }],
        }),
    );
    Ok(Section {
        id: "clv",
        title: "Customer lifetime value",
        charts: vec![chart(
            "clv-distribution",
            "CLV distribution",
            format!("Customers per range of predicted lifetime value, in {money}, on a log scale"),
            histogram,
        )],
        grids: Vec::new(),
    })
}

fn nps_section(name: &str, periods: &polars::prelude::DataFrame, as_of: &str) -> Result<Section> {
    let starts: Vec<String> = texts(periods, "period_start")?
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    let nps: Vec<Value> = floats(periods, "nps")?
        .into_iter()
        .map(|v| if v.is_finite() { json!(round(v, 2)) } else { Value::Null })
        .collect();
    let line = option(
        "NPS over time",
        format!("as of {as_of} · `{name}` · promoters − detractors, % of responses, −100 to 100"),
        json!({
            "grid": { "top": 70, "left": 50, "right": 20, "bottom": 40 },
            "tooltip": { "trigger": "axis" },
            "xAxis": { "type": "category", "data": starts },
            "yAxis": { "type": "value", "min": -100, "max": 100 },
            "series": [{ "type": "line", "name": "NPS", "data": nps }],
        }),
    );
    Ok(Section {
        id: "nps",
        title: "Net Promoter Score",
        charts: vec![chart(
            "nps-periods",
            "NPS over time",
            "The Net Promoter Score of each period".into(),
            line,
        )],
        grids: Vec::new(),
    })
}

/// `columns` of `frame` as text rows: numbers with up to 4 significant decimals, shares as %.
fn grid(caption: String, frame: &polars::prelude::DataFrame, columns: &[&str]) -> Result<Grid> {
    let present: Vec<&str> = columns.iter().copied().filter(|c| frame.column(c).is_ok()).collect();
    let mut cells: Vec<Vec<String>> = vec![Vec::new(); frame.height()];
    for column in &present {
        let dtype = frame.column(column)?.dtype().clone();
        let values: Vec<String> = if dtype.is_float() {
            floats(frame, column)?
                .into_iter()
                .map(|v| match (v.is_finite(), column.ends_with("share")) {
                    (false, _) => String::new(),
                    (true, true) => format!("{:.1} %", 100.0 * v),
                    (true, false) => format!("{}", round(v, 4)),
                })
                .collect()
        } else {
            texts(frame, column)?
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect()
        };
        for (row, value) in values.into_iter().enumerate() {
            cells[row].push(value);
        }
    }
    Ok(Grid {
        caption,
        columns: present.iter().map(|c| c.to_string()).collect(),
        rows: cells,
    })
}

fn repeat_section(
    name: &str,
    summary: &polars::prelude::DataFrame,
    transitions: Option<&(String, polars::prelude::DataFrame)>,
    as_of: &str,
) -> Result<Section> {
    let cohorts = texts(summary, "cohort")?;
    let rows: Vec<usize> = (0..cohorts.len()).filter(|&row| cohorts[row].is_some()).collect();
    let labels: Vec<String> = rows
        .iter()
        .map(|&row| cohorts[row].clone().unwrap_or_default())
        .collect();
    // The windows the stage was configured with: `repeat_rate_<N>d` columns.
    let mut windows: Vec<(u32, String)> = summary
        .get_column_names()
        .iter()
        .filter_map(|column| {
            let days = column.strip_prefix("repeat_rate_")?.strip_suffix('d')?.parse().ok()?;
            Some((days, column.to_string()))
        })
        .collect();
    windows.sort();
    let series: Vec<Value> = windows
        .iter()
        .map(|(days, column)| -> Result<Value> {
            let values = floats(summary, column)?;
            let data: Vec<Value> = rows
                .iter()
                .map(|&row| {
                    if values[row].is_finite() {
                        json!(round(100.0 * values[row], 2))
                    } else {
                        Value::Null
                    }
                })
                .collect();
            Ok(json!({ "type": "line", "name": format!("within {days} days"), "data": data, "connectNulls": false }))
        })
        .collect::<Result<_>>()?;
    let by_cohort = option(
        "Repeat rate by cohort",
        format!("as of {as_of} · `{name}` · % of a cohort's customers with a second purchase within N days (cohorts observed that long)"),
        json!({
            "grid": { "top": 70, "left": 50, "right": 20, "bottom": 70 },
            "legend": { "bottom": 0 },
            "tooltip": { "trigger": "axis" },
            "xAxis": { "type": "category", "data": labels },
            "yAxis": { "type": "value", "name": "%", "max": 100 },
            "series": series,
        }),
    );
    let mut charts = vec![chart(
        "repeat-by-cohort",
        "Repeat rate by cohort",
        "Share of each cohort's customers who bought again within each window".into(),
        by_cohort,
    )];
    if let Some((transitions_name, transitions)) = transitions {
        let cohort = texts(transitions, "cohort")?;
        let (k, probability) = (floats(transitions, "k")?, floats(transitions, "probability")?);
        let overall: Vec<usize> = (0..cohort.len()).filter(|&row| cohort[row].is_none()).collect();
        let ladder = option(
            "Repeat ladder",
            format!(
                "as of {as_of} · `{transitions_name}` · P(k+1 | k): % of customers with k purchases who made another"
            ),
            json!({
                "grid": { "top": 70, "left": 50, "right": 20, "bottom": 50 },
                "tooltip": { "trigger": "axis" },
                "xAxis": { "type": "category", "name": "k", "data": overall.iter().map(|&row| k[row] as i64).collect::<Vec<_>>() },
                "yAxis": { "type": "value", "name": "%", "max": 100 },
                "series": [{ "type": "bar", "name": "P(k+1 | k)",
                             "data": overall.iter().map(|&row| round(100.0 * probability[row], 2)).collect::<Vec<_>>() }],
            }),
        );
        charts.push(chart(
            "repeat-ladder",
            "Repeat ladder",
            "Probability of a next purchase after the k-th, all cohorts".into(),
            ladder,
        ));
    }
    Ok(Section {
        id: "repeat",
        title: "Repeat purchases",
        charts,
        grids: Vec::new(),
    })
}

/// BG/NBD's probability that a customer is alive, P(alive | x, t_x, T), for the fitted (r, α, a,
/// b): 1 / (1 + [x > 0] · a / (b + x − 1) · ((α + T) / (α + t_x))^(r + x)).
fn p_alive(params: [f64; 4], x: f64, t_x: f64, big_t: f64) -> f64 {
    let [r, alpha, a, b] = params;
    if x == 0.0 {
        return 1.0;
    }
    1.0 / (1.0 + a / (b + x - 1.0) * ((alpha + big_t) / (alpha + t_x)).powf(r + x))
}

/// The P(alive) matrix by frequency × recency for a customer of the longest tenure, from the
/// fitted BG/NBD parameters (as `lifetimes`' plot_probability_alive_matrix draws it).
fn alive_matrix(
    name: &str,
    model: &polars::prelude::DataFrame,
    clv: &polars::prelude::DataFrame,
    as_of: &str,
) -> Result<Option<Chart>> {
    let (models, parameters, values) = (
        texts(model, "model")?,
        texts(model, "parameter")?,
        floats(model, "value")?,
    );
    let unit = texts(model, "time_unit")?
        .first()
        .cloned()
        .flatten()
        .unwrap_or_else(|| "week".into());
    let find = |wanted: &str| {
        (0..models.len())
            .find(|&row| models[row].as_deref() == Some("bgnbd") && parameters[row].as_deref() == Some(wanted))
            .map(|row| values[row])
    };
    let (Some(r), Some(alpha), Some(a), Some(b)) = (find("r"), find("alpha"), find("a"), find("b")) else {
        return Ok(None);
    };
    let tenure_column = clv
        .get_column_names()
        .into_iter()
        .find(|c| c.starts_with("T_"))
        .map(|c| c.to_string());
    let Some(tenure_column) = tenure_column else {
        return Ok(None);
    };
    let big_t = floats(clv, &tenure_column)?
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .ceil();
    let max_frequency = floats(clv, "frequency")?
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .min(40.0);
    let steps = 40.0_f64.min(big_t.max(1.0));
    let mut cells = Vec::new();
    for x in 0..=(max_frequency as i64) {
        for step in 0..=(steps as i64) {
            let t_x = big_t * step as f64 / steps;
            cells.push(json!([
                step,
                x,
                round(p_alive([r, alpha, a, b], x as f64, t_x, big_t), 4)
            ]));
        }
    }
    let recency: Vec<String> = (0..=(steps as i64))
        .map(|step| format!("{:.0}", big_t * step as f64 / steps))
        .collect();
    let matrix = option(
        "P(alive) by frequency and recency",
        format!("as of {as_of} · `{name}` (BG/NBD) · a customer of {big_t:.0} {unit}s' tenure"),
        json!({
            "grid": { "top": 70, "left": 60, "right": 20, "bottom": 105 },
            "xAxis": { "type": "category", "data": recency, "name": format!("recency ({unit}s, age at last purchase)"), "nameLocation": "center", "nameGap": 28 },
            "yAxis": { "type": "category", "data": (0..=(max_frequency as i64)).collect::<Vec<_>>(), "name": "frequency (repeat purchases)" },
            "visualMap": { "min": 0, "max": 1, "dimension": 2, "calculable": true, "orient": "horizontal", "left": "center", "bottom": 0, "itemHeight": 120 },
            "series": [{ "type": "heatmap", "name": "P(alive)", "data": cells }],
        }),
    );
    Ok(Some(chart(
        "clv-alive-matrix",
        "P(alive) by frequency and recency",
        "Probability a customer is still active given their repeat purchases and recency, from the fitted BG/NBD model"
            .into(),
        matrix,
    )))
}

/// Holdout calibration: predicted against actual purchases per frequency bucket.
fn calibration(name: &str, validation: &polars::prelude::DataFrame, as_of: &str) -> Result<Chart> {
    let buckets = texts(validation, "frequency_bucket")?;
    let rows: Vec<usize> = (0..buckets.len())
        .filter(|&row| buckets[row].as_deref() != Some("all"))
        .collect();
    let (customers, predicted, actual) = (
        floats(validation, "customers")?,
        floats(validation, "predicted_purchases")?,
        floats(validation, "actual_purchases")?,
    );
    let per_customer =
        |values: &[f64]| -> Vec<f64> { rows.iter().map(|&row| round(values[row] / customers[row], 4)).collect() };
    let bars = option(
        "Holdout calibration",
        format!("as of {as_of} · `{name}` · purchases per customer in the holdout, by calibration frequency"),
        json!({
            "grid": { "top": 70, "left": 50, "right": 20, "bottom": 70 },
            "legend": { "bottom": 0 },
            "tooltip": { "trigger": "axis" },
            "xAxis": { "type": "category", "name": "frequency in calibration", "nameLocation": "center", "nameGap": 28,
                       "data": rows.iter().map(|&row| buckets[row].clone().unwrap_or_default()).collect::<Vec<_>>() },
            "yAxis": { "type": "value", "name": "purchases per customer" },
            "series": [
                { "type": "bar", "name": "predicted", "data": per_customer(&predicted) },
                { "type": "bar", "name": "actual", "data": per_customer(&actual) },
            ],
        }),
    );
    Ok(chart(
        "clv-calibration",
        "Holdout calibration",
        "Purchases predicted by the model fitted before the holdout, against those made in it, per frequency bucket"
            .into(),
        bars,
    ))
}

/// Per acquisition channel (`all` for every channel): Σ over cohorts of `column` × new customers
/// and of new customers, from the acquisition table.
/// A row's channel in the acquisition tables: `all` for the all-channels rows, `None` for a
/// customer without a channel (counted in `all` only).
fn channel_key(all: &Option<String>, channel: &Option<String>) -> Option<String> {
    match (all.as_deref(), channel) {
        (Some("true"), _) => Some("all".to_string()),
        (_, Some(channel)) => Some(channel.clone()),
        _ => None,
    }
}

/// LTV:CAC per channel (`all` for every channel): Σ LTV × new customers / Σ spend over the
/// cohorts with an LTV; channels without spend left out.
fn ltv_to_cac(acquisition: &polars::prelude::DataFrame) -> Result<BTreeMap<String, f64>> {
    let channels = texts(acquisition, "acquisition_channel")?;
    let all = texts(acquisition, "all_channels")?;
    let (new, spend, ltv) = (
        floats(acquisition, "new_customers")?,
        floats(acquisition, "spend")?,
        floats(acquisition, "ltv_per_customer")?,
    );
    let mut totals: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for row in (0..new.len()).filter(|&row| ltv[row].is_finite()) {
        let Some(key) = channel_key(&all[row], &channels[row]) else {
            continue;
        };
        let entry = totals.entry(key).or_default();
        entry.0 += ltv[row] * new[row];
        entry.1 += if spend[row].is_finite() { spend[row] } else { 0.0 };
    }
    Ok(totals
        .into_iter()
        .filter(|(_, (_, spent))| *spent > 0.0)
        .map(|(channel, (value, spent))| (channel, value / spent))
        .collect())
}

fn acquisition_section(
    name: &str,
    acquisition: &polars::prelude::DataFrame,
    payback: Option<&(String, polars::prelude::DataFrame)>,
    as_of: &str,
    money: &str,
) -> Result<Section> {
    let ratios = ltv_to_cac(acquisition)?;
    let spent: Vec<(&String, f64)> = ratios.iter().map(|(channel, ratio)| (channel, *ratio)).collect();
    let ratio = option(
        "LTV:CAC by channel",
        format!("as of {as_of} · `{name}` · Σ LTV × new customers / Σ spend over the cohorts with an LTV (channels with spend)"),
        json!({
            "grid": { "top": 70, "left": 50, "right": 20, "bottom": 40 },
            "tooltip": { "trigger": "axis" },
            "xAxis": { "type": "category", "data": spent.iter().map(|(c, _)| c.to_string()).collect::<Vec<_>>() },
            "yAxis": { "type": "value", "name": "LTV:CAC" },
            "series": [{ "type": "bar", "name": "LTV:CAC", "data": spent.iter().map(|(_, v)| round(*v, 3)).collect::<Vec<_>>() }],
        }),
    );
    let mut charts = Vec::new();
    // Without an LTV (no `ltv` stage given), there is no ratio to draw.
    if !spent.is_empty() {
        charts.push(chart(
            "ltv-to-cac",
            "LTV:CAC by channel",
            "Lifetime value per acquired customer over the cost of acquiring one, per channel".into(),
            ratio,
        ));
    }
    if let Some((payback_name, payback)) = payback {
        // Per channel and period index: Σ cumulative contribution × new customers / Σ CAC × new
        // customers, over the cohorts with spend.
        let channels = texts(payback, "acquisition_channel")?;
        let (all, cohorts) = (texts(payback, "all_channels")?, texts(payback, "cohort")?);
        let (index, contribution, cac) = (
            floats(payback, "period_index")?,
            floats(payback, "cumulative_contribution_per_customer")?,
            floats(payback, "cac")?,
        );
        let mut new_of: BTreeMap<(String, String), f64> = BTreeMap::new();
        let (a_channels, a_all, a_cohorts, a_new) = (
            texts(acquisition, "acquisition_channel")?,
            texts(acquisition, "all_channels")?,
            texts(acquisition, "cohort")?,
            floats(acquisition, "new_customers")?,
        );
        let key = channel_key;
        for row in 0..a_new.len() {
            if let Some(channel) = key(&a_all[row], &a_channels[row]) {
                new_of.insert((channel, a_cohorts[row].clone().unwrap_or_default()), a_new[row]);
            }
        }
        let mut curves: BTreeMap<String, BTreeMap<i64, (f64, f64)>> = BTreeMap::new();
        for row in 0..index.len() {
            let Some(channel) = key(&all[row], &channels[row]) else {
                continue;
            };
            let new = new_of
                .get(&(channel.clone(), cohorts[row].clone().unwrap_or_default()))
                .copied()
                .unwrap_or(0.0);
            if !(cac[row].is_finite() && cac[row] > 0.0 && contribution[row].is_finite()) {
                continue;
            }
            let cell = curves.entry(channel).or_default().entry(index[row] as i64).or_default();
            cell.0 += contribution[row] * new;
            cell.1 += cac[row] * new;
        }
        let series: Vec<Value> = curves
            .iter()
            .map(|(channel, points)| {
                let data: Vec<Value> = points
                    .iter()
                    .filter(|(_, (_, cost))| *cost > 0.0)
                    .map(|(index, (recovered, cost))| json!([index, round(100.0 * recovered / cost, 2)]))
                    .collect();
                json!({ "type": "line", "name": channel, "data": data, "showSymbol": false })
            })
            .collect();
        let curves = option(
            "Payback",
            format!("as of {as_of} · `{payback_name}` · contribution to date per customer as % of CAC ({money}), cohorts with spend"),
            json!({
                "grid": { "top": 70, "left": 50, "right": 20, "bottom": 70 },
                "legend": { "bottom": 0, "type": "scroll" },
                "tooltip": { "trigger": "axis" },
                "xAxis": { "type": "value", "name": "period index", "nameLocation": "center", "nameGap": 28, "minInterval": 1 },
                "yAxis": { "type": "value", "name": "% of CAC recovered" },
                "series": series,
            }),
        );
        charts.push(chart(
            "payback-curves",
            "Payback",
            "Share of the acquisition cost recovered by contribution, per period since acquisition and channel".into(),
            curves,
        ));
    }
    Ok(Section {
        id: "acquisition",
        title: "Unit economics",
        charts,
        grids: Vec::new(),
    })
}

fn nps_by_segment(name: &str, summary: &polars::prelude::DataFrame, as_of: &str) -> Result<Chart> {
    let labels: Vec<String> = texts(summary, "segment")?
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    let nps: Vec<Value> = floats(summary, "nps")?
        .into_iter()
        .map(|v| if v.is_finite() { json!(round(v, 2)) } else { Value::Null })
        .collect();
    let bars = option(
        "NPS by segment",
        format!("as of {as_of} · `{name}` · the last answer of each respondent, −100 to 100"),
        json!({
            "grid": { "top": 70, "left": 130, "right": 20, "bottom": 40 },
            "tooltip": { "trigger": "axis" },
            "yAxis": { "type": "category", "data": labels, "inverse": true },
            "xAxis": { "type": "value", "min": -100, "max": 100 },
            "series": [{ "type": "bar", "name": "NPS", "data": nps }],
        }),
    );
    Ok(chart(
        "nps-by-segment",
        "NPS by segment",
        "The Net Promoter Score of each segment's respondents".into(),
        bars,
    ))
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// A bin edge with two significant digits.
fn short(value: f64) -> String {
    let digits = (1 - value.log10().floor() as i32).max(0) as usize;
    format!("{value:.digits$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_snapshot_counts_only_when_it_ends_its_period() {
        let dates = |list: &[&str]| list.iter().map(|d| Some(d.to_string())).collect::<Vec<_>>();
        let months = dates(&["2024-11-01", "2024-12-01"]);
        assert_eq!(
            last_complete_snapshot(&months, &dates(&["2024-11-30", "2024-12-31"])),
            Some(1)
        );
        assert_eq!(
            last_complete_snapshot(&months, &dates(&["2024-11-30", "2024-12-07"])),
            Some(0)
        );
        let weeks = dates(&["2024-12-16", "2024-12-23"]);
        assert_eq!(
            last_complete_snapshot(&weeks, &dates(&["2024-12-22", "2024-12-29"])),
            Some(1)
        );
        assert_eq!(
            last_complete_snapshot(&weeks, &dates(&["2024-12-22", "2024-12-27"])),
            Some(0)
        );
        // A quarter ending at as_of, and one that as_of cuts (October alone is not Q4).
        let quarters = dates(&["2024-07-01", "2024-10-01"]);
        assert_eq!(
            last_complete_snapshot(&quarters, &dates(&["2024-09-30", "2024-12-31"])),
            Some(1)
        );
        assert_eq!(
            last_complete_snapshot(&quarters, &dates(&["2024-09-30", "2024-10-31"])),
            Some(0)
        );
        let days = dates(&["2024-12-30", "2024-12-31"]);
        assert_eq!(
            last_complete_snapshot(&days, &dates(&["2024-12-30", "2024-12-31"])),
            Some(1)
        );
        // One snapshot: its period's length is unknown.
        assert_eq!(
            last_complete_snapshot(&dates(&["2024-12-01"]), &dates(&["2024-12-31"])),
            None
        );
    }

    #[test]
    fn clv_bins_split_powers_of_ten_in_five() {
        let (labels, counts, not_positive) = clv_bins(&[1e-9, 0.5, 1.0, 1.5, 10.0, 99.0, -3.0, 0.0, f64::NAN]);
        assert_eq!(not_positive, 2);
        assert_eq!(counts.iter().sum::<u64>(), 6);
        // Below 1 in one bin; 1 and 1.5 share the first fifth of [1, 10); 10 starts [10, 100)
        // (bin 5); 99 ends it (bin 9).
        assert_eq!(labels.len(), counts.len());
        assert_eq!((labels[0].as_str(), counts[0]), ("< 1", 2));
        assert_eq!((labels[1].as_str(), counts[1]), ("1.0–1.6", 2));
        assert_eq!((counts[6], counts[10], counts.len()), (1, 1, 11));
    }
}
