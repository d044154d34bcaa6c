"""DiTs that read the prompt through a cross-attention in each block (LTX-Video, Kandinsky 5): the residual in
value space, at the word's rows of the text's values.

Each block runs a self-attention over the image and a cross-attention whose keys and values are the prompt's
rows (the same rows in every block: the text is not updated between blocks). Both run under one block label
(Kandinsky 5's) or none (LTX-Video's), so the adapter labels the cross-attention's calls itself: an object
patch on its forward (ComfyUI's add_object_patch, on the patcher's clone, put in place when ComfyUI loads
the model and taken away after) runs it with transformer_options labelled ("cross", block index). The
attention override (dit.JointAttention) then adds r_l to the values at the word's rows, which are the
prompt's own, first to last. Every query is an image query, so value is the one variant.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..layers import LayerId, weight_of
from .base import Layers
from .dit import DiTAdapter, DiTResidual

CROSS = "cross"  # the block_type of the labelled calls, the block name of the layers


class CrossLabel:
    """An object patch on a cross-attention's forward: its attention calls labelled ("cross", `index`) on a copy
    of transformer_options, then whatever ran there before (the module's forward, or another pack's patch)."""

    def __init__(self, index: int, previous: Callable):
        self.index, self.previous = index, previous

    def __deepcopy__(self, memo):
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        options = kwargs.get("transformer_options")
        if options is not None:
            kwargs["transformer_options"] = {**options, "block_type": CROSS, "block_index": self.index}
        return self.previous(*args, **kwargs)


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
            key = f"diffusion_model.{self.blocks_name}.{i}.{self.attention_name}.forward"
            # Another clone's label may be in place on the shared model: what it wraps is what runs there.
            current = patcher.get_model_object(key)
            patcher.add_object_patch(key, CrossLabel(i, current.previous if isinstance(current, CrossLabel)
                                                     else current))
