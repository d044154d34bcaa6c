"""AuraFlow (ComfyUI's comfy.ldm.aura.mmdit): double blocks (text and image projected apart, attended jointly) then
single blocks over [text, image], given block labels through ComfyUI's block patches. The text side is 8 learnt
register rows, then the prompt's Pile-T5 rows."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from ..layers import LayerId, weight_of
from .base import Layers
from .dit import DiTAdapter


class AuraFlowAdapter(DiTAdapter):
    name = "AuraFlow"

    def matches(self, diffusion_model: torch.nn.Module) -> bool:
        return type(diffusion_model).__module__ == "comfy.ldm.aura.mmdit"

    def text_layout(self, diffusion_model: torch.nn.Module, context_length: int,
                    inputs: Mapping[str, Any]) -> tuple[int, int]:
        registers = int(diffusion_model.register_tokens.shape[1])
        return registers, registers + context_length

    def layers(self, diffusion_model: torch.nn.Module) -> Layers:
        # The text rows' values come from w1v in both kinds of block.
        return {**{LayerId("double", i): (b.attn.w1v.out_features,) * 2
                   for i, b in enumerate(diffusion_model.double_layers)},
                **{LayerId("single", i): (b.attn.w1v.out_features,) * 2
                   for i, b in enumerate(diffusion_model.single_layers)}}

    def blocks(self, diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
        return [*diffusion_model.double_layers, *diffusion_model.single_layers]

    def output_weights(self, diffusion_model: torch.nn.Module) -> dict[LayerId, torch.Tensor]:
        # The image's output projection: a double block's w2o, a single block's one w1o.
        return {**{LayerId("double", i): weight_of(b.attn.w2o) for i, b in enumerate(diffusion_model.double_layers)},
                **{LayerId("single", i): weight_of(b.attn.w1o) for i, b in enumerate(diffusion_model.single_layers)}}

    def labelled_blocks(self, diffusion_model: torch.nn.Module) -> list[tuple[str, int, str]]:
        return [*(("double_block", i, "double") for i in range(len(diffusion_model.double_layers))),
                *(("single_block", i, "single") for i in range(len(diffusion_model.single_layers)))]
