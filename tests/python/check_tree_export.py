"""Tree exports in onnxruntime, against `distillery predict` on the same rows.

tract (which checks every export inside `distillery run`) runs TreeEnsembleClassifier but not
TreeEnsembleRegressor, so regression tree exports are checked here; classifier exports too, in
a second runtime. Run by .ci/run after `cargo test --release` (it uses target/release/distillery):

    python tests/python/check_tree_export.py

Tolerance: values agree to 1e-4 relative to the largest |value| (probabilities to 1e-5).
"""
import csv, gzip, subprocess, sys, tempfile, os

import numpy as np
import onnxruntime as ort

BIN = "target/release/distillery"
CASES = [
    # config, data file, label column, models
    ("configs/diabetes-trees.toml", "data/sklearn/diabetes.csv.gz", "progression", ["trees-auto", "tree-kd"]),
    ("configs/breast-cancer-trees.toml", "data/sklearn/breast_cancer.csv", "diagnosis", ["trees-auto", "tree-kd"]),
    ("configs/letter-trees.toml", "data/uci/letterrecognition.csv.gz", "lettr", ["trees-auto", "tree-kd"]),
]


def read_csv(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return list(csv.reader(f))


def main():
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for cfg, data, label, models in CASES:
            out = os.path.join(tmp, os.path.basename(cfg))
            subprocess.run([BIN, "run", cfg, "--out", out, "--quick", "-q"], check=True, capture_output=True)
            rows = read_csv(data)
            head, body = rows[0], rows[1:]
            li = head.index(label)
            x = np.array([[float(v) for j, v in enumerate(r) if j != li] for r in body], dtype=np.float32)
            for m in models:
                preds = os.path.join(tmp, f"{m}.csv")
                subprocess.run([BIN, "predict", os.path.join(out, "models", f"{m}.safetensors"), data,
                                "--label", label, "--out", preds], check=True, capture_output=True)
                p = read_csv(preds)
                sess = ort.InferenceSession(os.path.join(out, "exports", f"{m}.onnx"))
                outs = {o.name: v for o, v in zip(sess.get_outputs(), sess.run(None, {"input": x}))}
                if "value" in outs:
                    ours = np.array([float(r[1]) for r in p[1:]])
                    theirs = outs["value"].reshape(-1)
                    tol = 1e-4 * max(1.0, float(np.abs(ours).max()))
                else:
                    ours = np.array([[float(v) for v in r[2:]] for r in p[1:]])
                    theirs = outs["probabilities"]
                    tol = 1e-5
                diff = float(np.abs(ours - theirs).max())
                ok = diff <= tol
                failures += not ok
                print(f"{cfg} {m}: onnxruntime vs distillery predict on {len(x)} rows: max |Δ| = {diff:.2e} "
                      f"({'ok' if ok else 'FAIL'}, tolerance {tol:.1e})")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
