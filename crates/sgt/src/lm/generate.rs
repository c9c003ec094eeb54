//! `sgt generate`: chat (template applied) or raw-text generation, streamed to stdout.

use super::model_args::ModelArgs;
use anyhow::{bail, Result};
use clap::Args;
use stainedglass_models::llm::{FinishReason, Prompt, SamplingParams};
use stainedglass_text::{Message, Role};
use std::io::Write;
use std::time::Instant;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The user message (or, with --raw, the text to continue).
    #[arg(long)]
    pub prompt: String,
    /// A system message placed before the prompt (chat mode).
    #[arg(long)]
    pub system: Option<String>,
    /// Continue plain text instead of applying the chat template.
    #[arg(long)]
    pub raw: bool,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Seed for sampling (default: OS entropy).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Extra stop strings that must be single tokens of the vocabulary.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print one JSON object (text, tokens, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

pub fn run_generate(a: GenerateArgs) -> Result<()> {
    let tok = a.model.load_tokenizer()?;
    let t0 = Instant::now();
    let model = a.model.load_model()?;
    let load_s = t0.elapsed().as_secs_f64();
    let ids = if a.raw {
        tok.encode(&a.prompt)?
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(Message::new(Role::System, s.clone()));
        }
        msgs.push(Message::new(Role::User, a.prompt.clone()));
        let text = tok.chat_template()?.render(&msgs, true)?;
        tok.encode(&text)?
    };
    if ids.is_empty() {
        bail!("the prompt is empty");
    }
    let mut stop_tokens = tok.stop_tokens();
    for s in &a.stop {
        match tok.token_to_id(s) {
            Some(id) => stop_tokens.push(id),
            None => bail!("stop string {s:?} is not a single token of the vocabulary"),
        }
    }
    let params = SamplingParams {
        max_new_tokens: a.max_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        stop_tokens,
        seed: a.seed,
    };
    let mut out = std::io::stdout();
    let mut tokens: Vec<u32> = Vec::new();
    let mut printed = 0usize;
    let mut first_token_s = None;
    let t1 = Instant::now();
    let gen = model.generate(Prompt::Ids(&ids), &params, |t| {
        if first_token_s.is_none() {
            first_token_s = Some(t1.elapsed().as_secs_f64());
        }
        tokens.push(t);
        if !a.json {
            if let Ok(text) = tok.decode(&tokens, true) {
                if !text.ends_with('\u{FFFD}') && text.len() > printed {
                    let _ = write!(out, "{}", &text[printed..]);
                    let _ = out.flush();
                    printed = text.len();
                }
            }
        }
        true
    })?;
    let total_s = t1.elapsed().as_secs_f64();
    let text = tok.decode(&gen.tokens, true)?;
    let prefill_s = first_token_s.unwrap_or(total_s);
    let decode_tok_s = if gen.tokens.len() > 1 {
        (gen.tokens.len() - 1) as f64 / (total_s - prefill_s).max(1e-9)
    } else {
        0.0
    };
    let finish = match gen.finish {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
    };
    if a.json {
        let v = serde_json::json!({
            "text": text,
            "tokens": gen.tokens,
            "prompt_tokens": gen.prompt_tokens,
            "finish_reason": finish,
            "load_s": load_s,
            "prefill_s": prefill_s,
            "decode_tokens_per_s": decode_tok_s,
        });
        println!("{v}");
    } else {
        if printed < text.len() {
            print!("{}", &text[printed..]);
        }
        println!();
        eprintln!(
            "[{} prompt tokens, {} generated ({finish}); load {load_s:.1}s, prefill {prefill_s:.2}s, \
             decode {decode_tok_s:.1} tok/s]",
            gen.prompt_tokens,
            gen.tokens.len()
        );
    }
    Ok(())
}
