"""A model of every text-to-image and text-to-video family ComfyUI runs, in ComfyUI's own classes: what the
family table's test builds to hold each family to its row (infusion/families/catalog.py).

Most families with a tiny model of their own use it (TINY_DITS); every other one is built on the
meta device (no weight is allocated, so even HiDream's 17 B parameters cost nothing): the DiTs configured as
ComfyUI's model_detection configures the released checkpoints, the UNets and Flux's variants as the tiny layouts
with each family's own keys.
"""
from __future__ import annotations

from typing import Any

from . import comfy_harness as h
from . import tiny_dits

_SD3 = {"in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 24, "input_size": None,
        "adm_in_channels": 2048, "context_embedder_config": {"target": "torch.nn.Linear",
                                                             "params": {"in_features": 4096, "out_features": 1536}},
        "num_patches": 36864, "pos_embed_max_size": 192, "pos_embed_scaling_factor": None,
        "x_block_self_attn_layers": []}
_COG = {"image_model": "cogvideox", "num_attention_heads": 48, "attention_head_dim": 64, "time_embed_dim": 512,
        "num_layers": 42, "in_channels": 16, "patch_size": 2, "text_embed_dim": 4096,
        "use_learned_positional_embeddings": False, "use_rotary_positional_embeddings": True}
_COSMOS = {"image_model": "cosmos", "max_img_h": 240, "max_img_w": 240, "max_frames": 128, "in_channels": 16,
           "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1, "model_channels": 4096,
           "block_config": "FA-CA-MLP", "concat_padding_mask": True, "pos_emb_cls": "rope3d",
           "pos_emb_learnable": False, "pos_emb_interpolation": "crop", "block_x_format": "THWBD",
           "affline_emb_norm": True, "use_adaln_lora": True, "adaln_lora_dim": 256, "num_blocks": 28, "num_heads": 32,
           "extra_per_block_abs_pos_emb": True, "rope_h_extrapolation_ratio": 1.0, "rope_w_extrapolation_ratio": 1.0,
           "rope_t_extrapolation_ratio": 2.0, "extra_per_block_abs_pos_emb_type": "learnable"}
_PREDICT2 = {"image_model": "cosmos_predict2", "max_img_h": 240, "max_img_w": 240, "max_frames": 128,
             "in_channels": 16, "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1, "model_channels": 2048,
             "concat_padding_mask": True, "crossattn_emb_channels": 1024, "pos_emb_cls": "rope3d",
             "pos_emb_learnable": True, "pos_emb_interpolation": "crop", "min_fps": 1, "max_fps": 30,
             "use_adaln_lora": True, "adaln_lora_dim": 256, "num_blocks": 28, "num_heads": 16,
             "extra_per_block_abs_pos_emb": False, "rope_h_extrapolation_ratio": 4.0,
             "rope_w_extrapolation_ratio": 4.0, "rope_t_extrapolation_ratio": 1.0, "extra_h_extrapolation_ratio": 1.0,
             "extra_w_extrapolation_ratio": 1.0, "extra_t_extrapolation_ratio": 1.0,
             "rope_enable_fps_modulation": False}
_HUNYUAN = {"image_model": "hunyuan_video", "in_channels": 16, "patch_size": [1, 2, 2], "out_channels": 16,
            "vec_in_dim": 768, "axes_dim": [16, 56, 56], "meanflow": False, "context_in_dim": 4096,
            "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 20, "depth_single_blocks": 40,
            "theta": 256, "qkv_bias": True, "byt5": False, "guidance_embed": True, "use_cond_type_embedding": False,
            "vision_in_dim": None, "meanflow_sum": False}
_HUNYUAN_IMAGE = {**_HUNYUAN, "in_channels": 64, "out_channels": 64, "patch_size": [1, 1], "vec_in_dim": None,
                  "axes_dim": [64, 64], "context_in_dim": 3584, "hidden_size": 3584, "num_heads": 28, "byt5": True,
                  "guidance_embed": False}
