"""PyTorch reference for configs/mnist-hinton.toml, for the end-to-end comparison in
BENCHMARKS.md: the same data split sizes (5% of the training set held out for validation),
normalisation (one mean/std from the training split), models (784-1200-1200-10 teacher with
dropout 0.5 / input dropout 0.2 and ±2-pixel jitter; 784-800-800-10 students), Adam with a
cosine schedule to min_lr, batch 128, and the distillation loss α·T²·KL + (1−α)·CE at T = 20.

usage: mnist_hinton.py [--teacher-epochs N] [--student-epochs M]   (defaults: the config's 80 / 30)
Prints one JSON object: wall seconds, peak RSS, test errors of the three models.
"""
import argparse, gzip, json, resource, struct, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(1)


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def mlp(hidden, dropout=0.0, input_dropout=0.0):
    layers, d = [nn.Dropout(input_dropout)], 784
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout)]
        d = h
    layers.append(nn.Linear(d, 10))
    return nn.Sequential(*layers)


def jitter(x, k=2):
    # x: [b, 784] normalised; shift each image by up to k pixels, fill with the blank value.
    b = x.shape[0]
    img = x.view(b, 28, 28)
    fill = float(img.min())
    padded = F.pad(img, (k, k, k, k), value=fill)
    dx = torch.randint(0, 2 * k + 1, (b,))
    dy = torch.randint(0, 2 * k + 1, (b,))
    out = torch.stack([padded[i, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28] for i in range(b)])
    return out.reshape(b, 784)


def train(model, x, y, epochs, teacher_logits=None, T=20.0, alpha=0.9, use_jitter=False):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=1e-5)
    n = x.shape[0]
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n)
        for i in range(0, n, 128):
            idx_ = perm[i:i + 128]
            xb = x[idx_]
            if use_jitter:
                xb = jitter(xb)
            opt.zero_grad(set_to_none=True)
            out = model(xb)
            if teacher_logits is None:
                loss = F.cross_entropy(out, y[idx_])
            else:
                kl = F.kl_div(F.log_softmax(out / T, 1), F.softmax(teacher_logits[idx_] / T, 1), reduction="batchmean")
                loss = alpha * T * T * kl + (1 - alpha) * F.cross_entropy(out, y[idx_])
            loss.backward()
            opt.step()
        sched.step()
    return model


def predict(model, x):
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(x[i:i + 1024]) for i in range(0, x.shape[0], 1024)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher-epochs", type=int, default=80)
    ap.add_argument("--student-epochs", type=int, default=30)
    a = ap.parse_args()
    t0 = time.perf_counter()
    xtr = idx("data/mnist/train-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255
    ytr = idx("data/mnist/train-labels-idx1-ubyte.gz").astype(np.int64)
    xte = idx("data/mnist/t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255
    yte = idx("data/mnist/t10k-labels-idx1-ubyte.gz").astype(np.int64)
    perm = np.random.default_rng(1).permutation(len(xtr))
    n_val = round(len(xtr) * 0.05)
    tr = perm[n_val:]
    mean, std = xtr[tr].mean(), xtr[tr].std()
    x = torch.from_numpy((xtr[tr] - mean) / std)
    y = torch.from_numpy(ytr[tr])
    xt = torch.from_numpy((xte - mean) / std)
    yt = torch.from_numpy(yte)
    errors = lambda m: int((predict(m, xt).argmax(1) != yt).sum())
    teacher = train(mlp([1200, 1200], 0.5, 0.2), x, y, a.teacher_epochs, use_jitter=True)
    labels = train(mlp([800, 800]), x, y, a.student_epochs)
    soft = predict(teacher, x)
    distilled = train(mlp([800, 800]), x, y, a.student_epochs, teacher_logits=soft)
    print(json.dumps({
        "tool": f"pytorch {torch.__version__}", "threads": torch.get_num_threads(),
        "teacher_epochs": a.teacher_epochs, "student_epochs": a.student_epochs,
        "wall_seconds": time.perf_counter() - t0,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "test_errors": {"teacher": errors(teacher), "student-labels": errors(labels), "student-distilled": errors(distilled)},
    }))


if __name__ == "__main__":
    main()
