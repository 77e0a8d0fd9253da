//! `distillery._native`: the Rust side of the Python package. Thin: every function here turns
//! Python values into the library's types, runs the library with the GIL released, and turns
//! the result (or the error) back. The Python API, its checks of dtypes and shapes, and its
//! docstrings live in `python/distillery/__init__.py`.
//!
//! Long work (training) runs on a worker thread while the calling thread waits with the GIL
//! released, waking every 50 ms to forward progress lines to `sys.stderr` (so that a notebook
//! shows them) and to check for Ctrl-C; on Ctrl-C the library is asked to stop
//! (`progress::interrupt`), the worker returns at its next step, and `KeyboardInterrupt` is
//! raised. Checkpoints written so far stay in the run folder, so the same call resumes.

use distillery::compress::AnyModel;
use distillery::data::{self, Arrays, Dataset, Rows, Targets};
use distillery::error::Error;
use distillery::pipeline::{self, RunOptions};
use distillery::progress::{self, Progress};
use numpy::PyUntypedArrayMethods;
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArrayDyn};
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The library's error as the Python exception a user expects, with the CLI's one-line message.
fn to_py(e: Error) -> PyErr {
    match e {
        Error::Input(m) => PyValueError::new_err(m),
        Error::Interrupted => PyKeyboardInterrupt::new_err(
            "interrupted: the run folder keeps its checkpoints, and the same call resumes from them",
        ),
        e @ Error::Io { .. } => PyOSError::new_err(e.to_string()),
        e => PyRuntimeError::new_err(e.to_string()),
    }
}

enum Msg {
    Line(String),
    Done,
}

/// Runs `f` on a worker thread with the GIL released; forwards progress lines to
/// `sys.stderr` (unless `quiet`) and turns Ctrl-C into an interrupt of the library.
fn run_blocking<T: Send>(
    py: Python<'_>,
    quiet: bool,
    f: impl FnOnce() -> distillery::error::Result<T> + Send,
) -> PyResult<T> {
    let (tx, rx) = mpsc::channel::<Msg>();
    progress::clear_interrupt();
    if !quiet {
        let line_tx = tx.clone();
        progress::set_sink(Some(Arc::new(move |s: &str| {
            let _ = line_tx.send(Msg::Line(s.to_string()));
        })));
    }
    let mut interrupted: Option<PyErr> = None;
    let outcome = std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            let r = f();
            let _ = tx.send(Msg::Done);
            r
        });
        let mut done = false;
        // The receiver travels into each wait and back (it may not be shared across threads).
        let mut rx = rx;
        while !done {
            let (msgs, back) = py.detach(move || {
                let mut v = Vec::new();
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(m) => {
                        v.push(m);
                        v.extend(rx.try_iter());
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => v.push(Msg::Done),
                }
                (v, rx)
            });
            rx = back;
            for m in msgs {
                match m {
                    Msg::Line(s) => write_stderr(py, &s),
                    Msg::Done => done = true,
                }
            }
            if !done && interrupted.is_none() {
                if let Err(e) = py.check_signals() {
                    progress::interrupt();
                    interrupted = Some(e);
                }
            }
        }
        worker.join()
    });
    progress::set_sink(None);
    progress::clear_interrupt();
    if interrupted.is_some() {
        // Raised whether or not the work had finished: the user pressed Ctrl-C.
        return Err(to_py(Error::Interrupted));
    }
    match outcome {
        Ok(r) => r.map_err(to_py),
        Err(_) => Err(PyRuntimeError::new_err(
            "distillery: internal error (a panic in the engine); please report it",
        )),
    }
}

fn write_stderr(py: Python<'_>, line: &str) {
    if let Ok(sys) = py.import("sys") {
        if let Ok(err) = sys.getattr("stderr") {
            let _ = err.call_method1("write", (format!("{line}\n"),));
            let _ = err.call_method0("flush");
        }
    }
}

/// A NumPy array's values, read in place by the library (`data::Rows::Borrowed`). The array is
/// kept alive by the reference held here; the Python package documents that it must not be
/// written while a call that reads it runs.
struct NumpyRows {
    _owner: Py<PyAny>,
    ptr: *const f32,
    len: usize,
}

// SAFETY: the pointer is into the buffer of a C-contiguous float32 array that `_owner` keeps
// alive; it is only read. Py<PyAny> is Send and Sync.
unsafe impl Send for NumpyRows {}
unsafe impl Sync for NumpyRows {}

