"""distillery from Python: distil large models into small, fast ones, with the Rust engine
of the ``distillery`` command line underneath.

Four entry points:

- :func:`run` runs an experiment file exactly as ``distillery run CONFIG --out DIR`` does;
- :func:`load` reads a saved model (any kind, any precision) for prediction, scoring and
  ONNX export;
- :func:`distill` trains a student from a teacher: outputs you computed in Python (so any
  Python model is a teacher), a distillery model, or an ONNX file;
- :func:`submodels` trains K sub-models that learn from one another (the sub-model scheme).

Arrays: float32, C-contiguous NumPy arrays are read in place (no copy at the boundary);
anything else array-like (other dtypes, Fortran order, pandas frames) is converted once. Do not
write into an array while a call that reads it runs. The GIL is released while the engine
works, progress lines go to ``sys.stderr``, and Ctrl-C stops training cleanly with
``KeyboardInterrupt`` (the run folder keeps its checkpoints: the same call resumes).

Errors: bad input raises ``ValueError`` with the command line's one-line message (which names
the argument, field or row); file-system errors raise ``OSError``; a diverging loss or an
internal failure raises ``RuntimeError``.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native

__all__ = [
    "Model",
    "Submodels",
    "run",
    "load",
    "distill",
    "submodels",
    "__version__",
]

__version__: str = _native.version()

ArrayLike = Any
Tunable = Union[float, str]

# ---------------------------------------------------------------------------------------------
# Arrays


def _features(x: ArrayLike, what: str) -> np.ndarray:
    """Features as a float32 C-contiguous array: read in place when it already is one."""
    if x is None:
        raise ValueError(f"{what}: required")
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{what}: expected numbers, got an array of dtype {a.dtype}")
    if a.ndim not in (2, 4):
        raise ValueError(
            f"{what}: expected a 2-D array (samples × features) or a 4-D one "
            f"(samples × channels × height × width), got shape {a.shape}"
        )
    if a.shape[0] == 0:
        raise ValueError(f"{what}: no samples")
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        r, *c = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(
            f"{what}: row {r}, column {tuple(int(v) for v in c) if len(c) > 1 else int(c[0])} "
            f"is {a[(r, *c)]}, not a finite number"
        )
    return a


def _inputs(x: ArrayLike, shape: Sequence[int], what: str = "X") -> np.ndarray:
    """Inputs for a model taking samples of `shape`: one sample or a batch, any array-like."""
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{what}: expected numbers, got an array of dtype {a.dtype}")
    per = int(np.prod(shape))
    if a.ndim == 1 and a.size == per:
        a = a.reshape(1, per)
    elif a.ndim >= 2 and int(np.prod(a.shape[1:])) == per:
        pass
    else:
        raise ValueError(
            f"{what}: the model takes samples of shape {tuple(shape)} ({per} values), "
            f"but {what} has shape {a.shape}"
        )
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=np.float32)
    return a


def _targets(y: ArrayLike, n: int, regression: bool, what: str):
    """(labels as strings, None) for classification, (None, float32 values) for regression."""
    a = np.asarray(y)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array of {n} targets, got shape {a.shape}")
    if len(a) != n:
        raise ValueError(f"{what}: {len(a)} targets for {n} samples")
    if regression:
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{what}: regression needs numbers, got dtype {a.dtype}")
        v = np.ascontiguousarray(a, dtype=np.float32)
        if not np.isfinite(v).all():
            raise ValueError(f"{what}: row {int(np.argmin(np.isfinite(v)))} is not a finite number")
        return None, v
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{what}: row {int(np.argmin(np.isfinite(a)))} is not a finite label")
    # As the command line reads a CSV label column: each label's text, classes sorted
    # (numerically when every label is a number).
    return [str(v) for v in a.tolist()], None


def _outputs(t: ArrayLike, n: int, what: str) -> np.ndarray:
    a = np.asarray(t)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{what}: expected numbers, got an array of dtype {a.dtype}")
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    if a.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array (samples × outputs), got shape {a.shape}")
    if a.shape[0] != n:
        raise ValueError(f"{what}: {a.shape[0]} rows, but X has {n} samples")
    return np.ascontiguousarray(a, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Models


class Model:
    """A saved distillery model: a network (f32, int8, weight-only int8/int4) or a tree model.

    ``predict`` gives class probabilities (``n × classes``, columns in ``classes`` order) or
    regression values (``n``), from raw inputs: the model file's normalisation is applied. A
    multi-task model's ``predict`` gives a dict of such arrays, one per head (``heads``, in
    order; an embedding head ``n × dim``).
    """

    def __init__(self, native: "_native.Model", record: Optional[Dict[str, Any]] = None):
        self._m = native
        self._shape = list(native.input_shape)
        self._per = 1
        for v in self._shape:
            self._per *= v
        #: The model's record in its run's ``metrics.json`` (test scores, size, latency,
        #: training curves), when it came from a run.
        self.record: Optional[Dict[str, Any]] = record

    def predict(self, X: ArrayLike, batch_size: int = 256) -> Union[np.ndarray, Dict[str, np.ndarray]]:
        """Class probabilities (``n × classes``) or values (``n``) for raw inputs ``X``
        (one sample, or ``n`` samples of the model's input shape); a multi-task model: a dict
        of them by head name."""
        if batch_size < 1:
            raise ValueError(f"batch_size: expected at least 1, got {batch_size}")
        # The common case, a float32 C-contiguous batch of rows, goes straight through.
        if (
            type(X) is np.ndarray
            and X.dtype == np.float32
            and X.ndim == 2
            and X.shape[1] == self._per
            and X.flags.c_contiguous
        ):
            return self._m.predict(X, batch_size)
        return self._m.predict(_inputs(X, self._shape), batch_size)

    def predict_labels(self, X: ArrayLike, batch_size: int = 256) -> np.ndarray:
        """The most likely class name of each sample (classification models)."""
        if self._m.task != "classification":
            raise ValueError("predict_labels: a regression model predicts values; use predict")
        if self.heads:
            raise ValueError(
                f"predict_labels: a multi-task model has heads {self.heads}; use predict, a dict by head"
            )
        p = self.predict(X, batch_size)
        names = self._m.classes
        try:
            # Labels that were whole numbers come back as numbers.
            classes = np.asarray([int(c) for c in names])
        except ValueError:
            classes = np.asarray(names, dtype=object)
        return classes[p.argmax(axis=1)]

    def evaluate(self, X: ArrayLike, y: ArrayLike) -> Dict[str, Any]:
        """Scores on raw data: ``accuracy``, ``errors``, ``loss``, ``f1`` (classification) or
        ``mse``, ``mae``, ``loss`` (regression, in the target's units)."""
        x = _inputs(X, self._m.input_shape)
        labels, values = _targets(y, x.shape[0], self._m.task == "regression", "y")
        return json.loads(self._m.evaluate(x, labels, values))

    def export_onnx(self, path: Union[str, os.PathLike]) -> str:
        """Writes the model as ONNX (the same writer as an experiment's ``[[export]]``);
        returns the path."""
        self._m.export_onnx(os.fspath(path))
        return os.fspath(path)

    @property
    def heads(self) -> List[str]:
        """A multi-task model's heads, in order (empty for one task)."""
        return list(self._m.heads)

    @property
    def path(self) -> str:
        """The model file."""
        return self._m.path

    @property
    def params(self) -> int:
        """Number of parameters (tree models: node thresholds and leaf values)."""
        return self._m.params

    @property
    def bytes(self) -> int:
        """Bytes of the weights as stored."""
        return self._m.bytes

    @property
    def architecture(self) -> str:
        """The architecture in words, with its precision."""
        return self._m.architecture

    @property
    def task(self) -> str:
        """``"classification"`` or ``"regression"``."""
        return self._m.task

    @property
    def classes(self) -> Optional[List[str]]:
        """Class names in ``predict``'s column order (classification)."""
        return self._m.classes

    @property
    def input_shape(self) -> List[int]:
        """The shape of one sample."""
        return self._m.input_shape

    def __repr__(self) -> str:
        return (
            f"distillery.Model({self.architecture}, {self.params} params, "
            f"{self.bytes} bytes, {self.task})"
        )


def load(path: Union[str, os.PathLike]) -> Model:
    """Reads a model file (``models/<name>.safetensors`` of a run, any precision)."""
    return Model(_native.Model.load(os.fspath(path)))


# ---------------------------------------------------------------------------------------------
# Experiments


def run(
    config_path: Union[str, os.PathLike],
    out_dir: Union[str, os.PathLike],
    *,
    set: Optional[Sequence[str]] = None,
    quick: bool = False,
    quiet: bool = False,
) -> Dict[str, Any]:
    """Runs an experiment file exactly as ``distillery run CONFIG --out OUT_DIR`` does (``set``:
    the command line's ``--set KEY=VALUE`` overrides; ``quick``: its ``--quick``, tiny data and
    one epoch, for smoke tests) and returns ``metrics.json`` as a dict. A run killed or
    interrupted resumes from the same ``out_dir``."""
    text = _native.run_config(
        os.fspath(config_path), os.fspath(out_dir), list(set or []), bool(quick), bool(quiet)
    )
    return json.loads(text)


def _arch(spec: Union[str, Mapping[str, Any]], what: str) -> Dict[str, Any]:
    """An ``arch`` table from a dict (as in an experiment file) or a shorthand:
    ``"mlp:128,64"``, ``"cnn:8,16"``, ``"decision-tree"``, ``"boosted-trees"``."""
    if isinstance(spec, Mapping):
        return dict(spec)
    if not isinstance(spec, str):
        raise ValueError(f"{what}: expected a string such as 'mlp:64' or an arch dict")
    kind, _, rest = spec.partition(":")
    widths = [w.strip() for w in rest.split(",") if w.strip()]
    try:
        nums = [int(w) for w in widths]
    except ValueError:
        raise ValueError(f"{what}: '{spec}': the widths after ':' must be whole numbers") from None
    if kind == "mlp":
        return {"kind": "mlp", "hidden": nums or [64]}
    if kind == "cnn":
        return {"kind": "cnn", "channels": nums or [8, 16]}
    if kind in ("decision-tree", "boosted-trees"):
        if nums:
            raise ValueError(f"{what}: '{spec}': give tree settings as a dict, e.g. {{'kind': '{kind}', 'depth': 6}}")
        return {"kind": kind}
    raise ValueError(
        f"{what}: '{spec}': expected mlp[:W,...], cnn[:C,...], decision-tree, boosted-trees or an arch dict"
    )


def _data_table(x: np.ndarray, task: str, validation: float, test: Optional[float]) -> Dict[str, Any]:
    d: Dict[str, Any] = {"format": "arrays", "task": task, "val_fraction": float(validation)}
    if test is not None:
        d["test_fraction"] = float(test)
    if x.ndim == 4:
        d["image_shape"] = [int(v) for v in x.shape[1:]]
    return d


def _task(task: Optional[str], y: Any, teacher_cols: Optional[int]) -> str:
    if task is not None:
        if task not in ("classification", "regression"):
            raise ValueError(f"task: expected 'classification' or 'regression', got {task!r}")
        return task
    if teacher_cols is not None and teacher_cols > 1:
        return "classification"
    if y is not None and np.asarray(y).dtype.kind == "f":
        return "regression"
    if y is None and teacher_cols == 1:
        return "regression"
    return "classification"


def _out(out: Optional[Union[str, os.PathLike]], prefix: str) -> str:
    return os.fspath(out) if out is not None else tempfile.mkdtemp(prefix=prefix)


def _record(metrics: Dict[str, Any], name: str) -> Optional[Dict[str, Any]]:
    return next((r for r in metrics.get("models", []) if r.get("name") == name), None)


def distill(
    X: ArrayLike,
    y: Optional[ArrayLike] = None,
    *,
    teacher_outputs: Optional[ArrayLike] = None,
    outputs_kind: str = "logits",
    teacher: Optional[Union[Model, str, os.PathLike]] = None,
    student: Union[str, Mapping[str, Any]] = "mlp:64",
    temperature: Tunable = "auto",
    alpha: Tunable = "auto",
    epochs: int = 30,
    train: Optional[Mapping[str, Any]] = None,
    validation: float = 0.1,
    test: float = 0.2,
    X_test: Optional[ArrayLike] = None,
    y_test: Optional[ArrayLike] = None,
    teacher_test_outputs: Optional[ArrayLike] = None,
    task: Optional[str] = None,
    seed: int = 42,
    out: Optional[Union[str, os.PathLike]] = None,
    quiet: bool = False,
) -> Tuple[Model, Dict[str, Any]]:
    """Trains a student from a teacher and returns ``(student, record)``.

    The teacher is one of:

    - ``teacher_outputs``: its outputs on every row of ``X`` (``n × classes`` logits, or
      probabilities with ``outputs_kind="probs"``, or log-probabilities with
      ``"log-probs"``; ``n`` values for regression), computed by any Python model;
    - ``teacher``: a distillery :class:`Model` (or a model file path ending in
      ``.safetensors``), or an ONNX file (``.onnx``) that takes raw feature rows.

    ``y`` holds the labels (or values). Without ``y`` the student learns from the teacher
    alone: its labels are the teacher's argmax (its values, for regression), ``alpha`` is 1,
    and the test scores measure agreement with the teacher (with ``temperature="auto"``, the
    guard may keep the student trained on those hard labels instead, when it validates
    better).

    ``X`` is split as the command line splits a CSV file, with the same seed: ``test`` of it
    for testing (unless ``X_test``/``y_test`` are given), then ``validation`` of the rest for
    early stopping and for ``"auto"``. ``temperature`` and ``alpha`` are numbers or
    ``"auto"``: short trials on the validation split choose them, and the winner is kept only
    if it beats the same student trained on labels alone. ``student`` is an ``arch`` table (a
    dict, as in an experiment file) or a shorthand (``"mlp:128,64"``, ``"cnn:8,16"``,
    ``"decision-tree"``, ``"boosted-trees"``); ``train`` adds training settings (``lr``,
    ``batch_size``, ``schedule``, ``patience``, …) to ``epochs``.

    The run is written to ``out`` (a new temporary folder when not given): ``config.toml``
    (with ``data.format = "arrays"``), ``models/student.safetensors``, ``metrics.json``,
    ``report.md`` and plots. The same call with the same ``out`` resumes an interrupted run.

    Returns the student and its record from ``metrics.json`` (test scores, size, latency, the
    training curves, what "auto" chose); ``record["run"]`` is the run folder and
    ``record["teacher"]`` the teacher's record.
    """
    x = _features(X, "X")
    n = x.shape[0]
    given = [teacher_outputs is not None, teacher is not None]
    if sum(given) != 1:
        raise ValueError("give exactly one teacher: teacher_outputs=array, or teacher=Model or a model/ONNX path")
    kinds = ("logits", "probs", "log-probs")
    if outputs_kind not in kinds:
        raise ValueError(f"outputs_kind: expected one of {', '.join(kinds)}, got {outputs_kind!r}")
    if epochs < 1:
        raise ValueError(f"epochs: expected at least 1, got {epochs}")

    teacher_table: Optional[Dict[str, Any]] = None
    model_teacher: Optional[Dict[str, Any]] = None
    outputs: List[Tuple[str, np.ndarray, Optional[np.ndarray]]] = []
    if teacher is not None:
        path = teacher.path if isinstance(teacher, Model) else os.fspath(teacher)
        if path.endswith(".onnx"):
            teacher_table = {"name": "teacher", "onnx": path}
        else:
            if y is None:
                # Labels come from the teacher: its outputs on X, as probabilities.
                m = teacher if isinstance(teacher, Model) else load(path)
                teacher_outputs = m.predict(x)
                outputs_kind = "probs" if m.task == "classification" else "logits"
            else:
                model_teacher = {"name": "teacher", "role": "teacher", "from": path}
    if teacher_outputs is not None:
        t = _outputs(teacher_outputs, n, "teacher_outputs")
        tt = None
        if teacher_test_outputs is not None:
            if X_test is None:
                raise ValueError("teacher_test_outputs: goes with X_test and y_test")
            tt = _outputs(teacher_test_outputs, len(np.asarray(X_test)), "teacher_test_outputs")
        outputs.append(("teacher", t, tt))
        teacher_table = {"name": "teacher", "outputs": "teacher"}
        if outputs_kind != "logits":
            teacher_table["outputs_kind"] = outputs_kind
    elif teacher_test_outputs is not None:
        raise ValueError("teacher_test_outputs: goes with teacher_outputs")

    cols = outputs[0][1].shape[1] if outputs else None
    kind = _task(task, y, cols)
    regression = kind == "regression"
    if y is None:
        if not outputs:
            raise ValueError("y: required with an ONNX teacher (or give teacher_outputs)")
        if alpha not in ("auto", 1, 1.0):
            raise ValueError(f"alpha: without labels (y=None) the student learns from the teacher alone; alpha must be 1, got {alpha}")
        alpha = 1.0
        t = outputs[0][1]
        y = t[:, 0] if regression else t.argmax(axis=1)
        if y_test is None and X_test is not None:
            raise ValueError("y_test: required with X_test")
    labels, values = _targets(y, n, regression, "y")

    xt = tl = tv = None
    if X_test is not None or y_test is not None:
        if X_test is None or y_test is None:
            raise ValueError("X_test and y_test: give both, or neither")
        xt = _features(X_test, "X_test")
        tl, tv = _targets(y_test, xt.shape[0], regression, "y_test")

    tr: Dict[str, Any] = {"epochs": int(epochs)}
    tr.update(dict(train or {}))
    cfg: Dict[str, Any] = {
        "name": "distill",
        "seed": int(seed),
        "data": _data_table(x, kind, validation, None if xt is not None else test),
        "model": [],
    }
    if teacher_table is not None:
        cfg["teacher"] = [teacher_table]
    if model_teacher is not None:
        cfg["model"].append(model_teacher)
    cfg["model"].append(
        {
            "name": "student",
            "role": "student",
            "arch": _arch(student, "student"),
            "train": tr,
            "distill": {"teacher": "teacher", "temperature": temperature, "alpha": alpha},
        }
    )
    folder = _out(out, "distillery-distill-")
    metrics = json.loads(
        _native.run_arrays(
            json.dumps(cfg), folder, x, labels, values, xt, tl, tv, outputs, bool(quiet)
        )
    )
    record = dict(_record(metrics, "student") or {})
    record["run"] = folder
    record["teacher"] = _record(metrics, "teacher")
    student_model = Model(
        _native.Model.load(os.path.join(folder, "models", "student.safetensors")), record
    )
    return student_model, record


class Submodels:
    """The sub-models of :func:`submodels`: ``members`` (each a :class:`Model`), the group's
    record (``rounds`` with disagreement and per-member validation accuracy, the kept round,
    why it stopped), and ``ensemble``, the members' averaged prediction's test record."""

    def __init__(self, members: List[Model], group: Dict[str, Any], ensemble: Optional[Dict[str, Any]], metrics: Dict[str, Any], run: str):
        self.members = members
        self.group = group
        self.ensemble = ensemble
        self.metrics = metrics
        self.run = run

    @property
    def rounds(self) -> List[Dict[str, Any]]:
        """One record per transfer round."""
        return list(self.group.get("rounds", []))

    def predict(self, X: ArrayLike, batch_size: int = 256) -> np.ndarray:
        """The ensemble: the members' probabilities (values) averaged."""
        return np.mean([m.predict(X, batch_size) for m in self.members], axis=0)

    def __repr__(self) -> str:
        acc = (self.ensemble or {}).get("accuracy")
        what = f", ensemble accuracy {acc:.4f}" if acc is not None else ""
        return f"distillery.Submodels(k={len(self.members)}, {len(self.rounds)} rounds{what})"


def submodels(
    X: ArrayLike,
    y: ArrayLike,
    *,
    k: int = 4,
    shards: bool = False,
    rounds: int = 5,
    tolerance: float = 1e-3,
    arch: Union[str, Mapping[str, Any]] = "mlp:64",
    peers: str = "stale",
    peer_weight: Tunable = "auto",
    temperature: Optional[Tunable] = None,
    epochs: int = 30,
    epochs_per_round: int = 2,
    train: Optional[Mapping[str, Any]] = None,
    validation: float = 0.1,
    test: float = 0.2,
    X_test: Optional[ArrayLike] = None,
    y_test: Optional[ArrayLike] = None,
    task: Optional[str] = None,
    seed: int = 42,
    out: Optional[Union[str, os.PathLike]] = None,
    quiet: bool = False,
) -> Submodels:
    """Trains ``k`` sub-models (``arch`` each; on all of the data, or each on its own shard
    with ``shards=True``) for ``epochs``, then runs up to ``rounds`` transfer rounds in which
    each learns from the others' predictions (``peers="stale"``: the previous round's;
    ``"live"``: their current ones, deep mutual learning), until their disagreement falls
    below ``tolerance``. ``peer_weight`` (β) and ``temperature`` are numbers or ``"auto"``
    (chosen on the validation split against β = 0, no transfer). The round with the best
    ensemble validation score is kept. Returns a :class:`Submodels`."""
    x = _features(X, "X")
    n = x.shape[0]
    if k < 2:
        raise ValueError(f"k: expected at least 2 sub-models, got {k}")
    kind = _task(task, y, None)
    labels, values = _targets(y, n, kind == "regression", "y")
    xt = tl = tv = None
    if X_test is not None or y_test is not None:
        if X_test is None or y_test is None:
            raise ValueError("X_test and y_test: give both, or neither")
        xt = _features(X_test, "X_test")
        tl, tv = _targets(y_test, xt.shape[0], kind == "regression", "y_test")
    tr: Dict[str, Any] = {"epochs": int(epochs)}
    tr.update(dict(train or {}))
    transfer: Dict[str, Any] = {
        "peers": peers,
        "rounds": int(rounds),
        "tolerance": float(tolerance),
        "epochs_per_round": int(epochs_per_round),
        "peer_weight": peer_weight,
    }
    if temperature is not None:
        transfer["temperature"] = temperature
    cfg = {
        "name": "submodels",
        "seed": int(seed),
        "data": _data_table(x, kind, validation, None if xt is not None else test),
        "submodels": [
            {
                "name": "sub",
                "k": int(k),
                "shards": bool(shards),
                "arch": _arch(arch, "arch"),
                "phase1": tr,
                "transfer": transfer,
            }
        ],
    }
    folder = _out(out, "distillery-submodels-")
    metrics = json.loads(
        _native.run_arrays(json.dumps(cfg), folder, x, labels, values, xt, tl, tv, [], bool(quiet))
    )
    members = [
        Model(
            _native.Model.load(os.path.join(folder, "models", f"sub-{i}.safetensors")),
            _record(metrics, f"sub-{i}"),
        )
        for i in range(1, k + 1)
    ]
    group = next((g for g in metrics.get("submodel_groups", []) if g.get("name") == "sub"), {})
    return Submodels(members, group, _record(metrics, "sub-ensemble"), metrics, folder)
