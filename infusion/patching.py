"""Applying concepts to a ComfyUI ModelPatcher (duck-typed; ComfyUI is imported only when called)."""
from __future__ import annotations

from typing import Any, Mapping

from .concept import InfusionConcept
from .layers import LayerId, cross_attention_layers, cross_attention_modules
from .residual import InfusionResidual, carry_word_positions

WRAPPER_KEY = "infusion_word_positions"


def model_family(model: Any) -> str:
    """ComfyUI's name for the model (its config class: SD15, SD20, SDXL, SSD1B, Segmind_Vega, KOALA_700M,
    Flux, ...), or "custom" when the model has no config or does not match the one it was built with."""
    config = getattr(model.model, "model_config", None)
    if config is None:
        return "custom"
    matches = getattr(type(config), "matches", None)
    if matches is not None and not matches(getattr(config, "unet_config", {})):
        return "custom"
    return type(config).__name__


def model_layers(model: Any) -> tuple[dict[LayerId, tuple[int, int]], str]:
    """The cross-attention layers of the UNet inside a ModelPatcher, and the model's family."""
    family = model_family(model)
    unet = model.get_model_object("diffusion_model")
    if not all(hasattr(unet, a) for a in ("input_blocks", "middle_block", "output_blocks")):
        raise ValueError(f"this is a {family} model ({type(unet).__name__}), which has no UNet cross-attention: "
                         "Infusion works on UNet models (SD1.x, SD2.x, SDXL and its distilled variants)")
    layers = cross_attention_layers(unet)
    if not layers:
        raise ValueError(f"this {family} UNet has no cross-attention layers: nothing for Infusion to patch")
    widths = sorted({text for text, _ in layers.values()})
    if len(widths) != 1:
        raise ValueError(f"this {family} UNet's cross-attention layers read text of several widths {widths}; "
                         "Infusion needs one text encoding")
    return layers, family


def value_weights(model: Any) -> dict[LayerId, Any]:
    """Each cross-attention layer's W_v (its to_v weight, fp32 on the CPU): where a residual acts."""
    unet = model.get_model_object("diffusion_model")
    return {layer: attn2.to_v.weight.detach().float().cpu() for layer, attn2 in cross_attention_modules(unet).items()}


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
                  start_percent: float = 0.0, end_percent: float = 1.0,
                  layer_strengths: Mapping[LayerId, float] | None = None) -> Any:
    """A clone of `model` with the concept's residuals added at its word; `model` is not touched.
    `layer_strengths` scales single layers (1 where absent)."""
    layers, family = model_layers(model)
    concept.check_fits(layers, family)
    check_word_free(model, concept)
    patched = model.clone()
    patched.set_model_attn2_patch(InfusionResidual(concept, strength, sigma_range(model, start_percent, end_percent),
                                                   layer_strengths=layer_strengths))
    install_position_carrier(patched)
    return patched
