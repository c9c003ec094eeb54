//! Helpers for the CLI tests: run the `sgt` binary on the real assets.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn assets() -> PathBuf {
    stainedglass_test_support::assets()
}

pub fn sgt() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sgt"));
    c.env("SGT_ASSETS", assets());
    c
}

/// Runs `sgt args…`, panicking with stderr on failure; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = sgt().args(args).output().expect("spawn sgt");
    assert!(
        out.status.success(),
        "sgt {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs `sgt args…` expecting failure; returns the output.
pub fn fails(args: &[&str]) -> Output {
    let out = sgt().args(args).output().expect("spawn sgt");
    assert!(!out.status.success(), "sgt {args:?} unexpectedly succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "sgt {args:?} panicked:\n{err}");
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A digits classifier trained once per test binary.
pub fn digits_classifier() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sgt-test-digits-clf-{}", std::process::id()));
        let d = dir.to_string_lossy().to_string();
        ok(&[
            "vision",
            "train-classifier",
            "--dataset",
            "digits",
            "--epochs",
            "8",
            "--batch-size",
            "64",
            "--output",
            &d,
            "--fresh",
        ]);
        dir.join("model")
    })
}

/// Starts `sgt args…`, kills it as soon as its first checkpoint under `out` exists, and checks
/// that it had not finished by then.
pub fn kill_after_first_checkpoint(args: &[String], out: &Path) {
    let mut child = sgt().args(args).spawn().expect("spawn sgt");
    let start = std::time::Instant::now();
    while !out.join("checkpoints/latest").exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "no checkpoint written"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().expect("kill sgt");
    let status = child.wait().expect("wait for sgt");
    assert!(
        !status.success(),
        "the run finished before it could be interrupted"
    );
}
