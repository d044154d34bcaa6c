"""ComfyUI for the tests and benchmarks: set it up with the runner's own bootstrap, load this pack the
way ComfyUI does (one copy of its core per process), and build tiny random-weight models that run
through ComfyUI's own nodes.

Nothing here imports torch or ComfyUI at module import time, so the module is safe
to import in a plain CI venv; call `setup_comfy()` (or `start_comfy()`) first (the conftest fixtures do).
"""
from __future__ import annotations

import asyncio
import contextlib
import atexit
import functools
import importlib
import importlib.abc
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from typing import Any, Sequence

# The repository root, which holds the pack; abspath (not realpath) so a pack
# symlinked into ComfyUI/custom_nodes is still seen at its custom_nodes location.
PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PACK_ROOT not in sys.path:
    sys.path.append(PACK_ROOT)  # after ComfyUI's root, for scripts that import this harness

from infusion.cli import locate  # noqa: E402  (imports neither torch nor ComfyUI)

SEED = 1234
# Seconds after which a subprocess, server or socket counts as hung: no correct run comes near it (the slowest
# such call, a benchmark script's smoke run, takes minutes on a busy 2-core machine), so a slow machine never fails.
HANG = 3600
# Small everywhere: 64x64 px images -> 8x8 latents.
IMAGE_SIZE = 64
LATENT_SIZE = IMAGE_SIZE // 8

_state: dict[str, Any] = {}


# --------------------------------------------------------------------------- discovery

def find_comfyui(pack_root: str = PACK_ROOT) -> str | None:
    """ComfyUI root from $COMFYUI_PATH, else the ComfyUI that holds this pack in
    <ComfyUI>/custom_nodes/<pack>; None when neither is a ComfyUI tree (the runner's lookup)."""
    try:
        return locate.find_comfyui(pack_root)
    except locate.ComfyUINotFound:
        return None


def absent_reason() -> str:
    env = os.environ.get("COMFYUI_PATH")
    if env and not locate.is_comfyui_root(os.path.abspath(os.path.expanduser(env))):
        return f"real ComfyUI not found: COMFYUI_PATH={env} has no comfy/ and nodes.py"
    return "real ComfyUI not found: set COMFYUI_PATH=/path/to/ComfyUI or place this pack in ComfyUI/custom_nodes"


# --------------------------------------------------------------------------- setup

def setup_comfy(path: str | None = None, comfy_args: Sequence[str] = ("--cpu",)) -> str:
    """Make ComfyUI importable in this process (on the CPU unless `comfy_args`, ComfyUI's own options, say
    otherwise), with every ComfyUI folder (models/output/input/temp/user) redirected to a throwaway directory.
    Idempotent; returns the ComfyUI root."""
    if "comfy_root" in _state:
        return _state["comfy_root"]
    path = os.path.abspath(path or find_comfyui() or "")
    if not locate.is_comfyui_root(path):
        raise RuntimeError(absent_reason())

    from infusion.cli import runtime

    base = tempfile.mkdtemp(prefix="comfyui_infusion_tests_")
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    # The runner's bootstrap, every ComfyUI folder (models/output/input/temp/user) under `base`.
    runtime.configure([*comfy_args, "--base-directory", base], comfy_root=path)
    import torch

    # One intra-op thread: these models are tiny, and on a small shared machine torch's
    # spinning OpenMP workers made sampling up to 50x slower under load.
    torch.set_num_threads(int(os.environ.get("COMFYUI_TEST_THREADS", "1")))
    for sub in ("models/checkpoints", "models/loras", "models/embeddings", "output", "temp", "input", "user"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)

    _state["comfy_root"] = path
    _state["base_dir"] = base
    # Free cached models while ComfyUI's modules still exist: ModelPatcher.__del__ at
    # interpreter teardown otherwise prints "'NoneType' object has no attribute 'ON_DETACH'".
    atexit.register(release_models)
    return path


def start_comfy(comfy_args: list[str]) -> str:
    """ComfyUI as the runner starts it (its built-in nodes and this pack loaded), for scripts; returns its root."""
    from infusion.cli import runtime

    one_copy_of_core()
    return runtime.start(comfy_args)


