"""A node's inputs as its definition gives them, in the format of ComfyUI's /object_info route (what the
frontend builds widgets from): {"input": {"required": {...}, "optional": {...}}, "input_order": {...},
"output": [...], "output_name": [...], "output_node": bool, "display_name": str}.

Definitions come from ComfyUI's live node registry (ComfyUI set up with its nodes loaded); the rest is
ComfyUI-free.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


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


def input_type(spec: list) -> str:
    """An input's type; a list of options is a COMBO (the V1 form)."""
    return "COMBO" if isinstance(spec[0], list) else str(spec[0])


def input_options(spec: list) -> dict[str, Any]:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}


def combo_options(spec: list) -> list | None:
    if isinstance(spec[0], list):
        return spec[0]
    return input_options(spec).get("options") if spec[0] == "COMBO" else None


def has_widget(spec: list) -> bool:
    return input_type(spec) in WIDGET_TYPES and not input_options(spec).get("forceInput")


def ordered_inputs(definition: Mapping[str, Any]) -> list[tuple[str, list]]:
    """(name, spec) of every required then optional input, in the definition's order."""
    out = []
    order = definition.get("input_order") or {}
    for section in ("required", "optional"):
        specs = (definition.get("input") or {}).get(section) or {}
        for name in order.get(section) or list(specs):
            out.append((name, list(specs[name])))
    return out


def parse_value(spec: list, text: str) -> Any:
    """A command-line string as a value of this input's type."""
    kind = input_type(spec)
    try:
        if kind == "INT":
            return int(text)
        if kind == "FLOAT":
            return float(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a{'n' if kind == 'INT' else ''} {kind}") from None
    if kind == "BOOLEAN":
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"'{text}' is not a BOOLEAN (true/false)")
    return text
