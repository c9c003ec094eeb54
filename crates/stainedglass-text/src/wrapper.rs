//! The tokenizer wrapper of `docs/spec.md` §6: chat or instruction prompts → `input_ids`,
//! `attention_mask`, `noise_mask` and, with `include_labels`, `labels` and `loss_mask`.
//!
//! The conversation is rendered through the chat template once and tokenized once, so the ids
//! are exactly the plain template's tokenization. Message contents are located in the rendered
//! text by rendering again with unique placeholders; a token belongs to a message's content if
//! its byte span overlaps it. By default only content tokens are transformed (`noise_mask = 1`);
//! template scaffolding and special tokens stay clean.

use crate::error::{Error, Result};
use crate::prompt::{Message, PromptInput, Role};
use crate::tokenizer::TextTokenizer;
use candle_core::{Device, Tensor};
use std::sync::Arc;

/// How a batch is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// No padding: every row of a batch must have the same length.
    None,
    /// Pad to the longest row.
    Longest,
    /// Pad to `max_length`.
    MaxLength,
}

/// Which end padding or truncation applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrapperOptions {
    pub include_labels: bool,
    /// Loss only on assistant replies (and the token that ends them).
    pub ignore_prompt_loss: bool,
    /// Transform every token, scaffolding and specials included.
    pub transform_all_tokens: bool,
    /// End the text where the assistant's reply begins (for generation).
    pub add_generation_prompt: bool,
    pub padding: Padding,
    pub padding_side: Side,
    pub max_length: Option<usize>,
    /// Cut prompts longer than `max_length` instead of failing.
    pub truncation: bool,
    pub truncation_side: Side,
}

impl Default for WrapperOptions {
    fn default() -> Self {
        Self {
            include_labels: false,
            ignore_prompt_loss: true,
            transform_all_tokens: false,
            add_generation_prompt: false,
            padding: Padding::Longest,
            padding_side: Side::Left,
            max_length: None,
            truncation: false,
            truncation_side: Side::Left,
        }
    }
}

/// One encoded prompt: aligned per-token vectors. `labels` follow the Hugging Face convention
/// (unshifted ids, `-100` where `loss_mask == 0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPrompt {
    pub input_ids: Vec<u32>,
    pub attention_mask: Vec<u8>,
    pub noise_mask: Vec<u8>,
    pub labels: Option<Vec<i64>>,
    pub loss_mask: Option<Vec<u8>>,
}

impl EncodedPrompt {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    fn keep(&mut self, start: usize, end: usize) {
        self.input_ids = self.input_ids[start..end].to_vec();
        self.attention_mask = self.attention_mask[start..end].to_vec();
        self.noise_mask = self.noise_mask[start..end].to_vec();
        if let Some(l) = &mut self.labels {
            *l = l[start..end].to_vec();
        }
        if let Some(l) = &mut self.loss_mask {
            *l = l[start..end].to_vec();
        }
    }

    fn pad(&mut self, to: usize, pad_id: u32, side: Side) {
        let n = to.saturating_sub(self.len());
        fn put<T: Clone>(v: &mut Vec<T>, n: usize, x: T, side: Side) {
            match side {
                Side::Right => v.extend(std::iter::repeat_n(x, n)),
                Side::Left => {
                    v.splice(0..0, std::iter::repeat_n(x, n));
                }
            }
        }
        put(&mut self.input_ids, n, pad_id, side);
        put(&mut self.attention_mask, n, 0, side);
        put(&mut self.noise_mask, n, 0, side);
        if let Some(l) = &mut self.labels {
            put(l, n, -100, side);
        }
        if let Some(l) = &mut self.loss_mask {
            put(l, n, 0, side);
        }
    }
}

/// A padded batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBatch {
    pub rows: Vec<EncodedPrompt>,
}

/// The batch as tensors: ids `u32`, masks `u8`, labels `i64`, all `(batch, seq_len)`.
pub struct BatchTensors {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub noise_mask: Tensor,
    pub labels: Option<Tensor>,
    pub loss_mask: Option<Tensor>,
}

impl EncodedBatch {
    pub fn to_tensors(&self, device: &Device) -> Result<BatchTensors> {
        let b = self.rows.len();
        let t = self.rows.first().map_or(0, EncodedPrompt::len);
        let cat_u32 = |f: &dyn Fn(&EncodedPrompt) -> Vec<u32>| -> Result<Tensor> {
            let v: Vec<u32> = self.rows.iter().flat_map(f).collect();
            Ok(Tensor::from_vec(v, (b, t), device)?)
        };
        let cat_u8 = |f: &dyn Fn(&EncodedPrompt) -> Vec<u8>| -> Result<Tensor> {
            let v: Vec<u8> = self.rows.iter().flat_map(f).collect();
            Ok(Tensor::from_vec(v, (b, t), device)?)
        };
        let labels = if self.rows.iter().all(|r| r.labels.is_some()) && b > 0 {
            let v: Vec<i64> = self
                .rows
                .iter()
                .flat_map(|r| r.labels.clone().unwrap_or_default())
                .collect();
            Some(Tensor::from_vec(v, (b, t), device)?)
        } else {
            None
        };
        let loss_mask = if self.rows.iter().all(|r| r.loss_mask.is_some()) && b > 0 {
            Some(cat_u8(&|r| r.loss_mask.clone().unwrap_or_default())?)
        } else {
            None
        };
        Ok(BatchTensors {
            input_ids: cat_u32(&|r| r.input_ids.clone())?,
            attention_mask: cat_u8(&|r| r.attention_mask.clone())?,
            noise_mask: cat_u8(&|r| r.noise_mask.clone())?,
            labels,
            loss_mask,
        })
    }
}

