//! The frozen decoder layers `0..n` as **one** op on the input embeddings (CPU, f32). Training
//! an SGT backpropagates through the frozen base model to its input only; as one op the
//! autograd graph holds a single node instead of a dozen per layer, so candle allocates no zero
//! gradient per intermediate tensor, and q, k and v are read in place from the packed
//! projection instead of being copied out. The activations the backward pass needs (each
//! layer's input, roped `[q | k | v]`, attention probabilities, residual after attention, and
//! gate/up projection) are kept by the op between forward and backward, only when its input
//! carries a gradient.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use stainedglass_core::host::{cpu_slice, with_host, with_hosts, zeroed};

use super::blas::{par_sgemm, par_sgemm_new};
use super::gemv::gemv_rows;
use super::kernels::{self, AttnShape, HeadView, SendPtr};
use super::model::{Block, KvCache};
use super::ops::{RopeTable, GEMV_MAX_ROWS};
use super::packed::PackedMatrix;
use super::train_linear::weight_grad;

fn op_error(msg: impl Into<String>) -> candle_core::Error {
    candle_core::Error::Msg(msg.into())
}

/// Head counts and sizes of the decoder layers.
#[derive(Debug, Clone, Copy)]
pub(super) struct StackDims {
    pub hidden: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
    pub ffn: usize,
}

impl StackDims {
    /// Width of the packed `[q | k | v]` projection.
    pub(super) fn qkv_width(&self) -> usize {
        (self.hq + 2 * self.hkv) * self.d
    }
}

/// One batch's decoder-layer passes (positions and key mask fixed), forward and backward, for
/// any layer's weights: the frozen stack below and the trainable estimator layer
/// (`estimator_layer`) both run these.
#[derive(Clone)]
pub(super) struct LayerPass {
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

/// The op: frozen layers `0..n` of a model for one batch.
#[derive(Clone)]
pub(super) struct DecoderStack {
    pub layers: Arc<[Block]>,
    pub n: usize,
    pub pass: LayerPass,
    tape: Arc<Mutex<Vec<LayerTape>>>,
}

/// What one layer's backward pass reads.
pub(super) struct LayerTape {
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

/// Host views of one decoder layer's weights (`(out, in)` row-major products).
pub(super) struct LayerWeights<'a> {
    pub attn_norm: &'a [f32],
    pub attn_eps: f32,
    pub qkv: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub o: &'a [f32],
    pub mlp_norm: &'a [f32],
    pub mlp_eps: f32,
    pub gate_up: &'a [f32],
    pub down: &'a [f32],
    /// The same weights packed for large products (frozen layers in training; see `packed`).
    pub packed: Option<&'a PackedLayer>,
}

/// A frozen layer's four weights packed once: `fwd` for `x · Wᵀ`, `bwd` for the input
/// gradient `dy · W`. A missing matrix (no oneMKL, budget spent) is multiplied as usual.
#[derive(Default)]
pub(super) struct PackedLayer {
    fwd: PackedProducts,
    bwd: PackedProducts,
}

#[derive(Default)]
struct PackedProducts {
    qkv: Option<PackedMatrix>,
    o: Option<PackedMatrix>,
    gate_up: Option<PackedMatrix>,
    down: Option<PackedMatrix>,
}

impl PackedLayer {
    /// Packs `lw`'s products both ways: each weight is stored `(out, in)`, `x · Wᵀ` multiplies
    /// by `Wᵀ` (`in×out`) and the input gradient by `W` (`out×in`).
    fn new(lw: &LayerWeights) -> Self {
        let hidden = lw.attn_norm.len().max(1);
        let [qkv, o, gate_up, down] = [
            (lw.qkv, lw.qkv.len() / hidden),
            (lw.o, hidden),
            (lw.gate_up, lw.gate_up.len() / hidden),
            (lw.down, hidden),
        ]
        .map(|(w, out)| {
            let inp = w.len() / out.max(1);
            (
                PackedMatrix::new(w, (out, inp), true),
                PackedMatrix::new(w, (inp, out), false),
            )
        });
        Self {
            fwd: PackedProducts {
                qkv: qkv.0,
                o: o.0,
                gate_up: gate_up.0,
                down: down.0,
            },
            bwd: PackedProducts {
                qkv: qkv.1,
                o: o.1,
                gate_up: gate_up.1,
                down: down.1,
            },
        }
    }
}

impl LayerWeights<'_> {
    /// The packed form of one of the weights for the forward (`x · Wᵀ`) product.
    fn fwd(&self, pick: fn(&PackedProducts) -> &Option<PackedMatrix>) -> Option<&PackedMatrix> {
        self.packed.and_then(|p| pick(&p.fwd).as_ref())
    }

