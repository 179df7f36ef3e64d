//! `pipeline generate-sample`: synthetic order lines with BG/NBD-like repeat behaviour.
//!
//! Each customer draws a purchase rate λ ~ Gamma(0.75, 1/30 per day), a dropout probability
//! p ~ Beta(0.7, 2.4) applied after every purchase, and a spend scale ν ~ Gamma(4, 1/40) with
//! order values ~ Gamma(6, 1/ν) (Gamma-Gamma). Acquisition skews towards later dates (growth).
//! Orders split into 1–6 lines; a few carry a return line (negative amount), a few are later
//! refund orders, and statuses include cancelled/returned lines that an `include` filter drops.
//! Customers are generated in chunks seeded by (seed, chunk), in parallel, and written in chunk
//! order, so the file is the same for the same seed whatever the thread count.

use std::path::Path;

use anyhow::{Context, Result};
use chrono::NaiveDate;
use polars::prelude::*;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::{Beta, Distribution, Exp, Gamma};
use rayon::prelude::*;

use crate::cli::GenerateArgs;
use crate::core::period::to_days;

const CUSTOMERS_PER_CHUNK: usize = 20_000;
const CHANNELS: &[(&str, f64)] = &[("web", 0.5), ("app", 0.3), ("store", 0.15), ("marketplace", 0.05)];
const MICROS_PER_DAY: i64 = 86_400_000_000;

#[derive(Default)]
struct Lines {
    order_id: Vec<i64>,
    line: Vec<i32>,
    customer_id: Vec<i64>,
    created_at: Vec<i64>,
    sku: Vec<String>,
    quantity: Vec<i32>,
    unit_price: Vec<f64>,
    line_amount: Vec<f64>,
    cost: Vec<f64>,
    status: Vec<&'static str>,
    channel: Vec<&'static str>,
}

impl Lines {
    fn len(&self) -> usize {
        self.order_id.len()
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        order: i64,
        line: i32,
        customer: i64,
        at: i64,
        sku: u32,
        quantity: i32,
        unit_price: f64,
        status: &'static str,
        channel: &'static str,
    ) {
        self.order_id.push(order);
        self.line.push(line);
        self.customer_id.push(customer);
        self.created_at.push(at);
        self.sku.push(format!("SKU-{sku:05}"));
        self.quantity.push(quantity);
        self.unit_price.push(unit_price);
        let amount = round_cents(unit_price * quantity as f64);
        self.line_amount.push(amount);
        self.cost.push(round_cents(amount * cost_ratio(sku)));
        self.status.push(status);
        self.channel.push(channel);
    }

    fn into_frame(self) -> Result<DataFrame> {
        let created_at = Column::new("created_at".into(), self.created_at).cast(&DataType::Datetime(
            TimeUnit::Microseconds,
            Some(polars::prelude::TimeZone::UTC),
        ))?;
        let frame = DataFrame::new_infer_height(vec![
            Column::new("order_id".into(), self.order_id),
            Column::new("line".into(), self.line),
            Column::new("customer_id".into(), self.customer_id),
            created_at,
            Column::new("sku".into(), self.sku),
            Column::new("quantity".into(), self.quantity),
            Column::new("unit_price".into(), self.unit_price),
            Column::new("line_amount".into(), self.line_amount),
            Column::new("cost".into(), self.cost),
            Column::new(
                "status".into(),
                self.status.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            ),
            Column::new(
                "channel".into(),
                self.channel.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            ),
        ])?;
        Ok(frame)
    }
}

/// A line's cost (goods, shipping, fees) as a share of its amount: 45–75 % by SKU, without a
/// random draw, so adding the column left the other columns of a seed unchanged.
fn cost_ratio(sku: u32) -> f64 {
    0.45 + 0.30 * f64::from(sku.wrapping_mul(2_654_435_761) % 1000) / 1000.0
}

fn round_cents(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn pick_channel(rng: &mut Xoshiro256PlusPlus) -> &'static str {
    let mut u: f64 = rng.random();
    for (name, weight) in CHANNELS {
        if u < *weight {
            return name;
        }
        u -= weight;
    }
    CHANNELS[0].0
}

