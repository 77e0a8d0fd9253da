"""Distil a small PyTorch CNN (trained here on the 8×8 digits) into a distillery student.

The CNN's logits on the training rows are the teacher outputs; distillery trains a small MLP
student from them and from the labels. Teacher and student are then compared on a test set
neither saw, for accuracy and batch-1 latency (PyTorch in inference mode, as its docs
recommend, against the student's `predict`).

    python python/examples/torch_cnn_teacher.py
"""

import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import distillery

torch.manual_seed(0)
X, y = load_digits(return_X_y=True)
X = X.astype(np.float32)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(64 * 16, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10),
        )

    def forward(self, x):  # x: raw pixels 0–16, (n, 64)
        return self.body(x.view(-1, 1, 8, 8) / 16.0)


teacher = CNN()
opt = torch.optim.Adam(teacher.parameters(), lr=2e-3)
xt, yt = torch.from_numpy(X_train), torch.from_numpy(y_train)
for epoch in range(25):
    perm = torch.randperm(len(xt))
    for i in range(0, len(xt), 64):
        idx = perm[i:i + 64]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(teacher(xt[idx]), yt[idx]).backward()
        opt.step()
teacher.eval()
with torch.inference_mode():
    teacher_logits = teacher(xt).numpy()
    teacher_acc = float((teacher(torch.from_numpy(X_test)).argmax(1).numpy() == y_test).mean())

student, record = distillery.distill(
    X_train, y_train, teacher_outputs=teacher_logits,
    student="mlp:32", epochs=80, train={"lr": 3e-3},
    X_test=X_test, y_test=y_test, quiet=True,
)


def latency_us(predict, x, runs=500):
    for _ in range(50):
        predict(x)
    t = []
    for _ in range(runs):
        s = time.perf_counter()
        predict(x)
        t.append(time.perf_counter() - s)
    return 1e6 * float(np.median(t))


def torch_predict(x):
    with torch.inference_mode():
        return torch.softmax(teacher(torch.from_numpy(x)), 1).numpy()


one = X_test[:1]
teacher_params = sum(p.numel() for p in teacher.parameters())
rows = [
    ("teacher: PyTorch CNN", teacher_acc, teacher_params, latency_us(torch_predict, one)),
    (f"student: distillery {student.architecture}", record["accuracy"], student.params, latency_us(student.predict, one)),
]
print(f"{'model':<40} {'test accuracy':>13} {'params':>8} {'batch-1 µs':>11}")
for name, acc, params, lat in rows:
    print(f"{name:<40} {acc:>13.4f} {params:>8} {lat:>11.1f}")
d = record["distill"]
print(f"chosen on the validation split: alpha {d['alpha']}, temperature {d['temperature']}")

results = {
    "teacher_accuracy": teacher_acc,
    "student_accuracy": record["accuracy"],
    "teacher_params": teacher_params,
    "student_params": student.params,
    "teacher_latency_us": rows[0][3],
    "student_latency_us": rows[1][3],
}
