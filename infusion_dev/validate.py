"""A UI-format workflow checked against the live node definitions, the way a user would meet
the problems in the frontend: missing node types, links between mismatched types, inputs that
are no longer there or not connected, and widget values their input does not accept.

ComfyUI-free: definitions come in as plain dicts.
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Any, Mapping

from infusion.cli.node_inputs import combo_options, has_widget, input_options, input_type, ordered_inputs

NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
FRONTEND_ONLY = NOTE_TYPES | {"Reroute", "PrimitiveNode"}
SEED_NAMES = ("seed", "noise_seed")  # the frontend's legacy convention for INT inputs


class WorkflowError(ValueError):
    """A workflow that cannot be turned into a prompt; the message names the node."""


@dataclass(frozen=True)
class Link:
    id: int
    origin_id: int
    origin_slot: int
    target_id: int
    target_slot: int
    type: str


def links_of(workflow: Mapping[str, Any]) -> dict[int, Link]:
    """The workflow's links by id (saved as arrays, or as objects by some frontend versions)."""
    out = {}
    for raw in workflow.get("links") or []:
        if isinstance(raw, Mapping):
            raw = [raw["id"], raw["origin_id"], raw["origin_slot"], raw["target_id"], raw["target_slot"], raw["type"]]
        link = Link(*raw[:6])
        out[link.id] = link
    return out


def control_count(name: str, spec: list) -> int:
    """Extra widget values the frontend adds after this input's widget: the value control of a
    seed-like INT (1), the control and its filter list for a COMBO (2), else 0."""
    control = input_options(spec).get("control_after_generate")
    kind = input_type(spec)
    if kind == "INT" and (control if control is not None else name in SEED_NAMES):
        return 1
    if kind == "COMBO" and control:
        return 2
    return 0


def widget_layout(definition: Mapping[str, Any]) -> list[tuple[str, list, int]]:
    """(input name, spec, control values after it) for every widget, in the frontend's order."""
    return [(name, spec, control_count(name, spec)) for name, spec in ordered_inputs(definition) if has_widget(spec)]


def describe(node: Mapping[str, Any]) -> str:
    title = node.get("title")
    return f"node #{node.get('id')} ({node.get('type')}{', ' + repr(title) if title else ''})"


def widget_values(node: Mapping[str, Any], definition: Mapping[str, Any]) -> dict[str, tuple[Any, list]]:
    """{input name: (widget value, its control values)} of a node, checked against its definition."""
    layout = widget_layout(definition)
    saved = node.get("widgets_values")
    if isinstance(saved, Mapping):  # some frontends save widgets by name
        return {name: (saved[name], []) for name, _, _ in layout if name in saved}
    saved = list(saved or [])
    expected = sum(1 + extra for _, _, extra in layout)
    if len(saved) != expected:
        names = ", ".join(name + (f" (+{extra} control)" if extra else "") for name, _, extra in layout) or "none"
        raise WorkflowError(f"{describe(node)} has {len(saved)} widget values but its definition has {expected} "
                            f"({names}): it was saved with another version of the node. Open the workflow in "
                            "ComfyUI, check the node's settings and save it again.")
    out, i = {}, 0
    for name, _, extra in layout:
        out[name] = (saved[i], saved[i + 1:i + 1 + extra])
        i += 1 + extra
    return out


def missing_node_types(workflow: Mapping[str, Any], definitions: Mapping[str, Any]) -> list[str]:
    """Node types of the workflow that are neither frontend-only nor in `definitions`."""
    kinds = (str(n.get("type")) for n in workflow.get("nodes") or [])
    return sorted({k for k in kinds if k not in FRONTEND_ONLY and k not in definitions})


CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf")


@dataclass(frozen=True)
class Problem:
    kind: str  # "node", "link", "input", "widget", or "model" (a model file this ComfyUI does not have)
    message: str

    def __str__(self) -> str:
        return self.message


def types_match(a: str, b: str) -> bool:
    """ComfyUI's rule (comfy_execution.validation): equal, a wildcard, or overlapping a,b,c unions."""
    if a == "*" or b == "*" or a == b:
        return True
    return bool(set(a.split(",")) & set(b.split(",")))


