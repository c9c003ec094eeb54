//! One decoder layer's pass on host buffers, forward (optionally through a KV cache) and
//! backward (input gradient, and weight gradients when the tape kept their inputs).

use std::sync::Arc;

use candle_core::Tensor;
use stainedglass_core::host::{with_hosts, zeroed};

use super::weights::{input_grad, project, project_new, LayerGrads, LayerWeights};
use crate::llm::backend::blas::par_sgemm;
use crate::llm::backend::kernels::{self, AttnShape, HeadView, SendPtr};
use crate::llm::backend::rope_table::{rope_in_place, RopeTable};
use crate::llm::backend::train_linear::weight_grad;
use crate::llm::kv_cache::KvCache;

pub(super) fn op_error(msg: impl Into<String>) -> candle_core::Error {
    candle_core::Error::Msg(msg.into())
}

/// Head counts and sizes of the decoder layers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StackDims {
    pub hidden: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
    pub ffn: usize,
}

impl StackDims {
    /// Width of the packed `[q | k | v]` projection.
    pub(crate) fn qkv_width(&self) -> usize {
        (self.hq + 2 * self.hkv) * self.d
    }
}

/// One batch's decoder-layer passes (positions and key mask fixed), forward and backward, for
/// any layer's weights: the frozen stack below and the trainable estimator layer
/// (`estimator_layer`) both run these.
#[derive(Clone)]
pub(crate) struct LayerPass {
    pub dims: StackDims,
    pub rope: Arc<RopeTable>,
    /// RoPE position of every row (`b·t`).
    pub positions: Arc<Vec<u32>>,
    /// 1 = a real token, per row (`b·t`).
    pub key_valid: Arc<Vec<u8>>,
    /// Whether to keep activations for a backward pass.
    pub keep: bool,
    /// Whether the tape also keeps the inputs of every product and norm (weight gradients).
    weight_inputs: bool,
}

/// What one layer's backward pass reads.
pub(crate) struct LayerTape {
    x: Vec<f32>,
    qkv: Vec<f32>,
    probs: Vec<f32>,
    x2: Vec<f32>,
    gu: Vec<f32>,
    /// Kept only when the weights are trained.
    w: Option<WeightInputs>,
}

/// The inputs of the layer's products (normed input, attention output, normed residual,
/// SwiGLU output): what the weight gradients read.
struct WeightInputs {
    n1: Vec<f32>,
    a: Vec<f32>,
    n2: Vec<f32>,
    act: Vec<f32>,
}

impl LayerPass {
    pub fn new(
        dims: StackDims,
        rope: Arc<RopeTable>,
        positions: Arc<Vec<u32>>,
        key_valid: Arc<Vec<u8>>,
        keep: bool,
    ) -> Self {
        Self {
            dims,
            rope,
            positions,
            key_valid,
            keep,
            weight_inputs: false,
        }
    }

    /// Also keeps what the weight gradients of [`Self::layer_backward`] read.
    pub fn with_weight_inputs(mut self) -> Self {
        self.keep = true;
        self.weight_inputs = true;
        self
    }

    fn attn_shape(&self, b: usize, t: usize) -> AttnShape {
        let StackDims { hq, hkv, d, .. } = self.dims;
        AttnShape {
            b,
            t,
            s: t,
            hq,
            hkv,
            d,
        }
    }

    /// Views of q, k and v inside a packed `(b·t) × [q | k | v]` buffer.
    fn qkv_views(&self, base: *mut f32, t: usize) -> (HeadView, HeadView, HeadView) {
        let StackDims { hq, hkv, d, .. } = self.dims;
        let w = self.dims.qkv_width();
        let base = SendPtr(base);
        let at = |off: usize| HeadView {
            ptr: SendPtr(base.at(off)),
            batch: t * w,
            row: w,
        };
        (at(0), at(hq * d), at((hq + hkv) * d))
    }

