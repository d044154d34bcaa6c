"""Tiny random-weight DiT models in ComfyUI's own classes, for the tests and benchmarks (never a user's
model): FLUX.1 (dev and schnell), FLUX.2 (as klein), Chroma, Chroma Radiance, Qwen-Image, MageFlow, Z-Image,
Krea 2, HunyuanImage 2.1, HunyuanVideo 1.5, LTX-Video, Kandinsky 5, AuraFlow, Wan 2.1 / 2.2, SD3.5, Ideogram 4,
HiDream and CogVideoX, each with its family's real tokenizer and text encoder class at a tiny width (Wan's umT5 with
a small SentencePiece vocabulary, HiDream's Llama 3 with a small byte-level one: their real ones are stored in the
text encoder's file, and in a tokenizer file missing from the trees here).

A tiny Flux is written to a file and loaded from there in a way ComfyUI can repeat (tiny_models.
load_unet_file; its Train LoRA trains on such a reloaded copy); 0.3.64's detection only knows full-size
Flux configs. The others are built from a config. ComfyUI must already be importable; every ComfyUI
import is inside a function.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from typing import Any

import torch

from .tiny_models import init_weights, save_unet_file

SEED = 1251
# Text encoders, at the widths the tiny models read (the tokenizers are the real ones).
TINY_CLIP_L = {"num_hidden_layers": 3, "intermediate_size": 256, "num_attention_heads": 4}  # width stays 768
TINY_T5 = {"d_model": 64, "d_ff": 128, "d_kv": 32, "num_heads": 2, "num_layers": 2}
TINY_LLM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 1,
            "num_key_value_heads": 1}
TEXT_WIDTH = 64
SPIECE_VOCAB = 512  # the tiny umT5's (tiny_spiece_model)

FAMILIES = ("flux", "flux_schnell", "flux2", "chroma", "chroma_radiance", "qwen_image", "z_image", "krea2",
            "mage_flow", "hunyuan_image", "hunyuan_video15", "ltxv", "kandinsky5", "aura_flow", "wan21", "wan22", "sd3",
            "ideogram4", "hidream", "cogvideox")


def _fields_of(params: type, values: dict[str, Any]) -> dict[str, Any]:
    """`values` for the fields this ComfyUI's params dataclass has (newer versions add fields)."""
    names = {f.name for f in dataclasses.fields(params)}
    missing = [f.name for f in dataclasses.fields(params) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise RuntimeError(f"this ComfyUI's {params.__name__} asks for {missing}, which the tiny model does not set")
    return {k: v for k, v in values.items() if k in names}


def flux_config(guidance: bool = True, width: int = 128, double: int = 2, single: int = 2) -> dict[str, Any]:
    """A FLUX.1 with FLUX.1's heads of 128 (its axes 16/56/56) and its T5 context of width 64, CLIP-L pooled
    vector of 768; by default 2 double and 2 single blocks of width 128."""
    import comfy.ldm.flux.model

    values = {"in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": TEXT_WIDTH,
              "hidden_size": width, "mlp_ratio": 4.0, "num_heads": width // 128, "depth": double,
              "depth_single_blocks": single,
              "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True,
              "guidance_embed": guidance, "txt_ids_dims": []}
    return {"image_model": "flux", **_fields_of(comfy.ldm.flux.model.FluxParams, values)}


def _flux(guidance: bool, **shape: int) -> Any:
    import comfy.supported_models

    config = comfy.supported_models.Flux if guidance else comfy.supported_models.FluxSchnell
    return config(flux_config(guidance, **shape)).get_model({})


def flux_shaped(folder: str, width: int, double: int, single: int, seed: int = SEED) -> Any:
    """A FLUX.1 dev of another width and depth (benchmarks), written to `folder` and loaded from its file."""
    from functools import partial

    from .tiny_models import load_unet_file

    path = os.path.join(folder, f"flux_{width}_{double}_{single}.safetensors")
    with torch.inference_mode():
        save_unet_file(init_weights(_flux(True, width=width, double=double, single=single), seed), path)
    return load_unet_file(path, partial(_flux, True, width=width, double=double, single=single))


def flux_model(folder: str, guidance: bool = True, seed: int = SEED) -> Any:
    """A tiny FLUX.1 dev (`guidance`) or schnell, written to `folder` and loaded from its file."""
    from functools import partial

    from .tiny_models import load_unet_file

    path = os.path.join(folder, f"tiny_flux_{'dev' if guidance else 'schnell'}.safetensors")
    with torch.inference_mode():
        save_unet_file(init_weights(_flux(guidance), seed), path)
    return load_unet_file(path, partial(_flux, guidance))


def flux_through_loader(folder: str, weight_dtype: str) -> Any:
    """The tiny FLUX.1 dev's file in `folder` (flux_model writes it) through ComfyUI's Load Diffusion Model with
    `weight_dtype` (fp8_e4m3fn, ...)."""
    from functools import partial

    import comfy.supported_models

    from .tiny_models import load_with_weight_dtype
    return load_with_weight_dtype(os.path.join(folder, "tiny_flux_dev.safetensors"), weight_dtype,
                                  partial(comfy.supported_models.Flux, flux_config(True)))


def scaled_fp8_flux(folder: str) -> Any:
    """The tiny FLUX.1 dev as an fp8 "scaled" file, made as the FLUX.1 and Qwen-Image fp8 files people download
    are: every linear weight in float8_e4m3fn divided by its own scale (its largest magnitude over 448, fp8's
    largest), the scale beside it (<layer>.scale_weight), and the `scaled_fp8` marker ComfyUI detects; loaded
    through Load Diffusion Model at its default weight dtype, as such a file is."""
    from functools import partial

    import comfy.supported_models
    from safetensors.torch import load_file, save_file

    from .tiny_models import load_with_weight_dtype
    scaled: dict[str, Any] = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, weight in load_file(os.path.join(folder, "tiny_flux_dev.safetensors")).items():
        if key.endswith(".weight") and weight.ndim == 2:
            scale = weight.float().abs().max() / torch.finfo(torch.float8_e4m3fn).max
            scaled[key] = (weight.float() / scale).to(torch.float8_e4m3fn)
            scaled[key[:-len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            scaled[key] = weight
    path = os.path.join(folder, "tiny_flux_dev_fp8_scaled.safetensors")
    save_file(scaled, path)
    return load_with_weight_dtype(path, "default", partial(comfy.supported_models.Flux, flux_config(True)))


def flux2_model(seed: int = SEED + 4) -> Any:
    """A tiny FLUX.2 as its klein variants are built (Qwen3 text, global modulation, 128-channel latents)."""
    import comfy.ldm.flux.model
    import comfy.supported_models

    values = {"in_channels": 128, "out_channels": 128, "vec_in_dim": None, "context_in_dim": 3 * TEXT_WIDTH,
              "hidden_size": 128, "mlp_ratio": 3.0, "num_heads": 1, "depth": 1, "depth_single_blocks": 2,
              "axes_dim": [32, 32, 32, 32], "theta": 2000, "patch_size": 1, "qkv_bias": False,
              "guidance_embed": False, "txt_ids_dims": [3], "global_modulation": True, "mlp_silu_act": True,
              "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0}
    config = {"image_model": "flux2", **_fields_of(comfy.ldm.flux.model.FluxParams, values)}
    return _patcher(init_weights(comfy.supported_models.Flux2(config).get_model({}), seed))


def krea2_model(seed: int = SEED + 5) -> Any:
    """A tiny Krea 2: 2 single-stream blocks of width 128 (one head of 128), reading 12 fused layers of a
    64-wide text encoder."""
    import comfy.supported_models

    config = {"image_model": "krea2", "features": 128, "channels": 16, "patch": 2, "layers": 2, "heads": 1,
              "kvheads": 1, "txtlayers": 12, "txtdim": TEXT_WIDTH, "txtheads": 1, "txtkvheads": 1}
    return _patcher(init_weights(comfy.supported_models.Krea2(config).get_model({}), seed))


def _patcher(model: Any) -> Any:
    import comfy.model_management
    import comfy.model_patcher
    return comfy.model_patcher.ModelPatcher(model, comfy.model_management.get_torch_device(),
                                            comfy.model_management.unet_offload_device())


def chroma_model(seed: int = SEED + 1) -> Any:
    import comfy.ldm.chroma.model
    import comfy.supported_models

    values = {"in_channels": 64, "out_channels": 64, "context_in_dim": TEXT_WIDTH, "hidden_size": 128,
              "mlp_ratio": 4.0, "num_heads": 1, "depth": 1, "depth_single_blocks": 2, "axes_dim": [16, 56, 56],
              "theta": 10000, "patch_size": 2, "qkv_bias": True, "in_dim": 64, "out_dim": 128, "hidden_dim": 64,
              "n_layers": 1, "txt_ids_dims": [], "vec_in_dim": None}
    config = {"image_model": "chroma", **_fields_of(comfy.ldm.chroma.model.ChromaParams, values)}
    return _patcher(init_weights(comfy.supported_models.Chroma(config).get_model({}), seed))


def chroma_radiance_model(seed: int = SEED + 12) -> Any:
    """A tiny Chroma Radiance: Chroma's blocks (1 double, 2 single, width 128) on pixels, in patches of 16, with a
    small NeRF head."""
    import comfy.ldm.chroma_radiance.model
    import comfy.supported_models

    values = {"in_channels": 3, "out_channels": 3, "context_in_dim": TEXT_WIDTH, "hidden_size": 128, "mlp_ratio": 4.0,
              "num_heads": 1, "depth": 1, "depth_single_blocks": 2, "axes_dim": [16, 56, 56], "theta": 10000,
              "patch_size": 16, "qkv_bias": True, "in_dim": 64, "out_dim": 128, "hidden_dim": 64, "n_layers": 1,
              "txt_ids_dims": [], "vec_in_dim": None, "nerf_hidden_size": 16, "nerf_mlp_ratio": 2, "nerf_depth": 2,
              "nerf_max_freqs": 4, "nerf_tile_size": 512, "nerf_final_head_type": "conv",
              "nerf_embedder_dtype": None, "use_x0": True, "use_sequential_txt_ids": False}
    config = {"image_model": "chroma_radiance",
              **_fields_of(comfy.ldm.chroma_radiance.model.ChromaRadianceParams, values)}
    return _patcher(init_weights(comfy.supported_models.ChromaRadiance(config).get_model({}), seed))


def qwen_image_model(seed: int = SEED + 2) -> Any:
    import comfy.supported_models

    config = {"image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 2,
              "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": TEXT_WIDTH,
              "axes_dims_rope": (8, 12, 12)}
    return _patcher(init_weights(comfy.supported_models.QwenImage(config).get_model({}), seed))


def mage_flow_model(seed: int = SEED + 6) -> Any:
    """A tiny MageFlow: Qwen-Image's blocks (2, width 64) on FLUX.2's 128-channel latents, reading Qwen3-VL."""
    import comfy.supported_models

    config = {"image_model": "mage_flow", "in_channels": 128, "out_channels": 128, "num_layers": 2,
              "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": TEXT_WIDTH,
              "axes_dims_rope": (8, 12, 12)}
    return _patcher(init_weights(comfy.supported_models.MageFlow(config).get_model({}), seed))


_HUNYUAN = {"vec_in_dim": None, "context_in_dim": TEXT_WIDTH, "hidden_size": 128, "mlp_ratio": 4.0, "num_heads": 1,
            "theta": 256, "qkv_bias": True, "byt5": True, "guidance_embed": False, "meanflow": False,
            "use_cond_type_embedding": False, "vision_in_dim": None, "meanflow_sum": False}


def _hunyuan(config_class: str, values: dict[str, Any], seed: int) -> Any:
    import comfy.ldm.hunyuan_video.model
    import comfy.supported_models

    config = {"image_model": "hunyuan_video",
              **_fields_of(comfy.ldm.hunyuan_video.model.HunyuanVideoParams, {**_HUNYUAN, **values})}
    return _patcher(init_weights(getattr(comfy.supported_models, config_class)(config).get_model({}), seed))


def hunyuan_image_model(seed: int = SEED + 7) -> Any:
    """A tiny HunyuanImage 2.1: Flux's blocks (1 double, 2 single, width 128) on its 64-channel latents, reading
    Qwen2.5-VL, with its ByT5 glyph input."""
    return _hunyuan("HunyuanImage21", {"in_channels": 64, "out_channels": 64, "patch_size": [1, 1],
                                       "axes_dim": [64, 64], "depth": 1, "depth_single_blocks": 2}, seed)


def hunyuan_video15_model(seed: int = SEED + 8) -> Any:
    """A tiny HunyuanVideo 1.5: 2 double blocks (width 128) on its 32-channel video latents (with the image and mask
    channels of image to video), reading Qwen2.5-VL, with its ByT5 glyph and SigLIP image inputs."""
    return _hunyuan("HunyuanVideo15", {"in_channels": 65, "out_channels": 32, "patch_size": [1, 1, 1],
                                       "axes_dim": [16, 56, 56], "depth": 2, "depth_single_blocks": 0,
                                       "use_cond_type_embedding": True, "vision_in_dim": 1152,
                                       "meanflow_sum": True}, seed)


def ltxv_model(seed: int = SEED + 9) -> Any:
    """A tiny LTX-Video: 2 blocks of width 64 (2 heads of 32), each a self-attention and a cross-attention on a
    64-wide T5, on its 128-channel video latents."""
    import comfy.supported_models

    config = {"image_model": "ltxv", "in_channels": 128, "cross_attention_dim": 64, "attention_head_dim": 32,
              "num_attention_heads": 2, "caption_channels": TEXT_WIDTH, "num_layers": 2}
    return _patcher(init_weights(comfy.supported_models.LTXV(config).get_model({}), seed))


def kandinsky5_model(seed: int = SEED + 11) -> Any:
    """A tiny Kandinsky 5 (its video model): 1 text block and 2 visual blocks of width 64 (2 heads of 32), reading a
    64-wide Qwen2.5-VL and CLIP-L's pooled vector, on 16-channel video latents with its image and mask channels."""
    import comfy.supported_models

    config = {"image_model": "kandinsky5", "in_visual_dim": 16, "out_visual_dim": 16, "in_text_dim": TEXT_WIDTH,
              "in_text_dim2": 768, "time_dim": 64, "model_dim": 64, "ff_dim": 128,
              "visual_embed_dim": (16 + 16 + 1) * 4,
              "num_text_blocks": 1, "num_visual_blocks": 2, "axes_dims": (8, 12, 12), "patch_size": (1, 2, 2)}
    return _patcher(init_weights(comfy.supported_models.Kandinsky5(config).get_model({}), seed))


def aura_flow_model(seed: int = SEED + 13) -> Any:
    """A tiny AuraFlow: 1 double and 2 single blocks of width 128 (2 heads of 64), with its 8 register rows, on SDXL's
    latents, reading a Pile-T5 of AuraFlow's own width 2048 (ComfyUI names the model AuraFlow by that width)."""
    import comfy.supported_models

    config = {"cond_seq_dim": 2048, "dim": 128, "n_heads": 2, "global_conddim": 128, "n_layers": 3,
              "n_double_layers": 1, "max_seq": 16 * 16}
    model = init_weights(comfy.supported_models.AuraFlow(config).get_model({}), seed)
    # Its blocks gate attention and MLP by the timestep's modulations, which weights of 0.02 leave near 0 (the
    # prompt then moved the output by 1e-8): those are drawn 10 times larger, gates of a trained model's order.
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            if p.ndim == 2 and (name.startswith(("t_embedder.", "modF.")) or ".mod" in name):
                p.mul_(10.0)
    return _patcher(model)


def sd3_model(seed: int = SEED + 17) -> Any:
    """A tiny SD3.5 Medium: 2 joint blocks of width 128 (2 heads of 64; SD3 ties both to the depth), the first with
    SD3.5 Medium's image-only second attention, on 16-channel latents, reading the 4096-wide context that SD3's text
    encoders make (CLIP-L and CLIP-G rows side by side, padded, then T5's rows) and their 2048-wide pooled vector."""
    import comfy.supported_models

    config = {"in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 2, "input_size": None,
              "adm_in_channels": 2048,
              "context_embedder_config": {"target": "torch.nn.Linear",
                                          "params": {"in_features": 4096, "out_features": 128}},
              "num_patches": 64 * 64, "pos_embed_max_size": 64, "pos_embed_scaling_factor": None, "qk_norm": "rms",
              "x_block_self_attn_layers": [0]}
    model = init_weights(comfy.supported_models.SD3(config).get_model({}), seed)
    with torch.no_grad():  # a buffer, which init_weights leaves as torch.empty made it
        pos_embed = model.diffusion_model.pos_embed
        pos_embed.copy_(torch.randn(pos_embed.shape, generator=torch.Generator().manual_seed(seed)) * 0.02)
    return _patcher(model)


def ideogram4_model(seed: int = SEED + 18) -> Any:
    """A tiny Ideogram 4: 2 single-stream blocks of width 64 (2 heads of 32), reading 13 layers of a 64-wide text
    encoder side by side, on FLUX.2's 128-channel latents."""
    import comfy.supported_models

    config = comfy.supported_models.Ideogram4({"image_model": "ideogram4", "in_channels": 128, "num_layers": 2})
    # Its class writes the released widths over any given: the tiny ones go on after.
    config.unet_config.update({"num_attention_heads": 2, "attention_head_dim": 32, "intermediate_size": 128,
                               "adaln_dim": 64, "llm_features_dim": 13 * TEXT_WIDTH, "mrope_section": [6, 5, 5]})
    return _patcher(init_weights(config.get_model({}), seed))


def hidream_model(seed: int = SEED + 19) -> Any:
    """A tiny HiDream-I1: 1 double-stream and 2 single-stream blocks of width 64 (2 heads of 32), each with 2 experts,
    on FLUX.1's latents, reading a 64-wide T5 and the three layers of a 64-wide Llama (one a block), and CLIP-L and
    CLIP-G's 2048-wide pooled vector."""
    import comfy.supported_models

    config = {"image_model": "hidream", "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 1,
              "num_single_layers": 2, "attention_head_dim": 32, "num_attention_heads": 2,
              "caption_channels": [TEXT_WIDTH, TEXT_WIDTH], "text_emb_dim": 2048, "num_routed_experts": 2,
              "num_activated_experts": 1, "axes_dims_rope": [8, 12, 12], "max_resolution": [64, 64],
              "llama_layers": [0, 1, 2]}
    return _patcher(init_weights(comfy.supported_models.HiDream(config).get_model({}), seed))


def cogvideox_model(seed: int = SEED + 20) -> Any:
    """A tiny CogVideoX (as the 2B model: sine positions, no rotary): 2 blocks of width 96 (2 heads of 48: its sine
    positions split the width in three) on its 16-channel video latents, reading a 64-wide T5."""
    import comfy.supported_models

    config = {"image_model": "cogvideox", "num_attention_heads": 2, "attention_head_dim": 48, "in_channels": 16,
              "out_channels": 16, "time_embed_dim": 64, "text_embed_dim": TEXT_WIDTH, "num_layers": 2,
              "sample_width": 8, "sample_height": 8, "sample_frames": 5}
    model = init_weights(comfy.supported_models.CogVideoX_T2V(config).get_model({}), seed)
    # Its blocks gate attention by the timestep's modulations, which weights of 0.02 leave near 0 (the prompt then
    # moved the output by 1e-6): those are drawn 10 times larger, gates of a trained model's order.
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            if p.ndim == 2 and (name.startswith("time_embedding") or name.endswith(("norm1.linear.weight",
                                                                                    "norm2.linear.weight"))):
                p.mul_(10.0)
    return _patcher(model)


def _wan(config_class: str, values: dict[str, Any], seed: int) -> Any:
    import comfy.supported_models

    config = {"image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "in_dim": 16, "dim": 64,
              "ffn_dim": 128, "freq_dim": 64, "text_dim": TEXT_WIDTH, "out_dim": 16, "num_heads": 2, "num_layers": 2,
              **values}
    model = init_weights(getattr(comfy.supported_models, config_class)(config).get_model({}), seed)
    # At weights of 0.02 the prompt reaches the picture through five small matrices (text embedding, values, output)
    # and moved it by 1e-4: those are drawn larger, so the prompt matters as in a trained model.
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            if p.ndim == 2 and (name.startswith("text_embedding.") or ".cross_attn.v" in name or ".cross_attn.o" in name):
                p.mul_(10.0 if name.startswith("text_embedding.") else 5.0)
    return _patcher(model)


def wan21_model(seed: int = SEED + 14) -> Any:
    """A tiny Wan 2.1 text-to-video: 2 blocks of width 64 (2 heads of 32), each a self-attention and a cross-attention
    on a 64-wide umT5, on Wan 2.1's 16-channel video latents."""
    return _wan("WAN21_T2V", {}, seed)


def wan21_i2v_model(seed: int = SEED + 15) -> Any:
    """The tiny Wan 2.1 image-to-video: its cross-attentions also read a CLIP image's 257 rows (1280 wide), through
    keys and values of their own; the start image's latent and mask join the input channels (36)."""
    return _wan("WAN21_I2V", {"model_type": "i2v", "in_dim": 36}, seed)


def wan22_model(seed: int = SEED + 16) -> Any:
    """A tiny Wan 2.2 5B (text-image-to-video): Wan 2.1's blocks on Wan 2.2's 48-channel latents."""
    return _wan("WAN22_T2V", {"in_dim": 48, "out_dim": 48}, seed)


def z_image_model(seed: int = SEED + 3) -> Any:
    import comfy.supported_models

    # Width 256: Z-Image's timestep embedding is 256 wide and its modulation reads min(width, 256) of it.
    config = {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 256, "cap_feat_dim": TEXT_WIDTH,
              "n_layers": 2, "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2, "qk_norm": True,
              "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512], "rope_theta": 256.0,
              "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
              "pad_tokens_multiple": 32}
    return _patcher(init_weights(comfy.supported_models.ZImage(config).get_model({}), seed))


def _tiny_qwen_lm(layers: int = TINY_LLM["num_hidden_layers"], output: Any = "last") -> type:
    """A text-only Qwen causal LM at tiny width, where Qwen-Image's Qwen2.5-VL or Krea 2's Qwen3-VL goes
    (their vision towers alone are hundreds of MB); the family's own text encoder around it drops its
    template rows (and, for Krea 2, stacks the `output` layers it reads)."""
    import comfy.sd1_clip
    import comfy.text_encoders.llama

    class TinyQwenLM(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
            super().__init__(device=device, layer=output, dtype=dtype,
                             textmodel_json_config={**TINY_LLM, "num_hidden_layers": layers},
                             special_tokens={"pad": 151643}, layer_norm_hidden_state=False,
                             model_class=comfy.text_encoders.llama.Qwen25_3B, enable_attention_masks=True,
                             return_attention_masks=True, model_options=model_options)
    return TinyQwenLM


# Per family: its tokenizer and text encoder (module, class names in comfy.text_encoders), and the model
# options that make the encoder tiny.
_TEXT = {
    "flux": ("flux", "FluxTokenizer", "FluxClipModel", {"clip_l_model_config": TINY_CLIP_L,
                                                        "t5xxl_model_config": TINY_T5}),
    "chroma": ("pixart_t5", "PixArtTokenizer", "PixArtT5XXL", {"t5xxl_model_config": TINY_T5}),
    "qwen_image": ("qwen_image", "QwenImageTokenizer", "QwenImageTEModel", {}),
    "z_image": ("z_image", "ZImageTokenizer", "ZImageTEModel", {"qwen3_4b_model_config": TINY_LLM}),
    "krea2": ("krea2", "Krea2Tokenizer", "Krea2TEModel", {}),
    "mage_flow": ("mage_flow", "MageFlowTokenizer", "MageFlowTEModel", {}),
    # HunyuanImage's ByT5 glyph encoder is left out (a full-size ByT5-small): quoted text is not drawn as letters.
    "hunyuan_image": ("hunyuan_image", "HunyuanImageTokenizer", None, {}),
    "hunyuan_video15": ("hunyuan_video", "HunyuanVideo15Tokenizer", None, {}),
    "ltxv": ("lt", "LTXVT5Tokenizer", None, {"t5xxl_model_config": TINY_T5}),
    # Pile-T5 at AuraFlow's width (2048: its 32k-row embedding is most of this encoder's 66 M numbers).
    "aura_flow": ("aura_t5", "AuraT5Tokenizer", "AuraT5Model",
                  {"pile_t5xl_model_config": {**TINY_T5, "d_model": 2048}}),
    "kandinsky5": ("kandinsky5", "Kandinsky5Tokenizer", None, {"clip_l_model_config": TINY_CLIP_L}),
    # umT5 with a small SentencePiece vocabulary of its own (the real one is stored in the text encoder's file).
    "wan21": ("wan", "WanT5Tokenizer", None, {"umt5xxl_model_config": {**TINY_T5, "vocab_size": SPIECE_VOCAB}}),
    # SD3 pads CLIP-L and CLIP-G's rows to T5-XXL's width, 4096: T5 keeps it (its 32k-row embedding is most of it).
    "sd3": ("sd3_clip", "SD3Tokenizer", None, {"clip_l_model_config": TINY_CLIP_L, "clip_g_model_config": TINY_CLIP_L,
                                               "t5xxl_model_config": {**TINY_T5, "d_model": 4096}}),
    "ideogram4": ("ideogram4", "Ideogram4Tokenizer", None, {}),
    "cogvideox": ("cogvideo", "CogVideoXTokenizer", "CogVideoXT5XXL", {"t5xxl_model_config": TINY_T5}),
    "hidream": ("hidream", "HiDreamTokenizer", None, {"clip_l_model_config": TINY_CLIP_L,
                                                      "clip_g_model_config": TINY_CLIP_L, "t5xxl_model_config": TINY_T5,
                                                      "llama_model_config": TINY_LLM}),
    # klein reads three of Qwen3's layers (9, 18, 27), side by side: 28 tiny layers, a 3 x 64 wide context.
    "flux2": ("flux", "KleinTokenizer", None, {"qwen3_4b_model_config": {**TINY_LLM, "num_hidden_layers": 28}}),
}


def clip(family: str, seed: int = SEED + 10, t5_width: int = TINY_T5["d_model"]) -> Any:
    """The family's CLIP object: its real tokenizer and text encoder classes, tiny widths (a T5's output:
    `t5_width`, FLUX.1's 4096 for a full-size model)."""
    import importlib

    import comfy.sd
    from comfy.supported_models_base import ClipTarget

    module, tokenizer, model, options = _TEXT[{"flux_schnell": "flux", "chroma_radiance": "chroma",
                                               "wan22": "wan21"}.get(family, family)]
    module = importlib.import_module(f"comfy.text_encoders.{module}")
    if "t5xxl_model_config" in options and family != "sd3":
        options = {**options, "t5xxl_model_config": {**TINY_T5, "d_model": t5_width}}
    if family == "qwen_image":
        options = {"qwen25_7b_class": _tiny_qwen_lm()}
    elif family in ("mage_flow", "hunyuan_image", "hunyuan_video15", "kandinsky5"):
        options = {**options, ("qwen3vl_4b_class" if family == "mage_flow" else "qwen25_7b_class"): _tiny_qwen_lm()}
    elif family == "krea2":  # Krea 2 reads 12 layers of Qwen3-VL, up to its 36th
        options = {"qwen3vl_4b_class": _tiny_qwen_lm(36, list(module.KREA2_TAP_LAYERS))}
    elif family == "ideogram4":  # Ideogram 4 reads 13 layers of Qwen3-VL-8B, up to its 36th
        options = {"qwen3vl_8b_class": _tiny_qwen_lm(36, list(module.IDEOGRAM4_TAP_LAYERS))}
    encoder = {"flux2": lambda: module.klein_te(),
               "hunyuan_image": lambda: module.te(byt5=False),
               "hunyuan_video15": lambda: importlib.import_module("comfy.text_encoders.hunyuan_image").te(byt5=False),
               "ltxv": lambda: module.ltxv_te(), "kandinsky5": lambda: module.te(), "wan21": lambda: module.te(),
               "wan22": lambda: module.te(), "sd3": lambda: module.sd3_clip(), "ideogram4": lambda: module.te(),
               "hidream": lambda: module.hidream_clip()}.get(family, lambda: getattr(module, model))()
    data = {"spiece_model": tiny_spiece_model()} if family in ("wan21", "wan22") else {}
    tokenizer = _hidream_tokenizer() if family == "hidream" else getattr(module, tokenizer)
    out = comfy.sd.CLIP(ClipTarget(tokenizer, encoder), tokenizer_data=data, model_options=dict(options))
    init_weights(out.cond_stage_model, seed)
    return out


_WORDS = ("dog", "cat", "beach", "lake", "city", "teddy bear", "car", "field", "flowers", "trees", "barn", "sky", "fox",
          "sunglasses", "photo", "bed", "water", "road", "house", "garden", "mountain", "river", "forest", "street")
_CORPUS = tuple(f"{a} the {w} {b} the {v}." for w in _WORDS for v in _WORDS[::-1]
                for a, b in (("a photo of", "on"), ("The", "and"), ("an image of", "near"))) + (
    "Hot dogs, blurry, low quality! A Dog, and another dog? jumps over the lazy XYZ 0123456789 jvkqw",)


@functools.cache
def tiny_spiece_model() -> bytes:
    """A SentencePiece model with umT5's special ids (pad 0, end 1, unknown 2) and a few hundred pieces learnt from
    prompts of a few words (byte-pair merges: umT5's own is a unigram model of 256k pieces, which a few prompts cannot
    train): words it has no piece for are spelt in pieces, as T5 spells rare words."""
    import io

    import sentencepiece

    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS), model_writer=out, vocab_size=SPIECE_VOCAB, model_type="bpe",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    return out.getvalue()


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIAL = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|eot_id|>": 128009}


@functools.cache
def tiny_llama3_tokenizer() -> str:
    """A folder holding a Llama 3 tokenizer.json in Llama 3's form (byte-level BPE after Llama 3's split pattern, its
    special ids, its start token) with a few hundred pieces learnt from prompts of a few words: ComfyUI's own copy of
    the real one (9 MB) is not in the trees here."""
    import json
    import tempfile

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(_CORPUS, trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    data = json.loads(tokenizer.to_str())
    # Merges as "a b" strings (ComfyUI's own reader takes that form only); the special tokens at Llama 3's ids.
    data["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    data["added_tokens"] = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for c, i in LLAMA3_SPECIAL.items()]
    start = {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}
    data["post_processor"] = {"type": "TemplateProcessing", "single": [start, {"Sequence": {"id": "A", "type_id": 0}}],
                              "pair": [start, {"Sequence": {"id": "A", "type_id": 0}},
                                       {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                                       "tokens": ["<|begin_of_text|>"]}}}
    folder = tempfile.mkdtemp(prefix="tiny_llama3_")
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(data, f)
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": True}, f)
    return folder


def _hidream_tokenizer() -> type:
    """HiDream's tokenizer with the tiny Llama 3 tokenizer; read by ComfyUI's own Llama 3 tokenizer class where it has
    one (0.33), else by transformers' fast tokenizer as the file says (0.3.64's LlamaTokenizerFast, under transformers
    5, reads a tokenizer.json as SentencePiece pieces)."""
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.text_encoders.hidream
    import comfy.text_encoders.hunyuan_video
    import comfy.text_encoders.sd3_clip
    import transformers

    reader = comfy.text_encoders.hunyuan_video.LlamaTokenizerFast
    reader = reader if reader.__module__.startswith("comfy.") else transformers.PreTrainedTokenizerFast

    class TinyHiDreamTokenizer(comfy.text_encoders.hidream.HiDreamTokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}):  # HiDream's four, as ComfyUI sets them
            directory, data = embedding_directory, tokenizer_data
            self.clip_l = comfy.sd1_clip.SDTokenizer(embedding_directory=directory, tokenizer_data=data)
            self.clip_g = comfy.sdxl_clip.SDXLClipGTokenizer(embedding_directory=directory, tokenizer_data=data)
            self.t5xxl = comfy.text_encoders.sd3_clip.T5XXLTokenizer(embedding_directory=directory, min_length=128,
                                                                     max_length=128, tokenizer_data=data)
            self.llama = comfy.sd1_clip.SDTokenizer(
                tiny_llama3_tokenizer(), embedding_directory=directory, pad_with_end=False, embedding_size=4096,
                embedding_key="llama", tokenizer_class=reader, has_start_token=True, has_end_token=False,
                pad_to_max_length=False, max_length=99999999, pad_token=128009, min_length=128, tokenizer_data=data)
    return TinyHiDreamTokenizer


def flux_vae(seed: int = SEED + 20) -> Any:
    """A tiny KL autoencoder with FLUX.1's 16 latent channels and 8x downscale (ComfyUI's own VAE class)."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    params = {"ddconfig": ddconfig, "embed_dim": 16}
    sd = init_weights(AutoencoderKL(**params), seed).state_dict()
    vae = comfy.sd.VAE(sd=sd, config={"params": params})
    vae.latent_channels = 16  # ComfyUI reads it off the weights only for the layouts it detects
    return vae


def wan_vae(seed: int = SEED + 21) -> Any:
    """Wan 2.1's VAE (ComfyUI's own WanVAE: 16 channels, 8x down, 4 frames a latent frame) at width 8, which 0.33 reads
    off the weights; 0.3.64 builds it at its released width (96) whatever the weights say."""
    import comfy.ldm.wan.vae
    import comfy.sd

    width = 8 if "decoder.head.0.gamma" in inspect.getsource(comfy.sd.VAE.__init__) else 96
    model = comfy.ldm.wan.vae.WanVAE(dim=width, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                     temperal_downsample=[False, True, True], dropout=0.0)
    init_weights(model, seed)
    # Weights of 0.02 through its ~40 convolutions would leave nothing of the latent in the pixels: scaled to keep
    # each layer's output at its input's size.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.mul_(1.0 / (0.02 * p[0].numel() ** 0.5))
    return comfy.sd.VAE(sd=model.state_dict())


def model_and_clip(family: str, folder: str) -> tuple[Any, Any]:
    """(MODEL, CLIP) of one tiny family; a Flux is written to `folder` and loaded from there."""
    if family in ("flux", "flux_schnell"):
        model = flux_model(folder, guidance=family == "flux")
    else:
        model = {"chroma": chroma_model, "chroma_radiance": chroma_radiance_model, "qwen_image": qwen_image_model,
                 "z_image": z_image_model, "flux2": flux2_model, "krea2": krea2_model, "mage_flow": mage_flow_model,
                 "hunyuan_image": hunyuan_image_model, "hunyuan_video15": hunyuan_video15_model, "ltxv": ltxv_model,
                 "kandinsky5": kandinsky5_model, "aura_flow": aura_flow_model, "wan21": wan21_model,
                 "wan22": wan22_model, "sd3": sd3_model, "ideogram4": ideogram4_model,
                 "hidream": hidream_model, "cogvideox": cogvideox_model}[family]()
    return model, clip(family)
