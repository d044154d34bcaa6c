"""Qwen-Image (ComfyUI's comfy.ldm.qwen_image) and MageFlow (comfy.ldm.mage_flow, Qwen-Image's blocks):
joint-attention blocks, text first, labelled "double"."""
from __future__ import annotations

import torch

from ..layers import LayerId, weight_of
from .base import Layers
from .dit import DiTAdapter

MODULES = ("comfy.ldm.qwen_image.model", "comfy.ldm.mage_flow.model")


class QwenImageAdapter(DiTAdapter):
    name = "Qwen-Image"

    def matches(self, diffusion_model: torch.nn.Module) -> bool:
        return type(diffusion_model).__module__ in MODULES

    def layers(self, diffusion_model: torch.nn.Module) -> Layers:
        # The text rows' values come from each block's add_v_proj.
        return {LayerId("double", i): (block.attn.add_v_proj.out_features,) * 2
                for i, block in enumerate(diffusion_model.transformer_blocks)}

    def blocks(self, diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(diffusion_model.transformer_blocks)

    def output_weights(self, diffusion_model: torch.nn.Module) -> dict[LayerId, torch.Tensor]:
        return {LayerId("double", i): weight_of(block.attn.to_out[0])
                for i, block in enumerate(diffusion_model.transformer_blocks)}

    def labelled_blocks(self, diffusion_model: torch.nn.Module) -> list[tuple[str, int, str]]:
        return [("double_block", i, "double") for i in range(len(diffusion_model.transformer_blocks))]
