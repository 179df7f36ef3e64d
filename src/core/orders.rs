//! Order lines → orders: the one hot row loop of a run.
//!
//! Polars' streaming engine reads the lines (keys, time in µs, amount as Float64, the include
//! filter's mask); the batches it yields are folded here into one record per order, each line's
//! reason code (`line_reasons`) and amount in integer micro-units computed on the way. A
//! polars group-by on string `order_id` kept ~330 bytes of state per order (string
//! min/max/min_by states, row-encoded keys), so a 200M-line file did not fit in 24 GiB; this
//! fold keeps ~40 to ~80: columns of plain integers, and for text ids a hash-table entry.
//!
//! Cache misses in tables are the cost per line, so the loop avoids lookups: a run of lines
//! with one order_id (lines of an order usually come together) is folded as one. Integer order
//! ids are not looked up in a table: every run starts an order, and a run repeating an earlier
//! run's id is merged into it later. While the ids fit bitmaps of 2^16-id pages (dense ids, or
//! clusters of them: ~a bit per id), a run learns from its bit whether its id came before, and
//! a merge finds the first runs of the few repeated ids in one pass (no sort). Sparse ids (random or
//! time-based 64-bit ones) are sorted instead: whenever the runs held reach twice the orders
//! left by the last merge (and at the end), so memory follows orders, not lines, a merge sorts
//! the runs since the last one, in parallel, and walks them beside the last merge's sorted
//! (id, order) list: sequential memory traffic instead of a cache miss per run. Integer customer ids are stored per order and
//! numbered at the end (text ids are interned); a channel name short enough to sit whole in
//! its view is found among the views seen without hashing.
//!
//! Orders are split into shards by key hash, one per thread: every shard reads every batch but
//! folds only its own orders (text ids in its own interner, integer runs in its own columns,
//! merged on its own thread), so shards never share state; `finish` joins them (the shards'
//! orders one after another) and numbers customers and channels across all.
//!
//! Rules (DESIGN.md, "An order"): only usable lines (reason 0) form orders; an order's revenue is
//! the sum of its lines, its time the earliest line time, its channel the channel of the lines at
//! that time (the smallest name when they differ, null only when all are null); an order whose
//! lines name different customers is flagged so the caller rejects it whole.

use std::cmp::Ordering;

use hashbrown::HashTable;
use polars::prelude::*;

/// Reason codes the fold computes per line (`line_reasons`) are `0..REASONS`; 0 is usable.
pub const REASONS: usize = 9;
pub const EXCLUDED_BY_INCLUDE: u8 = 1;
const NULL_CUSTOMER_ID: u8 = 2;
const NULL_ORDER_ID: u8 = 3;
const NULL_ORDERED_AT: u8 = 4;
const NULL_AMOUNT: u8 = 5;
const AFTER_AS_OF: u8 = 6;
const INVALID_AMOUNT: u8 = 7;
const INVALID_COST: u8 = 8;
/// Why a line is not part of an order: each code's name in the manifest, in the order the
/// reasons are tested.
pub const LINE_REASONS: &[(u8, &str)] = &[
    (EXCLUDED_BY_INCLUDE, "excluded_by_include"),
    (NULL_CUSTOMER_ID, "null_customer_id"),
    (NULL_ORDER_ID, "null_order_id"),
    (NULL_ORDERED_AT, "null_ordered_at"),
    (NULL_AMOUNT, "null_amount"),
    (INVALID_AMOUNT, "invalid_amount"),
    (INVALID_COST, "invalid_cost"),
    (AFTER_AS_OF, "after_as_of"),
];
/// Channel code of "no channel".
pub const NO_CHANNEL: u32 = u32::MAX;

type TextArray = <StringType as PolarsDataType>::Array;
type BoolArray = <BooleanType as PolarsDataType>::Array;

/// Distinct byte strings with dense ids in first-seen order: one arena, and per key one table
/// entry holding its id and 32 bits of its hash, so growing the table and skipping a colliding
/// entry never touch the arena.
#[derive(Default)]
struct Interner {
    table: HashTable<(u32, u32)>,
    bytes: Vec<u8>,
    ends: Vec<u64>,
}

fn hash_bytes(key: &[u8]) -> u32 {
    use std::hash::BuildHasher;
    (foldhash::fast::FixedState::with_seed(0x5eed).hash_one(key) >> 32) as u32
}

/// Key `id` of an arena: its bytes end at `ends[id]` and start where key `id - 1` ends.
fn arena_key<'a>(bytes: &'a [u8], ends: &[u64], id: u32) -> &'a [u8] {
    let end = ends[id as usize] as usize;
    let start = if id == 0 { 0 } else { ends[id as usize - 1] as usize };
    &bytes[start..end]
}

