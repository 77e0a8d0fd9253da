//! A model's eval-mode computation as a list of standard operations, which each family gives
//! ([`super::Family::graph`]) and `compress::onnx` writes as ONNX nodes. Values flow from one
//! node to the next; `Save` and `AddSaved` carry a residual connection around a block.

/// A tensor a node reads: a parameter of the model (by position, so that a stored int8 copy
/// can stand in for it), or values computed for the graph (a convolution with its batch
/// normalisation folded in).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `model.params[i]`, in its stored shape.
    Param(usize),
    /// Values of the given shape.
    Owned {
        /// Shape.
        shape: Vec<usize>,
        /// Row-major values.
        data: Vec<f32>,
    },
}

/// One operation on the current value (`[batch, …]`).
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Each sample reshaped to these dimensions (the batch dimension kept).
    Reshape(Vec<usize>),
    /// Convolution, 1-D or 2-D by the kernel's rank: weight `[c_out, c_in, k…]`, bias
    /// `[c_out]`, the same stride and zero padding on every side of every spatial axis.
    Conv {
        /// Weight `[c_out, c_in, k…]`.
        weight: Value,
        /// Bias `[c_out]`.
        bias: Value,
        /// Kernel size per spatial axis.
        kernel: Vec<usize>,
        /// Stride on every spatial axis.
        stride: usize,
        /// Zero padding on every side.
        pad: usize,
    },
    /// `max(0, x)`.
    Relu,
    /// Max-pooling with windows of this size and the same stride, dropping a ragged edge.
    MaxPool(Vec<usize>),
    /// Mean over every spatial position: `[b, c, …]` → `[b, c]`.
    GlobalAvgPool,
    /// `[b, …]` → `[b, n]`.
    Flatten,
    /// `x · W + b` with `W` stored `[in, out]`.
    Dense {
        /// Weight `[in, out]`.
        weight: Value,
        /// Bias `[out]`.
        bias: Value,
    },
    /// Keeps the current value in a slot.
    Save(usize),
    /// Adds the slot's value (through a strided 1×1 projection when given) to the current one.
    AddSaved {
        /// Slot written by an earlier `Save`.
        slot: usize,
        /// A convolution applied to the saved value first (its `kernel` is all ones).
        projection: Option<Box<Node>>,
    },
    /// Token ids (`-1` for padding) → the mean of their rows of the table `[vocab, dim]`.
    EmbeddingMean {
        /// The table.
        table: Value,
    },
}

/// The nodes in order, from the normalised input row to the outputs (logits or values).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Graph {
    /// Operations in order.
    pub nodes: Vec<Node>,
}

impl Graph {
    /// Dense layers on parameters `first..`: `Dense` with `Relu` between them.
    pub fn dense_stack(&mut self, first: usize, layers: usize) {
        for l in 0..layers {
            self.nodes.push(Node::Dense {
                weight: Value::Param(first + 2 * l),
                bias: Value::Param(first + 2 * l + 1),
            });
            if l + 1 < layers {
                self.nodes.push(Node::Relu);
            }
        }
    }
}

impl Value {
    /// The tensor's shape (a parameter's, from the model).
    fn shape(&self, model: &super::Model) -> Vec<usize> {
        match self {
            Value::Param(i) => model
                .params
                .get(*i)
                .map(|(_, v)| v.dims().to_vec())
                .unwrap_or_default(),
            Value::Owned { shape, .. } => shape.clone(),
        }
    }
}

impl Graph {
    /// Floating-point operations per sample of the graph's products (2 per multiply-add of a
    /// dense layer, a convolution or a projection; 1 per position and dimension of an
    /// embedding bag's mean, padding included; other element-wise work not counted), walking
    /// the per-sample shape from the model's input.
    pub fn flops(&self, model: &super::Model) -> f64 {
        let mut shape = model.spec.input_shape.clone();
        let mut saved: Vec<Vec<usize>> = Vec::new();
        let mut total = 0f64;
        for node in &self.nodes {
            shape = node_flops(node, model, shape, &mut saved, &mut total);
        }
        total
    }
}

