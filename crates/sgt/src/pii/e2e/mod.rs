//! `sgt pii e2e`: the labelled prompts through the real proxy and server, twice — personal-data
//! handling off, then on — with a tap on the server that keeps every byte it receives. For each
//! request it reports whether an original value appears in those bytes, and whether the
//! strongest reading of the received embeddings finds it whole; for the prompts whose task needs
//! the values, whether the reply (plain and streamed) carries them.
//!
//! A third pass puts a mirror in place of the model (`mirror.rs`): it answers with the user's
//! message as it read it, so the reply is the pseudonymised prompt mapped back — whether every
//! value returns measures the mapping back, apart from whether a small model repeats names.
//!
//! The reading is nearest-neighbour decoding against the artefact's own table. Against an
//! untrained artefact (`sgt text export --init-only`) it reads back essentially every token —
//! the run reports how many with handling off — so it stands for an attacker who reads
//! everything: the learned inverter that recovers 99.5% of a trained SGT's tokens (docs/eval/)
//! can do no better.

mod mirror;
mod tapped;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::{json, Value};
use stainedglass_metrics::EmbeddingIndex;
use stainedglass_pii::eval::LabelledPrompt;
use stainedglass_pii::{PiiKind, PiiMode};
use stainedglass_serve::proxy::PiiGuard;
use stainedglass_text::{StainedGlassTransformForText, TextTokenizer};

use super::args::{read_prompts, DetectorArgs};
use crate::lm::model_args::ModelArgs;
use crate::quickstart::services::start_services;
use tapped::Tapped;

#[derive(Args)]
pub struct E2eArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The client artefact the proxy applies.
    #[arg(long)]
    pub sgt: PathBuf,
    /// Labelled prompts (JSON lines as written by scripts/pii_generate.py).
    #[arg(long, default_value = "data/pii/prompts-fresh.jsonl")]
    pub data: PathBuf,
    /// Where to write report.json and summary.md.
    #[arg(long)]
    pub report: PathBuf,
    /// Only the first N prompts.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Longest reply, in tokens.
    #[arg(long, default_value_t = 48)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub detector: DetectorArgs,
}

/// One pass over the prompts with one handling mode.
#[derive(Debug, Default, Serialize)]
pub struct Pass {
    pub mode: String,
    /// `model`: the bundled model answers; `mirror`: the reply is the prompt as read.
    pub upstream: String,
    pub requests: usize,
    /// Original values, and how many of them appear in the bytes the server received.
    pub values: usize,
    pub values_in_server_bytes: usize,
    /// How many the nearest-neighbour reading of the received embeddings contains whole.
    pub values_read_whole: usize,
    pub share_read_whole: f64,
    /// Prompt tokens of the reading equal to the templated prompt the proxy sent (known only
    /// with handling off, where the sent prompt is the original).
    pub tokens_read_back: Option<f64>,
    /// Values the task needs in the reply, and how many replies carry them (plain, streamed).
    pub needed: usize,
    pub carried_plain: usize,
    pub carried_streamed: usize,
    pub share_carried_plain: f64,
    pub share_carried_streamed: f64,
    /// Values read whole from the server's view (handling on: the detector's misses).
    pub read_values: Vec<String>,
}