def release_models() -> None:
    """Drop the session-cached models (and ComfyUI's loaded-model list)."""
    import gc
    for fn in (tiny_sd15, tiny_sd2v, tiny_sdxl, tiny_custom, tiny_vae, tiny_dit):
        fn.cache_clear()
    import comfy.model_management
    comfy.model_management.unload_all_models()
    gc.collect()


def base_dir() -> str:
    """The temporary ComfyUI base directory (models/, output/, input/, temp/, user/)."""
    return _state["base_dir"]


def models_dir() -> str:
    import folder_paths
    return folder_paths.models_dir


# --------------------------------------------------------------------------- pack loading

class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname}: {record.getMessage()}")


def pack_module_name(pack_path: str = PACK_ROOT) -> str:
    """The sys.modules key ComfyUI gives a directory pack (its path, '.' -> '_x_')."""
    return pack_path.replace(".", "_x_")


class _CoreAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """ComfyUI imports the pack's core as `<pack>.infusion...`, the tests, benchmarks and this package as
    `infusion...`: the first name is given the module of the second, so one process holds one copy of each
    (one InfusionConcept class, one set of keys)."""

    def __init__(self, pack_name: str):
        self.prefix = pack_name + ".infusion"

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname == self.prefix or fullname.startswith(self.prefix + "."):
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: Any) -> Any:
        return importlib.import_module("infusion" + spec.name[len(self.prefix):])

    def exec_module(self, module: Any) -> None:
        pass  # imported already, under its own name


def one_copy_of_core(pack_path: str = PACK_ROOT) -> None:
    """Before ComfyUI loads the pack at `pack_path`: its core is the `infusion` package on sys.path."""
    name = pack_module_name(pack_path)
    if not any(isinstance(f, _CoreAlias) and f.prefix == name + ".infusion" for f in sys.meta_path):
        sys.meta_path.insert(0, _CoreAlias(name))


def load_pack(pack_path: str = PACK_ROOT) -> Any:
    """Load a pack exactly as ComfyUI's startup does and return its module.
    ComfyUI only logs import failures, so the log is captured and raised."""
    cache = _state.setdefault("packs", {})
    if pack_path in cache:
        return cache[pack_path]
    setup_comfy()
    import nodes

    one_copy_of_core(pack_path)
    capture = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    if old_level > logging.WARNING:  # ComfyUI reports import failures at WARNING
        root.setLevel(logging.WARNING)
    try:
        ok = asyncio.run(nodes.load_custom_node(pack_path))
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
    if not ok:
        log = "\n".join(capture.lines) or "(nothing logged)"
        raise RuntimeError(f"ComfyUI failed to load the custom node pack {pack_path}:\n{log}")
    module = sys.modules[pack_module_name(pack_path)]
    cache[pack_path] = module
    return module


def pack_submodule(pack: Any, name: str) -> Any:
    """Import `<pack>.<name>` under ComfyUI's module name for the pack (top-level
    `nodes` is ComfyUI's, so the pack's `nodes/` is only reachable this way)."""
    import importlib
    return importlib.import_module(f"{pack.__name__}.{name}")


# --------------------------------------------------------------------------- weights

def _tiny_models() -> Any:
    """The pack's tiny-model builders (infusion_dev/tiny_models.py; imports torch, so not at module level)."""
    from . import tiny_models
    return tiny_models


def init_weights(module: Any, seed: int = SEED) -> Any:
    """Deterministic random init. ComfyUI allocates weights with torch.empty, so
    every parameter must be written: matrices/convs/embeddings ~ N(0, 0.02),
    norm weights 1, biases 0."""
    return _tiny_models().init_weights(module, seed)


def executor_mode() -> Any:
    """The context ComfyUI's executor runs every node in (execution.py wraps the whole
    prompt in torch.inference_mode()): tensors made inside are inference tensors."""
    import torch
    return torch.inference_mode()


# --------------------------------------------------------------------------- UNet configs

def _unet_base(torch: Any) -> dict:
    # The keys ComfyUI's model_detection produces for a UNet checkpoint.
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "in_channels": 4,
        "use_spatial_transformer": True, "legacy": False, "dtype": torch.float32,
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }


def sd15_unet_config() -> dict:
    """Real SD1.5 layout (16 cross-attn blocks) at 1/10 width: 32/64/128/128."""
    import torch
    return {**_unet_base(torch), "adm_in_channels": None, "model_channels": 32,
            "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
            "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
            "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
            "use_linear_in_transformer": False, "context_dim": 768}


