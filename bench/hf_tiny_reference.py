"""Writes the tiny reference models that `crates/stainedglass-models/tests/hf_reference.rs`
checks our Llama-family implementation against: one random, tiny configuration per architecture
users bring (Llama 3.x with `rope_scaling` of type llama3 and grouped-query attention; Qwen2.5
with q/k/v biases and tied embeddings; Mistral; a SmolLM2-style Llama with tied embeddings),
each saved by Hugging Face `transformers` as a model folder (config.json, model.safetensors)
with `reference.json`: the input ids, the logits and the hidden state after the first decoder
layer, computed by `transformers` in float32.

Run once (needs torch and transformers; never in CI), then commit the folders:
    python bench/hf_tiny_reference.py crates/stainedglass-models/tests/fixtures/hf_tiny
"""
import json
import pathlib
import sys

import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5,
              max_position_embeddings=256, initializer_range=0.2, torch_dtype="float32")

MODELS = {
    # wavelengths 6.3, 63, 628, 6283 against a 128-token original context: one frequency kept,
    # one in the interpolated band, two stretched by the factor.
    "llama3": (LlamaForCausalLM, LlamaConfig(
        **COMMON, rope_theta=10_000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 128})),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(
        **COMMON, rope_theta=1_000_000.0, tie_word_embeddings=True)),
    "mistral": (MistralForCausalLM, MistralConfig(
        **COMMON, rope_theta=10_000.0, tie_word_embeddings=False, sliding_window=4096)),
    "smollm2": (LlamaForCausalLM, LlamaConfig(
        **COMMON, rope_theta=100_000.0, tie_word_embeddings=True)),
}

SEQ = 48


def main(out: pathlib.Path):
    for name, (cls, cfg) in MODELS.items():
        torch.manual_seed(sum(map(ord, name)))
        model = cls(cfg).eval()
        with torch.no_grad():
            # Norm weights and biases away from their 1 / 0 initial values, so a missing or
            # transposed one shows.
            for n, p in model.named_parameters():
                if n.endswith("norm.weight"):
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                elif n.endswith(".bias"):
                    p.copy_(0.2 * torch.randn_like(p))
        ids = torch.randint(0, cfg.vocab_size, (1, SEQ), generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            o = model(input_ids=ids, output_hidden_states=True)
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True)
        (d / "reference.json").write_text(json.dumps({
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "input_ids": ids[0].tolist(),
            "logits": [[round(x, 7) for x in row] for row in o.logits[0].tolist()],
            "hidden_after_layer_1": [[round(x, 7) for x in row] for row in o.hidden_states[1][0].tolist()],
        }))
        print(name, d)


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
