//! TOML config → typed `Config`: `[pipeline]`, `[sources.NAME]`, `[stages.NAME]`.
//!
//! Every problem is collected into `Diagnostics` (file, line, column, suggestion) before anything
//! fails; nothing here reads data. DAG checks live in `plan.rs`, which calls `load` and adds its
//! own diagnostics to the same list.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml_edit::{ImDocument, Item, TableLike};

pub use crate::core::diagnostic::{Diagnostic, Diagnostics};
use crate::core::options::{backticked, item_span, TableReader};

pub use crate::core::as_of::{AsOf, RelativeDate};
pub use crate::core::input::SourceKind;
use crate::core::stages::{self, Stage};

/// `[pipeline]`.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub name: String,
    pub as_of: AsOf,
    pub timezone: String,
    pub output_dir: PathBuf,
    pub max_rejected_fraction: f64,
    /// How long a run waits for another run on the same output directory. Default 0: fail fast.
    pub lock_wait_seconds: f64,
    /// Published snapshots kept under `OUT/runs/` (the newest; default 7).
    pub keep_runs: usize,
    /// Fail when the newest order is more than this many days before as_of.
    pub max_data_age_days: Option<u32>,
    /// Bytes a run may use: past what the input needs in one piece, it runs in customer shards
    /// spilled to disk (`memory_limit = "12GiB"`; `--memory-limit` overrides it).
    pub memory_limit: Option<u64>,
}

/// A size such as `12GiB`, `800MB`, `1.5G` or `1048576` (bytes): K, M, G and T count in 1024s
/// with or without `i` and `B`, as memory is counted; a bare number is bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write it as e.g. `12GiB`, `800MB` or `1.5G`"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches('B')
        .trim_end_matches('I')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("`{text}`: unknown unit `{unit}`; use KiB, MiB, GiB or TiB")),
    };
    let bytes = number * (1u64 << shift) as f64;
    if !(1.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("`{text}` is not a usable size"));
    }
    Ok(bytes as u64)
}

/// Logical column → column in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnMap {
    #[serde(default = "default_customer_id")]
    pub customer_id: String,
    #[serde(default = "default_order_id")]
    pub order_id: String,
    #[serde(default = "default_ordered_at")]
    pub ordered_at: String,
    #[serde(default = "default_amount")]
    pub amount: String,
    pub status: Option<String>,
    pub channel: Option<String>,
    pub line: Option<String>,
    /// The lines' currency code: one currency per run (`include` picks one).
    pub currency: Option<String>,
    /// What a line cost (goods, shipping, fees, discounts), in the amount's currency.
    pub cost: Option<String>,
}

/// `[sources.NAME.columns]` of a survey source: logical name = column in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SurveyColumns {
    pub customer_id: String,
    pub responded_at: String,
    pub score: String,
}

impl Default for SurveyColumns {
    fn default() -> Self {
        SurveyColumns {
            customer_id: "customer_id".into(),
            responded_at: "responded_at".into(),
            score: "score".into(),
        }
    }
}

/// `[sources.NAME.columns]` of a spend source: logical name = column in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpendColumns {
    /// The day the money was spent (a date or timestamp).
    pub date: String,
    /// The channel it bought customers for, matched against the orders' channel; null means
    /// unattributed.
    pub channel: String,
    pub amount: String,
}

impl Default for SpendColumns {
    fn default() -> Self {
        SpendColumns {
            date: "date".into(),
            channel: "channel".into(),
            amount: "amount".into(),
        }
    }
}

fn default_customer_id() -> String {
    "customer_id".into()
}
fn default_order_id() -> String {
    "order_id".into()
}
fn default_ordered_at() -> String {
    "ordered_at".into()
}
fn default_amount() -> String {
    "amount".into()
}

impl Default for ColumnMap {
    fn default() -> Self {
        ColumnMap {
            customer_id: default_customer_id(),
            order_id: default_order_id(),
            ordered_at: default_ordered_at(),
            amount: default_amount(),
            status: None,
            channel: None,
            line: None,
            currency: None,
            cost: None,
        }
    }
}

pub const LOGICAL_COLUMNS: &[&str] = &[
    "customer_id",
    "order_id",
    "ordered_at",
    "amount",
    "status",
    "channel",
    "line",
    "currency",
    "cost",
];

