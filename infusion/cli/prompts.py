"""From a workflow file to a ready API prompt: convert with the live definitions, apply overrides.
ComfyUI must be set up with its nodes loaded (definitions come from its registry)."""
from __future__ import annotations

import copy
import os
from typing import Any, Iterable, Mapping

from . import workflows
from .convert import MODE_BYPASSED, to_api
from .overrides import parse_assignment, set_input, set_prompt, set_shortcut
from .registry import node_definitions


def definitions_for(prompt_or_workflow: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Live definitions of every node type a UI workflow or API prompt uses."""
    if workflows.is_api_format(prompt_or_workflow):
        kinds = (n["class_type"] for n in prompt_or_workflow.values())
    else:
        kinds = (str(n.get("type")) for n in prompt_or_workflow.get("nodes") or [])
    return node_definitions(kinds)


def bypassed(workflow: Mapping[str, Any], class_types: Iterable[str]) -> dict[str, Any]:
    """A copy of a UI workflow with every node of these types bypassed (Ctrl+B in the UI)."""
    out = copy.deepcopy(dict(workflow))
    kinds = set(class_types)
    for node in out.get("nodes") or []:
        if node.get("type") in kinds:
            node["mode"] = MODE_BYPASSED
    return out


def model_file(folder: str, value: str) -> str:
    """A model name for a combo of `folder` ('checkpoints', 'clip_vision', ...): a path to an existing
    file puts its folder first among ComfyUI's folders of that kind (for this run) and gives its name."""
    if not os.path.isfile(value):
        return value
    import folder_paths
    path = os.path.abspath(value)
    folder_paths.add_model_folder_path(folder, os.path.dirname(path), is_default=True)
    return os.path.basename(path)


def as_prompt(workflow: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(API prompt, definitions) of a UI workflow or an API prompt."""
    definitions = definitions_for(workflow)
    if workflows.is_api_format(workflow):
        return copy.deepcopy(dict(workflow)), definitions
    return to_api(workflow, definitions), definitions


def with_overrides(prompt: dict[str, Any], definitions: Mapping[str, Mapping[str, Any]], *,
                   checkpoint: str | None = None, photos: str | None = None, word: str | None = None,
                   text: str | None = None, assignments: Iterable[str] = ()) -> dict[str, Any]:
    """Apply the command-line overrides to `prompt` (in place); returns it."""
    if checkpoint is not None:
        set_shortcut(prompt, definitions, "checkpoint", "ckpt_name", model_file("checkpoints", checkpoint))
    if photos is not None:
        # A folder relative to where the command runs, if it exists there; else ComfyUI's input folder.
        set_shortcut(prompt, definitions, "photos", "folder", os.path.abspath(photos) if os.path.isdir(photos) else photos)
    if word is not None:
        set_shortcut(prompt, definitions, "word", "word", word)
    if text is not None:
        set_prompt(prompt, definitions, text)
    for assignment in assignments:
        set_input(prompt, definitions, *parse_assignment(assignment))
    return prompt
