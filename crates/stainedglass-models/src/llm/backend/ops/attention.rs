//! Causal grouped-query attention as an op, with its backward.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use stainedglass_core::host::is_cpu_f32;

use super::{reference, slice};
use crate::llm::backend::kernels::{self, AttnShape, HeadView, SendPtr};

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
