//! `sgt tokenize`: what the tokenizer wrapper produces for a prompt (ids, tokens and masks).

use super::model_args::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use stainedglass_text::{
    Instruction, Message, PromptInput, Role, TokenizerWrapper, WrapperOptions,
};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A single user message.
    #[arg(long, conflicts_with_all = ["messages", "instruction"])]
    pub prompt: Option<String>,
    /// A JSON file with a conversation: [{"role": …, "content": …}, …] ("-" reads stdin).
    #[arg(long, conflicts_with = "instruction")]
    pub messages: Option<PathBuf>,
    /// An instruction prompt (with optional --context, --system, --response).
    #[arg(long)]
    pub instruction: Option<String>,
    /// Context of the instruction prompt.
    #[arg(long, requires = "instruction")]
    pub context: Option<String>,
    /// A system message.
    #[arg(long)]
    pub system: Option<String>,
    /// The response of the instruction prompt (for labels).
    #[arg(long, requires = "instruction")]
    pub response: Option<String>,
    /// Tokenize plain text (no chat template, no masks).
    #[arg(long)]
    pub raw: bool,
    /// Also print the labels and the loss mask.
    #[arg(long)]
    pub include_labels: bool,
    /// Put the loss on every token, not only on assistant replies.
    #[arg(long)]
    pub no_ignore_prompt_loss: bool,
    /// Mark every token for the noise, template scaffolding included.
    #[arg(long)]
    pub transform_all_tokens: bool,
    /// Append the assistant turn header, as for generation.
    #[arg(long)]
    pub add_generation_prompt: bool,
    /// Truncate or refuse prompts longer than this many tokens.
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Truncate prompts longer than --max-length instead of refusing them.
    #[arg(long)]
    pub truncation: bool,
    /// Print JSON (default: a table).
    #[arg(long)]
    pub json: bool,
}

fn prompt_input(a: &TokenizeArgs) -> Result<PromptInput> {
    if let Some(p) = &a.prompt {
        let mut m = Vec::new();
        if let Some(s) = &a.system {
            m.push(Message::new(Role::System, s.clone()));
        }
        m.push(Message::new(Role::User, p.clone()));
        return Ok(PromptInput::Chat(m));
    }
    if let Some(path) = &a.messages {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())?
        } else {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        };
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        return Ok(PromptInput::Chat(Message::parse_conversation(&v)?));
    }
    if let Some(i) = &a.instruction {
        return Ok(PromptInput::Instruction(Instruction {
            instruction: i.clone(),
            system_prompt: a.system.clone(),
            context: a.context.clone(),
            response: a.response.clone(),
        }));
    }
    bail!("give --prompt, --messages or --instruction")
}

pub fn run_tokenize(a: TokenizeArgs) -> Result<()> {
    let tok = Arc::new(a.model.load_tokenizer()?);
    if a.raw {
        let Some(text) = &a.prompt else {
            bail!("--raw needs --prompt");
        };
        let ids = tok.encode(text)?;
        let tokens: Vec<String> = ids
            .iter()
            .map(|&i| tok.decode(&[i], false).unwrap_or_default())
            .collect();
        if a.json {
            println!(
                "{}",
                serde_json::json!({"input_ids": ids, "tokens": tokens})
            );
        } else {
            for (i, t) in ids.iter().zip(&tokens) {
                println!("{i:>6}  {t:?}");
            }
        }
        return Ok(());
    }
    let input = prompt_input(&a)?;
    let w = TokenizerWrapper::new(
        tok.clone(),
        WrapperOptions {
            include_labels: a.include_labels,
            ignore_prompt_loss: !a.no_ignore_prompt_loss,
            transform_all_tokens: a.transform_all_tokens,
            add_generation_prompt: a.add_generation_prompt,
            max_length: a.max_length,
            truncation: a.truncation,
            ..Default::default()
        },
    );
    let enc = w.encode(&input)?;
    let tokens: Vec<String> = enc
        .input_ids
        .iter()
        .map(|&i| tok.decode(&[i], false).unwrap_or_default())
        .collect();
    if a.json {
        let mut v = serde_json::json!({
            "input_ids": enc.input_ids,
            "tokens": tokens,
            "attention_mask": enc.attention_mask,
            "noise_mask": enc.noise_mask,
        });
        if let (Some(l), Some(m)) = (&enc.labels, &enc.loss_mask) {
            v["labels"] = serde_json::json!(l);
            v["loss_mask"] = serde_json::json!(m);
        }
        println!("{v}");
    } else {
        println!("{:>6}  {:>5}  {:>4}  token", "id", "noise", "loss");
        for k in 0..enc.len() {
            let loss = enc
                .loss_mask
                .as_ref()
                .map_or("-".to_string(), |l| l[k].to_string());
            println!(
                "{:>6}  {:>5}  {:>4}  {:?}",
                enc.input_ids[k], enc.noise_mask[k], loss, tokens[k]
            );
        }
    }
    Ok(())
}
