#!/usr/bin/env python3
"""pipeline's Spark job: the same tables as `pipeline run CONFIG`, computed on a Spark cluster.

    spark-submit [--master URL] spark/pipeline_spark.py CONFIG [--output-dir DIR] [--shards N]

Spark reads the orders input, moves the data between steps and schedules the tasks; every
metric is computed by pipeline's Rust code, called in the tasks through the `pipeline_native`
extension module (spark/setup.sh builds and installs it). The driver's side of the run (merging
partials, fitting, finalizing, publishing the snapshot and its manifest) is Rust too: this file
only turns its requests into Spark jobs. The protocol: src/runner/spark/mod.rs and
docs/scale-out.md.

The config, its inputs and the output folder must be at paths the driver and every executor can
read (in local mode, any local path; on a cluster, a shared mount). The exit code is the one
`pipeline run` gives: 0 published, 1 the run failed, 2 the config or command is wrong.
"""

import argparse
import json
import os
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

import pipeline_native as native

# Everything between the tasks and the driver (src/runner/spark/mod.rs, `Blob`).
BLOB_SCHEMA = "shard int, kind string, name string, tab int, part int, payload binary"
BLOB_COLUMNS = ["shard", "kind", "name", "tab", "part", "payload"]
BLOB_TYPES = [pa.int32(), pa.string(), pa.string(), pa.int32(), pa.int32(), pa.binary()]


def parquet_bytes(batch):
    """A record batch as Parquet bytes, the form the module reads tables in."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_batches([batch]), sink, compression="none")
    return sink.getvalue().to_pybytes()


def blob_table(blobs):
    """The module's blobs (tuples) as an Arrow table of BLOB_SCHEMA."""
    columns = list(zip(*blobs)) if blobs else [[] for _ in BLOB_COLUMNS]
    return pa.table(
        {name: pa.array(list(values), kind) for name, values, kind in zip(BLOB_COLUMNS, columns, BLOB_TYPES)}
    )


def blob_rows(table):
    """An Arrow table of BLOB_SCHEMA as the module's blobs."""
    return list(zip(*(table.column(name).to_pylist() for name in BLOB_COLUMNS)))


def concise(error):
    """A failed Spark job's error as the task's own message: a task's error from the module is a
    RuntimeError inside Spark's Java trace (its message may span lines, up to the trace's next
    part). Anything else stays whole."""
    lines = str(error).splitlines()
    starts = [at for at, line in enumerate(lines) if line.startswith("RuntimeError: ")]
    if not starts:
        return error
    message = [lines[starts[-1]][len("RuntimeError: "):]]
    for line in lines[starts[-1] + 1:]:
        if not line.strip() or line.startswith(("\tat ", "JVM stacktrace", "Traceback")):
            break
        message.append(line)
    return RuntimeError("\n".join(message))


def as_blob(row):
    """A Spark row of BLOB_SCHEMA as a blob (binary comes back as bytearray)."""
    return (row.shard, row.kind, row.name, row.tab, row.part, bytes(row.payload))


