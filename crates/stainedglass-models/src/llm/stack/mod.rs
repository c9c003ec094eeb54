//! The frozen decoder layers `0..n` as **one** op on the input embeddings (CPU, f32). Training
//! an SGT backpropagates through the frozen base model to its input only; as one op the
//! autograd graph holds a single node instead of a dozen per layer, so candle allocates no zero
//! gradient per intermediate tensor, and q, k and v are read in place from the packed
//! projection instead of being copied out. The activations the backward pass needs (each
//! layer's input, roped `[q | k | v]`, attention probabilities, residual after attention, and
//! gate/up projection) are kept by the op between forward and backward, only when its input
//! carries a gradient.

mod layer;
mod weights;

pub(crate) use layer::{LayerPass, LayerTape, StackDims};
pub(crate) use weights::{LayerGrads, LayerWeights, PackedLayer, StoredMats};

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use stainedglass_core::host::{cpu_slice, with_host, with_hosts};

use crate::llm::backend::ops::GEMV_MAX_ROWS;
use crate::llm::block::{Block, Mats};
use crate::llm::kv_cache::KvCache;
use layer::op_error;

/// The op: frozen layers `0..n` of a model for one batch.
#[derive(Clone)]
pub(crate) struct DecoderStack {
    pub layers: Arc<[Block]>,
    pub n: usize,
    /// The first layer run (layers `first..n`; 0 unless a served adapter stands in for the
    /// layers before it).
    pub first: usize,
    pub pass: LayerPass,
    tape: Arc<Mutex<Vec<LayerTape>>>,
}

/// Runs `f` on host views of one frozen layer's weights (read locks held meanwhile), with
/// their packed forms if the layer has them; `pack` packs them first if not yet done. Stored
/// (quantized) weights are passed as they are.
fn with_weights<R>(
    blk: &Block,
    pack: bool,
    f: impl FnOnce(&LayerWeights) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (qkv, o, gate_up, down) = match &blk.mats {
        Mats::F32 {
            qkv,
            o,
            gate_up,
            down,
        } => (qkv, o, gate_up, down),
        Mats::Stored(s) => {
            return f(&LayerWeights {
                attn_norm: blk.attn_norm.host(),
                attn_eps: blk.attn_norm.eps(),
                qkv: &[],
                bias: s.qkv_bias.as_deref(),
                o: &[],
                mlp_norm: blk.mlp_norm.host(),
                mlp_eps: blk.mlp_norm.eps(),
                gate_up: &[],
                down: &[],
                packed: None,
                stored: Some(s),
            })
        }
    };
    let bias = match qkv.bias() {
        Some(b) => Some(b.flatten_all()?.to_vec1::<f32>()?),
        None => None,
    };
    let weights = [qkv, o, gate_up, down].map(|l| l.weight());
    with_hosts(weights, |[qkv, o, gate_up, down]| {
        let mut lw = LayerWeights {
            attn_norm: blk.attn_norm.host(),
            attn_eps: blk.attn_norm.eps(),
            qkv,
            bias: bias.as_deref(),
            o,
            mlp_norm: blk.mlp_norm.host(),
            mlp_eps: blk.mlp_norm.eps(),
            gate_up,
            down,
            packed: None,
            stored: None,
        };
        lw.packed = if pack {
            Some(blk.packed.get_or_init(|| PackedLayer::new(&lw)))
        } else {
            blk.packed.get()
        };
        f(&lw)
    })?
}

impl DecoderStack {
    /// Layers `0..n` of `layers`, run with `pass`.
    pub fn new(layers: Arc<[Block]>, n: usize, pass: LayerPass) -> Self {
        Self {
            layers,
            n,
            first: 0,
            pass,
            tape: Arc::default(),
        }
    }

    /// The same op starting at layer `first` (its input is the residual stream entering it).
    pub fn starting_at(mut self, first: usize) -> Self {
        self.first = first.min(self.n);
        self
    }
}

impl DecoderStack {
    /// Runs the layers on `x: (b·t) × hidden`, keeping the tape if `self.keep`; with a cache
    /// holding `past` positions, appends the new keys and values and attends over all of them.
    fn run_host(
        &self,
        mut x: Vec<f32>,
        bt: (usize, usize),
        mut cache: Option<(&mut KvCache, usize)>,
    ) -> candle_core::Result<Vec<f32>> {
        let (b, t) = bt;
        let pass = &self.pass;
        if x.len() != b * t * pass.dims.hidden || pass.positions.len() != b * t {
            return Err(op_error(format!(
                "decoder stack: {} values for batch {b} × {t} tokens, hidden size {} and {} \
                 positions",
                x.len(),
                pass.dims.hidden,
                pass.positions.len()
            )));
        }
        let mut tapes = Vec::new();
        for (li, blk) in self.layers.iter().enumerate().take(self.n).skip(self.first) {
            let c = cache.as_mut().map(|(c, past)| (&mut **c, *past));
            // Frozen weights are packed for the repeated large products of training.
            let pack = pass.keep && b * t > GEMV_MAX_ROWS;
            let (y, tape) = with_weights(blk, pack, |lw| pass.layer_forward(lw, li, x, bt, c))?;
            tapes.extend(tape);
            x = y;
        }
        if pass.keep {
            *self
                .tape
                .lock()
                .map_err(|_| op_error("decoder stack: tape lock poisoned"))? = tapes;
        }
        Ok(x)
    }

