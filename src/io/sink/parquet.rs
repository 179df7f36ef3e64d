//! A table as a Parquet file: zstd, with statistics, its columns' descriptions and the run's
//! key-value metadata in the footer. With the `parallel-writer` feature the pages are encoded
//! and compressed in parallel (`tuning::parquet`); without it polars' `ParquetWriter` writes
//! them on one thread. The values read back are the same either way.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use polars::prelude::*;

use super::TableMetadata;

#[cfg(feature = "parallel-writer")]
pub use crate::tuning::parquet::SharedPages;

/// Without the `parallel-writer` feature no pages are shared.
#[cfg(not(feature = "parallel-writer"))]
#[derive(Debug, Default)]
pub struct SharedPages;

#[cfg(not(feature = "parallel-writer"))]
impl SharedPages {
    pub fn for_columns_of<'a>(_frames: impl IntoIterator<Item = &'a DataFrame>) -> SharedPages {
        SharedPages
    }
}

/// Write `frame` to `path` and fsync it; pages of the `shared` columns it holds are written
/// from there.
pub fn write_table(path: &Path, frame: &mut DataFrame, metadata: &TableMetadata, shared: &SharedPages) -> Result<()> {
    let writing = || format!("cannot write `{}`", path.display());
    let file = File::create(path).with_context(|| format!("cannot create `{}`", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let key_values = key_value_metadata(frame, metadata);
    #[cfg(feature = "parallel-writer")]
    crate::tuning::parquet::write_in_windows(&mut out, frame, key_values, Some(shared)).with_context(writing)?;
    #[cfg(not(feature = "parallel-writer"))]
    let _ = shared;
    #[cfg(not(feature = "parallel-writer"))]
    ParquetWriter::new(&mut out)
        .with_compression(ParquetCompression::Zstd(Some(
            polars_utils::compression::ZstdLevel::try_new(1)?,
        )))
        .with_statistics(StatisticsOptions::default())
        .with_key_value_metadata(Some(key_values))
        .finish(frame)
        .map_err(anyhow::Error::from)
        .with_context(writing)?;
    let file = out.into_inner().map_err(|e| e.into_error()).with_context(writing)?;
    file.sync_all()
        .with_context(|| format!("cannot fsync `{}`", path.display()))
}

/// Write a table from its `parts` (same columns, in order) to `path` one part at a time, and
/// fsync it; returns its rows. Each part is one or more row groups.
pub fn write_table_parts(
    path: &Path,
    parts: &mut dyn Iterator<Item = Result<DataFrame>>,
    metadata: &TableMetadata,
) -> Result<usize> {
    let writing = || format!("cannot write `{}`", path.display());
    let file = File::create(path).with_context(|| format!("cannot create `{}`", path.display()))?;
    let mut writer = None;
    let mut rows = 0;
    for part in parts {
        let part = part?;
        if writer.is_none() {
            writer = Some(
                // Unbuffered: the writer writes whole pages.
                ParquetWriter::new(file.try_clone()?)
                    .with_compression(ParquetCompression::Zstd(Some(
                        polars_utils::compression::ZstdLevel::try_new(1)?,
                    )))
                    .with_statistics(StatisticsOptions::default())
                    .with_key_value_metadata(Some(key_value_metadata(&part, metadata)))
                    .batched(part.schema())
                    .map_err(anyhow::Error::from)
                    .with_context(writing)?,
            );
        }
        let writer = writer.as_mut().expect("created above");
        writer
            .write_batch(&part)
            .map_err(anyhow::Error::from)
            .with_context(writing)?;
        rows += part.height();
    }
    let writer = writer.ok_or_else(|| anyhow::anyhow!("no part to write"))?;
    writer.finish().map_err(anyhow::Error::from).with_context(writing)?;
    file.sync_all()
        .with_context(|| format!("cannot fsync `{}`", path.display()))?;
    Ok(rows)
}

/// The file's key-value metadata: the Arrow schema with a `description` on every field the
/// catalog knows (readers such as pyarrow and arrow-rs take field metadata from it), then
/// `metadata.key_values`.
fn key_value_metadata(frame: &DataFrame, metadata: &TableMetadata) -> polars::io::parquet::write::KeyValueMetadata {
    use polars_arrow::datatypes::{ArrowSchema, Metadata};
    use polars_parquet::write::KeyValue;
    let schema: ArrowSchema = frame
        .schema()
        .to_arrow(CompatLevel::newest())
        .iter_values()
        .map(|field| {
            let mut field = field.clone();
            if let Some(doc) = crate::core::catalog::describe(metadata.kind, metadata.suffix, field.name.as_str()) {
                field = field.with_metadata(Metadata::from([("description".into(), doc.description.into())]));
            }
            (field.name.clone(), field)
        })
        .collect();
    let mut pairs = vec![polars_parquet::write::schema_to_metadata_key(&schema)];
    pairs.extend(metadata.key_values.iter().map(|(key, value)| KeyValue {
        key: key.clone(),
        value: Some(value.clone()),
    }));
    polars::io::parquet::write::KeyValueMetadata::Static(pairs)
}
