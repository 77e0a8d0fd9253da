#!/bin/sh
# distillery with every ONNX teacher run in tract (not lowered onto our kernels): the "before"
# side of `python3 bench/compare.py --base bench/tract.sh onnx-teacher`.
DISTILLERY_ONNX_TRACT=1 exec "$(dirname "$0")/../target/release/distillery" "$@"
