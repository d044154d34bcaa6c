"""SD3 and SD3.5 (ComfyUI's comfy.ldm.modules.diffusionmodules.mmdit): joint blocks over [text, image], each
projecting text and image apart and attending jointly, the same form as Flux's double blocks.

The context is CLIP-L's and CLIP-G's rows side by side, then T5-XXL's (word_positions marks the word in both
parts). ComfyUI labels no call here and runs a block patch's block under its own gradient checkpoint, which
recomputes with the one options dict the last label was written to; so each joint block's calls are labelled
"double" through its class, on a copy of the options. SD3.5 Medium's first blocks also attend over the image
alone, a second call under the same label: the override acts only on the joint call, the one of text and image
rows.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from ..layers import LayerId, weight_of
from .base import Layers
from .dit import DiTAdapter

MODULE = "comfy.ldm.modules.diffusionmodules.mmdit"


class SD3Adapter(DiTAdapter):
    name = "SD3"

    def matches(self, diffusion_model: torch.nn.Module) -> bool:
        return type(diffusion_model).__module__ == MODULE and hasattr(diffusion_model, "joint_blocks")

    def text_layout(self, diffusion_model: torch.nn.Module, context_length: int,
                    inputs: Mapping[str, Any]) -> tuple[int, int]:
        registers = int(diffusion_model.register_length)  # learnt rows before the prompt's (0 in SD3's releases)
        return registers, registers + context_length

    def image_rows(self, diffusion_model: torch.nn.Module, x: torch.Tensor) -> int:
        patch = int(diffusion_model.patch_size)  # the latent is padded to whole patches
        return math.ceil(x.shape[-2] / patch) * math.ceil(x.shape[-1] / patch)

    def layers(self, diffusion_model: torch.nn.Module) -> Layers:
        width = int(diffusion_model.hidden_size)
        return {LayerId("double", i): (width, width) for i in range(len(diffusion_model.joint_blocks))}

    def blocks(self, diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(diffusion_model.joint_blocks)

    def output_weights(self, diffusion_model: torch.nn.Module) -> dict[LayerId, torch.Tensor]:
        return {LayerId("double", i): weight_of(b.x_block.attn.proj)
                for i, b in enumerate(diffusion_model.joint_blocks)}

    def labelled_modules(self, diffusion_model: torch.nn.Module) -> list[tuple[str, str, int]]:
        return [(f"joint_blocks.{i}", "double", i) for i in range(len(diffusion_model.joint_blocks))]
