//! The text-SGT trainer: TransformerCloak on a frozen Llama-family model, trained with the
//! distillation loss (`docs/spec.md` §5.2) on chat conversations. AdamW (weight decay 0), warm-up then
//! linear decay, gradient accumulation and clipping, quick evaluations on held-out
//! conversations, atomic checkpoints and bit-exact resume, a progress bar and JSON-lines
//! metrics (`metrics.jsonl`: `"kind": "train"` per step, `"kind": "eval"` per evaluation).
//!
//! A run is four steps: [`Run::start`] (fresh or resumed from the latest checkpoint),
//! [`Run::step`] (micro-batches, clipping, the optimizer), the held-out evaluation and
//! [`Run::checkpoint`].

use super::adversary::{transformed_rows, Adversary};
use super::batch::{collate, encode_all, eval_seed};
use super::config::TextTrainConfig;
use super::privacy_check::{PrivacyCheck, PrivacyReading};
use super::served::{AdapterRun, SERVED_DIR};
use super::sgt_io::save_sgt;
use crate::batches::epoch_batches;
use crate::checkpoint::{clear, Checkpoints};
use crate::metrics::{progress_bar, MetricsLog};
use crate::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use stainedglass_core::loss::{distillation_loss_factory, DistillationInputs, DistillationLoss};
use stainedglass_core::optim::{AdamW, AdamWConfig};
use stainedglass_core::{NoiseLayer, NoiseRng};
use stainedglass_metrics::{quick_eval_served, EmbeddingIndex, QuickEval};
use stainedglass_models::llm::{Llama, Stop};
use stainedglass_models::text_sgt::{mean_sigma, TransformerCloak, TransformerCloakConfig};
use stainedglass_text::{EncodedPrompt, TextTokenizer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Where the trained layer is written (config.json + model.safetensors).
pub const SGT_DIR: &str = "sgt";

/// The checkpoint's JSON state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    step: u64,
    config: TextTrainConfig,
}

#[derive(Serialize)]
struct TrainRecord<'a> {
    kind: &'static str,
    step: u64,
    lr: f64,
    mean_sigma: f64,
    grad_norm: f64,
    tokens_per_s: f64,
    #[serde(flatten)]
    losses: &'a HashMap<&'static str, f64>,
}

/// A `"kind": "eval"` line of `metrics.jsonl`: the held-out quick evaluation after `step` steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub kind: String,
    pub step: u64,
    #[serde(flatten)]
    pub eval: QuickEval,
    /// Attackers trained afresh on this step's layer, when the run had a privacy check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<PrivacyReading>,
}

impl EvalRecord {
    /// The progress line: the strongest attack trained on this step's layer first when there
    /// is one; nearest neighbour is labelled as the weakest.
    pub fn line(&self) -> String {
        let e = &self.eval;
        let strongest = match &self.privacy {
            Some(p) => format!(
                "strongest attack trained on this layer: {} {:.1}% | ",
                p.strongest.replace('_', " "),
                100.0 * p.strongest_top1
            ),
            None => String::new(),
        };
        format!(
            "step {}: {strongest}nearest-neighbour recovery (weakest attack) cos {:.1}% l2 {:.1}% | next-token agreement {:.1}% KL {:.3}",
            self.step,
            100.0 * e.nn_top1_cosine,
            100.0 * e.nn_top1_l2,
            100.0 * e.next_token_agreement,
            e.next_token_kl
        )
    }
}

/// Options of one invocation.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Ignore existing checkpoints and start over.
    pub fresh: bool,
    /// Show a progress bar.
    pub progress: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub resumed_from: Option<u64>,
    pub final_eval: QuickEval,
    /// The privacy check's reading of the last evaluation, when the run had a check.
    pub final_privacy: Option<PrivacyReading>,
    pub clean_eval: QuickEval,
    pub sgt_dir: PathBuf,
    /// The served model (base with the trained adapter), when the run had an `[adapter]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_model_dir: Option<PathBuf>,
}

/// AdamW (weight decay 0) for the weights and, at its own learning rate, the head biases.
fn optimizers(cloak: &TransformerCloak, cfg: &TextTrainConfig) -> Result<(AdamW, AdamW)> {
    let (w, b) = cloak.parameter_groups();
    Ok((
        AdamW::new(w, AdamWConfig::noise(cfg.train.learning_rate))?,
        AdamW::new(b, AdamWConfig::noise(cfg.train.bias_learning_rate))?,
    ))
}

