//! Fused CPU ops for the Llama block, each with a hand-written backward pass: RMSNorm with a
//! frozen weight, rotary embedding, SwiGLU, causal grouped-query attention, and a linear layer
//! with a frozen weight. candle's own fast paths for these cut the gradient (see CANDLE.md) and
//! its differentiable compositions are slow; these run row-parallel with rayon, compute only the
//! input gradients (the base model is frozen), and match the reference compositions in
//! `reference` (tested below). Non-CPU devices use the reference compositions.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use std::sync::Arc;

fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    cpu_slice(s, l).map_err(|e| e.context(op.to_string()))
}

use super::kernels::{self, AttnShape, HeadView, SendPtr};

pub(super) use stainedglass_core::host::is_cpu_f32;
use stainedglass_core::host::{cpu_slice, with_host, with_hosts};

// ---------------------------------------------------------------- RMSNorm

/// `y = x / sqrt(mean(x²) + eps) · w` over the last dimension; `w` is frozen.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    host: Arc<Vec<f32>>,
    eps: f32,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Result<Self> {
        let host = Arc::new(
            weight
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
        Ok(Self {
            weight,
            host,
            eps: eps as f32,
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The weight as host values.
    pub fn host(&self) -> &[f32] {
        &self.host
    }

    pub fn eps(&self) -> f32 {
        self.eps
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if is_cpu_f32(x) {
            x.contiguous()?.apply_op1(self.clone())
        } else {
            reference::rms_norm(x, &self.weight, self.eps as f64)
        }
    }
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "sg-rms-norm"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "rms_norm")?;
        let mut y = vec![0f32; x.len()];
        kernels::rms_norm(x, &self.host, self.eps, &mut y);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&g, &RmsNormBwd(self.clone()))?))
    }
}

struct RmsNormBwd(RmsNorm);

impl CustomOp2 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "sg-rms-norm-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "rms_norm_bwd")?;
        let g = slice(s2, l2, "rms_norm_bwd")?;
        let mut dx = vec![0f32; x.len()];
        kernels::rms_norm_bwd(x, g, &self.0.host, self.0.eps, &mut dx, false);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- RoPE

/// Cos/sin tables of the rotary embedding, `(max_positions, head_dim / 2)`.
#[derive(Debug)]
pub struct RopeTable {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
    pub max_positions: usize,
}

impl RopeTable {
    pub fn new(head_dim: usize, theta: f64, max_positions: usize) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for i in 0..half {
                let inv = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
                let a = p as f64 * inv;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Self {
            cos,
            sin,
            half,
            max_positions,
        }
    }
}

/// Half-split ("rotate_half") rotary embedding of `x: (b, t, h, d)` at per-token positions
/// `positions[b·t]`; backward is the inverse rotation.
#[derive(Debug, Clone)]
pub struct Rope {
    pub table: Arc<RopeTable>,
    pub positions: Arc<Vec<u32>>,
    inverse: bool,
}

impl Rope {
    pub fn new(table: Arc<RopeTable>, positions: Arc<Vec<u32>>) -> Self {
        Self {
            table,
            positions,
            inverse: false,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _, d) = x.dims4()?;
        if self.positions.len() != b * t || d != 2 * self.table.half {
            candle_core::bail!(
                "rope: {} positions / head_dim {} for input {:?}",
                self.positions.len(),
                2 * self.table.half,
                x.dims()
            );
        }
        if let Some(&p) = self.positions.iter().max() {
            if p as usize >= self.table.max_positions {
                candle_core::bail!(
                    "position {p} is beyond the model's context of {} tokens",
                    self.table.max_positions
                );
            }
        }
        if is_cpu_f32(x) {
            x.contiguous()?.apply_op1(self.clone())
        } else {
            reference::rope(x, &self.table, &self.positions)
        }
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "sg-rope"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "rope")?;
        let (_, _, h, d) = l.shape().dims4()?;
        let mut y = x.to_vec();
        kernels::rope_in_place(
            &mut y,
            h * d,
            h,
            d,
            &self.table,
            &self.positions,
            self.inverse,
        );
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let mut inv = self.clone();
        inv.inverse = !self.inverse;
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&inv)?))
    }
}

// ---------------------------------------------------------------- SwiGLU

/// `silu(gate) · up` where `x = [gate | up]` on the last dimension (`2·ffn` → `ffn`).
#[derive(Debug, Clone, Copy)]
pub struct SwiGlu;

