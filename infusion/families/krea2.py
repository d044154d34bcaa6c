"""Krea 2 (ComfyUI's comfy.ldm.krea2): single-stream blocks over [text, image], labelled "single".

Its text is Qwen3-VL's (12 of its layers, fused by the model's own text blocks before the image joins,
unlabelled: not layers here). Keys and values have fewer heads than queries; ComfyUI repeats them to
every query head before the attention call, which is where the residual is added: one vector per query
head."""
from __future__ import annotations

import torch

from ..layers import LayerId, weight_of
from .base import Layers
from .dit import DiTAdapter


class Krea2Adapter(DiTAdapter):
    name = "Krea 2"

    def matches(self, diffusion_model: torch.nn.Module) -> bool:
        return type(diffusion_model).__module__ == "comfy.ldm.krea2.model"

    def layers(self, diffusion_model: torch.nn.Module) -> Layers:
        return {LayerId("single", i): (block.attn.heads * block.attn.headdim,) * 2
                for i, block in enumerate(diffusion_model.blocks)}

    def blocks(self, diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(diffusion_model.blocks)

    def output_weights(self, diffusion_model: torch.nn.Module) -> dict[LayerId, torch.Tensor]:
        return {LayerId("single", i): weight_of(block.attn.wo) for i, block in enumerate(diffusion_model.blocks)}
