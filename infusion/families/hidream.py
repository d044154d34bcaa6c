"""HiDream-I1 and E1 (ComfyUI's comfy.ldm.hidream): double-stream blocks, then single-stream blocks, over [image,
text]: the image's rows come first. The text is T5-XXL's rows, then Llama 3.1's last layer's, then the Llama layer
of each block's own (word_positions marks the word in all three). ComfyUI labels none of its calls and offers no
block patch, so each block's calls are labelled through its class. With the text after the image, the queries
cannot be split as image-queries splits them: value is its one variant."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from ..layers import LayerId, weight_of
from .base import Layers
from .dit import DiTAdapter

BLOCKS = (("double", "double_stream_blocks"), ("single", "single_stream_blocks"))
T5_ROWS = 128  # HiDream's tokenizer gives T5 exactly 128 tokens


class HiDreamAdapter(DiTAdapter):
    name = "HiDream"
    variants = ("value",)

    def matches(self, diffusion_model: torch.nn.Module) -> bool:
        return type(diffusion_model).__module__ == "comfy.ldm.hidream.model"

    def text_rows(self, diffusion_model: torch.nn.Module, x: torch.Tensor, context_length: int,
                  inputs: Mapping[str, Any]) -> tuple[int, int, int, int | None]:
        if context_length != T5_ROWS:
            raise ValueError(f"HiDream's prompt has {context_length} T5 rows where HiDream's text encoder gives "
                             f"{T5_ROWS}: Conditioning (Concat) joins prompts' T5 rows but not their Llama rows, so "
                             "the concept cannot find its word there; combine the prompts into one instead")
        llama = int(inputs["encoder_hidden_states_llama3"].shape[2])  # [batch, layers, rows, width]
        width = x.shape[-1] + (inputs["image_cond"].shape[-1] if inputs.get("image_cond") is not None else 0)  # E1
        patch = int(diffusion_model.patch_size)
        image = math.ceil(x.shape[-2] / patch) * math.ceil(width / patch)
        text = context_length + 2 * llama
        return text, text, image, None

    def layers(self, diffusion_model: torch.nn.Module) -> Layers:
        width = int(diffusion_model.inner_dim)
        return {LayerId(kind, i): (width, width)
                for kind, name in BLOCKS for i in range(len(getattr(diffusion_model, name)))}

    def blocks(self, diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
        return [*diffusion_model.double_stream_blocks, *diffusion_model.single_stream_blocks]

    def output_weights(self, diffusion_model: torch.nn.Module) -> dict[LayerId, torch.Tensor]:
        return {LayerId(kind, i): weight_of(b.block.attn1.to_out)
                for kind, name in BLOCKS for i, b in enumerate(getattr(diffusion_model, name))}

    def labelled_modules(self, diffusion_model: torch.nn.Module) -> list[tuple[str, str, int]]:
        return [(f"{name}.{i}", kind, i) for kind, name in BLOCKS for i in range(len(getattr(diffusion_model, name)))]
