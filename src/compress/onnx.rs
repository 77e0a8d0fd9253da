//! ONNX export, written straight from the ONNX protobuf schema (no protoc, no generated code).
//!
//! The graph takes **raw** features (`input`, `[N, d]` float, as in the data files: pixel values
//! 0–255 for images) and applies the model's normalisation itself, so a deployed model needs
//! nothing else. Classification graphs output `logits` and `probabilities` (softmax);
//! regression graphs output `value` in the target's own units.
//!
//! * f32 models: `Gemm` (+`Relu`) per dense layer; CNNs `Reshape → (Conv → Relu → MaxPool)… →
//!   Flatten → Gemm…`.
//! * int8 models: QDQ form — every dense layer's input passes `QuantizeLinear →
//!   DequantizeLinear` with its calibrated `u8` scale and zero point, and its weights are stored
//!   as `int8` and dequantized per output channel (`DequantizeLinear`, `axis = 0`); a runtime
//!   with int8 kernels fuses these into integer GEMMs.
//! * int8-weights: weights stored as `int8` with per-channel `DequantizeLinear`, float
//!   activations. int4-weights: exported with dequantized f32 weights (ONNX `int4` needs
//!   opset 21, which few runtimes execute).
//!
//! Opset 13, IR version 7.

use super::quant::{self, Precision};
use super::{AnyModel, Body};
use crate::data::{Normalizer, Task};
use crate::error::{Error, Result};
use crate::models::graph::{Node as GNode, Value as GValue};
use crate::models::{Model, ModelMeta, ParamKind};
use std::collections::HashMap;

// --- protobuf wire format -------------------------------------------------------------------

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, ((field as u64) << 3) | wire as u64);
}

fn field_varint(buf: &mut Vec<u8>, field: u32, v: i64) {
    key(buf, field, 0);
    varint(buf, v as u64);
}

fn field_bytes(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(buf, field, 2);
    varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

fn field_str(buf: &mut Vec<u8>, field: u32, s: &str) {
    field_bytes(buf, field, s.as_bytes());
}

// --- ONNX messages --------------------------------------------------------------------------

const FLOAT: i64 = 1;
const UINT8: i64 = 2;
const INT8: i64 = 3;
const INT64: i64 = 7;

/// An attribute value.
enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Str(String),
    Strs(Vec<String>),
}

struct Node {
    op: &'static str,
    /// Operator domain: "" (ONNX) or "ai.onnx.ml".
    domain: &'static str,
    inputs: Vec<String>,
    outputs: Vec<String>,
    attrs: Vec<(&'static str, Attr)>,
}

struct Init {
    name: String,
    dtype: i64,
    dims: Vec<i64>,
    raw: Vec<u8>,
}

fn encode_tensor(t: &Init) -> Vec<u8> {
    let mut b = Vec::new();
    for &d in &t.dims {
        field_varint(&mut b, 1, d);
    }
    field_varint(&mut b, 2, t.dtype);
    field_str(&mut b, 8, &t.name);
    field_bytes(&mut b, 9, &t.raw);
    b
}

fn encode_node(n: &Node, idx: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for i in &n.inputs {
        field_str(&mut b, 1, i);
    }
    for o in &n.outputs {
        field_str(&mut b, 2, o);
    }
    field_str(&mut b, 3, &format!("{}_{idx}", n.op));
    field_str(&mut b, 4, n.op);
    if !n.domain.is_empty() {
        field_str(&mut b, 7, n.domain);
    }
    for (name, a) in &n.attrs {
        let mut ab = Vec::new();
        field_str(&mut ab, 1, name);
        match a {
            Attr::Int(i) => {
                field_varint(&mut ab, 3, *i);
                field_varint(&mut ab, 20, 2);
            }
            Attr::Ints(v) => {
                for i in v {
                    field_varint(&mut ab, 8, *i);
                }
                field_varint(&mut ab, 20, 7);
            }
            Attr::Floats(v) => {
                for x in v {
                    key(&mut ab, 7, 5);
                    ab.extend_from_slice(&x.to_le_bytes());
                }
                field_varint(&mut ab, 20, 6);
            }
            Attr::Str(v) => {
                field_str(&mut ab, 4, v);
                field_varint(&mut ab, 20, 3);
            }
            Attr::Strs(v) => {
                for x in v {
                    field_str(&mut ab, 9, x);
                }
                field_varint(&mut ab, 20, 8);
            }
        }
        field_bytes(&mut b, 5, &ab);
    }
    b
}

/// `ValueInfoProto` for a float tensor `[N, dims…]` with a symbolic batch dimension.
fn value_info(name: &str, dims: &[usize]) -> Vec<u8> {
    let mut shape = Vec::new();
    let mut d = Vec::new();
    field_str(&mut d, 2, "N");
    field_bytes(&mut shape, 1, &d);
    for &x in dims {
        let mut d = Vec::new();
        field_varint(&mut d, 1, x as i64);
        field_bytes(&mut shape, 1, &d);
    }
    let mut tt = Vec::new();
    field_varint(&mut tt, 1, FLOAT);
    field_bytes(&mut tt, 2, &shape);
    let mut ty = Vec::new();
    field_bytes(&mut ty, 1, &tt);
    let mut vi = Vec::new();
    field_str(&mut vi, 1, name);
    field_bytes(&mut vi, 2, &ty);
    vi
}

/// Graph under construction.
#[derive(Default)]
struct Graph {
    nodes: Vec<Node>,
    inits: Vec<Init>,
    counter: usize,
}

impl Graph {
    fn fresh(&mut self, stem: &str) -> String {
        self.counter += 1;
        format!("{stem}_{}", self.counter)
    }

