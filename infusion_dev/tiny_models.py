"""Tiny random-weight models in files ComfyUI's own loaders accept, for the smoke run and the tests.

- `write_tiny_sd15_checkpoint`: a .safetensors that `comfy.sd.load_checkpoint_guess_config`
  (so Load Checkpoint) detects as SD1.5 and loads with no missing keys; with every_layer, it has
  SD1.5's 16 cross-attention layers, so Infusion trains and applies on it.
- `write_tiny_clip_vision` + `tiny_clip_vision_loader`: a CLIP vision file for Load CLIP Vision.
  ComfyUI's loader only knows full-size encoders (ViT-L alone is 1.2 GB), so the file carries its
  own tiny config and the context manager teaches `comfy.clip_vision.load` to build exactly such
  files; every other file still goes to ComfyUI's loader.
- `write_concept_photos`: a few synthetic photos of different sizes and aspects.

ComfyUI must already be importable (its root on sys.path, comfy.cli_args configured): every
ComfyUI import is inside a function.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Callable, Iterator

import torch

SEED = 1241
TINY_CLIP_VISION_KEY = "infusion_tiny_clip_vision"
# A 2-layer, 32-wide ViT on 32 px inputs with 16-dim embeddings: what CLIPVisionModelProjection needs.
TINY_CLIP_VISION_CONFIG = {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 32,
                           "image_size": 32, "intermediate_size": 64, "layer_norm_eps": 1e-5,
                           "model_type": "clip_vision_model", "num_attention_heads": 2, "num_channels": 3,
                           "num_hidden_layers": 2, "patch_size": 8, "projection_dim": 16}


def _randn(shape: tuple, gen: torch.Generator) -> torch.Tensor:
    rows = shape[0]
    if rows <= 8192:
        return torch.randn(shape, generator=gen)
    # Token embeddings (49408 rows, 38-63 M values) dominate build time: sum rows of two
    # small tables with coprime periods -- every row distinct, each entry still N(0, 1).
    cols = 1
    for d in shape[1:]:
        cols *= d
    idx = torch.arange(rows)
    a = torch.randn((1021, cols), generator=gen)
    b = torch.randn((1031, cols), generator=gen)
    return (a[idx % 1021] + b[idx % 1031]).mul_(0.5 ** 0.5).reshape(shape)


def init_weights(module: torch.nn.Module, seed: int = SEED) -> torch.nn.Module:
    """Deterministic random init. ComfyUI allocates weights with torch.empty, so every
    parameter must be written: matrices/convs/embeddings ~ N(0, 0.02), norm weights (scales) 1, biases 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in module.modules():
            is_norm = isinstance(mod, (torch.nn.LayerNorm, torch.nn.GroupNorm)) or type(mod).__name__.endswith("Norm")
            for name, p in mod.named_parameters(recurse=False):
                if name == "bias":
                    p.zero_()
                elif is_norm and name in ("weight", "scale"):  # 0.3.64's Flux RMSNorm: `scale`
                    p.fill_(1.0)
                elif p.ndim >= 2:
                    p.copy_(_randn(tuple(p.shape), gen).mul_(0.02))
                elif p.ndim == 1:
                    p.zero_()
                # 0-d params (CLIP logit_scale, TAESD scale/shift) are set by their constructors.
    return module


def sd15_checkpoint_unet_config(every_layer: bool = False) -> dict[str, Any]:
    """A UNet ComfyUI's model_detection calls SD1.5: SD15.matches only checks model_channels 320,
    context_dim 768 (read from the first transformer), conv proj_in and no adm.

    Default: the smallest such UNet -- one level, one res block, one transformer at input 1, no
    middle block, plain output res blocks (1 cross-attention block, 13.6 M params).
    every_layer: SD1.5's 16 cross-attention layers (6 input, middle, 9 output: what Infusion
    requires of an SD1.x model) on three 320-channel levels instead of four wider ones (89 M params).
    """
    config = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "in_channels": 4,
              "use_spatial_transformer": True, "legacy": False, "dtype": torch.float32,
              "use_temporal_attention": False, "use_temporal_resblock": False, "adm_in_channels": None,
              "model_channels": 320, "use_linear_in_transformer": False, "context_dim": 768}
    if every_layer:
        return {**config, "num_res_blocks": [2, 2, 2], "channel_mult": [1, 1, 1], "transformer_depth": [1] * 6,
                "transformer_depth_middle": 1, "transformer_depth_output": [1] * 9}
    return {**config, "num_res_blocks": [1], "channel_mult": [1], "transformer_depth": [1],
            "transformer_depth_middle": -2, "transformer_depth_output": [0, 0]}