/// What one optimizer step measured.
struct StepStats {
    lr: f64,
    /// Loss components averaged over the micro-batches.
    losses: HashMap<&'static str, f64>,
    mean_sigma: f64,
    grad_norm: f64,
    tokens: usize,
}

/// One micro-batch's contribution: its gradients (scaled by the number of micro-batches) and
/// measurements.
struct MicroStep {
    grads: GradStore,
    losses: Vec<(&'static str, f64)>,
    mean_sigma: f64,
    tokens: usize,
}

/// A training run in progress: the data, the layer and its optimizers.
struct Run<'a> {
    cfg: &'a TextTrainConfig,
    model: &'a Llama,
    rows: Vec<EncodedPrompt>,
    pad: u32,
    cloak: TransformerCloak,
    opt: AdamW,
    opt_bias: AdamW,
    /// The first step this invocation runs (0, or the resumed checkpoint's).
    start: u64,
    loss: DistillationLoss,
    stop: Stop,
    ckpts: Checkpoints,
    /// The in-training inverter (`[adversary]`), when enabled.
    adversary: Option<Adversary>,
    /// The served model's trained first layers (`[adapter]`), when enabled.
    adapter: Option<AdapterRun>,
}

/// The checkpoint groups of a run: the layer, its optimizers, and the adversary when enabled.
fn groups(cfg: &TextTrainConfig) -> Vec<&'static str> {
    let mut g = vec!["sgt", "optimizer", "optimizer_bias"];
    if cfg.adversary.enabled() {
        g.extend(["adversary", "optimizer_adversary"]);
    }
    g.extend(super::served::groups(&cfg.adapter));
    g
}

impl<'a> Run<'a> {
    /// A fresh layer from the base model, or the latest checkpoint under `ckdir` (which must
    /// have been written with the same config).
    fn start(
        cfg: &'a TextTrainConfig,
        model: &'a Llama,
        rows: Vec<EncodedPrompt>,
        pad: u32,
        ckdir: &Path,
    ) -> Result<Self> {
        let dev = model.device();
        let sc = TransformerCloakConfig::with_settings(model.config().clone(), cfg.sgt.clone());
        let ckpts = Checkpoints::new(ckdir);
        let resumed = ckpts.load_latest::<State>(&groups(cfg), dev)?;
        let mut adversary = match cfg.adversary.enabled() {
            true => Some(Adversary::new(
                &cfg.adversary,
                model.embedding_table(),
                &rows,
                cfg.train.seed ^ 0xAD7E,
            )?),
            false => None,
        };
        let adapter = AdapterRun::start(
            &cfg.adapter,
            model,
            resumed.as_ref().and_then(|ck| {
                Some((
                    ck.tensors.get("adapter")?,
                    ck.tensors.get("optimizer_adapter")?,
                ))
            }),
        )?;
        let (cloak, (opt, opt_bias), start) = match resumed {
            Some(ck) => {
                if ck.state.config != *cfg {
                    return Err(Error::ckpt(
                        &ck.dir,
                        "the checkpoint was written with a different config; pass --fresh to start over",
                    ));
                }
                let cloak = TransformerCloak::from_named(sc, &ck.tensors["sgt"], dev)?;
                let (mut opt, mut opt_bias) = optimizers(&cloak, cfg)?;
                opt.load_state(&ck.tensors["optimizer"])?;
                opt_bias.load_state(&ck.tensors["optimizer_bias"])?;
                if let Some(adv) = adversary.as_mut() {
                    adv.load(&ck.tensors["adversary"], &ck.tensors["optimizer_adversary"])?;
                }
                (cloak, (opt, opt_bias), ck.state.step)
            }
            None => {
                let cloak = TransformerCloak::from_base(sc, model)?;
                let opts = optimizers(&cloak, cfg)?;
                (cloak, opts, 0)
            }
        };
        let stop = match cfg.loss.distillation_layer_index {
            Some(k) => Stop::AtLayer(k),
            None => Stop::Logits,
        };
        Ok(Self {
            cfg,
            model,
            rows,
            pad,
            cloak,
            opt,
            opt_bias,
            start,
            loss: distillation_loss_factory(cfg.loss.clone())?,
            stop,
            ckpts,
            adversary,
            adapter,
        })
    }

