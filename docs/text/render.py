"""Renders docs/text/README.md from the run's JSON outputs (no number is typed by hand)."""
import json, pathlib, sys

d = pathlib.Path(__file__).parent
ev = json.loads((d / "eval_all_held_out.json").read_text())
sm = json.loads((d / "summary.json").read_text())
first = json.loads((d / "signed-cosine-run" / "eval_all_held_out.json").read_text())
bench = json.loads((d / "bench_text_sgt.json").read_text())["text_sgt_train_tokens_per_s"]
pct = lambda x: f"{100 * x:.2f}%"
c, t, f = ev["clean"], ev["transformed"], first["transformed"]
vals = dict(
    wall=sys.argv[1] if len(sys.argv) > 1 else "?",
    tokens=t["transformed_tokens"], preds=t["predicted_tokens"],
    c_cos=pct(c["nn_top1_cosine"]), t_cos=pct(t["nn_top1_cosine"]),
    c_l2=pct(c["nn_top1_l2"]), t_l2=pct(t["nn_top1_l2"]),
    c_flip=pct(c["nn_top1_cosine_flipped"]), t_flip=pct(t["nn_top1_cosine_flipped"]),
    c_agree=pct(c["next_token_agreement"]), t_agree=pct(t["next_token_agreement"]),
    c_kl=f'{c["next_token_kl"]:.3f}', t_kl=f'{t["next_token_kl"]:.3f}',
    s_cos=pct(sm["final_eval"]["nn_top1_cosine"]), s_l2=pct(sm["final_eval"]["nn_top1_l2"]),
    s_agree=pct(sm["final_eval"]["next_token_agreement"]),
    f_cos=pct(f["nn_top1_cosine"]), f_l2=pct(f["nn_top1_l2"]), f_flip=pct(f["nn_top1_cosine_flipped"]),
    f_agree=pct(f["next_token_agreement"]),
    b_rust=bench["rust_median"], b_torch=bench["torch_median"], b_ratio=bench["ratio_rust_over_torch"],
    b_pairs=", ".join(f"{r}×" for r in bench.get("pair_ratios", [])) or "not recorded",
    b_verdict="this run's median reaches the 1.0× target" if bench["ratio_rust_over_torch"] >= 1.0
    else "this run's median is below the 1.0× target",
    rerun="",
)
# A later re-run of the same config on newer training code, if one is recorded.
rr = d / "rerun"
if (rr / "eval_all_held_out.json").exists():
    rt = json.loads((rr / "eval_all_held_out.json").read_text())["transformed"]
    wall = (rr / "wall.txt").read_text().strip()
    ok = rt["nn_top1_cosine"] <= 0.05 and rt["nn_top1_l2"] <= 0.05 and rt["next_token_agreement"] >= 0.85
    vals["rerun"] = (
        "\n## Re-run on the current training code\n\n"
        f"The same config trained again on the code of the speed work above ([`rerun/`](rerun/): "
        f"its summary, held-out evaluation and curves): **{wall}** of wall time (the run above: "
        f"{vals['wall']}); on all 24 held-out "
        f"conversations {pct(rt['nn_top1_cosine'])} (cosine) / {pct(rt['nn_top1_l2'])} (L2) / "
        f"{pct(rt['nn_top1_cosine_flipped'])} (sign-flip) recovery and {pct(rt['next_token_agreement'])} "
        f"agreement — the targets (≤ 5% recovery, ≥ 85% agreement) are "
        f"{'met' if ok else 'not met'}. The noise stream, the `tanh` kernel and the BLAS (oneMKL) "
        "differ from the run above (same formulas), so the numbers are not identical to it.\n"
    )
(d / "README.md").write_text((d / "README.tmpl.md").read_text().format(**vals))