    /// An inference pass of `x: (b, t, hidden)` on top of `cache`, which holds `past`
    /// positions and gains these `t` (build the op without a tape for it).
    pub fn forward_cached(
        &self,
        x: &Tensor,
        cache: &mut KvCache,
        past: usize,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let y = self.run_host(with_host(x, <[f32]>::to_vec)?, (b, t), Some((cache, past)))?;
        Tensor::from_vec(y, x.shape(), x.device())
    }
}

impl CustomOp1 for DecoderStack {
    fn name(&self) -> &'static str {
        "sg-decoder-stack"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, t, _) = l.shape().dims3()?;
        let x = self.run_host(cpu_slice(s, l)?.to_vec(), (b, t), None)?;
        Ok((CpuStorage::F32(x), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let tapes = self
            .tape
            .lock()
            .map_err(|_| op_error("decoder stack: tape lock poisoned"))?;
        if tapes.len() != self.n - self.first {
            return Err(op_error(
                "decoder stack: backward without a recorded forward pass",
            ));
        }
        let (b, t, _) = arg.dims3()?;
        let mut dy = with_host(grad, <[f32]>::to_vec)?;
        let run = self.layers.iter().take(self.n).skip(self.first);
        for (blk, tape) in run.zip(tapes.iter()).rev() {
            dy = with_weights(blk, false, |lw| {
                self.pass.layer_backward(lw, tape, dy, (b, t), None)
            })?;
        }
        Ok(Some(Tensor::from_vec(dy, arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use crate::llm::Stop;
    use crate::test_util::{max_diff, rand, tiny_model as tiny};
    use candle_core::{DType, Device, Tensor, Var};
    use rand::SeedableRng;

    /// The fused stack (uncached `forward_embeds`) against the layer-by-layer path that
    /// `forward_with_states` runs: same activations at every layer and same input gradient,
    /// with left padding in one row.
    #[test]
    fn fused_stack_matches_layer_by_layer_path_in_value_and_gradient() {
        let m = tiny();
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (b, t) = (2, 6);
        let x = Var::from_tensor(&rand(&[b, t, 32], &mut r, 1.0)).expect("var");
        let mut mask = vec![1u8; b * t];
        mask[t] = 0;
        mask[t + 1] = 0;
        let mask = Tensor::from_vec(mask, (b, t), &Device::Cpu)
            .and_then(|m| m.to_dtype(DType::U8))
            .expect("mask");
        let (_, states) = m
            .forward_with_states(x.as_tensor(), Some(&mask))
            .expect("states");
        for (k, state) in states.iter().enumerate().skip(1) {
            let fused = m
                .forward_embeds(x.as_tensor(), Some(&mask), Stop::AtLayer(k))
                .expect("fused");
            let d = max_diff(&fused, state);
            assert!(d < 1e-4, "layer {k}: fused differs by {d}");
            let w = rand(&[b, t, 32], &mut r, 1.0);
            let gf = (fused * &w)
                .and_then(|l| l.sum_all()?.backward())
                .expect("fused backward");
            let gs = (state * &w)
                .and_then(|l| l.sum_all()?.backward())
                .expect("stepwise backward");
            let (gf, gs) = (
                gf.get(&x).expect("fused gradient"),
                gs.get(&x).expect("stepwise gradient"),
            );
            let scale = gs
                .abs()
                .and_then(|a| {
                    a.max_keepdim(2)?
                        .max_keepdim(1)?
                        .max_keepdim(0)?
                        .flatten_all()?
                        .to_vec1::<f32>()
                })
                .expect("scale")[0];
            let d = max_diff(gf, gs);
            assert!(
                d < 1e-4 * scale.max(1.0),
                "layer {k}: gradient differs by {d} (scale {scale})"
            );
        }
        // Without a gradient the op keeps no tape and gives the same values.
        let plain = m
            .forward_embeds(&x.as_tensor().detach(), Some(&mask), Stop::AtLayer(3))
            .expect("no-grad pass");
        assert!(max_diff(&plain, &states[3]) < 1e-4);
    }

    /// Cached inference (a 4-token prefill, then a 1-token and a 2-token step, left padding in
    /// one row) gives the last-position logits of the layer-by-layer full pass.
    #[test]
    fn cached_host_pass_matches_layer_by_layer_logits() {
        let m = tiny();
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (b, t) = (2, 7);
        let x = rand(&[b, t, 32], &mut r, 1.0);
        let mut mask = vec![1f32; b * t];
        mask[t] = 0.0;
        mask[t + 1] = 0.0;
        let mask = Tensor::from_vec(mask, (b, t), &Device::Cpu).expect("mask");
        let (full, _) = m.forward_with_states(&x, Some(&mask)).expect("full");
        let mut cache = crate::llm::KvCache::new(3, b);
        for (start, len) in [(0, 4), (4, 1), (5, 2)] {
            let part = |t: &Tensor| t.narrow(1, start, len).expect("narrow");
            let got = m
                .forward_cached(&part(&x), Some(&part(&mask)), &mut cache)
                .expect("cached");
            let want = full
                .narrow(1, start + len - 1, 1)
                .and_then(|l| l.squeeze(1));
            let d = max_diff(&got, &want.expect("want"));
            assert!(
                d < 1e-4,
                "positions {start}..{}: logits differ by {d}",
                start + len
            );
        }
        assert_eq!(cache.len(), t);
    }
}