    /// The forward and backward pass of micro-batch `global` (counted over the whole run, so
    /// that batch order and noise do not depend on where a run resumed).
    fn micro_step(&mut self, step: u64, global: u64) -> Result<MicroStep> {
        let (cfg, model) = (self.cfg, self.model);
        let per_epoch = self.rows.len().div_ceil(cfg.train.batch_size).max(1) as u64;
        let (epoch, k) = (global / per_epoch, (global % per_epoch) as usize);
        let batches = epoch_batches(
            self.rows.len(),
            cfg.train.batch_size,
            cfg.train.seed,
            epoch,
            false,
        );
        let rows: Vec<&EncodedPrompt> = batches[k].iter().map(|&i| &self.rows[i]).collect();
        let b = collate(&rows, self.pad, model.device())?;
        let x = model.embed(&b.ids)?;
        let clean = model.forward_embeds(&x, Some(&b.am_t), self.stop)?;
        let mut rng = NoiseRng::seeded(cfg.train.seed.wrapping_mul(1_000_003).wrapping_add(global));
        let noise = self
            .cloak
            .forward_masked(&x, Some(&b.am), Some(&b.nm), &mut rng)?;
        let tr = match &self.adapter {
            Some(a) => a
                .adapter
                .forward(model, &noise.transformed, &b.am, self.stop)?,
            None => model.forward_embeds(&noise.transformed, Some(&b.am_t), self.stop)?,
        };
        let rec = self.loss.compute(&DistillationInputs {
            clean: &clean,
            transformed: &tr,
            loss_mask: &b.lm,
            noise_mask: &b.nm_f,
            input_embeds: &x,
            transformed_embeds: &noise.transformed,
            std: &noise.std,
            keep_mask: noise.mask.as_ref(),
        })?;
        if !rec.components[0].1.is_finite() {
            return Err(Error::Diverged {
                step,
                what: "the loss".into(),
            });
        }
        let (mut loss, mut components) = (rec.loss, rec.components);
        let seen = match self.adversary.as_mut() {
            Some(adv) => transformed_rows(&noise.transformed, &b.id_list, &b.nm)?.map(|s| (adv, s)),
            None => None,
        };
        if let Some((adv, (xs, tokens))) = seen {
            let mut rng = NoiseRng::seeded(cfg.train.seed ^ 0xAD7E ^ global.wrapping_mul(7919));
            let s = adv.update(&xs, &tokens, &mut rng)?;
            let term = adv.sgt_term(&xs, &tokens, &mut rng)?;
            components.push(("adversary_term", term.to_scalar::<f32>()? as f64));
            components.push(("adversary_loss", s.loss));
            components.push(("adversary_accuracy", s.accuracy));
            loss = (loss + term)?;
        }
        let micro = cfg.train.grad_accumulation as f64;
        Ok(MicroStep {
            grads: (loss / micro)?.backward()?,
            losses: components,
            mean_sigma: mean_sigma(&noise.std, &b.nm)?,
            tokens: b.tokens,
        })
    }

