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

use super::shard::{merge_sums, tables_at, Finalized, Partial, Sharded};
use super::{Kind, Stage, StageInputs, ORDERS};
use crate::core::diagnostic::{Diagnostic, Diagnostics};
use crate::core::money::from_micros;
use crate::core::options::TableReader;
use crate::core::prepare::{day_values, values};

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
    input: ORDERS,
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
    fn reads_customer_periods(&self) -> bool {
        false
    }
}

/// The three dimensions of customer_facts: (name, values, higher is better).
struct Dimensions<'a> {
    recency: Vec<i64>,
    frequency: &'a [i64],
    monetary: &'a [f64],
    monetary_column: &'static str,
}

impl<'a> Dimensions<'a> {
    fn of(facts: &'a DataFrame, as_of: chrono::NaiveDate, options: &RfmOptions) -> Result<Dimensions<'a>> {
        use rayon::prelude::*;
        let as_of_days = i64::from(crate::core::period::to_days(as_of));
        let recency: Vec<i64> = day_values(facts, "last_purchase_date")?
            .par_iter()
            .map(|&day| as_of_days - i64::from(day))
            .collect();
        let monetary_column = match options.monetary {
            Monetary::Total => "revenue",
            Monetary::Average => "aov",
        };
        Ok(Dimensions {
            recency,
            frequency: values::<Int64Type>(facts, "orders")?,
            monetary: values::<Float64Type>(facts, monetary_column)?,
            monetary_column,
        })
    }

    fn each(&self) -> [(&'static str, Values<'_>, bool); 3] {
        [
            ("recency", Values::Int(&self.recency), false),
            ("frequency", Values::Int(self.frequency), true),
            ("monetary", Values::Float(self.monetary), true),
        ]
    }
}

/// A customer's id as the tie-break of `ntile` (customer_key order is customer_id order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum IdKey {
    Int(i64),
    Text(String),
}

/// The customer ids of a table, read as tie-breaks.
enum Ids<'a> {
    Int(Vec<i64>),
    Text(&'a StringChunked),
}

