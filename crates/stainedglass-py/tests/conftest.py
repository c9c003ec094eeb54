"""Fixtures of the Python package's tests: the `sgt` binary and the assets of this repository
(the suite runs from scripts/python-test.sh, which builds both), an artefact exported by the
binary, and a small image noise layer written here."""

import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

import stainedglass as sg

ROOT = pathlib.Path(__file__).resolve().parents[3]


def _required(var: str, default: pathlib.Path) -> pathlib.Path:
    p = pathlib.Path(os.environ.get(var, default))
    if not p.exists():
        raise RuntimeError(f"{p} is missing: run ./scripts/python-test.sh (it builds and sets {var})")
    return p


ASSETS = _required("SGT_ASSETS", ROOT / "assets")
SGT = _required("SGT_BIN", ROOT / "target" / "release" / "sgt")

# The products as the binary runs them (same BLAS choice, oneMKL from the assets on Intel), so
# that seeded outputs agree bit for bit.
sg.configure(blas=os.environ.get("SGT_BLAS", "auto"), assets=ASSETS)


def sgt(*args: str) -> str:
    env = dict(os.environ, SGT_ASSETS=str(ASSETS))
    r = subprocess.run([str(SGT), *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise AssertionError(f"sgt {' '.join(args)} failed:\n{r.stderr}")
    return r.stdout


def read_safetensors(path) -> dict:
    """The tensors of a safetensors file, read with numpy only."""
    raw = pathlib.Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "U8": np.uint8, "U32": np.uint32}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


def write_safetensors(path, tensors: dict) -> None:
    names = {np.dtype(np.float32): "F32", np.dtype(np.uint8): "U8"}
    header, chunks, at = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        data = arr.tobytes()
        header[name] = {"dtype": names[arr.dtype], "shape": list(arr.shape), "data_offsets": [at, at + len(data)]}
        chunks.append(data)
        at += len(data)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    pathlib.Path(path).write_bytes(len(h).to_bytes(8, "little") + h + b"".join(chunks))


@pytest.fixture(scope="session")
def artefact(tmp_path_factory) -> pathlib.Path:
    """The bundled model's untrained SGT, exported by the binary (f16 table)."""
    d = tmp_path_factory.mktemp("art") / "artefact"
    sgt("text", "export", "--init-only", "--f16", "--output", str(d))
    return d


@pytest.fixture(scope="session")
def transform(artefact) -> "sg.StainedGlassTransformForText":
    return sg.StainedGlassTransformForText.from_pretrained(artefact)


@pytest.fixture(scope="session")
def noise_layer_dir(tmp_path_factory) -> pathlib.Path:
    """A CloakNoiseLayer for 1×8×8 images with visible noise and a 25% mask."""
    d = tmp_path_factory.mktemp("vision") / "noise_layer"
    d.mkdir()
    rng = np.random.default_rng(0)
    write_safetensors(
        d / "noise_layer.safetensors",
        {
            "locs": rng.normal(0, 0.1, (1, 8, 8)).astype(np.float32),
            "rhos": rng.normal(0, 0.5, (1, 8, 8)).astype(np.float32),
        },
    )
    (d / "config.json").write_text(
        json.dumps({"format_version": 1, "layer": {"kind": "cloak", "shape": [1, 8, 8], "percent_to_mask": 0.25}})
    )
    return d
