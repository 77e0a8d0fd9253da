//! An ONNX graph lowered onto distillery's own models, so that an outside teacher runs on
//! `kernels` (the fused MLP and CNN passes) instead of tract.
//!
//! The graphs lowered are the ones PyTorch writes for plain classifiers: from the one input to
//! the chosen output, a single path of
//! - element-wise `Sub` / `Add` / `Mul` / `Div` by a constant (a scalar or one value per input
//!   feature) before the first layer: the input's scaling and normalisation;
//! - `Reshape` / `Flatten` that keep the batch axis;
//! - conv blocks: `Conv` (square odd kernel, stride 1, "same" zero padding, one group, the same
//!   kernel in every block), `Relu` and a 2×2 `MaxPool` of stride 2 in either order, optionally
//!   a `BatchNormalization` after the `Conv` (folded into it);
//! - dense layers: `Gemm`, or `MatMul` with a constant right operand and an optional `Add` of a
//!   constant bias, optionally a `BatchNormalization` (folded), `Relu` after every one but the
//!   last, `Mul` / `Div` / `Add` / `Sub` by a constant after one (folded);
//! - `Identity` and `Dropout` (inference: nothing), and a final `Softmax` / `LogSoftmax` over
//!   the classes.
//!
//! Anything else — and any graph whose lowered outputs differ from tract's on a probe batch
//! ([`OnnxTeacher`](super::OnnxTeacher) checks) — stays in tract. `lower` says why a graph is
//! not lowered, in one line, so the teacher can log it.

use crate::error::Result;
use crate::models::{Arch, Model, ModelSpec};
use std::collections::HashMap;
use tract_onnx::pb::{GraphProto, NodeProto};

/// What follows the last dense layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Post {
    /// The logits themselves.
    None,
    /// Probabilities.
    Softmax,
    /// Log-probabilities.
    LogSoftmax,
}

/// A graph as one of distillery's models, with the input's per-feature affine map before it
/// and the output's normalisation after it.
pub struct Lowered {
    /// `x · scale + offset` per input feature, when the graph scales its input.
    pub pre: Option<(Vec<f32>, Vec<f32>)>,
    /// The model: an MLP, or a CNN when the graph has conv blocks.
    pub model: Model,
    /// Softmax or log-softmax after the logits, if the chosen output is one.
    pub post: Post,
}

impl Lowered {
    /// Outputs for `rows` samples in the graph's input layout (`x` is not changed).
    pub fn run(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let owned;
        let input = match &self.pre {
            Some((s, o)) => {
                let d = s.len();
                let mut v = vec![0f32; x.len()];
                for (y, x) in v.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    for i in 0..d {
                        y[i] = x[i] * s[i] + o[i];
                    }
                }
                owned = v;
                &owned[..]
            }
            None => x,
        };
        let family = self.model.spec.arch.family();
        let mut out = family.predict_rows(&self.model, input, rows)?;
        let k = self.model.spec.outputs;
        let mut p = vec![0f32; k];
        for row in out.chunks_exact_mut(k) {
            match self.post {
                Post::None => break,
                Post::Softmax => {
                    crate::kernels::softmax::softmax_into(row, 1.0, &mut p);
                    row.copy_from_slice(&p);
                }
                Post::LogSoftmax => {
                    let (max, lse) = crate::kernels::softmax::log_sum_exp::<f64>(row, 1.0, None);
                    row.iter_mut()
                        .for_each(|v| *v = ((*v - max) as f64 - lse) as f32);
                }
            }
        }
        Ok(out)
    }

    /// One line: what the graph became.
    pub fn describe(&self) -> String {
        self.model.spec.describe()
    }
}

/// A dense layer being collected: `[in, out]` weights and the bias.
struct Dense {
    w: Vec<f32>,
    inputs: usize,
    outputs: usize,
    b: Vec<f32>,
    relu: bool,
}