impl AsRef<[f32]> for NumpyRows {
    fn as_ref(&self) -> &[f32] {
        // SAFETY: see the Send impl: a live, contiguous buffer of `len` f32 values.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A C-contiguous float32 array (the Python side converts anything else once, before this).
fn borrow_rows(a: &PyReadonlyArrayDyn<'_, f32>, what: &str) -> PyResult<(Rows, Vec<usize>)> {
    let shape = a.shape().to_vec();
    let s = a.as_slice().map_err(|_| {
        PyValueError::new_err(format!("{what}: expected a C-contiguous float32 array"))
    })?;
    let rows = Rows::Borrowed(Arc::new(NumpyRows {
        _owner: a.as_any().clone().unbind(),
        ptr: s.as_ptr(),
        len: s.len(),
    }));
    Ok((rows, shape))
}

/// Targets from the Python side: class labels as strings (mapped as the CLI maps a CSV label
/// column), or regression values.
fn targets(
    labels: Option<Vec<String>>,
    values: Option<PyReadonlyArray1<'_, f32>>,
    classes: Option<&[String]>,
    what: &str,
) -> PyResult<Targets> {
    match (labels, values) {
        (Some(l), None) => data::text::class_targets(&l, classes, what).map_err(to_py),
        (None, Some(v)) => Ok(Targets::Values(
            v.as_slice()
                .map_err(|_| PyValueError::new_err(format!("{what}: expected a 1-D array")))?
                .to_vec(),
        )),
        _ => Err(PyValueError::new_err(format!(
            "{what}: give class labels or values"
        ))),
    }
}

fn dataset(rows: Rows, shape: &[usize], t: Targets, what: &str) -> PyResult<Dataset> {
    let n = shape.first().copied().unwrap_or(0);
    if t.len() != n {
        return Err(PyValueError::new_err(format!(
            "{what}: {} targets for {n} samples",
            t.len()
        )));
    }
    Ok(Dataset::from_rows(rows, shape[1..].to_vec(), t))
}

/// Runs an experiment file as `distillery run CONFIG --out OUT` does; returns `metrics.json`'s
/// text.
#[pyfunction]
#[pyo3(signature = (config, out, overrides, quick, quiet))]
fn run_config(
    py: Python<'_>,
    config: PathBuf,
    out: PathBuf,
    overrides: Vec<String>,
    quick: bool,
    quiet: bool,
) -> PyResult<String> {
    run_blocking(py, quiet, move || {
        let mut cfg = distillery::config::load(&config, &overrides)?;
        if quick {
            cfg.make_quick();
        }
        let cfg = cfg
            .validate()
            .map_err(|e| Error::Input(format!("{}: {e}", config.display())))?;
        let mut opts = RunOptions::new(&out);
        opts.progress = progress_mode(quiet);
        let summary = pipeline::run_experiment(&cfg, &opts)?;
        serde_json::to_string(&summary.metrics).map_err(|e| Error::Other(e.to_string()))
    })
}

fn progress_mode(quiet: bool) -> Progress {
    if quiet {
        Progress::Quiet
    } else {
        Progress::Lines
    }
}

/// One teacher's outputs: its name in the config, the rows for the data and (optionally) for
/// the test set.
type OutputArrays<'py> = (
    String,
    PyReadonlyArrayDyn<'py, f32>,
    Option<PyReadonlyArrayDyn<'py, f32>>,
);

/// Runs an experiment given as JSON (the same tables as an experiment file) over arrays:
/// `data.format = "arrays"`. Returns `metrics.json`'s text.
#[pyfunction]
#[pyo3(signature = (config_json, out, x, labels, values, x_test, test_labels, test_values, outputs, quiet))]
#[allow(clippy::too_many_arguments)]
fn run_arrays(
    py: Python<'_>,
    config_json: &str,
    out: PathBuf,
    x: PyReadonlyArrayDyn<'_, f32>,
    labels: Option<Vec<String>>,
    values: Option<PyReadonlyArray1<'_, f32>>,
    x_test: Option<PyReadonlyArrayDyn<'_, f32>>,
    test_labels: Option<Vec<String>>,
    test_values: Option<PyReadonlyArray1<'_, f32>>,
    outputs: Vec<OutputArrays<'_>>,
    quiet: bool,
) -> PyResult<String> {
    let cfg: distillery::config::ExperimentConfig =
        serde_json::from_str(config_json).map_err(|e| {
            // The JSON is ours, made from keyword arguments: its line and column mean nothing
            // to the caller, the field's name does.
            let m = e.to_string();
            let m = m.rfind(" at line ").map(|i| &m[..i]).unwrap_or(&m);
            PyValueError::new_err(format!("settings: {m}"))
        })?;
    let cfg = cfg.validate().map_err(to_py)?;
    let (rows, shape) = borrow_rows(&x, "X")?;
    let train = dataset(rows, &shape, targets(labels, values, None, "y")?, "y")?;
    let classes = train.class_names().map(|c| c.to_vec());
    let test = match x_test {
        Some(xt) => {
            let (rows, shape) = borrow_rows(&xt, "X_test")?;
            Some(dataset(
                rows,
                &shape,
                targets(test_labels, test_values, classes.as_deref(), "y_test")?,
                "y_test",
            )?)
        }
        None => None,
    };
    let mut arrays = Arrays {
        data: Some(train),
        test,
        ..Default::default()
    };
    for (name, a, t) in &outputs {
        let (train, shape) = borrow_rows(a, &format!("outputs of teacher '{name}'"))?;
        let cols = shape.iter().skip(1).product();
        let test = match t {
            Some(t) => {
                let (rows, ts) = borrow_rows(t, &format!("test outputs of teacher '{name}'"))?;
                if ts.iter().skip(1).product::<usize>() != cols {
                    return Err(PyValueError::new_err(format!(
                        "teacher_test_outputs: {} columns, but teacher_outputs has {cols}",
                        ts.iter().skip(1).product::<usize>()
                    )));
                }
                Some(rows)
            }
            None => None,
        };
        arrays
            .outputs
            .insert(name.clone(), data::ArrayOutputs { cols, train, test });
    }
    let arrays = Arc::new(arrays);
    // The last reference to the borrowed arrays is dropped here, with the GIL held.
    let keep = arrays.clone();
    let r = run_blocking(py, quiet, move || {
        let mut opts = RunOptions::new(&out);
        opts.progress = progress_mode(quiet);
        opts.arrays = Some(arrays);
        let summary = pipeline::run_experiment(&cfg, &opts)?;
        serde_json::to_string(&summary.metrics).map_err(|e| Error::Other(e.to_string()))
    });
    drop(keep);
    r
}

/// A saved model of any kind and precision (network, int8, weight-only, trees).
#[pyclass(frozen, module = "distillery._native")]
struct Model {
    inner: Arc<AnyModel>,
    path: PathBuf,
}

fn input_rows<'a>(m: &AnyModel, x: &'a PyReadonlyArrayDyn<'_, f32>) -> PyResult<&'a [f32]> {
    let dim = m.meta.spec.input_dim();
    let shape = x.shape();
    let per: usize = shape.iter().skip(1).product();
    if shape.is_empty() || per != dim {
        return Err(PyValueError::new_err(format!(
            "X: the model takes samples of shape {:?} ({dim} values), but X has shape {shape:?}",
            m.meta.spec.input_shape
        )));
    }
    x.as_slice()
        .map_err(|_| PyValueError::new_err("X: expected a C-contiguous float32 array"))
}

#[pymethods]
impl Model {
    /// Reads a model file (`models/<name>.safetensors` of a run).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Model> {
        let p = path.clone();
        let m = py
            .detach(move || distillery::compress::load_any(&p))
            .map_err(to_py)?;
        Ok(Model {
            inner: Arc::new(m),
            path,
        })
    }

