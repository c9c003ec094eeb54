"""PyTorch eager reference of `sgt bench apply`: the client-side text SGT applied to one chat
prompt of ~256 tokens — chat template and tokenizer (transformers, fast tokenizer), embedding
lookup, the TransformerCloak estimator (one decoder layer of the base, mean and rho heads),
Cloak sigma, per-token percent masking (the largest-sigma features replaced by mu), noise —
and the payload a Python proxy would send (torch.save + base64, vLLM's prompt_embeds). Same
f32 SmolLM2 weights (the HF folder of `sgt convert-hf`). Benchmark only; never a runtime
dependency."""
import argparse, base64, io, json, math, os, statistics, time

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from text_sgt_torch import TransformerCloak


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hf-dir", required=True)
    p.add_argument("--artefact", required=True, help="for its tokenizer.json and chat template")
    p.add_argument("--prompt-file", required=True, help="the user message (same as the Rust run)")
    p.add_argument("--percent-to-mask", type=float, default=None)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--threads", type=int, default=int(os.environ.get("SGT_THREADS", os.cpu_count())))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    base = AutoModelForCausalLM.from_pretrained(a.hf_dir, torch_dtype=torch.float32, attn_implementation="eager")
    base.eval()
    cloak = TransformerCloak(base).eval()
    emb = base.get_input_embeddings()
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(a.artefact, "tokenizer.json"))
    tok.chat_template = open(os.path.join(a.artefact, "chat_template.jinja")).read()
    msgs = [{"role": "user", "content": open(a.prompt_file).read()}]

    def apply():
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, list):
            ids = ids["input_ids"]
        with torch.no_grad():
            x = emb(torch.tensor([ids]))
            b, t, d = x.shape
            pos = torch.arange(t).unsqueeze(0)
            cos, sin = cloak.rotary(x, pos)
            causal = torch.full((t, t), float("-inf")).triu(1)[None, None]
            h = cloak.layer(x, attention_mask=causal, position_ids=pos, position_embeddings=(cos, sin))
            h = h[0] if isinstance(h, tuple) else h
            mu = cloak.bound * torch.tanh(cloak.mean(h) / cloak.bound)
            std = cloak.lo + (cloak.hi - cloak.lo) * (1 + torch.tanh(cloak.rho(h))) / 2
            xt = x + mu + std * torch.randn_like(x)
            if a.percent_to_mask:
                k = math.ceil(a.percent_to_mask * d)
                idx = std.topk(k, dim=-1).indices
                keep = torch.ones_like(std, dtype=torch.bool).scatter(-1, idx, False)
                xt = torch.where(keep, xt, mu)
        buf = io.BytesIO()
        torch.save(xt[0], buf)
        payload = base64.b64encode(buf.getvalue())
        return len(ids), payload

    n, _ = apply()
    ms = []
    for _ in range(a.iters):
        t = time.perf_counter()
        apply()
        ms.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({"impl": f"torch-{torch.__version__}-eager", "threads": a.threads,
                      "prompt_tokens": n, "apply_ms": statistics.median(ms)}))


if __name__ == "__main__":
    main()