_HUNYUAN_15 = {**_HUNYUAN, "in_channels": 65, "out_channels": 32, "patch_size": [1, 1, 1], "vec_in_dim": None,
               "context_in_dim": 3584, "hidden_size": 2048, "num_heads": 16, "depth": 54, "depth_single_blocks": 0,
               "byt5": True, "guidance_embed": False, "use_cond_type_embedding": True, "vision_in_dim": 1152,
               "meanflow_sum": True}
_KANDINSKY = {"image_model": "kandinsky5", "model_dim": 1792, "axes_dims": (16, 24, 24), "time_dim": 512,
              "ff_dim": 7168, "visual_embed_dim": 132, "num_text_blocks": 2, "num_visual_blocks": 32}
# Wan 2.1 14B (text- and image-to-video) and Wan 2.2 5B (text-image-to-video), as ComfyUI's detection reads them.
_WAN = {"image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "in_dim": 16, "dim": 5120,
        "ffn_dim": 13824, "freq_dim": 256, "text_dim": 4096, "out_dim": 16, "num_heads": 40, "num_layers": 40}
_LTX = {"image_model": "ltxv", "num_layers": 28, "attention_head_dim": 64, "cross_attention_dim": 2048,
        "use_keyframes_abs_pos_embedding": False}

# Families with a tiny model of their own (comfy_harness.tiny_dit), which the exact promises are tested on.
TINY_DITS = {"Flux": "flux", "FluxSchnell": "flux_schnell", "Flux2": "flux2", "Chroma": "chroma",
             "QwenImage": "qwen_image", "Krea2": "krea2", "MageFlow": "mage_flow"}