    /// One layer forward on `x: (b·t) × hidden`; returns its output and, with `keep`, the tape.
    pub(crate) fn layer_forward(
        &self,
        lw: &LayerWeights,
        li: usize,
        x: Vec<f32>,
        (b, t): (usize, usize),
        cache: Option<(&mut KvCache, usize)>,
    ) -> candle_core::Result<(Vec<f32>, Option<LayerTape>)> {
        let StackDims {
            hidden,
            hq,
            hkv,
            d,
            ffn,
        } = self.dims;
        let (m, w) = (b * t, self.dims.qkv_width());
        let mut h = zeroed(m * hidden);
        kernels::rms_norm(&x, lw.attn_norm, lw.attn_eps, &mut h);
        let mut qkv = match lw.bias {
            Some(bias) => {
                let mut qkv = bias.repeat(m);
                project(
                    &h,
                    (lw.qkv, lw.fwd(|p| &p.qkv), lw.stored(|s| &s.qkv)),
                    (m, w, hidden),
                    true,
                    &mut qkv,
                );
                qkv
            }
            None => project_new(
                &h,
                (lw.qkv, lw.fwd(|p| &p.qkv), lw.stored(|s| &s.qkv)),
                (m, w, hidden),
            ),
        };
        rope_in_place(&mut qkv, w, hq + hkv, d, &self.rope, &self.positions, false);
        let (a, probs) = self.attend(&mut qkv, (b, t), li, cache)?;
        let (x, mut x2) = if self.keep {
            let x2 = x.clone();
            (Some(x), x2)
        } else {
            (None, x)
        };
        project(
            &a,
            (lw.o, lw.fwd(|p| &p.o), lw.stored(|s| &s.o)),
            (m, hidden, hq * d),
            true,
            &mut x2,
        );
        let n1 = self
            .weight_inputs
            .then(|| std::mem::replace(&mut h, zeroed(m * hidden)));
        kernels::rms_norm(&x2, lw.mlp_norm, lw.mlp_eps, &mut h);
        let gu = project_new(
            &h,
            (
                lw.gate_up,
                lw.fwd(|p| &p.gate_up),
                lw.stored(|s| &s.gate_up),
            ),
            (m, 2 * ffn, hidden),
        );
        let mut act = zeroed(m * ffn);
        kernels::swiglu(&gu, ffn, &mut act);
        let mut y = match x {
            Some(_) => x2.clone(),
            None => std::mem::take(&mut x2),
        };
        project(
            &act,
            (lw.down, lw.fwd(|p| &p.down), lw.stored(|s| &s.down)),
            (m, hidden, ffn),
            true,
            &mut y,
        );
        let tape = x.map(|x| LayerTape {
            x,
            qkv,
            probs,
            x2,
            gu,
            w: n1.map(|n1| WeightInputs { n1, a, n2: h, act }),
        });
        Ok((y, tape))
    }

