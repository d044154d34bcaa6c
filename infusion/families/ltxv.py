"""LTX-Video (ComfyUI's comfy.ldm.lightricks LTXVModel): a self-attention (attn1) and a text cross-attention (attn2)
in each transformer block, reading T5-XXL. Its blocks add to their input in place (`x += ...`)."""
from __future__ import annotations

import torch

from .cross_attention import CrossAttentionAdapter


class LTXVAdapter(CrossAttentionAdapter):
    name = "LTX-Video"
    mutates_block_inputs = True
    blocks_name, attention_name, value_name, output_name = "transformer_blocks", "attn2", "to_v", "to_out.0"

    def matches(self, diffusion_model: torch.nn.Module) -> bool:
        return type(diffusion_model).__module__ == "comfy.ldm.lightricks.model"
