//! Utility of a mechanism: next-token top-1 agreement and KL against the clean model on the
//! held-out replies (teacher-forced), the perplexity of those replies, and answer accuracy on a
//! held-out question set.

use super::mechanism::{Applied, Mechanism};
use crate::{Error, Result};
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};
use stainedglass_core::NoiseRng;
use stainedglass_models::llm::{Llama, RowRequest, SamplingParams, Stop};
use stainedglass_text::{
    EncodedPrompt, Message, PromptInput, Role, TextTokenizer, TokenizerWrapper,
};
use std::path::Path;

/// Next-token utility on teacher-forced replies.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NextTokenUtility {
    /// Top-1 agreement with the clean model's prediction.
    pub agreement: f64,
    /// Mean KL(clean ‖ transformed) of next-token distributions, nats.
    pub kl: f64,
    /// Perplexity of the reply tokens given clean prompts.
    pub perplexity_clean: f64,
    /// Perplexity of the reply tokens given transformed prompts.
    pub perplexity_transformed: f64,
    pub predicted_tokens: usize,
}

/// The positions whose next token is a real reply token (loss mask and attention mask 1): where
/// the utility measures compare predictions.
fn reply_positions(r: &EncodedPrompt) -> Vec<u32> {
    let t = r.len();
    let lm = r.loss_mask.as_deref().unwrap_or(&[]);
    (0..t.saturating_sub(1))
        .filter(|&i| lm.get(i + 1) == Some(&1) && r.attention_mask[i + 1] == 1)
        .map(|i| i as u32)
        .collect()
}

/// Compares the model on `clean[i]` and `transformed[i]` (both `(1, t, d)`) at the positions
/// whose next token is a reply token (`loss_mask`).
pub fn next_token_utility(
    model: &Llama,
    rows: &[EncodedPrompt],
    clean: &[Tensor],
    transformed: &[Applied],
) -> Result<NextTokenUtility> {
    let dev = model.device();
    let (mut agree, mut kl, mut n) = (0usize, 0f64, 0usize);
    let (mut nll_c, mut nll_t) = (0f64, 0f64);
    for ((r, x), xt) in rows.iter().zip(clean).zip(transformed) {
        let t = r.len();
        let pos = reply_positions(r);
        if pos.is_empty() {
            continue;
        }
        let next: Vec<u32> = pos.iter().map(|&i| r.input_ids[i as usize + 1]).collect();
        let am = Tensor::from_vec(r.attention_mask.clone(), (1, t), dev)?;
        let pidx = Tensor::new(pos.as_slice(), dev)?;
        let logits = |e: &Tensor| -> Result<Tensor> {
            let l = model.forward_embeds(&e.detach(), Some(&am), Stop::Logits)?;
            Ok(candle_nn::ops::log_softmax(
                &l.squeeze(0)?.index_select(&pidx, 0)?,
                D::Minus1,
            )?)
        };
        let (lc, lt) = (logits(x)?, logits(&xt.transformed)?);
        let ac = lc.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let at = lt.argmax(D::Minus1)?.to_vec1::<u32>()?;
        agree += ac.iter().zip(&at).filter(|(a, b)| a == b).count();
        kl += (lc.exp()? * (&lc - &lt)?)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let nidx = Tensor::new(next.as_slice(), dev)?.unsqueeze(1)?;
        let pick = |l: &Tensor| -> Result<f64> {
            Ok(l.gather(&nidx, 1)?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?)
        };
        nll_c -= pick(&lc)?;
        nll_t -= pick(&lt)?;
        n += pos.len();
    }
    if n == 0 {
        return Err(Error::Input(
            "no reply tokens to predict: the held-out rows need a loss mask (encode with labels)"
                .into(),
        ));
    }
    let nf = n as f64;
    Ok(NextTokenUtility {
        agreement: agree as f64 / nf,
        kl: kl / nf,
        perplexity_clean: (nll_c / nf).exp(),
        perplexity_transformed: (nll_t / nf).exp(),
        predicted_tokens: n,
    })
}

/// How often model `b`'s top-1 next-token prediction is model `a`'s, on the same clean
/// embeddings at the reply positions (e.g. a model served from quantized weights against the
/// f32 one).
pub fn cross_model_agreement(
    a: &Llama,
    b: &Llama,
    rows: &[EncodedPrompt],
    clean: &[Tensor],
) -> Result<f64> {
    let dev = a.device();
    let (mut agree, mut n) = (0usize, 0usize);
    for (r, x) in rows.iter().zip(clean) {
        let t = r.len();
        let pos = reply_positions(r);
        if pos.is_empty() {
            continue;
        }
        let am = Tensor::from_vec(r.attention_mask.clone(), (1, t), dev)?;
        let pidx = Tensor::new(pos.as_slice(), dev)?;
        let top = |m: &Llama| -> Result<Vec<u32>> {
            let l = m.forward_embeds(&x.detach(), Some(&am), Stop::Logits)?;
            Ok(l.squeeze(0)?
                .index_select(&pidx, 0)?
                .argmax(D::Minus1)?
                .to_vec1::<u32>()?)
        };
        let (ta, tb) = (top(a)?, top(b)?);
        agree += ta.iter().zip(&tb).filter(|(x, y)| x == y).count();
        n += pos.len();
    }
    if n == 0 {
        return Err(Error::Input(
            "no reply tokens to predict: the held-out rows need a loss mask (encode with labels)"
                .into(),
        ));
    }
    Ok(agree as f64 / n as f64)
}

