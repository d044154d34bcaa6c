"""Ideogram 4 (ComfyUI's comfy.ldm.ideogram4): single-stream blocks over [text, image] (Lumina 2's form), reading 13
layers of Qwen3-VL-8B side by side. ComfyUI labels none of its attention calls and offers no block patch there, so
each block's calls are labelled "single" through its class."""
from __future__ import annotations

import torch

from ..layers import LayerId, weight_of
from .base import Layers
from .dit import DiTAdapter


class Ideogram4Adapter(DiTAdapter):
    name = "Ideogram 4"

    def matches(self, diffusion_model: torch.nn.Module) -> bool:
        return type(diffusion_model).__module__ == "comfy.ldm.ideogram4.model"

    def layers(self, diffusion_model: torch.nn.Module) -> Layers:
        return {LayerId("single", i): (block.attention.hidden_size,) * 2
                for i, block in enumerate(diffusion_model.layers)}

    def blocks(self, diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(diffusion_model.layers)

    def output_weights(self, diffusion_model: torch.nn.Module) -> dict[LayerId, torch.Tensor]:
        return {LayerId("single", i): weight_of(block.attention.o) for i, block in enumerate(diffusion_model.layers)}

    def labelled_modules(self, diffusion_model: torch.nn.Module) -> list[tuple[str, str, int]]:
        return [(f"layers.{i}", "single", i) for i in range(len(diffusion_model.layers))]