/// Placeholder for message `i`: private-use characters that no tokenizer merges with text.
fn placeholder(i: usize) -> String {
    format!("\u{F8F0}{i}\u{F8F1}")
}

/// Byte span of each message's content in the rendered text, plus that text.
struct Rendered {
    text: String,
    spans: Vec<(usize, usize)>,
}

/// Encodes prompts for the model.
#[derive(Clone)]
pub struct TokenizerWrapper {
    tokenizer: Arc<TextTokenizer>,
    pub options: WrapperOptions,
}

impl TokenizerWrapper {
    pub fn new(tokenizer: Arc<TextTokenizer>, options: WrapperOptions) -> Self {
        Self { tokenizer, options }
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The shared tokenizer (to build a wrapper with other options).
    pub fn tokenizer_arc(&self) -> Arc<TextTokenizer> {
        self.tokenizer.clone()
    }

    fn validate(messages: &[Message]) -> Result<()> {
        if messages.is_empty() {
            return Err(Error::Prompt("the conversation has no messages".into()));
        }
        for (i, m) in messages.iter().enumerate() {
            if m.role == Role::System && i != 0 {
                return Err(Error::Prompt(format!(
                    "message {i} is a system message; only the first message may be one"
                )));
            }
        }
        Ok(())
    }

    fn render(&self, messages: &[Message]) -> Result<Rendered> {
        let tmpl = self.tokenizer.chat_template()?;
        let agp = self.options.add_generation_prompt;
        let text = tmpl.render(messages, agp)?;
        let marked: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message::new(m.role, placeholder(i)))
            .collect();
        let skeleton = tmpl.render(&marked, agp)?;
        // Split the skeleton at the placeholders, in order.
        let mut pieces = Vec::new();
        let mut rest = skeleton.as_str();
        for i in 0..messages.len() {
            let ph = placeholder(i);
            let at = rest.find(&ph).ok_or_else(|| {
                Error::Template(format!(
                    "the template does not output message {i}'s content verbatim; use \
                     transform_all_tokens or another template"
                ))
            })?;
            pieces.push(&rest[..at]);
            rest = &rest[at + ph.len()..];
        }
        for trim in [false, true] {
            let mut s = String::with_capacity(text.len());
            let mut spans = Vec::new();
            for (i, m) in messages.iter().enumerate() {
                s.push_str(pieces[i]);
                let c = if trim { m.content.trim() } else { &m.content };
                spans.push((s.len(), s.len() + c.len()));
                s.push_str(c);
            }
            s.push_str(rest);
            if s == text {
                return Ok(Rendered { text, spans });
            }
        }
        Err(Error::Template(
            "the template changes message contents in a way the wrapper cannot align".into(),
        ))
    }

    /// Encodes one prompt (no padding).
    pub fn encode(&self, prompt: &PromptInput) -> Result<EncodedPrompt> {
        if let PromptInput::Instruction(i) = prompt {
            if i.instruction.trim().is_empty() {
                return Err(Error::Prompt("the instruction is empty".into()));
            }
        }
        let messages = prompt.messages();
        Self::validate(&messages)?;
        let r = self.render(&messages)?;
        let (ids, offsets) = self.tokenizer.encode_with_offsets(&r.text)?;
        let n = ids.len();
        // Which message each token belongs to, one binary search per token.
        let spans = MessageSpans::new(&r.spans);
        let owner: Vec<Option<usize>> = offsets.iter().map(|&o| spans.owner(o)).collect();
        let noise_mask: Vec<u8> = if self.options.transform_all_tokens {
            vec![1; n]
        } else {
            owner.iter().map(|m| u8::from(m.is_some())).collect()
        };
        let mut enc = EncodedPrompt {
            attention_mask: vec![1; n],
            input_ids: ids,
            noise_mask,
            labels: None,
            loss_mask: None,
        };
        if self.options.include_labels {
            let loss: Vec<u8> = if self.options.ignore_prompt_loss {
                let assistant =
                    |m: Option<usize>| m.is_some_and(|m| messages[m].role == Role::Assistant);
                let mut l: Vec<u8> = owner.iter().map(|&m| u8::from(assistant(m))).collect();
                // The token that closes each reply (end of turn) is learned too.
                for (m, &(_, e)) in messages.iter().zip(&r.spans) {
                    if m.role != Role::Assistant {
                        continue;
                    }
                    if let Some(k) = first_token_at_or_after(&offsets, e) {
                        if self.tokenizer.is_special(enc.input_ids[k]) {
                            l[k] = 1;
                        }
                    }
                }
                l
            } else {
                vec![1; n]
            };
            enc.labels = Some(
                enc.input_ids
                    .iter()
                    .zip(&loss)
                    .map(|(&id, &m)| if m == 1 { id as i64 } else { -100 })
                    .collect(),
            );
            enc.loss_mask = Some(loss);
        }
        if let Some(max) = self.options.max_length {
            if n > max {
                if !self.options.truncation {
                    return Err(Error::Prompt(format!(
                        "the prompt has {n} tokens, more than max_length {max}; shorten it or \
                         enable truncation"
                    )));
                }
                match self.options.truncation_side {
                    Side::Left => enc.keep(n - max, n),
                    Side::Right => enc.keep(0, max),
                }
            }
        }
        Ok(enc)
    }

