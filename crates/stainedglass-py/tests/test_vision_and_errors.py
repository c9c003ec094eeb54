"""The image noise layer against the binary, and bad input of every kind: a clear exception,
never a crash of the interpreter."""

import shutil

import numpy as np
import pytest

import stainedglass as sg
from conftest import read_safetensors, sgt, write_safetensors


def images(n=4):
    return np.random.default_rng(1).random((n, 1, 8, 8), dtype=np.float32)


def test_noise_layer_equals_the_cli_bit_for_bit(noise_layer_dir, tmp_path):
    layer = sg.NoiseLayer.from_pretrained(noise_layer_dir)
    assert layer.input_shape == [1, 8, 8]
    x = images()
    write_safetensors(tmp_path / "in.safetensors", {"images": x})
    sgt("vision", "apply", "--sgt", str(noise_layer_dir), "--input", str(tmp_path / "in.safetensors"),
        "--seed", "9", "--output", str(tmp_path / "out"))
    cli = read_safetensors(tmp_path / "out" / "transformed.safetensors")["images"]
    py = layer.apply(x, seed=9)
    assert py.shape == x.shape and py.dtype == np.float32
    assert np.array_equal(py.view(np.uint32), cli.view(np.uint32)), "bit for bit"
    assert not np.array_equal(layer.apply(x), layer.apply(x)), "fresh noise without a seed"
    # A non-contiguous view is read correctly.
    wide = np.concatenate([x, x], axis=3)[:, :, :, :8]
    assert not wide.flags.c_contiguous
    assert np.array_equal(layer.apply(wide, seed=9), py)


def test_bad_images_raise(noise_layer_dir):
    layer = sg.NoiseLayer.from_pretrained(noise_layer_dir)
    with pytest.raises(TypeError):
        layer.apply(images().astype(np.float64))
    with pytest.raises(ValueError, match="this layer takes"):
        layer.apply(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="no images"):
        layer.apply(np.zeros((0, 1, 8, 8), np.float32))
    bad = images()
    bad[1, 0, 2, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        layer.apply(bad)
    with pytest.raises(ValueError, match="return_tensors"):
        layer.apply(images(), return_tensors="tf")


def test_bad_artefacts_raise(artefact, tmp_path):
    with pytest.raises(sg.StainedGlassError, match="nowhere"):
        sg.StainedGlassTransformForText.from_pretrained(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(artefact, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(sg.StainedGlassError):
        sg.StainedGlassTransformForText.from_pretrained(broken)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{not json")
    with pytest.raises(sg.StainedGlassError):
        sg.StainedGlassTransformForText.from_pretrained(tmp_path / "junk")
    with pytest.raises(sg.StainedGlassError):
        sg.NoiseLayer.from_pretrained(tmp_path / "junk")


def test_bad_prompts_raise(transform):
    with pytest.raises(TypeError):
        transform.apply(42)
    with pytest.raises(ValueError, match="empty"):
        transform.apply([])
    with pytest.raises(TypeError, match="message 0"):
        transform.apply([{"role": "user", "content": 5}])
    with pytest.raises(ValueError):
        transform.apply([{"role": "wizard", "content": "hi"}])
    with pytest.raises(ValueError, match="content"):
        transform.apply([{"role": "user"}])
    with pytest.raises(ValueError, match="return_tensors"):
        transform.apply("hi", return_tensors="tf")
    with pytest.raises(sg.StainedGlassError, match="tokens"):
        transform.apply("word " * 20000)
    with pytest.raises(ValueError):
        sg.TokenizerWrapper(transform, prompt_type="poem")
    with pytest.raises(ValueError, match="inputs_embeds"):
        sg.nearest_neighbour_reading(transform, np.zeros((3, 7), np.float32))
    nan = np.zeros((2, transform.hidden_size), np.float32)
    nan[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        sg.nearest_neighbour_reading(transform, nan)
    # After all of that, the interpreter and the transform still work.
    assert transform.apply("still here", seed=0)["inputs_embeds"].shape[1] == transform.hidden_size


def test_configure_twice_with_other_options_raises():
    with pytest.raises(sg.StainedGlassError, match="already chosen"):
        sg.configure(blas="off", library="/nonexistent/libcblas.so")
    with pytest.raises(ValueError):
        sg.configure(blas="fastest")
