#!/usr/bin/env python3
"""The cost model of docs/SCALING.md, fitted to bench/scaling.py's measurements.

    python3 bench/scaling.py --json scaling.json
    python3 bench/scaling_model.py scaling.json

Fits the link (latency a, bandwidth B) to the collectives' times, the compute per sample to the
one-process, one-thread runs, checks the model against the measured 2-rank runs, then predicts
8 to 64 machines on 10 and 100 Gb/s links for synchronous data-parallel training and for
codistillation (K = N sub-models, one per machine, each on its 1/N shard, weights exchanged
once per round).
"""

import json
import sys

# The measured workloads (bench/scaling/*.toml) and their sizes.
TRAIN = 57_000  # MNIST training split (60,000 less 5% validation)
VAL = 3_000
P_TEACHER = 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10
P_MEMBER = 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
ROUNDS, PHASE1_EPOCHS = 3, 2

# Links of the predictions: bandwidth (bytes/s) and per-message latency (s). 10 Gb/s Ethernet
# over TCP: ~25 µs; 100 Gb/s with RDMA (InfiniBand / RoCE): ~3 µs.
LINKS = {"10 Gb/s": (10e9 / 8, 25e-6), "100 Gb/s": (100e9 / 8, 3e-6)}


def fit_link(coll):
    """t = 2a + bytes / B over the sum-in-rank-order timings at 2 ranks (each phase,
    reduce-scatter then all-gather, moves half the buffer each way), fitted by least squares on
    the relative error, so that small messages (latency) count as much as large ones
    (bandwidth)."""
    xs = [c["bytes"] for c in coll]
    ys = [c["sum_seconds"] for c in coll]
    # Minimise sum(((u + x v) / y - 1)^2) over u = 2a, v = 1/B: a 2×2 linear system.
    s11 = sum(1 / y**2 for y in ys)
    s12 = sum(x / y**2 for x, y in zip(xs, ys))
    s22 = sum(x * x / y**2 for x, y in zip(xs, ys))
    r1 = sum(1 / y for y in ys)
    r2 = sum(x / y for x, y in zip(xs, ys))
    det = s11 * s22 - s12 * s12
    u = (r1 * s22 - r2 * s12) / det
    v = (s11 * r2 - s12 * r1) / det
    return max(u, 0.0) / 2, 1 / v


def allreduce(p_bytes, n, link):
    """Reduce-scatter + all-gather (ring volume): 2(N − 1) messages, 2(N − 1)/N of the buffer."""
    bw, lat = link
    return 2 * (n - 1) * lat + 2 * (n - 1) / n * p_bytes / bw


def allgather(p_bytes_each, n, link):
    """Every rank's buffer to every rank: N − 1 messages, (N − 1) buffers received."""
    bw, lat = link
    return (n - 1) * lat + (n - 1) * p_bytes_each / bw