impl SwiGlu {
    pub fn forward(x: &Tensor) -> Result<Tensor> {
        if is_cpu_f32(x) {
            x.contiguous()?.apply_op1(SwiGlu)
        } else {
            reference::swiglu(x)
        }
    }
}

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "sg-swiglu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "swiglu")?;
        let dims = l.shape().dims();
        let two_f = dims[dims.len() - 1];
        let f = two_f / 2;
        let mut y = vec![0f32; x.len() / 2];
        kernels::swiglu(x, f, &mut y);
        let mut out = dims.to_vec();
        *out.last_mut().expect("rank ≥ 1") = f;
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &SwiGluBwd)?))
    }
}

struct SwiGluBwd;

impl CustomOp2 for SwiGluBwd {
    fn name(&self) -> &'static str {
        "sg-swiglu-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "swiglu_bwd")?;
        let g = slice(s2, l2, "swiglu_bwd")?;
        let dims = l1.shape().dims();
        let two_f = dims[dims.len() - 1];
        let f = two_f / 2;
        let mut dx = vec![0f32; x.len()];
        kernels::swiglu_bwd(x, g, f, &mut dx);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- attention

/// Causal grouped-query attention `softmax(q·kᵀ/√d + mask)·v`.
/// `q: (b, t, hq, d)`, `k, v: (b, s, hkv, d)` with `s ≥ t`: query `i` sits at key index
/// `s − t + i` and sees keys `0..=s − t + i` whose `key_valid[b·s + j]` is set. A query with no
/// visible key (a left-padding position) outputs zeros.
#[derive(Debug, Clone)]
pub struct Attention {
    pub key_valid: Arc<Vec<u8>>,
}

impl Attention {
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (b, t, hq, d) = q.dims4()?;
        let (bk, s, hkv, dk) = k.dims4()?;
        if bk != b || dk != d || v.dims() != k.dims() || s < t || hkv == 0 || hq % hkv != 0 {
            candle_core::bail!(
                "attention: bad shapes q {:?} k {:?} v {:?}",
                q.dims(),
                k.dims(),
                v.dims()
            );
        }
        if self.key_valid.len() != b * s {
            candle_core::bail!(
                "attention: key mask has {} entries for batch {b} × {s} keys",
                self.key_valid.len()
            );
        }
        if is_cpu_f32(q) {
            // K/V may be views of a larger preallocated cache: only the batch stride differs.
            let kv = |t: &Tensor| -> Result<Tensor> {
                if batch_strided(t.layout()) {
                    Ok(t.clone())
                } else {
                    t.contiguous()
                }
            };
            q.contiguous()?.apply_op3(&kv(k)?, &kv(v)?, self.clone())
        } else {
            reference::attention(q, k, v, &self.key_valid)
        }
    }
}

/// A rank-4 layout whose last three dimensions are contiguous (any batch stride).
fn batch_strided(l: &Layout) -> bool {
    let (d, st) = (l.dims(), l.stride());
    d.len() == 4 && st[3] == 1 && st[2] == d[3] && st[1] == d[2] * d[3]
}

