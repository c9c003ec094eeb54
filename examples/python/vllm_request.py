"""(c) A vLLM request body with `prompt_embeds` (vLLM started with --enable-prompt-embeds):
the transformed embeddings serialised with `torch.save`, base64-encoded, sent to
`/v1/completions`. Prints the body (or sends it with --url).

    pip install torch
    python examples/python/vllm_request.py --sgt ARTEFACT [--url http://127.0.0.1:8000 --model NAME]
"""
import argparse, base64, io, json, urllib.request

import torch

import stainedglass as sg

ap = argparse.ArgumentParser()
ap.add_argument("--sgt", required=True)
ap.add_argument("--prompt", default="What is the capital of France?")
ap.add_argument("--url", default=None)
ap.add_argument("--model", default="default")
ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
a = ap.parse_args()

transform = sg.StainedGlassTransformForText.from_pretrained(a.sgt)
embeds = transform.apply(a.prompt, return_tensors="pt")["inputs_embeds"].to(getattr(torch, a.dtype))
buf = io.BytesIO()
torch.save(embeds, buf)
body = {"model": a.model, "prompt_embeds": base64.b64encode(buf.getvalue()).decode(),
        "max_tokens": 32, "temperature": 0.0}
if a.url is None:
    shown = dict(body, prompt_embeds=body["prompt_embeds"][:48] + "…")
    print(json.dumps({"shape": list(embeds.shape), "dtype": a.dtype, "body": shown}))
else:
    req = urllib.request.Request(a.url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    print(json.load(urllib.request.urlopen(req, timeout=120))["choices"][0]["text"])
