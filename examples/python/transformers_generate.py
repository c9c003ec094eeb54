"""(b) Generation with Hugging Face `transformers` from the transformed `inputs_embeds`.

    sgt convert-hf --out runs/smollm2-hf          # the bundled SmolLM2 as a transformers folder
    pip install torch transformers
    python examples/python/transformers_generate.py --sgt ARTEFACT --model runs/smollm2-hf

The model never sees the prompt's text or ids: only the embeddings the SGT produced."""
import argparse, json

import torch
from transformers import AutoModelForCausalLM

import stainedglass as sg

ap = argparse.ArgumentParser()
ap.add_argument("--sgt", required=True)
ap.add_argument("--model", required=True)
ap.add_argument("--prompt", default="What is the capital of France?")
ap.add_argument("--seed", type=int, default=None)
a = ap.parse_args()

transform = sg.StainedGlassTransformForText.from_pretrained(a.sgt)
model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32).eval()
out = transform.apply(a.prompt, return_tensors="pt", seed=a.seed)
embeds = out["inputs_embeds"].unsqueeze(0)
mask = out["attention_mask"].unsqueeze(0)
with torch.no_grad():
    ids = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=24, do_sample=False)
print(json.dumps({"prompt": a.prompt, "answer": transform.decode(ids[0].tolist()),
                  "prompt_tokens": int(embeds.shape[1]), "transformed_tokens": int(out["noise_mask"].sum())}))
