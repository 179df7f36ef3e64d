//! `pipeline_native`, the Python extension module of the Spark job (built by maturin with the
//! `python` feature: `spark/setup.sh`). Thin: it turns Python values into the Rust calls of
//! `runner::spark` and back. Tables cross as Parquet bytes; the driver's backend is the Python
//! object `spark/pipeline_spark.py` passes to `run`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::{Backend, Blob, Blobs, Job};

/// A blob as Python sees it: (shard, kind, name, table, part, payload).
type PyBlob<'py> = (i32, String, String, i32, i32, Bound<'py, PyBytes>);

fn to_py<'py>(py: Python<'py>, blob: Blob) -> PyBlob<'py> {
    (
        blob.shard,
        blob.kind,
        blob.name,
        blob.table,
        blob.part,
        PyBytes::new(py, &blob.payload),
    )
}

fn from_py(value: &Bound<'_, PyAny>) -> Result<Blob> {
    let (shard, kind, name, table, part, payload): (i32, String, String, i32, i32, Bound<'_, PyBytes>) = value
        .extract()
        .map_err(|e| anyhow::anyhow!("a blob from Python: {e}"))?;
    Ok(Blob {
        shard,
        kind,
        name,
        table,
        part,
        payload: payload.as_bytes().to_vec(),
    })
}

/// An error for Python: the whole chain, as the command line prints it.
fn py_error(error: anyhow::Error) -> PyErr {
    PyRuntimeError::new_err(format!("{error:#}"))
}

fn job_of(job: &str) -> PyResult<Job> {
    Job::from_json(job).map_err(py_error)
}

/// The driver's Spark backend: the Python object's methods.
struct PyBackend {
    object: Py<PyAny>,
}

/// Python's exception as an error: a `RuntimeError` (the module's and the job's own errors) by
/// its message, anything else (a bug in the job) with its traceback.
fn rust_error(py: Python<'_>, error: PyErr) -> anyhow::Error {
    if error.is_instance_of::<PyRuntimeError>(py) {
        let message = error.value(py).to_string();
        return anyhow::anyhow!("{message}");
    }
    let traceback = error
        .traceback(py)
        .and_then(|traceback| traceback.format().ok())
        .unwrap_or_default();
    anyhow::anyhow!("{traceback}{error}")
}

/// A Python iterator of blobs, pulled one at a time.
struct PyBlobs {
    iterator: Py<PyAny>,
}

impl Iterator for PyBlobs {
    type Item = Result<Blob>;

    fn next(&mut self) -> Option<Result<Blob>> {
        Python::attach(|py| {
            let iterator = self.iterator.bind(py);
            match iterator.call_method0("__next__") {
                Ok(value) => Some(from_py(&value)),
                Err(error) if error.is_instance_of::<pyo3::exceptions::PyStopIteration>(py) => None,
                Err(error) => Some(Err(rust_error(py, error))),
            }
        })
    }
}

impl PyBackend {
    fn call(
        &self,
        method: &str,
        args: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyTuple>>,
    ) -> Result<Py<PyAny>> {
        Python::attach(|py| {
            let args = args(py).map_err(|e| rust_error(py, e))?;
            self.object
                .bind(py)
                .call_method1(method, args)
                .map(Bound::unbind)
                .map_err(|e| rust_error(py, e))
                .with_context(|| format!("the Spark job's `{method}`"))
        })
    }

    fn blobs(
        &self,
        method: &str,
        args: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyTuple>>,
    ) -> Result<Blobs> {
        let result = self.call(method, args)?;
        let iterator = Python::attach(|py| {
            result
                .bind(py)
                .try_iter()
                .map(|iterator| iterator.into_any().unbind())
                .map_err(|e| rust_error(py, e))
        })?;
        Ok(Box::new(PyBlobs { iterator }))
    }
}

impl Backend for PyBackend {
    fn start(&mut self, scratch: &Path, job: &str) -> Result<()> {
        let scratch = scratch.display().to_string();
        self.call("start", |py| pyo3::types::PyTuple::new(py, [scratch, job.to_string()]))?;
        Ok(())
    }

    fn split_orders(&mut self, source: &str, path: &Path, columns: &[String]) -> Result<(Vec<Blob>, u64)> {
        let path = path.display().to_string();
        let result = self.call("split_orders", |py| {
            (source.to_string(), path, columns.to_vec()).into_pyobject(py)
        })?;
        Python::attach(|py| -> Result<(Vec<Blob>, u64)> {
            let (blobs, bytes): (Vec<Bound<'_, PyAny>>, u64) =
                result.bind(py).extract().map_err(|e| rust_error(py, e))?;
            Ok((blobs.iter().map(from_py).collect::<Result<_>>()?, bytes))
        })
    }

    fn sweep(&mut self, work: Vec<u8>) -> Result<(u64, Blobs)> {
        let result = self.call("sweep", |py| (PyBytes::new(py, &work),).into_pyobject(py))?;
        let (kept, iterator) = Python::attach(|py| -> Result<(u64, Py<PyAny>)> {
            let (kept, partials): (u64, Bound<'_, PyAny>) = result.bind(py).extract().map_err(|e| rust_error(py, e))?;
            let iterator = partials.try_iter().map_err(|e| rust_error(py, e))?;
            Ok((kept, iterator.into_any().unbind()))
        })?;
        Ok((kept, Box::new(PyBlobs { iterator })))
    }

    fn table_rows(&mut self, stage: usize, table: usize) -> Result<Blobs> {
        self.blobs("table_rows", |py| (stage, table).into_pyobject(py))
    }

    fn write_parts(&mut self, stage: usize, table: usize, spec: &str) -> Result<u64> {
        let rows = self.call("write_parts", |py| (stage, table, spec.to_string()).into_pyobject(py))?;
        Python::attach(|py| rows.bind(py).extract().map_err(|e| rust_error(py, e)))
    }
}

/// Run a config as a Spark job (the driver's side): `backend` runs the Spark jobs. Returns the
/// exit code, having printed the outcome as `pipeline run` does.
#[pyfunction]
#[pyo3(signature = (config, backend, output_dir=None, shards=None, parallelism=2, log="info"))]
fn run(
    py: Python<'_>,
    config: PathBuf,
    backend: Py<PyAny>,
    output_dir: Option<PathBuf>,
    shards: Option<usize>,
    parallelism: usize,
    log: &str,
) -> i32 {
    crate::logging::init(log, crate::logging::LogFormat::Text);
    crate::install_panic_hook();
    let mut backend = PyBackend { object: backend };
    // Without the GIL: the backend takes it for each call into Python.
    let result =
        py.detach(|| crate::catch_panics(|| super::run(&config, output_dir, shards, parallelism, &mut backend)));
    match result {
        Ok(manifest) => {
            let tables: usize = manifest.stages.iter().map(|s| s.tables.len()).sum();
            eprintln!(
                "published {tables} table(s) as of {} in {:.2} s ({} shards on Spark)",
                manifest.as_of.as_deref().unwrap_or("-"),
                manifest.duration_seconds,
                manifest.shards.as_ref().map_or(1, |s| s.shards)
            );
            0
        }
        Err(error) => {
            let text = format!("{error:#}");
            if text.starts_with("error: ") {
                eprintln!("{}", text.trim_end());
            } else {
                eprintln!("error: {text}");
            }
            crate::exit_code(&error)
        }
    }
}

/// Task: one batch of the input's columns (Parquet bytes) as lines blobs by order shard.
#[pyfunction]
fn map_lines<'py>(py: Python<'py>, job: &str, source: &str, batch: &[u8]) -> PyResult<Vec<PyBlob<'py>>> {
    let job = job_of(job)?;
    let blobs = py
        .detach(|| {
            crate::catch_panics(|| {
                let batch = super::bytes_table(batch)?;
                super::map_lines(&job, source, batch)
            })
        })
        .map_err(py_error)?;
    Ok(blobs.into_iter().map(|blob| to_py(py, blob)).collect())
}

/// Task: an order shard's lines (their payloads) folded: orders blobs by customer shard and the
/// driver's blobs.
#[pyfunction]
fn fold_orders<'py>(
    py: Python<'py>,
    job: &str,
    source: &str,
    lines: Vec<Bound<'py, PyBytes>>,
) -> PyResult<Vec<PyBlob<'py>>> {
    let job = job_of(job)?;
    let parts: Vec<&[u8]> = lines.iter().map(|part| part.as_bytes()).collect();
    let blobs = py
        .detach(|| crate::catch_panics(|| super::fold_orders(&job, source, &parts)))
        .map_err(py_error)?;
    Ok(blobs.into_iter().map(|blob| to_py(py, blob)).collect())
}

