//! `rfm`: recency, frequency and monetary scores per customer, segments, and the cut points used.
//!
//! Scores run 1..bins, higher is better (recent, frequent, high spend). Policies: `rank_min`
//! (tied customers share a score: 1 + ⌊bins·(r − 1)/n⌋ with r the smallest 1-based rank in
//! ascending goodness), `ntile` (the same over a strict order by value then customer_id, so bins
//! are equal-sized) and `thresholds` (explicit ascending cut points per dimension).

use std::collections::BTreeSet;

use anyhow::Result;
use polars::prelude::*;
use serde::Deserialize;

use super::{InputKind, Kind, Stage, StageInputs};
use crate::config::{reader::TableReader, Diagnostic, Diagnostics};
use crate::money::from_micros;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    #[default]
    RankMin,
    Ntile,
    Thresholds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Monetary {
    /// Net revenue to date.
    #[default]
    Total,
    /// Average order value.
    Average,
}

/// Ascending cut points per dimension for `method = "thresholds"`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub recency: Vec<f64>,
    pub frequency: Vec<f64>,
    pub monetary: Vec<f64>,
}

/// One ordered first-match segment rule on inclusive score ranges; a missing range matches all.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentRule {
    pub segment: String,
    pub r: Option<[u32; 2]>,
    pub f: Option<[u32; 2]>,
    pub m: Option<[u32; 2]>,
}

impl SegmentRule {
    fn matches(&self, r: u32, f: u32, m: u32) -> bool {
        let within = |range: &Option<[u32; 2]>, score: u32| range.is_none_or(|[lo, hi]| lo <= score && score <= hi);
        within(&self.r, r) && within(&self.f, f) && within(&self.m, m)
    }
}

/// Options of `kind = "rfm"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RfmOptions {
    /// Number of scores per dimension (2..=9) for `rank_min` and `ntile`. Default 5.
    pub bins: u32,
    /// `rank_min` (default), `ntile` or `thresholds`.
    pub method: Method,
    /// `total` (net revenue, default) or `average` (AOV).
    pub monetary: Monetary,
    /// Cut points for `method = "thresholds"`.
    pub thresholds: Option<Thresholds>,
    /// Segment rules, first match wins; default: the R×F grid for 5 bins.
    pub segments: Option<Vec<SegmentRule>>,
}

impl Default for RfmOptions {
    fn default() -> Self {
        RfmOptions {
            bins: 5,
            method: Method::RankMin,
            monetary: Monetary::Total,
            thresholds: None,
            segments: None,
        }
    }
}

pub static KIND: Kind = Kind {
    name: "rfm",
    summary: "recency/frequency/monetary scores, segments, and the cut points used",
    input: InputKind::Source,
    tables: &["customers", "thresholds", "segments"],
    customer_table: Some(0),
    options: serde_aux::serde_introspection::serde_introspect::<RfmOptions>,
    parse,
};

fn parse(reader: &TableReader, common: &[&str], diagnostics: &mut Diagnostics) -> Option<Box<dyn Stage>> {
    let options = super::parse_options::<RfmOptions>(reader, common, diagnostics)?;
    let errors = options.check();
    if errors.is_empty() {
        let rules = options.rules();
        return Some(Box::new(Rfm { options, rules }));
    }
    for (key, message) in errors {
        diagnostics.push(Diagnostic::new(
            format!("{}: {message}", reader.context),
            reader.value_span(key).or_else(|| reader.span.clone()),
        ));
    }
    None
}

/// The default segment map on (R, F) for 5 bins, as first-match rules.
pub fn default_rules() -> Vec<SegmentRule> {
    let rule = |segment: &str, r: [u32; 2], f: [u32; 2]| SegmentRule {
        segment: segment.into(),
        r: Some(r),
        f: Some(f),
        m: None,
    };
    vec![
        rule("champions", [5, 5], [4, 5]),
        rule("new_customers", [5, 5], [1, 1]),
        rule("potential_loyalists", [5, 5], [2, 3]),
        rule("loyal_customers", [3, 4], [4, 5]),
        rule("promising", [4, 4], [1, 1]),
        rule("potential_loyalists", [4, 4], [2, 3]),
        rule("need_attention", [3, 3], [3, 3]),
        rule("about_to_sleep", [3, 3], [1, 2]),
        rule("cannot_lose_them", [1, 2], [5, 5]),
        rule("at_risk", [1, 2], [3, 4]),
        rule("hibernating", [1, 2], [1, 2]),
    ]
}

impl RfmOptions {
    /// Scores per dimension (R, F, M).
    pub fn bins_per_dimension(&self) -> [u32; 3] {
        match (&self.method, &self.thresholds) {
            (Method::Thresholds, Some(t)) => [
                t.recency.len() as u32 + 1,
                t.frequency.len() as u32 + 1,
                t.monetary.len() as u32 + 1,
            ],
            _ => [self.bins; 3],
        }
    }