    /// The packed form of one of the weights for the input-gradient (`dy · W`) product.
    fn bwd(&self, pick: fn(&PackedProducts) -> &Option<PackedMatrix>) -> Option<&PackedMatrix> {
        self.packed.and_then(|p| pick(&p.bwd).as_ref())
    }
}

/// Gradients of one layer's weights, in the shapes of [`LayerWeights`] (written, not added).
pub(super) struct LayerGrads<'a> {
    pub attn_norm: &'a mut [f32],
    pub qkv: &'a mut [f32],
    pub bias: Option<&'a mut [f32]>,
    pub o: &'a mut [f32],
    pub mlp_norm: &'a mut [f32],
    pub gate_up: &'a mut [f32],
    pub down: &'a mut [f32],
}

/// Runs `f` on host views of one frozen layer's weights (read locks held meanwhile), with
/// their packed forms if the layer has them; `pack` packs them first if not yet done.
fn with_weights<R>(
    blk: &Block,
    pack: bool,
    f: impl FnOnce(&LayerWeights) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let bias = match blk.qkv.bias() {
        Some(b) => Some(b.flatten_all()?.to_vec1::<f32>()?),
        None => None,
    };
    let weights = [&blk.qkv, &blk.o, &blk.gate_up, &blk.down].map(|l| l.weight());
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
            pass,
            tape: Arc::default(),
        }
    }
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
    pub(super) fn layer_forward(
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
                    lw.qkv,
                    lw.fwd(|p| &p.qkv),
                    (m, w, hidden),
                    true,
                    &mut qkv,
                );
                qkv
            }
            None => project_new(&h, lw.qkv, lw.fwd(|p| &p.qkv), (m, w, hidden)),
        };
        kernels::rope_in_place(&mut qkv, w, hq + hkv, d, &self.rope, &self.positions, false);
        let mut a = zeroed(m * hq * d);
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
                let (ck, cv) = self.append_kv(&qkv, (b, t), cache, li, past)?;
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
        let (x, mut x2) = if self.keep {
            let x2 = x.clone();
            (Some(x), x2)
        } else {
            (None, x)
        };
        project(
            &a,
            lw.o,
            lw.fwd(|p| &p.o),
            (m, hidden, hq * d),
            true,
            &mut x2,
        );
        let n1 = self
            .weight_inputs
            .then(|| std::mem::replace(&mut h, zeroed(m * hidden)));
        kernels::rms_norm(&x2, lw.mlp_norm, lw.mlp_eps, &mut h);
        let gu = project_new(&h, lw.gate_up, lw.fwd(|p| &p.gate_up), (m, 2 * ffn, hidden));
        let mut act = zeroed(m * ffn);
        kernels::swiglu(&gu, ffn, &mut act);
        let mut y = match x {
            Some(_) => x2.clone(),
            None => std::mem::take(&mut x2),
        };
        project(
            &act,
            lw.down,
            lw.fwd(|p| &p.down),
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

    /// One layer backward: the input gradient for output gradient `dy`, and with `grads` the
    /// weights' gradients (the forward pass must have kept their inputs).
    pub(super) fn layer_backward(
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
        kernels::rope_in_place(&mut dqkv, w, hq + hkv, d, &self.rope, &self.positions, true);
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
        for (li, blk) in self.layers.iter().take(self.n).enumerate() {
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

/// A new `dy (m×k) · w` (`w` stored `k×n`), through `packed` (`w` packed) when given.
fn input_grad(
    dy: &[f32],
    w: &[f32],
    packed: Option<&PackedMatrix>,
    (m, n, k): (usize, usize, usize),
) -> Vec<f32> {
    match packed {
        Some(p) => {
            debug_assert_eq!(p.dims(), (n, k), "packed weight of another shape");
            p.product_new(dy, m)
        }
        None => par_sgemm_new(dy, w, (m, n, k), false),
    }
}

/// A new `x (m×k) · wᵀ` (`w` stored `n×k`), as [`project`] computes it.
fn project_new(
    x: &[f32],
    w: &[f32],
    packed: Option<&PackedMatrix>,
    (m, n, k): (usize, usize, usize),
) -> Vec<f32> {
    if m > GEMV_MAX_ROWS {
        return match packed {
            Some(p) => {
                debug_assert_eq!(p.dims(), (n, k), "packed weight of another shape");
                p.product_new(x, m)
            }
            None => par_sgemm_new(x, w, (m, n, k), true),
        };
    }
    let mut out = zeroed(m * n);
    gemv_rows(x, w, m, k, n, &mut out);
    out
}

/// `out (m×n) = x (m×k) · wᵀ` (`w` stored `n×k`), added to `out` when `accumulate`. A few
/// rows (decoding) run as row dot products, more as a matrix product (through `packed`, `wᵀ`
/// packed, when given).
fn project(
    x: &[f32],
    w: &[f32],
    packed: Option<&PackedMatrix>,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    out: &mut [f32],
) {
    let beta = if accumulate { 1.0 } else { 0.0 };
    if m > GEMV_MAX_ROWS {
        match packed {
            Some(p) => {
                debug_assert_eq!(p.dims(), (n, k), "packed weight of another shape");
                p.product(x, out, m, beta)
            }
            None => par_sgemm(x, w, out, (m, n, k), true, beta),
        }
    } else if accumulate {
        let mut tmp = zeroed(m * n);
        gemv_rows(x, w, m, k, n, &mut tmp);
        out.iter_mut().zip(&tmp).for_each(|(o, t)| *o += t);
    } else {
        gemv_rows(x, w, m, k, n, out);
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
        if tapes.len() != self.n {
            return Err(op_error(
                "decoder stack: backward without a recorded forward pass",
            ));
        }
        let (b, t, _) = arg.dims3()?;
        let mut dy = with_host(grad, <[f32]>::to_vec)?;
        for (blk, tape) in self.layers.iter().take(self.n).zip(tapes.iter()).rev() {
            dy = with_weights(blk, false, |lw| {
                self.pass.layer_backward(lw, tape, dy, (b, t), None)
            })?;
        }
        Ok(Some(Tensor::from_vec(dy, arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::LlamaConfig;
    use super::super::model::{Llama, Stop};
    use super::super::test_util::rand;
    use super::super::weights::TensorMap;
    use candle_core::{DType, Device, Tensor, Var};
    use rand::SeedableRng;

    /// A 3-layer model with GQA and a qkv bias (Qwen2-style), random weights.
    fn tiny() -> Llama {
        let cfg = LlamaConfig::tiny_for_tests();
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut map = TensorMap::new();
        let (h, f, q, kv) = (32, 40, 32, 16);
        map.insert(
            "model.embed_tokens.weight".into(),
            rand(&[50, h], &mut r, 1.0),
        );
        map.insert("model.norm.weight".into(), rand(&[h], &mut r, 1.0));
        for i in 0..3 {
            let p = format!("model.layers.{i}");
            let mut put = |n: &str, s: &[usize], sc: f32| {
                map.insert(format!("{p}.{n}"), rand(s, &mut r, sc));
            };
            put("input_layernorm.weight", &[h], 1.0);
            put("post_attention_layernorm.weight", &[h], 1.0);
            put("self_attn.q_proj.weight", &[q, h], 0.3);
            put("self_attn.k_proj.weight", &[kv, h], 0.3);
            put("self_attn.v_proj.weight", &[kv, h], 0.3);
            put("self_attn.q_proj.bias", &[q], 0.3);
            put("self_attn.k_proj.bias", &[kv], 0.3);
            put("self_attn.v_proj.bias", &[kv], 0.3);
            put("self_attn.o_proj.weight", &[h, q], 0.3);
            put("mlp.gate_proj.weight", &[f, h], 0.3);
            put("mlp.up_proj.weight", &[f, h], 0.3);
            put("mlp.down_proj.weight", &[h, f], 0.3);
        }
        Llama::from_tensors(cfg, map, &Device::Cpu).expect("tiny model")
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .expect("diff")
    }

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
        let mut cache = super::super::model::KvCache::new(3, b);
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
