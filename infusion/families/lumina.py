"""Lumina 2 and Z-Image (ComfyUI's NextDiT, comfy.ldm.lumina): joint layers over [caption, image], labelled
"double". The caption is refined on its own first (context_refiner, unlabelled: not a layer here) and
padded to a multiple of `pad_tokens_multiple` rows (Z-Image) before it joins the image."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from .. import compat
from ..layers import LayerId, weight_of
from .base import Layers
from .dit import DiTAdapter


class LuminaAdapter(DiTAdapter):
    name = "Lumina 2 / Z-Image"

    def matches(self, diffusion_model: torch.nn.Module) -> bool:
        return type(diffusion_model).__module__ == "comfy.ldm.lumina.model" and hasattr(diffusion_model, "layers")

    def unreachable(self, diffusion_model: torch.nn.Module) -> str | None:
        # Its layers offer no block patches to label them with, so ComfyUI must label them itself.
        if not compat.labels_blocks(diffusion_model):
            return "this ComfyUI's Lumina 2 does not label its layers (newer ComfyUI does): update ComfyUI"
        return None

    def layers(self, diffusion_model: torch.nn.Module) -> Layers:
        def width(attention: torch.nn.Module) -> int:
            return attention.n_local_kv_heads * attention.head_dim  # the values' heads (grouped-query)
        return {LayerId("double", i): (width(layer.attention),) * 2 for i, layer in enumerate(diffusion_model.layers)}

    def text_layout(self, diffusion_model: torch.nn.Module, context_length: int,
                    inputs: Mapping[str, Any]) -> tuple[int, int]:
        multiple = getattr(diffusion_model, "pad_tokens_multiple", None)
        return 0, (-(-context_length // multiple) * multiple if multiple else context_length)

    def blocks(self, diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(diffusion_model.layers)

    def output_weights(self, diffusion_model: torch.nn.Module) -> dict[LayerId, torch.Tensor]:
        return {LayerId("double", i): weight_of(layer.attention.out) for i, layer in enumerate(diffusion_model.layers)}
