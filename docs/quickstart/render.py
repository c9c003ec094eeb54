"""Copies a quickstart run's report into docs/quickstart/ and rewrites the README section between
the quickstart markers from it (no number typed by hand). Usage:
    python3 docs/quickstart/render.py runs/quickstart /tmp/quickstart-output.txt"""
import json, pathlib, shutil, sys

root = pathlib.Path(__file__).resolve().parents[2]
run, log = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
d = root / "docs" / "quickstart"
for f in ["report.json", "summary.md", "sigma_over_norm.png", "recovery_by_position.png"]:
    shutil.copy(run / "report" / f, d / f)
out = log.read_text()
(d / "output.txt").write_text(out)
r = json.loads((d / "report.json").read_text())
t, c, chat = r["transformed"], r["clean"], r["extra"]["chat"]
pct = lambda x: f"{100 * x:.1f}%"
# The stdout part of the run (stage lines and bars go to stderr and are not kept).
shown = "\n".join(l for l in out.splitlines() if l.strip())
section = f"""<!-- quickstart:begin (rendered by docs/quickstart/render.py from a real run) -->
What it prints (stdout of `./scripts/quickstart.sh` on the 2-core CI-class machine; the stage
lines, progress bars and live loss go to stderr):

```
{shown}
```

| held-out conversations ({r["extra"]["held_out_conversations"]}) | clean embeddings | SGT after {r["extra"]["steps"]} steps |
|---|---|---|
| nearest-neighbour recovery of transformed tokens, L2 | {pct(c["nn_top1_l2"])} | {pct(t["nn_top1_l2"])} |
| nearest-neighbour recovery, cosine | {pct(c["nn_top1_cosine"])} | {pct(t["nn_top1_cosine"])} |
| next-token agreement with the clean model | {pct(c["next_token_agreement"])} | {pct(t["next_token_agreement"])} |

![σ/|x| per transformed token](docs/quickstart/sigma_over_norm.png)
![recovery by position](docs/quickstart/recovery_by_position.png)

The full report of that run is in [`docs/quickstart/`](docs/quickstart/summary.md).
<!-- quickstart:end -->"""
readme = (root / "README.md").read_text()
a, b = readme.index("<!-- quickstart:begin"), readme.index("<!-- quickstart:end -->") + len("<!-- quickstart:end -->")
(root / "README.md").write_text(readme[:a] + section + readme[b:])
print("README.md updated")
