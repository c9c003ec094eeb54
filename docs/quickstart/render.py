"""Copies a quickstart run's report into docs/quickstart/, writes docs/quickstart/README.md from
it and the run's output, and rewrites the README excerpt between the quickstart markers (no number
typed by hand). Usage:
    ./scripts/quickstart.sh 2>&1 | tee /tmp/quickstart.log
    python3 docs/quickstart/render.py runs/quickstart /tmp/quickstart.log"""
import json, pathlib, shutil, sys

root = pathlib.Path(__file__).resolve().parents[2]
run, log = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
d = root / "docs" / "quickstart"
for f in ["report.json", "summary.md", "sigma_over_norm.png", "recovery_by_position.png"]:
    shutil.copy(run / "report" / f, d / f)
out = log.read_text()
(d / "output.txt").write_text(out)
r = json.loads((d / "report.json").read_text())
t, c = r["transformed"], r["clean"]
pct = lambda x: f"{100 * x:.1f}%"
f = r["fresh_attacks"]
fresh_rows = "\n".join(f"| {k.replace('_', ' ')} | {pct(v['top1'])} |"
                        for k, v in sorted(f["attacks"].items(), key=lambda kv: -kv[1]["top1"]))
# The run's output (stdout and stderr merged; without a terminal there are no progress bars),
# minus the asset set-up chatter and blank lines.
lines = [l for l in out.splitlines() if l.strip() and not l.startswith("setup-assets")]
shown = "\n".join(lines)
(d / "README.md").write_text(f"""# The quickstart

What `./scripts/quickstart.sh` printed from a fresh clone on the 2-core machine (in a terminal the
data and training stages also show progress bars with live loss components and ETA). Rendered by
`render.py` from the run; regenerate with the commands in its docstring.

```
{shown}
```

**Privacy, judged by the strongest attack trained on the frozen SGT: {f["strongest"].replace("_", " ")}
recovers {pct(f["strongest_top1"])} of the held-out transformed tokens.**

| attack, trained after the SGT was frozen on the attacker's {f["attacker_prompts"]} conversations | transformed tokens recovered (top-1) |
|---|---|
{fresh_rows}

| held-out conversations ({r["extra"]["held_out_conversations"]}) | clean embeddings | SGT after {r["extra"]["steps"]} steps |
|---|---|---|
| nearest-neighbour recovery of transformed tokens, L2 | {pct(c["nn_top1_l2"])} | {pct(t["nn_top1_l2"])} |
| nearest-neighbour recovery, cosine | {pct(c["nn_top1_cosine"])} | {pct(t["nn_top1_cosine"])} |
| next-token agreement with the clean model | {pct(c["next_token_agreement"])} | {pct(t["next_token_agreement"])} |

The learned inverter is the per-token MLP of the full suite, the probe the provider's attack on
its own layer states (trained on clean text only); the full suite (`sgt eval text`, see
[`../eval/`](../eval/README.md)) adds a transformer inverter and BeamClean.

![σ/|x| per transformed token](sigma_over_norm.png)
![recovery by position](recovery_by_position.png)

The full report of that run: [`summary.md`](summary.md), [`report.json`](report.json).
""")
# README excerpt: the chat stage and the closing summary.
start = next(i for i, l in enumerate(lines) if l.startswith("[6/7]"))
excerpt = [l for l in lines[start:] if not l.startswith(("  sgt ", "[7/7]", "  nearest", "Report:", "  server", "Done", "real", "user", "sys"))]
section = f"""<!-- quickstart:begin (rendered by docs/quickstart/render.py from a real run) -->
From a fresh clone on the 2-core machine (the whole output and report:
[`docs/quickstart/`](docs/quickstart/README.md)):

```
{chr(10).join(excerpt)}
```
<!-- quickstart:end -->"""
readme = (root / "README.md").read_text()
a, b = readme.index("<!-- quickstart:begin"), readme.index("<!-- quickstart:end -->") + len("<!-- quickstart:end -->")
(root / "README.md").write_text(readme[:a] + section + readme[b:])
print("README.md and docs/quickstart/README.md updated")
