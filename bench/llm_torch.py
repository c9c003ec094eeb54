"""PyTorch eager reference of `sgt bench llm`: transformers' Llama on the same weights (the HF
folder written by `sgt convert-hf`; in f32, or with `--dtype bfloat16` computed in bf16, the
reference for serving a bf16 folder as stored), same shapes, same thread count. Measures prefill
tokens/s and greedy decode tokens/s at batch 1 (KV cache), one SGT-style training step (clean
forward to layer k without grad + noisy forward to layer k + backward to the input embeddings),
and peak RSS during decode. Benchmark only; never a runtime dependency."""
import argparse, json, os, resource, time

import torch
from transformers import AutoModelForCausalLM


def peak_rss_reset():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hf-dir", required=True)
    p.add_argument("--prefill-tokens", type=int, default=128)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-seq", type=int, default=128)
    p.add_argument("--layer", type=int, default=6)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--threads", type=int, default=int(os.environ.get("SGT_THREADS", os.cpu_count())))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, a.dtype)
    model = AutoModelForCausalLM.from_pretrained(a.hf_dir, torch_dtype=dtype, attn_implementation="eager")
    model.eval()
    for q in model.parameters():
        q.requires_grad_(False)
    weight_mb = sum(q.numel() for q in model.parameters()) * 4 / 2**20  # as f32, as the Rust side
    half = a.dtype != "float32"
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, vocab, (1, a.prefill_tokens), generator=g)
    # prefill
    with torch.no_grad():
        model(ids)  # warm-up
        t = time.perf_counter()
        for _ in range(3):
            model(ids, logits_to_keep=1)
        prefill = 3 * a.prefill_tokens / (time.perf_counter() - t)
    # decode (greedy, KV cache), after a 16-token prompt
    prompt = ids[:, :16]
    peak_rss_reset()
    with torch.no_grad():
        out = model(prompt, use_cache=True, logits_to_keep=1)
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t = time.perf_counter()
        for _ in range(a.decode_tokens):
            out = model(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        decode = a.decode_tokens / (time.perf_counter() - t)
    decode_peak = peak_rss_mb()
    row = {
        "impl": f"torch-{torch.__version__}-eager" + ("-bf16" if half else ""),
        "threads": a.threads,
        "prefill_tokens_per_s": prefill,
        "decode_tokens_per_s": decode,
        "decode_peak_rss_mb": decode_peak,
        "weights_f32_mb": weight_mb,
    }
    if half:  # inference only: the training step is measured in f32
        print(json.dumps(row))
        return
    # training-style step
    emb = model.get_input_embeddings()
    tids = torch.randint(100, vocab, (a.train_batch, a.train_seq), generator=g)
    mask = torch.ones_like(tids)
    base = emb(tids).detach()
    noise = torch.randn(base.shape, generator=g) * 0.01

    def step():
        with torch.no_grad():
            clean = model.model(inputs_embeds=base, attention_mask=mask, output_hidden_states=True).hidden_states[a.layer]
        x = (base + noise).requires_grad_(True)
        noisy = model.model(inputs_embeds=x, attention_mask=mask, output_hidden_states=True).hidden_states[a.layer]
        loss = (noisy - clean).pow(2).mean()
        loss.backward()
        return x.grad

    # Stop the stack at layer k, as the Rust side does (no wasted layers).
    model.model.layers = model.model.layers[: a.layer]
    step()
    t = time.perf_counter()
    for _ in range(a.train_steps):
        step()
    train = a.train_steps * a.train_batch * a.train_seq / (time.perf_counter() - t)
    row["train_step_tokens_per_s"] = train
    print(json.dumps(row))


if __name__ == "__main__":
    main()