/// Lines of the customers of one chunk; order ids are made unique by the chunk number.
fn chunk_lines(seed: u64, chunk: usize, start: NaiveDate, days: u32) -> Result<Lines> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ (chunk as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let rate = Gamma::new(0.75, 1.0 / 30.0)?;
    let dropout = Beta::new(0.7, 2.4)?;
    let spend_scale = Gamma::new(4.0, 1.0 / 40.0)?;
    let start_micros = to_days(start) as i64 * MICROS_PER_DAY;
    let horizon = days as f64;
    let mut lines = Lines::default();
    let mut order_seq: i64 = 0;
    for index in 0..CUSTOMERS_PER_CHUNK {
        let customer = 100_000 + (chunk * CUSTOMERS_PER_CHUNK + index) as i64;
        let lambda: f64 = Distribution::<f64>::sample(&rate, &mut rng).max(1e-4);
        let p: f64 = dropout.sample(&mut rng);
        let nu: f64 = Distribution::<f64>::sample(&spend_scale, &mut rng).max(1e-3);
        let order_value = Gamma::new(6.0, 1.0 / nu)?;
        let gap = Exp::new(lambda)?;
        let preferred = pick_channel(&mut rng);
        let mut t = horizon * rng.random::<f64>().powf(0.8);
        loop {
            order_seq += 1;
            let order_id = (chunk as i64) * 100_000_000 + order_seq;
            let at = start_micros + (t * MICROS_PER_DAY as f64) as i64;
            let channel = if rng.random::<f64>() < 0.85 {
                preferred
            } else {
                pick_channel(&mut rng)
            };
            let status: &'static str = match rng.random::<f64>() {
                u if u < 0.93 => "completed",
                u if u < 0.96 => "shipped",
                u if u < 0.985 => "cancelled",
                _ => "returned",
            };
            let value: f64 = Distribution::<f64>::sample(&order_value, &mut rng).clamp(1.0, 5_000.0);
            let n_lines = 1 + (rng.random::<f64>() * rng.random::<f64>() * 6.0) as i32;
            let mut weights: Vec<f64> = (0..n_lines).map(|_| 0.2 + rng.random::<f64>()).collect();
            let total: f64 = weights.iter().sum();
            weights.iter_mut().for_each(|w| *w /= total);
            for (number, weight) in weights.iter().enumerate() {
                let quantity = 1 + (rng.random::<f64>() * rng.random::<f64>() * 3.0) as i32;
                let unit_price = round_cents((value * weight / quantity as f64).max(0.5));
                let sku = rng.random_range(0..20_000u32);
                // Lines of one order are seconds apart.
                lines.push(
                    order_id,
                    number as i32 + 1,
                    customer,
                    at + number as i64 * 1_000_000,
                    sku,
                    quantity,
                    unit_price,
                    status,
                    channel,
                );
            }
            if rng.random::<f64>() < 0.03 {
                // A returned item inside the order nets against its revenue.
                let unit_price = round_cents(-value * 0.3);
                lines.push(
                    order_id,
                    n_lines + 1,
                    customer,
                    at + 60_000_000,
                    0,
                    1,
                    unit_price,
                    status,
                    channel,
                );
            }
            if rng.random::<f64>() < 0.005 {
                // A later refund order: negative revenue, not a purchase.
                order_seq += 1;
                let refund_id = (chunk as i64) * 100_000_000 + order_seq;
                let refund_at = at + (rng.random::<f64>() * 20.0 * MICROS_PER_DAY as f64) as i64;
                lines.push(
                    refund_id,
                    1,
                    customer,
                    refund_at,
                    0,
                    1,
                    round_cents(-value * 0.5),
                    "completed",
                    channel,
                );
            }
            if rng.random::<f64>() < p {
                break;
            }
            t += gap.sample(&mut rng);
            if t >= horizon {
                break;
            }
        }
    }
    Ok(lines)
}

/// Write about `args.lines` lines to `args.out` (and survey answers to `args.survey`); returns a
/// summary.
pub fn generate(args: &GenerateArgs) -> Result<String> {
    let mut summary = generate_to(&args.out, args.lines, args.seed, args.start, args.days)?;
    if let Some(survey) = &args.survey {
        summary.push('\n');
        summary.push_str(&survey_answers(&args.out, survey, args.seed)?);
    }
    if let Some(spend) = &args.spend {
        summary.push('\n');
        summary.push_str(&marketing_spend(&args.out, spend, args.seed)?);
    }
    Ok(summary)
}

/// What acquiring a customer costs per channel (currency units), and the brand spend per day
/// no channel is credited with. `marketplace` buys customers dearer than they ever pay back.
const CAC_BY_CHANNEL: &[(&str, f64)] = &[("web", 18.0), ("app", 32.0), ("store", 6.0), ("marketplace", 240.0)];
const BRAND_SPEND_PER_DAY: f64 = 40.0;