def write_tiny_sd15_checkpoint(path: str, seed: int = SEED, every_layer: bool = False) -> str:
    """Write a random-weight .safetensors (via ComfyUI's own comfy.sd.save_checkpoint) that
    comfy.sd.load_checkpoint_guess_config detects as SD15 and loads with no missing keys.
    The UNet is `sd15_checkpoint_unet_config(every_layer)`; the text encoder is the full clip_l
    (ComfyUI builds it from its fixed config, so absent weights would stay torch.empty garbage);
    the VAE has the TAESD layout, which ComfyUI's VAE loader detects (its KL layout is fixed at
    83 M params). ~310 MB and ~1.5 s; every_layer: ~650 MB and a few seconds."""
    import comfy.model_patcher
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.taesd.taesd
    from comfy.supported_models_base import ClipTarget

    cpu = torch.device("cpu")
    # Built as ComfyUI's executor would (inference tensors), which save_checkpoint handles.
    with torch.inference_mode():
        model = comfy.supported_models.SD15(sd15_checkpoint_unet_config(every_layer)).get_model({})
        init_weights(model, seed)
        clip = comfy.sd.CLIP(ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel))
        init_weights(clip.cond_stage_model, seed + 1)
        vae_sd = init_weights(comfy.taesd.taesd.TAESD(latent_channels=4), seed + 2).state_dict()
        vae = comfy.sd.VAE(sd=vae_sd)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        comfy.sd.save_checkpoint(path, comfy.model_patcher.ModelPatcher(model, cpu, cpu), clip=clip, vae=vae)
    return path


