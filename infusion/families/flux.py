"""Flux-style DiTs: FLUX.1 (dev, schnell), FLUX.2, Chroma, Chroma Radiance (on pixels), HunyuanImage 2.1 and
HunyuanVideo 1.5 (ComfyUI's comfy.ldm.flux, chroma, chroma_radiance and hunyuan_video, built of Flux's blocks).

Double-stream blocks (text and image projected separately, attended jointly) and single-stream blocks
(one sequence, text first), labelled "double" and "single". Their blocks add to their input tensors in
place, so training runs them through dit.safe_block. The Hunyuan models join other rows to the prompt's on
the text side: ByT5 rows of quoted text (which they draw as letters), after the prompt's or, where the model
tags each kind of row (HunyuanVideo 1.5), before them; and, before everything, SigLIP rows of an image to
animate.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from .. import compat
from ..layers import LayerId, weight_of
from .base import Layers
from .dit import DiTAdapter

HUNYUAN = "comfy.ldm.hunyuan_video.model"
MODULES = ("comfy.ldm.flux.model", "comfy.ldm.chroma.model", "comfy.ldm.chroma_radiance.model", HUNYUAN)
# FLUX.1-dev is guidance-distilled: training gives it guidance 1.0, as kohya's FLUX.1 guide and
# ai-toolkit train it (3.5, ComfyUI's default, is what it samples at).
TRAINING_GUIDANCE = 1.0


class FluxAdapter(DiTAdapter):
    name = "Flux"
    mutates_block_inputs = True

    def matches(self, diffusion_model: torch.nn.Module) -> bool:
        return type(diffusion_model).__module__ in MODULES and hasattr(diffusion_model, "double_blocks")

    def unreachable(self, diffusion_model: torch.nn.Module) -> str | None:
        if type(diffusion_model).__module__ == HUNYUAN and not compat.labels_blocks(diffusion_model):
            return ("this ComfyUI's Hunyuan models put the image rows before the prompt's and label no block (newer "
                    "ComfyUI does neither): update ComfyUI")
        return None

    def text_layout(self, diffusion_model: torch.nn.Module, context_length: int,
                    inputs: Mapping[str, Any]) -> tuple[int, int]:
        def rows(name: str, projection: str) -> int:
            tensor = inputs.get(name) if getattr(diffusion_model, projection, None) is not None else None
            return int(tensor.shape[1]) if tensor is not None else 0

        glyphs, image = rows("txt_byt5", "byt5_in"), rows("clip_fea", "vision_in")
        tagged = getattr(diffusion_model, "cond_type_embedding", None) is not None
        return image + (glyphs if tagged else 0), image + glyphs + context_length

    def layers(self, diffusion_model: torch.nn.Module) -> Layers:
        width = int(diffusion_model.hidden_size)
        return {**{LayerId("double", i): (width, width) for i in range(len(diffusion_model.double_blocks))},
                **{LayerId("single", i): (width, width) for i in range(len(diffusion_model.single_blocks))}}

    def blocks(self, diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
        return [*diffusion_model.double_blocks, *diffusion_model.single_blocks]

    def output_weights(self, diffusion_model: torch.nn.Module) -> dict[LayerId, torch.Tensor]:
        width = int(diffusion_model.hidden_size)  # a single block's linear2 reads [attention, MLP]
        return {**{LayerId("double", i): weight_of(b.img_attn.proj) for i, b in enumerate(diffusion_model.double_blocks)},
                **{LayerId("single", i): weight_of(b.linear2)[:, :width] for i, b in enumerate(diffusion_model.single_blocks)}}

    def training_conditioning(self, diffusion_model: torch.nn.Module) -> Mapping[str, Any]:
        params = getattr(diffusion_model, "params", None)
        return {"guidance": TRAINING_GUIDANCE} if getattr(params, "guidance_embed", False) else {}

    def labelled_blocks(self, diffusion_model: torch.nn.Module) -> list[tuple[str, int, str]]:
        return [*(("double_block", i, "double") for i in range(len(diffusion_model.double_blocks))),
                *(("single_block", i, "single") for i in range(len(diffusion_model.single_blocks)))]