/// Task: a sweep's work on one customer shard, from its blobs; its partials and rows.
#[pyfunction]
fn sweep_shard<'py>(
    py: Python<'py>,
    job: &str,
    work: &[u8],
    shard: usize,
    blobs: Vec<Bound<'py, PyAny>>,
) -> PyResult<Vec<PyBlob<'py>>> {
    let job = job_of(job)?;
    let blobs: Vec<Blob> = blobs.iter().map(from_py).collect::<Result<_>>().map_err(py_error)?;
    let out = py
        .detach(|| crate::catch_panics(|| super::sweep_shard(&job, work, shard, blobs)))
        .map_err(py_error)?;
    Ok(out.into_iter().map(|blob| to_py(py, blob)).collect())
}

/// Task: one id range of a per-customer table (its rows' payloads) written as a part; its rows.
#[pyfunction]
fn write_part(
    py: Python<'_>,
    job: &str,
    spec: &str,
    part: usize,
    payloads: Vec<Bound<'_, PyBytes>>,
) -> PyResult<usize> {
    let job = job_of(job)?;
    let payloads: Vec<&[u8]> = payloads.iter().map(|payload| payload.as_bytes()).collect();
    py.detach(|| crate::catch_panics(|| super::write_part(&job, spec, part, &payloads)))
        .map_err(py_error)
}

#[pymodule]
fn pipeline_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(run, module)?)?;
    module.add_function(wrap_pyfunction!(map_lines, module)?)?;
    module.add_function(wrap_pyfunction!(fold_orders, module)?)?;
    module.add_function(wrap_pyfunction!(sweep_shard, module)?)?;
    module.add_function(wrap_pyfunction!(write_part, module)?)?;
    Ok(())
}