class SparkBackend:
    """The Spark side of the driver: each method is one step of src/runner/spark/mod.rs."""

    def __init__(self, spark, verbose):
        self.spark = spark
        self.verbose = verbose
        self.orders = []  # per orders source, its orders blobs by customer shard
        self.rows = []  # per sweep, the per-customer rows it gave
        self.sweeps = 0

    def kept_bytes(self, name):
        """Bytes of a step's blobs in the scratch folder."""
        folder = os.path.join(self.scratch, name)
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)

    def report(self, step, started, name=None, extra=""):
        """One line per step (at --log info): its time and the bytes it kept in the scratch folder."""
        if not self.verbose:
            return
        kept = f", {self.kept_bytes(name) / 1e6:.1f} MB kept" if name else ""
        print(f"spark step {step}: {time.time() - started:.1f} s{kept}{extra}", file=sys.stderr, flush=True)

    def start(self, scratch, job):
        self.scratch = scratch
        self.job = job
        # One marker per customer shard, so every shard runs its step in every sweep, also one
        # with no order (a survey's answers from people who never bought).
        shards = json.loads(job)["shards"]
        self.markers = self.spark.range(shards).selectExpr(
            "cast(id as int) as shard",
            "'shard' as kind",
            "'' as name",
            "0 as tab",
            "0 as part",
            "cast('' as binary) as payload",
        )

    def location(self, name):
        return "file://" + os.path.join(self.scratch, name)

    def keep(self, frame, name):
        """Write a step's blobs into the scratch folder and read them back: each task runs once."""
        try:
            frame.write.mode("overwrite").parquet(self.location(name))
        except Exception as error:
            raise concise(error) from None
        return self.spark.read.parquet(self.location(name))

    def split_orders(self, source, path, columns):
        started = time.time()
        job = self.job
        lines = self.spark.read.parquet(path).select(*[f"`{column}`" for column in columns])
        shuffled = self.spark.sparkContext.accumulator(0)

        def map_lines(batches):
            for batch in batches:
                blobs = native.map_lines(job, source, parquet_bytes(batch))
                shuffled.add(sum(len(blob[5]) for blob in blobs))
                if blobs:
                    yield from blob_table(blobs).to_batches()

        def fold_orders(table):
            return blob_table(native.fold_orders(job, source, table.column("payload").to_pylist()))

        folded = lines.mapInArrow(map_lines, BLOB_SCHEMA).groupBy("shard").applyInArrow(fold_orders, BLOB_SCHEMA)
        blobs = self.keep(folded, f"orders-{source}")
        orders = blobs.filter("kind = 'orders'")
        self.orders.append(orders)
        kept = orders.selectExpr("coalesce(sum(length(payload)), 0) as bytes").first()["bytes"]
        self.report(f"orders `{source}`", started, f"orders-{source}", f", lines shuffled {shuffled.value / 1e6:.1f} MB")
        return [as_blob(row) for row in blobs.filter("shard < 0").collect()], int(kept)

    def inputs(self):
        frames = [self.markers] + self.orders + self.rows
        union = frames[0]
        for frame in frames[1:]:
            union = union.unionByName(frame)
        return union

    def sweep(self, work):
        started = time.time()
        job = self.job
        shared = self.spark.sparkContext.broadcast(bytes(work))

        def sweep_shard(table):
            shard = table.column("shard")[0].as_py()
            return blob_table(native.sweep_shard(job, shared.value, shard, blob_rows(table)))

        out = self.inputs().groupBy("shard").applyInArrow(sweep_shard, BLOB_SCHEMA)
        name = f"sweep-{self.sweeps}"
        blobs = self.keep(out, name)
        self.report(f"sweep {self.sweeps}", started, name, f", work {len(work) / 1e6:.1f} MB")
        self.sweeps += 1
        self.rows.append(blobs.filter("kind = 'rows'"))
        partials = (as_blob(row) for row in blobs.filter("kind = 'partial'").toLocalIterator())
        return self.kept_bytes(name), partials

    def all_rows(self, stage, table):
        rows = self.rows[0]
        for frame in self.rows[1:]:
            rows = rows.unionByName(frame)
        return rows.filter(f"name = '{stage}' and tab = {table}")

    def table_rows(self, stage, table):
        rows = self.all_rows(stage, table).orderBy("part")
        return (as_blob(row) for row in rows.toLocalIterator())

    def write_parts(self, stage, table, spec):
        started = time.time()
        job = self.job

        def write_part(ranges):
            part = ranges.column("part")[0].as_py()
            rows = native.write_part(job, spec, part, ranges.column("payload").to_pylist())
            return pa.table({"rows": pa.array([rows], pa.int64())})

        ranges = self.all_rows(stage, table).filter("part >= 0").groupBy("part")
        try:
            rows = sum(row["rows"] for row in ranges.applyInArrow(write_part, "rows long").collect())
        except Exception as error:
            raise concise(error) from None
        self.report(f"table {os.path.basename(json.loads(spec)['dir'])}", started, extra=f", {rows} rows")
        return int(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the pipeline's TOML config")
    parser.add_argument("--output-dir", help="publish here instead of the config's output_dir")
    parser.add_argument(
        "--shards",
        type=int,
        help="customer shards (default: Spark's default parallelism, or one per 4M lines if more)",
    )
    parser.add_argument("--log", default="info", help="log level of the driver (error, warn, info, debug)")
    args = parser.parse_args()

    # Executors run this environment's Python, which has pyarrow and the module.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    # The job reads timestamps as instants (UTC). The rest are defaults that spark-submit's
    # --conf overrides: a task's error is reported by the job itself, so Spark's log is quiet.
    spark = SparkSession.builder.appName("pipeline").config("spark.sql.session.timeZone", "UTC").getOrCreate()
    given = spark.sparkContext.getConf()
    if not given.contains("spark.sql.execution.arrow.maxRecordsPerBatch"):
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "262144")
    if not given.contains("spark.log.level"):
        spark.sparkContext.setLogLevel("FATAL")
    try:
        code = native.run(
            os.path.abspath(args.config),
            SparkBackend(spark, args.log in ("info", "debug", "trace")),
            output_dir=os.path.abspath(args.output_dir) if args.output_dir else None,
            shards=args.shards,
            parallelism=spark.sparkContext.defaultParallelism,
            log=args.log,
        )
    finally:
        spark.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
