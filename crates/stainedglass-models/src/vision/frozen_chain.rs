//! A frozen sequential network (convolutions, then linear layers on the flattened features,
//! each optionally followed by ReLU) as **one** op on its input. Backpropagation through a
//! frozen model needs only the input gradient; as one op, the autograd graph holds a single
//! node instead of one per layer, so candle does not allocate a zero gradient and add into it
//! for every intermediate activation (a full-size memset and add per layer). The activations the
//! backward pass needs (the ReLU outputs) are kept by the op between forward and backward.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::conv_cpu::{conv2d_forward, conv2d_input_grad, linear_forward, linear_input_grad};
use stainedglass_core::host::{cpu_slice as slice_of, with_host};

use super::host_weights::{op_error, ConvShape, HostWeights};

/// One layer of a frozen chain.
#[derive(Debug, Clone)]
pub(super) enum Stage {
    Conv {
        host: Arc<HostWeights>,
        shape: ConvShape,
        relu: bool,
    },
    /// Acts on the flattened features.
    Dense { host: Arc<HostWeights>, relu: bool },
}

/// The op. Each application gets a fresh tape (see [`FrozenChain::op`]).
#[derive(Debug, Clone)]
pub(super) struct FrozenChain {
    stages: Arc<Vec<Stage>>,
    tape: Arc<Mutex<Tape>>,
}

impl FrozenChain {
    pub fn new(stages: Vec<Stage>) -> Self {
        Self {
            stages: Arc::new(stages),
            tape: Arc::default(),
        }
    }

    /// A copy of the chain with its own tape, to apply to one input.
    pub fn op(&self) -> Self {
        Self {
            stages: self.stages.clone(),
            tape: Arc::default(),
        }
    }
}

/// What the backward pass needs from the forward pass.
#[derive(Debug, Default)]
struct Tape {
    /// Input dims of every stage.
    dims: Vec<Vec<usize>>,
    /// Output of every stage but the last (the ReLU masks; the last one is the op's result).
    outputs: Vec<Vec<f32>>,
}

/// `(out_features, in_features)` of a linear stage.
fn dense_dims(h: &HostWeights) -> (usize, usize) {
    let dout = h.bias.as_ref().map_or(0, Vec::len);
    (dout, h.weight.len() / dout.max(1))
}

impl CustomOp1 for FrozenChain {
    fn name(&self) -> &'static str {
        "frozen-chain"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let batch = l.dims().first().copied().unwrap_or(0);
        let input = slice_of(s, l)?;
        let mut tape = Tape::default();
        let mut dims = l.dims().to_vec();
        let mut out: Vec<f32> = Vec::new();
        for (i, stage) in self.stages.iter().enumerate() {
            if i > 0 {
                tape.outputs.push(std::mem::take(&mut out));
            }
            let h = tape.outputs.last().map_or(input, Vec::as_slice);
            tape.dims.push(dims.clone());
            out = match stage {
                Stage::Conv { host, shape, relu } => {
                    let (b, g) = shape.geometry(&dims)?;
                    dims = vec![b, g.cout, g.ho, g.wo];
                    conv2d_forward(&g, h, b, &host.weight, host.bias.as_deref(), *relu)
                }
                Stage::Dense { host, relu } => {
                    let (dout, din) = dense_dims(host);
                    if h.len() != batch * din {
                        return Err(op_error(format!(
                            "linear layer expects {din} features per example, got {}",
                            h.len() / batch.max(1)
                        )));
                    }
                    dims = vec![batch, dout];
                    let bias = host.bias.as_deref().unwrap_or(&[]);
                    linear_forward(h, batch, &host.weight, bias, *relu)
                }
            };
        }
        if self.stages.is_empty() {
            out = input.to_vec();
        }
        *self
            .tape
            .lock()
            .map_err(|_| op_error("frozen chain: tape lock poisoned"))? = tape;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let tape = self
            .tape
            .lock()
            .map_err(|_| op_error("frozen chain: tape lock poisoned"))?;
        if tape.dims.len() != self.stages.len() {
            return Err(op_error("frozen chain: backward without a forward pass"));
        }
        let batch = arg.dim(0)?;
        // The last stage's output is the op's result; the others are on the tape.
        let dx = with_host(res, |last| -> candle_core::Result<Vec<f32>> {
            let mut dh = with_host(grad, <[f32]>::to_vec)?;
            for (i, stage) in self.stages.iter().enumerate().rev() {
                let output = tape.outputs.get(i).map_or(last, Vec::as_slice);
                dh = match stage {
                    Stage::Conv { host, shape, relu } => {
                        let (b, g) = shape.geometry(&tape.dims[i])?;
                        conv2d_input_grad(&g, &dh, relu.then_some(output), b, &host.weight)
                    }
                    Stage::Dense { host, relu } => {
                        let dout = dense_dims(host).0;
                        linear_input_grad(&dh, relu.then_some(output), batch, &host.weight, dout)
                    }
                };
            }
            Ok(dh)
        })??;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}