    /// One optimizer step: the micro-batches' gradients summed, clipped (weights and biases
    /// separately, their scales differ), applied.
    fn step(&mut self, step: u64) -> Result<StepStats> {
        let cfg = self.cfg;
        let lr = cfg.learning_rate(step);
        self.opt.set_learning_rate(lr);
        self.opt_bias
            .set_learning_rate(cfg.schedule(step) * cfg.train.bias_learning_rate);
        let micro = cfg.train.grad_accumulation as u64;
        let mut params = self.cloak.parameters();
        if let Some(a) = &self.adapter {
            params.extend(a.adapter.parameters());
        }
        let mut acc: Option<Vec<Tensor>> = None;
        let mut grads = None;
        let mut stats = StepStats {
            lr,
            losses: HashMap::new(),
            mean_sigma: 0.0,
            grad_norm: 0.0,
            tokens: 0,
        };
        for m in 0..micro {
            let ms = self.micro_step(step, step * micro + m)?;
            for (name, v) in &ms.losses {
                *stats.losses.entry(name).or_insert(0.0) += v / micro as f64;
            }
            stats.mean_sigma += ms.mean_sigma / micro as f64;
            stats.tokens += ms.tokens;
            let gs: Vec<Tensor> = params
                .iter()
                .map(|p| match ms.grads.get(p.as_tensor()) {
                    Some(g) => Ok(g.detach()),
                    None => p.as_tensor().zeros_like(),
                })
                .collect::<candle_core::Result<_>>()?;
            acc = Some(match acc {
                None => gs,
                Some(a) => a
                    .iter()
                    .zip(&gs)
                    .map(|(x, y)| x + y)
                    .collect::<candle_core::Result<Vec<_>>>()?,
            });
            grads = Some(ms.grads);
        }
        let (Some(acc), Some(mut grads)) = (acc, grads) else {
            return Ok(stats);
        };
        for (p, g) in params.iter().zip(acc) {
            grads.insert(p.as_tensor(), g);
        }
        let clip = cfg.train.clip_grad_norm.unwrap_or(f64::INFINITY);
        stats.grad_norm = self.opt.clip_grad_norm(&mut grads, clip)?;
        let bias_norm = self.opt_bias.clip_grad_norm(&mut grads, clip)?;
        if !(stats.grad_norm.is_finite() && bias_norm.is_finite()) {
            return Err(Error::Diverged {
                step,
                what: "the gradient norm".into(),
            });
        }
        if let Some(a) = self.adapter.as_mut() {
            let lr = cfg.schedule(step) * cfg.adapter.learning_rate;
            a.step(&mut grads, lr, clip, step)?;
        }
        self.opt.step(&grads)?;
        self.opt_bias.step(&grads)?;
        Ok(stats)
    }

    /// Saves the layer, both optimizers and the state after `done` steps.
    fn checkpoint(&self, done: u64) -> Result<()> {
        let state = State {
            step: done,
            config: self.cfg.clone(),
        };
        let mut groups = vec![
            ("sgt", self.cloak.named_tensors()),
            ("optimizer", self.opt.state()?),
            ("optimizer_bias", self.opt_bias.state()?),
        ];
        if let Some(adv) = &self.adversary {
            let (weights, opt) = adv.state()?;
            groups.extend([("adversary", weights), ("optimizer_adversary", opt)]);
        }
        if let Some(a) = &self.adapter {
            groups.extend(a.groups()?);
        }
        self.ckpts.save(done, &groups, &state)?;
        Ok(())
    }
}

/// The quick evaluation on the held-out rows, with the same noise at every step.
struct HeldOut<'a> {
    model: &'a Llama,
    index: EmbeddingIndex,
    rows: Vec<EncodedPrompt>,
    seed: u64,
}

impl HeldOut<'_> {
    /// The evaluation record of step `done`: the quick evaluation, and the privacy check's
    /// reading when there is one.
    fn record(
        &self,
        (cloak, served): (&TransformerCloak, Option<&Llama>),
        done: u64,
        check: Option<&mut (dyn PrivacyCheck + '_)>,
    ) -> Result<EvalRecord> {
        let privacy = match check {
            Some(c) => Some(
                c.check(cloak)
                    .map_err(|source| Error::PrivacyCheck { step: done, source })?,
            ),
            None => None,
        };
        Ok(EvalRecord {
            kind: "eval".into(),
            step: done,
            eval: self.eval(cloak, served, true)?,
            privacy,
        })
    }

    /// With a served model (a run with an adapter) the transformed inputs go through it.
    fn eval(
        &self,
        cloak: &TransformerCloak,
        served: Option<&Llama>,
        transform: bool,
    ) -> Result<QuickEval> {
        let mut rng = NoiseRng::seeded(self.seed);
        Ok(quick_eval_served(
            self.model,
            served.unwrap_or(self.model),
            cloak,
            &self.index,
            &self.rows,
            &mut rng,
            transform,
        )?)
    }
}

/// The training and held-out rows of the config's conversations (the last `held_out` are held
/// out; evaluations use the first `eval_conversations` of them).
fn split_rows(
    cfg: &TextTrainConfig,
    tok: &Arc<TextTokenizer>,
) -> Result<(Vec<EncodedPrompt>, Vec<EncodedPrompt>)> {
    let convs = super::data::load_conversations(&cfg.data.conversations)?;
    if convs.len() <= cfg.data.held_out {
        return Err(Error::Config(format!(
            "{} conversations cannot leave {} held out",
            convs.len(),
            cfg.data.held_out
        )));
    }
    let (train_c, held_c) = convs.split_at(convs.len() - cfg.data.held_out);
    let train_rows = encode_all(tok, train_c, cfg, cfg.data.ignore_prompt_loss)?;
    let held_n = match cfg.train.eval_conversations {
        0 => held_c.len(),
        n => n.min(held_c.len()),
    };
    let held_rows = encode_all(tok, &held_c[..held_n], cfg, true)?;
    Ok((train_rows, held_rows))
}

