#!/usr/bin/env python3
"""Makes data/mnist1d/mnist1d-{train,test}.csv.gz, the MNIST-1D sequences (Greydanus 2020).

    python3 -m venv v && v/bin/pip install numpy scipy requests matplotlib mnist1d
    v/bin/python scripts/make_mnist1d.py

Uses the PyPI package `mnist1d`'s own generator, offline (`make_dataset`, never the download),
with its default arguments: 5,000 sequences of 40 values, 10 classes, the first 4,000 for
training and the last 1,000 for testing, seed 42. That is the data set of the paper's table
(logistic regression 32%, MLP 68%, CNN 94%, GRU 91% test accuracy). Columns `x0`..`x39`, then
the label `digit`.

With `--transfer N` it also writes mnist1d-transfer.csv.gz: N more sequences from the same
generator with another seed (7), unlabelled (the `digit` column holds `?`), the transfer set of
configs/mnist1d-patient.toml (`distill.transfer`).
"""
import argparse
import gzip
import os

import numpy as np
from mnist1d.data import get_dataset_args, make_dataset

OUT = os.path.join(os.path.dirname(__file__), "..", "data", "mnist1d")


def write(path, x, y):
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        head = ",".join([f"x{i}" for i in range(x.shape[1])] + ["digit"])
        rows = [head] + [",".join([f"{v:.5f}" for v in r] + [str(c if c == "?" else int(c))]) for r, c in zip(x, y)]
        f.write(("\n".join(rows) + "\n").encode())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--transfer", type=int, default=0, help="also write N unlabelled sequences")
    opts = ap.parse_args()
    args = get_dataset_args()
    d = make_dataset(args)
    os.makedirs(OUT, exist_ok=True)
    write(os.path.join(OUT, "mnist1d-train.csv.gz"), d["x"], d["y"])
    write(os.path.join(OUT, "mnist1d-test.csv.gz"), d["x_test"], d["y_test"])
    print("train", d["x"].shape, "test", d["x_test"].shape)
    if opts.transfer > 0:
        t = get_dataset_args()
        t.num_samples = opts.transfer
        t.train_split = 1.0
        t.seed = 7
        e = make_dataset(t)
        write(os.path.join(OUT, "mnist1d-transfer.csv.gz"), e["x"], ["?"] * len(e["x"]))
        print("transfer", e["x"].shape)


if __name__ == "__main__":
    main()