impl ColumnMap {
    /// The file column mapped to a logical name, if any.
    pub fn physical(&self, logical: &str) -> Option<&str> {
        match logical {
            "customer_id" => Some(&self.customer_id),
            "order_id" => Some(&self.order_id),
            "ordered_at" => Some(&self.ordered_at),
            "amount" => Some(&self.amount),
            "status" => self.status.as_deref(),
            "channel" => self.channel.as_deref(),
            "line" => self.line.as_deref(),
            "currency" => self.currency.as_deref(),
            "cost" => self.cost.as_deref(),
            _ => None,
        }
    }

    /// (logical, physical) for every mapped column, required first.
    pub fn mapped(&self) -> Vec<(&'static str, &str)> {
        LOGICAL_COLUMNS
            .iter()
            .filter_map(|logical| self.physical(logical).map(|physical| (*logical, physical)))
            .collect()
    }
}

/// A value in an `include` or `exclude` filter list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum FilterValue {
    Bool(bool),
    Int(i64),
    Text(String),
}

impl std::fmt::Display for FilterValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilterValue::Bool(value) => write!(f, "{value}"),
            FilterValue::Int(value) => write!(f, "{value}"),
            FilterValue::Text(value) => write!(f, "{value:?}"),
        }
    }
}

/// How a source's files are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Parquet,
    Csv,
}

impl SourceFormat {
    /// The file extension a directory listing keeps.
    pub fn extension(self) -> &'static str {
        match self {
            SourceFormat::Parquet => "parquet",
            SourceFormat::Csv => "csv",
        }
    }
}

/// `[sources.NAME.csv]`: how CSV files are split into columns.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    /// One character between fields (default `,`).
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Whether the first line names the columns (default true).
    #[serde(default = "default_true")]
    pub header: bool,
    /// The character that quotes a field holding the delimiter or a line break (default `"`;
    /// a doubled quote inside stands for one); `""` turns quoting off.
    #[serde(default = "default_quote")]
    pub quote: String,
    /// Read customer_id and order_id as text even when they look like integers (keeps
    /// leading zeros; default false: inferred from the first `infer_schema_rows` rows).
    #[serde(default)]
    pub text_ids: bool,
    /// Rows read to infer the types of the columns other than amount and ordered_at.
    #[serde(default = "default_infer_rows")]
    pub infer_schema_rows: usize,
}

fn default_delimiter() -> char {
    ','
}
fn default_true() -> bool {
    true
}
fn default_quote() -> String {
    "\"".into()
}
fn default_infer_rows() -> usize {
    10_000
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            delimiter: default_delimiter(),
            header: true,
            quote: default_quote(),
            text_ids: false,
            infer_schema_rows: default_infer_rows(),
        }
    }
}

/// `[sources.NAME]`.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    /// File, glob or directory, resolved against the config file's folder.
    pub path: PathBuf,
    pub format: SourceFormat,
    pub csv: CsvOptions,
    /// Lines kept: for each column (a mapped logical name or any column of the input), the
    /// line's value is one of the listed values.
    pub include: BTreeMap<String, Vec<FilterValue>>,
    /// Lines dropped: the line's value in any listed column is one of its listed values.
    pub exclude: BTreeMap<String, Vec<FilterValue>>,
    pub naive_timestamps_are: String,
    /// The mapped columns of an orders source.
    pub columns: ColumnMap,
    /// The mapped columns of a survey source.
    pub survey_columns: SurveyColumns,
    /// The mapped columns of a spend source.
    pub spend_columns: SpendColumns,
    pub span: Option<Range<usize>>,
}

/// `[stages.NAME]`: its kind, inputs, output table names and typed options.
#[derive(Debug)]
pub struct StageConfig {
    pub name: String,
    pub kind: &'static stages::Kind,
    pub inputs: Vec<String>,
    /// Output table names, one per entry of `kind.tables`.
    pub tables: Vec<String>,
    /// `None` when the options had errors (already reported).
    pub stage: Option<Box<dyn Stage>>,
    pub span: Option<Range<usize>>,
    pub input_span: Option<Range<usize>>,
}

