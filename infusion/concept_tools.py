"""What a few kilobytes of per-layer vectors make possible: blending concepts, re-binding them to
another word, per-block strength, and a readable account of where a concept lives.
"""
from __future__ import annotations

import os
import re
from dataclasses import replace
from typing import Any, Mapping

import torch

from .concept import InfusionConcept, normalize_word
from .layers import LayerId
from .patching import check_fits, value_weights

BLOCKS = ("input", "middle", "output", "double", "single", "cross")


def blend(a: InfusionConcept, b: InfusionConcept, weight: float, word: str = "") -> InfusionConcept:
    """weight * A + (1 - weight) * B, layer by layer (weight may leave 0..1 to extrapolate); bound to
    `word` (default: A's). The concepts must have the same layers and variant."""
    if a.layers != b.layers:
        differ = sorted(set(a.layers) ^ set(b.layers)) or [l for l in a.layers if a.layers[l] != b.layers[l]]
        raise ValueError(f"concepts {a.label} and {b.label} were made for models with other cross-attention layers "
                         f"({a.family}, {len(a.layers)} layers; {b.family}, {len(b.layers)} layers; first that "
                         f"differs: {differ[0].key}): only concepts of the same model can be blended")
    if a.variant != b.variant:
        raise ValueError(f"concept {a.label} is {a.variant}, {b.label} is {b.variant}: blend concepts of one variant")

    def mix(x: Mapping[LayerId, torch.Tensor], y: Mapping[LayerId, torch.Tensor]) -> dict[LayerId, torch.Tensor]:
        return {l: weight * x[l].float() + (1.0 - weight) * y[l].float() for l in x}

    word = normalize_word(word) if word.strip() else a.word
    token_ids = a.token_ids if word == a.word else b.token_ids if word == b.word else ()
    lineage = {"blend": {"a": _describe(a), "b": _describe(b), "weight": weight}}
    return InfusionConcept(word=word, family=a.family, values=mix(a.values, b.values),
                           keys=mix(a.keys, b.keys) if a.keys is not None else None,
                           value_widths=dict(a.value_widths), token_ids=token_ids, vector_space=a.vector_space,
                           image_queries_only=a.image_queries_only,
                           name=f"{a.name or a.word}+{b.name or b.word}",
                           metadata={**{k: v for k, v in a.metadata.items() if k != "lineage"}, "lineage": lineage})


def _describe(c: InfusionConcept) -> dict[str, Any]:
    """A concept as lineage records it (nested, so a blend of blends keeps its history)."""
    return {"name": c.name, "word": c.word, **({"lineage": c.metadata["lineage"]} if "lineage" in c.metadata else {})}


def rebind(concept: InfusionConcept, word: str) -> InfusionConcept:
    """The same residuals, added at another word's tokens."""
    word = normalize_word(word)
    return concept if word == concept.word else replace(concept, word=word, token_ids=())


def layer_weights(text: str, layers: list[LayerId]) -> dict[LayerId, float]:
    """Per-layer strengths from a short text, as LoRA block-weight tools write them:
    `input=1, middle=0.5, output=1` (blocks; unnamed ones stay 1), `output.3.0=0` (single layers), or one
    number per layer in layer order (`1 1 0.5 ...`). Empty: every layer 1."""
    weights = {layer: 1.0 for layer in layers}
    entries = [e.strip() for e in re.split(r"[,;\n]+", text) if e.strip()]
    if not entries:
        return weights
    hint = "write block=value pairs such as 'input=1, middle=0.5, output=1', or one number per layer"
    if not any("=" in e for e in entries):
        numbers = [token for e in entries for token in e.split()]
        if len(numbers) != len(layers):
            raise ValueError(f"block_weights: {len(numbers)} numbers for {len(layers)} layers; {hint}")
        return dict(zip(layers, (_number(n, hint) for n in numbers)))
    keys = {layer.key: layer for layer in layers}
    blocks = [b for b in BLOCKS if any(layer.block == b for layer in layers)]
    for entry in entries:
        name, _, value = (part.strip() for part in entry.partition("="))
        if not value:
            raise ValueError(f"block_weights: '{entry}' is not understood; {hint}")
        if name in blocks:
            weights.update({layer: _number(value, hint) for layer in layers if layer.block == name})
        elif name in keys:
            weights[keys[name]] = _number(value, hint)
        else:
            raise ValueError(f"block_weights: '{name}' is neither a block ({', '.join(blocks)}) nor one of this "
                             f"concept's layers ({', '.join(list(keys)[:4])}, ...)")
    return weights


