"""The Stained Glass Transform, implemented in Rust.

Load the client artefact that ``sgt text export`` writes and transform prompts into embeddings a
model provider can run without seeing the text::

    import stainedglass as sg
    sgt = sg.StainedGlassTransformForText.from_pretrained("artefact")
    out = sgt.apply("What is the capital of France?")
    out["inputs_embeds"]          # float32 (seq, hidden): what the provider receives
    out["input_ids"], out["noise_mask"]   # stay on your machine

``return_tensors="pt"`` returns torch tensors (torch is optional). Noise comes from the OS random
source unless ``seed=`` is given. Every error is a ``StainedGlassError`` (or ``TypeError`` /
``ValueError`` for arguments of the wrong kind) with a message that says what to fix.

Privacy, measured (see docs/eval/ of the repository): the transform hides tokens from
nearest-neighbour decoding, not from a learned inverter; personal data is protected by
replacing it before the transform (``sgt proxy --pii``).
"""

import os as _os

from . import _native

# As the `sgt` binary does: OpenBLAS (loaded at the first large product) picks its kernels from
# this variable; set it for this CPU unless the user did.
if "OPENBLAS_CORETYPE" not in _os.environ:
    _core = _native._openblas_coretype()
    if _core:
        _os.environ["OPENBLAS_CORETYPE"] = _core

from ._native import (  # noqa: E402
    NoiseLayer,
    StainedGlassError,
    StainedGlassTransformForText,
    TokenizerWrapper,
    __version__,
    configure,
    nearest_neighbour_reading,
)

__all__ = [
    "NoiseLayer",
    "StainedGlassError",
    "StainedGlassTransformForText",
    "TokenizerWrapper",
    "__version__",
    "configure",
    "nearest_neighbour_reading",
]
