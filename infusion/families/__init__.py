"""The model families Infusion knows, one adapter each, and the refusal of every other family by name."""
from __future__ import annotations

from typing import Any

from .base import FamilyAdapter
from .flux import FluxAdapter
from .krea2 import Krea2Adapter
from .lumina import LuminaAdapter
from .qwen_image import QwenImageAdapter
from .unet import UNetAdapter

ADAPTERS: tuple[FamilyAdapter, ...] = (UNetAdapter(), FluxAdapter(), QwenImageAdapter(), LuminaAdapter(),
                                       Krea2Adapter())
SUPPORTED = ("UNet models with cross-attention (SD1.x, SD2.x, SDXL and its distilled variants), Flux (FLUX.1 dev "
             "and schnell, FLUX.2), Chroma, Qwen-Image, Z-Image, Lumina 2 and Krea 2")

# Why a family the pack knows of is refused, by its diffusion model's module in ComfyUI.
REFUSED = {
    "comfy.ldm.modules.diffusionmodules.mmdit": "ComfyUI calls SD3's attention without transformer_options, so "
                                                "no composable hook reaches its values",
    "comfy.ldm.hidream.model": "HiDream feeds every block its own Llama layer besides the prompt tokens, which this "
                               "pack does not yet mark",
}


def model_family(model: Any) -> str:
    """ComfyUI's name for the model (its config class: SD15, SD20, SDXL, SSD1B, Flux, QwenImage, ZImage, ...),
    or "custom" when the model has no config or does not match the one it was built with."""
    config = getattr(model.model, "model_config", None)
    if config is None:
        return "custom"
    matches = getattr(type(config), "matches", None)
    if matches is not None and not matches(getattr(config, "unet_config", {})):
        return "custom"
    return type(config).__name__


def adapter_for(model: Any) -> FamilyAdapter:
    """The adapter for the diffusion model inside a ModelPatcher; a family no adapter serves is refused
    with its name and the reason."""
    diffusion_model = model.get_model_object("diffusion_model")
    for adapter in ADAPTERS:
        if adapter.matches(diffusion_model):
            reason = adapter.unreachable(diffusion_model)
            if reason is not None:
                raise ValueError(f"this is a {model_family(model)} model, which Infusion cannot reach here: {reason}")
            return adapter
    module = type(diffusion_model).__module__
    reason = REFUSED.get(module, "its attention is not one this pack knows how to reach")
    raise ValueError(f"this is a {model_family(model)} model ({type(diffusion_model).__name__}), which Infusion "
                     f"does not support: {reason}. Supported: {SUPPORTED}")
