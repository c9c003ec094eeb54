"""PyTorch eager reference of `sgt bench text-sgt`: one text-SGT training step on the same f32
SmolLM2 weights (the HF folder of `sgt convert-hf`) — TransformerCloak (one decoder layer copied
from the base, zero-initialised mean head, ρ head with bias −4, Cloak σ, bounded mean), the
frozen base run clean (no grad) and transformed to layer k, the distillation loss of `docs/spec.md` §5.2,
backward, and AdamW (weight decay 0, two groups). Benchmark only; never a runtime dependency."""
import argparse, copy, json, os, time

import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM


class TransformerCloak(nn.Module):
    def __init__(self, base, lo=1e-4, hi=2.0, rho0=-4.0, bound=1.0):
        super().__init__()
        self.layer = copy.deepcopy(base.model.layers[0])
        for p in self.layer.parameters():
            p.requires_grad_(True)
        d = base.config.hidden_size
        self.mean = nn.Linear(d, d)
        self.rho = nn.Linear(d, d)
        nn.init.zeros_(self.mean.weight); nn.init.zeros_(self.mean.bias)
        nn.init.zeros_(self.rho.weight); nn.init.constant_(self.rho.bias, rho0)
        self.rotary = base.model.rotary_emb
        self.lo, self.hi, self.bound = lo, hi, bound

    def forward(self, x, noise_mask):
        b, t, _ = x.shape
        pos = torch.arange(t).unsqueeze(0).expand(b, t)
        cos, sin = self.rotary(x, pos)
        causal = torch.full((t, t), float("-inf")).triu(1)[None, None]
        h = self.layer(x, attention_mask=causal, position_ids=pos, position_embeddings=(cos, sin))
        h = h[0] if isinstance(h, tuple) else h
        mu = self.bound * torch.tanh(self.mean(h) / self.bound)
        std = self.lo + (self.hi - self.lo) * (1 + torch.tanh(self.rho(h))) / 2
        n = noise_mask.unsqueeze(-1).to(x.dtype)
        xt = x + n * (mu + std * torch.randn_like(x))
        return xt, std


def cosine(a, b):
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-12)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hf-dir", required=True)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layer", type=int, default=6)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=int(os.environ.get("SGT_THREADS", os.cpu_count())))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(a.hf_dir, torch_dtype=torch.float32, attn_implementation="eager")
    base.eval()
    for q in base.parameters():
        q.requires_grad_(False)
    cloak = TransformerCloak(base)
    base.model.layers = base.model.layers[: a.layer]
    weights = [q for n, q in cloak.named_parameters() if n not in ("mean.bias", "rho.bias")]
    opt = torch.optim.AdamW([
        {"params": weights, "lr": 2e-4, "weight_decay": 0.0},
        {"params": [cloak.mean.bias, cloak.rho.bias], "lr": 2e-2, "weight_decay": 0.0},
    ])
    emb = base.get_input_embeddings()
    ids = torch.randint(100, base.config.vocab_size, (a.batch, a.seq))
    mask = torch.ones(a.batch, a.seq, dtype=torch.long)
    ones = torch.ones(a.batch, a.seq)
    alpha, w_std, w_sim, w_cos = 0.54, 0.01, 0.75, 12.0

    def step():
        x = emb(ids).detach()
        with torch.no_grad():
            clean = base.model(inputs_embeds=x, attention_mask=mask, output_hidden_states=True).hidden_states[a.layer]
        xt, std = cloak(x, ones)
        tr = base.model(inputs_embeds=xt, attention_mask=mask, output_hidden_states=True).hidden_states[a.layer]
        l_dist = w_cos * (1 - cosine(clean, tr)).mean()
        rms = x.pow(2).mean(-1, keepdim=True).add(1e-12).sqrt()
        l_std = -(std / rms).log().mean()
        l_sim = cosine(x, xt).mean()
        loss = (1 - alpha) * l_dist + alpha * (w_std * l_std + w_sim * l_sim)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(weights, 1.0)
        opt.step()
        return loss.item()

    step()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    tps = a.steps * a.batch * a.seq / (time.perf_counter() - t)
    print(json.dumps({"impl": f"torch-{torch.__version__}-eager", "threads": a.threads,
                      "text_sgt_train_tokens_per_s": tps}))


if __name__ == "__main__":
    main()
