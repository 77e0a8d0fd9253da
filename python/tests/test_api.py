"""The Python package against the command line (identical metrics on the same data and seed),
and its handling of bad input, dtypes, shapes and layouts."""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import distillery
from conftest import DIGITS, ROOT, teacher_logits


def figures(x):
    """A record without what is timed (latency, seconds, wall time), ratios to timed figures, or
    the model file's size (its metadata holds the training times)."""
    if isinstance(x, dict):
        return {
            k: figures(v)
            for k, v in x.items()
            if not any(s in k for s in ("latency", "seconds", "wall", "vs_teacher", "file_bytes"))
        }
    if isinstance(x, list):
        return [figures(v) for v in x]
    return x


def cli_run(cli, config_text, tmp_path, name="cfg"):
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(config_text)
    out = tmp_path / f"{name}-cli"
    r = subprocess.run([cli, "run", str(cfg), "--out", str(out), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads((out / "metrics.json").read_text())


def record(metrics, name):
    return next(r for r in metrics["models"] if r["name"] == name)


# ---------------------------------------------------------------------------------------------
# Identical to the command line


def test_run_gives_the_command_lines_metrics(cli, tmp_path):
    cfg = ROOT / "configs" / "breast-cancer-sgd.toml"
    py = distillery.run(cfg, tmp_path / "py", quick=True, quiet=True)
    r = subprocess.run(
        [cli, "run", str(cfg), "--out", str(tmp_path / "cli"), "--quick", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    ref = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert len(py["models"]) >= 2
    assert figures(py["models"]) == figures(ref["models"])
    assert (tmp_path / "py" / "report.md").exists()


def test_distill_gives_the_command_lines_metrics(cli, digits, tmp_path):
    X, y = digits
    T = teacher_logits(X, y)
    np.savetxt(tmp_path / "t.csv", T, fmt="%.9g", delimiter=",", header=",".join(f"c{i}" for i in range(10)), comments="")
    ref = cli_run(
        cli,
        textwrap.dedent(
            f"""
            seed = 7
            [data]
            format = "csv"
            path = "{DIGITS}"
            label = "digit"
            val_fraction = 0.15
            test_fraction = 0.25
            [[teacher]]
            name = "teacher"
            outputs = "{tmp_path / 't.csv'}"
            [[model]]
            name = "student"
            role = "student"
            arch = {{ kind = "mlp", hidden = [32] }}
            train = {{ epochs = 6, lr = 3e-3 }}
            distill = {{ teacher = "teacher", temperature = 3.0, alpha = 0.7 }}
            """
        ),
        tmp_path,
    )
    student, rec = distillery.distill(
        X, y, teacher_outputs=T, student="mlp:32", temperature=3.0, alpha=0.7, epochs=6,
        train={"lr": 3e-3}, validation=0.15, test=0.25, seed=7, out=tmp_path / "py", quiet=True,
    )
    want = record(ref, "student")
    assert figures({k: v for k, v in rec.items() if k not in ("run", "teacher")}) == figures(want)
    same = lambda r: {k: v for k, v in figures(r).items() if k not in ("architecture", "source")}
    assert same(rec["teacher"]) == same(record(ref, "teacher"))
    assert rec["teacher"]["architecture"] == "outputs given from Python"
    assert rec["accuracy"] > 0.5
    # The returned model is the run's file, with its record.
    assert student.path.endswith(os.path.join("models", "student.safetensors"))
    assert student.params == want["params"] and student.bytes == want["bytes"]
    assert student.record["accuracy"] == want["accuracy"]


def test_submodels_give_the_command_lines_groups(cli, digits, tmp_path):
    X, y = digits
    ref = cli_run(
        cli,
        textwrap.dedent(
            f"""
            seed = 3
            [data]
            format = "csv"
            path = "{DIGITS}"
            label = "digit"
            [[submodels]]
            name = "sub"
            k = 3
            shards = true
            arch = {{ kind = "mlp", hidden = [16] }}
            phase1 = {{ epochs = 4 }}
            transfer = {{ peers = "stale", rounds = 2, tolerance = 1e-4, epochs_per_round = 1, peer_weight = 0.5 }}
            """
        ),
        tmp_path,
    )
    s = distillery.submodels(
        X, y, k=3, shards=True, rounds=2, tolerance=1e-4, arch="mlp:16", peers="stale",
        peer_weight=0.5, epochs=4, epochs_per_round=1, seed=3, out=tmp_path / "py", quiet=True,
    )
    assert figures(s.group) == figures(ref["submodel_groups"][0])
    assert figures(s.ensemble) == figures(record(ref, "sub-ensemble"))
    assert len(s.members) == 3 and len(s.rounds) >= 1
    p = s.predict(X[:5])
    assert p.shape == (5, 10) and np.allclose(p.sum(axis=1), 1, atol=1e-5)


def test_a_loaded_model_predicts_as_the_command_line_does(cli, digits, tmp_path):
    X, y = digits
    student, _ = distillery.distill(
        X, y, teacher_outputs=teacher_logits(X, y), temperature=2.0, alpha=0.5, epochs=2,
        out=tmp_path / "run", quiet=True,
    )
    m = distillery.load(student.path)
    csv = tmp_path / "x.csv"
    np.savetxt(csv, X[:20], fmt="%.9g", delimiter=",", header=",".join(f"p{i}" for i in range(64)), comments="")
    r = subprocess.run([cli, "predict", m.path, str(csv), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    want = np.array([json.loads(l)["probabilities"] for l in r.stdout.splitlines() if l.strip()], dtype=np.float32)
    got = m.predict(X[:20])
    assert got.dtype == np.float32 and got.shape == (20, 10)
    np.testing.assert_array_equal(got, want)
    assert list(m.predict_labels(X[:20])) == list(got.argmax(axis=1))
    # Scores on raw data: what `distillery evaluate` would say.
    e = m.evaluate(X, y)
    assert e["errors"] == int((m.predict(X).argmax(axis=1) != y).sum())
    # ONNX export of the same model.
    onnx = m.export_onnx(tmp_path / "m.onnx")
    assert os.path.getsize(onnx) > 1000
    assert m.task == "classification" and m.classes == [str(i) for i in range(10)]
    assert m.input_shape == [64] and "mlp" in m.architecture


def test_a_multi_task_model_predicts_a_dict_by_head(cli, tmp_path):
    m = cli_run(
        cli,
        textwrap.dedent(
            """
            seed = 2
            [data]
            format = "digits"
            [[model]]
            name = "t"
            arch = { kind = "mlp", hidden = [32] }
            train = { epochs = 3 }
            [[model]]
            name = "multi"
            arch = { kind = "mlp", hidden = [16] }
            train = { epochs = 3 }
            [[model.task]]
            name = "digit"
            teacher = "t"
            [[model.task]]
            name = "mimic"
            teacher = "t"
            labels = false
            """
        ),
        tmp_path,
    )
    assert [t["name"] for t in record(m, "multi")["tasks"]] == ["digit", "mimic"]
    model = distillery.load(tmp_path / "cfg-cli" / "models" / "multi.safetensors")
    assert model.heads == ["digit", "mimic"]
    X = np.loadtxt(DIGITS, delimiter=",", skiprows=1, max_rows=12)[:, :64].astype(np.float32)
    out = model.predict(X)
    assert list(out) == ["digit", "mimic"]
    assert out["digit"].shape == (12, 10) and out["mimic"].shape == (12, 10)
    np.testing.assert_allclose(out["digit"].sum(axis=1), 1.0, rtol=1e-5)
    csv = tmp_path / "x.csv"
    np.savetxt(csv, X, fmt="%.9g", delimiter=",", header=",".join(f"p{i}" for i in range(64)), comments="")
    r = subprocess.run([cli, "predict", model.path, str(csv), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    want = np.array([l["tasks"]["mimic"]["probabilities"] for l in lines], dtype=np.float32)
    np.testing.assert_array_equal(out["mimic"], want)
    with pytest.raises(ValueError, match="multi-task"):
        model.predict_labels(X)


def test_regression_and_a_separate_test_set(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 5))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 10.0
    Xt = rng.normal(size=(100, 5))
    yt = Xt @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 10.0
    student, rec = distillery.distill(
        X, y, teacher_outputs=y + rng.normal(scale=0.1, size=400), temperature=1.0, alpha=0.5,
        epochs=30, X_test=Xt, y_test=yt, out=tmp_path / "r", quiet=True,
    )
    assert student.task == "regression"
    p = student.predict(Xt)
    assert p.shape == (100,)
    assert rec["mse"] == pytest.approx(float(np.mean((p - yt) ** 2)), rel=1e-4)
    assert rec["mse"] < np.var(yt)


def test_without_labels_the_student_follows_the_teacher(digits, tmp_path):
    X, y = digits
    T = teacher_logits(X, y)
    student, rec = distillery.distill(X, teacher_outputs=T, temperature=2.0, epochs=10, out=tmp_path / "u", quiet=True)
    assert rec["distill"]["alpha"] == 1.0
    agree = float((student.predict(X).argmax(axis=1) == T.argmax(axis=1)).mean())
    assert agree > 0.5


def test_a_distillery_model_and_an_onnx_file_as_teachers(digits, tmp_path):
    X, y = digits
    teacher, _ = distillery.distill(
        X, y, teacher_outputs=teacher_logits(X, y), student="mlp:128", temperature=2.0, alpha=0.3,
        epochs=15, out=tmp_path / "t", quiet=True,
    )
    s1, r1 = distillery.distill(X, y, teacher=teacher, student="mlp:16", temperature=4.0, alpha=0.5, epochs=5, out=tmp_path / "s1", quiet=True)
    assert r1["teacher"]["accuracy"] == teacher.record["accuracy"]
    onnx = ROOT / "data" / "teachers" / "digits-torch-mlp.onnx"
    s2, r2 = distillery.distill(X, y, teacher=str(onnx), student="mlp:16", temperature=4.0, alpha=0.5, epochs=30, train={"lr": 3e-3}, out=tmp_path / "s2", quiet=True)
    assert r2["teacher"]["accuracy"] > 0.9 and r2["accuracy"] > 0.8


def test_a_run_folder_resumes_only_on_the_same_arrays(digits, tmp_path):
    X, y = digits
    T = teacher_logits(X, y)
    kw = dict(teacher_outputs=T, temperature=2.0, alpha=0.5, epochs=2, out=tmp_path / "r", quiet=True)
    _, a = distillery.distill(X, y, **kw)
    _, b = distillery.distill(X, y, **kw)
    assert b.pop("source") == "trained (earlier session)" and a.pop("source") == "trained"
    assert figures(a) == figures(b)
    X2 = X.copy()
    X2[0, 0] += 1
    with pytest.raises(ValueError, match="holds a run on other arrays"):
        distillery.distill(X2, y, **kw)


# ---------------------------------------------------------------------------------------------
# dtypes, shapes, layouts


def test_any_numeric_dtype_and_layout_predicts_alike(digits, tmp_path):
    X, y = digits
    student, _ = distillery.distill(X, y, teacher_outputs=teacher_logits(X, y), temperature=2.0, alpha=0.5, epochs=2, out=tmp_path / "r", quiet=True)
    want = student.predict(X[:50])
    for x in (
        X[:50].astype(np.float64),
        X[:50].astype(np.int32),
        np.asfortranarray(X[:50]),
        np.concatenate([X[:50], X[:50]], axis=1)[:, :64],  # a strided view
        X[:50].tolist(),
    ):
        np.testing.assert_array_equal(student.predict(x), want)
    one = student.predict(X[0])  # one sample, 1-D: the batch-1 kernel sums in another order
    np.testing.assert_allclose(one, want[:1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "X, message",
    [
        (np.array([["a", "b"]] * 10), "expected numbers"),
        (np.zeros(64, dtype=np.float32), "expected a 2-D array"),
        (np.zeros((10, 8, 8), dtype=np.float32), "expected a 2-D array"),
        (np.zeros((0, 64), dtype=np.float32), "no samples"),
    ],
)
def test_bad_training_arrays_raise_value_error(X, message):
    with pytest.raises(ValueError, match=message):
        distillery.distill(X, np.zeros(len(X)), teacher_outputs=np.zeros((len(X), 2)), quiet=True)


def test_bad_values_name_what_is_wrong(digits, tmp_path):
    X, y = digits
    T = teacher_logits(X, y)
    Xn = X.copy()
    Xn[5, 3] = np.nan
    with pytest.raises(ValueError, match=r"X: row 5, column 3 is nan"):
        distillery.distill(Xn, y, teacher_outputs=T, quiet=True)
    with pytest.raises(ValueError, match="y: 10 targets for 1797 samples"):
        distillery.distill(X, y[:10], teacher_outputs=T, quiet=True)
    with pytest.raises(ValueError, match="teacher_outputs: 100 rows, but X has 1797 samples"):
        distillery.distill(X, y, teacher_outputs=T[:100], quiet=True)
    # Checked by the engine: its message, as the command line prints it.
    with pytest.raises(ValueError, match=r"teacher.teacher.outputs: 3 columns, but the data have 10 classes"):
        distillery.distill(X, y, teacher_outputs=T[:, :3], temperature=2.0, alpha=0.5, out=tmp_path / "a", quiet=True)
    with pytest.raises(ValueError, match=r"probabilities must be ≥ 0 and sum to 1"):
        distillery.distill(X, y, teacher_outputs=T, outputs_kind="probs", temperature=2.0, alpha=0.5, out=tmp_path / "b", quiet=True)
    with pytest.raises(ValueError, match=r"model.student.arch.hidden"):
        distillery.distill(X, y, teacher_outputs=T, student={"kind": "mlp", "hidden": [0]}, out=tmp_path / "c", quiet=True)
    with pytest.raises(ValueError, match="unknown field `widths`"):
        distillery.distill(X, y, teacher_outputs=T, student={"kind": "mlp", "widths": [8]}, out=tmp_path / "d", quiet=True)
    with pytest.raises(ValueError, match="student: 'transformer'"):
        distillery.distill(X, y, teacher_outputs=T, student="transformer", quiet=True)


def test_prediction_inputs_of_the_wrong_shape(digits, tmp_path):
    X, y = digits
    student, _ = distillery.distill(X, y, teacher_outputs=teacher_logits(X, y), temperature=2.0, alpha=0.5, epochs=1, out=tmp_path / "r", quiet=True)
    with pytest.raises(ValueError, match=r"takes samples of shape \(64,\)"):
        student.predict(np.zeros((3, 63), dtype=np.float32))
    with pytest.raises(ValueError, match="expected numbers"):
        student.predict(np.array([["x"] * 64]))
    with pytest.raises(ValueError, match="class '11'"):
        student.evaluate(X[:3], [1, 2, 11])


def test_config_errors_are_the_command_lines(cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\nformat = "digits"\n[[model]]\nname = "t"\narch = { kind = "mlp", hiden = [8] }\n')
    r = subprocess.run([cli, "run", str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1].removeprefix("error: ")
    with pytest.raises(ValueError) as e:
        distillery.run(bad, tmp_path / "p")
    assert str(e.value) == line
    with pytest.raises(ValueError, match="missing.toml: file not found"):
        distillery.run(tmp_path / "missing.toml", tmp_path / "q")
    with pytest.raises(ValueError, match="missing.safetensors: file not found"):
        distillery.load(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------------------------
# The GIL and Ctrl-C


def test_training_releases_the_gil(digits, tmp_path):
    X, y = digits
    ticks = 0
    done = threading.Event()

    def work():
        distillery.distill(X, y, teacher_outputs=teacher_logits(X, y), temperature=2.0, alpha=0.5, epochs=40, out=tmp_path / "g", quiet=True)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    start = time.time()
    while not done.is_set() and time.time() - start < 120:
        ticks += 1  # pure Python work on this thread while the engine trains on the other
        time.sleep(0.001)
    t.join()
    assert done.is_set() and ticks > 50


INTERRUPTIBLE = textwrap.dedent(
    """
    import sys, numpy as np, distillery
    sys.path.insert(0, {tests!r})
    from conftest import teacher_logits
    a = np.loadtxt({digits!r}, delimiter=",", skiprows=1)
    y = a[:, -1].astype(int); X = a[:, :-1]
    # Ten copies of the digits and a wide MLP: about half a second an epoch, so that Ctrl-C
    # lands mid-training.
    X, y = np.tile(X, (10, 1)), np.tile(y, 10)
    try:
        s, r = distillery.distill(X, y, teacher_outputs=teacher_logits(X, y), temperature=2.0, alpha=0.5,
                                  student="mlp:512,512", epochs={epochs}, train={{"patience": 1000}}, out={out!r})
        print("DONE", r["accuracy"], r["test_loss"], flush=True)
    except KeyboardInterrupt as e:
        print("INTERRUPTED", e, flush=True)
        sys.exit(130)
    """
)


def test_ctrl_c_stops_training_and_the_same_call_resumes(tmp_path):
    import gzip, signal

    header = gzip.open(DIGITS, "rt").readline().strip().split(",")
    assert header[-1] == "digit"
    plain = tmp_path / "digits.csv"
    plain.write_bytes(gzip.open(DIGITS).read())
    tests = os.path.dirname(__file__)

    def script(out, epochs=30):
        return INTERRUPTIBLE.format(tests=tests, digits=str(plain), epochs=epochs, out=str(out))

    p = subprocess.Popen([sys.executable, "-c", script(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Wait for training to be under way (epoch lines on stderr), then press Ctrl-C.
    seen = ""
    start = time.time()
    while "epoch 3/" not in seen and time.time() - start < 60:
        seen += p.stderr.readline()
    assert "epoch 3/" in seen, seen
    t0 = time.time()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    stopped_in = time.time() - t0
    assert p.returncode == 130, (out, err)
    assert "INTERRUPTED" in out and "checkpoints" in out
    assert stopped_in < 5, stopped_in
    assert any(f.endswith(".ckpt.safetensors") for f in os.listdir(tmp_path / "run" / "checkpoints"))
    # The same call resumes and ends where an uninterrupted run ends.
    resumed = subprocess.run([sys.executable, "-c", script(tmp_path / "run")], capture_output=True, text=True)
    whole = subprocess.run([sys.executable, "-c", script(tmp_path / "whole")], capture_output=True, text=True)
    assert resumed.returncode == 0 and whole.returncode == 0, (resumed.stderr, whole.stderr)
    assert "resum" in resumed.stderr.lower()
    assert resumed.stdout.split()[:3] == whole.stdout.split()[:3]
