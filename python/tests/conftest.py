"""Shared fixtures: the repository, the command-line binary, the digits."""

import gzip
import os
import pathlib
import subprocess

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DIGITS = ROOT / "data" / "sklearn" / "digits.csv.gz"


@pytest.fixture(scope="session")
def root() -> pathlib.Path:
    return ROOT


@pytest.fixture(scope="session")
def cli() -> str:
    """The release binary the README's test command builds (built here when missing)."""
    exe = os.environ.get("DISTILLERY_BIN") or str(ROOT / "target" / "release" / "distillery")
    if not os.path.exists(exe):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    return exe


@pytest.fixture(scope="session")
def digits():
    """The UCI digits as the command line reads them: X (1797 × 64, pixels 0–16), y (ints)."""
    with gzip.open(DIGITS, "rt") as f:
        header = f.readline().strip().split(",")
        a = np.loadtxt(f, delimiter=",", dtype=np.float64)
    label = header.index("digit")
    y = a[:, label].astype(np.int64)
    X = np.delete(a, label, axis=1).astype(np.float32)
    return X, y


def teacher_logits(X: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """A fixed, imperfect teacher: noisy logits that favour the true class."""
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(len(X), 10)).astype(np.float32)
    t[np.arange(len(X)), y] += 2.5
    return t
