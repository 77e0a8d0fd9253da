#!/usr/bin/env bash
# End-to-end wall time of configs/mnist-hinton.toml in distillery and in the PyTorch reference at
# equal epochs (default: the config's 80 teacher / 30 student epochs; pass fewer to save time),
# one after the other on an otherwise idle machine. Prints both tools' time, peak RSS and errors.
# usage: bench/e2e_hinton.sh [TEACHER_EPOCHS] [STUDENT_EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
te=${1:-80}; se=${2:-30}
out=$(mktemp -d)
/usr/bin/time -f "distillery: %e s wall, %M KB peak RSS" target/release/distillery run configs/mnist-hinton.toml \
  --out "$out/run" -q --set model.teacher.train.epochs=$te \
  --set model.student-labels.train.epochs=$se --set model.student-distilled.train.epochs=$se 2>&1 >/dev/null | tail -1
python3 - "$out/run/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print("distillery test errors:", {x["name"]: x["test_errors"] for x in m["models"]})
PY
/usr/bin/time -f "pytorch: %e s wall, %M KB peak RSS" .venv/bin/python bench/reference/mnist_hinton.py \
  --teacher-epochs $te --student-epochs $se
rm -rf "$out"
