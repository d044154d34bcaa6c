"""The precision a run trains in. `auto` (the default) follows the model, as ComfyUI's own trainer does with
training_dtype "none": fp16 (with loss scaling) only for a model that computes in fp16, bf16 for every other
(bf16, fp8 weights, fp32) where the device has bf16, fp32 on the CPU (ComfyUI runs no model in half precision
there). A precision asked for by name is used, except fp16 on a family ComfyUI never runs in fp16 (Qwen-Image,
Z-Image: their activations overflow it), which is refused naming the family."""
from __future__ import annotations

from typing import Any, Sequence

import torch

AUTO = "auto"
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHOICES = (AUTO, *PRECISIONS)


def choose_precision(requested: str, compute_dtype: torch.dtype, device_type: str, family: str,
                     family_dtypes: Sequence[torch.dtype] | None, has_bf16: bool) -> str:
    """The precision to train in. `compute_dtype`: what the model computes in (an fp8 model: its cast dtype);
    `family_dtypes`: the dtypes ComfyUI runs the family in (None: unknown, anything goes)."""
    if requested not in CHOICES:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)}, not '{requested}'")
    if requested == "fp16" and family_dtypes is not None and torch.float16 not in family_dtypes:
        runs = " or ".join(str(d).replace("torch.", "").replace("float", "fp").replace("bfp", "bf")
                           for d in family_dtypes)
        raise ValueError(f"precision fp16 cannot train a {family} model: ComfyUI runs {family} only in {runs} "
                         "(its activations overflow fp16). Choose auto or bf16")
    if requested != AUTO:
        return requested
    if device_type == "cpu":
        return "fp32"
    if compute_dtype == torch.float16:
        return "fp16"
    return "bf16" if has_bf16 else "fp32"


def model_precision(patcher: Any, requested: str, family: str) -> str:
    """`choose_precision` for a ComfyUI ModelPatcher on its load device (ComfyUI is imported here only)."""
    import comfy.model_management

    # This patcher's own cast dtype: the shared model's attribute holds the object patch of whichever clone
    # ComfyUI loaded last (a training at fp32 sets one).
    compute = patcher.get_model_object("manual_cast_dtype") or patcher.model_dtype() or torch.float32
    device = patcher.load_device
    config = getattr(patcher.model, "model_config", None)
    has_bf16 = requested == AUTO and device.type != "cpu" and comfy.model_management.should_use_bf16(device)
    return choose_precision(requested, compute, device.type, family,
                            getattr(config, "supported_inference_dtypes", None), has_bf16)
