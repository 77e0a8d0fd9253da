#!/usr/bin/env python3
"""Makes tests/data/onnx/token-bag.onnx: a text classifier over integer token ids in the form
`torch.onnx.export` writes for Hugging Face models — three int64 inputs `input_ids`,
`attention_mask`, `token_type_ids`, each [batch, tokens] with both axes dynamic — to test
distillery's ONNX teachers on texts.

    python3 -m venv v && v/bin/pip install onnx onnxruntime numpy
    v/bin/python scripts/make_onnx_token_teacher.py

The graph (opset 17): token embeddings (64 ids × 8) plus token-type embeddings (2 × 8), masked
mean over the tokens, tanh, a dense layer to 2 logits (`logits`). Weights are seeded random
numbers. Six rows of token ids as distillery featurizes texts (ids, then -1 padding) and
onnxruntime's logits on them go to token-bag.expected.json — once as they are (padding id 0),
once with [CLS] = 1 before and [SEP] = 2 after each text's tokens.
(Written with onnx.helper: PyTorch's wheel is not installed here.)
"""
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "onnx")
V, D = 64, 8


def model():
    rng = np.random.default_rng(41)
    inits = [
        numpy_helper.from_array((rng.standard_normal((V, D))).astype(np.float32), "emb"),
        numpy_helper.from_array((rng.standard_normal((2, D))).astype(np.float32), "types"),
        numpy_helper.from_array((rng.standard_normal((D, 2))).astype(np.float32), "w"),
        numpy_helper.from_array((rng.standard_normal(2) * 0.1).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([2], np.int64), "ax2"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
        helper.make_node("Gather", ["types", "token_type_ids"], ["t"]),
        helper.make_node("Add", ["e", "t"], ["h"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "ax2"], ["mu"]),
        helper.make_node("Mul", ["h", "mu"], ["hm"]),
        helper.make_node("ReduceSum", ["hm", "ax1"], ["num"], keepdims=0),
        helper.make_node("ReduceSum", ["mu", "ax1"], ["den"], keepdims=0),
        helper.make_node("Div", ["num", "den"], ["mean"]),
        helper.make_node("Tanh", ["mean"], ["z"]),
        helper.make_node("Gemm", ["z", "w", "b"], ["logits"]),
    ]
    ids = lambda n: helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "tokens"])
    g = helper.make_graph(nodes, "token-bag",
                          [ids("input_ids"), ids("attention_mask"), ids("token_type_ids")],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)],
                          producer_name="make_onnx_token_teacher.py")
    onnx.checker.check_model(m)
    path = os.path.join(OUT, "token-bag.onnx")
    onnx.save(m, path)
    return path


def feed(rows, pad, cls=None, sep=None):
    """distillery's rows (ids, then -1) as the graph's three inputs."""
    width = len(rows[0]) + (cls is not None) + (sep is not None)
    ids, mask = [], []
    for r in rows:
        real = ([cls] if cls is not None else []) + [int(v) for v in r if v != -1] + \
               ([sep] if sep is not None else [])
        ids.append(real + [pad] * (width - len(real)))
        mask.append([1] * len(real) + [0] * (width - len(real)))
    ids = np.array(ids, np.int64)
    return {"input_ids": ids, "attention_mask": np.array(mask, np.int64),
            "token_type_ids": np.zeros_like(ids)}


def main():
    import onnxruntime as ort
    sess = ort.InferenceSession(model(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    rows = []
    for n in [6, 3, 1, 5, 2, 4]:
        r = [float(v) for v in rng.integers(3, V, n)] + [-1.0] * (6 - n)
        rows.append(r)
    plain = sess.run(None, feed(rows, 0))[0]
    wrapped = sess.run(None, feed(rows, 0, 1, 2))[0]
    with open(os.path.join(OUT, "token-bag.expected.json"), "w") as f:
        json.dump({"source": "onnxruntime " + ort.__version__, "rows": rows,
                   "logits": plain.tolist(), "logits_cls_sep": wrapped.tolist()}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
