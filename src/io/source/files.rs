//! Which files a source reads (directories listed Spark/Hive style, every file checked whole)
//! and the lazy scan over them.

use super::*;

/// Files a source path names: one file, a glob, or every file of the source's format below a
/// directory, read the way Spark, Hive and Delta readers do: names starting with `_` or `.`
/// (`_SUCCESS`, `_committed_*`, `.part-0.crc`, `_delta_log/`) and files of another extension
/// are skipped, `key=value` folders are Hive partitions. Each file must be whole: a zero-byte
/// or truncated file is an error naming it, so nothing is published from part of the input.
pub fn resolve_files(source: &SourceConfig) -> Result<Vec<PathBuf>> {
    let path = &source.path;
    let text = path.to_string_lossy();
    let mut files = Vec::new();
    if text.contains(['*', '?', '[']) {
        let matches = glob::glob(&text).with_context(|| format!("source `{}`: invalid glob `{text}`", source.name))?;
        for entry in matches {
            let file = entry.with_context(|| format!("source `{}`: reading glob `{text}`", source.name))?;
            if file.is_file() && !is_hidden(&file) {
                files.push(file);
            }
        }
        if files.is_empty() {
            bail!("source `{}`: glob `{text}` matches no file", source.name);
        }
    } else if path.is_dir() {
        let extension = source.format.extension();
        collect_files(path, extension, &mut files)
            .with_context(|| format!("source `{}`: listing directory `{text}`", source.name))?;
        if files.is_empty() {
            let hint = match source.format {
                SourceFormat::Parquet => "; for CSV files set `format = \"csv\"` on the source",
                SourceFormat::Csv => "",
            };
            bail!(
                "source `{}`: directory `{text}` contains no .{extension} file (names starting with `_` or `.` are skipped){hint}",
                source.name
            );
        }
    } else if path.is_file() {
        files.push(path.clone());
    } else {
        bail!("source `{}`: input path `{text}` does not exist", source.name);
    }
    files.sort();
    for file in &files {
        check_whole(file, source.format).with_context(|| {
            format!(
                "source `{}`: `{}` cannot be read; re-export it, or remove it from the input",
                source.name,
                file.display()
            )
        })?;
    }
    Ok(files)
}

/// A name Spark, Hive and Delta readers skip: starting with `_` or `.`.
pub(super) fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .map(|name| name.to_string_lossy().starts_with(['_', '.']))
        .unwrap_or(false)
}

pub(super) fn collect_files(dir: &Path, extension: &str, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if is_hidden(&path) {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, extension, files)?;
        } else if path
            .extension()
            .is_some_and(|found| found.to_string_lossy().eq_ignore_ascii_case(extension))
        {
            files.push(path);
        }
    }
    Ok(())
}

/// A file that is not empty and, for Parquet, starts and ends with the `PAR1` magic (a file
/// cut short loses its footer).
pub(super) fn check_whole(file: &Path, format: SourceFormat) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut handle = std::fs::File::open(file)?;
    let size = handle.metadata()?.len();
    if size == 0 {
        bail!("the file is empty (0 bytes)");
    }
    if format == SourceFormat::Parquet {
        let mut head = [0u8; 4];
        let mut tail = [0u8; 4];
        if size < 12 {
            bail!("the file has {size} bytes, too few for Parquet");
        }
        handle.read_exact(&mut head)?;
        handle.seek(SeekFrom::End(-4))?;
        handle.read_exact(&mut tail)?;
        if &head != b"PAR1" {
            bail!(
                "the file is not Parquet (it does not start with `PAR1`); for CSV set `format = \"csv\"` on the source"
            );
        }
        if &tail != b"PAR1" {
            bail!("the Parquet file is truncated or still being written (no `PAR1` footer)");
        }
    }
    Ok(())
}

