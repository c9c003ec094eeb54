//! `sgt bench apply`: client-side cost of the text SGT — applying the artefact to a chat prompt
//! of about `--tokens` tokens (template, tokenizer, embedding lookup, estimator, noise), and the
//! proxy's overhead per request (a full HTTP round trip through an in-process proxy to an
//! upstream that answers instantly). `bench/apply_torch.py` is the PyTorch eager reference;
//! `bench/run_apply.sh` runs both and the cold start of `sgt text apply`. With `--precision
//! bf16` it also reports how far μ and σ of the bf16 products are from the f32 ones on the
//! same prompt (`bf16_vs_f32`).

use super::common::blas_name;
use anyhow::{bail, Context, Result};
use axum::routing::post;
use candle_core::{DType, Device};
use clap::Args;
use serde_json::json;
use stainedglass_core::NoiseRng;
use stainedglass_models::text_sgt::Precision;
use stainedglass_serve::proxy::{self, ProxyConfig, ProxyState, Upstream, UpstreamKind};
use stainedglass_serve::server;
use stainedglass_text::{Message, PromptInput, Role, StainedGlassTransformForText};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Args)]
pub struct ApplyBenchArgs {
    /// The client artefact.
    #[arg(long)]
    pub sgt: PathBuf,
    /// Approximate prompt length in tokens (template included).
    #[arg(long, default_value_t = 256)]
    pub tokens: usize,
    /// Timed applications.
    #[arg(long, default_value_t = 30)]
    pub iters: usize,
    /// Write the generated user message here (the PyTorch reference reads it).
    #[arg(long)]
    pub prompt_out: Option<PathBuf>,
    #[command(flatten)]
    pub precision: crate::text::precision::PrecisionArgs,
}

