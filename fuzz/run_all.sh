#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600), two at a time, on stable Rust.
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them, and
# `-s none` skips the sanitizer runtime (distillery's own `unsafe` code is limited to SIMD kernels
# and GEMM calls with asserted bounds).
# usage: fuzz/run_all.sh [SECONDS]        (cargo install cargo-fuzz first)
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none
run() { cargo fuzz run -s none "$1" -- -max_total_time="$secs" -rss_limit_mb=2048 -max_len="$2" -print_final_stats=1 > "logs/$1.log" 2>&1; }
mkdir -p logs
run idx 65536 & run csv 65536 & wait
run config 16384 & run model 65536 & wait
run text 65536 & run onnx 65536 & wait
for t in idx csv config model text onnx; do
  echo "$t: $(grep -E '^stat::number_of_executed_units' logs/$t.log | awk '{print $2}') executions, $(ls artifacts/$t 2>/dev/null | wc -l) crash artifacts"
done
