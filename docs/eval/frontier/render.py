"""Writes docs/eval/frontier/ (README.md from README.tmpl.md, report.json, frontier.png) from the
runs of docs/eval/frontier/run.sh. No number is typed by hand: every cell, and the verdict on
the issue's targets T1–T3, is computed here from the reports. A variant (or the baselines)
whose run folder is absent keeps its points from the report.json already written, so a new
variant can be added to the frontier without re-running the others.
    python3 docs/eval/frontier/render.py runs/variants      (needs matplotlib)"""
import json, pathlib, sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

root = pathlib.Path(__file__).resolve().parents[3]
out = root / "docs" / "eval" / "frontier"
run = pathlib.Path(sys.argv[1])
pct = lambda x: "—" if x is None else f"{100 * x:.1f}%"

LABELS = {
    "mean": "SGT, masked features carry μ(x) (the original)",
    "noise": "SGT, masked features carry σ·ε",
    "zero": "SGT, masked features carry 0",
    "adv-ce-0.3": "SGT σ·ε + in-training adversary, CE, weight 0.3",
    "kl-noise": "SGT σ·ε, distilled by logit KL on response positions",
    "kl-mean": "SGT μ(x), distilled by logit KL on response positions",
    "l15-noise": "SGT σ·ε, distilled at layer 15 on response positions",
    "adv-club-0.3": "SGT σ·ε + in-training adversary, CLUB bound, weight 0.3",
    "adv-club-0.03": "SGT σ·ε + in-training adversary, CLUB bound, weight 0.03",
    "l15-noise-m75": "SGT σ·ε, layer 15 on response positions, 75% of features masked",
    "l15-noise-seed1": "SGT σ·ε, layer 15 on response positions, training seed 1",
    "l15-noise-a1": "SGT σ·ε, layer 15 on response positions + adapter, 1 layer",
    "l15-mean-a1": "SGT μ(x), layer 15 on response positions + adapter, 1 layer",
    "l15-noise-a1-fast": "SGT σ·ε, layer 15 on response positions + adapter, 1 layer, lr 5e-4",
    "l15-noise-a4-fast": "SGT σ·ε, layer 15 on response positions + adapter, 4 layers, lr 5e-4",
    "l15-noise-a8-fast": "SGT σ·ε, layer 15 on response positions + adapter, 8 layers, lr 5e-4",
    "all6-noise-a4-fast": "SGT σ·ε (layer 6, every position) + adapter, 4 layers, lr 5e-4",
}


def attacks_of(m):
    """Attacks that scored tokens (BeamClean is off in these runs)."""
    return {k: v["top1"] for k, v in m["attacks"].items() if v.get("tokens", 1) > 0}


def fresh_of(v):
    p = run / v / "fresh_attacks_v2.json"
    if not p.exists():
        return {}
    f = json.loads(p.read_text())
    f = f.get("fresh_attacks", f)
    return {f"fresh:{k}": a["top1"] for k, a in f["attacks"].items()}


def point(m, variant, extra=None):
    a = attacks_of(m)
    if extra:
        a.update(extra)
    a.pop("nearest_neighbour_cosine", None)
    name, top = max(a.items(), key=lambda kv: kv[1])
    return {
        "variant": variant,
        "kind": m["kind"],
        "strength": m.get("strength"),
        "attacks": a,
        "strongest": name,
        "strongest_top1": top,
        "utility": m["utility"],
        "answers": m["answers"]["accuracy"],
        "answers_retained": m.get("answers_retained"),
        "agreement": m["utility"]["agreement"],
    }


points, clean = [], None
previous = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
base_path = run / "frontier-base" / "report.json"
if base_path.exists():
    base = json.loads(base_path.read_text())
