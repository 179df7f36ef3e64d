//! Survey sources (`kind = "survey"`): one row per answer with `customer_id`, `responded_at` (a
//! date or timestamp; CSV text in any layout `csv.rs` knows) and `score`, an integer 0–10.
//! Answers with a null id or time, or a null or out-of-range score, are rejected and counted
//! (under `max_rejected_fraction`); answers after as_of are ignored and counted.

use super::*;
use crate::core::input::SurveyAnswers;

/// A survey source's files and mapped columns, checked: the lazy scan of
/// customer_id (Int64 or text), responded_ts (Int64 µs) and score (Int64), and the type of
/// `responded_at` as read.
pub struct SurveySchema {
    pub files: Vec<PathBuf>,
    /// Whether the ids are text (else integers).
    pub text_ids: bool,
    answers: LazyFrame,
    time_type: DataType,
}

/// The answers of `source` up to `as_of` (a local date in the pipeline's zone).
pub fn read_survey(source: &SourceConfig, settings: &PipelineSettings, as_of: NaiveDate) -> Result<SurveyAnswers> {
    let SurveySchema {
        files,
        answers,
        time_type,
        ..
    } = check_survey(source)?;
    crate::telemetry::inject_fault(&source.name);
    let local = local_date_of_micros(col("responded_ts"), &time_type, source, settings)?;
    let all = read_whole(source, answers.with_column(local.alias("responded_on")), "answers")?;
    answers_up_to(source, settings, &files, all, as_of)
}

/// Check a survey source's files and column types (`validate` and every run).
pub fn check_survey(source: &SourceConfig) -> Result<SurveySchema> {
    let files = resolve_files(source)?;
    let columns = &source.survey_columns;
    let schema = file_schema(source, &files)?;
    let typed = |logical: &str, physical: &str| mapped_type(source, &schema, logical, physical);
    let id_type = typed("customer_id", &columns.customer_id)?;
    let time_type = typed("responded_at", &columns.responded_at)?;
    let score_type = typed("score", &columns.score)?;
    let id = match &id_type {
        dtype if dtype.is_integer() => col(columns.customer_id.as_str()).strict_cast(DataType::Int64),
        dtype if is_text(dtype) => col(columns.customer_id.as_str()).cast(DataType::String),
        other => bail!(
            "source `{}`: column `{}` (mapped as `customer_id`) has type {other}: expected integers or text",
            source.name,
            columns.customer_id
        ),
    };
    let (micros, time_type) = mapped_time(source, &files, &time_type, "responded_at", &columns.responded_at)?;
    if !score_type.is_integer() {
        bail!(
            "source `{}`: column `{}` (mapped as `score`) has type {score_type}: expected integers 0–10",
            source.name,
            columns.score
        );
    }
    let text_ids = !id_type.is_integer();
    let lines = scan(source, &files)?.select([
        id.alias("customer_id"),
        micros.alias("responded_ts"),
        col(columns.score.as_str()).cast(DataType::Int64).alias("score"),
    ]);
    Ok(SurveySchema {
        files,
        text_ids,
        answers: lines,
        time_type,
    })
}

/// Count and drop the rejected answers and those after `as_of`.
fn answers_up_to(
    source: &SourceConfig,
    settings: &PipelineSettings,
    files: &[PathBuf],
    all: DataFrame,
    as_of: NaiveDate,
) -> Result<SurveyAnswers> {
    let has_id = col("customer_id").is_not_null();
    let dated = has_id.clone().and(col("responded_on").is_not_null());
    // False, never null, for a null score (false and null is false), so its negation counts it.
    let in_range = col("score")
        .is_not_null()
        .and(col("score").gt_eq(lit(0)))
        .and(col("score").lt_eq(lit(10)));
    let usable = dated.clone().and(in_range.clone());
    let as_of_date = lit(as_of).cast(DataType::Date);
    let reasons = [
        ("null_customer_id", has_id.clone().not()),
        ("null_responded_at", has_id.and(col("responded_on").is_null())),
        ("invalid_score", dated.and(in_range.not())),
        (
            "after_as_of",
            usable.clone().and(col("responded_on").gt(as_of_date.clone())),
        ),
    ];
    // Every count in one pass over the answers.
    let counts = all
        .clone()
        .lazy()
        .select(reasons.map(|(reason, rows)| rows.cast(DataType::UInt64).sum().alias(reason)))
        .collect()?;
    let rejected = ["null_customer_id", "null_responded_at", "invalid_score"];
    let stats = whole_stats(source, files, all.height(), &counts, &rejected)?;
    let answers = all
        .lazy()
        .filter(usable.and(col("responded_on").lt_eq(as_of_date)))
        .with_column(col("score").cast(DataType::Int32))
        .collect()?;
    if let Some(message) = too_many_rejected(source, settings, &stats, "answers") {
        return Err(DataRejected { message, stats }.into());
    }
    Ok(SurveyAnswers { answers, stats })
}
