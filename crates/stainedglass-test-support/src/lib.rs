//! Dev-only helpers shared by the workspace's tests: where the bundled assets are.
//!
//! Tests are not libraries of the product, so this crate may read `SGT_ASSETS` — the one
//! variable `scripts/test.sh` sets — to find the folder `scripts/setup-assets.sh` filled.
//! The workspace's structural checks (no import cycles between files, file and function
//! lengths, `forbid(unsafe_code)`) live in `tests/architecture.rs`.
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The assets folder: `$SGT_ASSETS` when set, else `assets/` at the workspace root.
pub fn assets() -> PathBuf {
    std::env::var_os("SGT_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("assets"))
}

/// A file under the assets folder that a test needs. Panics with the command that fetches it:
/// a test that needs the real model or data must fail loudly, never skip.
pub fn asset(relative: &str) -> PathBuf {
    let p = assets().join(relative);
    assert!(
        p.exists(),
        "{} is missing: run ./scripts/setup-assets.sh (or set SGT_ASSETS)",
        p.display()
    );
    p
}

/// The bundled SmolLM2-135M-Instruct GGUF.
pub fn smollm2_gguf() -> PathBuf {
    asset("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}
