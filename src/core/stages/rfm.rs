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

    fn run(&self, inputs: &StageInputs) -> Result<Vec<DataFrame>> {
        let shared = inputs.shared()?;
        rfm(&shared.customer_facts, shared.as_of, &self.options, &self.rules)
    }
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
            Values::Float(values) => {
                let bits = values[customer].to_bits();
                if bits >> 63 == 1 {
                    !bits
                } else {
                    bits | 1 << 63
                }
            }
        };
        if higher_is_better {
            ascending
        } else {
            !ascending
        }
    }

    /// Score 1..=bins of every customer: `1 + ⌊bins·(r − 1)/n⌋` with r the smallest rank among
    /// equal values (`rank_min`) or the position in the strict order by value then
    /// customer_key (`ntile`); for `thresholds`, 1 + the cut points reached.
    ///
    /// No sort: the score is at least s exactly when r − 1 ≥ K = ⌈(s − 1)·n / bins⌉, i.e. when
    /// the customer is strictly better than the K-th worst (value for `rank_min`, (value,
    /// customer) for `ntile`): bins − 1 order statistics, found by selection in linear time.
    fn scores(&self, options: &RfmOptions, cuts: Option<&[f64]>, higher_is_better: bool) -> Vec<i32> {
        use rayon::prelude::*;
        let n = self.len();
        if options.method == Method::Thresholds {
            let cuts = cuts.expect("thresholds were checked at config time");
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
        }
        let bins = options.bins as usize;
        if n == 0 {
            return Vec::new();
        }
        // 0-based positions K − 1 of the order statistics, ascending.
        let positions: Vec<usize> = (2..=bins).map(|s| ((s - 1) * n).div_ceil(bins) - 1).collect();
        // (goodness, customer) for `ntile`, compared whole; goodness alone for `rank_min`, half
        // the memory (the three dimensions are scored at once).
        let bounds: Vec<(u64, u32)> = if options.method == Method::Ntile {
            let keyed: Vec<(u64, u32)> = (0..n)
                .into_par_iter()
                .map(|customer| (self.goodness(customer, higher_is_better), customer as u32))
                .collect();
            order_statistics(keyed, &positions)
        } else {
            let keyed: Vec<u64> = (0..n)
                .into_par_iter()
                .map(|customer| self.goodness(customer, higher_is_better))
                .collect();
            order_statistics(keyed, &positions)
                .into_iter()
                .map(|goodness| (goodness, 0))
                .collect()
        };
        let strict = options.method == Method::Ntile;
        (0..n)
            .into_par_iter()
            .map(|customer| {
                let key = (
                    self.goodness(customer, higher_is_better),
                    if strict { customer as u32 } else { 0 },
                );
                1 + bounds.iter().filter(|&&bound| key > bound).count() as i32
            })
            .collect()
    }
}

/// The values at 0-based `positions` (ascending) of `keys` in ascending order, by successive
/// selection (linear time, no sort).
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

