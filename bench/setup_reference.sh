#!/usr/bin/env bash
# Makes .venv/ with PyTorch for the reference benchmarks (never part of cargo test or CI).
# About 5 GB download from PyPI (PyTorch's wheels there carry the CUDA libraries).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q torch numpy sentence-transformers onnxruntime lightgbm
# The BERT teacher workload reads models/all-MiniLM-L6-v2 (scripts/fetch_minilm.sh).
.venv/bin/python -c "import torch; print('torch', torch.__version__, 'threads', torch.get_num_threads())"