/// A held-out question with the strings that count as a right answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    pub question: String,
    pub answers: Vec<String>,
}

/// Reads questions from JSON lines (`{"question": …, "answers": […]}`).
pub fn load_questions(path: &Path) -> Result<Vec<Question>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Input(format!("reading questions {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let q: Question = serde_json::from_str(line).map_err(|e| {
            Error::Input(format!(
                "{} line {}: {e}; expected {{\"question\": \"…\", \"answers\": [\"…\"]}}",
                path.display(),
                i + 1
            ))
        })?;
        if q.answers.is_empty() || q.answers.iter().any(|a| a.trim().is_empty()) {
            return Err(Error::Input(format!(
                "{} line {}: give at least one non-empty answer",
                path.display(),
                i + 1
            )));
        }
        out.push(q);
    }
    if out.is_empty() {
        return Err(Error::Input(format!(
            "{} holds no questions",
            path.display()
        )));
    }
    Ok(out)
}

/// Whether `reply` contains one of `answers` (case-insensitive).
pub fn is_correct(reply: &str, answers: &[String]) -> bool {
    let r = reply.to_lowercase();
    answers.iter().any(|a| r.contains(&a.to_lowercase()))
}

/// Answers of a mechanism to the question set (greedy decoding).
#[derive(Debug, Clone, Serialize)]
pub struct AnswerResult {
    pub accuracy: f64,
    pub correct: Vec<bool>,
    pub replies: Vec<String>,
}

/// Asks every question as a one-turn chat whose prompt goes through `mechanism`, decodes
/// greedily (`max_new_tokens`), and scores the replies. Questions are decoded in batches.
pub fn answer_accuracy(
    model: &Llama,
    wrapper: &TokenizerWrapper,
    tokenizer: &TextTokenizer,
    questions: &[Question],
    mechanism: &dyn Mechanism,
    rng: &mut NoiseRng,
    max_new_tokens: usize,
) -> Result<AnswerResult> {
    let dev = model.device();
    let params = SamplingParams {
        max_new_tokens,
        temperature: 0.0,
        stop_tokens: tokenizer.stop_tokens(),
        ..Default::default()
    };
    let mut embeds = Vec::with_capacity(questions.len());
    for q in questions {
        let enc = wrapper.encode(&PromptInput::Chat(vec![Message::new(
            Role::User,
            q.question.clone(),
        )]))?;
        let t = enc.len();
        let ids = Tensor::from_vec(enc.input_ids.clone(), (1, t), dev)?;
        let x = model.embed(&ids)?;
        let a = mechanism.apply(&x, &enc.attention_mask, &enc.noise_mask, rng)?;
        embeds.push(a.transformed.squeeze(0)?);
    }
    let mut replies = Vec::with_capacity(questions.len());
    for chunk in embeds.chunks(8) {
        let reqs: Vec<RowRequest<'_>> = chunk
            .iter()
            .map(|e| RowRequest {
                embeds: e,
                params: &params,
            })
            .collect();
        for g in model.generate_rows(&reqs, |_, _| true)? {
            replies.push(tokenizer.decode(&g.tokens, true)?);
        }
    }
    let correct: Vec<bool> = replies
        .iter()
        .zip(questions)
        .map(|(r, q)| is_correct(r, &q.answers))
        .collect();
    Ok(AnswerResult {
        accuracy: correct.iter().filter(|&&c| c).count() as f64 / correct.len().max(1) as f64,
        correct,
        replies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_match_case_insensitively() {
        let a = vec!["Paris".to_string()];
        assert!(is_correct("The capital of France is paris.", &a));
        assert!(!is_correct("Lyon", &a));
    }

    #[test]
    fn question_files_are_validated() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("q.jsonl");
        std::fs::write(&p, "{\"question\": \"q\", \"answers\": [\"a\"]}\n\n").expect("write");
        assert_eq!(load_questions(&p).expect("ok").len(), 1);
        std::fs::write(&p, "{\"question\": \"q\", \"answers\": []}\n").expect("write");
        assert!(load_questions(&p).is_err());
        std::fs::write(&p, "{\"question\": \"q\", \"answer\": [\"a\"]}\n").expect("write");
        let e = load_questions(&p).expect_err("unknown field").to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
