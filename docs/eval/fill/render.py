"""Writes docs/eval/fill/README.md's table from a run of docs/eval/fill/run.sh (no number typed by
hand) and copies the measurements it reads into docs/eval/fill/.
    python3 docs/eval/fill/render.py runs/variants"""
import json, pathlib, shutil, sys

root = pathlib.Path(__file__).resolve().parents[3]
d = root / "docs" / "eval" / "fill"
run = pathlib.Path(sys.argv[1])
pct = lambda x: "—" if x is None else f"{100 * x:.1f}%"
rows, clean = [], None
for fill in ["mean", "noise", "zero"]:
    fresh = json.loads((run / fill / "fresh_attacks.json").read_text())
    rep = json.loads((run / f"{fill}-eval" / "report.json").read_text())
    (d / fill).mkdir(exist_ok=True)
    shutil.copy(run / fill / "fresh_attacks.json", d / fill / "fresh_attacks.json")
    shutil.copy(run / f"{fill}-eval" / "summary.md", d / fill / "eval-summary.md")
    shutil.copy(run / f"{fill}-eval" / "report.json", d / fill / "eval-report.json")
    m = {x["kind"]: x for x in rep["mechanisms"]}
    clean, sgt = m["clean"], m["sgt"]
    a = {k: v for k, v in sgt["attacks"].items() if v["tokens"] > 0}
    strongest = max(a.items(), key=lambda kv: kv[1]["top1"])
    rows.append(
        f"| {fill} | **{pct(strongest[1]['top1'])}** ({strongest[0].replace('_', ' ')}) "
        f"| {pct(a.get('learned_mlp', {}).get('top1'))} | {pct(a.get('learned_transformer', {}).get('top1'))} "
        f"| {pct(a.get('activation_probe', {}).get('top1'))} | {pct(a.get('nearest_neighbour_l2', {}).get('top1'))} "
        f"| {pct(fresh['strongest_top1'])} ({fresh['strongest'].replace('_', ' ')}) "
        f"| {pct(sgt['utility']['agreement'])} | {pct(sgt['answers']['accuracy'])} "
        f"| {pct(sgt['answers_retained'])} | {sgt['sigma_over_norm']['median']:.2f} |")
table = "\n".join(rows)
readme = (d / "README.tmpl.md").read_text()
readme = readme.replace("TABLE", table).replace("CLEAN_ANSWERS", pct(clean["answers"]["accuracy"]))
(d / "README.md").write_text(readme)
print(table)