/// The table's 64-bit hash from the stored 32 bits: a multiply spreads them into the top bits,
/// which hashbrown uses as its 7-bit tag.
fn spread(hash: u32) -> u64 {
    u64::from(hash).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Interner {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn key(&self, id: u32) -> &[u8] {
        arena_key(&self.bytes, &self.ends, id)
    }

    /// The id of `key` and whether it was new.
    fn intern(&mut self, key: &[u8]) -> (u32, bool) {
        self.intern_hashed(key, hash_bytes(key))
    }

    /// `intern` with the key's `hash_bytes` already computed.
    fn intern_hashed(&mut self, key: &[u8], hash: u32) -> (u32, bool) {
        let Self { table, bytes, ends } = self;
        let matches = |&(id, tag): &(u32, u32)| tag == hash && arena_key(bytes, ends, id) == key;
        if let Some(&(id, _)) = table.find(spread(hash), matches) {
            return (id, false);
        }
        let id = u32::try_from(ends.len()).expect("fewer than 2^32 distinct keys");
        table.insert_unique(spread(hash), (id, hash), |&(_, tag)| spread(tag));
        bytes.extend_from_slice(key);
        ends.push(bytes.len() as u64);
        (id, true)
    }
}

/// The distinct keys of several interners as one sorted text Series, and for each interner
/// each of its ids' position in it.
fn sorted_keys(interners: &[&Interner]) -> PolarsResult<(Series, Vec<Vec<u32>>)> {
    let texts: StringChunked = interners
        .iter()
        .flat_map(|keys| (0..keys.len() as u32).map(move |id| keys.key(id)))
        .map(|key| Some(std::str::from_utf8(key).expect("keys come from text columns")))
        .collect();
    let values = texts.into_series();
    let order = values.arg_sort(SortOptions::default().with_multithreaded(true));
    let strings = values.str()?;
    let mut rank = vec![0u32; values.len()];
    let mut distinct: Vec<IdxSize> = Vec::new();
    for position in order.into_no_null_iter() {
        let fresh = distinct
            .last()
            .is_none_or(|&last| strings.get(last as usize) != strings.get(position as usize));
        if fresh {
            distinct.push(position);
        }
        rank[position as usize] = (distinct.len() - 1) as u32;
    }
    let sorted = values.take(&IdxCa::from_vec("".into(), distinct))?;
    let mut ranks = Vec::with_capacity(interners.len());
    let mut start = 0;
    for keys in interners {
        ranks.push(rank[start..start + keys.len()].to_vec());
        start += keys.len();
    }
    Ok((sorted, ranks))
}

/// A key column of one (rechunked) batch: text, or integers (cast to Int64 by the scan).
#[derive(Clone, Copy)]
enum KeyColumn<'a> {
    Text(&'a TextArray),
    Int(&'a [i64]),
}

impl<'a> KeyColumn<'a> {
    fn of(column: &'a Column) -> PolarsResult<Self> {
        Ok(match column.dtype() {
            DataType::String => KeyColumn::Text(column.str()?.downcast_as_array()),
            _ => KeyColumn::Int(column.i64()?.downcast_as_array().values().as_slice()),
        })
    }

    /// Whether two non-null rows (usable lines never have null keys) hold the same key.
    #[inline]
    fn same(self, a: usize, b: usize) -> bool {
        match self {
            KeyColumn::Text(values) => values.value(a) == values.value(b),
            KeyColumn::Int(values) => values[a] == values[b],
        }
    }
}

/// Distinct order ids: text ids interned as they come; integer ids stored per run of lines,
/// repeated ones merged by `Shard::merge_repeated_orders` (a sort, not a lookup per run).
enum OrderKeys {
    Text(Interner),
    Runs(Runs),
    /// Integer ids looked up per run: used when `line` is mapped, so a run finds its order at
    /// once and its lines are checked against the lines the order has.
    Lookup(IdIndex),
}

/// Integer order ids, in one of two modes.
///
/// While the ids seen fit the bitmaps of their 2^16-id pages (`seen`; ids of one table are
/// usually dense, or clusters of dense ids; never more than `BITMAP_BITS` bits or 64 per run
/// held), a run learns whether its id is new by its bit: `fresh` holds the id of every order and run, `repeats` the runs
/// whose id came before, and a merge finds those ids' first runs in one pass (no sort).
///
/// Otherwise (sparse ids such as random or time-based 64-bit ones, or after the bitmap grew
/// too wide): orders `0..sorted.len()` are merged (their ids distinct, in `sorted`), the runs
/// after them are `fresh`, one order each until the next merge sorts them.
struct Runs {
    /// (id, order) of the merged orders, by id (sort mode).
    sorted: Vec<(i64, u32)>,
    /// The id of each run since the last merge (sort mode), of every order and run (bitmap).
    fresh: Vec<i64>,
    /// Sort mode: merge when this many orders and runs are held, never fewer than
    /// `merge_floor` (`FIRST_MERGE`; small in tests). Bitmap mode: merge when the repeating
    /// runs are at least the other orders and `merge_floor`.
    merge_at: usize,
    merge_floor: usize,
    seen: Option<SeenIds>,
    /// Bits `seen` may always use (`BITMAP_BITS`; small in tests), or 64 per run held.
    bitmap_bits: u64,
    /// The runs (positions in `fresh`) repeating an earlier run's id, since the last merge.
    repeats: Vec<u32>,
}

impl Default for Runs {
    fn default() -> Self {
        Runs {
            sorted: Vec::new(),
            fresh: Vec::new(),
            merge_at: FIRST_MERGE,
            merge_floor: FIRST_MERGE,
            seen: Some(SeenIds::default()),
            bitmap_bits: BITMAP_BITS,
            repeats: Vec::new(),
        }
    }
}

impl Runs {
    fn held(&self) -> usize {
        self.sorted.len() + self.fresh.len()
    }

    /// A run of lines with order id `id` starts.
    fn push(&mut self, id: i64) {
        let run = self.held();
        if let Some(seen) = &mut self.seen {
            let limit = self.bitmap_bits.max(64 * run as u64);
            match seen.insert(id, limit) {
                Some(true) => {}
                Some(false) => self.repeats.push(u32::try_from(run).expect("fewer than 2^32 runs")),
                None => {
                    // Too sparse for a bitmap: from here on in sort mode, every run held so far
                    // fresh (the orders merged so far are distinct, the repeats since are in
                    // `fresh` and found by the next merge's sort).
                    self.seen = None;
                    self.repeats = Vec::new();
                }
            }
        }
        self.fresh.push(id);
    }

    fn should_merge(&self) -> bool {
        match self.seen {
            Some(_) => {
                let repeats = self.repeats.len();
                repeats >= self.merge_floor.max(self.fresh.len() - repeats)
            }
            None => self.held() >= self.merge_at,
        }
    }
}

/// Integer order id → order number, in one of two modes. While the ids fit pages of 2^16 ids
/// (dense ids, or clusters of them; at most `slot_limit` slots), each page holds the order
/// number + 1 of each of its ids (0: none yet): a lookup is an index, and ids in file order
/// mostly hit the page before. Otherwise (sparse ids) a hash table holds the order numbers and
/// `ids` each order's id; the pages move into it when they outgrow their limit.
pub(crate) struct IdIndex {
    pages: hashbrown::HashMap<i64, usize, foldhash::fast::FixedState>,
    slots: Vec<Box<[u32]>>,
    last: Option<(i64, usize)>,
    sparse: Option<(HashTable<u32>, Vec<i64>)>,
    orders: u32,
    /// Slots the pages may always use (`DENSE_SLOTS`), or 16 per order held.
    slot_limit: usize,
}

/// Slots (4 bytes each) an `IdIndex` may always use in pages: 256 MiB.
const DENSE_SLOTS: usize = 1 << 26;

impl Default for IdIndex {
    fn default() -> Self {
        IdIndex {
            pages: Default::default(),
            slots: Vec::new(),
            last: None,
            sparse: None,
            orders: 0,
            slot_limit: DENSE_SLOTS,
        }
    }
}

impl IdIndex {
    /// The order of `id` (whose `int_key_hash` is `hash`) and whether it is new.
    fn intern(&mut self, id: i64, hash: u64) -> (u32, bool) {
        if let Some((table, ids)) = &mut self.sparse {
            if let Some(&order) = table.find(hash, |&order| ids[order as usize] == id) {
                return (order, false);
            }
            let order = self.orders;
            table.insert_unique(hash, order, |&order| int_key_hash(ids[order as usize]));
            ids.push(id);
            self.orders += 1;
            return (order, true);
        }
        let page = id >> PAGE_BITS;
        let index = match self.last {
            Some((last, index)) if last == page => index,
            _ => match self.pages.get(&page) {
                Some(&index) => index,
                None => {
                    let held = (self.slots.len() + 1) << PAGE_BITS;
                    if held > self.slot_limit.max(16 * self.orders as usize) {
                        self.become_sparse();
                        return self.intern(id, hash);
                    }
                    self.slots.push(vec![0u32; 1 << PAGE_BITS].into_boxed_slice());
                    self.pages.insert(page, self.slots.len() - 1);
                    self.slots.len() - 1
                }
            },
        };
        self.last = Some((page, index));
        let slot = &mut self.slots[index][(id & ((1 << PAGE_BITS) - 1)) as usize];
        if *slot != 0 {
            return (*slot - 1, false);
        }
        let order = self.orders;
        *slot = order.checked_add(1).expect("fewer than 2^32 - 1 orders");
        self.orders += 1;
        (order, true)
    }

    /// Move the pages into the hash table (ids too sparse for pages).
    fn become_sparse(&mut self) {
        let mut ids = vec![0i64; self.orders as usize];
        for (&page, &index) in &self.pages {
            for (offset, &slot) in self.slots[index].iter().enumerate() {
                if slot != 0 {
                    ids[slot as usize - 1] = (page << PAGE_BITS) | offset as i64;
                }
            }
        }
        let mut table = HashTable::with_capacity(ids.len());
        for (order, &id) in ids.iter().enumerate() {
            table.insert_unique(int_key_hash(id), order as u32, |&order| {
                int_key_hash(ids[order as usize])
            });
        }
        self.pages = Default::default();
        self.slots = Vec::new();
        self.last = None;
        self.sparse = Some((table, ids));
    }

    /// Room for `more` orders in the hash table (pages need none).
    fn reserve(&mut self, more: usize) {
        if let Some((table, ids)) = &mut self.sparse {
            let _ = ids.try_reserve(more);
            let ids = &*ids;
            let _ = table.try_reserve(more, |&order| int_key_hash(ids[order as usize]));
        }
    }
}

/// A set of integer ids as bitmaps of the 2^16-id pages they fall in: dense ids (one table's
/// auto-increment) and clusters of dense ids (a shard or partition number times a stride
/// plus a sequence) take about a bit per id, scattered ids a page each, until `insert`
/// refuses them.
#[derive(Default)]
struct SeenIds {
    /// Page number (id >> PAGE_BITS) → its place in `bits`.
    pages: hashbrown::HashMap<i64, usize, foldhash::fast::FixedState>,
    bits: Vec<u64>,
    /// The last page used (ids of consecutive runs are often close).
    last: Option<(i64, usize)>,
}

/// Bits a `SeenIds` may always use (32 MiB): dense ids of tables up to ~268M orders.
const BITMAP_BITS: u64 = 1 << 28;
const PAGE_BITS: u32 = 16;
const PAGE_WORDS: usize = (1 << PAGE_BITS) / 64;

impl SeenIds {
    /// Add `id`: whether it is new, or `None` (and unchanged) when it needs a page beyond
    /// `limit` bits in all.
    fn insert(&mut self, id: i64, limit: u64) -> Option<bool> {
        let page = id >> PAGE_BITS;
        let index = match self.last {
            Some((last, index)) if last == page => index,
            _ => {
                let index = match self.pages.get(&page) {
                    Some(&index) => index,
                    None => {
                        let index = self.pages.len();
                        if ((index as u64 + 1) << PAGE_BITS) > limit {
                            return None;
                        }
                        self.pages.insert(page, index);
                        self.bits.resize((index + 1) * PAGE_WORDS, 0);
                        index
                    }
                };
                self.last = Some((page, index));
                index
            }
        };
        let bit = (id & ((1 << PAGE_BITS) - 1)) as usize;
        let (word, mask) = (&mut self.bits[index * PAGE_WORDS + bit / 64], 1u64 << (bit % 64));
        let new = *word & mask == 0;
        *word |= mask;
        Some(new)
    }
}

impl OrderKeys {
    /// The order of a row's key (whose `key_hash` is `hash`, text only) and whether it is new;
    /// every integer run is a new order until merged.
    fn intern(&mut self, column: KeyColumn, row: usize, hash: u64) -> PolarsResult<(u32, bool)> {
        Ok(match (self, column) {
            (OrderKeys::Text(keys), KeyColumn::Text(values)) => {
                keys.intern_hashed(values.value(row).as_bytes(), hash as u32)
            }
            (OrderKeys::Runs(runs), KeyColumn::Int(values)) => {
                runs.push(values[row]);
                (u32::try_from(runs.held() - 1).expect("fewer than 2^32 runs"), true)
            }
            (OrderKeys::Lookup(index), KeyColumn::Int(values)) => index.intern(values[row], hash),
            _ => polars_bail!(SchemaMismatch: "order_id changed type between batches"),
        })
    }
}

/// The customer of each order: text ids interned as they come, integer ids stored as they are.
enum OrderCustomers {
    Text { keys: Interner, ids: Vec<u32> },
    Int(Vec<i64>),
}

impl OrderCustomers {
    fn new(dtype: &DataType) -> Self {
        match dtype {
            DataType::String => OrderCustomers::Text {
                keys: Interner::default(),
                ids: Vec::new(),
            },
            _ => OrderCustomers::Int(Vec::new()),
        }
    }

    /// Append the customer of a new order.
    fn push(&mut self, column: KeyColumn, row: usize) -> PolarsResult<()> {
        match (self, column) {
            (OrderCustomers::Text { keys, ids }, KeyColumn::Text(values)) => {
                ids.push(keys.intern(values.value(row).as_bytes()).0)
            }
            (OrderCustomers::Int(values), KeyColumn::Int(column)) => values.push(column[row]),
            _ => polars_bail!(SchemaMismatch: "customer_id changed type between batches"),
        }
        Ok(())
    }

    /// Whether orders `a` and `b` have the same customer.
    fn same(&self, a: usize, b: usize) -> bool {
        match self {
            OrderCustomers::Text { ids, .. } => ids[a] == ids[b],
            OrderCustomers::Int(values) => values[a] == values[b],
        }
    }

    /// Keep the orders whose `keep` is true.
    fn retain(&mut self, keep: &[bool]) {
        match self {
            OrderCustomers::Text { ids, .. } => retain(ids, keep),
            OrderCustomers::Int(values) => retain(values, keep),
        }
    }

    /// Whether a row names the customer of `order`.
    fn is_row(&self, order: usize, column: KeyColumn, row: usize) -> bool {
        match (self, column) {
            (OrderCustomers::Text { keys, ids }, KeyColumn::Text(values)) => {
                keys.key(ids[order]) == values.value(row).as_bytes()
            }
            (OrderCustomers::Int(values), KeyColumn::Int(column)) => values[order] == column[row],
            _ => false,
        }
    }
}

/// The distinct customer ids of all shards ascending, as `dtype`, and each order's position
/// among them (the shards' orders one after another).
fn number_customers(shards: Vec<OrderCustomers>, dtype: &DataType) -> PolarsResult<(Series, Vec<u32>)> {
    use rayon::prelude::*;
    if let Some(OrderCustomers::Text { .. }) = shards.first() {
        let mut interners = Vec::new();
        let mut orders = Vec::new();
        for shard in &shards {
            if let OrderCustomers::Text { keys, ids } = shard {
                interners.push(keys);
                orders.push(ids);
            }
        }
        let (sorted, ranks) = sorted_keys(&interners)?;
        let ids = orders
            .iter()
            .zip(&ranks)
            .flat_map(|(ids, rank)| ids.iter().map(|&id| rank[id as usize]))
            .collect();
        return Ok((sorted, ids));
    }
    // The shards' ids are read where they are: joining them would copy them into fresh memory.
    let parts: Vec<Vec<i64>> = shards
        .into_iter()
        .filter_map(|shard| match shard {
            OrderCustomers::Int(values) => Some(values),
            OrderCustomers::Text { .. } => None,
        })
        .collect();
    if let Some(numbered) = number_dense(&parts, dtype)? {
        return Ok(numbered);
    }
    // (id, order) pairs sorted in parallel, then read in sequence: each order's rank is written
    // once and no id is looked up at random.
    let mut pairs: Vec<(i64, u32)> = parts
        .iter()
        .flatten()
        .enumerate()
        .map(|(order, &id)| (id, order as u32))
        .collect();
    drop(parts);
    pairs.par_sort_unstable();
    // Parts of the sorted pairs numbered in parallel: a part's ranks continue from the
    // distinct values of the parts before it (a value may straddle two parts).
    use std::sync::atomic::{AtomicU32, Ordering as Atomic};
    let per_part = pairs.len().div_ceil(rayon::current_num_threads().max(1) * 4).max(1);
    let starts_value = |index: usize| index == 0 || pairs[index - 1].0 != pairs[index].0;
    let distinct_per_part: Vec<Vec<i64>> = pairs
        .par_chunks(per_part)
        .enumerate()
        .map(|(part, own)| {
            let first = part * per_part;
            (first..first + own.len())
                .filter(|&index| starts_value(index))
                .map(|index| pairs[index].0)
                .collect()
        })
        .collect();
    let mut before = Vec::with_capacity(distinct_per_part.len());
    let mut seen = 0usize;
    for values in &distinct_per_part {
        before.push(seen);
        seen += values.len();
    }
    let ids: Vec<AtomicU32> = (0..pairs.len()).map(|_| AtomicU32::new(0)).collect();
    pairs.par_chunks(per_part).enumerate().for_each(|(part, own)| {
        let first = part * per_part;
        let mut count = before[part];
        for (index, &(_, order)) in (first..).zip(own) {
            if starts_value(index) {
                count += 1;
            }
            // Orders are distinct: each slot is written by exactly one pair.
            ids[order as usize].store((count - 1) as u32, Atomic::Relaxed);
        }
    });
    let ids: Vec<u32> = ids.into_iter().map(AtomicU32::into_inner).collect();
    let distinct = distinct_per_part.concat();
    Ok((Series::new("".into(), distinct).cast(dtype)?, ids))
}

/// `number_customers` for integer ids in a narrow range (auto-increment ids, the usual case),
/// the orders' ids in `parts` one after another: a table with one slot per possible id marks
/// the ids present and then holds their ranks, so no sort is needed. `None` when the range is
/// much wider than the orders.
fn number_dense(parts: &[Vec<i64>], dtype: &DataType) -> PolarsResult<Option<(Series, Vec<u32>)>> {
    use rayon::prelude::*;
    let orders: usize = parts.iter().map(Vec::len).sum();
    let (Some(low), Some(high)) = (
        parts.iter().filter_map(|part| part.par_iter().min()).min().copied(),
        parts.iter().filter_map(|part| part.par_iter().max()).max().copied(),
    ) else {
        return Ok(None);
    };
    let span = (i128::from(high) - i128::from(low) + 1) as u128;
    if span > (2 * orders as u128).max(1 << 20) || span >= u128::from(u32::MAX) {
        return Ok(None);
    }
    const ABSENT: u32 = u32::MAX;
    let mut rank = vec![ABSENT; span as usize];
    for &v in parts.iter().flatten() {
        rank[(v - low) as usize] = 0;
    }
    let mut distinct = Vec::new();
    for (slot, rank) in rank.iter_mut().enumerate() {
        if *rank != ABSENT {
            *rank = distinct.len() as u32;
            distinct.push(low + slot as i64);
        }
    }
    let mut ids = Vec::with_capacity(orders);
    for part in parts {
        ids.par_extend(part.par_iter().map(|&v| rank[(v - low) as usize]));
    }
    Ok(Some((Series::new("".into(), distinct).cast(dtype)?, ids)))
}

/// Runs held before the first merge of repeated integer order ids; after a merge, the next
/// comes at twice the orders left, so memory follows orders, not lines, and a file whose
/// orders never repeat is sorted about twice in all.
const FIRST_MERGE: usize = 1 << 22;

/// Keep the items of `values` whose `keep` is true.
fn retain<T>(values: &mut Vec<T>, keep: &[bool]) {
    let mut flags = keep.iter();
    values.retain(|_| *flags.next().expect("a flag per value"));
}

/// The orders of one shard: the orders whose key hashes to it (`shard_of`), with their own
/// tables, so shards fold the same batch on different threads without sharing anything.
struct Shard {
    orders: OrderKeys,
    customers: OrderCustomers,
    channels: Interner,
    /// (view, code) of the channel names short enough to sit whole in a view, as seen.
    inline_channels: Vec<(u128, u32)>,
    ordered_ts: Vec<i64>,
    revenue: Vec<i64>,
    /// Each order's cost in micro-units, when the source maps `cost` (else empty).
    cost: Vec<i64>,
    lines: Vec<u32>,
    channel: Vec<u32>,
    several_customers: Vec<bool>,
    /// With `line` mapped: each order's line numbers (`LineSet`), the rest in `far_lines`. An
    /// order's lines are few and their numbers close, so this follows orders, not lines.
    line_sets: Vec<LineSet>,
    far_lines: hashbrown::HashSet<(u32, i64), foldhash::fast::FixedState>,
    /// Lines dropped as repeats of an (order_id, line) already folded.
    duplicate_lines: u64,
}

/// The line numbers of an order seen so far, in 8 bytes: the first number (`base`, as u32) in
/// the high half, and in the low half a bit for each of `base..base + 32` seen. Numbers that do
/// not fit go to the shard's `far_lines`. Empty (no bit) until the first numbered line.
#[derive(Clone, Copy, Default)]
struct LineSet(u64);

impl LineSet {
    /// Record `line`: `Some(first copy?)`, or `None` when it does not fit here.
    fn insert(&mut self, line: i64) -> Option<bool> {
        let mut base = (self.0 >> 32) as u32;
        if self.0 as u32 == 0 {
            base = u32::try_from(line).ok()?;
        }
        let offset = line
            .checked_sub(i64::from(base))
            .filter(|offset| (0..32).contains(offset))?;
        let bit = 1u64 << offset;
        let first = self.0 & bit == 0;
        self.0 = (u64::from(base) << 32) | (self.0 as u32 as u64) | bit;
        Some(first)
    }
}

/// The hash of a row's order key: `hash_bytes` for text, foldhash for integers.
fn key_hash(key: KeyColumn, row: usize) -> u64 {
    match key {
        KeyColumn::Text(values) => u64::from(hash_bytes(values.value(row).as_bytes())),
        KeyColumn::Int(values) => int_key_hash(values[row]),
    }
}

fn int_key_hash(id: i64) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x5eed).hash_one(id)
}

