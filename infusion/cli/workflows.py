"""The pack's example workflows (workflows/, which ComfyUI serves to its template browser)
and reading any workflow file: UI format (saved by the frontend) or API format (Export (API))."""
from __future__ import annotations

import json
import os
from typing import Any

from .locate import PACK_ROOT

WORKFLOWS_DIR = os.path.join(PACK_ROOT, "workflows")


def example_names() -> list[str]:
    """Names of the example workflows (file names without .json)."""
    if not os.path.isdir(WORKFLOWS_DIR):
        return []
    return sorted(n[:-5] for n in os.listdir(WORKFLOWS_DIR) if n.endswith(".json"))


def resolve(name_or_path: str) -> str:
    """A workflow file: an existing path, else an example workflow by name."""
    if os.path.isfile(name_or_path):
        return os.path.abspath(name_or_path)
    name = name_or_path[:-5] if name_or_path.endswith(".json") else name_or_path
    path = os.path.join(WORKFLOWS_DIR, name + ".json")
    if os.path.isfile(path):
        return path
    raise FileNotFoundError(f"no workflow file '{name_or_path}' and no example workflow of that name; examples: "
                            f"{', '.join(example_names()) or '(none found in ' + WORKFLOWS_DIR + ')'}")


def is_api_format(data: Any) -> bool:
    """API format is {node id: {"class_type": ..., "inputs": ...}}; UI format has a "nodes" list."""
    return (isinstance(data, dict) and "nodes" not in data and bool(data)
            and all(isinstance(v, dict) and "class_type" in v for v in data.values()))


def load(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not a JSON workflow: {e}") from None
    if not (is_api_format(data) or isinstance(data, dict) and isinstance(data.get("nodes"), list)):
        raise ValueError(f"{path} is neither a ComfyUI workflow (UI format, with 'nodes') nor an API-format prompt")
    return data