/// Data from the layout's start and the batch stride of a [`batch_strided`] tensor.
fn batch_view<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<(&'a [f32], usize)> {
    if !batch_strided(l) {
        candle_core::bail!("{op}: key/value tensors need contiguous inner dimensions");
    }
    let v = s.as_slice::<f32>()?;
    Ok((&v[l.start_offset()..], l.stride()[0]))
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "sg-attention"
    }
    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = slice(sq, lq, "attention")?;
        let (k, kbs) = batch_view(sk, lk, "attention")?;
        let (v, vbs) = batch_view(sv, lv, "attention")?;
        let (b, t, hq, d) = lq.shape().dims4()?;
        let (_, s, hkv, _) = lk.shape().dims4()?;
        let mut out = vec![0f32; q.len()];
        let sh = AttnShape {
            b,
            t,
            s,
            hq,
            hkv,
            d,
        };
        let (ldq, ldk) = (hq * d, hkv * d);
        // SAFETY: the views cover the shapes checked in `forward`; `out` is a fresh buffer.
        unsafe {
            kernels::attention(
                sh,
                HeadView {
                    ptr: SendPtr::of(q),
                    batch: t * ldq,
                    row: ldq,
                },
                HeadView {
                    ptr: SendPtr::of(k),
                    batch: kbs,
                    row: ldk,
                },
                HeadView {
                    ptr: SendPtr::of(v),
                    batch: vbs,
                    row: ldk,
                },
                HeadView {
                    ptr: SendPtr(out.as_mut_ptr()),
                    batch: t * ldq,
                    row: ldq,
                },
                &self.key_valid,
                None,
            );
        }
        Ok((CpuStorage::F32(out), lq.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // One op computes [dq | dk | dv] flattened; split afterwards.
        let (b, t, hq, d) = q.dims4()?;
        let (_, s, hkv, _) = k.dims4()?;
        let packed = Tensor::cat(
            &[
                q.flatten_all()?,
                k.flatten_all()?,
                v.flatten_all()?,
                grad.contiguous()?.flatten_all()?,
            ],
            0,
        )?;
        let bwd = AttentionBwd {
            key_valid: self.key_valid.clone(),
            dims: [b, t, s, hq, hkv, d],
        };
        let g = packed.apply_op1_no_bwd(&bwd)?;
        let (nq, nk) = (b * t * hq * d, b * s * hkv * d);
        let dq = g.narrow(0, 0, nq)?.reshape((b, t, hq, d))?;
        let dk = g.narrow(0, nq, nk)?.reshape((b, s, hkv, d))?;
        let dv = g.narrow(0, nq + nk, nk)?.reshape((b, s, hkv, d))?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

struct AttentionBwd {
    key_valid: Arc<Vec<u8>>,
    dims: [usize; 6],
}

impl CustomOp1 for AttentionBwd {
    fn name(&self) -> &'static str {
        "sg-attention-bwd"
    }
    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let all = slice(st, l, "attention_bwd")?;
        let [b, t, s, hq, hkv, d] = self.dims;
        let (nq, nk) = (b * t * hq * d, b * s * hkv * d);
        if all.len() != 2 * nq + 2 * nk {
            candle_core::bail!("attention_bwd: packed input has the wrong size");
        }
        let (q, rest) = all.split_at(nq);
        let (k, rest) = rest.split_at(nk);
        let (v, g) = rest.split_at(nk);
        let (ldq, ldk) = (hq * d, hkv * d);
        let mut out = vec![0f32; nq + 2 * nk];
        let base = SendPtr(out.as_mut_ptr());
        let view = |ptr: SendPtr, rows: usize, ld: usize| HeadView {
            ptr,
            batch: rows * ld,
            row: ld,
        };
        let sh = AttnShape {
            b,
            t,
            s,
            hq,
            hkv,
            d,
        };
        // SAFETY: the packed buffers hold exactly these shapes (checked above); the outputs
        // are disjoint ranges of a fresh buffer.
        unsafe {
            kernels::attention_bwd(
                sh,
                (
                    view(SendPtr::of(q), t, ldq),
                    view(SendPtr::of(k), s, ldk),
                    view(SendPtr::of(v), s, ldk),
                ),
                view(SendPtr::of(g), t, ldq),
                (
                    view(base, t, ldq),
                    view(SendPtr(base.at(nq)), s, ldk),
                    view(SendPtr(base.at(nq + nk)), s, ldk),
                ),
                &self.key_valid,
                None,
            );
        }
        Ok((CpuStorage::F32(out), Shape::from(nq + 2 * nk)))
    }
}

// ---------------------------------------------------------------- frozen linear

/// Up to this many rows, a linear layer runs as row-wise dot products (`gemv`).
pub(super) const GEMV_MAX_ROWS: usize = 4;

/// `y = x·Wᵀ (+ b)` with a frozen `W: (out, in)`. When `x` carries a gradient the matmul is a
/// custom op whose backward returns only `dx = dy·W` (candle's matmul would also compute the
/// unused weight gradient).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Few-row product through `gemv::gemv_rows`, reading the weight in place.
    fn gemv(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        let n = self.out_features();
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; m * n];
        with_host(&self.weight, |w| {
            super::gemv::gemv_rows(&xs, w, m, k, n, &mut out)
        })?;
        Tensor::from_vec(out, (m, n), x.device())
    }

    /// `x: (…, in)` → `(…, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let din = *dims.last().unwrap_or(&0);
        let x2 = x.reshape(((), din))?;
        let rows = x2.dim(0)?;
        let y = if x.track_op() && is_cpu_f32(x) {
            x2.contiguous()?
                .apply_op1(FrozenMatmul(self.weight.clone()))?
        } else if rows <= GEMV_MAX_ROWS && is_cpu_f32(x) && is_cpu_f32(&self.weight) {
            self.gemv(&x2.contiguous()?)?
        } else if is_cpu_f32(x) && is_cpu_f32(&self.weight) && super::blas::available() {
            matmul_host(&x2.contiguous()?, &self.weight, true)?
        } else {
            x2.matmul(&self.weight.t()?)?
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        *out.last_mut().unwrap_or(&mut 0) = self.out_features();
        y.reshape(out)
    }
}

struct FrozenMatmul(Tensor);