/// The lines of a source's files, every column as stored (CSV: amount, ordered_at and the
/// text columns as text, ids inferred unless `text_ids`).
pub(super) fn scan(source: &SourceConfig, files: &[PathBuf]) -> Result<LazyFrame> {
    let paths = files.iter().map(|file| PlRefPath::new(file.to_string_lossy().as_ref()));
    let scanned = match source.format {
        SourceFormat::Parquet => {
            let mut args = ScanArgsParquet::default();
            if source.path.is_dir() {
                // Hive `key=value` folders below the directory become columns.
                args.hive_options.enabled = Some(true);
            }
            LazyFrame::scan_parquet_files(paths.collect(), args)
        }
        SourceFormat::Csv => {
            let options = &source.csv;
            let mut text_columns: Vec<&str> = ["ordered_at", "amount", "status", "channel", "currency"]
                .into_iter()
                .filter_map(|logical| source.columns.physical(logical))
                .collect();
            if options.text_ids {
                text_columns.extend([source.columns.customer_id.as_str(), source.columns.order_id.as_str()]);
            }
            let overrides = Schema::from_iter(
                text_columns
                    .into_iter()
                    .map(|name| Field::new(name.into(), DataType::String)),
            );
            let quote = options.quote.bytes().next();
            LazyCsvReader::new_paths(paths.collect())
                .with_has_header(options.header)
                .with_separator(options.delimiter as u8)
                .with_quote_char(quote)
                .with_infer_schema_length(Some(options.infer_schema_rows.max(1)))
                .with_dtype_overwrite(Some(Arc::new(overrides)))
                .finish()
                // Every field of every row is parsed, so a row with more fields than the
                // header is an error rather than silently cut (polars checks only when it
                // reads all columns).
                .map(|lines| lines.with_projection_pushdown(false))
        }
    };
    scanned.map_err(anyhow::Error::from).with_context(|| {
        format!(
            "source `{}`: cannot scan `{}` as {}",
            source.name,
            source.path.display(),
            source.format.extension()
        )
    })
}

/// The schema of a source's files, every column as stored; a file polars cannot describe is
/// an error naming it (polars panics on some column types it was not built for).
pub(super) fn file_schema(source: &SourceConfig, files: &[PathBuf]) -> Result<SchemaRef> {
    let described = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scan(source, files).and_then(|mut lines| lines.collect_schema().map_err(anyhow::Error::from))
    }));
    match described {
        Ok(schema) => schema.with_context(|| {
            format!(
                "source `{}`: cannot read the {} schema of `{}`",
                source.name,
                match source.format {
                    SourceFormat::Parquet => "Parquet",
                    SourceFormat::Csv => "CSV",
                },
                source.path.display()
            )
        }),
        Err(panic) => bail!(
            "source `{}`: a column of `{}` has a type this build cannot read ({}); drop that column from the export or cast it to a plain type",
            source.name,
            source.path.display(),
            panic_text(&panic)
        ),
    }
}

/// Lines in the source's files from Parquet metadata, for the progress bar and the fold's
/// reservations; `None` for CSV (counting needs a pass) or when the count fails (the scan
/// then reports the problem).
pub(super) fn total_rows(source: &SourceConfig, files: &[PathBuf]) -> Option<u64> {
    if source.format == SourceFormat::Csv {
        return None;
    }
    let counted = scan(source, files)
        .ok()?
        .select([len().cast(DataType::UInt64)])
        .collect()
        .ok()?;
    counted.column("len").ok()?.u64().ok()?.get(0)
}

/// About how many lines an orders source holds, before it is read: Parquet's row counts, or a
/// CSV's bytes at `CSV_BYTES_PER_LINE` (0 when its files cannot be resolved: the read reports
/// why).
pub fn estimated_lines(source: &SourceConfig) -> u64 {
    let Ok(files) = resolve_files(source) else { return 0 };
    match source.format {
        SourceFormat::Parquet => total_rows(source, &files).unwrap_or(0),
        SourceFormat::Csv => {
            let bytes: u64 = files
                .iter()
                .filter_map(|file| std::fs::metadata(file).ok())
                .map(|metadata| metadata.len())
                .sum();
            bytes / CSV_BYTES_PER_LINE
        }
    }
}

/// A typical order line's bytes in a CSV export (ids, a timestamp, an amount, a channel).
const CSV_BYTES_PER_LINE: u64 = 60;