/// Daily marketing spend per channel for the lines in `lines`: each channel's spend follows the
/// customers it acquires (first orders by local day and channel) at its own cost per customer,
/// with day-to-day noise, plus unattributed brand spend (null channel) every day and a credit
/// (negative spend) from the marketplace on the first of each quarter. Decimal(12, 2) amounts;
/// deterministic by `seed`.
fn marketing_spend(lines: &Path, out: &Path, seed: u64) -> Result<String> {
    let path = PlRefPath::new(lines.to_string_lossy().as_ref());
    let firsts = LazyFrame::scan_parquet(path, ScanArgsParquet::default())?
        .filter(col("status").eq(lit("completed")).or(col("status").eq(lit("shipped"))))
        .sort(["created_at"], SortMultipleOptions::default())
        .group_by([col("customer_id")])
        .agg([
            col("created_at").first().alias("first"),
            col("channel").first().alias("channel"),
        ])
        .group_by([col("first").dt().date().alias("date"), col("channel")])
        .agg([len().alias("new_customers")])
        .sort(["date", "channel"], SortMultipleOptions::default())
        .collect()?;
    let dates = firsts.column("date")?.date()?.physical().clone();
    let channels = firsts.column("channel")?.str()?.clone();
    let counts = firsts.column("new_customers")?.cast(&DataType::Int64)?;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5BE0_D5BE);
    let (mut day, mut channel, mut cents) = (Vec::new(), Vec::new(), Vec::new());
    let rows = dates.iter().zip(channels.iter()).zip(counts.i64()?.iter());
    for ((date, name), count) in rows {
        let (Some(date), Some(name), Some(count)) = (date, name, count) else {
            continue;
        };
        let cac = CAC_BY_CHANNEL
            .iter()
            .find(|(c, _)| *c == name)
            .map_or(20.0, |(_, cac)| *cac);
        let noise: f64 = rng.random_range(0.8..1.2);
        day.push(date);
        channel.push(Some(name.to_string()));
        cents.push((cac * count as f64 * noise * 100.0).round() as i128);
    }
    let (first, last) = (dates.min().unwrap_or(0), dates.max().unwrap_or(0));
    for date in first..=last {
        let noise: f64 = rng.random_range(0.5..1.5);
        day.push(date);
        channel.push(None);
        cents.push((BRAND_SPEND_PER_DAY * noise * 100.0).round() as i128);
        let calendar = crate::core::period::from_days(date);
        if chrono::Datelike::day(&calendar) == 1 && chrono::Datelike::month0(&calendar) % 3 == 0 {
            day.push(date);
            channel.push(Some("marketplace".to_string()));
            cents.push(-rng.random_range(10_000..50_000));
        }
    }
    let rows = day.len();
    let amount = Int128Chunked::from_vec("amount".into(), cents).into_decimal_unchecked(12, 2);
    let mut frame = DataFrame::new_infer_height(vec![
        Column::new("date".into(), day).cast(&DataType::Date)?,
        Column::new("channel".into(), channel),
        amount.into_series().into_column(),
    ])?;
    frame.sort_in_place(["date"], SortMultipleOptions::default().with_maintain_order(true))?;
    let file = std::fs::File::create(out).with_context(|| format!("cannot create `{}`", out.display()))?;
    ParquetWriter::new(file).finish(&mut frame)?;
    Ok(format!("wrote {rows} marketing spend rows to {}", out.display()))
}

