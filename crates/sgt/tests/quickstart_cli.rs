//! `sgt quickstart` with a tiny step count on the bundled model: every stage runs, the chat goes
//! through the proxy and the server, the report holds its numbers and plots, and a second run
//! resumes instead of starting over.

mod common;

#[test]
fn quickstart_runs_every_stage_writes_the_report_and_resumes() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("qs");
    let o = out.to_string_lossy().to_string();
    let args = [
        "quickstart",
        "--output",
        &o,
        "--steps",
        "2",
        "--prompts",
        "8",
        "--held-out",
        "3",
        "--max-new-tokens",
        "24",
        "--attack-epochs",
        "1",
    ];
    let run = |args: &[&str]| {
        let r = common::sgt().args(args).output().expect("spawn");
        let (so, se) = (
            String::from_utf8_lossy(&r.stdout).to_string(),
            String::from_utf8_lossy(&r.stderr).to_string(),
        );
        assert!(r.status.success(), "quickstart failed:\n{so}\n{se}");
        (so, se)
    };
    let (stdout, stderr) = run(&args);
    for stage in [
        "[1/7]", "[2/7]", "[3/7]", "[4/7]", "[5/7]", "[6/7]", "[7/7]",
    ] {
        assert!(stderr.contains(stage), "stage {stage} missing:\n{stderr}");
    }
    assert!(stderr.contains("sha256 ok"), "{stderr}");
    assert!(stderr.contains("server and proxy shut down"), "{stderr}");
    assert!(
        stdout.contains("You asked:        What is the capital of France?"),
        "{stdout}"
    );
    assert!(stdout.contains("The model said:"), "{stdout}");
    assert!(stdout.contains("nearest neighbour:"), "{stdout}");
    assert!(stdout.contains("no text or token ids"), "{stdout}");

    let report = out.join("report");
    for f in [
        "report.json",
        "summary.md",
        "sigma_over_norm.png",
        "recovery_by_position.png",
    ] {
        let p = report.join(f);
        assert!(
            p.exists() && std::fs::metadata(&p).expect("meta").len() > 100,
            "{f}"
        );
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).expect("read"))
            .expect("json");
    // Clean embeddings are recovered exactly; the transformed ones are measured.
    assert_eq!(r["clean"]["nn_top1_l2"], 1.0, "{r}");
    assert_eq!(r["clean"]["next_token_agreement"], 1.0);
    let t = &r["transformed"];
    for k in ["nn_top1_l2", "nn_top1_cosine", "next_token_agreement"] {
        let v = t[k].as_f64().expect(k);
        assert!((0.0..=1.0).contains(&v), "{k} = {v}");
    }
    assert!(t["transformed_tokens"].as_u64().expect("n") > 0);
    assert!(r["sigma_over_norm"]["median"].as_f64().expect("σ") > 0.0);
    assert!(!r["recovery_by_position"]
        .as_array()
        .expect("buckets")
        .is_empty());
    // The privacy headline: attacks trained on the frozen SGT, the strongest named.
    let f = &r["fresh_attacks"];
    let attacks = f["attacks"].as_object().expect("attacks");
    for k in [
        "nearest_neighbour_l2",
        "learned_mlp",
        "layer6_probe",
        "layer3_probe",
        "layer18_probe",
        "layer6_probe_on_sgt",
    ] {
        let v = attacks[k]["top1"].as_f64().expect(k);
        assert!((0.0..=1.0).contains(&v), "{k} = {v}");
    }
    let strongest = f["strongest"].as_str().expect("strongest");
    let top = f["strongest_top1"].as_f64().expect("top1");
    assert!(
        attacks.values().all(|a| a["top1"].as_f64() <= Some(top)),
        "{f}"
    );
    assert_eq!(attacks[strongest]["top1"].as_f64(), Some(top));
    assert_eq!(f["attacker_prompts"], 5);
    let chat = &r["extra"]["chat"];
    assert_eq!(
        chat["strongest_attack"].as_str(),
        Some(strongest.replace('_', " ").as_str())
    );
    assert!(
        stdout.contains(&format!("{}:", strongest.replace('_', " "))),
        "{stdout}"
    );
    let md = std::fs::read_to_string(report.join("summary.md")).expect("md");
    assert!(
        md.contains("Strongest attack trained on the frozen SGT"),
        "{md}"
    );
    assert_eq!(r["extra"]["steps"], 2);
    assert_eq!(r["extra"]["chat"]["generate_requests_seen_by_server"], 1);
    let answer = r["extra"]["chat"]["answer"].as_str().expect("answer");
    assert!(!answer.trim().is_empty());
    assert!(out.join("artefact/config.json").exists());

    // Again: the data are reused and training resumes from its last checkpoint (here the end).
    let (_, stderr) = run(&args);
    assert!(stderr.contains("reusing"), "{stderr}");
    assert!(stderr.contains("resumed from step 2"), "{stderr}");
    assert!(report.join("report.json").exists());
}