def load_unet_file(path: str, new_model: Callable[[], Any], disable_dynamic: bool = False) -> Any:
    """A ModelPatcher over `new_model()` (an empty ComfyUI BaseModel of the right config) with the UNet
    weights of `path`; ComfyUI is told to load it again the same way (Train LoRA's deep copy, the dynamic
    VRAM delegate), as its own loaders do. `disable_dynamic` is ComfyUI's: these patchers are classic."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.utils

    from .comfy_versions import register_reload

    model = new_model()
    # A file saved under one ComfyUI loads under the other: Flux's RMSNorm scales are `.weight` on 0.33 and `.scale`
    # on 0.3.64 (ComfyUI's own loader renames a checkpoint's `.scale` for 0.33).
    own = model.diffusion_model.state_dict().keys()
    state = {_norm_name(k, own): v for k, v in comfy.utils.load_torch_file(path).items()}
    missing, unexpected = model.diffusion_model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    patcher = comfy.model_patcher.ModelPatcher(model, comfy.model_management.get_torch_device(),
                                               comfy.model_management.unet_offload_device())
    register_reload(patcher, load_unet_file, path, new_model)
    return patcher


_RENAMED = {"weight": "scale", "scale": "weight"}


def _norm_name(key: str, own: Any) -> str:
    """`key`, or its RMSNorm scale under the other version's name where only that one is the model's."""
    stem, _, leaf = key.rpartition(".")
    other = f"{stem}.{_RENAMED.get(leaf, leaf)}"
    return other if key not in own and "_norm" in stem and other in own else key


def load_with_weight_dtype(path: str, weight_dtype: str, model_config: Callable[[], Any]) -> Any:
    """`path` through ComfyUI's own Load Diffusion Model with `weight_dtype` (default, fp8_e4m3fn,
    fp8_e4m3fn_fast, fp8_e5m2): the node's code whole, its folder told where the file is and its model detection
    told `model_config()` (small models are not in its tables; 0.3.64 takes every FLUX.1 to be 3,072 wide). The
    rest of its detection runs: an fp8 "scaled" file's scales are found as in a user's file."""
    from unittest import mock

    import comfy.model_detection
    import folder_paths
    import nodes

    folder_paths.add_model_folder_path("diffusion_models", os.path.dirname(os.path.abspath(path)))
    with mock.patch.object(comfy.model_detection, "model_config_from_unet_config", lambda *_, **__: model_config()):
        return nodes.UNETLoader().load_unet(os.path.basename(path), weight_dtype)[0]


def save_unet_file(model: Any, path: str) -> str:
    """The UNet weights of a BaseModel as a .safetensors file (atomic), for `load_unet_file`."""
    from infusion.format import write_safetensors

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.diffusion_model.state_dict().items()}
    return write_safetensors(state, path, {})


def _clip_vision_model(config: dict[str, Any]) -> Any:
    """comfy.clip_vision.ClipVisionModel for `config` (it only reads configs from files)."""
    import comfy.clip_vision

    fd, config_path = tempfile.mkstemp(suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(config, f)
        return comfy.clip_vision.ClipVisionModel(config_path)
    finally:
        os.remove(config_path)


def write_tiny_clip_vision(path: str, seed: int = SEED + 3) -> str:
    """A random-weight CLIP vision file (about 100 KB) that `tiny_clip_vision_loader` can load."""
    from safetensors.torch import save_file

    model = _clip_vision_model(TINY_CLIP_VISION_CONFIG)
    state = {k: v.detach().clone().contiguous() for k, v in init_weights(model.model, seed).state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(state, path, metadata={TINY_CLIP_VISION_KEY: json.dumps(TINY_CLIP_VISION_CONFIG)})
    return path


def _tiny_clip_vision_config(path: str) -> dict[str, Any] | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            text = (f.metadata() or {}).get(TINY_CLIP_VISION_KEY)
    except (SafetensorError, OSError):
        return None
    return json.loads(text) if text else None


@contextlib.contextmanager
def tiny_clip_vision_loader() -> Iterator[None]:
    """While active, Load CLIP Vision also loads files written by `write_tiny_clip_vision`."""
    import comfy.clip_vision
    import comfy.utils

    original = comfy.clip_vision.load

    # ComfyUI's own signature (ckpt_path), and whatever a later version adds passed on.
    def load(ckpt_path: str, *args: Any, **kwargs: Any) -> Any:
        config = _tiny_clip_vision_config(ckpt_path)
        if config is None:
            return original(ckpt_path, *args, **kwargs)
        model = _clip_vision_model(config)
        missing, _ = model.load_sd(comfy.utils.load_torch_file(ckpt_path))
        if missing:
            raise RuntimeError(f"{ckpt_path}: tiny CLIP vision file lacks {missing[:3]}")
        return model

    comfy.clip_vision.load = load
    try:
        yield
    finally:
        comfy.clip_vision.load = original


def write_concept_photos(folder: str, count: int = 3, seed: int = SEED + 4) -> str:
    """`count` synthetic photos (a coloured disc on a gradient), of different sizes and aspects."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        h, w = (96, 128, 80)[i % 3], (96, 80, 128)[i % 3]
        y, x = np.mgrid[0:h, 0:w]
        background = np.stack([x / w, y / h, np.full((h, w), 0.5)], axis=-1)
        disc = ((x - w / 2) ** 2 + (y - h / 2) ** 2) < (min(h, w) / 3) ** 2
        pixels = np.where(disc[..., None], rng.uniform(0.2, 1.0, 3), background)
        Image.fromarray((pixels * 255).astype(np.uint8)).save(os.path.join(folder, f"photo_{i}.png"))
    return folder