    fn init_f32(&mut self, stem: &str, dims: &[usize], v: &[f32]) -> String {
        let name = self.fresh(stem);
        self.inits.push(Init {
            name: name.clone(),
            dtype: FLOAT,
            dims: dims.iter().map(|&d| d as i64).collect(),
            raw: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        });
        name
    }

    fn init_raw(&mut self, stem: &str, dtype: i64, dims: &[usize], raw: Vec<u8>) -> String {
        let name = self.fresh(stem);
        self.inits.push(Init {
            name: name.clone(),
            dtype,
            dims: dims.iter().map(|&d| d as i64).collect(),
            raw,
        });
        name
    }

    fn op(
        &mut self,
        op: &'static str,
        inputs: &[&str],
        attrs: Vec<(&'static str, Attr)>,
    ) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.op_named(op, inputs, attrs, &out);
        out
    }

    fn op_named(
        &mut self,
        op: &'static str,
        inputs: &[&str],
        attrs: Vec<(&'static str, Attr)>,
        out: &str,
    ) {
        self.nodes.push(Node {
            op,
            domain: "",
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![out.to_string()],
            attrs,
        });
    }

    /// `DequantizeLinear` of int8 codes `[rows, cols]` with one scale per row.
    fn dq_weight(&mut self, q: &[i8], scales: &[f32], rows: usize, cols: usize) -> String {
        let wq = self.init_raw(
            "w_q",
            INT8,
            &[rows, cols],
            q.iter().map(|&c| c as u8).collect(),
        );
        let ws = self.init_f32("w_scale", &[rows], scales);
        let wz = self.init_raw("w_zero", INT8, &[rows], vec![0; rows]);
        self.op(
            "DequantizeLinear",
            &[&wq, &ws, &wz],
            vec![("axis", Attr::Int(0))],
        )
    }

    /// `QuantizeLinear → DequantizeLinear` of an activation with a per-tensor u8 quantizer.
    fn qdq(&mut self, x: &str, a: quant::ActQuant) -> String {
        let s = self.init_f32("x_scale", &[], &[a.scale]);
        let z = self.init_raw("x_zero", UINT8, &[], vec![a.zero_point]);
        let q = self.op("QuantizeLinear", &[x, &s, &z], vec![]);
        self.op("DequantizeLinear", &[&q, &s, &z], vec![])
    }

    fn encode(&self, input_dims: &[usize], outputs: &[(&str, usize)], doc: &str) -> Vec<u8> {
        let mut g = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            field_bytes(&mut g, 1, &encode_node(n, i));
        }
        field_str(&mut g, 2, "distillery");
        for t in &self.inits {
            field_bytes(&mut g, 5, &encode_tensor(t));
        }
        field_str(&mut g, 10, doc);
        field_bytes(&mut g, 11, &value_info("input", input_dims));
        for (name, d) in outputs {
            field_bytes(&mut g, 12, &value_info(name, &[*d]));
        }
        let mut m = Vec::new();
        field_varint(&mut m, 1, 7);
        field_str(&mut m, 2, "distillery");
        field_str(&mut m, 3, env!("CARGO_PKG_VERSION"));
        field_bytes(&mut m, 7, &g);
        let mut opset = Vec::new();
        field_str(&mut opset, 1, "");
        field_varint(&mut opset, 2, 13);
        field_bytes(&mut m, 8, &opset);
        if self.nodes.iter().any(|n| n.domain == ML) {
            let mut opset = Vec::new();
            field_str(&mut opset, 1, ML);
            field_varint(&mut opset, 2, 1);
            field_bytes(&mut m, 8, &opset);
        }
        m
    }
}

/// The domain of ONNX's classical machine-learning operators.
const ML: &str = "ai.onnx.ml";

/// A tree ensemble on the normalised input `x`: `TreeEnsembleClassifier` (its scores, without a
/// post-transform, are the model's logits) or `TreeEnsembleRegressor` (the standardised value).
/// Each tree's nodes are numbered internal nodes first, then leaves; rows with
/// `x[feature] <= value` take the true branch, as in distillery's own trees.
fn tree_ensemble(
    g: &mut Graph,
    x: &str,
    t: &crate::models::trees::TreeEnsemble,
    task: Task,
) -> String {
    use crate::models::trees::ALL_OUTPUTS;
    let k = t.outputs;
    let (mut tree_ids, mut node_ids, mut features, mut modes, mut values, mut trues, mut falses) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut leaf_tree, mut leaf_node, mut leaf_class, mut leaf_weight) =
        (vec![], vec![], vec![], vec![]);
    for (ti, tree) in t.trees.iter().enumerate() {
        let nn = tree.nodes.len() as i64;
        let id = |c: i32| if c >= 0 { c as i64 } else { nn + (!c) as i64 };
        for (i, n) in tree.nodes.iter().enumerate() {
            tree_ids.push(ti as i64);
            node_ids.push(i as i64);
            features.push(n.feature as i64);
            modes.push("BRANCH_LEQ".to_string());
            values.push(n.threshold);
            trues.push(id(n.left));
            falses.push(id(n.right));
        }
        for l in 0..tree.leaves() {
            tree_ids.push(ti as i64);
            node_ids.push(nn + l as i64);
            features.push(0);
            modes.push("LEAF".to_string());
            values.push(0.0);
            trues.push(0);
            falses.push(0);
            let mut add = |c: usize, w: f32| {
                leaf_tree.push(ti as i64);
                leaf_node.push(nn + l as i64);
                leaf_class.push(c as i64);
                leaf_weight.push(w);
            };
            if tree.output == ALL_OUTPUTS {
                for c in 0..k {
                    add(c, tree.values[l * k + c]);
                }
            } else {
                add(tree.output as usize, tree.values[l]);
            }
        }
    }
    let prefix = if task == Task::Classification {
        "class"
    } else {
        "target"
    };
    let mut attrs = vec![
        ("nodes_treeids", Attr::Ints(tree_ids)),
        ("nodes_nodeids", Attr::Ints(node_ids)),
        ("nodes_featureids", Attr::Ints(features)),
        ("nodes_modes", Attr::Strs(modes)),
        ("nodes_values", Attr::Floats(values)),
        ("nodes_truenodeids", Attr::Ints(trues)),
        ("nodes_falsenodeids", Attr::Ints(falses)),
        ("post_transform", Attr::Str("NONE".into())),
    ];
    // Two classes: runtimes read a two-class TreeEnsembleClassifier in their own "binary"
    // ways (onnxruntime outputs [-s, s], tract expects class 0's score alone), so a third,
    // empty class keeps the general layout, and its column is sliced off.
    let dummy = task == Task::Classification && k == 2;
    let mut base = t.base.clone();
    if dummy {
        base.push(0.0);
    }
    attrs.push(("base_values", Attr::Floats(base)));
    let (treeids, nodeids, ids, weights) = match prefix {
        "class" => (
            "class_treeids",
            "class_nodeids",
            "class_ids",
            "class_weights",
        ),
        _ => (
            "target_treeids",
            "target_nodeids",
            "target_ids",
            "target_weights",
        ),
    };
    attrs.extend([
        (treeids, Attr::Ints(leaf_tree)),
        (nodeids, Attr::Ints(leaf_node)),
        (ids, Attr::Ints(leaf_class)),
        (weights, Attr::Floats(leaf_weight)),
    ]);
    let scores = g.fresh("tree_scores");
    if task == Task::Classification {
        let labels = if dummy { 3 } else { k as i64 };
        attrs.push(("classlabels_int64s", Attr::Ints((0..labels).collect())));
        let label = g.fresh("tree_label");
        g.nodes.push(Node {
            op: "TreeEnsembleClassifier",
            domain: ML,
            inputs: vec![x.to_string()],
            outputs: vec![label, scores.clone()],
            attrs,
        });
        if dummy {
            let i64s = |v: i64| v.to_le_bytes().to_vec();
            let starts = g.init_raw("starts", INT64, &[1], i64s(0));
            let ends = g.init_raw("ends", INT64, &[1], i64s(2));
            let axes = g.init_raw("axes", INT64, &[1], i64s(1));
            return g.op("Slice", &[&scores, &starts, &ends, &axes], vec![]);
        }
    } else {
        attrs.push(("n_targets", Attr::Int(k as i64)));
        attrs.push(("aggregate_function", Attr::Str("SUM".into())));
        g.nodes.push(Node {
            op: "TreeEnsembleRegressor",
            domain: ML,
            inputs: vec![x.to_string()],
            outputs: vec![scores.clone()],
            attrs,
        });
    }
    scores
}