/// A conv block being collected.
struct ConvBlock {
    w: Vec<f32>,
    b: Vec<f32>,
    c_out: usize,
    kernel: usize,
    relu: bool,
    pooled: bool,
}

/// Where the walk is.
#[derive(PartialEq)]
enum Phase {
    Input,
    Conv,
    Dense,
    Done,
}

struct Walk<'a> {
    consts: HashMap<String, Const>,
    consumers: HashMap<&'a str, Vec<&'a NodeProto>>,
    /// The per-sample shape of the current value.
    shape: Vec<usize>,
    input_shape: Vec<usize>,
    pre: Option<(Vec<f32>, Vec<f32>)>,
    convs: Vec<ConvBlock>,
    dense: Vec<Dense>,
    post: Post,
    phase: Phase,
}

type Why = String;

/// A constant's shape and values.
type Const = (Vec<usize>, Vec<f32>);

/// Lowers `graph` from its one input (samples of `sample_shape`) to the output named
/// `output`, reading constants (external data from `dir`); `Err` says why it is not lowered.
pub fn lower(
    graph: &GraphProto,
    dir: Option<&str>,
    output: &str,
    sample_shape: &[usize],
) -> std::result::Result<Lowered, Why> {
    let consts = constants(graph, dir)?;
    let input = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .find(|n| !consts.contains_key(*n))
        .ok_or("the graph has no input")?;
    let mut consumers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
    for n in &graph.node {
        for i in &n.input {
            consumers.entry(i.as_str()).or_default().push(n);
        }
    }
    let mut w = Walk {
        consts,
        consumers,
        shape: sample_shape.to_vec(),
        input_shape: sample_shape.to_vec(),
        pre: None,
        convs: Vec::new(),
        dense: Vec::new(),
        post: Post::None,
        phase: Phase::Input,
    };
    let mut cur = input.to_string();
    let mut steps = 0;
    while cur != output {
        steps += 1;
        if steps > graph.node.len() + 1 {
            return Err("the graph has a cycle".into());
        }
        let users: Vec<&NodeProto> = w
            .consumers
            .get(cur.as_str())
            .map(|v| {
                v.iter()
                    .copied()
                    .filter(|n| n.op_type != "Constant")
                    .collect()
            })
            .unwrap_or_default();
        // A value read by several nodes must lead to the output through one of them only: the
        // others are side outputs (a Softmax beside the logits).
        let on_path: Vec<&NodeProto> = users
            .into_iter()
            .filter(|n| reaches(graph, n, output))
            .collect();
        let node = match on_path.as_slice() {
            [one] => *one,
            [] => return Err(format!("value '{cur}' does not lead to output '{output}'")),
            _ => {
                return Err(format!(
                    "value '{cur}' branches (a residual or parallel path)"
                ))
            }
        };
        if w.phase == Phase::Done {
            return Err(format!("{} after the output's softmax", node.op_type));
        }
        w.step(node, &cur)?;
        cur = node
            .output
            .first()
            .cloned()
            .ok_or_else(|| format!("{} has no output", node.op_type))?;
    }
    w.finish()
}

/// Whether an output of `node` leads to the value `output`.
fn reaches(graph: &GraphProto, node: &NodeProto, output: &str) -> bool {
    let mut seen: Vec<&str> = node.output.iter().map(String::as_str).collect();
    let mut i = 0;
    while i < seen.len() {
        if seen[i] == output {
            return true;
        }
        let v = seen[i];
        for n in &graph.node {
            if n.input.iter().any(|x| x == v) {
                for o in &n.output {
                    if !seen.contains(&o.as_str()) {
                        seen.push(o);
                    }
                }
            }
        }
        i += 1;
    }
    false
}

