"""Talks to `sgt proxy` with the official `openai` client: one plain and one streamed chat
completion. Prints one JSON line with both answers (the Rust test checks them)."""

import json
import sys

from openai import OpenAI

base_url = sys.argv[1]
client = OpenAI(base_url=base_url + "/v1", api_key="unused-by-the-proxy")
question = [{"role": "user", "content": "What is the capital of France?"}]

models = [m.id for m in client.models.list().data]

plain = client.chat.completions.create(
    model=models[0], messages=question, temperature=0, max_tokens=32, seed=1
)
streamed = []
finish = None
for chunk in client.chat.completions.create(
    model=models[0], messages=question, temperature=0, max_tokens=32, stream=True
):
    if chunk.choices:
        streamed.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish

# Personal data: the proxy replaces it before the SGT (default --pii pseudonymize) and maps the
# reply back; the Rust test checks that none of it reached the server.
note = [{"role": "user", "content": "Draft a one-line note to Michael Roy (michael.roy@example.com) "
         "about the contract due 2026-04-15."}]
pii = client.chat.completions.create(model=models[0], messages=note, temperature=0, max_tokens=32)

print(
    json.dumps(
        {
            "models": models,
            "plain": plain.choices[0].message.content,
            "plain_finish": plain.choices[0].finish_reason,
            "usage": plain.usage.model_dump(),
            "streamed": "".join(streamed),
            "stream_chunks": len(streamed),
            "stream_finish": finish,
            "pii_reply": pii.choices[0].message.content,
        }
    )
)