/// The ONNX bytes of `model`.
pub fn export(model: &AnyModel) -> Result<Vec<u8>> {
    export_graph(model).map_err(|e| match e {
        Error::Input(m) => Error::Input(format!("model {}: {m}", model.meta.name)),
        e => e,
    })
}

fn export_graph(model: &AnyModel) -> Result<Vec<u8>> {
    let meta = &model.meta;
    let spec = &meta.spec;
    let d = spec.input_dim();
    let mut g = Graph::default();
    let mut h = normalised_input(&mut g, meta, d)?;
    let precision = model.precision();
    match &model.body {
        Body::Trees(t) => h = tree_ensemble(&mut g, &h, t, meta.task),
        Body::Int8(q) => {
            let n = q.layers.len();
            for (l, layer) in q.layers.iter().enumerate() {
                let x = g.qdq(&h, layer.input);
                let w = g.dq_weight(&layer.w_q, &layer.w_scale, layer.n_out, layer.n_in);
                let b = g.init_f32("bias", &[layer.n_out], &layer.bias);
                h = g.op("Gemm", &[&x, &w, &b], vec![("transB", Attr::Int(1))]);
                if l + 1 < n {
                    h = g.op("Relu", &[&h], vec![]);
                }
            }
        }
        Body::Float(m) | Body::WeightOnly { model: m, .. } => h = float_body(&mut g, h, model, m)?,
    }
    let named = task_outputs(&mut g, &h, meta)?;
    let outputs: Vec<(&str, usize)> = named.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    let doc = format!(
        "distillery model '{}' ({}, {}); input: raw features [N, {d}]",
        meta.name,
        spec.describe(),
        precision.as_str()
    );
    Ok(g.encode(&[d], &outputs, &doc))
}

