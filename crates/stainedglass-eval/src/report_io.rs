//! Writing report directories: the folder, and each file atomically.

use crate::{Error, Result};
use std::path::Path;

/// Creates the report folder `dir` (and its parents).
pub(crate) fn create_report_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Output {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes `dir/name` atomically.
pub(crate) fn write_report_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    stainedglass_core::io::atomic_write(&dir.join(name), bytes).map_err(|e| Error::Output {
        path: dir.join(name),
        reason: e.to_string(),
    })
}
