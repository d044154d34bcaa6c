"""Kandinsky 5 (ComfyUI's comfy.ldm.kandinsky5): visual blocks, each a self-attention and a cross-attention on the
prompt's Qwen2.5-VL rows (refined first by the model's own text blocks, unlabelled: not layers here)."""
from __future__ import annotations

import torch

from .cross_attention import CrossAttentionAdapter


class Kandinsky5Adapter(CrossAttentionAdapter):
    name = "Kandinsky 5"
    blocks_name, attention_name = "visual_transformer_blocks", "cross_attention"
    value_name, output_name = "to_value", "out_layer"

    def matches(self, diffusion_model: torch.nn.Module) -> bool:
        return type(diffusion_model).__module__ == "comfy.ldm.kandinsky5.model"