    /// Class probabilities (`n × classes`) or values (`n`), in the target's units; a
    /// multi-task model: a dict of such arrays (embedding heads `n × dim`), one per head.
    fn predict<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f32>,
        batch: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let m = &*self.inner;
        let rows = input_rows(m, &x)?;
        let n = x.shape()[0];
        if !m.meta.heads.is_empty() {
            // A multi-task model: a dict of arrays, one per head, by task name.
            let heads = py
                .detach(|| distillery::predict::head_outputs(m, rows, batch))
                .map_err(to_py)?;
            let d = pyo3::types::PyDict::new(py);
            for (h, v) in heads {
                let a = PyArray1::from_vec(py, v);
                if h.kind == distillery::models::HeadKind::Values {
                    d.set_item(&h.name, a)?;
                } else {
                    d.set_item(&h.name, a.reshape([n, h.outputs])?)?;
                }
            }
            return Ok(d.into_any());
        }
        let out = if n <= 4 {
            // A few rows: releasing the GIL would cost more than the call.
            distillery::predict::probabilities(m, rows, batch)
        } else {
            py.detach(|| distillery::predict::probabilities(m, rows, batch))
        }
        .map_err(to_py)?;
        let c = m.meta.spec.outputs;
        if m.meta.task == data::Task::Regression {
            Ok(PyArray1::from_vec(py, out).into_any())
        } else {
            let a = PyArray1::from_vec(py, out);
            Ok(a.reshape([n, c])?.into_any())
        }
    }

    /// Seconds per call of the Rust prediction alone (normalisation, forward pass, softmax) on
    /// `x`, the median of `repeats` timings of `iters` calls each: what `predict` costs
    /// without the Python layer (BENCHMARKS.md's overhead figure).
    fn time_rust(
        &self,
        py: Python<'_>,
        x: PyReadonlyArrayDyn<'_, f32>,
        iters: usize,
        repeats: usize,
    ) -> PyResult<f64> {
        let m = &*self.inner;
        let rows = input_rows(m, &x)?;
        let n = x.shape()[0];
        py.detach(|| {
            let mut t = Vec::new();
            for _ in 0..repeats.max(1) {
                let s = Instant::now();
                for _ in 0..iters.max(1) {
                    std::hint::black_box(distillery::predict::probabilities(
                        m,
                        std::hint::black_box(rows),
                        n,
                    )?);
                }
                t.push(s.elapsed().as_secs_f64() / iters.max(1) as f64);
            }
            t.sort_by(f64::total_cmp);
            Ok(t[t.len() / 2])
        })
        .map_err(to_py)
    }

    /// Scores on raw data: a JSON object (accuracy, errors, loss, F1; or MSE, MAE).
    #[pyo3(signature = (x, labels, values))]
    fn evaluate(
        &self,
        py: Python<'_>,
        x: PyReadonlyArrayDyn<'_, f32>,
        labels: Option<Vec<String>>,
        values: Option<PyReadonlyArray1<'_, f32>>,
    ) -> PyResult<String> {
        let m = &*self.inner;
        input_rows(m, &x)?;
        let (rows, shape) = borrow_rows(&x, "X")?;
        let t = targets(labels, values, None, "y")?;
        let d = dataset(rows, &shape, t, "y")?;
        let name = self.path.display().to_string();
        let scores = py
            .detach(|| pipeline::evaluate_model(m, d, &name))
            .map_err(to_py)?;
        serde_json::to_string(&scores).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Writes the model as ONNX (the writer of `[[export]]`), atomically.
    fn export_onnx(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let m = &*self.inner;
        py.detach(|| -> distillery::error::Result<()> {
            let bytes = distillery::compress::onnx::export(m)?;
            distillery::io::write_atomic(&path, &bytes)
        })
        .map_err(to_py)
    }

    /// Where the model was read from.
    #[getter]
    fn path(&self) -> String {
        self.path.display().to_string()
    }

    /// A multi-task model's heads, in order (empty for one task).
    #[getter]
    fn heads(&self) -> Vec<String> {
        self.inner
            .meta
            .heads
            .iter()
            .map(|h| h.name.clone())
            .collect()
    }

    /// Number of parameters (tree models: nodes and leaf values).
    #[getter]
    fn params(&self) -> usize {
        self.inner.num_params()
    }

    /// Bytes of the weights as stored.
    #[getter]
    fn bytes(&self) -> usize {
        self.inner.bytes()
    }

    /// The architecture in words, e.g. `mlp 64→32 (f32)`.
    #[getter]
    fn architecture(&self) -> String {
        format!(
            "{} ({})",
            self.inner.meta.spec.describe(),
            self.inner.precision().as_str()
        )
    }

    /// `classification` or `regression`.
    #[getter]
    fn task(&self) -> &'static str {
        match self.inner.meta.task {
            data::Task::Classification => "classification",
            data::Task::Regression => "regression",
        }
    }

    /// Class names, in the order of `predict`'s columns (classification).
    #[getter]
    fn classes(&self) -> Option<Vec<String>> {
        self.inner.meta.class_names.clone()
    }

    /// The shape of one sample.
    #[getter]
    fn input_shape(&self) -> Vec<usize> {
        self.inner.meta.spec.input_shape.clone()
    }

    /// Whether the model reads token ids of texts (then `predict` takes those ids).
    #[getter]
    fn text(&self) -> bool {
        self.inner.meta.text.is_some()
    }
}

/// The library's version.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Reads `x` (float32, C-contiguous) and returns a copy of its first row, without the library:
/// the floor of what a call into this module costs (used by the overhead benchmark).
#[pyfunction]
fn echo<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let s = x
        .as_slice()
        .map_err(|_| PyValueError::new_err("X: expected a C-contiguous float32 array"))?;
    let n = x.shape().first().copied().unwrap_or(0).max(1);
    let per = s.len() / n;
    PyArray1::from_vec(py, s[..per].to_vec()).reshape([1, per])
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    distillery::pin_thread_counts();
    m.add_function(wrap_pyfunction!(run_config, m)?)?;
    m.add_function(wrap_pyfunction!(run_arrays, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(echo, m)?)?;
    m.add_class::<Model>()?;
    Ok(())
}