/// The graph's input, normalised as the model's normaliser says; the value's name.
fn normalised_input(g: &mut Graph, meta: &ModelMeta, d: usize) -> Result<String> {
    let mut h = "input".to_string();
    match &meta.normalizer {
        Normalizer::None => {}
        Normalizer::Global { mean, std } => {
            let m = g.init_f32("mean", &[], &[*mean]);
            let s = g.init_f32("inv_std", &[], &[1.0 / std]);
            let c = g.op("Sub", &[&h, &m], vec![]);
            h = g.op("Mul", &[&c, &s], vec![]);
        }
        Normalizer::PerFeature { mean, std } => {
            if mean.len() != d || std.len() != d {
                return Err(Error::Input(format!(
                    "model {}: the normaliser has {} features but the model takes {d}",
                    meta.name,
                    mean.len()
                )));
            }
            let m = g.init_f32("mean", &[d], mean);
            let s = g.init_f32("std", &[d], std);
            let c = g.op("Sub", &[&h, &m], vec![]);
            h = g.op("Div", &[&c, &s], vec![]);
        }
    }
    Ok(h)
}

/// A featurized row of token ids as floats (-1 for padding; the tokenizer itself runs outside
/// the graph) to the mean of their embeddings in `table`.
fn embedding_mean(g: &mut Graph, h: &str, table: &str) -> String {
    let half = g.init_f32("minus_half", &[], &[-0.5]);
    let present = g.op("Greater", &[h, &half], vec![]);
    let mask = g.op("Cast", &[&present], vec![("to", Attr::Int(FLOAT))]);
    let clamped = g.op("Relu", &[h], vec![]);
    let ids = g.op("Cast", &[&clamped], vec![("to", Attr::Int(INT64))]);
    let emb = g.op("Gather", &[table, &ids], vec![("axis", Attr::Int(0))]);
    let ax2 = g.init_raw("axes", INT64, &[1], 2i64.to_le_bytes().to_vec());
    let mask3 = g.op("Unsqueeze", &[&mask, &ax2], vec![]);
    let masked = g.op("Mul", &[&emb, &mask3], vec![]);
    let ax1 = g.init_raw("axes", INT64, &[1], 1i64.to_le_bytes().to_vec());
    let sum = g.op(
        "ReduceSum",
        &[&masked, &ax1],
        vec![("keepdims", Attr::Int(0))],
    );
    let count = g.op(
        "ReduceSum",
        &[&mask, &ax1],
        vec![("keepdims", Attr::Int(1))],
    );
    let one = g.init_f32("one", &[], &[1.0]);
    let count = g.op("Max", &[&count, &one], vec![]);
    g.op("Div", &[&sum, &count], vec![])
}

