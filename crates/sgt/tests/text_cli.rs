//! `sgt text prepare-data`, `sgt text train` and `sgt text curve` end to end with tiny settings.

mod common;

use common::{fails, ok};

#[test]
fn prepare_train_and_plot_a_tiny_text_sgt() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("convs.jsonl");
    let d = data.to_str().expect("path");
    ok(&[
        "text",
        "prepare-data",
        "--out",
        d,
        "--limit",
        "3",
        "--max-new-tokens",
        "6",
        "--batch",
        "2",
    ]);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&data)
        .expect("data")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 3);
    let first = lines[0]["messages"].as_array().expect("messages");
    assert_eq!(first[0]["role"], "user");
    assert_eq!(first[1]["role"], "assistant");
    assert!(!first[1]["content"].as_str().expect("reply").is_empty());
    // A second call reuses the cached file.
    ok(&["text", "prepare-data", "--out", d, "--limit", "3"]);

    let cfg = dir.path().join("cfg.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\nconversations = {d:?}\nheld_out = 1\nmax_length = 40\n\
             [loss]\ndistillation_layer_index = 2\n\
             [train]\nsteps = 2\nbatch_size = 2\nwarmup_steps = 1\neval_every = 1\n\
             checkpoint_every = 1\n"
        ),
    )
    .expect("write");
    let out = dir.path().join("run");
    let o = out.to_str().expect("path");
    let summary = ok(&[
        "text",
        "train",
        "--config",
        cfg.to_str().expect("p"),
        "--output",
        o,
    ]);
    let v: serde_json::Value = serde_json::from_str(summary.trim()).expect("summary json");
    assert_eq!(v["steps"], 2);
    assert_eq!(v["clean_eval"]["nn_top1_cosine"], 1.0);
    assert!(out.join("sgt/config.json").exists() && out.join("sgt/model.safetensors").exists());
    let plots = dir.path().join("plots");
    ok(&[
        "text",
        "curve",
        "--metrics",
        out.join("metrics.jsonl").to_str().expect("p"),
        "--output",
        plots.to_str().expect("p"),
    ]);
    assert!(plots.join("curve_steps.png").exists() && plots.join("curve_tradeoff.png").exists());

    // Bad configs are named.
    std::fs::write(&cfg, "[train]\nsteps = 0\n").expect("write");
    let e = fails(&[
        "text",
        "train",
        "--config",
        cfg.to_str().expect("p"),
        "--output",
        o,
    ]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("steps"));
}
