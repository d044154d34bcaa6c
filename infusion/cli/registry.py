"""Node definitions from ComfyUI's live node registry, in the format of its /object_info route
(what the frontend builds widgets from): {"input": {"required": {...}, "optional": {...}},
"input_order": {...}, "output": [...], "output_name": [...], "output_node": bool, "display_name": str}.

ComfyUI must be set up and its nodes loaded (runtime.start, or the test harness).
"""
from __future__ import annotations

from typing import Any, Iterable


def node_definition(class_type: str) -> dict[str, Any] | None:
    """The definition of one node type, None when ComfyUI has no such node."""
    import nodes
    from comfy_api.internal import _ComfyNodeInternal

    cls = nodes.NODE_CLASS_MAPPINGS.get(class_type)
    if cls is None:
        return None
    if issubclass(cls, _ComfyNodeInternal):
        return cls.GET_NODE_INFO_V1()
    # The V1 branch of server.py's node_info, fields the runner reads only.
    inputs = cls.INPUT_TYPES()
    return {
        "input": inputs,
        "input_order": {key: list(value.keys()) for key, value in inputs.items()},
        "output": list(cls.RETURN_TYPES),
        "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
        "output_node": getattr(cls, "OUTPUT_NODE", False) is True,
        "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(class_type, class_type),
    }


def node_definitions(class_types: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Definitions of the given node types that ComfyUI has (absent types are left out)."""
    out = {}
    for class_type in dict.fromkeys(class_types):
        definition = node_definition(class_type)
        if definition is not None:
            out[class_type] = definition
    return out