impl<'a> Ids<'a> {
    fn of(column: &'a Column) -> Result<Ids<'a>> {
        Ok(match column.dtype() {
            DataType::String => Ids::Text(column.str()?),
            _ => Ids::Int(column.cast(&DataType::Int64)?.i64()?.into_no_null_iter().collect()),
        })
    }

    fn key(&self, row: usize) -> IdKey {
        match self {
            Ids::Int(ids) => IdKey::Int(ids[row]),
            Ids::Text(ids) => IdKey::Text(ids.get(row).unwrap_or_default().to_string()),
        }
    }

    /// The order of customer `row`'s id against `key`.
    fn cmp(&self, row: usize, key: &IdKey) -> std::cmp::Ordering {
        match (self, key) {
            (Ids::Int(ids), IdKey::Int(key)) => ids[row].cmp(key),
            (Ids::Text(ids), IdKey::Text(key)) => ids.get(row).unwrap_or_default().cmp(key.as_str()),
            (Ids::Int(_), IdKey::Text(_)) => std::cmp::Ordering::Less,
            (Ids::Text(_), IdKey::Int(_)) => std::cmp::Ordering::Greater,
        }
    }
}

/// A score bound: customers strictly better than it (by goodness, then id for `ntile`) get the
/// next score.
type Bound = (u64, Option<IdKey>);

/// The histogram bucket of a goodness key of a dimension: the key itself for the integer
/// dimensions (recency and frequency take few distinct values), its top 20 bits for monetary.
fn goodness_bucket(dimension: &str, goodness: u64) -> u64 {
    if exact_buckets(dimension) {
        goodness
    } else {
        goodness >> 44
    }
}

/// Whether a dimension's histogram counts each value apart (so a bound is its bucket).
fn exact_buckets(dimension: &str) -> bool {
    dimension != "monetary"
}

/// The histogram of a dimension's goodness buckets, ascending: (bucket, customers). Integer
/// values spanning a small range are counted in an array, by value; others in a table.
fn bucket_counts(values: &Values, name: &str, higher: bool) -> Vec<(u64, i64)> {
    if let (Values::Int(ints), true) = (values, exact_buckets(name)) {
        let (low, high) = ints
            .iter()
            .fold((i64::MAX, i64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if ints.is_empty() {
            return Vec::new();
        }
        if let Some(span) = high.checked_sub(low).filter(|span| *span < 1 << 20) {
            let mut counts = vec![0i64; span as usize + 1];
            for &value in *ints {
                counts[(value - low) as usize] += 1;
            }
            let mut counted: Vec<(u64, i64)> = counts
                .iter()
                .enumerate()
                .filter(|(_, &count)| count > 0)
                .map(|(offset, &count)| (Values::Int(&[low + offset as i64]).goodness(0, higher), count))
                .collect();
            counted.sort_unstable();
            return counted;
        }
    }
    let mut counted: hashbrown::HashMap<u64, i64, foldhash::fast::FixedState> = Default::default();
    for customer in 0..values.len() {
        *counted
            .entry(goodness_bucket(name, values.goodness(customer, higher)))
            .or_insert(0) += 1;
    }
    let mut counted: Vec<(u64, i64)> = counted.into_iter().collect();
    counted.sort_unstable();
    counted
}

/// 0-based positions of the order statistics that bound the scores among `n` customers.
fn bound_positions(bins: u32, n: usize) -> Vec<usize> {
    let bins = bins as usize;
    (2..=bins).map(|s| ((s - 1) * n).div_ceil(bins) - 1).collect()
}

/// Sharded. `rank_min` and `ntile` need the score bounds, order statistics of all customers'
/// goodness, selected exactly in two passes: pass 0 adds up a histogram of goodness per
/// dimension, pass 1 collects the keys in the buckets holding the bounds, and pass 2 (with the
/// bounds known) adds up the thresholds and segments tallies. `thresholds` knows its bounds: one
/// pass of tallies. Scores per customer use the bounds (globals).
impl Sharded for Rfm {
    fn passes(&self) -> usize {
        if self.options.method == Method::Thresholds {
            1
        } else {
            3
        }
    }

    fn partial(&self, inputs: &StageInputs, earlier: &[Partial]) -> Result<Partial> {
        let clock = std::time::Instant::now();
        let shared = inputs.shared()?;
        let facts = &shared.customer_facts;
        let dimensions = Dimensions::of(facts, shared.as_of, &self.options)?;
        let ntile = self.options.method == Method::Ntile;
        let partial = match (earlier.len(), self.passes()) {
            (0, 3) => {
                let (mut names, mut buckets, mut counts) = (Vec::new(), Vec::new(), Vec::new());
                for (name, values, higher) in dimensions.each() {
                    let counted = bucket_counts(&values, name, higher);
                    for (bucket, count) in counted {
                        names.push(name);
                        buckets.push(bucket);
                        counts.push(count);
                    }
                }
                Ok(vec![
                    df! { "dimension" => names, "bucket" => buckets, "customers" => counts }?,
                ])
            }
            (1, 3) => {
                let targets = bound_targets(&earlier[0][0], self.options.bins)?;
                let (mut names, mut goodness, mut rows) = (Vec::new(), Vec::new(), Vec::new());
                for (name, values, higher) in dimensions.each() {
                    // A bound of `rank_min` on an exact histogram is its bucket: no candidates.
                    if exact_buckets(name) && !ntile {
                        continue;
                    }
                    let wanted: Vec<u64> = targets.iter().filter(|t| t.0 == name).map(|t| t.1).collect();
                    for customer in 0..values.len() {
                        let key = values.goodness(customer, higher);
                        if wanted.contains(&goodness_bucket(name, key)) {
                            names.push(name);
                            goodness.push(key);
                            rows.push(customer as IdxSize);
                        }
                    }
                }
                let mut candidates = df! { "dimension" => names, "goodness" => goodness }?;
                let id_column = facts.column("customer_id")?.take(&IdxCa::from_vec("".into(), rows))?;
                candidates.with_column(if ntile {
                    id_column
                } else {
                    id_column.clear().extend_constant(AnyValue::Null, candidates.height())?
                })?;
                Ok(vec![candidates])
            }
            _ => {
                let bounds = match self.passes() {
                    3 => Some(bounds_of(&earlier[0][0], &earlier[1][0], &self.options)?),
                    _ => None,
                };
                let scores = self.scores(facts, &dimensions, bounds.as_ref())?;
                tallies(facts, &dimensions, &scores, &self.rules)
            }
        }?;
        tracing::debug!(
            "rfm: pass {} partial in {:.3} s",
            earlier.len(),
            clock.elapsed().as_secs_f64()
        );
        Ok(partial)
    }

    fn merge(&self, pass: usize, parts: Vec<Partial>) -> Result<Partial> {
        match (pass, self.passes()) {
            (0, 3) => Ok(vec![merge_sums(tables_at(&parts, 0)?, &["dimension", "bucket"])?]),
            (1, 3) => {
                let frames: Vec<LazyFrame> = tables_at(&parts, 0)?.into_iter().map(DataFrame::lazy).collect();
                let sorted = concat(frames, UnionArgs::default())?
                    .sort(
                        ["dimension", "goodness", "customer_id"],
                        SortMultipleOptions::default().with_nulls_last(true),
                    )
                    .collect()?;
                Ok(vec![sorted])
            }
            _ if parts.len() == 1 => Ok(parts.into_iter().next().expect("one part")),
            _ => {
                let frames: Vec<LazyFrame> = tables_at(&parts, 0)?.into_iter().map(DataFrame::lazy).collect();
                let thresholds = concat(frames, UnionArgs::default())?
                    .group_by([col("order"), col("dimension"), col("score")])
                    .agg([col("min_value").min(), col("max_value").max(), col("customers").sum()])
                    .sort(["order", "score"], SortMultipleOptions::default())
                    .collect()?;
                Ok(vec![
                    thresholds,
                    merge_sums(tables_at(&parts, 1)?, &["rule"])?,
                    merge_sums(tables_at(&parts, 2)?, &["key"])?,
                ])
            }
        }
    }

    fn finalize(&self, merged: Vec<Partial>, _whole: &StageInputs, _as_of: chrono::NaiveDate) -> Result<Finalized> {
        let globals = match self.passes() {
            3 => vec![bounds_frame(&bounds_of(&merged[0][0], &merged[1][0], &self.options)?)?],
            _ => Vec::new(),
        };
        let last = merged.last().ok_or_else(|| anyhow::anyhow!("no merged partial"))?;
        let (thresholds, segments) = tables_of_tallies(last, &self.rules)?;
        Ok(Finalized {
            tables: vec![None, Some(thresholds), Some(segments)],
            globals,
        })
    }

    /// The scores of the last pass give the customer rows too (computed once).
    fn last_partial_with_rows(
        &self,
        inputs: &StageInputs,
        earlier: &[Partial],
    ) -> Result<Option<(Partial, Vec<Option<DataFrame>>)>> {
        let shared = inputs.shared()?;
        let facts = &shared.customer_facts;
        let dimensions = Dimensions::of(facts, shared.as_of, &self.options)?;
        let bounds = match self.passes() {
            3 => Some(bounds_of(&earlier[0][0], &earlier[1][0], &self.options)?),
            _ => None,
        };
        let clock = std::time::Instant::now();
        let scores = self.scores(facts, &dimensions, bounds.as_ref())?;
        tracing::debug!("rfm: scores in {:.3} s", clock.elapsed().as_secs_f64());
        let partial = tallies(facts, &dimensions, &scores, &self.rules)?;
        tracing::debug!("rfm: tallies at {:.3} s", clock.elapsed().as_secs_f64());
        let customers = customers_table(facts, dimensions, scores, &self.rules)?;
        tracing::debug!("rfm: customers at {:.3} s", clock.elapsed().as_secs_f64());
        Ok(Some((partial, vec![Some(customers), None, None])))
    }

    fn customer_rows(&self, inputs: &StageInputs, globals: &Partial) -> Result<Vec<Option<DataFrame>>> {
        let shared = inputs.shared()?;
        let facts = &shared.customer_facts;
        let dimensions = Dimensions::of(facts, shared.as_of, &self.options)?;
        let bounds = match globals.first() {
            Some(frame) => Some(bounds_of_frame(frame)?),
            None => None,
        };
        let scores = self.scores(facts, &dimensions, bounds.as_ref())?;
        Ok(vec![
            Some(customers_table(facts, dimensions, scores, &self.rules)?),
            None,
            None,
        ])
    }
}

impl Rfm {
    /// Each dimension's scores (recency, frequency, monetary) with the bounds (none for
    /// `thresholds`).
    fn scores(
        &self,
        facts: &DataFrame,
        dimensions: &Dimensions,
        bounds: Option<&[Vec<Bound>; 3]>,
    ) -> Result<[Vec<i32>; 3]> {
        use rayon::prelude::*;
        let ids = Ids::of(facts.column("customer_id")?)?;
        let thresholds = self.options.thresholds.as_ref();
        let each = dimensions.each();
        let scores: Vec<Vec<i32>> = each
            .par_iter()
            .enumerate()
            .map(|(d, (name, values, higher))| {
                let cuts = thresholds.map(|t| match *name {
                    "recency" => t.recency.as_slice(),
                    "frequency" => t.frequency.as_slice(),
                    _ => t.monetary.as_slice(),
                });
                values.scores_with(&self.options, cuts, *higher, bounds.map(|b| b[d].as_slice()), &ids)
            })
            .collect();
        Ok(<[Vec<i32>; 3]>::try_from(scores).expect("three dimensions"))
    }
}

/// The (dimension, bucket) pairs holding a bound, from pass 0's merged histogram, with the
/// position within the bucket: (dimension, bucket, offset, bound index).
fn bound_targets(histogram: &DataFrame, bins: u32) -> Result<Vec<(String, u64, i64, usize)>> {
    let names = histogram.column("dimension")?.str()?;
    let buckets = histogram.column("bucket")?.u64()?;
    let counts = histogram.column("customers")?.i64()?;
    let mut targets = Vec::new();
    for name in ["recency", "frequency", "monetary"] {
        let rows: Vec<(u64, i64)> = (0..histogram.height())
            .filter(|&row| names.get(row) == Some(name))
            .map(|row| (buckets.get(row).unwrap_or(0), counts.get(row).unwrap_or(0)))
            .collect();
        let n: i64 = rows.iter().map(|r| r.1).sum();
        if n == 0 {
            continue;
        }
        for (index, position) in bound_positions(bins, n as usize).into_iter().enumerate() {
            let mut before = 0i64;
            for &(bucket, count) in &rows {
                if (position as i64) < before + count {
                    targets.push((name.to_string(), bucket, position as i64 - before, index));
                    break;
                }
                before += count;
            }
        }
    }
    Ok(targets)
}

/// The bounds per dimension from the merged histogram and candidates.
fn bounds_of(histogram: &DataFrame, candidates: &DataFrame, options: &RfmOptions) -> Result<[Vec<Bound>; 3]> {
    let targets = bound_targets(histogram, options.bins)?;
    let names = candidates.column("dimension")?.str()?;
    let goodness = candidates.column("goodness")?.u64()?;
    let ntile = options.method == Method::Ntile;
    let id_keys = if ntile {
        Some(Ids::of(candidates.column("customer_id")?)?)
    } else {
        None
    };
    // The candidates of each (dimension, bucket), in (goodness, id) order as merged.
    let mut rows_of: std::collections::HashMap<(&str, u64), Vec<usize>> = Default::default();
    for row in 0..candidates.height() {
        let (Some(name), Some(key)) = (names.get(row), goodness.get(row)) else {
            continue;
        };
        rows_of.entry((name, goodness_bucket(name, key))).or_default().push(row);
    }
    let mut bounds: [Vec<Bound>; 3] = Default::default();
    for (d, name) in ["recency", "frequency", "monetary"].iter().enumerate() {
        for (_, bucket, offset, _) in targets.iter().filter(|t| t.0 == *name) {
            if exact_buckets(name) && !ntile {
                bounds[d].push((*bucket, None));
                continue;
            }
            let row = *rows_of
                .get(&(*name, *bucket))
                .and_then(|rows| rows.get(*offset as usize))
                .ok_or_else(|| anyhow::anyhow!("rfm: a bound's bucket lost candidates"))?;
            bounds[d].push((goodness.get(row).unwrap_or(0), id_keys.as_ref().map(|ids| ids.key(row))));
        }
    }
    Ok(bounds)
}

/// The bounds as a table (globals): dimension, goodness, id (text or integer; null without).
fn bounds_frame(bounds: &[Vec<Bound>; 3]) -> Result<DataFrame> {
    let (mut names, mut goodness, mut ints, mut texts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (name, list) in ["recency", "frequency", "monetary"].iter().zip(bounds) {
        for (key, id) in list {
            names.push(*name);
            goodness.push(*key);
            ints.push(match id {
                Some(IdKey::Int(id)) => Some(*id),
                _ => None,
            });
            texts.push(match id {
                Some(IdKey::Text(id)) => Some(id.clone()),
                _ => None,
            });
        }
    }
    Ok(df! { "dimension" => names, "goodness" => goodness, "id_int" => ints, "id_text" => texts }?)
}

fn bounds_of_frame(frame: &DataFrame) -> Result<[Vec<Bound>; 3]> {
    let names = frame.column("dimension")?.str()?;
    let goodness = frame.column("goodness")?.u64()?;
    let (ints, texts) = (frame.column("id_int")?.i64()?, frame.column("id_text")?.str()?);
    let mut bounds: [Vec<Bound>; 3] = Default::default();
    for row in 0..frame.height() {
        let d = match names.get(row) {
            Some("recency") => 0,
            Some("frequency") => 1,
            _ => 2,
        };
        let id = match (ints.get(row), texts.get(row)) {
            (Some(id), _) => Some(IdKey::Int(id)),
            (_, Some(id)) => Some(IdKey::Text(id.to_string())),
            _ => None,
        };
        bounds[d].push((goodness.get(row).unwrap_or(0), id));
    }
    Ok(bounds)
}

/// One dimension's values in customer_key order.
enum Values<'a> {
    Int(&'a [i64]),
    Float(&'a [f64]),
}

impl Values<'_> {
    fn len(&self) -> usize {
        match self {
            Values::Int(values) => values.len(),
            Values::Float(values) => values.len(),
        }
    }

    fn at(&self, customer: usize) -> f64 {
        match self {
            Values::Int(values) => values[customer] as f64,
            Values::Float(values) => values[customer],
        }
    }

    /// A key whose unsigned order is the order of goodness (worst first): higher values are
    /// better when `higher_is_better`. Floats map by their total order.
    fn goodness(&self, customer: usize, higher_is_better: bool) -> u64 {
        let ascending = match self {
            Values::Int(values) => (values[customer] as u64) ^ (1 << 63),
            Values::Float(values) => super::shard::order_key(values[customer]),
        };
        if higher_is_better {
            ascending
        } else {
            !ascending
        }
    }

    /// Score 1..=bins of every customer: `1 + ⌊bins·(r − 1)/n⌋` with r the smallest rank among
    /// equal values (`rank_min`) or the position in the strict order by value then
    /// customer_id (`ntile`); for `thresholds`, 1 + the cut points reached.
    ///
    /// No sort: the score is at least s exactly when r − 1 ≥ K = ⌈(s − 1)·n / bins⌉, i.e. when
    /// the customer is strictly better than the K-th worst (value for `rank_min`, (value,
    /// customer) for `ntile`): bins − 1 order statistics, the `bounds` (found by selection
    /// here; by the shards' histograms in the stage).
    #[cfg(test)]
    fn scores(&self, options: &RfmOptions, cuts: Option<&[f64]>, higher_is_better: bool) -> Vec<i32> {
        let n = self.len();
        let ids: Vec<i64> = (0..n as i64).collect();
        let ids = Ids::Int(ids);
        if options.method == Method::Thresholds || n == 0 {
            return self.scores_with(options, cuts, higher_is_better, None, &ids);
        }
        let positions = bound_positions(options.bins, n);
        let bounds: Vec<Bound> = if options.method == Method::Ntile {
            let keyed: Vec<(u64, i64)> = (0..n).map(|c| (self.goodness(c, higher_is_better), c as i64)).collect();
            order_statistics(keyed, &positions)
                .into_iter()
                .map(|(goodness, id)| (goodness, Some(IdKey::Int(id))))
                .collect()
        } else {
            let keyed: Vec<u64> = (0..n).map(|c| self.goodness(c, higher_is_better)).collect();
            order_statistics(keyed, &positions)
                .into_iter()
                .map(|g| (g, None))
                .collect()
        };
        self.scores_with(options, cuts, higher_is_better, Some(&bounds), &ids)
    }

    /// Scores with the bounds known (`None` for `thresholds`, which uses its cut points).
    fn scores_with(
        &self,
        options: &RfmOptions,
        cuts: Option<&[f64]>,
        higher_is_better: bool,
        bounds: Option<&[Bound]>,
        ids: &Ids,
    ) -> Vec<i32> {
        use rayon::prelude::*;
        let n = self.len();
        let Some(bounds) = bounds.filter(|_| options.method != Method::Thresholds) else {
            let cuts = cuts.unwrap_or_default();
            return (0..n)
                .into_par_iter()
                .map(|customer| {
                    let value = self.at(customer);
                    let reached = cuts
                        .iter()
                        .filter(|&&cut| if higher_is_better { cut <= value } else { cut >= value })
                        .count();
                    1 + reached as i32
                })
                .collect();
        };
        if bounds.iter().all(|(_, id)| id.is_none()) {
            // `rank_min`: the goodness alone decides.
            let bounds: Vec<u64> = bounds.iter().map(|(bound, _)| *bound).collect();
            return (0..n)
                .into_par_iter()
                .map(|customer| {
                    let goodness = self.goodness(customer, higher_is_better);
                    1 + bounds.iter().filter(|&&bound| goodness > bound).count() as i32
                })
                .collect();
        }
        (0..n)
            .into_par_iter()
            .map(|customer| {
                let goodness = self.goodness(customer, higher_is_better);
                let above = bounds
                    .iter()
                    .filter(|(bound, id)| match goodness.cmp(bound) {
                        std::cmp::Ordering::Greater => true,
                        std::cmp::Ordering::Less => false,
                        std::cmp::Ordering::Equal => id
                            .as_ref()
                            .is_some_and(|id| ids.cmp(customer, id) == std::cmp::Ordering::Greater),
                    })
                    .count();
                1 + above as i32
            })
            .collect()
    }
}

/// The values at 0-based `positions` (ascending) of `keys` in ascending order, by successive
/// selection (linear time, no sort).
#[cfg(test)]
fn order_statistics<T: Ord + Copy>(mut keys: Vec<T>, positions: &[usize]) -> Vec<T> {
    let mut found = Vec::with_capacity(positions.len());
    let mut base = 0;
    for &position in positions {
        let (_, nth, _) = keys[base..].select_nth_unstable(position - base);
        found.push(*nth);
        base = position;
    }
    found
}

/// The segment names in rule order, and the segment (index among them) and rfm_score text of
/// each (r, f, m) cell (scores are 1..=9: the rules are matched 729 times, not per customer).
struct Cells {
    names: Vec<String>,
    segment_of_cell: Vec<Option<IdxSize>>,
    score_of_cell: Vec<String>,
}

fn cell_of(r: u32, f: u32, m: u32) -> usize {
    ((r - 1) * 81 + (f - 1) * 9 + (m - 1)) as usize
}

impl Cells {
    fn of(rules: &[SegmentRule]) -> Cells {
        let mut names: Vec<String> = Vec::new();
        for rule in rules {
            if !names.contains(&rule.segment) {
                names.push(rule.segment.clone());
            }
        }
        let mut segment_of_cell: Vec<Option<IdxSize>> = vec![None; 729];
        let mut score_of_cell: Vec<String> = vec![String::new(); 729];
        for r in 1..=9 {
            for f in 1..=9 {
                for m in 1..=9 {
                    let cell = cell_of(r, f, m);
                    segment_of_cell[cell] = rules.iter().find(|rule| rule.matches(r, f, m)).map(|rule| {
                        names
                            .iter()
                            .position(|name| *name == rule.segment)
                            .expect("every rule's segment is named") as IdxSize
                    });
                    score_of_cell[cell] = format!("{r}{f}{m}");
                }
            }
        }
        Cells {
            names,
            segment_of_cell,
            score_of_cell,
        }
    }
}

/// One shard's tallies with its scores: `[thresholds, segments, totals]`. `thresholds`: order
/// (of the dimension), dimension, score, min_value, max_value, customers, for the scores
/// present; `segments`: rule (index of the segment name), customers, revenue_micros, recency,
/// frequency (sums) and monetary (a sum of doubles); `totals`: key, customers, revenue_micros.
fn tallies(
    facts: &DataFrame,
    dimensions: &Dimensions,
    scores: &[Vec<i32>; 3],
    rules: &[SegmentRule],
) -> Result<Partial> {
    let (mut order, mut names, mut score_of, mut lows, mut highs, mut counts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (d, ((dimension, values, _), scores)) in dimensions.each().iter().zip(scores).enumerate() {
        let mut stats = [(f64::INFINITY, f64::NEG_INFINITY, 0i64); 10];
        for (customer, &score) in scores.iter().enumerate() {
            let value = values.at(customer);
            let (low, high, count) = &mut stats[score as usize];
            (*low, *high, *count) = (low.min(value), high.max(value), *count + 1);
        }
        for (score, &(low, high, count)) in stats.iter().enumerate().filter(|(_, s)| s.2 > 0) {
            order.push(d as i32);
            names.push(*dimension);
            score_of.push(score as i32);
            lows.push(low);
            highs.push(high);
            counts.push(count);
        }
    }
    let thresholds = df! {
        "order" => order, "dimension" => names, "score" => score_of,
        "min_value" => lows, "max_value" => highs, "customers" => counts,
    }?;
    let cells = Cells::of(rules);
    let revenue = values::<Int64Type>(facts, "revenue_micros")?;
    let mut stats = vec![(0i64, 0i64, 0i64, 0i64, 0f64); cells.names.len()];
    let mut total_revenue = 0i64;
    for customer in 0..facts.height() {
        total_revenue += revenue[customer];
        let cell = cell_of(
            scores[0][customer] as u32,
            scores[1][customer] as u32,
            scores[2][customer] as u32,
        );
        if let Some(code) = cells.segment_of_cell[cell] {
            let (count, micros, days, orders, money) = &mut stats[code as usize];
            *count += 1;
            *micros += revenue[customer];
            *days += dimensions.recency[customer];
            *orders += dimensions.frequency[customer];
            *money += dimensions.monetary[customer];
        }
    }
    let segments = df! {
        "rule" => (0..cells.names.len() as i32).collect::<Vec<_>>(),
        "customers" => stats.iter().map(|s| s.0).collect::<Vec<_>>(),
        "revenue_micros" => stats.iter().map(|s| s.1).collect::<Vec<_>>(),
        "recency" => stats.iter().map(|s| s.2).collect::<Vec<_>>(),
        "frequency" => stats.iter().map(|s| s.3).collect::<Vec<_>>(),
        "monetary" => stats.iter().map(|s| s.4).collect::<Vec<_>>(),
    }?;
    let totals = df! {
        "key" => [0i32],
        "customers" => [facts.height() as i64],
        "revenue_micros" => [total_revenue],
    }?;
    Ok(vec![thresholds, segments, totals])
}

/// `_thresholds` and `_segments` from the merged tallies.
fn tables_of_tallies(merged: &Partial, rules: &[SegmentRule]) -> Result<(DataFrame, DataFrame)> {
    let thresholds = merged[0].select(["dimension", "score", "min_value", "max_value", "customers"])?;
    let (segments, totals) = (&merged[1], &merged[2]);
    let total = |name: &str| -> Result<i64> { Ok(totals.column(name)?.i64()?.get(0).unwrap_or(0)) };
    let (total_customers, total_revenue) = ((total("customers")? as f64).max(1.0), total("revenue_micros")?);
    let ints = |name: &str| -> Result<Vec<i64>> { Ok(segments.column(name)?.i64()?.into_no_null_iter().collect()) };
    let (customers, revenue, recency, frequency) = (
        ints("customers")?,
        ints("revenue_micros")?,
        ints("recency")?,
        ints("frequency")?,
    );
    let monetary: Vec<f64> = segments.column("monetary")?.f64()?.into_no_null_iter().collect();
    let mean = |sum: f64, count: i64| (count > 0).then(|| sum / count as f64);
    let segments = df!(
        "segment" => Cells::of(rules).names,
        "customers" => customers.clone(),
        "share" => customers.iter().map(|&c| c as f64 / total_customers).collect::<Vec<_>>(),
        "revenue" => revenue.clone(),
        "revenue_share" => revenue.iter().map(|&r| r as f64 / total_revenue as f64).collect::<Vec<_>>(),
        "mean_recency_days" => recency.iter().zip(&customers).map(|(&s, &c)| mean(s as f64, c)).collect::<Vec<_>>(),
        "mean_frequency" => frequency.iter().zip(&customers).map(|(&s, &c)| mean(s as f64, c)).collect::<Vec<_>>(),
        "mean_monetary" => monetary.iter().zip(&customers).map(|(&s, &c)| mean(s, c)).collect::<Vec<_>>(),
    )?
    .lazy()
    .with_column(from_micros(col("revenue")))
    .collect()?;
    Ok((thresholds, segments))
}

/// `_customers` of one shard with its scores.
fn customers_table(
    facts: &DataFrame,
    dimensions: Dimensions,
    scores: [Vec<i32>; 3],
    rules: &[SegmentRule],
) -> Result<DataFrame> {
    use rayon::prelude::*;
    let cells_of = Cells::of(rules);
    let cells: Vec<IdxSize> = (0..facts.height())
        .into_par_iter()
        .map(|c| cell_of(scores[0][c] as u32, scores[1][c] as u32, scores[2][c] as u32) as IdxSize)
        .collect();
    let segment_codes: IdxCa = cells
        .iter()
        .map(|&cell| cells_of.segment_of_cell[cell as usize])
        .collect_ca("".into());
    let cells = IdxCa::from_vec("".into(), cells);
    let names_series = Series::new("segment".into(), cells_of.names.clone());
    let [r_score, f_score, m_score] = scores;
    let monetary_column = dimensions.monetary_column;
    // The columns are moved in, not copied (frequency and monetary are the facts' own columns).
    Ok(DataFrame::new_infer_height(vec![
        facts.column("customer_id")?.clone(),
        crate::core::columns::owned_column("recency_days", dimensions.recency),
        facts.column("orders")?.clone().with_name("frequency".into()),
        facts.column(monetary_column)?.clone().with_name("monetary".into()),
        crate::core::columns::owned_column("r_score", r_score),
        crate::core::columns::owned_column("f_score", f_score),
        crate::core::columns::owned_column("m_score", m_score),
        Series::new("rfm_score".into(), cells_of.score_of_cell)
            .take(&cells)?
            .into_column(),
        names_series.take(&segment_codes)?.into_column(),
    ])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores by the definition: ranks counted one by one.
    fn by_definition(values: &[f64], bins: u32, method: Method, higher_is_better: bool) -> Vec<i32> {
        let n = values.len();
        let worse = |a: usize, b: usize| {
            let (va, vb) = if higher_is_better {
                (values[a], values[b])
            } else {
                (values[b], values[a])
            };
            va < vb || (method == Method::Ntile && va == vb && a < b)
        };
        (0..n)
            .map(|c| {
                let rank = 1 + (0..n).filter(|&other| worse(other, c)).count();
                (1.0 + (bins as f64 * (rank as f64 - 1.0) / n as f64).floor()) as i32
            })
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        /// Any split of the customers merges, in each pass, to the whole's histograms, bound
        /// candidates and tallies: the same bounds, tables and scores, for every method.
        #[test]
        fn shards_merge_to_the_whole(
            orders in crate::core::stages::shard::tests::random_orders(),
            shards in 1usize..6,
            method in 0u8..3,
            bins in 2u32..7,
        ) {
            let method = [Method::RankMin, Method::Ntile, Method::Thresholds][usize::from(method)];
            let options = RfmOptions {
                bins: if method == Method::Thresholds { 3 } else { bins },
                method,
                thresholds: (method == Method::Thresholds).then(|| Thresholds {
                    recency: vec![30.0, 180.0],
                    frequency: vec![2.0, 4.0],
                    monetary: vec![100.0, 500.0],
                }),
                segments: Some(vec![SegmentRule { segment: "all".into(), r: None, f: None, m: None }]),
                ..RfmOptions::default()
            };
            let stage = Rfm { rules: options.rules(), options };
            let shared = crate::core::stages::shard::tests::shared_of(&orders, 60);
            crate::core::stages::shard::tests::assert_shards_merge(&stage, &shared, shards);
        }
    }

    #[test]
    fn scores_by_selection_match_ranks_by_definition() {
        // Ties, negatives, money with cents, sizes around the bin counts.
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as i64
        };
        for n in [1usize, 2, 3, 5, 9, 10, 11, 37, 200] {
            let ints: Vec<i64> = (0..n).map(|_| next() % 7 - 2).collect();
            let floats: Vec<f64> = (0..n).map(|_| (next() % 2001 - 1000) as f64 / 100.0).collect();
            for bins in [2, 3, 5, 9] {
                for method in [Method::RankMin, Method::Ntile] {
                    let options = RfmOptions {
                        bins,
                        method,
                        ..RfmOptions::default()
                    };
                    for higher in [true, false] {
                        let as_floats: Vec<f64> = ints.iter().map(|&v| v as f64).collect();
                        assert_eq!(
                            Values::Int(&ints).scores(&options, None, higher),
                            by_definition(&as_floats, bins, method, higher),
                            "ints n {n} bins {bins} {method:?} higher {higher}"
                        );
                        assert_eq!(
                            Values::Float(&floats).scores(&options, None, higher),
                            by_definition(&floats, bins, method, higher),
                            "floats n {n} bins {bins} {method:?} higher {higher}"
                        );
                    }
                }
            }
        }
        assert!(Values::Int(&[]).scores(&RfmOptions::default(), None, true).is_empty());
    }

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
