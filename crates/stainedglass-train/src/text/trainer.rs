//! The text-SGT trainer: TransformerCloak on a frozen Llama-family model, trained with the
//! distillation loss (SPEC §5.2) on chat conversations. AdamW (weight decay 0), warm-up then
//! linear decay, gradient accumulation and clipping, quick evaluations on held-out
//! conversations, atomic checkpoints and bit-exact resume, a progress bar and JSON-lines
//! metrics (`metrics.jsonl`: `"kind": "train"` per step, `"kind": "eval"` per evaluation).

use super::config::TextTrainConfig;
use super::eval::{quick_eval, EmbeddingIndex, QuickEval};
use crate::batches::epoch_batches;
use crate::checkpoint::{clear, Checkpoints};
use crate::metrics::{progress_bar, MetricsLog};
use crate::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use stainedglass_core::loss::{distillation_loss_factory, DistillationInputs};
use stainedglass_core::optim::{AdamW, AdamWConfig};
use stainedglass_core::{NoiseLayer, NoiseRng};
use stainedglass_models::llm::{Llama, Stop};
use stainedglass_models::text_sgt::mean_sigma;
use stainedglass_models::text_sgt::{TransformerCloak, TransformerCloakConfig};
use stainedglass_text::{EncodedPrompt, Padding, PromptInput, Side, TextTokenizer};
use stainedglass_text::{TokenizerWrapper, WrapperOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Where the trained layer is written (config.json + model.safetensors).
pub const SGT_DIR: &str = "sgt";

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
    losses: HashMap<&'a str, f64>,
}

#[derive(Serialize)]
struct EvalRecord {
    kind: &'static str,
    step: u64,
    #[serde(flatten)]
    eval: QuickEval,
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
    pub clean_eval: QuickEval,
    pub sgt_dir: PathBuf,
}

fn encode_all(
    tok: &Arc<TextTokenizer>,
    convs: &[PromptInput],
    cfg: &TextTrainConfig,
    ignore_prompt_loss: bool,
) -> Result<Vec<EncodedPrompt>> {
    let w = TokenizerWrapper::new(
        tok.clone(),
        WrapperOptions {
            include_labels: true,
            ignore_prompt_loss,
            transform_all_tokens: cfg.data.transform_all_tokens,
            max_length: Some(cfg.data.max_length),
            truncation: true,
            truncation_side: Side::Right,
            padding: Padding::Longest,
            padding_side: Side::Right,
            ..Default::default()
        },
    );
    Ok(convs
        .iter()
        .map(|c| w.encode(c))
        .collect::<stainedglass_text::Result<_>>()?)
}

/// Right-pads `rows` into `(ids, attention, noise, loss)` for a training step.
fn collate(rows: &[&EncodedPrompt], pad: u32, dev: &candle_core::Device) -> Result<Batch> {
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let b = rows.len();
    let (mut ids, mut am, mut nm, mut lm) = (
        vec![pad; b * t],
        vec![0u8; b * t],
        vec![0u8; b * t],
        vec![0f32; b * t],
    );
    for (i, r) in rows.iter().enumerate() {
        let o = i * t;
        ids[o..o + r.len()].copy_from_slice(&r.input_ids);
        am[o..o + r.len()].copy_from_slice(&r.attention_mask);
        nm[o..o + r.len()].copy_from_slice(&r.noise_mask);
        if let Some(l) = &r.loss_mask {
            for (k, &v) in l.iter().enumerate() {
                lm[o + k] = f32::from(v);
            }
        }
    }
    let tokens = am.iter().filter(|&&v| v == 1).count();
    Ok(Batch {
        ids: Tensor::from_vec(ids, (b, t), dev)?,
        am_t: Tensor::from_vec(am.clone(), (b, t), dev)?,
        nm_f: Tensor::from_vec(
            nm.iter().map(|&v| f32::from(v)).collect::<Vec<_>>(),
            (b, t),
            dev,
        )?,
        lm: Tensor::from_vec(lm, (b, t), dev)?,
        am,
        nm,
        tokens,
    })
}

struct Batch {
    ids: Tensor,
    am_t: Tensor,
    nm_f: Tensor,
    lm: Tensor,
    am: Vec<u8>,
    nm: Vec<u8>,
    tokens: usize,
}

