//! The KV cache of cached inference (prefill, decoding, beam search, continuous batching): keys
//! and values of past positions per layer, grown by doubling, plus which positions are real
//! tokens.
//!
//! Each layer holds buffers `(slots, capacity, kv_heads, head_dim)`; the batch's `b` rows are
//! slots `0..b` (a row is contiguous, so the kernels read it in place). Continuous batching
//! adds rows ([`KvCache::join`]: the newcomers' columns are copied, nobody else moves) and
//! removes them ([`KvCache::swap_remove_row`]: the last row's columns move into the hole).
//! Rows share the column index (every step appends one column to every row), but a row's
//! positions (RoPE) are its own: columns a row never wrote are masked out as padding, wherever
//! they are, and [`KvCache::compact`] drops the columns no row uses any more.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Smallest KV-cache capacity allocated (positions).
const MIN_CACHE: usize = 64;

/// Keys and values of past positions, per layer, plus which of them are real (not padding).
pub struct KvCache {
    kv: Vec<Option<(Tensor, Tensor)>>,
    pub(crate) key_valid: Vec<Vec<u8>>,
    pub(crate) next_pos: Vec<u32>,
}

/// The shape of one cached row's entries: `(kv_heads, head_dim)`, dtype and device.
struct Entry {
    h: usize,
    d: usize,
    dtype: DType,
    device: Device,
}

impl Entry {
    fn of(t: &Tensor) -> Result<Self> {
        let (_, _, h, d) = t.dims4()?;
        Ok(Self {
            h,
            d,
            dtype: t.dtype(),
            device: t.device().clone(),
        })
    }
}

impl KvCache {
    pub fn new(num_layers: usize, batch: usize) -> Self {
        Self {
            kv: vec![None; num_layers],
            key_valid: vec![Vec::new(); batch],
            next_pos: vec![0; batch],
        }
    }

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

    /// Layer `li`'s key and value buffers for the batch's rows, `(b, capacity, kv_heads,
    /// head_dim)` views holding `used` positions, grown (doubling, old entries copied) so that
    /// `need` positions fit; `like` is `(b, _, kv_heads, head_dim)`.
    pub(crate) fn reserve(
        &mut self,
        li: usize,
        like: &Tensor,
        used: usize,
        need: usize,
    ) -> Result<(Tensor, Tensor)> {
        let b = like.dim(0)?;
        self.reserve_rows(li, &Entry::of(like)?, (b, b), used, need)
    }

