"""A CLIP that marks where applied concepts' class words stand in every prompt it encodes.

The positions ride in the conditioning dict (not in model_conds), so prompts with and without
the word keep batching into one UNet call. clone() keeps the subclass, so downstream nodes
(LoRA loaders, CLIPSetLastLayer, ...) keep the behaviour.
"""
from __future__ import annotations

from typing import Any

import comfy.sd

from ..infusion.tokens import CONDITIONING_KEY
from ..infusion.word_positions import word_positions


class InfusionCLIP(comfy.sd.CLIP):
    infusion_words: tuple[str, ...] = ()

    @classmethod
    def with_word(cls, clip: comfy.sd.CLIP, word: str) -> "InfusionCLIP":
        """A clone of `clip` that also marks `word`; `clip` is not touched."""
        out = clip.clone()
        out.__class__ = cls
        out.infusion_words = tuple(getattr(clip, "infusion_words", ())) + (word,)
        return out

    # Overrides take and pass on whatever ComfyUI adds to these methods' signatures (0.38's
    # clone(disable_dynamic=...)), so the next signature change cannot break them.
    def clone(self, *args: Any, **kwargs: Any) -> "InfusionCLIP":
        out = super().clone(*args, **kwargs)
        out.__class__ = type(self)
        out.infusion_words = self.infusion_words
        return out

    def _positions(self, tokens):
        return word_positions(self.tokenizer, tokens, self.infusion_words, self.cond_stage_model)

    def encode_from_tokens(self, tokens, *args: Any, **kwargs: Any):
        out = super().encode_from_tokens(tokens, *args, **kwargs)
        if isinstance(out, dict):  # return_dict=True: the form CLIPTextEncode's path uses
            out[CONDITIONING_KEY] = self._positions(tokens)
        return out

    def encode_from_tokens_scheduled(self, tokens, *args: Any, **kwargs: Any):
        out = super().encode_from_tokens_scheduled(tokens, *args, **kwargs)
        positions = self._positions(tokens)
        for _, extras in out:
            extras[CONDITIONING_KEY] = positions
        return out
