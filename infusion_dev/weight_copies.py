"""How many copies of a model's weights a process holds: every live tensor the garbage collector can reach
(parameters, an inference original kept aside, a backup), grouped by the memory it lives in. The tests count
them at a training step (one copy of each weight, where ComfyUI's loaded inference weights and their trainable
clones made two); `benchmarks/weight_memory.py` reports the resident memory beside it."""
from __future__ import annotations

import gc
from collections import defaultdict
from typing import Any

import torch


def _memory_of(tensor: torch.Tensor) -> int | None:
    """Where a tensor's values live (its storage's address), None where it has no storage of its own (a
    tensor subclass, such as ComfyUI 0.33's quantized weights, is counted by the plain tensors it holds)."""
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (fp8 has no comparison kernels on the CPU: its bytes are compared)."""
    if a.dtype.itemsize == 1 and a.is_floating_point():
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return torch.equal(a, b)


def _telling(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights whose values tell them apart: not constant (a test model's norms are ones, its biases
    zeros) and unlike every other weight of the model."""
    varied = {name: w for name, w in weights.items() if w.numel() > 1 and bool((w != w.flatten()[0]).any())}
    alike: dict[tuple, list[str]] = defaultdict(list)
    for name, w in varied.items():
        alike[(tuple(w.shape), w.dtype, float(w.float().sum()))].append(name)
    return {names[0]: varied[names[0]] for names in alike.values() if len(names) == 1}


def weight_copies(module: torch.nn.Module) -> dict[str, int]:
    """For each parameter of `module` whose values tell it apart (by name), in how many distinct places of
    memory the process holds a tensor of its shape, dtype and values. A view of a weight is the weight; a
    clone is a copy."""
    gc.collect()
    with torch.no_grad():
        weights = _telling({name: p for name, p in module.named_parameters() if _memory_of(p) is not None})
    by_kind: dict[tuple, list[str]] = defaultdict(list)
    for name, p in weights.items():
        by_kind[(tuple(p.shape), p.dtype, p.device)].append(name)
    places: dict[str, set[int]] = {name: set() for name in weights}
    with torch.no_grad():
        for obj in gc.get_objects():
            if not issubclass(type(obj), torch.Tensor) or obj.is_meta:  # type(): isinstance wakes deprecated proxies
                continue
            names = by_kind.get((tuple(obj.shape), obj.dtype, obj.device))
            where = _memory_of(obj) if names else None
            if where is None:
                continue
            for name in names:
                if where not in places[name] and _same(obj, weights[name]):
                    places[name].add(where)
    return {name: len(found) for name, found in places.items()}


def diffusion_model_in_use() -> Any:
    """The diffusion model (a torch module) of the model ComfyUI has loaded, for a check from inside a run."""
    import comfy.model_management

    for loaded in comfy.model_management.current_loaded_models:
        patcher = loaded.model
        model = getattr(patcher, "model", None) if patcher is not None else None
        if model is not None and hasattr(model, "diffusion_model"):
            return model.diffusion_model
    raise LookupError("ComfyUI has no diffusion model loaded")
