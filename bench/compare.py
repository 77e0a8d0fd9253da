"""Runs distillery and the PyTorch reference interleaved (A B A B ...) on each workload and prints
the median of each side and the median of the per-pair ratios, as a Markdown table.

usage: python3 bench/compare.py [--pairs 5] [--steps 30] [--base OTHER_BINARY] [WORKLOAD ...]
Needs target/release/distillery (cargo build --release) and .venv (bench/setup_reference.sh).
With --base, the reference is another distillery binary (a build of an earlier commit, for a
before/after table) instead of PyTorch.
"""
import argparse, json, statistics, subprocess, sys

OURS = ["target/release/distillery", "bench"]
THEIRS = [".venv/bin/python", "bench/reference/bench.py"]
# (key, higher is better)
KEYS = {
    "train-mlp": [("samples_per_s", True)],
    "train-student": [("samples_per_s", True)],
    "train-cnn": [("samples_per_s", True)],
    "infer": [("latency_us_p50", False), ("latency_us_p50_b256", False)],
    "infer-int8": [("latency_us_p50", False), ("latency_us_p50_b256", False)],
    "gemm": [("gflops", True)],
    "train-mlp-bf16": [("samples_per_s", True)],
    "train-student-bf16": [("samples_per_s", True)],
    "train-cnn-bf16": [("samples_per_s", True)],
    "infer-bf16": [("latency_us_p50", False), ("latency_us_p50_b256", False)],
    "gemm-bf16": [("gflops", True)],
    "bert-teacher": [("samples_per_s", True)],
    "bert-corpus": [("samples_per_s", True)],
    "onnx-teacher": [("latency_us_p50", False), ("latency_us_p50_b256", False)],
    "onnx-teacher-cnn": [("latency_us_p50", False), ("latency_us_p50_b256", False)],
    "train-trees": [("fit_seconds", False), ("accuracy", True)],
    "infer-trees": [("latency_us_p50", False), ("latency_us_p50_b256", False)],
}


def once(cmd, workload, steps):
    out = subprocess.run(cmd + [workload, "--steps", str(steps), "--json"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--base", help="another distillery binary to compare with, instead of PyTorch")
    ap.add_argument("workloads", nargs="*", default=list(KEYS))
    a = ap.parse_args()
    global THEIRS
    trees = {"train-trees", "infer-trees"}
    onnx = {"onnx-teacher", "onnx-teacher-cnn"}
    other = ("LightGBM" if set(a.workloads) <= trees
             else "onnxruntime" if set(a.workloads) <= onnx
             else "PyTorch" if not set(a.workloads) & trees else "reference")
    if a.base:
        THEIRS = [a.base, "bench"]
        other = a.base
    where = []
    print(f"| workload | figure | distillery (median) | {other} (median) | distillery better by (median of pair ratios) | peak RSS ours / theirs |")
    print("|---|---|---:|---:|---:|---:|")
    for w in a.workloads:
        ours, theirs = [], []
        for _ in range(a.pairs):
            ours.append(once(OURS, w, a.steps))
            theirs.append(once(THEIRS, w, a.steps))
        if not where:
            where.append(f"CPU: {ours[0].get('cpu', '?')}; instruction sets: "
                         f"{', '.join(ours[0].get('isa', [])) or 'baseline'}")
        where.append(f"{w}: distillery {ours[0].get('kernel', '?')}; "
                     f"reference {theirs[0].get('kernel', '?')}")
        rss = (statistics.median(r["peak_rss_bytes"] for r in ours) / 2**20,
               statistics.median(r["peak_rss_bytes"] for r in theirs) / 2**20)
        for key, higher in KEYS[w]:
            o = [r[key] for r in ours]
            t = [r[key] for r in theirs]
            ratios = [(x / y) if higher else (y / x) for x, y in zip(o, t)]
            fmt = (lambda v: f"{v:.4f}") if key == "accuracy" else (lambda v: f"{v:.1f}")
            print(f"| {w} | {key} | {fmt(statistics.median(o))} | {fmt(statistics.median(t))} | "
                  f"{statistics.median(ratios):.2f}× | {rss[0]:.0f} / {rss[1]:.0f} MiB |")
        sys.stdout.flush()
    print()
    for line in where:
        print(f"- {line}")


if __name__ == "__main__":
    main()
