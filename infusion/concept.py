"""An Infusion concept: one residual per cross-attention layer, bound to a class word."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .layers import LayerId

VARIANTS = ("value", "key+value")


class ConceptMismatchError(ValueError):
    """A concept does not fit the model it is applied to."""


def normalize_word(word: str) -> str:
    """The class word as CLIP sees it: lowercase, single spaces (CLIP's tokenizer lowercases)."""
    cleaned = " ".join(word.strip().lower().split())
    if not cleaned:
        raise ValueError("the class word is empty: give the plain word for the concept's class, e.g. 'dog'")
    return cleaned


Layers = Mapping[LayerId, tuple[int, int]]  # {layer: (text width, value width)}, as cross_attention_layers gives


@dataclass
class InfusionConcept:
    """Residuals live in text-encoding space: u_l in R^{text width}, added to the value input of
    layer l at the class word's positions, so the layer's value there is W_v (c + s u_l).

    It fits a model whose cross-attention layers are exactly its layers (name, text width, value
    width). `family` is ComfyUI's name for the model it was made on (SD15, SDXL, SSD1B, ...), or
    "custom": a label for messages, never what decides the fit.
    """

    word: str
    family: str
    values: dict[LayerId, torch.Tensor]
    keys: dict[LayerId, torch.Tensor] | None = None
    value_widths: dict[LayerId, int] = field(default_factory=dict)
    token_ids: tuple[int, ...] = ()
    name: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    path: str = ""  # the file it was loaded from or saved to, if any (not stored in the file)

    def __post_init__(self) -> None:
        self.word = normalize_word(self.word)
        if not self.values:
            raise ValueError("a concept needs at least one layer")
        if len({v.numel() for v in self.values.values()}) != 1:
            raise ValueError("a concept's residuals must all have the model's one text width")
        if self.keys is not None and set(self.keys) != set(self.values):
            raise ValueError("a key+value concept needs a key residual for exactly the layers of its value residuals")

    @property
    def variant(self) -> str:
        return "value" if self.keys is None else "key+value"

    @property
    def text_width(self) -> int:
        return next(iter(self.values.values())).numel()

    @property
    def layers(self) -> dict[LayerId, tuple[int, int]]:
        return {layer: (self.text_width, self.value_widths.get(layer, 0)) for layer in sorted(self.values)}

    @property
    def label(self) -> str:
        return f"'{self.name or self.word}' (word '{self.word}')"

    @classmethod
    def zeros(cls, word: str, layers: Layers, family: str,
              variant: str = "value", **kwargs: Any) -> "InfusionConcept":
        """A fresh concept for training: every residual starts at zero, as in the paper."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant '{variant}' (choose one of {', '.join(VARIANTS)})")
        values = {layer: torch.zeros(text) for layer, (text, _) in layers.items()}
        keys = {layer: torch.zeros(text) for layer, (text, _) in layers.items()} if variant == "key+value" else None
        widths = {layer: value for layer, (_, value) in layers.items()}
        return cls(word=word, family=family, values=values, keys=keys, value_widths=widths, **kwargs)

    def check_fits(self, layers: Layers, family: str) -> None:
        """Raise ConceptMismatchError unless the model's cross-attention layers are this concept's."""
        ours, theirs = self.layers, dict(sorted(layers.items()))
        if ours == theirs:
            return
        differ = [layer for layer in sorted(set(ours) | set(theirs)) if ours.get(layer) != theirs.get(layer)]
        shown = "; ".join(f"{layer.key}: concept {_describe(ours.get(layer))}, model {_describe(theirs.get(layer))}"
                          for layer in differ[:3])
        raise ConceptMismatchError(
            f"concept {self.label} was made for a {self.family} model ({_summary(ours)}) but this model is "
            f"{family} ({_summary(theirs)}); first layers that differ: {shown}"
            f"{f' (and {len(differ) - 3} more)' if len(differ) > 3 else ''}. Train the concept on this model")


def _describe(widths: tuple[int, int] | None) -> str:
    return "has no such layer" if widths is None else f"text {widths[0]} -> value {widths[1]}"


def _summary(layers: Layers) -> str:
    texts = sorted({text for text, _ in layers.values()})
    return f"{len(layers)} cross-attention layers, text width {'/'.join(map(str, texts))}"
