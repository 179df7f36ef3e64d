//! `pipeline`: customer-retention tables from Parquet order histories.
//!
//! Data flows one way: config → plan → source scan → shared tables → stages → sink.

pub mod cli;
pub mod core;
pub mod generate;
pub mod io;
pub mod logging;
pub mod report;
pub mod runner;
pub mod telemetry;
pub mod tuning;

use crate::core::config::SourceKind;
use crate::core::{catalog, config, plan};
use crate::io::source;

use anyhow::Result;

/// Errors that exit with code 2: the command or config is wrong, no data was touched.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("{0}")]
    Config(config::Diagnostics),
    #[error("{0}")]
    Usage(String),
}

/// Exit code for an error chain: 2 for usage/config errors, 1 for everything else.
pub fn exit_code(error: &anyhow::Error) -> i32 {
    if error.chain().any(|cause| cause.downcast_ref::<UsageError>().is_some()) {
        2
    } else {
        1
    }
}

/// Where and why the last panic happened, recorded by `install_panic_hook`.
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Record panics instead of printing them: `catch_panics` turns them into an error that says
/// it is a bug and where it happened. `PIPELINE_PANIC_BACKTRACE=1` also prints the default report.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_else(|| "an unknown place".into());
        let message = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "no message".into());
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = Some(format!("{message} (at {location})"));
        }
        if std::env::var_os("PIPELINE_PANIC_BACKTRACE").is_some() {
            default(info);
        }
    }));
}

/// `work()`, with a panic turned into an error (exit 1) saying it is a bug and where it
/// happened, so callers can still record the failure.
pub fn catch_panics<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(result) => result,
        Err(payload) => {
            let recorded = LAST_PANIC.lock().ok().and_then(|mut last| last.take());
            let what = recorded.unwrap_or_else(|| source::panic_text(&payload));
            Err(anyhow::anyhow!(
                "internal error: this is a bug in pipeline {}, please report it with the command and config: {what}",
                env!("CARGO_PKG_VERSION")
            ))
        }
    }
}

/// Load and validate a config into a plan (exit code 2 on failure).
pub fn load_plan(path: &std::path::Path) -> Result<plan::Plan> {
    plan::load_plan(path).map_err(|diagnostics| UsageError::Config(diagnostics).into())
}

/// `pipeline docs`: the tables a config writes, each with its columns from the catalog
/// (`catalog::columns`, the source of the Parquet field descriptions), as Markdown or JSON.
pub fn docs(path: &std::path::Path, format: cli::DocsFormat) -> Result<String> {
    #[derive(serde::Serialize)]
    struct TableDoc<'a> {
        table: &'a str,
        stage: &'a str,
        kind: &'static str,
        columns: Vec<catalog::ColumnDoc>,
    }
    let plan = load_plan(path)?;
    let mut tables = Vec::new();
    for stage in &plan.config.stages {
        let suffixes = match stage.stage.as_ref().map(|s| s.tables()) {
            Some(custom) if !custom.is_empty() => custom,
            _ => stage.kind.tables.to_vec(),
        };
        for (table, suffix) in stage.tables.iter().zip(suffixes) {
            let mut columns = catalog::columns(stage.kind.name, suffix).to_vec();
            columns.push(catalog::AS_OF);
            tables.push(TableDoc {
                table,
                stage: &stage.name,
                kind: stage.kind.name,
                columns,
            });
        }
    }
    Ok(match format {
        cli::DocsFormat::Json => serde_json::to_string_pretty(&tables)? + "\n",
        cli::DocsFormat::Markdown => {
            let mut text = format!(
                "# Tables of `{}`\n\nEvery table is `OUT/latest/<table>.parquet`. A name in `<…>` stands for columns named by options (`<dimension>`, `<N>` days, `<unit>`, `<by>`, `<metric>`).\n",
                path.display()
            );
            for table in &tables {
                text.push_str(&format!(
                    "\n## `{}`\n\nStage `{}` (`{}`).\n\n| column | type | description |\n|---|---|---|\n",
                    table.table, table.stage, table.kind
                ));
                for column in &table.columns {
                    text.push_str(&format!(
                        "| `{}` | {} | {} |\n",
                        column.name,
                        column.dtype,
                        column.description.replace('|', "\\|")
                    ));
                }
            }
            text
        }
    })
}

/// `pipeline validate`: config, DAG, and for each source that its files exist and have the
/// mapped columns with usable types.
pub fn validate(path: &std::path::Path) -> Result<String> {
    let plan = load_plan(path)?;
    let mut report = Vec::new();
    // Orders sources first: each is checked once, and a survey's ids against theirs.
    let mut sources: Vec<_> = plan.config.sources.values().collect();
    sources.sort_by_key(|source| source.kind != SourceKind::Orders);
    let mut orders_ids: Vec<(&str, bool)> = Vec::new();
    for source in sources {
        match source.kind {
            SourceKind::Orders => {
                let schema = source::check_schema(source)?;
                orders_ids.push((&source.name, schema.customer_id == polars::prelude::DataType::String));
                report.push(format!(
                    "source `{}`: {} {} file(s), mapped and filter columns ok",
                    source.name,
                    schema.files.len(),
                    source.format.extension()
                ));
            }
            SourceKind::Survey => {
                let survey = source::check_survey(source)?;
                if let Some((orders, _)) = orders_ids.iter().find(|(_, text)| *text != survey.text_ids) {
                    let kind = |text: bool| if text { "text" } else { "integers" };
                    anyhow::bail!(
                        "source `{}`: its customer_id holds {}, but orders source `{orders}` holds {}: map a customer_id column of the same kind",
                        source.name,
                        kind(survey.text_ids),
                        kind(!survey.text_ids)
                    );
                }
                report.push(format!(
                    "source `{}`: {} survey file(s), mapped columns ok",
                    source.name,
                    survey.files.len()
                ));
            }
            SourceKind::Spend => {
                let spend = source::check_spend(source)?;
                report.push(format!(
                    "source `{}`: {} spend file(s), mapped columns ok",
                    source.name,
                    spend.files.len()
                ));
            }
        }
    }
    report.push(format!(
        "{} stage(s) in {} level(s), {} table(s): ok",
        plan.config.stages.len(),
        plan.levels.len(),
        plan.config.stages.iter().map(|s| s.tables.len()).sum::<usize>()
    ));
    Ok(report.join("\n"))
}