else:  # the baselines and the original SGT as last rendered
    base = {k: previous[k] for k in ("questions", "held_out_prompts", "attacker_prompts")}
    base["mechanisms"] = []
    clean = next(p for p in previous["mechanisms"] if p["variant"] == "clean")
    points += [p for p in previous["mechanisms"] if p["variant"] in ("gaussian", "metric-dp", "mean")]
for m in base["mechanisms"]:
    if m["kind"] == "clean":
        clean = point(m, "clean")
    elif m["kind"] in ("gaussian", "metric-dp"):
        points.append(point(m, m["kind"]))
    elif m["kind"] == "sgt":
        points.append(point(m, "mean", fresh_of("mean")))
    elif m["kind"] == "sgt-scaled":
        points.append(point(m, "mean"))
curves = ["mean"]
for v in LABELS:
    rep = run / f"frontier-{v}" / "report.json"
    if v == "mean" or not rep.exists():
        continue
    curves.append(v)
    for m in json.loads(rep.read_text())["mechanisms"]:
        if m["kind"] == "sgt":
            points.append(point(m, v, fresh_of(v)))
        elif m["kind"] == "sgt-scaled":
            points.append(point(m, v))
singles = []
for v in LABELS:
    rep = run / f"{v}-eval" / "report.json"
    if v in curves or not rep.exists():
        continue
    singles.append(v)
    m = next(m for m in json.loads(rep.read_text())["mechanisms"] if m["kind"] == "sgt")
    points.append(point(m, v, fresh_of(v)))

# Variants measured before whose run folders are gone: their points as last rendered.
for v in LABELS:
    if v == "mean" or v in curves or v in singles or not previous:
        continue
    kept = [p for p in previous["mechanisms"] if p["variant"] == v]
    if kept:
        points += kept
        (curves if len(kept) > 1 else singles).append(v)
curves.sort(key=list(LABELS).index)
singles.sort(key=list(LABELS).index)

sgt_points = [p for p in points if p["variant"] in LABELS]
baseline_points = [p for p in points if p["variant"] in ("gaussian", "metric-dp")]


def dominates(variant, useful_only=False):
    """T1: at every baseline point's answer accuracy, some point of the variant answers at least
    as well with lower recovery (with `useful_only`, over the baseline points that still answer
    something)."""
    mine = [p for p in sgt_points if p["variant"] == variant]
    return all(
        any(s["answers"] >= b["answers"] and s["strongest_top1"] < b["strongest_top1"] for s in mine)
        for b in baseline_points
        if not useful_only or b["answers"] > 0
    )


near_clean = [p for p in sgt_points if p["answers"] >= clean["answers"] - 0.05 - 1e-9]
best_near = min(near_clean, key=lambda p: p["strongest_top1"]) if near_clean else None
t1 = [v for v in curves + singles if dominates(v)]
t1u = [v for v in curves + singles if dominates(v, useful_only=True)]
verdict = {
    "T1_dominating_variants": t1,
    "T1_dominating_variants_where_baselines_answer": t1u,
    "T2_T3_best_point_within_5_points_of_clean": best_near and {
        "variant": best_near["variant"],
        "factor": best_near["strength"] or 1.0,
        "strongest": best_near["strongest"],
        "strongest_top1": best_near["strongest_top1"],
        "answers": best_near["answers"],
    },
    "T2_met": bool(best_near and best_near["strongest_top1"] <= 0.5),
    "T3_met": bool(best_near and best_near["strongest_top1"] <= 0.1),
}

# The plot: strongest attack against answers, one curve per variant and baseline.
fig, ax = plt.subplots(figsize=(14, 5.5))
ax.set_prop_cycle(color=plt.cm.tab20.colors)  # more variants than the default ten colours
style = {"gaussian": ("Gaussian noise (input-independent)", "0.45", "s"),
         "metric-dp": ("metric-DP (snapped to tokens)", "0.7", "D")}