def _number(text: str, hint: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"block_weights: '{text}' is not a number; {hint}") from None


def residual_norms(concept: InfusionConcept, model: Any = None) -> dict[LayerId, float]:
    """|u_l| per layer; with its base model (a ModelPatcher), the residual where it acts: |W_v u_l| on a
    UNet (text-space vectors), |r_l| on a DiT (its vectors are value-space already)."""
    if model is None:
        return {l: float(v.float().norm()) for l, v in sorted(concept.values.items())}
    check_fits(model, concept)
    weights = value_weights(model)
    if weights is None:
        return {l: float(v.float().norm()) for l, v in sorted(concept.values.items())}
    return {l: float((weights[l] @ v.float()).norm()) for l, v in sorted(concept.values.items())}


def report(concept: InfusionConcept, norms: Mapping[LayerId, float], value_space: bool) -> str:
    """A readable account of a concept: what it is, how it was made, and where it lives."""
    training = concept.metadata.get("training") or {}
    provenance = concept.metadata.get("provenance") or {}
    size = os.path.getsize(concept.path) if concept.path and os.path.isfile(concept.path) else None
    layers = (f"{len(concept.values)} attention layers, value width {concept.text_width}"
              if concept.vector_space == "value" else
              f"{len(concept.values)} cross-attention layers, text width {concept.text_width}")
    lines = [f"Infusion concept {concept.label}",
             f"model: {concept.family}, {layers}, variant {concept.variant}",
             f"file: {concept.path or '(not saved)'}" + (f", {size / 1024:.1f} KB" if size is not None else "")]
    if training:
        lines.append("training: " + ", ".join(f"{k} {training[k]}" for k in (
            "steps_done", "steps", "learning_rate", "effective_batch", "seed", "precision", "status", "final_loss",
            "photos", "photos_sha256") if k in training))
    lines += [f"note: {note}" for note in training.get("photo_notes") or []]
    if provenance.get("base_model") or training.get("base_model"):
        lines.append(f"base model: {provenance.get('base_model') or training.get('base_model')}")
    if "lineage" in concept.metadata:
        lines.append(f"lineage: {concept.metadata['lineage']}")
    space = ("|r|, value space" if concept.vector_space == "value" else
             "|W_v u|, value space" if value_space else "|u|, text space")
    lines.append(f"residual norm per block ({space}):")
    for block in BLOCKS:
        in_block = [(l, n) for l, n in norms.items() if l.block == block]
        if in_block:
            lines.append(f"  {block:<6} " + "  ".join(f"{l.key.split('.', 1)[1]}: {n:.3g}" for l, n in in_block))
    return "\n".join(lines)


def norms_chart(norms: Mapping[LayerId, float], title: str) -> Any:
    """A PIL bar chart of the per-layer norms, coloured and grouped by block."""
    from PIL import Image, ImageDraw

    colours = {"input": (70, 110, 200), "middle": (200, 120, 40), "output": (60, 160, 90), "double": (70, 110, 200),
               "single": (60, 160, 90), "cross": (200, 120, 40)}
    layers = list(norms)
    width, height, left, bottom = 640, 320, 40, 280
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 6), title, fill="black")
    peak = max(norms.values(), default=0.0) or 1.0
    bar = (width - left - 10) / max(len(layers), 1)
    for i, layer in enumerate(layers):
        top = bottom - (bottom - 30) * norms[layer] / peak
        x = left + i * bar
        draw.rectangle([x + 1, top, x + max(bar - 1, 2), bottom], fill=colours[layer.block])
    draw.line([left, bottom, width - 10, bottom], fill="black")
    draw.text((4, 24), f"{peak:.3g}", fill="black")
    for j, block in enumerate(b for b in BLOCKS if any(layer.block == b for layer in layers)):
        draw.rectangle([left + 150 * j, 296, left + 150 * j + 10, 306], fill=colours[block])
        draw.text((left + 150 * j + 14, 294), block, fill="black")
    return img