/// The shard of a key's hash among `shards`, from bits a text table does not use for tags
/// (hashbrown's top 7) or slots (low bits), so each shard's table still spreads evenly.
fn shard_of(hash: u64, shards: usize) -> usize {
    ((hash >> 24) as usize & 0xFF_FFFF) % shards
}

/// The fold's state; `add` takes batches in any order.
pub struct OrderFold {
    shards: Vec<Shard>,
    /// Lines per reason code, usable ones included.
    pub lines_by_reason: [u64; REASONS],
    /// Usable lines per currency (`None`: a null currency), when the source maps one.
    pub currencies: std::collections::BTreeMap<Option<String>, u64>,
    /// Time spent in `add` and batches folded, for the debug log.
    pub busy: std::time::Duration,
    pub batches: u64,
    /// Lines the source holds (file metadata), when known: once `RESERVE_AFTER` lines are
    /// folded, each shard's columns are reserved for the orders its share of runs so far
    /// projects, so they do not grow by doubling (a copy, and fresh pages for the kernel to
    /// zero, each time).
    pub expected_lines: Option<u64>,
    /// The first instant (µs) after `as_of` when it is fixed: lines from it on are not used.
    pub first_after_as_of: Option<i64>,
    /// Whether batches carry a `cost` column (the source maps `cost`): orders get a `cost`.
    pub has_cost: bool,
    /// The last batch's costs in micro-units, kept for its buffer.
    costs: Vec<i64>,
    lines_seen: u64,
    /// The last batch's reason codes and runs (a list per shard), kept for their buffers: a
    /// batch's lists grew anew from empty (copies, fresh pages) when each batch made its own.
    reasons: Vec<u8>,
    runs: Vec<Vec<(usize, usize, u64)>>,
    /// `RESERVE_AFTER` (small in tests).
    reserve_after: u64,
    reserved: bool,
}

/// Lines folded before the columns are reserved from the runs per line seen.
const RESERVE_AFTER: u64 = 1 << 20;

/// Orders with dense integer customer ids and channel codes, both numbered in sort order of the
/// values, so `min` over codes is `min` over names.
pub struct FoldedOrders {
    /// `id` (u32), `ordered_ts` (i64 µs), `revenue` (i64 micro-units), `lines` (u32),
    /// `several_customers` (bool)[, `channel` (u32 code, `NO_CHANNEL` for none)][, `cost` (i64
    /// micro-units)].
    pub orders: DataFrame,
    /// Customer id of each `id`, ascending.
    pub customer_ids: Series,
    /// Channel name of each code, ascending; `None` when the source maps no channel.
    pub channels: Option<Series>,
    pub lines_by_reason: [u64; REASONS],
    pub duplicate_lines: u64,
}

/// The columns of one (rechunked) batch, and each line's reason code (`line_reasons`).
struct Batch<'a> {
    reasons: &'a [u8],
    order_ids: KeyColumn<'a>,
    customer_ids: KeyColumn<'a>,
    ts: &'a [i64],
    amounts: Amounts<'a>,
    /// Each line's cost in micro-units (null as 0), when the source maps `cost`.
    costs: Option<&'a [i64]>,
    channels: Option<&'a TextArray>,
    /// The `line` column when the source maps it: (order_id, line) pairs count once.
    lines: Option<&'a Int64Array>,
}

type Int64Array = <Int64Type as PolarsDataType>::Array;

