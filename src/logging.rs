//! Logs on stderr: human lines (colour only on a terminal, never with `NO_COLOR`), or one JSON
//! object per line (`--log-format json`) with the time, level, message, other fields and the
//! run id, for schedulers and log shippers.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The id of this process's run, once it has one: every JSON log line carries it.
static RUN_ID: OnceLock<String> = OnceLock::new();

/// Set the run id the log lines carry (once per process).
pub fn set_run_id(id: &str) {
    let _ = RUN_ID.set(id.to_string());
}

/// Install the subscriber: `level` (or `RUST_LOG`) filters the lines, `format` shapes them;
/// every warning is also kept for the manifest (`take_warnings`), whatever the level.
pub fn init(level: &str, format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("pipeline={level}")));
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let lines = match format {
        LogFormat::Text => lines.with_ansi(use_colour()).boxed(),
        LogFormat::Json => lines.with_ansi(false).event_format(JsonLines).boxed(),
    };
    tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(KeepWarnings.with_filter(tracing_subscriber::filter::LevelFilter::WARN))
        .init();
}

/// The warnings logged since the last call, oldest first.
pub fn take_warnings() -> Vec<String> {
    WARNINGS
        .lock()
        .map(|mut kept| std::mem::take(&mut *kept))
        .unwrap_or_default()
}

static WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Keeps the message of every warning of this process for the run manifest.
struct KeepWarnings;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for KeepWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut fields = Fields::default();
            event.record(&mut fields);
            if let Ok(mut kept) = WARNINGS.lock() {
                kept.push(fields.message);
            }
        }
    }
}

/// Colour only when stderr is a terminal and `NO_COLOR` is unset or empty (no-color.org).
pub fn use_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

/// One JSON object per event: `{"time", "level", "message", "run_id", fields…}`.
struct JsonLines;

#[derive(Default)]
struct Fields {
    message: String,
    others: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "message" => self.message = text,
            name => {
                self.others.insert(name.to_string(), serde_json::Value::String(text));
            }
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            name => {
                self.others.insert(name.to_string(), value.into());
            }
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.others.insert(field.name().to_string(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.others.insert(field.name().to_string(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.others.insert(field.name().to_string(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.others.insert(field.name().to_string(), value.into());
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = serde_json::Map::new();
        line.insert("time".into(), chrono::Utc::now().to_rfc3339().into());
        line.insert(
            "level".into(),
            event.metadata().level().as_str().to_ascii_lowercase().into(),
        );
        line.insert("message".into(), fields.message.into());
        line.insert(
            "run_id".into(),
            RUN_ID.get().map_or(serde_json::Value::Null, |id| id.clone().into()),
        );
        line.extend(fields.others);
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}
