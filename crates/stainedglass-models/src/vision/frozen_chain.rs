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

use super::frozen::{op_error, ConvShape, HostWeights};

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
    /// Output of every stage from the last forward pass (the ReLU masks of the backward pass).
    tape: Arc<Mutex<Vec<Vec<f32>>>>,
}

impl FrozenChain {
    pub fn new(stages: Vec<Stage>) -> Self {
        Self {
            stages: Arc::new(stages),
            tape: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A copy of the chain with its own tape, to apply to one input.
    pub fn op(&self) -> Self {
        Self {
            stages: self.stages.clone(),
            tape: Arc::new(Mutex::new(Vec::new())),
        }
    }
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
        let mut dims = l.dims().to_vec();
        let input = slice_of(s, l)?;
        let mut tape: Vec<Vec<f32>> = Vec::with_capacity(self.stages.len());
        for stage in self.stages.iter() {
            let h = tape.last().map_or(input, Vec::as_slice);
            let out = match stage {
                Stage::Conv { host, shape, relu } => {
                    let (b, g) = shape.geometry(&dims)?;
                    dims = vec![b, g.cout, g.ho, g.wo];
                    conv2d_forward(&g, h, b, &host.weight, host.bias.as_deref(), *relu)
                }
                Stage::Dense { host, relu } => {
                    let (dout, din) = dense_dims(host);
                    if h.len() != batch * din {
                        return Err(op_error(format!(
                            "linear stage expects {din} features per example, got {}",
                            h.len() / batch.max(1)
                        )));
                    }
                    dims = vec![batch, dout];
                    let bias = host.bias.as_deref().unwrap_or(&[]);
                    linear_forward(h, batch, &host.weight, bias, *relu)
                }
            };
            tape.push(out);
        }
        let logits = tape.last().cloned().unwrap_or_else(|| input.to_vec());
        *self
            .tape
            .lock()
            .map_err(|_| op_error("frozen chain: tape lock poisoned"))? = tape;
        Ok((CpuStorage::F32(logits), Shape::from(dims)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let tape = self
            .tape
            .lock()
            .map_err(|_| op_error("frozen chain: tape lock poisoned"))?;
        if tape.len() != self.stages.len() {
            return Err(op_error("frozen chain: backward without a forward pass"));
        }
        let batch = arg.dim(0)?;
        // Input dims of every stage, replayed from the input's.
        let mut dims = vec![arg.dims().to_vec()];
        for stage in self.stages.iter() {
            let d = dims.last().cloned().unwrap_or_default();
            dims.push(match stage {
                Stage::Conv { shape, .. } => {
                    let (b, g) = shape.geometry(&d)?;
                    vec![b, g.cout, g.ho, g.wo]
                }
                Stage::Dense { host, .. } => vec![batch, dense_dims(host).0],
            });
        }
        let mut dh = with_host(grad, <[f32]>::to_vec)?;
        for (i, stage) in self.stages.iter().enumerate().rev() {
            dh = match stage {
                Stage::Conv { host, shape, relu } => {
                    let (b, g) = shape.geometry(&dims[i])?;
                    let out = relu.then_some(tape[i].as_slice());
                    conv2d_input_grad(&g, &dh, out, b, &host.weight)
                }
                Stage::Dense { host, relu } => {
                    let out = relu.then_some(tape[i].as_slice());
                    linear_input_grad(&dh, out, batch, &host.weight, dense_dims(host).0)
                }
            };
        }
        Ok(Some(Tensor::from_vec(dh, arg.shape(), arg.device())?))
    }
}