#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub dir: PathBuf,
    /// sha256 of the config text, for the manifest.
    pub hash: String,
    pub pipeline: PipelineSettings,
    pub sources: BTreeMap<String, SourceConfig>,
    /// In file order.
    pub stages: Vec<StageConfig>,
    /// Whether a run publishes `report.html` with its tables (`[report]`, `enabled = true` by
    /// default when the section is there).
    pub report: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_count_in_1024s() {
        assert_eq!(parse_size("12GiB"), Ok(12 << 30));
        assert_eq!(parse_size("800MB"), Ok(800 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size(" 4096 "), Ok(4096));
        assert_eq!(parse_size("2 kib"), Ok(2048));
        assert!(parse_size("lots").unwrap_err().contains("12GiB"));
        assert!(parse_size("3 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn paths_resolve_against_the_config_folder() {
        assert_eq!(resolve_path(Path::new("pipelines"), "../out"), PathBuf::from("out"));
        assert_eq!(
            resolve_path(Path::new("."), "../data/x.parquet"),
            PathBuf::from("../data/x.parquet")
        );
        assert_eq!(resolve_path(Path::new("/etc/p"), "/abs/x"), PathBuf::from("/abs/x"));
        assert_eq!(
            resolve_path(Path::new("a/b"), "./c/*.parquet"),
            PathBuf::from("a/b/c/*.parquet")
        );
    }

    /// Every key of every section and stage kind, misspelt, is reported with the right suggestion.
    #[test]
    fn every_misspelt_key_is_reported_with_its_correct_name() {
        let misspell = |key: &str| -> String {
            // Swap two letters in the middle: distance 2 at most, never another valid key here.
            let mut chars: Vec<char> = key.chars().collect();
            let i = chars.len() / 2;
            chars.swap(i - 1, i);
            let swapped: String = chars.into_iter().collect();
            if swapped == key {
                format!("{key}x")
            } else {
                swapped
            }
        };
        let dir = tempfile_dir();
        let mut checked = 0;
        let base = "[sources.orders]\npath = \"x.parquet\"\n";
        let mut cases: Vec<(String, String)> = Vec::new();
        for key in PIPELINE_KEYS {
            cases.push((
                key.to_string(),
                format!(
                    "[pipeline]\n{} = 1\n{base}[stages.f]\nkind = \"customer_facts\"\n",
                    misspell(key)
                ),
            ));
        }
        for key in SOURCE_KEYS {
            cases.push((
                key.to_string(),
                format!(
                    "[sources.orders]\npath = \"x.parquet\"\n{} = 1\n[stages.f]\nkind = \"customer_facts\"\n",
                    misspell(key)
                ),
            ));
        }
        for key in LOGICAL_COLUMNS {
            cases.push((
                key.to_string(),
                format!(
                    "{base}[sources.orders.columns]\n{} = \"c\"\n[stages.f]\nkind = \"customer_facts\"\n",
                    misspell(key)
                ),
            ));
        }
        for kind in crate::core::stages::KINDS {
            let input = if matches!(kind.input, crate::core::stages::InputKind::Sources(_)) {
                "\"orders\""
            } else {
                "[\"f\"]"
            };
            for key in (kind.options)().iter().chain(&["input", "output", "output_prefix"]) {
                cases.push((
                    key.to_string(),
                    format!("{base}[stages.f]\nkind = \"customer_facts\"\n[stages.s]\nkind = \"{}\"\ninput = {input}\n{} = 1\n", kind.name, misspell(key)),
                ));
            }
        }
        for (key, text) in cases {
            let path = dir.join("c.toml");
            std::fs::write(&path, &text).unwrap();
            let (_, diagnostics) = load(&path);
            let rendered = diagnostics.to_string();
            assert!(
                rendered.contains(&format!("has no key `{}`", misspell(&key)))
                    && rendered.contains(&format!("did you mean `{key}`?")),
                "{key}:\n{text}\n{rendered}"
            );
            checked += 1;
        }
        std::fs::remove_dir_all(&dir).ok();
        assert!(checked > 50, "{checked} keys checked");
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pipeline-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn as_of_accepts_dates_and_keywords() {
        assert_eq!("last_order".parse::<AsOf>(), Ok(AsOf::LastOrder));
        assert_eq!(
            "2024-02-29".parse::<AsOf>(),
            Ok(AsOf::Date(chrono::NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()))
        );
        assert!("2023-02-29".parse::<AsOf>().unwrap_err().contains("is not a date"));
    }
}

const TOP_KEYS: &[&str] = &["pipeline", "sources", "stages", "report"];
const REPORT_KEYS: &[&str] = &["enabled"];
const PIPELINE_KEYS: &[&str] = &[
    "name",
    "as_of",
    "timezone",
    "output_dir",
    "max_rejected_fraction",
    "lock_wait_seconds",
    "keep_runs",
    "max_data_age_days",
    "memory_limit",
];
const SOURCE_KEYS: &[&str] = &[
    "kind",
    "path",
    "format",
    "csv",
    "include",
    "exclude",
    "naive_timestamps_are",
    "columns",
];
const STAGE_COMMON_KEYS: &[&str] = &["kind", "input", "output", "output_prefix"];

/// Read and parse a config file. Returns the config and the diagnostics found so far (the
/// caller adds DAG checks and fails if any exist). I/O errors are diagnostics too.
pub fn load(path: &Path) -> (Option<Config>, Diagnostics) {
    let source = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            let mut diagnostics = Diagnostics::new(path, "");
            diagnostics.error(format!("cannot read config file: {error}"), None);
            return (None, diagnostics);
        }
    };
    let mut diagnostics = Diagnostics::new(path, &source);
    let document = match ImDocument::parse(source.clone()) {
        Ok(document) => document,
        Err(error) => {
            diagnostics.push(Diagnostic::new(
                format!("invalid TOML: {}", error.message()),
                error.span(),
            ));
            return (None, diagnostics);
        }
    };
    let config = parse_document(path, &source, &document, &mut diagnostics);
    (Some(config), diagnostics)
}

fn parse_document(path: &Path, source: &str, document: &ImDocument<String>, diagnostics: &mut Diagnostics) -> Config {
    let dir = path
        .parent()
        .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let root = TableReader::new(document.as_table(), "the config", None);
    root.check_keys(TOP_KEYS, diagnostics);

    let pipeline = parse_pipeline(document.get("pipeline"), &dir, diagnostics);
    let mut sources = BTreeMap::new();
    for (name, item, span) in sub_tables(document.get("sources"), "sources", diagnostics) {
        if let Some(source) = parse_source(&name, item, span, &dir, diagnostics) {
            sources.insert(name, source);
        }
    }
    let mut stage_configs = Vec::new();
    for (name, item, span) in sub_tables(document.get("stages"), "stages", diagnostics) {
        if let Some(stage) = parse_stage(&name, item, span, &sources, diagnostics) {
            stage_configs.push(stage);
        }
    }
    if document.get("stages").is_none() {
        diagnostics.error("the config has no `[stages.NAME]` table: nothing to run", None);
    }
    let report = parse_report(document.get("report"), diagnostics);
    Config {
        path: path.to_path_buf(),
        dir,
        hash: format!("{:x}", Sha256::digest(source.as_bytes())),
        pipeline,
        sources,
        stages: stage_configs,
        report,
    }
}

/// `[report]`: whether a run publishes `report.html` (the section there, `enabled` not false).
fn parse_report(item: Option<&Item>, diagnostics: &mut Diagnostics) -> bool {
    let Some(item) = item else { return false };
    let Some(table) = item.as_table_like() else {
        diagnostics.error("`report` must be a table, e.g. `[report]`", item_span(item));
        return false;
    };
    let reader = TableReader::new(table, "`[report]`", item_span(item));
    reader.check_keys(REPORT_KEYS, diagnostics);
    reader.get::<bool>("enabled", diagnostics).unwrap_or(true)
}

/// The named sub-tables of `[sources]` or `[stages]`, in file order.
fn sub_tables<'a>(
    item: Option<&'a Item>,
    section: &str,
    diagnostics: &mut Diagnostics,
) -> Vec<(String, &'a dyn TableLike, Option<Range<usize>>)> {
    let Some(item) = item else { return Vec::new() };
    let Some(table) = item.as_table_like() else {
        diagnostics.error(format!("`{section}` must be a table of named tables"), item_span(item));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, child) in table.iter() {
        let span = table.get_key_value(name).and_then(|(k, _)| k.span());
        match child.as_table_like() {
            Some(child_table) => out.push((name.to_string(), child_table, span)),
            None => diagnostics.error(
                format!("`{section}.{name}` must be a table, e.g. `[{section}.{name}]`"),
                span,
            ),
        }
    }
    out
}

