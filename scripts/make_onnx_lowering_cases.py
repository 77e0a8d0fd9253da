#!/usr/bin/env python3
"""Makes tests/data/onnx/lower-*.onnx: graphs in the forms PyTorch exports that distillery lowers
onto its own kernels (src/teachers/lowered.rs), with onnxruntime's outputs beside them.

    python3 -m venv v && v/bin/pip install onnx onnxruntime numpy
    v/bin/python scripts/make_onnx_lowering_cases.py

- `lower-mlp.onnx`: input `x` [N, 12] → Sub (per-feature mean) → Div (scalar) → MatMul → Add
  (bias) → BatchNormalization (a BatchNorm1d in eval mode) → Relu → Dropout → Gemm (transB = 0,
  alpha 0.5, beta 2) → Relu → Gemm (transB = 1) → Mul (per-class scale) → outputs `logits` and,
  after LogSoftmax, `logp` (second). Every fold the lowering does, in one graph.
- `lower-cnn.onnx`: input `img` [N, 2, 6, 6] → Mul (scalar) → Conv 3x3 pad 1 (3 filters) →
  BatchNormalization → MaxPool 2x2 → Relu (pool before ReLU) → Conv 3x3 pad 1 (5 filters) →
  Relu → MaxPool → Reshape [-1, 5·1·1] → Gemm → `out`.
- `lower-branch.onnx`: the first MLP layer's output added back to itself through a second
  path (a residual Add): not lowerable; tract runs it.

Weights are seeded random numbers. onnxruntime's outputs on 6 seeded inputs of each go to
lower-cases.expected.json. (Written with onnx.helper: PyTorch's wheel is not installed here.)
"""
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "onnx")
rng = np.random.default_rng(29)


def arr(*shape, scale=0.3):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def save(name, nodes, inits, inputs, outputs):
    g = helper.make_graph(nodes, name, inputs, outputs, initializer=[
        numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)],
                          producer_name="make_onnx_lowering_cases.py")
    onnx.checker.check_model(m)
    onnx.save(m, os.path.join(OUT, name + ".onnx"))
    return m


def mlp():
    inits = {
        "mean": arr(12), "div": np.array(3.0, np.float32),
        "w0": arr(12, 16), "b0": arr(16),
        "bn_s": (1 + arr(16, scale=0.2)), "bn_b": arr(16), "bn_m": arr(16),
        "bn_v": (0.5 + np.abs(arr(16))),
        "w1": arr(16, 8), "b1": arr(8),
        "w2": arr(5, 8), "b2": arr(5), "scale": (1 + arr(5, scale=0.2)),
    }
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["s"]),
        helper.make_node("Div", ["s", "div"], ["d"]),
        helper.make_node("MatMul", ["d", "w0"], ["m0"]),
        helper.make_node("Add", ["m0", "b0"], ["a0"]),
        helper.make_node("BatchNormalization", ["a0", "bn_s", "bn_b", "bn_m", "bn_v"], ["n0"],
                         epsilon=1e-3),
        helper.make_node("Relu", ["n0"], ["r0"]),
        helper.make_node("Dropout", ["r0"], ["o0"]),
        helper.make_node("Gemm", ["o0", "w1", "b1"], ["g1"], alpha=0.5, beta=2.0),
        helper.make_node("Relu", ["g1"], ["r1"]),
        helper.make_node("Gemm", ["r1", "w2", "b2"], ["g2"], transB=1),
        helper.make_node("Mul", ["g2", "scale"], ["logits"]),
        helper.make_node("LogSoftmax", ["logits"], ["logp"], axis=1),
    ]
    f = lambda n, w: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", w])
    return save("lower-mlp", nodes, inits, [f("x", 12)], [f("logits", 5), f("logp", 5)]), 12


def cnn():
    inits = {
        "k": np.array(0.5, np.float32),
        "c0w": arr(3, 2, 3, 3), "c0b": arr(3),
        "bn_s": (1 + arr(3, scale=0.2)), "bn_b": arr(3), "bn_m": arr(3),
        "bn_v": (0.5 + np.abs(arr(3))),
        "c1w": arr(5, 3, 3, 3), "c1b": arr(5),
        "shape": np.array([-1, 5], np.int64),
        "fw": arr(5, 4), "fb": arr(4),
    }
    nodes = [
        helper.make_node("Mul", ["img", "k"], ["x"]),
        helper.make_node("Conv", ["x", "c0w", "c0b"], ["c0"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c0", "bn_s", "bn_b", "bn_m", "bn_v"], ["n0"]),
        helper.make_node("MaxPool", ["n0"], ["p0"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Relu", ["p0"], ["r0"]),
        helper.make_node("Conv", ["r0", "c1w", "c1b"], ["c1"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p1", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["out"]),
    ]
    i = helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 2, 6, 6])
    o = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])
    return save("lower-cnn", nodes, inits, [i], [o]), 72


def branch():
    inits = {"w0": arr(12, 12), "b0": arr(12), "w1": arr(12, 3), "b1": arr(3)}
    nodes = [
        helper.make_node("Gemm", ["x", "w0", "b0"], ["g0"]),
        helper.make_node("Relu", ["g0"], ["r0"]),
        helper.make_node("Add", ["r0", "x"], ["res"]),
        helper.make_node("Gemm", ["res", "w1", "b1"], ["y"]),
    ]
    f = lambda n, w: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", w])
    return save("lower-branch", nodes, inits, [f("x", 12)], [f("y", 3)]), 12


def main():
    import onnxruntime as ort
    expected = {"source": "onnxruntime " + ort.__version__}
    for name, (model, dim) in {"lower-mlp": mlp(), "lower-cnn": cnn(),
                               "lower-branch": branch()}.items():
        sess = ort.InferenceSession(os.path.join(OUT, name + ".onnx"),
                                    providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        x = (rng.standard_normal((6, dim)) * 2).astype(np.float32)
        shape = [6] + [d for d in inp.shape[1:]]
        outs = sess.run(None, {inp.name: x.reshape(shape)})
        expected[name] = {"inputs": x.tolist(),
                          "outputs": {o.name: v.reshape(6, -1).tolist()
                                      for o, v in zip(sess.get_outputs(), outs)}}
    with open(os.path.join(OUT, "lower-cases.expected.json"), "w") as f:
        json.dump(expected, f)
        f.write("\n")


if __name__ == "__main__":
    main()
