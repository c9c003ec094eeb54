//! Nearest-neighbour search over the vocabulary embedding table (cosine and L2).

use crate::Result;
use candle_core::{Tensor, D};
use stainedglass_models::llm::Linear;

/// Ranked guesses, best first, for each token of a prompt.
pub type Ranked = Vec<Vec<u32>>;

/// Indices of the `k` largest scores of `row`, best first (`k` clamped to `1..=len`).
pub fn top_k_of_row(row: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    if idx.is_empty() {
        return idx;
    }
    let k = k.clamp(1, idx.len());
    idx.select_nth_unstable_by(k - 1, |&a, &b| row[b as usize].total_cmp(&row[a as usize]));
    idx.truncate(k);
    idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
    idx
}

/// Nearest rows of the embedding table by cosine similarity and by L2 distance.
pub struct EmbeddingIndex {
    table: Linear,
    norms: Vec<f32>,
}

/// Rows scored at once (bounds the `(rows × vocab)` score matrix).
const CHUNK: usize = 256;

/// The `k` best `(score, id)` pairs, best first (higher score is better).
fn push_top(top: &mut Vec<(f32, u32)>, k: usize, score: f32, id: u32) {
    if top.len() == k && top.last().is_some_and(|l| l.0 >= score) {
        return;
    }
    let at = top.partition_point(|p| p.0 >= score);
    top.insert(at, (score, id));
    top.truncate(k);
}

impl EmbeddingIndex {
    pub fn new(table: &Tensor) -> Result<Self> {
        let norms = table.sqr()?.sum(D::Minus1)?.sqrt()?.to_vec1::<f32>()?;
        Ok(Self {
            table: Linear::new(table.clone(), None),
            norms,
        })
    }

    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.norms.len()
    }

    /// The table (as a frozen linear map `x ↦ x·Eᵀ`).
    pub fn table(&self) -> &Linear {
        &self.table
    }

    /// Calls `f(row, scores)` with the inner products `x_row · E_vᵀ` of every row of `x (n, d)`.
    fn scan(&self, x: &Tensor, mut f: impl FnMut(usize, &[f32])) -> Result<()> {
        let (n, _) = x.dims2()?;
        for start in (0..n).step_by(CHUNK) {
            let len = CHUNK.min(n - start);
            let scores = self.table.forward(&x.narrow(0, start, len)?.detach())?;
            for (i, row) in scores.to_vec2::<f32>()?.iter().enumerate() {
                f(start + i, row);
            }
        }
        Ok(())
    }

    /// For `x (n, d)`: `(cosine top-1 ids, L2 top-1 ids, top-1 ids of −x by cosine)`. The
    /// last is the attacker who guesses the transform flipped the embedding's sign.
    pub fn nearest(&self, x: &Tensor) -> Result<(Vec<u32>, Vec<u32>, Vec<u32>)> {
        let n = x.dim(0)?;
        let (mut cos, mut l2) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut flipped = Vec::with_capacity(n);
        self.scan(x, |_, row| {
            let (mut bc, mut bcs) = (0usize, f32::NEG_INFINITY);
            let (mut bl, mut bls) = (0usize, f32::INFINITY);
            let (mut bf, mut bfs) = (0usize, f32::INFINITY);
            for (j, &s) in row.iter().enumerate() {
                let nj = self.norms[j];
                let c = s / nj.max(1e-12);
                if c > bcs {
                    bcs = c;
                    bc = j;
                }
                if c < bfs {
                    bfs = c;
                    bf = j;
                }
                let d = nj * nj - 2.0 * s;
                if d < bls {
                    bls = d;
                    bl = j;
                }
            }
            cos.push(bc as u32);
            l2.push(bl as u32);
            flipped.push(bf as u32);
        })?;
        Ok((cos, l2, flipped))
    }

    /// The `k` nearest ids of every row of `x (n, d)`, best first: `(by cosine, by L2)`.
    pub fn top_k(&self, x: &Tensor, k: usize) -> Result<(Ranked, Ranked)> {
        let k = k.max(1);
        let n = x.dim(0)?;
        let (mut cos, mut l2) = (Vec::with_capacity(n), Vec::with_capacity(n));
        self.scan(x, |_, row| {
            let (mut tc, mut tl) = (Vec::with_capacity(k + 1), Vec::with_capacity(k + 1));
            for (j, &s) in row.iter().enumerate() {
                let nj = self.norms[j];
                push_top(&mut tc, k, s / nj.max(1e-12), j as u32);
                push_top(&mut tl, k, 2.0 * s - nj * nj, j as u32);
            }
            cos.push(tc.into_iter().map(|p| p.1).collect());
            l2.push(tl.into_iter().map(|p| p.1).collect());
        })?;
        Ok((cos, l2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn top_k_orders_by_cosine_and_l2() {
        // Rows: e0 = (1, 0), e1 = (10, 1), e2 = (0, 1).
        let table = Tensor::new(&[[1f32, 0.], [10., 1.], [0., 1.]], &Device::Cpu).expect("t");
        let idx = EmbeddingIndex::new(&table).expect("index");
        let x = Tensor::new(&[[1.1f32, 0.05]], &Device::Cpu).expect("x");
        let (c, l) = idx.top_k(&x, 2).expect("top k");
        assert_eq!(c[0], vec![0, 1]);
        assert_eq!(l[0], vec![0, 2]);
        let (c1, l1, f1) = idx.nearest(&x).expect("nearest");
        assert_eq!((c1[0], l1[0], f1[0]), (0, 0, 2));
        assert_eq!(idx.vocab(), 3);
    }
}
