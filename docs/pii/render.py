"""Renders docs/pii/README.md from the JSON written by reproduce.sh (no number typed by hand)."""
import collections, json, pathlib, re

d = pathlib.Path(__file__).parent
load = lambda n: json.loads((d / n).read_text())
splits = {s: load(f"{s}/report.json") for s in ["dev", "test", "fresh"]}
first = (d / "test/first-run-summary.md").read_text()
m = re.search(r"Structured recall ([\d.]+)%, person recall ([\d.]+)%, overall precision ([\d.]+)%", first)
bench = [json.loads(l) for l in (d / "bench.jsonl").read_text().splitlines() if l.strip()]
e2e = load("e2e/report.json")
benign = [json.loads(l) for l in (d / "benign-spans.jsonl").read_text().splitlines() if l.strip()]
benign_n = load("benign-count.json")["prompts"]
# Read by hand: spans in the ordinary prompts that name no one (the rest are people's names,
# fictional or public, and dates).
NOT_A_NAME = {("person", "Man"), ("person", "Mars"), ("location", "Celsius"), ("person", "Wizardry"),
              ("person", "Daimler"), ("person", "Mona Lisa")}

pct = lambda x: f"{100 * x:.1f}%"
rows = []
for name, r in splits.items():
    k = r["per_kind"]
    rows.append(f"| {name} | {r['prompts']} | {pct(r['structured_recall'])} | {pct(r['name_recall'])} "
                f"({pct(k['person']['recall'])} / {pct(k['organization']['recall'])} / {pct(k['location']['recall'])}) "
                f"| {pct(r['overall_precision'])} | {pct(r['leaked_whole'])} | {r['micros_per_1000_chars']:.0f} µs |")
kinds = sorted(splits["fresh"]["per_kind"])
kind_rows = []
for kname in kinds:
    cells = []
    for s in splits.values():
        x = s["per_kind"].get(kname)
        cells.append(f"{pct(x['recall'])} / {pct(x['precision'])} ({x['gold']})" if x else "—")
    kind_rows.append(f"| {kname} | " + " | ".join(cells) + " |")
fresh = splits["fresh"]
counts = collections.Counter((b["kind"], b["text"]) for b in benign)
not_names = sum(c for k, c in counts.items() if k in NOT_A_NAME)
passes = {(p["mode"], p["upstream"]): p for p in e2e["passes"]}
off, on, mir = passes[("off", "model")], passes[("pseudonymize", "model")], passes[("pseudonymize", "mirror")]
e2e_rows = []
for p in e2e["passes"]:
    tok = "—" if p["tokens_read_back"] is None else pct(p["tokens_read_back"])
    e2e_rows.append(f"| {p['mode']} | {p['upstream']} | {p['requests']} | {p['values']} | {p['values_in_server_bytes']} "
                    f"| {pct(p['share_read_whole'])} ({p['values_read_whole']}) | {tok} "
                    f"| {pct(p['share_carried_plain'])} / {pct(p['share_carried_streamed'])} of {p['needed']} |")
b1 = next(b for b in bench if b["chars"] == 1000)
vals = dict(
    split_rows="\n".join(rows), kind_rows="\n".join(kind_rows),
    first_structured=m.group(1), first_person=m.group(2), first_precision=m.group(3),
    fresh_structured=pct(fresh["structured_recall"]), fresh_names=pct(fresh["name_recall"]),
    fresh_precision=pct(fresh["overall_precision"]), fresh_leak=pct(fresh["leaked_whole"]),
    fresh_missed="; ".join(fresh["missed"][:6]),
    fresh_fp=", ".join(f"{t} ×{c}" for t, c in collections.Counter(
        re.sub(r" \(in .*", "", x) for x in fresh["false_positives"]).most_common()),
    benign_n=benign_n, benign_spans=len(benign), benign_not_names=not_names,
    benign_list=", ".join(f"{t} ({k}{', ×' + str(c) if c > 1 else ''})" for (k, t), c in counts.most_common()),
    e2e_rows="\n".join(e2e_rows), e2e_prompts=e2e["prompts"],
    off_read=pct(off["share_read_whole"]), off_tokens=pct(off["tokens_read_back"] or 0),
    on_read=pct(on["share_read_whole"]), on_values=", ".join(on["read_values"]) or "none",
    on_bytes=on["values_in_server_bytes"], off_bytes=off["values_in_server_bytes"],
    mir_plain=pct(mir["share_carried_plain"]), mir_stream=pct(mir["share_carried_streamed"]), mir_n=mir["needed"],
    off_carry=pct(off["share_carried_plain"]), on_carry=pct(on["share_carried_plain"]),
    on_carry_s=pct(on["share_carried_streamed"]), model_needed=on["needed"],
    bench_rows="\n".join(f"| {b['chars']:,} | {b['spans']} | {b['detect_ms_median']:.2f} ms | "
                         f"{b['pseudonymize_and_restore_ms_median']:.2f} ms | {b['ms_per_1000_chars']:.2f} ms |" for b in bench),
    bench_1000=f"{b1['ms_per_1000_chars']:.2f}",
)
(d / "README.md").write_text((d / "README.tmpl.md").read_text().format(**vals))
