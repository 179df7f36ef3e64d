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
}

/// One chart: its element id, accessible title and ECharts option.
#[derive(Debug, Clone, Serialize)]
pub struct Chart {
    pub id: String,
    pub title: String,
    pub description: String,
    pub option: Value,
}

/// A part of the page, for one stage kind.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub id: &'static str,
    pub title: &'static str,
    pub charts: Vec<Chart>,
}

/// The headline tiles of `snapshot`, each where its table exists.
pub fn tiles(snapshot: &Snapshot) -> Result<Vec<Tile>> {
    let mut tiles = Vec::new();
    let mut tile = |key, label, value: f64, unit, note: String| {
        if value.is_finite() {
            tiles.push(Tile {
                key,
                label,
                value,
                unit,
                note,
                previous: None,
            });
        }
    };
    if let Some((name, facts)) = snapshot.table("customer_facts", "")? {
        tile(
            "customers",
            "Customers",
            facts.height() as f64,
            "count",
            format!("rows of `{name}`"),
        );
    }
    if let Some((name, snapshots)) = snapshot.table("lifecycle", "snapshots")? {
        if let Some(row) = last_complete_snapshot(&texts(&snapshots, "snapshot_date")?) {
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
        let customers: f64 = floats(&summary, "customers")?.iter().sum();
        let repeat: f64 = floats(&summary, "repeat_customers")?.iter().sum();
        tile(
            "repeat_rate",
            "Repeat rate",
            repeat / customers,
            "share",
            format!("customers with a second purchase / customers, all cohorts (`{name}`)"),
        );
    }
    if let Some((name, clv)) = snapshot.table("clv", "customers")? {
        let values: Vec<f64> = floats(&clv, "clv")?.into_iter().filter(|v| v.is_finite()).collect();
        let total: f64 = values.iter().sum();
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
    if let Some((name, acquisition)) = snapshot.table("acquisition", "")? {
        let all = texts(&acquisition, "all_channels")?;
        let pick = |column: &str| -> Result<Vec<f64>> {
            Ok(floats(&acquisition, column)?
                .into_iter()
                .zip(&all)
                .filter(|(_, all)| all.as_deref() == Some("true"))
                .map(|(value, _)| value)
                .collect())
        };
        let (spend, new, ltv) = (pick("spend")?, pick("new_customers")?, pick("ltv_per_customer")?);
        let customers: f64 = new.iter().sum();
        let cac = spend.iter().sum::<f64>() / customers;
        tile(
            "cac",
            "CAC",
            cac,
            "money",
            format!("spend / new customers, all cohorts and channels (`{name}`)"),
        );
        let ltv: f64 = ltv
            .iter()
            .zip(&new)
            .filter(|(v, _)| v.is_finite())
            .map(|(v, n)| v * n)
            .sum();
        tile(
            "ltv_to_cac",
            "LTV:CAC",
            ltv / customers / cac,
            "ratio",
            format!("mean ltv_per_customer / CAC, all cohorts and channels (`{name}`)"),
        );
    }
    if let Some((name, periods)) = snapshot.table("nps", "periods")? {
        let (nps, responses) = (floats(&periods, "nps")?, floats(&periods, "responses")?);
        if let Some(row) = (0..nps.len()).rev().find(|&row| responses[row] > 0.0) {
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

/// The last lifecycle snapshot of a whole period: the last one unless it is as_of inside its
/// period (the day after it does not start the next period, by the gap between periods).
fn last_complete_snapshot(dates: &[Option<String>]) -> Option<usize> {
    use chrono::{Datelike, NaiveDate};
    let parse = |row: usize| dates.get(row)?.as_deref()?.parse::<NaiveDate>().ok();
    let last = dates.len().checked_sub(1)?;
    let (Some(end), Some(before)) = (parse(last), last.checked_sub(1).and_then(parse)) else {
        return Some(last);
    };
    let next = end.succ_opt()?;
    let gap = (end - before).num_days();
    let starts_period = match gap {
        7 => next.weekday() == chrono::Weekday::Mon,
        28..=31 => next.day() == 1,
        89..=92 => next.day() == 1 && (next.month() - 1) % 3 == 0,
        _ => next.ordinal() == 1,
    };
    Some(if starts_period { last } else { last.saturating_sub(1) })
}

/// Every section the snapshot has tables for.
pub fn sections(snapshot: &Snapshot) -> Result<Vec<Section>> {
    let as_of = snapshot.as_of();
    let money = snapshot.currency().unwrap_or_else(|| "currency units".into());
    let mut sections = Vec::new();
    if let Some((name, cohorts)) = snapshot.table("cohort_retention", "")? {
        sections.push(cohort_section(&name, &cohorts, &as_of, &money)?);
    }
    if let Some((name, snapshots)) = snapshot.table("lifecycle", "snapshots")? {
        sections.push(lifecycle_section(&name, &snapshots, &as_of)?);
    }
    if let Some((name, segments)) = snapshot.table("rfm", "segments")? {
        sections.push(rfm_section(&name, &segments, &as_of)?);
    }
    if let Some((name, clv)) = snapshot.table("clv", "customers")? {
        sections.push(clv_section(&name, &clv, &as_of, &money)?);
    }
    if let Some((name, periods)) = snapshot.table("nps", "periods")? {
        sections.push(nps_section(&name, &periods, &as_of)?);
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

fn chart(id: &str, title: &str, description: String, option: Value) -> Chart {
    Chart {
        id: id.to_string(),
        title: title.to_string(),
        description,
        option,
    }
}

/// Per (cohort, period index), summed over any dimension: cohort customers, active customers
/// and revenue, in cohort order.
type CohortCells = BTreeMap<String, BTreeMap<i64, (f64, f64, f64)>>;

fn cohort_cells(cohorts: &polars::prelude::DataFrame) -> Result<CohortCells> {
    let (cohort, index) = (texts(cohorts, "cohort")?, floats(cohorts, "period_index")?);
    let (size, active, revenue) = (
        floats(cohorts, "cohort_customers")?,
        floats(cohorts, "active_customers")?,
        floats(cohorts, "revenue")?,
    );
    let mut cells: CohortCells = BTreeMap::new();
    for row in 0..cohort.len() {
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
    let subtitle = format!("as of {as_of} · `{name}` · % of the cohort's customers active in each period");
    let heatmap = option(
        "Cohort retention",
        subtitle,
        json!({
            "grid": { "top": 70, "left": 80, "right": 20, "bottom": 60 },
            "xAxis": { "type": "category", "name": "period index", "nameLocation": "center", "nameGap": 28,
                       "data": (0..=periods).collect::<Vec<_>>() },
            "yAxis": { "type": "category", "data": labels, "inverse": true },
            "visualMap": { "min": 0, "max": 100, "calculable": true, "orient": "horizontal", "left": "center",
                           "bottom": 0, "itemHeight": 120, "text": ["100 %", "0 %"] },
            "series": [{ "type": "heatmap", "name": "retention %", "data": heat,
                         "encode": { "x": 0, "y": 1, "value": 2 } }],
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
    Ok(Section {
        id: "cohorts",
        title: "Cohort retention",
        charts: vec![
            chart(
                "cohort-heatmap",
                "Cohort retention",
                format!(
                    "Share of each cohort's customers active per period since acquisition ({} cohorts)",
                    labels.len()
                ),
                heatmap,
            ),
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
        ],
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
    })
}

/// Histogram bins of CLV on a log scale: powers of ten split in five.
fn clv_bins(values: &[f64]) -> (Vec<String>, Vec<u64>, u64) {
    let positive: Vec<f64> = values.iter().copied().filter(|v| v.is_finite() && *v > 0.0).collect();
    let not_positive = values.iter().filter(|v| v.is_finite() && **v <= 0.0).count() as u64;
    if positive.is_empty() {
        return (Vec::new(), Vec::new(), not_positive);
    }
    let steps = 5.0;
    let low = positive
        .iter()
        .map(|v| (v.log10() * steps).floor() as i64)
        .min()
        .unwrap_or(0);
    let high = positive
        .iter()
        .map(|v| (v.log10() * steps).floor() as i64)
        .max()
        .unwrap_or(0);
    let mut counts = vec![0u64; (high - low + 1) as usize];
    for value in &positive {
        counts[((value.log10() * steps).floor() as i64 - low) as usize] += 1;
    }
    let labels = (low..=high)
        .map(|bin| {
            format!(
                "{}–{}",
                short(10f64.powf(bin as f64 / steps)),
                short(10f64.powf((bin + 1) as f64 / steps))
            )
        })
        .collect();
    (labels, counts, not_positive)
}

fn clv_section(name: &str, clv: &polars::prelude::DataFrame, as_of: &str, money: &str) -> Result<Section> {
    let values = floats(clv, "clv")?;
    let (labels, counts, not_positive) = clv_bins(&values);
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let total: f64 = sorted.iter().sum();
    let top = sorted.iter().take(sorted.len().div_ceil(10)).sum::<f64>() / total;
    let histogram = option(
        "CLV distribution",
        format!(
            "as of {as_of} · `{name}` · customers per CLV range in {money} (log scale) · top 10 % hold {:.1} % of the value{}",
            100.0 * top,
            if not_positive > 0 { format!(" · {not_positive} at or below 0 not shown") } else { String::new() }
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
    })
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
        assert_eq!(last_complete_snapshot(&dates(&["2024-11-30", "2024-12-31"])), Some(1));
        assert_eq!(last_complete_snapshot(&dates(&["2024-11-30", "2024-12-15"])), Some(0));
        assert_eq!(last_complete_snapshot(&dates(&["2024-12-22", "2024-12-29"])), Some(1));
        assert_eq!(last_complete_snapshot(&dates(&["2024-12-22", "2024-12-27"])), Some(0));
        assert_eq!(last_complete_snapshot(&dates(&["2024-09-30", "2024-12-31"])), Some(1));
    }

    #[test]
    fn clv_bins_split_powers_of_ten_in_five() {
        let (labels, counts, not_positive) = clv_bins(&[1.0, 1.5, 10.0, 99.0, -3.0, 0.0, f64::NAN]);
        assert_eq!(not_positive, 2);
        assert_eq!(counts.iter().sum::<u64>(), 4);
        // 1 and 1.5 share the first fifth of [1, 10); 10 starts [10, 100); 99 ends it.
        assert_eq!(counts.first(), Some(&2));
        assert_eq!(labels.len(), counts.len());
        assert_eq!(labels[0], "1.0–1.6");
    }
}
