"""CogVideoX (ComfyUI's comfy.ldm.cogvideo): blocks over [text, image] that project both with the same weights and
attend jointly, text first (the prompt's 226 T5 rows). ComfyUI labels none of its calls and offers no block patch, so
each block's calls are labelled "double" through its class."""
from __future__ import annotations

import torch

from ..layers import LayerId, weight_of
from .base import Layers
from .dit import DiTAdapter


class CogVideoXAdapter(DiTAdapter):
    name = "CogVideoX"

    def matches(self, diffusion_model: torch.nn.Module) -> bool:
        return type(diffusion_model).__module__ == "comfy.ldm.cogvideo.model"

    def layers(self, diffusion_model: torch.nn.Module) -> Layers:
        width = int(diffusion_model.dim)
        return {LayerId("double", i): (width, width) for i in range(len(diffusion_model.blocks))}

    def blocks(self, diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(diffusion_model.blocks)

    def output_weights(self, diffusion_model: torch.nn.Module) -> dict[LayerId, torch.Tensor]:
        return {LayerId("double", i): weight_of(b.attn_out) for i, b in enumerate(diffusion_model.blocks)}

    def labelled_modules(self, diffusion_model: torch.nn.Module) -> list[tuple[str, str, int]]:
        return [(f"blocks.{i}", "double", i) for i in range(len(diffusion_model.blocks))]