    /// As [`Self::reserve`], for `b` rows of which the first `live` hold data worth keeping.
    fn reserve_rows(
        &mut self,
        li: usize,
        e: &Entry,
        (b, live): (usize, usize),
        used: usize,
        need: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (slots, cap) = self.kv[li].as_ref().map_or((0, 0), |(k, _)| {
            (k.dim(0).unwrap_or(0), k.dim(1).unwrap_or(0))
        });
        if cap < need || slots < b {
            let new_cap = if cap < need {
                need.max(2 * cap).max(MIN_CACHE)
            } else {
                cap
            };
            let new_slots = slots.max(b);
            let shape = (new_slots, new_cap, e.h, e.d);
            let nk = Tensor::zeros(shape, e.dtype, &e.device)?;
            let nv = Tensor::zeros(shape, e.dtype, &e.device)?;
            if let Some((ok, ov)) = self.kv[li].take() {
                let (rows, used) = (live.min(slots), used.min(cap));
                if rows > 0 && used > 0 {
                    for (new, old) in [(&nk, &ok), (&nv, &ov)] {
                        let part = old.narrow(0, 0, rows)?.narrow(1, 0, used)?.contiguous()?;
                        new.narrow(0, 0, rows)?.slice_set(&part, 1, 0)?;
                    }
                }
            }
            self.kv[li] = Some((nk, nv));
        }
        match &self.kv[li] {
            Some((k, v)) => Ok((k.narrow(0, 0, b)?, v.narrow(0, 0, b)?)),
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

    /// Removes row `i`; the last row takes its place (its columns are copied into the slot),
    /// as `Vec::swap_remove` does, so a caller's list of rows must be swap-removed too.
    pub fn swap_remove_row(&mut self, i: usize) -> Result<()> {
        let b = self.rows();
        if i >= b {
            return Err(Error::Shape {
                what: "KV cache row".into(),
                expected: format!("a row < {b}"),
                got: vec![i],
            });
        }
        let len = self.len();
        if i + 1 < b && len > 0 {
            for (k, v) in self.kv.iter().flatten() {
                for buf in [k, v] {
                    // Always a copy: a view of a full row shares the buffer's storage.
                    let last = buf
                        .narrow(0, b - 1, 1)?
                        .narrow(1, 0, len)?
                        .force_contiguous()?;
                    buf.narrow(0, i, 1)?.slice_set(&last, 1, 0)?;
                }
            }
        }
        self.key_valid.swap_remove(i);
        self.next_pos.swap_remove(i);
        Ok(())
    }

    /// Appends `other`'s rows (a prefill of newcomers) after this cache's: their keys and
    /// values go to columns `0..other.len()` of new slots; every row's mask is padded to the
    /// longer of the two caches (the columns a row never wrote are zeroed and masked).
    pub fn join(&mut self, other: KvCache) -> Result<()> {
        if self.kv.len() != other.kv.len() {
            return Err(Error::Shape {
                what: "KV caches to join".into(),
                expected: format!("{} layers", self.kv.len()),
                got: vec![other.kv.len()],
            });
        }
        let (b1, b2) = (self.rows(), other.rows());
        let (l1, l2) = (self.len(), other.len());
        let l = l1.max(l2);
        for (li, theirs) in other.kv.iter().enumerate() {
            let Some((ok, ov)) = theirs else { continue };
            let e = Entry::of(ok)?;
            let (k, v) = self.reserve_rows(li, &e, (b1 + b2, b1), l1, l)?;
            for (mine, new) in [(&k, ok), (&v, ov)] {
                if l2 > 0 {
                    let part = new.narrow(0, 0, b2)?.narrow(1, 0, l2)?.contiguous()?;
                    mine.narrow(0, b1, b2)?.slice_set(&part, 1, 0)?;
                }
                // Columns a row never wrote: zeros, so no stale value meets a zero weight.
                let zero = |rows, cols| Tensor::zeros((rows, cols, e.h, e.d), e.dtype, &e.device);
                if l > l1 && b1 > 0 {
                    mine.narrow(0, 0, b1)?
                        .slice_set(&zero(b1, l - l1)?, 1, l1)?;
                }
                if l > l2 {
                    mine.narrow(0, b1, b2)?
                        .slice_set(&zero(b2, l - l2)?, 1, l2)?;
                }
            }
        }
        for kv in &mut self.key_valid {
            kv.resize(l, 0);
        }
        for mut kv in other.key_valid {
            kv.resize(l, 0);
            self.key_valid.push(kv);
        }
        self.next_pos.extend(other.next_pos);
        Ok(())
    }

    /// Drops the columns no row uses (every row's mask 0 there) when they are at least
    /// `min_free` and half of all: rows that left behind a long tail of history, or a long
    /// row that ended while short ones go on. Returns whether it compacted.
    pub fn compact(&mut self, min_free: usize) -> Result<bool> {
        let (b, len) = (self.rows(), self.len());
        let keep: Vec<u32> = (0..len)
            .filter(|&c| self.key_valid.iter().any(|kv| kv[c] != 0))
            .map(|c| c as u32)
            .collect();
        let free = len - keep.len();
        if b == 0 || free < min_free.max(1) || 2 * free < len {
            return Ok(false);
        }
        for (k, v) in self.kv.iter().flatten() {
            let idx = Tensor::new(keep.as_slice(), k.device())?;
            for buf in [k, v] {
                let kept = buf
                    .narrow(0, 0, b)?
                    .narrow(1, 0, len)?
                    .contiguous()?
                    .index_select(&idx, 1)?;
                buf.narrow(0, 0, b)?.slice_set(&kept, 1, 0)?;
            }
        }
        for kv in &mut self.key_valid {
            *kv = keep.iter().map(|&c| kv[c as usize]).collect();
        }
        Ok(true)
    }

    /// A cache of `rows` rows that each hold the same first `p` positions: `kv` is one row's
    /// keys and values per layer, `(1, ≥ p, kv_heads, head_dim)` (a cached prompt prefix).
    pub(crate) fn from_prefix(kv: &[(Tensor, Tensor)], p: usize, rows: usize) -> Result<Self> {
        let mut cache = Self::new(kv.len(), rows);
        for (li, (k, v)) in kv.iter().enumerate() {
            let e = Entry::of(k)?;
            let (ck, cv) = cache.reserve_rows(li, &e, (rows, 0), 0, p)?;
            for (dst, src) in [(&ck, k), (&cv, v)] {
                let part = src
                    .narrow(1, 0, p)?
                    .broadcast_as((rows, p, e.h, e.d))?
                    .contiguous()?;
                dst.slice_set(&part, 1, 0)?;
            }
        }
        cache.key_valid = vec![vec![1; p]; rows];
        cache.next_pos = vec![p as u32; rows];
        Ok(cache)
    }

    /// Row `row`'s keys and values at columns `start..start + len`, copied: `(1, len,
    /// kv_heads, head_dim)` per layer.
    pub(crate) fn row_columns(
        &self,
        row: usize,
        start: usize,
        len: usize,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        self.kv
            .iter()
            .map(|slot| {
                let (k, v) = slot.as_ref().ok_or_else(|| Error::Shape {
                    what: "KV cache".into(),
                    expected: "every layer run".into(),
                    got: vec![],
                })?;
                let take = |t: &Tensor| -> Result<Tensor> {
                    Ok(t.narrow(0, row, 1)?
                        .narrow(1, start, len)?
                        .force_contiguous()?)
                };
                Ok((take(k)?, take(v)?))
            })
            .collect()
    }

    /// Number of cached positions (columns).
    pub fn len(&self) -> usize {
        self.key_valid.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of layers the cache holds.
    pub fn layers(&self) -> usize {
        self.kv.len()
    }

    /// Number of rows (sequences) in the batch.
    pub fn rows(&self) -> usize {
        self.next_pos.len()
    }

    /// The position (RoPE) the next token of each row takes: its real tokens so far.
    pub fn next_positions(&self) -> &[u32] {
        &self.next_pos
    }
}
