//! Continuous batching: independent requests join a running batch between decoding steps
//! ([`Llama::join_batch`]: their prompts are prefilled together and their first tokens
//! sampled) and leave it as soon as they finish ([`Llama::step_batch`]), so a new request never
//! waits for the longest reply of a batch it did not start with. Every step reads the weights
//! once for all rows; every row keeps its own sampling, stop tokens, budget and positions (the
//! KV cache's rows share columns, with padding masked: `kv_cache.rs`).

use candle_core::{DType, Tensor};

use super::generate::{FinishReason, Generation, RowRequest, Sampler, SamplingParams};
use super::kv_cache::KvCache;
use super::model::Llama;
use super::prefix::{PrefixCache, MAX_PREFIX};
use crate::error::{Error, Result};

/// Columns no row uses any more are dropped once there are at least this many (and half of
/// all): the copy is paid rarely, and attention never scans a long dead history.
const COMPACT_MIN_FREE: usize = 64;

/// A request in the running batch.
struct Row {
    id: u64,
    sampler: Sampler,
    params: SamplingParams,
    tokens: Vec<u32>,
    prompt_tokens: usize,
}

/// A request that left the batch, with its reply.
#[derive(Debug, Clone)]
pub struct Finished {
    pub id: u64,
    pub generation: Generation,
}

/// The rows being decoded together and their KV cache (row `i` of the cache is `rows[i]`),
/// and, with prefix caching, the prompt prefix newcomers may reuse (`prefix.rs`).
pub struct RunningBatch {
    cache: KvCache,
    rows: Vec<Row>,
    prefix_caching: bool,
    prefix: Option<PrefixCache>,
    prefix_stats: PrefixStats,
}

/// How often the prefix cache served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Requests prefilled from the cached prefix.
    pub hits: u64,
    /// Positions they did not compute.
    pub positions: u64,
}

impl RunningBatch {
    /// An empty batch for a model with `num_layers` layers, without prefix caching.
    pub fn new(num_layers: usize) -> Self {
        Self::group(KvCache::new(num_layers, 0), Vec::new())
    }

    /// An empty batch that reuses the keys and values of a prompt prefix newcomers share
    /// (`prefix.rs`: what that holds and what a caller can time).
    pub fn with_prefix_cache(num_layers: usize) -> Self {
        Self {
            prefix_caching: true,
            ..Self::new(num_layers)
        }
    }

    fn group(cache: KvCache, rows: Vec<Row>) -> Self {
        Self {
            cache,
            rows,
            prefix_caching: false,
            prefix: None,
            prefix_stats: PrefixStats::default(),
        }
    }

    /// Positions of the cached prompt prefix (0 when none is held).
    pub fn cached_prefix_len(&self) -> usize {
        self.prefix.as_ref().map_or(0, PrefixCache::len)
    }

    /// The prefix cache's counters so far.
    pub fn prefix_stats(&self) -> PrefixStats {
        self.prefix_stats
    }

    /// Requests in the batch.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The ids of the requests in the batch.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.rows.iter().map(|r| r.id)
    }

    /// Columns of the KV cache (the longest row's history plus padding).
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Removes the rows `finished` marks (by index), last first, keeping the cache in step.
    fn remove(&mut self, finished: Vec<(usize, FinishReason)>) -> Result<Vec<Finished>> {
        let mut finished = finished;
        finished.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
        let mut out = Vec::with_capacity(finished.len());
        for (i, reason) in finished {
            self.cache.swap_remove_row(i)?;
            let row = self.rows.swap_remove(i);
            out.push(Finished {
                id: row.id,
                generation: Generation {
                    tokens: row.tokens,
                    finish: reason,
                    prompt_tokens: row.prompt_tokens,
                },
            });
        }
        out.reverse();
        Ok(out)
    }
}