fn share(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Kinds a reply to a task that needs the personal data is expected to repeat.
fn needed_in_reply(kind: PiiKind) -> bool {
    matches!(kind, PiiKind::Person | PiiKind::Location)
}

/// Whether `reply` carries `value`: the value, or one of its words of three or more letters,
/// as a whole word ("Dear Ms. Sirviö" carries "Josefiina Sirviö").
fn carries(reply: &str, value: &str) -> bool {
    let whole = |w: &str| {
        reply.match_indices(w).any(|(i, _)| {
            let before = reply[..i].chars().last();
            let after = reply[i + w.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
    };
    whole(value)
        || value
            .split_whitespace()
            .any(|w| w.chars().count() >= 3 && whole(w))
}

async fn chat(addr: std::net::SocketAddr, content: &str, max_tokens: usize) -> Result<String> {
    let body = json!({"model": "stainedglass", "temperature": 0, "max_tokens": max_tokens,
                      "messages": [{"role": "user", "content": content}]});
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await?;
    if !status.is_success() {
        bail!("the proxy answered {status}: {}", v["error"]["message"]);
    }
    Ok(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

async fn chat_streamed(
    addr: std::net::SocketAddr,
    content: &str,
    max_tokens: usize,
) -> Result<String> {
    let body = json!({"model": "stainedglass", "temperature": 0, "max_tokens": max_tokens,
                      "stream": true, "messages": [{"role": "user", "content": content}]});
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("the proxy answered {}", r.status());
    }
    let text = r.text().await?;
    let mut out = String::new();
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data).context("a stream event")?;
        if let Some(d) = v["choices"][0]["delta"]["content"].as_str() {
            out.push_str(d);
        }
    }
    Ok(out)
}

/// What the server could read of the last request it received: the nearest-neighbour decoding
/// of the embeddings, as ids and as text.
fn server_view(
    live: &dyn Tapped,
    seen_before: usize,
    index: &EmbeddingIndex,
    tok: &TextTokenizer,
) -> Result<(Vec<u8>, Vec<u32>, String)> {
    let received = live.received();
    if received.len() != seen_before + 1 {
        bail!(
            "expected one new request at the server, saw {}",
            received.len() - seen_before.min(received.len())
        );
    }
    let body = received[seen_before].clone();
    let v: Value = serde_json::from_slice(&body)?;
    let emb = stainedglass_serve::embeddings::decode(
        v["embeddings"].as_str().unwrap_or_default(),
        live.limits(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_, read, _) = index.nearest(&emb)?;
    let text = tok.decode(&read, false)?;
    Ok((body, read, text))
}

/// One pass: every prompt plain; those whose task needs the values also streamed. With the
/// mirror every prompt needs every value, plain and streamed.
async fn pass(
    live: &dyn Tapped,
    prompts: &[LabelledPrompt],
    sgt: &StainedGlassTransformForText,
    mode: PiiMode,
    max_tokens: usize,
    mirrored: bool,
) -> Result<Pass> {
    let tok = sgt.tokenizer();
    let index = EmbeddingIndex::new(sgt.embeddings()?)?;
    let mut p = Pass {
        mode: mode.to_string(),
        upstream: if mirrored { "mirror" } else { "model" }.into(),
        ..Pass::default()
    };
    let (mut tokens_same, mut tokens_all) = (0usize, 0usize);
    for (n, lp) in prompts.iter().enumerate() {
        let content = lp.messages.first().map_or("", |m| m.content.as_str());
        let before = live.received().len();
        let reply = chat(live.proxy(), content, max_tokens).await?;
        p.requests += 1;
        let (bytes, read, view) = server_view(live, before, &index, tok)?;
        if mode == PiiMode::Off {
            let sent = sgt.encode(&stainedglass_text::PromptInput::Chat(vec![
                stainedglass_text::Message::new(stainedglass_text::Role::User, content),
            ]))?;
            tokens_all += sent.input_ids.len();
            tokens_same += sent
                .input_ids
                .iter()
                .zip(&read)
                .filter(|(a, b)| a == b)
                .count();
        }
        let needs = lp.needs_pii || mirrored;
        let streamed = if needs {
            let before = live.received().len();
            let s = chat_streamed(live.proxy(), content, max_tokens).await?;
            p.requests += 1;
            server_view(live, before, &index, tok)?;
            Some(s)
        } else {
            None
        };
        for g in &lp.spans {
            p.values += 1;
            if bytes.windows(g.text.len()).any(|w| w == g.text.as_bytes()) {
                p.values_in_server_bytes += 1;
            }
            if view.contains(g.text.as_str()) {
                p.values_read_whole += 1;
                p.read_values.push(format!("{}: {}", g.kind.name(), g.text));
            }
            if needs && (mirrored || needed_in_reply(g.kind)) {
                p.needed += 1;
                p.carried_plain += usize::from(carries(&reply, &g.text));
                if let Some(s) = &streamed {
                    p.carried_streamed += usize::from(carries(s, &g.text));
                }
            }
        }
        if (n + 1) % 50 == 0 {
            eprintln!("  {mode}: {} of {} prompts", n + 1, prompts.len());
        }
    }
    p.share_read_whole = share(p.values_read_whole, p.values);
    p.share_carried_plain = share(p.carried_plain, p.needed);
    p.share_carried_streamed = share(p.carried_streamed, p.needed);
    p.tokens_read_back = (mode == PiiMode::Off).then(|| share(tokens_same, tokens_all));
    Ok(p)
}

pub fn run(a: E2eArgs) -> Result<()> {
    let prompts = read_prompts(&a.data)?;
    let prompts = &prompts[..a.limit.unwrap_or(prompts.len()).min(prompts.len())];
    let tok = a.model.load_tokenizer()?;
    let model = Arc::new(a.model.load_model()?);
    let sgt = Arc::new(
        StainedGlassTransformForText::from_pretrained(&a.sgt, &candle_core::Device::Cpu)
            .with_context(|| format!("loading the artefact {}", a.sgt.display()))?,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut passes = Vec::new();
    for mode in [PiiMode::Off, PiiMode::Pseudonymize] {
        let guard = match mode {
            PiiMode::Off => None,
            m => Some(PiiGuard::new(m, a.detector.detector()?)),
        };
        let t0 = std::time::Instant::now();
        let live = rt.block_on(start_services(model.clone(), &tok, sgt.clone(), guard))?;
        let p = rt.block_on(pass(&live, prompts, &sgt, mode, a.max_tokens, false));
        rt.block_on(live.shutdown());
        let p = p?;
        eprintln!(
            "  {mode}: {} requests in {:.0} s",
            p.requests,
            t0.elapsed().as_secs_f64()
        );
        passes.push(p);
    }
    let guard = PiiGuard::new(PiiMode::Pseudonymize, a.detector.detector()?);
    let t0 = std::time::Instant::now();
    let m = rt.block_on(mirror::start(sgt.clone(), Some(guard)))?;
    let p = rt.block_on(pass(&m, prompts, &sgt, PiiMode::Pseudonymize, 4096, true))?;
    eprintln!(
        "  pseudonymize, mirror: {} requests in {:.0} s",
        p.requests,
        t0.elapsed().as_secs_f64()
    );
    passes.push(p);
    write(&a, prompts.len(), &passes)
}

fn write(a: &E2eArgs, prompts: usize, passes: &[Pass]) -> Result<()> {
    std::fs::create_dir_all(&a.report)?;
    let report = json!({"prompts": prompts, "data": a.data, "artefact": a.sgt,
                        "max_tokens": a.max_tokens, "passes": passes});
    stainedglass_core::io::atomic_write(
        &a.report.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    let mut md = format!(
        "# Personal data through the proxy: {prompts} prompts of {}\n\n\
         | handling | upstream | requests | values | in the server's bytes | read whole from \
         the embeddings | tokens read back | replies carrying the needed values (plain / \
         streamed) |\n|---|---|---|---|---|---|---|---|\n",
        a.data.display()
    );
    for p in passes {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.1}% ({}) | {} | {:.1}% / {:.1}% of {} |\n",
            p.mode,
            p.upstream,
            p.requests,
            p.values,
            p.values_in_server_bytes,
            100.0 * p.share_read_whole,
            p.values_read_whole,
            p.tokens_read_back
                .map_or("—".into(), |t| format!("{:.1}%", 100.0 * t)),
            100.0 * p.share_carried_plain,
            100.0 * p.share_carried_streamed,
            p.needed,
        ));
    }
    stainedglass_core::io::atomic_write(&a.report.join("summary.md"), md.as_bytes())?;
    print!("{md}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_carries_a_value_by_a_whole_word() {
        assert!(carries("Dear Ms. Sirviö,", "Josefiina Sirviö"));
        assert!(carries("Hi Michael Roy", "Michael Roy"));
        assert!(!carries("Dear Royce,", "Michael Roy"));
        assert!(!carries("Dear Al,", "Al Li"));
    }
}
