"""Trains a small PyTorch teacher on the UCI 8x8 digits and exports it to ONNX: the committed
data/teachers/digits-torch-mlp.onnx, a model distillery did not make, used to test and show
ONNX teachers. Also writes the PyTorch outputs for the first 16 samples beside it, which the
tests compare with distillery's run of the ONNX file in tract.

usage: .venv/bin/python bench/reference/make_onnx_teacher.py   (needs torch and onnx)
"""
import csv, gzip, json, os, sys
import torch

torch.manual_seed(0)
root = os.path.join(os.path.dirname(__file__), "..", "..")
rows = list(csv.reader(gzip.open(os.path.join(root, "data/sklearn/digits.csv.gz"), "rt")))
header, rows = rows[0], rows[1:]
x = torch.tensor([[float(v) for v in r[:-1]] for r in rows])
y = torch.tensor([int(r[-1]) for r in rows])


class Teacher(torch.nn.Module):
    """Raw pixel values (0-16) in, logits out: the scaling is part of the model."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))

    def forward(self, pixels):
        return self.net(pixels / 16.0)


model = Teacher()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(40):
    perm = torch.randperm(len(x))
    for i in range(0, len(x), 64):
        idx = perm[i:i + 64]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
model.eval()
with torch.inference_mode():
    acc = (model(x).argmax(1) == y).float().mean().item()
print(f"training accuracy {acc:.4f}", file=sys.stderr)
out_dir = os.path.join(root, "data/teachers")
os.makedirs(out_dir, exist_ok=True)
path = os.path.join(out_dir, "digits-torch-mlp.onnx")
torch.onnx.export(model, (x[:1],), path, input_names=["pixels"], output_names=["logits"],
                  dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
                  opset_version=13, dynamo=False)
with torch.inference_mode():
    ref = model(x[:16])
json.dump({"inputs": x[:16].tolist(), "logits": ref.tolist(), "torch": torch.__version__,
           "training_accuracy": acc},
          open(os.path.join(out_dir, "digits-torch-mlp.outputs.json"), "w"))