def sd2_unet_config() -> dict:
    """Real SD2.x layout (16 cross-attn blocks), linear proj, context 1024."""
    return {**sd15_unet_config(), "use_linear_in_transformer": True, "context_dim": 1024}


def sdxl_unet_config() -> dict:
    """Real SDXL layout (70 cross-attn blocks) at widths 32/64/128."""
    import torch
    return {**_unet_base(torch), "num_classes": "sequential", "adm_in_channels": 2816, "model_channels": 32,
            "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
            "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
            "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
            "use_linear_in_transformer": True, "context_dim": 2048}


# SD2/SDXL use num_head_channels=64 (0 heads at width 32): use 8-dim heads instead.
# SD1.5 keeps its real num_heads=8 (head dim 4/8/16 at these widths).
TINY_HEAD_CHANNELS = 8

# Tiny text-encoder overrides fed through ComfyUI's own `<clip>_model_config` model
# option. Widths stay real (they are the context dims); 3 layers because SD2/SDXL
# (and CLIPSetLastLayer -2) read the penultimate layer and ComfyUI asserts
# abs(layer_idx) < num_layers.
TINY_CLIP_L = {"num_hidden_layers": 3, "intermediate_size": 256, "num_attention_heads": 4}
TINY_CLIP_H = {"num_hidden_layers": 3, "intermediate_size": 256, "num_attention_heads": 4}
TINY_CLIP_G = {"num_hidden_layers": 3, "intermediate_size": 256, "num_attention_heads": 4}


def _patcher(model: Any) -> Any:
    import comfy.model_patcher
    import torch
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, cpu, cpu)


def model_from_file(name: str, new_model: Any, seed: int) -> Any:
    """A random-weight model saved to <tmp models>/diffusion_models/<name>.safetensors and loaded from
    there, so ComfyUI can load it again as it reloads a user's checkpoint (Train LoRA's deep copy)."""
    tiny = _tiny_models()
    path = os.path.join(models_dir(), "diffusion_models", f"{name}.safetensors")
    tiny.save_unet_file(init_weights(new_model(), seed), path)
    return tiny.load_unet_file(path, new_model)


def _clip(tokenizer: Any, clip_cls: Any, model_options: dict, seed: int) -> Any:
    import comfy.sd
    from comfy.supported_models_base import ClipTarget
    clip = comfy.sd.CLIP(ClipTarget(tokenizer, clip_cls), model_options=model_options)
    init_weights(clip.cond_stage_model, seed)
    return clip


def _built_in_comfy(fn: Any) -> Any:
    """Cache per session, and build inside executor_mode(): a real ComfyUI loader runs in
    the executor, so its weights are inference tensors; the pack must cope with that."""
    @functools.cache
    @functools.wraps(fn)
    def wrapper() -> Any:
        setup_comfy()
        with executor_mode():
            return fn()
    return wrapper


def unshared(builder: Any) -> Any:
    """A new model from a session-cached builder (tiny_sd15, ...), sharing no weights with the session's: for
    tests that leave ComfyUI's state in the weights (a LoRA patched in and taken out again)."""
    return builder.__wrapped__()


# --------------------------------------------------------------------------- tiny models

@_built_in_comfy
def tiny_sd15() -> tuple[Any, Any]:
    """(ModelPatcher, comfy.sd.CLIP): SD1.5 eps model, 16 cross-attn blocks, context 768.
    Session-cached: clone before patching (the fixtures hand out clones)."""
    import comfy.sd1_clip
    import comfy.supported_models

    model = model_from_file("tiny_sd15", lambda: comfy.supported_models.SD15(sd15_unet_config()).get_model({}), SEED)
    clip = _clip(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel,
                 {"clip_l_model_config": dict(TINY_CLIP_L)}, SEED + 1)
    return model, clip


