"""The pack's example workflows (workflows/, which ComfyUI serves to its template browser) as API
prompts ready to run: converted by comfy-cli's port of the frontend's conversion, on the live node
definitions (ComfyUI set up with its nodes loaded)."""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Iterable, Mapping

from infusion.cli.locate import PACK_ROOT
from infusion.cli.node_inputs import node_definitions

WORKFLOWS_DIR = os.path.join(PACK_ROOT, "workflows")
MODE_BYPASSED = 4  # litegraph's node mode for Ctrl+B


def example_names() -> list[str]:
    """Names of the example workflows (file names without .json)."""
    return sorted(n[:-5] for n in os.listdir(WORKFLOWS_DIR) if n.endswith(".json"))


def load(name: str) -> dict[str, Any]:
    """An example workflow (UI format) by name."""
    with open(os.path.join(WORKFLOWS_DIR, name + ".json"), encoding="utf-8") as f:
        return json.load(f)


def definitions_for(workflow: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Live definitions of every node type a UI workflow uses."""
    return node_definitions(str(n.get("type")) for n in workflow.get("nodes") or [])


def bypassed(workflow: Mapping[str, Any], class_types: Iterable[str]) -> dict[str, Any]:
    """A copy of a UI workflow with every node of these types bypassed (Ctrl+B in the UI)."""
    out = copy.deepcopy(dict(workflow))
    kinds = set(class_types)
    for node in out.get("nodes") or []:
        if node.get("type") in kinds:
            node["mode"] = MODE_BYPASSED
    return out


def as_prompt(workflow: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(API prompt, definitions) of a UI workflow, as the frontend would queue it."""
    from comfy_cli.workflow_to_api import convert_ui_to_api

    definitions = definitions_for(workflow)
    return convert_ui_to_api(copy.deepcopy(dict(workflow)), definitions), definitions
