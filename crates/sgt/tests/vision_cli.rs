//! End-to-end tests of `sgt vision …` on the real digits and Fashion-MNIST data.

mod common;

use candle_core::Device;
use common::*;
use stainedglass_core::io::{load_noise_layer, load_tensors};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|_| serde_json::from_str(s).expect("JSON output"))
}

#[test]
fn digits_pipeline_train_apply_eval() {
    let clf = digits_classifier().to_string_lossy().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sgt");
    let o = out.to_string_lossy().to_string();
    ok(&[
        "vision",
        "train",
        "--dataset",
        "digits",
        "--classifier",
        &clf,
        "--percent-to-mask",
        "0.6",
        "--alpha",
        "0.3",
        "--epochs",
        "20",
        "--batch-size",
        "64",
        "--noise-seed",
        "1",
        "--output",
        &o,
    ]);
    let sgt = out.join("noise_layer").to_string_lossy().to_string();
    let r = json(&ok(&[
        "eval",
        "vision",
        "--dataset",
        "digits",
        "--sgt",
        &sgt,
        "--classifier",
        &clf,
        "--attack-steps",
        "100",
        "--eval-seed",
        "0",
        "--json",
    ]));
    for k in [
        "clean_accuracy",
        "transformed_accuracy",
        "mean_ssim",
        "mean_psnr_db",
        "masked_fraction",
        "reconstruction_psnr_db",
    ] {
        assert!(r[k].as_f64().is_some(), "missing {k} in {r}");
    }
    assert!(r["clean_accuracy"].as_f64().unwrap() > 0.8, "{r}");
    // ⌈0.6·64⌉ = 39 of 64 features suppressed.
    assert!(
        (r["masked_fraction"].as_f64().unwrap() - 39.0 / 64.0).abs() < 1e-6,
        "{r}"
    );
    // The SGT learned noise: σ far above its initial 1e-4 + 3.35e-4·2, images visibly changed.
    assert!(r["mean_sigma"].as_f64().unwrap() > 0.1, "{r}");
    assert!(r["mean_ssim"].as_f64().unwrap() < 0.9, "{r}");
    assert!(r["transformed_accuracy"].as_f64().unwrap() > 0.5, "{r}");

    // The report: SGT against Gaussian pixel noise, with plots and a summary.
    let rep = dir.path().join("report");
    let r = json(&ok(&[
        "eval",
        "vision",
        "--dataset",
        "digits",
        "--sgt",
        &sgt,
        "--classifier",
        &clf,
        "--attack-steps",
        "20",
        "--eval-seed",
        "0",
        "--gaussian",
        "0.05,0.5",
        "--report",
        &rep.to_string_lossy(),
    ]));
    assert!(r["reconstruction_psnr_db"].as_f64().is_some(), "{r}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rep.join("report.json")).unwrap()).unwrap();
    let b = report["gaussian_baselines"].as_array().unwrap();
    assert_eq!(b.len(), 2);
    // More pixel noise: lower similarity to the clean image.
    assert!(b[1]["mean_ssim"].as_f64().unwrap() < b[0]["mean_ssim"].as_f64().unwrap());
    for f in [
        "summary.md",
        "privacy_utility.png",
        "sigma.png",
        "examples.png",
    ] {
        assert!(rep.join(f).exists(), "missing {f}");
    }

    let app = dir.path().join("apply");
    let a = app.to_string_lossy().to_string();
    let r = json(&ok(&[
        "vision",
        "apply",
        "--dataset",
        "digits",
        "--sgt",
        &sgt,
        "--count",
        "5",
        "--output",
        &a,
    ]));
    assert_eq!(r["images"], 5);
    assert_eq!(r["seeded"], false);
    let png = image::open(app.join("grid.png")).unwrap();
    assert_eq!(png.height(), 2 * (8 * 4 + 2));
    let t = load_tensors(&app.join("transformed.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(t["images"].dims(), &[5, 1, 8, 8]);
    // Two unseeded applications differ; two seeded agree.
    let run = |seed: Option<&str>, name: &str| {
        let p = dir.path().join(name).to_string_lossy().to_string();
        let mut args = vec![
            "vision",
            "apply",
            "--dataset",
            "digits",
            "--sgt",
            &sgt,
            "--count",
            "3",
            "--output",
            &p,
        ];
        if let Some(s) = seed {
            args.extend(["--seed", s]);
        }
        ok(&args);
        load_tensors(
            &dir.path().join(name).join("transformed.safetensors"),
            &Device::Cpu,
        )
        .unwrap()["images"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_ne!(run(None, "u1"), run(None, "u2"));
    assert_eq!(run(Some("9"), "s1"), run(Some("9"), "s2"));
}

#[test]
fn interrupted_training_resumes_to_the_same_result() {
    let clf = digits_classifier().to_string_lossy().to_string();
    let dir = tempfile::tempdir().unwrap();
    let args = |out: &str| -> Vec<String> {
        [
            "vision",
            "train",
            "--dataset",
            "digits",
            "--classifier",
            &clf,
            "--percent-to-mask",
            "0.5",
            "--alpha",
            "0.4",
            "--epochs",
            "400",
            "--max-steps",
            "3000",
            "--batch-size",
            "32",
            "--noise-seed",
            "5",
            "--checkpoint-every",
            "50",
            "--output",
            out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = dir.path().join("a");
    let a_s = a.to_string_lossy().to_string();
    kill_after_first_checkpoint(&args(&a_s), &a);
    let r = json(&ok(&args(&a_s)
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()));
    let resumed = r["resumed_from"].as_u64().expect("did not resume");
    assert!(resumed > 0 && resumed < 3000, "{r}");
    assert_eq!(r["steps"], 3000);
    // An uninterrupted run with the same seeds ends at the same parameters.
    let b = dir.path().join("b");
    let b_s = b.to_string_lossy().to_string();
    ok(&args(&b_s).iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let la = load_noise_layer(&a.join("noise_layer"), &Device::Cpu).unwrap();
    let lb = load_noise_layer(&b.join("noise_layer"), &Device::Cpu).unwrap();
    for ((n, x), (_, y)) in la.named_tensors().iter().zip(lb.named_tensors().iter()) {
        assert_eq!(
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{n} differs after resume"
        );
    }
}

#[test]
fn bad_input_gives_clear_errors() {
    let clf = digits_classifier().to_string_lossy().to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_string_lossy().to_string();
    // Unknown flag.
    let o = fails(&["vision", "train", "--no-such-flag"]);
    assert!(stderr(&o).contains("--no-such-flag"), "{}", stderr(&o));
    // Invalid hyper-parameters.
    let o = fails(&[
        "vision",
        "train",
        "--dataset",
        "digits",
        "--classifier",
        &clf,
        "--alpha",
        "1.5",
        "--output",
        &d("x"),
    ]);
    assert!(stderr(&o).contains("alpha"), "{}", stderr(&o));
    let o = fails(&[
        "vision",
        "train",
        "--dataset",
        "digits",
        "--classifier",
        &clf,
        "--shallow",
        "0",
        "--output",
        &d("x2"),
    ]);
    assert!(stderr(&o).contains("shallow"), "{}", stderr(&o));
    // A classifier for other image sizes.
    let o = fails(&[
        "vision",
        "train",
        "--dataset",
        "fashion-mnist",
        "--train-limit",
        "10",
        "--classifier",
        &clf,
        "--output",
        &d("y"),
    ]);
    assert!(stderr(&o).contains("[1, 8, 8]"), "{}", stderr(&o));
    // A trained SGT to corrupt.
    ok(&[
        "vision",
        "train",
        "--dataset",
        "digits",
        "--classifier",
        &clf,
        "--max-steps",
        "3",
        "--batch-size",
        "16",
        "--output",
        &d("s"),
    ]);
    let art = dir.path().join("s/noise_layer");
    let a = art.to_string_lossy().to_string();
    // Wrong image size.
    let png = dir.path().join("big.png");
    image::GrayImage::new(10, 9).save(&png).unwrap();
    let o = fails(&[
        "vision",
        "apply",
        "--sgt",
        &a,
        "--png",
        &png.to_string_lossy(),
        "--output",
        &d("o"),
    ]);
    assert!(
        stderr(&o).contains("10×9") && stderr(&o).contains("8×8"),
        "{}",
        stderr(&o)
    );
    // NaN pixels.
    let nan = dir.path().join("nan.safetensors");
    let mut v = vec![0.5f32; 2 * 64];
    v[7] = f32::NAN;
    let t = candle_core::Tensor::from_vec(v, (2, 1, 8, 8), &Device::Cpu).unwrap();
    stainedglass_core::io::save_tensors(&nan, &[("images".into(), t)]).unwrap();
    let o = fails(&[
        "vision",
        "apply",
        "--sgt",
        &a,
        "--input",
        &nan.to_string_lossy(),
        "--output",
        &d("o"),
    ]);
    assert!(stderr(&o).contains("non-finite"), "{}", stderr(&o));
    // Truncated weights.
    let w = art.join("noise_layer.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() - 10]).unwrap();
    let o = fails(&[
        "vision",
        "apply",
        "--dataset",
        "digits",
        "--sgt",
        &a,
        "--output",
        &d("o"),
    ]);
    assert!(
        stderr(&o).contains("corrupt or truncated"),
        "{}",
        stderr(&o)
    );
    // Missing artefact.
    let o = fails(&[
        "eval",
        "vision",
        "--dataset",
        "digits",
        "--sgt",
        &d("nope"),
        "--classifier",
        &clf,
    ]);
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
    // Classifier weights that do not match the config.
    let bad_clf = dir.path().join("badclf");
    std::fs::create_dir_all(&bad_clf).unwrap();
    std::fs::copy(
        std::path::Path::new(&clf).join("config.json"),
        bad_clf.join("config.json"),
    )
    .unwrap();
    std::fs::write(bad_clf.join("model.safetensors"), b"garbage").unwrap();
    let o = fails(&[
        "eval",
        "vision",
        "--dataset",
        "digits",
        "--sgt",
        &a,
        "--classifier",
        &bad_clf.to_string_lossy(),
    ]);
    assert!(stderr(&o).contains("safetensors"), "{}", stderr(&o));
}

#[test]
fn fashion_mnist_small_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_string_lossy().to_string();
    let r = json(&ok(&[
        "vision",
        "train-classifier",
        "--train-limit",
        "4000",
        "--test-limit",
        "1000",
        "--epochs",
        "2",
        "--output",
        &d("clf"),
    ]));
    let acc = r["test_accuracy"].as_f64().unwrap();
    assert!(
        acc > 0.70,
        "Fashion-MNIST accuracy after 2 short epochs: {acc}"
    );
    let clf = d("clf/model");
    ok(&[
        "vision",
        "train",
        "--train-limit",
        "4000",
        "--classifier",
        &clf,
        "--percent-to-mask",
        "0.6",
        "--max-steps",
        "40",
        "--output",
        &d("sgt"),
    ]);
    let r = json(&ok(&[
        "eval",
        "vision",
        "--train-limit",
        "2000",
        "--test-limit",
        "500",
        "--sgt",
        &d("sgt/noise_layer"),
        "--classifier",
        &clf,
        "--no-attack",
        "--json",
    ]));
    assert_eq!(r["test_images"], 500);
    assert!(
        (r["masked_fraction"].as_f64().unwrap() - (471.0 / 784.0)).abs() < 1e-6,
        "{r}"
    );
}

#[test]
fn interrupted_classifier_training_resumes_to_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let args = |out: &str| -> Vec<String> {
        [
            "vision",
            "train-classifier",
            "--dataset",
            "digits",
            "--epochs",
            "60",
            "--batch-size",
            "32",
            "--noise-augment",
            "0.2",
            "--checkpoint-every",
            "40",
            "--output",
            out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = dir.path().join("a");
    let a_s = a.to_string_lossy().to_string();
    kill_after_first_checkpoint(&args(&a_s), &a);
    let ra = json(&ok(&args(&a_s)
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()));
    assert!(ra["resumed_from"].as_u64().is_some_and(|s| s > 0), "{ra}");
    let b_s = dir.path().join("b").to_string_lossy().to_string();
    let rb = json(&ok(&args(&b_s)
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()));
    assert_eq!(ra["steps"], rb["steps"]);
    assert_eq!(
        ra["test_accuracy"], rb["test_accuracy"],
        "resumed and uninterrupted runs differ"
    );
    let wa = load_tensors(&a.join("model/model.safetensors"), &Device::Cpu).unwrap();
    let wb = load_tensors(&dir.path().join("b/model/model.safetensors"), &Device::Cpu).unwrap();
    for (k, t) in &wa {
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            wb[k].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{k}"
        );
    }
}

#[test]
fn two_phase_and_patch_layers_train_on_digits() {
    let clf = digits_classifier().to_string_lossy().to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_string_lossy().to_string();
    // Two-phase Cloak: the second half fine-tunes μ with the mask frozen (saved in the artefact).
    ok(&[
        "vision",
        "train",
        "--dataset",
        "digits",
        "--classifier",
        &clf,
        "--layer",
        "cloak-two-phase",
        "--percent-to-mask",
        "0.5",
        "--alpha",
        "0.3",
        "--max-steps",
        "40",
        "--batch-size",
        "32",
        "--output",
        &d("two"),
    ]);
    let metrics = std::fs::read_to_string(dir.path().join("two/metrics.jsonl")).unwrap();
    let phases: Vec<u64> = metrics
        .lines()
        .map(|l| json(l)["phase"].as_u64().unwrap())
        .collect();
    assert_eq!((phases[0], phases[39]), (1, 2));
    assert_eq!(json(metrics.lines().last().unwrap())["alpha"], 0.0);
    let l = load_noise_layer(&dir.path().join("two/noise_layer"), &Device::Cpu).unwrap();
    assert!(l.named_tensors().iter().any(|(n, _)| n == "frozen_mask"));
    // Patch layer: 2×2 patches on 8×8 → 16 patches, ⌈0.5·16⌉ = 8 suppressed.
    ok(&[
        "vision",
        "train",
        "--dataset",
        "digits",
        "--classifier",
        &clf,
        "--layer",
        "patch",
        "--patch",
        "2",
        "--percent-to-mask",
        "0.5",
        "--max-steps",
        "20",
        "--batch-size",
        "32",
        "--output",
        &d("patch"),
    ]);
    let r = json(&ok(&[
        "eval",
        "vision",
        "--dataset",
        "digits",
        "--sgt",
        &d("patch/noise_layer"),
        "--classifier",
        &clf,
        "--no-attack",
        "--json",
    ]));
    assert!(
        (r["masked_fraction"].as_f64().unwrap() - 0.5).abs() < 1e-6,
        "{r}"
    );
    let o = fails(&[
        "vision",
        "train",
        "--dataset",
        "digits",
        "--classifier",
        &clf,
        "--layer",
        "patch",
        "--patch",
        "3",
        "--output",
        &d("p3"),
    ]);
    assert!(stderr(&o).contains("patch_size"), "{}", stderr(&o));
}