/// Saves the layer as `dir/config.json` + `dir/model.safetensors` (atomically).
pub fn save_sgt(cloak: &TransformerCloak, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cfg = serde_json::json!({
        "format": "stainedglass-transformer-cloak",
        "version": 1,
        "config": cloak.config(),
    });
    stainedglass_core::io::atomic_write(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&cfg)
            .map_err(|e| Error::Config(e.to_string()))?
            .as_bytes(),
    )?;
    stainedglass_core::io::save_tensors(&dir.join("model.safetensors"), &cloak.named_tensors())?;
    Ok(())
}

/// Loads a layer written by [`save_sgt`].
pub fn load_sgt(dir: &Path, device: &candle_core::Device) -> Result<TransformerCloak> {
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::ckpt(&p, format!("not valid JSON: {e}")))?;
    if v.get("format").and_then(|f| f.as_str()) != Some("stainedglass-transformer-cloak") {
        return Err(Error::ckpt(&p, "not a TransformerCloak config"));
    }
    let cfg: TransformerCloakConfig = serde_json::from_value(v["config"].clone())
        .map_err(|e| Error::ckpt(&p, format!("bad config: {e}")))?;
    let t = stainedglass_core::io::load_tensors(&dir.join("model.safetensors"), device)?;
    Ok(TransformerCloak::from_named(cfg, &t, device)?)
}

/// The quick evaluation of `cloak` on the config's held-out conversations (`limit` of them, or
/// all), with the trainer's evaluation noise seed.
pub fn held_out_eval(
    cfg: &TextTrainConfig,
    model: &Llama,
    tok: Arc<TextTokenizer>,
    cloak: &TransformerCloak,
    limit: Option<usize>,
    transform: bool,
) -> Result<QuickEval> {
    let convs = super::data::load_conversations(&cfg.data.conversations)?;
    let held = &convs[convs.len().saturating_sub(cfg.data.held_out)..];
    let n = limit.unwrap_or(held.len()).min(held.len());
    let rows = encode_all(&tok, &held[..n], cfg, true)?;
    let index = EmbeddingIndex::new(model.embedding_table())?;
    let mut rng = NoiseRng::seeded(cfg.train.seed ^ 0xE7A1);
    quick_eval(model, cloak, &index, &rows, &mut rng, transform)
}

/// The config's held-out conversations, encoded as the evaluations see them (labels included).
pub fn held_out_rows(
    cfg: &TextTrainConfig,
    tok: &Arc<TextTokenizer>,
) -> Result<Vec<EncodedPrompt>> {
    let convs = super::data::load_conversations(&cfg.data.conversations)?;
    let held = &convs[convs.len().saturating_sub(cfg.data.held_out)..];
    encode_all(tok, held, cfg, true)
}

/// The config's training conversations (all but the held-out ones), encoded like
/// [`held_out_rows`]: an attacker's own text in the evaluation.
pub fn training_rows(
    cfg: &TextTrainConfig,
    tok: &Arc<TextTokenizer>,
) -> Result<Vec<EncodedPrompt>> {
    let convs = super::data::load_conversations(&cfg.data.conversations)?;
    let train = &convs[..convs.len().saturating_sub(cfg.data.held_out)];
    encode_all(tok, train, cfg, true)
}

/// AdamW (weight decay 0) for the weights and, at its own learning rate, the head biases.
fn optimizers(cloak: &TransformerCloak, cfg: &TextTrainConfig) -> Result<(AdamW, AdamW)> {
    let (w, b) = cloak.parameter_groups();
    Ok((
        AdamW::new(w, AdamWConfig::noise(cfg.train.learning_rate))?,
        AdamW::new(b, AdamWConfig::noise(cfg.train.bias_learning_rate))?,
    ))
}

