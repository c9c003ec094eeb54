//! Continuous batching: independent requests join a running batch between decoding steps
//! ([`Llama::join_batch`]: their prompts are prefilled together and their first tokens
//! sampled) and leave it as soon as they finish ([`Llama::step_batch`]), so a new request never
//! waits for the longest reply of a batch it did not start with. Every step reads the weights
//! once for all rows; every row keeps its own sampling, stop tokens, budget and positions (the
//! KV cache's rows share columns, with padding masked: `kv_cache.rs`).

use candle_core::{DType, Tensor};

use super::generate::{FinishReason, Generation, Sampler, SamplingParams};
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
        if self.rows.is_empty() {
            // An idle server holds no KV memory: the buffers are sized by the busiest moment.
            self.cache = KvCache::new(self.cache.layers(), 0);
        }
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
        // Columns fall out of use only when rows leave.
        if !done.is_empty() {
            batch.cache.compact(COMPACT_MIN_FREE)?;
        }
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

/// One request of a batched generation: prompt embeddings `(t, hidden)` and its own sampling.
#[derive(Clone, Copy)]
pub struct RowRequest<'a> {
    pub embeds: &'a Tensor,
    pub params: &'a SamplingParams,
}

impl Llama {
    /// Generates for independent requests at once: the prompts are prefilled together and
    /// decoded as one running batch (each decoding step reads the weights once for every row;
    /// this module), every row with its own sampling parameters, stop tokens and budget,
    /// leaving the batch when it finishes. `on_token(row, token)` returning `false` cancels
    /// that row. A batch of one computes exactly what [`Self::generate`] computes from
    /// embeddings.
    pub fn generate_rows(
        &self,
        rows: &[RowRequest<'_>],
        mut on_token: impl FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Generation>> {
        let requests: Vec<(u64, RowRequest<'_>)> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (i as u64, *r))
            .collect();
        let mut out: Vec<Option<Generation>> = vec![None; rows.len()];
        let mut report = |id: u64, t: u32| on_token(id as usize, t);
        let mut batch = RunningBatch::new(self.config().num_layers);
        let mut done = self.join_batch(&mut batch, &requests, &mut report)?;
        loop {
            for f in done {
                out[f.id as usize] = Some(f.generation);
            }
            if batch.is_empty() {
                break;
            }
            done = self.step_batch(&mut batch, &mut report)?;
        }
        out.into_iter()
            .map(|g| {
                g.ok_or_else(|| Error::Invalid {
                    what: "a request that never finished".into(),
                    expected: "every row of the batch to finish".into(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