/// Trains (or resumes) a text SGT into `output`. With a `check`, every periodic evaluation
/// also trains attackers afresh on the layer as it is then and leads with the strongest.
pub fn train(
    cfg: &TextTrainConfig,
    model: &Llama,
    tok: Arc<TextTokenizer>,
    output: &Path,
    opts: &RunOptions,
    mut check: Option<&mut dyn PrivacyCheck>,
) -> Result<TrainSummary> {
    cfg.validate()?;
    let ckdir = output.join("checkpoints");
    if opts.fresh {
        clear(&ckdir)?;
        let _ = std::fs::remove_file(output.join("metrics.jsonl"));
    }
    let (train_rows, held_rows) = split_rows(cfg, &tok)?;
    let pad = tok.pad_id().unwrap_or(0);
    let mut run = Run::start(cfg, model, train_rows, pad, &ckdir)?;
    let held = HeldOut {
        model,
        index: EmbeddingIndex::new(model.embedding_table())?,
        rows: held_rows,
        seed: eval_seed(cfg),
    };
    let mut metrics = MetricsLog::open(&output.join("metrics.jsonl"))?;
    let clean_eval = held.eval(&run.cloak, None, false)?;
    let pb = progress_bar(cfg.train.steps, run.start, "text sgt");
    if !opts.progress {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let (mut last_eval, mut last_privacy) = (None, None);
    for step in run.start..cfg.train.steps {
        let t0 = Instant::now();
        let s = run.step(step)?;
        let done = step + 1;
        metrics.write(&TrainRecord {
            kind: "train",
            step: done,
            lr: s.lr,
            mean_sigma: s.mean_sigma,
            grad_norm: s.grad_norm,
            tokens_per_s: s.tokens as f64 / t0.elapsed().as_secs_f64(),
            losses: &s.losses,
        })?;
        let loss = |k: &str| s.losses.get(k).copied().unwrap_or(f64::NAN);
        pb.set_position(done);
        let mut msg = format!(
            "loss {:.3} dist {:.4} sim {:.3} σ {:.4}",
            loss("loss"),
            loss("distillation_loss"),
            loss("input_embedding_similarity"),
            s.mean_sigma
        );
        if cfg.adversary.enabled() {
            // The online inverter's accuracy over its sampled candidates: a training signal,
            // not a privacy measurement (the fresh attacks after training are).
            msg += &format!(
                " | in-training inverter {:.0}%",
                100.0 * loss("adversary_accuracy")
            );
        }
        pb.set_message(msg);
        let last = done == cfg.train.steps;
        if done % cfg.train.eval_every == 0 || last {
            let served = AdapterRun::served_of(&run.adapter, model)?;
            let rec = held.record((&run.cloak, served.as_ref()), done, check.as_deref_mut())?;
            metrics.write(&rec)?;
            pb.println(rec.line());
            last_privacy = rec.privacy;
            last_eval = Some(rec.eval);
        }
        if done % cfg.train.checkpoint_every == 0 || last {
            run.checkpoint(done)?;
        }
    }
    pb.finish_and_clear();
    let sgt_dir = output.join(SGT_DIR);
    save_sgt(&run.cloak, &sgt_dir)?;
    let final_eval = match last_eval {
        Some(e) => e,
        None => {
            let served = AdapterRun::served_of(&run.adapter, model)?;
            held.eval(&run.cloak, served.as_ref(), true)?
        }
    };
    let served_model_dir = match &run.adapter {
        Some(a) => Some(a.save_served(model, &output.join(SERVED_DIR))?),
        None => None,
    };
    Ok(TrainSummary {
        steps: cfg.train.steps,
        resumed_from: (run.start > 0).then_some(run.start),
        final_eval,
        final_privacy: last_privacy,
        clean_eval,
        sgt_dir,
        served_model_dir,
    })
}