@_built_in_comfy
def tiny_sd2v() -> tuple[Any, Any]:
    """(ModelPatcher, CLIP): SD2.x v-prediction model, 16 cross-attn blocks, context 1024."""
    import comfy.model_base
    import comfy.supported_models
    import comfy.text_encoders.sd2_clip
    import torch

    def new_model():
        config = comfy.supported_models.SD20(sd2_unet_config())
        config.unet_config.update(num_heads=-1, num_head_channels=TINY_HEAD_CHANNELS)
        # ComfyUI decides SD2 eps vs v from the checkpoint (SD20.model_type: std of this
        # norm bias > 0.09 means v); feed it such a probe so its own logic picks V_PREDICTION.
        probe = {"output_blocks.11.1.transformer_blocks.0.norm1.bias": torch.tensor([-1.0, 1.0])}
        model = config.get_model(probe)
        if model.model_type != comfy.model_base.ModelType.V_PREDICTION:
            raise RuntimeError(f"ComfyUI no longer detects v-prediction from the SD2 probe: {model.model_type}")
        return model

    clip = _clip(comfy.text_encoders.sd2_clip.SD2Tokenizer, comfy.text_encoders.sd2_clip.SD2ClipModel,
                 {"clip_h_model_config": dict(TINY_CLIP_H)}, SEED + 3)
    return model_from_file("tiny_sd2v", new_model, SEED + 2), clip


@_built_in_comfy
def tiny_sdxl() -> tuple[Any, Any]:
    """(ModelPatcher, CLIP): SDXL eps model, 70 cross-attn blocks, context 2048, adm 2816;
    the CLIP is clip_l(768)+clip_g(1280) and returns pooled_output (1280)."""
    import comfy.sdxl_clip
    import comfy.supported_models

    def new_model():
        config = comfy.supported_models.SDXL(sdxl_unet_config())
        config.unet_config.update(num_heads=-1, num_head_channels=TINY_HEAD_CHANNELS)
        return config.get_model({})

    clip = _clip(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel,
                 {"clip_l_model_config": dict(TINY_CLIP_L), "clip_g_model_config": dict(TINY_CLIP_G)}, SEED + 5)
    return model_from_file("tiny_sdxl", new_model, SEED + 4), clip


def custom_unet_config() -> dict:
    """A UNet of no ComfyUI family: two levels, one transformer each, 7 cross-attention layers."""
    import torch
    return {**_unet_base(torch), "adm_in_channels": None, "model_channels": 32,
            "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [1, 1],
            "transformer_depth_middle": 1, "transformer_depth_output": [1, 1, 1, 1],
            "use_linear_in_transformer": True, "context_dim": 768}


@_built_in_comfy
def tiny_custom() -> tuple[Any, Any]:
    """(ModelPatcher, CLIP): a custom-layout eps UNet in ComfyUI's SD15 model class, with SD1.5's CLIP."""
    import comfy.supported_models

    model = model_from_file("tiny_custom", lambda: comfy.supported_models.SD15(custom_unet_config()).get_model({}), SEED + 8)
    return model, tiny_sd15()[1]


# The model files an example workflow names, by loader: (models/ folder, which widgets hold file names).
LOADER_FILES = {"CheckpointLoaderSimple": ("checkpoints", (0,)), "LoadInfusion": ("infusion", (0,)),
                "CLIPVisionLoader": ("clip_vision", (0,)), "UNETLoader": ("diffusion_models", (0,)),
                "DualCLIPLoader": ("text_encoders", (0, 1)), "CLIPLoader": ("text_encoders", (0,)),
                "VAELoader": ("vae", (0,))}


def model_files(workflow: dict) -> list[tuple[str, str]]:
    """(models/ folder, file name) of every model file a UI workflow's loaders name."""
    return [(LOADER_FILES[n["type"]][0], n["widgets_values"][i]) for n in workflow["nodes"] if n["type"] in LOADER_FILES
            for i in LOADER_FILES[n["type"]][1]]


INPUT_FOLDER_NODES = ("LoadImageTextDataSetFromFolder",)  # their folder list: the input directory's subfolders


def input_folders(workflow: dict) -> list[str]:
    """The input-directory subfolders a UI workflow's dataset loaders name (their lists offer only those that
    exist, as a user's ComfyUI that has the photos does)."""
    return [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in INPUT_FOLDER_NODES]


def comfyui_has(path: str, text: str = "") -> bool:
    """Whether this ComfyUI's file `path` (under its root) exists and holds `text`: read off the tree, so a test
    can choose its cases at collection, before ComfyUI is imported."""
    full = os.path.join(find_comfyui() or "", path)
    if not os.path.isfile(full):
        return False
    with open(full) as f:
        return text in f.read()


