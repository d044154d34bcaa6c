"""Wan 2.1 / 2.2 (ComfyUI's comfy.ldm.wan WanModel): a self-attention and a cross-attention on the prompt's umT5 rows
(after the model's text embedding) in each block. Wan 2.1's image-to-video cross-attention also attends to the CLIP
image's 257 rows, through its own keys and values in a call of its own under the same label: a call whose values
are fewer rows than the prompt's is not the prompt's, and the override leaves it alone (dit.JointAttention)."""
from __future__ import annotations

import torch

from .cross_attention import CrossAttentionAdapter


class WanAdapter(CrossAttentionAdapter):
    name = "Wan"
    blocks_name, attention_name, value_name, output_name = "blocks", "cross_attn", "v", "o"

    def matches(self, diffusion_model: torch.nn.Module) -> bool:
        return type(diffusion_model).__module__ == "comfy.ldm.wan.model"