    fn rules(&self) -> Vec<SegmentRule> {
        self.segments.clone().unwrap_or_else(default_rules)
    }

    /// Problems as (key, message); empty when the options are usable.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if !(2..=9).contains(&self.bins) {
            errors.push(("bins", format!("`bins` must be between 2 and 9, got {}", self.bins)));
        }
        match (&self.method, &self.thresholds) {
            (Method::Thresholds, None) => {
                errors.push(("method", "`method = \"thresholds\"` needs `thresholds = { recency = [...], frequency = [...], monetary = [...] }`".into()))
            }
            (Method::Thresholds, Some(thresholds)) => {
                for (name, cuts) in [("recency", &thresholds.recency), ("frequency", &thresholds.frequency), ("monetary", &thresholds.monetary)] {
                    if cuts.is_empty() || cuts.len() > 8 {
                        errors.push(("thresholds", format!("`thresholds.{name}` needs 1 to 8 cut points, got {}", cuts.len())));
                    } else if cuts.windows(2).any(|w| w[0] >= w[1]) || cuts.iter().any(|c| !c.is_finite()) {
                        errors.push(("thresholds", format!("`thresholds.{name}` must be strictly ascending finite numbers, got {cuts:?}")));
                    }
                }
            }
            (_, Some(_)) => errors.push(("thresholds", "`thresholds` is used only with `method = \"thresholds\"`".into())),
            _ => {}
        }
        if !errors.is_empty() {
            return errors;
        }
        let [rb, fb, mb] = self.bins_per_dimension();
        let Some(rules) = &self.segments else {
            if [rb, fb, mb] != [5, 5, 5] {
                errors.push((
                    "segments",
                    format!("the default segment map is for 5 scores per dimension (here R {rb}, F {fb}, M {mb}): give `segments` rules"),
                ));
            }
            return errors;
        };
        if rules.is_empty() {
            errors.push(("segments", "`segments` has no rules".into()));
            return errors;
        }
        for rule in rules {
            for (name, range, bins) in [("r", rule.r, rb), ("f", rule.f, fb), ("m", rule.m, mb)] {
                if let Some([lo, hi]) = range {
                    if lo < 1 || hi > bins || lo > hi {
                        errors.push((
                            "segments",
                            format!(
                                "rule `{}`: `{name} = [{lo}, {hi}]` must be within 1..={bins}, low ≤ high",
                                rule.segment
                            ),
                        ));
                    }
                }
            }
        }
        if !errors.is_empty() {
            return errors;
        }
        let mut covered: BTreeSet<(u32, u32, u32)> = BTreeSet::new();
        for rule in rules {
            let mut new_cells = 0;
            for r in 1..=rb {
                for f in 1..=fb {
                    for m in 1..=mb {
                        if rule.matches(r, f, m) && covered.insert((r, f, m)) {
                            new_cells += 1;
                        }
                    }
                }
            }
            if new_cells == 0 {
                errors.push((
                    "segments",
                    format!(
                        "rule `{}` is fully shadowed by earlier rules: it can never match",
                        rule.segment
                    ),
                ));
            }
        }
        let total = (rb * fb * mb) as usize;
        if covered.len() < total {
            let missing: Vec<String> = (1..=rb)
                .flat_map(|r| (1..=fb).flat_map(move |f| (1..=mb).map(move |m| (r, f, m))))
                .filter(|cell| !covered.contains(cell))
                .take(5)
                .map(|(r, f, m)| format!("{r}{f}{m}"))
                .collect();
            errors.push((
                "segments",
                format!(
                    "segment rules leave {} of {total} score cells uncovered (e.g. R F M = {})",
                    total - covered.len(),
                    missing.join(", ")
                ),
            ));
        }
        errors
    }
}

#[derive(Debug)]
struct Rfm {
    options: RfmOptions,
    rules: Vec<SegmentRule>,
}

impl Stage for Rfm {
    fn run(&self, inputs: &StageInputs) -> Result<Vec<DataFrame>> {
        let shared = inputs.shared()?;
        rfm(&shared.customer_facts, shared.as_of, &self.options, &self.rules)
    }
}

