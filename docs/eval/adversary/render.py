"""Writes docs/eval/adversary/README.md's table from the runs of docs/eval/adversary/run.sh and
docs/eval/frontier/run.sh (which re-scores every layer with the full set of attacks trained after
freezing: fresh_attacks_v2.json), and copies the measurements it reads into docs/eval/adversary/.
No number is typed by hand: a row whose run folder is gone keeps its line from the README
already written, so a new variant joins without re-running the others.
    python3 docs/eval/adversary/render.py runs/variants"""
import json, pathlib, shutil, statistics, sys

root = pathlib.Path(__file__).resolve().parents[3]
d = root / "docs" / "eval" / "adversary"
run = pathlib.Path(sys.argv[1])
pct = lambda x: "—" if x is None else f"{100 * x:.1f}%"
VARIANTS = {
    "noise": "none (masked_fill noise alone, from ../fill/)",
    "adv-ce-0.3": "capped CE, weight 0.3",
    "adv-club-0.3": "CLUB bound, weight 0.3",
    "adv-club-0.03": "CLUB bound, weight 0.03",
}
old_rows = {l.split(" | ")[0][2:]: l for l in (d / "README.md").read_text().splitlines()
            if l.startswith("| ") and not l.startswith("| adversary") and not l.startswith("|---")}
rows, clean_answers = [], None
for v, label in VARIANTS.items():
    rep_p = run / f"{v}-eval" / "report.json"
    if not rep_p.exists():
        if label in old_rows:
            rows.append(old_rows[label])
        continue
    rep = json.loads(rep_p.read_text())
    fresh_p = run / v / "fresh_attacks_v2.json"
    fresh = json.loads(fresh_p.read_text()) if fresh_p.exists() else {}
    fresh = fresh.get("fresh_attacks", fresh)
    (d / v).mkdir(exist_ok=True)
    for src, dst in [(rep_p, "eval-report.json"), (run / f"{v}-eval" / "summary.md", "eval-summary.md"),
                     (fresh_p, "fresh_attacks.json"), (run / f"{v}.toml", "config.toml")]:
        if src.exists():
            shutil.copy(src, d / v / dst)
    m = {x["kind"]: x for x in rep["mechanisms"]}
    clean_answers, sgt = m["clean"]["answers"]["accuracy"], m["sgt"]
    a = {k: x["top1"] for k, x in sgt["attacks"].items() if x["tokens"] > 0}
    a.pop("nearest_neighbour_cosine", None)
    for k, x in fresh.get("attacks", {}).items():
        a[f"fresh {k}"] = x["top1"]
    name, top = max(a.items(), key=lambda kv: kv[1])
    clean_probes = [x for k, x in a.items() if k.endswith("_probe") or k == "activation_probe"]
    recs = [json.loads(l) for l in (run / v / "metrics.jsonl").read_text().splitlines()]
    tail = [r for r in recs if r["kind"] == "train"][-20:]
    inv = statistics.mean(r["adversary_accuracy"] for r in tail) if "adversary_accuracy" in tail[0] else None
    rows.append(
        f"| {label} | **{pct(top)}** ({name.replace('_', ' ')}) | {pct(a.get('learned_mlp'))} "
        f"| {pct(a.get('learned_transformer'))} | {pct(max(clean_probes, default=None))} "
        f"| {pct(a.get('fresh layer6_probe_on_sgt'))} | {pct(a.get('nearest_neighbour_l2'))} "
        f"| {pct(inv)} | {pct(sgt['utility']['agreement'])} | {pct(sgt['answers']['accuracy'])} "
        f"| {sgt['sigma_over_norm']['median']:.2f} |")
# Runs stopped at their step-200 evaluation, once it showed the layer had given up utility: the
# trainer's own evaluation (nearest neighbour, agreement) and the in-training inverter.
STOPPED = {"adv-ce-1": "capped CE, weight 1 (stopped at step 200)",
           "adv-ce-3": "capped CE, weight 3 (stopped at step 200)",
           "adv-conf-1": "confusion, weight 1 (stopped at step 200)",
           "adv-conf-0.1": "confusion, weight 0.1 (stopped at step 200)"}
for v, label in STOPPED.items():
    p = run / v / "metrics.jsonl"
    if not p.exists():
        if label in old_rows:
            rows.append(old_rows[label])
        continue
    recs = [json.loads(l) for l in p.read_text().splitlines()]
    ev = [r for r in recs if r["kind"] == "eval" and r["step"] == 200]
    tr = [r for r in recs if r["kind"] == "train" and 180 < r["step"] <= 200]
    if not ev or not tr:
        continue
    (d / v).mkdir(exist_ok=True)
    shutil.copy(run / f"{v}.toml", d / v / "config.toml")
    (d / v / "eval-step-200.json").write_text(json.dumps(ev[0], indent=1))
    inv = statistics.mean(r["adversary_accuracy"] for r in tr)
    sigma = statistics.mean(r["mean_sigma"] for r in tr)
    early = ev[0].get("privacy")
    first = "not measured" if not early else (
        f"{pct(early['attacks'].get('learned_mlp'))} (learned MLP, one pass, on the step-200 layer)")
    rows.append(
        f"| {label} | {first} | — | — | — | — | {pct(ev[0]['nn_top1_l2'])} | {pct(inv)} "
        f"| {pct(ev[0]['next_token_agreement'])} | — | mean σ {sigma:.2f} |")
table = "\n".join(rows)
readme = (d / "README.tmpl.md").read_text()
if clean_answers is None:  # no run folder at all: the clean model's answers from a kept report
    rep = json.loads((d / "noise" / "eval-report.json").read_text())
    clean_answers = {x["kind"]: x for x in rep["mechanisms"]}["clean"]["answers"]["accuracy"]
readme = readme.replace("@TABLE@", table).replace("@CLEAN_ANSWERS@", pct(clean_answers))
(d / "README.md").write_text(readme)
print(table)
