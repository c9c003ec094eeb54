from os import PathLike
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

Message = Dict[str, str]
Conversation = List[Message]
Prompt = Union[str, Conversation]
Instruction = Dict[str, str]
Path = Union[str, PathLike]
Tensors = Literal["np", "pt"]

class StainedGlassError(Exception):
    """A bad artefact, prompt or input; the message says what was wrong and how to fix it."""

def configure(blas: str = "auto", library: Optional[Path] = None, assets: Optional[Path] = None) -> None:
    """Chooses the BLAS ("auto", "mkl", "openblas", "off") before the first transform."""

class StainedGlassTransformForText:
    """The client-side text transform: tokenizer, chat template, embedding table and SGT."""

    @staticmethod
    def from_pretrained(path: Path, *, precision: str = "f32") -> "StainedGlassTransformForText":
        """Loads an artefact folder written by `sgt text export` (every file's sha256 checked);
        `precision="bf16"` runs the SGT's products in bf16 with f32 accumulation."""
    def save_pretrained(self, path: Path) -> None:
        """Writes the artefact atomically."""
    def apply(
        self,
        prompt: Union[Prompt, Sequence[Prompt]],
        *,
        return_tensors: Tensors = "np",
        seed: Optional[int] = None,
    ) -> Dict[str, Any]:
        """Transforms a prompt (or a list of prompts, left-padded into a batch).

        Returns `inputs_embeds` (float32, (seq, hidden) or (batch, seq, hidden)), `input_ids`,
        `attention_mask` and `noise_mask` (int64)."""
    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """The text of token ids (e.g. what a server generated)."""
    @property
    def hidden_size(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def max_positions(self) -> int: ...
    @property
    def base_model(self) -> Dict[str, Any]: ...

class TokenizerWrapper:
    """Ids and aligned attention, noise and loss masks (and labels), as the trainers use them."""

    def __init__(
        self,
        source: Union[Path, StainedGlassTransformForText],
        *,
        prompt_type: Literal["chat", "instruction"] = "chat",
        include_labels: bool = False,
        ignore_prompt_loss: bool = True,
        transform_all_tokens: bool = False,
        add_generation_prompt: bool = False,
        max_length: Optional[int] = None,
        truncation: bool = False,
        padding_side: Literal["left", "right"] = "left",
    ) -> None: ...
    def __call__(
        self,
        prompt: Union[Prompt, Instruction, Sequence[Union[Prompt, Instruction]]],
        *,
        return_tensors: Tensors = "np",
    ) -> Dict[str, Any]:
        """`input_ids`, `attention_mask`, `noise_mask` (and `labels`, `loss_mask`), int64."""

class NoiseLayer:
    """A trained image SGT (CloakNoiseLayer or PatchCloakNoiseLayer)."""

    @staticmethod
    def from_pretrained(path: Path) -> "NoiseLayer": ...
    @property
    def input_shape(self) -> List[int]: ...
    def apply(
        self,
        images: npt.NDArray[np.float32],
        *,
        return_tensors: Tensors = "np",
        seed: Optional[int] = None,
    ) -> Any:
        """Transforms float32 images (n, channels, height, width) with finite values."""

def nearest_neighbour_reading(
    transform: StainedGlassTransformForText,
    inputs_embeds: npt.NDArray[np.float32],
    input_ids: Optional[Sequence[int]] = None,
    noise_mask: Optional[Sequence[int]] = None,
) -> Dict[str, Any]:
    """The nearest vocabulary token of every position (the weakest attack): `input_ids`,
    `text`, and with the true ids, `recovered`, the share of transformed tokens read back."""
