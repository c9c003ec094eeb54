"""(a) Transform a prompt with the client artefact and send only the embeddings to `sgt serve`.

    sgt text export --sgt runs/quickstart/train/sgt --output artefact   # or the quickstart's artefact
    sgt serve --port 8000 &
    python examples/python/send_to_sgt_serve.py --sgt runs/quickstart/artefact --url http://127.0.0.1:8000

Needs only the `stainedglass` package and numpy: the request body is a base64 safetensors file
holding one `(seq, hidden)` float32 tensor, written here with numpy."""
import argparse, base64, json, urllib.request

import numpy as np

import stainedglass as sg


def safetensors_bytes(name: str, a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a, dtype=np.float32)
    header = json.dumps({name: {"dtype": "F32", "shape": list(a.shape), "data_offsets": [0, a.nbytes]}}).encode()
    header += b" " * ((8 - len(header) % 8) % 8)
    return len(header).to_bytes(8, "little") + header + a.tobytes()


ap = argparse.ArgumentParser()
ap.add_argument("--sgt", required=True, help="the client artefact folder")
ap.add_argument("--url", default="http://127.0.0.1:8000")
ap.add_argument("--prompt", default="What is the capital of France?")
ap.add_argument("--api-key", default=None)
a = ap.parse_args()

transform = sg.StainedGlassTransformForText.from_pretrained(a.sgt)
out = transform.apply(a.prompt)  # fresh noise from the OS random source
body = {"embeddings": base64.b64encode(safetensors_bytes("embeddings", out["inputs_embeds"])).decode(),
        "max_tokens": 32, "temperature": 0.0}
req = urllib.request.Request(a.url + "/v1/generate", data=json.dumps(body).encode(),
                             headers={"content-type": "application/json"})
if a.api_key:
    req.add_header("authorization", f"Bearer {a.api_key}")
reply = json.load(urllib.request.urlopen(req, timeout=120))
print(json.dumps({"prompt_tokens": int(out["input_ids"].shape[0]),
                  "transformed_tokens": int(out["noise_mask"].sum()),
                  "answer": transform.decode(reply["tokens"]),
                  "finish_reason": reply["finish_reason"]}))
