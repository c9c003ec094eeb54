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
            "[data]\nconversations = {d:?}\nheld_out = 1\nmax_length = 96\n\
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
    // Training ends with attacks trained on the frozen SGT; the probe reads the distillation
    // layer, and the headline is the strongest of them.
    let f = &v["fresh_attacks"];
    let attacks = f["attacks"].as_object().expect("fresh attacks");
    let nn = attacks["nearest_neighbour_l2"]["top1"]
        .as_f64()
        .expect("nn");
    // Probes at the distillation layer (2), halfway to the input (1) and to the output (16 of
    // SmolLM2's 30), at a fifth of the depth (6), and one trained on the SGT's own layer-2
    // states (the provider holding the artefact).
    for k in [
        "layer2_probe",
        "layer1_probe",
        "layer16_probe",
        "layer6_probe",
        "layer2_probe_on_sgt",
    ] {
        assert!(attacks[k]["top1"].as_f64().is_some(), "{k}: {f}");
    }
    assert!(attacks["learned_mlp"]["top1"].as_f64().is_some(), "{f}");
    assert!(
        f["strongest_top1"].as_f64().expect("strongest") >= nn,
        "{f}"
    );
    assert_eq!(f["attacker_prompts"], 2);
    assert!(out.join("fresh_attacks.json").exists());
    // Every periodic evaluation also trained an inverter on the layer as it was then.
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    let evals: Vec<serde_json::Value> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["kind"] == "eval")
        .collect();
    assert!(!evals.is_empty());
    for e in &evals {
        let p = &e["privacy"];
        let top = p["strongest_top1"].as_f64().expect("strongest");
        assert!(
            p["attacks"]["learned_mlp"]
                .as_f64()
                .is_some_and(|m| m <= top),
            "{e}"
        );
    }
    assert!(summary_has_privacy(&v), "{v}");
    // `sgt text eval` on the same layer: the clean-state probes (which do not depend on the
    // SGT) are the ones training kept, so they read exactly the same tokens.
    let e = common::sgt()
        .args([
            "text",
            "eval",
            "--config",
            cfg.to_str().expect("p"),
            "--sgt",
        ])
        .arg(out.join("sgt"))
        .output()
        .expect("spawn sgt");
    assert!(e.status.success(), "{}", common::stderr(&e));
    assert!(
        common::stderr(&e).contains("(cache)"),
        "{}",
        common::stderr(&e)
    );
    let again: serde_json::Value = serde_json::from_slice(&e.stdout).expect("text eval json");
    for k in [
        "layer2_probe",
        "layer1_probe",
        "layer16_probe",
        "layer6_probe",
    ] {
        assert_eq!(
            again["fresh_attacks"]["attacks"][k]["top1"], attacks[k]["top1"],
            "{k}: {again}"
        );
    }
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

    // The attack suite on the tiny SGT: every mechanism, every attack, a report.
    let qs = dir.path().join("questions.jsonl");
    std::fs::write(
        &qs,
        "{\"question\": \"What is the capital of France?\", \"answers\": [\"Paris\"]}\n\
         {\"question\": \"How many days are in a week?\", \"answers\": [\"seven\", \"7\"]}\n",
    )
    .expect("write");
    let rep = dir.path().join("report");
    let sgt_dir = out.join("sgt");
    let args: Vec<String> = [
        "eval",
        "text",
        "--config",
        cfg.to_str().expect("p"),
        "--sgt",
        sgt_dir.to_str().expect("p"),
        "--questions",
        qs.to_str().expect("p"),
        "--report",
        rep.to_str().expect("p"),
        "--epochs",
        "1",
        "--beamclean-rows",
        "1",
        "--beam",
        "2",
        "--gaussian",
        "2,32",
        "--metric-dp",
        "32",
        "--sgt-noise-factors",
        "4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let line = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("eval json");
    assert!(v["sgt_strongest_top1"].as_f64().is_some(), "{v}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rep.join("report.json")).expect("report"))
            .expect("json");
    let m = r["mechanisms"].as_array().expect("mechanisms");
    assert_eq!(m.len(), 6, "clean, sgt, 2 gaussian, 1 metric-dp, sgt×4");
    // The scaled SGT keeps the SGT's centres and multiplies its σ (a function of the prompt
    // alone) by 4, and faces the learned MLP.
    assert_eq!(m[5]["name"], "sgt×4");
    let med = |i: usize| m[i]["sigma_over_norm"]["median"].as_f64().expect("median");
    assert!(
        (med(5) / med(1) - 4.0).abs() < 1e-3,
        "{} {}",
        med(5),
        med(1)
    );
    assert!(m[5]["attacks"]["learned_mlp"]["top1"].as_f64().is_some());
    assert_eq!(m[0]["attacks"]["nearest_neighbour_l2"]["top1"], 1.0);
    assert_eq!(m[0]["utility"]["agreement"], 1.0);
    assert_eq!(m[0]["answers_retained"], 1.0);
    for a in [
        "nearest_neighbour_cosine",
        "nearest_neighbour_l2",
        "noise_aware_nearest_neighbour",
        "learned_mlp",
        "learned_transformer",
        "beamclean",
        "activation_probe",
    ] {
        let top1 = m[1]["attacks"][a]["top1"].as_f64().expect(a);
        assert!((0.0..=1.0).contains(&top1), "{a}: {top1}");
    }
    // The provider's probe reads every mechanism's layer-k states, clean included.
    for mech in m {
        let p = mech["attacks"]["activation_probe"]["top1"].as_f64();
        assert!(p.is_some_and(|p| (0.0..=1.0).contains(&p)), "{mech}");
    }
    assert!(m[1]["information"]["mutual_information_nats"]
        .as_f64()
        .is_some());
    // Noise as large as 32× the table's RMS per feature destroys more than a little.
    let (g2, g32) = (
        &m[2]["attacks"]["nearest_neighbour_l2"]["top1"],
        &m[3]["attacks"]["nearest_neighbour_l2"]["top1"],
    );
    assert!(g32.as_f64() <= g2.as_f64(), "{g2} {g32}");
    for f in [
        "summary.md",
        "privacy_utility.png",
        "privacy_utility_answers.png",
        "sigma_over_norm.png",
    ] {
        assert!(rep.join(f).exists(), "missing {f}");
    }
    // A malformed question file is named.
    std::fs::write(&qs, "{\"question\": 1}\n").expect("write");
    let e = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(String::from_utf8_lossy(&e.stderr).contains("questions.jsonl line 1"));

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

/// The training summary carries the last periodic privacy reading.
fn summary_has_privacy(v: &serde_json::Value) -> bool {
    v["final_privacy"]["strongest_top1"].as_f64().is_some()
}

/// `sgt text apply --preview` reads the prompt with attacks trained on the frozen artefact and
/// leads with the strongest on held-out prompts; a second preview reuses the trained attackers.
#[test]
fn apply_preview_reads_the_prompt_with_the_strongest_fresh_attack() {
    let dir = tempfile::tempdir().expect("tmp");
    let art = dir.path().join("artefact");
    let art_s = art.to_string_lossy().to_string();
    ok(&["text", "export", "--init-only", "--output", &art_s]);
    let prompt = "Which rivers flow through Vienna and Budapest?";
    let args = [
        "text",
        "apply",
        "--sgt",
        &art_s,
        "--prompt",
        prompt,
        "--preview",
        "--pii",
        "off",
        "--attack-epochs",
        "1",
        "--attack-prompts",
        "40",
        "--probe-layers",
        "2",
    ];
    let run = || {
        let o = common::sgt().args(args).output().expect("spawn sgt");
        assert!(o.status.success(), "{}", common::stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        (v, common::stderr(&o))
    };
    let (v, _) = run();
    let p = &v["preview"];
    let attacks = p["attacks"].as_object().expect("attacks");
    for k in [
        "nearest_neighbour_l2",
        "learned_mlp",
        "layer2_probe",
        "layer2_probe_on_sgt",
    ] {
        assert!(attacks[k]["recovered"].as_f64().is_some(), "{k}: {p}");
    }
    let top = p["strongest_held_out_recovered"].as_f64().expect("top");
    for (k, a) in attacks {
        assert!(
            a["held_out_recovered"].as_f64().expect("held") <= top,
            "{k}: {p}"
        );
    }
    assert_eq!(
        attacks[p["strongest_attack"].as_str().expect("name")]["held_out_recovered"].as_f64(),
        Some(top)
    );
    assert_eq!(p["attackers"]["trained_on_prompts"], 16);
    assert_eq!(p["attackers"]["held_out_prompts"], 24);
    // The untrained layer barely moves the embeddings: the strongest attack reads the prompt.
    assert!(top > 0.9, "{p}");
    assert!(
        p["strongest_reads"]
            .as_str()
            .expect("reads")
            .contains(prompt),
        "{p}"
    );
    // The second preview takes the attackers trained on this artefact from the cache.
    let (again, err) = run();
    assert!(err.contains("MLP inverter: trained before"), "{err}");
    assert!(err.contains("on the SGT's states: trained before"), "{err}");
    assert_eq!(
        again["preview"]["strongest_held_out_recovered"],
        p["strongest_held_out_recovered"]
    );
    // Too little attacker text is refused with the minimum.
    let mut few = args.to_vec();
    let n = few.len();
    few[n - 3] = "10";
    let e = fails(&few);
    assert!(
        common::stderr(&e).contains("at least 32 prompts"),
        "{}",
        common::stderr(&e)
    );
}

/// `--precision bf16` applies the artefact with bf16 products (the same shape out); an unknown
/// precision is refused with the choices.
#[test]
fn apply_takes_a_precision_and_names_the_choices() {
    let dir = tempfile::tempdir().expect("tmp");
    let art = dir.path().join("artefact");
    let art_s = art.to_string_lossy().to_string();
    ok(&["text", "export", "--init-only", "--output", &art_s]);
    let out = |p: &str| dir.path().join(format!("{p}.safetensors"));
    for p in ["f32", "bf16"] {
        let o = out(p).to_string_lossy().to_string();
        let args = ["text", "apply", "--sgt", &art_s, "--prompt", "Hello there"];
        ok(&[
            &args[..],
            &[
                "--pii",
                "off",
                "--seed",
                "3",
                "--precision",
                p,
                "--output",
                &o,
            ],
        ]
        .concat());
    }
    let size = |p: &str| std::fs::metadata(out(p)).expect("written").len();
    assert_eq!(size("f32"), size("bf16"));
    let e = fails(&[
        "text",
        "apply",
        "--sgt",
        &art_s,
        "--prompt",
        "Hi",
        "--precision",
        "f64",
    ]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(err.contains("f32 or bf16"), "{err}");
}
