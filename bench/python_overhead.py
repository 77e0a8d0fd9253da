"""What predicting through the Python package costs over the Rust call, at batch 1.

For each model (a digits MLP 64-64-10 and an MNIST-sized MLP 784-256-10, both trained here
from arrays in seconds), in one process, alternating A B C D for `--rounds` rounds:

  A  rust     the Rust prediction alone, timed inside Rust (`Model.time_rust`: normalisation,
              forward pass, softmax), per call
  B  native   `model._m.predict(x, 256)`: the compiled method called from Python directly
  C  python   `model.predict(x)`: the public API (argument checks, then B)
  D  floor    `_native.echo(x)`: a call that reads the array and returns a new one, no model

Medians over rounds; overhead = python − rust. Run after `pip install ./python`:

    python bench/python_overhead.py [--rounds 15] [--json out.json]
"""

import argparse
import json
import platform
import tempfile
import timeit

import numpy as np

import distillery
from distillery import _native


def per_call(f, n):
    return min(timeit.repeat(f, number=n, repeat=3)) / n


def measure(model, x, rounds, n):
    rows = {"rust": [], "native": [], "python": [], "floor": []}
    for _ in range(rounds):
        rows["rust"].append(model._m.time_rust(x, n, 3))
        rows["native"].append(per_call(lambda: model._m.predict(x, 256), n))
        rows["python"].append(per_call(lambda: model.predict(x), n))
        rows["floor"].append(per_call(lambda: _native.echo(x), n))
    return {k: 1e6 * float(np.median(v)) for k, v in rows.items()}


def student(dim, hidden, n=2000, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim)).astype(np.float32)
    y = rng.integers(0, classes, size=n)
    T = rng.normal(size=(n, classes)).astype(np.float32)
    m, _ = distillery.distill(
        X, y, teacher_outputs=T, student=f"mlp:{hidden}", temperature=2.0, alpha=0.5,
        epochs=1, out=tempfile.mkdtemp(prefix="overhead-"), quiet=True,
    )
    return m, X[:1].copy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--json")
    a = ap.parse_args()
    out = {"cpu": platform.processor() or platform.machine(), "rows": []}
    try:
        out["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"CPU: {out['cpu']}; medians of {a.rounds} rounds, µs per call at batch 1")
    print(f"{'model':<22} {'rust':>7} {'native':>7} {'python':>7} {'floor':>7} {'overhead':>9}")
    for name, dim, hidden in (("mlp 64-64-10", 64, 64), ("mlp 784-256-10", 784, 256)):
        m, x = student(dim, hidden)
        r = measure(m, x, a.rounds, a.calls)
        r["overhead"] = r["python"] - r["rust"]
        r["model"] = name
        out["rows"].append(r)
        print(f"{name:<22} {r['rust']:>7.2f} {r['native']:>7.2f} {r['python']:>7.2f} {r['floor']:>7.2f} {r['overhead']:>9.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