/// The layers of a float (or weight-only) network after `h`, from its family's graph; the
/// value's name.
fn float_body(g: &mut Graph, mut h: String, model: &AnyModel, m: &Model) -> Result<String> {
    let spec = &model.meta.spec;
    let precision = model.precision();
    let stored = match &model.body {
        Body::WeightOnly { stored, .. } if precision == Precision::Int8Weights => Some(stored),
        _ => None,
    };
    let weights = m.weights()?;
    let shapes: Vec<Vec<usize>> = m.params.iter().map(|(_, v)| v.dims().to_vec()).collect();
    // Weight `i` as an ONNX tensor name: int8 + DequantizeLinear, or f32.
    let weight = |g: &mut Graph, i: usize, dense: bool| -> Result<String> {
        if let Some(st) = stored {
            if let quant::StoredWeight::I8 { q, scales } = &st[i] {
                let rows = scales.len();
                let cols = q.len() / rows.max(1);
                let dq = g.dq_weight(q, scales, rows, cols);
                if dense {
                    return Ok(dq); // [out, in]: used with transB = 1
                }
                let shape: Vec<i64> = shapes[i].iter().map(|&x| x as i64).collect();
                let sh = g.init_raw(
                    "shape",
                    INT64,
                    &[shape.len()],
                    shape.iter().flat_map(|x| x.to_le_bytes()).collect(),
                );
                return Ok(g.op("Reshape", &[&dq, &sh], vec![]));
            }
        }
        if dense {
            // Stored [in, out]; exported [out, in] for a uniform transB = 1.
            let (rows, cols, t) =
                quant::channel_major(ParamKind::DenseWeight, &shapes[i], &weights[i]);
            Ok(g.init_f32("weight", &[rows, cols], &t))
        } else {
            Ok(g.init_f32("weight", &shapes[i], &weights[i]))
        }
    };
    let graph = spec.arch.family().graph(m)?;
    // The current value, and values kept for residual connections.
    let mut saved: HashMap<usize, String> = HashMap::new();
    let owned = |g: &mut Graph, name: &str, v: &GValue| -> Result<String> {
        match v {
            GValue::Param(i) => Ok(g.init_f32(name, &shapes[*i], &weights[*i])),
            GValue::Owned { shape, data } => Ok(g.init_f32(name, shape, data)),
        }
    };
    for node in &graph.nodes {
        h = match node {
            GNode::Reshape(dims) => {
                let mut shape: Vec<i64> = vec![-1];
                shape.extend(dims.iter().map(|&x| x as i64));
                let sh = g.init_raw(
                    "shape",
                    INT64,
                    &[shape.len()],
                    shape.iter().flat_map(|x| x.to_le_bytes()).collect(),
                );
                g.op("Reshape", &[&h, &sh], vec![])
            }
            GNode::Conv { .. } => conv_node(g, &h, node, &mut |g, v| match v {
                GValue::Param(i) => weight(g, *i, false),
                other => owned(g, "weight", other),
            })?,
            GNode::Relu => g.op("Relu", &[&h], vec![]),
            GNode::MaxPool(size) => {
                let k: Vec<i64> = size.iter().map(|&x| x as i64).collect();
                g.op(
                    "MaxPool",
                    &[&h],
                    vec![
                        ("kernel_shape", Attr::Ints(k.clone())),
                        ("strides", Attr::Ints(k)),
                    ],
                )
            }
            GNode::GlobalAvgPool => {
                let p = g.op("GlobalAveragePool", &[&h], vec![]);
                g.op("Flatten", &[&p], vec![("axis", Attr::Int(1))])
            }
            GNode::Flatten => g.op("Flatten", &[&h], vec![("axis", Attr::Int(1))]),
            GNode::Dense { weight: wv, bias } => {
                let w = match wv {
                    GValue::Param(i) => weight(g, *i, true)?,
                    GValue::Owned { shape, data } => {
                        // Stored [in, out]; exported [out, in] for transB = 1.
                        let (rows, cols, t) =
                            quant::channel_major(ParamKind::DenseWeight, shape, data);
                        g.init_f32("weight", &[rows, cols], &t)
                    }
                };
                let b = owned(g, "bias", bias)?;
                g.op("Gemm", &[&h, &w, &b], vec![("transB", Attr::Int(1))])
            }
            GNode::Save(slot) => {
                saved.insert(*slot, h.clone());
                h
            }
            GNode::AddSaved { slot, projection } => {
                let s = saved.get(slot).cloned().ok_or_else(|| {
                    Error::Other(format!(
                        "export graph: slot {slot} read before it is written"
                    ))
                })?;
                let s = match projection {
                    Some(p) => conv_node(g, &s, p, &mut |g, v| owned(g, "weight", v))?,
                    None => s,
                };
                g.op("Add", &[&h, &s], vec![])
            }
            GNode::EmbeddingMean { table } => {
                let table = owned(g, "embed", table)?;
                embedding_mean(g, &h, &table)
            }
        };
    }

    Ok(h)
}