for kind, (label, colour, marker) in style.items():
    ps = sorted((p for p in baseline_points if p["variant"] == kind), key=lambda p: p["strength"])
    ax.plot([100 * p["answers"] for p in ps], [100 * p["strongest_top1"] for p in ps],
            marker=marker, color=colour, ls="--", label=label + ", in order of noise")
for v in curves:
    ps = sorted((p for p in sgt_points if p["variant"] == v), key=lambda p: p["strength"] or 1.0)
    ax.plot([100 * p["answers"] for p in ps], [100 * p["strongest_top1"] for p in ps],
            marker="o", label=LABELS[v] + f" ×1…×{max(p['strength'] or 1 for p in ps):g}")
for v in singles:
    p = next(p for p in sgt_points if p["variant"] == v)
    ax.plot([100 * p["answers"]], [100 * p["strongest_top1"]], marker="^", ls="", label=LABELS[v])
ax.plot([100 * clean["answers"]], [100 * clean["strongest_top1"]], marker="*", ms=14, color="k",
        ls="", label="clean")
ax.axhline(50, color="tab:red", lw=0.8, ls=":")
ax.axhline(10, color="tab:red", lw=0.8, ls=":")
ax.axvline(100 * (clean["answers"] - 0.05), color="tab:green", lw=0.8, ls=":")
ax.set_xlabel("answer accuracy on 20 questions (%)")
ax.set_ylabel("tokens recovered by the strongest attack trained after freezing (%)")
ax.set_title("Privacy–utility frontier, SmolLM2-135M (lower right is better)")
ax.set_ylim(0, 103)
ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(out / "frontier.png", dpi=110, bbox_inches="tight")

rows = []
order = ["clean"] + curves + singles + ["gaussian", "metric-dp"]
for p in sorted([clean] + points, key=lambda p: (order.index(p["variant"]), p["strength"] or 0)):
    a = p["attacks"]
    probe = max((v for k, v in a.items() if "probe" in k and "on_sgt" not in k), default=None)
    on_sgt = max((v for k, v in a.items() if k.endswith("_probe_on_sgt")), default=None)
    label = LABELS.get(p["variant"], p["variant"])
    level = "" if p["variant"] == "clean" else (
        f"×{p['strength'] or 1:g}" if p["variant"] in LABELS else f"{p['strength']:g}")
    rows.append(
        f"| {label} | {level} | **{pct(p['strongest_top1'])}** ({p['strongest'].replace('_', ' ')}) "
        f"| {pct(a.get('learned_mlp'))} | {pct(on_sgt)} | {pct(probe)} "
        f"| {pct(a.get('nearest_neighbour_l2'))} | {pct(p['agreement'])} | {pct(p['answers'])} |")
table = "\n".join(rows)
(out / "report.json").write_text(json.dumps(
    {"title": "privacy–utility frontier", "questions": base["questions"],
     "held_out_prompts": base["held_out_prompts"], "attacker_prompts": base["attacker_prompts"],
     "verdict": verdict, "mechanisms": [clean] + points}, indent=1))
b = verdict["T2_T3_best_point_within_5_points_of_clean"]
best = "no SGT point" if not b else (
    f"{LABELS[b['variant']]} ×{b['factor']:g}: {pct(b['strongest_top1'])} ({b['strongest'].replace('_', ' ')}) "
    f"at {pct(b['answers'])} answers")
readme = (out / "README.tmpl.md").read_text()
for k, v in {
    "@TABLE@": table,
    "@CLEAN_ANSWERS@": pct(clean["answers"]),
    "@T1U@": ", ".join(LABELS[v] for v in t1u) if t1u else "none",
    "@T1@": ", ".join(LABELS[v] for v in t1) if t1 else "none",
    "@T2@": "met" if verdict["T2_met"] else "not met",
    "@T3@": "met" if verdict["T3_met"] else "not met",
    "@BEST@": best,
}.items():
    readme = readme.replace(k, v)
(out / "README.md").write_text(readme)
print(table)
print(json.dumps(verdict, indent=1))
