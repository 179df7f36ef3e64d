//! The input corpus: the bundled sample data turned into the shapes warehouses, order systems
//! and Spark jobs export (decimal money, every timestamp unit with and without a zone,
//! dictionary and categorical ids, narrow and unsigned integer ids, CSV, a Spark output
//! directory, Hive folders, repeated lines, exotic unmapped columns). Every variant must give
//! tables equal to the plain Parquet run: text exactly, doubles to 1e-9 relative (ids are
//! compared as text, since a text id column gives text ids).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Decimal128Array, DictionaryArray, Int32Array, RecordBatch,
    StringArray, StructArray, Time64MicrosecondArray,
};
use arrow::datatypes::{DataType as ArrowType, Field, Int32Type, Schema, TimeUnit as ArrowUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

use crate::common::*;

fn sample_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/order_lines.parquet")
}

/// The sample's lines as one arrow-rs batch.
fn sample() -> RecordBatch {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(sample_path()).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

/// `batch` with column `name` replaced by (or, when absent, extended with) `array`.
fn with_column(batch: &RecordBatch, name: &str, array: ArrayRef) -> RecordBatch {
    let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    let field = Field::new(name, array.data_type().clone(), true);
    match fields.iter().position(|f| f.name() == name) {
        Some(index) => {
            fields[index] = field;
            columns[index] = array;
        }
        None => {
            fields.push(field);
            columns.push(array);
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

fn cast(batch: &RecordBatch, name: &str, to: ArrowType) -> RecordBatch {
    let array = arrow::compute::cast(batch.column_by_name(name).unwrap(), &to).unwrap();
    assert_eq!(
        array.null_count(),
        batch.column_by_name(name).unwrap().null_count(),
        "{name} as {to}: no value lost"
    );
    with_column(batch, name, array)
}

fn write(batch: &RecordBatch, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut writer = ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
}

/// The column types a Parquet file declares, read back by arrow-rs (the variant really has
/// the shape it claims).
fn column_type(path: &Path, name: &str) -> ArrowType {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    builder.schema().field_with_name(name).unwrap().data_type().clone()
}

/// `pipelines/retail.toml` over `path`, with `extra` keys on the source and `columns` added to
/// its column map.
fn retail_config(workspace: &Workspace, name: &str, path: &str, extra: &str, columns: &str) -> PathBuf {
    let retail = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/retail.toml")).unwrap();
    let text = retail
        .replace(
            "path = \"../sample_data/order_lines.parquet\"",
            &format!("path = \"{path}\"\n{extra}"),
        )
        .replace(
            "path = \"../sample_data/survey_answers.parquet\"",
            &format!(
                "path = \"{}\"",
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("sample_data/survey_answers.parquet")
                    .display()
            ),
        )
        .replace(
            "path = \"../sample_data/marketing_spend.parquet\"",
            &format!(
                "path = \"{}\"",
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("sample_data/marketing_spend.parquet")
                    .display()
            ),
        )
        .replace(
            "output_dir = \"${OUT_DIR:-../out}\"",
            &format!("output_dir = \"out-{name}\""),
        )
        .replace(
            "channel = \"channel\"\n",
            &format!("channel = \"channel\"\n{columns}\n"),
        );
    assert!(text.contains(&format!("out-{name}")) && text.contains(path));
    workspace.write(&format!("{name}.toml"), &text)
}

/// Every table of `actual` equals the one of `expected`: same columns and rows; rows matched
/// by their text, doubles within 1e-9 relative.
fn assert_same_tables(expected: &Path, actual: &Path, variant: &str) {
    let mut tables: Vec<PathBuf> = std::fs::read_dir(expected)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    tables.sort();
    assert!(!tables.is_empty());
    for path in tables {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let (want, got) = (read_table(&path), read_table(&actual.join(&name)));
        assert_eq!(want.columns, got.columns, "{variant}: columns of {name}");
        assert_eq!(want.rows, got.rows, "{variant}: rows of {name}");
        let rows = |table: &Table| -> Vec<(String, Vec<f64>)> {
            let texts: Vec<Vec<String>> = table.columns.iter().map(|c| table.text(c)).collect();
            let floats: Vec<Option<Vec<f64>>> = table
                .columns
                .iter()
                .map(|c| table.float_columns.contains(c).then(|| table.float(c)))
                .collect();
            let mut rows: Vec<(String, Vec<f64>)> = (0..table.rows)
                .map(|row| {
                    let mut key = Vec::new();
                    let mut values = Vec::new();
                    for (text, float) in texts.iter().zip(&floats) {
                        match float {
                            Some(float) => {
                                values.push(float[row]);
                                // Rounded into the key only to order rows whose text ties.
                                key.push(format!("{:.3e}", float[row]));
                            }
                            None => key.push(text[row].clone()),
                        }
                    }
                    (key.join("|"), values)
                })
                .collect();
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            rows
        };
        let (want_rows, got_rows) = (rows(&want), rows(&got));
        for ((want_key, want_floats), (got_key, got_floats)) in want_rows.iter().zip(&got_rows) {
            let text = |key: &str| -> String {
                key.split('|')
                    .zip(&want.columns)
                    .filter(|(_, c)| !want.float_columns.contains(*c))
                    .map(|(v, _)| v.to_string())
                    .collect::<Vec<_>>()
                    .join("|")
            };
            assert_eq!(text(want_key), text(got_key), "{variant}: a row of {name}");
            for (w, g) in want_floats.iter().zip(got_floats) {
                let same = (w.is_nan() && g.is_nan()) || (w - g).abs() <= 1e-9 * w.abs().max(1.0);
                assert!(same, "{variant}: {name} row {want_key}: {w} against {g}");
            }
        }
    }
}

/// Runs `config` and returns its output folder.
fn run(config: &Path) -> PathBuf {
    run_ok(&["run", config.to_str().unwrap()]);
    let text = std::fs::read_to_string(config).unwrap();
    let out = text
        .lines()
        .find_map(|l| l.strip_prefix("output_dir = \""))
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    config.parent().unwrap().join(out).join("latest")
}

struct Variant {
    name: String,
    /// The input path written, relative to the workspace.
    path: String,
    extra: &'static str,
    columns: &'static str,
}

/// A variant read with the plain run's config.
fn plain_config(name: &str, path: &str) -> Variant {
    Variant {
        name: name.into(),
        path: path.into(),
        extra: "",
        columns: "",
    }
}

#[test]
fn every_export_shape_gives_the_plain_parquet_tables() {
    let workspace = Workspace::new();
    let plain = sample();
    std::fs::copy(sample_path(), workspace.path("plain.parquet")).unwrap();
    let expected = run(&retail_config(&workspace, "plain", "plain.parquet", "", ""));
    let ids_fit = |name: &str, max: i64| {
        let ids = arrow::compute::cast(plain.column_by_name(name).unwrap(), &ArrowType::Int64).unwrap();
        let ids = ids.as_primitive::<arrow::datatypes::Int64Type>();
        ids.iter().all(|id| id.is_some_and(|id| (0..=max).contains(&id)))
    };
    assert!(ids_fit("customer_id", u32::MAX as i64) && ids_fit("order_id", u32::MAX as i64));

    let mut variants = Vec::new();
    let file = |name: &str| workspace.path(name);

    // Decimal money: DECIMAL(18,2) as most warehouses export, DECIMAL(38,9) as Spark sums do.
    write(
        &cast(&plain, "line_amount", ArrowType::Decimal128(18, 2)),
        &file("decimal_18_2.parquet"),
    );
    assert_eq!(
        column_type(&file("decimal_18_2.parquet"), "line_amount"),
        ArrowType::Decimal128(18, 2)
    );
    variants.push(plain_config("decimal_18_2", "decimal_18_2.parquet"));
    write(
        &cast(&plain, "line_amount", ArrowType::Decimal128(38, 9)),
        &file("decimal_38_9.parquet"),
    );
    assert_eq!(
        column_type(&file("decimal_38_9.parquet"), "line_amount"),
        ArrowType::Decimal128(38, 9)
    );
    variants.push(plain_config("decimal_38_9", "decimal_38_9.parquet"));

    // Timestamps in ns and ms, with and without a zone (naive ones are UTC wall-clock time,
    // as the config says); dates are not enough for the sample's same-day orders.
    for (name, unit, zone) in [
        ("ns_utc", ArrowUnit::Nanosecond, Some("UTC")),
        ("ns_naive", ArrowUnit::Nanosecond, None),
        ("ms_utc", ArrowUnit::Millisecond, Some("+00:00")),
        ("ms_naive", ArrowUnit::Millisecond, None),
        ("s_berlin", ArrowUnit::Second, Some("Europe/Berlin")),
    ] {
        let path = format!("{name}.parquet");
        let to = ArrowType::Timestamp(unit, zone.map(Into::into));
        write(&cast(&plain, "created_at", to.clone()), &file(&path));
        assert_eq!(column_type(&file(&path), "created_at"), to);
        variants.push(plain_config(name, &path));
    }

    // Ids: customer_id dictionary-encoded text (as pyarrow writes), order_id u32; customer_id
    // u32, order_id as large text (i16 ids: `narrow_ids_read_like_wide_ones`, the sample's
    // customers do not fit).
    let dictionary = ArrowType::Dictionary(Box::new(ArrowType::Int32), Box::new(ArrowType::Utf8));
    let ids = cast(
        &cast(&plain, "customer_id", ArrowType::Utf8),
        "customer_id",
        dictionary.clone(),
    );
    write(
        &cast(&ids, "order_id", ArrowType::UInt32),
        &file("dictionary_ids.parquet"),
    );
    assert_eq!(column_type(&file("dictionary_ids.parquet"), "customer_id"), dictionary);
    variants.push(plain_config("dictionary_ids", "dictionary_ids.parquet"));
    let unsigned = cast(&plain, "customer_id", ArrowType::UInt32);
    write(
        &cast(&unsigned, "order_id", ArrowType::LargeUtf8),
        &file("u32_ids.parquet"),
    );
    variants.push(plain_config("u32_ids", "u32_ids.parquet"));

    // Categorical ids as polars and pandas write them.
    {
        use polars::prelude::*;
        let mut frame = LazyFrame::scan_parquet(PlRefPath::new(sample_path().to_str().unwrap()), Default::default())
            .unwrap()
            .with_column(
                col("customer_id")
                    .cast(DataType::String)
                    .cast(DataType::from_categories(Categories::global())),
            )
            .collect()
            .unwrap();
        write_parquet(&mut frame, &file("categorical_ids.parquet"));
        assert!(matches!(
            column_type(&file("categorical_ids.parquet"), "customer_id"),
            ArrowType::Dictionary(_, _)
        ));
    }
    variants.push(plain_config("categorical_ids", "categorical_ids.parquet"));

    // Unmapped columns of types the pipeline never reads: decimal, struct, dictionary, list of
    // text, time of day, binary.
    {
        let rows = plain.num_rows();
        let mut exotic = with_column(
            &plain,
            "tax",
            Arc::new(
                Decimal128Array::from((0..rows as i128).collect::<Vec<_>>())
                    .with_precision_and_scale(10, 3)
                    .unwrap(),
            ),
        );
        let region = DictionaryArray::<Int32Type>::from_iter((0..rows).map(|i| ["north", "south"][i % 2]));
        exotic = with_column(&exotic, "region", Arc::new(region));
        let address = StructArray::from(vec![
            (
                Arc::new(Field::new("city", ArrowType::Utf8, true)),
                Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("city {i}")))) as ArrayRef,
            ),
            (
                Arc::new(Field::new("zip", ArrowType::Int32, true)),
                Arc::new(Int32Array::from_iter_values(0..rows as i32)) as ArrayRef,
            ),
        ]);
        exotic = with_column(&exotic, "address", Arc::new(address));
        exotic = with_column(
            &exotic,
            "pickup_time",
            Arc::new(Time64MicrosecondArray::from_iter_values(
                (0..rows as i64).map(|i| i * 1000),
            )),
        );
        exotic = with_column(
            &exotic,
            "payload",
            Arc::new(BinaryArray::from_iter_values((0..rows).map(|i| vec![i as u8; 3]))),
        );
        write(&exotic, &file("exotic_unmapped.parquet"));
    }
    variants.push(plain_config("exotic_unmapped", "exotic_unmapped.parquet"));

    // A Spark output directory: part files, _SUCCESS, _committed_, .crc checksums.
    {
        let rows = plain.num_rows();
        let dir = file("spark");
        for part in 0..3 {
            let (from, to) = (rows * part / 3, rows * (part + 1) / 3);
            let name = format!("part-{part:05}-5f1c2a7e-c000.snappy.parquet");
            write(&plain.slice(from, to - from), &dir.join(&name));
            std::fs::write(dir.join(format!(".{name}.crc")), b"crc bytes").unwrap();
        }
        std::fs::write(dir.join("_SUCCESS"), b"").unwrap();
        std::fs::write(dir.join("_committed_8203"), b"{}").unwrap();
        std::fs::create_dir_all(dir.join("_temporary/0")).unwrap();
        std::fs::write(dir.join("_temporary/0/part-9.parquet"), b"half-written").unwrap();
    }
    variants.push(plain_config("spark_directory", "spark"));

    // Hive folders: year=YYYY/month=M/, read below the directory.
    {
        let created = plain.column_by_name("created_at").unwrap();
        let micros = arrow::compute::cast(created, &ArrowType::Timestamp(ArrowUnit::Microsecond, None)).unwrap();
        let micros = micros.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        let year_of = |row: usize| {
            use chrono::Datelike;
            chrono::DateTime::from_timestamp_micros(micros.value(row))
                .unwrap()
                .year()
        };
        let mut years: Vec<i32> = (0..plain.num_rows()).map(year_of).collect();
        years.sort();
        years.dedup();
        assert!(years.len() >= 2, "the sample spans several years");
        for year in years {
            let mask = BooleanArray::from(
                (0..plain.num_rows())
                    .map(|row| year_of(row) == year)
                    .collect::<Vec<_>>(),
            );
            let part = arrow::compute::filter_record_batch(&plain, &mask).unwrap();
            write(&part, &file(&format!("hive/year={year}/data-0.parquet")));
        }
    }
    variants.push(plain_config("hive_years", "hive"));

    // CSV exports: polars' own (ISO timestamps with an offset), and one with `;`, quoted text,
    // naive timestamps and ids kept as text.
    {
        use polars::prelude::*;
        let mut frame = LazyFrame::scan_parquet(PlRefPath::new(sample_path().to_str().unwrap()), Default::default())
            .unwrap()
            .collect()
            .unwrap();
        CsvWriter::new(File::create(file("export.csv")).unwrap())
            .finish(&mut frame)
            .unwrap();
        let mut naive = frame
            .clone()
            .lazy()
            .with_column(
                col("created_at")
                    .dt()
                    .replace_time_zone(None, lit("raise"), NonExistent::Raise),
            )
            .collect()
            .unwrap();
        CsvWriter::new(File::create(file("export_semicolon.txt")).unwrap())
            .with_separator(b';')
            .with_quote_style(QuoteStyle::NonNumeric)
            .with_datetime_format(Some("%Y-%m-%d %H:%M:%S".into()))
            .finish(&mut naive)
            .unwrap();
        let head = std::fs::read_to_string(file("export_semicolon.txt")).unwrap();
        assert!(
            head.lines().nth(1).unwrap().contains(";\""),
            "text is quoted: {head:.200}"
        );
    }
    variants.push(plain_config("csv", "export.csv"));
    variants.push(Variant {
        name: "csv_semicolon_text_ids".into(),
        path: "export_semicolon.txt".into(),
        extra: "format = \"csv\"\ncsv = { delimiter = \";\", text_ids = true }",
        columns: "",
    });

    // `exclude` in place of `include`, on a column left unmapped, and a currency column.
    {
        let rows = plain.num_rows();
        let status = arrow::compute::cast(plain.column_by_name("status").unwrap(), &ArrowType::Utf8).unwrap();
        let status = status.as_string::<i32>();
        let kept = |row: usize| matches!(status.value(row), "completed" | "shipped");
        let mut filtered = with_column(
            &plain,
            "order_state",
            Arc::new(StringArray::from_iter_values((0..rows).map(|row| {
                if kept(row) {
                    "ok"
                } else {
                    "void"
                }
            }))),
        );
        filtered = with_column(
            &filtered,
            "currency",
            Arc::new(StringArray::from_iter_values((0..rows).map(|_| "EUR"))),
        );
        write(&filtered, &file("exclude_currency.parquet"));
    }
    variants.push(Variant {
        name: "exclude_unmapped_and_currency".into(),
        path: "exclude_currency.parquet".into(),
        extra: "exclude = { order_state = [\"void\"] }",
        columns: "currency = \"currency\"",
    });

    for variant in &variants {
        let mut config = retail_config(&workspace, &variant.name, &variant.path, variant.extra, variant.columns);
        if variant.name == "exclude_unmapped_and_currency" {
            let text = std::fs::read_to_string(&config)
                .unwrap()
                .replace("include = { status = [\"completed\", \"shipped\"] }\n", "");
            config = workspace.write(&format!("{}.toml", variant.name), &text);
        }
        let out = run(&config);
        assert_same_tables(&expected, &out, &variant.name);
        let manifest = manifest(&out);
        let input = &manifest["inputs"][0];
        assert_eq!(
            input["orders"],
            crate::common::manifest(&expected)["inputs"][0]["orders"],
            "{}",
            variant.name
        );
        if variant.name == "exclude_unmapped_and_currency" {
            assert_eq!(input["currency"], "EUR");
            // The single currency is also in every table's file metadata.
            assert_eq!(file_metadata(&out.join("customer_facts.parquet"))["currency"], "EUR");
        }
        if variant.name == "spark_directory" {
            assert_eq!(
                input["files"].as_array().unwrap().len(),
                3,
                "only the part files are read"
            );
        }
    }
}

/// Repeated lines (the same order_id and line) count once when `line` is mapped, wherever the
/// copies are: in the same batch, in another file, far apart; memory for them follows orders.
#[test]
fn repeated_lines_count_once_across_files() {
    let workspace = Workspace::new();
    let plain = sample();
    std::fs::copy(sample_path(), workspace.path("plain.parquet")).unwrap();
    let expected = run(&retail_config(&workspace, "plain", "plain.parquet", "", ""));
    let rows = plain.num_rows();
    // Every 7th line again in a second file, and the first 1,000 lines again in a third.
    let every_seventh = BooleanArray::from((0..rows).map(|row| row % 7 == 3).collect::<Vec<_>>());
    let repeats = arrow::compute::filter_record_batch(&plain, &every_seventh).unwrap();
    write(&plain, &workspace.path("lines/a.parquet"));
    write(&repeats, &workspace.path("lines/b.parquet"));
    write(&plain.slice(0, 1000), &workspace.path("lines/c.parquet"));
    let config = retail_config(&workspace, "repeated", "lines", "", "line = \"line\"");
    let out = run(&config);
    assert_same_tables(&expected, &out, "repeated lines");
    let input = &manifest(&out)["inputs"][0];
    let include = arrow::compute::cast(plain.column_by_name("status").unwrap(), &ArrowType::Utf8).unwrap();
    let include = include.as_string::<i32>();
    let used = |row: usize| matches!(include.value(row), "completed" | "shipped");
    // Repeats of usable lines are counted; repeats of excluded lines are counted as excluded.
    let repeated_used =
        (0..rows).filter(|&row| row % 7 == 3 && used(row)).count() + (0..1000).filter(|&row| used(row)).count();
    assert_eq!(input["duplicate_lines"], repeated_used as u64);
    assert_eq!(input["rows_read"], (rows + repeats.num_rows() + 1000) as u64);
}

/// i16 and u8 ids (the tiny fixture's fit) give the tables of i64 ones.
#[test]
fn narrow_ids_read_like_wide_ones() {
    use polars::prelude::*;
    const STAGES: &str = "[stages.facts]\nkind = \"customer_facts\"\ninput = \"orders\"\n\n[stages.rfm]\nkind = \"rfm\"\ninput = \"orders\"\n";
    let plain = Workspace::with_tiny();
    let expected = run(&plain.config("", STAGES));
    for (customer, order) in [(DataType::Int16, DataType::Int16), (DataType::UInt8, DataType::UInt16)] {
        let workspace = Workspace::new();
        let mut frame = lines_frame(TINY)
            .lazy()
            .with_columns([
                col("customer_id").strict_cast(customer.clone()),
                col("order_id").strict_cast(order.clone()),
            ])
            .collect()
            .unwrap();
        write_parquet(&mut frame, &workspace.path("lines.parquet"));
        let out = run(&workspace.config("", STAGES));
        assert_same_tables(&expected, &out, &format!("{customer} ids"));
        assert_eq!(
            column_type(&out.join("facts.parquet"), "customer_id"),
            match customer {
                DataType::Int16 => ArrowType::Int16,
                _ => ArrowType::UInt8,
            },
            "ids keep their type"
        );
    }
}

/// Dates (date32, and date64 as arrow-rs writes it) give the tables of the timestamps they are
/// the UTC dates of, on the tiny fixture (UTC; its same-day orders tie-break to the same
/// channel by name as by time).
#[test]
fn dates_read_like_the_timestamps_they_are_the_days_of() {
    const STAGES: &str = "[stages.facts]\nkind = \"customer_facts\"\ninput = \"orders\"\n\n[stages.cohorts]\nkind = \"cohort_retention\"\ninput = \"orders\"\ndimensions = [\"acquisition_channel\"]\n";
    let plain = Workspace::with_tiny();
    let expected = run(&plain.config("", STAGES));
    let tiny = {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(plain.path("lines.parquet")).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
    };
    for date in [ArrowType::Date32, ArrowType::Date64] {
        let workspace = Workspace::new();
        let dated = cast(
            &cast(&tiny, "created_at", ArrowType::Timestamp(ArrowUnit::Millisecond, None)),
            "created_at",
            date.clone(),
        );
        write(&dated, &workspace.path("lines.parquet"));
        assert_eq!(column_type(&workspace.path("lines.parquet"), "created_at"), date);
        let out = run(&workspace.config("", STAGES));
        assert_same_tables(&expected, &out, &format!("{date}"));
    }
}
