//! The batch worker behind `POST /v1/generate`: one thread owns the model and decodes every
//! running request together with continuous batching — between two decoding steps the
//! requests that arrived join the running batch (their prompts prefilled together) and those
//! that finished leave it, so a request waits for a free row, never for another request's
//! whole reply. A step or join that panics answers the requests it touched with an error and
//! the worker goes on. Nothing a client sends or receives is logged, only sizes and timings.

use crate::crypto::Sealer;
use crate::protocol::{Finish, StreamEvent, Usage};
use candle_core::Tensor;
use stainedglass_models::llm::{
    FinishReason, Finished, Llama, RowRequest, RunningBatch, SamplingParams,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Prompt tokens prefilled in one join at most (one request always joins): a burst of long
/// prompts is taken over several steps, so the running rows are not held up by all of it.
const MAX_JOIN_TOKENS: usize = 1024;

/// A request handed to the worker; its events go back through `events`.
pub(crate) struct Job {
    pub embeds: Tensor,
    pub params: SamplingParams,
    pub sealer: Option<Sealer>,
    pub events: mpsc::Sender<StreamEvent>,
}

/// What the worker keeps of a request while it runs.
struct Live {
    sealer: Option<Sealer>,
    events: mpsc::Sender<StreamEvent>,
}

/// Counters the request handlers and `/health` read.
#[derive(Clone, Default)]
pub(crate) struct WorkerStats {
    /// Requests submitted and not yet taken into the batch.
    pub waiting: Arc<AtomicUsize>,
    /// Requests in the running batch (or joining it).
    pub running: Arc<AtomicUsize>,
    /// Joins and steps that panicked (their requests got an error; the worker went on).
    pub panics: Arc<AtomicUsize>,
}

pub(crate) struct Worker {
    pub model: Arc<Llama>,
    pub stats: WorkerStats,
    /// Rows of the running batch at most.
    pub max_batch: usize,
    /// Whether newcomers reuse the keys and values of a prompt prefix they share
    /// (`stainedglass_models::llm::prefix`).
    pub prefix_cache: bool,
}

/// The final event of a row that ended on non-finite logits: its input is at fault.
fn non_finite() -> StreamEvent {
    StreamEvent::Error {
        message: "the model's output for these embeddings is not finite (NaN or Inf): they \
                  cannot be meaningful input embeddings"
            .into(),
        status: Some(422),
    }
}

fn internal(message: String) -> StreamEvent {
    StreamEvent::Error {
        message,
        status: None,
    }
}

fn finish(f: FinishReason) -> Finish {
    match f {
        FinishReason::Stop => Finish::Stop,
        FinishReason::Length | FinishReason::Cancelled | FinishReason::NonFinite => Finish::Length,
    }
}

impl Worker {
    fn empty_batch(&self) -> RunningBatch {
        let layers = self.model.config().num_layers;
        if self.prefix_cache {
            RunningBatch::with_prefix_cache(layers)
        } else {
            RunningBatch::new(layers)
        }
    }

    /// Runs until the job channel closes.
    pub fn run(&self, rx: Receiver<Job>) {
        let mut batch = self.empty_batch();
        let mut live: HashMap<u64, Live> = HashMap::new();
        let mut next_id = 0u64;
        loop {
            let Some(jobs) = self.take_jobs(&rx, batch.len()) else {
                return;
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if !jobs.is_empty() {
                    self.join(&mut batch, &mut live, &mut next_id, jobs);
                }
                if !batch.is_empty() {
                    self.step(&mut batch, &mut live);
                }
            }));
            if result.is_err() {
                self.stats.panics.fetch_add(1, Ordering::SeqCst);
                tracing::error!(rows = live.len(), "decoding panicked; its requests failed");
                let ev = internal(
                    "internal error while generating; the request was not completed".into(),
                );
                for (_, l) in live.drain() {
                    let _ = l.events.blocking_send(ev.clone());
                }
                batch = self.empty_batch();
            }
            self.stats.running.store(batch.len(), Ordering::SeqCst);
        }
    }

    /// The jobs that join before the next step: waits for one when nothing runs, then takes
    /// what is queued, up to the free rows and [`MAX_JOIN_TOKENS`]. `None` once the channel
    /// has closed and nothing runs.
    fn take_jobs(&self, rx: &Receiver<Job>, running: usize) -> Option<Vec<Job>> {
        let mut jobs = Vec::new();
        let mut tokens = 0;
        if running == 0 {
            let j = rx.recv().ok()?;
            tokens += j.embeds.dim(0).unwrap_or(0);
            jobs.push(j);
        }
        while running + jobs.len() < self.max_batch && tokens < MAX_JOIN_TOKENS {
            match rx.try_recv() {
                Ok(j) => {
                    tokens += j.embeds.dim(0).unwrap_or(0);
                    jobs.push(j);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if running + jobs.len() == 0 => return None,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        // Counted as running before they leave the queue's count: admission never sees them
        // in neither.
        let rows = running + jobs.len();
        self.stats.running.store(rows, Ordering::SeqCst);
        self.stats.waiting.fetch_sub(jobs.len(), Ordering::SeqCst);
        Some(jobs)
    }

    /// Prefills `jobs` and adds them to the batch; those that end at once are answered.
    fn join(
        &self,
        batch: &mut RunningBatch,
        live: &mut HashMap<u64, Live>,
        next_id: &mut u64,
        mut jobs: Vec<Job>,
    ) {
        let started = Instant::now();
        let ids: Vec<u64> = jobs
            .iter_mut()
            .map(|j| {
                let id = *next_id;
                *next_id += 1;
                if let Some(s) = &j.sealer {
                    let _ = j.events.blocking_send(StreamEvent::Key {
                        server_key: s.server_key().to_string(),
                    });
                }
                live.insert(
                    id,
                    Live {
                        sealer: j.sealer.take(),
                        events: j.events.clone(),
                    },
                );
                id
            })
            .collect();
        let requests: Vec<(u64, RowRequest<'_>)> = ids
            .iter()
            .zip(&jobs)
            .map(|(&id, j)| {
                let row = RowRequest {
                    embeds: &j.embeds,
                    params: &j.params,
                };
                (id, row)
            })
            .collect();
        let prompt_tokens: usize = jobs.iter().map(|j| j.embeds.dim(0).unwrap_or(0)).sum();
        match self
            .model
            .join_batch(batch, &requests, |id, t| send_token(live, id, t))
        {
            Ok(done) => {
                let reuse = batch.prefix_stats();
                tracing::debug!(
                    joined = ids.len(),
                    prompt_tokens,
                    rows = batch.len(),
                    ms = started.elapsed().as_millis() as u64,
                    prefix_hits = reuse.hits,
                    prefix_positions = reuse.positions,
                    "join"
                );
                self.stats.running.store(batch.len(), Ordering::SeqCst);
                answer(live, done);
            }
            Err(e) => {
                for id in ids {
                    if let Some(l) = live.remove(&id) {
                        let _ = l.events.blocking_send(internal(e.to_string()));
                    }
                }
            }
        }
    }

    /// One decoding step; the requests that finished are answered. On an error every running
    /// request is answered with it and the batch starts afresh.
    fn step(&self, batch: &mut RunningBatch, live: &mut HashMap<u64, Live>) {
        let (started, rows) = (Instant::now(), batch.len());
        match self
            .model
            .step_batch(batch, |id, t| send_token(live, id, t))
        {
            Ok(done) => {
                tracing::trace!(
                    rows,
                    left = done.len(),
                    us = started.elapsed().as_micros() as u64,
                    "step"
                );
                // Free rows before the clients hear they are done: a client that sends its
                // next request right after finds a row, not a full queue.
                self.stats.running.store(batch.len(), Ordering::SeqCst);
                answer(live, done)
            }
            Err(e) => {
                tracing::error!(rows = batch.len(), "a decoding step failed");
                // Every request still known is in this batch (joins answer their own).
                for (_, l) in live.drain() {
                    let _ = l.events.blocking_send(internal(e.to_string()));
                }
                *batch = self.empty_batch();
            }
        }
    }
}

/// Streams one token to its request, sealed if it asked; `false` (cancel) once its client is
/// gone.
fn send_token(live: &mut HashMap<u64, Live>, id: u64, t: u32) -> bool {
    let Some(l) = live.get_mut(&id) else {
        return false;
    };
    let ev = match l.sealer.as_mut() {
        Some(s) => StreamEvent::Sealed {
            sealed: s.seal_token(t),
        },
        None => StreamEvent::Token { token: t },
    };
    l.events.blocking_send(ev).is_ok()
}

/// Sends each finished request its final event and forgets it.
fn answer(live: &mut HashMap<u64, Live>, done: Vec<Finished>) {
    for f in done {
        let Some(mut l) = live.remove(&f.id) else {
            continue;
        };
        let g = f.generation;
        let ev = if g.finish == FinishReason::NonFinite {
            non_finite()
        } else {
            let f = finish(g.finish);
            StreamEvent::Done {
                finish_reason: f,
                usage: Usage {
                    prompt_tokens: g.prompt_tokens,
                    completion_tokens: g.tokens.len(),
                },
                sealed_end: l.sealer.as_mut().map(|s| s.seal_end(f, g.prompt_tokens)),
            }
        };
        let _ = l.events.blocking_send(ev);
    }
}