def widget_problem(name: str, spec: list, value: Any) -> str | None:
    """Why `value` is not valid for this input, or None."""
    kind, opts = input_type(spec), input_options(spec)
    if kind == "COMBO":
        options = combo_options(spec) or []
        return None if value in options else f"'{value}' is not one of its options"
    expected = {"INT": int, "FLOAT": Real, "BOOLEAN": bool, "STRING": str}[kind]
    if not isinstance(value, expected) or (kind in ("INT", "FLOAT") and isinstance(value, bool)):
        return f"{value!r} is not a {kind}"
    if kind in ("INT", "FLOAT"):
        if "min" in opts and value < opts["min"]:
            return f"{value} is below its minimum {opts['min']}"
        if "max" in opts and value > opts["max"]:
            return f"{value} is above its maximum {opts['max']}"
    return None


def _check_widgets(node: Mapping[str, Any], definition: Mapping[str, Any]) -> list[Problem]:
    try:
        values = widget_values(node, definition)
    except WorkflowError as e:
        return [Problem("widget", str(e))]
    problems = []
    layout = {name: (spec, extra) for name, spec, extra in widget_layout(definition)}
    for name, (value, controls) in values.items():
        spec, _ = layout[name]
        why = widget_problem(name, spec, value)
        if why:
            is_model = input_type(spec) == "COMBO" and str(value).lower().endswith(MODEL_EXTENSIONS)
            problems.append(Problem("model" if is_model else "widget", f"{describe(node)}: {name} {why}"
                                    + (" (a model file this ComfyUI does not have)" if is_model else "")))
        allowed = CONTROL_VALUES + (("increment-wrap",) if input_type(spec) == "COMBO" else ())
        if controls and controls[0] not in allowed:
            problems.append(Problem("widget", f"{describe(node)}: control of {name} is {controls[0]!r}, not one of "
                                              f"{', '.join(allowed)}"))
    return problems


def _check_inputs(node: Mapping[str, Any], definition: Mapping[str, Any]) -> list[Problem]:
    problems = []
    specs = dict(ordered_inputs(definition))
    required = set(((definition.get("input") or {}).get("required") or {}))
    linked = {i.get("name") for i in node.get("inputs") or [] if i.get("link") is not None}
    for i in node.get("inputs") or []:
        if i.get("name") not in specs:
            problems.append(Problem("input", f"{describe(node)} has an input '{i.get('name')}' that its node no "
                                             "longer has"))
    for name in required:
        if not has_widget(specs[name]) and name not in linked:
            problems.append(Problem("input", f"{describe(node)}: required input {name} is not connected"))
    return problems


def _slot_type(node: Mapping[str, Any], definitions: Mapping[str, Any], slot: int, output: bool) -> str | None:
    """The registry's type of a node's output slot or input slot (None for frontend-only nodes)."""
    definition = definitions.get(node.get("type"))
    if definition is None:
        return None
    if output:
        outputs = definition.get("output") or []
        return str(outputs[slot]) if slot < len(outputs) else None
    ui_inputs = node.get("inputs") or []
    name = ui_inputs[slot].get("name") if slot < len(ui_inputs) else None
    spec = dict(ordered_inputs(definition)).get(name)
    return input_type(spec) if spec else None


def _check_links(workflow: Mapping[str, Any], nodes: Mapping[Any, Mapping[str, Any]],
                 definitions: Mapping[str, Any]) -> list[Problem]:
    problems = []
    for link in links_of(workflow).values():
        origin, target = nodes.get(link.origin_id), nodes.get(link.target_id)
        if origin is None or target is None:
            problems.append(Problem("link", f"link {link.id} joins a node that is not in the workflow"))
            continue
        ends = [("output", origin, _slot_type(origin, definitions, link.origin_slot, True)),
                ("input", target, _slot_type(target, definitions, link.target_slot, False))]
        for side, node, kind in ends:
            if node.get("type") not in FRONTEND_ONLY and kind is None:
                problems.append(Problem("link", f"link {link.id} ({link.type}) uses {side} slot of {describe(node)} "
                                                "that its node does not have"))
            elif kind is not None and not types_match(kind, link.type):
                problems.append(Problem("link", f"link {link.id} is {link.type} but the {side} of {describe(node)} "
                                                f"is {kind}"))
    return problems


def check_workflow(workflow: Mapping[str, Any], definitions: Mapping[str, Mapping[str, Any]]) -> list[Problem]:
    """Every problem found; an empty list means the frontend and executor will accept it
    (given the model files it names)."""
    problems = [Problem("node", f"this ComfyUI has no node type {kind}")
                for kind in missing_node_types(workflow, definitions)]
    nodes = {node.get("id"): node for node in workflow.get("nodes") or []}
    for node in nodes.values():
        definition = definitions.get(node.get("type"))
        if definition is not None:
            problems += _check_inputs(node, definition) + _check_widgets(node, definition)
    return problems + _check_links(workflow, nodes, definitions)