def dit_families() -> list[str]:
    """The tiny DiT families this ComfyUI has and the pack reaches there (read off its tree: Z-Image, Kandinsky 5,
    Ideogram 4 and CogVideoX came after 0.3.64, and 0.3.64's HunyuanImage puts the image before the text)."""
    from .tiny_dits import FAMILIES
    has = {"z_image": comfyui_has("comfy/text_encoders/z_image.py"),
           "flux2": comfyui_has("comfy/text_encoders/flux.py", "class KleinTokenizer"),
           "krea2": comfyui_has("comfy/text_encoders/krea2.py"),
           "mage_flow": comfyui_has("comfy/text_encoders/mage_flow.py"),
           "hunyuan_image": comfyui_has("comfy/ldm/hunyuan_video/model.py", '"block_type"'),
           "hunyuan_video15": comfyui_has("comfy/ldm/hunyuan_video/model.py", "cond_type_embedding"),
           "kandinsky5": comfyui_has("comfy/ldm/kandinsky5/model.py"),
           "ideogram4": comfyui_has("comfy/ldm/ideogram4/model.py"),
           "cogvideox": comfyui_has("comfy/ldm/cogvideo/model.py")}
    return [f for f in FAMILIES if has.get(f, True)]


@functools.cache
def tiny_dit(family: str) -> tuple[Any, Any]:
    """(ModelPatcher, CLIP) of a tiny DiT family (infusion_dev/tiny_dits.py), built as in the executor."""
    setup_comfy()
    from . import tiny_dits
    with executor_mode():
        return tiny_dits.model_and_clip(family, os.path.join(models_dir(), "diffusion_models"))


def dit_latent(model: Any, batch: int = 1, pixels: int = 64) -> dict:
    """An empty LATENT of the model's latent format for an image of pixels x pixels, as the pack's previews make
    it (infusion.compat.latent_shape: FLUX.2's latents are 1/16 of the size, LTX-Video's 1/32, the others 1/8;
    one frame for a video format)."""
    import torch
    from infusion.compat import latent_shape
    return {"samples": torch.zeros(batch, *latent_shape(model.get_model_object("latent_format"), pixels, pixels)[1:])}


# SD's KL autoencoder (8x down via 4 levels, 4 latent channels) at ch 32 instead of 128.
TINY_VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                     "ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}


@_built_in_comfy
def tiny_vae() -> Any:
    """comfy.sd.VAE with SD's AutoencoderKL structure at tiny width (random weights)."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    params = {"ddconfig": dict(TINY_VAE_DDCONFIG), "embed_dim": 4}
    # Fill a throwaway instance for the state dict; comfy.sd.VAE builds and loads its own.
    sd = init_weights(AutoencoderKL(**params), SEED + 6).state_dict()
    return comfy.sd.VAE(sd=sd, config={"params": params})


# --------------------------------------------------------------------------- checkpoint

def sd15_checkpoint_unet_config() -> dict:
    """Smallest UNet ComfyUI's model_detection still calls SD1.5 (see infusion_dev/tiny_models.py)."""
    return _tiny_models().sd15_checkpoint_unet_config()


def write_tiny_sd15_checkpoint(path: str, seed: int = SEED + 7) -> str:
    """Write a random-weight .safetensors that comfy.sd.load_checkpoint_guess_config detects
    as SD15 and loads with no missing keys (built by infusion_dev/tiny_models.py, ~310 MB, ~1.5 s)."""
    setup_comfy()
    return _tiny_models().write_tiny_sd15_checkpoint(path, seed)


@functools.cache
def tiny_sd15_checkpoint() -> str:
    """Session-cached checkpoint in the temporary models/checkpoints folder, so
    CheckpointLoaderSimple finds it by name (CHECKPOINT_NAME)."""
    setup_comfy()
    return write_tiny_sd15_checkpoint(os.path.join(models_dir(), "checkpoints", CHECKPOINT_NAME))


CHECKPOINT_NAME = "tiny_sd15.safetensors"


# --------------------------------------------------------------------------- node helpers
# Each runs in executor_mode(), as ComfyUI's executor would run the node.

