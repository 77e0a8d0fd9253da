#!/usr/bin/env python3
"""Makes tests/data/rare-classes.csv.gz, a table with rare classes, and scores LightGBM on it.

    python3 scripts/rare_classes.py            # writes the file (numpy only; seeded)
    python3 scripts/rare_classes.py --lightgbm # also fits LightGBM and prints its accuracy

The table is shaped like the held-out set on which boosted trees once diverged (issue 27):
7 classes, 9 numeric features, the majority class 78% of the rows, the rarest classes a handful
of rows; classes sit in separate regions, so near-perfect accuracy is possible. Rows are split
by the last column, `split` (train / val / test, 60 / 20 / 20); `tests/boost_rare.rs` reads it.
LightGBM runs with the settings of `configs/letter-trees.toml`'s tree teacher (300 rounds,
31 leaves, learning rate 0.1, 20 rows a leaf, 255 bins), early stopping on `val` after 30.
"""
import gzip
import os
import sys

import numpy as np

ROWS = 12000
PRIORS = [0.78, 0.15, 0.05, 0.012, 0.004, 0.0025, 0.0015]
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "rare-classes.csv.gz")


def make():
    rng = np.random.default_rng(27)
    counts = np.maximum((np.array(PRIORS) * ROWS).astype(int), 5)
    counts[0] += ROWS - counts.sum()
    centres = rng.normal(0.0, 40.0, size=(7, 9))
    xs, ys = [], []
    for c, n in enumerate(counts):
        x = centres[c] + rng.normal(0.0, 8.0, size=(n, 9))
        xs.append(np.round(x))  # integer-valued, as the held-out table's columns are
        ys.append(np.full(n, c))
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    # Every class in every split: each class's rows dealt 3 / 1 / 1.
    split = np.empty(len(y), dtype=object)
    for c in range(7):
        idx = np.flatnonzero(y == c)
        for k, i in enumerate(idx):
            split[i] = ["train", "train", "train", "val", "test"][k % 5]
    return x, y, split


def main():
    x, y, split = make()
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with gzip.GzipFile(OUT, "wb", mtime=0) as f:
        f.write((",".join([f"f{i}" for i in range(9)] + ["label", "split"]) + "\n").encode())
        for xr, yr, s in zip(x, y, split):
            f.write((",".join(f"{v:.0f}" for v in xr) + f",{yr},{s}\n").encode())
    print(f"wrote {OUT}: {len(y)} rows, classes {np.bincount(y).tolist()}")
    if "--lightgbm" in sys.argv:
        import lightgbm as lgb

        tr, va, te = (split == "train"), (split == "val"), (split == "test")
        m = lgb.LGBMClassifier(
            n_estimators=300, num_leaves=31, learning_rate=0.1, min_child_samples=20,
            max_bin=255, verbose=-1, n_jobs=2,
        )
        m.fit(x[tr], y[tr], eval_set=[(x[va], y[va])],
              callbacks=[lgb.early_stopping(30, verbose=False)])
        acc = (m.predict(x[te]) == y[te]).mean()
        print(f"LightGBM {lgb.__version__}: best round {m.best_iteration_}, "
              f"test accuracy {100 * acc:.2f}% ({int((~(m.predict(x[te]) == y[te])).sum())} errors of {te.sum()})")


if __name__ == "__main__":
    main()
