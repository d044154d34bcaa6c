"""ComfyUI-Infusion: Infusion concepts (Zeng et al. 2024) for ComfyUI. ComfyUI loads this package."""
import importlib.util

# Test runners import this folder as a package without ComfyUI around; there is nothing to register then.
if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]