/// A batch's amounts: numbers as Float64 units, or decimals and text already turned into
/// micro-units (`money::micros_column`). A usable line's amount is valid (`is_valid`).
#[derive(Clone, Copy)]
enum Amounts<'a> {
    Units(&'a [f64]),
    Micros(&'a [i64]),
}

impl<'a> Amounts<'a> {
    fn of(column: &'a Column) -> PolarsResult<Self> {
        Ok(match column.dtype() {
            DataType::Int64 => Amounts::Micros(column.i64()?.downcast_as_array().values().as_slice()),
            _ => Amounts::Units(column.f64()?.downcast_as_array().values().as_slice()),
        })
    }

    /// A row's amount in micro-units (a valid one: see `is_valid`).
    #[inline]
    fn micros(self, row: usize) -> i64 {
        match self {
            Amounts::Units(units) => crate::core::money::micros_of(units[row]),
            Amounts::Micros(micros) => micros[row],
        }
    }
}

impl<'a> Batch<'a> {
    fn of(batch: &'a DataFrame, reasons: &'a [u8], costs: Option<&'a [i64]>) -> PolarsResult<Self> {
        Ok(Batch {
            reasons,
            costs,
            order_ids: KeyColumn::of(batch.column("order_id")?)?,
            customer_ids: KeyColumn::of(batch.column("customer_id")?)?,
            ts: batch.column("ts")?.i64()?.downcast_as_array().values().as_slice(),
            amounts: Amounts::of(batch.column("amount")?)?,
            channels: match batch.column("channel") {
                Ok(column) => Some(column.str()?.downcast_as_array()),
                Err(_) => None,
            },
            lines: match batch.column("line") {
                Ok(column) => Some(column.i64()?.downcast_as_array()),
                Err(_) => None,
            },
        })
    }
}

/// Which lines of a column are null: `None` when none is.
fn nulls(batch: &DataFrame, name: &str) -> PolarsResult<Option<BooleanChunked>> {
    let column = batch.column(name)?;
    Ok((column.null_count() > 0).then(|| column.is_null()))
}

/// Each line's reason code, the first that applies (`LINE_REASONS`): not included, no
/// customer_id, no order_id, no time, no amount, an amount that is NaN, infinite or beyond
/// ±9e12 (past what micro-units hold in an i64), at or after `first_after_as_of`; 0 for a usable
/// line; into `reasons` (cleared first). Columns: `order_id`, `customer_id`, `ts` (i64 µs),
/// `amount` (f64 units, or i64 micro-units)[, `include` (bool; all lines when absent)].
fn line_reasons(batch: &DataFrame, first_after_as_of: Option<i64>, reasons: &mut Vec<u8>) -> PolarsResult<()> {
    // One loop per kind of amount, so the test of a usable amount is inlined.
    match Amounts::of(batch.column("amount")?)? {
        Amounts::Units(units) => reasons_with(batch, first_after_as_of, reasons, |row| {
            (-9.0e12..=9.0e12).contains(&units[row]) // NaN is in no range
        }),
        Amounts::Micros(micros) => reasons_with(batch, first_after_as_of, reasons, |row| {
            micros[row] != crate::core::money::INVALID_MICROS
        }),
    }
}

/// `line_reasons` with `valid_amount(row)` telling whether a non-null amount is usable.
fn reasons_with(
    batch: &DataFrame,
    first_after_as_of: Option<i64>,
    reasons: &mut Vec<u8>,
    valid_amount: impl Fn(usize) -> bool,
) -> PolarsResult<()> {
    let include = match batch.column("include") {
        Ok(column) => Some(column.bool()?.downcast_as_array()),
        Err(_) => None,
    };
    let nulls = [
        nulls(batch, "customer_id")?,
        nulls(batch, "order_id")?,
        nulls(batch, "ts")?,
        nulls(batch, "amount")?,
    ];
    let [customers, orders, ts_nulls, amount_nulls] = nulls
        .each_ref()
        .map(|nulls| nulls.as_ref().map(|nulls| nulls.downcast_as_array()));
    let null = |nulls: Option<&BoolArray>, row: usize| nulls.is_some_and(|nulls| nulls.value(row));
    let ts = batch.column("ts")?.i64()?.downcast_as_array().values().as_slice();
    let valued = |row: usize| {
        if !valid_amount(row) {
            INVALID_AMOUNT
        } else if first_after_as_of.is_some_and(|first| ts[row] >= first) {
            AFTER_AS_OF
        } else {
            0
        }
    };
    reasons.clear();
    let no_nulls = [customers, orders, ts_nulls, amount_nulls].iter().all(Option::is_none);
    match include {
        // The usual batch: no null key, time or amount, and an include mask without nulls.
        Some(include) if no_nulls && include.validity().is_none_or(|valid| valid.unset_bits() == 0) => {
            reasons.extend(include.values().iter().enumerate().map(|(row, included)| {
                if included {
                    valued(row)
                } else {
                    EXCLUDED_BY_INCLUDE
                }
            }))
        }
        None if no_nulls => reasons.extend((0..batch.height()).map(valued)),
        _ => reasons.extend((0..batch.height()).map(|row| {
            if include.is_some_and(|include| include.get(row) != Some(true)) {
                EXCLUDED_BY_INCLUDE
            } else if null(customers, row) {
                NULL_CUSTOMER_ID
            } else if null(orders, row) {
                NULL_ORDER_ID
            } else if null(ts_nulls, row) {
                NULL_ORDERED_AT
            } else if null(amount_nulls, row) {
                NULL_AMOUNT
            } else {
                valued(row)
            }
        })),
    }
    Ok(())
}

impl OrderFold {
    /// A fold for a source whose key columns have these types, in `shards` shards folded in
    /// parallel (one per thread of the current rayon pool is the intent).
    /// With `lines`, batches carry a `line` column and repeats of an (order_id, line) count
    /// once (integer order ids are then looked up per run instead of merged later).
    pub fn new(order_id: &DataType, customer_id: &DataType, shards: usize, lines: bool) -> Self {
        let text = order_id == &DataType::String;
        let shard = || Shard {
            orders: match (text, lines) {
                (true, _) => OrderKeys::Text(Interner::default()),
                (false, false) => OrderKeys::Runs(Runs::default()),
                (false, true) => OrderKeys::Lookup(IdIndex::default()),
            },
            customers: OrderCustomers::new(customer_id),
            channels: Interner::default(),
            inline_channels: Vec::new(),
            ordered_ts: Vec::new(),
            revenue: Vec::new(),
            cost: Vec::new(),
            lines: Vec::new(),
            channel: Vec::new(),
            several_customers: Vec::new(),
            line_sets: Vec::new(),
            far_lines: Default::default(),
            duplicate_lines: 0,
        };
        let shards = shards.max(1);
        OrderFold {
            shards: (0..shards).map(|_| shard()).collect(),
            lines_by_reason: [0; REASONS],
            currencies: Default::default(),
            busy: std::time::Duration::ZERO,
            batches: 0,
            expected_lines: None,
            first_after_as_of: None,
            has_cost: false,
            costs: Vec::new(),
            lines_seen: 0,
            reasons: Vec::new(),
            runs: vec![Vec::new(); shards],
            reserve_after: RESERVE_AFTER,
            reserved: false,
        }
    }

    /// Fold one batch with columns `order_id`, `customer_id` (text or Int64), `ts` (i64 µs),
    /// `amount` (Float64 units, a decimal, or text)[, `include` (bool)][, `channel` (text)]
    /// [, `line` (Int64)][, `currency` (text)].
    pub fn add(&mut self, mut batch: DataFrame) -> PolarsResult<()> {
        use rayon::prelude::*;
        let started = std::time::Instant::now();
        batch.rechunk_mut();
        if let Some(micros) = crate::core::money::micros_column(batch.column("amount")?)? {
            batch.with_column(micros)?;
        }
        let (mut reasons, mut runs) = (std::mem::take(&mut self.reasons), std::mem::take(&mut self.runs));
        line_reasons(&batch, self.first_after_as_of, &mut reasons)?;
        let mut costs = std::mem::take(&mut self.costs);
        if self.has_cost {
            cost_micros(batch.column("cost")?, &mut costs)?;
            for (reason, &cost) in reasons.iter_mut().zip(&costs) {
                if *reason == 0 && cost == crate::core::money::INVALID_MICROS {
                    *reason = INVALID_COST;
                }
            }
        }
        if let Ok(currency) = batch.column("currency") {
            count_currencies(currency.str()?.downcast_as_array(), &reasons, &mut self.currencies);
        }
        // Usually every line is usable: one vectorised count of those, a counter per line only
        // when some are not.
        let usable = reasons.iter().filter(|&&code| code == 0).count();
        if usable == reasons.len() {
            self.lines_by_reason[0] += usable as u64;
        } else {
            for &code in &reasons {
                self.lines_by_reason[usize::from(code)] += 1;
            }
        }
        let columns = Batch::of(&batch, &reasons, self.has_cost.then_some(costs.as_slice()))?;
        self.reserve_once();
        self.lines_seen += columns.reasons.len() as u64;
        let hashed = !matches!(self.shards[0].orders, OrderKeys::Runs(_));
        runs_by_shard(&columns, hashed, &mut runs);
        let result = if self.shards.len() == 1 {
            self.shards[0].add(&columns, &runs[0])
        } else {
            self.shards
                .par_iter_mut()
                .zip(&runs)
                .try_for_each(|(shard, runs)| shard.add(&columns, runs))
        };
        self.shards.par_iter_mut().for_each(|shard| {
            if matches!(&shard.orders, OrderKeys::Runs(runs) if runs.should_merge()) {
                shard.merge_repeated_orders();
            }
        });
        (self.reasons, self.runs, self.costs) = (reasons, runs, costs);
        self.busy += started.elapsed();
        self.batches += 1;
        result
    }

    /// Before the first batch after `reserve_after` lines: room in each shard for the orders
    /// its runs per line so far project over `expected_lines` (once).
    fn reserve_once(&mut self) {
        let seen = self.lines_seen;
        let Some(expected) = self
            .expected_lines
            .filter(|_| !self.reserved && seen >= self.reserve_after)
        else {
            return;
        };
        self.reserved = true;
        let scale = expected as f64 / seen.max(1) as f64 * 1.05;
        let projected: Vec<usize> = self
            .shards
            .iter()
            .map(|shard| (shard.ordered_ts.len() as f64 * scale) as usize)
            .collect();
        for (shard, projected) in self.shards.iter_mut().zip(&projected) {
            shard.reserve(projected.saturating_sub(shard.ordered_ts.len()));
        }
    }

    /// The orders as columns; `customer_dtype` is the source's customer_id type.
    pub fn finish(self, customer_dtype: &DataType, has_channel: bool) -> PolarsResult<FoldedOrders> {
        let OrderFold {
            mut shards,
            lines_by_reason,
            has_cost,
            ..
        } = self;
        let duplicate_lines = shards.iter().map(|shard| shard.duplicate_lines).sum();
        use rayon::prelude::*;
        let clock = std::time::Instant::now();
        let mut customers = Vec::new();
        /// The parts one after another: the first grown once to hold them all, the others
        /// appended. The room is asked for only now, when the scan's batches are freed: an
        /// allocator that keeps freed pages (the `page-allocator` feature) backs the grown room
        /// with them instead of fresh pages the kernel must zero.
        fn joined<T>(parts: Vec<Vec<T>>) -> Vec<T> {
            let rest: usize = parts.iter().skip(1).map(Vec::len).sum();
            let mut parts = parts.into_iter();
            let mut all = parts.next().unwrap_or_default();
            all.reserve_exact(rest);
            for mut more in parts {
                all.append(&mut more);
            }
            all
        }
        if matches!(shards[0].orders, OrderKeys::Runs(_)) {
            let by_bitmap = shards
                .iter()
                .filter(|shard| matches!(&shard.orders, OrderKeys::Runs(runs) if runs.seen.is_some()))
                .count();
            tracing::debug!(
                "integer order ids: repeats found by bitmap in {by_bitmap} of {} shards (sorted in the others)",
                shards.len()
            );
        }
        shards.par_iter_mut().for_each(Shard::merge_repeated_orders);
        // Channel codes renumbered in place, in sort order of the names across shards;
        // NO_CHANNEL stays NO_CHANNEL.
        let names = if has_channel {
            let interners: Vec<&Interner> = shards.iter().map(|shard| &shard.channels).collect();
            let (names, ranks) = sorted_keys(&interners)?;
            for (shard, rank) in shards.iter_mut().zip(&ranks) {
                shard.channel.par_iter_mut().for_each(|c| {
                    if *c != NO_CHANNEL {
                        *c = rank[*c as usize];
                    }
                });
            }
            Some(names)
        } else {
            None
        };
        tracing::debug!("repeated orders merged in {:.3} s", clock.elapsed().as_secs_f64());
        let clock = std::time::Instant::now();
        let mut parts = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut cost_parts = Vec::new();
        for shard in shards {
            drop(shard.orders);
            drop(shard.line_sets);
            drop(shard.far_lines);
            customers.push(shard.customers);
            if has_channel {
                parts.0.push(shard.channel);
            }
            parts.1.push(shard.ordered_ts);
            parts.2.push(shard.revenue);
            cost_parts.push(shard.cost);
            parts.3.push(shard.lines);
            parts.4.push(shard.several_customers);
        }
        // The columns are joined in parallel.
        let (mut codes, mut ordered_ts, mut revenue, mut lines, mut several_customers) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut cost = Vec::new();
        rayon::scope(|scope| {
            scope.spawn(|_| codes = joined(parts.0));
            scope.spawn(|_| ordered_ts = joined(parts.1));
            scope.spawn(|_| revenue = joined(parts.2));
            scope.spawn(|_| lines = joined(parts.3));
            scope.spawn(|_| several_customers = joined(parts.4));
            scope.spawn(|_| cost = joined(cost_parts));
        });
        tracing::debug!("shards joined in {:.3} s", clock.elapsed().as_secs_f64());
        let clock = std::time::Instant::now();
        let (customer_ids, ids) = number_customers(customers, customer_dtype)?;
        tracing::debug!("customers numbered in {:.3} s", clock.elapsed().as_secs_f64());
        let mut columns = vec![
            crate::core::columns::owned_column("id", ids),
            crate::core::columns::owned_column("ordered_ts", ordered_ts),
            crate::core::columns::owned_column("revenue", revenue),
            crate::core::columns::owned_column("lines", lines),
            Column::new("several_customers".into(), several_customers),
        ];
        if has_channel {
            columns.push(crate::core::columns::owned_column("channel", codes));
        }
        if has_cost {
            columns.push(crate::core::columns::owned_column("cost", cost));
        }
        Ok(FoldedOrders {
            orders: DataFrame::new_infer_height(columns)?,
            customer_ids,
            channels: names,
            lines_by_reason,
            duplicate_lines,
        })
    }
}

/// A batch's `cost` column as micro-units into `costs` (cleared first): a null cost is 0 (as SQL's
/// `sum` skips it), a cost that is not a usable number `INVALID_MICROS`.
fn cost_micros(cost: &Column, costs: &mut Vec<i64>) -> PolarsResult<()> {
    costs.clear();
    let micros = crate::core::money::micros_of_column(cost)?;
    costs.extend(micros.iter().map(|micros| micros.unwrap_or(0)));
    Ok(())
}

/// Add the usable lines (reason 0) of a batch to the count per currency.
fn count_currencies(
    currency: &TextArray,
    reasons: &[u8],
    counts: &mut std::collections::BTreeMap<Option<String>, u64>,
) {
    // Lines of one currency come in long stretches: counted per stretch.
    let mut stretch: Option<(Option<&str>, u64)> = None;
    for (row, _) in reasons.iter().enumerate().filter(|(_, &reason)| reason == 0) {
        let value = currency.get(row);
        match &mut stretch {
            Some((current, count)) if *current == value => *count += 1,
            _ => {
                if let Some((current, count)) = stretch.replace((value, 1)) {
                    *counts.entry(current.map(str::to_string)).or_insert(0) += count;
                }
            }
        }
    }
    if let Some((current, count)) = stretch {
        *counts.entry(current.map(str::to_string)).or_insert(0) += count;
    }
}

/// The runs of adjacent usable lines with one order_id in a batch, as (first row, row after
/// the last line, key hash) per shard, into `runs` (one list per shard, cleared first): found
/// once for all shards (each shard used to scan the whole batch for its own). The hash is
/// computed when `hashed` (keys looked up in a table) and to choose a shard.
fn runs_by_shard(batch: &Batch, hashed: bool, runs: &mut [Vec<(usize, usize, u64)>]) {
    // One loop per key type, so the comparison of neighbours is inlined.
    match batch.order_ids {
        KeyColumn::Int(ids) => runs_of(batch, hashed, runs, |a, b| ids[a] == ids[b]),
        KeyColumn::Text(values) => runs_of(batch, hashed, runs, |a, b| values.value(a) == values.value(b)),
    }
}

/// `runs_by_shard` with `same(a, b)` telling whether rows a and b hold the same order id.
fn runs_of(batch: &Batch, hashed: bool, runs: &mut [Vec<(usize, usize, u64)>], same: impl Fn(usize, usize) -> bool) {
    let Batch { reasons, order_ids, .. } = *batch;
    let shards = runs.len();
    runs.iter_mut().for_each(Vec::clear);
    let mut open: Option<(usize, usize, u64)> = None; // first, last, hash
    let mut close = |(first, last, hash): (usize, usize, u64)| {
        let shard = if shards == 1 { 0 } else { shard_of(hash, shards) };
        runs[shard].push((first, last + 1, hash));
    };
    for (row, _) in reasons.iter().enumerate().filter(|(_, &reason)| reason == 0) {
        if let Some((_, last, _)) = &mut open {
            if same(row, *last) {
                *last = row;
                continue;
            }
        }
        if let Some(run) = open {
            close(run);
        }
        let hash = if hashed || shards > 1 {
            key_hash(order_ids, row)
        } else {
            0
        };
        open = Some((row, row, hash));
    }
    if let Some(run) = open {
        close(run);
    }
}

impl Shard {
    /// Room for `more` orders in every column, as far as the allocator gives it (the columns
    /// grow as usual past it).
    fn reserve(&mut self, more: usize) {
        // Ignored failures: a reservation is only a hint.
        let _ = match &mut self.customers {
            OrderCustomers::Text { ids, .. } => ids.try_reserve(more),
            OrderCustomers::Int(values) => values.try_reserve(more),
        };
        match &mut self.orders {
            OrderKeys::Runs(runs) => {
                let _ = runs.fresh.try_reserve(more);
            }
            // Room for the projected orders at once: no table grows by rehashing into a second
            // one beside it.
            OrderKeys::Lookup(index) => {
                index.reserve(more);
                let _ = self.line_sets.try_reserve(more);
            }
            OrderKeys::Text(_) => {
                if !self.line_sets.is_empty() {
                    let _ = self.line_sets.try_reserve(more);
                }
            }
        }
        let _ = self.ordered_ts.try_reserve(more);
        let _ = self.revenue.try_reserve(more);
        if !self.cost.is_empty() {
            let _ = self.cost.try_reserve(more);
        }
        let _ = self.lines.try_reserve(more);
        let _ = self.channel.try_reserve(more);
        let _ = self.several_customers.try_reserve(more);
    }

    /// Fold this shard's runs of a batch (`runs_by_shard`): each run's order is looked up (text)
    /// or started (integer ids: a new order per run, repeats merged later) and its lines
    /// folded in.
    fn add(&mut self, batch: &Batch, runs: &[(usize, usize, u64)]) -> PolarsResult<()> {
        let Batch {
            reasons,
            order_ids,
            customer_ids,
            ts,
            amounts,
            costs,
            channels,
            lines,
        } = *batch;
        let usable = |row: usize| reasons[row] == 0;

        // A channel name of up to 12 bytes is held whole in its view: such views are looked up
        // among the few seen (a compare each, no hash); a longer name is interned unless it is
        // the previous long one's.
        let mut previous_long: Option<(&str, u32)> = None;
        let mut channel_of = |names: &mut Interner, inline: &mut Vec<(u128, u32)>, row: usize| {
            let Some(values) = channels else {
                return NO_CHANNEL;
            };
            let Some(name) = values.get(row) else {
                return NO_CHANNEL;
            };
            let view = values.views()[row];
            if view.length > 12 {
                if let Some((_, code)) = previous_long.filter(|(previous, _)| *previous == name) {
                    return code;
                }
                let code = names.intern(name.as_bytes()).0;
                previous_long = Some((name, code));
                return code;
            }
            let key = view.as_u128();
            if let Some(&(_, code)) = inline.iter().find(|(seen, _)| *seen == key) {
                return code;
            }
            let code = names.intern(name.as_bytes()).0;
            if inline.len() < 64 {
                inline.push((key, code));
            }
            code
        };
        for &(first, end, hash) in runs {
            let (order, new) = self.orders.intern(order_ids, first, hash)?;
            let o = order as usize;
            let mut previous: Option<usize> = None; // the run's previous line
            for row in (first..end).filter(|&row| usable(row)) {
                if let Some(lines) = lines {
                    if new && previous.is_none() {
                        self.line_sets.push(LineSet::default());
                    }
                    if polars_arrow::array::Array::is_valid(lines, row) && !self.first_copy(o, lines.value(row)) {
                        self.duplicate_lines += 1;
                        continue;
                    }
                }
                let (ts, amount) = (ts[row], amounts.micros(row));
                if new && previous.is_none() {
                    let channel = channel_of(&mut self.channels, &mut self.inline_channels, row);
                    self.customers.push(customer_ids, row)?;
                    self.ordered_ts.push(ts);
                    self.revenue.push(amount);
                    if let Some(costs) = costs {
                        self.cost.push(costs[row]);
                    }
                    self.lines.push(1);
                    self.channel.push(channel);
                    self.several_customers.push(false);
                    previous = Some(row);
                    continue;
                }
                let same_customer = match previous {
                    Some(last) if customer_ids.same(row, last) => true,
                    _ => self.customers.is_row(o, customer_ids, row),
                };
                previous = Some(row);
                if !same_customer {
                    self.several_customers[o] = true;
                }
                self.lines[o] += 1;
                self.revenue[o] = self.revenue[o].wrapping_add(amount);
                if let Some(costs) = costs {
                    self.cost[o] = self.cost[o].wrapping_add(costs[row]);
                }
                if ts <= self.ordered_ts[o] {
                    let channel = channel_of(&mut self.channels, &mut self.inline_channels, row);
                    self.take_if_first(o, ts, channel);
                }
            }
        }
        Ok(())
    }

    /// Record line number `line` of `order`: whether it is the first copy of that line.
    fn first_copy(&mut self, order: usize, line: i64) -> bool {
        match self.line_sets[order].insert(line) {
            Some(first) => first,
            None => self.far_lines.insert((order as u32, line)),
        }
    }

    /// Merge the runs of integer order ids that repeat an earlier run's id into that earlier
    /// run (the order's first), by the same rules as lines: the runs since the last merge are
    /// sorted by (id, run) in parallel and walked beside the (id, order) list of the last merge,
    /// so each run is sorted once however many merges there are.
    fn merge_repeated_orders(&mut self) {
        use rayon::prelude::*;
        let OrderKeys::Runs(runs) = &mut self.orders else {
            return;
        };
        if runs.seen.is_some() {
            return self.merge_repeats_seen();
        }
        // Orders before `start` were merged already and are in `sorted`; only the fresh runs
        // are sorted now, then walked beside `sorted`.
        let sorted = std::mem::take(&mut runs.sorted);
        let mut keys = std::mem::take(&mut runs.fresh);
        let start = sorted.len();
        let held = start + keys.len();
        let mut fresh: Vec<(i64, u32)> = (start..).zip(&keys).map(|(run, &key)| (key, run as u32)).collect();
        fresh.par_sort_unstable();
        let mut keep: Option<Vec<bool>> = None;
        let mut firsts: Vec<(i64, u32)> = Vec::new(); // the runs that start a new order
        let mut old = 0;
        for group in fresh.chunk_by(|a, b| a.0 == b.0) {
            let key = group[0].0;
            while old < sorted.len() && sorted[old].0 < key {
                old += 1;
            }
            let (order, repeats) = match sorted.get(old) {
                Some(&(seen, order)) if seen == key => (order as usize, group),
                _ => {
                    firsts.push(group[0]);
                    (group[0].1 as usize, &group[1..])
                }
            };
            for &(_, later) in repeats {
                let later = later as usize;
                keep.get_or_insert_with(|| vec![true; held])[later] = false;
                self.merge_into(order, later);
            }
        }
        drop(fresh);
        if let Some(keep) = &keep {
            // Runs before `start` are all kept: a first run's new position is `start` plus the
            // kept runs before it.
            let mut position = start as u32;
            let mut positions = vec![0u32; held - start];
            for (slot, &kept) in positions.iter_mut().zip(&keep[start..]) {
                *slot = position;
                position += u32::from(kept);
            }
            for first in &mut firsts {
                first.1 = positions[first.1 as usize - start];
            }
            self.retain_orders(keep);
        }
        // Both sorted by key, no key in both: merged in one pass.
        let mut merged = Vec::with_capacity(sorted.len() + firsts.len());
        let (mut a, mut b) = (sorted.into_iter().peekable(), firsts.into_iter().peekable());
        while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
            merged.push(if x.0 < y.0 { a.next() } else { b.next() }.expect("peeked"));
        }
        merged.extend(a);
        merged.extend(b);
        keys.clear();
        let OrderKeys::Runs(runs) = &mut self.orders else {
            unreachable!("checked above");
        };
        runs.merge_at = (merged.len() * 2).max(runs.merge_floor);
        runs.sorted = merged;
        runs.fresh = keys;
    }

    /// `merge_repeated_orders` in bitmap mode: the ids of the repeating runs are looked up in
    /// one pass over the ids held to find each one's first run, and the repeats merged into it.
    fn merge_repeats_seen(&mut self) {
        let OrderKeys::Runs(runs) = &mut self.orders else {
            return;
        };
        if runs.repeats.is_empty() {
            return;
        }
        let repeats = std::mem::take(&mut runs.repeats);
        let keys = std::mem::take(&mut runs.fresh);
        let mut first_of: hashbrown::HashMap<i64, u32> =
            repeats.iter().map(|&r| (keys[r as usize], u32::MAX)).collect();
        // A repeat always comes after its first run: look no further than the last repeat.
        let last = *repeats.last().expect("not empty") as usize;
        let mut missing = first_of.len();
        for (run, key) in keys[..last].iter().enumerate() {
            if let Some(first) = first_of.get_mut(key) {
                if *first == u32::MAX {
                    *first = run as u32;
                    missing -= 1;
                    if missing == 0 {
                        break;
                    }
                }
            }
        }
        let mut keep = vec![true; keys.len()];
        for &later in &repeats {
            let later = later as usize;
            keep[later] = false;
            self.merge_into(first_of[&keys[later]] as usize, later);
        }
        let mut keys = keys;
        retain(&mut keys, &keep);
        self.retain_orders(&keep);
        let OrderKeys::Runs(runs) = &mut self.orders else {
            unreachable!("checked above");
        };
        runs.fresh = keys;
    }

    /// Keep the orders whose `keep` is true, in every column but the keys.
    fn retain_orders(&mut self, keep: &[bool]) {
        self.customers.retain(keep);
        retain(&mut self.ordered_ts, keep);
        retain(&mut self.revenue, keep);
        retain(&mut self.cost, keep);
        retain(&mut self.lines, keep);
        retain(&mut self.channel, keep);
        retain(&mut self.several_customers, keep);
    }

    /// Fold order `later` (a run repeating `order`'s id) into `order`, by the rules for lines.
    fn merge_into(&mut self, order: usize, later: usize) {
        if !self.customers.same(order, later) || self.several_customers[later] {
            self.several_customers[order] = true;
        }
        self.lines[order] += self.lines[later];
        self.revenue[order] = self.revenue[order].wrapping_add(self.revenue[later]);
        if !self.cost.is_empty() {
            self.cost[order] = self.cost[order].wrapping_add(self.cost[later]);
        }
        self.take_if_first(order, self.ordered_ts[later], self.channel[later]);
    }

    /// Make (`ts`, `channel`) the order's time and channel when it comes first: earlier, or at
    /// the same instant with a channel that wins (`channel_before`).
    fn take_if_first(&mut self, order: usize, ts: i64, channel: u32) {
        match ts.cmp(&self.ordered_ts[order]) {
            Ordering::Less => {
                self.ordered_ts[order] = ts;
                self.channel[order] = channel;
            }
            Ordering::Equal if self.channel_before(channel, self.channel[order]) => {
                self.channel[order] = channel;
            }
            _ => {}
        }
    }

    /// Whether channel code `a` wins over `b` at the same instant: a name before no name, the
    /// smaller name before the larger.
    fn channel_before(&self, a: u32, b: u32) -> bool {
        match (a, b) {
            _ if a == b => false,
            (NO_CHANNEL, _) => false,
            (_, NO_CHANNEL) => true,
            _ => self.channels.key(a) < self.channels.key(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// reason, order_id, customer_id, ts, amount (micro-units), channel.
    type Line<'a> = (i32, &'a str, &'a str, i64, i64, Option<&'a str>);

    /// The lines as the scan gives them, each line's reason code made by its columns: not
    /// included (1), a null customer_id (2), order_id (3), time (4) or amount (5), a NaN amount (7).
    fn batch(rows: &[Line]) -> DataFrame {
        df! {
            "order_id" => rows.iter().map(|r| (r.0 != 3).then_some(r.1)).collect::<Vec<_>>(),
            "customer_id" => rows.iter().map(|r| (r.0 != 2).then_some(r.2)).collect::<Vec<_>>(),
            "ts" => rows.iter().map(|r| (r.0 != 4).then_some(r.3)).collect::<Vec<_>>(),
            "amount" => rows
                .iter()
                .map(|r| match r.0 {
                    5 => None,
                    7 => Some(f64::NAN),
                    _ => Some(r.4 as f64 / 1e6),
                })
                .collect::<Vec<_>>(),
            "channel" => rows.iter().map(|r| r.5).collect::<Vec<_>>(),
            "include" => rows.iter().map(|r| r.0 != 1).collect::<Vec<_>>(),
        }
        .expect("valid frame")
    }

    /// The reason codes equal the polars expression the scan used to compute them, on every
    /// kind of line and the edges of the amount range and of as_of.
    #[test]
    fn line_reasons_are_the_scan_expression() {
        let n = 64usize;
        let pick = |row: usize, k: usize| row.is_multiple_of(k);
        let amounts = [
            0.0,
            -1.5,
            9.0e12,
            -9.0e12,
            9.000000001e12,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            19.99,
        ];
        let frame = df! {
            "order_id" => (0..n).map(|r| (!pick(r, 5)).then_some(r as i64)).collect::<Vec<_>>(),
            "customer_id" => (0..n).map(|r| (!pick(r, 7)).then(|| format!("c{r}"))).collect::<Vec<_>>(),
            "ts" => (0..n).map(|r| (!pick(r, 11)).then_some(1_000 + (r as i64 % 9) * 10)).collect::<Vec<_>>(),
            "amount" => (0..n).map(|r| (!pick(r, 13)).then_some(amounts[r % amounts.len()])).collect::<Vec<_>>(),
            "include" => (0..n).map(|r| !pick(r, 3)).collect::<Vec<_>>(),
        }
        .unwrap();
        // Lines with nulls, and the same without them (the batch without nulls, the usual one).
        let without_nulls = frame.drop_nulls::<String>(None).unwrap();
        assert!(without_nulls.height() > 20);
        for (frame, first_after_as_of) in [
            (&frame, None),
            (&frame, Some(1_040i64)),
            (&without_nulls, None),
            (&without_nulls, Some(1_040i64)),
        ] {
            let mut ours = vec![9; 3];
            line_reasons(frame, first_after_as_of, &mut ours).unwrap();
            let amount = || col("amount");
            let invalid = amount()
                .is_nan()
                .or(amount().gt(lit(9.0e12)))
                .or(amount().lt(lit(-9.0e12)));
            let after = first_after_as_of.map_or(lit(false), |first| col("ts").gt_eq(lit(first)));
            let expected = when(col("include").not())
                .then(lit(1i32))
                .when(col("customer_id").is_null())
                .then(lit(2i32))
                .when(col("order_id").is_null())
                .then(lit(3i32))
                .when(col("ts").is_null())
                .then(lit(4i32))
                .when(col("amount").is_null())
                .then(lit(5i32))
                .when(invalid)
                .then(lit(7i32))
                .when(after)
                .then(lit(6i32))
                .otherwise(lit(0i32))
                .alias("reason");
            let expected = frame.clone().lazy().select([expected]).collect().unwrap();
            let expected: Vec<u8> = expected
                .column("reason")
                .unwrap()
                .i32()
                .unwrap()
                .into_no_null_iter()
                .map(|r| r as u8)
                .collect();
            assert_eq!(ours, expected, "as_of boundary {first_after_as_of:?}");
            let codes: &[u8] = match frame.height() == n {
                true => &[0, 1, 2, 3, 4, 5, 6, 7],
                false => &[0, 1, 6, 7],
            };
            assert!(
                codes
                    .iter()
                    .all(|&code| first_after_as_of.is_none() && code == 6 || ours.contains(&code)),
                "every code: {ours:?}"
            );
        }
    }

    #[test]
    fn lines_fold_into_orders_across_batches() {
        // Channel names held whole in their views (≤ 12 bytes) and longer ones.
        for [app, shop, web] in [
            ["app", "shop", "web"],
            ["app", "shop_partner_network", "web_storefront_eu"],
        ] {
            let mut fold = OrderFold::new(&DataType::String, &DataType::String, 1, false);
            fold.add(batch(&[
                (0, "o2", "zed", 50, 7, Some(web)),
                (0, "o1", "amy", 20, 3, Some(web)),
                (5, "o1", "amy", 10, 0, Some(shop)),
                (0, "o3", "amy", 30, 1, None),
            ]))
            .unwrap();
            fold.add(batch(&[
                (0, "o1", "amy", 10, 4, Some(shop)),
                (0, "o1", "amy", 10, 5, Some(app)),
                (0, "o2", "bob", 60, 1, Some(app)),
                (0, "o3", "amy", 30, 2, Some(web)),
            ]))
            .unwrap();
            let folded = fold.finish(&DataType::String, true).unwrap();
            let ids: Vec<Option<&str>> = folded.customer_ids.str().unwrap().iter().collect();
            assert_eq!(ids, [Some("amy"), Some("zed")]);
            let channels = folded.channels.unwrap();
            let names: Vec<Option<&str>> = channels.str().unwrap().iter().collect();
            assert_eq!(names, [Some(app), Some(shop), Some(web)]);
            let orders = &folded.orders;
            let column = |name: &str| orders.column(name).unwrap().as_materialized_series().clone();
            // First-seen order: o2, o1, o3.
            assert_eq!(column("id").u32().unwrap().to_vec(), [Some(1), Some(0), Some(0)]);
            assert_eq!(
                column("ordered_ts").i64().unwrap().to_vec(),
                [Some(50), Some(10), Some(30)]
            );
            assert_eq!(column("revenue").i64().unwrap().to_vec(), [Some(8), Some(12), Some(3)]);
            assert_eq!(column("lines").u32().unwrap().to_vec(), [Some(2), Some(3), Some(2)]);
            assert_eq!(
                column("several_customers").bool().unwrap().iter().collect::<Vec<_>>(),
                [Some(true), Some(false), Some(false)]
            );
            // o1: "shop" and "app" share the earliest instant → "app" (code 0); o3: a name beats none.
            assert_eq!(column("channel").u32().unwrap().to_vec(), [Some(2), Some(0), Some(2)]);
            assert_eq!(column("channel").null_count(), 0, "no channel is NO_CHANNEL, not null");
            assert_eq!(folded.lines_by_reason[0], 7);
            assert_eq!(folded.lines_by_reason[5], 1);
        }
    }

    #[test]
    fn dense_and_sparse_integer_customer_ids_number_alike() {
        let ids: Vec<i64> = vec![5, -3, 5, 7, 1000, -3, 0];
        let values = |series: &Series| -> Vec<i64> { series.i64().unwrap().into_no_null_iter().collect() };
        // Two shards, ids in a narrow range: the table path.
        let shards = vec![
            OrderCustomers::Int(ids[..3].to_vec()),
            OrderCustomers::Int(ids[3..].to_vec()),
        ];
        let (distinct, numbers) = number_customers(shards, &DataType::Int64).unwrap();
        assert_eq!(values(&distinct), [-3, 0, 5, 7, 1000]);
        assert_eq!(numbers, [2, 0, 2, 3, 4, 0, 1]);
        // The same ids spread far too wide for a table, in two shards: the sorting path, same
        // numbers.
        let wide: Vec<i64> = ids.iter().map(|&v| v << 40).collect();
        let shards = vec![
            OrderCustomers::Int(wide[..4].to_vec()),
            OrderCustomers::Int(wide[4..].to_vec()),
        ];
        let (distinct, wide_numbers) = number_customers(shards, &DataType::Int64).unwrap();
        assert!(number_dense(&[wide], &DataType::Int64).unwrap().is_none());
        assert_eq!(values(&distinct), [-3 << 40, 0, 5 << 40, 7 << 40, 1000 << 40]);
        assert_eq!(wide_numbers, numbers);
    }

    #[test]
    fn integer_customer_ids_keep_their_type_and_numeric_order() {
        let mut fold = OrderFold::new(&DataType::Int64, &DataType::Int32, 1, false);
        let frame = df! {
            "order_id" => [7i64, 8, 9],
            "customer_id" => [10i64, 9, 10],
            "ts" => [1i64, 2, 3],
            "amount" => [1e-6, 1e-6, 1e-6],
        }
        .unwrap();
        fold.add(frame).unwrap();
        let folded = fold.finish(&DataType::Int32, false).unwrap();
        assert_eq!(folded.customer_ids.dtype(), &DataType::Int32);
        assert_eq!(folded.customer_ids.i32().unwrap().to_vec(), [Some(9), Some(10)]);
        let ids = folded.orders.column("id").unwrap().u32().unwrap().to_vec();
        assert_eq!(ids, [Some(1), Some(0), Some(1)]);
        assert!(folded.channels.is_none());
    }

    /// Orders sorted on every column, so folds that number them differently compare equal.
    fn canonical(folded: &FoldedOrders) -> DataFrame {
        let names: Vec<String> = folded.orders.get_column_names().iter().map(|n| n.to_string()).collect();
        folded.orders.sort(names, SortMultipleOptions::default()).unwrap()
    }

    #[test]
    fn shards_fold_the_same_orders() {
        // Orders o0..o39 of customers c0..c6 (c3 also on o7: several customers), lines of
        // an order both adjacent and split across batches, channels ending up in every shard.
        let names = ["web", "app", "shop"];
        type OwnedLine = (i32, String, String, i64, i64, Option<&'static str>);
        let lines: Vec<OwnedLine> = (0..200)
            .map(|i: i64| {
                let order = (i * 7) % 40 - (i % 3 == 0) as i64 * ((i / 3) % 2);
                let order = order.max(0);
                let customer = if order == 7 && i % 2 == 0 { 3 } else { order % 7 };
                let channel = (i % 5 != 0).then_some(names[(i % 3) as usize]);
                (
                    (i % 11 == 0) as i32 * 5,
                    format!("o{order}"),
                    format!("c{customer}"),
                    i % 13,
                    i,
                    channel,
                )
            })
            .collect();
        let fold_with = |shards: usize| {
            let mut fold = OrderFold::new(&DataType::String, &DataType::String, shards, false);
            if shards == 3 {
                // Reserved after the first batch for 200 / 64 times its orders.
                (fold.expected_lines, fold.reserve_after) = (Some(200), 64);
            }
            let mut held_first = Vec::new();
            for (i, part) in lines.chunks(64).enumerate() {
                let rows: Vec<Line> = part
                    .iter()
                    .map(|(r, o, c, t, a, ch)| (*r, o.as_str(), c.as_str(), *t, *a, *ch))
                    .collect();
                fold.add(batch(&rows)).unwrap();
                if shards == 3 {
                    let held = fold.shards.iter().map(|shard| shard.ordered_ts.len());
                    match i {
                        0 => held_first = held.collect(),
                        1 => {
                            for (shard, first) in fold.shards.iter().zip(&held_first) {
                                let room = shard.revenue.capacity();
                                assert!(room * 64 >= first * 200, "{first} orders in 64 lines, room for {room}");
                            }
                        }
                        _ => {}
                    }
                }
            }
            fold.finish(&DataType::String, true).unwrap()
        };
        let one = fold_with(1);
        assert_eq!(one.orders.height(), 40);
        assert_eq!(one.customer_ids.len(), 7);
        for shards in [2, 3] {
            let many = fold_with(shards);
            assert!(canonical(&many).equals_missing(&canonical(&one)), "{shards} shards");
            assert!(many.customer_ids.equals(&one.customer_ids));
            assert!(many.channels.as_ref().unwrap().equals(one.channels.as_ref().unwrap()));
            assert_eq!(many.lines_by_reason, one.lines_by_reason);
        }
    }

    #[test]
    fn integer_order_ids_fold_like_text_ids_with_repeats_merged_between_batches() {
        // Orders 0..29 whose lines come back in later batches (every order repeats), one order
        // with two customers, channel ties at the earliest instant, a refund line.
        let names = ["web", "app", "shop"];
        type IntLine = (i32, i64, String, i64, i64, Option<&'static str>);
        let lines: Vec<IntLine> = (0..240)
            .map(|i: i64| {
                let order = (i * 11) % 30;
                let customer = if order == 4 && i > 100 { 9 } else { order % 6 };
                let channel = (i % 4 != 0).then_some(names[(i % 3) as usize]);
                let ts = 1_000 + (i % 5) * 10 - (order % 2) * 10;
                let amount = if i % 17 == 0 { -3 } else { i };
                (
                    (i % 13 == 0) as i32 * 5,
                    order,
                    format!("c{customer}"),
                    ts,
                    amount,
                    channel,
                )
            })
            .collect();
        let text = {
            let mut fold = OrderFold::new(&DataType::String, &DataType::String, 1, false);
            for part in lines.chunks(16) {
                let ids: Vec<String> = part.iter().map(|l| format!("o{}", l.1)).collect();
                let rows: Vec<Line> = part
                    .iter()
                    .zip(&ids)
                    .map(|(l, id)| (l.0, id.as_str(), l.2.as_str(), l.3, l.4, l.5))
                    .collect();
                fold.add(batch(&rows)).unwrap();
            }
            fold.finish(&DataType::String, true).unwrap()
        };
        // Dense ids (bitmap mode), ids 2^40 apart (sort mode), one far id (a switch midway).
        let spreads: [fn(i64) -> i64; 3] = [|o| o, |o| o << 40, |o| if o == 29 { o << 40 } else { o }];
        for (spread, shards) in (0..3).flat_map(|spread| [(spread, 1), (spread, 3)]) {
            let mut fold = OrderFold::new(&DataType::Int64, &DataType::String, shards, false);
            for shard in &mut fold.shards {
                if let OrderKeys::Runs(runs) = &mut shard.orders {
                    (runs.merge_at, runs.merge_floor) = (7, 7);
                    runs.bitmap_bits = 1 << PAGE_BITS;
                }
            }
            let mut merges_seen = 0;
            let mut before = vec![0; shards];
            for part in lines.chunks(16) {
                let mut frame = batch(
                    &part
                        .iter()
                        .map(|l| (l.0, "", l.2.as_str(), l.3, l.4, l.5))
                        .collect::<Vec<Line>>(),
                );
                let ids: Vec<i64> = part.iter().map(|l| spreads[spread](l.1)).collect();
                frame.with_column(Column::new("order_id".into(), ids)).unwrap();
                fold.add(frame).unwrap();
                let held: Vec<usize> = fold
                    .shards
                    .iter()
                    .map(|shard| match &shard.orders {
                        OrderKeys::Runs(runs) => runs.held(),
                        OrderKeys::Text(_) | OrderKeys::Lookup(_) => panic!("integer ids are runs"),
                    })
                    .collect();
                let total: usize = held.iter().sum();
                assert!(total < 2 * 30 + 16 * shards, "merged as it goes: {total} runs held");
                // A shard holding fewer runs than after the previous batch has merged.
                merges_seen += held.iter().zip(&before).filter(|(now, then)| now < then).count();
                before = held;
            }
            assert!(merges_seen >= 3, "{merges_seen} merges");
            let bitmaps = fold
                .shards
                .iter()
                .filter(|shard| matches!(&shard.orders, OrderKeys::Runs(runs) if runs.seen.is_some()))
                .count();
            let expected = match spread {
                0 => shards..=shards,
                1 => 0..=0,
                _ => 0..=shards - 1,
            };
            assert!(
                expected.contains(&bitmaps),
                "spread {spread}: {bitmaps} of {shards} in bitmap mode"
            );
            let runs = fold.finish(&DataType::String, true).unwrap();
            assert_eq!(runs.orders.height(), 30);
            // Same orders (one shard: in the same first-seen order), customers, channels, flags.
            if shards == 1 {
                assert!(
                    runs.orders.equals_missing(&text.orders),
                    "{}\n{}",
                    runs.orders,
                    text.orders
                );
                // Each order's customer (text ids of merged runs stay interned: numbered, unused).
                let customer_of = |folded: &FoldedOrders| {
                    let ids = folded.orders.column("id").unwrap().u32().unwrap().clone();
                    folded
                        .customer_ids
                        .take(&ids.cast(&IDX_DTYPE).unwrap().idx().unwrap().clone())
                        .unwrap()
                };
                assert!(customer_of(&runs).equals(&customer_of(&text)));
            } else {
                assert!(
                    canonical(&runs).equals_missing(&canonical(&text)),
                    "{shards} shards, spread {spread}"
                );
            }
            assert!(runs.channels.unwrap().equals(text.channels.as_ref().unwrap()));
            let several = runs.orders.column("several_customers").unwrap().bool().unwrap().sum();
            assert_eq!(several, Some(1), "order 4 names customers c4 and c9");
        }
    }

    #[test]
    fn seen_ids_take_a_page_per_2_16_ids_and_refuse_pages_past_the_limit() {
        let limit = 4 << PAGE_BITS;
        let mut seen = SeenIds::default();
        let inserts = [
            (5, Some(true)),
            (5, Some(false)),
            (-1, Some(true)),
            (65_535, Some(true)),
            (65_536, Some(true)),
            (i64::MAX, Some(true)),
            (i64::MIN, None),
            (65_537, Some(true)),
            (65_536, Some(false)),
            (i64::MAX, Some(false)),
            (i64::MAX - 1, Some(true)),
            (-65_537, None),
            (-65_536, Some(true)),
        ];
        for (id, expected) in inserts {
            assert_eq!(seen.insert(id, limit), expected, "id {id}");
        }
        assert_eq!(seen.pages.len(), 4);
        assert_eq!(seen.bits.len(), 4 * PAGE_WORDS);
    }

    /// One random order line for `the_fold_equals_a_polars_group_by`: order, line number (6:
    /// none, 5: a number far from the order's others), customer (7: another customer than the
    /// order's), time, amount in cents, channel (3: none), included.
    type RandomLine = (i64, u8, u8, i64, i64, u8, bool);

    /// The lines as the scan gives them: `order_id` and `customer_id` as text or Int64.
    fn random_batch(lines: &[RandomLine], text_ids: bool, with_line: bool) -> DataFrame {
        let customer = |&(order, _, other, ..): &RandomLine| (order + i64::from(other == 7)) % 5;
        let id = |prefix: &str, value: i64| -> AnyValue<'static> {
            match text_ids {
                true => AnyValue::StringOwned(format!("{prefix}{value}").into()),
                false => AnyValue::Int64(value),
            }
        };
        let key = |name: &str, values: Vec<AnyValue<'static>>| {
            let dtype = if text_ids { DataType::String } else { DataType::Int64 };
            Column::new(
                name.into(),
                Series::from_any_values_and_dtype(name.into(), &values, &dtype, true).unwrap(),
            )
        };
        let mut columns = vec![
            key("order_id", lines.iter().map(|l| id("o", l.0)).collect()),
            key("customer_id", lines.iter().map(|l| id("c", customer(l))).collect()),
            Column::new("ts".into(), lines.iter().map(|l| l.3).collect::<Vec<_>>()),
            Column::new(
                "amount".into(),
                lines.iter().map(|l| l.4 as f64 / 100.0).collect::<Vec<_>>(),
            ),
            Column::new(
                "channel".into(),
                lines
                    .iter()
                    .map(|l| ["web", "app", "store_partner_network"].get(usize::from(l.5)).copied())
                    .collect::<Vec<_>>(),
            ),
            Column::new("include".into(), lines.iter().map(|l| l.6).collect::<Vec<_>>()),
            // A cost of two thirds of the amount (negative with it), null on line number 4.
            Column::new(
                "cost".into(),
                lines
                    .iter()
                    .map(|l| (l.1 != 4).then(|| (l.4 * 2 / 3) as f64 / 100.0))
                    .collect::<Vec<_>>(),
            ),
        ];
        if with_line {
            let number = |l: &RandomLine| match l.1 {
                6 => None,
                5 => Some(1_000 + l.0),
                n => Some(i64::from(n)),
            };
            columns.push(Column::new("line".into(), lines.iter().map(number).collect::<Vec<_>>()));
        }
        DataFrame::new_infer_height(columns).unwrap()
    }

    /// (customer or "" for an order of several customers, time, revenue in micro-units, lines,
    /// several customers, channel, cost in micro-units or 0 without costs) of each order, sorted.
    type OrderRow = (String, i64, i64, u32, bool, Option<String>, i64);

    fn folded_rows(folded: &FoldedOrders) -> Vec<OrderRow> {
        let orders = &folded.orders;
        let text = |series: &Series, index: usize| series.get(index).unwrap().to_string().trim_matches('"').to_string();
        let ids = orders.column("id").unwrap().u32().unwrap();
        let ts = orders.column("ordered_ts").unwrap().i64().unwrap();
        let revenue = orders.column("revenue").unwrap().i64().unwrap();
        let lines = orders.column("lines").unwrap().u32().unwrap();
        let several = orders.column("several_customers").unwrap().bool().unwrap();
        let channel = orders.column("channel").unwrap().u32().unwrap();
        let cost = orders.column("cost").ok().map(|cost| cost.i64().unwrap().clone());
        let names = folded.channels.as_ref().unwrap();
        let mut rows: Vec<OrderRow> = (0..orders.height())
            .map(|i| {
                let several = several.get(i).unwrap();
                let customer = match several {
                    true => String::new(),
                    false => text(&folded.customer_ids, ids.get(i).unwrap() as usize),
                };
                let code = channel.get(i).unwrap();
                let channel = (code != NO_CHANNEL).then(|| text(names, code as usize));
                (
                    customer,
                    ts.get(i).unwrap(),
                    revenue.get(i).unwrap(),
                    lines.get(i).unwrap(),
                    several,
                    channel,
                    cost.as_ref().map_or(0, |cost| cost.get(i).unwrap()),
                )
            })
            .collect();
        rows.sort();
        rows
    }

    /// The same orders by a polars group-by over the included lines, first copies only of a
    /// repeated (order_id, line) when `line` is mapped.
    fn group_by_rows(lines: &[RandomLine], text_ids: bool, with_line: bool, with_cost: bool) -> Vec<OrderRow> {
        let frame = random_batch(lines, text_ids, with_line);
        let mut seen = std::collections::HashSet::new();
        let first_copies: Vec<bool> = (0..frame.height())
            .map(|row| {
                let included = lines[row].6;
                match (
                    with_line,
                    frame.column("line").ok().and_then(|l| l.i64().unwrap().get(row)),
                ) {
                    (true, Some(number)) if included => seen.insert((lines[row].0, number)),
                    _ => included,
                }
            })
            .collect();
        let keep = BooleanChunked::from_slice("keep".into(), &first_copies);
        let grouped = frame
            .filter(&keep)
            .unwrap()
            .lazy()
            .with_column(col("customer_id").cast(DataType::String))
            .group_by([col("order_id")])
            .agg([
                col("customer_id").n_unique().gt(lit(1)).alias("several"),
                col("customer_id").first().alias("customer"),
                col("ts").min().alias("ordered_ts"),
                (col("amount") * lit(1e6))
                    .round(0, RoundMode::HalfAwayFromZero)
                    .cast(DataType::Int64)
                    .sum()
                    .alias("revenue"),
                len().alias("lines"),
                (col("cost").fill_null(lit(0.0)) * lit(1e6))
                    .round(0, RoundMode::HalfAwayFromZero)
                    .cast(DataType::Int64)
                    .sum()
                    .alias("cost"),
                col("channel")
                    .filter(col("ts").eq(col("ts").min()))
                    .min()
                    .alias("channel"),
            ])
            .collect()
            .unwrap();
        let column = |name: &str| grouped.column(name).unwrap().as_materialized_series().clone();
        let cost = column("cost");
        let (several, customer, ts, revenue, count, channel) = (
            column("several"),
            column("customer"),
            column("ordered_ts"),
            column("revenue"),
            column("lines"),
            column("channel"),
        );
        let mut rows: Vec<OrderRow> = (0..grouped.height())
            .map(|i| {
                let several = several.bool().unwrap().get(i).unwrap();
                (
                    match several {
                        true => String::new(),
                        false => customer.str().unwrap().get(i).unwrap().to_string(),
                    },
                    ts.i64().unwrap().get(i).unwrap(),
                    revenue.i64().unwrap().get(i).unwrap(),
                    count.cast(&DataType::UInt32).unwrap().u32().unwrap().get(i).unwrap(),
                    several,
                    channel.str().unwrap().get(i).map(str::to_string),
                    if with_cost {
                        cost.i64().unwrap().get(i).unwrap()
                    } else {
                        0
                    },
                )
            })
            .collect();
        rows.sort();
        rows
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

        /// The fold equals a polars group-by on random lines whose orders and repeated lines
        /// are spread across batches and shards: text and integer ids, with and without `line`
        /// (a repeated (order_id, line) counts once, the first copy in the files), with and
        /// without costs (null costs count as 0).
        #[test]
        fn the_fold_equals_a_polars_group_by(
            mut lines in proptest::collection::vec(
                (0i64..25, 0u8..7, 0u8..8, 0i64..40, -500i64..5000, 0u8..4, proptest::bool::weighted(0.9)),
                1..250,
            ),
            repeats in proptest::collection::vec((0usize..1000, 0usize..1000), 0..60),
            cuts in proptest::collection::btree_set(1usize..250, 0..6),
            text_ids: bool,
            with_line: bool,
            with_cost: bool,
            shards in 1usize..4,
            spread: bool,
        ) {
            if spread {
                // Ids over many pages of the integer index, which allows two: it turns into a
                // hash table part way.
                for line in &mut lines {
                    line.0 *= 40_000;
                }
            }
            // Exact copies of earlier lines, placed anywhere after them.
            for (from, to) in repeats {
                let from = from % lines.len();
                let to = from + 1 + to % lines.len();
                let copy = lines[from];
                lines.insert(to.min(lines.len()), copy);
            }
            let dtype = if text_ids { DataType::String } else { DataType::Int64 };
            let mut fold = OrderFold::new(&dtype, &dtype, shards, with_line);
            fold.has_cost = with_cost;
            for shard in &mut fold.shards {
                if let OrderKeys::Lookup(index) = &mut shard.orders {
                    index.slot_limit = 2 << PAGE_BITS;
                }
            }
            let mut start = 0;
            for cut in cuts.iter().copied().filter(|&cut| cut < lines.len()).chain([lines.len()]) {
                if cut > start {
                    fold.add(random_batch(&lines[start..cut], text_ids, with_line)).unwrap();
                    start = cut;
                }
            }
            let folded = fold.finish(&dtype, true).unwrap();
            let expected = group_by_rows(&lines, text_ids, with_line, with_cost);
            let duplicates = lines.iter().filter(|l| l.6).count() as u64
                - expected.iter().map(|row| u64::from(row.3)).sum::<u64>();
            proptest::prop_assert_eq!(folded_rows(&folded), expected);
            proptest::prop_assert_eq!(folded.duplicate_lines, duplicates);
        }
    }
}
