"""The Python package's overhead: `StainedGlassTransformForText.apply` called from Python against
the same apply in-process in Rust (`sgt bench apply`'s `apply_without_payload_ms`: template,
tokenizer, embedding lookup, SGT, noise — the same work), on the same ~256-token prompt, alternating
rounds in one run. Prints one JSON record per round and a summary with the ratio.

    python bench/apply_python.py --sgt ARTEFACT [--rounds 5] [--iters 20]

Needs the package installed (scripts/python-test.sh builds it into target/py-test-venv) and
target/release/sgt."""
import argparse, json, os, pathlib, statistics, subprocess, tempfile, time

import stainedglass as sg

ap = argparse.ArgumentParser()
ap.add_argument("--sgt", required=True)
ap.add_argument("--rounds", type=int, default=5)
ap.add_argument("--iters", type=int, default=20)
ap.add_argument("--tokens", type=int, default=256)
ap.add_argument("--bin", default="target/release/sgt")
a = ap.parse_args()
if os.environ.get("SGT_ASSETS"):
    sg.configure(assets=os.environ["SGT_ASSETS"])

prompt_file = pathlib.Path(tempfile.mkdtemp()) / "prompt.txt"


def rust_round():
    out = subprocess.run([a.bin, "bench", "apply", "--sgt", a.sgt, "--tokens", str(a.tokens),
                          "--iters", str(a.iters), "--prompt-out", str(prompt_file)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


first = rust_round()
prompt = prompt_file.read_text()
t = sg.StainedGlassTransformForText.from_pretrained(a.sgt)
n = len(t.apply(prompt)["input_ids"])
t.apply(prompt)  # warm


def py_round():
    ms = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        t.apply(prompt)
        ms.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ms)


rust, py = [], []
for r in range(a.rounds):
    py.append(py_round())
    rust.append(rust_round()["apply_without_payload_ms"])
    print(json.dumps({"round": r, "python_apply_ms": py[-1], "rust_apply_ms": rust[-1],
                      "ratio_python_over_rust": py[-1] / rust[-1]}))
print(json.dumps({"bench": "apply_python", "prompt_tokens": n, "rounds": a.rounds, "iters": a.iters,
                  "python_apply_ms_median": statistics.median(py), "rust_apply_ms_median": statistics.median(rust),
                  "ratio_python_over_rust": statistics.median(py) / statistics.median(rust),
                  "blas": first["blas"], "threads": first["threads"]}))
