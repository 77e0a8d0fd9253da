"""The examples in python/examples, run as a user runs them (in this process, through runpy),
with their results checked. scikit-learn and PyTorch are needed only here: an example whose
library is missing is skipped, and says so."""

import pathlib
import runpy

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def run(name):
    return runpy.run_path(str(EXAMPLES / name), run_name="__main__")["results"]


def test_sklearn_gradient_boosting_teacher():
    pytest.importorskip("sklearn")
    r = run("sklearn_teacher.py")
    # The student keeps the teacher's accuracy within 3 points at a fraction of its size, and
    # distillation ("auto", guarded) never loses to labels alone. (Latency is printed, not
    # asserted: speed belongs in benchmarks.)
    assert r["student_accuracy"] >= r["teacher_accuracy"] - 0.03
    assert r["student_accuracy"] >= r["labels_only_accuracy"] - 1e-9
    assert r["student_bytes"] * 20 < r["teacher_bytes"]


def test_pytorch_cnn_teacher():
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    r = run("torch_cnn_teacher.py")
    assert r["teacher_accuracy"] > 0.95
    assert r["student_accuracy"] > 0.93
    assert r["student_params"] * 10 < r["teacher_params"]


def test_submodels_on_the_digits():
    pytest.importorskip("sklearn")
    r = run("submodels_digits.py")
    assert r["rounds"] >= 1
    assert r["ensemble_accuracy"] > 0.9
    assert r["ensemble_accuracy"] >= min(r["member_accuracy"])
