"""The toy world's DiT: a small FLUX.1 in ComfyUI's own Flux classes (ComfyUI must be importable; imported
inside), trained on the same scenes and captions as the toy UNet.

The model is comfy.ldm.flux's Flux in a config derived from ComfyUI's FLUX.1 model config, so ComfyUI's
KSampler, its flow-matching model sampling (FLUX.1's shift), Train LoRA and LoRA loading treat it as a
Flux checkpoint: 2 double-stream and 2 single-stream blocks of width 128 (2 heads of 64), patch size 2 on
the world's 16x16 latents (64 image tokens), no guidance embedding (it samples with real classifier-free
guidance, as the UNet does), 1.82 M parameters.

The latents are the world's own (4 channels, SD1's latent scale: the same photos, previews and probe as
the UNet's); only the config's latent format says so.

The text side is the UNet's, unchanged: ComfyUI's SD1 tokenizer and the toy encoder (text.py). What a
Flux CLIP hands a Flux model is a token sequence (T5's rows: the context, here the toy encoder's 77 rows of
width 128) and a pooled vector (CLIP-L's: the model's `y`, here the encoder's end row, its summary of the
prompt). ComfyUI's Flux reads exactly those two from any CLIP's conditioning (`c_crossattn` and
`pooled_output`), so the toy CLIP needs no Flux-specific class; the pack marks the class word in its
77-row chunks as for SD1.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from .model import WEIGHTS_DIR, build_clip
from .text import WIDTH

DIT_WEIGHTS = os.path.join(WEIGHTS_DIR, "dit.safetensors")
SEED = 2027

FLUX_CONFIG = {
    "in_channels": 4, "out_channels": 4, "vec_in_dim": WIDTH, "context_in_dim": WIDTH,
    "hidden_size": 128, "mlp_ratio": 4.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
    "axes_dim": [16, 24, 24], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": False,
    "txt_ids_dims": [],  # 0.33's FluxParams asks for it, 0.3.64's has no such field (filtered below)
}


def model_config() -> Any:
    """ComfyUI's FLUX.1 config with the toy transformer and the world's 4-channel latents."""
    import comfy.latent_formats
    import comfy.ldm.flux.model
    import comfy.supported_models

    from ..tiny_dits import _fields_of

    class ToyWorldFlux(comfy.supported_models.Flux):
        unet_config = {"image_model": "flux", "guidance_embed": False}
        latent_format = comfy.latent_formats.SD15

    config = {"image_model": "flux", **_fields_of(comfy.ldm.flux.model.FluxParams, FLUX_CONFIG)}
    return ToyWorldFlux({**config, "dtype": torch.float32})


def new_model() -> Any:
    """The toy Flux as a ComfyUI BaseModel, its weights not yet set."""
    return model_config().get_model({})


def init_dit(model: Any, seed: int = SEED) -> Any:
    """DiT's initialisation (Peebles and Xie): Xavier-uniform linears, and every modulation and the output
    layer zero, so each block starts as the identity and the model as predicting zero velocity."""
    generator = torch.Generator().manual_seed(seed)
    diffusion_model = model.diffusion_model
    with torch.no_grad():
        for name, module in diffusion_model.named_modules():
            for param_name, p in module.named_parameters(recurse=False):
                if p.ndim >= 2:
                    torch.nn.init.xavier_uniform_(p, generator=generator)
                elif "norm" in name.lower() or "norm" in type(module).__name__.lower():
                    p.fill_(1.0)  # RMSNorm / QKNorm scales
                else:
                    p.zero_()
        zeroed = [m for n, m in diffusion_model.named_modules()
                  if n.endswith("mod.lin") or n.endswith("modulation.lin") or n.startswith("final_layer")]
        for module in zeroed:
            for p in module.parameters(recurse=False):
                p.zero_()
    return model


def build_model() -> Any:
    """A ModelPatcher over the toy Flux with a fresh deterministic init (for training the base model)."""
    import comfy.model_management
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(init_dit(new_model()), comfy.model_management.get_torch_device(),
                                            comfy.model_management.unet_offload_device())


def load(path: str = DIT_WEIGHTS, weight_dtype: str = "default") -> tuple[Any, Any]:
    """(MODEL, CLIP) of the trained toy Flux, loaded from its file as ComfyUI's loaders load a checkpoint; with
    another `weight_dtype` (fp8_e4m3fn, ...) as Load Diffusion Model loads it so."""
    from ..tiny_models import load_unet_file, load_with_weight_dtype

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no toy-world DiT at {path}: build it with `python -m infusion_dev.toyworld.train base "
                                "--model dit` (see README, Toy world)")
    if weight_dtype != "default":
        return load_with_weight_dtype(path, weight_dtype, model_config), build_clip()
    return load_unet_file(path, new_model), build_clip()
