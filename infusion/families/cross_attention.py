"""DiTs that read the prompt through a cross-attention in each block (LTX-Video, Kandinsky 5): the residual in
value space, at the word's rows of the text's values.

Each block runs a self-attention over the image and a cross-attention whose keys and values are the prompt's
rows (the same rows in every block: the text is not updated between blocks). Both run under one block label
(Kandinsky 5's) or none (LTX-Video's), so the adapter labels the cross-attention's calls itself, through an
object patch (ComfyUI's add_object_patch, on the patcher's clone, put in place when ComfyUI loads the model and
taken away after): the module's class becomes a subclass whose forward runs the class's own with
transformer_options labelled ("cross", block index). A class holds no module, so a model ComfyUI reloads or
copies under the same patches (0.33's non-dynamic delegate, Train LoRA's copy) runs its own cross-attentions; a
patch on the bound `forward` would run the module it was made from. The attention override (dit.JointAttention)
then adds r_l to the values at the word's rows, which are the prompt's own, first to last. Every query is an
image query, so value is the one variant.
"""
from __future__ import annotations

import functools
from typing import Any

import torch

from ..layers import LayerId, weight_of
from .base import Layers
from .dit import DiTAdapter, DiTResidual

CROSS = "cross"  # the block_type of the labelled calls, the block name of the layers


@functools.cache
def labelled(base: type, index: int) -> type:
    """`base` (a cross-attention module's class) with its attention calls labelled ("cross", `index`), on a copy of
    transformer_options."""
    class Labelled(base):
        unlabelled = base

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            options = kwargs.get("transformer_options")
            if options is not None:
                kwargs["transformer_options"] = {**options, "block_type": CROSS, "block_index": index}
            return super().forward(*args, **kwargs)

    Labelled.__name__ = Labelled.__qualname__ = f"{base.__name__}Labelled{index}"
    return Labelled


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

    def install(self, patcher: Any, residual: DiTResidual) -> None:
        super().install(patcher, residual)
        for i in range(len(self.blocks(patcher.get_model_object("diffusion_model")))):
            key = f"diffusion_model.{self.blocks_name}.{i}.{self.attention_name}.__class__"
            # Another clone's label may be in place on the shared model: the class it labels is the one that runs.
            current = patcher.get_model_object(key)
            patcher.add_object_patch(key, labelled(current.__dict__.get("unlabelled", current), i))
