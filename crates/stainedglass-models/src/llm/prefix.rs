//! Prefix caching for continuous batching: the keys and values of one prompt's first
//! positions, reused by later requests whose prompt embeddings start with the same rows, bit
//! for bit. Behind the proxy that is the chat template and system prompt: the SGT transforms
//! only the content tokens, so the template's embeddings are the same in every request, while
//! transformed rows carry fresh noise and never match. A request that matches is prefilled
//! from the first row that differs; the keys and values of a position depend only on the rows
//! up to it, so the reply is the one a full prefill gives (up to float rounding).
//!
//! What it holds and what it tells: the last fully prefilled prompt's first positions (at most
//! [`MAX_PREFIX`]) until a request matches it, then only the matched part — in memory, never
//! written anywhere. A request that matches is answered sooner, which a caller can time: it
//! learns whether a recent request began with the same rows, i.e. the same template and
//! system prompt (transformed content never matches). `sgt serve --prefix-cache off` turns it
//! off.

use candle_core::Tensor;

use crate::error::Result;

/// Shortest match worth reusing (positions).
pub const MIN_PREFIX: usize = 8;
/// Longest prefix kept (positions).
pub const MAX_PREFIX: usize = 1024;

/// One prompt's first positions: its embedding rows and each layer's keys and values.
pub struct PrefixCache {
    hidden: usize,
    /// `len × hidden` embedding rows, f32.
    rows: Vec<f32>,
    /// Per layer `(1, len, kv_heads, head_dim)`.
    pub(crate) kv: Vec<(Tensor, Tensor)>,
}

impl PrefixCache {
    /// The first `rows.len() / hidden` positions of a prompt and their keys and values.
    pub(crate) fn new(hidden: usize, rows: Vec<f32>, kv: Vec<(Tensor, Tensor)>) -> Self {
        Self { hidden, rows, kv }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.rows.len() / self.hidden.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// How many leading rows of `x` (`t × hidden`, f32) equal the held ones bit for bit, at
    /// most `t − 1` (a prompt's last position is always computed: its logits are needed);
    /// 0 below [`MIN_PREFIX`].
    pub fn matched(&self, x: &[f32]) -> usize {
        let h = self.hidden.max(1);
        let t = x.len() / h;
        let n = self
            .rows
            .chunks_exact(h)
            .zip(x.chunks_exact(h))
            .take(t.saturating_sub(1))
            .take_while(|(a, b)| a.iter().zip(*b).all(|(p, q)| p.to_bits() == q.to_bits()))
            .count();
        if n >= MIN_PREFIX {
            n
        } else {
            0
        }
    }

    /// Keeps only the first `p` positions.
    pub(crate) fn truncate(&mut self, p: usize) -> Result<()> {
        if p >= self.len() {
            return Ok(());
        }
        self.rows.truncate(p * self.hidden);
        for (k, v) in &mut self.kv {
            *k = k.narrow(1, 0, p)?.force_contiguous()?;
            *v = v.narrow(1, 0, p)?.force_contiguous()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::llm::continuous::RowRequest;
    use crate::llm::generate::{Prompt, SamplingParams};
    use crate::llm::{KvCache, RunningBatch};
    use crate::test_util::{rand, tiny_model};
    use candle_core::Tensor;
    use rand::SeedableRng;

    /// Prompts that share their first `shared` rows, then differ.
    fn prompts(shared: usize, tails: &[usize], seed: u64) -> Vec<Tensor> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let head = rand(&[shared, 32], &mut r, 1.0);
        tails
            .iter()
            .map(|&t| Tensor::cat(&[&head, &rand(&[t, 32], &mut r, 1.0)], 0).expect("cat"))
            .collect()
    }

    /// A suffix prefilled on top of a prefix's cached keys and values gives the logits of
    /// the whole prompt prefilled at once.
    #[test]
    fn a_suffix_on_a_cached_prefix_gives_the_full_prefills_logits() {
        let m = tiny_model();
        let x = prompts(10, &[5], 1).remove(0).unsqueeze(0).expect("batch");
        let mut full = KvCache::new(3, 1);
        let want = m.forward_cached(&x, None, &mut full).expect("full");
        let mut head = KvCache::new(3, 1);
        m.forward_cached(&x.narrow(1, 0, 10).expect("head"), None, &mut head)
            .expect("head");
        let kv = head.row_columns(0, 0, 10).expect("columns");
        let mut cache = KvCache::from_prefix(&kv, 10, 2).expect("from prefix");
        let tail = x.narrow(1, 10, 5).expect("tail");
        let two = Tensor::cat(&[&tail, &tail], 0).expect("two rows");
        let got = m.forward_cached(&two, None, &mut cache).expect("suffix");
        for row in 0..2 {
            let d = (got.narrow(0, row, 1).expect("row") - &want)
                .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
                .expect("diff");
            assert!(d < 1e-4, "row {row}: differs by {d}");
        }
        assert_eq!(cache.next_positions(), &[15, 15]);
    }

    /// Through the batch: the first prompt is stored, later ones that share its first rows
    /// reuse them (and the cache keeps only the shared part), a prompt that differs from the
    /// first row is prefilled in full; every reply is the one generated alone.
    #[test]
    fn requests_sharing_a_prefix_reuse_it_and_reply_as_alone() {
        let m = tiny_model();
        let mut ps = prompts(12, &[3, 6, 1], 2);
        ps.push(prompts(12, &[4], 3).remove(0));
        let params = SamplingParams {
            max_new_tokens: 5,
            ..Default::default()
        };
        let alone: Vec<Vec<u32>> = ps
            .iter()
            .map(|p| {
                m.generate(Prompt::Embeds(p), &params, |_| true)
                    .expect("alone")
                    .tokens
            })
            .collect();
        let req = |i: usize| {
            let row = RowRequest {
                embeds: &ps[i],
                params: &params,
            };
            (i as u64, row)
        };
        let mut batch = RunningBatch::with_prefix_cache(3);
        let mut done = m
            .join_batch(&mut batch, &[req(0)], |_, _| true)
            .expect("join");
        assert_eq!(batch.cached_prefix_len(), 15);
        done.extend(m.step_batch(&mut batch, |_, _| true).expect("step"));
        done.extend(
            m.join_batch(&mut batch, &[req(1), req(2), req(3)], |_, _| true)
                .expect("join"),
        );
        let stats = batch.prefix_stats();
        assert_eq!(
            (stats.hits, stats.positions),
            (2, 24),
            "requests 1 and 2 reuse 12 rows"
        );
        assert_eq!(batch.cached_prefix_len(), 12);
        while !batch.is_empty() {
            done.extend(m.step_batch(&mut batch, |_, _| true).expect("step"));
        }
        assert_eq!(done.len(), 4);
        for f in done {
            assert_eq!(
                f.generation.tokens, alone[f.id as usize],
                "request {}",
                f.id
            );
        }
    }
}
