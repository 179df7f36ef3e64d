//! `report.html`: one self-contained page of a snapshot's tables for people (`pipeline report
//! OUT`). The tiles and charts are computed from the published tables (`sections.rs`), found by
//! their stages' kinds (`tables.rs`), and rendered through a minijinja template with Apache
//! ECharts inlined (vendored from its npm package: `vendor/echarts/`), so the page opens from
//! disk and fetches nothing.

mod sections;
mod tables;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

pub use sections::{Chart, Section, Tile};
use tables::Snapshot;

const TEMPLATE: &str = include_str!("page.html");
const ECHARTS: &str = include_str!("../../vendor/echarts/echarts.min.js");

/// The report of the snapshot at `dir`, with each tile's change against `previous` (an earlier
/// snapshot folder) when given.
pub fn render(dir: &Path, previous: Option<&Path>) -> Result<String> {
    render_snapshot(Snapshot::open(dir)?, previous)
}

/// The report of the tables at `dir` as `manifest` lists them: a run's, just before they are
/// published (`[report]`).
pub fn render_staged(dir: &Path, manifest: &serde_json::Value, previous: Option<&Path>) -> Result<String> {
    render_snapshot(Snapshot::with_manifest(dir, manifest.clone()), previous)
}

fn render_snapshot(snapshot: Snapshot, previous: Option<&Path>) -> Result<String> {
    let mut tiles = sections::tiles(&snapshot)?;
    let mut previous_as_of = None;
    // The previous snapshot's figures are a comparison, not the report: one that cannot be read
    // (an older layout, a damaged file) leaves the changes out, with a warning.
    let before =
        previous.map(|dir| Snapshot::open(dir).and_then(|earlier| Ok((sections::tiles(&earlier)?, earlier.as_of()))));
    match before {
        Some(Ok((before, as_of))) => {
            let run_as_of = snapshot.as_of();
            for tile in &mut tiles {
                // A tile of a carried-over table compared with that same table says nothing.
                let same_table = |b: &Tile| tile.as_of != run_as_of && b.as_of == tile.as_of;
                tile.previous = before
                    .iter()
                    .find(|b| b.key == tile.key && !same_table(b))
                    .map(|b| b.value);
            }
            previous_as_of = Some(as_of);
        }
        Some(Err(error)) => {
            tracing::warn!("report: no changes against the previous snapshot, which cannot be read: {error:#}")
        }
        None => {}
    }
    let sections = sections::sections(&snapshot)?;
    let currency = snapshot.currency();
    let shown: Vec<serde_json::Value> = tiles
        .iter()
        .map(|tile| {
            let change = tile.previous.map(|before| change_text(tile, before));
            let direction = match tile.previous {
                Some(before) if tile.value > before => "up",
                Some(before) if tile.value < before => "down",
                _ => "",
            };
            // A tile from a table carried over from an earlier run says its as_of.
            let label = match tile.as_of == snapshot.as_of() {
                true => tile.label.to_string(),
                false => format!("{} (as of {})", tile.label, tile.as_of),
            };
            json!({
                "key": tile.key,
                "label": label,
                "text": value_text(tile.value, tile.unit, currency.as_deref()),
                "note": tile.note,
                "change": change,
                "direction": direction,
            })
        })
        .collect();
    let charts: Vec<&Chart> = sections.iter().flat_map(|section| &section.charts).collect();
    let data = json!({ "as_of": snapshot.as_of(), "tiles": tiles, "charts": charts });
    let mut environment = minijinja::Environment::new();
    environment
        .add_template("page.html", TEMPLATE)
        .context("the report's template")?;
    let page = environment
        .get_template("page.html")
        .and_then(|template| {
            template.render(minijinja::context! {
                pipeline => snapshot.manifest["pipeline"].as_str().unwrap_or("pipeline"),
                as_of => snapshot.as_of(),
                run_id => snapshot.manifest["run_id"].as_str().unwrap_or("-"),
                currency => currency,
                previous_as_of => previous_as_of,
                version => env!("CARGO_PKG_VERSION"),
                tiles => shown,
                sections => sections,
                data => data,
                echarts => ECHARTS,
            })
        })
        .context("rendering the report")?;
    Ok(page)
}

/// `pipeline report OUT`: the report of `OUT/latest` (or of the snapshot folder `OUT` itself),
/// with changes against the snapshot before it when one is kept, written to `output` (default:
/// `report.html` in the snapshot). Written whole: to a temporary file, then renamed.
pub fn write_report(out: &Path, output: Option<&Path>) -> Result<PathBuf> {
    let dir = if out.join("_manifest.json").is_file() {
        out.to_path_buf()
    } else {
        let latest = out.join("latest");
        std::fs::canonicalize(&latest).with_context(|| {
            format!(
                "`{}` has no published snapshot (no `latest`): run `pipeline run` first",
                out.display()
            )
        })?
    };
    let previous = dir.parent().and_then(|runs| previous_snapshot(runs, &dir));
    let page = render(&dir, previous.as_deref())?;
    let target = output.map_or_else(|| dir.join("report.html"), Path::to_path_buf);
    let temp = target.with_extension(format!("html.{}.tmp", std::process::id()));
    std::fs::write(&temp, page).with_context(|| format!("cannot write `{}`", temp.display()))?;
    std::fs::rename(&temp, &target).with_context(|| format!("cannot write `{}`", target.display()))?;
    Ok(target)
}

/// The snapshot published before `current` among `runs` (`<as_of>_<run id>` folders, ordered by
/// their run ids, which start with the run's UTC time).
fn previous_snapshot(runs: &Path, current: &Path) -> Option<PathBuf> {
    let run_id = |path: &Path| {
        let name = path.file_name()?.to_string_lossy().to_string();
        Some(name.split_once('_')?.1.to_string())
    };
    let current_id = run_id(current)?;
    std::fs::read_dir(runs)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.join("_manifest.json").is_file()
                && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .filter_map(|path| Some((run_id(&path)?, path)))
        .filter(|(id, _)| *id < current_id)
        .max()
        .map(|(_, path)| path)
}

fn value_text(value: f64, unit: &str, currency: Option<&str>) -> String {
    match unit {
        "count" => thousands(value.round() as i64),
        "share" => format!("{:.1} %", 100.0 * value),
        "money" => format!(
            "{}{}",
            thousands(value.round() as i64),
            currency.map(|c| format!(" {c}")).unwrap_or_default()
        ),
        "ratio" => format!("{value:.2}"),
        _ => format!("{value:.1}").replace('-', "−"),
    }
}

fn change_text(tile: &Tile, before: f64) -> String {
    let delta = tile.value - before;
    let sign = if delta >= 0.0 { "+" } else { "−" };
    match tile.unit {
        "share" => format!("{sign}{:.1} pts", 100.0 * delta.abs()),
        "count" | "money" => format!("{sign}{}", thousands(delta.abs().round() as i64)),
        _ => format!("{sign}{:.2}", delta.abs()),
    }
}

fn thousands(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut text = String::new();
    for (at, digit) in digits.chars().enumerate() {
        if at > 0 && (digits.len() - at) % 3 == 0 {
            text.push(',');
        }
        text.push(digit);
    }
    if value < 0 {
        format!("−{text}")
    } else {
        text
    }
}