/// A user message whose templated prompt is `target` tokens long (± a few).
pub fn prompt_of(sgt: &StainedGlassTransformForText, target: usize) -> Result<String> {
    let words = [
        "the",
        "river",
        "carried",
        "old",
        "stories",
        "past",
        "quiet",
        "towns",
        "and",
        "green",
        "fields",
        "while",
        "people",
        "listened",
        "carefully",
    ];
    let mut text = String::new();
    let mut i = 0;
    loop {
        let msg = vec![Message::new(Role::User, text.clone())];
        let n = sgt
            .apply(&PromptInput::Chat(msg), &mut NoiseRng::seeded(0))
            .map(|o| o.input_ids.len())
            .unwrap_or(0);
        if n >= target {
            return Ok(text);
        }
        if i > 10 * target {
            bail!("cannot build a {target}-token prompt");
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(words[i % words.len()]);
        i += 1;
    }
}

/// `‖a − b‖ / ‖b‖` over the rows with `sel = 1` (`d` values a row).
fn rel_l2(a: &[f32], b: &[f32], sel: &[u8], d: usize) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for ((ra, rb), &s) in a.chunks_exact(d).zip(b.chunks_exact(d)).zip(sel) {
        if s != 0 {
            for (&x, &y) in ra.iter().zip(rb) {
                num += f64::from(x - y).powi(2);
                den += f64::from(y).powi(2);
            }
        }
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// How far `precision`'s products move μ, σ and the keep mask from the f32 ones on `prompt`;
/// leaves `sgt` at `precision`.
fn bf16_drift(
    sgt: &mut StainedGlassTransformForText,
    precision: Precision,
    prompt: &PromptInput,
) -> Result<serde_json::Value> {
    let enc = sgt.encode(prompt)?;
    let x = sgt.embed(&enc.input_ids)?.unsqueeze(0)?;
    let am = vec![1u8; enc.input_ids.len()];
    let mut run = |p| -> Result<[Vec<f32>; 3]> {
        sgt.set_precision(p)?;
        let out = sgt.cloak().transform(
            &x,
            Some(&am),
            Some(&enc.noise_mask),
            &mut NoiseRng::seeded(1),
        )?;
        let host = |t: &candle_core::Tensor| -> Result<Vec<f32>> {
            Ok(t.flatten_all()?.to_vec1::<f32>()?)
        };
        let mask = match &out.mask {
            Some(m) => host(m)?,
            None => Vec::new(),
        };
        Ok([host(&out.mean)?, host(&out.std)?, mask])
    };
    let [m32, s32, k32] = run(Precision::F32)?;
    let [m16, s16, k16] = run(precision)?;
    let d = x.dim(2)?;
    let flips = k32.iter().zip(&k16).filter(|(a, b)| a != b).count();
    Ok(json!({
        "mean_rel_l2": rel_l2(&m16, &m32, &enc.noise_mask, d),
        "std_rel_l2": rel_l2(&s16, &s32, &enc.noise_mask, d),
        "keep_mask_flipped": flips as f64 / k32.len().max(1) as f64,
    }))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn apply(a: ApplyBenchArgs) -> Result<()> {
    let mut sgt = StainedGlassTransformForText::from_pretrained(&a.sgt, &Device::Cpu)
        .with_context(|| format!("loading {}", a.sgt.display()))?;
    let text = prompt_of(&sgt, a.tokens)?;
    if let Some(p) = &a.prompt_out {
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    let prompt = PromptInput::Chat(vec![Message::new(Role::User, text.clone())]);
    let precision = a.precision.precision;
    let drift = match precision {
        Precision::F32 => serde_json::Value::Null,
        _ => bf16_drift(&mut sgt, precision, &prompt)?,
    };
    sgt.set_precision(precision)?;
    // As the proxy does after loading (`sgt proxy`).
    crate::alloc::keep_freed_pages();
    let sgt = Arc::new(sgt);
    let mut rng = NoiseRng::from_entropy();
    let first = sgt.apply(&prompt, &mut rng)?;
    let tokens = first.input_ids.len();
    let (mut apply_ms, mut transform_ms) = (Vec::new(), Vec::new());
    for _ in 0..a.iters {
        let t = Instant::now();
        let out = sgt.apply(&prompt, &mut rng)?;
        transform_ms.push(t.elapsed().as_secs_f64() * 1e3);
        // The payload a proxy sends (f32 safetensors, base64) is part of the client's work.
        let payload =
            stainedglass_serve::embeddings::encode(&out.embeddings.to_dtype(DType::F32)?)?;
        apply_ms.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(payload);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let overhead = rt.block_on(async {
        // An upstream that answers one token at once: all remaining time is the proxy's.
        let mock = axum::Router::new()
            .route(
                "/v1/generate",
                post(|body: axum::body::Bytes| async move {
                    std::hint::black_box(body);
                    let done = json!({"type": "done", "finish_reason": "stop",
                                      "usage": {"prompt_tokens": 1, "completion_tokens": 1}});
                    (
                        [("content-type", "text/event-stream")],
                        format!(
                            "data: {}\n\ndata: {done}\n\n",
                            json!({"type": "token", "token": 28})
                        ),
                    )
                }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(64 << 20));
        let (l, up) = server::bind("127.0.0.1:0").await?;
        tokio::spawn(server::run(l, mock, std::future::pending()));
        let state = ProxyState::new(
            sgt.clone(),
            Upstream {
                kind: UpstreamKind::Sgt,
                url: format!("http://{up}"),
                api_key: None,
                model: String::new(),
                protect_output: false,
                vllm_dtype: DType::F32,
                server_key: None,
            },
            ProxyConfig::default(),
        );
        let (l, addr) = server::bind("127.0.0.1:0").await?;
        tokio::spawn(server::run(
            l,
            proxy::router(Arc::new(state)),
            std::future::pending(),
        ));
        let client = reqwest::Client::new();
        let body = json!({"messages": [{"role": "user", "content": text}], "max_tokens": 1});
        let mut ms = Vec::new();
        for i in 0..a.iters + 2 {
            let t = Instant::now();
            let r = client
                .post(format!("http://{addr}/v1/chat/completions"))
                .json(&body)
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("proxy answered {}: {}", r.status(), r.text().await?);
            }
            r.bytes().await?;
            if i >= 2 {
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok::<_, anyhow::Error>(median(ms))
    })?;
    println!(
        "{}",
        json!({
            "impl": "rust-candle",
            "prompt_tokens": tokens,
            "transformed_tokens": first.noise_mask.iter().filter(|&&m| m != 0).count(),
            "apply_ms": median(apply_ms),
            "apply_without_payload_ms": median(transform_ms),
            "proxy_overhead_ms": overhead,
            "percent_to_mask": sgt.cloak().config().sgt.percent_to_mask,
            "precision": precision.to_string(),
            "bf16_vs_f32": drift,
            "threads": rayon::current_num_threads(),
            "blas": blas_name(),
        })
    );
    Ok(())
}