/// The three RFM tables from customer_facts.
pub fn rfm(
    facts: &DataFrame,
    as_of: chrono::NaiveDate,
    options: &RfmOptions,
    rules: &[SegmentRule],
) -> Result<Vec<DataFrame>> {
    use rayon::prelude::*;
    let as_of_days = i64::from(crate::core::period::to_days(as_of));
    let recency: Vec<i64> = day_values(facts, "last_purchase_date")?
        .par_iter()
        .map(|&day| as_of_days - i64::from(day))
        .collect();
    let frequency = values::<Int64Type>(facts, "orders")?;
    let monetary_column = match options.monetary {
        Monetary::Total => "revenue",
        Monetary::Average => "aov",
    };
    let monetary = values::<Float64Type>(facts, monetary_column)?;
    let dimensions = [
        ("recency", Values::Int(&recency), false),
        ("frequency", Values::Int(frequency), true),
        ("monetary", Values::Float(monetary), true),
    ];
    let thresholds = options.thresholds.as_ref();
    let cuts = |dimension: &str| {
        thresholds.map(|t| match dimension {
            "recency" => t.recency.as_slice(),
            "frequency" => t.frequency.as_slice(),
            _ => t.monetary.as_slice(),
        })
    };
    let clock = std::time::Instant::now();
    let scores: Vec<Vec<i32>> = dimensions
        .par_iter()
        .map(|(dimension, values, higher)| values.scores(options, cuts(dimension), *higher))
        .collect();

    tracing::debug!("rfm: scores at {:.3} s", clock.elapsed().as_secs_f64());
    // Segment and score text per (r, f, m) cell, looked up by cell (scores are 1..=9): the
    // rules are matched 729 times, not once per customer.
    let cell_of = |r: u32, f: u32, m: u32| ((r - 1) * 81 + (f - 1) * 9 + (m - 1)) as usize;
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
    let cells: Vec<IdxSize> = (0..facts.height())
        .into_par_iter()
        .map(|c| cell_of(scores[0][c] as u32, scores[1][c] as u32, scores[2][c] as u32) as IdxSize)
        .collect();
    let segment_codes: IdxCa = cells
        .iter()
        .map(|&cell| segment_of_cell[cell as usize])
        .collect_ca("".into());
    let cells = IdxCa::from_vec("".into(), cells);
    let names_series = Series::new("segment".into(), names.clone());

    let [r_score, f_score, m_score] = <[Vec<i32>; 3]>::try_from(scores).expect("three dimensions");
    // Per dimension and score present: the smallest and largest value and the customers.
    let mut rows: Vec<(&str, i32, f64, f64, i64)> = Vec::new();
    for ((dimension, values, _), scores) in dimensions.iter().zip([&r_score, &f_score, &m_score]) {
        let mut stats = [(f64::INFINITY, f64::NEG_INFINITY, 0i64); 10];
        for (customer, &score) in scores.iter().enumerate() {
            let value = values.at(customer);
            let (low, high, count) = &mut stats[score as usize];
            (*low, *high, *count) = (low.min(value), high.max(value), *count + 1);
        }
        for (score, &(low, high, count)) in stats.iter().enumerate().filter(|(_, s)| s.2 > 0) {
            rows.push((dimension, score as i32, low, high, count));
        }
    }
    let thresholds_table = df!(
        "dimension" => rows.iter().map(|row| row.0).collect::<Vec<_>>(),
        "score" => rows.iter().map(|row| row.1).collect::<Vec<_>>(),
        "min_value" => rows.iter().map(|row| row.2).collect::<Vec<_>>(),
        "max_value" => rows.iter().map(|row| row.3).collect::<Vec<_>>(),
        "customers" => rows.iter().map(|row| row.4).collect::<Vec<_>>(),
    )?;

    // Segments in rule order, every named segment present (zeros when empty).
    let revenue = values::<Int64Type>(facts, "revenue_micros")?;
    let mut stats = vec![(0i64, 0i64, 0i64, 0i64, 0f64); names.len()];
    let mut total_revenue = 0i64;
    for (customer, code) in segment_codes.iter().enumerate() {
        total_revenue += revenue[customer];
        if let Some(code) = code {
            let (count, micros, days, orders, money) = &mut stats[code as usize];
            *count += 1;
            *micros += revenue[customer];
            *days += recency[customer];
            *orders += frequency[customer];
            *money += monetary[customer];
        }
    }
    let total_customers = (facts.height() as f64).max(1.0);
    let mean = |sum: f64, count: i64| (count > 0).then(|| sum / count as f64);
    let segments = df!(
        "segment" => names,
        "customers" => stats.iter().map(|s| s.0).collect::<Vec<_>>(),
        "share" => stats.iter().map(|s| s.0 as f64 / total_customers).collect::<Vec<_>>(),
        "revenue" => stats.iter().map(|s| s.1).collect::<Vec<_>>(),
        "revenue_share" => stats.iter().map(|s| s.1 as f64 / total_revenue as f64).collect::<Vec<_>>(),
        "mean_recency_days" => stats.iter().map(|s| mean(s.2 as f64, s.0)).collect::<Vec<_>>(),
        "mean_frequency" => stats.iter().map(|s| mean(s.3 as f64, s.0)).collect::<Vec<_>>(),
        "mean_monetary" => stats.iter().map(|s| mean(s.4, s.0)).collect::<Vec<_>>(),
    )?
    .lazy()
    .with_column(from_micros(col("revenue")))
    .collect()?;
    // Last, so the columns are moved in, not copied (frequency and monetary are the facts'
    // own columns).
    let customers = DataFrame::new_infer_height(vec![
        facts.column("customer_id")?.clone(),
        crate::core::columns::owned_column("recency_days", recency),
        facts.column("orders")?.clone().with_name("frequency".into()),
        facts.column(monetary_column)?.clone().with_name("monetary".into()),
        crate::core::columns::owned_column("r_score", r_score),
        crate::core::columns::owned_column("f_score", f_score),
        crate::core::columns::owned_column("m_score", m_score),
        Series::new("rfm_score".into(), score_of_cell)
            .take(&cells)?
            .into_column(),
        names_series.take(&segment_codes)?.into_column(),
    ])?;
    tracing::debug!("rfm: tables at {:.3} s", clock.elapsed().as_secs_f64());
    Ok(vec![customers, thresholds_table, segments])
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