def main():
    m = json.load(open(sys.argv[1]))
    a, bw = fit_link(m["collectives"])
    here = (bw, a)
    print(f"link here (loopback, shared memory): latency a = {1e6 * a:.1f} µs, "
          f"bandwidth B = {bw / 1e9:.2f} GB/s")

    # Compute per sample (forward + backward; a prediction is about a third of it), from the
    # one-process, one-thread runs; the model's fit is checked against the measured 2-rank runs.
    # Besides compute and the link, each data-parallel step costs every rank a fixed `o`: the
    # optimizer's update of all P weights (every rank applies the whole step) and the gradients'
    # copy into one buffer. It does not shrink with N; fitted to the two batch sizes.
    fits = {}
    rest = []
    for name, batch in (("mnist-data-parallel", 256), ("mnist-data-parallel-1024", 1024)):
        r = m[name]
        c = r["one1"]["per_epoch"] / TRAIN
        steps = TRAIN / batch
        fits[batch] = (c, steps, r)
        rest.append((r["mpi2x1"]["per_epoch"] - TRAIN / 2 * c
                     - steps * allreduce(4 * P_TEACHER, 2, here)) / steps)
    o = max(sum(rest) / len(rest), 0.0)
    print(f"per-step cost besides compute and link: o = {1e3 * o:.2f} ms "
          f"(fits: {', '.join(f'{1e3 * x:.2f}' for x in rest)} ms)")
    for batch, (c, steps, r) in fits.items():
        model2 = TRAIN / 2 * c + steps * (allreduce(4 * P_TEACHER, 2, here) + o)
        print(f"data-parallel teacher, batch {batch}: compute {1e6 * c:.1f} µs a sample; epoch "
              f"at N = 2: model {model2:.2f} s, measured {r['mpi2x1']['per_epoch']:.2f} s")
    co = m["mnist-codistill"]
    # One process, one thread: K = 2 members, each PHASE1_EPOCHS + ROUNDS epochs on its shard,
    # per round the peer's predictions on each shard, and the validation of both per round.
    work = 2 * (PHASE1_EPOCHS + ROUNDS) * (TRAIN / 2) + ROUNDS * 2 * (TRAIN / 2) / 3 \
        + (ROUNDS + 1) * 2 * VAL / 3
    c_member = co["one1"]["own"] / work
    model_co2 = work / 2 * c_member + ROUNDS * allgather(4 * P_MEMBER, 2, here)
    print(f"codistillation K = 2: compute {1e6 * c_member:.1f} µs a sample; group at N = 2: "
          f"model {model_co2:.2f} s, measured {co['mpi2x1']['own']:.2f} s")

    # Predictions for the teacher above (1.9 M parameters, 69 µs a sample at batch 256): the
    # time of one pass over the training set on N machines, as parallel efficiency
    # T1 / (N · TN), T1 = one machine running plain SGD over the same pass.
    c = fits[256][0]
    t1 = TRAIN * c
    p = 4 * P_TEACHER

    def schemes(n, link):
        # Synchronous SGD, the global batch kept at 256 (the same optimisation as one machine):
        # each step computes 256/N samples a machine, then sums the gradients.
        strong = TRAIN / n * c + TRAIN / 256 * (allreduce(p, n, link) + o)
        # Synchronous SGD, 256 a machine (global batch 256·N: fewer steps, another optimisation).
        weak = TRAIN / n * c + TRAIN / (256 * n) * (allreduce(p, n, link) + o)
        # Codistillation as built here, K = N sub-models of this size, one a machine, each on its
        # 1/N shard: one epoch, the N − 1 peers' predictions on its shard (a third of a step
        # each), then one all-gather of every sub-model's weights.
        all_peers = TRAIN / n * c * (1 + (n - 1) / 3) + allgather(p, n, link)
        # Codistillation as Anil et al. ran it (not built here): 2 sub-models, each trained
        # synchronously (256 a machine) on N/2 machines on its half of the data, with the other
        # one's predictions (a third of a step a sample) and its weights once per epoch.
        half = n // 2
        two = TRAIN / n * c * (1 + 1 / 3) + TRAIN / (256 * n) * (allreduce(p, half, link) + o) \
            + allgather(p, 2, link)
        return [t1 / (n * t) for t in (strong, weak, all_peers, two)]

    print()
    print("| machines | link | sync SGD, global batch 256 | sync SGD, 256 a machine | "
          "codistillation, K = N (built) | codistillation, 2 × N/2 sync (Anil et al.) |")
    print("|---:|---|---:|---:|---:|---:|")
    for link_name, link in LINKS.items():
        for n in (8, 16, 32, 64):
            e = schemes(n, link)
            print(f"| {n} | {link_name} | " + " | ".join(f"{100 * x:.0f}%" for x in e) + " |")
    print()
    print(f"the same at this machine's measured link, N = 2: " +
          ", ".join(f"{100 * x:.0f}%" for x in schemes(2, here)))

if __name__ == "__main__":
    main()
