"""What differs from one model family to the next, behind one small interface.

An adapter answers, for the diffusion model inside a ComfyUI ModelPatcher: which attention layers read
text (their names and widths, for the concept file, the fit check and the messages); how a concept is
installed on a cloned patcher and found there again; which blocks training recomputes under gradient
checkpointing; and what training gives the model besides the prompt. The text side (where the prompt's
tokens sit in the model's context) is the tokenizer's business: prompt.py.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Mapping, Sequence

import torch

from ..concept import InfusionConcept
from ..layers import LayerId
from ..residual import ConceptResidual
from ..value_space import ValueSpace

Layers = dict[LayerId, tuple[int, int]]  # {layer: (vector width, value width)}


class FamilyAdapter:
    """One kind of model (UNet cross-attention, Flux-style joint attention, ...)."""

    name: str = ""
    vector_space: str = "text"  # where the residual vectors live: "text" (UNet) or "value" (DiT)
    variants: tuple[str, ...] = ("value",)

    def matches(self, diffusion_model: torch.nn.Module) -> bool:
        raise NotImplementedError

    def unreachable(self, diffusion_model: torch.nn.Module) -> str | None:
        """Why this ComfyUI's version of the family cannot be reached (None: it can)."""
        return None

    def layers(self, diffusion_model: torch.nn.Module) -> Layers:
        raise NotImplementedError

    def residual(self, concept: InfusionConcept, **options: Any) -> ConceptResidual:
        """The concept as this family's attention patches use it (options: strength, sigma_range,
        trainable, layer_strengths)."""
        raise NotImplementedError

    def install(self, patcher: Any, residual: ConceptResidual) -> None:
        """Add the residual to `patcher` (a clone the caller owns), composed with whatever is there."""
        raise NotImplementedError

    def applied(self, patcher: Any) -> list[ConceptResidual]:
        """The residuals installed on `patcher`."""
        raise NotImplementedError

    def native_resolution(self, model: Any) -> int:
        """The size in pixels the base model was trained at (training's default resolution)."""
        return 1024

    def training_conditioning(self, diffusion_model: torch.nn.Module) -> Mapping[str, Any]:
        """What training gives every caption's conditioning besides the prompt (e.g. Flux-dev's guidance)."""
        return {}

    def photo_conditioning(self, model: Any, original: tuple[int, int], crop: tuple[int, int],
                           size: tuple[int, int]) -> Mapping[str, Any]:
        """What training gives one photo's conditioning besides the caption's: a family conditioned on the
        photo's geometry (SDXL) gets its own size, where its crop starts (top, left) and the size it trains at,
        all (height, width) in pixels."""
        return {}

    def output_weights(self, diffusion_model: torch.nn.Module) -> dict[LayerId, torch.Tensor]:
        """Each layer's projection that reads its attention output (the image's, where text and image have
        their own): the residual reaches the picture through it (value_space.py)."""
        raise NotImplementedError

    def value_weights(self, diffusion_model: torch.nn.Module) -> dict[LayerId, torch.Tensor] | None:
        """Each layer's map from a residual vector to what it adds to the values (None: the vectors are
        in value space already)."""
        return None

    def training_space(self, diffusion_model: torch.nn.Module, variant: str) -> ValueSpace:
        """Where training moves a concept of `variant` (value space; text-space families map it back)."""
        return ValueSpace({"value": self.output_weights(diffusion_model)})

    def training_blocks(self, diffusion_model: torch.nn.Module, checkpointing: bool,
                        trained: Sequence[torch.Tensor]) -> AbstractContextManager:
        """While training: the model's blocks made safe to backpropagate through, and recomputed in the
        backward pass when `checkpointing` (`trained`: the vectors being trained)."""
        raise NotImplementedError