# Flux's variants: the tiny FLUX.1 with each variant's own keys.
FLUX_VARIANTS = {
    "FluxInpaint": {"in_channels": 96},
    "LongCatImage": {"guidance_embed": False, "vec_in_dim": None, "context_in_dim": 3584, "txt_ids_dims": [1, 2]},
}
DIT_CONFIGS: dict[str, dict[str, Any]] = {
    "ChromaRadiance": {"image_model": "chroma_radiance", "axes_dim": [16, 56, 56], "num_heads": 24, "mlp_ratio": 4.0,
                       "theta": 10000, "out_channels": 3, "qkv_bias": True, "txt_ids_dims": [], "in_channels": 3,
                       "hidden_size": 3072, "context_in_dim": 4096, "patch_size": 16, "vec_in_dim": None, "depth": 19,
                       "depth_single_blocks": 38, "in_dim": 64, "out_dim": 3072, "hidden_dim": 5120, "n_layers": 5,
                       "nerf_hidden_size": 64, "nerf_mlp_ratio": 4, "nerf_depth": 4, "nerf_max_freqs": 8,
                       "nerf_tile_size": 512, "nerf_final_head_type": "conv", "nerf_embedder_dtype": "float32",
                       "use_x0": True, "use_sequential_txt_ids": False},
    # The tiny Z-Image is narrower than ComfyUI's ZImage config names (dim 3840): the released size here.
    "ZImage": {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 3840, "cap_feat_dim": 2560,
               "n_layers": 30, "n_heads": 30, "n_kv_heads": 30, "qk_norm": True, "axes_dims": [32, 48, 48],
               "axes_lens": [1536, 512, 512], "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0,
               "z_image_modulation": True, "time_scale": 1000.0, "pad_tokens_multiple": 32},
    "Lumina2": {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 2304, "cap_feat_dim": 2304,
                "n_layers": 26, "n_heads": 24, "n_kv_heads": 8, "qk_norm": True, "axes_dims": [32, 32, 32],
                "axes_lens": [300, 512, 512], "ffn_dim_multiplier": 4.0},
    "SD3": _SD3,
    "AuraFlow": {"max_seq": 4096, "cond_seq_dim": 2048, "n_double_layers": 4, "n_layers": 36},
    "PixArtAlpha": {"num_heads": 16, "patch_size": 2, "hidden_size": 1152, "in_channels": 4, "depth": 28,
                    "model_max_length": 120, "input_size": 128, "pe_interpolation": 2, "image_model": "pixart_alpha",
                    "micro_condition": True},
    "PixArtSigma": {"num_heads": 16, "patch_size": 2, "hidden_size": 1152, "in_channels": 4, "depth": 28,
                    "model_max_length": 300, "input_size": 128, "pe_interpolation": 2, "image_model": "pixart_sigma",
                    "micro_condition": False},
    "HunyuanDiT": {"image_model": "hydit", "depth": 40, "hidden_size": 1408, "mlp_ratio": 4.3637},
    "HunyuanDiT1": {"image_model": "hydit1", "depth": 40, "hidden_size": 1408, "mlp_ratio": 4.3637, "size_cond": True,
                    "use_style_cond": True},
    "GenmoMochi": {"image_model": "mochi_preview", "depth": 48, "patch_size": 2, "num_heads": 24,
                   "hidden_size_x": 3072, "hidden_size_y": 1536, "mlp_ratio_x": 4.0, "mlp_ratio_y": 4.0,
                   "learn_sigma": False, "in_channels": 12, "qk_norm": True, "qkv_bias": False, "out_bias": True,
                   "attn_drop": 0.0, "patch_embed_bias": True, "posenc_preserve_area": True,
                   "timestep_mlp_bias": True, "attend_to_padding": False, "timestep_scale": 1000.0, "use_t5": True,
                   "t5_feat_dim": 4096, "t5_token_length": 256, "rope_theta": 10000.0},
    "CogVideoX_T2V": _COG,
    "CogVideoX_I2V": {**_COG, "in_channels": 32, "use_learned_positional_embeddings": True,
                      "use_rotary_positional_embeddings": False},
    "CogVideoX_Inpaint": {**_COG, "in_channels": 48},
    "Stable_Cascade_C": {"stable_cascade_stage": "c", "c_cond": 2048},
    "Stable_Cascade_B": {"stable_cascade_stage": "b", "c_hidden": [320, 640, 1280, 1280], "nhead": [-1, -1, 20, 20],
                         "blocks": [[2, 6, 28, 6], [6, 28, 6, 2]], "block_repeat": [[1, 1, 1, 1], [3, 3, 2, 2]]},
    "LTXV": _LTX,
    "WAN21_T2V": _WAN,
    "WAN21_I2V": {**_WAN, "model_type": "i2v", "in_dim": 36},
    "WAN21_FunControl2V": {**_WAN, "model_type": "i2v", "in_dim": 48},
    "WAN22_T2V": {**_WAN, "in_dim": 48, "out_dim": 48, "dim": 3072, "ffn_dim": 14336, "num_heads": 24,
                  "num_layers": 30},
    "LTXAV": {**_LTX, "image_model": "ltxav", "num_layers": 48, "attention_head_dim": 128,
              "cross_attention_dim": 4096},
    "MiniMaxH3": {"image_model": "minimax_h3", "num_layers": 50, "token_refiner_num_layers": 2, "hidden_size": 5376,
                  "latents_dim": 24, "audio_latents_dim": 32, "attention_head_dim": 128, "num_attention_heads": 56,
                  "ffn_hidden_size": 14336, "text_dim": 5120, "timestep_input_dim": 256,
                  "time_embed_hidden_size": 5376, "time_embed_dim": 2688, "rope_inv_freq_len": 16},
    "HunyuanVideo": _HUNYUAN,
    "HunyuanVideoI2V": {**_HUNYUAN, "in_channels": 33},
    "HunyuanVideoSkyreelsI2V": {**_HUNYUAN, "in_channels": 32, "guidance_embed": False},
    "HunyuanImage21": _HUNYUAN_IMAGE,
    "HunyuanImage21Refiner": {**_HUNYUAN, "in_channels": 128, "out_channels": 64, "patch_size": [1, 1, 1],
                              "vec_in_dim": None, "context_in_dim": 3584, "hidden_size": 3328, "num_heads": 26,
                              "guidance_embed": True, "meanflow": True},
    "HunyuanVideo15": _HUNYUAN_15,
    "HunyuanVideo15_SR_Distilled": {**_HUNYUAN_15, "in_channels": 98, "meanflow": True},
    "Kandinsky5": _KANDINSKY,
    "Kandinsky5Image": {**_KANDINSKY, "model_dim": 2560, "axes_dims": (32, 48, 48),
                        "rope_scale_factor": (1.0, 1.0, 1.0), "ff_dim": 10240, "visual_embed_dim": 64,
                        "num_visual_blocks": 50},
    "CosmosT2V": _COSMOS,
    "CosmosI2V": {**_COSMOS, "in_channels": 17},
    "CosmosT2IPredict2": _PREDICT2,
    "CosmosI2VPredict2": {**_PREDICT2, "in_channels": 17, "rope_h_extrapolation_ratio": 3.0,
                          "rope_w_extrapolation_ratio": 3.0},
    "Anima": {**_PREDICT2, "image_model": "anima"},
    "PixelDiTT2I": {"image_model": "pixeldit_t2i"},
    "PiD": {"image_model": "pid", "lq_hidden_dim": 512, "lq_interval": 2, "lq_latent_channels": 16,
            "latent_spatial_down_factor": 8},
    "ZImagePixelSpace": {"image_model": "zimage_pixel", "patch_size": 16, "in_channels": 3, "dim": 3840,
                         "cap_feat_dim": 2560, "n_layers": 30, "qk_norm": True, "n_heads": 30, "n_kv_heads": 30,
                         "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512], "rope_theta": 256.0,
                         "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
                         "pad_tokens_multiple": 32, "decoder_in_channels": 768, "decoder_hidden_size": 3840,
                         "decoder_num_res_blocks": 4, "decoder_max_freqs": 8},
    "HiDream": {"image_model": "hidream", "attention_head_dim": 128, "axes_dims_rope": [64, 32, 32],
                "caption_channels": [4096, 4096], "max_resolution": [128, 128], "in_channels": 16,
                "llama_layers": [*range(32)] + [31] * 16, "num_attention_heads": 20, "num_routed_experts": 4,
                "num_activated_experts": 2, "num_layers": 16, "num_single_layers": 32, "out_channels": 16,
                "patch_size": 2, "text_emb_dim": 2048},
    "HiDreamO1": {"image_model": "hidream_o1"},
    "Lens": {"image_model": "lens", "in_channels": 128, "out_channels": 32, "num_layers": 48,
             "num_attention_heads": 24, "enc_hidden_dim": 2880, "multi_layer_encoder_feature": True,
             "selected_layer_index": (0, 1, 2, 3)},
    "Omnigen2": {"image_model": "omnigen2", "axes_dim_rope": [40, 40, 40], "axes_lens": [1024, 1664, 1664],
                 "ffn_dim_multiplier": None, "hidden_size": 2520, "in_channels": 16, "multiple_of": 256,
                 "norm_eps": 1e-05, "num_attention_heads": 21, "num_kv_heads": 7, "num_layers": 32,
                 "num_refiner_layers": 2, "out_channels": None, "patch_size": 2, "text_feat_dim": 2048,
                 "timestep_scale": 1000.0},
    "Boogu": {"image_model": "boogu", "hidden_size": 3360, "num_layers": 32, "num_double_stream_layers": 8,
              "num_refiner_layers": 2, "instruction_feat_dim": 4096},
    "JoyImage": {"image_model": "joyimage", "in_channels": 16, "hidden_size": 3072, "patch_size": [1, 2, 2],
                 "num_layers": 20, "num_attention_heads": 24, "text_dim": 4096},
    "Ideogram4": {"image_model": "ideogram4", "in_channels": 128, "num_layers": 34},
    "ErnieImage": {"image_model": "ernie"},
}