/// One node: adds its products to `total`, returns the shape after it.
fn node_flops(
    node: &Node,
    model: &super::Model,
    shape: Vec<usize>,
    saved: &mut Vec<Vec<usize>>,
    total: &mut f64,
) -> Vec<usize> {
    match node {
        Node::Reshape(dims) => dims.clone(),
        Node::Flatten => vec![shape.iter().product()],
        Node::Conv {
            weight,
            kernel,
            stride,
            pad,
            ..
        } => {
            let w = weight.shape(model);
            let spatial: Vec<usize> = shape
                .iter()
                .skip(1)
                .zip(kernel)
                .map(|(&s, &k)| (s + 2 * pad).saturating_sub(k) / stride.max(&1) + 1)
                .collect();
            *total +=
                2.0 * (w.iter().product::<usize>() * spatial.iter().product::<usize>()) as f64;
            let mut out = vec![w.first().copied().unwrap_or(0)];
            out.extend(spatial);
            out
        }
        Node::MaxPool(window) => {
            let mut out = vec![shape.first().copied().unwrap_or(0)];
            out.extend(
                shape
                    .iter()
                    .skip(1)
                    .zip(window)
                    .map(|(&s, &k)| s / k.max(1)),
            );
            out
        }
        Node::GlobalAvgPool => vec![shape.first().copied().unwrap_or(0)],
        Node::Dense { weight, .. } => {
            let w = weight.shape(model);
            *total += 2.0 * w.iter().product::<usize>() as f64;
            vec![w.last().copied().unwrap_or(0)]
        }
        Node::Save(slot) => {
            if saved.len() <= *slot {
                saved.resize(slot + 1, Vec::new());
            }
            saved[*slot] = shape.clone();
            shape
        }
        Node::AddSaved { slot, projection } => {
            if let Some(p) = projection {
                let from = saved.get(*slot).cloned().unwrap_or_default();
                node_flops(p, model, from, saved, total);
            }
            shape
        }
        Node::EmbeddingMean { table } => {
            // One addition per position and dimension (padding included: an upper bound).
            let dim = table.shape(model).last().copied().unwrap_or(0);
            *total += (shape.iter().product::<usize>() * dim) as f64;
            vec![dim]
        }
        Node::Relu => shape,
    }
}

#[cfg(test)]
mod tests {
    use crate::models::{Arch, Model, ModelSpec};
    use crate::rng::Rng;

    fn flops(arch: Arch, input_shape: Vec<usize>) -> f64 {
        let m = Model::new(
            ModelSpec {
                arch,
                input_shape,
                outputs: 10,
            },
            &mut Rng::new(1),
        )
        .unwrap();
        m.spec.arch.family().graph(&m).unwrap().flops(&m)
    }

    /// Two operations per multiply-add: an MLP's weights; a CNN's conv weights times the
    /// positions each covers ("same" padding, 2×2 pools), then its dense layers.
    #[test]
    fn flops_count_every_product() {
        let mlp = Arch::Mlp(crate::models::mlp::MlpArch {
            hidden: vec![1200, 1200],
            dropout: 0.0,
            input_dropout: 0.0,
        });
        assert_eq!(
            flops(mlp, vec![784]),
            2.0 * (784.0 * 1200.0 + 1200.0 * 1200.0 + 1200.0 * 10.0)
        );
        let cnn = Arch::Cnn(crate::models::cnn::CnnArch {
            channels: vec![6, 16],
            kernel: 5,
            hidden: vec![120],
            dropout: 0.0,
            input_dropout: 0.0,
        });
        let want = 2.0
            * (6.0 * 25.0 * 28.0 * 28.0
                + 16.0 * 6.0 * 25.0 * 14.0 * 14.0
                + 16.0 * 7.0 * 7.0 * 120.0
                + 120.0 * 10.0);
        assert_eq!(flops(cnn, vec![1, 28, 28]), want);
    }
}
