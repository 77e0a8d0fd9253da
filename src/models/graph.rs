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
