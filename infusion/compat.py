"""Every place where the pack depends on a ComfyUI version, and nowhere else (the development tools keep
theirs apart).

Tested: ComfyUI 0.3.64 and 0.33.0 (real, in CI). Reviewed by reading: 0.38.x (Comfy-Org/ComfyUI up to 0.38.1).
Each function says which versions each branch serves. ComfyUI is imported inside functions only.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterable, Iterator


def prompt_executor(server: Any) -> Any:
    """An execution.PromptExecutor with the classic cache, which keeps every output of a prompt
    until the next one (the runner reads them back afterwards, and reuses a loaded checkpoint).

    0.3.64: PromptExecutor(server, cache_type, cache_size). 0.38: (server, cache_type, cache_args)
    with cache_args subscripted on every run ("ram", "ram_inactive") whatever the cache type: main.py
    passes zeros with --cache-classic, so do we.
    """
    import execution

    options: dict[str, Any] = {"cache_type": execution.CacheType.CLASSIC}
    if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:
        options["cache_args"] = {"lru": 0, "ram": 0, "ram_inactive": 0}
    return execution.PromptExecutor(server, **options)


async def cached_outputs(executor: Any, node_ids: Iterable[str]) -> dict[str, list]:
    """The output slots of each node the executor holds in its output cache.

    0.3.64: caches.outputs.get(id) returns the list of slots. 0.38: it is a coroutine returning a
    CacheEntry(ui, outputs) (a NamedTuple: indexing it would silently give `ui`).
    """
    found = {}
    for node_id in node_ids:
        value = executor.caches.outputs.get(node_id)
        if inspect.isawaitable(value):
            value = await value
        if value is not None:
            found[node_id] = getattr(value, "outputs", value)
    return found


# Built-in node files that fail to import when ComfyUI runs without its server: 0.38's
# nodes_replacements.py registers node replacements on PromptServer.instance in on_load.
# It defines no nodes, so a headless run loses nothing.
HEADLESS_IMPORT_FAILURES = ("nodes_replacements.py",)


def classic_patcher(model: Any) -> Any:
    """A ModelPatcher with ComfyUI's classic weight loading, for training (backpropagation through
    the frozen model).

    0.38 on NVIDIA (and recent ROCm) loads models through ModelPatcherDynamic ("dynamic VRAM"):
    weights stay in RAM and the ops serve them as views of a shared GPU buffer that is reused from
    op to op and unpinned after each. Autograd keeps the weights a layer used for its backward, so
    gradients could be computed from overwritten views; and force_full_load is ignored there. So
    training asks for the model's non-dynamic delegate (ComfyUI's own way: the same weights
    reloaded into a classic ModelPatcher, cached on the patcher; CFGGuider does the same for hooked
    conditioning). Sampling and the metrics keep whatever the user's ComfyUI chose.
    0.3.64, and 0.38 on CPU or with --disable-dynamic-vram: already classic, returned as is.
    """
    is_dynamic = getattr(model, "is_dynamic", None)
    if not (callable(is_dynamic) and is_dynamic()):
        return model
    try:
        return model.get_non_dynamic_delegate()
    except RuntimeError as e:  # a model built without ComfyUI's loaders cannot be reloaded
        raise RuntimeError(f"this model cannot be switched to classic loading for training ({e}); "
                           "start ComfyUI with --disable-dynamic-vram") from e


@contextlib.contextmanager
def classic_for_run(model: Any) -> Iterator[Any]:
    """`classic_patcher(model)` for one training run, which trains and previews on it alone: sampling the
    dynamic model between training intervals made ComfyUI swap the two copies on the GPU at every preview.
    Afterwards the delegate is unloaded and let go, a second copy of the weights in RAM, unless ComfyUI had
    cached one on the patcher already (hooked conditioning's CFGGuider does).

    0.38 with dynamic VRAM only; elsewhere the model itself, untouched.
    """
    cached = getattr(model, "non_dynamic_delegate_model", None) is not None
    classic = classic_patcher(model)
    if classic is model:
        yield model
        return
    try:
        yield classic
    finally:
        if not cached:
            _unload(classic.model)
            model.non_dynamic_delegate_model = None


def _unload(base_model: Any) -> None:
    """Every loaded patcher of `base_model` unloaded from its device (the loaded-model list is ComfyUI's)."""
    import comfy.model_management as mm

    for i in reversed(range(len(mm.current_loaded_models))):
        patcher = mm.current_loaded_models[i].model
        if patcher is not None and patcher.model is base_model:
            mm.current_loaded_models.pop(i).model_unload()


def latent_shape(latent_format: Any, height: int, width: int, frames: int = 1) -> tuple[int, ...]:
    """The shape of one empty latent of the model's format for `frames` pictures of height x width pixels (a video
    format's frame axis: (frames - 1) // its temporal ratio + 1; an image format has none), as ComfyUI's empty
    latent nodes make it.

    0.33: the format carries its downscale ratios (8; 16 for FLUX.2 and Wan 2.2, 32 for LTX-Video, 1 for Chroma
    Radiance's pixels; in time 4, LTX-Video 8). 0.3.64's carry none: those of the families served there."""
    name = type(latent_format).__name__
    ratio = getattr(latent_format, "spacial_downscale_ratio", None) or {"LTXV": 32, "Wan22": 16,
                                                                        "ChromaRadiance": 1}.get(name, 8)
    temporal = getattr(latent_format, "temporal_downscale_ratio", None) or {"LTXV": 8}.get(name, 4)
    axis = ((frames - 1) // temporal + 1,) if getattr(latent_format, "latent_dimensions", 2) == 3 else ()
    return (1, latent_format.latent_channels, *axis, height // ratio, width // ratio)


def labels_blocks(diffusion_model: Any) -> bool:
    """Whether this ComfyUI's DiT labels its blocks' attention calls (transformer_options["block_type"],
    ["block_index"]), read off the model class's own source: 0.33's Lumina 2 / Z-Image does, 0.3.64's does
    not (and offers no block patches to label them with instead)."""
    return '"block_type"' in inspect.getsource(type(diffusion_model))


@contextlib.contextmanager
def training_mode() -> Iterator[None]:
    """0.33 and later: comfy.model_management.in_training turns off fast kernels that have no backward
    (comfy-kitchen's rope in Flux; ComfyUI's own trainer sets it around its loop). 0.3.64 has no such switch."""
    import comfy.model_management as mm

    if not hasattr(mm, "in_training"):
        yield
        return
    previous = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = previous
