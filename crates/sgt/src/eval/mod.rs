//! `sgt eval text|vision --report <dir>`: the attack and evaluation suite with its reports.

pub mod text;
pub mod vision;

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
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Text(a) => text::run(a),
        EvalCommand::Vision(a) => vision::run(a),
    }
}