    /// Causal attention of the roped packed `qkv` (`(b·t) × [q | k | v]`): over the batch's
    /// own keys, or, with a cache holding `past` positions, over those and these (appended to
    /// it). Returns the output `(b·t) × hq·d` and, with `keep`, the attention probabilities.
    fn attend(
        &self,
        qkv: &mut [f32],
        (b, t): (usize, usize),
        li: usize,
        cache: Option<(&mut KvCache, usize)>,
    ) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
        let StackDims { hq, hkv, d, .. } = self.dims;
        let mut a = zeroed(b * t * hq * d);
        let mut probs = if self.keep {
            zeroed(b * hq * t * t)
        } else {
            Vec::new()
        };
        let out = HeadView {
            ptr: SendPtr(a.as_mut_ptr()),
            batch: t * hq * d,
            row: hq * d,
        };
        let (qv, kv, vv) = self.qkv_views(qkv.as_mut_ptr(), t);
        match cache {
            // SAFETY: the views address the packed (b·t) × w buffer and the (b·t) × hq·d
            // output.
            None => unsafe {
                kernels::attention(
                    self.attn_shape(b, t),
                    qv,
                    kv,
                    vv,
                    out,
                    &self.key_valid,
                    self.keep.then_some(probs.as_mut_slice()),
                );
            },
            Some((cache, past)) => {
                let (ck, cv) = self.append_kv(qkv, (b, t), cache, li, past)?;
                let s = past + t;
                let sh = AttnShape {
                    s,
                    ..self.attn_shape(b, t)
                };
                with_hosts([&ck, &cv], |[kc, vc]| {
                    let view = |c: &[f32]| HeadView {
                        ptr: SendPtr::of(c),
                        batch: c.len() / b,
                        row: hkv * d,
                    };
                    // SAFETY: the cache buffers are (b, capacity ≥ s, hkv, d); q and the
                    // output as above.
                    unsafe {
                        kernels::attention(sh, qv, view(kc), view(vc), out, &self.key_valid, None)
                    };
                })?;
            }
        }
        Ok((a, probs))
    }

    /// One layer backward: the input gradient for output gradient `dy`, and with `grads` the
    /// weights' gradients (the forward pass must have kept their inputs).
    pub(crate) fn layer_backward(
        &self,
        lw: &LayerWeights,
        tape: &LayerTape,
        dy: Vec<f32>,
        (b, t): (usize, usize),
        mut grads: Option<&mut LayerGrads>,
    ) -> candle_core::Result<Vec<f32>> {
        let StackDims {
            hidden,
            hq,
            hkv,
            d,
            ffn,
        } = self.dims;
        let (m, w) = (b * t, self.dims.qkv_width());
        let wi = tape.w.as_ref();
        if lw.stored.is_some() {
            return Err(op_error(
                "decoder stack: no gradients through stored (quantized) weights; load the model \
                 in f32 to train through it",
            ));
        }
        if grads.is_some() && wi.is_none() {
            return Err(op_error(
                "decoder stack: weight gradients need a forward pass that kept their inputs",
            ));
        }
        // Each weight gradient is (output gradient)ᵀ · (the product's input).
        macro_rules! wgrad {
            ($g:expr, $slot:ident, $input:ident, $n:expr, $k:expr) => {
                if let (Some(gs), Some(wi)) = (grads.as_deref_mut(), wi) {
                    weight_grad($g, &wi.$input, (m, $n, $k), gs.$slot);
                }
            };
        }
        let dact = input_grad(&dy, lw.down, lw.bwd(|p| &p.down), (m, ffn, hidden));
        wgrad!(&dy, down, act, hidden, ffn);
        let mut dgu = zeroed(m * 2 * ffn);
        kernels::swiglu_bwd(&tape.gu, &dact, ffn, &mut dgu);
        drop(dact);
        wgrad!(&dgu, gate_up, n2, 2 * ffn, hidden);
        let mut dh = input_grad(
            &dgu,
            lw.gate_up,
            lw.bwd(|p| &p.gate_up),
            (m, hidden, 2 * ffn),
        );
        drop(dgu);
        let mut dx2 = dy;
        if let Some(gs) = grads.as_deref_mut() {
            kernels::rms_norm_weight_grad(&tape.x2, &dh, lw.mlp_eps, gs.mlp_norm);
        }
        kernels::rms_norm_bwd(&tape.x2, &dh, lw.mlp_norm, lw.mlp_eps, &mut dx2, true);
        wgrad!(&dx2, o, a, hidden, hq * d);
        let da = input_grad(&dx2, lw.o, lw.bwd(|p| &p.o), (m, hq * d, hidden));
        let mut dqkv = zeroed(m * w);
        let g = HeadView {
            ptr: SendPtr::of(&da),
            batch: t * hq * d,
            row: hq * d,
        };
        let outs = self.qkv_views(dqkv.as_mut_ptr(), t);
        // SAFETY: the views address the packed (b·t) × w buffers and the (b·t) × hq·d
        // gradient; q, k and v occupy disjoint columns of `dqkv`.
        unsafe {
            kernels::attention_bwd(
                self.attn_shape(b, t),
                self.qkv_views(tape.qkv.as_ptr().cast_mut(), t),
                g,
                outs,
                &self.key_valid,
                Some(&tape.probs),
            );
        }
        rope_in_place(&mut dqkv, w, hq + hkv, d, &self.rope, &self.positions, true);
        wgrad!(&dqkv, qkv, n1, w, hidden);
        if let Some(gb) = grads.as_deref_mut().and_then(|g| g.bias.as_deref_mut()) {
            kernels::column_sums(&dqkv, gb);
        }
        match lw.bwd(|p| &p.qkv) {
            Some(p) => {
                debug_assert_eq!(p.dims(), (hidden, w), "packed weight of another shape");
                p.product(&dqkv, &mut dh, m, 0.0)
            }
            None => par_sgemm(&dqkv, lw.qkv, &mut dh, (m, hidden, w), false, 0.0),
        }
        if let Some(gs) = grads {
            kernels::rms_norm_weight_grad(&tape.x, &dh, lw.attn_eps, gs.attn_norm);
        }
        let mut dx = dx2;
        kernels::rms_norm_bwd(&tape.x, &dh, lw.attn_norm, lw.attn_eps, &mut dx, true);
        Ok(dx)
    }

    /// Writes layer `li`'s new roped keys and values (from the packed `qkv`) into `cache`
    /// after its `past` positions; returns the cache's key and value buffers.
    fn append_kv(
        &self,
        qkv: &[f32],
        (b, t): (usize, usize),
        cache: &mut KvCache,
        li: usize,
        past: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let StackDims { hq, hkv, d, .. } = self.dims;
        let (k0, width) = (hq * d, hkv * d);
        let mut k = Vec::with_capacity(b * t * width);
        let mut v = Vec::with_capacity(b * t * width);
        for row in qkv.chunks_exact(self.dims.qkv_width()) {
            k.extend_from_slice(&row[k0..k0 + width]);
            v.extend_from_slice(&row[k0 + width..]);
        }
        let k = Tensor::from_vec(k, (b, t, hkv, d), &candle_core::Device::Cpu)?;
        let v = Tensor::from_vec(v, (b, t, hkv, d), &candle_core::Device::Cpu)?;
        let (ck, cv) = cache
            .reserve(li, &k, past, past + t)
            .map_err(|e| op_error(e.to_string()))?;
        ck.slice_set(&k, 1, past)?;
        cv.slice_set(&v, 1, past)?;
        Ok((ck, cv))
    }
}