/// The graph's named outputs and their widths: a multi-task model's heads, a classifier's
/// logits and probabilities, a regressor's value in the target's units.
fn task_outputs(g: &mut Graph, h: &str, meta: &ModelMeta) -> Result<Vec<(String, usize)>> {
    let spec = &meta.spec;
    Ok(match meta.task {
        _ if !meta.heads.is_empty() => head_outputs(g, h, meta)?,
        Task::Classification => {
            g.op_named("Identity", &[h], vec![], "logits");
            g.op_named(
                "Softmax",
                &["logits"],
                vec![("axis", Attr::Int(1))],
                "probabilities",
            );
            vec![
                ("logits".to_string(), spec.outputs),
                ("probabilities".to_string(), spec.outputs),
            ]
        }
        Task::Regression => {
            let ts = meta.target_scale.unwrap_or(crate::data::TargetScale {
                mean: 0.0,
                std: 1.0,
            });
            let s = g.init_f32("target_std", &[], &[ts.std]);
            let mu = g.init_f32("target_mean", &[], &[ts.mean]);
            let scaled = g.op("Mul", &[h, &s], vec![]);
            g.op_named("Add", &[&scaled, &mu], vec![], "value");
            vec![("value".to_string(), 1)]
        }
    })
}

/// A multi-task model's outputs: `outputs` (every head's raw columns, what the model's own
/// predict gives), then one output per head, named after its task — a class head's
/// probabilities (softmax), a value head's values (in the target's units when it learned
/// the labels), an embedding head's vector — each a `Slice` of the columns.
fn head_outputs(
    g: &mut Graph,
    h: &str,
    meta: &crate::models::ModelMeta,
) -> Result<Vec<(String, usize)>> {
    use crate::models::HeadKind;
    g.op_named("Identity", &[h], vec![], "outputs");
    let mut out = vec![("outputs".to_string(), meta.spec.outputs)];
    let int = |g: &mut Graph, stem: &str, v: usize| {
        g.init_raw(stem, INT64, &[1], (v as i64).to_le_bytes().to_vec())
    };
    for head in &meta.heads {
        let taken = |n: &str| {
            n == "input"
                || g.inits.iter().any(|i| i.name == n)
                || g.nodes.iter().any(|x| x.outputs.iter().any(|o| o == n))
        };
        if taken(&head.name) {
            return Err(Error::Input(format!(
                "task '{}': its name is already a tensor of the ONNX graph; rename the task",
                head.name
            )));
        }
        let starts = int(g, "starts", head.start);
        let ends = int(g, "ends", head.start + head.outputs);
        let axes = int(g, "axes", 1);
        let cols = g.op("Slice", &["outputs", &starts, &ends, &axes], vec![]);
        match head.kind {
            HeadKind::Classes => g.op_named(
                "Softmax",
                &[&cols],
                vec![("axis", Attr::Int(1))],
                &head.name,
            ),
            HeadKind::Values
                if head.labels && (head.scale.is_some() || meta.target_scale.is_some()) =>
            {
                let ts = match &head.column {
                    Some(_) => head.scale,
                    None => meta.target_scale,
                }
                .unwrap_or(crate::data::TargetScale {
                    mean: 0.0,
                    std: 1.0,
                });
                let s = g.init_f32("target_std", &[], &[ts.std]);
                let mu = g.init_f32("target_mean", &[], &[ts.mean]);
                let scaled = g.op("Mul", &[&cols, &s], vec![]);
                g.op_named("Add", &[&scaled, &mu], vec![], &head.name);
            }
            _ => g.op_named("Identity", &[&cols], vec![], &head.name),
        }
        out.push((head.name.clone(), head.outputs));
    }
    Ok(out)
}

