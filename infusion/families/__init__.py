"""The model families Infusion knows, one adapter each, and every other family refused by name (catalog.py)."""
from __future__ import annotations

from typing import Any

from .aura_flow import AuraFlowAdapter
from .base import FamilyAdapter
from .catalog import refusal
from .cogvideo import CogVideoXAdapter
from .flux import FluxAdapter
from .hidream import HiDreamAdapter
from .ideogram4 import Ideogram4Adapter
from .kandinsky5 import Kandinsky5Adapter
from .krea2 import Krea2Adapter
from .ltxv import LTXVAdapter
from .lumina import LuminaAdapter
from .qwen_image import QwenImageAdapter
from .sd3 import SD3Adapter
from .unet import UNetAdapter
from .wan import WanAdapter

ADAPTERS: tuple[FamilyAdapter, ...] = (UNetAdapter(), FluxAdapter(), QwenImageAdapter(), LuminaAdapter(),
                                       Krea2Adapter(), LTXVAdapter(), Kandinsky5Adapter(), AuraFlowAdapter(),
                                       WanAdapter(), SD3Adapter(), Ideogram4Adapter(),
                                       HiDreamAdapter(), CogVideoXAdapter())
SUPPORTED = ("UNet models with cross-attention (SD1.x, SD2.x, SDXL and its distilled variants), Flux (FLUX.1 dev "
             "and schnell, FLUX.2), Chroma, HunyuanImage 2.1, HunyuanVideo 1.5, Qwen-Image, MageFlow, Z-Image, Krea 2, "
             "LTX-Video, Wan 2.1 / 2.2, Kandinsky 5, AuraFlow, SD3 / SD3.5, Ideogram 4, HiDream and CogVideoX "
             "(every family: docs/families.md)")


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
    family = model_family(model)
    reason = refusal(family)
    if reason is not None:
        raise ValueError(f"{reason}. Supported: {SUPPORTED}")
    diffusion_model = model.get_model_object("diffusion_model")
    for adapter in ADAPTERS:
        if adapter.matches(diffusion_model):
            reason = adapter.unreachable(diffusion_model)
            if reason is not None:
                raise ValueError(f"this is a {family} model, which Infusion cannot reach here: {reason}")
            return adapter
    raise ValueError(f"this is a {family} model ({type(diffusion_model).__name__}), which Infusion does not support: "
                     f"its attention is not one this pack knows how to reach. Supported: {SUPPORTED}")