/// Every float constant: initializers and `Constant` nodes.
fn constants(
    graph: &GraphProto,
    dir: Option<&str>,
) -> std::result::Result<HashMap<String, Const>, Why> {
    let resolver = tract_onnx::data_resolver::MmapDataResolver;
    let load =
        |t: &tract_onnx::pb::TensorProto| -> std::result::Result<(Vec<usize>, Vec<f32>), Why> {
            let v = tract_onnx::tensor::load_tensor(&resolver, t, dir)
                .map_err(|e| format!("constant '{}': {e}", t.name))?;
            let shape = v.shape().to_vec();
            let v = v
                .cast_to::<f32>()
                .map_err(|e| format!("constant '{}': {e}", t.name))?;
            let data = v
                .to_plain_array_view::<f32>()
                .map_err(|e| format!("constant '{}': {e}", t.name))?
                .iter()
                .copied()
                .collect();
            Ok((shape, data))
        };
    let mut out = HashMap::new();
    for t in &graph.initializer {
        out.insert(t.name.clone(), load(t)?);
    }
    for n in graph.node.iter().filter(|n| n.op_type == "Constant") {
        let Some(a) = n.attribute.iter().find(|a| a.name == "value") else {
            continue;
        };
        let Some(t) = &a.t else { continue };
        if let Some(o) = n.output.first() {
            out.insert(o.clone(), load(t)?);
        }
    }
    Ok(out)
}

fn attr_i(node: &NodeProto, name: &str, default: i64) -> std::result::Result<i64, Why> {
    Ok(node
        .get_attr_opt::<i64>(name)
        .map_err(|e| format!("{}: {e}", node.op_type))?
        .unwrap_or(default))
}

fn attr_f(node: &NodeProto, name: &str, default: f32) -> std::result::Result<f32, Why> {
    Ok(node
        .get_attr_opt::<f32>(name)
        .map_err(|e| format!("{}: {e}", node.op_type))?
        .unwrap_or(default))
}

fn attr_ints(node: &NodeProto, name: &str) -> std::result::Result<Option<Vec<i64>>, Why> {
    node.get_attr_opt_vec::<i64>(name)
        .map_err(|e| format!("{}: {e}", node.op_type))
}

