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

from .validate import FRONTEND_ONLY

WORKFLOWS_DIR = os.path.join(PACK_ROOT, "workflows")
MODE_BYPASSED = 4  # litegraph's node mode for Ctrl+B
# Examples built on ComfyUI nodes that older versions lack (their notes say so): {example: those node types}.
NEWER_COMFYUI_NODES = {"train_from_dataset": ("LoadImageTextDataSetFromFolder",)}


def example_names() -> list[str]:
    """Names of the example workflows (file names without .json)."""
    return sorted(n[:-5] for n in os.listdir(WORKFLOWS_DIR) if n.endswith(".json"))


def load(name: str) -> dict[str, Any]:
    """An example workflow (UI format) by name."""
    with open(os.path.join(WORKFLOWS_DIR, name + ".json"), encoding="utf-8") as f:
        return json.load(f)


def missing_nodes(name: str, available: Iterable[str]) -> list[str]:
    """The node types an example uses that are not `available` (the node types a ComfyUI has)."""
    have = set(available)
    return sorted({n["type"] for n in load(name)["nodes"] if n["type"] not in have and n["type"] not in FRONTEND_ONLY})


def runnable(available: Iterable[str]) -> list[str]:
    """The examples a ComfyUI with these node types can run. Raises if one cannot for another reason than
    the newer nodes it is declared to need."""
    have, out = set(available), []
    for name in example_names():
        missing = missing_nodes(name, have)
        if missing and missing != sorted(NEWER_COMFYUI_NODES.get(name, ())):
            raise AssertionError(f"example {name} uses node types this ComfyUI lacks: {missing}")
        if not missing:
            out.append(name)
    return out


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
