"""UI-format workflow (what the ComfyUI frontend saves) -> API-format prompt (what its executor runs).

Follows the frontend's own serialization (graphToPrompt) against the node definitions of the live
registry (registry.py, the /object_info format):
- widget values are matched to inputs in definition order (required, then optional); an INT
  with `control_after_generate` (or named seed/noise_seed, unless it says otherwise) is followed
  by its control value ("fixed", "randomize", ...), a COMBO with it by the control and a filter;
- a linked input takes the link, also where the input also has a widget (a converted widget);
- frontend-only nodes: notes are dropped, reroutes followed, a primitive's value is used;
- muted nodes (mode 2) are dropped with their links; bypassed nodes (mode 4) pass each link on
  to their input of the same type, as the frontend does.
ComfyUI-free: definitions come in as plain dicts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
FRONTEND_ONLY = NOTE_TYPES | {"Reroute", "PrimitiveNode"}
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
MODE_MUTED, MODE_BYPASSED = 2, 4
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


def ordered_inputs(definition: Mapping[str, Any]) -> list[tuple[str, list]]:
    """(name, spec) of every required then optional input, in the definition's order."""
    out = []
    order = definition.get("input_order") or {}
    for section in ("required", "optional"):
        specs = (definition.get("input") or {}).get(section) or {}
        for name in order.get(section) or list(specs):
            out.append((name, list(specs[name])))
    return out


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


class _Graph:
    def __init__(self, workflow: Mapping[str, Any]):
        self.nodes = {node["id"]: node for node in workflow.get("nodes") or []}
        self.links = links_of(workflow)
        subgraphs = {s.get("id") for s in (workflow.get("definitions") or {}).get("subgraphs") or []}
        for node in self.nodes.values():
            kind = str(node.get("type"))
            if kind in subgraphs or kind.startswith(("workflow>", "workflow/")):
                raise WorkflowError(f"{describe(node)} is a subgraph or group node, which the runner does not "
                                    "expand: unpack it in ComfyUI (right-click > Unpack) and save the workflow again.")

    def source(self, link_id: int | None, wanted_type: str) -> tuple[str, Any] | None:
        """Where a link's value comes from: ("link", [node id, slot]) or ("value", v) from a
        primitive; None when the link is absent or comes from a muted node."""
        seen = set()
        while link_id is not None and link_id in self.links and link_id not in seen:
            seen.add(link_id)
            link = self.links[link_id]
            origin = self.nodes.get(link.origin_id)
            if origin is None or origin.get("mode") == MODE_MUTED:
                return None
            kind = origin.get("type")
            if kind == "Reroute":
                link_id = (origin.get("inputs") or [{}])[0].get("link")
            elif kind == "PrimitiveNode":
                return "value", (origin.get("widgets_values") or [None])[0]
            elif origin.get("mode") == MODE_BYPASSED:
                link_id = self._bypass(origin, link.origin_slot, wanted_type)
            else:
                return "link", [str(link.origin_id), link.origin_slot]
        return None

    @staticmethod
    def _bypass(node: Mapping[str, Any], slot: int, wanted_type: str) -> int | None:
        # The frontend's rule: the bypassed node's input at the output's index, else the first
        # input, that has the type the consumer wants.
        inputs = node.get("inputs") or []
        for i in [slot] + list(range(len(inputs))):
            if i < len(inputs) and inputs[i].get("type") == wanted_type and inputs[i].get("link") is not None:
                return inputs[i]["link"]
        return None


def missing_node_types(workflow: Mapping[str, Any], definitions: Mapping[str, Any]) -> list[str]:
    """Node types of the workflow that are neither frontend-only nor in `definitions`."""
    kinds = (str(n.get("type")) for n in workflow.get("nodes") or [])
    return sorted({k for k in kinds if k not in FRONTEND_ONLY and k not in definitions})


def to_api(workflow: Mapping[str, Any], definitions: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The API-format prompt {node id: {"class_type", "inputs", "_meta": {"title"}}} of a UI-format workflow."""
    graph = _Graph(workflow)
    missing = missing_node_types(workflow, definitions)
    if missing:
        raise WorkflowError(f"this ComfyUI has no node type {', '.join(missing)}: install the node pack that "
                            "provides it (the runner loads ComfyUI's core nodes and this pack; --custom-nodes "
                            "loads every pack in custom_nodes/).")
    prompt = {}
    for node_id, node in graph.nodes.items():
        kind = node.get("type")
        if kind in FRONTEND_ONLY or node.get("mode") in (MODE_MUTED, MODE_BYPASSED):
            continue
        definition = definitions[kind]
        widgets = widget_values(node, definition)
        ui_inputs = {i.get("name"): i for i in node.get("inputs") or []}
        inputs = {}
        for name, spec in ordered_inputs(definition):
            slot = ui_inputs.get(name)
            if slot is not None and slot.get("link") is not None:
                source = graph.source(slot["link"], slot.get("type") or input_type(spec))
                if source is not None:
                    inputs[name] = source[1]
                    continue
            if name in widgets:
                inputs[name] = widgets[name][0]
        prompt[str(node_id)] = {"class_type": kind, "inputs": inputs,
                                "_meta": {"title": node.get("title") or definition.get("display_name") or kind}}
    return prompt