/// Samples `row`'s next token from its `logits` (reporting it to `on_token`); returns why the
/// row finished, if it did. `next_pos` is the position its next token would take.
fn advance(
    row: &mut Row,
    logits: &[f32],
    (next_pos, max_positions): (usize, usize),
    on_token: &mut impl FnMut(u64, u32) -> bool,
) -> Option<FinishReason> {
    if row.tokens.len() >= row.params.max_new_tokens {
        return Some(FinishReason::Length);
    }
    if logits.iter().any(|x| x.is_nan() || *x == f32::INFINITY) {
        return Some(FinishReason::NonFinite);
    }
    let tok = row.sampler.sample(logits, &row.tokens);
    row.tokens.push(tok);
    if !on_token(row.id, tok) {
        Some(FinishReason::Cancelled)
    } else if row.params.stop_tokens.contains(&tok) {
        Some(FinishReason::Stop)
    } else if row.tokens.len() >= row.params.max_new_tokens || next_pos + 1 > max_positions {
        Some(FinishReason::Length)
    } else {
        None
    }
}

impl Llama {
    /// Prefills `requests` (id, prompt embeddings `(t, hidden)` and sampling) together,
    /// samples each one's first token (reported to `on_token(id, token)`, which returns `false`
    /// to cancel) and adds those that go on to `batch`; returns those that finished at once.
    /// With prefix caching, the requests that begin with the cached prefix are prefilled from
    /// where they differ, the others in full (the first of them becomes the cached prompt
    /// when none matched). On an error nothing joins and `batch` is unchanged.
    pub fn join_batch(
        &self,
        batch: &mut RunningBatch,
        requests: &[(u64, RowRequest<'_>)],
        mut on_token: impl FnMut(u64, u32) -> bool,
    ) -> Result<Vec<Finished>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let h = self.config().hidden_size;
        let mut lens = Vec::with_capacity(requests.len());
        for (_, r) in requests {
            let (t, d) = r.embeds.dims2()?;
            if t == 0 || d != h {
                return Err(Error::Shape {
                    what: "prompt embeddings".into(),
                    expected: format!("(t ≥ 1, {h})"),
                    got: r.embeds.dims().to_vec(),
                });
            }
            lens.push(t);
        }
        let mut rows = requests
            .iter()
            .zip(&lens)
            .map(|((id, r), &t)| {
                Ok(Some(Row {
                    id: *id,
                    sampler: Sampler::new(r.params.clone())?,
                    params: r.params.clone(),
                    tokens: Vec::new(),
                    prompt_tokens: t,
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        let hosts: Vec<Vec<f32>> = if batch.prefix_caching {
            requests
                .iter()
                .map(|(_, r)| Ok(r.embeds.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let matched: Vec<usize> = match &batch.prefix {
            Some(pc) => hosts.iter().map(|x| pc.matched(x)).collect(),
            None => vec![0; requests.len()],
        };
        let p = matched
            .iter()
            .copied()
            .filter(|&m| m > 0)
            .min()
            .unwrap_or(0);
        let (reuse, full): (Vec<usize>, Vec<usize>) =
            (0..requests.len()).partition(|&i| matched[i] > 0);
        let prompts =
            |idx: &[usize]| -> Vec<&Tensor> { idx.iter().map(|&i| requests[i].1.embeds).collect() };
        let mut groups = Vec::new();
        if let (Some(pc), false) = (&batch.prefix, reuse.is_empty()) {
            let ls: Vec<usize> = reuse.iter().map(|&i| lens[i]).collect();
            groups.push((
                reuse.clone(),
                self.prefill(&prompts(&reuse), &ls, Some((pc, p)))?,
            ));
        }
        let mut stored = None;
        if !full.is_empty() {
            let ls: Vec<usize> = full.iter().map(|&i| lens[i]).collect();
            let (cache, logits) = self.prefill(&prompts(&full), &ls, None)?;
            if batch.prefix_caching && reuse.is_empty() {
                let (first, t) = (ls[0], ls.iter().copied().max().unwrap_or(0));
                let keep = first.min(MAX_PREFIX);
                let kv = cache.row_columns(0, t - first, keep)?;
                stored = Some(PrefixCache::new(h, hosts[full[0]][..keep * h].to_vec(), kv));
            }
            groups.push((full, (cache, logits)));
        }
        let mut done = Vec::new();
        let mut joined = Vec::new();
        for (idx, (cache, logits)) in groups {
            let mut group = RunningBatch::group(cache, Vec::with_capacity(idx.len()));
            let mut finished = Vec::new();
            for (gi, &i) in idx.iter().enumerate() {
                let Some(mut row) = rows[i].take() else {
                    continue;
                };
                let limits = (group.cache.next_pos[gi] as usize, self.max_positions());
                if let Some(reason) = advance(&mut row, &logits[gi], limits, &mut on_token) {
                    finished.push((gi, reason));
                }
                group.rows.push(row);
            }
            done.extend(group.remove(finished)?);
            joined.push(group);
        }
        for g in joined {
            batch.cache.join(g.cache)?;
            batch.rows.extend(g.rows);
        }
        if p > 0 {
            if let Some(pc) = &mut batch.prefix {
                pc.truncate(p)?;
            }
            batch.prefix_stats.hits += reuse.len() as u64;
            batch.prefix_stats.positions += (p * reuse.len()) as u64;
        }
        if stored.is_some() {
            batch.prefix = stored;
        }
        Ok(done)
    }

    /// Prefills `prompts` together (left-padded), from position `p` on top of the cached
    /// prefix when one is given; returns the cache and each row's last logits.
    fn prefill(
        &self,
        prompts: &[&Tensor],
        lens: &[usize],
        prefix: Option<(&PrefixCache, usize)>,
    ) -> Result<(KvCache, Vec<Vec<f32>>)> {
        let n = prompts.len();
        let (suffixes, lens, mut cache) = match prefix {
            Some((pc, p)) => (
                prompts
                    .iter()
                    .zip(lens)
                    .map(|(e, &t)| e.narrow(0, p, t - p))
                    .collect::<candle_core::Result<Vec<_>>>()?,
                lens.iter().map(|&t| t - p).collect::<Vec<_>>(),
                KvCache::from_prefix(&pc.kv, p, n)?,
            ),
            None => (
                prompts.iter().map(|&e| e.clone()).collect(),
                lens.to_vec(),
                KvCache::new(self.config().num_layers, n),
            ),
        };
        let refs: Vec<&Tensor> = suffixes.iter().collect();
        let (x, mask) = self.left_pad(&refs, &lens)?;
        let logits = self.forward_cached(&x, mask.as_ref(), &mut cache)?;
        Ok((cache, logits.to_dtype(DType::F32)?.to_vec2::<f32>()?))
    }

    /// One decoding step for every row of `batch`: each row's last token goes in, its next is
    /// sampled (reported to `on_token`); the rows that finished leave the batch and are
    /// returned. On an error the batch is left as it was before the step's forward pass only
    /// if that pass failed; callers drop the batch on any error.
    pub fn step_batch(
        &self,
        batch: &mut RunningBatch,
        mut on_token: impl FnMut(u64, u32) -> bool,
    ) -> Result<Vec<Finished>> {
        let b = batch.rows.len();
        if b == 0 {
            return Ok(Vec::new());
        }
        let mut last = Vec::with_capacity(b);
        for r in &batch.rows {
            last.push(*r.tokens.last().ok_or_else(|| Error::Invalid {
                what: "a row in the running batch without a token".into(),
                expected: "rows that joined through join_batch".into(),
            })?);
        }
        let e = self.embed(&Tensor::from_vec(last, (b, 1), self.device())?)?;
        let logits = self.forward_cached(&e, None, &mut batch.cache)?;
        let logits = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut finished = Vec::new();
        for (i, row) in batch.rows.iter_mut().enumerate() {
            let limits = (batch.cache.next_pos[i] as usize, self.max_positions());
            if let Some(reason) = advance(row, &logits[i], limits, &mut on_token) {
                finished.push((i, reason));
            }
        }
        let done = batch.remove(finished)?;
        batch.cache.compact(COMPACT_MIN_FREE)?;
        Ok(done)
    }

    /// Prompts `(t_i, hidden)` left-padded with zeros into `(b, t, hidden)`, with the mask of
    /// real positions when any row is padded.
    pub(crate) fn left_pad(
        &self,
        prompts: &[&Tensor],
        lens: &[usize],
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (h, dev) = (self.config().hidden_size, self.device());
        let t = lens.iter().copied().max().unwrap_or(0);
        let mut padded = Vec::with_capacity(prompts.len());
        let mut mask = Vec::with_capacity(prompts.len() * t);
        for (e, &len) in prompts.iter().zip(lens) {
            let e = e.to_dtype(DType::F32)?;
            padded.push(if len < t {
                Tensor::cat(&[Tensor::zeros((t - len, h), DType::F32, dev)?, e], 0)?
            } else {
                e
            });
            mask.extend(std::iter::repeat_n(0u8, t - len));
            mask.extend(std::iter::repeat_n(1u8, len));
        }
        let x = Tensor::stack(&padded, 0)?;
        let full = lens.iter().all(|&l| l == t);
        let m = (!full)
            .then(|| Tensor::from_vec(mask, (prompts.len(), t), dev))
            .transpose()?;
        Ok((x, m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::generate::Prompt;
    use crate::test_util::{rand, tiny_model};
    use rand::SeedableRng;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .expect("diff")
    }

    /// Rows that join a running cache at different times, leave it (the last row moving into
    /// the hole) and go through a compaction each get the logits they get alone.
    #[test]
    fn joined_removed_and_compacted_rows_keep_their_own_logits() {
        let m = tiny_model();
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let lens = [5usize, 2, 9];
        let prompts: Vec<Tensor> = lens
            .iter()
            .map(|&t| rand(&[1, t, 32], &mut r, 1.0))
            .collect();
        let steps: Vec<Vec<Tensor>> = (0..3)
            .map(|_| (0..4).map(|_| rand(&[1, 1, 32], &mut r, 1.0)).collect())
            .collect();
        // Alone: the logits after the prompt and after each decoding input.
        let alone: Vec<Vec<Tensor>> = (0..3)
            .map(|i| {
                let mut c = KvCache::new(3, 1);
                let mut out = vec![m
                    .forward_cached(&prompts[i], None, &mut c)
                    .expect("prefill")];
                for s in &steps[i] {
                    out.push(m.forward_cached(s, None, &mut c).expect("step"));
                }
                out
            })
            .collect();
        let prefill = |i: usize| {
            let mut c = KvCache::new(3, 1);
            let l = m
                .forward_cached(&prompts[i], None, &mut c)
                .expect("prefill");
            (c, l)
        };
        // rows: which request each cache row holds, and how many steps it has taken.
        let mut rows: Vec<(usize, usize)> = vec![(0, 0)];
        let (mut cache, l) = prefill(0);
        assert!(max_diff(&l, &alone[0][0]) < 1e-5);
        let step = |cache: &mut KvCache, rows: &mut Vec<(usize, usize)>| {
            let xs: Vec<Tensor> = rows.iter().map(|&(i, n)| steps[i][n].clone()).collect();
            let logits = m
                .forward_cached(&Tensor::cat(&xs, 0).expect("cat"), None, cache)
                .expect("batched step");
            for (bi, (i, n)) in rows.iter_mut().enumerate() {
                *n += 1;
                let got = logits.narrow(0, bi, 1).expect("row");
                let d = max_diff(&got, &alone[*i][*n]);
                assert!(d < 1e-4, "request {i} step {n}: differs by {d}");
            }
        };
        step(&mut cache, &mut rows);
        let (c1, l1) = prefill(1);
        assert!(max_diff(&l1, &alone[1][0]) < 1e-5);
        cache.join(c1).expect("join a shorter prompt");
        rows.push((1, 0));
        step(&mut cache, &mut rows);
        let (c2, _) = prefill(2);
        cache.join(c2).expect("join a longer prompt");
        rows.push((2, 0));
        step(&mut cache, &mut rows);
        cache.swap_remove_row(0).expect("remove");
        rows.swap_remove(0);
        assert_eq!(rows[0].0, 2, "the last row moved into the hole");
        assert!(
            !cache.compact(1).expect("compact"),
            "request 2 uses every column"
        );
        step(&mut cache, &mut rows);
        cache.swap_remove_row(0).expect("remove");
        rows.swap_remove(0);
        // Request 1 (2 prompt columns, then its decoding columns) is left with holes.
        assert!(
            cache.compact(1).expect("compact"),
            "requests 0 and 2 left unused columns"
        );
        assert_eq!(cache.len(), 2 + 3);
        assert!(cache.key_valid.iter().all(|kv| kv.len() == cache.len()));
        step(&mut cache, &mut rows);
        assert_eq!(cache.rows(), 1);
    }

    /// Through the public API: requests joining at different steps with different budgets get
    /// the greedy tokens they get alone, and each leaves the batch when done.
    #[test]
    fn join_and_step_give_each_request_its_own_reply() {
        let m = tiny_model();
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let lens = [4usize, 1, 6, 3];
        let budgets = [6usize, 2, 5, 4];
        let prompts: Vec<Tensor> = lens.iter().map(|&t| rand(&[t, 32], &mut r, 1.0)).collect();
        let params: Vec<SamplingParams> = budgets
            .iter()
            .map(|&n| SamplingParams {
                max_new_tokens: n,
                ..Default::default()
            })
            .collect();
        let alone: Vec<Vec<u32>> = (0..4)
            .map(|i| {
                m.generate(Prompt::Embeds(&prompts[i]), &params[i], |_| true)
                    .expect("alone")
                    .tokens
            })
            .collect();
        let req = |i: usize| {
            (
                i as u64,
                RowRequest {
                    embeds: &prompts[i],
                    params: &params[i],
                },
            )
        };
        let mut seen: Vec<Vec<u32>> = vec![Vec::new(); 4];
        let mut record = |id: u64, t: u32| {
            seen[id as usize].push(t);
            true
        };
        let mut batch = RunningBatch::new(3);
        let mut done = m
            .join_batch(&mut batch, &[req(0), req(1)], &mut record)
            .expect("join");
        for s in 0..12 {
            if s == 1 {
                done.extend(
                    m.join_batch(&mut batch, &[req(2)], &mut record)
                        .expect("join"),
                );
            }
            if s == 2 {
                done.extend(
                    m.join_batch(&mut batch, &[req(3)], &mut record)
                        .expect("join"),
                );
            }
            done.extend(m.step_batch(&mut batch, &mut record).expect("step"));
        }
        assert!(batch.is_empty(), "every request finished");
        assert_eq!(done.len(), 4);
        for f in &done {
            let i = f.id as usize;
            assert_eq!(f.generation.tokens, alone[i], "request {i}");
            assert_eq!(seen[i], alone[i], "request {i}'s streamed tokens");
            assert_eq!(f.generation.finish, FinishReason::Length);
            assert_eq!(f.generation.prompt_tokens, lens[i]);
        }
    }

    /// A request cancelled by its callback leaves at once; the others go on.
    #[test]
    fn a_cancelled_request_leaves_alone() {
        let m = tiny_model();
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let prompts: Vec<Tensor> = (0..2).map(|_| rand(&[3, 32], &mut r, 1.0)).collect();
        let p = SamplingParams {
            max_new_tokens: 5,
            ..Default::default()
        };
        let reqs: Vec<(u64, RowRequest<'_>)> = (0..2)
            .map(|i| {
                (
                    i as u64,
                    RowRequest {
                        embeds: &prompts[i],
                        params: &p,
                    },
                )
            })
            .collect();
        let mut batch = RunningBatch::new(3);
        let mut count = 0;
        let cancel_first = |id: u64, _t: u32| {
            count += 1;
            !(id == 0 && count > 2)
        };
        let mut done = m.join_batch(&mut batch, &reqs, cancel_first).expect("join");
        let mut cancel = |id: u64, _t: u32| id != 0;
        done.extend(m.step_batch(&mut batch, &mut cancel).expect("step"));
        assert_eq!(batch.len(), 1);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].generation.finish, FinishReason::Cancelled);
        while !batch.is_empty() {
            done.extend(m.step_batch(&mut batch, |_, _| true).expect("step"));
        }
        assert_eq!(done[1].generation.tokens.len(), 5);
    }
}
