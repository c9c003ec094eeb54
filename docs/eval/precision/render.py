"""Writes docs/eval/precision/README.md's table from the runs of run.sh: the same trained layer
judged by the same attacks, applied with f32 and with bf16 products, each under two attack seeds
(the seed sets the attackers' initialisation and the scoring noise), so that the bf16 change can
be read against the attacks' own run-to-run variation. Copies the measurements it reads here.
    python3 docs/eval/precision/render.py runs/variants/l15-noise"""
import json, pathlib, shutil, sys

d = pathlib.Path(__file__).resolve().parent
run = pathlib.Path(sys.argv[1])
RUNS = [("f32", "fresh_attacks_f32.json"), ("f32", "fresh_attacks_seed2.json"),
        ("bf16", "fresh_attacks_bf16.json"), ("bf16", "fresh_attacks_bf16-seed2.json")]
SEEDS = ["suite's", "2", "suite's", "2"]
pct = lambda x: f"{100 * x:.1f}%"
rows, cols = [], None
for (prec, name), seed in zip(RUNS, SEEDS):
    src = run / name
    if src.exists():
        shutil.copy(src, d / name)
    v = json.loads((d / name).read_text())
    a = {k: x["top1"] for k, x in v["fresh_attacks"]["attacks"].items()}
    cols = cols or sorted(a, key=lambda k: -a[k])
    rows.append(f"| {prec} | {seed} | " + " | ".join(pct(a[k]) for k in cols)
                + f" | {pct(v['transformed']['next_token_agreement'])} | {v['transformed']['next_token_kl']:.3f} |")
head = ("| products | attack seed | " + " | ".join(k.replace("_", " ") for k in cols)
        + " | next-token agreement | KL (nats) |\n|" + "---|" * (len(cols) + 4))
table = head + "\n" + "\n".join(rows)
(d / "README.md").write_text((d / "README.tmpl.md").read_text().replace("@TABLE@", table))
print(table)
