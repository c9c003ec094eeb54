//! `sgt vision …` subcommands.

mod apply;
mod commands;
pub(crate) mod data;
pub(crate) mod eval;

pub use commands::{run, VisionCommand};
