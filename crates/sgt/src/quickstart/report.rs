//! The quickstart's report: the fresh attacks on the frozen SGT (the privacy headline), the
//! quick evaluation of the clean embeddings and of the SGT on the held-out conversations, the
//! per-token profile, and what the chat stage saw.

use super::services::{ChatResult, QUESTION};
use anyhow::Result;
use stainedglass_core::NoiseRng;
use stainedglass_eval::text::fresh::FreshAttackReport;
use stainedglass_metrics::{privacy_profile, EmbeddingIndex, QuickEval};
use stainedglass_models::text_sgt::TransformerCloak;
use stainedglass_text::TextTokenizer;
use stainedglass_train::text::{TextTrainConfig, TrainSummary};
use std::path::Path;
use std::sync::Arc;

/// Writes the report into `dir`; returns the SGT's quick evaluation.
#[allow(clippy::too_many_arguments)]
pub fn write_report(
    cfg: &TextTrainConfig,
    model: &stainedglass_models::llm::Llama,
    tok: Arc<TextTokenizer>,
    cloak: &TransformerCloak,
    summary: &TrainSummary,
    dir: &Path,
    chat: &ChatResult,
    fresh: &FreshAttackReport,
) -> Result<QuickEval> {
    eprintln!("  nearest-neighbour attacks and next-token agreement on the held-out conversations");
    let clean =
        stainedglass_train::text::held_out_eval(cfg, model, tok.clone(), cloak, None, false)?;
    let tr = stainedglass_train::text::held_out_eval(cfg, model, tok.clone(), cloak, None, true)?;
    let rows = stainedglass_train::text::held_out_rows(cfg, &tok)?;
    let index = EmbeddingIndex::new(model.embedding_table())?;
    let profile = privacy_profile(
        model,
        cloak,
        &index,
        &rows,
        &mut NoiseRng::seeded(cfg.train.seed ^ 0x9F),
    )?;
    stainedglass_eval::text::write_quick_report(
        dir,
        &stainedglass_eval::text::QuickReportInput {
            title: format!(
                "Quick report: text SGT for SmolLM2-135M-Instruct after {} steps",
                summary.steps
            ),
            clean: &clean,
            transformed: &tr,
            sigma_over_norm: &profile.sigma_over_norm,
            recovery_by_position: &profile.recovery_by_position,
            fresh: Some(fresh),
            extra: serde_json::json!({
                "steps": summary.steps,
                "held_out_conversations": rows.len(),
                "chat": {
                    "question": QUESTION,
                    "answer": chat.answer,
                    "clean_prompt": chat.clean,
                    "server_reads": chat.server_reads,
                    "message_tokens_recovered": chat.recovered,
                    "strongest_attack": chat.strongest_attack,
                    "strongest_attack_reads": chat.strongest_reads,
                    "message_tokens_recovered_by_strongest_attack": chat.strongest_recovered,
                    "generate_requests_seen_by_server": chat.requests_seen,
                },
            }),
        },
    )?;
    Ok(tr)
}
