#!/usr/bin/env python3
"""Makes tests/data/onnx/image-cnn*.onnx: a small CNN in the forms PyTorch's `torch.onnx.export`
writes for image models, to test distillery's ONNX teachers on them.

    python3 -m venv v && v/bin/pip install onnx onnxruntime numpy
    v/bin/python scripts/make_onnx_image_teacher.py

The graph (opset 17) takes `pixels`, float `[N, 1, 8, 8]` with a dynamic batch axis N — not
`[batch, features]` — and gives two outputs, `probs` (softmax) first and `logits` second, so a
teacher must pick its output by name: Conv 3x3 (4 filters, pad 1) → Relu → MaxPool 2x2 →
Flatten → Gemm (64 → 10) → logits; Softmax → probs. Weights are seeded random numbers (the test
is about reading and running the graph, not about accuracy). Written twice: in one file, and
with its weights in an external-data file beside it (`image-cnn-ext.onnx` +
`image-cnn-ext.onnx.data`, as torch.onnx.export writes large models). onnxruntime's outputs on
5 seeded inputs go to image-cnn.expected.json, which tests/teachers.rs compares tract's with.

(PyTorch itself is not installed in this workplace — its PyPI wheel pulls in gigabytes of CUDA
libraries — so the graph is written with onnx.helper in the same form.)
"""
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "onnx")


def main():
    rng = np.random.default_rng(17)
    w1 = (rng.standard_normal((4, 1, 3, 3)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(4) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((64, 10)) * 0.2).astype(np.float32)
    b2 = (rng.standard_normal(10) * 0.1).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "conv.weight"),
        numpy_helper.from_array(b1, "conv.bias"),
        numpy_helper.from_array(w2, "fc.weight"),
        numpy_helper.from_array(b2, "fc.bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["pixels", "conv.weight", "conv.bias"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "image-cnn",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="distillery-test")
    model.ir_version = 8
    onnx.checker.check_model(model)
    os.makedirs(OUT, exist_ok=True)
    onnx.save_model(model, os.path.join(OUT, "image-cnn.onnx"))
    onnx.save_model(
        model,
        os.path.join(OUT, "image-cnn-ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="image-cnn-ext.onnx.data",
        size_threshold=0,
    )
    x = rng.uniform(0, 16, (5, 1, 8, 8)).astype(np.float32)
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(os.path.join(OUT, "image-cnn.onnx"))
        logits = sess.run(["logits"], {"pixels": x})[0]
        source = "onnxruntime " + ort.__version__
    except ImportError:
        # numpy reference of the same graph
        raise SystemExit("install onnxruntime to record the expected outputs")
    with open(os.path.join(OUT, "image-cnn.expected.json"), "w") as f:
        json.dump({"source": source, "inputs": x.reshape(5, 64).tolist(), "logits": logits.tolist()}, f)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
