"""The text transform and the tokenizer wrapper from Python, against the `sgt` binary."""

import json

import numpy as np
import pytest

import stainedglass as sg
from conftest import read_safetensors, sgt

QUESTION = "What is the capital of France?"


def test_apply_equals_the_cli_bit_for_bit(transform, artefact, tmp_path):
    out = tmp_path / "emb.safetensors"
    sgt("text", "apply", "--sgt", str(artefact), "--prompt", QUESTION, "--seed", "7", "--pii", "off",
        "--output", str(out))
    cli = read_safetensors(out)["embeddings"]
    py = transform.apply(QUESTION, seed=7)
    e = py["inputs_embeds"]
    assert e.dtype == np.float32 and e.shape == cli.shape == (len(py["input_ids"]), transform.hidden_size)
    assert np.array_equal(e.view(np.uint32), cli.view(np.uint32)), "bit for bit"
    # A conversation with a system message, and the same seed twice.
    conv = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}]
    a, b = transform.apply(conv, seed=3), transform.apply(conv, seed=3)
    assert np.array_equal(a["inputs_embeds"], b["inputs_embeds"])


def test_bf16_apply_equals_the_cli_bit_for_bit(artefact, tmp_path):
    out = tmp_path / "emb.safetensors"
    sgt("text", "apply", "--sgt", str(artefact), "--prompt", QUESTION, "--seed", "7", "--pii", "off",
        "--precision", "bf16", "--output", str(out))
    t = sg.StainedGlassTransformForText.from_pretrained(artefact, precision="bf16")
    e = t.apply(QUESTION, seed=7)["inputs_embeds"]
    assert np.array_equal(e.view(np.uint32), read_safetensors(out)["embeddings"].view(np.uint32))
    with pytest.raises(ValueError, match="f32 or bf16"):
        sg.StainedGlassTransformForText.from_pretrained(artefact, precision="f64")


def test_fresh_noise_without_a_seed(transform):
    a, b = transform.apply(QUESTION), transform.apply(QUESTION)
    assert np.array_equal(a["input_ids"], b["input_ids"])
    assert not np.array_equal(a["inputs_embeds"], b["inputs_embeds"]), "noise is never reused"


def test_masks_equal_sgt_tokenize(artefact, transform):
    cli = json.loads(sgt("tokenize", "--tokenizer", str(artefact), "--prompt", QUESTION,
                         "--add-generation-prompt", "--json"))
    w = sg.TokenizerWrapper(artefact, add_generation_prompt=True)
    enc = w(QUESTION)
    for k in ["input_ids", "attention_mask", "noise_mask"]:
        assert enc[k].dtype == np.int64
        assert enc[k].tolist() == cli[k], k
    applied = transform.apply(QUESTION, seed=0)
    assert applied["input_ids"].tolist() == cli["input_ids"]
    assert applied["noise_mask"].tolist() == cli["noise_mask"]
    # Labels: only the assistant's reply carries loss.
    conv = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Paris."}]
    lab = sg.TokenizerWrapper(transform, include_labels=True)(conv)
    assert set(lab) == {"input_ids", "attention_mask", "noise_mask", "labels", "loss_mask"}
    on = lab["loss_mask"] == 1
    assert on.any() and (lab["labels"][~on] == -100).all()
    assert (lab["labels"][on] == lab["input_ids"][on]).all()


def test_instruction_prompts(artefact):
    w = sg.TokenizerWrapper(artefact, prompt_type="instruction", include_labels=True)
    one = w({"instruction": "Translate to French.", "context": "Good morning", "response": "Bonjour"})
    assert one["input_ids"].ndim == 1 and (one["loss_mask"] == 1).any()
    batch = w([{"instruction": "Say hi."}, {"instruction": "Name a colour.", "response": "Blue"}])
    assert batch["input_ids"].ndim == 2 and batch["input_ids"].shape[0] == 2
    with pytest.raises(ValueError, match="unknown instruction field"):
        w({"instruction": "x", "prompt": "y"})


def test_a_batch_is_left_padded_and_a_batch_of_one_is_the_prompt(transform):
    single = transform.apply(QUESTION, seed=11)
    one = transform.apply([QUESTION], seed=11)
    assert one["inputs_embeds"].shape == (1,) + single["inputs_embeds"].shape
    assert np.array_equal(one["inputs_embeds"][0], single["inputs_embeds"])
    long = [{"role": "user", "content": "Name three rivers that flow through Europe, longest first."}]
    b = transform.apply([QUESTION, long], seed=12)
    rows, seq, hidden = b["inputs_embeds"].shape
    assert (rows, hidden) == (2, transform.hidden_size)
    pad = seq - len(single["input_ids"])
    assert pad > 0
    assert (b["attention_mask"][0, :pad] == 0).all() and (b["noise_mask"][0, :pad] == 0).all()
    assert b["input_ids"][0, pad:].tolist() == single["input_ids"].tolist()
    assert (b["attention_mask"][1] == 1).all()


def test_torch_when_installed_else_a_clear_import_error(transform):
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install torch"):
            transform.apply(QUESTION, return_tensors="pt")
        return
    out = transform.apply(QUESTION, return_tensors="pt", seed=1)
    assert isinstance(out["inputs_embeds"], torch.Tensor)
    assert out["inputs_embeds"].dtype == torch.float32


def test_save_pretrained_round_trips(transform, tmp_path):
    transform.save_pretrained(tmp_path / "copy")
    again = sg.StainedGlassTransformForText.from_pretrained(tmp_path / "copy")
    a, b = transform.apply(QUESTION, seed=5), again.apply(QUESTION, seed=5)
    assert np.array_equal(a["inputs_embeds"], b["inputs_embeds"])
    assert again.base_model["embedding_sha256"] == transform.base_model["embedding_sha256"]
    assert repr(again).startswith("StainedGlassTransformForText(")


def test_nearest_neighbour_reading(transform):
    out = transform.apply(QUESTION, seed=2)
    r = sg.nearest_neighbour_reading(transform, out["inputs_embeds"], out["input_ids"].tolist(),
                                     out["noise_mask"].tolist())
    assert len(r["input_ids"]) == len(out["input_ids"])
    assert 0.0 <= r["recovered"] <= 1.0
    assert isinstance(r["text"], str)