def run_node(node: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a node the way the executor does (inside torch.inference_mode): a V3 node
    class -> `execute(...)` (its NodeOutput; widgets not given take their defaults, as a new
    node in the UI has them), a V1 bound method/function -> its tuple."""
    from .comfy_versions import widget_defaults
    with executor_mode():
        if isinstance(node, type) and hasattr(node, "execute"):
            return node.execute(*args, **{**widget_defaults(node, len(args)), **kwargs})
        return node(*args, **kwargs)


def train_node(pack: Any, unique_id: str = "1", prompt: dict | None = None) -> Any:
    """Train Infusion Concept's class, prepared as the executor prepares a node (its hidden inputs set)."""
    from .comfy_versions import node_class
    return node_class(pack_submodule(pack, "nodes.train").TrainInfusion, unique_id, prompt)


def encode(clip: Any, text: str) -> list:
    """CONDITIONING from ComfyUI's own CLIPTextEncode node."""
    import nodes
    with executor_mode():
        return nodes.CLIPTextEncode().encode(clip, text)[0]


def empty_latent(batch: int = 1, size: int = IMAGE_SIZE) -> dict:
    """LATENT from EmptyLatentImage: [batch, 4, size/8, size/8] zeros."""
    import nodes
    with executor_mode():
        return nodes.EmptyLatentImage().generate(size, size, batch)[0]


def sample(model: Any, positive: list, negative: list, latent: dict | None = None, *, seed: int = 0,
           steps: int = 2, cfg: float = 2.0, sampler_name: str = "euler", scheduler: str = "normal",
           denoise: float = 1.0) -> dict:
    """One KSampler run through nodes.common_ksampler; returns the LATENT dict."""
    import nodes
    latent = latent if latent is not None else empty_latent()
    with executor_mode():
        return nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                     latent, denoise=denoise)[0]


def first_step(model: Any, positive: list, negative: list, latent: dict | None = None, *, seed: int = 0,
               scheduler: str = "normal") -> tuple[Any, Any]:
    """cond and uncond predictions of the first sampler step (batched in one model call, as ComfyUI does;
    the same input x for every model)."""
    seen = {}

    def grab(args):
        seen.setdefault("cond", args["cond_denoised"].clone())
        seen.setdefault("uncond", args["uncond_denoised"].clone())
        return args["denoised"]

    m = model.clone()
    m.set_model_sampler_post_cfg_function(grab, disable_cfg1_optimization=True)
    sample(m, positive, negative, latent, steps=1, seed=seed, scheduler=scheduler)
    return seen["cond"], seen["uncond"]


def decode(vae: Any, latent: dict) -> Any:
    """IMAGE [B, H, W, 3] in [0, 1] from ComfyUI's own VAEDecode node."""
    import nodes
    with executor_mode():
        return nodes.VAEDecode().decode(vae, latent)[0]


def vae_encode(vae: Any, image: Any) -> dict:
    """LATENT from ComfyUI's own VAEEncode node (image [B, H, W, 3] in [0, 1])."""
    import nodes
    with executor_mode():
        return nodes.VAEEncode().encode(vae, image)[0]


def record_attn2_blocks(model: Any, positive: list, negative: list, **sample_kwargs: Any) -> list[tuple]:
    """Sample one step on a clone with an attn2_patch that records the cross-attention
    identities ComfyUI reports, (block name, block id, block_index), in first-call order."""
    seen: list[tuple] = []

    def patch(n, context, value, extra_options):
        key = (extra_options["block"][0], extra_options["block"][1], extra_options["block_index"])
        if key not in seen:
            seen.append(key)
        return n, context, value

    m = model.clone()
    m.set_model_attn2_patch(patch)
    sample(m, positive, negative, **{"steps": 1, **sample_kwargs})
    return seen


# --------------------------------------------------------------------------- a real server

def _scale_rows(linear: Any, rows: slice, a: float) -> None:
    linear.weight[rows] *= a
    if linear.bias is not None:
        linear.bias[rows] *= a


