//! `sgt vision …` subcommands.

mod commands;
mod data;

pub use commands::{run, VisionCommand};