impl Walk<'_> {
    fn konst(&self, name: &str) -> Option<&Const> {
        self.consts.get(name)
    }

    /// Input `i` of `node`, which must be a constant; `what` says otherwise (`"Conv with
    /// computed weights"`).
    fn input_const(
        &self,
        node: &NodeProto,
        i: usize,
        what: &str,
    ) -> std::result::Result<&Const, Why> {
        node.input
            .get(i)
            .and_then(|n| self.konst(n))
            .ok_or_else(|| what.to_string())
    }

    /// The other operand of a binary node whose one operand is `cur`, if a constant; and
    /// whether `cur` is the first operand.
    fn operand(&self, node: &NodeProto, cur: &str) -> std::result::Result<(Vec<f32>, bool), Why> {
        let [a, b] = node.input.as_slice() else {
            return Err(format!("{} with {} inputs", node.op_type, node.input.len()));
        };
        let (other, first) = if a == cur { (b, true) } else { (a, false) };
        let (_, v) = self
            .konst(other)
            .ok_or_else(|| format!("{} of two computed values", node.op_type))?;
        Ok((v.clone(), first))
    }

    fn step(&mut self, node: &NodeProto, cur: &str) -> std::result::Result<(), Why> {
        let op = node.op_type.as_str();
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return Err(format!("operator {}:{op}", node.domain));
        }
        match op {
            "Identity" | "Dropout" => Ok(()),
            "Sub" | "Add" | "Mul" | "Div" => self.affine(node, cur),
            "Reshape" | "Flatten" => self.reshape(node),
            "Conv" => self.conv(node),
            "Relu" => self.relu(),
            "MaxPool" => self.pool(node),
            "BatchNormalization" => self.batch_norm(node),
            "Gemm" => self.gemm(node),
            "MatMul" => self.matmul(node),
            "Softmax" | "LogSoftmax" => {
                let axis = attr_i(node, "axis", -1)?;
                if self.phase != Phase::Dense || self.shape.len() != 1 || !(axis == 1 || axis == -1)
                {
                    return Err(format!("{op} not over the classes of the last layer"));
                }
                if self.dense.last().is_some_and(|d| d.relu) {
                    return Err(format!("{op} after a ReLU"));
                }
                self.post = if op == "Softmax" {
                    Post::Softmax
                } else {
                    Post::LogSoftmax
                };
                self.phase = Phase::Done;
                Ok(())
            }
            other => Err(format!("operator {other}")),
        }
    }

    /// Element-wise by a constant: folded into the input's map or the last dense layer.
    fn affine(&mut self, node: &NodeProto, cur: &str) -> std::result::Result<(), Why> {
        let op = node.op_type.as_str();
        let (c, first) = self.operand(node, cur)?;
        let width: usize = self.shape.iter().product();
        let per = |i: usize| if c.len() == 1 { c[0] } else { c[i] };
        if c.len() != 1 && c.len() != width {
            return Err(format!(
                "{op} by a constant of {} values on samples of {width}",
                c.len()
            ));
        }
        // y = x · s + o, per element.
        let (s, o): (Vec<f32>, Vec<f32>) = match (op, first) {
            ("Add", _) => (vec![1.0; width], (0..width).map(per).collect()),
            ("Sub", true) => (vec![1.0; width], (0..width).map(|i| -per(i)).collect()),
            ("Sub", false) => (vec![-1.0; width], (0..width).map(per).collect()),
            ("Mul", _) => ((0..width).map(per).collect(), vec![0.0; width]),
            ("Div", true) => ((0..width).map(|i| 1.0 / per(i)).collect(), vec![0.0; width]),
            _ => return Err(format!("{op} of a constant by the value")),
        };
        match self.phase {
            Phase::Input => {
                let (ps, po) = self
                    .pre
                    .get_or_insert_with(|| (vec![1.0; width], vec![0.0; width]));
                for i in 0..width {
                    ps[i] *= s[i];
                    po[i] = po[i] * s[i] + o[i];
                }
                Ok(())
            }
            Phase::Dense if self.dense.last().is_some_and(|d| !d.relu) => {
                let d = self.dense.last_mut().expect("checked");
                for j in 0..d.outputs {
                    for i in 0..d.inputs {
                        d.w[i * d.outputs + j] *= s[j];
                    }
                    d.b[j] = d.b[j] * s[j] + o[j];
                }
                Ok(())
            }
            _ => Err(format!("{op} by a constant inside the network")),
        }
    }

    fn reshape(&mut self, node: &NodeProto) -> std::result::Result<(), Why> {
        let width: usize = self.shape.iter().product();
        let new = if node.op_type == "Flatten" {
            if attr_i(node, "axis", 1)? != 1 {
                return Err("Flatten not after the batch axis".into());
            }
            vec![width]
        } else {
            let spec = self
                .input_const(node, 1, "Reshape to a computed shape")?
                .1
                .iter()
                .map(|&v| v as i64)
                .collect::<Vec<i64>>();
            let Some((&batch, rest)) = spec.split_first() else {
                return Err("Reshape to a scalar".into());
            };
            let known: i64 = rest.iter().filter(|&&v| v > 0).product();
            let dims: Vec<usize> = match (batch, rest.iter().filter(|&&v| v <= 0).count()) {
                (0 | -1, 0) => rest.iter().map(|&v| v as usize).collect(),
                (0, 1) if rest.iter().all(|&v| v != 0) && known > 0 => rest
                    .iter()
                    .map(|&v| {
                        if v < 0 {
                            width / known as usize
                        } else {
                            v as usize
                        }
                    })
                    .collect(),
                _ => return Err(format!("Reshape to {spec:?} (the batch axis moves)")),
            };
            if dims.iter().product::<usize>() != width {
                return Err(format!("Reshape to {spec:?} of samples of {width} values"));
            }
            dims
        };
        match self.phase {
            Phase::Input => {
                self.input_shape = new.clone();
                if let Some((s, o)) = &self.pre {
                    if s.len() != width || o.len() != width {
                        return Err("an input map of another width".into());
                    }
                }
            }
            Phase::Conv | Phase::Dense if new.len() == 1 => {}
            _ => return Err("Reshape inside the network".into()),
        }
        self.shape = new;
        Ok(())
    }

    fn conv(&mut self, node: &NodeProto) -> std::result::Result<(), Why> {
        if self.phase != Phase::Input && self.phase != Phase::Conv {
            return Err("Conv after a dense layer".into());
        }
        if self.convs.last().is_some_and(|c| !(c.relu && c.pooled)) {
            return Err("Conv not after a ReLU and a 2×2 max-pool".into());
        }
        let [c, h, wd] = self.shape[..] else {
            return Err(format!("Conv on samples of shape {:?}", self.shape));
        };
        let (ws, w) = self
            .input_const(node, 1, "Conv with computed weights")?
            .clone();
        let [c_out, c_in, k, k2] = ws[..] else {
            return Err(format!("Conv with weights of shape {ws:?}"));
        };
        if c_in != c || k != k2 || k % 2 == 0 {
            return Err(format!("Conv with weights of shape {ws:?} on {c} channels"));
        }
        if let Some(first) = self.convs.first() {
            if first.kernel != k {
                return Err("conv blocks with different kernels".into());
            }
        }
        let p = (k / 2) as i64;
        let ones = |v: Option<Vec<i64>>| v.is_none_or(|v| v.iter().all(|&x| x == 1));
        let pads_ok = match attr_ints(node, "pads")? {
            Some(v) => v.len() == 4 && v.iter().all(|&x| x == p),
            None => {
                let auto = node
                    .get_attr_opt::<&str>("auto_pad")
                    .map_err(|e| e.to_string())?
                    .unwrap_or("NOTSET");
                p == 0 || auto == "SAME_UPPER" || auto == "SAME_LOWER"
            }
        };
        if !pads_ok
            || !ones(attr_ints(node, "strides")?)
            || !ones(attr_ints(node, "dilations")?)
            || attr_i(node, "group", 1)? != 1
        {
            return Err("Conv other than stride 1, \"same\" padding, one group".into());
        }
        let b = match node.input.get(2).filter(|n| !n.is_empty()) {
            Some(n) => self.konst(n).ok_or("Conv with a computed bias")?.1.clone(),
            None => vec![0.0; c_out],
        };
        if b.len() != c_out {
            return Err("Conv bias of another width".into());
        }
        self.convs.push(ConvBlock {
            w,
            b,
            c_out,
            kernel: k,
            relu: false,
            pooled: false,
        });
        self.shape = vec![c_out, h, wd];
        self.phase = Phase::Conv;
        Ok(())
    }

    fn relu(&mut self) -> std::result::Result<(), Why> {
        match self.phase {
            Phase::Conv => {
                let c = self.convs.last_mut().expect("in a conv block");
                if c.relu {
                    return Err("two ReLUs".into());
                }
                c.relu = true;
            }
            Phase::Dense => {
                let d = self.dense.last_mut().expect("after a dense layer");
                if d.relu {
                    return Err("two ReLUs".into());
                }
                d.relu = true;
            }
            _ => return Err("ReLU on the input".into()),
        }
        Ok(())
    }

    fn pool(&mut self, node: &NodeProto) -> std::result::Result<(), Why> {
        let two = |v: Option<Vec<i64>>| v.is_some_and(|v| v == [2, 2]);
        let no_pads = attr_ints(node, "pads")?.is_none_or(|v| v.iter().all(|&x| x == 0));
        if self.phase != Phase::Conv
            || !two(attr_ints(node, "kernel_shape")?)
            || !two(attr_ints(node, "strides")?)
            || !no_pads
            || attr_i(node, "ceil_mode", 0)? != 0
            || node.output.len() > 1
        {
            return Err("a pooling other than 2×2 max-pool of stride 2 after a Conv".into());
        }
        let c = self.convs.last_mut().expect("in a conv block");
        if c.pooled {
            return Err("two pools in a block".into());
        }
        c.pooled = true;
        let [ch, h, w] = self.shape[..] else {
            return Err("MaxPool on a flat value".into());
        };
        self.shape = vec![ch, h / 2, w / 2];
        Ok(())
    }

    fn batch_norm(&mut self, node: &NodeProto) -> std::result::Result<(), Why> {
        let get = |i: usize| -> std::result::Result<Vec<f32>, Why> {
            Ok(self
                .input_const(node, i, "BatchNormalization with computed statistics")?
                .1
                .clone())
        };
        let (scale, bias, mean, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
        let eps = attr_f(node, "epsilon", 1e-5)?;
        let g: Vec<f32> = scale
            .iter()
            .zip(&var)
            .map(|(s, v)| s / (v + eps).sqrt())
            .collect();
        let shift: Vec<f32> = (0..g.len()).map(|i| bias[i] - mean[i] * g[i]).collect();
        match self.phase {
            Phase::Conv => {
                let c = self.convs.last_mut().expect("in a conv block");
                if c.relu || c.pooled || g.len() != c.c_out {
                    return Err("BatchNormalization not right after a Conv".into());
                }
                let per = c.w.len() / c.c_out;
                for o in 0..c.c_out {
                    c.w[o * per..][..per].iter_mut().for_each(|v| *v *= g[o]);
                    c.b[o] = c.b[o] * g[o] + shift[o];
                }
            }
            Phase::Dense => {
                let d = self.dense.last_mut().expect("after a dense layer");
                if d.relu || g.len() != d.outputs {
                    return Err("BatchNormalization not right after a dense layer".into());
                }
                for row in d.w.chunks_exact_mut(d.outputs) {
                    row.iter_mut().zip(&g).for_each(|(w, g)| *w *= g);
                }
                for ((b, g), t) in d.b.iter_mut().zip(&g).zip(&shift) {
                    *b = *b * g + t;
                }
            }
            _ => return Err("BatchNormalization on the input".into()),
        }
        Ok(())
    }

    /// Checks that a dense layer may start here.
    fn dense_ready(&self) -> std::result::Result<usize, Why> {
        if self.shape.len() != 1 {
            return Err(format!(
                "a dense layer on samples of shape {:?}",
                self.shape
            ));
        }
        if self.convs.last().is_some_and(|c| !(c.relu && c.pooled)) {
            return Err("a dense layer after a conv without ReLU and max-pool".into());
        }
        if self.dense.last().is_some_and(|d| !d.relu) {
            return Err("two dense layers without a ReLU between them".into());
        }
        Ok(self.shape[0])
    }

    fn push_dense(&mut self, w: Vec<f32>, inputs: usize, outputs: usize, b: Vec<f32>) {
        self.dense.push(Dense {
            w,
            inputs,
            outputs,
            b,
            relu: false,
        });
        self.shape = vec![outputs];
        self.phase = Phase::Dense;
    }

    fn gemm(&mut self, node: &NodeProto) -> std::result::Result<(), Why> {
        let f = self.dense_ready()?;
        if attr_i(node, "transA", 0)? != 0 {
            return Err("Gemm with transA".into());
        }
        let (alpha, beta) = (attr_f(node, "alpha", 1.0)?, attr_f(node, "beta", 1.0)?);
        let trans_b = attr_i(node, "transB", 0)? != 0;
        let (bs, bv) = self
            .input_const(node, 1, "Gemm with computed weights")?
            .clone();
        let [r, c] = bs[..] else {
            return Err(format!("Gemm with weights of shape {bs:?}"));
        };
        let (k, n) = if trans_b { (c, r) } else { (r, c) };
        if k != f {
            return Err(format!("Gemm with weights of shape {bs:?} on {f} features"));
        }
        let mut w = vec![0f32; k * n];
        for i in 0..k {
            for j in 0..n {
                let v = if trans_b {
                    bv[j * k + i]
                } else {
                    bv[i * n + j]
                };
                w[i * n + j] = alpha * v;
            }
        }
        let b = match node.input.get(2).filter(|x| !x.is_empty()) {
            Some(name) => {
                let (_, cv) = self.konst(name).ok_or("Gemm with a computed bias")?;
                match cv.len() {
                    1 => vec![beta * cv[0]; n],
                    l if l == n => cv.iter().map(|v| beta * v).collect(),
                    _ => return Err("Gemm bias that is not one value per output".into()),
                }
            }
            None => vec![0.0; n],
        };
        self.push_dense(w, k, n, b);
        Ok(())
    }

    fn matmul(&mut self, node: &NodeProto) -> std::result::Result<(), Why> {
        let f = self.dense_ready()?;
        let (bs, bv) = self
            .input_const(node, 1, "MatMul with a computed right operand")?
            .clone();
        match bs[..] {
            [k, n] if k == f => {
                self.push_dense(bv, k, n, vec![0.0; n]);
                Ok(())
            }
            _ => Err(format!(
                "MatMul by a constant of shape {bs:?} on {f} features"
            )),
        }
    }

    fn finish(self) -> std::result::Result<Lowered, Why> {
        let Some(last) = self.dense.last() else {
            return Err("no dense layer".into());
        };
        if last.relu {
            return Err("a ReLU after the last layer".into());
        }
        let hidden: Vec<usize> = self.dense[..self.dense.len() - 1]
            .iter()
            .map(|d| d.outputs)
            .collect();
        let outputs = last.outputs;
        // A flat model over an image input reads its features in row-major order, as the
        // graph's Flatten does.
        let arch = if self.convs.is_empty() {
            Arch::Mlp(crate::models::mlp::MlpArch {
                hidden,
                dropout: 0.0,
                input_dropout: 0.0,
            })
        } else {
            Arch::Cnn(crate::models::cnn::CnnArch {
                channels: self.convs.iter().map(|c| c.c_out).collect(),
                kernel: self.convs[0].kernel,
                hidden,
                dropout: 0.0,
                input_dropout: 0.0,
            })
        };
        let input_shape = if self.convs.is_empty() {
            vec![self.input_shape.iter().product()]
        } else {
            self.input_shape.clone()
        };
        let mut dense = self.dense;
        let mut pre = self.pre;
        // An MLP takes the input's map into its first layer: (x·s + o)·W + b = x·(s W) + (o W + b).
        if self.convs.is_empty() {
            if let Some((s, o)) = pre.take() {
                let d = &mut dense[0];
                for i in 0..d.inputs {
                    for j in 0..d.outputs {
                        let w = d.w[i * d.outputs + j];
                        d.b[j] += o[i] * w;
                        d.w[i * d.outputs + j] = w * s[i];
                    }
                }
            }
        }
        let spec = ModelSpec {
            arch,
            input_shape,
            outputs,
        };
        let mut weights = HashMap::new();
        for (i, c) in self.convs.iter().enumerate() {
            let shape = vec![
                c.c_out,
                c.w.len() / (c.c_out * c.kernel * c.kernel),
                c.kernel,
                c.kernel,
            ];
            weights.insert(format!("conv{i}.weight"), (shape, c.w.clone()));
            weights.insert(format!("conv{i}.bias"), (vec![c.c_out], c.b.clone()));
        }
        for (i, d) in dense.iter().enumerate() {
            weights.insert(
                format!("fc{i}.weight"),
                (vec![d.inputs, d.outputs], d.w.clone()),
            );
            weights.insert(format!("fc{i}.bias"), (vec![d.outputs], d.b.clone()));
        }
        let model =
            Model::from_weights(spec, &weights, "the lowered graph").map_err(|e| e.to_string())?;
        Ok(Lowered {
            pre,
            model,
            post: self.post,
        })
    }
}
