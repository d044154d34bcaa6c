"""Settings changed on an API-format prompt, by node id, title or type (the smoke check and the tests
set small sizes and few steps on the example workflows).

Values are parsed by the input's type from the live node definitions; the executor's own
validation then checks ranges and options. ComfyUI-free.
"""
from __future__ import annotations

from typing import Any, Mapping

from infusion.cli.node_inputs import has_widget, ordered_inputs, parse_value

class OverrideError(ValueError):
    """An override that does not fit the workflow; the message says what would."""


def widget_spec(definitions: Mapping[str, Mapping[str, Any]], class_type: str, name: str) -> list | None:
    """The spec of a node type's widget input `name`, None if it has no such widget."""
    spec = dict(ordered_inputs(definitions[class_type])).get(name)
    return spec if spec is not None and has_widget(spec) else None


def find_nodes(prompt: Mapping[str, Mapping[str, Any]], target: str) -> list[str]:
    """Ids of the nodes `target` names: a node id, else every node with that title, else of that type."""
    if target in prompt:
        return [target]
    for key in (lambda n: n.get("_meta", {}).get("title"), lambda n: n.get("class_type")):
        found = [node_id for node_id, node in prompt.items() if key(node) == target]
        if found:
            return found
    return []


def set_input(prompt: dict, definitions: Mapping[str, Mapping[str, Any]], target: str, name: str,
              value: Any) -> list[str]:
    """Set widget input `name` of the nodes `target` names (a string value is parsed by the input's type)."""
    ids = find_nodes(prompt, target)
    if not ids:
        titles = sorted({f"{i} ({n['_meta'].get('title')}, {n['class_type']})" for i, n in prompt.items()})
        raise OverrideError(f"no node '{target}' in this workflow; nodes are: {'; '.join(titles)}")
    for node_id in ids:
        node = prompt[node_id]
        spec = widget_spec(definitions, node["class_type"], name)
        if spec is None:
            names = [n for n, s in ordered_inputs(definitions[node["class_type"]]) if has_widget(s)]
            raise OverrideError(f"node {node_id} ({node['class_type']}) has no setting '{name}'; its settings are: "
                                f"{', '.join(names) or 'none'}")
        try:
            node["inputs"][name] = parse_value(spec, value) if isinstance(value, str) else value
        except ValueError as e:
            raise OverrideError(f"{target}.{name}: {e}") from None
    return ids


def positive_prompt_nodes(prompt: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Text encoders whose conditioning goes into an input named 'positive' (a sampler's), straight or
    through nodes that pass a conditioning on (Flux's FluxGuidance, ConditioningSetArea, ...)."""
    ids = []
    for node in prompt.values():
        link, seen = node["inputs"].get("positive"), set()
        while isinstance(link, list) and link[0] in prompt and link[0] not in seen:
            seen.add(link[0])
            inputs = prompt[link[0]]["inputs"]
            if isinstance(inputs.get("text"), str):
                ids.append(link[0])
                break
            link = inputs.get("conditioning")
    return list(dict.fromkeys(ids))


def set_prompt(prompt: dict, definitions: Mapping[str, Mapping[str, Any]], text: str) -> list[str]:
    """--prompt: the text of every encoder that feeds a sampler's positive input."""
    ids = positive_prompt_nodes(prompt)
    if not ids:
        raise OverrideError("no text encoder feeds a sampler's 'positive' input here")
    for node_id in ids:
        set_input(prompt, definitions, node_id, "text", text)
    return ids