/// A `Conv` node for a graph's [`GNode::Conv`] on `x`; `weight` names (or writes) a weight.
fn conv_node(
    g: &mut Graph,
    x: &str,
    node: &GNode,
    weight: &mut dyn FnMut(&mut Graph, &GValue) -> Result<String>,
) -> Result<String> {
    let GNode::Conv {
        weight: wv,
        bias,
        kernel,
        stride,
        pad,
    } = node
    else {
        return Err(Error::Other(
            "export graph: a projection that is not a convolution".into(),
        ));
    };
    if kernel.iter().any(|&k| k.is_multiple_of(2)) && *pad > 0 {
        let k: Vec<String> = kernel.iter().map(|k| k.to_string()).collect();
        return Err(Error::Input(format!(
            "ONNX export does not support conv layers with an even kernel ({}): 'same' padding would be asymmetric",
            k.join("×")
        )));
    }
    let w = weight(g, wv)?;
    let b = match bias {
        GValue::Owned { shape, data } => g.init_f32("bias", shape, data),
        GValue::Param(_) => weight(g, bias)?,
    };
    let n = kernel.len();
    Ok(g.op(
        "Conv",
        &[x, &w, &b],
        vec![
            (
                "kernel_shape",
                Attr::Ints(kernel.iter().map(|&k| k as i64).collect()),
            ),
            ("strides", Attr::Ints(vec![*stride as i64; n])),
            ("pads", Attr::Ints(vec![*pad as i64; 2 * n])),
        ],
    ))
}

/// Runs exported ONNX bytes in tract (a pure-Rust ONNX runtime) on `rows` raw inputs of `dim`
/// features; returns the first output (logits, or values for regression). What a distillery
/// export is checked against.
pub fn run_in_tract(bytes: &[u8], raw: &[f32], rows: usize, dim: usize) -> Result<Vec<f32>> {
    run_in_tract_all(bytes, raw, rows, dim)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Other("tract: the graph has no output".into()))
}

/// [`run_in_tract`]'s every output, in the graph's order (a multi-task model's heads follow
/// its raw outputs).
pub fn run_in_tract_all(
    bytes: &[u8],
    raw: &[f32],
    rows: usize,
    dim: usize,
) -> Result<Vec<Vec<f32>>> {
    use tract_onnx::prelude::*;
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::Other(format!("tract: {what}: {e}"));
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .map_err(|e| fail("cannot read the ONNX graph", &e))?
        .with_input_fact(0, f32::fact([rows, dim]).into())
        .map_err(|e| fail("input shape", &e))?
        .into_optimized()
        .map_err(|e| fail("cannot optimize the graph", &e))?
        .into_runnable()
        .map_err(|e| fail("cannot plan the graph", &e))?;
    let input: Tensor = tract_ndarray::Array2::from_shape_vec((rows, dim), raw.to_vec())
        .map_err(|e| fail("input", &e))?
        .into();
    let out = plan
        .run(tvec!(input.into()))
        .map_err(|e| fail("cannot run the graph", &e))?;
    out.iter()
        .map(|o| {
            Ok(o.to_plain_array_view::<f32>()
                .map_err(|e| fail("output", &e))?
                .iter()
                .copied()
                .collect())
        })
        .collect()
}