fn parse_pipeline(item: Option<&Item>, dir: &Path, diagnostics: &mut Diagnostics) -> PipelineSettings {
    let mut settings = PipelineSettings {
        name: "pipeline".into(),
        as_of: AsOf::LastOrder,
        timezone: "UTC".into(),
        output_dir: resolve_path(dir, "out"),
        max_rejected_fraction: 0.0,
        lock_wait_seconds: 0.0,
        keep_runs: 7,
        max_data_age_days: None,
        memory_limit: None,
    };
    let Some(item) = item else { return settings };
    let Some(table) = item.as_table_like() else {
        diagnostics.error("`pipeline` must be a table", item_span(item));
        return settings;
    };
    let reader = TableReader::new(table, "`[pipeline]`", item_span(item));
    reader.check_keys(PIPELINE_KEYS, diagnostics);
    if let Some(name) = reader.get::<String>("name", diagnostics) {
        settings.name = name;
    }
    if let Some(text) = reader.get::<String>("as_of", diagnostics) {
        match text.parse::<AsOf>() {
            Ok(as_of) => settings.as_of = as_of,
            Err(message) => diagnostics.error(
                format!("key `as_of` of `[pipeline]` is invalid: {message}"),
                reader.value_span("as_of"),
            ),
        }
    }
    if let Some(zone) = reader.get::<String>("timezone", diagnostics) {
        match validate_timezone(&zone) {
            Ok(()) => settings.timezone = zone,
            Err(help) => diagnostics.push(
                Diagnostic::new(
                    format!("key `timezone` of `[pipeline]`: unknown time zone `{zone}`"),
                    reader.value_span("timezone"),
                )
                .with_help(help),
            ),
        }
    }
    if let Some(output_dir) = reader.get::<String>("output_dir", diagnostics) {
        settings.output_dir = resolve_path(dir, &output_dir);
    }
    if let Some(fraction) = in_range(&reader, "max_rejected_fraction", 0.0..=1.0, diagnostics) {
        settings.max_rejected_fraction = fraction;
    }
    settings.max_data_age_days = reader.get::<u32>("max_data_age_days", diagnostics);
    if let Some(keep) = in_range(&reader, "keep_runs", 1..=10_000, diagnostics) {
        settings.keep_runs = keep;
    }
    if let Some(seconds) = in_range(&reader, "lock_wait_seconds", 0.0..=86_400.0, diagnostics) {
        settings.lock_wait_seconds = seconds;
    }
    if let Some(text) = reader.get::<String>("memory_limit", diagnostics) {
        match parse_size(&text) {
            Ok(bytes) => settings.memory_limit = Some(bytes),
            Err(message) => diagnostics.error(
                format!("key `memory_limit` of `[pipeline]` is invalid: {message}"),
                reader.value_span("memory_limit"),
            ),
        }
    }
    settings
}

