"""Command-line overrides on an API-format prompt: `--set TARGET.INPUT=VALUE` (TARGET a node id,
title or type) and the named shortcuts (checkpoint, photos folder, word, prompt).

Values are parsed by the input's type from the live node definitions; the executor's own
validation then checks ranges and options. ComfyUI-free.
"""
from __future__ import annotations

from typing import Any, Mapping

from .convert import has_widget, input_type, ordered_inputs

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


class OverrideError(ValueError):
    """An override that does not fit the workflow; the message says what would."""


def parse_value(spec: list, text: str) -> Any:
    """A command-line string as a value of this input's type."""
    kind = input_type(spec)
    try:
        if kind == "INT":
            return int(text)
        if kind == "FLOAT":
            return float(text)
    except ValueError:
        raise OverrideError(f"'{text}' is not a{'n' if kind == 'INT' else ''} {kind}") from None
    if kind == "BOOLEAN":
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise OverrideError(f"'{text}' is not a BOOLEAN (true/false)")
    return text


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
        except OverrideError as e:
            raise OverrideError(f"{target}.{name}: {e}") from None
    return ids


def set_everywhere(prompt: dict, definitions: Mapping[str, Mapping[str, Any]], name: str, value: Any) -> list[str]:
    """Set widget input `name` on every node that has one; returns their ids (maybe none)."""
    ids = [node_id for node_id, node in prompt.items() if widget_spec(definitions, node["class_type"], name)]
    for node_id in ids:
        set_input(prompt, definitions, node_id, name, value)
    return ids


def parse_assignment(text: str) -> tuple[str, str, str]:
    """'TARGET.INPUT=VALUE' -> (target, input, value); TARGET may contain dots, INPUT may not."""
    left, sep, value = text.partition("=")
    target, dot, name = left.rpartition(".")
    if not sep or not dot or not target or not name:
        raise OverrideError(f"'{text}' is not TARGET.INPUT=VALUE (TARGET: a node id, title or type; "
                            "e.g. KSampler.steps=30 or 3.seed=42)")
    return target, name, value


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


def set_shortcut(prompt: dict, definitions: Mapping[str, Mapping[str, Any]], option: str, name: str,
                 value: Any) -> list[str]:
    """A named override (--checkpoint: ckpt_name, --photos: folder, --word: word) on every node
    with that setting; an error when the workflow has none."""
    ids = set_everywhere(prompt, definitions, name, value)
    if not ids:
        raise OverrideError(f"--{option}: this workflow has no '{name}' setting"
                            + (" (a loaded concept's class word is stored in its file)" if name == "word" else ""))
    return ids


def set_prompt(prompt: dict, definitions: Mapping[str, Mapping[str, Any]], text: str) -> list[str]:
    """--prompt: the text of every encoder that feeds a sampler's positive input."""
    ids = positive_prompt_nodes(prompt)
    if not ids:
        raise OverrideError("--prompt: no text encoder feeds a sampler's 'positive' input here; "
                            "use --set NODE.text=... instead")
    for node_id in ids:
        set_input(prompt, definitions, node_id, "text", text)
    return ids