/// `x (m×k) · wᵀ` for `w (n×k)` if `transposed`, else `x · w` for `w (k×n)`; BLAS when
/// available, candle otherwise.
fn matmul_host(x: &Tensor, w: &Tensor, transposed: bool) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let n = if transposed { w.dim(0)? } else { w.dim(1)? };
    let x = x.contiguous()?;
    let mut out = vec![0f32; m * n];
    let done = with_hosts([&x, w], |[xs, ws]| {
        super::blas::sgemm(xs, ws, &mut out, m, n, k, transposed)
    })?;
    if done {
        Tensor::from_vec(out, (m, n), x.device())
    } else if transposed {
        x.matmul(&w.t()?)
    } else {
        x.matmul(w)
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "sg-frozen-matmul"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "linear")?;
        let (m, k) = l.shape().dims2()?;
        let n = self.0.dim(0)?;
        let mut out = vec![0f32; m * n];
        let done = with_host(&self.0, |w| {
            super::blas::sgemm(x, w, &mut out, m, n, k, true)
        })?;
        if done {
            return Ok((CpuStorage::F32(out), Shape::from((m, n))));
        }
        let xt = Tensor::from_slice(x, (m, k), &candle_core::Device::Cpu)?;
        let y = xt.matmul(&self.0.t()?)?.flatten_all()?.to_vec1::<f32>()?;
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(matmul_host(&grad.contiguous()?, &self.0, false)?))
    }
}

// ---------------------------------------------------------------- reference compositions

/// Differentiable compositions of candle ops: the oracle for the fused ops and the path on
/// non-CPU devices.
pub mod reference {
    use super::RopeTable;
    use candle_core::{DType, Device, Result, Tensor, D};

    pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)
    }

    pub fn rope(x: &Tensor, table: &RopeTable, positions: &[u32]) -> Result<Tensor> {
        let (b, t, _, d) = x.dims4()?;
        let half = d / 2;
        let mut c = Vec::with_capacity(b * t * half);
        let mut s = Vec::with_capacity(b * t * half);
        for &p in positions {
            let p = p as usize;
            c.extend_from_slice(&table.cos[p * half..(p + 1) * half]);
            s.extend_from_slice(&table.sin[p * half..(p + 1) * half]);
        }
        let dev = x.device();
        let c = Tensor::from_vec(c, (b, t, 1, half), dev)?;
        let s = Tensor::from_vec(s, (b, t, 1, half), dev)?;
        let (x1, x2) = (x.narrow(3, 0, half)?, x.narrow(3, half, half)?);
        let y1 = (x1.broadcast_mul(&c)? - x2.broadcast_mul(&s)?)?;
        let y2 = (x2.broadcast_mul(&c)? + x1.broadcast_mul(&s)?)?;
        Tensor::cat(&[y1, y2], 3)
    }

    pub fn swiglu(x: &Tensor) -> Result<Tensor> {
        let f = x.dim(D::Minus1)? / 2;
        let g = x.narrow(D::Minus1, 0, f)?;
        let u = x.narrow(D::Minus1, f, f)?;
        g.silu()? * u
    }

    pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, key_valid: &[u8]) -> Result<Tensor> {
        let (b, t, hq, d) = q.dims4()?;
        let (_, s, hkv, _) = k.dims4()?;
        let g = hq / hkv;
        let rep = |x: &Tensor| -> Result<Tensor> {
            x.unsqueeze(3)?
                .broadcast_as((b, s, hkv, g, d))?
                .reshape((b, s, hq, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (kk, vv) = (rep(k)?, rep(v)?);
        let qq = q.transpose(1, 2)?.contiguous()?;
        let scores = (qq.matmul(&kk.t()?)? / (d as f64).sqrt())?;
        let mut mask = vec![0f32; b * t * s];
        let mut dead = vec![0f32; b * t];
        for bi in 0..b {
            for i in 0..t {
                let mut any = false;
                for j in 0..s {
                    let ok = j <= s - t + i && key_valid[bi * s + j] != 0;
                    any |= ok;
                    mask[(bi * t + i) * s + j] = if ok { 0.0 } else { -1e9 };
                }
                dead[bi * t + i] = if any { 1.0 } else { 0.0 };
            }
        }
        let dev: &Device = q.device();
        let mask = Tensor::from_vec(mask, (b, 1, t, s), dev)?;
        let p = candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1)?;
        let o = p.matmul(&vv)?.transpose(1, 2)?;
        let alive = Tensor::from_vec(dead, (b, t, 1, 1), dev)?.to_dtype(DType::F32)?;
        o.broadcast_mul(&alive)
    }
}

#[cfg(test)]
mod tests;