/// Key `key` of `[pipeline]` when it lies in `range`; outside it, an error naming the range.
fn in_range<T>(
    reader: &TableReader,
    key: &str,
    range: std::ops::RangeInclusive<T>,
    diagnostics: &mut Diagnostics,
) -> Option<T>
where
    T: serde::de::DeserializeOwned + PartialOrd + std::fmt::Display,
{
    let value = reader.get::<T>(key, diagnostics)?;
    if range.contains(&value) {
        return Some(value);
    }
    diagnostics.error(
        format!(
            "key `{key}` of `[pipeline]` must be between {} and {}, got {value}",
            range.start(),
            range.end()
        ),
        reader.value_span(key),
    );
    None
}

/// An IANA zone name chrono-tz knows; the error carries a suggestion.
pub fn validate_timezone(zone: &str) -> Result<(), Option<String>> {
    match chrono_tz::Tz::from_str(zone) {
        Ok(_) => Ok(()),
        Err(_) => Err(
            crate::core::diagnostic::suggest(zone, chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()))
                .or_else(|| Some("use an IANA name such as `Europe/Berlin` or `UTC`".into())),
        ),
    }
}

/// The `columns` table of source `name` as `T` (its defaults when absent).
fn parse_columns<T: serde::de::DeserializeOwned + Default>(
    name: &str,
    table: &dyn TableLike,
    diagnostics: &mut Diagnostics,
) -> Option<T> {
    let Some(item) = table.get("columns") else {
        return Some(T::default());
    };
    match item.as_table_like() {
        Some(columns_table) => {
            let columns_reader =
                TableReader::new(columns_table, format!("`columns` of source `{name}`"), item_span(item));
            columns_reader.options::<T>(&[], diagnostics)
        }
        None => {
            diagnostics.error(
                format!("key `columns` of source `{name}` must be a table of logical = file column"),
                item_span(item),
            );
            None
        }
    }
}

