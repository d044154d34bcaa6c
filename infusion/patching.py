"""Applying concepts to a ComfyUI ModelPatcher (duck-typed; ComfyUI is imported only when called)."""
from __future__ import annotations

from typing import Any

from .concept import InfusionConcept
from .layers import Family, LayerId, cross_attention_layers, family_of
from .residual import InfusionResidual, carry_word_positions

WRAPPER_KEY = "infusion_word_positions"


def model_layers(model: Any) -> tuple[dict[LayerId, tuple[int, int]], Family]:
    """The cross-attention layers and family of the UNet inside a ModelPatcher."""
    unet = model.get_model_object("diffusion_model")
    if not all(hasattr(unet, a) for a in ("input_blocks", "middle_block", "output_blocks")):
        raise ValueError(f"{type(unet).__name__} is not a UNet: Infusion supports SD1.x, SD2.x and SDXL models")
    layers = cross_attention_layers(unet)
    return layers, family_of(layers)


def applied_residuals(model: Any) -> list[InfusionResidual]:
    patches = model.model_options.get("transformer_options", {}).get("patches", {}).get("attn2_patch", [])
    return [p for p in patches if isinstance(p, InfusionResidual)]


def check_word_free(model: Any, concept: InfusionConcept) -> None:
    for other in applied_residuals(model):
        if other.word == concept.word:
            raise ValueError(f"concepts {other.label} and {concept.label} are both bound to the word "
                             f"'{concept.word}': their residuals would add up at the same tokens. "
                             "Apply only one concept per class word")


def install_position_carrier(model: Any) -> None:
    """Once per model: the wrapper that hands prompt word positions to the attention patches."""
    from comfy.patcher_extension import WrappersMP

    if not model.get_wrappers(WrappersMP.CALC_COND_BATCH, WRAPPER_KEY):
        model.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, WRAPPER_KEY, carry_word_positions)


def sigma_range(model: Any, start_percent: float, end_percent: float) -> tuple[float, float] | None:
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise ValueError(f"start_percent ({start_percent}) must be <= end_percent ({end_percent}), both in 0..1")
    if start_percent == 0.0 and end_percent == 1.0:
        return None
    sampling = model.get_model_object("model_sampling")
    return float(sampling.percent_to_sigma(start_percent)), float(sampling.percent_to_sigma(end_percent))


def apply_concept(model: Any, concept: InfusionConcept, strength: float = 1.0,
                  start_percent: float = 0.0, end_percent: float = 1.0) -> Any:
    """A clone of `model` with the concept's residuals added at its word; `model` is not touched."""
    layers, family = model_layers(model)
    concept.check_fits(layers, family.name)
    check_word_free(model, concept)
    patched = model.clone()
    patched.set_model_attn2_patch(InfusionResidual(concept, strength, sigma_range(model, start_percent, end_percent)))
    install_position_carrier(patched)
    return patched
