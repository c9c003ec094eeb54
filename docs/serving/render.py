"""Renders docs/serving/README.md from the JSON written by reproduce.sh (no number typed by hand)."""
import json, pathlib

d = pathlib.Path(__file__).parent
load = lambda n: json.loads((d / n).read_text())
prev, chat, lt, bench, exp = load("apply_preview.json"), load("chat.json"), load("loadtest.json"), \
    load("bench_apply.json"), load("export.json")
pv = prev["preview"]
pct = lambda x: f"{100 * x:.1f}%"
vals = dict(
    answer=chat["choices"][0]["message"]["content"].strip(),
    clean_prompt=prev["preview"]["clean_prompt"].strip(),
    strongest=pv["strongest_attack"].replace("_", " "),
    strongest_held=pct(pv["strongest_held_out_recovered"]),
    strongest_reads=pv["strongest_reads"].strip(),
    attack_rows="\n".join(
        f'| {k.replace("_", " ")} | {pct(a["recovered"])} | {pct(a["held_out_recovered"])} |'
        for k, a in sorted(pv["attacks"].items(), key=lambda kv: -kv[1]["held_out_recovered"])),
    a_prompts=pv["attackers"]["trained_on_prompts"], a_epochs=pv["attackers"]["epochs"],
    a_layers=", ".join(map(str, pv["attackers"]["probe_layers"])),
    a_held=pv["attackers"]["held_out_prompts"], a_seconds=f'{pv["attackers"]["train_seconds"]:.0f}',
    p_artefact=prev["artefact"],
    p_tokens=prev["tokens"], p_transformed=prev["transformed_tokens"],
    lt_req=lt["requests"], lt_conc=lt["concurrency"], lt_err=lt["errors"],
    lt_p50=f'{lt["latency_p50_ms"] / 1e3:.2f}', lt_p99=f'{lt["latency_p99_ms"] / 1e3:.2f}',
    lt_tps=f'{lt["tokens_per_s"]:.1f}', lt_rps=f'{lt["requests_per_s"]:.2f}',
    b_tokens=bench["prompt_tokens"], b_rust=bench["apply_ms"]["rust_median"],
    b_torch=bench["apply_ms"]["torch_median"], b_speed=bench["apply_ms"]["speedup_rust_over_torch"],
    b_proxy=bench["proxy_overhead_ms"]["rust_median"],
    b_proxy_speed=bench["proxy_overhead_ms"]["speedup_vs_torch_apply_without_http"],
    b_cold=bench["cold_start_sgt_text_apply_ms"], b_rep=bench["repeats"],
    b_cold_max=bench["cold_start_max_ms"], b_cold_cached=bench["cold_start_cached_ms"],
    b_bf16=bench["apply_bf16_ms"]["rust_median"],
    b_bf16_speed=bench["apply_bf16_ms"]["speedup_rust_bf16_over_torch"],
    b_bf16_self=bench["apply_bf16_ms"]["speedup_bf16_over_rust_f32"],
    b_pairs=", ".join(f"{f}× / {b}×" for f, b in bench["pairs_torch_over_rust_f32_bf16"]),
    b_drift_mean=f'{100 * bench["bf16_vs_f32"]["mean_rel_l2"]:.2f}%',
    b_drift_std=f'{100 * bench["bf16_vs_f32"]["std_rel_l2"]:.2f}%',
    b_drift_mask=f'{100 * bench["bf16_vs_f32"]["keep_mask_flipped"]:.2f}%',
    n_files=len(exp["files"]),
)
(d / "README.md").write_text((d / "README.tmpl.md").read_text().format(**vals))
