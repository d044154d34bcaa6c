"""The development tools' places that depend on a ComfyUI version (the pack's own are infusion/compat.py).

Tested: ComfyUI 0.3.64 and 0.33.0 (real, in CI). Each function says which versions each branch serves.
ComfyUI is imported inside functions only.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable


def widget_defaults(node: Any, skip: int = 0) -> dict[str, Any]:
    """A V3 node's inputs that have a default, at it (as a new node in the UI has them); `skip`: the first
    inputs (given positionally)."""
    return {i.id: i.default for i in node.define_schema().inputs[skip:] if getattr(i, "default", None) is not None}


def node_class(node: Any, unique_id: str, prompt: dict | None = None) -> Any:
    """A V3 node class prepared as the executor prepares it before `execute`: a clone carrying the
    hidden inputs (unique id, prompt), so nodes that read `cls.hidden` can be called outside a graph.

    0.3.64: PREPARE_CLASS_CLONE(hidden_inputs), the hidden inputs by their Hidden names. 0.33:
    PREPARE_CLASS_CLONE(v3_data), the same dict under v3_data["hidden_inputs"].
    """
    from comfy_api.latest import io

    hidden = {io.Hidden.unique_id: unique_id, io.Hidden.prompt: prompt}
    if "v3_data" in inspect.signature(node.PREPARE_CLASS_CLONE).parameters:
        return node.PREPARE_CLASS_CLONE({"hidden_inputs": hidden})
    return node.PREPARE_CLASS_CLONE(hidden)


def register_reload(patcher: Any, load: Callable[..., Any], *args: Any) -> None:
    """Tell ComfyUI how to load this model again from its file: `load(*args, disable_dynamic=...)` returns
    a fresh ModelPatcher over the same weights.

    0.33: what its core loaders register as `cached_patcher_init`, used by clone(force_deepcopy=True)
    (Train LoRA trains on such a deep copy) and by the dynamic VRAM delegate; a model built any other
    way cannot be copied there. 0.3.64 reads no such attribute: setting it changes nothing.
    """
    patcher.cached_patcher_init = (load, args)


def train_lora(model: Any, latents: dict, positive: list, **inputs: Any) -> dict:
    """ComfyUI's own Train LoRA node on `model`; returns the LoRA state dict.

    `inputs`: the node's other inputs by name (batch_size, steps, learning_rate, rank, ...).
    0.3.64: a V1 node, TrainLoraNode().train(...) -> (model, lora, loss, steps). 0.38: a V3 node
    with is_input_list, TrainLoraNode.execute(...) with every input a one-item list
    -> (lora, loss, steps), newer inputs (checkpoint_depth, offloading, bypass_mode, ...) at their
    defaults.
    """
    import comfy_extras.nodes_train as native

    node = native.TrainLoraNode
    values = {"model": model, "latents": latents, "positive": positive, **inputs}
    if hasattr(node, "train"):
        names = list(inspect.signature(node.train).parameters)[1:]  # after self
        return node().train(**{name: values[name] for name in names})[1]
    defaults = widget_defaults(node)
    accepted = inspect.signature(node.execute).parameters
    output = node.execute(**{name: [value] for name, value in {**defaults, **values}.items() if name in accepted})
    return output.result[0]


def apply_lora(model: Any, lora: dict, strength: float) -> Any:
    """A clone of `model` with a LoRA state dict applied (what LoraModelLoader does, in every version)."""
    import comfy.sd

    return comfy.sd.load_lora_for_models(model, None, lora, strength, 0)[0]
