#!/usr/bin/env python3
"""Measures the figures of docs/SCALING.md on this machine (standard library only).

    cargo build --release --features mpi
    python3 bench/scaling.py [--repeats 2] [--json out.json]

For each workload in bench/scaling/ it runs, alternating (A B C A B C …), one process with one
thread, one process with two threads, and `mpirun -np 2` with one thread per rank, and reports
the median wall time of the whole run (data loading included), the group's or the teacher's own
time from metrics.json, and the bytes rank 0 sent. Then `distillery bench collectives` under
`mpirun -np 2` for the link's latency and bandwidth (the cost model's fit).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "distillery")
WORKLOADS = ["mnist-codistill", "mnist-mutual", "mnist-data-parallel", "mnist-data-parallel-1024"]
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def launch(mode, cfg, out):
    if mode == "mpi2x1":
        cmd = ["mpirun", "-np", "2", "--bind-to", "core", "-x", "RAYON_NUM_THREADS=1", BIN]
        env = dict(ENV)
    else:
        cmd = [BIN]
        env = dict(ENV, RAYON_NUM_THREADS="1" if mode == "one1" else "2")
    cmd += ["run", cfg, "--out", out, "-q"]
    t = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def own_time(metrics):
    """The group's wall time (phase 1 and the rounds), or the teacher's training time; rank 0's
    bytes sent."""
    if metrics.get("submodel_groups"):
        g = metrics["submodel_groups"][0]
        sent = sum(r.get("bytes_sent", 0) for r in g["rounds"])
        return g["seconds"], sent, len(g["rounds"]) - 1, None
    t = metrics["models"][0]["training"]
    dp = t.get("data_parallel") or {}
    per_epoch = statistics.median(t["curves"]["seconds"])
    return t["seconds"], dp.get("bytes_sent", 0), dp.get("steps", 0), per_epoch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--only", help="one workload of bench/scaling/ (default: all)")
    args = ap.parse_args()
    workloads = [args.only] if args.only else WORKLOADS
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release --features mpi")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in workloads:
            cfg = os.path.join(ROOT, "bench", "scaling", f"{w}.toml")
            runs = {m: [] for m in ["one1", "one2", "mpi2x1"]}
            for rep in range(args.repeats):
                for mode in runs:
                    out = os.path.join(tmp, f"{w}-{mode}-{rep}")
                    wall = launch(mode, cfg, out)
                    with open(os.path.join(out, "metrics.json")) as f:
                        m = json.load(f)
                    own, sent, steps, per_epoch = own_time(m)
                    runs[mode].append(dict(wall=wall, own=own, sent=sent, steps=steps,
                                           per_epoch=per_epoch,
                                           accuracy=m["models"][0].get("accuracy")))
                    print(f"{w} {mode} #{rep + 1}: wall {wall:.1f} s, own {own:.1f} s, "
                          f"sent {sent} B", file=sys.stderr)
            results[w] = {
                mode: {k: statistics.median([r[k] for r in rs]) if rs[0][k] is not None else None
                       for k in rs[0]}
                for mode, rs in runs.items()
            }
        coll = subprocess.run(
            ["mpirun", "-np", "2", "--bind-to", "core", BIN, "bench", "collectives",
             "--steps", "30", "--json"],
            env=ENV, cwd=ROOT, check=True, capture_output=True, text=True)
        results["collectives"] = json.loads(coll.stdout.strip().splitlines()[-1])["collectives"]
    print("| workload | 1 process, 1 thread | 1 process, 2 threads | 2 ranks × 1 thread "
          "| speed-up vs 1 thread | efficiency | vs 2 threads | bytes sent by rank 0 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for w in workloads:
        r = results[w]
        key = "per_epoch" if r["one1"]["per_epoch"] is not None else "own"
        a, b, c = r["one1"][key], r["one2"][key], r["mpi2x1"][key]
        print(f"| {w} ({'s per epoch' if key == 'per_epoch' else 's, group'}) | {a:.2f} | "
              f"{b:.2f} | {c:.2f} | {a / c:.2f}× | {100 * a / (2 * c):.0f}% | {b / c:.2f}× | "
              f"{r['mpi2x1']['sent']:.0f} |")
    for c in results["collectives"]:
        print(f"collectives: {c['bytes']} B: sum {1e6 * c['sum_seconds']:.1f} µs, "
              f"all-gather {1e6 * c['all_gather_seconds']:.1f} µs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