/// Trains (or resumes) a text SGT into `output`.
pub fn train(
    cfg: &TextTrainConfig,
    model: &Llama,
    tok: Arc<TextTokenizer>,
    output: &Path,
    opts: &RunOptions,
) -> Result<TrainSummary> {
    cfg.validate()?;
    let dev = model.device().clone();
    let ckdir = output.join("checkpoints");
    if opts.fresh {
        clear(&ckdir)?;
        let _ = std::fs::remove_file(output.join("metrics.jsonl"));
    }
    let convs = super::data::load_conversations(&cfg.data.conversations)?;
    if convs.len() <= cfg.data.held_out {
        return Err(Error::Config(format!(
            "{} conversations cannot leave {} held out",
            convs.len(),
            cfg.data.held_out
        )));
    }
    let (train_c, held_c) = convs.split_at(convs.len() - cfg.data.held_out);
    let train_rows = encode_all(&tok, train_c, cfg, cfg.data.ignore_prompt_loss)?;
    let held_n = if cfg.train.eval_conversations == 0 {
        held_c.len()
    } else {
        cfg.train.eval_conversations.min(held_c.len())
    };
    let held_rows = encode_all(&tok, &held_c[..held_n], cfg, true)?;
    let pad = tok.pad_id().unwrap_or(0);

    let sc = TransformerCloakConfig::with_settings(model.config().clone(), cfg.sgt.clone());
    let ckpts = Checkpoints::new(&ckdir);
    let resumed = ckpts.load_latest::<State>(&["sgt", "optimizer", "optimizer_bias"], &dev)?;
    let (cloak, (mut opt, mut opt_b), start) = match resumed {
        Some(ck) => {
            if ck.state.config != *cfg {
                return Err(Error::ckpt(
                    &ck.dir,
                    "the checkpoint was written with a different config; pass --fresh to start over",
                ));
            }
            let cloak = TransformerCloak::from_named(sc, &ck.tensors["sgt"], &dev)?;
            let (mut opt, mut opt_b) = optimizers(&cloak, cfg)?;
            opt.load_state(&ck.tensors["optimizer"])?;
            opt_b.load_state(&ck.tensors["optimizer_bias"])?;
            (cloak, (opt, opt_b), ck.state.step)
        }
        None => {
            let cloak = TransformerCloak::from_base(sc, model)?;
            let opts = optimizers(&cloak, cfg)?;
            (cloak, opts, 0)
        }
    };
    let loss = distillation_loss_factory(cfg.loss.clone())?;
    let stop = match cfg.loss.distillation_layer_index {
        Some(k) => Stop::AtLayer(k),
        None => Stop::Logits,
    };
    let index = EmbeddingIndex::new(model.embedding_table())?;
    let mut metrics = MetricsLog::open(&output.join("metrics.jsonl"))?;
    let eval_seed = cfg.train.seed ^ 0xE7A1;
    let clean_eval = quick_eval(
        model,
        &cloak,
        &index,
        &held_rows,
        &mut NoiseRng::seeded(eval_seed),
        false,
    )?;
    let pb = progress_bar(cfg.train.steps, start, "text sgt");
    if !opts.progress {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let per_epoch = train_rows.len().div_ceil(cfg.train.batch_size).max(1) as u64;
    let micro = cfg.train.grad_accumulation as u64;
    let mut last_eval = None;
    for step in start..cfg.train.steps {
        let t0 = Instant::now();
        let lr = cfg.learning_rate(step);
        opt.set_learning_rate(lr);
        opt_b.set_learning_rate(cfg.schedule(step) * cfg.train.bias_learning_rate);
        let mut acc: Option<Vec<Tensor>> = None;
        let mut last_grads = None;
        let mut sums: HashMap<&str, f64> = HashMap::new();
        let (mut tokens, mut sig) = (0usize, 0f64);
        for m in 0..micro {
            let global = step * micro + m;
            let (epoch, k) = (global / per_epoch, (global % per_epoch) as usize);
            let batches = epoch_batches(
                train_rows.len(),
                cfg.train.batch_size,
                cfg.train.seed,
                epoch,
                false,
            );
            let rows: Vec<&EncodedPrompt> = batches[k].iter().map(|&i| &train_rows[i]).collect();
            let b = collate(&rows, pad, &dev)?;
            let x = model.embed(&b.ids)?;
            let clean = model.forward_embeds(&x, Some(&b.am_t), stop)?;
            let mut rng =
                NoiseRng::seeded(cfg.train.seed.wrapping_mul(1_000_003).wrapping_add(global));
            let noise = cloak.forward_masked(&x, Some(&b.am), Some(&b.nm), &mut rng)?;
            let tr = model.forward_embeds(&noise.transformed, Some(&b.am_t), stop)?;
            let rec = loss.compute(&DistillationInputs {
                clean: &clean,
                transformed: &tr,
                loss_mask: &b.lm,
                noise_mask: &b.nm_f,
                input_embeds: &x,
                transformed_embeds: &noise.transformed,
                std: &noise.std,
                keep_mask: noise.mask.as_ref(),
            })?;
            for (name, v) in &rec.components {
                *sums.entry(name).or_insert(0.0) += v / micro as f64;
            }
            if !rec.components[0].1.is_finite() {
                return Err(Error::Diverged {
                    step,
                    what: "the loss".into(),
                });
            }
            sig += mean_sigma(&noise.std, &b.nm)? / micro as f64;
            tokens += b.tokens;
            let scaled = (rec.loss / micro as f64)?;
            let grads = scaled.backward()?;
            let gs: Vec<Tensor> = cloak
                .parameters()
                .iter()
                .map(|p| match grads.get(p.as_tensor()) {
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
            last_grads = Some(grads);
        }
        let (Some(acc), Some(mut grads)) = (acc, last_grads) else {
            continue;
        };
        for (p, g) in cloak.parameters().iter().zip(acc) {
            grads.insert(p.as_tensor(), g);
        }
        // Clip the weights' and the biases' gradients separately (their scales differ).
        let clip = cfg.train.clip_grad_norm.unwrap_or(f64::INFINITY);
        let grad_norm = opt.clip_grad_norm(&mut grads, clip)?;
        let bias_norm = opt_b.clip_grad_norm(&mut grads, clip)?;
        if !(grad_norm.is_finite() && bias_norm.is_finite()) {
            return Err(Error::Diverged {
                step,
                what: "the gradient norm".into(),
            });
        }
        opt.step(&grads)?;
        opt_b.step(&grads)?;
        let done = step + 1;
        metrics.write(&TrainRecord {
            kind: "train",
            step: done,
            lr,
            mean_sigma: sig,
            grad_norm,
            tokens_per_s: tokens as f64 / t0.elapsed().as_secs_f64(),
            losses: sums.clone(),
        })?;
        pb.set_position(done);
        pb.set_message(format!(
            "loss {:.3} dist {:.4} sim {:.3} σ {:.4}",
            sums.get("loss").copied().unwrap_or(f64::NAN),
            sums.get("distillation_loss").copied().unwrap_or(f64::NAN),
            sums.get("input_embedding_similarity")
                .copied()
                .unwrap_or(f64::NAN),
            sig
        ));
        if done % cfg.train.eval_every == 0 || done == cfg.train.steps {
            let e = quick_eval(
                model,
                &cloak,
                &index,
                &held_rows,
                &mut NoiseRng::seeded(eval_seed),
                true,
            )?;
            metrics.write(&EvalRecord {
                kind: "eval",
                step: done,
                eval: e.clone(),
            })?;
            pb.println(format!(
                "step {done}: nn recovery cos {:.1}% l2 {:.1}% | next-token agreement {:.1}% KL {:.3}",
                100.0 * e.nn_top1_cosine,
                100.0 * e.nn_top1_l2,
                100.0 * e.next_token_agreement,
                e.next_token_kl
            ));
            last_eval = Some(e);
        }
        if done % cfg.train.checkpoint_every == 0 || done == cfg.train.steps {
            let state = State {
                step: done,
                config: cfg.clone(),
            };
            ckpts.save(
                done,
                &[
                    ("sgt", cloak.named_tensors()),
                    ("optimizer", opt.state()?),
                    ("optimizer_bias", opt_b.state()?),
                ],
                &state,
            )?;
        }
    }
    pb.finish_and_clear();
    let sgt_dir = output.join(SGT_DIR);
    save_sgt(&cloak, &sgt_dir)?;
    let final_eval = match last_eval {
        Some(e) => e,
        None => quick_eval(
            model,
            &cloak,
            &index,
            &held_rows,
            &mut NoiseRng::seeded(eval_seed),
            true,
        )?,
    };
    Ok(TrainSummary {
        steps: cfg.train.steps,
        resumed_from: (start > 0).then_some(start),
        final_eval,
        clean_eval,
        sgt_dir,
    })
}