# Each UNet family: the tiny layout it extends (its own keys go on top).
UNET_BASES = {"SD15": "sd15", "SD15_instructpix2pix": "sd15", "LotusD": "sd2", "SD20": "sd2", "SD21UnclipL": "sd2",
              "SD21UnclipH": "sd2", "SD_X4Upscaler": "sd2", "SDXL": "sdxl", "SDXLRefiner": "sdxl", "SSD1B": "sdxl",
              "Segmind_Vega": "sdxl", "SDXL_instructpix2pix": "sdxl", "KOALA_700M": "sdxl", "KOALA_1B": "sdxl"}
# KOALA keeps one residual block a level; 0.3.64's Lotus config leaves the heads to detection.
_UNET_LAYOUT = {"LotusD": {"num_heads": -1, "num_head_channels": 64},
                "KOALA_700M": {"num_res_blocks": [1, 1, 1], "transformer_depth_output": [0, 0, 2, 2, 5, 5]},
                "KOALA_1B": {"num_res_blocks": [1, 1, 1], "transformer_depth_output": [0, 0, 2, 2, 6, 6]}}


# Families whose model takes its config through a parameter class: an older ComfyUI's has fewer fields.
_PARAMS = {"hunyuan_video": "comfy.ldm.hunyuan_video.model.HunyuanVideoParams",
           "chroma_radiance": "comfy.ldm.chroma_radiance.model.ChromaRadianceParams"}


