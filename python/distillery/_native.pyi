"""Type stubs of the compiled part of distillery (``distillery._native``, PyO3). Users call the
API in ``distillery`` itself; these are what it is built on."""

from typing import List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

def version() -> str:
    """The engine's version."""

def run_config(config: str, out: str, overrides: Sequence[str], quick: bool, quiet: bool) -> str:
    """Runs an experiment file as ``distillery run`` does; returns metrics.json's text."""

def run_arrays(
    config_json: str,
    out: str,
    x: F32,
    labels: Optional[List[str]],
    values: Optional[F32],
    x_test: Optional[F32],
    test_labels: Optional[List[str]],
    test_values: Optional[F32],
    outputs: Sequence[Tuple[str, F32, Optional[F32]]],
    quiet: bool,
) -> str:
    """Runs an experiment (JSON, ``data.format = "arrays"``) over C-contiguous float32 arrays,
    read in place; returns metrics.json's text."""

def echo(x: F32) -> F32:
    """A copy of the first row of ``x``: the floor of a call's cost (benchmarks)."""

class Model:
    """A saved model of any kind and precision."""

    @staticmethod
    def load(path: str) -> "Model": ...
    def predict(self, x: F32, batch: int) -> F32:
        """Probabilities (n × classes) or values (n) of C-contiguous float32 rows."""
    def time_rust(self, x: F32, iters: int, repeats: int) -> float:
        """Seconds per call of the Rust prediction alone (median of ``repeats``)."""
    def evaluate(self, x: F32, labels: Optional[List[str]], values: Optional[F32]) -> str:
        """Scores as JSON text."""
    def export_onnx(self, path: str) -> None: ...
    @property
    def path(self) -> str: ...
    @property
    def params(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def architecture(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def classes(self) -> Optional[List[str]]: ...
    @property
    def input_shape(self) -> List[int]: ...
    @property
    def text(self) -> bool: ...
