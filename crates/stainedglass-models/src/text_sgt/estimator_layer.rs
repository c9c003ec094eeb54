//! One **trainable** decoder layer (the TransformerCloak estimator's) as a single op on the CPU:
//! the input `x: (b, t, hidden)` and all of the layer's parameters packed in one vector
//! ([`PackedLayout`]); backward returns the input gradient and the parameters' gradient in the
//! same packed layout. It runs the decoder stack's host kernels (`llm::stack`), so training
//! and the client's frozen pass compute the same numbers, and the autograd graph holds one node
//! per layer instead of about thirty, each with its zero-filled gradient buffers.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use stainedglass_core::host::{cpu_slice, with_host, zeroed};

use crate::llm::stack::{LayerGrads, LayerPass, LayerTape, LayerWeights, StackDims};

/// Order and sizes of the packed parameters: attention norm, `[q | k | v]` weight, its bias
/// (if any), output projection, MLP norm, `[gate | up]` weight, down projection.
#[derive(Debug, Clone, Copy)]
pub(super) struct PackedLayout {
    pub dims: StackDims,
    pub bias: bool,
}

impl PackedLayout {
    fn sizes(&self) -> [usize; 7] {
        let StackDims {
            hidden, hq, d, ffn, ..
        } = self.dims;
        let w = self.dims.qkv_width();
        [
            hidden,
            w * hidden,
            if self.bias { w } else { 0 },
            hidden * hq * d,
            hidden,
            2 * ffn * hidden,
            hidden * ffn,
        ]
    }

    /// Number of packed values.
    pub fn len(&self) -> usize {
        self.sizes().iter().sum()
    }

    fn split<'a>(&self, p: &'a [f32], eps: f32) -> LayerWeights<'a> {
        let [a, b, c, d, e, f, _] = self.sizes();
        let (attn_norm, p) = p.split_at(a);
        let (qkv, p) = p.split_at(b);
        let (bias, p) = p.split_at(c);
        let (o, p) = p.split_at(d);
        let (mlp_norm, p) = p.split_at(e);
        let (gate_up, down) = p.split_at(f);
        LayerWeights {
            attn_norm,
            attn_eps: eps,
            qkv,
            bias: self.bias.then_some(bias),
            o,
            mlp_norm,
            mlp_eps: eps,
            gate_up,
            down,
            packed: None,
            stored: None,
        }
    }

    fn split_mut<'a>(&self, p: &'a mut [f32]) -> LayerGrads<'a> {
        let [a, b, c, d, e, f, _] = self.sizes();
        let (attn_norm, p) = p.split_at_mut(a);
        let (qkv, p) = p.split_at_mut(b);
        let (bias, p) = p.split_at_mut(c);
        let (o, p) = p.split_at_mut(d);
        let (mlp_norm, p) = p.split_at_mut(e);
        let (gate_up, down) = p.split_at_mut(f);
        LayerGrads {
            attn_norm,
            qkv,
            bias: self.bias.then_some(bias),
            o,
            mlp_norm,
            gate_up,
            down,
        }
    }
}

/// The op for one batch (positions and key mask fixed); build a fresh one per forward pass.
pub(super) struct EstimatorLayer {
    pass: LayerPass,
    layout: PackedLayout,
    eps: f32,
    tape: Mutex<Option<LayerTape>>,
}

impl EstimatorLayer {
    /// The layer of `layout` with RMSNorm `eps`, run with `pass` (which then also keeps the
    /// weights' inputs).
    pub fn new(layout: PackedLayout, eps: f32, pass: LayerPass) -> Self {
        Self {
            pass: pass.with_weight_inputs(),
            layout,
            eps,
            tape: Mutex::new(None),
        }
    }

    fn check(&self, x: &Shape, p: usize) -> candle_core::Result<(usize, usize)> {
        let (b, t, h) = x.dims3()?;
        if h != self.layout.dims.hidden || p != self.layout.len() {
            candle_core::bail!(
                "estimator layer: input {:?} and {p} parameters, expected (b, t, {}) and {}",
                x.dims(),
                self.layout.dims.hidden,
                self.layout.len()
            );
        }
        Ok((b, t))
    }
}

impl CustomOp2 for EstimatorLayer {
    fn name(&self) -> &'static str {
        "sg-estimator-layer"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sp: &CpuStorage,
        lp: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let bt = self.check(lx.shape(), lp.shape().elem_count())?;
        let x = cpu_slice(sx, lx)?.to_vec();
        let lw = self.layout.split(cpu_slice(sp, lp)?, self.eps);
        let (y, tape) = self.pass.layer_forward(&lw, 0, x, bt, None)?;
        *self
            .tape
            .lock()
            .map_err(|_| candle_core::Error::Msg("estimator layer: tape lock poisoned".into()))? =
            tape;
        Ok((CpuStorage::F32(y), lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let bt = self.check(x.shape(), p.elem_count())?;
        let guard = self
            .tape
            .lock()
            .map_err(|_| candle_core::Error::Msg("estimator layer: tape lock poisoned".into()))?;
        let Some(tape) = guard.as_ref() else {
            candle_core::bail!("estimator layer: backward without a recorded forward pass");
        };
        let dy = with_host(grad, <[f32]>::to_vec)?;
        let mut dp = zeroed(self.layout.len());
        let dx = with_host(p, |ps| {
            let lw = self.layout.split(ps, self.eps);
            let mut g = self.layout.split_mut(&mut dp);
            self.pass.layer_backward(&lw, tape, dy, bt, Some(&mut g))
        })??;
        let dx = if x.track_op() {
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            None
        };
        Ok((dx, Some(Tensor::from_vec(dp, p.shape(), p.device())?)))
    }
}
