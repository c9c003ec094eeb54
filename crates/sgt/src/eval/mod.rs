//! `sgt eval text|vision --report <dir>`: the attack and evaluation suite with its reports;
//! `sgt eval weights`: serving from stored (quantized) weights against the f32 model.

pub mod text;
pub mod vision;
pub mod weights;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Attack a trained text SGT (nearest-neighbour, learned inverters, BeamClean), measure its
    /// utility and information, compare with Gaussian and metric-DP baselines; write a report.
    Text(text::EvalTextArgs),
    /// Evaluate a vision SGT: accuracy, SSIM/PSNR, masking, reconstruction attack, MI; with
    /// --report, also against Gaussian-noise baselines, written as a report.
    Vision(vision::EvalVisionArgs),
    /// Compare serving from the weights as stored (quantized GGUF) with the f32 model: answer
    /// accuracy clean and through an SGT, the SGT's next-token agreement, and how often the two
    /// models predict the same next token.
    Weights(weights::EvalWeightsArgs),
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Text(a) => text::run(a),
        EvalCommand::Vision(a) => vision::run(a),
        EvalCommand::Weights(a) => weights::run(a),
    }
}
