"""PyTorch reference for `distillery bench`: the same workloads, shapes, batch size, optimizer
and distillation loss, run as PyTorch's docs recommend for CPU (default intra-op threads = the
machine's cores, the fused Adam implementation, eval mode + inference_mode for inference).

usage: bench.py WORKLOAD [--steps N] [--json]      WORKLOAD: train-mlp train-student train-cnn infer infer-int8 gemm
Prints the same JSON keys as distillery: samples_per_s, latency_us_p50, latency_us_p90,
latency_us_p50_b256, latency_us_p90_b256, gflops, peak_rss_bytes.
"""
import argparse, json, resource, statistics, sys, time

if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] in ("train-trees", "infer-trees"):
    # The tree workloads' reference is LightGBM (bench/reference/trees.py), without PyTorch
    # loaded in the process.
    import trees
    trees.main(sys.argv)
    sys.exit(0)


# The ONNX workloads' reference is onnxruntime alone: PyTorch is not loaded for them.
if not (__name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1].startswith("onnx-teacher")):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F


def mlp(hidden):
    layers, d = [], 784
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, 10))
    return nn.Sequential(nn.Flatten(), *layers)


def lenet():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def macs(model):
    total, hw = 0, 28 * 28
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            total += m.weight.numel() * hw
            hw //= 4
        elif isinstance(m, nn.Linear):
            total += m.weight.numel()
    return total


def warm_up(f):
    """Calls f until at least a second has passed and at least 20 calls were made, as
    distillery does: both sides are timed at their steady state."""
    t0, n = time.perf_counter(), 0
    while n < 20 or time.perf_counter() - t0 < 1.0:
        f()
        n += 1


def where():
    """The CPU and PyTorch's kernel path (its CPU capability: DEFAULT, AVX2, AVX512, ...)."""
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if "torch" not in globals():
        import onnxruntime
        return {"cpu": cpu, "kernel": f"onnxruntime {onnxruntime.__version__}"}
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        cap = "unknown"
    return {"cpu": cpu, "kernel": f"PyTorch {torch.__version__} ({cap}, {torch.get_num_threads()} threads)"}


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def kd_loss(s, t, y, T=4.0, alpha=0.9):
    kl = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean")
    return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)


def train(name, model, steps, bf16=False):
    """One training step as distillery's: forward, KD loss, backward, fused Adam. With bf16,
    the forward pass and loss run under torch.autocast("cpu", dtype=torch.bfloat16), PyTorch's
    recommended mixed precision on CPU (bf16 matrix products, f32 weights)."""
    batch = 128
    try:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    pool = [(torch.rand(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g),
             torch.rand(batch, 10, generator=g) * 6 - 3) for _ in range(8)]

    def step(i):
        x, y, t = pool[i % len(pool)]
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = kd_loss(model(x), t, y)
        loss.backward()
        opt.step()

    it = iter(range(10**9))
    warm_up(lambda: step(next(it)))
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    secs = time.perf_counter() - t0
    sps = steps * batch / secs
    return {"workload": name, "steps": steps, "samples_per_s": sps,
            "gflops": 6 * macs(model) * sps / 1e9, "peak_rss_bytes": peak_rss()}


def infer(steps, int8=False, bf16=False):
    """Inference under torch.inference_mode; int8: dynamic quantization; bf16: autocast."""
    model = mlp([1200, 1200]).eval()
    if int8:
        # PyTorch's recommended int8 path for Linear-heavy models on CPU: dynamic quantization
        # (int8 weights per channel, activations quantized on the fly, fbgemm/x86 int8 GEMM).
        model = torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear}, dtype=torch.qint8)

    def timed(b):
        x = torch.rand(b, 1, 28, 28)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            warm_up(lambda: model(x).float().numpy())
            ts = []
            for _ in range(steps):
                t0 = time.perf_counter()
                model(x).float().numpy()
                ts.append((time.perf_counter() - t0) * 1e6)
        ts.sort()
        return statistics.median(ts), ts[round((len(ts) - 1) * 0.9)]

    p50, p90 = timed(1)
    q50, q90 = timed(256)
    name = "infer-int8" if int8 else "infer-bf16" if bf16 else "infer"
    return {"workload": name, "steps": steps, "latency_us_p50": p50, "latency_us_p90": p90,
            "latency_us_p50_b256": q50, "latency_us_p90_b256": q90, "peak_rss_bytes": peak_rss()}


def gemm(steps, bf16=False):
    """1024³ f32, or with bf16 operands converted beforehand (PyTorch's fastest bf16 path; its
    output is bf16). distillery's gemm-bf16 also takes operands already in bf16, and writes f32."""
    n = 1024
    a, b = torch.rand(n, n), torch.rand(n, n)
    if bf16:
        a, b = a.bfloat16(), b.bfloat16()
    warm_up(lambda: a @ b)
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    m = statistics.median(ts)
    return {"workload": "gemm-bf16" if bf16 else "gemm", "steps": steps, "latency_us_p50": m * 1e6,
            "gflops": 2 * n ** 3 / m / 1e9, "peak_rss_bytes": peak_rss()}


BERT_TOKENS, BERT_BATCH = 128, 32


