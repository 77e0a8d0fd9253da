"""Distil a scikit-learn GradientBoostingClassifier into a small MLP.

The teacher is any Python model: distillery only needs its outputs (here `predict_proba`) on
the training rows. The student is compared with the teacher and with the same MLP trained on
the labels alone, on a test set neither saw, for accuracy, size and batch-1 latency.

    python python/examples/sklearn_teacher.py
"""

import pickle
import time

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.model_selection import cross_val_predict, train_test_split

import distillery


def latency_us(predict, x, runs=300):
    """Median batch-1 latency in microseconds, after a warm-up."""
    for _ in range(30):
        predict(x)
    t = []
    for _ in range(runs):
        s = time.perf_counter()
        predict(x)
        t.append(time.perf_counter() - s)
    return 1e6 * float(np.median(t))


X, y = load_breast_cancer(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)

teacher = GradientBoostingClassifier(n_estimators=300, max_depth=3, random_state=0).fit(X_train, y_train)
teacher_acc = float((teacher.predict(X_test) == y_test).mean())

# Any Python model is a teacher: its probabilities on the training rows. A boosted model is
# nearly certain on the rows it was fitted on, so its soft targets there carry little; out-of-fold
# probabilities (each row predicted by a teacher fitted without it) are what it would say of new
# rows.
soft = cross_val_predict(
    GradientBoostingClassifier(n_estimators=300, max_depth=3, random_state=0),
    X_train, y_train, cv=5, method="predict_proba",
)
student, record = distillery.distill(
    X_train, y_train,
    teacher_outputs=soft, outputs_kind="probs",
    student="mlp:16", epochs=60,
    X_test=X_test, y_test=y_test, quiet=True,
)
# The same MLP on the labels alone (alpha = 0: no teacher term).
labels_only, labels_record = distillery.distill(
    X_train, y_train,
    teacher_outputs=soft, outputs_kind="probs",
    student="mlp:16", epochs=60, alpha=0.0, temperature=1.0,
    X_test=X_test, y_test=y_test, quiet=True,
)

rows = [
    ("teacher: sklearn GradientBoostingClassifier", teacher_acc, len(pickle.dumps(teacher)),
     latency_us(teacher.predict_proba, X_test[:1])),
    (f"student: distillery {student.architecture}", record["accuracy"], student.bytes,
     latency_us(student.predict, X_test[:1])),
    (f"labels only: distillery {labels_only.architecture}", labels_record["accuracy"], labels_only.bytes,
     latency_us(labels_only.predict, X_test[:1])),
]
print(f"{'model':<52} {'test accuracy':>13} {'bytes':>9} {'batch-1 µs':>11}")
for name, acc, size, lat in rows:
    print(f"{name:<52} {acc:>13.4f} {size:>9} {lat:>11.1f}")
d = record["distill"]
print(f"chosen on the validation split: alpha {d['alpha']}, temperature {d['temperature']} "
      f"({len(d.get('auto', {}).get('trials', []))} trials; alpha 0 means labels alone won)")

# The student as ONNX, for edge inference.
onnx_path = student.export_onnx(record["run"] + "/student.onnx")
print(f"ONNX: {onnx_path}")

results = {
    "teacher_accuracy": teacher_acc,
    "student_accuracy": record["accuracy"],
    "labels_only_accuracy": labels_record["accuracy"],
    "student_bytes": student.bytes,
    "teacher_bytes": rows[0][2],
    "student_latency_us": rows[1][3],
    "teacher_latency_us": rows[0][3],
}
