"""An Infusion concept: one residual per cross-attention layer, bound to a class word."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .layers import FAMILIES, LayerId

VARIANTS = ("value", "key+value")


class ConceptMismatchError(ValueError):
    """A concept does not fit the model it is applied to."""


def normalize_word(word: str) -> str:
    """The class word as CLIP sees it: lowercase, single spaces (CLIP's tokenizer lowercases)."""
    cleaned = " ".join(word.strip().lower().split())
    if not cleaned:
        raise ValueError("the class word is empty: give the plain word for the concept's class, e.g. 'dog'")
    return cleaned


@dataclass
class InfusionConcept:
    """Residuals live in text-encoding space: u_l in R^{text width}, added to the value input of
    layer l at the class word's positions, so the layer's value there is W_v (c + s u_l)."""

    word: str
    family: str
    values: dict[LayerId, torch.Tensor]
    keys: dict[LayerId, torch.Tensor] | None = None
    value_widths: dict[LayerId, int] = field(default_factory=dict)
    token_ids: tuple[int, ...] = ()
    name: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.word = normalize_word(self.word)
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family '{self.family}' (known: {', '.join(FAMILIES)})")
        if self.keys is not None and set(self.keys) != set(self.values):
            raise ValueError("a key+value concept needs a key residual for exactly the layers of its value residuals")

    @property
    def variant(self) -> str:
        return "value" if self.keys is None else "key+value"

    @property
    def text_width(self) -> int:
        return FAMILIES[self.family].text_width

    @property
    def label(self) -> str:
        return f"'{self.name or self.word}' (word '{self.word}')"

    @classmethod
    def zeros(cls, word: str, layers: Mapping[LayerId, tuple[int, int]], family: str,
              variant: str = "value", **kwargs: Any) -> "InfusionConcept":
        """A fresh concept for training: every residual starts at zero, as in the paper."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant '{variant}' (choose one of {', '.join(VARIANTS)})")
        values = {layer: torch.zeros(text) for layer, (text, _) in layers.items()}
        keys = {layer: torch.zeros(text) for layer, (text, _) in layers.items()} if variant == "key+value" else None
        widths = {layer: value for layer, (_, value) in layers.items()}
        return cls(word=word, family=family, values=values, keys=keys, value_widths=widths, **kwargs)

    def check_fits(self, layers: Mapping[LayerId, tuple[int, int]], family: str) -> None:
        """Raise ConceptMismatchError unless this concept was made for a model of this shape."""
        if family != self.family:
            raise ConceptMismatchError(
                f"concept {self.label} was made for {FAMILIES[self.family].label} "
                f"(text width {self.text_width}) but the model is {FAMILIES[family].label} "
                f"(text width {FAMILIES[family].text_width}); train it on this model's family")
        missing = sorted(set(layers) - set(self.values))
        extra = sorted(set(self.values) - set(layers))
        if missing or extra:
            raise ConceptMismatchError(
                f"concept {self.label} does not match the model's cross-attention layers: "
                f"missing {[l.key for l in missing]}, extra {[l.key for l in extra]}")
        for layer, (text, _) in layers.items():
            if self.values[layer].numel() != text:
                raise ConceptMismatchError(f"concept {self.label}: layer {layer.key} has width "
                                           f"{self.values[layer].numel()}, the model's text width is {text}")
