"""The toy world's MODEL and CLIP as ComfyUI objects (ComfyUI must be importable; imported inside).

The UNet is ComfyUI's own (openaimodel.UNetModel) in a model config derived from its SD15 class:
3 levels of 32/64/64 channels with cross-attention at 16x16, 8x8 and the middle (11 layers, about
2.5 M parameters), 16x16 latents, text width 128, SD1's noise schedule rescaled to zero terminal SNR, v-prediction.

Why zero terminal SNR and v: at 16x16 the mean of the starting noise is large next to the signal that
SD1's schedule leaves at its last step, so a model trained on it reads the image's colour from the
noise instead of the prompt (a calibration run drew whole images tinted by their seed). With zero
terminal SNR the last step holds no signal at all, so the prompt alone decides; and an eps model
cannot predict anything at that step (x0 = x - sigma eps with sigma ~ 4500), a v model can.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from .text import WIDTH, ToyTextModel, sd_clip_model_class

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
BASE_WEIGHTS = os.path.join(WEIGHTS_DIR, "base.safetensors")

UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 16, "in_channels": 4, "out_channels": 4, "model_channels": 32,
    "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 2], "transformer_depth": [1, 1, 1, 1, 0, 0],
    "transformer_depth_middle": 1, "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1],
    "use_spatial_transformer": True, "use_linear_in_transformer": True, "legacy": False,
    "context_dim": WIDTH, "adm_in_channels": None, "use_temporal_attention": False, "use_temporal_resblock": False,
}


def model_config(unet: dict = UNET_CONFIG) -> Any:
    """ComfyUI's SD15 config with a toy UNet (by default the one-object world's), v-prediction and zero terminal
    SNR."""
    import comfy.model_base
    import comfy.supported_models

    class ToyWorld(comfy.supported_models.SD15):
        unet_extra_config = {"num_heads": -1, "num_head_channels": 16}
        sampling_settings = {"zsnr": True}

        def model_type(self, state_dict: dict, prefix: str = "") -> Any:
            return comfy.model_base.ModelType.V_PREDICTION

    return ToyWorld({**unet, "dtype": torch.float32})


def new_model(unet: dict = UNET_CONFIG) -> Any:
    """The toy UNet as a ComfyUI BaseModel, its weights not yet set."""
    return model_config(unet).get_model({})


def build_model(unet: dict = UNET_CONFIG) -> Any:
    """A ModelPatcher over the toy UNet with a fresh deterministic init (for training the base model)."""
    import comfy.model_management
    import comfy.model_patcher

    from ..tiny_models import init_weights

    model = init_weights(new_model(unet), seed=2026)
    return comfy.model_patcher.ModelPatcher(model, comfy.model_management.get_torch_device(),
                                            comfy.model_management.unet_offload_device())


def build_clip(text_model: type = ToyTextModel) -> Any:
    """ComfyUI's CLIP object: its SD1 tokenizer, a toy text encoder (the two-object world's is its own)."""
    import comfy.sd
    import comfy.sd1_clip
    from comfy.supported_models_base import ClipTarget

    return comfy.sd.CLIP(ClipTarget(comfy.sd1_clip.SD1Tokenizer, sd_clip_model_class(text_model)))


def load(path: str = BASE_WEIGHTS) -> tuple[Any, Any]:
    """(MODEL, CLIP) of the trained base model. The MODEL is loaded from its file as ComfyUI's own loaders
    load a checkpoint, so ComfyUI can load it again (its Train LoRA node trains on such a fresh copy)."""
    from ..tiny_models import load_unet_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no toy-world base model at {path}: build it with `python -m infusion_dev.toyworld.train "
                                "base` (see README, Toy world)")
    return load_unet_file(path, new_model), build_clip()


class LatentView:
    """What a VAE's decoder is to Stable Diffusion, for this world's latents: their colour channels as an
    IMAGE. Enough for Train Infusion Concept's previews (which only decode)."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        from .scenes import to_rgb
        return to_rgb(latents, upscale=4)
