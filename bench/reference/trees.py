"""LightGBM reference for `distillery bench train-trees` and `infer-trees`: the same data (UCI
letter recognition, rows in file order, the first 16,000 for training and the rest for
testing), the same model (100 rounds, 31 leaves, learning rate 0.1, at least 20 rows a leaf,
255 bins, no L2, softmax over the 26 classes), run as LightGBM's docs recommend: one thread per
physical core, the native Booster API, raw scores at prediction (distillery's outputs are
logits too).

Prints the same JSON keys as distillery: samples_per_s, fit_seconds, accuracy,
latency_us_p50, latency_us_p90, latency_us_p50_b256, latency_us_p90_b256, peak_rss_bytes.
"""
import csv, gzip, json, os, resource, statistics, sys, time

import lightgbm as lgb
import numpy as np

TRAIN = 16000


def data():
    with gzip.open("data/uci/letterrecognition.csv.gz", "rt") as f:
        rows = list(csv.reader(f))
    head, rows = rows[0], rows[1:]
    li = head.index("lettr")
    names = []
    y = []
    for r in rows:
        if r[li] not in names:
            names.append(r[li])
        y.append(names.index(r[li]))
    x = np.array([[float(v) for j, v in enumerate(r) if j != li] for r in rows], dtype=np.float32)
    y = np.array(y, dtype=np.int32)
    return x[:TRAIN], y[:TRAIN], x[TRAIN:], y[TRAIN:], len(names)


def params(k):
    return {"objective": "multiclass", "num_class": k, "num_leaves": 31, "learning_rate": 0.1,
            "min_data_in_leaf": 20, "max_bin": 255, "lambda_l2": 0.0, "verbose": -1,
            "num_threads": os.cpu_count(), "deterministic": True}


def fit(x, y, k):
    return lgb.train(params(k), lgb.Dataset(x, label=y), num_boost_round=100)


def accuracy(b, x, y):
    return float((b.predict(x, raw_score=True).argmax(1) == y).mean())


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def where():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "kernel": f"LightGBM {lgb.__version__} ({os.cpu_count()} threads)"}


def train_trees(steps):
    x, y, tx, ty, k = data()
    b = fit(x, y, k)  # warm-up
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        b = fit(x, y, k)
        ts.append(time.perf_counter() - t0)
    m = statistics.median(ts)
    return {"workload": "train-trees", "steps": steps, "samples_per_s": len(y) / m,
            "fit_seconds": m, "accuracy": accuracy(b, tx, ty), "peak_rss_bytes": peak_rss()}


def infer_trees(steps):
    x, y, tx, ty, k = data()
    b = fit(x, y, k)
    n = len(ty)

    def timed(size):
        def rows(i):
            s = (i * size) % (n - size + 1)
            return tx[s:s + size]
        t0, i = time.perf_counter(), 0
        while i < 20 or time.perf_counter() - t0 < 1.0:
            b.predict(rows(i), raw_score=True)
            i += 1
        ts = []
        for j in range(steps):
            xb = rows(j)
            t0 = time.perf_counter()
            b.predict(xb, raw_score=True)
            ts.append((time.perf_counter() - t0) * 1e6)
        ts.sort()
        return statistics.median(ts), ts[round((len(ts) - 1) * 0.9)]

    p50, p90 = timed(1)
    q50, q90 = timed(256)
    return {"workload": "infer-trees", "steps": steps, "latency_us_p50": p50, "latency_us_p90": p90,
            "latency_us_p50_b256": q50, "latency_us_p90_b256": q90,
            "accuracy": accuracy(b, tx, ty), "peak_rss_bytes": peak_rss()}


def main(argv):
    workload = argv[1]
    steps = int(argv[argv.index("--steps") + 1]) if "--steps" in argv else 5
    r = train_trees(steps) if workload == "train-trees" else infer_trees(steps)
    r.update(where())
    print(json.dumps(r) if "--json" in argv else r)


if __name__ == "__main__":
    main(sys.argv)
