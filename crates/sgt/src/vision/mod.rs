//! `sgt vision …` subcommands.

mod apply;
mod commands;
mod data;
mod eval;

pub use commands::{run, VisionCommand};
