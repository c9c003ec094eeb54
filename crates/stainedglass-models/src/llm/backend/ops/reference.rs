//! Differentiable compositions of candle ops: the oracle for the fused ops and the path on
//! non-CPU devices.

use crate::llm::backend::rope_table::RopeTable;
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