def rescale_values(diffusion_model: Any, factor: Any) -> dict[str, float]:
    """In place, in every attention layer a concept reaches: the value projection times a, the projection that
    reads the attention output divided by a (`factor()` draws each a). What the model computes is unchanged
    (to float rounding); its values at the word are a times larger. Returns each layer's a by its key in a
    concept file. Call under torch.inference_mode() on a model loaded in the executor."""
    drawn = {}
    if hasattr(diffusion_model, "double_blocks"):  # Flux: one joint attention per block, both streams
        for kind, blocks in (("double", diffusion_model.double_blocks), ("single", diffusion_model.single_blocks)):
            for i, block in enumerate(blocks):
                a = drawn[f"{kind}.{i}"] = factor()
                values = slice(2 * block.hidden_size, 3 * block.hidden_size)
                if kind == "single":
                    _scale_rows(block.linear1, values, a)
                    block.linear2.weight[:, :block.hidden_size] /= a
                    continue
                for attn in (block.img_attn, block.txt_attn):
                    _scale_rows(attn.qkv, values, a)
                    attn.proj.weight /= a
    elif hasattr(diffusion_model, "transformer_blocks"):  # Qwen-Image: image and text projections apart
        for i, block in enumerate(diffusion_model.transformer_blocks):
            a = drawn[f"double.{i}"] = factor()
            _scale_rows(block.attn.to_v, slice(None), a)
            _scale_rows(block.attn.add_v_proj, slice(None), a)
            block.attn.to_out[0].weight /= a
            block.attn.to_add_out.weight /= a
    else:  # a UNet's cross-attention
        from infusion.families.unet import cross_attention_modules
        for layer, attn2 in sorted(cross_attention_modules(diffusion_model).items()):
            a = drawn[layer.key] = factor()
            attn2.to_v.weight *= a
            attn2.to_out[0].weight /= a
    return drawn


@contextlib.contextmanager
def rescaled_values(model: Any, factor: Any) -> Any:
    """`model` with rescale_values applied in place (its weights may be shared with other users of the model),
    restored bit for bit afterwards; yields each layer's factor."""
    import torch
    diffusion_model = model.get_model_object("diffusion_model")
    saved = {name: p.detach().clone() for name, p in diffusion_model.named_parameters()}
    try:
        with torch.inference_mode():
            yield rescale_values(diffusion_model, factor)
    finally:
        with torch.inference_mode():
            for name, p in diffusion_model.named_parameters():
                p.copy_(saved[name])


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """ComfyUI's main.py as a user starts it (this Python, --cpu), on 127.0.0.1, with `base` as its base
    directory (custom_nodes, models, input, output, user) and this pack linked into base/custom_nodes;
    `extra_args` are given to main.py after those."""

    PACK_DIR_NAME = "ComfyUI-Infusion"

    def __init__(self, comfy_root: str, base: str, extra_args: tuple[str, ...] = ()):
        self.comfy_root, self.base, self.extra_args = comfy_root, base, extra_args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = os.path.join(base, "server.log")
        self.process: Any = None

    def __enter__(self) -> "Server":
        import subprocess
        os.makedirs(os.path.join(self.base, "custom_nodes"), exist_ok=True)
        os.makedirs(os.path.join(self.base, "user"), exist_ok=True)
        link = os.path.join(self.base, "custom_nodes", self.PACK_DIR_NAME)
        if not os.path.exists(link):
            os.symlink(PACK_ROOT, link)
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                 "--base-directory", self.base, "--disable-auto-launch", *self.extra_args],
                cwd=self.comfy_root, stdout=log, stderr=subprocess.STDOUT)
        try:
            self.wait_for("object_info/TrainInfusion")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        import subprocess
        self.process.terminate()
        try:
            self.process.wait(timeout=HANG)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def wait_for(self, route: str, timeout: float = HANG) -> None:
        import time
        import urllib.request
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(self.url + route, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"ComfyUI did not serve {self.url + route}:\n{self.log()[-4000:]}")

    def get(self, route: str) -> Any:
        import json
        import urllib.request
        with urllib.request.urlopen(self.url + route, timeout=HANG) as response:
            return json.load(response)

    def history(self, prompt_id: str) -> dict:
        """A finished prompt's history entry. The server reports success over the websocket before it files
        the history (ComfyUI 0.3.64), so it is asked until the entry is there."""
        import time
        deadline = time.monotonic() + HANG
        while prompt_id not in (entry := self.get(f"history/{prompt_id}")):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no history for prompt {prompt_id}")
            time.sleep(0.1)
        return entry[prompt_id]

    def post(self, route: str, body: Any = None) -> Any:
        import json
        import urllib.request
        request = urllib.request.Request(self.url + route, data=json.dumps(body or {}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=HANG) as response:
            text = response.read()
        return json.loads(text) if text.strip() else None