    /// Encodes and pads a batch.
    pub fn encode_batch(&self, prompts: &[PromptInput]) -> Result<EncodedBatch> {
        if prompts.is_empty() {
            return Err(Error::Prompt("the batch is empty".into()));
        }
        let mut rows = prompts
            .iter()
            .map(|p| self.encode(p))
            .collect::<Result<Vec<_>>>()?;
        let longest = rows.iter().map(EncodedPrompt::len).max().unwrap_or(0);
        let target = match self.options.padding {
            Padding::None => {
                if rows.iter().any(|r| r.len() != longest) {
                    return Err(Error::Prompt(
                        "rows differ in length and padding is off; use Padding::Longest".into(),
                    ));
                }
                longest
            }
            Padding::Longest => longest,
            Padding::MaxLength => self
                .options
                .max_length
                .ok_or_else(|| Error::Prompt("Padding::MaxLength needs max_length".into()))?,
        };
        let pad = self.tokenizer.pad_id().ok_or_else(|| {
            Error::Prompt("the tokenizer has no pad or eos token to pad with".into())
        })?;
        for r in &mut rows {
            r.pad(target, pad, self.options.padding_side);
        }
        Ok(EncodedBatch { rows })
    }
}

/// The byte spans of the messages' contents in the rendered text (in order, disjoint), to
/// find which message a token belongs to in O(log messages).
struct MessageSpans {
    /// `(start, end, message index)` of every non-empty span, in order.
    spans: Vec<(usize, usize, usize)>,
}

impl MessageSpans {
    fn new(spans: &[(usize, usize)]) -> Self {
        Self {
            spans: spans
                .iter()
                .enumerate()
                .filter(|(_, &(s, e))| e > s)
                .map(|(i, &(s, e))| (s, e, i))
                .collect(),
        }
    }

    /// The message whose content the token with byte offsets `(ts, te)` overlaps (a
    /// zero-width token belongs to the span it sits in).
    fn owner(&self, (ts, te): (usize, usize)) -> Option<usize> {
        let j = self.spans.partition_point(|&(_, e, _)| e <= ts);
        let &(s, e, i) = self.spans.get(j)?;
        let overlaps = if ts == te {
            s <= ts && ts < e
        } else {
            ts < e && te > s
        };
        overlaps.then_some(i)
    }
}

/// The first token (in order) that starts at or after byte `at`.
fn first_token_at_or_after(offsets: &[(usize, usize)], at: usize) -> Option<usize> {
    if offsets.windows(2).all(|w| w[0].0 <= w[1].0) {
        let k = offsets.partition_point(|&(ts, _)| ts < at);
        (k < offsets.len()).then_some(k)
    } else {
        offsets.iter().position(|&(ts, _)| ts >= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary search gives what checking every span gives, for every token shape.
    #[test]
    fn message_spans_find_the_owner_like_a_scan() {
        let raw = [(3, 7), (7, 7), (9, 12), (20, 21)];
        let spans = MessageSpans::new(&raw);
        let scan = |(ts, te): (usize, usize)| {
            raw.iter().position(|&(s, e)| {
                e > s
                    && if ts == te {
                        s <= ts && ts < e
                    } else {
                        ts < e && te > s
                    }
            })
        };
        for ts in 0..24 {
            for te in ts..24 {
                assert_eq!(spans.owner((ts, te)), scan((ts, te)), "token ({ts}, {te})");
            }
        }
        let offsets = [(0, 2), (2, 5), (5, 5), (9, 11)];
        assert_eq!(first_token_at_or_after(&offsets, 5), Some(2));
        assert_eq!(first_token_at_or_after(&offsets, 12), None);
        assert_eq!(first_token_at_or_after(&[(4, 5), (0, 1)], 1), Some(0));
    }
}