/// Survey answers for the customers of the lines in `lines`: a third of the buyers answer once
/// or twice, within 60 days after their first order, and their scores rise with the orders they
/// place in all (promoters buy more); 100 people who never bought answer too. Deterministic by
/// `seed`.
fn survey_answers(lines: &Path, out: &Path, seed: u64) -> Result<String> {
    let path = PlRefPath::new(lines.to_string_lossy().as_ref());
    let customers = LazyFrame::scan_parquet(path, ScanArgsParquet::default())?
        .filter(col("status").eq(lit("completed")).or(col("status").eq(lit("shipped"))))
        .group_by([col("customer_id")])
        .agg([
            col("created_at").min().alias("first"),
            col("order_id").n_unique().alias("orders"),
        ])
        .sort(["customer_id"], SortMultipleOptions::default())
        .collect()?;
    let ids = customers.column("customer_id")?.i64()?.clone();
    let first = customers.column("first")?.cast(&DataType::Int64)?;
    let orders = customers.column("orders")?.cast(&DataType::Int64)?;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5EED_5A11);
    let (mut answer_ids, mut answer_at, mut scores) = (Vec::new(), Vec::new(), Vec::new());
    let mut answer = |rng: &mut Xoshiro256PlusPlus, id: i64, at: i64, orders: i64| {
        let noise: f64 = rng.random_range(-2.5..2.5);
        let score = (4.0 + 1.6 * (orders as f64).ln() + noise).round().clamp(0.0, 10.0) as i64;
        answer_ids.push(id);
        answer_at.push(at + rng.random_range(0..60 * MICROS_PER_DAY));
        scores.push(score);
    };
    let rows = ids.iter().zip(first.i64()?.iter()).zip(orders.i64()?.iter());
    for ((id, first), orders) in rows {
        let (Some(id), Some(first), Some(orders)) = (id, first, orders) else {
            continue;
        };
        if rng.random_range(0..3) == 0 {
            answer(&mut rng, id, first, orders);
            if rng.random_range(0..4) == 0 {
                answer(&mut rng, id, first + 30 * MICROS_PER_DAY, orders);
            }
        }
    }
    let (last_id, last_first) = (ids.max().unwrap_or(0), first.i64()?.max().unwrap_or(0));
    for n in 1..=100 {
        answer(&mut rng, last_id + n, last_first - n * MICROS_PER_DAY, 1);
    }
    let answers = answer_ids.len();
    let mut frame = df!(
        "customer_id" => answer_ids,
        "responded_at" => answer_at,
        "score" => scores,
    )?;
    frame.with_column(
        frame
            .column("responded_at")?
            .cast(&DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC)))?,
    )?;
    frame.sort_in_place(["responded_at"], SortMultipleOptions::default())?;
    let file = std::fs::File::create(out).with_context(|| format!("cannot create `{}`", out.display()))?;
    ParquetWriter::new(file).finish(&mut frame)?;
    Ok(format!("wrote {answers} survey answers to {}", out.display()))
}

pub fn generate_to(out: &Path, target_lines: u64, seed: u64, start: NaiveDate, days: u32) -> Result<String> {
    if let Some(parent) = out.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create `{}`", parent.display()))?;
        }
    }
    let temp = out.with_extension("parquet.partial");
    let file = std::fs::File::create(&temp).with_context(|| format!("cannot create `{}`", temp.display()))?;
    let mut writer: Option<polars::io::parquet::write::BatchedWriter<std::fs::File>> = None;
    let mut written: u64 = 0;
    let mut customers: u64 = 0;
    let mut next_chunk = 0usize;
    let parallel = rayon::current_num_threads().max(1);
    let mut file = Some(file);
    'outer: while written < target_lines {
        let batch: Vec<Result<Lines>> = (next_chunk..next_chunk + parallel)
            .into_par_iter()
            .map(|chunk| chunk_lines(seed, chunk, start, days))
            .collect();
        next_chunk += parallel;
        for lines in batch {
            let lines = lines?;
            let mut keep = lines.len();
            let mut frame_customers = CUSTOMERS_PER_CHUNK as u64;
            if written + keep as u64 > target_lines {
                // Cut at a customer boundary at or after the target.
                let need = (target_lines - written) as usize;
                let cut_customer = lines.customer_id[need - 1];
                keep = lines
                    .customer_id
                    .iter()
                    .position(|c| *c > cut_customer)
                    .unwrap_or(lines.len());
                frame_customers = (cut_customer - lines.customer_id[0] + 1) as u64;
            }
            let mut frame = lines.into_frame()?.slice(0, keep);
            frame = frame.sort(["created_at"], SortMultipleOptions::default())?;
            if writer.is_none() {
                let target = file.take().expect("the file is taken once");
                writer = Some(
                    ParquetWriter::new(target)
                        .with_compression(ParquetCompression::Zstd(None))
                        .with_row_group_size(Some(1 << 20))
                        .batched(frame.schema())?,
                );
            }
            writer.as_mut().expect("writer was just created").write_batch(&frame)?;
            written += keep as u64;
            customers += frame_customers;
            if written >= target_lines {
                break 'outer;
            }
        }
    }
    if let Some(writer) = writer {
        writer.finish()?;
    }
    std::fs::rename(&temp, out).with_context(|| format!("cannot move `{}` to `{}`", temp.display(), out.display()))?;
    Ok(format!(
        "wrote {written} lines of {customers} customers to {}",
        out.display()
    ))
}
