//! The KV cache of cached inference (prefill, decoding, beam search): keys and values of past
//! positions per layer, grown by doubling, plus which positions are real tokens.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Smallest KV-cache capacity allocated (positions).
const MIN_CACHE: usize = 64;

/// Keys and values of past positions, per layer, plus which of them are real (not padding).
pub struct KvCache {
    kv: Vec<Option<(Tensor, Tensor)>>,
    pub(crate) key_valid: Vec<Vec<u8>>,
    pub(crate) next_pos: Vec<u32>,
}

impl KvCache {
    pub fn new(num_layers: usize, batch: usize) -> Self {
        Self {
            kv: vec![None; num_layers],
            key_valid: vec![Vec::new(); batch],
            next_pos: vec![0; batch],
        }
    }

    /// Layer `li`'s key and value buffers `(b, capacity, kv_heads, head_dim)` holding `used`
    /// positions, grown (doubling, old entries copied) so that `need` positions fit.
    /// Writes layer `li`'s new keys and values `(b, t, heads, d)` after its `used` positions
    /// (growing the buffers as needed) and returns views of all `used + t` of them.
    pub(crate) fn append(
        &mut self,
        li: usize,
        k: &Tensor,
        v: &Tensor,
        used: usize,
    ) -> Result<(Tensor, Tensor)> {
        let t = k.dim(1)?;
        let (ck, cv) = self.reserve(li, k, used, used + t)?;
        ck.slice_set(&k.contiguous()?, 1, used)?;
        cv.slice_set(&v.contiguous()?, 1, used)?;
        Ok((ck.narrow(1, 0, used + t)?, cv.narrow(1, 0, used + t)?))
    }

    pub(crate) fn reserve(
        &mut self,
        li: usize,
        like: &Tensor,
        used: usize,
        need: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (b, _, h, d) = like.dims4()?;
        let cap = self.kv[li]
            .as_ref()
            .map_or(0, |(k, _)| k.dim(1).unwrap_or(0));
        if cap < need {
            let new_cap = need.max(2 * cap).max(MIN_CACHE);
            let nk = Tensor::zeros((b, new_cap, h, d), like.dtype(), like.device())?;
            let nv = Tensor::zeros((b, new_cap, h, d), like.dtype(), like.device())?;
            if let Some((ok, ov)) = self.kv[li].take() {
                let used = used.min(cap);
                if used > 0 {
                    nk.slice_set(&ok.narrow(1, 0, used)?.contiguous()?, 1, 0)?;
                    nv.slice_set(&ov.narrow(1, 0, used)?.contiguous()?, 1, 0)?;
                }
            }
            self.kv[li] = Some((nk, nv));
        }
        match &self.kv[li] {
            Some((k, v)) => Ok((k.clone(), v.clone())),
            None => Err(Error::Shape {
                what: "KV cache".into(),
                expected: "allocated buffers".into(),
                got: vec![],
            }),
        }
    }

    /// Keeps, in order, the batch rows `rows` (repeats allowed): after a beam-search step the
    /// surviving beams continue from their parents' caches. The buffers are copied, so rows
    /// never share storage.
    pub fn reorder(&mut self, rows: &[usize]) -> Result<()> {
        let b = self.next_pos.len();
        if rows.is_empty() || rows.iter().any(|&r| r >= b) {
            return Err(Error::Shape {
                what: "KV cache reorder".into(),
                expected: format!("1 or more row indices < {b}"),
                got: rows.to_vec(),
            });
        }
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        for slot in &mut self.kv {
            if let Some((k, v)) = slot.take() {
                let i = Tensor::new(idx.as_slice(), k.device())?;
                *slot = Some((k.index_select(&i, 0)?, v.index_select(&i, 0)?));
            }
        }
        self.key_valid = rows.iter().map(|&r| self.key_valid[r].clone()).collect();
        self.next_pos = rows.iter().map(|&r| self.next_pos[r]).collect();
        Ok(())
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.key_valid.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