/// `message` at the table's `kind`, suggesting the nearest of `names` (or listing them).
fn unknown_kind(message: String, kind: &str, names: &[&str], reader: &TableReader, diagnostics: &mut Diagnostics) {
    let help = crate::core::diagnostic::suggest(kind, names.iter().copied())
        .or_else(|| Some(format!("known kinds: {}", backticked(names))));
    diagnostics.push(Diagnostic::new(message, reader.value_span("kind")).with_help(help));
}

fn parse_source(
    name: &str,
    table: &dyn TableLike,
    span: Option<Range<usize>>,
    dir: &Path,
    diagnostics: &mut Diagnostics,
) -> Option<SourceConfig> {
    let reader = TableReader::new(table, format!("source `{name}`"), span.clone());
    reader.check_keys(SOURCE_KEYS, diagnostics);
    let kind = match reader.get::<String>("kind", diagnostics) {
        None => SourceKind::default(),
        Some(text) => SourceKind::from_name(&text).unwrap_or_else(|| {
            let names: Vec<&str> = SourceKind::ALL.iter().map(|kind| kind.name()).collect();
            let message = format!("key `kind` of source `{name}`: unknown source kind `{text}`");
            unknown_kind(message, &text, &names, &reader, diagnostics);
            SourceKind::default()
        }),
    };
    let path = reader.require::<String>("path", diagnostics);
    let naive = reader
        .get::<String>("naive_timestamps_are", diagnostics)
        .unwrap_or_else(|| "UTC".into());
    if let Err(help) = validate_timezone(&naive) {
        diagnostics.push(
            Diagnostic::new(
                format!("key `naive_timestamps_are` of source `{name}`: unknown time zone `{naive}`"),
                reader.value_span("naive_timestamps_are"),
            )
            .with_help(help),
        );
    }
    if kind != SourceKind::Orders {
        for key in ["include", "exclude"] {
            if table.contains_key(key) {
                diagnostics.error(
                    format!("key `{key}` of source `{name}`: filters are for orders sources"),
                    reader.key_span(key),
                );
            }
        }
    }
    let (columns, survey_columns, spend_columns) = match kind {
        SourceKind::Orders => (
            parse_columns::<ColumnMap>(name, table, diagnostics),
            Some(SurveyColumns::default()),
            Some(SpendColumns::default()),
        ),
        SourceKind::Survey => (
            Some(ColumnMap::default()),
            parse_columns::<SurveyColumns>(name, table, diagnostics),
            Some(SpendColumns::default()),
        ),
        SourceKind::Spend => (
            Some(ColumnMap::default()),
            Some(SurveyColumns::default()),
            parse_columns::<SpendColumns>(name, table, diagnostics),
        ),
    };
    let include = reader
        .get::<BTreeMap<String, Vec<FilterValue>>>("include", diagnostics)
        .unwrap_or_default();
    let exclude = reader
        .get::<BTreeMap<String, Vec<FilterValue>>>("exclude", diagnostics)
        .unwrap_or_default();
    let path = resolve_path(dir, &path?);
    let format = match reader.get::<String>("format", diagnostics).as_deref() {
        Some("parquet") => Some(SourceFormat::Parquet),
        Some("csv") => Some(SourceFormat::Csv),
        Some(other) => {
            diagnostics.push(
                Diagnostic::new(
                    format!("key `format` of source `{name}`: unknown format `{other}`"),
                    reader.value_span("format"),
                )
                .with_help(
                    crate::core::diagnostic::suggest(other, ["parquet", "csv"])
                        .or_else(|| Some("use `parquet` or `csv`".into())),
                ),
            );
            None
        }
        // By extension: `.csv` files (or a glob of them) are CSV, everything else Parquet.
        None => Some(match path.to_string_lossy().to_ascii_lowercase().ends_with(".csv") {
            true => SourceFormat::Csv,
            false => SourceFormat::Parquet,
        }),
    };
    let csv = match table.get("csv") {
        None => Some(CsvOptions::default()),
        Some(item) => match item.as_table_like() {
            Some(csv_table) => {
                let csv_reader = TableReader::new(csv_table, format!("`csv` of source `{name}`"), item_span(item));
                csv_reader.options::<CsvOptions>(&[], diagnostics)
            }
            None => {
                diagnostics.error(
                    format!("key `csv` of source `{name}` must be a table (delimiter, header, quote, text_ids, infer_schema_rows)"),
                    item_span(item),
                );
                None
            }
        },
    };
    if let Some(csv) = &csv {
        if !csv.delimiter.is_ascii() || csv.quote.chars().count() > 1 || !csv.quote.is_ascii() {
            diagnostics.error(
                format!("`csv` of source `{name}`: `delimiter` and `quote` must each be one ASCII character (`quote = \"\"` turns quoting off)"),
                reader.value_span("csv"),
            );
        }
    }
    Some(SourceConfig {
        name: name.to_string(),
        kind,
        path,
        format: format?,
        csv: csv?,
        include,
        exclude,
        naive_timestamps_are: naive,
        columns: columns?,
        survey_columns: survey_columns?,
        spend_columns: spend_columns?,
        span,
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn parse_stage(
    name: &str,
    table: &dyn TableLike,
    span: Option<Range<usize>>,
    sources: &BTreeMap<String, SourceConfig>,
    diagnostics: &mut Diagnostics,
) -> Option<StageConfig> {
    let reader = TableReader::new(table, format!("stage `{name}`"), span.clone());
    let kind_name = reader.require::<String>("kind", diagnostics)?;
    let Some(kind) = stages::kind(&kind_name) else {
        let names: Vec<&str> = stages::KINDS.iter().map(|k| k.name).collect();
        let message = format!("stage `{name}` has unknown kind `{kind_name}`");
        unknown_kind(message, &kind_name, &names, &reader, diagnostics);
        // Still report unknown common keys; options cannot be checked without a kind.
        return None;
    };
    let inputs = match reader.get::<OneOrMany>("input", diagnostics) {
        Some(OneOrMany::One(input)) => vec![input],
        Some(OneOrMany::Many(inputs)) => inputs,
        None if table.get("input").is_none() => match (kind.input, sources.len()) {
            // The one source of the one kind the stage reads.
            (stages::InputKind::Sources([wanted]), _)
                if sources.values().filter(|source| source.kind == *wanted).count() == 1 =>
            {
                sources
                    .values()
                    .filter(|source| source.kind == *wanted)
                    .map(|source| source.name.clone())
                    .collect()
            }
            _ => {
                diagnostics.error(
                    format!(
                        "stage `{name}` is missing required key `input` ({})",
                        kind.input.describe()
                    ),
                    span.clone(),
                );
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let output = reader.get::<String>("output", diagnostics);
    let output_prefix = reader.get::<String>("output_prefix", diagnostics);
    let stage = (kind.parse)(&reader, STAGE_COMMON_KEYS, diagnostics);
    let suffixes = stage
        .as_ref()
        .map(|stage| stage.tables())
        .filter(|tables| !tables.is_empty())
        .unwrap_or_else(|| kind.tables.to_vec());
    let single = suffixes.len() == 1;
    if single && output_prefix.is_some() {
        diagnostics.error(
            format!("stage `{name}` writes one table: use `output`, not `output_prefix`"),
            reader.key_span("output_prefix"),
        );
    }
    if !single && output.is_some() {
        diagnostics.error(
            format!(
                "stage `{name}` writes {} tables ({}): use `output_prefix`, not `output`",
                suffixes.len(),
                backticked(&suffixes)
            ),
            reader.key_span("output"),
        );
    }
    let tables = if single {
        vec![output.unwrap_or_else(|| name.to_string())]
    } else {
        let prefix = output_prefix.unwrap_or_else(|| name.to_string());
        // An empty suffix is the table under the bare prefix (`acquisition` beside `acquisition_payback`).
        suffixes
            .iter()
            .map(|suffix| match suffix.is_empty() {
                true => prefix.clone(),
                false => format!("{prefix}_{suffix}"),
            })
            .collect()
    };
    for table_name in &tables {
        if !is_valid_table_name(table_name) {
            diagnostics.error(
                format!("stage `{name}` would write table `{table_name}`: use letters, digits, `_` and `-` only"),
                span.clone(),
            );
        }
    }
    Some(StageConfig {
        name: name.to_string(),
        kind,
        inputs,
        tables,
        stage,
        span,
        input_span: reader.value_span("input"),
    })
}

/// `path` relative to the config's folder, with `.` and `..` removed lexically (for messages).
pub fn resolve_path(dir: &Path, path: &str) -> PathBuf {
    use std::path::Component;
    let joined = dir.join(path);
    let mut out = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                let popped = matches!(out.components().next_back(), Some(Component::Normal(_))) && out.pop();
                if !popped {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

fn is_valid_table_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}