/// Score expression for one dimension; `higher_is_better` false for recency.
fn score_expr(value: &str, options: &RfmOptions, cuts: Option<&[f64]>, higher_is_better: bool) -> Expr {
    let bins = options.bins as f64;
    let n = len().cast(DataType::Float64);
    let formula = |rank: Expr| {
        (lit(1.0) + (lit(bins) * (rank.cast(DataType::Float64) - lit(1.0)) / n.clone()).floor()).cast(DataType::Int32)
    };
    match options.method {
        Method::RankMin => formula(col(value).rank(
            RankOptions {
                method: RankMethod::Min,
                descending: !higher_is_better,
            },
            None,
        )),
        Method::Ntile => unreachable!("ntile scores are positions in a strict order, computed in `rfm`"),
        Method::Thresholds => {
            let cuts = cuts.expect("thresholds were checked at config time");
            let mut count = lit(1i32);
            for &cut in cuts {
                let hit = if higher_is_better {
                    lit(cut).lt_eq(col(value).cast(DataType::Float64))
                } else {
                    lit(cut).gt_eq(col(value).cast(DataType::Float64))
                };
                count = count + hit.cast(DataType::Int32);
            }
            count
        }
    }
}

/// The three RFM tables from customer_facts.
pub fn rfm(
    facts: &DataFrame,
    as_of: chrono::NaiveDate,
    options: &RfmOptions,
    rules: &[SegmentRule],
) -> Result<Vec<DataFrame>> {
    let as_of_days = crate::period::to_days(as_of) as i64;
    let monetary = match options.monetary {
        Monetary::Total => col("revenue"),
        Monetary::Average => col("aov"),
    };
    let base = facts.clone().lazy().select([
        col("customer_key"),
        col("customer_id"),
        (lit(as_of_days) - col("last_purchase_date").cast(DataType::Int32).cast(DataType::Int64)).alias("recency_days"),
        col("orders").alias("frequency"),
        monetary.alias("monetary"),
        col("revenue_micros"),
    ]);
    let thresholds = options.thresholds.as_ref();
    let scored = if options.method == Method::Ntile {
        // Equal-size bins: rank by a strict order (value, then customer_key) for each dimension.
        let mut frame = base.collect()?;
        for (value, score, higher) in [
            ("recency_days", "r_score", false),
            ("frequency", "f_score", true),
            ("monetary", "m_score", true),
        ] {
            let ordered = frame
                .clone()
                .lazy()
                .sort_by_exprs(
                    [col(value), col("customer_key")],
                    SortMultipleOptions::default().with_order_descending_multi([!higher, false]),
                )
                .with_row_index("position", Some(1))
                .select([
                    col("customer_key"),
                    (lit(1.0)
                        + (lit(options.bins as f64) * (col("position").cast(DataType::Float64) - lit(1.0))
                            / len().cast(DataType::Float64))
                        .floor())
                    .cast(DataType::Int32)
                    .alias(score),
                ]);
            frame = frame
                .lazy()
                .join(
                    ordered,
                    [col("customer_key")],
                    [col("customer_key")],
                    JoinArgs::new(JoinType::Left),
                )
                .collect()?;
        }
        frame.lazy()
    } else {
        base.with_columns([
            score_expr("recency_days", options, thresholds.map(|t| t.recency.as_slice()), false).alias("r_score"),
            score_expr("frequency", options, thresholds.map(|t| t.frequency.as_slice()), true).alias("f_score"),
            score_expr("monetary", options, thresholds.map(|t| t.monetary.as_slice()), true).alias("m_score"),
        ])
    };
    // Segment and score text per (r, f, m) cell, looked up by cell (scores are 1..=9): the
    // rules are matched 729 times, not once per customer.
    let cell_of = |r: u32, f: u32, m: u32| ((r - 1) * 81 + (f - 1) * 9 + (m - 1)) as usize;
    let mut segment_of_cell: Vec<Option<String>> = vec![None; 729];
    let mut score_of_cell: Vec<String> = vec![String::new(); 729];
    for r in 1..=9 {
        for f in 1..=9 {
            for m in 1..=9 {
                let cell = cell_of(r, f, m);
                segment_of_cell[cell] = rules
                    .iter()
                    .find(|rule| rule.matches(r, f, m))
                    .map(|rule| rule.segment.clone());
                score_of_cell[cell] = format!("{r}{f}{m}");
            }
        }
    }
    let cell = (col("r_score") - lit(1)) * lit(81) + (col("f_score") - lit(1)) * lit(9) + (col("m_score") - lit(1));
    let lookup = |values: Series| lit(values).gather(cell.clone().cast(IDX_DTYPE), false);
    let mut scored = scored
        .with_columns([
            lookup(Series::new("".into(), score_of_cell)).alias("rfm_score"),
            lookup(Series::new("".into(), segment_of_cell)).alias("segment"),
        ])
        .collect()?;
    if options.method == Method::Ntile {
        // The score joins keep no row order.
        scored = scored.sort(["customer_key"], SortMultipleOptions::default())?;
    }

    let customers = scored.select([
        "customer_id",
        "recency_days",
        "frequency",
        "monetary",
        "r_score",
        "f_score",
        "m_score",
        "rfm_score",
        "segment",
    ])?;

    let mut threshold_frames = Vec::new();
    for (dimension, value, score) in [
        ("recency", "recency_days", "r_score"),
        ("frequency", "frequency", "f_score"),
        ("monetary", "monetary", "m_score"),
    ] {
        threshold_frames.push(
            scored
                .clone()
                .lazy()
                .group_by([col(score).alias("score")])
                .agg([
                    col(value).cast(DataType::Float64).min().alias("min_value"),
                    col(value).cast(DataType::Float64).max().alias("max_value"),
                    len().cast(DataType::Int64).alias("customers"),
                ])
                .with_column(lit(dimension).alias("dimension"))
                .select([
                    col("dimension"),
                    col("score"),
                    col("min_value"),
                    col("max_value"),
                    col("customers"),
                ])
                .sort(["score"], SortMultipleOptions::default()),
        );
    }
    let thresholds_table = concat(threshold_frames, UnionArgs::default())?.collect()?;

    // Segments in rule order, every named segment present (zeros when empty).
    let mut names: Vec<String> = Vec::new();
    for rule in rules {
        if !names.contains(&rule.segment) {
            names.push(rule.segment.clone());
        }
    }
    let order = df!("segment" => names.clone(), "segment_order" => (0..names.len() as u32).collect::<Vec<_>>())?;
    let total_customers = scored.height() as f64;
    let stats = scored.clone().lazy().group_by([col("segment")]).agg([
        len().cast(DataType::Int64).alias("customers"),
        col("revenue_micros").sum().alias("revenue_micros"),
        col("recency_days")
            .cast(DataType::Float64)
            .mean()
            .alias("mean_recency_days"),
        col("frequency").cast(DataType::Float64).mean().alias("mean_frequency"),
        col("monetary").mean().alias("mean_monetary"),
    ]);
    let total_revenue = col("revenue_micros").sum();
    let segments = order
        .lazy()
        .join(stats, [col("segment")], [col("segment")], JoinArgs::new(JoinType::Left))
        .with_columns([
            col("customers").fill_null(lit(0i64)),
            col("revenue_micros").fill_null(lit(0i64)),
        ])
        .with_columns([
            (col("customers").cast(DataType::Float64) / lit(total_customers.max(1.0))).alias("share"),
            from_micros(col("revenue_micros")).alias("revenue"),
            (col("revenue_micros").cast(DataType::Float64) / total_revenue.cast(DataType::Float64))
                .alias("revenue_share"),
        ])
        .sort(["segment_order"], SortMultipleOptions::default())
        .select([
            col("segment"),
            col("customers"),
            col("share"),
            col("revenue"),
            col("revenue_share"),
            col("mean_recency_days"),
            col("mean_frequency"),
            col("mean_monetary"),
        ])
        .collect()?;
    Ok(vec![customers, thresholds_table, segments])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_map_covers_every_cell_once() {
        let options = RfmOptions::default();
        assert!(options.check().is_empty(), "{:?}", options.check());
        let rules = default_rules();
        let pick = |r, f| {
            rules
                .iter()
                .find(|rule| rule.matches(r, f, 1))
                .unwrap()
                .segment
                .as_str()
        };
        assert_eq!(pick(5, 1), "new_customers");
        assert_eq!(pick(5, 5), "champions");
        assert_eq!(pick(4, 1), "promising");
        assert_eq!(pick(3, 3), "need_attention");
        assert_eq!(pick(3, 2), "about_to_sleep");
        assert_eq!(pick(2, 5), "cannot_lose_them");
        assert_eq!(pick(1, 3), "at_risk");
        assert_eq!(pick(2, 2), "hibernating");
        assert_eq!(pick(4, 4), "loyal_customers");
        assert_eq!(pick(4, 2), "potential_loyalists");
    }

    #[test]
    fn shadowed_rules_and_uncovered_cells_are_errors() {
        let rule = |segment: &str, r: Option<[u32; 2]>| SegmentRule {
            segment: segment.into(),
            r,
            f: None,
            m: None,
        };
        let options = RfmOptions {
            bins: 3,
            segments: Some(vec![rule("top", Some([2, 3])), rule("also_top", Some([3, 3]))]),
            ..RfmOptions::default()
        };
        let errors: Vec<String> = options.check().into_iter().map(|(_, m)| m).collect();
        assert!(
            errors.iter().any(|e| e.contains("rule `also_top` is fully shadowed")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("leave 9 of 27 score cells uncovered (e.g. R F M = 111")),
            "{errors:?}"
        );
        let no_rules = RfmOptions {
            bins: 4,
            ..RfmOptions::default()
        };
        assert!(no_rules.check()[0].1.contains("give `segments` rules"));
    }
}
