"""DiTs that read the prompt through a cross-attention in each block (LTX-Video, Kandinsky 5): the residual in
value space, at the word's rows of the text's values.

Each block runs a self-attention over the image and a cross-attention whose keys and values are the prompt's
rows (the same rows in every block: the text is not updated between blocks). Both run under one block label
(Kandinsky 5's) or none (LTX-Video's), so the adapter labels the cross-attention's calls itself, through an
object patch (dit.DiTAdapter.labelled_modules): the module's class becomes a subclass whose forward runs the
class's own with transformer_options labelled ("cross", block index); a patch on the bound `forward` would run the
module it was made from in a model ComfyUI reloads or copies. The attention override (dit.JointAttention)
then adds r_l to the values at the word's rows, which are the prompt's own, first to last. Every query is an
image query, so value is the one variant.
"""
from __future__ import annotations

import torch

from ..layers import LayerId, weight_of
from .base import Layers
from .dit import DiTAdapter

CROSS = "cross"  # the block_type of the labelled calls, the block name of the layers


class CrossAttentionAdapter(DiTAdapter):
    """What the cross-attention families share; subclasses name the blocks, the text cross-attention in each, and
    its value and output projections (submodule paths)."""

    variants = ("value",)
    blocks_name = attention_name = value_name = output_name = ""

    def blocks(self, diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(getattr(diffusion_model, self.blocks_name))

    def _attentions(self, diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
        return [getattr(block, self.attention_name) for block in self.blocks(diffusion_model)]

    def layers(self, diffusion_model: torch.nn.Module) -> Layers:
        return {LayerId(CROSS, i): (a.get_submodule(self.value_name).out_features,) * 2
                for i, a in enumerate(self._attentions(diffusion_model))}

    def output_weights(self, diffusion_model: torch.nn.Module) -> dict[LayerId, torch.Tensor]:
        return {LayerId(CROSS, i): weight_of(a.get_submodule(self.output_name))
                for i, a in enumerate(self._attentions(diffusion_model))}

    def labelled_modules(self, diffusion_model: torch.nn.Module) -> list[tuple[str, str, int]]:
        return [(f"{self.blocks_name}.{i}.{self.attention_name}", CROSS, i)
                for i in range(len(self.blocks(diffusion_model)))]