def bert_ids(rows, length):
    """The same fixed-length inputs as distillery's bert-teacher workload (src/bench.rs)."""
    return [[101] + [1000 + (r * 7919 + j * 104729) % 20000 for j in range(1, length - 1)] + [102]
            for r in range(rows)]


def bert_teacher(steps, folder="models/all-MiniLM-L6-v2"):
    """sentence-transformers' forward (transformer, mean pooling, normalise) in inference mode,
    on the already-tokenized batch: the encoder's cost, as distillery's workload measures it."""
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(folder, device="cpu").eval()
    ids = torch.tensor(bert_ids(BERT_BATCH, BERT_TOKENS))
    feats = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "token_type_ids": torch.zeros_like(ids)}
    with torch.inference_mode():
        t0, n = time.perf_counter(), 0
        while n < 2 or time.perf_counter() - t0 < 1.0:
            model(dict(feats))["sentence_embedding"].numpy()
            n += 1
        ts = []
        for _ in range(steps):
            t0 = time.perf_counter()
            model(dict(feats))["sentence_embedding"].numpy()
            ts.append(time.perf_counter() - t0)
    return {"workload": "bert-teacher", "steps": steps,
            "samples_per_s": BERT_BATCH / statistics.median(ts), "peak_rss_bytes": peak_rss()}


BERT_CORPUS = 256


def bert_corpus(steps, folder="models/all-MiniLM-L6-v2"):
    """sentence-transformers' encode() of the first BERT_CORPUS emails of the committed
    SpamAssassin file (the model's own 256-token limit; tokenizing included; batches of 32,
    sorted by length as encode() does), in inference mode: what computing a cache costs."""
    import gzip
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(folder, device="cpu").eval()
    with gzip.open("data/text/spam-assassin.jsonl.gz", "rt", encoding="utf-8") as f:
        texts = [json.loads(next(f))["text"] for _ in range(BERT_CORPUS)]
    with torch.inference_mode():
        t0, n = time.perf_counter(), 0
        while n < 1 or time.perf_counter() - t0 < 1.0:
            model.encode(texts, batch_size=BERT_BATCH)
            n += 1
        ts = []
        for _ in range(steps):
            t0 = time.perf_counter()
            model.encode(texts, batch_size=BERT_BATCH)
            ts.append(time.perf_counter() - t0)
    return {"workload": "bert-corpus", "steps": steps,
            "samples_per_s": len(texts) / statistics.median(ts), "peak_rss_bytes": peak_rss()}


def onnx_teacher(steps, file="data/teachers/digits-torch-mlp.onnx", dim=64):
    """onnxruntime as its docs recommend for CPU latency: all graph optimisations, one
    intra-op thread per core, sequential execution."""
    import os
    import numpy as np
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = os.cpu_count()
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(file, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def timed(b):
        x = (np.arange(b * dim) % 17).astype(np.float32).reshape(b, dim)
        t0, n = time.perf_counter(), 0
        while n < 5 or time.perf_counter() - t0 < 1.0:
            sess.run(None, {name: x})
            n += 1
        ts = []
        for _ in range(steps):
            t0 = time.perf_counter()
            sess.run(None, {name: x})
            ts.append((time.perf_counter() - t0) * 1e6)
        ts.sort()
        return statistics.median(ts), ts[round((len(ts) - 1) * 0.9)]

    p50, p90 = timed(1)
    q50, q90 = timed(256)
    return {"workload": "onnx-teacher" if dim == 64 else "onnx-teacher-cnn", "steps": steps, "latency_us_p50": p50,
            "latency_us_p90": p90, "latency_us_p50_b256": q50, "latency_us_p90_b256": q90,
            "peak_rss_bytes": peak_rss()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workload")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if "torch" in globals():
        torch.manual_seed(0)
    if a.workload == "train-mlp":
        r = train(a.workload, mlp([1200, 1200]), a.steps)
    elif a.workload == "train-student":
        r = train(a.workload, mlp([800, 800]), a.steps)
    elif a.workload == "train-cnn":
        r = train(a.workload, lenet(), a.steps)
    elif a.workload == "infer":
        r = infer(a.steps)
    elif a.workload == "infer-int8":
        r = infer(a.steps, int8=True)
    elif a.workload == "gemm":
        r = gemm(a.steps)
    elif a.workload in ("train-mlp-bf16", "train-student-bf16", "train-cnn-bf16"):
        net = {"train-mlp-bf16": lambda: mlp([1200, 1200]), "train-student-bf16": lambda: mlp([800, 800]),
               "train-cnn-bf16": lenet}[a.workload]()
        r = train(a.workload, net, a.steps, bf16=True)
    elif a.workload == "infer-bf16":
        r = infer(a.steps, bf16=True)
    elif a.workload == "gemm-bf16":
        r = gemm(a.steps, bf16=True)
    elif a.workload == "bert-teacher":
        r = bert_teacher(a.steps)
    elif a.workload == "bert-corpus":
        r = bert_corpus(a.steps)
    elif a.workload == "onnx-teacher":
        r = onnx_teacher(a.steps)
    elif a.workload == "onnx-teacher-cnn":
        r = onnx_teacher(a.steps, "data/teachers/mnist-cnn.onnx", 784)
    else:
        raise SystemExit(f"unknown workload {a.workload}")
    r.update(where())
    print(json.dumps(r) if a.json else r)


if __name__ == "__main__":
    main()
