"""An Infusion concept: one residual per attention layer that reads text, bound to a class word."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .layers import LayerId

# value: the residual is added to the values at the word (every query of the layer sees it).
# key+value (UNet): a key residual too, which changes the attention maps (seen in the authors' code).
# image-queries (DiT): only the image queries see the residual; the text tokens' own rows are computed
# from the base values, so the text stream entering the next layer is the base model's.
VARIANTS = ("value", "key+value", "image-queries")
VECTOR_SPACES = ("text", "value")


class ConceptMismatchError(ValueError):
    """A concept does not fit the model it is applied to."""


def normalize_word(word: str) -> str:
    """The class word as CLIP sees it: lowercase, single spaces (CLIP's tokenizer lowercases)."""
    cleaned = " ".join(word.strip().lower().split())
    if not cleaned:
        raise ValueError("the class word is empty: give the plain word for the concept's class, e.g. 'dog'")
    return cleaned


Layers = Mapping[LayerId, tuple[int, int]]  # {layer: (vector width, value width)}, as a family adapter gives


@dataclass
class InfusionConcept:
    """One residual vector per layer, added to the layer's values at the class word's tokens.

    vector_space "text" (UNet): u_l in R^{text width}, added to the value input of layer l, so the
    layer's value there is W_v (c + s u_l). vector_space "value" (DiT): r_l in R^{heads x head width},
    added to the projected values themselves (the paper's V[j] += s r_l).

    It fits a model whose layers are exactly its layers (name, vector width, value width). `family` is
    ComfyUI's name for the model it was made on (SD15, SDXL, Flux, ...), or "custom": a label for
    messages, never what decides the fit.
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
    vector_space: str = "text"
    image_queries_only: bool = False

    def __post_init__(self) -> None:
        self.word = normalize_word(self.word)
        if not self.values:
            raise ValueError("a concept needs at least one layer")
        if len({v.numel() for v in self.values.values()}) != 1:
            raise ValueError("a concept's residuals must all have the model's one text width")
        if self.keys is not None and set(self.keys) != set(self.values):
            raise ValueError("a key+value concept needs a key residual for exactly the layers of its value residuals")
        if self.vector_space not in VECTOR_SPACES:
            raise ValueError(f"unknown vector space '{self.vector_space}' (known: {', '.join(VECTOR_SPACES)})")
        if (self.keys is not None and self.vector_space != "text"
                or self.image_queries_only and self.vector_space != "value"):
            raise ValueError("key+value is a variant of UNet concepts (text space), image-queries of DiT concepts "
                             "(value space)")

    @property
    def variant(self) -> str:
        return "key+value" if self.keys is not None else "image-queries" if self.image_queries_only else "value"

    @property
    def text_width(self) -> int:
        """The width of every residual vector (the text width for a text-space concept)."""
        return next(iter(self.values.values())).numel()

    @property
    def layers(self) -> dict[LayerId, tuple[int, int]]:
        return {layer: (self.text_width, self.value_widths.get(layer, 0)) for layer in sorted(self.values)}

    @property
    def label(self) -> str:
        return f"'{self.name or self.word}' (word '{self.word}')"

    @classmethod
    def zeros(cls, word: str, layers: Layers, family: str, variant: str = "value", vector_space: str = "text",
              **kwargs: Any) -> "InfusionConcept":
        """A fresh concept for training: every residual starts at zero, as in the paper."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant '{variant}' (choose one of {', '.join(VARIANTS)})")
        allowed = ("value", "key+value") if vector_space == "text" else ("value", "image-queries")
        if variant not in allowed:
            kind = "UNet" if vector_space == "text" else "DiT"
            raise ValueError(f"variant '{variant}' is not one for {family} (a {kind} model): choose "
                             f"{' or '.join(allowed)}")
        values = {layer: torch.zeros(width) for layer, (width, _) in layers.items()}
        keys = {layer: torch.zeros(width) for layer, (width, _) in layers.items()} if variant == "key+value" else None
        widths = {layer: value for layer, (_, value) in layers.items()}
        return cls(word=word, family=family, values=values, keys=keys, value_widths=widths, vector_space=vector_space,
                   image_queries_only=variant == "image-queries", **kwargs)

    def check_fits(self, layers: Layers, family: str, vector_space: str = "text") -> None:
        """Raise ConceptMismatchError unless the model's layers (and the space its residuals live in, as
        its family adapter says) are this concept's."""
        ours, theirs = self.layers, dict(sorted(layers.items()))
        if ours == theirs and vector_space == self.vector_space:
            return
        differ = [layer for layer in sorted(set(ours) | set(theirs)) if ours.get(layer) != theirs.get(layer)]
        shown = "; ".join(f"{layer.key}: concept {_describe(ours.get(layer), self.vector_space)}, "
                          f"model {_describe(theirs.get(layer), vector_space)}" for layer in differ[:3])
        more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
        raise ConceptMismatchError(
            f"concept {self.label} was made for a {self.family} model ({_summary(ours, self.vector_space)}) but "
            f"this model is {family} ({_summary(theirs, vector_space)})"
            f"{f'; first layers that differ: {shown}{more}' if differ else ''}. Train the concept on this model")


def _describe(widths: tuple[int, int] | None, vector_space: str) -> str:
    if widths is None:
        return "has no such layer"
    return f"value {widths[1]}" if vector_space == "value" else f"text {widths[0]} -> value {widths[1]}"


def _summary(layers: Layers, vector_space: str) -> str:
    widths = '/'.join(map(str, sorted({width for width, _ in layers.values()})))
    if vector_space == "value":
        return f"{len(layers)} attention layers, value width {widths}"
    return f"{len(layers)} cross-attention layers, text width {widths}"
