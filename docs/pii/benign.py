"""Prints ordinary prompts, one per paragraph: the first turn of every bundled chat prompt
(assets/chat, MT-Bench and Vicuna questions) and every question of data/eval/questions.jsonl."""
import json, os

assets = os.environ.get("SGT_ASSETS", "assets")
texts = []
for name in ["mt-en.jsonl", "vicuna-en.jsonl"]:
    for line in open(os.path.join(assets, "chat", name), encoding="utf-8"):
        turns = json.loads(line).get("turns") or []
        if turns:
            texts.append(turns[0])
for line in open("data/eval/questions.jsonl", encoding="utf-8"):
    texts.append(json.loads(line)["question"])
print("\n\n".join(t.replace("\n\n", "\n") for t in texts))
