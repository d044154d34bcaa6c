"""Flux-style DiTs: FLUX.1 (dev, schnell), FLUX.2, Chroma (ComfyUI's comfy.ldm.flux and comfy.ldm.chroma).

Double-stream blocks (text and image projected separately, attended jointly) and single-stream blocks
(one sequence, text first), labelled "double" and "single" by ComfyUI. Their blocks add to their input
tensors in place, so training runs them through dit.safe_block.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from ..layers import LayerId
from .base import Layers
from .dit import DiTAdapter, DiTResidual

MODULES = ("comfy.ldm.flux.model", "comfy.ldm.chroma.model")
# FLUX.1-dev is guidance-distilled: training gives it guidance 1.0, as kohya's FLUX.1 guide and
# ai-toolkit train it (3.5, ComfyUI's default, is what it samples at).
TRAINING_GUIDANCE = 1.0


class BlockLabel:
    """A `patches_replace["dit"]` block patch that labels the block's attention call with its
    block_type and block_index, as newer ComfyUI's Flux does itself (0.3.64's does not), then runs
    whatever replaced the block before (another pack's patch) or the block itself."""

    def __init__(self, block_type: str, index: int, previous: Any = None):
        self.block_type, self.index, self.previous = block_type, index, previous

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args.get("transformer_options")
        if options is not None:
            options["block_type"], options["block_index"] = self.block_type, self.index
        if self.previous is not None:
            return self.previous(args, extra)
        return extra["original_block"](args)


class FluxAdapter(DiTAdapter):
    name = "Flux"
    mutates_block_inputs = True

    def matches(self, diffusion_model: torch.nn.Module) -> bool:
        return type(diffusion_model).__module__ in MODULES and hasattr(diffusion_model, "double_blocks")

    def layers(self, diffusion_model: torch.nn.Module) -> Layers:
        width = int(diffusion_model.hidden_size)
        return {**{LayerId("double", i): (width, width) for i in range(len(diffusion_model.double_blocks))},
                **{LayerId("single", i): (width, width) for i in range(len(diffusion_model.single_blocks))}}

    def blocks(self, diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
        return [*diffusion_model.double_blocks, *diffusion_model.single_blocks]

    def training_conditioning(self, diffusion_model: torch.nn.Module) -> Mapping[str, Any]:
        params = getattr(diffusion_model, "params", None)
        return {"guidance": TRAINING_GUIDANCE} if getattr(params, "guidance_embed", False) else {}

    def install(self, patcher: Any, residual: DiTResidual) -> None:
        super().install(patcher, residual)
        dm = patcher.get_model_object("diffusion_model")
        replaced = patcher.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
        for block_type, count in (("double", len(dm.double_blocks)), ("single", len(dm.single_blocks))):
            for i in range(count):
                previous = replaced.get((f"{block_type}_block", i))
                if not isinstance(previous, BlockLabel):
                    patcher.set_model_patch_replace(BlockLabel(block_type, i, previous), "dit", f"{block_type}_block", i)