def _accepted(config: dict[str, Any]) -> dict[str, Any]:
    """`config` less the keys this ComfyUI's parameter class for the model does not have."""
    import dataclasses
    import importlib

    if config.get("image_model") not in _PARAMS:
        return config
    module, _, name = _PARAMS[config["image_model"]].rpartition(".")
    fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    return {k: v for k, v in config.items() if k in fields or k == "image_model"}


def names() -> list[str]:
    """Every family this module builds."""
    return [*TINY_DITS, *FLUX_VARIANTS, *DIT_CONFIGS, *UNET_BASES]


def unet_config(name: str, config_class: type) -> dict[str, Any]:
    base = {"sd15": h.sd15_unet_config, "sd2": h.sd2_unet_config, "sdxl": h.sdxl_unet_config}[UNET_BASES[name]]()
    return {**base, **config_class.unet_config, **_UNET_LAYOUT.get(name, {})}


def _config(name: str) -> tuple[type, dict[str, Any]]:
    import comfy.supported_models
    import torch

    config_class = getattr(comfy.supported_models, name)
    if name in FLUX_VARIANTS:
        return config_class, {**tiny_dits.flux_config(), **FLUX_VARIANTS[name]}
    if name in UNET_BASES:
        return config_class, unet_config(name, config_class)
    return config_class, _accepted({k: getattr(torch, v) if k.endswith("_dtype") else v
                                    for k, v in DIT_CONFIGS[name].items()})


def family_model(name: str) -> Any:
    """A ModelPatcher of family `name` (ComfyUI's config class): its tiny model where it has one, else on the
    meta device."""
    import comfy.model_patcher
    import torch

    if name in TINY_DITS:
        return h.tiny_dit(TINY_DITS[name])[0].clone()
    config_class, config = _config(name)
    model = config_class(config).get_model({}, device=torch.device("meta"))
    return comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))


# Variants read by their base's text encoder, whose tiny layouts here run as they are: (ComfyUI's config class, its
# base's tiny family). Each is drawn through ComfyUI's sampler with what it adds left as ComfyUI fills it when absent
# (instruct-pix2pix's and FLUX.1 Fill's image channels, the x4 upscaler's low-resolution image, empty).
VARIANTS = {"SD15_instructpix2pix": "sd15", "SD_X4Upscaler": "sd2", "SDXL_instructpix2pix": "sdxl", "SSD1B": "sdxl",
            "Segmind_Vega": "sdxl", "KOALA_700M": "sdxl", "KOALA_1B": "sdxl", "FluxInpaint": "flux"}


def variant_model(name: str, seed: int = 7) -> tuple[Any, Any]:
    """(ModelPatcher, CLIP) of a served variant (VARIANTS) with random weights: its layout (inputs, blocks), a UNet's at
    the tiny UNets' width of 32 (ComfyUI then names it a custom model: its configs match the released widths only),
    and its base's tiny CLIP."""
    import comfy.model_patcher
    import torch

    config_class, config = _config(name)
    built = config_class(config)
    if name in UNET_BASES:
        built.unet_config.update(model_channels=32, **({} if UNET_BASES[name] == "sd15" else
                                                       {"num_heads": -1, "num_head_channels": h.TINY_HEAD_CHANNELS}))
    with h.executor_mode():
        model = h.init_weights(built.get_model({}), seed)
    base = VARIANTS[name]
    clip = tiny_dits.clip("flux") if base == "flux" else {"sd15": h.tiny_sd15, "sd2": h.tiny_sd2v,
                                                           "sdxl": h.tiny_sdxl}[base]()[1]
    return comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu")), clip
